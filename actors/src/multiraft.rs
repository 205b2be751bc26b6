//! The MultiRaft actor: every Raft group of the node, driven in rounds.
//!
//! # A round
//!
//! Handlers (proposals, raft messages, ticks, callbacks) only mark groups *dirty* and schedule a
//! round. A round then, for every dirty group with a `Ready`:
//!
//! 1. collects the leader's messages;
//! 2. stages the snapshot, the new entries and the hard state into **one** write batch;
//! 3. hands the committed entries over as events;
//!
//! gives the Store those events (they were durable before this Ready, so it applies them while
//! the round writes), then sends the leader's messages and lets the connections to peers write
//! them (so followers persist while the leader does); then writes the batch and makes it
//! durable with **one** sync for all groups; then sends the persisted messages, calls
//! `advance_append`, persists the commit index of the `LightReady`, and gives the Store the rest
//! in **one** [`Events`] message. A round that installs a snapshot or removes a replica gives
//! the Store its events, and sends its messages, only after the write. Events always go before
//! the messages of their round (see `RaftMetrics::events_handed`). That is contracts 2 and 3 of
//! DESIGN.md.
//!
//! # Never blocking on the Store
//!
//! Events go to the Store with `try_send`, one batch at a time waiting in its mailbox
//! ([`BATCHES_QUEUED`]). When its mailbox is full, or holds a batch the Store has not taken,
//! they wait here, in order, in an outbox sent when the Store takes that batch ([`EventsTaken`])
//! and retried every round and tick. When the committed work the Store has not yet applied
//! passes `max_unapplied_entries`, new proposals are refused with `BUSY` instead of queueing
//! without end (contract 1).
//!
//! # Membership changes
//!
//! When a conf change entry is handed over, the group waits for the Store's [`ChangeApplied`]
//! callback; proposals that arrive meanwhile are held in order and re-proposed once the change
//! is applied, under the new configuration (contract 4).
//!
//! New replicas join as learners; the leader promotes a learner once it has every committed
//! entry. A change that removes the leader's own replica waits until leadership has moved to
//! another voter, then goes to the new leader.
//!
//! A replica removed from its range (it applied its own removal, or another replica tells it
//! so: every replica that applies a removal notifies the removed node, and any replica answers
//! a message from a removed replica the same way) is dropped here, and the Store deletes its
//! data and keeps a tombstone: messages to that replica are refused from then on. A node added
//! again gets a new replica id (see [`ReplicaId`]), so it is not mistaken for the old one.
//!
//! # Log compaction
//!
//! Every 100 ticks each range's log is compacted up to what its Store has written to sled and
//! what every replica has: a node hosts thousands of ranges, each written now and then, and
//! every entry kept costs memory (raft-engine indexes each one). Only the leader sees what the
//! other replicas have; whenever that index rises it sends it to the followers with its next
//! round (and again to a node that comes back), and a follower compacts that far at once and no
//! further, so that should leadership move to it while a replica lags (its node down, as in a
//! rolling restart), that replica still catches up from the log. A range with more than
//! `log_compaction_entries` applied entries in its log has the oldest deleted at once, keeping
//! the most recent half, whoever lacks them; so do all ranges, at their next pass, while a
//! node's logs hold more than `log_budget_entries` in all (but never past a snapshot on its
//! way). A replica that needs deleted entries gets a snapshot. While the Store builds a
//! snapshot (on a thread of its own, one at a time) and until raft sends it, the log is
//! compacted no further than the snapshot (`Group::snapshot_floor`), else raft would find it
//! behind the log's start and ask for another; the floor lapses after a while, should raft no
//! longer ask for it.
//!
//! # Catching a node up
//!
//! A node back after a while lacks entries of every range it shares with this one, and the
//! entry caches keep only the last of them: the rest are read back from raft-engine's files,
//! each at the cost of a read of its round's whole batch. Read all at once, they held the
//! leader's thread for seconds, until the other nodes took it for dead and thousands of ranges
//! changed leader. So:
//!
//! - a heartbeat's answer makes raft send a follower it probes one entry at most: enough to
//!   learn where that follower's log stands (see `step_received`);
//! - a probe not yet answered is sent again after an election timeout, not with every
//!   heartbeat's answer as raft would (see `Group::probe_answered`);
//! - the answers to appends, which make raft send the rest, are stepped at the start of a
//!   round, as many as a share of reads allows (see `step_answers`), the others in the next;
//! - rounds give the thread's other tasks (the connections to peers, the timers) a turn
//!   between them (see `schedule_round`).
//!
//! # Quiescence and node liveness
//!
//! A node hosts thousands of ranges, most of them idle: an idle range costs nothing. On a tick,
//! a leader whose range has nothing under way (everything appended is committed and applied,
//! no reads, no membership work, no learners, every voter on a live node has the whole log,
//! and a majority of the voters is live) marks the range *quiescent* and, instead of ticking
//! it, sends one last heartbeat flagged `quiesce`. A follower that has the leader's whole log
//! quiesces too, and does not answer (spread over 10,000 ranges, most writes are followed by a
//! quiescing heartbeat, and the answers were a sixth of all messages); one that has not
//! answers, which wakes the leader. A quiescent replica is not ticked and wakes on the next
//! proposal, read, leadership transfer or message (anything but the quiescing heartbeats).
//!
//! Without ticks, followers cannot notice a dead leader through its heartbeats; they notice its
//! node. Every node sends every node it talks with at least one batch per heartbeat interval
//! (an empty one if it has nothing else to say); a node not heard from within an election
//! timeout is dead, and the quiescent ranges it leads wake and elect a new leader: one voter
//! per range campaigns first (`first_to_campaign`), the others later, so they do not split the
//! vote. The
//! quiescent ranges led here that it leaves without a live majority of voters wake too: raft's
//! quorum check makes their leaders step down instead of claiming a leadership they cannot
//! use. When a dead node is heard from again, the quiescent ranges led here that have a
//! replica there wake to bring it up to date. Batches carry their sender's boot: a node that
//! restarted faster than an election timeout is treated as one that died and came back, since
//! its replicas lost the leadership they held.
//!
//! # Leases
//!
//! A read needs a read index: the leader's commit index, once a quorum's heartbeats confirmed
//! that no other leader can have been elected. Each confirmation also gives the leader a
//! *lease*, from the moment its read index was asked, for half an election timeout. In the
//! first half of it, the Store serves the leader's reads from its own state (see
//! `Store::serves_locally`, and `RaftMetrics::leases`); in the second, read indexes (the
//! leader's and its followers') are given at once, without heartbeats (raft's `LeaseBased`
//! read option, set for just those calls), and a confirmed read index renews the lease.
//!
//! Why it is sound: a voter that acknowledged the leader grants no vote to another replica
//! for an election timeout of its own ticks (raft's `check_quorum` lease), and a replica that
//! never acknowledged it cannot win without one that did. Each tick comes a tick interval
//! after the last was handled (ticks missed while a process was held up are not run back to
//! back), so an election timeout of ticks lasts at least `election_ticks - 1` intervals.
//! A node that restarts forgets which leaders it acknowledged, so it grants no vote until it
//! has ticked for an election timeout. A leader's transferee campaigns without waiting and is
//! voted for regardless of leases: a leader that sends `MsgTimeoutNow` holds no lease for the
//! rest of that term. A lease holds only in the term it was given in.
//!
//! # Commit indexes
//!
//! raft does not send a new commit index to the followers on its own (`skip_bcast_commit`):
//! they learn it from the next append or heartbeat, at the latest the quiescing one. A follower
//! whose node forwarded proposals answers their clients when it applies them, so the leader
//! sends it the commit index as soon as they commit (`tell_proposers`).

use crate::codec;
use crate::ids::{NodeId, ProposalId, RangeId, ReadId, ReplicaId};
use crate::messages::*;
use crate::storage::{
    Engine, RangeDescriptor, RangeStorage, SnapshotData, Span, StorageError, WriteBatch,
    BOOTSTRAP_INDEX,
};
use crate::store::{PlantedBugs, StoreSettings};
use crate::transport::Transport;
use crate::value::{Clock, MAX_AHEAD_MS};
use actix::prelude::*;
use foldhash::fast::FixedState;
use protobuf::Message as ProtoMessage;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Election timeouts after a new leader is elected at which a membership change, or any
/// proposal where a leadership transfer elected it, made under an earlier term and not yet
/// committed is answered as in doubt (see `Doubt`).
const DOUBT_ELECTIONS: u64 = 2;

/// A peer's clock this far ahead of this node's, or further, is logged once heard.
const CLOCK_NOTED_MS: u64 = 1_000;

/// A proposal in doubt (see `Group::in_doubt`).
#[derive(Clone, Copy, Debug)]
struct Doubt {
    /// The term and the tick it was proposed in.
    term: u64,
    tick: u64,
    /// A membership change: answered `DOUBT_ELECTIONS` after a new leader is elected if still
    /// not committed, not at once as a write is, since a leader that removes itself hands
    /// leadership over first and then sends the change on to the new leader. So is a write
    /// where a leadership transfer elected the new leader: the leader that handed over sends
    /// on what was forwarded to it meanwhile (see `step_forwarded`).
    change: bool,
    /// The tick it is answered at, once a leader of a later term is elected.
    answer_at: Option<u64>,
}

/// How MultiRaft runs its groups.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub tick_interval: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Committed entries handed to the Store but not yet applied, past which proposals get BUSY.
    pub max_unapplied_entries: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Applied entries a range's log may hold before the oldest are deleted.
    pub log_compaction_entries: u64,
    /// Entries the logs of all ranges of a node may hold in all before leaders stop keeping
    /// entries for replicas that lag (see `MultiRaft::compact_caught_up`): raft-engine keeps
    /// an index of every entry in memory.
    pub log_budget_entries: u64,
    /// Compact each range's log as far as every replica has it, every 100 ticks (see
    /// `MultiRaft::compact_caught_up`); off only in tests that read a range's whole log after
    /// the fact.
    pub compact_caught_up: bool,
    /// Deterministic elections, for simulations: each group's election timeout (in
    /// `[election_ticks, 2 * election_ticks)`, new in every term) is drawn from this seed, the
    /// replica, the range and the term, instead of by raft-rs's unseeded generator.
    pub election_seed: Option<u64>,
    /// The entries raft may read back from the log's files while a round steps answers to
    /// appends, past which the rest wait for the next round (see `MultiRaft::step_answers`).
    /// Over 10,000 ranges each such read costs 25-100 µs (its entry's whole batch is read and
    /// decoded). In a rolling restart over 10,000 ranges after 60 s of load, 1,024 a round
    /// caught the returning node up in 40.5 s and 4,096 in 22.0 and 26.1 s, the leader keeping
    /// every range either way.
    pub answer_reads_per_round: u64,
    /// The bytes the ranges' entry caches may hold (as `Engine::entries_cached` counts them)
    /// before they keep only the applied entries raft is about to read (see
    /// `Group::cache_from`). 256 MiB holds the whole window of every range over 10,000 ranges
    /// with 100-byte values (225 MB), which a rolling restart needs: with a budget that did
    /// not, the returning node was caught up in 13.9-16.9 s, reading back 294,000-364,000
    /// entries, instead of 6.3-6.6 s and 34,000-36,000.
    pub entry_cache_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_unapplied_entries: 20_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            log_compaction_entries: 10_000,
            log_budget_entries: 2_000_000,
            compact_caught_up: true,
            election_seed: None,
            answer_reads_per_round: 4096,
            entry_cache_bytes: 256 << 20,
        }
    }
}

/// Counters a test or `INFO` can read while the node runs.
#[derive(Debug, Default)]
pub struct RaftMetrics {
    pub rounds: AtomicU64,
    pub syncs: AtomicU64,
    pub proposals_held: AtomicU64,
    /// Proposals that reached raft while their range awaited a membership callback: 0 unless
    /// a planted bug skips the hold (contract 4). The simulation asserts it.
    pub proposals_not_held: AtomicU64,
    pub proposals_busy: AtomicU64,
    /// Times events were kept back because the Store was not ready for them: its mailbox
    /// full, or a batch still waiting there untaken (see [`BATCHES_QUEUED`]).
    pub events_deferred: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_installed: AtomicU64,
    pub log_compactions: AtomicU64,
    pub learners_promoted: AtomicU64,
    /// Ranges of this node not ticking (as of the last tick).
    pub ranges_quiescent: AtomicU64,
    /// Entries its ranges' raft logs hold in all (each range as of its last compaction pass).
    pub log_entries: AtomicU64,
    /// Times a node was seen to have restarted (a new boot in its batches).
    pub peer_restarts: AtomicU64,
    /// Rounds that left answers to appends for the next, their share of reads spent (see
    /// `MultiRaft::step_answers`).
    pub answers_put_off: AtomicU64,
    /// Reads a leader served from its lease, without a round of heartbeats: read indexes
    /// given here, and reads of one range the Store served from its own state.
    pub reads_leased: AtomicU64,
    /// The leases held here, by range: the term and until when the Store may serve reads from
    /// its own state (half of the lease, so that the rest is renewed while reads come through
    /// MultiRaft; see "Leases").
    pub leases: std::sync::Mutex<BTreeMap<RangeId, (u64, Instant)>>,
    /// Events given to the Store, or kept for it in the outbox. Counted before any message of
    /// the round that produced them leaves, so a Store that has applied as many knows all this
    /// node's raft has done (see `Store::serves_locally`), and before the round's write, so a
    /// snapshot or a removal written to sled is counted as long as the Store has not applied
    /// its event (see `GetDigest`).
    pub events_handed: AtomicU64,
    /// Event batches the Store has taken from its mailbox (counted as it starts on each):
    /// MultiRaft lets at most [`BATCHES_QUEUED`] more wait there.
    pub event_batches_taken: AtomicU64,
    /// MultiRaft holds events back until the Store takes the batch waiting in its mailbox: the
    /// Store, taking it, sends [`EventsTaken`] (set before MultiRaft reads
    /// `event_batches_taken` again, and read after the Store counts a batch taken, so one of
    /// the two sees the other).
    pub events_held: AtomicBool,
}

/// Event batches MultiRaft lets wait in the Store's mailbox, not yet taken; later events join
/// the batch kept back in the outbox. The mailbox's capacity does not bound them: actix's
/// `try_send` refuses a message only while its sender is parked, and the Store's taking *any*
/// message lets one parked sender go (in the order they parked), so behind a mailbox that
/// clients and the Store's own notes keep filling MultiRaft could queue a batch per message
/// taken, each one an apply for the Store (a slow one's backlog, and every callback's delay,
/// then grows without bound).
const BATCHES_QUEUED: u64 = 1;

/// How many released proposals [`GetReleasedProposals`] can report.
pub const RELEASED_KEPT: usize = 4096;

/// Ticks a read may wait for its read index before it is asked again (raft drops read requests
/// silently when the leader is unknown or has not committed in its term).
const READ_RETRY_TICKS: u64 = 3;

/// The answers to appends a round steps at most (see `MultiRaft::step_answers`): well above
/// what a round gets under load (about one per follower for each write in flight: 1,600 with
/// the 800 of P5's load), so that only a node catching up meets it.
const STEP_ANSWERS: usize = 4096;

/// Ticks after which a read still without a read index is failed and forgotten (by then the
/// Store has long answered its client with a timeout).
const READ_GIVE_UP_TICKS: u64 = 600;

struct PendingRead {
    context: u64,
    /// Each read with the tick it was first asked for.
    reads: Vec<(ReadId, u64)>,
    issued_tick: u64,
    /// On a leader, a read index confirmed by a quorum's heartbeats: the term and the time it
    /// was asked, before those heartbeats left. Its confirmation renews the lease.
    renews: Option<(u64, Instant)>,
}

/// A proposal kept back while its group awaits a membership callback.
enum Held {
    /// Made on this node.
    Local(ProposalId, ProposalPayload),
    /// Forwarded by a follower to this node, the leader (`MsgPropose`).
    Forwarded(raft::prelude::Message),
}

impl Held {
    /// The proposals it carries (a forwarded message may carry several).
    fn proposals(&self) -> Vec<ProposalId> {
        match self {
            Held::Local(p, _) => vec![*p],
            Held::Forwarded(m) => (m.get_entries().iter())
                .filter_map(|e| ProposalId::from_context(&e.context))
                .collect(),
        }
    }
}

/// The most ranges whose last held-off append (see `MultiRaft::held_off`) is kept at once.
const HELD_OFF_MAX: usize = 1024;

/// How long a range holds this node's proposals while it knows no leader, rather than refuse
/// them at once for want of one (see [`MultiRaft::leader_wait`]), counted from the first held:
/// a range born of a split, until its first leader (its replicas are created as their nodes
/// apply the split, and the left range's leader campaigns at once, see `MultiRaft::split`, so a
/// leader comes within a round trip or two); a range whose replica here knows no leader (an
/// election under way, a node just started), whose leader here hands its leadership over, or
/// whose leader a proposal could not be sent on to (its node killed), until the next one. So a
/// failover or a leadership transfer costs the writes through this node time, not errors. As
/// long as the Store waits for an answer (`StoreSettings::request_timeout`), less an election
/// timeout: a range with no leader longer (a node cut off from a quorum) has them refused
/// before the Store's timeout would leave their clients in doubt. At least an election timeout.
fn leader_wait_ticks(settings: &RaftSettings, request_timeout: Duration) -> u64 {
    let election = settings.election_ticks as u64;
    let tick = settings.tick_interval.as_micros().max(1);
    let timeout = (request_timeout.as_micros() / tick) as u64;
    timeout.saturating_sub(election).max(election)
}

/// Election timeouts a follower has to acknowledge a snapshot, plus one tick per
/// [`SNAPSHOT_BYTES_PER_TICK`] of it, before the snapshot counts as lost and raft sends another.
const SNAPSHOT_ELECTIONS: u64 = 10;
const SNAPSHOT_BYTES_PER_TICK: usize = 1 << 20;

/// Election timeouts the log waits, uncompacted past it, for a snapshot the Store builds (see
/// `Group::snapshot_floor`).
const SNAPSHOT_BUILD_ELECTIONS: u64 = 30;

/// Leader-transfer ticks after which a change waiting for leadership to move is given up.
const TRANSFER_GIVE_UP_ELECTIONS: u64 = 3;

/// Ticks between two purges of the raft log's old files: the log's files then exceed their
/// purge threshold by at most the log written in that time.
const PURGE_TICKS: u64 = 10;

/// Applied entries a range's entry cache keeps at most (see `Group::cache_from`).
const CACHE_APPLIED: u64 = 64;

/// Ticks between two compactions of a slice of the ranges' caught-up logs, and the number of
/// slices: each range's is compacted every `COMPACT_TICKS * COMPACT_SLICES` ticks.
const COMPACT_TICKS: u64 = 10;
const COMPACT_SLICES: u64 = 10;

/// The fate of a membership change, decided by [`Group::admit_change`].
enum Admission {
    /// Propose (or step) it now.
    Now(Held),
    /// Kept back: behind a pending change, or until leadership has moved.
    Kept,
    Refused(ProposeError),
}

/// One range's raft group on this node.
struct Group {
    node: RawNode<RangeStorage>,
    /// This node's replica: the group's raft id.
    replica: ReplicaId,
    /// Replicas removed from the range (raft ids), as far as this replica has applied.
    removed: BTreeSet<u64>,
    /// Index of a conf change handed to the Store whose callback has not come back.
    awaiting_callback: Option<u64>,
    /// Proposals that arrived while awaiting the callback, or while the range waited for a
    /// leader (see `electing_until`), in arrival order.
    held: VecDeque<Held>,
    /// The proposals among `held` that came while awaiting the callback (contract 4), as
    /// [`GetReleasedProposals`] reports them once released.
    held_for_change: Vec<ProposalId>,
    /// The tick until which this node's proposals wait for a leader instead of being refused
    /// at once for want of one (0: not waiting; see [`leader_wait_ticks`]). Kept past once
    /// waited out with proposals left, until a leader is known again or one of this node's
    /// proposals commits: meanwhile proposals are refused at once.
    electing_until: u64,
    /// No vote before this tick: the group replaced an empty replica of its range, which may
    /// have answered a leader's heartbeats (counted towards that leader's lease) and would
    /// otherwise vote at once, raft's memory of its leader gone (see `MultiRaft::split`).
    no_votes_until: u64,
    /// The term of the last election a leadership transfer started, as seen here (the
    /// `MsgTimeoutNow` that started it, or its vote request).
    transfer_term: u64,
    /// Reads to ask a read index for in the next round, with the tick each was first asked.
    new_reads: Vec<(ReadId, u64)>,
    reads_in_flight: Vec<PendingRead>,
    /// The time of the leader that answered each read index asked from here (by the read's
    /// context), as its batches carried it, until the read state comes out of raft: what a
    /// read through this follower decides expiry by (see `Event::ReadReady`).
    answered_at: BTreeMap<Vec<u8>, u64>,
    /// Last index handed to the Store, last index it reported applied, and last index whose
    /// effects it reported written to sled.
    handed: u64,
    applied: u64,
    written: u64,
    leader: u64,
    snapshot_requested: bool,
    /// How far the log may be compacted while a snapshot is built for it and until raft sends
    /// it, so that it is not left behind the log's start (of no use, and built again): the
    /// written index when it was asked for, then its own index once built; until it is handed
    /// over, or the tick given (should raft no longer ask for it, or the build take too long).
    snapshot_floor: Option<(u64, u64)>,
    /// Changes removing this replica, held until leadership has moved to another replica.
    after_transfer: Vec<Held>,
    /// Tick at which the transfer for `after_transfer` started.
    transfer_started: u64,
    /// Membership changes that arrived (on the leader) while another was pending, with the
    /// tick each arrived: proposed one at a time as each pending change is applied.
    queued_changes: Vec<(Held, u64)>,
    /// Snapshots handed to the transport, by follower, with the tick by which the follower
    /// must have acknowledged one (raft then resumes replicating to it) or it counts as lost.
    snapshots_out: Vec<(u64, u64)>,
    /// On the leader: the tick each follower was last sent an append, or its answer to one
    /// came (see `Group::probe_answered`).
    appends_sent: Vec<(u64, u64)>,
    /// Proposals made here (or forwarded from here) and not yet seen committed: answered as in
    /// doubt when a leader of a later term is elected (see [`Doubt`]).
    in_doubt: BTreeMap<ProposalId, Doubt>,
    /// On the leader: the followers waiting for a commit index, with the first and the last
    /// index they wait for. A follower's node answers the clients of the writes it forwarded
    /// when it applies them, and serves a read once it has applied up to the read index: it is
    /// sent the commit index as soon as that covers them (see `tell_proposers`).
    proposers: BTreeMap<u64, (u64, u64)>,
    /// On the leader: the term and the time until which it holds a lease (see "Leases").
    lease: Option<(u64, Instant)>,
    /// A term in which this replica sent a `MsgTimeoutNow`: its transferee may be elected at
    /// any time (it campaigns without waiting, and is voted for regardless of leases), so this
    /// replica holds no lease in that term, even once raft gave the transfer up.
    transferred_in: u64,
    /// On a follower whose leader's node died: the term, and whether this replica is the one
    /// to campaign first (see `check_liveness`).
    campaigns_first: Option<(u64, bool)>,
    /// On the leader: a follower asked for a read index; the lease is renewed with the next
    /// round if it runs out soon.
    renew_lease: bool,
    /// Not ticked: the range went quiet with every live replica caught up. Woken by the next
    /// proposal, read or message (other than the quiescing heartbeats), or when a node it
    /// depends on dies or comes back.
    quiescent: bool,
    /// On a follower: the highest index its leader reported every replica has, how far it
    /// may compact its log (see `MultiRaft::compact_caught_up`).
    compact_hint: u64,
    /// On the leader: the last such index it sent the followers.
    hinted: u64,
    /// The entries its log held at its last compaction pass, as counted in
    /// `MultiRaft::log_held`.
    counted: u64,
}

impl Group {
    /// Notes that `replica` was sent an append, or answered one, at tick `ticks`.
    fn append_exchanged(&mut self, replica: u64, ticks: u64) {
        match self.appends_sent.iter_mut().find(|(to, _)| *to == replica) {
            Some(sent) => sent.1 = ticks,
            None => self.appends_sent.push((replica, ticks)),
        }
    }

    /// A heartbeat's answer from a follower raft probes, within an election timeout of the
    /// append last sent to it (or of its last answer to one, which may wait for a round:
    /// see `MultiRaft::step_answers`): taken as the sign of life it is (raft's quorum check counts
    /// it), but not stepped. raft resumes a probe on every heartbeat answer and sends its
    /// append again, entries and all, though the first may still be on its way: to a node
    /// busy catching up thousands of ranges (back after a while), that is every range's
    /// lacking entries read back from the files and sent again every heartbeat interval,
    /// which holds it up further. After an election timeout without an answer, the next
    /// heartbeat's answer sends the append again (it, or its answer, may have been lost).
    fn probe_answered(&mut self, m: &raft::prelude::Message, ticks: u64, election: u64) -> bool {
        if !self.is_leader() || m.term != self.node.raft.term || !m.context.is_empty() {
            return false;
        }
        let recent = self
            .appends_sent
            .iter()
            .any(|&(to, tick)| to == m.from && ticks - tick < election);
        match self.node.raft.mut_prs().get_mut(m.from) {
            Some(pr) if recent && pr.state == ProgressState::Probe && pr.paused => {
                pr.recent_active = true;
                true
            }
            _ => false,
        }
    }

    /// The oldest entry the range's entry cache keeps, now that the Store has applied
    /// `self.applied`.
    ///
    /// Within the node's budget (`RaftSettings::entry_cache_bytes`), the last [`CACHE_APPLIED`]
    /// applied entries: a replica a little behind (a node back from a restart) is sent them
    /// from memory, and a compaction finds there the term of the entry it cuts at. Reading an
    /// entry back from the log's files costs 25-100 µs.
    ///
    /// Over the budget, only what raft and the compactions are about to read, within the same
    /// window: on the leader, from the last entry each follower it replicates to has (sent with
    /// the entries after it); anywhere, from the entry at what the Store has written (where a
    /// compaction over the log budget cuts). A replica raft probes (far behind, or its node
    /// down), or one further behind than the window, is sent what it lacks from the files.
    ///
    /// The window costs memory in proportion to the entries' size: with a node down under
    /// load over 10,000 ranges, RSS was 812-853 MiB with 100-byte values and 1,411-1,455 MiB
    /// with 1 KiB values before the budget (845-864 MiB after).
    fn cache_from(&self, over_budget: bool) -> u64 {
        let window = self.applied.saturating_sub(CACHE_APPLIED - 1);
        if !over_budget {
            return window;
        }
        let mut from = self.written;
        if self.is_leader() {
            let me = self.replica.0;
            let prs = self.node.raft.prs().iter();
            let replicated =
                prs.filter(|(&id, pr)| id != me && pr.state == ProgressState::Replicate);
            from = replicated.map(|(_, pr)| pr.matched).fold(from, u64::min);
        }
        from.clamp(window, self.applied)
    }

    /// Forgets the cached entries before [`Group::cache_from`].
    fn trim_cache(&mut self, over_budget: bool) {
        let from = self.cache_from(over_budget);
        self.node.mut_store().forget_cached_before(from);
    }

    /// The replica raft ids of the applied configuration.
    fn members(&self) -> impl Iterator<Item = u64> + '_ {
        members(self.node.store().conf_state())
    }

    /// The raft id of `node`'s replica in the applied configuration.
    fn replica_on(&self, node: NodeId) -> Option<u64> {
        self.members().find(|&id| ReplicaId(id).node() == node)
    }

    /// Whether raft would take no proposal here: the range knows no leader, or its leader
    /// here hands its leadership over.
    fn takes_no_proposal(&self) -> bool {
        self.node.raft.leader_id == 0
            || (self.is_leader() && self.node.raft.lead_transferee.is_some())
    }

    /// Whether a proposal waits for a leader rather than go to raft now (see `electing_until`):
    /// where `cause` holds (raft would take none, or one could not be sent on to the leader),
    /// or others wait before it, until the wait is over. The first starts the wait, and adds
    /// `range` to those `electing`. One a follower sent on here (`forwarded`) waits only behind
    /// those sent on too, which keeps each node's in order: this node's own may wait for it
    /// (one of its writes may come back here, see `awaits_handed_over`).
    fn waits_for_leader(
        &mut self,
        range: RangeId,
        (cause, forwarded): (bool, bool),
        (ticks, wait): (u64, u64),
        electing: &mut BTreeSet<RangeId>,
    ) -> bool {
        if cause && self.electing_until == 0 {
            self.electing_until = ticks + wait;
            electing.insert(range);
        }
        let behind = match forwarded {
            true => self.held.iter().any(|h| matches!(h, Held::Forwarded(_))),
            false => !self.held.is_empty(),
        };
        (cause || behind) && ticks < self.electing_until
    }

    /// Whether writes of this node's, forwarded to a leader that then handed its leadership
    /// over, may yet be sent on by it to the new one (see [`Doubt`]). This node's later writes
    /// wait for them: arriving first, a later one would have them skipped on every replica
    /// (`storage::Proposers` keeps a node's writes to a range in order). In doubt are this
    /// node's proposals in the order made, so those of earlier terms come first.
    fn awaits_handed_over(&self) -> bool {
        let term = self.node.raft.term;
        (self.in_doubt.values())
            .take_while(|d| d.term < term)
            .any(|d| self.handed_over(d))
    }

    /// Whether `d` is a write this node forwarded to a leader that handed its leadership over
    /// to the current one, which may yet send it on: from when raft knows the new term (its
    /// `answer_at` is set with the round that sees the leader).
    fn handed_over(&self, d: &Doubt) -> bool {
        let term = self.node.raft.term;
        !d.change && d.term < term && (d.answer_at.is_some() || self.transfer_term == term)
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// On the leader: the last index every replica has (a snapshot on its way counts as had),
    /// as far as raft knows.
    fn shared_index(&self) -> u64 {
        let me = self.replica.0;
        self.node
            .raft
            .prs()
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(_, pr)| match pr.state {
                ProgressState::Snapshot => pr.pending_snapshot,
                _ => pr.matched,
            })
            .fold(self.node.raft.raft_log.last_index(), u64::min)
    }

    /// On the leader: the index of the oldest snapshot on its way to a replica.
    fn snapshot_on_its_way(&self) -> Option<u64> {
        let prs = self.node.raft.prs().iter();
        let pending = prs.filter(|(_, pr)| pr.state == ProgressState::Snapshot);
        pending.map(|(_, pr)| pr.pending_snapshot).min()
    }

    /// Entries the range's raft log holds here.
    fn log_entries(&self) -> u64 {
        self.node.raft.raft_log.last_index() - self.node.store().truncated().index
    }

    /// Whether nothing is under way in this replica that needs its clock: no reads, no
    /// membership work (a change of its own in doubt included), no snapshot out, no leadership
    /// transfer.
    fn is_idle(&self) -> bool {
        self.new_reads.is_empty()
            && self.in_doubt.values().all(|d| d.answer_at.is_none())
            && self.reads_in_flight.is_empty()
            && self.awaiting_callback.is_none()
            && self.held.is_empty()
            && self.after_transfer.is_empty()
            && self.queued_changes.is_empty()
            && self.snapshots_out.is_empty()
            && self.node.raft.lead_transferee.is_none()
    }

    /// Notes that follower `replica` waits for the commit index to reach `first..=last`.
    fn awaits_commit(&mut self, replica: u64, first: u64, last: u64) {
        let e = self.proposers.entry(replica).or_insert((first, last));
        e.0 = e.0.min(first);
        e.1 = e.1.max(last);
    }

    /// Whether this leader holds a lease at `now`: no other replica can have been elected
    /// since this one last heard from a quorum (see "Leases").
    fn holds_lease(&self, now: Instant) -> bool {
        self.is_leader()
            && self.node.raft.lead_transferee.is_none()
            && self.transferred_in != self.node.raft.term
            && self
                .lease
                .is_some_and(|(term, until)| term == self.node.raft.term && now < until)
    }

    /// Whether this leader should renew its lease: it runs out within `margin`, and no read
    /// index that would renew it is under way.
    fn lease_runs_out(&self, now: Instant, margin: Duration) -> bool {
        self.is_leader()
            && self.node.raft.lead_transferee.is_none()
            && self.transferred_in != self.node.raft.term
            && !self.reads_in_flight.iter().any(|p| p.renews.is_some())
            && self.lease.is_none_or(|(term, until)| {
                term != self.node.raft.term || until.saturating_duration_since(now) < margin
            })
    }

    /// Asks raft for a read index for `reads`: at once from the lease if `leased`, else
    /// confirmed by a quorum's heartbeats, which renews the lease on a leader. Takes the context
    /// from `next_context`, which it advances.
    fn read_index(
        &mut self,
        prefix: &[u8; 16],
        next_context: &mut u64,
        reads: Vec<(ReadId, u64)>,
        tick: u64,
        leased: bool,
        now: Instant,
    ) {
        let context = *next_context;
        *next_context += 1;
        let mut ctx = prefix.to_vec();
        ctx.extend_from_slice(&context.to_be_bytes());
        let renews = (!leased && self.lease_runs_out(now, Duration::MAX))
            .then_some((self.node.raft.term, now));
        self.with_read_option(leased, |g| g.node.read_index(ctx));
        self.reads_in_flight.push(PendingRead {
            context,
            reads,
            issued_tick: tick,
            renews,
        });
    }

    /// Steps a message from another replica: `RawNode::step`'s checks, in an order that looks up
    /// the sender's progress only for an answer (which a leader needs it for anyway). raft-rs
    /// looks it up first for every message: over 10,000 ranges a cache miss in each range's own
    /// hash map, 7% of a follower's MultiRaft thread, whose appends and heartbeats do not use it.
    fn step(&mut self, m: raft::prelude::Message) -> raft::Result<()> {
        let kind = m.get_msg_type();
        if raft::raw_node::is_local_msg(kind) {
            return Err(raft::Error::StepLocalMsg);
        }
        let answer = matches!(
            kind,
            MessageType::MsgAppendResponse
                | MessageType::MsgRequestVoteResponse
                | MessageType::MsgHeartbeatResponse
                | MessageType::MsgRequestPreVoteResponse
        );
        if answer && self.node.raft.prs().get(m.from).is_none() {
            return Err(raft::Error::StepPeerNotFound);
        }
        self.node.raft.step(m)
    }

    /// Runs `f` with raft's read option `LeaseBased` if `leased` (a read index is then given at
    /// once), `Safe` otherwise; it stays `Safe` in between.
    fn with_read_option<T>(&mut self, leased: bool, f: impl FnOnce(&mut Self) -> T) -> T {
        if leased {
            self.node.raft.read_only.option = ReadOnlyOption::LeaseBased;
        }
        let result = f(self);
        self.node.raft.read_only.option = ReadOnlyOption::Safe;
        result
    }

    /// Whether a majority of the voters are this replica or on live nodes.
    fn has_live_quorum(&self, live: &BTreeSet<NodeId>) -> bool {
        let voters = &self.node.store().conf_state().voters;
        let reachable = voters
            .iter()
            .filter(|&&id| id == self.replica.0 || live.contains(&ReplicaId(id).node()))
            .count();
        2 * reachable > voters.len()
    }

    /// On a leader: whether the range may stop ticking. The leader is a voter still (one that
    /// applied its own removal stays for a while, and the voters left must not be put to sleep
    /// following it: they would never elect another), every voter on a live node has the
    /// whole log, there are no learners and no joint configuration. A replica on a dead node
    /// does not keep the range awake (the range wakes when that node comes back), unless too
    /// few are left for a quorum: the leader then keeps ticking, so that raft's quorum check
    /// makes it step down instead of claiming a leadership it cannot use.
    fn may_quiesce(&self, live: &BTreeSet<NodeId>) -> bool {
        let cs = self.node.store().conf_state();
        let last = self.node.raft.raft_log.last_index();
        self.is_leader()
            && cs.voters.contains(&self.replica.0)
            && self.is_idle()
            && self.has_live_quorum(live)
            && self.node.raft.raft_log.committed == last
            && self.applied == last
            && self.handed == last
            && !self.node.has_ready()
            && !self.node.raft.has_pending_conf()
            && cs.learners.is_empty()
            && cs.voters_outgoing.is_empty()
            && cs.voters.iter().all(|&id| {
                id == self.replica.0
                    || !live.contains(&ReplicaId(id).node())
                    || self
                        .node
                        .raft
                        .prs()
                        .get(id)
                        .is_some_and(|p| p.matched == last)
            })
    }

    /// The voter (other than this one) best placed to take over leadership.
    fn successor(&self) -> Option<u64> {
        let cs = self.node.store().conf_state();
        cs.voters
            .iter()
            .filter(|&&id| id != self.replica.0)
            .max_by_key(|&&id| self.node.raft.prs().get(id).map_or(0, |p| p.matched))
            .copied()
    }

    /// What becomes of a membership change reaching this replica (proposed here, or forwarded
    /// by a follower). A leader queues it behind a pending change, refuses it if it re-adds a
    /// removed replica or removes the last voter, and keeps one that removes this replica until
    /// leadership has moved; anything else goes ahead.
    fn admit_change(
        &mut self,
        range: RangeId,
        cc: &ConfChangeV2,
        held: Held,
        tick: u64,
    ) -> Admission {
        if !self.is_leader() {
            return Admission::Now(held);
        }
        if self.node.raft.has_pending_conf() {
            // One change at a time (raft would turn this one into an empty entry).
            self.queued_changes.push((held, tick));
            return Admission::Kept;
        }
        match self.vet(range, cc) {
            Err(e) => Admission::Refused(e),
            Ok(false) => Admission::Now(held),
            Ok(true) => match self.successor() {
                Some(to) => {
                    self.node.transfer_leader(to);
                    self.transfer_started = tick;
                    self.after_transfer.push(held);
                    Admission::Kept
                }
                None => Admission::Refused(ProposeError::InvalidChange(
                    range,
                    "it would remove the range's last voter".into(),
                )),
            },
        }
    }

    /// Whether `cc` removes this replica or demotes it, or re-adds a removed replica.
    fn vet(&self, range: RangeId, cc: &ConfChangeV2) -> Result<bool, ProposeError> {
        let mut removes_self = false;
        for c in cc.get_changes() {
            match c.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
                    if self.removed.contains(&c.node_id) =>
                {
                    return Err(ProposeError::InvalidChange(
                        range,
                        format!(
                            "replica {} was removed from the range; its node must be added again",
                            ReplicaId(c.node_id)
                        ),
                    ));
                }
                ConfChangeType::RemoveNode | ConfChangeType::AddLearnerNode
                    if c.node_id == self.replica.0 =>
                {
                    removes_self = true
                }
                _ => {}
            }
        }
        Ok(removes_self)
    }
}

/// Keeps a proposal back while its group awaits a membership callback (contract 4), or gives
/// it back to be proposed now.
fn hold(g: &mut Group, h: Held, bugs: &PlantedBugs, metrics: &RaftMetrics) -> Option<Held> {
    if g.awaiting_callback.is_none() {
        return Some(h);
    }
    if bugs.skip_holding_proposals {
        metrics.proposals_not_held.fetch_add(1, Ordering::Relaxed);
        return Some(h);
    }
    g.held_for_change.extend(h.proposals());
    g.held.push_back(h);
    metrics.proposals_held.fetch_add(1, Ordering::Relaxed);
    None
}

/// A well-mixed 64-bit hash step (SplitMix64).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Every replica id of a configuration (voters, learners, and both sides of a joint one).
fn members(cs: &ConfState) -> impl Iterator<Item = u64> + '_ {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
}

/// The conf change a proposal forwarded by a follower carries, if any.
fn forwarded_change(m: &raft::prelude::Message) -> Option<ConfChangeV2> {
    m.get_entries().iter().find_map(conf_change_of)
}

/// A round between its Readies and its write (see `MultiRaft::finish_round`).
struct Persist {
    batch: WriteBatch,
    must_write: bool,
    /// Events to give the Store after the write.
    events: Vec<Event>,
    /// The leader's messages, when they wait for those events.
    leader_msgs: BTreeMap<NodeId, Vec<(RangeId, raft::prelude::Message)>>,
    /// Each group's Ready, and the index of the snapshot it installs.
    readies: Vec<(RangeId, raft::Ready, Option<u64>)>,
}

/// Runs every Raft group of the node. See the module documentation.
pub struct MultiRaft {
    node: NodeId,
    /// This process's boot, sent with every batch.
    boot: u64,
    engine: Arc<Engine>,
    settings: RaftSettings,
    /// Ticks a range holds this node's proposals while it knows no leader (see
    /// [`leader_wait_ticks`]).
    leader_wait: u64,
    /// Looked up for every message and every round of every range: a hash map, as a B-tree of
    /// 10,000 ranges costs a cache miss per level. No loop over the groups depends on their
    /// order; the hasher's seed is fixed all the same, so that runs of a seed stay alike.
    groups: HashMap<RangeId, Group, FixedState>,
    dirty: BTreeSet<RangeId>,
    /// Answers to appends received and not yet stepped, oldest first (see `step_answers`).
    answers: VecDeque<(RangeId, raft::prelude::Message)>,
    /// The ranges ticked: those not quiescent. Whatever wakes a range also makes it dirty, and
    /// a round adds each dirty range that is awake here.
    awake: BTreeSet<RangeId>,
    round_scheduled: bool,
    store: Recipient<Events>,
    myself: Option<Recipient<ChangeApplied>>,
    transport: Box<dyn Transport>,
    /// Events produced outside a round (refused proposals), sent with the next round's.
    events: Vec<Event>,
    /// Event batches the Store's mailbox could not take yet, oldest first.
    outbox: VecDeque<Events>,
    /// Event batches given to the Store (see `RaftMetrics::event_batches_taken`).
    batches_sent: u64,
    /// Writes produced outside a round (conf states), written with the next round's batch.
    staged: WriteBatch,
    staged_any: bool,
    /// The ranges whose logs may hold entries: those that took some since their log was last
    /// compacted to nothing (see `compact_caught_up`), so that an idle node looks at none.
    logs_grown: BTreeSet<RangeId>,
    /// Entries the logs of each slice of the ranges held after their last compaction.
    log_held: [u64; COMPACT_SLICES as usize],
    /// Asks the thread that purges the raft log's files for a purge, once that thread is
    /// started (see [`MultiRaft::purge_on_own_thread`]); until then purges run here.
    purger: Option<std::sync::mpsc::SyncSender<()>>,
    unapplied: u64,
    released: VecDeque<ReleasedProposal>,
    /// Ranges whose leader here applied its own removal, and the tick it did: see
    /// `Handler<ChangeApplied>`.
    leaving: BTreeMap<RangeId, u64>,
    ticks: u64,
    next_read_context: u64,
    /// Ranges whose replica on this node was removed, with that replica.
    tombstones: BTreeMap<RangeId, ReplicaId>,
    /// Removed ranges whose data the Store has not yet deleted: nothing of them is created.
    destroying: BTreeSet<RangeId>,
    /// The span of each range with data here (its replicas', and those being destroyed until
    /// their keys are deleted): a snapshot that overlaps another's is refused (see
    /// [`MultiRaft::overlapping`]).
    spans: BTreeMap<RangeId, Span>,
    /// The last append held off for each range born of a split that the range it split from
    /// here has yet to apply (see `step_received`), stepped once it has.
    held_off: BTreeMap<RangeId, raft::prelude::Message>,
    /// The spans of the snapshots raft took and has yet to install (see `overlapping`).
    incoming: BTreeMap<RangeId, Span>,
    /// The ranges whose proposals here wait for a leader (see `Group::electing_until`).
    electing: BTreeSet<RangeId>,
    /// Those of them that learnt their leader in the round under way, or whose writes a leader
    /// handed over (see `Group::awaits_handed_over`) came.
    leaders_found: Vec<RangeId>,
    /// Removal notices to send with the next round, per node.
    notices: BTreeMap<NodeId, Vec<(RangeId, ReplicaId)>>,
    /// Compaction indexes to send with the next round, per node and range (see
    /// `compact_caught_up`).
    hints: BTreeMap<NodeId, BTreeMap<RangeId, u64>>,
    /// Node liveness, for quiescent ranges: the tick at which each node was last heard from
    /// (any batch, empty ones included), what was last sent to it, and which nodes were heard
    /// from within an election timeout.
    last_heard: BTreeMap<NodeId, u64>,
    /// The last boot each node sent.
    boots: BTreeMap<NodeId, u64>,
    last_sent: BTreeMap<NodeId, u64>,
    live: BTreeSet<NodeId>,
    /// Nodes owed an empty batch this round, to show this node is alive.
    pings: BTreeSet<NodeId>,
    /// Bugs planted by a test (see [`PlantedBugs`]).
    bugs: PlantedBugs,
    /// The node's clock (the Store's), whose time every batch carries, and which hears the
    /// time of every batch that comes (see [`Clock`]).
    clock: Clock,
    /// The latest time each node's batches carried.
    times: BTreeMap<NodeId, u64>,
    logger: slog::Logger,
    metrics: Arc<RaftMetrics>,
}

impl MultiRaft {
    /// Loads every range stored in `engine` and prepares its raft group. `store` must count
    /// each batch it takes in `metrics.event_batches_taken` (and answer `events_held`), as the
    /// Store does: MultiRaft sends it the next batch only then. Of `store_settings`, MultiRaft
    /// uses the clock and the planted bugs.
    pub fn load(
        node: NodeId,
        engine: Arc<Engine>,
        settings: RaftSettings,
        store: Recipient<Events>,
        transport: Box<dyn Transport>,
        metrics: Arc<RaftMetrics>,
        store_settings: &StoreSettings,
    ) -> Result<MultiRaft, StorageError> {
        let logger = slog::Logger::root(
            slog::Drain::fuse(slog_stdlog::StdLog),
            slog::o!("node" => node.0),
        );
        let mut mr = MultiRaft {
            node,
            boot: engine.boot(),
            engine: engine.clone(),
            leader_wait: leader_wait_ticks(&settings, store_settings.request_timeout),
            settings,
            groups: HashMap::default(),
            dirty: BTreeSet::new(),
            answers: VecDeque::new(),
            awake: BTreeSet::new(),
            round_scheduled: false,
            store,
            myself: None,
            transport,
            events: Vec::new(),
            outbox: VecDeque::new(),
            batches_sent: 0,
            staged: WriteBatch::default(),
            staged_any: false,
            logs_grown: BTreeSet::new(),
            log_held: [0; COMPACT_SLICES as usize],
            purger: None,
            unapplied: 0,
            released: VecDeque::new(),
            leaving: BTreeMap::new(),
            ticks: 0,
            next_read_context: 1,
            tombstones: engine.tombstones()?,
            destroying: BTreeSet::new(),
            spans: BTreeMap::new(),
            electing: BTreeSet::new(),
            incoming: BTreeMap::new(),
            held_off: BTreeMap::new(),
            leaders_found: Vec::new(),
            notices: BTreeMap::new(),
            hints: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            boots: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            live: BTreeSet::new(),
            pings: BTreeSet::new(),
            bugs: store_settings.bugs,
            clock: store_settings.clock.clone(),
            times: BTreeMap::new(),
            logger,
            metrics,
        };
        for d in engine.descriptors()? {
            mr.open_group(d.id, None)?;
        }
        // Replicas destroyed before a stop whose keys the Store has still to delete: no new
        // replica of their ranges here until it has (`ReplicaDestroyed`).
        for range in engine.purges()? {
            mr.destroying.insert(range);
            if let Some(span) = engine.purge_span(range)? {
                mr.spans.insert(range, span);
            }
        }
        Ok(mr)
    }

    fn raft_config(&self, id: ReplicaId, applied: u64) -> raft::Config {
        raft::Config {
            id: id.0,
            election_tick: self.settings.election_ticks,
            heartbeat_tick: self.settings.heartbeat_ticks,
            applied,
            max_size_per_msg: self.settings.max_size_per_msg,
            max_inflight_msgs: self.settings.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // See "Commit indexes" in the module documentation.
            skip_bcast_commit: true,
            ..Default::default()
        }
    }

    /// Creates the group of a range from what is stored, or an empty one for `new_replica` (a
    /// replica added to this node, to be filled by a snapshot).
    fn open_group(
        &mut self,
        range: RangeId,
        new_replica: Option<ReplicaId>,
    ) -> Result<(), StorageError> {
        if new_replica.is_some() && self.engine.has_log(range) {
            // Left by a replica removed before, whose deletion a crash interrupted, or by an
            // empty one before a restart: the new replica starts empty, but for its term and
            // vote.
            self.engine.clean_log_keeping_vote(range)?;
        }
        // A new replica starts from nothing but its raft log's term and vote, whatever sled
        // holds of the range: a split the Store is writing on its own thread at this moment,
        // of which a load could read part (a conf state not yet there, an applied index
        // already): `split` gives it that state once written.
        let (mut storage, descriptor, applied) = match new_replica {
            Some(_) => (RangeStorage::empty(self.engine.clone(), range)?, None, 0),
            None => (
                RangeStorage::load(self.engine.clone(), range)?,
                self.engine.descriptor(range)?,
                self.engine.applied(range)?.index,
            ),
        };
        let stored = members(storage.conf_state()).find(|&id| ReplicaId(id).node() == self.node);
        let removed: BTreeSet<u64> = (descriptor.as_ref())
            .map(|d| d.removed.iter().map(|r| r.0).collect())
            .unwrap_or_default();
        if let Some(d) = descriptor {
            self.spans.insert(range, (d.start_key, d.end_key));
        }
        let Some(replica) = new_replica.or(stored.map(ReplicaId)) else {
            // Removed from the range, and a crash came before its data was deleted.
            let replica = removed
                .iter()
                .map(|&id| ReplicaId(id))
                .filter(|r| r.node() == self.node)
                .max()
                .unwrap_or(ReplicaId::new(self.node, 0));
            self.finish_removal(range, replica);
            return Ok(());
        };
        // The commit index is persisted lazily (LightReady); applied entries were committed.
        if storage.hard_state().commit < applied {
            let mut batch = WriteBatch::default();
            storage.stage_commit(applied, &mut batch);
            self.engine.commit(batch)?;
        }
        let conf_index = storage.conf_index();
        let mut node = RawNode::new(&self.raft_config(replica, applied), storage, &self.logger)
            .map_err(|e| StorageError::Corrupt {
                what: format!("raft state of {range}"),
                detail: e.to_string(),
            })?;
        // A conf change the Store applied just before a crash, whose new conf state MultiRaft
        // had not yet written: apply it again, as the callback would have.
        if applied > conf_index {
            let entries = self
                .engine
                .log_entries_between(range, conf_index + 1, applied)?;
            let mut batch = WriteBatch::default();
            for e in &entries {
                if let Some(cc) = conf_change_of(e) {
                    if let Ok(cs) = node.apply_conf_change(&cc) {
                        node.mut_store().stage_conf_state(cs, e.index, &mut batch);
                    }
                }
            }
            self.engine.commit(batch)?;
            if !members(node.store().conf_state()).any(|id| id == replica.0) {
                // The replayed change removed this replica.
                self.finish_removal(range, replica);
                return Ok(());
            }
        }
        self.logs_grown.insert(range);
        self.groups.insert(
            range,
            Group {
                node,
                replica,
                removed,
                snapshots_out: Vec::new(),
                appends_sent: Vec::new(),
                awaiting_callback: None,
                held: VecDeque::new(),
                held_for_change: Vec::new(),
                new_reads: Vec::new(),
                reads_in_flight: Vec::new(),
                answered_at: BTreeMap::new(),
                handed: applied,
                applied,
                written: applied,
                leader: 0,
                snapshot_requested: false,
                snapshot_floor: None,
                after_transfer: Vec::new(),
                transfer_started: 0,
                queued_changes: Vec::new(),
                in_doubt: BTreeMap::new(),
                proposers: BTreeMap::new(),
                lease: None,
                transferred_in: 0,
                campaigns_first: None,
                renew_lease: false,
                quiescent: false,
                compact_hint: 0,
                hinted: 0,
                counted: 0,
                electing_until: 0,
                no_votes_until: 0,
                transfer_term: 0,
            },
        );
        Ok(())
    }

    /// Another range here with keys in `[start, end)`, if any.
    fn overlapping(&self, range: RangeId, start: &[u8], end: &[u8]) -> Option<RangeId> {
        (self.spans.iter().chain(&self.incoming))
            .find(|(&id, (s, e))| id != range && crate::storage::overlap(start, end, s, e))
            .map(|(&id, _)| id)
    }

    /// The Store applied a split of `left` (whose span is now the left part) and wrote it: the
    /// right range's group is created from what the Store wrote (an empty replica of it that
    /// messages made here meanwhile is replaced, its term and vote kept), unless its replica
    /// here was removed before (`!created`): the Store then deletes its keys, as a destroyed
    /// replica's. If this node leads the left range, its new replica campaigns at once, as
    /// CockroachDB's does, rather than the range waiting an election timeout for a leader.
    fn split(&mut self, left: RangeDescriptor, right: RangeDescriptor, created: bool) {
        self.spans
            .insert(left.id, (left.start_key.clone(), left.end_key.clone()));
        self.spans
            .insert(right.id, (right.start_key.clone(), right.end_key.clone()));
        let held_off = self.held_off.remove(&right.id);
        if let Some(g) = self.groups.get_mut(&left.id) {
            // Built over the wider span: no follower could take it any more.
            g.node.mut_store().drop_snapshot();
        }
        if !created {
            self.destroying.insert(right.id);
            return;
        }
        let mine = right.replica_of(self.node);
        let removed = self.tombstones.get(&right.id);
        if self.destroying.contains(&right.id) || removed.is_some_and(|&t| mine <= Some(t)) {
            // Removed here since the Store looked: its removal reaches the Store next.
            return;
        }
        let mut replaced = false;
        if let Some(g) = self.groups.get(&right.id) {
            if g.node.store().conf_state() != &ConfState::default() {
                return;
            }
            replaced = true;
            // Empty, and nothing of it is in flight between rounds: what raft holds and has
            // not written (a vote not yet answered) is dropped, as if its message were.
            log::info!(
                "{}: {}: the empty replica made by its messages takes the split's state",
                self.node,
                right.id
            );
            self.groups.remove(&right.id);
            self.awake.remove(&right.id);
            self.dirty.remove(&right.id);
        }
        if let Err(e) = self.open_group(right.id, None) {
            panic!("multiraft: {}: cannot create {}: {e}", self.node, right.id);
        }
        // A replica here before means the range has a leader elsewhere, which sent it messages.
        let leads_left = !replaced && self.groups.get(&left.id).is_some_and(|g| g.is_leader());
        let election = self.settings.election_ticks as u64;
        if let Some(g) = self.groups.get_mut(&right.id) {
            if leads_left {
                let _ = g.node.campaign();
            }
            g.electing_until = self.ticks + self.leader_wait;
            if replaced {
                g.no_votes_until = self.ticks + election;
            }
            self.electing.insert(right.id);
        }
        self.dirty.insert(right.id);
        if let Some(m) = held_off {
            self.step_received(right.id, false, m, None);
        }
    }

    /// Proposes what a range held until it knew a leader (see `Group::electing_until`): now it
    /// does (`found`), or it waited long enough. Those then go as any proposal to a range
    /// without a leader does (refused), and so do the next ones until it knows one, unless
    /// nothing was left waiting.
    fn release_for_leader(&mut self, range: RangeId, found: bool) {
        self.electing.remove(&range);
        let Some(g) = self.groups.get_mut(&range) else {
            return;
        };
        if found || g.held.is_empty() {
            g.electing_until = 0;
        }
        if g.awaiting_callback.is_some() {
            return;
        }
        self.propose_held(range);
        self.dirty.insert(range);
    }

    /// A proposal of this node's forwarded to a leader that could not be reached: a command
    /// (its bytes) is held until the range knows its next leader, unless it waited for one
    /// long enough already; a membership change is refused (its proposer tries again).
    fn forward_failed(&mut self, range: RangeId, proposal: ProposalId, command: Option<&[u8]>) {
        if let (Some(g), Some(data)) = (self.groups.get_mut(&range), command) {
            let wait = (self.ticks, self.leader_wait);
            if g.waits_for_leader(range, (true, false), wait, &mut self.electing) {
                g.in_doubt.remove(&proposal);
                let command = ProposalPayload::Command(data.to_vec());
                // Before any later one of this node's held meanwhile (while a vote request
                // left the range without a leader before the send): they go in the order made.
                let at = (g.held.iter())
                    .position(|h| matches!(h, Held::Local(p, _) if *p > proposal))
                    .unwrap_or(g.held.len());
                g.held.insert(at, Held::Local(proposal, command));
                return;
            }
        }
        self.events.push(Event::ProposalFailed {
            proposal,
            error: ProposeError::NoLeader(range),
        });
    }

    /// Proposes what `range` held, in order, as it would have been when it came: this node's
    /// commands in a row together (in as few messages as they fit), as they come from the Store.
    fn propose_held(&mut self, range: RangeId) {
        let Some(g) = self.groups.get_mut(&range) else {
            return;
        };
        let held = std::mem::take(&mut g.held);
        let mut commands = Vec::new();
        for h in held {
            match h {
                Held::Local(proposal, ProposalPayload::Command(data)) => {
                    commands.push((proposal, data));
                    continue;
                }
                Held::Local(proposal, payload) => {
                    self.propose_commands(range, std::mem::take(&mut commands));
                    self.propose(range, proposal, payload);
                }
                Held::Forwarded(m) => {
                    self.propose_commands(range, std::mem::take(&mut commands));
                    self.step_forwarded(range, m);
                }
            }
        }
        self.propose_commands(range, commands);
    }

    /// Drops the group of a range whose replica here was removed; the Store deletes its data
    /// (in order, after every event handed to it before) and confirms with
    /// [`ReplicaDestroyed`].
    fn remove_replica(&mut self, range: RangeId) {
        self.leaving.remove(&range);
        self.incoming.remove(&range);
        self.held_off.remove(&range);
        let Some(g) = self.groups.remove(&range) else {
            return;
        };
        self.metrics.leases.lock().expect("leases").remove(&range);
        self.unapplied = self.unapplied.saturating_sub(g.handed - g.applied);
        self.dirty.remove(&range);
        let queued = g.queued_changes.into_iter().map(|(h, _)| h);
        for h in g.held.into_iter().chain(g.after_transfer).chain(queued) {
            if let Held::Local(proposal, _) = h {
                self.events.push(Event::ProposalFailed {
                    proposal,
                    error: ProposeError::RangeNotFound(range),
                });
            }
        }
        let reads: Vec<ReadId> = g
            .new_reads
            .into_iter()
            .chain(g.reads_in_flight.into_iter().flat_map(|p| p.reads))
            .map(|(r, _)| r)
            .collect();
        if !reads.is_empty() {
            self.events.push(Event::ReadsFailed {
                reads,
                error: ProposeError::RangeNotFound(range),
            });
        }
        self.finish_removal(range, g.replica);
    }

    /// Has the Store delete what is left of a removed replica, and refuses the range until then.
    fn finish_removal(&mut self, range: RangeId, replica: ReplicaId) {
        log::info!("{}: replica {replica} of {range} removed", self.node);
        self.tombstones.insert(range, replica);
        self.destroying.insert(range);
        // What is staged for the range (a commit index, a conf state) is written before the
        // Store deletes the range, not after, where it would outlive the deletion. Its log goes
        // once the Store has (see `ReplicaDestroyed`).
        self.staged_any = true;
        self.events.push(Event::ReplicaRemoved { range, replica });
    }

    /// Steps a proposal a follower forwarded (`MsgPropose`): held while the group awaits a
    /// membership callback; a command held while this leader hands its leadership over, then
    /// sent on to the next leader; a membership change is checked as a local one would be
    /// (refused while another is pending or when it re-adds a removed replica; removing this
    /// leader waits for leadership to move). A refused change is dropped: the follower's
    /// client gets its timeout.
    fn step_forwarded(&mut self, range: RangeId, m: raft::prelude::Message) {
        let Some(g) = self.groups.get_mut(&range) else {
            return;
        };
        self.dirty.insert(range);
        g.quiescent = false;
        // A follower's proposal waits like a local one (contract 4).
        let Some(Held::Forwarded(m)) = hold(g, Held::Forwarded(m), &self.bugs, &self.metrics)
        else {
            return;
        };
        let m = match forwarded_change(&m) {
            None => {
                // Commands sent on to a leader handing its leadership over, or to a replica
                // that knows no leader (it just stepped down), which raft would drop, wait for
                // the next leader and go on to it (their proposer waits: see `Doubt`); later
                // ones wait behind them.
                let (cause, wait) = (g.takes_no_proposal(), (self.ticks, self.leader_wait));
                if g.waits_for_leader(range, (cause, true), wait, &mut self.electing) {
                    g.held.push_back(Held::Forwarded(m));
                    return;
                }
                m
            }
            Some(cc) => match g.admit_change(range, &cc, Held::Forwarded(m), self.ticks) {
                Admission::Now(Held::Forwarded(m)) => m,
                Admission::Now(Held::Local(..)) => unreachable!("admitted as it came"),
                Admission::Kept => return,
                Admission::Refused(e) => {
                    log::warn!("{}: {range}: refusing a forwarded change: {e}", self.node);
                    return;
                }
            },
        };
        let from = m.from;
        let first = g.node.raft.raft_log.last_index() + 1;
        if let Err(e) = g.step(m) {
            log::debug!("{}: {range}: step: {e}", self.node);
        }
        let last = g.node.raft.raft_log.last_index();
        if g.is_leader() && from != g.replica.0 && last >= first {
            g.awaits_commit(from, first, last);
        }
    }

    /// Tells `replica`'s node, with the next round, that it was removed from `range`.
    fn notify_removed(&mut self, range: RangeId, replica: ReplicaId) {
        let list = self.notices.entry(replica.node()).or_default();
        if !list.contains(&(range, replica)) {
            list.push((range, replica));
        }
    }

    /// How long a lease lasts from the moment its read index was asked (see "Leases").
    fn lease_duration(&self) -> Duration {
        let election = self.settings.tick_interval * self.settings.election_ticks as u32;
        match self.bugs.lease_outlives_elections {
            false => election / 2,
            true => election * 20,
        }
    }

    /// The next tick, a tick interval after this one was handled. Never sooner: an interval
    /// timer would run the ticks missed while the process was held up back to back, and
    /// election timeouts, and the leases that rely on them, count ticks as time.
    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.settings.tick_interval, |mr, ctx| {
            mr.on_tick();
            // Events the Store could not take yet are retried even when no group is busy.
            if !mr.dirty.is_empty()
                || !mr.outbox.is_empty()
                || !mr.pings.is_empty()
                || mr.staged_any
            {
                mr.schedule_round(ctx);
            }
            mr.schedule_tick(ctx);
        });
    }

    /// Runs a round once the thread's other tasks had a turn, and then the messages that came
    /// meanwhile were handled. Not sooner: the connections to peers run on this thread, and so
    /// do its timers (a timer fires only once the thread's runtime is back to check them). A
    /// round that runs at once, as a self-addressed message would, and leaves work for another
    /// (the answers past a round's share: see `step_answers`) would chain rounds in one turn of
    /// the thread for as long as work remains: nothing sent or received meanwhile, and no tick
    /// run, for seconds while a node catches up.
    fn schedule_round(&mut self, ctx: &mut Context<Self>) {
        if !self.round_scheduled {
            self.round_scheduled = true;
            ctx.spawn(
                actix::fut::wrap_future(tokio::task::yield_now())
                    .map(|_, mr: &mut Self, ctx| mr.run_round(ctx)),
            );
        }
    }

    fn mark_dirty(&mut self, range: RangeId, ctx: &mut Context<Self>) {
        self.dirty.insert(range);
        self.schedule_round(ctx);
    }

    /// Proposes now, or holds the proposal while the group awaits a membership callback.
    fn propose(&mut self, range: RangeId, proposal: ProposalId, payload: ProposalPayload) {
        match payload {
            ProposalPayload::Command(data) => self.propose_commands(range, vec![(proposal, data)]),
            ProposalPayload::ChangeReplicas(cc) => self.propose_change(range, proposal, cc),
        }
    }

    fn propose_change(&mut self, range: RangeId, proposal: ProposalId, cc: ConfChangeV2) {
        let Some(g) = self.groups.get_mut(&range) else {
            self.events.push(Event::ProposalFailed {
                proposal,
                error: ProposeError::RangeNotFound(range),
            });
            return;
        };
        g.quiescent = false;
        let held = Held::Local(proposal, ProposalPayload::ChangeReplicas(cc.clone()));
        let Some(held) = hold(g, held, &self.bugs, &self.metrics) else {
            return;
        };
        match g.admit_change(range, &cc, held, self.ticks) {
            Admission::Now(_) => {}
            Admission::Kept => return,
            Admission::Refused(error) => {
                self.events.push(Event::ProposalFailed { proposal, error });
                return;
            }
        }
        match g.node.propose_conf_change(proposal.to_context(), cc) {
            // In doubt as a write is, if forwarded to a leader that then stopped: its proposer
            // hears so soon after another is elected, not at its timeout (a minute for admin).
            Ok(()) => {
                let doubt = Doubt {
                    term: g.node.raft.term,
                    tick: self.ticks,
                    change: true,
                    answer_at: None,
                };
                g.in_doubt.insert(proposal, doubt);
            }
            Err(e) => {
                let error = match e {
                    raft::Error::ProposalDropped => ProposeError::NoLeader(range),
                    e => ProposeError::InvalidChange(range, e.to_string()),
                };
                self.events.push(Event::ProposalFailed { proposal, error });
            }
        }
    }

    /// Proposes commands to a range, in order, in raft messages of up to `max_size_per_msg`
    /// (each one append to each follower, or one message forwarding them to the leader, instead
    /// of one per command); or holds them while the group awaits a membership callback.
    fn propose_commands(&mut self, range: RangeId, commands: Vec<(ProposalId, Vec<u8>)>) {
        if commands.is_empty() {
            return;
        }
        let Some(g) = self.groups.get_mut(&range) else {
            for (proposal, _) in commands {
                self.events.push(Event::ProposalFailed {
                    proposal,
                    error: ProposeError::RangeNotFound(range),
                });
            }
            return;
        };
        g.quiescent = false;
        // Where the range knows no leader, or its leader here hands its leadership over (raft
        // then takes no proposal), proposals wait for the next leader; later ones behind them.
        // So they do while the last leader may still send on earlier ones of this node's.
        let cause = g.takes_no_proposal() || g.awaits_handed_over();
        let wait = (self.ticks, self.leader_wait);
        let limit = self.settings.max_size_per_msg;
        let mut chunks: Vec<(Vec<ProposalId>, Vec<Entry>, u64)> = Vec::new();
        for (proposal, data) in commands {
            let held = Held::Local(proposal, ProposalPayload::Command(data));
            let Some(held) = hold(g, held, &self.bugs, &self.metrics) else {
                continue;
            };
            if g.waits_for_leader(range, (cause, false), wait, &mut self.electing) {
                g.held.push_back(held);
                continue;
            }
            let Held::Local(proposal, ProposalPayload::Command(data)) = held else {
                unreachable!("a command held as it came");
            };
            let e = Entry {
                data: data.into(),
                context: proposal.to_context().into(),
                ..Default::default()
            };
            let bytes = (e.data.len() + e.context.len()) as u64;
            match chunks.last_mut() {
                Some((proposals, entries, size)) if *size + bytes <= limit => {
                    proposals.push(proposal);
                    entries.push(e);
                    *size += bytes;
                }
                _ => chunks.push((vec![proposal], vec![e], bytes)),
            }
        }
        let mut dropped = Vec::new();
        for (proposals, entries, _) in chunks {
            // What raft-rs's `propose` does, for many entries: raft appends them all, or, with
            // no leader to take them, none.
            let mut m = raft::prelude::Message::default();
            m.set_msg_type(MessageType::MsgPropose);
            m.from = g.node.raft.id;
            m.set_entries(entries.into());
            match g.node.raft.step(m) {
                Ok(()) => {
                    let doubt = Doubt {
                        term: g.node.raft.term,
                        tick: self.ticks,
                        change: false,
                        answer_at: None,
                    };
                    g.in_doubt.extend(proposals.iter().map(|&p| (p, doubt)));
                }
                Err(_) => dropped.extend(proposals),
            }
        }
        for proposal in dropped {
            self.events.push(Event::ProposalFailed {
                proposal,
                error: ProposeError::NoLeader(range),
            });
        }
    }

    /// Counts `n` events as handed over to the Store (see `RaftMetrics::events_handed`).
    fn count_handed(&self, n: usize) {
        self.metrics
            .events_handed
            .fetch_add(n as u64, Ordering::Release);
    }

    /// Gives the Store the events kept back, then `events`, never waiting. The first `counted`
    /// of them were counted as handed over already.
    fn hand_to_store(&mut self, events: Vec<Event>, counted: usize) {
        if !events.is_empty() {
            self.count_handed(events.len() - counted);
            // Behind a full mailbox, later events join the last batch kept back: the Store then
            // applies fewer, larger batches, which is what a slow Store needs.
            match self.outbox.back_mut() {
                Some(last) => last.0.extend(events),
                None => self.outbox.push_back(Events(events)),
            }
        }
        while let Some(batch) = self.outbox.pop_front() {
            // A Store gone with a batch untaken is noticed by `try_send`.
            let sent = match self.store_has_enough() && self.store.connected() {
                true => Err(SendError::Full(batch)),
                false => self.store.try_send(batch),
            };
            match sent {
                Ok(()) => self.batches_sent += 1,
                Err(SendError::Full(batch)) => {
                    self.outbox.push_front(batch);
                    self.metrics.events_deferred.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(SendError::Closed(_)) => {
                    log::warn!("{}: store stopped; dropping events", self.node);
                    self.outbox.clear();
                    break;
                }
            }
        }
    }

    /// Whether [`BATCHES_QUEUED`] batches of events wait in the Store's mailbox; if so, the
    /// Store is asked to say when it takes one ([`EventsTaken`]).
    fn store_has_enough(&self) -> bool {
        let full = || {
            let taken = self.metrics.event_batches_taken.load(Ordering::SeqCst);
            self.batches_sent >= taken + BATCHES_QUEUED
        };
        if !full() {
            return false;
        }
        self.metrics.events_held.store(true, Ordering::SeqCst);
        // Taken meanwhile, before the Store could see the flag?
        full()
    }

    fn send_batches(&mut self, mut out: BTreeMap<NodeId, Vec<(RangeId, raft::prelude::Message)>>) {
        for to in self
            .notices
            .keys()
            .chain(self.hints.keys())
            .chain(&self.pings)
        {
            out.entry(*to).or_default();
        }
        self.pings.clear();
        for (to, all) in out {
            self.last_sent.insert(to, self.ticks);
            let snapshots: Vec<(RangeId, u64, usize, u64)> = all
                .iter()
                .filter(|(_, m)| m.get_msg_type() == MessageType::MsgSnapshot)
                .map(|(r, m)| {
                    let s = m.get_snapshot();
                    (*r, m.to, s.data.len(), s.get_metadata().index)
                })
                .collect();
            self.metrics
                .snapshots_sent
                .fetch_add(snapshots.len() as u64, Ordering::Relaxed);
            let ranges: Vec<(RangeId, u64)> = all.iter().map(|(r, m)| (*r, m.to)).collect();
            let mut batch = RaftBatch::new(self.node, to);
            batch.boot = self.boot;
            batch.clock = self.clock.now_ms();
            batch.removed = self.notices.remove(&to).unwrap_or_default();
            let hints = self.hints.remove(&to).unwrap_or_default();
            batch.compact = hints
                .iter()
                .map(|(&range, &index)| (range, index))
                .collect();
            for (range, m) in all {
                if m.get_msg_type() == MessageType::MsgTimeoutNow {
                    // Before it leaves: see `Group::transferred_in`.
                    if let Some(g) = self.groups.get_mut(&range) {
                        g.transferred_in = g.node.raft.term;
                        g.lease = None;
                    }
                    self.metrics.leases.lock().expect("leases").remove(&range);
                }
                let g = self.groups.get_mut(&range);
                let quiescent = g.as_ref().is_some_and(|g| g.quiescent);
                if let Some(g) = g.filter(|_| m.get_msg_type() == MessageType::MsgAppend) {
                    g.append_exchanged(m.to, self.ticks);
                }
                if quiescent
                    && m.get_msg_type() == MessageType::MsgHeartbeatResponse
                    && m.context.is_empty()
                {
                    // The answer to the heartbeat that quiesced this follower (or to one just
                    // before it): not sent (see "Quiescence"). The leader's quorum check does not
                    // miss it: a leader counts only ticks it is awake for toward that check, and
                    // while awake it sends a heartbeat every heartbeat interval, whose answers
                    // count.
                    continue;
                }
                let from_start = matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend
                        | MessageType::MsgRequestVote
                        | MessageType::MsgRequestPreVote
                );
                if from_start && m.index == BOOTSTRAP_INDEX {
                    // From the start of the range's log, or a campaign on it: see `starts` of
                    // `RaftBatch`.
                    if let Some((start, _)) = self.spans.get(&range) {
                        if batch.starts.last().is_none_or(|(r, _)| *r != range) {
                            batch.starts.push((range, start.clone()));
                        }
                    }
                }
                match Heartbeat::of(range, &m, quiescent) {
                    Some(h) => batch.heartbeats.push(h),
                    None => batch.messages.push((range, m)),
                }
            }
            // A command's bytes are shared, not copied: needed only if the send fails.
            let proposals: Vec<_> = batch
                .messages
                .iter()
                .filter(|(_, m)| m.get_msg_type() == MessageType::MsgPropose)
                .flat_map(|(r, m)| m.get_entries().iter().map(move |e| (*r, e)))
                .filter_map(|(r, e)| {
                    let p = ProposalId::from_context(&e.context)?;
                    // A command's bytes, to propose again; a membership change is refused.
                    let command = e.get_entry_type() == EntryType::EntryNormal;
                    (p.node == self.node).then(|| (r, p, command.then(|| e.data.clone())))
                })
                .collect();
            let sent = self.transport.send(batch).is_ok();
            if !sent && self.live.contains(&to) {
                // Sent again with the next round; to a node not live, once it is again (see
                // `heard_from`).
                self.hints.insert(to, hints);
            }
            if !sent {
                // A proposal forwarded to a leader that cannot be reached never left this
                // node. It waits for the next leader, as where the range has none (see
                // `leader_wait_ticks`): this one is likely gone (killed: its connection
                // closed). Then it is refused, and its client may retry at once.
                for (range, proposal, data) in proposals {
                    self.forward_failed(range, proposal, data.as_deref());
                }
                for (range, peer) in ranges {
                    if let Some(g) = self.groups.get_mut(&range) {
                        g.node.report_unreachable(peer);
                    }
                }
            } // A snapshot handed over may still travel for a while (in chunks): raft resumes
              // replicating once the follower acknowledges it; `on_tick` reports it lost if that
              // takes too long. Meanwhile raft sends that follower nothing else.
            let election = self.settings.election_ticks as u64;
            for (range, peer, bytes, index) in snapshots {
                if let Some(g) = self.groups.get_mut(&range) {
                    if sent {
                        // Unless a newer one is being built, or this one is older than the
                        // one the floor keeps the log for.
                        if !g.snapshot_requested
                            && g.snapshot_floor.is_some_and(|(floor, _)| index >= floor)
                        {
                            g.snapshot_floor = None;
                        }
                        let deadline = self.ticks
                            + SNAPSHOT_ELECTIONS * election
                            + (bytes / SNAPSHOT_BYTES_PER_TICK) as u64;
                        g.snapshots_out.retain(|(p, _)| *p != peer);
                        g.snapshots_out.push((peer, deadline));
                    } else {
                        g.node.report_snapshot(peer, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    /// One round over every dirty group (see the module documentation).
    fn run_round(&mut self, ctx: &mut Context<Self>) {
        self.round_scheduled = false;
        self.metrics.rounds.fetch_add(1, Ordering::Relaxed);
        self.step_answers();
        let mut batch = std::mem::take(&mut self.staged);
        let mut must_write = std::mem::take(&mut self.staged_any);
        let mut events = std::mem::take(&mut self.events);
        let mut leader_msgs: BTreeMap<NodeId, Vec<_>> = BTreeMap::new();
        let mut readies = Vec::new();
        let myself = self.myself.clone().expect("MultiRaft started");
        let lease = self.lease_duration();
        let prefix = read_prefix(self.node, self.boot);
        let election_ticks = self.settings.election_ticks as u64;

        let mut leaders_found = Vec::new();
        for range in std::mem::take(&mut self.dirty) {
            let Some(g) = self.groups.get_mut(&range) else {
                continue;
            };
            if !g.quiescent {
                self.awake.insert(range);
            }
            let renew = std::mem::take(&mut g.renew_lease);
            if !g.new_reads.is_empty() || renew {
                let now = Instant::now();
                let leased = g.holds_lease(now);
                if !g.new_reads.is_empty() {
                    if leased {
                        self.metrics.reads_leased.fetch_add(1, Ordering::Relaxed);
                    }
                    let reads = std::mem::take(&mut g.new_reads);
                    let context = &mut self.next_read_context;
                    g.read_index(&prefix, context, reads, self.ticks, leased, now);
                }
                // Renewed before it runs out (unless the reads just asked renew it), so that
                // reads keep being served from it.
                if g.lease_runs_out(now, lease / 2) {
                    let context = &mut self.next_read_context;
                    g.read_index(&prefix, context, Vec::new(), self.ticks, false, now);
                }
            }
            tell_proposers(g);
            if g.node.store().take_snapshot_request() && !g.snapshot_requested {
                g.snapshot_requested = true;
                let until = self.ticks + SNAPSHOT_BUILD_ELECTIONS * election_ticks;
                g.snapshot_floor = Some((g.written, until));
                events.push(Event::SnapshotRequested { range });
            }
            if !g.node.has_ready() {
                continue;
            }
            // A snapshot replaces the range's data: install it only once the Store has applied
            // everything handed to it, so no older entry is applied on top of it.
            // The range becomes dirty again when the Store reports `Applied`.
            if g.node.raft.raft_log.unstable_snapshot().is_some() && g.written < g.handed {
                continue;
            }
            let mut rd = g.node.ready();
            for m in rd.take_messages() {
                leader_msgs
                    .entry(ReplicaId(m.to).node())
                    .or_default()
                    .push((range, m));
            }
            if let Some(ss) = rd.ss() {
                if ss.leader_id != g.leader {
                    if g.lease.take().is_some() {
                        self.metrics.leases.lock().expect("leases").remove(&range);
                    }
                    g.leader = ss.leader_id;
                    if ss.leader_id != 0 {
                        if g.electing_until != 0 {
                            leaders_found.push(range);
                        }
                        let term = g.node.raft.term;
                        events.push(Event::LeaderElected {
                            range,
                            term,
                            leader: ReplicaId(ss.leader_id).node(),
                        });
                        // A write proposed under an earlier term may have been lost with that
                        // leader (forwarded to a leader that died) or may still commit: its
                        // client is told so now, not at its timeout; a change a little later,
                        // and a write too where the old leader handed over to this one.
                        let answer_at = self.ticks + DOUBT_ELECTIONS * election_ticks;
                        let handed_over = g.transfer_term == term;
                        g.in_doubt.retain(|&proposal, d| {
                            if d.term >= term {
                                return true;
                            }
                            if d.change || handed_over {
                                d.answer_at.get_or_insert(answer_at);
                                return true;
                            }
                            events.push(Event::ProposalFailed {
                                proposal,
                                error: ProposeError::LeaderChanged(range),
                            });
                            false
                        });
                    }
                }
            }
            let mut snapshot_index = None;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                match g.node.mut_store().stage_snapshot(&snap, &mut batch) {
                    Ok(descriptor) => {
                        g.removed = descriptor.removed.iter().map(|r| r.0).collect();
                        let span = (descriptor.start_key.clone(), descriptor.end_key.clone());
                        self.spans.insert(range, span);
                        self.incoming.remove(&range);
                        let m = snap.get_metadata();
                        g.handed = m.index;
                        g.applied = m.index;
                        g.written = m.index;
                        snapshot_index = Some(m.index);
                        self.metrics
                            .snapshots_installed
                            .fetch_add(1, Ordering::Relaxed);
                        events.push(Event::SnapshotInstalled {
                            range,
                            index: m.index,
                            term: m.term,
                            descriptor,
                        });
                        must_write = true;
                    }
                    Err(e) => panic!("multiraft: {range}: cannot install snapshot: {e}"),
                }
            }
            let committed = rd.take_committed_entries();
            if hand_over(
                range,
                g,
                committed,
                &mut events,
                &mut self.unapplied,
                &myself,
                self.ticks,
            ) {
                leaders_found.push(range);
            }
            if !rd.entries().is_empty() {
                g.node.mut_store().stage_entries(rd.entries(), &mut batch);
                must_write = true;
                self.logs_grown.insert(range);
            }
            if let Some(hs) = rd.hs() {
                // Only a new term or vote must be durable before messages go out; a commit
                // index alone goes with the next write (etcd's `MustSync`): on restart the
                // commit index is raised to the applied one, and raft learns the rest.
                let before = g.node.store().hard_state();
                must_write |= hs.term != before.term || hs.vote != before.vote;
                g.node.mut_store().stage_hard_state(hs.clone(), &mut batch);
            }
            for rs in rd.take_read_states() {
                let answered_at = g.answered_at.remove(&rs.request_ctx);
                let context = read_context(&prefix, &rs.request_ctx);
                if let Some(pos) = g
                    .reads_in_flight
                    .iter()
                    .position(|p| Some(p.context) == context)
                {
                    let p = g.reads_in_flight.remove(pos);
                    if let Some((term, asked)) = p.renews {
                        if g.is_leader()
                            && g.node.raft.term == term
                            && g.node.raft.lead_transferee.is_none()
                            && g.transferred_in != term
                        {
                            g.lease = Some((term, asked + lease));
                            let local = asked + lease / 2;
                            let mut leases = self.metrics.leases.lock().expect("leases");
                            leases.insert(range, (term, local));
                        }
                    }
                    if !p.reads.is_empty() {
                        // Through a follower, the read decides expiry by the time its leader
                        // answered at, which every later read anywhere is at or past; not by
                        // this node's clock, which may have run ahead of what the leader heard
                        // of it while the answer came. Yet not past this node's clock (and the
                        // millisecond `Clock::observe` takes off), which follows a clock ahead
                        // of it only so far (`MAX_AHEAD_MS`), as its commands do.
                        let own = self.clock.now_ms() + 1;
                        let at = answered_at.map(|t| t.min(own));
                        events.push(Event::ReadReady {
                            range,
                            index: rs.index,
                            reads: p.reads.into_iter().map(|(r, _)| r).collect(),
                            at,
                        });
                    }
                }
            }
            if g.reads_in_flight.is_empty() {
                // Answers raft dropped (of an older term) leave nothing behind.
                g.answered_at.clear();
            }
            readies.push((range, rd, snapshot_index));
        }

        // Proposed once raft has advanced past this round's `Ready` (see `finish_round`).
        self.leaders_found.extend(leaders_found);

        // The leader's messages leave before its own write: followers persist the entries
        // while it does (raft's Ready allows it; etcd's section 10.2.1 of the Raft thesis).
        // The events go first (see `RaftMetrics::events_handed`): entries committed in this
        // Ready were durable here before it, so the Store applies them while this round
        // writes; unless the write must come first, for a snapshot it installs or the conf
        // state of a removed replica, which the Store's deletion of the range must cover.
        let write_first = |e: &Event| {
            matches!(
                e,
                Event::SnapshotInstalled { .. } | Event::ReplicaRemoved { .. }
            )
        };
        let early = must_write && !events.iter().chain(&self.events).any(write_first);
        let overlap = early && !leader_msgs.is_empty();
        let leader_msgs = if early {
            events.append(&mut self.events);
            self.hand_to_store(std::mem::take(&mut events), 0);
            self.send_batches(leader_msgs);
            BTreeMap::new()
        } else {
            leader_msgs
        };
        let round = Persist {
            batch,
            must_write,
            events,
            leader_msgs,
            readies,
        };
        if overlap {
            // The connections to peers run on this thread: one turn of it writes the messages
            // to their sockets before the sync holds the thread. Until then this actor handles
            // nothing else, so the round is not interleaved with other work.
            ctx.wait(
                actix::fut::wrap_future(tokio::task::yield_now())
                    .map(move |_, mr: &mut Self, ctx| mr.finish_round(round, ctx)),
            );
        } else {
            self.finish_round(round, ctx);
        }
    }

    /// The second half of a round: the write, then what raft may do once it is durable.
    fn finish_round(&mut self, round: Persist, ctx: &mut Context<Self>) {
        let Persist {
            batch,
            must_write,
            mut events,
            leader_msgs,
            readies,
        } = round;
        let myself = self.myself.clone().expect("MultiRaft started");
        // Counted before the write: a snapshot's data must not be in sled while the Store can
        // believe it has applied everything handed over (see `GetDigest`).
        let counted = events.len();
        self.count_handed(counted);
        if !must_write {
            // At most commit indexes: kept for the next write.
            self.staged = batch;
        } else {
            let durable = self.engine.commit(batch);
            if let Err(e) = durable {
                // Nothing can be acknowledged without durable storage; stopping is the only
                // safe answer (etcd and TiKV do the same).
                panic!("multiraft: {}: storage failed: {e}", self.node);
            }
            self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
        }

        let mut late_msgs: BTreeMap<NodeId, Vec<_>> = BTreeMap::new();
        for (range, mut rd, snapshot_index) in readies {
            let g = self.groups.get_mut(&range).expect("group of a ready");
            for m in rd.take_persisted_messages() {
                late_msgs
                    .entry(ReplicaId(m.to).node())
                    .or_default()
                    .push((range, m));
            }
            let mut light = g.node.advance_append(rd);
            // Committed by this write: the appends go with the next round.
            tell_proposers(g);
            if let Some(index) = snapshot_index {
                g.node.advance_apply_to(index);
            }
            if let Some(commit) = light.commit_index() {
                // Written with the next round's batch: sled seals its log buffer on every
                // batch, and on restart a commit index behind the applied index is raised to
                // it (see `open_group`); raft learns the rest from the leader.
                g.node.mut_store().stage_commit(commit, &mut self.staged);
            }
            for m in light.take_messages() {
                late_msgs
                    .entry(ReplicaId(m.to).node())
                    .or_default()
                    .push((range, m));
            }
            let committed = light.take_committed_entries();
            if hand_over(
                range,
                g,
                committed,
                &mut events,
                &mut self.unapplied,
                &myself,
                self.ticks,
            ) {
                self.leaders_found.push(range);
            }
            if g.node.has_ready() {
                self.dirty.insert(range);
            }
        }
        for range in std::mem::take(&mut self.leaders_found) {
            self.release_for_leader(range, true);
        }
        // The events before the messages: see `RaftMetrics::events_handed`.
        events.append(&mut self.events);
        self.hand_to_store(events, counted);
        self.send_batches(leader_msgs);
        self.send_batches(late_msgs);
        if !self.dirty.is_empty() || !self.events.is_empty() || !self.answers.is_empty() {
            self.schedule_round(ctx);
        }
    }

    /// Purges the raft log's files on a thread of its own from now on, as TiKV does: a purge
    /// copies the entries that short logs still hold in the oldest files to raft-engine's
    /// rewrite queue, reading each entry's whole batch back to do so. Over 10,000 ranges under
    /// load, with a threshold of 128 MiB, purges took 0.7-1.7 s, and on MultiRaft's thread they
    /// held up every write of the node that long. The thread ends once MultiRaft is gone
    /// (after the purge under way, if any).
    pub fn purge_on_own_thread(
        &mut self,
        me: &Addr<MultiRaft>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        // One purge waits while one runs; more are not asked for.
        let (ask, asked) = std::sync::mpsc::sync_channel(1);
        let (engine, me, node) = (self.engine.clone(), me.downgrade(), self.node);
        let thread = std::thread::Builder::new()
            .name(format!("log-purge-{}", node.0))
            .spawn(move || {
                while asked.recv().is_ok() {
                    let ranges = purge_log(&engine, node);
                    match me.upgrade() {
                        Some(me) => me.do_send(Purged(ranges)),
                        None => return,
                    }
                }
            })?;
        self.purger = Some(ask);
        Ok(thread)
    }

    /// Compacts, up to what they have written, the ranges a purge of the raft log's files
    /// found holding much of the oldest file.
    fn compact_for_purge(&mut self, ranges: Vec<RangeId>) {
        if !ranges.is_empty() {
            log::info!(
                "{}: the raft log's files are past their threshold: compacting {} ranges that hold much of the oldest",
                self.node,
                ranges.len()
            );
        }
        for range in ranges {
            self.compact(range, u64::MAX);
        }
    }

    /// Compacts the log of every range of this tick's slice (one in [`COMPACT_SLICES`], by
    /// range id) up to what its Store has written and what every replica has (so that none is
    /// sent a snapshot for want of a few entries): the log's entries cost memory as long as
    /// they are kept (raft-engine indexes each, and the entry cache holds the newest), and over
    /// thousands of ranges, each written now and then, a range would take hours to reach
    /// `log_compaction_entries`. Past `log_budget_entries` in all, ranges are compacted past
    /// what lagging replicas have too: those catch up by snapshot.
    ///
    /// Only a leader sees what the other replicas have (raft's `matched`). Whenever that index
    /// rose, it sends it to the followers' live nodes with the next round
    /// ([`RaftBatch::compact`]; again should that send fail, or once a node is back: see
    /// `heard_from`), over the budget too. A follower compacts at once as far as the index and
    /// what its Store has written, and no further at its passes: should leadership move to it,
    /// as in a rolling restart, a replica that lags (a node that was down) still catches up
    /// from the log, not by snapshot (which a range over 1 GiB cannot send). A slice at a time,
    /// so that a pass over 10,000 ranges (70-90 ms) does not hold up the raft work of all; and
    /// only over the ranges whose logs took entries since they were last compacted to nothing
    /// (`logs_grown`), so that idle ranges cost nothing.
    fn compact_caught_up(&mut self) {
        let slice = self.ticks / COMPACT_TICKS % COMPACT_SLICES;
        let ranges: Vec<RangeId> = self
            .logs_grown
            .iter()
            .filter(|range| range.0 % COMPACT_SLICES == slice)
            .copied()
            .collect();
        let i = slice as usize;
        let groups = ranges.iter().filter_map(|r| self.groups.get(r));
        self.log_held[i] = groups.map(Group::log_entries).sum();
        let over_budget = self.log_held.iter().sum::<u64>() > self.settings.log_budget_entries;
        let mut targets = Vec::new();
        for range in &ranges {
            let Some(g) = self.groups.get_mut(range) else {
                continue;
            };
            // Followers of a range led elsewhere exchange no raft messages: a node sharing a
            // range that was never talked with is pinged (see `check_liveness`), so that every
            // node sees the same live nodes (see `first_to_campaign`).
            for id in g.members() {
                let node = ReplicaId(id).node();
                if node != self.node && !self.live.contains(&node) {
                    self.last_sent.entry(node).or_insert(0);
                }
            }
            let to = if g.is_leader() {
                let shared = g.shared_index();
                if shared > g.hinted {
                    g.hinted = shared;
                    for id in g.members().filter(|&id| id != g.replica.0) {
                        let node = ReplicaId(id).node();
                        if self.live.contains(&node) {
                            let hints = self.hints.entry(node).or_default();
                            hints.insert(*range, shared);
                        }
                    }
                }
                if over_budget {
                    // Even over the budget, not past a snapshot on its way: its replica
                    // continues from the entries after it, or needs another.
                    g.snapshot_on_its_way().unwrap_or(u64::MAX)
                } else {
                    shared
                }
            } else if over_budget {
                u64::MAX
            } else {
                g.compact_hint
            };
            targets.push((*range, to));
        }
        for (range, to) in targets {
            self.compact(range, to);
        }
        let mut held = 0;
        for range in &ranges {
            let Some(g) = self.groups.get_mut(range) else {
                self.logs_grown.remove(range);
                continue;
            };
            g.counted = g.log_entries();
            held += g.counted;
            if g.counted == 0 {
                self.logs_grown.remove(range);
            }
        }
        self.log_held[i] = held;
        let held = self.log_held.iter().sum();
        self.metrics.log_entries.store(held, Ordering::Relaxed);
    }

    /// Counts what a compaction outside the range's pass removed from a log that held `before`
    /// entries in the slice's entries held, as far as its pass counted them.
    fn compacted_since_pass(&mut self, range: RangeId, before: u64) {
        let Some(g) = self.groups.get_mut(&range) else {
            return;
        };
        let removed = before.saturating_sub(g.log_entries()).min(g.counted);
        g.counted -= removed;
        let held = &mut self.log_held[(range.0 % COMPACT_SLICES) as usize];
        *held = held.saturating_sub(removed);
        let held = self.log_held.iter().sum();
        self.metrics.log_entries.store(held, Ordering::Relaxed);
    }

    /// Stages the compaction of a range's log up to `to` (at most what its Store has written,
    /// and what a snapshot on its way needs: `Group::snapshot_floor`), unless it awaits a
    /// membership callback; says whether it staged any.
    fn compact(&mut self, range: RangeId, to: u64) -> bool {
        let Some(g) = self.groups.get_mut(&range) else {
            return false;
        };
        if g.awaiting_callback.is_some() {
            return false;
        }
        let floor = match g.snapshot_floor {
            Some((index, until)) if self.ticks < until => index,
            _ => u64::MAX,
        };
        let to = to.min(g.written).min(floor);
        if to <= g.node.store().truncated().index {
            return false;
        }
        match g.node.mut_store().stage_compact(to, &mut self.staged) {
            Ok(()) => {
                if self.bugs.compaction_without_data_sync {
                    self.staged.plant_compaction_without_data_sync();
                }
                self.staged_any = true;
                self.metrics.log_compactions.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                log::error!("{}: {range}: log compaction failed: {e}", self.node);
                false
            }
        }
    }

    /// Steps the answers to appends received, oldest first, until the round's share is done:
    /// at most [`STEP_ANSWERS`], and as many as make raft read back at most
    /// `answer_reads_per_round` entries from the log's files. The rest wait for the next round. raft answers an answer
    /// with the entries its follower lacks, read back from the files if the entry cache no
    /// longer holds them: to a node back after a while, the lacking entries of every range it
    /// shares, read in one turn of this thread, which held it up for seconds (ticks, liveness
    /// pings and the other nodes' messages with it), until this node was taken for dead.
    fn step_answers(&mut self) {
        let reads = self.engine.entries_read();
        let mut stepped = 0;
        let most = self.settings.answer_reads_per_round;
        while stepped < STEP_ANSWERS && self.engine.entries_read() - reads < most {
            let Some((range, m)) = self.answers.pop_front() else {
                break;
            };
            self.step_received(range, false, m, None);
            stepped += 1;
        }
        if !self.answers.is_empty() {
            self.metrics.answers_put_off.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Steps one raft message received for `range` (`quiesce`: a quiescing heartbeat).
    fn step_received(
        &mut self,
        range: RangeId,
        quiesce: bool,
        m: raft::prelude::Message,
        start: Option<&Vec<u8>>,
    ) {
        if ReplicaId(m.to).node() != self.node || self.destroying.contains(&range) {
            return;
        }
        let kind = m.get_msg_type();
        let held_kinds = [
            MessageType::MsgAppend,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
        ];
        if let Some(start) = start.filter(|_| held_kinds.contains(&kind)) {
            let empty = (self.groups.get(&range))
                .is_none_or(|g| g.node.store().conf_state() == &ConfState::default());
            // The span of that one key: `[start, start · 0)`.
            let just = [start.as_slice(), &[0]].concat();
            if let Some(left) = self.overlapping(range, start, &just).filter(|_| empty) {
                // The first append of a range born of a split, or its first leader's
                // campaign, to a node whose range it split from has yet to apply the split
                // (CockroachDB's `maybeDropMsgApp`). An empty replica here would refuse the
                // append, and its leader would send a snapshot, which would be refused in
                // turn (it overlaps that range). It would grant the vote, but its answer is
                // lost if the split comes before this node's next round (the split's replica
                // takes the empty one's place, unwritten vote dropped, and votes for no one for
                // an election timeout), and the range then waits one or two election timeouts
                // for a leader, the writes to it held. Once the split is applied here, the
                // replica starts where the append continues, and is given the last message
                // held off: its leader (which sends an append again only an election timeout
                // after one went unanswered, `Group::probe_answered`) or candidate hears at
                // once.
                log::debug!(
                    "{}: {range}: {kind:?} held off until {left} splits",
                    self.node
                );
                if self.held_off.len() < HELD_OFF_MAX || self.held_off.contains_key(&range) {
                    self.held_off.insert(range, m);
                }
                return;
            }
        }
        if self.tombstones.get(&range).is_some_and(|t| m.to <= t.0) {
            return;
        }
        // A snapshot that cannot be installed is refused here, before raft accepts it.
        let mut incoming = None;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let d = match codec::decode::<SnapshotData>(&m.get_snapshot().data) {
                Ok(data) => data.descriptor,
                Err(e) => {
                    log::warn!(
                        "{}: {range}: dropping an undecodable snapshot: {e}",
                        self.node
                    );
                    return;
                }
            };
            if let Some(other) = self.overlapping(range, &d.start_key, &d.end_key) {
                // A range here still holds keys of the snapshot's span: the range it split
                // from, which has yet to apply the split here (it then creates this range),
                // or a range being destroyed. The leader sends the snapshot again later.
                log::info!(
                    "{}: {range}: refusing a snapshot that overlaps {other}",
                    self.node
                );
                return;
            }
            incoming = Some((d.start_key, d.end_key));
        }
        match self.groups.get(&range) {
            // A message for a newer replica of this node: the one here was removed.
            Some(g) if m.to > g.replica.0 => {
                self.remove_replica(range);
                return;
            }
            Some(g) if m.to < g.replica.0 => return,
            Some(_) => {}
            None => {
                // A replica added to this node: created empty, filled by a snapshot; or one of a
                // range born of a split this node has not applied (it may never: it may catch
                // up on the range it split from by a snapshot from after the split), which
                // votes empty so that the range can elect a leader (TiKV's peers do the same).
                if !matches!(
                    m.get_msg_type(),
                    MessageType::MsgAppend
                        | MessageType::MsgHeartbeat
                        | MessageType::MsgSnapshot
                        | MessageType::MsgRequestVote
                        | MessageType::MsgRequestPreVote
                ) {
                    return;
                }
                if let Err(e) = self.open_group(range, Some(ReplicaId(m.to))) {
                    log::error!("{}: cannot create replica of {range}: {e}", self.node);
                    return;
                }
            }
        }
        let g = self.groups.get_mut(&range).expect("group just checked");
        if g.removed.contains(&m.from) {
            // A replica that missed its own removal: tell it.
            self.notify_removed(range, ReplicaId(m.from));
            return;
        }
        if m.get_msg_type() == MessageType::MsgPropose {
            self.step_forwarded(range, m);
            return;
        }
        let (from, term, commit) = (m.from, m.term, m.commit);
        let election = self.settings.election_ticks as u64;
        if kind == MessageType::MsgTimeoutNow {
            g.transfer_term = g.node.raft.term + 1;
        } else if kind == MessageType::MsgRequestVote && m.context == raft::CAMPAIGN_TRANSFER {
            g.transfer_term = term;
        }
        if matches!(
            kind,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && (self.ticks < election || self.ticks < g.no_votes_until)
        {
            // Not before an election timeout since this node started: a replica here may
            // have acknowledged a leader's lease before a restart (see "Leases").
            return;
        }
        if kind == MessageType::MsgHeartbeatResponse && g.probe_answered(&m, self.ticks, election) {
            return;
        }
        if kind == MessageType::MsgReadIndexResp {
            // The answer's time, by the read's context (see `Group::answered_at`).
            if let (Some(e), Some(&t)) =
                (m.entries.first(), self.times.get(&ReplicaId(from).node()))
            {
                g.answered_at.insert(e.data.to_vec(), t);
            }
        }
        let leased = kind == MessageType::MsgReadIndex && g.holds_lease(Instant::now());
        if leased {
            self.metrics.reads_leased.fetch_add(1, Ordering::Relaxed);
        }
        // A heartbeat's answer makes raft send an append to a follower it probes (or one whose
        // appends in flight filled its window): one entry at most, read back from the files if
        // need be. It needs no more to learn where the follower's log stands, and the rest
        // goes with the answer to it, under a round's share of reads (see `step_answers`).
        // raft would read up to `max_size_per_msg` of entries back, in this turn, for every
        // range whose answer came in this batch: for a node back after a while, every range's
        // lacking entries (135,000 of them, 2 s, over 10,000 ranges).
        let max_size = g.node.raft.max_msg_size;
        if kind == MessageType::MsgHeartbeatResponse {
            g.node.raft.max_msg_size = 0;
        }
        if let Err(e) = g.with_read_option(leased, |g| g.step(m)) {
            log::debug!("{}: {range}: step: {e}", self.node);
        }
        g.node.raft.max_msg_size = max_size;
        if let Some(span) = incoming {
            // Taken by raft, to install: no other snapshot over its span until it is.
            if g.node.raft.raft_log.unstable_snapshot().is_some() {
                self.incoming.insert(range, span);
            }
        }
        let g = self.groups.get_mut(&range).expect("group just stepped");
        if kind == MessageType::MsgReadIndex && g.is_leader() {
            g.renew_lease = true;
            if from != g.replica.0 {
                // The read index is this commit index: the follower serves the read once
                // it has applied that far, so it must learn it.
                let committed = g.node.raft.raft_log.committed;
                g.awaits_commit(from, committed, committed);
            }
        }
        g.quiescent = match kind {
            // A quiescing leader's heartbeat: follow it if this replica has its whole log.
            MessageType::MsgHeartbeat if quiesce => {
                let raft = &g.node.raft;
                raft.state == StateRole::Follower
                    && raft.leader_id == from
                    && raft.term == term
                    && raft.raft_log.last_index() == commit
                    && g.is_idle()
            }
            _ => false,
        };
        self.dirty.insert(range);
    }

    /// Node liveness, each tick: a node not heard from within an election timeout is dead, and
    /// the quiescent ranges it leads wake here so that one of their other replicas is elected;
    /// so do the quiescent ranges led here that it leaves without a live quorum.
    /// Every heartbeat interval, each node sharing a range with this one that was sent nothing
    /// is sent an empty batch.
    fn check_liveness(&mut self) {
        let election = self.settings.election_ticks as u64;
        let dead: Vec<NodeId> = self
            .live
            .iter()
            .filter(|n| self.ticks - self.last_heard.get(n).copied().unwrap_or(0) >= election)
            .copied()
            .collect();
        if !dead.is_empty() {
            for n in &dead {
                log::info!("{}: node {n} is not answering", self.node);
                self.live.remove(n);
            }
            for (range, g) in self.groups.iter_mut() {
                let leader = g.node.raft.leader_id;
                let led_by_dead = leader != 0 && dead.contains(&ReplicaId(leader).node());
                if led_by_dead && g.node.raft.state == StateRole::Follower {
                    // Not heard from for an election timeout of this node's ticks: as if this
                    // replica had ticked through one (its promise to the leader, on which the
                    // leader's lease rests, is kept). It votes at once, and campaigns as its
                    // `campaigns_first` record says.
                    g.node.raft.election_elapsed = g.node.raft.election_timeout();
                    let first = first_to_campaign(*range, g, leader, &self.live);
                    g.campaigns_first = Some((g.node.raft.term, first == Some(g.replica.0)));
                }
                let orphaned = g.is_leader() && !g.has_live_quorum(&self.live);
                if g.quiescent && (led_by_dead || orphaned) {
                    g.quiescent = false;
                    self.dirty.insert(*range);
                }
            }
        }
        let heartbeat = self.settings.heartbeat_ticks as u64;
        if self.ticks.is_multiple_of(heartbeat) {
            // Every node this one has talked with (a node sharing a range with it has, since
            // each of their replicas started ticking).
            let peers = self.last_sent.keys().chain(self.last_heard.keys());
            for &n in peers {
                if n != self.node
                    && self.ticks - self.last_sent.get(&n).copied().unwrap_or(0) >= heartbeat
                {
                    self.pings.insert(n);
                }
            }
        }
    }

    /// Wakes the quiescent ranges led by `node`'s replicas, which elect a new leader unless
    /// that replica leads them again.
    fn wake_led_by(&mut self, node: NodeId) {
        for (range, g) in self.groups.iter_mut() {
            let leader = g.node.raft.leader_id;
            if g.quiescent && leader != 0 && ReplicaId(leader).node() == node {
                g.quiescent = false;
                self.dirty.insert(*range);
            }
        }
    }

    /// A batch from `from` carried its sender's time (see [`Clock::observe`]).
    fn heard_time(&mut self, from: NodeId, clock: u64) {
        let latest = self.times.entry(from).or_default();
        *latest = (*latest).max(clock);
        let heard = self.clock.observe(clock);
        if heard.capped && heard.moved > 0 {
            log::error!(
                "{}: node {from}'s clock is more than {} s ahead of this node's: check that \
                 both keep time (NTP); values expire by a clock {} s ahead of this node's",
                self.node,
                MAX_AHEAD_MS / 1000,
                MAX_AHEAD_MS / 1000
            );
        } else if heard.moved >= CLOCK_NOTED_MS {
            log::warn!(
                "{}: node {from}'s clock is ahead of this node's: values expire by a clock \
                 {} ms ahead of this node's from now on",
                self.node,
                heard.ahead
            );
        }
    }

    /// A batch from `from` (sent by its boot `boot`, 0 if not known) arrived: if that node was
    /// dead, is heard from for the first time, or restarted since it was last heard from (its
    /// replicas lost the leadership they held: it died, however briefly), the quiescent ranges
    /// this node leads with a replica there wake, to bring it up to date, and their compaction
    /// indexes go to it again; a restart also wakes the ranges it led.
    fn heard_from(&mut self, from: NodeId, boot: u64) {
        if boot != 0 {
            let before = self.boots.insert(from, boot);
            if before.is_some_and(|b| b != boot) {
                log::info!("{}: node {from} restarted", self.node);
                self.metrics.peer_restarts.fetch_add(1, Ordering::Relaxed);
                self.live.remove(&from);
                self.wake_led_by(from);
            }
        }
        self.last_heard.insert(from, self.ticks);
        if !self.live.insert(from) {
            return;
        }
        let mut removed = Vec::new();
        for (range, g) in self.groups.iter_mut() {
            if !g.is_leader() {
                continue;
            }
            if g.replica_on(from).is_none() {
                // A replica of it there removed while the node was down or cut off is told
                // so now: a learner sends nothing, and a range quiescent here does not tell
                // its removed replicas again (see `on_tick`), so it would stay for ever.
                let there = g.removed.iter().filter(|&&id| ReplicaId(id).node() == from);
                if let Some(&id) = there.max() {
                    removed.push((*range, ReplicaId(id)));
                }
                continue;
            }
            if g.quiescent {
                g.quiescent = false;
                g.node.ping();
                self.dirty.insert(*range);
            }
            // The compaction index it was last sent may have been lost, or forgotten in a
            // restart: sent again with the range's next pass.
            g.hinted = 0;
            self.logs_grown.insert(*range);
        }
        for (range, replica) in removed {
            self.notify_removed(range, replica);
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let waited = 10 * self.settings.election_ticks as u64;
        let gone: Vec<RangeId> = (self.leaving.iter())
            .filter(|&(_, &since)| self.ticks > since + waited)
            .map(|(&range, _)| range)
            .collect();
        for range in gone {
            self.remove_replica(range);
        }
        self.check_liveness();
        if self.settings.compact_caught_up && self.ticks.is_multiple_of(COMPACT_TICKS) {
            self.compact_caught_up();
        }
        if self.ticks.is_multiple_of(PURGE_TICKS) {
            match &self.purger {
                Some(ask) => {
                    let _ = ask.try_send(());
                }
                None => {
                    let ranges = purge_log(&self.engine, self.node);
                    self.compact_for_purge(ranges);
                }
            }
        }
        let ticks = self.ticks;
        let waited: Vec<RangeId> = (self.electing.iter())
            .filter(|r| (self.groups.get(r)).is_none_or(|g| ticks >= g.electing_until))
            .copied()
            .collect();
        for range in waited {
            self.release_for_leader(range, false);
        }
        // What could not be sent on to a leader is sent again each tick, in order, while the
        // range waits: its leader may have been busy (its queue full) rather than gone. So is
        // what waited for writes a leader handed over, once those were answered as in doubt.
        let retry: Vec<RangeId> = (self.electing.iter())
            .filter(|r| {
                (self.groups.get(r)).is_some_and(|g| {
                    g.node.raft.leader_id != 0
                        && g.awaiting_callback.is_none()
                        && !g.held.is_empty()
                })
            })
            .copied()
            .collect();
        for range in retry {
            self.propose_held(range);
            self.dirty.insert(range);
        }
        let mut moved = Vec::new();
        let mut unqueued = Vec::new();
        let mut renotify = Vec::new();
        let give_up = TRANSFER_GIVE_UP_ELECTIONS * self.settings.election_ticks as u64;
        for range in std::mem::take(&mut self.awake) {
            let Some(g) = self.groups.get_mut(&range) else {
                continue;
            };
            let range = &range;
            if g.quiescent {
                continue;
            }
            self.awake.insert(*range);
            if let Some(seed) = self.settings.election_seed {
                // raft draws each replica's election timeout from [election, 2 × election)
                // anew in every term, from an unseeded generator: this replaces the draw by
                // one from the seed, also new in every term. (A timeout fixed per replica
                // once let two replicas that could not win starve the two that could: their
                // every campaign reset the others' timers before those ran out.)
                let election = self.settings.election_ticks as u64;
                let raft = &mut g.node.raft;
                let mix = splitmix(seed ^ splitmix(g.replica.0 ^ splitmix(range.0 ^ raft.term)));
                raft.set_randomized_election_timeout((election + mix % election) as usize);
            }
            match g.campaigns_first {
                Some((term, first))
                    if term == g.node.raft.term && g.node.raft.state == StateRole::Follower =>
                {
                    // The one chosen campaigns a heartbeat interval and a tick after the death
                    // was noticed (the nodes last heard from the dead one up to a heartbeat
                    // interval apart: by then they all have noticed, and vote); the others, in
                    // case it cannot, later, at the times raft drew.
                    let election = self.settings.election_ticks;
                    let last = 2 * election - 1;
                    let chosen = (election + self.settings.heartbeat_ticks + 1).min(last - 1);
                    let timeout = match first {
                        true => chosen,
                        false => g
                            .node
                            .raft
                            .randomized_election_timeout()
                            .clamp(chosen + 1, last),
                    };
                    g.node.raft.set_randomized_election_timeout(timeout);
                }
                Some(_) => g.campaigns_first = None,
                None => {}
            }
            if g.may_quiesce(&self.live) {
                // Instead of this tick: the quiescing heartbeat is the range's only one. The
                // followers stop ticking too when they get it.
                g.quiescent = true;
                g.node.ping();
                // raft keeps a buffer of `max_inflight_msgs` indexes per follower (2 KiB):
                // 40 MiB over 10,000 ranges of three replicas, allocated again when needed.
                g.node.raft.maybe_free_inflight_buffers();
                self.awake.remove(range);
                self.dirty.insert(*range);
                continue;
            }
            let mut dirty = g.node.tick();
            if !g.queued_changes.is_empty() {
                if !g.is_leader() {
                    // Proposed again, they go to the new leader.
                    unqueued.extend(g.queued_changes.drain(..).map(|(h, _)| (*range, h)));
                } else if !g.node.raft.has_pending_conf() && g.awaiting_callback.is_none() {
                    let (h, _) = g.queued_changes.remove(0);
                    unqueued.push((*range, h));
                } else {
                    let ticks = self.ticks;
                    for (h, since) in std::mem::take(&mut g.queued_changes) {
                        match h {
                            Held::Local(proposal, _) if ticks - since > give_up => {
                                self.events.push(Event::ProposalFailed {
                                    proposal,
                                    error: ProposeError::ChangeInProgress(*range),
                                })
                            }
                            Held::Forwarded(_) if ticks - since > give_up => {}
                            h => g.queued_changes.push((h, since)),
                        }
                    }
                }
            }
            if g.is_leader() {
                dirty |= promote_caught_up_learner(g, &self.metrics);
                // Removed replicas are told again every election timeout: one that missed the
                // notice (down, cut off) and never sends anything (a learner) learns it too.
                if self
                    .ticks
                    .is_multiple_of(self.settings.election_ticks as u64)
                {
                    // Not this replica: one that applied its own removal leads until the voters
                    // left have applied it too (see `Handler<ChangeApplied>`).
                    for &id in g.removed.iter().filter(|&&id| id != g.replica.0) {
                        renotify.push((*range, ReplicaId(id)));
                    }
                }
            }
            let ticks = self.ticks;
            let node = &mut g.node;
            g.snapshots_out.retain(|&(peer, deadline)| {
                let waiting = node
                    .raft
                    .prs()
                    .get(peer)
                    .is_some_and(|p| p.state == ProgressState::Snapshot);
                if waiting && ticks >= deadline {
                    node.report_snapshot(peer, SnapshotStatus::Failure);
                    dirty = true;
                    return false;
                }
                waiting
            });
            if !g.after_transfer.is_empty() {
                let leader = g.node.raft.leader_id;
                if leader != 0 && leader != g.replica.0 {
                    moved.push(*range);
                } else if self.ticks - g.transfer_started
                    > TRANSFER_GIVE_UP_ELECTIONS * self.settings.election_ticks as u64
                {
                    for h in std::mem::take(&mut g.after_transfer) {
                        if let Held::Local(proposal, _) = h {
                            self.events.push(Event::ProposalFailed {
                                proposal,
                                error: ProposeError::NoLeader(*range),
                            });
                        }
                    }
                } else if g.is_leader() && g.node.raft.lead_transferee.is_none() {
                    // raft gave the transfer up after an election timeout: try again.
                    if let Some(to) = g.successor() {
                        g.node.transfer_leader(to);
                        dirty = true;
                    }
                }
            }
            for p in g.reads_in_flight.iter_mut() {
                if self.ticks - p.issued_tick >= READ_RETRY_TICKS {
                    g.new_reads.append(&mut p.reads);
                    p.renews = None;
                }
            }
            g.reads_in_flight
                .retain(|p| !p.reads.is_empty() || p.renews.is_some());
            g.in_doubt.retain(|&proposal, d| {
                let lost = d.answer_at.is_some_and(|at| ticks >= at);
                if lost {
                    self.events.push(Event::ProposalFailed {
                        proposal,
                        error: ProposeError::LeaderChanged(*range),
                    });
                }
                // One lost without a leader change (or a change a leader refused and dropped)
                // has long timed out at the Store.
                !lost && ticks - d.tick < READ_GIVE_UP_TICKS
            });
            let mut expired = Vec::new();
            g.new_reads.retain(|&(read, first)| {
                let keep = self.ticks - first < READ_GIVE_UP_TICKS;
                if !keep {
                    expired.push(read);
                }
                keep
            });
            if !expired.is_empty() {
                self.events.push(Event::ReadsFailed {
                    reads: expired,
                    error: ProposeError::NoLeader(*range),
                });
            }
            dirty |= !g.new_reads.is_empty();
            if dirty {
                self.dirty.insert(*range);
            }
        }
        let quiescent = self.groups.len().saturating_sub(self.awake.len());
        self.metrics
            .ranges_quiescent
            .store(quiescent as u64, Ordering::Relaxed);
        for (range, replica) in renotify {
            self.notify_removed(range, replica);
        }
        // Leadership moved away: the changes removing this replica go to the new leader.
        for range in moved {
            let g = self.groups.get_mut(&range).expect("group just seen");
            unqueued.extend(g.after_transfer.drain(..).map(|h| (range, h)));
        }
        for (range, h) in unqueued {
            match h {
                Held::Local(proposal, payload) => self.propose(range, proposal, payload),
                Held::Forwarded(m) => self.step_forwarded(range, m),
            }
            self.dirty.insert(range);
        }
    }

    fn status(&self) -> Vec<RaftStatus> {
        let mut status: Vec<RaftStatus> = self
            .groups
            .iter()
            .map(|(range, g)| {
                let cs = g.node.store().conf_state();
                let nodes = |ids: &[u64]| ids.iter().map(|&id| ReplicaId(id).node()).collect();
                RaftStatus {
                    range: *range,
                    leader: (g.node.raft.leader_id != 0)
                        .then(|| ReplicaId(g.node.raft.leader_id).node()),
                    term: g.node.raft.term,
                    commit: g.node.raft.raft_log.committed,
                    applied: g.applied,
                    voters: nodes(&cs.voters),
                    learners: nodes(&cs.learners),
                    awaiting_callback: g.awaiting_callback.is_some(),
                    held_proposals: g.held.len(),
                    quiescent: g.quiescent,
                    log_entries: g.log_entries(),
                }
            })
            .collect();
        status.sort_unstable_by_key(|s| s.range);
        status
    }
}

/// How far behind the commit index a learner may be and still be promoted: under a steady load
/// a learner is always a few entries behind the voters.
const LEARNER_LAG: u64 = 64;

/// Sends the commit index to the followers whose forwarded proposals are now committed (raft
/// itself no longer broadcasts it: `skip_bcast_commit`).
fn tell_proposers(g: &mut Group) {
    if g.proposers.is_empty() {
        return;
    }
    if !g.is_leader() {
        g.proposers.clear();
        return;
    }
    let committed = g.node.raft.raft_log.committed;
    let due: Vec<u64> = g
        .proposers
        .iter()
        .filter(|&(_, &(first, _))| first <= committed)
        .map(|(&id, _)| id)
        .collect();
    for id in due {
        match g.node.raft.prs().get(id) {
            // A replica removed since: nothing to send to.
            None => {
                g.proposers.remove(&id);
                continue;
            }
            // Nothing can be sent now; its acknowledgement makes the range dirty again.
            Some(p) if p.is_paused() => continue,
            Some(_) => {}
        }
        g.node.raft.send_append(id);
        let last = g.proposers[&id].1;
        if last <= committed {
            g.proposers.remove(&id);
        } else {
            g.proposers.insert(id, (committed + 1, last));
        }
    }
}

/// On a leader, proposes the promotion of one learner that has acknowledged entries and is
/// close behind the commit index, when no other change is under way. Returns whether it
/// proposed.
fn promote_caught_up_learner(g: &mut Group, metrics: &RaftMetrics) -> bool {
    if g.awaiting_callback.is_some()
        || g.node.raft.has_pending_conf()
        || g.node.raft.lead_transferee.is_some()
    {
        return false;
    }
    let committed = g.node.raft.raft_log.committed;
    let ready = g
        .node
        .store()
        .conf_state()
        .learners
        .iter()
        .copied()
        .find(|&id| {
            !g.removed.contains(&id)
                && g.node.raft.prs().get(id).is_some_and(|p| {
                    // It has acknowledged entries (or the snapshot it needed): a new
                    // learner's `matched` is 0, within the lag of a log shorter than that.
                    p.recent_active && p.matched > 0 && p.matched + LEARNER_LAG >= committed
                })
        });
    let Some(learner) = ready else {
        return false;
    };
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(raft_proto::new_conf_change_single(
        learner,
        ConfChangeType::AddNode,
    ));
    let proposed = g.node.propose_conf_change(Vec::new(), cc).is_ok();
    if proposed {
        metrics.learners_promoted.fetch_add(1, Ordering::Relaxed);
    }
    proposed
}

/// The membership change a log entry carries, if any. A `ConfChangeV2` entry with empty data is
/// the leader leaving a joint configuration: a change all the same (contract 4).
fn conf_change_of(e: &Entry) -> Option<ConfChangeV2> {
    match e.get_entry_type() {
        EntryType::EntryNormal => None,
        EntryType::EntryConfChange => {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&e.data).ok()?;
            Some(raft_proto::ConfChangeI::into_v2(cc))
        }
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&e.data).ok()?;
            Some(cc)
        }
    }
}

/// The counter of a read context this node issued (node id, counter).
fn read_context(prefix: &[u8; 16], bytes: &[u8]) -> Option<u64> {
    let b: [u8; 24] = bytes.try_into().ok()?;
    let (p, c) = b.split_at(16);
    (p == prefix).then(|| u64::from_be_bytes(c.try_into().expect("8 bytes")))
}

/// The start of this node's read contexts: its id and its boot. Unique across nodes (a leader
/// ignores a context it already has pending) and across restarts (a late answer to a read of
/// a previous run must not be taken for one of this run).
fn read_prefix(node: NodeId, boot: u64) -> [u8; 16] {
    let mut p = [0; 16];
    p[..8].copy_from_slice(&node.0.to_be_bytes());
    p[8..].copy_from_slice(&boot.to_be_bytes());
    p
}

/// Of the voters of a range led by `leader` (on a node found dead), the replica that campaigns
/// first: the same on every node that sees the same live nodes, and spread over them by range.
/// Replicas that all campaigned once the death was noticed, each after the random part of its
/// election timeout, split the vote now and then, and over thousands of ranges some range
/// always did, for another timeout.
fn first_to_campaign(
    range: RangeId,
    g: &Group,
    leader: u64,
    live: &BTreeSet<NodeId>,
) -> Option<u64> {
    let cs = g.node.store().conf_state();
    let mut voters: Vec<u64> = cs
        .voters
        .iter()
        .chain(&cs.voters_outgoing)
        .copied()
        .filter(|&id| id != leader && (id == g.replica.0 || live.contains(&ReplicaId(id).node())))
        .collect();
    voters.sort_unstable();
    voters.dedup();
    let n = voters.len() as u64;
    (n > 0).then(|| voters[(range.0 % n) as usize])
}

/// Turns committed entries into events for the Store; whether this node's proposals held
/// behind writes a leader handed over (see [`Group::awaits_handed_over`]) may go now.
fn hand_over(
    range: RangeId,
    g: &mut Group,
    entries: Vec<Entry>,
    events: &mut Vec<Event>,
    unapplied: &mut u64,
    myself: &Recipient<ChangeApplied>,
    ticks: u64,
) -> bool {
    let mut handed_over = false;
    for e in entries {
        if e.index <= g.handed {
            continue;
        }
        *unapplied += e.index - g.handed;
        g.handed = e.index;
        let proposal = ProposalId::from_context(&e.context);
        if let Some(d) = proposal.and_then(|p| g.in_doubt.remove(&p)) {
            handed_over |= g.handed_over(&d);
            // A wait for a leader that ran out with proposals left is kept, so that the next
            // ones are refused at once (see `electing_until`), until a leader is known again or
            // one of this node's proposals commits: a later cause then waits anew.
            if g.electing_until != 0 && ticks >= g.electing_until && g.held.is_empty() {
                g.electing_until = 0;
            }
        }
        if e.get_entry_type() == EntryType::EntryNormal {
            let command = if e.data.is_empty() {
                None
            } else {
                match codec::decode(&e.data) {
                    Ok(c) => Some(c),
                    // Skipping it would leave this replica apart from those that apply it:
                    // raft-engine checksums entries, so it was written by a newer version
                    // (a cluster moved back to an older one), which this one cannot apply.
                    Err(err) => panic!(
                        "{range}: committed entry {} is not a command this version knows \
                         ({err}): it was written by a newer version of flotilla; run that",
                        e.index
                    ),
                }
            };
            events.push(Event::CommandCommitted {
                range,
                index: e.index,
                term: e.term,
                proposal,
                command,
            });
            continue;
        }
        let change = conf_change_of(&e).unwrap_or_else(|| {
            log::error!(
                "{range}: entry {} is a malformed conf change; treated as empty",
                e.index
            );
            ConfChangeV2::default()
        });
        g.awaiting_callback = Some(e.index);
        events.push(Event::MembershipChangeCommitted {
            range,
            index: e.index,
            term: e.term,
            proposal,
            change: change.clone(),
            callback: ChangeCallback::new(range, e.index, change, myself.clone()),
        });
    }
    handed_over && !g.held.is_empty() && !g.awaits_handed_over()
}

impl Actor for MultiRaft {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.myself = Some(ctx.address().recipient());
        self.schedule_tick(ctx);
        // Single-replica ranges elect themselves at once instead of after an election timeout.
        for g in self.groups.values_mut() {
            let cs = g.node.store().conf_state();
            if cs.voters == [g.replica.0] && cs.voters_outgoing.is_empty() {
                let _ = g.node.campaign();
            }
        }
        self.dirty.extend(self.groups.keys().copied());
        self.schedule_round(ctx);
    }
}

impl Handler<Requests> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: Requests, ctx: &mut Context<Self>) {
        // Each range's commands, proposed together once all requests are seen.
        let mut commands: BTreeMap<RangeId, Vec<(ProposalId, Vec<u8>)>> = BTreeMap::new();
        for request in msg.0 {
            match request {
                RaftRequest::Propose {
                    range,
                    proposal,
                    payload,
                } => {
                    if self.unapplied > self.settings.max_unapplied_entries {
                        self.metrics.proposals_busy.fetch_add(1, Ordering::Relaxed);
                        self.events.push(Event::ProposalFailed {
                            proposal,
                            error: ProposeError::Busy,
                        });
                        continue;
                    }
                    match payload {
                        ProposalPayload::Command(data) => {
                            commands.entry(range).or_default().push((proposal, data));
                        }
                        change => {
                            // After the commands before it.
                            if let Some(before) = commands.remove(&range) {
                                self.propose_commands(range, before);
                            }
                            self.propose(range, proposal, change);
                        }
                    }
                    self.dirty.insert(range);
                }
                RaftRequest::Split {
                    left,
                    right,
                    created,
                } => {
                    self.split(left, right, created);
                }
                RaftRequest::ReadIndex { range, read } => match self.groups.get_mut(&range) {
                    Some(g) => {
                        g.quiescent = false;
                        g.new_reads.push((read, self.ticks));
                        self.dirty.insert(range);
                    }
                    None => self.events.push(Event::ReadsFailed {
                        reads: vec![read],
                        error: ProposeError::RangeNotFound(range),
                    }),
                },
            }
        }
        for (range, commands) in commands {
            self.propose_commands(range, commands);
        }
        self.schedule_round(ctx);
    }
}

impl Handler<EventsTaken> for MultiRaft {
    type Result = ();
    fn handle(&mut self, _: EventsTaken, _: &mut Context<Self>) {
        self.hand_to_store(Vec::new(), 0);
    }
}

/// The ranges a purge of the raft log's files, on its own thread, asks to have compacted.
#[derive(Message)]
#[rtype(result = "()")]
struct Purged(Vec<RangeId>);

impl Handler<Purged> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: Purged, ctx: &mut Context<Self>) {
        self.compact_for_purge(msg.0);
        if self.staged_any {
            self.schedule_round(ctx);
        }
    }
}

/// Deletes the raft log's files no range needs (see [`Engine::purge_log`]); returns the ranges
/// whose logs hold much of the oldest file, to be compacted.
fn purge_log(engine: &Engine, node: NodeId) -> Vec<RangeId> {
    engine.purge_log().unwrap_or_else(|e| {
        log::error!("{node}: purging the raft log failed: {e}");
        Vec::new()
    })
}

impl Handler<Applied> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        // Read for each range, so that trimming stops once the caches are back within it.
        let engine = self.engine.clone();
        let budget = self.settings.entry_cache_bytes;
        for (range, index) in msg.ranges {
            let Some(g) = self.groups.get_mut(&range) else {
                continue;
            };
            let over_budget = engine.entries_cached().1 > budget;
            if index > g.applied {
                self.unapplied = self.unapplied.saturating_sub(index - g.applied);
                g.applied = index;
                g.trim_cache(over_budget);
                if index > g.node.raft.raft_log.applied {
                    g.node.advance_apply_to(index);
                }
            }
            if !msg.written {
                // Applying may let a leader leave a joint configuration.
                self.dirty.insert(range);
                continue;
            }
            if index <= g.written {
                continue;
            }
            g.written = index;
            if over_budget {
                g.trim_cache(true);
            }
            // Writing may unblock a snapshot.
            if g.node.raft.raft_log.unstable_snapshot().is_some() {
                self.dirty.insert(range);
            }
            // A change's callback comes before the report of its index, so the conf state
            // written with the same batch is the one as of the compacted log.
            let keep = self.settings.log_compaction_entries;
            if index.saturating_sub(g.node.store().truncated().index) > keep {
                self.compact(range, index - keep / 2);
            }
        }
        self.schedule_round(ctx);
    }
}

impl Handler<ChangeApplied> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: ChangeApplied, ctx: &mut Context<Self>) {
        let Some(g) = self.groups.get_mut(&msg.range) else {
            return;
        };
        let mut removed_here = false;
        let mut notify = Vec::new();
        match g.node.apply_conf_change(&msg.change) {
            Ok(cs) => {
                for c in msg.change.get_changes() {
                    if c.get_change_type() == ConfChangeType::RemoveNode {
                        g.removed.insert(c.node_id);
                        if c.node_id != g.replica.0 {
                            notify.push(ReplicaId(c.node_id));
                        }
                    }
                }
                removed_here = !members(&cs).any(|id| id == g.replica.0);
                g.node
                    .mut_store()
                    .stage_conf_state(cs, msg.index, &mut self.staged);
                self.staged_any = true;
            }
            Err(e) => log::warn!(
                "{}: {}: membership change at {} aborted: {e}",
                self.node,
                msg.range,
                msg.index
            ),
        }
        if g.awaiting_callback == Some(msg.index) {
            g.awaiting_callback = None;
        }
        // The Store applied everything up to the change before calling back: let raft know,
        // so a held membership change is not refused as "pending".
        if msg.index > g.node.raft.raft_log.applied && msg.index <= g.node.raft.raft_log.committed {
            g.node.advance_apply_to(msg.index);
        }
        for replica in notify {
            self.notify_removed(msg.range, replica);
        }
        if removed_here {
            // A leader that removes its own replica at once may leave a voter that has the
            // change but not yet the commit index covering it: that voter still counts this
            // replica in its configuration, and can never elect a leader without it (seen with
            // two voters left, one of them this). So a leader stays, sending its heartbeats
            // (and the commit index with them), until a remaining voter applies the change and
            // tells this node (`notify_removed`), or for ten election timeouts at most.
            let leads_others = (self.groups.get(&msg.range))
                .is_some_and(|g| g.is_leader() && g.members().any(|id| id != g.replica.0))
                && !self.leaving.contains_key(&msg.range);
            if !leads_others {
                self.remove_replica(msg.range);
                self.schedule_round(ctx);
                return;
            }
            self.leaving.insert(msg.range, self.ticks);
        }
        let Some(g) = self.groups.get_mut(&msg.range) else {
            return;
        };
        // Only what the change held is reported released after it: proposals waiting for a
        // leader may be held with them, from before the change.
        for proposal in std::mem::take(&mut g.held_for_change) {
            if self.released.len() == RELEASED_KEPT {
                self.released.pop_front();
            }
            self.released.push_back(ReleasedProposal {
                range: msg.range,
                change_index: msg.index,
                proposal,
            });
        }
        self.propose_held(msg.range);
        self.mark_dirty(msg.range, ctx);
    }
}

impl Handler<SnapshotGenerated> for MultiRaft {
    type Result = ();
    fn handle(&mut self, mut msg: SnapshotGenerated, ctx: &mut Context<Self>) {
        let Some(g) = self.groups.get_mut(&msg.range) else {
            return;
        };
        // Callbacks of every change up to the snapshot's index came before this message (one
        // mailbox, in order), so the conf state now is the one as of that index.
        let cs = g.node.store().conf_state().clone();
        msg.snapshot.mut_metadata().set_conf_state(cs);
        // Raft asks for it again the next time it would send to the follower (a heartbeat's
        // answer at the latest).
        let until = self.ticks + 2 * self.settings.election_ticks as u64;
        g.snapshot_floor = Some((msg.snapshot.get_metadata().index, until));
        g.node.mut_store().set_snapshot(msg.snapshot);
        g.snapshot_requested = false;
        self.mark_dirty(msg.range, ctx);
    }
}

impl Handler<RaftBatch> for MultiRaft {
    type Result = ();
    fn handle(&mut self, batch: RaftBatch, ctx: &mut Context<Self>) {
        if batch.to != self.node {
            log::warn!(
                "{}: dropping a raft batch addressed to {}",
                self.node,
                batch.to
            );
            return;
        }
        self.heard_from(batch.from, batch.boot);
        self.heard_time(batch.from, batch.clock);
        for (range, index) in batch.compact {
            let Some(g) = self.groups.get_mut(&range) else {
                continue;
            };
            if !g.is_leader() && index > g.compact_hint {
                g.compact_hint = index;
                // Staged with the next round (the next tick's at the latest).
                if self.settings.compact_caught_up {
                    let before = g.log_entries();
                    if self.compact(range, index) {
                        self.compacted_since_pass(range, before);
                    }
                }
            }
        }
        for (range, replica) in batch.removed {
            if replica.node() != self.node {
                continue;
            }
            if self
                .groups
                .get(&range)
                .is_some_and(|g| g.replica <= replica)
            {
                self.remove_replica(range);
            }
        }
        let heartbeats = batch
            .heartbeats
            .into_iter()
            .map(|h| (h.range, h.quiesce, h.into_message()));
        let messages = batch.messages.into_iter().map(|(r, m)| (r, false, m));
        let starts: BTreeMap<RangeId, Vec<u8>> = batch.starts.into_iter().collect();
        for (range, quiesce, m) in messages.chain(heartbeats) {
            match m.get_msg_type() {
                MessageType::MsgAppendResponse => {
                    // The follower answered: its append is not sent again while the answer
                    // waits (see `Group::probe_answered`).
                    if let Some(g) = self.groups.get_mut(&range) {
                        g.append_exchanged(m.from, self.ticks);
                    }
                    self.answers.push_back((range, m));
                }
                _ => self.step_received(range, quiesce, m, starts.get(&range)),
            }
        }
        self.schedule_round(ctx);
    }
}

impl Handler<BeginLeaderTransfer> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: BeginLeaderTransfer, ctx: &mut Context<Self>) {
        if let Some(g) = self.groups.get_mut(&msg.range) {
            if let Some(to) = g.replica_on(msg.to) {
                g.quiescent = false;
                g.node.transfer_leader(to);
                self.mark_dirty(msg.range, ctx);
            }
        }
    }
}

impl Handler<CompactLog> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: CompactLog, ctx: &mut Context<Self>) {
        if self.compact(msg.range, u64::MAX) {
            self.schedule_round(ctx);
        }
    }
}

impl Handler<Shutdown> for MultiRaft {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ReplicaDestroyed> for MultiRaft {
    type Result = ();
    fn handle(&mut self, msg: ReplicaDestroyed, _: &mut Context<Self>) {
        // The log goes after the Store's deletion of the range is durable, never before: a
        // crash in between would bring back the replica's data and configuration without its
        // log (its term and vote). Rare enough to wait for here.
        if let Err(e) = self.engine.clean_log(msg.range) {
            panic!("multiraft: {}: storage failed: {e}", self.node);
        }
        self.destroying.remove(&msg.range);
        self.spans.remove(&msg.range);
    }
}

impl Handler<GetRaftStatus> for MultiRaft {
    type Result = MessageResult<GetRaftStatus>;
    fn handle(&mut self, _: GetRaftStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<GetReleasedProposals> for MultiRaft {
    type Result = MessageResult<GetReleasedProposals>;
    fn handle(&mut self, _: GetReleasedProposals, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.released.iter().copied().collect())
    }
}

/// Builds the snapshot a [`SnapshotGenerated`] carries (data, index and term; the conf state is
/// added by MultiRaft).
pub fn snapshot_of(index: u64, term: u64, data: Vec<u8>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.data = data.into();
    s
}
