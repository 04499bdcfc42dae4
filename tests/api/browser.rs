//! The pages in a real Chromium, through ChromeDriver: a person signs in
//! through the sandbox's form, gets a key, copies it, sees and revokes
//! their keys, signs out; an admin revokes someone else's keys; another
//! site's link stops at the landing page; nothing loads from elsewhere and
//! an injected inline script does not run. Every page is screenshotted
//! under `target/screenshots/`; with `UPDATE_SCREENSHOTS=1` the ones the
//! README shows are written to `docs/screenshots/` too.
//!
//! Chromium and ChromeDriver come from Debian's packages (`.ci/run`
//! installs them). Without them these tests fail and say so; they never
//! pass silently.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use sandbox::oidc::Identity;
use serde_json::{Value, json};

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A Chromium driven through its own ChromeDriver.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

/// Grants a permission to the page (the WebDriver "Set Permission"
/// command), here the clipboard's.
#[derive(Debug)]
struct Grant(&'static str);

impl WebDriverCompatibleCommand for Grant {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/permissions",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({"descriptor": {"name": self.0}, "state": "granted"});
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

impl Browser {
    async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "the browser tests need {path}: install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; .ci/run does this)"
            );
        }
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(format!(
            "oks-chromium-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1100,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client: Some(client),
            driver,
            profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    async fn goto(&self, url: &str) {
        self.client().goto(url).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks what does not leave the page (a copy button).
    async fn press(&self, css: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Clicks a link or a form's button, and waits until the page it
    /// leaves is gone: otherwise the next `wait_for` could find its element
    /// on the old page, before the new one has loaded.
    async fn click(&self, css: &str) {
        let old = self.client().find(Locator::Css("html")).await.unwrap();
        self.press(css).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // A stale element is how WebDriver says its document is gone.
        while old.tag_name().await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "clicking {css} did not load another page"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.client().find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn value(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    async fn script(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    async fn url(&self) -> String {
        self.client().current_url().await.unwrap().to_string()
    }

    /// Waits until `css` is on the page (pages load after a click).
    async fn wait_for(&self, css: &str) {
        self.client()
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
    }

    /// Saves the page under `target/screenshots/<name>.png` (and
    /// `docs/screenshots/` with `UPDATE_SCREENSHOTS=1` for `readme`).
    async fn shot(&self, name: &str, readme: bool) {
        let png = self.client().screenshot().await.unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if readme && std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            let docs = root.join("docs/screenshots");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
    }

    /// Every URL the page loaded (document and resources).
    async fn loaded(&self) -> Vec<String> {
        let value = self
            .script(
                "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
            )
            .await;
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Signs in through the sandbox's form as `email` (of Workspace domain
    /// `hd`, if any), from a typed URL.
    async fn sign_in(&self, app: &TestApp, email: &str, hd: &str) {
        self.goto(&app.url("/")).await;
        self.wait_for("#signin_email").await;
        self.fill("#signin_email", email).await;
        self.fill("#signin_hd", hd).await;
        self.click("button.approve").await;
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Every URL is the server's or the sandbox's.
fn assert_own_origins(app: &TestApp, urls: &[String]) {
    let own = [app.url(""), app.sandbox.oidc_issuer_url()];
    for url in urls {
        assert!(
            own.iter()
                .any(|origin| url.starts_with(origin.trim_end_matches('/'))),
            "{url} is from elsewhere"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_gets_a_key_copies_it_sees_and_revokes_their_keys_and_signs_out() {
    let app = TestApp::spawn().await;
    let browser = Browser::start().await;
    browser
        .sign_in(&app, "alice@example.com", "example.com")
        .await;
    browser.wait_for("#key").await;
    // Permissions are the page's origin's: granted once on it.
    browser
        .client()
        .issue_cmd(Grant("clipboard-read"))
        .await
        .unwrap();
    browser
        .client()
        .issue_cmd(Grant("clipboard-write"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1").await, "Your OpenAI API key");
    let key = browser.value("#key").await;
    assert!(key.starts_with("sk-svcacct-"), "{key}");
    let local = browser.text("#expires-local").await;
    assert!(local.starts_with("your time: "), "{local}");
    assert!(
        local.contains("UTC") || local.contains("GMT"),
        "a time zone's name: {local}"
    );
    browser.shot("key", true).await;
    assert_own_origins(&app, &browser.loaded().await);

    // The copy button puts exactly the key on the clipboard.
    browser.press("button[data-copy=key]").await;
    let copied = browser
        .client()
        .execute_async(
            "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('refused: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(copied.as_str(), Some(key.as_str()));
    assert_eq!(browser.text("button[data-copy=key]").await, "Copied");

    // My keys: the key is listed, never its value.
    browser.click("#my-keys").await;
    browser.wait_for("#keys").await;
    assert_eq!(browser.text("#who").await, "alice@example.com");
    let source = browser.client().source().await.unwrap();
    assert!(!source.contains(&key));
    assert_eq!(listed_accounts(&source).len(), 1);
    browser.shot("my-keys", true).await;
    assert_own_origins(&app, &browser.loaded().await);

    // A new key, then back to my keys: two.
    browser.click("#new-key").await;
    browser.wait_for("#key").await;
    let second = browser.value("#key").await;
    assert_ne!(second, key);
    browser.click("#my-keys").await;
    browser.wait_for("#keys").await;
    let source = browser.client().source().await.unwrap();
    let accounts = listed_accounts(&source);
    assert_eq!(accounts.len(), 2);

    // Revoke the first: gone from the page, from OpenAI, and its key dead.
    let first_account = app
        .accounts()
        .into_iter()
        .min_by_key(|a| a.created_at)
        .unwrap()
        .id;
    browser
        .click(&format!("tr[data-account='{first_account}'] button.revoke"))
        .await;
    browser.wait_for("#keys").await;
    let source = browser.client().source().await.unwrap();
    assert_eq!(listed_accounts(&source).len(), 1);
    assert!(!source.contains(&first_account));
    assert!(!app.accounts().iter().any(|a| a.id == first_account));
    assert_eq!(models_status(&app, &key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(models_status(&app, &second).await, StatusCode::OK);

    browser.click("#sign-out").await;
    browser.wait_for("h1").await;
    assert_eq!(browser.text("h1").await, "Signed out");
    browser.shot("signed-out", false).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_revokes_every_key_of_another_person() {
    let app = TestApp::spawn_with(Options::default().set("ADMIN_USERS", "carol@example.com")).await;
    let bobs = browser();
    let bobs_key = app
        .sign_in_with(&bobs, Identity::consumer("bob@gmail.com"))
        .await
        .key();
    let browser = Browser::start().await;
    browser
        .sign_in(&app, "carol@example.com", "example.com")
        .await;
    browser.wait_for("#key").await;
    browser.goto(&app.url("/admin")).await;
    browser.wait_for("section.owner").await;
    browser.shot("admin", true).await;
    browser
        .click("section[data-owner='bob@gmail.com'] button.revoke-owner")
        .await;
    browser.wait_for("h1").await;
    let source = browser.client().source().await.unwrap();
    assert!(
        !source.contains("data-owner=\"bob@gmail.com\""),
        "bob's keys are gone from the page"
    );
    assert!(source.contains("data-owner=\"carol@example.com\""));
    assert!(
        !app.accounts()
            .iter()
            .any(|a| a.name.contains("bob@gmail.com"))
    );
    assert_eq!(
        models_status(&app, &bobs_key).await,
        StatusCode::UNAUTHORIZED
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_link_stops_at_the_landing_page_and_the_button_goes_on() {
    let app = TestApp::spawn().await;
    let browser = Browser::start().await;
    // A page elsewhere (an opaque origin) links to the server.
    let page = format!("data:text/html,<a id=go href='{}'>keys</a>", app.url("/"));
    browser.goto(&page).await;
    browser.click("#go").await;
    browser.wait_for("#sign-in").await;
    assert_eq!(browser.text("h1").await, "Get a short-lived OpenAI API key");
    browser.shot("landing", false).await;
    assert_eq!(app.sandbox.oidc.journal().count("GET /o/oauth2/v2/auth"), 0);
    browser.click("#sign-in").await;
    browser.wait_for("#signin_email").await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&app.sandbox.oidc_issuer_url())
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_inline_script_does_not_run_and_a_refusal_offers_another_account() {
    let app = TestApp::spawn().await;
    let browser = Browser::start().await;
    browser.sign_in(&app, "mallory@evil.test", "").await;
    browser.wait_for("h1").await;
    assert_eq!(browser.text("h1").await, "No key for this account");
    assert!(
        browser
            .client()
            .find(Locator::Css("a[href='/?account=choose']"))
            .await
            .is_ok()
    );
    browser.shot("refused", false).await;
    let ran = browser
        .script(
            "const s = document.createElement('script'); s.textContent = 'window.injected = true'; \
             document.body.appendChild(s); return window.injected === true;",
        )
        .await;
    assert_eq!(ran, Value::Bool(false), "the CSP blocks inline script");
    assert_own_origins(&app, &browser.loaded().await);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_signs_in_through_the_browser_by_loopback_and_by_device_code() {
    use crate::cli::{Terminal, device_login, read_until, stderr};
    let app = TestApp::spawn_with(Options::default().set("DEVICE_POLL_INTERVAL", "1")).await;
    let browser = Browser::start().await;

    // Loopback: the CLI prints the address, the person opens it and signs
    // in, and the browser lands on the CLI's own page.
    let terminal = Terminal::new(&app);
    let mut child = terminal
        .command(&["login", "--server", &app.url(""), "--no-browser"])
        .spawn()
        .unwrap();
    let (url, _) = read_until(&mut child, |line| {
        line.find("http")
            .filter(|_| line.contains("/cli/login?"))
            .map(|at| line[at..].trim().to_owned())
    })
    .await;
    browser.goto(&url).await;
    browser.wait_for("#signin_email").await;
    browser.fill("#signin_email", "alice@example.com").await;
    browser.fill("#signin_hd", "example.com").await;
    browser.click("button.approve").await;
    browser.wait_for("h1").await;
    assert_eq!(browser.text("h1").await, "Signed in");
    assert!(browser.url().await.starts_with("http://127.0.0.1:"));
    browser.shot("cli-signed-in", false).await;
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let key = terminal.key(&[]).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    // Device: the code typed on the device page of a browser signed in
    // already (this one), approved.
    let other = Terminal::new(&app);
    let (code, child, _) = device_login(&app, &other).await;
    browser.goto(&app.url("/device")).await;
    browser.wait_for("#user_code").await;
    assert_eq!(browser.text("#who").await, "alice@example.com");
    browser.fill("#user_code", &code.to_lowercase()).await;
    browser.shot("device", true).await;
    browser.click("#approve").await;
    browser.wait_for("#done").await;
    assert_eq!(browser.text("#done").await, "Terminal signed in");
    browser.shot("device-done", false).await;
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(other.run(&["keys"]).await.status.code(), Some(0));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_keys_of_every_project_and_of_ci_jobs() {
    use crate::jobs::{AUDIENCE, claims_of, job};
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let repository_id = claims_of(
        &sandbox
            .github
            .mint_github_token(job("octo-org/evals", "refs/heads/main")),
    )["repository_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let policy = format!(
        r#"
[[issuer]]
name = "google"
url = "https://accounts.google.com"
groups_claim = "groups"

[[issuer]]
name = "github"
url = "{github}"
audience = "{AUDIENCE}"

[[rule]]
name = "ci-evals"
issuer = "github"
claims = {{ repository_id = "{repository_id}", ref = "refs/heads/*" }}
project_name = "evals"
ttl = "1h"
scopes = ["api.model.request"]

[[rule]]
name = "data-team"
issuer = "google"
groups = ["data@example.com"]
project_name = "data"
ttl = "8h"

[[rule]]
name = "staff"
issuer = "google"
domains = ["example.com"]
ttl = "1h"
admin = true
"#,
        github = sandbox.github_issuer_url()
    );
    let path = std::env::temp_dir().join(format!("oks-admin-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default()
            .set("POLICY_FILE", path.to_str().unwrap())
            .set("ALLOWED_USERS", "")
            .set("ALLOWED_DOMAINS", ""),
    )
    .await;
    let data = browser();
    app.sign_in_with(
        &data,
        Identity::workspace("dana@example.com").with_groups(&["data@example.com"]),
    )
    .await;
    let token = app
        .sandbox
        .github
        .mint_github_token(job("octo-org/evals", "refs/heads/main"));
    let issued = plain_client()
        .post(app.url("/api/v1/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), StatusCode::CREATED);
    let job_key = issued.json::<serde_json::Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = format!("github:{repository_id}");

    let browser = Browser::start().await;
    browser
        .sign_in(&app, "carol@example.com", "example.com")
        .await;
    browser.wait_for("#key").await;
    browser.goto(&app.url("/admin")).await;
    browser.wait_for("section.owner").await;
    let source = browser.client().source().await.unwrap();
    for project in ["data", "evals"] {
        let id = app.sandbox.openai.find_project_by_name(project).unwrap().id;
        assert!(source.contains(&id), "{project} ({id}) on the page");
    }
    assert!(source.contains(&format!("data-owner=\"{owner}\"")));
    assert!(source.contains("<th>Project</th>"));
    browser.shot("admin-projects", false).await;
    browser
        .click(&format!(
            "section[data-owner='{owner}'] button.revoke-owner"
        ))
        .await;
    browser.wait_for("h1").await;
    let source = browser.client().source().await.unwrap();
    assert!(!source.contains(&format!("data-owner=\"{owner}\"")));
    assert!(source.contains("data-owner=\"dana@example.com\""));
    assert!(!app.sandbox.openai.key_is_live(&job_key));
    browser.close().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_issuers_a_person_picks_one_and_signs_in_through_it() {
    let sandbox = sandbox::Sandbox::start().await.unwrap();
    let (okta, origin) = crate::policy::second_provider(&sandbox).await;
    let secret = std::env::temp_dir().join(format!("oks-okta-{:x}", rand::random::<u64>()));
    std::fs::write(&secret, okta.client_secret()).unwrap();
    let policy = format!(
        "[[issuer]]\nname = \"okta\"\nurl = \"{origin}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\nmanaged = true\n\n\
         [[rule]]\nname = \"okta-staff\"\nissuer = \"okta\"\ndomains = [\"corp.test\"]\nttl = \"3h\"\n\n\
         [[rule]]\nname = \"google-staff\"\nissuer = \"google\"\ndomains = [\"example.com\"]\nttl = \"1h\"\n",
        okta.client_id(),
        secret.display()
    );
    let path = std::env::temp_dir().join(format!("oks-two-{:x}.toml", rand::random::<u64>()));
    std::fs::write(&path, policy).unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default()
            .set("POLICY_FILE", path.to_str().unwrap())
            .set("ALLOWED_USERS", "")
            .set("ALLOWED_DOMAINS", ""),
    )
    .await;
    okta.allow_redirect_uri(&app.url("/oauth2/callback"));

    let browser = Browser::start().await;
    browser.goto(&app.url("/")).await;
    browser.wait_for("#issuers").await;
    assert_eq!(browser.text("#sign-in-google").await, "Sign in with Google");
    assert_eq!(browser.text("#sign-in-okta").await, "Sign in with Okta");
    browser.shot("choose", false).await;
    browser.click("#sign-in-okta").await;
    browser.wait_for("#signin_email").await;
    assert!(browser.url().await.starts_with(&origin), "at Okta's form");
    browser.fill("#signin_email", "olga@corp.test").await;
    browser.fill("#signin_hd", "").await;
    browser.click("button.approve").await;
    browser.wait_for("#key").await;
    let source = browser.client().source().await.unwrap();
    assert!(source.contains("olga@corp.test"));
    let account = app
        .accounts()
        .into_iter()
        .find(|a| a.name.ends_with(".olga@corp.test"))
        .expect("olga's account");
    assert_eq!(
        account.keys[0].expires_at.unwrap() - account.created_at,
        3 * 3600
    );
    browser.close().await;
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_a_spent_budget_show_on_my_keys_and_the_admin_page() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("ADMIN_USERS", "carol@example.com")
            .set("TOKENS_PER_DAY", "100000")
            .set("MODEL_PRICES", "gpt-4o=2.50/10.00,*=0.15/0.60"),
    )
    .await;
    let browser = Browser::start().await;
    browser
        .sign_in(&app, "carol@example.com", "example.com")
        .await;
    browser.wait_for("#key").await;
    let key = browser
        .client()
        .find(fantoccini::Locator::Css("#key"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(app.sandbox.openai.add_usage(&key, "gpt-4o", 84_000, 21_345));
    let reads = app.openai_calls("GET /v1/organization/usage/completions");
    app.advance(std::time::Duration::from_secs(61));
    eventually("usage is read", || {
        app.openai_calls("GET /v1/organization/usage/completions") > reads
    })
    .await;
    let mut shown = false;
    for _ in 0..100 {
        browser.goto(&app.url("/")).await;
        browser.wait_for("h1").await;
        let source = browser.client().source().await.unwrap();
        if source.contains("id=\"over-budget\"") {
            assert!(source.contains("105,345 tokens (1 request)"), "{source}");
            shown = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(shown, "the spent budget shows on my keys");
    browser.shot("my-keys-usage", false).await;
    browser.goto(&app.url("/admin")).await;
    browser.wait_for("#usage").await;
    let source = browser.client().source().await.unwrap();
    assert!(source.contains("class=\"over\""), "{source}");
    browser.shot("admin-usage", false).await;
    browser.click("button.lift").await;
    browser.wait_for("h1").await;
    let source = browser.client().source().await.unwrap();
    assert!(source.contains("lifted until"), "{source}");
    browser.close().await;
}
