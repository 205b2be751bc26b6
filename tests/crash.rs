//! SIGKILL at any moment loses no acknowledged write, applies nothing twice, and the node comes
//! back with every range.

mod common;

use common::Server;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Key prefixes that fall in each of the five ranges of the shipped config.
const PREFIXES: [&str; 5] = ["a", "g", "key:000000900000", "n", "x"];

struct Acked {
    pairs: Mutex<Vec<(String, String)>>,
    incrs: AtomicU64,
}

/// Writes until the connection fails (the node was killed); records what was acknowledged.
fn writer(
    server: &Server,
    id: usize,
    round: usize,
    acked: Arc<Acked>,
) -> std::thread::JoinHandle<()> {
    let client = redis::Client::open(server.url()).unwrap();
    std::thread::spawn(move || {
        let Ok(mut con) = client.get_connection() else {
            return;
        };
        for i in 0.. {
            let key = format!("{}{round}-{id}-{i}", PREFIXES[i % PREFIXES.len()]);
            let value = format!("v{i}");
            let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(&value).query(&mut con);
            if r.is_err() {
                return;
            }
            acked.pairs.lock().unwrap().push((key, value));
            let r: redis::RedisResult<u64> = redis::cmd("INCR").arg("counter").query(&mut con);
            if r.is_err() {
                return;
            }
            acked.incrs.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn acknowledged_writes_survive_sigkill_and_apply_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "");
    let config = server.config.clone();
    let acked = Arc::new(Acked {
        pairs: Mutex::new(Vec::new()),
        incrs: AtomicU64::new(0),
    });
    const WRITERS: usize = 3;
    for round in 0..3 {
        let threads: Vec<_> = (0..WRITERS)
            .map(|id| writer(&server, id, round, acked.clone()))
            .collect();
        // Kill while the writers are busy, at a different point each round.
        let target = (round as u64 + 1) * 150;
        let start = Instant::now();
        while acked.incrs.load(Ordering::Relaxed) < target {
            assert!(start.elapsed() < Duration::from_secs(60), "writes stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        for t in threads {
            t.join().unwrap();
        }
        server = Server::start_with_config(&config);
    }

    let mut con = server.client();
    let pairs = acked.pairs.lock().unwrap().clone();
    for chunk in pairs.chunks(200) {
        let keys: Vec<&String> = chunk.iter().map(|(k, _)| k).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
        for ((k, v), got) in chunk.iter().zip(values) {
            assert_eq!(got.as_ref(), Some(v), "acknowledged write of {k} lost");
        }
    }
    // Each INCR acknowledged is counted once; each writer may have had one more in flight
    // when the node died, whose outcome it never learned.
    let counter: u64 = redis::cmd("GET").arg("counter").query(&mut con).unwrap();
    let incrs = acked.incrs.load(Ordering::Relaxed);
    assert!(
        counter >= incrs && counter <= incrs + 3 * WRITERS as u64,
        "counter {counter} after {incrs} acknowledged increments"
    );

    // Every range came back, led by this node.
    let ranges: Vec<String> = redis::cmd("FLOTILLA")
        .arg("RANGES")
        .query(&mut con)
        .unwrap();
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    for r in &ranges {
        assert!(r.contains("leader=n1"), "{r}");
    }
}
