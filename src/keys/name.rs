//! The service-account naming scheme: `oks.<expiry>.<nonce>.<owner>`, the
//! owner a person's address or a workload's `issuer:id`.
//!
//! The name is the only record of an issued key, so parsing is strict:
//! anything that does not re-encode to exactly the same string is foreign
//! and never touched by the sweep.

use std::fmt;

use rand::Rng as _;

use crate::identity::Owner;

/// Marks accounts created by this server.
pub const PREFIX: &str = "oks.";
/// Length of the nonces this server writes.
const NONCE_LEN: usize = 6;
const NONCE_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Nonces read back may be a little more varied ("a few random
/// characters"), so that another implementation of the scheme, or an older
/// version of this one, still has its accounts cleaned up.
const NONCE_READ_LEN: std::ops::RangeInclusive<usize> = 4..=32;

/// A decoded account name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountName {
    /// When the account's key expires (Unix seconds).
    pub expires_at: i64,
    /// Random characters that make the name unique.
    pub nonce: String,
    /// Whose key it is.
    pub owner: Owner,
}

impl AccountName {
    /// A new name with a fresh nonce.
    pub fn new(owner: Owner, expires_at: i64) -> Self {
        let mut rng = rand::rng();
        let nonce = (0..NONCE_LEN)
            .map(|_| char::from(NONCE_ALPHABET[rng.random_range(0..NONCE_ALPHABET.len())]))
            .collect();
        Self {
            expires_at,
            nonce,
            owner,
        }
    }

    /// The name to give the account.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Decodes a name, or `None` for anything this server did not create.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?;
        let (expiry, rest) = rest.split_once('.')?;
        let (nonce, owner) = rest.split_once('.')?;
        if expiry.is_empty()
            || !expiry.bytes().all(|b| b.is_ascii_digit())
            || (expiry.len() > 1 && expiry.starts_with('0'))
        {
            return None;
        }
        let expires_at = expiry.parse::<i64>().ok()?;
        if !NONCE_READ_LEN.contains(&nonce.len())
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return None;
        }
        let owner = Owner::parse(owner).ok()?;
        let parsed = Self {
            expires_at,
            nonce: nonce.to_owned(),
            owner,
        };
        (parsed.encode() == name).then_some(parsed)
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}.{}.{}",
            self.expires_at, self.nonce, self.owner
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::EmailAddress;
    use proptest::prelude::*;

    #[test]
    fn the_documented_example_parses() {
        let name = AccountName::parse("oks.1764115200.k3f9q2.alice@example.com").unwrap();
        assert_eq!(name.expires_at, 1_764_115_200);
        assert_eq!(name.nonce, "k3f9q2");
        assert_eq!(name.owner.as_str(), "alice@example.com");
    }

    #[test]
    fn a_workload_name_parses() {
        let name = AccountName::parse("oks.1764115200.k3f9q2.github:123456789").unwrap();
        assert_eq!(name.owner.as_str(), "github:123456789");
        assert!(name.owner.is_workload());
        for foreign in [
            "oks.1764115200.k3f9q2.github:",
            "oks.1764115200.k3f9q2.:123",
            "oks.1764115200.k3f9q2.GitHub:123",
            "oks.1764115200.k3f9q2.github:12/3",
            "oks.1764115200.k3f9q2.github:1:2",
            "oks.1764115200.k3f9q2.github",
        ] {
            assert_eq!(AccountName::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn foreign_and_near_miss_names_are_not_ours() {
        for foreign in [
            "alice@example.com",
            "ks:alice@example.com:1764000000",
            "oks.1764115200.k3f9q2.Alice@example.com",
            "oks.01764115200.k3f9q2.alice@example.com",
            "oks.1764115200.k3f.alice@example.com",
            "oks.1764115200.k3f9q2k3f9q2k3f9q2k3f9q2k3f9q2k3f9q2.alice@example.com",
            "oks.1764115200.k3f9!2.alice@example.com",
            "oks.-1.k3f9q2.alice@example.com",
            "oks.1764115200.k3f9q2.",
            "oks.1764115200.k3f9q2.alice@example.com ",
            "OKS.1764115200.k3f9q2.alice@example.com",
            "oks..k3f9q2.alice@example.com",
            "oks.99999999999999999999.k3f9q2.alice@example.com",
            "",
        ] {
            assert_eq!(AccountName::parse(foreign), None, "{foreign:?}");
        }
    }

    proptest! {
        #[test]
        fn every_name_round_trips(
            local in "[a-z0-9._+-]{1,20}",
            domain in "[a-z0-9-]{1,12}\\.[a-z]{2,6}",
            expires_at in 0i64..=i64::MAX,
        ) {
            let owner = EmailAddress::parse(&format!("{local}@{domain}")).unwrap();
            let name = AccountName::new(owner.into(), expires_at);
            prop_assert_eq!(AccountName::parse(&name.encode()), Some(name));
        }

        #[test]
        fn every_workload_name_round_trips(
            issuer in "[a-z0-9_-]{1,32}",
            id in "[A-Za-z0-9._-]{1,128}",
            expires_at in 0i64..=i64::MAX,
        ) {
            let owner = Owner::workload(&issuer, &id).unwrap();
            let name = AccountName::new(owner.clone(), expires_at);
            let parsed = AccountName::parse(&name.encode());
            prop_assert_eq!(parsed.as_ref().map(|n| &n.owner), Some(&owner));
            prop_assert!(parsed.unwrap().owner.is_workload());
        }

        #[test]
        fn arbitrary_strings_parse_only_if_they_round_trip(raw in "\\PC{0,60}") {
            if let Some(name) = AccountName::parse(&raw) {
                prop_assert_eq!(name.encode(), raw);
            }
        }

        #[test]
        fn names_without_the_prefix_are_never_ours(
            raw in "[a-z0-9.@]{0,40}",
        ) {
            prop_assume!(!raw.starts_with(PREFIX));
            prop_assert_eq!(AccountName::parse(&raw), None);
        }
    }
}
