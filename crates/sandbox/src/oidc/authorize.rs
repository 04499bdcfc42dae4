//! The authorization endpoint: request validation, choosing who signs in
//! (queue, preset identity, or a form a person fills in), and the redirect
//! back with a code or an error.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use super::params::{self, Params};
use super::token::Grant;
use super::{FakeOidc, Identity, Provider, State as ProviderState, URL_SAFE, random_string};

/// Where the endpoint lives, for GET (the request) and POST (the form).
pub(super) const PATH: &str = "/o/oauth2/v2/auth";

/// Names of the form's own fields start with this; every other field is a
/// parameter of the original request, carried in a hidden input.
const FIELD_PREFIX: &str = "signin_";

const EMAIL_SCOPE_URL: &str = "https://www.googleapis.com/auth/userinfo.email";
const PROFILE_SCOPE_URL: &str = "https://www.googleapis.com/auth/userinfo.profile";

/// A PKCE challenge recorded with a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pkce {
    method: PkceMethod,
    challenge: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PkceMethod {
    Plain,
    S256,
}

impl Pkce {
    /// Whether `verifier` answers the challenge (RFC 7636 §4.6). A verifier
    /// of the wrong length or alphabet never does.
    pub(super) fn accepts(&self, verifier: &str) -> bool {
        if !is_pkce_text(verifier) {
            return false;
        }
        match self.method {
            PkceMethod::Plain => verifier == self.challenge,
            PkceMethod::S256 => {
                URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == self.challenge
            }
        }
    }
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z a-z 0-9 - . _ ~]` (the
/// challenge obeys the same rule).
fn is_pkce_text(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// An authorization request that passed every check.
#[derive(Debug)]
struct AuthRequest {
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    pkce: Option<Pkce>,
    /// The granted scope, spelled the way Google echoes it.
    scope: String,
    prompt: Vec<String>,
    login_hint: Option<String>,
    hd_hint: Option<String>,
    /// `access_type=offline`: the client asks for a refresh token.
    offline: bool,
}

/// Why a request is refused, and whether the client may be told by redirect.
#[derive(Debug)]
enum Refusal {
    /// Shown on the provider's own error page: the redirect URI cannot be
    /// trusted (or the client is unknown), so there is no redirect.
    Page {
        error: &'static str,
        description: String,
    },
    /// Sent back to the (registered) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
    },
}

impl Refusal {
    fn page(error: &'static str, description: impl Into<String>) -> Self {
        Self::Page {
            error,
            description: description.into(),
        }
    }

    fn into_response(self) -> Response {
        match self {
            Self::Page { error, description } => error_page(error, &description),
            Self::Redirect {
                redirect_uri,
                state,
                error,
            } => error_redirect(&redirect_uri, state.as_deref(), error),
        }
    }
}

fn error_redirect(redirect_uri: &str, state: Option<&str>, error: &str) -> Response {
    let mut query = vec![("error", error)];
    if let Some(state) = state {
        query.push(("state", state));
    }
    redirect(&params::with_query(redirect_uri, &query))
}

/// Checks a request in Google's order: client, redirect URI (both answered
/// with a page), then everything else (answered by redirect).
fn validate(
    provider: &Provider,
    state: &ProviderState,
    params: &Params,
) -> Result<AuthRequest, Refusal> {
    for name in ["client_id", "redirect_uri"] {
        if params.is_repeated(name) {
            return Err(Refusal::page(
                "invalid_request",
                format!("Parameter not allowed more than once: {name}"),
            ));
        }
    }
    let Some(client_id) = params.get("client_id") else {
        return Err(Refusal::page(
            "invalid_request",
            "Missing required parameter: client_id",
        ));
    };
    if client_id != provider.client_id {
        return Err(Refusal::page(
            "invalid_client",
            "The OAuth client was not found.",
        ));
    }
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return Err(Refusal::page(
            "invalid_request",
            "Missing required parameter: redirect_uri",
        ));
    };
    if !state
        .redirect_uris
        .iter()
        .any(|known| known == redirect_uri)
    {
        return Err(Refusal::page(
            "redirect_uri_mismatch",
            format!(
                "The redirect URI in the request, {redirect_uri}, does not match the ones \
                 authorized for the OAuth client."
            ),
        ));
    }

    let request_state = params.get("state").map(str::to_owned);
    let refuse = |error: &'static str| Refusal::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        state: request_state.clone(),
        error,
    };
    if params.repeated().is_some() {
        return Err(refuse("invalid_request"));
    }
    match params.get("response_type") {
        None => return Err(refuse("invalid_request")),
        Some("code") => {}
        Some(_) => return Err(refuse("unsupported_response_type")),
    }
    let Some(scope) = params.get("scope") else {
        return Err(refuse("invalid_request"));
    };
    let scope = granted_scope(scope).ok_or_else(|| refuse("invalid_scope"))?;
    let pkce = pkce(params, state.require_pkce_s256).map_err(|()| refuse("invalid_request"))?;
    let prompt: Vec<String> = params
        .get("prompt")
        .unwrap_or_default()
        .split(' ')
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .collect();
    // Google documents none, consent and select_account only (`login` is
    // not among them), and OIDC forbids `none` with anything else.
    let known = prompt
        .iter()
        .all(|value| ["none", "consent", "select_account"].contains(&value.as_str()));
    if !known || (prompt.len() > 1 && prompt.iter().any(|value| value == "none")) {
        return Err(refuse("invalid_request"));
    }
    let offline = match params.get("access_type") {
        None | Some("online") => false,
        Some("offline") => true,
        Some(_) => return Err(refuse("invalid_request")),
    };

    Ok(AuthRequest {
        redirect_uri: redirect_uri.to_owned(),
        state: request_state,
        nonce: params.get("nonce").map(str::to_owned),
        pkce,
        scope,
        prompt,
        login_hint: params.get("login_hint").map(str::to_owned),
        hd_hint: params.get("hd").map(str::to_owned),
        offline,
    })
}

/// The scope Google grants for a requested one, in the expanded form it
/// echoes; `None` when `openid` or `email` is missing or a scope is unknown
/// (Google answers unknown scopes with `invalid_scope` too).
fn granted_scope(requested: &str) -> Option<String> {
    let (mut openid, mut email, mut profile) = (false, false, false);
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        match scope {
            "openid" => openid = true,
            "email" | EMAIL_SCOPE_URL => email = true,
            "profile" | PROFILE_SCOPE_URL => profile = true,
            _ => return None,
        }
    }
    if !(openid && email) {
        return None;
    }
    let mut granted = vec!["email", "openid"];
    if profile {
        granted.push("profile");
    }
    granted.push(EMAIL_SCOPE_URL);
    if profile {
        granted.push(PROFILE_SCOPE_URL);
    }
    Some(granted.join(" "))
}

/// The PKCE challenge of a request. `Err` for a method without a challenge,
/// an unknown method, a malformed challenge, or anything but `S256` when
/// that is required. A challenge without a method is `plain` (RFC 7636,
/// and Google's documented default).
fn pkce(params: &Params, require_s256: bool) -> Result<Option<Pkce>, ()> {
    let method = match params.get("code_challenge_method") {
        None | Some("plain") => PkceMethod::Plain,
        Some("S256") => PkceMethod::S256,
        Some(_) => return Err(()),
    };
    let Some(challenge) = params.get("code_challenge") else {
        let lone_method = params.get("code_challenge_method").is_some();
        return if lone_method || require_s256 {
            Err(())
        } else {
            Ok(None)
        };
    };
    if !is_pkce_text(challenge) || (require_s256 && method != PkceMethod::S256) {
        return Err(());
    }
    Ok(Some(Pkce {
        method,
        challenge: challenge.to_owned(),
    }))
}

/// `GET /o/oauth2/v2/auth`: sign in the fixture `login_hint` names, else the
/// queued or preset identity, or show the form (spec §8's order).
pub(super) async fn show(State(oidc): State<FakeOidc>, RawQuery(query): RawQuery) -> Response {
    let provider = &oidc.inner;
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let mut state = provider.lock();
    let request = match validate(provider, &state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if std::mem::take(&mut state.deny_next) {
        return error_redirect(
            &request.redirect_uri,
            request.state.as_deref(),
            "access_denied",
        );
    }
    let hinted = request
        .login_hint
        .as_deref()
        .and_then(|hint| provider.fixture_for_hint(hint));
    let scripted = hinted
        .or_else(|| state.queue.pop_front())
        .or_else(|| state.auto_approve.clone());
    if let Some(identity) = scripted {
        return grant(provider, &mut state, request, identity);
    }
    drop(state);
    if request.prompt.iter().any(|value| value == "none") {
        // The form would be needed, and prompt=none forbids any UI.
        return error_redirect(
            &request.redirect_uri,
            request.state.as_deref(),
            "login_required",
        );
    }

    let email = request
        .login_hint
        .filter(|hint| hint.contains('@'))
        .or_else(|| provider.form_default_email.clone())
        .unwrap_or_default();
    let hd = request
        .hd_hint
        .filter(|hint| hint != "*")
        .or_else(|| provider.form_default_hd.clone())
        .unwrap_or_default();
    let hidden = params.pairs_where(|name| !name.starts_with(FIELD_PREFIX));
    html(
        StatusCode::OK,
        &SignInPage {
            action: PATH,
            client_id: &provider.client_id,
            hidden: &hidden,
            email: &email,
            hd: &hd,
            name: "",
            email_verified: true,
            problem: None,
        },
    )
}

/// `POST /o/oauth2/v2/auth`: the form's answer. The carried request is
/// validated again from scratch: hidden fields are only client input.
pub(super) async fn submit(
    State(oidc): State<FakeOidc>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = &oidc.inner;
    if !params::is_form(&headers) {
        return error_page(
            "invalid_request",
            "The form must be sent as application/x-www-form-urlencoded.",
        );
    }
    let all = Params::parse(&body);
    let field = |name: &str| {
        all.get(&format!("{FIELD_PREFIX}{name}"))
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let action = field("action");
    let email = field("email");
    let hd = field("hd");
    let name = field("name");
    let email_verified = field("email_verified").is_some();
    let hidden = all.pairs_where(|name| !name.starts_with(FIELD_PREFIX));
    let params = all.retain(|name| !name.starts_with(FIELD_PREFIX));

    let mut state = provider.lock();
    let request = match validate(provider, &state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if std::mem::take(&mut state.deny_next) || action.as_deref() == Some("deny") {
        return error_redirect(
            &request.redirect_uri,
            request.state.as_deref(),
            "access_denied",
        );
    }
    if action.as_deref() != Some("approve") {
        return error_page(
            "invalid_request",
            "The form was sent without a known action.",
        );
    }
    if let Some(email) = email.as_deref().filter(|email| is_plausible_email(email)) {
        let identity = Identity {
            email: email.to_owned(),
            email_verified,
            hd,
            name,
            sub: None,
            groups: None,
        };
        return grant(provider, &mut state, request, identity);
    }
    drop(state);
    html(
        StatusCode::BAD_REQUEST,
        &SignInPage {
            action: PATH,
            client_id: &provider.client_id,
            hidden: &hidden,
            email: email.as_deref().unwrap_or_default(),
            hd: hd.as_deref().unwrap_or_default(),
            name: name.as_deref().unwrap_or_default(),
            email_verified,
            problem: Some("Enter an email address, like alice@example.com."),
        },
    )
}

fn is_plausible_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !email.chars().any(char::is_whitespace)
}

/// Issues a code for `identity` and redirects back with it.
fn grant(
    provider: &Provider,
    state: &mut ProviderState,
    request: AuthRequest,
    identity: Identity,
) -> Response {
    let code = format!("4/0A{}", random_string(70, URL_SAFE));
    let sub = identity
        .sub
        .clone()
        .unwrap_or_else(|| Provider::sub_for(state, &identity.email));
    let now_ms = provider.clock.unix_ms();
    let ttl_ms = i64::try_from(state.code_ttl.as_millis()).unwrap_or(i64::MAX);
    let hd = identity.hd.clone();
    let prompt = if request.prompt.iter().any(|value| value == "consent") {
        "consent"
    } else {
        "none"
    };
    let mut query = vec![("code", code.as_str())];
    if let Some(request_state) = &request.state {
        query.push(("state", request_state));
    }
    query.push(("scope", &request.scope));
    query.push(("authuser", "0"));
    if let Some(hd) = &hd {
        query.push(("hd", hd));
    }
    query.push(("prompt", prompt));
    let location = params::with_query(&request.redirect_uri, &query);

    state.codes.insert(
        code,
        Grant {
            client_id: provider.client_id.clone(),
            redirect_uri: request.redirect_uri,
            identity,
            sub,
            nonce: request.nonce,
            pkce: request.pkce,
            scope: request.scope,
            expires_ms: now_ms.saturating_add(ttl_ms),
            used: false,
            access_token: None,
            offline: request.offline,
            consent: prompt == "consent",
        },
    );
    state.codes_issued += 1;
    redirect(&location)
}

/// The GitHub flavour's authorization endpoint: nobody signs in there.
pub(super) async fn workloads_only() -> Response {
    error_page(
        "invalid_request",
        "This issuer mints workload tokens; nobody signs in interactively.",
    )
}

/// The sign-in form, shown when no identity is scripted.
#[derive(Template)]
#[template(path = "oidc/sign_in.html")]
struct SignInPage<'a> {
    action: &'a str,
    client_id: &'a str,
    /// The original request's parameters, carried back on POST.
    hidden: &'a [(String, String)],
    email: &'a str,
    hd: &'a str,
    name: &'a str,
    email_verified: bool,
    problem: Option<&'a str>,
}

/// Google's "Access blocked" page for errors it will not redirect.
#[derive(Template)]
#[template(path = "oidc/error.html")]
struct ErrorPage<'a> {
    error: &'a str,
    description: &'a str,
}

fn error_page(error: &str, description: &str) -> Response {
    html(StatusCode::BAD_REQUEST, &ErrorPage { error, description })
}

fn html(status: StatusCode, page: &impl Template) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "rendering a sandbox OIDC page failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(headers);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

fn redirect(location: &str) -> Response {
    let Ok(location) = HeaderValue::from_str(location) else {
        return error_page("invalid_request", "The redirect URL cannot be sent.");
    };
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    no_store(headers);
    response
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_scope_is_expanded_and_needs_openid_and_email() {
        assert_eq!(
            granted_scope("openid email").as_deref(),
            Some("email openid https://www.googleapis.com/auth/userinfo.email")
        );
        assert_eq!(granted_scope("openid profile"), None);
        assert_eq!(granted_scope("openid email calendar"), None);
        assert!(
            granted_scope("openid https://www.googleapis.com/auth/userinfo.email profile")
                .is_some_and(|s| s.contains("profile"))
        );
    }

    #[test]
    fn s256_accepts_the_rfc_7636_example_and_nothing_else() {
        let pkce = Pkce {
            method: PkceMethod::S256,
            challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        };
        assert!(pkce.accepts("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!pkce.accepts("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"));
        assert!(!pkce.accepts("short"));
    }
}
