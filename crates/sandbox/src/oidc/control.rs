//! JSON control routes under `/_sandbox/oidc/`, one per control method of
//! [`FakeOidc`], for tests and demos that drive the fake from outside the
//! process. No authentication: the sandbox binds loopback only.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{FakeOidc, GithubClaims, Identity, IssuerForm, TokenOverride};

pub(super) fn router() -> Router<FakeOidc> {
    Router::new()
        .route("/_sandbox/oidc/queue-identity", post(queue_identity))
        .route("/_sandbox/oidc/auto-approve", post(auto_approve))
        .route(
            "/_sandbox/oidc/allow-redirect-uri",
            post(allow_redirect_uri),
        )
        .route("/_sandbox/oidc/rotate-keys", post(rotate_keys))
        .route("/_sandbox/oidc/publish-next-key", post(publish_next_key))
        .route(
            "/_sandbox/oidc/override-next-token",
            post(override_next_token),
        )
        .route("/_sandbox/oidc/deny-next", post(deny_next))
        .route("/_sandbox/oidc/jwks-max-age", post(jwks_max_age))
        .route("/_sandbox/oidc/fail-next-jwks", post(fail_next_jwks))
        .route("/_sandbox/oidc/hang-next-jwks", post(hang_next_jwks))
        .route("/_sandbox/oidc/code-ttl", post(code_ttl))
        .route(
            "/_sandbox/oidc/rotate-refresh-tokens",
            post(rotate_refresh_tokens),
        )
        .route("/_sandbox/oidc/fixtures", get(fixtures))
        .route("/_sandbox/oidc/fail-next-token", post(fail_next_token))
        .route("/_sandbox/oidc/oversize-next", post(oversize_next))
        .route("/_sandbox/oidc/issuer-form", post(issuer_form))
        .route("/_sandbox/oidc/require-pkce-s256", post(require_pkce_s256))
        .route("/_sandbox/oidc/mint-id-token", post(mint_id_token))
        .route("/_sandbox/oidc/github-token", post(github_token))
        .route("/_sandbox/oidc/actions-token", get(actions_token))
        .route("/_sandbox/oidc/stats", get(stats))
        .route("/_sandbox/oidc/journal", get(journal))
}

async fn queue_identity(
    State(oidc): State<FakeOidc>,
    Json(identity): Json<Identity>,
) -> StatusCode {
    oidc.queue_identity(identity);
    StatusCode::NO_CONTENT
}

async fn auto_approve(
    State(oidc): State<FakeOidc>,
    Json(identity): Json<Option<Identity>>,
) -> StatusCode {
    oidc.set_auto_approve(identity);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct RedirectUri {
    redirect_uri: String,
}

async fn allow_redirect_uri(
    State(oidc): State<FakeOidc>,
    Json(body): Json<RedirectUri>,
) -> StatusCode {
    oidc.allow_redirect_uri(&body.redirect_uri);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default)]
    keep_old: bool,
    /// Keep the old key published this long (virtual seconds), then drop
    /// it; overrides `keep_old`.
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

async fn rotate_keys(State(oidc): State<FakeOidc>, Json(body): Json<Rotate>) -> Response {
    let kid = match body.overlap_seconds {
        Some(secs) => oidc.rotate_keys_with_overlap(Duration::from_secs(secs)),
        None => oidc.rotate_keys(body.keep_old),
    };
    Json(json!({ "kid": kid })).into_response()
}

async fn publish_next_key(State(oidc): State<FakeOidc>) -> Json<Value> {
    Json(json!({ "kid": oidc.publish_next_key() }))
}

async fn override_next_token(
    State(oidc): State<FakeOidc>,
    Json(forged): Json<TokenOverride>,
) -> StatusCode {
    oidc.override_next_token(forged);
    StatusCode::NO_CONTENT
}

async fn deny_next(State(oidc): State<FakeOidc>) -> StatusCode {
    oidc.deny_next();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct MaxAge {
    seconds: u64,
}

async fn jwks_max_age(State(oidc): State<FakeOidc>, Json(body): Json<MaxAge>) -> StatusCode {
    oidc.set_jwks_max_age(body.seconds);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Oversize {
    endpoint: super::Endpoint,
    #[serde(default = "one")]
    count: u32,
    bytes: u64,
}

fn one() -> u32 {
    1
}

async fn oversize_next(State(oidc): State<FakeOidc>, Json(body): Json<Oversize>) -> StatusCode {
    oidc.oversize_next(body.endpoint, body.count, body.bytes);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FailJwks {
    count: u32,
}

async fn fail_next_jwks(State(oidc): State<FakeOidc>, Json(body): Json<FailJwks>) -> StatusCode {
    oidc.fail_next_jwks(body.count);
    StatusCode::NO_CONTENT
}

async fn hang_next_jwks(State(oidc): State<FakeOidc>, Json(body): Json<FailJwks>) -> StatusCode {
    oidc.hang_next_jwks(body.count);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Seconds {
    seconds: u64,
}

async fn code_ttl(State(oidc): State<FakeOidc>, Json(body): Json<Seconds>) -> StatusCode {
    oidc.set_code_ttl(Duration::from_secs(body.seconds));
    StatusCode::NO_CONTENT
}

async fn rotate_refresh_tokens(
    State(oidc): State<FakeOidc>,
    Json(body): Json<Enabled>,
) -> StatusCode {
    oidc.set_rotate_refresh_tokens(body.enabled);
    StatusCode::NO_CONTENT
}

/// `{"alice": Identity, …}`.
async fn fixtures(State(oidc): State<FakeOidc>) -> Json<Map<String, Value>> {
    Json(
        oidc.fixtures()
            .into_iter()
            .map(|(id, identity)| (id, json!(identity)))
            .collect(),
    )
}

#[derive(Deserialize)]
struct FailToken {
    count: u32,
    #[serde(default = "internal_error")]
    status: u16,
}

fn internal_error() -> u16 {
    500
}

async fn fail_next_token(State(oidc): State<FakeOidc>, Json(body): Json<FailToken>) -> StatusCode {
    oidc.fail_next_token(body.count, body.status);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Form {
    form: IssuerForm,
}

async fn issuer_form(State(oidc): State<FakeOidc>, Json(body): Json<Form>) -> StatusCode {
    oidc.set_issuer_form(body.form);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Enabled {
    enabled: bool,
}

async fn require_pkce_s256(State(oidc): State<FakeOidc>, Json(body): Json<Enabled>) -> StatusCode {
    oidc.set_require_pkce_s256(body.enabled);
    StatusCode::NO_CONTENT
}

async fn mint_id_token(
    State(oidc): State<FakeOidc>,
    Json(claims): Json<Map<String, Value>>,
) -> Json<Value> {
    Json(json!({ "id_token": oidc.mint_id_token(claims) }))
}

/// Answers like GitHub's runner token service: `{"value": "<jwt>"}`.
async fn github_token(
    State(oidc): State<FakeOidc>,
    Json(claims): Json<GithubClaims>,
) -> Json<Value> {
    Json(json!({ "value": oidc.mint_github_token(claims) }))
}

/// The runner's side of a job's token request, as a workflow step makes it:
/// `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=…` with
/// `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`. The URL's own
/// query names the job (`repository`, `ref`, `environment`); the request
/// token may be anything but empty, as only the runner checks it.
#[derive(Deserialize)]
struct ActionsToken {
    repository: String,
    #[serde(rename = "ref")]
    ref_: String,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    environment: Option<String>,
}

async fn actions_token(
    State(oidc): State<FakeOidc>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<ActionsToken>,
) -> Response {
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
        });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let mut claims = GithubClaims::new(&query.repository, &query.ref_);
    claims.audience = query.audience;
    claims.environment = query.environment;
    Json(json!({ "value": oidc.mint_github_token(claims) })).into_response()
}

async fn stats(State(oidc): State<FakeOidc>) -> Json<Value> {
    Json(json!({
        "issuer": oidc.issuer(),
        "client_id": oidc.client_id(),
        "jwks_fetches": oidc.jwks_fetches(),
        "issued_codes": oidc.issued_codes_count(),
        "current_kid": oidc.current_kid(),
        "published_kids": oidc.published_kids(),
        "counters": oidc.journal().counters(),
    }))
}

async fn journal(State(oidc): State<FakeOidc>) -> Json<Value> {
    Json(json!({ "entries": oidc.journal().entries() }))
}
