//! Operator routes: on-demand cleanup (`/revoke`, as in the Go original) and
//! health checks.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::json;

use super::session::Form;
use super::{AppState, HttpError};
use crate::limits::ClientAddr;

/// What `/revoke` tells anyone who asks: that a sweep was asked for, and
/// nothing of what it found, nor (by answering at once) how long it took.
/// The counts, and any failure, go to the log.
#[derive(Serialize)]
pub(super) struct SweepRequested {
    sweep: &'static str,
}

/// Asks for a cleanup (at most one per interval, shared by every caller;
/// see [`crate::cleanup::REQUESTED_SWEEP_INTERVAL`]) and answers at once.
pub(super) async fn revoke(
    State(state): State<AppState>,
    client: ClientAddr,
) -> Result<Json<SweepRequested>, HttpError> {
    state.issuance.request_sweep(client, state.clock.now())?;
    Ok(Json(SweepRequested { sweep: "requested" }))
}

/// `/revoke` with `REVOKE_ENDPOINT=admin`: a signed-in admin's form only.
pub(super) async fn revoke_as_admin(
    State(state): State<AppState>,
    client: ClientAddr,
    Form { signed_in, .. }: Form<serde::de::IgnoredAny>,
) -> Result<Json<SweepRequested>, HttpError> {
    state
        .issuance
        .request_sweep_as_admin(&signed_in.identity, client, state.clock.now())?;
    Ok(Json(SweepRequested { sweep: "requested" }))
}

/// The process is alive.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the provider's discovery and the Admin API answered at least
/// once; until then each call tries them again, so that a server that
/// started while either was down becomes ready without a restart. It
/// stays ready when they fail later: every replica would fail alike, and
/// taking them all out of the load balancer for an upstream's blip would
/// turn it into an outage. The body says how the last call to each went
/// (as `oks_upstream_up` does), for the operator.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let discovery = state.provider.was_reached() || state.provider.metadata().await.is_ok();
    let admin_api = state.keys.was_reached() || state.keys.probe(state.clock.now()).await.is_ok();
    let status = if discovery && admin_api {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "discovery": discovery,
            "admin_api": admin_api,
            "last_call": {
                "openai": state_word(state.metrics.upstream_state("openai")),
                "identity_provider": state_word(state.metrics.upstream_state("identity_provider")),
            },
        })),
    )
}

fn state_word(up: Option<bool>) -> &'static str {
    match up {
        Some(true) => "up",
        Some(false) => "down",
        None => "unknown",
    }
}

/// `GET /metrics`: the Prometheus exposition, the live keys counted now.
pub(crate) async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    let live = state.projects.all_keys(state.clock.now()).len();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(live),
    )
        .into_response()
}

/// Counts each request by its route (the matched pattern, never the path
/// with its ids), method and status, and its time.
pub(super) async fn count_request(
    State(state): State<AppState>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let context = crate::audit::Context {
        request_id: request
            .headers()
            .get(super::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        client: request
            .extensions()
            .get::<crate::limits::ClientAddr>()
            .and_then(|c| c.0)
            .map(|ip| ip.to_string()),
    };
    let response = crate::audit::within(context, next.run(request)).await;
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
    state.metrics.http(
        route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
