//! When the Admin API fails, the person gets a clear page with a request id,
//! the log gets the cause, and nothing half-created is left behind.

use reqwest::StatusCode;
use sandbox::oidc::Identity;
use sandbox::openai::{ApiVersion, Fault, FaultKind};

use crate::helpers::*;

fn on_create(kind: FaultKind) -> Fault {
    Fault::new(kind).method("POST").path("/service_accounts")
}

async fn ready_app(options: Options) -> TestApp {
    let app = TestApp::spawn_with(options).await;
    app.wait_for_startup_sweep().await;
    app
}

#[tokio::test]
async fn a_wrong_admin_key_gives_a_clear_error_page_and_no_key() {
    let wrong = "sk-admin-WRONGwrongWRONGwrong0000";
    let app = TestApp::spawn_with(Options::default().set("OPENAI_MANAGEMENT_KEY", wrong)).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(page.body.contains("OPENAI_MANAGEMENT_KEY"), "{}", page.body);
    assert!(page.body.contains("Request id"));
    assert!(
        !page.body.contains(wrong) && !page.body.contains("sk-svcacct"),
        "no key on the page"
    );
    assert!(
        app.sandbox
            .openai
            .projects()
            .iter()
            .all(|p| p.name != "personal")
    );
    app.assert_no_secrets_logged(&[wrong]);
}

#[tokio::test]
async fn an_unknown_project_id_gives_a_clear_error_page() {
    let app = TestApp::spawn_with(
        Options::default().set("OPENAI_PROJECT_ID", "proj_doesnotexist000000000000"),
    )
    .await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(page.body.contains("OPENAI_PROJECT_ID"), "{}", page.body);
}

#[tokio::test]
async fn a_rate_limited_create_answers_503_with_retry_after() {
    let app = ready_app(Options::default()).await;
    app.sandbox.openai.push_fault(on_create(FaultKind::Status {
        status: 429,
        retry_after: Some(7),
    }));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(page.headers["retry-after"], "7");
    assert!(app.accounts().is_empty());
    assert_eq!(
        app.openai_calls(SA_CREATE),
        1,
        "a 429 is not retried blindly"
    );
}

#[tokio::test]
async fn a_server_error_on_create_leaves_nothing_behind() {
    let app = ready_app(Options::default()).await;
    app.sandbox
        .openai
        .push_fault(on_create(FaultKind::status(500)));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(app.accounts().is_empty());
    assert_eq!(
        app.openai_calls(SA_CREATE),
        1,
        "a create is never retried blindly"
    );
}

#[tokio::test]
async fn a_create_that_committed_then_failed_is_found_and_deleted() {
    let app = ready_app(Options::default()).await;
    app.sandbox
        .openai
        .push_fault(on_create(FaultKind::CommitThenFail { status: 502 }));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(
        app.accounts().is_empty(),
        "the orphan was deleted: {:?}",
        app.accounts()
    );
    assert_eq!(app.openai_calls(SA_CREATE), 1);
    assert_eq!(app.openai_calls(SA_DELETE), 1);
}

#[tokio::test]
async fn a_create_that_hangs_past_the_timeout_gives_504_and_is_reconciled() {
    let app = ready_app(Options::default().set("TIMEOUT", "1")).await;
    app.sandbox
        .openai
        .push_fault(on_create(FaultKind::CommitThenHang));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::GATEWAY_TIMEOUT, "{}", page.body);
    assert!(app.accounts().is_empty(), "{:?}", app.accounts());
}

#[tokio::test]
async fn an_unreadable_answer_is_an_error_not_a_key() {
    let app = ready_app(Options::default()).await;
    app.sandbox
        .openai
        .push_fault(on_create(FaultKind::MalformedJson));
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(!page.body.contains("sk-svcacct"));
}

#[tokio::test]
async fn an_older_api_without_expires_in_seconds_still_issues_a_key() {
    let options = Options {
        openai: sandbox::openai::Config {
            version: ApiVersion::Legacy,
            ..Default::default()
        },
        ..Options::default()
    };
    let app = ready_app(options).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("does not enforce"),
        "warns that only deletion ends it"
    );
    assert_eq!(
        app.openai_calls(SA_CREATE),
        2,
        "one refused attempt, one retry"
    );
    assert_eq!(app.accounts().len(), 1);
    assert!(logs().contains("rejected expires_in_seconds"));
}

#[tokio::test]
async fn an_expiry_policy_shorter_than_expiration_is_refused_without_a_key() {
    let options = Options {
        openai: sandbox::openai::Config {
            max_key_lifetime_secs: Some(600),
            ..Default::default()
        },
        ..Options::default()
    };
    let app = ready_app(options).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(app.accounts().is_empty());
}
