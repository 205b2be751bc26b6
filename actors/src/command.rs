//! The commands that are replicated through a range's log, and how one is applied.
//!
//! A command touches keys of one range only; the Store splits multi-key client commands per
//! range before proposing. Applying is a pure function of the command and the values it reads,
//! so every replica computes the same result from the same log.

use serde::{Deserialize, Serialize};

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
}

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
}

/// The effect of applying a command: the writes to make (`None` deletes) and the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub outcome: CommandOutcome,
}

impl Command {
    /// Every key the command touches, in order.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Command::Set { key, .. }
            | Command::IncrBy { key, .. }
            | Command::SetGet { key, .. }
            | Command::GetDel { key }
            | Command::Append { key, .. } => vec![key],
            Command::Delete { keys } => keys.iter().map(Vec::as_slice).collect(),
            Command::MSet { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
        }
    }

    /// Applies the command to the state that `read` shows.
    pub fn apply(&self, mut read: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> Applied {
        match self {
            Command::Set {
                key,
                value,
                condition,
            } => {
                let write = condition.allows(|| read(key).is_some());
                if write {
                    Applied {
                        writes: vec![(key.clone(), Some(value.clone()))],
                        outcome: CommandOutcome::Ok,
                    }
                } else {
                    Applied {
                        writes: vec![],
                        outcome: CommandOutcome::NotSet,
                    }
                }
            }
            Command::Delete { keys } => {
                let mut writes = Vec::new();
                for key in keys {
                    // A key named twice is deleted once and counted once, as in Redis.
                    let already = writes.iter().any(|(k, _): &(Vec<u8>, _)| k == key);
                    if !already && read(key).is_some() {
                        writes.push((key.clone(), None));
                    }
                }
                let deleted = writes.len() as i64;
                Applied {
                    writes,
                    outcome: CommandOutcome::Integer(deleted),
                }
            }
            Command::IncrBy { key, delta } => {
                let current = match read(key) {
                    None => 0,
                    Some(bytes) => match parse_integer(&bytes) {
                        Some(n) => n,
                        None => {
                            return Applied {
                                writes: vec![],
                                outcome: CommandOutcome::Error(
                                    "ERR value is not an integer or out of range".into(),
                                ),
                            }
                        }
                    },
                };
                match current.checked_add(*delta) {
                    Some(next) => Applied {
                        writes: vec![(key.clone(), Some(next.to_string().into_bytes()))],
                        outcome: CommandOutcome::Integer(next),
                    },
                    None => Applied {
                        writes: vec![],
                        outcome: CommandOutcome::Error(
                            "ERR increment or decrement would overflow".into(),
                        ),
                    },
                }
            }
            Command::MSet { pairs } => Applied {
                writes: pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect(),
                outcome: CommandOutcome::Ok,
            },
            Command::SetGet {
                key,
                value,
                condition,
            } => {
                let old = read(key);
                let write = condition.allows(|| old.is_some());
                Applied {
                    writes: match write {
                        true => vec![(key.clone(), Some(value.clone()))],
                        false => vec![],
                    },
                    outcome: CommandOutcome::Value(old),
                }
            }
            Command::GetDel { key } => {
                let old = read(key);
                Applied {
                    writes: match old {
                        Some(_) => vec![(key.clone(), None)],
                        None => vec![],
                    },
                    outcome: CommandOutcome::Value(old),
                }
            }
            Command::Append { key, value, limit } => {
                let mut next = read(key).unwrap_or_default();
                if (next.len() + value.len()) as u64 > *limit {
                    return Applied {
                        writes: vec![],
                        outcome: CommandOutcome::Error(format!(
                            "ERR string exceeds maximum allowed size (max_value_bytes, {limit})"
                        )),
                    };
                }
                next.extend_from_slice(value);
                let len = next.len() as i64;
                Applied {
                    writes: vec![(key.clone(), Some(next))],
                    outcome: CommandOutcome::Integer(len),
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
    use std::collections::BTreeMap;

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
        assert_eq!(s.get(&b"a"[..]), Some(&b"3".to_vec()));
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
        assert_eq!(s.get(&b"a"[..]), Some(&b"3".to_vec()));
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
        assert_eq!(s.get(&b"a"[..]), Some(&b"abcde".to_vec()));
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
}
