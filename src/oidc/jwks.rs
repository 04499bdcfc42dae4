//! The provider's signing keys, cached as its `Cache-Control` allows and
//! re-fetched early (at most once per [`REFETCH_FLOOR`]) when a token names
//! a key we do not have, as happens right after the provider rotates keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use url::Url;

use super::Error;
use crate::{timing, upstream};

/// The least time between two fetches caused by unknown `kid`s, so that a
/// stream of forged tokens cannot make us hammer the provider.
pub const REFETCH_FLOOR: Duration = Duration::from_secs(30);
/// Cache lifetime when the provider sends no usable `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Bounds on the cache lifetime the provider may ask for.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long stale keys are still used when the provider cannot be reached.
const STALE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The signature algorithms we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google's).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Algorithm {
    /// The JOSE name, as in a token header.
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
}

/// One usable verification key, decoded once when the key set is fetched.
/// Signatures are checked with `ring` (already linked for TLS): several times
/// faster than a pure-Rust RSA, and RSA verification is most of a sign-in's
/// CPU.
#[derive(Clone, Debug)]
pub struct Key {
    pub(crate) algorithm: Algorithm,
    public: Public,
}

#[derive(Clone, Debug)]
enum Public {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point: `0x04 ‖ x ‖ y`.
    Ec(Vec<u8>),
}

impl Key {
    /// Whether `signature` over `message` is valid under this key.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.public {
            Public::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Public::Ec(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// A JWK as published; every field optional, checked in [`usable_key`].
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document into the keys we would use, by `kid`; unusable
/// keys (no `kid`, not for signatures, another algorithm) are skipped.
pub fn parse_key_set(json: &[u8]) -> Result<HashMap<String, Key>, Error> {
    let set: KeySet = serde_json::from_slice(json)
        .map_err(|e| Error::Unreachable(format!("signing keys: {e}")))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(usable_key)
        .collect())
}

#[derive(Default)]
struct Cache {
    keys: Arc<HashMap<String, Key>>,
    fresh_until: Option<SystemTime>,
    last_fetch: Option<SystemTime>,
}

/// The key cache. Cheap to clone.
#[derive(Clone)]
pub struct Jwks {
    http: reqwest::Client,
    metrics: crate::metrics::Metrics,
    cache: Arc<Mutex<Cache>>,
    /// Serialises fetches so that a cold cache under load fetches once.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

enum Lookup {
    Found(Key),
    Missing { may_fetch: bool },
}

impl Jwks {
    pub(crate) fn new(http: reqwest::Client, metrics: crate::metrics::Metrics) -> Self {
        Self {
            http,
            metrics,
            cache: Arc::default(),
            fetching: Arc::default(),
        }
    }

    fn lookup(&self, kid: &str, now: SystemTime) -> Lookup {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = cache.fresh_until.is_some_and(|t| now < t);
        let stale_ok = cache.fresh_until.is_some_and(|t| now < t + STALE_GRACE);
        // Any fetch, successful or not, starts the floor period: neither an
        // unknown kid nor a provider outage may turn every token into a
        // request to the provider.
        let floor_passed = cache
            .last_fetch
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= REFETCH_FLOOR);
        match cache.keys.get(kid) {
            Some(key) if fresh => Lookup::Found(key.clone()),
            Some(key) if !floor_passed && stale_ok => Lookup::Found(key.clone()),
            _ => Lookup::Missing {
                may_fetch: floor_passed,
            },
        }
    }

    /// The key named `kid`, fetching the set when the cache is stale or the
    /// key is unknown (at most once per floor period).
    pub(crate) async fn key(&self, uri: &Url, kid: &str, now: SystemTime) -> Result<Key, Error> {
        match self.lookup(kid, now) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Missing { may_fetch: false } => {
                return Err(Error::InvalidToken(format!(
                    "the token names key {kid:?}, which the provider does not publish"
                )));
            }
            Lookup::Missing { may_fetch: true } => {}
        }
        let _guard = self.fetching.lock().await;
        // Another request may have fetched while we waited.
        if let Lookup::Found(key) = self.lookup(kid, now) {
            return Ok(key);
        }
        if let Lookup::Missing { may_fetch: false } = self.lookup(kid, now) {
            return Err(Error::InvalidToken(format!(
                "the token names key {kid:?}, which the provider does not publish"
            )));
        }
        match self.fetch(uri).await {
            Ok((keys, max_age)) => {
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                tracing::debug!(
                    jwks.keys = keys.len(),
                    max_age_s = max_age.as_secs(),
                    "fetched the provider's signing keys"
                );
                cache.keys = Arc::new(keys);
                cache.fresh_until = Some(now + max_age);
                cache.last_fetch = Some(now);
            }
            Err(error) => {
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                cache.last_fetch = Some(now);
                let stale_ok = cache.fresh_until.is_some_and(|t| now < t + STALE_GRACE);
                if stale_ok && let Some(key) = cache.keys.get(kid) {
                    tracing::warn!(%error, "could not refresh the provider's signing keys; using the cached set");
                    return Ok(key.clone());
                }
                return Err(error);
            }
        }
        match self.lookup(kid, now) {
            Lookup::Found(key) => Ok(key),
            Lookup::Missing { .. } => Err(Error::InvalidToken(format!(
                "the token names key {kid:?}, which the provider does not publish"
            ))),
        }
    }

    async fn fetch(&self, uri: &Url) -> Result<(HashMap<String, Key>, Duration), Error> {
        let fetched = self.fetch_once(uri).await;
        self.metrics.jwks_refresh(fetched.is_ok());
        fetched
    }

    async fn fetch_once(&self, uri: &Url) -> Result<(HashMap<String, Key>, Duration), Error> {
        let response = timing::upstream(self.http.get(uri.clone()).send())
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::Unreachable(format!("signing keys: {}", e.without_url())))?;
        let max_age = cache_lifetime(response.headers());
        let body = timing::upstream(upstream::read_capped(response, upstream::OIDC_MAX_BYTES))
            .await
            .map_err(|e| Error::Unreachable(format!("signing keys: {}", super::without_url(e))))?;
        Ok((parse_key_set(&body)?, max_age))
    }
}

/// Turns a JWK into a verification key, or `None` for keys we must not use:
/// no `kid`, not for signatures, or an algorithm other than RS256/ES256.
fn usable_key(jwk: Jwk) -> Option<(String, Key)> {
    let kid = jwk.kid?;
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let decode = |field: Option<String>| URL_SAFE_NO_PAD.decode(field?).ok();
    let (algorithm, public) = match (jwk.kty.as_deref()?, jwk.alg.as_deref()) {
        ("RSA", None | Some("RS256")) => {
            let n = decode(jwk.n)?;
            let e = decode(jwk.e)?;
            (Algorithm::Rs256, Public::Rsa { n, e })
        }
        ("EC", None | Some("ES256")) if jwk.crv.as_deref() == Some("P-256") => {
            let x = decode(jwk.x)?;
            let y = decode(jwk.y)?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Algorithm::Es256, Public::Ec(point))
        }
        _ => return None,
    };
    Some((kid, Key { algorithm, public }))
}

/// `max-age` minus `Age`, bounded, from the JWKS response headers.
fn cache_lifetime(headers: &reqwest::header::HeaderMap) -> Duration {
    let max_age = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .filter_map(|d| d.trim().strip_prefix("max-age="))
                .find_map(|n| n.trim().parse::<u64>().ok())
        });
    let Some(max_age) = max_age else {
        return DEFAULT_MAX_AGE;
    };
    let age = headers
        .get(reqwest::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(max_age.saturating_sub(age)).clamp(MIN_MAX_AGE, MAX_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{AGE, CACHE_CONTROL, HeaderMap, HeaderValue};

    #[test]
    fn the_cache_lifetime_follows_max_age_minus_age_within_bounds() {
        let mut headers = HeaderMap::new();
        assert_eq!(cache_lifetime(&headers), DEFAULT_MAX_AGE);
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=21155, must-revalidate, no-transform"),
        );
        headers.insert(AGE, HeaderValue::from_static("155"));
        assert_eq!(cache_lifetime(&headers), Duration::from_secs(21_000));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert_eq!(cache_lifetime(&headers), MIN_MAX_AGE);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=999999"));
        headers.remove(AGE);
        assert_eq!(cache_lifetime(&headers), MAX_MAX_AGE);
    }
}
