//! A node's raft log stays bounded on disk however much is written through it, and what its
//! purges keep brings the node back with every value. A node knows its ranges' sizes from its
//! data directory.

mod common;

use common::Server;
use std::path::Path;
use std::time::{Duration, Instant};

/// Key prefixes that fall in each of the five ranges of the shipped config.
const PREFIXES: [&str; 5] = ["a", "g", "key:000000900000", "n", "x"];

/// What the raft log's files may take on disk once the writes have stopped and the logs are
/// compacted: the purge threshold (256 MiB) and the file past it (32 MiB), the purged files
/// raft-engine keeps to reuse (at most one and a half times the threshold, 384 MiB), the
/// queue its purges rewrite the entries of short logs to (32 MiB before it is purged in turn),
/// and 64 MiB for files written past their size. Before the threshold was lowered from 1 GiB,
/// the files of this test's writes took 1.15 GB.
const BOUND: u64 = 768 << 20;

fn raft_log_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("raft"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum()
}

fn value(key: usize, round: usize) -> Vec<u8> {
    let mut v = format!("{key}:{round}:").into_bytes();
    v.resize(1_000_000, b'.');
    v
}

#[test]
fn the_raft_log_stays_bounded_on_disk_and_a_restart_after_its_purges_keeps_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    // 1.3 GB of writes, over 8 keys in each range.
    const KEYS: usize = 40;
    const ROUNDS: usize = 33;
    for round in 0..ROUNDS {
        let mut pipe = redis::pipe();
        for key in 0..KEYS {
            let name = format!("{}{key}", PREFIXES[key % PREFIXES.len()]);
            pipe.cmd("SET").arg(name).arg(value(key, round)).ignore();
        }
        let () = pipe.query(&mut con).unwrap();
    }
    let written = (KEYS * ROUNDS) as u64 * 1_000_000;
    // The logs are compacted within 100 ticks, and their old files purged within 10 more.
    let start = Instant::now();
    let mut bytes = raft_log_bytes(&data);
    while bytes > BOUND {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{bytes} bytes of raft log on disk after {written} bytes written"
        );
        std::thread::sleep(Duration::from_millis(100));
        bytes = raft_log_bytes(&data);
    }

    let config = server.config.clone();
    server.kill();
    let server = Server::start_with_config(&config);
    let mut con = server.client();
    for key in 0..KEYS {
        let name = format!("{}{key}", PREFIXES[key % PREFIXES.len()]);
        let got: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut con).unwrap();
        assert!(got == value(key, ROUNDS - 1), "{name}: not its last value");
    }
    assert!(raft_log_bytes(&data) <= BOUND);
}

/// A node started again with a lower `range_max_bytes` splits the ranges past it, though
/// nobody writes them: it kept their sizes.
#[test]
fn a_node_started_with_a_lower_bound_splits_the_ranges_past_it_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    // 100 keys of 1,022 bytes stored (a tag byte before each value) in the first range.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.set(format!("a-{i:03}"), "v".repeat(1016)).ignore();
    }
    pipe.query::<()>(&mut server.client()).unwrap();
    let sizes = server.range_sizes();
    assert_eq!(sizes.len(), 5);
    assert_eq!(sizes[0].1, "102200", "{sizes:?}");
    // Once `DBSIZE` answers, everything applied is written to sled, which a stop syncs: the
    // node started again has no entry to apply, and no write makes it measure a range.
    let keys: u64 = redis::cmd("DBSIZE").query(&mut server.client()).unwrap();
    assert_eq!(keys, 100);
    server.stop();
    let server = Server::start_in(dir.path(), "range_max_bytes = 65536\n");
    let start = Instant::now();
    let sizes = loop {
        let sizes = server.range_sizes();
        let measured = sizes.iter().all(|(_, s)| s != "unknown");
        if sizes.len() > 5 && measured {
            break sizes;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{sizes:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bytes: Vec<u64> = sizes.iter().map(|(_, s)| s.parse().unwrap()).collect();
    assert!(bytes.iter().all(|&b| b <= 65536), "{sizes:?}");
    assert_eq!(bytes.iter().sum::<u64>(), 102200, "{sizes:?}");
}
