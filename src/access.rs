//! Who may have what: the policy's rules (`POLICY_FILE`, or the one rule
//! the Go original's variables imply), first match wins, each with the
//! allow-list checks of the Go original plus the Workspace check it
//! lacked. A decision is a [`Grant`]: whose keys, under which rule, how
//! long they live, how many at once, and whether the person may act on
//! everyone's keys.

mod claims;
mod index;
mod rules;

pub use claims::{ClaimPattern, Workload, claim_text};

pub use rules::{
    BrowserSpec, Defaults, IssuerSpec, PolicyFile, WorkloadSpec, load as load_policy_file,
    parse as parse_policy,
};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::identity::{Domain, EmailAddress, Identity, Owner};

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
    /// The rules that name the account's issuer ask for a group it is not
    /// in.
    #[error("the account is in none of the groups the policy allows")]
    NotInGroup,
    /// A workload's token does not have the claims of any rule for its
    /// issuer.
    #[error("no rule of the policy allows this job: {}", match value {
        Some(value) => format!("its {claim} claim is {value:?}"),
        None => format!("it has no {claim} claim"),
    })]
    ClaimMismatch {
        /// The first claim that did not match, of the rule that came
        /// closest.
        claim: String,
        /// What the token said, if it had the claim.
        value: Option<String>,
    },
    /// No rule is for the token's issuer at all.
    #[error("no rule of the policy is for issuer {0:?}")]
    NoRuleForIssuer(String),
}

/// The name of the issuer the environment configures (`OIDC_ISSUER_URL`,
/// Google by default) in the policy's rules.
pub const ENV_ISSUER: &str = "google";

/// Where a rule's keys go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectChoice {
    /// The server's project (`OPENAI_PROJECT_ID` / `DEFAULT_PROJECT_NAME`).
    Default,
    /// A project by its id (`project`).
    Id(String),
    /// A project by its name, looked up once (created when missing, like
    /// `DEFAULT_PROJECT_NAME`) (`project_name`).
    Name(String),
}

impl std::fmt::Display for ProjectChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("the server's project"),
            Self::Id(id) => write!(f, "project {id}"),
            Self::Name(name) => write!(f, "project named {name:?}"),
        }
    }
}

/// One rule of the policy: whom it is for, and what it grants. The first
/// rule that matches an identity decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its name, in messages, logs and `explain`.
    pub name: String,
    /// The issuer whose identities it is for.
    pub issuer: String,
    /// Addresses and Workspace domains it is for (empty: any).
    pub allow: AllowList,
    /// Groups, one of which the person must be in (empty: any).
    pub groups: BTreeSet<String>,
    /// Lifetime of a key when none is asked for (`ttl`).
    pub lifetime: Duration,
    /// The longest lifetime that may be asked for (`max_ttl`).
    pub max_lifetime: Duration,
    /// Live keys one holder may have at once (0: no cap).
    pub cap: usize,
    /// Keys one holder may be issued per hour (0: no limit).
    pub per_hour: u32,
    /// What one holder's keys may use.
    pub budget: Budget,
    /// Whether its holders may act on everyone's keys.
    pub admin: bool,
    /// Where its keys go.
    pub project: ProjectChoice,
    /// OpenAI key scopes (empty: unrestricted).
    pub scopes: Vec<String>,
    /// Claims a workload's token must carry, each exactly or by a glob
    /// (workload issuers only; empty for people).
    pub claims: BTreeMap<String, ClaimPattern>,
}

/// What a holder's keys may use: tokens (input and output) per UTC day,
/// counted from OpenAI's Usage API (`tokens_per_day`, `on_over_budget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Tokens a day (0: no budget).
    pub tokens_per_day: u64,
    /// US cents a calendar month (UTC), estimated from `MODEL_PRICES`
    /// (0: no budget).
    pub cents_per_month: u64,
    /// Whether live keys are revoked too once it is spent (otherwise only
    /// new keys are refused).
    pub revoke: bool,
}

impl Budget {
    /// Whether there is one.
    pub fn is_set(&self) -> bool {
        self.tokens_per_day > 0 || self.cents_per_month > 0
    }

    /// "2,000,000 tokens a day and $50.00 a month" (empty: none).
    pub fn amounts(&self) -> String {
        let mut parts = Vec::new();
        if self.tokens_per_day > 0 {
            parts.push(format!(
                "{} tokens a day",
                crate::usage::thousands(self.tokens_per_day)
            ));
        }
        if self.cents_per_month > 0 {
            parts.push(format!(
                "{} a month",
                crate::usage::dollars(self.cents_per_month)
            ));
        }
        parts.join(" and ")
    }
}

/// What one allowed identity may have: the rule that matched, applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Whose keys: the verified, normalised address, or the workload.
    pub owner: Owner,
    /// The rule that matched.
    pub rule: String,
    /// How long a key lives unless a shorter life is asked for.
    pub lifetime: Duration,
    /// The longest life a key may be asked for.
    pub max_lifetime: Duration,
    /// Live keys they may hold at once (0: no cap).
    pub cap: usize,
    /// Keys they may be issued per hour (0: no limit).
    pub per_hour: u32,
    /// What their keys may use.
    pub budget: Budget,
    /// May see and revoke every key of this server (the rule's `admin`,
    /// or `ADMIN_USERS`).
    pub admin: bool,
    /// OpenAI scopes of their keys (empty: unrestricted).
    pub scopes: Vec<String>,
    /// Where their keys go.
    pub project: ProjectChoice,
    /// The issuer the holder came through.
    pub issuer: String,
}

/// Who may have what, read from the configuration at start and asked on
/// every request, so that a person taken off the list loses access at
/// once, whatever their session says.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The rules, in order.
    rules: Vec<Rule>,
    /// Whether listed addresses count without the provider managing them.
    trust_unmanaged: bool,
    /// Who may act on everyone's keys (`ADMIN_USERS`; they must be allowed
    /// too).
    admins: BTreeSet<EmailAddress>,
    /// Which rules could match whom.
    index: index::RuleIndex,
    /// Issuers every account of which belongs to the organisation (the
    /// policy file's `managed`).
    managed_issuers: BTreeSet<String>,
}

/// The name of the one rule the environment's variables make.
pub const ENV_RULE: &str = "environment";

/// Why one rule did not match, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// It is for another issuer.
    OtherIssuer,
    /// The identity is not what it is for.
    Refused(Refusal),
}

impl Policy {
    /// The policy of `rules` (in order), with whether listed addresses
    /// count without the provider managing them (`ALLOW_UNMANAGED_EMAILS`)
    /// and who is an admin besides the rules' (`ADMIN_USERS`).
    pub fn new(rules: Vec<Rule>, trust_unmanaged: bool, admins: BTreeSet<EmailAddress>) -> Self {
        Self {
            index: index::RuleIndex::new(&rules),
            rules,
            trust_unmanaged,
            admins,
            managed_issuers: BTreeSet::new(),
        }
    }

    /// With the issuers whose every account belongs to the organisation:
    /// their listed addresses need no `hd`, and their domain rules match
    /// the verified address's domain.
    #[must_use]
    pub fn with_managed_issuers(mut self, issuers: impl IntoIterator<Item = String>) -> Self {
        self.managed_issuers = issuers.into_iter().collect();
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The policy of the Go original's variables: one rule for the
    /// environment's issuer with `ALLOWED_USERS` and `ALLOWED_DOMAINS`,
    /// `EXPIRATION` (which is also the most that may be asked for),
    /// `MAX_KEYS_PER_USER` and `RATE_LIMIT_PER_USER`.
    pub fn from_env(allow: AllowList, lifetime: Duration, cap: usize, per_hour: u32) -> Vec<Rule> {
        vec![Rule {
            name: ENV_RULE.to_owned(),
            issuer: ENV_ISSUER.to_owned(),
            allow,
            groups: BTreeSet::new(),
            lifetime,
            max_lifetime: lifetime,
            cap,
            per_hour,
            budget: Budget::default(),
            admin: false,
            project: ProjectChoice::Default,
            scopes: Vec::new(),
            claims: BTreeMap::new(),
        }]
    }

    /// The grant of `identity`, or why it gets none: the first rule that
    /// matches, or the most telling refusal of them all. Only the rules
    /// that name the person, their domain or a group of theirs are read.
    pub fn decide(&self, identity: &Identity) -> Result<Grant, Refusal> {
        let (Some(email), true) = (&identity.email, identity.email_verified) else {
            // No address to look up: every rule of the issuer says why.
            return self.decide_among(identity, 0..self.rules.len(), None);
        };
        let candidates = self.index.people(identity, email);
        self.decide_among(identity, candidates.rules, candidates.skipped)
    }

    /// [`Policy::decide`] reading every rule: what the index must agree
    /// with.
    #[cfg(test)]
    fn decide_by_scan(&self, identity: &Identity) -> Result<Grant, Refusal> {
        self.decide_among(identity, 0..self.rules.len(), None)
    }

    fn decide_among(
        &self,
        identity: &Identity,
        rules: impl IntoIterator<Item = usize>,
        skipped: Option<Refusal>,
    ) -> Result<Grant, Refusal> {
        let mut refusal: Option<Refusal> = skipped;
        for rule in rules.into_iter().map(|i| &self.rules[i]) {
            match self.try_rule(rule, identity) {
                Ok(owner) => return Ok(self.grant(rule, owner, &identity.issuer)),
                Err(Miss::OtherIssuer) => {}
                Err(Miss::Refused(reason)) => {
                    // The most telling reason: a rule that named the person
                    // but could not trust the account says more than one
                    // that was never for them.
                    if refusal
                        .as_ref()
                        .is_none_or(|r| reason.weight() > r.weight())
                    {
                        refusal = Some(reason);
                    }
                }
            }
        }
        Err(refusal.unwrap_or(Refusal::NotAllowed))
    }

    /// Each rule in order with whether it matched `identity` and why not;
    /// the first match is the decision (`explain`).
    pub fn explain(&self, identity: &Identity) -> Vec<(&Rule, Result<Grant, Miss>)> {
        let mut lines = Vec::new();
        for rule in &self.rules {
            let outcome = self
                .try_rule(rule, identity)
                .map(|owner| self.grant(rule, owner, &identity.issuer));
            let matched = outcome.is_ok();
            lines.push((rule, outcome));
            if matched {
                break;
            }
        }
        lines
    }

    /// The grant of a CI job's verified token: the first rule for its
    /// issuer whose every claim matches. Workloads are never admins. Only
    /// the rules whose first exact claim the token has are read, unless
    /// none matches: then every rule of the issuer, for the closest one's
    /// reason.
    pub fn decide_workload(&self, workload: &Workload) -> Result<Grant, Refusal> {
        for i in self.index.jobs(&workload.issuer, &workload.claims) {
            let rule = &self.rules[i];
            if workload.first_mismatch(&rule.claims).is_none() {
                return Ok(self.workload_grant(rule, workload));
            }
        }
        match self.decide_workload_by_scan(workload) {
            Ok(grant) => {
                debug_assert!(false, "the index missed rule {}", grant.rule);
                Ok(grant)
            }
            refused => refused,
        }
    }

    fn decide_workload_by_scan(&self, workload: &Workload) -> Result<Grant, Refusal> {
        let mut closest: Option<(usize, Refusal)> = None;
        // A rule that names no claims is never a job's (the file refuses
        // one for a workload issuer): it would admit every job.
        for rule in self
            .rules
            .iter()
            .filter(|r| r.issuer == workload.issuer && !r.claims.is_empty())
        {
            match workload.first_mismatch(&rule.claims) {
                None => return Ok(self.workload_grant(rule, workload)),
                Some((matched, refusal)) => {
                    if closest.as_ref().is_none_or(|(best, _)| matched > *best) {
                        closest = Some((matched, refusal));
                    }
                }
            }
        }
        Err(closest.map_or_else(
            || Refusal::NoRuleForIssuer(workload.issuer.clone()),
            |(_, refusal)| refusal,
        ))
    }

    /// Each rule in order with whether it matched `workload` and why not
    /// (`explain --claim`).
    pub fn explain_workload(&self, workload: &Workload) -> Vec<(&Rule, Result<Grant, Miss>)> {
        let mut lines = Vec::new();
        for rule in &self.rules {
            let outcome = if rule.issuer == workload.issuer && !rule.claims.is_empty() {
                match workload.first_mismatch(&rule.claims) {
                    None => Ok(self.workload_grant(rule, workload)),
                    Some((_, refusal)) => Err(Miss::Refused(refusal)),
                }
            } else {
                Err(Miss::OtherIssuer)
            };
            let matched = outcome.is_ok();
            lines.push((rule, outcome));
            if matched {
                break;
            }
        }
        lines
    }

    fn workload_grant(&self, rule: &Rule, workload: &Workload) -> Grant {
        Grant {
            owner: workload.owner.clone(),
            rule: rule.name.clone(),
            lifetime: rule.lifetime,
            max_lifetime: rule.max_lifetime,
            cap: rule.cap,
            per_hour: rule.per_hour,
            budget: rule.budget,
            admin: false,
            scopes: rule.scopes.clone(),
            project: rule.project.clone(),
            issuer: rule.issuer.clone(),
        }
    }

    /// `ADMIN_USERS` names addresses of the environment's issuer only: the
    /// same address through another provider (one anyone could sign up
    /// to) is not that admin.
    fn grant(&self, rule: &Rule, owner: EmailAddress, issuer: &str) -> Grant {
        Grant {
            admin: rule.admin || (issuer == ENV_ISSUER && self.admins.contains(&owner)),
            owner: owner.into(),
            rule: rule.name.clone(),
            lifetime: rule.lifetime,
            max_lifetime: rule.max_lifetime,
            cap: rule.cap,
            per_hour: rule.per_hour,
            budget: rule.budget,
            scopes: rule.scopes.clone(),
            project: rule.project.clone(),
            issuer: rule.issuer.clone(),
        }
    }

    /// Whether `rule` is for `identity`: its issuer, a verified address,
    /// on the rule's list (with the checks of [`AllowList::decide`]) if it
    /// has one, in one of its groups if it names some.
    fn try_rule(&self, rule: &Rule, identity: &Identity) -> Result<EmailAddress, Miss> {
        if rule.issuer != identity.issuer {
            return Err(Miss::OtherIssuer);
        }
        // A rule on claims is for CI jobs: a person never matches it, even
        // one who names nobody else.
        if !rule.claims.is_empty() {
            return Err(Miss::Refused(Refusal::NotAllowed));
        }
        let email = identity
            .email
            .clone()
            .ok_or(Miss::Refused(Refusal::NoEmail))?;
        if !identity.email_verified {
            return Err(Miss::Refused(Refusal::EmailNotVerified));
        }
        let owner = if rule.allow.is_empty() {
            email
        } else {
            rule.allow
                .decide_for(
                    identity,
                    self.trust_unmanaged,
                    self.managed_issuers.contains(&identity.issuer),
                )
                .map_err(Miss::Refused)?
        };
        if !rule.groups.is_empty() && !identity.groups.iter().any(|g| rule.groups.contains(g)) {
            return Err(Miss::Refused(Refusal::NotInGroup));
        }
        Ok(owner)
    }
}

impl Rule {
    /// One line: whom it is for, and what it grants.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| items.join(",");
        let mut whom = vec![format!("issuer {}", self.issuer)];
        if !self.allow.users.is_empty() {
            whom.push(format!(
                "emails {}",
                list(self.allow.users.iter().map(ToString::to_string).collect())
            ));
        }
        if !self.allow.domains.is_empty() {
            whom.push(format!(
                "domains {}",
                list(self.allow.domains.iter().map(ToString::to_string).collect())
            ));
        }
        if !self.groups.is_empty() {
            whom.push(format!(
                "groups {}",
                list(self.groups.iter().cloned().collect())
            ));
        }
        if !self.claims.is_empty() {
            whom.push(format!(
                "claims {}",
                list(
                    self.claims
                        .iter()
                        .map(|(name, pattern)| format!("{name}={pattern}"))
                        .collect()
                )
            ));
        }
        format!("{}: {} -> {}", self.name, whom.join("; "), self.grants())
    }

    /// What it grants, in a few words.
    pub fn grants(&self) -> String {
        let cap = if self.cap == 0 {
            "no cap".to_owned()
        } else {
            format!("at most {} live keys", self.cap)
        };
        let rate = if self.per_hour == 0 {
            "no hourly limit".to_owned()
        } else {
            format!("{} keys an hour", self.per_hour)
        };
        let scopes = if self.scopes.is_empty() {
            "unrestricted".to_owned()
        } else {
            format!("scopes {}", self.scopes.join(","))
        };
        let budget = if self.budget.is_set() {
            format!(
                ", {} ({} when spent)",
                self.budget.amounts(),
                if self.budget.revoke {
                    "keys revoked"
                } else {
                    "new keys refused"
                }
            )
        } else {
            String::new()
        };
        format!(
            "keys of {} (at most {} on request), {}, {scopes}, {cap}, {rate}{budget}{}",
            crate::clock::humanize(self.lifetime),
            crate::clock::humanize(self.max_lifetime),
            self.project,
            if self.admin { ", admin" } else { "" }
        )
    }
}

impl Refusal {
    /// A word for it, for metrics and machines.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoEmail => "no_email",
            Self::EmailNotVerified => "email_not_verified",
            Self::NotManagedByDomain { .. } => "not_managed_by_domain",
            Self::Unmanaged => "unmanaged",
            Self::NotAllowed => "not_allowed",
            Self::NotInGroup => "not_in_group",
            Self::ClaimMismatch { .. } => "claim_mismatch",
            Self::NoRuleForIssuer(_) => "no_rule_for_issuer",
        }
    }

    /// How much a refusal tells the person about their own account.
    fn weight(&self) -> u8 {
        match self {
            Self::NoRuleForIssuer(_) | Self::ClaimMismatch { .. } => 0,
            Self::NotInGroup => 0,
            Self::NotAllowed => 1,
            Self::NoEmail => 2,
            Self::Unmanaged | Self::NotManagedByDomain { .. } => 3,
            Self::EmailNotVerified => 4,
        }
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
        self.decide_for(identity, trust_unmanaged, false)
    }

    /// [`AllowList::decide`] for an identity of an issuer that manages
    /// every account it signs in (`managed`): its verified address is
    /// the organisation's, listed or by its domain.
    fn decide_for(
        &self,
        identity: &Identity,
        trust_unmanaged: bool,
        managed_issuer: bool,
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
            if managed || trust_unmanaged || managed_issuer {
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
            if hd_matches || managed_issuer {
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
            issuer: ENV_ISSUER.into(),
            groups: Vec::new(),
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

    fn rules(text: &str) -> Vec<Rule> {
        parse_policy(
            text,
            "policy.toml",
            Defaults {
                lifetime: Duration::from_secs(3600),
                cap: 5,
                per_hour: 20,
                budget: Budget::default(),
            },
        )
        .unwrap()
        .rules
    }

    fn in_groups(identity: Identity, groups: &[&str]) -> Identity {
        Identity {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..identity
        }
    }

    const FILE: &str = r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
ttl = "8h"
max_ttl = "24h"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
emails = ["contractor@gmail.com"]
ttl = "1h"
max_live_keys = 2
admin = true
"#;

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = Policy::new(rules(FILE), false, BTreeSet::new());
        let member = in_groups(
            who("a@example.com", true, Some("example.com")),
            &["data@example.com"],
        );
        let grant = policy.decide(&member).unwrap();
        assert_eq!(grant.rule, "data-team");
        assert_eq!(grant.lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(grant.max_lifetime, Duration::from_secs(24 * 3600));
        assert!(!grant.admin);

        let staff = policy
            .decide(&who("b@example.com", true, Some("example.com")))
            .unwrap();
        assert_eq!(staff.rule, "staff");
        assert_eq!(staff.cap, 2);
        assert!(staff.admin);
        let contractor = policy
            .decide(&who("contractor@gmail.com", true, None))
            .unwrap();
        assert_eq!(contractor.rule, "staff");

        // A group member outside the rule's issuer gets nothing of it.
        let other_issuer = Identity {
            issuer: "okta".into(),
            ..member
        };
        assert_eq!(policy.decide(&other_issuer), Err(Refusal::NotAllowed));
        // A personal account with a company address is told so.
        assert!(matches!(
            policy.decide(&who("c@example.com", true, None)),
            Err(Refusal::NotManagedByDomain { .. })
        ));
        assert_eq!(
            policy.decide(&who("x@other.org", true, None)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            policy.decide(&in_groups(
                who("x@other.org", false, None),
                &["data@example.com"]
            )),
            Err(Refusal::EmailNotVerified)
        );
    }

    #[test]
    fn admin_users_are_the_environment_issuers_people_only() {
        let mut okta = rule_of(1, "okta", &["carol@example.com"], &[], &[], &[]);
        okta.name = "okta-staff".into();
        let staff = rule_of(0, ENV_ISSUER, &[], &["example.com"], &[], &[]);
        let admins: BTreeSet<EmailAddress> =
            [EmailAddress::parse("carol@example.com").unwrap()].into();
        let policy =
            Policy::new(vec![staff, okta], true, admins).with_managed_issuers(["okta".to_owned()]);
        let carol = who("carol@example.com", true, Some("example.com"));
        assert!(policy.decide(&carol).unwrap().admin);
        let elsewhere = Identity {
            issuer: "okta".into(),
            ..carol
        };
        let grant = policy.decide(&elsewhere).unwrap();
        assert_eq!(grant.rule, "okta-staff");
        assert!(
            !grant.admin,
            "the same address through another issuer is not that admin"
        );
    }

    #[test]
    fn explain_stops_at_the_first_match_and_says_why_the_others_missed() {
        let policy = Policy::new(rules(FILE), false, BTreeSet::new());
        let lines = policy.explain(&who("b@example.com", true, Some("example.com")));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1, Err(Miss::Refused(Refusal::NotInGroup)));
        assert!(lines[1].1.is_ok());
    }

    const JOBS: &str = r#"
[[issuer]]
name = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://keys.example.com"

[[issuer]]
name = "gitlab"
url = "https://gitlab.com"
audience = "https://keys.example.com"

[[rule]]
name = "release"
issuer = "github"
claims = { repository_id = "123456", ref = "refs/tags/v*" }
ttl = "10m"

[[rule]]
name = "ci-evals"
issuer = "github"
claims = { repository_id = "123456", ref = "refs/heads/*" }
ttl = "1h"
scopes = ["api.model.request"]

[[rule]]
name = "gitlab-main"
issuer = "gitlab"
claims = { project_id = 42, ref_protected = true }
ttl = "30m"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
"#;

    fn job(issuer: &str, id: &str, claims: serde_json::Value) -> Workload {
        Workload {
            issuer: issuer.into(),
            owner: Owner::workload(issuer, id).unwrap(),
            claims: claims
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn jobs_get_the_first_rule_whose_every_claim_matches() {
        let policy = Policy::new(rules(JOBS), false, BTreeSet::new());
        let decide = |issuer: &str, claims: serde_json::Value| {
            policy.decide_workload(&job(issuer, "123456", claims))
        };
        let tag = decide(
            "github",
            serde_json::json!({"repository_id": "123456", "ref": "refs/tags/v1.2"}),
        )
        .unwrap();
        assert_eq!(tag.rule, "release", "first match");
        assert_eq!(tag.owner.as_str(), "github:123456");
        assert!(!tag.admin);
        let main = decide(
            "github",
            serde_json::json!({"repository_id": "123456", "ref": "refs/heads/main"}),
        )
        .unwrap();
        assert_eq!(main.rule, "ci-evals");
        assert_eq!(main.scopes, vec!["api.model.request".to_owned()]);
        assert_eq!(main.lifetime, Duration::from_secs(3600));
        // No match: the claim that missed, of the rule that came closest.
        assert_eq!(
            decide(
                "github",
                serde_json::json!({"repository_id": "123456", "ref": "refs/pull/7/merge"})
            ),
            Err(Refusal::ClaimMismatch {
                claim: "ref".into(),
                value: Some("refs/pull/7/merge".into())
            })
        );
        assert!(matches!(
            decide("github", serde_json::json!({"ref": "refs/heads/main"})),
            Err(Refusal::ClaimMismatch { value: None, .. })
        ));
        // Numbers and booleans in claims (GitLab) match the rule's text.
        assert_eq!(
            decide(
                "gitlab",
                serde_json::json!({"project_id": 42, "ref_protected": "true"})
            )
            .unwrap()
            .rule,
            "gitlab-main"
        );
        assert!(
            decide(
                "gitlab",
                serde_json::json!({"project_id": "42", "ref_protected": false})
            )
            .is_err()
        );
        // The same claims from another issuer never match a rule of this one.
        assert!(matches!(
            decide(
                "gitlab",
                serde_json::json!({"repository_id": "123456", "ref": "refs/heads/main"})
            ),
            Err(Refusal::ClaimMismatch { .. })
        ));
        assert_eq!(
            decide("circleci", serde_json::json!({"repository_id": "123456"})),
            Err(Refusal::NoRuleForIssuer("circleci".into()))
        );
        // And no person matches a job's rule, nor a job a person's.
        let person = Identity {
            issuer: "github".into(),
            ..who("a@example.com", true, Some("example.com"))
        };
        assert!(policy.decide(&person).is_err());
    }

    fn rule_of(
        i: usize,
        issuer: &str,
        users: &[&str],
        domains: &[&str],
        groups: &[&str],
        claims: &[(&str, &str)],
    ) -> Rule {
        let mut rule =
            Policy::from_env(list(users, domains), Duration::from_secs(60), 0, 0).remove(0);
        rule.name = format!("r{i}");
        rule.issuer = issuer.to_owned();
        rule.groups = groups.iter().map(|g| (*g).to_owned()).collect();
        rule.claims = claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ClaimPattern::new(*v)))
            .collect();
        rule
    }

    fn pick<'a>(all: &[&'a str], mask: u8) -> Vec<&'a str> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, v)| *v)
            .collect()
    }

    proptest! {
        /// The index narrows, never decides: for any rules and anyone, the
        /// same grant or refusal as reading every rule.
        #[test]
        fn the_index_decides_as_a_scan_does(
            shapes in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 0..12),
            email in 0usize..5,
            verified in any::<bool>(),
            hd in 0usize..3,
            groups in any::<u8>(),
            okta in any::<bool>(),
            repo in 0usize..4,
            git_ref in 0usize..4,
            trust_unmanaged in any::<bool>(),
        ) {
            let users = ["a@x.test", "b@x.test", "c@y.test", "d@gmail.com"];
            let domains = ["x.test", "y.test"];
            let group_names = ["g1", "g2", "g3"];
            let claim_values = [("repository_id", "1"), ("repository_id", "2"), ("repository_id", "*"), ("ref", "main"), ("ref", "m*"), ("ref", "dev")];
            let rules: Vec<Rule> = shapes
                .iter()
                .enumerate()
                .map(|(i, (job, u, d, g, c))| {
                    let issuer = if *job { "github" } else if u & 0x80 != 0 { "okta" } else { ENV_ISSUER };
                    if *job {
                        let mut claims: Vec<(&str, &str)> = Vec::new();
                        for (k, v) in pick(&claim_values.map(|(k, _)| k), *c).into_iter().zip(pick(&claim_values.map(|(_, v)| v), *c)) {
                            if !claims.iter().any(|(name, _)| *name == k) {
                                claims.push((k, v));
                            }
                        }
                        if claims.is_empty() {
                            claims.push(("repository_id", "1"));
                        }
                        rule_of(i, issuer, &[], &[], &[], &claims)
                    } else {
                        rule_of(i, issuer, &pick(&users, *u), &pick(&domains, *d), &pick(&group_names, *g), &[])
                    }
                })
                .collect();
            let policy = Policy::new(rules, trust_unmanaged, BTreeSet::new());
            let address = ["a@x.test", "b@x.test", "c@y.test", "d@gmail.com", "e@z.test"][email];
            let identity = Identity {
                issuer: if okta { "okta".into() } else { ENV_ISSUER.into() },
                groups: pick(&group_names, groups).into_iter().map(str::to_owned).collect(),
                ..who(address, verified, [None, Some("x.test"), Some("y.test")][hd])
            };
            prop_assert_eq!(policy.decide(&identity), policy.decide_by_scan(&identity));

            let mut claims = BTreeMap::new();
            if repo > 0 {
                claims.insert("repository_id".to_owned(), serde_json::Value::String(repo.to_string()));
            }
            if git_ref > 0 {
                claims.insert("ref".to_owned(), serde_json::Value::String(["main", "dev", "mx"][git_ref - 1].to_owned()));
            }
            let workload = Workload {
                issuer: "github".into(),
                owner: Owner::workload("github", "1").unwrap(),
                claims,
            };
            prop_assert_eq!(policy.decide_workload(&workload), policy.decide_workload_by_scan(&workload));
        }
    }

    proptest! {
        /// The allow-list variables and a policy file that spells the same
        /// list give the same decision to everyone.
        #[test]
        fn the_variables_and_their_policy_file_decide_alike(
            local in prop::sample::select(vec!["a", "bob", "carol"]),
            domain in prop::sample::select(vec!["example.com", "gmail.com", "corp.test", "other.org"]),
            hd in prop::option::of(prop::sample::select(vec!["example.com", "corp.test", "evil.test"])),
            verified in any::<bool>(),
            trust_unmanaged in any::<bool>(),
            admin in any::<bool>(),
        ) {
            let allow = list(&["bob@gmail.com", "carol@corp.test"], &["example.com"]);
            let admins: BTreeSet<EmailAddress> = if admin {
                [EmailAddress::parse("a@example.com").unwrap()].into()
            } else {
                BTreeSet::new()
            };
            let env = Policy::new(
                Policy::from_env(allow, Duration::from_secs(3600), 5, 20),
                trust_unmanaged,
                admins.clone(),
            );
            let file = Policy::new(
                rules(r#"
[[rule]]
name = "environment"
issuer = "google"
emails = ["bob@gmail.com", "carol@corp.test"]
domains = ["example.com"]
"#),
                trust_unmanaged,
                admins,
            );
            let identity = who(&format!("{local}@{domain}"), verified, hd);
            prop_assert_eq!(env.decide(&identity), file.decide(&identity));
        }
    }
}
