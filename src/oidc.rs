//! OpenID Connect relying party: discovery, the authorization-code flow with
//! PKCE, and ID-token verification against a cached JWKS. Any issuer that
//! publishes a discovery document works; Google is the default.

mod jwks;
mod verify;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use url::Url;

use crate::identity::Identity;
use crate::{timing, upstream};

pub use jwks::{Jwks, Key, REFETCH_FLOOR, parse_key_set};
pub use verify::{Expectations, SKEW, header, verify_with_key};
pub use workload::{VerifiedWorkload, WorkloadIssuers};

/// What can go wrong signing someone in. Variants are what the web layer
/// tells apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The provider's discovery document or JWKS could not be had.
    #[error("the sign-in provider could not be reached: {0}")]
    Unreachable(String),
    /// The token endpoint refused the code (used, expired, wrong verifier).
    #[error("the sign-in provider refused the code: {error} ({description})")]
    CodeRefused {
        /// OAuth error code, e.g. `invalid_grant`.
        error: String,
        /// The provider's description.
        description: String,
    },
    /// The token endpoint refused the client itself (wrong secret).
    #[error("the sign-in provider refused this server's client credentials: {0}")]
    ClientRefused(String),
    /// The ID token failed verification; the reason is for the log only.
    #[error("the ID token was rejected: {0}")]
    InvalidToken(String),
}

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    /// The issuer as the provider states it.
    pub issuer: String,
    /// Where the browser is sent to sign in.
    pub authorization_endpoint: Url,
    /// Where codes are exchanged.
    pub token_endpoint: Url,
    /// The signing keys.
    pub jwks_uri: Url,
    /// How the client may authenticate at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// The per-login secrets: kept in the encrypted login cookie, checked at the
/// callback.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
pub struct LoginSecrets {
    /// Anti-CSRF value echoed by the provider.
    pub state: String,
    /// Bound into the ID token.
    pub nonce: String,
    /// PKCE verifier; its S256 challenge goes in the authorization URL.
    pub verifier: String,
}

impl LoginSecrets {
    /// Fresh random values (256 bits each).
    pub fn generate() -> Self {
        let random = || URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        Self {
            state: random(),
            nonce: random(),
            verifier: random(),
        }
    }

    /// The PKCE S256 challenge for the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

/// Settings of the relying party.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The issuer URL (discovery is under it).
    pub issuer: Url,
    /// Accepted `iss` values.
    pub accepted_issuers: Vec<String>,
    /// OAuth client id (the expected `aud`).
    pub client_id: String,
    /// OAuth client secret (read anew for each exchange, so that it rotates).
    pub client_secret: crate::secrets::Rotating,
    /// The registered redirect URI, exactly as configured: providers compare
    /// it character for character, so it is never re-serialised.
    pub redirect_uri: String,
    /// The issuer's name in the policy (`google` for the environment's).
    pub name: String,
    /// The ID token claim that lists the person's groups, if any.
    pub groups_claim: Option<String>,
    /// The ID token claim that names the organisation's domain of a
    /// managed account (Google's `hd` when `None`).
    pub domain_claim: Option<String>,
    /// Where its key fetches are counted.
    pub metrics: crate::metrics::Metrics,
}

/// Every issuer people sign in through: the environment's first, then the
/// policy file's. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Providers(Arc<[Provider]>);

impl Providers {
    /// The environment's provider, then `others`.
    pub fn new(env: Provider, others: Vec<Provider>) -> Self {
        Self(std::iter::once(env).chain(others).collect())
    }

    /// The provider named `name` in the policy.
    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.0.iter().find(|p| p.name() == name)
    }

    /// Every provider, the environment's first.
    pub fn all(&self) -> &[Provider] {
        &self.0
    }
}

/// The relying party: discovery and keys are fetched once and cached.
#[derive(Clone, Debug)]
pub struct Provider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    settings: Settings,
    metadata: OnceCell<Metadata>,
    jwks: Jwks,
    reached: AtomicBool,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<SecretString>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A read error for a message: a transport error without its URL.
pub(crate) fn without_url(error: upstream::ReadError) -> String {
    match error {
        upstream::ReadError::Transport(e) => e.without_url().to_string(),
        too_large @ upstream::ReadError::TooLarge { .. } => too_large.to_string(),
    }
}

impl Provider {
    /// A relying party; nothing is fetched until first use.
    pub fn new(http: reqwest::Client, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                jwks: Jwks::new(http.clone(), settings.metrics.clone()),
                http,
                settings,
                metadata: OnceCell::new(),
                reached: AtomicBool::new(false),
            }),
        }
    }

    /// The issuer's name in the policy.
    pub fn name(&self) -> &str {
        &self.inner.settings.name
    }

    /// True once the discovery document was fetched.
    pub fn was_reached(&self) -> bool {
        self.inner.reached.load(Ordering::Relaxed)
    }

    /// The discovery document, fetched on first use and kept for the life of
    /// the process (a failure is retried on the next use).
    pub async fn metadata(&self) -> Result<&Metadata, Error> {
        self.inner
            .metadata
            .get_or_try_init(|| async {
                let fetched = self.fetch_metadata().await;
                // The provider's state as the operator sees it
                // (`oks_upstream_up`, `/readyz`), from every call to it.
                self.inner
                    .settings
                    .metrics
                    .upstream("identity_provider", fetched.is_ok());
                fetched
            })
            .await
    }

    async fn fetch_metadata(&self) -> Result<Metadata, Error> {
        let issuer = self.inner.settings.issuer.as_str().trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let response = timing::upstream(self.inner.http.get(&url).send())
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::Unreachable(format!("discovery: {}", e.without_url())))?;
        let body = timing::upstream(upstream::read_capped(response, upstream::OIDC_MAX_BYTES))
            .await
            .map_err(|e| Error::Unreachable(format!("discovery document: {}", without_url(e))))?;
        let metadata: Metadata = serde_json::from_slice(&body)
            .map_err(|e| Error::Unreachable(format!("discovery document: {e}")))?;
        if metadata.issuer.trim_end_matches('/') != issuer {
            return Err(Error::Unreachable(format!(
                "discovery names the issuer {:?}, not the configured {issuer:?}",
                metadata.issuer
            )));
        }
        // The client secret goes to the token endpoint, and every
        // identity rests on the keys: neither over plain http to
        // another machine, whatever the document says.
        for (what, endpoint) in [
            ("token endpoint", &metadata.token_endpoint),
            ("signing keys", &metadata.jwks_uri),
            ("authorization endpoint", &metadata.authorization_endpoint),
        ] {
            if !upstream::is_safe_endpoint(endpoint, &self.inner.settings.issuer) {
                return Err(Error::Unreachable(format!(
                    "the discovery document names a {what} that is not https ({}); refusing to use it",
                    endpoint.origin().ascii_serialization()
                )));
            }
        }
        self.inner.reached.store(true, Ordering::Relaxed);
        Ok(metadata)
    }

    /// The URL to send the browser to, for these login secrets; with
    /// `choose_account`, the provider asks which account to use
    /// (`prompt=select_account`) instead of signing the last one in.
    pub async fn authorization_url(
        &self,
        secrets: &LoginSecrets,
        choose_account: bool,
    ) -> Result<Url, Error> {
        let metadata = self.metadata().await?;
        let mut url = metadata.authorization_endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.inner.settings.client_id)
                .append_pair("redirect_uri", &self.inner.settings.redirect_uri)
                .append_pair("scope", "openid email")
                .append_pair("state", &secrets.state)
                .append_pair("nonce", &secrets.nonce)
                .append_pair("code_challenge", &secrets.challenge())
                .append_pair("code_challenge_method", "S256");
            if choose_account {
                query.append_pair("prompt", "select_account");
            }
        }
        Ok(url)
    }

    /// Exchanges a code for an ID token and verifies it: the whole callback.
    pub async fn sign_in(
        &self,
        code: &str,
        secrets: &LoginSecrets,
        now: SystemTime,
    ) -> Result<Identity, Error> {
        let id_token = self.exchange(code, &secrets.verifier).await?;
        self.verify(id_token.expose_secret(), &secrets.nonce, now)
            .await
    }

    async fn exchange(&self, code: &str, verifier: &str) -> Result<SecretString, Error> {
        let metadata = self.metadata().await?;
        let settings = &self.inner.settings;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", settings.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let post = metadata
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == "client_secret_post");
        let mut request = self.inner.http.post(metadata.token_endpoint.clone());
        let client_secret = settings.client_secret.current();
        if post {
            form.push(("client_id", &settings.client_id));
            form.push(("client_secret", client_secret.expose_secret()));
        } else {
            // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic.
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(
                encode(&settings.client_id),
                Some(encode(client_secret.expose_secret())),
            );
        }
        let metrics = &self.inner.settings.metrics;
        let response = timing::upstream(request.form(&form).send())
            .await
            .map_err(|e| {
                metrics.upstream("identity_provider", false);
                Error::Unreachable(format!("token endpoint: {}", e.without_url()))
            })?;
        let status = response.status();
        metrics.upstream("identity_provider", !status.is_server_error());
        let bytes = timing::upstream(upstream::read_capped(response, upstream::OIDC_MAX_BYTES))
            .await
            .map_err(|e| Error::Unreachable(format!("token endpoint: {}", without_url(e))))?;
        if status.is_success() {
            let body: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Unreachable(format!("token response: {e}")))?;
            return body
                .id_token
                .ok_or_else(|| Error::InvalidToken("the token response had no id_token".into()));
        }
        if status.is_server_error() {
            // An outage, whatever the body says: not the person's code.
            return Err(Error::Unreachable(format!(
                "token endpoint answered {status}"
            )));
        }
        match serde_json::from_slice::<TokenError>(&bytes) {
            Ok(e) if e.error == "invalid_client" || e.error == "unauthorized_client" => Err(
                Error::ClientRefused(format!("{}: {}", e.error, e.error_description)),
            ),
            Ok(e) => Err(Error::CodeRefused {
                error: e.error,
                description: e.error_description,
            }),
            Err(_) => Err(Error::Unreachable(format!(
                "token endpoint answered {status}"
            ))),
        }
    }

    /// Verifies an ID token: signature by a published key (RS256 or ES256
    /// only), issuer, audience, authorised party, lifetime with a small skew,
    /// and the login's nonce.
    pub async fn verify(
        &self,
        id_token: &str,
        nonce: &str,
        now: SystemTime,
    ) -> Result<Identity, Error> {
        let metadata = self.metadata().await?;
        // The discovery document's issuer exactly as written (a trailing
        // slash included), plus the configured forms.
        let mut issuers = self.inner.settings.accepted_issuers.clone();
        if !issuers.contains(&metadata.issuer) {
            issuers.push(metadata.issuer.clone());
        }
        verify::verify(
            id_token,
            &verify::Expectations {
                accepted_issuers: &issuers,
                client_id: &self.inner.settings.client_id,
                nonce,
                issuer_name: &self.inner.settings.name,
                groups_claim: self.inner.settings.groups_claim.as_deref(),
                domain_claim: self.inner.settings.domain_claim.as_deref(),
            },
            &self.inner.jwks,
            &metadata.jwks_uri,
            now,
        )
        .await
    }
}
