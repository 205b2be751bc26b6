//! The node's client connections, as `CLIENT LIST` shows them and `CLIENT KILL` ends them.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// One client connection, shared by its session and the node's table of them.
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    started: Instant,
    /// `CLIENT SETNAME`'s (or `HELLO ... SETNAME`'s).
    name: Mutex<Option<Bytes>>,
    /// Milliseconds from `started` to its last read, and its last command (its index in the
    /// command table; `usize::MAX`: none yet).
    last_ms: AtomicU64,
    last_command: AtomicUsize,
    /// In a transaction (`MULTI` given, `EXEC` or `DISCARD` not yet).
    in_multi: AtomicBool,
    /// Set by `CLIENT KILL`: the connection reads no more and closes once its replies are out.
    killed: AtomicBool,
    kill: Notify,
}

impl Connection {
    pub fn name(&self) -> Option<Bytes> {
        self.name.lock().expect("client name").clone()
    }

    pub fn set_name(&self, name: Option<Bytes>) {
        *self.name.lock().expect("client name") = name;
    }

    /// A command (index `command` in the table) starts.
    pub fn touch(&self, command: usize, in_multi: bool) {
        self.last_command.store(command, Ordering::Relaxed);
        self.in_multi.store(in_multi, Ordering::Relaxed);
    }

    /// The connection read what the client sent: it is not idle (once per read, not per
    /// command, as a pipeline of many takes one read).
    pub fn active(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends the connection: see [`Connection::killed`].
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    /// Resolves once the connection is killed (at once if it was already).
    pub async fn killed(&self) {
        if !self.killed.load(Ordering::Relaxed) {
            self.kill.notified().await;
        }
    }

    /// Its line of `CLIENT LIST` and `CLIENT INFO`, with Redis's fields that apply (without
    /// the final newline); `local` is the address clients connect to, `command` names the
    /// command table's entries.
    pub fn line(&self, local: SocketAddr, command: fn(usize) -> Option<&'static str>) -> String {
        let age = self.started.elapsed();
        let last = self.last_ms.load(Ordering::Relaxed);
        let idle = (age.as_millis() as u64).saturating_sub(last) / 1000;
        let cmd = command(self.last_command.load(Ordering::Relaxed)).unwrap_or("NULL");
        let in_multi = self.in_multi.load(Ordering::Relaxed);
        let name = self.name().unwrap_or_default();
        format!(
            "id={} addr={} laddr={local} fd=-1 name={} age={} idle={idle} flags={} db=0 sub=0 \
             psub=0 ssub=0 multi={} cmd={cmd} user=default redir=-1 resp=2",
            self.id,
            self.peer,
            String::from_utf8_lossy(&name),
            age.as_secs(),
            if in_multi { "x" } else { "N" },
            if in_multi { 0 } else { -1 },
        )
    }
}

/// Every client connection of the node, by id.
#[derive(Default)]
pub struct Connections(Mutex<BTreeMap<u64, Arc<Connection>>>);

impl Connections {
    /// Adds a connection from `peer`, with id `id`.
    pub fn open(&self, id: u64, peer: SocketAddr) -> Arc<Connection> {
        let c = Arc::new(Connection {
            id,
            peer,
            started: Instant::now(),
            name: Mutex::new(None),
            last_ms: AtomicU64::new(0),
            last_command: AtomicUsize::new(usize::MAX),
            in_multi: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
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
    /// `TYPE` other than `normal`, or `USER` other than `default`: no connection.
    none: bool,
    /// Connections older than this many seconds.
    max_age: Option<u64>,
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
            match String::from_utf8_lossy(&pair[0]).to_lowercase().as_str() {
                "id" => f.ids = Some(vec![id(&value)?]),
                "addr" => f.addr = Some(value),
                "laddr" => f.laddr = Some(value),
                "type" => f.kind(&value)?,
                "user" => f.none |= value != "default",
                "skipme" => {
                    f.skip_me = match value.to_lowercase().as_str() {
                        "yes" => true,
                        "no" => false,
                        _ => return Err("ERR syntax error".into()),
                    }
                }
                "maxage" => {
                    let age = value.parse().map_err(|_| "ERR syntax error".to_string())?;
                    f.max_age = Some(age);
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(f)
    }

    /// `CLIENT LIST`'s filters: `TYPE t` and `ID id ...`.
    pub fn list(a: &[Bytes]) -> Result<Filter, String> {
        let mut f = Filter::default();
        let mut rest = a;
        while let Some(first) = rest.first() {
            match String::from_utf8_lossy(first).to_lowercase().as_str() {
                "type" if rest.len() >= 2 => {
                    f.kind(&String::from_utf8_lossy(&rest[1]))?;
                    rest = &rest[2..];
                }
                "id" if rest.len() >= 2 => {
                    let ids = rest[1..]
                        .iter()
                        .map(|v| id(&String::from_utf8_lossy(v)))
                        .collect::<Result<_, _>>()?;
                    f.ids = Some(ids);
                    rest = &[];
                }
                _ => return Err("ERR syntax error".into()),
            }
        }
        Ok(f)
    }

    fn kind(&mut self, kind: &str) -> Result<(), String> {
        match kind.to_lowercase().as_str() {
            "normal" => {}
            "master" | "replica" | "slave" | "pubsub" => self.none = true,
            _ => return Err(format!("ERR Unknown client type '{kind}'")),
        }
        Ok(())
    }

    /// Whether connection `c` is picked; `me` is the asking connection's id, `local` the
    /// address clients connect to.
    pub fn picks(&self, c: &Connection, me: u64, local: SocketAddr) -> bool {
        let me_skipped = self.skip_me && c.id == me;
        !self.none
            && !me_skipped
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&c.id))
            && self.addr.as_ref().is_none_or(|a| *a == c.peer.to_string())
            && self.laddr.as_ref().is_none_or(|a| *a == local.to_string())
            && self
                .max_age
                .is_none_or(|age| c.started.elapsed().as_secs() >= age)
    }
}

fn id(value: &str) -> Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| format!("ERR client-id should be greater than 0 or invalid '{value}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_args as args;

    #[test]
    fn filters_pick_as_redis_documents() {
        let table = Connections::default();
        let local: SocketAddr = "127.0.0.1:6380".parse().unwrap();
        let a = table.open(1, "127.0.0.1:5001".parse().unwrap());
        let b = table.open(2, "127.0.0.1:5002".parse().unwrap());
        let picked = |f: &Filter| -> Vec<u64> {
            let all = table.all();
            all.iter()
                .filter(|c| f.picks(c, 1, local))
                .map(|c| c.id)
                .collect()
        };
        let kill = |a: &[&str]| Filter::kill(&args(a));
        assert_eq!(picked(&kill(&["ADDR", "127.0.0.1:5002"]).unwrap()), [2]);
        assert_eq!(picked(&kill(&["id", "1"]).unwrap()), Vec::<u64>::new());
        assert_eq!(picked(&kill(&["id", "1", "skipme", "no"]).unwrap()), [1]);
        assert_eq!(picked(&kill(&["laddr", "127.0.0.1:6380"]).unwrap()), [2]);
        assert_eq!(
            picked(&kill(&["type", "pubsub"]).unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(picked(&kill(&["user", "default"]).unwrap()), [2]);
        assert_eq!(
            picked(&kill(&["maxage", "3600"]).unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(kill(&["id"]), Err("ERR syntax error".into()));
        assert_eq!(kill(&["bogus", "1"]), Err("ERR syntax error".into()));
        assert_eq!(
            kill(&["id", "x"]),
            Err("ERR client-id should be greater than 0 or invalid 'x'".into())
        );
        let list = |a: &[&str]| Filter::list(&args(a));
        assert_eq!(picked(&list(&[]).unwrap()), [1, 2]);
        assert_eq!(picked(&list(&["ID", "2", "9"]).unwrap()), [2]);
        assert_eq!(picked(&list(&["TYPE", "normal"]).unwrap()), [1, 2]);
        assert_eq!(
            list(&["TYPE", "x"]),
            Err("ERR Unknown client type 'x'".into())
        );
        table.close(1);
        assert_eq!(picked(&list(&[]).unwrap()), [2]);
        drop((a, b));
    }
}
