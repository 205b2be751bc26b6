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
use std::hash::BuildHasher;

/// What an entry's allocation costs beyond its key and value bytes, about (the allocator
/// rounds sizes up to its classes).
const ALLOC_OVERHEAD: usize = 16;
/// A position of the table, in bytes.
const POSITION: usize = std::mem::size_of::<Entry>();
/// The fewest positions a table has.
const MIN_POSITIONS: usize = 16;

/// Set in [`Entry::meta`] when the key is known to have no value (then `data` holds just the
/// key).
const ABSENT: u32 = 1 << 31;
/// Set in [`Entry::meta`] when the entry was read (or filled) since the clock hand last passed:
/// the hand spares it once.
const REFERENCED: u32 = 1 << 30;
/// The rest of [`Entry::meta`]: the key's length. Longer keys are not cached.
const KEY_LEN: u32 = REFERENCED - 1;

/// A position of the table: one key and what is known of its value.
#[derive(Default)]
struct Entry {
    /// The key's bytes, then the value's, in one allocation; `None` for a free position.
    data: Option<Box<[u8]>>,
    /// The key's hash (its low 32 bits): the position it belongs at, and a quick check before
    /// the key is compared.
    hash: u32,
    /// The key's length, and the flags [`ABSENT`] and [`REFERENCED`].
    meta: u32,
}

// Two and a half positions to a cache line.
const _: () = assert!(std::mem::size_of::<Entry>() == 24);

impl Entry {
    fn key_len(&self) -> usize {
        (self.meta & KEY_LEN) as usize
    }

    fn cost(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len() + ALLOC_OVERHEAD)
    }
}

/// What an entry of `key` and `value` costs, its position in the table aside.
fn cost(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ALLOC_OVERHEAD
}

/// A map from user keys to their values, bounded in bytes (the entries' and the table's), that
/// drops what was not read lately.
///
/// # Finding a key: two cache misses
///
/// Under GETs spread over more keys than the processor's caches hold, each cache miss on the
/// way to a value costs about 90 ns here, 5% of the Store's thread serving GETs. The table is
/// open addressing with linear probing, at most half full, its entries in one array: a lookup
/// usually reads one cache line of the table (sometimes two), compares 32 bits of hash, then
/// the key and value from their one allocation: two misses. (A hash table of positions into a
/// vector of entries, before, cost four misses: the table's control bytes, its bucket, the
/// entry, the data; and an LRU list, before that, seven.) A removed entry leaves no tombstone: the entries after it in
/// its run move back (backward-shift deletion), so lookups never probe further than the run.
///
/// # Dropping: the CLOCK algorithm (second chance)
///
/// A read marks its entry, and so does a fill. To make room, a hand goes round the table,
/// unmarking marked entries and dropping the first unmarked one. So a new entry stays about a
/// whole turn of the hand, and an entry read since the hand last passed stays another.
pub struct ValueCache {
    /// A power of two long, at least [`MIN_POSITIONS`] (or empty), at most half full. When the
    /// table is what keeps a new entry out and it is less than an eighth full, it is halved
    /// rather than an entry dropped.
    table: Vec<Entry>,
    len: usize,
    hand: usize,
    hasher: FixedState,
    /// The entries' costs and the table's positions.
    bytes: usize,
    budget: usize,
}

impl ValueCache {
    /// A cache holding at most `budget` bytes, its table's included (less than the smallest
    /// table and an entry turns it off).
    pub fn new(budget: usize) -> ValueCache {
        ValueCache {
            table: Vec::new(),
            len: 0,
            hand: 0,
            hasher: FixedState::with_seed(0x5eed_cac4e),
            bytes: 0,
            budget,
        }
    }

    fn hash(&self, key: &[u8]) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let hash = self.hash(key);
        let mut i = hash as usize & self.mask();
        loop {
            let e = &self.table[i];
            let data = e.data.as_deref()?;
            if e.hash == hash && e.key_len() == key.len() && &data[..key.len()] == key {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The cached state of `key`: `Some(None)` when it is known to be absent, `None` when the
    /// cache does not know.
    pub fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let i = self.find(key)?;
        let e = &mut self.table[i];
        e.meta |= REFERENCED;
        let data = e.data.as_deref().expect("found entries hold data");
        Some((e.meta & ABSENT == 0).then(|| data[key.len()..].to_vec()))
    }

    /// Whether an entry costing `cost` may be kept: with the smallest table, within the budget.
    fn fits(&self, cost: usize, key: &[u8]) -> bool {
        cost + MIN_POSITIONS * POSITION <= self.budget && key.len() <= KEY_LEN as usize
    }

    /// Remembers what a read of `key` found.
    pub fn fill(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let cost = cost(key, value.as_deref());
        let held = self.find(key);
        if !self.fits(cost, key) {
            if let Some(i) = held {
                self.remove(i);
            }
            return;
        }
        if let Some(i) = held {
            self.replace(i, key.len(), value.as_deref());
            self.table[i].meta |= REFERENCED;
            return self.shrink();
        }
        // Room first, so that the new entry is not what the hand drops.
        loop {
            let growth = if self.full() {
                self.table.len().max(MIN_POSITIONS) * POSITION
            } else {
                0
            };
            if self.bytes + cost + growth <= self.budget {
                break;
            }
            self.make_room();
        }
        if self.full() {
            self.resize((2 * self.table.len()).max(MIN_POSITIONS));
        }
        let hash = self.hash(key);
        let i = free_position(&self.table, hash);
        self.table[i] = Entry {
            data: Some(data(key, value.as_deref())),
            hash,
            meta: key.len() as u32 | REFERENCED | if value.is_none() { ABSENT } else { 0 },
        };
        self.len += 1;
        self.bytes += cost;
    }

    /// Records a write of `key` (`None` deletes it), if the cache holds it.
    pub fn update(&mut self, key: &[u8], value: &Option<Vec<u8>>) {
        if let Some(i) = self.find(key) {
            if !self.fits(cost(key, value.as_deref()), key) {
                // Not copied in only to be dropped, after pushing out every other entry.
                return self.remove(i);
            }
            self.replace(i, key.len(), value.as_deref());
            self.shrink();
        }
    }

    fn replace(&mut self, i: usize, key_len: usize, value: Option<&[u8]>) {
        let e = &mut self.table[i];
        let before = e.cost();
        let old = e.data.take().expect("replacing an entry");
        e.data = Some(data(&old[..key_len], value));
        e.meta = match value {
            Some(_) => e.meta & !ABSENT,
            None => e.meta | ABSENT,
        };
        self.bytes = self.bytes + e.cost() - before;
    }

    /// Whether one more entry would make the table more than half full (or it is empty).
    fn full(&self) -> bool {
        2 * (self.len + 1) > self.table.len()
    }

    /// Rebuilds the table with `size` positions, putting every entry where it belongs in it.
    fn resize(&mut self, size: usize) {
        let old = std::mem::replace(
            &mut self.table,
            (0..size).map(|_| Entry::default()).collect(),
        );
        self.bytes = self.bytes + size * POSITION - old.len() * POSITION;
        for e in old.into_iter().filter(|e| e.data.is_some()) {
            let i = free_position(&self.table, e.hash);
            self.table[i] = e;
        }
        self.hand = 0;
    }

    /// Drops the entry at `i`, then moves back the entries after it in its run that may take
    /// its place (those that do not belong between it and them), so that every entry stays
    /// reachable from where it belongs without crossing a free position.
    fn remove(&mut self, mut i: usize) {
        let mask = self.mask();
        self.bytes -= self.table[i].cost();
        self.table[i] = Entry::default();
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if self.table[j].data.is_none() {
                return;
            }
            let home = self.table[j].hash as usize & mask;
            // `j` may move to `i` unless it belongs in the circular range (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.table.swap(i, j);
                i = j;
            }
        }
    }

    /// Makes room: halves the table if it is less than an eighth full, or else moves the hand
    /// on until it drops an entry (there is one: a table without entries is the smallest, and
    /// the budget holds it and any entry that [`ValueCache::fits`]). The hand stays on the
    /// position it emptied, which an entry moved back may now hold.
    fn make_room(&mut self) {
        if self.table.len() > MIN_POSITIONS && 8 * self.len < self.table.len() {
            return self.resize(self.table.len() / 2);
        }
        loop {
            if self.hand >= self.table.len() {
                self.hand = 0;
            }
            let e = &mut self.table[self.hand];
            if e.data.is_some() {
                if e.meta & REFERENCED == 0 {
                    return self.remove(self.hand);
                }
                e.meta &= !REFERENCED;
            }
            self.hand += 1;
        }
    }

    /// Makes room until the cache is within its budget.
    fn shrink(&mut self) {
        while self.bytes > self.budget {
            self.make_room();
        }
    }

    /// Forgets everything (a range's data was replaced or deleted underneath).
    pub fn clear(&mut self) {
        self.table = Vec::new();
        self.len = 0;
        self.hand = 0;
        self.bytes = 0;
    }

    /// The bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The first free position of `table` from where `hash` belongs (there is one: the table is
/// at most half full).
fn free_position(table: &[Entry], hash: u32) -> usize {
    let mask = table.len() - 1;
    let mut i = hash as usize & mask;
    while table[i].data.is_some() {
        i = (i + 1) & mask;
    }
    i
}

/// A key and its value (if any) in one allocation.
fn data(key: &[u8], value: Option<&[u8]>) -> Box<[u8]> {
    match value {
        Some(v) => [key, v].concat().into_boxed_slice(),
        None => key.into(),
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

    /// The bytes of a table of `positions`.
    fn table(positions: usize) -> usize {
        positions * POSITION
    }

    #[test]
    fn it_keeps_within_its_budget() {
        let entry = cost(b"k00", Some(b"0123456789"));
        let budget = table(MIN_POSITIONS) + 3 * entry;
        let mut c = ValueCache::new(budget);
        for k in ["k00", "k01", "k02"] {
            c.fill(k.as_bytes(), v("0123456789"));
        }
        c.fill(b"k03", v("0123456789"));
        let held = ["k00", "k01", "k02", "k03"]
            .iter()
            .filter(|k| c.get(k.as_bytes()).is_some())
            .count();
        assert_eq!((held, c.get(b"k03")), (3, Some(v("0123456789"))));
        assert_eq!(c.bytes(), budget);
        // A value grown by a write pushes out others rather than the budget.
        c.update(b"k03", &Some(vec![0; 2 * entry]));
        assert!(c.bytes() <= budget, "{} bytes", c.bytes());
        assert_eq!(c.get(b"k03"), Some(Some(vec![0; 2 * entry])));
        // A value larger than the whole budget is not kept, nor is the key's older value...
        c.fill(b"huge", Some(vec![0; 4 * entry]));
        c.fill(b"k03", Some(vec![0; 4 * entry]));
        assert_eq!((c.get(b"huge"), c.get(b"k03")), (None, None));
        // ...nor does a write of one push out the other entries first.
        c.fill(b"k04", v("4"));
        c.fill(b"k05", v("5"));
        c.update(b"k05", &Some(vec![0; 4 * entry]));
        assert_eq!((c.get(b"k04"), c.get(b"k05")), (Some(v("4")), None));
        let off = &mut ValueCache::new(table(MIN_POSITIONS));
        off.fill(b"a", v("1"));
        assert_eq!((off.get(b"a"), off.bytes()), (None, 0));
    }

    #[test]
    fn keys_read_again_stay_while_keys_read_once_come_and_go() {
        let value = v("0123456789");
        let entry = cost(b"cold-0000", value.as_deref());
        let budget = table(256) + 100 * entry;
        let mut c = ValueCache::new(budget);
        let hot: Vec<String> = (0..10).map(|i| format!("hot--{i:04}")).collect();
        let mut hot_misses = 0;
        for i in 0..10_000 {
            let cold = format!("cold-{i:04}");
            c.fill(cold.as_bytes(), value.clone());
            // Read as the Store reads: filled again after a miss.
            for k in &hot {
                if c.get(k.as_bytes()).is_none() {
                    assert!(i < 300, "{k} dropped at {i}");
                    hot_misses += 1;
                    c.fill(k.as_bytes(), value.clone());
                }
            }
            // A new entry stays a while (unread, a turn of the hand) before it goes.
            if i >= 300 {
                let recent = format!("cold-{:04}", i - 5);
                assert!(c.find(recent.as_bytes()).is_some(), "{recent} at {i}");
            }
        }
        assert!(hot_misses <= 2 * hot.len(), "{hot_misses} misses");
        assert_eq!(c.bytes(), budget);
        // An entry larger than the one it pushes out makes room for itself, and stays.
        c.fill(b"big", Some(vec![7; 5 * entry]));
        assert_eq!(c.get(b"big"), Some(Some(vec![7; 5 * entry])));
        assert!(c.bytes() <= budget);
    }

    #[test]
    fn a_table_left_sparse_gives_its_room_back() {
        let budget = 64 << 10;
        let mut c = ValueCache::new(budget);
        let mut i = 0;
        while c.table.len() < 1024 {
            c.fill(format!("tiny-{i}").as_bytes(), None);
            i += 1;
        }
        let big = Some(vec![1; budget / 4]);
        for k in ["big-1", "big-2", "big-3"] {
            c.fill(k.as_bytes(), big.clone());
        }
        for k in ["big-1", "big-2", "big-3"] {
            assert_eq!(c.get(k.as_bytes()), Some(big.clone()), "{k}");
        }
        assert!(c.bytes() <= budget);
    }

    /// Many keys filled, read, written and dropped at random against a small budget: what the
    /// cache answers is always the key's latest value, and it counts its bytes right.
    #[test]
    fn under_churn_it_answers_only_the_latest_values_within_its_budget() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        use std::collections::HashMap;
        let mut rng = StdRng::seed_from_u64(7);
        let budget = table(128) + 40 * cost(b"key-00", Some(&[0; 20]));
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
            let held: usize = c.table.iter().map(Entry::cost).sum();
            assert_eq!(c.bytes(), held + table(c.table.len()));
            assert!(c.bytes() <= budget);
            let entries: Vec<usize> = (0..c.table.len())
                .filter(|&i| c.table[i].data.is_some())
                .collect();
            assert_eq!(c.len, entries.len());
            assert!(2 * c.len <= c.table.len(), "at most half full");
            // Every entry is found where it is, so none was cut off from its run.
            for i in entries {
                let e = &c.table[i];
                let key = &e.data.as_deref().unwrap()[..e.key_len()];
                assert_eq!(c.find(key), Some(i), "step {step}");
            }
        }
        assert!(
            hits > 20_000 && evicted > 1_000,
            "{hits} hits, {evicted} evicted"
        );
    }
}
