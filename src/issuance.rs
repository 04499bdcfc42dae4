//! The use cases every front door shares: signing someone in, issuing a
//! key, listing and revoking keys, and asking for a cleanup. The sign-in
//! callback, the my-keys page, the admin page (and the JSON API to come)
//! all call these; nothing here knows HTTP. Who may do what is decided
//! here (with [`crate::access`]), never in a handler.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::access::{Grant, Policy, Refusal};
use crate::audit::{Audit, Event};
use crate::cli_auth::{self, CliAuth, DeviceStart, Issued};
use crate::clock;
use crate::identity::{Identity, Owner};
use crate::keys::{IssuedKey, KeyInfo};
use crate::limits::{ClientAddr, Limits};
use crate::metrics::{Metrics, RevokedBy};
use crate::oidc::{self, WorkloadIssuers};
use crate::projects::{Project, Projects};
use crate::replay::CompletedLogins;

/// Why a use case did not go through. Variants are what the front doors
/// tell apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The identity is verified but not allowed (or no longer).
    #[error("refused {account:?}: {reason}")]
    Refused {
        /// The account as the provider named it.
        account: Option<String>,
        /// Why.
        reason: Refusal,
    },
    /// The code exchange or the token check failed.
    #[error(transparent)]
    SignIn(#[from] oidc::Error),
    /// The login was completed already (a replay).
    #[error("the sign-in was completed already")]
    Replayed,
    /// A CI job's token failed verification; the reason is the job's to
    /// read (nothing in it is secret: it says which check failed).
    #[error("the CI job's token was refused: {0}")]
    BadJobToken(String),
    /// A CI job's token used a second time: each is good for one key.
    #[error("this job token was used already")]
    TokenReplayed,
    /// A CI job's token came, but the policy names no workload issuer.
    #[error("this server takes no CI job tokens")]
    NoWorkloadIssuers,
    /// A new-key form sent again (a reload, the back button, a second
    /// click): its key was shown already, or is being made.
    #[error("this new-key form was sent already")]
    FormSpent,
    /// Too many requests from this person or address.
    #[error("rate limited ({what}); retry in {retry_after:?}")]
    RateLimited {
        /// Which limit.
        what: &'static str,
        /// When to try again.
        retry_after: Duration,
    },
    /// The person already holds the most live keys allowed.
    #[error("{owner} already holds {cap} live keys")]
    CapReached {
        /// Who.
        owner: Owner,
        /// The cap.
        cap: usize,
        /// Until the oldest expires.
        retry_after: Duration,
    },
    /// No such live key of this server that the person may act on: an
    /// unknown id, a foreign account, or another person's key.
    #[error("no such key")]
    NotFound,
    /// An admin's action, asked for by someone who is not one.
    #[error("{actor} is not an admin")]
    NotAdmin {
        /// Who asked.
        actor: Owner,
    },
    /// The break-glass revocation was not confirmed with the project id.
    #[error("the confirmation does not name the project")]
    NotConfirmed,
    /// A revocation of everything of someone (or everything) needs a
    /// complete listing, and none could be had; nothing was revoked.
    #[error("could not list every key: {message}")]
    ListingIncomplete {
        /// What went wrong.
        message: String,
    },
    /// Some of the keys to revoke could not be; the log says why.
    #[error("{failed} of {wanted} keys could not be revoked")]
    PartlyRevoked {
        /// How many failed.
        failed: usize,
        /// How many were to go.
        wanted: usize,
    },
    /// The Admin API failed.
    #[error(transparent)]
    Keys(#[from] crate::keys::Error),
    /// The holder's keys used their budget for the day.
    #[error("{owner} used {}", over.describe())]
    OverBudget {
        /// Who.
        owner: Owner,
        /// What they used, of how much, and when it resets.
        over: crate::usage::OverBudget,
        /// Until it resets.
        retry_after: Duration,
    },
    /// A key asked for a longer life than the person may give it.
    #[error("a key may live at most {max:?}")]
    LifetimeTooLong {
        /// The most.
        max: Duration,
    },
    /// A key asked for no life at all.
    #[error("a key must live at least a second")]
    LifetimeZero,
    /// A step of a command line's sign-in, or its session, did not go
    /// through.
    #[error(transparent)]
    Cli(#[from] cli_auth::Refused),
}

/// What a person asks for within their grant (the policy issue adds a
/// project and scopes).
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    /// A lifetime shorter than the grant's; `None`: the grant's.
    pub lifetime: Option<Duration>,
}

/// Someone calling the JSON API with a CLI session.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who the session names.
    pub identity: Identity,
    /// What they may have, decided now.
    pub grant: Grant,
    /// When the session ends (Unix seconds).
    pub session_expires_at: i64,
}

/// A login being completed: its `state`, and when its cookie dies (Unix
/// seconds), until which it is remembered as completed.
#[derive(Clone, Copy, Debug)]
pub struct Login<'a> {
    /// The login's `state`.
    pub state: &'a str,
    /// When its cookie dies.
    pub expires: i64,
}

/// How the pages that list keys and mint them behave.
#[derive(Clone, Copy, Debug)]
pub struct Pages {
    /// Oldest listing a page may show (`LISTING_MAX_AGE`).
    pub listing_max_age: Duration,
    /// The longest a page waits for a fresh listing (`TIMEOUT`).
    pub listing_wait: Duration,
    /// Whether signing in issues a key at once (`ISSUE_ON_SIGN_IN`).
    pub issue_on_sign_in: bool,
    /// How long a spent new-key form is remembered (`SESSION_TTL`: the
    /// page it came from cannot outlive the session).
    pub forms_kept: Duration,
}

/// Keys as a page shows them, and whether the listing behind them is as
/// fresh as promised (a page says so when it is not).
#[derive(Clone, Debug)]
pub struct Listed<T> {
    /// The keys.
    pub keys: T,
    /// False when no listing younger than `LISTING_MAX_AGE` could be had in
    /// time: the keys are what this replica knew.
    pub fresh: bool,
}

/// The issuance core. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Issuance {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: Policy,
    projects: Projects,
    /// What each holder's keys used today.
    usage: crate::usage::Usage,
    limits: Arc<Limits>,
    pages: Pages,
    /// Login states completed on this replica.
    completed_logins: CompletedLogins,
    /// New-key forms being used or used on this replica (a session also
    /// carries its own spent forms, for the other replicas).
    spent_forms: CompletedLogins,
    /// Held by the page view that refreshes the listing, so that
    /// concurrent views share one listing pass instead of one each.
    pass: tokio::sync::Mutex<()>,
    /// When the key listing (for last use) was last read.
    usage_at: Mutex<Option<SystemTime>>,
    /// When a pass last ended without a fresh listing, or without the key
    /// listing: not tried again before `LISTING_MAX_AGE` has passed, so
    /// that an Admin API that refuses does not cost a call per view.
    listing_failed_at: Mutex<Option<SystemTime>>,
    usage_failed_at: Mutex<Option<SystemTime>>,
    /// Command lines' sign-ins and sessions.
    cli: CliAuth,
    /// The policy's issuers of CI jobs' tokens.
    workloads: WorkloadIssuers,
    /// CI jobs' token ids used on this replica, until the tokens expire.
    spent_job_tokens: CompletedLogins,
    /// Where issues, refusals, revocations and sign-ins are counted.
    metrics: Metrics,
    /// Where they are recorded.
    audit: Audit,
}

/// Whether `at` is at most `max_age` before `now` (or after it).
fn within(at: Option<SystemTime>, now: SystemTime, max_age: Duration) -> bool {
    at.is_some_and(|at| now.duration_since(at).map_or(true, |age| age <= max_age))
}

fn read(slot: &Mutex<Option<SystemTime>>) -> Option<SystemTime> {
    *slot.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write(slot: &Mutex<Option<SystemTime>>, at: SystemTime) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
}

impl Issuance {
    /// The core over these parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Policy,
        projects: Projects,
        limits: Arc<Limits>,
        pages: Pages,
        cli: CliAuth,
        workloads: WorkloadIssuers,
        metrics: Metrics,
        audit: Audit,
        usage: crate::usage::Usage,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                projects,
                usage,
                limits,
                pages,
                completed_logins: CompletedLogins::default(),
                spent_forms: CompletedLogins::default(),
                pass: tokio::sync::Mutex::new(()),
                usage_at: Mutex::new(None),
                listing_failed_at: Mutex::new(None),
                usage_failed_at: Mutex::new(None),
                cli,
                workloads,
                spent_job_tokens: CompletedLogins::default(),
                metrics,
                audit,
            }),
        }
    }

    /// The grant of `identity` under the current configuration: asked on
    /// every action, so that a person taken off the list loses access at
    /// once, whatever their session says.
    pub fn authorize(&self, identity: &Identity) -> Result<Grant, Error> {
        let grant = self
            .inner
            .policy
            .decide(identity)
            .map_err(|reason| Error::Refused {
                account: identity.email_claim.clone(),
                reason,
            })?;
        self.inner.usage.note_grant(&grant);
        Ok(grant)
    }

    /// Signs someone in from `client`: completes `login` once on this
    /// replica, then `exchange` (the code exchange and token check), under
    /// the address's allowance of failed sign-ins, then the policy.
    ///
    /// The allowance is checked before `exchange` runs, since each exchange
    /// costs a call to the provider. Each attempt holds one of the
    /// address's tokens, given back when the person turns out to be
    /// allowed or the provider to be down: only failures that are the
    /// caller's use it up, so honest sign-ins never do, and junk codes
    /// drain their own address's allowance alone. A state is recorded as
    /// completed only past the allowance, so that flooding that memory
    /// costs allowance like any other failure.
    pub async fn sign_in(
        &self,
        client: ClientAddr,
        login: Login<'_>,
        now: SystemTime,
        exchange: impl Future<Output = Result<Identity, oidc::Error>>,
    ) -> Result<(Identity, Grant), Error> {
        let signed_in = self.sign_in_once(client, login, now, exchange).await;
        self.inner.metrics.sign_in(match &signed_in {
            Ok(_) => "success",
            Err(Error::Refused { .. }) => "refused",
            Err(_) => "failed",
        });
        self.counted(signed_in, now)
    }

    async fn sign_in_once(
        &self,
        client: ClientAddr,
        login: Login<'_>,
        now: SystemTime,
        exchange: impl Future<Output = Result<Identity, oidc::Error>>,
    ) -> Result<(Identity, Grant), Error> {
        let limiter = &self.inner.limits.sign_in_per_ip;
        let key = client.key();
        self.sign_in_allowance(&key, now)?;
        if !self.inner.completed_logins.complete(
            login.state,
            login.expires,
            clock::unix_seconds(now),
        ) {
            return Err(Error::Replayed);
        }
        let identity = match exchange.await {
            Ok(identity) => identity,
            // Not the caller's doing: the provider is down, or refuses us.
            Err(error @ (oidc::Error::Unreachable(_) | oidc::Error::ClientRefused(_))) => {
                limiter.refund(&key, now);
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let grant = self.authorize(&identity)?;
        limiter.refund(&key, now);
        Ok((identity, grant))
    }

    /// What follows a sign-in: a key, issued at once (`ISSUE_ON_SIGN_IN`),
    /// or `None` when the person is to land on their keys.
    pub async fn after_sign_in(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Option<IssuedKey>, Error> {
        if !self.inner.pages.issue_on_sign_in {
            return Ok(None);
        }
        self.issue(identity, &IssueRequest::default(), now)
            .await
            .map(Some)
    }

    /// Issues a key to `identity`: the policy, the person's rate, a place
    /// under their cap (held until the create settles, so that simultaneous
    /// requests cannot all pass it), then the create, in a task of its own.
    pub async fn issue(
        &self,
        identity: &Identity,
        request: &IssueRequest,
        now: SystemTime,
    ) -> Result<IssuedKey, Error> {
        let issued = match self.authorize(identity) {
            Ok(grant) => self.issue_under(&grant, request, now).await,
            Err(error) => Err(error),
        };
        self.counted(issued, now)
    }

    /// One of the address `key`'s failed sign-ins (`RATE_LIMIT_PER_IP`),
    /// or how long until it has one again.
    fn sign_in_allowance(&self, key: &str, now: SystemTime) -> Result<(), Error> {
        self.inner
            .limits
            .sign_in_per_ip
            .check(key, now)
            .map_err(|retry_after| Error::RateLimited {
                what: "failed sign-ins per address",
                retry_after,
            })
    }

    /// `result`, its refusal counted by reason and recorded.
    fn counted<T>(&self, result: Result<T, Error>, now: SystemTime) -> Result<T, Error> {
        if let Err(error) = &result {
            let subject = match error {
                Error::Refused { account, .. } => account.clone(),
                Error::CapReached { owner, .. } | Error::OverBudget { owner, .. } => {
                    Some(owner.to_string())
                }
                _ => None,
            };
            let reason = match error {
                Error::Refused { reason, .. } => reason.code(),
                Error::CapReached { .. } => "cap_reached",
                Error::OverBudget { .. } => "over_budget",
                Error::RateLimited { .. } => "rate_limited",
                Error::LifetimeTooLong { .. } | Error::LifetimeZero => "bad_lifetime",
                Error::BadJobToken(_) => "invalid_token",
                Error::TokenReplayed => "token_replayed",
                Error::NoWorkloadIssuers => "no_job_tokens",
                _ => return result,
            };
            self.inner.metrics.refused(reason);
            self.inner.audit.record(
                Event {
                    subject,
                    reason: Some(reason.to_owned()),
                    ..Event::new("key.refused")
                },
                now,
            );
        }
        result
    }

    /// Issues a key to the CI job whose OIDC token is `token`, from
    /// `client`: the token is verified against its issuer, matched against
    /// the policy, and spent (each token gives one key, on this replica;
    /// see SECURITY.md); then as [`Issuance::issue`]. Failed tokens use up
    /// the address's allowance of failed sign-ins.
    pub async fn issue_for_job(
        &self,
        client: ClientAddr,
        token: &secrecy::SecretString,
        request: &IssueRequest,
        now: SystemTime,
    ) -> Result<(Grant, IssuedKey), Error> {
        let issued = self.issue_for_job_once(client, token, request, now).await;
        self.counted(issued, now)
    }

    async fn issue_for_job_once(
        &self,
        client: ClientAddr,
        token: &secrecy::SecretString,
        request: &IssueRequest,
        now: SystemTime,
    ) -> Result<(Grant, IssuedKey), Error> {
        use secrecy::ExposeSecret as _;
        if self.inner.workloads.is_empty() {
            return Err(Error::NoWorkloadIssuers);
        }
        let limiter = &self.inner.limits.sign_in_per_ip;
        let address = client.key();
        self.sign_in_allowance(&address, now)?;
        let verified = match self
            .inner
            .workloads
            .verify(token.expose_secret(), now)
            .await
        {
            Ok(verified) => verified,
            Err(error @ oidc::Error::Unreachable(_)) => {
                limiter.refund(&address, now);
                return Err(error.into());
            }
            Err(oidc::Error::InvalidToken(reason)) => return Err(Error::BadJobToken(reason)),
            Err(error) => return Err(error.into()),
        };
        let workload = &verified.workload;
        let grant = self
            .inner
            .policy
            .decide_workload(workload)
            .map_err(|reason| Error::Refused {
                account: Some(workload.owner.to_string()),
                reason,
            })?;
        self.inner.usage.note_grant(&grant);
        limiter.refund(&address, now);
        let spent = format!("{}\n{}", workload.issuer, verified.jti);
        let remembered = verified
            .expires_at
            .saturating_add_unsigned(oidc::SKEW.as_secs());
        if !self
            .inner
            .spent_job_tokens
            .complete(&spent, remembered, clock::unix_seconds(now))
        {
            return Err(Error::TokenReplayed);
        }
        tracing::Span::current().record("user.email", workload.owner.as_str());
        match self.issue_under(&grant, request, now).await {
            Ok(issued) => Ok((grant, issued)),
            Err(error) => {
                // Nothing was shown, and nothing usable made: the job may
                // try again with the same token.
                self.inner.spent_job_tokens.forget(&spent);
                Err(error)
            }
        }
    }

    /// Issues a key under `grant`: the lifetime asked for, the holder's
    /// rate, a place under their cap, then the create.
    async fn issue_under(
        &self,
        grant: &Grant,
        request: &IssueRequest,
        now: SystemTime,
    ) -> Result<IssuedKey, Error> {
        // Never cut silently: a caller that asked for more is told the most.
        let lifetime = match request.lifetime {
            None => grant.lifetime,
            Some(lifetime) if lifetime > grant.max_lifetime => {
                return Err(Error::LifetimeTooLong {
                    max: grant.max_lifetime,
                });
            }
            Some(lifetime) if lifetime < Duration::from_secs(1) => {
                return Err(Error::LifetimeZero);
            }
            Some(lifetime) => lifetime,
        };
        let keys = &self.inner.projects.for_choice(&grant.project).keys;
        if let Some(over) = self
            .inner
            .usage
            .over_budget(&grant.owner, grant.budget, now)
        {
            return Err(Error::OverBudget {
                owner: grant.owner.clone(),
                over,
                retry_after: clock::until(over.resets_at, now).max(Duration::from_secs(1)),
            });
        }
        self.inner
            .limits
            .issue_under(&grant.rule)
            .check(grant.owner.as_str(), now)
            .map_err(|retry_after| Error::RateLimited {
                what: "keys per holder",
                retry_after,
            })?;
        let reservation = keys
            .reserve(&grant.owner, grant.cap, now)
            .map_err(|reached| Error::CapReached {
                owner: grant.owner.clone(),
                cap: grant.cap,
                retry_after: clock::until(reached.oldest_expiry, now).max(Duration::from_secs(1)),
            })?;
        let issued = keys
            .spawn_issue(
                grant.owner.clone(),
                lifetime,
                grant.scopes.clone(),
                reservation,
                now,
            )?
            .await
            .map_err(|_| crate::keys::Error::TaskFailed)??;
        self.inner.usage.note_key(&issued.key_id, &grant.owner);
        self.inner.metrics.issued(
            &grant.rule,
            grant.owner.is_workload(),
            !grant.scopes.is_empty(),
        );
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                subject: Some(grant.owner.to_string()),
                issuer: Some(grant.issuer.clone()),
                rule: Some(grant.rule.clone()),
                account_id: Some(issued.service_account_id.clone()),
                key_id: Some(issued.key_id.clone()),
                project: Some(issued.project_id.clone()),
                scopes: Some(grant.scopes.clone()),
                lifetime_s: Some(lifetime.as_secs()),
                expires_at: Some(issued.expires_at),
                ..Event::new("key.issued")
            },
            now,
        );
        Ok(issued)
    }

    /// [`Issuance::issue`] for a new-key form: each form mints once. One
    /// that the session says it spent (`spent`, any replica), or that this
    /// replica has seen (a second click racing the first), is
    /// [`Error::FormSpent`]. A form whose issue failed can be sent again.
    pub async fn issue_once(
        &self,
        identity: &Identity,
        form: &str,
        spent: &[String],
        now: SystemTime,
    ) -> Result<IssuedKey, Error> {
        // Refused before it is remembered: a person cannot flush others'
        // forms with made-up ones (a real one is 22 characters).
        if form.is_empty() || form.len() > 64 || spent.iter().any(|s| s == form) {
            return Err(Error::FormSpent);
        }
        self.authorize(identity)?;
        let kept =
            clock::unix_seconds(now).saturating_add_unsigned(self.inner.pages.forms_kept.as_secs());
        if !self
            .inner
            .spent_forms
            .complete(form, kept, clock::unix_seconds(now))
        {
            return Err(Error::FormSpent);
        }
        let issued = self.issue(identity, &IssueRequest::default(), now).await;
        if issued.is_err() {
            // Nothing was shown, and nothing usable was made (an ambiguous
            // create's account is deleted): the form may be sent again.
            self.inner.spent_forms.forget(form);
        }
        issued
    }

    /// `identity`'s live keys, soonest expiry first, from a listing at most
    /// `LISTING_MAX_AGE` old (or, when none could be had in time, what this
    /// replica knows, said so).
    pub async fn list_for(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Listed<Vec<KeyInfo>>, Error> {
        let grant = self.authorize(identity)?;
        let fresh = self.fresh(now).await;
        Ok(Listed {
            keys: self.inner.projects.keys_of(&grant.owner, now),
            fresh,
        })
    }

    /// Every live key of this server (each says its project), for an
    /// admin, and the server's own project id (the break-glass
    /// confirmation).
    pub async fn list_all(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Listed<(Vec<KeyInfo>, String)>, Error> {
        self.admin(identity, "see every key", now)?;
        let fresh = self.fresh(now).await;
        let project_id = self
            .inner
            .projects
            .default_project()
            .keys
            .project_id(now)
            .await?
            .to_owned();
        Ok(Listed {
            keys: (self.inner.projects.all_keys(now), project_id),
            fresh,
        })
    }

    /// Revokes one of the person's own keys at once. Anything else (another
    /// person's key, a foreign account, an unknown id) is
    /// [`Error::NotFound`], and nothing is deleted: the my-keys page acts
    /// on the person's own keys only, admin or not.
    pub async fn revoke(
        &self,
        identity: &Identity,
        service_account_id: &str,
        now: SystemTime,
    ) -> Result<KeyInfo, Error> {
        let grant = self.authorize(identity)?;
        self.revoke_one(grant, service_account_id, false, now).await
    }

    /// Revokes any live key of this server at once, for an admin.
    pub async fn admin_revoke(
        &self,
        identity: &Identity,
        service_account_id: &str,
        now: SystemTime,
    ) -> Result<KeyInfo, Error> {
        let grant = self.admin(identity, "revoke a key", now)?;
        self.revoke_one(grant, service_account_id, true, now).await
    }

    async fn revoke_one(
        &self,
        grant: Grant,
        service_account_id: &str,
        any_owner: bool,
        now: SystemTime,
    ) -> Result<KeyInfo, Error> {
        let projects = &self.inner.projects;
        let (project, key) = match projects.find(service_account_id, now) {
            Some(found) => found,
            // Issued through another replica since the last listing?
            None => {
                self.fresh(now).await;
                projects
                    .find(service_account_id, now)
                    .ok_or(Error::NotFound)?
            }
        };
        let keys = &project.keys;
        if key.owner != grant.owner && !any_owner {
            return Err(Error::NotFound);
        }
        let action = if key.owner == grant.owner {
            "revoke own key"
        } else {
            "revoke a key"
        };
        let grant_owner = grant.owner.clone();
        let failed = keys
            .revoke(vec![key.clone()], grant.owner, action, now)
            .await
            .map_err(|_| crate::keys::Error::TaskFailed)??;
        if failed.is_empty() {
            let by = if any_owner && key.owner != grant_owner {
                RevokedBy::Admin
            } else {
                RevokedBy::Holder
            };
            self.inner.metrics.revoked(by, 1);
            Ok(key)
        } else {
            Err(Error::PartlyRevoked {
                failed: 1,
                wanted: 1,
            })
        }
    }

    /// `owner`'s keys found gone before their expiry, not deleted by this
    /// replica, in the last day.
    pub fn vanished_of(&self, owner: &Owner, now: SystemTime) -> Vec<crate::keys::Vanished> {
        self.inner
            .projects
            .all()
            .iter()
            .flat_map(|project| project.keys.vanished_of(owner, now))
            .collect()
    }

    /// What each holder's keys used today, as this replica last read it.
    pub fn usage(&self) -> &crate::usage::Usage {
        &self.inner.usage
    }

    /// Reads today's usage of every project from OpenAI's Usage API, per
    /// key, with the owners of the keys (learned from the accounts'
    /// names); then revokes the live keys of holders over a budget that
    /// says so. Bounded cost: per project, one call for the key listing
    /// per 100 keys and one for the usage.
    pub async fn poll_usage(&self, now: SystemTime) -> Result<crate::usage::PollReport, Error> {
        let usage = &self.inner.usage;
        let (day_start, _) = crate::usage::day_of(now);
        let day_start = day_start * 86_400;
        let (month_start, _) = crate::usage::month_of(now);
        let mut reading = crate::usage::Reading::default();
        let mut owners = Vec::new();
        let mut calls = 0;
        let mut billed: Option<std::collections::HashMap<String, f64>> =
            usage.asks_costs().then(Default::default);
        for project in self.inner.projects.all() {
            let keys = &project.keys;
            calls += keys.refresh_usage(now).await?;
            owners.extend(
                keys.all_accounts()
                    .into_iter()
                    .filter_map(|info| Some((info.key_id?, info.owner))),
            );
            let mut page: Option<String> = None;
            loop {
                let answer = keys
                    .completions_usage(month_start, page.as_deref(), now)
                    .await?;
                calls += 1;
                for bucket in answer.data {
                    let today = bucket.start_time >= day_start;
                    for result in bucket.results {
                        let Some(key_id) = result.api_key_id else {
                            continue;
                        };
                        if today {
                            let tokens = reading.today.entry(key_id.clone()).or_default();
                            tokens.input += result.input_tokens;
                            tokens.output += result.output_tokens;
                            tokens.requests += result.num_model_requests;
                        }
                        if let Some(cost) = usage.prices().cost(
                            result.model.as_deref().unwrap_or_default(),
                            result.input_tokens,
                            result.output_tokens,
                        ) {
                            *reading.estimated.entry(key_id).or_default() += cost;
                        }
                    }
                }
                match (answer.has_more, answer.next_page) {
                    (true, Some(next)) => page = Some(next),
                    _ => break,
                }
            }
            if let Some(costs) = billed.as_mut() {
                let mut page: Option<String> = None;
                loop {
                    calls += 1;
                    match keys.costs(month_start, page.as_deref(), now).await {
                        Ok(answer) => {
                            for result in answer.data.into_iter().flat_map(|b| b.results) {
                                if let Some(key_id) = result.api_key_id {
                                    *costs.entry(key_id).or_default() += result.amount.value;
                                }
                            }
                            match (answer.has_more, answer.next_page) {
                                (true, Some(next)) => page = Some(next),
                                _ => break,
                            }
                        }
                        // Costs are shown beside the estimate, never counted:
                        // whatever goes wrong with them loses no usage.
                        Err(crate::keys::Error::OpenAi(
                            crate::openai::Error::Api {
                                status: 400 | 404, ..
                            }
                            | crate::openai::Error::Forbidden { .. },
                        )) => {
                            tracing::warn!(
                                "OpenAI's Costs API does not give costs by key here: pages show estimates only"
                            );
                            usage.costs_not_by_key();
                            billed = None;
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not read costs; pages show the last figures");
                            billed = None;
                            break;
                        }
                    }
                }
            }
        }
        reading.billed = billed;
        let (keys, unattributed) = self.inner.usage.record(now, reading, owners);
        self.inner.metrics.usage(calls, &self.inner.usage.by_rule());
        for (owner, over) in self.inner.usage.to_revoke(now) {
            self.revoke_over_budget(&owner, over, now).await;
        }
        Ok(crate::usage::PollReport {
            calls,
            keys,
            unattributed,
        })
    }

    /// Revokes every live key of `owner`, whose budget (with
    /// `on_over_budget = "revoke"`) is spent.
    async fn revoke_over_budget(
        &self,
        owner: &Owner,
        over: crate::usage::OverBudget,
        now: SystemTime,
    ) {
        let action = "over budget";
        let mut revoked = 0;
        for project in self.inner.projects.all() {
            let live = project.keys.keys_of(owner, now);
            if live.is_empty() {
                continue;
            }
            let wanted = live.len();
            match project.keys.revoke(live, "server", action, now).await {
                Ok(Ok(failed)) => revoked += wanted - failed.len(),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not revoke the keys of a holder over budget")
                }
                Err(_) => tracing::warn!("revoking the keys of a holder over budget failed"),
            }
        }
        if revoked > 0 {
            self.inner.metrics.revoked(RevokedBy::Budget, revoked);
            tracing::info!(
                count = revoked,
                used = over.used,
                budget = over.budget,
                "revoked the live keys of a holder over budget"
            );
        }
    }

    /// Lifts `owner`'s budget until the day's end, for an admin; when that
    /// is. Per replica: each replica an admin's request reaches.
    pub fn lift_budget(
        &self,
        identity: &Identity,
        owner: &Owner,
        now: SystemTime,
    ) -> Result<i64, Error> {
        let grant = self.admin(identity, "lift a budget", now)?;
        let until = self.inner.usage.lift(owner, now);
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                subject: Some(owner.to_string()),
                reason: Some("lift the budget until the day's end".to_owned()),
                expires_at: Some(until),
                ..Event::new("admin.budget_lifted")
            },
            now,
        );
        Ok(until)
    }

    /// Revokes every key of `owner` (offboarding), for an admin: from a
    /// complete listing that began now, expired keys not yet deleted
    /// included.
    pub async fn revoke_all_of(
        &self,
        identity: &Identity,
        owner: &Owner,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let action = "revoke every key of one person";
        let grant = self.admin(identity, action, now)?;
        self.complete_listing(now).await?;
        let keys = self.inner.projects.accounts_of(owner);
        self.revoke_many(grant, keys, action, now).await
    }

    /// Revokes every key this server issued, in every project of the
    /// policy (break-glass), for an admin who confirms by naming the
    /// server's own project.
    pub async fn revoke_everything(
        &self,
        identity: &Identity,
        confirmation: &str,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let action = "revoke every key (break-glass)";
        let grant = self.admin(identity, action, now)?;
        let project_id = self
            .inner
            .projects
            .default_project()
            .keys
            .project_id(now)
            .await?
            .to_owned();
        if confirmation.trim() != project_id {
            tracing::warn!(
                actor = %grant.owner,
                action,
                "a break-glass revocation was not confirmed with the project id; nothing revoked"
            );
            self.inner.audit.record(
                Event {
                    actor: Some(grant.owner.to_string()),
                    reason: Some(format!("{action}: not confirmed with the project id")),
                    ..Event::new("admin.refused")
                },
                now,
            );
            return Err(Error::NotConfirmed);
        }
        self.complete_listing(now).await?;
        let keys = self.inner.projects.all_accounts();
        self.revoke_many(grant, keys, action, now).await
    }

    /// Revokes `keys` as `grant`'s person: one audit line as it starts, one
    /// per account as it goes (in a task of its own, so that a browser
    /// that gives up does not cut it short).
    async fn revoke_many(
        &self,
        grant: Grant,
        groups: Vec<(&Project, Vec<KeyInfo>)>,
        action: &'static str,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let wanted: usize = groups.iter().map(|(_, keys)| keys.len()).sum();
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                reason: Some(action.to_owned()),
                count: Some(wanted),
                ..Event::new("admin.revoking")
            },
            now,
        );
        // Every project's revocation starts before any is waited for.
        let mut running = Vec::new();
        let mut revoked = Vec::new();
        for (project, keys) in groups {
            revoked.extend(keys.iter().cloned());
            running.push(project.keys.revoke(keys, grant.owner.clone(), action, now));
        }
        let mut failed = 0;
        for revocation in running {
            failed += revocation
                .await
                .map_err(|_| crate::keys::Error::TaskFailed)??
                .len();
        }
        self.inner
            .metrics
            .revoked(RevokedBy::Admin, wanted.saturating_sub(failed));
        if failed == 0 {
            Ok(revoked)
        } else {
            Err(Error::PartlyRevoked { failed, wanted })
        }
    }

    /// Asks for a cleanup from `client` (`/revoke`), under the address's
    /// rate; the cleanup itself is bounded globally (see
    /// [`crate::cleanup::REQUESTED_SWEEP_INTERVAL`]).
    pub fn request_sweep(&self, client: ClientAddr, now: SystemTime) -> Result<(), Error> {
        self.inner
            .limits
            .revoke_per_ip
            .check(&client.key(), now)
            .map_err(|retry_after| Error::RateLimited {
                what: "cleanups per address",
                retry_after,
            })?;
        for project in self.inner.projects.all() {
            drop(project.cleanup.request());
        }
        Ok(())
    }

    /// [`Issuance::request_sweep`] for `REVOKE_ENDPOINT=admin`: an admin's.
    pub fn request_sweep_as_admin(
        &self,
        identity: &Identity,
        client: ClientAddr,
        now: SystemTime,
    ) -> Result<(), Error> {
        let grant = self.admin(identity, "ask for a cleanup", now)?;
        self.request_sweep(client, now)?;
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                reason: Some("ask for a cleanup".to_owned()),
                ..Event::new("admin.cleanup")
            },
            now,
        );
        Ok(())
    }

    /// The caller a CLI session names, still allowed.
    pub fn caller(&self, token: &secrecy::SecretString, now: SystemTime) -> Result<Caller, Error> {
        let (identity, session_expires_at) = self.inner.cli.open_session(token, now)?;
        let grant = self.authorize(&identity)?;
        Ok(Caller {
            identity,
            grant,
            session_expires_at,
        })
    }

    /// A CLI session token sealed anew under the current session secret,
    /// if only the previous one opens it (a rotation is under way).
    pub fn resealed_cli_session(&self, token: &str) -> Option<secrecy::SecretString> {
        self.inner.cli.reseal_session(token)
    }

    /// The one-time code that hands a person just signed in through the
    /// browser to the command line that holds the verifier of `challenge`.
    pub fn cli_code(
        &self,
        identity: &Identity,
        challenge: &str,
        now: SystemTime,
    ) -> Result<String, Error> {
        let grant = self.authorize(identity)?;
        Ok(self
            .inner
            .cli
            .code_for(identity, &grant.owner, challenge, now))
    }

    /// A loopback sign-in's last step: the code and its verifier, from
    /// `client`, for a CLI session. A wrong or spent code uses up one of
    /// the address's failed sign-ins.
    pub fn redeem_cli_code(
        &self,
        client: ClientAddr,
        code: &str,
        verifier: &str,
        now: SystemTime,
    ) -> Result<Issued, Error> {
        let limiter = &self.inner.limits.sign_in_per_ip;
        let key = client.key();
        self.sign_in_allowance(&key, now)?;
        let identity = self.inner.cli.redeem(code, verifier, now)?;
        let grant = self.authorize(&identity)?;
        limiter.refund(&key, now);
        Ok(self.cli_session(&identity, &grant, "loopback", now))
    }

    fn cli_session(
        &self,
        identity: &Identity,
        grant: &Grant,
        how: &'static str,
        now: SystemTime,
    ) -> Issued {
        let issued = self.inner.cli.session_for(identity, &grant.owner, now);
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                issuer: Some(grant.issuer.clone()),
                reason: Some(how.to_owned()),
                expires_at: Some(issued.expires_at),
                ..Event::new("session.cli")
            },
            now,
        );
        issued
    }

    /// Begins a device sign-in for `client`, which uses up one of the
    /// address's sign-ins: a device code costs memory until it expires.
    pub fn start_device(&self, client: ClientAddr, now: SystemTime) -> Result<DeviceStart, Error> {
        self.inner
            .limits
            .sign_in_per_ip
            .check(&client.key(), now)
            .map_err(|retry_after| Error::RateLimited {
                what: "sign-ins per address",
                retry_after,
            })?;
        Ok(self.inner.cli.start_device(now)?)
    }

    /// Whether `user_code` waits for its person on this replica.
    pub fn device_pending(&self, user_code: &str, now: SystemTime) -> bool {
        self.inner.cli.device_pending(user_code, now)
    }

    /// A signed-in person's answer to a device code they typed, from
    /// `client`: approve (their command line is signed in as them) or
    /// refuse. A code that is not pending uses up one of the address's
    /// failed sign-ins, so codes cannot be guessed at speed.
    pub fn answer_device(
        &self,
        identity: &Identity,
        client: ClientAddr,
        user_code: &str,
        approve: bool,
        now: SystemTime,
    ) -> Result<(), Error> {
        let grant = self.authorize(identity)?;
        let limiter = &self.inner.limits.sign_in_per_ip;
        let key = client.key();
        self.sign_in_allowance(&key, now)?;
        self.inner
            .cli
            .answer_device(user_code, approve.then_some(identity), now)?;
        limiter.refund(&key, now);
        self.inner.audit.record(
            Event {
                actor: Some(grant.owner.to_string()),
                reason: Some(if approve { "approved" } else { "refused" }.to_owned()),
                ..Event::new("session.device")
            },
            now,
        );
        Ok(())
    }

    /// A device sign-in's poll: a CLI session once the person approved.
    pub fn poll_device(
        &self,
        device_code: &secrecy::SecretString,
        now: SystemTime,
    ) -> Result<Issued, Error> {
        let identity = self.inner.cli.poll_device(device_code, now)?;
        let grant = self.authorize(&identity)?;
        Ok(self.cli_session(&identity, &grant, "device", now))
    }

    /// The grant of an admin; anyone else's attempt is refused, and said
    /// so in an audit line.
    fn admin(
        &self,
        identity: &Identity,
        action: &'static str,
        now: SystemTime,
    ) -> Result<Grant, Error> {
        let grant = self.authorize(identity)?;
        if grant.admin {
            Ok(grant)
        } else {
            self.inner.audit.record(
                Event {
                    actor: Some(grant.owner.to_string()),
                    reason: Some(format!("{action}: not an admin")),
                    ..Event::new("admin.refused")
                },
                now,
            );
            Err(Error::NotAdmin { actor: grant.owner })
        }
    }

    /// A complete listing of every project that began at `now` or later
    /// (a sweep, joined or started): what revoking everything of someone
    /// must act on, or an error when none could be had.
    async fn complete_listing(&self, now: SystemTime) -> Result<(), Error> {
        let runs: Vec<_> = self
            .inner
            .projects
            .all()
            .iter()
            .map(|project| {
                let project = project.clone();
                tokio::spawn(async move {
                    // The second run, if the first joined one that began
                    // earlier.
                    for _ in 0..2 {
                        let report = project.cleanup.run_now().await?;
                        if let Some(message) = report.list_error {
                            return Err(Error::ListingIncomplete { message });
                        }
                        if project.keys.listed_at().is_some_and(|at| at >= now) {
                            return Ok(());
                        }
                    }
                    Err(Error::ListingIncomplete {
                        message: "no listing began after the request".to_owned(),
                    })
                })
            })
            .collect();
        for run in runs {
            run.await.map_err(|_| crate::keys::Error::TaskFailed)??;
        }
        Ok(())
    }

    /// Makes sure the listing behind a page is at most `LISTING_MAX_AGE`
    /// old; true when it is. Concurrent views wait for one pass rather than
    /// each starting their own. The pass is a full sweep in the background
    /// (its listing is published as soon as it is complete, before its
    /// deletes end; one that began too long ago does not count, and
    /// another is started), then the key listing for last use. A page waits
    /// for it at most `TIMEOUT`; then it shows what this replica knows. A
    /// pass that failed is not tried again before `LISTING_MAX_AGE`.
    async fn fresh(&self, now: SystemTime) -> bool {
        let max_age = self.inner.pages.listing_max_age;
        let projects = &self.inner.projects;
        let listing_fresh = || within(projects.listed_at(), now, max_age);
        let usage_fresh = || within(read(&self.inner.usage_at), now, max_age);
        if listing_fresh() && usage_fresh() {
            return true;
        }
        let pass = async {
            let _pass = self.inner.pass.lock().await;
            if !listing_fresh() && !within(read(&self.inner.listing_failed_at), now, max_age) {
                let stale: Vec<_> = projects
                    .all()
                    .iter()
                    .filter(|p| !within(p.keys.listed_at(), now, max_age))
                    .map(|project| tokio::spawn(Self::list_fresh(project.clone(), now, max_age)))
                    .collect();
                for listing in stale {
                    let _ = listing.await;
                }
                if !listing_fresh() {
                    write(&self.inner.listing_failed_at, now);
                }
            }
            if !usage_fresh() && !within(read(&self.inner.usage_failed_at), now, max_age) {
                let mut read_all = true;
                for project in projects.all() {
                    if let Err(error) = project.keys.refresh_usage(now).await {
                        tracing::warn!(%error, "could not read when keys were last used");
                        read_all = false;
                    }
                }
                if read_all {
                    write(&self.inner.usage_at, now);
                } else {
                    write(&self.inner.usage_failed_at, now);
                }
            }
        };
        if tokio::time::timeout(self.inner.pages.listing_wait, pass)
            .await
            .is_err()
        {
            tracing::warn!(
                "the listing for a page took too long; it shows what this replica knows"
            );
        }
        listing_fresh()
    }

    /// One project's listing made at most `max_age` old: a full sweep in
    /// the background, its listing used as soon as it is published; one
    /// that began too long ago does not count, and another is started.
    async fn list_fresh(project: Project, now: SystemTime, max_age: Duration) {
        let mut listings = project.keys.listings();
        for _ in 0..2 {
            let cleanup = project.cleanup.clone();
            let run = tokio::spawn(async move { cleanup.run_now().await });
            tokio::select! {
                _ = listings.wait_for(|at| within(*at, now, max_age)) => break,
                ran = run => {
                    if let Ok(Err(error)) = ran {
                        tracing::warn!(%error, "could not list the keys for a page");
                        break;
                    }
                }
            }
            if within(project.keys.listed_at(), now, max_age) {
                break;
            }
        }
    }
}
