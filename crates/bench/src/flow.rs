//! The sign-in flow as a browser walks it, hop by hop with redirects off:
//! `GET /` → the provider's authorization URL → the callback → the key page,
//! and running many of them at a bounded concurrency; and a sign-in that
//! only starts a session (`ISSUE_ON_SIGN_IN=false`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use sandbox::oidc::{FakeOidc, Identity};

/// What every key page shows.
const KEY_MARKER: &str = "sk-svcacct-";

/// How long one hop may take before the flow counts as an error.
const HOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client of every simulated browser: redirects off, connections
/// kept alive and shared (cookies are kept per flow, not per client).
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HOP_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// Times of one completed flow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// From the first request to the last byte of the key page.
    pub(crate) total: Duration,
    /// The two hops answered by the key server (`GET /` and the callback),
    /// which include its calls to the token endpoint and the Admin API;
    /// the browser's visit to the provider is left out.
    pub(crate) server: Duration,
    /// Of `server`, how long the key server said it waited on the sandbox
    /// (its `Server-Timing: upstream`). `server - upstream` is the latency
    /// the server adds: its own work, its queueing, and the loopback hops.
    pub(crate) upstream: Duration,
    /// Of `server`, the time the key server said it spent on the requests
    /// itself (`Server-Timing: app`): `server - upstream` without the
    /// network and the wait before the server reads a request.
    pub(crate) app: Duration,
}

impl Timing {
    /// The latency the server adds over the sandbox's own.
    pub(crate) fn added(&self) -> Duration {
        self.server.saturating_sub(self.upstream)
    }
}

/// A hop's `Server-Timing` (`upstream;dur=…, app;dur=…`, in ms).
#[derive(Debug, Default, Clone, Copy)]
struct ServerTiming {
    upstream: Duration,
    app: Duration,
}

impl ServerTiming {
    fn read(headers: &HeaderMap) -> anyhow::Result<Self> {
        let value = headers
            .get("server-timing")
            .context("the server sent no Server-Timing header (is SERVER_TIMING on?)")?
            .to_str()
            .context("a Server-Timing header that is not text")?;
        let metric = |name: &str| -> anyhow::Result<Duration> {
            let ms: f64 = value
                .split(',')
                .find_map(|part| part.trim().strip_prefix(name)?.strip_prefix(";dur="))
                .with_context(|| format!("no {name} in Server-Timing {value:?}"))?
                .parse()
                .with_context(|| format!("Server-Timing {value:?}"))?;
            Ok(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
        };
        Ok(Self {
            upstream: metric("upstream")?,
            app: metric("app")?,
        })
    }
}

/// Numbers the people who sign in, across every flow of the process.
static PEOPLE: AtomicUsize = AtomicUsize::new(0);

/// Walks one sign-in on the server at `base_url`, with its own cookie jar,
/// as a person no flow has used yet (so that the server's per-user cap and
/// rate limit see many users, as in production, not one user with
/// thousands of keys).
pub(crate) async fn sign_in(
    client: &reqwest::Client,
    base_url: &str,
    provider: &FakeOidc,
) -> anyhow::Result<Timing> {
    let person = PEOPLE.fetch_add(1, Ordering::Relaxed);
    provider.queue_identity(Identity::workspace(&format!("bench{person}@example.com")));
    let jar = Jar::default();
    let start = Instant::now();
    let home = Url::parse(&format!("{base_url}/"))?;
    let (authorize, first) = redirect(client, &jar, &home).await.context("GET /")?;
    let first = ServerTiming::read(&first).context("GET /")?;

    let at_provider = Instant::now();
    let (callback, _) = redirect(client, &jar, &authorize)
        .await
        .context("the provider's authorization URL")?;
    let provider_hop = at_provider.elapsed();

    let response = get(client, &jar, &callback).await.context("the callback")?;
    let second = ServerTiming::read(response.headers()).context("the callback")?;
    let status = response.status();
    let body = response.text().await.context("reading the key page")?;
    let total = start.elapsed();
    ensure!(
        status == StatusCode::OK,
        "the callback answered {status}: {}",
        excerpt(&body)
    );
    ensure!(
        body.contains(KEY_MARKER),
        "the key page shows no key: {}",
        excerpt(&body)
    );
    Ok(Timing {
        total,
        server: total.saturating_sub(provider_hop),
        upstream: first.upstream + second.upstream,
        app: first.app + second.app,
    })
}

/// Signs `email` in on a server started with `ISSUE_ON_SIGN_IN=false`:
/// `GET /` (302), the provider's authorization URL (302, `email`
/// auto-approved), then the callback, which must answer 303 to `/` and
/// start a session. Returns the browser's cookie jar, which holds it.
/// Sign-ins must not overlap: the provider hands out queued identities in
/// order.
pub(crate) async fn sign_in_session(
    client: &reqwest::Client,
    base_url: &str,
    provider: &FakeOidc,
    email: &str,
) -> anyhow::Result<Jar> {
    provider.queue_identity(Identity::workspace(email));
    let jar = Jar::default();
    let home = Url::parse(&format!("{base_url}/"))?;
    let (authorize, _) = redirect(client, &jar, &home).await.context("GET /")?;
    let (callback, _) = redirect(client, &jar, &authorize)
        .await
        .context("the provider's authorization URL")?;
    let response = get(client, &jar, &callback).await.context("the callback")?;
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if status != StatusCode::SEE_OTHER || location.as_deref() != Some("/") {
        let body = response.text().await.unwrap_or_default();
        bail!(
            "the callback answered {status} to {location:?}, not 303 to / \
             (is ISSUE_ON_SIGN_IN false?): {}",
            excerpt(&body)
        );
    }
    ensure!(
        jar.cookies(&home).is_some(),
        "the callback set no session cookie"
    );
    Ok(jar)
}

/// GET with the jar's cookies; stores what the answer sets.
pub(crate) async fn get(
    client: &reqwest::Client,
    jar: &Jar,
    url: &Url,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client.get(url.clone());
    if let Some(cookies) = jar.cookies(url) {
        request = request.header(COOKIE, cookies);
    }
    let response = request.send().await?;
    jar.set_cookies(&mut response.headers().get_all(SET_COOKIE).iter(), url);
    Ok(response)
}

/// GET that must answer 302; returns where it points, and the headers.
pub(crate) async fn redirect(
    client: &reqwest::Client,
    jar: &Jar,
    url: &Url,
) -> anyhow::Result<(Url, HeaderMap)> {
    let response = get(client, jar, url).await?;
    let status = response.status();
    if status != StatusCode::FOUND {
        let body = response.text().await.unwrap_or_default();
        bail!("expected 302, got {status}: {}", excerpt(&body));
    }
    let location = response
        .headers()
        .get(LOCATION)
        .context("a 302 without Location")?
        .to_str()
        .context("a Location that is not text")?;
    let next = url.join(location).context("a Location that is not a URL")?;
    Ok((next, response.headers().clone()))
}

/// The first 200 characters of a page, for an error message.
pub(crate) fn excerpt(body: &str) -> String {
    body.chars().take(200).collect()
}

/// The outcome of many flows.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// One entry per completed flow.
    pub(crate) timings: Vec<Timing>,
    /// How many flows failed.
    pub(crate) errors: usize,
    /// The first few failures, for the report.
    pub(crate) first_errors: Vec<String>,
    /// Wall time of the whole batch.
    pub(crate) elapsed: Duration,
}

/// Called after each flow with how many have finished so far.
pub(crate) type Progress = Arc<dyn Fn(usize) + Send + Sync>;

/// Runs `flows` sign-ins, `concurrency` at a time.
pub(crate) async fn run_batch(
    client: &reqwest::Client,
    base_url: &str,
    provider: &FakeOidc,
    flows: usize,
    concurrency: usize,
    progress: Option<Progress>,
) -> Batch {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.clamp(1, flows.max(1)) {
        let (client, base_url, provider) = (client.clone(), base_url.to_owned(), provider.clone());
        let (next, done, errors, progress) = (
            Arc::clone(&next),
            Arc::clone(&done),
            Arc::clone(&errors),
            progress.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < flows {
                match sign_in(&client, &base_url, &provider).await {
                    Ok(timing) => timings.push(timing),
                    Err(error) => {
                        let mut errors = errors.lock().unwrap_or_else(PoisonError::into_inner);
                        errors.0 += 1;
                        if errors.1.len() < 5 {
                            errors.1.push(format!("{error:#}"));
                        }
                    }
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(progress) = &progress {
                    progress(finished);
                }
            }
            timings
        }));
    }
    let mut batch = Batch::default();
    for worker in workers {
        match worker.await {
            Ok(timings) => batch.timings.extend(timings),
            Err(error) => {
                batch.errors += 1;
                batch.first_errors.push(format!("a worker failed: {error}"));
            }
        }
    }
    batch.elapsed = start.elapsed();
    let (count, first) =
        std::mem::take(&mut *errors.lock().unwrap_or_else(PoisonError::into_inner));
    batch.errors += count;
    batch.first_errors.extend(first);
    batch
}
