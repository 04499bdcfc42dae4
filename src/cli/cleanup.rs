//! `cleanup`: one sweep with the server's configuration, for cron.

use std::process::ExitCode;

use crate::{http_client, keys_for, telemetry};

/// Arguments of `cleanup`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs one sweep and prints its report as JSON.
pub(super) async fn run(_args: Args) -> ExitCode {
    let config = match super::load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init(config.log_format);
    let http = match http_client(&config) {
        Ok(http) => http,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let keys = keys_for(&config, http);
    match keys.sweep(std::time::SystemTime::now()).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
            );
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: the sweep failed: {error}");
            ExitCode::FAILURE
        }
    }
}
