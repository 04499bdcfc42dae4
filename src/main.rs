//! Entry point: parse the command line and run the chosen command.

use std::process::ExitCode;

fn main() -> ExitCode {
    openai_key_server::cli::main()
}
