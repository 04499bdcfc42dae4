//! The CLI's one client of the key server's JSON API, as the server has one
//! client of OpenAI's: typed calls over the wire types of [`crate::api`],
//! and one error type that says what to do.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use crate::api::{
    CliSession, DeviceAuthorization, ErrorBody, GRANT_CODE, GRANT_DEVICE, KeyList, Me, NewKey,
    NewKeyRequest, PREFIX, TokenRequest,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached (or did not answer in time).
    #[error(
        "cannot reach {server}: {cause}. Is the address right? Change it with `openai-key-server login --server URL`"
    )]
    Unreachable {
        /// The server's address.
        server: String,
        /// What the connection said.
        cause: String,
    },
    /// The server answered with an error.
    #[error("{message} ({code}, request {request_id})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// What the server said.
        message: String,
        /// Its request id, for the operator.
        request_id: String,
        /// With `slow_down`: the interval to poll at.
        interval: Option<u64>,
    },
    /// The answer could not be read.
    #[error(
        "{server} answered {status} with something that is not this API's: is it an openai-key-server?"
    )]
    NotOurs {
        /// The server's address.
        server: String,
        /// The HTTP status.
        status: u16,
    },
}

impl ApiError {
    /// The API's error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the session is the problem: sign in again.
    pub fn needs_login(&self) -> bool {
        matches!(self, Self::Refused { status: 401, .. })
    }
}

/// A client of one server, with or without a session.
pub struct Api {
    base: Url,
    http: reqwest::Client,
    session: Option<SecretString>,
    /// Called with the session the server sealed anew during a rotation
    /// of its secret, to keep in place of the old one.
    on_renewed: Option<Box<dyn Fn(SecretString) + Send + Sync>>,
}

impl Api {
    /// A client of `server`.
    pub fn new(server: &Url, session: Option<SecretString>) -> Self {
        // Fails only when a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A new key waits on OpenAI, which the server gives up on after
            // its own `TIMEOUT`.
            .timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("openai-key-server-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self {
            base: server.clone(),
            http,
            session,
            on_renewed: None,
        }
    }

    /// Handing the session the server renews to `keep`.
    #[must_use]
    pub fn renewing(mut self, keep: impl Fn(SecretString) + Send + Sync + 'static) -> Self {
        self.on_renewed = Some(Box::new(keep));
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.base.as_str().trim_end_matches('/'))
    }

    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let bytes = self.send_raw(request).await?;
        serde_json::from_slice(&bytes.1).map_err(|_| ApiError::NotOurs {
            server: self.server(),
            status: bytes.0,
        })
    }

    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), ApiError> {
        let request = match &self.session {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        };
        let unreachable = |error: reqwest::Error| ApiError::Unreachable {
            server: self.server(),
            cause: describe(&error),
        };
        let response = request.send().await.map_err(unreachable)?;
        if let (Some(keep), Some(renewed)) = (
            &self.on_renewed,
            response
                .headers()
                .get(crate::api::RENEWED_SESSION)
                .and_then(|v| v.to_str().ok()),
        ) {
            keep(SecretString::from(renewed.to_owned()));
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Err(ApiError::Refused {
                status,
                code: error.code,
                message: error.message,
                request_id: error.request_id,
                interval: error.interval,
            }),
            Err(_) => Err(ApiError::NotOurs {
                server: self.server(),
                status,
            }),
        }
    }

    /// A new key, of `ttl_seconds` or the longest allowed.
    pub async fn create_key(&self, ttl_seconds: Option<u64>) -> Result<NewKey, ApiError> {
        let body = NewKeyRequest { ttl_seconds };
        self.send(self.http.post(self.url("/keys")).json(&body))
            .await
    }

    /// My live keys.
    pub async fn list_keys(&self) -> Result<KeyList, ApiError> {
        self.send(self.http.get(self.url("/keys"))).await
    }

    /// Revokes one of my keys.
    pub async fn delete_key(&self, id: &str) -> Result<(), ApiError> {
        let mut url = Url::parse(&self.url("/keys/")).map_err(|_| ApiError::NotOurs {
            server: self.server(),
            status: 0,
        })?;
        url.path_segments_mut()
            .map_err(|()| ApiError::NotOurs {
                server: self.server(),
                status: 0,
            })?
            .pop_if_empty()
            .push(id);
        self.send_raw(self.http.delete(url)).await.map(drop)
    }

    /// Who I am.
    pub async fn me(&self) -> Result<Me, ApiError> {
        self.send(self.http.get(self.url("/me"))).await
    }

    /// A loopback sign-in's code and verifier, for a session.
    pub async fn redeem(&self, code: &str, verifier: &str) -> Result<CliSession, ApiError> {
        let body = TokenRequest {
            grant_type: GRANT_CODE.to_owned(),
            code: Some(code.to_owned()),
            code_verifier: Some(verifier.to_owned()),
            device_code: None,
        };
        self.send(self.http.post(self.url("/cli/token")).json(&body))
            .await
    }

    /// Begins a device sign-in.
    pub async fn start_device(&self) -> Result<DeviceAuthorization, ApiError> {
        self.send(self.http.post(self.url("/cli/device"))).await
    }

    /// Polls a device sign-in.
    pub async fn poll_device(&self, device_code: &SecretString) -> Result<CliSession, ApiError> {
        let body = TokenRequest {
            grant_type: GRANT_DEVICE.to_owned(),
            code: None,
            code_verifier: None,
            device_code: Some(device_code.clone()),
        };
        self.send(self.http.post(self.url("/cli/token")).json(&body))
            .await
    }
}

/// A transport error in a few words, its causes included (reqwest's own
/// message is only "error sending request").
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "it did not answer in time".to_owned();
    }
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    let mut last = String::new();
    while let Some(cause) = source {
        let this = cause.to_string();
        if !last.contains(&this) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&this);
        }
        last = this;
        source = cause.source();
    }
    // No URL query ever carries a secret here, but keep the line short.
    text.chars().take(300).collect()
}
