//! `flotilla sim`: a deterministic simulation of a whole cluster, checked for linearizability.
//!
//! One seed drives everything: the cluster's shape (3 to 5 nodes, 8 ranges), concurrent
//! clients (`GET SET GETSET APPEND INCR DEL MGET` over keys of every range, transactions, and
//! transfers between keys sharing a hash tag, audited: `Bank`) and faults (message loss, delay,
//! reordering and duplication, symmetric and one-way partitions, node crashes (half of them
//! power failures, which lose the node's sled writes since its last sync) and restarts,
//! leadership transfers, log compactions that force snapshots, built while writes go on, as on
//! the builder thread). Every node runs on this one
//! thread under tokio's paused clock, so a simulated minute takes seconds; raft's elections use
//! timeouts drawn from the seed and every delay is a whole number of milliseconds (the timer's
//! resolution), so the same seed gives the same history, byte for byte.
//!
//! Checks: while it runs, at most one leader per term per range, applied ≤ committed, and no
//! proposal reaching raft while its range awaits a membership callback (contract 4); at the
//! end, after healing, the history of every key (a final read of each included) is
//! linearizable, a request whose outcome is unknown (a timeout) counting as either applied at
//! some point after it started or never, and every replica of every range holds exactly the
//! data those final reads returned: the model the history allows.

use flotilla_actors::command::{
    Command, CommandOutcome, ExpireCondition, SetCondition, SetExpiry, Watched,
};
use flotilla_actors::ids::{NodeId, RangeId};
use flotilla_actors::messages::{
    AddReplica, CompactLog, GetDigest, GetRaftStatus, GetStoreStatus, ProposeError, Read,
    RemoveReplica, SplitRange, StoreError, StoreStatus, TransferLeader, Write,
};
use flotilla_actors::multiraft::RaftSettings;
use flotilla_actors::node::{Node, NodeSettings};
use flotilla_actors::storage::{keys, Engine, RangeDescriptor};
use flotilla_actors::store::{data_hash, PlantedBugs, StoreSettings, WriteApplied};
use flotilla_actors::transport::LocalNetwork;
use flotilla_actors::value::{self, stored, Clock, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Keys the clients use: three per range.
const KEYS: usize = 24;
const CLIENTS: usize = 4;
/// A client gives up on a request after this long (its outcome is then unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys sharing a hash tag, so always in one range (ranges split among the simulation's own
/// keys, and as they grow): three balances and a log of the transfers between them, each a
/// transaction over all four (`Bank`).
const BANK: [&[u8]; 4] = [b"{bank}:a", b"{bank}:b", b"{bank}:c", b"{bank}:log"];

/// The transfers between the [`BANK`] balances, proposed as transactions, and what reads of
/// all four keys in one transaction must show: every transfer logged at most once, and the
/// balances what the transfers logged made them (each starts at none, zero).
#[derive(Default)]
struct Bank {
    /// Each transfer by its number: from which balance, to which, how much.
    transfers: HashMap<u64, (usize, usize, i64)>,
    /// Transfers answered, and audits made.
    answered: u64,
    audits: u64,
    /// What came of each, for the history.
    lines: String,
}

impl Bank {
    /// Transfer `n` of `amount` from balance `from` to `to`, logged as `n,`.
    fn transfer(&mut self, n: u64, from: usize, to: usize, amount: i64) -> Command {
        self.transfers.insert(n, (from, to, amount));
        let incr = |i: usize, delta| Command::IncrBy {
            key: BANK[i].to_vec(),
            delta,
        };
        Command::Multi {
            watched: vec![],
            commands: vec![
                incr(from, -amount),
                incr(to, amount),
                Command::Append {
                    key: BANK[3].to_vec(),
                    value: format!("{n},").into_bytes(),
                    limit: 1 << 20,
                },
            ],
        }
    }

    /// What is wrong with the stored values of the four keys, read together.
    fn audit(&mut self, stored: &[Option<Vec<u8>>]) -> Result<(), String> {
        let text = |i: usize| {
            let bytes = stored[i].as_deref().map(value::bytes).unwrap_or(b"");
            String::from_utf8_lossy(bytes).into_owned()
        };
        self.audits += 1;
        let mut expected = [0i64; 3];
        let mut seen = BTreeSet::new();
        for token in text(3).split(',').filter(|t| !t.is_empty()) {
            let n: u64 = token.parse().map_err(|_| format!("log entry {token:?}"))?;
            let &(from, to, amount) = (self.transfers.get(&n))
                .ok_or_else(|| format!("transfer {n} logged, never asked"))?;
            if !seen.insert(n) {
                return Err(format!("transfer {n} logged twice: {}", text(3)));
            }
            expected[from] -= amount;
            expected[to] += amount;
        }
        let balances: Vec<i64> = (0..3)
            .map(|i| {
                text(i)
                    .parse()
                    .unwrap_or(if stored[i].is_none() { 0 } else { i64::MIN })
            })
            .collect();
        if balances != expected {
            return Err(format!(
                "balances {balances:?}, but the {} transfers logged make {expected:?}",
                seen.len()
            ));
        }
        Ok(())
    }
}

/// Reads the [`BANK`] keys through `via` in one transaction: their stored values, or `None` if
/// the read did not come back.
async fn read_bank(world: &Rc<RefCell<World>>, via: u64) -> Option<Vec<Option<Vec<u8>>>> {
    let store = world.borrow().nodes.get(&via)?.store.clone();
    let command = Command::Multi {
        watched: vec![],
        commands: vec![Command::Read {
            keys: BANK.iter().map(|k| k.to_vec()).collect(),
        }],
    };
    let r = tokio::time::timeout(CLIENT_TIMEOUT, store.send(Write { command })).await;
    match r {
        Ok(Ok(Ok(CommandOutcome::Transaction(Some(mut outcomes))))) => match outcomes.pop() {
            Some(CommandOutcome::Values(values)) => Some(values),
            _ => None,
        },
        _ => None,
    }
}

/// What one seed's run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub simulated: Duration,
    pub operations: usize,
    pub unknown: usize,
    pub faults: BTreeMap<&'static str, u64>,
    /// Transfers of the bank answered, and audits of it (see `Bank`).
    pub bank: (u64, u64),
    pub violations: Vec<String>,
    /// Keys whose history had too many interleavings to check within the search budget.
    pub inconclusive: Vec<String>,
    /// The whole client history as text: the same seed gives the same text.
    pub history: String,
}

/// One client request and what came of it.
#[derive(Debug, Clone)]
struct Op {
    client: usize,
    key: Vec<u8>,
    kind: Kind,
    start: Duration,
    /// The event counter when it started and ended: the real-time order, finer than the
    /// clock (many operations share a millisecond under the paused clock).
    first: u64,
    last: Option<u64>,
    /// `None`: the outcome is unknown (the request timed out or its node crashed).
    end: Option<Duration>,
    result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Write(Command),
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Written(CommandOutcome),
    /// What a read found: the value's bytes and deadline.
    Value(Option<Value>),
    /// Refused before reaching the log: it had no effect.
    Refused,
    Unknown,
}

impl Op {
    /// The operation as one line of the history.
    fn line(&self) -> String {
        let end = self
            .end
            .map_or("?".to_string(), |e| format!("{:.3}", e.as_secs_f64()));
        format!(
            "{:.3} {end} c{} {} {:?} -> {:?}\n",
            self.start.as_secs_f64(),
            self.client,
            String::from_utf8_lossy(&self.key),
            self.kind,
            self.result
        )
    }
}

thread_local! {
    /// Counts the simulation's events (requests sent and answered), in the order they happen.
    static EVENTS: Cell<u64> = const { Cell::new(0) };
}

fn event() -> u64 {
    EVENTS.with(|e| {
        e.set(e.get() + 1);
        e.get()
    })
}

fn key(i: usize) -> Vec<u8> {
    format!("{i:02}").into_bytes()
}

/// Split keys giving ranges of three keys each.
fn split_keys() -> Vec<Vec<u8>> {
    (1..KEYS / 3).map(|r| key(r * 3)).collect()
}

struct World {
    net: LocalNetwork,
    nodes: BTreeMap<u64, Node>,
    down: BTreeSet<u64>,
    dir: tempfile::TempDir,
    seed: u64,
    count: u64,
    bugs: PlantedBugs,
    /// What the last fault did, for the timeline.
    detail: String,
    /// Draws which crashes are power failures: a stream of its own, so that the faults drawn
    /// stay those of the seed before power failures joined them.
    power_failures: StdRng,
    /// Every node's clock: virtual time, from the same fixed start on every run of a seed.
    clock: Clock,
}

impl World {
    fn settings(&self, id: u64) -> NodeSettings {
        NodeSettings {
            node: NodeId(id),
            data_dir: self.dir.path().join(format!("n{id}")),
            split_keys: split_keys(),
            initial_members: (1..=self.count).map(NodeId).collect(),
            cache_bytes: 8 << 20,
            durable: false,
            raft: RaftSettings {
                tick_interval: Duration::from_millis(10),
                election_ticks: 10,
                heartbeat_ticks: 2,
                log_compaction_entries: 40,
                election_seed: Some(self.seed),
                // Half the seeds with their entry caches over the budget: raft then reads back
                // from the log's files almost all it sends or checks.
                entry_cache_bytes: if (self.seed / 8).is_multiple_of(2) {
                    0
                } else {
                    RaftSettings::default().entry_cache_bytes
                },
                ..RaftSettings::default()
            },
            store: StoreSettings {
                request_timeout: Duration::from_secs(2),
                bugs: self.bugs,
                clock: self.clock.clone(),
                // A snapshot's build reads its range 25-200 ms after it was asked for and
                // finishes as long again later, while writes go on (see `generate_snapshot`).
                snapshot_build_delay: Duration::from_millis(25 * (1 + self.seed % 8)),
                // A quarter of the seeds with ranges bound to 12-27 bytes: they split as they
                // are written, until most hold a key or two.
                range_max_bytes: if self.seed % 4 == 3 {
                    12 + self.seed % 16
                } else {
                    StoreSettings::default().range_max_bytes
                },
                ..StoreSettings::default()
            },
        }
    }

    fn start(&mut self, id: u64) {
        let node =
            until_unlocked(|| Node::start_here(self.settings(id), Box::new(self.net.transport())))
                .unwrap_or_else(|e| panic!("simulated n{id} did not start: {e}"));
        self.net
            .register(NodeId(id), node.multiraft.clone().recipient());
        self.nodes.insert(id, node);
        self.down.remove(&id);
    }
}

/// The Stores of the running nodes, by node id (taken out of the world so that no borrow is
/// held across an await).
fn stores(world: &Rc<RefCell<World>>) -> Vec<(u64, actix::Addr<flotilla_actors::store::Store>)> {
    world
        .borrow()
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.store.clone()))
        .collect()
}

/// Stops a node's actors and waits until they have released its data directory; with
/// `power_failure`, its sled data then goes back to what it was at its last sync (see
/// `SyncedData`: the raft log is synced at the end of every round, which a crash here never
/// interrupts). The world is borrowed only between awaits: other tasks use it meanwhile.
async fn crash(world: &Rc<RefCell<World>>, id: u64, power_failure: bool) {
    let (node, dir) = {
        let mut w = world.borrow_mut();
        let Some(node) = w.nodes.remove(&id) else {
            return;
        };
        w.net.unregister(NodeId(id));
        w.down.insert(id);
        (node, w.settings(id).data_dir)
    };
    let synced = node.engine.synced_data();
    let engine = node.shut_down_here();
    while engine.upgrade().is_some() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if power_failure {
        until_unlocked(|| synced.restore(&dir))
            .unwrap_or_else(|e| panic!("simulated n{id}'s power failure: {e}"));
    }
}

/// Runs `f` until it does not fail for the lock of a sled database: sled's I/O threads may
/// hold a crashed node's lock a moment after it is dropped. Waits for them in real time, which
/// the simulation's clock does not see.
fn until_unlocked<T, E: std::fmt::Display>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if tries < 5_000 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done => return done,
        }
    }
}

/// Runs seeds `first..first + count`, a progress line each, then a summary; exits 1 (with the
/// command that replays it) at the first seed that finds a violation.
pub fn run_many(first: u64, count: u64, duration: Duration) -> std::process::ExitCode {
    let started = std::time::Instant::now();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (mut simulated, mut operations, mut unknown) = (Duration::ZERO, 0, 0);
    let mut inconclusive = 0;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (i, seed) in (first..first + count).enumerate() {
        let r = run(seed, duration);
        simulated += r.simulated;
        operations += r.operations;
        unknown += r.unknown;
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
        let verdict = match (r.violations.is_empty(), r.inconclusive.is_empty()) {
            (false, _) => "VIOLATION".to_string(),
            (true, true) => "ok".to_string(),
            (true, false) => format!("ok, {} keys inconclusive", r.inconclusive.len()),
        };
        inconclusive += r.inconclusive.len();
        let line = format!(
            "[{}/{count}] seed {seed}: {} nodes, {} operations ({} unknown), {} transfers and {} \
             audits, {} faults, {verdict}",
            i + 1,
            r.nodes,
            r.operations,
            r.unknown,
            r.bank.0,
            r.bank.1,
            r.faults.values().sum::<u64>(),
        );
        if terminal {
            // A bar redrawn in place; the last seed's line stays on screen.
            let done = (i + 1) * 30 / count as usize;
            print!(
                "\r[{}{}] {line}\x1b[K",
                "#".repeat(done),
                " ".repeat(30 - done)
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
            if i + 1 == count as usize || !r.violations.is_empty() {
                println!();
            }
        } else {
            println!("{line}");
        }
        if !r.violations.is_empty() {
            for v in &r.violations {
                println!("  {v}");
            }
            let path = std::env::temp_dir().join(format!("flotilla-sim-{seed}.history"));
            if std::fs::write(&path, &r.history).is_ok() {
                println!("history: {}", path.display());
            }
            println!(
                "replay: flotilla sim --seed {seed} --seeds 1 --duration {}",
                duration.as_secs()
            );
            return std::process::ExitCode::FAILURE;
        }
    }
    let real = started.elapsed();
    println!(
        "{count} seeds, {:.0} s simulated in {:.1} s ({:.1} seeds/min), {operations} operations ({unknown} unknown), faults: {faults:?}, violations: 0, keys inconclusive: {inconclusive}",
        simulated.as_secs_f64(),
        real.as_secs_f64(),
        count as f64 * 60.0 / real.as_secs_f64().max(1e-9),
    );
    std::process::ExitCode::SUCCESS
}

/// Runs one seed for `duration` of simulated time.
pub fn run(seed: u64, duration: Duration) -> Report {
    run_with_bugs(seed, duration, PlantedBugs::default())
}

/// Runs one seed with bugs planted in every node, to show the checks catch them. Any panic on
/// this thread is a violation (raft's own checks panic): a node's actors run as tasks, whose
/// panics the runtime catches, so a hook records them; one that ends the run (a node that does
/// not start) leaves no history.
pub fn run_with_bugs(seed: u64, duration: Duration, bugs: PlantedBugs) -> Report {
    record_panics();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let run = std::panic::catch_unwind(|| {
        let system = actix::System::new();
        system.block_on(simulate(seed, duration, bugs))
    });
    let panics = PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    let mut report = run.unwrap_or_else(|_| Report {
        seed,
        ..Report::default()
    });
    let found = std::mem::take(&mut report.violations);
    report.violations = panics;
    report.violations.extend(found);
    report
}

thread_local! {
    /// The panics on this thread while a simulation runs on it.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Installs, once, a panic hook that records a panic in `PANICS` (then does what the hook
/// before it did: print it).
fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    if let Some(p) = p.as_mut() {
                        p.push(info.to_string().replace('\n', " "));
                    }
                }
            });
            previous(info);
        }));
    });
}

async fn simulate(seed: u64, duration: Duration, bugs: PlantedBugs) -> Report {
    tokio::time::pause();
    EVENTS.with(|e| e.set(0));
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let count = rng.gen_range(3..=5u64);
    let world = Rc::new(RefCell::new(World {
        net: LocalNetwork::new(seed),
        nodes: BTreeMap::new(),
        down: BTreeSet::new(),
        // In memory where the system offers it (the simulation needs no disk).
        dir: tempfile::Builder::new()
            .prefix("flotilla-sim")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory"),
        seed,
        count,
        bugs,
        detail: String::new(),
        power_failures: StdRng::seed_from_u64(seed ^ 0x90E4_FA11),
        clock: Clock::starting_at(EPOCH_MS),
    }));
    for id in 1..=count {
        world.borrow_mut().start(id);
    }
    let mut report = Report {
        seed,
        nodes: count,
        ..Report::default()
    };
    let history: Rc<RefCell<Vec<Op>>> = Rc::new(RefCell::new(Vec::new()));
    let stop = Rc::new(Cell::new(false));
    let violations: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));

    // Clients.
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (world, history, stop) = (world.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ (0xC11E_0000 + c as u64));
        clients.push(actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                let (via, k) = next_request(&world, &mut rng, 1..30).await;
                n += 1;
                let kind = match rng.gen_range(0..12) {
                    0..=3 => Kind::Write(Command::Set {
                        key: k.clone(),
                        value: format!("c{c}.{n}").into_bytes(),
                        condition: SetCondition::Always,
                    }),
                    4 => Kind::Write(Command::IncrBy {
                        key: k.clone(),
                        delta: 1,
                    }),
                    5 => Kind::Write(Command::Delete {
                        keys: vec![k.clone()],
                    }),
                    // Answered with what they read when applied, and not idempotent.
                    6 => Kind::Write(Command::SetGet {
                        key: k.clone(),
                        value: format!("c{c}.{n}").into_bytes(),
                        condition: SetCondition::Always,
                    }),
                    7 => Kind::Write(Command::Append {
                        key: k.clone(),
                        value: format!("+c{c}.{n}").into_bytes(),
                        limit: 1 << 20,
                    }),
                    _ => Kind::Read,
                };
                let op = request(&world, via, c, k, kind, t0).await;
                history.borrow_mut().push(op);
            }
        }));
    }
    // Key expiry: deadlines 20-400 ms ahead, given, kept and dropped, which pass while the run
    // goes on (the ranges' leaders reap them through the log, every second).
    {
        let (world, history, stop) = (world.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0xE1E1);
        clients.push(actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                let (via, k) = next_request(&world, &mut rng, 5..40).await;
                n += 1;
                let now = world.borrow().clock.now_ms();
                let at = now + rng.gen_range(20..400);
                let value = format!("x{n}").into_bytes();
                let set = |condition, get, expiry| Command::SetExpiring {
                    key: k.clone(),
                    value: value.clone(),
                    condition,
                    get,
                    expiry,
                };
                let kind = match rng.gen_range(0..8) {
                    0 | 1 => set(SetCondition::Always, false, SetExpiry::At(at)),
                    2 => set(SetCondition::IfAbsent, true, SetExpiry::At(at)),
                    3 => set(SetCondition::IfPresent, false, SetExpiry::Keep),
                    4 => Command::Expire {
                        key: k.clone(),
                        // Now and then a deadline already past: a deletion.
                        at: Some(if rng.gen_bool(0.2) { now - 1 } else { at }),
                        condition: [
                            ExpireCondition::Always,
                            ExpireCondition::IfNone,
                            ExpireCondition::IfSome,
                            ExpireCondition::IfLater,
                            ExpireCondition::IfEarlier,
                            ExpireCondition::IfSomeAndEarlier,
                        ][rng.gen_range(0..6)],
                    },
                    5 => Command::Expire {
                        key: k.clone(),
                        at: None,
                        condition: ExpireCondition::Always,
                    },
                    6 => Command::GetEx {
                        key: k.clone(),
                        at: rng.gen_bool(0.7).then_some(at),
                    },
                    _ => Command::IncrBy {
                        key: k.clone(),
                        delta: 1,
                    },
                };
                let op = request(&world, via, CLIENTS + 2, k, Kind::Write(kind), t0).await;
                history.borrow_mut().push(op);
            }
        }));
    }
    // Transactions of one key: two or three commands applied as one entry, half of them
    // guarded by the value a read 20-200 ms before saw (`WATCH`), which aborts them if it
    // changed.
    {
        let (world, history, stop) = (world.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7A7A);
        clients.push(actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                let (via, k) = next_request(&world, &mut rng, 5..40).await;
                let mut watched = Vec::new();
                if rng.gen_bool(0.5) {
                    let op = request(&world, via, CLIENTS + 3, k.clone(), Kind::Read, t0).await;
                    if let Outcome::Value(v) = &op.result {
                        let seen = v.as_ref().map(|v| stored(&v.bytes, v.deadline));
                        watched.push(Watched::seen(k.clone(), seen.as_deref()));
                    }
                    history.borrow_mut().push(op);
                    // Time for other clients' writes to come between.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
                }
                let commands = (0..rng.gen_range(2..=3))
                    .map(|_| {
                        n += 1;
                        let value = format!("t{n}").into_bytes();
                        match rng.gen_range(0..5) {
                            0 => Command::Read {
                                keys: vec![k.clone()],
                            },
                            1 => Command::SetGet {
                                key: k.clone(),
                                value,
                                condition: SetCondition::Always,
                            },
                            2 => Command::IncrBy {
                                key: k.clone(),
                                delta: 1,
                            },
                            3 => Command::Append {
                                key: k.clone(),
                                value,
                                limit: 1 << 20,
                            },
                            _ => Command::Delete {
                                keys: vec![k.clone()],
                            },
                        }
                    })
                    .collect();
                let multi = Command::Multi { watched, commands };
                let op = request(&world, via, CLIENTS + 3, k, Kind::Write(multi), t0).await;
                history.borrow_mut().push(op);
            }
        }));
    }
    // FLUSHDB through a node now and then: every range the node holds emptied, each by one
    // entry. It is checked as a deletion of each key of those ranges, if the node held the
    // same ranges before and after; else (and if it failed: some ranges may have been emptied
    // and not others) as one that may or may not have happened.
    {
        let (world, history, stop) = (world.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0xF1F1);
        clients.push(actix_rt::spawn(async move {
            // The keys of the ranges the node holds (ranges split, the keys stay).
            let covered = |s: &StoreStatus| -> Vec<usize> {
                (0..KEYS)
                    .filter(|&i| s.ranges.iter().any(|r| r.descriptor.contains(&key(i))))
                    .collect()
            };
            while !stop.get() {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
                let up: Vec<u64> = world.borrow().nodes.keys().copied().collect();
                let store = world.borrow().nodes[&up[rng.gen_range(0..up.len())]]
                    .store
                    .clone();
                let Ok(before) = store.send(GetStoreStatus).await else {
                    continue;
                };
                let (start, first) = (t0.elapsed(), event());
                let flush = store.send(Write {
                    command: Command::Flush,
                });
                let r = tokio::time::timeout(CLIENT_TIMEOUT, flush).await;
                let done = match r {
                    Ok(Ok(Ok(outcome))) => Some((t0.elapsed(), event(), outcome)),
                    _ => None,
                };
                let after = store.send(GetStoreStatus).await;
                let done = done.filter(|_| after.is_ok_and(|a| covered(&a) == covered(&before)));
                for i in 0..KEYS {
                    let k = key(i);
                    if !before.ranges.iter().any(|r| r.descriptor.contains(&k)) {
                        continue;
                    }
                    history.borrow_mut().push(Op {
                        client: CLIENTS + 4,
                        key: k,
                        kind: Kind::Write(Command::Flush),
                        start,
                        end: done.as_ref().map(|d| d.0),
                        first,
                        last: done.as_ref().map(|d| d.1),
                        result: done
                            .as_ref()
                            .map_or(Outcome::Unknown, |d| Outcome::Written(d.2.clone())),
                    });
                }
            }
        }));
    }
    // MGET: several keys (of several ranges) read at once; each key's value is checked as a
    // read of that key.
    {
        let (world, history, stop) = (world.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 0x36E7);
        clients.push(actix_rt::spawn(async move {
            while !stop.get() {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
                let up: Vec<u64> = world.borrow().nodes.keys().copied().collect();
                let via = up[rng.gen_range(0..up.len())];
                let keys: Vec<Vec<u8>> = (0..3).map(|_| key(rng.gen_range(0..KEYS))).collect();
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let store = world.borrow().nodes[&via].store.clone();
                let start = t0.elapsed();
                let first = event();
                let r =
                    tokio::time::timeout(CLIENT_TIMEOUT, store.send(Read::new(keys.clone()))).await;
                if let Ok(Ok(Ok(values))) = r {
                    let end = Some(t0.elapsed());
                    let last = Some(event());
                    for (k, v) in keys.into_iter().zip(values) {
                        history.borrow_mut().push(Op {
                            client: CLIENTS,
                            key: k,
                            kind: Kind::Read,
                            start,
                            end,
                            first,
                            last,
                            result: Outcome::Value(v),
                        });
                    }
                }
            }
        }));
    }

    // Transfers between keys sharing a hash tag, and audits of them, each a transaction over
    // all of them: every audit must find the balances those logged make, each logged once. A
    // transaction over one tag is never refused for keys in two ranges.
    let bank = Rc::new(RefCell::new(Bank::default()));
    {
        let (world, stop, violations) = (world.clone(), stop.clone(), violations.clone());
        let bank = bank.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0xBA4C);
        clients.push(actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
                let up: Vec<u64> = world.borrow().nodes.keys().copied().collect();
                let via = up[rng.gen_range(0..up.len())];
                if rng.gen_bool(0.3) {
                    if let Some(stored) = read_bank(&world, via).await {
                        let at = t0.elapsed().as_secs_f64();
                        let log = stored[3].as_deref().map_or(0, |v| value::bytes(v).len());
                        let mut bank = bank.borrow_mut();
                        bank.lines += &format!("{at:.3} bank audit via n{via}: {log} log bytes\n");
                        if let Err(e) = bank.audit(&stored) {
                            violations.borrow_mut().push(format!("bank: {e}"));
                        }
                    }
                    continue;
                }
                n += 1;
                let from = rng.gen_range(0..3);
                let to = (from + rng.gen_range(1..3)) % 3;
                let command = bank
                    .borrow_mut()
                    .transfer(n, from, to, rng.gen_range(1..100));
                let store = world.borrow().nodes[&via].store.clone();
                let r = tokio::time::timeout(CLIENT_TIMEOUT, store.send(Write { command })).await;
                let at = t0.elapsed().as_secs_f64();
                let answer = match &r {
                    Ok(Ok(answer)) => format!("{answer:?}"),
                    _ => "unknown".to_string(),
                };
                let mut b = bank.borrow_mut();
                b.answered += u64::from(matches!(r, Ok(Ok(Ok(_)))));
                b.lines += &format!("{at:.3} bank transfer {n} via n{via}: {answer}\n");
                drop(b);
                match r {
                    Ok(Ok(Err(StoreError::CrossRange))) => violations
                        .borrow_mut()
                        .push(format!("bank: transfer {n} refused as over two ranges")),
                    Ok(Ok(Ok(CommandOutcome::Transaction(Some(outcomes)))))
                        if outcomes
                            .iter()
                            .any(|o| matches!(o, CommandOutcome::Error(_))) =>
                    {
                        violations
                            .borrow_mut()
                            .push(format!("bank: transfer {n} answered {outcomes:?}"))
                    }
                    _ => {}
                }
            }
        }));
    }

    // Invariants, sampled every 50 ms: one leader per term per range, applied <= committed, and
    // no proposal reached raft while its range awaited a membership callback (contract 4);
    // every 100 ms, that replicas of a range at the same applied index, whenever each got
    // there, hold the same data (a state machine applies the same entries the same way).
    let watcher = {
        let (world, stop, violations) = (world.clone(), stop.clone(), violations.clone());
        actix_rt::spawn(async move {
            let mut leaders: HashMap<(RangeId, u64), NodeId> = HashMap::new();
            let mut states: HashMap<(RangeId, u64), (u64, u64, u64)> = HashMap::new();
            let (mut samples, mut compared) = (0u64, 0u64);
            while !stop.get() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                samples += 1;
                if samples.is_multiple_of(2) {
                    for (id, store) in stores(&world) {
                        let Ok(Ok(digests)) = store.send(GetDigest).await else {
                            continue;
                        };
                        for d in digests {
                            let key = (d.range, d.applied_index);
                            compared += u64::from(states.contains_key(&key));
                            let (keys, hash, seen_on) =
                                *states.entry(key).or_insert((d.keys, d.hash, id));
                            if (keys, hash) != (d.keys, d.hash) {
                                violations.borrow_mut().push(format!(
                                    "{} at applied index {}: n{seen_on} held {keys} keys \
                                     (hash {hash:016x}), n{id} {} (hash {:016x})",
                                    d.range, d.applied_index, d.keys, d.hash
                                ));
                            }
                        }
                    }
                }
                let nodes: Vec<_> = world
                    .borrow()
                    .nodes
                    .iter()
                    .map(|(id, n)| (*id, n.multiraft.clone(), n.metrics.clone()))
                    .collect();
                for (id, addr, metrics) in nodes {
                    let not_held = metrics.proposals_not_held.swap(0, Ordering::Relaxed);
                    if not_held > 0 {
                        violations.borrow_mut().push(format!(
                            "n{id}: {not_held} proposals went to raft while their range awaited \
                             a membership change's callback"
                        ));
                    }
                    let Ok(status) = addr.send(GetRaftStatus).await else {
                        continue;
                    };
                    for s in status {
                        if s.applied > s.commit {
                            violations.borrow_mut().push(format!(
                                "n{id} {}: applied {} > committed {}",
                                s.range, s.applied, s.commit
                            ));
                        }
                        if s.leader == Some(NodeId(id)) {
                            let previous = leaders.entry((s.range, s.term)).or_insert(NodeId(id));
                            if *previous != NodeId(id) {
                                violations.borrow_mut().push(format!(
                                    "{} term {}: two leaders, {} and n{id}",
                                    s.range, s.term, previous
                                ));
                            }
                        }
                    }
                }
            }
            compared
        })
    };

    // Faults, until the end.
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut timeline: Vec<String> = Vec::new();
    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
        let at = t0.elapsed();
        let fault = inject(&world, &mut rng).await;
        *faults.entry(fault).or_default() += 1;
        let detail = std::mem::take(&mut world.borrow_mut().detail);
        timeline.push(format!("{:.3} fault {fault} {detail}\n", at.as_secs_f64()));
    }

    // Heal everything, bring every node back, and let the cluster settle.
    {
        let mut w = world.borrow_mut();
        w.net.heal();
        w.net.set_drop_probability(0.0);
        w.net.set_duplicate_probability(0.0);
        w.net.set_max_delay(Duration::ZERO);
        let down: Vec<u64> = w.down.iter().copied().collect();
        for id in down {
            w.start(id);
        }
    }
    stop.set(true);
    for c in clients {
        let _ = c.await;
    }
    if watcher.await.is_ok_and(|compared| compared == 0) && duration >= Duration::from_secs(5) {
        violations
            .borrow_mut()
            .push("no two replicas were ever compared at the same applied index".into());
    }
    report.simulated = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Final reads of every key: an acknowledged write that was lost shows up here.
    for i in 0..KEYS {
        let mut done = false;
        // Through each node in turn: a node no longer holding the key's range refuses it.
        for attempt in 0..20u64 {
            let op = request(
                &world,
                1 + (i as u64 + attempt) % count,
                CLIENTS + 1,
                key(i),
                Kind::Read,
                t0,
            )
            .await;
            if op.end.is_some() {
                history.borrow_mut().push(op);
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !done {
            violations
                .borrow_mut()
                .push(format!("key {i:02} could not be read after healing"));
        }
    }

    // The bank's keys, read together once more; they join the model below.
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut banked = None;
    for attempt in 0..20u64 {
        banked = read_bank(&world, 1 + attempt % count).await;
        if banked.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match banked {
        Some(stored) => {
            if let Err(e) = bank.borrow_mut().audit(&stored) {
                violations
                    .borrow_mut()
                    .push(format!("bank, after healing: {e}"));
            }
            for (k, v) in BANK.iter().zip(stored) {
                if let Some(v) = v {
                    model.insert(k.to_vec(), v);
                }
            }
        }
        None => (violations.borrow_mut()).push("the bank could not be read after healing".into()),
    }

    // Every replica of every range holds exactly the data the final reads returned (and
    // those, checked below, are what the history allows).
    for op in history.borrow().iter().filter(|o| o.client == CLIENTS + 1) {
        if let Outcome::Value(Some(v)) = &op.result {
            model.insert(op.key.clone(), stored(&v.bytes, v.deadline));
        }
    }
    // What a range's digest must be: that of the final reads of its span's keys.
    let expected = |d: &RangeDescriptor| {
        let pairs: Vec<flotilla_actors::storage::Pair> = (model.iter())
            .filter(|(k, _)| d.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (pairs.len() as u64, data_hash(&pairs))
    };
    let mut differing = Vec::new();
    for _ in 0..60 {
        differing.clear();
        for (id, store) in stores(&world) {
            let status = store.send(GetStoreStatus).await;
            match (status, store.send(GetDigest).await) {
                (Ok(status), Ok(Ok(digests))) => {
                    for d in digests {
                        let span = status.ranges.iter().find(|r| r.descriptor.id == d.range);
                        if span.map(|r| expected(&r.descriptor)) != Some((d.keys, d.hash)) {
                            differing.push(format!("{} on n{id}", d.range));
                        }
                    }
                }
                // Not settled (a snapshot half installed) or stopped: asked again.
                _ => differing.push(format!("n{id}'s digests")),
            }
        }
        if differing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !differing.is_empty() {
        violations.borrow_mut().push(format!(
            "after healing, replicas differ from the final reads: {}",
            differing.join(", ")
        ));
    }
    // A removed replica leaves nothing but its tombstone behind.
    for (id, node) in world.borrow().nodes.iter() {
        for (range, left) in leftovers(&node.engine) {
            violations.borrow_mut().push(format!(
                "n{id} keeps {left} key(s) of its removed replica of {range} besides the tombstone"
            ));
        }
    }

    let history = std::mem::take(&mut *history.borrow_mut());
    report.operations = history.len();
    report.unknown = history.iter().filter(|o| o.end.is_none()).count();
    report.history = timeline.concat() + &history.iter().map(Op::line).collect::<String>();
    let bank = std::mem::take(&mut *bank.borrow_mut());
    report.history += &bank.lines;
    report.bank = (bank.answered, bank.audits);
    report.faults = faults;
    let mut found = std::mem::take(&mut *violations.borrow_mut());
    let (not_linearizable, inconclusive) = check_linearizable(&history);
    found.extend(not_linearizable);
    report.violations = found;
    report.inconclusive = inconclusive;

    let nodes: Vec<u64> = world.borrow().nodes.keys().copied().collect();
    for id in nodes {
        crash(&world, id, false).await;
    }
    report
}

/// Sends one request and records it.
async fn request(
    world: &Rc<RefCell<World>>,
    via: u64,
    client: usize,
    key: Vec<u8>,
    kind: Kind,
    t0: Instant,
) -> Op {
    let store = world.borrow().nodes.get(&via).map(|n| n.store.clone());
    let start = t0.elapsed();
    let first = event();
    let mut op = Op {
        client,
        key: key.clone(),
        kind: kind.clone(),
        start,
        end: None,
        first,
        last: None,
        result: Outcome::Unknown,
    };
    let Some(store) = store else {
        return op;
    };
    match kind {
        Kind::Write(command) => {
            let r = tokio::time::timeout(CLIENT_TIMEOUT, store.send(Write { command })).await;
            match r {
                Ok(Ok(Ok(outcome))) => {
                    op.end = Some(t0.elapsed());
                    op.last = Some(event());
                    op.result = Outcome::Written(outcome);
                }
                // Refused before reaching the log, or skipped in it: it had no effect, and is
                // left out.
                Ok(Ok(Err(
                    StoreError::NoRange | StoreError::Overtaken(_) | StoreError::Unsent(_),
                )))
                | Ok(Ok(Err(StoreError::Refused(
                    ProposeError::Busy
                    | ProposeError::NoLeader(_)
                    | ProposeError::RangeNotFound(_)
                    | ProposeError::ChangeInProgress(_)
                    | ProposeError::InvalidChange(..),
                )))) => {
                    op.end = Some(t0.elapsed());
                    op.last = Some(event());
                    op.result = Outcome::Refused;
                }
                // A timeout, a removed range, a crashed node: it may or may not have applied.
                _ => {}
            }
        }
        Kind::Read => {
            let read = Read {
                keys: vec![key],
                client: client as u64 + 1,
            };
            let r = tokio::time::timeout(CLIENT_TIMEOUT, store.send(read)).await;
            if let Ok(Ok(Ok(mut values))) = r {
                op.end = Some(t0.elapsed());
                op.last = Some(event());
                op.result = Outcome::Value(values.pop().flatten());
            }
        }
    }
    op
}

/// Waits a pause in `pause` (ms), then picks a node that is up and a key: a client's next
/// request.
async fn next_request(
    world: &Rc<RefCell<World>>,
    rng: &mut StdRng,
    pause: std::ops::Range<u64>,
) -> (u64, Vec<u8>) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(pause))).await;
    let up: Vec<u64> = world.borrow().nodes.keys().copied().collect();
    let via = up[rng.gen_range(0..up.len())];
    (via, key(rng.gen_range(0..KEYS)))
}

/// Injects one fault chosen by `rng`; returns its name.
async fn inject(world: &Rc<RefCell<World>>, rng: &mut StdRng) -> &'static str {
    let (count, up, down): (u64, Vec<u64>, Vec<u64>) = {
        let w = world.borrow();
        (
            w.count,
            w.nodes.keys().copied().collect(),
            w.down.iter().copied().collect(),
        )
    };
    let any = |rng: &mut StdRng| 1 + rng.gen_range(0..count);
    match rng.gen_range(0..14) {
        0 => {
            let mut side: Vec<NodeId> = Vec::new();
            let mut rest: Vec<NodeId> = Vec::new();
            for id in 1..=count {
                if rng.gen_bool(0.4) {
                    side.push(NodeId(id));
                } else {
                    rest.push(NodeId(id));
                }
            }
            world.borrow().net.partition(&side, &rest);
            "partition"
        }
        1 => {
            let (a, b) = (any(rng), any(rng));
            world.borrow().net.cut_one_way(NodeId(a), NodeId(b));
            "one-way cut"
        }
        2 | 3 => {
            world.borrow().net.heal();
            "heal"
        }
        4 => {
            let p = [0.0, 0.05, 0.2][rng.gen_range(0..3)];
            world.borrow().net.set_drop_probability(p);
            "drop"
        }
        5 => {
            let ms = [0, 5, 40][rng.gen_range(0..3)];
            world.borrow().net.set_max_delay(Duration::from_millis(ms));
            "delay and reorder"
        }
        6 => {
            let p = [0.0, 0.1][rng.gen_range(0..2)];
            world.borrow().net.set_duplicate_probability(p);
            "duplicate"
        }
        7 => {
            // A minority at most is down at once.
            if (down.len() as u64 + 1) * 2 < count {
                let id = up[rng.gen_range(0..up.len())];
                world.borrow_mut().detail = format!("n{id}");
                let power_failure = world.borrow_mut().power_failures.gen_bool(0.5);
                if power_failure {
                    crash(world, id, true).await;
                    "power failure"
                } else {
                    crash(world, id, false).await;
                    "crash"
                }
            } else {
                let id = down[rng.gen_range(0..down.len())];
                world.borrow_mut().start(id);
                "restart"
            }
        }
        8 => match down.first() {
            Some(&id) => {
                world.borrow_mut().start(id);
                "restart"
            }
            None => "restart",
        },
        13 => {
            // A range cut in two at a key (not the first: it starts the key space), through
            // any node; it may or may not happen (the key may start a range already).
            let at = key(rng.gen_range(1..KEYS));
            let via = up[rng.gen_range(0..up.len())];
            let store = world.borrow().nodes[&via].store.clone();
            world.borrow_mut().detail = format!("at {} via n{via}", String::from_utf8_lossy(&at));
            actix_rt::spawn(async move {
                let _ = store.send(SplitRange { key: at }).await;
            });
            "split"
        }
        11 | 12 => {
            // A replica added to, or removed from, a range (as this node sees it); the request
            // runs on while the simulation goes on, and may or may not succeed.
            let via = up[rng.gen_range(0..up.len())];
            let Some(range) = any_range(world, via, rng).await else {
                return "membership change";
            };
            let store = world.borrow().nodes[&via].store.clone();
            let node = NodeId(any(rng));
            let Ok(status) = store.send(GetStoreStatus).await else {
                return "membership change";
            };
            let Some(d) = status.ranges.iter().find(|r| r.descriptor.id == range) else {
                return "membership change";
            };
            let d = &d.descriptor;
            // Half the time, a node the range lacks (if any) is added back.
            let missing: Vec<u64> = (1..=count)
                .filter(|&n| d.replica_of(NodeId(n)).is_none())
                .collect();
            let node = match missing.is_empty() || rng.gen_bool(0.5) {
                true => node,
                false => NodeId(missing[rng.gen_range(0..missing.len())]),
            };
            if d.replica_of(node).is_none() {
                world.borrow_mut().detail = format!("{range} {node} via n{via}");
                actix_rt::spawn(async move {
                    let _ = store.send(AddReplica { range, node }).await;
                });
                "replica added"
            } else if d.voters.len() > 1 {
                world.borrow_mut().detail = format!("{range} {node} via n{via}");
                actix_rt::spawn(async move {
                    let _ = store.send(RemoveReplica { range, node }).await;
                });
                "replica removed"
            } else {
                "membership change"
            }
        }
        9 => {
            let to = NodeId(any(rng));
            let via = up[rng.gen_range(0..up.len())];
            let Some(range) = any_range(world, via, rng).await else {
                return "leadership transfer";
            };
            let store = world.borrow().nodes[&via].store.clone();
            // The answer is not awaited: the transfer may or may not happen.
            actix_rt::spawn(async move {
                let _ = store.send(TransferLeader { range, to }).await;
            });
            "leadership transfer"
        }
        _ => {
            let via = up[rng.gen_range(0..up.len())];
            let Some(range) = any_range(world, via, rng).await else {
                return "log compaction";
            };
            // A log is compacted as far as its Store wrote what it applied: written first.
            let nodes: Vec<_> = world
                .borrow()
                .nodes
                .values()
                .map(|n| (n.store.clone(), n.multiraft.clone()))
                .collect();
            for (store, multiraft) in nodes {
                let _ = store.send(WriteApplied).await;
                multiraft.do_send(CompactLog { range });
            }
            "log compaction"
        }
    }
}

/// One of the ranges node `via` holds, chosen by `rng` (none if it stopped meanwhile).
async fn any_range(world: &Rc<RefCell<World>>, via: u64, rng: &mut StdRng) -> Option<RangeId> {
    let store = world.borrow().nodes.get(&via)?.store.clone();
    let status = store.send(GetStoreStatus).await.ok()?;
    let ranges: Vec<RangeId> = status.ranges.iter().map(|r| r.descriptor.id).collect();
    (!ranges.is_empty()).then(|| ranges[rng.gen_range(0..ranges.len())])
}

/// The ranges whose replica here was removed (a tombstone, no descriptor) and still hold
/// other keys than their tombstone, with how many.
fn leftovers(engine: &Engine) -> Vec<(RangeId, usize)> {
    let tombstones = engine.tombstones().expect("a simulation engine reads");
    tombstones
        .keys()
        .filter(|&&range| matches!(engine.descriptor(range), Ok(None)))
        .filter_map(|&range| {
            let keys = engine.tree().scan_prefix(keys::range_prefix(range)).count();
            (keys > 1).then_some((range, keys - 1))
        })
        .collect()
}

/// The simulation's clock at its start (every node's: see `World::clock`).
const EPOCH_MS: u64 = 1_767_225_600_000;

/// The times at which `o` may have been served or proposed (by the clock of the simulation,
/// which reads `EPOCH_MS` plus the milliseconds since its start) that can make a difference
/// to it, given the register's stored value: the ends of its window, and where in it the
/// value's deadline or the command's own passes.
fn times(o: &Op, stored: Option<&[u8]>) -> BTreeSet<u64> {
    let (from, to) = (
        EPOCH_MS + o.start.as_millis() as u64,
        o.end.map_or(u64::MAX, |e| EPOCH_MS + e.as_millis() as u64),
    );
    let mut edges = vec![from, to];
    if let Some(d) = stored.and_then(value::deadline) {
        edges.extend([d, d.saturating_add(1)]);
    }
    if let Kind::Write(Command::Expire { at: Some(at), .. } | Command::GetEx { at: Some(at), .. }) =
        &o.kind
    {
        edges.extend([at.saturating_sub(1), *at]);
    }
    if let Kind::Write(Command::SetExpiring {
        expiry: SetExpiry::At(at),
        ..
    }) = &o.kind
    {
        edges.extend([*at, at.saturating_add(1)]);
    }
    edges
        .into_iter()
        .filter(|t| (from..=to).contains(t))
        .collect()
}

/// Checks the history of every key against a single register applying the same commands.
/// The violations, and the keys whose check was inconclusive.
fn check_linearizable(history: &[Op]) -> (Vec<String>, Vec<String>) {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    let (mut violations, mut inconclusive) = (Vec::new(), Vec::new());
    for (key, ops) in by_key {
        let key = String::from_utf8_lossy(key).into_owned();
        match linearizable(&ops) {
            Ok(Verdict::Linearizable) => {}
            Ok(Verdict::Inconclusive) => inconclusive.push(key),
            Err(e) => violations.push(format!("key {key}: not linearizable: {e}")),
        }
    }
    (violations, inconclusive)
}

/// What the search for a linearization concluded.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    /// Too many interleavings to try within the search budget: neither proved nor refuted.
    Inconclusive,
}

/// Whether some order of `ops` consistent with real time explains every result (Wing & Gong's
/// search, memoised on the set of operations done and the register's value). An operation
/// whose outcome is unknown may take effect at any point after it started, or never.
fn linearizable(ops: &[&Op]) -> Result<Verdict, String> {
    // Refused requests and reads whose result is unknown say nothing.
    let ops: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.result != Outcome::Refused && !(o.kind == Kind::Read && o.end.is_none()))
        .collect();
    let n = ops.len();
    let end = |o: &Op| o.last.unwrap_or(u64::MAX);
    // The register holds the value stored (its deadline with it).
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    let mut budget = 2_000_000u64;
    // Depth-first: (done set, value).
    let mut stack: Vec<(Vec<u64>, Option<Vec<u8>>)> = vec![(vec![0; n.div_ceil(64)], None)];
    let mut deepest = 0;
    while let Some((done, value)) = stack.pop() {
        let remaining: Vec<usize> = (0..n)
            .filter(|&i| done[i / 64] >> (i % 64) & 1 == 0)
            .collect();
        let definite_left = remaining.iter().any(|&i| ops[i].end.is_some());
        if !definite_left {
            return Ok(Verdict::Linearizable);
        }
        deepest = deepest.max(n - remaining.len());
        if budget == 0 {
            return Ok(Verdict::Inconclusive);
        }
        budget -= 1;
        // The earliest end among the remaining: anything started after it cannot go first.
        let horizon = remaining
            .iter()
            .map(|&i| end(ops[i]))
            .min()
            .unwrap_or(u64::MAX);
        for &i in &remaining {
            let o = ops[i];
            if o.first > horizon {
                continue;
            }
            let mut next = done.clone();
            next[i / 64] |= 1 << (i % 64);
            // Whether a value has expired depends on the time the node that served the read
            // or proposed the command took: some time in the operation's window. Each time at
            // which the outcome can differ is tried.
            let afters: Vec<Option<Vec<u8>>> = times(o, value.as_deref())
                .into_iter()
                .filter_map(|now| match (&o.kind, &o.result) {
                    (Kind::Read, Outcome::Value(v)) => {
                        let read = value.clone().and_then(|s| Value::at(s, || now));
                        (v == &read).then(|| value.clone())
                    }
                    // Deletes the key, whatever it held (the Store lists the range's keys).
                    (Kind::Write(Command::Flush), result) => {
                        let ok = match result {
                            Outcome::Written(w) => w == &CommandOutcome::Ok,
                            _ => true,
                        };
                        ok.then_some(None)
                    }
                    (Kind::Write(c), result) => {
                        let applied = c.clone().clocked(|| now).apply(|_| value.clone());
                        let ok = match result {
                            Outcome::Written(w) => w == &applied.outcome,
                            _ => true,
                        };
                        ok.then(|| {
                            applied
                                .writes
                                .into_iter()
                                .next()
                                .map_or(value.clone(), |(_, v)| v)
                        })
                    }
                    _ => None,
                })
                .collect();
            for after in afters {
                if seen.insert((next.clone(), after.clone())) {
                    stack.push((next.clone(), after));
                }
            }
            // An unknown write may also never take effect.
            if o.end.is_none() && seen.insert((next.clone(), value.clone())) {
                stack.push((next, value.clone()));
            }
        }
    }
    Err(format!(
        "no order explains the {n} operations (at most {deepest} could be placed)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An audit finds the balances the logged transfers make, and catches a transfer applied
    /// in part, twice, or never asked.
    #[test]
    fn a_bank_audit_catches_a_transfer_applied_in_part_or_twice() {
        let mut bank = Bank::default();
        bank.transfer(1, 0, 1, 5);
        bank.transfer(2, 1, 2, 7);
        let at = |a: &str, b: &str, c: &str, log: &str| -> Vec<Option<Vec<u8>>> {
            let v = |s: &str| (!s.is_empty()).then(|| stored(s.as_bytes(), None));
            vec![v(a), v(b), v(c), v(log)]
        };
        assert_eq!(bank.audit(&at("", "", "", "")), Ok(()));
        assert_eq!(bank.audit(&at("-5", "-2", "7", "1,2,")), Ok(()));
        assert_eq!(bank.audit(&at("-5", "5", "", "1,")), Ok(()));
        let err = |r: Result<(), String>| r.unwrap_err();
        assert!(err(bank.audit(&at("-5", "5", "", ""))).contains("balances [-5, 5, 0]"));
        assert!(err(bank.audit(&at("-5", "-2", "", "1,2,"))).contains("make [-5, -2, 7]"));
        assert!(err(bank.audit(&at("-10", "10", "", "1,1,"))).contains("logged twice"));
        assert!(err(bank.audit(&at("", "", "", "3,"))).contains("never asked"));
        assert_eq!(bank.audits, 7);
    }

    fn op(start: u64, end: Option<u64>, kind: Kind, result: Outcome) -> Op {
        Op {
            client: 0,
            key: b"k".to_vec(),
            kind,
            start: Duration::from_millis(start),
            end: end.map(Duration::from_millis),
            first: start,
            last: end,
            result,
        }
    }

    fn set(v: &str) -> Kind {
        Kind::Write(Command::Set {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
            condition: SetCondition::Always,
        })
    }

    fn read(v: Option<&str>) -> Outcome {
        Outcome::Value(v.map(|v| Value {
            bytes: v.as_bytes().to_vec(),
            deadline: None,
        }))
    }

    #[test]
    fn the_checker_accepts_real_time_orders_and_refuses_stale_reads() {
        let ok = Outcome::Written(CommandOutcome::Ok);
        // Concurrent write and read: either order explains it.
        let h = [
            op(0, Some(10), set("a"), ok.clone()),
            op(5, Some(6), Kind::Read, read(None)),
        ];
        assert_eq!(
            linearizable(&h.iter().collect::<Vec<_>>()),
            Ok(Verdict::Linearizable)
        );
        // A read that starts after the write finished must see it.
        let stale = [
            op(0, Some(10), set("a"), ok.clone()),
            op(11, Some(12), Kind::Read, read(None)),
        ];
        assert!(linearizable(&stale.iter().collect::<Vec<_>>()).is_err());
        // A write whose outcome is unknown may have happened...
        let maybe = [
            op(0, None, set("a"), Outcome::Unknown),
            op(20, Some(21), Kind::Read, read(Some("a"))),
            op(30, Some(31), Kind::Read, read(Some("a"))),
        ];
        assert_eq!(
            linearizable(&maybe.iter().collect::<Vec<_>>()),
            Ok(Verdict::Linearizable)
        );
        // ...or not, but not both.
        let flip = [
            op(0, None, set("a"), Outcome::Unknown),
            op(20, Some(21), Kind::Read, read(Some("a"))),
            op(30, Some(31), Kind::Read, read(None)),
        ];
        assert!(linearizable(&flip.iter().collect::<Vec<_>>()).is_err());
        // An INCR that counts one more than was ever added.
        let incr = |n| {
            (
                Kind::Write(Command::IncrBy {
                    key: b"k".to_vec(),
                    delta: 1,
                }),
                Outcome::Written(CommandOutcome::Integer(n)),
            )
        };
        let (k1, r1) = incr(1);
        let (k3, r3) = incr(3);
        let twice = [op(0, Some(1), k1, r1), op(2, Some(3), k3, r3)];
        assert!(linearizable(&twice.iter().collect::<Vec<_>>()).is_err());
    }
}
