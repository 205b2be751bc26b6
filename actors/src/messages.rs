//! Every message between the actors of a node, in one place: this file is the protocol.
//!
//! Commands are named in the imperative (`Propose`, `ReadIndex`), events in the past tense
//! (`CommandCommitted`), callbacks for what they confirm (`ChangeApplied`).
//!
//! Between the Store and MultiRaft every message is one-way (`do_send`/`try_send`): neither
//! actor ever waits for the other (contract 1). Answers travel back as messages of their own.

use crate::command::{Command, CommandOutcome};
use crate::ids::{NodeId, ProposalId, RangeId, ReadId};
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

/// Proposes an entry to a range. Failures come back as [`Event::ProposalFailed`]; success as
/// the entry's commit event.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Propose {
    pub range: RangeId,
    pub proposal: ProposalId,
    pub payload: ProposalPayload,
}

/// Asks for a read index for a range. Reads of one range in one round share a single raft
/// `read_index` call; the answer is [`Event::ReadReady`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReadIndex {
    pub range: RangeId,
    pub read: ReadId,
}

/// Reports how far the Store has applied each listed range, so MultiRaft can call
/// `advance_apply_to` and account for the work still in flight.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Applied {
    pub ranges: Vec<(RangeId, u64)>,
}

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

// ---------------------------------------------------------------------------------------------
// Transport → MultiRaft
// ---------------------------------------------------------------------------------------------

/// Every raft message of one round from one node to another.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RaftBatch {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<(RangeId, RaftMessage)>,
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
    /// Reads may be served once the range has applied `index`.
    ReadReady {
        range: RangeId,
        index: u64,
        reads: Vec<ReadId>,
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
    #[error("ERR no range holds key on this node")]
    NoRange,
    #[error("ERR {0}")]
    Internal(String),
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

/// Reads keys linearizably: the values as of a moment between the request and the answer.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Option<Vec<u8>>>, StoreError>")]
pub struct Read {
    pub keys: Vec<Vec<u8>>,
}

/// Adds or removes replicas of a range; answered once the change is applied on this node.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ChangeReplicas {
    pub range: RangeId,
    pub change: ConfChangeV2,
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
    pub keys: usize,
    pub applied_commands: u64,
}

/// One range as the Store sees it.
#[derive(Debug, Clone)]
pub struct RangeStatus {
    pub descriptor: RangeDescriptor,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
}

// ---------------------------------------------------------------------------------------------
// Admin → MultiRaft
// ---------------------------------------------------------------------------------------------

/// Moves a range's leadership to another replica.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TransferLeader {
    pub range: RangeId,
    pub to: NodeId,
}

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
}
