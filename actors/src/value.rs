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
    /// The bytes its stored form takes (see [`stored`]).
    pub fn stored_len(&self) -> usize {
        let header = if self.deadline.is_some() {
            EXPIRING_HEADER
        } else {
            1
        };
        header + self.bytes.len()
    }

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
///
/// It never goes back, and it keeps up with the fastest clock of the cluster that it hears
/// of ([`Clock::observe`]): every raft batch carries its sender's time, and a node whose own
/// clock is behind runs that much ahead of it from then on (up to [`MAX_AHEAD_MS`]). So a
/// value that one node's read found expired is not found live by a later read through a node
/// whose clock is behind, whichever leads the range then: a read through a follower asks the
/// leader for a read index, whose answer brings the leader's time, and a new leader has heard
/// its predecessor's time (more than a lease ago, which the election waits out). As Redis's
/// replicas expire keys by their master's clock, expiry follows the fastest clock here: a
/// node whose clock runs fast expires values early on every node.
/// The clones of a clock share what it has read and heard.
#[derive(Clone, Debug)]
pub struct Clock {
    source: Source,
    state: Arc<State>,
}

#[derive(Clone, Debug)]
enum Source {
    /// The system's time, as Redis reads it.
    System,
    /// `epoch_ms` at `since`, advanced by tokio's clock since: a simulation's, whose time is
    /// virtual.
    Virtual { epoch_ms: u64, since: Instant },
}

#[derive(Debug, Default)]
struct State {
    /// The latest time read: a step back of the source holds the clock where it was until
    /// the source catches up.
    latest: AtomicU64,
    /// How far the fastest clock heard of is ahead of the source, in milliseconds.
    ahead: AtomicU64,
}

/// The furthest ahead of its own source a node's clock follows a peer's. A peer further
/// ahead has a clock that is wrong (NTP not running, a clock set by hand): it is followed
/// this far, and logged by the caller (see [`Heard::capped`]).
pub const MAX_AHEAD_MS: u64 = 60_000;

/// What hearing a peer's time did to a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Milliseconds the clock moved ahead (0: the peer was not ahead of it).
    pub moved: u64,
    /// How far ahead of its own source the clock now runs.
    pub ahead: u64,
    /// The peer was further ahead than [`MAX_AHEAD_MS`].
    pub capped: bool,
}

impl Clock {
    /// A clock that reads the system's time.
    pub fn system() -> Clock {
        Clock::with(Source::System)
    }

    /// A clock that reads `epoch_ms` now and goes on in tokio's time.
    pub fn starting_at(epoch_ms: u64) -> Clock {
        Clock::with(Source::Virtual {
            epoch_ms,
            since: Instant::now(),
        })
    }

    fn with(source: Source) -> Clock {
        Clock {
            source,
            state: Arc::default(),
        }
    }

    /// The source's time.
    fn source_ms(&self) -> u64 {
        match &self.source {
            Source::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Source::Virtual { epoch_ms, since } => epoch_ms + since.elapsed().as_millis() as u64,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let now = self.source_ms() + self.state.ahead.load(Ordering::Relaxed);
        self.state.latest.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Hears a peer's time (`now_ms` of the peer's clock when it sent it; 0: unknown): if the
    /// peer is ahead, this clock runs as far ahead of its source from now on, as the peer's
    /// time goes on at the same pace (the time the message took, and a millisecond, make it
    /// run a little behind the peer's). Never back: a peer whose clock was wrong for a moment
    /// leaves every node that heard it that far ahead until they all restart (at most
    /// [`MAX_AHEAD_MS`]).
    pub fn observe(&self, peer_ms: u64) -> Heard {
        // Less a millisecond: both times are cut to whole milliseconds, so the gap read may
        // be a millisecond more than it is; the clocks of two nodes telling each other their
        // time would otherwise creep ahead by a millisecond a round trip, up to the cap.
        let gap = peer_ms.saturating_sub(self.source_ms()).saturating_sub(1);
        let ahead = gap.min(MAX_AHEAD_MS);
        let before = self.state.ahead.fetch_max(ahead, Ordering::Relaxed);
        Heard {
            moved: ahead.saturating_sub(before),
            ahead: ahead.max(before),
            capped: gap > MAX_AHEAD_MS,
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

    #[test]
    fn a_clock_keeps_up_with_the_fastest_it_hears_of_never_goes_back_and_caps_a_wild_one() {
        let clock = Clock::system();
        let own = clock.now_ms();
        let heard = clock.observe(own + 5_000);
        assert!((4_980..5_000).contains(&heard.moved), "{heard:?}");
        assert!(!heard.capped);
        let now = clock.now_ms();
        assert!(now >= own + 4_980 && now < own + 6_000, "{now} vs {own}");
        // A peer behind, or one ahead by less, moves nothing; nor does an unknown time.
        for behind in [own, own + 2_000, 0] {
            assert_eq!(clock.observe(behind).moved, 0);
        }
        assert!(clock.now_ms() >= now);
        // A clone shares what the clock heard.
        assert!(clock.clone().now_ms() >= own + 4_980);

        // A peer a day ahead is followed only `MAX_AHEAD_MS`.
        let heard = clock.observe(own + 86_400_000);
        assert!(heard.capped);
        assert_eq!(heard.ahead, MAX_AHEAD_MS);
        let now = clock.now_ms();
        assert!(now >= own + MAX_AHEAD_MS && now < own + MAX_AHEAD_MS + 1_000);
    }

    /// Two clocks half a millisecond apart, telling each other their time a thousand times:
    /// neither pushes the other ahead (each read is cut to whole milliseconds; without the
    /// millisecond taken off a gap, each round trip could gain one).
    #[test]
    fn clocks_telling_each_other_their_time_do_not_creep_ahead() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = Clock::starting_at(1_000_000);
            tokio::time::advance(std::time::Duration::from_micros(500)).await;
            let b = Clock::starting_at(1_000_000);
            for _ in 0..1_000 {
                tokio::time::advance(std::time::Duration::from_micros(700)).await;
                b.observe(a.now_ms());
                tokio::time::advance(std::time::Duration::from_micros(300)).await;
                a.observe(b.now_ms());
            }
            assert_eq!((a.observe(0).ahead, b.observe(0).ahead), (0, 0));
        });
    }
}
