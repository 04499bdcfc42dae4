//! The token endpoint (client authentication, code exchange, ID-token
//! minting), and the two endpoints that take its access tokens: userinfo
//! and revocation.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::authorize::Pkce;
use super::jwt::{self, Unsigned};
use super::params::{self, Params};
use super::{FakeOidc, Identity, Provider, State as ProviderState, URL_SAFE, random_string};

/// Lifetime of access tokens, as Google reports it in `expires_in`.
const ACCESS_TOKEN_SECS: i64 = 3599;
/// `exp - iat` of ID tokens.
const ID_TOKEN_SECS: i64 = 3600;

/// What an authorization code stands for.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) identity: Identity,
    pub(super) sub: String,
    pub(super) nonce: Option<String>,
    pub(super) pkce: Option<Pkce>,
    pub(super) scope: String,
    pub(super) expires_ms: i64,
    /// Set by the first exchange attempt, whatever its outcome.
    pub(super) used: bool,
    /// The access token the code was exchanged for, revoked if the code is
    /// presented again.
    pub(super) access_token: Option<String>,
    /// The request had `access_type=offline`.
    pub(super) offline: bool,
    /// The request had `prompt=consent`.
    pub(super) consent: bool,
}

/// What an access token stands for.
#[derive(Debug, Clone)]
pub(super) struct AccessGrant {
    /// The userinfo answer.
    claims: Map<String, Value>,
    expires_ms: i64,
    revoked: bool,
    /// The refresh token of the same grant, if one was issued.
    refresh_token: Option<String>,
}

/// What a refresh token stands for: the grant of one code exchange.
#[derive(Debug, Clone)]
pub(super) struct RefreshGrant {
    client_id: String,
    identity: Identity,
    sub: String,
    scope: String,
    revoked: bool,
    /// Every access token issued under this grant.
    access_tokens: Vec<String>,
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Add `WWW-Authenticate: Basic` (client authentication by Basic failed).
    basic_challenge: bool,
}

impl OAuthError {
    fn bad_request(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_grant(description: &str) -> Self {
        Self::bad_request("invalid_grant", description)
    }

    fn invalid_client(description: &str, basic_challenge: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.to_owned(),
            basic_challenge,
        }
    }

    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = json_no_store(self.status, &body);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"token\""),
            );
        }
        response
    }
}

fn json_no_store(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `POST /token`.
pub(super) async fn exchange(
    State(oidc): State<FakeOidc>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = &oidc.inner;
    if let Some(failure) = injected_failure(provider) {
        return failure;
    }
    if let Some(oversized) = provider.take_oversized(super::Endpoint::Token) {
        return oversized;
    }
    exchange_checked(provider, &headers, &body).unwrap_or_else(OAuthError::into_response)
}

fn exchange_checked(
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuthError> {
    if !params::is_form(headers) {
        return Err(OAuthError::bad_request(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded.",
        ));
    }
    let params = Params::parse(body);
    if let Some(name) = params.repeated() {
        return Err(OAuthError::bad_request(
            "invalid_request",
            format!("Parameter not allowed more than once: {name}"),
        ));
    }
    let client_id = authenticate(provider, headers, &params)?;
    match params.get("grant_type") {
        None => Err(OAuthError::bad_request(
            "invalid_request",
            "Missing required parameter: grant_type",
        )),
        Some("authorization_code") => redeem(provider, &client_id, &params),
        Some("refresh_token") => refresh(provider, &client_id, &params),
        Some(other) => Err(OAuthError::bad_request(
            "unsupported_grant_type",
            format!("Invalid grant_type: {other}"),
        )),
    }
}

/// The answer armed by [`FakeOidc::fail_next_token`], if any is left.
fn injected_failure(provider: &Provider) -> Option<Response> {
    let status = {
        let mut state = provider.lock();
        if state.fail_token == 0 {
            return None;
        }
        state.fail_token -= 1;
        StatusCode::from_u16(state.fail_token_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    let error = if status == StatusCode::SERVICE_UNAVAILABLE {
        "temporarily_unavailable"
    } else if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request"
    };
    Some(json_no_store(
        status,
        &json!({"error": error, "error_description": "Backend Error"}),
    ))
}

/// Client authentication by `client_secret_basic` or `client_secret_post`
/// (never both: RFC 6749 §2.3). Returns the client id.
fn authenticate(
    provider: &Provider,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let (client_id, secret, by_basic) = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let (id, secret) = basic_credentials(value)
                .ok_or_else(|| OAuthError::invalid_client("Unauthorized", true))?;
            if params.get("client_secret").is_some() {
                return Err(OAuthError::bad_request(
                    "invalid_request",
                    "Only one client authentication method may be used.",
                ));
            }
            if params.get("client_id").is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::invalid_client("Unauthorized", true));
            }
            (id, Some(secret), true)
        }
        None => {
            let Some(id) = params.get("client_id") else {
                return Err(OAuthError::bad_request(
                    "invalid_request",
                    "Could not determine client ID from request.",
                ));
            };
            (
                id.to_owned(),
                params.get("client_secret").map(str::to_owned),
                false,
            )
        }
    };
    if provider.client_id.is_empty() || client_id != provider.client_id {
        return Err(OAuthError::invalid_client(
            "The OAuth client was not found.",
            by_basic,
        ));
    }
    match secret {
        Some(secret) if provider.client_secret_is_live(&secret) => Ok(client_id),
        _ => Err(OAuthError::invalid_client("Unauthorized", by_basic)),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((params::form_decode(id), params::form_decode(secret)))
}

/// `grant_type=authorization_code`.
fn redeem(provider: &Provider, client_id: &str, params: &Params) -> Result<Response, OAuthError> {
    let Some(code) = params.get("code") else {
        return Err(OAuthError::bad_request(
            "invalid_request",
            "Missing required parameter: code",
        ));
    };
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return Err(OAuthError::bad_request(
            "invalid_request",
            "Missing required parameter: redirect_uri",
        ));
    };
    let now_ms = provider.clock.unix_ms();
    let mut guard = provider.lock();
    let state = &mut *guard;
    let Some(grant) = state.codes.get_mut(code) else {
        return Err(OAuthError::invalid_grant("Malformed auth code."));
    };
    if grant.used {
        // RFC 6749 §4.1.2: a code presented twice revokes what it bought.
        if let Some(token) = grant.access_token.clone() {
            revoke_grant_of(state, &token, now_ms);
        }
        return Err(OAuthError::invalid_grant("Malformed auth code."));
    }
    // Any attempt by the authenticated client burns the code, successful or
    // not, so a wrong verifier or redirect URI cannot be retried [uncertain
    // what Google does; this is the stricter reading].
    grant.used = true;
    let grant = grant.clone();
    if now_ms >= grant.expires_ms {
        return Err(OAuthError::invalid_grant("Bad Request"));
    }
    if grant.client_id != client_id {
        return Err(OAuthError::invalid_grant("Bad Request"));
    }
    if grant.redirect_uri != redirect_uri {
        return Err(OAuthError::bad_request(
            "redirect_uri_mismatch",
            "Bad Request",
        ));
    }
    match (&grant.pkce, params.get("code_verifier")) {
        (Some(_), None) => return Err(OAuthError::invalid_grant("Missing code verifier.")),
        (Some(pkce), Some(verifier)) if !pkce.accepts(verifier) => {
            return Err(OAuthError::invalid_grant("Invalid code verifier."));
        }
        // A verifier for a code issued without a challenge is a PKCE
        // downgrade; OAuth 2.1 §4.1.3 says to refuse it [Google's behaviour
        // uncertain; stricter reading].
        (None, Some(_)) => return Err(OAuthError::invalid_grant("Bad Request")),
        _ => {}
    }

    // Google sends a refresh token for `access_type=offline` only on the
    // subject's first consent, or again with `prompt=consent`.
    let refresh_token = (grant.offline
        && (state.offline_consents.insert(grant.sub.clone()) || grant.consent))
        .then(|| {
            let token = format!("1//0g{}", random_string(100, URL_SAFE));
            state.refresh_tokens.insert(
                token.clone(),
                RefreshGrant {
                    client_id: grant.client_id.clone(),
                    identity: grant.identity.clone(),
                    sub: grant.sub.clone(),
                    scope: grant.scope.clone(),
                    revoked: false,
                    access_tokens: Vec::new(),
                },
            );
            token
        });
    let issued = issue(
        provider,
        state,
        &Subject {
            client_id: &grant.client_id,
            identity: &grant.identity,
            sub: &grant.sub,
            nonce: grant.nonce.as_deref(),
        },
        now_ms,
        refresh_token.clone(),
    );
    if let Some(stored) = state.codes.get_mut(code) {
        stored.access_token = Some(issued.access_token.clone());
    }
    drop(guard);
    // Signed only now, so that token requests do not queue on the lock.
    let mut body = issued.body(&grant.scope);
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    Ok(json_no_store(StatusCode::OK, &body))
}

/// Who tokens are issued to, and about whom.
struct Subject<'a> {
    client_id: &'a str,
    identity: &'a Identity,
    sub: &'a str,
    nonce: Option<&'a str>,
}

/// A fresh access token and an ID token still to sign.
struct Issued {
    access_token: String,
    id_token: Unsigned,
}

impl Issued {
    /// The token response of spec §3, without `refresh_token`. Signs the ID
    /// token, which takes milliseconds: call it without the provider's lock.
    fn body(self, scope: &str) -> Value {
        json!({
            "access_token": self.access_token,
            "expires_in": ACCESS_TOKEN_SECS,
            "scope": scope,
            "token_type": "Bearer",
            "id_token": self.id_token.sign(),
        })
    }
}

/// Mints an access token (remembered for userinfo and revocation, and tied
/// to `refresh_token`'s grant) and an ID token for `subject` at `now_ms`,
/// applying (and consuming) a pending token override. The ID token is
/// signed later, by [`Issued::body`], once the lock is released.
fn issue(
    provider: &Provider,
    state: &mut ProviderState,
    subject: &Subject<'_>,
    now_ms: i64,
    refresh_token: Option<String>,
) -> Issued {
    let access_token = format!("ya29.a0{}", random_string(120, URL_SAFE));
    let now = now_ms.div_euclid(1000);
    let identity = subject.identity;
    let mut profile = Map::new();
    profile.insert("sub".to_owned(), json!(subject.sub));
    if let Some(hd) = &identity.hd {
        profile.insert("hd".to_owned(), json!(hd));
    }
    profile.insert("email".to_owned(), json!(identity.email));
    profile.insert("email_verified".to_owned(), json!(identity.email_verified));
    profile.insert("name".to_owned(), json!(identity.display_name()));
    if let Some(groups) = &identity.groups {
        profile.insert("groups".to_owned(), json!(groups));
    }

    let mut claims = profile.clone();
    claims.insert("iss".to_owned(), json!(provider.token_issuer(state)));
    claims.insert("azp".to_owned(), json!(subject.client_id));
    claims.insert("aud".to_owned(), json!(subject.client_id));
    claims.insert("at_hash".to_owned(), json!(at_hash(&access_token)));
    if let Some(nonce) = subject.nonce {
        claims.insert("nonce".to_owned(), json!(nonce));
    }
    claims.insert("iat".to_owned(), json!(now));
    claims.insert("exp".to_owned(), json!(now + ID_TOKEN_SECS));
    let forged = state.next_override.take().unwrap_or_default();
    let id_token = jwt::prepare(&mut state.keys, claims, forged);

    if let Some(grant) = refresh_token
        .as_ref()
        .and_then(|token| state.refresh_tokens.get_mut(token))
    {
        grant.access_tokens.push(access_token.clone());
    }
    state.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            claims: profile,
            expires_ms: now_ms.saturating_add(ACCESS_TOKEN_SECS * 1000),
            revoked: false,
            refresh_token,
        },
    );
    Issued {
        access_token,
        id_token,
    }
}

/// `grant_type=refresh_token`: a new access token and ID token (without
/// `nonce`, which belongs to the sign-in) for the grant; a new refresh
/// token only when the rotation knob is on.
fn refresh(provider: &Provider, client_id: &str, params: &Params) -> Result<Response, OAuthError> {
    let Some(presented) = params.get("refresh_token") else {
        return Err(OAuthError::bad_request(
            "invalid_request",
            "Missing required parameter: refresh_token",
        ));
    };
    let now_ms = provider.clock.unix_ms();
    let mut guard = provider.lock();
    let state = &mut *guard;
    let grant = match state.refresh_tokens.get(presented) {
        Some(grant) if !grant.revoked && grant.client_id == client_id => grant.clone(),
        Some(grant) if !grant.revoked => return Err(OAuthError::invalid_grant("Unauthorized")),
        _ => {
            return Err(OAuthError::invalid_grant(
                "Token has been expired or revoked.",
            ));
        }
    };
    let refresh_token = if state.rotate_refresh_tokens {
        let token = format!("1//0g{}", random_string(100, URL_SAFE));
        if let Some(old) = state.refresh_tokens.get_mut(presented) {
            old.revoked = true;
        }
        state.refresh_tokens.insert(
            token.clone(),
            RefreshGrant {
                access_tokens: Vec::new(),
                ..grant.clone()
            },
        );
        token
    } else {
        presented.to_owned()
    };
    let issued = issue(
        provider,
        state,
        &Subject {
            client_id: &grant.client_id,
            identity: &grant.identity,
            sub: &grant.sub,
            nonce: None,
        },
        now_ms,
        Some(refresh_token.clone()),
    );
    let rotated = state.rotate_refresh_tokens;
    drop(guard);
    // Signed only now, so that token requests do not queue on the lock.
    let mut body = issued.body(&grant.scope);
    if rotated {
        body["refresh_token"] = json!(refresh_token);
    }
    Ok(json_no_store(StatusCode::OK, &body))
}

/// Revokes the grant `token` (an access or refresh token) belongs to: the
/// refresh token and every access token issued under it. Whether the token
/// was live before.
fn revoke_grant_of(state: &mut ProviderState, token: &str, now_ms: i64) -> bool {
    let (live, refresh_token) = if let Some(access) = state.access_tokens.get_mut(token) {
        let live = !access.revoked && now_ms < access.expires_ms;
        access.revoked = true;
        (live, access.refresh_token.clone())
    } else if let Some(refresh) = state.refresh_tokens.get(token) {
        (!refresh.revoked, Some(token.to_owned()))
    } else {
        return false;
    };
    if let Some(refresh) = refresh_token.and_then(|t| state.refresh_tokens.get_mut(&t)) {
        refresh.revoked = true;
        for access in std::mem::take(&mut refresh.access_tokens) {
            if let Some(access) = state.access_tokens.get_mut(&access) {
                access.revoked = true;
            }
        }
    }
    live
}

/// `at_hash`: base64url of the left half of SHA-256 of the access token.
fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// `GET /v1/userinfo` with `Authorization: Bearer <access token>`.
pub(super) async fn userinfo(State(oidc): State<FakeOidc>, headers: HeaderMap) -> Response {
    let provider = &oidc.inner;
    let now_ms = provider.clock.unix_ms();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let claims = token.and_then(|token| {
        provider
            .lock()
            .access_tokens
            .get(&token)
            .filter(|access| !access.revoked && now_ms < access.expires_ms)
            .map(|access| access.claims.clone())
    });
    if let Some(claims) = claims {
        return json_no_store(StatusCode::OK, &Value::Object(claims));
    }
    let mut response = json_no_store(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "invalid_request", "error_description": "Invalid Credentials"}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

/// `POST /revoke` with `token=` (an access or refresh token) in the form
/// body or the query: revokes the whole grant, as Google does.
pub(super) async fn revoke(
    State(oidc): State<FakeOidc>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = &oidc.inner;
    let now_ms = provider.clock.unix_ms();
    let from_body = params::is_form(&headers).then(|| Params::parse(&body));
    let from_query = Params::parse(query.unwrap_or_default().as_bytes());
    let token = from_body
        .as_ref()
        .and_then(|params| params.get("token"))
        .or_else(|| from_query.get("token"));
    let Some(token) = token else {
        return OAuthError::bad_request("invalid_request", "Missing required parameter: token")
            .into_response();
    };
    let mut state = provider.lock();
    if revoke_grant_of(&mut state, token, now_ms) {
        drop(state);
        json_no_store(StatusCode::OK, &json!({}))
    } else {
        drop(state);
        OAuthError::bad_request("invalid_token", "Token expired or revoked").into_response()
    }
}
