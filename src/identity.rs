//! Who a signed-in person is: a normalised email address and the claims the
//! identity provider vouched for.

use std::fmt;

/// An email address, parsed strictly and lower-cased so that comparisons
/// against the allow-list are exact.
///
/// Strict on purpose: whitespace anywhere, a trailing dot, an empty part,
/// more than one `@` or a control character make it invalid, so that no
/// spelling variant of an allowed address slips through by being "close".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmailAddress(String);

/// Why a string is not an acceptable email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// No `@`, or more than one.
    #[error("must contain exactly one '@'")]
    At,
    /// Nothing before the `@`.
    #[error("has nothing before the '@'")]
    EmptyLocal,
    /// The domain part is not a plausible domain name.
    #[error("has an invalid domain: {0}")]
    Domain(DomainError),
    /// Whitespace or control characters.
    #[error("contains whitespace or control characters")]
    Whitespace,
    /// Longer than the 254 characters an address may have.
    #[error("is longer than 254 characters")]
    TooLong,
    /// A character outside ASCII: look-alikes (Cyrillic `о`, the Kelvin sign
    /// that lower-cases to `k`) must never equal a listed address.
    #[error("contains a character outside ASCII")]
    NonAscii,
}

impl EmailAddress {
    /// Parses and lower-cases an address. Does not trim: callers decide
    /// whether surrounding whitespace is a typo (configuration) or an attack
    /// (a token claim).
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.len() > 254 {
            return Err(EmailError::TooLong);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::Whitespace);
        }
        if !raw.is_ascii() {
            return Err(EmailError::NonAscii);
        }
        let (local, domain) = raw.split_once('@').ok_or(EmailError::At)?;
        if domain.contains('@') {
            return Err(EmailError::At);
        }
        if local.is_empty() {
            return Err(EmailError::EmptyLocal);
        }
        let domain = Domain::parse(domain).map_err(EmailError::Domain)?;
        Ok(Self(format!("{}@{}", local.to_ascii_lowercase(), domain.0)))
    }

    /// The address as a string, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS domain name, lower-cased, as used in `ALLOWED_DOMAINS` and the
/// `hd` claim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

/// Why a string is not an acceptable domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty, or a label is empty (`a..b`, a leading or trailing dot).
    #[error("has an empty label (check for a leading, trailing or double dot)")]
    EmptyLabel,
    /// A character other than letters, digits, `-` and dots.
    #[error("may only contain letters, digits, '-' and '.'")]
    Character,
    /// Over 253 characters, or a label over 63.
    #[error("is too long")]
    TooLong,
}

impl Domain {
    /// Parses and lower-cases a domain name. Only ASCII names (punycode for
    /// international ones) are accepted, so that look-alike characters can
    /// never equal an allowed domain.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.len() > 253 {
            return Err(DomainError::TooLong);
        }
        for label in raw.split('.') {
            if label.is_empty() {
                return Err(DomainError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(DomainError::TooLong);
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(DomainError::Character);
            }
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// The domain as a string, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the identity provider vouched for, after the ID token was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The provider's stable subject id (`sub`).
    pub subject: String,
    /// The email address, when it parsed; `None` when the token had no email
    /// or one that is not a valid address.
    pub email: Option<EmailAddress>,
    /// The raw `email` claim, for telling a refused person which account was
    /// refused (escaped by the template, never trusted).
    pub email_claim: Option<String>,
    /// Whether the provider verified the address (`email_verified`).
    pub email_verified: bool,
    /// Google's hosted domain (`hd`): present only for Workspace accounts.
    pub hosted_domain: Option<String>,
    /// The name of the issuer that vouched for it (see
    /// [`crate::access::ENV_ISSUER`]): a rule for one issuer never matches
    /// another's identities.
    pub issuer: String,
    /// The groups the issuer put in its groups claim (none for Google).
    pub groups: Vec<String>,
}

/// Whose keys: a person (their verified address) or a workload, written
/// `<issuer>:<id>` (e.g. `github:123456789`, a repository's numeric id).
/// The one form every account name, page and log line carries, so it
/// must read back exactly as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(String);

/// Why a workload cannot be an owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// The issuer's name is not 1 to 32 of `a-z`, `0-9`, `-`, `_`.
    #[error("the issuer name {0:?} may only have a-z, 0-9, '-' and '_' (1 to 32)")]
    Issuer(String),
    /// The id is not 1 to 128 of letters, digits, `.`, `_`, `-`.
    #[error("the workload id may only have letters, digits, '.', '_' and '-' (1 to 128)")]
    Id,
    /// Neither an address nor `issuer:id`.
    #[error("{0:?} is neither an email address nor issuer:id")]
    Form(String),
}

fn is_issuer_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_workload_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Owner {
    /// A workload of issuer `issuer` (its name in the policy) known there
    /// as `id`.
    pub fn workload(issuer: &str, id: &str) -> Result<Self, OwnerError> {
        if !is_issuer_name(issuer) {
            return Err(OwnerError::Issuer(issuer.to_owned()));
        }
        if !is_workload_id(id) {
            return Err(OwnerError::Id);
        }
        Ok(Self(format!("{issuer}:{id}")))
    }

    /// Reads an owner back: an address (with an `@`), or `issuer:id`.
    pub fn parse(raw: &str) -> Result<Self, OwnerError> {
        if raw.contains('@') {
            return EmailAddress::parse(raw)
                .map(Self::from)
                .map_err(|_| OwnerError::Form(raw.to_owned()));
        }
        let (issuer, id) = raw
            .split_once(':')
            .ok_or_else(|| OwnerError::Form(raw.to_owned()))?;
        Self::workload(issuer, id)
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for a workload (a CI job), false for a person.
    pub fn is_workload(&self) -> bool {
        !self.0.contains('@')
    }
}

impl From<EmailAddress> for Owner {
    fn from(email: EmailAddress) -> Self {
        Self(email.0)
    }
}

impl From<&EmailAddress> for Owner {
    fn from(email: &EmailAddress) -> Self {
        Self(email.0.clone())
    }
}

impl PartialEq<EmailAddress> for Owner {
    fn eq(&self, other: &EmailAddress) -> bool {
        self.0 == other.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lower_cased_and_split_at_the_at() {
        let email = EmailAddress::parse("Alice.Smith@Example.COM").unwrap();
        assert_eq!(email.as_str(), "alice.smith@example.com");
        assert_eq!(email.domain(), "example.com");
    }

    #[test]
    fn near_misses_are_not_addresses() {
        for bad in [
            "alice@example.com.",
            " alice@example.com",
            "alice@example.com ",
            "alice@@example.com",
            "alice@exa mple.com",
            "@example.com",
            "alice@",
            "alice",
            "alice@example..com",
            "alice@ex\u{0430}mple.com",
            "alice@example.com\u{0}",
            "\u{212a}ate@gmail.com",
            "b\u{43e}b@gmail.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn plus_addressing_is_kept_as_a_distinct_address() {
        let plus = EmailAddress::parse("alice+x@example.com").unwrap();
        assert_ne!(plus, EmailAddress::parse("alice@example.com").unwrap());
    }
}
