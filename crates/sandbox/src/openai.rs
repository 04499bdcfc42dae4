//! Fake OpenAI Admin API: projects, project service accounts and their API
//! keys, the organisation's admin API keys, kept in memory and served over HTTP with the real paths, JSON
//! shapes, errors and headers, plus `GET /v1/models` where issued keys can
//! prove they work, and a test-control API under `/_sandbox`.
//!
//! Written from `shared/spec/openai-admin-api.md`. Where the spec is unsure,
//! the fake takes the stricter reading and says so where it does.

mod api;
mod control;
mod error;
mod ids;
mod knobs;
mod layers;
mod request;
mod state;
mod usage;
pub use usage::PRICES;
mod views;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::journal::Journal;

pub use error::ApiError;
pub use knobs::{Fault, FaultKind};
pub use state::Role;
pub use views::{KeyView, ProjectView, SeedAccount, SeededAccount, ServiceAccountView};

use knobs::{Bucket, Knobs};
use state::World;

/// Which generation of the Admin API the fake acts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// The public GitHub spec: no `expires_in_seconds`, no `expires_at`, no
    /// key-update endpoint, and service-account keys cannot be deleted
    /// one by one.
    Legacy,
    /// The newer API the SDKs are generated from.
    #[default]
    Current,
}

/// Settings of the fake OpenAI Admin API. All but `admin_key` can be changed
/// while it runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The admin key it accepts; `None` mints a random `sk-admin-…`.
    pub admin_key: Option<String>,
    /// API generation to act as.
    pub version: ApiVersion,
    /// Status of "Missing scopes" answers: 401 as observed (default) or 403
    /// as the spec says.
    pub scope_error_status: u16,
    /// Organisation expiry policy: when set, every key-creating call must
    /// send `expires_in_seconds` no larger than this.
    pub max_key_lifetime_secs: Option<u64>,
    /// Latency added to every `/v1` answer, in milliseconds.
    pub latency_ms: u64,
    /// Uniform random extra latency, 0 to this many milliseconds.
    pub jitter_ms: u64,
    /// Request-rate limit on `/v1/organization` routes (requests per
    /// second); beyond it the answer is 429 with `Retry-After`.
    pub rate_limit_per_s: Option<f64>,
    /// Bucket size of the rate limit; the rate (at least 1) when `None`.
    pub rate_limit_burst: Option<f64>,
    /// Fault plan to start with.
    pub faults: Vec<Fault>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_key: None,
            version: ApiVersion::Current,
            scope_error_status: 401,
            max_key_lifetime_secs: None,
            latency_ms: 0,
            jitter_ms: 0,
            rate_limit_per_s: None,
            rate_limit_burst: None,
            faults: Vec::new(),
        }
    }
}

struct Inner {
    clock: Clock,
    admin_key: String,
    organization_id: String,
    journal: Journal,
    world: Mutex<World>,
    knobs: Mutex<Knobs>,
    rate_limited: AtomicU64,
    /// Every model request's tokens, by key, kept after the key is gone.
    usage: Mutex<Vec<usage::Record>>,
    /// Seconds usage takes to show in the Usage and Costs APIs.
    usage_latency: std::sync::atomic::AtomicI64,
}

/// The fake OpenAI Admin API: its state, knobs and counters. Cheap to clone;
/// clones share everything.
#[derive(Clone)]
pub struct FakeOpenAi {
    inner: Arc<Inner>,
}

impl fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("organization_id", &self.inner.organization_id)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

fn scope_status(status: u16) -> StatusCode {
    match status {
        403 => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

impl FakeOpenAi {
    /// Builds the fake with its default project ("Default Project").
    pub fn new(config: Config, clock: Clock) -> Self {
        let now = clock.unix();
        let rate_limit = config
            .rate_limit_per_s
            .and_then(|rate| Bucket::new(rate, config.rate_limit_burst, clock.unix_ms()));
        let knobs = Knobs {
            version: config.version,
            scope_error_status: scope_status(config.scope_error_status),
            max_key_lifetime_secs: config.max_key_lifetime_secs,
            latency: Duration::from_millis(config.latency_ms),
            jitter: Duration::from_millis(config.jitter_ms),
            rate_limit,
            faults: config.faults.into_iter().filter(|f| f.count > 0).collect(),
        };
        let admin_key = config.admin_key.unwrap_or_else(ids::admin_key);
        Self {
            inner: Arc::new(Inner {
                world: Mutex::new(World::new(now, &admin_key)),
                admin_key,
                organization_id: ids::organization_id(),
                journal: Journal::new(),
                knobs: Mutex::new(knobs),
                rate_limited: AtomicU64::new(0),
                usage: Mutex::new(Vec::new()),
                usage_latency: std::sync::atomic::AtomicI64::new(0),
                clock,
            }),
        }
    }

    /// Routes: the API under `/v1`, test control under `/_sandbox`.
    pub fn router(&self) -> Router {
        let v1 = api::routes()
            .method_not_allowed_fallback(api::method_not_allowed)
            .route_layer(from_fn_with_state(self.clone(), layers::knobs))
            .fallback(api::invalid_url)
            .layer(from_fn_with_state(self.clone(), layers::envelope));
        control::routes(self.inner.clock.clone())
            .merge(v1)
            .with_state(self.clone())
    }

    /// The `sk-admin-…` key it was started with. It is listed under
    /// `/v1/organization/admin_api_keys` like any other admin key, and (as
    /// there) stops working if deleted; keys created through that endpoint
    /// work too.
    pub fn admin_key(&self) -> String {
        self.inner.admin_key.clone()
    }

    /// The organisation id it reports in `openai-organization`.
    pub fn organization_id(&self) -> &str {
        &self.inner.organization_id
    }

    /// The virtual clock it reads.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Every request answered on the API's port (control routes aside), with
    /// its body, a hash of its `Authorization` header and its
    /// `x-request-id`, and counters by method and route pattern (e.g.
    /// `POST /v1/organization/projects/{project_id}/service_accounts`). A
    /// request left hanging by a fault is recorded with status 0.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Calls by `"METHOD /route/{pattern}"`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.inner.journal.counters()
    }

    /// How many requests the rate limit answered with 429 (injected 429
    /// faults not included).
    pub fn rate_limited(&self) -> u64 {
        self.inner.rate_limited.load(Ordering::SeqCst)
    }

    /// Forgets the journal, the counters and the rate-limit count.
    pub fn reset_counters(&self) {
        self.inner.journal.reset();
        self.inner.rate_limited.store(0, Ordering::SeqCst);
    }

    // ----- state -----

    /// Creates an active project and returns its id.
    pub fn create_project(&self, name: &str) -> String {
        let now = self.now();
        self.world()
            .create_project(name.to_owned(), None, None, now)
            .id
            .clone()
    }

    /// Archives a project, as `POST …/archive` does.
    pub fn archive_project(&self, project_id: &str) -> Result<ProjectView, ApiError> {
        let now = self.now();
        self.world()
            .archive_project(project_id, now)
            .map(ProjectView::from)
    }

    /// Every project, archived ones too, oldest first.
    pub fn projects(&self) -> Vec<ProjectView> {
        self.world()
            .projects()
            .iter()
            .map(ProjectView::from)
            .collect()
    }

    /// One project by id.
    pub fn project(&self, project_id: &str) -> Option<ProjectView> {
        self.world().project(project_id).ok().map(ProjectView::from)
    }

    /// The oldest project with this name (names are not unique), archived
    /// or not.
    pub fn find_project_by_name(&self, name: &str) -> Option<ProjectView> {
        self.world()
            .projects()
            .iter()
            .find(|p| p.name == name)
            .map(ProjectView::from)
    }

    /// Id of the default project.
    pub fn default_project_id(&self) -> String {
        self.world().default_project_id().to_owned()
    }

    /// The service accounts of a project with their keys, oldest first
    /// (empty for an unknown project).
    pub fn service_accounts(&self, project_id: &str) -> Vec<ServiceAccountView> {
        let world = self.world();
        let Ok(project) = world.project(project_id) else {
            return Vec::new();
        };
        project
            .accounts
            .iter()
            .map(|a| ServiceAccountView::new(a, project))
            .collect()
    }

    /// One service account with its keys.
    pub fn service_account(
        &self,
        project_id: &str,
        account_id: &str,
    ) -> Option<ServiceAccountView> {
        let world = self.world();
        let project = world.project(project_id).ok()?;
        let account = project.accounts.get(account_id)?;
        Some(ServiceAccountView::new(account, project))
    }

    /// Puts accounts straight into a project (10,000 take a few
    /// milliseconds). Each gets one key unless its role is `none`.
    pub fn seed_service_accounts(
        &self,
        project_id: &str,
        accounts: Vec<SeedAccount>,
    ) -> Result<Vec<SeededAccount>, ApiError> {
        let mut world = self.world();
        world.active_project(project_id, state::Use::ServiceAccounts)?;
        accounts
            .into_iter()
            .map(|seed| {
                let role = seed.role.unwrap_or(Role::Member);
                let key = (role != Role::None).then(|| state::NewKey {
                    name: "Secret Key".to_owned(),
                    scopes: Vec::new(),
                    created_at: seed.created_at,
                    expires_at: seed.expires_at,
                });
                let (account, issued) =
                    world.create_account(project_id, seed.name, role, key, seed.created_at)?;
                Ok(SeededAccount {
                    id: account.id,
                    key_id: issued.as_ref().map(|i| i.key.id.clone()),
                    key_value: issued.map(|i| i.value),
                })
            })
            .collect()
    }

    /// Whether a key value would authenticate now: it exists, has not
    /// expired, and its account and project are usable.
    pub fn key_is_live(&self, value: &str) -> bool {
        let now = self.now();
        self.world().live_key(value, now).is_some()
    }

    /// The id of the service account whose live key `value` is, if the
    /// key is live.
    pub fn account_of_key(&self, value: &str) -> Option<String> {
        let now = self.now();
        self.world()
            .live_key(value, now)
            .map(|live| live.account.id.clone())
    }

    /// Records `input` and `output` tokens of one request to `model` with
    /// the key whose value is `key`, now (as a model request would). False
    /// when no key has that value (live or not).
    pub fn add_usage(&self, key: &str, model: &str, input: u64, output: u64) -> bool {
        let Some((project_id, api_key_id)) = self.world().locate_key(key) else {
            return false;
        };
        self.record_usage(usage::Record {
            at: self.now(),
            project_id,
            api_key_id,
            model: model.to_owned(),
            input_tokens: input,
            output_tokens: output,
            requests: 1,
        });
        true
    }

    /// Records usage of the key `api_key_id` of `project_id` at `at` (Unix
    /// seconds), whether or not such a key exists.
    pub fn add_usage_by_id(
        &self,
        project_id: &str,
        api_key_id: &str,
        model: &str,
        tokens: (u64, u64),
        at: i64,
    ) {
        self.record_usage(usage::Record {
            at,
            project_id: project_id.to_owned(),
            api_key_id: api_key_id.to_owned(),
            model: model.to_owned(),
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            requests: 1,
        });
    }

    fn record_usage(&self, record: usage::Record) {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    /// Usage shows in the Usage and Costs APIs `secs` after it happened
    /// (default 0: at once). The real API's delay is not documented.
    pub fn set_usage_latency(&self, secs: i64) {
        self.inner.usage_latency.store(secs, Ordering::SeqCst);
    }

    /// The usage the Usage API shows now.
    fn usage_visible(&self) -> Vec<usage::Record> {
        let shown_until = self.now() - self.inner.usage_latency.load(Ordering::SeqCst);
        self.inner
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.at <= shown_until)
            .cloned()
            .collect()
    }

    // ----- knobs -----

    /// The API generation it acts as.
    pub fn version(&self) -> ApiVersion {
        self.knobs().version
    }

    /// Switches the API generation.
    pub fn set_version(&self, version: ApiVersion) {
        self.knobs().version = version;
    }

    /// Sets or lifts the organisation's maximum key lifetime.
    pub fn set_max_key_lifetime(&self, secs: Option<u64>) {
        self.knobs().max_key_lifetime_secs = secs;
    }

    /// 401 (observed) or 403 (spec) for "Missing scopes" answers; any other
    /// value means 401.
    pub fn set_scope_error_status(&self, status: u16) {
        self.knobs().scope_error_status = scope_status(status);
    }

    /// Latency added to every `/v1` answer: `fixed` plus a uniform draw from
    /// `0..=jitter`.
    pub fn set_latency(&self, fixed: Duration, jitter: Duration) {
        let mut knobs = self.knobs();
        knobs.latency = fixed;
        knobs.jitter = jitter;
    }

    /// Sets (or with `None` lifts) the request-rate limit on
    /// `/v1/organization` routes, bucket size = the rate (at least 1). A
    /// rate that is not positive and finite lifts it.
    pub fn set_rate_limit(&self, per_second: Option<f64>) {
        self.set_rate_limit_with_burst(per_second, None);
    }

    /// Like [`Self::set_rate_limit`] with an explicit bucket size. The
    /// bucket starts full.
    pub fn set_rate_limit_with_burst(&self, per_second: Option<f64>, burst: Option<f64>) {
        let now_ms = self.inner.clock.unix_ms();
        self.knobs().rate_limit = per_second.and_then(|rate| Bucket::new(rate, burst, now_ms));
    }

    /// Appends a rule to the fault plan (a rule with count 0 does nothing).
    pub fn push_fault(&self, fault: Fault) {
        if fault.count > 0 {
            self.knobs().faults.push(fault);
        }
    }

    /// Empties the fault plan.
    pub fn clear_faults(&self) {
        self.knobs().faults.clear();
    }

    /// The rules of the fault plan not yet used up, with their remaining
    /// counts.
    pub fn faults(&self) -> Vec<Fault> {
        self.knobs().faults.clone()
    }

    // ----- internals -----

    fn now(&self) -> i64 {
        self.inner.clock.unix()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner
            .world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.inner
            .knobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn scope_error_status(&self) -> StatusCode {
        self.knobs().scope_error_status
    }

    /// Applies the organisation's expiry policy to a key-creating call.
    fn check_key_lifetime(&self, expires_in: Option<i64>) -> Result<(), ApiError> {
        let Some(max) = self.knobs().max_key_lifetime_secs else {
            return Ok(());
        };
        match expires_in {
            None => Err(ApiError::bad_request(format!(
                "Missing required parameter: 'expires_in_seconds'. Your organization's key \
                 expiry policy requires API keys to expire within {max} seconds."
            ))
            .param("expires_in_seconds")
            .code("missing_required_parameter")),
            Some(secs) if u64::try_from(secs).unwrap_or(0) > max => {
                Err(ApiError::bad_request(format!(
                    "Invalid 'expires_in_seconds': {secs} is longer than the maximum key \
                     lifetime of {max} seconds set by your organization's key expiry policy."
                ))
                .param("expires_in_seconds")
                .code("integer_above_max_value"))
            }
            Some(_) => Ok(()),
        }
    }

    /// Whether a matched `/v1` request may go on: a 429 when the rate limit
    /// (on `/v1/organization` only) is exhausted, else the fault to apply,
    /// if any.
    fn admit(
        &self,
        method: &axum::http::Method,
        path: &str,
        route: Option<&str>,
    ) -> Result<Option<FaultKind>, ApiError> {
        let now_ms = self.inner.clock.unix_ms();
        let mut knobs = self.knobs();
        if path.starts_with("/v1/organization")
            && let Some(bucket) = knobs.rate_limit.as_mut()
            && let Err(retry_after) = bucket.take(now_ms)
        {
            self.inner.rate_limited.fetch_add(1, Ordering::SeqCst);
            return Err(ApiError::rate_limited(bucket.rate, retry_after));
        }
        Ok(knobs.take_fault(method, path, route))
    }
}
