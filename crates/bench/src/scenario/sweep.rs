//! `sweep`: the project already holds K expired accounts of this server and
//! K foreign ones when the server starts; how long until its start-up
//! cleanup has deleted every expired one, at what cost, touching nothing
//! else.

use std::path::Path;
use std::time::{Duration, Instant};

use sandbox::openai::SeedAccount;

use crate::report::Report;
use crate::seed::{self, PREFIX, Rng};
use crate::server::Server;

/// Knobs of the `sweep` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Expired accounts of this server (and as many foreign ones).
    #[arg(long, default_value_t = 2000)]
    pub(crate) accounts: usize,
    /// Latency the sandbox adds to every Admin API answer, in ms.
    #[arg(long, default_value_t = 20)]
    pub(crate) latency_ms: u64,
    /// Admin API request-rate limit, requests per second (429 beyond it).
    #[arg(long)]
    pub(crate) rate_limit: Option<f64>,
    /// `CLEANUP_CONCURRENCY` of the server (deletes it starts with at once).
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: u32,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) timeout_s: u64,
}

impl Default for Args {
    /// The command line's defaults: `all` runs what the scenario runs with
    /// no flags.
    fn default() -> Self {
        super::defaults()
    }
}

/// What the watcher saw.
#[derive(Debug, Default)]
struct Watch {
    /// When no expired account of ours was left.
    clean_at: Option<Instant>,
    /// Polls made, and the slowest one.
    polls: u64,
    slowest_poll: Duration,
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let sandbox = super::sandbox(sandbox::openai::Config {
        latency_ms: args.latency_ms,
        rate_limit_per_s: args.rate_limit,
        ..sandbox::openai::Config::default()
    })
    .await?;
    let project = sandbox.openai.create_project("personal");
    let now = seed::unix_now();
    let mut rng = Rng::new(0x5eed);
    let ours = (0..args.accounts).map(|i| {
        // Expired between 1 minute and about a day ago.
        let expiry = now - 60 - rng.below(86_400) as i64;
        let name = seed::our_name(expiry, &rng.nonce(), &format!("user{i}@example.com"));
        SeedAccount::new(name, expiry - 3600).expiring_at(expiry)
    });
    let foreign =
        (0..args.accounts).map(|i| SeedAccount::new(seed::foreign_name(i), now - 30 * 86_400));
    let seeds: Vec<SeedAccount> = ours.chain(foreign).collect();
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .map_err(|e| anyhow::anyhow!("seeding the sandbox: {e:?}"))?;
    sandbox.openai.reset_counters();

    let client = crate::flow::client()?;
    let mut server = Server::spawn(
        binary,
        &sandbox,
        vec![
            ("EXPIRATION", "86400".to_owned()),
            ("CLEANUP_INTERVAL", "3600".to_owned()),
            ("CLEANUP_CONCURRENCY", args.concurrency.to_string()),
            // As deployments that name their project do: a project this
            // young would otherwise be looked at twice, 0.5 s apart, in
            // case a concurrent start created another.
            ("OPENAI_PROJECT_ID", project.clone()),
        ],
    )?;
    let spawned = server.spawned;
    let cpu_before = server.cpu().unwrap_or_default();
    let timeout = Duration::from_secs(args.timeout_s);
    let (ready, watch) = tokio::join!(
        server.wait_ready(&client),
        watch(&sandbox, &project, args.accounts, spawned, timeout)
    );
    let ready_at = ready?;
    let cpu = server.cpu()?.since(cpu_before);
    let memory = server.memory()?;
    // Anything deleted late would still count as touched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let remaining = sandbox.openai.service_accounts(&project);
    let ours_left = remaining
        .iter()
        .filter(|a| a.name.starts_with(PREFIX))
        .count();
    let foreign_left = remaining.len() - ours_left;
    let calls = sandbox.openai.counters();
    let admin_calls: u64 = calls.values().sum();
    server.ensure_running()?;

    let mut report = Report::new("sweep");
    report
        .set("accounts_expired", args.accounts)
        .set("accounts_foreign", args.accounts)
        .set("sandbox_latency_ms", args.latency_ms)
        .set_f("rate_limit_per_s", args.rate_limit)
        .set("cleanup_concurrency", args.concurrency)
        .set_f(
            "seconds_to_clean",
            watch.clean_at.map(|at| (at - spawned).as_secs_f64()),
        )
        .set_f(
            "seconds_to_clean_from_ready",
            watch.clean_at.map(|at| signed_secs(at, ready_at)),
        )
        .set("admin_calls", admin_calls)
        .set("admin_calls_by_route", super::calls_json(&calls, 1.0))
        .set("rate_limited_answers", sandbox.openai.rate_limited())
        .set("foreign_deleted", args.accounts - foreign_left)
        .set("expired_left", ours_left)
        .set_f("server_cpu_ms", Some(cpu.total().as_secs_f64() * 1000.0))
        .set_f("server_rss_mb_peak", Some(memory.peak_mib()))
        .set_ms("startup_ms", ready_at - spawned)
        .set("polls", watch.polls)
        .set_ms("slowest_poll_ms", watch.slowest_poll)
        .set("server_log_lines", server.log_lines());
    if let Some(rate) = args.rate_limit {
        // Every delete, plus one listing page per 100 accounts, at the
        // limit's pace.
        let pages = (2 * args.accounts).div_ceil(100) as f64;
        let floor = (args.accounts as f64 + pages) / rate;
        report.set_f("rate_limit_floor_s", Some(floor));
        report.set_f(
            "ratio_to_floor",
            watch
                .clean_at
                .map(|at| (at - spawned).as_secs_f64() / floor),
        );
    }
    if watch.clean_at.is_none() {
        report.note(format!(
            "{ours_left} expired accounts were still there after {}s",
            args.timeout_s
        ));
    }
    report.note(
        "seconds_to_clean counts from the server's spawn; admin_calls include /readyz probes",
    );
    Ok(report)
}

/// Polls the project until no account of ours is left or `timeout` has
/// passed since `spawned`. Reading 20,000 accounts holds the sandbox's
/// state lock for tens of milliseconds, which would slow the deletes being
/// measured, so the state is only read once the sandbox has answered at
/// least `expected` deletes (a cheap counter), and then with a pause of ten
/// times the last read's duration, at least 20 ms.
async fn watch(
    sandbox: &sandbox::Sandbox,
    project: &str,
    expected: usize,
    spawned: Instant,
    timeout: Duration,
) -> Watch {
    let mut watch = Watch::default();
    while spawned.elapsed() < timeout {
        if sandbox.openai.journal().count(super::SA_DELETE) < expected as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let started = Instant::now();
        let left = sandbox
            .openai
            .service_accounts(project)
            .iter()
            .filter(|a| a.name.starts_with(PREFIX))
            .count();
        let now = Instant::now();
        let took = now - started;
        watch.polls += 1;
        watch.slowest_poll = watch.slowest_poll.max(took);
        if left == 0 {
            watch.clean_at = Some(now);
            break;
        }
        tokio::time::sleep((took * 10).max(Duration::from_millis(20))).await;
    }
    watch
}

fn signed_secs(at: Instant, since: Instant) -> f64 {
    if at >= since {
        (at - since).as_secs_f64()
    } else {
        -(since - at).as_secs_f64()
    }
}
