//! Raft storage and the state machine's data.
//!
//! A node keeps two stores (see the layout in DESIGN.md):
//!
//! - **the raft log** of every range, with its hard state and truncation point, in TiKV's
//!   [`raft_engine`]: an append-only log of all ranges, indexed in memory, that a round writes
//!   in batches of about 32 KiB (`LOG_BATCH_BYTES`) and one `fdatasync`, whatever the number
//!   of ranges in it;
//! - **the state machine** in sled: user data, and with it each range's applied index, conf
//!   state and descriptor, so that applying a batch is one atomic sled batch.
//!
//! [`Engine`] owns both and knows how to make a write durable; [`RangeStorage`] is one range's
//! raft log and state, implementing raft-rs's [`Storage`]; a [`WriteBatch`] is a round's
//! writes to both.
//!
//! # Layout
//!
//! In the raft engine, per range (its raft group id is the range id): the log entries, and
//!
//! | key | value |
//! | --- | --- |
//! | `h` | hard state (protobuf) |
//! | `t` | truncated index and term: the log starts after it |
//!
//! In sled (keys big-endian):
//!
//! | key | value |
//! | --- | --- |
//! | `'r' · range · 'c'` | index of the change that made it, conf state (protobuf) |
//! | `'r' · range · 'a'` | applied state: applied index and term; `0xff` and the range's size (bytes measured, `u64::MAX` if not known, and grown since: [`RangeSize`]); then the last command applied from each proposer (bincode [`Proposers`], left out while empty); older than any record below |
//! | `'r' · range · 'd'` | range descriptor (bincode) |
//! | `'r' · range · 'x'` | tombstone: the replica removed from this node (8 bytes) |
//! | `'r' · range · 'f'` | empty: a `FLUSHDB`'s deletion of the range's keys is under way; written before its first chunk, deleted with the applied state after it (see [`Engine::flushing`]) |
//! | `'r' · range · 'e' · deadline · user key` | empty: the range's index of deadlines (8 bytes, milliseconds since the Unix epoch), which its leader reaps from; an entry may be stale (a plain `SET` replaced the value unread): a reap drops it |
//! | `'k' · user key` | user value, stored as [`crate::value`] says: a tag byte, the deadline if it has one, the bytes |
//! | `n-boot`, `n-values-tagged` | the node's last boot; the mark that every value has its tag (`n-values-tagged-up-to` while they are being given it) |
//! | `'a' · seq` | a record of applied states: for each range, range (8 bytes), length (4 bytes) and its applied state as above (empty: the range was removed) |
//!
//! The leading `'r'`/`'k'`/`'a'` keeps range state, user data and records apart whatever the
//! range id.
//!
//! # Applied states
//!
//! Each sled batch that applies entries writes the applied state of every range it applies to.
//! With thousands of ranges, a batch applies one or two entries to each of hundreds of ranges,
//! and a key per range would double what sled writes. So a batch writes the states as records
//! of up to [`RECORD_STATES`] states, `'a' · seq`, the sequence numbers following the order of
//! the writes. A range's
//! state is the one in the newest record that has it, else its `'r' · range · 'a'` key.
//! [`AppliedLog`] keeps, in memory, which record holds each range's newest state: a record none
//! of whose states is the newest any more is deleted, and once more than [`APPLIED_RECORDS`]
//! are kept, the oldest is retired: the newest states it still holds go to their ranges' keys,
//! in the same batch that deletes it.
//!
//! # Durability and the order of writes
//!
//! A round's raft-engine write ends in `fdatasync` (contract 3). The Store's sled batches are
//! not synced one by one: what they apply is in the raft log, which keeps every entry the
//! durable state machine may not have yet, and on restart raft hands the entries after the
//! stored applied index over again. So:
//!
//! - the log is compacted only after a sled sync, so that the compacted entries' effects are
//!   durable ([`WriteBatch::needs_data_sync`]);
//! - a write to both (a snapshot installed: data, applied index and conf state in sled; log
//!   emptied in the raft engine) syncs sled first. A crash in between leaves an applied index
//!   the log does not reach or contradicts; [`RangeStorage::load`] then restarts the log after
//!   the applied index, as the snapshot would have.
//!
//! sled's `flush()` ends in `sync_file_range`, which does not empty the device's write cache,
//! and large values live in `blobs/` files that sled writes without any sync. [`Engine::sync`]
//! therefore follows `flush()` with `fdatasync` on the `db` file and `fsync` on every blob file
//! not yet synced (and the blob directory), which is what contract 6 needs.

use crate::codec;
use crate::ids::{NodeId, RangeId, ReplicaId};
use protobuf::Message as ProtoMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use raft_engine::env::{DefaultFileSystem as DefaultFs, FileSystem, Handle, Permission, WriteExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// 2026-01-01T00:00:00Z, in seconds since the Unix epoch: the floor of the sequence numbers of
/// range ids counts from it (see [`Engine::new_range_ids`]).
pub const RANGE_SEQ_EPOCH_S: u64 = 1_767_225_600;

/// The log index and term at which every range is bootstrapped. Starting above zero means a
/// replica created empty (index 0) can never be filled from the log alone: it gets a snapshot,
/// which carries the range's data and descriptor. TiKV does the same.
pub const BOOTSTRAP_INDEX: u64 = 5;
pub const BOOTSTRAP_TERM: u64 = 5;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error.
    #[error("storage: sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// The raft engine reported an error.
    #[error("storage: raft log: {0}")]
    Log(#[from] raft_engine::Error),
    /// The data directory was written by a flotilla that kept the raft log in sled.
    #[error("storage: {0} was written by an older flotilla, which kept the raft log in sled; start this version on an empty data directory")]
    OldFormat(String),
    /// The data directory was written by a later flotilla, in a layout this one does not know.
    #[error("storage: {dir} was written by a newer flotilla (data format {found}; this one reads formats up to {FORMAT}); start that version or a later one on it")]
    NewerFormat { dir: String, found: u64 },
    /// Stored bytes could not be decoded: the data directory is damaged.
    #[error("storage: corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

fn corrupt(what: impl Into<String>, detail: impl ToString) -> StorageError {
    StorageError::Corrupt {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// A user key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The keys `[start, end)` (`end` empty: to the end of the key space).
pub type Span = (Vec<u8>, Vec<u8>);

/// Whether the spans `[a_start, a_end)` and `[b_start, b_end)` share a key (an empty end:
/// unbounded).
pub fn overlap(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    let below = |key: &[u8], end: &[u8]| end.is_empty() || key < end;
    below(a_start, b_end) && below(b_start, a_end)
}

/// How many times `range_max_bytes` a measure of a range reads at most (see
/// [`Engine::split_points`]): a range written faster than that a second outgrows its measures.
const MEASURE_READS: u64 = 4;

/// The least key after every key that starts with `prefix`, if there is one.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while next.last() == Some(&u8::MAX) {
        next.pop();
    }
    *next.last_mut()? += 1;
    Some(next)
}

/// The hash tag of `key`, as in Redis Cluster: the key through the first `}` after its first
/// `{`, if the braces hold at least one byte (`user:{42}` of `user:{42}:name`), else `None`.
/// Keys sharing a hash tag sort next to each other (they are the keys that start with it), and
/// no range is ever cut among them: they stay in one range, so one transaction may use them
/// all.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = open + 1 + key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > open + 1).then(|| &key[..=close])
}

/// Why a range may not be cut at `key`, if it falls among the keys of a hash tag (it has one
/// and goes on past it): the error `FLOTILLA SPLIT` and a config's `split_keys` give. Key and
/// tag are shown as `redis-cli` takes them back between double quotes, cut to 128 bytes.
pub fn hash_tag_refusal(key: &[u8]) -> Option<String> {
    let tag = hash_tag(key).filter(|tag| tag.len() < key.len())?;
    let show = |b: &[u8]| {
        let cut = &b[..b.len().min(128)];
        let more = if cut.len() < b.len() { "..." } else { "" };
        format!("\"{}{more}\"", cut.escape_ascii())
    };
    Some(format!(
        "{} falls among the keys of hash tag {}, which stay in one range; cut at the tag \
         instead",
        show(key),
        show(tag)
    ))
}

/// The prefix of `key` that no cut may fall among the keys sharing: its hash tag, or its first
/// `max_key` bytes (a range's bounds are at most that long), whichever is shorter.
fn indivisible(key: &[u8], max_key: usize) -> &[u8] {
    match hash_tag(key) {
        Some(tag) if tag.len() <= max_key => tag,
        _ => &key[..key.len().min(max_key)],
    }
}

/// The shortest prefix of `key` that is after `before` (which must be before `key`): the
/// bytes they share and the first that differs, or one more than all of `before`.
fn separator(before: &[u8], key: &[u8]) -> Vec<u8> {
    let shared = before.iter().zip(key).take_while(|(a, b)| a == b).count();
    key[..(shared + 1).min(key.len())].to_vec()
}

/// What a range covers and who replicates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    pub id: RangeId,
    /// First key of the range (inclusive).
    #[serde(with = "serde_bytes")]
    pub start_key: Vec<u8>,
    /// End of the range (exclusive); empty means "to the end of the key space".
    #[serde(with = "serde_bytes")]
    pub end_key: Vec<u8>,
    /// Replicas that vote.
    pub voters: Vec<ReplicaId>,
    /// Replicas that receive the log without voting (new ones, until they catch up).
    pub learners: Vec<ReplicaId>,
    /// Replicas removed from the range. Their ids are never used again.
    pub removed: Vec<ReplicaId>,
}

impl RangeDescriptor {
    /// The replica `node` holds, voter or learner.
    pub fn replica_of(&self, node: NodeId) -> Option<ReplicaId> {
        self.voters
            .iter()
            .chain(&self.learners)
            .copied()
            .find(|r| r.node() == node)
    }

    /// The id a new replica on `node` gets: one generation past any it held before.
    pub fn next_replica_for(&self, node: NodeId) -> ReplicaId {
        let generation = self
            .removed
            .iter()
            .filter(|r| r.node() == node)
            .map(|r| r.generation() + 1)
            .max()
            .unwrap_or(0);
        ReplicaId::new(node, generation)
    }

    /// Whether `key` falls inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }
}

/// A position in a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

impl LogPosition {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.index.to_be_bytes());
        out[8..].copy_from_slice(&self.term.to_be_bytes());
        out
    }

    fn decode(what: &str, bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != 16 {
            return Err(corrupt(what, format!("{} bytes, expected 16", bytes.len())));
        }
        let mut i = [0u8; 8];
        let mut t = [0u8; 8];
        i.copy_from_slice(&bytes[..8]);
        t.copy_from_slice(&bytes[8..]);
        Ok(LogPosition {
            index: u64::from_be_bytes(i),
            term: u64::from_be_bytes(t),
        })
    }
}

/// Builders of the keys in the layout above.
pub mod keys {
    use crate::ids::RangeId;

    /// In the raft engine: a range's hard state.
    pub const HARD_STATE: &[u8] = b"h";
    /// In the raft engine: a range's truncated index and term.
    pub const TRUNCATED: &[u8] = b"t";

    pub const CONF_STATE: u8 = b'c';
    pub const APPLIED: u8 = b'a';
    pub const DESCRIPTOR: u8 = b'd';
    pub const TOMBSTONE: u8 = b'x';
    /// `'r' · range · 'f'` (empty value): the writer is deleting the keys of a `FLUSHDB` of the
    /// range, and sled holds part of them with the applied index from before it.
    pub const FLUSHING: u8 = b'f';
    /// `'r' · range · 'e' · deadline · user key` (empty value): the range's index of
    /// deadlines, which its leader reaps from (see `Command::Reap`).
    pub const EXPIRING: u8 = b'e';

    /// `'r' · range`: the prefix of every key of a range's state.
    pub fn range_prefix(range: RangeId) -> Vec<u8> {
        let mut k = Vec::with_capacity(9);
        k.push(b'r');
        k.extend_from_slice(&range.0.to_be_bytes());
        k
    }

    /// `'r' · range · kind`.
    pub fn range_key(range: RangeId, kind: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(18);
        k.push(b'r');
        k.extend_from_slice(&range.0.to_be_bytes());
        k.push(kind);
        k
    }

    /// The bounds of a range's index of deadlines: `[range_key(EXPIRING), range_key(EXPIRING + 1))`.
    pub fn deadlines(range: RangeId) -> (Vec<u8>, Vec<u8>) {
        (range_key(range, EXPIRING), range_key(range, EXPIRING + 1))
    }

    /// The entry of `key`'s `deadline` in its range's index of deadlines.
    pub fn expiry_key(range: RangeId, deadline: u64, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(18 + key.len());
        k.extend_from_slice(&range_key(range, EXPIRING));
        k.extend_from_slice(&deadline.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// The data format the directory was last opened with (8 bytes; see [`super::FORMAT`]).
    pub const FORMAT: &[u8] = b"n-format";

    /// Marks a node whose stored values all have their tag (see `crate::value`).
    pub const VALUES_TAGGED: &[u8] = b"n-values-tagged";
    /// The last user key given its tag, while values are being tagged.
    pub const TAGGED_UP_TO: &[u8] = b"n-values-tagged-up-to";

    /// The node's last boot (8 bytes).
    pub const BOOT: &[u8] = b"n-boot";

    /// The last sequence number of a range id this node gave a split (see
    /// [`super::Engine::new_range_ids`]; 8 bytes).
    pub const RANGE_SEQ: &[u8] = b"n-range-seq";

    /// The prefix of the records of destroyed replicas' user keys still to delete.
    pub const PURGES: &[u8] = b"n-purge-";

    /// `n-purge-` · range: the span of a destroyed replica whose user keys are still to be
    /// deleted (see [`super::Engine::purge`]).
    pub fn purge(range: RangeId) -> Vec<u8> {
        let mut k = PURGES.to_vec();
        k.extend_from_slice(&range.0.to_be_bytes());
        k
    }

    /// The prefix of the records of applied states.
    pub const RECORDS: &[u8] = b"a";

    /// `'a' · seq`: a record of applied states.
    pub fn record(seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(9);
        k.extend_from_slice(RECORDS);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// `'k' · user key`.
    pub fn user_key(key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(b'k');
        k.extend_from_slice(key);
        k
    }

    /// The stored keys of the user keys in `[start, end)` (`end` empty: unbounded).
    pub fn user_span(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let lo = user_key(start);
        let hi = if end.is_empty() {
            vec![b'k' + 1]
        } else {
            user_key(end)
        };
        (lo, hi)
    }
}

/// The version of the data directory's layout this build reads and writes, stored in it
/// (`keys::FORMAT`). A build opening a directory of an older layout brings it up to date as it
/// opens it (as `tag_values` does); one finding a newer layout refuses to start on it, rather
/// than misread or damage what it does not know: a node downgraded past a change of layout.
/// Raised with every change of layout an older build would misread; directories written
/// before it was kept hold none and read as 0.
///
/// 1: the format is recorded. 2: a `FLUSHDB`'s deletion is recorded while under way
/// ([`keys::FLUSHING`]); a build of format 1 would leave the record behind, and the range
/// would then be taken as torn for ever. 3: an applied state holds the range's size
/// ([`RangeSize`]), which a build of format 2 would take for corrupt proposers; a state of
/// format 2 reads as one of a size not measured.
pub const FORMAT: u64 = 3;

/// User keys a purge deletes in one sled batch (see [`Engine::purge`]): about 50 ms of sled's
/// work here.
pub const PURGE_CHUNK: usize = 10_000;

/// A node's sled database and how to make writes to it durable.
pub struct Engine {
    /// The boot this open of the engine took.
    boot: u64,
    /// The raft log of every range, with hard states and truncation points.
    log: raft_engine::Engine<LogFiles>,
    db: sled::Db,
    tree: sled::Tree,
    db_file: File,
    blob_dir: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
    /// `false` for simulations, whose crashes stop a node's actors (sled writes everything out
    /// when the database is dropped): `sync` then does nothing.
    durable: bool,
    /// Odd while [`Engine::commit`] applies a round's sled part (a snapshot's data, conf
    /// states), one more when it is done: see [`Engine::data_writes`].
    data_writes: AtomicU64,
    /// Held while a write with applied states is recorded and applied, so that records are
    /// applied in the order of their sequence numbers.
    applied: Mutex<AppliedLog>,
    /// Log entries read back from raft-engine's files (see [`Engine::entries_read`]).
    entries_read: AtomicU64,
    /// What the ranges' entry caches hold (see [`Engine::entries_cached`]).
    entries_cached: CachedEntries,
    /// Held while a round's raft log batches are written and synced (see
    /// [`Engine::purge_log`]).
    log_writes: Mutex<()>,
    /// Set while a purge of the raft log's files runs: a round then syncs each of its batches.
    purging: AtomicBool,
    /// The state machine's data as of the last `sync` (volatile engines only).
    synced_data: Arc<SyncedData>,
}

/// A simulated node's sled data as of its engine's last [`Engine::sync`]: all that a power
/// failure is sure to leave of it, for the simulation to go back to.
///
/// A simulated crash stops a node's actors, and sled writes out everything when its database
/// is dropped: without this, a simulated node never lost a sled write. A real one loses those
/// since its last sync in a power failure (sled writes in the background too, so it may lose
/// fewer), and flotilla counts on that being safe: the raft log keeps every entry the durable
/// state machine may lack, and raft hands them over again.
#[derive(Default)]
pub struct SyncedData(Mutex<Vec<(sled::IVec, sled::IVec)>>);

impl SyncedData {
    /// Replaces the sled data in `dir`, whose engine must be closed, with this.
    pub fn restore(&self, dir: &Path) -> Result<(), StorageError> {
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let tree = db.open_tree(TREE)?;
        tree.clear()?;
        let mut batch = sled::Batch::default();
        for (k, v) in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            batch.insert(k, v);
        }
        tree.apply_batch(batch)?;
        db.flush()?;
        Ok(())
    }
}

/// The sled tree of a node's data.
const TREE: &str = "flotilla";

/// An entry of a range's index of deadlines: a deadline and the user key that has it.
pub type Deadline = (u64, Vec<u8>);

/// What [`Engine::expired`] found in a range's index of deadlines.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired {
    /// The entries past their time, earliest first.
    pub entries: Vec<Deadline>,
    /// More entries past their time wait beyond these.
    pub full: bool,
    /// The index has an entry, past its time or not.
    pub any: bool,
}

/// The keys of the ranges' own state (`'r' · range · kind`: ten bytes) with their values, in
/// order. Each range's index of deadlines, under the same prefix and as large as the number of
/// deadlines, is stepped over rather than read through.
fn range_states(tree: &sled::Tree) -> Result<Vec<(sled::IVec, sled::IVec)>, StorageError> {
    let end = Bound::Excluded(vec![b'r' + 1]);
    let mut items = tree.range((Bound::Included(vec![b'r']), end.clone()));
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        let (k, v) = item?;
        if k.len() > 10 && k[9] == keys::EXPIRING {
            let mut after = k[..9].to_vec();
            after.push(keys::EXPIRING + 1);
            items = tree.range((Bound::Included(after), end.clone()));
        } else if k.len() == 10 {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Values given their tag per batch by [`tag_values`], and the most bytes of them per batch.
const TAG_BATCH: usize = 10_000;
const TAG_BATCH_BYTES: usize = 64 << 20;

/// Gives every stored value its tag (see [`crate::value`]), once: nodes before key expiry
/// stored a value's bytes alone. In batches, each with the last key it tagged, so that one
/// stopped midway goes on from there; the mark that all are tagged comes last (sled recovers
/// a prefix of its writes, so any write after it implies it).
fn tag_values(tree: &sled::Tree) -> Result<(), StorageError> {
    if tree.contains_key(keys::VALUES_TAGGED)? {
        return Ok(());
    }
    let end = Bound::Excluded(vec![b'k' + 1]);
    let mut from = match tree.get(keys::TAGGED_UP_TO)? {
        Some(k) => Bound::Excluded(k.to_vec()),
        None => Bound::Included(vec![b'k']),
    };
    let mut tagged = 0;
    loop {
        let mut batch = sled::Batch::default();
        let (mut last, mut bytes) = (None, 0);
        for item in tree.range((from.clone(), end.clone())).take(TAG_BATCH) {
            if bytes >= TAG_BATCH_BYTES {
                break;
            }
            let (k, v) = item?;
            bytes += k.len() + v.len();
            batch.insert(k.clone(), crate::value::stored(&v, None));
            last = Some(k);
            tagged += 1;
        }
        let Some(last) = last else {
            batch.insert(keys::VALUES_TAGGED, b"".as_slice());
            batch.remove(keys::TAGGED_UP_TO);
            tree.apply_batch(batch)?;
            break;
        };
        batch.insert(keys::TAGGED_UP_TO, last.as_ref());
        tree.apply_batch(batch)?;
        from = Bound::Excluded(last.to_vec());
    }
    if tagged > 0 {
        log::info!("storage: stored {tagged} values in the format that keeps deadlines");
    }
    Ok(())
}

/// Entries held in the ranges' entry caches, and their bytes: on a cache line of their own,
/// updated with every round.
#[derive(Default)]
#[repr(align(64))]
struct CachedEntries {
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("blob_dir", &self.blob_dir)
            .finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Arc<Engine>, StorageError> {
        Engine::open_with(dir, cache_bytes, true, LOG_SIZES)
    }

    /// Opens the database for a simulation: `sync` does nothing (see `durable`).
    pub fn open_volatile(dir: &Path, cache_bytes: u64) -> Result<Arc<Engine>, StorageError> {
        Engine::open_with(dir, cache_bytes, false, LOG_SIZES)
    }

    fn open_with(
        dir: &Path,
        cache_bytes: u64,
        durable: bool,
        log_sizes: LogSizes,
    ) -> Result<Arc<Engine>, StorageError> {
        std::fs::create_dir_all(dir)?;
        let mut config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
        if !durable {
            // Nor does sled's own flusher thread write in the background.
            config = config.flush_every_ms(None);
        }
        let db = config.open()?;
        let tree = db.open_tree(TREE)?;
        // `'r' · range · 'h'`: a hard state where older versions kept it.
        if range_states(&tree)?.iter().any(|(k, _)| k[9] == b'h') {
            return Err(StorageError::OldFormat(dir.display().to_string()));
        }
        let found = match tree.get(keys::FORMAT)? {
            None => 0,
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("data format", format!("{v:?}")))?,
            ),
        };
        if found > FORMAT {
            let dir = dir.display().to_string();
            return Err(StorageError::NewerFormat { dir, found });
        }
        tag_values(&tree)?;
        if found < FORMAT {
            // Synced with the boot below.
            tree.insert(keys::FORMAT, &FORMAT.to_be_bytes())?;
        }
        let applied = AppliedLog::recover(&tree)?;
        let db_file = File::open(dir.join("db"))?;
        let log_dir = dir.join("raft");
        number_log_files(&log_dir)?;
        let log = raft_engine::Engine::open_with_file_system(
            raft_engine::Config {
                dir: log_dir.to_string_lossy().into_owned(),
                // Entries are small and written once a round: compressing them costs more CPU
                // than the bytes it saves.
                batch_compression_threshold: raft_engine::ReadableSize(0),
                target_file_size: raft_engine::ReadableSize(log_sizes.file),
                purge_threshold: raft_engine::ReadableSize(log_sizes.purge),
                recovery_threads: 2,
                ..Default::default()
            },
            Arc::new(LogFiles { durable }),
        )?;
        let mut engine = Engine {
            boot: 0,
            log,
            db,
            tree,
            db_file,
            blob_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            durable,
            data_writes: AtomicU64::new(0),
            applied: Mutex::new(applied),
            entries_read: AtomicU64::new(0),
            entries_cached: CachedEntries::default(),
            log_writes: Mutex::new(()),
            purging: AtomicBool::new(false),
            synced_data: Arc::default(),
        };
        engine.cut_torn_round()?;
        // Durable, with the files sled just created.
        engine.boot = engine.raise_boot(0)?;
        if let Ok(d) = File::open(dir) {
            d.sync_all()?;
        }
        Ok(Arc::new(engine))
    }

    /// Cuts back each range whose newest log entries cannot be read, and returns them: what a
    /// power failure leaves of the round it interrupted. A round's batches are written in
    /// order and synced once, with the last (see `write_log`), so any of them may be torn.
    /// raft-engine's recovery drops a batch whose index part is torn, and everything after it;
    /// but it checks the entries of only the last batch of each file, so a batch whose entries
    /// alone are torn, followed by whole ones, is kept, and reading its entries fails.
    ///
    /// Those entries are the range's newest (a round writes a range's entries in one batch,
    /// after every older one), and nothing depended on them: raft applies only entries
    /// persisted, and this node acknowledged them to no leader and answered no client for
    /// them, all of which waits for the round's sync. Where they replaced a conflicting
    /// suffix, the entries they replaced go too: those were never committed (committed
    /// entries never conflict), so no leader needs them. The range's log is cut after its last
    /// readable entry, and its hard state commits no further, as if the round had not reached
    /// it.
    ///
    /// Like raft-engine's own check of a file's last batch, this cannot tell a torn write from
    /// damage the device did to a synced batch, except for entries the state machine applied,
    /// which were synced before: an unreadable one is refused as corrupt. (raft-engine's purge
    /// rewrites old entries with the same group commit; a tear there would leave entries
    /// unreadable in the middle of a log, which this does not look for.)
    fn cut_torn_round(&self) -> Result<Vec<RangeId>, StorageError> {
        let readable = |id: u64, index: u64| match self.log.get_entry::<EntryLog>(id, index) {
            Ok(_) => Ok(true),
            Err(raft_engine::Error::Corruption(_)) => Ok(false),
            Err(e) => Err(StorageError::Log(e)),
        };
        let mut batch = raft_engine::LogBatch::default();
        let mut cut = Vec::new();
        for id in self.log.raft_groups() {
            let (Some(first), Some(last)) = (self.log.first_index(id), self.log.last_index(id))
            else {
                continue;
            };
            if readable(id, last)? {
                continue;
            }
            // Every entry before the interrupted round was synced: the readable ones are a
            // prefix, which ends at `kept`.
            let (mut kept, mut lost) = (first - 1, last);
            while lost - kept > 1 {
                let mid = kept + (lost - kept) / 2;
                if readable(id, mid)? {
                    kept = mid;
                } else {
                    lost = mid;
                }
            }
            let range = RangeId(id);
            let applied = self.applied(range)?.index;
            if lost <= applied {
                return Err(corrupt(
                    format!("raft log of {range}"),
                    format!("entry {lost}, applied (at {applied}) and so synced, cannot be read"),
                ));
            }
            if kept >= first {
                // Appending an entry again drops every one after it.
                let entry = self.log.get_entry::<EntryLog>(id, kept)?;
                batch.add_entries::<EntryLog>(id, entry.as_slice())?;
            } else {
                batch.add_command(id, raft_engine::Command::Compact { index: last + 1 });
            }
            if let Some(mut hs) = self.log.get_message::<HardState>(id, keys::HARD_STATE)? {
                if hs.commit > kept {
                    hs.commit = kept;
                    batch.put_message(id, keys::HARD_STATE.to_vec(), &hs)?;
                }
            }
            log::warn!(
                "storage: {range}: log entries {lost}-{last} were torn by a crash before they \
                 were synced: the log now ends at {kept}"
            );
            cut.push(range);
        }
        self.write_log(vec![batch])?;
        Ok(cut)
    }

    /// How many log entries were read back from the raft log's files, not served from the
    /// ranges' entry caches (`INFO`: `raft_log_entries_read`). Each costs a read of the whole
    /// batch it was written in (raft-engine keeps one such batch in memory per thread): over
    /// thousands of ranges, one entry of a range each.
    pub fn entries_read(&self) -> u64 {
        self.entries_read.load(Ordering::Relaxed)
    }

    /// The log entries the ranges' entry caches hold in memory, and their bytes (the entries'
    /// data and contexts, and the caches' room for entries): `INFO`'s `raft_entries_cached`
    /// and `raft_entry_cache_bytes`.
    pub fn entries_cached(&self) -> (u64, u64) {
        let c = &self.entries_cached;
        (
            c.entries.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
        )
    }

    /// The sled data as of this engine's last `sync`, for a simulated power failure (see
    /// [`SyncedData`]). Empty for an engine opened durable.
    pub fn synced_data(&self) -> Arc<SyncedData> {
        self.synced_data.clone()
    }

    /// The sled tree holding the state machine.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Applies a sled batch with applied states atomically (visible at once, durable after
    /// [`Engine::sync`]).
    pub fn write(&self, mut batch: sled::Batch, states: AppliedStates) -> Result<(), StorageError> {
        if states.0.is_empty() {
            self.tree.apply_batch(batch)?;
        } else {
            let mut log = self.applied.lock().expect("applied log");
            log.record(states, &mut batch);
            if let Err(e) = self.tree.apply_batch(batch) {
                // The records kept in memory no longer match sled's. Both writers stop their
                // node on a storage error; this stops the other one's writes too (the lock is
                // poisoned), before any retires a record that was never written.
                panic!("storage: writing applied states failed: {e}");
            }
        }
        Ok(())
    }

    /// Writes a round's batch and makes it durable: its sled part first, synced (as is every
    /// sled write before it) if it has one or compacts the log, then its raft log part, with
    /// one `fdatasync` (see "Durability and the order of writes").
    pub fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let sync_data = batch.needs_data_sync();
        let WriteBatch {
            data,
            applied,
            has_data,
            logs,
            log,
            ..
        } = batch;
        if has_data {
            self.data_writes.fetch_add(1, Ordering::SeqCst);
            let written = self.write(data, applied);
            self.data_writes.fetch_add(1, Ordering::SeqCst);
            written?;
        }
        if sync_data {
            self.sync()?;
        }
        self.write_log(logs.into_iter().chain([log]).collect())
    }

    /// Writes a round's raft log batches in order, syncing once, with the last. raft-engine
    /// indexes each batch as soon as it is written, synced or not, and a purge deletes the
    /// files its index no longer needs: a purge running meanwhile could delete the last
    /// durable copy of what an unsynced batch replaces (a hard state, a range's log before a
    /// snapshot), which a power failure would then leave the node without. So the batches
    /// are written under `log_writes`, and while a purge runs (`purging`) each is synced.
    fn write_log(&self, mut logs: Vec<raft_engine::LogBatch>) -> Result<(), StorageError> {
        logs.retain(|log| !log.is_empty());
        let Some((last, before)) = logs.split_last_mut() else {
            return Ok(());
        };
        let _writing = self
            .log_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sync_each = self.durable && self.purging.load(Ordering::SeqCst);
        for log in before {
            self.log.write(log, sync_each)?;
        }
        self.log.write(last, self.durable)?;
        Ok(())
    }

    /// How many times a round's sled part was applied, twice over, odd while one is: the Store,
    /// whose reads do not wait for the event that tells it of a snapshot, sees with it whether
    /// user data changed under it while it read (a seqlock; see `Store::values`).
    pub fn data_writes(&self) -> u64 {
        self.data_writes.load(Ordering::SeqCst)
    }

    /// Deletes everything the raft log holds of a range, durably, after making every sled
    /// write so far durable (the Store's deletion of the range's data and its tombstone, which
    /// must not come back without the log).
    pub fn clean_log(&self, range: RangeId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.clean_log(range);
        batch.data_sync = true;
        self.commit(batch)
    }

    /// Deletes what the raft log holds of a range but its term and vote, which a new replica
    /// of it here keeps: a replica here, of an earlier generation or an empty one made by
    /// messages before a restart, may have voted in that term, and raft must not vote twice.
    pub fn clean_log_keeping_vote(&self, range: RangeId) -> Result<(), StorageError> {
        let hs: HardState = self
            .log
            .get_message(range.0, keys::HARD_STATE)?
            .unwrap_or_default();
        let mut batch = WriteBatch::default();
        batch.clean_log(range);
        let kept = HardState {
            term: hs.term,
            vote: hs.vote,
            commit: 0,
            ..Default::default()
        };
        batch.put_hard_state(range, &kept);
        batch.data_sync = true;
        self.commit(batch)
    }

    /// Whether the raft log holds anything of a range.
    pub fn has_log(&self, range: RangeId) -> bool {
        self.log.get(range.0, keys::HARD_STATE).is_some() || self.log.first_index(range.0).is_some()
    }

    /// Deletes the raft log's files that no range needs any more, rewriting what little old
    /// files still hold; returns the ranges whose log is too long to rewrite and should be
    /// compacted instead.
    pub fn purge_log(&self) -> Result<Vec<RangeId>, StorageError> {
        // Rounds from now on sync each of their batches (see `write_log`); once the round
        // being written, if any, is synced, nothing the purge sees is unsynced.
        self.purging.store(true, Ordering::SeqCst);
        drop(
            self.log_writes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let purged = self.log.purge_expired_files();
        self.purging.store(false, Ordering::SeqCst);
        Ok(purged?.into_iter().map(RangeId).collect())
    }

    /// The truncated position of a range's log (zero when it has none).
    fn truncated(&self, range: RangeId) -> Result<LogPosition, StorageError> {
        match self.log.get(range.0, keys::TRUNCATED) {
            Some(v) => LogPosition::decode("truncated state", &v),
            None => Ok(LogPosition::default()),
        }
    }

    /// Makes every sled write so far durable on the device.
    pub fn sync(&self) -> Result<(), StorageError> {
        if !self.durable {
            // A simulated crash stops the node's actors, and sled writes everything out when
            // the database is dropped then; a simulated power failure goes back to this.
            let data = self.tree.iter().collect::<Result<_, _>>()?;
            *self
                .synced_data
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = data;
            return Ok(());
        }
        self.db.flush()?;
        self.db_file.sync_data()?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&self) -> Result<(), StorageError> {
        let entries = match std::fs::read_dir(&self.blob_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = self.synced_blobs.lock().expect("blob set poisoned");
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // sled removes blobs it no longer needs: nothing to sync then.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    /// The boot of the process that opened the engine (see [`Engine::raise_boot`]).
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// A new boot of this node, stored durably: above the last one, above the clock in
    /// microseconds (so a node whose data directory was wiped still starts above the boots its
    /// old proposals were made under), and at least `at_least`. Each open of the engine takes
    /// one.
    pub fn raise_boot(&self, at_least: u64) -> Result<u64, StorageError> {
        let last = self.stored_u64(keys::BOOT, "boot")?.unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let boot = last.saturating_add(1).max(now).max(at_least);
        self.tree.insert(keys::BOOT, &boot.to_be_bytes())?;
        self.sync()?;
        Ok(boot)
    }

    /// `n` range ids no other range of the cluster has, for the right halves of splits proposed
    /// from this node ([`RangeId::of_split`]): their sequence numbers are stored durably before
    /// they are used (one sync for all), so that no crash hands them out twice, and are never
    /// below the seconds since [`RANGE_SEQ_EPOCH_S`], so that a node whose data directory was
    /// wiped does not hand out again the ids it gave before (unless it gave them faster than one
    /// a second for longer than it was away), as its boots do (see [`Engine::raise_boot`]).
    /// `now_ms` is the node's clock (a simulation's runs from its own epoch).
    pub fn new_range_ids(
        &self,
        node: NodeId,
        now_ms: u64,
        n: u64,
    ) -> Result<Vec<RangeId>, StorageError> {
        let last = self
            .stored_u64(keys::RANGE_SEQ, "range sequence")?
            .unwrap_or(0);
        let since = (now_ms / 1000).saturating_sub(RANGE_SEQ_EPOCH_S);
        let first = (last + 1).max(since);
        let end = first + n;
        if end - 1 > crate::ids::MAX_NODE_ID {
            return Err(corrupt(
                "range sequence",
                "every range id of this node is used",
            ));
        }
        self.tree
            .insert(keys::RANGE_SEQ, &(end - 1).to_be_bytes())?;
        self.sync()?;
        Ok((first..end)
            .map(|seq| RangeId::of_split(node, seq))
            .collect())
    }

    /// Stages the state a range born of a split starts with, in the left range's batch: its
    /// descriptor, conf state and applied state at [`BOOTSTRAP_INDEX`], as a bootstrapped
    /// range's (but of a size not measured: see [`RangeSize`]); raft's hard state and truncated index follow from them when its group is
    /// opened (`RangeStorage::load`), keeping the term and vote of a replica of it that was
    /// already here, empty. The left range's index of deadlines moves its entries of the
    /// right range's keys over, and the descriptors are both written.
    pub fn stage_split(
        &self,
        left: &RangeDescriptor,
        right: &RangeDescriptor,
        proposers: &Proposers,
        batch: &mut sled::Batch,
        states: &mut AppliedStates,
    ) -> Result<(), StorageError> {
        let cs = ConfState::from((
            right.voters.iter().map(|r| r.0),
            right.learners.iter().map(|r| r.0),
        ));
        batch.insert(
            keys::range_key(right.id, keys::CONF_STATE),
            conf_state_value(BOOTSTRAP_INDEX, &cs),
        );
        let start = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        states.put(right.id, start, proposers, RangeSize::default());
        self.move_deadlines(left.id, right, batch)?;
        put_descriptor(batch, left);
        put_descriptor(batch, right);
        Ok(())
    }

    /// Moves the entries of `from`'s index of deadlines whose keys `to` covers to `to`'s.
    fn move_deadlines(
        &self,
        from: RangeId,
        to: &RangeDescriptor,
        batch: &mut sled::Batch,
    ) -> Result<(), StorageError> {
        let (lo, hi) = keys::deadlines(from);
        let prefix = lo.len();
        for k in self.tree.range(lo.as_slice()..hi.as_slice()).keys() {
            let k = k?;
            let Some((deadline, key)) = k.get(prefix..).filter(|r| r.len() >= 8).map(|r| {
                let (d, key) = r.split_at(8);
                (u64::from_be_bytes(d.try_into().expect("8 bytes")), key)
            }) else {
                return Err(corrupt("index of deadlines", format!("{k:?}")));
            };
            if to.contains(key) {
                batch.remove(k.as_ref());
                batch.insert(keys::expiry_key(to.id, deadline, key), b"".as_slice());
            }
        }
        Ok(())
    }

    /// Stages what a split does where the right range's replica of this node was removed
    /// before this node applied the split: no state of it, and its keys deleted as a
    /// destroyed replica's are (see [`Engine::stage_destroy`]; `purge` follows).
    pub fn stage_split_away(
        &self,
        left: &RangeDescriptor,
        right: &RangeDescriptor,
        batch: &mut sled::Batch,
    ) -> Result<(), StorageError> {
        self.move_deadlines(left.id, right, batch)?;
        put_descriptor(batch, left);
        batch.insert(
            keys::purge(right.id),
            codec::encode(&(right.start_key.as_slice(), right.end_key.as_slice())),
        );
        Ok(())
    }

    /// The span of the keys a destroyed replica's purge has yet to delete.
    pub fn purge_span(&self, range: RangeId) -> Result<Option<Span>, StorageError> {
        match self.tree.get(keys::purge(range))? {
            Some(record) => {
                Ok(Some(codec::decode(&record).map_err(|e| {
                    corrupt(format!("purge record of {range}"), e)
                })?))
            }
            None => Ok(None),
        }
    }

    /// A user key's stored value (its tag and deadline first: see [`crate::value`]).
    pub fn get_user(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree.get(keys::user_key(key))?.map(|v| v.to_vec()))
    }

    /// Counts the user keys of `ranges`, and those of them with a deadline (those past it
    /// included, until they are reaped).
    pub fn count_user_keys(
        &self,
        ranges: &[RangeDescriptor],
    ) -> Result<(usize, usize), StorageError> {
        let (mut keys, mut expiring) = (0, 0);
        for d in ranges {
            let (lo, hi) = keys::user_span(&d.start_key, &d.end_key);
            for pair in self.tree.range(lo..hi) {
                keys += 1;
                expiring += crate::value::deadline(&pair?.1).is_some() as usize;
            }
        }
        Ok((keys, expiring))
    }

    /// Every user key and stored value in `[start, end)`.
    pub fn user_pairs(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, StorageError> {
        let (lo, hi) = keys::user_span(start, end);
        let mut out = Vec::new();
        for item in self.tree.range(lo..hi) {
            let (k, v) = item?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Where to cut the user keys in `[start, end)` if they and their stored values take more
    /// than `max_bytes`, and the bytes read to tell, in all and before the first cut. Each
    /// piece takes at least half of `max_bytes` (but the one before a key of that size, which
    /// starts a piece of its own); a cut is the shortest key that still falls after the key
    /// before it (between `key:000000499999` and `key:000000500000`, `key:0000005`), of at most
    /// `max_key` bytes. No cut can fall among keys sharing a hash tag ([`hash_tag`]) or their
    /// first `max_key` bytes: where one is due among such keys, they are passed over unread
    /// (and uncounted), to the first key after them. Reads no more than [`MEASURE_READS`]
    /// times `max_bytes` (and one key): a range of gigabytes costs no more to look at than one
    /// a few times the bound, and what lies past the last cut of a range not read to its end
    /// may be cut when that piece is measured.
    pub fn split_points(
        &self,
        start: &[u8],
        end: &[u8],
        max_bytes: u64,
        max_key: usize,
    ) -> Result<Measure, StorageError> {
        let (lo, hi) = keys::user_span(start, end);
        let (half, budget) = (max_bytes / 2, max_bytes.saturating_mul(MEASURE_READS));
        let (mut bytes, mut piece, mut cuts) = (0u64, 0u64, Vec::new());
        // The bytes read before each cut.
        let mut before_cuts = Vec::new();
        // Whether the piece before the last cut is one key of half the bound or more.
        let (mut keys_in_piece, mut one_large_before) = (0, false);
        let mut before = None::<sled::IVec>;
        let mut items = self.tree.range(lo..hi.clone());
        let whole = loop {
            if bytes >= budget {
                break false;
            }
            let Some(item) = items.next() else {
                break true;
            };
            let (k, v) = item?;
            let size = (k.len() - 1 + v.len()) as u64;
            if let Some(b) = before.as_ref().filter(|_| piece >= half || size >= half) {
                let group = indivisible(&k[1..], max_key);
                if !b[1..].starts_with(group) {
                    // The separator is a prefix of `group`, so parts no keys sharing a prefix
                    // that may not be parted.
                    cuts.push(separator(&b[1..], &k[1..]));
                    before_cuts.push(bytes);
                    one_large_before = keys_in_piece == 1 && piece >= half;
                    (piece, keys_in_piece) = (0, 0);
                } else {
                    // `k` and the key before share a hash tag or their first `max_key` bytes,
                    // as may the keys after it: on to the first that does not (its cut is
                    // then due).
                    let Some(past) = successor(group) else {
                        break true;
                    };
                    items = self.tree.range(keys::user_key(&past)..hi.clone());
                }
            }
            (bytes, piece, keys_in_piece) = (bytes + size, piece + size, keys_in_piece + 1);
            before = Some(k);
        };
        if whole {
            if bytes <= max_bytes {
                cuts.clear();
            } else if piece < half && !one_large_before {
                // The last piece would be small: it goes with the one before it.
                cuts.pop();
            }
        }
        let first = before_cuts.first().filter(|_| !cuts.is_empty());
        Ok(Measure {
            first: first.copied().unwrap_or(bytes),
            bytes,
            cuts,
        })
    }

    /// The entries of a range's index of deadlines that are past at `now`, earliest first, up
    /// to `max` of them and as many as make `max_bytes` of index keys (at least one).
    pub fn expired(
        &self,
        range: RangeId,
        now: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Expired, StorageError> {
        let lo = keys::range_key(range, keys::EXPIRING);
        let mut hi = lo.clone();
        hi.extend_from_slice(&now.to_be_bytes());
        let (mut out, mut bytes, mut full) = (Vec::new(), 0, false);
        for item in self.tree.range(lo.as_slice()..hi.as_slice()).keys() {
            if out.len() >= max || bytes >= max_bytes {
                full = true;
                break;
            }
            let k = item?;
            bytes += k.len();
            let deadline = k
                .get(lo.len()..lo.len() + 8)
                .ok_or_else(|| corrupt("index of deadlines", format!("{} bytes", k.len())))?;
            let deadline = u64::from_be_bytes(deadline.try_into().expect("8 bytes"));
            out.push((deadline, k[lo.len() + 8..].to_vec()));
        }
        let any = !out.is_empty() || self.tree.scan_prefix(&lo).next().transpose()?.is_some();
        Ok(Expired {
            entries: out,
            full,
            any,
        })
    }

    /// The descriptors of every range that has one stored here.
    pub fn descriptors(&self) -> Result<Vec<RangeDescriptor>, StorageError> {
        let mut out = Vec::new();
        for (k, v) in range_states(&self.tree)? {
            if k[9] == keys::DESCRIPTOR {
                out.push(
                    codec::decode::<RangeDescriptor>(&v)
                        .map_err(|e| corrupt("range descriptor", e))?,
                );
            }
        }
        Ok(out)
    }

    /// The ranges whose keys a `FLUSHDB` was deleting when the node stopped (see
    /// [`keys::FLUSHING`]): their data in sled is not that of their applied index (some keys
    /// deleted, some not) until the node applies that `FLUSHDB` again.
    pub fn flushing(&self) -> Result<BTreeSet<RangeId>, StorageError> {
        let mut out = BTreeSet::new();
        for (k, _) in range_states(&self.tree)? {
            if k[9] == keys::FLUSHING {
                let range: [u8; 8] = k[1..9].try_into().expect("8 bytes");
                out.insert(RangeId(u64::from_be_bytes(range)));
            }
        }
        Ok(out)
    }

    /// Records that a `FLUSHDB`'s deletion of `range`'s keys begins (see [`Engine::flushing`]);
    /// the batch that writes the range's applied state after it deletes the record. sled
    /// recovers a prefix of its writes, so any deletion after it implies it.
    pub fn begin_flush(&self, range: RangeId) -> Result<(), StorageError> {
        self.tree
            .insert(keys::range_key(range, keys::FLUSHING), b"".as_slice())?;
        Ok(())
    }

    /// The descriptor of a range, if this node has one.
    pub fn descriptor(&self, range: RangeId) -> Result<Option<RangeDescriptor>, StorageError> {
        match self.tree.get(keys::range_key(range, keys::DESCRIPTOR))? {
            Some(v) => Ok(Some(
                codec::decode(&v).map_err(|e| corrupt("range descriptor", e))?,
            )),
            None => Ok(None),
        }
    }

    /// The replica of `range` removed from this node, if one was.
    pub fn tombstone(&self, range: RangeId) -> Result<Option<ReplicaId>, StorageError> {
        let key = keys::range_key(range, keys::TOMBSTONE);
        Ok(self.stored_u64(&key, "tombstone")?.map(ReplicaId))
    }

    /// The 8-byte big-endian number stored at `key`, if any.
    fn stored_u64(&self, key: &[u8], what: &str) -> Result<Option<u64>, StorageError> {
        let Some(v) = self.tree.get(key)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] =
            (v.as_ref().try_into()).map_err(|_| corrupt(what, format!("{} bytes", v.len())))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Every range a replica was removed from, with the removed replica.
    pub fn tombstones(&self) -> Result<BTreeMap<RangeId, ReplicaId>, StorageError> {
        let mut out = BTreeMap::new();
        for (k, v) in range_states(&self.tree)? {
            if k[9] == keys::TOMBSTONE {
                let id: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("tombstone", format!("{} bytes", v.len())))?;
                let range: [u8; 8] = k[1..9].try_into().expect("8 bytes");
                out.insert(
                    RangeId(u64::from_be_bytes(range)),
                    ReplicaId(u64::from_be_bytes(id)),
                );
            }
        }
        Ok(out)
    }

    /// Stages the deletion of a replica's state and a tombstone, with a record of its span,
    /// whose user keys and index of deadlines (an entry per value with a deadline)
    /// [`Engine::purge`] deletes after: a range of a million keys takes seconds to delete,
    /// which is not done in one step on the thread that serves the clients. A restart finishes
    /// a purge a stop interrupted.
    pub fn stage_destroy(
        &self,
        range: RangeId,
        replica: ReplicaId,
        span: Option<(&[u8], &[u8])>,
        batch: &mut sled::Batch,
        states: &mut AppliedStates,
    ) -> Result<(), StorageError> {
        // Its applied state too: the removal is recorded, so that no older record of the
        // range counts after a restart.
        states.0.push((range, Vec::new()));
        let prefix = keys::range_prefix(range);
        let (index, after_index) = keys::deadlines(range);
        let state = self.tree.range(prefix.as_slice()..index.as_slice()).keys();
        let after = self.tree.range(after_index.as_slice()..).keys();
        let after = after.take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)));
        for k in state.chain(after) {
            batch.remove(k?);
        }
        if span.is_none() {
            // No data here, nor index (a replica removed before its first snapshot).
            for k in self
                .tree
                .range(index.as_slice()..after_index.as_slice())
                .keys()
            {
                batch.remove(k?);
            }
        }
        if let Some((start, end)) = span {
            batch.insert(keys::purge(range), codec::encode(&(start, end)));
        }
        batch.insert(
            keys::range_key(range, keys::TOMBSTONE),
            &replica.0.to_be_bytes(),
        );
        Ok(())
    }

    /// The destroyed replicas whose user keys are still to be deleted.
    pub fn purges(&self) -> Result<Vec<RangeId>, StorageError> {
        let mut out = Vec::new();
        for k in self.tree.scan_prefix(keys::PURGES).keys() {
            let k = k?;
            let id: [u8; 8] = k[keys::PURGES.len()..]
                .try_into()
                .map_err(|_| corrupt("purge record", format!("{k:?}")))?;
            out.push(RangeId(u64::from_be_bytes(id)));
        }
        Ok(out)
    }

    /// Deletes the user keys of a destroyed replica's span and its index of deadlines (see
    /// [`Engine::stage_destroy`]), [`PURGE_CHUNK`] at a time, then its record; stops between
    /// two chunks, the record kept, once `go_on` says so. Whether it finished.
    pub fn purge(&self, range: RangeId, go_on: &dyn Fn() -> bool) -> Result<bool, StorageError> {
        let Some(record) = self.tree.get(keys::purge(range))? else {
            return Ok(true);
        };
        let (start, end): Span =
            codec::decode(&record).map_err(|e| corrupt(format!("purge record of {range}"), e))?;
        let (lo, hi) = keys::user_span(&start, &end);
        if !self.delete_keys(&lo, &hi, go_on)? {
            return Ok(false);
        }
        let (lo, hi) = keys::deadlines(range);
        if !self.delete_keys(&lo, &hi, go_on)? {
            return Ok(false);
        }
        self.tree.remove(keys::purge(range))?;
        Ok(true)
    }

    /// Deletes at most `max` of the user keys in `[start, end)`, in one sled batch; whether
    /// none is left.
    pub fn delete_user_chunk(
        &self,
        start: &[u8],
        end: &[u8],
        max: usize,
    ) -> Result<bool, StorageError> {
        let (lo, hi) = keys::user_span(start, end);
        self.delete_chunk(&lo, &hi, max)
    }

    /// Deletes the stored keys in `[lo, hi)`, [`PURGE_CHUNK`] per sled batch, so that no batch
    /// holds them all; stops between two chunks once `go_on` says so. Whether it finished.
    fn delete_keys(
        &self,
        lo: &[u8],
        hi: &[u8],
        go_on: &dyn Fn() -> bool,
    ) -> Result<bool, StorageError> {
        loop {
            if self.delete_chunk(lo, hi, PURGE_CHUNK)? {
                return Ok(true);
            }
            if !go_on() {
                return Ok(false);
            }
        }
    }

    /// Deletes at most `max` of the stored keys in `[lo, hi)`, in one sled batch; whether none
    /// is left.
    fn delete_chunk(&self, lo: &[u8], hi: &[u8], max: usize) -> Result<bool, StorageError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.tree.range(lo..hi).keys().take(max) {
            batch.remove(k?);
            n += 1;
        }
        if n > 0 {
            self.tree.apply_batch(batch)?;
        }
        Ok(n < max)
    }

    /// The applied state of a range (zero, none and an unknown size when nothing was applied):
    /// in the newest record that has it, else in the range's key.
    pub fn applied_state(&self, range: RangeId) -> Result<AppliedState, StorageError> {
        let log = self.applied.lock().expect("applied log");
        if let Some((_, v)) = log.newest.get(&range) {
            return decode_applied(v);
        }
        match self.tree.get(keys::range_key(range, keys::APPLIED))? {
            Some(v) => decode_applied(&v),
            None => decode_applied(&[]),
        }
    }

    /// The applied index and term of a range (zero when nothing was applied).
    pub fn applied(&self, range: RangeId) -> Result<LogPosition, StorageError> {
        Ok(self.applied_state(range)?.position)
    }

    /// Every log entry stored for a range, in index order (for inspection and tests).
    pub fn log_entries(&self, range: RangeId) -> Result<Vec<Entry>, StorageError> {
        self.log_entries_between(range, 0, u64::MAX)
    }

    /// The stored log entries of a range with `low <= index <= high`.
    pub fn log_entries_between(
        &self,
        range: RangeId,
        low: u64,
        high: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (Some(first), Some(last)) =
            (self.log.first_index(range.0), self.log.last_index(range.0))
        else {
            return Ok(Vec::new());
        };
        let low = low.max(first).max(self.truncated(range)?.index + 1);
        let high = high.min(last);
        let mut out = Vec::new();
        if low <= high {
            self.log
                .fetch_entries_to::<EntryLog>(range.0, low, high + 1, None, &mut out)?;
        }
        Ok(out)
    }

    /// Whether any range state exists (false on a brand-new data directory).
    pub fn is_bootstrapped(&self) -> Result<bool, StorageError> {
        Ok(self.tree.scan_prefix([b'r']).next().transpose()?.is_some())
    }

    /// Stages the initial state of a range replicated on `voters`, at [`BOOTSTRAP_INDEX`].
    pub fn bootstrap_range(
        &self,
        descriptor: &RangeDescriptor,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        let range = descriptor.id;
        let start = LogPosition {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
        };
        let hs = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        let cs = ConfState::from((
            descriptor.voters.iter().map(|r| r.0),
            descriptor.learners.iter().map(|r| r.0),
        ));
        batch.put_hard_state(range, &hs);
        batch.put_truncated(range, start);
        let data = batch.data();
        data.insert(
            keys::range_key(range, keys::CONF_STATE),
            conf_state_value(BOOTSTRAP_INDEX, &cs),
        );
        // A new range: no record has a state of it.
        data.insert(
            keys::range_key(range, keys::APPLIED),
            applied_value(start, &Proposers::new(), RangeSize::of(0)),
        );
        put_descriptor(data, descriptor);
        Ok(())
    }
}

/// What a range's keys and values take, as a replica reckons it (see `store/sizes.rs`): the
/// last measure its leader put in the log (or what the snapshot it installed held, or zero
/// for a new range; not known for a range split off, or of a data directory of format 2,
/// until it is measured), and the bytes of keys and values applied since, counted all the
/// same (an overwrite or a deletion counts as written, so this is more than the range grew).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeSize {
    pub measured: Option<u64>,
    pub grown: u64,
}

impl RangeSize {
    /// A range known to take `bytes`.
    pub fn of(bytes: u64) -> RangeSize {
        RangeSize {
            measured: Some(bytes),
            grown: 0,
        }
    }

    /// The bytes the range takes at most, if known, short of a measure that passed over keys
    /// (see [`Engine::split_points`]).
    pub fn bytes(&self) -> Option<u64> {
        self.measured.map(|m| m.saturating_add(self.grown))
    }
}

/// What [`Engine::split_points`] found: the bytes of keys and values it read, where to cut,
/// and the bytes before the first cut (all of them if none).
#[derive(Debug, PartialEq, Eq)]
pub struct Measure {
    pub bytes: u64,
    pub cuts: Vec<Vec<u8>>,
    pub first: u64,
}

/// A range's applied state: the position of the last entry applied, the last command applied
/// from each proposer, and its size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub position: LogPosition,
    pub proposers: Proposers,
    pub size: RangeSize,
}

/// Marks a size in an applied state as stored: never the first byte of encoded proposers
/// (bincode's varint lengths start with 0 to 254), so a state of format 2, without a size,
/// reads as one of a size neither measured nor counted.
const SIZED: u8 = 0xff;

/// A range's measure as stored when it is not known.
const NOT_MEASURED: u64 = u64::MAX;

/// A range's applied state as stored: applied index and term; [`SIZED`] and the size (bytes
/// measured, [`NOT_MEASURED`] if not known, and grown since); then the last command applied
/// from each proposer (left out while there is none).
fn applied_value(applied: LogPosition, proposers: &Proposers, size: RangeSize) -> Vec<u8> {
    let mut v = applied.encode().to_vec();
    v.push(SIZED);
    v.extend_from_slice(&size.measured.unwrap_or(NOT_MEASURED).to_be_bytes());
    v.extend_from_slice(&size.grown.to_be_bytes());
    if !proposers.is_empty() {
        v.extend_from_slice(&codec::encode(proposers));
    }
    v
}

/// Decodes [`applied_value`]; empty (nothing applied, or the range removed): zero and none.
fn decode_applied(v: &[u8]) -> Result<AppliedState, StorageError> {
    if v.is_empty() {
        return Ok(AppliedState::default());
    }
    let position = LogPosition::decode("applied state", v.get(..16).unwrap_or(v))?;
    let mut rest = v.get(16..).unwrap_or_default();
    let mut size = RangeSize::default();
    if let Some((&SIZED, sized)) = rest.split_first() {
        let number = |at: usize| -> Result<u64, StorageError> {
            let bytes = sized
                .get(at..at + 8)
                .ok_or_else(|| corrupt("range size", "short"))?;
            Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
        };
        let measured = number(0)?;
        size = RangeSize {
            measured: (measured != NOT_MEASURED).then_some(measured),
            grown: number(8)?,
        };
        rest = &sized[16..];
    }
    let proposers = if rest.is_empty() {
        Proposers::new()
    } else {
        codec::decode(rest).map_err(|e| corrupt("proposers", e))?
    };
    Ok(AppliedState {
        position,
        proposers,
        size,
    })
}

/// Applied states to write with a batch: each range's applied position, the last command
/// applied from each proposer, and its size (see "Applied states").
#[derive(Debug, Default)]
pub struct AppliedStates(Vec<(RangeId, Vec<u8>)>);

impl AppliedStates {
    /// Adds a range's applied state.
    pub fn put(
        &mut self,
        range: RangeId,
        applied: LogPosition,
        proposers: &Proposers,
        size: RangeSize,
    ) {
        self.0
            .push((range, applied_value(applied, proposers, size)));
    }
}

/// How many applied states a record holds at most: a write with more makes several records.
/// sled keeps up to 16 keys in a leaf and writes a leaf whole every few changes, in a file of
/// its own past 128 KiB; records of this size keep their leaves well below that.
const RECORD_STATES: usize = 32;

/// How many records are kept before the oldest is retired: 65,536 states. Under a load spread
/// over 10,000 ranges, a range whose state is in a record is written again long before it is
/// retired, so that few states are left to retire.
const APPLIED_RECORDS: usize = 2048;

/// Which record holds each range's newest applied state (see "Applied states").
#[derive(Default)]
struct AppliedLog {
    /// The next record's sequence number.
    next: u64,
    /// The records kept, oldest first: the ranges whose state each one holds, and how many of
    /// those states are still their range's newest.
    records: BTreeMap<u64, (Vec<RangeId>, usize)>,
    /// The ranges whose newest state is in a record: that record, and the state.
    newest: HashMap<RangeId, (u64, Vec<u8>)>,
}

impl AppliedLog {
    /// Reads the records in sled; deletes those that hold no newest state.
    fn recover(tree: &sled::Tree) -> Result<AppliedLog, StorageError> {
        let mut log = AppliedLog {
            next: 1,
            ..AppliedLog::default()
        };
        let mut dead = sled::Batch::default();
        for item in tree.scan_prefix(keys::RECORDS) {
            let (k, v) = item?;
            let seq = k
                .get(1..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("record of applied states", "its key"))?;
            let mut ranges = Vec::new();
            let mut rest = &v[..];
            while !rest.is_empty() {
                let (range, len) = match (rest.get(..8), rest.get(8..12)) {
                    (Some(r), Some(l)) => (
                        u64::from_be_bytes(r.try_into().expect("8 bytes")),
                        u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize,
                    ),
                    _ => return Err(corrupt("record of applied states", "a cut entry")),
                };
                let state = rest
                    .get(12..12 + len)
                    .ok_or_else(|| corrupt("record of applied states", "a cut state"))?;
                log.note(RangeId(range), seq, state.to_vec(), &mut ranges, &mut dead);
                rest = &rest[12 + len..];
            }
            log.keep(seq, ranges, &mut dead);
            log.next = seq + 1;
        }
        tree.apply_batch(dead)?;
        Ok(log)
    }

    /// Puts `states` into `batch` as the next records, and deletes or retires older records.
    fn record(&mut self, states: AppliedStates, batch: &mut sled::Batch) {
        let mut states = states.0.into_iter().peekable();
        while states.peek().is_some() {
            let seq = self.next;
            self.next += 1;
            let mut value = Vec::new();
            let mut ranges = Vec::new();
            for (range, state) in states.by_ref().take(RECORD_STATES) {
                value.extend_from_slice(&range.0.to_be_bytes());
                value.extend_from_slice(&(state.len() as u32).to_be_bytes());
                value.extend_from_slice(&state);
                if state.is_empty() {
                    // The range's key goes too, even if a write of the other thread retired
                    // a state to it after the range's keys were listed for their deletion.
                    batch.remove(keys::range_key(range, keys::APPLIED));
                }
                self.note(range, seq, state, &mut ranges, batch);
            }
            batch.insert(keys::record(seq), value);
            self.keep(seq, ranges, batch);
        }
        while self.records.len() > APPLIED_RECORDS {
            let Some((old, (ranges, _))) = self.records.pop_first() else {
                break;
            };
            for range in ranges {
                if self.newest.get(&range).is_some_and(|(s, _)| *s == old) {
                    let (_, state) = self.newest.remove(&range).expect("just seen");
                    // A removal needs no key: no older record is left.
                    if !state.is_empty() {
                        batch.insert(keys::range_key(range, keys::APPLIED), state);
                    }
                }
            }
            batch.remove(keys::record(old));
        }
    }

    /// Record `seq` holds `range`'s newest state; the record that held it may go.
    fn note(
        &mut self,
        range: RangeId,
        seq: u64,
        state: Vec<u8>,
        ranges: &mut Vec<RangeId>,
        batch: &mut sled::Batch,
    ) {
        match self.newest.insert(range, (seq, state)) {
            Some((s, _)) if s == seq => {} // twice in one record: the second counts
            Some((s, _)) => {
                ranges.push(range);
                if let Some((_, live)) = self.records.get_mut(&s) {
                    *live -= 1;
                    if *live == 0 {
                        self.records.remove(&s);
                        batch.remove(keys::record(s));
                    }
                }
            }
            None => ranges.push(range),
        }
    }

    /// Keeps record `seq`, holding the newest states of `ranges`; or deletes it if none.
    fn keep(&mut self, seq: u64, ranges: Vec<RangeId>, batch: &mut sled::Batch) {
        if ranges.is_empty() {
            batch.remove(keys::record(seq));
        } else {
            let live = ranges.len();
            self.records.insert(seq, (ranges, live));
        }
    }
}

/// Puts a range descriptor into a batch.
pub fn put_descriptor(batch: &mut sled::Batch, descriptor: &RangeDescriptor) {
    batch.insert(
        keys::range_key(descriptor.id, keys::DESCRIPTOR),
        codec::encode(descriptor),
    );
}

fn conf_state_value(index: u64, cs: &ConfState) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&encode_proto(cs));
    v
}

fn encode_proto<M: ProtoMessage>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("storage: encoding a raft protobuf failed")
}

fn decode_proto<M: ProtoMessage>(what: &str, bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(what, e))
}

/// The raft engine's view of a log entry.
pub struct EntryLog;

impl raft_engine::MessageExt for EntryLog {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Raft logs opened so far by this process (see [`number_log_files`]).
static LOGS_OPENED: AtomicU64 = AtomicU64::new(0);

/// The file numbers set aside for each raft log a process creates after its first.
const LOG_FILES_PER_LOG: u64 = 1 << 20;

/// Makes a raft log about to be created number its files apart from every other log of this
/// process.
///
/// raft-engine keeps the last block of log it read in a per-thread cache keyed by queue, file
/// number, offset and length, not by engine. Two logs of one process that both numbered their
/// files from 1, with blocks of the same size at the same offset, would each be handed the
/// other's block on a thread that reads both: a wrong entry, or a wrong term that makes a
/// restarting node drop the range's log. The simulation, `flotilla script` and the in-process
/// cluster tests run several nodes in one process, some of them on one thread. A process's
/// first log numbers its files from 1, as raft-engine does; each new one after it from its own
/// multiple of `LOG_FILES_PER_LOG`, through an empty file of each queue with that number,
/// which raft-engine takes as its first (and writes its header into).
fn number_log_files(log_dir: &Path) -> Result<(), StorageError> {
    let nth = LOGS_OPENED.fetch_add(1, Ordering::Relaxed);
    if nth == 0 || log_dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(log_dir)?;
    let first = nth * LOG_FILES_PER_LOG;
    for queue in ["raftlog", "rewrite"] {
        File::create(log_dir.join(format!("{first:016}.{queue}")))?;
    }
    Ok(())
}

/// raft-engine's files, with the space ahead of the writes made by writing zeros instead of by
/// `fallocate`.
///
/// raft-engine grows a new log file 2 MiB at a time with `fallocate`. On ext4 that space is an
/// unwritten extent: each round's write into it converts part of the extent, so each round's
/// `fdatasync` also writes the file's metadata. Written zeros (synced once, when the space is
/// made) leave the rounds' syncs only their data to write: a small append's `fdatasync` took
/// 0.150 ms into fallocated space and 0.093 ms into written space on this project's machine.
/// The bytes are the same either way (fallocated space reads as zeros). The price: every
/// 2 MiB of new log, one round also writes and syncs 2 MiB of zeros (1-3 ms here).
///
/// It matters for a node's new files. Once the log has passed its purge threshold,
/// raft-engine recycles purged files, already written, for its new ones, and makes no space.
struct LogFiles {
    /// Whether the zeros are synced when written (not in simulations, see [`Engine::durable`]).
    durable: bool,
}

type LogFd = <DefaultFs as FileSystem>::Handle;

impl FileSystem for LogFiles {
    type Handle = LogFd;
    type Reader = <DefaultFs as FileSystem>::Reader;
    type Writer = ZeroFilling;

    fn create<P: AsRef<Path>>(&self, path: P) -> std::io::Result<LogFd> {
        DefaultFs.create(path)
    }

    fn open<P: AsRef<Path>>(&self, path: P, perm: Permission) -> std::io::Result<LogFd> {
        DefaultFs.open(path, perm)
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> std::io::Result<()> {
        DefaultFs.delete(path)
    }

    fn rename<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> std::io::Result<()> {
        DefaultFs.rename(src_path, dst_path)
    }

    fn new_reader(&self, handle: Arc<LogFd>) -> std::io::Result<Self::Reader> {
        DefaultFs.new_reader(handle)
    }

    fn new_writer(&self, handle: Arc<LogFd>) -> std::io::Result<ZeroFilling> {
        Ok(ZeroFilling {
            file: DefaultFs.new_writer(handle.clone())?,
            handle,
            durable: self.durable,
        })
    }
}

/// A writer of a raft log file that makes space by writing zeros (see [`LogFiles`]).
struct ZeroFilling {
    file: <DefaultFs as FileSystem>::Writer,
    handle: Arc<LogFd>,
    durable: bool,
}

impl std::io::Write for ZeroFilling {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl std::io::Seek for ZeroFilling {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl WriteExt for ZeroFilling {
    fn truncate(&mut self, offset: usize) -> std::io::Result<()> {
        self.file.truncate(offset)
    }

    /// Written where asked (`pwrite`), so the writer's place never moves, even when a write
    /// fails part way (raft-engine only logs a failed `allocate`, and writes on where it was).
    fn allocate(&mut self, offset: usize, size: usize) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut done = 0;
        while done < size {
            let n = (size - done).min(ZEROS.len());
            if self.handle.write(offset + done, &ZEROS[..n])? < n {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        if self.durable {
            // As raft-engine's own syncs do: a failed sync may have lost earlier writes of this
            // file (the error is reported once), which raft-engine would then count durable.
            self.handle
                .sync()
                .expect("storage: syncing the raft log's new space failed");
        }
        Ok(())
    }
}

/// Size in bytes of the raft log's files, and the total size past which the oldest are purged
/// (rewriting what little they still hold, or compacting the ranges that hold much).
///
/// The logs themselves are short (see `MultiRaft::compact_caught_up`): the files are what is
/// left of them. raft-engine keeps up to one and a half times the threshold of purged files to
/// reuse, so a node's files take up to about 2.5 times it on disk (at 1 GiB they reached
/// 1.3 GB under a steady load, now about 290 MB). The threshold also bounds what a range's
/// replicas keep for one that lags: past it, the ranges holding the oldest file are compacted.
#[derive(Clone, Copy)]
struct LogSizes {
    file: u64,
    purge: u64,
}

const LOG_SIZES: LogSizes = LogSizes {
    file: 32 << 20,
    purge: 256 << 20,
};

/// How many bytes of the raft log a round writes in one raft-engine batch at most, short of
/// one range's entries: raft-engine reads an entry back (to send it to a replica that lags, or
/// to rewrite it when it purges the log's files) by reading and checking the whole batch it
/// was written in, keeping only the last one read. Entries are read back range by range,
/// while a round's entries are of many ranges, so nearly every entry read back costs a read of
/// its batch: a round of a loaded node with 1 KiB values wrote batches of hundreds of KiB.
const LOG_BATCH_BYTES: usize = 32 << 10;

/// A round's writes: to the raft log (entries, hard states, truncations) and to sled (conf
/// states, snapshots' data). [`Engine::commit`] writes it.
#[derive(Default)]
pub struct WriteBatch {
    data: sled::Batch,
    /// Written with `data`.
    applied: AppliedStates,
    has_data: bool,
    data_sync: bool,
    /// The raft log's part, in batches of about `LOG_BATCH_BYTES`, cut only before a range's
    /// entries: what else a round stages of a range (its hard state, whose commit index may
    /// cover them) goes with or after them. The batches are written in order and synced once,
    /// with the last.
    logs: Vec<raft_engine::LogBatch>,
    log: raft_engine::LogBatch,
}

impl WriteBatch {
    /// The sled part, to stage into.
    pub fn data(&mut self) -> &mut sled::Batch {
        self.has_data = true;
        &mut self.data
    }

    /// Whether committing it syncs sled first (it has a sled part, or compacts a log).
    pub fn needs_data_sync(&self) -> bool {
        self.has_data || self.data_sync
    }

    /// For `PlantedBugs::compaction_without_data_sync` only.
    pub(crate) fn plant_compaction_without_data_sync(&mut self) {
        self.data_sync = false;
    }

    fn put_hard_state(&mut self, range: RangeId, hs: &HardState) {
        self.log
            .put_message(range.0, keys::HARD_STATE.to_vec(), hs)
            .expect("storage: encoding a hard state failed");
    }

    fn put_truncated(&mut self, range: RangeId, at: LogPosition) {
        self.log
            .put(range.0, keys::TRUNCATED.to_vec(), at.encode().to_vec())
            .expect("storage: a key of the raft log");
    }

    /// Stages the deletion of everything the raft log holds of a range.
    fn clean_log(&mut self, range: RangeId) {
        self.log.add_command(range.0, raft_engine::Command::Clean);
    }

    /// The raft log's batch to stage a range's entries into: a new one once the current one
    /// holds `LOG_BATCH_BYTES`.
    fn log_for_entries(&mut self) -> &mut raft_engine::LogBatch {
        if self.log.approximate_size() >= LOG_BATCH_BYTES {
            let full = std::mem::take(&mut self.log);
            self.logs.push(full);
        }
        &mut self.log
    }
}

/// What a snapshot's data holds: the range as of the snapshot's index.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotData {
    pub descriptor: RangeDescriptor,
    #[serde(with = "crate::codec::byte_pairs")]
    pub pairs: Vec<Pair>,
    pub proposers: Proposers,
}

/// For each proposing node, the boot and sequence number of the last command of it that a range
/// applied. A command not above it is not applied: with the same boot, it is a copy (a message
/// delivered twice) or arrived after a later one; with an older boot, it comes from a process
/// that has since restarted, and its client is gone (boots only grow, see
/// [`Engine::raise_boot`]). Every replica decides alike, from the log, so this is part of the
/// range's replicated state (stored with the applied index, and in snapshots), one entry per
/// node however often it restarts.
pub type Proposers = BTreeMap<NodeId, (u64, u64)>;

/// One range's raft log and state.
///
/// Reads go to the engine; writes are staged into the round's [`WriteBatch`] by the `stage_*`
/// methods, which also update the in-memory view raft reads, so raft sees what it appended
/// before the batch is durable (as raft-rs expects).
pub struct RangeStorage {
    engine: Arc<Engine>,
    range: RangeId,
    hard_state: HardState,
    conf_state: ConfState,
    /// The index of the entry (or snapshot) that produced `conf_state`.
    conf_index: u64,
    truncated: LogPosition,
    last_index: u64,
    /// The latest snapshot the Store generated for this range, served to followers.
    snapshot: Option<Snapshot>,
    /// Set when raft asked for a snapshot newer than the one held.
    snapshot_wanted: AtomicBool,
    /// The newest entries written since the range was loaded (at most [`ENTRY_CACHE_MAX`]),
    /// contiguous up to `last_index`, less the applied ones MultiRaft had it forget (see
    /// [`RangeStorage::forget_cached_before`]). Raft reads entries back once they commit, and
    /// a follower checks the term of its last entry on every append: serving them from here
    /// saves reading back what was just written.
    cache: EntryCache,
}

/// The most entries a range keeps in its entry cache.
const ENTRY_CACHE_MAX: usize = 4096;

/// A range's entry cache, counted in its node's [`Engine::entries_cached`].
struct EntryCache {
    entries: VecDeque<Entry>,
    /// The entries' data and contexts, in bytes.
    data_bytes: u64,
    engine: Arc<Engine>,
}

/// An entry's data and context, in bytes.
fn data_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len()) as u64
}

impl EntryCache {
    fn new(engine: Arc<Engine>) -> EntryCache {
        EntryCache {
            entries: VecDeque::new(),
            data_bytes: 0,
            engine,
        }
    }

    /// The cache's entries, and its bytes: their data and contexts, and its room for entries.
    fn counted(&self) -> (u64, u64) {
        let room = self.entries.capacity() * std::mem::size_of::<Entry>();
        (self.entries.len() as u64, self.data_bytes + room as u64)
    }

    /// Adds to the node's count what the cache gained since it was `before` (as `counted`
    /// gives it), less what it lost.
    fn recount(&self, before: (u64, u64)) {
        let gauge = &self.engine.entries_cached;
        let now = self.counted();
        for (counter, now, before) in [
            (&gauge.entries, now.0, before.0),
            (&gauge.bytes, now.1, before.1),
        ] {
            if now > before {
                counter.fetch_add(now - before, Ordering::Relaxed);
            } else if now < before {
                counter.fetch_sub(before - now, Ordering::Relaxed);
            }
        }
    }

    fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    fn back(&self) -> Option<&Entry> {
        self.entries.back()
    }

    fn forget(&mut self, e: Entry) {
        self.data_bytes -= data_bytes(&e);
    }

    /// Forgets the entries before `index`. A cache left with far fewer entries than it has
    /// room for (one kept within the node's budget no longer, or after a burst of writes)
    /// gives the room back.
    fn forget_before(&mut self, index: u64) {
        let before = self.counted();
        while self.entries.front().is_some_and(|e| e.index < index) {
            let e = self.entries.pop_front().expect("a first entry");
            self.forget(e);
        }
        if self.entries.capacity() > 4 * self.entries.len().max(4) {
            self.entries.shrink_to(2 * self.entries.len());
        }
        self.recount(before);
    }

    /// Forgets the entries from `index` on.
    fn forget_from(&mut self, index: u64) {
        let before = self.counted();
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let e = self.entries.pop_back().expect("a last entry");
            self.forget(e);
        }
        self.recount(before);
    }

    /// Appends entries that follow the cache's last (any replaced tail already forgotten);
    /// after a gap the cache holds only them.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if self.back().is_some_and(|e| e.index + 1 != first.index) {
            self.forget_from(0);
        }
        let before = self.counted();
        self.data_bytes += entries.iter().map(data_bytes).sum::<u64>();
        self.entries.extend(entries.iter().cloned());
        while self.entries.len() > ENTRY_CACHE_MAX {
            let e = self.entries.pop_front().expect("a first entry");
            self.forget(e);
        }
        self.recount(before);
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        let gauge = &self.engine.entries_cached;
        let (entries, bytes) = self.counted();
        gauge.entries.fetch_sub(entries, Ordering::Relaxed);
        gauge.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl RangeStorage {
    /// Loads a range's state; a range never seen gives an empty (uninitialized) storage.
    ///
    /// A stored applied index the log does not continue (a crash came between the two writes
    /// of a snapshot's installation, see the module documentation) restarts the log after it.
    pub fn load(engine: Arc<Engine>, range: RangeId) -> Result<RangeStorage, StorageError> {
        let mut hard_state: HardState = engine
            .log
            .get_message(range.0, keys::HARD_STATE)?
            .unwrap_or_default();
        let (conf_index, conf_state) = match engine
            .tree()
            .get(keys::range_key(range, keys::CONF_STATE))?
        {
            Some(v) if v.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[..8]);
                (u64::from_be_bytes(b), decode_proto("conf state", &v[8..])?)
            }
            Some(v) => return Err(corrupt("conf state", format!("{} bytes", v.len()))),
            None => (0, ConfState::default()),
        };
        let mut truncated = engine.truncated(range)?;
        let mut last_index = engine
            .log
            .last_index(range.0)
            .unwrap_or(0)
            .max(truncated.index);
        let applied = engine.applied(range)?;
        if applied.index > truncated.index {
            let term = if applied.index <= last_index {
                engine
                    .log
                    .get_entry::<EntryLog>(range.0, applied.index)?
                    .map(|e| e.term)
            } else {
                None
            };
            if term != Some(applied.term) {
                if last_index == 0 {
                    // A range born of a split (`Engine::stage_split`): its raft state starts
                    // here, with the hard state of an empty replica that was here before.
                    log::debug!("storage: {range}: the log starts at {}", applied.index);
                } else {
                    log::warn!(
                        "storage: {range}: the log does not continue the applied index {}: \
                         it restarts after it",
                        applied.index
                    );
                }
                hard_state.commit = hard_state.commit.max(applied.index);
                hard_state.term = hard_state.term.max(applied.term);
                let mut batch = WriteBatch::default();
                batch.clean_log(range);
                batch.put_hard_state(range, &hard_state);
                batch.put_truncated(range, applied);
                // The applied index that cuts the log may not be durable yet (a process
                // killed before sled synced it): it must be before the log is cut.
                batch.data_sync = true;
                engine.commit(batch)?;
                truncated = applied;
                last_index = applied.index;
            }
        }
        Ok(RangeStorage {
            cache: EntryCache::new(engine.clone()),
            engine,
            range,
            hard_state,
            conf_state,
            conf_index,
            truncated,
            last_index,
            snapshot: None,
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    /// An empty replica's storage: its hard state from the raft log (a term and vote it kept),
    /// nothing else, whatever sled holds of the range (see `MultiRaft::open_group`).
    pub fn empty(engine: Arc<Engine>, range: RangeId) -> Result<RangeStorage, StorageError> {
        let hard_state: HardState = engine
            .log
            .get_message(range.0, keys::HARD_STATE)?
            .unwrap_or_default();
        Ok(RangeStorage {
            cache: EntryCache::new(engine.clone()),
            engine,
            range,
            hard_state,
            conf_state: ConfState::default(),
            conf_index: 0,
            truncated: LogPosition::default(),
            last_index: 0,
            snapshot: None,
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    /// Forgets the cached entries before `index` (which must be applied: see
    /// `Group::cache_from`). What raft asks for later is read back from the files.
    pub fn forget_cached_before(&mut self, index: u64) {
        self.cache.forget_before(index);
    }

    /// The stored entries `[low, high)` (at least one if any, then up to `max_size` bytes).
    fn stored_entries(
        &self,
        low: u64,
        high: u64,
        max_size: u64,
    ) -> Result<Vec<Entry>, raft_engine::Error> {
        let mut out = Vec::new();
        let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
        self.engine.log.fetch_entries_to::<EntryLog>(
            self.range.0,
            low,
            high,
            Some(max_size),
            &mut out,
        )?;
        self.engine
            .entries_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// The cached entries `[low, high)`, if the cache holds them all.
    fn cached(&self, low: u64, high: u64) -> Option<impl Iterator<Item = &Entry>> {
        let first = self.cache.front()?.index;
        (first <= low && high <= self.last_index + 1 && low < high).then(|| {
            self.cache
                .entries
                .range((low - first) as usize..(high - first) as usize)
        })
    }

    /// Where the part of `[low, high)` the cache holds begins: the cache holds the log's
    /// newest entries, so it holds `[from, high)` (`high` if it holds none of them).
    fn cached_from(&self, low: u64, high: u64) -> u64 {
        match (self.cache.front(), self.cache.back()) {
            (Some(first), Some(last)) if last.index + 1 >= high => first.index.clamp(low, high),
            _ => high,
        }
    }

    pub fn range(&self) -> RangeId {
        self.range
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The index of the entry (or snapshot) that produced the current conf state.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    pub fn truncated(&self) -> LogPosition {
        self.truncated
    }

    /// Stages appended entries, replacing any conflicting tail from the first of them on.
    pub fn stage_entries(&mut self, entries: &[Entry], batch: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        assert!(
            first.index > self.truncated.index && first.index <= self.last_index + 1,
            "storage: {} appending entries from {} to a log of ({}, {}]",
            self.range,
            first.index,
            self.truncated.index,
            self.last_index
        );
        batch
            .log_for_entries()
            .add_entries::<EntryLog>(self.range.0, entries)
            .expect("storage: encoding log entries failed");
        self.last_index = last.index;
        // The cache stays contiguous: a replaced tail goes, and a gap empties it.
        self.cache.forget_from(first.index);
        self.cache.append(entries);
    }

    /// Stages a new hard state.
    pub fn stage_hard_state(&mut self, hs: HardState, batch: &mut WriteBatch) {
        batch.put_hard_state(self.range, &hs);
        self.hard_state = hs;
    }

    /// Stages a commit index learned from a `LightReady`.
    pub fn stage_commit(&mut self, commit: u64, batch: &mut WriteBatch) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.stage_hard_state(hs, batch);
    }

    /// Stages the conf state that applying the change at `index` produced.
    pub fn stage_conf_state(&mut self, cs: ConfState, index: u64, batch: &mut WriteBatch) {
        batch.data().insert(
            keys::range_key(self.range, keys::CONF_STATE),
            conf_state_value(index, &cs),
        );
        self.conf_state = cs;
        self.conf_index = index;
    }

    /// Stages the installation of a snapshot received from the leader: the range's data is
    /// replaced by the snapshot's and the applied index moves to it (one atomic sled batch),
    /// and the log is emptied and restarts after the snapshot's index.
    pub fn stage_snapshot(
        &mut self,
        snapshot: &Snapshot,
        batch: &mut WriteBatch,
    ) -> Result<RangeDescriptor, StorageError> {
        let meta = snapshot.get_metadata();
        let data: SnapshotData =
            codec::decode(&snapshot.data).map_err(|e| corrupt("snapshot data", e))?;
        let d = &data.descriptor;
        let at = LogPosition {
            index: meta.index,
            term: meta.term,
        };
        {
            // Whatever this node held of the span before is replaced; and of the range's span
            // here, if it was wider (the range split since): no other range here has keys of
            // it (MultiRaft refuses a snapshot that overlaps another range).
            let old = self.engine.descriptor(self.range)?;
            let kv = batch.data();
            let spans = std::iter::once(d).chain(old.as_ref());
            for d in spans {
                let (lo, hi) = keys::user_span(&d.start_key, &d.end_key);
                for item in self.engine.tree().range(lo..hi) {
                    let (k, _) = item?;
                    kv.remove(k);
                }
            }
            // And its index of deadlines, made again from the values.
            let index = keys::range_key(self.range, keys::EXPIRING);
            for item in self.engine.tree().scan_prefix(index).keys() {
                kv.remove(item?);
            }
            for (k, v) in &data.pairs {
                kv.insert(keys::user_key(k), v.as_slice());
                if let Some(deadline) = crate::value::deadline(v) {
                    kv.insert(keys::expiry_key(self.range, deadline, k), b"".as_slice());
                }
            }
            put_descriptor(kv, d);
            // A `FLUSHDB`'s deletion cut short by a stop is over: the data is the snapshot's.
            kv.remove(keys::range_key(self.range, keys::FLUSHING));
        }
        let bytes = data.pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64);
        let size = RangeSize::of(bytes.sum());
        batch.applied.put(self.range, at, &data.proposers, size);
        batch.clean_log(self.range);
        batch.put_truncated(self.range, at);
        self.truncated = at;
        self.last_index = at.index;
        self.cache.forget_from(0);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(at.index);
        hs.term = hs.term.max(at.term);
        self.stage_hard_state(hs, batch);
        self.stage_conf_state(meta.get_conf_state().clone(), meta.index, batch);
        Ok(data.descriptor)
    }

    /// Stages the removal of the log up to `index` (which must be applied): the log then
    /// starts after it, and a follower that needs older entries gets a snapshot. The batch
    /// syncs sled before it is written, so that what the removed entries did is durable.
    pub fn stage_compact(
        &mut self,
        index: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        if index <= self.truncated.index {
            return Ok(());
        }
        let index = index.min(self.last_index);
        let term = match self.read_entry(index) {
            Ok(e) => e.term,
            Err(e) => return Err(corrupt(format!("log entry {index} of {}", self.range), e)),
        };
        batch.log.add_command(
            self.range.0,
            raft_engine::Command::Compact { index: index + 1 },
        );
        self.cache.forget_before(index + 1);
        self.truncated = LogPosition { index, term };
        batch.put_truncated(self.range, self.truncated);
        batch.data_sync = true;
        Ok(())
    }

    /// Whether raft asked for a snapshot this storage does not have yet; clears the request.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Holds a snapshot the Store generated, to serve to followers that need one.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
    }

    /// Drops the snapshot held: the range split since it was built, and it holds the keys of
    /// the wider span (a follower would refuse it, and raft would send it again and again).
    pub fn drop_snapshot(&mut self) {
        self.snapshot = None;
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(mut e) = self.cached(index, index + 1) {
            return Ok(e.next().expect("one cached entry").clone());
        }
        match self.stored_entries(index, index + 1, u64::MAX) {
            Ok(mut v) if v.first().is_some_and(|e| e.index == index) => Ok(v.remove(0)),
            Ok(_) => Err(raft::Error::Store(RaftStorageError::Unavailable)),
            Err(e) => Err(log_error(e)),
        }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> RaftStorageError {
    RaftStorageError::Other(Box::new(e))
}

/// A raft engine's read error, as raft-rs's storage reports it.
fn log_error(e: raft_engine::Error) -> raft::Error {
    raft::Error::Store(match e {
        raft_engine::Error::EntryNotFound => RaftStorageError::Unavailable,
        raft_engine::Error::EntryCompacted => RaftStorageError::Compacted,
        e => other(e),
    })
}

impl Storage for RangeStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        // What the cache lacks, from the raft engine: a replica that lags past the cache (a
        // node back after a while) is sent only the oldest of what it lacks from the files, the
        // rest from memory. Over 10,000 ranges each entry read back costs a read of its
        // round's whole batch, and all of them at once held MultiRaft's thread for seconds.
        let from = self.cached_from(low, high);
        // Not `high - low` entries: raft asks up to the log's end, and `max_size` cuts it short
        // (a replica far behind would have each probe allocate for its whole lag).
        let mut out = Vec::new();
        let mut size = 0u64;
        if low < from {
            out = self
                .stored_entries(low, from, max_size)
                .map_err(log_error)?;
            if out.is_empty() || out[0].index != low {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            }
            if out.len() as u64 != from - low {
                // Up to `max_size`.
                return Ok(out);
            }
            size = out.iter().map(|e| u64::from(e.compute_size())).sum();
        }
        if let Some(cached) = self.cached(from, high) {
            for e in cached {
                size += u64::from(e.compute_size());
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.index {
            return Ok(self.truncated.term);
        }
        if idx < self.truncated.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        // Without copying the entry: raft asks the term of the entry before every append it
        // sends or receives.
        if let Some(mut e) = self.cached(idx, idx + 1) {
            return Ok(e.next().expect("one cached entry").term);
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A held snapshot is only good if it is recent enough for the request, not older than
        // the log's start (the follower must be able to continue from it), and its
        // configuration includes the replica it is for (raft refuses it otherwise).
        let usable = |s: &Snapshot| {
            let m = s.get_metadata();
            let cs = m.get_conf_state();
            m.index >= request_index.max(self.truncated.index)
                && [
                    &cs.voters,
                    &cs.learners,
                    &cs.voters_outgoing,
                    &cs.learners_next,
                ]
                .iter()
                .any(|ids| ids.contains(&to))
        };
        match &self.snapshot {
            Some(s) if usable(s) => Ok(s.clone()),
            _ => {
                self.snapshot_wanted.store(true, Ordering::Relaxed);
                Err(raft::Error::Store(
                    RaftStorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn descriptor() -> RangeDescriptor {
        RangeDescriptor {
            id: RangeId(7),
            start_key: b"a".to_vec(),
            end_key: b"m".to_vec(),
            voters: [1, 2, 3].map(|n| ReplicaId::new(NodeId(n), 0)).to_vec(),
            learners: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// Opens the engine in `dir`. sled's I/O threads may hold the database's lock a moment
    /// after an engine of the same directory was dropped (as in `actors/tests/cluster.rs` and
    /// the simulation): waits for them, up to 5 s.
    pub(crate) fn open(dir: &Path) -> Result<Arc<Engine>, StorageError> {
        open_sized(dir, LOG_SIZES)
    }

    fn open_sized(dir: &Path, sizes: LogSizes) -> Result<Arc<Engine>, StorageError> {
        for _ in 0..5_000 {
            match Engine::open_with(dir, 16 << 20, true, sizes) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                opened => return opened,
            }
        }
        Engine::open_with(dir, 16 << 20, true, sizes)
    }

    fn bootstrapped(dir: &Path) -> (Arc<Engine>, RangeStorage) {
        let engine = open(dir).unwrap();
        let mut batch = WriteBatch::default();
        engine.bootstrap_range(&descriptor(), &mut batch).unwrap();
        engine.commit(batch).unwrap();
        let storage = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
        (engine, storage)
    }

    /// Appends entries to the log, written at once.
    fn append(engine: &Engine, s: &mut RangeStorage, entries: Vec<Entry>) {
        let mut batch = WriteBatch::default();
        s.stage_entries(&entries, &mut batch);
        engine.commit(batch).unwrap();
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn a_log_cleaned_for_a_new_replica_keeps_its_term_and_vote() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        append(&engine, &mut s, vec![entry(6, 7), entry(7, 7)]);
        let mut batch = WriteBatch::default();
        let hs = HardState {
            term: 7,
            vote: 3,
            commit: 7,
            ..Default::default()
        };
        s.stage_hard_state(hs, &mut batch);
        engine.commit(batch).unwrap();
        engine.clean_log_keeping_vote(RangeId(7)).unwrap();
        let hs: HardState = engine
            .log
            .get_message(7, keys::HARD_STATE)
            .unwrap()
            .unwrap();
        assert_eq!((hs.term, hs.vote, hs.commit), (7, 3, 0));
        assert_eq!(engine.log.first_index(7), None, "no entry left");
    }

    #[test]
    fn range_ids_never_repeat_across_a_restart_or_a_wiped_directory() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId(2);
        let t = |s: u64| (RANGE_SEQ_EPOCH_S + s) * 1000;
        let ids = |engine: &Engine, node, at, n| engine.new_range_ids(node, t(at), n).unwrap();
        let seqs = |from: u64, n: u64| -> Vec<RangeId> {
            (from..from + n)
                .map(|s| RangeId::of_split(node, s))
                .collect()
        };
        let engine = open(dir.path()).unwrap();
        assert_eq!(ids(&engine, node, 1000, 1), seqs(1000, 1));
        // Faster than the clock: one after the other, several at once too.
        assert_eq!(ids(&engine, node, 1000, 3), seqs(1001, 3));
        drop(engine);
        let engine = open(dir.path()).unwrap();
        let behind = ids(&engine, node, 900, 1);
        assert_eq!(behind, seqs(1004, 1), "a clock behind goes on from there");
        assert_ne!(ids(&engine, NodeId(3), 1000, 1), seqs(1000, 1));
        // A wiped data directory starts from the clock, past them.
        let wiped = tempfile::tempdir().unwrap();
        assert_eq!(
            ids(&open(wiped.path()).unwrap(), node, 1005, 1),
            seqs(1005, 1)
        );
    }

    #[test]
    fn a_range_past_its_bound_is_cut_in_pieces_of_half_of_it_at_short_keys() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).unwrap();
        let put = |k: &[u8], v: &[u8]| engine.tree().insert(keys::user_key(k), v).unwrap();
        // 100 keys of 20 bytes with their values, a large value, and two small ones.
        for i in 0..100 {
            put(format!("key:{i:03}:tail").as_bytes(), b"vvvvvvvv");
        }
        put(b"z", &[b'x'; 5000]);
        put(b"zz1", b"v");
        put(b"zz2", b"v");
        // The bytes read, before the first cut, and the cuts.
        let measure = |start: &[u8], end: &[u8], max: u64, max_key: usize| {
            let m = engine.split_points(start, end, max, max_key).unwrap();
            let cuts: Vec<String> = (m.cuts.iter())
                .map(|c| String::from_utf8(c.clone()).unwrap())
                .collect();
            (m.bytes, m.first, cuts)
        };
        let none = Vec::<String>::new();
        // 2,000 bytes: within 4,000 and 2,000 (what lies outside the span does not count).
        assert_eq!(
            measure(b"key:", b"y", 4000, 100),
            (2000, 2000, none.clone())
        );
        assert_eq!(
            measure(b"key:", b"y", 2000, 100),
            (2000, 2000, none.clone())
        );
        // Pieces of half the bound, each cut the shortest key after the key before it.
        assert_eq!(
            measure(b"", b"y", 1000, 100),
            (
                2000,
                500,
                vec!["key:025".into(), "key:05".into(), "key:075".into()]
            )
        );
        // A last piece under half the bound goes with the one before.
        assert_eq!(
            measure(b"", b"y", 1200, 100),
            (2000, 600, vec!["key:03".into(), "key:06".into()])
        );
        // At most four times the bound read: the rest is cut when its piece is measured.
        let (bytes, first, cuts) = measure(b"", b"y", 400, 100);
        assert_eq!((bytes, first), (1600, 200));
        assert_eq!((cuts.len(), &cuts[6][..]), (7, "key:07"));
        // A key of half the bound or more starts a piece (and the budget ends the read).
        assert_eq!(
            measure(b"key:098", b"", 1000, 100),
            (5041, 40, vec!["z".into()])
        );
        // No cut allowed among keys sharing their first 5 bytes: passed over unread, to the
        // first key after them, which is cut before.
        assert_eq!(measure(b"", b"y", 600, 5), (320, 320, none.clone()));
        assert_eq!(measure(b"", b"", 600, 5), (5321, 320, vec!["z".into()]));
        // One key alone cannot be cut, however large; the keys after a large one are cut from
        // it, however few.
        assert_eq!(measure(b"y", b"za", 100, 100), (5001, 5001, none));
        assert_eq!(
            measure(b"y", b"", 2000, 100),
            (5009, 5001, vec!["zz".into()])
        );
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff"), None);
        assert_eq!(separator(b"ab", b"abc"), b"abc");
        assert_eq!(separator(b"ab", b"ab\0"), b"ab\0");
        assert_eq!(separator(b"abx", b"ac"), b"ac");
        assert_eq!(separator(b"", b"q"), b"q");
    }

    #[test]
    fn keys_sharing_a_hash_tag_are_never_cut_apart() {
        assert_eq!(hash_tag(b"user:{42}:name"), Some(&b"user:{42}"[..]));
        assert_eq!(hash_tag(b"{42}"), Some(&b"{42}"[..]));
        assert_eq!(hash_tag(b"a}{b}{c}"), Some(&b"a}{b}"[..]));
        assert_eq!(
            hash_tag(b"x{}{y}"),
            None,
            "empty braces are no tag, as in Redis"
        );
        assert_eq!(hash_tag(b"x{y"), None);
        assert_eq!(
            hash_tag_refusal(b"\xff{\x00}x").unwrap(),
            r#""\xff{\x00}x" falls among the keys of hash tag "\xff{\x00}", which stay in one range; cut at the tag instead"#
        );
        let long = [&b"{t}"[..], &[b'k'; 200]].concat();
        assert!(hash_tag_refusal(&long)
            .unwrap()
            .starts_with(&format!("\"{{t}}{}...\" falls", "k".repeat(125))));
        for fine in [&b"user:{42}"[..], b"user:{4", b"user:", b"x{}y"] {
            assert_eq!(hash_tag_refusal(fine), None);
        }
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).unwrap();
        let put = |k: &str| {
            engine
                .tree()
                .insert(keys::user_key(k.as_bytes()), b"vvvvvv")
        };
        // Three tags of 50 keys (1,000 bytes each), then 50 keys whose braces are empty.
        for tag in ["a", "b", "c"] {
            (0..50).for_each(|i| drop(put(&format!("user:{{{tag}}}:{i:03}")).unwrap()));
        }
        (0..50).for_each(|i| drop(put(&format!("user:{{}}:{i:03}")).unwrap()));
        let measure = |start: &[u8], end: &[u8], max: u64| {
            let Measure { bytes, cuts, .. } = engine.split_points(start, end, max, 100).unwrap();
            let cuts: Vec<String> = (cuts.iter())
                .map(|c| String::from_utf8(c.clone()).unwrap())
                .collect();
            (bytes, cuts)
        };
        // Cuts due after 17 keys fall where each tag ends; its other keys are passed over.
        assert_eq!(
            measure(b"user:{", b"user:{c}:~", 600),
            (972, vec!["user:{b".into(), "user:{c".into()])
        );
        // Past the tags, a cut before the first key without one, then every 18 keys (the
        // last 14 going with the piece before them).
        let (_, cuts) = measure(b"user:{c}", b"", 600);
        assert_eq!(cuts, ["user:{}", "user:{}:018"]);
        // A tag over the bound cannot be cut.
        assert_eq!(
            measure(b"user:{b}", b"user:{c}", 100).1,
            Vec::<String>::new()
        );
    }

    #[test]
    fn boots_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap().boot();
        let engine = open(dir.path()).unwrap();
        let second = engine.boot();
        assert!(second > first, "{second} after {first}");
        assert!(engine.raise_boot(0).unwrap() > second);
        assert_eq!(engine.raise_boot(u64::MAX - 1).unwrap(), u64::MAX - 1);
        // A wiped data directory starts above them too (from the clock).
        let wiped = tempfile::tempdir().unwrap();
        let fresh = open(wiped.path()).unwrap().boot();
        assert!(fresh > first, "{fresh} after {first}");
    }

    /// A node downgraded past a change of the data's layout refuses to start, saying why,
    /// and leaves the directory as it was.
    #[test]
    fn a_data_directory_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open(dir.path()).unwrap();
            let stored = engine.tree().get(keys::FORMAT).unwrap();
            assert_eq!(stored.as_deref(), Some(&FORMAT.to_be_bytes()[..]));
            // As a later build would leave it.
            let later = (FORMAT + 1).to_be_bytes();
            engine.tree().insert(keys::FORMAT, &later).unwrap();
            engine.sync().unwrap();
        }
        let err = open(dir.path()).unwrap_err();
        let expected = format!(
            "storage: {} was written by a newer flotilla (data format {}; this one reads \
             formats up to {FORMAT}); start that version or a later one on it",
            dir.path().display(),
            FORMAT + 1
        );
        assert_eq!(err.to_string(), expected);
        // Refused again: the format stays the later one.
        assert_eq!(open(dir.path()).unwrap_err().to_string(), expected);
    }

    #[test]
    fn a_data_directory_of_the_sled_raft_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open(dir.path()).unwrap();
            // Where versions before the raft engine kept a range's hard state.
            let mut batch = sled::Batch::default();
            batch.insert(keys::range_key(RangeId(7), b'h'), b"".as_slice());
            engine.write(batch, AppliedStates::default()).unwrap();
            engine.sync().unwrap();
        }
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::OldFormat(_)), "{err}");
        assert!(err.to_string().contains("empty data directory"), "{err}");
    }

    #[test]
    fn an_unknown_range_is_uninitialized_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).unwrap();
        let s = RangeStorage::load(engine, RangeId(9)).unwrap();
        assert!(!s.initial_state().unwrap().initialized());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
    }

    #[test]
    fn bootstrap_sets_the_truncation_point() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = bootstrapped(dir.path());
        let state = s.initial_state().unwrap();
        assert!(state.initialized());
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(state.hard_state.commit, BOOTSTRAP_INDEX);
        assert_eq!(s.first_index().unwrap(), BOOTSTRAP_INDEX + 1);
        assert_eq!(s.last_index().unwrap(), BOOTSTRAP_INDEX);
        // The term at the truncation point must answer, or raft panics on restart.
        assert_eq!(s.term(BOOTSTRAP_INDEX).unwrap(), BOOTSTRAP_TERM);
        assert!(matches!(
            s.term(BOOTSTRAP_INDEX - 1),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(BOOTSTRAP_INDEX, BOOTSTRAP_INDEX + 1, None, ctx()),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
    }

    #[test]
    fn entries_bounds_sizes_and_conflicting_tails() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        append(&engine, &mut s, (6..=10).map(|i| entry(i, 6)).collect());
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(8).unwrap(), 6);
        let got = s.entries(6, 11, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![6, 7, 8, 9, 10]
        );
        // A size limit still returns at least one entry.
        assert_eq!(s.entries(6, 11, 0, ctx()).unwrap().len(), 1);
        let one = u64::from(entry(6, 6).compute_size());
        assert_eq!(s.entries(6, 11, one * 2, ctx()).unwrap().len(), 2);
        assert!(matches!(
            s.entries(6, 12, None, ctx()),
            Err(raft::Error::Store(RaftStorageError::Unavailable))
        ));
        assert!(matches!(
            s.term(11),
            Err(raft::Error::Store(RaftStorageError::Unavailable))
        ));

        // A new leader's entries replace the tail from 8 on.
        let mut batch = WriteBatch::default();
        s.stage_entries(&[entry(8, 7)], &mut batch);
        engine.commit(batch).unwrap();
        assert_eq!(s.last_index().unwrap(), 8);
        assert_eq!(s.term(8).unwrap(), 7);
        assert_eq!(engine.log_entries(RangeId(7)).unwrap().len(), 3);
    }

    #[test]
    fn the_entry_cache_answers_exactly_as_the_stored_log() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        append(&engine, &mut s, (6..=10).map(|i| entry(i, 6)).collect());
        append(&engine, &mut s, vec![entry(8, 7)]); // a replaced tail
        append(&engine, &mut s, (9..=12).map(|i| entry(i, 7)).collect());
        // Large entries.
        let large = |i| Entry {
            data: vec![i as u8; 10_000].into(),
            ..entry(i, 7)
        };
        append(&engine, &mut s, (13..=20).map(large).collect());
        s.forget_cached_before(9);
        // A fresh load has no cache: everything comes from sled.
        let stored = RangeStorage::load(s.engine.clone(), RangeId(7)).unwrap();
        let one = u64::from(entry(6, 6).compute_size());
        for low in 5..=21 {
            assert_eq!(s.term(low).ok(), stored.term(low).ok(), "term {low}");
            for high in low..=22 {
                for max in [None, Some(0), Some(one * 2), Some(u64::MAX)] {
                    assert_eq!(
                        s.entries(low, high, max, ctx()).ok(),
                        stored.entries(low, high, max, ctx()).ok(),
                        "entries [{low}, {high}) max {max:?}"
                    );
                }
            }
        }
        assert_eq!(s.entries(8, 13, None, ctx()).unwrap()[0].term, 7);
    }

    #[test]
    fn entries_the_cache_lacks_are_read_from_the_files_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        // Every tenth entry large, so that size limits fall on either side of the cache's start.
        let mixed = |i: u64| Entry {
            data: vec![i as u8; if i.is_multiple_of(10) { 10_000 } else { 100 }].into(),
            ..entry(i, 6)
        };
        append(&engine, &mut s, (6..=120).map(mixed).collect());
        // The cache keeps 57 to 120.
        s.forget_cached_before(57);
        let stored = RangeStorage::load(s.engine.clone(), RangeId(7)).unwrap();
        for low in (5..=121).step_by(4) {
            for high in (low..=122).step_by(3) {
                for max in [None, Some(0), Some(5_000), Some(15_000), Some(u64::MAX)] {
                    assert_eq!(
                        s.entries(low, high, max, ctx()).ok(),
                        stored.entries(low, high, max, ctx()).ok(),
                        "entries [{low}, {high}) max {max:?}"
                    );
                }
            }
        }
        let read = |from: u64| {
            let before = engine.entries_read();
            let got = s.entries(from, 121, None, ctx()).unwrap();
            let indexes: Vec<u64> = got.iter().map(|e| e.index).collect();
            assert_eq!(indexes, (from..=120).collect::<Vec<_>>());
            engine.entries_read() - before
        };
        assert_eq!(read(40), 17, "only 40 to 56 come from the files");
        assert_eq!(read(57), 0);
        assert_eq!(read(6), 51);
    }

    #[test]
    fn compaction_drops_the_log_up_to_an_index_for_good() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, mut s) = bootstrapped(dir.path());
            append(&engine, &mut s, (6..=10).map(|i| entry(i, 6)).collect());
            let mut batch = WriteBatch::default();
            s.stage_compact(8, &mut batch).unwrap();
            // What the compacted entries did must be durable in sled first.
            assert!(batch.needs_data_sync());
            engine.commit(batch).unwrap();
            assert_eq!(s.first_index().unwrap(), 9);
            assert_eq!(
                s.term(8).unwrap(),
                6,
                "the term at the truncation point stays known"
            );
            assert!(matches!(
                s.entries(8, 10, None, ctx()),
                Err(raft::Error::Store(RaftStorageError::Compacted))
            ));
            // Compacting to an older point changes nothing.
            let mut batch = WriteBatch::default();
            s.stage_compact(7, &mut batch).unwrap();
            engine.commit(batch).unwrap();
            assert_eq!(s.first_index().unwrap(), 9);
        }
        let engine = open(dir.path()).unwrap();
        let s = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (9, 10));
        assert_eq!(
            engine
                .log_entries(RangeId(7))
                .unwrap()
                .iter()
                .map(|e| e.index)
                .collect::<Vec<_>>(),
            vec![9, 10]
        );
    }

    #[test]
    fn two_logs_read_on_one_thread_give_each_its_own_entries() {
        // The same history in both, but for the entries' bytes: equal blocks at equal offsets.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let written = |dir: &Path, byte: u8| {
            let (engine, mut s) = bootstrapped(dir);
            let entries = (6..=8)
                .map(|index| Entry {
                    data: vec![byte; 64].into(),
                    ..entry(index, 6)
                })
                .collect();
            append(&engine, &mut s, entries);
            engine
        };
        let (ea, eb) = (written(a.path(), b'a'), written(b.path(), b'b'));
        for _ in 0..2 {
            for (engine, byte) in [(&ea, b'a'), (&eb, b'b')] {
                let read = engine.log_entries(RangeId(7)).unwrap();
                assert_eq!(read.len(), 3);
                assert!(
                    read.iter().all(|e| e.data.iter().all(|&x| x == byte)),
                    "a log read another's entries"
                );
            }
        }
    }

    #[test]
    fn log_file_space_is_made_of_written_zeros_and_the_writer_keeps_its_place() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.raftlog");
        let files = LogFiles { durable: true };
        let handle = Arc::new(files.create(&path).unwrap());
        let mut writer = files.new_writer(handle.clone()).unwrap();
        // As raft-engine does: make room where the file ends, then write on from where the
        // writer is, which is at or before it.
        writer.write_all(b"header").unwrap();
        writer.allocate(6, 1 << 20).unwrap();
        writer.write_all(b"entries").unwrap();
        writer.allocate(6 + (1 << 20), 2 << 20).unwrap();
        writer.write_all(b"more").unwrap();
        let size = 6 + (3 << 20);
        assert_eq!(handle.file_size().unwrap(), size);

        // The space is data, not a hole. On ext4 and XFS, fallocated space never written (nor
        // read since, which puts it in the page cache) is reported as a hole, and each sync of
        // a write into it also writes the file's metadata. (Other file systems may report
        // zeros as holes, or fallocated space as data: the check is for these two.)
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            const EXT4: i64 = 0xEF53;
            const XFS: i64 = 0x5846_5342;
            let file = File::open(&path).unwrap();
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) }, 0);
            #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
            if [EXT4, XFS].contains(&(fs.f_type as i64)) {
                let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
                assert_eq!(hole, size as i64, "the log file has a hole");
            }
        }

        let mut bytes = Vec::new();
        let mut reader = files.new_reader(handle.clone()).unwrap();
        reader.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), size);
        assert_eq!(&bytes[..17], b"headerentriesmore");
        assert!(bytes[17..].iter().all(|&b| b == 0));

        // As raft-engine does when it closes a file: the zeros past the entries go.
        writer.truncate(17).unwrap();
        assert_eq!(handle.file_size().unwrap(), 17);
    }

    #[test]
    fn purging_bounds_the_log_on_disk_and_keeps_every_entry_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = LogSizes {
            file: 64 << 10,
            purge: 512 << 10,
        };
        let open = || open_sized(dir.path(), sizes).unwrap();
        // Purged files are kept for reuse, up to a number: they count.
        let log_bytes = || -> u64 {
            std::fs::read_dir(dir.path().join("raft"))
                .unwrap()
                .map(|f| f.unwrap().metadata().unwrap().len())
                .sum()
        };
        let big = |index| Entry {
            data: vec![index as u8; 1024].into(),
            ..entry(index, 6)
        };
        let engine = open();
        let mut batch = WriteBatch::default();
        for (id, start, end) in [(7, b"a", b"h"), (8, b"h", b"p"), (9, b"p", b"z")] {
            let d = RangeDescriptor {
                id: RangeId(id),
                start_key: start.to_vec(),
                end_key: end.to_vec(),
                ..descriptor()
            };
            engine.bootstrap_range(&d, &mut batch).unwrap();
        }
        engine.commit(batch).unwrap();
        let load =
            |engine: &Arc<Engine>, id| RangeStorage::load(engine.clone(), RangeId(id)).unwrap();
        let (mut busy, mut quiet, mut long) =
            (load(&engine, 7), load(&engine, 8), load(&engine, 9));
        // In the oldest file: a quiet range's few entries, a long one's many, never compacted
        // unless the purge asks.
        append(&engine, &mut quiet, (6..=8).map(big).collect());
        append(&engine, &mut long, (6..=105).map(big).collect());
        // Then a busy range writes 4 MiB, compacted as it goes, purging now and then.
        let mut asked = BTreeSet::new();
        for round in 1..=400 {
            let next = busy.last_index().unwrap() + 1;
            append(&engine, &mut busy, (next..next + 10).map(big).collect());
            let mut batch = WriteBatch::default();
            busy.stage_compact(next + 5, &mut batch).unwrap();
            if round % 50 == 0 {
                for range in engine.purge_log().unwrap() {
                    asked.insert(range);
                    // What MultiRaft does: compact up to what the range applied (here, all).
                    assert_eq!(
                        range,
                        RangeId(9),
                        "only the long log is too long to rewrite"
                    );
                    long.stage_compact(105, &mut batch).unwrap();
                }
            }
            engine.commit(batch).unwrap();
        }
        assert_eq!(asked, BTreeSet::from([RangeId(9)]));
        let on_disk = log_bytes();
        // Unpurged, 4 MiB; purged, the purge threshold and the files kept for reuse (half as
        // much again), give or take a file.
        assert!(
            on_disk < 3 * sizes.purge,
            "{on_disk} bytes of log for 4 MiB written"
        );

        let check = |engine: &Arc<Engine>| {
            let (busy, quiet, long) = (load(engine, 7), load(engine, 8), load(engine, 9));
            let last = busy.last_index().unwrap();
            assert_eq!(busy.first_index().unwrap(), last - 3);
            let kept = busy.entries(last - 3, last + 1, None, ctx()).unwrap();
            assert_eq!(kept, (last - 3..=last).map(big).collect::<Vec<_>>());
            let few = quiet.entries(6, 9, None, ctx()).unwrap();
            assert_eq!(few, (6..=8).map(big).collect::<Vec<_>>());
            assert_eq!(
                (long.first_index().unwrap(), long.last_index().unwrap()),
                (106, 105)
            );
            assert_eq!(long.term(105).unwrap(), 6);
        };
        check(&engine);
        drop((engine, busy, quiet, long));
        check(&open());
    }

    /// A purge a stop interrupted is listed when the node opens its data again (the Store
    /// finishes it then, see `Store::resume_purges`), and goes on from where it stopped.
    #[test]
    fn a_purge_left_unfinished_is_listed_at_the_next_start_and_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let d = descriptor();
        {
            let (engine, _) = bootstrapped(dir.path());
            let mut batch = WriteBatch::default();
            for i in 0..PURGE_CHUNK + 5 {
                batch
                    .data()
                    .insert(keys::user_key(format!("c{i}").as_bytes()), b"v".as_slice());
            }
            engine.commit(batch).unwrap();
            let (mut batch, mut states) = (sled::Batch::default(), AppliedStates::default());
            let span = Some((d.start_key.as_slice(), d.end_key.as_slice()));
            let replica = ReplicaId::new(NodeId(1), 0);
            engine
                .stage_destroy(d.id, replica, span, &mut batch, &mut states)
                .unwrap();
            engine.write(batch, states).unwrap();
            // Stopped after its first chunk.
            assert!(!engine.purge(d.id, &|| false).unwrap());
            assert_eq!(
                engine.count_user_keys(std::slice::from_ref(&d)).unwrap().0,
                5
            );
            engine.sync().unwrap();
        }
        let engine = open(dir.path()).unwrap();
        assert_eq!(engine.purges().unwrap(), vec![d.id]);
        assert!(engine.purge(d.id, &|| true).unwrap());
        assert_eq!(engine.purges().unwrap(), vec![]);
        assert_eq!(engine.count_user_keys(&[d]).unwrap().0, 0);
    }

    #[test]
    fn destroying_a_range_leaves_only_its_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = bootstrapped(dir.path());
        let mut other = descriptor();
        other.id = RangeId(8);
        other.start_key = b"m".to_vec();
        other.end_key = Vec::new();
        let mut batch = WriteBatch::default();
        engine.bootstrap_range(&other, &mut batch).unwrap();
        for k in [&b"b"[..], b"l", b"m", b"z"] {
            batch.data().insert(keys::user_key(k), b"v".as_slice());
        }
        // Entries in both ranges' indexes of deadlines.
        let d = descriptor();
        let (mine, theirs) = (
            keys::expiry_key(d.id, 5, b"l"),
            keys::expiry_key(other.id, 5, b"z"),
        );
        batch.data().insert(mine.clone(), b"".as_slice());
        batch.data().insert(theirs.clone(), b"".as_slice());
        engine.commit(batch).unwrap();
        // Destroyed while a `FLUSHDB` of it was being deleted: its record goes with it.
        engine.begin_flush(d.id).unwrap();

        let replica = ReplicaId::new(NodeId(2), 0);
        let (mut batch, mut states) = (sled::Batch::default(), AppliedStates::default());
        engine
            .stage_destroy(
                d.id,
                replica,
                Some((&d.start_key, &d.end_key)),
                &mut batch,
                &mut states,
            )
            .unwrap();
        engine.write(batch, states).unwrap();

        assert_eq!(engine.descriptors().unwrap(), vec![other.clone()]);
        assert_eq!(
            engine.tombstones().unwrap().into_iter().collect::<Vec<_>>(),
            vec![(RangeId(7), replica)]
        );
        // Of its state in sled, the tombstone is left, and its index of deadlines, which goes
        // with its user keys in a purge of their own.
        let state = || {
            engine
                .tree()
                .scan_prefix(keys::range_prefix(d.id))
                .keys()
                .map(|k| k.unwrap().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(state(), vec![mine, keys::range_key(d.id, keys::TOMBSTONE)]);
        assert_eq!(engine.get_user(b"b").unwrap(), Some(b"v".to_vec()));
        assert_eq!(engine.purges().unwrap(), vec![d.id]);
        assert!(engine.purge(d.id, &|| true).unwrap());
        assert_eq!(engine.purges().unwrap(), vec![]);
        assert_eq!(engine.get_user(b"b").unwrap(), None);
        assert_eq!(engine.get_user(b"l").unwrap(), None);
        assert_eq!(state(), vec![keys::range_key(d.id, keys::TOMBSTONE)]);
        // The neighbour keeps its data and state.
        assert!(engine.tree().contains_key(&theirs).unwrap());
        assert_eq!(engine.get_user(b"m").unwrap(), Some(b"v".to_vec()));
        assert_eq!(engine.get_user(b"z").unwrap(), Some(b"v".to_vec()));
        assert_eq!(engine.applied(RangeId(8)).unwrap().index, BOOTSTRAP_INDEX);
        // MultiRaft deletes the log: a replica created later starts from nothing.
        assert!(engine.has_log(d.id));
        engine.clean_log(d.id).unwrap();
        assert!(!engine.has_log(d.id));
        assert!(engine.has_log(RangeId(8)));
        let s = RangeStorage::load(engine.clone(), d.id).unwrap();
        assert!(!s.initial_state().unwrap().initialized());
        assert_eq!(s.last_index().unwrap(), 0);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, mut s) = bootstrapped(dir.path());
            let mut batch = WriteBatch::default();
            s.stage_entries(
                &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>(),
                &mut batch,
            );
            let mut hs = s.hard_state().clone();
            hs.term = 6;
            hs.vote = 2;
            hs.commit = 8;
            s.stage_hard_state(hs, &mut batch);
            engine.commit(batch).unwrap();
        }
        let engine = open(dir.path()).unwrap();
        let s = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
        let state = s.initial_state().unwrap();
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (6, 2, 8)
        );
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.last_index().unwrap(), 9);
        assert_eq!(
            s.entries(9, 10, None, ctx()).unwrap()[0].data.as_ref(),
            b"e9"
        );
        assert_eq!(engine.descriptors().unwrap(), vec![descriptor()]);
        assert_eq!(engine.applied(RangeId(7)).unwrap().index, BOOTSTRAP_INDEX);
    }

    /// Forty ranges of `k01`-`k41`, bootstrapped and written in `dir`.
    fn forty_ranges(dir: &Path) -> (Arc<Engine>, Vec<RangeDescriptor>) {
        let engine = open(dir).unwrap();
        let ranges: Vec<RangeDescriptor> = (1..=40u64)
            .map(|i| RangeDescriptor {
                id: RangeId(i),
                start_key: format!("k{i:02}").into_bytes(),
                end_key: format!("k{:02}", i + 1).into_bytes(),
                ..descriptor()
            })
            .collect();
        let mut batch = WriteBatch::default();
        for d in &ranges {
            engine.bootstrap_range(d, &mut batch).unwrap();
        }
        engine.commit(batch).unwrap();
        (engine, ranges)
    }

    fn round_value(range: RangeId, index: u64) -> Vec<u8> {
        vec![(range.0 * 31 + index) as u8; 1000]
    }

    /// Stages a round that appends entries `first`..`first + 3` of 1,000 bytes to every range
    /// (term 6), with a hard state committing them.
    fn stage_round(engine: &Arc<Engine>, ranges: &[RangeDescriptor], first: u64) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for d in ranges {
            let mut s = RangeStorage::load(engine.clone(), d.id).unwrap();
            let entries: Vec<Entry> = (first..first + 4)
                .map(|index| Entry {
                    index,
                    term: 6,
                    data: round_value(d.id, index).into(),
                    ..Default::default()
                })
                .collect();
            s.stage_entries(&entries, &mut batch);
            let mut hs = s.hard_state().clone();
            hs.term = 6;
            hs.commit = first + 3;
            s.stage_hard_state(hs, &mut batch);
        }
        batch
    }

    /// Whether a range, reopened, has the whole round that began at `first` (`true`) or none
    /// of it (`false`), with every round before it (from index 6).
    fn has_round(engine: &Arc<Engine>, range: RangeId, first: u64) -> bool {
        let s = RangeStorage::load(engine.clone(), range).unwrap();
        let whole = round_in(&s, range, first);
        // raft starts on it (it checks the commit index against the log).
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let config = raft::Config {
            id: 1,
            ..Default::default()
        };
        raft::RawNode::new(&config, s, &logger).unwrap();
        whole
    }

    fn round_in(s: &RangeStorage, range: RangeId, first: u64) -> bool {
        let hs = s.initial_state().unwrap().hard_state;
        let last = s.last_index().unwrap();
        let whole = (hs.commit, last) == (first + 3, first + 3);
        if !whole {
            assert_eq!((hs.commit, last), (first - 1, first - 1), "{range}");
        }
        if last > BOOTSTRAP_INDEX {
            assert_eq!(hs.term, 6, "{range}");
            assert_eq!(s.term(last).unwrap(), 6, "{range}");
            let entries = s.entries(6, last + 1, None, ctx()).unwrap();
            let data: Vec<Vec<u8>> = entries.iter().map(|e| e.data.to_vec()).collect();
            let want: Vec<Vec<u8>> = (6..=last).map(|i| round_value(range, i)).collect();
            assert_eq!(data, want, "{range}");
        }
        whole
    }

    /// A round of many ranges is written in several raft-engine batches (`LOG_BATCH_BYTES`),
    /// synced once: after reopening, every range has all its entries and the hard state whose
    /// commit index covers them.
    #[test]
    fn a_round_written_in_several_log_batches_survives_reopening_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, ranges) = forty_ranges(dir.path());
            let batch = stage_round(&engine, &ranges, 6);
            assert!(batch.logs.len() >= 3, "{} batches", batch.logs.len() + 1);
            engine.commit(batch).unwrap();
        }
        let engine = open(dir.path()).unwrap();
        for id in 1..=40 {
            assert!(has_round(&engine, RangeId(id), 6), "r{id}");
        }
    }

    /// Should a node stop after writing only some of a round's batches, each range has all of
    /// the round or none of it: its hard state never commits entries the log lacks.
    #[test]
    fn a_round_cut_short_between_its_log_batches_leaves_every_range_whole() {
        let batches = {
            let dir = tempfile::tempdir().unwrap();
            let (engine, ranges) = forty_ranges(dir.path());
            stage_round(&engine, &ranges, 6).logs.len() + 1
        };
        for written in 0..=batches {
            let dir = tempfile::tempdir().unwrap();
            {
                let (engine, ranges) = forty_ranges(dir.path());
                let batch = stage_round(&engine, &ranges, 6);
                let logs = batch.logs.into_iter().chain([batch.log]);
                engine.write_log(logs.take(written).collect()).unwrap();
            }
            let engine = open(dir.path()).unwrap();
            let whole = (1..=40)
                .filter(|&id| has_round(&engine, RangeId(id), 6))
                .count();
            match written {
                0 => assert_eq!(whole, 0),
                w if w == batches => assert_eq!(whole, 40),
                _ => assert!(whole > 0 && whole < 40, "{written} batches: {whole}"),
            }
        }
    }

    /// The bytes of each of the raft log's files in `dir`.
    fn log_files(dir: &Path) -> BTreeMap<OsString, Vec<u8>> {
        std::fs::read_dir(dir.join("raft"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// A power failure during a round's `fdatasync` can lose any of the pages its batches were
    /// written to, whichever others reached the device. raft-engine's recovery drops a batch
    /// whose index part is torn, and everything after it, but checks the entries of only a
    /// file's last batch: a batch whose entries alone are torn, followed by whole ones, is
    /// kept. The node must still start, with each range holding all of the round or none of
    /// it, and every round synced before; and raft must start on it.
    #[test]
    fn a_round_torn_by_a_power_failure_leaves_every_range_whole() {
        // The ranges' first entries, and a round after synced ones.
        for first in [6, 14] {
            let outcomes: BTreeSet<Vec<bool>> = torn_copies(first, false, |dir| {
                let whole = || {
                    let engine = open(dir).unwrap();
                    (1..=40)
                        .map(|id| has_round(&engine, RangeId(id), first))
                        .collect::<Vec<bool>>()
                };
                let once = whole();
                assert_eq!(whole(), once, "opened again");
                once
            })
            .into_iter()
            .collect();
            // Ranges are staged in the order of their ids. Some tears lost the round of every
            // range; some lost it only in a batch that whole ones followed.
            assert!(outcomes.contains(&vec![false; 40]));
            let middle = |whole: &Vec<bool>| whole.windows(2).any(|w| !w[0] && w[1]);
            assert!(outcomes.iter().any(middle), "{outcomes:?}");
        }
    }

    /// Entries the state machine applied were synced before: one that cannot be read was
    /// damaged by the device, not torn, and cutting it could lose an acknowledged write. The
    /// node refuses to start.
    #[test]
    fn an_unreadable_applied_entry_is_refused_not_cut() {
        let refused = torn_copies(10, true, |dir| match open(dir) {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        });
        assert!(
            refused
                .iter()
                .flatten()
                .any(|e| e.contains("applied (at 13) and so synced, cannot be read")),
            "{refused:?}"
        );
    }

    /// Writes rounds of entries 6-9, 10-13 and so on up to `first` (synced), and one from
    /// `first`, with applied states at its end if `applied`; then runs `check` on copies of
    /// the node with pages of the last round torn: each page of it alone, and every other one.
    fn torn_copies<T>(first: u64, applied: bool, check: impl Fn(&Path) -> T) -> Vec<T> {
        const PAGE: usize = 4096;
        let written = tempfile::tempdir().unwrap();
        let before = {
            let (engine, ranges) = forty_ranges(written.path());
            for earlier in (6..first).step_by(4) {
                engine
                    .commit(stage_round(&engine, &ranges, earlier))
                    .unwrap();
            }
            let before = log_files(written.path());
            let batch = stage_round(&engine, &ranges, first);
            assert!(batch.logs.len() >= 3, "{} batches", batch.logs.len() + 1);
            engine.commit(batch).unwrap();
            if applied {
                let mut states = AppliedStates::default();
                let at = LogPosition {
                    index: first + 3,
                    term: 6,
                };
                for d in &ranges {
                    states.put(d.id, at, &Proposers::new(), RangeSize::default());
                }
                engine.write(sled::Batch::default(), states).unwrap();
                engine.sync().unwrap();
            }
            before
        };
        let after = log_files(written.path());
        let changed: Vec<&OsString> = after
            .iter()
            .filter(|(name, bytes)| before.get(*name) != Some(bytes))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        let name = changed[0];
        let (new, old) = (&after[name], before.get(name).cloned().unwrap_or_default());
        let old_byte = |i: usize| old.get(i).copied().unwrap_or(0);
        let differs: Vec<usize> = (0..new.len()).filter(|&i| new[i] != old_byte(i)).collect();
        let (lo, hi) = (differs[0], differs[differs.len() - 1] + 1);
        // Tears the round's part of the pages `lost` (the page's bytes as they were before).
        let torn = |lost: &dyn Fn(usize) -> bool| {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(written.path(), dir.path());
            let mut bytes = new.clone();
            for (i, b) in bytes.iter_mut().enumerate().take(hi).skip(lo) {
                if lost(i / PAGE) {
                    *b = old_byte(i);
                }
            }
            std::fs::write(dir.path().join("raft").join(name), bytes).unwrap();
            check(dir.path())
        };
        let mut outcomes: Vec<T> = (lo / PAGE..=(hi - 1) / PAGE)
            .map(|page| torn(&|p| p == page))
            .collect();
        outcomes.push(torn(&|p| p % 2 == 0));
        outcomes.push(torn(&|p| p % 2 == 1));
        outcomes
    }

    /// A purge must not see a round's batches before they are synced (see `write_log`): it
    /// says it is about to run, so that rounds from then on sync each batch, and waits for the
    /// round being written.
    #[test]
    fn a_purge_waits_for_the_round_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).unwrap();
        let round = engine.log_writes.lock().unwrap();
        let (done, purged) = std::sync::mpsc::channel();
        let purger = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                engine.purge_log().unwrap();
                done.send(()).unwrap();
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !engine.purging.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the purge never said so"
            );
            std::thread::yield_now();
        }
        let wait = std::time::Duration::from_millis(50);
        assert!(purged.recv_timeout(wait).is_err(), "purged during a round");
        drop(round);
        purged
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        purger.join().unwrap();
        assert!(!engine.purging.load(Ordering::SeqCst));
    }

    #[test]
    fn installing_a_snapshot_replaces_data_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        let mut batch = WriteBatch::default();
        // The log goes past the snapshot, with entries of an older term: all of it goes.
        s.stage_entries(
            &(6..=25).map(|i| entry(i, 6)).collect::<Vec<_>>(),
            &mut batch,
        );
        batch
            .data()
            .insert(keys::user_key(b"b-stale"), b"x".as_slice());
        batch
            .data()
            .insert(keys::user_key(b"z-other-range"), b"y".as_slice());
        // An entry of the range's index of deadlines that the snapshot's data does not have.
        let stale = keys::expiry_key(RangeId(7), 5, b"b-stale");
        batch.data().insert(stale, b"".as_slice());
        engine.commit(batch).unwrap();
        // A `FLUSHDB`'s deletion a stop cut short: the snapshot's data replaces what it left.
        engine.begin_flush(RangeId(7)).unwrap();
        assert_eq!(engine.flushing().unwrap(), BTreeSet::from([RangeId(7)]));

        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 8;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2], vec![4])));
        snap.data = codec::encode(&SnapshotData {
            descriptor: descriptor(),
            pairs: vec![
                (b"c".to_vec(), b"3".to_vec()),
                (b"d".to_vec(), crate::value::stored(b"4", Some(1000))),
            ],
            proposers: Proposers::from([(NodeId(2), (9, 41))]),
        })
        .into();
        let mut batch = WriteBatch::default();
        let d = s.stage_snapshot(&snap, &mut batch).unwrap();
        engine.commit(batch).unwrap();
        assert!(engine.flushing().unwrap().is_empty());
        // The index of deadlines is made again from the snapshot's values.
        let expired = |now| engine.expired(RangeId(7), now, 10, 1 << 20).unwrap();
        let past = expired(u64::MAX);
        assert_eq!(past.entries, [(1000, b"d".to_vec())]);
        assert!(past.any);
        let past = expired(1000);
        assert!(past.entries.is_empty());
        assert!(past.any);
        assert_eq!(d, descriptor());
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(20).unwrap(), 8);
        assert!(engine.log_entries(RangeId(7)).unwrap().is_empty());
        assert_eq!(engine.get_user(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(engine.get_user(b"b-stale").unwrap(), None);
        // The proposers' last commands come with the data: duplicates stay recognised. The
        // range's size is what the snapshot held: keys and stored values.
        assert_eq!(
            engine.applied_state(RangeId(7)).unwrap(),
            AppliedState {
                position: LogPosition { index: 20, term: 8 },
                proposers: Proposers::from([(NodeId(2), (9, 41))]),
                size: RangeSize::of(1 + 1 + 1 + 10),
            }
        );
        assert_eq!(
            engine.get_user(b"z-other-range").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(
            engine.applied(RangeId(7)).unwrap(),
            LogPosition { index: 20, term: 8 }
        );
        drop(s);
        let s = RangeStorage::load(engine, RangeId(7)).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.learners, vec![4]);
        assert_eq!(s.term(20).unwrap(), 8);
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 20)
        );
    }

    /// The ranges' own state is read past their indexes of deadlines, whatever their size:
    /// the kinds before and after `'e'` of the same range, and the next range's.
    #[test]
    fn range_states_step_over_the_indexes_of_deadlines() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let want = [
            keys::range_key(RangeId(1), keys::DESCRIPTOR),
            keys::range_key(RangeId(1), keys::TOMBSTONE),
            keys::range_key(RangeId(2), keys::APPLIED),
        ];
        for k in &want {
            tree.insert(k, b"s".as_slice()).unwrap();
        }
        for i in 0..1000u64 {
            let key = format!("k{i}");
            tree.insert(
                keys::expiry_key(RangeId(1), i, key.as_bytes()),
                b"".as_slice(),
            )
            .unwrap();
        }
        let found: Vec<Vec<u8>> = range_states(&tree)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(found, want);
    }

    /// A node's values from before key expiry (a value's bytes alone) are given their tag
    /// when it opens, once, going on from where an open stopped midway.
    #[test]
    fn values_stored_before_deadlines_are_tagged_once() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * TAG_BATCH + 7;
        let key = |i: usize| keys::user_key(format!("k{i:06}").as_bytes());
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree(TREE).unwrap();
            for i in 0..n {
                // Values that a tag byte would be mistaken for, and an empty one.
                let value = match i % 3 {
                    0 => vec![],
                    1 => vec![1; 12],
                    _ => format!("v{i}").into_bytes(),
                };
                tree.insert(key(i), value).unwrap();
            }
            // An open that stopped after its first batch.
            for i in 0..TAG_BATCH {
                let v = tree.get(key(i)).unwrap().unwrap();
                tree.insert(key(i), crate::value::stored(&v, None)).unwrap();
            }
            tree.insert(keys::TAGGED_UP_TO, key(TAG_BATCH - 1)).unwrap();
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let engine = open(dir.path()).unwrap();
            for i in 0..n {
                let k = format!("k{i:06}");
                let stored = engine.get_user(k.as_bytes()).unwrap().unwrap();
                let want = match i % 3 {
                    0 => vec![],
                    1 => vec![1; 12],
                    _ => format!("v{i}").into_bytes(),
                };
                assert_eq!(crate::value::bytes(&stored), want, "{k}");
                assert_eq!(crate::value::deadline(&stored), None, "{k}");
            }
            assert!(engine.tree().get(keys::TAGGED_UP_TO).unwrap().is_none());
        }
    }

    /// A snapshot of index 20, term 8, for range 7, with one pair.
    fn snapshot_at_20() -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 8;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        snap.data = codec::encode(&SnapshotData {
            descriptor: descriptor(),
            pairs: vec![(b"c".to_vec(), b"3".to_vec())],
            proposers: Proposers::new(),
        })
        .into();
        snap
    }

    #[test]
    fn a_crash_between_the_two_writes_of_a_snapshot_restarts_the_log_after_it() {
        for last in [9, 25] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (engine, mut s) = bootstrapped(dir.path());
                append(&engine, &mut s, (6..=last).map(|i| entry(i, 6)).collect());
                let mut batch = WriteBatch::default();
                s.stage_snapshot(&snapshot_at_20(), &mut batch).unwrap();
                // The sled part is written and synced first; the crash comes before the log.
                engine.write(batch.data, batch.applied).unwrap();
                engine.sync().unwrap();
            }
            let engine = open(dir.path()).unwrap();
            let s = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
            assert_eq!(
                (s.first_index().unwrap(), s.last_index().unwrap()),
                (21, 20),
                "a log to {last}"
            );
            assert_eq!(s.term(20).unwrap(), 8);
            let hs = &s.initial_state().unwrap().hard_state;
            assert_eq!((hs.term, hs.commit), (8, 20));
            assert_eq!(engine.get_user(b"c").unwrap(), Some(b"3".to_vec()));
            // The repair was written: a second load finds the same.
            drop(s);
            let s = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
            assert_eq!(
                (s.first_index().unwrap(), s.last_index().unwrap()),
                (21, 20)
            );
            assert!(engine.log_entries(RangeId(7)).unwrap().is_empty());
        }
    }

    #[test]
    fn a_log_that_continues_the_applied_index_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, mut s) = bootstrapped(dir.path());
            append(&engine, &mut s, (6..=25).map(|i| entry(i, 6)).collect());
            // The Store applied up to 20.
            let mut states = AppliedStates::default();
            states.put(
                RangeId(7),
                LogPosition { index: 20, term: 6 },
                &Proposers::new(),
                RangeSize::default(),
            );
            engine.write(sled::Batch::default(), states).unwrap();
            engine.sync().unwrap();
        }
        let engine = open(dir.path()).unwrap();
        let s = RangeStorage::load(engine, RangeId(7)).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 25));
    }

    /// Writes applied states for `ranges` at `index` (term 6) in one batch, as the Store does.
    fn write_applied(engine: &Engine, ranges: &[u64], index: u64) {
        let mut states = AppliedStates::default();
        for &r in ranges {
            let state = applied_state(r, index);
            states.put(RangeId(r), state.position, &state.proposers, state.size);
        }
        engine.write(sled::Batch::default(), states).unwrap();
    }

    /// The applied state `write_applied` writes: a size for even ranges only.
    fn applied_state(range: u64, index: u64) -> AppliedState {
        AppliedState {
            position: LogPosition { index, term: 6 },
            proposers: Proposers::from([(NodeId(2), (1, index))]),
            size: RangeSize {
                measured: range.is_multiple_of(2).then_some(range << 40),
                grown: index,
            },
        }
    }

    fn records(engine: &Engine) -> usize {
        engine.tree().scan_prefix(keys::RECORDS).count()
    }

    #[test]
    fn applied_states_are_recorded_per_batch_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let n = APPLIED_RECORDS as u64 + 5;
        // Ranges 1 and 2 and 100 more: four records.
        let first: Vec<u64> = [1, 2].into_iter().chain(1000..1100).collect();
        {
            let engine = open(dir.path()).unwrap();
            write_applied(&engine, &first, 10);
            assert_eq!(records(&engine), 4);
            // Range 2 in every batch, with a range written only then.
            for i in 1..=n {
                write_applied(&engine, &[2, 10_000 + i], 10 + i);
                // A record whose states were all written again is deleted (here, range 2's
                // before the last), and the oldest of too many records is retired.
                assert_eq!(records(&engine), (4 + i as usize).min(APPLIED_RECORDS));
            }
            // The first records were retired: their states went to their ranges' keys.
            for range in [1, 1000, 1099] {
                let key = engine
                    .tree()
                    .get(keys::range_key(RangeId(range), keys::APPLIED));
                assert!(key.unwrap().is_some(), "range {range}");
            }
            engine.sync().unwrap();
        }
        let engine = open(dir.path()).unwrap();
        let mut expected: Vec<(u64, u64)> = first.iter().map(|&r| (r, 10)).collect();
        expected[1] = (2, 10 + n);
        expected.extend((1..=n).map(|i| (10_000 + i, 10 + i)));
        for (range, index) in expected {
            assert_eq!(
                engine.applied_state(RangeId(range)).unwrap(),
                applied_state(range, index),
                "range {range}"
            );
        }
        assert_eq!(engine.applied(RangeId(99)).unwrap(), LogPosition::default());
        // Writing goes on after the records found.
        write_applied(&engine, &[2], 11 + n);
        assert_eq!(engine.applied(RangeId(2)).unwrap().index, 11 + n);
        assert_eq!(records(&engine), APPLIED_RECORDS);
    }

    #[test]
    fn an_applied_state_of_format_2_reads_as_one_of_unknown_size() {
        let position = LogPosition { index: 9, term: 2 };
        for proposers in [
            Proposers::new(),
            Proposers::from([(NodeId(2), (1, 7))]),
            (1..=300).map(|n| (NodeId(n), (n, n))).collect(),
        ] {
            // Format 2: the position, then the proposers if any.
            let mut old = position.encode().to_vec();
            if !proposers.is_empty() {
                old.extend_from_slice(&codec::encode(&proposers));
            }
            let state = AppliedState {
                position,
                proposers,
                size: RangeSize::default(),
            };
            assert_eq!(decode_applied(&old).unwrap(), state);
            for measured in [None, Some(0), Some(u64::MAX - 1)] {
                let size = RangeSize { measured, grown: 3 };
                let sized = applied_value(position, &state.proposers, size);
                let state = AppliedState {
                    size,
                    ..state.clone()
                };
                assert_eq!(decode_applied(&sized).unwrap(), state);
                assert!(decode_applied(&sized[..20]).is_err());
            }
        }
        // A new range takes nothing.
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = bootstrapped(dir.path());
        let size = engine.applied_state(RangeId(7)).unwrap().size;
        assert_eq!(size, RangeSize::of(0));
    }

    #[test]
    fn a_removed_range_has_no_applied_state_after_a_restart_until_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (engine, _) = bootstrapped(dir.path());
            write_applied(&engine, &[7], 30);
            let (mut batch, mut states) = (sled::Batch::default(), AppliedStates::default());
            let d = descriptor();
            engine
                .stage_destroy(
                    d.id,
                    ReplicaId::new(NodeId(1), 0),
                    Some((&d.start_key, &d.end_key)),
                    &mut batch,
                    &mut states,
                )
                .unwrap();
            engine.write(batch, states).unwrap();
            assert_eq!(engine.applied(RangeId(7)).unwrap(), LogPosition::default());
            engine.sync().unwrap();
        }
        // The record of index 30 is still there, but the removal is newer.
        let engine = open(dir.path()).unwrap();
        assert_eq!(engine.applied(RangeId(7)).unwrap(), LogPosition::default());
        // Added back, the range gets a snapshot, whose state counts however old it is.
        let mut s = RangeStorage::load(engine.clone(), RangeId(7)).unwrap();
        let mut batch = WriteBatch::default();
        s.stage_snapshot(&snapshot_at_20(), &mut batch).unwrap();
        engine.commit(batch).unwrap();
        drop((s, engine));
        let engine = open(dir.path()).unwrap();
        assert_eq!(
            engine.applied(RangeId(7)).unwrap(),
            LogPosition { index: 20, term: 8 }
        );
    }

    #[test]
    fn a_range_removed_while_the_other_thread_retires_its_state_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path()).unwrap();
        let others = |from: u64| {
            for i in 0..APPLIED_RECORDS as u64 {
                write_applied(&engine, &[from + i], 10);
            }
        };
        write_applied(&engine, &[8], 30);
        // The Store lists the range's keys to delete: its state is in a record, not its key.
        let (mut batch, mut states) = (sled::Batch::default(), AppliedStates::default());
        let replica = ReplicaId::new(NodeId(1), 0);
        engine
            .stage_destroy(RangeId(8), replica, None, &mut batch, &mut states)
            .unwrap();
        // Meanwhile MultiRaft's writes retire that record: the state goes to the key.
        others(20_000);
        assert!(engine
            .tree()
            .get(keys::range_key(RangeId(8), keys::APPLIED))
            .unwrap()
            .is_some());
        engine.write(batch, states).unwrap();
        // The removal is retired in turn.
        others(30_000);
        assert_eq!(engine.applied(RangeId(8)).unwrap(), LogPosition::default());
        engine.sync().unwrap();
        drop(engine);
        let engine = open(dir.path()).unwrap();
        assert_eq!(engine.applied(RangeId(8)).unwrap(), LogPosition::default());
    }

    #[test]
    fn snapshot_requests_are_remembered_until_one_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut s) = bootstrapped(dir.path());
        assert!(s.snapshot(6, 2).is_err());
        assert!(s.take_snapshot_request());
        assert!(!s.take_snapshot_request());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 6;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1], vec![2])));
        s.set_snapshot(snap);
        // Not for a replica outside its configuration.
        assert!(s.snapshot(6, 3).is_err());
        assert_eq!(s.snapshot(6, 2).unwrap().get_metadata().index, 6);
        assert!(s.snapshot(7, 2).is_err());
    }
}
