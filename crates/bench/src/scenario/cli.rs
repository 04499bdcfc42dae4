//! `cli`: the wall time of `openai-key-server key` as a coding tool runs
//! it, process start included: printing the cached key (the common case,
//! target ≤ 5 ms median), and getting a new one over the sandbox at 0 ms
//! latency (`key --renew`). The terminal is signed in first through the
//! real loopback sign-in, with this harness as the browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reqwest::Url;
use reqwest::cookie::Jar;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::flow;
use crate::report::Report;
use crate::stats::{Samples, round3};

/// Knobs of the `cli` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// `key` calls that print the cached key.
    #[arg(long, default_value_t = 300)]
    pub(crate) cached: usize,
    /// `key --renew` calls, each of which gets a new key.
    #[arg(long, default_value_t = 50)]
    pub(crate) renewing: usize,
}

impl Default for Args {
    fn default() -> Self {
        super::defaults()
    }
}

/// A terminal's directories, removed at the end.
struct Home(PathBuf);

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(binary: &Path, home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(Stdio::null());
    command
}

/// Runs the CLI `runs` times with `args`; each run's wall time in ms.
fn time_runs(binary: &Path, home: &Path, args: &[&str], runs: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let output = cli(binary, home, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("running the CLI")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            output.status.success() && output.stdout.starts_with(b"sk-"),
            "`key {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(times)
}

/// `login` through the loopback, with this harness as the browser.
async fn login(binary: &Path, home: &Path, base_url: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::from(cli(
        binary,
        home,
        &["login", "--server", base_url, "--no-browser"],
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .context("starting `login`")?;
    let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let url = loop {
        let Some(line) = lines.next_line().await? else {
            bail!("`login` ended without printing the sign-in address");
        };
        if let Some(at) = line.find("http")
            && line.contains("/cli/login?")
        {
            break Url::parse(line[at..].trim())?;
        }
    };
    let client = flow::client()?;
    let jar = Jar::default();
    let (authorize, _) = flow::redirect(&client, &jar, &url)
        .await
        .context("/cli/login")?;
    let (callback, _) = flow::redirect(&client, &jar, &authorize)
        .await
        .context("the provider")?;
    let (loopback, _) = flow::redirect(&client, &jar, &callback)
        .await
        .context("the callback")?;
    flow::get(&client, &jar, &loopback)
        .await
        .context("the loopback")?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("`login` did not end")??;
    ensure!(status.success(), "`login` failed");
    Ok(())
}

/// `hyperfine`'s median for the cached call, in ms, if it is installed.
fn hyperfine(binary: &Path, home: &Path) -> Option<f64> {
    let export = home.join("hyperfine.json");
    // hyperfine runs the command with its own environment, which is the
    // terminal's: no shell, no `env` in between.
    let status = Command::new("hyperfine")
        .args(["-N", "--warmup", "20", "--runs", "300", "--export-json"])
        .arg(&export)
        .arg(format!("{} key", binary.display()))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).ok()?).ok()?;
    json["results"][0]["median"].as_f64().map(|s| s * 1000.0)
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let ready = super::start(
        binary,
        &sandbox,
        vec![
            ("MAX_KEYS_PER_USER", "0".to_owned()),
            ("RATE_LIMIT_PER_USER", "0".to_owned()),
        ],
    )
    .await?;
    super::wait_for_startup_sweep(&sandbox).await?;
    let home = Home(std::env::temp_dir().join(format!("bench-cli-{}", std::process::id())));
    std::fs::create_dir_all(&home.0)?;
    let root = home.0.clone();
    login(binary, &root, &ready.server.base_url).await?;

    // The first call mints the key the cached calls print.
    time_runs(binary, &root, &["key"], 1)?;
    let calls = || sandbox.openai.journal().counters().values().sum::<u64>();
    let before = calls();
    let (bin, dir) = (binary.to_owned(), root.clone());
    let runs = args.cached;
    let cached =
        tokio::task::spawn_blocking(move || time_runs(&bin, &dir, &["key"], runs)).await??;
    let calls_during_cached = calls() - before;
    let (bin, dir) = (binary.to_owned(), root.clone());
    let hyperfine_ms = tokio::task::spawn_blocking(move || hyperfine(&bin, &dir)).await?;
    let (bin, dir) = (binary.to_owned(), root.clone());
    let runs = args.renewing;
    let renewing =
        tokio::task::spawn_blocking(move || time_runs(&bin, &dir, &["key", "--renew"], runs))
            .await??;

    let cached = Samples::new(cached);
    let renewing = Samples::new(renewing);
    let mut report = Report::new("cli");
    report
        .set("cached_calls", args.cached)
        .set_f("cached_ms_p50", cached.median().map(round3))
        .set_f("cached_ms_p90", cached.percentile(90.0).map(round3))
        .set_f("cached_ms_p99", cached.percentile(99.0).map(round3))
        .set_f("cached_ms_min", cached.min().map(round3))
        .set("admin_api_calls_during_cached", calls_during_cached)
        .set_f("hyperfine_cached_ms_median", hyperfine_ms.map(round3))
        .set("renewing_calls", args.renewing)
        .set_f("renewing_ms_p50", renewing.median().map(round3))
        .set_f("renewing_ms_p90", renewing.percentile(90.0).map(round3))
        .set_f("renewing_ms_max", renewing.max().map(round3));
    if hyperfine_ms.is_none() {
        report.note(
            "hyperfine is not installed (apt-get install hyperfine): only the harness's own timing",
        );
    }
    report.note("target: cached call <= 5 ms median, process start included");
    Ok(report)
}
