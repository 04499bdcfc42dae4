//! Fuzzes the JWKS parser: any document gives keys or an error, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = openai_key_server::oidc::parse_key_set(data);
});
