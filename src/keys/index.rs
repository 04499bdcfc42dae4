//! The schedule: this server's live accounts by expiry, learned from the
//! last full listing plus what this replica issued since. It is a cache of
//! what OpenAI holds, never the only record: a restarted replica rebuilds it
//! from the account names at its first sweep.

use std::collections::{BTreeSet, HashMap};

use super::AccountName;

#[derive(Debug, Clone)]
struct Entry {
    name: AccountName,
    /// The key's id, when this replica issued it (a listing shows none).
    key_id: Option<String>,
    /// Insertion sequence, so that a full listing keeps entries issued
    /// while it ran.
    seq: u64,
}

/// Accounts of ours not yet deleted, ordered by expiry.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_expiry: BTreeSet<(i64, String)>,
    entries: HashMap<String, Entry>,
    seq: u64,
}

impl Index {
    /// The current sequence number (taken at the start of a listing).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Adds or refreshes one account.
    pub(crate) fn insert(&mut self, id: String, name: AccountName, key_id: Option<String>) {
        self.seq += 1;
        let mut key_id = key_id;
        if let Some(old) = self.entries.get(&id) {
            self.by_expiry.remove(&(old.name.expires_at, id.clone()));
            key_id = key_id.or_else(|| old.key_id.clone());
        }
        self.by_expiry.insert((name.expires_at, id.clone()));
        self.entries.insert(
            id,
            Entry {
                name,
                key_id,
                seq: self.seq,
            },
        );
    }

    /// Forgets one account (deleted, or found gone).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.by_expiry
                .remove(&(entry.name.expires_at, id.to_owned()));
        }
    }

    /// Replaces the contents with a full listing, keeping entries inserted
    /// after sequence `since` (issued while the listing ran, so possibly not
    /// in it).
    pub(crate) fn replace(&mut self, listed: Vec<(String, AccountName)>, since: u64) {
        let recent: Vec<(String, AccountName)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.seq > since)
            .map(|(id, e)| (id.clone(), e.name.clone()))
            .collect();
        let mut key_ids: HashMap<String, String> = self
            .entries
            .iter_mut()
            .filter_map(|(id, e)| e.key_id.take().map(|k| (id.clone(), k)))
            .collect();
        self.by_expiry.clear();
        self.entries.clear();
        for (id, name) in listed.into_iter().chain(recent) {
            let key_id = key_ids.remove(&id);
            self.insert(id, name, key_id);
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
                self.entries
                    .get(id)
                    .map(|e| (id.clone(), e.name.clone(), e.key_id.clone()))
            })
            .collect()
    }

    /// The key id of an account, when known.
    pub(crate) fn key_id(&self, id: &str) -> Option<String> {
        self.entries.get(id).and_then(|e| e.key_id.clone())
    }

    /// How many accounts `owner` has that are still live at `now`.
    pub(crate) fn live_for(&self, owner: &str, now: i64) -> usize {
        self.entries
            .values()
            .filter(|e| e.name.expires_at > now && e.name.owner.as_str() == owner)
            .count()
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

    fn name(at: i64) -> AccountName {
        AccountName::new(EmailAddress::parse("a@example.com").unwrap(), at)
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
    }
}
