//! Run-time knobs of the fake: API version, expiry policy, scope-error
//! status, added latency, the request-rate limit and the fault plan.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::ApiVersion;

/// One rule of the fault plan: the next `count` requests that match answer
/// with `kind` instead of (or after) the real answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// HTTP method to match (any when `None`), case-insensitive.
    #[serde(default)]
    pub method: Option<String>,
    /// Matches when the request path or its route pattern (e.g.
    /// `/v1/organization/projects/{project_id}/service_accounts`) contains
    /// this; empty matches everything.
    #[serde(default)]
    pub path_contains: String,
    /// How many matching requests this rule answers.
    #[serde(default = "one")]
    pub count: u32,
    /// What those requests get.
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// A rule that answers the next request, whatever it is, with `kind`.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            method: None,
            path_contains: String::new(),
            count: 1,
            kind,
        }
    }

    /// Only for this HTTP method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// Only where the path or route pattern contains `fragment`.
    pub fn path(mut self, fragment: &str) -> Self {
        self.path_contains = fragment.to_owned();
        self
    }

    /// For the next `count` matching requests.
    pub fn times(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    fn matches(&self, method: &Method, path: &str, route: Option<&str>) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        method_ok
            && (path.contains(&self.path_contains)
                || route.is_some_and(|r| r.contains(&self.path_contains)))
    }
}

/// What a faulty request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// This status with the real error body for it (500 `server_error`,
    /// 503, 429 `rate_limit_error`, 409, …), optionally with
    /// `Retry-After: retry_after`. Nothing happens inside the fake.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// The request is handled normally, but its answer comes `ms`
    /// milliseconds late (on top of any added latency): one slow call, as
    /// opposed to the latency knob that slows every call.
    Delay {
        /// Extra milliseconds.
        ms: u64,
    },
    /// No answer ever; the client has to give up. Nothing happens.
    Hang,
    /// 200 with a truncated JSON body. Nothing happens.
    MalformedJson,
    /// The request really takes effect, but the answer is this error status.
    CommitThenFail {
        /// HTTP status.
        status: u16,
    },
    /// The request really takes effect at once, and its answer comes `ms`
    /// milliseconds later: a listing that reflects the moment it was read,
    /// not the moment it arrives.
    DelayAnswer {
        /// Extra milliseconds after the work is done.
        ms: u64,
    },
    /// The request really takes effect, but no answer ever comes.
    CommitThenHang,
    /// 200 with a body of `bytes` bytes of whitespace, streamed without a
    /// `Content-Length`: far larger than any real answer. Nothing happens.
    Oversized {
        /// Size of the body.
        bytes: u64,
    },
}

impl FaultKind {
    /// `Status` without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
        }
    }
}

/// A token bucket on the virtual clock: advancing the clock refills it, so
/// tests need not sleep.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Bucket {
    pub(super) rate: f64,
    pub(super) burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    /// `rate` requests per second with room for `burst` at once (default:
    /// the rate, at least 1). `None` unless `rate` is positive and finite.
    pub(super) fn new(rate: f64, burst: Option<f64>, now_ms: i64) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let burst = burst.filter(|b| b.is_finite()).unwrap_or(rate).max(1.0);
        Some(Self {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        })
    }

    /// Takes a token, or says after how many whole seconds (≥ 1) one will
    /// be there.
    pub(super) fn take(&mut self, now_ms: i64) -> Result<(), u64> {
        if now_ms > self.last_ms {
            let elapsed = (now_ms - self.last_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        // A clock set back restarts the refill from the new time.
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Positive and finite, so the cast only saturates absurd waits.
            let secs = ((1.0 - self.tokens) / self.rate).ceil() as u64;
            Err(secs.max(1))
        }
    }
}

/// The knobs, behind one lock.
#[derive(Debug)]
pub(super) struct Knobs {
    pub(super) version: ApiVersion,
    pub(super) scope_error_status: StatusCode,
    pub(super) max_key_lifetime_secs: Option<u64>,
    pub(super) latency: Duration,
    pub(super) jitter: Duration,
    pub(super) rate_limit: Option<Bucket>,
    pub(super) faults: Vec<Fault>,
}

impl Knobs {
    /// Consumes one count of the first rule that matches.
    pub(super) fn take_fault(
        &mut self,
        method: &Method,
        path: &str,
        route: Option<&str>,
    ) -> Option<FaultKind> {
        let index = self
            .faults
            .iter()
            .position(|f| f.count > 0 && f.matches(method, path, route))?;
        let fault = &mut self.faults[index];
        fault.count -= 1;
        let kind = fault.kind;
        if fault.count == 0 {
            self.faults.remove(index);
        }
        Some(kind)
    }

    /// The fixed latency plus a uniform draw from the jitter.
    pub(super) fn latency_sample(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let jitter_us = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        self.latency + Duration::from_micros(rand::rng().random_range(0..=jitter_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_says_when_to_retry() {
        let mut bucket = Bucket::new(2.0, Some(3.0), 0).unwrap();
        assert!(bucket.take(0).is_ok());
        assert!(bucket.take(0).is_ok());
        assert!(bucket.take(0).is_ok());
        assert_eq!(bucket.take(0), Err(1));
        assert!(bucket.take(500).is_ok());
        assert!(Bucket::new(0.0, None, 0).is_none());
        let mut slow = Bucket::new(0.1, None, 0).unwrap();
        assert!(slow.take(0).is_ok());
        assert_eq!(slow.take(0), Err(10));
    }

    #[test]
    fn faults_match_by_method_and_path_and_are_used_up() {
        let mut knobs = Knobs {
            version: ApiVersion::Current,
            scope_error_status: StatusCode::UNAUTHORIZED,
            max_key_lifetime_secs: None,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_limit: None,
            faults: vec![
                Fault::new(FaultKind::Hang)
                    .method("post")
                    .path("{project_id}/service_accounts")
                    .times(2),
            ],
        };
        let route = Some("/v1/organization/projects/{project_id}/service_accounts");
        assert_eq!(knobs.take_fault(&Method::GET, "/v1/x", route), None);
        assert_eq!(
            knobs.take_fault(&Method::POST, "/v1/x", route),
            Some(FaultKind::Hang)
        );
        assert!(knobs.take_fault(&Method::POST, "/v1/x", route).is_some());
        assert_eq!(knobs.take_fault(&Method::POST, "/v1/x", route), None);
        assert!(knobs.faults.is_empty());
    }

    #[test]
    fn faults_deserialize_from_the_control_api_shape() {
        let fault: Fault = serde_json::from_str(
            r#"{"method":"POST","path_contains":"/service_accounts","count":2,"kind":{"type":"status","status":503}}"#,
        )
        .unwrap();
        assert_eq!(fault.kind, FaultKind::status(503));
        assert_eq!(fault.count, 2);
        let hang: Fault =
            serde_json::from_str(r#"{"path_contains":"/x","kind":{"type":"commit_then_hang"}}"#)
                .unwrap();
        assert_eq!(hang.kind, FaultKind::CommitThenHang);
        assert_eq!(hang.count, 1);
        assert!(serde_json::from_str::<Fault>(r#"{"kind":{"type":"nope"}}"#).is_err());
    }
}
