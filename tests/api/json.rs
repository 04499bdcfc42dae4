//! The JSON API (`/api/v1`) over HTTP with CLI sessions: what a program
//! calling it sees, what the sandbox recorded, and the OpenAPI document
//! checked against the routes the server answers.

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use sandbox::oidc::Identity;
use serde_json::{Value, json};

use crate::cli::cli_session;
use crate::helpers::*;

fn alice() -> Identity {
    Identity::workspace("alice@example.com")
}

fn carol() -> Identity {
    Identity::workspace("carol@example.com")
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = plain_client().request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, headers, value)
}

/// Asserts the error shape and returns its code.
fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        error["request_id"].as_str().map(str::len),
        Some(32),
        "{body}"
    );
    error["code"].as_str().unwrap()
}

#[tokio::test]
async fn a_key_is_made_listed_and_revoked_through_the_api() {
    let app = TestApp::spawn().await;
    let token = cli_session(&app, alice()).await;

    let (status, headers, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_no_store(&headers);
    let key = body["key"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["owner"], "alice@example.com");
    assert_eq!(body["project_id"].as_str(), app.project_id().as_deref());
    let accounts = app.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].id, id);
    assert_eq!(accounts[0].keys[0].expires_at, body["expires_at"].as_i64());
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    // A shorter life on request, to the second.
    let now = openai_key_server::clock::unix_seconds(app.clock.now());
    let (status, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&token),
        Some(json!({"ttl_seconds": 600})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let expires_at = body["expires_at"].as_i64().unwrap();
    assert!((now + 600..=now + 601).contains(&expires_at), "{body}");

    let (status, headers, body) = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_no_store(&headers);
    let listed: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{body}");
    assert!(listed.contains(&id.as_str()));
    assert!(
        !body.to_string().contains("sk-"),
        "never a key's value: {body}"
    );

    let (status, _, body) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/keys/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(models_status(&app, &key).await, StatusCode::UNAUTHORIZED);
    assert!(!app.accounts().iter().any(|a| a.id == id));
    let (status, _, body) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/keys/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    app.assert_no_secrets_logged(&[&key, &token]);
}

#[tokio::test]
async fn a_lifetime_over_the_maximum_is_refused_with_the_maximum_never_cut() {
    let app = TestApp::spawn().await;
    let token = cli_session(&app, alice()).await;
    let (status, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&token),
        Some(json!({"ttl_seconds": 3601})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "ttl_too_long");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("3600"),
        "{body}"
    );
    for bad in [
        json!({"ttl_seconds": 0}),
        json!({"ttl_seconds": "long"}),
        json!({"ttl": 5}),
    ] {
        let (status, _, body) = call(
            &app,
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(&token),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "bad_request");
    }
    assert!(app.accounts().is_empty(), "nothing made");
}

#[tokio::test]
async fn me_says_who_and_what_and_someone_taken_off_the_list_is_refused() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("MAX_KEYS_PER_USER", "2")
            .set("ADMIN_USERS", "alice@example.com"),
    )
    .await;
    let token = cli_session(&app, alice()).await;
    let (status, _, body) =
        call(&app, reqwest::Method::GET, "/api/v1/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body["admin"], true);
    assert_eq!(body["max_ttl_seconds"], 3600);
    assert_eq!(body["max_keys"], 2);
    assert!(body["session_expires_at"].as_i64().unwrap() > 0);

    // The cap holds through the API as on the pages.
    for _ in 0..2 {
        let (status, _, _) = call(
            &app,
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, headers, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), "cap_reached");
    assert!(headers.contains_key(RETRY_AFTER));

    // A replica whose allow-list no longer has alice: the session is no
    // pass.
    let replica = app
        .replica_with(&[("ALLOWED_DOMAINS", "example.org")])
        .await;
    let (status, _, body) = call(
        &replica,
        reqwest::Method::GET,
        "/api/v1/me",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "refused");
}

#[tokio::test]
async fn another_persons_key_is_not_found_and_nothing_is_deleted() {
    let app = TestApp::spawn().await;
    let alice_token = cli_session(&app, alice()).await;
    let carol_token = cli_session(&app, carol()).await;
    let (_, _, body) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&alice_token),
        None,
    )
    .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, _, body) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/keys/{id}"),
        Some(&carol_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    assert!(app.accounts().iter().any(|a| a.id == id));
    let (_, _, body) = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/keys",
        Some(&carol_token),
        None,
    )
    .await;
    assert_eq!(body["keys"], json!([]));
}

#[tokio::test]
async fn without_a_bearer_session_nothing_answers_not_even_to_a_browser_session() {
    let app = TestApp::spawn().await;
    let (status, headers, body) =
        call(&app, reqwest::Method::POST, "/api/v1/keys", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");
    assert!(
        headers
            .get(WWW_AUTHENTICATE)
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer"))
    );
    assert_eq!(
        headers.get(CACHE_CONTROL).map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    for token in ["junk", "Bearer", &"x".repeat(5000)] {
        let (status, _, body) =
            call(&app, reqwest::Method::GET, "/api/v1/me", Some(token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:.20}");
        assert_eq!(error_code(&body), "unauthorized");
    }

    // A signed-in browser's cookies are no API session, and its session
    // cookie's sealed value is no bearer token.
    let browser = browser();
    let page = app.sign_in_with(&browser, alice()).await;
    let sealed = page
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("oks_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let response = browser
        .post(app.url("/api/v1/keys"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &app,
        reqwest::Method::POST,
        "/api/v1/keys",
        Some(&sealed),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.accounts().len(), 1, "only the sign-in's own key");
}

#[tokio::test]
async fn errors_are_json_on_the_api_and_pages_for_a_browser() {
    let app = TestApp::spawn().await;
    let (status, _, body) = call(&app, reqwest::Method::GET, "/api/v1/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, _, body) = call(&app, reqwest::Method::PUT, "/api/v1/keys", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");

    // A page asked for by a program that wants JSON gets JSON…
    let response = plain_client()
        .get(app.url("/nothing"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");
    // …and a browser, a page.
    let response = plain_client()
        .get(app.url("/nothing"))
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/json;q=0.9",
        )
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

/// The document's operations: `(METHOD, path)`.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_routes() {
    let app = TestApp::spawn().await;
    let (status, _, doc) = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/openapi.json",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let expected: Vec<(String, String)> = [
        ("DELETE", "/api/v1/keys/{id}"),
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/me"),
        ("POST", "/api/v1/cli/device"),
        ("POST", "/api/v1/cli/token"),
        ("POST", "/api/v1/keys"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
    .collect();
    assert_eq!(operations(&doc), expected);
    assert!(
        doc["components"]["securitySchemes"]["cli_session"]["scheme"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
    );

    // Every documented operation is a route of the server (never 404 or
    // 405), and answers with a status the document lists for it.
    for (method, path) in operations(&doc) {
        let concrete = path.replace("{id}", "svc_acct_none");
        let method_lower = method.to_lowercase();
        let (status, _, _) = call(
            &app,
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            &concrete,
            None,
            None,
        )
        .await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
        let documented = &doc["paths"][&path][&method_lower]["responses"];
        assert!(
            documented.get(status.as_str()).is_some(),
            "{method} {path} answered {status}, which the document does not list: {documented}"
        );
    }
    // And the routes the server answers under /api/v1 are all documented:
    // a method the document does not list is not allowed.
    for (method, path) in [("PUT", "/api/v1/keys"), ("GET", "/api/v1/cli/token")] {
        let (status, _, _) = call(
            &app,
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
}
