//! `FLOTILLA ...`: the admin commands.
//!
//! - `FLOTILLA RANGES`: each range's span, replicas, leader, term and applied index;
//! - `FLOTILLA ADDREPLICA <range|all> <node>`: a learner, filled by snapshot and log, then
//!   promoted; answered once it votes;
//! - `FLOTILLA REMOVEREPLICA <range|all> <node>`: leadership moves first if the node leads;
//! - `FLOTILLA TRANSFERLEADER <range|all> <node>`;
//! - `FLOTILLA SPLIT <key>`: cuts the range holding the key in two at it; answered with the
//!   new range (the keys from `key` on, the same replicas) once this node applied the split;
//! - `FLOTILLA DIGEST`: each range's applied index, key count and hash of its data here, to
//!   compare replicas.
//!
//! `all` means every range this node holds (for REMOVEREPLICA and TRANSFERLEADER, those the
//! node in question holds too), and then the ranges split off them while the command ran. The
//! changes to several ranges run side by side; the answer is `+OK` once all succeeded, or an
//! error naming each range that failed.

use crate::commands::{Reply, Shared};
use crate::config::Config;
use crate::resp::reply;
use bytes::{Bytes, BytesMut};
use flotilla_actors::ids::{NodeId, RangeId, MAX_NODE_ID};
use flotilla_actors::messages::{
    AddReplica, GetDigest, GetRaftStatus, GetStoreStatus, RemoveReplica, SplitRange, StoreError,
    StoreStatus, TransferLeader,
};
use std::collections::BTreeSet;
use std::sync::Arc;

const USAGE: &str = "ERR unknown FLOTILLA subcommand or wrong number of arguments; try RANGES, DIGEST, ADDREPLICA <range|all> <node>, REMOVEREPLICA <range|all> <node>, TRANSFERLEADER <range|all> <node>, SPLIT <key>";

#[derive(Clone, Copy)]
enum Change {
    Add,
    Remove,
    Transfer,
}

/// Which ranges a change is for.
enum Target {
    One(RangeId),
    All,
}

/// A parsed admin command.
enum Admin {
    Ranges,
    Digest,
    Change(Change, Target, NodeId),
    Split(Vec<u8>),
}

fn parse_number(arg: &[u8], prefix: u8, max: u64) -> Option<u64> {
    let text = std::str::from_utf8(arg).ok()?;
    let text = text
        .strip_prefix(prefix as char)
        .or_else(|| text.strip_prefix(prefix.to_ascii_uppercase() as char))
        .unwrap_or(text);
    let n: u64 = text.parse().ok()?;
    (1..=max).contains(&n).then_some(n)
}

fn parse(a: &[Bytes]) -> Result<Admin, String> {
    let sub = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
    let change = match (sub.as_str(), a.len()) {
        ("ranges", 1) => return Ok(Admin::Ranges),
        ("digest", 1) => return Ok(Admin::Digest),
        ("split", 2) => return Ok(Admin::Split(a[1].to_vec())),
        ("addreplica", 3) => Change::Add,
        ("removereplica", 3) => Change::Remove,
        ("transferleader", 3) => Change::Transfer,
        _ => return Err(USAGE.into()),
    };
    let target = if a[1].eq_ignore_ascii_case(b"all") {
        Target::All
    } else {
        let r = std::str::from_utf8(&a[1]).ok().and_then(RangeId::parse);
        let r =
            r.ok_or_else(|| format!("ERR invalid range '{}'", String::from_utf8_lossy(&a[1])))?;
        Target::One(r)
    };
    let node = parse_number(&a[2], b'n', MAX_NODE_ID)
        .ok_or_else(|| format!("ERR invalid node id '{}'", String::from_utf8_lossy(&a[2])))?;
    Ok(Admin::Change(change, target, NodeId(node)))
}

fn done(out: BytesMut) -> Reply {
    Reply {
        bytes: out,
        close: false,
    }
}

fn failed(msg: &str) -> Reply {
    let mut out = BytesMut::new();
    reply::error(&mut out, msg);
    done(out)
}

const SHUTTING_DOWN: &str = "ERR node is shutting down";

/// Runs an admin command (arguments after `FLOTILLA`).
pub async fn run(shared: Arc<Shared>, a: Vec<Bytes>) -> Reply {
    match parse(&a) {
        Err(e) => failed(&e),
        Ok(Admin::Ranges) => ranges(&shared).await,
        Ok(Admin::Digest) => digest(&shared).await,
        Ok(Admin::Split(key)) => match shared.store.send(SplitRange { key }).await {
            Ok(Ok(right)) => {
                let mut out = BytesMut::new();
                reply::simple(&mut out, &right.to_string());
                done(out)
            }
            Ok(Err(e)) => failed(&e.to_string()),
            Err(_) => failed(SHUTTING_DOWN),
        },
        Ok(Admin::Change(change, target, node)) => {
            // A replica on a node no one can reach would be a learner forever: it keeps its
            // range awake (never quiescent) and the request waits out the admin timeout.
            if matches!(change, Change::Add) && !is_member(&shared.config, node) {
                return failed(&format!(
                    "ERR {node} is not a node of this cluster: list it in every node's peers \
                     first"
                ));
            }
            let Ok(status) = shared.store.send(GetStoreStatus).await else {
                return failed(SHUTTING_DOWN);
            };
            let ranges = match target {
                Target::One(r) => vec![r],
                Target::All => targets(&status, change, node),
            };
            // Nor could a node that is down catch up: refused at once rather than after the
            // admin timeout, unless it votes in every range already (the request is then
            // answered at once, as when repeated). From this node's view: the leader, which
            // sends the snapshot, may see otherwise.
            if matches!(change, Change::Add)
                && node != NodeId(shared.config.node_id)
                && !shared.peers.connected(node)
                && !votes_in_all(&status, &ranges, node)
            {
                return failed(&format!(
                    "ERR {node} is not connected to this node: it may be down or still \
                     starting; try again in a few seconds, or through another node"
                ));
            }
            let one = |range| {
                let store = shared.store.clone();
                async move {
                    let result = match change {
                        Change::Add => store.send(AddReplica { range, node }).await,
                        Change::Remove => store.send(RemoveReplica { range, node }).await,
                        Change::Transfer => store.send(TransferLeader { range, to: node }).await,
                    };
                    result.ok()
                }
            };
            let list = || async {
                let status = shared.store.send(GetStoreStatus).await.ok()?;
                Some(targets(&status, change, node))
            };
            let again = matches!(target, Target::All);
            let Some((total, failures)) = over_ranges(ranges, again, one, list).await else {
                return failed(SHUTTING_DOWN);
            };
            if failures.is_empty() {
                let mut out = BytesMut::new();
                reply::simple(&mut out, "OK");
                return done(out);
            }
            failed(&describe_failures(total, &failures))
        }
    }
}

/// The most passes of a command with `all` over the ranges split off while it ran.
const ALL_PASSES: usize = 16;

type Failures = Vec<(RangeId, StoreError)>;

/// Runs `one` on each of `ranges` at once; then, if `again` (for `all`), on those of what `list`
/// names afterwards that it has not run on, and so on: a range split while the command ran gave
/// the new range the same replicas, and it is one of the ranges `all` stands for now. How many
/// ranges it ran on, and those that failed; `None` once the node is shutting down.
async fn over_ranges<F, L>(
    mut ranges: Vec<RangeId>,
    again: bool,
    one: impl Fn(RangeId) -> F,
    list: impl Fn() -> L,
) -> Option<(usize, Failures)>
where
    F: std::future::Future<Output = Option<Result<(), StoreError>>>,
    L: std::future::Future<Output = Option<Vec<RangeId>>>,
{
    let (mut ran, mut failures) = (BTreeSet::new(), Vec::new());
    for _ in 0..ALL_PASSES {
        ranges.retain(|r| ran.insert(*r));
        if ranges.is_empty() {
            break;
        }
        let results = futures::future::join_all(ranges.iter().map(|&r| one(r))).await;
        for (range, result) in ranges.iter().zip(results) {
            if let Err(e) = result? {
                failures.push((*range, e));
            }
        }
        if !again {
            break;
        }
        ranges = list().await?;
    }
    Some((ran.len(), failures))
}

/// Whether `node` is this node or one of its configured peers.
fn is_member(config: &Config, node: NodeId) -> bool {
    node == NodeId(config.node_id)
        || config
            .peer_addrs()
            .is_ok_and(|peers| peers.contains_key(&node))
}

/// Whether `node` is a voter of every one of `ranges` that this node holds.
fn votes_in_all(status: &StoreStatus, ranges: &[RangeId], node: NodeId) -> bool {
    // One pass over the node's ranges: `all` names every one of them.
    let wanted: std::collections::HashSet<RangeId> = ranges.iter().copied().collect();
    (status.ranges.iter())
        .filter(|r| wanted.contains(&r.descriptor.id))
        .all(|r| r.descriptor.voters.iter().any(|v| v.node() == node))
}

/// The ranges `all` stands for.
fn targets(status: &StoreStatus, change: Change, node: NodeId) -> Vec<RangeId> {
    status
        .ranges
        .iter()
        .map(|r| &r.descriptor)
        .filter(|d| match change {
            Change::Add => true,
            Change::Remove => d.replica_of(node).is_some(),
            Change::Transfer => d.voters.iter().any(|v| v.node() == node),
        })
        .map(|d| d.id)
        .collect()
}

/// One error for the ranges that failed, with the first failure's Redis prefix.
fn describe_failures(total: usize, failures: &[(RangeId, StoreError)]) -> String {
    let text = |e: &StoreError| {
        let s = e.to_string();
        match s.split_once(' ') {
            Some((prefix, rest)) => (prefix.to_string(), rest.to_string()),
            None => ("ERR".to_string(), s),
        }
    };
    let prefix = text(&failures[0].1).0;
    let details: Vec<String> = failures
        .iter()
        .map(|(r, e)| format!("{r}: {}", text(e).1))
        .collect();
    format!(
        "{prefix} {} of {total} ranges failed: {}",
        failures.len(),
        details.join("; ")
    )
}

async fn ranges(shared: &Shared) -> Reply {
    let (store, raft) = futures::join!(
        shared.store.send(GetStoreStatus),
        shared.multiraft.send(GetRaftStatus)
    );
    let (Ok(store), Ok(raft)) = (store, raft) else {
        return failed(SHUTTING_DOWN);
    };
    let raft: std::collections::HashMap<_, _> = raft.iter().map(|s| (s.range, s)).collect();
    let mut out = BytesMut::new();
    reply::array_header(&mut out, store.ranges.len());
    // In key order: ranges born of splits have ids out of it.
    let mut ranges: Vec<_> = store.ranges.iter().collect();
    ranges.sort_by(|a, b| a.descriptor.start_key.cmp(&b.descriptor.start_key));
    for r in ranges {
        let d = &r.descriptor;
        let rs = raft.get(&d.id);
        let names = |ns: &[flotilla_actors::ids::ReplicaId]| {
            ns.iter()
                .map(|n| n.node().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut line = format!(
            "{} [{:?}, {}) replicas={}",
            d.id,
            String::from_utf8_lossy(&d.start_key),
            if d.end_key.is_empty() {
                "end".to_string()
            } else {
                format!("{:?}", String::from_utf8_lossy(&d.end_key))
            },
            names(&d.voters),
        );
        if !d.learners.is_empty() {
            line.push_str(&format!(" learners={}", names(&d.learners)));
        }
        line.push_str(&format!(
            " leader={} term={} applied={} size={}",
            rs.and_then(|s| s.leader)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "none".into()),
            rs.map(|s| s.term).unwrap_or(r.term),
            r.applied_index,
            r.size
                .map(|b| b.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ));
        if rs.is_some_and(|s| s.quiescent) {
            line.push_str(" quiescent");
        }
        reply::bulk(&mut out, line.as_bytes());
    }
    done(out)
}

async fn digest(shared: &Shared) -> Reply {
    // Refused while a snapshot is being installed (a moment) or a FLUSHDB's keys deleted
    // (seconds): asked again for up to a second, then the refusal is the answer.
    let mut tries = 0;
    let answer = loop {
        let answer = shared.store.send(GetDigest).await;
        tries += 1;
        if tries == 100 || !matches!(answer, Ok(Err(StoreError::Unsettled))) {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    match answer {
        Ok(Ok(digests)) => {
            let mut out = BytesMut::new();
            reply::array_header(&mut out, digests.len());
            for d in digests {
                let line = format!(
                    "{} applied={} keys={} hash={:016x}",
                    d.range, d.applied_index, d.keys, d.hash
                );
                reply::bulk(&mut out, line.as_bytes());
            }
            done(out)
        }
        Ok(Err(e)) => failed(&e.to_string()),
        Err(_) => failed(SHUTTING_DOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|w| Bytes::from(w.to_string())).collect()
    }

    /// `all` goes on to the ranges split off while it ran, once each, and no further.
    #[test]
    fn all_covers_the_ranges_split_while_it_ran() {
        use std::cell::RefCell;
        let (r1, r2, r3) = (RangeId(1), RangeId(2), RangeId(3));
        let run = |again: bool| {
            let (ran, listed) = (RefCell::new(Vec::new()), RefCell::new(vec![r1, r2]));
            let one = |r| {
                ran.borrow_mut().push(r);
                // r1 splits, r3 taking the keys from its split key on, as the command runs.
                if r == r1 {
                    listed.borrow_mut().push(r3);
                }
                let result = match r == r2 {
                    true => Err(StoreError::Invalid("refused".into())),
                    false => Ok(()),
                };
                async move { Some(result) }
            };
            let list = || async { Some(listed.borrow().clone()) };
            let outcome = futures::executor::block_on(over_ranges(vec![r1, r2], again, one, list));
            let (total, failures) = outcome.unwrap();
            let failed: Vec<RangeId> = failures.iter().map(|(r, _)| *r).collect();
            (ran.into_inner(), total, failed)
        };
        assert_eq!(run(true), (vec![r1, r2, r3], 3, vec![r2]));
        assert_eq!(run(false), (vec![r1, r2], 2, vec![r2]));
        let stopping = over_ranges(vec![r1], true, |_| async { None }, || async { None });
        assert_eq!(futures::executor::block_on(stopping).map(|o| o.0), None);
    }

    #[test]
    fn admin_arguments() {
        assert!(matches!(parse(&args("RANGES")), Ok(Admin::Ranges)));
        assert!(matches!(
            parse(&args("addreplica all 4")),
            Ok(Admin::Change(Change::Add, Target::All, NodeId(4)))
        ));
        assert!(matches!(
            parse(&args("REMOVEREPLICA r3 n1")),
            Ok(Admin::Change(
                Change::Remove,
                Target::One(RangeId(3)),
                NodeId(1)
            ))
        ));
        assert!(matches!(
            parse(&args("TRANSFERLEADER 2 3")),
            Ok(Admin::Change(
                Change::Transfer,
                Target::One(RangeId(2)),
                NodeId(3)
            ))
        ));
        assert_eq!(
            parse(&args("addreplica x 4")).err().unwrap(),
            "ERR invalid range 'x'"
        );
        assert_eq!(
            parse(&args("addreplica 1 0")).err().unwrap(),
            "ERR invalid node id '0'"
        );
        assert_eq!(
            parse(&args("addreplica 1 4294967296")).err().unwrap(),
            "ERR invalid node id '4294967296'"
        );
        assert_eq!(parse(&args("ranges 1")).err().unwrap(), USAGE);
        assert_eq!(parse(&args("split")).err().unwrap(), USAGE);
        assert_eq!(parse(&args("split a b")).err().unwrap(), USAGE);
        assert!(matches!(parse(&args("SPLIT key:5")), Ok(Admin::Split(k)) if k == b"key:5"));
        assert!(matches!(
            parse(&args("transferleader r2.1 3")),
            Ok(Admin::Change(Change::Transfer, Target::One(r), NodeId(3)))
                if r == RangeId::of_split(NodeId(2), 1)
        ));
        for bad in [
            "r2.",
            "r.1",
            "r2.0",
            "r0",
            "r2.1.1",
            "r4294967296.1",
            "r+1",
            "r2.+1",
        ] {
            assert_eq!(
                parse(&args(&format!("addreplica {bad} 4"))).err().unwrap(),
                format!("ERR invalid range '{bad}'")
            );
        }
    }

    #[test]
    fn failures_keep_the_first_prefix_and_name_each_range() {
        let msg = describe_failures(
            5,
            &[
                (RangeId(2), StoreError::Timeout),
                (
                    RangeId(4),
                    StoreError::Invalid("n9 holds no replica of r4".into()),
                ),
            ],
        );
        assert_eq!(
            msg,
            "TRYAGAIN 2 of 5 ranges failed: r2: request timed out; the write may or may not have been applied; r4: n9 holds no replica of r4"
        );
    }
}
