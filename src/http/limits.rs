//! Per-client rate limits: token buckets keyed by user or address, so that
//! reloading the callback or scripting `/revoke` cannot mint unlimited keys
//! or burn the organisation's Admin API quota. In memory, per replica.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Buckets kept before idle (full) ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: SystemTime,
}

/// Allows `limit` events per `period` per key, in bursts of up to `limit`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    period: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
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

    fn refill(&self, bucket: &mut Bucket, now: SystemTime) {
        let elapsed = now.duration_since(bucket.updated).unwrap_or_default();
        let rate = f64::from(self.limit) / self.period.as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(f64::from(self.limit));
        bucket.updated = now;
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str, now: SystemTime) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > PRUNE_ABOVE {
            let full = f64::from(self.limit);
            buckets.retain(|_, b| {
                let mut b = *b;
                self.refill(&mut b, now);
                b.tokens < full
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: f64::from(self.limit),
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let rate = f64::from(self.limit) / self.period.as_secs_f64();
            let wait = (1.0 - bucket.tokens) / rate;
            Err(Duration::from_secs_f64(wait.max(1.0)).min(self.period))
        }
    }
}

/// The client's address (the TCP peer; behind a proxy, the proxy's).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// A key for per-address buckets.
    pub fn key(self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(super::serve::peer(&parts.extensions).map(|a| a.ip())))
    }
}

/// The limits of one server.
#[derive(Debug)]
pub struct Limits {
    /// Keys issued per user.
    pub issue_per_user: RateLimiter,
    /// Sign-ins completed per client address.
    pub sign_in_per_ip: RateLimiter,
    /// `/revoke` calls per client address.
    pub revoke_per_ip: RateLimiter,
    /// Live keys one user may hold (0: no cap).
    pub max_keys_per_user: usize,
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
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(limiter.check("a", UNIX_EPOCH).is_ok());
        }
    }
}
