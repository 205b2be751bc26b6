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

fn parse_len(line: &[u8], what: &str) -> Result<i64, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol(format!("invalid {what} length")))
}

/// Takes one complete request off the front of `buf`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(args))` may be empty (a blank line or `*0`),
/// which the caller ignores.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, limits);
    }
    let Some(eol) = line_end(buf, 0, limits.max_inline_bytes, "mbulk count string")? else {
        return Ok(None);
    };
    let count = parse_len(&buf[1..eol], "multibulk")?;
    if count > limits.max_args as i64 {
        return Err(protocol("invalid multibulk length"));
    }
    let mut pos = eol + 1;
    let mut spans = Vec::with_capacity(count.clamp(0, 64) as usize);
    for _ in 0..count.max(0) {
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
        if len < 0 || len as u64 > limits.max_bulk_bytes as u64 {
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
        spans.push((start, end));
        pos = end + 2;
    }
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect(),
    ))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(eol) = line_end(buf, 0, limits.max_inline_bytes, "inline request")? else {
        return Ok(None);
    };
    let line = buf.split_to(eol + 1).freeze();
    let text = line.slice(..eol);
    let text = text.strip_suffix(b"\r").unwrap_or(&text);
    let mut args = Vec::new();
    for word in text
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        // The value limit holds whichever way a value arrives.
        if word.len() > limits.max_bulk_bytes {
            return Err(protocol(format!(
                "inline argument of {} bytes (the limit, max_value_bytes, is {})",
                word.len(),
                limits.max_bulk_bytes
            )));
        }
        args.push(Bytes::copy_from_slice(word));
    }
    if args.len() > limits.max_args {
        return Err(protocol("too many arguments in inline request"));
    }
    Ok(Some(args))
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

    /// An error; `msg` starts with its prefix (`ERR`, `WRONGTYPE`, ...). Line breaks are
    /// replaced, since an error is one line.
    pub fn error(out: &mut BytesMut, msg: &str) {
        out.put_u8(b'-');
        out.put_slice(msg.replace(['\r', '\n'], " ").as_bytes());
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
        parse_request(&mut BytesMut::from(bytes), &limits())
    }

    #[test]
    fn parses_arrays_of_bulk_strings_and_keeps_the_rest() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPI"[..]);
        let args = parse_request(&mut buf, &limits()).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
        assert_eq!(parse_request(&mut buf, &limits()).unwrap(), None);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(
            parse_request(&mut buf, &limits()).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
        assert!(buf.is_empty());
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
            "invalid bulk length -5 (the limit, max_value_bytes, is 16)"
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
