//! The actor system of flotilla: many Raft groups on one node, on actix.
//!
//! # The life of a write
//!
//! 1. A client session (in the `flotilla` crate) parses `SET k v` and sends
//!    [`messages::Write`] to the [`store::Store`], awaiting only the Store's answer.
//! 2. The Store routes `k` to its range, gives the proposal a [`ids::ProposalId`], remembers who
//!    waits for it, and queues a [`messages::RaftRequest::Propose`] for
//!    [`multiraft::MultiRaft`], sent with the other requests of the Store's pass over its
//!    mailbox in one [`messages::Requests`] (`do_send`: it never waits for MultiRaft).
//! 3. MultiRaft proposes to the range's `RawNode` (a follower forwards it to the leader) and
//!    schedules a *round*. A round handles the `Ready` of every dirty group: leader messages
//!    out, entries and hard states of all groups into **one** raft-engine write with **one** sync,
//!    persisted messages out, `advance_append`, and the committed entries of all groups to the
//!    Store as **one** [`messages::Events`] message, handed over with `try_send` so a full
//!    Store mailbox makes MultiRaft hold events back, never block.
//! 4. The Store applies the events in log order in one atomic batch that also records each
//!    range's applied index, answers the client whose proposal it was, and reports
//!    [`messages::Applied`] so MultiRaft calls `advance_apply_to`.
//!
//! A read queues a [`messages::RaftRequest::ReadIndex`]; MultiRaft asks raft for one read index per range per
//! round and returns it as [`messages::Event::ReadReady`]; the Store serves the read once the
//! range has applied up to that index.
//!
//! # Membership changes
//!
//! A conf change entry reaches the Store as [`messages::Event::MembershipChangeCommitted`] with
//! a [`messages::ChangeCallback`]. Until the Store calls it, MultiRaft holds the range's new
//! proposals in order; the callback ([`messages::ChangeApplied`]) applies the change to raft
//! and re-proposes them under the new configuration.
//!
//! # Contracts (DESIGN.md) and where they are kept
//!
//! 1. No wait cycles: [`multiraft`] (`hand_to_store`, backpressure) and [`store`] (`do_send`).
//! 2. Batching: `MultiRaft::run_round`.
//! 3. Ready order: `MultiRaft::run_round`.
//! 4. Membership: `ChangeApplied` handler and `hand_over` in [`multiraft`].
//! 5. Exactly-once apply: `Store::apply_events`.
//! 6. Durable acknowledgement: [`storage::Engine::sync`], and answers only after apply.
//! 7. Linearizable reads: the `Read` handler of [`store`] and the read contexts of [`multiraft`].
//! 8. Untrusted bytes: [`codec`] (limits) and the storage decoders.

pub mod cache;
pub mod codec;
pub mod command;
pub mod ids;
pub mod messages;
pub mod multiraft;
pub mod node;
pub mod storage;
pub mod store;
pub mod transport;
pub mod value;
