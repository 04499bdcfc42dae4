//! `sandbox`: runs the fake OpenAI Admin API, the fake Google and the fake
//! CI issuer on loopback, prints the settings a key server needs as
//! `NAME=value` lines, and serves until interrupted.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sandbox::Sandbox;
use sandbox::oidc::{Identity, IssuerForm};
use sandbox::openai::{ApiVersion, Fault};

/// Every control route, for `--help`. Kept next to the flags so that a new
/// knob is documented in one place.
const CONTROL_ROUTES: &str = "\
RUN-TIME CONTROL (JSON over HTTP, no auth, loopback only)

The knobs of the fakes (not ports, keys or client credentials) can also be
changed while the sandbox runs, and a few more exist only here. Bodies are
JSON; errors on the OpenAI port use the OpenAI error shape.

On the fake OpenAI port (and the clock on every port):
  GET  /_sandbox/clock                  {\"now\", \"offset_ms\"} of the shared virtual clock
  POST /_sandbox/clock                  {\"advance_seconds\": N} or {\"offset_seconds\": N}:
                                        move time for both fakes (keys and tokens expire)
  GET  /_sandbox/openai/config          the fake OpenAI's knobs, as they are now
  POST /_sandbox/openai/config          change some of: version (\"current\"|\"legacy\"),
                                        scope_error_status (401|403), max_key_lifetime_secs
                                        (null lifts it), latency_ms, jitter_ms,
                                        rate_limit_per_s (null lifts it), rate_limit_burst
  GET  /_sandbox/openai/faults          the fault plan
  POST /_sandbox/openai/faults          add a rule or a list of rules, e.g.
                                        {\"method\":\"POST\",\"path_contains\":\"/service_accounts\",
                                         \"count\":1,\"kind\":{\"type\":\"commit_then_fail\",\"status\":500}}
                                        kinds: status (+ status, retry_after), delay (+ ms),
                                        delay_answer (+ ms: done at once, answered late), hang,
                                        malformed_json, commit_then_fail (+ status), commit_then_hang,
                                        oversized (+ bytes: a 200 that large, chunked)
  DELETE /_sandbox/openai/faults        empty the fault plan
  POST /_sandbox/openai/projects        {\"name\"}: create a project
  POST /_sandbox/openai/seed            {\"project_id\"?, \"accounts\": [{\"name\", \"created_at\",
                                        \"expires_at\"?, \"role\"?}]}: pre-existing service accounts
  POST /_sandbox/openai/key-status      {\"value\"}: whether a key would authenticate now
  POST /_sandbox/openai/usage           {\"key\", \"model\"?, \"input_tokens\", \"output_tokens\"?}: usage by that key, now
  GET  /_sandbox/openai/state           dump of projects, accounts, keys (never values), knobs
  GET  /_sandbox/openai/counters        calls by method and route, by status, 429s
  GET  /_sandbox/openai/journal         every request: method, path, query, body, status,
                                        SHA-256 of the Authorization header, request id
  POST /_sandbox/openai/reset-counters  forget counters and journal

On the fake Google port, under /_sandbox/oidc/:
  POST queue-identity        {\"email\", \"hd\"?, \"email_verified\"?, \"name\"?, \"sub\"?}: the next
                             sign-in, without the form
  POST auto-approve          an identity (or null): every sign-in, without the form
  GET  fixtures              the test users alice, mallory, bob, eve, carol, dave, alice2;
                             login_hint=<id or email> on the authorization URL signs one in
  POST deny-next             the next sign-in is refused (error=access_denied)
  POST allow-redirect-uri    {\"redirect_uri\"}
  POST require-pkce-s256     {\"enabled\"}
  POST code-ttl              {\"seconds\"}: lifetime of new authorization codes
  POST issuer-form           {\"form\": \"https\"|\"bare\"|\"alternate\"}: how tokens spell iss
  POST rotate-keys           {\"keep_old\"?, \"overlap_seconds\"?}: sign with a new kid
  POST publish-next-key      publish the next key before it signs anything
  POST override-next-token   {\"claims\"?, \"header\"?, \"signing\"?, \"tamper_payload_after_signing\"?}:
                             signing is normal, alg_none, hs256_with_public_key, foreign_key
                             or unknown_kid; a null claim removes it
  POST mint-id-token         any claims: an RS256 token signed with the current key
  POST jwks-max-age          {\"seconds\"}
  POST fail-next-jwks        {\"count\"}: JWKS answers 500
  POST hang-next-jwks        {\"count\"}: JWKS never answers
  POST fail-next-token       {\"count\", \"status\"?}: the token endpoint fails
  POST oversize-next         {\"endpoint\": discovery|jwks|token, \"count\"?, \"bytes\"}: a 200
                             that large, chunked
  POST rotate-refresh-tokens {\"enabled\"}: refresh grants also return a new refresh token
  GET  stats                 JWKS fetches, codes issued, kids, counters
  GET  journal               every request, with body and Authorization hash

On the fake CI port: POST /_sandbox/oidc/github-token {\"repository\", \"ref\", \"audience\"?,
\"environment\"?, \"extra\"?} answers {\"value\": <JWT>} like GitHub's token service;
GET /_sandbox/oidc/actions-token?repository=O/R&ref=REF with Authorization: bearer <anything>
is a job's ACTIONS_ID_TOKEN_REQUEST_URL (a step appends &audience=...).";

/// Local stand-ins for the OpenAI Admin API and a Google-style OIDC
/// provider, for trying and testing openai-key-server without any account.
///
/// Standard output gets `.env` lines for the key server (`OIDC_ISSUER_URL`,
/// `OPENAI_ADMIN_BASE_URL`, `OPENAI_MANAGEMENT_KEY`, `CLIENT_ID`,
/// `CLIENT_SECRET`, `REDIRECT_URI`, and the `ALLOWED_*` lines chosen below);
/// paste them into its `.env`. Everything else goes to standard error. The
/// sandbox runs until Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version, after_long_help = CONTROL_ROUTES)]
struct Args {
    // ----- where -----
    /// Loopback address to bind (`127.0.0.1` or `::1`; nothing else is
    /// allowed).
    #[arg(long, default_value = "127.0.0.1", help_heading = "Addresses")]
    bind: IpAddr,
    /// Port of the fake OpenAI API (0 picks a free one).
    #[arg(long, default_value_t = 0, help_heading = "Addresses")]
    openai_port: u16,
    /// Port of the fake Google (0 picks a free one).
    #[arg(long, default_value_t = 0, help_heading = "Addresses")]
    oidc_port: u16,
    /// Port of the fake GitHub Actions token issuer (0 picks a free one).
    #[arg(long, default_value_t = 0, help_heading = "Addresses")]
    github_port: u16,

    // ----- printed settings -----
    /// `ALLOWED_USERS` line to print: comma-separated addresses the key
    /// server should let in; empty prints no line. The default is the
    /// address the sign-in form suggests.
    #[arg(
        long,
        default_value = "you@example.com",
        help_heading = "Printed settings"
    )]
    allowed_users: String,
    /// `ALLOWED_DOMAINS` line to print: comma-separated Workspace domains
    /// (matched against the `hd` claim); empty prints no line.
    #[arg(long, default_value = "", help_heading = "Printed settings")]
    allowed_domains: String,

    // ----- the fake OpenAI -----
    /// Admin key the fake OpenAI accepts (random `sk-admin-…` when unset).
    #[arg(long, help_heading = "Fake OpenAI")]
    admin_key: Option<String>,
    /// Admin API generation: `current` (with `expires_in_seconds`,
    /// `expires_at` and the key-update endpoint) or `legacy` (the mid-2026
    /// public spec, without them; service-account keys cannot be deleted
    /// one by one).
    #[arg(long, value_enum, default_value_t = Version::Current, help_heading = "Fake OpenAI")]
    api_version: Version,
    /// Organisation expiry policy: longest key lifetime in seconds. Every
    /// key-creating call must then send `expires_in_seconds` no larger than
    /// this (else 400).
    #[arg(long, value_name = "SECONDS", help_heading = "Fake OpenAI")]
    max_key_lifetime: Option<u64>,
    /// Status of "Missing scopes" answers, e.g. an issued key used on an
    /// admin route: 401 (as observed) or 403 (as the spec says).
    #[arg(long, value_enum, default_value_t = ScopeStatus::Unauthorized, help_heading = "Fake OpenAI")]
    scope_error_status: ScopeStatus,
    /// Latency added to every Admin API answer, in milliseconds.
    #[arg(long, default_value_t = 0, help_heading = "Fake OpenAI")]
    latency_ms: u64,
    /// Extra random latency, uniform from 0 to this many milliseconds.
    #[arg(long, default_value_t = 0, help_heading = "Fake OpenAI")]
    jitter_ms: u64,
    /// Request-rate limit on `/v1/organization` routes, requests per second
    /// (virtual clock); beyond it the answer is 429 with `Retry-After`.
    #[arg(long, value_name = "PER_SECOND", help_heading = "Fake OpenAI")]
    rate_limit: Option<f64>,
    /// Bucket size of the rate limit (requests allowed at once); the rate,
    /// at least 1, when unset.
    #[arg(long, value_name = "REQUESTS", help_heading = "Fake OpenAI")]
    rate_limit_burst: Option<f64>,
    /// A fault-plan rule as JSON (repeatable), e.g.
    /// `{"path_contains":"/service_accounts","count":2,"kind":{"type":"status","status":429,"retry_after":3}}`.
    /// See the control routes below for the kinds.
    #[arg(long = "fault", value_name = "JSON", value_parser = parse_fault, help_heading = "Fake OpenAI")]
    faults: Vec<Fault>,

    // ----- the fake Google -----
    /// OAuth client id of the fake Google (random `…apps.googleusercontent.com`
    /// when unset).
    #[arg(long, help_heading = "Fake Google")]
    client_id: Option<String>,
    /// OAuth client secret of the fake Google (random `GOCSPX-…` when unset).
    #[arg(long, help_heading = "Fake Google")]
    client_secret: Option<String>,
    /// Redirect URI the fake Google accepts (repeatable; compared exactly).
    /// The first one is printed as `REDIRECT_URI`.
    #[arg(long = "redirect-uri", value_name = "URI", default_values_t = [
        "http://127.0.0.1:8080/oauth2/callback".to_owned(),
        "http://localhost:8080/oauth2/callback".to_owned(),
    ], help_heading = "Fake Google")]
    redirect_uris: Vec<String>,
    /// Email prefilled in the sign-in form.
    #[arg(long, default_value = "you@example.com", help_heading = "Fake Google")]
    form_email: String,
    /// Hosted domain (`hd`) prefilled in the sign-in form (empty: a consumer
    /// account).
    #[arg(long, default_value = "example.com", help_heading = "Fake Google")]
    form_hd: String,
    /// Sign everyone in as this Workspace address (its domain as `hd`)
    /// without showing the form, for scripts and benchmarks.
    #[arg(long, value_name = "EMAIL", help_heading = "Fake Google")]
    auto_approve: Option<String>,
    /// Refuse authorization requests without an `S256` PKCE challenge.
    #[arg(long, help_heading = "Fake Google")]
    require_pkce_s256: bool,
    /// Lifetime of authorization codes, in seconds.
    #[arg(
        long,
        default_value_t = 600,
        value_name = "SECONDS",
        help_heading = "Fake Google"
    )]
    code_ttl: u64,
    /// How ID tokens spell `iss`: `https` (the issuer URL), `bare` (without
    /// the scheme, like Google's `accounts.google.com`) or `alternate`
    /// (both by turns). Other than `https`, an `OIDC_ACCEPTED_ISSUERS` line
    /// is printed too.
    #[arg(long, value_enum, default_value_t = Form::Https, help_heading = "Fake Google")]
    issuer_form: Form,
    /// JWKS `Cache-Control: max-age`, in seconds.
    #[arg(
        long,
        default_value_t = 21_600,
        value_name = "SECONDS",
        help_heading = "Fake Google"
    )]
    jwks_max_age: u64,

    // ----- both -----
    /// Start the shared virtual clock this many seconds off real time
    /// (negative: in the past).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    clock_offset: i64,
}

/// `--api-version`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    Current,
    Legacy,
}

/// `--scope-error-status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeStatus {
    #[value(name = "401")]
    Unauthorized,
    #[value(name = "403")]
    Forbidden,
}

/// `--issuer-form`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Form {
    Https,
    Bare,
    Alternate,
}

fn parse_fault(json: &str) -> Result<Fault, String> {
    let fault: Fault = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if fault.count == 0 {
        return Err("a fault's count must be at least 1".to_owned());
    }
    Ok(fault)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let openai = sandbox::openai::Config {
        admin_key: args.admin_key.clone(),
        version: match args.api_version {
            Version::Current => ApiVersion::Current,
            Version::Legacy => ApiVersion::Legacy,
        },
        scope_error_status: match args.scope_error_status {
            ScopeStatus::Unauthorized => 401,
            ScopeStatus::Forbidden => 403,
        },
        max_key_lifetime_secs: args.max_key_lifetime,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        rate_limit_per_s: args.rate_limit,
        rate_limit_burst: args.rate_limit_burst,
        faults: args.faults.clone(),
    };
    let issuer_form = match args.issuer_form {
        Form::Https => IssuerForm::Https,
        Form::Bare => IssuerForm::Bare,
        Form::Alternate => IssuerForm::Alternate,
    };
    let mut oidc = sandbox::oidc::Config {
        redirect_uris: args.redirect_uris.clone(),
        form_default_email: Some(args.form_email.clone()).filter(|email| !email.is_empty()),
        form_default_hd: Some(args.form_hd.clone()).filter(|hd| !hd.is_empty()),
        jwks_max_age: Duration::from_secs(args.jwks_max_age),
        code_ttl: Duration::from_secs(args.code_ttl),
        require_pkce_s256: args.require_pkce_s256,
        issuer_form,
        ..sandbox::oidc::Config::default()
    };
    if let Some(id) = &args.client_id {
        oidc.client_id.clone_from(id);
    }
    if let Some(secret) = &args.client_secret {
        oidc.client_secret.clone_from(secret);
    }

    let sandbox = Sandbox::builder()
        .bind(args.bind)
        .ports(args.openai_port, args.oidc_port, args.github_port)
        .clock_offset_secs(args.clock_offset)
        .openai(openai)
        .oidc(oidc)
        .start()
        .await?;
    if let Some(email) = &args.auto_approve {
        sandbox
            .oidc
            .set_auto_approve(Some(Identity::workspace(email)));
    }

    let redirect_uri = args.redirect_uris.first().cloned().unwrap_or_default();
    for (name, value) in settings(&sandbox, &args, &redirect_uri) {
        println!("{name}={value}");
    }
    let (openai_addr, oidc_addr, _) = sandbox.addrs();
    eprintln!();
    eprintln!("sandbox running (Ctrl-C to stop; `sandbox --help` lists every knob)");
    eprintln!("  fake OpenAI:  {}", sandbox.openai_base_url());
    eprintln!("  fake Google:  {}", sandbox.oidc_issuer_url());
    eprintln!("  fake CI OIDC: {}", sandbox.github_issuer_url());
    eprintln!(
        "  control:      http://{openai_addr}/_sandbox/openai/state, http://{openai_addr}/_sandbox/clock, http://{oidc_addr}/_sandbox/oidc/stats"
    );
    eprintln!(
        "  try:          curl -s -H \"Authorization: Bearer {}\" {}/organization/projects",
        sandbox.openai.admin_key(),
        sandbox.openai_base_url()
    );
    eprintln!(
        "                curl -s {}/.well-known/openid-configuration",
        sandbox.oidc_issuer_url()
    );
    shutdown().await?;
    Ok(())
}

/// The `NAME=value` lines: what [`Sandbox::env`] gives, plus the ones that
/// depend on flags.
fn settings(sandbox: &Sandbox, args: &Args, redirect_uri: &str) -> Vec<(&'static str, String)> {
    let mut lines = sandbox.env(redirect_uri);
    if !matches!(args.issuer_form, Form::Https) {
        // Tokens then carry the scheme-less issuer, which the key server
        // only accepts when told to.
        let issuer = sandbox.oidc_issuer_url();
        let bare = issuer
            .split_once("://")
            .map_or(issuer.as_str(), |(_, rest)| rest);
        lines.push(("OIDC_ACCEPTED_ISSUERS", bare.to_owned()));
    }
    if !args.allowed_users.is_empty() {
        lines.push(("ALLOWED_USERS", args.allowed_users.clone()));
    }
    if !args.allowed_domains.is_empty() {
        lines.push(("ALLOWED_DOMAINS", args.allowed_domains.clone()));
    }
    lines
}

/// Waits for Ctrl-C, or SIGTERM where there is one.
async fn shutdown() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn faults_parse_from_json_and_a_zero_count_is_refused() {
        let fault = parse_fault(r#"{"path_contains":"/x","kind":{"type":"hang"}}"#).unwrap();
        assert_eq!(fault.count, 1);
        assert!(parse_fault(r#"{"count":0,"kind":{"type":"hang"}}"#).is_err());
        assert!(parse_fault("nope").is_err());
    }
}
