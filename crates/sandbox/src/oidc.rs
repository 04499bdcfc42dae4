//! Fake Google-style OIDC provider (STUB: to be replaced).

use crate::clock::Clock;
use url::Url;

/// Settings of a fake OIDC provider.
#[derive(Debug, Clone, Default)]
pub struct Config {}

impl Config {
    /// Settings for a GitHub-Actions-style workload issuer.
    pub fn github_actions() -> Self {
        Self::default()
    }
}

/// A fake OIDC provider. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeOidc {
    origin: Url,
}

impl FakeOidc {
    /// Builds the provider; `origin` is where it is served.
    pub fn new(_config: Config, _clock: Clock, origin: Url) -> Self {
        Self { origin }
    }
    /// All routes.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
    /// The issuer URL.
    pub fn issuer(&self) -> String {
        self.origin.as_str().trim_end_matches('/').to_owned()
    }
    /// The OAuth client id.
    pub fn client_id(&self) -> String {
        String::new()
    }
    /// The OAuth client secret.
    pub fn client_secret(&self) -> String {
        String::new()
    }
}
