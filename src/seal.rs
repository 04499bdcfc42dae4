//! Sealed tokens: a value encrypted and authenticated under the key derived
//! from `SESSION_SECRET` (AES-256-GCM, as the browser session's cookie is),
//! with its purpose as associated data, so that a token made for one
//! purpose (a CLI session, a sign-in code) opens for no other, nor as a
//! browser cookie. Any replica with the same secret opens what another
//! sealed; nothing is stored. During a rotation of the secret, what the
//! previous one sealed still opens.

use cookie::{Cookie, CookieJar, Key};

use crate::secrets::SessionKeys;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a sealed token is for; each is the associated data of its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A CLI session (`Authorization: Bearer`).
    CliSession,
    /// A loopback sign-in's one-time code.
    CliCode,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Self::CliSession => "oks_cli_session",
            Self::CliCode => "oks_cli_code",
        }
    }
}

/// Seals and opens tokens. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    keys: SessionKeys,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A sealer under `keys` (the browser session's).
    pub fn new(keys: SessionKeys) -> Self {
        Self { keys }
    }

    /// A sealer under `key` alone.
    pub fn with_key(key: Key) -> Self {
        Self::new(SessionKeys::new(key, None))
    }

    /// `value` as a URL-safe token for `purpose`.
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let json = serde_json::to_string(value).expect("sealed values always serialise");
        self.seal_text(purpose, json)
    }

    fn seal_text(&self, purpose: Purpose, text: String) -> String {
        let mut jar = CookieJar::new();
        jar.private_mut(&self.keys.current())
            .add(Cookie::new(purpose.name(), text));
        let sealed = jar
            .get(purpose.name())
            .expect("the cookie was just added")
            .value();
        // Standard base64 from the cookie crate; URL-safe for the places a
        // token travels (a query string, a header).
        sealed.replace('+', "-").replace('/', "_")
    }

    /// The value of `token` if it was sealed for `purpose` under the
    /// current key or the previous one.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, token: &str) -> Option<T> {
        let (text, _) = self.open_text(purpose, token)?;
        serde_json::from_str(&text).ok()
    }

    /// `token` sealed anew under the current key, if it opens only under
    /// the previous one (a rotation is under way).
    pub fn reseal(&self, purpose: Purpose, token: &str) -> Option<String> {
        match self.open_text(purpose, token)? {
            (text, true) => Some(self.seal_text(purpose, text)),
            (_, false) => None,
        }
    }

    /// What `token` holds, and whether only the previous key opened it.
    fn open_text(&self, purpose: Purpose, token: &str) -> Option<(String, bool)> {
        // Real tokens are a few hundred bytes.
        if token.len() > 4096 {
            return None;
        }
        let standard = token.replace('-', "+").replace('_', "/");
        let jar = CookieJar::new();
        let cookie = Cookie::new(purpose.name(), standard);
        let (current, previous) = self.keys.both();
        if let Some(opened) = jar.private(&current).decrypt(cookie.clone()) {
            return Some((opened.value().to_owned(), false));
        }
        let opened = jar.private(&previous?).decrypt(cookie)?;
        Some((opened.value().to_owned(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_for_its_purpose_and_key_only() {
        let sealer = Sealer::with_key(Key::generate());
        let token = sealer.seal(Purpose::CliSession, &"alice");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        );
        assert_eq!(
            sealer
                .open::<String>(Purpose::CliSession, &token)
                .as_deref(),
            Some("alice")
        );
        assert_eq!(sealer.open::<String>(Purpose::CliCode, &token), None);
        let other = Sealer::with_key(Key::generate());
        assert_eq!(other.open::<String>(Purpose::CliSession, &token), None);
        let mut tampered = token.into_bytes();
        tampered[10] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(sealer.open::<String>(Purpose::CliSession, &tampered), None);
    }

    #[test]
    fn during_a_rotation_the_previous_key_opens_and_tokens_are_sealed_anew() {
        let (old, new) = (Key::generate(), Key::generate());
        let before = Sealer::with_key(old.clone());
        let token = before.seal(Purpose::CliSession, &"alice");
        let keys = SessionKeys::new(new.clone(), Some(old));
        let during = Sealer::new(keys.clone());
        assert_eq!(
            during
                .open::<String>(Purpose::CliSession, &token)
                .as_deref(),
            Some("alice")
        );
        let resealed = during.reseal(Purpose::CliSession, &token).unwrap();
        assert_eq!(
            during.reseal(Purpose::CliSession, &resealed),
            None,
            "already current"
        );
        assert_eq!(
            during.reseal(Purpose::CliCode, &token),
            None,
            "another purpose"
        );
        // The rotation over: only the new key.
        keys.replace(new, None);
        assert_eq!(during.open::<String>(Purpose::CliSession, &token), None);
        assert_eq!(
            during
                .open::<String>(Purpose::CliSession, &resealed)
                .as_deref(),
            Some("alice")
        );
    }
}
