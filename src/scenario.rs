//! `flotilla script FILE`: a whole cluster in one process, driven by a scenario file.
//!
//! The nodes run on the in-memory network of `flotilla-actors` (which can partition, cut,
//! drop and delay messages) with data directories in a temporary directory. The file's steps
//! run in order; each prints one line with its result, and the first unmet expectation stops
//! the run with a message saying what was expected and what happened.
//!
//! The format is documented in `config/scenarios/README.md`.

use flotilla_actors::command::{Command, CommandOutcome, SetCondition};
use flotilla_actors::ids::{NodeId, RangeId};
use flotilla_actors::messages::{
    AddReplica, CompactLog, GetDigest, GetRaftStatus, GetReleasedProposals, GetStoreStatus,
    RangeDigest, Read, RemoveReplica, SplitRange, StoreError, TransferLeader, Write,
};
use flotilla_actors::multiraft::RaftSettings;
use flotilla_actors::node::{Node, NodeSettings};
use flotilla_actors::store::{StoreSettings, WriteApplied};
use flotilla_actors::transport::LocalNetwork;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, printed first.
    pub description: String,
    /// Node ids 1..=nodes exist (not all need be started).
    pub nodes: u64,
    /// The nodes that replicate every initial range.
    pub initial_members: Vec<u64>,
    #[serde(default)]
    pub split_keys: Vec<String>,
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Time the Store spends before applying each batch: a slow disk.
    #[serde(default)]
    pub apply_delay_ms: u64,
    #[serde(default)]
    pub store_mailbox: Option<usize>,
    #[serde(default)]
    pub log_compaction_entries: Option<u64>,
    /// A range past this many bytes is split (see `StoreSettings::range_max_bytes`).
    #[serde(default)]
    pub range_max_bytes: Option<u64>,
    /// Seeds the network's random drops and delays.
    #[serde(default)]
    pub seed: u64,
    pub step: Vec<Step>,
}

fn default_tick_ms() -> u64 {
    20
}

fn default_request_timeout_ms() -> u64 {
    1000
}

/// A range (`1`, `"r1.1"`), or every range of the node the request goes through (`"all"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Ranges {
    One(u64),
    Named(String),
}

/// The arguments of a replica change or leadership transfer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub range: Ranges,
    pub node: u64,
}

/// Writes without pause in the background (a new write every millisecond, at most 256 under
/// way), through some nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub via: Vec<u64>,
    /// Key prefixes, one per range to load.
    pub prefixes: Vec<String>,
}

/// One step: exactly one action, with its options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    // Nodes.
    pub start: Option<Vec<u64>>,
    pub crash: Option<u64>,
    pub restart: Option<u64>,
    // Client operations, through `via` (default: node 1).
    pub set: Option<[String; 2]>,
    pub get: Option<String>,
    pub incr: Option<String>,
    pub del: Option<String>,
    pub via: Option<u64>,
    /// The reply, as redis-cli shows it: `OK`, a value, an integer, `(nil)`.
    pub expect: Option<String>,
    /// The reply must be an error starting with this.
    pub expect_error: Option<String>,
    /// Retries the operation on `TRYAGAIN` for up to this long (a write whose outcome is
    /// unknown is retried only if it is a `set`).
    pub within_ms: Option<u64>,
    // Membership.
    pub add_replica: Option<Change>,
    pub remove_replica: Option<Change>,
    pub transfer_leader: Option<Change>,
    /// Cuts the range holding this key in two at it, through `via`; `expect` the new range
    /// (`r1.1`).
    pub split: Option<String>,
    // Network.
    pub partition: Option<Vec<Vec<u64>>>,
    pub cut: Option<[u64; 2]>,
    pub heal: Option<bool>,
    pub drop: Option<f64>,
    pub delay_ms: Option<u64>,
    // Checks and the rest.
    pub wait_leaders: Option<bool>,
    pub check_replicas: Option<bool>,
    pub compact: Option<u64>,
    pub start_load: Option<Load>,
    /// Stops the load; every acknowledged write must be readable. With `expect_held`, at least
    /// one proposal must have been held during a membership change and committed after it.
    pub stop_load: Option<bool>,
    pub expect_held: Option<bool>,
    pub sleep_ms: Option<u64>,
}

impl Step {
    /// The step's action, as one line (also checks there is exactly one).
    fn describe(&self) -> Result<String, String> {
        let via = format!("via n{}", self.via.unwrap_or(1));
        let change = |c: &Change| match &c.range {
            Ranges::One(r) => format!("r{r} n{} {via}", c.node),
            Ranges::Named(a) => format!("{a} n{} {via}", c.node),
        };
        let nodes = |ids: &[u64]| {
            ids.iter()
                .map(|n| format!("n{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let actions: Vec<String> = [
            self.start
                .as_ref()
                .map(|ids| format!("start {}", nodes(ids))),
            self.crash.map(|n| format!("crash n{n}")),
            self.restart.map(|n| format!("restart n{n}")),
            self.set.as_ref().map(|[k, v]| format!("set {k} {v} {via}")),
            self.get.as_ref().map(|k| format!("get {k} {via}")),
            self.incr.as_ref().map(|k| format!("incr {k} {via}")),
            self.del.as_ref().map(|k| format!("del {k} {via}")),
            self.add_replica
                .as_ref()
                .map(|c| format!("addreplica {}", change(c))),
            self.remove_replica
                .as_ref()
                .map(|c| format!("removereplica {}", change(c))),
            self.transfer_leader
                .as_ref()
                .map(|c| format!("transferleader {}", change(c))),
            self.split.as_ref().map(|k| format!("split at {k} {via}")),
            self.partition.as_ref().map(|sides| {
                let sides: Vec<String> = sides.iter().map(|s| nodes(s)).collect();
                format!("partition {}", sides.join(" | "))
            }),
            self.cut.map(|[a, b]| format!("cut n{a} -> n{b}")),
            self.heal.map(|_| "heal".into()),
            self.drop
                .map(|p| format!("drop {:.0}% of batches", p * 100.0)),
            self.delay_ms
                .map(|ms| format!("delay batches up to {ms} ms")),
            self.wait_leaders.map(|_| "wait for leaders".into()),
            self.check_replicas.map(|_| "check replicas".into()),
            self.compact.map(|r| format!("compact r{r}")),
            self.start_load.as_ref().map(|l| {
                format!(
                    "start load via {} on {}",
                    nodes(&l.via),
                    l.prefixes.join(",")
                )
            }),
            self.stop_load.map(|_| "stop load".into()),
            self.sleep_ms.map(|ms| format!("sleep {ms} ms")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match actions.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("a step needs an action".into()),
            many => Err(format!("a step has one action, not {}", many.join(" and "))),
        }
    }
}

enum ClientOp {
    Write(Command),
    Read(Vec<u8>),
}

/// The client operation a step asks for, if any.
fn client_op(step: &Step) -> Option<ClientOp> {
    let key = |k: &String| k.as_bytes().to_vec();
    if let Some([k, v]) = &step.set {
        return Some(ClientOp::Write(Command::Set {
            key: key(k),
            value: v.as_bytes().to_vec(),
            condition: SetCondition::Always,
        }));
    }
    if let Some(k) = &step.incr {
        return Some(ClientOp::Write(Command::IncrBy {
            key: key(k),
            delta: 1,
        }));
    }
    if let Some(k) = &step.del {
        return Some(ClientOp::Write(Command::Delete { keys: vec![key(k)] }));
    }
    step.get.as_ref().map(|k| ClientOp::Read(key(k)))
}

/// Reads a scenario file.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s: Scenario =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if s.nodes == 0 || s.initial_members.iter().any(|&m| m == 0 || m > s.nodes) {
        return Err(format!(
            "{}: initial_members must be among 1..={}",
            path.display(),
            s.nodes
        ));
    }
    crate::config::check_split_keys(&s.split_keys)
        .map_err(|e| format!("{}: split_keys {e}", path.display()))?;
    for (i, step) in s.step.iter().enumerate() {
        step.describe()
            .map_err(|e| format!("{}: step {}: {e}", path.display(), i + 1))?;
    }
    Ok(s)
}

/// The cluster a scenario drives.
struct Cluster {
    net: LocalNetwork,
    nodes: BTreeMap<u64, Node>,
    dir: tempfile::TempDir,
    scenario_settings: (Vec<Vec<u8>>, Vec<NodeId>, RaftSettings, StoreSettings),
    load: Option<LoadRun>,
}

/// A key and the value written to it.
type Pair = (Vec<u8>, Vec<u8>);

struct LoadRun {
    stop: Rc<std::cell::Cell<bool>>,
    acked: Rc<RefCell<Vec<Pair>>>,
    task: actix_rt::task::JoinHandle<()>,
}

impl Cluster {
    fn settings(&self, id: u64) -> NodeSettings {
        let (split_keys, members, raft, store) = self.scenario_settings.clone();
        NodeSettings {
            node: NodeId(id),
            data_dir: self.dir.path().join(format!("n{id}")),
            split_keys,
            initial_members: members,
            cache_bytes: 16 << 20,
            durable: true,
            raft,
            store,
        }
    }

    fn start(&mut self, id: u64) -> Result<(), String> {
        if self.nodes.contains_key(&id) {
            return Err(format!("n{id} is already running"));
        }
        let node = Node::start(self.settings(id), Box::new(self.net.transport()))
            .map_err(|e| format!("n{id} did not start: {e}"))?;
        self.net
            .register(NodeId(id), node.multiraft.clone().recipient());
        self.nodes.insert(id, node);
        Ok(())
    }

    fn crash(&mut self, id: u64) -> Result<(), String> {
        let node = self
            .nodes
            .remove(&id)
            .ok_or(format!("n{id} is not running"))?;
        self.net.unregister(NodeId(id));
        node.stop();
        Ok(())
    }

    fn node(&self, id: u64) -> Result<&Node, String> {
        self.nodes.get(&id).ok_or(format!("n{id} is not running"))
    }

    /// Waits (bounded) until every range of every running node knows its leader.
    async fn wait_leaders(&self) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for (id, n) in &self.nodes {
                let status = n
                    .multiraft
                    .send(GetRaftStatus)
                    .await
                    .map_err(|e| e.to_string())?;
                missing.extend(
                    status
                        .iter()
                        .filter(|s| s.leader.is_none())
                        .map(|s| format!("{} on n{id}", s.range)),
                );
            }
            if missing.is_empty() {
                return Ok(format!("in {} ms", start.elapsed().as_millis()));
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("no leader for {}", missing.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the replicas of each range on the running nodes hold the same
    /// data at the same applied index.
    async fn check_replicas(&self) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let mut by_range: BTreeMap<RangeId, BTreeSet<(u64, u64, u64)>> = BTreeMap::new();
            let mut differing = Vec::new();
            for (id, n) in &self.nodes {
                // Refused while a snapshot may be half installed: asked again below.
                let digests: Vec<RangeDigest> =
                    match n.store.send(GetDigest).await.map_err(|e| e.to_string())? {
                        Ok(digests) => digests,
                        Err(e) => {
                            differing.push(format!("n{id}: {e}"));
                            continue;
                        }
                    };
                for d in digests {
                    by_range
                        .entry(d.range)
                        .or_default()
                        .insert((d.applied_index, d.keys, d.hash));
                }
            }
            differing.extend(
                by_range
                    .iter()
                    .filter(|(_, set)| set.len() > 1)
                    .map(|(r, set)| format!("{r}: {set:?}")),
            );
            if differing.is_empty() {
                let keys: u64 = by_range
                    .values()
                    .filter_map(|s| s.iter().next())
                    .map(|(_, k, _)| k)
                    .sum();
                return Ok(format!("{} ranges identical, {keys} keys", by_range.len()));
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "replicas differ (applied, keys, hash): {}",
                    differing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ranges a change with `all` stands for: those `via` holds.
    async fn ranges_of(&self, via: u64, sel: &Ranges) -> Result<Vec<RangeId>, String> {
        Ok(match sel {
            Ranges::One(r) => vec![RangeId(*r)],
            Ranges::Named(s) if s == "all" => {
                let status = self
                    .node(via)?
                    .store
                    .send(GetStoreStatus)
                    .await
                    .map_err(|e| e.to_string())?;
                status.ranges.iter().map(|r| r.descriptor.id).collect()
            }
            Ranges::Named(s) => match RangeId::parse(s) {
                Some(r) => vec![r],
                None => return Err(format!("range {s:?} is neither a range nor \"all\"")),
            },
        })
    }
}

fn render(outcome: Result<CommandOutcome, StoreError>) -> Result<String, String> {
    match outcome {
        Ok(CommandOutcome::Ok) => Ok("OK".into()),
        Ok(CommandOutcome::NotSet) => Ok("(nil)".into()),
        Ok(CommandOutcome::Integer(n)) => Ok(n.to_string()),
        Ok(CommandOutcome::Error(e)) => Err(e),
        Ok(CommandOutcome::Value(v)) => {
            Ok(v.map_or("(nil)".into(), |v| String::from_utf8_lossy(&v).into_owned()))
        }
        Ok(CommandOutcome::Values(_) | CommandOutcome::Transaction(_)) => {
            Err("a scenario's steps run no transaction".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Compares a reply with the step's expectation.
fn judge(step: &Step, reply: Result<String, String>) -> Result<String, String> {
    match (&step.expect, &step.expect_error, reply) {
        (Some(want), _, Ok(got)) if &got != want => Err(format!("expected {want}, got {got}")),
        (_, Some(want), Ok(got)) => Err(format!("expected an error {want}..., got {got}")),
        (_, Some(want), Err(e)) if !e.starts_with(want.as_str()) => {
            Err(format!("expected an error {want}..., got {e}"))
        }
        (_, None, Err(e)) => Err(format!("unexpected error: {e}")),
        (_, _, Ok(got)) => Ok(got),
        (_, _, Err(e)) => Ok(format!("error as expected: {e}")),
    }
}

async fn run_step(c: &mut Cluster, step: &Step) -> Result<String, String> {
    let via = step.via.unwrap_or(1);
    if let Some(ids) = &step.start {
        for &id in ids {
            c.start(id)?;
        }
        return Ok(format!("{} nodes running", c.nodes.len()));
    }
    if let Some(id) = step.crash {
        c.crash(id)?;
        return Ok("stopped".into());
    }
    if let Some(id) = step.restart {
        c.start(id)?;
        return Ok("running".into());
    }
    if let Some(op) = client_op(step) {
        let store = c.node(via)?.store.clone();
        let deadline = Instant::now() + Duration::from_millis(step.within_ms.unwrap_or(0));
        loop {
            let reply = match &op {
                ClientOp::Write(command) => render(
                    store
                        .send(Write {
                            command: command.clone(),
                        })
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                ClientOp::Read(key) => store
                    .send(Read::new(vec![key.clone()]))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|mut v| match v.pop().flatten() {
                        Some(v) => String::from_utf8_lossy(&v.bytes).into_owned(),
                        None => "(nil)".into(),
                    })
                    .map_err(|e| e.to_string()),
            };
            // `within_ms`: a TRYAGAIN is retried until then (an election may be under way);
            // one whose outcome is unknown only for operations that may be repeated.
            let repeatable = step.set.is_some() || step.get.is_some();
            let again = matches!(&reply, Err(e) if e.starts_with("TRYAGAIN")
                && (repeatable || !e.contains("may or may not")));
            if again && Instant::now() < deadline && step.expect_error.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            return judge(step, reply);
        }
    }
    for (change, kind) in [
        (&step.add_replica, 0),
        (&step.remove_replica, 1),
        (&step.transfer_leader, 2),
    ] {
        let Some(change) = change else { continue };
        let store = c.node(via)?.store.clone();
        let node = NodeId(change.node);
        let mut results = Vec::new();
        for range in c.ranges_of(via, &change.range).await? {
            let r = match kind {
                0 => store.send(AddReplica { range, node }).await,
                1 => store.send(RemoveReplica { range, node }).await,
                _ => store.send(TransferLeader { range, to: node }).await,
            };
            results.push(match r.map_err(|e| e.to_string())? {
                Ok(()) => Ok("OK".to_string()),
                Err(e) => Err(format!("{range}: {e}")),
            });
        }
        let failures: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
        let reply = if failures.is_empty() {
            Ok("OK".to_string())
        } else {
            Err(failures.join("; "))
        };
        return judge(step, reply);
    }
    if let Some(key) = &step.split {
        let store = c.node(via)?.store.clone();
        let split = SplitRange {
            key: key.as_bytes().to_vec(),
        };
        let reply = store.send(split).await.map_err(|e| e.to_string())?;
        return judge(
            step,
            reply.map(|r| r.to_string()).map_err(|e| e.to_string()),
        );
    }
    if let Some(sides) = &step.partition {
        let ids = |s: &[u64]| s.iter().map(|&n| NodeId(n)).collect::<Vec<_>>();
        for (i, a) in sides.iter().enumerate() {
            for b in &sides[i + 1..] {
                c.net.partition(&ids(a), &ids(b));
            }
        }
        return Ok("partitioned".into());
    }
    if let Some([from, to]) = step.cut {
        c.net.cut_one_way(NodeId(from), NodeId(to));
        return Ok("cut".into());
    }
    if step.heal.is_some() {
        c.net.heal();
        c.net.set_drop_probability(0.0);
        c.net.set_max_delay(Duration::ZERO);
        return Ok("healed".into());
    }
    if let Some(p) = step.drop {
        c.net.set_drop_probability(p);
        return Ok(format!("dropping {:.0}% of batches", p * 100.0));
    }
    if let Some(ms) = step.delay_ms {
        c.net.set_max_delay(Duration::from_millis(ms));
        return Ok(format!("delaying batches up to {ms} ms"));
    }
    if step.wait_leaders.is_some() {
        return c.wait_leaders().await;
    }
    if step.check_replicas.is_some() {
        return c.check_replicas().await;
    }
    if let Some(r) = step.compact {
        for n in c.nodes.values() {
            // As far as the Store wrote what it applied: written first.
            let _ = n.store.send(WriteApplied).await;
            n.multiraft.do_send(CompactLog { range: RangeId(r) });
        }
        return Ok("compacted on every running node".into());
    }
    if let Some(load) = &step.start_load {
        if c.load.is_some() {
            return Err("a load is already running".into());
        }
        let stores = load
            .via
            .iter()
            .map(|&id| c.node(id).map(|n| n.store.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let prefixes = load.prefixes.clone();
        let stop = Rc::new(std::cell::Cell::new(false));
        let acked = Rc::new(RefCell::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let task = actix_rt::spawn(async move {
            let mut i = 0usize;
            let mut running = Vec::new();
            while !s.get() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                // Clients with at most 256 requests under way, like the server's connections.
                running.retain(|t: &actix_rt::task::JoinHandle<()>| !t.is_finished());
                if running.len() >= 256 {
                    continue;
                }
                let key = format!("{}{i}", prefixes[i % prefixes.len()]).into_bytes();
                let value = i.to_string().into_bytes();
                let store = stores[i % stores.len()].clone();
                let a = a.clone();
                running.push(actix_rt::spawn(async move {
                    let w = Write {
                        command: Command::Set {
                            key: key.clone(),
                            value: value.clone(),
                            condition: SetCondition::Always,
                        },
                    };
                    if let Ok(Ok(_)) = store.send(w).await {
                        a.borrow_mut().push((key, value));
                    }
                }));
                i += 1;
            }
            for t in running {
                let _ = t.await;
            }
        });
        c.load = Some(LoadRun { stop, acked, task });
        return Ok("load running".into());
    }
    if step.stop_load.is_some() {
        let load = c.load.take().ok_or("no load is running")?;
        load.stop.set(true);
        let _ = load.task.await;
        let acked = std::mem::take(&mut *load.acked.borrow_mut());
        if acked.is_empty() {
            return Err("no write of the load was acknowledged".into());
        }
        let keys: Vec<Vec<u8>> = acked.iter().map(|(k, _)| k.clone()).collect();
        for chunk in keys.chunks(200) {
            let got = c
                .node(via)?
                .store
                .send(Read::new(chunk.to_vec()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the load back: {e}"))?;
            for (k, v) in chunk.iter().zip(got) {
                let want = acked.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
                if v.map(|v| v.bytes) != want {
                    return Err(format!(
                        "acknowledged write of {} lost",
                        String::from_utf8_lossy(k)
                    ));
                }
            }
        }
        let mut line = format!("{} acknowledged writes all present", acked.len());
        if step.expect_held == Some(true) {
            let held: u64 = c
                .nodes
                .values()
                .map(|n| n.metrics.proposals_held.load(Ordering::Relaxed))
                .sum();
            let mut released = 0;
            for n in c.nodes.values() {
                released += n
                    .multiraft
                    .send(GetReleasedProposals)
                    .await
                    .map_err(|e| e.to_string())?
                    .len();
            }
            if held == 0 || released == 0 {
                return Err(format!(
                    "no proposal was held during a membership change ({held} held, {released} released)"
                ));
            }
            line.push_str(&format!(
                "; {held} proposals held, {released} released after their change"
            ));
        }
        return Ok(line);
    }
    if let Some(ms) = step.sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok("slept".into());
    }
    Err("a step needs an action".into())
}

/// Runs a scenario loaded from `path`, printing a line per step; `Err` says what went wrong.
pub fn run(path: &Path, scenario: Scenario) -> Result<(), String> {
    println!("{}: {}", path.display(), scenario.description.trim());
    let raft = RaftSettings {
        tick_interval: Duration::from_millis(scenario.tick_ms),
        log_compaction_entries: scenario
            .log_compaction_entries
            .unwrap_or(RaftSettings::default().log_compaction_entries),
        ..RaftSettings::default()
    };
    let store = StoreSettings {
        request_timeout: Duration::from_millis(scenario.request_timeout_ms),
        apply_delay: Duration::from_millis(scenario.apply_delay_ms),
        mailbox_capacity: scenario
            .store_mailbox
            .unwrap_or(StoreSettings::default().mailbox_capacity),
        admin_timeout: Duration::from_secs(20),
        range_max_bytes: scenario
            .range_max_bytes
            .unwrap_or(StoreSettings::default().range_max_bytes),
        ..StoreSettings::default()
    };
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let total = scenario.step.len();
    actix::System::new().block_on(async move {
        let mut cluster = Cluster {
            net: LocalNetwork::new(scenario.seed),
            nodes: BTreeMap::new(),
            dir,
            scenario_settings: (
                scenario
                    .split_keys
                    .iter()
                    .map(|k| k.as_bytes().to_vec())
                    .collect(),
                scenario
                    .initial_members
                    .iter()
                    .map(|&n| NodeId(n))
                    .collect(),
                raft,
                store,
            ),
            load: None,
        };
        let started = Instant::now();
        let mut outcome = Ok(());
        for (i, step) in scenario.step.iter().enumerate() {
            let what = step.describe().expect("checked at load");
            let t = Instant::now();
            match run_step(&mut cluster, step).await {
                Ok(result) => println!(
                    "[{:>2}/{total}] {what}: {result} ({} ms)",
                    i + 1,
                    t.elapsed().as_millis()
                ),
                Err(e) => {
                    println!("[{:>2}/{total}] {what}: FAILED", i + 1);
                    outcome = Err(format!("step {} ({what}): {e}", i + 1));
                    break;
                }
            }
        }
        if let Some(load) = cluster.load.take() {
            load.stop.set(true);
            let _ = load.task.await;
        }
        for (_, n) in std::mem::take(&mut cluster.nodes) {
            n.stop();
        }
        if outcome.is_ok() {
            println!("passed in {} ms", started.elapsed().as_millis());
        }
        outcome
    })
}
