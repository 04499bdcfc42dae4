//! The command line: one subcommand per module, `serve` by default.

mod audit;
mod check_config;
mod cleanup;
pub mod client;
pub mod context;
#[cfg(feature = "demo")]
mod demo;
mod explain;
pub mod key;
pub mod login;
mod serve;
pub mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Hands out short-lived OpenAI API keys to people who sign in, and gets
/// them from the terminal.
///
/// The server commands (serve, check-config, cleanup) read their settings
/// from the environment and a `.env` file in the working directory; see the
/// README for every variable. The client commands (login, key, env, exec,
/// keys, revoke, logout) read none: they talk to a key server.
#[derive(Debug, Parser)]
#[command(
    name = "openai-key-server",
    version,
    about,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands. Their doc comments are the `--help` text people read,
/// so variable names stay bare there.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key server (the default).
    ///
    /// Reads its settings from the environment, after `.env` in the working
    /// directory: OPENAI_MANAGEMENT_KEY, CLIENT_ID, CLIENT_SECRET,
    /// REDIRECT_URI and ALLOWED_USERS or ALLOWED_DOMAINS are required; every
    /// other variable of the README's Configuration table is optional
    /// (`check-config` prints them all with the values in use).
    Serve(serve::Args),
    #[cfg(feature = "demo")]
    /// Run the whole product on this machine, with the sandbox standing in
    /// for Google and OpenAI.
    ///
    /// Reads no settings and no `.env`: the sandbox provides them. Only the
    /// flags below change it.
    Demo(demo::Args),
    /// Validate the settings, print them with secrets redacted, and exit.
    ///
    /// Reads the same settings as `serve` (the environment, after `.env` in
    /// the working directory), reports every problem at once and exits 2 if
    /// there is one.
    CheckConfig(check_config::Args),
    /// Delete this server's expired service accounts once, and exit
    /// (non-zero if any delete failed), for a cron job.
    ///
    /// Reads the same settings as `serve` (the environment, after `.env`);
    /// it uses OPENAI_MANAGEMENT_KEY, OPENAI_ADMIN_BASE_URL,
    /// OPENAI_PROJECT_ID or DEFAULT_PROJECT_NAME, EXPIRATION,
    /// CLEANUP_CONCURRENCY, CLEANUP_LEGACY_ACCOUNTS and TIMEOUT.
    Cleanup(cleanup::Args),
    /// Show which rule of the policy an identity (a person, or a CI job's
    /// token claims) matches and what it grants, or why none does.
    ///
    /// Reads the same settings as `serve` (POLICY_FILE, or the allow-list
    /// variables that make the one rule without it), and signs nobody in.
    /// Exits 0 when a rule matches, 1 when the identity would be refused.
    Explain(explain::Args),
    /// Work with an audit file (AUDIT_LOG_FILE).
    ///
    /// `audit verify FILE` checks its hash chain and names the first line
    /// edited, removed or inserted; exit 0 when intact, 1 when not, 2 when
    /// the file cannot be read. Reads no settings.
    Audit(audit::Args),
    /// Sign this terminal in to a key server (browser, or --device).
    ///
    /// Opens the browser at the server's sign-in (or prints the address);
    /// after you sign in there, the browser comes back to a listener on
    /// 127.0.0.1 and this command ends with a session of the server's
    /// CLI_SESSION_TTL (12 hours by default). With --device (no browser
    /// here, e.g. over SSH) it prints an address and a code to confirm on
    /// any device.
    ///
    /// Reads no server settings and no `.env`. Remembers --server in
    /// $XDG_CONFIG_HOME/openai-key-server/config.toml; keeps the session in
    /// $XDG_CACHE_HOME/openai-key-server/session.json (mode 0600).
    Login(login::LoginArgs),
    /// Print a valid key on stdout (the credential helper tools call).
    ///
    /// Prints the key and a newline, nothing else, for Codex's and goose's
    /// `auth.command`, Claude Code's apiKeyHelper, direnv or AWS's
    /// credential_process. The cached key is printed with no call to the
    /// server while it has more than --min-remaining left; otherwise a new
    /// one is got first (one process renews while concurrent ones wait).
    /// Without a session it fails with a line that says to run `login`; it
    /// never opens a browser unless --interactive. Diagnostics go to stderr.
    ///
    /// Reads no server settings; uses $XDG_CONFIG_HOME/openai-key-server/ and
    /// $XDG_CACHE_HOME/openai-key-server/.
    Key(key::KeyArgs),
    /// Print the shell line that sets `OPENAI_API_KEY`.
    ///
    /// For `eval "$(openai-key-server env)"` in sh, bash or zsh (or
    /// `--shell fish | source`, `--shell powershell | Invoke-Expression`).
    /// The key is the one `key` prints.
    ///
    /// Reads no server settings; uses $XDG_CACHE_HOME/openai-key-server/.
    Env(key::EnvArgs),
    /// Run a command with `OPENAI_API_KEY` in its environment.
    ///
    /// `openai-key-server exec -- python app.py`: the key (the one `key`
    /// prints) is set in the command's environment only, never in its
    /// arguments nor in a file other than the cache. Exits with the
    /// command's status.
    ///
    /// Reads no server settings; uses $XDG_CACHE_HOME/openai-key-server/.
    Exec(key::ExecArgs),
    /// List my live keys (never their values).
    ///
    /// Reads no server settings; uses the session in
    /// $XDG_CACHE_HOME/openai-key-server/.
    Keys(key::KeysArgs),
    /// Revoke one of my keys at once (its id is in `keys`).
    ///
    /// Reads no server settings; uses the session in
    /// $XDG_CACHE_HOME/openai-key-server/.
    Revoke(key::RevokeArgs),
    /// Sign this terminal out, revoking the keys it obtained.
    ///
    /// Revokes the keys this CLI got (asking first, unless --yes; with
    /// --keep-keys they are left to expire) and forgets the session and the
    /// cached key.
    ///
    /// Reads no server settings; uses $XDG_CACHE_HOME/openai-key-server/.
    Logout(login::LogoutArgs),
    /// Print the help of the program or of a command.
    Help(HelpArgs),
}

/// Arguments of `help`.
#[derive(Debug, clap::Args)]
pub struct HelpArgs {
    /// The command to explain.
    command: Option<String>,
}

/// `help [COMMAND]`: as `COMMAND --help`.
fn help(args: &HelpArgs) -> ExitCode {
    use clap::CommandFactory as _;
    let mut cli = Cli::command();
    cli.build();
    let printed = match &args.command {
        None => cli.print_long_help(),
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) => sub.print_long_help(),
            None => {
                eprintln!("error: no command {name:?}; `openai-key-server help` lists them");
                return ExitCode::from(2);
            }
        },
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs a client command, printing its error as one line.
async fn client(run: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}

/// Exit code for bad settings.
pub const EXIT_CONFIG: u8 = 2;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: a key server is I/O-bound, and on a small machine the
    // cross-thread wake-ups of a work-stealing pool cost more CPU than they
    // save (0.43 → 0.24 ms of CPU per sign-in in `bench issue`). Replicas
    // scale out instead.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve(serve::Args {})) {
            Command::Serve(args) => serve::run(args).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args).await,
            Command::CheckConfig(args) => check_config::run(args).await,
            Command::Cleanup(args) => cleanup::run(args).await,
            Command::Explain(args) => explain::run(args),
            Command::Audit(args) => audit::run(args),
            Command::Login(args) => client(login::login(args)).await,
            Command::Key(args) => client(key::key(args)).await,
            Command::Env(args) => client(key::env(args)).await,
            Command::Exec(args) => match key::exec(args).await {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("error: {}", one_line(&error));
                    ExitCode::FAILURE
                }
            },
            Command::Keys(args) => client(key::keys(args)).await,
            Command::Revoke(args) => client(key::revoke(args)).await,
            Command::Logout(args) => client(login::logout(args)).await,
            Command::Help(args) => help(&args),
        }
    })
}

/// Variables a `.env` text sets more than once: the name, the line of the
/// first and of the next.
fn duplicates(text: &str) -> Vec<(String, usize, usize)> {
    let mut seen = std::collections::HashMap::new();
    let mut twice = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        match seen.get(name) {
            Some(&first) => twice.push((name.to_owned(), first, i + 1)),
            None => {
                seen.insert(name.to_owned(), i + 1);
            }
        }
    }
    twice
}

/// Loads `.env` (a missing file is fine, a malformed one is not) and parses
/// the settings, printing every problem and returning the exit code on
/// failure.
fn load_config() -> Result<Config, ExitCode> {
    // Only the working directory's `.env`: dotenvy's own search walks up
    // the parents, which could pick up a stranger's file.
    let path = std::env::current_dir().map(|dir| dir.join(".env"));
    if let Ok(text) = path.as_ref().map(std::fs::read_to_string)
        && let Ok(text) = text
    {
        for (name, first, again) in duplicates(&text) {
            // dotenv tools disagree on which one wins: say which does here.
            eprintln!(
                "warning: .env sets {name} twice (lines {first} and {again}); the first (line {first}) is used: remove the other"
            );
        }
    }
    match path.map(dotenvy::from_path) {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.not_found() => {}
        Ok(Err(dotenvy::Error::LineParse(line, _))) => {
            // The parse error quotes the line, which may hold a secret: name
            // only the variable.
            let name = line
                .trim_start()
                .trim_start_matches("export ")
                .split('=')
                .next()
                .map(str::trim)
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .unwrap_or("one line");
            eprintln!(
                ".env: the line setting {name} cannot be parsed; check its quoting (NAME=value, one per line)"
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        Ok(Err(error)) => {
            eprintln!(".env: cannot be read: {error}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        Err(error) => {
            eprintln!(".env: the working directory cannot be read: {error}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    }
    Config::from_env().map_err(|error| {
        // One line per problem, naming the variable first.
        eprintln!("{error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::{Cli, duplicates};

    #[test]
    fn a_variable_set_twice_in_dotenv_is_named_with_its_lines() {
        let text = "# a comment\nPORT=8080\nexport CLIENT_ID=a\n\nPORT=9090\nCLIENT_ID = b\n#PORT=1\nA=1\n";
        assert_eq!(
            duplicates(text),
            [("PORT".to_owned(), 2, 5), ("CLIENT_ID".to_owned(), 3, 6)]
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
