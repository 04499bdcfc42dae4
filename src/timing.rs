//! How long a request waited on Google and OpenAI, so that the time the
//! server itself adds to a sign-in can be told apart from theirs. Read by
//! the `Server-Timing` header (`SERVER_TIMING=true`), which is how the
//! benchmark measures the latency the server adds.
//!
//! The wait is counted per request in a task-local, so the clients that call
//! out need no extra parameter; calls made outside a request (the sweep) are
//! not counted anywhere.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// Tokio's, which is std's except under a paused test clock.
use tokio::time::Instant;

tokio::task_local! {
    static WAITED: Waited;
}

/// The time one request spent waiting on upstream calls.
#[derive(Clone, Debug, Default)]
pub struct Waited(Arc<AtomicU64>);

impl Waited {
    /// The total so far.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    fn add(&self, wait: Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(micros, Ordering::Relaxed);
    }

    /// Runs `future`, counting its upstream calls into `self`.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        WAITED.scope(self, future).await
    }
}

/// Runs `future` (typically about to be spawned) counting its upstream calls
/// into the current request's total, if there is one: a spawned task does
/// not inherit task-locals.
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let waited = WAITED.try_with(Waited::clone).ok();
    async move {
        match waited {
            Some(waited) => waited.scope(future).await,
            None => future.await,
        }
    }
}

/// Awaits one upstream call (request and body), counting its time into the
/// current request's.
pub async fn upstream<F: Future>(call: F) -> F::Output {
    let started = Instant::now();
    let output = call.await;
    let _ = WAITED.try_with(|waited| waited.add(started.elapsed()));
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_add_up_in_the_request_and_its_spawned_tasks_only() {
        let waited = Waited::default();
        waited
            .clone()
            .scope(async {
                upstream(tokio::time::sleep(Duration::from_millis(30))).await;
                // Not an upstream call: not counted.
                tokio::time::sleep(Duration::from_millis(100)).await;
                tokio::spawn(carry(upstream(tokio::time::sleep(Duration::from_millis(
                    12,
                )))))
                .await
                .unwrap();
            })
            .await;
        // Outside any request: counted nowhere, and no panic.
        upstream(tokio::time::sleep(Duration::from_millis(5))).await;
        tokio::spawn(carry(async {})).await.unwrap();
        assert_eq!(waited.total(), Duration::from_millis(42));
    }
}
