//! The cost of encoding and decoding a replicated command: every SET is encoded once by the
//! Store that proposes it and decoded once on every replica that applies it (in MultiRaft's
//! hand-over of committed entries).

mod common;

use common::VALUE_BYTES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla_actors::codec;
use flotilla_actors::command::{Command, SetCondition};
use std::hint::black_box;

fn command(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let set = Command::Set {
        key: b"key:000042".to_vec(),
        value: vec![b'v'; VALUE_BYTES],
        condition: SetCondition::Always,
    };
    let bytes = codec::encode(&set);
    group.bench_function("set/encode", |b| b.iter(|| codec::encode(black_box(&set))));
    group.bench_function("set/decode", |b| {
        b.iter(|| codec::decode::<Command>(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, command);
criterion_main!(benches);
