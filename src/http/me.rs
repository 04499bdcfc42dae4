//! A signed-in person's own pages: my keys, a new key, revoking one, and
//! signing out. Each handler extracts, calls the issuance core, renders.

use std::time::{Duration, SystemTime};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::extract::PrivateCookieJar;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::session::{Form, MaybeSignedIn, SignedIn};
use super::{AppState, HttpError, login};
use crate::clock;
use crate::issuance;
use crate::keys::{IssuedKey, KeyInfo};

/// An instant as the pages show it: UTC text, and Unix seconds for the
/// browser's local time.
pub(super) struct Shown {
    pub(super) utc: String,
    pub(super) unix: i64,
}

impl Shown {
    pub(super) fn at(unix: i64) -> Self {
        Self {
            utc: humantime::format_rfc3339_seconds(clock::from_unix(unix)).to_string(),
            unix,
        }
    }
}

/// One row of a table of keys.
pub(super) struct Row {
    pub(super) id: String,
    /// What the person can tell keys apart by: the key's id, or the
    /// account's while the key's is not known yet.
    pub(super) label: String,
    pub(super) created: Option<Shown>,
    pub(super) expires: Shown,
    pub(super) expires_in: String,
    pub(super) last_used: Option<Shown>,
    /// What it used today, as the last read of the Usage API said
    /// (`None`: usage is not read).
    pub(super) used: Option<String>,
    /// The OpenAI project it is in.
    pub(super) project: String,
}

/// Tokens as the pages write them: "1,234 tokens (5 requests)".
pub(super) fn tokens_text(tokens: crate::usage::Tokens) -> String {
    format!(
        "{} tokens ({} request{})",
        crate::usage::thousands(tokens.total()),
        crate::usage::thousands(tokens.requests),
        if tokens.requests == 1 { "" } else { "s" }
    )
}

impl Row {
    pub(super) fn of(key: KeyInfo, now: SystemTime, usage: &crate::usage::Usage) -> Self {
        // "–" until usage is first read, or while the key's id is unknown.
        let used = usage.interval().map(|_| {
            key.key_id
                .as_deref()
                .filter(|_| usage.polled_at().is_some())
                .map_or_else(|| "–".to_owned(), |id| tokens_text(usage.of_key(id, now)))
        });
        Self {
            used,
            label: key
                .key_id
                .clone()
                .unwrap_or_else(|| key.service_account_id.clone()),
            created: key.created_at.map(Shown::at),
            expires: Shown::at(key.expires_at),
            expires_in: clock::humanize(clock::until(key.expires_at, now)),
            last_used: key.last_used_at.map(Shown::at),
            project: key.project_id,
            id: key.service_account_id,
        }
    }
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage<'a> {
    owner: &'a str,
    admin: bool,
    csrf: &'a str,
    form: String,
    notice: Option<String>,
    keys: Vec<Row>,
    held: usize,
    cap_text: String,
    lifetime: String,
    /// What their keys used today, and of what budget.
    usage_line: Option<String>,
    /// Their budget is spent: why new keys are refused (and live ones
    /// were revoked).
    over_budget: Option<String>,
    /// Whether rows have a usage column.
    usage_shown: bool,
    /// Keys of theirs found gone before their expiry.
    vanished: Vec<String>,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage<'a> {
    owner: &'a str,
    key: &'a str,
    expires_utc: String,
    expires_unix: i64,
    lifetime: String,
    enforced_by_openai: bool,
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOutPage;

/// Headers of every page that lists keys or shows one: never cached.
pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The page of a key just made: shown once, never cached.
pub(super) fn key_page(
    owner: &str,
    issued: &IssuedKey,
    now: SystemTime,
) -> Result<Response, HttpError> {
    let page = KeyPage {
        owner,
        key: issued.value.expose_secret(),
        expires_utc: Shown::at(issued.expires_at).utc,
        expires_unix: issued.expires_at,
        lifetime: clock::humanize(clock::until(issued.expires_at, now)),
        enforced_by_openai: issued.enforced_by_openai,
    };
    Ok(no_store(Html(page.render()?).into_response()))
}

/// My keys, with `notice` on top, answered with `status`.
pub(super) async fn keys_page(
    state: &AppState,
    signed_in: &SignedIn,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let listed = state.issuance.list_for(&signed_in.identity, now).await?;
    let notice = notice.or_else(|| (!listed.fresh).then(stale_notice));
    let keys = listed.keys;
    let grant = &signed_in.grant;
    let usage = state.issuance.usage();
    let (usage_line, over_budget) = usage_lines(usage, grant, now);
    let vanished = state
        .issuance
        .vanished_of(&grant.owner, now)
        .into_iter()
        .map(|gone| {
            format!(
                "Your key {} was found gone at {} UTC, before its expiry ({}), and not through this server's pages here. If you did not revoke it yourself, OpenAI may have revoked it (as it does with keys it finds leaked), or someone deleted it by hand.",
                gone.key_id.as_deref().unwrap_or(&gone.service_account_id),
                Shown::at(gone.noticed_at).utc,
                gone.what,
            )
        })
        .collect();
    let page = KeysPage {
        vanished,
        usage_line,
        over_budget,
        usage_shown: usage.interval().is_some(),
        owner: grant.owner.as_str(),
        admin: grant.admin,
        csrf: &signed_in.csrf,
        // A fresh one each time the page is shown: the form that mints a
        // key can be sent once (see `new_key`).
        form: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        notice,
        held: keys.len(),
        cap_text: if grant.cap == 0 {
            "unlimited".to_owned()
        } else {
            grant.cap.to_string()
        },
        lifetime: clock::humanize(grant.lifetime),
        keys: keys
            .into_iter()
            .map(|key| Row::of(key, now, usage))
            .collect(),
    };
    Ok(no_store((status, Html(page.render()?)).into_response()))
}

/// What a holder's keys used today and of what budget; and, when it is
/// spent, why new keys are refused.
fn usage_lines(
    usage: &crate::usage::Usage,
    grant: &crate::access::Grant,
    now: SystemTime,
) -> (Option<String>, Option<String>) {
    let Some(interval) = usage.interval() else {
        return (None, None);
    };
    if usage.polled_at().is_none() {
        return (
            Some(format!(
                "Usage is read from OpenAI every {}; it has not been read yet.",
                clock::humanize(interval)
            )),
            None,
        );
    }
    let as_of = usage.polled_at().map_or_else(
        || "not read from OpenAI yet".to_owned(),
        |at| {
            let age = now.duration_since(clock::from_unix(at)).unwrap_or_default();
            format!("as OpenAI reported {} ago", clock::humanize(age))
        },
    );
    let budget = if grant.budget.tokens_per_day > 0 {
        format!(
            " of your budget of {} a day",
            crate::usage::thousands(grant.budget.tokens_per_day)
        )
    } else {
        String::new()
    };
    let mut line = format!(
        "Your keys used {}{budget} today (UTC), {as_of}.",
        tokens_text(usage.of_owner(&grant.owner, now))
    );
    if !usage.prices().is_empty() {
        let spend = usage.spend_of_owner(&grant.owner, now);
        line.push_str(&format!(" This month: about ${:.2}", spend.estimated));
        if grant.budget.cents_per_month > 0 {
            line.push_str(&format!(
                " of your {}",
                crate::usage::dollars(grant.budget.cents_per_month)
            ));
        }
        line.push_str(" (estimated from prices)");
        if let Some(billed) = spend.billed {
            line.push_str(&format!("; OpenAI's costs so far: ${billed:.2}"));
        }
        line.push('.');
    }
    let over = usage
        .over_budget(&grant.owner, grant.budget, now)
        .map(|over| {
            let when = match over.unit {
                crate::usage::Unit::TokensToday => "midnight",
                crate::usage::Unit::CentsThisMonth => "the month's end",
            };
            format!(
                "Your budget is spent ({}): new keys are refused until {when} UTC (in {}){}.",
                over.describe(),
                clock::humanize(clock::until(over.resets_at, now)),
                if grant.budget.revoke {
                    ", and your live keys were revoked"
                } else {
                    ""
                }
            )
        });
    (Some(line), over)
}

/// What a page says when OpenAI did not list the keys in time.
pub(super) fn stale_notice() -> String {
    "OpenAI did not answer in time, so this list may be out of date: keys made or revoked through another server in the last moments may be missing or still shown. Reload in a little while.".to_owned()
}

/// `?account=choose` on `/`: sign in with another account.
#[derive(Deserialize, Default)]
pub(super) struct Home {
    account: Option<String>,
    /// The issuer to sign in through, when there are several.
    issuer: Option<String>,
}

/// `/`: my keys with a session; otherwise, and when asked to choose
/// another account, a sign-in.
pub(super) async fn home(
    State(state): State<AppState>,
    MaybeSignedIn(signed_in): MaybeSignedIn,
    Query(home): Query<Home>,
    headers: HeaderMap,
    jar: PrivateCookieJar,
) -> Result<Response, HttpError> {
    let choose_account = home.account.as_deref() == Some("choose");
    match signed_in {
        Some(signed_in) if !choose_account => {
            keys_page(&state, &signed_in, None, StatusCode::OK).await
        }
        _ => {
            let start = login::Start::home(choose_account).through(home.issuer);
            login::start(&state, &headers, jar, start).await
        }
    }
}

/// The fields of the new-key form.
#[derive(Deserialize)]
pub(super) struct NewKey {
    /// The form's one-time value.
    form: String,
}

/// `POST /keys`: a new key, shown once. The same form sent again (a reload,
/// the back button, a second click) mints nothing and says the key was
/// shown; at the cap, my keys with a word on what to do.
pub(super) async fn new_key(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    Form { signed_in, fields }: Form<NewKey>,
) -> Result<(PrivateCookieJar, Response), HttpError> {
    let now = state.clock.now();
    match state
        .issuance
        .issue_once(&signed_in.identity, &fields.form, &signed_in.spent, now)
        .await
    {
        Ok(issued) => {
            let jar = super::session::spend(&state, jar, &fields.form, now);
            Ok((jar, key_page(signed_in.grant.owner.as_str(), &issued, now)?))
        }
        Err(issuance::Error::FormSpent) => Err(HttpError::KeyShownOnce),
        Err(issuance::Error::CapReached {
            cap, retry_after, ..
        }) => Ok((jar, at_cap(&state, &signed_in, cap, retry_after).await?)),
        Err(error) => Err(error.into()),
    }
}

/// My keys for a person at the cap (429, with `Retry-After` until the
/// oldest expires), with a word on what to do: revoke one, or wait.
pub(super) async fn at_cap(
    state: &AppState,
    signed_in: &SignedIn,
    cap: usize,
    oldest_expires_in: Duration,
) -> Result<Response, HttpError> {
    let notice = format!(
        "You already hold {cap} live keys, the most one person may hold. Revoke one below to get a new one now, or wait: the oldest expires in {}.",
        clock::humanize(oldest_expires_in)
    );
    let mut response = keys_page(
        state,
        signed_in,
        Some(notice),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await?;
    let seconds = oldest_expires_in.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Ok(response)
}

/// `POST /keys/{service_account_id}/revoke`: deletes one of my keys at
/// once, and back to my keys.
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(service_account_id): Path<String>,
    Form { signed_in, .. }: Form<serde::de::IgnoredAny>,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    state
        .issuance
        .revoke(&signed_in.identity, &service_account_id, now)
        .await?;
    Ok(Redirect::to("/").into_response())
}

/// `POST /logout`: ends the session.
pub(super) async fn logout(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    _: super::session::SignOut,
) -> Result<(PrivateCookieJar, Response), HttpError> {
    let jar = super::session::end(&state, jar);
    let page = Html(SignedOutPage.render()?).into_response();
    Ok((jar, no_store(page)))
}
