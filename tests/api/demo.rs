//! The README's first command, as a person meets it: `demo` prints a URL;
//! signing in through the sandbox's form gives a key, another address is
//! refused.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::location;

/// The hidden fields of the sandbox's sign-in form.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\"")
        .skip(1)
        .filter_map(|chunk| {
            let attr = |name: &str| {
                let start = chunk.find(&format!("{name}=\""))? + name.len() + 2;
                let end = chunk[start..].find('"')?;
                Some(
                    chunk[start..start + end]
                        .replace("&#38;", "&")
                        .replace("&amp;", "&")
                        .replace("&#34;", "\"")
                        .replace("&quot;", "\"")
                        .replace("&#39;", "'"),
                )
            };
            Some((attr("name")?, attr("value")?))
        })
        .collect()
}

async fn sign_in_through_the_form(base: &str, email: &str) -> (StatusCode, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let start = browser.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::FOUND);
    let authorize = location(&start);
    let form = browser.get(&authorize).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::OK, "the sandbox shows its form");
    let html = form.text().await.unwrap();
    assert!(
        html.contains("you@example.com"),
        "the form suggests the demo user"
    );
    let mut fields = hidden_fields(&html);
    fields.extend([
        ("signin_email".to_owned(), email.to_owned()),
        ("signin_hd".to_owned(), "example.com".to_owned()),
        ("signin_email_verified".to_owned(), "on".to_owned()),
        ("signin_action".to_owned(), "approve".to_owned()),
    ]);
    let action = authorize.split('?').next().unwrap().to_owned();
    let approved = browser.post(&action).form(&fields).send().await.unwrap();
    assert_eq!(
        approved.status(),
        StatusCode::FOUND,
        "{}",
        approved.text().await.unwrap()
    );
    let callback = location(&approved);
    let page = browser.get(&callback).send().await.unwrap();
    (page.status(), page.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_signs_you_in_through_the_form_and_refuses_others() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
        .args(["demo", "--port", "0", "--expiration", "60"])
        .env_clear()
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints where to go");
        if let Some(rest) = line.trim().strip_prefix("Open ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
        }
    };

    let (status, body) = sign_in_through_the_form(&base, "you@example.com").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("sk-svcacct-"));
    assert!(body.contains("you@example.com"));

    let (status, body) = sign_in_through_the_form(&base, "someone@example.com").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("someone@example.com"));

    child.kill().unwrap();
    child.wait().unwrap();
}
