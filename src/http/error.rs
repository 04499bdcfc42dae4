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
    /// The login this callback belongs to was completed already (a replay).
    #[error("the sign-in was completed already")]
    LoginAlreadyCompleted,
    /// `state` differs from the one in the login cookie.
    #[error("the state parameter does not match this browser's sign-in")]
    StateMismatch,
    /// The callback's parameters are missing or malformed.
    #[error("malformed callback: {0}")]
    BadCallback(&'static str),
    /// The provider redirected with an error (e.g. `access_denied`).
    #[error("the provider returned the error {0:?}")]
    ProviderError(String),
    /// Code exchange or token verification failed.
    #[error(transparent)]
    SignIn(#[from] oidc::Error),
    /// The identity is verified but not allowed.
    #[error("refused {account:?}: {reason}")]
    Refused {
        /// The account as the provider named it.
        account: Option<String>,
        /// Why.
        reason: Refusal,
    },
    /// Creating the key failed.
    #[error("issuing a key failed: {0}")]
    Issue(keys::Error),
    /// An on-demand cleanup failed.
    #[error("cleanup failed: {0}")]
    Sweep(keys::Error),
    /// Too many requests from this user or address.
    #[error("rate limited ({what}); retry in {retry_after:?}")]
    RateLimited {
        /// Which limit.
        what: &'static str,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// The user already holds the most live keys allowed.
    #[error("{owner} already holds {cap} live keys")]
    KeyCap {
        /// Who.
        owner: String,
        /// The cap.
        cap: usize,
        /// Until the oldest expires.
        retry_after: std::time::Duration,
    },
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
}

/// What the person sees.
struct Public {
    status: StatusCode,
    title: &'static str,
    message: String,
    hint: Option<&'static str>,
    sign_in_again: bool,
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
    request_id: &'a str,
}

fn public(error: &HttpError) -> Public {
    let page = |status, title, message: &str| Public {
        status,
        title,
        message: message.to_owned(),
        hint: None,
        sign_in_again: false,
        retry_after: None,
        close: false,
    };
    let sign_in = |status, title, message: &str| Public {
        sign_in_again: true,
        ..page(status, title, message)
    };
    let admin = "The server could not create your key. This is not your fault; the operator has the details in the log.";
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
        HttpError::LoginAlreadyCompleted => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in already used",
            "This sign-in was completed already; each one gives one key. Start again for another.",
        ),
        HttpError::StateMismatch | HttpError::BadCallback(_) => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed",
            "The answer from the sign-in provider does not belong to this browser's sign-in. Start again.",
        ),
        HttpError::ProviderError(code) => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in was not completed",
            &format!("The sign-in provider did not sign you in ({code})."),
        ),
        HttpError::SignIn(oidc::Error::CodeRefused { .. }) => sign_in(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed",
            "The sign-in provider refused the sign-in code; it may have been used already or expired. Start again.",
        ),
        HttpError::SignIn(oidc::Error::InvalidToken(_)) => sign_in(
            StatusCode::UNAUTHORIZED,
            "Identity could not be verified",
            "The identity the sign-in provider sent could not be verified, so no key was issued.",
        ),
        HttpError::SignIn(oidc::Error::Unreachable(_)) => Public {
            hint: Some("Try again in a minute."),
            ..sign_in(
                StatusCode::BAD_GATEWAY,
                "Sign-in provider unavailable",
                "The sign-in provider could not be reached.",
            )
        },
        HttpError::SignIn(oidc::Error::ClientRefused(_)) => page(
            StatusCode::BAD_GATEWAY,
            "Server misconfigured",
            "The sign-in provider refused this server's client credentials. Tell the operator (CLIENT_ID / CLIENT_SECRET).",
        ),
        HttpError::Refused { account, reason } => Public {
            hint: Some(
                "If you should have access, ask the operator of this server to add your account or your organisation's domain to the allow-list.",
            ),
            ..page(
                StatusCode::FORBIDDEN,
                "No key for this account",
                &format!(
                    "The account {} cannot get a key: {reason}.",
                    account.as_deref().unwrap_or("(no email address)")
                ),
            )
        },
        HttpError::Issue(error) | HttpError::Sweep(error) => match error {
            keys::Error::OpenAi(openai::Error::RateLimited { retry_after, .. }) => Public {
                retry_after: Some(retry_after.map_or(30, |d| d.as_secs().max(1))),
                hint: Some("Try again in a little while."),
                ..page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OpenAI is busy",
                    "OpenAI is limiting how fast keys can be created right now.",
                )
            },
            keys::Error::OpenAi(openai::Error::Timeout) => Public {
                hint: Some("Try again in a minute."),
                ..page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "OpenAI did not answer",
                    "OpenAI did not answer in time. No key was issued.",
                )
            },
            keys::Error::OpenAi(
                openai::Error::Unauthorized { .. } | openai::Error::Forbidden { .. },
            ) => Public {
                hint: Some("Operator: check OPENAI_MANAGEMENT_KEY (an admin key, sk-admin-…)."),
                ..page(StatusCode::BAD_GATEWAY, "OpenAI refused the server", admin)
            },
            keys::Error::OpenAi(openai::Error::NotFound { .. }) => Public {
                hint: Some("Operator: check OPENAI_PROJECT_ID / DEFAULT_PROJECT_NAME."),
                ..page(StatusCode::BAD_GATEWAY, "OpenAI project not found", admin)
            },
            keys::Error::OpenAi(openai::Error::BadRequest { .. }) => Public {
                hint: Some(
                    "Operator: OpenAI refused the request (for example an organisation key-lifetime policy shorter than EXPIRATION, or an archived project); the log has its message.",
                ),
                ..page(StatusCode::BAD_GATEWAY, "OpenAI refused the request", admin)
            },
            keys::Error::ShuttingDown => Public {
                retry_after: Some(1),
                hint: Some("Try again in a moment."),
                ..page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is restarting",
                    "The server is shutting down and issues no new key. No key was issued.",
                )
            },
            keys::Error::TaskFailed => page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                admin,
            ),
            keys::Error::AmbiguousProject { .. } => Public {
                hint: Some("Operator: several projects share the name; set OPENAI_PROJECT_ID."),
                ..page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Server misconfigured",
                    admin,
                )
            },
            _ => Public {
                hint: Some("Try again in a minute."),
                ..page(StatusCode::BAD_GATEWAY, "OpenAI failed", admin)
            },
        },
        HttpError::RateLimited { retry_after, .. } => Public {
            // Rounded up: a client that waits exactly this long must find
            // a token, not another 429.
            retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            hint: Some("Wait a little and try again."),
            ..page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "Too many requests came from you in a short time.",
            )
        },
        HttpError::KeyCap {
            cap, retry_after, ..
        } => Public {
            retry_after: Some(retry_after.as_secs().max(1)),
            hint: Some(
                "Use one of the keys you already have; a new one can be issued when the oldest expires.",
            ),
            ..page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many live keys",
                &format!(
                    "You already hold {cap} keys that have not expired, the most one person may hold. The oldest expires in {}.",
                    humantime::format_duration(*retry_after)
                ),
            )
        },
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
    }
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
    let page = ErrorPage {
        title: shown.title,
        message: &shown.message,
        hint: shown.hint,
        sign_in_again: shown.sign_in_again,
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
