//! Compact JWS encoding of ID tokens, honest or forged to order.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::keys::{KeyRing, Signer};

/// How a forged token is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signing {
    /// RS256 by the current published key, as usual.
    #[default]
    Normal,
    /// Header `alg: "none"`, no `kid`, empty signature (`header.payload.`).
    AlgNone,
    /// Header `alg: "HS256"` with the current kid, HMAC-SHA256 keyed with
    /// the current public key's SPKI PEM bytes (LF line endings, final
    /// newline): the RS256/HS256 key-confusion attack.
    Hs256WithPublicKey,
    /// A valid RS256 signature by a key that is not in the JWKS, under the
    /// current published kid.
    ForeignKey,
    /// RS256 by an unpublished key whose kid is not in the JWKS.
    UnknownKid,
}

/// A token built to order, for the next token the provider issues.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenOverride {
    /// Merged over the normal claims; a `null` value removes that claim.
    pub claims: Map<String, Value>,
    /// Merged over the header chosen by `signing`; `null` removes a field.
    pub header: Map<String, Value>,
    /// How the token is signed.
    pub signing: Signing,
    /// The signature covers the normal claims, but the payload shows the
    /// claims with `claims` merged in (when that changes nothing, the last
    /// digit of `sub` is changed), so the signature no longer matches.
    pub tamper_payload_after_signing: bool,
}

impl TokenOverride {
    /// An override that only merges `claims` (a JSON object) over the normal
    /// ones, signed normally.
    ///
    /// # Panics
    /// If `claims` is not a JSON object.
    pub fn claims(claims: Value) -> Self {
        let Value::Object(claims) = claims else {
            panic!("TokenOverride::claims takes a JSON object, not {claims}");
        };
        Self {
            claims,
            ..Self::default()
        }
    }

    /// An override that only changes how the token is signed.
    pub fn signing(signing: Signing) -> Self {
        Self {
            signing,
            ..Self::default()
        }
    }
}

/// Applies `over` to `base`: insert, or remove on `null`.
pub(super) fn merge(base: &mut Map<String, Value>, over: Map<String, Value>) {
    for (name, value) in over {
        if value.is_null() {
            base.remove(&name);
        } else {
            base.insert(name, value);
        }
    }
}

fn b64_json(value: &Map<String, Value>) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("a JSON map serializes"))
}

/// Encodes `claims` as a compact JWS signed per `forged`.
pub(super) fn encode(
    keys: &mut KeyRing,
    claims: Map<String, Value>,
    forged: TokenOverride,
) -> String {
    prepare(keys, claims, forged).sign()
}

/// How an [`Unsigned`] token gets its signature.
#[derive(Debug)]
enum Signature {
    /// RS256 with this key.
    Rs256(Signer),
    /// None at all (`alg: "none"`).
    Empty,
    /// HMAC-SHA256 keyed with these bytes.
    Hs256(Vec<u8>),
}

/// A token with everything taken from the key ring but not yet signed, so
/// that the slow RSA signature can be made after the provider's lock is
/// released (see [`prepare`]).
#[derive(Debug)]
pub(super) struct Unsigned {
    header: Map<String, Value>,
    /// The claims the payload shows.
    shown_claims: Map<String, Value>,
    /// The claims the signature covers, when the payload is tampered with
    /// after signing.
    signed_claims: Option<Map<String, Value>>,
    signature: Signature,
}

/// Everything [`encode`] needs from `keys` (the kid, a handle on the
/// signing key, and the outsider key leased on first use), without the
/// signing itself: finish with [`Unsigned::sign`].
pub(super) fn prepare(
    keys: &mut KeyRing,
    claims: Map<String, Value>,
    forged: TokenOverride,
) -> Unsigned {
    let TokenOverride {
        claims: claim_overrides,
        header: header_overrides,
        signing,
        tamper_payload_after_signing,
    } = forged;

    let signed_claims = claims;
    let mut shown_claims = signed_claims.clone();
    merge(&mut shown_claims, claim_overrides);
    if tamper_payload_after_signing && shown_claims == signed_claims {
        tweak_sub(&mut shown_claims);
    }

    let current_kid = keys.current_kid().to_owned();
    let mut header = match signing {
        Signing::Normal | Signing::ForeignKey => rs256_header(&current_kid),
        Signing::AlgNone => header_object(json!({"alg": "none", "typ": "JWT"})),
        Signing::Hs256WithPublicKey => {
            header_object(json!({"alg": "HS256", "kid": current_kid, "typ": "JWT"}))
        }
        Signing::UnknownKid => rs256_header(keys.outsider().kid()),
    };
    merge(&mut header, header_overrides);

    let signature = match signing {
        Signing::Normal => Signature::Rs256(keys.current().signer()),
        Signing::AlgNone => Signature::Empty,
        Signing::Hs256WithPublicKey => {
            Signature::Hs256(keys.current().public_pem().as_bytes().to_vec())
        }
        Signing::ForeignKey | Signing::UnknownKid => Signature::Rs256(keys.outsider().signer()),
    };
    Unsigned {
        header,
        shown_claims,
        signed_claims: tamper_payload_after_signing.then_some(signed_claims),
        signature,
    }
}

impl Unsigned {
    /// The compact JWS. Slow for RS256 (about 2 ms): call it without
    /// holding the provider's lock.
    pub(super) fn sign(self) -> String {
        let header = b64_json(&self.header);
        let shown = b64_json(&self.shown_claims);
        let signed = match &self.signed_claims {
            Some(signed_claims) => b64_json(signed_claims),
            None => shown.clone(),
        };
        let input = format!("{header}.{signed}");
        let signature = match self.signature {
            Signature::Rs256(signer) => signer.sign_rs256(input.as_bytes()),
            Signature::Empty => Vec::new(),
            Signature::Hs256(key) => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
                mac.update(input.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        };
        format!("{header}.{shown}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn rs256_header(kid: &str) -> Map<String, Value> {
    header_object(json!({"alg": "RS256", "kid": kid, "typ": "JWT"}))
}

fn header_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("headers are written as JSON objects"),
    }
}

/// Changes the last digit of `sub` (or adds a `sub`), so a payload differs
/// from the one that was signed.
fn tweak_sub(claims: &mut Map<String, Value>) {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let tweaked = match sub.char_indices().last() {
        Some((at, last)) => {
            let replacement = if last == '0' { '1' } else { '0' };
            format!("{}{replacement}", &sub[..at])
        }
        None => "0".to_owned(),
    };
    claims.insert("sub".to_owned(), Value::String(tweaked));
}
