//! The background cleanup around [`Keys`]: deletion driven by the expiries
//! themselves. Each full sweep learns when our accounts expire; the task
//! sleeps until the earliest, deletes what is due without listing, and
//! sleeps again. A newly issued key re-arms the timer at once. A full sweep
//! runs at start, then at least every safety-net period, and on demand
//! (`/revoke`), with concurrent demands sharing one run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};

use crate::clock::Clock;
use crate::keys::{Keys, SweepReport};

/// The outcome of a sweep, shared by everyone who waited for it.
pub type Outcome = Result<SweepReport, crate::keys::Error>;

/// The least time, on the server's clock, between two full sweeps asked for
/// from outside (`/revoke`): however many addresses ask, they cost at most
/// one listing of every account per this interval and replica. Sweeps on
/// the schedule are not counted.
pub const REQUESTED_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Runs sweeps; cheap to clone.
#[derive(Clone, Debug)]
pub struct Cleanup {
    keys: Keys,
    clock: Clock,
    full_period: Duration,
    running: Arc<Mutex<Option<broadcast::Sender<Outcome>>>>,
    /// The last sweep asked for from outside: when it started, and its
    /// outcome once known.
    requested: Arc<Mutex<Requested>>,
    /// Told of each sweep that did work, so that the heap is trimmed after
    /// a burst of deletes as after a burst of requests.
    activity: crate::memory::Activity,
    /// Where runs are counted.
    metrics: crate::metrics::Metrics,
}

/// The last sweep asked for from outside.
#[derive(Debug, Default)]
struct Requested {
    /// When it started, on the server's clock.
    started: Option<SystemTime>,
    /// Its outcome, once known.
    outcome: Option<watch::Receiver<Option<Outcome>>>,
}

/// Empties the "sweep running" slot when dropped.
struct ClearOnDrop(Arc<Mutex<Option<broadcast::Sender<Outcome>>>>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// The wait before the first retry of a full sweep that failed; it
/// doubles with each failure in a row, up to the full period.
const RETRY_FIRST: Duration = Duration::from_secs(5);

/// How often every replica lists all accounts: `CLEANUP_INTERVAL`, but at
/// least twice per key lifetime, so that each replica learns of every key
/// (including those another replica issued) before it expires, and deletes
/// it on time even if that replica is gone.
pub fn full_sweep_period(interval: Duration, ttl: Duration) -> Duration {
    interval.min((ttl / 2).max(Duration::from_secs(1)))
}

impl Cleanup {
    /// Sweeps `keys`, reading time from `clock`, listing everything at least
    /// every `full_period`.
    pub fn new(keys: Keys, clock: Clock, full_period: Duration) -> Self {
        Self {
            keys,
            clock,
            full_period,
            running: Arc::default(),
            requested: Arc::default(),
            activity: crate::memory::Activity::default(),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Counts its runs in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Notes each sweep that did work in `activity` (by default, in a
    /// counter nobody reads).
    #[must_use]
    pub fn with_activity(mut self, activity: crate::memory::Activity) -> Self {
        self.activity = activity;
        self
    }

    fn count(&self, kind: &'static str, outcome: &Outcome, took: Duration) {
        match outcome {
            Ok(report) => self.metrics.sweep(
                kind,
                report.list_error.is_none() && report.failed == 0,
                took,
                report.deleted,
                report.failed,
            ),
            Err(_) => self.metrics.sweep(kind, false, took, 0, 0),
        }
    }

    /// Runs a full sweep now, or joins the one already running. The sweep
    /// runs in its own task, so a caller that goes away does not cut it
    /// short.
    pub async fn run_now(&self) -> Outcome {
        let mut receiver = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(sender) = running.as_ref() {
                sender.subscribe()
            } else {
                let (sender, receiver) = broadcast::channel(1);
                *running = Some(sender.clone());
                let this = self.clone();
                tokio::spawn(async move {
                    // Cleared even if the sweep panics, so that no later
                    // caller waits for a sweep that will never report.
                    let slot = ClearOnDrop(Arc::clone(&this.running));
                    let started = std::time::Instant::now();
                    let outcome = this.keys.sweep(this.clock.now()).await;
                    this.count("full", &outcome, started.elapsed());
                    // Clear the slot before sending: whoever subscribed
                    // before this point gets the outcome, whoever comes after
                    // starts a fresh sweep.
                    drop(slot);
                    let _ = sender.send(outcome);
                });
                receiver
            }
        };
        receiver
            .recv()
            .await
            .unwrap_or(Err(crate::keys::Error::TaskFailed))
    }

    /// Asks for a full sweep from outside (`/revoke`): starts one (or joins
    /// the one running) unless one asked for from outside started less than
    /// [`REQUESTED_SWEEP_INTERVAL`] ago, and returns at once. Its outcome
    /// arrives in the receiver when known, and goes to the log.
    pub fn request(&self) -> watch::Receiver<Option<Outcome>> {
        let now = self.clock.now();
        let mut requested = self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A clock set back counts as the interval having passed.
        let recent = requested.started.is_some_and(|started| {
            now.duration_since(started)
                .is_ok_and(|since| since < REQUESTED_SWEEP_INTERVAL)
        });
        if let Some(outcome) = requested.outcome.clone()
            && recent
        {
            return outcome;
        }
        let (sender, outcome) = watch::channel(None);
        requested.started = Some(now);
        requested.outcome = Some(outcome.clone());
        // In a task of its own, so that the outcome is kept even if every
        // caller stops waiting.
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.run_now().await;
            if let Err(error) = &outcome {
                tracing::warn!(%error, "a cleanup asked for through /revoke failed");
            }
            let _ = sender.send(Some(outcome));
        });
        outcome
    }

    /// [`Cleanup::request`], then its outcome.
    pub async fn run_requested(&self) -> Outcome {
        let mut outcome = self.request();
        let settled = outcome.wait_for(Option::is_some).await;
        match settled.as_deref() {
            Ok(Some(outcome)) => outcome.clone(),
            _ => Err(crate::keys::Error::TaskFailed),
        }
    }

    /// Sweeps until `shutdown` turns true: a full sweep at start and every
    /// full period, and the due accounts at each expiry in between.
    pub async fn run_until(self, mut shutdown: watch::Receiver<bool>) {
        let mut jumps = self.clock.jumps();
        let mut next_full: Option<SystemTime> = None;
        // Full sweeps that failed in a row: the next is tried after 5 s,
        // 10 s, 20 s… up to the full period, not after the full period.
        let mut failures: u32 = 0;
        loop {
            let now = self.clock.now();
            let full = next_full.is_none_or(|t| now >= t);
            let work = async {
                if full {
                    self.run_now().await
                } else {
                    let started = std::time::Instant::now();
                    let outcome = self.keys.delete_due(now).await;
                    self.count("due", &outcome, started.elapsed());
                    outcome
                }
            };
            // A sweep in progress does not hold up shutdown: deletes are
            // idempotent, and the next start sweeps again.
            let outcome = tokio::select! {
                outcome = work => outcome,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if let Ok(report) = &outcome
                && report.listed + report.deleted + report.failed > 0
            {
                self.activity.record();
            }
            let listed = matches!(&outcome, Ok(report) if report.list_error.is_none());
            match outcome {
                Ok(report) if report.failed > 0 && !full => {
                    // Retried already inside the sweep; leave them to the next
                    // full sweep rather than spin on them.
                    self.keys.forget_due(now);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "sweep failed");
                }
            }
            if full {
                if listed {
                    failures = 0;
                    next_full = Some(now + self.full_period);
                } else {
                    let backoff = RETRY_FIRST
                        .saturating_mul(1 << failures.min(16))
                        .min(self.full_period);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        retry_in_s = backoff.as_secs(),
                        failures,
                        "the full sweep could not list every account; trying again soon"
                    );
                    next_full = Some(now + backoff);
                }
            }

            let mut wake = next_full.unwrap_or(now);
            if let Some(expiry) = self.keys.next_expiry() {
                wake = wake.min(crate::clock::from_unix(expiry));
            }
            let delay = wake.duration_since(self.clock.now()).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.keys.rearmed() => {}
                _ = jumps.changed() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!("cleanup stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_lists_at_least_twice_per_key_lifetime() {
        let hour = Duration::from_secs(3600);
        assert_eq!(full_sweep_period(hour, Duration::from_secs(86_400)), hour);
        assert_eq!(
            full_sweep_period(hour, Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            full_sweep_period(hour, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
