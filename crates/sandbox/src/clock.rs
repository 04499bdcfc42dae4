//! The sandbox's virtual clock: real time plus an offset that tests move
//! forward instead of sleeping, and the control routes that move it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

/// Wall-clock time shifted by an adjustable offset, shared by both fakes so
/// that a token's `exp` and a key's `expires_at` move together.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// A clock that reads real time (offset zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// The current virtual time.
    pub fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::SeqCst);
        let real = SystemTime::now();
        if offset >= 0 {
            real + Duration::from_millis(offset.unsigned_abs())
        } else {
            real - Duration::from_millis(offset.unsigned_abs())
        }
    }

    /// The current virtual time in Unix seconds, as the APIs report time.
    pub fn unix(&self) -> i64 {
        self.unix_ms().div_euclid(1000)
    }

    /// The current virtual time in Unix milliseconds.
    pub fn unix_ms(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Moves virtual time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the offset from real time, in seconds (may be negative).
    pub fn set_offset_secs(&self, secs: i64) {
        self.offset_ms
            .store(secs.saturating_mul(1000), Ordering::SeqCst);
    }

    /// The offset from real time, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

/// `GET /_sandbox/clock` (`{"now", "offset_ms"}`) and `POST /_sandbox/clock`
/// with `{"advance_seconds": N}` (N ≥ 0) or `{"offset_seconds": N}`, served
/// on every fake's port since they all share one clock. Errors use the
/// OpenAI error shape, like the rest of the control API.
pub fn router<S>(clock: Clock) -> Router<S> {
    Router::new()
        .route("/_sandbox/clock", get(read).post(change))
        .with_state(clock)
}

fn clock_json(clock: &Clock) -> Value {
    json!({ "now": clock.unix(), "offset_ms": clock.offset_ms() })
}

async fn read(State(clock): State<Clock>) -> Json<Value> {
    Json(clock_json(&clock))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    advance_seconds: Option<i64>,
    offset_seconds: Option<i64>,
}

fn refuse(message: &str, param: Option<&str>) -> Response {
    let body = json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": null,
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn change(State(clock): State<Clock>, body: Bytes) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(error) => return refuse(&format!("Invalid control request: {error}"), None),
    };
    match (change.advance_seconds, change.offset_seconds) {
        (Some(secs), None) => match u64::try_from(secs) {
            Ok(secs) => clock.advance(Duration::from_secs(secs)),
            Err(_) => {
                return refuse(
                    "advance_seconds must be ≥ 0; set offset_seconds instead",
                    Some("advance_seconds"),
                );
            }
        },
        (None, Some(secs)) => clock.set_offset_secs(secs),
        _ => {
            return refuse(
                "send exactly one of advance_seconds and offset_seconds",
                None,
            );
        }
    }
    Json(clock_json(&clock)).into_response()
}

/// Year, month and day of a count of days since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`): for
/// the HTTP dates of the fakes and the benchmark's timestamps.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_unix_time_forward_by_that_much() {
        let clock = Clock::new();
        let before = clock.unix();
        clock.advance(Duration::from_secs(3600));
        let after = clock.unix();
        assert!(
            (3600..=3602).contains(&(after - before)),
            "{before} -> {after}"
        );
        clock.set_offset_secs(-10);
        assert_eq!(clock.offset_ms(), -10_000);
    }
}
