//! The commands that are replicated through a range's log, and how one is applied.
//!
//! A command touches keys of one range only; the Store splits multi-key client commands per
//! range before proposing. Applying is a pure function of the command and the values it reads,
//! so every replica computes the same result from the same log.

use crate::ids::RangeId;
use crate::storage::Deadline;
use crate::value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Which existing state a `SET` requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// Always write (plain `SET`).
    Always,
    /// Write only when the key does not exist (`SET ... NX`).
    IfAbsent,
    /// Write only when the key exists (`SET ... XX`).
    IfPresent,
}

impl SetCondition {
    /// Whether a `SET` with this condition writes, given whether the key exists (asked only
    /// when the condition depends on it).
    fn allows(self, exists: impl FnOnce() -> bool) -> bool {
        match self {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !exists(),
            SetCondition::IfPresent => exists(),
        }
    }
}

/// Which existing deadline an `EXPIRE` requires (its `NX`, `XX`, `GT` and `LT` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    Always,
    /// The key has no deadline.
    IfNone,
    /// The key has a deadline.
    IfSome,
    /// The new deadline is later than the key's (none counts as forever).
    IfLater,
    /// The new deadline is earlier than the key's (none counts as forever).
    IfEarlier,
    /// The key has a deadline and the new one is earlier (`XX LT`).
    IfSomeAndEarlier,
}

impl ExpireCondition {
    fn allows(self, current: Option<u64>, new: u64) -> bool {
        match self {
            ExpireCondition::Always => true,
            ExpireCondition::IfNone => current.is_none(),
            ExpireCondition::IfSome => current.is_some(),
            ExpireCondition::IfLater => current.is_some_and(|c| new > c),
            ExpireCondition::IfEarlier => current.is_none_or(|c| new < c),
            ExpireCondition::IfSomeAndEarlier => current.is_some_and(|c| new < c),
        }
    }
}

/// The deadline a `SET` gives its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpiry {
    /// Milliseconds since the Unix epoch (`EX`, `PX`, `EXAT`, `PXAT`).
    At(u64),
    /// The key's current deadline (`KEEPTTL`).
    Keep,
}

/// A write, as it is stored in a raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Set {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        condition: SetCondition,
    },
    Delete {
        #[serde(with = "crate::codec::byte_lists")]
        keys: Vec<Vec<u8>>,
    },
    IncrBy {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    MSet {
        #[serde(with = "crate::codec::byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    // New variants go last: the log holds entries encoded with the variants' numbers.
    /// `SET ... GET` and `GETSET`: a `SET` answered with the value the key had.
    SetGet {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        condition: SetCondition,
    },
    /// `GETDEL`: deletes a key, answered with the value it had.
    GetDel {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// `APPEND`: answered with the value's new length. A value that would grow past `limit`
    /// bytes (the proposing node's `max_value_bytes`, carried so that every replica decides
    /// alike) is left as it was, with an error.
    Append {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        limit: u64,
    },
    /// A command applied as at `now` (milliseconds since the Unix epoch, by the proposing
    /// node's clock): values whose deadline is before it count as absent. The Store wraps
    /// every command that reads values in one (see [`Command::clocked`]); one that is not
    /// wrapped applies as at time zero, when nothing has expired.
    Clocked { now: u64, command: Box<Command> },
    /// `SET` with a deadline (`EX`, `PX`, `EXAT`, `PXAT`, `KEEPTTL`), `SETEX`, `PSETEX`;
    /// answered with the value the key had if `get`.
    SetExpiring {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        condition: SetCondition,
        get: bool,
        expiry: SetExpiry,
    },
    /// `EXPIRE` and its kin (`at`: milliseconds since the Unix epoch), or `PERSIST` (`at` is
    /// `None`): answered 1 if the deadline changed, else 0. A deadline already past deletes
    /// the key.
    Expire {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        at: Option<u64>,
        condition: ExpireCondition,
    },
    /// `GETEX` with an option: answered with the value, whose deadline becomes `at` (`None`:
    /// `PERSIST`).
    GetEx {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        at: Option<u64>,
    },
    /// Deletes the keys that have expired, as a range's leader finds them in its index of
    /// deadlines (`(deadline, key)` as the index has them); answered with how many it deleted.
    Reap {
        #[serde(with = "crate::codec::numbered_bytes")]
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// `MULTI` ... `EXEC`: `commands` applied one after the other, each seeing the writes of
    /// those before it, as one entry; answered with each command's outcome, or not applied at
    /// all (answered `Transaction(None)`) if a key of `watched` no longer holds the stored
    /// value given (`None`: no live value), as `WATCH` read it. Every key is of one range.
    Multi {
        watched: Vec<Watched>,
        commands: Vec<Command>,
    },
    /// A read inside a transaction (`GET`, `MGET`, `TTL`, ...): answered with the stored value
    /// of each key, live at the command's time.
    Read {
        #[serde(with = "crate::codec::byte_lists")]
        keys: Vec<Vec<u8>>,
    },
    /// `RENAME` (`RENAMENX` if `nx`): moves the live value of `from`, its deadline with it, to
    /// `to`. Answered `+OK` (`:1`, or `:0` if `to` has a value), an error if `from` has none.
    Rename {
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        nx: bool,
    },
    /// `MSETNX`: sets every pair if none of their keys has a live value (answered 1), else
    /// none (0).
    MSetNx {
        #[serde(with = "crate::codec::byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `FLUSHDB` and `FLUSHALL`, in one range: deletes every key of the range it is proposed
    /// to. The Store clears the range's span as it applies it (see `Store::flush`):
    /// [`Command::apply`] alone, which sees only keys it names, answers it and changes nothing.
    Flush,
    /// Cuts the range at `key` (inside it, not its start): from the entry on, the range covers
    /// the keys below `key`, and a new range `right`, with the same replicas, those from it
    /// on. Applied by the Store.
    Split {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        right: RangeId,
    },
    /// [`Command::Flush`] as proposed to a range whose span was `[start, end)`: should the
    /// range have split since, the origin flushes the ranges of the rest of that span too.
    FlushSpan {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    /// The leader's measure of the range it is proposed to: its keys below `end` (its end
    /// then, or the first cut of the splits proposed before it) took `bytes`, read once
    /// everything applied was written when the range had `grown` bytes applied since its last
    /// measure. Every replica takes it as the range's size (`RangeSize`), with what it applied
    /// past `grown` as grown since, unless the range ends past `end` by then (the splits
    /// failed). Applied by the Store.
    Measured {
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
        bytes: u64,
        grown: u64,
    },
}

/// A key a transaction watched, and the SHA-256 digest of its stored value then (`None`: it
/// had no live value): a digest, so that the entry stays small whatever the values watched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watched {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub digest: Option<[u8; 32]>,
}

impl Watched {
    /// The key, as it was seen with the stored value `stored`.
    pub fn seen(key: Vec<u8>, stored: Option<&[u8]>) -> Watched {
        Watched {
            key,
            digest: Watched::digest(stored),
        }
    }

    /// What a watched key holding `stored` is compared by.
    fn digest(stored: Option<&[u8]>) -> Option<[u8; 32]> {
        stored.map(|s| Sha256::digest(s).into())
    }
}

/// The most bytes of values one transaction may read (each watched value compared and each
/// value a command reads counts its size): past it, the transaction fails whole. Every replica applies it, and a
/// read inside a transaction is materialised on each; this keeps one entry from taking a
/// replica's memory or its Store's thread without bound. The same on every replica, as it must
/// be: the outcome depends on it.
pub const MULTI_READ_BYTES: usize = 64 << 20;

/// What applying a command answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The write happened (`+OK`).
    Ok,
    /// A conditional `SET` did not write (`$-1`).
    NotSet,
    /// A count or a new counter value.
    Integer(i64),
    /// The command was applied as a no-op because it was not valid for the stored value.
    Error(String),
    /// The value the key had (`None`: it had none).
    Value(Option<Vec<u8>>),
    /// The stored value of each key a [`Command::Read`] named (`None`: none live).
    Values(Vec<Option<Vec<u8>>>),
    /// The outcome of each command of a [`Command::Multi`], or `None` if a watched key had
    /// changed and nothing was applied.
    Transaction(Option<Vec<CommandOutcome>>),
}

/// The effect of applying a command: the writes to make (stored values, see [`crate::value`];
/// `None` deletes), the entries of the index of deadlines to drop (each key's deadline as it
/// is indexed, and the key; the Store indexes every deadline written), and the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub unindexed: Vec<Deadline>,
    pub outcome: CommandOutcome,
}

impl Applied {
    fn new(writes: Vec<(Vec<u8>, Option<Vec<u8>>)>, outcome: CommandOutcome) -> Applied {
        Applied {
            writes,
            unindexed: Vec::new(),
            outcome,
        }
    }

    fn answer(outcome: CommandOutcome) -> Applied {
        Applied::new(Vec::new(), outcome)
    }
}

/// A live stored value: its bytes and deadline.
struct Current {
    bytes: Vec<u8>,
    deadline: Option<u64>,
}

impl Command {
    /// Every key the command touches, in order.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Command::Set { key, .. }
            | Command::IncrBy { key, .. }
            | Command::SetGet { key, .. }
            | Command::GetDel { key }
            | Command::Append { key, .. }
            | Command::SetExpiring { key, .. }
            | Command::Expire { key, .. }
            | Command::GetEx { key, .. } => vec![key],
            Command::Delete { keys } | Command::Read { keys } => {
                keys.iter().map(Vec::as_slice).collect()
            }
            Command::Multi { watched, commands } => watched
                .iter()
                .map(|w| w.key.as_slice())
                .chain(commands.iter().flat_map(Command::keys))
                .collect(),
            Command::MSet { pairs } | Command::MSetNx { pairs } => {
                pairs.iter().map(|(k, _)| k.as_slice()).collect()
            }
            Command::Rename { from, to, .. } => vec![from, to],
            Command::Flush | Command::FlushSpan { .. } | Command::Measured { .. } => vec![],
            Command::Split { key, .. } => vec![key],
            Command::Reap { entries } => entries.iter().map(|(_, k)| k.as_slice()).collect(),
            Command::Clocked { command, .. } => command.keys(),
        }
    }

    /// Whether every key the command touches is one `within` takes (a flush touches none).
    pub fn keys_within(&self, within: impl Fn(&[u8]) -> bool) -> bool {
        match self {
            Command::Set { key, .. } | Command::SetExpiring { key, .. } => within(key),
            Command::Clocked { command, .. } => command.keys_within(within),
            command => command.keys().into_iter().all(within),
        }
    }

    /// The command to propose at the time `now` gives: wrapped in [`Command::Clocked`] if what
    /// it does depends on the values it reads, which may have expired. A plain `SET` and `MSET`
    /// read nothing and go as they are (without reading the clock).
    pub fn clocked(self, now: impl FnOnce() -> u64) -> Command {
        match self {
            Command::Set {
                condition: SetCondition::Always,
                ..
            }
            | Command::MSet { .. }
            | Command::Flush
            | Command::FlushSpan { .. }
            | Command::Split { .. }
            | Command::Measured { .. }
            | Command::Clocked { .. } => self,
            command => Command::Clocked {
                now: now(),
                command: Box::new(command),
            },
        }
    }

    /// Applies the command to the stored values that `read` shows.
    pub fn apply(&self, read: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Applied {
        self.apply_at(0, read)
    }

    fn apply_at(&self, now: u64, mut read: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Applied {
        if let Command::Clocked { now, command } = self {
            return command.apply_at(*now, read);
        }
        // The deadline of each value read: the index entry of one that a write replaces or
        // deletes goes with it (one that a plain SET or MSET replaces, unread, stays until its
        // time, when a reap finds it stale).
        let mut read_deadlines: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut applied = self.effect_at(now, |k| {
            let v = read(k);
            if let Some(d) = v.as_deref().and_then(value::deadline) {
                read_deadlines.entry(k.to_vec()).or_insert(d);
            }
            v
        });
        if !read_deadlines.is_empty() {
            // Each key's last write.
            let written: HashMap<&[u8], Option<u64>> = applied
                .writes
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref().and_then(value::deadline)))
                .collect();
            let replaced: Vec<Deadline> = read_deadlines
                .into_iter()
                .filter(|(k, d)| written.get(k.as_slice()).is_some_and(|w| *w != Some(*d)))
                .map(|(k, d)| (d, k))
                .collect();
            applied.unindexed.extend(replaced);
        }
        applied
    }

    /// What the command does at `now` to the stored values `read` shows.
    fn effect_at(&self, now: u64, mut read: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Applied {
        let mut current = |key: &[u8]| {
            read(key).filter(|s| value::live(s, now)).map(|s| Current {
                bytes: value::bytes(&s).to_vec(),
                deadline: value::deadline(&s),
            })
        };
        let plain = |key: &Vec<u8>, v: &[u8]| (key.clone(), Some(value::stored(v, None)));
        match self {
            Command::Clocked { .. } => unreachable!("`apply_at` unwraps a clocked command"),
            Command::Set {
                key,
                value,
                condition,
            } => match condition.allows(|| current(key).is_some()) {
                true => Applied::new(vec![plain(key, value)], CommandOutcome::Ok),
                false => Applied::answer(CommandOutcome::NotSet),
            },
            Command::Delete { keys } => {
                let mut writes = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut deleted = 0;
                for key in keys {
                    // A key named twice is deleted once and counted once, as in Redis.
                    if !seen.insert(key.as_slice()) {
                        continue;
                    }
                    // An expired value is deleted too, uncounted.
                    if let Some(stored) = read(key) {
                        deleted += value::live(&stored, now) as i64;
                        writes.push((key.clone(), None));
                    }
                }
                Applied::new(writes, CommandOutcome::Integer(deleted))
            }
            Command::IncrBy { key, delta } => {
                let (number, deadline) = match current(key) {
                    None => (0, None),
                    Some(c) => match parse_integer(&c.bytes) {
                        Some(n) => (n, c.deadline),
                        None => {
                            return Applied::answer(CommandOutcome::Error(
                                "ERR value is not an integer or out of range".into(),
                            ))
                        }
                    },
                };
                match number.checked_add(*delta) {
                    // The deadline stays, as in Redis.
                    Some(next) => Applied::new(
                        vec![(
                            key.clone(),
                            Some(value::stored(next.to_string().as_bytes(), deadline)),
                        )],
                        CommandOutcome::Integer(next),
                    ),
                    None => Applied::answer(CommandOutcome::Error(
                        "ERR increment or decrement would overflow".into(),
                    )),
                }
            }
            Command::MSet { pairs } => Applied::new(
                pairs.iter().map(|(k, v)| plain(k, v)).collect(),
                CommandOutcome::Ok,
            ),
            Command::SetGet {
                key,
                value,
                condition,
            } => {
                let old = current(key).map(|c| c.bytes);
                let writes = match condition.allows(|| old.is_some()) {
                    true => vec![plain(key, value)],
                    false => vec![],
                };
                Applied::new(writes, CommandOutcome::Value(old))
            }
            Command::GetDel { key } => match read(key) {
                None => Applied::answer(CommandOutcome::Value(None)),
                Some(stored) => {
                    let old = value::live(&stored, now).then(|| value::bytes(&stored).to_vec());
                    Applied::new(vec![(key.clone(), None)], CommandOutcome::Value(old))
                }
            },
            Command::Append { key, value, limit } => {
                let (mut next, deadline) =
                    current(key).map_or((vec![], None), |c| (c.bytes, c.deadline));
                if (next.len() + value.len()) as u64 > *limit {
                    return Applied::answer(CommandOutcome::Error(format!(
                        "ERR string exceeds maximum allowed size (max_value_bytes, {limit})"
                    )));
                }
                next.extend_from_slice(value);
                let len = next.len() as i64;
                Applied::new(
                    vec![(key.clone(), Some(value::stored(&next, deadline)))],
                    CommandOutcome::Integer(len),
                )
            }
            Command::SetExpiring {
                key,
                value,
                condition,
                get,
                expiry,
            } => {
                let old = current(key);
                let outcome = |set: bool, old: Option<Current>| match (get, set) {
                    (true, _) => CommandOutcome::Value(old.map(|c| c.bytes)),
                    (false, true) => CommandOutcome::Ok,
                    (false, false) => CommandOutcome::NotSet,
                };
                if !condition.allows(|| old.is_some()) {
                    return Applied::answer(outcome(false, old));
                }
                let deadline = match expiry {
                    SetExpiry::At(at) => Some(*at),
                    SetExpiry::Keep => old.as_ref().and_then(|c| c.deadline),
                };
                // A deadline already past leaves no value, as in Redis.
                let stored = match deadline {
                    Some(d) if now > d => None,
                    _ => Some(value::stored(value, deadline)),
                };
                Applied::new(vec![(key.clone(), stored)], outcome(true, old))
            }
            Command::Expire { key, at, condition } => {
                let Some(c) = current(key) else {
                    return Applied::answer(CommandOutcome::Integer(0));
                };
                let stored = match at {
                    None if c.deadline.is_none() => {
                        return Applied::answer(CommandOutcome::Integer(0))
                    }
                    None => Some(value::stored(&c.bytes, None)),
                    Some(at) if !condition.allows(c.deadline, *at) => {
                        return Applied::answer(CommandOutcome::Integer(0))
                    }
                    Some(at) if *at <= now => None,
                    Some(at) => Some(value::stored(&c.bytes, Some(*at))),
                };
                Applied::new(vec![(key.clone(), stored)], CommandOutcome::Integer(1))
            }
            Command::GetEx { key, at } => {
                let Some(c) = current(key) else {
                    return Applied::answer(CommandOutcome::Value(None));
                };
                let stored = match at {
                    Some(at) if *at <= now => None,
                    _ => Some(value::stored(&c.bytes, *at)),
                };
                Applied::new(
                    vec![(key.clone(), stored)],
                    CommandOutcome::Value(Some(c.bytes)),
                )
            }
            Command::Rename { from, to, nx } => {
                let Some(c) = current(from) else {
                    return Applied::answer(CommandOutcome::Error("ERR no such key".into()));
                };
                // RENAMENX answers whether it moved the value; RENAME answers OK.
                let answer = |moved| match nx {
                    true => CommandOutcome::Integer(moved),
                    false => CommandOutcome::Ok,
                };
                // Read whatever `nx`, so that the index entry of a deadline it had goes.
                let taken = current(to).is_some();
                if from == to || (*nx && taken) {
                    return Applied::answer(answer(0));
                }
                let moved = value::stored(&c.bytes, c.deadline);
                Applied::new(
                    vec![(from.clone(), None), (to.clone(), Some(moved))],
                    answer(1),
                )
            }
            Command::MSetNx { pairs } => {
                // Each key read once, until one is taken; all of them if none is, so that the
                // index entries of the expired go.
                let mut seen = std::collections::HashSet::new();
                for (k, _) in pairs {
                    let live =
                        seen.insert(k.as_slice()) && read(k).is_some_and(|s| value::live(&s, now));
                    if live {
                        return Applied::answer(CommandOutcome::Integer(0));
                    }
                }
                Applied::new(
                    pairs.iter().map(|(k, v)| plain(k, v)).collect(),
                    CommandOutcome::Integer(1),
                )
            }
            // Applied by the Store, which sees the ranges.
            Command::Flush
            | Command::FlushSpan { .. }
            | Command::Split { .. }
            | Command::Measured { .. } => Applied::answer(CommandOutcome::Ok),
            Command::Read { keys } => Applied::answer(CommandOutcome::Values(
                keys.iter()
                    .map(|k| read(k).filter(|s| value::live(s, now)))
                    .collect(),
            )),
            Command::Multi { watched, commands } => {
                let too_much = || {
                    Applied::answer(CommandOutcome::Error(format!(
                        "ERR a transaction may read at most {MULTI_READ_BYTES} bytes of values; \
                         nothing was applied"
                    )))
                };
                let mut bytes_read = 0;
                for w in watched {
                    let stored = read(&w.key).filter(|s| value::live(s, now));
                    bytes_read += stored.as_ref().map_or(0, Vec::len);
                    if bytes_read > MULTI_READ_BYTES {
                        return too_much();
                    }
                    if Watched::digest(stored.as_deref()) != w.digest {
                        return Applied::answer(CommandOutcome::Transaction(None));
                    }
                }
                // Each key's last write, in the order of first writes, and where it is: only
                // that write is made (and so indexed), as one replaced by a later command would
                // leave an index entry for a deadline never stored.
                let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
                let mut unindexed = Vec::new();
                let mut outcomes = Vec::with_capacity(commands.len());
                for command in commands {
                    // Each command sees the writes of those before it.
                    let mut seen = |k: &[u8]| {
                        // Past the bound, nothing more is read: the transaction fails whole.
                        if bytes_read > MULTI_READ_BYTES {
                            return None;
                        }
                        let v = match at.get(k) {
                            Some(&i) => writes[i].1.clone(),
                            None => read(k),
                        };
                        bytes_read += v.as_ref().map_or(0, Vec::len);
                        v
                    };
                    // As `dyn`, or each level of commands would be a new instance.
                    let seen: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>> = &mut seen;
                    let applied = command.apply_at(now, seen);
                    for (k, v) in applied.writes {
                        match at.get(&k) {
                            Some(&i) => writes[i].1 = v,
                            None => {
                                at.insert(k.clone(), writes.len());
                                writes.push((k, v));
                            }
                        }
                    }
                    if bytes_read > MULTI_READ_BYTES {
                        return too_much();
                    }
                    unindexed.extend(applied.unindexed);
                    outcomes.push(applied.outcome);
                }
                Applied {
                    writes,
                    unindexed,
                    outcome: CommandOutcome::Transaction(Some(outcomes)),
                }
            }
            Command::Reap { entries } => {
                let mut writes = Vec::new();
                let mut unindexed = Vec::new();
                for (indexed, key) in entries {
                    let stored = read(key);
                    let deadline = stored.as_deref().and_then(value::deadline);
                    if stored.as_ref().is_some_and(|s| !value::live(s, now))
                        && !writes.iter().any(|(k, _): &(Vec<u8>, _)| k == key)
                    {
                        writes.push((key.clone(), None));
                    }
                    // The entry stays only while it is the deadline of a live value.
                    let live = stored.as_ref().is_some_and(|s| value::live(s, now));
                    if !(live && deadline == Some(*indexed)) {
                        unindexed.push((*indexed, key.clone()));
                    }
                }
                let deleted = writes.len() as i64;
                Applied {
                    writes,
                    unindexed,
                    outcome: CommandOutcome::Integer(deleted),
                }
            }
        }
    }
}

/// Parses a value the way Redis does for `INCR`: a decimal i64 with no spaces, no leading `+`,
/// no leading zeros.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    if s.is_empty() || s.len() > 20 || s.starts_with('+') {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || (digits.len() > 1 && digits.starts_with('0'))
        || digits == "0" && s != "0"
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn run(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, cmd: Command) -> CommandOutcome {
        let applied = cmd.apply(|k| state.get(k).cloned());
        for (k, v) in applied.writes {
            match v {
                Some(v) => state.insert(k, v),
                None => state.remove(&k),
            };
        }
        applied.outcome
    }

    /// Runs `cmd` as proposed at `now`, keeping the index of deadlines as the Store does.
    fn run_at(
        state: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        index: &mut BTreeSet<(u64, Vec<u8>)>,
        now: u64,
        cmd: Command,
    ) -> CommandOutcome {
        let applied = cmd.clocked(|| now).apply(|k| state.get(k).cloned());
        for entry in applied.unindexed {
            index.remove(&entry);
        }
        for (k, v) in applied.writes {
            match v {
                Some(v) => {
                    if let Some(d) = value::deadline(&v) {
                        index.insert((d, k.clone()));
                    }
                    state.insert(k, v)
                }
                None => state.remove(&k),
            };
        }
        applied.outcome
    }

    fn get(state: &BTreeMap<Vec<u8>, Vec<u8>>, k: &str) -> Option<Vec<u8>> {
        state.get(k.as_bytes()).map(|v| value::bytes(v).to_vec())
    }

    fn set(k: &str, v: &str, condition: SetCondition) -> Command {
        Command::Set {
            key: k.into(),
            value: v.into(),
            condition,
        }
    }

    #[test]
    fn set_conditions() {
        let mut s = BTreeMap::new();
        assert_eq!(
            run(&mut s, set("a", "1", SetCondition::IfPresent)),
            CommandOutcome::NotSet
        );
        assert_eq!(
            run(&mut s, set("a", "1", SetCondition::IfAbsent)),
            CommandOutcome::Ok
        );
        assert_eq!(
            run(&mut s, set("a", "2", SetCondition::IfAbsent)),
            CommandOutcome::NotSet
        );
        assert_eq!(
            run(&mut s, set("a", "3", SetCondition::IfPresent)),
            CommandOutcome::Ok
        );
        assert_eq!(get(&s, "a"), Some(b"3".to_vec()));
    }

    #[test]
    fn delete_counts_existing_keys_once() {
        let mut s = BTreeMap::new();
        run(&mut s, set("a", "1", SetCondition::Always));
        let del = Command::Delete {
            keys: vec![b"a".to_vec(), b"a".to_vec(), b"b".to_vec()],
        };
        assert_eq!(run(&mut s, del), CommandOutcome::Integer(1));
        assert!(s.is_empty());
    }

    #[test]
    fn set_get_answers_the_old_value_whether_or_not_it_sets() {
        let mut s = BTreeMap::new();
        let set_get = |v: &str, condition| Command::SetGet {
            key: b"a".to_vec(),
            value: v.into(),
            condition,
        };
        let value = |v: &str| CommandOutcome::Value(Some(v.into()));
        assert_eq!(
            run(&mut s, set_get("1", SetCondition::IfPresent)),
            CommandOutcome::Value(None)
        );
        assert!(s.is_empty());
        assert_eq!(
            run(&mut s, set_get("1", SetCondition::Always)),
            CommandOutcome::Value(None)
        );
        assert_eq!(
            run(&mut s, set_get("2", SetCondition::IfAbsent)),
            value("1")
        );
        assert_eq!(
            run(&mut s, set_get("3", SetCondition::IfPresent)),
            value("1")
        );
        assert_eq!(get(&s, "a"), Some(b"3".to_vec()));
    }

    #[test]
    fn get_del_answers_what_it_deleted() {
        let mut s = BTreeMap::new();
        let get_del = || Command::GetDel { key: b"a".to_vec() };
        assert_eq!(run(&mut s, get_del()), CommandOutcome::Value(None));
        run(&mut s, set("a", "1", SetCondition::Always));
        assert_eq!(
            run(&mut s, get_del()),
            CommandOutcome::Value(Some(b"1".to_vec()))
        );
        assert!(s.is_empty());
    }

    #[test]
    fn append_grows_a_value_up_to_its_limit() {
        let mut s = BTreeMap::new();
        let append = |v: &str| Command::Append {
            key: b"a".to_vec(),
            value: v.into(),
            limit: 5,
        };
        assert_eq!(run(&mut s, append("ab")), CommandOutcome::Integer(2));
        assert_eq!(run(&mut s, append("cde")), CommandOutcome::Integer(5));
        assert!(
            matches!(run(&mut s, append("f")), CommandOutcome::Error(e) if e.contains("maximum"))
        );
        assert_eq!(get(&s, "a"), Some(b"abcde".to_vec()));
    }

    /// Entries already in logs were encoded with the variants' numbers as they were: new
    /// variants go after them.
    #[test]
    fn the_encoding_of_the_first_commands_is_unchanged() {
        let set = set("k", "v", SetCondition::IfAbsent);
        assert_eq!(
            crate::codec::encode(&set),
            [0, 1, b'k', 1, b'v', 1].to_vec()
        );
        let append = Command::Append {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            limit: 9,
        };
        assert_eq!(crate::codec::encode(&append)[0], 6);
    }

    #[test]
    fn incr_parses_like_redis() {
        let mut s = BTreeMap::new();
        let incr = |d| Command::IncrBy {
            key: b"n".to_vec(),
            delta: d,
        };
        assert_eq!(run(&mut s, incr(5)), CommandOutcome::Integer(5));
        assert_eq!(run(&mut s, incr(-7)), CommandOutcome::Integer(-2));
        run(&mut s, set("n", "007", SetCondition::Always));
        assert!(matches!(run(&mut s, incr(1)), CommandOutcome::Error(_)));
        run(
            &mut s,
            set("n", &i64::MAX.to_string(), SetCondition::Always),
        );
        assert_eq!(
            run(&mut s, incr(1)),
            CommandOutcome::Error("ERR increment or decrement would overflow".into())
        );
        assert_eq!(parse_integer(b"-0"), None);
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b" 1"), None);
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
    }

    fn set_expiring(k: &str, v: &str, expiry: SetExpiry, condition: SetCondition) -> Command {
        Command::SetExpiring {
            key: k.into(),
            value: v.into(),
            condition,
            get: false,
            expiry,
        }
    }

    fn expire(k: &str, at: Option<u64>, condition: ExpireCondition) -> Command {
        Command::Expire {
            key: k.into(),
            at,
            condition,
        }
    }

    /// Every command that reads a value sees it gone once its deadline is past, whatever
    /// it is; the commands that keep a deadline keep it.
    #[test]
    fn a_value_past_its_deadline_is_absent_to_every_command() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        let at = SetExpiry::At(1000);
        let always = SetCondition::Always;
        assert_eq!(
            run_at(&mut s, &mut ix, 10, set_expiring("n", "5", at, always)),
            CommandOutcome::Ok
        );
        assert_eq!(ix, BTreeSet::from([(1000, b"n".to_vec())]));
        let incr = || Command::IncrBy {
            key: b"n".to_vec(),
            delta: 1,
        };
        // INCR and APPEND keep the deadline.
        assert_eq!(
            run_at(&mut s, &mut ix, 1000, incr()),
            CommandOutcome::Integer(6)
        );
        assert_eq!(value::deadline(&s[&b"n"[..]]), Some(1000));
        // Past it, the key counts as absent.
        assert_eq!(
            run_at(&mut s, &mut ix, 1001, incr()),
            CommandOutcome::Integer(1)
        );
        assert_eq!(value::deadline(&s[&b"n"[..]]), None);
        let append = |v: &str| Command::Append {
            key: b"a".to_vec(),
            value: v.into(),
            limit: 100,
        };
        run_at(&mut s, &mut ix, 0, set_expiring("a", "xy", at, always));
        assert_eq!(
            run_at(&mut s, &mut ix, 999, append("z")),
            CommandOutcome::Integer(3)
        );
        assert_eq!(value::deadline(&s[&b"a"[..]]), Some(1000));
        assert_eq!(
            run_at(&mut s, &mut ix, 1001, append("z")),
            CommandOutcome::Integer(1)
        );
        // NX sets over an expired value, XX does not.
        run_at(&mut s, &mut ix, 0, set_expiring("k", "v", at, always));
        let xx = set("k", "w", SetCondition::IfPresent);
        assert_eq!(run_at(&mut s, &mut ix, 2000, xx), CommandOutcome::NotSet);
        let nx = set("k", "w", SetCondition::IfAbsent);
        assert_eq!(run_at(&mut s, &mut ix, 2000, nx), CommandOutcome::Ok);
        assert_eq!(value::deadline(&s[&b"k"[..]]), None);
        // DEL removes an expired value without counting it; GETDEL answers nil for it.
        run_at(&mut s, &mut ix, 0, set_expiring("d", "v", at, always));
        let del = Command::Delete {
            keys: vec![b"d".to_vec()],
        };
        assert_eq!(
            run_at(&mut s, &mut ix, 1500, del),
            CommandOutcome::Integer(0)
        );
        assert!(!s.contains_key(&b"d"[..]));
        run_at(&mut s, &mut ix, 0, set_expiring("g", "v", at, always));
        let get_del = Command::GetDel { key: b"g".to_vec() };
        assert_eq!(
            run_at(&mut s, &mut ix, 1500, get_del),
            CommandOutcome::Value(None)
        );
        // A command that is not clocked applies as at time zero.
        run_at(&mut s, &mut ix, 0, set_expiring("z", "v", at, always));
        assert_eq!(
            run(&mut s, Command::GetDel { key: b"z".to_vec() }),
            CommandOutcome::Value(Some(b"v".to_vec()))
        );
    }

    #[test]
    fn set_with_a_deadline_answers_and_keeps_as_redis_does() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        let always = SetCondition::Always;
        run_at(
            &mut s,
            &mut ix,
            0,
            set_expiring("k", "1", SetExpiry::At(500), always),
        );
        // KEEPTTL keeps the deadline; a plain SET drops it.
        let keep = set_expiring("k", "2", SetExpiry::Keep, SetCondition::IfPresent);
        assert_eq!(run_at(&mut s, &mut ix, 100, keep), CommandOutcome::Ok);
        assert_eq!(value::deadline(&s[&b"k"[..]]), Some(500));
        assert_eq!(get(&s, "k"), Some(b"2".to_vec()));
        run_at(&mut s, &mut ix, 100, set("k", "3", always));
        assert_eq!(value::deadline(&s[&b"k"[..]]), None);
        // GET answers the old value, set or not.
        let get_set = |v: &str, condition| Command::SetExpiring {
            key: b"k".to_vec(),
            value: v.into(),
            condition,
            get: true,
            expiry: SetExpiry::At(900),
        };
        assert_eq!(
            run_at(&mut s, &mut ix, 100, get_set("4", SetCondition::IfAbsent)),
            CommandOutcome::Value(Some(b"3".to_vec()))
        );
        assert_eq!(
            run_at(&mut s, &mut ix, 100, get_set("4", always)),
            CommandOutcome::Value(Some(b"3".to_vec()))
        );
        assert_eq!(value::deadline(&s[&b"k"[..]]), Some(900));
        // A deadline already past leaves nothing.
        let past = set_expiring("k", "5", SetExpiry::At(50), always);
        assert_eq!(run_at(&mut s, &mut ix, 100, past), CommandOutcome::Ok);
        assert!(!s.contains_key(&b"k"[..]));
    }

    #[test]
    fn expire_follows_its_conditions_and_persist_drops_the_deadline() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        use ExpireCondition::*;
        let n = |s: &mut BTreeMap<_, _>, ix: &mut BTreeSet<_>, c| run_at(s, ix, 100, c);
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(500), Always)),
            CommandOutcome::Integer(0)
        );
        run_at(&mut s, &mut ix, 0, set("k", "v", SetCondition::Always));
        assert_eq!(
            n(&mut s, &mut ix, expire("k", None, Always)),
            CommandOutcome::Integer(0)
        );
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(500), IfSome)),
            CommandOutcome::Integer(0)
        );
        // No deadline counts as forever: GT refuses, LT accepts.
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(500), IfLater)),
            CommandOutcome::Integer(0)
        );
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(500), IfEarlier)),
            CommandOutcome::Integer(1)
        );
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(600), IfNone)),
            CommandOutcome::Integer(0)
        );
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(600), IfEarlier)),
            CommandOutcome::Integer(0)
        );
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(600), IfLater)),
            CommandOutcome::Integer(1)
        );
        assert_eq!(value::deadline(&s[&b"k"[..]]), Some(600));
        // The index holds the deadline the key has, not the one it had.
        assert_eq!(ix, BTreeSet::from([(600, b"k".to_vec())]));
        assert_eq!(
            n(&mut s, &mut ix, expire("k", None, Always)),
            CommandOutcome::Integer(1)
        );
        assert_eq!(
            (value::deadline(&s[&b"k"[..]]), get(&s, "k")),
            (None, Some(b"v".to_vec()))
        );
        // A deadline already past deletes the key.
        assert_eq!(
            n(&mut s, &mut ix, expire("k", Some(100), Always)),
            CommandOutcome::Integer(1)
        );
        assert!(s.is_empty());
        // GETEX sets or drops a deadline and answers the value.
        run_at(&mut s, &mut ix, 0, set("g", "v", SetCondition::Always));
        let get_ex = |at| Command::GetEx {
            key: b"g".to_vec(),
            at,
        };
        assert_eq!(
            n(&mut s, &mut ix, get_ex(Some(700))),
            CommandOutcome::Value(Some(b"v".to_vec()))
        );
        assert_eq!(value::deadline(&s[&b"g"[..]]), Some(700));
        assert_eq!(
            n(&mut s, &mut ix, get_ex(None)),
            CommandOutcome::Value(Some(b"v".to_vec()))
        );
        assert_eq!(value::deadline(&s[&b"g"[..]]), None);
    }

    /// A reap deletes what has expired and drops the index entries that no longer name a
    /// live value's deadline, and only those.
    #[test]
    fn a_reap_deletes_the_expired_and_keeps_the_index_true() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        let always = SetCondition::Always;
        run_at(
            &mut s,
            &mut ix,
            0,
            set_expiring("a", "1", SetExpiry::At(100), always),
        );
        run_at(
            &mut s,
            &mut ix,
            0,
            set_expiring("b", "1", SetExpiry::At(100), always),
        );
        run_at(
            &mut s,
            &mut ix,
            0,
            set_expiring("c", "1", SetExpiry::At(100), always),
        );
        // b is set again with a later deadline (its entry at 100 goes, as it was read), c with
        // none by a plain SET, which reads nothing: its entry at 100 is left stale.
        run_at(
            &mut s,
            &mut ix,
            50,
            set_expiring("b", "2", SetExpiry::At(900), always),
        );
        run_at(&mut s, &mut ix, 50, set("c", "2", always));
        let entries: Vec<(u64, Vec<u8>)> = ix.iter().filter(|(d, _)| *d < 200).cloned().collect();
        assert_eq!(entries, [(100, b"a".to_vec()), (100, b"c".to_vec())]);
        let reap = Command::Reap { entries };
        assert_eq!(
            run_at(&mut s, &mut ix, 200, reap),
            CommandOutcome::Integer(1)
        );
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [&b"b".to_vec(), &b"c".to_vec()]
        );
        assert_eq!(ix, BTreeSet::from([(900, b"b".to_vec())]));
    }

    #[test]
    fn a_transaction_sees_its_own_writes_and_keeps_the_index_true() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        let always = SetCondition::Always;
        for (k, deadline) in [("a", 100), ("gone", 10)] {
            let set = set_expiring(k, "1", SetExpiry::At(deadline), always);
            run_at(&mut s, &mut ix, 0, set);
        }
        let read = |keys: &[&str]| Command::Read {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        };
        // a's deadline moves twice, and INCR keeps the last; b is given a deadline, then
        // replaced by a plain SET; `gone` has expired by the transaction's time.
        let multi = Command::Multi {
            watched: vec![],
            commands: vec![
                expire("a", Some(500), ExpireCondition::Always),
                expire("a", Some(300), ExpireCondition::Always),
                Command::IncrBy {
                    key: b"a".to_vec(),
                    delta: 1,
                },
                set_expiring("b", "x", SetExpiry::At(200), always),
                set("b", "y", always),
                read(&["a", "b", "gone"]),
            ],
        };
        let i = CommandOutcome::Integer;
        assert_eq!(
            run_at(&mut s, &mut ix, 50, multi),
            CommandOutcome::Transaction(Some(vec![
                i(1),
                i(1),
                i(2),
                CommandOutcome::Ok,
                CommandOutcome::Ok,
                CommandOutcome::Values(vec![
                    Some(value::stored(b"2", Some(300))),
                    Some(value::stored(b"y", None)),
                    None
                ]),
            ]))
        );
        assert_eq!(
            s.get(b"a".as_slice()),
            Some(&value::stored(b"2", Some(300)))
        );
        // Only the deadlines stored are indexed (and `gone`'s, until a reap).
        let want = [(10, b"gone".to_vec()), (300, b"a".to_vec())];
        assert_eq!(ix, BTreeSet::from(want));
    }

    #[test]
    fn a_transaction_whose_watched_key_changed_does_nothing() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        let always = SetCondition::Always;
        run_at(
            &mut s,
            &mut ix,
            0,
            set_expiring("w", "1", SetExpiry::At(100), always),
        );
        let multi = |stored: Option<Vec<u8>>| Command::Multi {
            watched: vec![Watched::seen(b"w".to_vec(), stored.as_deref())],
            commands: vec![set("other", "1", always)],
        };
        let seen = value::stored(b"1", Some(100));
        // Another value, or none where one was seen: nothing is applied.
        let before = s.clone();
        for (now, stored) in [
            (50, Some(value::stored(b"1", None))),
            (50, None),
            (150, Some(seen.clone())),
        ] {
            assert_eq!(
                run_at(&mut s, &mut ix, now, multi(stored)),
                CommandOutcome::Transaction(None)
            );
            assert_eq!(s, before);
        }
        // The value seen, or none once it has expired: applied.
        for (now, stored) in [(50, Some(seen)), (150, None)] {
            let applied = run_at(&mut s, &mut ix, now, multi(stored));
            assert_eq!(
                applied,
                CommandOutcome::Transaction(Some(vec![CommandOutcome::Ok]))
            );
        }
        assert_eq!(get(&s, "other"), Some(b"1".to_vec()));
    }
    #[test]
    fn rename_and_msetnx_move_deadlines_and_keep_the_index_true() {
        let (mut s, mut ix) = (BTreeMap::new(), BTreeSet::new());
        for (k, deadline) in [("a", 100), ("b", 200)] {
            let set = set_expiring(k, "1", SetExpiry::At(deadline), SetCondition::Always);
            run_at(&mut s, &mut ix, 0, set);
        }
        let rename = |from: &str, to: &str, nx| Command::Rename {
            from: from.into(),
            to: to.into(),
            nx,
        };
        assert_eq!(
            run_at(&mut s, &mut ix, 0, rename("a", "b", true)),
            CommandOutcome::Integer(0)
        );
        assert_eq!(
            run_at(&mut s, &mut ix, 0, rename("a", "b", false)),
            CommandOutcome::Ok
        );
        assert_eq!(
            s.get(b"b".as_slice()),
            Some(&value::stored(b"1", Some(100)))
        );
        assert_eq!(ix, BTreeSet::from([(100, b"b".to_vec())]));
        // Expired, it is no key to move, and no key to keep MSETNX from writing.
        assert_eq!(
            run_at(&mut s, &mut ix, 150, rename("b", "c", false)),
            CommandOutcome::Error("ERR no such key".into())
        );
        let msetnx = Command::MSetNx {
            pairs: vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"d".to_vec(), b"2".to_vec()),
            ],
        };
        assert_eq!(
            run_at(&mut s, &mut ix, 150, msetnx.clone()),
            CommandOutcome::Integer(1)
        );
        assert_eq!(
            run_at(&mut s, &mut ix, 150, msetnx),
            CommandOutcome::Integer(0)
        );
        assert_eq!(get(&s, "b"), Some(b"2".to_vec()));
        assert!(ix.is_empty(), "{ix:?}");
    }
    /// A transaction or an `MSETNX` over many keys reads no more than it must, on every
    /// replica: a transaction stops reading once past `MULTI_READ_BYTES` (and fails whole),
    /// `MSETNX` reads each key once and stops at the first taken.
    #[test]
    fn big_commands_stop_reading_when_they_can() {
        let big = value::stored(&vec![b'v'; 1 << 20], None);
        let reads = std::cell::Cell::new(0);
        let read = |k: &[u8]| {
            reads.set(reads.get() + 1);
            (k == b"big").then(|| big.clone())
        };
        let multi = Command::Multi {
            watched: vec![],
            commands: vec![Command::Read {
                keys: vec![b"big".to_vec(); 1000],
            }],
        };
        let applied = multi.apply(read);
        assert!(matches!(applied.outcome, CommandOutcome::Error(e) if e.contains("at most")));
        assert!(applied.writes.is_empty());
        assert_eq!(reads.get(), MULTI_READ_BYTES / big.len() + 1);

        let pairs = |first: &str| {
            std::iter::once(first)
                .chain(std::iter::repeat_n("absent", 999))
                .map(|k| (k.as_bytes().to_vec(), b"1".to_vec()))
                .collect()
        };
        for (first, outcome, read_count) in [("big", 0, 1), ("new", 1, 2)] {
            reads.set(0);
            let msetnx = Command::MSetNx {
                pairs: pairs(first),
            };
            assert_eq!(msetnx.apply(read).outcome, CommandOutcome::Integer(outcome));
            assert_eq!(reads.get(), read_count);
        }
    }
}
