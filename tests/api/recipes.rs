//! The README's recipes for getting keys into tools, read from the README
//! itself and run against the real server and the sandbox: a plain shell
//! and direnv in bash; Codex's and goose's configuration by running the
//! command they name the way they run it (no stdin, stdout trimmed).
//! OpenAI's address in a recipe is swapped for the sandbox's.

use std::process::Output;
use std::time::Duration;

use reqwest::StatusCode;
use sandbox::oidc::Identity;

use crate::cli::{Terminal, stderr};
use crate::helpers::*;

/// The code block after `<!-- recipe:NAME -->` in the README.
pub(crate) fn recipe(name: &str) -> String {
    let readme = include_str!("../../README.md");
    let marker = format!("<!-- recipe:{name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the README"))
        + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

async fn signed_in() -> (TestApp, Terminal) {
    let app = TestApp::spawn().await;
    let terminal = Terminal::new(&app);
    terminal
        .login(&app, Identity::workspace("alice@example.com"))
        .await;
    (app, terminal)
}

async fn bash(terminal: &Terminal, script: &str) -> Output {
    let child = terminal
        .program("bash", &["-euo", "pipefail", "-c", script])
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// Runs `command args` as Codex and goose run an auth command: no stdin,
/// stdout trimmed, exit 0 required, an empty token an error.
async fn as_a_tool_runs_it(terminal: &Terminal, command: &str, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = terminal.program(command, &args).spawn().unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8_lossy(&output.stdout)
        .into_owned()
        .trim()
        .to_owned();
    assert!(!token.is_empty());
    token
}

#[tokio::test]
async fn the_plain_shell_recipe_puts_a_working_key_in_the_shell() {
    let (app, terminal) = signed_in().await;
    let script =
        recipe("shell").replace("https://api.openai.com/v1", &app.sandbox.openai_base_url());
    assert!(!script.contains("api.openai.com"), "{script}");
    let output = bash(
        &terminal,
        &format!("{script}\nprintf '\\n%s' \"$OPENAI_API_KEY\""),
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (models, key) = stdout.rsplit_once('\n').unwrap();
    assert!(models.contains("\"data\""), "the models list: {models}");
    assert_eq!(key, terminal.key(&[]).await);
}

#[tokio::test]
async fn the_direnv_recipe_exports_the_key_and_watches_the_cache() {
    let (app, terminal) = signed_in().await;
    // direnv's stdlib function, as a stub that says what it would watch.
    let script = format!(
        "watch_file() {{ printf '%s\\n' \"$1\" >&2; }}\n{}\nprintf '%s' \"$OPENAI_API_KEY\"",
        recipe("direnv")
    );
    let output = bash(&terminal, &script).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let key = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    let watched = stderr(&output).trim().to_owned();
    let cache = terminal.cache().join("key.json");
    assert_eq!(std::path::Path::new(&watched), cache);
    assert!(cache.exists(), "the watched file is the cache");
}

#[tokio::test]
async fn the_codex_recipe_names_a_provider_of_our_own_whose_command_prints_the_key() {
    let (app, terminal) = signed_in().await;
    let config: toml::Table = toml::from_str(&recipe("codex")).unwrap();
    let id = config["model_provider"].as_str().unwrap();
    assert!(
        !["openai", "ollama", "lmstudio"].contains(&id),
        "Codex reserves {id}"
    );
    let provider = &config["model_providers"][id];
    assert_eq!(
        provider["base_url"].as_str(),
        Some("https://api.openai.com/v1")
    );
    assert_eq!(provider["wire_api"].as_str(), Some("responses"));
    for field in [
        "env_key",
        "experimental_bearer_token",
        "requires_openai_auth",
    ] {
        assert!(
            provider.get(field).is_none(),
            "not with an auth block: {field}"
        );
    }
    let auth = provider["auth"].as_table().unwrap();
    // Codex's `ModelProviderAuthInfo` denies unknown fields.
    for field in auth.keys() {
        assert!(
            [
                "command",
                "args",
                "timeout_ms",
                "refresh_interval_ms",
                "cwd"
            ]
            .contains(&field.as_str()),
            "Codex refuses {field}"
        );
    }
    let args: Vec<String> = auth["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let key = as_a_tool_runs_it(&terminal, auth["command"].as_str().unwrap(), &args).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    assert_eq!(
        as_a_tool_runs_it(&terminal, auth["command"].as_str().unwrap(), &args).await,
        key,
        "run again at its refresh: the cached key"
    );
}

#[tokio::test]
async fn the_goose_recipe_runs_the_same_command() {
    let (app, terminal) = signed_in().await;
    let provider: serde_json::Value = serde_json::from_str(&recipe("goose")).unwrap();
    let auth = &provider["auth"];
    assert!(auth["refresh_interval"].as_u64().is_some());
    let args: Vec<String> = auth["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let key = as_a_tool_runs_it(&terminal, auth["command"].as_str().unwrap(), &args).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
}
