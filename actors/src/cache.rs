//! The Store's cache of user values: the keys read recently, with their value or their absence.
//!
//! A sled lookup costs about a microsecond (an epoch pin, a walk down the tree, a binary search
//! in a node, cache accounting): most of the Store's time on a read-heavy load. This cache
//! answers a repeated read from a hash map instead.
//!
//! It is filled by reads only. A write updates an entry that is there and does not add one, so
//! a write-heavy load does not push out what is read. It belongs to the Store, which alone
//! changes user data outside snapshots: every write the Store applies passes through
//! [`ValueCache::update`], and anything else that replaces a range's data clears it: a replica
//! destroyed, and a snapshot, which MultiRaft writes (the Store notices it by a counter,
//! `Engine::data_writes`; see `Store::values`).

use lru::LruCache;

/// What an entry costs beyond its key and value bytes: two `Vec`s, the `Option`, the list links
/// and the hash table slot.
const ENTRY_OVERHEAD: usize = 96;

/// A least-recently-used map from user keys to their values, bounded in bytes.
pub struct ValueCache {
    entries: LruCache<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    budget: usize,
}

fn cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl ValueCache {
    /// A cache holding at most `budget` bytes (0 turns it off).
    pub fn new(budget: usize) -> ValueCache {
        ValueCache {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// The cached state of `key`: `Some(None)` when it is known to be absent, `None` when the
    /// cache does not know.
    pub fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.entries.get(key).cloned()
    }

    /// Remembers what a read of `key` found.
    pub fn fill(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let added = cost(key, &value);
        if added > self.budget {
            if let Some((k, v)) = self.entries.pop_entry(key) {
                self.bytes -= cost(&k, &v);
            }
            return;
        }
        if let Some((k, v)) = self.entries.push(key.to_vec(), value) {
            self.bytes -= cost(&k, &v);
        }
        self.bytes += added;
        self.shrink();
    }

    /// Records a write of `key` (`None` deletes it), if the cache holds it.
    pub fn update(&mut self, key: &[u8], value: &Option<Vec<u8>>) {
        if let Some(held) = self.entries.peek_mut(key) {
            let (before, after) = (cost(key, held), cost(key, value));
            held.clone_from(value);
            self.bytes = self.bytes + after - before;
            self.shrink();
        }
    }

    /// Drops the least recently used entries until the cache is within its budget.
    fn shrink(&mut self) {
        while self.bytes > self.budget {
            let (k, v) = self
                .entries
                .pop_lru()
                .expect("bytes counted for entries held");
            self.bytes -= cost(&k, &v);
        }
    }

    /// Forgets everything (a range's data was replaced or deleted underneath).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_fill_it_writes_only_update_it() {
        let mut c = ValueCache::new(1 << 20);
        assert_eq!(c.get(b"a"), None);
        c.fill(b"a", v("1"));
        c.fill(b"gone", None);
        assert_eq!(c.get(b"a"), Some(v("1")));
        assert_eq!(c.get(b"gone"), Some(None), "an absence is remembered too");
        c.update(b"a", &v("2"));
        c.update(b"gone", &v("back"));
        c.update(b"never read", &v("x"));
        assert_eq!(c.get(b"a"), Some(v("2")));
        assert_eq!(c.get(b"gone"), Some(v("back")));
        assert_eq!(c.get(b"never read"), None, "a write alone adds nothing");
        c.update(b"a", &None);
        assert_eq!(c.get(b"a"), Some(None));
        c.clear();
        assert_eq!((c.get(b"gone"), c.bytes()), (None, 0));
    }

    #[test]
    fn it_keeps_within_its_budget_dropping_the_least_recently_used() {
        let entry = cost(b"k00", &v("0123456789"));
        let mut c = ValueCache::new(3 * entry);
        for k in ["k00", "k01", "k02"] {
            c.fill(k.as_bytes(), v("0123456789"));
        }
        assert!(c.get(b"k00").is_some()); // k01 is now the least recently used
        c.fill(b"k03", v("0123456789"));
        assert_eq!(c.get(b"k01"), None);
        assert!(c.get(b"k00").is_some() && c.get(b"k03").is_some());
        assert_eq!(c.bytes(), 3 * entry);
        // A value grown by a write pushes out others rather than the budget.
        c.update(b"k03", &Some(vec![0; 2 * entry]));
        assert!(c.bytes() <= 3 * entry, "{} bytes", c.bytes());
        // A value larger than the whole budget is not kept.
        c.fill(b"huge", Some(vec![0; 4 * entry]));
        assert_eq!(c.get(b"huge"), None);
        let off = &mut ValueCache::new(0);
        off.fill(b"a", v("1"));
        assert_eq!(off.get(b"a"), None);
    }
}
