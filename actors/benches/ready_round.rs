//! The cost of one MultiRaft round's persistence, for 1, 100 and 1,000 groups.
//!
//! Two benchmarks, both on a durable [`Engine`] (a real `fdatasync` per round, as in
//! production) in a temporary directory (`TMPDIR` chooses where: on a tmpfs the sync costs
//! nothing):
//!
//! - `ready_round/persist/G`: what `MultiRaft::run_round` does with storage for G groups, each
//!   with a typical leader `Ready` (three entries of SET commands with 100-byte values, and a
//!   hard state): `RangeStorage::stage_entries` and `stage_hard_state` of every group into one
//!   `WriteBatch`, then `Engine::commit`: one raft-engine write and one `fdatasync`. The entries are built before
//!   the clock starts (raft-rs built them when they were proposed).
//! - `ready_round/raw_node/G`: the same round driven through real raft-rs `RawNode`s on
//!   `RangeStorage`, single-voter groups each leading its range: three proposals per group
//!   (made before the clock starts: the `Propose` handler's work, not the round's), then, timed,
//!   `ready`, the committed entries decoded into events as `hand_over` does, staging, one write
//!   and one sync, `advance_append`, and the commit index of the `LightReady` staged for the
//!   next round's write. With one voter the entries commit at `advance_append`, so the synced
//!   batch holds the entries and the previous round's commit indexes, as for a one-node cluster.
//!
//! Between rounds, untimed, each log is compacted to its last few entries (MultiRaft compacts
//! after `log_compaction_entries`), so every round writes to a log of the same size.
//!
//! Throughput is in groups persisted per second: the groups of a round divided by its time.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
mod common;

use common::{BOOT, NODE, VALUE_BYTES};
use flotilla_actors::codec;
use flotilla_actors::command::{Command, SetCondition};
use flotilla_actors::ids::{ProposalId, RangeId, ReplicaId};
use flotilla_actors::messages::Event;
use flotilla_actors::storage::{Engine, RangeStorage, WriteBatch, BOOTSTRAP_INDEX};
use raft::prelude::{Entry, HardState};
use raft::{RawNode, Storage};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const GROUP_COUNTS: [usize; 3] = [1, 100, 1_000];
const ENTRIES_PER_GROUP: u64 = 3;
/// Log entries kept after the untimed compaction between rounds.
const KEEP_ENTRIES: u64 = 16;

/// A temporary data directory with `groups` ranges bootstrapped on this node alone.
struct Fixture {
    _dir: TempDir,
    engine: Arc<Engine>,
    ranges: Vec<RangeId>,
}

/// Frees what sled left of the databases closed so far.
///
/// sled frees the pages of a closed database through crossbeam-epoch: their drops are deferred
/// and run a few at a time inside later pins, by any thread, so without this they land on the
/// next benchmark: `raw_node/1` right after `persist/1000` ran its first rounds at 2 to 8 ms
/// instead of 0.3 ms, with `drop_in_place<sled::node::Data>` under `Engine::sync` in a profile.
/// Pins until a thousand pins cost next to nothing again.
fn settle() {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let start = Instant::now();
        for _ in 0..1_000 {
            sled::pin().flush();
        }
        if start.elapsed() < Duration::from_millis(2) {
            break;
        }
    }
}

impl Fixture {
    fn new(groups: usize) -> Fixture {
        let (dir, engine, ranges) =
            common::bootstrapped(groups, |i| format!("{i:05}").into_bytes());
        Fixture {
            _dir: dir,
            engine,
            ranges,
        }
    }
}

/// The bytes of a SET command on `range` as the Store proposes it, with its proposal context.
fn set_command(range: RangeId, seq: u64) -> (Vec<u8>, Vec<u8>) {
    let command = Command::Set {
        key: format!("{:05}/key:{:06}", range.0 - 1, seq % 10_000).into_bytes(),
        value: vec![b'v'; VALUE_BYTES],
        condition: SetCondition::Always,
    };
    let proposal = ProposalId {
        node: NODE,
        boot: BOOT,
        seq,
    };
    (proposal.to_context(), codec::encode(&command))
}

fn compact_all<'a>(engine: &Engine, storages: impl Iterator<Item = &'a mut RangeStorage>) {
    let mut batch = WriteBatch::default();
    for s in storages {
        let last = s.last_index().expect("last index");
        if last > s.truncated().index + 4 * KEEP_ENTRIES {
            s.stage_compact(last - KEEP_ENTRIES, &mut batch)
                .expect("compact");
        }
    }
    engine.commit(batch).expect("commit");
}

/// Storage alone: stage every group's entries and hard state, one write, one sync.
fn persist(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_round");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for groups in GROUP_COUNTS {
        // Made on first use: criterion calls only the benchmarks its filter selects.
        let mut state: Option<(Fixture, Vec<RangeStorage>)> = None;
        let term = 6;
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(groups as u64));
        group.bench_function(BenchmarkId::new("persist", groups), |b| {
            let (fixture, storages) = state.get_or_insert_with(|| {
                let fixture = Fixture::new(groups);
                let storages = fixture
                    .ranges
                    .iter()
                    .map(|&r| RangeStorage::load(fixture.engine.clone(), r).expect("load"))
                    .collect();
                (fixture, storages)
            });
            let engine = &fixture.engine;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // What the groups' `Ready`s hold: built before the round.
                    let readies: Vec<(Vec<Entry>, HardState)> = storages
                        .iter()
                        .map(|s| {
                            let first = s.last_index().expect("last index") + 1;
                            let entries: Vec<Entry> = (first..first + ENTRIES_PER_GROUP)
                                .map(|index| {
                                    seq += 1;
                                    let (context, data) = set_command(s.range(), seq);
                                    Entry {
                                        index,
                                        term,
                                        context: context.into(),
                                        data: data.into(),
                                        ..Default::default()
                                    }
                                })
                                .collect();
                            let mut hs = s.hard_state().clone();
                            hs.term = term;
                            hs.vote = ReplicaId::new(NODE, 0).0;
                            // A leader's commit index trails its last entry by about a round.
                            hs.commit = first - 1;
                            (entries, hs)
                        })
                        .collect();

                    let start = Instant::now();
                    let mut batch = WriteBatch::default();
                    for (s, (entries, hs)) in storages.iter_mut().zip(&readies) {
                        s.stage_entries(entries, &mut batch);
                        s.stage_hard_state(hs.clone(), &mut batch);
                    }
                    engine.commit(batch).expect("commit");
                    total += start.elapsed();

                    drop(black_box(readies));
                    compact_all(engine, storages.iter_mut());
                }
                total
            })
        });
        drop(state);
        settle();
    }
    group.finish();
}

fn raft_config(id: ReplicaId) -> raft::Config {
    // As `MultiRaft::raft_config` with the default `RaftSettings`.
    raft::Config {
        id: id.0,
        election_tick: 10,
        heartbeat_tick: 2,
        applied: BOOTSTRAP_INDEX,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

/// The committed entries as `hand_over` turns them into events.
fn hand_over(range: RangeId, entries: Vec<Entry>, events: &mut Vec<Event>) {
    for e in entries {
        let command = if e.data.is_empty() {
            None
        } else {
            Some(codec::decode::<Command>(&e.data).expect("a command"))
        };
        events.push(Event::CommandCommitted {
            range,
            index: e.index,
            term: e.term,
            proposal: ProposalId::from_context(&e.context),
            command,
        });
    }
}

/// One round over every group with a `Ready`, in `MultiRaft::run_round`'s order (no messages
/// to send: every group has one voter). Returns the events for the Store.
/// `staged` carries the commit indexes of one round to the next round's write.
fn round(
    nodes: &mut [RawNode<RangeStorage>],
    engine: &Engine,
    staged: &mut WriteBatch,
) -> Vec<Event> {
    let mut batch = std::mem::take(staged);
    let mut must_write = false;
    let mut events = Vec::new();
    let mut readies = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter_mut().enumerate() {
        if !node.has_ready() {
            continue;
        }
        let range = node.store().range();
        let mut rd = node.ready();
        black_box(rd.take_messages());
        hand_over(range, rd.take_committed_entries(), &mut events);
        if !rd.entries().is_empty() {
            node.mut_store().stage_entries(rd.entries(), &mut batch);
            must_write = true;
        }
        if let Some(hs) = rd.hs() {
            let before = node.store().hard_state();
            must_write |= hs.term != before.term || hs.vote != before.vote;
            node.mut_store().stage_hard_state(hs.clone(), &mut batch);
        }
        readies.push((i, rd));
    }
    if must_write {
        engine.commit(batch).expect("commit");
    } else {
        *staged = batch;
    }
    for (i, mut rd) in readies {
        let node = &mut nodes[i];
        let range = node.store().range();
        black_box(rd.take_persisted_messages());
        let mut light = node.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            node.mut_store().stage_commit(commit, staged);
        }
        black_box(light.take_messages());
        hand_over(range, light.take_committed_entries(), &mut events);
    }
    events
}

/// What the Store's `Applied` report makes MultiRaft do: raft may forget what is applied.
fn apply_all(nodes: &mut [RawNode<RangeStorage>]) {
    for node in nodes {
        let committed = node.raft.raft_log.committed;
        node.advance_apply_to(committed);
    }
}

/// `groups` single-voter groups, each elected leader of its range, with the new leaders' empty
/// entries committed and applied.
fn leaders(groups: usize, logger: &slog::Logger) -> (Fixture, Vec<RawNode<RangeStorage>>) {
    let fixture = Fixture::new(groups);
    let engine = &fixture.engine;
    let mut nodes: Vec<RawNode<RangeStorage>> = fixture
        .ranges
        .iter()
        .map(|&r| {
            let storage = RangeStorage::load(engine.clone(), r).expect("load");
            RawNode::new(&raft_config(ReplicaId::new(NODE, 0)), storage, logger).expect("raw node")
        })
        .collect();
    for node in &mut nodes {
        node.campaign().expect("campaign");
    }
    let mut staged = WriteBatch::default();
    while nodes.iter().any(|n| n.has_ready()) {
        round(&mut nodes, engine, &mut staged);
        apply_all(&mut nodes);
    }
    engine.commit(staged).expect("commit");
    assert!(nodes
        .iter()
        .all(|n| n.raft.state == raft::StateRole::Leader));
    (fixture, nodes)
}

/// Real raft-rs groups: ready, persist, advance.
fn raw_node(c: &mut Criterion) {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut group = c.benchmark_group("ready_round");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for groups in GROUP_COUNTS {
        // Made on first use: criterion calls only the benchmarks its filter selects.
        let mut state: Option<(Fixture, Vec<RawNode<RangeStorage>>)> = None;
        let mut seq = 0u64;
        let mut staged = WriteBatch::default();
        group.throughput(Throughput::Elements(groups as u64));
        group.bench_function(BenchmarkId::new("raw_node", groups), |b| {
            let (fixture, nodes) = state.get_or_insert_with(|| leaders(groups, &logger));
            let engine = &fixture.engine;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for node in nodes.iter_mut() {
                        let range = node.store().range();
                        for _ in 0..ENTRIES_PER_GROUP {
                            seq += 1;
                            let (context, data) = set_command(range, seq);
                            node.propose(context, data).expect("propose");
                        }
                    }

                    let start = Instant::now();
                    let events = round(nodes, engine, &mut staged);
                    total += start.elapsed();

                    assert_eq!(events.len(), groups * ENTRIES_PER_GROUP as usize);
                    drop(black_box(events));
                    apply_all(nodes);
                    compact_all(engine, nodes.iter_mut().map(|n| n.mut_store()));
                }
                total
            })
        });
        drop(state);
        settle();
    }
    group.finish();
}

criterion_group!(benches, persist, raw_node);
criterion_main!(benches);
