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

use foldhash::fast::FixedState;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// What an entry costs beyond its key and value bytes, roughly: its slot (32 bytes) and the
/// slots vector's spare room, its allocation's header, and its share of the hash table.
const ENTRY_OVERHEAD: usize = 64;

/// One key and what is known of its value, in one allocation: a lookup that finds the slot
/// compares the key and copies the value from the same few cache lines. (An LRU list, which
/// the cache had before, cost a read seven cache misses: the key behind two pointers, and the
/// list neighbours moved on every hit, at 8% of the thread serving GETs.)
struct Slot {
    /// The key's bytes, then the value's.
    data: Box<[u8]>,
    key_len: usize,
    /// The key is known to have no value (then `data` holds just the key).
    absent: bool,
    /// Read since the clock hand last passed: the hand spares it once.
    referenced: bool,
}

impl Slot {
    fn new(key: &[u8], value: Option<&[u8]>) -> Slot {
        let data = match value {
            Some(v) => [key, v].concat().into_boxed_slice(),
            None => key.into(),
        };
        Slot {
            data,
            key_len: key.len(),
            absent: value.is_none(),
            referenced: false,
        }
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }

    fn value(&self) -> Option<Vec<u8>> {
        (!self.absent).then(|| self.data[self.key_len..].to_vec())
    }

    fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

fn cost(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

/// A map from user keys to their values, bounded in bytes, that drops what was not read
/// lately: the CLOCK algorithm (second chance). A read marks its entry. To make room, a hand
/// goes round the slots, unmarking marked entries and dropping the first unmarked one; a new
/// entry takes the slot the hand just freed, so it comes up last, a whole turn later. New
/// entries start unmarked: a key read once goes before one read again.
pub struct ValueCache {
    /// Positions in `slots`, found by the key's hash.
    index: HashTable<u32>,
    /// Entries stay where they are put; a dropped one leaves its slot free for the next.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    hand: usize,
    hasher: FixedState,
    bytes: usize,
    budget: usize,
}

impl ValueCache {
    /// A cache holding at most `budget` bytes (0 turns it off).
    pub fn new(budget: usize) -> ValueCache {
        ValueCache {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            hasher: FixedState::with_seed(0x5eed_cac4e),
            bytes: 0,
            budget,
        }
    }

    fn slot(&self, i: u32) -> &Slot {
        self.slots[i as usize]
            .as_ref()
            .expect("indexed slots hold an entry")
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        self.slots[i].as_mut().expect("indexed slots hold an entry")
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&i| self.slot(i).key() == key)
            .map(|&i| i as usize)
    }

    /// The cached state of `key`: `Some(None)` when it is known to be absent, `None` when the
    /// cache does not know.
    pub fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let i = self.find(key)?;
        let slot = self.slot_mut(i);
        slot.referenced = true;
        Some(slot.value())
    }

    /// Remembers what a read of `key` found.
    pub fn fill(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if cost(key, value.as_deref()) > self.budget {
            if let Some(i) = self.find(key) {
                self.remove(i);
            }
            return;
        }
        if let Some(i) = self.find(key) {
            self.replace(i, value.as_deref());
            return self.shrink();
        }
        let slot = Slot::new(key, value.as_deref());
        while self.bytes + slot.cost() > self.budget {
            self.drop_one();
        }
        self.bytes += slot.cost();
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries")
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hasher.hash_one(key), i, |&j| {
            let slot = slots[j as usize]
                .as_ref()
                .expect("indexed slots hold an entry");
            hasher.hash_one(slot.key())
        });
    }

    /// Records a write of `key` (`None` deletes it), if the cache holds it.
    pub fn update(&mut self, key: &[u8], value: &Option<Vec<u8>>) {
        if let Some(i) = self.find(key) {
            self.replace(i, value.as_deref());
            self.shrink();
        }
    }

    fn replace(&mut self, i: usize, value: Option<&[u8]>) {
        let slot = self.slot_mut(i);
        let before = slot.cost();
        let fresh = Slot::new(slot.key(), value);
        slot.data = fresh.data;
        slot.absent = fresh.absent;
        let after = slot.cost();
        self.bytes = self.bytes + after - before;
    }

    /// Drops the entry at `i`, leaving its slot free.
    fn remove(&mut self, i: usize) {
        let slot = self.slots[i].take().expect("removing an entry");
        let hash = self.hasher.hash_one(slot.key());
        self.index
            .find_entry(hash, |&j| j as usize == i)
            .expect("an entry is indexed")
            .remove();
        self.bytes -= slot.cost();
        self.free.push(i as u32);
    }

    /// Moves the hand on until it drops an entry (there is one: `bytes` is not 0).
    fn drop_one(&mut self) {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            match &mut self.slots[i] {
                None => {}
                Some(slot) if slot.referenced => slot.referenced = false,
                Some(_) => return self.remove(i),
            }
        }
    }

    /// Drops entries until the cache is within its budget.
    fn shrink(&mut self) {
        while self.bytes > self.budget {
            self.drop_one();
        }
    }

    /// Forgets everything (a range's data was replaced or deleted underneath).
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.hand = 0;
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
    fn it_keeps_within_its_budget_dropping_entries_not_read_again() {
        let entry = cost(b"k00", Some(b"0123456789"));
        let mut c = ValueCache::new(3 * entry);
        for k in ["k00", "k01", "k02"] {
            c.fill(k.as_bytes(), v("0123456789"));
        }
        assert!(c.get(b"k00").is_some()); // marked: the hand spares it once, and drops k01
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

    #[test]
    fn a_new_entry_gets_a_whole_turn_and_a_read_one_a_second_chance() {
        let value = v("0123456789");
        let entry = cost(b"a", value.as_deref());
        let mut c = ValueCache::new(3 * entry);
        for k in ["a", "b", "c"] {
            c.fill(k.as_bytes(), value.clone());
        }
        assert!(c.get(b"a").is_some());
        for k in ["d", "e", "f"] {
            c.fill(k.as_bytes(), value.clone());
        }
        // b, c, then a (once its mark was spent) made room; each new entry stayed its turn.
        let held: Vec<&str> = ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .filter(|k| c.get(k.as_bytes()).is_some())
            .collect();
        assert_eq!(held, ["d", "e", "f"]);
        // An entry larger than the one it pushes out makes room for itself, and stays.
        c.fill(b"big", Some(vec![7; 2 * entry - 70]));
        assert_eq!(c.get(b"big"), Some(Some(vec![7; 2 * entry - 70])));
        assert!(c.bytes() <= 3 * entry);
    }

    /// Many keys filled, read, written and dropped at random against a small budget: what the
    /// cache answers is always the key's latest value, and it counts its bytes right.
    #[test]
    fn under_churn_it_answers_only_the_latest_values_within_its_budget() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        use std::collections::HashMap;
        let mut rng = StdRng::seed_from_u64(7);
        let budget = 40 * cost(b"key-00", Some(&[0; 20]));
        let mut c = ValueCache::new(budget);
        let mut truth: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let (mut hits, mut evicted) = (0, 0);
        for step in 0..200_000 {
            let key = format!("key-{:02}", rng.gen_range(0..100)).into_bytes();
            match rng.gen_range(0..10) {
                0..=3 => {
                    let value = rng
                        .gen_bool(0.9)
                        .then(|| vec![step as u8; rng.gen_range(0..40)]);
                    c.update(&key, &value);
                    truth.insert(key, value);
                }
                4..=8 => match c.get(&key) {
                    Some(value) => {
                        assert_eq!(value, truth.get(&key).cloned().flatten(), "step {step}");
                        hits += 1;
                    }
                    None => c.fill(&key, truth.get(&key).cloned().flatten()),
                },
                _ if step % 5_000 == 9 => c.clear(),
                _ => {
                    let before = c.bytes();
                    c.fill(&key, truth.get(&key).cloned().flatten());
                    evicted += usize::from(c.bytes() <= before);
                }
            }
            let held: usize = c.slots.iter().flatten().map(Slot::cost).sum();
            assert_eq!(c.bytes(), held);
            assert!(held <= budget);
            let entries = c.slots.iter().flatten().count();
            assert_eq!(c.index.len(), entries);
            assert_eq!(c.free.len() + entries, c.slots.len());
        }
        assert!(
            hits > 20_000 && evicted > 1_000,
            "{hits} hits, {evicted} evicted"
        );
    }
}
