//! Sealed tokens: a value encrypted and authenticated under the key derived
//! from `SESSION_SECRET` (AES-256-GCM, as the browser session's cookie is),
//! with its purpose as associated data, so that a token made for one
//! purpose (a CLI session, a sign-in code) opens for no other, nor as a
//! browser cookie. Any replica with the same secret opens what another
//! sealed; nothing is stored.

use cookie::{Cookie, CookieJar, Key};
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
    key: Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A sealer under `key` (the browser session's).
    pub fn new(key: Key) -> Self {
        Self { key }
    }

    /// `value` as a URL-safe token for `purpose`.
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let json = serde_json::to_string(value).expect("sealed values always serialise");
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key)
            .add(Cookie::new(purpose.name(), json));
        let sealed = jar
            .get(purpose.name())
            .expect("the cookie was just added")
            .value();
        // Standard base64 from the cookie crate; URL-safe for the places a
        // token travels (a query string, a header).
        sealed.replace('+', "-").replace('/', "_")
    }

    /// The value of `token` if it was sealed for `purpose` under this key.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, token: &str) -> Option<T> {
        // Real tokens are a few hundred bytes.
        if token.len() > 4096 {
            return None;
        }
        let standard = token.replace('-', "+").replace('_', "/");
        let jar = CookieJar::new();
        let opened = jar
            .private(&self.key)
            .decrypt(Cookie::new(purpose.name(), standard))?;
        serde_json::from_str(opened.value()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_for_its_purpose_and_key_only() {
        let sealer = Sealer::new(Key::generate());
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
        let other = Sealer::new(Key::generate());
        assert_eq!(other.open::<String>(Purpose::CliSession, &token), None);
        let mut tampered = token.into_bytes();
        tampered[10] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(sealer.open::<String>(Purpose::CliSession, &tampered), None);
    }
}
