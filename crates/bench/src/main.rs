//! `bench`: measures the key server the way the benchmark issue asks. The
//! sandbox runs in this process; the release-built server runs as a child
//! process, so that its CPU time and memory can be read from `/proc`.

mod flow;
mod procfs;
mod report;
mod scenario;
mod seed;
mod server;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmark harness for openai-key-server.
///
/// Starts the sandbox (fake OpenAI Admin API and fake Google) in this
/// process and the release build of the server as a child process, runs one
/// scenario, and prints a table and one JSON line with every figure. It
/// never fails because a target is missed: the exit code is non-zero only
/// when something broke.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about)]
struct Cli {
    /// Which scenario to run.
    #[command(subcommand)]
    scenario: Scenario,
    /// The server binary to run. Default: `openai-key-server` next to this
    /// executable, built with `cargo build --release` first when it is
    /// absent or older than the server's sources.
    #[arg(long, global = true, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Run `cargo build --release -p openai-key-server` first in any case.
    #[arg(long, global = true)]
    rebuild: bool,
    /// Extra server setting, `NAME=value`, applied last (repeatable), e.g.
    /// `--server-env RATE_LIMIT_PER_USER=0` to see what a feature costs.
    #[arg(long, global = true, value_name = "NAME=value")]
    server_env: Vec<String>,
    /// Threads of the simulated browsers' runtime.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    client_threads: u16,
    /// Threads of the sandbox's runtime. The sandbox stands in for Google
    /// and OpenAI, which run on other machines; one thread keeps it to one
    /// of this machine's cores, so that its work (an RSA signature per
    /// sign-in) queues in the sandbox instead of delaying the server.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    sandbox_threads: u16,
    /// Niceness of the sandbox's threads (0 to 19). On 2 cores the
    /// sandbox's signing would otherwise hold a core the server's thread
    /// has just been woken for; at a lower priority it works in the gaps,
    /// as a service on other machines would. Set with `renice`.
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    sandbox_nice: u8,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Full sign-in-to-key flows, C at a time: throughput, latency, server
    /// CPU per flow, peak memory, Admin API calls per flow.
    Issue(scenario::issue::Args),
    /// Expired accounts of this server plus foreign ones already in the
    /// project when the server starts: time until its sweep has deleted
    /// every expired one, calls, 429s, foreign accounts touched.
    Sweep(scenario::sweep::Args),
    /// Accounts expiring at random instants over a window (and keys issued
    /// during it): delay between each expiry and the account's deletion.
    Expiry(scenario::expiry::Args),
    /// Memory after start and after many flows; start-up time to ready.
    Idle(scenario::idle::Args),
    /// 1,000 idle connections held open: the server's memory and open
    /// files, and `/healthz` latency (a new connection per request) without
    /// and with them; with `--max-connections` below `--idle`, the idlest
    /// closed to make room.
    Connections(scenario::connections::Args),
    /// Signed-in people viewing "my keys" (`GET /`) at 1, 10 and 100 views
    /// per second against 1,000 live keys, revoking one every 50 views:
    /// Admin API calls per minute by route and listing passes (the target:
    /// one per `LISTING_MAX_AGE`, whatever the rate), view latency, server
    /// CPU per view. About 4 minutes.
    Dashboard(scenario::dashboard::Args),
    /// `openai-key-server key` as a tool runs it: wall time of printing the
    /// cached key (process start included; target 5 ms median, with
    /// `hyperfine`'s figure beside it when installed) and of getting a new
    /// one over the sandbox at 0 ms latency.
    Cli(scenario::cli::Args),
    /// One policy decision with 1,000 rules (the first match at the last
    /// rule, and none), for people and CI jobs, in process (target 10 µs
    /// p99); Admin API calls per issuance under a rule with scopes and
    /// under one without.
    Policy(scenario::policy::Args),
    /// Reading usage: Admin API calls of one read of the Usage API with
    /// 1,000 live keys (with and without prices), and the time from usage
    /// crossing a budget to the first refused key at a poll interval.
    Usage(scenario::usage::Args),
    /// Every scenario at the sizes of the issue's targets (about 11 minutes
    /// on 2 cores, 4 of them in the rate-limited sweep and 4 in
    /// `dashboard`), then every JSON line again and the binary size.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    server::set_overrides(&cli.server_env)?;
    let binary = server::locate(cli.server_bin, cli.rebuild)?;
    // Reqwest is built without a default TLS provider (as in the server).
    let _ = rustls::crypto::ring::default_provider().install_default();
    scenario::set_sandbox_threads(cli.sandbox_threads.into(), cli.sandbox_nice);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.into())
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Dropping the scenario on Ctrl-C drops (and so kills) its server.
        tokio::select! {
            result = run_scenario(cli.scenario, &binary) => result,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        }
    })
}

async fn run_scenario(scenario: Scenario, binary: &Path) -> anyhow::Result<()> {
    match scenario {
        Scenario::Issue(args) => scenario::issue::run(binary, &args).await?.print(),
        Scenario::Sweep(args) => scenario::sweep::run(binary, &args).await?.print(),
        Scenario::Expiry(args) => scenario::expiry::run(binary, &args).await?.print(),
        Scenario::Idle(args) => scenario::idle::run(binary, &args).await?.print(),
        Scenario::Connections(args) => scenario::connections::run(binary, &args).await?.print(),
        Scenario::Dashboard(args) => scenario::dashboard::run(binary, &args).await?.print(),
        Scenario::Cli(args) => scenario::cli::run(binary, &args).await?.print(),
        Scenario::Policy(args) => scenario::policy::run(binary, &args).await?.print(),
        Scenario::Usage(args) => scenario::usage::run(binary, &args).await?.print(),
        Scenario::All => scenario::all::run(binary).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
