//! Signing a command line in: the loopback sign-in's one-time codes, the
//! device sign-in's pending authorizations, and the CLI sessions both end
//! in. No HTTP here; [`crate::issuance`] wraps these in its use cases.
//!
//! - A **code** is sealed (see [`crate::seal`]): who signed in, the CLI's
//!   PKCE challenge, and a deadline 60 s away. It is redeemed once per
//!   replica (remembered until its deadline) and only with the verifier,
//!   so a code read off the loopback redirect is useless to anyone but the
//!   CLI that started the sign-in.
//! - A **session** is sealed too, for `CLI_SESSION_TTL`: any replica opens
//!   it; who it names is asked of the policy on every call.
//! - A **device authorization** lives in this replica's memory for at most
//!   ten minutes: the confirmation page and the CLI's polls must reach the
//!   same replica (see SECURITY.md).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use crate::api::challenge_of;
use crate::clock;
use crate::identity::{EmailAddress, Identity, Owner};
use crate::replay::CompletedLogins;
use crate::seal::{Purpose, Sealer};

/// How long a loopback sign-in's code may wait to be redeemed.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a device code waits for its person.
pub const DEVICE_TTL: Duration = Duration::from_secs(600);
/// Device authorizations pending at once on a replica; more are refused
/// until some expire.
const MAX_PENDING_DEVICES: usize = 10_000;
/// Letters of a user code: no vowels (no words), none that look alike
/// (RFC 8628 §6.1).
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Who a sealed token names: the identity as the provider vouched for it.
#[derive(Clone, Serialize, Deserialize)]
struct Who {
    sub: String,
    email: String,
    email_claim: Option<String>,
    email_verified: bool,
    hd: Option<String>,
    #[serde(default = "env_issuer")]
    iss: String,
    #[serde(default)]
    groups: Vec<String>,
}

fn env_issuer() -> String {
    crate::access::ENV_ISSUER.to_owned()
}

impl Who {
    fn of(identity: &Identity, owner: &Owner) -> Self {
        Self {
            sub: identity.subject.clone(),
            email: owner.to_string(),
            email_claim: identity.email_claim.clone(),
            email_verified: identity.email_verified,
            hd: identity.hosted_domain.clone(),
            iss: identity.issuer.clone(),
            groups: identity.groups.clone(),
        }
    }

    fn identity(&self) -> Option<Identity> {
        Some(Identity {
            subject: self.sub.clone(),
            email: Some(EmailAddress::parse(&self.email).ok()?),
            email_claim: self.email_claim.clone(),
            email_verified: self.email_verified,
            hosted_domain: self.hd.clone(),
            issuer: self.iss.clone(),
            groups: self.groups.clone(),
        })
    }
}

/// A loopback sign-in's code, sealed.
#[derive(Serialize, Deserialize)]
struct Code {
    who: Who,
    /// The CLI's PKCE challenge (S256).
    challenge: String,
    /// Unix seconds after which it is refused.
    exp: i64,
    /// What makes it single-use.
    nonce: String,
}

/// A CLI session, sealed.
#[derive(Serialize, Deserialize)]
struct Session {
    who: Who,
    /// Unix seconds at which it ends.
    exp: i64,
}

/// Why a CLI sign-in step did not go through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such code, a code used already, expired, or a wrong verifier.
    #[error("the sign-in code is not valid: {0}")]
    InvalidGrant(&'static str),
    /// The person has not confirmed the device code yet.
    #[error("the device code is not confirmed yet")]
    AuthorizationPending,
    /// Polled faster than told; the new interval, in seconds.
    #[error("polled too fast; poll every {0} s")]
    SlowDown(u64),
    /// The device code expired (or never was).
    #[error("the device code expired")]
    ExpiredToken,
    /// The person refused the device code.
    #[error("the device code was refused")]
    AccessDenied,
    /// No pending device sign-in has this user code.
    #[error("no pending sign-in has this code")]
    UnknownUserCode,
    /// Too many device sign-ins pending on this replica.
    #[error("too many device sign-ins pending")]
    TooManyPending,
    /// The session token is not one of ours (or malformed).
    #[error("the session is not valid")]
    BadSession,
    /// The session has ended.
    #[error("the session has ended")]
    SessionExpired,
}

/// A device sign-in just begun.
#[derive(Debug)]
pub struct DeviceStart {
    /// What the CLI polls with.
    pub device_code: SecretString,
    /// What the person types: `XXXX-XXXX`.
    pub user_code: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// A session for a CLI.
#[derive(Debug)]
pub struct Issued {
    /// The bearer token.
    pub token: SecretString,
    /// Unix seconds at which it ends.
    pub expires_at: i64,
    /// Whom it signs in.
    pub email: String,
}

/// One device sign-in waiting for its person.
struct Pending {
    /// Normalised (no dash).
    user_code: String,
    expires: SystemTime,
    interval: Duration,
    /// The earliest the next poll may come without a `slow_down`.
    next_poll: Option<SystemTime>,
    state: DeviceState,
}

enum DeviceState {
    Waiting,
    Approved(Box<Identity>),
    Denied,
}

#[derive(Default)]
struct Devices {
    /// By device code.
    pending: HashMap<String, Pending>,
    /// User code (normalised) to device code.
    by_user_code: HashMap<String, String>,
}

impl Devices {
    fn prune(&mut self, now: SystemTime) {
        let Self {
            pending,
            by_user_code,
        } = self;
        pending.retain(|_, p| {
            let live = p.expires > now;
            if !live {
                by_user_code.remove(&p.user_code);
            }
            live
        });
    }
}

/// The CLI's sign-ins and sessions on this replica.
pub struct CliAuth {
    sealer: Sealer,
    session_ttl: Duration,
    poll_interval: Duration,
    used_codes: CompletedLogins,
    devices: Mutex<Devices>,
}

impl std::fmt::Debug for CliAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliAuth")
            .field("session_ttl", &self.session_ttl)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `challenge` looks like an S256 challenge: 43 URL-safe
/// characters (32 bytes of SHA-256).
pub fn is_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A user code as typed (any case, dashes, spaces) in its stored form, if
/// it can be one.
pub fn normalise_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == 8 && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(code)
}

/// A user code as shown: `XXXX-XXXX`.
pub fn display_user_code(code: &str) -> String {
    match code.split_at_checked(4) {
        Some((a, b)) => format!("{a}-{b}"),
        None => code.to_owned(),
    }
}

fn new_user_code() -> String {
    (0..8)
        .map(|_| {
            let i = rand::random_range(0..USER_CODE_ALPHABET.len());
            char::from(USER_CODE_ALPHABET[i])
        })
        .collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl CliAuth {
    /// Sessions for `session_ttl` (`CLI_SESSION_TTL`); device polls every
    /// `poll_interval` (`DEVICE_POLL_INTERVAL`).
    pub fn new(sealer: Sealer, session_ttl: Duration, poll_interval: Duration) -> Self {
        Self {
            sealer,
            session_ttl,
            poll_interval,
            used_codes: CompletedLogins::default(),
            devices: Mutex::new(Devices::default()),
        }
    }

    /// The one-time code that hands `identity` (signed in as `owner`) to
    /// the CLI that holds the verifier of `challenge`.
    pub fn code_for(
        &self,
        identity: &Identity,
        owner: &Owner,
        challenge: &str,
        now: SystemTime,
    ) -> String {
        let code = Code {
            who: Who::of(identity, owner),
            challenge: challenge.to_owned(),
            exp: clock::unix_seconds(now).saturating_add_unsigned(CODE_TTL.as_secs()),
            nonce: random_token(),
        };
        self.sealer.seal(Purpose::CliCode, &code)
    }

    /// The identity a code hands over, once, to the holder of the
    /// verifier. A code is spent by its first attempt, right or wrong: a
    /// stolen code tried with a guessed verifier is gone for good.
    pub fn redeem(&self, code: &str, verifier: &str, now: SystemTime) -> Result<Identity, Refused> {
        let code: Code = self
            .sealer
            .open(Purpose::CliCode, code)
            .ok_or(Refused::InvalidGrant("not a code of this server"))?;
        let now_s = clock::unix_seconds(now);
        if code.exp <= now_s {
            return Err(Refused::InvalidGrant("the code expired"));
        }
        if !self.used_codes.complete(&code.nonce, code.exp, now_s) {
            return Err(Refused::InvalidGrant("the code was used already"));
        }
        if !constant_time_eq(&challenge_of(verifier), &code.challenge) {
            return Err(Refused::InvalidGrant(
                "the verifier does not match the challenge",
            ));
        }
        code.who
            .identity()
            .ok_or(Refused::InvalidGrant("the code names nobody"))
    }

    /// A session for `identity` (allowed as `owner`), from `now`.
    pub fn session_for(&self, identity: &Identity, owner: &Owner, now: SystemTime) -> Issued {
        let session = Session {
            who: Who::of(identity, owner),
            exp: clock::unix_seconds(now).saturating_add_unsigned(self.session_ttl.as_secs()),
        };
        Issued {
            token: SecretString::from(self.sealer.seal(Purpose::CliSession, &session)),
            expires_at: session.exp,
            email: owner.to_string(),
        }
    }

    /// Who a session token names, and when it ends.
    pub fn open_session(
        &self,
        token: &SecretString,
        now: SystemTime,
    ) -> Result<(Identity, i64), Refused> {
        let session: Session = self
            .sealer
            .open(Purpose::CliSession, token.expose_secret())
            .ok_or(Refused::BadSession)?;
        if session.exp <= clock::unix_seconds(now) {
            return Err(Refused::SessionExpired);
        }
        let identity = session.who.identity().ok_or(Refused::BadSession)?;
        Ok((identity, session.exp))
    }

    /// `token` sealed anew under the current session secret, if only the
    /// previous one opens it (a rotation is under way).
    pub fn reseal_session(&self, token: &str) -> Option<SecretString> {
        self.sealer
            .reseal(Purpose::CliSession, token)
            .map(SecretString::from)
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Begins a device sign-in.
    pub fn start_device(&self, now: SystemTime) -> Result<DeviceStart, Refused> {
        let mut devices = self.devices();
        devices.prune(now);
        if devices.pending.len() >= MAX_PENDING_DEVICES {
            return Err(Refused::TooManyPending);
        }
        let user_code = loop {
            let code = new_user_code();
            if !devices.by_user_code.contains_key(&code) {
                break code;
            }
        };
        let device_code = random_token();
        devices
            .by_user_code
            .insert(user_code.clone(), device_code.clone());
        devices.pending.insert(
            device_code.clone(),
            Pending {
                user_code: user_code.clone(),
                expires: now + DEVICE_TTL,
                interval: self.poll_interval,
                next_poll: None,
                state: DeviceState::Waiting,
            },
        );
        Ok(DeviceStart {
            device_code: SecretString::from(device_code),
            user_code: display_user_code(&user_code),
            expires_in: DEVICE_TTL.as_secs(),
            interval: self.poll_interval.as_secs(),
        })
    }

    /// Whether `user_code` (as typed) is pending here.
    pub fn device_pending(&self, user_code: &str, now: SystemTime) -> bool {
        let Some(code) = normalise_user_code(user_code) else {
            return false;
        };
        let devices = self.devices();
        devices
            .by_user_code
            .get(&code)
            .and_then(|device| devices.pending.get(device))
            .is_some_and(|p| p.expires > now && matches!(p.state, DeviceState::Waiting))
    }

    /// The person's answer to `user_code`: approved for `identity`, or
    /// refused.
    pub fn answer_device(
        &self,
        user_code: &str,
        approved: Option<&Identity>,
        now: SystemTime,
    ) -> Result<(), Refused> {
        let code = normalise_user_code(user_code).ok_or(Refused::UnknownUserCode)?;
        let mut devices = self.devices();
        devices.prune(now);
        let device = devices
            .by_user_code
            .get(&code)
            .cloned()
            .ok_or(Refused::UnknownUserCode)?;
        let pending = devices
            .pending
            .get_mut(&device)
            .ok_or(Refused::UnknownUserCode)?;
        if !matches!(pending.state, DeviceState::Waiting) {
            return Err(Refused::UnknownUserCode);
        }
        pending.state = match approved {
            Some(identity) => DeviceState::Approved(Box::new(identity.clone())),
            None => DeviceState::Denied,
        };
        Ok(())
    }

    /// A CLI's poll: the identity once the person approved (then the
    /// device code is spent), or why not yet.
    pub fn poll_device(
        &self,
        device_code: &SecretString,
        now: SystemTime,
    ) -> Result<Identity, Refused> {
        let mut devices = self.devices();
        let key = device_code.expose_secret();
        let Some(pending) = devices.pending.get_mut(key) else {
            return Err(Refused::ExpiredToken);
        };
        if pending.expires <= now {
            let user_code = pending.user_code.clone();
            devices.pending.remove(key);
            devices.by_user_code.remove(&user_code);
            return Err(Refused::ExpiredToken);
        }
        // RFC 8628 §3.5: too fast, and the interval grows by 5 s for good.
        if pending.next_poll.is_some_and(|next| now < next) {
            pending.interval += Duration::from_secs(5);
            pending.next_poll = Some(now + pending.interval);
            return Err(Refused::SlowDown(pending.interval.as_secs()));
        }
        // A little slack: a CLI that waits exactly the interval is on time.
        pending.next_poll = Some(now + pending.interval.mul_f32(0.8));
        match pending.state {
            DeviceState::Waiting => Err(Refused::AuthorizationPending),
            DeviceState::Denied | DeviceState::Approved(_) => {
                let user_code = pending.user_code.clone();
                let Some(done) = devices.pending.remove(key) else {
                    unreachable!("found above");
                };
                devices.by_user_code.remove(&user_code);
                match done.state {
                    DeviceState::Approved(identity) => Ok(*identity),
                    _ => Err(Refused::AccessDenied),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> (Identity, Owner) {
        let owner: Owner = EmailAddress::parse("alice@example.com").unwrap().into();
        let identity = Identity {
            subject: "1".into(),
            email: Some(EmailAddress::parse("alice@example.com").unwrap()),
            email_claim: Some("alice@example.com".into()),
            email_verified: true,
            hosted_domain: Some("example.com".into()),
            issuer: crate::access::ENV_ISSUER.into(),
            groups: Vec::new(),
        };
        (identity, owner)
    }

    fn auth() -> CliAuth {
        CliAuth::new(
            Sealer::with_key(cookie::Key::generate()),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn a_code_is_redeemed_once_with_its_verifier_before_its_deadline() {
        let auth = auth();
        let (identity, owner) = alice();
        let now = SystemTime::now();
        let verifier = "a-verifier-of-enough-length-0123456789-abcdef";
        let code = auth.code_for(&identity, &owner, &challenge_of(verifier), now);
        assert_eq!(auth.redeem(&code, verifier, now).unwrap().subject, "1");
        assert!(auth.redeem(&code, verifier, now).is_err(), "once");

        let code = auth.code_for(&identity, &owner, &challenge_of(verifier), now);
        assert!(auth.redeem(&code, "wrong", now).is_err());
        assert!(
            auth.redeem(&code, verifier, now).is_err(),
            "a wrong verifier spends it"
        );

        let code = auth.code_for(&identity, &owner, &challenge_of(verifier), now);
        assert_eq!(
            auth.redeem(&code, verifier, now + CODE_TTL),
            Err(Refused::InvalidGrant("the code expired"))
        );
    }

    #[test]
    fn user_codes_are_typed_loosely_and_shown_with_a_dash() {
        assert_eq!(
            normalise_user_code(" bcdf-ghjk ").as_deref(),
            Some("BCDFGHJK")
        );
        assert_eq!(normalise_user_code("ABCD-EFGH"), None, "vowels never");
        assert_eq!(display_user_code("BCDFGHJK"), "BCDF-GHJK");
        let code = new_user_code();
        assert!(normalise_user_code(&code).is_some());
    }

    #[test]
    fn a_device_code_is_pending_then_approved_once_and_polls_are_paced() {
        let auth = auth();
        let (identity, _) = alice();
        let now = SystemTime::now();
        let start = auth.start_device(now).unwrap();
        assert_eq!(
            auth.poll_device(&start.device_code, now),
            Err(Refused::AuthorizationPending)
        );
        assert_eq!(
            auth.poll_device(&start.device_code, now + Duration::from_secs(1)),
            Err(Refused::SlowDown(10))
        );
        assert!(auth.device_pending(&start.user_code, now));
        auth.answer_device(&start.user_code, Some(&identity), now)
            .unwrap();
        let later = now + Duration::from_secs(30);
        assert_eq!(
            auth.poll_device(&start.device_code, later).unwrap().subject,
            "1"
        );
        assert_eq!(
            auth.poll_device(&start.device_code, later + Duration::from_secs(30)),
            Err(Refused::ExpiredToken),
            "spent"
        );
    }

    #[test]
    fn a_device_code_expires_and_a_refusal_is_told() {
        let auth = auth();
        let now = SystemTime::now();
        let start = auth.start_device(now).unwrap();
        assert_eq!(
            auth.poll_device(&start.device_code, now + DEVICE_TTL),
            Err(Refused::ExpiredToken)
        );
        let start = auth.start_device(now).unwrap();
        auth.answer_device(&start.user_code, None, now).unwrap();
        assert_eq!(
            auth.poll_device(&start.device_code, now),
            Err(Refused::AccessDenied)
        );
    }

    #[test]
    fn a_session_opens_until_it_ends() {
        let auth = auth();
        let (identity, owner) = alice();
        let now = SystemTime::now();
        let issued = auth.session_for(&identity, &owner, now);
        assert!(auth.open_session(&issued.token, now).is_ok());
        assert_eq!(
            auth.open_session(&issued.token, now + Duration::from_secs(3600))
                .unwrap_err(),
            Refused::SessionExpired
        );
        assert_eq!(
            auth.open_session(&SecretString::from("nonsense"), now)
                .unwrap_err(),
            Refused::BadSession
        );
    }
}
