//! The sign-in-to-key flow: who gets a key, who does not, and what the
//! sandbox saw.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, SET_COOKIE};
use sandbox::oidc::Identity;
use url::Url;

use crate::helpers::*;

#[tokio::test]
async fn an_allowed_user_gets_a_working_key_whose_account_carries_owner_and_expiry() {
    let app = TestApp::spawn().await;

    let page = app.sign_in_as(Identity::consumer("Bob@Gmail.com")).await;

    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_no_store(&page.headers);
    let csp = page.headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let key = page.key();
    assert!(key.starts_with("sk-svcacct-"), "{key}");
    assert!(page.body.contains(&format!("export OPENAI_API_KEY={key}")));
    assert!(page.body.contains("bob@gmail.com"));
    assert!(
        !page.body.contains("http://") || !page.body.contains("cdn"),
        "no external resource"
    );

    let accounts = app.accounts();
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0];
    let parts: Vec<&str> = account.name.splitn(4, '.').collect();
    assert_eq!(parts[0], "oks");
    assert_eq!(parts[3], "bob@gmail.com");
    let name_expiry: i64 = parts[1].parse().unwrap();
    let key_expiry = account.keys[0]
        .expires_at
        .expect("OpenAI enforces the expiry");
    assert!(
        (key_expiry - name_expiry).abs() <= 2,
        "{key_expiry} vs {name_expiry}"
    );
    let expected = app.sandbox.clock.unix() + 3600;
    assert!((key_expiry - expected).abs() <= 2);
    let shown = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(key_expiry as u64),
    )
    .to_string();
    assert!(
        page.body.contains(&shown),
        "the page shows OpenAI's expiry {shown}"
    );

    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    app.assert_no_secrets_logged(&[&key]);
}

#[tokio::test]
async fn a_workspace_account_of_an_allowed_domain_gets_a_key() {
    let app = TestApp::spawn().await;
    let page = app
        .sign_in_as(Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(models_status(&app, &page.key()).await, StatusCode::OK);
    assert!(app.accounts()[0].name.ends_with(".alice@example.com"));
    app.assert_no_secrets_logged(&[&page.key()]);
}

#[tokio::test]
async fn the_authorization_request_carries_state_nonce_and_s256_pkce() {
    let app = TestApp::spawn().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http in tests: {cookie}");
    let url = Url::parse(&location(&response)).unwrap();
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(url.as_str().starts_with(&app.sandbox.oidc_issuer_url()));
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["scope"], "openid email");
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(query["state"].len() >= 32 && query["nonce"].len() >= 32);
    assert!(query["code_challenge"].len() == 43);
    // The login secrets are encrypted in the cookie, not readable.
    assert!(!cookie.contains(&query["state"]));
}

#[tokio::test]
async fn an_unlisted_user_gets_403_and_nothing_is_created() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let page = app.sign_in_as(Identity::consumer("eve@evil.test")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.body.contains("eve@evil.test"),
        "says which account: {}",
        page.body
    );
    assert!(page.body.contains("allow-list"), "says whom to ask");
    assert!(page.body.contains("Request id"));
    assert_eq!(app.accounts().len(), 0);
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn a_personal_account_with_a_company_address_is_refused() {
    let app = TestApp::spawn().await;
    // mallory@example.com without hd: a consumer account on the company address.
    let page = app
        .sign_in_as(Identity::consumer("mallory@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // hd of another domain.
    let other = Identity::workspace("mallory@example.com").with_hd(Some("evil.test"));
    let page = app.sign_in_as(other).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(app.openai_calls(SA_CREATE), 0);
    assert!(app.accounts().is_empty());
}

#[tokio::test]
async fn an_unverified_email_is_refused_even_when_listed() {
    let app = TestApp::spawn().await;
    let page = app
        .sign_in_as(Identity::consumer("bob@gmail.com").unverified())
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("not verified"));
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn a_mismatched_state_is_a_clear_400_with_a_way_back() {
    let app = TestApp::spawn().await;
    app.sandbox
        .oidc
        .queue_identity(Identity::consumer("bob@gmail.com"));
    let authorization = app.start_sign_in().await;
    let callback = app.authorize(&authorization).await;
    let mut url = Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);

    let page = app.open(url.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        page.headers.get("location").is_none(),
        "never a redirect loop"
    );
    assert!(page.body.contains("href=\"/\""), "offers to sign in again");
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn a_callback_without_a_login_cookie_is_refused() {
    let app = TestApp::spawn().await;
    app.sandbox
        .oidc
        .queue_identity(Identity::consumer("bob@gmail.com"));
    let authorization = app.start_sign_in().await;
    let callback = app.authorize(&authorization).await;
    // Another browser (no cookie) opens the callback.
    let other = plain_client();
    let response = other.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("No sign-in in progress")
    );
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn a_code_cannot_be_used_twice() {
    let app = TestApp::spawn().await;
    app.sandbox
        .oidc
        .queue_identity(Identity::consumer("bob@gmail.com"));
    let authorization = app.start_sign_in().await;
    let callback = app.authorize(&authorization).await;
    let first = app.open(&callback).await;
    assert_eq!(first.status, StatusCode::OK);

    // Replaying the same callback URL (a reload): the login is spent, and
    // the page says the key was shown once.
    let replay = app.open(&callback).await;
    assert_eq!(replay.status, StatusCode::GONE);
    assert!(replay.body.contains("shown once"), "{}", replay.body);
    assert!(replay.body.contains("href=\"/\""), "a way to my keys");
    assert!(!replay.body.contains("sk-svcacct-"));

    // Replaying the old code inside a fresh login: the provider refuses it.
    let fresh = Url::parse(&app.start_sign_in().await).unwrap();
    let state = fresh
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let old_code = Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let mut forged = Url::parse(&app.url("/oauth2/callback")).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &old_code)
        .append_pair("state", &state);
    let page = app.open(forged.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert_eq!(
        app.openai_calls(SA_CREATE),
        1,
        "only the first sign-in created an account"
    );
}

#[tokio::test]
async fn a_provider_error_is_shown_plainly() {
    let app = TestApp::spawn().await;
    app.sandbox.oidc.deny_next();
    let authorization = app.start_sign_in().await;
    let callback = app.authorize(&authorization).await;
    assert!(callback.contains("error=access_denied"));
    let page = app.open(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("access_denied"));
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn a_forged_id_token_gets_no_key() {
    let app = TestApp::spawn().await;
    app.sandbox
        .oidc
        .override_next_token(sandbox::oidc::TokenOverride::signing(
            sandbox::oidc::Signing::AlgNone,
        ));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

#[tokio::test]
async fn the_project_is_created_when_missing_and_looked_up_once() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
        assert_eq!(page.status, StatusCode::OK);
    }
    assert_eq!(app.openai_calls(PROJECT_CREATE), 1);
    // Once to look, once more after creating it, to agree with replicas
    // that may have created one at the same moment; never again.
    assert_eq!(app.openai_calls(PROJECT_LIST), 2);
    assert_eq!(app.openai_calls(SA_CREATE), 3);
    assert_eq!(app.accounts().len(), 3);
    let names: std::collections::HashSet<_> = app.accounts().into_iter().map(|a| a.name).collect();
    assert_eq!(names.len(), 3, "every account name is unique");
}

#[tokio::test]
async fn an_existing_project_is_reused_and_archived_ones_are_ignored() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let archived = sandbox.openai.create_project("personal");
    sandbox.openai.archive_project(&archived).unwrap();
    let live = sandbox.openai.create_project("personal");
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(app.openai_calls(PROJECT_CREATE), 0);
    assert_eq!(app.sandbox.openai.service_accounts(&live).len(), 1);
}

#[tokio::test]
async fn a_configured_project_id_skips_the_name_lookup() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let team = sandbox.openai.create_project("team");
    let app = TestApp::spawn_on(sandbox, Options::default().set("OPENAI_PROJECT_ID", &team)).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(app.openai_calls(PROJECT_LIST), 0);
    assert_eq!(app.openai_calls(PROJECT_CREATE), 0);
    assert_eq!(app.sandbox.openai.service_accounts(&team).len(), 1);
}

#[tokio::test]
async fn health_and_readiness_report_what_was_reached() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    app.wait_for_startup_sweep().await;
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        ready = app.get("/readyz").await.status();
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ready, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_security_headers() {
    let app = TestApp::spawn().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let response = app
        .client
        .delete(app.url("/oauth2/callback"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn each_request_is_one_json_log_line_with_id_route_status_latency_and_user() {
    let app = TestApp::spawn().await;
    let page = app
        .sign_in_as(Identity::workspace("logline@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let logs = logs();
    let line = logs
        .lines()
        .rfind(|l| l.contains("\"answered\"") && l.contains("logline@example.com"))
        .unwrap_or_else(|| panic!("no request line with the user"));
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["status"], 200, "{line}");
    assert!(value["latency_ms"].as_f64().is_some(), "{line}");
    let span = &value["span"];
    assert_eq!(span["route"], "/oauth2/callback", "{line}");
    assert_eq!(span["request_id"].as_str().unwrap().len(), 32, "{line}");
    assert_eq!(
        page.headers["x-request-id"].to_str().unwrap(),
        span["request_id"].as_str().unwrap()
    );
    let audit = logs
        .lines()
        .find(|l| l.contains("\"audit\":\"key.issued\"") && l.contains("logline@example.com"))
        .expect("an audit line for the issuance");
    let audit: serde_json::Value = serde_json::from_str(audit).unwrap();
    assert!(audit["account_id"].as_str().is_some(), "{audit}");
    assert!(audit["key_id"].as_str().is_some(), "{audit}");
    assert!(audit["expires_at"].as_i64().is_some(), "{audit}");
    app.assert_no_secrets_logged(&[&page.key()]);
}

#[tokio::test]
async fn a_client_cannot_choose_its_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "chosen-by-attacker")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "chosen-by-attacker");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn a_repeated_callback_parameter_gets_the_error_page_not_a_bare_rejection() {
    let app = TestApp::spawn().await;
    app.start_sign_in().await;
    let page = app
        .open(&app.url("/oauth2/callback?code=a&state=b&state=c"))
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("Request id"), "{}", page.body);
    assert_no_store(&page.headers);
}

#[tokio::test]
async fn over_https_the_login_cookie_is_secure_and_host_prefixed_and_hsts_is_sent() {
    let app = TestApp::spawn_with(
        Options::default().set("REDIRECT_URI", "https://keys.example.test/oauth2/callback"),
    )
    .await;
    let response = app.get("/").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("__Host-oks_login_"), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
    assert!(response.headers().contains_key("strict-transport-security"));
    let query: std::collections::HashMap<_, _> = Url::parse(&location(&response))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        query["redirect_uri"], "https://keys.example.test/oauth2/callback",
        "the redirect URI is sent exactly as configured"
    );
}

#[tokio::test]
async fn a_listed_personal_account_on_a_company_address_can_be_refused() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("ALLOWED_USERS", "carol@corp.test")
            .set("ALLOW_UNMANAGED_EMAILS", "false"),
    )
    .await;
    let page = app.sign_in_as(Identity::consumer("carol@corp.test")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("personal account"), "{}", page.body);
    let page = app.sign_in_as(Identity::workspace("carol@corp.test")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn the_issuer_without_its_scheme_is_accepted_as_google_documents() {
    let app = TestApp::spawn().await;
    app.sandbox
        .oidc
        .set_issuer_form(sandbox::oidc::IssuerForm::Bare);
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn a_token_also_meant_for_another_audience_is_refused() {
    let app = TestApp::spawn().await;
    let client_id = app.sandbox.oidc.client_id();
    app.sandbox
        .oidc
        .override_next_token(sandbox::oidc::TokenOverride::claims(serde_json::json!({
            "aud": [client_id, "someone-else"],
        })));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert_eq!(app.openai_calls(SA_CREATE), 0);
}

/// `Server-Timing`'s `upstream` and `app` durations, in ms.
fn server_timing(headers: &reqwest::header::HeaderMap) -> Option<(f64, f64)> {
    let value = headers.get("server-timing")?.to_str().unwrap().to_owned();
    let dur = |metric: &str| -> f64 {
        value
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{metric};dur=")))
            .unwrap_or_else(|| panic!("no {metric} in {value:?}"))
            .parse()
            .unwrap()
    };
    Some((dur("upstream"), dur("app")))
}

#[tokio::test]
async fn server_timing_is_off_by_default_and_splits_the_upstream_wait_from_the_rest() {
    let app = TestApp::spawn().await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(server_timing(&page.headers), None, "off by default");

    let app = TestApp::spawn_with(Options::default().set("SERVER_TIMING", "true")).await;
    let home = app.get("/").await;
    let (upstream, _) = server_timing(home.headers()).expect("on");
    assert_eq!(upstream, 0.0, "GET / calls nobody once discovery is cached");
    // Every Admin API answer now takes at least 100 ms; the service-account
    // create runs in a task of its own, and still counts.
    app.sandbox.openai.set_latency(
        std::time::Duration::from_millis(100),
        std::time::Duration::ZERO,
    );
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let (upstream, _) = server_timing(&page.headers).expect("on the key page");
    assert!(upstream >= 100.0, "upstream {upstream} ms");
}
