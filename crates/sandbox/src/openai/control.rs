//! The test-control API under `/_sandbox` (loopback only, no auth): the
//! shared virtual clock, knobs, the fault plan, counters, seeding and a dump
//! of the state.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::control_body;
use super::{
    ApiVersion, FakeOpenAi, Fault, FaultKind, ProjectView, SeedAccount, ServiceAccountView,
};
use crate::clock::Clock;

type Answer = Result<Json<Value>, ApiError>;

/// The control routes.
pub(super) fn routes(clock: Clock) -> Router<FakeOpenAi> {
    Router::new()
        .merge(crate::clock::router(clock))
        .route("/_sandbox/openai/counters", get(counters))
        .route("/_sandbox/openai/journal", get(journal))
        .route("/_sandbox/openai/reset-counters", post(reset_counters))
        .route(
            "/_sandbox/openai/config",
            get(settings).post(change_settings),
        )
        .route(
            "/_sandbox/openai/faults",
            get(faults).post(push_faults).delete(clear_faults),
        )
        .route("/_sandbox/openai/seed", post(seed))
        .route("/_sandbox/openai/projects", post(create_project))
        .route("/_sandbox/openai/key-status", post(key_status))
        .route("/_sandbox/openai/usage", post(add_usage))
        .route("/_sandbox/openai/state", get(state))
}

/// Counters as the control API shows them.
#[derive(Debug, Serialize)]
struct Counters {
    counters: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    total: u64,
    rate_limited: u64,
}

async fn counters(State(fake): State<FakeOpenAi>) -> Json<Counters> {
    let journal = fake.journal();
    Json(Counters {
        counters: journal.counters(),
        by_status: journal.by_status(),
        total: journal.total(),
        rate_limited: fake.rate_limited(),
    })
}

/// Every recorded request: method, path, query, route, status, body,
/// the hash of the `Authorization` header and the request id.
async fn journal(State(fake): State<FakeOpenAi>) -> Json<Value> {
    Json(json!({ "entries": fake.journal().entries() }))
}

async fn reset_counters(State(fake): State<FakeOpenAi>) -> Json<Value> {
    fake.reset_counters();
    Json(json!({ "reset": true }))
}

/// The run-time settings, as `GET /_sandbox/openai/config` shows them.
#[derive(Debug, Serialize)]
struct Settings {
    version: ApiVersion,
    scope_error_status: u16,
    max_key_lifetime_secs: Option<u64>,
    latency_ms: u64,
    jitter_ms: u64,
    rate_limit_per_s: Option<f64>,
    rate_limit_burst: Option<f64>,
}

fn current_settings(fake: &FakeOpenAi) -> Settings {
    let knobs = fake.knobs();
    Settings {
        version: knobs.version,
        scope_error_status: knobs.scope_error_status.as_u16(),
        max_key_lifetime_secs: knobs.max_key_lifetime_secs,
        latency_ms: u64::try_from(knobs.latency.as_millis()).unwrap_or(u64::MAX),
        jitter_ms: u64::try_from(knobs.jitter.as_millis()).unwrap_or(u64::MAX),
        rate_limit_per_s: knobs.rate_limit.as_ref().map(|b| b.rate),
        rate_limit_burst: knobs.rate_limit.as_ref().map(|b| b.burst),
    }
}

async fn settings(State(fake): State<FakeOpenAi>) -> Json<Settings> {
    Json(current_settings(&fake))
}

/// Tells a field sent as `null` (`Some(None)`) from an absent one (`None`).
fn explicit<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A partial change of the settings; absent fields stay, `null` lifts the
/// nullable ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsChange {
    version: Option<ApiVersion>,
    scope_error_status: Option<u16>,
    #[serde(default, deserialize_with = "explicit")]
    max_key_lifetime_secs: Option<Option<u64>>,
    latency_ms: Option<u64>,
    jitter_ms: Option<u64>,
    #[serde(default, deserialize_with = "explicit")]
    rate_limit_per_s: Option<Option<f64>>,
    #[serde(default, deserialize_with = "explicit")]
    rate_limit_burst: Option<Option<f64>>,
}

fn positive(name: &str, value: Option<Option<f64>>) -> Result<(), ApiError> {
    match value {
        Some(Some(v)) if !(v.is_finite() && v > 0.0) => {
            Err(ApiError::bad_request(format!("{name} must be a positive number")).param(name))
        }
        _ => Ok(()),
    }
}

async fn change_settings(
    State(fake): State<FakeOpenAi>,
    body: Bytes,
) -> Result<Json<Settings>, ApiError> {
    let change: SettingsChange = control_body(&body)?;
    if let Some(status) = change.scope_error_status
        && status != 401
        && status != 403
    {
        return Err(
            ApiError::bad_request("scope_error_status must be 401 or 403")
                .param("scope_error_status"),
        );
    }
    positive("rate_limit_per_s", change.rate_limit_per_s)?;
    positive("rate_limit_burst", change.rate_limit_burst)?;

    if let Some(version) = change.version {
        fake.set_version(version);
    }
    if let Some(status) = change.scope_error_status {
        fake.set_scope_error_status(status);
    }
    if let Some(max) = change.max_key_lifetime_secs {
        fake.set_max_key_lifetime(max);
    }
    if change.latency_ms.is_some() || change.jitter_ms.is_some() {
        let before = current_settings(&fake);
        fake.set_latency(
            Duration::from_millis(change.latency_ms.unwrap_or(before.latency_ms)),
            Duration::from_millis(change.jitter_ms.unwrap_or(before.jitter_ms)),
        );
    }
    if change.rate_limit_per_s.is_some() || change.rate_limit_burst.is_some() {
        let before = current_settings(&fake);
        let rate = change.rate_limit_per_s.unwrap_or(before.rate_limit_per_s);
        let burst = change.rate_limit_burst.unwrap_or(before.rate_limit_burst);
        fake.set_rate_limit_with_burst(rate, burst);
    }
    Ok(Json(current_settings(&fake)))
}

async fn faults(State(fake): State<FakeOpenAi>) -> Json<Vec<Fault>> {
    Json(fake.faults())
}

/// One rule or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Fault),
    Many(Vec<Fault>),
}

fn check_fault(fault: &Fault) -> Result<(), ApiError> {
    if fault.count == 0 {
        return Err(ApiError::bad_request("a fault's count must be at least 1").param("count"));
    }
    let status = match fault.kind {
        FaultKind::Status { status, .. } | FaultKind::CommitThenFail { status } => status,
        FaultKind::Delay { .. }
        | FaultKind::DelayAnswer { .. }
        | FaultKind::Hang
        | FaultKind::MalformedJson
        | FaultKind::CommitThenHang
        | FaultKind::Oversized { .. } => 200,
    };
    if !(100..=599).contains(&status) {
        return Err(
            ApiError::bad_request(format!("{status} is not an HTTP status")).param("status"),
        );
    }
    Ok(())
}

async fn push_faults(
    State(fake): State<FakeOpenAi>,
    body: Bytes,
) -> Result<Json<Vec<Fault>>, ApiError> {
    let faults = match control_body::<OneOrMany>(&body)? {
        OneOrMany::One(fault) => vec![fault],
        OneOrMany::Many(faults) => faults,
    };
    faults.iter().try_for_each(check_fault)?;
    faults.into_iter().for_each(|f| fake.push_fault(f));
    Ok(Json(fake.faults()))
}

async fn clear_faults(State(fake): State<FakeOpenAi>) -> Json<Vec<Fault>> {
    fake.clear_faults();
    Json(fake.faults())
}

/// `{"project_id": "proj_…" (default project when absent), "accounts": [SeedAccount…]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    project_id: Option<String>,
    accounts: Vec<SeedAccount>,
}

async fn seed(State(fake): State<FakeOpenAi>, body: Bytes) -> Answer {
    let seed: Seed = control_body(&body)?;
    let project_id = seed.project_id.unwrap_or_else(|| fake.default_project_id());
    let accounts = fake.seed_service_accounts(&project_id, seed.accounts)?;
    Ok(Json(
        json!({ "project_id": project_id, "accounts": accounts }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
}

async fn create_project(
    State(fake): State<FakeOpenAi>,
    body: Bytes,
) -> Result<Json<Option<ProjectView>>, ApiError> {
    let new: NewProject = control_body(&body)?;
    let id = fake.create_project(&new.name);
    Ok(Json(fake.project(&id)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyStatus {
    value: String,
}

async fn key_status(State(fake): State<FakeOpenAi>, body: Bytes) -> Answer {
    let status: KeyStatus = control_body(&body)?;
    Ok(Json(json!({ "live": fake.key_is_live(&status.value) })))
}

/// Usage to record against a key, as its model requests would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUsage {
    /// The key's value.
    key: String,
    #[serde(default = "default_model")]
    model: String,
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

fn default_model() -> String {
    "gpt-4o-mini".to_owned()
}

async fn add_usage(State(fake): State<FakeOpenAi>, body: Bytes) -> Answer {
    let usage: AddUsage = control_body(&body)?;
    if !fake.add_usage(
        &usage.key,
        &usage.model,
        usage.input_tokens,
        usage.output_tokens,
    ) {
        return Err(ApiError::not_found("no key has that value"));
    }
    Ok(Json(json!({ "recorded": true })))
}

/// A project with its accounts, for the state dump.
#[derive(Debug, Serialize)]
struct ProjectDump {
    #[serde(flatten)]
    project: ProjectView,
    service_accounts: Vec<ServiceAccountView>,
}

async fn state(State(fake): State<FakeOpenAi>) -> Json<Value> {
    let projects: Vec<ProjectDump> = fake
        .projects()
        .into_iter()
        .map(|project| ProjectDump {
            service_accounts: fake.service_accounts(&project.id),
            project,
        })
        .collect();
    let admin_keys: Vec<Value> = fake
        .world()
        .admin_keys()
        .iter()
        .map(|k| {
            json!({
                "id": k.id,
                "name": k.name,
                "redacted_value": k.redacted,
                "created_at": k.created_at,
                "expires_at": k.expires_at,
                "last_used_at": k.last_used_at,
            })
        })
        .collect();
    Json(json!({
        "organization_id": fake.organization_id(),
        "default_project_id": fake.default_project_id(),
        "admin_keys": admin_keys,
        "settings": current_settings(&fake),
        "faults": fake.faults(),
        "projects": projects,
    }))
}
