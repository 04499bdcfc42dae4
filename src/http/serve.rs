//! The accept loop. Ours rather than `axum::serve`, for the limits a
//! public-facing server needs:
//!
//! - **HTTP/1.1 only.** The server sits behind a TLS-terminating proxy that
//!   speaks HTTP/1.1 to it, and serves a handful of small pages; HTTP/2 would
//!   bring its own flow control, its own idle rules and its own history of
//!   denial-of-service bugs (rapid reset, CONTINUATION floods) for nothing.
//!   A client that sends the HTTP/2 preface gets a 400 or a closed
//!   connection.
//! - **Every connection makes progress or is closed.** A request line and
//!   headers must arrive within [`HEADER_READ_TIMEOUT`] of the connection
//!   opening, and of the previous answer on a kept-alive connection, so a
//!   socket that sends nothing, half a request or half a preface is closed.
//!   They must fit in [`MAX_HEADER_BYTES`]. Bodies have their own deadline
//!   (`read_body` in the router).
//! - **A bounded number of connections.** At most `max_connections` are
//!   open. At the cap a new connection closes the one that has been idle
//!   the longest, so a flood of idle sockets can delay nobody by more than
//!   a reconnect, and probes still get through. A connection is busy, and
//!   so safe from that, only from the moment its request's body has arrived
//!   until its answer has been handed over whole: a body that trickles in
//!   does not pin a slot. Only when every open connection is busy is a new
//!   one turned away, with a 503.
//!
//! Each request learns its peer address and its connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
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

use crate::memory::Activity;

/// Time allowed to send the request line and headers, counted from the
/// connection's start or from the previous answer on it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the request line and all headers (hyper answers 431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Sent to a connection turned away because every slot is busy.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\ncontent-length: 29\r\nconnection: close\r\n\r\nToo many connections; retry.\n";
/// Least time between two warnings about the connection cap.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The `busy` count of a connection chosen to make room: no request may
/// start on it any more.
const EVICTING: u32 = u32::MAX;

/// Serves `router` on `listener`, at most `limit` connections at once,
/// until `shutdown` completes; then stops accepting and waits for the open
/// connections to finish their requests. Connections that end without a
/// request (a flood) count as `activity`, so that the memory they took is
/// given back afterwards.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limit: usize,
    activity: Activity,
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
            state.requests.fetch_add(1, Ordering::Relaxed);
            request.extensions_mut().insert(ConnectInfo(peer));
            request
                .extensions_mut()
                .insert(Connection(Arc::clone(&state)));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        let activity = activity.clone();
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
            if slot.state.requests.load(Ordering::Relaxed) == 0 {
                activity.record();
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

/// The connection a request came on (in its extensions).
#[derive(Clone)]
pub(crate) struct Connection(Arc<SlotState>);

/// The connection was chosen to make room just as the request arrived.
#[derive(Debug)]
pub(crate) struct Closing;

impl Connection {
    /// Marks the connection of a request busy, so that it is not closed to
    /// make room while the request is answered; `Ok(None)` for a request
    /// that did not come through [`serve`].
    pub(crate) fn mark_busy(extensions: &axum::http::Extensions) -> Result<Option<Busy>, Closing> {
        match extensions.get::<Self>() {
            None => Ok(None),
            Some(Self(state)) => Busy::new(Arc::clone(state)).map(Some).ok_or(Closing),
        }
    }
}

/// The open connections, at most `cap` of them. Per replica.
#[derive(Clone)]
struct Slots(Arc<Mutex<Table>>);

struct Table {
    cap: usize,
    next_id: u64,
    open: HashMap<u64, Arc<SlotState>>,
    /// Hands out the order in which connections became idle.
    idle_order: Arc<AtomicU64>,
    evicted_since_warning: u64,
    last_warning: Option<Instant>,
}

/// What the accept loop knows of one connection.
struct SlotState {
    /// Requests being answered (0 or 1: HTTP/1.1 answers one at a time),
    /// or [`EVICTING`].
    busy: AtomicU32,
    /// When it last became idle, as a place in [`Table::idle_order`].
    idle_since: AtomicU64,
    idle_order: Arc<AtomicU64>,
    /// Requests it has carried.
    requests: AtomicU64,
    /// Tells the connection's task to drop it.
    evict: Notify,
}

impl SlotState {
    fn mark_idle(&self) {
        let place = self.idle_order.fetch_add(1, Ordering::AcqRel);
        self.idle_since.store(place, Ordering::Release);
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

/// Keeps a connection busy (not to be closed to make room) while alive.
pub(crate) struct Busy(Arc<SlotState>);

impl Busy {
    /// `None` when the connection is being closed to make room.
    fn new(state: Arc<SlotState>) -> Option<Self> {
        state
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != EVICTING).then(|| n + 1)
            })
            .ok()?;
        Some(Self(state))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mark_idle();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy until it has been
    /// handed over whole: a key page must not be cut off half-written.
    pub(crate) struct BusyUntilSent<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
    }
}

impl<B> BusyUntilSent<B> {
    pub(crate) fn new(inner: B, busy: Option<Busy>) -> Self {
        Self { inner, busy }
    }
}

impl<B: http_body::Body> http_body::Body for BusyUntilSent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.busy.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Slots {
    fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Table {
            cap: cap.max(1),
            next_id: 0,
            open: HashMap::new(),
            idle_order: Arc::default(),
            evicted_since_warning: 0,
            last_warning: None,
        })))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection: a free one, or the one of the connection
    /// idle the longest, which is told to close. `None` when every open
    /// connection is busy.
    fn admit(&self) -> Option<Slot> {
        let mut table = self.table();
        if table.open.len() >= table.cap {
            let mut idle: Vec<(u64, u64)> = table
                .open
                .iter()
                .filter(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
                .map(|(id, s)| (s.idle_since.load(Ordering::Acquire), *id))
                .collect();
            idle.sort_unstable();
            // The first that is still idle once marked: a request may have
            // begun on it since it was looked at.
            let victim = idle.into_iter().map(|(_, id)| id).find(|id| {
                table.open[id]
                    .busy
                    .compare_exchange(0, EVICTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            });
            let Some(victim) = victim else {
                table.warn("every connection is busy; turning new ones away");
                return None;
            };
            if let Some(state) = table.open.remove(&victim) {
                // Stored if the task is not waiting yet: it drops the
                // connection as soon as it looks.
                state.evict.notify_one();
            }
            table.evicted_since_warning += 1;
            table.warn("closing the connections idle the longest to make room");
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(SlotState {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            idle_order: Arc::clone(&table.idle_order),
            requests: AtomicU64::new(0),
            evict: Notify::new(),
        });
        state.mark_idle();
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
    /// not become a flood of log lines. The count is of connections closed
    /// to make room since the previous warning, this one's included.
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
            connections.evicted_since_last_warning = self.evicted_since_warning,
            "at MAX_CONNECTIONS: {what} (logged at most every {} s)",
            WARN_EVERY.as_secs()
        );
        self.evicted_since_warning = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `future` is ready at its first poll.
    fn ready_now(future: impl Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        future.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let slots = Slots::new(2);
        let first = slots.admit().unwrap();
        let second = slots.admit().unwrap();
        // The first is idle the longest: it goes.
        let third = slots.admit().unwrap();
        assert_eq!(slots.table().open.len(), 2);
        assert!(!slots.table().open.contains_key(&first.id));
        assert!(slots.table().open.contains_key(&second.id));
        assert!(
            ready_now(first.state.evict.notified()),
            "the evicted connection is told, even though it was not waiting yet"
        );
        assert!(
            Busy::new(Arc::clone(&first.state)).is_none(),
            "no request starts on a connection being closed"
        );
        // Both left busy: a new connection is turned away.
        let a = Busy::new(Arc::clone(&second.state)).unwrap();
        let b = Busy::new(Arc::clone(&third.state)).unwrap();
        assert!(slots.admit().is_none());
        drop(a);
        let fourth = slots.admit();
        assert!(fourth.is_some(), "idle again, so it can make room");
        drop(first);
        assert_eq!(
            slots.table().open.len(),
            2,
            "an evicted slot is not counted twice"
        );
        drop(b);
        // `third` finished its request after `fourth` arrived: `fourth`,
        // never used, has been idle longer.
        let fourth = fourth.unwrap();
        let fifth = slots.admit().unwrap();
        assert!(slots.table().open.contains_key(&third.id));
        assert!(!slots.table().open.contains_key(&fourth.id));
        drop(fifth);
    }
}
