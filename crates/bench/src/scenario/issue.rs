//! `issue`: full sign-in-to-key flows, C at a time, after a warm-up that
//! fills the server's caches (discovery, JWKS, project).

use std::path::Path;

use crate::report::Report;
use crate::stats::Samples;
use crate::{flow, procfs};

/// Knobs of the `issue` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Flows to measure (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    pub(crate) flows: usize,
    /// Flows in flight at once (each a browser with its own cookies).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Latency the sandbox adds to every Admin API answer, in ms.
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// Random extra Admin API latency, 0 to this many ms.
    #[arg(long, default_value_t = 0)]
    pub(crate) jitter_ms: u64,
    /// Flows run first, one at a time, and not counted.
    #[arg(long, default_value_t = 16)]
    pub(crate) warmup: usize,
}

impl Default for Args {
    /// The command line's defaults: `all` runs what the scenario runs with
    /// no flags.
    fn default() -> Self {
        super::defaults()
    }
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let sandbox = super::sandbox(sandbox::openai::Config {
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        ..sandbox::openai::Config::default()
    })
    .await?;
    let mut ready = super::start(
        binary,
        &sandbox,
        vec![
            // Long-lived keys, so that nothing is deleted during the run.
            ("EXPIRATION", "86400".to_owned()),
            ("CLEANUP_INTERVAL", "3600".to_owned()),
        ],
    )
    .await?;
    super::wait_for_startup_sweep(&sandbox).await?;
    let warmup = flow::run_batch(
        &ready.client,
        &ready.server.base_url,
        &sandbox.oidc,
        args.warmup,
        1,
        None,
    )
    .await;
    anyhow::ensure!(
        warmup.errors == 0 || args.warmup == 0,
        "the warm-up failed: {:?}\n{}",
        warmup.first_errors,
        ready.server.log_tail()
    );

    let calls_before = sandbox.openai.counters();
    let jwks_before = sandbox.oidc.jwks_fetches();
    let cpu_before = ready.server.cpu()?;
    let machine_before = procfs::machine_cpu()?;
    let bench_before = procfs::cpu_time(std::process::id())?;
    let batch = flow::run_batch(
        &ready.client,
        &ready.server.base_url,
        &sandbox.oidc,
        args.flows,
        args.concurrency,
        None,
    )
    .await;
    let cpu = ready.server.cpu()?.since(cpu_before);
    let machine = procfs::machine_cpu()?.since(machine_before);
    let bench_cpu = procfs::cpu_time(std::process::id())?.since(bench_before);
    let memory = ready.server.memory()?;
    let calls = super::calls_between(&calls_before, &sandbox.openai.counters());
    ready.server.ensure_running()?;

    let ok = batch.timings.len();
    let per_flow = ok.max(1) as f64;
    let total = Samples::new(
        batch
            .timings
            .iter()
            .map(|t| t.total.as_secs_f64() * 1000.0)
            .collect(),
    );
    let ms = |f: fn(&flow::Timing) -> std::time::Duration| {
        Samples::new(
            batch
                .timings
                .iter()
                .map(|t| f(t).as_secs_f64() * 1000.0)
                .collect(),
        )
    };
    let added = ms(flow::Timing::added);
    let hops = ms(|t| t.server);
    let in_server = ms(|t| t.app);
    let upstream = ms(|t| t.upstream);
    let admin_calls: u64 = calls.values().sum();

    let mut report = Report::new("issue");
    report
        .set("flows", args.flows)
        .set("concurrency", args.concurrency)
        .set("sandbox_latency_ms", args.latency_ms)
        .set("sandbox_jitter_ms", args.jitter_ms)
        .set_f("flows_per_s", Some(ok as f64 / batch.elapsed.as_secs_f64()))
        .set_f("latency_ms_p50", total.median())
        .set_f("latency_ms_p99", total.percentile(99.0))
        .set_f("latency_ms_max", total.max())
        .set_f("added_latency_ms_p50", added.median())
        .set_f("added_latency_ms_p99", added.percentile(99.0))
        .set_f("added_latency_ms_max", added.max())
        .set_f("server_hops_ms_p50", hops.median())
        .set_f("server_hops_ms_p99", hops.percentile(99.0))
        .set_f("server_app_ms_p50", in_server.median())
        .set_f("server_app_ms_p99", in_server.percentile(99.0))
        .set_f("sandbox_wait_ms_p50", upstream.median())
        .set_f("sandbox_wait_ms_p99", upstream.percentile(99.0))
        .set_f(
            "server_cpu_ms_per_flow",
            Some(cpu.total().as_secs_f64() * 1000.0 / per_flow),
        )
        .set_f(
            "server_cpu_user_ms_per_flow",
            Some(cpu.user.as_secs_f64() * 1000.0 / per_flow),
        )
        .set_f(
            "server_cpu_system_ms_per_flow",
            Some(cpu.system.as_secs_f64() * 1000.0 / per_flow),
        )
        .set_f(
            "bench_cpu_ms_per_flow",
            Some(bench_cpu.total().as_secs_f64() * 1000.0 / per_flow),
        )
        .set_f(
            "other_cpu_ms_per_flow",
            Some(
                machine
                    .busy
                    .saturating_sub(cpu.total() + bench_cpu.total())
                    .as_secs_f64()
                    * 1000.0
                    / per_flow,
            ),
        )
        .set_f("machine_cpu_busy_pct", Some(machine.busy_pct()))
        .set_f("server_rss_mb_peak", Some(memory.peak_mib()))
        .set_f("server_rss_mb_end", Some(memory.rss_mib()))
        .set_f("admin_calls_per_flow", Some(admin_calls as f64 / per_flow))
        .set("admin_calls_by_route", super::calls_json(&calls, per_flow))
        .set("jwks_fetches", sandbox.oidc.jwks_fetches())
        .set(
            "jwks_fetches_during_run",
            sandbox.oidc.jwks_fetches() - jwks_before,
        )
        .set("errors", batch.errors)
        .set("sandbox_nice", super::sandbox_nice())
        .set_ms("startup_ms", ready.startup)
        .set("server_log_lines", ready.server.log_lines());
    for error in &batch.first_errors {
        report.note(format!("error: {error}"));
    }
    report.note(
        "added_latency = time of the two server hops (GET / and the callback) as the browser \
         saw it, minus what the server said it waited on the sandbox (Server-Timing upstream: \
         the token endpoint and the Admin API); server_app = the server's own time in those \
         two requests (Server-Timing app); sandbox_wait = the upstream part. Under load the \
         server's wait for its own thread after an upstream answer arrives counts as upstream, \
         so added_latency is a lower bound there; server_hops (the two hops whole, sandbox \
         included) is the upper bound",
    );
    report.note(
        "bench_cpu = this process: the sandbox (RSA-signed ID tokens, the fake Admin API) \
         and the simulated browsers, which share the cores with the server; other_cpu = \
         the rest of the machine's busy time (kernel, other programs)",
    );
    Ok(report)
}
