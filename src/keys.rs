//! Issued keys: the service-account naming scheme, issuing a key for a
//! person, and the sweep that deletes expired accounts. OpenAI is the only
//! store: every account this server creates carries its owner and expiry in
//! its name, so any replica, even one that just restarted, knows what is due.

mod name;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use tracing::instrument;

use crate::config::ProjectSelector;
use crate::identity::EmailAddress;
use crate::openai::{self, AdminClient};

pub use name::{AccountName, PREFIX};

/// How many deletes a sweep runs at once.
pub const DELETE_CONCURRENCY: usize = 8;

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
}

/// What one sweep did; logged as one line and returned by `/revoke`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepReport {
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
    project: ProjectSelector,
    project_id: OnceCell<String>,
    ttl: Duration,
    /// Names of accounts whose create failed ambiguously: delete them on the
    /// next sweep whatever their expiry, since their key was never shown.
    orphans: Mutex<HashSet<String>>,
    reached: std::sync::atomic::AtomicBool,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Keys {
    /// Keys in the configured project, each living `ttl`.
    pub fn new(admin: AdminClient, project: ProjectSelector, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin,
                project,
                project_id: OnceCell::new(),
                ttl,
                orphans: Mutex::default(),
                reached: std::sync::atomic::AtomicBool::new(false),
            }),
        }
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

    /// The project id: configured, or found by name (created when missing)
    /// once and then cached for the life of the process.
    pub async fn project_id(&self) -> Result<&str, Error> {
        let id = self
            .inner
            .project_id
            .get_or_try_init(|| async {
                match &self.inner.project {
                    ProjectSelector::Id(id) => Ok(id.clone()),
                    ProjectSelector::Name(name) => self.find_or_create_project(name).await,
                }
            })
            .await?;
        Ok(id)
    }

    async fn find_or_create_project(&self, name: &str) -> Result<String, Error> {
        let admin = &self.inner.admin;
        let mut matches = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = admin.list_projects(after.as_deref()).await?;
            matches.extend(
                page.data
                    .iter()
                    .filter(|p| p.name.as_deref() == Some(name))
                    .filter(|p| p.status.as_deref() != Some("archived"))
                    .map(|p| p.id.clone()),
            );
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        self.mark_reached();
        match matches.len() {
            0 => {
                let project = admin.create_project(name).await?;
                tracing::info!(project.id = %project.id, project.name = name, "created the OpenAI project for issued keys");
                Ok(project.id)
            }
            1 => Ok(matches.remove(0)),
            count => Err(Error::AmbiguousProject {
                name: name.to_owned(),
                count,
            }),
        }
    }

    /// Creates a service account for `owner` and returns its key.
    ///
    /// The create is never retried blindly: OpenAI has no idempotency key, so
    /// after a timeout or 5xx the account may exist. Then it is looked up by
    /// its unique name and deleted (its key can never be shown), and
    /// remembered for the next sweep in case it appears later.
    #[instrument(skip_all, fields(owner = %owner))]
    pub async fn issue(&self, owner: &EmailAddress, now: SystemTime) -> Result<IssuedKey, Error> {
        let project_id = self.project_id().await?.to_owned();
        let ttl = self.inner.ttl.as_secs();
        let name = AccountName::new(owner.clone(), unix(now).saturating_add_unsigned(ttl));
        let encoded = name.encode();
        let admin = &self.inner.admin;

        let mut enforced = true;
        let mut result = admin
            .create_service_account(&project_id, &encoded, Some(ttl))
            .await;
        if let Err(openai::Error::BadRequest { message, param, .. }) = &result
            && (param.as_deref() == Some("expires_in_seconds")
                || message.contains("expires_in_seconds"))
        {
            // An older API that does not know `expires_in_seconds`: nothing
            // was created, so one retry without it is safe. The key then dies
            // only by deletion, which the sweep does on time.
            tracing::warn!(
                openai.message = %message,
                "OpenAI rejected expires_in_seconds; issuing a key that only deletion will end"
            );
            enforced = false;
            result = admin
                .create_service_account(&project_id, &encoded, None)
                .await;
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
                self.remember_orphan(&encoded);
            }
            return Err(Error::NoKeyReturned);
        };
        let expires_at = key.expires_at.unwrap_or(name.expires_at);
        tracing::info!(
            audit = "issued",
            owner = %owner,
            service_account.id = %created.id,
            key.id = %key.id,
            expires_at,
            enforced_by_openai = enforced && key.expires_at.is_some(),
            "issued a key"
        );
        Ok(IssuedKey {
            value: key.value,
            expires_at,
            enforced_by_openai: enforced && key.expires_at.is_some(),
            service_account_id: created.id,
            key_id: key.id,
        })
    }

    fn remember_orphan(&self, name: &str) {
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
    }

    async fn reconcile_failed_create(&self, project_id: &str, name: &str) {
        self.remember_orphan(name);
        let admin = &self.inner.admin;
        let mut after: Option<String> = None;
        loop {
            let page = match admin
                .list_service_accounts(project_id, after.as_deref())
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "could not look for the account of a failed create; the next sweep deletes it");
                    return;
                }
            };
            if let Some(account) = page.data.iter().find(|a| a.name == name) {
                match admin.delete_service_account(project_id, &account.id).await {
                    Ok(()) | Err(openai::Error::NotFound { .. }) => {
                        tracing::info!(audit = "deleted", service_account.id = %account.id, reason = "failed create", "deleted the account of a failed create");
                        self.inner
                            .orphans
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(name);
                    }
                    Err(error) => {
                        tracing::warn!(%error, service_account.id = %account.id, "could not delete the account of a failed create; the next sweep will");
                    }
                }
                return;
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => return,
            }
        }
    }

    /// One sweep: list every account of the project, delete ours that are
    /// due (expired, or orphaned by a failed create), leave everything else
    /// alone. Carries on past failed deletes; a 404 counts as done.
    #[instrument(skip_all)]
    pub async fn sweep(&self, now: SystemTime) -> Result<SweepReport, Error> {
        let started = Instant::now();
        let project_id = self.project_id().await?.to_owned();
        let now_unix = unix(now);
        let admin = &self.inner.admin;
        let orphans = self
            .inner
            .orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();

        let mut report = SweepReport::default();
        let mut due: Vec<(String, AccountName)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match admin
                .list_service_accounts(&project_id, after.as_deref())
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "listing service accounts failed part-way");
                    report.list_error = Some(error.to_string());
                    break;
                }
            };
            report.pages += 1;
            report.listed += page.data.len();
            for account in page.data {
                match AccountName::parse(&account.name) {
                    None => report.foreign += 1,
                    Some(name)
                        if name.expires_at <= now_unix || orphans.contains(&account.name) =>
                    {
                        due.push((account.id, name));
                    }
                    Some(name) => {
                        report.kept += 1;
                        report.next_expiry = Some(
                            report
                                .next_expiry
                                .map_or(name.expires_at, |e| e.min(name.expires_at)),
                        );
                    }
                }
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        if report.pages > 0 {
            self.mark_reached();
        }

        let limit = Arc::new(Semaphore::new(DELETE_CONCURRENCY));
        let mut deletes = JoinSet::new();
        for (id, name) in due {
            let admin = admin.clone();
            let project_id = project_id.clone();
            let limit = Arc::clone(&limit);
            deletes.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = admin.delete_service_account(&project_id, &id).await;
                (id, name, result)
            });
        }
        while let Some(joined) = deletes.join_next().await {
            let Ok((id, name, result)) = joined else {
                report.failed += 1;
                continue;
            };
            match result {
                Ok(()) => {
                    report.deleted += 1;
                    tracing::info!(audit = "deleted", owner = %name.owner, service_account.id = %id, expires_at = name.expires_at, "deleted an expired service account");
                }
                Err(openai::Error::NotFound { .. }) => {
                    report.deleted += 1;
                    report.already_gone += 1;
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(%error, owner = %name.owner, service_account.id = %id, "could not delete an expired service account; the next sweep retries");
                    continue;
                }
            }
            self.inner
                .orphans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name.encode());
        }
        // Orphans past their expiry are covered by the normal rule.
        self.inner
            .orphans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|n| AccountName::parse(n).is_some_and(|a| a.expires_at > now_unix));

        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            sweep.listed = report.listed,
            sweep.pages = report.pages,
            sweep.deleted = report.deleted,
            sweep.already_gone = report.already_gone,
            sweep.failed = report.failed,
            sweep.kept = report.kept,
            sweep.foreign = report.foreign,
            duration_ms = report.duration_ms,
            "sweep finished"
        );
        Ok(report)
    }
}
