//! The background cleanup around [`Keys::sweep`]: a sweep at start, then
//! one every `CLEANUP_INTERVAL`, and on demand (`/revoke`), with concurrent
//! demands sharing one run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::clock::Clock;
use crate::keys::{Keys, SweepReport};

/// The outcome of a sweep, shared by everyone who waited for it.
pub type Outcome = Result<SweepReport, crate::keys::Error>;

/// Runs sweeps; cheap to clone.
#[derive(Clone, Debug)]
pub struct Cleanup {
    keys: Keys,
    clock: Clock,
    interval: Duration,
    running: Arc<Mutex<Option<broadcast::Sender<Outcome>>>>,
}

impl Cleanup {
    /// Sweeps `keys` every `interval`, reading time from `clock`.
    pub fn new(keys: Keys, clock: Clock, interval: Duration) -> Self {
        Self {
            keys,
            clock,
            interval,
            running: Arc::default(),
        }
    }

    /// Runs a sweep now, or joins the one already running. The sweep runs in
    /// its own task, so a caller that goes away does not cut it short.
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
                    let outcome = this.keys.sweep(this.clock.now()).await;
                    // Clear the slot before sending: whoever subscribed
                    // before this point gets the outcome, whoever comes after
                    // starts a fresh sweep.
                    this.running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    let _ = sender.send(outcome);
                });
                receiver
            }
        };
        receiver.recv().await.unwrap_or_else(|_| {
            Err(crate::keys::Error::OpenAi(
                crate::openai::Error::Transport {
                    message: "the sweep task stopped before it finished".into(),
                },
            ))
        })
    }

    /// Sweeps at start and then every interval until `shutdown` turns true.
    pub async fn run_until(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            // A sweep in progress does not hold up shutdown: deletes are
            // idempotent, and the next start sweeps again.
            tokio::select! {
                outcome = self.run_now() => {
                    if let Err(error) = outcome {
                        tracing::warn!(%error, "sweep failed; retrying at the next interval");
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!("cleanup stopped");
    }
}
