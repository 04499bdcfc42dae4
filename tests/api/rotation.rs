//! Secrets that rotate: the session secret with `SESSION_SECRET_PREVIOUS`
//! (restarted, or read again), the admin key's file watched, client
//! secrets and session secrets read again on `SIGHUP` (here through the
//! reloader `serve`'s signal handler calls; the real signal in
//! [`a_sighup_rotates_the_secrets_of_a_serving_process_and_drops_no_request`]).
//! A bad new value is refused and the old one kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openai_key_server::secrets::Outcome;
use reqwest::StatusCode;
use reqwest::cookie::CookieStore as _;
use sandbox::Sandbox;
use sandbox::oidc::Identity;

use crate::cli::{Terminal, cli_session, stderr};
use crate::helpers::*;

/// Another session secret (base64 of 48 bytes).
const NEW_SESSION_SECRET: &str =
    "bmV3LXNlc3Npb24tc2VjcmV0LWZvci10ZXN0cy1vbmx5LTQ4LWJ5dGVzLWxvbmcuLi4u";

fn bob() -> Identity {
    Identity::consumer("bob@gmail.com")
}

/// A fresh directory for secret files.
fn secrets_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oks-secrets-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A browser whose cookies the test can read.
fn browser_with_jar() -> (reqwest::Client, Arc<reqwest::cookie::Jar>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(Arc::clone(&jar))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    (client, jar)
}

/// The `Cookie` header the browser sends to `app`.
fn cookies(jar: &reqwest::cookie::Jar, app: &TestApp) -> String {
    jar.cookies(&app.url("/").parse().unwrap())
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `GET /` with exactly `cookie`: whether it shows bob's keys (signed in)
/// rather than sending the browser to the provider.
async fn signed_in_with(app: &TestApp, cookie: &str) -> bool {
    let response = plain_client()
        .get(app.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    status == StatusCode::OK && body.contains("bob@gmail.com")
}

async fn me_status(app: &TestApp, token: &str) -> (StatusCode, Option<String>) {
    let response = plain_client()
        .get(app.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let renewed = response
        .headers()
        .get("oks-renewed-session")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), renewed)
}

#[tokio::test]
async fn a_session_secret_rotated_by_restart_signs_nobody_out() {
    let app = TestApp::spawn().await;
    let (browser, jar) = browser_with_jar();
    let page = app.sign_in_with(&browser, bob()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let old_cookie = cookies(&jar, &app);
    assert!(signed_in_with(&app, &old_cookie).await);
    // A sign-in in progress across the rotation: its login cookie is
    // sealed with the old secret.
    let in_progress = browser_with_jar();
    app.sandbox.oidc.queue_identity(bob());
    let authorization = app.start_sign_in_with(&in_progress.0).await;
    let callback = app.authorize_with(&in_progress.0, &authorization).await;
    // A command line signed in with the old secret too.
    let terminal = Terminal::new(&app);
    terminal
        .login(&app, Identity::workspace("alice@example.com"))
        .await;
    let old_token = terminal.session_token();
    let api_token = cli_session(&app, bob()).await;

    // Step 1: the new secret seals, the old one only opens.
    let app = app
        .restart_with(&[
            ("SESSION_SECRET", NEW_SESSION_SECRET),
            ("SESSION_SECRET_PREVIOUS", SESSION_SECRET),
        ])
        .await;
    // The browser's session is read, and sealed anew in the answer.
    let response = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("oks_session=")),
        "the session is sealed anew"
    );
    assert!(response.text().await.unwrap().contains("bob@gmail.com"));
    let new_cookie = cookies(&jar, &app);
    assert_ne!(new_cookie, old_cookie);
    // The sign-in in progress finishes.
    let finished = KeyPage::read(in_progress.0.get(&callback).send().await.unwrap()).await;
    assert_eq!(finished.status, StatusCode::OK, "{}", finished.body);
    assert!(finished.key().starts_with("sk-"));
    // The CLI is answered, and keeps the session handed back.
    let output = terminal.run(&["keys"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let renewed_token = terminal.session_token();
    assert_ne!(
        renewed_token, old_token,
        "the CLI keeps the renewed session"
    );
    let (status, renewed) = me_status(&app, &api_token).await;
    assert_eq!(status, StatusCode::OK);
    let api_renewed = renewed.expect("an old session is handed back sealed anew");
    let (status, again) = me_status(&app, &api_renewed).await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, None),
        "a current one is not"
    );

    // Step 2: the old secret goes. What was sealed anew still opens; what
    // was not, does not.
    let app = app
        .restart_with(&[
            ("SESSION_SECRET", NEW_SESSION_SECRET),
            ("SESSION_SECRET_PREVIOUS", ""),
        ])
        .await;
    assert!(signed_in_with(&app, &new_cookie).await);
    assert!(!signed_in_with(&app, &old_cookie).await);
    let output = terminal.run(&["keys"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(me_status(&app, &api_renewed).await.0, StatusCode::OK);
    assert_eq!(
        me_status(&app, &api_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    app.assert_no_secrets_logged(&[NEW_SESSION_SECRET, &old_token, &renewed_token]);
}

#[tokio::test]
async fn session_secrets_in_files_are_read_again_and_a_bad_one_is_refused() {
    let dir = secrets_dir();
    let (current, previous) = (dir.join("session"), dir.join("session-previous"));
    std::fs::write(&current, SESSION_SECRET).unwrap();
    std::fs::write(&previous, "").unwrap();
    let app = TestApp::spawn_with(
        Options::default()
            .set("SESSION_SECRET", "")
            .set("SESSION_SECRET_FILE", current.to_str().unwrap())
            .set("SESSION_SECRET_PREVIOUS_FILE", previous.to_str().unwrap()),
    )
    .await;
    let (browser, jar) = browser_with_jar();
    app.sign_in_with(&browser, bob()).await;
    let old_cookie = cookies(&jar, &app);

    // Nothing changed: nothing happens.
    assert!(matches!(
        app.reloader.reload().await[..],
        [Outcome::Unchanged(_)]
    ));
    std::fs::write(&current, NEW_SESSION_SECRET).unwrap();
    std::fs::write(&previous, SESSION_SECRET).unwrap();
    assert!(matches!(
        app.reloader.reload().await[..],
        [Outcome::Rotated(_)]
    ));
    assert!(signed_in_with(&app, &old_cookie).await);
    let response = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let new_cookie = cookies(&jar, &app);
    assert_ne!(new_cookie, old_cookie);

    // A new value that is no secret is refused; both keys stay.
    std::fs::write(&current, "not base64!").unwrap();
    std::fs::write(&previous, "").unwrap();
    let outcome = app.reloader.reload().await;
    let [Outcome::Refused(name, why)] = &outcome[..] else {
        panic!("{outcome:?}");
    };
    assert!(name.contains("SESSION_SECRET_FILE="), "{name}");
    assert!(why.contains("base64"), "{why}");
    assert!(
        signed_in_with(&app, &old_cookie).await,
        "the previous key stays too"
    );
    assert!(signed_in_with(&app, &new_cookie).await);
    assert!(logs().contains("secret.refused"));

    // The rotation over: the previous file emptied.
    std::fs::write(&current, NEW_SESSION_SECRET).unwrap();
    assert!(matches!(
        app.reloader.reload().await[..],
        [Outcome::Rotated(_)]
    ));
    assert!(signed_in_with(&app, &new_cookie).await);
    assert!(!signed_in_with(&app, &old_cookie).await);
    app.assert_no_secrets_logged(&[NEW_SESSION_SECRET]);
}

#[tokio::test]
async fn the_admin_key_file_is_watched_and_a_key_openai_refuses_is_not_used() {
    let sandbox = Sandbox::start().await.unwrap();
    let old_key = sandbox.openai.admin_key();
    let old_ids = admin_key_ids(&sandbox, &old_key).await;
    let dir = secrets_dir();
    let file = dir.join("admin-key");
    std::fs::write(&file, format!("{old_key}\n")).unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default()
            .set("OPENAI_MANAGEMENT_KEY", "")
            .set("OPENAI_MANAGEMENT_KEY_FILE", file.to_str().unwrap()),
    )
    .await;
    app.wait_for_startup_sweep().await;
    let refused = "secret.refused";
    let file_name = file.to_str().unwrap().to_owned();
    let audit_lines = |event: &str| {
        logs()
            .lines()
            .filter(|l| l.contains(event) && l.contains(&file_name))
            .count()
    };

    // A key OpenAI does not know: refused, the old one kept.
    std::fs::write(&file, "sk-admin-this-key-does-not-exist").unwrap();
    app.advance(Duration::from_secs(11));
    eventually("the wrong key is refused", || audit_lines(refused) == 1).await;
    let page = app.sign_in_as(bob()).await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    // The same file again: not asked about again.
    app.advance(Duration::from_secs(11));
    app.advance(Duration::from_secs(11));
    assert_eq!(
        app.reloader.check_admin_key_file().await,
        Some(Outcome::Unchanged(format!(
            "OPENAI_MANAGEMENT_KEY_FILE={file_name}"
        )))
    );
    assert_eq!(audit_lines(refused), 1);

    // A new key made in OpenAI, then the file replaced (as Kubernetes
    // replaces a mounted secret): in use with no signal, and the old key
    // can go.
    let (_, new_key) = new_admin_key(&app.sandbox, &old_key).await;
    let tmp = dir.join("admin-key.new");
    std::fs::write(&tmp, &new_key).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    app.advance(Duration::from_secs(11));
    eventually("the new key is in use", || {
        audit_lines("secret.rotated") == 1
    })
    .await;
    for id in old_ids {
        delete_admin_key(&app.sandbox, &id, &new_key).await;
    }
    let page = app
        .sign_in_as(Identity::workspace("carol@example.com"))
        .await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    // An unreadable file on SIGHUP: refused, the key in use stays.
    std::fs::remove_file(&file).unwrap();
    let outcome = app.reloader.reload().await;
    assert!(
        matches!(&outcome[..], [Outcome::Refused(_, why)] if why.contains("cannot read")),
        "{outcome:?}"
    );
    let page = app
        .sign_in_as(Identity::workspace("dave@example.com"))
        .await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    app.assert_no_secrets_logged(&[&new_key, "sk-admin-this-key-does-not-exist"]);
}

#[tokio::test]
async fn a_client_secret_file_is_read_again_on_sighup() {
    let sandbox = Sandbox::start().await.unwrap();
    let old_secret = sandbox.oidc.client_secret();
    let dir = secrets_dir();
    let file = dir.join("client-secret");
    std::fs::write(&file, &old_secret).unwrap();
    let app = TestApp::spawn_on(
        sandbox,
        Options::default()
            .set("CLIENT_SECRET", "")
            .set("CLIENT_SECRET_FILE", file.to_str().unwrap()),
    )
    .await;
    // Google's way: add a second secret, switch, disable the old one.
    let new_secret = app.sandbox.oidc.add_client_secret().unwrap();
    std::fs::write(&file, &new_secret).unwrap();
    let outcome = app.reloader.reload().await;
    assert!(
        matches!(&outcome[..], [Outcome::Rotated(name)] if name.starts_with("CLIENT_SECRET_FILE=")),
        "{outcome:?}"
    );
    app.sandbox.oidc.disable_client_secret(&old_secret);
    let page = app.sign_in_as(bob()).await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    // Emptied by mistake: refused, the secret in use stays.
    std::fs::write(&file, "\n").unwrap();
    let outcome = app.reloader.reload().await;
    assert!(
        matches!(&outcome[..], [Outcome::Refused(_, why)] if why.contains("is empty")),
        "{outcome:?}"
    );
    let page = app
        .sign_in_as(Identity::workspace("carol@example.com"))
        .await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    app.assert_no_secrets_logged(&[&new_secret]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_rotates_the_secrets_of_a_serving_process_and_drops_no_request() {
    use std::process::{Command, Stdio};

    let sandbox = Sandbox::start().await.unwrap();
    let old_key = sandbox.openai.admin_key();
    let old_ids = admin_key_ids(&sandbox, &old_key).await;
    let dir = secrets_dir();
    let (key_file, session_file, previous_file) = (
        dir.join("admin-key"),
        dir.join("session"),
        dir.join("session-previous"),
    );
    std::fs::write(&key_file, &old_key).unwrap();
    std::fs::write(&session_file, SESSION_SECRET).unwrap();
    std::fs::write(&previous_file, "").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let redirect_uri = format!("http://127.0.0.1:{port}/oauth2/callback");
    sandbox.oidc.allow_redirect_uri(&redirect_uri);
    let log = dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_openai-key-server"))
        .env_clear()
        .current_dir(&dir)
        .envs(sandbox.env(&redirect_uri))
        .env("OPENAI_MANAGEMENT_KEY", "")
        .env("OPENAI_MANAGEMENT_KEY_FILE", &key_file)
        .env("SESSION_SECRET_FILE", &session_file)
        .env("SESSION_SECRET_PREVIOUS_FILE", &previous_file)
        .env("ALLOWED_USERS", "bob@gmail.com")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let (browser, jar) = browser_with_jar();
    let mut up = false;
    for _ in 0..500 {
        if browser.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "the server starts");
    let sign_in = |browser: reqwest::Client| {
        let sandbox = &sandbox;
        let base = base.clone();
        async move {
            sandbox.oidc.queue_identity(bob());
            let start = browser
                .get(format!("{base}/?account=choose"))
                .send()
                .await
                .unwrap();
            let authorization = location(&start);
            let callback = location(&browser.get(&authorization).send().await.unwrap());
            KeyPage::read(browser.get(&callback).send().await.unwrap()).await
        }
    };
    let page = sign_in(browser.clone()).await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    let cookie = jar
        .cookies(&base.parse().unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    // Readers of the session cookie while the secrets change under them.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, cookie, base) = (Arc::clone(&stop), cookie.clone(), base.clone());
            let total = Arc::clone(&answered);
            tokio::spawn(async move {
                let client = plain_client();
                let mut answered = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client
                        .get(format!("{base}/"))
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .expect("no request is dropped");
                    assert_eq!(response.status(), StatusCode::OK, "still signed in");
                    let body = response.text().await.expect("no answer is cut");
                    assert!(body.contains("bob@gmail.com"));
                    answered += 1;
                    total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                answered
            })
        })
        .collect();
    let (_, new_key) = new_admin_key(&sandbox, &old_key).await;
    std::fs::write(&key_file, &new_key).unwrap();
    std::fs::write(&session_file, NEW_SESSION_SECRET).unwrap();
    std::fs::write(&previous_file, SESSION_SECRET).unwrap();
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    let rotated = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"secret.rotated\""))
            .count()
    };
    eventually("both rotations are logged", || rotated() == 2).await;
    // More signals while requests run: nothing changes, nothing drops.
    hup();
    hup();
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);
    eventually("requests go on after the signals", || {
        answered.load(std::sync::atomic::Ordering::Relaxed) > before + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not end it"
    );
    assert_eq!(rotated(), 2, "unchanged files are no rotation");
    // The old admin key gone from OpenAI: the new one issues.
    for id in old_ids {
        delete_admin_key(&sandbox, &id, &new_key).await;
    }
    let page = sign_in(browser).await;
    assert!(page.key().starts_with("sk-"), "{}", page.body);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        old_key.as_str(),
        &new_key,
        SESSION_SECRET,
        NEW_SESSION_SECRET,
    ] {
        assert!(!text.contains(secret), "a secret is in the log");
    }
}
