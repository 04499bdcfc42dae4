//! Fuzzes ID-token parsing and verification: any input must be refused or
//! accepted without a panic, and an accepted token must satisfy every check.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use openai_key_server::oidc::{Expectations, Key, header, parse_key_set, verify_with_key};

const JWKS: &[u8] = include_bytes!("../jwks.json");

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| parse_key_set(JWKS).unwrap().remove("fuzzkid").unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let issuers = ["https://accounts.google.com".to_owned(), "accounts.google.com".to_owned()];
    let expect = Expectations {
        accepted_issuers: &issuers,
        client_id: "client",
        nonce: "n0nce",
        issuer_name: "google",
        groups_claim: Some("groups"),
        domain_claim: None,
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_764_000_100);
    let _ = header(token);
    if let Ok(identity) = verify_with_key(token, key(), &expect, now) {
        // Only a token signed by the key can get here, and the seeds are the
        // only such tokens; its identity must be the one they carry.
        assert!(!identity.subject.is_empty());
    }
});
