//! RSA-2048 signing keys: a process-wide pool that providers lease keys
//! from (generation is slow, tests start many providers), and the ring of
//! keys one provider signs with, publishes and keeps back for forgeries.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};

/// Keys no live provider holds. A key goes back here when the provider
/// holding it is dropped, so a test process generates only as many keys as
/// its providers hold at the same time.
static POOL: Mutex<Vec<Material>> = Mutex::new(Vec::new());

/// One RSA key pair and the forms of its public half that tokens need.
struct Material {
    /// Shared, so that a token can be signed without the provider's lock.
    /// Signing is `ring`'s (about three times as fast as the `rsa` crate,
    /// which only generates the keys): the benchmark runs thousands of
    /// sign-ins through the sandbox, and its cost is not the server's.
    signer: Arc<RsaKeyPair>,
    /// JWK `n`: base64url of the big-endian modulus.
    n: String,
    /// JWK `e`: base64url of the big-endian exponent.
    e: String,
    /// SPKI PEM of the public key (LF line endings, final newline): the
    /// "secret" of the HS256 key-confusion forgery.
    pem: String,
}

impl Material {
    fn generate() -> Self {
        let private = RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA-2048 key generation");
        let public = RsaPublicKey::from(&private);
        let pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("an RSA public key encodes as PEM");
        let pkcs8 = private
            .to_pkcs8_der()
            .expect("an RSA private key encodes as PKCS#8");
        let signer = RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).expect("ring reads an RSA-2048 key");
        Self {
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            pem,
            signer: Arc::new(signer),
        }
    }
}

/// A key leased from the pool under a fresh kid; returns to the pool on drop.
pub(super) struct Key {
    kid: String,
    material: Option<Material>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Takes a pooled key, or generates one when none is free. The kid is
    /// new each time (40 hex digits, like Google's), so a reused key never
    /// shows a kid that an earlier provider published.
    fn lease() -> Self {
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Self {
            kid: super::random_string(40, b"0123456789abcdef"),
            material: Some(pooled.unwrap_or_else(Material::generate)),
        }
    }

    fn material(&self) -> &Material {
        self.material
            .as_ref()
            .expect("a key's material is only taken when it is dropped")
    }

    pub(super) fn kid(&self) -> &str {
        &self.kid
    }

    /// A handle on the private key, to sign with after letting go of the
    /// provider's lock (RSA signing takes milliseconds).
    pub(super) fn signer(&self) -> Signer {
        Signer(Arc::clone(&self.material().signer))
    }

    /// The public key as SPKI PEM.
    pub(super) fn public_pem(&self) -> &str {
        &self.material().pem
    }

    /// The public key as a JWK, as Google publishes it.
    pub(super) fn jwk(&self) -> Value {
        let material = self.material();
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": material.n,
            "e": material.e,
        })
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if let Some(material) = self.material.take() {
            POOL.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(material);
        }
    }
}

/// The private half of a [`Key`], detached from the key ring.
#[derive(Clone)]
pub(super) struct Signer(Arc<RsaKeyPair>);

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over `input`.
    pub(super) fn sign_rs256(&self, input: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input,
                &mut signature,
            )
            .expect("RSA signing with a valid key and a buffer of the modulus' length");
        signature
    }
}

/// The keys of one provider.
#[derive(Debug)]
pub(super) struct KeyRing {
    /// Signs tokens and is published.
    current: Key,
    /// Published, not signing yet: the next rotation signs with it.
    next: Option<Key>,
    /// Published but no longer signing, newest first, each with the
    /// virtual time (Unix ms) it leaves the JWKS at, if ever.
    previous: Vec<(Key, Option<i64>)>,
    /// Dropped from the JWKS. Kept until the provider goes so that a dropped
    /// key cannot reappear in another live provider's JWKS.
    retired: Vec<Key>,
    /// Never published: signs the foreign-key and unknown-kid forgeries.
    outsider: Option<Key>,
}

impl KeyRing {
    pub(super) fn new() -> Self {
        Self {
            current: Key::lease(),
            next: None,
            previous: Vec::new(),
            retired: Vec::new(),
            outsider: None,
        }
    }

    pub(super) fn current(&self) -> &Key {
        &self.current
    }

    pub(super) fn current_kid(&self) -> &str {
        self.current.kid()
    }

    /// A key this provider never publishes (leased on first use).
    pub(super) fn outsider(&mut self) -> &Key {
        self.outsider.get_or_insert_with(Key::lease)
    }

    /// Switches signing to the pre-published key or a fresh one; see
    /// [`super::FakeOidc::rotate_keys`].
    pub(super) fn rotate(&mut self, keep_old: bool) -> String {
        let old = self.switch();
        if keep_old {
            self.previous.insert(0, (old, None));
        } else {
            self.retired.push(old);
            self.retired
                .extend(self.previous.drain(..).map(|(key, _)| key));
        }
        self.current.kid().to_owned()
    }

    /// Switches signing to a new key, keeping the old one published until
    /// `until_ms` (virtual Unix ms).
    pub(super) fn rotate_until(&mut self, until_ms: i64) -> String {
        let old = self.switch();
        self.previous.insert(0, (old, Some(until_ms)));
        self.current.kid().to_owned()
    }

    fn switch(&mut self) -> Key {
        let new = self.next.take().unwrap_or_else(Key::lease);
        std::mem::replace(&mut self.current, new)
    }

    /// Publishes the key the next rotation signs with (once).
    pub(super) fn publish_next(&mut self) -> String {
        self.next.get_or_insert_with(Key::lease).kid().to_owned()
    }

    /// Moves keys whose overlap is over at `now_ms` out of the JWKS.
    pub(super) fn expire(&mut self, now_ms: i64) {
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .previous
            .drain(..)
            .partition(|(_, until)| until.is_some_and(|until| now_ms >= until));
        self.previous = kept;
        self.retired.extend(gone.into_iter().map(|(key, _)| key));
    }

    /// The published keys, current first, then the pre-published one, then
    /// the previous ones (call [`Self::expire`] first).
    pub(super) fn published(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current)
            .chain(&self.next)
            .chain(self.previous.iter().map(|(key, _)| key))
    }

    pub(super) fn published_kids(&self) -> Vec<String> {
        self.published().map(|key| key.kid().to_owned()).collect()
    }
}
