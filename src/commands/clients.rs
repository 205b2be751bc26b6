//! The node's client connections, as `CLIENT LIST` shows them and `CLIENT KILL` ends them.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// One client connection, shared by its session and the node's table of them.
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    started: Instant,
    /// `CLIENT SETNAME`'s (or `HELLO ... SETNAME`'s).
    name: Mutex<Option<Bytes>>,
    /// Milliseconds from `started` to its last read, and its last command (its index in the
    /// command table; `usize::MAX`: none yet).
    last_ms: AtomicU64,
    last_command: AtomicUsize,
    /// The commands queued in its transaction (`MULTI` given, `EXEC` or `DISCARD` not yet);
    /// -1 outside one.
    multi: AtomicI64,
    /// Set by another connection's `CLIENT KILL`: the connection reads and answers nothing
    /// more, and closes.
    killed: AtomicBool,
    kill: Notify,
    /// Set by its own `CLIENT KILL`: it reads nothing more, and closes once its replies,
    /// that one's included, are out.
    closing: AtomicBool,
}

impl Connection {
    pub fn name(&self) -> Option<Bytes> {
        self.name.lock().expect("client name").clone()
    }

    pub fn set_name(&self, name: Option<Bytes>) {
        *self.name.lock().expect("client name") = name;
    }

    /// A command (index `command` in the table) starts.
    pub fn touch(&self, command: usize) {
        self.last_command.store(command, Ordering::Relaxed);
    }

    /// The commands queued in its transaction, if one is open.
    pub fn set_multi(&self, queued: Option<usize>) {
        let queued = queued.map_or(-1, |n| n as i64);
        self.multi.store(queued, Ordering::Relaxed);
    }

    /// The connection read what the client sent: it is not idle (once per read, not per
    /// command, as a pipeline of many takes one read).
    pub fn active(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends the connection at once (another's `CLIENT KILL`): what it still has to answer is
    /// dropped, and the commands among it not started yet never run. Both the reader and the
    /// writer of the connection wait on it (see [`Connection::killed`]), so that one whose
    /// client does not read its replies ends too.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_waiters();
    }

    /// Resolves once the connection is killed (at once if it was already).
    pub async fn killed(&self) {
        let notified = self.kill.notified();
        if !self.killed.load(Ordering::Relaxed) {
            notified.await;
        }
    }

    /// Ends the connection after the replies due (its own `CLIENT KILL`): nothing more it
    /// sends runs.
    pub fn close_after_reply(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether another connection killed it.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Whether the connection is to run no more commands.
    pub fn stops_reading(&self) -> bool {
        self.killed.load(Ordering::Relaxed) || self.closing.load(Ordering::Relaxed)
    }

    /// Its line of `CLIENT LIST` and `CLIENT INFO`, with Redis's fields that apply (without
    /// the final newline); `local` is the address clients connect to, `command` names the
    /// command table's entries.
    pub fn line(&self, command: fn(usize) -> Option<&'static str>) -> String {
        let age = self.started.elapsed();
        let last = self.last_ms.load(Ordering::Relaxed);
        let idle = (age.as_millis() as u64).saturating_sub(last) / 1000;
        let cmd = command(self.last_command.load(Ordering::Relaxed)).unwrap_or("NULL");
        let multi = self.multi.load(Ordering::Relaxed);
        let name = self.name().unwrap_or_default();
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={idle} flags={} db=0 sub=0 \
             psub=0 ssub=0 multi={} cmd={cmd} user=default redir=-1 resp=2",
            self.id,
            self.peer,
            self.local,
            String::from_utf8_lossy(&name),
            age.as_secs(),
            if multi >= 0 { "x" } else { "N" },
            multi,
        )
    }
}

/// Every client connection of the node, by id.
#[derive(Default)]
pub struct Connections(Mutex<BTreeMap<u64, Arc<Connection>>>);

impl Connections {
    /// Adds a connection from `peer` to `local`, with id `id`.
    pub fn open(&self, id: u64, peer: SocketAddr, local: SocketAddr) -> Arc<Connection> {
        let c = Arc::new(Connection {
            id,
            peer,
            local,
            started: Instant::now(),
            name: Mutex::new(None),
            last_ms: AtomicU64::new(0),
            last_command: AtomicUsize::new(usize::MAX),
            multi: AtomicI64::new(-1),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            closing: AtomicBool::new(false),
        });
        self.table().insert(id, c.clone());
        c
    }

    pub fn close(&self, id: u64) {
        self.table().remove(&id);
    }

    /// The connections, in the order they came.
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.table().values().cloned().collect()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.0.lock().expect("client connections")
    }
}

/// Which connections `CLIENT KILL <filter> <value> ...` or `CLIENT LIST [TYPE t] [ID id ...]`
/// picks: all of its filters must match.
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    ids: Option<Vec<u64>>,
    addr: Option<String>,
    laddr: Option<String>,
    /// `TYPE` other than `normal`: no connection.
    none: bool,
    /// Leaves the connection asking out (`SKIPME yes`, `CLIENT KILL`'s default).
    pub skip_me: bool,
}

impl Filter {
    /// `CLIENT KILL`'s filters, pairs of a name and a value; the error is Redis's reply.
    pub fn kill(a: &[Bytes]) -> Result<Filter, String> {
        let mut f = Filter {
            skip_me: true,
            ..Filter::default()
        };
        if !a.len().is_multiple_of(2) {
            return Err("ERR syntax error".into());
        }
        for pair in a.chunks(2) {
            let value = String::from_utf8_lossy(&pair[1]).into_owned();
            match String::from_utf8_lossy(&pair[0])
                .to_ascii_lowercase()
                .as_str()
            {
                "id" => {
                    let id = value.parse().ok().filter(|&id: &u64| id > 0);
                    let id = id.ok_or("ERR client-id should be greater than 0")?;
                    f.ids = Some(vec![id]);
                }
                "addr" => f.addr = Some(value),
                "laddr" => f.laddr = Some(value),
                "type" => f.kind(&value)?,
                // The only user.
                "user" if value == "default" => {}
                "user" => return Err(format!("ERR No such user '{value}'")),
                "skipme" => {
                    f.skip_me = match value.to_ascii_lowercase().as_str() {
                        "yes" => true,
                        "no" => false,
                        _ => return Err("ERR syntax error".into()),
                    }
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(f)
    }

    /// `CLIENT LIST`'s filter: `TYPE t` or `ID id ...` (one of them, as Redis 7.0 takes it).
    pub fn list(a: &[Bytes]) -> Result<Filter, String> {
        let mut f = Filter::default();
        let Some(first) = a.first() else {
            return Ok(f);
        };
        match (
            String::from_utf8_lossy(first).to_ascii_lowercase().as_str(),
            a.len(),
        ) {
            ("type", 2) => f.kind(&String::from_utf8_lossy(&a[1]))?,
            ("id", n) if n >= 2 => {
                let ids: Option<Vec<u64>> = a[1..]
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).parse().ok())
                    .collect();
                f.ids = Some(ids.ok_or("ERR Invalid client ID")?);
            }
            _ => return Err("ERR syntax error".into()),
        }
        Ok(f)
    }

    fn kind(&mut self, kind: &str) -> Result<(), String> {
        match kind.to_ascii_lowercase().as_str() {
            "normal" => {}
            "master" | "replica" | "slave" | "pubsub" => self.none = true,
            _ => return Err(format!("ERR Unknown client type '{kind}'")),
        }
        Ok(())
    }

    /// Whether connection `c` is picked; `me` is the asking connection's id.
    pub fn picks(&self, c: &Connection, me: u64) -> bool {
        let me_skipped = self.skip_me && c.id == me;
        !self.none
            && !me_skipped
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&c.id))
            && self.addr.as_ref().is_none_or(|a| *a == c.peer.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == c.local.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_args as args;

    #[test]
    fn filters_pick_as_redis_documents() {
        let table = Connections::default();
        let local: SocketAddr = "127.0.0.1:6380".parse().unwrap();
        let a = table.open(1, "127.0.0.1:5001".parse().unwrap(), local);
        let b = table.open(2, "127.0.0.1:5002".parse().unwrap(), local);
        let picked = |f: &Filter| -> Vec<u64> {
            let all = table.all();
            all.iter().filter(|c| f.picks(c, 1)).map(|c| c.id).collect()
        };
        let kill = |a: &[&str]| Filter::kill(&args(a));
        assert_eq!(picked(&kill(&["ADDR", "127.0.0.1:5002"]).unwrap()), [2]);
        assert_eq!(picked(&kill(&["id", "1"]).unwrap()), Vec::<u64>::new());
        assert_eq!(picked(&kill(&["id", "1", "skipme", "no"]).unwrap()), [1]);
        assert_eq!(picked(&kill(&["laddr", "127.0.0.1:6380"]).unwrap()), [2]);
        let none = Vec::<u64>::new();
        assert_eq!(picked(&kill(&["type", "pubsub"]).unwrap()), none);
        assert_eq!(picked(&kill(&["user", "default"]).unwrap()), [2]);
        // Errors as redis-server 7.0.15 answers them.
        let syntax = Err("ERR syntax error".to_string());
        assert_eq!(kill(&["maxage", "3600"]), syntax);
        assert_eq!(kill(&["id"]), syntax);
        assert_eq!(kill(&["bogus", "1"]), syntax);
        let positive = Err("ERR client-id should be greater than 0".to_string());
        for bad in ["x", "0", "-1"] {
            assert_eq!(kill(&["id", bad]), positive);
        }
        let nobody = Err("ERR No such user 'nobody'".to_string());
        assert_eq!(kill(&["user", "nobody"]), nobody);
        let list = |a: &[&str]| Filter::list(&args(a));
        assert_eq!(picked(&list(&[]).unwrap()), [1, 2]);
        assert_eq!(picked(&list(&["ID", "2", "9"]).unwrap()), [2]);
        assert_eq!(picked(&list(&["ID", "0"]).unwrap()), none);
        assert_eq!(list(&["ID", "x"]), Err("ERR Invalid client ID".into()));
        assert_eq!(picked(&list(&["TYPE", "normal"]).unwrap()), [1, 2]);
        assert_eq!(list(&["TYPE", "normal", "ID", "1"]), syntax);
        let unknown = Err("ERR Unknown client type 'x'".to_string());
        assert_eq!(list(&["TYPE", "x"]), unknown);
        table.close(1);
        assert_eq!(picked(&list(&[]).unwrap()), [2]);
        drop((a, b));
    }
}
