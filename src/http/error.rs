//! The one place where failures become status codes and pages. Handlers
//! return [`HttpError`]; a middleware renders it with the request id and
//! logs the cause once, inside the request span. Pages never show a cause
//! chain, a token or a key.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use tower_http::request_id::RequestId;

use super::AppState;
use crate::access::Refusal;
use crate::cli_auth::Refused;
use crate::issuance;
use crate::{keys, oidc, openai};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The callback came with no login cookie (none started here, expired,
    /// or another browser).
    #[error("no sign-in in progress in this browser")]
    NoLoginInProgress,
    /// The login cookie is older than the sign-in lifetime.
    #[error("the sign-in took too long")]
    LoginExpired,
    /// `state` differs from the one in the login cookie.
    #[error("the state parameter does not match this browser's sign-in")]
    StateMismatch,
    /// The callback's parameters are missing or malformed.
    #[error("malformed callback: {0}")]
    BadCallback(&'static str),
    /// The provider redirected with an error (e.g. `access_denied`).
    #[error("the provider returned the error {0:?}")]
    ProviderError(String),
    /// Starting a sign-in failed (discovery).
    #[error(transparent)]
    SignIn(#[from] oidc::Error),
    /// A use case of the issuance core did not go through.
    #[error(transparent)]
    Issuance(#[from] issuance::Error),
    /// A page that needs a session, without one.
    #[error("not signed in")]
    NotSignedIn,
    /// A state-changing request from another site, or without the
    /// session's CSRF token.
    #[error("the request did not come from one of this server's pages")]
    ForeignOrigin,
    /// A form whose fields could not be read.
    #[error("the form could not be read")]
    BadForm,
    /// The page of a key that was shown already (a reload, a resubmitted
    /// form, the back button).
    #[error("the key was shown already")]
    KeyShownOnce,
    /// No such page.
    #[error("no such page")]
    NotFound,
    /// A method the route does not take.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request's body did not arrive within the time allowed.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request's body is larger than any route takes.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// The request's body could not be read (a broken chunked encoding).
    #[error("the request body could not be read")]
    BadBody,
    /// The connection was being closed to make room as the request came.
    #[error("the connection was closed to make room for others")]
    Closing,
    /// A page failed to render.
    #[error("rendering failed: {0}")]
    Render(#[from] askama::Error),
    /// An API call without `Authorization: Bearer <CLI session>`.
    #[error("no bearer token")]
    NoBearer,
    /// An API call whose JSON body could not be read.
    #[error("the JSON body could not be read: {0}")]
    BadJson(String),
    /// A token request of no known grant type, or without its fields.
    #[error("unsupported grant type or missing fields")]
    BadGrant,
    /// A command line's sign-in link that is not one (`/cli/login`).
    #[error("bad CLI sign-in link: {0}")]
    BadCliLogin(&'static str),
    /// A sign-in through an issuer this server does not have.
    #[error("no issuer named {0:?}")]
    UnknownIssuer(String),
}

/// What the person sees.
struct Public {
    status: StatusCode,
    title: &'static str,
    message: String,
    hint: Option<String>,
    /// Offer to sign in again.
    sign_in_again: bool,
    /// Offer to sign in with another account.
    another_account: bool,
    /// Offer the way to my keys.
    my_keys: bool,
    retry_after: Option<u64>,
    /// Close the connection after the answer: the rest of the request may
    /// still be on its way.
    close: bool,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
    sign_in_again: bool,
    another_account: bool,
    my_keys: bool,
    request_id: &'a str,
}

fn page(status: StatusCode, title: &'static str, message: &str) -> Public {
    Public {
        status,
        title,
        message: message.to_owned(),
        hint: None,
        sign_in_again: false,
        another_account: false,
        my_keys: false,
        retry_after: None,
        close: false,
    }
}

fn sign_in(status: StatusCode, title: &'static str, message: &str) -> Public {
    Public {
        sign_in_again: true,
        ..page(status, title, message)
    }
}

fn with_hint(public: Public, hint: &str) -> Public {
    Public {
        hint: Some(hint.to_owned()),
        ..public
    }
}

/// Seconds for `Retry-After`, rounded up: a client that waits exactly this
/// long must find room, not another refusal.
fn retry_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

const ADMIN: &str = "The server could not do this. This is not your fault; the operator has the details in the log.";

fn public(error: &HttpError) -> Public {
    match error {
        HttpError::NoLoginInProgress => sign_in(
            StatusCode::BAD_REQUEST,
            "No sign-in in progress",
            "This browser has no sign-in in progress, or it expired. Start again from the beginning.",
        ),
        HttpError::LoginExpired => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The sign-in took too long. Start again.",
        ),
        HttpError::StateMismatch | HttpError::BadCallback(_) => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed",
            "The answer from the sign-in provider does not belong to this browser's sign-in. Start again.",
        ),
        HttpError::ProviderError(code) => Public {
            another_account: true,
            ..sign_in(
                StatusCode::BAD_REQUEST,
                "Sign-in was not completed",
                &format!("The sign-in provider did not sign you in ({code})."),
            )
        },
        HttpError::SignIn(error) => sign_in_failed(error),
        HttpError::Issuance(error) => issuance_failed(error),
        HttpError::NotSignedIn => sign_in(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Sign in first; your session may have ended.",
        ),
        HttpError::ForeignOrigin => with_hint(
            page(
                StatusCode::FORBIDDEN,
                "Refused",
                "This request did not come from one of this server's pages, so nothing was done.",
            ),
            "Use the buttons on this server's own pages; reload the page if it was open for a long time.",
        ),
        HttpError::BadForm => page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        ),
        HttpError::KeyShownOnce => key_shown_once(),
        HttpError::NotFound => page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page here.",
        ),
        HttpError::MethodNotAllowed => page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This address does not take this kind of request.",
        ),
        HttpError::BodyTimeout => Public {
            close: true,
            ..page(
                StatusCode::REQUEST_TIMEOUT,
                "Request too slow",
                "The request's body did not arrive in time.",
            )
        },
        HttpError::BodyTooLarge => Public {
            close: true,
            ..page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "The request's body is larger than this server accepts.",
            )
        },
        HttpError::BadBody => Public {
            close: true,
            ..page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The request's body could not be read.",
            )
        },
        HttpError::Closing => Public {
            close: true,
            retry_after: Some(1),
            ..page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The server is busy. Try again in a moment.",
            )
        },
        HttpError::Render(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The page could not be shown.",
        ),
        HttpError::NoBearer => with_hint(
            page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "This call needs a CLI session in an `Authorization: Bearer` header.",
            ),
            "Run `openai-key-server login --server <this server>`.",
        ),
        HttpError::BadJson(why) => page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            &format!("The JSON body could not be read: {why}."),
        ),
        HttpError::BadGrant => page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "grant_type must be authorization_code (with code and code_verifier) or urn:ietf:params:oauth:grant-type:device_code (with device_code).",
        ),
        HttpError::UnknownIssuer(name) => with_hint(
            page(
                StatusCode::BAD_REQUEST,
                "No such sign-in",
                &format!("This server has no sign-in through {name:?}."),
            ),
            "Start again from the home page and pick one of the sign-ins it offers.",
        ),
        HttpError::BadCliLogin(why) => with_hint(
            page(
                StatusCode::BAD_REQUEST,
                "Not a valid sign-in link",
                &format!("This command-line sign-in link cannot be used: {why}."),
            ),
            "Run `openai-key-server login` again and open the link it gives.",
        ),
    }
}

/// The stable code of an error in the JSON API.
fn code(error: &HttpError) -> &'static str {
    match error {
        HttpError::NoLoginInProgress => "no_sign_in_in_progress",
        HttpError::LoginExpired => "sign_in_expired",
        HttpError::StateMismatch | HttpError::BadCallback(_) => "bad_callback",
        HttpError::ProviderError(_) => "provider_error",
        HttpError::SignIn(error) => sign_in_code(error),
        HttpError::Issuance(error) => match error {
            issuance::Error::Refused { .. } => "refused",
            issuance::Error::SignIn(error) => sign_in_code(error),
            issuance::Error::Replayed => "replayed",
            issuance::Error::TokenReplayed => "token_replayed",
            issuance::Error::BadJobToken(_) => "invalid_token",
            issuance::Error::NoWorkloadIssuers => "no_job_tokens",
            issuance::Error::FormSpent => "form_spent",
            issuance::Error::RateLimited { .. } => "rate_limited",
            issuance::Error::CapReached { .. } => "cap_reached",
            issuance::Error::OverBudget { .. } => "over_budget",
            issuance::Error::NotFound => "not_found",
            issuance::Error::NotAdmin { .. } => "forbidden",
            issuance::Error::NotConfirmed => "not_confirmed",
            issuance::Error::ListingIncomplete { .. } => "listing_incomplete",
            issuance::Error::PartlyRevoked { .. } => "partly_revoked",
            issuance::Error::LifetimeTooLong { .. } => "ttl_too_long",
            issuance::Error::LifetimeZero => "bad_request",
            issuance::Error::Cli(refused) => match refused {
                Refused::InvalidGrant(_) => "invalid_grant",
                Refused::AuthorizationPending => "authorization_pending",
                Refused::SlowDown(_) => "slow_down",
                Refused::ExpiredToken => "expired_token",
                Refused::AccessDenied => "access_denied",
                Refused::UnknownUserCode => "unknown_user_code",
                Refused::TooManyPending => "busy",
                Refused::BadSession => "unauthorized",
                Refused::SessionExpired => "session_expired",
            },
            issuance::Error::Keys(error) => match error {
                keys::Error::OpenAi(openai::Error::RateLimited { .. }) => "openai_busy",
                keys::Error::OpenAi(openai::Error::Timeout) => "openai_timeout",
                keys::Error::ShuttingDown => "shutting_down",
                keys::Error::TaskFailed => "internal",
                _ => "openai_failed",
            },
        },
        HttpError::NotSignedIn | HttpError::NoBearer => "unauthorized",
        HttpError::ForeignOrigin => "forbidden",
        HttpError::BadForm | HttpError::BadBody | HttpError::BadJson(_) => "bad_request",
        HttpError::BadGrant => "unsupported_grant_type",
        HttpError::BadCliLogin(_) => "bad_request",
        HttpError::UnknownIssuer(_) => "unknown_issuer",
        HttpError::KeyShownOnce => "key_shown_once",
        HttpError::NotFound => "not_found",
        HttpError::MethodNotAllowed => "method_not_allowed",
        HttpError::BodyTimeout => "timeout",
        HttpError::BodyTooLarge => "too_large",
        HttpError::Closing => "busy",
        HttpError::Render(_) => "internal",
    }
}

fn sign_in_code(error: &oidc::Error) -> &'static str {
    match error {
        oidc::Error::CodeRefused { .. } => "code_refused",
        oidc::Error::InvalidToken(_) => "invalid_token",
        oidc::Error::Unreachable(_) => "provider_unreachable",
        oidc::Error::ClientRefused(_) => "misconfigured",
    }
}

fn key_shown_once() -> Public {
    Public {
        my_keys: true,
        ..with_hint(
            page(
                StatusCode::GONE,
                "Key already shown",
                "A key is shown once, when it is made, and never again: reloading, going back or sending the form again cannot show it, nor make another. It is listed (not its value) on your keys page, where you can revoke it or get a new one.",
            ),
            "If you never saw it (a second click, say), revoke the newest key on your keys page.",
        )
    }
}

fn sign_in_failed(error: &oidc::Error) -> Public {
    match error {
        oidc::Error::CodeRefused { .. } => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed",
            "The sign-in provider refused the sign-in code; it may have been used already or expired. Start again.",
        ),
        oidc::Error::InvalidToken(_) => sign_in(
            StatusCode::UNAUTHORIZED,
            "Identity could not be verified",
            "The identity the sign-in provider sent could not be verified, so no key was issued.",
        ),
        oidc::Error::Unreachable(_) => with_hint(
            sign_in(
                StatusCode::BAD_GATEWAY,
                "Sign-in provider unavailable",
                "The sign-in provider could not be reached.",
            ),
            "Try again in a minute.",
        ),
        oidc::Error::ClientRefused(_) => page(
            StatusCode::BAD_GATEWAY,
            "Server misconfigured",
            "The sign-in provider refused this server's client credentials. Tell the operator (CLIENT_ID / CLIENT_SECRET).",
        ),
    }
}

/// A true hint for each refusal: what the person can do about it.
fn refusal_hint(reason: &Refusal) -> String {
    match reason {
        Refusal::NoEmail => "Sign in with an account that has an email address.".to_owned(),
        Refusal::EmailNotVerified => "Verify this address with your identity provider, then sign in again; or sign in with another account.".to_owned(),
        Refusal::NotManagedByDomain { domain } => format!(
            "Sign in with your organisation's own account for {domain} (a Google Workspace account), not a personal one."
        ),
        Refusal::Unmanaged => "Sign in with your organisation's own account, not a personal one that uses the same address.".to_owned(),
        Refusal::NotAllowed => "If you should have access, ask the operator of this server to add your account or your organisation's domain to the allow-list, or sign in with another account.".to_owned(),
        Refusal::NotInGroup => "If you should have access, ask your identity provider's administrator to add you to the group this server's policy names, or ask the operator of this server.".to_owned(),
        Refusal::ClaimMismatch { .. } | Refusal::NoRuleForIssuer(_) => "If this job should get keys, ask the operator of this server for a rule that names its repository (or project) and ref; `openai-key-server explain --issuer … --claim k=v` shows what the policy decides.".to_owned(),
    }
}

fn issuance_failed(error: &issuance::Error) -> Public {
    match error {
        issuance::Error::Refused { account, reason } => Public {
            hint: Some(refusal_hint(reason)),
            another_account: true,
            ..page(
                StatusCode::FORBIDDEN,
                "No key for this account",
                &format!(
                    "The account {} cannot get a key: {reason}.",
                    account.as_deref().unwrap_or("(no email address)")
                ),
            )
        },
        issuance::Error::SignIn(error) => sign_in_failed(error),
        issuance::Error::Replayed => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in already used",
            "This sign-in was completed already; each one is used once. Start again.",
        ),
        issuance::Error::RateLimited { retry_after, .. } => Public {
            retry_after: Some(retry_seconds(*retry_after)),
            ..with_hint(
                page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    "Too many requests came from you in a short time.",
                ),
                &format!("Try again in {}.", crate::clock::humanize(*retry_after)),
            )
        },
        issuance::Error::CapReached {
            cap, retry_after, ..
        } => Public {
            retry_after: Some(retry_seconds(*retry_after)),
            my_keys: true,
            ..with_hint(
                page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many live keys",
                    &format!(
                        "You already hold {cap} keys that have not expired, the most one person may hold."
                    ),
                ),
                &format!(
                    "Revoke one on your keys page to get a new one at once, or wait: the oldest expires in {}.",
                    crate::clock::humanize(*retry_after)
                ),
            )
        },
        issuance::Error::OverBudget {
            over, retry_after, ..
        } => Public {
            retry_after: Some(retry_seconds(*retry_after)),
            my_keys: true,
            ..with_hint(
                page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Budget spent",
                    &format!("Your keys used {}.", over.describe()),
                ),
                &format!(
                    "The budget is whole again in {} ({} UTC); an admin can lift it until the day's end.",
                    crate::clock::humanize(*retry_after),
                    match over.unit {
                        crate::usage::Unit::TokensToday => "midnight",
                        crate::usage::Unit::CentsThisMonth => "the month's end",
                    }
                ),
            )
        },
        issuance::Error::FormSpent => key_shown_once(),
        issuance::Error::BadJobToken(reason) => page(
            StatusCode::UNAUTHORIZED,
            "CI job token refused",
            &format!("The CI job's token was refused: {reason}."),
        ),
        issuance::Error::TokenReplayed => page(
            StatusCode::UNAUTHORIZED,
            "Token used already",
            "This CI job token was used for a key already; each token gives one key. Request a fresh token for each call.",
        ),
        issuance::Error::NoWorkloadIssuers => page(
            StatusCode::UNAUTHORIZED,
            "No CI job tokens here",
            "This server takes no CI job tokens: its policy names no workload issuer. Ask its operator to add one ([[issuer]] with an audience), or sign in with `openai-key-server login`.",
        ),
        issuance::Error::ListingIncomplete { .. } => with_hint(
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Nothing was revoked",
                "OpenAI could not list every key just now, so nothing was revoked: acting on a partial list would leave keys behind.",
            ),
            "Try again in a minute.",
        ),
        issuance::Error::NotFound => page(
            StatusCode::NOT_FOUND,
            "No such key",
            "There is no live key with this id that you may revoke. It may have expired or been revoked already.",
        ),
        issuance::Error::NotAdmin { .. } => page(
            StatusCode::FORBIDDEN,
            "Admins only",
            "This page is for the admins of this server.",
        ),
        issuance::Error::NotConfirmed => page(
            StatusCode::BAD_REQUEST,
            "Not confirmed",
            "Nothing was revoked: type the project id exactly to confirm.",
        ),
        issuance::Error::PartlyRevoked { failed, wanted } => with_hint(
            page(
                StatusCode::BAD_GATEWAY,
                "Not every key was revoked",
                &format!("{failed} of {wanted} keys could not be revoked."),
            ),
            "Try again; OpenAI may be busy. The operator has the details in the log.",
        ),
        issuance::Error::Keys(error) => keys_failed(error),
        issuance::Error::LifetimeTooLong { max } => page(
            StatusCode::BAD_REQUEST,
            "Lifetime too long",
            &format!(
                "A key of yours may live at most {} seconds ({}); ask for that or less.",
                max.as_secs(),
                crate::clock::humanize(*max)
            ),
        ),
        issuance::Error::LifetimeZero => page(
            StatusCode::BAD_REQUEST,
            "Lifetime too short",
            "A key must live at least one second.",
        ),
        issuance::Error::Cli(refused) => cli_refused(refused),
    }
}

fn cli_refused(refused: &Refused) -> Public {
    let login = "Run `openai-key-server login` again.";
    match refused {
        Refused::InvalidGrant(why) => with_hint(
            page(
                StatusCode::BAD_REQUEST,
                "Sign-in code not valid",
                &format!("The sign-in code cannot be used: {why}."),
            ),
            login,
        ),
        Refused::AuthorizationPending => page(
            StatusCode::BAD_REQUEST,
            "Waiting",
            "The code has not been confirmed in a browser yet; keep polling.",
        ),
        Refused::SlowDown(interval) => page(
            StatusCode::BAD_REQUEST,
            "Too fast",
            &format!("Polled too often; poll every {interval} seconds from now on."),
        ),
        Refused::ExpiredToken => with_hint(
            page(
                StatusCode::BAD_REQUEST,
                "Code expired",
                "The device code expired before it was confirmed, or was used already.",
            ),
            "Run `openai-key-server login --device` again.",
        ),
        Refused::AccessDenied => page(
            StatusCode::BAD_REQUEST,
            "Refused",
            "The sign-in was refused in the browser.",
        ),
        Refused::UnknownUserCode => with_hint(
            page(
                StatusCode::BAD_REQUEST,
                "No such code",
                "No command line is waiting for this code here. It may be mistyped, expired (a code lives ten minutes) or used already.",
            ),
            "Check the code your terminal shows, or run `openai-key-server login --device` again.",
        ),
        Refused::TooManyPending => Public {
            retry_after: Some(60),
            ..with_hint(
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    "Too many device sign-ins are waiting on this server.",
                ),
                "Try again in a minute, or sign in with `openai-key-server login` (no --device).",
            )
        },
        Refused::BadSession => with_hint(
            page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "The session is not one of this server's (or the server's SESSION_SECRET changed).",
            ),
            login,
        ),
        Refused::SessionExpired => with_hint(
            page(
                StatusCode::UNAUTHORIZED,
                "Session ended",
                "This command line's session has ended.",
            ),
            login,
        ),
    }
}

fn keys_failed(error: &keys::Error) -> Public {
    match error {
        keys::Error::OpenAi(openai::Error::RateLimited { retry_after, .. }) => Public {
            retry_after: Some(retry_after.map_or(30, |d| d.as_secs().max(1))),
            ..with_hint(
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OpenAI is busy",
                    "OpenAI is limiting how fast keys can be created or revoked right now.",
                ),
                "Try again in a little while.",
            )
        },
        keys::Error::OpenAi(openai::Error::Timeout) => with_hint(
            page(
                StatusCode::GATEWAY_TIMEOUT,
                "OpenAI did not answer",
                "OpenAI did not answer in time. Nothing was done.",
            ),
            "Try again in a minute.",
        ),
        keys::Error::OpenAi(
            openai::Error::Unauthorized { .. } | openai::Error::Forbidden { .. },
        ) => with_hint(
            page(StatusCode::BAD_GATEWAY, "OpenAI refused the server", ADMIN),
            "Operator: check OPENAI_MANAGEMENT_KEY (an admin key, sk-admin-…).",
        ),
        keys::Error::OpenAi(openai::Error::NotFound { .. }) => with_hint(
            page(StatusCode::BAD_GATEWAY, "OpenAI project not found", ADMIN),
            "Operator: check OPENAI_PROJECT_ID / DEFAULT_PROJECT_NAME.",
        ),
        keys::Error::OpenAi(openai::Error::BadRequest { .. }) => with_hint(
            page(StatusCode::BAD_GATEWAY, "OpenAI refused the request", ADMIN),
            "Operator: OpenAI refused the request (for example an organisation key-lifetime policy shorter than EXPIRATION, or an archived project); the log has its message.",
        ),
        keys::Error::AmbiguousProject { .. } => with_hint(
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Server misconfigured",
                ADMIN,
            ),
            "Operator: several projects share the name; set OPENAI_PROJECT_ID.",
        ),
        keys::Error::ShuttingDown => Public {
            retry_after: Some(1),
            ..with_hint(
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is restarting",
                    "The server is shutting down and issues no new key. No key was issued.",
                ),
                "Try again in a moment.",
            )
        },
        keys::Error::TaskFailed => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            ADMIN,
        ),
        _ => with_hint(
            page(StatusCode::BAD_GATEWAY, "OpenAI failed", ADMIN),
            "Try again in a minute.",
        ),
    }
}

/// Whether an error is answered as JSON: on the API's routes, and to a
/// client that asks for JSON and not HTML. A browser asks for HTML, and
/// gets pages.
fn wants_json(request: &Request) -> bool {
    if request.uri().path().starts_with("/api/") {
        return true;
    }
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

/// `{"error": {"code", "message", "request_id"}}` with the page's status.
fn json_error(error: &HttpError, shown: &Public, request_id: String) -> Response {
    let message = match &shown.hint {
        Some(hint) => format!("{} {hint}", shown.message),
        None => shown.message.clone(),
    };
    let interval = match error {
        HttpError::Issuance(issuance::Error::Cli(Refused::SlowDown(interval))) => Some(*interval),
        _ => None,
    };
    let body = crate::api::ErrorBody {
        error: crate::api::ErrorDetail {
            code: code(error).to_owned(),
            message,
            request_id,
            interval,
        },
    };
    let mut response = (shown.status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if shown.status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"openai-key-server\""),
        );
    }
    if shown.close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(seconds) = shown.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    response
}

/// Carries the error from the handler to [`render_error_pages`].
#[derive(Clone)]
struct Carried(Arc<HttpError>);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        response.extensions_mut().insert(Carried(Arc::new(self)));
        response
    }
}

/// Renders carried errors as pages and logs their cause, once.
pub(super) async fn render_error_pages(
    State(_state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("")
        .to_owned();
    let json = wants_json(&request);
    let response = next.run(request).await;
    let Some(Carried(error)) = response.extensions().get::<Carried>().cloned() else {
        return response;
    };
    let shown = public(&error);
    if shown.status.is_server_error() {
        tracing::error!(error = %error, status = shown.status.as_u16(), "request failed");
    } else {
        tracing::warn!(error = %error, status = shown.status.as_u16(), "request refused");
    }
    if json {
        return json_error(&error, &shown, request_id);
    }
    let page = ErrorPage {
        title: shown.title,
        message: &shown.message,
        hint: shown.hint.as_deref(),
        sign_in_again: shown.sign_in_again,
        another_account: shown.another_account,
        my_keys: shown.my_keys,
        request_id: &request_id,
    };
    let body = page
        .render()
        .unwrap_or_else(|_| format!("{}\n", shown.title));
    let mut rendered = (shown.status, Html(body)).into_response();
    // Keep what the handler set (e.g. a cookie removal).
    for (name, value) in response.headers() {
        if name == header::SET_COOKIE {
            rendered.headers_mut().append(name, value.clone());
        }
    }
    let headers = rendered.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if shown.close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(seconds) = shown.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    rendered
}
