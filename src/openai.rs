//! A typed client for the parts of the OpenAI Admin API the server uses:
//! projects and project service accounts. It knows nothing of the web; its
//! error type says what happened upstream so that callers can decide.

mod error;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{timing, upstream};

pub use error::Error;

/// The largest page the list endpoints serve.
pub const PAGE_SIZE: u32 = 100;

/// An OpenAI project.
#[derive(Clone, Debug, Deserialize)]
pub struct Project {
    /// `proj_…`
    pub id: String,
    /// Display name; not unique.
    #[serde(default)]
    pub name: Option<String>,
    /// `active` or `archived`.
    #[serde(default)]
    pub status: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}

/// A project service account as listed (no key information).
#[derive(Clone, Debug, Deserialize)]
pub struct ServiceAccount {
    /// `svc_acct_…` (opaque).
    pub id: String,
    /// The name it was created with.
    #[serde(default)]
    pub name: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}

/// The key returned, once, by the create call.
#[derive(Debug, Deserialize)]
pub struct CreatedKey {
    /// `key_…`
    pub id: String,
    /// The secret. Never logged, never stored.
    pub value: SecretString,
    /// When OpenAI stops accepting it (absent on older API versions).
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The answer to a service-account create.
#[derive(Debug, Deserialize)]
pub struct CreatedServiceAccount {
    /// `svc_acct_…`
    pub id: String,
    /// The name it was created with.
    #[serde(default)]
    pub name: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// The initial key; `None` when created without one.
    #[serde(default)]
    pub api_key: Option<CreatedKey>,
}

/// A project API key as listed (never its secret).
#[derive(Clone, Debug, Deserialize)]
pub struct ProjectApiKey {
    /// `key_…`
    pub id: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// Unix seconds of the last use; `None` until first use.
    #[serde(default)]
    pub last_used_at: Option<i64>,
    /// Whose key it is.
    #[serde(default)]
    pub owner: Option<KeyOwner>,
}

/// The owner of a project API key: a user or a service account.
#[derive(Clone, Debug, Deserialize)]
pub struct KeyOwner {
    /// `user` or `service_account`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Set when `kind` is `service_account`.
    #[serde(default)]
    pub service_account: Option<OwnerAccount>,
}

/// The service account that owns a key, as a key listing names it.
#[derive(Clone, Debug, Deserialize)]
pub struct OwnerAccount {
    /// `svc_acct_…`
    pub id: String,
}

/// One page of a cursor-paginated list.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Whether another page follows.
    #[serde(default)]
    pub has_more: bool,
    /// Cursor for the next page.
    #[serde(default)]
    pub last_id: Option<String>,
}

/// A page of the Usage API: time buckets, and the cursor of the next page.
#[derive(Debug, Deserialize)]
pub struct UsagePage {
    /// The buckets, oldest first.
    pub data: Vec<UsageBucket>,
    /// Whether another page follows.
    #[serde(default)]
    pub has_more: bool,
    /// Its cursor (`page`).
    #[serde(default)]
    pub next_page: Option<String>,
}

/// One time bucket of usage.
#[derive(Debug, Deserialize)]
pub struct UsageBucket {
    /// Its start (Unix seconds, inclusive).
    pub start_time: i64,
    /// Its end (exclusive).
    pub end_time: i64,
    /// One result per group. The SDK names it `results`; one page of the
    /// documentation `result`: both are read.
    #[serde(default, alias = "result")]
    pub results: Vec<UsageResult>,
}

/// The tokens of one group (here: one key) in one bucket.
#[derive(Debug, Default, Deserialize)]
pub struct UsageResult {
    /// Input tokens (cached ones included).
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Model requests.
    #[serde(default)]
    pub num_model_requests: u64,
    /// The key, when grouped by `api_key_id`.
    #[serde(default)]
    pub api_key_id: Option<String>,
    /// The model, when grouped by `model`.
    #[serde(default)]
    pub model: Option<String>,
}

/// A page of the Costs API.
#[derive(Debug, Deserialize)]
pub struct CostsPage {
    /// Daily buckets, oldest first.
    pub data: Vec<CostsBucket>,
    /// Whether another page follows.
    #[serde(default)]
    pub has_more: bool,
    /// Its cursor (`page`).
    #[serde(default)]
    pub next_page: Option<String>,
}

/// One day of costs.
#[derive(Debug, Deserialize)]
pub struct CostsBucket {
    /// One result per group: `results` in the SDK, `result` in one page
    /// of the documentation; both are read.
    #[serde(default, alias = "result")]
    pub results: Vec<CostsResult>,
}

/// What one group cost.
#[derive(Debug, Deserialize)]
pub struct CostsResult {
    /// How much.
    pub amount: Amount,
    /// The key, when grouped by `api_key_id`.
    #[serde(default)]
    pub api_key_id: Option<String>,
}

/// An amount of money.
#[derive(Debug, Deserialize)]
pub struct Amount {
    /// In `currency`.
    pub value: f64,
    /// Lowercase ISO 4217 (`usd`).
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Serialize)]
struct CreateServiceAccount<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_seconds: Option<u64>,
    /// True: no role and no key yet (for a key restricted from birth).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    create_service_account_only: bool,
}

#[derive(Serialize)]
struct UpdateRole<'a> {
    role: &'a str,
}

#[derive(Serialize)]
struct CreateAccountKey<'a> {
    scopes: &'a [String],
    expires_in_seconds: u64,
}

#[derive(Serialize)]
struct CreateProject<'a> {
    name: &'a str,
}

/// Admin API client: one connection pool, the admin key, a timeout per call.
#[derive(Clone, Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    base: Url,
    key: crate::secrets::Rotating,
    metrics: crate::metrics::Metrics,
}

impl AdminClient {
    /// A client for `base` (e.g. `https://api.openai.com/v1`). `http` should
    /// have its timeout set and redirects off.
    /// The key may be one that rotates: every call reads it anew.
    pub fn new(
        http: reqwest::Client,
        base: &Url,
        key: impl Into<crate::secrets::Rotating>,
    ) -> Self {
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Self {
            http,
            base,
            key: key.into(),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Counting its calls in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self
            .base
            .join(path)
            .expect("relative API paths always join onto the base URL");
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let route = format!("{method} {}", crate::metrics::admin_route(url.path()));
        let started = std::time::Instant::now();
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.key.current().expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match timing::upstream(request.send()).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics.admin_call(&route, None, started.elapsed());
                return Err(Error::from_transport(error));
            }
        };
        let status = response.status();
        self.metrics
            .admin_call(&route, Some(status.as_u16()), started.elapsed());
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match timing::upstream(upstream::read_capped(
            response,
            upstream::ADMIN_API_MAX_BYTES,
        ))
        .await
        {
            Ok(bytes) => bytes,
            Err(upstream::ReadError::TooLarge { limit }) if status.is_success() => {
                return Err(Error::TooLarge { limit, request_id });
            }
            // A refusal too large to read: its status says enough.
            Err(upstream::ReadError::TooLarge { .. }) => bytes::Bytes::new(),
            Err(upstream::ReadError::Transport(error)) => return Err(Error::from_transport(error)),
        };
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
                message: e.to_string(),
                request_id,
            })
        } else {
            Err(Error::from_response(
                status,
                &bytes,
                request_id,
                retry_after,
            ))
        }
    }

    /// One page of active projects.
    pub async fn list_projects(&self, after: Option<&str>) -> Result<Page<Project>, Error> {
        let limit = PAGE_SIZE.to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let url = self.url("organization/projects", &query);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// Creates a project.
    pub async fn create_project(&self, name: &str) -> Result<Project, Error> {
        let url = self.url("organization/projects", &[]);
        self.call(Method::POST, url, Some(&CreateProject { name }))
            .await
    }

    /// Archives a project (projects cannot be deleted).
    pub async fn archive_project(&self, project_id: &str) -> Result<Project, Error> {
        let url = self.url(&format!("organization/projects/{project_id}/archive"), &[]);
        self.call(Method::POST, url, None::<&()>).await
    }

    /// Reads one project (to check a configured id).
    pub async fn retrieve_project(&self, project_id: &str) -> Result<Project, Error> {
        let url = self.url(&format!("organization/projects/{project_id}"), &[]);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// Creates a service account and its key. **Not idempotent**: never
    /// retry this blindly after an ambiguous failure.
    pub async fn create_service_account(
        &self,
        project_id: &str,
        name: &str,
        expires_in_seconds: Option<u64>,
    ) -> Result<CreatedServiceAccount, Error> {
        let url = self.url(
            &format!("organization/projects/{project_id}/service_accounts"),
            &[],
        );
        let body = CreateServiceAccount {
            name,
            expires_in_seconds,
            create_service_account_only: false,
        };
        self.call(Method::POST, url, Some(&body)).await
    }

    /// Creates a service account with no role and no key
    /// (`create_service_account_only`), to give it a restricted key next.
    /// **Not idempotent**, like [`AdminClient::create_service_account`].
    pub async fn create_service_account_only(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<CreatedServiceAccount, Error> {
        let url = self.url(
            &format!("organization/projects/{project_id}/service_accounts"),
            &[],
        );
        let body = CreateServiceAccount {
            name,
            expires_in_seconds: None,
            create_service_account_only: true,
        };
        self.call(Method::POST, url, Some(&body)).await
    }

    /// Gives a service account a role in its project (`member`): one
    /// created without a role can do nothing with its keys.
    pub async fn set_service_account_role(
        &self,
        project_id: &str,
        service_account_id: &str,
        role: &str,
    ) -> Result<ServiceAccount, Error> {
        let url = self.url(
            &format!("organization/projects/{project_id}/service_accounts/{service_account_id}"),
            &[],
        );
        self.call(Method::POST, url, Some(&UpdateRole { role }))
            .await
    }

    /// Creates a key for an existing service account, restricted to
    /// `scopes` and ending after `expires_in_seconds`.
    pub async fn create_service_account_key(
        &self,
        project_id: &str,
        service_account_id: &str,
        scopes: &[String],
        expires_in_seconds: u64,
    ) -> Result<CreatedKey, Error> {
        let url = self.url(
            &format!(
                "organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys"
            ),
            &[],
        );
        let body = CreateAccountKey {
            scopes,
            expires_in_seconds,
        };
        self.call(Method::POST, url, Some(&body)).await
    }

    /// One page of a project's service accounts.
    pub async fn list_service_accounts(
        &self,
        project_id: &str,
        after: Option<&str>,
    ) -> Result<Page<ServiceAccount>, Error> {
        let limit = PAGE_SIZE.to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let url = self.url(
            &format!("organization/projects/{project_id}/service_accounts"),
            &query,
        );
        self.call(Method::GET, url, None::<&()>).await
    }

    /// One page of a project's API keys, every enabled one
    /// (`owner_project_access=any`), with when each was last used.
    pub async fn list_project_api_keys(
        &self,
        project_id: &str,
        after: Option<&str>,
    ) -> Result<Page<ProjectApiKey>, Error> {
        let limit = PAGE_SIZE.to_string();
        let mut query = vec![("limit", limit.as_str()), ("owner_project_access", "any")];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let url = self.url(
            &format!("organization/projects/{project_id}/api_keys"),
            &query,
        );
        self.call(Method::GET, url, None::<&()>).await
    }

    /// Completions usage in `project_id` from `start_time` (Unix seconds)
    /// on, in daily buckets, per key and model (`group_by[]=api_key_id`,
    /// `group_by[]=model`); `page` is the previous page's `next_page`.
    pub async fn completions_usage_by_key(
        &self,
        project_id: &str,
        start_time: i64,
        page: Option<&str>,
    ) -> Result<UsagePage, Error> {
        self.daily_page(
            "organization/usage/completions",
            &["api_key_id", "model"],
            project_id,
            start_time,
            page,
        )
        .await
    }

    /// Costs in `project_id` from `start_time` on, in daily buckets, per
    /// key (`group_by[]=api_key_id`, which the SDK has and one page of the
    /// documentation does not: a 400 means the API does not group so).
    pub async fn costs_by_key(
        &self,
        project_id: &str,
        start_time: i64,
        page: Option<&str>,
    ) -> Result<CostsPage, Error> {
        self.daily_page(
            "organization/costs",
            &["api_key_id"],
            project_id,
            start_time,
            page,
        )
        .await
    }

    /// One page of a Usage or Costs endpoint at `path`: one project's
    /// daily buckets from `start_time`, a month's worth a page, grouped by
    /// `group_by` (arrays in the SDK's bracket form).
    async fn daily_page<T: DeserializeOwned>(
        &self,
        path: &str,
        group_by: &[&str],
        project_id: &str,
        start_time: i64,
        page: Option<&str>,
    ) -> Result<T, Error> {
        let start = start_time.to_string();
        let mut query = vec![
            ("start_time", start.as_str()),
            ("bucket_width", "1d"),
            ("limit", "31"),
        ];
        query.extend(group_by.iter().map(|group| ("group_by[]", *group)));
        query.push(("project_ids[]", project_id));
        if let Some(page) = page {
            query.push(("page", page));
        }
        let url = self.url(path, &query);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// Deletes a service account, which revokes its keys. A 404 comes back
    /// as [`Error::NotFound`]; cleanup treats it as done.
    pub async fn delete_service_account(
        &self,
        project_id: &str,
        service_account_id: &str,
    ) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Deleted {}
        let url = self.url(
            &format!("organization/projects/{project_id}/service_accounts/{service_account_id}"),
            &[],
        );
        let _: Deleted = self.call(Method::DELETE, url, None::<&()>).await?;
        Ok(())
    }
}

impl Error {
    /// The HTTP status OpenAI answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            Self::Forbidden { .. } => Some(StatusCode::FORBIDDEN),
            Self::NotFound { .. } => Some(StatusCode::NOT_FOUND),
            Self::BadRequest { .. } => Some(StatusCode::BAD_REQUEST),
            Self::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Self::Api { status, .. } => StatusCode::from_u16(*status).ok(),
            Self::Timeout
            | Self::Transport { .. }
            | Self::Decode { .. }
            | Self::TooLarge { .. } => None,
        }
    }
}
