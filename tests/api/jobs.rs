//! Keys for CI jobs: `POST /api/v1/keys` with a GitHub Actions OIDC token
//! as the bearer, against the sandbox's GitHub issuer. What a job may
//! have, and every token that must get nothing.

use base64::Engine as _;
use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::oidc::{GithubClaims, Identity};
use serde_json::{Value, json};

use crate::cli::cli_session;
use crate::helpers::*;

pub(crate) const AUDIENCE: &str = "https://keys.example.com";

/// The claims of a token, read without checking it (the test's own).
pub(crate) fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub(crate) fn job(repository: &str, ref_: &str) -> GithubClaims {
    let mut claims = GithubClaims::new(repository, ref_);
    claims.audience = AUDIENCE.to_owned();
    claims
}

/// A server whose policy has the sandbox's GitHub issuer, a rule for the
/// main branch of `octo-org/evals` (by repository id), and staff; with
/// the repository's id.
async fn server() -> (TestApp, String, std::path::PathBuf) {
    let sandbox = Sandbox::start().await.unwrap();
    let probe = sandbox
        .github
        .mint_github_token(job("octo-org/evals", "refs/heads/main"));
    let repository_id = claims_of(&probe)["repository_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let policy = format!(
        r#"
[[issuer]]
name = "github"
url = "{url}"
audience = "{AUDIENCE}"
max_token_age = "10m"

[[rule]]
name = "ci-evals"
issuer = "github"
claims = {{ repository_id = "{repository_id}", ref = "refs/heads/main" }}
ttl = "1h"
max_ttl = "1h"
scopes = ["api.model.request", "api.model.read"]
max_live_keys = 3

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
ttl = "8h"
"#,
        url = sandbox.github_issuer_url()
    );
    let path = std::env::temp_dir().join(format!("oks-jobs-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let options = Options::default()
        .set("POLICY_FILE", path.to_str().unwrap())
        .set("ALLOWED_USERS", "")
        .set("ALLOWED_DOMAINS", "");
    let app = TestApp::spawn_on(sandbox, options).await;
    app.wait_for_startup_sweep().await;
    (app, repository_id, path)
}

async fn ask(app: &TestApp, token: &str, body: Option<Value>) -> reqwest::Response {
    let request = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(token);
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_ci_job_gets_a_key_of_its_rule_once_per_token() {
    let (app, repository_id, path) = server().await;
    let token = app
        .sandbox
        .github
        .mint_github_token(job("octo-org/evals", "refs/heads/main"));

    let response = ask(&app, &token, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let owner = format!("github:{repository_id}");
    assert_eq!(body["owner"], owner.as_str());
    let key = body["key"].as_str().unwrap().to_owned();
    let account = app
        .accounts()
        .into_iter()
        .find(|a| a.id == body["id"].as_str().unwrap())
        .unwrap();
    assert!(
        account.name.ends_with(&format!(".{owner}")),
        "{}",
        account.name
    );
    assert_eq!(
        account.keys[0].scopes,
        vec!["api.model.request".to_owned(), "api.model.read".to_owned()]
    );
    let lifetime = account.keys[0].expires_at.unwrap() - account.created_at;
    assert!((3600..=3601).contains(&lifetime), "{lifetime}");

    // The same token again: refused, nothing made.
    let accounts = app.accounts().len();
    let replayed = ask(&app, &token, None).await;
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);
    let error: Value = replayed.json().await.unwrap();
    assert_eq!(error["error"]["code"], "token_replayed");
    assert_eq!(app.accounts().len(), accounts);

    // A fresh token asking for more than the rule's maximum is told it.
    let fresh = app
        .sandbox
        .github
        .mint_github_token(job("octo-org/evals", "refs/heads/main"));
    let too_long = ask(&app, &fresh, Some(json!({"ttl_seconds": 7200}))).await;
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    let error: Value = too_long.json().await.unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains("3600")
            || error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 hour"),
        "{error}"
    );
    // ... and that token was not spent by the refusal.
    assert_eq!(ask(&app, &fresh, None).await.status(), StatusCode::CREATED);

    // A person signs in through the other issuer at the same time.
    let person = cli_session(&app, Identity::workspace("sam@example.com")).await;
    let staff = ask(&app, &person, None).await;
    assert_eq!(staff.status(), StatusCode::CREATED);
    let staff: Value = staff.json().await.unwrap();
    assert_eq!(staff["owner"], "sam@example.com");

    // A job token is good for a key and nothing else.
    let another = app
        .sandbox
        .github
        .mint_github_token(job("octo-org/evals", "refs/heads/main"));
    let listing = plain_client()
        .get(app.url("/api/v1/keys"))
        .bearer_auth(&another)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::UNAUTHORIZED);

    // The sweep reads the job's account name back and deletes it at expiry.
    app.advance(std::time::Duration::from_secs(3600 + 5));
    for _ in 0..300 {
        if !app.accounts().iter().any(|a| a.name.ends_with(&owner)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!app.accounts().iter().any(|a| a.name.ends_with(&owner)));
    app.assert_no_secrets_logged(&[&key, &token]);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn tokens_that_must_not_get_a_key_get_none() {
    let (app, _, path) = server().await;
    let github = &app.sandbox.github;
    let creates = app.openai_calls(SA_CREATE);

    let mut cases: Vec<(&str, String, StatusCode)> = vec![
        (
            "another repository",
            github.mint_github_token(job("octo-org/other", "refs/heads/main")),
            StatusCode::FORBIDDEN,
        ),
        (
            "another branch",
            github.mint_github_token(job("octo-org/evals", "refs/heads/dev")),
            StatusCode::FORBIDDEN,
        ),
        (
            "another audience",
            github.mint_github_token(GithubClaims::new("octo-org/evals", "refs/heads/main")),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    // Issued an hour ago but still unexpired: older than max_token_age.
    let now = app.sandbox.clock.unix();
    let mut old = job("octo-org/evals", "refs/heads/main");
    old.extra.insert("iat".to_owned(), json!(now - 3600));
    old.extra.insert("exp".to_owned(), json!(now + 300));
    cases.push((
        "too old",
        github.mint_github_token(old),
        StatusCode::UNAUTHORIZED,
    ));
    // The same claims, signed by another issuer (the people's).
    let forged = claims_of(&github.mint_github_token(job("octo-org/evals", "refs/heads/main")));
    let mut other = forged.as_object().unwrap().clone();
    other.insert("iss".to_owned(), json!(app.sandbox.oidc_issuer_url()));
    cases.push((
        "an unknown issuer",
        app.sandbox.oidc.mint_id_token(other),
        StatusCode::UNAUTHORIZED,
    ));
    // The GitHub issuer's name, signed with the other issuer's key.
    let mut stolen = forged.as_object().unwrap().clone();
    stolen.insert("jti".to_owned(), json!("forged-1"));
    cases.push((
        "a key GitHub does not publish",
        app.sandbox.oidc.mint_id_token(stolen),
        StatusCode::UNAUTHORIZED,
    ));
    // A good token with its payload swapped.
    let good = github.mint_github_token(job("octo-org/evals", "refs/heads/main"));
    let theirs = github.mint_github_token(job("octo-org/other", "refs/heads/main"));
    let mut parts: Vec<&str> = theirs.split('.').collect();
    parts[1] = good.split('.').nth(1).unwrap();
    cases.push((
        "a tampered token",
        parts.join("."),
        StatusCode::UNAUTHORIZED,
    ));

    for (what, token, status) in &cases {
        let response = ask(&app, token, None).await;
        assert_eq!(response.status(), *status, "{what}");
        let body: Value = response.json().await.unwrap();
        let code = if *status == StatusCode::FORBIDDEN {
            "refused"
        } else {
            "invalid_token"
        };
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        let says = match *what {
            "another repository" => "repository_id",
            "another branch" => "refs/heads/dev",
            "another audience" => AUDIENCE,
            "too old" => "max_token_age",
            "an unknown issuer" => "not one of the policy's workload issuers",
            "a key GitHub does not publish" => "does not publish",
            _ => "signature",
        };
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
    }

    // Expired: minted, then five minutes and the skew pass.
    let expiring = github.mint_github_token(job("octo-org/evals", "refs/heads/main"));
    app.advance(std::time::Duration::from_secs(300 + 61));
    let response = ask(&app, &expiring, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "expired");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");

    assert_eq!(app.openai_calls(SA_CREATE), creates, "nothing was created");
    assert!(app.accounts().is_empty());
    let _ = std::fs::remove_file(path);
}

/// The `run: |` script of the README's GitHub Actions job, dedented.
fn actions_step() -> String {
    let job = crate::recipes::recipe("github-actions");
    let lines: Vec<&str> = job.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("run: |"))
        .expect("a run: | step");
    let indent = lines[at].len() - lines[at].trim_start().len();
    let mut script = String::new();
    for line in &lines[at + 1..] {
        let depth = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && depth <= indent {
            break;
        }
        script.push_str(line.get(indent + 2..).unwrap_or(""));
        script.push('\n');
    }
    script
}

#[tokio::test]
async fn the_readme_github_actions_step_gets_a_working_key() {
    let (app, repository_id, path) = server().await;
    let github_env = std::env::temp_dir().join(format!("oks-ghenv-{:x}", rand::random::<u64>()));
    let request_url = format!(
        "{}/_sandbox/oidc/actions-token?repository=octo-org/evals&ref=refs/heads/main",
        app.sandbox.github_issuer_url().trim_end_matches('/')
    );
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &actions_step()])
        .env("KEY_SERVER", app.url(""))
        .env("KEY_AUDIENCE", AUDIENCE)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-request-token")
        .env("GITHUB_ENV", &github_env)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(&github_env).unwrap();
    let key = written
        .trim()
        .strip_prefix("OPENAI_API_KEY=")
        .expect("the step exports the key");
    // Masked before the step prints anything else about it.
    assert!(stdout.starts_with("::add-mask::"), "{stdout}");
    assert!(stdout.contains(&format!("::add-mask::{key}")), "{stdout}");
    assert!(
        stdout.contains(&format!("github:{repository_id}")),
        "{stdout}"
    );
    assert!(app.sandbox.openai.key_is_live(key));
    let (status, body) = crate::policy::chat(&app, key).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // From another repository's job, the same step fails loudly and
    // exports nothing.
    let _ = std::fs::remove_file(&github_env);
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &actions_step()])
        .env("KEY_SERVER", app.url(""))
        .env("KEY_AUDIENCE", AUDIENCE)
        .env(
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            request_url.replace("octo-org/evals", "octo-org/other"),
        )
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-request-token")
        .env("GITHUB_ENV", &github_env)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("no rule of the policy allows this job")
            || String::from_utf8_lossy(&output.stderr)
                .contains("no rule of the policy allows this job"),
        "{output:?}"
    );
    assert!(!github_env.exists());
    let _ = std::fs::remove_file(path);
}
