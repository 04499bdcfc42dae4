//! The schedule: this server's live accounts by expiry, learned from the
//! last full listing plus what this replica issued since. It is a cache of
//! what OpenAI holds, never the only record: a restarted replica rebuilds it
//! from the account names at its first sweep.
//!
//! Thousands of keys can be live at once, and every one of them costs
//! memory until it expires, so an account is one B-tree entry keyed by
//! `(expiry, id)` (every caller knows both: the expiry is in the name) and
//! one expiry in its owner's list; owners are keyed by a keyed hash of the
//! address rather than by the address itself.
//!
//! Keying by `(expiry, id)` means an account renamed by someone else (same
//! id, another expiry) is known twice until the next full listing replaces
//! the schedule; deleting it twice is harmless (the second is a 404).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher as _;

use super::AccountName;

#[derive(Debug, Clone)]
struct Entry {
    /// The account's name as OpenAI holds it (owner and nonce inside),
    /// then, when this replica issued the key, a space and the key's id (a
    /// listing shows none). One allocation; a name never holds a space.
    text: Box<str>,
    /// Hash of the owner's address: the key of `owners`.
    owner: u64,
    /// Insertion sequence, so that a full listing keeps entries issued
    /// while it ran.
    seq: u64,
    /// When the account was created (Unix seconds; 0: not known yet).
    created: u32,
    /// When its key was last used, as OpenAI last said (Unix seconds; 0:
    /// never, or not known).
    last_used: u32,
}

/// One live key as the index knows it, for the pages that list keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) id: String,
    pub(crate) name: AccountName,
    pub(crate) key_id: Option<String>,
    pub(crate) created_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

/// Unix seconds in the 4 bytes an entry keeps (0 for none or before 1970;
/// saturating in 2106).
fn seconds(at: Option<i64>) -> u32 {
    at.map_or(0, |at| u32::try_from(at.max(0)).unwrap_or(u32::MAX))
}

fn from_seconds(at: u32) -> Option<i64> {
    (at > 0).then(|| i64::from(at))
}

impl Entry {
    fn text(name: &AccountName, key_id: Option<&str>) -> Box<str> {
        match key_id {
            Some(key_id) => format!("{name} {key_id}").into_boxed_str(),
            None => name.encode().into_boxed_str(),
        }
    }

    fn name(&self) -> &str {
        self.text
            .split_once(' ')
            .map_or(&self.text, |(name, _)| name)
    }

    fn key_id(&self) -> Option<&str> {
        self.text.split_once(' ').map(|(_, key_id)| key_id)
    }
}

/// Accounts of ours not yet deleted, ordered by expiry.
#[derive(Debug, Default)]
pub(crate) struct Index {
    schedule: BTreeMap<(i64, Box<str>), Entry>,
    /// Each owner's expiries, for the per-user cap without a scan.
    /// Unordered: an owner holds a handful of accounts at most. Two owners
    /// whose hashes collide would share a cap; the hash is keyed with a
    /// per-process random key, so nobody can aim for that.
    owners: HashMap<u64, Vec<i64>>,
    hasher: RandomState,
    seq: u64,
    /// Creates in progress per owner (by the same hash as `owners`): they
    /// count against the cap until they settle.
    pending: HashMap<u64, u32>,
    /// Accounts this replica deleted, by the sequence of their deletion: a
    /// listing that began before may still name them, and must not bring
    /// them back. Forgotten once a complete listing that began after them
    /// is in.
    deleted: HashMap<Box<str>, u64>,
}

impl Index {
    /// The current sequence number (taken at the start of a listing).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    fn owner_key(&self, owner: &str) -> u64 {
        self.hasher.hash_one(owner)
    }

    /// Adds or refreshes one account; a known key id is kept when `key_id`
    /// is `None`.
    pub(crate) fn insert(&mut self, id: String, name: AccountName, key_id: Option<String>) {
        self.seq += 1;
        let owner = self.owner_key(name.owner.as_str());
        let key = (name.expires_at, id.into_boxed_str());
        if let Some(entry) = self.schedule.get_mut(&key) {
            entry.seq = self.seq;
            let key_id = key_id.as_deref().or(entry.key_id());
            entry.text = Entry::text(&name, key_id);
            let old = std::mem::replace(&mut entry.owner, owner);
            if old != owner {
                self.unlink_owner(old, key.0);
                self.owners.entry(owner).or_default().push(key.0);
            }
            return;
        }
        self.owners.entry(owner).or_default().push(key.0);
        let entry = Entry {
            text: Entry::text(&name, key_id.as_deref()),
            owner,
            seq: self.seq,
            created: 0,
            last_used: 0,
        };
        self.schedule.insert(key, entry);
    }

    fn unlink_owner(&mut self, owner: u64, expires_at: i64) {
        if let Some(expiries) = self.owners.get_mut(&owner) {
            if let Some(i) = expiries.iter().position(|&at| at == expires_at) {
                expiries.swap_remove(i);
            }
            if expiries.is_empty() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Forgets one account (deleted, or found gone).
    pub(crate) fn remove(&mut self, expires_at: i64, id: &str) {
        // A tuple key cannot be looked up by `(i64, &str)`: one small
        // allocation per delete.
        let key = (expires_at, Box::<str>::from(id));
        if let Some(entry) = self.schedule.remove(&key) {
            self.unlink_owner(entry.owner, expires_at);
        }
    }

    /// Replaces the contents with a full listing, keeping entries inserted
    /// after sequence `since` (issued while the listing ran, so possibly not
    /// in it).
    /// Forgets an account this replica deleted, so that no listing that
    /// began before the delete brings it back.
    pub(crate) fn remove_deleted(&mut self, expires_at: i64, id: &str) {
        self.seq += 1;
        self.deleted.insert(id.into(), self.seq);
        self.remove(expires_at, id);
    }

    ///
    /// Returns the accounts it held that the listing no longer names and
    /// that this replica did not delete: gone behind its back (another
    /// replica's revocation, OpenAI, someone by hand), with their key ids.
    pub(crate) fn replace(
        &mut self,
        listed: Vec<(String, AccountName)>,
        since: u64,
    ) -> Vec<(String, AccountName, Option<String>)> {
        let listed: Vec<_> = listed
            .into_iter()
            .filter(|(id, _)| self.deleted.get(id.as_str()).is_none_or(|at| *at <= since))
            .collect();
        // Deleted before this listing began: it cannot name them any more.
        self.deleted.retain(|_, at| *at > since);
        let old = std::mem::take(&mut self.schedule);
        self.owners.clear();
        let mut recent = Vec::new();
        let mut known = HashMap::new();
        let mut old_names: HashMap<Box<str>, AccountName> = HashMap::new();
        for ((at, id), entry) in old {
            if let Some(name) = AccountName::parse(entry.name()) {
                old_names.insert(id.clone(), name);
            }
            if entry.seq > since
                && let Some(name) = AccountName::parse(entry.name())
            {
                recent.push((String::from(id.clone()), name));
            }
            let key_id = entry.key_id().map(str::to_owned);
            known.insert((at, id), (key_id, entry.created, entry.last_used));
        }
        for (id, name) in listed.into_iter().chain(recent) {
            let key = (name.expires_at, Box::<str>::from(id.as_str()));
            let (key_id, created, last_used) = known.remove(&key).unwrap_or_default();
            self.insert(id, name, key_id);
            if let Some(entry) = self.schedule.get_mut(&key) {
                entry.created = created;
                entry.last_used = last_used;
            }
        }
        known
            .into_iter()
            .filter_map(|((_, id), (key_id, _, _))| {
                let name = old_names.remove(&*id)?;
                Some((String::from(id), name, key_id))
            })
            .collect()
    }

    /// Adds what a listing that stopped part-way found, keeping what it did
    /// not reach. An account found under another expiry than the schedule
    /// holds for it (renamed by someone) loses its old entry, which would
    /// otherwise have it deleted at the old expiry.
    pub(crate) fn merge(&mut self, listed: Vec<(String, AccountName)>) {
        let listed: Vec<_> = listed
            .into_iter()
            .filter(|(id, _)| !self.deleted.contains_key(id.as_str()))
            .collect();
        let found: HashMap<&str, i64> = listed
            .iter()
            .map(|(id, name)| (id.as_str(), name.expires_at))
            .collect();
        let stale: Vec<(i64, Box<str>)> = self
            .schedule
            .keys()
            .filter(|(at, id)| found.get(&**id).is_some_and(|listed_at| listed_at != at))
            .cloned()
            .collect();
        for (at, id) in stale {
            self.remove(at, &id);
        }
        for (id, name) in listed {
            self.insert(id, name, None);
        }
    }

    /// The earliest expiry, if any.
    pub(crate) fn earliest(&self) -> Option<i64> {
        self.schedule.first_key_value().map(|((at, _), _)| *at)
    }

    /// Accounts whose expiry is at or before `now`.
    pub(crate) fn due(&self, now: i64) -> Vec<(String, AccountName, Option<String>)> {
        self.schedule
            .iter()
            .take_while(|((at, _), _)| *at <= now)
            .filter_map(|((_, id), entry)| {
                // Every stored name was encoded from a parsed one, and
                // names round-trip (a property test in `name`), so none is
                // skipped here while `earliest` still reports it.
                let name = AccountName::parse(entry.name())?;
                Some((id.to_string(), name, entry.key_id().map(str::to_owned)))
            })
            .collect()
    }

    /// The key id of an account, when known.
    pub(crate) fn key_id(&self, expires_at: i64, id: &str) -> Option<String> {
        self.schedule
            .get(&(expires_at, Box::<str>::from(id)))
            .and_then(|e| e.key_id().map(str::to_owned))
    }

    /// `owner`'s expiries that are still live at `now`.
    fn live_expiries(&self, owner: &str, now: i64) -> impl Iterator<Item = i64> {
        let after = now.saturating_add(1);
        self.owners
            .get(&self.owner_key(owner))
            .into_iter()
            .flatten()
            .copied()
            .filter(move |at| *at >= after)
    }

    /// How many accounts `owner` has that are still live at `now`.
    pub(crate) fn live_for(&self, owner: &str, now: i64) -> usize {
        self.live_expiries(owner, now).count()
    }

    /// The earliest expiry after `now` among `owner`'s accounts.
    pub(crate) fn earliest_for(&self, owner: &str, now: i64) -> Option<i64> {
        self.live_expiries(owner, now).min()
    }

    /// Notes when an account was created.
    pub(crate) fn note_created(&mut self, expires_at: i64, id: &str, created_at: i64) {
        if let Some(entry) = self.schedule.get_mut(&(expires_at, Box::<str>::from(id))) {
            entry.created = seconds(Some(created_at));
        }
    }

    /// Notes what OpenAI's key listing says of the accounts it names: each
    /// one's key id, when the key was created and last used.
    pub(crate) fn note_usage(&mut self, keys: &HashMap<String, (String, i64, Option<i64>)>) {
        for ((_, id), entry) in &mut self.schedule {
            let Some((key_id, created_at, last_used_at)) = keys.get(&**id) else {
                continue;
            };
            if entry.key_id().is_none()
                && let Some(name) = AccountName::parse(entry.name())
            {
                entry.text = Entry::text(&name, Some(key_id));
            }
            if entry.created == 0 {
                entry.created = seconds(Some(*created_at));
            }
            entry.last_used = seconds(*last_used_at);
        }
    }

    /// Accounts known with a key id since before sequence `since` whose id
    /// a complete key listing (`listed`, by account id) does not name:
    /// their key was deleted while the account stayed.
    pub(crate) fn keys_missing(
        &self,
        listed: &HashMap<String, (String, i64, Option<i64>)>,
        since: u64,
    ) -> Vec<(String, AccountName, Option<String>)> {
        self.schedule
            .iter()
            .filter(|((_, id), entry)| {
                entry.seq <= since && entry.key_id().is_some() && !listed.contains_key(&**id)
            })
            .filter_map(|((_, id), entry)| {
                Some((
                    id.to_string(),
                    AccountName::parse(entry.name())?,
                    entry.key_id().map(str::to_owned),
                ))
            })
            .collect()
    }

    fn known(id: &str, entry: &Entry) -> Option<Known> {
        Some(Known {
            id: id.to_owned(),
            name: AccountName::parse(entry.name())?,
            key_id: entry.key_id().map(str::to_owned),
            created_at: from_seconds(entry.created),
            last_used_at: from_seconds(entry.last_used),
        })
    }

    /// `owner`'s accounts still live at `now`, soonest expiry first.
    pub(crate) fn keys_of(&self, owner: &str, now: i64) -> Vec<Known> {
        let hash = self.owner_key(owner);
        let mut expiries: Vec<i64> = self.live_expiries(owner, now).collect();
        expiries.sort_unstable();
        expiries.dedup();
        expiries
            .into_iter()
            .flat_map(|at| {
                self.schedule
                    .range((at, Box::<str>::from(""))..(at.saturating_add(1), Box::<str>::from("")))
                    .filter(move |(_, entry)| entry.owner == hash)
                    .filter_map(|((_, id), entry)| Self::known(id, entry))
            })
            // Exact, not by hash: whose key it is decides who may see it.
            .filter(|known| known.name.owner.as_str() == owner)
            .collect()
    }

    /// Every account still live at `now`, soonest expiry first.
    pub(crate) fn all_live(&self, now: i64) -> Vec<Known> {
        self.schedule
            .range((now.saturating_add(1), Box::<str>::from(""))..)
            .filter_map(|((_, id), entry)| Self::known(id, entry))
            .collect()
    }

    /// The account `id`, live at `now`, if this index knows it.
    pub(crate) fn find(&self, id: &str, now: i64) -> Option<Known> {
        self.schedule
            .range((now.saturating_add(1), Box::<str>::from(""))..)
            .find(|((_, known), _)| &**known == id)
            .and_then(|((_, id), entry)| Self::known(id, entry))
    }

    /// Counts a create in progress for `owner`.
    pub(crate) fn reserve(&mut self, owner: &str) {
        let key = self.owner_key(owner);
        *self.pending.entry(key).or_default() += 1;
    }

    /// The create of [`Index::reserve`] settled.
    pub(crate) fn release(&mut self, owner: &str) {
        let key = self.owner_key(owner);
        if let Some(count) = self.pending.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&key);
            }
        }
    }

    /// Creates in progress for `owner`.
    pub(crate) fn pending_for(&self, owner: &str) -> usize {
        self.pending
            .get(&self.owner_key(owner))
            .map_or(0, |n| *n as usize)
    }

    /// Number of accounts known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.schedule.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::EmailAddress;
    use proptest::prelude::*;

    fn name(at: i64) -> AccountName {
        name_of("a@example.com", at)
    }

    fn name_of(owner: &str, at: i64) -> AccountName {
        AccountName::new(EmailAddress::parse(owner).unwrap().into(), at)
    }

    #[test]
    fn due_accounts_come_out_in_expiry_order_and_a_listing_keeps_recent_issues() {
        let mut index = Index::default();
        index.insert("b".into(), name(20), None);
        index.insert("a".into(), name(10), Some("key_a".into()));
        index.insert("c".into(), name(30), None);
        assert_eq!(index.earliest(), Some(10));
        let due: Vec<_> = index.due(20).into_iter().map(|(id, ..)| id).collect();
        assert_eq!(due, ["a", "b"]);
        assert_eq!(index.key_id(10, "a").as_deref(), Some("key_a"));
        assert_eq!(index.key_id(20, "a"), None, "keyed by expiry and id");

        let since = index.seq();
        index.insert("d".into(), name(40), None);
        index.replace(vec![("x".into(), name(50))], since);
        let mut ids: Vec<_> = index.due(100).into_iter().map(|(id, ..)| id).collect();
        ids.sort();
        assert_eq!(ids, ["d", "x"], "listing replaced old entries but kept d");
        index.remove(40, "d");
        assert_eq!(index.len(), 1);
        assert_eq!(index.live_for("a@example.com", 45), 1);
        assert_eq!(index.live_for("a@example.com", 50), 0);
        assert_eq!(index.earliest_for("a@example.com", 0), Some(50));
        assert_eq!(index.live_for("b@example.com", 0), 0);
    }

    #[test]
    fn an_owner_with_several_keys_is_counted_and_forgotten_with_the_last() {
        let mut index = Index::default();
        index.insert("a1".into(), name(30), None);
        index.insert("a2".into(), name(10), None);
        index.insert("a3".into(), name(20), None);
        index.insert("b1".into(), name_of("b@example.com", 5), None);
        assert_eq!(index.live_for("a@example.com", 0), 3);
        assert_eq!(index.live_for("a@example.com", 10), 2);
        assert_eq!(index.earliest_for("a@example.com", 0), Some(10));
        assert_eq!(index.earliest_for("a@example.com", 10), Some(20));
        assert_eq!(index.earliest_for("a@example.com", 30), None);
        assert_eq!(index.earliest_for("b@example.com", 0), Some(5));

        index.remove(10, "a2");
        assert_eq!(index.live_for("a@example.com", 0), 2);
        assert_eq!(index.earliest_for("a@example.com", 0), Some(20));
        index.remove(30, "a1");
        index.remove(20, "a3");
        index.remove(20, "a3");
        assert_eq!(index.live_for("a@example.com", 0), 0);
        assert_eq!(index.owners.len(), 1, "a's list went with its last key");
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn refreshing_an_account_keeps_its_key_id_and_follows_its_owner() {
        let mut index = Index::default();
        index.insert("a".into(), name(10), Some("key_a".into()));
        index.insert("a".into(), name_of("b@example.com", 10), None);
        assert_eq!(index.len(), 1);
        assert_eq!(index.key_id(10, "a").as_deref(), Some("key_a"));
        assert_eq!(index.live_for("a@example.com", 0), 0);
        assert_eq!(index.live_for("b@example.com", 0), 1);
        let due = index.due(10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "a");
        assert_eq!(due[0].1.owner.as_str(), "b@example.com");
        assert_eq!(due[0].2.as_deref(), Some("key_a"));

        index.replace(vec![("a".into(), name(10))], index.seq());
        assert_eq!(
            index.key_id(10, "a").as_deref(),
            Some("key_a"),
            "a listing shows no key ids; the known one stays"
        );
        assert_eq!(index.live_for("a@example.com", 0), 1);
        assert_eq!(index.live_for("b@example.com", 0), 0);
    }

    #[test]
    fn an_owners_keys_come_with_what_listings_said_of_them() {
        let mut index = Index::default();
        index.insert("a1".into(), name(30), Some("key_1".into()));
        index.insert("a2".into(), name(10), None);
        index.insert("b1".into(), name_of("b@example.com", 20), None);
        index.note_created(30, "a1", 1_000);
        let usage = HashMap::from([
            ("a2".to_owned(), ("key_2".to_owned(), 900, Some(1_500))),
            ("zz".to_owned(), ("key_z".to_owned(), 1, None)),
        ]);
        index.note_usage(&usage);
        let mine = index.keys_of("a@example.com", 5);
        let ids: Vec<_> = mine.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["a2", "a1"], "soonest expiry first");
        assert_eq!(mine[0].key_id.as_deref(), Some("key_2"));
        assert_eq!(mine[0].created_at, Some(900));
        assert_eq!(mine[0].last_used_at, Some(1_500));
        assert_eq!(mine[1].created_at, Some(1_000));
        assert_eq!(mine[1].last_used_at, None);
        assert_eq!(
            index.keys_of("a@example.com", 10).len(),
            1,
            "a2 expired at 10"
        );
        assert_eq!(index.all_live(5).len(), 3);
        assert_eq!(
            index.find("b1", 5).unwrap().name.owner.as_str(),
            "b@example.com"
        );
        assert_eq!(index.find("b1", 20), None, "no longer live");
        // A listing keeps what was learnt.
        index.replace(vec![("a2".into(), name(10))], index.seq());
        assert_eq!(index.find("a2", 5).unwrap().last_used_at, Some(1_500));
    }

    #[test]
    fn a_listing_that_began_before_a_delete_does_not_bring_the_account_back() {
        let mut index = Index::default();
        index.insert("a".into(), name(30), None);
        index.insert("b".into(), name(30), None);
        // A listing begins, reads both, then `a` is revoked through us.
        let since = index.seq();
        index.remove_deleted(30, "a");
        index.replace(vec![("a".into(), name(30)), ("b".into(), name(30))], since);
        let live: Vec<_> = index.all_live(0).into_iter().map(|k| k.id).collect();
        assert_eq!(live, ["b"]);
        assert_eq!(index.live_for("a@example.com", 0), 1);
        // The same from a partial listing.
        index.merge(vec![("a".into(), name(30))]);
        assert_eq!(index.all_live(0).len(), 1);
        // A listing that began after the delete is believed, and the mark
        // goes (an account of that id named again is someone's new one).
        let since = index.seq();
        index.replace(vec![("b".into(), name(30))], since);
        assert!(index.deleted.is_empty());
    }

    #[test]
    fn a_partial_listing_keeps_what_it_missed_and_drops_a_renamed_accounts_old_entry() {
        let mut index = Index::default();
        index.insert("a".into(), name(10), Some("key_a".into()));
        index.insert("b".into(), name(20), None);
        // The listing stopped after finding `a` renamed to expire at 40.
        index.merge(vec![("a".into(), name(40))]);
        assert_eq!(index.len(), 2);
        let due: Vec<_> = index.due(30).into_iter().map(|(id, ..)| id).collect();
        assert_eq!(due, ["b"], "not a at its old expiry; b was not reached");
        assert_eq!(index.live_for("a@example.com", 0), 2, "no double count");
        assert_eq!(index.earliest(), Some(20));
    }

    /// The same questions answered by scanning a plain map.
    #[derive(Default)]
    struct Model {
        entries: HashMap<(i64, String), (AccountName, Option<String>, u64)>,
        seq: u64,
    }

    impl Model {
        fn insert(&mut self, id: String, name: AccountName, key_id: Option<String>) {
            self.seq += 1;
            let key = (name.expires_at, id);
            let old = self.entries.remove(&key).and_then(|(_, k, _)| k);
            self.entries.insert(key, (name, key_id.or(old), self.seq));
        }

        fn replace(&mut self, listed: Vec<(String, AccountName)>, since: u64) {
            let mut recent: Vec<_> = self
                .entries
                .iter()
                .filter(|(_, e)| e.2 > since)
                .map(|((_, id), e)| (id.clone(), e.0.clone(), e.2))
                .collect();
            recent.sort_by_key(|e| e.2);
            let mut key_ids: HashMap<(i64, String), String> = self
                .entries
                .iter_mut()
                .filter_map(|(key, e)| e.1.take().map(|k| (key.clone(), k)))
                .collect();
            self.entries.clear();
            let recent = recent.into_iter().map(|(id, name, _)| (id, name));
            for (id, name) in listed.into_iter().chain(recent) {
                let key_id = key_ids.remove(&(name.expires_at, id.clone()));
                self.insert(id, name, key_id);
            }
        }

        fn sorted_keys(&self) -> Vec<(i64, String)> {
            let mut keys: Vec<_> = self.entries.keys().cloned().collect();
            keys.sort();
            keys
        }

        fn due(&self, now: i64) -> Vec<(String, AccountName, Option<String>)> {
            self.sorted_keys()
                .into_iter()
                .filter(|(at, _)| *at <= now)
                .map(|key| {
                    let e = &self.entries[&key];
                    (key.1, e.0.clone(), e.1.clone())
                })
                .collect()
        }

        fn live(&self, owner: &str, now: i64) -> impl Iterator<Item = i64> {
            self.entries
                .values()
                .filter(move |e| e.0.owner.as_str() == owner && e.0.expires_at > now)
                .map(|e| e.0.expires_at)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8, i64, Option<u8>),
        /// Removes the n-th account known (modulo their number), or one
        /// that is not known when there are none.
        Remove(usize),
        /// A listing of these accounts, during which these were inserted.
        Replace(Vec<(u8, u8, i64)>, Vec<(u8, u8, i64, Option<u8>)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let insert = (0u8..8, 0u8..3, 0i64..20, proptest::option::of(0u8..4));
        let listed = prop::collection::vec((0u8..8, 0u8..3, 0i64..20), 0..6);
        prop_oneof![
            4 => insert.clone().prop_map(|(id, owner, at, key)| Op::Insert(id, owner, at, key)),
            2 => (0usize..16).prop_map(Op::Remove),
            1 => (listed, prop::collection::vec(insert, 0..3)).prop_map(|(l, i)| Op::Replace(l, i)),
        ]
    }

    fn owner(n: u8) -> String {
        format!("o{n}@example.com")
    }

    fn check(index: &Index, model: &Model) {
        assert_eq!(index.len(), model.entries.len());
        assert_eq!(index.seq(), model.seq);
        assert_eq!(
            index.earliest(),
            model.entries.values().map(|e| e.0.expires_at).min()
        );
        for now in [-1, 0, 5, 10, 19, 20] {
            assert_eq!(index.due(now), model.due(now));
            for n in 0..4 {
                let owner = owner(n);
                assert_eq!(index.live_for(&owner, now), model.live(&owner, now).count());
                assert_eq!(
                    index.earliest_for(&owner, now),
                    model.live(&owner, now).min()
                );
            }
        }
        for (at, id) in model.sorted_keys() {
            assert_eq!(
                index.key_id(at, &id),
                model.entries[&(at, id.clone())].1.clone()
            );
            assert_eq!(index.key_id(at + 100, &id), None);
        }
        let owned: usize = index.owners.values().map(Vec::len).sum();
        assert_eq!(owned, model.entries.len());
        assert!(index.owners.values().all(|expiries| !expiries.is_empty()));
    }

    fn insert(index: &mut Index, model: &mut Model, (id, o, at, key): (u8, u8, i64, Option<u8>)) {
        let name = name_of(&owner(o), at);
        let key = key.map(|k| format!("key_{k}"));
        index.insert(id.to_string(), name.clone(), key.clone());
        model.insert(id.to_string(), name, key);
    }

    proptest! {
        #[test]
        fn the_index_answers_like_a_scan_of_its_entries(ops in prop::collection::vec(op(), 0..40)) {
            let mut index = Index::default();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(id, o, at, key) => insert(&mut index, &mut model, (id, o, at, key)),
                    Op::Remove(n) => {
                        let keys = model.sorted_keys();
                        let (at, id) = keys
                            .get(n % keys.len().max(1))
                            .cloned()
                            .unwrap_or((7, "missing".to_owned()));
                        index.remove(at, &id);
                        model.entries.remove(&(at, id));
                    }
                    Op::Replace(listed, during) => {
                        let since = index.seq();
                        for one in during {
                            insert(&mut index, &mut model, one);
                        }
                        let listed: Vec<_> = listed
                            .into_iter()
                            .map(|(id, o, at)| (id.to_string(), name_of(&owner(o), at)))
                            .collect();
                        index.replace(listed.clone(), since);
                        model.replace(listed, since);
                    }
                }
                check(&index, &model);
            }
        }
    }
}
