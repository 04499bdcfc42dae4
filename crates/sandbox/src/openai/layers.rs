//! The two middlewares around `/v1`: the envelope (request id, processing
//! time, headers, added latency, the journal) and, inside routing, the
//! knobs that stand in for the real API's bad days (rate limit, faults).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
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

/// The request id, handed from the outer layer to the inner one.
#[derive(Debug, Clone)]
struct RequestId(String);

/// What a truncated JSON answer looks like.
const MALFORMED_JSON: &str = r#"{"object": "list", "data": [{"id": "#;

/// Outer layer of every `/v1` request, matched or not.
pub(super) async fn envelope(
    State(fake): State<FakeOpenAi>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let started = Instant::now();
    let request_id = ids::request_id();
    let method = request.method().to_string();
    let query = request.uri().query().map(str::to_owned);
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));

    let delay = fake.knobs().latency_sample();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = next.run(request).await;

    let route = response.extensions().get::<Route>().map(|r| r.0.clone());
    fake.journal().record(journal::Entry {
        method,
        path,
        query,
        route,
        status: response.status().as_u16(),
    });
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
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
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);

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
            FaultKind::Hang => hang(&fake, &method, path, query, route.clone()).await,
            FaultKind::CommitThenHang => {
                drop(next.run(request).await);
                hang(&fake, &method, path, query, route.clone()).await
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
    method: &Method,
    path: String,
    query: Option<String>,
    route: Option<String>,
) -> Response {
    fake.journal().record(journal::Entry {
        method: method.to_string(),
        path,
        query,
        route,
        status: 0,
    });
    std::future::pending().await
}
