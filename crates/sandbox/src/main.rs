//! `sandbox`: runs the fake OpenAI Admin API, the fake Google and the fake
//! CI issuer on loopback, prints the settings a key server needs as
//! `NAME=value` lines, and serves until interrupted.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use sandbox::Sandbox;
use sandbox::oidc::Identity;
use sandbox::openai::ApiVersion;

/// Local stand-ins for the OpenAI Admin API and a Google-style OIDC
/// provider, for trying and testing openai-key-server without any account.
///
/// Standard output gets `.env` lines (paste them into the key server's
/// `.env`); everything else goes to standard error. Every knob can also be
/// changed while it runs through the JSON control routes under `/_sandbox/`
/// (see the README).
#[derive(Debug, Parser)]
#[command(name = "sandbox", version)]
struct Args {
    /// Loopback address to bind (`127.0.0.1` or `::1`).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port of the fake OpenAI API (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    openai_port: u16,
    /// Port of the fake Google (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    oidc_port: u16,
    /// Port of the fake GitHub Actions token issuer (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    github_port: u16,
    /// Redirect URI the fake Google accepts for the key server (repeatable).
    #[arg(long = "redirect-uri", default_values_t = [
        "http://127.0.0.1:8080/oauth2/callback".to_owned(),
        "http://localhost:8080/oauth2/callback".to_owned(),
    ])]
    redirect_uris: Vec<String>,
    /// Admin key the fake OpenAI accepts (random `sk-admin-…` when unset).
    #[arg(long)]
    admin_key: Option<String>,
    /// OAuth client id of the fake Google (random when unset).
    #[arg(long)]
    client_id: Option<String>,
    /// OAuth client secret of the fake Google (random when unset).
    #[arg(long)]
    client_secret: Option<String>,
    /// Admin API generation: `current` (with `expires_in_seconds`) or
    /// `legacy` (the mid-2026 public spec, without it).
    #[arg(long, default_value = "current", value_parser = ["current", "legacy"])]
    api_version: String,
    /// Organisation expiry policy: longest key lifetime in seconds.
    #[arg(long)]
    max_key_lifetime: Option<u64>,
    /// Latency added to every Admin API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra random latency, 0 to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Admin API request-rate limit, requests per second (429 beyond it).
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Email prefilled in the sign-in form.
    #[arg(long, default_value = "you@example.com")]
    form_email: String,
    /// Hosted domain (`hd`) prefilled in the sign-in form.
    #[arg(long, default_value = "example.com")]
    form_hd: String,
    /// Sign everyone in as this Workspace address without showing the form
    /// (for scripts and benchmarks).
    #[arg(long)]
    auto_approve: Option<String>,
    /// JWKS `Cache-Control: max-age`, in seconds.
    #[arg(long, default_value_t = 21_600)]
    jwks_max_age: u64,
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

    let mut openai = sandbox::openai::Config {
        admin_key: args.admin_key.clone(),
        version: if args.api_version == "legacy" {
            ApiVersion::Legacy
        } else {
            ApiVersion::Current
        },
        max_key_lifetime_secs: args.max_key_lifetime,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        rate_limit_per_s: args.rate_limit,
        ..sandbox::openai::Config::default()
    };
    openai.faults.clear();
    let mut oidc = sandbox::oidc::Config {
        redirect_uris: args.redirect_uris.clone(),
        form_default_email: Some(args.form_email.clone()),
        form_default_hd: Some(args.form_hd.clone()).filter(|hd| !hd.is_empty()),
        jwks_max_age: Duration::from_secs(args.jwks_max_age),
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
        .openai(openai)
        .oidc(oidc)
        .start()
        .await?;
    if let Some(email) = &args.auto_approve {
        sandbox
            .oidc
            .set_auto_approve(Some(Identity::workspace(email)));
    }

    for (name, value) in sandbox.env(&args.redirect_uris[0]) {
        println!("{name}={value}");
    }
    let (openai_addr, _, github_addr) = sandbox.addrs();
    eprintln!();
    eprintln!("sandbox running (Ctrl-C to stop)");
    eprintln!("  fake OpenAI:  {}", sandbox.openai_base_url());
    eprintln!("  fake Google:  {}", sandbox.oidc_issuer_url());
    eprintln!("  fake CI OIDC: http://{github_addr}");
    eprintln!(
        "  control:      http://{openai_addr}/_sandbox/openai/state, /_sandbox/clock, and /_sandbox/oidc/* on the Google port"
    );
    eprintln!(
        "  try:          curl -s -H \"Authorization: Bearer {}\" {}/organization/projects",
        sandbox.openai.admin_key(),
        sandbox.openai_base_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
