//! Three `flotilla` processes from copies of `config/cluster/*.toml`, on loopback ports the OS
//! chose, talking over TCP.

mod common;

use common::Server;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Asks the OS for free loopback ports.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Writes node configs derived from the shipped cluster files; returns their paths.
fn configs(dir: &Path, nodes: usize) -> Vec<std::path::PathBuf> {
    let raft = free_ports(nodes);
    (1..=nodes)
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
        .collect()
}

fn ranges(server: &Server) -> Vec<String> {
    let mut con = server.client();
    redis::cmd("FLOTILLA")
        .arg("RANGES")
        .query(&mut con)
        .unwrap()
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
    let files = configs(dir.path(), 3);
    let mut servers: Vec<Option<Server>> = files
        .iter()
        .map(|f| Some(Server::start_with_config(f)))
        .collect();
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
            Err(e) => assert!(
                e.kind() == redis::ErrorKind::TryAgain,
                "unexpected error while the leader is gone: {e}"
            ),
        }
        i += 1;
    }
    let resumed = resumed.expect("writes never resumed after the leader died");
    println!("writes resumed {resumed:?} after the leader was killed");
    assert!(resumed < Duration::from_secs(10));

    // The killed node comes back, catches up, and serves every acknowledged write.
    servers[leader - 1] = Some(Server::start_with_config(&files[leader - 1]));
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
}

#[test]
fn garbage_on_the_raft_port_is_refused_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = configs(dir.path(), 3);
    let servers: Vec<Server> = files.iter().map(|f| Server::start_with_config(f)).collect();
    await_leaders(&servers[0]);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let raft_addr = text
        .lines()
        .find(|l| l.starts_with("raft_addr"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_string();

    let hello = |secret: &str| {
        // A Hello frame as another node would send it, but with the given secret.
        let frame = flotilla::peers::Frame::Hello {
            cluster_id: "flotilla-demo".into(),
            secret: secret.into(),
            from: 2,
        };
        let body = flotilla_actors::codec::encode(&frame);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let mut cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(), // garbage
        vec![0, 0, 0, 50, 1, 2, 3],         // truncated frame
        vec![0xff, 0xff, 0xff, 0xff],       // oversized frame
        hello("wrong secret"),              // wrong cluster secret
    ];
    // A good hello followed by an undecodable batch.
    let mut bad_batch = hello("change-me-before-production");
    bad_batch.extend_from_slice(&[0, 0, 0, 3, 9, 9, 9]);
    cases.push(bad_batch);
    for bytes in cases {
        let mut s = TcpStream::connect(&raft_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        // The node closes the connection without answering.
        let n = s.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0);
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
