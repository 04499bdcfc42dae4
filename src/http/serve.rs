//! The accept loop. Ours rather than `axum::serve`, for the limits a
//! public-facing server needs:
//!
//! - **HTTP/1.1 only.** The server sits behind a TLS-terminating proxy that
//!   speaks HTTP/1.1 to it, and serves a handful of small pages; HTTP/2 would
//!   bring its own flow control, its own idle rules and its own history of
//!   denial-of-service bugs (rapid reset, CONTINUATION floods) for nothing.
//!   A client that sends the HTTP/2 preface is answered by closing the
//!   connection.
//! - **Every connection makes progress or is closed.** A request line and
//!   headers must arrive within [`HEADER_READ_TIMEOUT`] of the connection
//!   opening, and of the previous answer on a kept-alive connection, so a
//!   socket that sends nothing, half a request or half a preface is closed.
//!   They must fit in [`MAX_HEADER_BYTES`]. Bodies have their own deadline
//!   (see `read_body` in the router).
//! - **A bounded number of connections.** At most `max_connections` are
//!   open. At the cap a new connection closes the one that has been idle
//!   (no request in progress) the longest, so a flood of idle sockets can
//!   delay nobody by more than a reconnect, and probes still get through.
//!   Only when every open connection is busy with a request is the new one
//!   turned away, with a 503.
//!
//! Each request learns its peer address.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt as _;

/// Time allowed to send the request line and headers, counted from the
/// connection's start or from the previous answer on it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the request line and all headers (hyper answers 431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// File descriptors kept free for everything but client connections: the
/// listener, logs, and connections to Google and OpenAI beyond one per
/// client (pooled ones, and a sweep's concurrent deletes).
const RESERVED_FDS: u64 = 256;
/// The default cap never goes beyond this, however high the open-file
/// limit: each connection costs memory (about 10 KiB once it has sent
/// something), and ten thousand idle ones are already a flood.
const MAX_DEFAULT_CONNECTIONS: u64 = 10_000;
/// Nor below this, however low the limit.
const MIN_DEFAULT_CONNECTIONS: u64 = 16;
/// Sent to a connection turned away because every slot is busy.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\ncontent-length: 29\r\nconnection: close\r\n\r\nToo many connections; retry.\n";
/// Least time between two warnings about the connection cap.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection cap, and where it came from (for `check-config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Connections open at once.
    pub max: usize,
    /// The process's open-file limit, when the cap was derived from it.
    pub derived_from_fd_limit: Option<u64>,
}

impl ConnectionLimit {
    /// `configured` (`MAX_CONNECTIONS`), or a default derived from the
    /// open-file limit: half of what is left after [`RESERVED_FDS`], since a
    /// request in progress may hold a connection to Google or OpenAI as
    /// well, within [`MIN_DEFAULT_CONNECTIONS`]..=[`MAX_DEFAULT_CONNECTIONS`].
    pub fn new(configured: Option<usize>) -> Self {
        match configured {
            Some(max) => Self {
                max,
                derived_from_fd_limit: None,
            },
            None => {
                let fds = open_file_limit().unwrap_or(1024);
                Self {
                    max: Self::derive(fds),
                    derived_from_fd_limit: Some(fds),
                }
            }
        }
    }

    fn derive(fds: u64) -> usize {
        let max = (fds.saturating_sub(RESERVED_FDS) / 2)
            .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS);
        usize::try_from(max).unwrap_or(usize::MAX)
    }
}

/// The soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits`
/// (Linux); `None` elsewhere.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// Serves `router` on `listener`, at most `limit` connections at once,
/// until `shutdown` completes; then stops accepting and waits for the open
/// connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limit: usize,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let slots = Slots::new(limit);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.admit() else {
            turn_away(&stream);
            continue;
        };
        // Answers go out whole, in one write or a few: no reason to let
        // Nagle hold back the tail of one for the peer's ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let state = Arc::clone(&slot.state);
        let router = router.clone();
        let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::new(Arc::clone(&state));
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(busy);
                response
            }
        });
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                () = slot.state.evict.notified() => {
                    tracing::debug!("closed an idle connection to make room for a new one");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Tells a connection that found every slot busy to come back, without
/// waiting on it: if its socket buffer is full, it just gets closed.
fn turn_away(stream: &TcpStream) {
    let _ = stream.try_write(BUSY);
}

/// The peer address of a request served by [`serve`].
pub(crate) fn peer(request_extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// The open connections, at most `cap` of them. Per replica.
#[derive(Clone)]
struct Slots(Arc<Mutex<Table>>);

struct Table {
    cap: usize,
    next_id: u64,
    open: HashMap<u64, Arc<SlotState>>,
    /// Instants are stored as milliseconds since this one.
    epoch: Instant,
    evicted_since_warning: u64,
    last_warning: Option<Instant>,
}

/// What the accept loop knows of one connection.
struct SlotState {
    /// Requests in progress (0 or 1: HTTP/1.1 answers one at a time).
    busy: AtomicU32,
    /// When it last became idle, in ms since [`Table::epoch`].
    idle_since_ms: AtomicU64,
    /// Tells the connection's task to drop it.
    evict: Notify,
    epoch: Instant,
}

impl SlotState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A connection's place in [`Slots`]; freed when dropped.
struct Slot {
    id: u64,
    state: Arc<SlotState>,
    slots: Slots,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().open.remove(&self.id);
    }
}

/// Marks a connection busy while a request is in progress.
struct Busy(Arc<SlotState>);

impl Busy {
    fn new(state: Arc<SlotState>) -> Self {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0
                .idle_since_ms
                .store(self.0.now_ms(), Ordering::Release);
        }
    }
}

impl Slots {
    fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Table {
            cap: cap.max(1),
            next_id: 0,
            open: HashMap::new(),
            epoch: Instant::now(),
            evicted_since_warning: 0,
            last_warning: None,
        })))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection: a free one, or the one of the connection
    /// idle the longest, which is told to close. `None` when every open
    /// connection is in the middle of a request.
    fn admit(&self) -> Option<Slot> {
        let mut table = self.table();
        if table.open.len() >= table.cap {
            let victim = table
                .open
                .iter()
                .filter(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, s)| s.idle_since_ms.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                table.warn("every connection is busy; turning a new one away");
                return None;
            };
            if let Some(state) = table.open.remove(&victim) {
                // Stored if the task is not waiting yet: it drops the
                // connection as soon as it looks.
                state.evict.notify_one();
            }
            table.evicted_since_warning += 1;
            table.warn("closing idle connections to make room for new ones");
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(SlotState {
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
            epoch: table.epoch,
        });
        state.idle_since_ms.store(state.now_ms(), Ordering::Release);
        table.open.insert(id, Arc::clone(&state));
        Some(Slot {
            id,
            state,
            slots: self.clone(),
        })
    }
}

impl Table {
    /// Warns about the cap, at most once per [`WARN_EVERY`]: a flood must
    /// not become a flood of log lines.
    fn warn(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        self.last_warning = Some(now);
        tracing::warn!(
            connections.max = self.cap,
            connections.evicted = self.evicted_since_warning,
            "at MAX_CONNECTIONS: {what}"
        );
        self.evicted_since_warning = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_half_of_the_open_file_limit_after_a_reserve_within_bounds() {
        assert_eq!(ConnectionLimit::derive(1024), 384);
        assert_eq!(ConnectionLimit::derive(4096), 1920);
        assert_eq!(ConnectionLimit::derive(256), 16);
        assert_eq!(ConnectionLimit::derive(1 << 20), 10_000);
        assert_eq!(ConnectionLimit::derive(u64::MAX), 10_000);
        let configured = ConnectionLimit::new(Some(7));
        assert_eq!(configured.max, 7);
        assert_eq!(configured.derived_from_fd_limit, None);
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let slots = Slots::new(2);
        let first = slots.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = slots.admit().unwrap();
        // The first is idle the longest: it goes.
        let third = slots.admit().unwrap();
        assert_eq!(slots.table().open.len(), 2);
        assert!(!slots.table().open.contains_key(&first.id));
        assert!(slots.table().open.contains_key(&second.id));
        // Its task learns of it even though it was not waiting yet.
        let waited = ready_now(first.state.evict.notified());
        assert!(waited, "the evicted connection is told");
        // Both left busy: a new connection is turned away.
        let _a = Busy::new(Arc::clone(&second.state));
        let _b = Busy::new(Arc::clone(&third.state));
        assert!(slots.admit().is_none());
        drop(_a);
        let fourth = slots.admit();
        assert!(fourth.is_some(), "idle again, so it can make room");
        drop(first);
        assert_eq!(
            slots.table().open.len(),
            2,
            "an evicted slot is not counted twice"
        );
    }

    /// Whether `future` is ready at its first poll.
    fn ready_now(future: impl Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        future.as_mut().poll(&mut cx).is_ready()
    }
}
