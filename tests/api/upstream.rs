//! What the server reads from Google and OpenAI: no answer is read beyond a
//! size that fits the largest legitimate one, and no endpoint the provider
//! names gets the client secret over plain http.

use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::oidc::{Endpoint, Identity};
use sandbox::openai::{Fault, FaultKind};
use serde_json::json;

use crate::helpers::*;

/// Far beyond any cap, and streamed: reading it whole would cost the
/// process 64 MiB.
const HUGE: u64 = 64 * 1024 * 1024;

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

#[tokio::test]
async fn a_huge_answer_to_a_create_is_cut_off_and_treated_as_a_create_that_may_have_happened() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let lists = app.openai_calls(SA_LIST);
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::Oversized { bytes: HUGE })
            .method("POST")
            .path("/service_accounts"),
    );
    let page = app.sign_in_as(bob()).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(!page.body.contains("sk-svcacct-"));
    assert!(
        app.openai_calls(SA_LIST) > lists,
        "looked for the account it could not read about"
    );
    assert!(logs().contains("OpenAI sent an answer larger than 1024 KiB"));
}

#[tokio::test]
async fn a_huge_page_of_accounts_fails_the_listing_not_the_process() {
    let app = TestApp::spawn().await;
    sweep(&app).await;
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::Oversized { bytes: HUGE })
            .method("GET")
            .path("/service_accounts"),
    );
    let report = sweep(&app).await;
    let error = report["list_error"].as_str().unwrap_or_default();
    assert!(error.contains("larger than 1024 KiB"), "{report}");
    // And the server is fine.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn huge_answers_from_the_token_endpoint_or_the_key_set_get_an_error_page() {
    let app = TestApp::spawn().await;
    for endpoint in [Endpoint::Token, Endpoint::Jwks] {
        app.sandbox.oidc.oversize_next(endpoint, 1, HUGE);
        let page = app.sign_in_as(bob()).await;
        assert_eq!(
            page.status,
            StatusCode::BAD_GATEWAY,
            "{endpoint:?}: {}",
            page.body
        );
        assert!(page.body.contains("Request id"));
    }
    assert_eq!(app.openai_calls(SA_CREATE), 0);
    assert!(logs().contains("larger than 256 KiB"));
}

#[tokio::test]
async fn a_huge_discovery_document_keeps_the_server_unready_but_alive() {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.oidc.oversize_next(Endpoint::Discovery, 1_000, HUGE);
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["discovery"], false);
    assert_eq!(app.get("/").await.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert!(
        logs().contains("discovery document: the answer is larger than 256 KiB"),
        "refused at the cap, not read whole and found unparsable"
    );
}

#[tokio::test]
async fn a_discovery_document_naming_a_plain_http_token_endpoint_elsewhere_is_refused() {
    let mut overrides = serde_json::Map::new();
    overrides.insert(
        "token_endpoint".into(),
        json!("http://tokens.example.test/token"),
    );
    let sandbox = Sandbox::builder()
        .oidc(sandbox::oidc::Config {
            discovery_overrides: overrides,
            ..sandbox::oidc::Config::default()
        })
        .start()
        .await
        .unwrap();
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    let page = app.open(&app.url("/")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(
        logs().contains("names a token endpoint that is not https"),
        "the reason is in the log"
    );
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["discovery"], false);
}
