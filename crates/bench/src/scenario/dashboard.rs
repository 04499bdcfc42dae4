//! `dashboard`: signed-in people looking at "my keys" (`GET /`) at 1, 10 and
//! 100 views per second against 1,000 live keys, with a revocation every
//! few views. A page reads a listing of the project at most
//! `LISTING_MAX_AGE` old, and concurrent views share one listing pass, so
//! what the views cost in Admin API calls should not grow with their rate:
//! one listing pass per period and replica (every service account, 100 per
//! page, and the project's key listing for last use). Also each view's
//! latency and the server's CPU per view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN};
use reqwest::{StatusCode, Url};
use sandbox::openai::SeedAccount;
use serde_json::{Map, Value, json};

use crate::flow;
use crate::procfs;
use crate::report::Report;
use crate::seed::{self, Rng};
use crate::stats::{Samples, round3};

/// The Admin API route of the project's key listing, as the sandbox counts.
const KEY_LIST: &str = "GET /v1/organization/projects/{project_id}/api_keys";

/// The paths of the two listings, as the sandbox's journal records them.
const SA_LIST_PATH: &str = "/v1/organization/projects/{project_id}/service_accounts";
const KEY_LIST_PATH: &str = "/v1/organization/projects/{project_id}/api_keys";

/// Accounts (and keys) per listing page, as the server asks for.
const PAGE_SIZE: usize = 100;

/// How many failures of each phase are kept as text for the notes.
const KEEP_ERRORS: usize = 5;

/// Knobs of the `dashboard` scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Live keys of this server in the project: seeded before the server
    /// starts, each a service account with one key, expiring about a day
    /// ahead.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// People who hold them (`user<N>@example.com`), dealt out evenly; each
    /// signs in once, with a browser (cookie jar) of their own.
    #[arg(long, default_value_t = 100)]
    pub(crate) users: usize,
    /// Page views per second across all people, comma-separated: one
    /// phase per rate, in this order.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 10.0, 100.0])]
    pub(crate) rates: Vec<f64>,
    /// Seconds each phase lasts (60: four periods of the default
    /// `LISTING_MAX_AGE`).
    #[arg(long, default_value_t = 60)]
    pub(crate) duration_s: u64,
    /// Every this many views, the viewer revokes one of their keys from the
    /// page (POST, then the 303 back to `/`, which is a view too); 0 never.
    #[arg(long, default_value_t = 50)]
    pub(crate) revoke_every: usize,
    /// Milliseconds a person takes between seeing the page and pressing
    /// Revoke. At 0 the POST follows its page at once, and since a page
    /// waits for a listing pass in progress, no revocation lands during a
    /// pass; with a delay some do, as with people.
    #[arg(long, default_value_t = 0)]
    pub(crate) think_ms: u64,
    /// `LISTING_MAX_AGE` of the server, in seconds: how old a listing a
    /// page may show.
    #[arg(long, default_value_t = 15)]
    pub(crate) listing_max_age_s: u64,
    /// Latency the sandbox adds to every Admin API answer, in ms.
    #[arg(long, default_value_t = 20)]
    pub(crate) latency_ms: u64,
    /// Seconds without any request, before the phases, over which the
    /// server's idle CPU is read (0: skip).
    #[arg(long, default_value_t = 15)]
    pub(crate) baseline_s: u64,
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

/// One signed-in person.
#[derive(Debug)]
struct User {
    email: String,
    /// Their browser's cookies, the session among them.
    jar: Jar,
    /// Their keys as the bench knows them.
    keys: Mutex<Held>,
}

/// A person's keys: live ones, and those being revoked (which a page may
/// or may not show yet).
#[derive(Debug, Default)]
struct Held {
    live: BTreeSet<String>,
    revoking: BTreeSet<String>,
}

impl User {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every view shares.
#[derive(Debug)]
struct Ctx {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT`, the origin of the forms.
    origin: String,
    /// `http://127.0.0.1:PORT/`.
    home: Url,
    /// Between a page and the revocation it leads to.
    think: Duration,
    users: Vec<User>,
}

/// My keys as one view saw it.
#[derive(Debug)]
struct Page {
    /// From sending the request to the last byte of the page.
    took: Duration,
    /// The `data-account` of each row.
    accounts: Vec<String>,
    /// The session's CSRF token, from the page's forms.
    csrf: String,
}

/// What one tick (a view, and on a revoking tick the revocation and the
/// view it leads back to) came to.
#[derive(Debug, Default)]
struct Outcome {
    views_ms: Vec<f64>,
    revoke_ms: Vec<f64>,
    revocations: usize,
    /// Revoking ticks whose person had no key left to revoke.
    revocations_skipped: usize,
    /// Requests that failed or answered something other than expected.
    errors: usize,
    /// Pages that answered 200 but listed other keys than the person holds.
    wrong_pages: usize,
    first_errors: Vec<String>,
}

impl Outcome {
    fn fail(&mut self, text: String) {
        self.errors += 1;
        if self.first_errors.len() < KEEP_ERRORS {
            self.first_errors.push(text);
        }
    }

    fn merge(&mut self, other: Self) {
        self.views_ms.extend(other.views_ms);
        self.revoke_ms.extend(other.revoke_ms);
        self.revocations += other.revocations;
        self.revocations_skipped += other.revocations_skipped;
        self.errors += other.errors;
        self.wrong_pages += other.wrong_pages;
        for text in other.first_errors {
            if self.first_errors.len() < KEEP_ERRORS {
                self.first_errors.push(text);
            }
        }
    }
}

/// The values of every `marker"…"` attribute in `page`, in order.
fn attribute_values<'a>(page: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    page.match_indices(marker).filter_map(move |(at, _)| {
        let rest = &page[at + marker.len()..];
        rest.find('"').map(|end| &rest[..end])
    })
}

/// Reads my keys from a page: the rows' accounts and the CSRF token.
fn parse_page(body: &str) -> anyhow::Result<(Vec<String>, String)> {
    ensure!(
        body.contains("<h1>My keys</h1>"),
        "not the my-keys page: {}",
        flow::excerpt(body)
    );
    let csrf = attribute_values(body, r#"name="csrf" value=""#)
        .next()
        .context("a my-keys page without a CSRF token")?
        .to_owned();
    let accounts = attribute_values(body, r#"data-account=""#)
        .map(str::to_owned)
        .collect();
    Ok((accounts, csrf))
}

/// `csrf=<token>`, form-encoded.
fn csrf_form(csrf: &str) -> String {
    let mut url = Url::parse("form:").expect("a constant URL");
    url.query_pairs_mut().append_pair("csrf", csrf);
    url.query().unwrap_or_default().to_owned()
}

/// `GET /` as `user`: must answer 200 with my keys.
async fn view(ctx: &Ctx, user: &User) -> anyhow::Result<Page> {
    let started = Instant::now();
    let response = flow::get(&ctx.client, &user.jar, &ctx.home).await?;
    let status = response.status();
    let body = response.text().await.context("reading the page")?;
    let took = started.elapsed();
    ensure!(
        status == StatusCode::OK,
        "GET / answered {status}: {}",
        flow::excerpt(&body)
    );
    let (accounts, csrf) = parse_page(&body)?;
    Ok(Page {
        took,
        accounts,
        csrf,
    })
}

/// Whether a page lists the person's keys: every key live both before and
/// after the view, and nothing but keys live or being revoked when it
/// began. `None` when it does; what is wrong otherwise.
fn wrong_keys(page: &Page, before: &BTreeSet<String>, after: &BTreeSet<String>) -> Option<String> {
    let shown: BTreeSet<&String> = page.accounts.iter().collect();
    let extra: Vec<&&String> = shown.iter().filter(|id| !before.contains(**id)).collect();
    let missing: Vec<&String> = after.iter().filter(|id| !shown.contains(id)).collect();
    if extra.is_empty() && missing.is_empty() && shown.len() == page.accounts.len() {
        return None;
    }
    Some(format!(
        "{} rows; {} not the person's (revoked already?) e.g. {:?}; {} of theirs missing e.g. {:?}",
        page.accounts.len(),
        extra.len(),
        extra.first(),
        missing.len(),
        missing.first()
    ))
}

/// A view by `user`, checked against what the bench knows they hold.
async fn checked_view(ctx: &Ctx, user: &User, outcome: &mut Outcome) -> Option<Page> {
    let before: BTreeSet<String> = {
        let held = user.held();
        held.live.union(&held.revoking).cloned().collect()
    };
    match view(ctx, user).await {
        Ok(page) => {
            outcome.views_ms.push(page.took.as_secs_f64() * 1000.0);
            let after = user.held().live.clone();
            if let Some(wrong) = wrong_keys(&page, &before, &after) {
                outcome.wrong_pages += 1;
                outcome.fail(format!("{}: wrong page: {wrong}", user.email));
            }
            Some(page)
        }
        Err(error) => {
            outcome.fail(format!("{}: {error:#}", user.email));
            None
        }
    }
}

/// `POST /keys/{account}/revoke` with the page's token: must answer 303
/// to `/`.
async fn revoke(ctx: &Ctx, user: &User, account: &str, csrf: &str) -> anyhow::Result<Duration> {
    let url = ctx.home.join(&format!("keys/{account}/revoke"))?;
    let mut request = ctx
        .client
        .post(url.clone())
        .header(ORIGIN, &ctx.origin)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(csrf_form(csrf));
    if let Some(cookies) = user.jar.cookies(&url) {
        request = request.header(COOKIE, cookies);
    }
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.context("reading the answer")?;
    let took = started.elapsed();
    ensure!(
        status == StatusCode::SEE_OTHER && location.as_deref() == Some("/"),
        "the revoke answered {status} to {location:?}: {}",
        flow::excerpt(&body)
    );
    Ok(took)
}

/// One tick: a view by person `index`; on a revoking tick, the revocation
/// of one of the keys it shows, and the view the 303 leads back to.
async fn tick(ctx: Arc<Ctx>, index: usize, revoking: bool) -> Outcome {
    let user = &ctx.users[index];
    let mut outcome = Outcome::default();
    let Some(page) = checked_view(&ctx, user, &mut outcome).await else {
        return outcome;
    };
    if !revoking {
        return outcome;
    }
    if !ctx.think.is_zero() {
        tokio::time::sleep(ctx.think).await;
    }
    let chosen = {
        let mut held = user.held();
        let chosen = page
            .accounts
            .iter()
            .find(|id| held.live.contains(*id))
            .cloned();
        if let Some(id) = &chosen {
            held.live.remove(id);
            held.revoking.insert(id.clone());
        }
        chosen
    };
    let Some(account) = chosen else {
        outcome.revocations_skipped += 1;
        return outcome;
    };
    match revoke(&ctx, user, &account, &page.csrf).await {
        Ok(took) => {
            // Gone: from now on no page may show it.
            user.held().revoking.remove(&account);
            outcome.revocations += 1;
            outcome.revoke_ms.push(took.as_secs_f64() * 1000.0);
            // Where the 303 leads, as a browser follows it.
            checked_view(&ctx, user, &mut outcome).await;
        }
        // Left among those being revoked: it may or may not be gone.
        Err(error) => outcome.fail(format!("{}: revoking {account}: {error:#}", user.email)),
    }
    outcome
}

/// Where the round robins over people stand, across phases.
#[derive(Debug, Default)]
struct Cursor {
    ticks: usize,
    viewer: usize,
    revoker: usize,
}

/// One phase's readings.
#[derive(Debug)]
struct Phase {
    rate: f64,
    outcome: Outcome,
    /// From the first tick until the phase's time was up and every tick
    /// had finished.
    elapsed: Duration,
    calls: BTreeMap<String, u64>,
    /// Listings begun (first pages asked for), of the service accounts and
    /// of the keys; `None` once the sandbox's journal is full.
    passes: Option<Passes>,
    server_cpu: procfs::Cpu,
    bench_cpu: procfs::Cpu,
    machine: procfs::MachineCpu,
    /// Service accounts and keys in the project when it began.
    accounts_at_start: usize,
    keys_at_start: usize,
}

impl Phase {
    fn views(&self) -> usize {
        self.outcome.views_ms.len()
    }

    fn minutes(&self) -> f64 {
        self.elapsed.as_secs_f64() / 60.0
    }

    fn calls_to(&self, route: &str) -> u64 {
        self.calls.get(route).copied().unwrap_or(0)
    }

    fn server_cpu_ms(&self) -> f64 {
        self.server_cpu.total().as_secs_f64() * 1000.0
    }

    /// Full listings of the service accounts begun: first pages from the
    /// journal, or else pages over the pages a listing takes at the start.
    fn listing_passes(&self) -> f64 {
        self.passes.map_or_else(
            || {
                self.calls_to(super::SA_LIST) as f64
                    / self.accounts_at_start.div_ceil(PAGE_SIZE).max(1) as f64
            },
            |p| p.accounts as f64,
        )
    }

    /// Key listings (for last use) begun, the same way.
    fn key_listings(&self) -> f64 {
        self.passes.map_or_else(
            || {
                self.calls_to(KEY_LIST) as f64
                    / self.keys_at_start.div_ceil(PAGE_SIZE).max(1) as f64
            },
            |p| p.keys as f64,
        )
    }

    /// Listing calls (service accounts and keys) per minute.
    fn listing_calls_per_min(&self) -> f64 {
        (self.calls_to(super::SA_LIST) + self.calls_to(KEY_LIST)) as f64 / self.minutes()
    }
}

/// Runs `rate` views per second for `duration`, open loop: each tick starts
/// on time whether or not the ones before have finished.
async fn run_phase(
    ctx: &Arc<Ctx>,
    rate: f64,
    duration: Duration,
    revoke_every: usize,
    cursor: &mut Cursor,
) -> Outcome {
    let ticks = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let users = ctx.users.len();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(ticks);
    for i in 0..ticks {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        cursor.ticks += 1;
        let revoking = revoke_every > 0 && cursor.ticks.is_multiple_of(revoke_every);
        // Revocations go round the people on their own, so that each loses
        // about as many keys.
        let index = if revoking {
            cursor.revoker += 1;
            (cursor.revoker - 1) % users
        } else {
            cursor.viewer += 1;
            (cursor.viewer - 1) % users
        };
        tasks.push(tokio::spawn(tick(Arc::clone(ctx), index, revoking)));
    }
    tokio::time::sleep_until(start + duration).await;
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(done) => outcome.merge(done),
            Err(error) => outcome.fail(format!("a view's task failed: {error}")),
        }
    }
    outcome
}

/// Listings begun: calls for the first page (no `after`).
#[derive(Debug, Clone, Copy, Default)]
struct Passes {
    accounts: u64,
    keys: u64,
}

/// Listings begun so far, from the sandbox's journal; `None` once it is
/// full (it keeps its first 20,000 requests).
fn passes_so_far(sandbox: &sandbox::Sandbox) -> Option<Passes> {
    const JOURNAL_ENTRIES: usize = 20_000;
    let entries = sandbox.openai.journal().entries();
    if entries.len() >= JOURNAL_ENTRIES {
        return None;
    }
    let mut passes = Passes::default();
    for entry in entries.iter().filter(|e| e.method == "GET") {
        let first = !entry
            .query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("after=")));
        match entry.route.as_deref() {
            Some(SA_LIST_PATH) if first => passes.accounts += 1,
            Some(KEY_LIST_PATH) if first => passes.keys += 1,
            _ => {}
        }
    }
    Some(passes)
}

/// Service accounts and keys in the project now.
fn project_size(sandbox: &sandbox::Sandbox, project: &str) -> (usize, usize) {
    let accounts = sandbox.openai.service_accounts(project);
    let keys = accounts.iter().map(|a| a.keys.len()).sum();
    (accounts.len(), keys)
}

/// Runs the scenario and returns its figures.
pub(crate) async fn run(binary: &Path, args: &Args) -> anyhow::Result<Report> {
    ensure!(args.users > 0, "--users must be at least 1");
    ensure!(
        !args.rates.is_empty() && args.rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates must be positive numbers"
    );
    ensure!(args.duration_s > 0, "--duration-s must be at least 1");
    let sandbox = super::sandbox(sandbox::openai::Config {
        latency_ms: args.latency_ms,
        ..sandbox::openai::Config::default()
    })
    .await?;
    let project = sandbox.openai.create_project("personal");
    let now = seed::unix_now();
    let mut rng = Rng::new(args.seed);
    let emails: Vec<String> = (0..args.users)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    let seeds: Vec<SeedAccount> = (0..args.keys)
        .map(|i| {
            // About a day ahead, so that nothing expires during the run.
            let expiry = now + 86_400 + rng.below(3600) as i64;
            let name = seed::our_name(expiry, &rng.nonce(), &emails[i % args.users]);
            SeedAccount::new(name, now - rng.below(3600) as i64).expiring_at(expiry)
        })
        .collect();
    let seeded = sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .map_err(|e| anyhow::anyhow!("seeding the sandbox: {e:?}"))?;
    let mut held: Vec<Held> = (0..args.users).map(|_| Held::default()).collect();
    for (i, account) in seeded.into_iter().enumerate() {
        held[i % args.users].live.insert(account.id);
    }
    sandbox.openai.reset_counters();

    let mut ready = super::start(
        binary,
        &sandbox,
        vec![
            ("EXPIRATION", "86400".to_owned()),
            ("CLEANUP_INTERVAL", "3600".to_owned()),
            // As deployments that name their project do.
            ("OPENAI_PROJECT_ID", project.clone()),
            // Signing in starts a session and mints nothing: the people
            // already hold their keys.
            ("ISSUE_ON_SIGN_IN", "false".to_owned()),
            ("LISTING_MAX_AGE", args.listing_max_age_s.to_string()),
            ("RATE_LIMIT_PER_USER", "0".to_owned()),
        ],
    )
    .await?;
    super::wait_for_startup_sweep(&sandbox).await?;
    let base_url = ready.server.base_url.clone();

    // Everyone signs in once, one after the other (the provider hands out
    // the queued identities in order).
    let signing_in = Instant::now();
    let mut users = Vec::with_capacity(args.users);
    for (email, held) in emails.into_iter().zip(held) {
        let jar = flow::sign_in_session(&ready.client, &base_url, &sandbox.oidc, &email)
            .await
            .with_context(|| format!("signing {email} in"))?;
        users.push(User {
            email,
            jar,
            keys: Mutex::new(held),
        });
    }
    let sign_in = signing_in.elapsed();
    let ctx = Arc::new(Ctx {
        client: ready.client.clone(),
        origin: base_url.clone(),
        home: Url::parse(&format!("{base_url}/"))?,
        think: Duration::from_millis(args.think_ms),
        users,
    });

    // Each person's page once, checked, before anything is measured: the
    // first one also reads the key listing for the first time.
    let mut warmup = Outcome::default();
    for index in 0..ctx.users.len() {
        warmup.merge(tick(Arc::clone(&ctx), index, false).await);
    }
    ensure!(
        warmup.errors == 0,
        "the warm-up views failed: {:?}\n{}",
        warmup.first_errors,
        ready.server.log_tail()
    );

    // The server's CPU with no request at all.
    let (idle_cpu_ms_per_s, idle_calls) = if args.baseline_s > 0 {
        let calls_before = sandbox.openai.counters();
        let cpu_before = ready.server.cpu()?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.baseline_s)).await;
        let cpu = ready.server.cpu()?.since(cpu_before);
        let seconds = started.elapsed().as_secs_f64();
        let calls = super::calls_between(&calls_before, &sandbox.openai.counters());
        (
            Some(cpu.total().as_secs_f64() * 1000.0 / seconds),
            Some(calls.values().sum::<u64>()),
        )
    } else {
        (None, None)
    };

    let duration = Duration::from_secs(args.duration_s);
    let mut cursor = Cursor::default();
    let mut phases = Vec::with_capacity(args.rates.len());
    for &rate in &args.rates {
        let (accounts_at_start, keys_at_start) = project_size(&sandbox, &project);
        let calls_before = sandbox.openai.counters();
        let passes_before = passes_so_far(&sandbox);
        let cpu_before = ready.server.cpu()?;
        let bench_before = procfs::cpu_time(std::process::id())?;
        let machine_before = procfs::machine_cpu()?;
        let started = Instant::now();
        let outcome = run_phase(&ctx, rate, duration, args.revoke_every, &mut cursor).await;
        let elapsed = started.elapsed();
        let server_cpu = ready.server.cpu()?.since(cpu_before);
        let bench_cpu = procfs::cpu_time(std::process::id())?.since(bench_before);
        let machine = procfs::machine_cpu()?.since(machine_before);
        let calls = super::calls_between(&calls_before, &sandbox.openai.counters());
        let passes = match (passes_before, passes_so_far(&sandbox)) {
            (Some(before), Some(after)) => Some(Passes {
                accounts: after.accounts - before.accounts,
                keys: after.keys - before.keys,
            }),
            _ => None,
        };
        ready.server.ensure_running()?;
        phases.push(Phase {
            rate,
            outcome,
            elapsed,
            calls,
            passes,
            server_cpu,
            bench_cpu,
            machine,
            accounts_at_start,
            keys_at_start,
        });
    }
    let memory = ready.server.memory()?;
    let (accounts_left, _) = project_size(&sandbox, &project);

    Ok(report(
        args,
        &ready,
        &Summary {
            sign_in,
            warmup: &warmup,
            idle_cpu_ms_per_s,
            idle_calls,
            phases: &phases,
            accounts_left,
            rss_peak_mib: memory.peak_mib(),
        },
    ))
}

/// What `run` measured besides the phases' own readings.
struct Summary<'a> {
    sign_in: Duration,
    warmup: &'a Outcome,
    idle_cpu_ms_per_s: Option<f64>,
    idle_calls: Option<u64>,
    phases: &'a [Phase],
    accounts_left: usize,
    rss_peak_mib: f64,
}

/// A rate as a JSON key: `1`, `10`, `2.5`.
fn rate_key(rate: f64) -> String {
    format!("{rate}")
}

fn f(value: Option<f64>) -> Value {
    value
        .filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(round3(v)))
}

/// One phase's figures.
fn phase_json(phase: &Phase, args: &Args, idle_cpu_ms_per_s: Option<f64>) -> Value {
    let outcome = &phase.outcome;
    let views = Samples::new(outcome.views_ms.clone());
    let revokes = Samples::new(outcome.revoke_ms.clone());
    let per_view = phase.views().max(1) as f64;
    let minutes = phase.minutes();
    let seconds = phase.elapsed.as_secs_f64();
    let admin_calls: u64 = phase.calls.values().sum();
    let sa_pages = phase.calls_to(super::SA_LIST);
    let key_pages = phase.calls_to(KEY_LIST);
    let pages_per_pass = phase.accounts_at_start.div_ceil(PAGE_SIZE).max(1);
    let key_pages_per_pass = phase.keys_at_start.div_ceil(PAGE_SIZE).max(1);
    let passes = phase.listing_passes();
    let cpu_ms = phase.server_cpu_ms();
    let mut map = Map::new();
    let mut put = |key: &str, value: Value| {
        map.insert(key.to_owned(), value);
    };
    put("target_views_per_s", f(Some(phase.rate)));
    put("seconds", f(Some(seconds)));
    put("views", json!(phase.views()));
    put("views_per_s", f(Some(phase.views() as f64 / seconds)));
    put("revocations", json!(outcome.revocations));
    put("revocations_skipped", json!(outcome.revocations_skipped));
    put("view_ms_p50", f(views.median()));
    put("view_ms_p99", f(views.percentile(99.0)));
    put("view_ms_max", f(views.max()));
    put("revoke_ms_p50", f(revokes.median()));
    put("revoke_ms_p99", f(revokes.percentile(99.0)));
    put("errors", json!(outcome.errors));
    put("wrong_pages", json!(outcome.wrong_pages));
    put("accounts_at_start", json!(phase.accounts_at_start));
    put("admin_calls", json!(admin_calls));
    put("admin_calls_per_min", f(Some(admin_calls as f64 / minutes)));
    put("service_account_list_calls", json!(sa_pages));
    put("key_list_calls", json!(key_pages));
    put("delete_calls", json!(phase.calls_to(super::SA_DELETE)));
    put(
        "listing_calls_per_min",
        f(Some(phase.listing_calls_per_min())),
    );
    put("pages_per_listing_pass", json!(pages_per_pass));
    put("key_list_pages_per_pass", json!(key_pages_per_pass));
    put("listing_passes", f(Some(passes)));
    put("listing_passes_per_min", f(Some(passes / minutes)));
    put("key_listings", f(Some(phase.key_listings())));
    put(
        "target_listing_passes",
        f(Some(seconds / args.listing_max_age_s.max(1) as f64)),
    );
    put("admin_calls_by_route", super::calls_json(&phase.calls, 1.0));
    put("server_cpu_ms", f(Some(cpu_ms)));
    put("server_cpu_ms_per_view", f(Some(cpu_ms / per_view)));
    put(
        "server_cpu_user_ms_per_view",
        f(Some(
            phase.server_cpu.user.as_secs_f64() * 1000.0 / per_view,
        )),
    );
    put(
        "server_cpu_system_ms_per_view",
        f(Some(
            phase.server_cpu.system.as_secs_f64() * 1000.0 / per_view,
        )),
    );
    put(
        "server_cpu_ms_per_view_less_idle",
        f(idle_cpu_ms_per_s.map(|idle| (cpu_ms - idle * seconds) / per_view)),
    );
    put(
        "bench_cpu_ms_per_view",
        f(Some(
            phase.bench_cpu.total().as_secs_f64() * 1000.0 / per_view,
        )),
    );
    put("machine_cpu_busy_pct", f(Some(phase.machine.busy_pct())));
    Value::Object(map)
}

/// The figures of the whole run.
fn report(args: &Args, ready: &super::Ready, summary: &Summary<'_>) -> Report {
    let phases = summary.phases;
    let mut rates = Map::new();
    for phase in phases {
        rates.insert(
            rate_key(phase.rate),
            phase_json(phase, args, summary.idle_cpu_ms_per_s),
        );
    }
    let listing_per_min: Vec<f64> = phases.iter().map(Phase::listing_calls_per_min).collect();
    let spread = match (
        listing_per_min.iter().copied().reduce(f64::min),
        listing_per_min.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) if low > 0.0 => Some(high / low),
        _ => None,
    };
    // CPU of the views themselves: the difference between the busiest and
    // the quietest phase, over the difference in views. What both phases
    // pay alike (the listing passes, the idle server) cancels out.
    let slowest = phases.iter().min_by(|a, b| a.rate.total_cmp(&b.rate));
    let busiest = phases.iter().max_by(|a, b| a.rate.total_cmp(&b.rate));
    let marginal = match (slowest, busiest) {
        (Some(low), Some(high)) if high.views() > low.views() => {
            Some((high.server_cpu_ms() - low.server_cpu_ms()) / (high.views() - low.views()) as f64)
        }
        _ => None,
    };
    let errors: usize = phases.iter().map(|p| p.outcome.errors).sum();
    let wrong_pages: usize = phases.iter().map(|p| p.outcome.wrong_pages).sum();
    let warmup = Samples::new(summary.warmup.views_ms.clone());

    let mut report = Report::new("dashboard");
    report
        .set("keys", args.keys)
        .set("users", args.users)
        .set_f(
            "keys_per_user",
            Some(args.keys as f64 / args.users.max(1) as f64),
        )
        .set("duration_s", args.duration_s)
        .set("listing_max_age_s", args.listing_max_age_s)
        .set("revoke_every", args.revoke_every)
        .set("think_ms", args.think_ms)
        .set("sandbox_latency_ms", args.latency_ms)
        .set_ms("startup_ms", ready.startup)
        .set_f("sign_in_s", Some(summary.sign_in.as_secs_f64()))
        .set_f("warmup_view_ms_p50", warmup.median())
        .set("baseline_s", args.baseline_s)
        .set_f("idle_server_cpu_ms_per_s", summary.idle_cpu_ms_per_s)
        .set(
            "idle_admin_calls",
            summary.idle_calls.map_or(Value::Null, Value::from),
        )
        .set("rates", Value::Object(rates))
        .set_f("listing_calls_per_min_max_over_min", spread)
        .set_f("marginal_server_cpu_ms_per_view", marginal)
        .set("errors", errors)
        .set("wrong_pages", wrong_pages)
        .set("accounts_left", summary.accounts_left)
        .set_f("server_rss_mb_peak", Some(summary.rss_peak_mib))
        .set("sandbox_nice", super::sandbox_nice())
        .set("server_log_lines", ready.server.log_lines());
    for phase in phases {
        let o = &phase.outcome;
        let views = Samples::new(o.views_ms.clone());
        let sa = phase.calls_to(super::SA_LIST);
        let passes = phase.listing_passes();
        report.note(format!(
            "{} views/s: {} views in {:.1} s, {} revoked; view p50 {:.3} / p99 {:.3} / max {:.3} ms; \
             Admin API {:.1} calls/min ({} account-list, {} key-list, {} delete); \
             {:.2} listing passes/min (target {:.2}); server CPU {:.3} ms/view; {} errors, {} wrong pages",
            rate_key(phase.rate),
            phase.views(),
            phase.elapsed.as_secs_f64(),
            o.revocations,
            views.median().unwrap_or(f64::NAN),
            views.percentile(99.0).unwrap_or(f64::NAN),
            views.max().unwrap_or(f64::NAN),
            phase.calls.values().sum::<u64>() as f64 / phase.minutes(),
            sa,
            phase.calls_to(KEY_LIST),
            phase.calls_to(super::SA_DELETE),
            passes / phase.minutes(),
            60.0 / args.listing_max_age_s.max(1) as f64,
            phase.server_cpu_ms() / phase.views().max(1) as f64,
            o.errors,
            o.wrong_pages,
        ));
        for error in &o.first_errors {
            report.note(format!("{} views/s: error: {error}", rate_key(phase.rate)));
        }
    }
    report.note(
        "views count every GET / measured, the one each revocation's 303 leads back to \
         included; listing_passes and key_listings count the listings begun (calls for a \
         first page, from the sandbox's journal), each one call per 100 accounts or keys; \
         errors include wrong_pages: pages that listed a key the person no longer holds, \
         or missed one they do",
    );
    report.note(
        "server_cpu_ms_per_view is the server's CPU over the phase (views, revocations, \
         listing passes, the idle server) divided by the views; _less_idle takes off the \
         idle server's; marginal_server_cpu_ms_per_view is the CPU difference between the \
         busiest and the quietest phase over their difference in views, in which what \
         both pay alike (the listing passes) cancels out. /proc counts CPU in 10 ms ticks",
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_gives_its_rows_and_token() {
        let page = r#"<h1>My keys</h1>
            <input type="hidden" name="csrf" value="tok-_1">
            <tr class="key" data-account="svc_acct_a"><td></td></tr>
            <tr class="key" data-account="svc_acct_b"><td></td></tr>
            <input type="hidden" name="csrf" value="tok-_1">"#;
        let (accounts, csrf) = parse_page(page).unwrap();
        assert_eq!(accounts, ["svc_acct_a", "svc_acct_b"]);
        assert_eq!(csrf, "tok-_1");
        assert!(parse_page("<h1>Sign in</h1>").is_err());
        assert_eq!(csrf_form("a+b/="), "csrf=a%2Bb%2F%3D");
    }

    #[test]
    fn a_page_must_list_exactly_the_keys_held() {
        let set = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let page = |ids: &[&str]| Page {
            took: Duration::ZERO,
            accounts: ids.iter().map(|s| (*s).to_owned()).collect(),
            csrf: String::new(),
        };
        // A key being revoked may show or not.
        let before = set(&["a", "b", "c"]);
        let after = set(&["a", "b"]);
        assert!(wrong_keys(&page(&["a", "b", "c"]), &before, &after).is_none());
        assert!(wrong_keys(&page(&["a", "b"]), &before, &after).is_none());
        assert!(wrong_keys(&page(&["a"]), &before, &after).is_some());
        assert!(wrong_keys(&page(&["a", "b", "x"]), &before, &after).is_some());
        assert!(wrong_keys(&page(&["a", "a", "b"]), &before, &after).is_some());
    }
}
