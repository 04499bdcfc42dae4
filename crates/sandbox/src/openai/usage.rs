//! The Usage and Costs APIs (`/v1/organization/usage/completions`,
//! `/v1/organization/costs`), after the spec's section 4: time buckets of
//! `bucket_width` from `start_time`, `limit` buckets a page and a
//! `next_page` cursor, results grouped by what `group_by` names and
//! filtered by `project_ids`, `api_key_ids` and `models`.
//!
//! Where the sources disagree, both forms are accepted: arrays as
//! `group_by[]=a` (the SDK's) or `group_by=a` repeated; Costs buckets carry
//! `results` (the SDK's), and with `?result_field=result` (a knob of the
//! sandbox) `result`, as one stored page of the documentation says. Costs
//! accepts `group_by=api_key_id`, as the SDK does (uncertain for the real
//! API). Service accounts' keys belong to no user: grouping by `user_id`
//! gives null, and a `user_ids` filter keeps nothing. Usage is visible at once (the real API's latency is unknown; see
//! [`super::FakeOpenAi::set_usage_latency`]).

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::FakeOpenAi;
use super::api::Admin;
use super::error::ApiError;
use super::request::QueryParams;

/// Tokens one model request of a key used, at a time.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) at: i64,
    pub(super) project_id: String,
    pub(super) api_key_id: String,
    pub(super) model: String,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) requests: u64,
}

/// US dollars per million tokens (input, output) the Costs API charges in
/// the sandbox, by model; other models cost as `gpt-4o`.
pub const PRICES: [(&str, f64, f64); 3] = [
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("text-embedding-3-small", 0.02, 0.0),
];

fn price(model: &str) -> (f64, f64) {
    PRICES
        .iter()
        .find(|(m, _, _)| *m == model)
        .or_else(|| PRICES.iter().find(|(m, _, _)| *m == "gpt-4o"))
        .map_or((0.0, 0.0), |(_, i, o)| (*i, *o))
}

/// Every value of an array parameter, in either form.
fn array<'a>(query: &'a QueryParams, name: &str) -> Vec<&'a str> {
    let bracketed = format!("{name}[]");
    query
        .all(name)
        .into_iter()
        .chain(query.all(&bracketed))
        .collect()
}

/// One bucket: its start, its end, and the records that fall in it.
type Bucket<'a> = (i64, i64, Vec<&'a Record>);

/// A result's grouping: the value of each `group_by` field.
type GroupKey = Vec<(String, Value)>;

/// What both endpoints read from the query.
struct Window {
    start: i64,
    end: i64,
    width: i64,
    limit: usize,
    page: usize,
    group_by: Vec<String>,
    /// Every field the endpoint can group by: null in a result unless
    /// grouped by.
    groups: Vec<String>,
    project_ids: Vec<String>,
    api_key_ids: Vec<String>,
    models: Vec<String>,
    /// `user_ids`: service accounts' keys belong to no user, so any
    /// filter on users keeps none of them.
    user_ids: Vec<String>,
}

fn integer(query: &QueryParams, name: &str) -> Result<Option<i64>, ApiError> {
    query
        .get(name)
        .map(|raw| {
            raw.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid '{name}': expected an integer, but got '{raw}' instead."
                ))
                .param(name)
            })
        })
        .transpose()
}

impl Window {
    fn read(
        query: &QueryParams,
        now: i64,
        widths: &[(&str, i64, usize, usize)],
        groups: &[&str],
    ) -> Result<Self, ApiError> {
        let start = integer(query, "start_time")?.ok_or_else(|| {
            ApiError::bad_request("Missing required parameter: 'start_time'.").param("start_time")
        })?;
        let end = integer(query, "end_time")?.unwrap_or(now + 1);
        if end <= start {
            return Err(ApiError::bad_request(format!(
                "Invalid 'end_time': {end} is not after 'start_time' {start}."
            ))
            .param("end_time"));
        }
        let width_name = query.get("bucket_width").unwrap_or("1d");
        let Some((_, width, default_limit, max_limit)) =
            widths.iter().find(|(name, ..)| *name == width_name)
        else {
            return Err(ApiError::bad_request(format!(
                "Invalid 'bucket_width': '{width_name}' is not one of {}.",
                widths.iter().map(|w| w.0).collect::<Vec<_>>().join(", ")
            ))
            .param("bucket_width"));
        };
        let limit = match integer(query, "limit")? {
            None => *default_limit,
            Some(n) if n >= 1 && usize::try_from(n).is_ok_and(|n| n <= *max_limit) => {
                usize::try_from(n).unwrap_or(1)
            }
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid 'limit': {n} is not between 1 and {max_limit} for bucket_width {width_name}."
                ))
                .param("limit"));
            }
        };
        let page = match query.get("page") {
            None => 0,
            Some(cursor) => base64::engine::general_purpose::STANDARD
                .decode(cursor)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("page:").and_then(|n| n.parse().ok()))
                .ok_or_else(|| ApiError::bad_request("Invalid 'page' cursor.").param("page"))?,
        };
        let group_by: Vec<String> = array(query, "group_by")
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Some(bad) = group_by.iter().find(|g| !groups.contains(&g.as_str())) {
            return Err(ApiError::bad_request(format!(
                "Invalid 'group_by': '{bad}' is not one of {}.",
                groups.join(", ")
            ))
            .param("group_by"));
        }
        let owned = |name| array(query, name).into_iter().map(str::to_owned).collect();
        Ok(Self {
            start,
            end,
            width: *width,
            limit,
            page,
            group_by,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            project_ids: owned("project_ids"),
            api_key_ids: owned("api_key_ids"),
            user_ids: owned("user_ids"),
            models: owned("models"),
        })
    }

    fn keeps(&self, record: &Record) -> bool {
        let within =
            |filter: &[String], value: &str| filter.is_empty() || filter.iter().any(|f| f == value);
        self.user_ids.is_empty()
            && within(&self.project_ids, &record.project_id)
            && within(&self.api_key_ids, &record.api_key_id)
            && within(&self.models, &record.model)
    }

    /// The page's buckets, each with its records, and the next cursor.
    fn buckets<'a>(&self, records: &'a [Record]) -> (Vec<Bucket<'a>>, Option<String>) {
        let count = usize::try_from((self.end - self.start + self.width - 1).max(0) / self.width)
            .unwrap_or(0);
        let first = self.page * self.limit;
        let buckets = (first..count.min(first + self.limit))
            .map(|i| {
                let from = self.start + i64::try_from(i).unwrap_or(0) * self.width;
                let to = (from + self.width).min(self.end);
                let inside = records
                    .iter()
                    .filter(|r| r.at >= from && r.at < to && self.keeps(r))
                    .collect();
                (from, to, inside)
            })
            .collect();
        let next = (first + self.limit < count).then(|| {
            base64::engine::general_purpose::STANDARD.encode(format!("page:{}", self.page + 1))
        });
        (buckets, next)
    }

    /// `result` with every field the endpoint groups by: null, or the
    /// value `key` gives it.
    fn grouped(&self, mut result: Map<String, Value>, key: GroupKey) -> Value {
        for field in &self.groups {
            result.insert(field.clone(), Value::Null);
        }
        for (field, value) in key {
            result.insert(field, value);
        }
        Value::Object(result)
    }

    /// The grouping key of a record: the value of each `group_by` field.
    fn group(&self, record: &Record, line_item: Option<&str>) -> GroupKey {
        self.group_by
            .iter()
            .map(|g| {
                let value = match g.as_str() {
                    "project_id" => json!(record.project_id),
                    "api_key_id" => json!(record.api_key_id),
                    "model" => json!(record.model),
                    "line_item" => json!(line_item),
                    _ => Value::Null,
                };
                (g.clone(), value)
            })
            .collect()
    }
}

fn page(data: Vec<Value>, next: Option<String>) -> Value {
    json!({
        "object": "page",
        "data": data,
        "has_more": next.is_some(),
        "next_page": next,
    })
}

/// `GET /v1/organization/usage/completions`.
pub(super) async fn completions(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let window = Window::read(
        &query,
        fake.now(),
        &[
            ("1m", 60, 60, 1440),
            ("1h", 3600, 24, 168),
            ("1d", 86_400, 7, 31),
        ],
        &[
            "project_id",
            "user_id",
            "api_key_id",
            "model",
            "batch",
            "service_tier",
        ],
    )?;
    let records = fake.usage_visible();
    let (buckets, next) = window.buckets(&records);
    let data = buckets
        .into_iter()
        .map(|(from, to, inside)| {
            let mut groups: Vec<(GroupKey, [u64; 3])> = Vec::new();
            for record in inside {
                let key = window.group(record, None);
                let sums = match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, sums)) => sums,
                    None => {
                        groups.push((key, [0; 3]));
                        &mut groups.last_mut().expect("just pushed").1
                    }
                };
                sums[0] += record.input_tokens;
                sums[1] += record.output_tokens;
                sums[2] += record.requests;
            }
            let results: Vec<Value> = groups
                .into_iter()
                .map(|(key, [input, output, requests])| {
                    let mut result = Map::new();
                    result.insert(
                        "object".into(),
                        json!("organization.usage.completions.result"),
                    );
                    result.insert("input_tokens".into(), json!(input));
                    result.insert("output_tokens".into(), json!(output));
                    result.insert("input_cached_tokens".into(), json!(0));
                    result.insert("num_model_requests".into(), json!(requests));
                    window.grouped(result, key)
                })
                .collect();
            json!({"object": "bucket", "start_time": from, "end_time": to, "results": results})
        })
        .collect();
    Ok(Json(page(data, next)))
}

/// `GET /v1/organization/costs`: daily buckets only.
pub(super) async fn costs(
    _: Admin,
    State(fake): State<FakeOpenAi>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let window = Window::read(
        &query,
        fake.now(),
        &[("1d", 86_400, 7, 180)],
        &["project_id", "line_item", "api_key_id"],
    )?;
    let field = if query.get("result_field") == Some("result") {
        "result"
    } else {
        "results"
    };
    let records = fake.usage_visible();
    let (buckets, next) = window.buckets(&records);
    let data = buckets
        .into_iter()
        .map(|(from, to, inside)| {
            // Amount, and tokens (the `quantity` of a result grouped by
            // line item).
            let mut groups: Vec<(GroupKey, f64, u64)> = Vec::new();
            for record in inside {
                let (input_price, output_price) = price(&record.model);
                for (item, tokens, per_million) in [
                    ("input", record.input_tokens, input_price),
                    ("output", record.output_tokens, output_price),
                ] {
                    let line_item = format!("{}, {item}", record.model);
                    let key = window.group(record, Some(&line_item));
                    #[expect(clippy::cast_precision_loss, reason = "token counts far below 2^52")]
                    let amount = tokens as f64 * per_million / 1_000_000.0;
                    match groups.iter_mut().find(|(k, ..)| *k == key) {
                        Some((_, sum, quantity)) => {
                            *sum += amount;
                            *quantity += tokens;
                        }
                        None => groups.push((key, amount, tokens)),
                    }
                }
            }
            let results: Vec<Value> = groups
                .into_iter()
                .map(|(key, amount, quantity)| {
                    let mut result = Map::new();
                    result.insert("object".into(), json!("organization.costs.result"));
                    result.insert("amount".into(), json!({"value": amount, "currency": "usd"}));
                    // The spec: `quantity` comes with `line_item`.
                    if window.group_by.iter().any(|g| g == "line_item") {
                        #[expect(
                            clippy::cast_precision_loss,
                            reason = "token counts far below 2^52"
                        )]
                        result.insert("quantity".into(), json!(quantity as f64));
                    }
                    window.grouped(result, key)
                })
                .collect();
            json!({"object": "bucket", "start_time": from, "end_time": to, field: results})
        })
        .collect();
    Ok(Json(page(data, next)))
}
