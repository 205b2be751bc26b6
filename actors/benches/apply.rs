//! The cost of the Store applying one `Events` batch of N committed SETs (1, 64 and 1,024),
//! spread over four ranges, and writing it: `Store::apply_events`, the function the `Events`
//! handler calls, then `Store::write_applied`, which writes the data, each range's applied
//! index and its proposers in one atomic sled batch (contract 5) on a durable [`Engine`] in a
//! temporary directory (`TMPDIR` chooses where). (The Store itself writes after 2 ms or 1,024
//! entries, whichever comes first, so a batch of one is written with others.)
//!
//! The events are built before the clock starts (MultiRaft built them). The Store's `Applied`
//! report to MultiRaft goes into a mailbox that nobody runs; it is emptied between batches,
//! untimed. Keys cycle over 10,000 per range, all written once before each benchmark, so the
//! tree stays the same size however long it runs, and every SET overwrites a key, as a steady
//! workload does.
//!
//! Throughput is in commands per second.

mod common;

use actix::dev::channel::{channel, AddressReceiver};
use actix::Addr;
use common::{BOOT, NODE, VALUE_BYTES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_actors::command::{Command, SetCondition};
use flotilla_actors::ids::{ProposalId, RangeId};
use flotilla_actors::messages::Event;
use flotilla_actors::multiraft::MultiRaft;
use flotilla_actors::storage::{Engine, BOOTSTRAP_INDEX};
use flotilla_actors::store::{Store, StoreSettings};
use futures::StreamExt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BATCH_SIZES: [usize; 3] = [1, 64, 1_024];
const RANGES: u64 = 4;
const KEYS_PER_RANGE: u64 = 10_000;
const TERM: u64 = 6;

/// A Store over four ranges `[-, 1)`, `[1, 2)`, `[2, 3)`, `[3, -)`, with the mailbox its reports
/// to MultiRaft go to.
struct Fixture {
    _dir: TempDir,
    engine: Arc<Engine>,
    store: Store,
    reports: AddressReceiver<MultiRaft>,
    /// The last index handed over, per range.
    indexes: Vec<u64>,
    seq: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let (dir, engine, _) =
            common::bootstrapped(RANGES as usize, |i| i.to_string().into_bytes());
        let (tx, reports) = channel::<MultiRaft>(16);
        let store = Store::load(
            NODE,
            BOOT,
            engine.clone(),
            Addr::new(tx),
            StoreSettings::default(),
            Arc::default(),
        )
        .expect("load the store");
        Fixture {
            _dir: dir,
            engine,
            store,
            reports,
            indexes: vec![BOOTSTRAP_INDEX; RANGES as usize],
            seq: 0,
        }
    }

    /// A store whose ranges hold every key already.
    fn filled() -> Fixture {
        let mut fixture = Fixture::new();
        let keys = (RANGES * KEYS_PER_RANGE) as usize;
        for _ in 0..keys.div_ceil(1_024) {
            let events = fixture.events(1_024);
            fixture.store.apply_events(events).expect("apply");
            fixture.drain_reports();
        }
        fixture
    }

    /// The next `n` committed SETs, round-robin over the ranges, as MultiRaft hands them over.
    fn events(&mut self, n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| {
                self.seq += 1;
                let r = (self.seq % RANGES) as usize;
                self.indexes[r] += 1;
                let key = format!("{r}/key:{:06}", self.seq / RANGES % KEYS_PER_RANGE);
                Event::CommandCommitted {
                    range: RangeId(r as u64 + 1),
                    index: self.indexes[r],
                    term: TERM,
                    proposal: Some(ProposalId {
                        node: NODE,
                        boot: BOOT,
                        seq: self.seq,
                    }),
                    command: Some(Command::Set {
                        key: key.into_bytes(),
                        value: vec![b'v'; VALUE_BYTES],
                        condition: SetCondition::Always,
                    }),
                }
            })
            .collect()
    }

    fn drain_reports(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while let Poll::Ready(Some(report)) = self.reports.poll_next_unpin(&mut cx) {
            drop(report);
        }
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    // A batch of 1,024 takes about a millisecond: 100 samples would not fit in a few seconds.
    group.sample_size(50);
    // One store per size, every key written once before, synced after its benchmark and kept
    // open until the end: on one shared store, the 1,024-command batches that came after
    // 300,000 single-command ones took 2 to 3 ms instead of 1.1 ms; and sled frees a closed
    // database's pages lazily, inside later operations of any database.
    let mut fixtures = Vec::new();
    for n in BATCH_SIZES {
        fixtures.push(Fixture::filled());
        let fixture = fixtures.last_mut().expect("just pushed");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("set", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let events = fixture.events(n);
                    let start = Instant::now();
                    fixture.store.apply_events(events).expect("apply");
                    fixture.store.write_applied().expect("write");
                    total += start.elapsed();
                    fixture.drain_reports();
                }
                total
            })
        });
        // What sled still has to write out would compete with the next benchmark.
        fixture.engine.sync().expect("sync");
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
