//! ID-token verification, every check in one place. The caller supplies
//! `now`, so that tests move a clock instead of sleeping.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use url::Url;

use super::jwks::{Algorithm, Key};
use super::{Error, Jwks};
use crate::clock::unix_seconds;
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
    /// The issuer's name in the policy, which the identity carries.
    pub issuer_name: &'a str,
    /// The claim that lists the person's groups, if the issuer has one.
    pub groups_claim: Option<&'a str>,
    /// The claim that names the organisation's domain of a managed account
    /// (Google's `hd` when `None`).
    pub domain_claim: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the token says we must understand: we understand none.
    #[serde(default)]
    crit: Option<serde_json::Value>,
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
    iss: String,
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
    /// Every other claim, for the issuer's groups claim.
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A groups claim's values: an array of strings (Okta, Entra ID,
/// Keycloak), or one string. Anything else counts as no group.
fn groups_of(claim: Option<&serde_json::Value>) -> Vec<String> {
    match claim {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
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
    let (alg, kid) = header(token)?;
    let key = jwks.key(jwks_uri, &kid, now).await?;
    check(token, alg, &kid, &key, expect, now)
}

/// Splits a compact JWS into its three base64url parts.
fn parts(token: &str) -> Result<(&str, &str, &str), Error> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(reject("the token is not three dot-separated parts")),
    }
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| reject(format!("the token's {what} is not base64url: {e}")))
}

/// Reads the token's header: the algorithm (RS256 or ES256 only; `none`,
/// HMAC and everything else are refused) and the key id.
pub fn header(token: &str) -> Result<(Algorithm, String), Error> {
    let (header, _, _) = parts(token)?;
    let header: Header = serde_json::from_slice(&decode_part(header, "header")?)
        .map_err(|e| reject(format!("unreadable token header: {e}")))?;
    let alg = Algorithm::from_jose(&header.alg).ok_or_else(|| {
        reject(format!(
            "the token is signed with {:?}; only RS256 and ES256 are accepted",
            header.alg
        ))
    })?;
    if header.crit.is_some() {
        return Err(reject("the token has critical header extensions"));
    }
    let kid = header
        .kid
        .ok_or_else(|| reject("the token header names no key (kid)"))?;
    Ok((alg, kid))
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
    check(token, alg, &kid, key, expect, now)
}

/// The token's payload, once its signature verifies with `key` under the
/// algorithm its header names (which must be the key's).
pub(super) fn signed_payload(
    token: &str,
    alg: Algorithm,
    kid: &str,
    key: &Key,
) -> Result<Vec<u8>, Error> {
    if key.algorithm != alg {
        return Err(reject(format!(
            "the token says {alg:?} but key {kid:?} is for {:?}",
            key.algorithm
        )));
    }
    let (header, payload, signature) = parts(token)?;
    let signature = decode_part(signature, "signature")?;
    let signed = &token[..header.len() + 1 + payload.len()];
    if !key.verifies(signed.as_bytes(), &signature) {
        return Err(reject(format!(
            "the signature does not verify with key {kid:?}"
        )));
    }
    decode_part(payload, "payload")
}

/// The payload of a token whose signature is not checked: only to pick the
/// issuer whose keys will check it.
pub(super) fn unverified_payload(token: &str) -> Result<Vec<u8>, Error> {
    let (_, payload, _) = parts(token)?;
    decode_part(payload, "payload")
}

/// The checks after the header was read (and the key found by its `kid`).
fn check(
    token: &str,
    alg: Algorithm,
    kid: &str,
    key: &Key,
    expect: &Expectations<'_>,
    now: SystemTime,
) -> Result<Identity, Error> {
    let claims: Claims = serde_json::from_slice(&signed_payload(token, alg, kid, key)?)
        .map_err(|e| reject(format!("unreadable or incomplete claims: {e}")))?;
    if !expect.accepted_issuers.contains(&claims.iss) {
        return Err(reject(format!(
            "the token's issuer {:?} is not accepted",
            claims.iss
        )));
    }

    let now = unix_seconds(now);
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
    let audience_ok = match &claims.aud {
        Audience::One(aud) => aud == expect.client_id,
        Audience::Many(list) => !list.is_empty() && list.iter().all(|a| a == expect.client_id),
    };
    if !audience_ok {
        return Err(reject("the token is not (only) meant for this server"));
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
        hosted_domain: match expect.domain_claim {
            None | Some("hd") => claims.hd,
            Some(name) => claims
                .extra
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        },
        issuer: expect.issuer_name.to_owned(),
        groups: match expect.groups_claim {
            Some(name) => groups_of(claims.extra.get(name)),
            None => Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::oidc::parse_key_set;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES256 key pair and its JWKS (the sandbox only speaks RS256).
    fn es256() -> (EcdsaKeyPair, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "ec1",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        (pair, serde_json::to_vec(&jwks).unwrap())
    }

    fn sign(pair: &EcdsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(&serde_json::to_vec(header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        );
        let signature = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(signature.as_ref()))
    }

    #[test]
    fn es256_tokens_verify_and_every_claim_is_checked() {
        let (pair, jwks) = es256();
        let keys = parse_key_set(&jwks).unwrap();
        let key = &keys["ec1"];
        let issuers = ["https://issuer.test".to_owned()];
        let expect = Expectations {
            issuer_name: "google",
            groups_claim: Some("groups"),
            domain_claim: None,
            accepted_issuers: &issuers,
            client_id: "client",
            nonce: "n",
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let header = json!({"alg": "ES256", "kid": "ec1"});
        let claims = json!({
            "iss": "https://issuer.test", "aud": "client", "sub": "1",
            "iat": 1_000_000, "exp": 1_003_600, "nonce": "n",
            "email": "a@example.com", "email_verified": true,
        });
        let identity = verify_with_key(&sign(&pair, &header, &claims), key, &expect, now).unwrap();
        assert_eq!(identity.email.unwrap().as_str(), "a@example.com");

        // Another provider's claim for the organisation's domain.
        let mut with_domain = claims.clone();
        with_domain["org_domain"] = json!("corp.test");
        with_domain["hd"] = json!("ignored.test");
        let elsewhere = Expectations {
            domain_claim: Some("org_domain"),
            ..expect
        };
        let identity =
            verify_with_key(&sign(&pair, &header, &with_domain), key, &elsewhere, now).unwrap();
        assert_eq!(identity.hosted_domain.as_deref(), Some("corp.test"));

        for (field, value) in [
            ("iss", json!("https://other.test")),
            ("aud", json!(["client", "other"])),
            ("nonce", json!("m")),
            ("exp", json!(999_000)),
            ("iat", json!(1_000_500)),
            ("azp", json!("other")),
        ] {
            let mut bad = claims.clone();
            bad[field] = value;
            assert!(
                verify_with_key(&sign(&pair, &header, &bad), key, &expect, now).is_err(),
                "{field} was not checked"
            );
        }
        // The RS256 name on an EC key, and a critical extension, are refused.
        let token = sign(&pair, &json!({"alg": "RS256", "kid": "ec1"}), &claims);
        assert!(verify_with_key(&token, key, &expect, now).is_err());
        let token = sign(
            &pair,
            &json!({"alg": "ES256", "kid": "ec1", "crit": ["x"]}),
            &claims,
        );
        assert!(verify_with_key(&token, key, &expect, now).is_err());
    }
}
