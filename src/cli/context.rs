//! What every client command starts from: the server's address (given, or
//! remembered by `login`), the CLI's files, the time, and the session.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use url::Url;

use super::client::Api;
use super::store::{Session, Store};

/// The options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The key server's address, e.g. `https://keys.example.com` (default:
    /// the one `login` remembered).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// A client command's surroundings.
pub struct Context {
    /// The CLI's files.
    pub store: Store,
    /// The server, normalised (no trailing slash).
    pub server: Url,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// Unix seconds now. `OKS_NOW` (Unix seconds) stands in for the clock in
/// tests, which move the sandbox's clock rather than wait; it only changes
/// what this process believes, never what a key or session allows.
pub fn now() -> i64 {
    if let Some(now) = std::env::var("OKS_NOW")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        return now;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks a server address: http(s), no credentials, query or fragment,
/// and plain http only to this machine (a session must not cross a network
/// in the clear).
pub fn parse_server(raw: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw.trim()).with_context(|| {
        format!("--server {raw:?} is not a URL; give one like https://keys.example.com")
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        bail!("--server must be an https:// address, not {}", url.scheme());
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("--server must not carry a user name or password");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--server must not carry a query or a fragment");
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => bail!("--server names no host"),
    };
    if url.scheme() == "http" && !loopback {
        bail!(
            "--server {raw} is plain http: sessions and keys would cross the network unencrypted; use https"
        );
    }
    let trimmed = url.as_str().trim_end_matches('/').to_owned();
    Url::parse(&trimmed).context("normalising the server address")
}

impl Context {
    /// The context of a command given `args`.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let store = Store::locate()?;
        let raw = match &args.server {
            Some(server) => server.clone(),
            None => match store.settings()?.server {
                Some(server) => server,
                None => bail!(
                    "no server yet: run `openai-key-server login --server https://keys.example.com` first"
                ),
            },
        };
        Ok(Self {
            server: parse_server(&raw)?,
            store,
            now: now(),
        })
    }

    /// The server's address as files record it.
    pub fn server_text(&self) -> &str {
        self.server.as_str().trim_end_matches('/')
    }

    /// The session for this server, if it has not ended.
    pub fn session(&self) -> anyhow::Result<Option<Session>> {
        Ok(self
            .store
            .session()?
            .filter(|s| s.server == self.server_text() && s.expires_at > self.now))
    }

    /// The session, or the one-line error that says to sign in.
    pub fn signed_in(&self) -> anyhow::Result<Session> {
        match self.session()? {
            Some(session) => Ok(session),
            None => bail!(
                "not signed in to {} (or the session ended): run `openai-key-server login`",
                self.server_text()
            ),
        }
    }

    /// A client of the server with the session. A session the server
    /// seals anew (it is rotating its secret) is kept in place of this one.
    pub fn api(&self, session: &Session) -> Api {
        let store = self.store.clone();
        let (server, expires_at, email) = (
            session.server.clone(),
            session.expires_at,
            session.email.clone(),
        );
        Api::new(&self.server, Some(session.token.clone())).renewing(move |token| {
            let renewed = Session {
                server: server.clone(),
                token,
                expires_at,
                email: email.clone(),
            };
            if let Err(error) = store.save_session(&renewed) {
                eprintln!("warning: could not keep the renewed session: {error:#}");
            }
        })
    }
}
