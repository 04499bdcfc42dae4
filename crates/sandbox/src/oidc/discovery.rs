//! The discovery document and the JWKS, with Google's caching headers.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use super::{FakeOidc, Kind, jwt};
use crate::clock::civil_from_days;

/// Where discovery lives, under the origin.
pub(super) const PATH: &str = "/.well-known/openid-configuration";
/// Google's JWKS path.
pub(super) const JWKS_PATH: &str = "/oauth2/v3/certs";
/// GitHub Actions' JWKS path.
pub(super) const GITHUB_JWKS_PATH: &str = "/.well-known/jwks";

/// `GET /.well-known/openid-configuration`.
pub(super) async fn configuration(State(oidc): State<FakeOidc>) -> Response {
    let provider = &oidc.inner;
    if let Some(oversized) = provider.take_oversized(super::Endpoint::Discovery) {
        return oversized;
    }
    let origin = &provider.origin;
    let issuer = &provider.issuer;
    let document = match provider.kind {
        Kind::Google => google_document(origin, issuer),
        Kind::GithubActions => github_document(origin, issuer),
    };
    let Value::Object(mut document) = document else {
        unreachable!("discovery documents are written as JSON objects");
    };
    jwt::merge(&mut document, provider.discovery_overrides.clone());
    json_response(
        StatusCode::OK,
        &Value::Object(document),
        "public, max-age=3600",
    )
}

/// Google's document (spec §1), endpoints moved to `origin`. The device and
/// extra grant entries are copied although this fake does not serve them:
/// a client must not assume that everything listed works for it.
fn google_document(origin: &str, issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{origin}/o/oauth2/v2/auth"),
        "device_authorization_endpoint": format!("{origin}/device/code"),
        "token_endpoint": format!("{origin}/token"),
        "userinfo_endpoint": format!("{origin}/v1/userinfo"),
        "revocation_endpoint": format!("{origin}/revoke"),
        "jwks_uri": format!("{origin}{JWKS_PATH}"),
        "response_types_supported": [
            "code", "token", "id_token", "code token", "code id_token",
            "token id_token", "code token id_token", "none"
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": [
            "aud", "email", "email_verified", "exp", "family_name", "given_name",
            "iat", "iss", "name", "picture", "sub"
        ],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": [
            "authorization_code", "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ]
    })
}

/// GitHub Actions' document, shaped like token.actions.githubusercontent.com's.
fn github_document(origin: &str, issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{origin}{GITHUB_JWKS_PATH}"),
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "claims_supported": [
            "sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "sha", "repository",
            "repository_id", "repository_owner", "repository_owner_id", "run_id",
            "run_number", "run_attempt", "actor", "actor_id", "workflow", "workflow_ref",
            "workflow_sha", "head_ref", "base_ref", "event_name", "ref_type",
            "ref_protected", "environment", "job_workflow_ref", "job_workflow_sha",
            "repository_visibility", "runner_environment"
        ],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid"]
    })
}

/// `GET /oauth2/v3/certs` (Google) or `/.well-known/jwks` (GitHub).
pub(super) async fn jwks(State(oidc): State<FakeOidc>) -> Response {
    let provider = &oidc.inner;
    if let Some(oversized) = provider.take_oversized(super::Endpoint::Jwks) {
        return oversized;
    }
    let now = provider.clock.unix();
    let now_ms = provider.clock.unix_ms();
    let (document, max_age) = {
        let mut state = provider.lock();
        state.jwks_fetches += 1;
        state.keys.expire(now_ms);
        if state.hang_jwks > 0 {
            state.hang_jwks -= 1;
            (None, None)
        } else if state.fail_jwks > 0 {
            state.fail_jwks -= 1;
            (None, Some(0))
        } else {
            let keys: Vec<Value> = state.keys.published().map(|key| key.jwk()).collect();
            (Some(json!({ "keys": keys })), Some(state.jwks_max_age))
        }
    };
    let Some(max_age) = max_age else {
        // No answer: the client gives up, which drops this future.
        return std::future::pending().await;
    };
    let Some(document) = document else {
        let failure =
            json!({"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}});
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &failure, "no-store");
    };
    let mut response = json_response(
        StatusCode::OK,
        &document,
        &format!("public, max-age={max_age}, must-revalidate, no-transform"),
    );
    let max_age = i64::try_from(max_age).unwrap_or(i64::MAX);
    let headers = response.headers_mut();
    // `Date` and `Expires` both follow the virtual clock, so a client that
    // computes freshness from them agrees with `max-age`.
    headers.insert(header::DATE, header_value(&http_date(now)));
    headers.insert(
        header::EXPIRES,
        header_value(&http_date(now.saturating_add(max_age))),
    );
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    response
}

fn json_response(status: StatusCode, body: &Value, cache_control: &str) -> Response {
    let mut response = (status, serde_json::to_string(body).unwrap_or_default()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, header_value(cache_control));
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("generated header values are visible ASCII")
}

/// IMF-fixdate (RFC 9110 §5.6.7) of a Unix time, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::http_date;

    #[test]
    fn http_dates_match_rfc_9110_examples() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
