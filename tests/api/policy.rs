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
async fn an_issuer_people_sign_in_through_needs_a_readable_secret_and_this_servers_callback() {
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    let lookup = |var: &str| match var {
        "POLICY_FILE" => Some(path.to_str().unwrap().to_owned()),
        "OPENAI_MANAGEMENT_KEY" => Some("sk-admin-test".to_owned()),
        "CLIENT_ID" => Some("id".to_owned()),
        "CLIENT_SECRET" => Some("secret".to_owned()),
        "REDIRECT_URI" => Some("https://keys.example.com/oauth2/callback".to_owned()),
        _ => None,
    };
    let rule = "[[rule]]\nname = \"a\"\nissuer = \"okta\"\ndomains = [\"example.com\"]\n";
    // Every problem of the file at once...
    std::fs::write(
        &path,
        format!(
            "[[issuer]]\nname = \"okta\"\nurl = \"https://corp.okta.com\"\nclient_id = \"abc\"\nclient_secret_file = \"/nonexistent/okta-secret\"\n\n\
             [[issuer]]\nname = \"keycloak\"\nurl = \"https://sso.example.com/realms/x\"\nclient_id = \"ghi\"\n\n{rule}"
        ),
    )
    .unwrap();
    let error = openai_key_server::config::Config::from_lookup(lookup)
        .unwrap_err()
        .to_string();
    for expected in [
        "issuer \"okta\": client_secret_file: cannot read /nonexistent/okta-secret",
        "issuer \"keycloak\": client_id, client_secret_file: people's sign-in needs both",
    ] {
        assert!(error.contains(expected), "{expected} in:\n{error}");
    }
    // ... then, with the environment's, the redirect URI.
    std::fs::write(
        &path,
        format!(
            "[[issuer]]\nname = \"okta\"\nurl = \"https://corp.okta.com\"\nclient_id = \"def\"\nclient_secret_file = \"{}\"\nredirect_uri = \"https://evil.example/oauth2/callback\"\n\n{rule}",
            path.display()
        ),
    )
    .unwrap();
    let error = openai_key_server::config::Config::from_lookup(lookup)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("issuer \"okta\": redirect_uri: must be this server's callback"),
        "{error}"
    );
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

const SCOPED: &str = r#"
[[rule]]
name = "interns"
issuer = "google"
emails = ["intern@example.com"]
ttl = "1d"
scopes = ["api.model.read"]

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
ttl = "1h"
"#;

const SA_UPDATE: &str =
    "POST /v1/organization/projects/{project_id}/service_accounts/{service_account_id}";
const SA_KEY_CREATE: &str =
    "POST /v1/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys";

/// Creates a key through the JSON API as `who`; the answer's JSON.
async fn key_for(app: &TestApp, who: Identity) -> serde_json::Value {
    let token = cli_session(app, who).await;
    let response = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// What the sandbox's `/v1/chat/completions` answers to `key`.
pub(crate) async fn chat(app: &TestApp, key: &str) -> (StatusCode, String) {
    let response = plain_client()
        .post(format!(
            "{}/v1/chat/completions",
            app.sandbox.openai_base_url().trim_end_matches("/v1")
        ))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn models(app: &TestApp, key: &str) -> StatusCode {
    plain_client()
        .get(format!(
            "{}/v1/models",
            app.sandbox.openai_base_url().trim_end_matches("/v1")
        ))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_read_only_rule_issues_keys_restricted_by_openai_from_birth() {
    let (app, path) = with_policy(SCOPED).await;
    app.wait_for_startup_sweep().await;
    let creates = app.openai_calls(SA_CREATE);

    let intern = key_for(&app, Identity::workspace("intern@example.com")).await;
    let value = intern["key"].as_str().unwrap();
    let account = app
        .accounts()
        .into_iter()
        .find(|a| a.id == intern["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(account.keys.len(), 1, "one key, made with its scopes");
    assert_eq!(account.keys[0].scopes, vec!["api.model.read".to_owned()]);
    let lifetime = account.keys[0].expires_at.unwrap() - account.created_at;
    assert!((86_400..=86_401).contains(&lifetime), "{lifetime}");
    // Three Admin API calls: the bare account, its role, its key.
    assert_eq!(app.openai_calls(SA_CREATE), creates + 1);
    assert_eq!(app.openai_calls(SA_UPDATE), 1);
    assert_eq!(app.openai_calls(SA_KEY_CREATE), 1);

    // OpenAI itself holds it to reading: it lists models, it cannot call one.
    assert_eq!(models(&app, value).await, StatusCode::OK);
    let (status, body) = chat(&app, value).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("Missing scopes: api.model.request"), "{body}");

    // Staff keys are unrestricted: one call, and the model answers.
    let staff = key_for(&app, Identity::workspace("sam@example.com")).await;
    assert_eq!(app.openai_calls(SA_CREATE), creates + 2);
    assert_eq!(app.openai_calls(SA_KEY_CREATE), 1);
    let (status, body) = chat(&app, staff["key"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.assert_no_secrets_logged(&[value]);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_failure_between_the_create_calls_leaves_nothing_behind() {
    use sandbox::openai::{Fault, FaultKind};
    let (app, path) = with_policy(SCOPED).await;
    app.wait_for_startup_sweep().await;
    let token = cli_session(&app, Identity::workspace("intern@example.com")).await;

    // The key's create fails: the bare account is deleted at once.
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::status(500))
            .method("POST")
            .path("/api_keys"),
    );
    let failed = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    assert!(app.accounts().is_empty(), "{:?}", app.accounts());
    assert_eq!(app.openai_calls(SA_DELETE), 1);

    // The role fails and so does the delete: the sweep deletes it at the
    // expiry its name carries, and not before.
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::status(500))
            .method("POST")
            .path("{service_account_id}"),
    );
    app.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::status(500)).method("DELETE"));
    let failed = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    let left = app.accounts();
    assert_eq!(left.len(), 1);
    assert!(left[0].keys.is_empty(), "no key was ever made");
    app.advance(std::time::Duration::from_secs(86_400 + 5));
    for _ in 0..200 {
        if app.accounts().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        app.accounts().is_empty(),
        "the sweep deleted it at its expiry"
    );

    // And the next one works.
    let token = cli_session(&app, Identity::workspace("intern@example.com")).await;
    let issued = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::CREATED);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn each_rule_puts_keys_in_its_project_and_every_page_and_sweep_sees_them() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let evals = sandbox.openai.create_project("evals");
    let policy = format!(
        r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
project_name = "data"
ttl = "8h"

[[rule]]
name = "evals"
issuer = "google"
emails = ["eve@example.com"]
project = "{evals}"
ttl = "1h"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
ttl = "2h"
"#
    );
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let options = Options::default()
        .set("POLICY_FILE", path.to_str().unwrap())
        .set("ALLOWED_USERS", "")
        .set("ALLOWED_DOMAINS", "")
        .set("ADMIN_USERS", "sam@example.com");
    let app = TestApp::spawn_on(sandbox, options).await;
    app.wait_for_startup_sweep().await;
    let openai = &app.sandbox.openai;

    let dana = key_for(
        &app,
        Identity::workspace("dana@example.com").with_groups(&["data@example.com"]),
    )
    .await;
    let data = openai
        .find_project_by_name("data")
        .expect("the project named by the rule is made at start")
        .id;
    assert_eq!(dana["project_id"], data.as_str());
    assert!(
        openai
            .service_accounts(&data)
            .iter()
            .any(|a| a.id == dana["id"].as_str().unwrap())
    );
    let eve = key_for(&app, Identity::workspace("eve@example.com")).await;
    assert_eq!(eve["project_id"], evals.as_str());
    assert_eq!(openai.service_accounts(&evals).len(), 1);
    let sam = key_for(&app, Identity::workspace("sam@example.com")).await;
    let own = app.project_id().unwrap();
    assert_eq!(sam["project_id"], own.as_str());
    assert_ne!(own, data);

    // A person's list says where each key is.
    let token = cli_session(
        &app,
        Identity::workspace("dana@example.com").with_groups(&["data@example.com"]),
    )
    .await;
    let listed: serde_json::Value = plain_client()
        .get(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["keys"][0]["project_id"], data.as_str());

    // The admin sees every key of every project, and one revocation
    // reaches into any of them.
    let browser = browser();
    app.sign_in_with(&browser, Identity::workspace("sam@example.com"))
        .await;
    let page = KeyPage::read(browser.get(app.url("/admin")).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for id in [&data, &evals, &own] {
        assert!(page.body.contains(id.as_str()), "{id} on the admin page");
    }
    for key in [&dana, &eve] {
        assert!(page.body.contains(key["id"].as_str().unwrap()));
    }
    let csrf = hidden(&page.body, "csrf");
    let revoked = post_form(
        &app,
        &browser,
        &format!("/admin/keys/{}/revoke", eve["id"].as_str().unwrap()),
        &[("csrf", &csrf)],
    )
    .await;
    assert!(revoked.status.is_success() || revoked.status.is_redirection());
    assert!(
        openai.service_accounts(&evals).is_empty(),
        "revoked in its project"
    );

    // Each project is swept at its keys' expiry.
    app.advance(std::time::Duration::from_secs(8 * 3600 + 5));
    for _ in 0..300 {
        if openai.service_accounts(&data).is_empty() && app.accounts().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        openai.service_accounts(&data).is_empty(),
        "swept in its project"
    );
    assert!(app.accounts().is_empty());
    let _ = std::fs::remove_file(path);
}

/// A second provider people sign in through (an organisation's own, like
/// Okta), served on a port of its own.
pub(crate) async fn second_provider(
    sandbox: &sandbox::Sandbox,
) -> (sandbox::oidc::FakeOidc, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let okta = sandbox::oidc::FakeOidc::new(
        sandbox::oidc::Config::default(),
        sandbox.clock.clone(),
        url::Url::parse(&origin).unwrap(),
    );
    let router = okta.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (okta, origin)
}

/// Signs `identity` in through the issuer named `issuer` in `browser`.
async fn sign_in_through(
    app: &TestApp,
    browser: &reqwest::Client,
    issuer: &str,
    provider: &sandbox::oidc::FakeOidc,
    identity: Identity,
) -> KeyPage {
    provider.queue_identity(identity);
    let start = browser
        .get(app.url(&format!("/?issuer={issuer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::FOUND, "{issuer}");
    let authorization = location(&start);
    assert!(
        authorization.starts_with(provider.origin().trim_end_matches('/')),
        "{authorization} is {issuer}'s"
    );
    let callback = app.authorize_with(browser, &authorization).await;
    KeyPage::read(browser.get(&callback).send().await.unwrap()).await
}

#[tokio::test]
async fn people_sign_in_through_either_issuer_and_each_rule_is_its_issuers() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let (okta, origin) = second_provider(&sandbox).await;
    let secret = std::env::temp_dir().join(format!("oks-okta-{:x}", rand::random::<u64>()));
    std::fs::write(&secret, format!("{}\n", okta.client_secret())).unwrap();
    let policy = format!(
        r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"

[[issuer]]
name = "okta"
url = "{origin}"
client_id = "{client_id}"
client_secret_file = "{secret}"
groups_claim = "groups"
managed = true

[[rule]]
name = "okta-data"
issuer = "okta"
groups = ["data"]
ttl = "2h"

[[rule]]
name = "okta-staff"
issuer = "okta"
domains = ["corp.test"]
ttl = "3h"

[[rule]]
name = "google-staff"
issuer = "google"
domains = ["example.com"]
ttl = "1h"
"#,
        client_id = okta.client_id(),
        secret = secret.display(),
    );
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let options = Options::default()
        .set("POLICY_FILE", path.to_str().unwrap())
        .set("ALLOWED_USERS", "")
        .set("ALLOWED_DOMAINS", "");
    let app = TestApp::spawn_on(sandbox, options).await;
    okta.allow_redirect_uri(&app.url("/oauth2/callback"));
    let google = &app.sandbox.oidc;

    // Not signed in: a choice, and nothing started yet.
    let chooser = KeyPage::read(browser().get(app.url("/")).send().await.unwrap()).await;
    assert_eq!(chooser.status, StatusCode::OK);
    assert!(
        chooser.body.contains("href=\"/?issuer=okta\""),
        "{}",
        chooser.body
    );
    assert!(chooser.body.contains("href=\"/?issuer=google\""));
    assert_eq!(okta.journal().count("GET /o/oauth2/v2/auth"), 0);

    let lifetime = |app: &TestApp, owner: &str| {
        let account = app
            .accounts()
            .into_iter()
            .find(|a| a.name.ends_with(&format!(".{owner}")))
            .unwrap_or_else(|| panic!("an account of {owner}"));
        account.keys[0].expires_at.unwrap() - account.created_at
    };
    // Okta's own accounts: by group, then by the verified address's
    // domain (Okta has no hd, and manages every account it signs in).
    let page = sign_in_through(
        &app,
        &browser(),
        "okta",
        &okta,
        Identity::consumer("dana@corp.test").with_groups(&["data"]),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(lifetime(&app, "dana@corp.test"), 2 * 3600);
    let page = sign_in_through(
        &app,
        &browser(),
        "okta",
        &okta,
        Identity::consumer("olga@corp.test"),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(lifetime(&app, "olga@corp.test"), 3 * 3600);

    // Google's, under Google's rule only.
    let page = sign_in_through(
        &app,
        &browser(),
        "google",
        google,
        Identity::workspace("sam@example.com"),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(lifetime(&app, "sam@example.com"), 3600);
    let accounts = app.accounts().len();
    for (issuer, provider, who) in [
        (
            "google",
            google,
            Identity::workspace("olga@corp.test").with_groups(&["data"]),
        ),
        ("okta", &okta, Identity::workspace("sam@example.com")),
    ] {
        let page = sign_in_through(&app, &browser(), issuer, provider, who).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{issuer}: {}",
            page.body
        );
    }
    assert_eq!(
        app.accounts().len(),
        accounts,
        "a rule is its issuer's only"
    );

    // A command line's sign-in offers the same choice, and keeps its
    // parameters through it.
    let cli = "/cli/login?port=53682&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=abcdefghijklmnop";
    let chooser = KeyPage::read(browser().get(app.url(cli)).send().await.unwrap()).await;
    assert_eq!(chooser.status, StatusCode::OK, "{}", chooser.body);
    assert!(
        chooser.body.contains(&format!(
            "href=\"{}&#38;issuer=okta\"",
            cli.replace('&', "&#38;")
        )),
        "{}",
        chooser.body
    );
    let through = browser()
        .get(app.url(&format!("{cli}&issuer=okta")))
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), StatusCode::FOUND);
    assert!(location(&through).starts_with(&origin));

    // An issuer the server does not have.
    let unknown = KeyPage::read(
        browser()
            .get(app.url("/?issuer=nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.body.contains("No such sign-in"));
    app.assert_no_secrets_logged(&[&okta.client_secret()]);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(secret);
}

#[test]
fn the_readme_policy_example_is_a_valid_policy() {
    let text = crate::recipes::recipe("policy");
    let defaults = openai_key_server::access::Defaults {
        lifetime: std::time::Duration::from_secs(86_400),
        cap: 5,
        per_hour: 20,
        budget: openai_key_server::access::Budget::default(),
    };
    // Its one problem here: the Okta client secret is not on this machine.
    let problems =
        openai_key_server::access::parse_policy(&text, "README.md", defaults).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(
            "issuer \"okta\": client_secret_file: cannot read /run/secrets/okta-client-secret"
        ),
        "{problems:?}"
    );
    let secret = std::env::temp_dir().join(format!("oks-readme-{:x}", rand::random::<u64>()));
    std::fs::write(&secret, "secret").unwrap();
    let text = text.replace("/run/secrets/okta-client-secret", secret.to_str().unwrap());
    let file = openai_key_server::access::parse_policy(&text, "README.md", defaults).unwrap();
    let names: Vec<&str> = file.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ci-evals",
            "data-team",
            "okta-engineering",
            "interns",
            "staff"
        ]
    );
    let _ = std::fs::remove_file(secret);
}

#[tokio::test]
async fn an_issuer_that_is_not_managed_needs_its_domain_claim_for_a_domain_rule() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let (okta, origin) = second_provider(&sandbox).await;
    let secret = std::env::temp_dir().join(format!("oks-okta-{:x}", rand::random::<u64>()));
    std::fs::write(&secret, okta.client_secret()).unwrap();
    let policy = format!(
        "[[issuer]]\nname = \"social\"\nurl = \"{origin}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\nmanaged = false\ndomain_claim = \"hd\"\n\n\
         [[rule]]\nname = \"corp\"\nissuer = \"social\"\ndomains = [\"corp.test\"]\n",
        okta.client_id(),
        secret.display()
    );
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default()
            .set("POLICY_FILE", path.to_str().unwrap())
            .set("ALLOWED_USERS", "")
            .set("ALLOWED_DOMAINS", ""),
    )
    .await;
    okta.allow_redirect_uri(&app.url("/oauth2/callback"));
    // Anyone may sign up with a corp.test address there: without the
    // signed domain claim, the address's domain proves nothing.
    let page = sign_in_through(
        &app,
        &browser(),
        "social",
        &okta,
        Identity::consumer("eve@corp.test"),
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(app.accounts().is_empty());
    let page = sign_in_through(
        &app,
        &browser(),
        "social",
        &okta,
        Identity::workspace("ann@corp.test"),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(secret);
}

/// `openai-key-server explain ARGS` with the policy file `policy`: exit
/// code and standard output.
fn explain(policy: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
        .arg("explain")
        .args(args)
        .env_clear()
        .env("POLICY_FILE", policy)
        .env("OPENAI_MANAGEMENT_KEY", "sk-admin-test")
        .env("CLIENT_ID", "id")
        .env("CLIENT_SECRET", "secret")
        .env("REDIRECT_URI", "https://keys.example.com/oauth2/callback")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn explain_names_the_rule_a_person_or_a_job_gets_or_why_none() {
    let path = std::env::temp_dir().join(format!("oks-policy-{:x}.toml", rand::random::<u64>()));
    std::fs::write(
        &path,
        r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[issuer]]
name = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://keys.example.com"

[[rule]]
name = "ci-evals"
issuer = "github"
claims = { repository_id = "123456", ref = "refs/heads/*" }
ttl = "1h"
scopes = ["api.model.request"]

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
project_name = "data"
ttl = "8h"
"#,
    )
    .unwrap();
    let (code, out, _) = explain(
        &path,
        &["--email", "dana@example.com", "--group", "data@example.com"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1. ci-evals: skipped, it is for issuer github"),
        "{out}"
    );
    assert!(
        out.contains("2. data-team MATCHES: dana@example.com gets keys of 8 hours"),
        "{out}"
    );
    assert!(out.contains("project named \"data\""), "{out}");

    let (code, out, _) = explain(&path, &["--email", "eve@example.com"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("No rule matches: refused"), "{out}");

    let (code, out, _) = explain(
        &path,
        &[
            "--issuer",
            "github",
            "--claim",
            "repository_id=123456",
            "--claim",
            "ref=refs/heads/main",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ci-evals MATCHES: github:123456 gets keys of 1 hour"),
        "{out}"
    );
    assert!(out.contains("scopes api.model.request"), "{out}");

    let (code, out, _) = explain(
        &path,
        &[
            "--issuer",
            "github",
            "--claim",
            "repository_id=123456",
            "--claim",
            "ref=refs/pull/1/merge",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("its ref claim is \"refs/pull/1/merge\""),
        "{out}"
    );

    let (code, _, err) = explain(&path, &["--issuer", "github", "--email", "a@example.com"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("give the token's claims with --claim"),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
}
