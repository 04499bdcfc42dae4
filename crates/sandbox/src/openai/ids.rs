//! Random identifiers and secret key values in the shapes the real API uses,
//! and the two ways it hides a secret: redaction in key objects and masking
//! in error messages.

use rand::Rng as _;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};

/// The base64 of "OpenAI" that real keys carry in the middle, which secret
/// scanners look for.
const MARKER: &str = "T3BlbkFJ";
/// Total length of a minted secret, like the real project and service-account
/// keys.
const SECRET_LEN: usize = 164;
/// The characters of modern key values.
const SECRET_CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A SHA-256 of a key value: what the fake stores to recognise a key.
pub(super) type Digest = [u8; 32];

fn alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn secret_chars(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(SECRET_CHARSET[rng.random_range(0..SECRET_CHARSET.len())]))
        .collect()
}

/// `proj_` + 24 alphanumerics.
pub(super) fn project_id() -> String {
    format!("proj_{}", alnum(24))
}

/// `svc_acct_` + 24 alphanumerics.
pub(super) fn service_account_id() -> String {
    format!("svc_acct_{}", alnum(24))
}

/// `key_` + 16 alphanumerics.
pub(super) fn key_id() -> String {
    format!("key_{}", alnum(16))
}

/// `user-` + 24 alphanumerics.
pub(super) fn user_id() -> String {
    format!("user-{}", alnum(24))
}

/// `org-` + 24 alphanumerics.
pub(super) fn organization_id() -> String {
    format!("org-{}", alnum(24))
}

/// `req_` + 32 lowercase hex digits.
pub(super) fn request_id() -> String {
    format!("req_{:032x}", rand::rng().random::<u128>())
}

/// A secret: `prefix`, random characters with the marker in the middle,
/// [`SECRET_LEN`] characters in all.
fn secret(prefix: &str) -> String {
    let rest = SECRET_LEN - prefix.len() - MARKER.len();
    let head = rest / 2;
    format!(
        "{prefix}{}{MARKER}{}",
        secret_chars(head),
        secret_chars(rest - head)
    )
}

/// A fresh admin key, `sk-admin-…`.
pub(super) fn admin_key() -> String {
    secret("sk-admin-")
}

/// A fresh service-account key value, `sk-svcacct-…`.
pub(super) fn service_account_key() -> String {
    secret("sk-svcacct-")
}

/// SHA-256 of a key value.
pub(super) fn digest(value: &str) -> Digest {
    Sha256::digest(value.as_bytes()).into()
}

/// The `redacted_value` of a key object, e.g. `sk-svc...X9aQ`.
pub(super) fn redact(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 16 {
        return "sk-...".to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// The `redacted_value` of an admin key object, e.g. `sk-admin...X9aQ`
/// (the spec's example is `sk-admin...def`; the real number of characters
/// shown is undocumented).
pub(super) fn redact_admin(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 16 {
        return "sk-admin...".to_owned();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// How an error message shows a presented key: the first 8 and last 4
/// characters, as in `sk-svcac***...r-IL`. Short values are hidden entirely
/// so that no message ever echoes a whole key.
pub(super) fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 24 {
        return "***".to_owned();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_prefixes_and_lengths() {
        let project = project_id();
        assert!(
            project.starts_with("proj_") && project.len() == 29,
            "{project}"
        );
        let account = service_account_id();
        assert!(account.starts_with("svc_acct_") && account.len() == 33);
        let key = key_id();
        assert!(key.starts_with("key_") && key.len() == 20);
        let request = request_id();
        assert!(request.starts_with("req_") && request.len() == 36);
        assert!(request[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn secrets_look_like_real_keys() {
        let value = service_account_key();
        assert_eq!(value.len(), SECRET_LEN);
        assert!(value.starts_with("sk-svcacct-"));
        assert!(value.contains(MARKER));
        assert!(
            value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
        assert!(admin_key().starts_with("sk-admin-"));
    }

    #[test]
    fn redaction_and_masking_never_show_the_whole_value() {
        let value = service_account_key();
        let redacted = redact(&value);
        assert!(redacted.starts_with("sk-svc...") && redacted.ends_with(&value[160..]));
        let masked = mask(&value);
        assert_eq!(masked, format!("sk-svcac***...{}", &value[160..]));
        assert_eq!(mask("sk-short"), "***");
        assert_eq!(redact("sk-short"), "sk-...");
    }
}
