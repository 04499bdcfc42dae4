//! The organisation's objects: projects, their service accounts and API
//! keys, each kept in creation order with an id index, so that a page of a
//! list with 10,000+ accounts costs O(log n + page) and no scan.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::ids::{self, Digest};
use super::request::{Field, PageParams};

/// The role of a service account in its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Project owner.
    Owner,
    /// Project member: may make model requests.
    Member,
    /// No role: what `create_service_account_only` gives. Its keys can do
    /// nothing until the account is granted `member`.
    None,
}

impl Role {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Member => "member",
            Self::None => "none",
        }
    }
}

/// Items in creation order plus an id index. Ids of removed items are kept
/// (with their position) so that a client paging with `after=<an id it
/// just deleted>` carries on where it was, as a database cursor would.
#[derive(Debug)]
pub(super) struct Ordered<T> {
    items: BTreeMap<u64, T>,
    index: HashMap<String, u64>,
    gone: HashMap<String, u64>,
}

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            index: HashMap::new(),
            gone: HashMap::new(),
        }
    }
}

/// One page of a list.
#[derive(Debug)]
pub(super) struct Page<'a, T> {
    /// The items, in creation order.
    pub(super) items: Vec<&'a T>,
    /// Whether more items follow.
    pub(super) has_more: bool,
}

impl<T> Ordered<T> {
    fn insert(&mut self, seq: u64, id: String, item: T) {
        self.index.insert(id, seq);
        self.items.insert(seq, item);
    }

    /// The live item with this id.
    pub(super) fn get(&self, id: &str) -> Option<&T> {
        self.index.get(id).and_then(|seq| self.items.get(seq))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let seq = self.index.get(id)?;
        self.items.get_mut(seq)
    }

    fn remove(&mut self, id: &str) -> Option<T> {
        let seq = self.index.remove(id)?;
        self.gone.insert(id.to_owned(), seq);
        self.items.remove(&seq)
    }

    /// Whether this id was ever used here.
    fn knows(&self, id: &str) -> bool {
        self.index.contains_key(id) || self.gone.contains_key(id)
    }

    /// Live items, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.values()
    }

    /// One page of the items `keep` accepts, oldest first. An `after` id
    /// never seen here is a 400 (stricter than silently answering an empty
    /// page).
    pub(super) fn page(
        &self,
        params: &PageParams,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<'_, T>, ApiError> {
        self.page_in_order(params, keep, false)
    }

    /// Like [`Self::page`], newest first when `descending` (then `after`
    /// moves towards older items).
    pub(super) fn page_in_order(
        &self,
        params: &PageParams,
        keep: impl Fn(&T) -> bool,
        descending: bool,
    ) -> Result<Page<'_, T>, ApiError> {
        let after = match &params.after {
            None => None,
            Some(after) => Some(
                *self
                    .index
                    .get(after)
                    .or_else(|| self.gone.get(after))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "Invalid 'after': no object with id '{after}' in this list."
                        ))
                        .param("after")
                    })?,
            ),
        };
        let range: Box<dyn Iterator<Item = &T>> = match (descending, after) {
            (false, None) => Box::new(self.items.values()),
            (false, Some(seq)) => Box::new(
                self.items
                    .range((Bound::Excluded(seq), Bound::Unbounded))
                    .map(|(_, item)| item),
            ),
            (true, None) => Box::new(self.items.values().rev()),
            (true, Some(seq)) => Box::new(self.items.range(..seq).rev().map(|(_, item)| item)),
        };
        let mut items: Vec<&T> = range
            .filter(|item| keep(item))
            .take(params.limit + 1)
            .collect();
        let has_more = items.len() > params.limit;
        items.truncate(params.limit);
        Ok(Page { items, has_more })
    }
}

/// A project.
#[derive(Debug)]
pub(super) struct Project {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_at: i64,
    pub(super) archived_at: Option<i64>,
    pub(super) external_key_id: Option<String>,
    pub(super) residency: Option<String>,
    pub(super) is_default: bool,
    pub(super) accounts: Ordered<Account>,
    pub(super) keys: Ordered<Key>,
}

/// A service account.
#[derive(Debug, Clone)]
pub(super) struct Account {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) created_at: i64,
    pub(super) key_ids: Vec<String>,
}

/// An API key owned by a service account. Only a digest of the value is
/// kept.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) redacted: String,
    pub(super) digest: Digest,
    pub(super) created_at: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) last_used_at: Option<i64>,
    pub(super) scopes: Vec<String>,
    pub(super) owner: String,
}

impl Key {
    /// Whether the key has expired at `now` (from the second of
    /// `expires_at` on: the stricter reading).
    pub(super) fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// An admin API key of the organisation (`sk-admin-…`). Only a digest of
/// the value is kept.
#[derive(Debug, Clone)]
pub(super) struct AdminKey {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) redacted: String,
    pub(super) digest: Digest,
    pub(super) created_at: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) last_used_at: Option<i64>,
}

/// The organisation's owner: the user every admin key belongs to.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_at: i64,
}

impl AdminKey {
    /// Whether the key has expired at `now` (from the second of
    /// `expires_at` on, like project keys).
    pub(super) fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// What a new key gets.
#[derive(Debug, Clone)]
pub(super) struct NewKey {
    pub(super) name: String,
    pub(super) scopes: Vec<String>,
    pub(super) created_at: i64,
    pub(super) expires_at: Option<i64>,
}

/// A key just created, with its value (the only time it exists in full).
#[derive(Debug, Clone)]
pub(super) struct Issued {
    pub(super) key: Key,
    pub(super) value: String,
}

/// Why a project cannot be used: the message says what the caller tried.
#[derive(Debug, Clone, Copy)]
pub(super) enum Use {
    ServiceAccounts,
    ApiKeys,
}

/// A live key found by its value.
#[derive(Debug)]
pub(super) struct LiveKey<'a> {
    pub(super) key: &'a Key,
    pub(super) account: &'a Account,
}

/// Everything the fake organisation holds.
#[derive(Debug)]
pub(super) struct World {
    seq: u64,
    projects: Ordered<Project>,
    default_project: String,
    /// Key value digest → (project id, key id).
    secrets: HashMap<Digest, (String, String)>,
    admin_keys: Ordered<AdminKey>,
    /// Admin key value digest → admin key id.
    admin_secrets: HashMap<Digest, String>,
    owner: Owner,
}

fn project_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No such project: {id}"))
}

fn account_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Service account {id} not found"))
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("API key {id} not found"))
}

fn admin_key_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Admin API key {id} not found"))
}

impl World {
    /// An organisation with only its default project, and `admin_key` as
    /// its one admin key.
    pub(super) fn new(now: i64, admin_key: &str) -> Self {
        let mut world = Self {
            seq: 0,
            projects: Ordered::default(),
            default_project: String::new(),
            secrets: HashMap::new(),
            admin_keys: Ordered::default(),
            admin_secrets: HashMap::new(),
            owner: Owner {
                id: ids::user_id(),
                name: "Sandbox Owner".to_owned(),
                created_at: now,
            },
        };
        world.add_admin_key(
            "Sandbox admin key".to_owned(),
            admin_key.to_owned(),
            now,
            None,
        );
        let id = world
            .create_project("Default Project".to_owned(), None, None, now)
            .id
            .clone();
        if let Some(project) = world.projects.get_mut(&id) {
            project.is_default = true;
        }
        world.default_project = id;
        world
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Id of the default project.
    pub(super) fn default_project_id(&self) -> &str {
        &self.default_project
    }

    /// All projects.
    pub(super) fn projects(&self) -> &Ordered<Project> {
        &self.projects
    }

    /// Creates a project (names need not be unique).
    pub(super) fn create_project(
        &mut self,
        name: String,
        external_key_id: Option<String>,
        residency: Option<String>,
        now: i64,
    ) -> &Project {
        let seq = self.next_seq();
        let id = loop {
            let id = ids::project_id();
            if !self.projects.knows(&id) {
                break id;
            }
        };
        let project = Project {
            id: id.clone(),
            name,
            created_at: now,
            archived_at: None,
            external_key_id,
            residency,
            is_default: false,
            accounts: Ordered::default(),
            keys: Ordered::default(),
        };
        self.projects.insert(seq, id, project);
        &self.projects.items[&seq]
    }

    /// A project, archived or not; 404 when unknown.
    pub(super) fn project(&self, id: &str) -> Result<&Project, ApiError> {
        self.projects.get(id).ok_or_else(|| project_not_found(id))
    }

    fn archived(id: &str, what: Use) -> ApiError {
        ApiError::bad_request(match what {
            Use::ServiceAccounts => {
                format!("Project {id} is archived: archived projects have no service accounts.")
            }
            Use::ApiKeys => {
                format!("Project {id} is archived: archived projects cannot be used or updated.")
            }
        })
    }

    /// A project that is not archived: 404 when unknown, 400 when archived.
    /// The spec documents the 400 for listing, creating and deleting
    /// service accounts; this applies it to every use of the project's
    /// accounts and keys ("archived projects cannot be used"), the stricter
    /// reading.
    pub(super) fn active_project(&self, id: &str, what: Use) -> Result<&Project, ApiError> {
        let project = self.project(id)?;
        if project.archived_at.is_some() {
            return Err(Self::archived(id, what));
        }
        Ok(project)
    }

    fn active_project_mut(&mut self, id: &str, what: Use) -> Result<&mut Project, ApiError> {
        let project = self
            .projects
            .get_mut(id)
            .ok_or_else(|| project_not_found(id))?;
        if project.archived_at.is_some() {
            return Err(Self::archived(id, what));
        }
        Ok(project)
    }

    /// Renames a project or sets its `external_key_id`. The default project
    /// and archived ones cannot be modified (400).
    pub(super) fn modify_project(
        &mut self,
        id: &str,
        name: Option<String>,
        external_key_id: Field<String>,
    ) -> Result<&Project, ApiError> {
        let project = self
            .projects
            .get_mut(id)
            .ok_or_else(|| project_not_found(id))?;
        if project.is_default {
            return Err(ApiError::bad_request(
                "The default project cannot be modified.",
            ));
        }
        if project.archived_at.is_some() {
            return Err(ApiError::bad_request(format!(
                "Project {id} is archived: archived projects cannot be updated."
            )));
        }
        if let Some(name) = name {
            project.name = name;
        }
        if external_key_id.is_present() {
            project.external_key_id = external_key_id.into_option();
        }
        Ok(project)
    }

    /// Archives a project. The default project cannot be archived, and
    /// archiving twice is refused (stricter than answering the same object
    /// again; the real behaviour is undocumented).
    pub(super) fn archive_project(&mut self, id: &str, now: i64) -> Result<&Project, ApiError> {
        let project = self
            .projects
            .get_mut(id)
            .ok_or_else(|| project_not_found(id))?;
        if project.is_default {
            return Err(ApiError::bad_request(
                "The default project cannot be archived.",
            ));
        }
        if project.archived_at.is_some() {
            return Err(ApiError::bad_request(format!(
                "Project {id} is already archived."
            )));
        }
        project.archived_at = Some(now);
        Ok(project)
    }

    /// Creates a service account, with a first key unless `key` is `None`.
    pub(super) fn create_account(
        &mut self,
        project_id: &str,
        name: String,
        role: Role,
        key: Option<NewKey>,
        created_at: i64,
    ) -> Result<(Account, Option<Issued>), ApiError> {
        self.active_project(project_id, Use::ServiceAccounts)?;
        let seq = self.next_seq();
        let key_seq = self.next_seq();
        let Self {
            projects, secrets, ..
        } = self;
        let project = projects
            .get_mut(project_id)
            .ok_or_else(|| project_not_found(project_id))?;
        let id = loop {
            let id = ids::service_account_id();
            if !project.accounts.knows(&id) {
                break id;
            }
        };
        let mut account = Account {
            id: id.clone(),
            name,
            role,
            created_at,
            key_ids: Vec::new(),
        };
        let issued = key.map(|new| {
            let issued = mint(project, secrets, &id, new, key_seq);
            account.key_ids.push(issued.key.id.clone());
            issued
        });
        project.accounts.insert(seq, id, account.clone());
        Ok((account, issued))
    }

    /// A service account of an active project; 404 when unknown.
    pub(super) fn account(&self, project_id: &str, account_id: &str) -> Result<&Account, ApiError> {
        self.active_project(project_id, Use::ServiceAccounts)?
            .accounts
            .get(account_id)
            .ok_or_else(|| account_not_found(account_id))
    }

    /// Renames a service account or changes its role.
    pub(super) fn update_account(
        &mut self,
        project_id: &str,
        account_id: &str,
        name: Option<String>,
        role: Option<Role>,
    ) -> Result<&Account, ApiError> {
        let account = self
            .active_project_mut(project_id, Use::ServiceAccounts)?
            .accounts
            .get_mut(account_id)
            .ok_or_else(|| account_not_found(account_id))?;
        if let Some(name) = name {
            account.name = name;
        }
        if let Some(role) = role {
            account.role = role;
        }
        Ok(account)
    }

    /// Deletes a service account and, at once, every key it owns.
    pub(super) fn delete_account(
        &mut self,
        project_id: &str,
        account_id: &str,
    ) -> Result<(), ApiError> {
        self.active_project(project_id, Use::ServiceAccounts)?;
        let Self {
            projects, secrets, ..
        } = self;
        let project = projects
            .get_mut(project_id)
            .ok_or_else(|| project_not_found(project_id))?;
        let account = project
            .accounts
            .remove(account_id)
            .ok_or_else(|| account_not_found(account_id))?;
        for key_id in &account.key_ids {
            if let Some(key) = project.keys.remove(key_id) {
                secrets.remove(&key.digest);
            }
        }
        Ok(())
    }

    /// Creates another key for a service account.
    pub(super) fn create_key(
        &mut self,
        project_id: &str,
        account_id: &str,
        new: NewKey,
    ) -> Result<Issued, ApiError> {
        self.account(project_id, account_id)?;
        let seq = self.next_seq();
        let Self {
            projects, secrets, ..
        } = self;
        let project = projects
            .get_mut(project_id)
            .ok_or_else(|| project_not_found(project_id))?;
        let issued = mint(project, secrets, account_id, new, seq);
        if let Some(account) = project.accounts.get_mut(account_id) {
            account.key_ids.push(issued.key.id.clone());
        }
        Ok(issued)
    }

    /// A key of an active project and its owner; 404 when unknown.
    pub(super) fn key(&self, project_id: &str, key_id: &str) -> Result<(&Key, &Account), ApiError> {
        let project = self.active_project(project_id, Use::ApiKeys)?;
        let key = project
            .keys
            .get(key_id)
            .ok_or_else(|| key_not_found(key_id))?;
        let owner = project
            .accounts
            .get(&key.owner)
            .ok_or_else(|| key_not_found(key_id))?;
        Ok((key, owner))
    }

    /// Replaces a key's scopes and/or sets its expiry. Expired keys cannot
    /// be updated.
    pub(super) fn update_key(
        &mut self,
        project_id: &str,
        key_id: &str,
        scopes: Option<Vec<String>>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<(), ApiError> {
        let key = self
            .active_project_mut(project_id, Use::ApiKeys)?
            .keys
            .get_mut(key_id)
            .ok_or_else(|| key_not_found(key_id))?;
        if key.expired(now) {
            return Err(ApiError::bad_request(format!(
                "API key {key_id} has expired; expired keys cannot be updated."
            )));
        }
        if let Some(scopes) = scopes {
            key.scopes = scopes;
        }
        if let Some(at) = expires_at {
            key.expires_at = Some(at);
        }
        Ok(())
    }

    /// Deletes one key; its service account and other keys stay.
    pub(super) fn delete_key(&mut self, project_id: &str, key_id: &str) -> Result<(), ApiError> {
        self.active_project(project_id, Use::ApiKeys)?;
        let Self {
            projects, secrets, ..
        } = self;
        let project = projects
            .get_mut(project_id)
            .ok_or_else(|| project_not_found(project_id))?;
        let key = project
            .keys
            .remove(key_id)
            .ok_or_else(|| key_not_found(key_id))?;
        secrets.remove(&key.digest);
        if let Some(account) = project.accounts.get_mut(&key.owner) {
            account.key_ids.retain(|id| id != key_id);
        }
        Ok(())
    }

    /// The key with this value if it can authenticate at `now`: it exists,
    /// has not expired, its account exists and its project is not archived
    /// (stricter reading: an archived project "cannot be used").
    /// The project and id of the key whose value is `value`, live or not.
    pub(super) fn locate_key(&self, value: &str) -> Option<(String, String)> {
        self.secrets.get(&ids::digest(value)).cloned()
    }

    pub(super) fn live_key(&self, value: &str, now: i64) -> Option<LiveKey<'_>> {
        let (project_id, key_id) = self.secrets.get(&ids::digest(value))?;
        let project = self.projects.get(project_id)?;
        if project.archived_at.is_some() {
            return None;
        }
        let key = project.keys.get(key_id).filter(|k| !k.expired(now))?;
        let account = project.accounts.get(&key.owner)?;
        Some(LiveKey { key, account })
    }

    /// The organisation's owner.
    pub(super) fn owner(&self) -> &Owner {
        &self.owner
    }

    /// All admin keys.
    pub(super) fn admin_keys(&self) -> &Ordered<AdminKey> {
        &self.admin_keys
    }

    fn add_admin_key(
        &mut self,
        name: String,
        value: String,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> AdminKey {
        let seq = self.next_seq();
        let id = loop {
            let id = ids::key_id();
            if !self.admin_keys.knows(&id) {
                break id;
            }
        };
        let key = AdminKey {
            id: id.clone(),
            name,
            redacted: ids::redact_admin(&value),
            digest: ids::digest(&value),
            created_at,
            expires_at,
            last_used_at: None,
        };
        self.admin_secrets.insert(key.digest, id.clone());
        self.admin_keys.insert(seq, id, key.clone());
        key
    }

    /// Mints a new admin key; the value exists in full only in the answer.
    pub(super) fn create_admin_key(
        &mut self,
        name: String,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> (AdminKey, String) {
        let value = ids::admin_key();
        let key = self.add_admin_key(name, value.clone(), created_at, expires_at);
        (key, value)
    }

    /// One admin key; 404 when unknown.
    pub(super) fn admin_key(&self, id: &str) -> Result<&AdminKey, ApiError> {
        self.admin_keys
            .get(id)
            .ok_or_else(|| admin_key_not_found(id))
    }

    /// Deletes an admin key: from now on it authenticates nothing.
    pub(super) fn delete_admin_key(&mut self, id: &str) -> Result<(), ApiError> {
        let key = self
            .admin_keys
            .remove(id)
            .ok_or_else(|| admin_key_not_found(id))?;
        self.admin_secrets.remove(&key.digest);
        Ok(())
    }

    /// Whether `value` is an admin key that exists and has not expired at
    /// `now`; a successful use is recorded in `last_used_at`.
    pub(super) fn authenticate_admin(&mut self, value: &str, now: i64) -> bool {
        let Some(id) = self.admin_secrets.get(&ids::digest(value)) else {
            return false;
        };
        match self.admin_keys.get_mut(id) {
            Some(key) if !key.expired(now) => {
                key.last_used_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Records a successful use of the key with this value.
    pub(super) fn touch(&mut self, value: &str, now: i64) {
        let Some((project_id, key_id)) = self.secrets.get(&ids::digest(value)) else {
            return;
        };
        if let Some(key) = self
            .projects
            .get_mut(project_id)
            .and_then(|p| p.keys.get_mut(key_id))
        {
            key.last_used_at = Some(now);
        }
    }
}

/// Mints a key for `owner` in `project` and indexes its digest.
fn mint(
    project: &mut Project,
    secrets: &mut HashMap<Digest, (String, String)>,
    owner: &str,
    new: NewKey,
    seq: u64,
) -> Issued {
    let id = loop {
        let id = ids::key_id();
        if !project.keys.knows(&id) {
            break id;
        }
    };
    let value = ids::service_account_key();
    let key = Key {
        id: id.clone(),
        name: new.name,
        redacted: ids::redact(&value),
        digest: ids::digest(&value),
        created_at: new.created_at,
        expires_at: new.expires_at,
        last_used_at: None,
        scopes: new.scopes,
        owner: owner.to_owned(),
    };
    secrets.insert(key.digest, (project.id.clone(), id.clone()));
    project.keys.insert(seq, id, key.clone());
    Issued { key, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(now: i64, expires_at: Option<i64>) -> NewKey {
        NewKey {
            name: "Secret Key".to_owned(),
            scopes: Vec::new(),
            created_at: now,
            expires_at,
        }
    }

    #[test]
    fn deleting_an_account_kills_its_keys_and_keeps_the_cursor_usable() {
        let mut world = World::new(1000, "sk-admin-test");
        let project = world.default_project_id().to_owned();
        let (first, issued) = world
            .create_account(
                &project,
                "a".into(),
                Role::Member,
                Some(new_key(1000, None)),
                1000,
            )
            .unwrap();
        let (second, _) = world
            .create_account(&project, "b".into(), Role::Member, None, 1000)
            .unwrap();
        let value = issued.unwrap().value;
        assert!(world.live_key(&value, 1000).is_some());

        world.delete_account(&project, &first.id).unwrap();

        assert!(world.live_key(&value, 1000).is_none());
        let params = PageParams {
            limit: 10,
            after: Some(first.id.clone()),
        };
        let page = world
            .project(&project)
            .unwrap()
            .accounts
            .page(&params, |_| true)
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].id, second.id);
        assert!(world.delete_account(&project, &first.id).is_err());
    }

    #[test]
    fn keys_expire_at_their_expiry_second() {
        let mut world = World::new(1000, "sk-admin-test");
        let project = world.default_project_id().to_owned();
        let (_, issued) = world
            .create_account(
                &project,
                "a".into(),
                Role::Member,
                Some(new_key(1000, Some(1060))),
                1000,
            )
            .unwrap();
        let value = issued.unwrap().value;
        assert!(world.live_key(&value, 1059).is_some());
        assert!(world.live_key(&value, 1060).is_none());
    }

    #[test]
    fn the_default_project_cannot_be_archived_or_modified() {
        let mut world = World::new(1000, "sk-admin-test");
        let project = world.default_project_id().to_owned();
        assert!(world.archive_project(&project, 1000).is_err());
        assert!(
            world
                .modify_project(&project, Some("x".into()), Field::Absent)
                .is_err()
        );
    }
}
