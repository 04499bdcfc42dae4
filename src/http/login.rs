//! Sign-in: `/` starts the authorization-code flow, `/oauth2/callback`
//! finishes it and shows a fresh key. The per-login secrets travel in an
//! encrypted, short-lived cookie, so any replica can finish a login that
//! another started. The cookie holds a browser's few logins in progress, so
//! that two tabs, or a stray callback, do not break each other's.

use std::time::Duration;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use super::limits::ClientIp;
use super::{AppState, HttpError, LOGIN_TTL};
use crate::clock;
use crate::oidc::LoginSecrets;

const COOKIE: &str = "oks_login";
const SECURE_COOKIE: &str = "__Host-oks_login";
/// Logins one browser may have in progress at once; starting another drops
/// the oldest.
const MAX_LOGINS_PER_BROWSER: usize = 4;
/// Longest `code` or `state` accepted; real ones are far shorter.
const MAX_PARAM_LEN: usize = 2048;

/// One login in progress.
#[derive(Serialize, Deserialize)]
struct Login {
    #[serde(flatten)]
    secrets: LoginSecrets,
    /// Unix seconds when the login started.
    started: u64,
}

/// What the login cookie holds: a browser's logins in progress, oldest
/// first.
#[derive(Default, Serialize, Deserialize)]
#[serde(transparent)]
struct Logins(Vec<Login>);

fn cookie_name(state: &AppState) -> &'static str {
    if state.secure_cookies {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

impl Logins {
    /// This browser's logins, as its cookie says (none if it says nothing
    /// readable).
    fn from_jar(state: &AppState, jar: &PrivateCookieJar) -> Self {
        jar.get(cookie_name(state))
            .and_then(|c| serde_json::from_str(c.value()).ok())
            .unwrap_or_default()
    }

    /// The jar with this list in its cookie, or without the cookie when
    /// the list is empty.
    fn into_jar(self, state: &AppState, jar: PrivateCookieJar) -> PrivateCookieJar {
        if self.0.is_empty() {
            return jar.remove(login_cookie(state, String::new(), Duration::ZERO));
        }
        let value = serde_json::to_string(&self).expect("the login cookie always serialises");
        jar.add(login_cookie(state, value, LOGIN_TTL))
    }

    fn is_live(login: &Login, now: u64) -> bool {
        now.saturating_sub(login.started) <= LOGIN_TTL.as_secs()
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

/// Who sent the browser to `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Initiator {
    /// The person: a typed URL, a bookmark, a link on our own pages, or a
    /// client that says nothing either way (curl, old browsers).
    Person,
    /// Another site (or a sibling subdomain): a link, a redirect, a script.
    OtherSite,
}

/// Reads `Sec-Fetch-Site`, or without it the `Referer`'s origin.
fn initiator(headers: &HeaderMap, own_origin: &str) -> Initiator {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"none" | b"same-origin" => Initiator::Person,
            _ => Initiator::OtherSite,
        };
    }
    let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) else {
        return Initiator::Person;
    };
    match url::Url::parse(referer) {
        Ok(url) if url.origin().ascii_serialization() == own_origin => Initiator::Person,
        _ => Initiator::OtherSite,
    }
}

#[derive(Template)]
#[template(path = "landing.html")]
struct LandingPage;

/// Starts a sign-in: new secrets in a cookie of their own, redirect to the
/// provider. When another site sent the browser here, first a page with a
/// button: the provider signs a returning person in silently, so following
/// another site's link must not be enough to mint a key in their name.
pub(super) async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Result<Response, HttpError> {
    if initiator(&headers, &state.public_origin) == Initiator::OtherSite {
        let mut response = Html(LandingPage.render()?).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let secrets = LoginSecrets::generate();
    let url = state.provider.authorization_url(&secrets).await?;
    let now = unix_now(&state);
    let mut logins = Logins::from_jar(&state, &jar);
    logins.0.retain(|l| Logins::is_live(l, now));
    while logins.0.len() >= MAX_LOGINS_PER_BROWSER {
        logins.0.remove(0);
    }
    logins.0.push(Login {
        secrets,
        started: now,
    });
    let jar = logins.into_jar(&state, jar);
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

/// Finishes a sign-in: finds this login's cookie by its state, exchanges
/// the code, verifies the identity, checks the allow-list, issues a key.
pub(super) async fn callback(
    State(state): State<AppState>,
    client: ClientIp,
    jar: PrivateCookieJar,
    RawQuery(query): RawQuery,
) -> Result<(PrivateCookieJar, Response), (PrivateCookieJar, HttpError)> {
    let callback = match Callback::parse(query.as_deref()) {
        Ok(callback) => callback,
        Err(error) => return Err((jar, error)),
    };
    let (jar, login) = claim(&state, jar, callback.state.as_deref());
    let login = match login {
        Ok(login) => login,
        Err(error) => return Err((jar, error)),
    };
    match finish(&state, client, login, callback).await {
        Ok(response) => Ok((jar, response)),
        Err(error) => Err((jar, error)),
    }
}

/// Takes the login that `returned_state` belongs to out of the jar. Only a
/// state that matches one of this browser's logins changes the cookie: a
/// stray callback (another tab's, an attacker's) leaves every login in
/// progress as it was. A state completes once on this replica, whatever
/// happens next.
fn claim(
    state: &AppState,
    jar: PrivateCookieJar,
    returned_state: Option<&str>,
) -> (PrivateCookieJar, Result<Login, HttpError>) {
    let Some(returned_state) = returned_state else {
        return (jar, Err(HttpError::BadCallback("no state parameter")));
    };
    let mut logins = Logins::from_jar(state, &jar);
    if logins.0.is_empty() {
        return (jar, Err(HttpError::NoLoginInProgress));
    }
    if returned_state.len() > MAX_PARAM_LEN {
        return (jar, Err(HttpError::StateMismatch));
    }
    // Compared with every login, each in constant time.
    let hits: Vec<bool> = logins
        .0
        .iter()
        .map(|l| constant_time_eq(returned_state, &l.secrets.state))
        .collect();
    let Some(index) = hits.iter().position(|hit| *hit) else {
        return (jar, Err(HttpError::StateMismatch));
    };
    let login = logins.0.remove(index);
    let now = unix_now(state);
    logins.0.retain(|l| Logins::is_live(l, now));
    let jar = logins.into_jar(state, jar);
    let expires = login.started.saturating_add(LOGIN_TTL.as_secs());
    let fresh = state.completed_logins.complete(
        &login.secrets.state,
        i64::try_from(expires).unwrap_or(i64::MAX),
        i64::try_from(now).unwrap_or(i64::MAX),
    );
    if !fresh {
        return (jar, Err(HttpError::LoginAlreadyCompleted));
    }
    (jar, Ok(login))
}

async fn finish(
    state: &AppState,
    client: ClientIp,
    login: Login,
    callback: Callback,
) -> Result<Response, HttpError> {
    if unix_now(state).saturating_sub(login.started) > LOGIN_TTL.as_secs() {
        return Err(HttpError::LoginExpired);
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
    // token-endpoint calls. Each attempt holds one of its address's
    // tokens, given back when the person turns out to be allowed, so that
    // only failures use the allowance up: honest sign-ins never do, and a
    // script's junk codes drain its own address's allowance alone.
    let client_key = client.key();
    state
        .limits
        .sign_in_per_ip
        .check(&client_key, now)
        .map_err(|retry_after| HttpError::RateLimited {
            what: "failed sign-ins per address",
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
    state.limits.sign_in_per_ip.refund(&client_key, now);
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
    // own issues since, and those in progress), so it costs no Admin API
    // call; the place is held until the create settles.
    let cap = state.limits.max_keys_per_user;
    let reservation =
        state
            .keys
            .reserve(&email, cap, now)
            .map_err(|reached| HttpError::KeyCap {
                owner: email.to_string(),
                cap,
                retry_after: clock::until(reached.oldest_expiry, now).max(Duration::from_secs(1)),
            })?;
    let issued = state
        .keys
        .spawn_issue(email.clone(), reservation, now)
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
