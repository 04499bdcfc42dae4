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
