//! Workloads (CI jobs) and the claims rules match them on. Rules match
//! claims, never `sub`: GitHub's `sub` has two formats since mid-2026, and
//! a rule written for one would silently stop matching under the other.

use std::collections::BTreeMap;
use std::fmt;

use crate::identity::Owner;

use super::Refusal;

/// A CI job's token, verified: the issuer's name in the policy, the
/// owner it names (`<issuer>:<id>`) and every claim it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The issuer's name in the policy.
    pub issuer: String,
    /// Whose keys: `<issuer>:<the id claim>`, e.g. `github:123456789`.
    pub owner: Owner,
    /// The token's claims.
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// A claim's value as a rule sees it: strings as they are, numbers and
/// booleans by their JSON text (GitHub sends ids as strings, GitLab as
/// numbers, and a rule says `"123"` either way). Other types never match.
pub fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// [`claim_text`] without a copy for strings, the common case.
pub(super) fn claim_str(value: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        serde_json::Value::String(text) => Some(std::borrow::Cow::Borrowed(text)),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
            claim_text(value).map(std::borrow::Cow::Owned)
        }
        _ => None,
    }
}

impl Workload {
    /// `None` when every claim of `wanted` matches; else how many matched
    /// before the first that did not, and why.
    pub(super) fn first_mismatch(
        &self,
        wanted: &BTreeMap<String, ClaimPattern>,
    ) -> Option<(usize, Refusal)> {
        for (matched, (name, pattern)) in wanted.iter().enumerate() {
            let value = self.claims.get(name).and_then(claim_str);
            if !value.as_deref().is_some_and(|v| pattern.matches(v)) {
                return Some((
                    matched,
                    Refusal::ClaimMismatch {
                        claim: name.clone(),
                        value: value.map(std::borrow::Cow::into_owned),
                    },
                ));
            }
        }
        None
    }
}

/// What a rule wants of one claim: the exact text, or a glob when it has
/// `*` (any run of characters, `/` included) or `?` (one character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPattern(String);

impl ClaimPattern {
    /// The pattern as written.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// True when it is a glob.
    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }

    /// Whether `value` is what it wants.
    pub fn matches(&self, value: &str) -> bool {
        if self.is_glob() {
            glob(self.0.as_bytes(), value.as_bytes())
        } else {
            self.0 == value
        }
    }
}

impl fmt::Display for ClaimPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` and `?` over bytes, linear time: the last `*` is retried one byte
/// further on a mismatch, which is all backtracking a glob without
/// classes needs.
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn globs_match_runs_and_single_characters() {
        let refs = ClaimPattern::new("refs/heads/*");
        assert!(refs.matches("refs/heads/main"));
        assert!(refs.matches("refs/heads/release/1.2"));
        assert!(!refs.matches("refs/tags/v1"));
        assert!(
            ClaimPattern::new("octo-org/*/.github/workflows/*.yml@refs/heads/main")
                .matches("octo-org/repo/.github/workflows/deploy.yml@refs/heads/main")
        );
        assert!(ClaimPattern::new("v?").matches("v1"));
        assert!(!ClaimPattern::new("v?").matches("v12"));
        assert!(ClaimPattern::new("*").matches(""));
        assert!(!ClaimPattern::new("main").matches("main2"), "exact");
        assert!(!ClaimPattern::new("a*b*c").matches("aXbX"));
    }

    #[test]
    fn claims_of_every_type_are_compared_by_their_text() {
        assert_eq!(claim_text(&json!("123")).as_deref(), Some("123"));
        assert_eq!(claim_text(&json!(123)).as_deref(), Some("123"));
        assert_eq!(claim_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(claim_text(&json!(["123"])), None);
        assert_eq!(claim_text(&json!(null)), None);
    }

    /// A naive, exponential glob to check the linear one against.
    fn reference(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => reference(&p[1..], v) || (!v.is_empty() && reference(p, &v[1..])),
            (Some(b'?'), Some(_)) => reference(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => reference(&p[1..], &v[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn the_glob_agrees_with_a_naive_one(p in "[ab*?]{0,8}", v in "[ab]{0,10}") {
            prop_assert_eq!(glob(p.as_bytes(), v.as_bytes()), reference(p.as_bytes(), v.as_bytes()));
        }
    }
}
