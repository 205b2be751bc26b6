//! Three `flotilla` processes from copies of `config/cluster/*.toml`, on loopback ports the OS
//! chose (their raft sockets passed to them as by a service manager), talking over TCP.

mod common;

use common::Server;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The nodes of a test cluster: their config files, and their raft sockets, bound to loopback
/// ports the OS assigned and kept here, so that a node restarted in a test gets its port back
/// (each node is passed its socket, as by a service manager).
struct Nodes {
    files: Vec<std::path::PathBuf>,
    sockets: Vec<TcpListener>,
}

impl Nodes {
    /// Starts node `i + 1`.
    fn start(&self, i: usize) -> Server {
        Server::start_with_raft_socket(&self.files[i], &self.sockets[i])
    }

    fn start_all(&self) -> Vec<Server> {
        (0..self.files.len()).map(|i| self.start(i)).collect()
    }
}

/// Writes node configs derived from the shipped cluster files, with the `key = value` lines of
/// `extra` added.
fn configs(dir: &Path, nodes: usize, extra: &str) -> Nodes {
    let sockets: Vec<TcpListener> = (0..nodes)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let raft: Vec<u16> = sockets
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let files = (1..=nodes)
        .map(|n| {
            let shipped = std::fs::read_to_string(format!(
                "{}/config/cluster/node{n}.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let mut text = String::new();
            for line in shipped.lines() {
                let key = line.split('=').next().unwrap_or("").trim();
                match key {
                    "data_dir" => {
                        text.push_str(&format!("data_dir = {:?}\n", dir.join(format!("n{n}"))))
                    }
                    "client_addr" => text.push_str("client_addr = \"127.0.0.1:0\"\n"),
                    "raft_addr" => {
                        text.push_str(&format!("raft_addr = \"127.0.0.1:{}\"\n", raft[n - 1]))
                    }
                    "[peers]" => {
                        text.push_str(extra);
                        text.push_str(line);
                        text.push('\n');
                    }
                    "1" | "2" | "3" | "4" => {
                        let i: usize = key.parse().unwrap();
                        if i <= nodes {
                            text.push_str(&format!("{i} = \"127.0.0.1:{}\"\n", raft[i - 1]));
                        }
                    }
                    _ => {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
            let path = dir.join(format!("node{n}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    Nodes { files, sockets }
}

fn ranges(server: &Server) -> Vec<String> {
    let mut con = server.client();
    redis::cmd("FLOTILLA")
        .arg("RANGES")
        .query(&mut con)
        .unwrap()
}

fn admin(server: &Server, args: &[&str]) -> redis::RedisResult<String> {
    redis::cmd("FLOTILLA").arg(args).query(&mut server.client())
}

/// `FLOTILLA DIGEST`'s lines, or `None` while the node refuses it (`-TRYAGAIN`: a snapshot
/// being installed, or a `FLUSHDB`'s keys being deleted), for a caller that asks again.
fn digest(server: &Server) -> Option<Vec<String>> {
    redis::cmd("FLOTILLA")
        .arg("DIGEST")
        .query(&mut server.client())
        .ok()
}

fn dbsize(server: &Server) -> u64 {
    redis::cmd("DBSIZE").query(&mut server.client()).unwrap()
}

/// A counter from the `# Flotilla` section of INFO.
fn info(server: &Server, field: &str) -> u64 {
    let text: String = redis::cmd("INFO").query(&mut server.client()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `done` every 50 ms for at most `limit`.
fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client writing `SET` without pause, over keys of every range, in its own thread.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<(String, String)>>,
}

/// Key prefixes that fall in each of the five ranges of the shipped split keys.
const PREFIXES: [&str; 5] = ["a", "g", "key:1", "n", "x"];

impl Writer {
    fn start(mut con: redis::Connection) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let key = format!("{}-{i}", PREFIXES[i % PREFIXES.len()]);
                let value = format!("v{i}");
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(&key).arg(&value).query(&mut con);
                match r {
                    Ok(()) => {
                        done.push((key, value));
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused or outcome unknown: allowed while leadership moves.
                    Err(e) => assert!(
                        e.kind() == redis::ErrorKind::TryAgain,
                        "unexpected error: {e}"
                    ),
                }
                i += 1;
            }
            done
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the client; returns the writes answered `OK`.
    fn stop(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Reads `keys` through `server`, 100 at a time.
fn mget(server: &Server, keys: &[String]) -> Vec<Option<String>> {
    let mut con = server.client();
    keys.chunks(100)
        .flat_map(|chunk| {
            redis::cmd("MGET")
                .arg(chunk)
                .query::<Vec<Option<String>>>(&mut con)
                .unwrap()
        })
        .collect()
}

/// Waits until every range has a leader, as seen from `server`.
fn await_leaders(server: &Server) -> Vec<String> {
    let start = Instant::now();
    loop {
        let r = ranges(server);
        if r.iter().all(|l| !l.contains("leader=none")) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leaders: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_replicate_fail_over_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let mut servers: Vec<Option<Server>> = nodes.start_all().into_iter().map(Some).collect();
    let node = |s: &Vec<Option<Server>>, i: usize| -> redis::Connection {
        s[i].as_ref().unwrap().client()
    };
    await_leaders(servers[0].as_ref().unwrap());

    // Written through node 1, read (linearizably) through node 3.
    let mut one = node(&servers, 0);
    let _: () = redis::cmd("SET")
        .arg("apple")
        .arg("red")
        .query(&mut one)
        .unwrap();
    let mut three = node(&servers, 2);
    let v: String = redis::cmd("GET").arg("apple").query(&mut three).unwrap();
    assert_eq!(v, "red");
    // A transaction through node 3, whichever node leads the range: one entry, applied on
    // every replica; its key watched there.
    let _: () = redis::cmd("WATCH").arg("apple").query(&mut three).unwrap();
    let (old, n): (String, i64) = redis::pipe()
        .atomic()
        .getset("apple", "green")
        .incr("apricot", 2)
        .query(&mut three)
        .unwrap();
    assert_eq!((old.as_str(), n), ("red", 2));
    let v: Vec<String> = redis::cmd("MGET")
        .arg("apple")
        .arg("apricot")
        .query(&mut one)
        .unwrap();
    assert_eq!(v, ["green", "2"]);
    // Pipelined commands act one after the other: a read waiting for its read index (the
    // leader's lease lapsed while the cluster was idle, for more than an election timeout)
    // does not see the write pipelined after it, whichever node they go through.
    for (i, con) in [&mut one, &mut three].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(1500));
        let (before, ()): (String, ()) = redis::pipe()
            .get("apple")
            .set("apple", format!("ripe{i}"))
            .query(con)
            .unwrap();
        let want = if i == 0 {
            "green".to_string()
        } else {
            "ripe0".into()
        };
        assert_eq!(before, want);
    }

    // Kill the node leading the range of "apple" (r1).
    let r1 = await_leaders(servers[0].as_ref().unwrap())[0].clone();
    let leader: usize = r1.split("leader=n").nth(1).unwrap()[..1].parse().unwrap();
    let survivor = if leader == 1 { 1 } else { 0 };
    let mut con = node(&servers, survivor);
    let mut acked = Vec::new();
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("a{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
        acked.push(i);
    }
    servers[leader - 1].take().unwrap().kill();
    let killed = Instant::now();
    let mut resumed = None;
    let mut i = 20;
    while killed.elapsed() < Duration::from_secs(30) && acked.len() < 60 {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("a{i}"))
            .arg(i)
            .query(&mut con);
        match r {
            Ok(()) => {
                resumed.get_or_insert(killed.elapsed());
                acked.push(i);
            }
            // A write sent on to the leader as it died may have been lost with it. The others
            // wait for the next leader: none is refused for want of one.
            Err(e) => assert!(
                e.kind() == redis::ErrorKind::TryAgain && e.to_string().contains("changed"),
                "unexpected error while the leader is gone: {e}"
            ),
        }
        i += 1;
    }
    let resumed = resumed.expect("writes never resumed after the leader died");
    println!("writes resumed {resumed:?} after the leader was killed");
    assert!(resumed < Duration::from_secs(10));

    // The killed node comes back, catches up, and serves every acknowledged write.
    servers[leader - 1] = Some(nodes.start(leader - 1));
    let mut back = node(&servers, leader - 1);
    let start = Instant::now();
    let keys: Vec<String> = acked.iter().map(|i| format!("a{i}")).collect();
    loop {
        let r: redis::RedisResult<Vec<Option<i64>>> =
            redis::cmd("MGET").arg(&keys).query(&mut back);
        if let Ok(values) = r {
            let expected: Vec<Option<i64>> = acked.iter().map(|&i| Some(i as i64)).collect();
            assert_eq!(values, expected);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "restarted node never served reads"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A connection's pipelined reads never go back in time, while other clients write: each
    // sees a state no older than the one before it (before, a read waiting for its read index
    // was served after a later one the node served at once).
    // Through the leader of the key's range, which serves reads at once but when it has not
    // applied all that its raft handed over yet.
    let r1 = await_leaders(servers[0].as_ref().unwrap())[0].clone();
    let lead: usize = r1.split("leader=n").nth(1).unwrap()[..1].parse().unwrap();
    let via = || servers[lead - 1].as_ref().unwrap().client();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, mut con) = (stop.clone(), via());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _: () = redis::pipe()
                        .incr("count", 1)
                        .ignore()
                        .incr("count", 1)
                        .ignore()
                        .query(&mut con)
                        .unwrap();
                }
            })
        })
        .collect();
    let mut reader = via();
    for _ in 0..5000 {
        let seen: Vec<Option<i64>> = redis::pipe()
            .get("count")
            .get("count")
            .get("count")
            .get("count")
            .query(&mut reader)
            .unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    // FLUSHALL through the node that came back empties every range on every replica alike.
    let _: () = redis::cmd("FLUSHALL").query(&mut back).unwrap();
    let n: u64 = redis::cmd("DBSIZE").query(&mut back).unwrap();
    assert_eq!(n, 0);
    let all: Vec<&Server> = servers.iter().map(|s| s.as_ref().unwrap()).collect();
    eventually(
        Duration::from_secs(10),
        "replicas alike after FLUSHALL",
        || {
            let d = digest(all[0]);
            d.is_some() && all.iter().all(|s| digest(s) == d) && all.iter().all(|s| dbsize(s) == 0)
        },
    );
}

#[test]
fn a_raft_socket_passed_on_another_address_than_raft_addr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    // Node 1 is handed node 2's socket: its peers would look for it elsewhere.
    let (code, stderr) = common::run_within(
        common::raft_socket_command(&nodes.files[0], &nodes.sockets[1]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stderr}");
    let theirs = nodes.sockets[1].local_addr().unwrap();
    assert!(
        stderr.contains(&format!(
            "the raft socket passed by the service manager: it is bound to {theirs}, not to raft_addr"
        )),
        "{stderr}"
    );
}

#[test]
fn garbage_on_the_raft_port_is_refused_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let servers = nodes.start_all();
    await_leaders(&servers[0]);
    let text = std::fs::read_to_string(&nodes.files[0]).unwrap();
    let raft_addr = text
        .lines()
        .find(|l| l.starts_with("raft_addr"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_string();

    let frame = |frame: &flotilla::peers::Frame| {
        let body = flotilla_actors::codec::encode(frame);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    // A Hello frame as another node would send it, but with the given secret.
    let hello = |secret: &str| {
        frame(&flotilla::peers::Frame::Hello {
            version: flotilla::peers::PROTOCOL_VERSION,
            cluster_id: "flotilla-demo".into(),
            secret: secret.into(),
            from: 2,
        })
    };
    // Each case, and what the node answers before it closes the connection.
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Vec::new()), // garbage
        (vec![0, 0, 0, 50, 1, 2, 3], Vec::new()),         // truncated frame
        (vec![0xff, 0xff, 0xff, 0xff], Vec::new()),       // oversized frame
        (hello("wrong secret"), Vec::new()),              // wrong cluster secret
        // Another version of the protocol.
        (
            frame(&flotilla::peers::Frame::Hello {
                version: flotilla::peers::PROTOCOL_VERSION + 1,
                cluster_id: "flotilla-demo".into(),
                secret: "change-me-before-production".into(),
                from: 2,
            }),
            Vec::new(),
        ),
    ];
    // A good hello, welcomed, followed by an undecodable batch.
    let mut bad_batch = hello("change-me-before-production");
    bad_batch.extend_from_slice(&[0, 0, 0, 3, 9, 9, 9]);
    cases.push((bad_batch, frame(&flotilla::peers::Frame::Welcome)));
    for (bytes, answer) in cases {
        let mut s = TcpStream::connect(&raft_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        // The node closes the connection, having answered nothing but a welcome.
        let _ = s.read_to_end(&mut rest);
        assert_eq!(rest, answer);
    }
    // Clients and peers are still served: a write through node 1 reaches node 2.
    let mut one = servers[0].client();
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("garbage")
        .query(&mut one)
        .unwrap();
    let mut two = servers[1].client();
    let v: String = redis::cmd("GET").arg("after").query(&mut two).unwrap();
    assert_eq!(v, "garbage");
}

fn node(s: &[Option<Server>], i: usize) -> &Server {
    s[i].as_ref().unwrap()
}

#[test]
fn replicas_move_from_node_1_to_node_4_while_a_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 4, "");
    let servers = nodes.start_all();
    await_leaders(&servers[0]);
    // Node 4 is not an initial member: it holds nothing until replicas are added to it.
    assert_eq!(ranges(&servers[3]), Vec::<String>::new());
    assert_eq!(dbsize(&servers[3]), 0);

    let writer = Writer::start(servers[1].client());
    eventually(Duration::from_secs(30), "first writes", || {
        writer.acked() >= 50
    });

    let before = writer.acked();
    // ADDREPLICA is refused while node 2 is not yet connected to node 4.
    eventually(Duration::from_secs(30), "node 2 connected to n4", || {
        info(&servers[1], "peers_connected") == 3
    });
    assert_eq!(
        admin(&servers[1], &["ADDREPLICA", "all", "4"]).unwrap(),
        "OK"
    );
    // Answered once node 2 applied every promotion; node 4 follows.
    for line in ranges(&servers[1]) {
        assert!(line.contains("replicas=n1,n2,n3,n4 "), "{line}");
    }
    eventually(Duration::from_secs(30), "node 4 holds every range", || {
        let on4 = ranges(&servers[3]);
        on4.len() == 5 && on4.iter().all(|l| l.contains("replicas=n1,n2,n3,n4 "))
    });
    // Removing node 1 moves the leadership of the ranges it leads first.
    assert_eq!(
        admin(&servers[1], &["REMOVEREPLICA", "all", "1"]).unwrap(),
        "OK"
    );
    let during = writer.acked() - before;
    let acked = writer.stop();
    println!(
        "{} writes acknowledged, {during} while replicas moved",
        acked.len()
    );
    assert!(during > 0, "no write succeeded while replicas moved");

    // Node 1 learns it was removed and deletes everything it held.
    eventually(Duration::from_secs(30), "node 1 emptied", || {
        ranges(&servers[0]).is_empty() && dbsize(&servers[0]) == 0
    });
    for line in ranges(&servers[1]) {
        assert!(line.contains("replicas=n2,n3,n4 "), "{line}");
    }
    // Nodes 2, 3 and 4 hold the same data...
    eventually(Duration::from_secs(30), "replicas identical", || {
        let d = digest(&servers[1]);
        d.is_some() && d == digest(&servers[2]) && d == digest(&servers[3])
    });
    // ...and every acknowledged write is in it.
    let keys: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let values = mget(&servers[3], &keys);
    for ((k, v), got) in acked.iter().zip(values) {
        assert_eq!(got.as_ref(), Some(v), "acknowledged write of {k} lost");
    }
    assert!(dbsize(&servers[3]) >= acked.len() as u64);
    // Promoted once caught up: every new replica was a learner first.
    assert_eq!(
        info(&servers[1], "learners_promoted")
            + info(&servers[2], "learners_promoted")
            + info(&servers[0], "learners_promoted"),
        5
    );
}

#[test]
fn a_replica_on_a_node_that_is_down_is_refused_at_once_and_added_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 4, "");
    let servers: Vec<Server> = (0..3).map(|i| nodes.start(i)).collect();
    // Each range's span and replicas.
    let layout = |s: &Server| -> Vec<String> {
        let lines = ranges(s);
        lines
            .iter()
            .map(|l| l.split(" leader=").next().unwrap().to_string())
            .collect()
    };
    await_leaders(&servers[0]);
    let before = layout(&servers[0]);
    eventually(
        Duration::from_secs(30),
        "node 1 connected to n2 and n3",
        || info(&servers[0], "peers_connected") == 2,
    );

    // Without the check, the learner is added, can never catch up, and the request waits out
    // the admin timeout (a minute) to end in a timeout.
    for target in ["1", "all"] {
        let refused = admin(&servers[0], &["ADDREPLICA", target, "4"]).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("n4 is not connected to this node"),
            "{refused}"
        );
    }
    assert_eq!(layout(&servers[0]), before, "no replica was added");

    let fourth = nodes.start(3);
    eventually(Duration::from_secs(30), "node 1 connected to n4", || {
        info(&servers[0], "peers_connected") == 3
    });
    assert_eq!(admin(&servers[0], &["ADDREPLICA", "1", "4"]).unwrap(), "OK");
    eventually(Duration::from_secs(30), "node 4 holds r1", || {
        ranges(&fourth).iter().any(|l| l.starts_with("r1 "))
    });

    // Down again: asking again for r1, where it votes, is answered at once, as before; for
    // every range it is refused, as the others would wait for it.
    fourth.kill();
    eventually(Duration::from_secs(30), "node 1 noticed n4 is gone", || {
        info(&servers[0], "peers_connected") == 2
    });
    assert_eq!(admin(&servers[0], &["ADDREPLICA", "1", "4"]).unwrap(), "OK");
    let refused = admin(&servers[0], &["ADDREPLICA", "all", "4"]).unwrap_err();
    assert!(
        refused.to_string().contains("n4 is not connected"),
        "{refused}"
    );
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "log_compaction_entries = 20\n");
    let mut servers: Vec<Option<Server>> = nodes.start_all().into_iter().map(Some).collect();
    await_leaders(node(&servers, 0));
    // Range 1 led by node 1, so stopping node 3 leaves it writable at once.
    assert_eq!(
        admin(node(&servers, 0), &["TRANSFERLEADER", "1", "1"]).unwrap(),
        "OK"
    );
    assert!(ranges(node(&servers, 0))[0].contains("leader=n1 "));
    servers[2].take().unwrap().kill();

    // About 1.2 MB in range 1: its snapshot travels in chunks.
    let mut con = node(&servers, 0).client();
    let value = "x".repeat(4096);
    let keys: Vec<String> = (0..300).map(|i| format!("a{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(&value)
            .query(&mut con)
            .unwrap();
    }
    assert!(info(node(&servers, 0), "log_compactions") > 0);

    servers[2] = Some(nodes.start(2));
    eventually(Duration::from_secs(60), "node 3 caught up", || {
        let d = digest(node(&servers, 0));
        d.is_some() && digest(node(&servers, 2)) == d
    });
    assert!(info(node(&servers, 2), "snapshots_installed") >= 1);
    let values = mget(node(&servers, 2), &keys);
    assert!(values.iter().all(|v| v.as_deref() == Some(value.as_str())));
}

#[test]
fn a_leader_cut_off_from_its_quorum_steps_down_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let mut servers: Vec<Option<Server>> = nodes.start_all().into_iter().map(Some).collect();
    let one = servers[0].take().unwrap();
    await_leaders(&one);
    assert_eq!(admin(&one, &["TRANSFERLEADER", "all", "1"]).unwrap(), "OK");
    // Every range led by node 1 goes quiet: no replica ticks, nothing is sent.
    eventually(
        Duration::from_secs(20),
        "ranges led by n1, quiescent",
        || {
            ranges(&one)
                .iter()
                .all(|l| l.contains("leader=n1") && l.contains("quiescent"))
        },
    );

    for s in servers.iter_mut().skip(1) {
        s.take().unwrap().kill();
    }
    // Node 1 notices that nodes 2 and 3 are gone; its ranges wake and their leaders, which
    // can no longer reach a quorum, step down instead of claiming to lead.
    eventually(Duration::from_secs(20), "no range led by n1", || {
        ranges(&one).iter().all(|l| l.contains("leader=none"))
    });
    let err = redis::cmd("SET")
        .arg("apple")
        .arg("red")
        .query::<()>(&mut one.client())
        .unwrap_err();
    assert!(
        err.to_string().contains("has no leader at the moment"),
        "{err}"
    );
}

/// Leadership moved back and forth between nodes 1 and 2 while four clients pipeline writes
/// through node 1: what node 1 takes while its ranges hand their leadership over, or elect the
/// next leader, waits for that leader, and so does what node 2 is sent on as it hands its
/// leadership over. None is refused for want of a leader (before, thousands of a pipelined
/// load's writes were, each time), none is answered in doubt (hundreds were: raft dropped
/// them), none is overtaken by a later one of node 1's (where node 1 takes the leadership,
/// those node 2 sends on to it come after its own later ones: they were skipped, and their
/// clients waited for their timeout), and every one is there after.
#[test]
fn writes_wait_for_the_next_leader_while_leadership_moves() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let servers = nodes.start_all();
    await_leaders(&servers[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, mut con) = (stop.clone(), servers[0].client());
            std::thread::spawn(move || {
                let (mut acked, mut errors) = (Vec::new(), Vec::new());
                let mut i = 0;
                while !s.load(Ordering::Relaxed) {
                    let keys: Vec<String> = (i..i + 50).map(|n| format!("k{w}-{n}")).collect();
                    i += 50;
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("SET").arg(k).arg(k).ignore();
                    }
                    match pipe.query::<()>(&mut con) {
                        Ok(()) => acked.extend(keys),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (acked, errors)
            })
        })
        .collect();
    for to in [2, 1].repeat(10) {
        assert_eq!(
            admin(&servers[0], &["TRANSFERLEADER", "all", &to.to_string()]).unwrap(),
            "OK"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, e) = w.join().unwrap();
        acked.extend(a);
        errors.extend(e);
    }
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(!acked.is_empty());
    let values = mget(&servers[2], &acked);
    assert!(acked
        .iter()
        .zip(&values)
        .all(|(k, v)| v.as_ref() == Some(k)));
}

/// A connection's writes apply in the order sent while ranges split under them: a client
/// pipelines `APPEND`s of increasing numbers to 50 keys through node 1 while node 2 splits the
/// range holding them again and again, each time moving the keys to a new range. A write in
/// flight to the range that split is sent again to the new one once applied there; the later
/// writes sent to the new range directly went before it (before, most keys' numbers came out
/// of order). Now they wait for it, and every key holds its numbers in order, each once.
#[test]
fn a_connections_writes_apply_in_order_while_their_range_splits() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let servers = nodes.start_all();
    await_leaders(&servers[0]);
    let keys: Vec<String> = (0..50).map(|j| format!("x{j:02}z")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let splitter = {
        let (stop, mut con) = (stop.clone(), servers[1].client());
        std::thread::spawn(move || {
            for j in 0..50 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let split: redis::RedisResult<String> = redis::cmd("FLOTILLA")
                    .arg("SPLIT")
                    .arg(format!("x{j:02}m"))
                    .query(&mut con);
                split.unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut con = servers[0].client();
    let mut sent: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut n = 0u64;
    while !splitter.is_finished() {
        let mut pipe = redis::pipe();
        for _ in 0..200 {
            n += 1;
            let key = &keys[(n * 7 % 50) as usize];
            pipe.cmd("APPEND").arg(key).arg(format!("{n},")).ignore();
            sent.entry(key).or_default().push(n);
        }
        pipe.query::<()>(&mut con).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    splitter.join().unwrap();
    assert!(ranges(&servers[0]).len() > 40, "the splits did not happen");
    for (key, numbers) in sent {
        let value: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        let applied: Vec<u64> = (value.split(',').filter(|n| !n.is_empty()))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            applied, numbers,
            "{key}: applied in another order than sent"
        );
    }
}

/// `FLOTILLA SPLIT` through two nodes while a client writes through a third: each answers the
/// new range's id, every node lists the same seven ranges, every write answered `OK` is read
/// back through every node, the replicas hold the same data, and a node killed and started
/// again still has the ranges and the data.
#[test]
fn ranges_split_while_a_client_writes_keep_every_write_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = configs(dir.path(), 3, "");
    let mut servers: Vec<Option<Server>> = nodes.start_all().into_iter().map(Some).collect();
    await_leaders(node(&servers, 0));
    let writer = Writer::start(node(&servers, 1).client());
    eventually(Duration::from_secs(10), "writes", || writer.acked() > 200);
    // Each named by the node it went through, then a number of that node's.
    let a = admin(node(&servers, 0), &["SPLIT", "a-5"]).unwrap();
    let g = admin(node(&servers, 2), &["SPLIT", "g-5"]).unwrap();
    assert!(a.starts_with("r1.") && g.starts_with("r3."), "{a} {g}");
    let err = admin(node(&servers, 0), &["SPLIT", "a-5"]).unwrap_err();
    assert!(
        err.to_string().contains("starts at that key already"),
        "{err}"
    );
    let long = "a".repeat(4097);
    let err = admin(node(&servers, 0), &["SPLIT", &long]).unwrap_err();
    assert!(err.to_string().contains("at most 4096 bytes"), "{err}");
    let acked = writer.acked();
    eventually(Duration::from_secs(10), "writes after", || {
        writer.acked() > acked + 200
    });
    let written = writer.stop();
    let expected = spans(node(&servers, 0));
    assert_eq!(
        expected,
        [
            r#"r1 ["", "a-5")"#.to_string(),
            format!(r#"{a} ["a-5", "f")"#),
            r#"r2 ["f", "g-5")"#.to_string(),
            format!(r#"{g} ["g-5", "key:000000500000")"#),
            r#"r3 ["key:000000500000", "m")"#.to_string(),
            r#"r4 ["m", "t")"#.to_string(),
            r#"r5 ["t", end)"#.to_string(),
        ],
        "every range, in key order"
    );
    let last: BTreeMap<String, String> = written.into_iter().collect();
    kept_on_every_node_and_over_a_restart(&nodes, &mut servers, &expected, &last);
}

/// `FLOTILLA RANGES`'s spans through `server`: `r1 ["", "a-5")`, ...
fn spans(server: &Server) -> Vec<String> {
    ranges(server)
        .iter()
        .map(|l| l.split(" replicas").next().unwrap().to_string())
        .collect()
}

/// A span's start and end: `r1 ["", "a033")`, `r5 ["t", end)`.
fn bounds(span: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = span.split('"').collect();
    (parts[1].to_string(), parts.get(3).map(|e| e.to_string()))
}

/// Each range's size as `FLOTILLA RANGES` through `server` shows it, by span.
fn sizes(server: &Server) -> BTreeMap<String, String> {
    server.range_sizes().into_iter().collect()
}

/// What `sizes` should show through `server` once every range is measured: the bytes of the
/// keys and stored values (a tag byte before each value) of `written` in each span.
fn exact_sizes(server: &Server, written: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    spans(server)
        .into_iter()
        .map(|span| {
            let (start, end) = bounds(&span);
            let within = |k: &String| *k >= start && end.as_ref().is_none_or(|e| k < e);
            let bytes: usize = (written.iter())
                .filter(|(k, _)| within(k))
                .map(|(k, v)| k.len() + 1 + v.len())
                .sum();
            (span, bytes.to_string())
        })
        .collect()
}

/// Waits until every range is split and measured (more than `before` ranges): `leader` shows
/// each range's exact size, as `written` makes it, and the other nodes up the same sizes. The
/// number of ranges then.
fn settled(
    servers: &[Option<Server>],
    leader: usize,
    written: &BTreeMap<String, String>,
    before: usize,
) -> usize {
    eventually(Duration::from_secs(30), "exact sizes", || {
        let want = exact_sizes(node(servers, leader), written);
        want.len() > before && sizes(node(servers, leader)) == want
    });
    let want = sizes(node(servers, leader));
    for (i, s) in servers.iter().enumerate() {
        if s.is_some() {
            eventually(Duration::from_secs(10), "sizes alike", || {
                sizes(node(servers, i)) == want
            });
        }
    }
    want.len()
}

/// The ranges measured by the nodes running since they started.
fn measures(servers: &[Option<Server>]) -> u64 {
    servers
        .iter()
        .flatten()
        .map(|s| info(s, "ranges_measured"))
        .sum()
}

/// Three nodes started with `range_max_bytes = max`, once every range has a leader.
fn bounded_cluster(dir: &Path, max: usize) -> (Nodes, Vec<Option<Server>>) {
    let nodes = configs(dir, 3, &format!("range_max_bytes = {max}\n"));
    let servers: Vec<Option<Server>> = nodes.start_all().into_iter().map(Some).collect();
    await_leaders(node(&servers, 0));
    (nodes, servers)
}

/// Three nodes with `range_max_bytes = 65536`: every replica knows each range's size without
/// reading it. New keys count as written, and a range past the bound is measured by its
/// leader, split, and each piece measured, the measures going into the log. So a node that
/// becomes the leader, or one killed and started again, shows every range's exact size at
/// once and measures nothing until a range grows past the bound again.
#[test]
fn range_sizes_are_replicated_and_kept_so_a_new_leader_or_a_restart_reads_nothing() {
    const MAX: usize = 65536;
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers) = bounded_cluster(dir.path(), MAX);
    let mut written = BTreeMap::new();
    let mut write = |server: &Server, pairs: Vec<(String, String)>| {
        let mut pipe = redis::pipe();
        for (k, v) in &pairs {
            pipe.set(k, v).ignore();
        }
        pipe.query::<()>(&mut server.client()).unwrap();
        written.extend(pairs);
        written.clone()
    };
    let one_each = |round: &str| -> Vec<(String, String)> {
        (PREFIXES.iter())
            .map(|p| (format!("{p}-{round}"), "v".to_string()))
            .collect()
    };
    // 100 keys of 1,022 bytes stored in the range of `prefix`: 1.6 times the bound.
    let past_the_bound = |prefix: &str| -> Vec<(String, String)> {
        (0..100)
            .map(|i| (format!("{prefix}-{i:03}"), "v".repeat(1016)))
            .collect()
    };
    let lead = |servers: &[Option<Server>], i: usize| {
        let n = (i + 1).to_string();
        let led = format!(" leader=n{n} ");
        eventually(Duration::from_secs(30), "leading every range", || {
            admin(node(servers, i), &["TRANSFERLEADER", "all", &n]).is_ok()
                && ranges(node(servers, i)).iter().all(|l| l.contains(&led))
        });
    };

    // New ranges take nothing; new keys count as written.
    let w = write(node(&servers, 0), one_each("new"));
    assert_eq!(settled(&servers, 0, &w, 0), 5);
    // Through node `i + 1`, which leads every range there were `before`: a key written to
    // each range, one range written past the bound, and a key written to each again. The
    // range is measured and split, and each piece split off measured: one measure more than
    // splits, and no other. The number of ranges then.
    let mut grow = |servers: &[Option<Server>], i: usize, prefix: &str, before: usize| {
        let measured = measures(servers) as usize;
        write(node(servers, i), one_each(&format!("{prefix}1")));
        write(node(servers, i), past_the_bound(prefix));
        let w = write(node(servers, i), one_each(&format!("{prefix}2")));
        let pieces = settled(servers, i, &w, before);
        assert_eq!(measures(servers) as usize, measured + pieces - before + 1);
        (pieces, w)
    };

    // Whichever node leads the first range measures it.
    let (pieces, _) = grow(&servers, 0, "a", 5);
    // Node 1 killed, node 2 leads every range: it knows every size.
    servers[0].take().unwrap().kill();
    lead(&servers, 1);
    let (pieces, w) = grow(&servers, 1, "n", pieces);
    // Node 1 started again knows every size, and so it does when it leads again.
    servers[0] = Some(nodes.start(0));
    settled(&servers, 1, &w, pieces - 1);
    lead(&servers, 0);
    grow(&servers, 0, "x", pieces);
}

/// Every node lists the ranges `expected` and reads `values` back, the replicas come to hold
/// the same data, and node 2, killed and started again, still lists them and reads them.
fn kept_on_every_node_and_over_a_restart(
    nodes: &Nodes,
    servers: &mut [Option<Server>],
    expected: &[String],
    values: &BTreeMap<String, String>,
) {
    let keys: Vec<String> = values.keys().cloned().collect();
    let reads_back = |s: &Server| {
        let got = mget(s, &keys);
        let wrong = keys
            .iter()
            .zip(got)
            .find(|(k, v)| v.as_ref() != Some(&values[*k]));
        assert_eq!(wrong, None, "through {}", s.addr);
    };
    for i in 0..3 {
        eventually(Duration::from_secs(10), "the same ranges", || {
            spans(node(servers, i)) == expected
        });
        reads_back(node(servers, i));
    }
    eventually(Duration::from_secs(30), "replicas alike", || {
        let d = digest(node(servers, 0));
        d.is_some() && (1..3).all(|i| digest(node(servers, i)) == d)
    });
    servers[1].take().unwrap().kill();
    servers[1] = Some(nodes.start(1));
    assert_eq!(spans(node(servers, 1)), expected);
    reads_back(node(servers, 1));
}

/// Three nodes started with `range_max_bytes = 65536`, written four times that in one range:
/// the range is split, by whichever node leads it, until every piece is within the bound,
/// never among keys sharing a hash tag, so a transaction over those keys still runs; every
/// node lists the same pieces, every key reads back through every node, the replicas hold the
/// same data, and a node killed and started again keeps the pieces and the data.
#[test]
fn a_range_written_past_range_max_bytes_is_split_on_every_node() {
    const MAX: usize = 65536;
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers) = bounded_cluster(dir.path(), MAX);
    // 52 hash tags of five keys, each key and value 1,025 bytes stored (a tag byte before each
    // value), all in ["", "f"). A piece is due every 32 keys, never a tag's end.
    let tags: Vec<Vec<String>> = (0..52)
        .map(|t| (0..5).map(|i| format!("a{{{t:03}}}:{i}")).collect())
        .collect();
    let keys: Vec<String> = tags.concat();
    let value = "v".repeat(1016);
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, &value).ignore();
    }
    pipe.query::<()>(&mut node(&servers, 1).client()).unwrap();
    let held = |span: &String| {
        let (start, end) = bounds(span);
        let within = |k: &&String| **k >= start && end.as_ref().is_none_or(|e| *k < e);
        keys.iter().filter(within).count()
    };
    eventually(Duration::from_secs(30), "pieces within the bound", || {
        spans(node(&servers, 0))
            .iter()
            .all(|s| held(s) * 1025 <= MAX)
    });
    let expected = spans(node(&servers, 0));
    let pieces = expected.iter().filter(|s| held(s) > 0).count();
    assert!(pieces >= 4, "{expected:?}");
    let mut client = node(&servers, 2).client();
    for tag in &tags {
        let (read,): (Vec<String>,) = redis::pipe()
            .atomic()
            .cmd("MGET")
            .arg(tag)
            .query(&mut client)
            .unwrap_or_else(|e| panic!("a transaction over {tag:?}: {e}; {expected:?}"));
        assert_eq!(read, vec![value.clone(); 5]);
    }
    assert_eq!(info(node(&servers, 0), "ranges_split") as usize, pieces - 1);
    assert_eq!(
        expected.len() - pieces,
        4,
        "the other ranges whole: {expected:?}"
    );
    let values = keys.iter().map(|k| (k.clone(), value.clone())).collect();
    kept_on_every_node_and_over_a_restart(&nodes, &mut servers, &expected, &values);
}
