//! Abuse: one person or one address cannot mint unlimited keys, hammer
//! `/revoke`, or hold the server with a slow connection.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sandbox::oidc::Identity;

use crate::helpers::*;

const TOKEN: &str = "POST /token";

fn retry_after(page: &KeyPage) -> u64 {
    page.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn at_the_cap_of_live_keys_a_new_key_is_refused_until_the_oldest_expires() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("MAX_KEYS_PER_USER", "2")
            .set("EXPIRATION", "600"),
    )
    .await;
    for _ in 0..2 {
        let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
    assert!(page.body.contains("2 live keys"), "{}", page.body);
    assert_eq!(
        page.body.matches("class=\"danger revoke\"").count(),
        2,
        "at the cap, my keys with a revoke button each: {}",
        page.body
    );
    assert!(
        (590..=600).contains(&retry_after(&page)),
        "{:?}",
        page.headers
    );
    assert!(!page.body.contains("sk-svcacct-"));
    assert_eq!(app.openai_calls(SA_CREATE), 2, "the cap cost no create");
    assert_eq!(app.accounts().len(), 2);

    // Someone else is not affected.
    let other = app
        .sign_in_as(Identity::workspace("alice@example.com"))
        .await;
    assert_eq!(other.status, StatusCode::OK);

    // Once the oldest keys expire and are deleted, bob may have a new one.
    app.advance(Duration::from_secs(601));
    let mut page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    for _ in 0..100 {
        if page.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    }
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test]
async fn one_user_reloading_is_rate_limited_with_retry_after() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("MAX_KEYS_PER_USER", "0")
            .set("RATE_LIMIT_PER_USER", "3"),
    )
    .await;
    for _ in 0..3 {
        let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&page) >= 1);
    assert_eq!(app.openai_calls(SA_CREATE), 3);
    // An hour's allowance refills over the hour.
    app.advance(Duration::from_secs(1_200));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK);
}

#[tokio::test]
async fn failed_sign_ins_from_one_address_are_stopped_before_the_provider_is_asked() {
    let app = TestApp::spawn_with(Options::default().set("RATE_LIMIT_PER_IP", "2")).await;
    // Honest sign-ins never use the allowance up, however many.
    for user in ["bob@gmail.com", "alice@example.com", "carol@example.com"] {
        let identity = if user.ends_with("gmail.com") {
            Identity::consumer(user)
        } else {
            Identity::workspace(user)
        };
        assert_eq!(app.sign_in_as(identity).await.status, StatusCode::OK);
    }
    // Junk codes do: two are exchanged (and refused)…
    for _ in 0..2 {
        let page = app.junk_callback(&app.client).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    }
    let exchanges = app.sandbox.oidc.journal().count(TOKEN);
    // …the third is not even tried.
    let page = app.junk_callback(&app.client).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.sandbox.oidc.journal().count(TOKEN),
        exchanges,
        "no code exchange for a limited address"
    );
    // A refused account counts as a failure too; an honest one elsewhere is
    // not affected.
    let elsewhere = browser_from("127.0.0.2".parse().unwrap());
    let page = app
        .sign_in_with(&elsewhere, Identity::workspace("dave@example.com"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(app.openai_calls(SA_CREATE), 4);
}

#[tokio::test]
async fn revoke_is_rate_limited_per_address() {
    let app = TestApp::spawn_with(Options::default().set("RATE_LIMIT_REVOKE", "2")).await;
    for _ in 0..2 {
        let response = app.client.post(app.url("/revoke")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app.client.post(app.url("/revoke")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_the_server_and_are_cut_off() {
    let app = TestApp::spawn().await;
    // Fifty connections that send half a request line and stall.
    let mut slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(app.addr).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    // Everyone else is still served at once.
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);

    // The stalled ones are closed by the header-read timeout (hyper's real
    // timer, so this one test waits for it).
    let stream = slow.pop().unwrap();
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).map(|_| buf)
    })
    .await
    .unwrap();
    let answer = closed.expect("the server closed the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "no normal answer to a stalled request: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}
