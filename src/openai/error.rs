//! What can go wrong talking to the Admin API, parsed from its error body.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

/// A failed Admin API call. Variants are the decisions callers make.
/// Messages come from OpenAI with anything that looks like a key masked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 401: the admin key is wrong, revoked or lacks scopes.
    #[error("OpenAI refused the admin key (401): {message}")]
    Unauthorized {
        /// OpenAI's message, keys masked.
        message: String,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// 403: the admin key may not do this.
    #[error("OpenAI denied permission (403): {message}")]
    Forbidden {
        /// OpenAI's message, keys masked.
        message: String,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// 404: no such project, account or key.
    #[error("OpenAI found no such object (404): {message}")]
    NotFound {
        /// OpenAI's message.
        message: String,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// 400: the request was refused; nothing was created.
    #[error("OpenAI rejected the request (400): {message}")]
    BadRequest {
        /// OpenAI's message.
        message: String,
        /// The field at fault, when OpenAI says.
        param: Option<String>,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// 429: slow down.
    #[error("OpenAI is rate limiting the admin key (429)")]
    RateLimited {
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// Any other status (5xx, 409, …).
    #[error("OpenAI answered {status}: {message}")]
    Api {
        /// The status code.
        status: u16,
        /// OpenAI's message, if the body had one.
        message: String,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// No answer within `TIMEOUT`.
    #[error("OpenAI did not answer in time")]
    Timeout,
    /// Connection refused, reset, TLS failure…
    #[error("could not reach OpenAI: {message}")]
    Transport {
        /// What the HTTP client said (no URL query, no headers).
        message: String,
    },
    /// A success status with a body far larger than any the API sends;
    /// not read beyond the cap.
    #[error("OpenAI sent an answer larger than {} KiB; it was not read", limit / 1024)]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
        /// `x-request-id`.
        request_id: Option<String>,
    },
    /// A success status with a body that is not what the API documents.
    #[error("OpenAI sent an answer that could not be read: {message}")]
    Decode {
        /// The parse error.
        message: String,
        /// `x-request-id`.
        request_id: Option<String>,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorField,
}

/// 403 bodies may carry a bare string instead of the object.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        param: Option<String>,
    },
    Text(String),
}

/// Replaces anything that looks like an OpenAI key (`sk-…`) with a mask, so
/// that OpenAI's "Incorrect API key provided: sk-adm***…" never lands in a
/// log line or a page.
pub(crate) fn mask_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("sk-") {
        out.push_str(&rest[..at]);
        out.push_str("sk-[REDACTED]");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ')' | ']' | '}'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl Error {
    pub(crate) fn from_transport(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return Self::Timeout;
        }
        // Without the URL: it carries no secret, but it is noise in a page.
        Self::Transport {
            message: error.without_url().to_string(),
        }
    }

    pub(crate) fn from_response(
        status: StatusCode,
        body: &[u8],
        request_id: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let (message, param) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody {
                error: ErrorField::Object { message, param },
            }) => (message.unwrap_or_default(), param),
            Ok(ErrorBody {
                error: ErrorField::Text(text),
            }) => (text, None),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("unexpected answer")
                    .to_owned(),
                None,
            ),
        };
        let message = mask_keys(&message);
        match status.as_u16() {
            400 => Self::BadRequest {
                message,
                param,
                request_id,
            },
            401 => Self::Unauthorized {
                message,
                request_id,
            },
            403 => Self::Forbidden {
                message,
                request_id,
            },
            404 => Self::NotFound {
                message,
                request_id,
            },
            429 => Self::RateLimited {
                retry_after,
                request_id,
            },
            other => Self::Api {
                status: other,
                message,
                request_id,
            },
        }
    }

    /// True when the call may have taken effect although it failed: a
    /// timeout, a lost connection, a 5xx or an unreadable success. A create
    /// that failed this way must be reconciled, never retried.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Timeout
            | Self::Transport { .. }
            | Self::Decode { .. }
            | Self::TooLarge { .. } => true,
            Self::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// OpenAI's request id, to quote to its support.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { request_id, .. }
            | Self::Forbidden { request_id, .. }
            | Self::NotFound { request_id, .. }
            | Self::BadRequest { request_id, .. }
            | Self::RateLimited { request_id, .. }
            | Self::Api { request_id, .. }
            | Self::Decode { request_id, .. }
            | Self::TooLarge { request_id, .. } => request_id.as_deref(),
            Self::Timeout | Self::Transport { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_body_shapes_parse_and_keys_are_masked() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-adm***abcd. You can find","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let err = Error::from_response(StatusCode::UNAUTHORIZED, body, None, None);
        let Error::Unauthorized { message, .. } = err else {
            panic!("{err:?}")
        };
        assert!(!message.contains("sk-adm"), "{message}");
        let text = br#"{"error":"You have insufficient permissions"}"#;
        let err = Error::from_response(StatusCode::FORBIDDEN, text, None, None);
        assert!(
            matches!(err, Error::Forbidden { ref message, .. } if message == "You have insufficient permissions")
        );
    }

    #[test]
    fn keys_are_masked_wherever_they_stand() {
        assert_eq!(
            mask_keys("bad key:sk-admin-abc123, (sk-proj-x) \"sk-1\" ok"),
            "bad key:sk-[REDACTED], (sk-[REDACTED]) \"sk-[REDACTED]\" ok"
        );
        assert_eq!(mask_keys("nothing here"), "nothing here");
    }

    #[test]
    fn only_failures_that_may_have_taken_effect_are_ambiguous() {
        let server = Error::from_response(StatusCode::BAD_GATEWAY, b"<html>", None, None);
        assert!(server.is_ambiguous());
        let bad = Error::from_response(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"x","type":"invalid_request_error","param":"name","code":null}}"#,
            Some("req_1".into()),
            None,
        );
        assert!(!bad.is_ambiguous());
        assert!(
            matches!(bad, Error::BadRequest { ref param, .. } if param.as_deref() == Some("name"))
        );
        assert_eq!(bad.request_id(), Some("req_1"));
        assert!(Error::Timeout.is_ambiguous());
    }
}
