//! Giving memory back after a burst. A burst of sign-ins (or of deletes)
//! allocates buffers for every connection at once (tens of kilobytes each,
//! to the client and to Google and OpenAI); freed, that memory stays with
//! the C heap for reuse and the process stays as large as at the burst's
//! peak. Once requests and sweeps have stopped for a second, the free pages
//! go back to the system ([`heap_trim`]). Under steady load nothing is
//! trimmed: the pages would only be faulted back in. Health probes do not
//! count as activity.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long requests must have stopped before the heap is trimmed.
const QUIET: Duration = Duration::from_secs(1);

/// Counts requests and sweeps that did work, for [`trim_after_bursts`].
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Notes one request or sweep.
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the trimming task remembers between two looks.
#[derive(Debug, Default)]
struct Trimmer {
    /// The request count at the previous look.
    seen: u64,
    /// The request count at the last trim.
    trimmed_at: u64,
}

impl Trimmer {
    /// Whether to trim now, given the request count: only when requests
    /// came since the last trim but none since the previous look.
    fn look(&mut self, count: u64) -> bool {
        let trim = count == self.seen && count != self.trimmed_at;
        if trim {
            self.trimmed_at = count;
        }
        self.seen = count;
        trim
    }
}

/// Runs forever: trims the heap each time requests and sweeps stop for a
/// second.
pub async fn trim_after_bursts(activity: Activity) {
    let mut trimmer = Trimmer::default();
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if trimmer.look(activity.count()) {
            let released = heap_trim::release_free_memory();
            tracing::debug!(released, "trimmed the heap after a burst");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_each_burst_and_never_during_one_or_when_idle() {
        let mut trimmer = Trimmer::default();
        assert!(!trimmer.look(0), "idle since start");
        assert!(!trimmer.look(10), "a burst is going on");
        assert!(!trimmer.look(25), "still going on");
        assert!(trimmer.look(25), "quiet for a look after the burst");
        assert!(!trimmer.look(25), "already trimmed");
        assert!(!trimmer.look(25), "idle");
        assert!(!trimmer.look(26), "one request");
        assert!(trimmer.look(26), "then quiet again");
    }
}
