//! Another web site in the victim's browser, and logins in progress: a
//! sign-in another site starts mints nothing without the person's click, a
//! login completes once, and a browser's logins do not break each other.

use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use sandbox::oidc::Identity;

use crate::helpers::*;

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

/// `GET /` in `browser` with these request headers.
async fn visit(
    app: &TestApp,
    browser: &reqwest::Client,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = browser.get(app.url("/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_navigation_from_another_site_gets_a_page_with_a_button_and_mints_nothing() {
    let app = TestApp::spawn().await;
    // The provider would approve bob silently: only the first step may
    // differ.
    app.sandbox.oidc.set_auto_approve(Some(bob()));
    let cross_site: [&[(&str, &str)]; 4] = [
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ],
        &[("sec-fetch-site", "same-site")],
        &[("referer", "https://evil.example.net/page")],
        &[("sec-fetch-site", "cross-site"), ("referer", &app.url("/"))],
    ];
    for headers in cross_site {
        let browser = browser();
        let response = visit(&app, &browser, headers).await;
        assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
        assert!(!response.headers().contains_key(LOCATION), "{headers:?}");
        assert!(
            !response.headers().contains_key(SET_COOKIE),
            "no sign-in started: {headers:?}"
        );
        assert_no_store(response.headers());
        let body = response.text().await.unwrap();
        assert!(body.contains("Sign in"), "{body}");
        assert!(
            body.contains("href=\"/\""),
            "the button leads back to / on our own origin: {body}"
        );
    }
    assert_eq!(app.sandbox.oidc.journal().count("GET /o/oauth2/v2/auth"), 0);
    assert_eq!(app.openai_calls(SA_CREATE), 0);

    // The person presses the button (a same-origin navigation), or comes by
    // a typed URL or a bookmark: sign-in goes ahead as before.
    let own_page = app.url("/some/page");
    for headers in [
        &[("sec-fetch-site", "same-origin"), ("sec-fetch-user", "?1")][..],
        &[("sec-fetch-site", "none")][..],
        &[("referer", own_page.as_str())][..],
        &[][..],
    ] {
        let browser = browser();
        let response = visit(&app, &browser, headers).await;
        assert_eq!(response.status(), StatusCode::FOUND, "{headers:?}");
        let callback = app.authorize_with(&browser, &location(&response)).await;
        let page = KeyPage::read(browser.get(&callback).send().await.unwrap()).await;
        assert_eq!(page.status, StatusCode::OK, "{headers:?}: {}", page.body);
        assert!(page.key().starts_with("sk-svcacct-"));
    }
    assert_eq!(app.openai_calls(SA_CREATE), 4);
}

#[tokio::test]
async fn a_login_completes_once_even_with_its_cookie_and_a_second_code() {
    let app = TestApp::spawn().await;
    app.sandbox.oidc.set_auto_approve(Some(bob()));
    let browser = browser();
    let start = visit(&app, &browser, &[]).await;
    let authorization = location(&start);
    // The login cookie as the browser holds it before the callback.
    let login_cookie = start.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let first = app.authorize_with(&browser, &authorization).await;
    let page = KeyPage::read(browser.get(&first).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // The same authorization URL again: the provider issues a second code
    // for the same state. Presented with the old cookie, it gets nothing.
    let second = app.authorize_with(&browser, &authorization).await;
    assert_ne!(query_param(&first, "code"), query_param(&second, "code"));
    let replay = KeyPage::read(
        plain_client()
            .get(&second)
            .header("cookie", &login_cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert!(replay.body.contains("already"), "{}", replay.body);
    assert_eq!(app.openai_calls(SA_CREATE), 1);
    assert_eq!(
        app.sandbox.oidc.journal().count("POST /token"),
        1,
        "refused before the second code was exchanged"
    );
}

#[tokio::test]
async fn two_sign_ins_in_one_browser_both_complete_in_either_order() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sandbox.oidc.queue_identity(bob());
    let first = app.start_sign_in_with(&browser).await;
    let first = app.authorize_with(&browser, &first).await;
    app.sandbox
        .oidc
        .queue_identity(Identity::workspace("alice@example.com"));
    let second = app.start_sign_in_with(&browser).await;
    let second = app.authorize_with(&browser, &second).await;

    let page = KeyPage::read(browser.get(&second).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("alice@example.com"));
    let page = KeyPage::read(browser.get(&first).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("bob@gmail.com"));
    assert_eq!(app.openai_calls(SA_CREATE), 2);
}

#[tokio::test]
async fn a_stray_callback_with_a_wrong_state_leaves_the_sign_in_in_progress_alone() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in_with(&browser).await;
    let callback = app.authorize_with(&browser, &authorization).await;

    // Another site sends the browser to the callback with its own values.
    let stray = KeyPage::read(
        browser
            .get(app.url("/oauth2/callback?code=evil&state=Zm9yZ2VkLXN0YXRlLWZyb20tZWxzZXdoZXJl"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stray.status, StatusCode::BAD_REQUEST);
    let stray = KeyPage::read(
        browser
            .get(app.url("/oauth2/callback?code=evil"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stray.status, StatusCode::BAD_REQUEST);

    let page = KeyPage::read(browser.get(&callback).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(app.openai_calls(SA_CREATE), 1);
    assert_eq!(
        app.sandbox.oidc.journal().count("POST /token"),
        1,
        "the stray codes were never exchanged"
    );
}

#[tokio::test]
async fn a_browser_keeps_its_four_latest_logins() {
    let app = TestApp::spawn().await;
    let browser = browser();
    let mut callbacks = Vec::new();
    for _ in 0..5 {
        app.sandbox.oidc.queue_identity(bob());
        let authorization = app.start_sign_in_with(&browser).await;
        callbacks.push(app.authorize_with(&browser, &authorization).await);
    }
    let oldest = KeyPage::read(browser.get(&callbacks[0]).send().await.unwrap()).await;
    assert_eq!(
        oldest.status,
        StatusCode::BAD_REQUEST,
        "the fifth start dropped the first"
    );
    for callback in &callbacks[1..] {
        let page = KeyPage::read(browser.get(callback).send().await.unwrap()).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    }
}
