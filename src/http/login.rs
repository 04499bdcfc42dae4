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
use axum::response::Redirect;
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};

use super::session::{self, MaybeSignedIn};
use super::{AppState, HttpError, LOGIN_TTL, me};
use crate::issuance;
use crate::limits::ClientAddr;
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
    /// What the sign-in is for, beyond the browser's own session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    then: Option<Then>,
    /// The issuer it goes through (its name in the policy).
    #[serde(default = "env_issuer")]
    issuer: String,
}

fn env_issuer() -> String {
    crate::access::ENV_ISSUER.to_owned()
}

/// What follows a sign-in that a command line asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Then {
    /// Back to the CLI's loopback listener with a one-time code.
    Cli {
        /// The listener's port on 127.0.0.1.
        port: u16,
        /// The CLI's PKCE challenge (S256).
        challenge: String,
        /// The CLI's own state, returned to it as is.
        cli_state: String,
    },
    /// On to the device page, its code filled in.
    Device {
        /// The code as typed (checked later).
        user_code: String,
    },
}

/// How a sign-in starts: which account, where the landing page's button
/// goes back to, and what follows.
pub(super) struct Start {
    /// Ask the provider to let the person pick an account.
    pub(super) choose_account: bool,
    /// This request's own path and query, for the landing page's button.
    pub(super) back: String,
    /// What follows the sign-in.
    pub(super) then: Option<Then>,
    /// The issuer chosen (`?issuer=`); none: the only one, or a choice.
    pub(super) issuer: Option<String>,
}

impl Start {
    /// Through the issuer named `issuer`, if one is.
    pub(super) fn through(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer.filter(|i| !i.is_empty());
        self
    }

    /// A plain sign-in from `/`.
    pub(super) fn home(choose_account: bool) -> Self {
        Self {
            choose_account,
            back: if choose_account {
                "/?account=choose".to_owned()
            } else {
                "/".to_owned()
            },
            then: None,
            issuer: None,
        }
    }
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

pub(super) fn login_cookie(
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

/// Whether `name` is one of this server's cookies: the session's or a
/// login's.
pub(super) fn is_ours(state: &AppState, name: &str) -> bool {
    name.starts_with(cookie_prefix(state)) || name == super::session::cookie_name(state)
}

/// How long the login whose cookie holds `value` has left at `now`.
pub(super) fn time_left(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let login: Login = serde_json::from_str(value).ok()?;
    let now_ns = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let age = Duration::from_nanos(now_ns.saturating_sub(login.started_ns));
    LOGIN_TTL.checked_sub(age).filter(|left| !left.is_zero())
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
struct LandingPage<'a> {
    /// Where the button goes: back to `/`, as asked.
    back: &'a str,
}

/// One button of the issuer choice.
struct Choice {
    name: String,
    label: String,
    href: String,
}

#[derive(Template)]
#[template(path = "choose.html")]
struct ChoosePage {
    choices: Vec<Choice>,
}

/// The page that lets the person pick the issuer to sign in through: each
/// button goes back to `back` with `issuer=` added.
fn choose(state: &AppState, back: &str) -> Result<Response, HttpError> {
    let separator = if back.contains('?') { '&' } else { '?' };
    let choices = state
        .providers
        .all()
        .iter()
        .map(|provider| {
            let name = provider.name().to_owned();
            let mut label = name.clone();
            if let Some(first) = label.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            Choice {
                href: format!("{back}{separator}issuer={name}"),
                label,
                name,
            }
        })
        .collect();
    let mut response = Html(ChoosePage { choices }.render()?).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Where to send a browser that asked for `/` under another host than the
/// public one, if it did. Only when the public URL is plain http: then no
/// proxy stands in front, and `Host` is what the browser typed; behind an
/// https proxy, `Host` may be the proxy's own name for this server.
fn elsewhere(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let public = url::Url::parse(&state.public_origin).ok()?;
    if public.scheme() != "http" {
        return None;
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    // The same port under another name (`localhost` for `127.0.0.1`): a
    // replica on a port of its own is reached on purpose.
    let (name, port) = host.rsplit_once(':').unwrap_or((host, "80"));
    let public_port = public.port_or_known_default()?.to_string();
    let same = name
        .trim_matches(['[', ']'])
        .eq_ignore_ascii_case(public.host_str()?.trim_matches(['[', ']']));
    (port == public_port && !same).then(|| state.public_origin.to_string())
}

/// Starts a sign-in: new secrets in a cookie of their own, redirect to the
/// provider. When another site sent the browser here, first a page with a
/// button: the provider signs a returning person in silently, so following
/// another site's link must not be enough to mint a key in their name.
/// Opened under another host name than `REDIRECT_URI`'s (`localhost` for
/// `127.0.0.1`), first over to that one, or the login cookie would be set
/// where the callback never comes.
pub(super) async fn start(
    state: &AppState,
    headers: &HeaderMap,
    jar: PrivateCookieJar,
    start: Start,
) -> Result<Response, HttpError> {
    let Start {
        choose_account,
        back,
        then,
        issuer,
    } = start;
    let back = back.as_str();
    // An issuer this server does not have goes no further, not even into
    // a redirect.
    if let Some(name) = issuer.as_deref()
        && state.providers.get(name).is_none()
    {
        return Err(HttpError::UnknownIssuer(name.chars().take(32).collect()));
    }
    if let Some(home) = elsewhere(state, headers) {
        let back = match &issuer {
            Some(issuer) => format!(
                "{back}{}issuer={issuer}",
                if back.contains('?') { '&' } else { '?' }
            ),
            None => back.to_owned(),
        };
        return Ok(Redirect::to(&format!("{home}{back}")).into_response());
    }
    // Several issuers: the person picks one (a page with buttons, so that
    // another site's link does nothing by itself either).
    let provider = match issuer.as_deref() {
        Some(name) => state
            .providers
            .get(name)
            .ok_or_else(|| HttpError::UnknownIssuer(name.chars().take(32).collect()))?,
        None if state.providers.all().len() > 1 => return choose(state, back),
        None => &state.provider,
    };
    let back = &match &issuer {
        Some(issuer) => format!(
            "{back}{}issuer={issuer}",
            if back.contains('?') { '&' } else { '?' }
        ),
        None => back.to_owned(),
    };
    let back = back.as_str();
    if initiator(headers, &state.public_origin) == Initiator::OtherSite {
        let mut response = Html(LandingPage { back }.render()?).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let secrets = LoginSecrets::generate();
    let url = provider.authorization_url(&secrets, choose_account).await?;
    let Some(name) = cookie_name(state, &secrets.state) else {
        unreachable!("generated states are URL-safe base64 of 32 bytes");
    };
    let now = now_ns(state);
    // Expired logins go, and the oldest beyond the few a browser may have.
    let mut jar = jar;
    let logins = logins_in(state, &jar);
    let live = logins
        .iter()
        .filter(|(started, _)| !expired(*started, now))
        .count();
    let mut excess = (live + 1).saturating_sub(MAX_LOGINS_PER_BROWSER);
    for (started, old) in logins {
        let expired = expired(started, now);
        if expired || excess > 0 {
            excess = excess.saturating_sub(usize::from(!expired));
            jar = jar.remove(login_cookie(state, old, String::new(), Duration::ZERO));
        }
    }
    let login = Login {
        secrets,
        started_ns: now,
        then,
        issuer: provider.name().to_owned(),
    };
    let value = serde_json::to_string(&login).expect("the login cookie always serialises");
    let jar = jar.add(login_cookie(state, name, value, LOGIN_TTL));
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

/// Compares two secrets in time that depends on their length only.
pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Finishes a sign-in: finds this login's cookie by its state, signs the
/// person in through the issuance core, starts their session, and then
/// issues a key (`ISSUE_ON_SIGN_IN`) or shows their keys.
pub(super) async fn callback(
    State(state): State<AppState>,
    client: ClientAddr,
    MaybeSignedIn(signed_in): MaybeSignedIn,
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
        // A reload of the page a key was shown on: its login is spent.
        Err(HttpError::NoLoginInProgress | HttpError::StateMismatch) if signed_in.is_some() => {
            return Err((jar, HttpError::KeyShownOnce));
        }
        Err(error) => return Err((jar, error)),
    };
    let now = state.clock.now();
    let then = login.then.clone();
    let (identity, grant) = match finish(&state, client, login, callback, now).await {
        Ok(signed_in) => signed_in,
        Err(error) => return Err((jar, error)),
    };
    tracing::Span::current().record("user.email", grant.owner.as_str());
    let jar = session::start(&state, jar, &identity, &grant, now);
    match then {
        Some(Then::Cli {
            port,
            challenge,
            cli_state,
        }) => {
            return match state.issuance.cli_code(&identity, &challenge, now) {
                Ok(code) => Ok((jar, to_loopback(port, &code, &cli_state))),
                Err(error) => Err((jar, error.into())),
            };
        }
        Some(Then::Device { user_code }) => {
            let mut to = url::Url::parse("http://device.invalid/device").expect("a valid URL");
            to.query_pairs_mut().append_pair("code", &user_code);
            let path = format!("/device?{}", to.query().unwrap_or_default());
            return Ok((jar, Redirect::to(&path).into_response()));
        }
        None => {}
    }
    let answer = match state.issuance.after_sign_in(&identity, now).await {
        Ok(Some(issued)) => me::key_page(grant.owner.as_str(), &issued, now),
        Ok(None) => Ok(Redirect::to("/").into_response()),
        Err(issuance::Error::CapReached {
            cap, retry_after, ..
        }) => {
            let signed_in = session::SignedIn {
                identity,
                grant,
                csrf: session::csrf_of(&state, &jar).unwrap_or_default(),
                spent: Vec::new(),
            };
            me::at_cap(&state, &signed_in, cap, retry_after).await
        }
        Err(error) => Err(error.into()),
    };
    match answer {
        Ok(response) => Ok((jar, response)),
        Err(error) => Err((jar, error)),
    }
}

/// The redirect that hands a command line its one-time code, on the
/// loopback address it listens on (RFC 8252 §7.3).
fn to_loopback(port: u16, code: &str, cli_state: &str) -> Response {
    let mut url = url::Url::parse(&format!("http://127.0.0.1:{port}/callback"))
        .expect("a loopback URL is valid");
    url.query_pairs_mut()
        .append_pair("code", code)
        .append_pair("state", cli_state);
    let headers = [
        (
            header::LOCATION,
            HeaderValue::from_str(url.as_str()).expect("a URL is a valid header"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    (StatusCode::FOUND, headers).into_response()
}

/// `GET /cli/login`'s query: what `openai-key-server login` sends.
#[derive(Deserialize)]
pub(super) struct CliLogin {
    port: Option<u16>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    state: Option<String>,
    issuer: Option<String>,
}

/// `GET /cli/login`: a command line's sign-in. The person signs in as on
/// `/` (the server's own redirect URI, unchanged), and the browser is then
/// sent to the CLI's loopback listener with a one-time code that only the
/// holder of the PKCE verifier can redeem.
pub(super) async fn cli_login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let query = query.unwrap_or_default();
    let login: CliLogin = serde_urlencoded::from_str(&query)
        .map_err(|_| HttpError::BadCliLogin("its parameters cannot be read"))?;
    let port = login
        .port
        .filter(|p| *p != 0)
        .ok_or(HttpError::BadCliLogin("it names no loopback port"))?;
    let challenge = login
        .code_challenge
        .filter(|c| crate::cli_auth::is_challenge(c))
        .ok_or(HttpError::BadCliLogin("it carries no valid code_challenge"))?;
    if login.code_challenge_method.as_deref() != Some("S256") {
        return Err(HttpError::BadCliLogin("code_challenge_method must be S256"));
    }
    let cli_state = login
        .state
        .filter(|s| {
            (16..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(HttpError::BadCliLogin("it carries no valid state"))?;
    // Rebuilt from the checked values: nothing else of the query travels.
    let back = format!(
        "/cli/login?port={port}&code_challenge={challenge}&code_challenge_method=S256&state={cli_state}"
    );
    let start_with = Start {
        choose_account: false,
        back,
        then: Some(Then::Cli {
            port,
            challenge,
            cli_state,
        }),
        issuer: None,
    }
    .through(login.issuer);
    start(&state, &headers, jar, start_with).await
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

/// Checks the callback against its login, then signs the person in through
/// the issuance core: the login completes once, then the code exchange and
/// token check under the client's allowance of failed sign-ins, then the
/// policy.
async fn finish(
    state: &AppState,
    client: ClientAddr,
    login: Login,
    callback: Callback,
    now: std::time::SystemTime,
) -> Result<(crate::identity::Identity, crate::access::Grant), HttpError> {
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
    let expires = (login.started_ns / 1_000_000_000).saturating_add(LOGIN_TTL.as_secs());
    let once = issuance::Login {
        state: &login.secrets.state,
        expires: i64::try_from(expires).unwrap_or(i64::MAX),
    };
    // A login cookie names one of the issuers it was made for; one made
    // before a configuration change may name one no longer there.
    let provider = state
        .providers
        .get(&login.issuer)
        .ok_or(HttpError::LoginExpired)?;
    let exchange = provider.sign_in(&code, &login.secrets, now);
    Ok(state.issuance.sign_in(client, once, now, exchange).await?)
}
