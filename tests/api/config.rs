//! The binary's configuration handling, as an operator meets it: exit
//! codes, one line per problem, secrets never echoed, `.env` support.

use std::process::{Command, Output};

use sandbox::Sandbox;

const BIN: &str = env!("CARGO_BIN_EXE_openai-key-server");
const ADMIN_KEY: &str = "sk-admin-TOPSECRETadminKEY1234567890";
const CLIENT_SECRET: &str = "GOCSPX-TOPSECRETclientSECRET";

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.env_clear().current_dir(dir).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the binary runs")
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oks-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const GOOD: &[(&str, &str)] = &[
    ("ALLOWED_DOMAINS", "example.com"),
    ("OPENAI_MANAGEMENT_KEY", ADMIN_KEY),
    ("CLIENT_ID", "1234-abc.apps.googleusercontent.com"),
    ("CLIENT_SECRET", CLIENT_SECRET),
    ("REDIRECT_URI", "https://keys.example.com/oauth2/callback"),
];

#[test]
fn check_config_prints_the_effective_settings_with_secrets_redacted() {
    let dir = temp_dir("check-ok");
    let output = run(&dir, &["check-config"], GOOD);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ALLOWED_DOMAINS=example.com"));
    assert!(stdout.contains("DEFAULT_PROJECT_NAME=personal"));
    assert!(stdout.contains("EXPIRATION=86400"));
    assert!(stdout.contains("OPENAI_MANAGEMENT_KEY=[REDACTED]"));
    assert!(!stdout.contains(ADMIN_KEY) && !stdout.contains(CLIENT_SECRET));
}

#[test]
fn check_config_warns_when_https_is_in_front_and_no_proxy_is_trusted() {
    let dir = temp_dir("check-proxies");
    let output = run(&dir, &["check-config"], GOOD);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("TRUSTED_PROXIES=(none"), "{stdout}");
    assert!(stdout.contains("MAX_CONNECTIONS="), "{stdout}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains("TRUSTED_PROXIES"))
        .unwrap_or_else(|| panic!("no warning about proxies: {stderr}"));
    assert!(warning.contains("REDIRECT_URI"), "{warning}");

    let mut env = GOOD.to_vec();
    env.extend([
        ("TRUSTED_PROXIES", "10.0.0.0/8"),
        ("MAX_CONNECTIONS", "500"),
    ]);
    let output = run(&dir, &["check-config"], &env);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("TRUSTED_PROXIES=10.0.0.0/8"), "{stdout}");
    assert!(stdout.contains("MAX_CONNECTIONS=500"), "{stdout}");
    assert!(!stderr.contains("TRUSTED_PROXIES"), "{stderr}");
}

#[test]
fn check_config_refuses_an_admin_api_over_plain_http_without_echoing_it() {
    let dir = temp_dir("check-http");
    let mut env = GOOD.to_vec();
    env.push(("OPENAI_ADMIN_BASE_URL", "http://openai.example.com/v1"));
    let output = run(&dir, &["check-config"], &env);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("OPENAI_ADMIN_BASE_URL:"), "{stderr}");
    assert!(stderr.contains("must be https"), "{stderr}");
    assert!(stderr.contains("the admin key"), "{stderr}");
}

#[test]
fn bad_settings_exit_2_with_one_line_per_problem_and_no_secret() {
    let dir = temp_dir("check-bad");
    let mut env = GOOD.to_vec();
    env.extend([
        ("EXPIRATION", "0"),
        ("PORT", "http"),
        ("REDIRECT_URI", "https://keys.example.com/wrong"),
    ]);
    let output = run(&dir, &["check-config"], &env);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem: {stderr}");
    for (line, var) in lines.iter().zip(["REDIRECT_URI:", "PORT:", "EXPIRATION:"]) {
        assert!(line.starts_with(var), "{line} should name {var}");
    }
    assert!(!stderr.contains(ADMIN_KEY) && !stderr.contains(CLIENT_SECRET));

    // `serve` refuses to start on the same settings, with the same code.
    let output = run(&dir, &[], &env);
    assert_eq!(output.status.code(), Some(2));
}

fn body_for_parent() -> String {
    GOOD.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

#[test]
fn settings_are_read_from_a_dot_env_file_and_a_malformed_one_is_an_error() {
    let dir = temp_dir("dotenv");
    let body: String = GOOD.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join(".env"), body).unwrap();
    let output = run(&dir, &["check-config"], &[("PORT", "9999")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("PORT=9999"),
        "the environment wins over .env"
    );
    assert!(stdout.contains("ALLOWED_DOMAINS=example.com"));

    std::fs::write(
        dir.join(".env"),
        format!("ALLOWED_DOMAINS=example.com\nOPENAI_MANAGEMENT_KEY=\"{ADMIN_KEY}\n"),
    )
    .unwrap();
    let output = run(&dir, &["check-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(".env") && stderr.contains("OPENAI_MANAGEMENT_KEY"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(ADMIN_KEY),
        "the secret on the bad line is not echoed: {stderr}"
    );

    // A .env in a parent directory is not read.
    std::fs::write(dir.join(".env"), body_for_parent()).unwrap();
    let child = dir.join("child");
    std::fs::create_dir_all(&child).unwrap();
    let output = run(&child, &["check-config"], &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "nothing is configured in child/"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_cleanup_command_sweeps_once_and_reports() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    sandbox
        .openai
        .seed_service_accounts(
            &project,
            vec![
                sandbox::openai::SeedAccount::new(
                    format!("oks.{}.abc123.old@example.com", now - 10),
                    now - 100,
                ),
                sandbox::openai::SeedAccount::new("someone-else", now - 100_000),
            ],
        )
        .unwrap();
    let admin_key = sandbox.openai.admin_key();
    let base = sandbox.openai_base_url();
    let issuer = sandbox.oidc_issuer_url();
    let dir = temp_dir("cleanup-cmd");
    let env: Vec<(&'static str, String)> = vec![
        ("ALLOWED_DOMAINS", "example.com".into()),
        ("OPENAI_MANAGEMENT_KEY", admin_key.clone()),
        ("CLIENT_ID", "x".into()),
        ("CLIENT_SECRET", "y".into()),
        (
            "REDIRECT_URI",
            "http://127.0.0.1:8080/oauth2/callback".into(),
        ),
        ("OPENAI_ADMIN_BASE_URL", base),
        ("OIDC_ISSUER_URL", issuer),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&dir, &["cleanup"], &env)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["deleted"], 1);
    assert_eq!(report["foreign"], 1);
    let left: Vec<_> = sandbox
        .openai
        .service_accounts(&project)
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(left, ["someone-else"]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains(&admin_key));
}

#[tokio::test]
async fn the_cleanup_command_exits_non_zero_when_a_delete_fails() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    sandbox
        .openai
        .seed_service_accounts(
            &project,
            vec![sandbox::openai::SeedAccount::new(
                format!("oks.{}.abc123.old@example.com", now - 10),
                now - 100,
            )],
        )
        .unwrap();
    sandbox.openai.push_fault(
        sandbox::openai::Fault::new(sandbox::openai::FaultKind::status(403))
            .method("DELETE")
            .times(10),
    );
    let env: Vec<(&'static str, String)> = vec![
        ("ALLOWED_DOMAINS", "example.com".into()),
        ("OPENAI_MANAGEMENT_KEY", sandbox.openai.admin_key()),
        ("CLIENT_ID", "x".into()),
        ("CLIENT_SECRET", "y".into()),
        (
            "REDIRECT_URI",
            "http://127.0.0.1:8080/oauth2/callback".into(),
        ),
        ("OPENAI_ADMIN_BASE_URL", sandbox.openai_base_url()),
        ("OIDC_ISSUER_URL", sandbox.oidc_issuer_url()),
    ];
    let dir = temp_dir("cleanup-fail");
    let output = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&dir, &["cleanup"], &env)
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(report["failed"], 1);
    assert_eq!(sandbox.openai.service_accounts(&project).len(), 1);
}

// Multi-threaded: the test blocks a thread reading the child's log while
// the sandbox must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_cleanly_on_sigterm_and_sigint() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    for signal in ["TERM", "INT"] {
        let sandbox = Sandbox::start().await.unwrap();
        let dir = temp_dir(&format!("signal-{signal}"));
        let mut child = Command::new(BIN)
            .env_clear()
            .current_dir(&dir)
            .env("ALLOWED_DOMAINS", "example.com")
            .env("OPENAI_MANAGEMENT_KEY", sandbox.openai.admin_key())
            .env("CLIENT_ID", sandbox.oidc.client_id())
            .env("CLIENT_SECRET", sandbox.oidc.client_secret())
            .env("REDIRECT_URI", "http://127.0.0.1:8080/oauth2/callback")
            .env("OPENAI_ADMIN_BASE_URL", sandbox.openai_base_url())
            .env("OIDC_ISSUER_URL", sandbox.oidc_issuer_url())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("PORT", "0")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let recv = |what: &str| -> String {
            loop {
                let line = rx
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("no log line saying {what:?}"));
                if line.contains(what) {
                    return line;
                }
            }
        };
        let listening: serde_json::Value = serde_json::from_str(&recv("listening")).unwrap();
        let addr = listening["addr"].as_str().unwrap().to_owned();
        let health = crate::helpers::plain_client()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), reqwest::StatusCode::OK);

        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        recv("shutting down");
        recv("stopped");
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exit.success(), "SIG{signal}: {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_says_whether_the_key_and_the_project_will_work() {
    let sandbox = Sandbox::start().await.unwrap();
    let dir = temp_dir("check-online");
    let redirect = "http://127.0.0.1:8080/oauth2/callback";
    let base: Vec<(String, String)> = sandbox
        .env(redirect)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let with = |changes: &[(&str, &str)]| {
        let mut env = base.clone();
        env.push(("ALLOWED_DOMAINS".to_owned(), "example.com".to_owned()));
        for (k, v) in changes {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        env
    };
    let online = |env: Vec<(String, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let output = run(&dir, &["check-config", "--online"], &env);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let default = sandbox.openai.default_project_id();
    let (code, out, err) = online(with(&[("OPENAI_PROJECT_ID", &default)]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("online: project {default}")) && out.contains("is active"),
        "{out}"
    );

    let (code, _, err) = online(with(&[
        ("OPENAI_PROJECT_ID", &default),
        ("OPENAI_MANAGEMENT_KEY", "sk-admin-wrong"),
    ]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("refuses the admin key") && err.contains("OPENAI_MANAGEMENT_KEY"),
        "{err}"
    );
    assert!(!err.contains("sk-admin-wrong"), "{err}");

    let (code, _, err) = online(with(&[("OPENAI_PROJECT_ID", "proj_doesnotexist")]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("proj_doesnotexist does not exist"), "{err}");

    let archived = sandbox.openai.create_project("old");
    sandbox.openai.archive_project(&archived).unwrap();
    let (code, _, err) = online(with(&[("OPENAI_PROJECT_ID", &archived)]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is archived"), "{err}");

    // By name: not there yet is fine (it is made at first use).
    let (code, out, err) = online(with(&[("DEFAULT_PROJECT_NAME", "brand-new")]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("no project is named \"brand-new\" yet"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_at_start_when_openai_refuses_the_admin_key() {
    use std::io::{BufRead as _, BufReader};
    let sandbox = Sandbox::start().await.unwrap();
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .current_dir(temp_dir("serve-online"))
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    for (k, v) in sandbox.env("http://127.0.0.1:8080/oauth2/callback") {
        command.env(k, v);
    }
    command
        .env("ALLOWED_DOMAINS", "example.com")
        .env("OPENAI_MANAGEMENT_KEY", "sk-admin-wrong")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", "0")
        .env("LOG_FORMAT", "json");
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let found = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(200)
            .find(|l| l.contains("online check") && l.contains("refuses the admin key"))
    });
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), found)
        .await
        .expect("the check is logged at start")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("an error line about the admin key");
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(!line.contains("sk-admin-wrong"), "{line}");
}

/// `check-config` with the good settings and `more`: exit code and stderr.
fn check_config_with(name: &str, more: &[(&str, &str)]) -> (Option<i32>, String) {
    let env: Vec<(&str, &str)> = GOOD.iter().chain(more).copied().collect();
    let output = run(&temp_dir(name), &["check-config"], &env);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_dollar_budget_without_prices_is_refused_at_start() {
    let (code, stderr) = check_config_with("dollars", &[("USD_PER_MONTH", "50")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("MODEL_PRICES"), "{stderr}");
    assert!(stderr.contains("gpt-4o=2.50/10.00"), "{stderr}");
}

#[test]
fn a_budget_with_usage_never_read_is_refused_at_start() {
    let (code, stderr) = check_config_with(
        "no-reads",
        &[("TOKENS_PER_DAY", "100000"), ("USAGE_POLL_INTERVAL", "0")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("USAGE_POLL_INTERVAL"), "{stderr}");
    assert!(stderr.contains("never be enforced"), "{stderr}");
}
