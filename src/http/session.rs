//! The browser session: an encrypted cookie holding the verified identity,
//! when it ends, and the session's CSRF token. No server-side store: any
//! replica with `SESSION_SECRET` reads it. Who the identity may be is asked
//! again on every request (see [`crate::issuance::Issuance::authorize`]).
//!
//! [`SignedIn`] is the extractor of pages that need a session; [`Form`] is
//! the one of every state-changing request: a POST whose origin is ours and
//! whose CSRF token is the session's.

use std::time::{Duration, SystemTime};

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{AppState, HttpError};
use crate::access::Grant;
use crate::clock;
use crate::identity::{EmailAddress, Identity};

const COOKIE: &str = "oks_session";
const SECURE_COOKIE: &str = "__Host-oks_session";

/// What the session cookie holds.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    /// The provider's subject.
    sub: String,
    /// The verified, normalised address.
    email: String,
    /// The `email` claim as the provider sent it.
    email_claim: Option<String>,
    email_verified: bool,
    hd: Option<String>,
    /// The issuer's name in the policy.
    #[serde(default = "env_issuer")]
    iss: String,
    /// The groups the issuer vouched for at sign-in.
    #[serde(default)]
    groups: Vec<String>,
    /// Unix seconds after which the session is over.
    expires: i64,
    /// The token every form of this session carries.
    csrf: String,
    /// The new-key forms this session has spent lately, so that any
    /// replica refuses one sent again.
    #[serde(default)]
    spent: Vec<String>,
}

impl Stored {
    fn identity(&self) -> Option<Identity> {
        Some(Identity {
            subject: self.sub.clone(),
            email: Some(EmailAddress::parse(&self.email).ok()?),
            email_claim: self.email_claim.clone(),
            email_verified: self.email_verified,
            hosted_domain: self.hd.clone(),
            issuer: self.iss.clone(),
            groups: self.groups.clone(),
        })
    }
}

fn env_issuer() -> String {
    crate::access::ENV_ISSUER.to_owned()
}

/// The name of the session cookie (`__Host-` over https).
pub(super) fn cookie_name(state: &AppState) -> &'static str {
    if state.secure_cookies {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

fn cookie(state: &AppState, value: String, max_age: Duration) -> Cookie<'static> {
    Cookie::build((cookie_name(state), value))
        .path("/")
        .http_only(true)
        .secure(state.secure_cookies)
        .same_site(SameSite::Lax)
        .max_age(max_age.try_into().unwrap_or_default())
        .build()
}

/// Starts a session for `identity` (whose grant is `grant`), for
/// `SESSION_TTL`.
pub(super) fn start(
    state: &AppState,
    jar: PrivateCookieJar,
    identity: &Identity,
    grant: &Grant,
    now: SystemTime,
) -> PrivateCookieJar {
    let ttl = state.session_ttl;
    let stored = Stored {
        sub: identity.subject.clone(),
        email: grant.owner.to_string(),
        email_claim: identity.email_claim.clone(),
        email_verified: identity.email_verified,
        hd: identity.hosted_domain.clone(),
        iss: identity.issuer.clone(),
        groups: identity.groups.clone(),
        expires: clock::unix_seconds(now).saturating_add_unsigned(ttl.as_secs()),
        csrf: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        spent: Vec::new(),
    };
    seal(state, jar, &stored, now)
}

/// The new-key forms a session remembers having spent.
const SPENT_KEPT: usize = 8;

fn seal(
    state: &AppState,
    jar: PrivateCookieJar,
    stored: &Stored,
    now: SystemTime,
) -> PrivateCookieJar {
    let value = serde_json::to_string(stored).expect("a session always serialises");
    let left = u64::try_from(stored.expires.saturating_sub(clock::unix_seconds(now))).unwrap_or(0);
    jar.add(cookie(state, value, Duration::from_secs(left)))
}

/// Notes in the session that `form` was spent (it minted a key).
pub(super) fn spend(
    state: &AppState,
    jar: PrivateCookieJar,
    form: &str,
    now: SystemTime,
) -> PrivateCookieJar {
    let Some(mut stored) = jar
        .get(cookie_name(state))
        .and_then(|c| serde_json::from_str::<Stored>(c.value()).ok())
    else {
        return jar;
    };
    stored.spent.push(form.to_owned());
    let excess = stored.spent.len().saturating_sub(SPENT_KEPT);
    stored.spent.drain(..excess);
    seal(state, jar, &stored, now)
}

/// The CSRF token of the session in `jar` (one just started included).
pub(super) fn csrf_of(state: &AppState, jar: &PrivateCookieJar) -> Option<String> {
    jar.get(cookie_name(state))
        .and_then(|c| serde_json::from_str::<Stored>(c.value()).ok())
        .map(|stored| stored.csrf)
}

/// Ends the session (sign-out).
pub(super) fn end(state: &AppState, jar: PrivateCookieJar) -> PrivateCookieJar {
    jar.remove(cookie(state, String::new(), Duration::ZERO))
}

/// A signed-in person whom the current configuration still allows.
#[derive(Clone, Debug)]
pub(crate) struct SignedIn {
    /// Who, as the provider vouched at sign-in.
    pub(crate) identity: Identity,
    /// What they may have, decided now.
    pub(crate) grant: Grant,
    /// The token their forms carry.
    pub(crate) csrf: String,
    /// The new-key forms their session spent lately.
    pub(crate) spent: Vec<String>,
}

impl SignedIn {
    /// The session in `jar`, if there is a live one; an error when its
    /// person is no longer allowed.
    fn read(state: &AppState, jar: &PrivateCookieJar) -> Result<Option<Self>, HttpError> {
        let Some(stored) = jar
            .get(cookie_name(state))
            .and_then(|c| serde_json::from_str::<Stored>(c.value()).ok())
        else {
            return Ok(None);
        };
        if stored.expires <= clock::unix_seconds(state.clock.now()) {
            return Ok(None);
        }
        let Some(identity) = stored.identity() else {
            return Ok(None);
        };
        let grant = state.issuance.authorize(&identity)?;
        Ok(Some(Self {
            identity,
            grant,
            csrf: stored.csrf,
            spent: stored.spent,
        }))
    }
}

/// A page that may or may not have a session: `None` without one, and for
/// a person taken off the list (who may then sign in as someone else).
pub(crate) struct MaybeSignedIn(pub(crate) Option<SignedIn>);

impl<S> FromRequestParts<S> for MaybeSignedIn
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let jar = PrivateCookieJar::<axum_extra::extract::cookie::Key>::from_headers(
            &parts.headers,
            state.session_keys.current(),
        );
        Ok(Self(SignedIn::read(&state, &jar).ok().flatten()))
    }
}

impl<S> FromRequestParts<S> for SignedIn
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let jar = PrivateCookieJar::<axum_extra::extract::cookie::Key>::from_headers(
            &parts.headers,
            state.session_keys.current(),
        );
        Self::read(&state, &jar)?.ok_or(HttpError::NotSignedIn)
    }
}

/// Whether a state-changing request comes from one of our own pages:
/// `Sec-Fetch-Site` says so, or without it the `Origin` (or, failing that,
/// the `Referer`) is ours. A browser that sends none of them gets the
/// benefit of the doubt; the CSRF token still has to match.
fn same_origin(headers: &HeaderMap, own_origin: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let origin_of = |value: &str| {
        url::Url::parse(value)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != "null"
    {
        return origin_of(origin).as_deref() == Some(own_origin);
    }
    match headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        Some(referer) => origin_of(referer).as_deref() == Some(own_origin),
        None => true,
    }
}

/// A POST form of a signed-in person: from one of our pages, carrying the
/// session's CSRF token (`csrf`), with its other fields in `T`.
pub(crate) struct Form<T> {
    /// The person.
    pub(crate) signed_in: SignedIn,
    /// The form's fields.
    pub(crate) fields: T,
}

/// The token every form carries, beside its own fields.
#[derive(Deserialize)]
struct Csrf {
    csrf: String,
}

impl<S, T> FromRequest<S> for Form<T>
where
    S: Send + Sync,
    AppState: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        if !same_origin(request.headers(), &app.public_origin) {
            return Err(HttpError::ForeignOrigin);
        }
        let (mut parts, body) = request.into_parts();
        let signed_in = SignedIn::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, super::BODY_LIMIT)
            .await
            .map_err(|_| HttpError::BadBody)?;
        // A form without the token is refused like one with a wrong token.
        let Csrf { csrf } =
            serde_urlencoded::from_bytes(&bytes).map_err(|_| HttpError::ForeignOrigin)?;
        if !super::login::constant_time_eq(&csrf, &signed_in.csrf) {
            return Err(HttpError::ForeignOrigin);
        }
        let fields = serde_urlencoded::from_bytes(&bytes).map_err(|_| HttpError::BadForm)?;
        Ok(Self { signed_in, fields })
    }
}

/// A sign-out: a POST from one of our pages whose token is the session's
/// (if there is a session). The policy is not asked, so that someone taken
/// off the list, or whose session has ended, can still clear the cookie.
pub(crate) struct SignOut;

impl<S> FromRequest<S> for SignOut
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        if !same_origin(request.headers(), &app.public_origin) {
            return Err(HttpError::ForeignOrigin);
        }
        let jar = PrivateCookieJar::<axum_extra::extract::cookie::Key>::from_headers(
            request.headers(),
            app.session_keys.current(),
        );
        let Some(expected) = csrf_of(&app, &jar) else {
            return Ok(Self);
        };
        let bytes = axum::body::to_bytes(request.into_body(), super::BODY_LIMIT)
            .await
            .map_err(|_| HttpError::BadBody)?;
        let Csrf { csrf } =
            serde_urlencoded::from_bytes(&bytes).map_err(|_| HttpError::ForeignOrigin)?;
        if super::login::constant_time_eq(&csrf, &expected) {
            Ok(Self)
        } else {
            Err(HttpError::ForeignOrigin)
        }
    }
}

/// During a rotation of `SESSION_SECRET` (`SESSION_SECRET_PREVIOUS` set):
/// a cookie of ours that only the previous secret opens is sealed anew
/// with the current one, in the request (so that every extractor reads it)
/// and in the answer (so that the browser keeps the new one); a CLI
/// session is handed back sealed anew in [`crate::api::RENEWED_SESSION`]. Nobody is
/// signed out by a rotation, and once every cookie in use has passed
/// through, the previous secret can go.
pub(super) async fn reseal_previous(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (current, Some(previous)) = state.session_keys.both() else {
        return next.run(request).await;
    };
    let now = state.clock.now();
    let mut cookies: Vec<Cookie<'static>> = request
        .headers()
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|cookie| Cookie::parse_encoded(cookie.trim().to_owned()).ok())
        .collect();
    let mut resealed = Vec::new();
    for cookie in &mut cookies {
        let jar = cookie::CookieJar::new();
        if !super::login::is_ours(&state, cookie.name())
            || jar.private(&current).decrypt(cookie.clone()).is_some()
        {
            continue;
        }
        let Some(opened) = jar.private(&previous).decrypt(cookie.clone()) else {
            continue;
        };
        let Some(left) = time_left(&state, opened.name(), opened.value(), now) else {
            continue;
        };
        let mut sealed = cookie::CookieJar::new();
        sealed.private_mut(&current).add(opened.clone());
        let value = sealed
            .get(opened.name())
            .expect("the cookie was just added")
            .value()
            .to_owned();
        cookie.set_value(value.clone());
        let name = opened.name().to_owned();
        resealed.push(if name == cookie_name(&state) {
            self::cookie(&state, value, left)
        } else {
            super::login::login_cookie(&state, name, value, left)
        });
    }
    if !resealed.is_empty() {
        let header = cookies
            .iter()
            .map(|c| c.encoded().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        request.headers_mut().remove(header::COOKIE);
        if let Ok(value) = header.parse() {
            request.headers_mut().insert(header::COOKIE, value);
        }
    }
    let renewed = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| state.issuance.resealed_cli_session(token.trim()));
    let mut response = next.run(request).await;
    let set: Vec<String> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once('=').map(|(name, _)| name.trim().to_owned()))
        .collect();
    for cookie in resealed {
        // What the handler set itself (a new session, a cleared login)
        // stands.
        if set.iter().any(|name| name == cookie.name()) {
            continue;
        }
        if let Ok(value) = cookie.encoded().to_string().parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    if let Some(token) = renewed
        && let Ok(value) =
            axum::http::HeaderValue::from_str(secrecy::ExposeSecret::expose_secret(&token))
    {
        let headers = response.headers_mut();
        headers.insert(crate::api::RENEWED_SESSION, value);
        headers.insert(
            header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    response
}

/// How long a cookie of ours has left, by what it holds: a session until
/// its end, a login for its lifetime; `None` once over.
fn time_left(state: &AppState, name: &str, value: &str, now: SystemTime) -> Option<Duration> {
    if name == cookie_name(state) {
        let stored: Stored = serde_json::from_str(value).ok()?;
        let left = stored.expires.checked_sub(clock::unix_seconds(now))?;
        return (left > 0).then(|| Duration::from_secs(left.unsigned_abs()));
    }
    super::login::time_left(value, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_our_own_pages_may_post() {
        let ours = "https://keys.example.com";
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            ours
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "same-site")]),
            ours
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            ours
        ));
        assert!(same_origin(
            &headers(&[("origin", "https://keys.example.com")]),
            ours
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example.net")]),
            ours
        ));
        assert!(
            !same_origin(
                &headers(&[
                    ("origin", "null"),
                    ("referer", "https://evil.example.net/x")
                ]),
                ours
            ),
            "an opaque origin falls back to the referer"
        );
        assert!(same_origin(
            &headers(&[("referer", "https://keys.example.com/admin")]),
            ours
        ));
        assert!(
            same_origin(&headers(&[]), ours),
            "the CSRF token decides then"
        );
    }
}
