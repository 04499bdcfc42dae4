//! Connections and bodies: every connection makes progress or is closed,
//! their number is bounded, a flood of idle sockets stops no real request,
//! and a body that trickles in is cut off before any work is done.
//!
//! These wait for the server's real timers (header and body deadlines of
//! 10 s), so each takes about that long; they run alongside the others.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sandbox::oidc::Identity;
use sandbox::openai::{Fault, FaultKind};

use crate::helpers::*;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opens a connection and sends `first` (possibly nothing).
fn open(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(first).unwrap();
    stream
}

/// Waits up to `within` for the server to close `stream`; what it sent
/// before closing, or `None` if it is still open.
fn closed_within(mut stream: TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            // Reset: closed all the same.
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

/// Whether the server has closed `stream` (without waiting).
fn is_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_http2_prefaces_are_closed_while_others_are_served() {
    let app = TestApp::spawn().await;
    let silent = open(app.addr, b"");
    let half_preface = open(app.addr, &H2_PREFACE[..10]);
    let h2c = open(app.addr, H2_PREFACE);
    let keep_alive_idle = {
        let mut stream = open(app.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = [0u8; 1024];
        let n = stream.read(&mut answer).unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        stream
    };

    // Everyone else is served meanwhile.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    let started = Instant::now();
    let waits = [silent, half_preface, h2c, keep_alive_idle].map(|stream| {
        tokio::task::spawn_blocking(move || closed_within(stream, Duration::from_secs(20)))
    });
    for (what, wait) in ["silent", "half a preface", "h2c preface", "idle keep-alive"]
        .into_iter()
        .zip(waits)
    {
        let outcome = wait.await.unwrap();
        let said =
            outcome.unwrap_or_else(|| panic!("the {what} connection is still open after 20 s"));
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 4"),
            "{what}: no normal answer to a connection that sent no request: {said}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "closed by the header deadline, not by chance: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_is_capped_and_real_requests_and_probes_get_through() {
    let app = TestApp::spawn_with(Options::default().set("MAX_CONNECTIONS", "20")).await;
    app.wait_for_startup_sweep().await;
    let flood: Vec<TcpStream> = (0..120)
        .map(|i| match i % 3 {
            0 => open(app.addr, b""),
            1 => open(app.addr, &H2_PREFACE[..10]),
            _ => open(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\n"),
        })
        .collect();

    // Probes and a whole sign-in still work, each on new connections.
    let probe = plain_client();
    for path in ["/healthz", "/readyz"] {
        let response = probe.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let page = app.sign_in_as(Identity::consumer("bob@gmail.com")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // The oldest idle sockets were closed to make room: no more than the
    // cap are open.
    let flood = std::sync::Arc::new(flood);
    let open_now = || flood.iter().filter(|s| !is_closed(s)).count();
    eventually("at most 20 connections are open", || open_now() <= 20).await;
    assert!(is_closed(&flood[0]), "the one idle the longest went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_a_new_one_is_told_to_come_back() {
    let app = TestApp::spawn_with(Options::default().set("MAX_CONNECTIONS", "2")).await;
    app.wait_for_startup_sweep().await;
    // Two sign-ins whose creates hang (until TIMEOUT, 2 s): two busy
    // connections.
    let browsers = [browser(), browser()];
    let mut callbacks = Vec::new();
    for browser in &browsers {
        app.sandbox
            .oidc
            .queue_identity(Identity::consumer("bob@gmail.com"));
        let authorization = app.start_sign_in_with(browser).await;
        callbacks.push(app.authorize_with(browser, &authorization).await);
    }
    app.sandbox.openai.push_fault(
        Fault::new(FaultKind::Hang)
            .method("POST")
            .path("/service_accounts")
            .times(2),
    );
    let pending: Vec<_> = browsers
        .iter()
        .zip(callbacks)
        .map(|(browser, url)| {
            let browser = browser.clone();
            tokio::spawn(async move { browser.get(url).send().await.unwrap().status() })
        })
        .collect();
    eventually("both creates are hanging", || {
        app.sandbox.openai.journal().by_status().get(&0).copied() == Some(2)
    })
    .await;

    let addr = app.addr;
    let turned_away = tokio::task::spawn_blocking(move || {
        closed_within(
            open(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap()
    .expect("closed at once");
    assert!(turned_away.starts_with("HTTP/1.1 503"), "{turned_away}");
    assert!(turned_away.to_ascii_lowercase().contains("retry-after: 1"));

    // Once they are answered (504: OpenAI did not answer), room again.
    for status in futures::future::join_all(pending).await {
        assert_eq!(status.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        plain_client()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_gets_408_before_any_work_is_done() {
    let app = TestApp::spawn().await;
    app.wait_for_startup_sweep().await;
    let lists = app.openai_calls(SA_LIST);
    let heads = [
        "POST /revoke HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        "POST /revoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    let started = Instant::now();
    let trickles = heads.map(|head| {
        let addr = app.addr;
        tokio::task::spawn_blocking(move || {
            let mut stream = open(addr, head.as_bytes());
            let mut writer = stream.try_clone().unwrap();
            let chunked = head.contains("chunked");
            // A byte every half second, until the server hangs up.
            std::thread::spawn(move || {
                let piece: &[u8] = if chunked { b"1\r\nx\r\n" } else { b"x" };
                while writer.write_all(piece).is_ok() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
            stream
                .set_read_timeout(Some(Duration::from_secs(25)))
                .unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
    });
    for trickle in trickles {
        let answer = trickle.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("Request id"), "the error page: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.openai_calls(SA_LIST), lists, "no sweep ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_trickling_in_on_every_connection_do_not_lock_out_probes() {
    let app = TestApp::spawn_with(Options::default().set("MAX_CONNECTIONS", "4")).await;
    app.wait_for_startup_sweep().await;
    // Every slot taken by a request whose body comes a byte at a time.
    let addr = app.addr;
    let trickles: Vec<_> = (0..4)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let mut stream = open(
                    addr,
                    b"POST /revoke HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\n",
                );
                // About three seconds, or until the server hangs up.
                for _ in 0..6 {
                    std::thread::sleep(Duration::from_millis(500));
                    if stream.write_all(b"x").is_err() || is_closed(&stream) {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    // Real time, not a clock to move: long enough for the server to have
    // read their headers and be waiting on their bodies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/healthz", "/readyz"] {
        let response = plain_client().get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let mut closed = 0;
    for trickle in trickles {
        closed += usize::from(trickle.await.unwrap());
    }
    assert!(closed >= 1, "a probe made room by closing a trickle");
}
