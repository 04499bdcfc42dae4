//! The JSON API (`/api/v1`) for the CLI (and, next, CI jobs). A caller is a
//! CLI session in `Authorization: Bearer`, never a cookie, so no form of
//! another site can reach these routes with anyone's authority. Each
//! handler extracts, calls the issuance core, answers JSON; errors become
//! `{"error": {…}}` in the one place that maps them (see `error.rs`).
//!
//! The router and the OpenAPI document are made from the same annotations
//! ([`utoipa_axum`]), so no route can be missing from the document.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, HttpError};
use crate::api::{
    CliSession, DeviceAuthorization, ErrorBody, KeyItem, KeyList, Me, NewKey, NewKeyRequest,
    TokenRequest,
};
use crate::issuance::{Caller, IssueRequest};
use crate::keys::KeyInfo;
use crate::limits::ClientAddr;

/// A CLI session's holder, still allowed: `Authorization: Bearer <token>`.
pub(crate) struct ApiCaller(pub(crate) Caller);

/// The token of the request's one `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<SecretString> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_owned()))
}

impl<S> FromRequestParts<S> for ApiCaller
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(&parts.headers).ok_or(HttpError::NoBearer)?;
        let caller = state.issuance.caller(&token, state.clock.now())?;
        tracing::Span::current().record("user.email", caller.grant.owner.as_str());
        Ok(Self(caller))
    }
}

/// The request's bearer token, whatever it is: a CLI session, or a CI
/// job's OIDC token.
pub(crate) struct AnyBearer(SecretString);

impl<S: Send + Sync> FromRequestParts<S> for AnyBearer {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        bearer(&parts.headers).map(Self).ok_or(HttpError::NoBearer)
    }
}

/// A JWT is three dot-separated parts; a sealed session has no dot.
fn is_job_token(token: &SecretString) -> bool {
    token.expose_secret().bytes().filter(|&b| b == b'.').count() == 2
}

/// A JSON body that may be left out (then `T::default()`).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(request.into_body(), super::BODY_LIMIT)
            .await
            .map_err(|_| HttpError::BadBody)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|error| HttpError::BadJson(error.to_string().chars().take(200).collect()))
    }
}

/// A JSON body that must be there.
pub(crate) struct RequiredJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for RequiredJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(request.into_body(), super::BODY_LIMIT)
            .await
            .map_err(|_| HttpError::BadBody)?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|error| HttpError::BadJson(error.to_string().chars().take(200).collect()))
    }
}

/// JSON that carries a secret (a key, a session, a device code): never
/// cached.
fn secret_json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn tokens(tokens: crate::usage::Tokens) -> crate::api::Tokens {
    crate::api::Tokens {
        input_tokens: tokens.input,
        output_tokens: tokens.output,
        requests: tokens.requests,
    }
}

fn item(key: KeyInfo, usage: &crate::usage::Usage, now: std::time::SystemTime) -> KeyItem {
    KeyItem {
        usage: usage
            .interval()
            .and(key.key_id.as_deref())
            .filter(|_| usage.polled_at().is_some())
            .map(|id| tokens(usage.of_key(id, now))),
        id: key.service_account_id,
        key_id: key.key_id,
        owner: key.owner.to_string(),
        created_at: key.created_at,
        expires_at: key.expires_at,
        last_used_at: key.last_used_at,
        project_id: key.project_id,
    }
}

/// Makes a key for the caller: a CLI session's holder, or a CI job whose
/// OIDC token (GitHub Actions, GitLab CI) is the bearer.
#[utoipa::path(
    post,
    path = "/keys",
    tag = "keys",
    request_body(content = Option<NewKeyRequest>, description = "Optional; `{}` or no body gives a key of the longest lifetime allowed."),
    responses(
        (status = 201, description = "The key, shown in this answer only.", body = NewKey),
        (status = 400, description = "`ttl_too_long`: over the caller's maximum, which the message names; or a body that cannot be read.", body = ErrorBody),
        (status = 401, description = "No session, or it ended: sign in again (`openai-key-server login`). For a CI job's token: `invalid_token` (signature, issuer, audience, expiry, age; the message says which), `token_replayed` (each token gives one key).", body = ErrorBody),
        (status = 403, description = "The caller is no longer allowed, or no rule allows this CI job (the message names the claim).", body = ErrorBody),
        (status = 429, description = "`cap_reached`, `rate_limited`, or `over_budget` (the holder's keys used their tokens for the day); `Retry-After` says when.", body = ErrorBody),
        (status = 502, description = "OpenAI failed, or the CI job's token issuer could not be reached.", body = ErrorBody),
    ),
    security(("cli_session" = []), ("job_token" = []))
)]
async fn create_key(
    State(state): State<AppState>,
    client: ClientAddr,
    AnyBearer(token): AnyBearer,
    JsonBody(request): JsonBody<NewKeyRequest>,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let wanted = IssueRequest {
        lifetime: request.ttl_seconds.map(Duration::from_secs),
    };
    let (owner, issued) = if is_job_token(&token) {
        let (grant, issued) = state
            .issuance
            .issue_for_job(client, &token, &wanted, now)
            .await?;
        (grant.owner, issued)
    } else {
        let caller = state.issuance.caller(&token, now)?;
        tracing::Span::current().record("user.email", caller.grant.owner.as_str());
        let issued = state.issuance.issue(&caller.identity, &wanted, now).await?;
        (caller.grant.owner, issued)
    };
    let body = NewKey {
        id: issued.service_account_id,
        key: issued.value,
        key_id: issued.key_id,
        expires_at: issued.expires_at,
        project_id: issued.project_id,
        owner: owner.to_string(),
    };
    Ok(secret_json(StatusCode::CREATED, &body))
}

/// The caller's live keys, without their values.
#[utoipa::path(
    get,
    path = "/keys",
    tag = "keys",
    responses(
        (status = 200, description = "Soonest expiry first.", body = KeyList),
        (status = 401, description = "No session, or it ended.", body = ErrorBody),
        (status = 403, description = "The caller is no longer allowed.", body = ErrorBody),
    ),
    security(("cli_session" = []))
)]
async fn list_keys(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let listed = state.issuance.list_for(&caller.identity, now).await?;
    let usage = state.issuance.usage();
    let grant = &caller.grant;
    let usage_today = usage.interval().map(|_| {
        let over = usage.over_budget(&grant.owner, grant.budget, now);
        let priced = !usage.prices().is_empty();
        let spend = usage.spend_of_owner(&grant.owner, now);
        #[expect(clippy::cast_precision_loss, reason = "cents far below 2^52")]
        let usd_per_month =
            (grant.budget.cents_per_month > 0).then(|| grant.budget.cents_per_month as f64 / 100.0);
        crate::api::UsageToday {
            tokens: tokens(usage.of_owner(&grant.owner, now)),
            tokens_per_day: (grant.budget.tokens_per_day > 0)
                .then_some(grant.budget.tokens_per_day),
            usd_this_month: priced.then_some(spend.estimated),
            usd_this_month_billed: spend.billed.filter(|_| priced),
            usd_per_month,
            over_budget: over.is_some(),
            resets_at: over.map_or_else(|| crate::usage::day_of(now).1, |over| over.resets_at),
            read_at: usage.polled_at(),
        }
    });
    let body = KeyList {
        keys: listed
            .keys
            .into_iter()
            .map(|key| item(key, usage, now))
            .collect(),
        usage_today,
        fresh: listed.fresh,
    };
    Ok(secret_json(StatusCode::OK, &body))
}

/// Revokes one of the caller's keys at once.
#[utoipa::path(
    delete,
    path = "/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's `id` (its service account).")),
    responses(
        (status = 204, description = "Revoked: OpenAI refuses it from now on."),
        (status = 401, description = "No session, or it ended.", body = ErrorBody),
        (status = 404, description = "No live key of the caller has this id.", body = ErrorBody),
        (status = 502, description = "OpenAI failed; try again.", body = ErrorBody),
    ),
    security(("cli_session" = []))
)]
async fn delete_key(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let now = state.clock.now();
    state.issuance.revoke(&caller.identity, &id, now).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the caller is and what they may get.
#[utoipa::path(
    get,
    path = "/me",
    tag = "session",
    responses(
        (status = 200, body = Me),
        (status = 401, description = "No session, or it ended.", body = ErrorBody),
        (status = 403, description = "The caller is no longer allowed.", body = ErrorBody),
    ),
    security(("cli_session" = []))
)]
async fn me(ApiCaller(caller): ApiCaller) -> Json<Me> {
    Json(Me {
        email: caller.grant.owner.to_string(),
        admin: caller.grant.admin,
        max_ttl_seconds: caller.grant.max_lifetime.as_secs(),
        max_keys: caller.grant.cap,
        session_expires_at: caller.session_expires_at,
    })
}

/// Finishes a command line's sign-in: the loopback's one-time code with
/// its PKCE verifier, or a device code once its person has confirmed it
/// (poll every `interval` seconds; RFC 8628's error codes).
#[utoipa::path(
    post,
    path = "/cli/token",
    tag = "session",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "A CLI session.", body = CliSession),
        (status = 400, description = "`invalid_grant` (a code spent, expired or with a wrong verifier), `authorization_pending`, `slow_down` (with the new `interval`), `expired_token`, `access_denied`, or an unknown `grant_type`.", body = ErrorBody),
        (status = 403, description = "The person is not allowed.", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this address.", body = ErrorBody),
    )
)]
async fn token(
    State(state): State<AppState>,
    client: ClientAddr,
    RequiredJson(request): RequiredJson<TokenRequest>,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let TokenRequest {
        grant_type,
        code,
        code_verifier,
        device_code,
    } = request;
    let issued = match (grant_type.as_str(), code, code_verifier, device_code) {
        (crate::api::GRANT_CODE, Some(code), Some(verifier), None) => state
            .issuance
            .redeem_cli_code(client, &code, &verifier, now)?,
        (crate::api::GRANT_DEVICE, None, None, Some(device_code)) => {
            state.issuance.poll_device(&device_code, now)?
        }
        _ => return Err(HttpError::BadGrant),
    };
    let body = CliSession {
        access_token: issued.token,
        token_type: "Bearer".to_owned(),
        expires_at: issued.expires_at,
        email: issued.email,
    };
    Ok(secret_json(StatusCode::OK, &body))
}

/// Begins a device sign-in: show the person `user_code` and
/// `verification_uri`, then poll `POST /api/v1/cli/token`.
#[utoipa::path(
    post,
    path = "/cli/device",
    tag = "session",
    responses(
        (status = 200, body = DeviceAuthorization),
        (status = 429, description = "Too many sign-ins from this address.", body = ErrorBody),
        (status = 503, description = "Too many device sign-ins pending.", body = ErrorBody),
    )
)]
async fn device(State(state): State<AppState>, client: ClientAddr) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let started = state.issuance.start_device(client, now)?;
    let verification_uri = format!("{}/device", state.public_origin);
    let body = DeviceAuthorization {
        device_code: started.device_code,
        verification_uri_complete: format!("{verification_uri}?code={}", started.user_code),
        verification_uri,
        user_code: started.user_code,
        expires_in: started.expires_in,
        interval: started.interval,
    };
    Ok(secret_json(StatusCode::OK, &body))
}

/// The document's frame: title, version, and how callers authenticate.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "openai-key-server",
        description = "Short-lived OpenAI API keys for people who sign in and for CI jobs. Sign a command line in with `openai-key-server login`; every other call carries its session as `Authorization: Bearer`. A CI job sends its OIDC token (requested with the policy's audience) as `Authorization: Bearer` to `POST /api/v1/keys`.",
    ),
    modifiers(&BearerSession),
    tags(
        (name = "keys", description = "The caller's keys."),
        (name = "session", description = "Signing a command line in, and who it is."),
    )
)]
struct ApiDoc;

struct BearerSession;

impl utoipa::Modify for BearerSession {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "cli_session",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let mut job = Http::new(HttpAuthScheme::Bearer);
        job.bearer_format = Some("JWT".to_owned());
        job.description =
            Some("A CI job's OIDC token for the policy's audience; good for one key.".to_owned());
        components.add_security_scheme("job_token", SecurityScheme::Http(job));
    }
}

/// The API's routes, and the OpenAPI document made from the same
/// annotations (as JSON, made once).
pub(super) fn routes() -> (axum::Router<AppState>, Arc<str>) {
    let api = OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
        .routes(routes!(me))
        .routes(routes!(token))
        .routes(routes!(device));
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(crate::api::PREFIX, api)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let json: Arc<str> = doc
        .to_json()
        .expect("the OpenAPI document serialises")
        .into();
    let served = Arc::clone(&json);
    let router = router.route(
        "/api/v1/openapi.json",
        axum::routing::get(move || {
            let json = Arc::clone(&served);
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
            }
        }),
    );
    (router, json)
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi_json() -> Arc<str> {
    routes().1
}
