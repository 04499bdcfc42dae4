//! Deleting many accounts fast without hammering the Admin API: deletes run
//! concurrently under an adaptive limit that grows while OpenAI keeps up and
//! halves on a 429; throttled or failed deletes are retried in the same
//! sweep a bounded number of times, then left for the next one.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Priority;
use crate::openai::{self, AdminClient};

/// Attempts per account within one sweep.
pub(crate) const MAX_ATTEMPTS: u32 = 5;
/// Longest wait a `Retry-After` or a backoff may impose.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One account to delete.
#[derive(Clone, Debug)]
pub(crate) struct Due {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) expires_at: i64,
    /// The key's id, when known (for the audit line).
    pub(crate) key_id: Option<String>,
    attempts: u32,
}

impl Due {
    pub(crate) fn new(id: String, name: String, owner: String, expires_at: i64) -> Self {
        Self {
            id,
            name,
            owner,
            expires_at,
            key_id: None,
            attempts: 0,
        }
    }
}

/// What happened to one account.
#[derive(Debug)]
pub(crate) enum Fate {
    Deleted,
    AlreadyGone,
    Failed(openai::Error),
}

/// Counts of one deleter run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) deleted: usize,
    pub(crate) already_gone: usize,
    pub(crate) failed: usize,
    pub(crate) retries: usize,
    pub(crate) rate_limited: usize,
    pub(crate) calls: usize,
}

/// Exponential backoff with jitter: 0.5 s × 2ⁿ, at most 8 s, minus up to 25 %.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << attempt.min(4));
    let base = base.min(Duration::from_secs(8));
    let jitter = rand::rng().random_range(0.0..0.25);
    base.mul_f64(1.0 - jitter)
}

/// The adaptive limit: slow start (doubling) until the first throttle, then
/// additive increase, multiplicative decrease.
#[derive(Debug)]
struct Limit {
    current: usize,
    max: usize,
    slow_start: bool,
    successes: usize,
}

impl Limit {
    fn success(&mut self) {
        self.successes += 1;
        if self.successes >= self.current {
            self.successes = 0;
            self.current = if self.slow_start {
                self.current * 2
            } else {
                self.current + 1
            }
            .min(self.max);
        }
    }

    fn throttled(&mut self) {
        self.slow_start = false;
        self.successes = 0;
        self.current = (self.current / 2).max(1);
    }
}

/// How fast a deleter may go.
pub(crate) struct Pace<'a> {
    /// Deletes at once to start with.
    pub(crate) initial: usize,
    /// The most at once while OpenAI keeps up.
    pub(crate) max: usize,
    /// Creates waiting for their turn: no new delete starts meanwhile.
    pub(crate) priority: &'a Priority,
    /// The longest the deletes wait for creates in a row.
    pub(crate) max_yield: Duration,
}

/// Deletes every account received on `jobs` until the channel closes and
/// all are settled; calls `settled` once per account with its fate.
pub(crate) async fn run(
    admin: &AdminClient,
    project_id: &str,
    pace: Pace<'_>,
    mut jobs: mpsc::Receiver<Due>,
    mut settled: impl FnMut(&Due, Fate),
) -> Tally {
    let Pace {
        initial,
        max,
        priority,
        max_yield,
    } = pace;
    let mut tally = Tally::default();
    let mut limit = Limit {
        current: initial.clamp(1, max.max(1)),
        max: max.max(1),
        slow_start: true,
        successes: 0,
    };
    let mut ready: VecDeque<Due> = VecDeque::new();
    let mut waiting: Vec<(Instant, Due)> = Vec::new();
    let mut paused_until: Option<Instant> = None;
    let mut yielding_since: Option<Instant> = None;
    let mut inflight = JoinSet::new();
    let mut open = true;

    loop {
        let now = Instant::now();
        if paused_until.is_some_and(|t| t <= now) {
            paused_until = None;
        }
        // Waiting retries whose time has come go back in line.
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].0 <= now {
                ready.push_back(waiting.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        // Creates waiting for their turn go first, but for at most
        // `max_yield` in a row: a steady stream of them must not stop the
        // deletes that expiry depends on.
        let held = priority.is_held();
        if !held {
            yielding_since = None;
        }
        let yielding = held && *yielding_since.get_or_insert(now) + max_yield > now;
        while !yielding && paused_until.is_none() && inflight.len() < limit.current {
            let Some(job) = ready.pop_front() else { break };
            let admin = admin.clone();
            let project_id = project_id.to_owned();
            inflight.spawn(async move {
                let result = admin.delete_service_account(&project_id, &job.id).await;
                (job, result)
            });
        }
        if !open && inflight.is_empty() && ready.is_empty() && waiting.is_empty() {
            break;
        }
        let next_timer = waiting.iter().map(|(t, _)| *t).chain(paused_until).min();

        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => ready.push_back(job),
                None => open = false,
            },
            Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((mut job, result)) = joined else {
                    tally.failed += 1;
                    continue;
                };
                tally.calls += 1;
                match result {
                    Ok(()) => {
                        tally.deleted += 1;
                        limit.success();
                        settled(&job, Fate::Deleted);
                    }
                    Err(openai::Error::NotFound { .. }) => {
                        tally.deleted += 1;
                        tally.already_gone += 1;
                        limit.success();
                        settled(&job, Fate::AlreadyGone);
                    }
                    Err(error) => {
                        let throttled = matches!(error, openai::Error::RateLimited { .. });
                        let retryable = throttled
                            || error.is_ambiguous()
                            || matches!(error, openai::Error::Api { status: 409, .. });
                        job.attempts += 1;
                        if !retryable || job.attempts >= MAX_ATTEMPTS {
                            tally.failed += 1;
                            settled(&job, Fate::Failed(error));
                            continue;
                        }
                        tally.retries += 1;
                        if let openai::Error::RateLimited { retry_after, .. } = &error {
                            tally.rate_limited += 1;
                            // Halve once per pause, not once per throttled
                            // request already in flight.
                            if paused_until.is_none() {
                                limit.throttled();
                            }
                            let wait = retry_after
                                .unwrap_or_else(|| backoff(job.attempts))
                                .min(MAX_WAIT);
                            let until = Instant::now() + wait;
                            paused_until = Some(paused_until.map_or(until, |t| t.max(until)));
                            ready.push_front(job);
                        } else {
                            let until = Instant::now() + backoff(job.attempts).min(MAX_WAIT);
                            waiting.push((until, job));
                        }
                    }
                }
            },
            () = async {
                match next_timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if next_timer.is_some() => {}
            () = priority.wait_turn(
                yielding_since.map_or(max_yield, |since| (since + max_yield).saturating_duration_since(now)),
            ), if yielding => {}
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_doubles_until_throttled_then_grows_by_one_and_halves() {
        let mut limit = Limit {
            current: 8,
            max: 64,
            slow_start: true,
            successes: 0,
        };
        for _ in 0..8 {
            limit.success();
        }
        assert_eq!(limit.current, 16);
        limit.throttled();
        assert_eq!(limit.current, 8);
        for _ in 0..8 {
            limit.success();
        }
        assert_eq!(limit.current, 9);
        for _ in 0..10 {
            limit.throttled();
        }
        assert_eq!(limit.current, 1);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(500));
        assert!(backoff(0) >= Duration::from_millis(375));
        assert!(backoff(10) <= Duration::from_secs(8));
        assert!(backoff(10) >= Duration::from_secs(6));
    }
}
