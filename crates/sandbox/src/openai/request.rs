//! Parsing of request bodies, query strings and path parameters into the
//! API's own 400 answers (axum's default rejections are plain text, which
//! the real API never sends).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The most a list may return per page, and the default page size.
pub(super) const MAX_LIMIT: i64 = 100;
const DEFAULT_LIMIT: i64 = 20;

const INVALID_JSON: &str = "We could not parse the JSON body of your request. (HINT: This \
     likely means you aren't using your HTTP library correctly. The OpenAI API expects a \
     JSON payload, but what was sent was not valid JSON. If you have trouble figuring out \
     how to fix this, please contact us through our help center at help.openai.com.)";

/// A request field as sent: absent, explicit `null`, or a value. The API
/// tells the first two apart (the key-update endpoint rejects `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Field<T> {
    /// Not in the body.
    Absent,
    /// Sent as `null`.
    Null,
    /// Sent with a value.
    Value(T),
}

impl<T> Field<T> {
    /// The value; absent and `null` both give `None`.
    pub(super) fn into_option(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Absent | Self::Null => None,
        }
    }

    /// The value, or 400 `missing_required_parameter` (null counts as
    /// missing).
    pub(super) fn required(self, name: &str) -> Result<T, ApiError> {
        self.into_option().ok_or_else(|| {
            ApiError::bad_request(format!("Missing required parameter: '{name}'."))
                .param(name)
                .code("missing_required_parameter")
        })
    }

    /// The value if sent; `null` is refused with 400 `invalid_type`.
    pub(super) fn not_null(self, name: &str, expected: &str) -> Result<Option<T>, ApiError> {
        match self {
            Self::Absent => Ok(None),
            Self::Null => Err(invalid_type(name, expected, &Value::Null)),
            Self::Value(v) => Ok(Some(v)),
        }
    }

    /// Whether the field was in the body (even as `null`).
    pub(super) fn is_present(&self) -> bool {
        !matches!(self, Self::Absent)
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(name: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid type for '{name}': expected {expected}, but got {} instead.",
        describe(got)
    ))
    .param(name)
    .code("invalid_type")
}

/// A JSON object body. Extracting it refuses anything that is not a JSON
/// object; handlers then say which fields they accept.
#[derive(Debug)]
pub(super) struct JsonBody(Map<String, Value>);

impl JsonBody {
    /// Parses a body that must be a JSON object.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|_| ApiError::bad_request(INVALID_JSON))?;
        match value {
            Value::Object(map) => Ok(Self(map)),
            other => Err(ApiError::bad_request(format!(
                "Invalid request body: expected a JSON object, but got {} instead.",
                describe(&other)
            ))),
        }
    }

    /// Parses a body that may be empty (endpoints documented without one).
    pub(super) fn parse_optional(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(Self(Map::new()))
        } else {
            Self::parse(bytes)
        }
    }

    /// Refuses fields not in `allowed`. The real model endpoints answer
    /// `Unrecognized request argument supplied: <name>`; whether the admin
    /// endpoints do is unverified, so this takes the stricter reading.
    pub(super) fn allow_only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::bad_request(format!(
                "Unrecognized request argument supplied: {unknown}"
            ))
            .param(unknown.as_str())),
            None => Ok(()),
        }
    }

    fn field(&self, name: &str) -> Field<&Value> {
        match self.0.get(name) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(v) => Field::Value(v),
        }
    }

    /// A string field.
    pub(super) fn string(&self, name: &str) -> Result<Field<String>, ApiError> {
        Ok(match self.field(name) {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(Value::String(s)) => Field::Value(s.clone()),
            Field::Value(other) => return Err(invalid_type(name, "a string", other)),
        })
    }

    /// A string field that must not be empty when sent.
    pub(super) fn non_empty_string(&self, name: &str) -> Result<Field<String>, ApiError> {
        let field = self.string(name)?;
        if matches!(&field, Field::Value(s) if s.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "Invalid '{name}': string too short. Expected a string with minimum length 1, \
                 but got an empty string instead."
            ))
            .param(name)
            .code("string_below_min_length"));
        }
        Ok(field)
    }

    /// A boolean field.
    pub(super) fn boolean(&self, name: &str) -> Result<Field<bool>, ApiError> {
        Ok(match self.field(name) {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(Value::Bool(b)) => Field::Value(*b),
            Field::Value(other) => return Err(invalid_type(name, "a boolean", other)),
        })
    }

    /// An integer field within `min..=max`.
    pub(super) fn integer(&self, name: &str, min: i64, max: i64) -> Result<Field<i64>, ApiError> {
        let value = match self.field(name) {
            Field::Absent => return Ok(Field::Absent),
            Field::Null => return Ok(Field::Null),
            Field::Value(v) => v,
        };
        let n = match value {
            Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
            // Larger than any i64 but still an integer: certainly too big.
            Value::Number(n) if n.is_u64() => i64::MAX,
            other => return Err(invalid_type(name, "an integer", other)),
        };
        check_range(name, n, min, max)?;
        Ok(Field::Value(n))
    }

    /// An array-of-strings field.
    pub(super) fn strings(&self, name: &str) -> Result<Field<Vec<String>>, ApiError> {
        let items = match self.field(name) {
            Field::Absent => return Ok(Field::Absent),
            Field::Null => return Ok(Field::Null),
            Field::Value(Value::Array(items)) => items,
            Field::Value(other) => return Err(invalid_type(name, "an array", other)),
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid_type(name, "an array of strings", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Field::Value)
    }

    /// A string field restricted to `allowed` values.
    pub(super) fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Field<String>, ApiError> {
        let field = self.string(name)?;
        if let Field::Value(value) = &field
            && !allowed.contains(&value.as_str())
        {
            return Err(invalid_value(name, value, allowed));
        }
        Ok(field)
    }
}

fn check_range(name: &str, n: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if n < min {
        return Err(ApiError::bad_request(format!(
            "Invalid '{name}': integer below minimum value. Expected a value >= {min}, but got \
             {n} instead."
        ))
        .param(name)
        .code("integer_below_min_value"));
    }
    if n > max {
        return Err(ApiError::bad_request(format!(
            "Invalid '{name}': integer above maximum value. Expected a value <= {max}, but got \
             {n} instead."
        ))
        .param(name)
        .code("integer_above_max_value"));
    }
    Ok(())
}

fn invalid_value(name: &str, value: &str, allowed: &[&str]) -> ApiError {
    let list = allowed
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    ApiError::bad_request(format!(
        "Invalid value for '{name}': '{value}'. Supported values are: {list}."
    ))
    .param(name)
    .code("invalid_value")
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::bad_request(INVALID_JSON))?;
        Self::parse(&bytes)
    }
}

/// A body that may be empty, for endpoints documented without one.
#[derive(Debug)]
pub(super) struct OptionalJsonBody(pub(super) JsonBody);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::bad_request(INVALID_JSON))?;
        JsonBody::parse_optional(&bytes).map(Self)
    }
}

/// Parses a control-API body with serde (those bodies are ours, not the
/// API's), answering a bad one in the API's error shape.
pub(super) fn control_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid control request: {e}")))
}

/// The query string as name/value pairs. Unknown parameters are ignored, as
/// HTTP APIs commonly do; only the ones an endpoint documents are checked.
#[derive(Debug, Default)]
pub(super) struct QueryParams(Vec<(String, String)>);

/// One page request: `limit` and `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PageParams {
    /// Items per page, 1..=100.
    pub(super) limit: usize,
    /// The id the page starts after.
    pub(super) after: Option<String>,
}

impl QueryParams {
    /// Parses a raw query string.
    pub(super) fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Every value given for `name`, in order.
    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value given for `name`.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` (1..=100, default 20) and `after`.
    pub(super) fn page(&self) -> Result<PageParams, ApiError> {
        let limit = match self.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => {
                let n: i64 = raw.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Invalid 'limit': expected an integer, but got '{raw}' instead."
                    ))
                    .param("limit")
                    .code("invalid_type")
                })?;
                check_range("limit", n, 1, MAX_LIMIT)?;
                n
            }
        };
        let after = match self.get("after") {
            Some("") => {
                return Err(ApiError::bad_request(
                    "Invalid 'after': expected an object id, but got an empty string instead.",
                )
                .param("after"));
            }
            other => other.map(str::to_owned),
        };
        Ok(PageParams {
            limit: usize::try_from(limit).unwrap_or(DEFAULT_LIMIT as usize),
            after,
        })
    }

    /// A boolean parameter (`true` or `false`), default false.
    pub(super) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid '{name}': expected a boolean, but got '{other}' instead."
            ))
            .param(name)
            .code("invalid_type")),
        }
    }

    /// A parameter restricted to `allowed` values.
    pub(super) fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v)),
            Some(other) => Err(invalid_value(name, other, allowed)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::parse(parts.uri.query()))
    }
}

/// Path parameters, with a bad one answered as the API's 404 `Invalid URL`.
#[derive(Debug)]
pub(super) struct Ids<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Ids<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(ids)) => Ok(Self(ids)),
            Err(_) => Err(ApiError::invalid_url(&parts.method, parts.uri.path())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_tell_absent_null_and_values_apart() {
        let body = JsonBody::parse(br#"{"a": null, "b": 3, "c": "x", "d": ["p"]}"#).unwrap();
        assert_eq!(body.integer("a", 1, 5).unwrap(), Field::Null);
        assert_eq!(body.integer("b", 1, 5).unwrap(), Field::Value(3));
        assert_eq!(body.integer("z", 1, 5).unwrap(), Field::Absent);
        assert_eq!(body.string("c").unwrap(), Field::Value("x".to_owned()));
        assert_eq!(
            body.strings("d").unwrap(),
            Field::Value(vec!["p".to_owned()])
        );
    }

    #[test]
    fn bad_fields_name_the_param() {
        let body =
            JsonBody::parse(br#"{"n": 0, "f": 1.5, "s": 4, "big": 99999999999999999999}"#).unwrap();
        let low = body.integer("n", 1, 10).unwrap_err();
        assert_eq!(low.param_name(), Some("n"));
        assert_eq!(low.error_code(), Some("integer_below_min_value"));
        let float = body.integer("f", 1, 10).unwrap_err();
        assert!(float.message().contains("a decimal number"), "{float}");
        assert_eq!(body.string("s").unwrap_err().param_name(), Some("s"));
        assert!(body.integer("big", 1, 10).is_err());
        let unknown = body.allow_only(&["n", "f", "s"]).unwrap_err();
        assert_eq!(unknown.param_name(), Some("big"));
    }

    #[test]
    fn non_objects_and_broken_json_are_refused() {
        assert!(JsonBody::parse(b"[1]").is_err());
        assert!(JsonBody::parse(b"{").is_err());
        assert!(JsonBody::parse(b"").is_err());
        assert!(JsonBody::parse_optional(b"").is_ok());
    }

    #[test]
    fn page_parameters_are_range_checked() {
        let page = QueryParams::parse(Some("limit=100&after=svc_acct_x"))
            .page()
            .unwrap();
        assert_eq!(page.limit, 100);
        assert_eq!(page.after.as_deref(), Some("svc_acct_x"));
        assert_eq!(QueryParams::parse(None).page().unwrap().limit, 20);
        for bad in ["limit=0", "limit=101", "limit=abc", "limit=-1"] {
            let err = QueryParams::parse(Some(bad)).page().unwrap_err();
            assert_eq!(err.param_name(), Some("limit"), "{bad}");
        }
    }
}
