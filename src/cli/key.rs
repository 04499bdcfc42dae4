//! The commands tools call: `key` (a credential helper: the key alone on
//! stdout), `env` (export lines), `exec` (a command with the key in its
//! environment), and `keys` / `revoke` for a person at the terminal.
//!
//! A key is cached in `key.json` and printed while it has more than the
//! margin left, with no call to the server; past the margin one process
//! renews it under a file lock while the others wait and then print what it
//! got, so ten tools starting at once mint one key.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use secrecy::ExposeSecret as _;

use super::client::ApiError;
use super::context::{Context, ServerArgs};
use super::store::{CachedKey, Obtained};

/// The least the margin ever is.
const MIN_MARGIN: Duration = Duration::from_secs(300);

/// How `key` prints the key.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Format {
    /// The key and a newline (Codex, goose, Claude Code's apiKeyHelper…).
    #[default]
    Plain,
    /// `{"key": …, "expires_at": …}` (Unix seconds).
    Json,
    /// AWS's `credential_process` JSON, with an ISO 8601 `Expiration`.
    CredentialProcess,
}

/// The options of every command that needs a key.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyOptions {
    #[command(flatten)]
    server: ServerArgs,
    /// Renew when less than this is left (e.g. 10m, 1h). Default: a tenth
    /// of the key's lifetime, at least 5 minutes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_remaining: Option<Duration>,
    /// Get a new key even if the cached one is still good (after a tool
    /// was told the key is no longer valid).
    #[arg(long)]
    renew: bool,
    /// Lifetime of a new key (e.g. 30m); at most what the server allows.
    /// Default: the longest allowed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Without a session, sign in through the browser rather than fail.
    #[arg(long)]
    interactive: bool,
}

/// Arguments of `key`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[command(flatten)]
    options: KeyOptions,
    /// How to print it.
    #[arg(long, value_enum, default_value_t = Format::Plain)]
    format: Format,
}

/// The shell whose syntax `env` prints.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Shell {
    /// `export OPENAI_API_KEY='…'` (sh, bash, zsh).
    #[default]
    Sh,
    /// `set -gx OPENAI_API_KEY '…'`.
    Fish,
    /// `$env:OPENAI_API_KEY = '…'`.
    Powershell,
}

/// Arguments of `env`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[command(flatten)]
    options: KeyOptions,
    /// Which shell's syntax.
    #[arg(long, value_enum, default_value_t = Shell::Sh)]
    shell: Shell,
}

/// Arguments of `exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    options: KeyOptions,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

/// Arguments of `keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON (the API's own answer) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The key's id (the ID column of `keys`).
    id: String,
}

/// The margin of a key of `lifetime`: `wanted`, or a tenth of its life and
/// at least five minutes, and never more than half its life (a short-lived
/// key would otherwise be renewed at every call).
fn margin(lifetime: Duration, wanted: Option<Duration>) -> Duration {
    wanted.unwrap_or_else(|| (lifetime / 10).max(MIN_MARGIN).min(lifetime / 2))
}

impl CachedKey {
    fn good(&self, context: &Context, wanted: Option<Duration>) -> bool {
        let lifetime =
            Duration::from_secs(u64::try_from(self.expires_at - self.issued_at).unwrap_or(0));
        let left = Duration::from_secs(u64::try_from(self.expires_at - context.now).unwrap_or(0));
        self.server == context.server_text() && left > margin(lifetime, wanted)
    }
}

/// A key with enough time left: the cached one, or a new one.
async fn current_key(options: &KeyOptions) -> anyhow::Result<CachedKey> {
    let context = Context::new(&options.server)?;
    let store = &context.store;
    let before = store.key()?;
    if !options.renew
        && let Some(key) = before.as_ref()
        && key.good(&context, options.min_remaining)
    {
        return before.context("just read");
    }
    let _lock = store.lock()?;
    // Another process may have renewed while this one waited: then its key
    // is the one to print (with --renew too: it is new).
    let cached = store.key()?;
    if let Some(key) = cached.as_ref()
        && key.good(&context, options.min_remaining)
        && (!options.renew || before.as_ref().is_none_or(|old| old.id != key.id))
    {
        return cached.context("just read");
    }
    let session = match context.session()? {
        Some(session) => session,
        None if options.interactive => {
            eprintln!("Not signed in to {}: signing in.", context.server_text());
            super::login::login_interactively(&context).await?
        }
        None => {
            let message = format!(
                "not signed in to {} (or the session ended): run `openai-key-server login`",
                context.server_text()
            );
            if options.renew {
                bail!(message);
            }
            return fallback(&context, cached, || message);
        }
    };
    let api = context.api(&session);
    let ttl = options.ttl.map(|t| t.as_secs().max(1));
    match api.create_key(ttl).await {
        Ok(new) => {
            let key = CachedKey {
                server: context.server_text().to_owned(),
                id: new.id,
                key: new.key,
                expires_at: new.expires_at,
                issued_at: context.now,
            };
            store.save_key(&key)?;
            store.record_obtained(
                Obtained {
                    server: key.server.clone(),
                    id: key.id.clone(),
                    expires_at: key.expires_at,
                },
                context.now,
            )?;
            Ok(key)
        }
        Err(error) => {
            let message = explain(&error);
            if options.renew {
                bail!(message);
            }
            fallback(&context, cached, || message)
        }
    }
}

/// The cached key if it has not expired (said on stderr), else the error.
fn fallback(
    context: &Context,
    cached: Option<CachedKey>,
    message: impl FnOnce() -> String,
) -> anyhow::Result<CachedKey> {
    let message = message();
    match cached {
        Some(key) if key.server == context.server_text() && key.expires_at > context.now => {
            eprintln!(
                "warning: {message}; using the cached key, which expires in {}",
                crate::clock::humanize(Duration::from_secs(
                    u64::try_from(key.expires_at - context.now).unwrap_or(0)
                ))
            );
            Ok(key)
        }
        _ => bail!(message),
    }
}

/// What to do about an API error, in a line.
fn explain(error: &ApiError) -> String {
    match error.code() {
        Some("session_expired" | "unauthorized") => {
            "the session has ended: run `openai-key-server login`".to_owned()
        }
        Some("cap_reached") => format!(
            "{error}. List them with `openai-key-server keys` and revoke one with `openai-key-server revoke ID`"
        ),
        _ => format!("could not get a key: {error}"),
    }
}

/// `key`.
pub async fn key(args: KeyArgs) -> anyhow::Result<()> {
    let key = current_key(&args.options).await?;
    let secret = key.key.expose_secret();
    let text = match args.format {
        Format::Plain => format!("{secret}\n"),
        Format::Json => format!(
            "{}\n",
            serde_json::json!({"key": secret, "expires_at": key.expires_at})
        ),
        Format::CredentialProcess => format!(
            "{}\n",
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": key.id,
                "SecretAccessKey": secret,
                "Expiration": humantime::format_rfc3339_seconds(crate::clock::from_unix(key.expires_at)).to_string(),
            })
        ),
    };
    print_stdout(&text)
}

/// Writes to stdout, one write, and says so if it cannot.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// `text` in single quotes for a POSIX shell, fish or PowerShell.
fn quoted(text: &str, shell: Shell) -> String {
    match shell {
        Shell::Sh => format!("'{}'", text.replace('\'', "'\\''")),
        Shell::Fish => format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'")),
        Shell::Powershell => format!("'{}'", text.replace('\'', "''")),
    }
}

/// `env`.
pub async fn env(args: EnvArgs) -> anyhow::Result<()> {
    let key = current_key(&args.options).await?;
    let value = quoted(key.key.expose_secret(), args.shell);
    let line = match args.shell {
        Shell::Sh => format!("export OPENAI_API_KEY={value}\n"),
        Shell::Fish => format!("set -gx OPENAI_API_KEY {value}\n"),
        Shell::Powershell => format!("$env:OPENAI_API_KEY = {value}\n"),
    };
    print_stdout(&line)
}

/// `exec`: replaces this process with the command (on Unix), so signals
/// and the exit status are the command's own.
pub async fn exec(args: ExecArgs) -> anyhow::Result<std::process::ExitCode> {
    let key = current_key(&args.options).await?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given: openai-key-server exec -- COMMAND ARGS…")?;
    let mut command = std::process::Command::new(program);
    command
        .args(rest)
        .env("OPENAI_API_KEY", key.key.expose_secret());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let error = command.exec();
        bail!("cannot run {}: {error}", program.to_string_lossy());
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
        Ok(std::process::ExitCode::from(
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
        ))
    }
}

fn when(unix: Option<i64>) -> String {
    unix.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(crate::clock::from_unix(t)).to_string(),
    )
}

/// `keys`.
pub async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let context = Context::new(&args.server)?;
    let session = context.signed_in()?;
    let listed = context
        .api(&session)
        .list_keys()
        .await
        .map_err(|error| anyhow::anyhow!(explain(&error)))?;
    if args.json {
        let text = serde_json::to_string_pretty(&listed).context("printing")?;
        return print_stdout(&format!("{text}\n"));
    }
    let cached = context.store.key().ok().flatten().map(|k| k.id);
    let mut out = format!(
        "{:<34} {:<22} {:<22} {:<22} {:>14}\n",
        "ID", "CREATED", "EXPIRES", "LAST USED", "TOKENS TODAY"
    );
    for key in &listed.keys {
        let mark = if cached.as_deref() == Some(key.id.as_str()) {
            " (cached)"
        } else {
            ""
        };
        let tokens = key.usage.map_or_else(
            || "-".to_owned(),
            |u| (u.input_tokens + u.output_tokens).to_string(),
        );
        out.push_str(&format!(
            "{:<34} {:<22} {:<22} {:<22} {tokens:>14}{mark}\n",
            key.id,
            when(key.created_at),
            when(Some(key.expires_at)),
            when(key.last_used_at)
        ));
    }
    print_stdout(&out)?;
    if listed.keys.is_empty() {
        eprintln!("No live key.");
    }
    // What a budget counts, on stderr: stdout stays the table.
    if let Some(today) = &listed.usage_today {
        let mut line = format!(
            "Used today (UTC): {} tokens",
            today.tokens.input_tokens + today.tokens.output_tokens
        );
        if let Some(budget) = today.tokens_per_day {
            line.push_str(&format!(" of {budget} a day"));
        }
        if let Some(usd) = today.usd_this_month {
            line.push_str(&format!("; about ${usd:.2} this month"));
            if let Some(budget) = today.usd_per_month {
                line.push_str(&format!(" of ${budget:.2}"));
            }
        }
        if today.over_budget {
            line.push_str(" (budget spent: new keys are refused until it resets)");
        }
        eprintln!("{line}.");
    }
    if !listed.fresh {
        eprintln!(
            "warning: OpenAI did not answer in time; this list may miss keys made moments ago"
        );
    }
    Ok(())
}

/// `revoke`.
pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let context = Context::new(&args.server)?;
    let session = context.signed_in()?;
    context
        .api(&session)
        .delete_key(&args.id)
        .await
        .map_err(|error| match error.code() {
            Some("not_found") => anyhow::anyhow!(
                "no live key of yours has the id {}; see `openai-key-server keys`",
                args.id
            ),
            _ => anyhow::anyhow!(explain(&error)),
        })?;
    context.store.forget_key(Some(&args.id))?;
    context.store.forget_obtained(&args.id, context.now)?;
    eprintln!("Revoked {}: OpenAI refuses it from now on.", args.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_at_least_five_minutes_at_most_half() {
        let hour = Duration::from_secs(3600);
        assert_eq!(margin(hour, None), Duration::from_secs(360));
        assert_eq!(margin(hour * 24, None), Duration::from_secs(8640));
        assert_eq!(margin(Duration::from_secs(1200), None), MIN_MARGIN);
        assert_eq!(
            margin(Duration::from_secs(300), None),
            Duration::from_secs(150)
        );
        assert_eq!(
            margin(hour, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn values_are_quoted_for_each_shell() {
        assert_eq!(quoted("sk-a'b", Shell::Sh), "'sk-a'\\''b'");
        assert_eq!(quoted("sk-a'b", Shell::Fish), "'sk-a\\'b'");
        assert_eq!(quoted("sk-a'b", Shell::Powershell), "'sk-a''b'");
    }
}
