//! `usage`: what reading usage costs and how soon a budget bites. With
//! 1,000 live keys of ours in the project (each with usage), the Admin API
//! calls of one read of the Usage API (by route, counted by the sandbox),
//! with and without prices (the Costs API); and, with a budget of tokens
//! per day, the time from usage crossing it (recorded in the sandbox) to
//! the first refused key, at a given `USAGE_POLL_INTERVAL`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandbox::openai::SeedAccount;

use crate::report::Report;
use crate::seed::{self, Rng};
use crate::server::Server;
use crate::stats::round3;

const USAGE_ROUTE: &str = "GET /v1/organization/usage/completions";

/// Knobs of the `usage` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Live keys of ours in the project.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// `USAGE_POLL_INTERVAL` of the server, in seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) poll_s: u64,
    /// Times the delay to refusal is measured.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
}

impl Default for Args {
    fn default() -> Self {
        super::defaults()
    }
}

/// Admin API calls of one read, by route: the counters between two reads.
async fn calls_of_one_read(
    sandbox: &sandbox::Sandbox,
    timeout: Duration,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let deadline = Instant::now() + timeout;
    let reads = |s: &sandbox::Sandbox| s.openai.journal().count(USAGE_ROUTE);
    let first = reads(sandbox);
    while reads(sandbox) == first {
        anyhow::ensure!(Instant::now() < deadline, "the server never read usage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From just after one read to just after the next.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = sandbox.openai.counters();
    let second = reads(sandbox);
    while reads(sandbox) == second {
        anyhow::ensure!(Instant::now() < deadline, "the server read usage once only");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(super::calls_between(&before, &sandbox.openai.counters()))
}

/// One server over `keys` seeded keys with usage; the calls of one read.
async fn one_read(
    binary: &Path,
    args: &Args,
    prices: bool,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let project = sandbox.openai.create_project("usage");
    let now = seed::unix_now();
    let mut rng = Rng::new(0x05a6e);
    let seeds: Vec<SeedAccount> = (0..args.keys)
        .map(|i| {
            let expiry = now + 3600 + rng.below(80_000) as i64;
            let name = seed::our_name(expiry, &rng.nonce(), &format!("user{i}@example.com"));
            SeedAccount::new(name, now - 60).expiring_at(expiry)
        })
        .collect();
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .map_err(|e| anyhow::anyhow!("seeding the sandbox: {e:?}"))?;
    for account in sandbox.openai.service_accounts(&project) {
        for key in &account.keys {
            sandbox
                .openai
                .add_usage_by_id(&project, &key.id, "gpt-4o-mini", (1000, 100), now);
        }
    }
    let mut env = vec![
        ("OPENAI_PROJECT_ID", project.clone()),
        ("USAGE_POLL_INTERVAL", args.poll_s.to_string()),
        ("CLEANUP_INTERVAL", "3600".to_owned()),
    ];
    if prices {
        env.push((
            "MODEL_PRICES",
            "gpt-4o-mini=0.15/0.60,*=2.50/10.00".to_owned(),
        ));
    }
    let client = crate::flow::client()?;
    let mut server = Server::spawn(binary, &sandbox, env)?;
    server.wait_ready(&client).await?;
    let calls = calls_of_one_read(&sandbox, Duration::from_secs(args.poll_s * 4 + 30))
        .await
        .with_context(|| server.log_tail())?;
    Ok(calls)
}

/// Seconds from usage crossing a budget to the first refused key, over
/// `rounds` people.
async fn delays_to_refusal(binary: &Path, args: &Args) -> anyhow::Result<Vec<f64>> {
    let sandbox = super::sandbox(sandbox::openai::Config::default()).await?;
    let ready = super::start(
        binary,
        &sandbox,
        vec![
            ("USAGE_POLL_INTERVAL", args.poll_s.to_string()),
            ("TOKENS_PER_DAY", "1000".to_owned()),
            ("MAX_KEYS_PER_USER", "0".to_owned()),
            ("RATE_LIMIT_PER_USER", "0".to_owned()),
        ],
    )
    .await?;
    let base = &ready.server.base_url;
    let mut delays = Vec::new();
    for round in 0..args.rounds {
        let email = format!("budget{round}@example.com");
        let jar = reqwest::cookie::Jar::default();
        sandbox
            .oidc
            .queue_identity(sandbox::oidc::Identity::workspace(&email));
        let home = reqwest::Url::parse(&format!("{base}/"))?;
        let (authorize, _) = crate::flow::redirect(&ready.client, &jar, &home).await?;
        let (callback, _) = crate::flow::redirect(&ready.client, &jar, &authorize).await?;
        let page = crate::flow::get(&ready.client, &jar, &callback)
            .await?
            .text()
            .await?;
        let key = page
            .split("id=\"key\"")
            .nth(1)
            .and_then(|rest| rest.split("value=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .context("the key page shows a key")?
            .to_owned();
        anyhow::ensure!(
            sandbox.openai.add_usage(&key, "gpt-4o-mini", 1500, 0),
            "the key is unknown to the sandbox"
        );
        let crossed = Instant::now();
        let deadline = crossed + Duration::from_secs(args.poll_s * 3 + 30);
        loop {
            anyhow::ensure!(Instant::now() < deadline, "no key was ever refused");
            let form = crate::flow::get(&ready.client, &jar, &home)
                .await?
                .text()
                .await?;
            let csrf = form
                .split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .context("my keys has a form")?
                .to_owned();
            let one = form
                .split("name=\"form\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .context("my keys has a new-key form")?
                .to_owned();
            let response = ready
                .client
                .post(format!("{base}/keys"))
                .header(
                    reqwest::header::COOKIE,
                    reqwest::cookie::CookieStore::cookies(&jar, &home).context("a session")?,
                )
                .form(&[("csrf", csrf.as_str()), ("form", one.as_str())])
                .send()
                .await?;
            if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                delays.push(crossed.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(delays)
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    let without = one_read(binary, args, false).await?;
    let with = one_read(binary, args, true).await?;
    let delays = delays_to_refusal(binary, args).await?;
    let total = |calls: &std::collections::BTreeMap<String, u64>| calls.values().sum::<u64>();
    let mut report = Report::new("usage");
    report
        .set("keys", args.keys)
        .set("poll_interval_s", args.poll_s)
        .set("admin_calls_per_read", total(&without))
        .set("admin_calls_per_read_with_prices", total(&with))
        .set("calls_per_read", super::calls_json(&without, 1.0))
        .set("calls_per_read_with_prices", super::calls_json(&with, 1.0))
        .set(
            "delay_to_refusal_s",
            delays.iter().map(|d| round3(*d)).collect::<Vec<_>>(),
        )
        .set_f(
            "delay_to_refusal_max_s",
            delays.iter().copied().reduce(f64::max).map(round3),
        );
    report.note(
        "a read lists the keys (100 a page, to learn their ids) and asks the Usage API once per project; with prices, the Costs API once more. The delay from usage to refusal is at most one poll interval plus a request, on top of OpenAI's own reporting delay (0 in the sandbox)",
    );
    Ok(report)
}
