//! The `/v1` endpoints: projects, service accounts, their keys, and
//! `/v1/models` and `/v1/chat/completions` as the stand-ins for the public
//! API that issued keys call.

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::{Ids, JsonBody, OptionalJsonBody, PageParams, QueryParams};
use super::state::{Account, AdminKey, Issued, Key, NewKey, Owner, Project, Role, Use};
use super::{ApiVersion, FakeOpenAi};

/// Longest key lifetime the API accepts: 365 days.
const MAX_EXPIRES_IN: i64 = 31_536_000;
/// Name the API gives a service account's first key.
const DEFAULT_KEY_NAME: &str = "Secret Key";
/// Scopes that allow `GET /v1/models`.
const MODEL_READ_SCOPES: [&str; 3] = ["api.model.read", "model.read", "api.all.read"];
/// Scopes that allow model requests (`POST /v1/chat/completions`): "Model
/// capabilities: Request" and its legacy alias (the spec's section 5).
const MODEL_REQUEST_SCOPES: [&str; 2] = ["api.model.request", "model.request"];

type Answer = Result<Json<Value>, ApiError>;

/// Every `/v1` route with its methods.
pub(super) fn routes() -> Router<FakeOpenAi> {
    const PROJECTS: &str = "/v1/organization/projects";
    const PROJECT: &str = "/v1/organization/projects/{project_id}";
    const ACCOUNTS: &str = "/v1/organization/projects/{project_id}/service_accounts";
    const ACCOUNT: &str =
        "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}";
    const KEYS: &str = "/v1/organization/projects/{project_id}/api_keys";
    Router::new()
        .route(PROJECTS, get(list_projects).post(create_project))
        .route(PROJECT, get(retrieve_project).post(modify_project))
        .route(&format!("{PROJECT}/archive"), post(archive_project))
        .route(ACCOUNTS, get(list_accounts).post(create_account))
        .route(
            ACCOUNT,
            get(retrieve_account)
                .post(update_account)
                .delete(delete_account),
        )
        .route(&format!("{ACCOUNT}/api_keys"), post(create_account_key))
        .route(KEYS, get(list_keys))
        .route(
            &format!("{KEYS}/{{api_key_id}}"),
            get(retrieve_key).post(update_key).delete(delete_key),
        )
        .route(
            "/v1/organization/admin_api_keys",
            get(list_admin_keys).post(create_admin_key),
        )
        .route(
            "/v1/organization/admin_api_keys/{key_id}",
            get(retrieve_admin_key).delete(delete_admin_key),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat_completion))
        .route(
            "/v1/organization/usage/completions",
            get(super::usage::completions),
        )
        .route("/v1/organization/costs", get(super::usage::costs))
}

/// 404 `Invalid URL (METHOD /path)` for every path not served.
pub(super) async fn invalid_url(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid_url(&method, uri.path())
}

/// 405 for a served path with the wrong method.
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(&method, uri.path())
}

/// The bearer key of a request; 401 "You didn't provide an API key" when
/// there is none.
fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::missing_api_key());
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let value = value.trim();
    let key = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        // Not bearer auth at all: the real API treats it as no key.
        _ => return Err(ApiError::missing_api_key()),
    };
    if key.is_empty() {
        return Err(ApiError::missing_api_key());
    }
    Ok(key.to_owned())
}

/// Proof that the request carries the admin key. Taking it as the first
/// argument makes a handler unreachable without one.
#[derive(Debug)]
pub(super) struct Admin;

impl FromRequestParts<FakeOpenAi> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, fake: &FakeOpenAi) -> Result<Self, ApiError> {
        let key = bearer(&parts.headers)?;
        let now = fake.now();
        let mut world = fake.world();
        if world.authenticate_admin(&key, now) {
            return Ok(Self);
        }
        if world.live_key(&key, now).is_some() {
            // An issued key is real but may not manage the organisation.
            return Err(ApiError::missing_scope(
                fake.scope_error_status(),
                "api.management.read",
            ));
        }
        Err(ApiError::invalid_api_key(&key))
    }
}

/// Proof that the fake acts as the current API version: the older one has
/// no key-update endpoint at all, so there it is an unknown URL (before
/// authentication, like any unknown URL).
#[derive(Debug)]
struct CurrentOnly;

impl FromRequestParts<FakeOpenAi> for CurrentOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, fake: &FakeOpenAi) -> Result<Self, ApiError> {
        match fake.version() {
            ApiVersion::Current => Ok(Self),
            ApiVersion::Legacy => Err(ApiError::invalid_url(&parts.method, parts.uri.path())),
        }
    }
}

fn list(items: Vec<Value>, has_more: bool) -> Value {
    let first_id = items
        .first()
        .map(|i| i["id"].clone())
        .unwrap_or(Value::Null);
    let last_id = items.last().map(|i| i["id"].clone()).unwrap_or(Value::Null);
    json!({
        "object": "list",
        "data": items,
        "first_id": first_id,
        "last_id": last_id,
        "has_more": has_more,
    })
}

fn deleted(object: &str, id: &str) -> Value {
    json!({ "object": object, "id": id, "deleted": true })
}

fn project_json(p: &Project) -> Value {
    let mut value = json!({
        "id": p.id,
        "object": "organization.project",
        "name": p.name,
        "created_at": p.created_at,
        "archived_at": p.archived_at,
        "status": if p.archived_at.is_some() { "archived" } else { "active" },
        "external_key_id": p.external_key_id,
    });
    if let Some(residency) = &p.residency {
        value["residency"] = json!(residency);
    }
    value
}

fn account_json(a: &Account) -> Value {
    json!({
        "object": "organization.project.service_account",
        "id": a.id,
        "name": a.name,
        "role": a.role.as_str(),
        "created_at": a.created_at,
    })
}

/// Adds `expires_at` where the version has it.
fn with_expiry(mut value: Value, expires_at: Option<i64>, version: ApiVersion) -> Value {
    if version == ApiVersion::Current {
        value["expires_at"] = json!(expires_at);
    }
    value
}

fn key_json(k: &Key, owner: &Account, version: ApiVersion) -> Value {
    let value = json!({
        "object": "organization.project.api_key",
        "id": k.id,
        "name": k.name,
        "redacted_value": k.redacted,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "owner_project_access": "active",
        "owner": {
            "type": "service_account",
            "service_account": {
                "id": owner.id,
                "name": owner.name,
                "created_at": owner.created_at,
                "role": owner.role.as_str(),
            },
        },
    });
    with_expiry(value, k.expires_at, version)
}

fn issued_json(issued: &Issued, version: ApiVersion) -> Value {
    let value = json!({
        "object": "organization.project.service_account.api_key",
        "id": issued.key.id,
        "name": issued.key.name,
        "value": issued.value,
        "created_at": issued.key.created_at,
    });
    with_expiry(value, issued.key.expires_at, version)
}

/// The fields a key-creating body may carry in this version.
fn key_fields<'a>(version: ApiVersion, fields: &[&'a str]) -> Vec<&'a str> {
    let mut allowed = fields.to_vec();
    if version == ApiVersion::Current {
        allowed.push("expires_in_seconds");
    }
    allowed
}

async fn list_projects(_: Admin, State(fake): State<FakeOpenAi>, query: QueryParams) -> Answer {
    let page = query.page()?;
    let include_archived = query.flag("include_archived")?;
    let world = fake.world();
    let page = world
        .projects()
        .page(&page, |p| include_archived || p.archived_at.is_none())?;
    let items = page.items.iter().map(|p| project_json(p)).collect();
    Ok(Json(list(items, page.has_more)))
}

async fn create_project(_: Admin, State(fake): State<FakeOpenAi>, body: JsonBody) -> Answer {
    body.allow_only(&["name", "external_key_id", "residency", "geography"])?;
    let name = body.non_empty_string("name")?.required("name")?;
    let external_key_id = body.string("external_key_id")?.into_option();
    let residency = body.non_empty_string("residency")?.into_option();
    let geography = body.string("geography")?.into_option();
    if residency.is_some() && geography.is_some() {
        return Err(ApiError::bad_request(
            "'geography' is deprecated and cannot be sent together with 'residency'.",
        )
        .param("geography"));
    }
    let now = fake.now();
    let mut world = fake.world();
    let project = world.create_project(name, external_key_id, residency, now);
    Ok(Json(project_json(project)))
}

async fn retrieve_project(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
) -> Answer {
    Ok(Json(project_json(fake.world().project(&project_id)?)))
}

async fn modify_project(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
    body: JsonBody,
) -> Answer {
    body.allow_only(&["name", "external_key_id", "geography"])?;
    let name = body.non_empty_string("name")?.into_option();
    let external_key_id = body.string("external_key_id")?;
    body.string("geography")?;
    let mut world = fake.world();
    let project = world.modify_project(&project_id, name, external_key_id)?;
    Ok(Json(project_json(project)))
}

async fn archive_project(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Answer {
    body.allow_only(&[])?;
    let now = fake.now();
    let mut world = fake.world();
    Ok(Json(project_json(world.archive_project(&project_id, now)?)))
}

async fn list_accounts(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
    query: QueryParams,
) -> Answer {
    let page = query.page()?;
    let world = fake.world();
    let project = world.active_project(&project_id, Use::ServiceAccounts)?;
    let page = project.accounts.page(&page, |_| true)?;
    let items = page.items.iter().map(|a| account_json(a)).collect();
    Ok(Json(list(items, page.has_more)))
}

async fn create_account(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
    body: JsonBody,
) -> Answer {
    let version = fake.version();
    body.allow_only(&key_fields(
        version,
        &["name", "create_service_account_only"],
    ))?;
    let name = body.non_empty_string("name")?.required("name")?;
    let account_only = body
        .boolean("create_service_account_only")?
        .into_option()
        .unwrap_or(false);
    let expires_in = body
        .integer("expires_in_seconds", 1, MAX_EXPIRES_IN)?
        .into_option();
    let now = fake.now();
    let key = if account_only {
        if expires_in.is_some() {
            return Err(ApiError::bad_request(
                "'expires_in_seconds' cannot be set when 'create_service_account_only' is \
                 true: no API key is created.",
            )
            .param("expires_in_seconds"));
        }
        None
    } else {
        fake.check_key_lifetime(expires_in)?;
        Some(NewKey {
            name: DEFAULT_KEY_NAME.to_owned(),
            scopes: Vec::new(),
            created_at: now,
            expires_at: expires_in.map(|secs| now + secs),
        })
    };
    let role = if account_only {
        Role::None
    } else {
        Role::Member
    };
    let (account, issued) = fake
        .world()
        .create_account(&project_id, name, role, key, now)?;
    let mut value = account_json(&account);
    value["api_key"] = issued.map_or(Value::Null, |i| issued_json(&i, version));
    Ok(Json(value))
}

async fn retrieve_account(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, account_id)): Ids<(String, String)>,
) -> Answer {
    Ok(Json(account_json(
        fake.world().account(&project_id, &account_id)?,
    )))
}

async fn update_account(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, account_id)): Ids<(String, String)>,
    body: JsonBody,
) -> Answer {
    body.allow_only(&["name", "role"])?;
    let name = body
        .non_empty_string("name")?
        .not_null("name", "a string")?;
    let role = match body
        .one_of("role", &["member", "owner"])?
        .not_null("role", "a string")?
        .as_deref()
    {
        Some("owner") => Some(Role::Owner),
        Some(_) => Some(Role::Member),
        None => None,
    };
    let mut world = fake.world();
    let account = world.update_account(&project_id, &account_id, name, role)?;
    Ok(Json(account_json(account)))
}

async fn delete_account(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, account_id)): Ids<(String, String)>,
) -> Answer {
    fake.world().delete_account(&project_id, &account_id)?;
    Ok(Json(deleted(
        "organization.project.service_account.deleted",
        &account_id,
    )))
}

async fn create_account_key(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, account_id)): Ids<(String, String)>,
    body: JsonBody,
) -> Answer {
    let version = fake.version();
    body.allow_only(&key_fields(version, &["name", "scopes"]))?;
    let name = body
        .non_empty_string("name")?
        .into_option()
        .unwrap_or_else(|| DEFAULT_KEY_NAME.to_owned());
    let scopes = body.strings("scopes")?.into_option().unwrap_or_default();
    let expires_in = body
        .integer("expires_in_seconds", 1, MAX_EXPIRES_IN)?
        .into_option();
    fake.check_key_lifetime(expires_in)?;
    let now = fake.now();
    let issued = fake.world().create_key(
        &project_id,
        &account_id,
        NewKey {
            name,
            scopes,
            created_at: now,
            expires_at: expires_in.map(|secs| now + secs),
        },
    )?;
    Ok(Json(issued_json(&issued, version)))
}

async fn list_keys(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(project_id): Ids<String>,
    query: QueryParams,
) -> Answer {
    let page = query.page()?;
    // Every key here belongs to a service account that is a member of the
    // project, so "inactive" owners never match.
    let access = query.one_of("owner_project_access", &["active", "inactive", "any"])?;
    let want_active = access != Some("inactive");
    let version = fake.version();
    let world = fake.world();
    let project = world.active_project(&project_id, Use::ApiKeys)?;
    let page = project.keys.page(&page, |_| want_active)?;
    let items = page
        .items
        .iter()
        .filter_map(|k| {
            let owner = project.accounts.get(&k.owner)?;
            Some(key_json(k, owner, version))
        })
        .collect();
    Ok(Json(list(items, page.has_more)))
}

async fn retrieve_key(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, key_id)): Ids<(String, String)>,
) -> Answer {
    let version = fake.version();
    let world = fake.world();
    let (key, owner) = world.key(&project_id, &key_id)?;
    Ok(Json(key_json(key, owner, version)))
}

async fn update_key(
    _: CurrentOnly,
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, key_id)): Ids<(String, String)>,
    body: JsonBody,
) -> Answer {
    let version = fake.version();
    body.allow_only(&["scopes", "expires_in_seconds"])?;
    let scopes = body.strings("scopes")?.not_null("scopes", "an array")?;
    let expires_in = body
        .integer("expires_in_seconds", 1, MAX_EXPIRES_IN)?
        .not_null("expires_in_seconds", "an integer")?;
    if scopes.is_none() && expires_in.is_none() {
        return Err(ApiError::bad_request(
            "At least one of 'scopes' or 'expires_in_seconds' must be provided.",
        ));
    }
    if expires_in.is_some() {
        fake.check_key_lifetime(expires_in)?;
    }
    let now = fake.now();
    let mut world = fake.world();
    world.update_key(
        &project_id,
        &key_id,
        scopes,
        expires_in.map(|secs| now + secs),
        now,
    )?;
    let (key, owner) = world.key(&project_id, &key_id)?;
    Ok(Json(key_json(key, owner, version)))
}

async fn delete_key(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids((project_id, key_id)): Ids<(String, String)>,
) -> Answer {
    let version = fake.version();
    let mut world = fake.world();
    if version == ApiVersion::Legacy {
        // Every key here is owned by a service account, which the older
        // API refuses to delete this way.
        world.key(&project_id, &key_id)?;
        return Err(ApiError::bad_request(
            "API keys owned by a service account cannot be deleted; delete the service \
             account instead.",
        ));
    }
    world.delete_key(&project_id, &key_id)?;
    Ok(Json(deleted(
        "organization.project.api_key.deleted",
        &key_id,
    )))
}

fn admin_key_json(k: &AdminKey, owner: &Owner) -> Value {
    json!({
        "object": "organization.admin_api_key",
        "id": k.id,
        "name": k.name,
        "redacted_value": k.redacted,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "expires_at": k.expires_at,
        "owner": {
            "type": "user",
            "object": "organization.user",
            "id": owner.id,
            "name": owner.name,
            "created_at": owner.created_at,
            "role": "owner",
        },
    })
}

// Admin keys (§4.16) are the same in both API versions: the older spec
// already has `expires_at` on them.

async fn list_admin_keys(_: Admin, State(fake): State<FakeOpenAi>, query: QueryParams) -> Answer {
    // No maximum `limit` is documented here; the 1..=100 of every other
    // list is the stricter reading.
    let page: PageParams = query.page()?;
    let descending = query.one_of("order", &["asc", "desc"])? == Some("desc");
    let world = fake.world();
    let page = world
        .admin_keys()
        .page_in_order(&page, |_| true, descending)?;
    let owner = world.owner();
    let items = page
        .items
        .iter()
        .map(|k| admin_key_json(k, owner))
        .collect();
    Ok(Json(list(items, page.has_more)))
}

async fn create_admin_key(_: Admin, State(fake): State<FakeOpenAi>, body: JsonBody) -> Answer {
    body.allow_only(&["name", "expires_in_seconds"])?;
    let name = body.non_empty_string("name")?.required("name")?;
    let expires_in = body
        .integer("expires_in_seconds", 1, MAX_EXPIRES_IN)?
        .into_option();
    // Whether the organisation's expiry policy covers admin keys too is
    // undocumented; the stricter reading applies it.
    fake.check_key_lifetime(expires_in)?;
    let now = fake.now();
    let mut world = fake.world();
    let (key, value) = world.create_admin_key(name, now, expires_in.map(|secs| now + secs));
    let mut answer = admin_key_json(&key, world.owner());
    answer["value"] = json!(value);
    Ok(Json(answer))
}

async fn retrieve_admin_key(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(key_id): Ids<String>,
) -> Answer {
    let world = fake.world();
    let key = world.admin_key(&key_id)?;
    Ok(Json(admin_key_json(key, world.owner())))
}

async fn delete_admin_key(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    Ids(key_id): Ids<String>,
) -> Answer {
    fake.world().delete_admin_key(&key_id)?;
    Ok(Json(deleted("organization.admin_api_key.deleted", &key_id)))
}

const MODELS: [(&str, i64); 3] = [
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4o", 1_715_367_049),
    ("text-embedding-3-small", 1_705_948_997),
];

fn model_json(id: &str, created: i64) -> Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": "system" })
}

/// Lets through a live issued key allowed to read models, and records its
/// use. Admin keys cannot call non-admin endpoints; the real answer is
/// undocumented, so this gives the same 401 as for an unknown key.
fn authorize_model_read(fake: &FakeOpenAi, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize_key(fake, headers, &MODEL_READ_SCOPES)
}

/// Lets through a live issued key whose scopes include one of `allowed`
/// (an unrestricted key has none and may do anything its role allows).
fn authorize_key(fake: &FakeOpenAi, headers: &HeaderMap, allowed: &[&str]) -> Result<(), ApiError> {
    let key = bearer(headers)?;
    let now = fake.now();
    let mut world = fake.world();
    let Some(live) = world.live_key(&key, now) else {
        return Err(ApiError::invalid_api_key(&key));
    };
    let scoped_out = !live.key.scopes.is_empty()
        && !live
            .key
            .scopes
            .iter()
            .any(|s| allowed.contains(&s.as_str()));
    // An account without a role (`create_service_account_only`, never
    // granted `member`) may do nothing with its keys.
    if scoped_out || live.account.role == Role::None {
        return Err(ApiError::missing_scope(
            fake.scope_error_status(),
            allowed.first().copied().unwrap_or_default(),
        ));
    }
    world.touch(&key, now);
    Ok(())
}

/// The stand-in for a model request: a live key with "Model capabilities:
/// Request" (or unrestricted) gets a fixed completion of the asked model.
async fn chat_completion(
    State(fake): State<FakeOpenAi>,
    headers: HeaderMap,
    body: JsonBody,
) -> Answer {
    authorize_key(&fake, &headers, &MODEL_REQUEST_SCOPES)?;
    let model = body.string("model")?.into_option().ok_or_else(|| {
        ApiError::bad_request("you must provide a model parameter").param("model")
    })?;
    if !MODELS.iter().any(|(id, _)| *id == model) {
        return Err(ApiError::not_found(format!(
            "The model `{model}` does not exist or you do not have access to it."
        ))
        .code("model_not_found"));
    }
    // What the answer's `usage` says, on the key's account.
    fake.add_usage(&bearer(&headers)?, &model, 1, 5);
    Ok(Json(json!({
        "id": super::ids::request_id().replacen("req_", "chatcmpl-", 1),
        "object": "chat.completion",
        "created": fake.now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": "Hello from the sandbox." },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6 }
    })))
}

async fn list_models(State(fake): State<FakeOpenAi>, headers: HeaderMap) -> Answer {
    authorize_model_read(&fake, &headers)?;
    let data: Vec<Value> = MODELS.iter().map(|(id, c)| model_json(id, *c)).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn retrieve_model(
    State(fake): State<FakeOpenAi>,
    headers: HeaderMap,
    Ids(model): Ids<String>,
) -> Answer {
    authorize_model_read(&fake, &headers)?;
    MODELS
        .iter()
        .find(|(id, _)| *id == model)
        .map(|(id, c)| Json(model_json(id, *c)))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The model '{model}' does not exist or you do not have access to it."
            ))
            .param("model")
            .code("model_not_found")
        })
}
