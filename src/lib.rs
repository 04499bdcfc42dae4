//! openai-key-server: hands out short-lived OpenAI API keys to people who
//! sign in, by creating an OpenAI project service account per key and
//! deleting it when the key expires.
//!
//! [`Application::build`] binds the listener and wires the parts together;
//! [`Application::run`] serves until shutdown. Tests, the demo and the
//! benchmark use the same two calls.

pub mod access;
pub mod api;
pub mod audit;
pub mod cleanup;
pub mod cli;
pub mod cli_auth;
pub mod clock;
pub mod config;
pub mod forwarded;
pub mod http;
pub mod identity;
pub mod issuance;
pub mod keys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod oidc;
pub mod openai;
pub mod projects;
pub mod replay;
pub mod seal;
pub mod secrets;
pub mod telemetry;
pub mod timing;
pub mod upstream;
pub mod usage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum_extra::extract::cookie::Key;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cleanup::Cleanup;
use crate::clock::Clock;
use crate::config::Config;
use crate::http::AppState;
use crate::keys::Keys;
use crate::oidc::Provider;
use crate::openai::AdminClient;

/// Shutdown takes at most this many `TIMEOUT`s from the signal: one for
/// requests in flight, the rest for a create that hangs until its timeout
/// and the look-up and delete of its account.
pub const SHUTDOWN_TIMEOUTS: u32 = 3;

/// Idle connections kept per upstream host.
const IDLE_CONNECTIONS_PER_HOST: usize = 8;

/// Installs the TLS crypto provider once (ring, so that no C toolchain for
/// aws-lc is needed) and builds the one HTTP client for outgoing calls:
/// `TIMEOUT` on every call, redirects off.
pub fn http_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    // Fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        // A burst of sign-ins opens as many connections to the token
        // endpoint and the Admin API as there are sign-ins in flight; keep
        // a few for the next burst, not all of them for 90 s (each holds
        // buffers, and TLS state in production).
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("openai-key-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// The parts that talk to OpenAI, shared by `serve` and `cleanup`.
pub fn keys_for(config: &Config, http: reqwest::Client) -> Keys {
    keys_in(
        config,
        http,
        &config.management_key.clone().into(),
        config.project.clone(),
        &metrics::Metrics::default(),
        &audit::Audit::log_only(),
    )
}

/// The keys of one project: the server's own (where the Go original's
/// accounts are, so the only one `CLEANUP_LEGACY_ACCOUNTS` applies to), or
/// one a rule of the policy names.
fn keys_in(
    config: &Config,
    http: reqwest::Client,
    admin_key: &secrets::Rotating,
    project: config::ProjectSelector,
    metrics: &metrics::Metrics,
    audit: &audit::Audit,
) -> Keys {
    let admin = AdminClient::new(http, &config.openai_base_url, admin_key.clone())
        .with_metrics(metrics.clone());
    let legacy_cleanup = config.cleanup_legacy_accounts && project == config.project;
    Keys::new(
        admin,
        keys::Settings {
            project,
            ttl: config.expiration,
            concurrency: config.cleanup_concurrency,
            // Grow while OpenAI keeps up: 10,000 deletes at 100 ms each take
            // 125 s at 8 at once, 16 s at 64.
            max_concurrency: config.cleanup_concurrency.max(64),
            legacy_cleanup,
            create_patience: config.timeout,
            audit: audit.clone(),
        },
    )
}

/// The keys of every project the configuration names: the server's own
/// first, then each other one a rule of the policy names, once. All read
/// `admin_key`, so that a rotation reaches every one.
pub fn keys_of_every_project(
    config: &Config,
    http: &reqwest::Client,
    admin_key: &secrets::Rotating,
    metrics: &metrics::Metrics,
    audit: &audit::Audit,
) -> Vec<Keys> {
    config
        .project_selectors()
        .into_iter()
        .map(|selector| keys_in(config, http.clone(), admin_key, selector, metrics, audit))
        .collect()
}

/// A built, bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: Config,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `BIND_ADDRESS:PORT` and wires everything, on the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(config.bind_address, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} (BIND_ADDRESS / PORT)"))?;
        Self::build_with(config, listener, Clock::system())
    }

    /// Wires everything on an already bound listener and a given clock (tests
    /// and the demo pass the sandbox's virtual clock).
    pub fn build_with(config: Config, listener: TcpListener, clock: Clock) -> anyhow::Result<Self> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let http = http_client(&config)?;
        let metrics = metrics::Metrics::new();
        let audit = match &config.audit_log_file {
            Some(path) => audit::Audit::to_file(path).context("AUDIT_LOG_FILE")?,
            None => audit::Audit::log_only(),
        };
        audit.record(
            audit::Event {
                actor: Some("server".to_owned()),
                reason: Some(format!(
                    "version {}, {}, {} rule(s), {} issuer(s) of its own",
                    env!("CARGO_PKG_VERSION"),
                    config.policy_path.as_deref().map_or_else(
                        || "the allow-list variables".to_owned(),
                        |p| format!("policy file {p}")
                    ),
                    config.rules().len(),
                    config.issuers().len(),
                )),
                ..audit::Event::new("config.loaded")
            },
            clock.now(),
        );
        let admin_key = secrets::Rotating::from(config.management_key.clone());
        let mut client_secrets = vec![(
            access::ENV_ISSUER.to_owned(),
            secrets::Rotating::from(config.client_secret.clone()),
        )];
        client_secrets.extend(config.browser_issuers.iter().map(|issuer| {
            (
                issuer.name.clone(),
                secrets::Rotating::from(issuer.client_secret.clone()),
            )
        }));
        let provider = Provider::new(
            http.clone(),
            oidc::Settings {
                issuer: config.oidc_issuer.clone(),
                accepted_issuers: config.accepted_issuers.clone(),
                client_id: config.client_id.clone(),
                client_secret: client_secrets[0].1.clone(),
                redirect_uri: config.redirect_uri_text.clone(),
                name: access::ENV_ISSUER.to_owned(),
                groups_claim: config.env_groups_claim(),
                domain_claim: config.env_domain_claim(),
                metrics: metrics.clone(),
            },
        );
        let providers = oidc::Providers::new(
            provider.clone(),
            config
                .browser_issuers
                .iter()
                .zip(&client_secrets[1..])
                .map(|(issuer, (_, client_secret))| {
                    Provider::new(
                        http.clone(),
                        oidc::Settings {
                            issuer: issuer.url.clone(),
                            accepted_issuers: vec![
                                issuer.url.as_str().trim_end_matches('/').to_owned(),
                            ],
                            client_id: issuer.client_id.clone(),
                            client_secret: client_secret.clone(),
                            redirect_uri: issuer.redirect_uri.clone(),
                            name: issuer.name.clone(),
                            groups_claim: issuer.groups_claim.clone(),
                            domain_claim: issuer.domain_claim.clone(),
                            metrics: metrics.clone(),
                        },
                    )
                })
                .collect(),
        );
        let activity = memory::Activity::default();
        // Every replica lists every project at least twice per the shortest
        // lifetime a rule gives, so that it deletes on time keys another
        // replica issued.
        let shortest = config
            .rules()
            .iter()
            .map(|rule| rule.lifetime)
            .min()
            .unwrap_or(config.expiration);
        let full_period = cleanup::full_sweep_period(config.cleanup_interval, shortest);
        let mut every = keys_of_every_project(&config, &http, &admin_key, &metrics, &audit)
            .into_iter()
            .map(|keys| {
                let cleanup = Cleanup::new(keys.clone(), clock.clone(), full_period)
                    .with_activity(activity.clone())
                    .with_metrics(metrics.clone());
                projects::Project {
                    selector: keys.project().clone(),
                    keys,
                    cleanup,
                }
            });
        let own = every
            .next()
            .expect("the server's own project is always there");
        let (keys, cleanup) = (own.keys.clone(), own.cleanup.clone());
        let projects = projects::Projects::new(own, every.collect());
        let cookie_key = match &config.session_secret {
            Some(secret) => Key::derive_from(secret.expose()),
            None => {
                tracing::warn!(
                    "SESSION_SECRET is not set: using a random key, so sign-ins in progress do not survive a restart and cannot span replicas"
                );
                Key::derive_from(config::SessionSecret::random().expose())
            }
        };
        let session_keys = secrets::SessionKeys::new(
            cookie_key,
            config
                .session_secret_previous
                .as_ref()
                .map(|secret| Key::derive_from(secret.expose())),
        );
        let reloader = Arc::new(secrets::Reloader::new(secrets::Sources {
            config: &config,
            admin_key,
            client_secrets,
            session_keys: session_keys.clone(),
            http: http.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
        }));
        let issuance = issuance::Issuance::new(
            config.policy(),
            projects.clone(),
            Arc::new(limits::Limits::new(&config)),
            issuance::Pages {
                listing_max_age: config.listing_max_age,
                listing_wait: config.timeout,
                issue_on_sign_in: config.issue_on_sign_in,
                forms_kept: config.session_ttl,
            },
            cli_auth::CliAuth::new(
                seal::Sealer::new(session_keys.clone()),
                config.cli_session_ttl,
                config.device_poll_interval,
            ),
            oidc::WorkloadIssuers::new(&http, config.issuers(), &metrics),
            metrics.clone(),
            audit,
            usage::Usage::new(config.usage_poll_interval, config.model_prices.clone()),
        );
        let state = AppState::new(http::Shared {
            issuance,
            provider,
            providers,
            keys,
            cleanup,
            projects,
            metrics,
            metrics_on_main: config.metrics_address.is_none(),
            clock,
            session_keys,
            reloader,
            secure_cookies: config.is_https(),
            server_timing: config.server_timing,
            activity,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            public_origin: config.redirect_uri.origin().ascii_serialization().into(),
            session_ttl: config.session_ttl,
            cli_session_ttl: config.cli_session_ttl,
            revoke_endpoint: config.revoke_endpoint,
        });
        Ok(Self {
            listener,
            state,
            config,
        })
    }

    /// Where it listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state (tests use it to reach the cleanup).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// requests in flight finish for at most `TIMEOUT`, lets key creations
    /// in flight finish (a create that failed ambiguously is looked up and
    /// deleted) until [`SHUTDOWN_TIMEOUTS`] × `TIMEOUT` after the signal, and
    /// stops the cleanup task.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Aborted if this future is dropped, so that a server whose task is
        // cancelled leaves no cleanup running behind it.
        let mut cleanups: Vec<AbortOnDrop> = self
            .state
            .projects
            .all()
            .iter()
            .map(|project| {
                AbortOnDrop(tokio::spawn(
                    project.cleanup.clone().run_until(stop_rx.clone()),
                ))
            })
            .collect();
        let _trim = AbortOnDrop(tokio::spawn(memory::trim_after_bursts(
            self.state.activity.clone(),
        )));
        let _watch = AbortOnDrop(tokio::spawn(
            self.state.reloader.clone().watch_admin_key(stop_rx.clone()),
        ));
        let budgets = self.config.rules().iter().any(|rule| rule.budget.is_set());
        let _usage = self.state.issuance.usage().interval().map(|interval| {
            AbortOnDrop(tokio::spawn(poll_usage_until(
                self.state.issuance.clone(),
                self.state.clock.clone(),
                interval,
                budgets,
                stop_rx.clone(),
            )))
        });
        let provider = self.state.provider.clone();
        tokio::spawn(async move {
            // Warm the discovery cache so /readyz and the first sign-in are quick.
            if let Err(error) = provider.metadata().await {
                tracing::warn!(%error, "the sign-in provider's discovery document could not be fetched yet");
            }
        });

        let addr = self.local_addr();
        tracing::info!(%addr, redirect_uri = %self.config.redirect_uri, "listening");
        let _metrics = match self.config.metrics_address {
            Some(metrics_addr) => {
                let listener = TcpListener::bind(metrics_addr)
                    .await
                    .with_context(|| format!("binding {metrics_addr} (METRICS_ADDRESS)"))?;
                tracing::info!(addr = %metrics_addr, "serving /metrics");
                let router = http::metrics_router(self.state.clone());
                Some(AbortOnDrop(tokio::spawn(async move {
                    let _ = axum::serve(listener, router).await;
                })))
            }
            None => None,
        };
        let grace = self.config.timeout;
        let every_keys: Vec<Keys> = self
            .state
            .projects
            .all()
            .iter()
            .map(|project| project.keys.clone())
            .collect();
        let connections = self.config.max_connections;
        tracing::info!(
            connections.max = connections.max,
            connections.fd_limit = connections.derived_from_fd_limit,
            "accepting connections"
        );
        let activity = self.state.activity.clone();
        let router = http::router(self.state);
        let signal_tx = stop_tx.clone();
        let serve = http::serve::serve(
            self.listener,
            router,
            connections.max,
            activity,
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing requests in flight");
                let _ = signal_tx.send(true);
            },
        );
        tokio::pin!(serve);
        let mut stopped = stop_rx.clone();
        let served = tokio::select! {
            () = &mut serve => true,
            _ = stopped.wait_for(|stop| *stop) => false,
        };
        let signalled = tokio::time::Instant::now();
        if !served && tokio::time::timeout(grace, &mut serve).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "requests still in flight after TIMEOUT; stopping anyway"
            );
        }
        // From here on no create starts; those in progress (with the
        // clean-up of an ambiguous one) get until the deadline.
        for keys in &every_keys {
            keys.close();
        }
        let deadline = signalled + grace.saturating_mul(SHUTDOWN_TIMEOUTS);
        let in_flight = || every_keys.iter().map(Keys::issues_in_flight).sum::<usize>();
        if in_flight() > 0 {
            tracing::info!(
                issues.in_flight = in_flight(),
                "waiting for key creations in flight to finish or be cleaned up"
            );
        }
        let waits: Vec<_> = every_keys
            .iter()
            .map(|keys| tokio::spawn(keys.issues_settled()))
            .collect();
        let settled = async {
            for wait in waits {
                let _ = wait.await;
            }
        };
        if tokio::time::timeout_at(deadline, settled).await.is_err() {
            tracing::error!(
                issues.in_flight = in_flight(),
                "stopping with key creations unfinished; an account one of them left in OpenAI is deleted at its expiry by whichever replica runs then"
            );
        }
        let unresolved: Vec<String> = every_keys
            .iter()
            .flat_map(Keys::unresolved_failed_creates)
            .collect();
        if !unresolved.is_empty() {
            tracing::error!(
                accounts = ?unresolved,
                "stopping with accounts of failed creates that could not be deleted; whichever replica runs at their expiry deletes them"
            );
        }
        let _ = stop_tx.send(true);
        for cleanup in &mut cleanups {
            let _ = (&mut cleanup.0).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reads OpenAI's Usage API every `interval` of `clock` until `stop`: the
/// first at start when a rule has a budget (a restart must not open a
/// window in which a spent budget admits), otherwise a whole interval
/// after it.
async fn poll_usage_until(
    issuance: issuance::Issuance,
    clock: Clock,
    interval: std::time::Duration,
    at_start: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut jumps = clock.jumps();
    let mut due = if at_start {
        clock.now()
    } else {
        clock.now() + interval
    };
    loop {
        let wait = due.duration_since(clock.now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = jumps.changed() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = clock.now();
        if now < due {
            continue;
        }
        due = now + interval;
        match issuance.poll_usage(now).await {
            Ok(report) => tracing::debug!(
                calls = report.calls,
                keys = report.keys,
                unattributed = report.unattributed,
                "read usage"
            ),
            Err(error) => {
                tracing::warn!(%error, "could not read usage from OpenAI; budgets use the last reading")
            }
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the secrets held in files again on every `SIGHUP`, for as long
/// as the returned task runs (on Unix; elsewhere it does nothing). The
/// handler is in place when this returns, so a `SIGHUP` sent from then on
/// never takes the default action (ending the process).
pub fn reload_on_sighup(reloader: Arc<secrets::Reloader>) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangups) => tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    reloader.reload().await;
                }
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP: secrets are read at start only");
                tokio::spawn(async {})
            }
        }
    }
    #[cfg(not(unix))]
    {
        drop(reloader);
        tokio::spawn(async {})
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
