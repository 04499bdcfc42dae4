//! `serve`: run the key server until SIGINT or SIGTERM; on SIGHUP, read
//! the secrets held in files again.

use std::process::ExitCode;

use crate::{Application, shutdown_signal, telemetry};

/// Arguments of `serve` (settings come from the environment).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the server.
pub(super) async fn run(_args: Args) -> ExitCode {
    let config = match super::load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    telemetry::init(config.log_format);
    let checked = config.clone();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "could not start");
            return ExitCode::FAILURE;
        }
    };
    let checks = tokio::spawn(super::check_config::log_online_checks(
        checked,
        app.state().metrics.clone(),
    ));
    let hangups = crate::reload_on_sighup(app.state().reloader.clone());
    let ran = app.run(shutdown_signal()).await;
    hangups.abort();
    checks.abort();
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}
