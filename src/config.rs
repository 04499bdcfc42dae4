//! Settings: read once from the environment (after `.env`), validated all
//! at once, and held as typed values. Variable names and defaults are those
//! of the Go original, so that an existing deployment's environment works
//! unchanged; everything new is optional.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretBox, SecretString};
use url::Url;

use crate::access::AllowList;
use crate::forwarded::TrustedProxies;
use crate::identity::{Domain, EmailAddress};

/// The names of every variable the server reads. Tested one by one, since
/// drop-in compatibility with the Go original depends on them.
pub mod vars {
    /// Comma-separated email addresses allowed to get a key.
    pub const ALLOWED_USERS: &str = "ALLOWED_USERS";
    /// Comma-separated Workspace domains whose accounts may get a key.
    pub const ALLOWED_DOMAINS: &str = "ALLOWED_DOMAINS";
    /// The OpenAI admin key.
    pub const OPENAI_MANAGEMENT_KEY: &str = "OPENAI_MANAGEMENT_KEY";
    /// The OAuth client id.
    pub const CLIENT_ID: &str = "CLIENT_ID";
    /// The OAuth client secret.
    pub const CLIENT_SECRET: &str = "CLIENT_SECRET";
    /// Where the provider sends the browser back.
    pub const REDIRECT_URI: &str = "REDIRECT_URI";
    /// Name of the OpenAI project that holds issued keys.
    pub const DEFAULT_PROJECT_NAME: &str = "DEFAULT_PROJECT_NAME";
    /// TCP port to listen on.
    pub const PORT: &str = "PORT";
    /// Key lifetime in seconds.
    pub const EXPIRATION: &str = "EXPIRATION";
    /// Safety-net period of the cleanup, in seconds.
    pub const CLEANUP_INTERVAL: &str = "CLEANUP_INTERVAL";
    /// Timeout of every outgoing call, in seconds.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// Address to listen on.
    pub const BIND_ADDRESS: &str = "BIND_ADDRESS";
    /// The OpenID Connect issuer (discovery is under it).
    pub const OIDC_ISSUER_URL: &str = "OIDC_ISSUER_URL";
    /// The Go original's name for [`OIDC_ISSUER_URL`].
    pub const GOOGLE_TOKEN_ISSUER_URL: &str = "GOOGLE_TOKEN_ISSUER_URL";
    /// Extra accepted `iss` values (comma-separated).
    pub const OIDC_ACCEPTED_ISSUERS: &str = "OIDC_ACCEPTED_ISSUERS";
    /// Base URL of the OpenAI API.
    pub const OPENAI_ADMIN_BASE_URL: &str = "OPENAI_ADMIN_BASE_URL";
    /// Project id to use instead of looking up the name.
    pub const OPENAI_PROJECT_ID: &str = "OPENAI_PROJECT_ID";
    /// Base64 key for the encrypted cookies.
    pub const SESSION_SECRET: &str = "SESSION_SECRET";
    /// The session secret being rotated out: what it sealed still opens
    /// (and is sealed anew with `SESSION_SECRET`).
    pub const SESSION_SECRET_PREVIOUS: &str = "SESSION_SECRET_PREVIOUS";
    /// Whether a listed address is trusted without the provider vouching
    /// that it manages it (Google: no `hd`, not Gmail).
    pub const ALLOW_UNMANAGED_EMAILS: &str = "ALLOW_UNMANAGED_EMAILS";
    /// Live keys one user may hold at once (0: no cap).
    pub const MAX_KEYS_PER_USER: &str = "MAX_KEYS_PER_USER";
    /// Keys one user may be issued per hour (0: no limit).
    pub const RATE_LIMIT_PER_USER: &str = "RATE_LIMIT_PER_USER";
    /// Sign-ins one client address may complete per hour (0: no limit).
    pub const RATE_LIMIT_PER_IP: &str = "RATE_LIMIT_PER_IP";
    /// `/revoke` calls one client address may make per minute (0: no limit).
    pub const RATE_LIMIT_REVOKE: &str = "RATE_LIMIT_REVOKE";
    /// The Go original's JWKS URL; no longer used (keys come from discovery).
    pub const GOOGLE_TOKEN_AUDIENCE: &str = "GOOGLE_TOKEN_AUDIENCE";
    /// `json` or `pretty`.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// Deletes a sweep starts with at once.
    pub const CLEANUP_CONCURRENCY: &str = "CLEANUP_CONCURRENCY";
    /// Whether answers carry a `Server-Timing` header (upstream wait and the
    /// server's own time).
    pub const SERVER_TIMING: &str = "SERVER_TIMING";
    /// Whether to delete the Go original's expired accounts too.
    pub const CLEANUP_LEGACY_ACCOUNTS: &str = "CLEANUP_LEGACY_ACCOUNTS";
    /// Proxies (CIDRs) whose `Forwarded` / `X-Forwarded-For` are believed.
    pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
    /// Client connections open at once (default: from the open-file limit).
    pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
    /// Comma-separated addresses of the admins.
    pub const ADMIN_USERS: &str = "ADMIN_USERS";
    /// Lifetime of a browser session, in seconds.
    pub const SESSION_TTL: &str = "SESSION_TTL";
    /// Lifetime of a command line's session, in seconds.
    pub const CLI_SESSION_TTL: &str = "CLI_SESSION_TTL";
    /// Seconds a device sign-in's CLI waits between polls.
    pub const DEVICE_POLL_INTERVAL: &str = "DEVICE_POLL_INTERVAL";
    /// Whether signing in issues a key at once (the Go original's way).
    pub const ISSUE_ON_SIGN_IN: &str = "ISSUE_ON_SIGN_IN";
    /// Oldest listing, in seconds, that a page listing keys may show.
    pub const LISTING_MAX_AGE: &str = "LISTING_MAX_AGE";
    /// Where `/metrics` is served instead of the main listener.
    pub const METRICS_ADDRESS: &str = "METRICS_ADDRESS";
    /// A file the audit events are also appended to, in a hash chain.
    pub const AUDIT_LOG_FILE: &str = "AUDIT_LOG_FILE";
    /// Who may use `/revoke`: `public`, `admin` or `off`.
    pub const REVOKE_ENDPOINT: &str = "REVOKE_ENDPOINT";
    /// The policy file (TOML): issuers and rules, instead of the
    /// allow-lists.
    pub const POLICY_FILE: &str = "POLICY_FILE";
    /// Tokens one holder's keys may use per UTC day (0: no budget).
    pub const TOKENS_PER_DAY: &str = "TOKENS_PER_DAY";
    /// `refuse` (new keys) or `revoke` (live keys too) once a budget is spent.
    pub const ON_OVER_BUDGET: &str = "ON_OVER_BUDGET";
    /// Dollars one holder's keys may cost per calendar month (UTC), as
    /// estimated from `MODEL_PRICES` (0: no budget).
    pub const USD_PER_MONTH: &str = "USD_PER_MONTH";
    /// Dollars per million tokens by model, input/output.
    pub const MODEL_PRICES: &str = "MODEL_PRICES";
    /// Seconds between two reads of OpenAI's Usage API (0: never).
    pub const USAGE_POLL_INTERVAL: &str = "USAGE_POLL_INTERVAL";
}

/// Who may use `/revoke` (`REVOKE_ENDPOINT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeEndpoint {
    /// Anyone, as in the Go original.
    Public,
    /// Signed-in admins only (a POST from the admin page).
    Admin,
    /// Nobody: the route answers 404.
    Off,
}

/// Google's documented issuer, and the scheme-less form its tokens may carry.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const GOOGLE_ISSUER_BARE: &str = "accounts.google.com";

/// The longest lifetime OpenAI accepts for a key (`expires_in_seconds`).
pub const MAX_EXPIRATION_SECS: u64 = 31_536_000;

/// The one path the server answers the provider's redirect on.
pub const CALLBACK_PATH: &str = "/oauth2/callback";

/// Which OpenAI project receives the service accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectSelector {
    /// Look the project up by name, creating it when missing (the original's
    /// behaviour).
    Name(String),
    /// Use this project id as is.
    Id(String),
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// The key for the encrypted cookies: at least 32 bytes.
pub struct SessionSecret(SecretBox<[u8]>);

impl SessionSecret {
    /// A random secret for this process only.
    pub fn random() -> Self {
        let bytes: [u8; 64] = rand::random();
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A secret as written: base64 (standard or URL-safe) of at least 32
    /// bytes. The error says what is wrong, never the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
            });
        match decoded {
            Ok(bytes) if bytes.len() >= 32 => Ok(Self(SecretBox::new(bytes.into_boxed_slice()))),
            Ok(bytes) => Err(format!(
                "must decode to at least 32 bytes, not {}; make one with `openssl rand -base64 48`",
                bytes.len()
            )),
            Err(_) => Err("must be base64 (make one with `openssl rand -base64 48`)".to_owned()),
        }
    }

    /// The raw bytes, for deriving the cookie key.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl Clone for SessionSecret {
    fn clone(&self) -> Self {
        Self(SecretBox::new(self.expose().into()))
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Every setting, typed and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Who may get a key.
    pub allow: AllowList,
    /// The OpenAI admin key.
    pub management_key: SecretString,
    /// The OAuth client id.
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: SecretString,
    /// Where the provider sends the browser back (path [`CALLBACK_PATH`]).
    pub redirect_uri: Url,
    /// The same, exactly as configured: sent to the provider verbatim,
    /// since providers compare it character for character.
    pub redirect_uri_text: String,
    /// The OpenAI project for issued keys.
    pub project: ProjectSelector,
    /// Address to listen on.
    pub bind_address: IpAddr,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Lifetime of every issued key.
    pub expiration: Duration,
    /// Longest time between two cleanups.
    pub cleanup_interval: Duration,
    /// Timeout of every outgoing call, and the grace period at shutdown.
    pub timeout: Duration,
    /// Deletes a sweep starts with at once; it grows while OpenAI keeps up.
    pub cleanup_concurrency: usize,
    /// Also delete the Go original's accounts (bare-email names) older than
    /// `expiration`.
    pub cleanup_legacy_accounts: bool,
    /// The OIDC issuer whose discovery document is used.
    pub oidc_issuer: Url,
    /// Every `iss` value accepted in ID tokens.
    pub accepted_issuers: Vec<String>,
    /// Base URL of the OpenAI API, e.g. `https://api.openai.com/v1`.
    pub openai_base_url: Url,
    /// Key for the encrypted login cookies; `None` means a random one per
    /// process.
    pub session_secret: Option<SessionSecret>,
    /// The session secret being rotated out: it still opens, never seals.
    pub session_secret_previous: Option<SessionSecret>,
    /// The files secrets were read from (by variable, e.g.
    /// `OPENAI_MANAGEMENT_KEY`), read again on `SIGHUP`.
    pub secret_files: BTreeMap<String, PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Trust a listed address that the provider does not manage (see
    /// [`crate::access::AllowList::decide`]).
    pub allow_unmanaged_emails: bool,
    /// Live keys one user may hold at once (0: no cap).
    pub max_keys_per_user: usize,
    /// Keys one user may be issued per hour (0: no limit).
    pub rate_limit_per_user: u32,
    /// Sign-ins one client address may complete per hour (0: no limit).
    pub rate_limit_per_ip: u32,
    /// `/revoke` calls one client address may make per minute (0: no limit).
    pub rate_limit_revoke: u32,
    /// Whether answers carry a `Server-Timing` header.
    pub server_timing: bool,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Client connections open at once, configured or derived from the
    /// open-file limit.
    pub max_connections: ConnectionLimit,
    /// Who may act on everyone's keys.
    pub admins: BTreeSet<EmailAddress>,
    /// Lifetime of a browser session.
    pub session_ttl: Duration,
    /// Lifetime of a command line's session.
    pub cli_session_ttl: Duration,
    /// How often a device sign-in's CLI polls.
    pub device_poll_interval: Duration,
    /// Whether the sign-in callback issues a key at once.
    pub issue_on_sign_in: bool,
    /// Oldest listing a page listing keys may show.
    pub listing_max_age: Duration,
    /// Who may use `/revoke`.
    pub revoke_endpoint: RevokeEndpoint,
    /// The policy file, when `POLICY_FILE` names one.
    pub policy_file: Option<crate::access::PolicyFile>,
    /// Its path, as given.
    pub policy_path: Option<String>,
    /// Where `/metrics` is served, when not on the main listener.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where audit events are also appended (`AUDIT_LOG_FILE`).
    pub audit_log_file: Option<PathBuf>,
    /// The budget of the allow-list's rule, and the default of the policy
    /// file's (`TOKENS_PER_DAY`, `ON_OVER_BUDGET`).
    pub budget: crate::access::Budget,
    /// How often OpenAI's Usage API is read (`USAGE_POLL_INTERVAL`; `None`:
    /// never).
    pub usage_poll_interval: Option<Duration>,
    /// What models cost, to estimate dollars (`MODEL_PRICES`).
    pub model_prices: crate::usage::Prices,
    /// The issuers of the policy file people sign in through, besides the
    /// environment's, with their clients.
    pub browser_issuers: Vec<BrowserIssuer>,
    /// Things that are not errors but deserve a line in the log at start.
    pub warnings: Vec<String>,
}

/// An issuer of the policy file people sign in through, ready to use: its
/// client secret read from its file at start.
#[derive(Clone, Debug)]
pub struct BrowserIssuer {
    /// Its name in the policy.
    pub name: String,
    /// Its URL (discovery).
    pub url: Url,
    /// Its OAuth client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: SecretString,
    /// The file it was read from, read again on `SIGHUP`.
    pub client_secret_file: PathBuf,
    /// The redirect URI registered with it, as written.
    pub redirect_uri: String,
    /// The ID token claim that lists groups.
    pub groups_claim: Option<String>,
    /// The ID token claim that names the organisation's domain.
    pub domain_claim: Option<String>,
}

/// One thing wrong with the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The variable at fault.
    pub var: String,
    /// What is wrong and what a valid value looks like. Never contains the
    /// value of a secret.
    pub message: String,
}

/// Everything wrong with the environment, reported at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// One entry per problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.var, p.message)?;
        }
        Ok(())
    }
}

/// Collects problems while reading, so that all are reported together.
struct Reader<F> {
    lookup: F,
    problems: Vec<Problem>,
    /// The files secrets were read from, by variable, to read again on
    /// `SIGHUP`.
    secret_files: BTreeMap<String, PathBuf>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn problem(&mut self, var: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            var: var.to_owned(),
            message: message.into(),
        });
    }

    /// A non-secret value, trimmed; empty counts as unset.
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A secret, from `VAR` or from the file named by `VAR_FILE`.
    fn secret(&mut self, var: &str) -> Option<SecretString> {
        let file_var = format!("{var}_FILE");
        let direct = (self.lookup)(var).filter(|v| !v.trim().is_empty());
        let file = self.get(&file_var);
        match (direct, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    var,
                    format!("is set both directly and through {file_var}; set only one"),
                );
                None
            }
            (Some(v), None) => Some(SecretString::from(v.trim().to_owned())),
            (None, Some(path)) => match std::fs::read_to_string(Path::new(&path)) {
                Ok(v) if v.trim().is_empty() => {
                    self.secret_files
                        .insert(var.to_owned(), PathBuf::from(&path));
                    self.problem(&file_var, format!("names the file {path}, which is empty"));
                    None
                }
                Ok(v) => {
                    self.secret_files
                        .insert(var.to_owned(), PathBuf::from(&path));
                    Some(SecretString::from(v.trim().to_owned()))
                }
                Err(e) => {
                    self.problem(&file_var, format!("cannot read the file {path}: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// A session secret (`SESSION_SECRET`, `SESSION_SECRET_PREVIOUS`).
    fn session_secret(&mut self, var: &str) -> Option<SessionSecret> {
        let secret = self.secret(var)?;
        SessionSecret::parse(secret.expose_secret())
            .map_err(|problem| self.problem(var, problem))
            .ok()
    }

    fn required_secret(&mut self, var: &str, example: &str) -> SecretString {
        let before = self.problems.len();
        self.secret(var).unwrap_or_else(|| {
            if self.problems.len() > before {
                // Already reported (set twice, unreadable file).
                return SecretString::from(String::new());
            }
            self.problem(
                var,
                format!("is required (or {var}_FILE naming a file that holds it), e.g. {example}"),
            );
            SecretString::from(String::new())
        })
    }

    fn seconds(&mut self, var: &str, default: u64, max: u64) -> Duration {
        let Some(raw) = self.get(var) else {
            return Duration::from_secs(default);
        };
        match raw.parse::<u64>() {
            Ok(0) => {
                self.problem(
                    var,
                    format!("must be a positive number of seconds, not 0 (default {default})"),
                );
                Duration::from_secs(default)
            }
            Ok(n) if n > max => {
                self.problem(var, format!("must be at most {max} seconds, not {n}"));
                Duration::from_secs(default)
            }
            Ok(n) => Duration::from_secs(n),
            Err(_) => {
                self.problem(
                    var,
                    format!(
                        "must be a whole number of seconds between 1 and {max}, not {raw:?} (default {default})"
                    ),
                );
                Duration::from_secs(default)
            }
        }
    }

    /// `true` or `false` (and the usual spellings of both).
    fn flag(&mut self, var: &str, default: bool) -> bool {
        let Some(raw) = self.get(var) else {
            return default;
        };
        parse_bool(&raw).unwrap_or_else(|| {
            self.problem(
                var,
                format!("must be true or false, not {raw:?} (default {default})"),
            );
            default
        })
    }

    /// A whole number from 0 (off) to `max`.
    fn count(&mut self, var: &str, default: u32, max: u32) -> u32 {
        let Some(raw) = self.get(var) else {
            return default;
        };
        match raw.parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => {
                self.problem(
                    var,
                    format!("must be a whole number from 0 (no limit) to {max}, not {raw:?} (default {default})"),
                );
                default
            }
        }
    }

    fn url(&mut self, var: &str, raw: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                self.problem(
                    var,
                    "must not carry a user name or password: they would be sent and logged with every use of the URL",
                );
                None
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.problem(
                    var,
                    format!(
                        "must be an absolute http(s) URL such as https://example.com, not {}",
                        shown(raw)
                    ),
                );
                None
            }
        }
    }

    /// A URL the server sends a secret to (the admin key, the client
    /// secret) or whose answers it trusts (signing keys): https, or plain
    /// http to this machine only (a local fake); nothing after the path.
    fn upstream_url(&mut self, var: &str, raw: &str, carries: &str) -> Option<Url> {
        let url = self.url(var, raw)?;
        if url.scheme() == "http" && !crate::upstream::is_loopback(&url) {
            self.problem(
                var,
                format!(
                    "must be https: over plain http {carries} would cross the network in clear text (http is accepted for 127.0.0.1, ::1 and localhost only)"
                ),
            );
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.problem(
                var,
                "must not have a query or fragment: give the base URL only",
            );
            return None;
        }
        Some(url)
    }

    fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `raw` quoted for an error message, unless it may hold a password.
fn shown(raw: &str) -> String {
    if raw.contains('@') {
        "the value given (not shown: it may hold a password)".to_owned()
    } else {
        format!("{raw:?}")
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `url` is Google's issuer, however it was spelled.
fn is_google_issuer(url: &Url) -> bool {
    url.scheme() == "https"
        && url.host_str() == Some(GOOGLE_ISSUER_BARE)
        && url.port().is_none()
        && matches!(url.path(), "" | "/")
}

impl Config {
    /// Reads the process environment. Load `.env` before calling this.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads settings through `lookup`, so that tests can pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
            secret_files: BTreeMap::new(),
        };

        let mut users = BTreeSet::new();
        for raw in r.list(vars::ALLOWED_USERS) {
            match EmailAddress::parse(&raw) {
                Ok(email) => {
                    users.insert(email);
                }
                Err(e) => r.problem(
                    vars::ALLOWED_USERS,
                    format!("entry {raw:?} {e}; expected addresses like alice@example.com"),
                ),
            }
        }
        let mut domains = BTreeSet::new();
        for raw in r.list(vars::ALLOWED_DOMAINS) {
            let cleaned = raw.strip_prefix('@').unwrap_or(&raw);
            match Domain::parse(cleaned) {
                Ok(domain) => {
                    domains.insert(domain);
                }
                Err(e) => r.problem(
                    vars::ALLOWED_DOMAINS,
                    format!("entry {raw:?} {e}; expected domains like example.com"),
                ),
            }
        }
        let allow = AllowList { users, domains };
        if allow.is_empty() && r.problems.is_empty() && r.get(vars::POLICY_FILE).is_none() {
            r.problem(
                "ALLOWED_USERS/ALLOWED_DOMAINS",
                "at least one must list someone, e.g. ALLOWED_DOMAINS=example.com or ALLOWED_USERS=alice@example.com",
            );
        }

        let management_key = r.required_secret(vars::OPENAI_MANAGEMENT_KEY, "sk-admin-…");
        let client_id = r.get(vars::CLIENT_ID).unwrap_or_else(|| {
            r.problem(
                vars::CLIENT_ID,
                "is required: the OAuth client id, e.g. 1234-abc.apps.googleusercontent.com",
            );
            String::new()
        });
        let client_secret = r.required_secret(vars::CLIENT_SECRET, "GOCSPX-…");

        let redirect_raw = r.get(vars::REDIRECT_URI).unwrap_or_default();
        let redirect_uri = match r.get(vars::REDIRECT_URI) {
            None => {
                r.problem(
                    vars::REDIRECT_URI,
                    format!("is required, e.g. https://keys.example.com{CALLBACK_PATH}"),
                );
                None
            }
            Some(raw) => r.url(vars::REDIRECT_URI, &raw).and_then(|url| {
                if url.path() == CALLBACK_PATH && url.query().is_none() && url.fragment().is_none() {
                    Some(url)
                } else {
                    r.problem(
                        vars::REDIRECT_URI,
                        format!(
                            "must end in the path {CALLBACK_PATH}, which is where this server receives the sign-in, e.g. https://keys.example.com{CALLBACK_PATH}"
                        ),
                    );
                    None
                }
            }),
        };

        let project = match r.get(vars::OPENAI_PROJECT_ID) {
            Some(id) => ProjectSelector::Id(id),
            None => ProjectSelector::Name(
                r.get(vars::DEFAULT_PROJECT_NAME)
                    .unwrap_or_else(|| "personal".to_owned()),
            ),
        };

        let bind_address = match r.get(vars::BIND_ADDRESS) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                r.problem(
                    vars::BIND_ADDRESS,
                    format!("must be an IP address such as 0.0.0.0, 127.0.0.1 or ::, not {raw:?}"),
                );
                IpAddr::from([0, 0, 0, 0])
            }),
        };
        let port = match r.get(vars::PORT) {
            None => 8080,
            Some(raw) => raw.parse::<u16>().unwrap_or_else(|_| {
                r.problem(
                    vars::PORT,
                    format!("must be a port number from 0 to 65535, not {raw:?} (default 8080)"),
                );
                8080
            }),
        };

        let expiration = r.seconds(vars::EXPIRATION, 86_400, MAX_EXPIRATION_SECS);
        let cleanup_interval = r.seconds(vars::CLEANUP_INTERVAL, 3_600, MAX_EXPIRATION_SECS);
        let timeout = r.seconds(vars::TIMEOUT, 10, 3_600);
        let cleanup_concurrency = match r.get(vars::CLEANUP_CONCURRENCY) {
            None => 8,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => {
                    r.problem(
                        vars::CLEANUP_CONCURRENCY,
                        format!("must be a whole number from 1 to 256, not {raw:?} (default 8)"),
                    );
                    8
                }
            },
        };
        let cleanup_legacy_accounts = r.flag(vars::CLEANUP_LEGACY_ACCOUNTS, false);

        let (issuer_var, issuer_raw) = match (
            r.get(vars::OIDC_ISSUER_URL),
            r.get(vars::GOOGLE_TOKEN_ISSUER_URL),
        ) {
            (Some(url), _) => (vars::OIDC_ISSUER_URL, url),
            (None, Some(url)) => (vars::GOOGLE_TOKEN_ISSUER_URL, url),
            (None, None) => (vars::OIDC_ISSUER_URL, GOOGLE_ISSUER.to_owned()),
        };
        let oidc_issuer = r
            .upstream_url(
                issuer_var,
                &issuer_raw,
                "the client secret, sign-in codes and the provider's signing keys",
            )
            .filter(|url| {
                if url.path().trim_end_matches('/').ends_with("/.well-known/openid-configuration") {
                    r.problem(
                        issuer_var,
                        "must be the issuer, not its discovery document: drop /.well-known/openid-configuration",
                    );
                    false
                } else {
                    true
                }
            });
        // Decided on the parsed URL, so that no spelling of Google's issuer
        // (upper case, a trailing slash, :443) turns Google's rules off.
        let is_google = oidc_issuer.as_ref().is_some_and(is_google_issuer);
        // The issuer as parsed (host in lower case, no default port, no
        // trailing slash), and without its scheme: Google documents that its
        // tokens may say `accounts.google.com`, and a token's signature is
        // checked against this issuer's own keys, so the bare form of the
        // same issuer admits no one else.
        let issuer_text = oidc_issuer
            .as_ref()
            .map_or_else(|| issuer_raw.clone(), ToString::to_string);
        let mut accepted_issuers = vec![issuer_text.trim_end_matches('/').to_owned()];
        let bare = accepted_issuers[0]
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        if is_google {
            accepted_issuers.push(GOOGLE_ISSUER_BARE.to_owned());
        } else if bare != accepted_issuers[0] {
            accepted_issuers.push(bare);
        }
        for extra in r.list(vars::OIDC_ACCEPTED_ISSUERS) {
            if !accepted_issuers.contains(&extra) {
                accepted_issuers.push(extra);
            }
        }

        let openai_raw = r
            .get(vars::OPENAI_ADMIN_BASE_URL)
            .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
        let openai_base_url = r
            .upstream_url(vars::OPENAI_ADMIN_BASE_URL, &openai_raw, "the admin key")
            .filter(|url| {
                // Without /v1 every call is "Invalid URL" at the first
                // sign-in; say so now.
                if url.host_str() == Some("api.openai.com")
                    && url.path().trim_end_matches('/') != "/v1"
                {
                    r.problem(
                        vars::OPENAI_ADMIN_BASE_URL,
                        "must be https://api.openai.com/v1 for OpenAI itself: the API's paths are under /v1",
                    );
                    false
                } else {
                    true
                }
            });

        let session_secret = r.session_secret(vars::SESSION_SECRET);
        // An empty file is the end of a rotation (nothing being rotated
        // out), not a mistake.
        let previous_file = r.get(&format!("{}_FILE", vars::SESSION_SECRET_PREVIOUS));
        let session_secret_previous = match previous_file
            .as_deref()
            .map(|path| (path, std::fs::read_to_string(path)))
        {
            Some((path, Ok(text))) if text.trim().is_empty() => {
                r.secret_files.insert(
                    vars::SESSION_SECRET_PREVIOUS.to_owned(),
                    PathBuf::from(path),
                );
                None
            }
            _ => r.session_secret(vars::SESSION_SECRET_PREVIOUS),
        };
        if session_secret_previous.is_some()
            && session_secret.is_none()
            && !r
                .problems
                .iter()
                .any(|p| p.var.starts_with(vars::SESSION_SECRET))
        {
            r.problem(
                vars::SESSION_SECRET_PREVIOUS,
                "names the secret being rotated out, so SESSION_SECRET (or SESSION_SECRET_FILE) must name the new one",
            );
        }

        // Google documents that it is not authoritative for a non-Gmail
        // address without `hd`; other providers have no such claim.
        let allow_unmanaged_emails = r.flag(vars::ALLOW_UNMANAGED_EMAILS, !is_google);
        let server_timing = r.flag(vars::SERVER_TIMING, false);
        let max_keys_per_user = r.count(vars::MAX_KEYS_PER_USER, 5, 1_000);
        let rate_limit_per_user = r.count(vars::RATE_LIMIT_PER_USER, 20, 100_000);
        let tokens_per_day = r.count(vars::TOKENS_PER_DAY, 0, u32::MAX);
        let revoke_over_budget = match r.get(vars::ON_OVER_BUDGET).as_deref() {
            None | Some("refuse") => false,
            Some("revoke") => true,
            Some(other) => {
                r.problem(
                    vars::ON_OVER_BUDGET,
                    format!("must be refuse (new keys are refused once a budget is spent) or revoke (live keys are revoked too), not {other:?}"),
                );
                false
            }
        };
        let cents_per_month = match r.get(vars::USD_PER_MONTH) {
            None => 0,
            Some(raw) => match raw.parse::<f64>().ok().and_then(crate::usage::cents) {
                Some(cents) => cents,
                None => {
                    r.problem(
                        vars::USD_PER_MONTH,
                        format!("must be an amount of dollars like 50 or 12.5, not {raw:?}"),
                    );
                    0
                }
            },
        };
        let model_prices = match r.get(vars::MODEL_PRICES) {
            None => crate::usage::Prices::default(),
            Some(raw) => crate::usage::Prices::parse(&raw).unwrap_or_else(|problem| {
                r.problem(vars::MODEL_PRICES, problem);
                crate::usage::Prices::default()
            }),
        };
        let budget = crate::access::Budget {
            tokens_per_day: u64::from(tokens_per_day),
            cents_per_month,
            revoke: revoke_over_budget,
        };
        let usage_poll_interval = if r.get(vars::USAGE_POLL_INTERVAL).as_deref() == Some("0") {
            None
        } else {
            Some(r.seconds(vars::USAGE_POLL_INTERVAL, 60, 86_400))
        };
        let policy_file = r.get(vars::POLICY_FILE).and_then(|path| {
            let defaults = crate::access::Defaults {
                lifetime: expiration,
                cap: usize::try_from(max_keys_per_user).unwrap_or(usize::MAX),
                per_hour: rate_limit_per_user,
                budget,
            };
            match crate::access::load_policy_file(std::path::Path::new(&path), defaults) {
                Ok(file) => Some(file),
                Err(problems) => {
                    for problem in problems {
                        r.problem(vars::POLICY_FILE, problem);
                    }
                    None
                }
            }
        });
        let dollar_rules: Vec<String> = match &policy_file {
            Some(file) => file
                .rules
                .iter()
                .filter(|rule| rule.budget.cents_per_month > 0)
                .map(|rule| rule.name.clone())
                .collect(),
            None if budget.cents_per_month > 0 => vec![crate::access::ENV_RULE.to_owned()],
            None => Vec::new(),
        };
        let budget_rules: Vec<String> = match &policy_file {
            Some(file) => file
                .rules
                .iter()
                .filter(|rule| rule.budget.is_set())
                .map(|rule| rule.name.clone())
                .collect(),
            None if budget.is_set() => vec![crate::access::ENV_RULE.to_owned()],
            None => Vec::new(),
        };
        if !budget_rules.is_empty() && usage_poll_interval.is_none() {
            r.problem(
                vars::USAGE_POLL_INTERVAL,
                format!(
                    "is 0, so usage is never read and the budget of rule(s) {} would never be enforced: set it to the seconds between two reads (default 60)",
                    budget_rules.join(", ")
                ),
            );
        }
        if !dollar_rules.is_empty() && model_prices.is_empty() {
            r.problem(
                vars::MODEL_PRICES,
                format!(
                    "is needed to estimate dollars for the budget of rule(s) {}: give the models' prices in dollars per million tokens, e.g. gpt-4o=2.50/10.00,*=2.50/10.00",
                    dollar_rules.join(", ")
                ),
            );
        }
        let own_redirect = redirect_uri.clone();
        let browser_issuers = policy_file
            .iter()
            .flat_map(|file| &file.issuers)
            .filter_map(|issuer| Some((issuer, issuer.browser.as_ref()?)))
            .filter_map(|(issuer, browser)| {
                let at = format!("issuer {:?}", issuer.name);
                let path = &browser.client_secret_file;
                let secret = match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => SecretString::from(text.trim().to_owned()),
                    Ok(_) => {
                        r.problem(vars::POLICY_FILE, format!("{at}: client_secret_file: {} is empty", path.display()));
                        return None;
                    }
                    Err(error) => {
                        r.problem(vars::POLICY_FILE, format!("{at}: client_secret_file: cannot read {}: {error}", path.display()));
                        return None;
                    }
                };
                let Ok(url) = Url::parse(&issuer.url) else {
                    return None;
                };
                // The provider sends the browser back to this server's one
                // callback, whatever spelling it registered.
                let redirect_uri = browser
                    .redirect_uri
                    .clone()
                    .unwrap_or_else(|| redirect_raw.clone());
                let same_callback = Url::parse(&redirect_uri).is_ok_and(|given| {
                    !redirect_uri.is_empty() && own_redirect.as_ref().is_some_and(|own: &Url| {
                        given.origin() == own.origin() && given.path() == CALLBACK_PATH && given.query().is_none()
                    })
                });
                if !same_callback {
                    r.problem(
                        vars::POLICY_FILE,
                        format!("{at}: redirect_uri: must be this server's callback, REDIRECT_URI's origin with the path {CALLBACK_PATH}"),
                    );
                    return None;
                }
                Some(BrowserIssuer {
                    name: issuer.name.clone(),
                    url,
                    client_id: browser.client_id.clone(),
                    client_secret: secret,
                    client_secret_file: path.clone(),
                    redirect_uri,
                    groups_claim: issuer.groups_claim.clone(),
                    domain_claim: issuer.domain_claim.clone(),
                })
            })
            .collect::<Vec<_>>();
        let rate_limit_per_ip = r.count(vars::RATE_LIMIT_PER_IP, 120, 1_000_000);
        let rate_limit_revoke = r.count(vars::RATE_LIMIT_REVOKE, 10, 100_000);
        let mut proxies = Vec::new();
        for raw in r.list(vars::TRUSTED_PROXIES) {
            match TrustedProxies::parse_entry(&raw) {
                Ok(net) => proxies.push(net),
                Err(e) => r.problem(
                    vars::TRUSTED_PROXIES,
                    format!("entry {raw:?} {e}; expected addresses or networks like 10.0.0.0/8,192.168.1.10"),
                ),
            }
        }
        let trusted_proxies = TrustedProxies::new(proxies);
        let max_connections = match r.get(vars::MAX_CONNECTIONS) {
            None => None,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    r.problem(
                        vars::MAX_CONNECTIONS,
                        format!("must be a whole number from 1 to 1000000, not {raw:?} (default: half of the open-file limit left after 256, at most 4096)"),
                    );
                    None
                }
            },
        };
        let mut admins = BTreeSet::new();
        for raw in r.list(vars::ADMIN_USERS) {
            match EmailAddress::parse(&raw) {
                Ok(email) => {
                    admins.insert(email);
                }
                Err(e) => r.problem(
                    vars::ADMIN_USERS,
                    format!("entry {raw:?} {e}; expected addresses like alice@example.com"),
                ),
            }
        }
        let session_ttl = r.seconds(vars::SESSION_TTL, 43_200, 7 * 86_400);
        let cli_session_ttl = r.seconds(vars::CLI_SESSION_TTL, 43_200, 30 * 86_400);
        let device_poll_interval = r.seconds(vars::DEVICE_POLL_INTERVAL, 5, 60);
        let issue_on_sign_in = r.flag(vars::ISSUE_ON_SIGN_IN, true);
        let listing_max_age = r.seconds(vars::LISTING_MAX_AGE, 15, 3_600);
        let metrics_address = r.get(vars::METRICS_ADDRESS).and_then(|raw| {
            raw.parse::<std::net::SocketAddr>().map_or_else(
                |_| {
                    r.problem(
                        vars::METRICS_ADDRESS,
                        format!("must be an address and port such as 127.0.0.1:9090 or [::]:9090, not {raw:?}"),
                    );
                    None
                },
                Some,
            )
        });
        let revoke_endpoint = match r
            .get(vars::REVOKE_ENDPOINT)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("public") => RevokeEndpoint::Public,
            Some("admin") => RevokeEndpoint::Admin,
            Some("off") => RevokeEndpoint::Off,
            Some(_) => {
                r.problem(
                    vars::REVOKE_ENDPOINT,
                    "must be public (anyone, as the Go original), admin (signed-in admins) or off",
                );
                RevokeEndpoint::Public
            }
        };
        let mut warnings = Vec::new();
        for admin in admins.iter().filter(|_| policy_file.is_none()) {
            let listed = allow.users.contains(admin)
                || Domain::parse(admin.domain()).is_ok_and(|d| allow.domains.contains(&d));
            if !listed {
                warnings.push(format!(
                    "{} names {admin}, who is on neither {} nor {}: admins must be allowed too, so {admin} cannot sign in",
                    vars::ADMIN_USERS,
                    vars::ALLOWED_USERS,
                    vars::ALLOWED_DOMAINS
                ));
            }
        }
        for issuer in policy_file.iter().flat_map(|f| &f.issuers) {
            if issuer.name == crate::access::ENV_ISSUER
                && oidc_issuer.as_ref().is_some_and(|env| {
                    env.as_str().trim_end_matches('/') != issuer.url.trim_end_matches('/')
                })
            {
                warnings.push(format!(
                    "{}: issuer \"google\" names url {}, but people sign in through {} (OIDC_ISSUER_URL); the block's url is not used, only its claims settings",
                    vars::POLICY_FILE,
                    issuer.url,
                    oidc_issuer.as_ref().map_or("", |u| u.as_str()),
                ));
            }
        }
        if r.get(vars::GOOGLE_TOKEN_AUDIENCE).is_some() {
            warnings.push(format!(
                "{} is ignored: the signing keys come from the issuer's discovery document",
                vars::GOOGLE_TOKEN_AUDIENCE
            ));
        }
        if let Some(url) = &redirect_uri
            && url.scheme() == "http"
            && !crate::upstream::is_loopback(url)
        {
            warnings.push(format!(
                "{} is plain http on a non-loopback host: sign-in cookies are sent unencrypted; serve it over https",
                vars::REDIRECT_URI
            ));
        }

        if let Some(url) = &redirect_uri
            && url.scheme() == "https"
            && trusted_proxies.is_empty()
        {
            // This server speaks plain http only, so an https REDIRECT_URI
            // means a proxy in front, whose address every request then has.
            warnings.push(format!(
                "{} is https but this server listens on plain http, so a proxy terminates TLS in front of it; with no {} set, every request seems to come from that proxy and the per-address limits count all clients together: set {} to the proxy's addresses",
                vars::REDIRECT_URI,
                vars::TRUSTED_PROXIES,
                vars::TRUSTED_PROXIES
            ));
        }
        if let Some(url) = &redirect_uri
            && url.scheme() == "http"
            && trusted_proxies.is_empty()
            && port != 0
            && url.port_or_known_default() != Some(port)
        {
            // Plain http with no proxy named: the browser comes back to
            // REDIRECT_URI's port, where nothing of ours may listen.
            warnings.push(format!(
                "{} names port {}, but this server listens on {} {port} and no {} is set: unless something in front forwards that port here, sign-ins come back to a port where this server is not",
                vars::REDIRECT_URI,
                url.port_or_known_default().unwrap_or(80),
                vars::PORT,
                vars::TRUSTED_PROXIES,
            ));
        }
        if let (Some(current), Some(previous)) = (&session_secret, &session_secret_previous)
            && current.expose() == previous.expose()
        {
            warnings.push(format!(
                "{} is the same as {}: nothing is being rotated; set the new secret as {} (or unset {} once the rotation is over)",
                vars::SESSION_SECRET_PREVIOUS,
                vars::SESSION_SECRET,
                vars::SESSION_SECRET,
                vars::SESSION_SECRET_PREVIOUS,
            ));
        }
        if let ProjectSelector::Id(id) = &project
            && !id.starts_with("proj_")
        {
            warnings.push(format!(
                "{} is {id:?}, but OpenAI project ids look like proj_…; to use a project by its name, set {} instead",
                vars::OPENAI_PROJECT_ID,
                vars::DEFAULT_PROJECT_NAME
            ));
        }
        if let Some(max) = max_connections
            && let Some(fds) = open_file_limit()
            && u64::try_from(max).unwrap_or(u64::MAX).saturating_mul(2) > fds
        {
            warnings.push(format!(
                "{} is {max}, but the open-file limit is {fds}: with a connection to Google or OpenAI per request as well, the server may run out of file descriptors before it reaches the cap; raise the limit (ulimit -n, LimitNOFILE=) or lower {}",
                vars::MAX_CONNECTIONS,
                vars::MAX_CONNECTIONS
            ));
        }

        let log_format = match r.get(vars::LOG_FORMAT).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                r.problem(
                    vars::LOG_FORMAT,
                    format!("must be json or pretty, not {other:?}"),
                );
                LogFormat::Json
            }
        };

        match (redirect_uri, oidc_issuer, openai_base_url) {
            (Some(redirect_uri), Some(oidc_issuer), Some(openai_base_url))
                if r.problems.is_empty() =>
            {
                Ok(Self {
                    allow,
                    management_key,
                    client_id,
                    client_secret,
                    redirect_uri_text: redirect_raw,
                    redirect_uri,
                    project,
                    bind_address,
                    port,
                    expiration,
                    cleanup_interval,
                    timeout,
                    cleanup_concurrency,
                    cleanup_legacy_accounts,
                    oidc_issuer,
                    accepted_issuers,
                    openai_base_url,
                    session_secret,
                    session_secret_previous,
                    secret_files: r.secret_files.clone(),
                    log_format,
                    allow_unmanaged_emails,
                    max_keys_per_user: usize::try_from(max_keys_per_user).unwrap_or(usize::MAX),
                    rate_limit_per_user,
                    rate_limit_per_ip,
                    rate_limit_revoke,
                    server_timing,
                    trusted_proxies,
                    max_connections: ConnectionLimit::new(max_connections),
                    admins,
                    session_ttl,
                    cli_session_ttl,
                    device_poll_interval,
                    issue_on_sign_in,
                    listing_max_age,
                    revoke_endpoint,
                    metrics_address,
                    audit_log_file: r.get(vars::AUDIT_LOG_FILE).map(PathBuf::from),
                    budget,
                    usage_poll_interval,
                    model_prices,
                    policy_path: r.get(vars::POLICY_FILE),
                    policy_file,
                    browser_issuers,
                    warnings,
                })
            }
            _ => Err(Error {
                problems: r.problems,
            }),
        }
    }

    /// The policy's rules: the file's, or the one rule the allow-list
    /// variables imply.
    pub fn rules(&self) -> Vec<crate::access::Rule> {
        match &self.policy_file {
            Some(file) => file.rules.clone(),
            None => {
                let mut rules = crate::access::Policy::from_env(
                    self.allow.clone(),
                    self.expiration,
                    self.max_keys_per_user,
                    self.rate_limit_per_user,
                );
                for rule in &mut rules {
                    rule.budget = self.budget;
                }
                rules
            }
        }
    }

    /// The policy these settings make: the rules, `ALLOW_UNMANAGED_EMAILS`,
    /// `ADMIN_USERS`, and the issuers that manage their accounts. The one
    /// the server decides with, and `explain` too.
    pub fn policy(&self) -> crate::access::Policy {
        crate::access::Policy::new(
            self.rules(),
            self.allow_unmanaged_emails,
            self.admins.clone(),
        )
        .with_managed_issuers(
            self.issuers()
                .iter()
                .filter(|i| i.browser.is_some() && i.managed)
                .map(|i| i.name.clone()),
        )
    }

    /// Every project keys go to: the server's own first, then each other one
    /// a rule of the policy names, once.
    pub fn project_selectors(&self) -> Vec<ProjectSelector> {
        let mut selectors = vec![self.project.clone()];
        for rule in self.rules() {
            let selector = match rule.project {
                crate::access::ProjectChoice::Default => continue,
                crate::access::ProjectChoice::Id(id) => ProjectSelector::Id(id),
                crate::access::ProjectChoice::Name(name) => ProjectSelector::Name(name),
            };
            if !selectors.contains(&selector) {
                selectors.push(selector);
            }
        }
        selectors
    }

    /// The policy file's issuers (none without one).
    pub fn issuers(&self) -> &[crate::access::IssuerSpec] {
        self.policy_file.as_ref().map_or(&[], |file| &file.issuers)
    }

    /// The domain claim of the environment's issuer, if the policy file
    /// gives one.
    pub fn env_domain_claim(&self) -> Option<String> {
        self.issuers()
            .iter()
            .find(|issuer| issuer.name == crate::access::ENV_ISSUER)?
            .domain_claim
            .clone()
    }

    /// The groups claim of the environment's issuer, if the policy file
    /// gives one.
    pub fn env_groups_claim(&self) -> Option<String> {
        self.policy_file
            .as_ref()?
            .issuers
            .iter()
            .find(|issuer| issuer.name == crate::access::ENV_ISSUER)?
            .groups_claim
            .clone()
    }

    /// True when the public URL is https, so cookies must be `Secure`.
    pub fn is_https(&self) -> bool {
        self.redirect_uri.scheme() == "https"
    }

    /// The effective settings as `NAME=value` lines, secrets redacted, for
    /// `check-config`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let join = |items: Vec<String>| {
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.join(",")
            }
        };
        let (project_var, project) = match &self.project {
            ProjectSelector::Name(name) => (vars::DEFAULT_PROJECT_NAME, name.clone()),
            ProjectSelector::Id(id) => (vars::OPENAI_PROJECT_ID, id.clone()),
        };
        let mut lines = vec![
            (
                vars::ALLOWED_USERS,
                join(self.allow.users.iter().map(ToString::to_string).collect()),
            ),
            (
                vars::ALLOWED_DOMAINS,
                join(self.allow.domains.iter().map(ToString::to_string).collect()),
            ),
            (vars::OPENAI_MANAGEMENT_KEY, "[REDACTED]".to_owned()),
            (vars::CLIENT_ID, self.client_id.clone()),
            (vars::CLIENT_SECRET, "[REDACTED]".to_owned()),
            (vars::REDIRECT_URI, self.redirect_uri.to_string()),
            (project_var, project),
            (vars::BIND_ADDRESS, self.bind_address.to_string()),
            (vars::PORT, self.port.to_string()),
            (vars::EXPIRATION, self.expiration.as_secs().to_string()),
            (
                vars::CLEANUP_INTERVAL,
                self.cleanup_interval.as_secs().to_string(),
            ),
            (vars::TIMEOUT, self.timeout.as_secs().to_string()),
            (
                vars::CLEANUP_CONCURRENCY,
                self.cleanup_concurrency.to_string(),
            ),
            (
                vars::CLEANUP_LEGACY_ACCOUNTS,
                self.cleanup_legacy_accounts.to_string(),
            ),
            (vars::OIDC_ISSUER_URL, self.oidc_issuer.to_string()),
            (vars::OIDC_ACCEPTED_ISSUERS, self.accepted_issuers.join(",")),
            (
                vars::OPENAI_ADMIN_BASE_URL,
                self.openai_base_url.to_string(),
            ),
            (
                vars::SESSION_SECRET,
                if self.session_secret.is_some() {
                    "[REDACTED]".to_owned()
                } else {
                    "(unset: random per process)".to_owned()
                },
            ),
            (
                vars::SESSION_SECRET_PREVIOUS,
                if self.session_secret_previous.is_some() {
                    "[REDACTED]".to_owned()
                } else {
                    "(unset)".to_owned()
                },
            ),
            (
                vars::LOG_FORMAT,
                match self.log_format {
                    LogFormat::Json => "json".to_owned(),
                    LogFormat::Pretty => "pretty".to_owned(),
                },
            ),
            (
                vars::ALLOW_UNMANAGED_EMAILS,
                self.allow_unmanaged_emails.to_string(),
            ),
            (vars::MAX_KEYS_PER_USER, self.max_keys_per_user.to_string()),
            (
                vars::RATE_LIMIT_PER_USER,
                self.rate_limit_per_user.to_string(),
            ),
            (vars::RATE_LIMIT_PER_IP, self.rate_limit_per_ip.to_string()),
            (vars::RATE_LIMIT_REVOKE, self.rate_limit_revoke.to_string()),
            (vars::SERVER_TIMING, self.server_timing.to_string()),
            (
                vars::TRUSTED_PROXIES,
                if self.trusted_proxies.is_empty() {
                    "(none: every request's address is its TCP peer)".to_owned()
                } else {
                    self.trusted_proxies.to_string()
                },
            ),
            (
                vars::ADMIN_USERS,
                join(self.admins.iter().map(ToString::to_string).collect()),
            ),
            (vars::SESSION_TTL, self.session_ttl.as_secs().to_string()),
            (
                vars::CLI_SESSION_TTL,
                self.cli_session_ttl.as_secs().to_string(),
            ),
            (
                vars::DEVICE_POLL_INTERVAL,
                self.device_poll_interval.as_secs().to_string(),
            ),
            (vars::ISSUE_ON_SIGN_IN, self.issue_on_sign_in.to_string()),
            (
                vars::LISTING_MAX_AGE,
                self.listing_max_age.as_secs().to_string(),
            ),
            (
                vars::AUDIT_LOG_FILE,
                self.audit_log_file.as_ref().map_or_else(
                    || "(none: audit events in the log only)".to_owned(),
                    |p| p.display().to_string(),
                ),
            ),
            (vars::TOKENS_PER_DAY, self.budget.tokens_per_day.to_string()),
            (
                vars::USD_PER_MONTH,
                format!(
                    "{}.{:02}",
                    self.budget.cents_per_month / 100,
                    self.budget.cents_per_month % 100
                ),
            ),
            (
                vars::ON_OVER_BUDGET,
                if self.budget.revoke {
                    "revoke"
                } else {
                    "refuse"
                }
                .to_owned(),
            ),
            (
                vars::USAGE_POLL_INTERVAL,
                self.usage_poll_interval
                    .map_or_else(|| "0 (off)".to_owned(), |d| d.as_secs().to_string()),
            ),
            (
                vars::METRICS_ADDRESS,
                self.metrics_address.map_or_else(
                    || "(none: /metrics on the main listener)".to_owned(),
                    |a| a.to_string(),
                ),
            ),
            (
                vars::REVOKE_ENDPOINT,
                match self.revoke_endpoint {
                    RevokeEndpoint::Public => "public",
                    RevokeEndpoint::Admin => "admin",
                    RevokeEndpoint::Off => "off",
                }
                .to_owned(),
            ),
            (
                vars::MAX_CONNECTIONS,
                match self.max_connections.derived_from_fd_limit {
                    None => self.max_connections.max.to_string(),
                    Some(fds) => format!(
                        "{} (derived from the open-file limit {fds})",
                        self.max_connections.max
                    ),
                },
            ),
            (
                vars::POLICY_FILE,
                self.policy_path.clone().unwrap_or_else(|| {
                    "(none: the allow-list variables make the one rule below)".to_owned()
                }),
            ),
        ];
        for issuer in self.issuers() {
            lines.push(("issuer", issuer.describe()));
        }
        for (i, rule) in self.rules().iter().enumerate() {
            lines.push(("rule", format!("{}. {}", i + 1, rule.describe())));
        }
        lines
    }
}

mod connections;
#[cfg(test)]
mod tests;

pub use connections::{ConnectionLimit, open_file_limit};
