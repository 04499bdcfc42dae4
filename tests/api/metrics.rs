//! `/metrics` after a known sequence: the counters against what the
//! sandbox recorded, and nothing about a person in any label.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use sandbox::oidc::Identity;

use crate::helpers::*;

/// The exposition as `series → value`.
async fn scrape(app: &TestApp) -> (String, BTreeMap<String, f64>) {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (text, series)
}

/// The sum of every series of `name` whose labels contain each of `labels`.
fn sum(series: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(s, _)| {
            (s.as_str() == name || s.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| s.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn the_counters_match_what_the_sandbox_saw() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;

    let alice = browser();
    let page = app
        .sign_in_with(&alice, Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let bob = browser();
    app.sign_in_with(&bob, Identity::consumer("bob@gmail.com"))
        .await;
    let refused = app.sign_in_as(Identity::workspace("eve@other.org")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Alice revokes her own key.
    let keys = my_keys(&app, &alice).await;
    let account = listed_accounts(&keys.body)[0].clone();
    let csrf = hidden(&keys.body, "csrf");
    let revoked = post_form(
        &app,
        &alice,
        &format!("/keys/{account}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert!(revoked.status.is_redirection() || revoked.status.is_success());

    let (text, series) = scrape(&app).await;
    assert_eq!(
        sum(
            &series,
            "oks_keys_issued_total",
            &["holder=\"person\"", "scoped=\"false\""]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sum(&series, "oks_keys_issued_total", &[]) as u64,
        app.openai_calls(SA_CREATE)
    );
    assert_eq!(
        sum(&series, "oks_sign_ins_total", &["outcome=\"success\""]),
        2.0
    );
    assert_eq!(
        sum(&series, "oks_sign_ins_total", &["outcome=\"refused\""]),
        1.0
    );
    assert_eq!(
        sum(
            &series,
            "oks_keys_refused_total",
            &["reason=\"not_allowed\""]
        ),
        1.0
    );
    assert_eq!(
        sum(&series, "oks_keys_revoked_total", &["actor=\"self\""]),
        1.0
    );
    assert_eq!(sum(&series, "oks_live_keys", &[]), 1.0);
    assert!(sum(&series, "oks_jwks_refreshes_total", &["outcome=\"ok\""]) >= 1.0);
    assert!(
        sum(
            &series,
            "oks_http_requests_total",
            &["route=\"/oauth2/callback\""]
        ) >= 3.0
    );
    assert_eq!(sum(&series, "oks_build_info", &[]), 1.0);
    assert_eq!(
        sum(&series, "oks_upstream_up", &["upstream=\"openai\""]),
        1.0
    );
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["last_call"]["openai"], "up", "{ready}");
    assert_eq!(ready["last_call"]["identity_provider"], "up", "{ready}");
    for who in [
        "alice@",
        "bob@",
        "eve@",
        "example.com",
        "gmail.com",
        "other.org",
    ] {
        assert!(!text.contains(who), "{who} in the metrics:\n{text}");
    }

    // Bob's key expires and is deleted; then every Admin API call the
    // sandbox saw was counted, by route and in total.
    app.advance(Duration::from_secs(86_400 + 5));
    for _ in 0..300 {
        if app.accounts().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(app.accounts().is_empty());
    let (text, series) = scrape(&app).await;
    assert_eq!(
        sum(&series, "oks_keys_revoked_total", &["actor=\"expiry\""])
            + sum(&series, "oks_keys_revoked_total", &["actor=\"sweep\""]),
        1.0,
        "{text}"
    );
    assert_eq!(sum(&series, "oks_live_keys", &[]), 0.0);
    assert!(sum(&series, "oks_sweeps_total", &[]) >= 1.0);
    let counters = app.sandbox.openai.journal().counters();
    for (route, count) in &counters {
        if !route.contains("/v1/organization") {
            continue;
        }
        let counted = sum(
            &series,
            "oks_admin_api_requests_total",
            &[&format!("route=\"{route}\"")],
        );
        assert_eq!(counted as u64, *count, "{route}:\n{text}");
    }
    let organisation: u64 = counters
        .iter()
        .filter(|(route, _)| route.contains("/v1/organization"))
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        sum(&series, "oks_admin_api_requests_total", &[]) as u64,
        organisation
    );
    assert!(
        sum(&series, "oks_admin_api_request_duration_seconds_count", &[]) as u64 == organisation
    );
}

#[tokio::test]
async fn metrics_address_moves_metrics_off_the_main_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(
        Options::default().set("METRICS_ADDRESS", &format!("127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(response) = plain_client()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            answer = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = answer.expect("the metrics listener answers");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.text().await.unwrap().contains("oks_build_info"));
}

#[tokio::test]
async fn the_providers_state_follows_its_token_endpoint_too() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let last_call = || async {
        let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
        ready["last_call"]["identity_provider"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(last_call().await, "up");
    // The token endpoint down (the keys are cached: no JWKS call tells).
    app.sandbox.oidc.fail_next_token(1, 503);
    let failed = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
    assert_eq!(last_call().await, "down");
    let (_, series) = scrape(&app).await;
    assert_eq!(
        sum(
            &series,
            "oks_upstream_up",
            &["upstream=\"identity_provider\""]
        ),
        0.0
    );
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(last_call().await, "up");
}
