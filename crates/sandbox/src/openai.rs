//! Fake OpenAI Admin API (STUB: to be replaced by the real implementation).

use crate::clock::Clock;

/// Settings of the fake OpenAI Admin API.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// The fake OpenAI Admin API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeOpenAi {}

impl FakeOpenAi {
    /// Builds the fake's state.
    pub fn new(_config: Config, _clock: Clock) -> Self {
        Self {}
    }
    /// Routes under `/v1` and `/_sandbox`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
    /// The admin key this fake accepts.
    pub fn admin_key(&self) -> String {
        String::new()
    }
}
