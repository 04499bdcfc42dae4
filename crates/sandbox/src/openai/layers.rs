//! The two middlewares around `/v1`: the envelope (request id, processing
//! time, headers, added latency, the journal) and, inside routing, the
//! knobs that stand in for the real API's bad days (rate limit, faults).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::FakeOpenAi;
use super::error::ApiError;
use super::ids;
use super::knobs::FaultKind;
use crate::journal;

/// The route pattern that answered, handed from the inner layer to the
/// outer one (the outer one runs before routing and cannot see it).
#[derive(Debug, Clone)]
struct Route(String);

/// The journal entry of a request not answered yet, handed from the outer
/// layer to the inner one (which records it itself when a fault leaves the
/// request hanging).
#[derive(Debug, Clone)]
struct Pending(journal::Entry);

/// What a truncated JSON answer looks like.
const MALFORMED_JSON: &str = r#"{"object": "list", "data": [{"id": "#;

/// Outer layer of every request on the API's port except the control
/// routes, matched or not: even an unknown path gets a request id, as every
/// answer of the real API does.
pub(super) async fn envelope(
    State(fake): State<FakeOpenAi>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/_sandbox/") {
        return next.run(request).await;
    }
    let started = Instant::now();
    let request_id = ids::request_id();
    let Ok((parts, body)) = journal::buffer(request).await else {
        let too_large = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "The request body is too large.",
        );
        return finish(&fake, too_large.into_response(), &request_id, started);
    };
    let mut entry = journal::Entry::capture(&parts, &body);
    entry.request_id = Some(request_id.clone());
    let mut request = journal::rebuild(parts, body);
    request.extensions_mut().insert(Pending(entry.clone()));

    let delay = fake.knobs().latency_sample();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = next.run(request).await;

    entry.route = response.extensions().get::<Route>().map(|r| r.0.clone());
    entry.status = response.status().as_u16();
    fake.journal().record(entry);
    finish(&fake, response, &request_id, started)
}

/// Adds the headers every answer carries.
fn finish(
    fake: &FakeOpenAi,
    mut response: Response,
    request_id: &str,
    started: Instant,
) -> Response {
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    headers.insert("openai-processing-ms", HeaderValue::from(elapsed_ms));
    headers.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    if let Ok(value) = HeaderValue::from_str(fake.organization_id()) {
        headers.insert("openai-organization", value);
    }
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    response
}

/// Inner layer of every matched `/v1` route: rate limit, then the fault
/// plan, then the handler.
pub(super) async fn knobs(
    State(fake): State<FakeOpenAi>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let pending = request.extensions().get::<Pending>().map(|p| p.0.clone());
    let request_id = pending
        .as_ref()
        .and_then(|p| p.request_id.clone())
        .unwrap_or_default();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();

    let mut response = match fake.admit(&method, &path, route.as_deref()) {
        Err(limited) => limited.into_response(),
        Ok(None) => next.run(request).await,
        Ok(Some(fault)) => match fault {
            FaultKind::Status {
                status,
                retry_after,
            } => ApiError::injected(status_code(status), &request_id)
                .retry_after(retry_after)
                .into_response(),
            FaultKind::MalformedJson => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(MALFORMED_JSON),
            )
                .into_response(),
            FaultKind::CommitThenFail { status } => {
                drop(next.run(request).await);
                ApiError::injected(status_code(status), &request_id).into_response()
            }
            FaultKind::Delay { ms } => {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                next.run(request).await
            }
            FaultKind::DelayAnswer { ms } => {
                let response = next.run(request).await;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                response
            }
            FaultKind::Oversized { bytes } => crate::padding::oversized(bytes),
            FaultKind::Hang => hang(&fake, pending, route.clone()).await,
            FaultKind::CommitThenHang => {
                drop(next.run(request).await);
                hang(&fake, pending, route.clone()).await
            }
        },
    };
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Records the request as never answered (status 0) and waits until the
/// client gives up, which drops this future.
async fn hang(
    fake: &FakeOpenAi,
    pending: Option<journal::Entry>,
    route: Option<String>,
) -> Response {
    if let Some(mut entry) = pending {
        entry.route = route;
        entry.status = 0;
        fake.journal().record(entry);
    }
    std::future::pending().await
}
