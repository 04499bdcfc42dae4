//! Prometheus metrics (`GET /metrics`, or `METRICS_ADDRESS`): one registry
//! per server, handed to the parts that count. No label carries a person,
//! a job or a key: only rules, routes, reasons and outcomes, all bounded by
//! the configuration.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The metrics of one server. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    issued: Family<Issued, Counter>,
    refused: Family<Reason, Counter>,
    revoked: Family<Actor, Counter>,
    live: Gauge,
    sign_ins: Family<Outcome, Counter>,
    sweeps: Family<Sweep, Counter>,
    sweep_seconds: Family<Kind, Histogram>,
    sweep_deleted: Counter,
    sweep_failed: Counter,
    admin_requests: Family<AdminCall, Counter>,
    admin_seconds: Family<AdminRoute, Histogram>,
    jwks: Family<Outcome, Counter>,
    rate_limited: Family<HttpRoute, Counter>,
    http_requests: Family<HttpCall, Counter>,
    http_seconds: Family<HttpRoute, Histogram>,
    upstream_up: Family<Upstream, Gauge>,
    usage_tokens: Family<UsageTokens, Gauge>,
    usage_polls: Counter,
    usage_poll_calls: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageTokens {
    rule: String,
    /// `input` or `output`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Issued {
    rule: String,
    /// `person` or `job`.
    holder: &'static str,
    scoped: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Actor {
    /// `self`, `admin`, `expiry` or `sweep`.
    actor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sweep {
    /// `full` or `due`.
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminCall {
    route: String,
    /// The HTTP status, or `error` when no answer came.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminRoute {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRoute {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpCall {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Upstream {
    /// `openai` or `identity_provider`.
    upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
}

/// Buckets from 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Who revoked a key, as the metrics tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokedBy {
    /// The holder, on their keys page or through the API.
    Holder,
    /// An admin.
    Admin,
    /// The holder's budget, spent (`on_over_budget = "revoke"`).
    Budget,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `oks_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oks");
        let inner = Inner {
            issued: Family::default(),
            refused: Family::default(),
            revoked: Family::default(),
            live: Gauge::default(),
            sign_ins: Family::default(),
            sweeps: Family::default(),
            sweep_seconds: Family::new_with_constructor(latency),
            sweep_deleted: Counter::default(),
            sweep_failed: Counter::default(),
            admin_requests: Family::default(),
            admin_seconds: Family::new_with_constructor(latency),
            jwks: Family::default(),
            rate_limited: Family::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency),
            upstream_up: Family::default(),
            usage_tokens: Family::default(),
            usage_polls: Counter::default(),
            usage_poll_calls: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "keys_issued",
            "Keys issued, by the rule that granted them, holder kind and whether scoped",
            inner.issued.clone(),
        );
        registry.register(
            "keys_refused",
            "Key requests and sign-ins refused, by reason",
            inner.refused.clone(),
        );
        registry.register(
            "keys_revoked",
            "Keys whose account was deleted, by who: self, admin, expiry (the schedule), sweep (a full listing)",
            inner.revoked.clone(),
        );
        registry.register(
            "live_keys",
            "Live keys of this server in every project, as this replica's schedule knows them",
            inner.live.clone(),
        );
        registry.register(
            "sign_ins",
            "Browser sign-ins completed, by outcome: success, refused (the policy), failed",
            inner.sign_ins.clone(),
        );
        registry.register(
            "sweeps",
            "Cleanup runs, by kind (full listing or due deletes) and outcome",
            inner.sweeps.clone(),
        );
        registry.register_with_unit(
            "sweep_duration",
            "How long cleanup runs took",
            Unit::Seconds,
            inner.sweep_seconds.clone(),
        );
        registry.register(
            "sweep_deleted_accounts",
            "Accounts of this server deleted by cleanup runs",
            inner.sweep_deleted.clone(),
        );
        registry.register(
            "sweep_failed_deletes",
            "Deletes of due accounts that failed (retried by a later run)",
            inner.sweep_failed.clone(),
        );
        registry.register(
            "admin_api_requests",
            "Calls to the OpenAI Admin API, by route and status (error: no answer)",
            inner.admin_requests.clone(),
        );
        registry.register_with_unit(
            "admin_api_request_duration",
            "Latency of Admin API calls, by route",
            Unit::Seconds,
            inner.admin_seconds.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "Fetches of an issuer's signing keys, by outcome",
            inner.jwks.clone(),
        );
        registry.register(
            "rate_limited_answers",
            "Answers 429 given, by route",
            inner.rate_limited.clone(),
        );
        registry.register(
            "http_requests",
            "Requests answered, by route, method and status",
            inner.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer a request, by route",
            Unit::Seconds,
            inner.http_seconds.clone(),
        );
        registry.register(
            "upstream_up",
            "1 when the last call to the upstream succeeded, 0 when it failed",
            inner.upstream_up.clone(),
        );
        registry.register(
            "usage_tokens",
            "Tokens the keys of this server used today (UTC), by the rule of their holder (unknown: a holder this replica has not decided for) and direction, as OpenAI's Usage API last said",
            inner.usage_tokens.clone(),
        );
        registry.register(
            "usage_polls",
            "Reads of OpenAI's Usage API",
            inner.usage_polls.clone(),
        );
        registry.register(
            "usage_poll_admin_calls",
            "Admin API calls those reads made (key listings and usage pages)",
            inner.usage_poll_calls.clone(),
        );
        registry.register(
            "build",
            "This build",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self(Arc::new(Inner { registry, ..inner }))
    }

    /// The exposition (Prometheus text 0.0.4), with the live keys as now.
    pub fn render(&self, live_keys: usize) -> String {
        self.0
            .live
            .set(i64::try_from(live_keys).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.0.registry);
        text
    }

    /// A read of the Usage API that made `calls` Admin API calls, and the
    /// day's tokens by rule it found.
    pub fn usage(&self, calls: u64, by_rule: &[(String, crate::usage::Tokens)]) {
        self.0.usage_polls.inc();
        self.0.usage_poll_calls.inc_by(calls);
        self.0.usage_tokens.clear();
        for (rule, tokens) in by_rule {
            for (direction, count) in [("input", tokens.input), ("output", tokens.output)] {
                self.0
                    .usage_tokens
                    .get_or_create(&UsageTokens {
                        rule: rule.clone(),
                        direction,
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    /// A key issued under `rule`.
    pub fn issued(&self, rule: &str, job: bool, scoped: bool) {
        self.0
            .issued
            .get_or_create(&Issued {
                rule: rule.to_owned(),
                holder: if job { "job" } else { "person" },
                scoped: if scoped { "true" } else { "false" },
            })
            .inc();
    }

    /// A request refused, for `reason` (a fixed word).
    pub fn refused(&self, reason: &'static str) {
        self.0.refused.get_or_create(&Reason { reason }).inc();
    }

    /// `count` keys revoked by `by`.
    pub fn revoked(&self, by: RevokedBy, count: usize) {
        let actor = match by {
            RevokedBy::Holder => "self",
            RevokedBy::Admin => "admin",
            RevokedBy::Budget => "budget",
        };
        self.0
            .revoked
            .get_or_create(&Actor { actor })
            .inc_by(count as u64);
    }

    /// A sign-in's outcome: `success`, `refused` or `failed`.
    pub fn sign_in(&self, outcome: &'static str) {
        self.0.sign_ins.get_or_create(&Outcome { outcome }).inc();
    }

    /// A cleanup run of `kind` (`full` or `due`).
    pub fn sweep(
        &self,
        kind: &'static str,
        ok: bool,
        took: Duration,
        deleted: usize,
        failed: usize,
    ) {
        let outcome = if ok { "ok" } else { "failed" };
        self.0.sweeps.get_or_create(&Sweep { kind, outcome }).inc();
        self.0
            .sweep_seconds
            .get_or_create(&Kind { kind })
            .observe(took.as_secs_f64());
        self.0.sweep_deleted.inc_by(deleted as u64);
        self.0.sweep_failed.inc_by(failed as u64);
        let actor = if kind == "full" { "sweep" } else { "expiry" };
        self.0
            .revoked
            .get_or_create(&Actor { actor })
            .inc_by(deleted as u64);
    }

    /// One Admin API call on `route`, answered with `status` (`None`: no
    /// answer), after `took`.
    pub fn admin_call(&self, route: &str, status: Option<u16>, took: Duration) {
        self.0
            .admin_requests
            .get_or_create(&AdminCall {
                route: route.to_owned(),
                status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
            })
            .inc();
        self.0
            .admin_seconds
            .get_or_create(&AdminRoute {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
        let up = status.is_some_and(|s| s < 500);
        self.upstream("openai", up);
    }

    /// Whether the last call to `upstream` worked.
    pub fn upstream(&self, upstream: &'static str, up: bool) {
        self.0
            .upstream_up
            .get_or_create(&Upstream { upstream })
            .set(i64::from(up));
    }

    /// Whether the last call to `upstream` worked (`None`: none yet).
    pub fn upstream_state(&self, upstream: &'static str) -> Option<bool> {
        self.0
            .upstream_up
            .get(&Upstream { upstream })
            .map(|gauge| gauge.get() == 1)
    }

    /// A fetch of signing keys.
    pub fn jwks_refresh(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.0.jwks.get_or_create(&Outcome { outcome }).inc();
        self.upstream("identity_provider", ok);
    }

    /// A request answered on `route` (the matched pattern).
    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.0
            .http_requests
            .get_or_create(&HttpCall {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        let route = HttpRoute {
            route: route.to_owned(),
        };
        self.0
            .http_seconds
            .get_or_create(&route)
            .observe(took.as_secs_f64());
        if status == 429 {
            self.0.rate_limited.get_or_create(&route).inc();
        }
    }
}

/// The route of an Admin API URL path: ids become their placeholders, as
/// the API's reference writes them (`/v1/organization/projects/{project_id}/…`).
pub fn admin_route(path: &str) -> String {
    let mut route = Vec::new();
    let mut previous = "";
    for segment in path.split('/') {
        let placeholder = match previous {
            "projects" => Some("{project_id}"),
            "service_accounts" => Some("{service_account_id}"),
            "api_keys" => Some("{api_key_id}"),
            "admin_api_keys" => Some("{key_id}"),
            _ => None,
        };
        route.push(placeholder.unwrap_or(segment));
        previous = segment;
    }
    route.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_placeholders_and_nothing_else_does() {
        assert_eq!(
            admin_route("/v1/organization/projects/proj_1/service_accounts/svc_2"),
            "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}"
        );
        assert_eq!(
            admin_route("/v1/organization/projects/proj_1/service_accounts/svc_2/api_keys"),
            "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys"
        );
        assert_eq!(
            admin_route("/v1/organization/projects"),
            "/v1/organization/projects"
        );
    }

    #[test]
    fn the_exposition_names_every_family_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.issued("staff", false, false);
        metrics.admin_call(
            "/v1/organization/projects",
            Some(200),
            Duration::from_millis(3),
        );
        let text = metrics.render(7);
        assert!(
            text.contains(
                "oks_keys_issued_total{rule=\"staff\",holder=\"person\",scoped=\"false\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("oks_live_keys 7"), "{text}");
        assert!(text.contains("oks_build_info{version="), "{text}");
        assert!(
            text.contains("oks_admin_api_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
