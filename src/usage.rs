//! What each holder's keys used today, read from OpenAI's Usage API: the
//! per-person accounting of a proxy, without a proxy. Keys are real OpenAI
//! keys and requests go straight to OpenAI; OpenAI reports completions
//! usage per key (`group_by[]=api_key_id`), and every key of this server
//! has one owner, so summing by owner gives each holder's tokens.
//!
//! Per replica: each one polls on its own (nothing is shared), at
//! `USAGE_POLL_INTERVAL`, costing per project one call to the Usage API
//! (more only past 31 days of buckets, never here) and one call per 100
//! keys to learn the key ids of accounts other replicas made. The owner of
//! a key is learned from its account's name while the account exists; a
//! key deleted before this replica ever saw it (issued and revoked between
//! two polls by another replica, or before a restart) is counted under no
//! one. A budget is checked against the last poll: usage between two
//! polls, and OpenAI's own reporting delay, can overrun it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::access::{Budget, Grant};
use crate::clock;
use crate::identity::Owner;

/// Tokens used, and the model requests that used them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Model requests.
    pub requests: u64,
}

impl Tokens {
    /// Input and output together: what a budget counts.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    fn add(&mut self, other: Self) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// A holder over their budget: what they used, of how much, and when the
/// day (UTC) ends and the budget is whole again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// Tokens used today.
    pub used: u64,
    /// Tokens a day.
    pub budget: u64,
    /// When the period resets (Unix seconds).
    pub resets_at: i64,
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Admin API calls it made.
    pub calls: u64,
    /// Keys with usage today.
    pub keys: usize,
    /// Of them, keys whose owner is unknown here.
    pub unattributed: usize,
}

/// Today's ledger.
#[derive(Debug, Default)]
struct Ledger {
    /// The UTC day it is for (Unix days).
    day: i64,
    /// Usage today, by key id, in every project.
    by_key: HashMap<String, Tokens>,
    /// The owner of each key id this replica has seen today.
    owner_of: HashMap<String, Owner>,
    /// The rule and budget of each holder this replica decided for lately.
    grants: HashMap<Owner, (String, Budget)>,
    /// An admin lifted the budget of these holders until the day's end.
    lifted: HashMap<Owner, i64>,
    /// When it was last read from OpenAI (Unix seconds).
    polled_at: Option<i64>,
}

/// The usage of every holder's keys today, as this replica last read it.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    ledger: Arc<RwLock<Ledger>>,
    /// How often it is read (`None`: never).
    interval: Option<Duration>,
}

/// The UTC day of `now`, and when it ends (Unix seconds).
pub fn day_of(now: SystemTime) -> (i64, i64) {
    let day = clock::unix_seconds(now).div_euclid(86_400);
    (day, (day + 1) * 86_400)
}

impl Usage {
    /// Read every `interval` (`USAGE_POLL_INTERVAL`; `None`: never).
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            ledger: Arc::default(),
            interval,
        }
    }

    /// How often it is read.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ledger> {
        self.ledger.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ledger> {
        self.ledger.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the rule and budget `grant` gives its holder (asked on
    /// every request), for the metrics and for revoking at a poll.
    pub fn note_grant(&self, grant: &Grant) {
        let known = self
            .read()
            .grants
            .get(&grant.owner)
            .is_some_and(|(rule, budget)| *rule == grant.rule && *budget == grant.budget);
        if !known {
            self.write()
                .grants
                .insert(grant.owner.clone(), (grant.rule.clone(), grant.budget));
        }
    }

    /// Remembers whose key `key_id` is.
    pub fn note_key(&self, key_id: &str, owner: &Owner) {
        self.write()
            .owner_of
            .insert(key_id.to_owned(), owner.clone());
    }

    /// What `owner`'s keys used today.
    pub fn of_owner(&self, owner: &Owner) -> Tokens {
        let ledger = self.read();
        let mut total = Tokens::default();
        for (key, tokens) in &ledger.by_key {
            if ledger.owner_of.get(key) == Some(owner) {
                total.add(*tokens);
            }
        }
        total
    }

    /// What the key `key_id` used today.
    pub fn of_key(&self, key_id: &str) -> Tokens {
        self.read().by_key.get(key_id).copied().unwrap_or_default()
    }

    /// Every holder whose keys used anything today, with what they used,
    /// most first.
    pub fn holders(&self) -> Vec<(Owner, Tokens)> {
        let ledger = self.read();
        let mut holders: HashMap<&Owner, Tokens> = HashMap::new();
        for (key, tokens) in &ledger.by_key {
            if let Some(owner) = ledger.owner_of.get(key) {
                holders.entry(owner).or_default().add(*tokens);
            }
        }
        let mut holders: Vec<(Owner, Tokens)> = holders
            .into_iter()
            .map(|(owner, tokens)| (owner.clone(), tokens))
            .collect();
        holders.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
        holders
    }

    /// The budget this replica last saw `owner`'s grant give.
    pub fn budget_of(&self, owner: &Owner) -> Option<Budget> {
        self.read().grants.get(owner).map(|(_, budget)| *budget)
    }

    /// Until when an admin lifted `owner`'s budget, if it still is.
    pub fn lifted_until(&self, owner: &Owner, now: SystemTime) -> Option<i64> {
        self.read()
            .lifted
            .get(owner)
            .copied()
            .filter(|until| *until > clock::unix_seconds(now))
    }

    /// When usage was last read (Unix seconds).
    pub fn polled_at(&self) -> Option<i64> {
        self.read().polled_at
    }

    /// Whether `owner` has spent `budget` today (and no admin lifted it).
    pub fn over_budget(
        &self,
        owner: &Owner,
        budget: Budget,
        now: SystemTime,
    ) -> Option<OverBudget> {
        if !budget.is_set() {
            return None;
        }
        let (_, resets_at) = day_of(now);
        if self
            .read()
            .lifted
            .get(owner)
            .is_some_and(|until| *until > clock::unix_seconds(now))
        {
            return None;
        }
        let used = self.of_owner(owner).total();
        (used >= budget.tokens_per_day).then_some(OverBudget {
            used,
            budget: budget.tokens_per_day,
            resets_at,
        })
    }

    /// Lifts `owner`'s budget until the end of today (UTC); when that is.
    pub fn lift(&self, owner: &Owner, now: SystemTime) -> i64 {
        let (_, ends) = day_of(now);
        self.write().lifted.insert(owner.clone(), ends);
        ends
    }

    /// Holders this replica decided for whose budget says to revoke, over
    /// it now.
    pub fn to_revoke(&self, now: SystemTime) -> Vec<(Owner, OverBudget)> {
        let holders: Vec<(Owner, Budget)> = self
            .read()
            .grants
            .iter()
            .filter(|(_, (_, budget))| budget.revoke && budget.is_set())
            .map(|(owner, (_, budget))| (owner.clone(), *budget))
            .collect();
        holders
            .into_iter()
            .filter_map(|(owner, budget)| {
                self.over_budget(&owner, budget, now)
                    .map(|over| (owner, over))
            })
            .collect()
    }

    /// Tokens today by rule (`unknown` for holders this replica has not
    /// decided for): what `/metrics` shows, never by person.
    pub fn by_rule(&self) -> Vec<(String, Tokens)> {
        let ledger = self.read();
        let mut rules: HashMap<String, Tokens> = HashMap::new();
        for (key, tokens) in &ledger.by_key {
            let rule = ledger
                .owner_of
                .get(key)
                .and_then(|owner| ledger.grants.get(owner))
                .map_or("unknown", |(rule, _)| rule.as_str());
            rules.entry(rule.to_owned()).or_default().add(*tokens);
        }
        let mut rules: Vec<_> = rules.into_iter().collect();
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        rules
    }

    /// Replaces today's usage with what a poll read: `by_key` (every
    /// project's), and the owners of the accounts it saw. A new day starts
    /// afresh.
    pub fn record(
        &self,
        now: SystemTime,
        by_key: HashMap<String, Tokens>,
        owners: impl IntoIterator<Item = (String, Owner)>,
    ) -> (usize, usize) {
        let (day, _) = day_of(now);
        let mut ledger = self.write();
        if ledger.day != day {
            ledger.day = day;
            ledger.owner_of.clear();
            ledger.lifted.retain(|_, until| *until > day * 86_400);
        }
        ledger.owner_of.extend(owners);
        let unattributed = by_key
            .keys()
            .filter(|key| !ledger.owner_of.contains_key(*key))
            .count();
        let keys = by_key.len();
        ledger.by_key = by_key;
        ledger.polled_at = Some(clock::unix_seconds(now));
        (keys, unattributed)
    }
}
