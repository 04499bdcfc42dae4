//! The policy file over HTTP with the sandbox: each kind of person gets
//! the rule that matches them first, with its lifetime, maximum and cap;
//! nobody else gets a key.

use reqwest::StatusCode;
use sandbox::oidc::Identity;
use serde_json::json;

use crate::cli::cli_session;
use crate::helpers::*;

const POLICY: &str = r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
ttl = "8h"
max_ttl = "24h"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
emails = ["contractor@gmail.com"]
ttl = "1h"
max_live_keys = 1
"#;

/// A server whose policy is `text`, written to a file of its own.
async fn with_policy(text: &str) -> (TestApp, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    let options = Options::default()
        .set("POLICY_FILE", path.to_str().unwrap())
        .set("ALLOWED_USERS", "")
        .set("ALLOWED_DOMAINS", "");
    (TestApp::spawn_with(options).await, path)
}

fn lifetime_of(app: &TestApp, account: &str) -> i64 {
    let account = app
        .accounts()
        .into_iter()
        .find(|a| a.id == account)
        .unwrap();
    account.keys[0].expires_at.unwrap() - account.created_at
}

#[tokio::test]
async fn each_person_gets_the_first_rule_that_matches_them() {
    let (app, path) = with_policy(POLICY).await;

    let member = Identity::workspace("dana@example.com").with_groups(&["data@example.com"]);
    let token = cli_session(&app, member).await;
    let response = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: serde_json::Value = response.json().await.unwrap();
    let lifetime = lifetime_of(&app, body["id"].as_str().unwrap());
    assert!((8 * 3600..=8 * 3600 + 1).contains(&lifetime), "{lifetime}");
    // Up to the rule's maximum on request, and never above it.
    let me: serde_json::Value = plain_client()
        .get(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["max_ttl_seconds"], 24 * 3600);
    let too_long = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"ttl_seconds": 24 * 3600 + 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = too_long.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("86400"));

    // Staff: the second rule, an hour, one key at a time.
    let staff = app.sign_in_as(Identity::workspace("sam@example.com")).await;
    assert_eq!(staff.status, StatusCode::OK);
    let sam = app
        .accounts()
        .into_iter()
        .find(|a| a.name.ends_with(".sam@example.com"))
        .unwrap();
    let lifetime = lifetime_of(&app, &sam.id);
    assert!((3600..=3601).contains(&lifetime), "{lifetime}");
    let token = cli_session(&app, Identity::workspace("sam@example.com")).await;
    let second = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the rule's cap of 1"
    );

    // The listed contractor; then someone no rule names, and a personal
    // account with a company address.
    let contractor = app
        .sign_in_as(Identity::consumer("contractor@gmail.com"))
        .await;
    assert_eq!(contractor.status, StatusCode::OK);
    let accounts = app.accounts().len();
    for outsider in [
        Identity::workspace("eve@other.org"),
        Identity::consumer("mallory@example.com"),
        Identity::workspace("ann@other.org").with_groups(&["sales@example.com"]),
    ] {
        let page = app.sign_in_as(outsider.clone()).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{outsider:?}");
    }
    assert_eq!(app.accounts().len(), accounts, "nothing made for them");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_policy_file_with_problems_stops_the_server_naming_each() {
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(
        &path,
        "[[rule]]\nname = \"a\"\nissuer = \"google\"\nttl = \"soon\"\n\n[[rule]]\nname = \"b\"\nissuer = \"nobody\"\nemails = [\"x@example.com\"]\n",
    )
    .unwrap();
    let lookup = |var: &str| match var {
        "POLICY_FILE" => Some(path.to_str().unwrap().to_owned()),
        "OPENAI_MANAGEMENT_KEY" => Some("sk-admin-test".to_owned()),
        "CLIENT_ID" => Some("id".to_owned()),
        "CLIENT_SECRET" => Some("secret".to_owned()),
        "REDIRECT_URI" => Some("https://keys.example.com/oauth2/callback".to_owned()),
        _ => None,
    };
    let error = openai_key_server::config::Config::from_lookup(lookup)
        .unwrap_err()
        .to_string();
    let file = path.display().to_string();
    for expected in [
        format!("{file}: rule \"a\": ttl"),
        format!("{file}: rule \"a\": it names no emails"),
        format!("{file}: rule \"b\": issuer"),
    ] {
        assert!(error.contains(&expected), "{expected} in:\n{error}");
    }
    assert!(
        !error.contains("ALLOWED_USERS"),
        "no allow-list needed: {error}"
    );
    let _ = std::fs::remove_file(path);
}
