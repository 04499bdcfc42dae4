//! The time source. Production reads the system clock; tests and the demo
//! pass the sandbox's virtual clock, so expiry is tested by moving time,
//! never by sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

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
