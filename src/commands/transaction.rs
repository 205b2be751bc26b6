//! `MULTI`, `EXEC`, `DISCARD`, `WATCH` and `UNWATCH`: Redis's transactions, as one log entry.
//!
//! Between `MULTI` and `EXEC` a connection's commands are queued, answered `+QUEUED`. `EXEC`
//! runs them as Redis does (their arguments are parsed then, so a bad one is an error in
//! `EXEC`'s answer and the others still run), except that the data commands are not sent one
//! by one: they go to the Store as one [`Command::Multi`], applied atomically in one entry of
//! one range's log, where each sees the writes of those before it. Reads (`GET`, `TTL`, ...)
//! go in it too, as [`Command::Read`], so they see the transaction's state, linearizably.
//! Keys of more than one range cannot be in one entry: such an `EXEC` is refused whole with
//! Redis Cluster's `CROSSSLOT` error, and nothing is applied.
//!
//! `WATCH` reads its keys linearizably and keeps a digest of the values it saw; `EXEC` sends
//! them with the transaction, which is applied only if every watched key still holds the value
//! (deadline included) seen, and is otherwise answered with a null array, as Redis does when a watched
//! key was written. So unlike Redis, a key written back to the value it had does not abort
//! the transaction (compare-and-set on the value, as etcd's transactions compare).

use super::{err, lookup, now, render_outcome, Reply, Session, Spec};
use crate::resp::{reply, Limits};
use bytes::{Bytes, BytesMut};
use flotilla_actors::command::{Command, CommandOutcome, Watched};
use flotilla_actors::messages::Write;
use flotilla_actors::value::{self, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// An open `MULTI`.
#[derive(Default)]
pub(super) struct Transaction {
    /// Each queued command's arguments, its name first.
    queued: Vec<Vec<Bytes>>,
    /// Their bytes, bounded like one request's: the transaction is one log entry.
    bytes: usize,
    /// A command was refused while queuing: `EXEC` will discard the transaction.
    failed: bool,
}

impl Transaction {
    /// The commands queued.
    pub(super) fn len(&self) -> usize {
        self.queued.len()
    }
}

/// What `WATCH` saw of a key: `None` until its read is answered (and for good if it failed),
/// else the key as seen.
type Seen = Rc<RefCell<Option<Watched>>>;

/// The keys a connection watches.
#[derive(Default)]
pub(super) struct Watches {
    seen: HashMap<Vec<u8>, Seen>,
    /// What they add to the transaction's entry, counted against its bound.
    bytes: usize,
}

/// What a watched key adds to a transaction's entry, about.
fn watch_bytes(key: &[u8]) -> usize {
    key.len() + 48
}

/// How a data command's outcome is rendered.
type Render = Box<dyn FnOnce(&mut BytesMut, CommandOutcome)>;

/// A data command `EXEC` collected instead of running, and how to render its outcome.
pub(super) struct Collected {
    pub command: Command,
    pub render: Render,
}

/// What renders one element of `EXEC`'s answer.
enum Part {
    /// The outcome of the transaction's next command.
    Command,
    /// A reply given without the Store (`PING`, or an error in the command's arguments).
    Reply(super::PendingReply),
}

/// Commands that may be queued besides those with keys: they answer from the connection alone.
const QUEUEABLE: &[&str] = &[
    "ping", "echo", "time", "select", "command", "config", "unwatch",
];

impl Session {
    /// Whether a transaction is open (its commands are queued).
    pub(super) fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// A command refused before it ran (unknown, with the wrong number of arguments, or before
    /// `AUTH`): inside `MULTI` it dooms the transaction, as in Redis; a refused `EXEC` discards
    /// the transaction (if any) and the keys watched at once.
    pub(super) fn refused(
        &mut self,
        name: Option<&str>,
        msg: impl Into<Vec<u8>>,
    ) -> super::PendingReply {
        let msg = msg.into();
        if name == Some("exec") {
            self.multi = None;
            self.watched = Watches::default();
            let why = msg.strip_prefix(b"ERR ").unwrap_or(&msg);
            let mut abort = b"EXECABORT Transaction discarded because of: ".to_vec();
            abort.extend_from_slice(why);
            return err(abort);
        }
        if let Some(tx) = &mut self.multi {
            tx.failed = true;
        }
        err(msg)
    }

    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`, and any command inside `MULTI`: `None`
    /// for a command to run as usual.
    pub(super) fn transactional(
        &mut self,
        spec: &Spec,
        args: &mut Vec<Bytes>,
    ) -> Option<super::PendingReply> {
        let name = spec.name;
        Some(match name {
            "multi" if self.in_multi() => err("ERR MULTI calls can not be nested"),
            "multi" => {
                self.multi = Some(Transaction::default());
                ok()
            }
            "discard" => match self.multi.take() {
                None => err("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched = Watches::default();
                    ok()
                }
            },
            "exec" => match self.multi.take() {
                None => err("ERR EXEC without MULTI"),
                Some(tx) => self.exec(tx),
            },
            "watch" if self.in_multi() => err("ERR WATCH inside MULTI is not allowed"),
            "watch" => self.watch(&args[1..]),
            "unwatch" if !self.in_multi() => {
                self.watched = Watches::default();
                ok()
            }
            "quit" => return None,
            _ => {
                self.multi.as_ref()?;
                let limit = self.transaction_bytes();
                let watched = self.watched.bytes;
                let tx = self.multi.as_mut()?;
                if spec.first_key == 0 && !QUEUEABLE.contains(&name) {
                    tx.failed = true;
                    return Some(err("ERR Command not allowed inside a transaction"));
                }
                // Refused as it is queued, as an unknown command is.
                if let Some(e) = super::bad_subcommand(name, &args[1..]) {
                    tx.failed = true;
                    return Some(err(e));
                }
                let bytes = args.iter().map(|a| a.len() + 16).sum::<usize>();
                if watched + tx.bytes + bytes > limit {
                    tx.failed = true;
                    return Some(err(format!(
                        "ERR a transaction holds at most {limit} bytes of commands"
                    )));
                }
                tx.bytes += bytes;
                tx.queued.push(std::mem::take(args));
                now(|out| reply::simple(out, "QUEUED"))
            }
        })
    }

    /// The most bytes a transaction's entry may take: as many as one request.
    fn transaction_bytes(&self) -> usize {
        Limits::new(self.shared.config.max_value_bytes).max_request_bytes
    }

    /// `WATCH`: reads the keys, keeping what it saw for `EXEC` to compare.
    fn watch(&mut self, keys: &[Bytes]) -> super::PendingReply {
        let added: HashSet<&[u8]> = keys
            .iter()
            .map(|k| k.as_ref())
            .filter(|k| !self.watched.seen.contains_key(*k))
            .collect();
        let bytes = self.watched.bytes + added.iter().map(|k| watch_bytes(k)).sum::<usize>();
        let limit = self.transaction_bytes();
        if bytes > limit {
            return err(format!(
                "ERR a transaction may watch at most {limit} bytes of keys"
            ));
        }
        self.watched.bytes = bytes;
        let mut new: Vec<(Vec<u8>, Seen)> = Vec::new();
        for k in keys {
            // A key watched already keeps what was seen first, as in Redis; one whose read
            // failed (or is still on its way) is read again.
            let watched = &mut self.watched.seen;
            if watched
                .get(k.as_ref())
                .is_some_and(|s| s.borrow().is_some())
            {
                continue;
            }
            let seen = Seen::default();
            watched.insert(k.to_vec(), seen.clone());
            new.push((k.to_vec(), seen));
        }
        let keys = new.iter().map(|(k, _)| k.clone()).collect();
        self.read(keys, move |out, values| {
            for ((key, seen), v) in new.into_iter().zip(values) {
                let stored = v.map(|v| value::stored(&v.bytes, v.deadline));
                *seen.borrow_mut() = Some(Watched::seen(key, stored.as_deref()));
            }
            reply::simple(out, "OK")
        })
    }

    /// `EXEC`: runs the queued commands, the data commands as one [`Command::Multi`].
    fn exec(&mut self, tx: Transaction) -> super::PendingReply {
        let watched = std::mem::take(&mut self.watched).seen;
        if tx.failed {
            return err("EXECABORT Transaction discarded because of previous errors.");
        }
        *self.collecting.borrow_mut() = Some(Vec::new());
        let mut parts = Vec::with_capacity(tx.queued.len());
        for args in tx.queued {
            let name = lookup(&args[0]).expect("queued commands are known").name;
            let before = self.collected();
            let reply = self.dispatch(name, &args[1..]);
            parts.push(match self.collected() > before {
                true => Part::Command,
                false => Part::Reply(reply),
            });
        }
        let collected = self.collecting.borrow_mut().take().unwrap_or_default();
        if collected.is_empty() && watched.is_empty() {
            return Box::pin(async move { render(parts, Vec::new(), Vec::new()).await });
        }
        let (commands, renders): (Vec<_>, Vec<_>) =
            collected.into_iter().map(|c| (c.command, c.render)).unzip();
        // With keys watched, it starts once every earlier command is answered, `WATCH` among
        // them: what it read is known by then.
        let may_start_now = watched.is_empty();
        self.sequenced_as(true, may_start_now, move |store| {
            let seen: Option<Vec<Watched>> = watched.into_values().map(|s| s.take()).collect();
            let request = seen.map(|watched| {
                store.send(Write {
                    command: Command::Multi { watched, commands },
                })
            });
            async move {
                let mut out = BytesMut::new();
                let Some(request) = request else {
                    // A `WATCH` failed: what it would have seen is not known.
                    reply::error(
                        &mut out,
                        "ERR a WATCH of this transaction failed, so what it watched is not \
                         known; nothing was applied",
                    );
                    return Reply {
                        bytes: out,
                        close: false,
                    };
                };
                match request.await {
                    Ok(Ok(CommandOutcome::Transaction(Some(outcomes)))) => {
                        return render(parts, renders, outcomes).await
                    }
                    Ok(Ok(CommandOutcome::Transaction(None))) => out.extend_from_slice(b"*-1\r\n"),
                    Ok(Ok(CommandOutcome::Error(e))) => reply::error(&mut out, &e),
                    Ok(Ok(other)) => reply::error(
                        &mut out,
                        format!("ERR a transaction was answered {other:?}"),
                    ),
                    Ok(Err(e)) => super::store_failure(&mut out, e),
                    Err(e) => super::mailbox_failure(&mut out, e),
                }
                Reply {
                    bytes: out,
                    close: false,
                }
            }
        })
    }

    /// How many data commands `EXEC` has collected so far.
    fn collected(&self) -> usize {
        self.collecting.borrow().as_ref().map_or(0, Vec::len)
    }

    /// Whether `EXEC` is collecting data commands (see [`Session::collect`]).
    pub(super) fn collecting(&self) -> bool {
        self.collecting.borrow().is_some()
    }

    /// Inside `EXEC`, collects a data command instead of running it.
    pub(super) fn collect(
        &self,
        command: Command,
        render: impl FnOnce(&mut BytesMut, CommandOutcome) + 'static,
    ) -> super::PendingReply {
        if let Some(c) = self.collecting.borrow_mut().as_mut() {
            c.push(Collected {
                command,
                render: Box::new(render),
            });
        }
        now(|_| {})
    }

    /// Inside `EXEC`, collects a read, as a [`Command::Read`].
    pub(super) fn collect_read(
        &self,
        keys: Vec<Vec<u8>>,
        render: impl FnOnce(&mut BytesMut, Vec<Option<Value>>) + 'static,
    ) -> super::PendingReply {
        self.collect(Command::Read { keys }, move |out, outcome| match outcome {
            CommandOutcome::Values(stored) => render(
                out,
                // Live at the transaction's time, as applied.
                stored
                    .into_iter()
                    .map(|s| s.and_then(|s| Value::at(s, || 0)))
                    .collect(),
            ),
            other => render_outcome(out, other),
        })
    }
}

fn ok() -> super::PendingReply {
    now(|out| reply::simple(out, "OK"))
}

/// `EXEC`'s answer: an element per queued command, in order.
async fn render(parts: Vec<Part>, renders: Vec<Render>, outcomes: Vec<CommandOutcome>) -> Reply {
    let mut out = BytesMut::new();
    reply::array_header(&mut out, parts.len());
    let mut answers = renders.into_iter().zip(outcomes);
    for part in parts {
        match part {
            Part::Command => match answers.next() {
                Some((render, outcome)) => render(&mut out, outcome),
                None => reply::error(&mut out, "ERR a transaction's outcome is missing"),
            },
            Part::Reply(pending) => out.extend_from_slice(&pending.await.bytes),
        }
    }
    Reply {
        bytes: out,
        close: false,
    }
}
