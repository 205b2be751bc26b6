//! Key expiry's commands: the options that give a value a deadline (`SET ... EX`, `SETEX`,
//! `GETEX`, `EXPIRE` and kin), checked in Redis's order with Redis's errors, and the answers of
//! `TTL` and kin. Deadlines are absolute (milliseconds since the Unix epoch): a time to live is
//! added to the node's clock here, before the command is proposed, as Redis propagates
//! `PXAT` to its replicas.

use bytes::Bytes;
use flotilla_actors::command::{parse_integer, Command, ExpireCondition, SetCondition, SetExpiry};
use flotilla_actors::value::Value;

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn invalid(command: &str) -> String {
    format!("ERR invalid expire time in '{command}' command")
}

/// An option that gives a value a deadline: its unit and whether it counts from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    /// `EX`: seconds from now.
    In,
    /// `PX`: milliseconds from now.
    InMillis,
    /// `EXAT`: a Unix time in seconds.
    At,
    /// `PXAT`: a Unix time in milliseconds.
    AtMillis,
}

impl Deadline {
    fn named(option: &str) -> Option<Deadline> {
        Some(match option {
            "EX" => Deadline::In,
            "PX" => Deadline::InMillis,
            "EXAT" => Deadline::At,
            "PXAT" => Deadline::AtMillis,
            _ => return None,
        })
    }

    fn seconds(self) -> bool {
        matches!(self, Deadline::In | Deadline::At)
    }

    /// The deadline `arg` gives at the time `now` gives, as `SET`, `SETEX` and `GETEX` check
    /// it (`getExpireMillisecondsOrReply`): a positive number that stays positive.
    fn of(self, command: &str, arg: &[u8], now: impl FnOnce() -> u64) -> Result<u64, String> {
        let n = parse_integer(arg).ok_or(NOT_AN_INTEGER)?;
        if n <= 0 || (self.seconds() && n > i64::MAX / 1000) {
            return Err(invalid(command));
        }
        let mut ms = if self.seconds() { n * 1000 } else { n };
        if matches!(self, Deadline::In | Deadline::InMillis) {
            ms = ms
                .checked_add(now() as i64)
                .ok_or_else(|| invalid(command))?;
        }
        Ok(ms as u64)
    }
}

fn upper(b: &Bytes) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// The options of `SET` and `GETEX`, as Redis's `parseExtendedStringArgumentsOrReply` takes
/// them: in any order, an option given again replacing its value, one kind of deadline only.
#[derive(Default)]
struct Options<'a> {
    condition: Option<SetCondition>,
    get: bool,
    keep: bool,
    persist: bool,
    deadline: Option<(Deadline, &'a Bytes)>,
}

/// Parses `options`, those of `SET` (`set`) or of `GETEX`.
fn parse_options(options: &[Bytes], set: bool) -> Result<Options<'_>, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < options.len() {
        let name = upper(&options[i]);
        match name.as_str() {
            "NX" if set && o.condition != Some(SetCondition::IfPresent) => {
                o.condition = Some(SetCondition::IfAbsent)
            }
            "XX" if set && o.condition != Some(SetCondition::IfAbsent) => {
                o.condition = Some(SetCondition::IfPresent)
            }
            "GET" if set => o.get = true,
            "KEEPTTL" if set && o.deadline.is_none() => o.keep = true,
            "PERSIST" if !set && o.deadline.is_none() => o.persist = true,
            option => match Deadline::named(option) {
                Some(d)
                    if !o.keep
                        && !o.persist
                        && o.deadline.is_none_or(|(given, _)| given == d)
                        && i + 1 < options.len() =>
                {
                    o.deadline = Some((d, &options[i + 1]));
                    i += 1;
                }
                _ => return Err(SYNTAX.into()),
            },
        }
        i += 1;
    }
    Ok(o)
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`.
pub fn parse_set(a: &[Bytes], now: impl FnOnce() -> u64) -> Result<Command, String> {
    let o = parse_options(&a[2..], true)?;
    let condition = o.condition.unwrap_or(SetCondition::Always);
    let expiry = match o.deadline {
        Some((d, arg)) => Some(SetExpiry::At(d.of("set", arg, now)?)),
        None => o.keep.then_some(SetExpiry::Keep),
    };
    let (key, value) = (a[0].to_vec(), a[1].to_vec());
    Ok(match (expiry, o.get) {
        (Some(expiry), get) => Command::SetExpiring {
            key,
            value,
            condition,
            get,
            expiry,
        },
        (None, true) => Command::SetGet {
            key,
            value,
            condition,
        },
        (None, false) => Command::Set {
            key,
            value,
            condition,
        },
    })
}

/// `SETEX key seconds value` and `PSETEX key milliseconds value`.
pub fn parse_setex(name: &str, a: &[Bytes], now: impl FnOnce() -> u64) -> Result<Command, String> {
    let unit = match name {
        "setex" => Deadline::In,
        _ => Deadline::InMillis,
    };
    Ok(Command::SetExpiring {
        key: a[0].to_vec(),
        value: a[2].to_vec(),
        condition: SetCondition::Always,
        get: false,
        expiry: SetExpiry::At(unit.of(name, &a[1], now)?),
    })
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`: `None` without an option (a plain read).
/// A time that is not valid is an error only for a key that exists (Redis looks the key up
/// first): it comes as `Some(Err(..))`, for the caller to answer once it has read the key.
pub fn parse_getex(
    a: &[Bytes],
    now: impl FnOnce() -> u64,
) -> Result<Option<Result<Command, String>>, String> {
    let o = parse_options(&a[1..], false)?;
    let key = a[0].to_vec();
    Ok(match o.deadline {
        Some((d, arg)) => Some(
            d.of("getex", arg, now)
                .map(|at| Command::GetEx { key, at: Some(at) }),
        ),
        None if o.persist => Some(Ok(Command::GetEx { key, at: None })),
        None => None,
    })
}

/// `EXPIRE key seconds [NX|XX|GT|LT]`, `PEXPIRE`, `EXPIREAT` and `PEXPIREAT`, checked as
/// Redis's `expireGenericCommand` does: the options, then the number, which may be negative
/// (a deadline already past deletes the key). The error may hold the client's bytes.
pub fn parse_expire(
    name: &str,
    a: &[Bytes],
    now: impl FnOnce() -> u64,
) -> Result<Command, Vec<u8>> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[2..] {
        match upper(o).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => return Err([&b"ERR Unsupported option "[..], o].concat()),
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    let mut when = parse_integer(&a[1]).ok_or(NOT_AN_INTEGER)?;
    if matches!(name, "expire" | "expireat") {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return Err(invalid(name).into());
        }
        when *= 1000;
    }
    if matches!(name, "expire" | "pexpire") {
        when = when
            .checked_add(now() as i64)
            .ok_or_else(|| invalid(name))?;
    }
    let condition = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, true, _, true) => ExpireCondition::IfSomeAndEarlier,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    };
    Ok(Command::Expire {
        key: a[0].to_vec(),
        at: Some(when.max(0) as u64),
        condition,
    })
}

/// The answer of `TTL`, `PTTL`, `EXPIRETIME` and `PEXPIRETIME` (`name`) for a key's value at
/// `now`: -2 for no key, -1 for no deadline, else the time left or the deadline, in seconds
/// rounded to the nearest (as Redis does) or in milliseconds.
pub fn ttl(name: &str, value: Option<&Value>, now: u64) -> i64 {
    let Some(value) = value else { return -2 };
    let Some(deadline) = value.deadline else {
        return -1;
    };
    let ms = match name {
        "expiretime" | "pexpiretime" => deadline as i64,
        _ => deadline.saturating_sub(now) as i64,
    };
    match name {
        "pttl" | "pexpiretime" => ms,
        // In 128 bits: a deadline of i64::MAX milliseconds rounds as in Redis.
        _ => ((ms as i128 + 500) / 1000) as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_args as args;

    #[test]
    fn set_takes_its_options_in_any_order_once_each() {
        let set = |a: &[&str]| parse_set(&args(a), || 1_000);
        assert!(matches!(
            set(&["k", "v", "nx", "get", "ex", "2"]),
            Ok(Command::SetExpiring {
                condition: SetCondition::IfAbsent,
                get: true,
                expiry: SetExpiry::At(3_000),
                ..
            })
        ));
        assert!(matches!(
            set(&["k", "v", "PXAT", "5", "XX"]),
            Ok(Command::SetExpiring {
                condition: SetCondition::IfPresent,
                get: false,
                expiry: SetExpiry::At(5),
                ..
            })
        ));
        assert!(matches!(
            set(&["k", "v", "keepttl", "keepttl"]),
            Ok(Command::SetExpiring {
                expiry: SetExpiry::Keep,
                ..
            })
        ));
        // The same option again replaces its value, as in Redis.
        assert!(matches!(
            set(&["k", "v", "EX", "1", "ex", "2"]),
            Ok(Command::SetExpiring {
                expiry: SetExpiry::At(3_000),
                ..
            })
        ));
        for bad in [
            &["k", "v", "EX", "1", "PX", "1"][..],
            &["k", "v", "EX", "1", "KEEPTTL"],
            &["k", "v", "KEEPTTL", "EX", "1"],
            &["k", "v", "EX"],
            &["k", "v", "NX", "XX"],
        ] {
            assert_eq!(set(bad).unwrap_err(), SYNTAX, "{bad:?}");
        }
        assert_eq!(set(&["k", "v", "EX", "x"]).unwrap_err(), NOT_AN_INTEGER);
        for bad in ["0", "-1", "9223372036854776"] {
            assert_eq!(
                set(&["k", "v", "EX", bad]).unwrap_err(),
                "ERR invalid expire time in 'set' command"
            );
        }
    }

    #[test]
    fn expire_checks_options_then_the_number() {
        let expire = |name, a: &[&str]| {
            parse_expire(name, &args(a), || 10_000).map_err(|e| String::from_utf8(e).unwrap())
        };
        assert!(matches!(
            expire("expire", &["k", "5", "xx", "lt"]),
            Ok(Command::Expire {
                at: Some(15_000),
                condition: ExpireCondition::IfSomeAndEarlier,
                ..
            })
        ));
        assert!(matches!(
            expire("pexpireat", &["k", "-5"]),
            Ok(Command::Expire { at: Some(0), .. })
        ));
        assert_eq!(
            expire("expire", &["k", "x", "NX", "GT"]).unwrap_err(),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            expire("expire", &["k", "1", "bogus"]).unwrap_err(),
            "ERR Unsupported option bogus"
        );
        assert_eq!(
            expire("expireat", &["k", "9223372036854776"]).unwrap_err(),
            "ERR invalid expire time in 'expireat' command"
        );
    }

    #[test]
    fn ttl_rounds_seconds_as_redis_does() {
        let v = |deadline| Value {
            bytes: vec![],
            deadline,
        };
        assert_eq!(ttl("ttl", None, 0), -2);
        assert_eq!(ttl("pttl", Some(&v(None)), 0), -1);
        assert_eq!(ttl("ttl", Some(&v(Some(10_499))), 0), 10);
        assert_eq!(ttl("ttl", Some(&v(Some(10_500))), 0), 11);
        assert_eq!(ttl("pttl", Some(&v(Some(10_500))), 500), 10_000);
        assert_eq!(ttl("expiretime", Some(&v(Some(10_500))), 500), 11);
        assert_eq!(ttl("pexpiretime", Some(&v(Some(10_500))), 500), 10_500);
        let last = Some(&v(Some(i64::MAX as u64)));
        assert_eq!(ttl("expiretime", last, 0), 9_223_372_036_854_776);
    }
}
