//! The Store actor: the state machine of every range on the node.
//!
//! It routes client requests to ranges, proposes writes through MultiRaft, applies what
//! MultiRaft reports committed (in log order, one atomic sled batch per [`Events`] message,
//! each range's applied index in the same batch as its data: contract 5), answers the waiting
//! clients after applying, and confirms membership changes with their callback.
//!
//! Reads are linearizable (contract 7): each read asks MultiRaft for a read index and is served
//! once the range has applied up to it.
//!
//! The Store never waits for MultiRaft: requests go out with `do_send`, answers come back as
//! events. A request not answered within `request_timeout` fails with an error that says its
//! outcome is unknown (contract 6).

use crate::codec;
use crate::command::{Command, CommandOutcome};
use crate::ids::{NodeId, ProposalId, RangeId, ReadId};
use crate::messages::*;
use crate::multiraft::{snapshot_of, MultiRaft};
use crate::storage::{
    put_applied, put_descriptor, Engine, LogPosition, Pair, RangeDescriptor, SnapshotData,
    StorageError,
};
use actix::prelude::*;
use raft::prelude::{ConfChangeType, ConfChangeV2};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How the Store runs.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// How long a request may wait for its answer before failing as "outcome unknown".
    pub request_timeout: Duration,
    /// Test knob: time spent (blocking) before applying each event batch, to play a slow disk.
    pub apply_delay: Duration,
    /// Capacity of the Store's mailbox; MultiRaft keeps events back while it is full.
    pub mailbox_capacity: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            request_timeout: Duration::from_secs(5),
            apply_delay: Duration::ZERO,
            mailbox_capacity: 1024,
        }
    }
}

struct RangeState {
    descriptor: RangeDescriptor,
    applied: LogPosition,
    leader: Option<NodeId>,
    term: u64,
}

type WriteReply = oneshot::Sender<Result<CommandOutcome, StoreError>>;
type ReadReply = oneshot::Sender<Result<Vec<Option<Vec<u8>>>, StoreError>>;
type ChangeReply = oneshot::Sender<Result<(), StoreError>>;

enum Waiter {
    Write(WriteReply),
    Change(ChangeReply),
}

struct PendingWrite {
    reply: Waiter,
    deadline: Instant,
}

struct PendingRead {
    range: RangeId,
    keys: Vec<Vec<u8>>,
    reply: ReadReply,
    deadline: Instant,
    /// Known once MultiRaft answered; served when the range has applied it.
    index: Option<u64>,
}

/// The state machine of the node's ranges. See the module documentation.
pub struct Store {
    node: NodeId,
    boot: u64,
    engine: Arc<Engine>,
    multiraft: Addr<MultiRaft>,
    settings: StoreSettings,
    ranges: BTreeMap<RangeId, RangeState>,
    /// Start key → range, for routing.
    routing: BTreeMap<Vec<u8>, RangeId>,
    next_seq: u64,
    next_read: u64,
    writes: HashMap<ProposalId, PendingWrite>,
    reads: HashMap<ReadId, PendingRead>,
    applied_commands: u64,
}

impl Store {
    /// Loads the ranges stored in `engine`.
    pub fn load(
        node: NodeId,
        boot: u64,
        engine: Arc<Engine>,
        multiraft: Addr<MultiRaft>,
        settings: StoreSettings,
    ) -> Result<Store, StorageError> {
        let mut store = Store {
            node,
            boot,
            engine: engine.clone(),
            multiraft,
            settings,
            ranges: BTreeMap::new(),
            routing: BTreeMap::new(),
            next_seq: 0,
            next_read: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            applied_commands: 0,
        };
        for d in engine.descriptors()? {
            let applied = engine.applied(d.id)?;
            store.put_range(d, applied);
        }
        Ok(store)
    }

    fn put_range(&mut self, descriptor: RangeDescriptor, applied: LogPosition) {
        self.routing
            .insert(descriptor.start_key.clone(), descriptor.id);
        let (leader, term) = self
            .ranges
            .get(&descriptor.id)
            .map(|r| (r.leader, r.term))
            .unwrap_or((None, 0));
        self.ranges.insert(
            descriptor.id,
            RangeState {
                descriptor,
                applied,
                leader,
                term,
            },
        );
    }

    /// The range holding `key` on this node.
    fn route(&self, key: &[u8]) -> Option<RangeId> {
        let (_, id) = self.routing.range(..=key.to_vec()).next_back()?;
        let r = self.ranges.get(id)?;
        r.descriptor.contains(key).then_some(*id)
    }

    fn next_proposal(&mut self) -> ProposalId {
        self.next_seq += 1;
        ProposalId {
            node: self.node,
            boot: self.boot,
            seq: self.next_seq,
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.settings.request_timeout
    }

    /// Splits a command into one command per range.
    fn split(&self, command: Command) -> Result<Vec<(RangeId, Command)>, StoreError> {
        let route = |k: &[u8]| self.route(k).ok_or(StoreError::NoRange);
        Ok(match command {
            Command::Set { .. } | Command::IncrBy { .. } => {
                let range = route(command.keys()[0])?;
                vec![(range, command)]
            }
            Command::Delete { keys } => {
                let mut parts: BTreeMap<RangeId, Vec<Vec<u8>>> = BTreeMap::new();
                for k in keys {
                    parts.entry(route(&k)?).or_default().push(k);
                }
                parts
                    .into_iter()
                    .map(|(r, keys)| (r, Command::Delete { keys }))
                    .collect()
            }
            Command::MSet { pairs } => {
                let mut parts: BTreeMap<RangeId, Vec<Pair>> = BTreeMap::new();
                for (k, v) in pairs {
                    parts.entry(route(&k)?).or_default().push((k, v));
                }
                parts
                    .into_iter()
                    .map(|(r, pairs)| (r, Command::MSet { pairs }))
                    .collect()
            }
        })
    }

    fn answer(&mut self, proposal: ProposalId, result: Result<CommandOutcome, StoreError>) {
        if let Some(w) = self.writes.remove(&proposal) {
            match w.reply {
                Waiter::Write(tx) => {
                    let _ = tx.send(result);
                }
                Waiter::Change(tx) => {
                    let _ = tx.send(result.map(|_| ()));
                }
            }
        }
    }

    fn serve_read(&mut self, id: ReadId) {
        if let Some(read) = self.reads.remove(&id) {
            let values: Result<Vec<_>, StorageError> =
                read.keys.iter().map(|k| self.engine.get_user(k)).collect();
            let _ = read
                .reply
                .send(values.map_err(|e| StoreError::Internal(e.to_string())));
        }
    }

    /// Serves the reads whose range has applied their read index.
    fn serve_ready_reads(&mut self) {
        let ready: Vec<ReadId> = self
            .reads
            .iter()
            .filter(|(_, r)| {
                r.index.is_some_and(|i| {
                    self.ranges
                        .get(&r.range)
                        .is_some_and(|s| s.applied.index >= i)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.serve_read(id);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<ProposalId> = self
            .writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.answer(id, Err(StoreError::Timeout));
        }
        let late: Vec<ReadId> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(r) = self.reads.remove(&id) {
                let _ = r.reply.send(Err(StoreError::Timeout));
            }
        }
    }

    fn generate_snapshot(&self, range: RangeId) -> Result<(), StorageError> {
        let Some(r) = self.ranges.get(&range) else {
            return Ok(());
        };
        let d = &r.descriptor;
        let pairs = self.engine.user_pairs(&d.start_key, &d.end_key)?;
        let data = codec::encode(&SnapshotData {
            descriptor: d.clone(),
            pairs,
        });
        self.multiraft.do_send(SnapshotGenerated {
            range,
            snapshot: snapshot_of(r.applied.index, r.applied.term, data),
        });
        Ok(())
    }

    /// Applies one event batch. See the module documentation.
    fn apply_events(&mut self, events: Vec<Event>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut touched = BTreeSet::new();
        let mut answers = Vec::new();
        let mut callbacks = Vec::new();
        let mut snapshot_requests = Vec::new();

        for event in events {
            match event {
                Event::CommandCommitted {
                    range,
                    index,
                    term,
                    proposal,
                    command,
                } => {
                    let Some(r) = self.ranges.get_mut(&range) else {
                        continue;
                    };
                    if index <= r.applied.index {
                        continue;
                    }
                    r.applied = LogPosition { index, term };
                    touched.insert(range);
                    let Some(command) = command else {
                        continue;
                    };
                    let engine = &self.engine;
                    let mut read_error = None;
                    let applied = command.apply(|k| match overlay.get(k) {
                        Some(v) => v.clone(),
                        None => engine.get_user(k).unwrap_or_else(|e| {
                            read_error = Some(e);
                            None
                        }),
                    });
                    if let Some(e) = read_error {
                        return Err(e);
                    }
                    for (k, v) in applied.writes {
                        let stored = crate::storage::keys::user_key(&k);
                        match &v {
                            Some(v) => batch.insert(stored, v.as_slice()),
                            None => batch.remove(stored),
                        }
                        overlay.insert(k, v);
                    }
                    self.applied_commands += 1;
                    if let Some(p) = proposal.filter(|p| p.node == self.node && p.boot == self.boot)
                    {
                        answers.push((p, Ok(applied.outcome)));
                    }
                }
                Event::MembershipChangeCommitted {
                    range,
                    index,
                    term,
                    proposal,
                    change,
                    callback,
                } => {
                    if let Some(r) = self.ranges.get_mut(&range) {
                        if index > r.applied.index {
                            apply_change(&mut r.descriptor, &change);
                            put_descriptor(&mut batch, &r.descriptor);
                            r.applied = LogPosition { index, term };
                            touched.insert(range);
                        }
                    }
                    callbacks.push(callback);
                    if let Some(p) = proposal.filter(|p| p.node == self.node && p.boot == self.boot)
                    {
                        answers.push((p, Ok(CommandOutcome::Ok)));
                    }
                }
                Event::LeaderElected {
                    range,
                    term,
                    leader,
                } => {
                    if let Some(r) = self.ranges.get_mut(&range) {
                        r.leader = Some(leader);
                        r.term = term;
                    }
                }
                Event::ReadReady {
                    range: _,
                    index,
                    reads,
                } => {
                    for id in reads {
                        if let Some(r) = self.reads.get_mut(&id) {
                            r.index = Some(index);
                        }
                    }
                }
                Event::ProposalFailed { proposal, error } => {
                    answers.push((proposal, Err(StoreError::Refused(error))));
                }
                Event::ReadsFailed { reads, error } => {
                    for id in reads {
                        if let Some(r) = self.reads.remove(&id) {
                            let _ = r.reply.send(Err(StoreError::Refused(error.clone())));
                        }
                    }
                }
                Event::SnapshotRequested { range } => snapshot_requests.push(range),
                Event::SnapshotInstalled {
                    range,
                    index,
                    term,
                    descriptor,
                } => {
                    debug_assert_eq!(range, descriptor.id);
                    self.put_range(descriptor, LogPosition { index, term });
                }
            }
        }

        for range in &touched {
            if let Some(r) = self.ranges.get(range) {
                put_applied(&mut batch, *range, r.applied);
            }
        }
        self.engine.write(batch)?;

        for (proposal, result) in answers {
            self.answer(proposal, result);
        }
        // Callbacks before the applied report and before any snapshot, so MultiRaft sees them
        // in the order they happened.
        for callback in callbacks {
            callback.done();
        }
        if !touched.is_empty() {
            self.multiraft.do_send(Applied {
                ranges: touched
                    .iter()
                    .filter_map(|r| self.ranges.get(r).map(|s| (*r, s.applied.index)))
                    .collect(),
            });
        }
        for range in snapshot_requests {
            self.generate_snapshot(range)?;
        }
        self.serve_ready_reads();
        Ok(())
    }
}

/// Updates a descriptor's replica list for a membership change.
fn apply_change(d: &mut RangeDescriptor, change: &ConfChangeV2) {
    for c in change.get_changes() {
        let node = NodeId(c.node_id);
        match c.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if !d.replicas.contains(&node) {
                    d.replicas.push(node);
                    d.replicas.sort();
                }
            }
            ConfChangeType::RemoveNode => d.replicas.retain(|n| *n != node),
        }
    }
}

impl Actor for Store {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        ctx.run_interval(Duration::from_millis(50), |store, _| store.expire());
    }
}

impl Handler<Events> for Store {
    type Result = ();
    fn handle(&mut self, msg: Events, _: &mut Context<Self>) {
        if !self.settings.apply_delay.is_zero() {
            std::thread::sleep(self.settings.apply_delay);
        }
        if let Err(e) = self.apply_events(msg.0) {
            // Applying is deterministic; a storage error here means the disk is failing.
            panic!("store: {}: cannot apply committed entries: {e}", self.node);
        }
    }
}

impl Handler<Write> for Store {
    type Result = ResponseFuture<Result<CommandOutcome, StoreError>>;

    fn handle(&mut self, msg: Write, _: &mut Context<Self>) -> Self::Result {
        let parts = match self.split(msg.command) {
            Ok(p) => p,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let mut replies = Vec::with_capacity(parts.len());
        for (range, command) in parts {
            let proposal = self.next_proposal();
            let (tx, rx) = oneshot::channel();
            self.writes.insert(
                proposal,
                PendingWrite {
                    reply: Waiter::Write(tx),
                    deadline: self.deadline(),
                },
            );
            self.multiraft.do_send(Propose {
                range,
                proposal,
                payload: ProposalPayload::Command(codec::encode(&command)),
            });
            replies.push(rx);
        }
        Box::pin(async move {
            let mut total: Option<CommandOutcome> = None;
            for rx in replies {
                let outcome = rx
                    .await
                    .map_err(|_| StoreError::Internal("store stopped".into()))??;
                total = Some(match (total, outcome) {
                    (Some(CommandOutcome::Integer(a)), CommandOutcome::Integer(b)) => {
                        CommandOutcome::Integer(a + b)
                    }
                    (_, o) => o,
                });
            }
            Ok(total.unwrap_or(CommandOutcome::Ok))
        })
    }
}

impl Handler<Read> for Store {
    type Result = ResponseFuture<Result<Vec<Option<Vec<u8>>>, StoreError>>;

    fn handle(&mut self, msg: Read, _: &mut Context<Self>) -> Self::Result {
        let mut parts: BTreeMap<RangeId, Vec<usize>> = BTreeMap::new();
        for (i, k) in msg.keys.iter().enumerate() {
            match self.route(k) {
                Some(r) => parts.entry(r).or_default().push(i),
                None => return Box::pin(async { Err(StoreError::NoRange) }),
            }
        }
        let n = msg.keys.len();
        let mut replies = Vec::with_capacity(parts.len());
        for (range, positions) in parts {
            self.next_read += 1;
            let id = ReadId(self.next_read);
            let (tx, rx) = oneshot::channel();
            self.reads.insert(
                id,
                PendingRead {
                    range,
                    keys: positions.iter().map(|&i| msg.keys[i].clone()).collect(),
                    reply: tx,
                    deadline: self.deadline(),
                    index: None,
                },
            );
            self.multiraft.do_send(ReadIndex { range, read: id });
            replies.push((positions, rx));
        }
        Box::pin(async move {
            let mut values = vec![None; n];
            for (positions, rx) in replies {
                let got = rx
                    .await
                    .map_err(|_| StoreError::Internal("store stopped".into()))??;
                for (pos, v) in positions.into_iter().zip(got) {
                    values[pos] = v;
                }
            }
            Ok(values)
        })
    }
}

impl Handler<ChangeReplicas> for Store {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: ChangeReplicas, _: &mut Context<Self>) -> Self::Result {
        let proposal = self.next_proposal();
        let (tx, rx) = oneshot::channel();
        self.writes.insert(
            proposal,
            PendingWrite {
                reply: Waiter::Change(tx),
                deadline: self.deadline(),
            },
        );
        self.multiraft.do_send(Propose {
            range: msg.range,
            proposal,
            payload: ProposalPayload::ChangeReplicas(msg.change),
        });
        Box::pin(async move {
            rx.await
                .map_err(|_| StoreError::Internal("store stopped".into()))?
        })
    }
}

impl Handler<GetStoreStatus> for Store {
    type Result = MessageResult<GetStoreStatus>;

    fn handle(&mut self, _: GetStoreStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(StoreStatus {
            node: self.node,
            ranges: self
                .ranges
                .values()
                .map(|r| RangeStatus {
                    descriptor: r.descriptor.clone(),
                    leader: r.leader,
                    term: r.term,
                    applied_index: r.applied.index,
                })
                .collect(),
            keys: self.engine.count_user_keys(),
            applied_commands: self.applied_commands,
        })
    }
}
