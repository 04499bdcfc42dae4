//! `idle`: the server's memory right after start, at the 5,000th and right
//! after the 10,000th flow (a leak shows as growth between the two), again
//! once the server has been quiet for a few seconds (it gives a burst's
//! buffers back then), and its start-up time to ready.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::flow::{self, Progress};
use crate::procfs;
use crate::report::Report;
use crate::server::binary_mb;

/// Knobs of the `idle` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Flows to run after the idle reading; memory is also read halfway.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) flows: usize,
    /// Flows in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Seconds to let the server settle after ready before the idle reading.
    #[arg(long, default_value_t = 1)]
    pub(crate) settle_s: u64,
    /// `EXPIRATION` of the server, in seconds. With the default (a day, as
    /// in production) every key of the run is still live at the end, so
    /// the server's per-key state grows with the flows; a lifetime shorter
    /// than the run keeps the live set bounded, so that growth means a leak.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) expiration_s: u64,
    /// Seconds without requests after the last flow before the last
    /// reading (the server trims its heap after one quiet second).
    #[arg(long, default_value_t = 3)]
    pub(crate) quiet_s: u64,
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
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let mut ready = super::start(
        binary,
        &sandbox,
        vec![
            ("EXPIRATION", args.expiration_s.to_string()),
            ("CLEANUP_INTERVAL", "3600".to_owned()),
        ],
    )
    .await?;
    let at_ready = ready.server.memory()?;
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let idle = ready.server.memory()?;

    let halfway = args.flows / 2;
    let pid = ready.server.pid;
    let at_half: Arc<Mutex<Option<procfs::Memory>>> = Arc::default();
    let progress: Progress = {
        let at_half = Arc::clone(&at_half);
        Arc::new(move |done| {
            if done == halfway {
                let reading = procfs::memory(pid).ok();
                *at_half.lock().unwrap_or_else(PoisonError::into_inner) = reading;
            }
        })
    };
    let cpu_before = ready.server.cpu()?;
    let machine_before = procfs::machine_cpu()?;
    let batch = flow::run_batch(
        &ready.client,
        &ready.server.base_url,
        &sandbox.oidc,
        args.flows,
        args.concurrency,
        Some(progress),
    )
    .await;
    let cpu = ready.server.cpu()?.since(cpu_before);
    let machine = procfs::machine_cpu()?.since(machine_before);
    let after = ready.server.memory()?;
    let live_keys = sandbox
        .openai
        .find_project_by_name("personal")
        .map_or(0, |p| sandbox.openai.service_accounts(&p.id).len());
    tokio::time::sleep(Duration::from_secs(args.quiet_s)).await;
    let quiet = ready.server.memory()?;
    ready.server.ensure_running()?;
    let at_half = *at_half.lock().unwrap_or_else(PoisonError::into_inner);

    let mut report = Report::new("idle");
    report
        .set_ms("startup_ms", ready.startup)
        .set_f("rss_mb_at_ready", Some(at_ready.rss_mib()))
        .set_f("rss_mb_idle", Some(idle.rss_mib()))
        .set("flows", args.flows)
        .set("concurrency", args.concurrency)
        .set("expiration_s", args.expiration_s)
        .set("live_keys_after", live_keys)
        .set(&format!("rss_mb_after_{halfway}"), rss(at_half))
        .set_f("rss_mb_after", Some(after.rss_mib()))
        .set_f("rss_mb_after_quiet", Some(quiet.rss_mib()))
        .set("quiet_s", args.quiet_s)
        .set_f(
            &format!("rss_growth_mb_{halfway}_to_{}", args.flows),
            at_half.map(|half| after.rss_mib() - half.rss_mib()),
        )
        .set_f(
            &format!("rss_kb_per_flow_{halfway}_to_{}", args.flows),
            at_half.map(|half| {
                (after.rss_kib as f64 - half.rss_kib as f64) / (args.flows - halfway).max(1) as f64
            }),
        )
        .set_f("server_rss_mb_peak", Some(after.peak_mib()))
        .set_f(
            "flows_per_s",
            Some(batch.timings.len() as f64 / batch.elapsed.as_secs_f64()),
        )
        .set_f(
            "server_cpu_ms_per_flow",
            Some(cpu.total().as_secs_f64() * 1000.0 / batch.timings.len().max(1) as f64),
        )
        .set_f("machine_cpu_busy_pct", Some(machine.busy_pct()))
        .set("errors", batch.errors)
        .set_f("binary_mb", binary_mb(binary))
        .set("server_log_lines", ready.server.log_lines());
    for error in &batch.first_errors {
        report.note(format!("error: {error}"));
    }
    report.note(
        "rss figures are VmRSS in MiB; peak is VmHWM; rss_mb_after is read right after the \
         last flow, rss_mb_after_quiet after quiet_s seconds without requests",
    );
    Ok(report)
}

fn rss(memory: Option<procfs::Memory>) -> serde_json::Value {
    memory.map_or(serde_json::Value::Null, |m| {
        serde_json::json!(crate::stats::round3(m.rss_mib()))
    })
}
