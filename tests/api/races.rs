//! Races, shutdown and what anonymous callers can make the server do: the
//! cap holds under concurrency, a shutdown cleans up the create it
//! interrupted, replicas starting together agree on one project, sweeps
//! asked for from outside are bounded and tell nothing, and people get keys
//! while a sweep runs.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use sandbox::openai::{Fault, FaultKind, SeedAccount};

use crate::helpers::*;

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_simultaneous_sign_ins_of_one_person_never_pass_the_cap() {
    let app = TestApp::spawn_with(Options::default().set("MAX_KEYS_PER_USER", "5")).await;
    app.wait_for_startup_sweep().await;
    let browsers: Vec<reqwest::Client> = (0..12).map(|_| browser()).collect();
    let mut callbacks = Vec::new();
    for browser in &browsers {
        app.sandbox.oidc.queue_identity(bob());
        let authorization = app.start_sign_in_with(browser).await;
        callbacks.push(app.authorize_with(browser, &authorization).await);
    }
    // Every create takes a while, so all twelve are in flight together.
    app.sandbox
        .openai
        .set_latency(Duration::from_millis(300), Duration::ZERO);
    let pages = futures::future::join_all(browsers.iter().zip(&callbacks).map(
        |(browser, url)| async move { KeyPage::read(browser.get(url).send().await.unwrap()).await },
    ))
    .await;
    let issued = pages.iter().filter(|p| p.status == StatusCode::OK).count();
    let capped = pages
        .iter()
        .filter(|p| p.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        issued,
        5,
        "{:?}",
        pages.iter().map(|p| p.status).collect::<Vec<_>>()
    );
    assert_eq!(capped, 7);
    assert_eq!(app.openai_calls(SA_CREATE), 5);
    assert_eq!(app.accounts().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_gives_its_place_under_the_cap_back() {
    let app = TestApp::spawn_with(Options::default().set("MAX_KEYS_PER_USER", "1")).await;
    app.wait_for_startup_sweep().await;
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::status(500))
            .method("POST")
            .path("/service_accounts"),
    );
    let failed = app.sign_in_as(bob()).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.body);
    let page = app.sign_in_as(bob()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_an_ambiguous_create_deletes_its_account_before_the_process_ends() {
    let app = TestApp::spawn_with(Options {
        own_runtime: true,
        ..Options::default()
    })
    .await;
    app.wait_for_startup_sweep().await;
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::CommitThenHang)
            .method("POST")
            .path("/service_accounts"),
    );
    let browser = browser();
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in_with(&browser).await;
    let callback = app.authorize_with(&browser, &authorization).await;
    let pending = tokio::spawn(async move { browser.get(callback).send().await });
    eventually("the create committed and then hung", || {
        app.accounts().len() == 1
    })
    .await;
    // The look-up and delete that follow the create's timeout take a while.
    app.sandbox
        .openai
        .set_latency(Duration::from_millis(800), Duration::ZERO);

    let started = Instant::now();
    let sandbox = std::sync::Arc::clone(&app.sandbox);
    let project = app.project_id().unwrap();
    app.stop().await.unwrap();
    let took = started.elapsed();

    assert!(
        sandbox.openai.service_accounts(&project).is_empty(),
        "the account nobody saw was deleted before the server stopped"
    );
    // TIMEOUT is 2 s: at most 3 of them.
    assert!(took < Duration::from_secs(7), "{took:?}");
    let _ = pending.await;
    assert!(logs().contains("deleted the account of a failed create"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_agree_on_one_project() {
    let sandbox = Sandbox::builder()
        .openai(sandbox::openai::Config {
            latency_ms: 200,
            ..sandbox::openai::Config::default()
        })
        .start()
        .await
        .unwrap();
    let first = TestApp::spawn_on(sandbox, Options::default()).await;
    let second = first.replica().await;
    let third = first.replica().await;
    let active = || {
        first
            .sandbox
            .openai
            .projects()
            .into_iter()
            .filter(|p| p.name == "personal" && p.archived_at.is_none())
            .collect::<Vec<_>>()
    };
    for app in [&first, &second, &third] {
        let page = app.sign_in_as(bob()).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    }
    let active = active();
    assert_eq!(active.len(), 1, "one project in use: {active:?}");
    assert_eq!(
        first.sandbox.openai.service_accounts(&active[0].id).len(),
        3,
        "every replica's key is in it"
    );
}

#[tokio::test]
async fn revoke_from_many_addresses_runs_at_most_one_sweep_per_interval() {
    let app = TestApp::spawn().await;
    sweep(&app).await;
    let lists = app.openai_calls(SA_LIST);
    for i in 2..22u8 {
        let caller = browser_from(IpAddr::from([127, 0, 0, i]));
        for _ in 0..2 {
            let response = caller.post(app.url("/revoke")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body, serde_json::json!({"sweep": "requested"}));
        }
    }
    // Wait for the one they asked for (the answers came at once).
    app.cleanup.run_requested().await.unwrap();
    assert_eq!(
        app.openai_calls(SA_LIST) - lists,
        1,
        "forty requests from twenty addresses: one listing"
    );
    // Once the interval has passed, the next request sweeps again.
    app.advance(Duration::from_secs(31));
    revoke(&app).await;
    eventually("a second listing", || {
        app.openai_calls(SA_LIST) - lists == 2
    })
    .await;
}

#[tokio::test]
async fn an_anonymous_revoke_learns_nothing_of_the_keys_or_of_failures() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    sandbox
        .openai
        .seed_service_accounts(
            &project,
            vec![SeedAccount::new(
                own(now + 900, "live@example.com"),
                now - 60,
            )],
        )
        .unwrap();
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    app.wait_for_startup_sweep().await;
    sweep(&app).await;

    let answer = app.client.post(app.url("/revoke")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let ok = answer.text().await.unwrap();

    // The listing fails (a refusal, not retried) from now on.
    app.advance(Duration::from_secs(31));
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::status(403))
            .method("GET")
            .path("/service_accounts")
            .times(50),
    );
    let answer = app.client.post(app.url("/revoke")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let failed = answer.text().await.unwrap();
    assert_eq!(ok, failed, "the same answer whatever happened");
    for text in [&ok, &failed] {
        assert_eq!(text, r#"{"sweep":"requested"}"#);
    }
    eventually("the failure went to the log", || {
        logs().contains("listing service accounts failed part-way")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_get_keys_while_a_sweep_uses_up_the_admin_apis_rate_limit() {
    let sandbox = Sandbox::builder()
        .openai(sandbox::openai::Config {
            rate_limit_per_s: Some(20.0),
            latency_ms: 20,
            ..sandbox::openai::Config::default()
        })
        .start()
        .await
        .unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let seeds = (0..400)
        .map(|i| SeedAccount::new(own(now - 10, &format!("u{i}@example.com")), now - 100))
        .collect();
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default().set("OPENAI_PROJECT_ID", &project),
    )
    .await;
    // The startup sweep is deleting at full speed, well past the limit.
    eventually("the sweep is being throttled", || {
        app.sandbox
            .openai
            .journal()
            .by_status()
            .get(&429)
            .copied()
            .unwrap_or(0)
            > 5
    })
    .await;
    for user in ["alice@example.com", "carol@example.com", "dave@example.com"] {
        let page = app.sign_in_as(Identity::workspace(user)).await;
        assert_eq!(page.status, StatusCode::OK, "{user}: {}", page.body);
    }
    let left = app.accounts().len();
    assert!(left > 3, "the sweep is still going: {left} accounts left");
}
