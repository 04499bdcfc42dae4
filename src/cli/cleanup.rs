//! `cleanup`: one sweep with the server's configuration, for cron.

use std::process::ExitCode;

use crate::{http_client, keys_of_every_project, telemetry};

/// Arguments of `cleanup`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs one sweep of every project of the policy and prints each report as
/// a line of JSON (the project's id in `project_id`).
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
    let mut clean = true;
    let (metrics, audit) = (
        crate::metrics::Metrics::default(),
        crate::audit::Audit::log_only(),
    );
    let admin_key = config.management_key.clone().into();
    for keys in keys_of_every_project(&config, &http, &admin_key, &metrics, &audit) {
        match keys.sweep(std::time::SystemTime::now()).await {
            Ok(report) => {
                let mut line = serde_json::to_value(&report).unwrap_or_default();
                if let Some(object) = line.as_object_mut() {
                    object.insert(
                        "project_id".to_owned(),
                        keys.known_project_id().to_owned().into(),
                    );
                }
                println!("{line}");
                clean &= report.is_clean();
            }
            Err(error) => {
                eprintln!("error: the sweep of {:?} failed: {error}", keys.project());
                clean = false;
            }
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
