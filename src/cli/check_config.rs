//! `check-config`: validate the settings and print them, secrets redacted,
//! then whatever deserves a second look.

use std::process::ExitCode;

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Validates and prints the effective settings.
pub(super) fn run(_args: Args) -> ExitCode {
    match super::load_config() {
        Ok(config) => {
            for (name, value) in config.describe() {
                println!("{name}={value}");
            }
            // Not errors: the server starts with these, and logs them.
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
