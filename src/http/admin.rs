//! The admin page: every live key of this server by owner, and revoking
//! one, every key of one person (offboarding), or every key (break-glass).
//! Who is an admin is the issuance core's decision; each handler extracts,
//! calls it, renders.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::me::Row;
use super::session::{Form, SignedIn};
use super::{AppState, HttpError};
use crate::identity;

/// One person's keys on the admin page.
struct Owner {
    email: String,
    keys: Vec<Row>,
}

/// One holder's usage today on the admin page.
struct Holder {
    owner: String,
    used: String,
    /// Their budget as this replica last saw it, in words.
    budget: String,
    /// Spent (and not lifted).
    over: bool,
    /// Lifted until (UTC text).
    lifted_until: Option<String>,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage<'a> {
    admin: &'a str,
    csrf: &'a str,
    project_id: String,
    notice: Option<String>,
    /// `REVOKE_ENDPOINT=admin`: the admin page offers the cleanup.
    cleanup_button: bool,
    owners: Vec<Owner>,
    /// Keys live in more than one project: each row says which.
    several_projects: bool,
    /// Usage is read: rows and the usage table show it.
    usage_shown: bool,
    /// Every holder whose keys used anything today.
    holders: Vec<Holder>,
    /// Whether usage has been read from OpenAI yet.
    usage_read: bool,
}

/// `GET /admin`: every live key, by owner.
pub(super) async fn page(
    State(state): State<AppState>,
    signed_in: SignedIn,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    let listed = state.issuance.list_all(&signed_in.identity, now).await?;
    let (keys, project_id) = listed.keys;
    let several_projects = keys.iter().any(|k| k.project_id != project_id);
    let mut by_owner: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for key in keys {
        by_owner
            .entry(key.owner.to_string())
            .or_default()
            .push(Row::of(key, now, state.issuance.usage()));
    }
    let usage = state.issuance.usage();
    let holders = usage
        .holders(now)
        .into_iter()
        .map(|(owner, tokens)| {
            let budget = usage
                .budget_of(&owner)
                .filter(crate::access::Budget::is_set);
            let mut used = super::me::tokens_text(tokens);
            if !usage.prices().is_empty() {
                let spend = usage.spend_of_owner(&owner, now);
                used.push_str(&format!("; about ${:.2} this month", spend.estimated));
                if let Some(billed) = spend.billed {
                    used.push_str(&format!(" (OpenAI: ${billed:.2})"));
                }
            }
            Holder {
                used,
                budget: budget.map_or_else(|| "none".to_owned(), |b| b.amounts()),
                over: budget.is_some_and(|b| usage.over_budget(&owner, b, now).is_some()),
                lifted_until: usage
                    .lifted_until(&owner, now)
                    .map(|until| super::me::Shown::at(until).utc),
                owner: owner.to_string(),
            }
        })
        .collect();
    let page = AdminPage {
        usage_shown: usage.interval().is_some(),
        usage_read: usage.polled_at().is_some(),
        holders,
        admin: signed_in.grant.owner.as_str(),
        csrf: &signed_in.csrf,
        project_id,
        notice: (!listed.fresh).then(super::me::stale_notice),
        cleanup_button: state.revoke_endpoint == crate::config::RevokeEndpoint::Admin,
        several_projects,
        owners: by_owner
            .into_iter()
            .map(|(email, keys)| Owner { email, keys })
            .collect(),
    };
    Ok(super::me::no_store(Html(page.render()?).into_response()))
}

/// `POST /admin/keys/{service_account_id}/revoke`: any key of this server.
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(service_account_id): Path<String>,
    Form { signed_in, .. }: Form<serde::de::IgnoredAny>,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    state
        .issuance
        .admin_revoke(&signed_in.identity, &service_account_id, now)
        .await?;
    Ok(Redirect::to("/admin").into_response())
}

/// The offboarding form.
#[derive(Deserialize)]
pub(super) struct RevokeOwner {
    owner: String,
}

/// `POST /admin/revoke-owner`: every key of one person or workload.
pub(super) async fn revoke_owner(
    State(state): State<AppState>,
    Form { signed_in, fields }: Form<RevokeOwner>,
) -> Result<Response, HttpError> {
    let owner = identity::Owner::parse(fields.owner.trim()).map_err(|_| HttpError::BadForm)?;
    let now = state.clock.now();
    state
        .issuance
        .revoke_all_of(&signed_in.identity, &owner, now)
        .await?;
    Ok(Redirect::to("/admin").into_response())
}

/// `POST /admin/lift-budget`: one holder's budget lifted until midnight
/// UTC (on the replica that answers; see README "Budgets").
pub(super) async fn lift_budget(
    State(state): State<AppState>,
    Form { signed_in, fields }: Form<RevokeOwner>,
) -> Result<Response, HttpError> {
    let owner = identity::Owner::parse(fields.owner.trim()).map_err(|_| HttpError::BadForm)?;
    let now = state.clock.now();
    state
        .issuance
        .lift_budget(&signed_in.identity, &owner, now)?;
    Ok(Redirect::to("/admin").into_response())
}

/// The break-glass form.
#[derive(Deserialize)]
pub(super) struct RevokeAll {
    confirm: String,
}

/// `POST /admin/revoke-all`: every key this server issued, confirmed by
/// typing the project id.
pub(super) async fn revoke_all(
    State(state): State<AppState>,
    Form { signed_in, fields }: Form<RevokeAll>,
) -> Result<Response, HttpError> {
    let now = state.clock.now();
    state
        .issuance
        .revoke_everything(&signed_in.identity, &fields.confirm, now)
        .await?;
    Ok(Redirect::to("/admin").into_response())
}
