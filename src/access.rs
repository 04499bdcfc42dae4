//! Who may have what: the allow-lists of the Go original, with the
//! Workspace check it lacked, and the admins. A decision is a [`Grant`]:
//! whose keys, how long they live, how many at once, and whether the
//! person may act on everyone's keys.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::identity::{Domain, EmailAddress, Identity};

/// Allowed people and Workspace domains, normalised once at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Addresses allowed one by one (`ALLOWED_USERS`).
    pub users: BTreeSet<EmailAddress>,
    /// Domains whose Workspace accounts are allowed (`ALLOWED_DOMAINS`).
    pub domains: BTreeSet<Domain>,
}

/// Why a verified identity gets no key. Each is shown to the person, so
/// each says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token carried no usable email address.
    #[error("the identity provider did not share a valid email address")]
    NoEmail,
    /// The provider does not vouch for the address.
    #[error("the email address is not verified by the identity provider")]
    EmailNotVerified,
    /// The address's domain is allowed, but the account is not a Workspace
    /// account of that domain (`hd` missing or different), e.g. a personal
    /// Google account registered with a company address.
    #[error(
        "the account is not managed by the organisation that owns {domain} (a personal account using a company address is not enough)"
    )]
    NotManagedByDomain {
        /// The allowed domain of the address.
        domain: String,
    },
    /// The address is listed, but the provider does not manage it (a Google
    /// account on a non-Gmail address without `hd`), so it cannot vouch that
    /// the person still owns it.
    #[error(
        "the address is listed, but it belongs to a personal account that the identity provider does not manage; sign in with the organisation's account"
    )]
    Unmanaged,
    /// Neither the address nor its domain is on the allow-list.
    #[error("the account is not on the allow-list")]
    NotAllowed,
}

/// What one allowed person may have. Today every allowed person gets the
/// same grant in the one project; the policy issue will vary it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Whose keys: the verified, normalised address.
    pub owner: EmailAddress,
    /// How long each key lives (`EXPIRATION`).
    pub lifetime: Duration,
    /// Live keys they may hold at once (`MAX_KEYS_PER_USER`; 0: no cap).
    pub cap: usize,
    /// May see and revoke every key of this server (`ADMIN_USERS`).
    pub admin: bool,
}

/// Who may have what, read from the configuration at start and asked on
/// every request, so that a person taken off the list loses access at
/// once, whatever their session says.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Who may have a key at all.
    pub allow: AllowList,
    /// Whether listed addresses count without the provider managing them.
    pub trust_unmanaged: bool,
    /// Who may act on everyone's keys (they must be allowed too).
    pub admins: BTreeSet<EmailAddress>,
    /// Lifetime of every key.
    pub lifetime: Duration,
    /// Live keys per person (0: no cap).
    pub cap: usize,
}

impl Policy {
    /// The grant of `identity`, or why it gets none.
    pub fn decide(&self, identity: &Identity) -> Result<Grant, Refusal> {
        let owner = self.allow.decide(identity, self.trust_unmanaged)?;
        Ok(Grant {
            admin: self.admins.contains(&owner),
            owner,
            lifetime: self.lifetime,
            cap: self.cap,
        })
    }
}

impl AllowList {
    /// True when nothing at all is allowed (a configuration error).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.domains.is_empty()
    }

    /// Decides whether `identity` may have a key. The email must be verified;
    /// then it is allowed if listed, or if its domain is listed **and** the
    /// provider's `hd` claim names that same domain: the domain of an email
    /// alone proves nothing, since anyone can register a personal account
    /// with any address.
    ///
    /// A listed address counts only when the provider is authoritative for
    /// it, unless `trust_unmanaged`: for Google that means a Gmail address,
    /// or an `hd` claim equal to the address's domain. Anyone can register a
    /// personal Google account with any address they once received mail at,
    /// and keep it after losing the mailbox.
    pub fn decide(
        &self,
        identity: &Identity,
        trust_unmanaged: bool,
    ) -> Result<EmailAddress, Refusal> {
        let email = identity.email.as_ref().ok_or(Refusal::NoEmail)?;
        if !identity.email_verified {
            return Err(Refusal::EmailNotVerified);
        }
        if self.users.contains(email) {
            let managed = matches!(email.domain(), "gmail.com" | "googlemail.com")
                || identity
                    .hosted_domain
                    .as_deref()
                    .is_some_and(|hd| hd.eq_ignore_ascii_case(email.domain()));
            if managed || trust_unmanaged {
                return Ok(email.clone());
            }
            return Err(Refusal::Unmanaged);
        }
        let Ok(domain) = Domain::parse(email.domain()) else {
            return Err(Refusal::NotAllowed);
        };
        if self.domains.contains(&domain) {
            let hd_matches = identity
                .hosted_domain
                .as_deref()
                .and_then(|hd| Domain::parse(hd).ok())
                .is_some_and(|hd| hd == domain);
            if hd_matches {
                return Ok(email.clone());
            }
            return Err(Refusal::NotManagedByDomain {
                domain: domain.to_string(),
            });
        }
        Err(Refusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(users: &[&str], domains: &[&str]) -> AllowList {
        AllowList {
            users: users
                .iter()
                .map(|u| EmailAddress::parse(u).unwrap())
                .collect(),
            domains: domains.iter().map(|d| Domain::parse(d).unwrap()).collect(),
        }
    }

    impl AllowList {
        fn decide_t(&self, identity: &Identity) -> Result<EmailAddress, Refusal> {
            self.decide(identity, false)
        }
    }

    #[test]
    fn a_listed_address_without_a_managing_provider_needs_trust_unmanaged() {
        let allow = list(&["carol@corp.test", "bob@gmail.com"], &[]);
        let carol = who("carol@corp.test", true, None);
        assert_eq!(allow.decide(&carol, false), Err(Refusal::Unmanaged));
        assert!(allow.decide(&carol, true).is_ok());
        assert!(
            allow
                .decide(&who("carol@corp.test", true, Some("corp.test")), false)
                .is_ok()
        );
        assert!(
            allow
                .decide(&who("bob@gmail.com", true, None), false)
                .is_ok()
        );
    }

    fn who(email: &str, verified: bool, hd: Option<&str>) -> Identity {
        Identity {
            subject: "1".into(),
            email: EmailAddress::parse(email).ok(),
            email_claim: Some(email.into()),
            email_verified: verified,
            hosted_domain: hd.map(str::to_owned),
        }
    }

    #[test]
    fn a_listed_user_is_allowed_whatever_the_case() {
        let allow = list(&["Bob@Gmail.com"], &[]);
        assert!(allow.decide_t(&who("BOB@gmail.COM", true, None)).is_ok());
    }

    #[test]
    fn a_domain_needs_a_matching_hosted_domain() {
        let allow = list(&[], &["example.com"]);
        assert!(
            allow
                .decide_t(&who("a@example.com", true, Some("example.com")))
                .is_ok()
        );
        assert!(
            allow
                .decide_t(&who("a@example.com", true, Some("EXAMPLE.com")))
                .is_ok()
        );
        assert_eq!(
            allow.decide_t(&who("a@example.com", true, None)),
            Err(Refusal::NotManagedByDomain {
                domain: "example.com".into()
            })
        );
        assert!(
            allow
                .decide_t(&who("a@example.com", true, Some("evil.test")))
                .is_err()
        );
    }

    #[test]
    fn an_unverified_address_is_refused_even_when_listed() {
        let allow = list(&["a@example.com"], &["example.com"]);
        assert_eq!(
            allow.decide_t(&who("a@example.com", false, Some("example.com"))),
            Err(Refusal::EmailNotVerified)
        );
    }

    #[test]
    fn suffixes_and_superdomains_of_an_allowed_domain_are_refused() {
        let allow = list(&[], &["example.com"]);
        for email in [
            "a@badexample.com",
            "a@example.com.evil.org",
            "a@sub.example.com",
        ] {
            let domain = email.split('@').nth(1).unwrap();
            assert!(
                allow.decide_t(&who(email, true, Some(domain))).is_err(),
                "{email} was admitted"
            );
        }
    }

    proptest! {
        #[test]
        fn only_exact_domain_matches_are_admitted(
            local in "[a-z]{1,8}",
            prefix in "[a-z]{0,4}",
            suffix in prop::option::of("\\.[a-z]{1,4}"),
        ) {
            let allow = list(&[], &["example.com"]);
            let domain = format!("{prefix}example.com{}", suffix.clone().unwrap_or_default());
            let email = format!("{local}@{domain}");
            let decision = allow.decide_t(&who(&email, true, Some(&domain)));
            let exact = prefix.is_empty() && suffix.is_none();
            prop_assert_eq!(decision.is_ok(), exact);
        }
    }
}
