//! CI jobs' tokens (GitHub Actions, GitLab CI `id_tokens`): an issuer of
//! the policy file with an audience instead of a client. Each token is
//! verified against its own issuer's published keys (signature, `iss`,
//! `aud`, `exp`, `nbf`, `iat` and a maximum age) and names its workload's
//! owner, `<issuer>:<id>`. Whether it may be used once is the caller's
//! business (see [`crate::issuance`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use tokio::sync::OnceCell;
use url::Url;

use super::jwks::Jwks;
use super::verify::{SKEW, header, signed_payload, unverified_payload};
use super::{Error, without_url};
use crate::access::{IssuerSpec, Workload, WorkloadSpec};
use crate::clock::unix_seconds;
use crate::{timing, upstream};

/// A verified workload token: who, and until when its `jti` must be
/// remembered.
#[derive(Clone, Debug)]
pub struct VerifiedWorkload {
    /// The job.
    pub workload: Workload,
    /// The token's id.
    pub jti: String,
    /// Its `exp` (Unix seconds).
    pub expires_at: i64,
}

/// The part of a discovery document a token check needs (GitHub's has no
/// authorization or token endpoint).
#[derive(Clone, Debug, Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: Url,
}

/// The issuers of CI jobs' tokens of the policy. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WorkloadIssuers {
    issuers: Arc<Vec<WorkloadIssuer>>,
}

#[derive(Debug)]
struct WorkloadIssuer {
    name: String,
    url: Url,
    spec: WorkloadSpec,
    http: reqwest::Client,
    metadata: OnceCell<Metadata>,
    jwks: Jwks,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Issuer {
    iss: String,
}

fn reject(reason: impl Into<String>) -> Error {
    Error::InvalidToken(reason.into())
}

impl WorkloadIssuers {
    /// The workload issuers among `issuers`; nothing is fetched until a
    /// token of one comes.
    pub fn new(
        http: &reqwest::Client,
        issuers: &[IssuerSpec],
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let issuers = issuers
            .iter()
            .filter_map(|issuer| {
                let spec = issuer.workload.clone()?;
                let url = Url::parse(&issuer.url).ok()?;
                Some(WorkloadIssuer {
                    name: issuer.name.clone(),
                    url,
                    spec,
                    http: http.clone(),
                    metadata: OnceCell::new(),
                    jwks: Jwks::new(http.clone(), metrics.clone()),
                })
            })
            .collect();
        Self {
            issuers: Arc::new(issuers),
        }
    }

    /// True when the policy names none.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies a CI job's token against the issuer its `iss` names (that
    /// claim is read unverified only to pick whose keys check the rest).
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedWorkload, Error> {
        let (alg, kid) = header(token)?;
        let Issuer { iss } = serde_json::from_slice(&unverified_payload(token)?)
            .map_err(|_| reject("the token names no issuer (iss)"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| same_issuer(i.url.as_str(), &iss))
            .ok_or_else(|| {
                reject(format!(
                    "the token's issuer {iss:?} is not one of the policy's workload issuers"
                ))
            })?;
        let metadata = issuer.metadata().await?;
        let key = issuer.jwks.key(&metadata.jwks_uri, &kid, now).await?;
        let claims: Claims = serde_json::from_slice(&signed_payload(token, alg, &kid, &key)?)
            .map_err(|e| reject(format!("unreadable or incomplete claims: {e}")))?;
        issuer.check(claims, &metadata.issuer, now)
    }
}

/// Issuer URLs compare without a trailing slash.
fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl WorkloadIssuer {
    /// The discovery document, fetched on first use and kept.
    async fn metadata(&self) -> Result<&Metadata, Error> {
        self.metadata
            .get_or_try_init(|| async {
                let issuer = self.url.as_str().trim_end_matches('/');
                let url = format!("{issuer}/.well-known/openid-configuration");
                let response = timing::upstream(self.http.get(&url).send())
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| {
                        Error::Unreachable(format!("{} discovery: {}", self.name, e.without_url()))
                    })?;
                let body = timing::upstream(upstream::read_capped(
                    response,
                    upstream::OIDC_MAX_BYTES,
                ))
                .await
                .map_err(|e| {
                    Error::Unreachable(format!("{} discovery document: {}", self.name, without_url(e)))
                })?;
                let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| {
                    Error::Unreachable(format!("{} discovery document: {e}", self.name))
                })?;
                if !same_issuer(&metadata.issuer, issuer) {
                    return Err(Error::Unreachable(format!(
                        "{} discovery names the issuer {:?}, not the configured {issuer:?}",
                        self.name, metadata.issuer
                    )));
                }
                if !upstream::is_safe_endpoint(&metadata.jwks_uri, &self.url) {
                    return Err(Error::Unreachable(format!(
                        "{} discovery names signing keys that are not https ({}); refusing to use them",
                        self.name,
                        metadata.jwks_uri.origin().ascii_serialization()
                    )));
                }
                Ok(metadata)
            })
            .await
    }

    /// Every check after the signature.
    fn check(
        &self,
        claims: Claims,
        stated_issuer: &str,
        now: SystemTime,
    ) -> Result<VerifiedWorkload, Error> {
        if !same_issuer(&claims.iss, stated_issuer) {
            return Err(reject(format!(
                "the token's issuer {:?} is not {stated_issuer:?}",
                claims.iss
            )));
        }
        let audience = &self.spec.audience;
        let audience_ok = match &claims.aud {
            Audience::One(aud) => aud == audience,
            Audience::Many(list) => !list.is_empty() && list.iter().all(|a| a == audience),
        };
        if !audience_ok {
            return Err(reject(format!(
                "the token is not (only) for audience {audience:?}: request it with that audience"
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
        let max_age = i64::try_from(self.spec.max_token_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(claims.iat) > max_age {
            return Err(reject(format!(
                "the token was issued {} s ago, more than the {} s the policy accepts (max_token_age): request a fresh one just before the call",
                now - claims.iat,
                max_age
            )));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| {
                reject("the token has no usable id (jti), so its replay could not be told")
            })?;

        let mut all = claims.rest;
        all.insert("iss".to_owned(), claims.iss.into());
        all.insert("jti".to_owned(), jti.clone().into());
        let owner = self.spec.owner_of(&self.name, &all).map_err(reject)?;
        Ok(VerifiedWorkload {
            workload: Workload {
                issuer: self.name.clone(),
                owner,
                claims: all,
            },
            jti,
            expires_at: claims.exp,
        })
    }
}
