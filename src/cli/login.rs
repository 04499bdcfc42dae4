//! `login` and `logout`: a CLI session for this user, and its end.
//!
//! The loopback sign-in follows `vault login -method=oidc` and RFC 8252:
//! the server stays the OAuth client (its own redirect URI, unchanged);
//! this process listens on 127.0.0.1 at a random port, sends the browser
//! to the server's `/cli/login` with a PKCE challenge, and gets back a
//! one-time code that only its verifier redeems. `--device` follows RFC
//! 8628 (`aws sso login --use-device-code`): a code to confirm in any
//! browser, and polls.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::mpsc;

use super::client::{Api, ApiError};
use super::context::{Context, ServerArgs, parse_server};
use super::store::{Session, Store};
use crate::api::CliSession;

/// How long the loopback listener waits for the browser.
const LOOPBACK_WAIT: Duration = Duration::from_secs(300);

/// Arguments of `login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Sign in on another device: print an address and a code to confirm
    /// there.
    #[arg(long)]
    device: bool,
    /// Print the sign-in address instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
}

/// Arguments of `logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Revoke without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Forget the session but leave the keys to expire on their own.
    #[arg(long, conflicts_with = "yes")]
    keep_keys: bool,
}

/// `login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let store = Store::locate()?;
    let raw = match &args.server.server {
        Some(server) => server.clone(),
        None => match store.settings()?.server {
            Some(server) => server,
            None => bail!(
                "which server? Run `openai-key-server login --server https://keys.example.com` (it is remembered after that)"
            ),
        },
    };
    let server = parse_server(&raw)?;
    let session = if args.device {
        device(&server, piped()).await?
    } else {
        loopback(&server, !args.no_browser, piped()).await?
    };
    store.remember_server(&server)?;
    let saved = Session {
        server: server.as_str().trim_end_matches('/').to_owned(),
        token: session.access_token,
        expires_at: session.expires_at,
        email: session.email,
    };
    store.save_session(&saved)?;
    let now = super::context::now();
    eprintln!(
        "Signed in to {} as {} until {} (in {}).",
        saved.server,
        saved.email,
        humantime::format_rfc3339_seconds(crate::clock::from_unix(saved.expires_at)),
        crate::clock::humanize(crate::clock::until(
            saved.expires_at,
            crate::clock::from_unix(now)
        ))
    );
    Ok(())
}

/// Signs in through the browser for `key --interactive`, and keeps the
/// session.
pub async fn login_interactively(context: &Context) -> anyhow::Result<Session> {
    // stdout is the key's alone here.
    let session = loopback(&context.server, true, false).await?;
    let saved = Session {
        server: context.server_text().to_owned(),
        token: session.access_token,
        expires_at: session.expires_at,
        email: session.email,
    };
    context.store.save_session(&saved)?;
    eprintln!("Signed in as {}.", saved.email);
    Ok(saved)
}

/// What the loopback listener heard.
struct Returned {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The loopback sign-in; the session it ends in.
/// With `echo`, the address is also printed alone on stdout, for a script
/// or a test that reads it there.
pub async fn loopback(server: &url::Url, open: bool, echo: bool) -> anyhow::Result<CliSession> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on 127.0.0.1 for the browser's return")?;
    let port = listener.local_addr()?.port();
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    let mut url = url::Url::parse(&format!(
        "{}/cli/login",
        server.as_str().trim_end_matches('/')
    ))
    .context("the sign-in address")?;
    url.query_pairs_mut()
        .append_pair("port", &port.to_string())
        .append_pair("code_challenge", &crate::api::challenge_of(&verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state);

    let (tx, mut rx) = mpsc::channel::<Returned>(4);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(
            move |axum::extract::Query(query): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >| {
                let tx = tx.clone();
                async move {
                    let returned = Returned {
                        code: query.get("code").cloned(),
                        state: query.get("state").cloned(),
                        error: query.get("error").cloned(),
                    };
                    let _ = tx.send(returned).await;
                    axum::response::Html(LOOPBACK_PAGE)
                }
            },
        ),
    );
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let opened = open && open_browser(url.as_str());
    if opened {
        eprintln!("Opened your browser to sign in. If it did not open, visit:\n\n    {url}\n");
    } else {
        eprintln!("To sign in, open this address in a browser on this machine:\n\n    {url}\n");
    }
    eprintln!("Waiting for the browser (up to 5 minutes; Ctrl-C to stop)…");
    if echo {
        println!("{url}");
    }

    let wait = async {
        while let Some(returned) = rx.recv().await {
            // Another page's request, or a stale tab: keep waiting for ours.
            if returned.state.as_deref() != Some(state.as_str()) {
                continue;
            }
            if let Some(error) = returned.error {
                bail!("the sign-in failed in the browser ({error})");
            }
            if let Some(code) = returned.code {
                return Ok(code);
            }
        }
        bail!("the loopback listener stopped")
    };
    let code = tokio::time::timeout(LOOPBACK_WAIT, wait)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no sign-in came back within 5 minutes; run `openai-key-server login` again"
            )
        })??;
    serving.abort();
    Api::new(server, None)
        .redeem(&code, &verifier)
        .await
        .map_err(|error| anyhow::anyhow!("the server refused the sign-in: {error}"))
}

/// The page the browser shows when it comes back to the terminal.
const LOOPBACK_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed in</title><meta name=\"referrer\" content=\"no-referrer\"></head><body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto\"><h1>Signed in</h1><p>Your terminal is signed in. You can close this tab and go back to it.</p></body></html>";

/// Opens `url` in the browser: `$BROWSER` (a `:`-separated list, as
/// Python's `webbrowser` reads it), else the platform's opener. True when
/// one started.
fn open_browser(url: &str) -> bool {
    let candidates: Vec<String> = match std::env::var("BROWSER") {
        Ok(list) if !list.trim().is_empty() => list.split(':').map(str::to_owned).collect(),
        _ if cfg!(target_os = "macos") => vec!["open".to_owned()],
        _ => vec!["xdg-open".to_owned()],
    };
    candidates.iter().any(|program| {
        std::process::Command::new(program)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
    })
}

/// The device sign-in; the session it ends in.
/// With `echo`, the address (code included) and the code are also printed
/// alone on stdout, one a line.
async fn device(server: &url::Url, echo: bool) -> anyhow::Result<CliSession> {
    let api = Api::new(server, None);
    let started = api
        .start_device()
        .await
        .map_err(|error| anyhow::anyhow!("could not start a device sign-in: {error}"))?;
    eprintln!(
        "On any device, open\n\n    {}\n\nand enter the code\n\n    {}\n\n(or open {} directly). The code works for {}.\nWaiting…",
        started.verification_uri,
        started.user_code,
        started.verification_uri_complete,
        crate::clock::humanize(Duration::from_secs(started.expires_in)),
    );
    if echo {
        println!(
            "{}\n{}",
            started.verification_uri_complete, started.user_code
        );
    }
    let mut interval = Duration::from_secs(started.interval.max(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(started.expires_in);
    loop {
        tokio::time::sleep(interval).await;
        match api.poll_device(&started.device_code).await {
            Ok(session) => return Ok(session),
            Err(error) => match error.code() {
                Some("authorization_pending") => {}
                Some("slow_down") => {
                    let told = match &error {
                        ApiError::Refused {
                            interval: Some(n), ..
                        } => Duration::from_secs(*n),
                        _ => interval + Duration::from_secs(5),
                    };
                    interval = told.max(interval + Duration::from_secs(5));
                }
                Some("expired_token") => bail!(
                    "the code expired before it was confirmed; run `openai-key-server login --device` again"
                ),
                Some("access_denied") => bail!("the sign-in was refused in the browser"),
                _ => bail!("the device sign-in failed: {error}"),
            },
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the code expired before it was confirmed; run `openai-key-server login --device` again"
            );
        }
    }
}

/// `logout`.
pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let context = Context::new(&args.server)?;
    let store = &context.store;
    let obtained: Vec<_> = store
        .obtained(context.now)?
        .into_iter()
        .filter(|k| k.server == context.server_text())
        .collect();
    let session = context.session()?;
    if !args.keep_keys && !obtained.is_empty() {
        match &session {
            Some(session) => {
                if !args.yes && !confirm(obtained.len())? {
                    bail!(
                        "nothing done: pass --yes to revoke the keys, or --keep-keys to leave them to expire"
                    );
                }
                let api = context.api(session);
                let mut failed = 0;
                for key in &obtained {
                    match api.delete_key(&key.id).await {
                        Ok(()) => {}
                        Err(error) if error.code() == Some("not_found") => {}
                        Err(error) => {
                            failed += 1;
                            eprintln!("could not revoke {}: {error}", key.id);
                        }
                    }
                }
                eprintln!("Revoked {} key(s).", obtained.len() - failed);
                if failed > 0 {
                    bail!(
                        "{failed} key(s) could not be revoked; the session is kept so you can try again"
                    );
                }
            }
            None => eprintln!(
                "The session has ended, so the {} key(s) this CLI obtained could not be revoked; they expire on their own (or revoke them on the server's page).",
                obtained.len()
            ),
        }
    }
    store.forget_all()?;
    match session {
        Some(session) => eprintln!(
            "Signed out of {} ({}).",
            context.server_text(),
            session.email
        ),
        None => eprintln!("Signed out of {}.", context.server_text()),
    }
    Ok(())
}

/// Whether stdout goes to a program rather than a person: then `login`
/// prints what to open there too (a person reads it on stderr once).
fn piped() -> bool {
    !std::io::stdout().is_terminal()
}

/// Asks on the terminal whether to revoke `n` keys; false without one.
fn confirm(n: usize) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("Revoke the {n} key(s) this CLI obtained? They stop working at once. [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
