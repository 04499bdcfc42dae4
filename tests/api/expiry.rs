//! Expiry that holds: accounts go at their expiry without anyone asking,
//! through faults, restarts and several replicas, and foreign accounts stay.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use sandbox::openai::{Fault, FaultKind, SeedAccount};

use crate::helpers::*;

fn short_keys() -> Options {
    Options::default()
        .set("EXPIRATION", "600")
        .set("CLEANUP_INTERVAL", "86400")
}

#[tokio::test]
async fn an_expired_account_is_deleted_at_its_expiry_even_when_listing_fails() {
    let app = TestApp::spawn_with(short_keys()).await;
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(app.accounts().len(), 1);
    // From now on no listing succeeds: only the schedule learned at issuance
    // can delete the account.
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::status(400))
            .method("GET")
            .path("/service_accounts")
            .times(10_000),
    );
    app.advance(Duration::from_secs(599));
    tokio::task::yield_now().await;
    assert_eq!(app.accounts().len(), 1, "not deleted early");

    app.advance(Duration::from_secs(2));
    eventually("the expired account is deleted", || {
        app.accounts().is_empty()
    })
    .await;
    assert_eq!(
        models_status(&app, &page.key()).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(logs().contains("\"audit\":\"key.deleted\""));
}

#[tokio::test]
async fn a_restarted_replica_finds_the_schedule_in_the_account_names() {
    let first = TestApp::spawn_with(short_keys()).await;
    let page = first.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK);
    let second = first.replica().await;
    // Let the new replica's startup sweep learn the account, then lose the
    // first replica.
    sweep(&second).await;
    first.kill();

    second.advance(Duration::from_secs(601));
    eventually("the survivor deletes the account on schedule", || {
        second.accounts().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_sign_in_started_on_one_replica_finishes_on_another() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    a.sandbox
        .oidc
        .queue_identity(Identity::consumer("bob@gmail.com"));
    let authorization = a.start_sign_in().await;
    let callback = a.authorize(&authorization).await;
    // The load balancer sends the callback to replica b.
    let on_b = callback.replace(&a.addr.to_string(), &b.addr.to_string());
    assert_ne!(on_b, callback);
    let page = a.open(&on_b).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.key().starts_with("sk-svcacct-"));
}

#[tokio::test]
async fn three_replicas_sweep_together_without_errors_or_early_deletes() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let mut seeds: Vec<SeedAccount> = (0..300)
        .map(|i| SeedAccount::new(own(now - 5, &format!("old{i}@example.com")), now - 700))
        .collect();
    seeds.extend(
        (0..50)
            .map(|i| SeedAccount::new(own(now + 300, &format!("live{i}@example.com")), now - 300)),
    );
    seeds.extend(
        (0..50).map(|i| SeedAccount::new(format!("foreign-{i}@example.com"), now - 999_999)),
    );
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();

    let a = TestApp::spawn_on(sandbox, short_keys()).await;
    let b = a.replica().await;
    let c = a.replica().await;
    let reports = futures::future::join_all([sweep(&a), sweep(&b), sweep(&c)]).await;
    for report in &reports {
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["list_error"].is_null(), "{report}");
    }
    eventually("every expired account is gone", || {
        a.accounts().len() == 100
    })
    .await;
    let left = a.accounts();
    assert_eq!(left.iter().filter(|x| x.name.contains(".live")).count(), 50);
    assert_eq!(
        left.iter()
            .filter(|x| x.name.starts_with("foreign-"))
            .count(),
        50
    );

    // Kill one; the other two still delete the live ones on time.
    a.kill();
    b.advance(Duration::from_secs(301));
    c.clock.jumped();
    eventually(
        "the remaining replicas delete the newly expired accounts",
        || b.accounts().len() == 50,
    )
    .await;
    assert!(b.accounts().iter().all(|x| x.name.starts_with("foreign-")));
}

#[tokio::test]
async fn throttling_and_server_errors_while_listing_and_deleting_are_retried_in_the_same_sweep() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    sweep(&app).await;

    let now = app.sandbox.clock.unix();
    let seeds = (0..150)
        .map(|i| SeedAccount::new(own(now - 1, &format!("u{i}@example.com")), now - 100))
        .collect();
    app.sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let openai = &app.sandbox.openai;
    openai.push_fault(
        Fault::new(FaultKind::Status {
            status: 429,
            retry_after: Some(1),
        })
        .method("GET")
        .path("/service_accounts"),
    );
    openai.push_fault(
        Fault::new(FaultKind::status(503))
            .method("GET")
            .path("/service_accounts"),
    );
    openai.push_fault(
        Fault::new(FaultKind::MalformedJson)
            .method("GET")
            .path("/service_accounts"),
    );
    openai.push_fault(
        Fault::new(FaultKind::Status {
            status: 429,
            retry_after: Some(1),
        })
        .method("DELETE")
        .times(3),
    );
    openai.push_fault(Fault::new(FaultKind::status(500)).method("DELETE").times(2));

    let report = sweep(&app).await;
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["deleted"], 150, "{report}");
    assert!(report["retries"].as_u64().unwrap() >= 8, "{report}");
    assert!(report["rate_limited"].as_u64().unwrap() >= 2, "{report}");
    assert!(app.accounts().is_empty());
}

#[tokio::test]
async fn a_list_call_that_hangs_past_the_timeout_is_retried() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let app = TestApp::spawn_on(sandbox, Options::default().set("TIMEOUT", "1")).await;
    sweep(&app).await;
    let now = app.sandbox.clock.unix();
    app.sandbox
        .openai
        .seed_service_accounts(
            &project,
            vec![SeedAccount::new(own(now - 1, "x@example.com"), now - 10)],
        )
        .unwrap();
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::Hang)
            .method("GET")
            .path("/service_accounts"),
    );
    let report = sweep(&app).await;
    assert_eq!(report["deleted"], 1, "{report}");
    assert!(app.accounts().is_empty());
}

#[tokio::test]
async fn accounts_of_the_go_original_are_deleted_only_when_the_operator_opts_in() {
    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let seeds = vec![
        SeedAccount::new("old.user@example.com", now - 90_000),
        SeedAccount::new("recent.user@example.com", now - 100),
        SeedAccount::new("ci-bot", now - 900_000),
    ];
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let app = TestApp::spawn_on(sandbox, Options::default()).await;
    let report = sweep(&app).await;
    assert_eq!(report["deleted"], 0, "off by default: {report}");
    assert_eq!(app.accounts().len(), 3);
    drop(app);

    let sandbox = Sandbox::start().await.unwrap();
    let project = sandbox.openai.create_project("personal");
    let now = sandbox.clock.unix();
    let seeds = vec![
        SeedAccount::new("old.user@example.com", now - 90_000),
        SeedAccount::new("recent.user@example.com", now - 100),
        SeedAccount::new("ci-bot", now - 900_000),
    ];
    sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default().set("CLEANUP_LEGACY_ACCOUNTS", "true"),
    )
    .await;
    eventually("the old legacy account goes", || app.accounts().len() == 2).await;
    let mut left: Vec<_> = app.accounts().into_iter().map(|a| a.name).collect();
    left.sort();
    assert_eq!(left, ["ci-bot", "recent.user@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_orphaned_by_a_killed_server_is_deleted_on_time_by_another_replica() {
    use std::process::{Command, Stdio};

    let sandbox = Sandbox::start().await.unwrap();
    sandbox.openai.create_project("personal");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let redirect_uri = format!("http://127.0.0.1:{port}/oauth2/callback");
    sandbox.oidc.allow_redirect_uri(&redirect_uri);
    let mut command = Command::new(env!("CARGO_BIN_EXE_openai-key-server"));
    command
        .env_clear()
        .current_dir(std::env::temp_dir())
        .envs(sandbox.env(&redirect_uri))
        .env("ALLOWED_USERS", "bob@gmail.com")
        .env("EXPIRATION", "600")
        .env("SESSION_SECRET", SESSION_SECRET)
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("TIMEOUT", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let mut started = None;
    for _ in 0..500 {
        if let Ok(response) = browser.get(format!("{base}/")).send().await {
            started = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = started.expect("the server starts");
    let authorization = location(&response);
    sandbox
        .oidc
        .queue_identity(Identity::consumer("bob@gmail.com"));
    sandbox.openai.push_fault(
        Fault::new(FaultKind::CommitThenHang)
            .method("POST")
            .path("/service_accounts"),
    );
    let callback = location(&browser.get(&authorization).send().await.unwrap());
    let pending = tokio::spawn({
        let browser = browser.clone();
        async move { browser.get(&callback).send().await }
    });
    let project = sandbox.openai.find_project_by_name("personal").unwrap().id;
    let sandbox = std::sync::Arc::new(sandbox);
    eventually("the create reached OpenAI", || {
        sandbox.openai.service_accounts(&project).len() == 1
    })
    .await;
    // SIGKILL between creating the account and showing the key.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        pending.await.unwrap().is_err(),
        "the browser never got a page"
    );

    let sandbox = std::sync::Arc::try_unwrap(sandbox).ok().unwrap();
    let survivor = TestApp::spawn_on(sandbox, short_keys()).await;
    sweep(&survivor).await;
    assert_eq!(
        survivor.accounts().len(),
        1,
        "not deleted before its expiry"
    );
    survivor.advance(Duration::from_secs(601));
    eventually("the orphan is deleted at its expiry", || {
        survivor.accounts().is_empty()
    })
    .await;
}
