//! The admin page over HTTP: every live key by owner, revoking one, every
//! key of a person, or everything (confirmed), each audited; non-admins get
//! 403; foreign accounts are never shown or touched; `REVOKE_ENDPOINT`.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use sandbox::openai::SeedAccount;

use crate::helpers::*;

fn alice() -> Identity {
    Identity::workspace("alice@example.com")
}

fn carol() -> Identity {
    Identity::workspace("carol@example.com")
}

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

/// A server whose project also holds a foreign account, and whose admin is
/// carol.
async fn with_admin(extra: &[(&str, &str)]) -> TestApp {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    sandbox
        .openai
        .seed_service_accounts(&project, vec![SeedAccount::new("my-ci-bot", now - 60)])
        .unwrap();
    let mut options = Options::default().set("ADMIN_USERS", "carol@example.com");
    for (var, value) in extra {
        options = options.set(var, value);
    }
    TestApp::spawn_on(sandbox, options).await
}

fn foreign(app: &TestApp) -> String {
    app.accounts()
        .into_iter()
        .find(|a| a.name == "my-ci-bot")
        .expect("the foreign account is still there")
        .id
}

/// A browser signed in as `identity` with one key, and that key's account.
async fn with_key(app: &TestApp, identity: Identity) -> (reqwest::Client, String) {
    let browser = browser();
    app.sign_in_with(&browser, identity).await;
    let accounts = listed_accounts(&my_keys(app, &browser).await.body);
    (browser, accounts[0].clone())
}

async fn admin_page(app: &TestApp, browser: &reqwest::Client) -> KeyPage {
    KeyPage::read(browser.get(app.url("/admin")).send().await.unwrap()).await
}

#[tokio::test]
async fn an_admin_sees_every_live_key_by_owner_and_nobody_else_does() {
    let app = with_admin(&[]).await;
    let (_, alices) = with_key(&app, alice()).await;
    let (bobs_browser, bobs) = with_key(&app, bob()).await;
    let (carols_browser, carols) = with_key(&app, carol()).await;

    let page = admin_page(&app, &carols_browser).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_no_store(&page.headers);
    let mut shown = listed_accounts(&page.body);
    shown.sort();
    let mut expected = vec![alices, bobs, carols];
    expected.sort();
    assert_eq!(shown, expected, "every key of this server, no foreign one");
    assert!(!page.body.contains(&foreign(&app)));
    assert!(!page.body.contains("my-ci-bot"));
    for owner in ["alice@example.com", "bob@gmail.com", "carol@example.com"] {
        assert!(
            page.body.contains(&format!("data-owner=\"{owner}\"")),
            "{owner}"
        );
    }
    assert!(!page.body.contains("sk-svcacct-"));
    assert!(
        my_keys(&app, &carols_browser)
            .await
            .body
            .contains("href=\"/admin\"")
    );

    let refused = admin_page(&app, &bobs_browser).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        !my_keys(&app, &bobs_browser)
            .await
            .body
            .contains("href=\"/admin\"")
    );
    assert_eq!(
        admin_page(&app, &plain_client()).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_admin_revokes_one_key_then_every_key_of_a_person_each_audited() {
    let app = with_admin(&[("MAX_KEYS_PER_USER", "0")]).await;
    let (alices_browser, first) = with_key(&app, alice()).await;
    app.sign_in_with(&alices_browser, alice()).await;
    let (bobs_browser, bobs) = with_key(&app, bob()).await;
    let (carols_browser, _) = with_key(&app, carol()).await;
    let csrf = hidden(&admin_page(&app, &carols_browser).await.body, "csrf");

    // Not an admin: 403 and nothing deleted.
    let bobs_csrf = hidden(&my_keys(&app, &bobs_browser).await.body, "csrf");
    let refused = post_form(
        &app,
        &bobs_browser,
        &format!("/admin/keys/{first}/revoke"),
        &[("csrf", &bobs_csrf)],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = post_form(
        &app,
        &bobs_browser,
        "/admin/revoke-owner",
        &[("csrf", &bobs_csrf), ("owner", "alice@example.com")],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.openai_calls(SA_DELETE), 0);

    let answer = post_form(
        &app,
        &carols_browser,
        &format!("/admin/keys/{bobs}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.headers[LOCATION], "/admin");
    assert!(!app.accounts().iter().any(|a| a.id == bobs));
    let foreign_revoke = post_form(
        &app,
        &carols_browser,
        &format!("/admin/keys/{}/revoke", foreign(&app)),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(
        foreign_revoke.status,
        StatusCode::NOT_FOUND,
        "foreign accounts are never touched"
    );

    // Offboarding alice: both her keys.
    let answer = post_form(
        &app,
        &carols_browser,
        "/admin/revoke-owner",
        &[("csrf", &csrf), ("owner", "Alice@Example.com")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let left: Vec<String> = app.accounts().into_iter().map(|a| a.name).collect();
    assert!(
        !left.iter().any(|n| n.contains("alice@example.com")),
        "{left:?}"
    );
    assert!(left.iter().any(|n| n == "my-ci-bot"));
    assert!(listed_accounts(&my_keys(&app, &alices_browser).await.body).is_empty());

    let logs = logs();
    let audited = |action: &str, account: &str| {
        logs.lines().any(|l| {
            l.contains("\"audit\":\"key.revoked\"")
                && l.contains("\"actor\":\"carol@example.com\"")
                && l.contains(action)
                && l.contains(account)
        })
    };
    assert!(audited("revoke a key", &bobs));
    assert!(audited("revoke every key of one person", &first));
}

#[tokio::test]
async fn break_glass_revokes_everything_of_this_server_only_once_confirmed_with_the_project_id() {
    let app = with_admin(&[]).await;
    with_key(&app, alice()).await;
    with_key(&app, bob()).await;
    let (carols_browser, _) = with_key(&app, carol()).await;
    let page = admin_page(&app, &carols_browser).await;
    let csrf = hidden(&page.body, "csrf");
    let project = app.project_id().unwrap();
    assert!(page.body.contains(&project), "the page names what to type");

    for wrong in ["", "yes", "personal"] {
        let answer = post_form(
            &app,
            &carols_browser,
            "/admin/revoke-all",
            &[("csrf", &csrf), ("confirm", wrong)],
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{wrong:?}");
    }
    assert_eq!(app.accounts().len(), 4, "nothing revoked unconfirmed");

    let answer = post_form(
        &app,
        &carols_browser,
        "/admin/revoke-all",
        &[("csrf", &csrf), ("confirm", &project)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let left: Vec<String> = app.accounts().into_iter().map(|a| a.name).collect();
    assert_eq!(
        left,
        ["my-ci-bot"],
        "every key of ours went, the foreign account stayed"
    );
    assert!(
        logs().lines().any(
            |l| l.contains("revoke every key (break-glass)") && l.contains("carol@example.com")
        )
    );
}

#[tokio::test]
async fn an_admin_taken_off_admin_users_loses_the_admin_page_at_once() {
    let app = with_admin(&[]).await;
    let (carols_browser, _) = with_key(&app, carol()).await;
    let demoted = app.replica_with(&[("ADMIN_USERS", "")]).await;
    let page = KeyPage::read(
        carols_browser
            .get(format!("http://{}/admin", demoted.addr))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_revoke_endpoint_can_be_kept_for_admins_or_turned_off() {
    let off = with_admin(&[("REVOKE_ENDPOINT", "off")]).await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = off
            .client
            .request(method, off.url("/revoke"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    let admin_only = with_admin(&[("REVOKE_ENDPOINT", "admin")]).await;
    admin_only.wait_for_startup_sweep().await;
    let anonymous = admin_only
        .client
        .post(admin_only.url("/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let (bobs_browser, _) = with_key(&admin_only, bob()).await;
    let bobs_csrf = hidden(&my_keys(&admin_only, &bobs_browser).await.body, "csrf");
    let bob_asks = post_form(
        &admin_only,
        &bobs_browser,
        "/revoke",
        &[("csrf", &bobs_csrf)],
    )
    .await;
    assert_eq!(bob_asks.status, StatusCode::FORBIDDEN);
    let (carols_browser, _) = with_key(&admin_only, carol()).await;
    let csrf = hidden(&my_keys(&admin_only, &carols_browser).await.body, "csrf");
    let lists = admin_only.openai_calls(SA_LIST);
    let answer = post_form(&admin_only, &carols_browser, "/revoke", &[("csrf", &csrf)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    eventually("the sweep carol asked for listed", || {
        admin_only.openai_calls(SA_LIST) > lists
    })
    .await;
}

#[tokio::test]
async fn offboarding_revokes_nothing_when_openai_cannot_list_every_key() {
    let app = with_admin(&[]).await;
    with_key(&app, alice()).await;
    let (carols_browser, _) = with_key(&app, carol()).await;
    let csrf = hidden(&admin_page(&app, &carols_browser).await.body, "csrf");
    app.sandbox.openai.push_fault(
        sandbox::openai::Fault::new(sandbox::openai::FaultKind::status(403))
            .method("GET")
            .path("/service_accounts")
            .times(10),
    );
    let answer = post_form(
        &app,
        &carols_browser,
        "/admin/revoke-owner",
        &[("csrf", &csrf), ("owner", "alice@example.com")],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(answer.body.contains("Nothing was revoked"));
    assert_eq!(app.openai_calls(SA_DELETE), 0);
    assert!(
        app.accounts()
            .iter()
            .any(|a| a.name.contains("alice@example.com"))
    );
}
