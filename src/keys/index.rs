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
    /// Expiries per owner, for the per-user cap without a scan.
    by_owner: HashMap<String, BTreeSet<(i64, String)>>,
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
        if let Some(old) = self.entries.remove(&id) {
            self.unlink(&id, &old);
            key_id = key_id.or(old.key_id);
        }
        self.by_expiry.insert((name.expires_at, id.clone()));
        self.by_owner
            .entry(name.owner.as_str().to_owned())
            .or_default()
            .insert((name.expires_at, id.clone()));
        self.entries.insert(
            id,
            Entry {
                name,
                key_id,
                seq: self.seq,
            },
        );
    }

    fn unlink(&mut self, id: &str, entry: &Entry) {
        let key = (entry.name.expires_at, id.to_owned());
        self.by_expiry.remove(&key);
        let owner = entry.name.owner.as_str();
        if let Some(set) = self.by_owner.get_mut(owner) {
            set.remove(&key);
            if set.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    /// Forgets one account (deleted, or found gone).
    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.unlink(id, &entry);
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
        self.by_owner.clear();
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
        self.by_owner.get(owner).map_or(0, |set| {
            set.range((now.saturating_add(1), String::new())..).count()
        })
    }

    /// The earliest expiry after `now` among `owner`'s accounts.
    pub(crate) fn earliest_for(&self, owner: &str, now: i64) -> Option<i64> {
        self.by_owner.get(owner).and_then(|set| {
            set.range((now.saturating_add(1), String::new())..)
                .next()
                .map(|(at, _)| *at)
        })
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
        assert_eq!(index.live_for("a@example.com", 50), 0);
        assert_eq!(index.earliest_for("a@example.com", 0), Some(50));
        assert_eq!(index.live_for("b@example.com", 0), 0);
    }
}
