//! The API's error body, `{"error": {"message", "type", "param", "code"}}`,
//! and every error this fake answers with.

use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ids;

const SERVER_ERROR: &str = "server_error";
const INVALID_REQUEST: &str = "invalid_request_error";

/// An error answer of the fake OpenAI API: status, the four fields of the
/// error body, and an optional `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
    /// Answer `{"error": "<message>"}`, the bare-string form 403 bodies
    /// may take (`PermissionErrorResponse`).
    bare: bool,
}

impl ApiError {
    /// An error of any status and `type`.
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            bare: false,
        }
    }

    /// Sets `param`.
    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets `code`.
    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Adds a `Retry-After` header (seconds).
    pub(crate) fn retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after = secs;
        self
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, message)
    }

    /// 404 `invalid_request_error` for a missing object.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, message)
    }

    /// 401 for a request without a bearer key.
    pub(crate) fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), \
             or as the password field (with blank username) if you're accessing the API \
             from your browser and are prompted for a username and password. You can \
             obtain an API key from https://platform.openai.com/account/api-keys.",
        )
    }

    /// 401 `invalid_api_key` for an unknown, revoked or expired key; the key
    /// is masked in the message.
    pub(crate) fn invalid_api_key(presented: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                ids::mask(presented)
            ),
        )
        .code("invalid_api_key")
    }

    /// 401 (or 403, a knob) when a key lacks a scope. The 401 is the
    /// reported `{"error": {…}}` object; the 403 uses the newer spec's
    /// `PermissionErrorResponse` in its bare-string form, as in the one real
    /// 403 case on record (`{"error": "You have insufficient permissions
    /// …"}`): the spec allows either, and the string is the form a client
    /// is likelier to mishandle, so it is the stricter test.
    pub(crate) fn missing_scope(status: StatusCode, scope: &str) -> Self {
        let mut error = Self::new(
            status,
            INVALID_REQUEST,
            format!(
                "You have insufficient permissions for this operation. Missing scopes: \
                 {scope}. Check that you have the correct role in your organization, and \
                 if you're using a restricted API key, that it has the necessary scopes."
            ),
        );
        error.bare = status == StatusCode::FORBIDDEN;
        error
    }

    /// 404 for a path the API does not serve.
    pub(crate) fn invalid_url(method: &Method, path: &str) -> Self {
        Self::not_found(format!("Invalid URL ({method} {path})"))
    }

    /// 405 for a known path called with the wrong method.
    pub(crate) fn method_not_allowed(method: &Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            format!("Method not allowed ({method} {path})"),
        )
    }

    /// The body a fault of this status gets: 5xx is `server_error` with the
    /// request id in the message, 429 `rate_limit_error`, others
    /// `invalid_request_error`.
    pub(crate) fn injected(status: StatusCode, request_id: &str) -> Self {
        match status.as_u16() {
            429 => Self::new(
                status,
                "rate_limit_error",
                "Rate limit reached for requests. Please try again later.",
            )
            .code("rate_limit_exceeded"),
            503 => Self::new(
                status,
                SERVER_ERROR,
                "The server is overloaded or not ready yet.",
            ),
            500..=599 => Self::new(
                status,
                SERVER_ERROR,
                format!(
                    "The server had an error processing your request. Sorry about that! \
                     You can retry your request, or contact us through our help center at \
                     help.openai.com if you keep seeing this error. (Please include the \
                     request ID {request_id} in your email.)"
                ),
            ),
            409 => Self::new(
                status,
                INVALID_REQUEST,
                "The request conflicted with another request in progress. Please retry.",
            )
            .code("conflict"),
            _ => Self::new(status, INVALID_REQUEST, "Injected fault."),
        }
    }

    /// 429 from the request-rate limit.
    pub(crate) fn rate_limited(rate_per_s: f64, retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "Rate limit reached for requests on the Admin API: limit {rate_per_s} / s. \
                 Please try again in {retry_after}s."
            ),
        )
        .code("rate_limit_exceeded")
        .retry_after(Some(retry_after))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `message` field.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `type` field.
    pub fn kind(&self) -> &str {
        self.kind
    }

    /// The `param` field.
    pub fn param_name(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// The `code` field.
    pub fn error_code(&self) -> Option<&str> {
        self.code
    }

    /// The JSON body: all four keys present, or the bare message for the
    /// string form of a 403.
    pub fn body(&self) -> Value {
        if self.bare {
            return json!({ "error": self.message });
        }
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
