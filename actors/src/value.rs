//! How a user value is stored, and the clock that decides when one with a deadline expires.
//!
//! A stored value is a tag byte, then for a value with a deadline (`SET ... EX`, `EXPIRE`) the
//! deadline in milliseconds since the Unix epoch (8 bytes, big-endian), then the value's bytes.
//! The deadline travels with the value: snapshots, digests, the cache of values read and the
//! values applied but not yet written hold it with no code of their own.
//!
//! A value expires once the time is past its deadline (as in Redis, a deadline equal to the
//! time is still live). Reads decide that by their node's clock; a command that reads values
//! carries the proposing node's time (`Command::Clocked`), so that every replica decides alike
//! when it applies it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// The tag of a value without a deadline.
const PLAIN: u8 = 0;
/// The tag of a value with a deadline.
const EXPIRING: u8 = 1;
/// Bytes before an expiring value's own.
const EXPIRING_HEADER: usize = 9;

/// The stored form of `value`, with its deadline if it has one.
pub fn stored(value: &[u8], deadline: Option<u64>) -> Vec<u8> {
    let mut out;
    match deadline {
        None => {
            out = Vec::with_capacity(1 + value.len());
            out.push(PLAIN);
        }
        Some(d) => {
            out = Vec::with_capacity(EXPIRING_HEADER + value.len());
            out.push(EXPIRING);
            out.extend_from_slice(&d.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

/// A stored value's deadline, if it has one.
pub fn deadline(stored: &[u8]) -> Option<u64> {
    match stored {
        [EXPIRING, d @ ..] if d.len() >= 8 => {
            Some(u64::from_be_bytes(d[..8].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

/// A stored value's own bytes.
pub fn bytes(stored: &[u8]) -> &[u8] {
    match stored.first() {
        Some(&EXPIRING) if stored.len() >= EXPIRING_HEADER => &stored[EXPIRING_HEADER..],
        Some(_) => &stored[1..],
        None => stored,
    }
}

/// Whether a stored value is still there at `now` (milliseconds since the Unix epoch).
pub fn live(stored: &[u8], now: u64) -> bool {
    deadline(stored).is_none_or(|d| now <= d)
}

/// A value as a read answers it: its bytes and its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub bytes: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub deadline: Option<u64>,
}

impl Value {
    /// The value stored as `stored`, if it is live at the time `now` gives (asked only of a
    /// value with a deadline), its bytes moved down in place.
    pub fn at(mut stored: Vec<u8>, now: impl FnOnce() -> u64) -> Option<Value> {
        let deadline = deadline(&stored);
        if deadline.is_some_and(|d| now() > d) {
            return None;
        }
        let header = stored.len() - bytes(&stored).len();
        stored.drain(..header);
        Some(Value {
            bytes: stored,
            deadline,
        })
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, as a node decides expiry by it.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system's time, as Redis reads it, except that it never goes back: a step back of
    /// the system's clock holds this one where it was until the system's catches up (the
    /// latest time read, shared by the clock's clones).
    System(Arc<AtomicU64>),
    /// `epoch_ms` at `since`, advanced by tokio's clock since: a simulation's, whose time is
    /// virtual.
    Virtual { epoch_ms: u64, since: Instant },
}

impl Clock {
    /// A clock that reads the system's time.
    pub fn system() -> Clock {
        Clock::System(Arc::new(AtomicU64::new(0)))
    }

    /// A clock that reads `epoch_ms` now and goes on in tokio's time.
    pub fn starting_at(epoch_ms: u64) -> Clock {
        Clock::Virtual {
            epoch_ms,
            since: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System(latest) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                latest.fetch_max(now, Ordering::Relaxed).max(now)
            }
            Clock::Virtual { epoch_ms, since } => epoch_ms + since.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_value_keeps_its_bytes_and_deadline() {
        let plain = stored(b"abc", None);
        assert_eq!((bytes(&plain), deadline(&plain)), (&b"abc"[..], None));
        let expiring = stored(b"", Some(1_700_000_000_123));
        assert_eq!(bytes(&expiring), b"");
        assert_eq!(deadline(&expiring), Some(1_700_000_000_123));
        assert!(live(&expiring, 1_700_000_000_123));
        assert!(!live(&expiring, 1_700_000_000_124));
        assert!(live(&plain, u64::MAX));
        assert_eq!(
            Value::at(expiring.clone(), || 5),
            Some(Value {
                bytes: vec![],
                deadline: Some(1_700_000_000_123)
            })
        );
        assert_eq!(Value::at(expiring, || u64::MAX), None);
        let plain = Value::at(plain, || unreachable!("no deadline, no clock"));
        assert_eq!(plain.unwrap().bytes, b"abc");
    }
}
