//! The web layer: one router listing every route, thin handlers, and the
//! layers (request ids, logging, security headers, limits) applied in one
//! place.

mod admin;
pub mod api;
mod assets;
mod client;
mod device;
mod error;
mod login;
mod me;
mod ops;
pub mod serve;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum_extra::extract::cookie::Key;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::cleanup::Cleanup;
use crate::clock::Clock;
use crate::config::RevokeEndpoint;
use crate::keys::Keys;
use crate::oidc::Provider;

pub use error::HttpError;

/// Largest request body accepted (no route takes a body of note).
pub const BODY_LIMIT: usize = 16 * 1024;
/// Time allowed to send a request's body, from the end of its headers.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sign-in may take between `/` and the callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Everything handlers need: one reference-counted pointer, since every
/// extractor of every request clones it.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of these parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points at.
#[derive(Debug)]
pub struct Shared {
    /// The use cases: signing in, issuing, listing and revoking keys.
    pub issuance: crate::issuance::Issuance,
    /// The OIDC relying party of the environment's issuer.
    pub provider: Provider,
    /// Every issuer people sign in through, the environment's first.
    pub providers: crate::oidc::Providers,
    /// Issuing and sweeping in the server's own project.
    pub keys: Keys,
    /// Its sweeps.
    pub cleanup: Cleanup,
    /// Every project of the policy, the server's own first.
    pub projects: crate::projects::Projects,
    /// What `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
    /// Whether `/metrics` is on the main listener (no `METRICS_ADDRESS`).
    pub metrics_on_main: bool,
    /// Time source.
    pub clock: Clock,
    /// Keys of the encrypted cookies (the previous one during a rotation).
    pub session_keys: crate::secrets::SessionKeys,
    /// Reads the secrets held in files again.
    pub reloader: Arc<crate::secrets::Reloader>,
    /// Whether cookies are `Secure` (and `__Host-` prefixed).
    pub secure_cookies: bool,
    /// Whether answers carry a `Server-Timing` header.
    pub server_timing: bool,
    /// Counts requests, so that the heap is trimmed after a burst.
    pub activity: crate::memory::Activity,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: Arc<crate::forwarded::TrustedProxies>,
    /// This server's public origin (`scheme://host[:port]` of
    /// `REDIRECT_URI`), to tell our own pages from other sites.
    pub public_origin: Arc<str>,
    /// Lifetime of a browser session (`SESSION_TTL`).
    pub session_ttl: Duration,
    /// Lifetime of a command line's session (`CLI_SESSION_TTL`).
    pub cli_session_ttl: Duration,
    /// Who may use `/revoke`.
    pub revoke_endpoint: crate::config::RevokeEndpoint,
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Self {
        state.session_keys.current()
    }
}

/// Request ids: 16 random bytes in hex, shown on error pages and logged.
#[derive(Clone, Copy, Default)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let id: [u8; 16] = rand::random();
        let mut hex = [0u8; 32];
        for (i, byte) in id.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        HeaderValue::from_bytes(&hex).ok().map(RequestId::new)
    }
}

/// Logs one line per answered request, with status and latency.
#[derive(Clone, Copy)]
struct LogResponse;

impl<B> tower_http::trace::OnResponse<B> for LogResponse {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, _: &tracing::Span) {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "answered"
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds `Server-Timing: upstream;dur=…, app;dur=…` (milliseconds): how long
/// the request waited on Google and OpenAI, and the rest of its time in the
/// server. Off unless `SERVER_TIMING=true`: it tells anyone how long the
/// upstream calls took.
async fn server_timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let waited = crate::timing::Waited::default();
    let mut response = waited.clone().scope(next.run(request)).await;
    let upstream = waited.total();
    let app = started.elapsed().saturating_sub(upstream);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let value = format!("upstream;dur={:.3}, app;dur={:.3}", ms(upstream), ms(app));
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), value);
    }
    response
}

/// Reads the whole body, within [`BODY_LIMIT`] and [`BODY_READ_TIMEOUT`],
/// before anything else looks at the request: a body that trickles in a
/// byte a second, or one larger than any route takes, costs no more than
/// this wait, and no handler, limit or upstream call ever waits on a client.
/// Only then is the connection busy (see [`serve`]): until its body is in,
/// it may be closed to make room like an idle one.
async fn read_body(request: Request, next: Next) -> Result<Response, HttpError> {
    use http_body_util::BodyExt as _;
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(HttpError::BodyTooLarge);
    }
    let limited = http_body_util::Limited::new(body, BODY_LIMIT);
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => return Err(HttpError::BodyTimeout),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(HttpError::BodyTooLarge);
        }
        Ok(Err(_)) => return Err(HttpError::BadBody),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // From here on the connection is busy: not to be closed to make room
    // until the answer has been handed over whole.
    let busy = serve::Connection::mark_busy(&parts.extensions).map_err(|_| HttpError::Closing)?;
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    Ok(response.map(|body| axum::body::Body::new(serve::BusyUntilSent::new(body, busy))))
}

/// Any path no route answers: the small page, not an empty body.
async fn not_found() -> HttpError {
    HttpError::NotFound
}

/// A method a route does not take: the small page too.
async fn method_not_allowed() -> HttpError {
    HttpError::MethodNotAllowed
}

/// Where a GET of a form's address goes.
async fn to_my_keys() -> axum::response::Redirect {
    axum::response::Redirect::to("/")
}

/// The Content-Security-Policy of every page: our own CSS and JS only, no
/// inline script, no framing, forms only back to us.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `/metrics` alone, for `METRICS_ADDRESS`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

/// Every route, with its method, and the layers around them.
pub fn router(state: AppState) -> Router {
    let timing = state.server_timing;
    let activity = state.activity.clone();
    let trusted_proxies = Arc::clone(&state.trusted_proxies);
    let hsts = state.secure_cookies.then(|| {
        SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    let mut routes = Router::new()
        .route("/", get(me::home))
        .route("/oauth2/callback", get(login::callback))
        // A GET of these (a restored tab, a copied address) mints and
        // deletes nothing: it goes to my keys.
        .route("/keys", post(me::new_key).get(to_my_keys))
        .route(
            "/keys/{service_account_id}/revoke",
            post(me::revoke).get(to_my_keys),
        )
        .route("/logout", post(me::logout).get(to_my_keys))
        .route("/cli/login", get(login::cli_login))
        .route("/device", get(device::page).post(device::answer))
        .route("/admin", get(admin::page))
        .route(
            "/admin/keys/{service_account_id}/revoke",
            post(admin::revoke),
        )
        .route("/admin/revoke-owner", post(admin::revoke_owner))
        .route("/admin/lift-budget", post(admin::lift_budget))
        .route("/admin/revoke-all", post(admin::revoke_all))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/assets/app.css", get(assets::css))
        .route("/assets/app.js", get(assets::js))
        .route("/favicon.ico", get(assets::favicon));
    routes = match state.revoke_endpoint {
        RevokeEndpoint::Public => routes.route("/revoke", get(ops::revoke).post(ops::revoke)),
        RevokeEndpoint::Admin => routes.route("/revoke", post(ops::revoke_as_admin)),
        RevokeEndpoint::Off => routes,
    };
    if state.metrics_on_main {
        routes = routes.route("/metrics", get(ops::metrics));
    }
    let (api, _) = api::routes();
    let routes = routes
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::count_request,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(read_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::reseal_previous,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::render_error_pages,
        ))
        .with_state(state);

    let layers = ServiceBuilder::new()
        // Our ids only: a client-chosen id could impersonate another
        // request's in the log.
        .map_request(move |mut request: Request| {
            // Probes are no burst: an idle server polled by its orchestrator
            // has nothing to give back.
            if !matches!(request.uri().path(), "/healthz" | "/readyz") {
                activity.record();
            }
            request.headers_mut().remove(REQUEST_ID);
            // Once, for the limits, the audit lines and the log.
            let client = client::client_of(&request, &trusted_proxies);
            request.extensions_mut().insert(client);
            request
        })
        .layer(SetRequestIdLayer::new(REQUEST_ID, RandomRequestId))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("", MatchedPath::as_str);
                    // Formatted only if the span is recorded.
                    let client = request
                        .extensions()
                        .get::<crate::limits::ClientAddr>()
                        .and_then(|c| c.0)
                        .map(tracing::field::display);
                    tracing::info_span!(
                        "request",
                        request_id,
                        method = %request.method(),
                        route,
                        client.ip = client,
                        user.email = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(LogResponse)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .option_layer(hsts);
    let routes = routes.layer(layers);
    if timing {
        // Outermost, so that it times everything else.
        routes.layer(axum::middleware::from_fn(server_timing))
    } else {
        routes
    }
}
