//! ID-token verification, every check in one place. The caller supplies
//! `now`, so that tests move a clock instead of sleeping.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use url::Url;

use super::jwks::Key;
use super::{Error, Jwks};
use crate::identity::{EmailAddress, Identity};

/// Clock difference tolerated between us and the provider.
pub const SKEW: Duration = Duration::from_secs(60);

/// What a token must say to be accepted.
#[derive(Clone, Copy, Debug)]
pub struct Expectations<'a> {
    /// Accepted `iss` values.
    pub accepted_issuers: &'a [String],
    /// Our client id: the only trusted audience.
    pub client_id: &'a str,
    /// The nonce of this sign-in.
    pub nonce: &'a str,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    Many(Vec<String>),
    One(
        #[expect(
            dead_code,
            reason = "only the shape matters; the library checks the value"
        )]
        String,
    ),
}

/// Google used to send `"true"` as a string; accept both forms.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    aud: Audience,
    #[serde(default)]
    azp: Option<String>,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Flag>,
    #[serde(default)]
    hd: Option<String>,
}

fn unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn reject(reason: impl Into<String>) -> Error {
    Error::InvalidToken(reason.into())
}

pub(super) async fn verify(
    token: &str,
    expect: &Expectations<'_>,
    jwks: &Jwks,
    jwks_uri: &Url,
    now: SystemTime,
) -> Result<Identity, Error> {
    let (_, kid) = header(token)?;
    let key = jwks.key(jwks_uri, &kid, now).await?;
    verify_with_key(token, &key, expect, now)
}

/// Reads the token's header: the algorithm (RS256 or ES256 only; `alg:
/// none` and unknown algorithms fail to parse) and the key id.
pub fn header(token: &str) -> Result<(Algorithm, String), Error> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| reject(format!("unreadable token header: {e}")))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(reject(format!(
            "the token is signed with {:?}; only RS256 and ES256 are accepted",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| reject("the token header names no key (kid)"))?;
    Ok((header.alg, kid))
}

/// Every check but the key lookup: signature by `key`, issuer, audience,
/// authorised party, lifetime against `now`, nonce. Synchronous and
/// network-free, so that it can be fuzzed.
pub fn verify_with_key(
    token: &str,
    key: &Key,
    expect: &Expectations<'_>,
    now: SystemTime,
) -> Result<Identity, Error> {
    let (alg, kid) = header(token)?;
    if key.algorithm != alg {
        return Err(reject(format!(
            "the token says {alg:?} but key {kid:?} is for {:?}",
            key.algorithm
        )));
    }

    let mut validation = Validation::new(key.algorithm);
    validation.set_issuer(expect.accepted_issuers);
    validation.set_audience(&[expect.client_id]);
    // Lifetime is checked below against our own clock, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims = HashSet::from(["iss", "aud", "exp", "sub"].map(String::from));
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|e| reject(format!("signature or claims: {e}")))?
        .claims;

    let now = unix(now);
    let skew = i64::try_from(SKEW.as_secs()).unwrap_or(60);
    if claims.exp <= now - skew {
        return Err(reject("the token has expired"));
    }
    if claims.iat > now + skew {
        return Err(reject("the token was issued in the future"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + skew) {
        return Err(reject("the token is not valid yet"));
    }
    // Every audience must be trusted, and we trust only ourselves.
    if matches!(&claims.aud, Audience::Many(list) if list.iter().any(|a| a != expect.client_id)) {
        return Err(reject("the token is also meant for another audience"));
    }
    if claims
        .azp
        .as_deref()
        .is_some_and(|azp| azp != expect.client_id)
    {
        return Err(reject("the token was issued to another party (azp)"));
    }
    if claims.nonce.as_deref() != Some(expect.nonce) {
        return Err(reject("the token's nonce does not match this sign-in"));
    }
    if claims.sub.is_empty() {
        return Err(reject("the token has an empty subject"));
    }

    let email_verified = match claims.email_verified {
        Some(Flag::Bool(b)) => b,
        Some(Flag::Text(t)) => t == "true",
        None => false,
    };
    Ok(Identity {
        subject: claims.sub,
        email: claims
            .email
            .as_deref()
            .and_then(|e| EmailAddress::parse(e).ok()),
        email_claim: claims.email,
        email_verified,
        hosted_domain: claims.hd,
    })
}
