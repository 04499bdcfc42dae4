//! The schedule: this server's live accounts by expiry, learned from the
//! last full listing plus what this replica issued since. It is a cache of
//! what OpenAI holds, never the only record: a restarted replica rebuilds it
//! from the account names at its first sweep.
//!
//! Thousands of keys can be live at once, so the bytes per account matter:
//! the account id is allocated once and shared (`Arc<str>`) by the three
//! structures, and an owner's few accounts sit in a small vector rather than
//! a B-tree of their own.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::AccountName;

/// An account id, shared by `entries`, `by_expiry` and `by_owner`.
type Id = Arc<str>;

#[derive(Debug, Clone)]
struct Entry {
    name: AccountName,
    /// The key's id, when this replica issued it (a listing shows none).
    key_id: Option<Box<str>>,
    /// Insertion sequence, so that a full listing keeps entries issued
    /// while it ran.
    seq: u64,
}

/// Accounts of ours not yet deleted, ordered by expiry.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_expiry: BTreeSet<(i64, Id)>,
    /// Expiries per owner, for the per-user cap without a scan. Unordered:
    /// an owner holds a handful of accounts at most.
    by_owner: HashMap<Box<str>, Vec<(i64, Id)>>,
    entries: HashMap<Id, Entry>,
    seq: u64,
}

impl Index {
    /// The current sequence number (taken at the start of a listing).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Adds or refreshes one account.
    pub(crate) fn insert(&mut self, id: String, name: AccountName, key_id: Option<String>) {
        self.upsert(Id::from(id), name, key_id.map(String::into_boxed_str));
    }

    /// Adds or refreshes one account; a known key id is kept when `key_id`
    /// is `None`.
    fn upsert(&mut self, id: Id, name: AccountName, key_id: Option<Box<str>>) {
        self.seq += 1;
        let (id, key_id) = match self.entries.remove_entry(&id) {
            Some((known, old)) => {
                self.unlink(&known, &old);
                (known, key_id.or(old.key_id))
            }
            None => (id, key_id),
        };
        let at = name.expires_at;
        self.by_expiry.insert((at, Arc::clone(&id)));
        let owner = name.owner.as_str();
        match self.by_owner.get_mut(owner) {
            Some(accounts) => accounts.push((at, Arc::clone(&id))),
            // `vec!` allocates room for exactly one: most owners hold one key.
            None => {
                self.by_owner
                    .insert(owner.into(), vec![(at, Arc::clone(&id))]);
            }
        }
        self.entries.insert(
            id,
            Entry {
                name,
                key_id,
                seq: self.seq,
            },
        );
    }

    /// Removes an account (already taken out of `entries`) from the other
    /// two structures.
    fn unlink(&mut self, id: &Id, entry: &Entry) {
        let at = entry.name.expires_at;
        self.by_expiry.remove(&(at, Arc::clone(id)));
        let owner = entry.name.owner.as_str();
        if let Some(accounts) = self.by_owner.get_mut(owner) {
            if let Some(i) = accounts.iter().position(|(_, known)| known == id) {
                accounts.swap_remove(i);
            }
            if accounts.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    /// Forgets one account (deleted, or found gone).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some((id, entry)) = self.entries.remove_entry(id) {
            self.unlink(&id, &entry);
        }
    }

    /// Replaces the contents with a full listing, keeping entries inserted
    /// after sequence `since` (issued while the listing ran, so possibly not
    /// in it).
    pub(crate) fn replace(&mut self, listed: Vec<(String, AccountName)>, since: u64) {
        let old = std::mem::take(&mut self.entries);
        self.by_expiry.clear();
        self.by_owner.clear();
        let mut recent: Vec<(Id, AccountName)> = Vec::new();
        let mut key_ids: HashMap<Id, Box<str>> = HashMap::new();
        for (id, entry) in old {
            if entry.seq > since {
                recent.push((Arc::clone(&id), entry.name));
            }
            if let Some(key_id) = entry.key_id {
                key_ids.insert(id, key_id);
            }
        }
        let listed = listed.into_iter().map(|(id, name)| (Id::from(id), name));
        for (id, name) in listed.chain(recent) {
            let key_id = key_ids.remove(&id);
            self.upsert(id, name, key_id);
        }
    }

    /// The earliest expiry, if any.
    pub(crate) fn earliest(&self) -> Option<i64> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Accounts whose expiry is at or before `now`.
    pub(crate) fn due(&self, now: i64) -> Vec<(String, AccountName, Option<String>)> {
        self.by_expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, id)| {
                self.entries.get(id).map(|e| {
                    (
                        id.to_string(),
                        e.name.clone(),
                        e.key_id.as_deref().map(str::to_owned),
                    )
                })
            })
            .collect()
    }

    /// The key id of an account, when known.
    pub(crate) fn key_id(&self, id: &str) -> Option<String> {
        self.entries
            .get(id)
            .and_then(|e| e.key_id.as_deref().map(str::to_owned))
    }

    /// `owner`'s expiries that are still live at `now`.
    fn live_expiries(&self, owner: &str, now: i64) -> impl Iterator<Item = i64> {
        let after = now.saturating_add(1);
        self.by_owner
            .get(owner)
            .into_iter()
            .flatten()
            .map(|(at, _)| *at)
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

    /// Number of accounts known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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
        AccountName::new(EmailAddress::parse(owner).unwrap(), at)
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
        assert_eq!(index.key_id("a").as_deref(), Some("key_a"));

        let since = index.seq();
        index.insert("d".into(), name(40), None);
        index.replace(vec![("x".into(), name(50))], since);
        let mut ids: Vec<_> = index.due(100).into_iter().map(|(id, ..)| id).collect();
        ids.sort();
        assert_eq!(ids, ["d", "x"], "listing replaced old entries but kept d");
        index.remove("d");
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

        index.remove("a2");
        assert_eq!(index.live_for("a@example.com", 0), 2);
        assert_eq!(index.earliest_for("a@example.com", 0), Some(20));
        index.remove("a1");
        index.remove("a3");
        index.remove("a3");
        assert_eq!(index.live_for("a@example.com", 0), 0);
        assert!(!index.by_owner.contains_key("a@example.com"));
        assert_eq!(index.by_owner.len(), 1);
        assert_eq!(index.by_expiry.len(), 1);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn inserting_a_known_id_moves_it_and_keeps_its_key_id() {
        let mut index = Index::default();
        index.insert("a".into(), name(10), Some("key_a".into()));
        index.insert("a".into(), name_of("b@example.com", 20), None);
        assert_eq!(index.len(), 1);
        assert_eq!(index.earliest(), Some(20));
        assert_eq!(index.key_id("a").as_deref(), Some("key_a"));
        assert_eq!(index.live_for("a@example.com", 0), 0);
        assert_eq!(index.live_for("b@example.com", 0), 1);
        let due = index.due(20);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "a");
        assert_eq!(due[0].1.owner.as_str(), "b@example.com");
        assert_eq!(due[0].2.as_deref(), Some("key_a"));

        index.replace(vec![("a".into(), name(30))], index.seq());
        assert_eq!(
            index.key_id("a").as_deref(),
            Some("key_a"),
            "a listing shows no key ids; the known one stays"
        );
    }

    #[test]
    fn the_account_id_is_allocated_once() {
        let mut index = Index::default();
        index.insert("a".into(), name(10), None);
        let (id, _) = index.entries.get_key_value("a").unwrap();
        // `entries`, `by_expiry` and `by_owner` share one allocation.
        assert_eq!(Arc::strong_count(id), 3);
        index.insert("a".into(), name(20), None);
        index.replace(vec![("a".into(), name(30))], 0);
        let (id, _) = index.entries.get_key_value("a").unwrap();
        assert_eq!(Arc::strong_count(id), 3);
    }

    /// The index's old layout, as a plain map scanned for every question.
    #[derive(Default)]
    struct Model {
        entries: HashMap<String, (AccountName, Option<String>, u64)>,
        seq: u64,
    }

    impl Model {
        fn insert(&mut self, id: String, name: AccountName, key_id: Option<String>) {
            self.seq += 1;
            let old = self.entries.remove(&id).and_then(|(_, key, _)| key);
            self.entries.insert(id, (name, key_id.or(old), self.seq));
        }

        fn replace(&mut self, listed: Vec<(String, AccountName)>, since: u64) {
            let mut recent: Vec<_> = self
                .entries
                .iter()
                .filter(|(_, e)| e.2 > since)
                .map(|(id, e)| (id.clone(), e.0.clone(), e.2))
                .collect();
            recent.sort_by_key(|e| e.2);
            let mut key_ids: HashMap<String, String> = self
                .entries
                .iter_mut()
                .filter_map(|(id, e)| e.1.take().map(|k| (id.clone(), k)))
                .collect();
            self.entries.clear();
            let recent = recent.into_iter().map(|(id, name, _)| (id, name));
            for (id, name) in listed.into_iter().chain(recent) {
                let key_id = key_ids.remove(&id);
                self.insert(id, name, key_id);
            }
        }

        fn due(&self, now: i64) -> Vec<(String, AccountName, Option<String>)> {
            let mut due: Vec<_> = self
                .entries
                .iter()
                .filter(|(_, e)| e.0.expires_at <= now)
                .map(|(id, e)| (id.clone(), e.0.clone(), e.1.clone()))
                .collect();
            due.sort_by(|a, b| (a.1.expires_at, &a.0).cmp(&(b.1.expires_at, &b.0)));
            due
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
        Remove(u8),
        /// A listing of these accounts, during which these were inserted.
        Replace(Vec<(u8, u8, i64)>, Vec<(u8, u8, i64, Option<u8>)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let insert = (0u8..8, 0u8..3, 0i64..20, proptest::option::of(0u8..4));
        let listed = prop::collection::vec((0u8..8, 0u8..3, 0i64..20), 0..6);
        prop_oneof![
            4 => insert.clone().prop_map(|(id, owner, at, key)| Op::Insert(id, owner, at, key)),
            2 => (0u8..8).prop_map(Op::Remove),
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
        for id in 0..8 {
            let id = id.to_string();
            assert_eq!(
                index.key_id(&id),
                model.entries.get(&id).and_then(|e| e.1.clone())
            );
        }
        let by_owner: usize = index.by_owner.values().map(Vec::len).sum();
        assert_eq!(by_owner, model.entries.len());
        assert_eq!(index.by_expiry.len(), model.entries.len());
        assert!(index.by_owner.values().all(|accounts| !accounts.is_empty()));
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
                    Op::Remove(id) => {
                        index.remove(&id.to_string());
                        model.entries.remove(&id.to_string());
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
