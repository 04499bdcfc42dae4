//! The `sandbox` binary as a person uses it: its `--help`, the `.env` lines
//! it prints, and that those settings work against what it serves.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

/// A running `sandbox` process, killed when dropped (a failed test must not
/// leave it behind).
struct Running {
    child: Child,
    /// The `NAME=value` lines it printed.
    settings: HashMap<String, String>,
}

impl Running {
    /// Starts the binary with `args` and reads its settings: every
    /// `NAME=value` line up to `last` (which these arguments make it print
    /// last).
    fn start(args: &[&str], last: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sandbox binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Self {
            child,
            settings: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !running.settings.contains_key(last) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .expect("the settings are printed within 30 s");
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("a NAME=value line, not {line:?}"));
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{line}"
            );
            running.settings.insert(name.to_owned(), value.to_owned());
        }
        running
    }

    fn get(&self, name: &str) -> &str {
        self.settings
            .get(name)
            .unwrap_or_else(|| panic!("{name} is printed"))
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited on") {
                return status;
            }
            assert!(Instant::now() < deadline, "the sandbox stops on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

#[tokio::test]
async fn the_printed_settings_work_with_the_fakes_it_serves_and_sigterm_stops_it() {
    let sandbox = Running::start(&[], "ALLOWED_USERS");
    let http = client();

    let names: Vec<&str> = {
        let mut names: Vec<&str> = sandbox.settings.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(
        names,
        [
            "ALLOWED_USERS",
            "CLIENT_ID",
            "CLIENT_SECRET",
            "OIDC_ISSUER_URL",
            "OPENAI_ADMIN_BASE_URL",
            "OPENAI_MANAGEMENT_KEY",
            "REDIRECT_URI",
        ]
    );
    assert_eq!(sandbox.get("ALLOWED_USERS"), "you@example.com");

    // OPENAI_ADMIN_BASE_URL + OPENAI_MANAGEMENT_KEY manage the organisation.
    let base = sandbox.get("OPENAI_ADMIN_BASE_URL");
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let key = sandbox.get("OPENAI_MANAGEMENT_KEY");
    assert!(key.starts_with("sk-admin-"));
    let projects = http
        .get(format!("{base}/organization/projects"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(projects.status(), StatusCode::OK);
    assert!(projects.headers().contains_key("x-request-id"));
    let projects: Value = projects.json().await.unwrap();
    assert_eq!(projects["object"], "list");
    assert_eq!(projects["data"][0]["name"], "Default Project");

    // OIDC_ISSUER_URL is where discovery is, and the issuer it states.
    let issuer = sandbox.get("OIDC_ISSUER_URL");
    let discovery: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], issuer);
    let jwks = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);

    // CLIENT_ID with REDIRECT_URI is a registered client: the sign-in form
    // shows, prefilled with the allowed address.
    let redirect_uri = sandbox.get("REDIRECT_URI");
    assert_eq!(redirect_uri, "http://127.0.0.1:8080/oauth2/callback");
    let mut authorize = Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", sandbox.get("CLIENT_ID"))
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email");
    let form = http.get(authorize.as_str()).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("value=\"you@example.com\"")
    );

    // A fixture signs in without the form; CLIENT_SECRET redeems the code.
    authorize
        .query_pairs_mut()
        .append_pair("login_hint", "alice");
    let back = http.get(authorize.as_str()).send().await.unwrap();
    assert_eq!(back.status(), StatusCode::FOUND);
    let location = Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(redirect_uri));
    let code = location
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, code)| code.into_owned())
        .expect("a code");
    let tokens = http
        .post(discovery["token_endpoint"].as_str().unwrap())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("client_id", sandbox.get("CLIENT_ID")),
            ("client_secret", sandbox.get("CLIENT_SECRET")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(tokens.status(), StatusCode::OK);
    let tokens: Value = tokens.json().await.unwrap();
    assert!(tokens["id_token"].as_str().is_some());

    let status = sandbox.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn start_flags_set_the_knobs_and_the_extra_settings_lines() {
    let sandbox = Running::start(
        &[
            "--issuer-form",
            "bare",
            "--allowed-users",
            "",
            "--allowed-domains",
            "example.com",
            "--admin-key",
            "sk-admin-fixed-for-this-test",
            "--api-version",
            "legacy",
            "--max-key-lifetime",
            "900",
            "--scope-error-status",
            "403",
            "--rate-limit",
            "5",
            "--rate-limit-burst",
            "2",
            "--clock-offset",
            "-86400",
            "--fault",
            r#"{"method":"GET","path_contains":"/organization/projects","count":1,"kind":{"type":"status","status":503}}"#,
        ],
        "ALLOWED_DOMAINS",
    );
    // `--allowed-users ''` leaves that line out.
    assert!(!sandbox.settings.contains_key("ALLOWED_USERS"));
    assert_eq!(sandbox.get("ALLOWED_DOMAINS"), "example.com");
    let issuer = sandbox.get("OIDC_ISSUER_URL");
    assert_eq!(
        sandbox.get("OIDC_ACCEPTED_ISSUERS"),
        issuer.trim_start_matches("http://")
    );
    assert_eq!(
        sandbox.get("OPENAI_MANAGEMENT_KEY"),
        "sk-admin-fixed-for-this-test"
    );
    let http = client();
    let base = sandbox.get("OPENAI_ADMIN_BASE_URL");
    let control = base.trim_end_matches("/v1");

    let config: Value = http
        .get(format!("{control}/_sandbox/openai/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        json!({
            "version": "legacy",
            "scope_error_status": 403,
            "max_key_lifetime_secs": 900,
            "latency_ms": 0,
            "jitter_ms": 0,
            "rate_limit_per_s": 5.0,
            "rate_limit_burst": 2.0,
        })
    );
    let clock: Value = http
        .get(format!("{issuer}/_sandbox/clock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(clock["offset_ms"], -86_400_000);
    let faulty = http
        .get(format!("{base}/organization/projects"))
        .bearer_auth("sk-admin-fixed-for-this-test")
        .send()
        .await
        .unwrap();
    assert_eq!(faulty.status(), StatusCode::SERVICE_UNAVAILABLE);
    let fine = http
        .get(format!("{base}/organization/projects"))
        .bearer_auth("sk-admin-fixed-for-this-test")
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
}

#[test]
fn help_explains_every_knob_and_the_control_routes() {
    let output = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");

    // The first word of each option line, e.g. `--code-ttl`.
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("--"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for flag in [
        "--bind",
        "--openai-port",
        "--oidc-port",
        "--github-port",
        "--allowed-users",
        "--allowed-domains",
        "--admin-key",
        "--api-version",
        "--max-key-lifetime",
        "--scope-error-status",
        "--latency-ms",
        "--jitter-ms",
        "--rate-limit",
        "--rate-limit-burst",
        "--fault",
        "--client-id",
        "--client-secret",
        "--redirect-uri",
        "--form-email",
        "--form-hd",
        "--auto-approve",
        "--require-pkce-s256",
        "--code-ttl",
        "--issuer-form",
        "--jwks-max-age",
        "--clock-offset",
    ] {
        assert!(flags.contains(&flag), "{flag} is listed in\n{help}");
    }
    // Every flag has a description under it (clap's long help puts it on
    // the next line).
    let lines: Vec<&str> = help.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("--") {
            let next = lines.get(at + 1).map_or("", |next| next.trim());
            assert!(!next.is_empty(), "{line} has no description");
        }
    }
    for route in [
        "/_sandbox/clock",
        "/_sandbox/openai/config",
        "/_sandbox/openai/faults",
        "/_sandbox/openai/seed",
        "/_sandbox/openai/state",
        "/_sandbox/openai/counters",
        "/_sandbox/openai/journal",
        "/_sandbox/openai/key-status",
        "queue-identity",
        "auto-approve",
        "fixtures",
        "rotate-keys",
        "override-next-token",
        "fail-next-jwks",
        "hang-next-jwks",
        "fail-next-token",
        "github-token",
    ] {
        assert!(help.contains(route), "{route} is explained");
    }
    for name in [
        "OIDC_ISSUER_URL",
        "OPENAI_ADMIN_BASE_URL",
        "OPENAI_MANAGEMENT_KEY",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "REDIRECT_URI",
    ] {
        assert!(help.contains(name), "{name} is named");
    }
}

#[test]
fn a_non_loopback_address_is_refused_at_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .args(["--bind", "0.0.0.0"])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");

    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no settings are printed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only binds loopback"), "{stderr}");
}

/// reqwest is built with `rustls-no-provider` in a workspace build (the key
/// server's choice), so a provider must be installed before any client.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
