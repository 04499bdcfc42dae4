//! Reading answers from Google and OpenAI under a size cap. Every answer
//! either service gives the server is small (a page of 100 accounts is about
//! 20 KiB, a discovery document or key set a few), so an answer far larger
//! than that is refused as it arrives, before it can cost the process its
//! memory.

use bytes::Bytes;
use url::Url;

/// The most the server reads of an Admin API answer.
pub const ADMIN_API_MAX_BYTES: usize = 1024 * 1024;
/// The most the server reads of a discovery document, key set or token
/// answer.
pub const OIDC_MAX_BYTES: usize = 256 * 1024;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Larger than the cap (by its `Content-Length`, or as it arrived).
    #[error("the answer is larger than {} KiB, far beyond any legitimate one", limit / 1024)]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The connection failed or timed out mid-answer.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

/// Reads `response`'s body, at most `limit` bytes of it.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ReadError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body =
        Vec::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit)));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// Whether the server may send a secret to, or trust the answers of, an
/// `endpoint` that `issuer`'s discovery document names: https; plain http
/// only when the issuer itself is a plain-http fake on this machine and the
/// endpoint is on this machine too, so that a real issuer's document can
/// never send the client secret in clear text, not even to a local port.
pub fn is_safe_endpoint(endpoint: &Url, issuer: &Url) -> bool {
    match endpoint.scheme() {
        "https" => true,
        "http" => issuer.scheme() == "http" && is_loopback(issuer) && is_loopback(endpoint),
        _ => false,
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn plain_http_endpoints_are_only_for_a_local_fake_issuer() {
        let google = url("https://accounts.google.com");
        let fake = url("http://127.0.0.1:9000");
        assert!(is_safe_endpoint(
            &url("https://oauth2.googleapis.com/token"),
            &google
        ));
        assert!(!is_safe_endpoint(
            &url("http://oauth2.googleapis.com/token"),
            &google
        ));
        assert!(
            !is_safe_endpoint(&url("http://localhost:9000/token"), &google),
            "a real issuer may not point the secret at a local port in clear"
        );
        assert!(is_safe_endpoint(&url("http://127.0.0.1:9000/token"), &fake));
        assert!(!is_safe_endpoint(
            &url("http://tokens.example.test/token"),
            &fake
        ));
        assert!(!is_safe_endpoint(&url("ftp://127.0.0.1/token"), &fake));
    }
}
