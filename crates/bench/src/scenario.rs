//! The scenarios, one module each with its `Args` and `run`, and what they
//! share: starting the sandbox and the server, and reading the sandbox's
//! counters.

pub(crate) mod all;
pub(crate) mod cli;
pub(crate) mod connections;
pub(crate) mod dashboard;
pub(crate) mod expiry;
pub(crate) mod idle;
pub(crate) mod issue;
pub(crate) mod policy;
pub(crate) mod sweep;
pub(crate) mod usage;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use serde_json::{Map, Value};

use crate::flow;
use crate::server::{Env, Server};

/// The Admin API route of a service-account listing, as the sandbox counts.
pub(crate) const SA_LIST: &str = "GET /v1/organization/projects/{project_id}/service_accounts";

/// The Admin API route of a service-account delete, as the sandbox counts.
pub(crate) const SA_DELETE: &str =
    "DELETE /v1/organization/projects/{project_id}/service_accounts/{service_account_id}";

/// Who signs in: a Workspace account of the allowed domain.
pub(crate) const SIGN_IN_AS: &str = "bench@example.com";

/// Threads and niceness of the sandbox's runtime (`--sandbox-threads`,
/// `--sandbox-nice`).
static SANDBOX_THREADS: OnceLock<(usize, u8)> = OnceLock::new();

/// Sets the sandbox's thread count and niceness, before any scenario
/// starts.
pub(crate) fn set_sandbox_threads(threads: usize, nice: u8) {
    let _ = SANDBOX_THREADS.set((threads, nice));
}

/// Lowers the priority of the calling thread with `renice` (Linux treats a
/// thread id as a process id there). Best effort: a failure is reported
/// once and the run goes on at normal priority.
fn renice_this_thread(nice: u8) {
    if nice == 0 {
        return;
    }
    let renice = || -> anyhow::Result<()> {
        let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
        let tid = link
            .file_name()
            .and_then(|name| name.to_str())
            .context("/proc/thread-self names no thread")?
            .to_owned();
        let status = std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p", &tid])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running renice")?;
        anyhow::ensure!(status.success(), "renice failed ({status})");
        Ok(())
    };
    match renice() {
        Ok(()) => SANDBOX_NICE_APPLIED.store(nice, std::sync::atomic::Ordering::Relaxed),
        Err(error) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("bench: the sandbox runs at normal priority: {error:#}"));
        }
    }
}

/// The sandbox's own runtime, apart from the simulated browsers': its token
/// endpoint signs an ID token per sign-in (about a millisecond of CPU), and
/// on the browsers' threads that would delay reading the server's answers,
/// which is what the latency figures time.
fn sandbox_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    // Behind a lock rather than `OnceLock::get_or_init`: building can fail,
    // and two callers must not both build one (dropping a runtime inside
    // another panics).
    static RUNTIME: Mutex<Option<&'static tokio::runtime::Runtime>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = *slot {
        return Ok(runtime);
    }
    let (threads, nice) = SANDBOX_THREADS.get().copied().unwrap_or((1, 0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .on_thread_start(move || renice_this_thread(nice))
        .thread_name("sandbox")
        .enable_all()
        .build()
        .context("building the sandbox's runtime")?;
    let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
    *slot = Some(runtime);
    Ok(runtime)
}

/// The niceness the sandbox's threads actually run at (0 until `renice`
/// succeeded for one).
pub(crate) fn sandbox_nice() -> u8 {
    SANDBOX_NICE_APPLIED.load(std::sync::atomic::Ordering::Relaxed)
}

static SANDBOX_NICE_APPLIED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The sandbox with these Admin API settings, auto-approving
/// [`SIGN_IN_AS`] at the provider, serving from its own runtime.
pub(crate) async fn sandbox(config: sandbox::openai::Config) -> anyhow::Result<Sandbox> {
    let sandbox = sandbox_runtime()?
        .spawn(async move { Sandbox::builder().openai(config).start().await })
        .await
        .context("the sandbox's runtime")?
        .context("starting the sandbox")?;
    sandbox
        .oidc
        .set_auto_approve(Some(Identity::workspace(SIGN_IN_AS)));
    Ok(sandbox)
}

/// A server started and ready.
pub(crate) struct Ready {
    /// The server process.
    pub(crate) server: Server,
    /// The browsers' HTTP client.
    pub(crate) client: reqwest::Client,
    /// From spawn to the first 200 from `/readyz`.
    pub(crate) startup: Duration,
}

/// Spawns the server on `sandbox` and waits until it is ready.
pub(crate) async fn start(binary: &Path, sandbox: &Sandbox, env: Env) -> anyhow::Result<Ready> {
    let client = flow::client()?;
    let mut server = Server::spawn(binary, sandbox, env)?;
    let ready_at = server.wait_ready(&client).await?;
    let startup = ready_at - server.spawned;
    Ok(Ready {
        server,
        client,
        startup,
    })
}

/// Waits (at most 10 s) until the server's start-up cleanup has listed the
/// project's accounts, so that its calls are not counted as a flow's.
pub(crate) async fn wait_for_startup_sweep(sandbox: &Sandbox) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if sandbox.openai.journal().count(SA_LIST) > 0 {
            // Let the listing's last page be handled.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("the server's start-up cleanup never listed the service accounts")
}

/// A scenario's knobs at their `#[arg(default_value…)]` values, the one
/// place they are written.
pub(crate) fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let matches = T::augment_args(clap::Command::new("bench"))
        .try_get_matches_from(["bench"])
        .expect("every knob of a scenario has a default");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// Admin API calls by route between two snapshots of the counters (routes
/// that did not move are left out).
pub(crate) fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(route, &count)| {
            let delta = count.saturating_sub(before.get(route).copied().unwrap_or(0));
            (delta > 0).then(|| (route.clone(), delta))
        })
        .collect()
}

/// Calls by route as a JSON object, divided by `per` (1 for totals).
pub(crate) fn calls_json(calls: &BTreeMap<String, u64>, per: f64) -> Value {
    let map: Map<String, Value> = calls
        .iter()
        .map(|(route, &count)| {
            let value = if (per - 1.0).abs() < f64::EPSILON {
                Value::from(count)
            } else {
                Value::from(crate::stats::round3(count as f64 / per))
            };
            (route.clone(), value)
        })
        .collect();
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_command_lines() {
        let issue: issue::Args = defaults();
        assert_eq!(
            (issue.flows, issue.concurrency, issue.warmup),
            (2000, 64, 16)
        );
        let sweep: sweep::Args = defaults();
        assert_eq!(
            (sweep.accounts, sweep.latency_ms, sweep.rate_limit),
            (2000, 20, None)
        );
        let expiry: expiry::Args = defaults();
        assert_eq!(
            (expiry.keys, expiry.window_s, expiry.poll_ms),
            (1000, 60, 10)
        );
        let idle: idle::Args = defaults();
        assert_eq!(
            (idle.flows, idle.expiration_s, idle.quiet_s),
            (10_000, 86_400, 3)
        );
        let connections: connections::Args = defaults();
        assert_eq!(
            (
                connections.idle,
                connections.probes,
                connections.mix,
                connections.max_connections
            ),
            (1000, 200, false, None)
        );
        let dashboard: dashboard::Args = defaults();
        assert_eq!(
            (
                dashboard.keys,
                dashboard.users,
                dashboard.rates.clone(),
                dashboard.duration_s,
                dashboard.revoke_every,
                dashboard.listing_max_age_s
            ),
            (1000, 100, vec![1.0, 10.0, 100.0], 60, 50, 15)
        );
    }

    #[test]
    fn calls_between_snapshots_keep_only_routes_that_moved() {
        let before = BTreeMap::from([("GET /a".to_owned(), 3), ("POST /b".to_owned(), 1)]);
        let after = BTreeMap::from([
            ("GET /a".to_owned(), 3),
            ("POST /b".to_owned(), 5),
            ("DELETE /c".to_owned(), 2),
        ]);
        let calls = calls_between(&before, &after);
        assert_eq!(
            calls,
            BTreeMap::from([("DELETE /c".to_owned(), 2), ("POST /b".to_owned(), 4)])
        );
        assert_eq!(
            calls_json(&calls, 2.0).to_string(),
            r#"{"DELETE /c":1.0,"POST /b":2.0}"#
        );
        assert_eq!(
            calls_json(&calls, 1.0).to_string(),
            r#"{"DELETE /c":2,"POST /b":4}"#
        );
    }
}
