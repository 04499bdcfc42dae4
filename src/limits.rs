//! Rate limits: token buckets keyed by person or client address, so that
//! reloading a page or scripting `/revoke` cannot mint unlimited keys or
//! burn the organisation's Admin API quota. In memory, per replica.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::IpAddr;

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Idle buckets are dropped every this many checks, so a user who went
/// quiet costs nothing for long: pruning is amortised over the checks.
const PRUNE_EVERY: u32 = 256;
/// Idle buckets are also dropped as soon as there are more buckets than
/// this (then this limit doubles until a prune finds fewer again, so that
/// many busy keys do not make every check a scan).
const PRUNE_ABOVE: usize = 1_024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    /// Whole seconds since the Unix epoch: eight bytes a bucket in all.
    /// Refills count whole seconds, and `updated` moves to the same whole
    /// second, so no fraction is ever lost or counted twice.
    updated: u32,
}

/// `now` in whole seconds since the Unix epoch (saturating in 2106).
fn whole_seconds(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Allows `limit` events per `period` per key, in bursts of up to `limit`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    period: Duration,
    buckets: Mutex<Buckets>,
}

/// The buckets of one limiter, and when to prune them next.
#[derive(Debug)]
struct Buckets {
    /// Keyed by a keyed hash of the user or address: a user who signs in
    /// once holds a bucket for the whole period, so thousands of them must
    /// cost little. Two keys whose hashes collide would share a bucket; the
    /// hash's key is random per process, so nobody can aim for that.
    by_key: HashMap<u64, Bucket>,
    hasher: RandomState,
    /// Checks since the last prune.
    checks: u32,
    /// Prune once `by_key` holds more buckets than this.
    prune_above: usize,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            hasher: RandomState::new(),
            checks: 0,
            prune_above: PRUNE_ABOVE,
        }
    }
}

impl RateLimiter {
    /// A limiter; `limit == 0` allows everything.
    pub fn new(limit: u32, period: Duration) -> Self {
        Self {
            limit,
            period,
            buckets: Mutex::default(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: u32) {
        if now < bucket.updated {
            // The clock went back (a correction): restart the count from
            // now rather than wait for the clock to catch up with a bucket
            // that then refills nothing.
            bucket.updated = now;
            return;
        }
        let elapsed = f64::from(now - bucket.updated);
        let rate = f64::from(self.limit) / self.period.as_secs_f64();
        let tokens = (f64::from(bucket.tokens) + elapsed * rate).min(f64::from(self.limit));
        // At most `limit` (≤ 1,000,000): an f32 holds it to a tenth of a
        // token at worst.
        bucket.tokens = tokens as f32;
        bucket.updated = now;
    }

    /// A full bucket's tokens.
    fn full(&self) -> f32 {
        // At most 1,000,000 (see `config`): exact in an f32.
        self.limit as f32
    }

    /// Drops the buckets that have refilled by `now`: a full bucket answers
    /// exactly as a missing one does.
    fn prune(&self, buckets: &mut Buckets, now: u32) {
        let full = self.full();
        buckets.by_key.retain(|_, b| {
            let mut b = *b;
            self.refill(&mut b, now);
            b.tokens < full
        });
        buckets.checks = 0;
        let len = buckets.by_key.len();
        buckets.prune_above = PRUNE_ABOVE.max(len.saturating_mul(2));
        // Give back the table of a burst that is over.
        if buckets.by_key.capacity() > PRUNE_ABOVE && len < buckets.by_key.capacity() / 4 {
            buckets.by_key.shrink_to(len.saturating_mul(2));
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str, now: SystemTime) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = whole_seconds(now);
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = &mut *guard;
        buckets.checks += 1;
        if buckets.checks >= PRUNE_EVERY || buckets.by_key.len() > buckets.prune_above {
            self.prune(buckets, now);
        }
        let key = buckets.hasher.hash_one(key);
        let bucket = buckets.by_key.entry(key).or_insert(Bucket {
            tokens: self.full(),
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let rate = f64::from(self.limit) / self.period.as_secs_f64();
            let wait = (1.0 - f64::from(bucket.tokens)) / rate;
            Err(Duration::from_secs_f64(wait.max(1.0)).min(self.period))
        }
    }
}

impl RateLimiter {
    /// Gives back the token of an attempt that turned out not to count.
    pub fn refund(&self, key: &str, now: SystemTime) {
        if self.limit == 0 {
            return;
        }
        let now = whole_seconds(now);
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = &mut *guard;
        let key = buckets.hasher.hash_one(key);
        if let Some(bucket) = buckets.by_key.get_mut(&key) {
            self.refill(bucket, now);
            bucket.tokens = (bucket.tokens + 1.0).min(self.full());
        }
    }
}

/// The client's address: the TCP peer, or behind a trusted proxy the
/// address it forwarded (see [`crate::forwarded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// A key for per-address buckets: the address, or for IPv6 its /64,
    /// since whoever has one address of a /64 usually has all 2^64 of them.
    pub fn key(self) -> String {
        match self.0.map(|ip| ip.to_canonical()) {
            None => "unknown".to_owned(),
            Some(IpAddr::V4(v4)) => v4.to_string(),
            Some(IpAddr::V6(v6)) => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        }
    }
}

/// The rate limits of one replica.
#[derive(Debug)]
pub struct Limits {
    /// Keys issued per holder, one limiter per rule (its
    /// `max_keys_per_hour`, or `RATE_LIMIT_PER_USER`, an hour).
    issue_per_rule: std::collections::HashMap<String, RateLimiter>,
    /// For a rule this replica does not know (none, in practice).
    issue_default: RateLimiter,
    /// Failed sign-ins per client address (`RATE_LIMIT_PER_IP` an hour).
    pub sign_in_per_ip: RateLimiter,
    /// `/revoke` calls per client address (`RATE_LIMIT_REVOKE` a minute).
    pub revoke_per_ip: RateLimiter,
}

impl Limits {
    /// The issuance limiter of the rule named `rule`.
    pub fn issue_under(&self, rule: &str) -> &RateLimiter {
        self.issue_per_rule.get(rule).unwrap_or(&self.issue_default)
    }

    /// The limits of these settings.
    pub fn new(config: &crate::config::Config) -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            issue_per_rule: config
                .rules()
                .into_iter()
                .map(|rule| (rule.name.clone(), RateLimiter::new(rule.per_hour, hour)))
                .collect(),
            issue_default: RateLimiter::new(config.rate_limit_per_user, hour),
            sign_in_per_ip: RateLimiter::new(config.rate_limit_per_ip, Duration::from_secs(3600)),
            revoke_per_ip: RateLimiter::new(config.rate_limit_revoke, Duration::from_secs(60)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(limiter.check("b", t0).is_ok(), "keys are independent");
        assert!(limiter.check("a", t0 + Duration::from_secs(20)).is_ok());
        assert!(limiter.check("a", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn idle_buckets_are_dropped_and_busy_ones_kept() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let len = || limiter.buckets.lock().unwrap().by_key.len();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for user in 0..100 {
            assert!(limiter.check(&format!("user{user}"), t0).is_ok());
        }
        assert!(limiter.check("busy", t0).is_ok());
        assert_eq!(len(), 101);
        // 59 s on, the users' buckets are full again (one token at 20 s),
        // the busy one is not.
        let t1 = t0 + Duration::from_secs(59);
        for _ in 0..3 {
            assert!(limiter.check("busy", t1).is_ok());
        }
        assert!(limiter.check("busy", t1).is_err());
        for _ in 0..PRUNE_EVERY {
            let _ = limiter.check("other", t1);
        }
        assert_eq!(len(), 2, "only busy and other are left");
        // A dropped bucket answers as it would have: a full burst.
        for _ in 0..3 {
            assert!(limiter.check("user0", t1).is_ok());
        }
        assert!(limiter.check("user0", t1).is_err());
        assert!(limiter.check("busy", t1).is_err(), "busy kept its state");
    }

    #[test]
    fn many_busy_keys_do_not_make_every_check_a_scan() {
        let limiter = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for user in 0..PRUNE_EVERY {
            assert!(limiter.check(&format!("a{user}"), t0).is_ok());
        }
        let t1 = t0 + Duration::from_secs(2);
        for user in 0..3_000 {
            assert!(limiter.check(&format!("b{user}"), t1).is_ok());
            assert!(limiter.check(&format!("b{user}"), t1).is_err());
        }
        let buckets = limiter.buckets.lock().unwrap();
        assert_eq!(
            buckets.by_key.len(),
            3_000,
            "the a-buckets refilled and went, the busy b-buckets are all kept"
        );
        assert!(buckets.by_key.len() <= buckets.prune_above);
    }

    #[test]
    fn a_clock_set_back_neither_refills_nor_locks_out() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ahead = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.check("a", ahead).is_ok());
        }
        // Corrected back by an hour: no free tokens for the hour…
        assert!(limiter.check("a", t0).is_err());
        // …and the usual refill from the corrected time, not from `ahead`.
        assert!(limiter.check("a", t0 + Duration::from_secs(20)).is_ok());
        assert!(limiter.check("a", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn a_refunded_attempt_costs_nothing() {
        let limiter = RateLimiter::new(2, Duration::from_secs(3600));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..10 {
            assert!(limiter.check("a", t0).is_ok());
            limiter.refund("a", t0);
        }
        assert!(limiter.check("a", t0).is_ok());
        assert!(limiter.check("a", t0).is_ok());
        assert!(limiter.check("a", t0).is_err(), "two failures used it up");
        limiter.refund("b", t0);
        assert!(limiter.check("b", t0).is_ok(), "a refund never overfills");
        assert!(limiter.check("b", t0).is_ok());
        assert!(limiter.check("b", t0).is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let key = |ip: &str| ClientAddr(Some(ip.parse().unwrap())).key();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("192.0.2.1"), "192.0.2.1");
        assert_eq!(ClientAddr(None).key(), "unknown");
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(limiter.check("a", UNIX_EPOCH).is_ok());
        }
    }
}
