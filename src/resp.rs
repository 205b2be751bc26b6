//! RESP2, the Redis protocol: parsing requests and encoding replies.
//!
//! # Format
//!
//! A request is an array of bulk strings, `*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, or an *inline*
//! command, a line of words: `GET k\r\n` (what a person types into `telnet`).
//!
//! Every length is checked against [`Limits`] before anything is allocated, so a client cannot
//! make the node allocate without bound. Bytes that cannot be framed are a [`ProtocolError`];
//! the connection answers it with `-ERR Protocol error: ...` and is closed, as Redis does.

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on what one request may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (a key or a value).
    pub max_bulk_bytes: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command or header line.
    pub max_inline_bytes: usize,
    /// Largest whole request (all its arguments together).
    pub max_request_bytes: usize,
}

impl Limits {
    pub fn new(max_bulk_bytes: usize) -> Limits {
        Limits {
            max_bulk_bytes,
            max_args: 1 << 20,
            max_inline_bytes: 64 << 10,
            max_request_bytes: (2 * max_bulk_bytes).max(16 << 20),
        }
    }
}

/// Bytes that are not a RESP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn protocol(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Finds the end of the line starting at `from`; `Ok(None)` when it is not complete yet.
fn line_end(
    buf: &[u8],
    from: usize,
    limit: usize,
    what: &str,
) -> Result<Option<usize>, ProtocolError> {
    match buf[from..].iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(from + i)),
        None if buf.len() - from > limit => Err(protocol(format!("too big {what}"))),
        None => Ok(None),
    }
}

/// A length as Redis's `string2ll` reads it: an optional `-`, then digits without a leading
/// zero (`0` alone excepted), and nothing else: `+1`, `01`, `-0` and ` 1` are refused, as Redis
/// refuses them.
fn parse_len(line: &[u8], what: &str) -> Result<i64, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    let canonical = match digits {
        [b'0'] => digits.len() == line.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    std::str::from_utf8(line)
        .ok()
        .filter(|_| canonical)
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol(format!("invalid {what} length")))
}

/// Takes requests off the front of a connection's buffer, one at a time. A request not yet
/// whole is remembered as far as it was taken apart, so the next call goes on from there: a
/// request of a million arguments arriving in small pieces is parsed once, not once per piece
/// (which took a node's thread 22.6 s of CPU for a 7 MB request sent over 31 s).
#[derive(Debug, Default)]
pub struct RequestParser {
    /// The array being taken apart: its length, the spans of the arguments found so far, and
    /// where the next one starts (offsets in the buffer, which only grows at its end between
    /// calls).
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    spans: Vec<(usize, usize)>,
    pos: usize,
}

impl RequestParser {
    /// Takes one complete request off the front of `buf`, which must hold what the last call
    /// left, with any bytes since appended.
    ///
    /// `Ok(None)`: more bytes are needed. `Ok(Some(args))` may be empty (a blank line or
    /// `*0`), which the caller ignores. After an error the connection is to be closed.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    return parse_inline(buf, limits);
                }
                let Some(eol) = line_end(buf, 0, limits.max_inline_bytes, "mbulk count string")?
                else {
                    return Ok(None);
                };
                let count = parse_len(&buf[1..eol], "multibulk")?;
                if count > limits.max_args as i64 {
                    return Err(protocol("invalid multibulk length"));
                }
                let count = count.max(0) as usize;
                Partial {
                    count,
                    spans: Vec::with_capacity(count.min(64)),
                    pos: eol + 1,
                }
            }
        };
        while partial.spans.len() < partial.count {
            match bulk_at(buf, partial.pos, limits)? {
                Some((start, end)) => {
                    partial.spans.push((start, end));
                    partial.pos = end + 2;
                }
                None => {
                    self.partial = Some(partial);
                    return Ok(None);
                }
            }
        }
        let frame = buf.split_to(partial.pos).freeze();
        Ok(Some(
            partial
                .spans
                .into_iter()
                .map(|(s, e)| frame.slice(s..e))
                .collect(),
        ))
    }
}

/// The span of the bulk string at `pos` (its CRLF follows it); `Ok(None)` when it is not whole
/// yet.
fn bulk_at(
    buf: &[u8],
    pos: usize,
    limits: &Limits,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    if pos >= buf.len() {
        return Ok(None);
    }
    if buf[pos] != b'$' {
        return Err(protocol(format!(
            "expected '$', got '{}'",
            buf[pos].escape_ascii()
        )));
    }
    let Some(eol) = line_end(buf, pos, limits.max_inline_bytes, "bulk count string")? else {
        return Ok(None);
    };
    let len = parse_len(&buf[pos + 1..eol], "bulk")?;
    if len < 0 {
        return Err(protocol("invalid bulk length"));
    }
    if len as u64 > limits.max_bulk_bytes as u64 {
        return Err(protocol(format!(
            "invalid bulk length {len} (the limit, max_value_bytes, is {})",
            limits.max_bulk_bytes
        )));
    }
    let start = eol + 1;
    let end = start + len as usize;
    if end > limits.max_request_bytes {
        return Err(protocol(format!(
            "request larger than {} bytes",
            limits.max_request_bytes
        )));
    }
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(protocol("bulk string not terminated by CRLF"));
    }
    Ok(Some((start, end)))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(eol) = line_end(buf, 0, limits.max_inline_bytes, "inline request")? else {
        return Ok(None);
    };
    let line = buf.split_to(eol + 1);
    let text = &line[..eol];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let args = match split_plain(text) {
        Some(args) => args,
        None => split_args(text).ok_or_else(|| protocol("unbalanced quotes in request"))?,
    };
    // The value limit holds whichever way a value arrives.
    if let Some(word) = args.iter().find(|w| w.len() > limits.max_bulk_bytes) {
        return Err(protocol(format!(
            "inline argument of {} bytes (the limit, max_value_bytes, is {})",
            word.len(),
            limits.max_bulk_bytes
        )));
    }
    if args.len() > limits.max_args {
        return Err(protocol("too many arguments in inline request"));
    }
    Ok(Some(args))
}

/// Whether `b` ends an unquoted word of an inline command.
fn inline_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// What [`split_args`] gives a line without quotes, in one quick pass; `None` for a line with
/// quotes (or a vertical tab or form feed, blanks only between words).
fn split_plain(text: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut start = None;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                if let Some(s) = start.take() {
                    args.push(Bytes::copy_from_slice(&text[s..i]));
                }
            }
            b'"' | b'\'' | 0x0b | 0x0c => return None,
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        args.push(Bytes::copy_from_slice(&text[s..]));
    }
    Some(args)
}

/// An inline command's words as Redis splits them (`sdssplitargs`): separated by blanks; a
/// quote, even inside a word, starts a quoted part, which keeps blanks and must end the word;
/// in double quotes, `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH` and `\` before any other byte are
/// escapes; in single quotes only `\'` is. `None` for unbalanced quotes. A NUL byte is a byte
/// like any other (Redis reads the line as a C string, and waits for its newline forever).
fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let at = |i: usize| line.get(i).copied();
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let hex = |i: usize| at(i).filter(u8::is_ascii_hexdigit).map(|_| ());
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(blank) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let (mut word, mut quote) = (Vec::new(), None);
        loop {
            match (quote, at(i)) {
                (Some(_), None) => return None,
                (None, None) => break,
                (None, Some(c)) if inline_blank(c) => break,
                (None, Some(q @ (b'"' | b'\''))) => {
                    quote = Some(q);
                    i += 1;
                }
                (Some(b'"'), Some(b'\\'))
                    if at(i + 1) == Some(b'x') && hex(i + 2).and(hex(i + 3)).is_some() =>
                {
                    let digits = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                    word.push(u8::from_str_radix(digits, 16).ok()?);
                    i += 4;
                }
                (Some(b'"'), Some(b'\\')) if at(i + 1).is_some() => {
                    word.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        c => c,
                    });
                    i += 2;
                }
                (Some(b'\''), Some(b'\\')) if at(i + 1) == Some(b'\'') => {
                    word.push(b'\'');
                    i += 2;
                }
                (Some(q), Some(c)) if c == q => {
                    if at(i + 1).is_some_and(|next| !blank(next)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                (_, Some(c)) => {
                    word.push(c);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(word));
    }
}

/// Reply encoders. Each appends one RESP2 value to `out`.
pub mod reply {
    use super::*;

    pub fn simple(out: &mut BytesMut, s: &str) {
        out.reserve(s.len() + 3);
        out.put_u8(b'+');
        out.put_slice(s.as_bytes());
        out.put_slice(b"\r\n");
    }

    /// An error; `msg` starts with its prefix (`ERR`, `WRONGTYPE`, ...) and may hold a client's
    /// bytes. An error is one line: as Redis does, line breaks at either end are dropped and
    /// those within are spaces. Unlike Redis, bytes that are not UTF-8 are sent as U+FFFD:
    /// clients that read an error as text (the `redis` crate) lose their connection's place
    /// otherwise, and answer every later command with a parse error.
    pub fn error(out: &mut BytesMut, msg: impl AsRef<[u8]>) {
        let msg = String::from_utf8_lossy(msg.as_ref());
        let msg = msg.as_bytes();
        let is_break = |b: &u8| matches!(b, b'\r' | b'\n');
        let start = msg.iter().position(|b| !is_break(b)).unwrap_or(msg.len());
        let end = msg
            .iter()
            .rposition(|b| !is_break(b))
            .map_or(start, |i| i + 1);
        out.reserve(end - start + 3);
        out.put_u8(b'-');
        for &b in &msg[start..end] {
            out.put_u8(if is_break(&b) { b' ' } else { b });
        }
        out.put_slice(b"\r\n");
    }

    pub fn integer(out: &mut BytesMut, n: i64) {
        out.put_u8(b':');
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }

    pub fn bulk(out: &mut BytesMut, b: &[u8]) {
        out.reserve(b.len() + 16);
        out.put_u8(b'$');
        out.put_slice(b.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(b);
        out.put_slice(b"\r\n");
    }

    pub fn null(out: &mut BytesMut) {
        out.put_slice(b"$-1\r\n");
    }

    pub fn optional_bulk(out: &mut BytesMut, b: Option<&[u8]>) {
        match b {
            Some(b) => bulk(out, b),
            None => null(out),
        }
    }

    pub fn array_header(out: &mut BytesMut, n: usize) {
        out.put_u8(b'*');
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bulk_bytes: 16,
            max_args: 4,
            max_inline_bytes: 32,
            max_request_bytes: 40,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        RequestParser::default().parse(&mut BytesMut::from(bytes), &limits())
    }

    #[test]
    fn parses_arrays_of_bulk_strings_and_keeps_the_rest() {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPI"[..]);
        let args = parser.parse(&mut buf, &limits()).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
        assert_eq!(parser.parse(&mut buf, &limits()).unwrap(), None);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(
            parser.parse(&mut buf, &limits()).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        assert!(buf.is_empty());
    }

    /// Fed a byte at a time, a request is taken apart as it would be whole, and the arguments
    /// already found are not looked at again (a wrong header before them would be an error
    /// again if they were: it is checked once).
    #[test]
    fn a_request_arriving_in_pieces_is_parsed_once() {
        let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n*1\r\n$4\r\nPING\r\n";
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in request {
            buf.extend_from_slice(&[b]);
            while let Some(args) = parser.parse(&mut buf, &limits()).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(
            got,
            vec![
                vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v\r\nxy")],
                vec![Bytes::from("PING")]
            ]
        );
        assert!(buf.is_empty());
        // Resumed where it stopped: the first argument, spoiled after it was taken, is not
        // read again.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\n"[..]);
        assert_eq!(parser.parse(&mut buf, &limits()).unwrap(), None);
        buf[4] = b'?';
        buf.extend_from_slice(b"k\r\n");
        let args = parser.parse(&mut buf, &limits()).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
    }

    #[test]
    fn values_may_hold_any_bytes() {
        let args = parse(b"*2\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(args[1], Bytes::from("a\r\nb"));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(
            parse(b"SET  k   v\r\n").unwrap().unwrap(),
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v")]
        );
        assert_eq!(
            parse(b"PING\n").unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        assert_eq!(parse(b"\r\n").unwrap().unwrap(), Vec::<Bytes>::new());
        let words = |line: &[u8]| parse(line).map(|args| args.unwrap());
        let bytes = |words: &[&[u8]]| words.iter().map(|w| Bytes::copy_from_slice(w)).collect();
        // Quotes and escapes as Redis's `sdssplitargs` (checked against redis-server 7.0.15,
        // but for the NUL).
        assert_eq!(
            words(b"SET k \"hello world\"\r\n"),
            Ok(bytes(&[b"SET", b"k", b"hello world"]))
        );
        assert_eq!(words(b"SET k \"\"\n"), Ok(bytes(&[b"SET", b"k", b""])));
        assert_eq!(
            words(b"SET \"a\\x41\\n\\\"\\q\" 'it\\'s' a\"b c\"\n"),
            Ok(bytes(&[b"SET", b"aA\n\"q", b"it's", b"ab c"]))
        );
        let unbalanced = Err(protocol("unbalanced quotes in request"));
        assert_eq!(words(b"SET k \"abc\n"), unbalanced);
        assert_eq!(words(b"SET k \"a\"b\n"), unbalanced);
        assert_eq!(words(b"SET k 'a\n"), unbalanced);
        assert_eq!(
            words(b"GET k\0 more\n"),
            Ok(bytes(&[b"GET", b"k\0", b"more"]))
        );
        assert_eq!(parse(b"PIN").unwrap(), None);
        // The value limit (16 here) holds for inline arguments too.
        assert!(parse(b"SET k 0123456789abcdefX\r\n").is_err());
        assert!(parse(b"SET k 0123456789abcdef\r\n").unwrap().is_some());
    }

    #[test]
    fn limits_are_enforced_before_allocating() {
        assert_eq!(
            parse(b"*1\r\n$17\r\n").unwrap_err(),
            protocol("invalid bulk length 17 (the limit, max_value_bytes, is 16)")
        );
        assert_eq!(
            parse(b"*5\r\n").unwrap_err(),
            protocol("invalid multibulk length")
        );
        assert_eq!(
            parse(b"*99999999999999999999999\r\n").unwrap_err(),
            protocol("invalid multibulk length")
        );
        assert_eq!(
            parse(&[b'x'; 40]).unwrap_err(),
            protocol("too big inline request")
        );
        assert_eq!(
            parse(b"*3\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n").unwrap_err(),
            protocol("request larger than 40 bytes")
        );
        assert_eq!(
            parse(b"*1\r\n$-5\r\n").unwrap_err().0,
            "invalid bulk length"
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            parse(b"*1\r\n:3\r\n").unwrap_err(),
            protocol("expected '$', got ':'")
        );
        assert_eq!(
            parse(b"*x\r\n").unwrap_err(),
            protocol("invalid multibulk length")
        );
        // Lengths as Redis reads them (redis-server 7.0.15 refuses each of these).
        for bad in [
            &b"*+1\r\n"[..],
            b"*01\r\n",
            b"*-0\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, protocol("invalid multibulk length"), "{bad:?}");
        }
        for bad in [&b"*1\r\n$+4\r\n"[..], b"*1\r\n$04\r\n", b"*1\r\n$-0\r\n"] {
            let e = parse(bad).unwrap_err();
            assert!(e.0.starts_with("invalid bulk length"), "{bad:?}: {e:?}");
        }
        assert_eq!(parse(b"*0\r\n").unwrap(), Some(vec![]));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some(vec![]));
        assert_eq!(
            parse(b"*1\r\n$1\r\nab\r\n").unwrap_err(),
            protocol("bulk string not terminated by CRLF")
        );
    }

    #[test]
    fn reply_shapes() {
        let mut out = BytesMut::new();
        reply::simple(&mut out, "OK");
        reply::error(&mut out, "ERR bad\r\nthing");
        reply::integer(&mut out, -3);
        reply::bulk(&mut out, b"hi");
        reply::null(&mut out);
        reply::array_header(&mut out, 2);
        assert_eq!(
            &out[..],
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n"
        );
    }
}
