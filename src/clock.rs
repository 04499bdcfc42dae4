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

/// A duration as people say it, rounded to its largest unit: "42 seconds",
/// "2 minutes", "23 hours", "3 days".
pub fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    let plural = |n: f64, unit: &str| {
        if n == 1.0 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    let seconds = secs.round();
    if seconds < 60.0 {
        return plural(seconds.max(1.0), "second");
    }
    let minutes = (secs / 60.0).round();
    if minutes < 60.0 {
        return plural(minutes, "minute");
    }
    let hours = (secs / 3600.0).round();
    if hours < 48.0 {
        return plural(hours, "hour");
    }
    plural((secs / 86_400.0).round(), "day")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let secs = |s: f64| humanize(Duration::from_secs_f64(s));
        assert_eq!(secs(0.2), "1 second");
        assert_eq!(secs(42.4), "42 seconds");
        assert_eq!(secs(59.6), "1 minute");
        assert_eq!(secs(119.419), "2 minutes");
        assert_eq!(secs(3_570.0), "1 hour");
        assert_eq!(secs(82_800.0), "23 hours");
        assert_eq!(secs(86_399.0), "24 hours");
        assert_eq!(secs(3.0 * 86_400.0), "3 days");
    }
}
