//! `TestApp`: a sandbox plus a key server wired to it on loopback, with a
//! cookie-keeping client that does not follow redirects, and helpers that
//! walk the sign-in flow hop by hop.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openai_key_server::Application;
use openai_key_server::clock::Clock;
use openai_key_server::config::Config;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, LOCATION};
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Every log line the servers of this test binary wrote, at trace level.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(Arc::clone(&buffer));
        openai_key_server::telemetry::init_with(
            openai_key_server::config::LogFormat::Json,
            tracing_subscriber::EnvFilter::new(
                "trace,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=debug",
            ),
            move || writer.clone(),
        );
        buffer
    })
    .clone()
}

/// All captured log text so far.
pub(crate) fn logs() -> String {
    String::from_utf8_lossy(
        &capture_logs()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

/// Settings a test may change before the server starts.
pub(crate) struct Options {
    pub(crate) env: HashMap<String, String>,
    pub(crate) openai: sandbox::openai::Config,
    /// Run the server on a runtime of its own, ended when it stops, as a
    /// process's exit ends every task left (see [`TestApp::stop`]).
    pub(crate) own_runtime: bool,
}

impl Default for Options {
    fn default() -> Self {
        let env = [
            ("ALLOWED_USERS", "bob@gmail.com"),
            ("ALLOWED_DOMAINS", "example.com"),
            ("EXPIRATION", "3600"),
            ("CLEANUP_INTERVAL", "86400"),
            ("TIMEOUT", "2"),
            ("LOG_FORMAT", "json"),
            ("SESSION_SECRET", SESSION_SECRET),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            env,
            openai: sandbox::openai::Config::default(),
            own_runtime: false,
        }
    }
}

impl Options {
    pub(crate) fn set(mut self, var: &str, value: &str) -> Self {
        self.env.insert(var.to_owned(), value.to_owned());
        self
    }
}

pub(crate) struct TestApp {
    pub(crate) sandbox: Arc<Sandbox>,
    /// The server's clock (the sandbox's, seen through the server).
    pub(crate) clock: Clock,
    /// The settings it was started with, for replicas.
    env: HashMap<String, String>,
    pub(crate) addr: SocketAddr,
    pub(crate) client: reqwest::Client,
    pub(crate) admin_key: String,
    pub(crate) client_secret: String,
    project_id: Option<String>,
    /// The server's cleanup, to run full sweeps as an operator would and
    /// read their reports (`/revoke` tells anonymous callers nothing).
    pub(crate) cleanup: openai_key_server::cleanup::Cleanup,
    /// What SIGHUP calls in `serve` (a test must not signal its own
    /// process, which runs many servers).
    pub(crate) reloader: Arc<openai_key_server::secrets::Reloader>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// What a completed sign-in left on the page.
pub(crate) struct KeyPage {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    pub(crate) headers: reqwest::header::HeaderMap,
}

impl KeyPage {
    /// Reads a whole answer.
    pub(crate) async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Self {
            status,
            body,
            headers,
        }
    }

    /// The key in the read-only field.
    pub(crate) fn key(&self) -> String {
        let start = self
            .body
            .find("id=\"key\"")
            .unwrap_or_else(|| panic!("no key field on the page:\n{}", self.body));
        let rest = &self.body[start..];
        let value = rest.find("value=\"").expect("the key field has a value") + 7;
        let end = rest[value..].find('"').expect("the value is quoted");
        rest[value..value + end].to_owned()
    }
}

impl TestApp {
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub(crate) async fn spawn_with(mut options: Options) -> Self {
        let openai = std::mem::take(&mut options.openai);
        let sandbox = Sandbox::builder()
            .openai(openai)
            .start()
            .await
            .expect("the sandbox starts");
        Self::spawn_on(sandbox, options).await
    }

    /// A server on a sandbox the test prepared first.
    pub(crate) async fn spawn_on(sandbox: Sandbox, options: Options) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let redirect_uri = format!("http://{addr}/oauth2/callback");
        sandbox.oidc.allow_redirect_uri(&redirect_uri);
        let mut env: HashMap<String, String> = sandbox
            .env(&redirect_uri)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.insert("PORT".to_owned(), addr.port().to_string());
        env.extend(options.env);
        Self::start(Arc::new(sandbox), listener, env, options.own_runtime).await
    }

    /// Another replica: same sandbox, same settings (public redirect URI and
    /// session secret included), its own listener and process state.
    pub(crate) async fn replica(&self) -> Self {
        self.replica_with(&[]).await
    }

    /// Another replica whose settings differ in `changes` (an operator
    /// changing the configuration and rolling it out).
    pub(crate) async fn replica_with(&self, changes: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut env = self.env.clone();
        for (var, value) in changes {
            env.insert((*var).to_owned(), (*value).to_owned());
        }
        Self::start(Arc::clone(&self.sandbox), listener, env, false).await
    }

    /// Stops this server and starts it again at the same address with
    /// `changes` to its settings (an empty value unsets one): an operator
    /// restarting it with a new configuration.
    pub(crate) async fn restart_with(self, changes: &[(&str, &str)]) -> Self {
        let (sandbox, mut env, addr) = (Arc::clone(&self.sandbox), self.env.clone(), self.addr);
        self.stop().await.unwrap();
        for (var, value) in changes {
            env.insert((*var).to_owned(), (*value).to_owned());
        }
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::start(sandbox, listener, env, false).await
    }

    async fn start(
        sandbox: Arc<Sandbox>,
        listener: TcpListener,
        env: HashMap<String, String>,
        own_runtime: bool,
    ) -> Self {
        capture_logs();
        let addr = listener.local_addr().unwrap();
        let project_id = env.get("OPENAI_PROJECT_ID").cloned();
        let config = Config::from_lookup(|var| env.get(var).cloned()).expect("valid test config");
        let virtual_clock = sandbox.clock.clone();
        let clock = Clock::from_fn(move || virtual_clock.now());
        let (tx, rx) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = rx.await;
        };
        let ((cleanup, reloader), server) = if own_runtime {
            let listener = listener.into_std().unwrap();
            let server_clock = clock.clone();
            let (built_tx, built_rx) = oneshot::channel();
            let server = tokio::task::spawn_blocking(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let result = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let app = Application::build_with(config, listener, server_clock)?;
                    let _ =
                        built_tx.send((app.state().cleanup.clone(), app.state().reloader.clone()));
                    app.run(stopped).await
                });
                // Whatever is left ends here, as at a process's exit.
                drop(runtime);
                result
            });
            (built_rx.await.expect("the server builds"), server)
        } else {
            let app = Application::build_with(config, listener, clock.clone())
                .expect("the server builds");
            (
                (app.state().cleanup.clone(), app.state().reloader.clone()),
                tokio::spawn(app.run(stopped)),
            )
        };

        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let admin_key = sandbox.openai.admin_key();
        let client_secret = sandbox.oidc.client_secret();
        Self {
            sandbox,
            clock,
            env,
            addr,
            client,
            admin_key,
            client_secret,
            project_id,
            cleanup,
            reloader,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET /`: must redirect to the provider. Returns the authorization URL.
    pub(crate) async fn start_sign_in(&self) -> String {
        self.start_sign_in_with(&self.client).await
    }

    /// Follows the provider's authorization URL (an identity must be queued
    /// or auto-approved) and returns the callback URL it redirects to.
    pub(crate) async fn authorize(&self, authorization_url: &str) -> String {
        self.authorize_with(&self.client, authorization_url).await
    }

    /// Follows any URL and returns the page.
    pub(crate) async fn open(&self, url: &str) -> KeyPage {
        KeyPage::read(self.client.get(url).send().await.unwrap()).await
    }

    /// The whole flow as `identity`: `/` → provider → callback → page.
    pub(crate) async fn sign_in_as(&self, identity: Identity) -> KeyPage {
        self.sign_in_with(&self.client, identity).await
    }

    /// The whole flow as `identity` in `browser`.
    pub(crate) async fn sign_in_with(
        &self,
        browser: &reqwest::Client,
        identity: Identity,
    ) -> KeyPage {
        self.sandbox.oidc.queue_identity(identity);
        let authorization = self.start_sign_in_with(browser).await;
        let callback = self.authorize_with(browser, &authorization).await;
        KeyPage::read(browser.get(&callback).send().await.unwrap()).await
    }

    /// `GET /` in `browser`: must redirect to the provider. Returns the
    /// authorization URL. A browser signed in already gets its keys at
    /// `/`; it signs in again (as another account) through
    /// `/?account=choose`.
    pub(crate) async fn start_sign_in_with(&self, browser: &reqwest::Client) -> String {
        let mut response = browser.get(self.url("/")).send().await.unwrap();
        if response.status() == StatusCode::OK {
            response = browser
                .get(self.url("/?account=choose"))
                .send()
                .await
                .unwrap();
        }
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "GET / should redirect"
        );
        location(&response)
    }

    /// Follows the authorization URL in `browser`; the callback URL.
    pub(crate) async fn authorize_with(
        &self,
        browser: &reqwest::Client,
        authorization_url: &str,
    ) -> String {
        let response = browser.get(authorization_url).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the provider should redirect back: {}",
            response.text().await.unwrap_or_default()
        );
        location(&response)
    }

    /// A callback with this browser's login state but a code the provider
    /// never issued: what a script replaying junk sends. The page.
    pub(crate) async fn junk_callback(&self, browser: &reqwest::Client) -> KeyPage {
        let authorization = self.start_sign_in_with(browser).await;
        let state = query_param(&authorization, "state");
        let url = format!(
            "{}?code=junk-code&state={state}",
            self.url("/oauth2/callback")
        );
        KeyPage::read(browser.get(url).send().await.unwrap()).await
    }

    /// The project the server uses, once it exists.
    pub(crate) fn project_id(&self) -> Option<String> {
        self.project_id.clone().or_else(|| {
            self.sandbox
                .openai
                .find_project_by_name("personal")
                .map(|p| p.id)
        })
    }

    /// Moves the virtual clock forward and tells the server it jumped.
    pub(crate) fn advance(&self, by: Duration) {
        self.sandbox.clock.advance(by);
        self.clock.jumped();
    }

    /// Shuts this server down as SIGTERM does, and waits until it has
    /// stopped.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }

    /// Stops this server at once, as if its process died.
    pub(crate) fn kill(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Service accounts in the server's project.
    pub(crate) fn accounts(&self) -> Vec<sandbox::openai::ServiceAccountView> {
        self.project_id()
            .map(|id| self.sandbox.openai.service_accounts(&id))
            .unwrap_or_default()
    }

    /// Calls to the fake OpenAI by `"METHOD /route"`.
    pub(crate) fn openai_calls(&self, key: &str) -> u64 {
        self.sandbox.openai.journal().count(key)
    }

    /// Waits until the startup sweep has run (it creates the project).
    pub(crate) async fn wait_for_startup_sweep(&self) {
        for _ in 0..200 {
            if self.openai_calls(SA_LIST) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the startup sweep never listed service accounts");
    }

    /// Asserts that none of the secrets of this app, nor `more`, appear in
    /// any captured log line.
    pub(crate) fn assert_no_secrets_logged(&self, more: &[&str]) {
        let logs = logs();
        for secret in [
            self.admin_key.as_str(),
            self.client_secret.as_str(),
            SESSION_SECRET,
        ]
        .into_iter()
        .chain(more.iter().copied())
        {
            assert!(!secret.is_empty());
            assert!(
                !logs.contains(secret),
                "a secret ({}…) appears in the logs",
                &secret[..6.min(secret.len())]
            );
        }
        // Whatever test wrote them: no key, client secret, ID token or
        // access token of any kind in any line logged so far.
        for pattern in ["sk-svcacct-", "sk-admin-", "GOCSPX-", "eyJhbGci", "ya29."] {
            let hit = logs.lines().find(|l| l.contains(pattern));
            assert!(hit.is_none(), "{pattern} appears in the log: {hit:?}");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Base64 of 48 bytes; scanned for in the logs like every other secret.
pub(crate) const SESSION_SECRET: &str =
    "c2Vzc2lvbi1zZWNyZXQtZm9yLXRlc3RzLW9ubHktNDgtYnl0ZXMtbG9uZy4uLi4u";

pub(crate) const SA_LIST: &str = "GET /v1/organization/projects/{project_id}/service_accounts";
pub(crate) const SA_CREATE: &str = "POST /v1/organization/projects/{project_id}/service_accounts";
pub(crate) const SA_DELETE: &str =
    "DELETE /v1/organization/projects/{project_id}/service_accounts/{service_account_id}";
pub(crate) const PROJECT_LIST: &str = "GET /v1/organization/projects";
pub(crate) const PROJECT_CREATE: &str = "POST /v1/organization/projects";

pub(crate) fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location header on {}", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn assert_no_store(headers: &reqwest::header::HeaderMap) {
    let value = headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(value.contains("no-store"), "Cache-Control is {value:?}");
}

/// Calls the sandbox's `/v1/models` with `key`, returning the status.
/// A name in the server's scheme, for seeding accounts "it created".
pub(crate) fn own(expires_at: i64, owner: &str) -> String {
    format!("oks.{expires_at}.abc123.{owner}")
}

/// A full sweep now (or the one running), which must succeed; its report
/// as JSON.
pub(crate) async fn sweep(app: &TestApp) -> serde_json::Value {
    let report = app.cleanup.run_now().await.expect("the sweep succeeds");
    serde_json::to_value(report).unwrap()
}

/// `POST /revoke`, which must succeed and tell nothing but that a sweep
/// was asked for.
pub(crate) async fn revoke(app: &TestApp) {
    let response = app.client.post(app.url("/revoke")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"sweep": "requested"}));
}

/// Polls until `done` holds (the server acts in the background); fails after
/// 5 s of real time.
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// The value of the query parameter `name` of `url`.
pub(crate) fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .1
        .into_owned()
}

/// Another browser: its own cookies, redirects off.
pub(crate) fn browser() -> reqwest::Client {
    browser_builder().build().unwrap()
}

/// A browser on another loopback address (127.0.0.2, …): another client
/// address as the server sees it.
pub(crate) fn browser_from(local: std::net::IpAddr) -> reqwest::Client {
    browser_builder().local_address(local).build().unwrap()
}

/// A browser whose every request carries `headers` (as a proxy in front
/// would add them).
pub(crate) fn browser_with(headers: &[(&str, &str)]) -> reqwest::Client {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_str(value).unwrap(),
        );
    }
    browser_builder().default_headers(map).build().unwrap()
}

fn browser_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
}

/// A client with no cookies that does not follow redirects: another browser.
pub(crate) fn plain_client() -> reqwest::Client {
    // reqwest is built without a default TLS provider (see lib.rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) async fn models_status(app: &TestApp, key: &str) -> StatusCode {
    plain_client()
        .get(format!("{}/models", app.sandbox.openai_base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

/// The value of the hidden field `name` of the first form that has one.
pub(crate) fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} on the page:\n{body}"))
        + marker.len();
    let end = body[start..].find('"').expect("the value is quoted");
    body[start..start + end].to_owned()
}

/// `POST path` as a form of this browser with `fields`; the answer.
pub(crate) async fn post_form(
    app: &TestApp,
    browser: &reqwest::Client,
    path: &str,
    fields: &[(&str, &str)],
) -> KeyPage {
    KeyPage::read(
        browser
            .post(app.url(path))
            .form(fields)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// My keys page of `browser`.
pub(crate) async fn my_keys(app: &TestApp, browser: &reqwest::Client) -> KeyPage {
    KeyPage::read(browser.get(app.url("/")).send().await.unwrap()).await
}

/// The service accounts listed on a page of keys, in order.
pub(crate) fn listed_accounts(body: &str) -> Vec<String> {
    body.match_indices("data-account=\"")
        .map(|(at, m)| {
            let start = at + m.len();
            let end = body[start..].find('"').unwrap();
            body[start..start + end].to_owned()
        })
        .collect()
}

/// `POST /organization/admin_api_keys` as the sandbox's admin: a second
/// admin key (its id and value).
pub(crate) async fn new_admin_key(sandbox: &sandbox::Sandbox, with: &str) -> (String, String) {
    let response = plain_client()
        .post(format!(
            "{}/organization/admin_api_keys",
            sandbox.openai_base_url()
        ))
        .bearer_auth(with)
        .json(&serde_json::json!({"name": "rotated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["value"].as_str().unwrap().to_owned(),
    )
}

/// The id of the admin key whose value is `value` (the one the sandbox
/// started with is the only one before a rotation).
pub(crate) async fn admin_key_ids(sandbox: &sandbox::Sandbox, with: &str) -> Vec<String> {
    let response = plain_client()
        .get(format!(
            "{}/organization/admin_api_keys",
            sandbox.openai_base_url()
        ))
        .bearer_auth(with)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn delete_admin_key(sandbox: &sandbox::Sandbox, id: &str, with: &str) {
    let response = plain_client()
        .delete(format!(
            "{}/organization/admin_api_keys/{id}",
            sandbox.openai_base_url()
        ))
        .bearer_auth(with)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
