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
        .filter(|l| l.contains("\"audit\":\"key.issued\"") && l.contains("alice@example.com"))
        .find(|l| l.contains("203.0.113.77"))
        .unwrap_or_else(|| panic!("no audit line with the forwarded address"));
    assert!(!issued.contains("6.6.6.6"), "{issued}");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"answered\"") && l.contains("\"client.ip\":\"203.0.113.77\"")),
        "the request log line names the client too"
    );
}

#[tokio::test]
async fn a_client_cannot_hide_the_proxys_hop_behind_a_quote_or_an_unreadable_value() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TRUSTED_PROXIES", "127.0.0.1")
            .set("RATE_LIMIT_PER_IP", "1"),
    )
    .await;
    // What a proxy that appends to the client's own header passes on: each
    // time the client names a fresh address on the left.
    for i in 0..3 {
        let quoted = browser_with(&[(
            "forwarded",
            &format!(r#"for=198.51.100.{i};x="\"", for=203.0.113.66"#),
        )]);
        let expected = if i == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(
            app.junk_callback(&quoted).await.status,
            expected,
            "attempt {i}"
        );
    }
    // A byte outside ASCII in the proxy-managed header, and a Forwarded of
    // the client's choosing: the two disagree, so the proxy's own bucket.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        reqwest::header::HeaderValue::from_bytes(b"\x80, 203.0.113.77").unwrap(),
    );
    headers.insert("forwarded", "for=198.51.100.200".parse().unwrap());
    let unreadable = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .default_headers(headers)
        .build()
        .unwrap();
    assert_eq!(
        app.junk_callback(&unreadable).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.junk_callback(&unreadable).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a second junk callback from the same place is limited"
    );
    let chosen = browser_with(&[("forwarded", "for=198.51.100.200")]);
    let page = app
        .sign_in_with(&chosen, Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "198.51.100.200 was never charged"
    );
}

#[tokio::test]
async fn ipv6_clients_of_one_64_share_an_allowance() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TRUSTED_PROXIES", "127.0.0.1")
            .set("RATE_LIMIT_PER_IP", "2"),
    )
    .await;
    for (address, expected) in [
        ("2001:db8:1:2::1", StatusCode::BAD_REQUEST),
        ("2001:db8:1:2:ffff::9", StatusCode::BAD_REQUEST),
        ("2001:db8:1:2:abcd::77", StatusCode::TOO_MANY_REQUESTS),
    ] {
        let page = app.junk_callback(&behind_proxy(address)).await;
        assert_eq!(page.status, expected, "{address}");
    }
    let next_door = behind_proxy("2001:db8:1:3::1");
    let page = app
        .sign_in_with(&next_door, Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn a_provider_outage_does_not_use_up_the_allowance() {
    let app = TestApp::spawn_with(Options::default().set("RATE_LIMIT_PER_IP", "1")).await;
    for _ in 0..3 {
        app.sandbox.oidc.fail_next_token(1, 503);
        let page = app
            .sign_in_as(Identity::workspace("alice@example.com"))
            .await;
        assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    }
    let page = app
        .sign_in_as(Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}
