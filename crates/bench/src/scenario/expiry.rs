//! `expiry`: accounts whose expiries are spread at random over a window
//! (seeded before the server starts, so that its first listing learns the
//! schedule) plus keys issued through the real flow during the window; the
//! sandbox is polled every few milliseconds to see when each account goes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sandbox::Sandbox;
use sandbox::openai::SeedAccount;

use crate::flow;
use crate::report::Report;
use crate::seed::{self, Rng};
use crate::stats::Samples;

/// Knobs of the `expiry` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Accounts seeded with future expiries.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// The expiries are spread uniformly over this many seconds…
    #[arg(long, default_value_t = 60)]
    pub(crate) window_s: u64,
    /// …starting this many seconds after seeding.
    #[arg(long, default_value_t = 5)]
    pub(crate) lead_s: u64,
    /// Keys issued through the sign-in flow during the window (their
    /// expiry re-arms the server's timer).
    #[arg(long, default_value_t = 20)]
    pub(crate) issued: usize,
    /// `EXPIRATION` of the server, in seconds: the lifetime of issued keys.
    #[arg(long, default_value_t = 10)]
    pub(crate) expiration_s: u64,
    /// Latency the sandbox adds to every Admin API answer, in ms.
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// How often the sandbox's state is read, in ms.
    #[arg(long, default_value_t = 10)]
    pub(crate) poll_ms: u64,
    /// Seed of the random expiries.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

impl Default for Args {
    /// The command line's defaults: `all` runs what the scenario runs with
    /// no flags.
    fn default() -> Self {
        super::defaults()
    }
}

/// One account being watched.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Its expiry, Unix milliseconds (whole seconds, from its name).
    expiry_ms: i64,
    /// Seeded (or else issued through the flow).
    seeded: bool,
    /// First poll (Unix ms, after the read) that no longer saw it.
    gone_ms: Option<i64>,
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let sandbox = super::sandbox(sandbox::openai::Config {
        latency_ms: args.latency_ms,
        ..sandbox::openai::Config::default()
    })
    .await?;
    let project = sandbox.openai.create_project("personal");
    let now = seed::unix_now();
    let first = now + args.lead_s as i64;
    let mut rng = Rng::new(args.seed);
    let mut tracked = HashMap::with_capacity(args.keys + args.issued);
    let seeds: Vec<SeedAccount> = (0..args.keys)
        .map(|i| {
            let expiry = first + rng.below(args.window_s.max(1)) as i64;
            let name = seed::our_name(expiry, &rng.nonce(), &format!("user{i}@example.com"));
            tracked.insert(
                name.clone(),
                Tracked {
                    expiry_ms: expiry * 1000,
                    seeded: true,
                    gone_ms: None,
                },
            );
            SeedAccount::new(name, now).expiring_at(expiry)
        })
        .collect();
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .map_err(|e| anyhow::anyhow!("seeding the sandbox: {e:?}"))?;
    sandbox.openai.reset_counters();

    let mut ready = super::start(
        binary,
        &sandbox,
        vec![
            ("EXPIRATION", args.expiration_s.to_string()),
            // Only the schedule should drive deletion.
            ("CLEANUP_INTERVAL", "3600".to_owned()),
            // As deployments that name their project do: a project this
            // young would otherwise be looked at twice, 0.5 s apart, in
            // case a concurrent start created another.
            ("OPENAI_PROJECT_ID", project.clone()),
        ],
    )
    .await?;
    let cpu_before = ready.server.cpu()?;

    // Issued keys are spread over the part of the window in which they
    // still expire inside it.
    let window_end = first + args.window_s as i64;
    let span_s = (window_end - args.expiration_s as i64 - seed::unix_now()).max(0) as f64;
    let deadline =
        Instant::now() + Duration::from_secs(args.lead_s + args.window_s + args.expiration_s + 30);
    let issuing_done = AtomicBool::new(false);
    let mut flow_errors = Vec::new();
    let issue = async {
        let start = Instant::now();
        for j in 0..args.issued {
            let at = start + Duration::from_secs_f64(span_s * j as f64 / args.issued as f64);
            tokio::time::sleep_until(at.into()).await;
            match flow::sign_in(&ready.client, &ready.server.base_url, &sandbox.oidc).await {
                Ok(_) => {}
                Err(error) => flow_errors.push(format!("{error:#}")),
            }
        }
        issuing_done.store(true, Ordering::SeqCst);
    };
    let poll = poll(
        &sandbox,
        &project,
        &mut tracked,
        Duration::from_millis(args.poll_ms.max(1)),
        deadline,
        &issuing_done,
    );
    let ((), polls) = tokio::join!(issue, poll);
    let cpu = ready.server.cpu()?.since(cpu_before);
    let memory = ready.server.memory()?;
    ready.server.ensure_running()?;
    let calls = sandbox.openai.counters();

    let delays = |filter: &dyn Fn(&Tracked) -> bool| {
        Samples::new(
            tracked
                .values()
                .filter(|t| filter(t))
                .filter_map(|t| t.gone_ms.map(|gone| (gone - t.expiry_ms) as f64))
                .collect(),
        )
    };
    let all = delays(&|_| true);
    let issued = delays(&|t| !t.seeded);
    let early = tracked
        .values()
        .filter(|t| t.gone_ms.is_some_and(|gone| gone < t.expiry_ms))
        .count();
    let not_deleted = tracked.values().filter(|t| t.gone_ms.is_none()).count();

    let mut report = Report::new("expiry");
    report
        .set("keys", tracked.len())
        .set("keys_seeded", args.keys)
        .set(
            "keys_issued",
            tracked.values().filter(|t| !t.seeded).count(),
        )
        .set("window_s", args.window_s)
        .set("expiration_s", args.expiration_s)
        .set("sandbox_latency_ms", args.latency_ms)
        .set_f("delay_ms_median", all.median())
        .set_f("delay_ms_p99", all.percentile(99.0))
        .set_f("delay_ms_worst", all.max())
        .set_f("delay_ms_best", all.min())
        .set_f("issued_delay_ms_median", issued.median())
        .set_f("issued_delay_ms_worst", issued.max())
        .set("early_deletes", early)
        .set("not_deleted", not_deleted)
        .set("admin_calls", calls.values().sum::<u64>())
        .set("admin_calls_by_route", super::calls_json(&calls, 1.0))
        .set_f("server_cpu_ms", Some(cpu.total().as_secs_f64() * 1000.0))
        .set_f("server_rss_mb_peak", Some(memory.peak_mib()))
        .set("flow_errors", flow_errors.len())
        .set("polls", polls)
        .set_ms("startup_ms", ready.startup)
        .set("server_log_lines", ready.server.log_lines());
    for error in flow_errors.iter().take(5) {
        report.note(format!("flow error: {error}"));
    }
    report.note(format!(
        "delay = first poll (every {} ms) not seeing the account - its expiry (whole seconds)",
        args.poll_ms
    ));
    Ok(report)
}

/// Reads the project every `every` until issuing is over and every
/// watched account is gone, or `deadline`. New accounts of this server
/// (issued during the run) are watched from their first sighting. Returns
/// the number of polls.
async fn poll(
    sandbox: &Sandbox,
    project: &str,
    tracked: &mut HashMap<String, Tracked>,
    every: Duration,
    deadline: Instant,
    issuing_done: &AtomicBool,
) -> u64 {
    let mut polls = 0;
    let mut next = Instant::now();
    while Instant::now() < deadline {
        // Read before the state, so that the last issued account is in it.
        let issuing_over = issuing_done.load(Ordering::SeqCst);
        let accounts = sandbox.openai.service_accounts(project);
        let read_ms = seed::unix_ms_now();
        polls += 1;
        let present: HashSet<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        for name in &present {
            if !tracked.contains_key(*name)
                && let Some(expiry) = seed::expiry_of(name)
            {
                tracked.insert(
                    (*name).to_owned(),
                    Tracked {
                        expiry_ms: expiry * 1000,
                        seeded: false,
                        gone_ms: None,
                    },
                );
            }
        }
        let mut waiting = 0;
        for (name, account) in tracked.iter_mut() {
            if account.gone_ms.is_none() {
                if present.contains(name.as_str()) {
                    waiting += 1;
                } else {
                    account.gone_ms = Some(read_ms);
                }
            }
        }
        if waiting == 0 && issuing_over {
            break;
        }
        next += every;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    polls
}
