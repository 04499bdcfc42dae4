//! A signed-in person's own pages over HTTP: the session, my keys, a new
//! key shown once, revoking my keys (and only mine), signing out, and what
//! the configuration says now always winning over what a cookie says.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use sandbox::oidc::Identity;
use sandbox::openai::SeedAccount;

use crate::helpers::*;

fn alice() -> Identity {
    Identity::workspace("alice@example.com")
}

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

/// The service account of the only key on a key page's browser.
async fn only_account(app: &TestApp, browser: &reqwest::Client) -> String {
    let accounts = listed_accounts(&my_keys(app, browser).await.body);
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    accounts[0].clone()
}

#[tokio::test]
async fn signing_in_starts_a_session_and_then_slash_lists_my_keys_never_their_values() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sandbox.oidc.queue_identity(alice());
    let authorization = app.start_sign_in_with(&browser).await;
    let callback = app.authorize_with(&browser, &authorization).await;
    let response = browser.get(&callback).send().await.unwrap();
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("oks_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(session.contains(flag), "{flag}: {session}");
    }
    assert!(
        !session.contains("alice"),
        "sealed, not readable: {session}"
    );
    let page = KeyPage::read(response).await;
    assert_eq!(page.status, StatusCode::OK);
    let key = page.key();
    assert!(page.body.contains("href=\"/\""), "a link to my keys");
    assert!(
        page.body.contains("in 1 hour"),
        "a duration people read: {}",
        page.body
    );

    let mine = my_keys(&app, &browser).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_no_store(&mine.headers);
    assert!(mine.body.contains("alice@example.com"));
    let accounts = listed_accounts(&mine.body);
    assert_eq!(accounts, [app.accounts()[0].id.clone()]);
    assert!(
        !mine.body.contains(&key),
        "a key is never listed with its value"
    );
    assert!(!mine.body.contains("sk-svcacct-"));
    assert!(mine.body.contains("never"), "not used yet: {}", mine.body);
}

#[tokio::test]
async fn over_https_the_session_cookie_is_host_prefixed_and_secure() {
    let app = TestApp::spawn_with(
        Options::default().set("REDIRECT_URI", "https://keys.example.test/oauth2/callback"),
    )
    .await;
    app.sandbox
        .oidc
        .allow_redirect_uri("https://keys.example.test/oauth2/callback");
    let browser = plain_client();
    app.sandbox.oidc.queue_identity(alice());
    let start = browser.get(app.url("/")).send().await.unwrap();
    let login = start.headers()[SET_COOKIE].to_str().unwrap();
    let login = login.split(';').next().unwrap().to_owned();
    let callback = app.authorize_with(&browser, &location(&start)).await;
    let callback = callback.replace("https://keys.example.test", &app.url(""));
    let response = browser
        .get(callback)
        .header("cookie", login)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.contains("oks_session="))
        .expect("a session cookie");
    assert!(session.starts_with("__Host-oks_session="), "{session}");
    for flag in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(flag), "{flag}: {session}");
    }
    assert!(!session.contains("Domain="));
}

#[tokio::test]
async fn a_new_key_is_shown_once_and_the_same_form_sent_again_mints_nothing() {
    let app = TestApp::spawn_with(Options::default().set("ISSUE_ON_SIGN_IN", "false")).await;
    let browser = browser();
    let landing = app.sign_in_with(&browser, bob()).await;
    assert_eq!(landing.status, StatusCode::SEE_OTHER, "to my keys, no key");
    assert_eq!(landing.headers[LOCATION], "/");
    assert_eq!(app.openai_calls(SA_CREATE), 0);

    let mine = my_keys(&app, &browser).await;
    assert!(mine.body.contains("You hold no live key"), "{}", mine.body);
    let csrf = hidden(&mine.body, "csrf");
    let form = hidden(&mine.body, "form");
    let page = post_form(&app, &browser, "/keys", &[("csrf", &csrf), ("form", &form)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_no_store(&page.headers);
    let key = page.key();
    assert!(page.body.contains(&format!("export OPENAI_API_KEY={key}")));
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    // A reload or the back button sends the same form again.
    let again = post_form(&app, &browser, "/keys", &[("csrf", &csrf), ("form", &form)]).await;
    assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
    assert!(again.body.contains("shown once"));
    assert!(!again.body.contains("sk-svcacct-"));
    assert_eq!(app.openai_calls(SA_CREATE), 1, "nothing more was minted");
    assert_eq!(
        listed_accounts(&my_keys(&app, &browser).await.body).len(),
        1
    );
}

#[tokio::test]
async fn revoking_my_key_deletes_it_at_once_and_its_key_stops_working() {
    let app = TestApp::spawn().await;
    let browser = browser();
    let page = app.sign_in_with(&browser, bob()).await;
    let key = page.key();
    let account = only_account(&app, &browser).await;
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");

    let answer = post_form(
        &app,
        &browser,
        &format!("/keys/{account}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.headers[LOCATION], "/");
    assert!(app.accounts().is_empty(), "deleted at once");
    assert_eq!(models_status(&app, &key).await, StatusCode::UNAUTHORIZED);
    assert!(listed_accounts(&my_keys(&app, &browser).await.body).is_empty());
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("\"audit\":\"key.revoked\"")
                && l.contains("bob@gmail.com")
                && l.contains(&account)),
        "an audit line names who, what and which account"
    );
    app.assert_no_secrets_logged(&[&key]);
}

#[tokio::test]
async fn nobody_revokes_another_persons_key_a_foreign_account_or_an_unknown_id() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    sandbox
        .openai
        .seed_service_accounts(&project, vec![SeedAccount::new("my-ci-bot", now - 60)])
        .unwrap();
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    let alices = browser();
    app.sign_in_with(&alices, alice()).await;
    let alice_account = only_account(&app, &alices).await;
    let bobs = browser();
    app.sign_in_with(&bobs, bob()).await;
    let csrf = hidden(&my_keys(&app, &bobs).await.body, "csrf");
    let foreign = app
        .accounts()
        .into_iter()
        .find(|a| a.name == "my-ci-bot")
        .unwrap()
        .id;
    for target in [alice_account.as_str(), foreign.as_str(), "svc_acct_unknown"] {
        let answer = post_form(
            &app,
            &bobs,
            &format!("/keys/{target}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{target}: {}",
            answer.body
        );
    }
    assert_eq!(app.accounts().len(), 3, "nothing was deleted");
    assert_eq!(app.openai_calls(SA_DELETE), 0);
}

#[tokio::test]
async fn state_changing_requests_need_our_origin_and_the_sessions_csrf_token() {
    let app = TestApp::spawn_with(Options::default().set("ISSUE_ON_SIGN_IN", "false")).await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let mine = my_keys(&app, &browser).await;
    let csrf = hidden(&mine.body, "csrf");
    let form = hidden(&mine.body, "form");
    // Another session's token is no good either.
    let other = browser_from("127.0.0.2".parse().unwrap());
    app.sign_in_with(&other, bob()).await;
    let other_csrf = hidden(&my_keys(&app, &other).await.body, "csrf");
    assert_ne!(csrf, other_csrf);

    for (what, fields, headers) in [
        ("no token", vec![("form", form.as_str())], vec![]),
        (
            "a wrong token",
            vec![("csrf", "forged"), ("form", &form)],
            vec![],
        ),
        (
            "another session's token",
            vec![("csrf", other_csrf.as_str()), ("form", &form)],
            vec![],
        ),
        (
            "another site's form",
            vec![("csrf", csrf.as_str()), ("form", &form)],
            vec![("origin", "https://evil.example.net")],
        ),
        (
            "a cross-site request",
            vec![("csrf", csrf.as_str()), ("form", &form)],
            vec![("sec-fetch-site", "cross-site")],
        ),
    ] {
        let mut request = browser.post(app.url("/keys")).form(&fields);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let page = KeyPage::read(request.send().await.unwrap()).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
    }
    // A GET never mints or deletes: it goes to my keys.
    for path in ["/keys", "/keys/svc_acct_x/revoke", "/logout"] {
        let response = browser.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location(&response), "/");
    }
    assert_eq!(
        my_keys(&app, &browser).await.status,
        StatusCode::OK,
        "still signed in"
    );
    assert_eq!(app.openai_calls(SA_CREATE), 0);
    // Without a session, a form is refused before anything else.
    let page = post_form(
        &app,
        &plain_client(),
        "/keys",
        &[("csrf", &csrf), ("form", &form)],
    )
    .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_person_taken_off_the_list_can_no_longer_see_or_mint_whatever_their_cookie_says() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, alice()).await;
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");
    let form = hidden(&my_keys(&app, &browser).await.body, "form");
    // The operator drops example.com and rolls the change out.
    let changed = app.replica_with(&[("ALLOWED_DOMAINS", "other.test")]).await;
    let on_changed = |path: &str| format!("http://{}{path}", changed.addr);
    let home = browser.get(on_changed("/")).send().await.unwrap();
    assert_ne!(
        home.status(),
        StatusCode::OK,
        "no keys page for alice any more"
    );
    let page = KeyPage::read(
        browser
            .post(on_changed("/keys"))
            .form(&[("csrf", csrf.as_str()), ("form", form.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("alice@example.com"), "{}", page.body);
    assert_eq!(
        app.openai_calls(SA_CREATE),
        1,
        "only the key of the first sign-in"
    );
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");
    let page = post_form(&app, &browser, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Signed out"));
    let removal = page.headers.get_all(SET_COOKIE).iter().any(|c| {
        let c = c.to_str().unwrap();
        c.starts_with("oks_session=") && c.contains("Max-Age=0")
    });
    assert!(removal, "{:?}", page.headers);
    let home = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(
        home.status(),
        StatusCode::FOUND,
        "signed out: / signs in again"
    );
}

#[tokio::test]
async fn a_session_ends_after_session_ttl() {
    let app = TestApp::spawn_with(Options::default().set("SESSION_TTL", "60")).await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    assert_eq!(my_keys(&app, &browser).await.status, StatusCode::OK);
    app.advance(Duration::from_secs(61));
    let home = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn reloading_the_key_page_says_the_key_was_shown_once_and_links_to_my_keys() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in_with(&browser).await;
    let callback = app.authorize_with(&browser, &authorization).await;
    let first = KeyPage::read(browser.get(&callback).send().await.unwrap()).await;
    assert_eq!(first.status, StatusCode::OK);
    let reload = KeyPage::read(browser.get(&callback).send().await.unwrap()).await;
    assert_eq!(reload.status, StatusCode::GONE);
    assert!(reload.body.contains("shown once"), "{}", reload.body);
    assert!(reload.body.contains(">My keys<"), "{}", reload.body);
    assert_eq!(app.openai_calls(SA_CREATE), 1);
}

#[tokio::test]
async fn a_key_issued_or_revoked_on_one_replica_shows_on_another_within_the_listing_age() {
    let app = TestApp::spawn().await;
    let other = app.replica().await;
    // Both replicas' startup sweeps are over.
    sweep(&app).await;
    sweep(&other).await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let account = only_account(&app, &browser).await;
    let on_other = |path: &str| format!("http://{}{path}", other.addr);
    let view = || async { KeyPage::read(browser.get(on_other("/")).send().await.unwrap()).await };

    // Once the other replica's listing is older than LISTING_MAX_AGE (15 s),
    // its next page lists afresh; concurrent views share one listing.
    app.advance(Duration::from_secs(16));
    let lists = app.openai_calls(SA_LIST);
    let pages = futures::future::join_all((0..8).map(|_| view())).await;
    for page in &pages {
        assert_eq!(listed_accounts(&page.body), std::slice::from_ref(&account));
    }
    assert_eq!(
        app.openai_calls(SA_LIST) - lists,
        1,
        "one listing for eight views"
    );

    // Revoked through the first: gone there at once, and on the other once
    // its listing is old enough.
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");
    post_form(
        &app,
        &browser,
        &format!("/keys/{account}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert!(listed_accounts(&my_keys(&app, &browser).await.body).is_empty());
    app.advance(Duration::from_secs(16));
    assert!(listed_accounts(&view().await.body).is_empty());
}

#[tokio::test]
async fn last_use_comes_from_openais_key_listing() {
    let app = TestApp::spawn().await;
    let browser = browser();
    let key = app.sign_in_with(&browser, bob()).await.key();
    assert!(my_keys(&app, &browser).await.body.contains(">never<"));
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    app.advance(Duration::from_secs(16));
    let page = my_keys(&app, &browser).await;
    assert!(!page.body.contains(">never<"), "{}", page.body);
    assert!(
        app.openai_calls("GET /v1/organization/projects/{project_id}/api_keys") >= 1,
        "read from the project's key listing"
    );
}

#[tokio::test]
async fn unknown_pages_get_the_small_page_and_a_refusal_offers_another_account() {
    let app = TestApp::spawn().await;
    let missing = app.open(&app.url("/no/such/page")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Not found") && missing.body.contains("Request id"));

    let unverified = Identity {
        email_verified: false,
        ..alice()
    };
    let page = app.sign_in_as(unverified).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("Verify this address"), "{}", page.body);
    assert!(
        page.body.contains("href=\"/?account=choose\""),
        "{}",
        page.body
    );
    let choose = app.get("/?account=choose").await;
    assert_eq!(choose.status(), StatusCode::FOUND);
    assert_eq!(query_param(&location(&choose), "prompt"), "select_account");
}

#[tokio::test]
async fn opened_under_another_host_name_the_sign_in_moves_to_the_public_one_first() {
    let app = TestApp::spawn().await;
    let port = app.addr.port();
    let response = plain_client()
        .get(app.url("/"))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), format!("http://127.0.0.1:{port}/"));
}

#[tokio::test]
async fn a_key_revoked_while_a_listing_is_on_its_way_stays_gone() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let account = only_account(&app, &browser).await;
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");
    sweep(&app).await;
    // A sweep reads the accounts now, but its answer arrives late.
    app.sandbox.openai.push_fault(
        sandbox::openai::Fault::new(sandbox::openai::FaultKind::DelayAnswer { ms: 800 })
            .method("GET")
            .path("/service_accounts"),
    );
    let cleanup = app.cleanup.clone();
    let running = tokio::spawn(async move { cleanup.run_now().await });
    // Real time, no clock to move: the listing reaches the sandbox at
    // once and is answered 800 ms later; the revocation comes between.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = post_form(
        &app,
        &browser,
        &format!("/keys/{account}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    running.await.unwrap().unwrap();
    assert!(
        listed_accounts(&my_keys(&app, &browser).await.body).is_empty(),
        "the listing that began before the revocation did not bring it back"
    );
}

#[tokio::test]
async fn a_new_key_form_spent_on_one_replica_mints_nothing_on_another() {
    let app = TestApp::spawn_with(Options::default().set("ISSUE_ON_SIGN_IN", "false")).await;
    let other = app.replica().await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let mine = my_keys(&app, &browser).await;
    let fields = [
        ("csrf", hidden(&mine.body, "csrf")),
        ("form", hidden(&mine.body, "form")),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let page = post_form(&app, &browser, "/keys", &fields).await;
    assert_eq!(page.status, StatusCode::OK);
    let again = KeyPage::read(
        browser
            .post(format!("http://{}/keys", other.addr))
            .form(&fields)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, StatusCode::GONE, "{}", again.body);
    assert_eq!(app.openai_calls(SA_CREATE), 1);
}

#[tokio::test]
async fn a_form_whose_key_could_not_be_made_can_be_sent_again() {
    let app = TestApp::spawn_with(Options::default().set("ISSUE_ON_SIGN_IN", "false")).await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    let mine = my_keys(&app, &browser).await;
    let (csrf, form) = (hidden(&mine.body, "csrf"), hidden(&mine.body, "form"));
    app.sandbox.openai.push_fault(
        sandbox::openai::Fault::new(sandbox::openai::FaultKind::status(400))
            .method("POST")
            .path("/service_accounts"),
    );
    let failed = post_form(&app, &browser, "/keys", &[("csrf", &csrf), ("form", &form)]).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let retried = post_form(&app, &browser, "/keys", &[("csrf", &csrf), ("form", &form)]).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
}

#[tokio::test]
async fn someone_taken_off_the_list_can_still_sign_out() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, alice()).await;
    let csrf = hidden(&my_keys(&app, &browser).await.body, "csrf");
    let changed = app.replica_with(&[("ALLOWED_DOMAINS", "other.test")]).await;
    let page = KeyPage::read(
        browser
            .post(format!("http://{}/logout", changed.addr))
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Signed out"));
}

#[tokio::test]
async fn when_openai_cannot_list_a_page_says_its_list_may_be_stale() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    assert!(!my_keys(&app, &browser).await.body.contains("id=\"notice\""));
    app.sandbox.openai.push_fault(
        sandbox::openai::Fault::new(sandbox::openai::FaultKind::status(403))
            .method("GET")
            .path("/service_accounts")
            .times(10),
    );
    app.advance(Duration::from_secs(16));
    let page = my_keys(&app, &browser).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("may be out of date"), "{}", page.body);
    assert_eq!(
        listed_accounts(&page.body).len(),
        1,
        "what the replica knows"
    );
    // Not tried again at once: one view, one failed pass, and no more.
    let lists = app.openai_calls(SA_LIST);
    my_keys(&app, &browser).await;
    assert_eq!(app.openai_calls(SA_LIST), lists);
}

#[tokio::test]
async fn another_sites_link_to_choose_an_account_keeps_that_through_the_landing_page() {
    let app = TestApp::spawn().await;
    let page = KeyPage::read(
        plain_client()
            .get(app.url("/?account=choose"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("href=\"/?account=choose\""),
        "{}",
        page.body
    );
}
