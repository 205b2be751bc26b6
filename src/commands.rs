//! The client commands: each parses its arguments, runs (locally, or through the Store), and
//! renders its RESP2 reply with Redis's shapes and error prefixes.

use crate::config::Config;
use crate::resp::reply;
use actix::{Addr, MailboxError};
use bytes::{Bytes, BytesMut};
use flotilla_actors::command::{
    parse_integer, Command, CommandOutcome, ExpireCondition, SetCondition,
};
use flotilla_actors::messages::{GetStoreStatus, Read, StoreError, Write};
use flotilla_actors::multiraft::{MultiRaft, RaftMetrics};
use flotilla_actors::storage::Engine;
use flotilla_actors::store::{HandOverApplied, HandOverSettled, HandedOver, Store};
use flotilla_actors::value::{Clock, Value};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub mod clients;
mod expiry;
pub mod scan;
mod transaction;

/// What every session of a node shares.
pub struct Shared {
    pub store: Addr<Store>,
    /// For counting keys (`DBSIZE`, `INFO`), a full scan done off the Store's thread, one at a
    /// time (`counting`).
    pub engine: Arc<Engine>,
    pub counting: tokio::sync::Semaphore,
    pub multiraft: Addr<MultiRaft>,
    pub metrics: Arc<RaftMetrics>,
    pub config: Config,
    /// Which of the configured peers are connected now.
    pub peers: crate::peers::Reachability,
    pub client_addr: SocketAddr,
    pub started: Instant,
    pub clients: AtomicUsize,
    /// Clients refused whose connections are still open (see `server::MAX_REFUSED`).
    pub refusing: AtomicUsize,
    pub next_client_id: AtomicU64,
    /// Every client connection, for `CLIENT LIST` and `CLIENT KILL`.
    pub connections: clients::Connections,
    /// `SCAN`'s cursors, of every connection.
    pub cursors: std::sync::Mutex<scan::Cursors>,
    /// The Store's clock, which turns a time to live into a deadline (see
    /// `flotilla_actors::value`).
    pub clock: Clock,
}

/// The number of keys on this node, and of those with a deadline: a scan of every key, on a
/// blocking thread so that neither the Store nor the clients sharing its thread wait for it.
/// `settled` (`DBSIZE`): once every range has applied a read index taken now, so that the
/// count has every write answered before, through any node (a `FLUSHALL` through another
/// node included); else (`INFO`) as this node has applied them.
async fn count_keys(shared: Arc<Shared>, settled: bool) -> Result<(usize, usize), String> {
    let failed = |e: &dyn std::fmt::Display| format!("ERR counting keys failed: {e}");
    // Every write answered before is in sled, not only in the Store's memory (the Store does
    // not wait for it: a `FLUSHDB`'s deletion may take seconds); the ranges this node holds,
    // not those whose replica here is removed and whose keys are being deleted. The read
    // indexes first, together for every client asking: the turn below is for the scan only.
    let handed = match settled {
        true => shared
            .store
            .send(HandOverSettled)
            .await
            .map(|h| h.map_err(|e| e.to_string())),
        false => shared.store.send(HandOverApplied).await.map(Ok),
    };
    let HandedOver { ranges, written } = handed.map_err(|e| failed(&e))??;
    // One scan at a time, whatever the number of clients asking.
    let _turn = shared.counting.acquire().await.map_err(|e| failed(&e))?;
    let engine = shared.engine.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(written) = written {
            written.recv().map_err(|e| failed(&e))?;
        }
        engine.count_user_keys(&ranges).map_err(|e| failed(&e))
    })
    .await
    .map_err(|e| failed(&e))?
}

/// A reply, and whether the connection closes after it.
pub struct Reply {
    pub bytes: BytesMut,
    pub close: bool,
}

/// A reply that may still be on its way.
pub type PendingReply = Pin<Box<dyn Future<Output = Reply>>>;

fn now(f: impl FnOnce(&mut BytesMut)) -> PendingReply {
    let mut out = BytesMut::new();
    f(&mut out);
    Box::pin(std::future::ready(Reply {
        bytes: out,
        close: false,
    }))
}

/// An error reply; `msg` may hold a client's bytes as they came (see [`reply::error`]).
fn err(msg: impl Into<Vec<u8>>) -> PendingReply {
    let msg = msg.into();
    now(move |out| reply::error(out, &msg))
}

fn store_failure(out: &mut BytesMut, e: StoreError) {
    reply::error(out, e.to_string());
}

fn mailbox_failure(out: &mut BytesMut, _: MailboxError) {
    reply::error(out, "ERR node is shutting down");
}

/// One entry of the command table.
struct Spec {
    name: &'static str,
    /// Redis convention: `n` exactly n arguments (name included), `-n` at least n.
    arity: i32,
    flags: &'static [&'static str],
    first_key: i32,
    last_key: i32,
    step: i32,
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const WRITE: &[&str] = &["write"];
const READ: &[&str] = &["readonly"];
const FAST: &[&str] = &["fast"];

/// Every command flotilla serves (what `COMMAND` lists).
const COMMANDS: &[Spec] = &[
    spec("get", 2, READ, (1, 1, 1)),
    spec("set", -3, WRITE, (1, 1, 1)),
    spec("setnx", 3, WRITE, (1, 1, 1)),
    spec("getset", 3, WRITE, (1, 1, 1)),
    spec("getdel", 2, WRITE, (1, 1, 1)),
    spec("getex", -2, WRITE, (1, 1, 1)),
    spec("setex", 4, WRITE, (1, 1, 1)),
    spec("psetex", 4, WRITE, (1, 1, 1)),
    spec("expire", -3, WRITE, (1, 1, 1)),
    spec("pexpire", -3, WRITE, (1, 1, 1)),
    spec("expireat", -3, WRITE, (1, 1, 1)),
    spec("pexpireat", -3, WRITE, (1, 1, 1)),
    spec("persist", 2, WRITE, (1, 1, 1)),
    spec("ttl", 2, READ, (1, 1, 1)),
    spec("pttl", 2, READ, (1, 1, 1)),
    spec("expiretime", 2, READ, (1, 1, 1)),
    spec("pexpiretime", 2, READ, (1, 1, 1)),
    spec("append", 3, WRITE, (1, 1, 1)),
    spec("strlen", 2, READ, (1, 1, 1)),
    spec("getrange", 4, READ, (1, 1, 1)),
    spec("substr", 4, READ, (1, 1, 1)),
    spec("del", -2, WRITE, (1, -1, 1)),
    spec("unlink", -2, WRITE, (1, -1, 1)),
    spec("exists", -2, READ, (1, -1, 1)),
    spec("touch", -2, READ, (1, -1, 1)),
    spec("type", 2, READ, (1, 1, 1)),
    spec("mget", -2, READ, (1, -1, 1)),
    spec("mset", -3, WRITE, (1, -1, 2)),
    spec("msetnx", -3, WRITE, (1, -1, 2)),
    spec("rename", 3, WRITE, (1, 2, 1)),
    spec("renamenx", 3, WRITE, (1, 2, 1)),
    spec("incr", 2, WRITE, (1, 1, 1)),
    spec("incrby", 3, WRITE, (1, 1, 1)),
    spec("decr", 2, WRITE, (1, 1, 1)),
    spec("decrby", 3, WRITE, (1, 1, 1)),
    spec("scan", -2, READ, NO_KEYS),
    spec("keys", 2, READ, NO_KEYS),
    spec("dbsize", 1, READ, NO_KEYS),
    spec("flushdb", -1, WRITE, NO_KEYS),
    spec("flushall", -1, WRITE, NO_KEYS),
    spec("ping", -1, FAST, NO_KEYS),
    spec("echo", 2, FAST, NO_KEYS),
    spec("time", 1, FAST, NO_KEYS),
    spec("quit", -1, FAST, NO_KEYS),
    spec("auth", -2, FAST, NO_KEYS),
    spec("hello", -1, FAST, NO_KEYS),
    spec("select", 2, FAST, NO_KEYS),
    spec("info", -1, READ, NO_KEYS),
    spec("command", -1, READ, NO_KEYS),
    spec("client", -2, FAST, NO_KEYS),
    spec("config", -2, READ, NO_KEYS),
    spec("flotilla", -2, READ, NO_KEYS),
    spec("multi", 1, FAST, NO_KEYS),
    spec("exec", 1, WRITE, NO_KEYS),
    spec("discard", 1, FAST, NO_KEYS),
    spec("watch", -2, READ, (1, -1, 1)),
    spec("unwatch", 1, FAST, NO_KEYS),
    spec("memory", -2, READ, (2, 2, 1)),
    spec("object", -2, READ, (2, 2, 1)),
];

/// The command named `name`, in any case.
fn lookup(name: &[u8]) -> Option<&'static Spec> {
    find(name).map(|(_, s)| s)
}

/// The command named `name` (any case), and its index in the table.
fn find(name: &[u8]) -> Option<(usize, &'static Spec)> {
    COMMANDS
        .iter()
        .enumerate()
        .find(|(_, s)| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Arguments of a command, as a connection hands them over (for the tests of the commands).
#[cfg(test)]
pub(crate) fn test_args(a: &[&str]) -> Vec<Bytes> {
    a.iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

/// The name of the command at `index` in the table.
fn command_name(index: usize) -> Option<&'static str> {
    COMMANDS.get(index).map(|s| s.name)
}

fn render_spec(out: &mut BytesMut, s: &Spec) {
    reply::array_header(out, 6);
    reply::bulk(out, s.name.as_bytes());
    reply::integer(out, s.arity.into());
    reply::array_header(out, s.flags.len());
    for f in s.flags {
        reply::simple(out, f);
    }
    reply::integer(out, s.first_key.into());
    reply::integer(out, s.last_key.into());
    reply::integer(out, s.step.into());
}

/// One client connection's state.
pub struct Session {
    shared: Arc<Shared>,
    /// Its id, peer and name, as `CLIENT LIST` shows them.
    conn: Arc<clients::Connection>,
    authenticated: bool,
    order: Rc<Order>,
    /// The transaction `MULTI` opened, until `EXEC` or `DISCARD`.
    multi: Option<transaction::Transaction>,
    /// The keys `WATCH`ed, until `EXEC`, `DISCARD` or `UNWATCH`.
    watched: transaction::Watches,
    /// While `EXEC` runs its queued commands: the data commands, collected instead of run.
    collecting: RefCell<Option<Vec<transaction::Collected>>>,
}

/// What [`Session::sequenced`] needs to know of the commands under way on a connection.
#[derive(Default)]
struct Order {
    /// Commands queued that have not reached the Store yet.
    undispatched: Cell<usize>,
    /// Writes started and not yet answered.
    writes: Cell<usize>,
    /// Reads (and other commands that are not writes) started and not yet answered.
    reads: Cell<usize>,
}

impl Order {
    /// The commands of this kind started and not yet answered.
    fn under_way(&self, is_write: bool) -> &Cell<usize> {
        match is_write {
            true => &self.writes,
            false => &self.reads,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.connections.close(self.conn.id);
    }
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, local: SocketAddr) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let authenticated = shared.config.password.is_none();
        let conn = shared.connections.open(id, peer, local);
        Session {
            shared,
            conn,
            authenticated,
            order: Rc::new(Order::default()),
            multi: None,
            watched: transaction::Watches::default(),
            collecting: RefCell::new(None),
        }
    }

    /// What `CLIENT KILL` ends the connection by (see [`clients::Connection::killed`]).
    pub fn connection(&self) -> Arc<clients::Connection> {
        self.conn.clone()
    }

    /// Runs one command. Replies come back in the order commands were given, whatever order
    /// they finish in: the connection awaits them in order.
    pub fn execute(&mut self, args: Vec<Bytes>) -> PendingReply {
        let reply = self.run(args);
        self.conn.set_multi(self.multi.as_ref().map(|t| t.len()));
        reply
    }

    fn run(&mut self, mut args: Vec<Bytes>) -> PendingReply {
        let Some((index, spec)) = find(&args[0]) else {
            return self.refused(None, unknown_command(&args));
        };
        self.conn.touch(index);
        let name = spec.name;
        let n = args.len() as i32;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            let msg = format!("ERR wrong number of arguments for '{name}' command");
            return self.refused(Some(name), msg);
        }
        if !self.authenticated && !matches!(name, "auth" | "hello" | "quit") {
            let msg = "NOAUTH Authentication required.".to_string();
            return match name {
                "exec" => self.refused(Some(name), msg),
                _ => err(msg),
            };
        }
        if self.in_multi() || matches!(name, "multi" | "exec" | "discard" | "watch" | "unwatch") {
            if let Some(reply) = self.transactional(spec, &mut args) {
                return reply;
            }
        }
        self.dispatch(name, &args[1..])
    }

    /// Runs the command `name` (as the table spells it) with arguments `a`.
    fn dispatch(&mut self, name: &'static str, a: &[Bytes]) -> PendingReply {
        match name {
            "get" => self.get(&a[0]),
            "mget" => self.read(a.iter().map(|k| k.to_vec()).collect(), |out, vs| {
                reply::array_header(out, vs.len());
                for v in vs {
                    reply::optional_bulk(out, v.map(|v| v.bytes).as_deref());
                }
            }),
            "exists" | "touch" => {
                // Each key read once, counted as often as it is named.
                let mut named: BTreeMap<&[u8], i64> = BTreeMap::new();
                for k in a {
                    *named.entry(k.as_ref()).or_default() += 1;
                }
                let times: Vec<i64> = named.values().copied().collect();
                let keys = named.into_keys().map(<[u8]>::to_vec).collect();
                self.read(keys, move |out, vs| {
                    let live = vs.iter().zip(&times).filter(|(v, _)| v.is_some());
                    reply::integer(out, live.map(|(_, n)| n).sum())
                })
            }
            "set" => self.write_parsed(expiry::parse_set(a, || self.shared.clock.now_ms())),
            "setex" | "psetex" => {
                self.write_parsed(expiry::parse_setex(name, a, || self.shared.clock.now_ms()))
            }
            "getex" => match expiry::parse_getex(a, || self.shared.clock.now_ms()) {
                Ok(Some(Ok(cmd))) => self.write(cmd),
                Ok(None) => self.get(&a[0]),
                // A time that is not valid: nil for a key that does not exist, as Redis has it.
                Ok(Some(Err(e))) => self.read(vec![a[0].to_vec()], move |out, v| match v[0] {
                    None => reply::null(out),
                    Some(_) => reply::error(out, &e),
                }),
                Err(e) => err(e),
            },
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                self.write_parsed(expiry::parse_expire(name, a, || self.shared.clock.now_ms()))
            }
            "persist" => self.write(Command::Expire {
                key: a[0].to_vec(),
                at: None,
                condition: ExpireCondition::Always,
            }),
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                let clock = self.shared.clock.clone();
                self.read(vec![a[0].to_vec()], move |out, v| {
                    reply::integer(out, expiry::ttl(name, v[0].as_ref(), clock.now_ms()))
                })
            }
            "setnx" => self.write_with(
                Command::Set {
                    key: a[0].to_vec(),
                    value: a[1].to_vec(),
                    condition: SetCondition::IfAbsent,
                },
                |out, outcome| match outcome {
                    CommandOutcome::Ok => reply::integer(out, 1),
                    CommandOutcome::NotSet => reply::integer(out, 0),
                    other => render_outcome(out, other),
                },
            ),
            "getset" => self.write(Command::SetGet {
                key: a[0].to_vec(),
                value: a[1].to_vec(),
                condition: SetCondition::Always,
            }),
            "getdel" => self.write(Command::GetDel { key: a[0].to_vec() }),
            "append" => self.write(Command::Append {
                key: a[0].to_vec(),
                value: a[1].to_vec(),
                limit: self.shared.config.max_value_bytes as u64,
            }),
            "strlen" => self.read(vec![a[0].to_vec()], |out, v| {
                reply::integer(out, v[0].as_ref().map_or(0, |v| v.bytes.len()) as i64)
            }),
            "getrange" | "substr" => match (parse_integer(&a[1]), parse_integer(&a[2])) {
                (Some(start), Some(end)) => self.read(vec![a[0].to_vec()], move |out, v| {
                    let value = v[0].as_ref().map_or(&[][..], |v| &v.bytes);
                    reply::bulk(out, substring(value, start, end))
                }),
                _ => err("ERR value is not an integer or out of range"),
            },
            "type" => self.read(vec![a[0].to_vec()], |out, v| {
                reply::simple(out, if v[0].is_some() { "string" } else { "none" })
            }),
            // `EXEC` runs a queued `UNWATCH`; it unwatched everything already.
            "unwatch" => now(|out| reply::simple(out, "OK")),
            "del" | "unlink" => self.write(Command::Delete {
                keys: a.iter().map(|k| k.to_vec()).collect(),
            }),
            "mset" | "msetnx" => {
                if !a.len().is_multiple_of(2) {
                    return err(format!(
                        "ERR wrong number of arguments for '{name}' command"
                    ));
                }
                let pairs = a
                    .chunks(2)
                    .map(|p| (p[0].to_vec(), p[1].to_vec()))
                    .collect();
                self.write(match name {
                    "mset" => Command::MSet { pairs },
                    _ => Command::MSetNx { pairs },
                })
            }
            "rename" | "renamenx" => self.write(Command::Rename {
                from: a[0].to_vec(),
                to: a[1].to_vec(),
                nx: name == "renamenx",
            }),
            "incr" | "decr" => self.write(Command::IncrBy {
                key: a[0].to_vec(),
                delta: if name == "incr" { 1 } else { -1 },
            }),
            "incrby" | "decrby" => match parse_integer(&a[1]) {
                Some(d) if name == "incrby" => self.write(Command::IncrBy {
                    key: a[0].to_vec(),
                    delta: d,
                }),
                Some(d) => match d.checked_neg() {
                    Some(d) => self.write(Command::IncrBy {
                        key: a[0].to_vec(),
                        delta: d,
                    }),
                    None => err("ERR decrement would overflow"),
                },
                None => err("ERR value is not an integer or out of range"),
            },
            // ASYNC and SYNC alike answer once it is done.
            "flushdb" | "flushall" => {
                let mode =
                    |m: &Bytes| [b"async".as_slice(), b"sync"].contains(&&*m.to_ascii_lowercase());
                match a.len() <= 1 && a.iter().all(mode) {
                    true => self.write(Command::Flush),
                    false => err("ERR syntax error"),
                }
            }
            "scan" => self.scan(a),
            "keys" => self.keys(&a[0]),
            "dbsize" => {
                let shared = self.shared.clone();
                self.in_turn(async move {
                    let mut out = BytesMut::new();
                    match count_keys(shared, true).await {
                        Ok((n, _)) => reply::integer(&mut out, n as i64),
                        Err(e) => reply::error(&mut out, &e),
                    }
                    Reply {
                        bytes: out,
                        close: false,
                    }
                })
            }
            "ping" => match a.first() {
                None => now(|out| reply::simple(out, "PONG")),
                Some(m) if a.len() == 1 => {
                    let m = m.clone();
                    now(move |out| reply::bulk(out, &m))
                }
                Some(_) => err("ERR wrong number of arguments for 'ping' command"),
            },
            // The node's clock (which keeps up with the fastest of the cluster's, see
            // `Clock`), to the millisecond: seconds and microseconds, as Redis answers.
            "time" => {
                let ms = self.shared.clock.now_ms();
                now(move |out| {
                    reply::array_header(out, 2);
                    reply::bulk(out, (ms / 1000).to_string().as_bytes());
                    reply::bulk(out, (ms % 1000 * 1000).to_string().as_bytes());
                })
            }
            "echo" => {
                let m = a[0].clone();
                now(move |out| reply::bulk(out, &m))
            }
            "quit" => {
                let mut out = BytesMut::new();
                reply::simple(&mut out, "OK");
                Box::pin(std::future::ready(Reply {
                    bytes: out,
                    close: true,
                }))
            }
            "auth" => match a {
                // The default user needs no password when none is set, as in Redis.
                [user, _]
                    if user.as_ref() == b"default" && self.shared.config.password.is_none() =>
                {
                    now(|out| reply::simple(out, "OK"))
                }
                [pass] | [_, pass] if a.len() == 1 || a[0].as_ref() == b"default" => {
                    self.auth(pass)
                }
                [_, _] => err("WRONGPASS invalid username-password pair or user is disabled."),
                _ => err("ERR syntax error"),
            },
            "hello" => self.hello(a),
            "select" => match parse_integer(&a[0]) {
                Some(0) => now(|out| reply::simple(out, "OK")),
                Some(n) if i32::try_from(n).is_err() => {
                    err("ERR value is out of range, value must between -2147483648 and 2147483647")
                }
                Some(_) => err("ERR DB index is out of range"),
                None => err("ERR value is not an integer or out of range"),
            },
            "info" => self.info(a),
            "command" => command_command(a),
            "client" => self.client(a),
            "config" => match bad_subcommand("config", a) {
                Some(e) => err(e),
                None if a[0].eq_ignore_ascii_case(b"help") => help(CONFIG_HELP),
                None if a[0].eq_ignore_ascii_case(b"get") => {
                    let pairs = config_get(&self.shared, &a[1..]);
                    now(move |out| {
                        reply::array_header(out, 2 * pairs.len());
                        for (name, value) in &pairs {
                            reply::bulk(out, name.as_bytes());
                            reply::bulk(out, value.as_bytes());
                        }
                    })
                }
                None => err(format!(
                    "ERR CONFIG {} is not supported: flotilla's settings are in its config file",
                    String::from_utf8_lossy(&a[0]).to_ascii_uppercase()
                )),
            },
            "flotilla" => self.admin(a),
            "memory" => self.memory(a),
            "object" => self.object(a),
            _ => unreachable!("every command in the table has a branch"),
        }
    }

    /// Starts a data command now if that cannot change what this connection observes, or else
    /// once every earlier command of the connection has been answered.
    ///
    /// # Ordering within a connection
    ///
    /// Pipelined commands must behave as if run one after the other. A write may start at
    /// once when every earlier command has already reached the Store and no read of the
    /// connection is still under way: the Store proposes in arrival order, so the log keeps the
    /// connection's order, and an earlier read has its value already (a read waiting for its
    /// read index is served once the Store has applied the entries handed over with it, which
    /// may include this write's). A read may start at once when every earlier command has
    /// reached the Store and no write of the connection is still under way, so it sees every
    /// earlier write. Anything else waits its turn.
    ///
    /// `start` is given the Store's address: borrowed when it runs at once, so that a request
    /// costs no clone of it.
    fn sequenced<F>(
        &self,
        is_write: bool,
        start: impl FnOnce(&Addr<Store>) -> F + 'static,
    ) -> PendingReply
    where
        F: Future<Output = Reply> + 'static,
    {
        self.sequenced_as(is_write, true, start)
    }

    /// [`Session::sequenced`], which starts the command only once every earlier command has
    /// been answered unless `may_start_now`.
    fn sequenced_as<F>(
        &self,
        is_write: bool,
        may_start_now: bool,
        start: impl FnOnce(&Addr<Store>) -> F + 'static,
    ) -> PendingReply
    where
        F: Future<Output = Reply> + 'static,
    {
        let order = self.order.clone();
        let now =
            may_start_now && order.undispatched.get() == 0 && order.under_way(!is_write).get() == 0;
        let under_way = order.under_way(is_write);
        under_way.set(under_way.get() + 1);
        if now {
            let running = start(&self.shared.store);
            return Box::pin(async move {
                let reply = running.await;
                let under_way = order.under_way(is_write);
                under_way.set(under_way.get() - 1);
                reply
            });
        }
        order.undispatched.set(order.undispatched.get() + 1);
        let shared = self.shared.clone();
        Box::pin(async move {
            order.undispatched.set(order.undispatched.get() - 1);
            let reply = start(&shared.store).await;
            let under_way = order.under_way(is_write);
            under_way.set(under_way.get() - 1);
            reply
        })
    }

    /// A command that runs once every earlier command has been answered.
    fn in_turn(&self, run: impl Future<Output = Reply> + 'static) -> PendingReply {
        self.sequenced(false, move |_| run)
    }

    fn write(&self, command: Command) -> PendingReply {
        self.write_with(command, render_outcome)
    }

    fn write_with(
        &self,
        command: Command,
        render: impl FnOnce(&mut BytesMut, CommandOutcome) + 'static,
    ) -> PendingReply {
        if self.collecting() {
            return self.collect(command, render);
        }
        self.sequenced(true, move |store| {
            // `send` enqueues at once; only the answer is awaited.
            let request = store.send(Write { command });
            async move {
                let mut out = BytesMut::new();
                match request.await {
                    Ok(Ok(outcome)) => render(&mut out, outcome),
                    Ok(Err(e)) => store_failure(&mut out, e),
                    Err(e) => mailbox_failure(&mut out, e),
                }
                Reply {
                    bytes: out,
                    close: false,
                }
            }
        })
    }

    fn read(
        &self,
        keys: Vec<Vec<u8>>,
        render: impl FnOnce(&mut BytesMut, Vec<Option<Value>>) + 'static,
    ) -> PendingReply {
        if self.collecting() {
            return self.collect_read(keys, render);
        }
        let client = self.conn.id;
        self.sequenced(false, move |store| {
            let request = store.send(Read { keys, client });
            async move {
                let mut out = BytesMut::new();
                match request.await {
                    Ok(Ok(values)) => render(&mut out, values),
                    Ok(Err(e)) => store_failure(&mut out, e),
                    Err(e) => mailbox_failure(&mut out, e),
                }
                Reply {
                    bytes: out,
                    close: false,
                }
            }
        })
    }

    fn get(&self, key: &[u8]) -> PendingReply {
        self.read(vec![key.to_vec()], |out, mut v| {
            reply::optional_bulk(out, v.remove(0).map(|v| v.bytes).as_deref())
        })
    }

    fn write_parsed(&self, command: Result<Command, impl Into<Vec<u8>>>) -> PendingReply {
        match command {
            Ok(command) => self.write(command),
            Err(e) => err(e),
        }
    }

    fn auth(&mut self, pass: &[u8]) -> PendingReply {
        match &self.shared.config.password {
            None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            Some(p) if p.as_bytes() == pass => {
                self.authenticated = true;
                now(|out| reply::simple(out, "OK"))
            }
            Some(_) => err("WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    fn hello(&mut self, a: &[Bytes]) -> PendingReply {
        let mut rest = a;
        if let Some(v) = rest.first() {
            match parse_integer(v) {
                Some(2) => {}
                Some(3) => return err("NOPROTO this server speaks RESP2 only"),
                Some(_) => return err("NOPROTO unsupported protocol version"),
                None => return err("ERR Protocol version is not an integer or out of range"),
            }
            rest = &rest[1..];
        }
        // Redis's order: the options (a name checked as it is read), then the password, then
        // the name.
        let (mut auth, mut name) = (None, None);
        while let Some(option) = rest.first() {
            match (option.to_ascii_lowercase().as_slice(), rest.len()) {
                (b"auth", n) if n >= 3 => {
                    auth = Some((&rest[1], &rest[2]));
                    rest = &rest[3..];
                }
                (b"setname", n) if n >= 2 => {
                    if let Err(e) = valid_client_name(&rest[1]) {
                        return err(e);
                    }
                    name = Some(&rest[1]);
                    rest = &rest[2..];
                }
                _ => {
                    let mut msg = b"ERR Syntax error in HELLO option '".to_vec();
                    msg.extend_from_slice(option);
                    msg.push(b'\'');
                    return err(msg);
                }
            }
        }
        if !self.authenticated && auth.is_none() {
            return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        if let Some((user, pass)) = auth {
            let wrong = "WRONGPASS invalid username-password pair or user is disabled.";
            if user.as_ref() != b"default" {
                return err(wrong);
            }
            match &self.shared.config.password {
                Some(p) if p.as_bytes() == pass.as_ref() => self.authenticated = true,
                None => {}
                Some(_) => return err(wrong),
            }
        }
        if let Some(name) = name {
            self.conn.set_name((!name.is_empty()).then(|| name.clone()));
        }
        let id = self.conn.id;
        now(move |out| {
            reply::array_header(out, 14);
            reply::bulk(out, b"server");
            reply::bulk(out, b"flotilla");
            reply::bulk(out, b"version");
            reply::bulk(out, REDIS_VERSION.as_bytes());
            reply::bulk(out, b"proto");
            reply::integer(out, 2);
            reply::bulk(out, b"id");
            reply::integer(out, id as i64);
            reply::bulk(out, b"mode");
            reply::bulk(out, b"standalone");
            reply::bulk(out, b"role");
            reply::bulk(out, b"master");
            reply::bulk(out, b"modules");
            reply::array_header(out, 0);
        })
    }

    /// `CLIENT LIST [TYPE t] [ID id ...]`: a line for each connection the filter picks.
    fn client_list(&self, filter: &[Bytes]) -> PendingReply {
        let filter = match clients::Filter::list(filter) {
            Ok(f) => f,
            Err(e) => return err(e),
        };
        let mut text = String::new();
        for c in self.shared.connections.all() {
            if filter.picks(&c, self.conn.id) {
                text.push_str(&c.line(command_name));
                text.push('\n');
            }
        }
        now(move |out| reply::bulk(out, text.as_bytes()))
    }

    /// `CLIENT KILL addr:port` (`+OK`, or an error if none has that address), or `CLIENT KILL
    /// <filter> <value> ...` (how many it ended): each connection picked reads nothing more
    /// and closes once its replies are out; the asking one too with `SKIPME no`, after this
    /// reply.
    fn client_kill(&self, a: &[Bytes]) -> PendingReply {
        let (filter, old_form) = match a {
            [addr] => {
                let addr = [Bytes::from_static(b"addr"), addr.clone()];
                let mut f = clients::Filter::kill(&addr).expect("a pair");
                f.skip_me = false;
                (f, true)
            }
            _ => match clients::Filter::kill(a) {
                Ok(f) => (f, false),
                Err(e) => return err(e),
            },
        };
        let (mut killed, mut myself) = (0, false);
        for c in self.shared.connections.all() {
            if filter.picks(&c, self.conn.id) {
                match c.id == self.conn.id {
                    // After this reply, as Redis closes a client that kills itself.
                    true => myself = true,
                    false => c.kill(),
                }
                killed += 1;
            }
        }
        let mut out = BytesMut::new();
        match (old_form, killed) {
            (true, 0) => return err("ERR No such client"),
            (true, _) => reply::simple(&mut out, "OK"),
            (false, n) => reply::integer(&mut out, n),
        }
        if myself {
            self.conn.close_after_reply();
        }
        Box::pin(std::future::ready(Reply {
            bytes: out,
            close: myself,
        }))
    }

    fn client(&mut self, a: &[Bytes]) -> PendingReply {
        let sub = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
        match (sub.as_str(), a.len()) {
            ("setname", 2) => {
                if let Err(e) = valid_client_name(&a[1]) {
                    return err(e);
                }
                self.conn.set_name((!a[1].is_empty()).then(|| a[1].clone()));
                now(|out| reply::simple(out, "OK"))
            }
            ("getname", 1) => {
                let name = self.conn.name();
                now(move |out| reply::optional_bulk(out, name.as_deref()))
            }
            ("id", 1) => {
                let id = self.conn.id as i64;
                now(move |out| reply::integer(out, id))
            }
            ("no-evict", 2) | ("no-touch", 2) => {
                match [&b"on"[..], b"off"]
                    .iter()
                    .any(|v| a[1].eq_ignore_ascii_case(v))
                {
                    true => now(|out| reply::simple(out, "OK")),
                    false => err("ERR syntax error"),
                }
            }
            // Redis 7.2's: the client library's name and version, which flotilla does not show.
            ("setinfo", 3) => {
                let attribute = a[1].to_ascii_lowercase();
                if attribute != b"lib-name" && attribute != b"lib-ver" {
                    let mut msg = b"ERR Unrecognized option '".to_vec();
                    msg.extend_from_slice(&a[1]);
                    msg.push(b'\'');
                    return err(msg);
                }
                if a[2].iter().any(|b| *b < b'!' || *b > b'~') {
                    return err(format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        String::from_utf8_lossy(&a[1])
                    ));
                }
                now(|out| reply::simple(out, "OK"))
            }
            ("info", 1) => {
                let line = self.conn.line(command_name) + "\n";
                now(move |out| reply::bulk(out, line.as_bytes()))
            }
            ("list", _) => self.client_list(&a[1..]),
            ("kill", n) if n >= 2 => self.client_kill(&a[1..]),
            ("help", 1) => help(CLIENT_HELP),
            _ => subcommand_error(
                "client",
                a,
                &[
                    "id", "info", "kill", "setname", "getname", "setinfo", "no-evict", "no-touch",
                    "help",
                ],
            ),
        }
    }

    /// `INFO [section ...]`: the sections named (any case), in their order here; all of them
    /// with none named, or `all`, `default` or `everything`; an empty text for none known, as
    /// Redis answers. The keys are counted only for `# Keyspace`.
    fn info(&self, a: &[Bytes]) -> PendingReply {
        let shared = self.shared.clone();
        let named: Vec<String> = a
            .iter()
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
            .collect();
        let all = named.is_empty()
            || named
                .iter()
                .any(|n| matches!(n.as_str(), "all" | "default" | "everything"));
        let wanted = move |section: &str| all || named.iter().any(|n| n == section);
        self.in_turn(async move {
            let mut out = BytesMut::new();
            let status = match shared.store.send(GetStoreStatus).await {
                Ok(s) => s,
                Err(e) => {
                    mailbox_failure(&mut out, e);
                    return Reply {
                        bytes: out,
                        close: false,
                    };
                }
            };
            // A count that fails shows as 0 here; DBSIZE reports the error.
            let (keys, expiring) = match wanted("keyspace") {
                true => count_keys(shared.clone(), false).await.unwrap_or((0, 0)),
                false => (0, 0),
            };
            let leading = status
                .ranges
                .iter()
                .filter(|r| r.leader == Some(status.node))
                .count();
            let m = &shared.metrics;
            let cached = shared.engine.entries_cached();
            let rss = resident_bytes();
            let text = format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nflotilla_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n\
                 # Clients\r\nconnected_clients:{}\r\n\r\n\
                 # Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n\r\n\
                 # Persistence\r\nloading:0\r\naof_enabled:1\r\n\r\n\
                 # Replication\r\nrole:master\r\n\r\n\
                 # Flotilla\r\nnode_id:{}\r\nranges:{}\r\nranges_led:{}\r\napplied_commands:{}\r\nraft_rounds:{}\r\nraft_syncs:{}\r\nproposals_held:{}\r\nproposals_busy:{}\r\nevents_deferred:{}\r\nsnapshots_sent:{}\r\nsnapshots_installed:{}\r\nlog_compactions:{}\r\nraft_log_entries:{}\r\nraft_log_entries_read:{}\r\nraft_entries_cached:{}\r\nraft_entry_cache_bytes:{}\r\nlearners_promoted:{}\r\nranges_split:{}\r\nranges_measured:{}\r\nranges_quiescent:{}\r\npeers_connected:{}\r\npeer_restarts:{}\r\nreads_leased:{}\r\n\r\n\
                 # Keyspace\r\ndb0:keys={},expires={},avg_ttl=0\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                shared.client_addr.port(),
                shared.started.elapsed().as_secs(),
                shared.clients.load(Ordering::Relaxed),
                status.node.0,
                status.ranges.len(),
                leading,
                status.applied_commands,
                m.rounds.load(Ordering::Relaxed),
                m.syncs.load(Ordering::Relaxed),
                m.proposals_held.load(Ordering::Relaxed),
                m.proposals_busy.load(Ordering::Relaxed),
                m.events_deferred.load(Ordering::Relaxed),
                m.snapshots_sent.load(Ordering::Relaxed),
                m.snapshots_installed.load(Ordering::Relaxed),
                m.log_compactions.load(Ordering::Relaxed),
                m.log_entries.load(Ordering::Relaxed),
                shared.engine.entries_read(),
                cached.0,
                cached.1,
                m.learners_promoted.load(Ordering::Relaxed),
                status.ranges_split,
                status.ranges_measured,
                m.ranges_quiescent.load(Ordering::Relaxed),
                shared.peers.count(),
                m.peer_restarts.load(Ordering::Relaxed),
                m.reads_leased.load(Ordering::Relaxed),
                keys,
                expiring,
            );
            let sections: Vec<&str> = text
                .split("\r\n\r\n")
                .map(|section| section.trim_end_matches("\r\n"))
                .filter(|section| {
                    let name = section.lines().next().unwrap_or_default();
                    wanted(&name.trim_start_matches("# ").to_ascii_lowercase())
                })
                .collect();
            let mut text = sections.join("\r\n\r\n");
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            reply::bulk(&mut out, text.as_bytes());
            Reply {
                bytes: out,
                close: false,
            }
        })
    }

    /// `FLOTILLA ...` (see [`crate::admin`]).
    fn admin(&self, a: &[Bytes]) -> PendingReply {
        self.in_turn(crate::admin::run(self.shared.clone(), a.to_vec()))
    }

    /// `MEMORY USAGE key [SAMPLES count]`: the bytes of the key and its stored value (a tag
    /// byte, the deadline's 8 if it has one, the value), as a range's size counts them
    /// (`SAMPLES` is taken and changes nothing: every value is one string); `MEMORY HELP`.
    fn memory(&mut self, a: &[Bytes]) -> PendingReply {
        if let Some(e) = bad_subcommand("memory", a) {
            return err(e);
        }
        if a[0].eq_ignore_ascii_case(b"help") {
            return help(MEMORY_HELP);
        }
        match a {
            [_, _] => {}
            [_, _, option, count] if option.eq_ignore_ascii_case(b"samples") => {
                match parse_integer(count) {
                    Some(n) if n >= 0 => {}
                    Some(_) => return err("ERR syntax error"),
                    None => return err("ERR value is not an integer or out of range"),
                }
            }
            _ => return err("ERR syntax error"),
        }
        let key = a[1].len();
        self.read(vec![a[1].to_vec()], move |out, v| match &v[0] {
            Some(v) => reply::integer(out, (key + v.stored_len()) as i64),
            None => reply::null(out),
        })
    }

    /// `OBJECT ENCODING|REFCOUNT|FREQ|IDLETIME key` and `OBJECT HELP`: reads, as linearizable
    /// as `GET`, answering nil for a key that does not exist, as Redis does.
    fn object(&mut self, a: &[Bytes]) -> PendingReply {
        if let Some(e) = bad_subcommand("object", a) {
            return err(e);
        }
        let sub = a[0].to_ascii_lowercase();
        if sub == b"help" {
            return help(OBJECT_HELP);
        }
        self.read(vec![a[1].to_vec()], move |out, v| {
            let Some(v) = &v[0] else {
                return reply::null(out);
            };
            match sub.as_slice() {
                b"encoding" => reply::bulk(out, redis_encoding(&v.bytes).as_bytes()),
                b"refcount" => reply::integer(out, 1),
                // As Redis answers under its `noeviction` policy, which flotilla's is.
                b"freq" => reply::error(
                    out,
                    "ERR An LFU maxmemory policy is not selected, access frequency not \
                     tracked. Please note that when switching between policies at runtime LRU \
                     and LFU data will take some time to adjust.",
                ),
                _ => reply::error(out, "ERR flotilla does not track when keys were last used"),
            }
        })
    }
}

/// Redis's answer to an unknown command: its name and its first arguments, cut to 128 bytes
/// each and all (a command of a megabyte gets no megabyte back).
fn unknown_command(args: &[Bytes]) -> Vec<u8> {
    let mut shown = Vec::new();
    for a in &args[1..] {
        if shown.len() >= CUT {
            break;
        }
        shown.push(b'\'');
        shown.extend_from_slice(&a[..a.len().min(CUT - (shown.len() - 1))]);
        shown.extend_from_slice(b"' ");
    }
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(cut(&args[0]));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&shown);
    msg
}

/// A client's name (`CLIENT SETNAME`, `HELLO ... SETNAME`) as Redis takes it: printable ASCII
/// without spaces (it is a field of `CLIENT LIST`'s lines), or empty for none.
fn valid_client_name(name: &[u8]) -> Result<(), &'static str> {
    match name.iter().any(|b| *b <= b' ' || *b > b'~') {
        true => Err("ERR Client names cannot contain spaces, newlines or special characters."),
        false => Ok(()),
    }
}

/// The most bytes of a client's argument an error shows (Redis's `%.128s`).
const CUT: usize = 128;

/// `arg`, cut to [`CUT`] bytes.
fn cut(arg: &[u8]) -> &[u8] {
    &arg[..arg.len().min(CUT)]
}

/// The bytes of memory this process holds (its resident set), or 0 where `/proc` cannot tell.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// `CONFIG GET pattern...`: the settings of Redis's that clients and tools read (memory and
/// eviction, persistence, limits), as flotilla behaves, whose names match one of the patterns
/// (Redis's globs, case-insensitive), each once. flotilla's own settings are in its config
/// file; the password is not shown (Redis shows `requirepass`).
fn config_get(shared: &Shared, patterns: &[Bytes]) -> Vec<(&'static str, String)> {
    let config = &shared.config;
    let settings: [(&str, String); 13] = [
        ("bind", shared.client_addr.ip().to_string()),
        ("port", shared.client_addr.port().to_string()),
        ("databases", "1".into()),
        ("maxclients", config.max_clients.to_string()),
        // Never evicts: a write is refused or accepted, and kept.
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        // Every write is in a synced raft log on a quorum before it is answered.
        ("appendonly", "yes".into()),
        ("appendfsync", "always".into()),
        ("save", String::new()),
        ("timeout", "0".into()),
        ("proto-max-bulk-len", config.max_value_bytes.to_string()),
        ("notify-keyspace-events", String::new()),
        ("cluster-enabled", "no".into()),
    ];
    let patterns: Vec<Vec<u8>> = patterns.iter().map(|p| p.to_ascii_lowercase()).collect();
    settings
        .into_iter()
        .filter(|(name, _)| patterns.iter().any(|p| scan::glob(p, name.as_bytes())))
        .collect()
}

/// The answer to `COMMAND HELP`, `CONFIG HELP` and `CLIENT HELP`: one status line each, as
/// Redis answers them, naming what flotilla takes.
fn help(lines: &'static [&'static str]) -> PendingReply {
    now(move |out| {
        reply::array_header(out, lines.len());
        for line in lines {
            reply::simple(out, line);
        }
    })
}

const COMMAND_HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands flotilla serves.",
    "COUNT",
    "    Return the number of commands flotilla serves.",
    "LIST",
    "    Return the names of the commands flotilla serves.",
    "INFO [<command-name> ...]",
    "    Return details about the named commands (null for one flotilla does not serve).",
    "DOCS [<command-name> ...]",
    "    Return the commands' documentation: flotilla has none to give (an empty array).",
    "HELP",
    "    Print this help.",
];

const CONFIG_HELP: &[&str] = &[
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern> [<pattern> ...]",
    "    Return the settings matching the glob-like patterns, as flotilla behaves.",
    "SET, RESETSTAT, REWRITE",
    "    Refused: flotilla's settings are in its config file, read when it starts.",
    "HELP",
    "    Print this help.",
];

const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current connection.",
    "LIST [TYPE <type>] [ID <id> [<id> ...]]",
    "    Return information about the connections to this node.",
    "KILL <ip:port>",
    "    Kill the connection from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill the connections matching all of: ID <id>, ADDR <ip:port>, LADDR <ip:port>,",
    "    USER <username>, TYPE <type>, SKIPME (YES|NO).",
    "SETNAME <name>",
    "    Name the current connection.",
    "GETNAME",
    "    Return the name of the current connection.",
    "SETINFO <LIB-NAME|LIB-VER> <value>",
    "    Accepted, as clients send it; not shown.",
    "NO-EVICT (ON|OFF), NO-TOUCH (ON|OFF)",
    "    Accepted, as clients send them; flotilla never evicts.",
    "HELP",
    "    Print this help.",
];

const MEMORY_HELP: &[&str] = &[
    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "USAGE <key> [SAMPLES <count>]",
    "    Return the bytes the key and its value take in storage, as ranges' sizes count them.",
    "HELP",
    "    Print this help.",
];

/// `OBJECT`'s subcommands (`HELP` apart), each taking a key.
const OBJECT_SUBCOMMANDS: &[&str] = &["encoding", "refcount", "freq", "idletime", "help"];

const OBJECT_HELP: &[&str] = &[
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the encoding Redis would give the value: int, embstr or raw.",
    "REFCOUNT <key>",
    "    Return 1: flotilla shares no values.",
    "FREQ <key>, IDLETIME <key>",
    "    Refused for a key that exists: flotilla tracks neither.",
    "HELP",
    "    Print this help.",
];

/// The encoding Redis gives a string value as `SET` stores it: `int` for a 64-bit integer
/// written as `string2ll` reads it back (no sign but `-`, no leading zero), `embstr` up to 44
/// bytes, `raw` past that.
fn redis_encoding(value: &[u8]) -> &'static str {
    let integer = match value {
        [b'-', digits @ ..] | digits @ [b'1'..=b'9', ..] => {
            !digits.is_empty() && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit)
        }
        b"0" => true,
        _ => false,
    };
    let fits = || std::str::from_utf8(value).is_ok_and(|s| s.parse::<i64>().is_ok());
    if value.len() <= 20 && integer && fits() {
        "int"
    } else if value.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

/// The Redis version flotilla answers as, for clients that check it.
const REDIS_VERSION: &str = "7.2.0";

fn command_command(a: &[Bytes]) -> PendingReply {
    if let Some(e) = bad_subcommand("command", a) {
        return err(e);
    }
    let sub = a
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    match sub.as_slice() {
        b"" => now(|out| {
            reply::array_header(out, COMMANDS.len());
            for s in COMMANDS {
                render_spec(out, s);
            }
        }),
        b"count" => now(|out| reply::integer(out, COMMANDS.len() as i64)),
        b"help" => help(COMMAND_HELP),
        // redis-cli asks for the docs to show hints; it copes with none.
        b"docs" => now(|out| reply::array_header(out, 0)),
        b"list" => now(|out| {
            reply::array_header(out, COMMANDS.len());
            for s in COMMANDS {
                reply::bulk(out, s.name.as_bytes());
            }
        }),
        b"info" => {
            let names = a[1..].to_vec();
            now(move |out| {
                reply::array_header(out, names.len());
                for n in &names {
                    match lookup(n) {
                        Some(s) => render_spec(out, s),
                        None => reply::null(out),
                    }
                }
            })
        }
        _ => unreachable!("refused by bad_subcommand"),
    }
}

/// Redis's answer to subcommand `a[0]` of `command` that is not known, or, if it is among
/// `known`, that was given the wrong number of arguments.
fn subcommand_error(command: &str, a: &[Bytes], known: &[&str]) -> PendingReply {
    err(subcommand_refusal(command, &a[0], known))
}

/// The error of [`subcommand_error`].
fn subcommand_refusal(command: &str, given: &[u8], known: &[&str]) -> Vec<u8> {
    let sub = given.to_ascii_lowercase();
    match known.iter().find(|k| k.as_bytes() == sub) {
        Some(k) => format!("ERR wrong number of arguments for '{command}|{k}' command").into(),
        None => {
            let mut msg = b"ERR unknown subcommand '".to_vec();
            msg.extend_from_slice(cut(given));
            let help = format!("'. Try {} HELP.", command.to_ascii_uppercase());
            msg.extend_from_slice(help.as_bytes());
            msg
        }
    }
}

/// The error Redis gives, as it queues a command in `MULTI` and as it runs it, for a
/// subcommand of `CONFIG` or `COMMAND` that it does not know or that has the wrong number of
/// arguments (`a`: the arguments after the command's name).
pub(crate) fn bad_subcommand(name: &str, a: &[Bytes]) -> Option<Vec<u8>> {
    let sub = a.first().map(|s| s.to_ascii_lowercase());
    match (name, sub.as_deref(), a.len()) {
        ("config" | "command", Some(b"help"), 1) => None,
        ("config", Some(b"get"), 1) | ("config", Some(b"set"), 1 | 2) => {
            Some(subcommand_refusal("config", &a[0], &["get", "set"]))
        }
        ("config", Some(b"resetstat" | b"rewrite"), 2..) => Some(subcommand_refusal(
            "config",
            &a[0],
            &["resetstat", "rewrite"],
        )),
        ("config", Some(b"get" | b"set" | b"resetstat" | b"rewrite"), _) => None,
        ("config", _, _) => Some(subcommand_refusal("config", &a[0], &["help"])),
        ("command", None, _) => None,
        ("command", Some(b"count"), 1) => None,
        ("command", Some(b"docs" | b"list" | b"info"), _) => None,
        ("command", Some(_), _) => Some(subcommand_refusal("command", &a[0], &["count", "help"])),
        ("memory" | "object", Some(b"help"), 1) => None,
        ("memory", Some(b"usage"), 2..) => None,
        ("memory", _, _) => Some(subcommand_refusal("memory", &a[0], &["usage", "help"])),
        ("object", Some(b"encoding" | b"refcount" | b"freq" | b"idletime"), 2) => None,
        ("object", _, _) => Some(subcommand_refusal("object", &a[0], OBJECT_SUBCOMMANDS)),
        _ => None,
    }
}

/// A write's answer, as Redis gives it.
fn render_outcome(out: &mut BytesMut, outcome: CommandOutcome) {
    match outcome {
        CommandOutcome::Ok => reply::simple(out, "OK"),
        CommandOutcome::NotSet => reply::null(out),
        CommandOutcome::Integer(n) => reply::integer(out, n),
        CommandOutcome::Error(e) => reply::error(out, &e),
        CommandOutcome::Value(v) => reply::optional_bulk(out, v.as_deref()),
        // Answers to a transaction's parts, which their own renderers take.
        CommandOutcome::Values(_) | CommandOutcome::Transaction(_) => {
            reply::error(out, "ERR an answer of a transaction out of one")
        }
    }
}

/// `GETRANGE`'s part of a value: the bytes from `start` to `end`, both included, counted from
/// the end when negative, clamped to the value.
fn substring(value: &[u8], start: i64, end: i64) -> &[u8] {
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    let len = value.len() as i64;
    let from_end = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (from_end(start), from_end(end).min(len - 1));
    if start > end {
        return &[];
    }
    &value[start as usize..=end as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_encoding_redis_gives_them_as_set_stores_them() {
        for (value, encoding) in [
            (&b"0"[..], "int"),
            (b"-1", "int"),
            (b"9223372036854775807", "int"),
            (b"-9223372036854775808", "int"),
            (b"9223372036854775808", "embstr"),
            (b"01", "embstr"),
            (b"-0", "embstr"),
            (b"+1", "embstr"),
            (b" 1", "embstr"),
            (b"-", "embstr"),
            (b"", "embstr"),
            (&[b'x'; 44], "embstr"),
            (&[b'1'; 45], "raw"),
        ] {
            assert_eq!(redis_encoding(value), encoding, "{value:?}");
        }
    }

    /// Redis's `GETRANGE` on "This is a string", as its documentation shows it, and the
    /// edges: an empty value, a range past either end.
    #[test]
    fn getrange_counts_like_redis() {
        let s = b"This is a string";
        assert_eq!(substring(s, 0, 3), b"This");
        assert_eq!(substring(s, -3, -1), b"ing");
        assert_eq!(substring(s, 0, -1), s);
        assert_eq!(substring(s, 10, 100), b"string");
        assert_eq!(substring(s, 5, 3), b"");
        assert_eq!(substring(s, -100, 1), b"Th");
        assert_eq!(substring(s, 20, 30), b"");
        assert_eq!(substring(b"", 0, -1), b"");
        assert_eq!(substring(s, 0, -100), b"T");
        assert_eq!(substring(s, -100, -200), b"");
    }

    #[test]
    fn the_command_table_has_redis_arity() {
        assert_eq!(lookup(b"get").unwrap().arity, 2);
        assert_eq!(lookup(b"MSet").unwrap().arity, -3);
        assert_eq!(lookup(b"FlushAll").unwrap().arity, -1);
        assert!(lookup(b"lpush").is_none());
    }
}
