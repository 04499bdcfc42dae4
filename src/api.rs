//! The JSON API's wire types (`/api/v1`): what the server's handlers answer
//! and the CLI's client reads, and nothing else of either side. Keys,
//! device codes and sessions are [`SecretString`]s on both sides, written
//! out only when serialised onto the wire.

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

/// Where the API lives.
pub const PREFIX: &str = "/api/v1";

/// The header that hands a CLI its session sealed anew during a rotation
/// of `SESSION_SECRET` (while `SESSION_SECRET_PREVIOUS` is set); the CLI
/// keeps it in place of the one it sent.
pub const RENEWED_SESSION: &str = "oks-renewed-session";

/// The `grant_type` of a loopback sign-in's code.
pub const GRANT_CODE: &str = "authorization_code";
/// The `grant_type` of a device sign-in (RFC 8628).
pub const GRANT_DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2): what the CLI
/// sends first, and the server checks the verifier against at the end.
pub fn challenge_of(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// `POST /api/v1/keys`: what a caller may ask for. The body is optional.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Lifetime of the key in seconds; at most the caller's maximum
    /// (`max_ttl_seconds` of `/api/v1/me`). Omitted: that maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
}

/// A key just made. Its value is in this answer and nowhere else.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewKey {
    /// The key's id on this server (its service account), for `DELETE
    /// /api/v1/keys/{id}`.
    pub id: String,
    /// The key itself (`sk-…`): shown once, never stored by the server.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub key: SecretString,
    /// OpenAI's id of the key (`key_…`).
    pub key_id: String,
    /// When OpenAI stops accepting it, in Unix seconds.
    pub expires_at: i64,
    /// The OpenAI project it belongs to.
    pub project_id: String,
    /// Whose key it is.
    pub owner: String,
}

/// One live key, without its value.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyItem {
    /// The key's id on this server (its service account).
    pub id: String,
    /// OpenAI's id of the key, once known.
    pub key_id: Option<String>,
    /// Whose key it is.
    pub owner: String,
    /// When it was made, in Unix seconds, once known.
    pub created_at: Option<i64>,
    /// When it expires, in Unix seconds.
    pub expires_at: i64,
    /// When OpenAI last saw it used, in Unix seconds.
    pub last_used_at: Option<i64>,
    /// The OpenAI project it is in (absent from servers before policies).
    #[serde(default)]
    pub project_id: String,
    /// What it used today (UTC), as OpenAI's Usage API last said; absent
    /// when the server does not read usage, or the key's id is not known
    /// yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Tokens>,
}

/// Tokens used, and the model requests that used them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Tokens {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Model requests.
    pub requests: u64,
}

/// The caller's usage today (UTC) against their budget.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageToday {
    /// What every key of theirs used today.
    #[serde(flatten)]
    pub tokens: Tokens,
    /// Their budget, in tokens (input and output) a day; absent: none.
    pub tokens_per_day: Option<u64>,
    /// Dollars this calendar month (UTC), estimated from the server's
    /// prices; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_this_month: Option<f64>,
    /// Dollars this month as OpenAI's Costs API says (daily, late), where
    /// it answers per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_this_month_billed: Option<f64>,
    /// Their budget in dollars a month; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_month: Option<f64>,
    /// Whether it is spent: new keys are refused until `resets_at`.
    pub over_budget: bool,
    /// When the day ends and the budget is whole again (Unix seconds).
    pub resets_at: i64,
    /// When the server last read usage from OpenAI (Unix seconds); usage
    /// after that is not counted yet.
    pub read_at: Option<i64>,
}

/// `GET /api/v1/keys`: the caller's live keys, soonest expiry first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// The keys.
    pub keys: Vec<KeyItem>,
    /// What they used today, against their budget; absent when the server
    /// does not read usage (`USAGE_POLL_INTERVAL=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_today: Option<UsageToday>,
    /// False when OpenAI could not be asked in time: then the list is what
    /// this server knew, and may miss keys made elsewhere moments ago.
    pub fresh: bool,
}

/// `GET /api/v1/me`: who the caller is and what they may get.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The verified address keys are issued to.
    pub email: String,
    /// Whether they may see and revoke everyone's keys.
    pub admin: bool,
    /// The longest lifetime a key of theirs may have, in seconds.
    pub max_ttl_seconds: u64,
    /// The most live keys they may hold at once (0: no limit).
    pub max_keys: usize,
    /// When the session of this call ends, in Unix seconds.
    pub session_expires_at: i64,
}

/// `POST /api/v1/cli/token`: a CLI's sign-in, finished. One of two forms:
/// `authorization_code` with `code` and `code_verifier` (the loopback
/// sign-in), or the device grant with `device_code` (polled).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `authorization_code` or
    /// `urn:ietf:params:oauth:grant-type:device_code`.
    pub grant_type: String,
    /// The one-time code the loopback redirect carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The PKCE verifier whose S256 challenge started the sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_verifier: Option<String>,
    /// The device code of `POST /api/v1/cli/device`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_some"
    )]
    #[schema(value_type = Option<String>)]
    pub device_code: Option<SecretString>,
}

fn expose_some<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_str(secret.expose_secret()),
        None => serializer.serialize_none(),
    }
}

/// A CLI session: what `Authorization: Bearer` carries on every other call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CliSession {
    /// The session token.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub access_token: SecretString,
    /// Always `Bearer`.
    pub token_type: String,
    /// When it ends, in Unix seconds.
    pub expires_at: i64,
    /// Whom it signs in.
    pub email: String,
}

/// `POST /api/v1/cli/device`: a device sign-in begun (RFC 8628's shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceAuthorization {
    /// What the CLI polls `POST /api/v1/cli/token` with. Secret.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub device_code: SecretString,
    /// What the person types on the verification page (`XXXX-XXXX`).
    pub user_code: String,
    /// The page where the person confirms the code.
    pub verification_uri: String,
    /// The same page with the code filled in.
    pub verification_uri_complete: String,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
}

/// Every error of the API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `unauthorized`, `session_expired`,
    /// `refused`, `not_found`, `ttl_too_long`, `cap_reached`,
    /// `rate_limited`, `authorization_pending`, `slow_down`,
    /// `expired_token`, `access_denied`, `invalid_grant`, …
    pub code: String,
    /// What happened and what to do, in a sentence or two.
    pub message: String,
    /// The id of the request in the server's log.
    pub request_id: String,
    /// With `slow_down`: the interval to poll at from now on, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
}
