//! The sandbox's virtual clock: real time plus an offset that tests move
//! forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
