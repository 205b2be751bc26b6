//! The Store's routing table: which of this node's ranges holds a key, found from the ranges'
//! start keys.
//!
//! The start keys sit in one sorted array, each with its first 16 bytes as a number, so a
//! lookup's binary search compares numbers in one contiguous block and reads a key's own bytes
//! only when those 16 bytes tie. Over 10,000 ranges a `BTreeMap<Vec<u8>, RangeId>` compared
//! the key with start keys behind a pointer each, most not in cache: 9% of the thread of a
//! leader's Store under SET spread over them.

use crate::ids::RangeId;

/// A key's first 16 bytes, zero-padded, as a big-endian number: keys in order have prefixes in
/// order (ties broken by the whole key).
fn prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

struct Start {
    prefix: u128,
    key: Box<[u8]>,
    range: RangeId,
}

impl Start {
    /// Whether this start key is at or before `key` (whose prefix is `p`).
    fn at_or_before(&self, p: u128, key: &[u8]) -> bool {
        self.prefix < p || (self.prefix == p && *self.key <= *key)
    }
}

/// Start key → range, ordered by start key.
#[derive(Default)]
pub struct Routing {
    starts: Vec<Start>,
}

impl Routing {
    /// Where `key` is, or would go, in the array: the first start key after it.
    fn after(&self, key: &[u8]) -> usize {
        let p = prefix(key);
        self.starts.partition_point(|s| s.at_or_before(p, key))
    }

    /// Records that `range` starts at `start` (replacing the range that did).
    pub fn insert(&mut self, start: &[u8], range: RangeId) {
        let i = self.after(start);
        if i > 0 && *self.starts[i - 1].key == *start {
            self.starts[i - 1].range = range;
            return;
        }
        let start = Start {
            prefix: prefix(start),
            key: start.into(),
            range,
        };
        self.starts.insert(i, start);
    }

    /// Forgets the range that starts at `start`.
    pub fn remove(&mut self, start: &[u8]) {
        let i = self.after(start);
        if i > 0 && *self.starts[i - 1].key == *start {
            self.starts.remove(i - 1);
        }
    }

    /// The range with the greatest start key at or before `key`: the one that holds it, if this
    /// node has a replica of it (the caller checks the range's end).
    pub fn find(&self, key: &[u8]) -> Option<RangeId> {
        let i = self.after(key);
        (i > 0).then(|| self.starts[i - 1].range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::ops::Bound;

    /// Short keys, keys with zero bytes, and keys that share their first 16 bytes: the cases
    /// where a prefix alone does not decide.
    fn key(rng: &mut StdRng) -> Vec<u8> {
        let stem: &[u8] = match rng.gen_range(0..4) {
            0 => b"",
            1 => b"key:0000000",
            2 => b"key:000000500000",
            _ => b"\0\0",
        };
        let mut k = stem.to_vec();
        for _ in 0..rng.gen_range(0..20) {
            k.push(*[0u8, 1, b'0', b'5', 255].get(rng.gen_range(0..5)).unwrap());
        }
        k
    }

    #[test]
    fn it_finds_what_an_ordered_map_of_start_keys_finds() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut routing = Routing::default();
        let mut model: BTreeMap<Vec<u8>, RangeId> = BTreeMap::new();
        for step in 0..20_000u64 {
            let k = key(&mut rng);
            match rng.gen_range(0..4) {
                0 => {
                    routing.insert(&k, RangeId(step));
                    model.insert(k, RangeId(step));
                }
                1 => {
                    routing.remove(&k);
                    model.remove(&k);
                }
                _ => {
                    let below = (Bound::Unbounded, Bound::Included(k.as_slice()));
                    let expected = model.range::<[u8], _>(below).next_back().map(|(_, &r)| r);
                    assert_eq!(routing.find(&k), expected, "{k:?}");
                }
            }
            assert_eq!(routing.starts.len(), model.len());
        }
        assert!(model.len() > 100, "{} start keys", model.len());
    }

    #[test]
    fn keys_before_the_first_range_have_none() {
        let mut routing = Routing::default();
        assert_eq!(routing.find(b"a"), None);
        routing.insert(b"m", RangeId(2));
        routing.insert(b"", RangeId(1));
        assert_eq!(routing.find(b""), Some(RangeId(1)));
        assert_eq!(routing.find(b"l\xff\xff"), Some(RangeId(1)));
        assert_eq!(routing.find(b"m"), Some(RangeId(2)));
        routing.remove(b"");
        assert_eq!(routing.find(b"a"), None);
        assert_eq!(routing.find(b"zz"), Some(RangeId(2)));
    }
}
