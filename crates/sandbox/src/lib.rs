//! Local stand-ins for the two services the key server talks to: the OpenAI
//! Admin API ([`openai`]) and a Google-style OpenID Connect provider
//! ([`oidc`]), plus a second issuer that mints GitHub-Actions-style workload
//! tokens. Everything binds to loopback only.
//!
//! The sandbox is written from the public descriptions of those services,
//! never from the key server's own types, so that it can catch the server's
//! mistakes.

pub mod clock;
pub mod journal;
pub mod oidc;
pub mod openai;
mod padding;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

pub use clock::Clock;

/// How to start a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    bind: IpAddr,
    openai_port: u16,
    oidc_port: u16,
    github_port: u16,
    clock_offset_secs: i64,
    openai: openai::Config,
    oidc: oidc::Config,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            openai_port: 0,
            oidc_port: 0,
            github_port: 0,
            clock_offset_secs: 0,
            openai: openai::Config::default(),
            oidc: oidc::Config::default(),
        }
    }
}

impl SandboxBuilder {
    /// Loopback address to bind (127.0.0.1 by default; `::1` works too).
    /// Anything but a loopback address is refused at start.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = ip;
        self
    }

    /// Ports for the fake OpenAI API, the fake Google and the fake CI issuer
    /// (0 picks a free one).
    pub fn ports(mut self, openai: u16, oidc: u16, github: u16) -> Self {
        self.openai_port = openai;
        self.oidc_port = oidc;
        self.github_port = github;
        self
    }

    /// Starts the shared virtual clock this many seconds off real time
    /// (negative: in the past), before anything is created.
    pub fn clock_offset_secs(mut self, secs: i64) -> Self {
        self.clock_offset_secs = secs;
        self
    }

    /// Settings of the fake OpenAI Admin API.
    pub fn openai(mut self, config: openai::Config) -> Self {
        self.openai = config;
        self
    }

    /// Settings of the fake Google provider.
    pub fn oidc(mut self, config: oidc::Config) -> Self {
        self.oidc = config;
        self
    }

    /// Binds the three listeners and starts serving.
    pub async fn start(self) -> anyhow::Result<Sandbox> {
        anyhow::ensure!(
            self.bind.is_loopback(),
            "the sandbox only binds loopback addresses, not {}",
            self.bind
        );
        let clock = Clock::new();
        clock.set_offset_secs(self.clock_offset_secs);

        let openai_listener = bind(self.bind, self.openai_port).await?;
        let oidc_listener = bind(self.bind, self.oidc_port).await?;
        let github_listener = bind(self.bind, self.github_port).await?;
        let openai_addr = openai_listener.local_addr()?;
        let oidc_addr = oidc_listener.local_addr()?;
        let github_addr = github_listener.local_addr()?;

        let openai = openai::FakeOpenAi::new(self.openai, clock.clone());
        let oidc = oidc::FakeOidc::new(self.oidc, clock.clone(), origin(oidc_addr));
        let github = oidc::FakeOidc::new(
            oidc::Config::github_actions(),
            clock.clone(),
            origin(github_addr),
        );

        let tasks = vec![
            serve(openai_listener, openai.router()),
            serve(oidc_listener, oidc.router()),
            serve(github_listener, github.router()),
        ];
        Ok(Sandbox {
            clock,
            openai,
            oidc,
            github,
            openai_addr,
            oidc_addr,
            github_addr,
            tasks,
        })
    }
}

async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, port))
        .await
        .with_context(|| format!("binding {ip} port {port}"))
}

fn origin(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}")).expect("a socket address is a valid URL host")
}

fn serve(listener: TcpListener, router: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "sandbox listener stopped");
        }
    })
}

/// Both fakes, running. Dropping it stops them.
#[derive(Debug)]
pub struct Sandbox {
    /// The virtual clock both fakes read; move it to expire keys and tokens.
    pub clock: Clock,
    /// The fake OpenAI Admin API: state, knobs, counters.
    pub openai: openai::FakeOpenAi,
    /// The fake Google provider: identities, keys, forged tokens, counters.
    pub oidc: oidc::FakeOidc,
    /// A second issuer minting GitHub-Actions-style workload tokens.
    pub github: oidc::FakeOidc,
    openai_addr: SocketAddr,
    oidc_addr: SocketAddr,
    github_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Starts both fakes on free loopback ports with default settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for non-default ports or settings.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Base URL of the fake OpenAI API, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.openai_addr)
    }

    /// Issuer URL of the fake Google (discovery lives under it).
    pub fn oidc_issuer_url(&self) -> String {
        self.oidc.issuer()
    }

    /// Issuer URL of the fake CI provider.
    pub fn github_issuer_url(&self) -> String {
        self.github.issuer()
    }

    /// Socket addresses: OpenAI, Google, CI.
    pub fn addrs(&self) -> (SocketAddr, SocketAddr, SocketAddr) {
        (self.openai_addr, self.oidc_addr, self.github_addr)
    }

    /// The settings a key server needs to use this sandbox, as `NAME=value`
    /// pairs for a `.env` file. `redirect_uri` must be one the fake Google
    /// accepts (see [`oidc::FakeOidc::allow_redirect_uri`]).
    pub fn env(&self, redirect_uri: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OIDC_ISSUER_URL", self.oidc_issuer_url()),
            ("OPENAI_ADMIN_BASE_URL", self.openai_base_url()),
            ("OPENAI_MANAGEMENT_KEY", self.openai.admin_key()),
            ("CLIENT_ID", self.oidc.client_id()),
            ("CLIENT_SECRET", self.oidc.client_secret()),
            ("REDIRECT_URI", redirect_uri.to_owned()),
        ]
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
