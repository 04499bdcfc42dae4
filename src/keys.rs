//! Issued keys: the service-account naming scheme, issuing a key for a
//! person, and the sweep that deletes expired accounts. OpenAI is the only
//! store: every account this server creates carries its owner and expiry in
//! its name, so any replica, even one that just restarted, knows what is due.

mod deleter;
mod index;
mod name;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use secrecy::SecretString;
use tokio::sync::{Notify, OnceCell, mpsc};
use tracing::{Instrument as _, instrument};

use crate::clock::unix_seconds as unix;
use crate::config::ProjectSelector;
use crate::identity::{EmailAddress, Owner};
use crate::openai::{self, AdminClient, Page, ServiceAccount};

use deleter::{Due, Fate, MAX_ATTEMPTS};
use index::Index;
pub use name::{AccountName, PREFIX};

/// How the keys of one project are issued and swept.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which project.
    pub project: ProjectSelector,
    /// Lifetime of every key.
    pub ttl: Duration,
    /// Deletes a sweep starts with at once (`CLEANUP_CONCURRENCY`).
    pub concurrency: usize,
    /// The most deletes at once while OpenAI keeps up.
    pub max_concurrency: usize,
    /// Also delete the Go original's accounts (bare-email names) older than
    /// `ttl` (`CLEANUP_LEGACY_ACCOUNTS`).
    pub legacy_cleanup: bool,
    /// How long a create may wait out OpenAI's 429s before the person is
    /// told OpenAI is busy (`TIMEOUT`).
    pub create_patience: Duration,
    /// Where revocations and deletions are recorded.
    pub audit: crate::audit::Audit,
}

/// How long to let concurrent starts create their project before looking
/// which one all should use (see [`Keys::project_id`]).
const PROJECT_SETTLE: Duration = Duration::from_millis(500);
/// A project found this young may have a twin from a concurrent start
/// whose creators have not settled yet (they look again after
/// [`PROJECT_SETTLE`], then archive the loser at once).
const RECENT_PROJECT: Duration = Duration::from_secs(2);

/// A key of this server found gone before its expiry, not deleted by this
/// replica: OpenAI revoked it (as it does with leaked keys), someone
/// deleted it by hand, or another replica revoked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vanished {
    /// Whose it was.
    pub owner: Owner,
    /// Its service account.
    pub service_account_id: String,
    /// Its key id, if known.
    pub key_id: Option<String>,
    /// When it would have expired (Unix seconds).
    pub expires_at: i64,
    /// When this replica noticed (Unix seconds).
    pub noticed_at: i64,
    /// What was found: the account gone, or the key gone from a listed
    /// account.
    pub what: &'static str,
}

/// How long a vanished key is shown on its owner's page.
const VANISHED_SHOWN: i64 = 86_400;

/// A key gone less than this before its expiry is not reported: another
/// replica deleting it at its expiry, on a clock a little ahead, is no
/// news.
const VANISHED_MARGIN: i64 = 60;

/// A key just created for someone. Shown once, never stored.
#[derive(Debug)]
pub struct IssuedKey {
    /// The secret key.
    pub value: SecretString,
    /// When OpenAI stops accepting it (Unix seconds).
    pub expires_at: i64,
    /// Whether OpenAI itself enforces the expiry (false on an older API
    /// that rejected `expires_in_seconds`: then only deletion ends it).
    pub enforced_by_openai: bool,
    /// The service account that owns it.
    pub service_account_id: String,
    /// The key's id.
    pub key_id: String,
    /// The project it belongs to.
    pub project_id: String,
}

/// Why issuing or sweeping failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The Admin API failed.
    #[error(transparent)]
    OpenAi(#[from] openai::Error),
    /// Several active projects have the configured name.
    #[error(
        "{count} active OpenAI projects are named {name:?}; set OPENAI_PROJECT_ID to the one to use"
    )]
    AmbiguousProject {
        /// The configured name.
        name: String,
        /// How many projects have it.
        count: usize,
    },
    /// The create call succeeded but returned no key.
    #[error("OpenAI created the service account but returned no key")]
    NoKeyReturned,
    /// The task doing the work stopped before it finished (a bug: it
    /// panicked).
    #[error("the task issuing or sweeping stopped before it finished")]
    TaskFailed,
    /// The server is shutting down and starts no new create.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A live key of this server, as the pages show it. Never its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The service account that holds the key (`svc_acct_…`).
    pub service_account_id: String,
    /// The key's id, once known (`key_…`).
    pub key_id: Option<String>,
    /// Whose key it is.
    pub owner: Owner,
    /// When it was created (Unix seconds), once known.
    pub created_at: Option<i64>,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
    /// When it was last used (Unix seconds), as OpenAI last said.
    pub last_used_at: Option<i64>,
    /// The project it is in.
    pub project_id: String,
}

impl KeyInfo {
    fn new(known: index::Known, project_id: &str) -> Self {
        Self {
            project_id: project_id.to_owned(),
            service_account_id: known.id,
            key_id: known.key_id,
            owner: known.name.owner,
            created_at: known.created_at,
            expires_at: known.name.expires_at,
            last_used_at: known.last_used_at,
        }
    }
}

/// The person already holds the most live keys allowed, counting the keys
/// being created for them right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    /// When their oldest key expires (Unix seconds): a new one fits then.
    pub oldest_expiry: i64,
}

/// A place under a person's cap of live keys, held from before the create
/// until the key is in the schedule or the create has failed, so that
/// simultaneous sign-ins of one person cannot all pass the cap.
#[derive(Debug)]
pub struct Reservation {
    keys: Keys,
    owner: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.keys.index().release(&self.owner);
    }
}

/// Issues waiting to retry a create that OpenAI turned away with a 429.
/// While there are any, sweeps send nothing: people waiting for a key go
/// first, and deletes can wait a second.
#[derive(Debug, Default)]
pub(crate) struct Priority {
    waiting: AtomicUsize,
    done: Notify,
}

/// Holds sweeps back while alive.
struct PriorityHold<'a>(&'a Priority);

impl Drop for PriorityHold<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Priority {
    fn hold(&self) -> PriorityHold<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        PriorityHold(self)
    }

    /// Whether an issue is waiting for its turn.
    pub(crate) fn is_held(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Waits while an issue holds priority, at most `max`.
    pub(crate) async fn wait_turn(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while self.is_held() {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.is_held() {
                return;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return;
            }
        }
    }
}

/// Issues in progress (a create, and the clean-up of one that failed
/// ambiguously), so that shutdown can wait for them.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one issue in progress while alive.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What one sweep did; logged as one line.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepReport {
    /// `full` (listed every account) or `due` (deleted what the schedule
    /// said was due, without listing).
    pub kind: &'static str,
    /// Accounts listed, ours or not.
    pub listed: usize,
    /// List pages fetched.
    pub pages: usize,
    /// Our accounts that were due and are now gone.
    pub deleted: usize,
    /// Of those, how many another replica had already deleted (404).
    pub already_gone: usize,
    /// Our due accounts whose delete failed (retried next sweep).
    pub failed: usize,
    /// Our accounts not yet due.
    pub kept: usize,
    /// Accounts not created by this server, left alone.
    pub foreign: usize,
    /// Accounts of the Go original deleted (with `CLEANUP_LEGACY_ACCOUNTS`).
    pub legacy_deleted: usize,
    /// Calls retried after a 429, 5xx or timeout.
    pub retries: usize,
    /// 429 answers seen.
    pub rate_limited: usize,
    /// Admin API calls made (lists and deletes, retries included).
    pub admin_calls: usize,
    /// The earliest expiry among the kept accounts (Unix seconds).
    pub next_expiry: Option<i64>,
    /// Wall time the sweep took.
    pub duration_ms: u64,
    /// Set when listing failed part-way: the sweep deleted what it had seen.
    pub list_error: Option<String>,
}

impl SweepReport {
    /// True when nothing failed.
    pub fn is_clean(&self) -> bool {
        self.failed == 0 && self.list_error.is_none()
    }
}

/// Issues and sweeps keys in one OpenAI project. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Keys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    admin: AdminClient,
    settings: Settings,
    project_id: OnceCell<String>,
    /// Names of accounts whose create failed ambiguously: delete them on the
    /// next sweep whatever their expiry, since their key was never shown.
    orphans: Mutex<HashSet<String>>,
    /// Our live accounts by expiry: the schedule of deletions.
    index: Mutex<Index>,
    /// Wakes the scheduler when the schedule gains an earlier expiry.
    rearm: Notify,
    reached: std::sync::atomic::AtomicBool,
    /// Creates before deletes when OpenAI is rate limiting.
    priority: Priority,
    /// Issues in progress.
    in_flight: Arc<InFlight>,
    /// Set at shutdown: no new create starts.
    closing: std::sync::atomic::AtomicBool,
    /// When the last complete listing of every account began; changes when
    /// one completes.
    listed: tokio::sync::watch::Sender<Option<SystemTime>>,
    /// Keys found gone before their expiry, until their expiry.
    vanished: Mutex<Vec<Vanished>>,
    /// Accounts this replica set out to revoke, with their expiry: gone
    /// from a later listing is what was asked, even when the delete's
    /// answer was lost.
    revoked_here: Mutex<HashMap<String, i64>>,
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether a failed call may succeed if tried again (an oversized answer
/// would only come again).
fn retryable(error: &openai::Error) -> bool {
    matches!(error, openai::Error::RateLimited { .. })
        || (error.is_ambiguous() && !matches!(error, openai::Error::TooLarge { .. }))
        || matches!(error, openai::Error::Api { status: 409, .. })
}

/// How long to wait before trying a failed call again: a 429's
/// `Retry-After`, or a backoff; at most 30 s.
fn retry_wait(error: &openai::Error, attempt: u32) -> Duration {
    let wait = match error {
        openai::Error::RateLimited {
            retry_after: Some(after),
            ..
        } => *after,
        _ => deleter::backoff(attempt),
    };
    wait.min(Duration::from_secs(30))
}

/// What the listing half of a sweep found.
#[derive(Default)]
struct Listing {
    listed: usize,
    pages: usize,
    kept: Vec<(String, AccountName)>,
    /// How many were kept (`kept` goes to the schedule).
    kept_count: usize,
    /// When each kept account was created: `(expiry, id, created_at)`.
    created: Vec<(i64, String, i64)>,
    foreign: usize,
    retries: usize,
    rate_limited: usize,
    calls: usize,
    error: Option<openai::Error>,
}

impl Keys {
    /// Keys in the configured project.
    pub fn new(admin: AdminClient, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                settings,
                project_id: OnceCell::new(),
                orphans: Mutex::default(),
                index: Mutex::default(),
                rearm: Notify::new(),
                reached: std::sync::atomic::AtomicBool::new(false),
                priority: Priority::default(),
                in_flight: Arc::default(),
                closing: std::sync::atomic::AtomicBool::new(false),
                listed: tokio::sync::watch::Sender::new(None),
                vanished: Mutex::default(),
                revoked_here: Mutex::default(),
            }),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn orphans(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True once an Admin API call succeeded.
    pub fn was_reached(&self) -> bool {
        self.inner
            .reached
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark_reached(&self) {
        self.inner
            .reached
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Checks that the Admin API answers (for readiness): resolves the
    /// project and reads it.
    pub async fn probe(&self, now: SystemTime) -> Result<(), Error> {
        let project_id = self.project_id(now).await?.to_owned();
        self.inner.admin.retrieve_project(&project_id).await?;
        self.mark_reached();
        Ok(())
    }

    /// When the last complete listing of every account began, on the
    /// server's clock (`None`: none yet).
    pub fn listed_at(&self) -> Option<SystemTime> {
        *self.inner.listed.borrow()
    }

    /// Changes each time a complete listing of every account is published.
    pub fn listings(&self) -> tokio::sync::watch::Receiver<Option<SystemTime>> {
        self.inner.listed.subscribe()
    }

    /// `owner`'s live keys, soonest expiry first, as this replica knows them.
    pub fn keys_of(&self, owner: &Owner, now: SystemTime) -> Vec<KeyInfo> {
        self.index()
            .keys_of(owner.as_str(), unix(now))
            .into_iter()
            .map(|known| KeyInfo::new(known, self.known_project_id()))
            .collect()
    }

    /// Every live key of this server, soonest expiry first.
    pub fn all_keys(&self, now: SystemTime) -> Vec<KeyInfo> {
        self.index()
            .all_live(unix(now))
            .into_iter()
            .map(|known| KeyInfo::new(known, self.known_project_id()))
            .collect()
    }

    /// One live key of this server, by its service account.
    pub fn find(&self, service_account_id: &str, now: SystemTime) -> Option<KeyInfo> {
        self.index()
            .find(service_account_id, unix(now))
            .map(|known| KeyInfo::new(known, self.known_project_id()))
    }

    /// Every account of `owner` this replica knows, expired-but-not-yet-
    /// deleted ones included (their keys may still work where OpenAI does
    /// not enforce the expiry).
    pub fn accounts_of(&self, owner: &Owner) -> Vec<KeyInfo> {
        self.keys_of(owner, SystemTime::UNIX_EPOCH)
    }

    /// Every account of this server this replica knows, expired-but-not-
    /// yet-deleted ones included.
    pub fn all_accounts(&self) -> Vec<KeyInfo> {
        self.all_keys(SystemTime::UNIX_EPOCH)
    }

    /// Revokes `keys` (deletes their accounts) in a task of its own, so
    /// that a caller that goes away does not cut a revocation short: under
    /// a sweep's adaptive concurrency and 429 handling, each account retried
    /// a few times, and forgotten once gone. Each deleted account is one
    /// audit line naming `actor` and `action`, written as it goes. The
    /// accounts that could not be deleted come back.
    pub fn revoke(
        &self,
        keys: Vec<KeyInfo>,
        actor: impl std::fmt::Display,
        action: &'static str,
        now: SystemTime,
    ) -> tokio::task::JoinHandle<Result<Vec<KeyInfo>, Error>> {
        let actor = actor.to_string();
        // Deleted here, whatever the answer says: a listing that meets
        // them gone is no news (see `note_vanished`).
        {
            let mut revoked = self
                .inner
                .revoked_here
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for key in &keys {
                revoked.insert(key.service_account_id.clone(), key.expires_at);
            }
        }
        let this = self.clone();
        let context = crate::audit::context();
        tokio::spawn(crate::audit::within(
            context,
            async move {
                let project_id = this.project_id(now).await?.to_owned();
                let (jobs, rx) = mpsc::channel(keys.len().max(1));
                for key in &keys {
                    let mut job = Due::new(
                        key.service_account_id.clone(),
                        String::new(),
                        key.owner.to_string(),
                        key.expires_at,
                    );
                    job.key_id = key.key_id.clone();
                    // The channel holds them all.
                    let _ = jobs.try_send(job);
                }
                drop(jobs);
                let settings = &this.inner.settings;
                let mut failed = Vec::new();
                deleter::run(
                    &this.inner.admin,
                    &project_id,
                    deleter::Pace {
                        initial: settings.concurrency,
                        max: settings.max_concurrency,
                        priority: &this.inner.priority,
                        max_yield: settings.create_patience,
                    },
                    rx,
                    |job, fate| match fate {
                        Fate::Deleted | Fate::AlreadyGone => {
                            this.inner.settings.audit.record(
                                crate::audit::Event {
                                    actor: Some(actor.to_string()),
                                    subject: Some(job.owner.clone()),
                                    account_id: Some(job.id.clone()),
                                    key_id: job.key_id.clone(),
                                    project: Some(project_id.clone()),
                                    expires_at: Some(job.expires_at),
                                    reason: Some(if matches!(fate, Fate::AlreadyGone) {
                                        format!("{action} (already gone)")
                                    } else {
                                        action.to_owned()
                                    }),
                                    ..crate::audit::Event::new("key.revoked")
                                },
                                now,
                            );
                            this.index().remove_deleted(job.expires_at, &job.id);
                        }
                        Fate::Failed(error) => {
                            tracing::warn!(%error, actor = %actor, action, service_account.id = %job.id, "could not revoke a key");
                            failed.push(job.id.clone());
                        }
                    },
                )
                .await;
                Ok(keys
                    .into_iter()
                    .filter(|k| failed.contains(&k.service_account_id))
                    .collect())
            }
            .instrument(tracing::Span::current()),
        ))
    }
    /// Reads every key of the project from OpenAI's key listing, to learn
    /// when each was last used (and the key ids of accounts another
    /// replica created). One call per 100 keys.
    /// Returns the calls it made.
    pub async fn refresh_usage(&self, now: SystemTime) -> Result<u64, Error> {
        let project_id = self.project_id(now).await?.to_owned();
        let since = self.index().seq();
        let mut usage = std::collections::HashMap::new();
        let mut after: Option<String> = None;
        let mut calls = 0;
        loop {
            calls += 1;
            let page = self
                .inner
                .admin
                .list_project_api_keys(&project_id, after.as_deref())
                .await?;
            for key in page.data {
                let Some(account) = key.owner.and_then(|o| o.service_account) else {
                    continue;
                };
                usage.insert(account.id, (key.id, key.created_at, key.last_used_at));
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        let missing = {
            let mut index = self.index();
            index.note_usage(&usage);
            index.keys_missing(&usage, since)
        };
        let now_unix = unix(now);
        self.note_vanished(
            missing
                .into_iter()
                .filter(|(_, name, _)| name.expires_at > now_unix + VANISHED_MARGIN)
                .map(|(id, name, key_id)| (id, name.owner, key_id, name.expires_at)),
            "key deleted before its expiry, its account kept",
            now,
        );
        Ok(calls)
    }

    /// One page of the project's costs per key, in daily buckets from
    /// `start`.
    pub async fn costs(
        &self,
        start: i64,
        page: Option<&str>,
        now: SystemTime,
    ) -> Result<crate::openai::CostsPage, Error> {
        let project_id = self.project_id(now).await?.to_owned();
        Ok(self
            .inner
            .admin
            .costs_by_key(&project_id, start, page)
            .await?)
    }

    /// One page of the project's completions usage per key, in daily
    /// buckets from `start` (Unix seconds); `page` is the previous page's
    /// cursor.
    pub async fn completions_usage(
        &self,
        start: i64,
        page: Option<&str>,
        now: SystemTime,
    ) -> Result<crate::openai::UsagePage, Error> {
        let project_id = self.project_id(now).await?.to_owned();
        Ok(self
            .inner
            .admin
            .completions_usage_by_key(&project_id, start, page)
            .await?)
    }

    /// The earliest expiry among our accounts that this replica knows of.
    pub fn next_expiry(&self) -> Option<i64> {
        self.index().earliest()
    }

    /// How many live keys `owner` holds, as far as this replica knows (the
    /// last full listing plus what it issued since).
    pub fn live_keys_for(&self, owner: &Owner, now: SystemTime) -> usize {
        self.index().live_for(owner.as_str(), unix(now))
    }

    /// When the oldest of `owner`'s live keys expires (Unix seconds).
    pub fn oldest_expiry_for(&self, owner: &Owner, now: SystemTime) -> Option<i64> {
        self.index().earliest_for(owner.as_str(), unix(now))
    }

    /// Takes a place under `owner`'s cap of `cap` live keys (0: no cap),
    /// counting the keys being created for them right now. What this
    /// replica knows: another replica's new keys count once it has listed
    /// them.
    pub fn reserve(
        &self,
        owner: &Owner,
        cap: usize,
        now: SystemTime,
    ) -> Result<Reservation, CapReached> {
        let now = unix(now);
        let mut index = self.index();
        if cap > 0 && index.live_for(owner.as_str(), now) + index.pending_for(owner.as_str()) >= cap
        {
            // With only creates in flight, the oldest expires a lifetime
            // from now if they succeed.
            let ttl = i64::try_from(self.inner.settings.ttl.as_secs()).unwrap_or(i64::MAX);
            let oldest_expiry = index
                .earliest_for(owner.as_str(), now)
                .unwrap_or_else(|| now.saturating_add(ttl));
            return Err(CapReached { oldest_expiry });
        }
        index.reserve(owner.as_str());
        drop(index);
        Ok(Reservation {
            keys: self.clone(),
            owner: owner.as_str().to_owned(),
        })
    }

    /// Issues a key in a task of its own, holding `reservation` until it is
    /// done: if the caller goes away mid-create, the create and the clean-up
    /// of a failed one still finish, and shutdown waits for them
    /// ([`Keys::issues_settled`]).
    /// Refused once [`Keys::close`] has been called.
    pub fn spawn_issue(
        &self,
        owner: Owner,
        lifetime: Duration,
        scopes: Vec<String>,
        reservation: Reservation,
        now: SystemTime,
    ) -> Result<tokio::task::JoinHandle<Result<IssuedKey, Error>>, Error> {
        let in_flight = Arc::clone(&self.inner.in_flight);
        // Counted before looking at `closing`, which `close` sets before
        // looking at the count: one of the two sees the other.
        in_flight.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(in_flight);
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let keys = self.clone();
        // Its log lines belong to the caller's span (the request's id and
        // user), and its upstream wait to the caller's Server-Timing.
        let context = crate::audit::context();
        let issue = crate::audit::within(context, async move {
            let issued = keys.issue(&owner, lifetime, &scopes, now).await;
            drop(reservation);
            drop(guard);
            issued
        })
        .instrument(tracing::Span::current());
        Ok(tokio::spawn(crate::timing::carry(issue)))
    }

    /// Starts no new create from now on (shutdown); those in progress go on
    /// ([`Keys::issues_settled`]).
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
    }

    /// Names of accounts whose create failed ambiguously and that are not
    /// known to be gone: what a shutdown leaves to the sweep at their
    /// expiry.
    pub fn unresolved_failed_creates(&self) -> Vec<String> {
        self.orphans().iter().cloned().collect()
    }

    /// Completes once no issue is in progress.
    pub fn issues_settled(&self) -> impl Future<Output = ()> + Send + 'static {
        let in_flight = Arc::clone(&self.inner.in_flight);
        async move {
            loop {
                let idle = in_flight.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if in_flight.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        }
    }

    /// Issues in progress right now.
    pub fn issues_in_flight(&self) -> usize {
        self.inner.in_flight.count.load(Ordering::Acquire)
    }

    /// Completes when the schedule changed (a key was issued), so that the
    /// scheduler re-arms its timer.
    pub async fn rearmed(&self) {
        self.inner.rearm.notified().await;
    }

    /// The project id once known (every account listed or issued is in
    /// it, so it is known whenever there are keys); empty before.
    pub fn known_project_id(&self) -> &str {
        self.inner.project_id.get().map_or("", String::as_str)
    }

    /// How the project is configured.
    pub fn project(&self) -> &ProjectSelector {
        &self.inner.settings.project
    }

    /// The project id: configured, or found by name (created when missing)
    /// once and then cached for the life of the process.
    pub async fn project_id(&self, now: SystemTime) -> Result<&str, Error> {
        let id = self
            .inner
            .project_id
            .get_or_try_init(|| async {
                match &self.inner.settings.project {
                    ProjectSelector::Id(id) => Ok(id.clone()),
                    ProjectSelector::Name(name) => self.find_or_create_project(name, now).await,
                }
            })
            .await?;
        Ok(id)
    }

    /// The active projects named `name`.
    async fn projects_named(&self, name: &str) -> Result<Vec<openai::Project>, Error> {
        let admin = &self.inner.admin;
        let mut matches = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = admin.list_projects(after.as_deref()).await?;
            matches.extend(
                page.data
                    .into_iter()
                    .filter(|p| p.name.as_deref() == Some(name))
                    .filter(|p| p.status.as_deref() != Some("archived")),
            );
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        self.mark_reached();
        Ok(matches)
    }

    /// Finds the project by name, or creates it. Replicas that start
    /// together may all find none and all create one: each then waits a
    /// moment, looks again, and uses the oldest (ties: the smallest id),
    /// archiving its own if that is not the one, so that all agree on one
    /// project and no duplicate is left behind.
    async fn find_or_create_project(&self, name: &str, now: SystemTime) -> Result<String, Error> {
        let found = self.projects_named(name).await?;
        match found.len() {
            0 => {}
            // Created moments ago, maybe by a replica racing another one:
            // look again once they have settled, and take what they agree
            // on, so as not to keep using one that its creator archives.
            1 if unix(now).abs_diff(found[0].created_at) < RECENT_PROJECT.as_secs() => {
                tokio::time::sleep(PROJECT_SETTLE).await;
                let seen = found[0].id.clone();
                let found = self.projects_named(name).await.unwrap_or(found);
                let oldest = found
                    .iter()
                    .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                return Ok(oldest.map_or(seen, |p| p.id.clone()));
            }
            1 => return Ok(found[0].id.clone()),
            count => {
                return Err(Error::AmbiguousProject {
                    name: name.to_owned(),
                    count,
                });
            }
        }
        let admin = &self.inner.admin;
        let created = admin.create_project(name).await?;
        tokio::time::sleep(PROJECT_SETTLE).await;
        let found = match self.projects_named(name).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, project.id = %created.id, "could not look again for other replicas' projects after creating this one; using it");
                return Ok(created.id);
            }
        };
        let chosen = found
            .iter()
            .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
            .map(|p| p.id.clone());
        match chosen {
            Some(chosen) if chosen != created.id => {
                tracing::info!(
                    project.id = %chosen,
                    project.name = name,
                    "another replica created the OpenAI project at the same time; using the older one"
                );
                if let Err(error) = admin.archive_project(&created.id).await {
                    tracing::warn!(%error, project.id = %created.id, "could not archive the duplicate project this replica created; archive it by hand, or the next start finds two");
                }
                Ok(chosen)
            }
            // Ours, or the listing does not show it yet.
            _ => {
                tracing::info!(project.id = %created.id, project.name = name, "created the OpenAI project for issued keys");
                Ok(created.id)
            }
        }
    }

    /// Creates a service account for `owner` and returns its key.
    ///
    /// The create is never retried blindly: OpenAI has no idempotency key, so
    /// after a timeout or 5xx the account may exist. Then it is looked up by
    /// its unique name and deleted (its key can never be shown), and
    /// remembered for the next sweep in case it appears later.
    // No span of its own: its log lines belong to the request's span, which
    // carries the request id and the signed-in user.
    pub async fn issue(
        &self,
        owner: &Owner,
        lifetime: Duration,
        scopes: &[String],
        now: SystemTime,
    ) -> Result<IssuedKey, Error> {
        let project_id = self.project_id(now).await?.to_owned();
        let ttl = lifetime.as_secs();
        let name = AccountName::new(owner.clone(), unix(now).saturating_add_unsigned(ttl));
        let encoded = name.encode();
        let admin = &self.inner.admin;
        if !scopes.is_empty() {
            return self
                .issue_scoped(owner, &project_id, name, &encoded, scopes, ttl)
                .await;
        }

        let mut enforced = true;
        let mut result = self.create(&project_id, &encoded, Some(ttl), false).await;
        // Only an API that does not know the field at all; a range or an
        // organisation policy refusing our value must stay an error.
        if let Err(openai::Error::BadRequest { message, param, .. }) = &result
            && (param.as_deref() == Some("expires_in_seconds")
                || message.contains("expires_in_seconds"))
            && [
                "unrecognized",
                "unknown",
                "not permitted",
                "additional propert",
            ]
            .iter()
            .any(|m| message.to_ascii_lowercase().contains(m))
        {
            // An older API that does not know `expires_in_seconds`: nothing
            // was created, so one retry without it is safe. The key then dies
            // only by deletion, which the sweep does on time.
            tracing::warn!(
                openai.message = %message,
                "OpenAI rejected expires_in_seconds; issuing a key that only deletion will end"
            );
            enforced = false;
            result = self.create(&project_id, &encoded, None, false).await;
        }

        let created = match result {
            Ok(created) => created,
            Err(error) if error.is_ambiguous() => {
                self.reconcile_failed_create(&project_id, &encoded).await;
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        self.mark_reached();
        let Some(key) = created.api_key else {
            // Should not happen; do not leave a keyless account behind.
            if let Err(error) = admin.delete_service_account(&project_id, &created.id).await {
                tracing::warn!(%error, service_account.id = %created.id, "could not delete a service account created without a key");
                self.orphans().insert(encoded);
            }
            return Err(Error::NoKeyReturned);
        };
        let expires_at = key.expires_at.unwrap_or(name.expires_at);
        let enforced_by_openai = enforced && key.expires_at.is_some();
        {
            let mut index = self.index();
            let expires = name.expires_at;
            index.insert(created.id.clone(), name, Some(key.id.clone()));
            index.note_created(expires, &created.id, created.created_at);
        }
        self.inner.rearm.notify_one();
        tracing::info!(
            owner = %owner,
            service_account.id = %created.id,
            key.id = %key.id,
            expires_at,
            enforced_by_openai,
            "issued a key"
        );
        Ok(IssuedKey {
            value: key.value,
            expires_at,
            enforced_by_openai,
            service_account_id: created.id,
            key_id: key.id,
            project_id: project_id.clone(),
        })
    }

    /// A key restricted to `scopes` from birth (the spec's section 9): the
    /// account without a role or key (`create_service_account_only`), the
    /// `member` role (without one its keys can do nothing), then its key
    /// with the scopes and the lifetime: three calls. If a step after the
    /// first fails, the account is deleted at once, or, if that fails too,
    /// by the sweep at its expiry, which its name carries.
    async fn issue_scoped(
        &self,
        owner: &Owner,
        project_id: &str,
        name: AccountName,
        encoded: &str,
        scopes: &[String],
        ttl: u64,
    ) -> Result<IssuedKey, Error> {
        let admin = &self.inner.admin;
        let created = match self.create(project_id, encoded, None, true).await {
            Ok(created) => created,
            Err(error) if error.is_ambiguous() => {
                self.reconcile_failed_create(project_id, encoded).await;
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        self.mark_reached();
        // Indexed at once, so that a failure below leaves it to the sweep
        // at its expiry even on this replica.
        let expires = name.expires_at;
        self.index().insert(created.id.clone(), name.clone(), None);
        let finished = async {
            admin
                .set_service_account_role(project_id, &created.id, "member")
                .await?;
            admin
                .create_service_account_key(project_id, &created.id, scopes, ttl)
                .await
        }
        .await;
        let key = match finished {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, service_account.id = %created.id, "a scoped key could not be finished; deleting its account");
                match admin.delete_service_account(project_id, &created.id).await {
                    Ok(()) | Err(openai::Error::NotFound { .. }) => {
                        self.index().remove_deleted(expires, &created.id);
                    }
                    Err(delete_error) => {
                        tracing::warn!(error = %delete_error, service_account.id = %created.id, "could not delete it now; the sweep deletes it at its expiry");
                    }
                }
                self.inner.rearm.notify_one();
                return Err(error.into());
            }
        };
        let expires_at = key.expires_at.unwrap_or(expires);
        {
            let mut index = self.index();
            index.insert(created.id.clone(), name, Some(key.id.clone()));
            index.note_created(expires, &created.id, created.created_at);
        }
        self.inner.rearm.notify_one();
        tracing::info!(
            owner = %owner,
            service_account.id = %created.id,
            key.id = %key.id,
            expires_at,
            scopes = %scopes.join(" "),
            enforced_by_openai = key.expires_at.is_some(),
            "issued a scoped key"
        );
        Ok(IssuedKey {
            value: key.value,
            expires_at,
            enforced_by_openai: key.expires_at.is_some(),
            service_account_id: created.id,
            key_id: key.id,
            project_id: project_id.to_owned(),
        })
    }

    /// One create, waiting out OpenAI's 429s for up to the create's
    /// patience: a 429 means nothing was created, so trying again is safe.
    /// While it waits, sweeps hold back, so that its retry finds room.
    async fn create(
        &self,
        project_id: &str,
        name: &str,
        expires_in_seconds: Option<u64>,
        account_only: bool,
    ) -> Result<openai::CreatedServiceAccount, openai::Error> {
        let deadline = Instant::now() + self.inner.settings.create_patience;
        let mut hold = None;
        loop {
            let admin = &self.inner.admin;
            let result = if account_only {
                admin.create_service_account_only(project_id, name).await
            } else {
                admin
                    .create_service_account(project_id, name, expires_in_seconds)
                    .await
            };
            let Err(openai::Error::RateLimited { retry_after, .. }) = &result else {
                return result;
            };
            let wait = retry_after.unwrap_or(Duration::from_secs(1));
            if Instant::now() + wait > deadline {
                return result;
            }
            hold.get_or_insert_with(|| self.inner.priority.hold());
            tracing::info!(
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "OpenAI is rate limiting; the create waits its turn, sweeps hold back"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Looks for the account of a create that failed ambiguously and
    /// deletes it, each call retried like a sweep's; what cannot be done now
    /// is left to the next sweep, which deletes it whatever its expiry.
    async fn reconcile_failed_create(&self, project_id: &str, name: &str) {
        self.orphans().insert(name.to_owned());
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        let account = loop {
            let page = match self
                .list_page(project_id, after.as_deref(), &mut listing, false)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "could not look for the account of a failed create; the next sweep deletes it");
                    return;
                }
            };
            if let Some(account) = page.data.into_iter().find(|a| a.name == name) {
                break account;
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => {
                    tracing::info!(
                        "the failed create left no account (yet); the next sweep deletes it if one appears"
                    );
                    return;
                }
            }
        };
        let mut attempt = 0;
        loop {
            match self
                .inner
                .admin
                .delete_service_account(project_id, &account.id)
                .await
            {
                Ok(()) | Err(openai::Error::NotFound { .. }) => break,
                Err(error) if retryable(&error) && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(retry_wait(&error, attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, service_account.id = %account.id, "could not delete the account of a failed create; the next sweep will");
                    return;
                }
            }
        }
        let parsed = AccountName::parse(name);
        tracing::info!(
            owner = parsed.as_ref().map(|n| n.owner.to_string()).unwrap_or_default(),
            service_account.id = %account.id,
            expires_at = parsed.map_or(0, |n| n.expires_at),
            reason = "failed create",
            "deleted the account of a failed create"
        );
        self.orphans().remove(name);
    }

    /// One page of the account list, retried on 429, 5xx and timeouts;
    /// for a sweep (`yielding`), only once creates waiting for their turn
    /// have had it.
    async fn list_page(
        &self,
        project_id: &str,
        after: Option<&str>,
        listing: &mut Listing,
        yielding: bool,
    ) -> Result<Page<ServiceAccount>, openai::Error> {
        let mut attempt = 0;
        loop {
            if yielding {
                self.inner
                    .priority
                    .wait_turn(self.inner.settings.create_patience)
                    .await;
            }
            listing.calls += 1;
            match self
                .inner
                .admin
                .list_service_accounts(project_id, after)
                .await
            {
                Ok(page) => return Ok(page),
                Err(error) if retryable(&error) && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    listing.retries += 1;
                    if matches!(error, openai::Error::RateLimited { .. }) {
                        listing.rate_limited += 1;
                    }
                    let wait = retry_wait(&error, attempt);
                    tracing::debug!(%error, wait_ms = wait.as_millis(), "retrying a list page");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Lists every account, sending the due ones to `due` as they are found.
    async fn list_all(&self, project_id: &str, now: i64, due: &mpsc::Sender<Due>) -> Listing {
        let orphans = self.orphans().clone();
        let legacy = self.inner.settings.legacy_cleanup;
        let ttl = i64::try_from(self.inner.settings.ttl.as_secs()).unwrap_or(i64::MAX);
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        loop {
            let page = match self
                .list_page(project_id, after.as_deref(), &mut listing, true)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "listing service accounts failed part-way");
                    listing.error = Some(error);
                    break;
                }
            };
            listing.pages += 1;
            listing.listed += page.data.len();
            for account in page.data {
                let job = match AccountName::parse(&account.name) {
                    Some(name) if name.expires_at <= now || orphans.contains(&account.name) => {
                        let key_id = self.index().key_id(name.expires_at, &account.id);
                        let mut job = Due::new(
                            account.id,
                            account.name,
                            name.owner.to_string(),
                            name.expires_at,
                        );
                        job.key_id = key_id;
                        job
                    }
                    Some(name) => {
                        listing.created.push((
                            name.expires_at,
                            account.id.clone(),
                            account.created_at,
                        ));
                        listing.kept.push((account.id, name));
                        continue;
                    }
                    // The Go original named accounts after the bare email and
                    // expired them by creation time.
                    None if legacy
                        && EmailAddress::parse(&account.name).is_ok()
                        && account.created_at.saturating_add(ttl) <= now =>
                    {
                        let expired = account.created_at.saturating_add(ttl);
                        Due::new(account.id, account.name.clone(), account.name, expired)
                    }
                    None => {
                        listing.foreign += 1;
                        continue;
                    }
                };
                if due.send(job).await.is_err() {
                    break;
                }
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        listing
    }

    /// Deletes what arrives on `jobs`, updating the schedule and logging
    /// each deletion; fills in the report's delete counts.
    async fn delete(
        &self,
        project_id: &str,
        jobs: mpsc::Receiver<Due>,
        report: &mut SweepReport,
        now: SystemTime,
    ) {
        let settings = &self.inner.settings;
        let mut legacy_deleted = 0;
        let tally = deleter::run(
            &self.inner.admin,
            project_id,
            deleter::Pace {
                initial: settings.concurrency,
                max: settings.max_concurrency,
                priority: &self.inner.priority,
                max_yield: settings.create_patience,
            },
            jobs,
            |job, fate| match fate {
                Fate::Deleted | Fate::AlreadyGone => {
                    if AccountName::parse(&job.name).is_none() {
                        legacy_deleted += 1;
                    }
                    if matches!(fate, Fate::Deleted) {
                        let key_id = job
                            .key_id
                            .clone()
                            .or_else(|| self.index().key_id(job.expires_at, &job.id))
                            .unwrap_or_default();
                        self.inner.settings.audit.record(
                            crate::audit::Event {
                                actor: Some("server".to_owned()),
                                subject: Some(job.owner.clone()),
                                account_id: Some(job.id.clone()),
                                key_id: (!key_id.is_empty()).then(|| key_id.clone()),
                                project: Some(project_id.to_owned()),
                                expires_at: Some(job.expires_at),
                                reason: Some("expired".to_owned()),
                                ..crate::audit::Event::new("key.deleted")
                            },
                            now,
                        );
                    }
                    self.index().remove_deleted(job.expires_at, &job.id);
                    self.orphans().remove(&job.name);
                }
                Fate::Failed(error) => {
                    tracing::warn!(%error, owner = %job.owner, service_account.id = %job.id, "could not delete an expired service account; the next sweep retries");
                }
            },
        )
        .await;
        report.deleted += tally.deleted;
        report.already_gone += tally.already_gone;
        report.failed += tally.failed;
        report.retries += tally.retries;
        report.rate_limited += tally.rate_limited;
        report.admin_calls += tally.calls;
        report.legacy_deleted += legacy_deleted;
    }

    /// A full sweep: list every account of the project, delete ours that are
    /// due (expired, or orphaned by a failed create) while listing goes on,
    /// leave everything else alone, and rebuild the schedule from what was
    /// listed. Carries on past failed deletes; a 404 counts as done.
    #[instrument(skip_all)]
    pub async fn sweep(&self, now: SystemTime) -> Result<SweepReport, Error> {
        let started = Instant::now();
        let project_id = self.project_id(now).await?.to_owned();
        let now_unix = unix(now);
        let since = self.index().seq();
        let (tx, rx) = mpsc::channel(1024);
        let mut report = SweepReport {
            kind: "full",
            ..SweepReport::default()
        };
        let (listing, ()) = tokio::join!(
            async {
                let mut listing = self.list_all(&project_id, now_unix, &tx).await;
                drop(tx);
                // Published as soon as the listing is complete, not once
                // the deletes are: pages wait for the listing only.
                self.publish(&mut listing, since, now);
                listing
            },
            self.delete(&project_id, rx, &mut report, now)
        );
        if listing.pages > 0 {
            self.mark_reached();
        }
        report.listed = listing.listed;
        report.pages = listing.pages;
        report.foreign = listing.foreign;
        report.kept = listing.kept_count;
        report.retries += listing.retries;
        report.rate_limited += listing.rate_limited;
        report.admin_calls += listing.calls;
        report.list_error = listing.error.as_ref().map(ToString::to_string);
        // Orphans past their expiry are covered by the normal rule.
        self.orphans()
            .retain(|n| AccountName::parse(n).is_some_and(|a| a.expires_at > now_unix));
        report.next_expiry = self.next_expiry();
        report.duration_ms = elapsed_ms(started);
        log_report(&report);
        Ok(report)
    }

    /// Makes a listing the schedule: all of it when complete (keeping what
    /// was issued while it ran), or what it reached when it stopped part-way;
    /// and tells whoever waits for a fresh listing.
    fn publish(&self, listing: &mut Listing, since: u64, now: SystemTime) {
        let kept = std::mem::take(&mut listing.kept);
        listing.kept_count = kept.len();
        {
            let mut index = self.index();
            if listing.error.is_none() {
                let gone = index.replace(kept, since);
                drop(index);
                let now_unix = unix(now);
                self.note_vanished(
                    gone.into_iter()
                        .filter(|(_, name, _)| name.expires_at > now_unix + VANISHED_MARGIN)
                        .map(|(id, name, key_id)| (id, name.owner, key_id, name.expires_at)),
                    "account deleted before its expiry",
                    now,
                );
                index = self.index();
            } else {
                // A partial listing must not forget accounts it did not reach.
                index.merge(kept);
            }
            for (expires_at, id, created_at) in &listing.created {
                index.note_created(*expires_at, id, *created_at);
            }
        }
        if listing.error.is_none() {
            self.inner.listed.send_replace(Some(now));
        }
    }

    /// Records keys found gone: an audit event each, and a day on their
    /// owner's page.
    fn note_vanished(
        &self,
        gone: impl Iterator<Item = (String, Owner, Option<String>, i64)>,
        what: &'static str,
        now: SystemTime,
    ) {
        let now_unix = unix(now);
        let project_id = self.known_project_id().to_owned();
        let mut revoked_here = self
            .inner
            .revoked_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        revoked_here.retain(|_, expires_at| *expires_at > now_unix);
        let mut vanished = self
            .inner
            .vanished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Kept until their expiry, so each is reported once.
        vanished.retain(|v| v.expires_at > now_unix || v.noticed_at + VANISHED_SHOWN > now_unix);
        for (id, owner, key_id, expires_at) in gone {
            if revoked_here.contains_key(&id) || vanished.iter().any(|v| v.service_account_id == id)
            {
                continue;
            }
            self.inner.settings.audit.record(
                crate::audit::Event {
                    actor: Some("server".to_owned()),
                    subject: Some(owner.to_string()),
                    account_id: Some(id.clone()),
                    key_id: key_id.clone(),
                    project: Some(project_id.clone()),
                    expires_at: Some(expires_at),
                    reason: Some(format!(
                        "{what}, not by this replica: OpenAI (a leak it found), someone by hand, or another replica's revocation"
                    )),
                    ..crate::audit::Event::new("key.vanished")
                },
                now,
            );
            tracing::warn!(
                account = %id,
                what,
                "a key of this server is gone before its expiry, not deleted by this replica"
            );
            vanished.push(Vanished {
                owner,
                service_account_id: id,
                key_id,
                expires_at,
                noticed_at: now_unix,
                what,
            });
        }
    }

    /// `owner`'s keys found gone before their expiry in the last day.
    pub fn vanished_of(&self, owner: &Owner, now: SystemTime) -> Vec<Vanished> {
        let now_unix = unix(now);
        self.inner
            .vanished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|v| v.owner == *owner && v.noticed_at + VANISHED_SHOWN > now_unix)
            .cloned()
            .collect()
    }

    /// Deletes the accounts the schedule says are due, without listing: what
    /// the scheduler runs at each expiry.
    #[instrument(skip_all)]
    pub async fn delete_due(&self, now: SystemTime) -> Result<SweepReport, Error> {
        let started = Instant::now();
        let project_id = self.project_id(now).await?.to_owned();
        let due = self.index().due(unix(now));
        let mut report = SweepReport {
            kind: "due",
            ..SweepReport::default()
        };
        if due.is_empty() {
            report.next_expiry = self.next_expiry();
            return Ok(report);
        }
        let (tx, rx) = mpsc::channel(due.len());
        for (id, name, key_id) in due {
            let owner = name.owner.to_string();
            let expires_at = name.expires_at;
            let mut job = Due::new(id, name.encode(), owner, expires_at);
            job.key_id = key_id;
            // The channel holds them all; it cannot be full or closed here.
            let _ = tx.try_send(job);
        }
        drop(tx);
        self.delete(&project_id, rx, &mut report, now).await;
        if report.failed > 0 {
            // Keep failed ones from spinning the scheduler: they stay in the
            // index, and are retried at the next full sweep.
            tracing::warn!(
                sweep.failed = report.failed,
                "some due accounts could not be deleted"
            );
        }
        report.next_expiry = self.next_expiry();
        report.duration_ms = elapsed_ms(started);
        log_report(&report);
        Ok(report)
    }

    /// Forgets accounts of the schedule that are due but whose deletion
    /// failed, so that the scheduler does not retry them in a tight loop;
    /// the next full sweep finds them again.
    pub fn forget_due(&self, now: SystemTime) {
        let mut index = self.index();
        for (id, name, _) in index.due(unix(now)) {
            index.remove(name.expires_at, &id);
        }
    }
}

fn log_report(report: &SweepReport) {
    // One list of fields for both levels (a callsite's level is fixed).
    macro_rules! sweep_finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                sweep.kind = report.kind,
                sweep.listed = report.listed,
                sweep.pages = report.pages,
                sweep.deleted = report.deleted,
                sweep.already_gone = report.already_gone,
                sweep.failed = report.failed,
                sweep.kept = report.kept,
                sweep.foreign = report.foreign,
                sweep.legacy_deleted = report.legacy_deleted,
                sweep.retries = report.retries,
                sweep.rate_limited = report.rate_limited,
                sweep.admin_calls = report.admin_calls,
                duration_ms = report.duration_ms,
                "sweep finished"
            )
        };
    }
    // A sweep that found nothing to do is no news (the metrics count it);
    // one that deleted, failed or could not list is.
    if report.deleted + report.failed + report.legacy_deleted > 0 || report.list_error.is_some() {
        sweep_finished!(tracing::Level::INFO);
    } else {
        sweep_finished!(tracing::Level::DEBUG);
    }
}
