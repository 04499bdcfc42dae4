//! A record of every request a fake answered, and counters by method and
//! route, so that tests and benchmarks can assert what reached "OpenAI" or
//! "Google" without trusting the server under test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// How many requests the journal keeps in full; counters never forget.
const MAX_ENTRIES: usize = 20_000;

/// The largest request body a fake reads (larger ones are refused with
/// 413 before any handler sees them, as a real front end would).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How much of a body an entry keeps; the rest is cut off (see
/// [`Entry::body_len`]).
const MAX_RECORDED_BODY: usize = 64 * 1024;

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
    /// Status code of the answer (0: never answered, e.g. a hang fault).
    pub status: u16,
    /// The request body as text (invalid UTF-8 replaced), cut to its first
    /// 64 KiB; `None` when the body was empty. It is kept as sent, so an
    /// OAuth token request shows its `client_secret` here: the journal is a
    /// test instrument on loopback, never a log.
    pub body: Option<String>,
    /// Length of the whole body in bytes, even when `body` is cut short.
    pub body_len: usize,
    /// Lowercase hex SHA-256 of the whole `Authorization` header value
    /// (e.g. of `Bearer sk-admin-…`), so that tests can tell which
    /// credential was used without the journal holding it; see
    /// [`authorization_hash`].
    pub authorization_sha256: Option<String>,
    /// The `x-request-id` the answer carried, where the fake sends one.
    pub request_id: Option<String>,
}

impl Entry {
    /// An entry for a request not answered yet (status 0, no route): what
    /// the head and the whole body of the request show.
    pub fn capture(parts: &Parts, body: &[u8]) -> Self {
        let recorded = &body[..body.len().min(MAX_RECORDED_BODY)];
        Self {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            route: parts
                .extensions
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_owned()),
            status: 0,
            body: (!body.is_empty()).then(|| String::from_utf8_lossy(recorded).into_owned()),
            body_len: body.len(),
            authorization_sha256: parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|value| hex_sha256(value.as_bytes())),
            request_id: None,
        }
    }

    /// The body parsed as JSON, if it is JSON (and was not cut short).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.body.as_deref()?).ok()
    }

    /// The body's `application/x-www-form-urlencoded` pairs, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        self.body
            .as_deref()
            .map(|body| {
                url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the request carried exactly this `Authorization` value,
    /// e.g. `entry.authorized_with(&format!("Bearer {admin_key}"))`.
    pub fn authorized_with(&self, authorization: &str) -> bool {
        self.authorization_sha256.as_deref() == Some(authorization_hash(authorization).as_str())
    }
}

/// The [`Entry::authorization_sha256`] of an `Authorization` header value.
pub fn authorization_hash(authorization: &str) -> String {
    hex_sha256(authorization.as_bytes())
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Reads a request's whole body (up to [`MAX_BODY_BYTES`]) so that it can be
/// both recorded and handed on; `Err` when it is larger or cannot be read.
pub async fn buffer(request: Request) -> Result<(Parts, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(_) => Err(StatusCode::PAYLOAD_TOO_LARGE.into_response()),
    }
}

/// The request again, from what [`buffer`] read.
pub fn rebuild(parts: Parts, body: Bytes) -> Request {
    Request::from_parts(parts, Body::from(body))
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

/// Middleware that records each request, body and credential hash
/// included, after it is answered. Install it with
/// `axum::middleware::from_fn_with_state(journal, journal::record)` as a
/// `route_layer` so that `MatchedPath` is known.
pub async fn record(State(journal): State<Journal>, request: Request, next: Next) -> Response {
    let (parts, body) = match buffer(request).await {
        Ok(buffered) => buffered,
        Err(too_large) => return too_large,
    };
    let mut entry = Entry::capture(&parts, &body);
    let response = next.run(rebuild(parts, body)).await;
    entry.status = response.status().as_u16();
    journal.record(entry);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_the_body_and_only_a_hash_of_the_credential() {
        let request = axum::http::Request::post("/token?x=1")
            .header(header::AUTHORIZATION, "Basic c2VjcmV0")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let entry = Entry::capture(&parts, b"grant_type=authorization_code&code=4%2F0A");

        assert_eq!(entry.query.as_deref(), Some("x=1"));
        assert_eq!(
            entry.form()[1],
            ("code".to_owned(), "4/0A".to_owned()),
            "{entry:?}"
        );
        assert!(entry.authorized_with("Basic c2VjcmV0"));
        assert!(!entry.authorized_with("Basic c2VjcmV1"));
        assert!(!format!("{entry:?}").contains("c2VjcmV0"));
        // SHA-256 of "abc" (FIPS 180-2 example).
        assert_eq!(
            authorization_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_long_body_is_cut_but_its_length_is_kept() {
        let (parts, ()) = axum::http::Request::post("/x")
            .body(())
            .unwrap()
            .into_parts();
        let big = vec![b'a'; MAX_RECORDED_BODY + 10];
        let entry = Entry::capture(&parts, &big);
        assert_eq!(
            entry.body.as_ref().map(String::len),
            Some(MAX_RECORDED_BODY)
        );
        assert_eq!(entry.body_len, MAX_RECORDED_BODY + 10);
        assert!(Entry::capture(&parts, b"").body.is_none());
    }
}
