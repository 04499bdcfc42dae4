//! The fake OpenAI Admin API, driven over real HTTP the way a client would
//! drive the real one.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use sandbox::Sandbox;
use sandbox::openai::{ApiVersion, Config, Fault, FaultKind, Role, SeedAccount};
use serde_json::{Value, json};

/// A running sandbox and a client holding the admin key.
struct Api {
    sandbox: Sandbox,
    client: reqwest::Client,
    admin: String,
}

/// One answer: status, headers and the body as JSON (`Value::Null` when it
/// is not JSON; `text` keeps the raw body).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Api {
    async fn start() -> Self {
        Self::with(Config::default()).await
    }

    async fn with(config: Config) -> Self {
        let sandbox = Sandbox::builder()
            .openai(config)
            .start()
            .await
            .expect("sandbox starts");
        let admin = sandbox.openai.admin_key();
        Self {
            sandbox,
            client: {
                install_crypto();
                reqwest::Client::new()
            },
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.openai_base_url())
    }

    /// The `/_sandbox` control URL for `path`.
    fn control_url(&self, path: &str) -> String {
        let base = self.sandbox.openai_base_url();
        format!("{}{path}", base.trim_end_matches("/v1"))
    }

    fn default_project(&self) -> String {
        self.sandbox.openai.default_project_id()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the fake answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_openai_headers(&headers);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.admin), None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.admin), Some(body))
            .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(&self.admin), None)
            .await
    }

    /// `GET /v1/models` with an issued key.
    async fn models(&self, key: &str) -> Reply {
        self.call(Method::GET, "/models", Some(key), None).await
    }

    async fn create_account(&self, project: &str, body: Value) -> Reply {
        self.post(
            &format!("/organization/projects/{project}/service_accounts"),
            body,
        )
        .await
    }

    async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, self.control_url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("control JSON")
    }
}

/// Every `/v1` answer has a request id, a processing time and a JSON type.
fn assert_openai_headers(headers: &HeaderMap) {
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert!(
        id.len() == 36 && id.starts_with("req_") && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    let ms = headers
        .get("openai-processing-ms")
        .and_then(|v| v.to_str().ok())
        .expect("openai-processing-ms");
    assert!(ms.parse::<u64>().is_ok(), "{ms}");
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("application/json"));
}

/// The real error shape: exactly the four keys, all present.
fn assert_error(reply: &Reply, status: u16, kind: &str, param: Option<&str>, code: Option<&str>) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    let error = reply.body["error"].as_object().expect("an error object");
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{}", reply.text);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(error["type"], json!(kind), "{}", reply.text);
    assert_eq!(error["param"], json!(param), "{}", reply.text);
    assert_eq!(error["code"], json!(code), "{}", reply.text);
}

fn message(reply: &Reply) -> &str {
    reply.body["error"]["message"].as_str().unwrap_or_default()
}

fn is_alnum_id(id: &str, prefix: &str, len: usize) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == len && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

// ----- projects -----

#[tokio::test]
async fn the_organisation_starts_with_only_the_default_project() {
    let api = Api::start().await;

    let reply = api.get("/organization/projects").await;

    assert_eq!(reply.status, StatusCode::OK);
    let data = reply.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["name"], "Default Project");
    assert_eq!(data[0]["object"], "organization.project");
    assert_eq!(data[0]["status"], "active");
    assert!(is_alnum_id(data[0]["id"].as_str().unwrap(), "proj_", 24));
    assert_eq!(reply.body["first_id"], data[0]["id"]);
    assert_eq!(reply.body["has_more"], false);
    assert!(
        api.sandbox
            .openai
            .find_project_by_name("personal")
            .is_none()
    );
}

#[tokio::test]
async fn projects_are_created_retrieved_and_archived_but_never_the_default_one() {
    let api = Api::start().await;

    let created = api
        .post("/organization/projects", json!({"name": "personal"}))
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(is_alnum_id(&id, "proj_", 24));
    assert_eq!(created.body["archived_at"], Value::Null);
    let fetched = api.get(&format!("/organization/projects/{id}")).await;
    assert_eq!(fetched.body, created.body);

    let archived = api
        .post(&format!("/organization/projects/{id}/archive"), json!({}))
        .await;
    assert_eq!(archived.body["status"], "archived");
    assert!(archived.body["archived_at"].is_i64());
    let visible = api.get("/organization/projects").await;
    assert_eq!(visible.body["data"].as_array().unwrap().len(), 1);
    let all = api
        .get("/organization/projects?include_archived=true")
        .await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);

    let default = api.default_project();
    let refused = api
        .post(
            &format!("/organization/projects/{default}/archive"),
            json!({}),
        )
        .await;
    assert_error(&refused, 400, "invalid_request_error", None, None);
    let renamed = api
        .post(
            &format!("/organization/projects/{default}"),
            json!({"name": "x"}),
        )
        .await;
    assert_error(&renamed, 400, "invalid_request_error", None, None);
}

// ----- pagination -----

#[tokio::test]
async fn service_accounts_page_through_250_seeded_accounts_in_creation_order() {
    let api = Api::start().await;
    let project = api.sandbox.openai.create_project("paging");
    let seeds = (0..250)
        .map(|i| SeedAccount::new(format!("seed-{i}"), 1_700_000_000 + i))
        .collect();
    let seeded = api
        .sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let path = format!("/organization/projects/{project}/service_accounts");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let query = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let reply = api.get(&format!("{path}?limit=100{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let data = reply.body["data"].as_array().unwrap();
        assert_eq!(reply.body["first_id"], data[0]["id"]);
        assert_eq!(reply.body["last_id"], data[data.len() - 1]["id"]);
        seen.extend(data.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        pages.push((data.len(), reply.body["has_more"].as_bool().unwrap()));
        if !reply.body["has_more"].as_bool().unwrap() {
            break;
        }
        after = reply.body["last_id"].as_str().map(str::to_owned);
    }

    assert_eq!(pages, [(100, true), (100, true), (50, false)]);
    let expected: Vec<String> = seeded.into_iter().map(|s| s.id).collect();
    assert_eq!(seen, expected);
    let default_page = api.get(&path).await;
    assert_eq!(default_page.body["data"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn a_limit_outside_1_to_100_is_a_400_naming_limit() {
    let api = Api::start().await;
    let project = api.default_project();

    for limit in ["0", "101", "ten"] {
        let reply = api
            .get(&format!(
                "/organization/projects/{project}/service_accounts?limit={limit}"
            ))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "limit={limit}");
        assert_eq!(reply.body["error"]["param"], "limit");
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    }
    let projects = api.get("/organization/projects?limit=101").await;
    assert_eq!(projects.body["error"]["param"], "limit");
}

#[tokio::test]
async fn an_empty_page_has_null_first_and_last_ids() {
    let api = Api::start().await;
    let project = api.sandbox.openai.create_project("empty");

    let reply = api
        .get(&format!(
            "/organization/projects/{project}/service_accounts"
        ))
        .await;

    assert_eq!(
        reply.body,
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
    );
}

// ----- authentication and error shapes -----

#[tokio::test]
async fn a_request_without_a_key_gets_401_you_didnt_provide_an_api_key() {
    let api = Api::start().await;

    let reply = api
        .call(Method::GET, "/organization/projects", None, None)
        .await;

    assert_error(&reply, 401, "invalid_request_error", None, None);
    assert!(message(&reply).starts_with("You didn't provide an API key."));
}

#[tokio::test]
async fn a_wrong_key_gets_401_invalid_api_key_with_the_key_masked() {
    let api = Api::start().await;
    let wrong = "sk-admin-ThisIsNotTheRightKeyAtAllXYZabcd";

    let reply = api
        .call(Method::GET, "/organization/projects", Some(wrong), None)
        .await;

    assert_error(
        &reply,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );
    assert!(
        message(&reply).starts_with("Incorrect API key provided: sk-admin***...abcd."),
        "{}",
        message(&reply)
    );
    assert!(!reply.text.contains(wrong));
}

#[tokio::test]
async fn unknown_projects_accounts_and_keys_are_404_with_the_real_shape() {
    let api = Api::start().await;
    let project = api.default_project();

    let no_project = api.get("/organization/projects/proj_nope").await;
    assert_error(&no_project, 404, "invalid_request_error", None, None);
    assert_eq!(message(&no_project), "No such project: proj_nope");
    let no_project_accounts = api
        .get("/organization/projects/proj_nope/service_accounts")
        .await;
    assert_error(
        &no_project_accounts,
        404,
        "invalid_request_error",
        None,
        None,
    );
    let no_account = api
        .get(&format!(
            "/organization/projects/{project}/service_accounts/svc_acct_nope"
        ))
        .await;
    assert_error(&no_account, 404, "invalid_request_error", None, None);
    assert_eq!(
        message(&no_account),
        "Service account svc_acct_nope not found"
    );
    let no_key = api
        .get(&format!(
            "/organization/projects/{project}/api_keys/key_nope"
        ))
        .await;
    assert_error(&no_key, 404, "invalid_request_error", None, None);
}

#[tokio::test]
async fn malformed_json_unknown_fields_and_bad_types_are_400_naming_the_field() {
    let api = Api::start().await;
    let path = format!(
        "/organization/projects/{}/service_accounts",
        api.default_project()
    );

    let broken = api
        .send(
            api.client
                .post(api.url(&path))
                .bearer_auth(&api.admin)
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await;
    assert_error(&broken, 400, "invalid_request_error", None, None);
    assert!(message(&broken).starts_with("We could not parse the JSON body"));

    let unknown = api.post(&path, json!({"name": "a", "colour": "red"})).await;
    assert_error(&unknown, 400, "invalid_request_error", Some("colour"), None);
    assert_eq!(
        message(&unknown),
        "Unrecognized request argument supplied: colour"
    );

    let wrong_type = api.post(&path, json!({"name": 7})).await;
    assert_error(
        &wrong_type,
        400,
        "invalid_request_error",
        Some("name"),
        Some("invalid_type"),
    );
    let missing = api.post(&path, json!({})).await;
    assert_error(
        &missing,
        400,
        "invalid_request_error",
        Some("name"),
        Some("missing_required_parameter"),
    );
    let too_long = api
        .post(
            &path,
            json!({"name": "a", "expires_in_seconds": 31_536_001}),
        )
        .await;
    assert_error(
        &too_long,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        Some("integer_above_max_value"),
    );
    let zero = api
        .post(&path, json!({"name": "a", "expires_in_seconds": 0}))
        .await;
    assert_eq!(zero.body["error"]["param"], "expires_in_seconds");
    assert!(
        api.sandbox
            .openai
            .service_accounts(&api.default_project())
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_paths_are_404_invalid_url_and_wrong_methods_are_405() {
    let api = Api::start().await;

    let unknown = api.get("/organization/foo").await;
    assert_error(&unknown, 404, "invalid_request_error", None, None);
    assert_eq!(message(&unknown), "Invalid URL (GET /v1/organization/foo)");

    let wrong_method = api.delete("/organization/projects").await;
    assert_error(&wrong_method, 405, "invalid_request_error", None, None);
    assert_eq!(
        message(&wrong_method),
        "Method not allowed (DELETE /v1/organization/projects)"
    );
}

// ----- service accounts and keys -----

#[tokio::test]
async fn a_key_created_with_expires_in_seconds_works_until_it_expires() {
    let api = Api::start().await;
    let project = api.default_project();

    let created = api
        .create_account(
            &project,
            json!({"name": "ks:alice", "expires_in_seconds": 3600}),
        )
        .await;

    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let body = &created.body;
    assert_eq!(body["object"], "organization.project.service_account");
    assert_eq!(body["role"], "member");
    assert!(is_alnum_id(body["id"].as_str().unwrap(), "svc_acct_", 24));
    let key = &body["api_key"];
    assert_eq!(
        key["object"],
        "organization.project.service_account.api_key"
    );
    assert!(is_alnum_id(key["id"].as_str().unwrap(), "key_", 16));
    let value = key["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("sk-svcacct-") && value.contains("T3BlbkFJ"));
    assert!((150..=180).contains(&value.len()));
    let created_at = key["created_at"].as_i64().unwrap();
    assert_eq!(key["expires_at"].as_i64(), Some(created_at + 3600));

    let before = api.models(&value).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    assert_eq!(before.body["object"], "list");
    assert_eq!(before.body["data"][0]["id"], "gpt-4o-mini");
    assert_eq!(before.body["data"][0]["owned_by"], "system");

    api.control(
        Method::POST,
        "/_sandbox/clock",
        Some(json!({"advance_seconds": 3601})),
    )
    .await;
    let after = api.models(&value).await;
    assert_error(
        &after,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );
    assert!(!after.text.contains(&value));
    assert!(!api.sandbox.openai.key_is_live(&value));
    // Expired keys still exist as objects.
    let key_id = key["id"].as_str().unwrap();
    let listed = api
        .get(&format!(
            "/organization/projects/{project}/api_keys/{key_id}"
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK);
}

#[tokio::test]
async fn using_a_key_sets_last_used_at_and_key_objects_show_only_redacted_values() {
    let api = Api::start().await;
    let project = api.default_project();
    let created = api
        .create_account(&project, json!({"name": "ks:bob"}))
        .await;
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(created.body["api_key"]["expires_at"], Value::Null);

    let unused = api
        .get(&format!(
            "/organization/projects/{project}/api_keys?owner_project_access=any"
        ))
        .await;
    assert_eq!(unused.body["data"][0]["last_used_at"], Value::Null);
    api.models(&value).await;
    let used = api
        .get(&format!("/organization/projects/{project}/api_keys"))
        .await;

    let key = &used.body["data"][0];
    assert_eq!(key["object"], "organization.project.api_key");
    assert!(key["last_used_at"].is_i64());
    assert_eq!(key["owner_project_access"], "active");
    assert_eq!(key["owner"]["type"], "service_account");
    assert_eq!(key["owner"]["service_account"]["id"], created.body["id"]);
    assert_eq!(key["owner"]["service_account"]["role"], "member");
    let redacted = key["redacted_value"].as_str().unwrap();
    assert_eq!(redacted, format!("sk-svc...{}", &value[value.len() - 4..]));
    assert!(!used.text.contains(&value));
    assert!(
        !api.get(&format!(
            "/organization/projects/{project}/service_accounts"
        ))
        .await
        .text
        .contains("sk-svcacct")
    );
    let bad_access = api
        .get(&format!(
            "/organization/projects/{project}/api_keys?owner_project_access=all"
        ))
        .await;
    assert_eq!(bad_access.body["error"]["param"], "owner_project_access");
}

#[tokio::test]
async fn deleting_a_service_account_revokes_its_keys_and_a_second_delete_is_404() {
    let api = Api::start().await;
    let project = api.default_project();
    let created = api
        .create_account(&project, json!({"name": "ks:carol"}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let extra = api
        .post(
            &format!("/organization/projects/{project}/service_accounts/{id}/api_keys"),
            json!({"name": "second"}),
        )
        .await;
    let extra_value = extra.body["value"].as_str().unwrap().to_owned();
    assert_eq!(api.models(&extra_value).await.status, StatusCode::OK);

    let deleted = api
        .delete(&format!(
            "/organization/projects/{project}/service_accounts/{id}"
        ))
        .await;

    assert_eq!(
        deleted.body,
        json!({"object": "organization.project.service_account.deleted", "id": id, "deleted": true})
    );
    assert_error(
        &api.models(&value).await,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );
    assert_eq!(
        api.models(&extra_value).await.status,
        StatusCode::UNAUTHORIZED
    );
    let gone = api
        .get(&format!(
            "/organization/projects/{project}/service_accounts/{id}"
        ))
        .await;
    assert_error(&gone, 404, "invalid_request_error", None, None);
    let again = api
        .delete(&format!(
            "/organization/projects/{project}/service_accounts/{id}"
        ))
        .await;
    assert_error(&again, 404, "invalid_request_error", None, None);
    let keys = api
        .get(&format!("/organization/projects/{project}/api_keys"))
        .await;
    assert_eq!(keys.body["data"], json!([]));
}

#[tokio::test]
async fn an_account_only_service_account_gets_a_role_then_a_key_restricted_by_scopes() {
    let api = Api::start().await;
    let project = api.default_project();
    let accounts = format!("/organization/projects/{project}/service_accounts");

    let both = api
        .create_account(
            &project,
            json!({"name": "x", "create_service_account_only": true, "expires_in_seconds": 60}),
        )
        .await;
    assert_error(
        &both,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        None,
    );

    let created = api
        .create_account(
            &project,
            json!({"name": "ks:dave", "create_service_account_only": true}),
        )
        .await;
    assert_eq!(created.body["role"], "none");
    assert_eq!(created.body["api_key"], Value::Null);
    let id = created.body["id"].as_str().unwrap().to_owned();

    let early_key = api
        .post(
            &format!("{accounts}/{id}/api_keys"),
            json!({"name": "early"}),
        )
        .await;
    let early_value = early_key.body["value"].as_str().unwrap().to_owned();
    let no_role = api.models(&early_value).await;
    assert_error(&no_role, 401, "invalid_request_error", None, None);
    assert!(message(&no_role).contains("Missing scopes: api.model.read"));

    let bad_role = api
        .post(&format!("{accounts}/{id}"), json!({"role": "admin"}))
        .await;
    assert_error(
        &bad_role,
        400,
        "invalid_request_error",
        Some("role"),
        Some("invalid_value"),
    );
    let updated = api
        .post(
            &format!("{accounts}/{id}"),
            json!({"role": "member", "name": "ks:dave2"}),
        )
        .await;
    assert_eq!(updated.body["role"], "member");
    assert_eq!(updated.body["name"], "ks:dave2");

    let scoped = api
        .post(
            &format!("{accounts}/{id}/api_keys"),
            json!({"name": "run", "scopes": ["api.model.request"], "expires_in_seconds": 600}),
        )
        .await;
    assert_eq!(scoped.status, StatusCode::OK, "{}", scoped.text);
    assert_eq!(
        scoped.body["object"],
        "organization.project.service_account.api_key"
    );
    assert_eq!(scoped.body["name"], "run");
    assert_eq!(
        scoped.body["expires_at"].as_i64(),
        scoped.body["created_at"].as_i64().map(|c| c + 600)
    );
    let scoped_value = scoped.body["value"].as_str().unwrap();
    let refused = api.models(scoped_value).await;
    assert_error(&refused, 401, "invalid_request_error", None, None);
    assert!(message(&refused).contains("Missing scopes: api.model.read"));

    let readable = api
        .post(
            &format!("{accounts}/{id}/api_keys"),
            json!({"scopes": ["api.model.request", "api.model.read"]}),
        )
        .await;
    assert_eq!(
        api.models(readable.body["value"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let view = api.sandbox.openai.service_account(&project, &id).unwrap();
    assert_eq!(view.role, Role::Member);
    assert_eq!(view.keys.len(), 3);
    assert_eq!(view.keys[1].scopes, ["api.model.request"]);
}

#[tokio::test]
async fn an_issued_key_on_an_admin_route_is_refused_for_missing_scopes() {
    let api = Api::start().await;
    let created = api
        .create_account(&api.default_project(), json!({"name": "ks:eve"}))
        .await;
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();

    let refused = api
        .call(Method::GET, "/organization/projects", Some(&value), None)
        .await;
    assert_error(&refused, 401, "invalid_request_error", None, None);
    assert!(message(&refused).starts_with(
        "You have insufficient permissions for this operation. Missing scopes: api.management.read."
    ));

    api.control(
        Method::POST,
        "/_sandbox/openai/config",
        Some(json!({"scope_error_status": 403})),
    )
    .await;
    let forbidden = api
        .call(Method::GET, "/organization/projects", Some(&value), None)
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    // The newer spec's PermissionErrorResponse: `error` is a bare string.
    let bare = forbidden.body["error"].as_str().expect("a bare string");
    assert!(
        bare.contains("Missing scopes: api.management.read"),
        "{bare}"
    );
}

#[tokio::test]
async fn the_admin_key_cannot_call_the_models_endpoint() {
    let api = Api::start().await;

    let reply = api.models(&api.admin.clone()).await;

    assert_error(
        &reply,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );
    assert!(!reply.text.contains(&api.admin));
    let nobody = api.call(Method::GET, "/models", None, None).await;
    assert_error(&nobody, 401, "invalid_request_error", None, None);
}

#[tokio::test]
async fn the_current_version_updates_and_deletes_single_keys() {
    let api = Api::start().await;
    let project = api.default_project();
    let created = api
        .create_account(&project, json!({"name": "ks:frank"}))
        .await;
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let key_id = created.body["api_key"]["id"].as_str().unwrap().to_owned();
    let key_path = format!("/organization/projects/{project}/api_keys/{key_id}");

    let nothing = api.post(&key_path, json!({})).await;
    assert_error(&nothing, 400, "invalid_request_error", None, None);
    let null = api.post(&key_path, json!({"scopes": null})).await;
    assert_error(
        &null,
        400,
        "invalid_request_error",
        Some("scopes"),
        Some("invalid_type"),
    );
    let null_expiry = api
        .post(&key_path, json!({"expires_in_seconds": null}))
        .await;
    assert_eq!(null_expiry.body["error"]["param"], "expires_in_seconds");

    let updated = api
        .post(
            &key_path,
            json!({"scopes": ["api.all.read"], "expires_in_seconds": 120}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.body["object"], "organization.project.api_key");
    let now = api.sandbox.clock.unix();
    assert!((now + 119..=now + 121).contains(&updated.body["expires_at"].as_i64().unwrap()));
    assert!(updated.body.get("value").is_none());
    assert_eq!(api.models(&value).await.status, StatusCode::OK);

    api.sandbox.clock.advance(Duration::from_secs(121));
    let expired = api
        .post(&key_path, json!({"expires_in_seconds": 600}))
        .await;
    assert_error(&expired, 400, "invalid_request_error", None, None);
    assert!(message(&expired).contains("expired"));

    let deleted = api.delete(&key_path).await;
    assert_eq!(
        deleted.body,
        json!({"object": "organization.project.api_key.deleted", "id": key_id, "deleted": true})
    );
    assert_error(
        &api.delete(&key_path).await,
        404,
        "invalid_request_error",
        None,
        None,
    );
    assert_eq!(api.sandbox.openai.service_accounts(&project).len(), 1);
}

#[tokio::test]
async fn the_legacy_version_rejects_expires_in_seconds_and_has_no_expiry_or_key_updates() {
    let api = Api::with(Config {
        version: ApiVersion::Legacy,
        ..Config::default()
    })
    .await;
    let project = api.default_project();

    let refused = api
        .create_account(
            &project,
            json!({"name": "ks:gina", "expires_in_seconds": 3600}),
        )
        .await;
    assert_error(
        &refused,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        None,
    );
    assert_eq!(
        message(&refused),
        "Unrecognized request argument supplied: expires_in_seconds"
    );
    assert!(api.sandbox.openai.service_accounts(&project).is_empty());

    let created = api
        .create_account(&project, json!({"name": "ks:gina"}))
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert!(created.body["api_key"].get("expires_at").is_none());
    let key_id = created.body["api_key"]["id"].as_str().unwrap();
    let key_path = format!("/organization/projects/{project}/api_keys/{key_id}");
    let key = api.get(&key_path).await;
    assert!(key.body.get("expires_at").is_none());
    assert!(key.body.get("last_used_at").is_some());

    let update = api.post(&key_path, json!({"scopes": []})).await;
    assert_error(&update, 404, "invalid_request_error", None, None);
    assert!(message(&update).starts_with("Invalid URL (POST /v1/organization/projects/"));
    let delete = api.delete(&key_path).await;
    assert_error(&delete, 400, "invalid_request_error", None, None);

    api.sandbox.openai.set_version(ApiVersion::Current);
    assert_eq!(api.delete(&key_path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_expiry_policy_requires_and_caps_expires_in_seconds() {
    let api = Api::with(Config {
        max_key_lifetime_secs: Some(3600),
        ..Config::default()
    })
    .await;
    let project = api.default_project();

    let missing = api.create_account(&project, json!({"name": "a"})).await;
    assert_error(
        &missing,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        Some("missing_required_parameter"),
    );
    let too_long = api
        .create_account(&project, json!({"name": "a", "expires_in_seconds": 3601}))
        .await;
    assert_error(
        &too_long,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        Some("integer_above_max_value"),
    );
    let ok = api
        .create_account(&project, json!({"name": "a", "expires_in_seconds": 3600}))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let id = ok.body["id"].as_str().unwrap();
    let key_missing = api
        .post(
            &format!("/organization/projects/{project}/service_accounts/{id}/api_keys"),
            json!({}),
        )
        .await;
    assert_eq!(key_missing.body["error"]["param"], "expires_in_seconds");
    let account_only = api
        .create_account(
            &project,
            json!({"name": "b", "create_service_account_only": true}),
        )
        .await;
    assert_eq!(account_only.status, StatusCode::OK);

    api.sandbox.openai.set_max_key_lifetime(None);
    let free = api.create_account(&project, json!({"name": "c"})).await;
    assert_eq!(free.status, StatusCode::OK);
}

#[tokio::test]
async fn archived_projects_have_no_service_accounts() {
    let api = Api::start().await;
    let project = api.sandbox.openai.create_project("old");
    let created = api
        .create_account(&project, json!({"name": "ks:hal"}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    api.sandbox.openai.archive_project(&project).unwrap();
    let accounts = format!("/organization/projects/{project}/service_accounts");

    let list = api.get(&accounts).await;
    assert_error(&list, 400, "invalid_request_error", None, None);
    assert!(message(&list).contains("archived"));
    let create = api
        .create_account(&project, json!({"name": "ks:ida"}))
        .await;
    assert_error(&create, 400, "invalid_request_error", None, None);
    let delete = api.delete(&format!("{accounts}/{id}")).await;
    assert_error(&delete, 400, "invalid_request_error", None, None);
    assert_eq!(api.models(&value).await.status, StatusCode::UNAUTHORIZED);
    let still_there = api.get(&format!("/organization/projects/{project}")).await;
    assert_eq!(still_there.body["status"], "archived");
}

// ----- faults, latency, rate limit -----

#[tokio::test]
async fn an_injected_429_with_retry_after_is_followed_by_success() {
    let api = Api::start().await;
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::Status {
            status: 429,
            retry_after: Some(2),
        })
        .method("GET")
        .path("/organization/projects"),
    );

    let limited = api.get("/organization/projects").await;
    let ok = api.get("/organization/projects").await;

    assert_error(
        &limited,
        429,
        "rate_limit_error",
        None,
        Some("rate_limit_exceeded"),
    );
    assert_eq!(limited.headers["retry-after"], "2");
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(api.sandbox.openai.rate_limited(), 0);
}

#[tokio::test]
async fn an_injected_500_happens_once_and_carries_the_request_id() {
    let api = Api::start().await;
    api.control(
        Method::POST,
        "/_sandbox/openai/faults",
        Some(json!({"method": "GET", "path_contains": "/projects", "count": 1, "kind": {"type": "status", "status": 500}})),
    )
    .await;

    let failed = api.get("/organization/projects").await;
    let ok = api.get("/organization/projects").await;

    assert_error(&failed, 500, "server_error", None, None);
    let request_id = failed.headers["x-request-id"].to_str().unwrap();
    assert!(message(&failed).contains(request_id));
    assert_eq!(ok.status, StatusCode::OK);
    assert!(api.sandbox.openai.faults().is_empty());
}

#[tokio::test]
async fn an_injected_503_and_409_use_their_own_bodies() {
    let api = Api::start().await;
    api.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::status(503)).path("/service_accounts"));
    api.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::status(409)).path("{service_account_id}/api_keys"));
    let project = api.default_project();

    let unavailable = api.create_account(&project, json!({"name": "x"})).await;
    assert_error(&unavailable, 503, "server_error", None, None);
    let created = api.create_account(&project, json!({"name": "x"})).await;
    let id = created.body["id"].as_str().unwrap();
    let conflict = api
        .post(
            &format!("/organization/projects/{project}/service_accounts/{id}/api_keys"),
            json!({}),
        )
        .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn commit_then_fail_really_creates_the_account_but_answers_500() {
    let api = Api::start().await;
    let project = api.default_project();
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::CommitThenFail { status: 500 })
            .method("POST")
            .path("/service_accounts"),
    );

    let reply = api
        .create_account(
            &project,
            json!({"name": "ks:ivy:nonce", "expires_in_seconds": 60}),
        )
        .await;

    assert_error(&reply, 500, "server_error", None, None);
    assert!(!reply.text.contains("sk-svcacct"));
    let accounts = api.sandbox.openai.service_accounts(&project);
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].name, "ks:ivy:nonce");
    let listed = api
        .get(&format!(
            "/organization/projects/{project}/service_accounts"
        ))
        .await;
    assert_eq!(listed.body["data"][0]["name"], "ks:ivy:nonce");
}

#[tokio::test]
async fn a_hanging_answer_leaves_the_client_to_time_out() {
    let api = Api::start().await;
    let project = api.default_project();
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::Hang)
            .method("POST")
            .path("/service_accounts"),
    );
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::CommitThenHang)
            .method("POST")
            .path("/service_accounts"),
    );
    install_crypto();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = api.url(&format!(
        "/organization/projects/{project}/service_accounts"
    ));

    let hung = impatient
        .post(&url)
        .bearer_auth(&api.admin)
        .json(&json!({"name": "ks:hang"}))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    assert!(api.sandbox.openai.service_accounts(&project).is_empty());

    let committed = impatient
        .post(&url)
        .bearer_auth(&api.admin)
        .json(&json!({"name": "ks:commit-hang"}))
        .send()
        .await;
    assert!(committed.is_err_and(|e| e.is_timeout()));
    let accounts = api.sandbox.openai.service_accounts(&project);
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].name, "ks:commit-hang");
    let route = "POST /v1/organization/projects/{project_id}/service_accounts";
    assert_eq!(api.sandbox.openai.journal().count(route), 2);
    assert_eq!(api.sandbox.openai.journal().by_status().get(&0), Some(&2));
}

#[tokio::test]
async fn a_malformed_json_fault_answers_200_with_a_broken_body() {
    let api = Api::start().await;
    api.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::MalformedJson).path("/organization/projects"));

    let reply = api.get("/organization/projects").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&reply.text).is_err());
    assert_eq!(
        api.get("/organization/projects").await.body["object"],
        "list"
    );
}

#[tokio::test]
async fn a_delayed_answer_reflects_the_moment_the_request_was_handled() {
    let api = Api::start().await;
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::DelayAnswer { ms: 400 })
            .method("GET")
            .path("/organization/projects"),
    );
    let http = api.client.clone();
    let url = api.url("/organization/projects");
    let key = api.admin.clone();
    let slow = tokio::spawn(async move {
        http.get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    api.sandbox.openai.create_project("made-meanwhile");
    let listing = slow.await.unwrap();
    let names: Vec<_> = listing["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"made-meanwhile".to_owned()), "{names:?}");
}

#[tokio::test]
async fn an_oversized_fault_streams_a_200_of_that_size_with_no_length() {
    let api = Api::start().await;
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::Oversized { bytes: 300_000 }).path("/organization/projects"),
    );

    let reply = api.get("/organization/projects").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        !reply.headers.contains_key("content-length"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.text.len(), 300_000);
    assert!(reply.text.trim().is_empty(), "whitespace only");
    assert_eq!(
        api.get("/organization/projects").await.body["object"],
        "list",
        "one request only"
    );
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_counts_them() {
    let api = Api::with(Config {
        rate_limit_per_s: Some(2.0),
        ..Config::default()
    })
    .await;

    let first = api.get("/organization/projects").await;
    let second = api.get("/organization/projects").await;
    let third = api.get("/organization/projects").await;

    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::OK);
    assert_error(
        &third,
        429,
        "rate_limit_error",
        None,
        Some("rate_limit_exceeded"),
    );
    let retry_after: u64 = third.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(api.sandbox.openai.rate_limited(), 1);
    let counters = api
        .control(Method::GET, "/_sandbox/openai/counters", None)
        .await;
    assert_eq!(counters["rate_limited"], 1);
    assert_eq!(counters["by_status"]["429"], 1);

    api.sandbox.clock.advance(Duration::from_secs(1));
    assert_eq!(
        api.get("/organization/projects").await.status,
        StatusCode::OK
    );
    api.sandbox.openai.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(
            api.get("/organization/projects").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn added_latency_delays_every_v1_answer() {
    let api = Api::start().await;
    api.control(
        Method::POST,
        "/_sandbox/openai/config",
        Some(json!({"latency_ms": 60, "jitter_ms": 10})),
    )
    .await;

    let started = Instant::now();
    let reply = api.get("/organization/projects").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(60));
    api.sandbox
        .openai
        .set_latency(Duration::ZERO, Duration::ZERO);
}

// ----- counters, headers, control API -----

#[tokio::test]
async fn counters_count_calls_by_method_and_route_pattern() {
    let api = Api::start().await;
    let project = api.default_project();
    for name in ["a", "b"] {
        api.create_account(&project, json!({"name": name})).await;
    }
    api.get(&format!(
        "/organization/projects/{project}/service_accounts"
    ))
    .await;
    api.get("/organization/nowhere").await;

    let journal = api.sandbox.openai.journal();
    assert_eq!(
        journal.count("POST /v1/organization/projects/{project_id}/service_accounts"),
        2
    );
    assert_eq!(
        journal.count("GET /v1/organization/projects/{project_id}/service_accounts"),
        1
    );
    assert_eq!(journal.count("GET /v1/organization/nowhere"), 1);
    let over_http = api
        .control(Method::GET, "/_sandbox/openai/counters", None)
        .await;
    assert_eq!(over_http["total"], 4);
    assert_eq!(
        over_http["counters"]["POST /v1/organization/projects/{project_id}/service_accounts"],
        2
    );

    api.control(Method::POST, "/_sandbox/openai/reset-counters", None)
        .await;
    assert_eq!(api.sandbox.openai.journal().total(), 0);
}

#[tokio::test]
async fn every_answer_has_a_request_id_a_processing_time_and_json() {
    let api = Api::start().await;

    let answers = [
        api.get("/organization/projects").await,
        api.get("/nowhere").await,
        api.call(Method::GET, "/organization/projects", None, None)
            .await,
        api.call(
            Method::PUT,
            "/organization/projects",
            Some(&api.admin),
            None,
        )
        .await,
    ];

    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|a| a.headers["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), answers.len());
}

#[tokio::test]
async fn the_control_api_moves_the_clock_sets_knobs_seeds_and_dumps_state() {
    let api = Api::start().await;

    let clock = api
        .control(
            Method::POST,
            "/_sandbox/clock",
            Some(json!({"offset_seconds": 86_400})),
        )
        .await;
    assert_eq!(clock["offset_ms"], 86_400_000);
    let read = api.control(Method::GET, "/_sandbox/clock", None).await;
    assert!((read["now"].as_i64().unwrap() - api.sandbox.clock.unix()).abs() <= 1);

    let settings = api
        .control(
            Method::POST,
            "/_sandbox/openai/config",
            Some(json!({"version": "legacy", "max_key_lifetime_secs": 600, "rate_limit_per_s": 50.0})),
        )
        .await;
    assert_eq!(settings["version"], "legacy");
    assert_eq!(settings["max_key_lifetime_secs"], 600);
    assert_eq!(settings["rate_limit_burst"], 50.0);
    assert_eq!(api.sandbox.openai.version(), ApiVersion::Legacy);
    let lifted = api
        .control(
            Method::POST,
            "/_sandbox/openai/config",
            Some(json!({"version": "current", "max_key_lifetime_secs": null, "rate_limit_per_s": null})),
        )
        .await;
    assert_eq!(lifted["max_key_lifetime_secs"], Value::Null);
    assert_eq!(lifted["rate_limit_per_s"], Value::Null);

    let project = api
        .control(
            Method::POST,
            "/_sandbox/openai/projects",
            Some(json!({"name": "seeded"})),
        )
        .await;
    let project_id = project["id"].as_str().unwrap();
    let seeded = api
        .control(
            Method::POST,
            "/_sandbox/openai/seed",
            Some(json!({"project_id": project_id, "accounts": [
                {"name": "old", "created_at": 1_700_000_000, "expires_at": 1_700_000_600},
                {"name": "live", "created_at": 1_700_000_000},
                {"name": "bare", "created_at": 1_700_000_000, "role": "none"}
            ]})),
        )
        .await;
    let accounts = seeded["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 3);
    assert_eq!(accounts[2]["key_value"], Value::Null);
    let old_value = accounts[0]["key_value"].as_str().unwrap();
    let live_value = accounts[1]["key_value"].as_str().unwrap();
    let old = api
        .control(
            Method::POST,
            "/_sandbox/openai/key-status",
            Some(json!({"value": old_value})),
        )
        .await;
    assert_eq!(old["live"], false);
    assert_eq!(api.models(live_value).await.status, StatusCode::OK);

    let faults = api
        .control(
            Method::POST,
            "/_sandbox/openai/faults",
            Some(json!([{"path_contains": "/models", "count": 2, "kind": {"type": "hang"}}])),
        )
        .await;
    assert_eq!(faults[0]["count"], 2);
    let cleared = api
        .control(Method::DELETE, "/_sandbox/openai/faults", None)
        .await;
    assert_eq!(cleared, json!([]));

    let state = api
        .control(Method::GET, "/_sandbox/openai/state", None)
        .await;
    let dumped = state["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == project_id)
        .unwrap();
    assert_eq!(dumped["service_accounts"].as_array().unwrap().len(), 3);
    assert_eq!(
        dumped["service_accounts"][0]["keys"][0]["expires_at"],
        1_700_000_600
    );
    assert!(!state.to_string().contains(live_value));
    assert_eq!(state["default_project_id"], api.default_project());
}

#[tokio::test]
async fn the_control_api_refuses_bad_requests_in_the_error_shape() {
    let api = Api::start().await;

    let reply = api
        .client
        .post(api.control_url("/_sandbox/openai/faults"))
        .json(&json!({"path_contains": "/x", "count": 0, "kind": {"type": "hang"}}))
        .send()
        .await
        .unwrap();

    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["param"], "count");
    let clock = api
        .client
        .post(api.control_url("/_sandbox/clock"))
        .json(&json!({"advance_seconds": 1, "offset_seconds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(clock.status(), StatusCode::BAD_REQUEST);
}

// ----- scale -----

#[tokio::test]
async fn ten_thousand_seeded_accounts_are_made_fast_and_page_completely() {
    let api = Api::start().await;
    let project = api.sandbox.openai.create_project("big");
    let now = api.sandbox.clock.unix();
    let seeds: Vec<SeedAccount> = (0..10_000)
        .map(|i| {
            SeedAccount::new(format!("oks.{}.n{i}.u@example.com", now + i), now - 86_400)
                .expiring_at(now + i)
        })
        .collect();

    let started = Instant::now();
    let seeded = api
        .sandbox
        .openai
        .seed_service_accounts(&project, seeds)
        .unwrap();
    let seeding = started.elapsed();

    assert_eq!(seeded.len(), 10_000);
    assert!(seeding < Duration::from_secs(1), "seeding took {seeding:?}");
    let path = format!("/organization/projects/{project}/service_accounts");
    let mut count = 0;
    let mut after: Option<String> = None;
    let started = Instant::now();
    loop {
        let query = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let reply = api.get(&format!("{path}?limit=100{query}")).await;
        count += reply.body["data"].as_array().unwrap().len();
        if !reply.body["has_more"].as_bool().unwrap() {
            break;
        }
        after = reply.body["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(count, 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let keys = api
        .get(&format!(
            "/organization/projects/{project}/api_keys?limit=100&after={}",
            seeded[9_949].key_id.as_deref().unwrap()
        ))
        .await;
    assert_eq!(keys.body["data"].as_array().unwrap().len(), 50);
    assert_eq!(keys.body["has_more"], false);
}

// ----- journal, headers, admin keys, delays -----

#[tokio::test]
async fn the_journal_records_each_body_a_hash_of_the_credential_and_the_request_id() {
    let api = Api::start().await;
    let project = api.default_project();

    let created = api
        .create_account(
            &project,
            json!({"name": "ks:journal", "expires_in_seconds": 600}),
        )
        .await;
    let value = created.body["api_key"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    api.models(&value).await;
    api.call(Method::GET, "/organization/projects", None, None)
        .await;

    let entries = api.sandbox.openai.journal().entries();
    assert_eq!(entries.len(), 3);
    let create = &entries[0];
    assert_eq!(
        create.route.as_deref(),
        Some("/v1/organization/projects/{project_id}/service_accounts")
    );
    assert_eq!(create.status, 200);
    assert_eq!(
        create.json(),
        Some(json!({"name": "ks:journal", "expires_in_seconds": 600}))
    );
    assert!(create.authorized_with(&format!("Bearer {}", api.admin)));
    assert_eq!(
        create.request_id.as_deref(),
        created.headers["x-request-id"].to_str().ok()
    );
    let models = &entries[1];
    assert_eq!(models.body, None);
    assert_eq!(models.body_len, 0);
    assert!(models.authorized_with(&format!("Bearer {value}")));
    assert!(!models.authorized_with(&format!("Bearer {}", api.admin)));
    assert_eq!(entries[2].authorization_sha256, None);
    assert_eq!(entries[2].status, 401);

    // The same over HTTP, and never a credential in the clear.
    let dumped = api
        .control(Method::GET, "/_sandbox/openai/journal", None)
        .await;
    let first = &dumped["entries"][0];
    assert_eq!(first["method"], "POST");
    let body: Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["name"], "ks:journal");
    assert_eq!(
        first["authorization_sha256"],
        sandbox::journal::authorization_hash(&format!("Bearer {}", api.admin))
    );
    let text = dumped.to_string();
    assert!(!text.contains(&api.admin) && !text.contains(&value));
}

#[tokio::test]
async fn a_request_left_hanging_is_journalled_with_its_body() {
    let api = Api::start().await;
    api.sandbox
        .openai
        .push_fault(Fault::new(FaultKind::Hang).method("POST"));
    install_crypto();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();

    let hung = impatient
        .post(api.url("/organization/projects"))
        .bearer_auth(&api.admin)
        .json(&json!({"name": "never"}))
        .send()
        .await;

    assert!(hung.is_err_and(|e| e.is_timeout()));
    let entries = api.sandbox.openai.journal().entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, 0);
    assert_eq!(entries[0].json(), Some(json!({"name": "never"})));
    assert_eq!(
        entries[0].route.as_deref(),
        Some("/v1/organization/projects")
    );
    assert!(entries[0].request_id.is_some());
}

#[tokio::test]
async fn answers_off_v1_also_carry_a_request_id_and_the_invalid_url_body() {
    let api = Api::start().await;

    for path in ["/", "/v1", "/v2/organization/projects"] {
        let reply = api
            .send(
                api.client
                    .get(api.control_url(path))
                    .bearer_auth(&api.admin),
            )
            .await;

        assert_error(&reply, 404, "invalid_request_error", None, None);
        assert_eq!(message(&reply), format!("Invalid URL (GET {path})"));
    }
    let control = api
        .client
        .get(api.control_url("/_sandbox/openai/state"))
        .send()
        .await
        .unwrap();
    assert!(
        control.headers().get("x-request-id").is_none(),
        "the control API is not the real API"
    );
}

#[tokio::test]
async fn admin_api_keys_are_listed_created_retrieved_and_deleted() {
    let api = Api::start().await;

    let listed = api.get("/organization/admin_api_keys").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body["object"], "list");
    let own = &listed.body["data"][0];
    assert_eq!(own["object"], "organization.admin_api_key");
    assert!(is_alnum_id(own["id"].as_str().unwrap(), "key_", 16));
    let redacted = own["redacted_value"].as_str().unwrap();
    assert!(
        redacted.starts_with("sk-admin...")
            && redacted.ends_with(&api.admin[api.admin.len() - 4..])
    );
    assert_eq!(own["expires_at"], Value::Null);
    assert!(
        own["last_used_at"].as_i64().is_some(),
        "the list call used it"
    );
    assert_eq!(own["owner"]["type"], "user");
    assert_eq!(own["owner"]["object"], "organization.user");
    assert_eq!(own["owner"]["role"], "owner");
    assert!(!listed.text.contains(&api.admin));

    let created = api
        .post(
            "/organization/admin_api_keys",
            json!({"name": "ops", "expires_in_seconds": 3600}),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let value = created.body["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("sk-admin-") && value.contains("T3BlbkFJ"));
    let now = api.sandbox.clock.unix();
    assert!((created.body["expires_at"].as_i64().unwrap() - (now + 3600)).abs() <= 1);
    assert_eq!(created.body["name"], "ops");

    // The new key manages the organisation like the first one.
    let with_new = api
        .call(Method::GET, "/organization/projects", Some(&value), None)
        .await;
    assert_eq!(with_new.status, StatusCode::OK);
    let retrieved = api.get(&format!("/organization/admin_api_keys/{id}")).await;
    assert_eq!(retrieved.body["id"], id.as_str());
    assert!(retrieved.body.get("value").is_none(), "shown once only");
    let newest_first = api
        .get("/organization/admin_api_keys?order=desc&limit=1")
        .await;
    assert_eq!(newest_first.body["data"][0]["id"], id.as_str());
    assert_eq!(newest_first.body["has_more"], true);
    let bad_order = api.get("/organization/admin_api_keys?order=up").await;
    assert_error(
        &bad_order,
        400,
        "invalid_request_error",
        Some("order"),
        Some("invalid_value"),
    );
    let missing_name = api.post("/organization/admin_api_keys", json!({})).await;
    assert_error(
        &missing_name,
        400,
        "invalid_request_error",
        Some("name"),
        Some("missing_required_parameter"),
    );

    // It expires like any key...
    api.sandbox.clock.advance(Duration::from_secs(3600));
    let expired = api
        .call(Method::GET, "/organization/projects", Some(&value), None)
        .await;
    assert_error(
        &expired,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );

    // ...and a deleted one is gone.
    let deleted = api
        .delete(&format!("/organization/admin_api_keys/{id}"))
        .await;
    assert_eq!(
        deleted.body,
        json!({"object": "organization.admin_api_key.deleted", "id": id, "deleted": true})
    );
    let again = api
        .delete(&format!("/organization/admin_api_keys/{id}"))
        .await;
    assert_error(&again, 404, "invalid_request_error", None, None);
}

#[tokio::test]
async fn deleting_the_started_admin_key_locks_it_out() {
    let api = Api::start().await;
    let listed = api.get("/organization/admin_api_keys").await;
    let own_id = listed.body["data"][0]["id"].as_str().unwrap().to_owned();

    let deleted = api
        .delete(&format!("/organization/admin_api_keys/{own_id}"))
        .await;

    assert_eq!(deleted.status, StatusCode::OK);
    let after = api.get("/organization/projects").await;
    assert_error(
        &after,
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    );
}

#[tokio::test]
async fn the_expiry_policy_covers_admin_keys_too() {
    let api = Api::with(Config {
        max_key_lifetime_secs: Some(600),
        ..Config::default()
    })
    .await;

    let unbounded = api
        .post("/organization/admin_api_keys", json!({"name": "forever"}))
        .await;
    let bounded = api
        .post(
            "/organization/admin_api_keys",
            json!({"name": "short", "expires_in_seconds": 600}),
        )
        .await;

    assert_error(
        &unbounded,
        400,
        "invalid_request_error",
        Some("expires_in_seconds"),
        Some("missing_required_parameter"),
    );
    assert_eq!(bounded.status, StatusCode::OK);
}

#[tokio::test]
async fn a_delay_fault_slows_one_matching_call_and_lets_it_take_effect() {
    let api = Api::start().await;
    let project = api.default_project();
    api.sandbox.openai.push_fault(
        Fault::new(FaultKind::Delay { ms: 300 })
            .method("POST")
            .path("/service_accounts"),
    );

    let started = Instant::now();
    let slow = api
        .create_account(&project, json!({"name": "ks:slow"}))
        .await;
    let slow_took = started.elapsed();
    let started = Instant::now();
    api.create_account(&project, json!({"name": "ks:fast"}))
        .await;
    let fast_took = started.elapsed();

    assert_eq!(slow.status, StatusCode::OK);
    assert!(slow_took >= Duration::from_millis(300), "{slow_took:?}");
    assert!(fast_took < Duration::from_millis(300), "{fast_took:?}");
    assert_eq!(api.sandbox.openai.service_accounts(&project).len(), 2);
    let faults = api
        .control(
            Method::POST,
            "/_sandbox/openai/faults",
            Some(json!({"kind": {"type": "delay", "ms": 5}})),
        )
        .await;
    assert_eq!(faults[0]["kind"], json!({"type": "delay", "ms": 5}));
}

/// reqwest is built with `rustls-no-provider` in a workspace build (the key
/// server's choice), so a provider must be installed before any client.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn usage_is_recorded_per_key_and_reported_in_buckets_grouped_and_paged() {
    let api = Api::start().await;
    let project = api.default_project();
    let mut keys = Vec::new();
    for name in ["ks:usage-a", "ks:usage-b"] {
        let created = api.create_account(&project, json!({"name": name})).await;
        keys.push((
            created.body["api_key"]["id"].as_str().unwrap().to_owned(),
            created.body["api_key"]["value"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    // A model request records what its answer's `usage` says; the control
    // call adds more.
    let answer = api
        .call(
            Method::POST,
            "/chat/completions",
            Some(&keys[0].1),
            Some(json!({"model": "gpt-4o-mini", "messages": []})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let added = api
        .client
        .post(api.control_url("/_sandbox/openai/usage"))
        .json(&json!({"key": keys[1].1, "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    let now = api.sandbox.clock.unix();
    let start = now - 86_400 * 2;

    // Both array forms group alike.
    for form in ["group_by[]=api_key_id", "group_by=api_key_id"] {
        let page = api
            .get(&format!(
                "/organization/usage/completions?start_time={start}&{form}"
            ))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_eq!(page.body["object"], "page");
        let buckets = page.body["data"].as_array().unwrap();
        assert_eq!(buckets.len(), 3, "two days back and today");
        let results = buckets[2]["results"].as_array().unwrap();
        let of = |id: &str| {
            results
                .iter()
                .find(|r| r["api_key_id"] == id)
                .unwrap_or_else(|| panic!("{id} in {results:?}"))
                .clone()
        };
        assert_eq!(of(&keys[0].0)["input_tokens"], 1);
        assert_eq!(of(&keys[0].0)["output_tokens"], 5);
        assert_eq!(of(&keys[1].0)["input_tokens"], 1000);
        assert_eq!(of(&keys[1].0)["num_model_requests"], 1);
        assert_eq!(of(&keys[1].0)["model"], Value::Null, "not grouped by model");
        assert_eq!(
            of(&keys[1].0)["object"],
            "organization.usage.completions.result"
        );
    }
    // Filtered to one key; without grouping, one total.
    let page = api
        .get(&format!(
            "/organization/usage/completions?start_time={start}&api_key_ids[]={}",
            keys[1].0
        ))
        .await;
    let results = page.body["data"][2]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["input_tokens"], 1000);
    assert_eq!(results[0]["api_key_id"], Value::Null);
    // Pages of `limit` buckets, followed by `next_page`.
    let first = api
        .get(&format!(
            "/organization/usage/completions?start_time={start}&bucket_width=1d&limit=2"
        ))
        .await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["has_more"], true);
    let cursor = first.body["next_page"].as_str().unwrap().to_owned();
    let second = api
        .get(&format!(
            "/organization/usage/completions?start_time={start}&bucket_width=1d&limit=2&page={}",
            cursor
                .replace('=', "%3D")
                .replace('+', "%2B")
                .replace('/', "%2F")
        ))
        .await;
    assert_eq!(second.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["has_more"], false);
    assert_eq!(second.body["next_page"], Value::Null);
    // What the spec says is refused, is.
    for bad in [
        String::new(),
        format!("start_time={start}&bucket_width=2d"),
        format!("start_time={start}&bucket_width=1d&limit=32"),
        format!("start_time={start}&group_by[]=colour"),
        format!("start_time={start}&end_time={start}"),
    ] {
        let reply = api
            .get(&format!("/organization/usage/completions?{bad}"))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.text
        );
    }
    // An issued key may not read usage.
    let reply = api
        .call(
            Method::GET,
            &format!("/organization/usage/completions?start_time={start}"),
            Some(&keys[0].1),
            None,
        )
        .await;
    assert!(reply.status.is_client_error());

    // Costs: daily, in USD, by key; `result` on request.
    let costs = api
        .get(&format!(
            "/organization/costs?start_time={start}&group_by[]=api_key_id"
        ))
        .await;
    assert_eq!(costs.status, StatusCode::OK, "{}", costs.text);
    let results = costs.body["data"][2]["results"].as_array().unwrap();
    let b = results
        .iter()
        .find(|r| r["api_key_id"] == keys[1].0.as_str())
        .unwrap();
    let value = b["amount"]["value"].as_f64().unwrap();
    assert!(
        (value - (1000.0 * 2.5 + 500.0 * 10.0) / 1e6).abs() < 1e-9,
        "{value}"
    );
    assert_eq!(b["amount"]["currency"], "usd");
    let other_form = api
        .get(&format!(
            "/organization/costs?start_time={start}&result_field=result"
        ))
        .await;
    assert!(other_form.body["data"][2]["result"].is_array());
    let hourly = api
        .get(&format!(
            "/organization/costs?start_time={start}&bucket_width=1h"
        ))
        .await;
    assert_eq!(hourly.status, StatusCode::BAD_REQUEST);

    // With a latency, usage shows only once it has passed.
    api.sandbox.openai.set_usage_latency(600);
    let page = api
        .get(&format!(
            "/organization/usage/completions?start_time={start}"
        ))
        .await;
    assert!(
        page.body["data"][2]["results"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    api.sandbox.clock.advance(Duration::from_secs(601));
    let page = api
        .get(&format!(
            "/organization/usage/completions?start_time={start}"
        ))
        .await;
    assert_eq!(page.body["data"][2]["results"].as_array().unwrap().len(), 1);
}
