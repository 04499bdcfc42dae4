//! Replicas, proven: three server processes behind a round-robin TCP proxy
//! of the test's own (every request on a connection of its own, so that
//! each step of a sign-in may land on another replica), all trusting it.
//! 300 sign-ins at once, self-service revocations and sweeps, one replica
//! killed mid-run; then every key page shown matches exactly one account,
//! no account of ours outlives its expiry, the Admin API calls the
//! replicas' metrics count are the ones the sandbox answered, and the
//! audit files verify.
//!
//! The processes read the real clock (only in-process servers can be
//! handed the sandbox's), so this one test waits for expiry in real time,
//! with a lifetime of a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::journal::authorization_hash;
use sandbox::oidc::Identity;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

const REPLICAS: usize = 3;
const SIGN_INS: usize = 300;
const REVOKERS: usize = 40;
/// Seconds every key lives: long enough for the run, short enough to wait
/// for in real time.
const LIFETIME: u64 = 20;
/// Latest an account may be deleted after its expiry: the schedule's
/// timer and one delete call.
const GRACE_S: i64 = 3;

/// A round-robin TCP proxy in front of `backends`: each connection goes to
/// the next, or the one after when that one refuses (a dead replica).
fn proxy(listener: TcpListener, backends: Vec<SocketAddr>) {
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let (backends, first) = (backends.clone(), next.fetch_add(1, Ordering::Relaxed));
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let backend = backends[(first + i) % backends.len()];
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
}

/// One replica: its process, address, admin key and audit file.
struct Replica {
    child: Option<Child>,
    addr: SocketAddr,
    admin_key: String,
    audit: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client with no connection reuse: every request is a new connection,
/// which the proxy hands to the next replica.
fn hopping_browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `/metrics` of one replica as `series → value`.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let text = plain_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Admin API calls by `"METHOD /route"` as a replica's metrics count them.
fn admin_calls(series: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for (name, value) in series {
        let Some(labels) = name.strip_prefix("oks_admin_api_requests_total{") else {
            continue;
        };
        let route = labels
            .split("route=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        *calls.entry(route).or_default() += *value as u64;
    }
    calls
}

/// Admin API calls by `"METHOD /route"` the sandbox answered for `key`.
fn answered_for(sandbox: &Sandbox, key: &str) -> BTreeMap<String, u64> {
    let hash = authorization_hash(&format!("Bearer {key}"));
    let mut calls = BTreeMap::new();
    for entry in sandbox.openai.journal().entries() {
        if entry.authorization_sha256.as_deref() != Some(hash.as_str()) {
            continue;
        }
        let route = entry.route.clone().unwrap_or(entry.path.clone());
        *calls
            .entry(format!("{} {route}", entry.method))
            .or_default() += 1;
    }
    calls
}

/// What one sign-in showed: whose page, and its key.
struct Shown {
    email: String,
    key: String,
    browser: reqwest::Client,
}

/// Signs in through the proxy until a key page is shown (a replica killed
/// under a request fails it; the person tries again, as another account
/// so that each page names whom it was for).
async fn sign_in(sandbox: &Sandbox, base: &str, n: usize) -> Shown {
    for attempt in 0..5 {
        let email = format!("user{n}-{attempt}@example.com");
        sandbox.oidc.queue_identity(Identity::workspace(&email));
        let browser = hopping_browser();
        let page = async {
            let start = browser.get(format!("{base}/")).send().await.ok()?;
            let authorization = start.headers().get("location")?.to_str().ok()?.to_owned();
            let back = browser.get(&authorization).send().await.ok()?;
            let callback = back.headers().get("location")?.to_str().ok()?.to_owned();
            let response = browser.get(&callback).send().await.ok()?;
            let status = response.status();
            let body = response.text().await.ok()?;
            (status == StatusCode::OK).then_some(body)
        }
        .await;
        if let Some(body) = page {
            let page = KeyPage {
                status: StatusCode::OK,
                body,
                headers: reqwest::header::HeaderMap::new(),
            };
            // The identity the provider handed out is whichever was queued
            // first; the page says whose it is.
            let shown = sandbox_email(&page.body);
            return Shown {
                email: shown,
                key: page.key(),
                browser,
            };
        }
    }
    panic!("sign-in {n} failed five times");
}

/// The address a key page is for.
fn sandbox_email(body: &str) -> String {
    let at = body
        .find("@example.com")
        .expect("the page names its person");
    let start = body[..at]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .map_or(0, |i| i + 1);
    body[start..at + "@example.com".len()].to_owned()
}

/// Our accounts in `project` as (name's expiry, owner).
fn ours(sandbox: &Sandbox, project: &str) -> Vec<(i64, String)> {
    sandbox
        .openai
        .service_accounts(project)
        .into_iter()
        .filter_map(|a| {
            let mut parts = a.name.splitn(4, '.');
            (parts.next()? == "oks").then_some(())?;
            let expiry = parts.next()?.parse().ok()?;
            let _nonce = parts.next()?;
            Some((expiry, parts.next()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_a_proxy_share_nothing_but_configuration() {
    let sandbox = Arc::new(Sandbox::start().await.unwrap());
    let project = sandbox.openai.create_project("replicas");
    let first_key = sandbox.openai.admin_key();
    // Each replica its own admin key (made with the first, which only the
    // test uses), so that the sandbox's journal tells whose call each was.
    let mut keys = Vec::new();
    for _ in 0..REPLICAS {
        keys.push(new_admin_key(&sandbox, &first_key).await.1);
    }
    let dir = std::env::temp_dir().join(format!("oks-replicas-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    // The proxy's address first (it is the public one, in REDIRECT_URI);
    // each replica binds a port of its own choosing (PORT=0) and says
    // which in its log: a port picked here and bound there could be taken
    // in between by another test's server.
    let front_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = front_listener.local_addr().unwrap();
    let base = format!("http://{front}");
    let redirect_uri = format!("{base}/oauth2/callback");
    sandbox.oidc.allow_redirect_uri(&redirect_uri);
    let mut replicas: Vec<Replica> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let audit = dir.join(format!("audit-{i}.jsonl"));
        let log = dir.join(format!("replica-{i}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
            .env_clear()
            .current_dir(&dir)
            .envs(sandbox.env(&redirect_uri))
            .env("OPENAI_MANAGEMENT_KEY", key)
            .env("OPENAI_PROJECT_ID", &project)
            .env("ALLOWED_DOMAINS", "example.com")
            .env("EXPIRATION", LIFETIME.to_string())
            .env("SESSION_SECRET", SESSION_SECRET)
            .env("TRUSTED_PROXIES", "127.0.0.1")
            .env("RATE_LIMIT_PER_IP", "0")
            .env("RATE_LIMIT_REVOKE", "0")
            .env("LISTING_MAX_AGE", "1")
            .env("AUDIT_LOG_FILE", &audit)
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,openai_key_server=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut addr = None;
        for _ in 0..1000 {
            addr = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find_map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).ok()?;
                    (value["message"] == "listening")
                        .then(|| value["addr"].as_str()?.parse::<SocketAddr>().ok())
                        .flatten()
                });
            if addr.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addr = addr.expect("the replica says where it listens");
        replicas.push(Replica {
            child: Some(child),
            addr,
            admin_key: key.clone(),
            audit,
        });
    }
    proxy(front_listener, replicas.iter().map(|r| r.addr).collect());
    for replica in &replicas {
        let mut ready = false;
        for _ in 0..1000 {
            if let Ok(response) = plain_client()
                .get(format!("http://{}/readyz", replica.addr))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "replica {} becomes ready", replica.addr);
    }

    // 300 sign-ins at once; the first REVOKERS revoke their own key from
    // their keys page; a few sweeps asked for on the way; one replica
    // killed once a third of the pages are shown.
    let started = std::time::Instant::now();
    let shown_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..SIGN_INS)
        .map(|n| {
            let (sandbox, base, shown_count) =
                (Arc::clone(&sandbox), base.clone(), Arc::clone(&shown_count));
            tokio::spawn(async move {
                let shown = sign_in(&sandbox, &base, n).await;
                shown_count.fetch_add(1, Ordering::Relaxed);
                let account = sandbox.openai.account_of_key(&shown.key);
                let mut revoked = false;
                if n < REVOKERS {
                    revoked = revoke_own(&sandbox, &shown, &base).await;
                }
                if n % 60 == 0 {
                    // The replica being killed may drop the connection:
                    // ask again, as a person would.
                    let mut asked = false;
                    for _ in 0..5 {
                        if let Ok(response) =
                            plain_client().post(format!("{base}/revoke")).send().await
                        {
                            assert!(response.status().is_success(), "{}", response.status());
                            asked = true;
                            break;
                        }
                    }
                    assert!(asked, "a sweep was asked for");
                }
                (shown, account, revoked)
            })
        })
        .collect();
    eventually("a third of the pages are shown", || {
        shown_count.load(Ordering::Relaxed) >= SIGN_INS / 3
    })
    .await;
    let doomed = 1;
    let last_scrape = admin_calls(&scrape(replicas[doomed].addr).await);
    if let Some(mut child) = replicas[doomed].child.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    killed.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(killed.load(Ordering::Relaxed));
    let retried = results
        .iter()
        .filter(|(s, _, _)| !s.email.ends_with("-0@example.com"))
        .count();
    let made_by_doomed = answered_for(&sandbox, &replicas[doomed].admin_key)
        .get("POST /v1/organization/projects/{project_id}/service_accounts")
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{SIGN_INS} sign-ins through {REPLICAS} replicas in {:?}; {retried} tried again after the kill; the killed replica had made {made_by_doomed} accounts",
        started.elapsed()
    );
    assert!(made_by_doomed > 0);

    // Every page shown: its key was live when shown, in exactly one
    // account, named for whom the page was; revoked ones are gone.
    let accounts = ours(&sandbox, &project);
    let emails: BTreeSet<&str> = results.iter().map(|(s, _, _)| s.email.as_str()).collect();
    assert_eq!(emails.len(), SIGN_INS, "every page was for another person");
    let mut revocations = 0;
    for (shown, account, revoked) in &results {
        let account = account.as_ref().expect("the key was live when shown");
        let with_name = accounts
            .iter()
            .filter(|(_, owner)| *owner == shown.email)
            .count();
        if *revoked {
            revocations += 1;
            assert!(!sandbox.openai.key_is_live(&shown.key));
            assert_eq!(with_name, 0, "{} revoked", shown.email);
        } else {
            let now_account = sandbox.openai.account_of_key(&shown.key);
            if now_account.as_ref() != Some(account) {
                let calls: Vec<String> = sandbox
                    .openai
                    .journal()
                    .entries()
                    .iter()
                    .filter(|e| e.path.contains(account.as_str()))
                    .map(|e| {
                        let by = replicas
                            .iter()
                            .position(|r| e.authorized_with(&format!("Bearer {}", r.admin_key)));
                        format!("{} {} {} by replica {by:?}", e.method, e.path, e.status)
                    })
                    .collect();
                let audit: Vec<String> = replicas
                    .iter()
                    .flat_map(|r| {
                        std::fs::read_to_string(&r.audit)
                            .unwrap_or_default()
                            .lines()
                            .filter(|l| l.contains(account.as_str()))
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                panic!(
                    "{}'s key is no longer its account's {account}: {now_account:?}; calls on it: {calls:?}; audit: {audit:?}; accounts named for them: {:?}",
                    shown.email,
                    accounts
                        .iter()
                        .filter(|(_, o)| *o == shown.email)
                        .collect::<Vec<_>>()
                );
            }
            assert_eq!(with_name, 1, "{}: one account", shown.email);
        }
    }
    assert_eq!(revocations, REVOKERS);

    // The Admin API calls each surviving replica counted are the ones the
    // sandbox answered for its key (read until no call is in flight); the
    // killed one had counted no more than the sandbox saw of it.
    for (i, replica) in replicas.iter().enumerate() {
        let answered = answered_for(&sandbox, &replica.admin_key);
        if i == doomed {
            for (route, count) in &last_scrape {
                assert!(
                    answered.get(route).copied().unwrap_or(0) >= *count,
                    "{route}"
                );
            }
            continue;
        }
        let mut settled = false;
        for _ in 0..200 {
            let before = admin_calls(&scrape(replica.addr).await);
            let answered = answered_for(&sandbox, &replica.admin_key);
            let after = admin_calls(&scrape(replica.addr).await);
            if before == after && after == answered {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            settled,
            "replica {i}: metrics {:?}\nsandbox {answered:?}",
            admin_calls(&scrape(replica.addr).await)
        );
    }

    // No account of ours outlives its expiry: watched until all are gone,
    // the killed replica's included (the others delete them).
    let deadline = sandbox.openai.clock().unix() + i64::try_from(LIFETIME).unwrap() + 20;
    loop {
        let now = sandbox.openai.clock().unix();
        let left = ours(&sandbox, &project);
        for (expiry, owner) in &left {
            assert!(
                *expiry + GRACE_S >= now,
                "{owner}'s account outlived its expiry ({expiry}, now {now})"
            );
        }
        if left.is_empty() {
            break;
        }
        assert!(now < deadline, "accounts left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The audit files verify; together they tell of every key shown.
    let mut issued = 0;
    for replica in &replicas {
        let output = Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
            .args(["audit", "verify"])
            .arg(&replica.audit)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        issued += std::fs::read_to_string(&replica.audit)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event\":\"key.issued\""))
            .count();
    }
    let created = sandbox
        .openai
        .journal()
        .entries()
        .iter()
        .filter(|e| {
            e.method == "POST"
                && e.route.as_deref()
                    == Some("/v1/organization/projects/{project_id}/service_accounts")
                && e.status < 300
        })
        .count();
    assert!(issued >= SIGN_INS, "{issued} key.issued events");
    assert!(
        issued <= created,
        "{issued} events, {created} accounts made"
    );
    drop(replicas.drain(..));
}

/// Revokes the key a sign-in showed from the person's keys page (any
/// replica); whether it was.
async fn revoke_own(sandbox: &Sandbox, shown: &Shown, base: &str) -> bool {
    // A replica's listing may be up to LISTING_MAX_AGE (1 s here) old, and
    // a request may meet the replica being killed: try again. A revocation
    // whose answer the kill cut off may have been done: OpenAI says.
    for _ in 0..50 {
        if !sandbox.openai.key_is_live(&shown.key) {
            return true;
        }
        let Ok(response) = shown.browser.get(format!("{base}/")).send().await else {
            continue;
        };
        let Ok(body) = response.text().await else {
            continue;
        };
        let Some(account) = listed_accounts(&body).into_iter().next() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let csrf = hidden(&body, "csrf");
        let Ok(response) = shown
            .browser
            .post(format!("{base}/keys/{account}/revoke"))
            .header("origin", base)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
        else {
            continue;
        };
        if response.status().is_redirection() || response.status().is_success() {
            return true;
        }
    }
    false
}
