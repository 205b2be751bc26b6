//! `SCAN` and `KEYS`: the keys of the ranges this node holds, in key order.
//!
//! Each step reads the key it starts from first, so that it gets that range's read index (or
//! its lease) as a `GET` would, then asks the Store for the keys from there ([`Scan`]): what
//! a step returns is as of a moment between its request and its answer, and a key present
//! for a whole `SCAN` is returned once. A range this node does not hold ends the iteration
//! with an error.

use super::{err, reply, PendingReply, Reply, Session};
use bytes::{Bytes, BytesMut};
use flotilla_actors::command::parse_integer;
use flotilla_actors::messages::{Read, Scan, Scanned};
use flotilla_actors::store::{Store, SCAN_STEP_MAX};
use std::collections::VecDeque;

/// The cursors a node keeps for `SCAN`, at most this many and this many bytes of keys (the
/// oldest go): each step of every client's scan makes one.
const CURSORS_KEPT: usize = 1 << 16;
const CURSOR_BYTES: usize = 64 << 20;

/// A node's `SCAN` cursors: each stands for the key the next step starts from (Redis's cursors
/// are numbers, which clients parse). They are the node's, not a connection's, so that a
/// client's pool of connections may go on with any of them; random, so that a cursor from
/// another node, or one gone, is refused rather than taken for another. 0 starts from the
/// beginning.
#[derive(Default)]
pub struct Cursors {
    starts: std::collections::HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Cursors {
    fn add(&mut self, start: Vec<u8>) -> u64 {
        let cursor = loop {
            let c = rand::random::<u64>() >> 1;
            if c != 0 && !self.starts.contains_key(&c) {
                break c;
            }
        };
        self.bytes += start.len();
        self.order.push_back(cursor);
        self.starts.insert(cursor, start);
        // The newest stays, however large its key.
        while self.order.len() > 1 && (self.order.len() > CURSORS_KEPT || self.bytes > CURSOR_BYTES)
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.bytes -= self.starts.remove(&oldest).map_or(0, |k| k.len());
        }
        cursor
    }

    fn start(&self, cursor: u64) -> Option<Vec<u8>> {
        match cursor {
            0 => Some(Vec::new()),
            c => self.starts.get(&c).cloned(),
        }
    }
}

/// A `SCAN`'s arguments.
struct ScanArgs {
    cursor: u64,
    pattern: Option<Vec<u8>>,
    count: usize,
    /// `TYPE`: every key is a string.
    strings: bool,
}

fn parse_scan(a: &[Bytes]) -> Result<ScanArgs, String> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or("ERR invalid cursor")?;
    let mut args = ScanArgs {
        cursor,
        pattern: None,
        count: 10,
        strings: true,
    };
    let mut rest = &a[1..];
    while let [option, value, more @ ..] = rest {
        match String::from_utf8_lossy(option)
            .to_ascii_uppercase()
            .as_str()
        {
            "MATCH" => args.pattern = Some(value.to_vec()),
            "COUNT" => match parse_integer(value) {
                Some(n) if n >= 1 => args.count = usize::try_from(n).unwrap_or(usize::MAX),
                Some(_) => return Err("ERR syntax error".into()),
                None => return Err("ERR value is not an integer or out of range".into()),
            },
            "TYPE" => args.strings = value.eq_ignore_ascii_case(b"string"),
            _ => return Err("ERR syntax error".into()),
        }
        rest = more;
    }
    if !rest.is_empty() {
        return Err("ERR syntax error".into());
    }
    Ok(args)
}

/// One step: the keys from `from` on, at most `count`, as of a moment of the request.
async fn step(store: &actix::Addr<Store>, from: Vec<u8>, count: usize) -> Result<Scanned, String> {
    let failed = |e: actix::MailboxError| format!("ERR node is shutting down ({e})");
    store
        .send(Read::new(vec![from.clone()]))
        .await
        .map_err(failed)?
        .map_err(|e| e.to_string())?;
    store
        .send(Scan { from, count })
        .await
        .map_err(failed)?
        .map_err(|e| e.to_string())
}

impl Session {
    pub(super) fn scan(&self, a: &[Bytes]) -> PendingReply {
        let args = match parse_scan(a) {
            Ok(args) => args,
            Err(e) => return err(e),
        };
        let cursors = self.shared.clone();
        let Some(from) = cursors.cursors.lock().expect("cursors").start(args.cursor) else {
            return err("ERR invalid cursor");
        };
        self.sequenced(false, move |store| {
            let store = store.clone();
            async move {
                let mut out = BytesMut::new();
                match step(&store, from, args.count).await {
                    Ok(Scanned { keys, next }) => {
                        let cursor = next.map_or(0, |start| {
                            cursors.cursors.lock().expect("cursors").add(start)
                        });
                        let keys: Vec<Vec<u8>> = keys
                            .into_iter()
                            .filter(|k| args.strings && matches(args.pattern.as_deref(), k))
                            .collect();
                        reply::array_header(&mut out, 2);
                        reply::bulk(&mut out, cursor.to_string().as_bytes());
                        reply::array_header(&mut out, keys.len());
                        for k in keys {
                            reply::bulk(&mut out, &k);
                        }
                    }
                    Err(e) => reply::error(&mut out, &e),
                }
                Reply {
                    bytes: out,
                    close: false,
                }
            }
        })
    }

    pub(super) fn keys(&self, pattern: &[u8]) -> PendingReply {
        let pattern = pattern.to_vec();
        self.sequenced(false, move |store| {
            let store = store.clone();
            async move {
                // The keys' replies, counted, then the array's header before them.
                let (mut found, mut n) = (BytesMut::new(), 0);
                let mut from = Some(Vec::new());
                while let Some(start) = from.take() {
                    match step(&store, start, SCAN_STEP_MAX).await {
                        Ok(Scanned { keys, next }) => {
                            for k in keys.iter().filter(|k| matches(Some(&pattern), k)) {
                                reply::bulk(&mut found, k);
                                n += 1;
                            }
                            from = next;
                        }
                        Err(e) => {
                            found.clear();
                            reply::error(&mut found, &e);
                            return Reply {
                                bytes: found,
                                close: false,
                            };
                        }
                    }
                }
                let mut out = BytesMut::new();
                reply::array_header(&mut out, n);
                out.unsplit(found);
                Reply {
                    bytes: out,
                    close: false,
                }
            }
        })
    }
}

/// Whether `key` matches a `MATCH` or `KEYS` pattern: `*` alone matches every key, as Redis
/// takes it, the empty key included (see `glob`).
fn matches(pattern: Option<&[u8]>, key: &[u8]) -> bool {
    pattern.is_none_or(|p| p == b"*" || glob(p, key))
}

/// One step of a glob pattern: it matches any run of bytes (`*`) or exactly one byte.
#[derive(Debug, PartialEq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    /// `[...]`: byte ranges (a byte alone is a range of one), `[^...]` negated. Bounds are
    /// compared as C's signed `char`, as Redis compares them: `[a-\xe9]` holds `-` and `\xff`,
    /// not `b`.
    Class(Vec<(i8, i8)>, bool),
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(c) => *c == b,
            Token::Class(ranges, negated) => {
                let b = b as i8;
                ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
            }
        }
    }
}

/// Redis's glob syntax (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\` escaping
/// the next byte; an unclosed `[` runs to the pattern's end.
fn tokens(p: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            b'?' => out.push(Token::Any),
            b'\\' if i + 1 < p.len() => {
                i += 1;
                out.push(Token::Byte(p[i]));
            }
            b'[' => {
                i += 1;
                let negated = p.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                while i < p.len() && p[i] != b']' {
                    let c = p[i] as i8;
                    if p[i] == b'\\' && i + 1 < p.len() {
                        i += 1;
                        ranges.push((p[i] as i8, p[i] as i8));
                    } else if i + 2 < p.len() && p[i + 1] == b'-' {
                        let d = p[i + 2] as i8;
                        ranges.push((c.min(d), c.max(d)));
                        i += 2;
                    } else {
                        ranges.push((c, c));
                    }
                    i += 1;
                }
                out.push(Token::Class(ranges, negated));
            }
            c => out.push(Token::Byte(c)),
        }
        i += 1;
    }
    out
}

/// Whether `s` matches the glob pattern `p`: greedy, going back to the last `*` on a
/// mismatch, so linear in `s` for each `*`, whatever the pattern. As in Redis, the empty
/// string matches only the empty pattern (`**` does not match it).
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    if s.is_empty() {
        return p.is_empty();
    }
    let t = tokens(p);
    let (mut ti, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match t.get(ti) {
            Some(Token::Star) => {
                star = Some((ti, si));
                ti += 1;
            }
            Some(tok) if tok.matches(s[si]) => {
                ti += 1;
                si += 1;
            }
            _ => match star {
                Some((st, ss)) => {
                    ti = st + 1;
                    si = ss + 1;
                    star = Some((st, ss + 1));
                }
                None => return false,
            },
        }
    }
    t[ti..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of Redis's `KEYS` documentation, and the edges of the syntax.
    #[test]
    fn globs_match_as_redis_documents() {
        let yes = |p: &str, s: &str| assert!(glob(p.as_bytes(), s.as_bytes()), "{p} {s}");
        let no = |p: &str, s: &str| assert!(!glob(p.as_bytes(), s.as_bytes()), "{p} {s}");
        for s in ["hello", "hallo", "hxllo"] {
            yes("h?llo", s);
        }
        yes("h*llo", "hllo");
        yes("h*llo", "heeeello");
        yes("h[ae]llo", "hello");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        yes("h[^e]llo", "hbllo");
        no("h[^e]llo", "hello");
        yes("h[a-b]llo", "hallo");
        yes("h[a-b]llo", "hbllo");
        no("h[a-b]llo", "hcllo");
        yes("h[b-a]llo", "hallo");
        yes("h\\*llo", "h*llo");
        no("h\\*llo", "hello");
        no("**", "");
        yes("", "");
        assert!(matches(Some(b"*"), b""));
        yes("**", "anything");
        no("?", "");
        yes("a*b*c", "aXbYc");
        no("a*b*c", "aXbY");
        yes("key:*", "key:000000500000");
        no("key:*", "ke");
        no("[", "");
        no("[abc", "d");
        let high = |p: &[u8], s: &[u8]| glob(p, s);
        for s in [&b"-"[..], b"A", b"[", b"a", b"\xe9", b"\xff"] {
            assert!(high(b"[a-\xe9]", s), "{s:?}");
        }
        for s in [&b"b"[..], b"z", b"\x80"] {
            assert!(!high(b"[a-\xe9]", s), "{s:?}");
        }
        yes("[abc", "b");
        // Backtracking stays linear in the key for each star.
        let long = "a".repeat(10_000);
        no(&format!("{}b", "*a".repeat(30)), &long);
    }

    #[test]
    fn scan_options_parse_as_redis_takes_them() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let parse = |args: &[&str]| parse_scan(&args.iter().map(|s| b(s)).collect::<Vec<_>>());
        let a = parse(&["0", "match", "k*", "COUNT", "5", "TYPE", "hash"]).unwrap();
        assert_eq!((a.cursor, a.count, a.strings), (0, 5, false));
        assert_eq!(a.pattern.as_deref(), Some(&b"k*"[..]));
        assert_eq!(parse(&["x"]).err().unwrap(), "ERR invalid cursor");
        assert_eq!(parse(&["-1"]).err().unwrap(), "ERR invalid cursor");
        assert_eq!(
            parse(&["0", "COUNT", "0"]).err().unwrap(),
            "ERR syntax error"
        );
        assert_eq!(parse(&["0", "COUNT"]).err().unwrap(), "ERR syntax error");
        assert_eq!(
            parse(&["0", "BOGUS", "1"]).err().unwrap(),
            "ERR syntax error"
        );
    }

    #[test]
    fn a_cursor_lasts_until_65536_newer_ones_or_64_mib_of_their_keys() {
        let mut cursors = Cursors::default();
        let first = cursors.add(b"a".to_vec());
        let newer: Vec<u64> = (0..CURSORS_KEPT - 1)
            .map(|_| cursors.add(b"b".to_vec()))
            .collect();
        assert_eq!(cursors.start(first), Some(b"a".to_vec()));
        cursors.add(b"c".to_vec());
        assert_eq!(cursors.start(first), None, "the oldest goes");
        assert_eq!(cursors.start(newer[0]), Some(b"b".to_vec()));
        // Big keys: 64 MiB of them at most.
        let big = vec![b'k'; 1 << 20];
        let bigs: Vec<u64> = (0..65).map(|_| cursors.add(big.clone())).collect();
        assert_eq!(cursors.start(bigs[0]), None);
        assert_eq!(cursors.start(bigs[1]).map(|k| k.len()), Some(1 << 20));
        assert!(cursors.bytes <= CURSOR_BYTES);
        assert_eq!(cursors.start(0), Some(Vec::new()));
        // The newest stays, however large.
        let huge = cursors.add(vec![b'h'; CURSOR_BYTES + 1]);
        assert_eq!(cursors.start(huge).map(|k| k.len()), Some(CURSOR_BYTES + 1));
    }
}
