//! Usage per key and budgets, with no proxy: usage recorded in the
//! sandbox's OpenAI against issued keys shows on the pages and in the API
//! once the server has read the Usage API; a spent budget refuses the next
//! key (and, when set, revokes the live ones); a new day admits again; an
//! admin can lift a budget.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::oidc::Identity;
use serde_json::Value;

use crate::cli::cli_session;
use crate::helpers::*;

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

/// `GET /api/v1/keys` with a CLI session.
async fn key_list(app: &TestApp, session: &str) -> Value {
    let response = plain_client()
        .get(app.url("/api/v1/keys"))
        .bearer_auth(session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// `POST /api/v1/keys` with a CLI session: status, `Retry-After`, body.
async fn new_key(app: &TestApp, session: &str) -> (StatusCode, Option<u64>, Value) {
    let response = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(session)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, response.json().await.unwrap())
}

/// Moves time past the next read of usage and waits until the server has
/// made it (the Usage API answered, and what it said is in the ledger).
async fn next_poll(app: &TestApp, session: &str) {
    let polls = app.openai_calls("GET /v1/organization/usage/completions");
    app.advance(Duration::from_secs(61));
    eventually("the server reads usage", || {
        app.openai_calls("GET /v1/organization/usage/completions") > polls
    })
    .await;
    // The ledger is written once the answer is read.
    let mut read = None;
    for _ in 0..200 {
        read = key_list(app, session).await["usage_today"]["read_at"].as_i64();
        if read.is_some_and(|at| at >= app.sandbox.clock.unix() - 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the poll never landed: {read:?}");
}

#[tokio::test]
async fn usage_recorded_against_keys_shows_on_the_pages_and_in_the_api() {
    let app = TestApp::spawn().await;
    let browser = browser();
    let page = app.sign_in_with(&browser, bob()).await;
    let key = page.key();
    let session = cli_session(&app, bob()).await;
    // A real model request through the key, and more usage besides.
    let response = plain_client()
        .post(format!(
            "{}/chat/completions",
            app.sandbox.openai_base_url()
        ))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 1000, 228));
    next_poll(&app, &session).await;

    let list = key_list(&app, &session).await;
    let item = &list["keys"][0];
    assert_eq!(item["usage"]["input_tokens"], 1001, "{list}");
    assert_eq!(item["usage"]["output_tokens"], 233);
    assert_eq!(item["usage"]["requests"], 2);
    assert_eq!(list["usage_today"]["input_tokens"], 1001);
    assert_eq!(list["usage_today"]["tokens_per_day"], Value::Null);
    assert_eq!(list["usage_today"]["over_budget"], false);

    let mine = my_keys(&app, &browser).await;
    assert!(
        mine.body.contains("1,234 tokens (2 requests)"),
        "{}",
        mine.body
    );
    assert!(
        mine.body.contains("Your keys used 1,234 tokens"),
        "{}",
        mine.body
    );
    // Metrics by rule, never by person.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("oks_usage_tokens{rule=\"environment\",direction=\"input\"} 1001"),
        "{metrics}"
    );
    assert!(!metrics.contains("bob@"));
}

#[tokio::test]
async fn a_spent_budget_refuses_the_next_key_until_the_day_ends() {
    let app = TestApp::spawn_with(Options::default().set("TOKENS_PER_DAY", "1000")).await;
    let browser = browser();
    let key = app.sign_in_with(&browser, bob()).await.key();
    let session = cli_session(&app, bob()).await;
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o-mini", 600, 300));
    next_poll(&app, &session).await;
    // 900 of 1,000: still within.
    let (status, _, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o-mini", 100, 0));
    next_poll(&app, &session).await;
    let (status, retry_after, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "over_budget", "{body}");
    let now = app.sandbox.clock.unix();
    let midnight = (now.div_euclid(86_400) + 1) * 86_400;
    let retry_after = retry_after.expect("Retry-After");
    assert!(
        (i64::try_from(retry_after).unwrap() - (midnight - now)).abs() <= 2,
        "{retry_after} s, midnight in {} s",
        midnight - now
    );
    let list = key_list(&app, &session).await;
    assert_eq!(list["usage_today"]["over_budget"], true);
    assert_eq!(list["usage_today"]["tokens_per_day"], 1000);
    assert_eq!(list["usage_today"]["resets_at"], midnight);
    let mine = my_keys(&app, &browser).await;
    assert!(mine.body.contains("id=\"over-budget\""), "{}", mine.body);
    assert!(
        mine.body
            .contains("new keys are refused until midnight UTC")
    );
    // The live keys are not revoked: the budget only refuses.
    assert_eq!(app.accounts().len(), 2);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("oks_keys_refused_total{reason=\"over_budget\"} 1"));

    // A new day: the budget is whole again.
    app.advance(Duration::from_secs(u64::try_from(midnight - now).unwrap()));
    next_poll(&app, &session).await;
    let (status, _, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn with_revoke_a_spent_budget_revokes_the_live_keys_and_the_page_says_why() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TOKENS_PER_DAY", "1000")
            .set("ON_OVER_BUDGET", "revoke"),
    )
    .await;
    let browser = browser();
    let key = app.sign_in_with(&browser, bob()).await.key();
    let session = cli_session(&app, bob()).await;
    let (status, _, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other = body["key"].as_str().unwrap().to_owned();
    // Someone else's usage is theirs alone.
    let carol = crate::helpers::browser();
    let carols = app
        .sign_in_with(&carol, Identity::workspace("carol@example.com"))
        .await
        .key();
    assert!(app.sandbox.openai.add_usage(&carols, "gpt-4o", 500, 0));
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 1200, 0));
    next_poll(&app, &session).await;

    eventually("bob's keys are revoked", || {
        !app.sandbox.openai.key_is_live(&key) && !app.sandbox.openai.key_is_live(&other)
    })
    .await;
    assert!(
        app.sandbox.openai.key_is_live(&carols),
        "carol, within her budget, keeps hers"
    );
    let mine = my_keys(&app, &browser).await;
    assert!(
        mine.body.contains("your live keys were revoked"),
        "{}",
        mine.body
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("oks_keys_revoked_total{actor=\"budget\"} 2"),
        "{metrics}"
    );
    let audit = logs();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"key.revoked\"") && l.contains("over budget")),
        "an audit event says why"
    );
}

#[tokio::test]
async fn an_admin_lifts_a_spent_budget_for_the_day() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("TOKENS_PER_DAY", "1000")
            .set("ADMIN_USERS", "admin@example.com"),
    )
    .await;
    let key = app.sign_in_as(bob()).await.key();
    let session = cli_session(&app, bob()).await;
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 2000, 0));
    next_poll(&app, &session).await;
    assert_eq!(
        new_key(&app, &session).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let admin = browser();
    app.sign_in_with(&admin, Identity::workspace("admin@example.com"))
        .await;
    let page = KeyPage::read(admin.get(app.url("/admin")).send().await.unwrap()).await;
    assert_eq!(page.status, StatusCode::OK);
    let row = page
        .body
        .split("<tr class=\"holder\"")
        .find(|row| row.contains("data-owner=\"bob@gmail.com\""))
        .unwrap_or_else(|| panic!("bob's usage on the admin page:\n{}", page.body));
    assert!(row.contains("2,000 tokens (1 request)"), "{row}");
    assert!(row.contains("spent"), "{row}");
    let csrf = hidden(&page.body, "csrf");
    let lifted = post_form(
        &app,
        &admin,
        "/admin/lift-budget",
        &[("csrf", &csrf), ("owner", "bob@gmail.com")],
    )
    .await;
    assert!(lifted.status.is_redirection(), "{}", lifted.status);
    let (status, _, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Only an admin may.
    let bobs = browser();
    app.sign_in_with(&bobs, bob()).await;
    let mine = my_keys(&app, &bobs).await;
    let csrf = hidden(&mine.body, "csrf");
    let refused = post_form(
        &app,
        &bobs,
        "/admin/lift-budget",
        &[("csrf", &csrf), ("owner", "bob@gmail.com")],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(logs().contains("admin.budget_lifted"));
}

#[tokio::test]
async fn a_poll_costs_one_usage_call_and_one_listing_per_hundred_keys() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("MAX_KEYS_PER_USER", "0")
            .set("RATE_LIMIT_PER_USER", "0"),
    )
    .await;
    let session = cli_session(&app, bob()).await;
    for _ in 0..150 {
        let (status, _, body) = new_key(&app, &session).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let before = app.get("/metrics").await.text().await.unwrap();
    let calls = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("oks_usage_poll_admin_calls_total"))
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse::<f64>().unwrap())
    };
    next_poll(&app, &session).await;
    let after = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        calls(&after) - calls(&before),
        3.0,
        "two key listings and one usage page"
    );
}

/// `DELETE` on the sandbox's Admin API, as someone with the admin key would
/// by hand.
async fn delete_by_hand(app: &TestApp, path: &str) {
    let response = plain_client()
        .delete(format!("{}{path}", app.sandbox.openai_base_url()))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_deleted_behind_our_back_is_reported_to_its_owner_and_in_the_audit() {
    let app = TestApp::spawn().await;
    let browser = browser();
    app.sign_in_with(&browser, bob()).await;
    app.sign_in_with(&browser, bob()).await;
    let project = app.project_id().unwrap();
    let accounts = app.accounts();
    assert_eq!(accounts.len(), 2);
    // (account, key) of each.
    let keys: Vec<(String, String)> = {
        let session = cli_session(&app, bob()).await;
        key_list(&app, &session).await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_owned(),
                    k["key_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let key_ids: Vec<String> = keys.iter().map(|(_, key)| key.clone()).collect();
    // OpenAI revokes one key (the account stays), someone deletes the
    // other account by hand.
    delete_by_hand(
        &app,
        &format!("/organization/projects/{project}/api_keys/{}", key_ids[0]),
    )
    .await;
    let by_hand = keys[1].0.clone();
    delete_by_hand(
        &app,
        &format!("/organization/projects/{project}/service_accounts/{by_hand}"),
    )
    .await;
    sweep(&app).await;
    // The page reads the key listing again once its reading is old.
    app.advance(Duration::from_secs(20));
    let mine = my_keys(&app, &browser).await;
    let notices = mine.body.matches("class=\"notice vanished\"").count();
    assert_eq!(notices, 2, "{}", mine.body);
    assert!(mine.body.contains("OpenAI may have revoked it"));
    let vanished: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("\"key.vanished\"") && l.contains(&project))
        .map(str::to_owned)
        .collect();
    assert_eq!(vanished.len(), 2, "{vanished:?}");
    assert!(
        vanished
            .iter()
            .any(|l| l.contains(&by_hand) && l.contains("account deleted"))
    );
    assert!(
        vanished
            .iter()
            .any(|l| l.contains(&key_ids[0]) && l.contains("key deleted"))
    );
    // Reported once, not at every reading; and a key revoked here is no
    // news either.
    app.sign_in_with(&browser, bob()).await;
    let mine = my_keys(&app, &browser).await;
    let third = listed_accounts(&mine.body)[0].clone();
    let csrf = hidden(&mine.body, "csrf");
    let revoked = post_form(
        &app,
        &browser,
        &format!("/keys/{third}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert!(revoked.status.is_redirection() || revoked.status.is_success());
    sweep(&app).await;
    app.advance(Duration::from_secs(20));
    my_keys(&app, &browser).await;
    assert_eq!(
        logs()
            .lines()
            .filter(|l| l.contains("\"key.vanished\"") && l.contains(&project))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_dollar_budget_counts_estimated_spend_this_month_with_openais_costs_beside() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("MODEL_PRICES", "gpt-4o=2.50/10.00,*=0.10/0.40")
            .set("USD_PER_MONTH", "0.05"),
    )
    .await;
    let browser = browser();
    let key = app.sign_in_with(&browser, bob()).await.key();
    let session = cli_session(&app, bob()).await;
    // 10,000 input tokens of gpt-4o: $0.025, half the budget.
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 10_000, 0));
    next_poll(&app, &session).await;
    let list = key_list(&app, &session).await;
    let usd = list["usage_today"]["usd_this_month"].as_f64().unwrap();
    assert!((usd - 0.025).abs() < 1e-9, "{list}");
    let billed = list["usage_today"]["usd_this_month_billed"]
        .as_f64()
        .unwrap();
    assert!(
        (billed - 0.025).abs() < 1e-9,
        "OpenAI's costs beside: {list}"
    );
    assert_eq!(list["usage_today"]["usd_per_month"], 0.05);
    assert_eq!(new_key(&app, &session).await.0, StatusCode::CREATED);
    let mine = my_keys(&app, &browser).await;
    assert!(
        mine.body.contains("This month: about $0.03 of your $0.05"),
        "{}",
        mine.body
    );
    assert!(
        mine.body.contains("OpenAI&#39;s costs so far: $0.03"),
        "{}",
        mine.body
    );

    // 1,000 output tokens of an unlisted model at $0.40/M, and 10,000 more
    // of gpt-4o: $0.0504 in all, over.
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o-mini", 0, 1_000));
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 10_000, 0));
    next_poll(&app, &session).await;
    let (status, retry_after, body) = new_key(&app, &session).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "over_budget");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$0.05 this month"),
        "{body}"
    );
    // Until the first of next month, UTC.
    let (_, next_month) = openai_key_server::usage::month_of(app.sandbox.clock.now());
    let retry_after = i64::try_from(retry_after.unwrap()).unwrap();
    assert!(
        (app.sandbox.clock.unix() + retry_after - next_month).abs() <= 2,
        "{retry_after} s"
    );
}

#[tokio::test]
async fn a_failing_costs_api_loses_no_usage() {
    use sandbox::openai::{Fault, FaultKind};
    let app = TestApp::spawn_with(
        Options::default()
            .set("MODEL_PRICES", "*=1/1")
            .set("TOKENS_PER_DAY", "1000"),
    )
    .await;
    let key = app.sign_in_as(bob()).await.key();
    let session = cli_session(&app, bob()).await;
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 1500, 0));
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::Status {
            status: 503,
            retry_after: None,
        })
        .method("GET")
        .path("/v1/organization/costs")
        .times(5),
    );
    next_poll(&app, &session).await;
    let list = key_list(&app, &session).await;
    assert_eq!(list["usage_today"]["input_tokens"], 1500, "{list}");
    assert_eq!(list["usage_today"]["over_budget"], true);
    // OpenAI's figure is the last one read (at start, before any usage).
    assert_eq!(list["usage_today"]["usd_this_month_billed"], 0.0, "{list}");
    assert_eq!(list["usage_today"]["usd_this_month"], 0.0015, "{list}");
    assert_eq!(
        new_key(&app, &session).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
