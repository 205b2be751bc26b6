//! What the benchmarks share: a node's settings and a data directory of ranges on it alone.

#![allow(dead_code)]

use flotilla_actors::ids::{NodeId, RangeId, ReplicaId};
use flotilla_actors::storage::{Engine, RangeDescriptor, WriteBatch};
use std::sync::Arc;
use tempfile::TempDir;

/// Values of the SETs benchmarked.
pub const VALUE_BYTES: usize = 100;
/// The node's cache, as `cache_mb`'s default.
pub const CACHE_BYTES: u64 = 256 << 20;
pub const NODE: NodeId = NodeId(1);
pub const BOOT: u64 = 1;

/// A temporary durable data directory with `ranges` ranges bootstrapped on this node alone,
/// range `i + 1` spanning `[bound(i), bound(i + 1))` (an empty bound is the key space's end).
pub fn bootstrapped(
    ranges: usize,
    bound: impl Fn(usize) -> Vec<u8>,
) -> (TempDir, Arc<Engine>, Vec<RangeId>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), CACHE_BYTES).expect("open the engine");
    let bound = |i: usize| {
        if i == 0 || i == ranges {
            Vec::new()
        } else {
            bound(i)
        }
    };
    let mut batch = WriteBatch::default();
    let mut ids = Vec::with_capacity(ranges);
    for i in 0..ranges {
        let d = RangeDescriptor {
            id: RangeId(i as u64 + 1),
            start_key: bound(i),
            end_key: bound(i + 1),
            voters: vec![ReplicaId::new(NODE, 0)],
            learners: Vec::new(),
            removed: Vec::new(),
        };
        engine.bootstrap_range(&d, &mut batch).expect("bootstrap");
        ids.push(d.id);
    }
    engine.commit(batch).expect("commit");
    (dir, engine, ids)
}
