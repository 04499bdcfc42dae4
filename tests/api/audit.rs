//! The audit trail over HTTP: one event per issuance, refusal, revocation
//! and deletion at expiry, with the client's address and the request's
//! id, never a key; the file's chain verifies, and `audit verify` names a
//! line edited or removed.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::oidc::Identity;
use serde_json::Value;

use crate::helpers::*;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(path: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
        .args(["audit", "verify"])
        .arg(path)
        .env_clear()
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn every_issuance_refusal_revocation_and_expiry_is_one_chained_event() {
    let path = std::env::temp_dir().join(format!("oks-audit-{:x}.jsonl", rand::random::<u64>()));
    let app =
        TestApp::spawn_with(Options::default().set("AUDIT_LOG_FILE", path.to_str().unwrap())).await;
    app.wait_for_startup_sweep().await;

    let alice = browser();
    let page = app
        .sign_in_with(&alice, Identity::workspace("alice@example.com"))
        .await;
    let key = page.key();
    let bob = browser();
    app.sign_in_with(&bob, Identity::consumer("bob@gmail.com"))
        .await;
    assert_eq!(
        app.sign_in_as(Identity::workspace("eve@other.org"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let keys = my_keys(&app, &alice).await;
    let account = listed_accounts(&keys.body)[0].clone();
    let csrf = hidden(&keys.body, "csrf");
    post_form(
        &app,
        &alice,
        &format!("/keys/{account}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    app.advance(Duration::from_secs(3600 + 5));
    for _ in 0..300 {
        if app.accounts().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let trail = events(&path);
    let names: Vec<&str> = trail.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names[0], "config.loaded", "{names:?}");
    let issued: Vec<&Value> = trail
        .iter()
        .filter(|e| e["event"] == "key.issued")
        .collect();
    assert_eq!(issued.len(), 2, "{names:?}");
    let alices = issued
        .iter()
        .find(|e| e["subject"] == "alice@example.com")
        .unwrap();
    assert_eq!(alices["actor"], "alice@example.com");
    assert_eq!(alices["issuer"], "google");
    assert_eq!(alices["account_id"], account.as_str());
    assert_eq!(alices["project"], app.project_id().unwrap().as_str());
    assert_eq!(alices["lifetime_s"], 3600);
    assert_eq!(alices["client"], "127.0.0.1");
    assert!(
        alices["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(alices["key_id"].as_str().unwrap().starts_with("key_"));
    let refused = trail.iter().find(|e| e["event"] == "key.refused").unwrap();
    assert_eq!(refused["subject"], "eve@other.org");
    assert_eq!(refused["reason"], "not_allowed");
    let revoked = trail.iter().find(|e| e["event"] == "key.revoked").unwrap();
    assert_eq!(revoked["actor"], "alice@example.com");
    assert_eq!(revoked["account_id"], account.as_str());
    let deleted = trail.iter().find(|e| e["event"] == "key.deleted").unwrap();
    assert_eq!(deleted["subject"], "bob@gmail.com");
    assert_eq!(deleted["actor"], "server");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&key), "no key in the audit file");

    let (code, out) = verify(&path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("intact, {} events", trail.len())),
        "{out}"
    );

    // An edit and a removal are each named by their line.
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"key.issued\"") && l.contains("alice@example.com"))
        .unwrap();
    let mut edited = lines.clone();
    edited[at] = edited[at].replace("alice@example.com", "mallory@example.com");
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("line {}:", at + 1)) && out.contains("edited"),
        "{out}"
    );
    let mut removed = lines;
    removed.remove(2);
    std::fs::write(&path, removed.join("\n") + "\n").unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 3:") && out.contains("missing"), "{out}");
    let _ = std::fs::remove_file(path);
}
