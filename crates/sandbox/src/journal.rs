//! A record of every request a fake answered, and counters by method and
//! route, so that tests and benchmarks can assert what reached "OpenAI" or
//! "Google" without trusting the server under test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

/// How many requests the journal keeps in full; counters never forget.
const MAX_ENTRIES: usize = 20_000;

/// One answered request.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// The path as requested, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The route pattern that matched, e.g.
    /// `/v1/organization/projects/{project_id}/service_accounts`.
    pub route: Option<String>,
    /// Status code of the answer.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Entry>,
    counters: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
}

/// Shared, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one answered request.
    pub fn record(&self, entry: Entry) {
        let mut inner = self.lock();
        let key = format!(
            "{} {}",
            entry.method,
            entry.route.as_deref().unwrap_or(&entry.path)
        );
        *inner.counters.entry(key).or_default() += 1;
        *inner.by_status.entry(entry.status).or_default() += 1;
        if inner.entries.len() < MAX_ENTRIES {
            inner.entries.push(entry);
        }
    }

    /// Every kept entry, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// Calls by `"METHOD /route/{pattern}"`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    /// How many answers had each status code.
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        self.lock().by_status.clone()
    }

    /// Calls to one `"METHOD /route/{pattern}"` key (0 when never called).
    pub fn count(&self, key: &str) -> u64 {
        self.lock().counters.get(key).copied().unwrap_or(0)
    }

    /// Total calls recorded, whatever the route.
    pub fn total(&self) -> u64 {
        self.lock().counters.values().sum()
    }

    /// Forgets entries and counters.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

/// Middleware that records each request after it is answered. Install it
/// with `axum::middleware::from_fn_with_state(journal, journal::record)`
/// as a `route_layer` so that `MatchedPath` is known.
pub async fn record(State(journal): State<Journal>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = next.run(request).await;
    journal.record(Entry {
        method,
        path,
        query,
        route,
        status: response.status().as_u16(),
    });
    response
}
