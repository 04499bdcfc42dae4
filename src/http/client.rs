//! Who sent a request: worked out once per request by the router (the TCP
//! peer, or behind a trusted proxy the client it names) and kept in the
//! request's extensions for handlers, limits and the log.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::forwarded::TrustedProxies;
use crate::limits::ClientAddr;

/// Works out who sent `request`: its TCP peer, or the client a trusted
/// proxy names.
pub(crate) fn client_of(
    request: &axum::http::Request<axum::body::Body>,
    trusted: &TrustedProxies,
) -> ClientAddr {
    let Some(peer) = super::serve::peer(request.extensions()) else {
        return ClientAddr(None);
    };
    // Every value, readable or not: a value dropped for a byte outside
    // ASCII would let a client hide the hop its proxy appended.
    let values = |name: &str| -> Vec<String> {
        request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    let x_forwarded_for = values("x-forwarded-for");
    let forwarded: Vec<&str> = forwarded.iter().map(String::as_str).collect();
    let x_forwarded_for: Vec<&str> = x_forwarded_for.iter().map(String::as_str).collect();
    ClientAddr(Some(trusted.client(
        peer.ip(),
        &forwarded,
        &x_forwarded_for,
    )))
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Self>()
            .copied()
            .unwrap_or_else(|| Self(super::serve::peer(&parts.extensions).map(|a| a.ip()))))
    }
}
