//! The use cases every front door shares: signing someone in, issuing a
//! key, listing and revoking keys, and asking for a cleanup. The sign-in
//! callback, the my-keys page, the admin page (and the JSON API to come)
//! all call these; nothing here knows HTTP. Who may do what is decided
//! here (with [`crate::access`]), never in a handler.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::access::{Grant, Policy, Refusal};
use crate::cleanup::Cleanup;
use crate::clock;
use crate::identity::{EmailAddress, Identity};
use crate::keys::{IssuedKey, KeyInfo, Keys};
use crate::limits::{ClientAddr, Limits};
use crate::oidc;

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
        owner: EmailAddress,
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
        actor: EmailAddress,
    },
    /// The break-glass revocation was not confirmed with the project id.
    #[error("the confirmation does not name the project")]
    NotConfirmed,
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
}

/// What a person asks for beyond their grant. Nothing yet: the policy issue
/// adds a project, a lifetime and scopes.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {}

/// The issuance core. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Issuance {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: Policy,
    keys: Keys,
    cleanup: Cleanup,
    limits: Arc<Limits>,
    listing_max_age: Duration,
    /// The longest a page waits for a fresh listing (`TIMEOUT`).
    listing_wait: Duration,
    /// Held by the page view that refreshes the listing, so that
    /// concurrent views share one listing pass instead of one each.
    pass: tokio::sync::Mutex<()>,
    /// When the key listing (for last use) was last read.
    usage_at: tokio::sync::watch::Sender<Option<SystemTime>>,
}

impl Issuance {
    /// The core over these parts.
    pub fn new(
        policy: Policy,
        keys: Keys,
        cleanup: Cleanup,
        limits: Arc<Limits>,
        listing_max_age: Duration,
        listing_wait: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                keys,
                cleanup,
                limits,
                listing_max_age,
                listing_wait,
                pass: tokio::sync::Mutex::new(()),
                usage_at: tokio::sync::watch::Sender::new(None),
            }),
        }
    }

    /// The keys it issues and revokes.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The grant of `identity` under the current configuration: asked on
    /// every action, so that a person taken off the list loses access at
    /// once, whatever their session says.
    pub fn authorize(&self, identity: &Identity) -> Result<Grant, Error> {
        self.inner
            .policy
            .decide(identity)
            .map_err(|reason| Error::Refused {
                account: identity.email_claim.clone(),
                reason,
            })
    }

    /// Signs someone in from `client`: `exchange` (the code exchange and
    /// token check, which fails with [`Error::Replayed`] for a login
    /// completed already) under the address's allowance of failed
    /// sign-ins, then the policy.
    ///
    /// The allowance is checked before `exchange` runs, since each exchange
    /// costs a call to the provider. Each attempt holds one of the
    /// address's tokens, given back when the person turns out to be
    /// allowed or the provider to be down: only failures that are the
    /// caller's use it up, so honest sign-ins never do, and junk codes
    /// drain their own address's allowance alone.
    pub async fn sign_in(
        &self,
        client: ClientAddr,
        now: SystemTime,
        exchange: impl Future<Output = Result<Identity, Error>>,
    ) -> Result<(Identity, Grant), Error> {
        let limiter = &self.inner.limits.sign_in_per_ip;
        let key = client.key();
        limiter
            .check(&key, now)
            .map_err(|retry_after| Error::RateLimited {
                what: "failed sign-ins per address",
                retry_after,
            })?;
        let identity = match exchange.await {
            Ok(identity) => identity,
            Err(
                error @ Error::SignIn(oidc::Error::Unreachable(_) | oidc::Error::ClientRefused(_)),
            ) => {
                limiter.refund(&key, now);
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let grant = self.authorize(&identity)?;
        limiter.refund(&key, now);
        Ok((identity, grant))
    }

    /// Issues a key to `identity`: the policy, the person's rate, a place
    /// under their cap (held until the create settles, so that simultaneous
    /// requests cannot all pass it), then the create, in a task of its own.
    pub async fn issue(
        &self,
        identity: &Identity,
        _request: &IssueRequest,
        now: SystemTime,
    ) -> Result<IssuedKey, Error> {
        let grant = self.authorize(identity)?;
        let keys = &self.inner.keys;
        self.inner
            .limits
            .issue_per_user
            .check(grant.owner.as_str(), now)
            .map_err(|retry_after| Error::RateLimited {
                what: "keys per person",
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
            .spawn_issue(grant.owner.clone(), grant.lifetime, reservation, now)?
            .await
            .map_err(|_| crate::keys::Error::TaskFailed)??;
        Ok(issued)
    }

    /// `identity`'s live keys, soonest expiry first, from a listing at most
    /// `LISTING_MAX_AGE` old.
    pub async fn list_for(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let grant = self.authorize(identity)?;
        self.fresh(now).await;
        Ok(self.inner.keys.keys_of(&grant.owner, now))
    }

    /// Every live key of this server, for an admin.
    pub async fn list_all(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        self.admin(identity)?;
        self.fresh(now).await;
        Ok(self.inner.keys.all_keys(now))
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
        self.revoke_as(grant, service_account_id, false, now).await
    }

    /// Revokes any live key of this server at once, for an admin.
    pub async fn admin_revoke(
        &self,
        identity: &Identity,
        service_account_id: &str,
        now: SystemTime,
    ) -> Result<KeyInfo, Error> {
        let grant = self.admin(identity)?;
        self.revoke_as(grant, service_account_id, true, now).await
    }

    async fn revoke_as(
        &self,
        grant: Grant,
        service_account_id: &str,
        any_owner: bool,
        now: SystemTime,
    ) -> Result<KeyInfo, Error> {
        let keys = &self.inner.keys;
        let key = match keys.find(service_account_id, now) {
            Some(key) => key,
            // Issued through another replica since the last listing?
            None => {
                self.fresh(now).await;
                keys.find(service_account_id, now).ok_or(Error::NotFound)?
            }
        };
        if key.owner != grant.owner && !any_owner {
            return Err(Error::NotFound);
        }
        keys.delete_now(&key, now).await?;
        tracing::info!(
            audit = "revoked",
            actor = %grant.owner,
            action = if key.owner == grant.owner { "revoke own key" } else { "revoke a key" },
            owner = %key.owner,
            accounts = ?[&key.service_account_id],
            "revoked a key"
        );
        Ok(key)
    }

    /// Revokes every key of `owner` (offboarding), for an admin.
    pub async fn revoke_all_of(
        &self,
        identity: &Identity,
        owner: &EmailAddress,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let grant = self.admin(identity)?;
        self.fresh(now).await;
        let keys = self.inner.keys.keys_of(owner, now);
        let revoked = self.delete_all(&keys, now).await;
        tracing::info!(
            audit = "revoked",
            actor = %grant.owner,
            action = "revoke every key of one person",
            owner = %owner,
            accounts = ?revoked.iter().map(|k| &k.service_account_id).collect::<Vec<_>>(),
            "revoked every key of one person"
        );
        revoked_or_error(revoked, keys.len())
    }

    /// Revokes every key this server issued (break-glass), for an admin who
    /// confirms by naming the project.
    pub async fn revoke_everything(
        &self,
        identity: &Identity,
        confirmation: &str,
        now: SystemTime,
    ) -> Result<Vec<KeyInfo>, Error> {
        let grant = self.admin(identity)?;
        let project_id = self.inner.keys.project_id(now).await?.to_owned();
        if confirmation.trim() != project_id {
            return Err(Error::NotConfirmed);
        }
        self.fresh(now).await;
        let keys = self.inner.keys.all_keys(now);
        let revoked = self.delete_all(&keys, now).await;
        tracing::warn!(
            audit = "revoked",
            actor = %grant.owner,
            action = "revoke every key (break-glass)",
            project.id = %project_id,
            accounts = ?revoked.iter().map(|k| &k.service_account_id).collect::<Vec<_>>(),
            "revoked every key this server issued"
        );
        revoked_or_error(revoked, keys.len())
    }

    /// The project every key is issued in.
    pub async fn project_id(&self, now: SystemTime) -> Result<String, Error> {
        Ok(self.inner.keys.project_id(now).await?.to_owned())
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
        drop(self.inner.cleanup.request());
        Ok(())
    }

    /// [`Issuance::request_sweep`] for `REVOKE_ENDPOINT=admin`: an admin's.
    pub fn request_sweep_as_admin(
        &self,
        identity: &Identity,
        client: ClientAddr,
        now: SystemTime,
    ) -> Result<(), Error> {
        let grant = self.admin(identity)?;
        self.request_sweep(client, now)?;
        tracing::info!(audit = "sweep", actor = %grant.owner, action = "ask for a cleanup", "asked for a cleanup");
        Ok(())
    }

    fn admin(&self, identity: &Identity) -> Result<Grant, Error> {
        let grant = self.authorize(identity)?;
        if grant.admin {
            Ok(grant)
        } else {
            Err(Error::NotAdmin { actor: grant.owner })
        }
    }

    /// Deletes `keys`, carrying on past failures; the ones gone.
    async fn delete_all(&self, keys: &[KeyInfo], now: SystemTime) -> Vec<KeyInfo> {
        let mut revoked = Vec::with_capacity(keys.len());
        for key in keys {
            match self.inner.keys.delete_now(key, now).await {
                Ok(()) => revoked.push(key.clone()),
                Err(error) => {
                    tracing::warn!(%error, service_account.id = %key.service_account_id, "could not revoke a key");
                }
            }
        }
        revoked
    }

    /// Makes sure the listing behind a page is at most `LISTING_MAX_AGE`
    /// old: concurrent views wait for one pass rather than each starting
    /// their own. The pass is a full sweep in the background (its listing
    /// is published as soon as it is complete, before its deletes end) and
    /// the key listing for last use. A page waits for it at most
    /// `listing_wait`; then it shows what this replica knows.
    async fn fresh(&self, now: SystemTime) {
        let max_age = self.inner.listing_max_age;
        // A listing that began after `now` is fresh too.
        let fresh_at = |at: Option<SystemTime>| {
            at.is_some_and(|at| now.duration_since(at).map_or(true, |age| age <= max_age))
        };
        if fresh_at(self.inner.keys.listed_at()) && self.usage_is_fresh(now) {
            return;
        }
        let wait = async {
            let _pass = self.inner.pass.lock().await;
            let mut listings = self.inner.keys.listings();
            if !fresh_at(*listings.borrow()) {
                let cleanup = self.inner.cleanup.clone();
                tokio::spawn(async move {
                    if let Err(error) = cleanup.run_now().await {
                        tracing::warn!(%error, "could not list the keys for a page; it shows what this replica knows");
                    }
                });
                let _ = listings.wait_for(|at| fresh_at(*at)).await;
            }
            if !self.usage_is_fresh(now) {
                match self.inner.keys.refresh_usage(now).await {
                    Ok(()) => self.inner.usage_at.send_replace(Some(now)),
                    Err(error) => {
                        tracing::warn!(%error, "could not read when keys were last used");
                        None
                    }
                };
            }
        };
        if tokio::time::timeout(self.inner.listing_wait, wait)
            .await
            .is_err()
        {
            tracing::warn!(
                "the listing for a page took too long; it shows what this replica knows"
            );
        }
    }

    fn usage_is_fresh(&self, now: SystemTime) -> bool {
        self.inner.usage_at.borrow().is_some_and(|at| {
            now.duration_since(at)
                .map_or(true, |age| age <= self.inner.listing_max_age)
        })
    }
}

/// The keys revoked, or the error when some could not be.
fn revoked_or_error(revoked: Vec<KeyInfo>, wanted: usize) -> Result<Vec<KeyInfo>, Error> {
    if revoked.len() == wanted {
        Ok(revoked)
    } else {
        Err(Error::PartlyRevoked {
            failed: wanted - revoked.len(),
            wanted,
        })
    }
}
