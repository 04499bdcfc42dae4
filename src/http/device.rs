//! `/device`: where a person confirms a device sign-in's code (RFC 8628's
//! verification page). Without a session, a sign-in first, which comes
//! back here with the code filled in.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::PrivateCookieJar;
use serde::Deserialize;

use super::login::{self, Start, Then};
use super::me::no_store;
use super::session::{Form, MaybeSignedIn};
use super::{AppState, HttpError};
use crate::clock;
use crate::limits::ClientAddr;

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage<'a> {
    owner: &'a str,
    csrf: &'a str,
    code: String,
    session_ttl: String,
}

#[derive(Template)]
#[template(path = "device_done.html")]
struct DonePage<'a> {
    title: &'a str,
    message: &'a str,
}

/// `?code=` of the verification URL.
#[derive(Deserialize, Default)]
pub(super) struct Prefill {
    code: Option<String>,
    /// The issuer to sign in through, when there are several.
    issuer: Option<String>,
}

/// What may be put back in the field: letters, digits and dashes, short.
fn as_typed(code: Option<&str>) -> String {
    code.unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(16)
        .collect()
}

/// `GET /device`: the form, or a sign-in that comes back to it.
pub(super) async fn page(
    State(state): State<AppState>,
    MaybeSignedIn(signed_in): MaybeSignedIn,
    Query(prefill): Query<Prefill>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Result<Response, HttpError> {
    let code = as_typed(prefill.code.as_deref());
    let Some(signed_in) = signed_in else {
        let start = Start {
            choose_account: false,
            back: if code.is_empty() {
                "/device".to_owned()
            } else {
                format!("/device?code={code}")
            },
            then: Some(Then::Device { user_code: code }),
            issuer: None,
        }
        .through(prefill.issuer);
        return login::start(&state, &headers, jar, start).await;
    };
    let page = DevicePage {
        owner: signed_in.grant.owner.as_str(),
        csrf: &signed_in.csrf,
        code,
        session_ttl: clock::humanize(state.cli_session_ttl),
    };
    Ok(no_store(Html(page.render()?).into_response()))
}

/// The device form's fields.
#[derive(Deserialize)]
pub(super) struct Answer {
    user_code: String,
    answer: String,
}

/// `POST /device`: approve or deny a code.
pub(super) async fn answer(
    State(state): State<AppState>,
    client: ClientAddr,
    Form { signed_in, fields }: Form<Answer>,
) -> Result<Response, HttpError> {
    let approve = match fields.answer.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(HttpError::BadForm),
    };
    let now = state.clock.now();
    state
        .issuance
        .answer_device(&signed_in.identity, client, &fields.user_code, approve, now)?;
    let owner = signed_in.grant.owner.as_str();
    let message = if approve {
        format!("Your terminal is signed in as {owner}. You can close this tab and go back to it.")
    } else {
        "Nothing was signed in; the terminal is told so. You can close this tab.".to_owned()
    };
    let page = DonePage {
        title: if approve {
            "Terminal signed in"
        } else {
            "Sign-in refused"
        },
        message: &message,
    };
    Ok(no_store(Html(page.render()?).into_response()))
}
