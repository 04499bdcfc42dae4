//! Sign-in: `/` starts the authorization-code flow, `/oauth2/callback`
//! finishes it and shows a fresh key. The per-login secrets travel in an
//! encrypted, short-lived cookie, one per login in progress (named after
//! the start of its `state`), so any replica can finish a login that
//! another started, and two tabs or a stray callback do not break each
//! other's sign-in.

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

const COOKIE_PREFIX: &str = "oks_login_";
const SECURE_COOKIE_PREFIX: &str = "__Host-oks_login_";
/// Characters of the state that name its cookie: enough to tell a
/// browser's few logins apart; the cookie holds the whole state to compare.
const TAG_LEN: usize = 12;
/// Logins one browser may have in progress at once; starting another drops
/// the oldest.
const MAX_LOGINS_PER_BROWSER: usize = 4;
/// Longest `code` or `state` accepted; real ones are far shorter.
const MAX_PARAM_LEN: usize = 2048;

/// One login in progress: what its cookie holds.
#[derive(Serialize, Deserialize)]
struct Login {
    #[serde(flatten)]
    secrets: LoginSecrets,
    /// When the login started, in nanoseconds since the Unix epoch: fine
    /// enough to tell which of a browser's logins is the oldest.
    started_ns: u64,
}

fn cookie_prefix(state: &AppState) -> &'static str {
    if state.secure_cookies {
        SECURE_COOKIE_PREFIX
    } else {
        COOKIE_PREFIX
    }
}

/// The name of the cookie of the login whose state is `login_state`, if
/// that state can have one (states are URL-safe base64, as
/// [`LoginSecrets`] makes them).
fn cookie_name(state: &AppState, login_state: &str) -> Option<String> {
    let tag = login_state.get(..TAG_LEN)?;
    tag.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        .then(|| format!("{}{tag}", cookie_prefix(state)))
}

fn login_cookie(
    state: &AppState,
    name: String,
    value: String,
    max_age: Duration,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .max_age(max_age.try_into().unwrap_or_default())
        .build()
}

/// This browser's logins in progress, oldest first: when each started, and
/// its cookie's name.
fn logins_in(state: &AppState, jar: &PrivateCookieJar) -> Vec<(u64, String)> {
    let prefix = cookie_prefix(state);
    let mut logins: Vec<(u64, String)> = jar
        .iter()
        .filter(|c| c.name().starts_with(prefix))
        .map(|c| {
            let started = serde_json::from_str::<Login>(c.value()).map_or(0, |l| l.started_ns);
            (started, c.name().to_owned())
        })
        .collect();
    logins.sort();
    logins
}

/// Now, in nanoseconds since the Unix epoch.
fn now_ns(state: &AppState) -> u64 {
    state
        .clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Whether a login started at `started_ns` is past its lifetime at `now_ns`.
fn expired(started_ns: u64, now_ns: u64) -> bool {
    Duration::from_nanos(now_ns.saturating_sub(started_ns)) > LOGIN_TTL
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
    let Some(name) = cookie_name(&state, &secrets.state) else {
        unreachable!("generated states are URL-safe base64 of 32 bytes");
    };
    let now = now_ns(&state);
    // Expired logins go, and the oldest beyond the few a browser may have.
    let mut jar = jar;
    let logins = logins_in(&state, &jar);
    let live = logins
        .iter()
        .filter(|(started, _)| !expired(*started, now))
        .count();
    let mut excess = (live + 1).saturating_sub(MAX_LOGINS_PER_BROWSER);
    for (started, old) in logins {
        let expired = expired(started, now);
        if expired || excess > 0 {
            excess = excess.saturating_sub(usize::from(!expired));
            jar = jar.remove(login_cookie(&state, old, String::new(), Duration::ZERO));
        }
    }
    let login = Login {
        secrets,
        started_ns: now,
    };
    let value = serde_json::to_string(&login).expect("the login cookie always serialises");
    let jar = jar.add(login_cookie(&state, name, value, LOGIN_TTL));
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
/// state that matches one of this browser's logins removes a cookie: a
/// stray callback (another tab's, an attacker's) leaves every login in
/// progress as it was.
fn claim(
    state: &AppState,
    jar: PrivateCookieJar,
    returned_state: Option<&str>,
) -> (PrivateCookieJar, Result<Login, HttpError>) {
    let Some(returned_state) = returned_state else {
        return (jar, Err(HttpError::BadCallback("no state parameter")));
    };
    let none_here = || {
        if logins_in(state, &jar).is_empty() {
            HttpError::NoLoginInProgress
        } else {
            HttpError::StateMismatch
        }
    };
    let login = (returned_state.len() <= MAX_PARAM_LEN)
        .then(|| cookie_name(state, returned_state))
        .flatten()
        .and_then(|name| {
            let login = serde_json::from_str::<Login>(jar.get(&name)?.value()).ok()?;
            constant_time_eq(returned_state, &login.secrets.state).then_some((name, login))
        });
    let Some((name, login)) = login else {
        let error = none_here();
        return (jar, Err(error));
    };
    let jar = jar.remove(login_cookie(state, name, String::new(), Duration::ZERO));
    (jar, Ok(login))
}

async fn finish(
    state: &AppState,
    client: ClientIp,
    login: Login,
    callback: Callback,
) -> Result<Response, HttpError> {
    if expired(login.started_ns, now_ns(state)) {
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
    // A state completes once on this replica, whatever happens next.
    // Recorded only past the allowance, so that flooding the memory of
    // completed states costs allowance like any other failure.
    let expires = (login.started_ns / 1_000_000_000).saturating_add(LOGIN_TTL.as_secs());
    if !state.completed_logins.complete(
        &login.secrets.state,
        i64::try_from(expires).unwrap_or(i64::MAX),
        clock::unix_seconds(now),
    ) {
        return Err(HttpError::LoginAlreadyCompleted);
    }
    let identity = match state.provider.sign_in(&code, &login.secrets, now).await {
        Ok(identity) => identity,
        // Not the caller's doing: the provider is down, or refuses us.
        Err(
            error @ (crate::oidc::Error::Unreachable(_) | crate::oidc::Error::ClientRefused(_)),
        ) => {
            state.limits.sign_in_per_ip.refund(&client_key, now);
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
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
        .map_err(HttpError::Issue)?
        .await
        .map_err(|_| HttpError::Issue(crate::keys::Error::TaskFailed))?
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
