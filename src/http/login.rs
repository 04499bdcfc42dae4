//! Sign-in: `/` starts the authorization-code flow, `/oauth2/callback`
//! finishes it and shows a fresh key. The per-login secrets travel in an
//! encrypted, short-lived cookie, so any replica can finish a login that
//! another started.

use std::time::Duration;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::limits::ClientIp;
use super::{AppState, HttpError, LOGIN_TTL};
use crate::clock;
use crate::oidc::LoginSecrets;

const COOKIE: &str = "oks_login";
const SECURE_COOKIE: &str = "__Host-oks_login";
/// Longest `code` or `state` accepted; real ones are far shorter.
const MAX_PARAM_LEN: usize = 2048;

#[derive(Serialize, Deserialize)]
struct LoginCookie {
    #[serde(flatten)]
    secrets: LoginSecrets,
    /// Unix seconds when the login started.
    started: u64,
}

fn cookie_name(state: &AppState) -> &'static str {
    if state.secure_cookies {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

fn login_cookie(state: &AppState, value: String, max_age: Duration) -> Cookie<'static> {
    Cookie::build((cookie_name(state), value))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .max_age(max_age.try_into().unwrap_or_default())
        .build()
}

fn unix_now(state: &AppState) -> u64 {
    u64::try_from(clock::unix_seconds(state.clock.now())).unwrap_or(0)
}

/// Starts a sign-in: new secrets in the cookie, redirect to the provider.
pub(super) async fn start(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
) -> Result<Response, HttpError> {
    let secrets = LoginSecrets::generate();
    let url = state.provider.authorization_url(&secrets).await?;
    let cookie = LoginCookie {
        secrets,
        started: unix_now(&state),
    };
    let value = serde_json::to_string(&cookie).expect("the login cookie always serialises");
    let jar = jar.add(login_cookie(&state, value, LOGIN_TTL));
    // 302, as the Go original and every OAuth client answers.
    let location = HeaderValue::from_str(url.as_str()).map_err(|_| {
        HttpError::SignIn(crate::oidc::Error::Unreachable(
            "the authorization URL is not a valid header".into(),
        ))
    })?;
    let headers = [
        (header::LOCATION, location),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((jar, (StatusCode::FOUND, headers)).into_response())
}

/// The provider's redirect back. Every field optional so that each problem
/// gets its own clear page rather than a generic rejection.
#[derive(Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Callback {
    /// Parses the query by hand: a repeated parameter is an attack or a
    /// bug, never something to pick one value of; unknown parameters
    /// (`scope`, `authuser`, `hd`, `iss`, …) are ignored.
    fn parse(query: Option<&str>) -> Result<Self, HttpError> {
        let mut callback = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "error" => &mut callback.error,
                _ => continue,
            };
            if slot.is_some() {
                return Err(HttpError::BadCallback("a parameter is repeated"));
            }
            *slot = Some(value.into_owned());
        }
        Ok(callback)
    }
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage<'a> {
    owner: &'a str,
    key: &'a str,
    expires_utc: String,
    expires_unix: i64,
    lifetime: String,
    enforced_by_openai: bool,
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Finishes a sign-in: checks the state against the cookie, exchanges the
/// code, verifies the identity, checks the allow-list, issues a key.
pub(super) async fn callback(
    State(state): State<AppState>,
    client: ClientIp,
    jar: PrivateCookieJar,
    RawQuery(query): RawQuery,
) -> Result<(PrivateCookieJar, Response), (PrivateCookieJar, HttpError)> {
    // The login cookie is single use: whatever happens next, it goes.
    let cookie = jar.get(cookie_name(&state));
    let jar = jar.remove(login_cookie(&state, String::new(), Duration::ZERO));
    let callback = match Callback::parse(query.as_deref()) {
        Ok(callback) => callback,
        Err(error) => return Err((jar, error)),
    };
    match finish(&state, client, cookie, callback).await {
        Ok(response) => Ok((jar, response)),
        Err(error) => Err((jar, error)),
    }
}

async fn finish(
    state: &AppState,
    client: ClientIp,
    cookie: Option<Cookie<'static>>,
    callback: Callback,
) -> Result<Response, HttpError> {
    let login: LoginCookie = cookie
        .and_then(|c| serde_json::from_str(c.value()).ok())
        .ok_or(HttpError::NoLoginInProgress)?;
    if unix_now(state).saturating_sub(login.started) > LOGIN_TTL.as_secs() {
        return Err(HttpError::LoginExpired);
    }
    let returned_state = callback
        .state
        .ok_or(HttpError::BadCallback("no state parameter"))?;
    if returned_state.len() > MAX_PARAM_LEN
        || !constant_time_eq(&returned_state, &login.secrets.state)
    {
        return Err(HttpError::StateMismatch);
    }
    if let Some(error) = callback.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(HttpError::ProviderError(code));
    }
    let code = callback
        .code
        .filter(|c| !c.is_empty() && c.len() <= MAX_PARAM_LEN)
        .ok_or(HttpError::BadCallback("no usable code parameter"))?;

    let now = state.clock.now();
    // Before the provider is asked: a script replaying callbacks costs us
    // token-endpoint calls.
    state
        .limits
        .sign_in_per_ip
        .check(&client.key(), now)
        .map_err(|retry_after| HttpError::RateLimited {
            what: "sign-ins per address",
            retry_after,
        })?;
    let identity = state.provider.sign_in(&code, &login.secrets, now).await?;
    let email = state
        .allow
        .decide(&identity, state.allow_unmanaged_emails)
        .map_err(|reason| HttpError::Refused {
            account: identity.email_claim.clone(),
            reason,
        })?;
    tracing::Span::current().record("user.email", email.as_str());
    state
        .limits
        .issue_per_user
        .check(email.as_str(), now)
        .map_err(|retry_after| HttpError::RateLimited {
            what: "keys per user",
            retry_after,
        })?;
    // The cap reads what this replica knows (its last full listing plus its
    // own issues since), so it costs no Admin API call.
    let cap = state.limits.max_keys_per_user;
    if cap > 0 && state.keys.live_keys_for(&email, now) >= cap {
        let oldest = state.keys.oldest_expiry_for(&email, now).unwrap_or(0);
        return Err(HttpError::KeyCap {
            owner: email.to_string(),
            cap,
            retry_after: clock::until(oldest, now).max(Duration::from_secs(1)),
        });
    }

    // In its own task: if the browser goes away mid-create, the create and
    // its reconciliation still finish instead of being cut off half-way.
    let keys = state.keys.clone();
    let owner = email.clone();
    let issued = tokio::spawn(crate::timing::carry(
        async move { keys.issue(&owner, now).await }.instrument(tracing::Span::current()),
    ))
    .await
    .map_err(|_| {
        HttpError::Issue(crate::keys::Error::OpenAi(
            crate::openai::Error::Transport {
                message: "the issuing task stopped".into(),
            },
        ))
    })?
    .map_err(HttpError::Issue)?;
    let expires = clock::from_unix(issued.expires_at);
    let lifetime = clock::until(issued.expires_at, now);
    let page = KeyPage {
        owner: email.as_str(),
        key: issued.value.expose_secret(),
        expires_utc: humantime::format_rfc3339_seconds(expires).to_string(),
        expires_unix: issued.expires_at,
        lifetime: humantime::format_duration(lifetime).to_string(),
        enforced_by_openai: issued.enforced_by_openai,
    };
    let body = page.render()?;
    let mut response = Html(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}
