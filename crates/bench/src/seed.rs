//! What the scenarios put into the sandbox before the server starts: this
//! server's account names (`oks.<expiry>.<nonce>.<owner>`), foreign ones,
//! and a small seeded random source so that a run can be repeated.

use std::time::{SystemTime, UNIX_EPOCH};

/// The prefix of this server's account names.
pub(crate) const PREFIX: &str = "oks.";

/// The `SplitMix64` generator: tiny, fast, and good enough to spread expiries and nonces.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator that always yields the same sequence for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Six characters of `[a-z0-9]`, like the server's nonces.
    pub(crate) fn nonce(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..6)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len() as u64) as usize]))
            .collect()
    }
}

/// The name this server gives an account expiring at `expires_at`.
pub(crate) fn our_name(expires_at: i64, nonce: &str, owner: &str) -> String {
    format!("{PREFIX}{expires_at}.{nonce}.{owner}")
}

/// The expiry written in one of this server's names, if it is one.
pub(crate) fn expiry_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(PREFIX)?;
    let (expiry, _) = rest.split_once('.')?;
    expiry.parse().ok()
}

/// A foreign account name: a CI bot, or a bare email as the Go original
/// names its accounts.
pub(crate) fn foreign_name(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("ci-bot-{i}")
    } else {
        format!("legacy{i}@example.com")
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix milliseconds now.
pub(crate) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_names_round_trip_and_foreign_ones_are_not_ours() {
        let mut rng = Rng::new(7);
        let nonce = rng.nonce();
        assert_eq!(nonce.len(), 6);
        assert!(
            nonce
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let name = our_name(1_764_115_200, &nonce, "user1@example.com");
        assert_eq!(expiry_of(&name), Some(1_764_115_200));
        assert_eq!(expiry_of(&foreign_name(0)), None);
        assert_eq!(expiry_of(&foreign_name(1)), None);
        assert_eq!(expiry_of("oks.x.abcdef.a@b.c"), None);
    }

    #[test]
    fn the_random_source_repeats_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        for _ in 0..100 {
            let n = a.below(60);
            assert!(n < 60);
            assert_eq!(n, b.below(60));
        }
        assert_eq!(a.below(0), 0);
    }
}
