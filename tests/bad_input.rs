//! Bad input from one client gets a Redis-style error (or, when the bytes cannot be framed, one
//! protocol error and a closed connection) and harms nothing else: a second client connected
//! throughout keeps getting answers, and the node keeps serving.

mod common;

use common::{cmd, Raw, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A client that writes and reads back its own counter until told to stop.
fn bystander(server: &Server, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut con = server.client();
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let v: u64 = redis::cmd("INCR").arg("bystander").query(&mut con).unwrap();
            n += 1;
            assert_eq!(v, n);
            let got: u64 = redis::cmd("GET").arg("bystander").query(&mut con).unwrap();
            assert_eq!(got, n);
        }
        n
    })
}

#[test]
fn bad_input_gets_errors_and_harms_no_other_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "max_value_bytes = 1024\n");
    let stop = Arc::new(AtomicBool::new(false));
    let other = bystander(&server, stop.clone());

    // Errors that leave the connection usable.
    let mut c = Raw::connect(server.addr);
    c.roundtrip(
        &cmd(&[b"FOO", b"a", b"b"]),
        b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
    );
    // An unknown command's name and arguments are cut to 128 bytes each and all, as Redis
    // 7.0.15 cuts them (its reply to the same command): a megabyte sent is not sent back.
    let (name, a, b) = (
        [b"FOO".as_slice(), &[b'n'; 200]].concat(),
        [b'a'; 100],
        [b'b'; 50],
    );
    c.roundtrip(
        &cmd(&[&name, &a, &b, b"c"]),
        format!(
            "-ERR unknown command 'FOO{}', with args beginning with: '{}' '{}' \r\n",
            "n".repeat(125),
            "a".repeat(100),
            "b".repeat(25)
        )
        .as_bytes(),
    );
    c.roundtrip(
        &cmd(&[b"GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    );
    c.roundtrip(
        &cmd(&[b"SET", b"k"]),
        b"-ERR wrong number of arguments for 'set' command\r\n",
    );
    c.roundtrip(
        &cmd(&[b"MSET", b"a", b"1", b"b"]),
        b"-ERR wrong number of arguments for 'mset' command\r\n",
    );
    c.roundtrip(
        &cmd(&[b"SET", b"k", b"v", b"EX", b"9223372036854775807"]),
        b"-ERR invalid expire time in 'set' command\r\n",
    );
    c.roundtrip(
        b"\x00\x01\xfe\r\n",
        b"-ERR unknown command '\x00\x01\xef\xbf\xbd', with args beginning with: \r\n",
    );
    // A value at the limit is fine.
    let max = vec![b'x'; 1024];
    c.roundtrip(&cmd(&[b"SET", b"big", &max]), b"+OK\r\n");
    c.roundtrip(&cmd(&[b"PING"]), b"+PONG\r\n");

    // Bytes that cannot be framed: one protocol error, then the connection is closed.
    let unframable: &[(&[u8], &str)] = &[
        (b"*1\r\n:3\r\n", "expected '$', got ':'"),
        (
            b"*2\r\n$3\r\nSET\r\n$1025\r\n",
            "invalid bulk length 1025 (the limit, max_value_bytes, is 1024)",
        ),
        (b"*1\r\n$-7\r\n", "invalid bulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n$3\r\nGETxx", "bulk string not terminated by CRLF"),
        (b"*abc\r\n", "invalid multibulk length"),
    ];
    for (bytes, message) in unframable {
        let mut c = Raw::connect(server.addr);
        c.send(bytes);
        c.expect(format!("-ERR Protocol error: {message}\r\n").as_bytes());
        c.expect_closed();
    }
    // A value over the limit sent whole, as a client library or redis-cli does: the client
    // is still sending it when the error is written, and reads the error once it is done.
    // (Closing with its bytes unread would reset the connection: its write would fail and the
    // error be lost.)
    let mut c = Raw::connect(server.addr);
    c.send(&cmd(&[b"SET", b"k", &vec![b'x'; 4 << 20]]));
    c.expect(
        b"-ERR Protocol error: invalid bulk length 4194304 (the limit, max_value_bytes, is 1024)\r\n",
    );
    c.expect_closed();
    // A line that never ends is cut off at 64 KiB instead of being buffered forever.
    let mut c = Raw::connect(server.addr);
    c.send(&vec![b'a'; 70 << 10]);
    c.expect(b"-ERR Protocol error: too big inline request\r\n");
    c.expect_closed();
    // A client that leaves in the middle of a frame.
    let mut c = Raw::connect(server.addr);
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc");
    drop(c);

    // Everyone else is still served, and nothing half-sent was applied.
    let mut c = Raw::connect(server.addr);
    c.roundtrip(&cmd(&[b"GET", b"k"]), b"$-1\r\n");
    c.roundtrip(&cmd(&[b"EXISTS", b"big"]), b":1\r\n");
    stop.store(true, Ordering::Relaxed);
    let answered = other.join().expect("the other client saw an error");
    assert!(answered > 0);
}

/// Commands of every name the node knows, with arguments drawn at random (numbers that
/// overflow, options in any order, empty and binary strings), never end the node: a panic on a
/// node's thread now ends its process (see `run::abort_on_panic`), so a command that reached
/// one would show here as a dead node.
#[test]
fn random_commands_never_end_the_node() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "max_value_bytes = 1024\n");
    let mut con = server.client();
    // All but QUIT (which closes the connection) and FLOTILLA (below).
    let names = [
        "GET", "SET", "DEL", "EXISTS", "MGET", "MSET", "INCR", "INCRBY", "DECR", "DECRBY",
        "DBSIZE", "PING", "ECHO", "AUTH", "HELLO", "SELECT", "INFO", "COMMAND", "CLIENT", "CONFIG",
    ];
    let words: [&[u8]; 20] = [
        b"",
        b"0",
        b"-1",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"99999999999999999999",
        b"1e3",
        b" 1",
        b"NX",
        b"XX",
        b"GET",
        b"EX",
        b"KEEPTTL",
        b"3",
        b"2",
        b"SETNAME",
        b"LIST",
        b"INFO",
        b"GETNAME",
        b"key:000000500000",
    ];
    let mut rng = StdRng::seed_from_u64(5);
    let mut answered = 0;
    for _ in 0..3_000 {
        let mut c = redis::cmd(names[rng.gen_range(0..names.len())]);
        for _ in 0..rng.gen_range(0..6) {
            if rng.gen_bool(0.7) {
                c.arg(words[rng.gen_range(0..words.len())]);
            } else {
                let n = rng.gen_range(0..40);
                c.arg((0..n).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>());
            }
        }
        // An error reply is fine; the connection failing is not.
        match c.query::<redis::Value>(&mut con) {
            Ok(_) => answered += 1,
            Err(e) => assert!(e.kind() != redis::ErrorKind::IoError, "{e}"),
        }
    }
    assert!(
        answered > 300,
        "only {answered} commands answered without an error"
    );
    // Admin requests too: on a node alone, none may change its ranges (it is the last voter
    // of each, and a replica on a node not in its peers is refused at once).
    let ranges = |con: &mut redis::Connection| -> String {
        let lines: Vec<String> = redis::cmd("FLOTILLA").arg("RANGES").query(con).unwrap();
        lines
            .iter()
            .map(|l| l.split(" leader=").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = ranges(&mut con);
    for target in ["1", "all"] {
        let refused = redis::cmd("FLOTILLA")
            .arg("ADDREPLICA")
            .arg(target)
            .arg("2")
            .query::<()>(&mut con)
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("n2 is not a node of this cluster"),
            "{refused}"
        );
    }
    let subcommands = [
        "RANGES",
        "DIGEST",
        "ADDREPLICA",
        "REMOVEREPLICA",
        "TRANSFERLEADER",
        "ranges",
        "nope",
    ];
    let admin_words: [&[u8]; 12] = [
        b"all",
        b"ALL",
        b"1",
        b"r1",
        b"R5",
        b"n1",
        b"2",
        b"0",
        b"-1",
        b"r",
        b"99999999999999999999",
        b"\xff",
    ];
    for _ in 0..500 {
        let mut c = redis::cmd("FLOTILLA");
        c.arg(subcommands[rng.gen_range(0..subcommands.len())]);
        for _ in 0..rng.gen_range(0..4) {
            c.arg(admin_words[rng.gen_range(0..admin_words.len())]);
        }
        if let Err(e) = c.query::<redis::Value>(&mut con) {
            assert!(e.kind() != redis::ErrorKind::IoError, "{e}");
        }
    }
    assert_eq!(
        ranges(&mut con),
        before,
        "an admin request changed the ranges"
    );
    // A split at a range's start is refused; one at a key of any bytes is made.
    for key in [&b""[..], b"f"] {
        let refused = redis::cmd("FLOTILLA")
            .arg("SPLIT")
            .arg(key)
            .query::<String>(&mut con)
            .unwrap_err();
        assert!(
            refused.to_string().contains("starts at that key already"),
            "{refused}"
        );
    }
    // So is one among the keys of a hash tag, which stay in one range.
    let refused = redis::cmd("FLOTILLA")
        .arg("SPLIT")
        .arg("user:{42}:")
        .query::<String>(&mut con)
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(r#"among the keys of hash tag "user:{42}""#),
        "{refused}"
    );
    assert_eq!(ranges(&mut con), before);
    let made: String = redis::cmd("FLOTILLA")
        .arg("SPLIT")
        .arg(b"\xff\x00\r\n")
        .query(&mut con)
        .unwrap();
    assert!(made.starts_with("r1."), "{made}");
    assert_eq!(ranges(&mut con).lines().count(), before.lines().count() + 1);
    assert!(server.running(), "the node ended");
    let mut other = server.client();
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("random")
        .query(&mut other)
        .unwrap();
    let got: String = redis::cmd("GET").arg("after").query(&mut other).unwrap();
    assert_eq!(got, "random");
}

/// Clients over `max_clients` are refused with an error they can read, even one that sends a
/// large command at once, and a client leaving makes room for another.
#[test]
fn a_client_over_max_clients_reads_its_refusal_and_one_leaving_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "max_clients = 2\n");
    let ping = |c: &mut Raw| c.roundtrip(&cmd(&[b"PING"]), b"+PONG\r\n");
    let mut a = Raw::connect(server.addr);
    ping(&mut a);
    let mut b = Raw::connect(server.addr);
    ping(&mut b);

    let mut c = Raw::connect(server.addr);
    c.send(&cmd(&[b"SET", b"k", &vec![b'x'; 4 << 20]]));
    c.expect(b"-ERR max number of clients reached\r\n");
    c.expect_closed();
    drop(c);
    ping(&mut a);

    drop(b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut d = Raw::connect(server.addr);
        d.send(&cmd(&[b"PING"]));
        if d.line() == "+PONG\r\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room made by a client leaving"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ping(&mut a);
}

/// A flood of clients past what the process may open (`ulimit -n`) is refused, and harms
/// nothing: the node lowers `max_clients` to what fits beside the files its data and peers
/// need (as Redis does), answers every connection past it with Redis's refusal (or closes it,
/// when many are being refused at once), and goes on storing. Before, it admitted clients
/// until the process ran out of descriptors and stopped, unable to open its raft log's next
/// file.
#[test]
fn a_flood_of_clients_past_the_open_files_limit_is_refused_and_harms_nothing() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    // 400 files, of which flotilla keeps half for itself (256 under a limit of 512 or more).
    let server = Server::start_with_open_files(dir.path(), "", 400);
    let mut con = server.client();
    let max: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query(&mut con)
        .unwrap();
    assert_eq!(max, ["maxclients", "200"]);
    let mut flood: Vec<std::net::TcpStream> = (0..600)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    let (mut served, mut refused, mut closed) = (0, 0, 0);
    for c in &mut flood {
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = c.write_all(b"PING\r\n");
        let mut reply = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.ends_with(b"\r\n") {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a connection neither served nor refused: {e}"),
            }
        }
        match reply.as_slice() {
            b"+PONG\r\n" => served += 1,
            b"-ERR max number of clients reached\r\n" => refused += 1,
            b"" => closed += 1,
            other => panic!("{:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(served, 199, "{refused} refused, {closed} closed");
    assert!(refused > 0);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let got: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(got, "v");
}
