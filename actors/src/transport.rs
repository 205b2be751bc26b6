//! How MultiRaft reaches other nodes.
//!
//! [`Transport`] is the seam: MultiRaft hands it one [`RaftBatch`] per destination node per
//! round and never waits. [`LocalNetwork`] connects the nodes of one process (tests, scenario
//! runs) and can drop, delay, hold back and partition messages.

use crate::ids::{NodeId, RangeId};
use crate::messages::RaftBatch;
use actix::Recipient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The destination cannot be reached now (not connected, or its queue is full). MultiRaft tells
/// raft with `report_unreachable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// Sends raft batches to other nodes. `send` must not block.
pub trait Transport: Send + 'static {
    fn send(&self, batch: RaftBatch) -> Result<(), Unreachable>;
}

/// An in-process network between the MultiRaft actors of several nodes, with faults.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetworkState>>,
}

struct NetworkState {
    nodes: HashMap<NodeId, Recipient<RaftBatch>>,
    /// Directed links that lose everything sent over them.
    cut: HashSet<(NodeId, NodeId)>,
    /// Holds back the raft messages (not heartbeats) it says to, by sender, destination and
    /// range, until the network heals.
    hold: Option<MessageFilter>,
    held: BTreeMap<(NodeId, NodeId), Vec<(RangeId, raft::prelude::Message)>>,
    drop_probability: f64,
    duplicate_probability: f64,
    max_delay: Duration,
    rng: StdRng,
    delivered: u64,
    dropped: u64,
}

impl Default for NetworkState {
    fn default() -> Self {
        NetworkState {
            nodes: HashMap::new(),
            cut: HashSet::new(),
            hold: None,
            held: BTreeMap::new(),
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            max_delay: Duration::ZERO,
            rng: StdRng::seed_from_u64(0),
            delivered: 0,
            dropped: 0,
        }
    }
}

impl LocalNetwork {
    pub fn new(seed: u64) -> Self {
        let net = LocalNetwork::default();
        net.lock().rng = StdRng::seed_from_u64(seed);
        net
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetworkState> {
        self.state.lock().expect("local network poisoned")
    }

    /// Connects a node's MultiRaft to the network.
    pub fn register(&self, node: NodeId, recipient: Recipient<RaftBatch>) {
        self.lock().nodes.insert(node, recipient);
    }

    /// Disconnects a node (it crashed or stopped): sends to it fail as unreachable.
    pub fn unregister(&self, node: NodeId) {
        self.lock().nodes.remove(&node);
    }

    /// The transport a node uses to send.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport { net: self.clone() }
    }

    /// Cuts every link between the two sides, both ways.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut s = self.lock();
        for &a in side_a {
            for &b in side_b {
                s.cut.insert((a, b));
                s.cut.insert((b, a));
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Holds back every raft message (heartbeats and their answers excepted: they travel
    /// apart) for which `hold` says so, by sender, destination and range, until
    /// [`LocalNetwork::heal`]: as a node too busy to read them, or to answer them, would.
    pub fn hold_messages(
        &self,
        hold: impl Fn(NodeId, NodeId, RangeId, &raft::prelude::Message) -> bool + Send + 'static,
    ) {
        self.lock().hold = Some(Box::new(hold));
    }

    /// Restores every link, and delivers the messages held back, each link's in one batch.
    pub fn heal(&self) {
        self.lock().cut.clear();
        self.release_held();
    }

    /// Holds back no more messages, and delivers those held back, each link's in one batch;
    /// links cut stay cut.
    pub fn release_held(&self) {
        let mut s = self.lock();
        s.hold = None;
        for ((from, to), messages) in std::mem::take(&mut s.held) {
            if let Some(recipient) = s.nodes.get(&to) {
                let mut batch = RaftBatch::new(from, to);
                batch.messages = messages;
                recipient.do_send(batch);
            }
        }
    }

    /// Loses each batch with this probability.
    pub fn set_drop_probability(&self, p: f64) {
        self.lock().drop_probability = p.clamp(0.0, 1.0);
    }

    /// Delivers each batch twice with this probability.
    pub fn set_duplicate_probability(&self, p: f64) {
        self.lock().duplicate_probability = p.clamp(0.0, 1.0);
    }

    /// Delays each batch by a random time up to `max` (which also reorders them).
    pub fn set_max_delay(&self, max: Duration) {
        self.lock().max_delay = max;
    }

    /// Messages held back now (see [`LocalNetwork::hold_messages`]).
    pub fn held(&self) -> usize {
        self.lock().held.values().map(Vec::len).sum()
    }

    /// Batches delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.dropped)
    }
}

/// Which raft messages a [`LocalNetwork`] holds back: see [`LocalNetwork::hold_messages`].
type MessageFilter = Box<dyn Fn(NodeId, NodeId, RangeId, &raft::prelude::Message) -> bool + Send>;

/// One node's view of a [`LocalNetwork`].
pub struct LocalTransport {
    net: LocalNetwork,
}

impl Transport for LocalTransport {
    fn send(&self, mut batch: RaftBatch) -> Result<(), Unreachable> {
        let mut s = self.net.lock();
        // Checked first: a batch reported unreachable must not also be held back and
        // delivered later (its forwarded writes are refused as never sent).
        let Some(to) = s.nodes.get(&batch.to).cloned() else {
            return Err(Unreachable);
        };
        let state = &mut *s;
        if let Some(hold) = &state.hold {
            let (from, to) = (batch.from, batch.to);
            let (held, sent) = std::mem::take(&mut batch.messages)
                .into_iter()
                .partition(|(range, m)| hold(from, to, *range, m));
            batch.messages = sent;
            state.held.entry((from, to)).or_default().extend(held);
        }
        let p = s.drop_probability;
        if s.cut.contains(&(batch.from, batch.to)) || (p > 0.0 && s.rng.gen_bool(p)) {
            s.dropped += 1;
            return Ok(());
        }
        let d = s.duplicate_probability;
        let copies = if d > 0.0 && s.rng.gen_bool(d) { 2 } else { 1 };
        for _ in 0..copies {
            s.delivered += 1;
            if s.max_delay.is_zero() {
                to.do_send(batch.clone());
            } else {
                // Whole milliseconds: the timer's resolution, so that under a paused clock the
                // delivery order depends on the seed alone, not on where in a millisecond the
                // clock started.
                let max = s.max_delay.as_millis() as u64;
                let ms = s.rng.gen_range(0..=max);
                let (to, batch) = (to.clone(), batch.clone());
                actix_rt::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    to.do_send(batch);
                });
            }
        }
        Ok(())
    }
}
