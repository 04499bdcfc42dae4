//! Operator routes: on-demand cleanup (`/revoke`, as in the Go original) and
//! health checks.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::limits::ClientIp;
use super::{AppState, HttpError};
use crate::keys::SweepReport;

/// Runs a cleanup now (or joins the running one) and answers its counts.
pub(super) async fn revoke(
    State(state): State<AppState>,
    client: ClientIp,
    // Read (and so size-checked) even though unused: a chunked body has no
    // length for the limit layer to refuse up front.
    _body: axum::body::Bytes,
) -> Result<Json<SweepReport>, HttpError> {
    // Each call lists every account: cheap to ask, costly to answer.
    state
        .limits
        .revoke_per_ip
        .check(&client.key(), state.clock.now())
        .map_err(|retry_after| HttpError::RateLimited {
            what: "cleanups per address",
            retry_after,
        })?;
    state
        .cleanup
        .run_now()
        .await
        .map(Json)
        .map_err(HttpError::Sweep)
}

/// The process is alive.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the provider's discovery and the Admin API answered at least
/// once; until then each call tries them again, so that a server that
/// started while either was down becomes ready without a restart.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let discovery = state.provider.was_reached() || state.provider.metadata().await.is_ok();
    let admin_api = state.keys.was_reached() || state.keys.probe().await.is_ok();
    let status = if discovery && admin_api {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "discovery": discovery, "admin_api": admin_api })),
    )
}
