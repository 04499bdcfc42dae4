//! The command line as a separate process (the built binary) against the
//! real server and the sandbox; the test plays the browser. Each terminal
//! has its own config and cache directories, and the CLI reads the
//! sandbox's clock through `OKS_NOW`, so expiry is tested by moving time.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use sandbox::oidc::Identity;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

fn alice() -> Identity {
    Identity::workspace("alice@example.com")
}

/// A terminal: its own home, config and cache directories, and the
/// sandbox's clock.
pub(crate) struct Terminal {
    root: PathBuf,
    clock: openai_key_server::clock::Clock,
}

impl Terminal {
    pub(crate) fn new(app: &TestApp) -> Self {
        let root = std::env::temp_dir().join(format!("oks-cli-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(root.join("home")).unwrap();
        Self {
            root,
            clock: app.clock.clone(),
        }
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.root.join("cache/openai-key-server")
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.root.join("config/openai-key-server")
    }

    /// The CLI with `args`, its environment only what a terminal of this
    /// test has (no proxy settings, no browser), at the sandbox's time.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        self.program(env!("CARGO_BIN_EXE_openai-key-server"), args)
    }

    /// Any program run in this terminal, with the CLI on its `PATH`.
    pub(crate) fn program(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        let bin = Path::new(env!("CARGO_BIN_EXE_openai-key-server"))
            .parent()
            .unwrap()
            .to_owned();
        let mut path = vec![bin];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let now = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::join_paths(path).unwrap())
            .env("HOME", self.root.join("home"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("OKS_NOW", now.to_string())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).spawn().unwrap();
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the CLI ends within a minute")
            .unwrap()
    }

    /// `key`'s key, asserting it printed only that.
    pub(crate) async fn key(&self, args: &[&str]) -> String {
        let mut all = vec!["key"];
        all.extend_from_slice(args);
        let output = self.run(&all).await;
        assert!(output.status.success(), "key failed: {}", stderr(&output));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(stdout.ends_with('\n'), "{stdout:?}");
        let key = stdout.trim_end_matches('\n');
        assert!(key.starts_with("sk-"), "only the key on stdout: {stdout:?}");
        assert!(!key.contains('\n'));
        key.to_owned()
    }

    /// `login` through the loopback, with the test as the browser.
    pub(crate) async fn login(&self, app: &TestApp, identity: Identity) {
        let server = app.url("");
        let mut child = self
            .command(&["login", "--server", &server, "--no-browser"])
            .spawn()
            .unwrap();
        let (url, _) = read_until(&mut child, |line| {
            line.find("http")
                .filter(|_| line.contains("/cli/login?"))
                .map(|at| line[at..].trim().to_owned())
        })
        .await;
        play_loopback(app, &url, identity).await;
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            url,
            "piped, stdout has the address alone"
        );
    }

    pub(crate) fn session_token(&self) -> String {
        let text = std::fs::read_to_string(self.cache().join("session.json")).unwrap();
        let session: serde_json::Value = serde_json::from_str(&text).unwrap();
        session["token"].as_str().unwrap().to_owned()
    }
}

/// The browser's part of a loopback sign-in at `url` (what the CLI
/// printed), as `identity`; the loopback URL it ended on.
async fn play_loopback(app: &TestApp, url: &str, identity: Identity) -> String {
    let browser = browser();
    app.sandbox.oidc.queue_identity(identity);
    let response = browser.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = app.authorize_with(&browser, &location(&response)).await;
    let response = browser.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "to the loopback");
    let loopback = location(&response);
    assert!(loopback.starts_with("http://127.0.0.1:"), "{loopback}");
    assert_eq!(
        query_param(&loopback, "state"),
        query_param(url, "state"),
        "the CLI's own state comes back"
    );
    let page = browser.get(&loopback).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("close this tab"));
    loopback
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Reads the child's stderr until `find` recognises a line; what it found,
/// and the rest of stderr, read in the background.
pub(crate) async fn read_until<T>(
    child: &mut Child,
    mut find: impl FnMut(&str) -> Option<T>,
) -> (T, tokio::task::JoinHandle<String>) {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the CLI ended before printing what was expected");
            if let Some(found) = find(&line) {
                return found;
            }
        }
    })
    .await
    .expect("the CLI printed it within 30 s");
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    (found, rest)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn accounts_of(app: &TestApp) -> Vec<String> {
    app.accounts().into_iter().map(|a| a.id).collect()
}

#[tokio::test]
async fn loopback_login_then_key_prints_a_live_key_and_the_files_are_private() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;

    let settings = std::fs::read_to_string(terminal.config().join("config.toml")).unwrap();
    assert!(settings.contains(&app.url("")), "{settings}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&terminal.cache()), 0o700);
        assert_eq!(mode(&terminal.cache().join("session.json")), 0o600);
    }

    let key = terminal.key(&[]).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    let accounts = app.accounts();
    assert_eq!(accounts.len(), 1);
    assert!(accounts[0].name.ends_with(".alice@example.com"));
    #[cfg(unix)]
    assert_eq!(mode(&terminal.cache().join("key.json")), 0o600);

    // `keys` lists it, never its value.
    let output = terminal.run(&["keys"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(table.contains(&accounts[0].id), "{table}");
    assert!(!table.contains(&key));

    app.assert_no_secrets_logged(&[&key, &terminal.session_token()]);
}

#[tokio::test]
async fn a_cached_key_is_printed_with_no_call_to_the_server_or_openai() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let key = terminal.key(&[]).await;
    assert_eq!(app.openai_calls(SA_CREATE), 1);
    let calls = app.sandbox.openai.journal().entries().len();
    assert_eq!(terminal.key(&[]).await, key);
    assert_eq!(
        app.sandbox.openai.journal().entries().len(),
        calls,
        "OpenAI was not asked"
    );

    // With the server gone, the cached key still comes, with not a word on
    // stderr: nothing was asked of anyone.
    let sandbox = std::sync::Arc::clone(&app.sandbox);
    app.stop().await.unwrap();
    let output = terminal.run(&["key"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        format!("{key}\n")
    );
    assert_eq!(stderr(&output), "", "no diagnostics, no renewal attempt");
    assert_eq!(sandbox.openai.journal().entries().len(), calls);
}

#[tokio::test]
async fn past_the_margin_key_renews_and_the_old_key_lives_on_until_it_expires() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let first = terminal.key(&[]).await;
    // An hour's key: the margin is 6 minutes. 53 minutes on, 7 are left.
    app.advance(Duration::from_secs(53 * 60));
    assert_eq!(terminal.key(&[]).await, first);
    app.advance(Duration::from_secs(2 * 60));
    let second = terminal.key(&[]).await;
    assert_ne!(second, first);
    assert_eq!(app.openai_calls(SA_CREATE), 2);
    assert_eq!(models_status(&app, &first).await, StatusCode::OK);
    assert_eq!(models_status(&app, &second).await, StatusCode::OK);
    // --min-remaining asks for more room than is left: renewed at once.
    let third = terminal.key(&["--min-remaining", "2h"]).await;
    assert_ne!(third, second);
}

#[tokio::test]
async fn ten_key_processes_at_once_mint_one_key() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let children: Vec<_> = (0..10)
        .map(|_| terminal.command(&["key"]).spawn().unwrap())
        .collect();
    let mut keys = Vec::new();
    for child in children {
        let output = child.wait_with_output().await.unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        keys.push(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "every process printed the same key");
    assert_eq!(app.openai_calls(SA_CREATE), 1, "one key minted");
}

#[tokio::test]
async fn a_revoked_key_is_replaced_and_renew_forces_a_new_one() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let first = terminal.key(&[]).await;
    let id = accounts_of(&app).pop().unwrap();

    let output = terminal.run(&["revoke", &id]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains(&id));
    assert!(accounts_of(&app).is_empty());
    assert_eq!(models_status(&app, &first).await, StatusCode::UNAUTHORIZED);
    let second = terminal.key(&[]).await;
    assert_ne!(second, first);
    assert_eq!(models_status(&app, &second).await, StatusCode::OK);

    // Revoked elsewhere (the web page): a tool told the key is dead asks
    // for --renew.
    let third = terminal.key(&["--renew"]).await;
    assert_ne!(third, second);

    // An id that is not one of mine: a clear refusal.
    let output = terminal.run(&["revoke", "svc_acct_nothing"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no live key of yours"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn without_a_session_key_fails_in_one_line_that_says_to_log_in() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    let output = terminal.run(&["key", "--server", &app.url("")]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("openai-key-server login"), "{message}");

    // No server remembered either.
    let output = terminal.run(&["key"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("login --server"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_ended_session_is_refused_by_the_cli_and_by_the_server() {
    let app = TestApp::spawn_with(Options::default().set("CLI_SESSION_TTL", "600")).await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let token = terminal.session_token();
    terminal.key(&[]).await;
    app.advance(Duration::from_secs(601));

    let output = terminal.run(&["key", "--renew"]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).contains("openai-key-server login"),
        "{}",
        stderr(&output)
    );

    let response = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "session_expired");
    assert_eq!(app.openai_calls(SA_CREATE), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_named_and_nothing_is_printed_on_stdout() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let server = app.url("");
    app.stop().await.unwrap();
    let output = terminal.run(&["key"]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains(&format!("cannot reach {server}")),
        "{message}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_cache_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let key = terminal.key(&[]).await;
    let path = terminal.cache().join("key.json");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = terminal.run(&["key"]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "the key is not handed out");
    let message = stderr(&output);
    assert!(message.contains("0644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
    assert!(!message.contains(&key));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let session = terminal.cache().join("session.json");
    std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o640)).unwrap();
    let output = terminal.run(&["key", "--renew"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("session.json"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn env_exec_and_the_json_forms_hand_over_the_same_key() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let key = terminal.key(&[]).await;

    let output = terminal.run(&["env"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        format!("export OPENAI_API_KEY='{key}'\n")
    );
    let output = terminal.run(&["env", "--shell", "fish"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        format!("set -gx OPENAI_API_KEY '{key}'\n")
    );
    let output = terminal.run(&["env", "--shell", "powershell"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        format!("$env:OPENAI_API_KEY = '{key}'\n")
    );

    // exec: the key in the command's environment, not in its arguments.
    let output = terminal
        .run(&[
            "exec",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"$OPENAI_API_KEY\" \"$*\"",
            "sh",
            "arg",
        ])
        .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).into_owned(),
        format!("{key}|arg")
    );
    let output = terminal.run(&["exec", "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(output.status.code(), Some(3), "the command's own status");

    let output = terminal.run(&["key", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["key"], key.as_str());
    let expires_at = json["expires_at"].as_i64().unwrap();
    let account = &app.accounts()[0];
    assert_eq!(Some(expires_at), account.keys[0].expires_at);

    let output = terminal
        .run(&["key", "--format", "credential-process"])
        .await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["Version"], 1);
    assert_eq!(json["SecretAccessKey"], key.as_str());
    let expiration = humantime::parse_rfc3339(json["Expiration"].as_str().unwrap()).unwrap();
    assert_eq!(
        expiration
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        u64::try_from(expires_at).unwrap()
    );
}

#[tokio::test]
async fn logout_revokes_what_this_cli_obtained_and_forgets_the_session() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    let first = terminal.key(&[]).await;
    let second = terminal.key(&["--renew"]).await;
    // A key got elsewhere (the page) is not this CLI's to revoke.
    let other = app.sign_in_as(alice()).await.key();
    assert_eq!(app.accounts().len(), 3);

    let output = terminal.run(&["logout"]).await;
    assert!(!output.status.success(), "no terminal to ask: refused");
    assert!(stderr(&output).contains("--yes"), "{}", stderr(&output));
    assert_eq!(app.accounts().len(), 3, "nothing done");

    let output = terminal.run(&["logout", "--yes"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    for key in [&first, &second] {
        assert_eq!(models_status(&app, key).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(models_status(&app, &other).await, StatusCode::OK);
    assert!(!terminal.cache().join("session.json").exists());
    assert!(!terminal.cache().join("key.json").exists());
    let output = terminal.run(&["key"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("login"));
}

/// A PKCE pair made here, not by the code under test.
pub(crate) fn pkce() -> (String, String) {
    use sha2::Digest as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let verifier = engine.encode(rand::random::<[u8; 32]>());
    let challenge = engine.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A CLI session for `identity`, signed in by hand as the CLI would.
pub(crate) async fn cli_session(app: &TestApp, identity: Identity) -> String {
    let (verifier, challenge) = pkce();
    let code = code_as(app, identity, &challenge).await;
    let (status, body) = redeem(app, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// A loopback sign-in played by hand up to the code the loopback would get.
async fn code_for(app: &TestApp, challenge: &str) -> String {
    code_as(app, alice(), challenge).await
}

async fn code_as(app: &TestApp, identity: Identity, challenge: &str) -> String {
    let browser = browser();
    app.sandbox.oidc.queue_identity(identity);
    let url = app.url(&format!(
        "/cli/login?port=9&code_challenge={challenge}&code_challenge_method=S256&state=state-of-the-cli-0123"
    ));
    let response = browser.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let callback = app.authorize_with(&browser, &location(&response)).await;
    let response = browser.get(&callback).send().await.unwrap();
    let loopback = location(&response);
    assert!(
        loopback.starts_with("http://127.0.0.1:9/callback?"),
        "{loopback}"
    );
    assert_eq!(query_param(&loopback, "state"), "state-of-the-cli-0123");
    query_param(&loopback, "code")
}

async fn redeem(app: &TestApp, code: &str, verifier: &str) -> (StatusCode, serde_json::Value) {
    let response = plain_client()
        .post(app.url("/api/v1/cli/token"))
        .json(&serde_json::json!({
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_code_works_once_only_with_its_verifier_and_not_after_a_minute() {
    let app = TestApp::spawn().await;
    let (verifier, challenge) = pkce();

    let code = code_for(&app, &challenge).await;
    let (status, body) = redeem(&app, &code, &pkce().0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_grant");
    let (status, _) = redeem(&app, &code, &verifier).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a wrong try spends the code"
    );

    let code = code_for(&app, &challenge).await;
    let (status, body) = redeem(&app, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["email"], "alice@example.com");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = redeem(&app, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_grant");

    let code = code_for(&app, &challenge).await;
    app.advance(Duration::from_secs(61));
    let (status, _) = redeem(&app, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a minute old");

    // Nothing a browser holds is a session: not the session cookie, and no
    // code is a bearer token.
    let response = plain_client()
        .get(app.url("/api/v1/me"))
        .bearer_auth(&code)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[&token, &code, &verifier]);
}

#[tokio::test]
async fn a_cli_sign_in_link_that_is_not_one_gets_a_page_that_says_so() {
    let app = TestApp::spawn().await;
    for query in [
        "port=9&code_challenge_method=S256&state=state-of-the-cli-0123",
        "port=9&code_challenge=short&code_challenge_method=S256&state=state-of-the-cli-0123",
        "port=9&code_challenge=0123456789012345678901234567890123456789012&code_challenge_method=plain&state=state-of-the-cli-0123",
        "code_challenge=0123456789012345678901234567890123456789012&code_challenge_method=S256&state=state-of-the-cli-0123",
    ] {
        let response = app.get(&format!("/cli/login?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = response.text().await.unwrap();
        assert!(body.contains("openai-key-server login"), "{body}");
    }
}

/// `login --device` until it shows its code; the code, the child, and the
/// rest of its stderr.
pub(crate) async fn device_login(
    app: &TestApp,
    terminal: &Terminal,
) -> (String, Child, tokio::task::JoinHandle<String>) {
    let mut child = terminal
        .command(&["login", "--device", "--server", &app.url("")])
        .spawn()
        .unwrap();
    let (code, rest) = read_until(&mut child, |line| {
        let word = line.trim();
        (word.len() == 9
            && word.as_bytes()[4] == b'-'
            && word.bytes().all(|b| b == b'-' || b.is_ascii_uppercase()))
        .then(|| word.to_owned())
    })
    .await;
    (code, child, rest)
}

#[tokio::test]
async fn device_login_end_to_end() {
    let app = TestApp::spawn_with(Options::default().set("DEVICE_POLL_INTERVAL", "1")).await;
    let terminal = Terminal::new(&app);
    let (code, child, _) = device_login(&app, &terminal).await;
    assert!(
        code.bytes().all(|b| !b"AEIOU".contains(&b)),
        "no vowels: {code}"
    );

    // The person opens the page on another device, signs in, confirms.
    let browser = browser();
    app.sandbox.oidc.queue_identity(alice());
    let response = browser
        .get(app.url(&format!("/device?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "a sign-in first");
    let callback = app.authorize_with(&browser, &location(&response)).await;
    let response = browser.get(&callback).send().await.unwrap();
    let back = location(&response);
    assert_eq!(back, format!("/device?code={code}"));
    let page = KeyPage::read(browser.get(app.url(&back)).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&code), "the code is filled in");
    assert_no_store(&page.headers);
    let csrf = hidden(&page.body, "csrf");
    let done = post_form(
        &app,
        &browser,
        "/device",
        &[
            ("csrf", &csrf),
            ("user_code", &code.to_lowercase()),
            ("answer", "approve"),
        ],
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Terminal signed in"));

    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            app.url(&format!("/device?code={code}")).as_str(),
            code.as_str()
        ],
        "piped, stdout has the address and the code alone"
    );
    let key = terminal.key(&[]).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    // The code is spent.
    let again = post_form(
        &app,
        &browser,
        "/device",
        &[("csrf", &csrf), ("user_code", &code), ("answer", "approve")],
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_expired_device_code_ends_the_login_with_a_message() {
    let app = TestApp::spawn_with(Options::default().set("DEVICE_POLL_INTERVAL", "1")).await;
    let terminal = Terminal::new(&app);
    let (code, child, rest) = device_login(&app, &terminal).await;
    app.advance(Duration::from_secs(601));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let rest = rest.await.unwrap();
    assert!(rest.contains("expired"), "{rest}");

    // Confirming it now does nothing.
    let browser = browser();
    app.sign_in_with(&browser, alice()).await;
    let page = KeyPage::read(browser.get(app.url("/device")).send().await.unwrap()).await;
    let csrf = hidden(&page.body, "csrf");
    let late = post_form(
        &app,
        &browser,
        "/device",
        &[("csrf", &csrf), ("user_code", &code), ("answer", "approve")],
    )
    .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    assert!(late.body.contains("No such code"), "{}", late.body);
}

#[tokio::test]
async fn device_polls_are_paced_and_a_denied_code_is_told() {
    let app = TestApp::spawn().await;
    let client = plain_client();
    let start: serde_json::Value = client
        .post(app.url("/api/v1/cli/device"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["interval"], 5);
    assert_eq!(start["expires_in"], 600);
    assert_eq!(
        start["verification_uri"].as_str().unwrap(),
        app.url("/device")
    );
    let device_code = start["device_code"].as_str().unwrap().to_owned();
    let user_code = start["user_code"].as_str().unwrap().to_owned();
    let poll = || async {
        let response = client
            .post(app.url("/api/v1/cli/token"))
            .json(&serde_json::json!({
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": device_code,
            }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        (status, body)
    };
    let (status, body) = poll().await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "authorization_pending");
    let (_, body) = poll().await;
    assert_eq!(body["error"]["code"], "slow_down");
    assert_eq!(body["error"]["interval"], 10);

    let browser = browser();
    app.sign_in_with(&browser, alice()).await;
    let page = KeyPage::read(browser.get(app.url("/device")).send().await.unwrap()).await;
    let csrf = hidden(&page.body, "csrf");
    let done = post_form(
        &app,
        &browser,
        "/device",
        &[
            ("csrf", &csrf),
            ("user_code", &user_code),
            ("answer", "deny"),
        ],
    )
    .await;
    assert_eq!(done.status, StatusCode::OK);
    app.advance(Duration::from_secs(11));
    let (_, body) = poll().await;
    assert_eq!(body["error"]["code"], "access_denied");
}

#[tokio::test]
async fn key_interactive_signs_in_through_the_browser_when_there_is_no_session() {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal.login(&app, alice()).await;
    std::fs::remove_file(terminal.cache().join("session.json")).unwrap();
    let mut child = terminal.command(&["key", "--interactive"]).spawn().unwrap();
    let (url, _) = read_until(&mut child, |line| {
        line.find("http")
            .filter(|_| line.contains("/cli/login?"))
            .map(|at| line[at..].trim().to_owned())
    })
    .await;
    play_loopback(&app, &url, alice()).await;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let key = String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned();
    assert!(key.starts_with("sk-"), "only the key on stdout: {key}");
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
}
