//! The time source. Production reads the system clock; tests and the demo
//! pass the sandbox's virtual clock, so expiry is tested by moving time,
//! never by sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A source of "now", and a signal for when it jumps. Cheap to clone.
#[derive(Clone)]
pub struct Clock {
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    jumps: Arc<watch::Sender<u64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::from_fn(SystemTime::now)
    }

    /// A clock read through `now`. Whoever moves it must call
    /// [`Clock::jumped`] so that timers waiting on it re-check.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self {
            now: Arc::new(now),
            jumps: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.now)()
    }

    /// Tells every waiter that time moved other than by itself.
    pub fn jumped(&self) {
        self.jumps.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever [`Clock::jumped`] is called.
    pub fn jumps(&self) -> watch::Receiver<u64> {
        self.jumps.subscribe()
    }
}

/// Whole Unix seconds, as OpenAI and ID tokens count time (before 1970: 0).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instant of whole Unix seconds `secs` (before 1970: the epoch).
pub fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Time from `now` until `secs` (zero once it has passed).
pub fn until(secs: i64, now: SystemTime) -> Duration {
    from_unix(secs).duration_since(now).unwrap_or_default()
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}
