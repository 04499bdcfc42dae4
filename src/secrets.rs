//! Secrets that change while the server runs. Each is held behind a lock
//! that readers take for the time of a clone, so a rotation is one swap:
//! a request that read the old value finishes with it, the next one reads
//! the new (no request is dropped or sees half a value). Nothing here is
//! shared between replicas: each re-reads its own files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use cookie::Key;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::watch;

use crate::audit::{Audit, Event};
use crate::clock::Clock;
use crate::config::{Config, SessionSecret, vars};
use crate::openai::{self, AdminClient};

/// A secret that may be replaced while serving. Cheap to clone; clones
/// share the value.
#[derive(Clone)]
pub struct Rotating(Arc<RwLock<SecretString>>);

impl std::fmt::Debug for Rotating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rotating([REDACTED])")
    }
}

impl From<SecretString> for Rotating {
    fn from(secret: SecretString) -> Self {
        Self(Arc::new(RwLock::new(secret)))
    }
}

impl Rotating {
    /// The value of the moment.
    pub fn current(&self) -> SecretString {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, `secret`.
    pub fn replace(&self, secret: SecretString) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = secret;
    }
}

/// The keys sealing sessions, login cookies and CLI tokens: the current one
/// seals, and during a rotation the previous one (`SESSION_SECRET_PREVIOUS`)
/// still opens what it sealed, which is then sealed anew with the current.
/// Cheap to clone; clones share the keys.
#[derive(Clone)]
pub struct SessionKeys(Arc<RwLock<(Key, Option<Key>)>>);

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys([REDACTED])")
    }
}

impl SessionKeys {
    /// Sealing with `current`, also opening with `previous`.
    pub fn new(current: Key, previous: Option<Key>) -> Self {
        Self(Arc::new(RwLock::new((current, previous))))
    }

    /// The key that seals.
    pub fn current(&self) -> Key {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The key that only opens, during a rotation.
    pub fn previous(&self) -> Option<Key> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Both, read together.
    pub fn both(&self) -> (Key, Option<Key>) {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, these.
    pub fn replace(&self, current: Key, previous: Option<Key>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = (current, previous);
    }
}

/// A secret read from a file, and what it feeds.
#[derive(Debug)]
struct FileSecret {
    /// How the operator names it: `OPENAI_MANAGEMENT_KEY_FILE`, or an
    /// issuer's `client_secret_file`.
    name: String,
    path: PathBuf,
    target: Rotating,
}

/// Where a session secret comes from.
#[derive(Debug)]
enum SessionSource {
    /// The environment (or nothing): it cannot change while running.
    Fixed,
    /// A file, read again on `SIGHUP`.
    File(PathBuf),
}

/// Why a secret is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP`: every secret read from a file.
    Signal,
    /// The admin key's file changed.
    FileChanged,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::FileChanged => "its file changed",
        }
    }
}

/// What reading a secret again came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new value is in use.
    Rotated(String),
    /// The file holds what is in use already.
    Unchanged(String),
    /// The new value is refused, for the reason given; the old one stays.
    Refused(String, String),
}

/// How a new admin key fared with OpenAI.
enum AdminVerdict {
    Accepted,
    /// OpenAI refused it: trying it again is pointless until it changes.
    Refused(String),
    /// OpenAI could not be asked: worth another try.
    Unchecked(String),
}

/// Reads the secrets held in files again: every one on `SIGHUP`
/// ([`Reloader::reload`]), the admin key also when its file changes
/// ([`Reloader::watch_admin_key`]). A new value is checked first (an admin
/// key against OpenAI, a session secret's form, any value for being
/// there); one that fails is refused with a log line and an audit event,
/// and the old value stays in use.
pub struct Reloader {
    admin_key: Option<FileSecret>,
    client_secrets: Vec<FileSecret>,
    session: (SessionSource, SessionSource),
    session_keys: SessionKeys,
    http: reqwest::Client,
    openai_base_url: url::Url,
    audit: Audit,
    clock: Clock,
    /// The admin key OpenAI last refused, so that a watch does not ask
    /// again about the same file.
    refused_admin_key: Mutex<Option<SecretString>>,
    /// One reload at a time: a signal and a watch that read the same new
    /// file put it in use once.
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("admin_key", &self.admin_key)
            .field("client_secrets", &self.client_secrets)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// What a [`Reloader`] is built from.
pub struct Sources<'a> {
    /// The settings (which secrets came from files).
    pub config: &'a Config,
    /// The admin key every Admin API client reads.
    pub admin_key: Rotating,
    /// The client secret of each issuer people sign in through, by name
    /// (the environment's first).
    pub client_secrets: Vec<(String, Rotating)>,
    /// The session keys.
    pub session_keys: SessionKeys,
    /// For asking OpenAI about a new admin key.
    pub http: reqwest::Client,
    /// Where audit events go.
    pub audit: Audit,
    /// Time.
    pub clock: Clock,
}

fn same(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}

impl Reloader {
    /// A reloader of the secrets `sources.config` read from files.
    pub fn new(sources: Sources<'_>) -> Self {
        let config = sources.config;
        let file_of = |var: &str| config.secret_files.get(var).cloned();
        let admin_key = file_of(vars::OPENAI_MANAGEMENT_KEY).map(|path| FileSecret {
            name: format!("{}_FILE={}", vars::OPENAI_MANAGEMENT_KEY, path.display()),
            path,
            target: sources.admin_key.clone(),
        });
        let client_secrets = sources
            .client_secrets
            .into_iter()
            .filter_map(|(issuer, target)| {
                if issuer == crate::access::ENV_ISSUER {
                    let path = file_of(vars::CLIENT_SECRET)?;
                    return Some(FileSecret {
                        name: format!("{}_FILE={}", vars::CLIENT_SECRET, path.display()),
                        path,
                        target,
                    });
                }
                let browser = config.browser_issuers.iter().find(|b| b.name == issuer)?;
                Some(FileSecret {
                    name: format!(
                        "issuer {issuer:?}'s client_secret_file={}",
                        browser.client_secret_file.display()
                    ),
                    path: browser.client_secret_file.clone(),
                    target,
                })
            })
            .collect();
        let source = |var: &str| file_of(var).map_or(SessionSource::Fixed, SessionSource::File);
        Self {
            admin_key,
            client_secrets,
            session: (
                source(vars::SESSION_SECRET),
                source(vars::SESSION_SECRET_PREVIOUS),
            ),
            session_keys: sources.session_keys,
            http: sources.http,
            openai_base_url: config.openai_base_url.clone(),
            audit: sources.audit,
            clock: sources.clock,
            refused_admin_key: Mutex::new(None),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads every secret held in a file again (`SIGHUP`), and puts each
    /// new value that passes its check in use.
    pub async fn reload(&self) -> Vec<Outcome> {
        let _one_at_a_time = self.busy.lock().await;
        let mut outcomes = Vec::new();
        if let Some(admin_key) = &self.admin_key {
            outcomes.push(self.reload_admin_key(admin_key, Trigger::Signal).await);
        }
        for secret in &self.client_secrets {
            let outcome = match read(&secret.path) {
                Err(why) => Outcome::Refused(secret.name.clone(), why),
                Ok(new) if same(&new, &secret.target.current()) => {
                    Outcome::Unchanged(secret.name.clone())
                }
                Ok(new) => {
                    secret.target.replace(new);
                    Outcome::Rotated(secret.name.clone())
                }
            };
            outcomes.push(outcome);
        }
        if let Some(outcome) = self.reload_session_keys() {
            outcomes.push(outcome);
        }
        for outcome in &outcomes {
            self.report(outcome, Trigger::Signal);
        }
        if outcomes.is_empty() {
            tracing::info!(
                "SIGHUP: no secret is read from a file (OPENAI_MANAGEMENT_KEY_FILE, CLIENT_SECRET_FILE, SESSION_SECRET_FILE, SESSION_SECRET_PREVIOUS_FILE), so there is nothing to read again"
            );
        }
        outcomes
    }

    /// Reads the admin key's file, if it has one, and puts a new key in use
    /// once OpenAI accepts it.
    pub async fn check_admin_key_file(&self) -> Option<Outcome> {
        let admin_key = self.admin_key.as_ref()?;
        let _one_at_a_time = self.busy.lock().await;
        let outcome = self.reload_admin_key(admin_key, Trigger::FileChanged).await;
        if !matches!(outcome, Outcome::Unchanged(_)) {
            self.report(&outcome, Trigger::FileChanged);
        }
        Some(outcome)
    }

    /// Whether the admin key comes from a file (and so is watched).
    pub fn watches_admin_key(&self) -> bool {
        self.admin_key.is_some()
    }

    async fn reload_admin_key(&self, secret: &FileSecret, trigger: Trigger) -> Outcome {
        let new = match read(&secret.path) {
            Ok(new) => new,
            Err(why) => return Outcome::Refused(secret.name.clone(), why),
        };
        if same(&new, &secret.target.current()) {
            return Outcome::Unchanged(secret.name.clone());
        }
        let refused_before = self
            .refused_admin_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|refused| same(refused, &new));
        // A watch asks OpenAI once about a file it refused; a signal asks
        // again (the operator may have fixed the key's rights meanwhile).
        if refused_before && trigger == Trigger::FileChanged {
            return Outcome::Unchanged(secret.name.clone());
        }
        match self.ask_openai(&new).await {
            AdminVerdict::Accepted => {
                secret.target.replace(new);
                *self
                    .refused_admin_key
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                Outcome::Rotated(secret.name.clone())
            }
            AdminVerdict::Refused(why) => {
                *self
                    .refused_admin_key
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(new);
                Outcome::Refused(secret.name.clone(), why)
            }
            AdminVerdict::Unchecked(why) => Outcome::Refused(secret.name.clone(), why),
        }
    }

    /// Whether OpenAI accepts `key` as an admin key: it lists projects.
    async fn ask_openai(&self, key: &SecretString) -> AdminVerdict {
        let admin = AdminClient::new(self.http.clone(), &self.openai_base_url, key.clone());
        match admin.list_projects(None).await {
            Ok(_) => AdminVerdict::Accepted,
            Err(openai::Error::Unauthorized { .. }) => AdminVerdict::Refused(
                "OpenAI refuses the new key (401): it must be an admin key of this organisation (Settings → Admin keys), not a project key".to_owned(),
            ),
            Err(openai::Error::Forbidden { .. }) => AdminVerdict::Refused(
                "OpenAI forbids the new key to list projects (403): give it the organisation owner's rights".to_owned(),
            ),
            Err(error) => AdminVerdict::Unchecked(format!(
                "OpenAI could not be asked whether the new key works ({error}); it is tried again at the next change or SIGHUP"
            )),
        }
    }

    /// Both session secrets, read again; `None` when neither is in a file.
    fn reload_session_keys(&self) -> Option<Outcome> {
        let (current_source, previous_source) = &self.session;
        if matches!(
            (current_source, previous_source),
            (SessionSource::Fixed, SessionSource::Fixed)
        ) {
            return None;
        }
        let name = [
            (vars::SESSION_SECRET, current_source),
            (vars::SESSION_SECRET_PREVIOUS, previous_source),
        ]
        .iter()
        .filter_map(|(var, source)| match source {
            SessionSource::File(path) => Some(format!("{var}_FILE={}", path.display())),
            SessionSource::Fixed => None,
        })
        .collect::<Vec<_>>()
        .join(", ");
        let (old_current, old_previous) = self.session_keys.both();
        let current = match current_source {
            SessionSource::Fixed => old_current.clone(),
            SessionSource::File(path) => match read(path).and_then(|text| {
                SessionSecret::parse(text.expose_secret())
                    .map_err(|why| format!("{} {why}", vars::SESSION_SECRET))
            }) {
                Ok(secret) => Key::derive_from(secret.expose()),
                Err(why) => return Some(Outcome::Refused(name, why)),
            },
        };
        let previous = match previous_source {
            SessionSource::Fixed => old_previous.clone(),
            SessionSource::File(path) => match std::fs::read_to_string(path) {
                // Emptied: the rotation is over.
                Ok(text) if text.trim().is_empty() => None,
                Ok(text) => match SessionSecret::parse(&text) {
                    Ok(secret) => Some(Key::derive_from(secret.expose())),
                    Err(why) => {
                        return Some(Outcome::Refused(
                            name,
                            format!("{} {why}", vars::SESSION_SECRET_PREVIOUS),
                        ));
                    }
                },
                Err(error) => {
                    return Some(Outcome::Refused(
                        name,
                        format!("cannot read {}: {error}", path.display()),
                    ));
                }
            },
        };
        let key_eq = |a: &Key, b: &Key| a.master() == b.master();
        let unchanged = key_eq(&current, &old_current)
            && match (&previous, &old_previous) {
                (None, None) => true,
                (Some(a), Some(b)) => key_eq(a, b),
                _ => false,
            };
        if unchanged {
            return Some(Outcome::Unchanged(name));
        }
        self.session_keys.replace(current, previous);
        Some(Outcome::Rotated(name))
    }

    /// One log line and one audit event for a rotation or a refusal.
    fn report(&self, outcome: &Outcome, trigger: Trigger) {
        let (event, reason) = match outcome {
            Outcome::Unchanged(name) => {
                tracing::debug!(secret = %name, "unchanged");
                return;
            }
            Outcome::Rotated(name) => {
                tracing::info!(secret = %name, trigger = trigger.name(), "the new secret is in use");
                (
                    "secret.rotated",
                    format!("{name}: read again ({})", trigger.name()),
                )
            }
            Outcome::Refused(name, why) => {
                tracing::error!(secret = %name, trigger = trigger.name(), "the new secret is refused, the old one stays in use: {why}");
                ("secret.refused", format!("{name}: {why}"))
            }
        };
        self.audit.record(
            Event {
                actor: Some("server".to_owned()),
                reason: Some(reason),
                ..Event::new(event)
            },
            self.clock.now(),
        );
    }

    /// Checks the admin key's file every [`WATCH_PERIOD`] (and whenever the
    /// clock jumps, for tests) until `stop`. Kubernetes replaces a mounted
    /// secret's file within a minute or so of an update, with no signal.
    pub async fn watch_admin_key(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if !self.watches_admin_key() {
            return;
        }
        let mut jumps = self.clock.jumps();
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_PERIOD) => {}
                _ = jumps.changed() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            self.check_admin_key_file().await;
        }
    }
}

/// How often the admin key's file is looked at.
pub const WATCH_PERIOD: Duration = Duration::from_secs(10);

/// A secret's file, trimmed; an empty or unreadable file is refused.
fn read(path: &Path) -> Result<SecretString, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(format!("{} is empty", path.display())),
        Ok(text) => Ok(SecretString::from(text.trim().to_owned())),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}
