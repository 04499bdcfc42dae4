//! The attack suite: each attack is a real HTTP exchange against the server
//! and the sandbox, asserting what the attacker sees (status, no key, no
//! secret, no redirect) and that no service account was created.
//!
//! Attacks already covered in `signin.rs` (alg none, a state mismatch, code
//! reuse, a callback without a cookie, a provider error, an unverified
//! email, `hd` missing or different, an extra audience, the bare issuer)
//! are not repeated here unless with a twist.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use sandbox::oidc::{Identity, Signing, TokenOverride};
use serde_json::{Map, Value, json};
use url::Url;

use crate::helpers::*;

/// The provider's token endpoint, as the sandbox's journal counts it.
const TOKEN_ENDPOINT: &str = "POST /token";

/// Longer than any real `code` or `state`.
const OVER_LONG: usize = 10_000;

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

/// Whether `text` shows the issued-key prefix or a secret of `app`.
fn leaked(app: &TestApp, text: &str) -> Option<&'static str> {
    if text.contains("sk-svcacct-") {
        return Some("an issued key");
    }
    secret_in(app, text)
}

/// Whether `text` shows the admin key, the client secret or the session
/// secret.
fn secret_in(app: &TestApp, text: &str) -> Option<&'static str> {
    if text.contains(&app.admin_key) {
        return Some("the admin key");
    }
    if text.contains(&app.client_secret) {
        return Some("the client secret");
    }
    if text.contains(SESSION_SECRET) {
        return Some("the session secret");
    }
    None
}

/// Whatever the outcome: never a 5xx, and neither the body nor a header
/// shows a key or a secret.
fn assert_clean(app: &TestApp, status: StatusCode, headers: &HeaderMap, body: &str) {
    assert!(!status.is_server_error(), "{status}:\n{body}");
    if let Some(what) = leaked(app, body) {
        panic!("{what} on the page:\n{body}");
    }
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if let Some(what) = leaked(app, &value) {
            panic!("{what} in the {name} header");
        }
    }
}

/// A page that rightly shows a key shows no secret of the server.
fn assert_key_page(app: &TestApp, page: &KeyPage) -> String {
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    if let Some(what) = secret_in(app, &page.body) {
        panic!("{what} on the key page");
    }
    let key = page.key();
    assert!(key.starts_with("sk-svcacct-"), "{key}");
    key
}

/// `body` with the numeric character references of `<`, `>`, `"` and `'`
/// written as named ones, so that either escaping style compares equal.
fn named_entities(body: &str) -> String {
    body.replace("&#60;", "&lt;")
        .replace("&#62;", "&gt;")
        .replace("&#34;", "&quot;")
        .replace("&#39;", "&apos;")
}

fn assert_nothing_created(app: &TestApp) {
    assert_eq!(
        app.openai_calls(SA_CREATE),
        0,
        "a service account was created"
    );
    assert!(app.accounts().is_empty(), "{:?}", app.accounts());
}

/// The attack was refused with `status`: no key, no secret, no redirect
/// (so no loop), nothing created.
fn assert_refused(app: &TestApp, page: &KeyPage, status: StatusCode) {
    assert_eq!(page.status, status, "{}", page.body);
    assert_clean(app, page.status, &page.headers, &page.body);
    assert!(
        page.headers.get(LOCATION).is_none(),
        "a refusal never redirects: {:?}",
        page.headers.get(LOCATION)
    );
    assert_nothing_created(app);
}

/// Like [`assert_refused`] for any 4xx.
fn assert_client_error(app: &TestApp, page: &KeyPage) {
    assert!(
        page.status.is_client_error(),
        "{}:\n{}",
        page.status,
        page.body
    );
    assert_refused(app, page, page.status);
}

/// The whole flow as `identity`, with the ID token built to order.
async fn sign_in_forged(app: &TestApp, identity: Identity, forged: TokenOverride) -> KeyPage {
    app.sandbox.oidc.override_next_token(forged);
    app.sign_in_as(identity).await
}

/// The whole flow as bob (who is allowed) with these claims merged over the
/// honest ones (`null` removes a claim).
async fn sign_in_as_bob_with(app: &TestApp, claims: Value) -> KeyPage {
    sign_in_forged(app, bob(), TokenOverride::claims(claims)).await
}

/// Starts a sign-in in `app`'s browser and returns its `state`.
async fn login_state(app: &TestApp) -> String {
    query_param(&app.start_sign_in().await, "state")
}

/// A second browser: keeps its own cookies, does not follow redirects.
fn other_browser() -> reqwest::Client {
    browser()
}

async fn fetch(client: &reqwest::Client, method: Method, url: &str) -> KeyPage {
    KeyPage::read(client.request(method, url).send().await.unwrap()).await
}

/// What a hand-written request got back.
#[derive(Debug)]
enum Raw {
    /// A response: its status and everything read.
    Answered(u16, String),
    /// The server closed or reset the connection without answering.
    Closed,
    /// Nothing at all within the client's timeout.
    Hung,
}

/// Sends `request` as is on a new connection and reads until the server
/// closes, with a 10 s timeout on every read and write.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> Raw {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A write cut short means the server already gave up on us.
        let _ = stream.write_all(&request);
        let mut response = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let mut timed_out = false;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    timed_out = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        match status {
            Some(status) => Raw::Answered(status, text),
            None if timed_out => Raw::Hung,
            None => Raw::Closed,
        }
    })
    .await
    .unwrap()
}

/// A request that must be cut off: a 4xx or a closed connection, never a
/// success, a 5xx or a hang.
fn assert_cut_off(app: &TestApp, what: &str, outcome: &Raw) {
    match outcome {
        Raw::Answered(status, text) => {
            assert!(
                (400..500).contains(status),
                "{what}: answered {status}:\n{}",
                &text[..text.len().min(2000)]
            );
            if let Some(secret) = leaked(app, text) {
                panic!("{what}: {secret} in the answer");
            }
        }
        Raw::Closed => {}
        Raw::Hung => panic!("{what}: the server neither answered nor closed in 10 s"),
    }
}

// ---------------------------------------------------------------- ID tokens

#[tokio::test]
async fn an_id_token_signed_with_hs256_keyed_by_the_providers_public_key_gets_no_key() {
    let app = TestApp::spawn().await;
    let page = sign_in_forged(
        &app,
        bob(),
        TokenOverride::signing(Signing::Hs256WithPublicKey),
    )
    .await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_with_a_valid_signature_by_a_key_outside_the_jwks_gets_no_key() {
    let app = TestApp::spawn().await;
    let page = sign_in_forged(&app, bob(), TokenOverride::signing(Signing::ForeignKey)).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn id_tokens_with_unknown_kids_get_no_key_and_refetch_the_jwks_at_most_once_per_floor_period()
{
    let app = TestApp::spawn().await;
    // A different unknown kid each time, so that no per-kid memory helps.
    let forged = |i: usize| TokenOverride {
        header: object(json!({ "kid": format!("{i:040x}") })),
        signing: Signing::UnknownKid,
        ..TokenOverride::default()
    };

    let before = app.sandbox.oidc.jwks_fetches();
    for i in 0..5 {
        let page = sign_in_forged(&app, bob(), forged(i)).await;
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    let burst = app.sandbox.oidc.jwks_fetches() - before;
    assert!(
        burst <= 1,
        "5 unknown kids made {burst} JWKS fetches within one floor period"
    );

    // After the floor, a bad token may fetch once more, not once each.
    app.advance(Duration::from_secs(31));
    let before = app.sandbox.oidc.jwks_fetches();
    for i in 5..8 {
        let page = sign_in_forged(&app, bob(), forged(i)).await;
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    let page = sign_in_forged(&app, bob(), TokenOverride::signing(Signing::UnknownKid)).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    let later = app.sandbox.oidc.jwks_fetches() - before;
    assert!(
        later <= 1,
        "4 unknown kids made {later} JWKS fetches after the floor passed"
    );
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_legitimate_key_rotation_whose_new_key_is_published_still_signs_people_in() {
    let app = TestApp::spawn().await;
    let first = app.sign_in_as(bob()).await;
    let first_key = assert_key_page(&app, &first);
    let fetches = app.sandbox.oidc.jwks_fetches();

    let new_kid = app.sandbox.oidc.rotate_keys(true);
    assert_eq!(app.sandbox.oidc.current_kid(), new_kid);
    // Past the floor, an unknown kid may make the server fetch the keys.
    app.advance(Duration::from_secs(31));
    let second = app.sign_in_as(bob()).await;

    let second_key = assert_key_page(&app, &second);
    assert_eq!(
        app.sandbox.oidc.jwks_fetches(),
        fetches + 1,
        "the new kid made exactly one fetch"
    );
    assert_eq!(app.openai_calls(SA_CREATE), 2);
    app.assert_no_secrets_logged(&[&first_key, &second_key]);
}

#[tokio::test]
async fn an_id_token_whose_payload_was_changed_after_signing_gets_no_key() {
    let app = TestApp::spawn().await;
    // Signed for eve (not allowed), shown as bob (allowed).
    let forged = TokenOverride {
        claims: object(json!({ "email": "bob@gmail.com" })),
        tamper_payload_after_signing: true,
        ..TokenOverride::default()
    };
    let page = sign_in_forged(&app, Identity::consumer("eve@evil.test"), forged).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);

    // The same with only `sub` changed, for bob himself.
    let forged = TokenOverride {
        tamper_payload_after_signing: true,
        ..TokenOverride::default()
    };
    let page = sign_in_forged(&app, bob(), forged).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_naming_no_key_or_another_algorithm_than_its_key_gets_no_key() {
    let app = TestApp::spawn().await;
    for header in [
        json!({ "kid": null }),
        json!({ "alg": "ES256" }),
        json!({ "alg": "RS512" }),
        json!({ "alg": "HS256" }),
    ] {
        let forged = TokenOverride {
            header: object(header.clone()),
            ..TokenOverride::default()
        };
        let page = sign_in_forged(&app, bob(), forged).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{header}");
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_expired_id_token_gets_no_key() {
    let app = TestApp::spawn().await;
    let now = app.sandbox.clock.unix();
    // Beyond the 60 s skew.
    let page = sign_in_as_bob_with(&app, json!({ "iat": now - 3720, "exp": now - 120 })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_without_a_lifetime_gets_no_key() {
    let app = TestApp::spawn().await;
    for claims in [json!({ "exp": null }), json!({ "iat": null })] {
        let page = sign_in_as_bob_with(&app, claims.clone()).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{claims}");
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_issued_in_the_future_beyond_the_skew_gets_no_key() {
    let app = TestApp::spawn().await;
    let now = app.sandbox.clock.unix();
    let page = sign_in_as_bob_with(&app, json!({ "iat": now + 300, "exp": now + 3900 })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_not_valid_before_a_future_time_gets_no_key() {
    let app = TestApp::spawn().await;
    let now = app.sandbox.clock.unix();
    let page = sign_in_as_bob_with(&app, json!({ "nbf": now + 300 })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_from_another_issuer_gets_no_key() {
    let app = TestApp::spawn().await;
    let issuer = app.sandbox.oidc_issuer_url();
    for iss in [
        "https://evil.test".to_owned(),
        // Google's own issuer is not this provider's.
        "https://accounts.google.com".to_owned(),
        format!("{issuer}.evil.test"),
        format!("{issuer}/evil"),
        format!("https://evil.test/{issuer}"),
        String::new(),
    ] {
        let page = sign_in_as_bob_with(&app, json!({ "iss": iss })).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "iss {iss:?} was accepted"
        );
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    let page = sign_in_as_bob_with(&app, json!({ "iss": null })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_for_another_audience_gets_no_key() {
    let app = TestApp::spawn().await;
    let other = "999999999999-someone.apps.googleusercontent.com";
    for claims in [
        json!({ "aud": other, "azp": other }),
        // Our client id is not ours just because azp says so.
        json!({ "aud": other }),
        json!({ "aud": [other], "azp": other }),
        json!({ "aud": [] }),
        json!({ "aud": null }),
    ] {
        let page = sign_in_as_bob_with(&app, claims.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{claims} was accepted"
        );
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_for_several_audiences_presented_by_another_party_gets_no_key() {
    let app = TestApp::spawn().await;
    let ours = app.sandbox.oidc.client_id();
    let other = "999999999999-someone.apps.googleusercontent.com";
    for claims in [
        json!({ "aud": [ours, other], "azp": other }),
        json!({ "aud": [other, ours], "azp": other }),
        // Only our audience, but issued to another party.
        json!({ "aud": ours, "azp": other }),
        json!({ "aud": [ours], "azp": other }),
    ] {
        let page = sign_in_as_bob_with(&app, claims.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{claims} was accepted"
        );
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_without_a_nonce_gets_no_key() {
    let app = TestApp::spawn().await;
    let page = sign_in_as_bob_with(&app, json!({ "nonce": null })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_with_a_wrong_nonce_or_another_logins_nonce_gets_no_key() {
    let app = TestApp::spawn().await;
    for nonce in ["forged", ""] {
        let page = sign_in_as_bob_with(&app, json!({ "nonce": nonce })).await;
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    // The nonce of a login another browser started.
    let other = other_browser();
    let response = other.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let theirs = query_param(&location(&response), "nonce");
    let page = sign_in_as_bob_with(&app, json!({ "nonce": theirs })).await;
    assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_without_a_subject_gets_no_key() {
    let app = TestApp::spawn().await;
    for claims in [json!({ "sub": null }), json!({ "sub": "" })] {
        let page = sign_in_as_bob_with(&app, claims.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{claims} was accepted"
        );
        assert_refused(&app, &page, StatusCode::UNAUTHORIZED);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_callback_of_one_login_presented_by_another_browser_with_its_own_login_is_refused() {
    let app = TestApp::spawn().await;
    // The victim's browser gets as far as the provider's redirect back.
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in().await;
    let victims_callback = app.authorize(&authorization).await;

    // The attacker's browser has a login of its own.
    let attacker = other_browser();
    let response = attacker.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let attackers_state = query_param(&location(&response), "state");

    // 1. The victim's code and state, in the attacker's browser.
    let page = fetch(&attacker, Method::GET, &victims_callback).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.sandbox.oidc.journal().count(TOKEN_ENDPOINT),
        0,
        "a mismatched state never reaches the token endpoint"
    );

    // 2. The victim's code under the attacker's own state (a fresh login,
    // as the first attempt spent the login cookie): the PKCE verifier and
    // the nonce are the attacker's, not the victim's.
    let response = attacker.get(app.url("/")).send().await.unwrap();
    let fresh_state = query_param(&location(&response), "state");
    assert_ne!(fresh_state, attackers_state);
    let code = query_param(&victims_callback, "code");
    let mut forged = Url::parse(&app.url("/oauth2/callback")).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &fresh_state);
    let page = fetch(&attacker, Method::GET, forged.as_str()).await;
    assert_client_error(&app, &page);
    app.assert_no_secrets_logged(&[]);
}

// ----------------------------------------------------------------- identity

#[tokio::test]
async fn an_email_the_provider_does_not_vouch_for_is_refused() {
    let app = TestApp::spawn().await;
    // Claim removed, or a string other than "true".
    for verified in [Value::Null, json!("false"), json!("yes"), json!("TRUE ")] {
        let page = sign_in_as_bob_with(&app, json!({ "email_verified": verified })).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{verified}: {}",
            page.body
        );
        assert!(page.body.contains("not verified"), "{}", page.body);
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    // false, for an account of an allowed Workspace domain.
    let page = app
        .sign_in_as(Identity::workspace("alice@example.com").unverified())
        .await;
    assert_refused(&app, &page, StatusCode::FORBIDDEN);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_id_token_without_an_email_is_refused() {
    let app = TestApp::spawn().await;
    let page = sign_in_as_bob_with(&app, json!({ "email": null })).await;
    assert_refused(&app, &page, StatusCode::FORBIDDEN);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_hosted_domain_that_does_not_match_an_allowed_email_domain_is_refused() {
    let app = TestApp::spawn().await;
    for identity in [
        // The allowed domain by email, but no hd: a personal account.
        Identity::consumer("alice@example.com"),
        // hd of another domain, or one that merely contains ours.
        Identity::workspace("alice@example.com").with_hd(Some("evil.test")),
        Identity::workspace("alice@example.com").with_hd(Some("badexample.com")),
        Identity::workspace("alice@example.com").with_hd(Some("example.com.evil.org")),
        Identity::workspace("alice@example.com").with_hd(Some("")),
        // An allowed hd does not make another domain's address ours.
        Identity::workspace("eve@evil.test").with_hd(Some("example.com")),
    ] {
        let page = app.sign_in_as(identity.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{identity:?} was admitted"
        );
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn upper_and_mixed_case_emails_of_allowed_accounts_get_a_key() {
    let app = TestApp::spawn().await;
    let mut keys = Vec::new();
    for identity in [
        Identity::consumer("BOB@GMAIL.COM"),
        Identity::consumer("bOb@GmAiL.cOm"),
        Identity::workspace("ALICE@EXAMPLE.COM"),
        Identity::workspace("AlIcE@ExAmPlE.cOm"),
    ] {
        let page = app.sign_in_as(identity.clone()).await;
        assert_eq!(page.status, StatusCode::OK, "{identity:?}: {}", page.body);
        keys.push(assert_key_page(&app, &page));
    }
    assert_eq!(app.openai_calls(SA_CREATE), 4);
    let mut owners: Vec<String> = app
        .accounts()
        .into_iter()
        .map(|a| a.name.splitn(4, '.').nth(3).unwrap().to_owned())
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            "alice@example.com",
            "alice@example.com",
            "bob@gmail.com",
            "bob@gmail.com"
        ],
        "accounts are named after the lower-cased address"
    );
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.assert_no_secrets_logged(&keys);
}

#[tokio::test]
async fn an_email_with_a_trailing_dot_is_refused() {
    let app = TestApp::spawn().await;
    for identity in [
        Identity::consumer("bob@gmail.com."),
        Identity::workspace("alice@example.com.").with_hd(Some("example.com")),
        Identity::workspace("alice@example.com.").with_hd(Some("example.com.")),
    ] {
        let page = app.sign_in_as(identity.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{identity:?} was admitted"
        );
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn plus_addressing_does_not_reach_a_listed_address() {
    let app = TestApp::spawn().await;
    for email in ["bob+x@gmail.com", "bob+@gmail.com", "x+bob@gmail.com"] {
        let page = app.sign_in_as(Identity::consumer(email)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{email} was admitted");
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn unicode_look_alikes_of_an_allowed_address_or_domain_are_refused() {
    let app = TestApp::spawn().await;
    for identity in [
        // Cyrillic о (U+043E) for o, in the local part and in the domain.
        Identity::consumer("b\u{43e}b@gmail.com"),
        Identity::consumer("bob@gmail.c\u{43e}m"),
        // Cyrillic а (U+0430) for a in an allowed Workspace domain.
        Identity::workspace("alice@ex\u{430}mple.com"),
        Identity::workspace("alice@ex\u{430}mple.com").with_hd(Some("example.com")),
        // Full-width letters.
        Identity::consumer("\u{ff42}\u{ff4f}\u{ff42}@gmail.com"),
        // A combining mark after a letter.
        Identity::consumer("bo\u{301}b@gmail.com"),
    ] {
        let page = app.sign_in_as(identity.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{identity:?} was admitted"
        );
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_unicode_letter_that_lower_cases_to_ascii_does_not_match_a_listed_address() {
    let app = TestApp::spawn_with(
        Options::default().set("ALLOWED_USERS", "bob@gmail.com,kate@gmail.com"),
    )
    .await;
    // KELVIN SIGN (U+212A) looks like K and lower-cases to ASCII k.
    let page = app
        .sign_in_as(Identity::consumer("\u{212a}ate@gmail.com"))
        .await;
    assert_eq!(
        page.status,
        StatusCode::FORBIDDEN,
        "\"\u{212a}ate@gmail.com\" was admitted as kate@gmail.com; accounts: {:?}",
        app.accounts().iter().map(|a| &a.name).collect::<Vec<_>>()
    );
    assert_refused(&app, &page, StatusCode::FORBIDDEN);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn whitespace_around_or_inside_an_allowed_address_is_refused() {
    let app = TestApp::spawn().await;
    for email in [
        " bob@gmail.com",
        "bob@gmail.com ",
        "\tbob@gmail.com",
        "bob@gmail.com\n",
        "bob@gmail.com\r\n",
        "bob @gmail.com",
        "bob@gmail.com\u{a0}",
        // Zero-width space: invisible, not whitespace to Rust.
        "bob\u{200b}@gmail.com",
        "bob@gmail.com\u{200b}",
        "bob@gmail.com\0",
    ] {
        let page = app.sign_in_as(Identity::consumer(email)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{email:?} was admitted");
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_allowed_domain_admits_neither_its_suffixes_nor_its_subdomains() {
    let app = TestApp::spawn().await;
    for identity in [
        Identity::workspace("mallory@badexample.com"),
        Identity::workspace("mallory@example.com.evil.org"),
        Identity::workspace("mallory@sub.example.com"),
        // A secondary-domain address in the example.com Workspace.
        Identity::workspace("dave@sub.example.com").with_hd(Some("example.com")),
        Identity::workspace("mallory@badexample.com").with_hd(Some("example.com")),
    ] {
        let page = app.sign_in_as(identity.clone()).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{identity:?} was admitted"
        );
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
    }
    app.assert_no_secrets_logged(&[]);
}

// --------------------------------------------------------------------- flow

#[tokio::test]
async fn a_callback_without_state_is_refused_before_the_code_is_exchanged() {
    let app = TestApp::spawn().await;
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in().await;
    let callback = app.authorize(&authorization).await;
    let code = query_param(&callback, "code");
    let mut url = Url::parse(&app.url("/oauth2/callback")).unwrap();
    url.query_pairs_mut().append_pair("code", &code);

    let page = app.open(url.as_str()).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("href=\"/\""), "offers to start again");
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);

    // An empty state is no state either.
    app.start_sign_in().await;
    url.query_pairs_mut().append_pair("state", "");
    let page = app.open(url.as_str()).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn over_long_callback_values_get_a_4xx_page_never_a_500() {
    let app = TestApp::spawn().await;
    let long = "A".repeat(OVER_LONG);
    for name in ["code", "state", "error"] {
        let state = login_state(&app).await;
        let mut url = Url::parse(&app.url("/oauth2/callback")).unwrap();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair(name, &long);
            if name != "state" {
                query.append_pair("state", &state);
            }
            if name != "code" {
                query.append_pair("code", "short-code");
            }
        }
        let page = app.open(url.as_str()).await;
        assert!(page.status.is_client_error(), "{name}: {}", page.status);
        assert_client_error(&app, &page);
        assert!(
            !page.body.contains(&long[..200]),
            "{name} is echoed at length"
        );
    }
    // All three at once, with and without a login in progress.
    let all = format!("/oauth2/callback?code={long}&state={long}&error={long}");
    app.start_sign_in().await;
    let page = app.open(&app.url(&all)).await;
    assert_client_error(&app, &page);
    let page = fetch(&plain_client(), Method::GET, &app.url(&all)).await;
    assert_client_error(&app, &page);
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn binary_callback_values_get_a_4xx_page_never_a_500() {
    let app = TestApp::spawn().await;
    let binary = "%00%FF%FE";
    for query in [
        "code={b}&state={s}",
        "code=x&state={b}",
        "error={b}&state={s}",
        "code={b}&state={b}&error={b}",
        "{b}={b}&code={b}&state={s}",
        "code=%FF&state={s}%00",
        "code=%&state=%%",
    ] {
        let state = login_state(&app).await;
        let query = query.replace("{b}", binary).replace("{s}", &state);
        let page = app
            .open(&app.url(&format!("/oauth2/callback?{query}")))
            .await;
        assert!(page.status.is_client_error(), "{query}: {}", page.status);
        assert_client_error(&app, &page);
    }
    let page = fetch(
        &plain_client(),
        Method::GET,
        &app.url(&format!("/oauth2/callback?code={binary}&state={binary}")),
    )
    .await;
    assert_client_error(&app, &page);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn off_site_redirect_parameters_are_ignored_and_only_the_provider_is_redirected_to() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/?redirect=https://evil.test&return_to=//evil.test&next=https://evil.test&redirect_uri=https://evil.test/cb")
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let to = location(&response);
    let issuer = app.sandbox.oidc_issuer_url();
    assert!(
        to.starts_with(&issuer),
        "redirects elsewhere than the provider: {to}"
    );
    assert_eq!(
        Url::parse(&to).unwrap().origin(),
        Url::parse(&issuer).unwrap().origin()
    );
    assert!(!to.contains("evil.test"), "{to}");
    assert_eq!(
        query_param(&to, "redirect_uri"),
        app.url("/oauth2/callback"),
        "the registered callback, nothing else"
    );
    let answer = KeyPage::read(response).await;
    assert!(!answer.body.contains("evil.test"), "{}", answer.body);
    assert_clean(&app, answer.status, &answer.headers, &answer.body);

    // The callback takes no destination either.
    let state = login_state(&app).await;
    let page = app
        .open(&app.url(&format!(
            "/oauth2/callback?error=access_denied&state={state}&redirect=https://evil.test&return_to=//evil.test&next=https://evil.test"
        )))
        .await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(!page.body.contains("evil.test"), "{}", page.body);

    // A path that reads as a scheme-relative URL.
    for path in ["//evil.test", "//evil.test/", "/\\evil.test"] {
        let page = fetch(&plain_client(), Method::GET, &app.url(path)).await;
        assert_client_error(&app, &page);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_callback_with_no_login_in_progress_is_refused_before_the_code_is_exchanged() {
    let app = TestApp::spawn().await;
    // A browser that never started a sign-in, and one with a forged cookie.
    let forged = "/oauth2/callback?code=4/0AfJohXn-forged&state=forged-state";
    let page = fetch(&plain_client(), Method::GET, &app.url(forged)).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(
        page.body.contains("No sign-in in progress"),
        "{}",
        page.body
    );
    for cookie in [
        "oks_login=forged".to_owned(),
        format!("oks_login={}", "A".repeat(4000)),
        r#"oks_login={"state":"forged-state","nonce":"n","verifier":"v","started":0}"#.to_owned(),
    ] {
        let response = plain_client()
            .get(app.url(forged))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let page = KeyPage::read(response).await;
        assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_provider_error_with_an_injected_description_shows_neither_markup_nor_the_text() {
    let app = TestApp::spawn().await;
    let state = login_state(&app).await;
    let mut url = Url::parse(&app.url("/oauth2/callback")).unwrap();
    url.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair(
            "error_description",
            "<script>alert(1)</script> Your account is locked: call +1-555-0100 at evil.test",
        )
        .append_pair("error_uri", "https://evil.test/help")
        .append_pair("state", &state);
    let page = app.open(url.as_str()).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("access_denied"), "{}", page.body);
    for injected in ["<script>alert", "evil.test", "+1-555", "locked"] {
        assert!(!page.body.contains(injected), "{injected}:\n{}", page.body);
    }

    // Markup in the error code itself.
    let state = login_state(&app).await;
    let mut url = Url::parse(&app.url("/oauth2/callback")).unwrap();
    url.query_pairs_mut()
        .append_pair("error", "access_denied\"><img src=x onerror=alert(1)>")
        .append_pair("state", &state);
    let page = app.open(url.as_str()).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(!page.body.contains("<img"), "{}", page.body);
    assert!(!page.body.contains("onerror=alert"), "{}", page.body);
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);
    app.assert_no_secrets_logged(&[]);
}

// --------------------------------------------------------------------- HTTP

#[tokio::test]
async fn requests_with_huge_headers_are_cut_off_with_a_4xx_or_a_closed_connection() {
    let app = TestApp::spawn().await;
    let host = app.addr;
    let big = "a".repeat(100 * 1024);
    let many: String = (0..1000).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    for (what, request) in [
        (
            "a 100 KB header value",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Padding: {big}\r\n\r\n"
            ),
        ),
        (
            "a 100 KB cookie on the callback",
            format!(
                "GET /oauth2/callback?code=a&state=b HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nCookie: oks_login={big}\r\n\r\n"
            ),
        ),
        (
            "a 100 KB request target",
            format!(
                "GET /oauth2/callback?code={big} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            "a thousand headers",
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{many}\r\n"),
        ),
    ] {
        let outcome = raw_exchange(app.addr, request.into_bytes()).await;
        assert_cut_off(&app, what, &outcome);
    }
    // The server is still there for everyone else.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_nothing_created(&app);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_huge_body_on_revoke_is_refused_with_413_before_any_cleanup_runs() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let sweeps = app.openai_calls(SA_LIST);

    let response = app
        .client
        .post(app.url("/revoke"))
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_clean(&app, status, &headers, &body);

    assert_eq!(
        app.openai_calls(SA_LIST),
        sweeps,
        "the handler (a cleanup) never ran"
    );
    assert_eq!(app.openai_calls(SA_DELETE), 0);
    assert_nothing_created(&app);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_huge_chunked_body_on_revoke_is_refused_before_any_cleanup_runs() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let sweeps = app.openai_calls(SA_LIST);

    // 1 MiB in 64 chunks of 16 KiB, with no Content-Length to check up front.
    let mut request = format!(
        "POST /revoke HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.addr
    )
    .into_bytes();
    for _ in 0..64 {
        request.extend_from_slice(b"4000\r\n");
        request.extend(std::iter::repeat_n(b'x', 0x4000));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let outcome = raw_exchange(app.addr, request).await;

    assert_cut_off(&app, "a 1 MiB chunked body", &outcome);
    if let Raw::Answered(status, _) = outcome {
        assert_eq!(status, 413, "a body over the limit is 413");
    }
    assert_eq!(
        app.openai_calls(SA_LIST),
        sweeps,
        "the handler (a cleanup) ran for an over-limit body"
    );
    assert_nothing_created(&app);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn unknown_methods_get_405() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        ("PATCH", "/"),
        ("POST", "/"),
        ("PUT", "/oauth2/callback"),
        ("POST", "/oauth2/callback"),
        ("DELETE", "/revoke"),
        ("PUT", "/healthz"),
        ("TRACE", "/"),
        ("PROPFIND", "/oauth2/callback"),
    ] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let page = fetch(&app.client, method.clone(), &app.url(path)).await;
        assert_eq!(
            page.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            page.body
        );
        assert_refused(&app, &page, StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(app.sandbox.oidc.journal().count(TOKEN_ENDPOINT), 0);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn unknown_paths_get_404_and_nothing_from_the_disk() {
    let app = TestApp::spawn().await;
    for path in [
        "/.env",
        "/.git/config",
        "/oauth2",
        "/oauth2/callback/extra",
        "/assets/",
        "/assets/app.css.map",
        "/assets/Cargo.toml",
        "/revoke/all",
        "/admin/keys",
        "/v1/models",
        "/index.html",
    ] {
        let page = fetch(&app.client, Method::GET, &app.url(path)).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
        assert_refused(&app, &page, StatusCode::NOT_FOUND);
    }
    // Traversals, sent as written (an HTTP client would normalise them).
    for target in [
        "/assets/../Cargo.toml",
        "/assets/..%2f..%2fCargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/../../../../etc/passwd",
        "/assets/..\\..\\Cargo.toml",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            app.addr
        );
        let outcome = raw_exchange(app.addr, request.into_bytes()).await;
        assert_cut_off(&app, target, &outcome);
        if let Raw::Answered(_, text) = &outcome {
            assert!(!text.contains("[package]"), "{target} served a file");
            assert!(!text.contains("root:"), "{target} served a file");
        }
    }
    assert_nothing_created(&app);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn a_refused_account_whose_email_carries_markup_sees_it_escaped() {
    let app = TestApp::spawn().await;
    for (email, escaped) in [
        (
            "<script>alert(1)</script>@evil.test",
            "&lt;script&gt;alert(1)&lt;/script&gt;@evil.test",
        ),
        (
            "\"><img/src=x/onerror=alert(1)>@evil.test",
            "&gt;&lt;img/src=x/onerror=alert(1)&gt;@evil.test",
        ),
    ] {
        let forged = TokenOverride::claims(json!({ "email": email }));
        let page = sign_in_forged(&app, Identity::consumer("eve@evil.test"), forged).await;
        assert_refused(&app, &page, StatusCode::FORBIDDEN);
        assert!(
            named_entities(&page.body).contains(escaped),
            "the account is shown, escaped:\n{}",
            page.body
        );
        assert!(!page.body.contains(email), "shown raw:\n{}", page.body);
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<img"), "{}", page.body);
    }
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn markup_in_the_callbacks_error_parameter_is_never_reflected() {
    let app = TestApp::spawn().await;
    let injected = "/oauth2/callback?error=<script>alert(1)</script>";
    // No login in progress.
    let page = fetch(&plain_client(), Method::GET, &app.url(injected)).await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    // A login in progress, with its state.
    let state = login_state(&app).await;
    let page = app
        .open(&app.url(&format!("{injected}&state={state}")))
        .await;
    assert_refused(&app, &page, StatusCode::BAD_REQUEST);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("alert(1)</script>"), "{}", page.body);
    app.assert_no_secrets_logged(&[]);
}

#[tokio::test]
async fn an_allowed_account_whose_address_carries_markup_sees_it_escaped_on_the_key_page() {
    let app = TestApp::spawn().await;
    let email = "<svg/onload=alert(1)>@example.com";
    let page = app.sign_in_as(Identity::workspace(email)).await;
    let key = assert_key_page(&app, &page);
    assert!(!page.body.contains("<svg"), "{}", page.body);
    assert!(
        named_entities(&page.body).contains("&lt;svg/onload=alert(1)&gt;@example.com"),
        "{}",
        page.body
    );
    assert_eq!(app.openai_calls(SA_CREATE), 1);
    app.assert_no_secrets_logged(&[&key]);
}
