//! The cost of RESP2 parsing and reply encoding (`src/resp.rs`).
//!
//! - `resp_parse/pipeline_set_x16`: a read buffer holding 16 pipelined
//!   `SET key:NNNNNN <100 bytes>` arrays, taken apart with `RequestParser::parse` until it asks for
//!   more, as a connection's reader does.
//! - `resp_parse/inline_set_x16`: the same 16 commands as inline lines; `inline_ping`: one
//!   `PING\r\n`.
//! - `resp_encode/*`: 16 replies of a pipeline, each into a fresh `BytesMut` as
//!   `commands.rs` builds them: `+OK`, a 100-byte bulk string (a GET's answer), and an MGET
//!   answer of 16 such values in one array.
//!
//! Throughput is in commands (or replies) per second. The buffers fed to the parser are copied
//! before the clock starts.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flotilla::resp::{reply, Limits, RequestParser};
use std::hint::black_box;

const COMMANDS: usize = 16;
const VALUE_BYTES: usize = 100;

fn limits() -> Limits {
    // The default `max_value_bytes` of the config.
    Limits::new(1 << 20)
}

fn key(i: usize) -> String {
    format!("key:{i:06}")
}

fn pipeline_of_sets() -> Vec<u8> {
    let value = vec![b'v'; VALUE_BYTES];
    let mut out = Vec::new();
    for i in 0..COMMANDS {
        let k = key(i);
        out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        out.extend_from_slice(format!("${}\r\n{k}\r\n", k.len()).as_bytes());
        out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn inline_sets() -> Vec<u8> {
    let value = "v".repeat(VALUE_BYTES);
    (0..COMMANDS)
        .flat_map(|i| format!("SET {} {value}\r\n", key(i)).into_bytes())
        .collect()
}

/// Parses every request in `input`; returns how many there were.
fn parse_all(mut buf: BytesMut, limits: &Limits) -> usize {
    let mut n = 0;
    let mut parser = RequestParser::default();
    while let Some(args) = parser.parse(&mut buf, limits).expect("a valid request") {
        n += 1;
        black_box(args);
    }
    n
}

fn parse(c: &mut Criterion) {
    let limits = limits();
    let mut group = c.benchmark_group("resp_parse");
    for (name, input, count) in [
        ("pipeline_set_x16", pipeline_of_sets(), COMMANDS),
        ("inline_set_x16", inline_sets(), COMMANDS),
        ("inline_ping", b"PING\r\n".to_vec(), 1),
    ] {
        assert_eq!(parse_all(BytesMut::from(&input[..]), &limits), count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |buf| parse_all(buf, &limits),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let value = vec![b'v'; VALUE_BYTES];
    let mut group = c.benchmark_group("resp_encode");
    group.throughput(Throughput::Elements(COMMANDS as u64));
    group.bench_function("ok_x16", |b| {
        b.iter(|| {
            for _ in 0..COMMANDS {
                let mut out = BytesMut::new();
                reply::simple(&mut out, "OK");
                black_box(out);
            }
        })
    });
    group.bench_function("bulk_100b_x16", |b| {
        b.iter(|| {
            for _ in 0..COMMANDS {
                let mut out = BytesMut::new();
                reply::optional_bulk(&mut out, Some(black_box(&value)));
                black_box(out);
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("mget_array_16x100b", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            reply::array_header(&mut out, COMMANDS);
            for _ in 0..COMMANDS {
                reply::optional_bulk(&mut out, Some(black_box(&value)));
            }
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
