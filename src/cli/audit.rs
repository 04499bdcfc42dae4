//! `audit verify FILE`: checks an audit file's hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::audit::{Verdict, verify};

/// Arguments of `audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check that no line of FILE was edited, removed or inserted, and name
    /// the first that was. A cut at the end (the last lines removed) cannot
    /// be told from a trail that ended there: compare the count with your
    /// log shipper's.
    Verify {
        /// The audit file (`AUDIT_LOG_FILE`).
        file: PathBuf,
    },
}

/// Runs `audit`.
pub(super) fn run(args: Args) -> ExitCode {
    match args.command {
        AuditCommand::Verify { file } => match verify(&file) {
            Ok(Verdict::Intact { lines }) => {
                println!("{}: intact, {lines} events", file.display());
                ExitCode::SUCCESS
            }
            Ok(Verdict::Broken { line, why }) => {
                println!("{}: line {line}: {why}", file.display());
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(super::EXIT_CONFIG)
            }
        },
    }
}
