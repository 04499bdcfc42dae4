//! Behind a load balancer: with `TRUSTED_PROXIES`, each client is known by
//! the address the proxy forwards, so one client's junk cannot use up the
//! allowance everyone else shares; without it, forwarding headers change
//! nothing.

use reqwest::StatusCode;
use sandbox::oidc::Identity;

use crate::helpers::*;

/// The sandbox's token endpoint, as its journal counts it.
const TOKEN: &str = "POST /token";

/// A browser behind the proxy that this test client stands for: its
/// requests arrive from 127.0.0.1 carrying `X-Forwarded-For`.
fn behind_proxy(x_forwarded_for: &str) -> reqwest::Client {
    browser_with(&[("x-forwarded-for", x_forwarded_for)])
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_allowance_of_failed_sign_ins() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TRUSTED_PROXIES", "127.0.0.1")
            .set("RATE_LIMIT_PER_IP", "2"),
    )
    .await;
    let attacker = behind_proxy("198.51.100.66");
    for _ in 0..2 {
        let page = app.junk_callback(&attacker).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    }
    let page = app.junk_callback(&attacker).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    // Writing someone else's address in front changes nothing: the proxy
    // appends the real one, and that is the one that counts.
    let forging = behind_proxy("198.51.100.7, 198.51.100.66");
    let exchanges = app.sandbox.oidc.journal().count(TOKEN);
    let page = app.junk_callback(&forging).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN), exchanges);

    // Everyone else, through the same proxy, signs in.
    for (address, user) in [
        ("198.51.100.7", "alice@example.com"),
        ("203.0.113.9", "carol@example.com"),
    ] {
        let page = app
            .sign_in_with(&behind_proxy(address), Identity::workspace(user))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{address}: {}", page.body);
    }
}

#[tokio::test]
async fn the_forwarded_header_is_read_too_and_headers_that_disagree_count_as_the_proxy() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TRUSTED_PROXIES", "127.0.0.0/8")
            .set("RATE_LIMIT_PER_IP", "1"),
    )
    .await;
    let attacker = browser_with(&[("forwarded", "for=\"[2001:db8::66]:4711\";proto=https")]);
    assert_eq!(
        app.junk_callback(&attacker).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.junk_callback(&attacker).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A client that adds the other header to pick a fresh address lands in
    // the proxy's own allowance, which no honest client uses…
    let mixed = browser_with(&[
        ("forwarded", "for=\"[2001:db8::66]:4711\""),
        ("x-forwarded-for", "192.0.2.1"),
    ]);
    assert_eq!(
        app.junk_callback(&mixed).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.junk_callback(&mixed).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // …so honest clients behind the proxy are untouched.
    let honest = browser_with(&[("forwarded", "for=192.0.2.1")]);
    let page = app
        .sign_in_with(&honest, Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn without_trusted_proxies_forwarding_headers_change_nothing() {
    let app = TestApp::spawn_with(Options::default().set("RATE_LIMIT_PER_IP", "2")).await;
    for (i, expected) in [
        StatusCode::BAD_REQUEST,
        StatusCode::BAD_REQUEST,
        StatusCode::TOO_MANY_REQUESTS,
    ]
    .into_iter()
    .enumerate()
    {
        // A fresh address every time, in both headers: all from 127.0.0.1.
        let spoofing = browser_with(&[
            ("x-forwarded-for", &format!("198.51.100.{i}")),
            ("forwarded", &format!("for=198.51.100.{i}")),
        ]);
        assert_eq!(
            app.junk_callback(&spoofing).await.status,
            expected,
            "attempt {i}"
        );
    }
}

#[tokio::test]
async fn logs_and_audit_lines_carry_the_address_the_proxy_forwarded() {
    let app = TestApp::spawn_with(Options::default().set("TRUSTED_PROXIES", "127.0.0.1/32")).await;
    let page = app
        .sign_in_with(
            &behind_proxy("6.6.6.6, 203.0.113.77"),
            Identity::workspace("alice@example.com"),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let logs = logs();
    let issued = logs
        .lines()
        .filter(|l| l.contains("\"audit\":\"issued\"") && l.contains("alice@example.com"))
        .find(|l| l.contains("203.0.113.77"))
        .unwrap_or_else(|| panic!("no audit line with the forwarded address"));
    assert!(!issued.contains("6.6.6.6"), "{issued}");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"answered\"") && l.contains("\"client.ip\":\"203.0.113.77\"")),
        "the request log line names the client too"
    );
}
