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

/// `usd` in whole cents, if it is an amount (finite, 0 or more, below a
/// trillion).
pub fn cents(usd: f64) -> Option<u64> {
    if !(usd.is_finite() && (0.0..1e12).contains(&usd)) {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a finite amount from 0 to 1e14 cents"
    )]
    Some((usd * 100.0).round() as u64)
}

/// US dollars per million tokens, input and output, by model
/// (`MODEL_PRICES`), to estimate what keys cost; `*` prices every model
/// not named.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prices {
    by_model: Vec<(String, f64, f64)>,
}

impl Prices {
    /// Parses `gpt-4o=2.50/10.00,gpt-4o-mini=0.15/0.60,*=2.50/10.00`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_model = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parsed = entry.split_once('=').and_then(|(model, price)| {
                let (input, output) = price.split_once('/')?;
                let input: f64 = input.trim().parse().ok()?;
                let output: f64 = output.trim().parse().ok()?;
                let ok = |p: f64| p.is_finite() && p >= 0.0;
                (ok(input) && ok(output) && !model.trim().is_empty())
                    .then(|| (model.trim().to_owned(), input, output))
            });
            match parsed {
                Some(price) => by_model.push(price),
                None => {
                    return Err(format!(
                        "entry {entry:?} is not model=input/output in dollars per million tokens, e.g. gpt-4o=2.50/10.00"
                    ));
                }
            }
        }
        Ok(Self { by_model })
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// What `input` and `output` tokens of `model` cost, in dollars; `None`
    /// for a model with no price (and no `*`).
    pub fn cost(&self, model: &str, input: u64, output: u64) -> Option<f64> {
        let (_, input_price, output_price) = self
            .by_model
            .iter()
            .find(|(m, ..)| m == model)
            .or_else(|| self.by_model.iter().find(|(m, ..)| m == "*"))?;
        #[expect(clippy::cast_precision_loss, reason = "token counts far below 2^52")]
        let cost = (input as f64 * input_price + output as f64 * output_price) / 1_000_000.0;
        Some(cost)
    }
}

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
/// period (the UTC day, or month) ends and the budget is whole again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// What was used: tokens today, or cents this month.
    pub used: u64,
    /// The budget, in the same unit.
    pub budget: u64,
    /// When the period resets (Unix seconds).
    pub resets_at: i64,
    /// Which.
    pub unit: Unit,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1234` cents as `$12.34`.
pub fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Tokens today (UTC).
    TokensToday,
    /// Estimated cents this calendar month (UTC).
    CentsThisMonth,
}

impl OverBudget {
    /// "1,234 tokens today of 1,000 a day", "$12.34 this month of $10.00".
    pub fn describe(&self) -> String {
        match self.unit {
            Unit::TokensToday => format!(
                "{} tokens today (UTC), and the budget is {} a day",
                thousands(self.used),
                thousands(self.budget)
            ),
            Unit::CentsThisMonth => format!(
                "an estimated {} this month (UTC), and the budget is {} a month",
                dollars(self.used),
                dollars(self.budget)
            ),
        }
    }
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

/// Today's and this month's ledger.
#[derive(Debug, Default)]
struct Ledger {
    /// The UTC day it is for (Unix days).
    day: i64,
    /// The UTC month it is for (its first second).
    month: i64,
    /// Usage today, by key id, in every project.
    by_key: HashMap<String, Tokens>,
    /// Dollars this month by key id, estimated from `MODEL_PRICES`.
    estimated_by_key: HashMap<String, f64>,
    /// Dollars this month by key id as OpenAI's Costs API says (`None`:
    /// not read, or not available).
    costs_by_key: Option<HashMap<String, f64>>,
    /// The owner of each key id this replica has seen this month.
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
    /// What models cost.
    prices: Arc<Prices>,
    /// Whether the Costs API answered per key (cleared on its 400: not
    /// asked again by this process).
    costs_by_key: Arc<std::sync::atomic::AtomicBool>,
}

/// The UTC day of `now`, and when it ends (Unix seconds).
pub fn day_of(now: SystemTime) -> (i64, i64) {
    let day = clock::unix_seconds(now).div_euclid(86_400);
    (day, (day + 1) * 86_400)
}

/// The UTC calendar month of `now`: its first second and the next
/// month's (Unix seconds).
pub fn month_of(now: SystemTime) -> (i64, i64) {
    let first_of = |year: i32, month: time::Month| {
        time::Date::from_calendar_date(year, month, 1)
            .map_or(0, |date| date.midnight().assume_utc().unix_timestamp())
    };
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(clock::unix_seconds(now)) else {
        return (0, 0);
    };
    let next_year = if at.month() == time::Month::December {
        at.year() + 1
    } else {
        at.year()
    };
    (
        first_of(at.year(), at.month()),
        first_of(next_year, at.month().next()),
    )
}

/// Dollars this month: estimated from prices, and as the Costs API says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spend {
    /// Estimated from `MODEL_PRICES`.
    pub estimated: f64,
    /// As OpenAI's Costs API says (daily, late), where it answers per key.
    pub billed: Option<f64>,
}

/// What a poll read: today's tokens and this month's dollars by key.
#[derive(Debug, Default)]
pub struct Reading {
    /// Tokens today by key id.
    pub today: HashMap<String, Tokens>,
    /// Dollars this month by key id, estimated.
    pub estimated: HashMap<String, f64>,
    /// Dollars this month by key id, from the Costs API (`None`: not read).
    pub billed: Option<HashMap<String, f64>>,
}

impl Usage {
    /// Read every `interval` (`USAGE_POLL_INTERVAL`; `None`: never).
    pub fn new(interval: Option<Duration>, prices: Prices) -> Self {
        Self {
            ledger: Arc::default(),
            interval,
            prices: Arc::new(prices),
            costs_by_key: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// What models cost (`MODEL_PRICES`).
    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    /// Whether to ask the Costs API per key: prices are set (dollars
    /// matter), and it has not refused grouping by key.
    pub fn asks_costs(&self) -> bool {
        !self.prices.is_empty() && self.costs_by_key.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Costs API refused to group by key: stop asking.
    pub fn costs_not_by_key(&self) {
        self.costs_by_key
            .store(false, std::sync::atomic::Ordering::Relaxed);
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

    /// What `owner`'s keys used today (nothing yet when the last reading
    /// was of another day: a new day starts whole).
    pub fn of_owner(&self, owner: &Owner, now: SystemTime) -> Tokens {
        let ledger = self.read();
        let mut total = Tokens::default();
        if ledger.day != day_of(now).0 {
            return total;
        }
        for (key, tokens) in &ledger.by_key {
            if ledger.owner_of.get(key) == Some(owner) {
                total.add(*tokens);
            }
        }
        total
    }

    /// What `owner`'s keys cost this month (nothing yet when the last
    /// reading was of another month).
    pub fn spend_of_owner(&self, owner: &Owner, now: SystemTime) -> Spend {
        let ledger = self.read();
        if ledger.month != month_of(now).0 {
            return Spend::default();
        }
        let mine = |key: &String| ledger.owner_of.get(key) == Some(owner);
        Spend {
            // Folded from +0.0: an empty `sum` of floats is -0.0, which
            // would print as "-0.00".
            estimated: ledger
                .estimated_by_key
                .iter()
                .filter(|(key, _)| mine(key))
                .fold(0.0, |sum, (_, usd)| sum + usd),
            billed: ledger.costs_by_key.as_ref().map(|costs| {
                costs
                    .iter()
                    .filter(|(key, _)| mine(key))
                    .fold(0.0, |sum, (_, usd)| sum + usd)
            }),
        }
    }

    /// What the key `key_id` used today.
    pub fn of_key(&self, key_id: &str, now: SystemTime) -> Tokens {
        let ledger = self.read();
        if ledger.day != day_of(now).0 {
            return Tokens::default();
        }
        ledger.by_key.get(key_id).copied().unwrap_or_default()
    }

    /// Every holder whose keys used anything today, with what they used,
    /// most first.
    pub fn holders(&self, now: SystemTime) -> Vec<(Owner, Tokens)> {
        let ledger = self.read();
        if ledger.day != day_of(now).0 {
            return Vec::new();
        }
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
        if self
            .read()
            .lifted
            .get(owner)
            .is_some_and(|until| *until > clock::unix_seconds(now))
        {
            return None;
        }
        if budget.tokens_per_day > 0 {
            let used = self.of_owner(owner, now).total();
            if used >= budget.tokens_per_day {
                return Some(OverBudget {
                    used,
                    budget: budget.tokens_per_day,
                    resets_at: day_of(now).1,
                    unit: Unit::TokensToday,
                });
            }
        }
        if budget.cents_per_month > 0 {
            let spent = cents(self.spend_of_owner(owner, now).estimated).unwrap_or(u64::MAX);
            if spent >= budget.cents_per_month {
                return Some(OverBudget {
                    used: spent,
                    budget: budget.cents_per_month,
                    resets_at: month_of(now).1,
                    unit: Unit::CentsThisMonth,
                });
            }
        }
        None
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
        reading: Reading,
        owners: impl IntoIterator<Item = (String, Owner)>,
    ) -> (usize, usize) {
        let (day, _) = day_of(now);
        let (month, _) = month_of(now);
        let mut ledger = self.write();
        if ledger.month != month {
            // Keys of last month used nothing this month: their owners
            // can go (none to forget at the first reading).
            if ledger.month != 0 {
                ledger.owner_of.clear();
            }
            ledger.month = month;
        }
        if ledger.day != day {
            ledger.day = day;
            ledger.lifted.retain(|_, until| *until > day * 86_400);
        }
        ledger.owner_of.extend(owners);
        let unattributed = reading
            .estimated
            .keys()
            .chain(reading.today.keys())
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .filter(|key| !ledger.owner_of.contains_key(*key))
            .count();
        let keys = reading.today.len();
        ledger.by_key = reading.today;
        ledger.estimated_by_key = reading.estimated;
        if reading.billed.is_some() {
            ledger.costs_by_key = reading.billed;
        }
        ledger.polled_at = Some(clock::unix_seconds(now));
        (keys, unattributed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        let at = |secs: i64| clock::from_unix(secs);
        // 2026-11-30T21:00:00Z: November, December's first next.
        assert_eq!(month_of(at(1_796_072_400)), (1_793_491_200, 1_796_083_200));
        // 2024-02-29 (a leap day): February 2024, to March's first.
        assert_eq!(month_of(at(1_709_164_800)), (1_706_745_600, 1_709_251_200));
        // December rolls over the year.
        assert_eq!(month_of(at(1_798_675_200 - 1)).1, 1_798_761_600);
    }

    #[test]
    fn prices_are_read_and_a_star_prices_the_rest() {
        let prices = Prices::parse("gpt-4o=2.50/10.00, *=0.10/0.40").unwrap();
        let cost = prices.cost("gpt-4o", 1_000_000, 100_000).unwrap();
        assert!((cost - 3.5).abs() < 1e-9);
        assert!((prices.cost("other", 0, 1_000_000).unwrap() - 0.4).abs() < 1e-9);
        assert!(
            Prices::parse("gpt-4o=2.50")
                .unwrap_err()
                .contains("gpt-4o=2.50/10.00")
        );
        assert!(Prices::parse("gpt-4o=-1/2").is_err());
        assert_eq!(Prices::parse("x=1/1").unwrap().cost("y", 1, 1), None);
        assert_eq!(cents(12.345), Some(1235));
        assert_eq!(cents(f64::NAN), None);
        assert_eq!(cents(-1.0), None);
    }
}
