//! `check-config`: validate the settings and print them, secrets redacted,
//! then whatever deserves a second look; with `--online`, also ask OpenAI
//! whether the admin key and the projects will work.

use std::process::ExitCode;

use crate::config::{Config, ProjectSelector};
use crate::openai::{self, AdminClient};

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also check against OpenAI, before serving: the admin key
    /// authenticates, each project of the policy exists and is not
    /// archived, and its service accounts can be listed. Exits 2, saying
    /// what to fix, when one of these fails.
    #[arg(long)]
    online: bool,
}

/// Validates and prints the effective settings.
pub(super) async fn run(args: Args) -> ExitCode {
    let config = match super::load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    for (name, value) in config.describe() {
        println!("{name}={value}");
    }
    // Not errors: the server starts with these, and logs them.
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    if !args.online {
        return ExitCode::SUCCESS;
    }
    let http = match crate::http_client(&config) {
        Ok(http) => http,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let admin = AdminClient::new(http, &config.openai_base_url, config.management_key.clone());
    let mut problems = Vec::new();
    for selector in config.project_selectors() {
        match check(&admin, &selector).await {
            Ok(line) => println!("online: {line}"),
            Err(problem) => {
                eprintln!("error: {problem}");
                problems.push(problem);
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_CONFIG)
    }
}

/// The same checks as `check-config --online`, at `serve`'s start: each
/// problem is an error line saying what to fix (the server still starts,
/// since OpenAI may only be away for a moment; `/readyz` waits for the
/// Admin API to answer).
pub(super) async fn log_online_checks(config: Config, metrics: crate::metrics::Metrics) {
    let Ok(http) = crate::http_client(&config) else {
        return;
    };
    // Counted like every other call the server makes.
    let admin = AdminClient::new(http, &config.openai_base_url, config.management_key.clone())
        .with_metrics(metrics);
    for selector in config.project_selectors() {
        match check(&admin, &selector).await {
            Ok(line) => tracing::info!("online check: {line}"),
            Err(problem) => tracing::error!("online check: {problem}"),
        }
    }
}

/// What to fix when a call is refused, in the words of the setting.
fn why(error: &openai::Error) -> String {
    match error {
        openai::Error::Unauthorized { .. } => "OpenAI refuses the admin key (401): check OPENAI_MANAGEMENT_KEY; it must be an admin key (sk-admin-…), not a project key".to_owned(),
        openai::Error::Forbidden { .. } => "OpenAI forbids this to the admin key (403): give the key the organisation owner's rights (API keys: write; projects and service accounts)".to_owned(),
        other => format!("OpenAI could not be asked: {other}; check OPENAI_ADMIN_BASE_URL and the network"),
    }
}

/// One project: found, active, its accounts listable.
async fn check(admin: &AdminClient, selector: &ProjectSelector) -> Result<String, String> {
    let project = match selector {
        ProjectSelector::Id(id) => match admin.retrieve_project(id).await {
            Ok(project) => project,
            Err(openai::Error::NotFound { .. }) => {
                return Err(format!(
                    "project {id} does not exist (or the admin key belongs to another organisation): check OPENAI_PROJECT_ID or the rule's project"
                ));
            }
            Err(error) => return Err(why(&error)),
        },
        ProjectSelector::Name(name) => {
            let mut named = Vec::new();
            let mut after = None;
            loop {
                let page = admin
                    .list_projects(after.as_deref())
                    .await
                    .map_err(|e| why(&e))?;
                named.extend(
                    page.data
                        .into_iter()
                        .filter(|p| p.name.as_deref() == Some(name.as_str())),
                );
                match (page.has_more, page.last_id) {
                    (true, Some(last)) => after = Some(last),
                    _ => break,
                }
            }
            match named.len() {
                0 => {
                    return Ok(format!(
                        "no project is named {name:?} yet: the server makes it at first use (the admin key authenticates)"
                    ));
                }
                1 => named.remove(0),
                n => {
                    return Err(format!(
                        "{n} projects are named {name:?}: set OPENAI_PROJECT_ID (or the rule's project) to the one to use"
                    ));
                }
            }
        }
    };
    if project.status.as_deref() == Some("archived") {
        return Err(format!(
            "project {} is archived: no key can be made in it; name an active project",
            project.id
        ));
    }
    admin
        .list_service_accounts(&project.id, None)
        .await
        .map_err(|e| why(&e))?;
    Ok(format!(
        "project {} ({}) is active, and its service accounts can be listed",
        project.id,
        project.name.as_deref().unwrap_or("no name")
    ))
}
