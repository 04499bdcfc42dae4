//! `demo`: the sandbox and a key server wired to it, on this machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use sandbox::Sandbox;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::{Config, LogFormat, vars};
use crate::{Application, shutdown_signal, telemetry};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port of the key server.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Addresses allowed to get a key (comma-separated).
    #[arg(long, default_value = "you@example.com")]
    pub allow_users: String,
    /// Workspace domains allowed to get a key (comma-separated).
    #[arg(long, default_value = "")]
    pub allow_domains: String,
    /// Key lifetime in seconds (short, so that you can watch a key expire).
    #[arg(long, default_value_t = 120)]
    pub expiration: u64,
    /// Seconds between two cleanups.
    #[arg(long, default_value_t = 10)]
    pub cleanup_interval: u64,
}

/// Starts the sandbox and the server, prints where to go, runs until Ctrl-C.
pub(super) async fn run(args: Args) -> ExitCode {
    telemetry::init(LogFormat::Pretty);
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let sandbox = Sandbox::builder()
        .oidc(sandbox::oidc::Config {
            form_default_email: Some("you@example.com".into()),
            form_default_hd: Some("example.com".into()),
            ..sandbox::oidc::Config::default()
        })
        .start()
        .await?;
    let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
    let listener = TcpListener::bind(at).await.map_err(|error| {
        let why = if error.kind() == std::io::ErrorKind::AddrInUse {
            "something else is listening there".to_owned()
        } else {
            error.to_string()
        };
        anyhow::anyhow!(
            "cannot listen on {at} ({why}); pick another port with --port, e.g. `demo --port 9000`"
        )
    })?;
    let addr = listener.local_addr()?;
    let redirect_uri = format!("http://{addr}/oauth2/callback");
    sandbox.oidc.allow_redirect_uri(&redirect_uri);

    let mut env: Vec<(String, String)> = sandbox
        .env(&redirect_uri)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.extend([
        (vars::ALLOWED_USERS.to_owned(), args.allow_users.clone()),
        (vars::ALLOWED_DOMAINS.to_owned(), args.allow_domains.clone()),
        (vars::EXPIRATION.to_owned(), args.expiration.to_string()),
        (
            vars::CLEANUP_INTERVAL.to_owned(),
            args.cleanup_interval.to_string(),
        ),
        (vars::LOG_FORMAT.to_owned(), "pretty".to_owned()),
        (vars::PORT.to_owned(), addr.port().to_string()),
        // One process, sessions that end with it: a fresh secret, and no
        // warning about it.
        (vars::SESSION_SECRET.to_owned(), {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
        }),
    ]);
    let config =
        Config::from_lookup(|var| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;

    let clock = sandbox.clock.clone();
    let app = Application::build_with(config, listener, Clock::from_fn(move || clock.now()))?;
    let (openai, google, _) = sandbox.addrs();
    println!();
    println!("  openai-key-server demo");
    println!("  ----------------------");
    println!("  Open http://{addr}/ in a browser and sign in through the sandbox's form.");
    println!("  Allowed users:   {}", args.allow_users);
    if !args.allow_domains.is_empty() {
        println!("  Allowed domains: {}", args.allow_domains);
    }
    println!(
        "  Keys live {} s; try another email to see a refusal.",
        args.expiration
    );
    println!(
        "  Fake OpenAI:     http://{openai}/v1   (check a key: curl -H \"Authorization: Bearer $KEY\" http://{openai}/v1/models)"
    );
    println!("  Fake Google:     http://{google}/");
    println!(
        "  From a terminal: openai-key-server login --server http://{addr}   then   openai-key-server key"
    );
    println!("  Stop with Ctrl-C.");
    println!();
    app.run(shutdown_signal()).await?;
    drop(sandbox);
    Ok(())
}
