//! Names for the numbers that identify things, so a range is never mistaken for a node.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A range: one Raft group, covering `[start_key, end_key)` of the key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RangeId(pub u64);

/// A node: one `flotilla` process. A node holds at most one replica of a range, so the node id
/// is also the replica's id inside the range's Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// One replica of a range: its id inside the range's Raft group. The low 32 bits are the node
/// holding it; the high 32 bits count how many times that node held the range before, so a
/// node removed from a range and added again is a new replica that stale messages addressed
/// to the old one cannot reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u64);

/// The largest node id (node ids fill the low half of a [`ReplicaId`]).
pub const MAX_NODE_ID: u64 = u32::MAX as u64;

impl ReplicaId {
    /// The replica of `node` in its `generation`-th membership of a range (from 0).
    pub fn new(node: NodeId, generation: u64) -> ReplicaId {
        debug_assert!(node.0 <= MAX_NODE_ID && generation <= MAX_NODE_ID);
        ReplicaId(generation << 32 | node.0)
    }

    pub fn node(self) -> NodeId {
        NodeId(self.0 & MAX_NODE_ID)
    }

    pub fn generation(self) -> u64 {
        self.0 >> 32
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.generation() {
            0 => write!(f, "{}", self.node()),
            g => write!(f, "{}.{g}", self.node()),
        }
    }
}

/// Identifies one proposal from the moment a client asks for it until its entry is applied:
/// the proposing node, that node's boot (so ids never repeat across restarts) and a counter.
/// It travels in the raft entry's `context`, so the node that proposed it recognises the entry
/// when it commits, whichever node led the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: NodeId,
    pub boot: u64,
    pub seq: u64,
}

/// Identifies one linearizable read waiting for its read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadId(pub u64);

impl RangeId {
    /// The id of the `seq`-th range a split proposed from `node` made (see
    /// `Engine::new_range_ids`): shown `r<node>.<seq>`. The config's ranges have ids below 2^32.
    pub fn of_split(node: NodeId, seq: u64) -> RangeId {
        debug_assert!(node.0 <= MAX_NODE_ID && (1..=MAX_NODE_ID).contains(&seq));
        RangeId(node.0 << 32 | seq)
    }

    /// A range id as shown (`r7`, `r2.1`), the `r` optional; `None` if it is not one.
    pub fn parse(text: &str) -> Option<RangeId> {
        let text = text.strip_prefix(['r', 'R']).unwrap_or(text);
        let number = |t: &str| {
            let n: u64 = t.parse().ok()?;
            (t.bytes().all(|b| b.is_ascii_digit()) && n >= 1).then_some(n)
        };
        match text.split_once('.') {
            None => number(text).map(RangeId),
            Some((node, seq)) => {
                let (node, seq) = (number(node)?, number(seq)?);
                (node <= MAX_NODE_ID && seq <= MAX_NODE_ID)
                    .then(|| RangeId::of_split(NodeId(node), seq))
            }
        }
    }
}

impl fmt::Display for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 >> 32 {
            0 => write!(f, "r{}", self.0),
            node => write!(f, "r{node}.{}", self.0 & MAX_NODE_ID),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl ProposalId {
    const ENCODED_LEN: usize = 24;

    /// The bytes stored in a raft entry's context.
    pub fn to_context(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        out.extend_from_slice(&self.node.0.to_be_bytes());
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Reads the id back from an entry's context; `None` for entries flotilla did not propose
    /// with an id (the leader's empty entry, the automatic leave-joint entry).
    pub fn from_context(context: &[u8]) -> Option<ProposalId> {
        if context.len() != Self::ENCODED_LEN {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&context[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        Some(ProposalId {
            node: NodeId(word(0)),
            boot: word(1),
            seq: word(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_id_round_trips_through_entry_context() {
        let id = ProposalId {
            node: NodeId(3),
            boot: u64::MAX - 1,
            seq: 42,
        };
        assert_eq!(ProposalId::from_context(&id.to_context()), Some(id));
        assert_eq!(ProposalId::from_context(b""), None);
        assert_eq!(ProposalId::from_context(&[0; 23]), None);
    }

    #[test]
    fn a_replica_id_names_its_node_and_generation() {
        let r = ReplicaId::new(NodeId(7), 0);
        assert_eq!(r.0, 7, "first replicas keep the node's id as raft id");
        let again = ReplicaId::new(NodeId(7), 2);
        assert_eq!((again.node(), again.generation()), (NodeId(7), 2));
        assert!(again > r);
        assert_eq!(again.to_string(), "n7.2");
        assert_eq!(r.to_string(), "n7");
    }

    #[test]
    fn a_range_id_is_shown_as_it_is_parsed() {
        for (id, shown) in [
            (RangeId(7), "r7"),
            (RangeId::of_split(NodeId(2), 1), "r2.1"),
            (
                RangeId::of_split(NodeId(MAX_NODE_ID), MAX_NODE_ID),
                "r4294967295.4294967295",
            ),
        ] {
            assert_eq!(id.to_string(), shown);
            assert_eq!(RangeId::parse(shown), Some(id));
            assert_eq!(RangeId::parse(&shown[1..]), Some(id));
        }
        assert_ne!(
            RangeId::of_split(NodeId(1), 1),
            RangeId::of_split(NodeId(2), 1)
        );
    }
}
