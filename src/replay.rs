//! Values used once on this replica, remembered until they could not come
//! back anyway: completed login states (until their login cookie has
//! expired), so that one login completes at most once even if its cookie
//! and a second code from the same authorization URL come back; and spent
//! new-key forms. In memory, per replica: see SECURITY.md for what that
//! means with several.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Mutex, PoisonError};

/// The most states remembered. Reaching it takes a hundred thousand
/// completed callbacks within one login lifetime; then the oldest is
/// forgotten first (replaying it would still need a second code from the
/// provider, approved by its owner).
const MAX_REMEMBERED: usize = 100_000;

/// Completed login states. Per replica.
#[derive(Debug, Default)]
pub struct CompletedLogins(Mutex<Remembered>);

/// About 30 bytes a value: every sign-in of the last ten minutes is here.
#[derive(Debug, Default)]
struct Remembered {
    /// `(expires, hash)` in the order recorded, to forget the oldest first.
    /// Expiries follow that order but loosely (a login that took longer
    /// expires earlier than it stands): one may outlive its expiry by a
    /// login's lifetime at most, which only makes it safer.
    order: VecDeque<(u32, u64)>,
    /// Each value's hash and expiry (whole seconds).
    expires: HashMap<u64, u32>,
    /// Values are hashed with a per-process key: nothing worth stealing in
    /// memory.
    hasher: RandomState,
}

/// Unix seconds in four bytes (saturating in 2106).
fn seconds(at: i64) -> u32 {
    u32::try_from(at.max(0)).unwrap_or(u32::MAX)
}

impl CompletedLogins {
    /// Records `state` as completed, remembered until `expires` (Unix
    /// seconds). False when it was completed already.
    pub fn complete(&self, state: &str, expires: i64, now: i64) -> bool {
        let mut remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let remembered = &mut *remembered;
        let now = seconds(now);
        while let Some(&(at, hash)) = remembered.order.front() {
            if at > now && remembered.order.len() < MAX_REMEMBERED {
                break;
            }
            remembered.order.pop_front();
            // Only if it was not recorded again since.
            if remembered.expires.get(&hash) == Some(&at) {
                remembered.expires.remove(&hash);
            }
        }
        let hash = remembered.hasher.hash_one(state);
        if remembered.expires.contains_key(&hash) {
            return false;
        }
        let expires = seconds(expires);
        remembered.expires.insert(hash, expires);
        remembered.order.push_back((expires, hash));
        true
    }

    /// Forgets `state`: what it was used for did not happen after all.
    pub fn forget(&self, state: &str) {
        let mut remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let hash = remembered.hasher.hash_one(state);
        remembered.expires.remove(&hash);
    }

    /// How many states are remembered.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expires
            .len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_completes_once_until_its_login_has_expired() {
        let completed = CompletedLogins::default();
        assert!(completed.complete("a", 1_600, 1_000));
        assert!(
            !completed.complete("a", 1_600, 1_100),
            "the second time is a replay"
        );
        assert!(completed.complete("b", 1_700, 1_100));
        // Once expired it is forgotten: the login cookie is dead by then.
        assert!(completed.complete("c", 2_300, 1_650));
        assert_eq!(completed.len(), 2, "a went, b and c stay");
        assert!(!completed.complete("b", 1_700, 1_650));
    }

    #[test]
    fn at_the_bound_the_oldest_is_forgotten_first() {
        let completed = CompletedLogins::default();
        for i in 0..MAX_REMEMBERED as i64 {
            assert!(completed.complete(&format!("s{i}"), 10_000 + i, 0));
        }
        assert!(completed.complete("new", 20_000, 0));
        assert_eq!(completed.len(), MAX_REMEMBERED);
        assert!(
            completed.complete("s0", 10_000, 0),
            "the earliest was forgotten"
        );
        assert!(!completed.complete("s5", 10_005, 0), "later ones are kept");
    }

    #[test]
    fn a_forgotten_value_can_be_recorded_again_and_lasts_its_new_time() {
        let completed = CompletedLogins::default();
        assert!(completed.complete("form", 100, 0));
        completed.forget("form");
        assert!(
            completed.complete("form", 500, 50),
            "forgotten: it counts as new"
        );
        // The first recording's time passes: the second still holds.
        assert!(completed.complete("other", 600, 200));
        assert!(!completed.complete("form", 500, 200));
    }
}
