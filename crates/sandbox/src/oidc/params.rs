//! OAuth request parameters on the wire: parsing query strings and form
//! bodies strictly (RFC 6749 §3.1), building redirect URLs.

use axum::http::{HeaderMap, header};

/// Parameters of one request, in order, as sent.
#[derive(Debug, Default)]
pub(super) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` text (a query or a body).
    pub(super) fn parse(raw: &[u8]) -> Self {
        Self {
            pairs: url::form_urlencoded::parse(raw).into_owned().collect(),
        }
    }

    /// A parameter's value. RFC 6749 §3.1: a parameter sent without a value
    /// counts as omitted.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// The first parameter sent more than once, if any (RFC 6749 §3.1:
    /// parameters must not be repeated).
    pub(super) fn repeated(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(at, (name, _))| {
            self.pairs[..at]
                .iter()
                .any(|(earlier, _)| earlier == name)
                .then_some(name.as_str())
        })
    }

    /// Whether `name` is sent more than once.
    pub(super) fn is_repeated(&self, name: &str) -> bool {
        self.pairs.iter().filter(|(key, _)| key == name).count() > 1
    }

    /// The pairs whose name passes `keep`.
    pub(super) fn pairs_where(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter(|(name, _)| keep(name))
            .cloned()
            .collect()
    }

    /// Only the pairs whose name passes `keep`.
    pub(super) fn retain(self, keep: impl Fn(&str) -> bool) -> Self {
        Self {
            pairs: self
                .pairs
                .into_iter()
                .filter(|(name, _)| keep(name))
                .collect(),
        }
    }
}

/// Whether the request body is declared as a urlencoded form.
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `base` with `params` appended to its query, percent-encoded like
/// Google's redirects: spaces as `%20`, `/` and `:` left readable.
pub(super) fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut url = base.to_owned();
    let mut separator = if base.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        url.push(separator);
        url.push_str(&encode(name));
        url.push('=');
        url.push_str(&encode(value));
        separator = '&';
    }
    url
}

/// Percent-encodes everything but RFC 3986 unreserved characters, `/` and
/// `:` (both legal in a query).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/:".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a
/// space), as RFC 6749 §2.3.1 encodes the client id and secret inside HTTP
/// Basic credentials.
pub(super) fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(at + 1..at + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    at += 2;
                } else {
                    out.push(b'%');
                }
            }
            byte => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_slashes_and_colons_readable_and_encode_the_rest() {
        let url = with_query(
            "http://127.0.0.1:8080/cb",
            &[
                ("code", "4/0Ab"),
                ("scope", "email openid https://x/y"),
                ("state", "a&b=c+d"),
            ],
        );
        assert_eq!(
            url,
            "http://127.0.0.1:8080/cb?code=4/0Ab&scope=email%20openid%20https://x/y&state=a%26b%3Dc%2Bd"
        );
        assert_eq!(
            with_query("http://h/cb?x=1", &[("a", "b")]),
            "http://h/cb?x=1&a=b"
        );
    }

    #[test]
    fn basic_credentials_decode_as_form_components() {
        assert_eq!(form_decode("a%3Ab+c%2B%"), "a:b c+%");
        assert_eq!(form_decode("%4"), "%4");
    }

    #[test]
    fn a_repeated_parameter_is_found_and_an_empty_one_counts_as_absent() {
        let params = Params::parse(b"a=1&b=&c=3&a=2");
        assert_eq!(params.repeated(), Some("a"));
        assert_eq!(params.get("b"), None);
        assert_eq!(params.get("c"), Some("3"));
    }
}
