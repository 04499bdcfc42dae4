//! The command line: one subcommand per module, `serve` by default.

mod check_config;
mod cleanup;
pub mod client;
pub mod context;
#[cfg(feature = "demo")]
mod demo;
pub mod key;
pub mod login;
mod serve;
pub mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Hands out short-lived OpenAI API keys to people who sign in.
///
/// Settings come from the environment (and a `.env` file in the working
/// directory); see the README for every variable.
#[derive(Debug, Parser)]
#[command(name = "openai-key-server", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key server (the default).
    Serve(serve::Args),
    #[cfg(feature = "demo")]
    /// Run the whole product on this machine, with the sandbox standing in
    /// for Google and OpenAI.
    Demo(demo::Args),
    /// Validate the settings, print them with secrets redacted, and exit.
    CheckConfig(check_config::Args),
    /// Delete this server's expired service accounts once, and exit
    /// (non-zero if any delete failed), for a cron job.
    Cleanup(cleanup::Args),
    /// Sign this terminal in to a key server (browser, or --device).
    Login(login::LoginArgs),
    /// Print a valid key on stdout (the credential helper tools call).
    Key(key::KeyArgs),
    /// Print the shell line that sets `OPENAI_API_KEY`.
    Env(key::EnvArgs),
    /// Run a command with `OPENAI_API_KEY` in its environment.
    Exec(key::ExecArgs),
    /// List my live keys.
    Keys(key::KeysArgs),
    /// Revoke one of my keys.
    Revoke(key::RevokeArgs),
    /// Sign this terminal out, revoking the keys it obtained.
    Logout(login::LogoutArgs),
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
            Command::CheckConfig(args) => check_config::run(args),
            Command::Cleanup(args) => cleanup::run(args).await,
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
        }
    })
}

/// Loads `.env` (a missing file is fine, a malformed one is not) and parses
/// the settings, printing every problem and returning the exit code on
/// failure.
fn load_config() -> Result<Config, ExitCode> {
    // Only the working directory's `.env`: dotenvy's own search walks up
    // the parents, which could pick up a stranger's file.
    let path = std::env::current_dir().map(|dir| dir.join(".env"));
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

    use super::Cli;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
