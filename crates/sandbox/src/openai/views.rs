//! Typed, owned views of the fake's state for tests and the control API,
//! and the seed records that fill it fast.

use serde::{Deserialize, Serialize};

use super::state::{Account, Key, Project, Role};

/// A project as the fake holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectView {
    /// `proj_…`.
    pub id: String,
    /// Display name (not unique).
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when archived.
    pub archived_at: Option<i64>,
    /// Whether this is the organisation's default project.
    pub is_default: bool,
}

impl From<&Project> for ProjectView {
    fn from(p: &Project) -> Self {
        Self {
            id: p.id.clone(),
            name: p.name.clone(),
            created_at: p.created_at,
            archived_at: p.archived_at,
            is_default: p.is_default,
        }
    }
}

/// A service account and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAccountView {
    /// `svc_acct_…`.
    pub id: String,
    /// Name as given.
    pub name: String,
    /// Role in the project.
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
    /// Its keys, oldest first.
    pub keys: Vec<KeyView>,
}

impl ServiceAccountView {
    pub(super) fn new(account: &Account, project: &Project) -> Self {
        Self {
            id: account.id.clone(),
            name: account.name.clone(),
            role: account.role,
            created_at: account.created_at,
            keys: account
                .key_ids
                .iter()
                .filter_map(|id| project.keys.get(id))
                .map(KeyView::from)
                .collect(),
        }
    }
}

/// An API key, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    /// `key_…`.
    pub id: String,
    /// Key name.
    pub name: String,
    /// E.g. `sk-svc...X9aQ`.
    pub redacted_value: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix seconds of the last successful use.
    pub last_used_at: Option<i64>,
    /// Scope restriction; empty means unrestricted. The API never shows
    /// these; the sandbox does, for assertions.
    pub scopes: Vec<String>,
}

impl From<&Key> for KeyView {
    fn from(k: &Key) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            redacted_value: k.redacted.clone(),
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            scopes: k.scopes.clone(),
        }
    }
}

/// A service account to put straight into a project, e.g. one left over by
/// an earlier run of the key server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAccount {
    /// Account name.
    pub name: String,
    /// Creation time, Unix seconds (may be in the past).
    pub created_at: i64,
    /// Expiry of its key, Unix seconds; `None` never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Role; `member` when not given. `none` makes an account without a
    /// key, as `create_service_account_only` does.
    #[serde(default)]
    pub role: Option<Role>,
}

impl SeedAccount {
    /// A member account created at `created_at`, with a key that never
    /// expires.
    pub fn new(name: impl Into<String>, created_at: i64) -> Self {
        Self {
            name: name.into(),
            created_at,
            expires_at: None,
            role: None,
        }
    }

    /// Its key expires at `at` (Unix seconds).
    pub fn expiring_at(mut self, at: i64) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// With this role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }
}

/// What seeding made of one [`SeedAccount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeededAccount {
    /// `svc_acct_…`.
    pub id: String,
    /// Its key's id, unless it has none.
    pub key_id: Option<String>,
    /// Its key's value, unless it has none.
    pub key_value: Option<String>,
}
