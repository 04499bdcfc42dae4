//! Which rules could match an identity, found without reading every rule:
//! a policy of a thousand rules is decided in microseconds. The index only
//! narrows; each rule it names is still checked in full, in the policy's
//! order, so the first match is the same as a scan's (a property test
//! holds it to that).

use std::collections::{BTreeSet, HashMap};

use super::{Refusal, Rule, claims::claim_str};
use crate::identity::{EmailAddress, Identity};

/// The rules of each issuer, by what they name.
#[derive(Clone, Debug, Default)]
pub(super) struct RuleIndex {
    people: HashMap<String, PeopleIndex>,
    jobs: HashMap<String, JobIndex>,
    /// Whether each rule lists addresses or domains.
    lists: Vec<bool>,
}

/// One issuer's rules for people.
#[derive(Clone, Debug, Default)]
struct PeopleIndex {
    /// Rules that list an address.
    by_email: HashMap<String, Vec<usize>>,
    /// Rules that list a domain.
    by_domain: HashMap<String, Vec<usize>>,
    /// Rules with no address or domain that name a group.
    by_group: HashMap<String, Vec<usize>>,
    /// Rules that name nobody (never from a file; kept for safety).
    always: Vec<usize>,
    /// How many rules list addresses or domains, and how many name groups
    /// only: to tell the refusals of the rules the index leaves out.
    lists: usize,
    groups_only: usize,
}

/// One issuer's rules for jobs.
#[derive(Clone, Debug, Default)]
struct JobIndex {
    /// Rules by the name and value of their first exact claim.
    by_claim: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Rules whose claims are all globs.
    always: Vec<usize>,
}

/// The rules that could match, in the policy's order, and the most
/// telling refusal of those left out.
pub(super) struct Candidates {
    pub(super) rules: Vec<usize>,
    pub(super) skipped: Option<Refusal>,
}

impl RuleIndex {
    pub(super) fn new(rules: &[Rule]) -> Self {
        let mut index = Self {
            lists: rules.iter().map(|r| !r.allow.is_empty()).collect(),
            ..Self::default()
        };
        for (i, rule) in rules.iter().enumerate() {
            if rule.claims.is_empty() {
                let people = index.people.entry(rule.issuer.clone()).or_default();
                if !rule.allow.is_empty() {
                    people.lists += 1;
                    for email in &rule.allow.users {
                        people
                            .by_email
                            .entry(email.as_str().to_owned())
                            .or_default()
                            .push(i);
                    }
                    for domain in &rule.allow.domains {
                        people
                            .by_domain
                            .entry(domain.as_str().to_owned())
                            .or_default()
                            .push(i);
                    }
                } else if !rule.groups.is_empty() {
                    people.groups_only += 1;
                    for group in &rule.groups {
                        people.by_group.entry(group.clone()).or_default().push(i);
                    }
                } else {
                    people.always.push(i);
                }
            } else {
                let jobs = index.jobs.entry(rule.issuer.clone()).or_default();
                match rule.claims.iter().find(|(_, pattern)| !pattern.is_glob()) {
                    Some((name, pattern)) => jobs
                        .by_claim
                        .entry(name.clone())
                        .or_default()
                        .entry(pattern.to_string())
                        .or_default()
                        .push(i),
                    None => jobs.always.push(i),
                }
            }
        }
        index
    }

    /// The people's rules of `identity`'s issuer that could match it (its
    /// address verified: `email`).
    pub(super) fn people(&self, identity: &Identity, email: &EmailAddress) -> Candidates {
        let Some(people) = self.people.get(&identity.issuer) else {
            return Candidates {
                rules: Vec::new(),
                skipped: None,
            };
        };
        let mut rules: BTreeSet<usize> = people.always.iter().copied().collect();
        let mut add = |found: Option<&Vec<usize>>| rules.extend(found.into_iter().flatten());
        add(people.by_email.get(email.as_str()));
        add(people.by_domain.get(email.domain()));
        for group in &identity.groups {
            add(people.by_group.get(group));
        }
        // A rule left out names neither the address, nor its domain, nor a
        // group of the person: a scan would have said so.
        let listing = rules.iter().filter(|&&i| self.lists[i]).count();
        let grouping = rules.len() - listing - people.always.len();
        let skipped = if listing < people.lists {
            Some(Refusal::NotAllowed)
        } else if grouping < people.groups_only {
            Some(Refusal::NotInGroup)
        } else {
            None
        };
        Candidates {
            rules: rules.into_iter().collect(),
            skipped,
        }
    }

    /// The jobs' rules of `issuer` that could match `claims`.
    pub(super) fn jobs(
        &self,
        issuer: &str,
        claims: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Vec<usize> {
        let Some(jobs) = self.jobs.get(issuer) else {
            return Vec::new();
        };
        let mut rules: BTreeSet<usize> = jobs.always.iter().copied().collect();
        for (name, values) in &jobs.by_claim {
            if let Some(value) = claims.get(name).and_then(claim_str)
                && let Some(found) = values.get(value.as_ref())
            {
                rules.extend(found);
            }
        }
        rules.into_iter().collect()
    }
}
