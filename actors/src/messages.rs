//! Every message between the actors of a node, in one place: this file is the protocol.
//!
//! Commands are named in the imperative (`RaftRequest::Propose`, `RaftRequest::ReadIndex`), events in the past tense
//! (`CommandCommitted`), callbacks for what they confirm (`ChangeApplied`).
//!
//! Between the Store and MultiRaft every message is one-way (`do_send`/`try_send`): neither
//! actor ever waits for the other (contract 1). Answers travel back as messages of their own.

use crate::command::{Command, CommandOutcome};
use crate::ids::{NodeId, ProposalId, RangeId, ReadId, ReplicaId};
use crate::storage::RangeDescriptor;
use actix::prelude::*;
use raft::prelude::{ConfChangeV2, Message as RaftMessage, Snapshot};

// ---------------------------------------------------------------------------------------------
// Store → MultiRaft
// ---------------------------------------------------------------------------------------------

/// What a proposal asks the range's log to hold.
#[derive(Debug, Clone)]
pub enum ProposalPayload {
    /// An encoded [`Command`].
    Command(Vec<u8>),
    /// A membership change.
    ChangeReplicas(ConfChangeV2),
}

/// What the Store asks of MultiRaft for its clients, in the order they asked.
#[derive(Debug)]
pub enum RaftRequest {
    /// Proposes an entry to a range. Failures come back as [`Event::ProposalFailed`]; success
    /// as the entry's commit event.
    Propose {
        range: RangeId,
        proposal: ProposalId,
        payload: ProposalPayload,
    },
    /// Asks for a read index for a range. Reads of one range in one round share a single raft
    /// `read_index` call; the answer is [`Event::ReadReady`].
    ReadIndex { range: RangeId, read: ReadId },
    /// The Store applied a split of `left` (its descriptor now) and wrote it: see
    /// `MultiRaft::split`.
    Split {
        left: RangeDescriptor,
        right: RangeDescriptor,
        created: bool,
    },
}

/// The requests the Store gathered while handling the messages queued for it: one message to
/// MultiRaft's thread for all of them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Requests(pub Vec<RaftRequest>);

/// Reports how far the Store has applied each listed range, so MultiRaft can call
/// `advance_apply_to` and account for the work still in flight; or, when `written`, how far
/// what it applied is in sled: only so far may a range's log be compacted or a snapshot be
/// installed over its data.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Applied {
    pub ranges: Vec<(RangeId, u64)>,
    pub written: bool,
}

/// The Store took the batch of events waiting in its mailbox while MultiRaft held the next
/// one back (see `RaftMetrics::events_held`): MultiRaft hands it over now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EventsTaken;

/// The callback for a [`Event::MembershipChangeCommitted`]: the Store has applied the change at
/// `index`; MultiRaft now applies it to raft and releases the proposals it held meanwhile.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChangeApplied {
    pub range: RangeId,
    pub index: u64,
    pub change: ConfChangeV2,
}

/// A snapshot of a range the Store built after [`Event::SnapshotRequested`]. Its data and its
/// metadata's index and term are filled; MultiRaft adds the conf state.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SnapshotGenerated {
    pub range: RangeId,
    pub snapshot: Snapshot,
}

/// The Store has deleted the data of a removed replica ([`Event::ReplicaRemoved`]): the range
/// may be created on this node again (for a newer replica).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReplicaDestroyed {
    pub range: RangeId,
}

// ---------------------------------------------------------------------------------------------
// Transport → MultiRaft
// ---------------------------------------------------------------------------------------------

/// Every raft message of one round from one node to another.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RaftBatch {
    pub from: NodeId,
    /// The sender's boot (0: not known), so that a restarted node is noticed even when it
    /// comes back within an election timeout (see MultiRaft's node liveness).
    pub boot: u64,
    /// The sender's clock when it sent the batch (0: not known): see [`crate::value::Clock`].
    pub clock: u64,
    pub to: NodeId,
    /// Raft messages other than heartbeats.
    pub messages: Vec<(RangeId, RaftMessage)>,
    /// The heartbeats (and their responses) of every range between the two nodes, coalesced.
    pub heartbeats: Vec<Heartbeat>,
    /// Replicas of the receiving node that have been removed from their range (a committed
    /// membership change): the receiver deletes them and keeps a tombstone.
    pub removed: Vec<(RangeId, ReplicaId)>,
    /// From a leader: for each range, the log index every replica has, as the leader saw at
    /// its last compaction pass. The receiver, a follower, may compact its log that far.
    pub compact: Vec<(RangeId, u64)>,
    /// The start key of each range whose appends in this batch continue its log from its very
    /// beginning ([`crate::storage::BOOTSTRAP_INDEX`]): the first appends of a range born of a
    /// split, which a node whose range it split from has yet to apply the split puts off.
    pub starts: Vec<(RangeId, Vec<u8>)>,
}

impl RaftBatch {
    /// An empty batch from one node to another.
    pub fn new(from: NodeId, to: NodeId) -> RaftBatch {
        RaftBatch {
            from,
            boot: 0,
            clock: 0,
            to,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            removed: Vec::new(),
            compact: Vec::new(),
            starts: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeats.is_empty()
            && self.removed.is_empty()
            && self.compact.is_empty()
            && self.starts.is_empty()
    }
}

/// A raft heartbeat or heartbeat response, without the fields raft leaves empty in them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    pub range: RangeId,
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub term: u64,
    pub commit: u64,
    /// A read index request's context, carried by the heartbeats that confirm it.
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
    pub response: bool,
    /// Sent by a quiescent replica: the leader's asks its followers to stop ticking the range
    /// too; a follower that does sends no answer, unless the heartbeat carries a read index's
    /// context (an answer means nothing more than an unflagged one). Any other message wakes a
    /// quiescent replica.
    pub quiesce: bool,
}

impl Heartbeat {
    /// The compact form of `m`, if it is a heartbeat or heartbeat response, sent by a replica
    /// that is quiescent or not.
    pub fn of(range: RangeId, m: &RaftMessage, quiesce: bool) -> Option<Heartbeat> {
        let response = match m.get_msg_type() {
            raft::prelude::MessageType::MsgHeartbeat => false,
            raft::prelude::MessageType::MsgHeartbeatResponse => true,
            _ => return None,
        };
        // Anything beyond these fields would be lost: such a message travels whole.
        let plain = RaftMessage {
            msg_type: m.msg_type,
            to: m.to,
            from: m.from,
            term: m.term,
            commit: m.commit,
            context: m.context.clone(),
            ..Default::default()
        };
        (&plain == m).then(|| Heartbeat {
            range,
            from: ReplicaId(m.from),
            to: ReplicaId(m.to),
            term: m.term,
            commit: m.commit,
            context: m.context.to_vec(),
            response,
            quiesce,
        })
    }

    /// The raft message it stands for.
    pub fn into_message(self) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(if self.response {
            raft::prelude::MessageType::MsgHeartbeatResponse
        } else {
            raft::prelude::MessageType::MsgHeartbeat
        });
        m.from = self.from.0;
        m.to = self.to.0;
        m.term = self.term;
        m.commit = self.commit;
        m.context = self.context.into();
        m
    }
}

// ---------------------------------------------------------------------------------------------
// MultiRaft → Store
// ---------------------------------------------------------------------------------------------

/// Everything one round of MultiRaft produced for the Store, in order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Events(pub Vec<Event>);

/// What happened in a round.
#[derive(Debug)]
pub enum Event {
    /// A normal entry committed. `command` is `None` for the empty entry a new leader appends.
    CommandCommitted {
        range: RangeId,
        index: u64,
        term: u64,
        proposal: Option<ProposalId>,
        command: Option<Command>,
    },
    /// A membership change committed. The range holds new proposals until the Store answers
    /// through `callback`.
    MembershipChangeCommitted {
        range: RangeId,
        index: u64,
        term: u64,
        proposal: Option<ProposalId>,
        change: ConfChangeV2,
        callback: ChangeCallback,
    },
    /// A replica became leader of a range (or the range learned who leads it).
    LeaderElected {
        range: RangeId,
        term: u64,
        leader: NodeId,
    },
    /// Reads may be served once the range has applied `index`; by `at`, the leader's time as
    /// last heard from it, when the read index came from another node's leader (see
    /// [`crate::value::Clock`]), else by this node's clock.
    ReadReady {
        range: RangeId,
        index: u64,
        reads: Vec<ReadId>,
        at: Option<u64>,
    },
    /// A proposal could not be made.
    ProposalFailed {
        proposal: ProposalId,
        error: ProposeError,
    },
    /// Reads could not get a read index.
    ReadsFailed {
        reads: Vec<ReadId>,
        error: ProposeError,
    },
    /// Raft needs a snapshot of the range to send to a follower.
    SnapshotRequested { range: RangeId },
    /// This node's replica of the range was removed from it: the Store deletes its data and
    /// leaves a tombstone for `replica`. MultiRaft has already dropped the group.
    ReplicaRemoved { range: RangeId, replica: ReplicaId },
    /// A snapshot from the leader was installed: the range's data, descriptor and applied index
    /// are now those of the snapshot.
    SnapshotInstalled {
        range: RangeId,
        index: u64,
        term: u64,
        descriptor: RangeDescriptor,
    },
}

/// Why a proposal or a read was refused before reaching the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("TRYAGAIN range {0} has no leader at the moment")]
    NoLeader(RangeId),
    #[error("BUSY node is applying too much committed work; retry later")]
    Busy,
    #[error("ERR range {0} is not on this node")]
    RangeNotFound(RangeId),
    #[error("TRYAGAIN range {0} already has a membership change in progress")]
    ChangeInProgress(RangeId),
    #[error("ERR invalid membership change for range {0}: {1}")]
    InvalidChange(RangeId, String),
    #[error("TRYAGAIN the leader of {0} changed; the write may or may not have been applied")]
    LeaderChanged(RangeId),
}

/// The way back to MultiRaft for one membership change. The Store calls [`ChangeCallback::done`]
/// once the change is applied on its side.
pub struct ChangeCallback {
    range: RangeId,
    index: u64,
    change: ConfChangeV2,
    to: Recipient<ChangeApplied>,
}

impl std::fmt::Debug for ChangeCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChangeCallback({} @{})", self.range, self.index)
    }
}

impl ChangeCallback {
    pub fn new(
        range: RangeId,
        index: u64,
        change: ConfChangeV2,
        to: Recipient<ChangeApplied>,
    ) -> Self {
        ChangeCallback {
            range,
            index,
            change,
            to,
        }
    }

    /// Confirms the change is applied.
    pub fn done(self) {
        self.to.do_send(ChangeApplied {
            range: self.range,
            index: self.index,
            change: self.change,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Clients → Store
// ---------------------------------------------------------------------------------------------

/// Why a client request failed. The text after the first word is shown to the client, and the
/// first word is the Redis error prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Refused(#[from] ProposeError),
    #[error("TRYAGAIN request timed out; the write may or may not have been applied")]
    Timeout,
    /// A read not served in time (its read index not answered, or not applied).
    #[error("TRYAGAIN read timed out: the range's leader did not answer in time")]
    ReadTimeout,
    /// A read whose range's replica was removed from this node while it waited.
    #[error("TRYAGAIN {0} was removed from this node; ask again")]
    ReadRemoved(RangeId),
    #[error("TRYAGAIN {0} was removed from this node; a write in flight may or may not have been applied")]
    Removed(RangeId),
    #[error("ERR no range holds key on this node")]
    NoRange,
    /// The keys of a command applied whole (a transaction, `RENAME`, `MSETNX`) fall in more
    /// than one range (Redis Cluster's error for keys of more than one slot).
    #[error(
        "CROSSSLOT Keys in request don't hash to the same slot (they must all be in one range)"
    )]
    CrossRange,
    #[error("TRYAGAIN this node restarted with a boot below one its range recorded (a wiped data directory and a clock behind?); the write was not applied")]
    StaleBoot,
    /// A write of this node's that reached its range's log after a later one of this node's
    /// (sent on by a leader that handed over, or forwarded again): skipped on every replica, so
    /// as not to apply a connection's writes out of order (see `storage::Proposers`).
    #[error("TRYAGAIN {0}: a later write of this node reached the range's log first, after its leader changed; this write was not applied there")]
    Overtaken(RangeId),
    /// A write that waited for this node's writes in flight to a range that split, past its
    /// deadline: never sent (see `Store::fence`).
    #[error("TRYAGAIN {0}: request timed out waiting for this node's writes in flight before a split; the write was not applied there")]
    Unsent(RangeId),
    #[error("ERR {0}")]
    Invalid(String),
    #[error("ERR {0}")]
    Internal(String),
    /// A digest asked while a snapshot was being installed, or a `FLUSHDB`'s keys deleted
    /// (see [`GetDigest`]).
    #[error("TRYAGAIN a snapshot is being installed or a FLUSHDB's keys deleted; ask again")]
    Unsettled,
}

/// Writes a command (which may span several ranges; see [`Write`]'s doc).
///
/// A command over keys of several ranges is split into one proposal per range: each part is
/// atomic, the whole is not (like Redis Cluster without hash tags).
#[derive(Debug, Message)]
#[rtype(result = "Result<CommandOutcome, StoreError>")]
pub struct Write {
    pub command: Command,
}

/// Reads keys linearizably: the values as of a moment between the request and the answer,
/// with their deadlines (a value past its deadline is absent).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Option<crate::value::Value>>, StoreError>")]
pub struct Read {
    pub keys: Vec<Vec<u8>>,
    /// The client connection it comes from (0: none). The reads of one connection are served
    /// in the order they reach the Store, each as of a moment no earlier than the one before:
    /// as a connection's pipelined commands run one after the other in Redis.
    pub client: u64,
}

impl Read {
    /// A read of no connection's.
    pub fn new(keys: Vec<Vec<u8>>) -> Read {
        Read { keys, client: 0 }
    }
}

/// The keys of this node's range that holds `from`, in order from `from` on, as this Store has
/// applied them, of the first `count` it looks at (at most `store::SCAN_STEP_MAX`): those past
/// their deadline are looked at and left out, as Redis's `COUNT` counts slots. Not linearizable by itself: a `Read` of `from`
/// first makes it so (this Store's state is then at least as new as the read's index).
#[derive(Debug, Message)]
#[rtype(result = "Result<Scanned, StoreError>")]
pub struct Scan {
    pub from: Vec<u8>,
    pub count: usize,
}

/// What a [`Scan`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    pub keys: Vec<Vec<u8>>,
    /// Where the next scan starts: after the last key looked at, or the next range's start;
    /// `None` once the key space is done.
    pub next: Option<Vec<u8>>,
}

/// Adds a replica of a range on a node: it joins as a learner, is filled by a snapshot and the
/// log, and is promoted to voter once caught up. Answered when this node has applied the
/// promotion; a node that already holds a voting replica is answered at once.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct AddReplica {
    pub range: RangeId,
    pub node: NodeId,
}

/// Removes a node's replica of a range; if it leads the range, leadership moves first.
/// Answered once the removal is applied on this node (or, removing this node's own replica,
/// once it is gone).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RemoveReplica {
    pub range: RangeId,
    pub node: NodeId,
}

/// Cuts the range holding `key` in two at it (see [`crate::command::Command::Split`]);
/// answered with the new range, holding the keys from `key` on, once this node applied it.
#[derive(Debug, Message)]
#[rtype(result = "Result<RangeId, StoreError>")]
pub struct SplitRange {
    pub key: Vec<u8>,
}

/// Moves a range's leadership to the replica on a node; answered once this node sees it there.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct TransferLeader {
    pub range: RangeId,
    pub to: NodeId,
}

/// Asks for a digest of every range's data on this node, as of each range's applied index, to
/// compare replicas; refused while an event MultiRaft handed over is not applied yet (a
/// snapshot installed in sled may be among them: MultiRaft counts the event before it writes),
/// or when MultiRaft wrote to sled while the digest was taken, for a moment, or while the
/// Store's writer deletes a `FLUSHDB`'s keys, for seconds, or a stop cut such a deletion short
/// and the Store has not applied that `FLUSHDB` again: [`StoreError::Unsettled`];
/// `FLOTILLA DIGEST` asks again itself for a second.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<RangeDigest>, StoreError>")]
pub struct GetDigest;

/// A range's data on one node as of an applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDigest {
    pub range: RangeId,
    pub applied_index: u64,
    pub keys: u64,
    /// FNV-1a over every key and value, in key order.
    pub hash: u64,
}

/// Asks for a description of the node's ranges and counters.
#[derive(Debug, Message)]
#[rtype(result = "StoreStatus")]
pub struct GetStoreStatus;

/// What [`GetStoreStatus`] answers.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub node: NodeId,
    pub ranges: Vec<RangeStatus>,
    pub applied_commands: u64,
    /// Splits this node applied since it started (`FLOTILLA SPLIT`, and ranges past their
    /// bound).
    pub ranges_split: u64,
    /// Ranges this node measured since it started (see [`RangeStatus::size`]).
    pub ranges_measured: u64,
}

/// One range as the Store sees it.
#[derive(Debug, Clone)]
pub struct RangeStatus {
    pub descriptor: RangeDescriptor,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    /// What its keys and values take, as this replica reckons it (its leader's last measure,
    /// and the bytes written since), if known.
    pub size: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Admin → MultiRaft
// ---------------------------------------------------------------------------------------------

/// Starts moving a range's leadership to the replica on a node (raft forwards the request to
/// the leader); see [`TransferLeader`] for the request that waits for the outcome.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct BeginLeaderTransfer {
    pub range: RangeId,
    pub to: NodeId,
}

/// Deletes a range's log up to what this node has applied and written to sled, now (scenarios
/// and tests; ranges are compacted on their own past `log_compaction_entries`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CompactLog {
    pub range: RangeId,
}

/// Stops an actor (a node started with [`crate::node::Node::start_here`] shares its thread).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Asks for the raft state of every range on the node.
#[derive(Debug, Message)]
#[rtype(result = "Vec<RaftStatus>")]
pub struct GetRaftStatus;

/// Asks which proposals were held during a membership change and released after it: the most
/// recent ones, at most [`crate::multiraft::RELEASED_KEPT`].
#[derive(Debug, Message)]
#[rtype(result = "Vec<ReleasedProposal>")]
pub struct GetReleasedProposals;

/// A proposal that waited for a membership change's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasedProposal {
    pub range: RangeId,
    /// The index of the change entry it waited for.
    pub change_index: u64,
    pub proposal: ProposalId,
}

/// One range as its raft group on this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub range: RangeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub awaiting_callback: bool,
    pub held_proposals: usize,
    /// Not ticked: every replica was caught up when the range went quiet.
    pub quiescent: bool,
    /// Entries this replica's raft log holds (not yet compacted away).
    pub log_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::MessageType;

    #[test]
    fn heartbeats_travel_compact_and_come_back_identical() {
        for (t, response) in [
            (MessageType::MsgHeartbeat, false),
            (MessageType::MsgHeartbeatResponse, true),
        ] {
            let mut m = RaftMessage::default();
            m.set_msg_type(t);
            m.from = ReplicaId::new(NodeId(1), 2).0;
            m.to = 3;
            m.term = 9;
            m.commit = 120;
            m.context = b"read-ctx".to_vec().into();
            for quiesce in [false, true] {
                let h = Heartbeat::of(RangeId(5), &m, quiesce).expect("a plain heartbeat");
                assert_eq!(
                    (h.range, h.response, h.quiesce),
                    (RangeId(5), response, quiesce)
                );
                assert_eq!(h.into_message(), m);
            }
        }
        // Anything else travels whole.
        let mut append = RaftMessage::default();
        append.set_msg_type(MessageType::MsgAppend);
        assert_eq!(Heartbeat::of(RangeId(1), &append, false), None);
        let mut odd = RaftMessage::default();
        odd.set_msg_type(MessageType::MsgHeartbeat);
        odd.reject = true;
        assert_eq!(Heartbeat::of(RangeId(1), &odd, false), None);
    }
}
