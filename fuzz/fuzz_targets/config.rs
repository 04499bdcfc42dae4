//! Fuzzes the configuration parser: any environment must give settings or a
//! list of problems, never a panic, and never echo a secret in a problem.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use openai_key_server::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Config::from_lookup(|var| env.get(var).cloned()) {
        Ok(config) => {
            assert!(config.expiration.as_secs() >= 1);
            assert!(!config.allow.is_empty());
            let _ = config.describe();
        }
        Err(error) => {
            assert!(!error.problems.is_empty());
            for var in ["OPENAI_MANAGEMENT_KEY", "CLIENT_SECRET", "SESSION_SECRET"] {
                // Only secrets that cannot appear by coincidence: long,
                // letters and digits, and not also the value of another
                // variable (whose bad entries are rightly echoed).
                let Some(secret) = env.get(var).map(|s| s.trim()) else {
                    continue;
                };
                let distinctive = secret.len() >= 16
                    && secret.chars().all(|c| c.is_ascii_alphanumeric())
                    && secret.chars().any(|c| c.is_ascii_digit())
                    && secret.chars().any(|c| c.is_ascii_alphabetic());
                let elsewhere = env
                    .iter()
                    .any(|(k, v)| k != var && v.contains(secret));
                if distinctive && !elsewhere {
                    assert!(!error.to_string().contains(secret), "{var} echoed");
                }
            }
        }
    }
});
