//! `flotilla bench` against the built binary serving as a single node, and `flotilla bench
//! report` on what it wrote.

mod common;

use common::{Server, BIN};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `flotilla ARGS` with its output in files under `dir`, killing it if it runs past a
/// minute; returns its exit status, stdout and stderr.
fn flotilla(dir: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start flotilla");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flotilla {args:?} still running after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p| std::fs::read_to_string(p).unwrap();
    (status, read(&out), read(&err))
}

#[test]
fn bench_loads_a_node_and_its_report_compares_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let json = dir.path().join("result.json");
    let addr = server.addr.to_string();
    let (status, stdout, stderr) = flotilla(
        dir.path(),
        &[
            "bench",
            "--addr",
            &addr,
            "--name",
            "test node",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--keys",
            "500",
            "--value-size",
            "37",
            "--mix",
            "set=1,get=3",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    // Not a terminal: no progress line.
    assert_eq!(stderr, "");
    assert!(stdout.contains("filled 500 keys"), "{stdout}");

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
        .expect("the results are JSON");
    assert_eq!(r["name"], "test node");
    assert_eq!(r["load"]["mix"], "SET=1,GET=3");
    assert_eq!(r["load"]["value_size"], 37);
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["first_error"], serde_json::Value::Null);
    // Every key was written before the GETs began.
    assert_eq!(r["misses"], 0, "{r}");
    let latency = |p: &str| r["latency_ms"][p].as_f64().unwrap();
    assert!(latency("p50") > 0.0, "{r}");
    assert!(latency("p50") <= latency("p99"), "{r}");
    assert!(latency("p99") <= latency("p999"), "{r}");
    assert!(latency("p999") <= latency("max"), "{r}");

    // The first and the last of the 500 keys, spread over two ranges (split at
    // key:000000500000), hold values of the bench's size.
    let mut c = server.client();
    for key in ["key:000000000000", "key:000000998000"] {
        let value: Vec<u8> = redis::cmd("GET").arg(key).query(&mut c).unwrap();
        assert_eq!(value.len(), 37, "{key}");
    }
    drop(server);

    let svg = dir.path().join("chart.svg");
    let tsv = dir.path().join("medians.tsv");
    let (status, stdout, stderr) = flotilla(
        dir.path(),
        &[
            "bench",
            "report",
            json.to_str().unwrap(),
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
            "--tsv",
            tsv.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows[0].starts_with("| load | target | runs | ops/s |"),
        "{stdout}"
    );
    assert!(
        rows[2].starts_with("| SET=1,GET=3 c4 P8 37B | test node | 2 |"),
        "{stdout}"
    );
    assert!(rows[2].ends_with("| 0 | 1.00× | 1.00× |"), "{stdout}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("test node"),
        "{svg}"
    );
    let tsv = std::fs::read_to_string(tsv).unwrap();
    assert!(tsv
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("SET=1,GET=3 c4 P8 37B\ttest node\t2\t"));
}

#[test]
fn a_malformed_mix_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the mix is refused before any connection is tried.
    for (mix, reason) in [
        (
            "set=x",
            "the weight of `set` must be a whole number from 1 to 1000000, not `x`",
        ),
        ("set,incr", "unknown operation `incr` (known: set, get)"),
        ("", "empty mix"),
    ] {
        let (status, stdout, stderr) = flotilla(
            dir.path(),
            &["bench", "--addr", "127.0.0.1:1", "--mix", mix],
        );
        assert_eq!(status.code(), Some(2), "{mix:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{mix}' for '--mix <MIX>': {reason}"
            )),
            "{mix:?}: {stderr}"
        );
    }
}
