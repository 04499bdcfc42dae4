//! Cleanup: only this server's expired accounts go; everything else stays.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use sandbox::openai::{Fault, FaultKind, SeedAccount};

use crate::helpers::*;

#[tokio::test]
async fn cleanup_deletes_only_its_own_expired_accounts() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let foreign = [
        "alice@example.com",
        "ks:alice@example.com:1764000000",
        "oks.123.ab.x@example.com",
        "my-ci-bot",
        "oks.1.abc123.Upper@Example.com",
    ];
    let mut seeds: Vec<SeedAccount> = foreign
        .iter()
        .map(|n| SeedAccount::new(*n, now - 400_000).expiring_at(now - 300_000))
        .collect();
    seeds.push(SeedAccount::new(
        own(now - 10, "old@example.com"),
        now - 3_600,
    ));
    seeds.push(SeedAccount::new(
        own(now + 1_800, "live@example.com"),
        now - 1_800,
    ));
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();

    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    // The startup sweep removes the expired one.
    eventually("the sweep finished", || {
        app.accounts()
            .iter()
            .all(|a| !a.name.contains("old@example.com"))
    })
    .await;

    // Once the startup sweep is over, two hours on.
    sweep(&app).await;
    app.sandbox.clock.advance(Duration::from_secs(2 * 3_600));
    let report = sweep(&app).await;
    assert_eq!(report["kept"], 0, "{report}");
    assert_eq!(report["foreign"], 5, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    // This sweep deleted the live one, or the scheduler, woken by the
    // clock, did just before.
    assert!(report["deleted"] == 1 || report["deleted"] == 0, "{report}");
    eventually("the live one is gone too", || {
        app.accounts()
            .iter()
            .all(|a| !a.name.contains("live@example.com"))
    })
    .await;

    let mut left: Vec<String> = app.accounts().into_iter().map(|a| a.name).collect();
    left.sort();
    let mut expected: Vec<String> = foreign.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(left, expected, "every foreign account survives");
}

#[tokio::test]
async fn an_issued_key_dies_at_expiry_and_its_account_is_then_deleted() {
    let app = TestApp::spawn_with(Options::default().set("EXPIRATION", "60")).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    let key = page.key();
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    let report = sweep(&app).await;
    assert_eq!(report["kept"], 1, "not due yet: {report}");
    assert_eq!(app.accounts().len(), 1);

    app.sandbox.clock.advance(Duration::from_secs(61));
    assert_eq!(
        models_status(&app, &key).await,
        StatusCode::UNAUTHORIZED,
        "OpenAI itself refuses the expired key"
    );
    let report = sweep(&app).await;
    assert_eq!(report["deleted"], 1, "{report}");
    assert!(app.accounts().is_empty());
    app.assert_no_secrets_logged(&[&key]);
}

#[tokio::test]
async fn concurrent_revokes_share_one_sweep() {
    let app = TestApp::spawn().await;
    // Returns once no sweep is running.
    sweep(&app).await;
    app.sandbox
        .openai
        .set_latency(Duration::from_millis(300), Duration::ZERO);
    let before = app.openai_calls(SA_LIST);
    futures::future::join_all((0..5).map(|_| revoke(&app))).await;
    eventually("the sweep listed", || app.openai_calls(SA_LIST) > before).await;
    // Its 300 ms listing is over by now: had any other request started a
    // sweep of its own, it would show.
    let _ = app.cleanup.run_requested().await;
    assert_eq!(
        app.openai_calls(SA_LIST) - before,
        1,
        "one list for five requests"
    );
    let get = app.get("/revoke").await;
    assert_eq!(get.status(), StatusCode::OK, "GET /revoke works too");
}

#[tokio::test]
async fn a_failed_delete_does_not_stop_the_sweep_and_a_404_counts_as_done() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    // Returns once no sweep is running.
    sweep(&app).await;

    let now = app.sandbox.clock.unix();
    let seeds = (0..4)
        .map(|i| SeedAccount::new(own(now - 5, &format!("u{i}@example.com")), now - 100))
        .collect();
    app.sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    app.sandbox
        .openai
        // A refusal that retrying cannot fix (a 500 would be retried at once).
        .push_fault(Fault::new(FaultKind::status(403)).method("DELETE").times(1));
    app.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::status(404)).method("DELETE").times(1));
    let report = sweep(&app).await;
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["deleted"], 3, "{report}");
    assert_eq!(report["already_gone"], 1, "{report}");

    let report = sweep(&app).await;
    assert_eq!(report["failed"], 0, "{report}");
    let left: Vec<_> = app.accounts().into_iter().map(|a| a.name).collect();
    // The 404 one was never really deleted by the fake (the fault answered
    // instead), so at most it remains as due and goes on this sweep.
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn the_sweep_pages_through_hundreds_of_accounts() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let mut seeds: Vec<SeedAccount> = (0..250)
        .map(|i| SeedAccount::new(own(now - 1, &format!("u{i}@example.com")), now - 100))
        .collect();
    seeds.extend((0..50).map(|i| SeedAccount::new(format!("foreign-{i}"), now - 1_000_000)));
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    eventually("the sweep finished", || app.accounts().len() == 50).await;
    assert!(
        app.accounts()
            .iter()
            .all(|a| a.name.starts_with("foreign-"))
    );
}

#[tokio::test]
async fn a_full_sweep_that_cannot_list_is_tried_again_within_seconds() {
    let sandbox = Sandbox::start().await.unwrap();
    // The first two listings are refused (403 is not retried within one).
    sandbox.openai.push_fault(
        Fault::new(FaultKind::status(403))
            .method("GET")
            .path("/service_accounts")
            .times(2),
    );
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    eventually("the startup sweep tried to list", || {
        app.openai_calls(SA_LIST) >= 1
    })
    .await;
    // Not a full period later (half the key lifetime here): 5 s, then 10 s.
    app.advance(Duration::from_secs(6));
    eventually("a second listing 5 s later", || {
        app.openai_calls(SA_LIST) >= 2
    })
    .await;
    app.advance(Duration::from_secs(11));
    eventually("a third listing 10 s after that", || {
        app.openai_calls(SA_LIST) >= 3
    })
    .await;
    assert!(app.sandbox.openai.faults().is_empty(), "both faults used");
    assert!(logs().contains("trying again soon"));
}
