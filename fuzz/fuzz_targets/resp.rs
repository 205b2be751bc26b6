//! The RESP request decoder on arbitrary bytes, fed in two pieces (as a socket may deliver
//! them): it returns requests or an error, never panics, and never asks for more than its
//! limits.
#![no_main]

use bytes::BytesMut;
use flotilla::resp::{Limits, RequestParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::new(1 << 10);
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    let mut parser = RequestParser::default();
    loop {
        match parser.parse(&mut buf, &limits) {
            Ok(Some(args)) => {
                assert!(args.len() <= limits.max_args);
                assert!(args.iter().all(|a| a.len() <= limits.max_bulk_bytes));
            }
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
