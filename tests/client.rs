//! A real Redis client (the `redis` crate) and raw bytes against the built binary, started from
//! the shipped config file.

mod common;

use common::{cmd, Raw, Server};

#[test]
fn every_command_answers_with_redis_reply_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut c = Raw::connect(server.addr);

    c.roundtrip(&cmd(&[b"PING"]), b"+PONG\r\n");
    c.roundtrip(&cmd(&[b"ping", b"hi"]), b"$2\r\nhi\r\n");
    c.roundtrip(&cmd(&[b"ECHO", b"a\r\nb"]), b"$4\r\na\r\nb\r\n");
    c.roundtrip(&cmd(&[b"GET", b"greeting"]), b"$-1\r\n");
    c.roundtrip(&cmd(&[b"SET", b"greeting", b"hello"]), b"+OK\r\n");
    c.roundtrip(&cmd(&[b"GET", b"greeting"]), b"$5\r\nhello\r\n");
    c.roundtrip(&cmd(&[b"SET", b"greeting", b"x", b"NX"]), b"$-1\r\n");
    c.roundtrip(&cmd(&[b"SET", b"other", b"x", b"XX"]), b"$-1\r\n");
    c.roundtrip(&cmd(&[b"SET", b"greeting", b"hey", b"XX"]), b"+OK\r\n");
    c.roundtrip(&cmd(&[b"SET", b"fresh", b"1", b"nx"]), b"+OK\r\n");
    c.roundtrip(
        &cmd(&[b"SET", b"k", b"v", b"NX", b"XX"]),
        b"-ERR syntax error\r\n",
    );
    c.roundtrip(&cmd(&[b"INCR", b"counter"]), b":1\r\n");
    c.roundtrip(&cmd(&[b"INCRBY", b"counter", b"41"]), b":42\r\n");
    c.roundtrip(&cmd(&[b"DECRBY", b"counter", b"2"]), b":40\r\n");
    c.roundtrip(
        &cmd(&[b"INCR", b"greeting"]),
        b"-ERR value is not an integer or out of range\r\n",
    );
    c.roundtrip(
        &cmd(&[b"INCRBY", b"counter", b"x"]),
        b"-ERR value is not an integer or out of range\r\n",
    );
    // Keys in different ranges (the shipped config cuts at f, key:000000500000, m, t).
    c.roundtrip(
        &cmd(&[b"MSET", b"apple", b"1", b"melon", b"2", b"zebra", b"3"]),
        b"+OK\r\n",
    );
    c.roundtrip(
        &cmd(&[b"MGET", b"apple", b"nothing", b"melon", b"zebra"]),
        b"*4\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n$1\r\n3\r\n",
    );
    c.roundtrip(
        &cmd(&[b"EXISTS", b"apple", b"zebra", b"nothing", b"apple"]),
        b":3\r\n",
    );
    c.roundtrip(&cmd(&[b"DEL", b"apple", b"zebra", b"nothing"]), b":2\r\n");
    c.roundtrip(&cmd(&[b"EXISTS", b"apple", b"zebra"]), b":0\r\n");
    // greeting, fresh, counter, melon
    c.roundtrip(&cmd(&[b"DBSIZE"]), b":4\r\n");
    c.roundtrip(&cmd(&[b"SELECT", b"0"]), b"+OK\r\n");
    c.roundtrip(
        &cmd(&[b"SELECT", b"1"]),
        b"-ERR DB index is out of range\r\n",
    );
    c.roundtrip(&cmd(&[b"CLIENT", b"SETNAME", b"tester"]), b"+OK\r\n");
    c.roundtrip(&cmd(&[b"CLIENT", b"GETNAME"]), b"$6\r\ntester\r\n");
    c.roundtrip(
        &cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"]),
        b"+OK\r\n",
    );
    c.roundtrip(&cmd(&[b"COMMAND", b"DOCS"]), b"*0\r\n");
    c.roundtrip(&cmd(&[b"COMMAND", b"COUNT"]), b":59\r\n");
    c.roundtrip(
        &cmd(&[b"COMMAND", b"INFO", b"get"]),
        b"*1\r\n*6\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n",
    );
    c.roundtrip(
        &cmd(&[b"AUTH", b"pw"]),
        b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    );
    // The default user, when no password is set, as Redis 7.0.15 answers.
    c.roundtrip(&cmd(&[b"AUTH", b"default", b"any"]), b"+OK\r\n");
    c.roundtrip(
        &cmd(&[b"CONFIG", b"GET"]),
        b"-ERR wrong number of arguments for 'config|get' command\r\n",
    );
    // The settings clients read, as flotilla behaves: never evicting, every write synced.
    c.roundtrip(
        &cmd(&[b"CONFIG", b"GET", b"maxmemory-policy"]),
        b"*2\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n",
    );
    c.roundtrip(
        &cmd(&[b"CONFIG", b"GET", b"SAVE", b"appendonly", b"app*", b"nosuch"]),
        b"*6\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n$4\r\nsave\r\n$0\r\n\r\n",
    );
    c.roundtrip(&cmd(&[b"CONFIG", b"GET", b"requirepass"]), b"*0\r\n");
    let port = server.addr.port().to_string();
    let port_reply = format!("*2\r\n$4\r\nport\r\n${}\r\n{port}\r\n", port.len());
    c.roundtrip(&cmd(&[b"CONFIG", b"GET", b"port"]), port_reply.as_bytes());
    c.roundtrip(&cmd(&[b"INFO", b"nosuchsection"]), b"$0\r\n\r\n");
    // Errors of the server commands, as redis-server 7.0.15 answers them.
    for (request, answer) in [
        (
            &[&b"SELECT"[..], b"abc"][..],
            &b"-ERR value is not an integer or out of range\r\n"[..],
        ),
        (
            &[b"HELLO", b"abc"],
            b"-ERR Protocol version is not an integer or out of range\r\n",
        ),
        (
            &[b"HELLO", b"1"],
            b"-NOPROTO unsupported protocol version\r\n",
        ),
        (
            &[b"HELLO", b"2", b"AUTH"],
            b"-ERR Syntax error in HELLO option 'AUTH'\r\n",
        ),
        (
            &[b"CLIENT", b"NOSUCH"],
            b"-ERR unknown subcommand 'NOSUCH'. Try CLIENT HELP.\r\n",
        ),
        (
            &[b"CLIENT", b"SETNAME"],
            b"-ERR wrong number of arguments for 'client|setname' command\r\n",
        ),
        (
            &[b"CLIENT", b"ID", b"x"],
            b"-ERR wrong number of arguments for 'client|id' command\r\n",
        ),
        (
            &[b"CLIENT", b"KILL"],
            b"-ERR wrong number of arguments for 'client|kill' command\r\n",
        ),
        (&[b"CLIENT", b"LIST", b"x"], b"-ERR syntax error\r\n"),
        (
            &[b"COMMAND", b"nosuch", b"x"],
            b"-ERR unknown subcommand 'nosuch'. Try COMMAND HELP.\r\n",
        ),
        (
            &[b"COMMAND", b"COUNT", b"x"],
            b"-ERR wrong number of arguments for 'command|count' command\r\n",
        ),
        (
            &[b"CONFIG", b"nosuch"],
            b"-ERR unknown subcommand 'nosuch'. Try CONFIG HELP.\r\n",
        ),
        (
            &[b"COMMAND", b""],
            b"-ERR unknown subcommand ''. Try COMMAND HELP.\r\n",
        ),
        // A client's bytes come back cut to 128, line breaks at the ends dropped and those
        // within made spaces, as from Redis; but bytes that are not UTF-8 as U+FFFD (Redis
        // sends them as they came, and a client reading errors as text chokes on them).
        (
            &[b"COMMAND", b"\xff"],
            "-ERR unknown subcommand '\u{fffd}'. Try COMMAND HELP.\r\n".as_bytes(),
        ),
        (
            &[b"CONFIG", &[b'x'; 200]],
            &[
                &b"-ERR unknown subcommand '"[..],
                &[b'x'; 128],
                b"'. Try CONFIG HELP.\r\n",
            ]
            .concat(),
        ),
        (
            &[b"EXPIRE", b"k", b"1", b"\r\nx\r\n"],
            b"-ERR Unsupported option   x\r\n",
        ),
        // Names and options match in ASCII only: not the Kelvin sign for K.
        (
            &[b"CLIENT", "\u{212a}ILL".as_bytes(), b"ID", b"1"],
            "-ERR unknown subcommand '\u{212a}ILL'. Try CLIENT HELP.\r\n".as_bytes(),
        ),
        (
            &[b"SELECT", b"4294967296"],
            b"-ERR value is out of range, value must between -2147483648 and 2147483647\r\n",
        ),
        (&[b"SELECT", b"-1"], b"-ERR DB index is out of range\r\n"),
        (
            &[b"CLIENT", b"NO-EVICT", b"maybe"],
            b"-ERR syntax error\r\n",
        ),
        (&[b"CLIENT", b"NO-EVICT", b"ON"], b"+OK\r\n"),
        (
            &[b"HELLO", b"2", b"SETNAME", b"a b", b"JUNK"],
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
        ),
        (
            &[b"HELLO", b"2", b"JUNK", b"SETNAME", b"a b"],
            b"-ERR Syntax error in HELLO option 'JUNK'\r\n",
        ),
    ] {
        c.roundtrip(&cmd(request), answer);
    }
    // The HELP those errors point to: status lines naming the subcommands, each of them one
    // the node takes (not an unknown subcommand); HELP takes no argument.
    let mut con = server.client();
    for command in ["COMMAND", "CONFIG", "CLIENT", "MEMORY", "OBJECT"] {
        let lines: Vec<String> = redis::cmd(command).arg("HELP").query(&mut con).unwrap();
        assert!(
            lines[0].starts_with(&format!("{command} <subcommand>")),
            "{lines:?}"
        );
        let named: Vec<&str> = (lines[1..].iter())
            .filter(|l| !l.starts_with(' ') && !l.starts_with('('))
            .flat_map(|l| l.split(", "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert!(named.len() >= 2 && named.contains(&"HELP"), "{named:?}");
        for sub in named {
            let answer = redis::cmd(command).arg(sub).query::<redis::Value>(&mut con);
            if let Err(e) = answer {
                assert!(
                    !e.to_string().contains("unknown subcommand"),
                    "{command} {sub}: {e}"
                );
            }
        }
        let mut extra = redis::cmd(command);
        let refused = (extra.arg("HELP").arg("x"))
            .query::<redis::Value>(&mut con)
            .unwrap_err();
        let expected = format!(
            "wrong number of arguments for '{}|help'",
            command.to_lowercase()
        );
        assert!(refused.to_string().contains(&expected), "{refused}");
    }
    // TIME: the node's clock (here the system's), seconds and microseconds; in a transaction
    // too.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut con).unwrap();
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        secs.abs_diff(system) <= 5 && micros < 1_000_000,
        "{secs} {micros}"
    );
    let ((later, _),): ((u64, u64),) = redis::pipe().atomic().cmd("TIME").query(&mut con).unwrap();
    assert!(later >= secs, "{later} after {secs}");
    // MEMORY USAGE: the key and its stored value (a tag byte, and 8 for a deadline), as a
    // range's size counts them; OBJECT as Redis answers under `noeviction`. Nil for no key.
    c.roundtrip(&cmd(&[b"SET", b"m:n", b"-1234"]), b"+OK\r\n");
    c.roundtrip(
        &cmd(&[b"SET", b"m:s", &[b'x'; 44], b"EX", b"100"]),
        b"+OK\r\n",
    );
    c.roundtrip(&cmd(&[b"SET", b"m:r", &[b'x'; 45]]), b"+OK\r\n");
    for (request, answer) in [
        (&[&b"MEMORY"[..], b"USAGE", b"m:n"][..], &b":9\r\n"[..]),
        (&[b"MEMORY", b"USAGE", b"m:s", b"SAMPLES", b"0"], b":56\r\n"),
        (&[b"memory", b"usage", b"m:r"], b":49\r\n"),
        (&[b"MEMORY", b"USAGE", b"m:none"], b"$-1\r\n"),
        (&[b"OBJECT", b"ENCODING", b"m:n"], b"$3\r\nint\r\n"),
        (&[b"OBJECT", b"ENCODING", b"m:s"], b"$6\r\nembstr\r\n"),
        (&[b"OBJECT", b"encoding", b"m:r"], b"$3\r\nraw\r\n"),
        (&[b"OBJECT", b"ENCODING", b"m:none"], b"$-1\r\n"),
        (&[b"OBJECT", b"REFCOUNT", b"m:n"], b":1\r\n"),
        (&[b"OBJECT", b"FREQ", b"m:none"], b"$-1\r\n"),
        (&[b"OBJECT", b"IDLETIME", b"m:none"], b"$-1\r\n"),
        (
            &[b"MEMORY", b"USAGE", b"m:n", b"SAMPLES", b"-1"],
            b"-ERR syntax error\r\n",
        ),
        (
            &[b"MEMORY", b"USAGE", b"m:n", b"SAMPLES", b"x"],
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (
            &[b"MEMORY", b"USAGE", b"m:n", b"SOME"],
            b"-ERR syntax error\r\n",
        ),
        (
            &[b"MEMORY", b"USAGE"],
            b"-ERR wrong number of arguments for 'memory|usage' command\r\n",
        ),
        (
            &[b"MEMORY", b"STATS"],
            b"-ERR unknown subcommand 'STATS'. Try MEMORY HELP.\r\n",
        ),
        (
            &[b"OBJECT", b"ENCODING", b"m:n", b"m:s"],
            b"-ERR wrong number of arguments for 'object|encoding' command\r\n",
        ),
        (
            &[b"OBJECT", b"FREQ", b"m:n"],
            b"-ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.\r\n",
        ),
    ] {
        c.roundtrip(&cmd(request), answer);
    }
    // In a transaction, as of its own writes.
    let (usage, encoding): (u64, String) = redis::pipe()
        .atomic()
        .set("m:n", "12345678901234567890")
        .ignore()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg("m:n")
        .cmd("OBJECT")
        .arg("ENCODING")
        .arg("m:n")
        .query(&mut con)
        .unwrap();
    assert_eq!((usage, encoding.as_str()), (3 + 21, "embstr"));
    // HELLO's empty name clears the name, as CLIENT SETNAME's does.
    c.roundtrip(&cmd(&[b"CLIENT", b"SETNAME", b"x"]), b"+OK\r\n");
    c.send(&cmd(&[b"HELLO", b"2", b"SETNAME", b""]));
    assert_eq!(c.line(), "*14\r\n");
    (0..25).for_each(|_| drop(c.line()));
    c.roundtrip(&cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    c.roundtrip(
        &cmd(&[b"HELLO", b"3"]),
        b"-NOPROTO this server speaks RESP2 only\r\n",
    );
    c.send(&cmd(&[b"HELLO", b"2"]));
    assert_eq!(c.line(), "*14\r\n");
    let hello: Vec<String> = (0..25).map(|_| c.line()).collect();
    assert_eq!(hello[3], "flotilla\r\n");
    assert_eq!(hello[10], ":2\r\n");
    assert_eq!(hello[24], "*0\r\n");
    c.send(&cmd(&[b"INFO"]));
    let header = c.line();
    assert!(header.starts_with('$'), "{header}");
    assert!(c.line().starts_with("# Server"));
    let mut fields = std::collections::BTreeMap::new();
    loop {
        let line = c.line();
        if line.starts_with("# Keyspace") {
            c.line();
            c.line();
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    // What client libraries check: not loading, never evicting.
    assert_eq!(fields.get("loading").map(String::as_str), Some("0"));
    let policy = fields.get("maxmemory_policy").map(String::as_str);
    assert_eq!(policy, Some("noeviction"));
    let used: u64 = fields["used_memory"].parse().unwrap();
    assert!(used > 1 << 20, "used_memory:{used}");
    // Counts a monitoring script reads.
    for field in [
        "raft_entries_cached",
        "raft_entry_cache_bytes",
        "raft_log_entries",
    ] {
        let value = fields.get(field).map(|v| v.parse::<u64>());
        assert!(matches!(value, Some(Ok(_))), "{field}: {value:?}");
    }
    // Sections asked for, in any case; the others left out.
    let mut c = Raw::connect(server.addr);
    c.send(&cmd(&[b"INFO", b"keyspace", b"FLOTILLA", b"nosuch"]));
    c.line();
    let mut headers = Vec::new();
    loop {
        let line = c.line();
        if line.starts_with('#') {
            headers.push(line.trim_end().to_string());
        }
        if line.starts_with("db0:") {
            break;
        }
    }
    assert_eq!(headers, ["# Flotilla", "# Keyspace"]);
    assert_eq!(c.line(), "\r\n", "the end of the bulk string");
    // Inline commands, as typed into telnet, with Redis's quotes.
    c.roundtrip(b"SET inline yes\r\nGET inline\r\n", b"+OK\r\n$3\r\nyes\r\n");
    c.roundtrip(
        b"SET inline \"a b\\x21\"\r\nGET inline\r\n",
        b"+OK\r\n$4\r\na b!\r\n",
    );
    // Nothing sent after QUIT runs, as in Redis.
    c.roundtrip(b"SET quit1 x\r\nQUIT\r\nSET quit2 y\r\n", b"+OK\r\n+OK\r\n");
    c.expect_closed();
    let mut c = Raw::connect(server.addr);
    c.roundtrip(
        &[cmd(&[b"GET", b"quit1"]), cmd(&[b"GET", b"quit2"])].concat(),
        b"$1\r\nx\r\n$-1\r\n",
    );
}

/// `GETSET`, `SET ... GET`, `SETNX`, `GETDEL`, `APPEND`, `STRLEN`, `GETRANGE` and `SUBSTR`,
/// each reply byte for byte as Redis 7.0.15 gave it to the same commands. The writes go
/// through raft and answer with what they read when applied.
#[test]
fn string_commands_answer_as_redis_does() {
    let script: Script = &[
        (&[b"GETSET", b"s", b"one"], b"$-1\r\n"),
        (&[b"GETSET", b"s", b"two"], b"$3\r\none\r\n"),
        (&[b"SET", b"s", b"three", b"GET"], b"$3\r\ntwo\r\n"),
        (&[b"SET", b"s", b"four", b"NX", b"GET"], b"$5\r\nthree\r\n"),
        (&[b"SET", b"s", b"five", b"XX", b"GET"], b"$5\r\nthree\r\n"),
        (&[b"SET", b"nope", b"x", b"XX", b"GET"], b"$-1\r\n"),
        (&[b"GET", b"nope"], b"$-1\r\n"),
        (&[b"SET", b"g", b"new", b"nx", b"get"], b"$-1\r\n"),
        (&[b"GET", b"g"], b"$3\r\nnew\r\n"),
        (&[b"SETNX", b"s", b"x"], b":0\r\n"),
        (&[b"SETNX", b"n", b"x"], b":1\r\n"),
        (&[b"GETDEL", b"n"], b"$1\r\nx\r\n"),
        (&[b"GETDEL", b"n"], b"$-1\r\n"),
        (&[b"EXISTS", b"n"], b":0\r\n"),
        (&[b"APPEND", b"a1", b"Hello"], b":5\r\n"),
        (&[b"APPEND", b"a1", b" World"], b":11\r\n"),
        (&[b"GET", b"a1"], b"$11\r\nHello World\r\n"),
        (&[b"STRLEN", b"a1"], b":11\r\n"),
        (&[b"STRLEN", b"missing"], b":0\r\n"),
        (&[b"GETRANGE", b"a1", b"0", b"4"], b"$5\r\nHello\r\n"),
        (&[b"GETRANGE", b"a1", b"-5", b"-1"], b"$5\r\nWorld\r\n"),
        (&[b"GETRANGE", b"a1", b"0", b"-100"], b"$1\r\nH\r\n"),
        (&[b"GETRANGE", b"a1", b"-100", b"-200"], b"$0\r\n\r\n"),
        (&[b"GETRANGE", b"missing", b"0", b"10"], b"$0\r\n\r\n"),
        (&[b"SUBSTR", b"a1", b"6", b"100"], b"$5\r\nWorld\r\n"),
        (
            &[b"GETRANGE", b"a1", b"x", b"1"],
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (
            &[b"GETDEL", b"a", b"b"],
            b"-ERR wrong number of arguments for 'getdel' command\r\n",
        ),
        (&[b"APPEND", b"cnt", b"1"], b":1\r\n"),
        (&[b"INCR", b"cnt"], b":2\r\n"),
        (&[b"APPEND", b"cnt", b"0"], b":2\r\n"),
        (&[b"GET", b"cnt"], b"$2\r\n20\r\n"),
        // Past max_value_bytes (16 here), the value is left as it was.
        (
            &[b"APPEND", b"a1", b"123456"],
            b"-ERR string exceeds maximum allowed size (max_value_bytes, 16)\r\n",
        ),
        (&[b"STRLEN", b"a1"], b":11\r\n"),
        (&[b"APPEND", b"a1", b"12345"], b":16\r\n"),
        // RENAME, RENAMENX and MSETNX (keys of one range: m to t), deadlines moving with values.
        (&[b"RENAME", b"ra", b"rb"], b"-ERR no such key\r\n"),
        (&[b"RENAMENX", b"ra", b"rb"], b"-ERR no such key\r\n"),
        (&[b"SET", b"ra", b"1", b"ex", b"100"], b"+OK\r\n"),
        (&[b"RENAME", b"ra", b"ra"], b"+OK\r\n"),
        (&[b"RENAMENX", b"ra", b"ra"], b":0\r\n"),
        (&[b"RENAME", b"ra", b"rb"], b"+OK\r\n"),
        (&[b"TTL", b"rb"], b":100\r\n"),
        (&[b"GET", b"ra"], b"$-1\r\n"),
        (&[b"SET", b"rc", b"x"], b"+OK\r\n"),
        (&[b"RENAMENX", b"rb", b"rc"], b":0\r\n"),
        (&[b"RENAME", b"rb", b"rc"], b"+OK\r\n"),
        (&[b"TTL", b"rc"], b":100\r\n"),
        (&[b"GET", b"rc"], b"$1\r\n1\r\n"),
        (&[b"SET", b"rd", b"y"], b"+OK\r\n"),
        (&[b"RENAMENX", b"rc", b"re"], b":1\r\n"),
        (&[b"TTL", b"re"], b":100\r\n"),
        (&[b"EXISTS", b"rc"], b":0\r\n"),
        (&[b"RENAME", b"rd", b"re"], b"+OK\r\n"),
        (&[b"TTL", b"re"], b":-1\r\n"),
        (&[b"GET", b"re"], b"$1\r\ny\r\n"),
        (
            &[b"MSETNX", b"rm1", b"1", b"rm2"],
            b"-ERR wrong number of arguments for 'msetnx' command\r\n",
        ),
        (&[b"MSETNX", b"rm1", b"1", b"rm2", b"2"], b":1\r\n"),
        (&[b"MSETNX", b"rm1", b"1", b"rm3", b"3"], b":0\r\n"),
        (
            &[b"MGET", b"rm1", b"rm2", b"rm3"],
            b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n",
        ),
        (&[b"MSETNX", b"rd2", b"1", b"rd2", b"2"], b":1\r\n"),
        (&[b"GET", b"rd2"], b"$1\r\n2\r\n"),
        (&[b"RENAME", b"rzz", b"rzz"], b"-ERR no such key\r\n"),
    ];
    answers_each(script, "max_value_bytes = 16");
}

/// Key expiry answers as Redis 7.0 does, byte for byte (each reply below is redis-server's to
/// the same command): deadlines given by `SET`'s options, `SETEX`, `GETEX` and `EXPIRE` and its
/// kin with their conditions, kept by `INCR`, `APPEND` and `KEEPTTL`, dropped by `SET`,
/// `GETSET` and `PERSIST`, reported by `TTL` and its kin, with Redis's errors.
#[test]
fn expiry_commands_answer_as_redis_does() {
    let script: Script = &[
        (&[b"SET", b"e", b"v", b"EX", b"100"], b"+OK\r\n"),
        (&[b"TTL", b"e"], b":100\r\n"),
        (
            &[b"SET", b"e", b"v", b"EX", b"0"],
            b"-ERR invalid expire time in 'set' command\r\n",
        ),
        (
            &[b"SET", b"e", b"v", b"EX", b"-5"],
            b"-ERR invalid expire time in 'set' command\r\n",
        ),
        (
            &[b"SET", b"e", b"v", b"EX", b"abc"],
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (
            &[b"SET", b"e", b"v", b"EX", b"10", b"PX", b"10"],
            b"-ERR syntax error\r\n",
        ),
        (
            &[b"SET", b"e", b"v", b"KEEPTTL", b"EX", b"10"],
            b"-ERR syntax error\r\n",
        ),
        (
            &[b"SET", b"e", b"v", b"EX", b"10", b"KEEPTTL"],
            b"-ERR syntax error\r\n",
        ),
        (&[b"SET", b"e", b"v", b"EX"], b"-ERR syntax error\r\n"),
        (&[b"SET", b"e", b"v", b"keepttl", b"keepttl"], b"+OK\r\n"),
        (&[b"SET", b"e", b"v2", b"KEEPTTL"], b"+OK\r\n"),
        (&[b"TTL", b"e"], b":100\r\n"),
        (&[b"GET", b"e"], b"$2\r\nv2\r\n"),
        (&[b"SET", b"e", b"v3"], b"+OK\r\n"),
        (&[b"TTL", b"e"], b":-1\r\n"),
        (&[b"TTL", b"missing"], b":-2\r\n"),
        (&[b"PTTL", b"missing"], b":-2\r\n"),
        (&[b"PTTL", b"e"], b":-1\r\n"),
        (&[b"EXPIRE", b"e", b"100"], b":1\r\n"),
        (&[b"EXPIRE", b"e", b"100", b"NX"], b":0\r\n"),
        (&[b"EXPIRE", b"e", b"200", b"GT"], b":1\r\n"),
        (&[b"EXPIRE", b"e", b"50", b"GT"], b":0\r\n"),
        (&[b"EXPIRE", b"e", b"50", b"LT"], b":1\r\n"),
        (&[b"TTL", b"e"], b":50\r\n"),
        (&[b"EXPIRE", b"e", b"40", b"XX", b"LT"], b":1\r\n"),
        (&[b"EXPIRE", b"e", b"45", b"xx", b"lt"], b":0\r\n"),
        (&[b"TTL", b"e"], b":40\r\n"),
        (
            &[b"EXPIRE", b"e", b"10", b"NX", b"XX"],
            b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
        ),
        (
            &[b"EXPIRE", b"e", b"10", b"GT", b"LT"],
            b"-ERR GT and LT options at the same time are not compatible\r\n",
        ),
        (
            &[b"EXPIRE", b"e", b"10", b"FOO"],
            b"-ERR Unsupported option FOO\r\n",
        ),
        (
            &[b"EXPIRE", b"e", b"abc"],
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (
            &[b"EXPIRE", b"e", b"abc", b"NX", b"GT"],
            b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
        ),
        (
            &[b"EXPIRE", b"e", b"abc", b"FOO"],
            b"-ERR Unsupported option FOO\r\n",
        ),
        (&[b"EXPIREAT", b"e", b"4102444800"], b":1\r\n"),
        (&[b"EXPIRETIME", b"e"], b":4102444800\r\n"),
        (&[b"PEXPIRETIME", b"e"], b":4102444800000\r\n"),
        (&[b"PEXPIREAT", b"e", b"4102444800123"], b":1\r\n"),
        (&[b"PEXPIRETIME", b"e"], b":4102444800123\r\n"),
        (&[b"EXPIRETIME", b"e"], b":4102444800\r\n"),
        (&[b"PEXPIREAT", b"e", b"4102444800500"], b":1\r\n"),
        (&[b"EXPIRETIME", b"e"], b":4102444801\r\n"),
        (&[b"PERSIST", b"e"], b":1\r\n"),
        (&[b"PERSIST", b"e"], b":0\r\n"),
        (&[b"TTL", b"e"], b":-1\r\n"),
        (&[b"EXPIRETIME", b"e"], b":-1\r\n"),
        (&[b"PERSIST", b"missing"], b":0\r\n"),
        (&[b"EXPIRE", b"missing", b"10"], b":0\r\n"),
        (&[b"EXPIRE", b"e", b"-1"], b":1\r\n"),
        (&[b"EXISTS", b"e"], b":0\r\n"),
        (&[b"GET", b"e"], b"$-1\r\n"),
        (&[b"EXPIRETIME", b"e"], b":-2\r\n"),
        (&[b"SETEX", b"s", b"100", b"v"], b"+OK\r\n"),
        (&[b"TTL", b"s"], b":100\r\n"),
        (
            &[b"SETEX", b"s", b"0", b"v"],
            b"-ERR invalid expire time in 'setex' command\r\n",
        ),
        (
            &[b"PSETEX", b"s", b"0", b"v"],
            b"-ERR invalid expire time in 'psetex' command\r\n",
        ),
        (
            &[b"SETEX", b"s", b"x", b"v"],
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (
            &[b"PSETEX", b"s", b"-3", b"v"],
            b"-ERR invalid expire time in 'psetex' command\r\n",
        ),
        (
            &[b"SETEX", b"s", b"9223372036854775807", b"v"],
            b"-ERR invalid expire time in 'setex' command\r\n",
        ),
        (&[b"GETEX", b"s"], b"$1\r\nv\r\n"),
        (&[b"GETEX", b"s", b"PERSIST"], b"$1\r\nv\r\n"),
        (&[b"TTL", b"s"], b":-1\r\n"),
        (&[b"GETEX", b"s", b"EX", b"100"], b"$1\r\nv\r\n"),
        (&[b"TTL", b"s"], b":100\r\n"),
        // Options match in ASCII only: "PERſIST" (a long s) is not PERSIST.
        (
            &[b"GETEX", b"s", "PER\u{17f}IST".as_bytes()],
            b"-ERR syntax error\r\n",
        ),
        (&[b"TTL", b"s"], b":100\r\n"),
        (
            &[b"GETEX", b"s", b"EX", b"0"],
            b"-ERR invalid expire time in 'getex' command\r\n",
        ),
        (&[b"GETEX", b"s", b"FOO"], b"-ERR syntax error\r\n"),
        (&[b"GETEX", b"s", b"EX"], b"-ERR syntax error\r\n"),
        (
            &[b"GETEX", b"s", b"PERSIST", b"EX", b"10"],
            b"-ERR syntax error\r\n",
        ),
        (
            &[b"GETEX", b"s", b"EX", b"10", b"PX", b"10"],
            b"-ERR syntax error\r\n",
        ),
        (&[b"GETEX", b"missing", b"EX", b"10"], b"$-1\r\n"),
        (&[b"GETEX", b"s", b"EXAT", b"4102444800"], b"$1\r\nv\r\n"),
        (&[b"EXPIRETIME", b"s"], b":4102444800\r\n"),
        (&[b"GETEX", b"s", b"pxat", b"1"], b"$1\r\nv\r\n"),
        (&[b"GET", b"s"], b"$-1\r\n"),
        (&[b"SET", b"n", b"5", b"EX", b"100"], b"+OK\r\n"),
        (&[b"INCR", b"n"], b":6\r\n"),
        (&[b"TTL", b"n"], b":100\r\n"),
        (&[b"APPEND", b"n", b"0"], b":2\r\n"),
        (&[b"TTL", b"n"], b":100\r\n"),
        (&[b"GETSET", b"n", b"1"], b"$2\r\n60\r\n"),
        (&[b"TTL", b"n"], b":-1\r\n"),
        (
            &[b"SET", b"n", b"1", b"PX", b"100000", b"NX", b"GET"],
            b"$1\r\n1\r\n",
        ),
        (
            &[b"SET", b"n", b"2", b"PX", b"100000", b"GET"],
            b"$1\r\n1\r\n",
        ),
        (&[b"SET", b"p", b"v", b"PXAT", b"1"], b"+OK\r\n"),
        (&[b"GET", b"p"], b"$-1\r\n"),
        (&[b"EXISTS", b"p"], b":0\r\n"),
        (&[b"SET", b"p", b"v", b"EXAT", b"1", b"GET"], b"$-1\r\n"),
        (
            &[b"SET", b"big", b"v", b"EX", b"9223372036854775"],
            b"-ERR invalid expire time in 'set' command\r\n",
        ),
        (
            &[b"SET", b"big", b"v", b"EX", b"9223372036854776"],
            b"-ERR invalid expire time in 'set' command\r\n",
        ),
        (
            &[b"SET", b"big", b"v", b"PX", b"9223372036854775807"],
            b"-ERR invalid expire time in 'set' command\r\n",
        ),
        (&[b"SET", b"big", b"v"], b"+OK\r\n"),
        (
            &[b"EXPIRE", b"big", b"9223372036854775807"],
            b"-ERR invalid expire time in 'expire' command\r\n",
        ),
        (
            &[b"PEXPIRE", b"big", b"9223372036854775807"],
            b"-ERR invalid expire time in 'pexpire' command\r\n",
        ),
        (&[b"EXPIREAT", b"big", b"9223372036854775"], b":1\r\n"),
        (&[b"EXPIRETIME", b"big"], b":9223372036854775\r\n"),
        (&[b"PEXPIREAT", b"big", b"9223372036854775807"], b":1\r\n"),
        (&[b"PEXPIRETIME", b"big"], b":9223372036854775807\r\n"),
        (
            &[b"EXPIRE", b"big", b"-9223372036854775808"],
            b"-ERR invalid expire time in 'expire' command\r\n",
        ),
        (&[b"EXISTS", b"big"], b":1\r\n"),
        (
            &[b"SETEX", b"s"],
            b"-ERR wrong number of arguments for 'setex' command\r\n",
        ),
        (
            &[b"TTL"],
            b"-ERR wrong number of arguments for 'ttl' command\r\n",
        ),
        (
            &[b"EXPIRE", b"s"],
            b"-ERR wrong number of arguments for 'expire' command\r\n",
        ),
        (
            &[b"PERSIST", b"a", b"b"],
            b"-ERR wrong number of arguments for 'persist' command\r\n",
        ),
        // Options given again, and GETEX's checks, as Redis 7.0 makes them.
        (
            &[b"SET", b"r", b"v", b"EX", b"1", b"EX", b"200"],
            b"+OK\r\n",
        ),
        (&[b"TTL", b"r"], b":200\r\n"),
        (
            &[b"SET", b"r", b"v", b"EXAT", b"1", b"EXAT", b"4102444800"],
            b"+OK\r\n",
        ),
        (&[b"EXPIRETIME", b"r"], b":4102444800\r\n"),
        (
            &[b"GETEX", b"r", b"EX", b"1", b"EX", b"100"],
            b"$1\r\nv\r\n",
        ),
        (&[b"TTL", b"r"], b":100\r\n"),
        (&[b"GETEX", b"r", b"persist", b"persist"], b"$1\r\nv\r\n"),
        (&[b"TTL", b"r"], b":-1\r\n"),
        (&[b"GETEX", b"missing", b"EX", b"0"], b"$-1\r\n"),
        (&[b"GETEX", b"missing", b"EX", b"abc"], b"$-1\r\n"),
        (&[b"GETEX", b"missing", b"FOO"], b"-ERR syntax error\r\n"),
        (
            &[b"GETEX", b"r", b"EX", b"0"],
            b"-ERR invalid expire time in 'getex' command\r\n",
        ),
        (
            &[b"GETEX", b"r", b"PERSIST", b"EX", b"10"],
            b"-ERR syntax error\r\n",
        ),
        (&[b"PEXPIREAT", b"r", b"9223372036854775807"], b":1\r\n"),
        (&[b"EXPIRETIME", b"r"], b":9223372036854776\r\n"),
        (&[b"DEL", b"r"], b":1\r\n"),
    ];
    answers_each(script, "");
}

/// Transactions answer as Redis 7.0 does, byte for byte (each reply below is redis-server's to
/// the same command, on a node of one range): `MULTI`, `EXEC`, `DISCARD`, `WATCH` and
/// `UNWATCH` and their errors, commands queued and run with their errors in `EXEC`'s answer,
/// reads seeing the transaction's own writes, a watched key written by another command
/// aborting `EXEC`; and `TYPE`, `TOUCH` and `UNLINK`.
#[test]
fn transactions_answer_as_redis_does() {
    let script: Script = &[
        (&[b"exec"], b"-ERR EXEC without MULTI\r\n"),
        (&[b"discard"], b"-ERR DISCARD without MULTI\r\n"),
        (&[b"unwatch"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"multi"], b"-ERR MULTI calls can not be nested\r\n"),
        (&[b"set", b"a", b"1"], b"+QUEUED\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"incr", b"a"], b"+QUEUED\r\n"),
        (&[b"set", b"b", b"x"], b"+QUEUED\r\n"),
        (&[b"incr", b"b"], b"+QUEUED\r\n"),
        (&[b"set", b"c", b"v", b"ex", b"abc"], b"+QUEUED\r\n"),
        (&[b"append", b"b", b"y"], b"+QUEUED\r\n"),
        (&[b"mget", b"a", b"b", b"nope"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*8\r\n+OK\r\n$1\r\n1\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n-ERR value is not an integer or out of range\r\n:2\r\n*3\r\n$1\r\n2\r\n$2\r\nxy\r\n$-1\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"set", b"a", b"1"], b"+QUEUED\r\n"),
        (&[b"get"], b"-ERR wrong number of arguments for 'get' command\r\n"),
        (&[b"exec"], b"-EXECABORT Transaction discarded because of previous errors.\r\n"),
        (&[b"get", b"a"], b"$1\r\n2\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"nosuch", b"x"], b"-ERR unknown command 'nosuch', with args beginning with: 'x' \r\n"),
        (&[b"set", b"a", b"5"], b"+QUEUED\r\n"),
        (&[b"exec"], b"-EXECABORT Transaction discarded because of previous errors.\r\n"),
        (&[b"get", b"a"], b"$1\r\n2\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"exec", b"x"], b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"),
        (&[b"exec"], b"-ERR EXEC without MULTI\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"discard", b"x"], b"-ERR wrong number of arguments for 'discard' command\r\n"),
        (&[b"discard"], b"+OK\r\n"),
        (&[b"exec"], b"-ERR EXEC without MULTI\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"watch", b"x"], b"-ERR WATCH inside MULTI is not allowed\r\n"),
        (&[b"set", b"k", b"v"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*1\r\n+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"ping"], b"+QUEUED\r\n"),
        (&[b"echo", b"hi"], b"+QUEUED\r\n"),
        (&[b"select", b"0"], b"+QUEUED\r\n"),
        (&[b"unwatch"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*4\r\n+PONG\r\n$2\r\nhi\r\n+OK\r\n+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"exec"], b"*0\r\n"),
        // A refused EXEC discards the watch too, with or without MULTI.
        (&[b"watch", b"a"], b"+OK\r\n"),
        (&[b"exec", b"x"], b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"),
        (&[b"set", b"a", b"zz"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*1\r\n$2\r\nzz\r\n"),
        (&[b"watch"], b"-ERR wrong number of arguments for 'watch' command\r\n"),
        (&[b"unwatch", b"x"], b"-ERR wrong number of arguments for 'unwatch' command\r\n"),
        (&[b"watch", b"a"], b"+OK\r\n"),
        (&[b"set", b"a", b"changed"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*-1\r\n"),
        (&[b"get", b"a"], b"$7\r\nchanged\r\n"),
        (&[b"watch", b"a"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"set", b"a", b"mine"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*2\r\n$7\r\nchanged\r\n+OK\r\n"),
        (&[b"watch", b"a", b"a", b"gone"], b"+OK\r\n"),
        (&[b"set", b"gone", b"now"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"set", b"a", b"never"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*-1\r\n"),
        (&[b"get", b"a"], b"$4\r\nmine\r\n"),
        (&[b"watch", b"a"], b"+OK\r\n"),
        (&[b"unwatch"], b"+OK\r\n"),
        (&[b"set", b"a", b"again"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*1\r\n$5\r\nagain\r\n"),
        (&[b"watch", b"a"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"set", b"a", b"d"], b"+QUEUED\r\n"),
        (&[b"discard"], b"+OK\r\n"),
        (&[b"set", b"a", b"e"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"get", b"a"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*1\r\n$1\r\ne\r\n"),
        (&[b"set", b"k", b"v"], b"+OK\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"getex", b"k", b"persist"], b"+QUEUED\r\n"),
        (&[b"ttl", b"k"], b"+QUEUED\r\n"),
        (&[b"mget", b"k", b"zz"], b"+QUEUED\r\n"),
        (&[b"exists", b"k", b"k"], b"+QUEUED\r\n"),
        (&[b"strlen", b"k"], b"+QUEUED\r\n"),
        (&[b"getrange", b"k", b"0", b"0"], b"+QUEUED\r\n"),
        (&[b"type", b"k"], b"+QUEUED\r\n"),
        (&[b"touch", b"k", b"zz", b"k"], b"+QUEUED\r\n"),
        (&[b"del", b"k"], b"+QUEUED\r\n"),
        (&[b"type", b"k"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*10\r\n$1\r\nv\r\n:-1\r\n*2\r\n$1\r\nv\r\n$-1\r\n:2\r\n:1\r\n$1\r\nv\r\n+string\r\n:2\r\n:1\r\n+none\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"set", b"x", b"1", b"ex", b"100"], b"+QUEUED\r\n"),
        (&[b"incr", b"x"], b"+QUEUED\r\n"),
        (&[b"ttl", b"x"], b"+QUEUED\r\n"),
        (&[b"set", b"x", b"5"], b"+QUEUED\r\n"),
        (&[b"ttl", b"x"], b"+QUEUED\r\n"),
        (&[b"get", b"x"], b"+QUEUED\r\n"),
        (&[b"getdel", b"x"], b"+QUEUED\r\n"),
        (&[b"exists", b"x"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*8\r\n+OK\r\n:2\r\n:100\r\n+OK\r\n:-1\r\n$1\r\n5\r\n$1\r\n5\r\n:0\r\n"),
        (&[b"multi"], b"+OK\r\n"),
        (&[b"setex", b"e", b"0", b"v"], b"+QUEUED\r\n"),
        (&[b"incr", b"k2"], b"+QUEUED\r\n"),
        (&[b"incrby", b"k2", b"x"], b"+QUEUED\r\n"),
        (&[b"decrby", b"k2", b"5"], b"+QUEUED\r\n"),
        (&[b"setnx", b"k2", b"z"], b"+QUEUED\r\n"),
        (&[b"getset", b"k2", b"w"], b"+QUEUED\r\n"),
        (&[b"mset", b"m1", b"1", b"m2"], b"+QUEUED\r\n"),
        (&[b"mset", b"m1", b"1", b"m2", b"2"], b"+QUEUED\r\n"),
        (&[b"unlink", b"m1", b"m2", b"m1"], b"+QUEUED\r\n"),
        (&[b"exec"], b"*9\r\n-ERR invalid expire time in 'setex' command\r\n:1\r\n-ERR value is not an integer or out of range\r\n:-4\r\n:0\r\n$2\r\n-4\r\n-ERR wrong number of arguments for 'mset' command\r\n+OK\r\n:2\r\n"),
        (&[b"set", b"t", b"v"], b"+OK\r\n"),
        (&[b"type", b"t"], b"+string\r\n"),
        (&[b"type", b"none"], b"+none\r\n"),
        (&[b"touch", b"t", b"t", b"none"], b":2\r\n"),
        (&[b"unlink", b"t", b"t"], b":1\r\n"),
        (&[b"touch", b"t"], b":0\r\n"),
        // A subcommand unknown, or with the wrong number of arguments, is refused as it is
        // queued, and dooms the transaction.
        (&[b"multi"], b"+OK\r\n"),
        (
            &[b"config", b"bogus"],
            b"-ERR unknown subcommand 'bogus'. Try CONFIG HELP.\r\n",
        ),
        (
            &[b"command", b"count", b"x"],
            b"-ERR wrong number of arguments for 'command|count' command\r\n",
        ),
        (
            &[b"config", b"set", b"x"],
            b"-ERR wrong number of arguments for 'config|set' command\r\n",
        ),
        (
            &[b"config", b"resetstat", b"x"],
            b"-ERR wrong number of arguments for 'config|resetstat' command\r\n",
        ),
        (&[b"config", b"get", b"maxmemory"], b"+QUEUED\r\n"),
        (&[b"set", b"never", b"1"], b"+QUEUED\r\n"),
        (
            &[b"exec"],
            b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        ),
        (&[b"get", b"never"], b"$-1\r\n"),
    ];
    answers_each(script, "split_keys = []");
}

/// A transaction is applied whole or not at all: through the `redis` crate's atomic pipeline
/// its reads see its own writes; one whose keys span two ranges is refused with `CROSSSLOT`
/// and none of it is applied; `EXEC` after another client wrote a watched key applies
/// nothing; and clients incrementing one counter by `WATCH`, `GET`, `MULTI`, `SET` and `EXEC`
/// (the `redis` crate's `transaction` helper, which retries an aborted one) lose no update.
#[test]
fn a_transaction_is_applied_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();

    let (set, n, got): (String, i64, String) = redis::pipe()
        .atomic()
        .set("acct:1", 10)
        .incr("acct:1", 5)
        .get("acct:1")
        .query(&mut con)
        .unwrap();
    assert_eq!((set.as_str(), n, got.as_str()), ("OK", 15, "15"));

    // The shipped config cuts the key space at f, key:000000500000, m and t.
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    for k in ["apple", "zebra"] {
        let queued: String = redis::cmd("SET").arg(k).arg(1).query(&mut con).unwrap();
        assert_eq!(queued, "QUEUED");
    }
    let e = redis::cmd("EXEC").query::<()>(&mut con).unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("apple")
        .arg("zebra")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, [None, None]);
    // So are RENAME and MSETNX, applied whole as they are.
    let _: () = redis::cmd("SET")
        .arg("apple")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let e = redis::cmd("RENAME")
        .arg("apple")
        .arg("zebra")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let e = redis::cmd("MSETNX")
        .arg("avocado")
        .arg(1)
        .arg("zucchini")
        .arg(1)
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("apple")
        .arg("zebra")
        .arg("avocado")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, [Some("1".into()), None, None]);

    let mut other = server.client();
    let _: () = redis::cmd("WATCH").arg("acct:1").query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg("acct:1")
        .arg(99)
        .query(&mut other)
        .unwrap();
    let aborted: Option<((),)> = redis::pipe()
        .atomic()
        .set("acct:1", 0)
        .query(&mut con)
        .unwrap();
    assert_eq!(aborted, None);
    let got: i64 = redis::cmd("GET").arg("acct:1").query(&mut con).unwrap();
    assert_eq!(got, 99);

    // A transaction is one log entry: it may hold as many bytes as one request (16 MiB here).
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let big = vec![b'v'; 1 << 20];
    let refused = (0..17)
        .map(|i| {
            redis::cmd("SET")
                .arg(format!("big{i}"))
                .arg(&big)
                .query::<String>(&mut con)
        })
        .find_map(Result::err)
        .expect("a transaction past 16 MiB is refused");
    assert!(
        refused.to_string().contains("at most 16777216 bytes"),
        "{refused}"
    );
    let e = redis::cmd("EXEC").query::<()>(&mut con).unwrap_err();
    assert_eq!(e.code(), Some("EXECABORT"), "{e}");
    let n: u64 = redis::cmd("EXISTS").arg("big0").query(&mut con).unwrap();
    assert_eq!(n, 0);
    // And it may read at most 64 MiB of values, on every replica: past that it fails whole.
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let _: String = redis::cmd("SET")
        .arg("bird")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let _: String = redis::cmd("MGET")
        .arg(vec!["big"; 65])
        .query(&mut con)
        .unwrap();
    let e = redis::cmd("EXEC").query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("at most 67108864 bytes"), "{e}");
    let n: u64 = redis::cmd("EXISTS").arg("bird").query(&mut con).unwrap();
    assert_eq!(n, 0);

    let (clients, each) = (4, 25);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let mut con = server.client();
            std::thread::spawn(move || {
                for _ in 0..each {
                    let _: () = redis::transaction(&mut con, &["counter"], |con, pipe| {
                        let n: Option<i64> = redis::cmd("GET").arg("counter").query(con)?;
                        pipe.set("counter", n.unwrap_or(0) + 1).ignore().query(con)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let got: i64 = redis::cmd("GET").arg("counter").query(&mut con).unwrap();
    assert_eq!(got, clients * each);
}

/// Sets `n` keys `{prefix}{i}` of range r1 (before f), and waits until sled holds them
/// (`DBSIZE` counts once what was applied is written): more than one chunk of a `FLUSHDB`'s
/// deletion.
fn fill_in_sled(con: &mut redis::Connection, prefix: &str, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("{prefix}{i}"), i).ignore();
    }
    let () = pipe.query(con).unwrap();
    let counted: usize = redis::cmd("DBSIZE").query(con).unwrap();
    assert!(counted >= n);
}

/// Every key `SCAN` walks, from cursor 0 to its end.
fn scan_all(con: &mut redis::Connection) -> Vec<String> {
    let (mut cursor, mut all) = (0, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(con)
            .unwrap();
        all.extend(keys);
        if next == 0 {
            return all;
        }
        cursor = next;
    }
}

/// `FLUSHDB` (and `FLUSHALL`) deletes every key of every range of the node: those in sled
/// (more than its writer deletes in one batch) and those written a moment before and not yet
/// in sled alike, none of them read again as soon as it answers (while the writer may still
/// be deleting them), and the deletion outlives a `kill -9`, however far the writer got.
#[test]
fn flushdb_deletes_every_key_even_those_just_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    fill_in_sled(&mut con, "a-sled-", 25_000);
    // Keys of every range (the shipped config cuts at f, key:000000500000, m and t), some with
    // a deadline, pipelined just before the flush.
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("{}{i}", ["a", "g", "key:9", "p", "x"][i % 5]))
        .collect();
    let mut pipe = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        match i % 3 {
            0 => pipe.set_ex(k, i, 100),
            _ => pipe.set(k, i),
        };
        pipe.ignore();
    }
    pipe.cmd("FLUSHDB");
    let (flushed,): (String,) = pipe.query(&mut con).unwrap();
    assert_eq!(flushed, "OK");
    let left = scan_all(&mut con);
    assert!(
        left.is_empty(),
        "{} keys left, {:?} first",
        left.len(),
        left.first()
    );
    let sled_keys: Vec<String> = (0..25_000)
        .step_by(999)
        .map(|i| format!("a-sled-{i}"))
        .collect();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&sled_keys).query(&mut con).unwrap();
    assert!(got.iter().all(Option::is_none));
    let n: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 0);
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    assert!(got.iter().all(Option::is_none));
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(info.contains("db0:keys=0,expires=0,"), "{info}");
    let e = redis::cmd("FLUSHDB")
        .arg("NOW")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "An error was signalled by the server - ResponseError: syntax error"
    );
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg(1)
        .query(&mut con)
        .unwrap();
    fill_in_sled(&mut con, "a-sled-", 25_000);
    let _: () = redis::cmd("FLUSHALL").arg("ASYNC").query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg("kept")
        .arg(1)
        .query(&mut con)
        .unwrap();
    drop(con);
    server.kill();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(left, ["kept"]);
}

/// `CLIENT LIST` shows every connection of the node, with its name, address and last command;
/// `CLIENT KILL` ends the connections its filters pick (not the one asking, unless told), or
/// the one at an address, and they leave the list.
#[test]
fn client_list_shows_every_connection_and_client_kill_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let (mut a, mut b) = (server.client(), server.client());
    let client = |con: &mut redis::Connection, args: &[&str]| -> redis::RedisResult<redis::Value> {
        redis::cmd("CLIENT").arg(args).query(con)
    };
    client(&mut a, &["SETNAME", "worker-a"]).unwrap();
    let id =
        |con: &mut redis::Connection| -> u64 { redis::cmd("CLIENT").arg("ID").query(con).unwrap() };
    let (a_id, b_id) = (id(&mut a), id(&mut b));
    let list = |con: &mut redis::Connection, args: &[&str]| -> String {
        redis::cmd("CLIENT")
            .arg("LIST")
            .arg(args)
            .query(con)
            .unwrap()
    };
    let all = list(&mut b, &[]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    let line_a = format!("id={a_id} ");
    let line_a = lines
        .iter()
        .find(|l| l.starts_with(&line_a))
        .expect("a listed");
    for field in [
        " name=worker-a ".to_string(),
        " cmd=client ".to_string(),
        format!(" laddr={} ", server.addr),
        " flags=N db=0 ".to_string(),
    ] {
        assert!(line_a.contains(&field), "{field} in {line_a}");
    }
    assert_eq!(list(&mut b, &["ID", &a_id.to_string()]).lines().count(), 1);
    assert_eq!(list(&mut b, &["TYPE", "pubsub"]), "");

    // Not itself, by default; the other, by id.
    let none: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(b_id)
        .query(&mut b)
        .unwrap();
    assert_eq!(none, 0);
    let one: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(a_id)
        .query(&mut b)
        .unwrap();
    assert_eq!(one, 1);
    assert!(
        redis::cmd("PING").query::<String>(&mut a).is_err(),
        "a still served"
    );
    let after = list(&mut b, &[]);
    assert_eq!(after.lines().count(), 1, "{after}");

    // By address, the old form.
    let mut c = server.client();
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
    let addr = info
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .expect("an address");
    let ok: String = redis::cmd("CLIENT")
        .arg("KILL")
        .arg(addr)
        .query(&mut b)
        .unwrap();
    assert_eq!(ok, "OK");
    assert!(
        redis::cmd("PING").query::<String>(&mut c).is_err(),
        "c still served"
    );
    let e = client(&mut b, &["KILL", "127.0.0.1:1"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "An error was signalled by the server - ResponseError: No such client"
    );
    let e = client(&mut b, &["KILL", "ID", "1", "SKIPME"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "An error was signalled by the server - ResponseError: syntax error"
    );
    let pong: String = redis::cmd("PING").query(&mut b).unwrap();
    assert_eq!(pong, "PONG");
}

/// A client that pipelines without reading its replies holds the node's writer of its
/// connection, which is the one an operator most needs to kill: `CLIENT KILL` ends it at once,
/// and what it queued behind is never run. A connection that kills itself runs nothing sent
/// after the kill, even in the same write.
#[test]
fn client_kill_ends_a_client_that_does_not_read_and_runs_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut b = server.client();
    let big = vec![b'v'; 1 << 20];
    let () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut b)
        .unwrap();

    let mut a = Raw::connect(server.addr);
    a.send(&cmd(&[b"CLIENT", b"ID"]));
    let a_id = a.line();
    let a_id = a_id.trim_end().trim_start_matches(':').to_string();
    // 64 MiB of replies it never reads, then writes that wait for them.
    let mut pipeline = Vec::new();
    for _ in 0..64 {
        pipeline.extend(cmd(&[b"GET", b"big"]));
    }
    for _ in 0..1000 {
        pipeline.extend(cmd(&[b"INCR", b"ctr"]));
    }
    let mut writer = a.try_clone();
    let sending = std::thread::spawn(move || writer.send_all(&pipeline));
    let listed = |b: &mut redis::Connection| -> bool {
        let all: String = redis::cmd("CLIENT").arg("LIST").query(b).unwrap();
        all.lines().any(|l| l.starts_with(&format!("id={a_id} ")))
    };
    assert!(listed(&mut b));
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&a_id)
        .query(&mut b)
        .unwrap();
    assert_eq!(killed, 1);
    let mut gone = false;
    for _ in 0..500 {
        gone = !listed(&mut b);
        if gone {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(gone, "the killed client is still listed");
    a.drain_to_end();
    let _ = sending.join();
    let ctr: Option<i64> = redis::cmd("GET").arg("ctr").query(&mut b).unwrap();
    assert!(ctr.unwrap_or(0) < 1000, "every INCR after the kill ran");

    // Itself, with a command after the kill in the same write.
    let mut c = Raw::connect(server.addr);
    c.send(&cmd(&[b"CLIENT", b"ID"]));
    let c_id = c.line();
    let mut request = cmd(&[
        b"CLIENT",
        b"KILL",
        b"ID",
        &c_id.trim_end().as_bytes()[1..],
        b"SKIPME",
        b"no",
    ]);
    request.extend(cmd(&[b"SET", b"after-kill", b"ran"]));
    request.extend(cmd(&[b"PING"]));
    c.send(&request);
    c.expect(b":1\r\n");
    c.expect_closed();
    let ran: Option<String> = redis::cmd("GET").arg("after-kill").query(&mut b).unwrap();
    assert_eq!(ran, None);
}

/// Commands, each with the reply it must get, byte for byte.
type Script<'a> = &'a [(&'a [&'a [u8]], &'a [u8])];

/// Sends each command of `script` in turn to a node started with `config` and checks its reply.
fn answers_each(script: Script, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), config);
    let mut c = Raw::connect(server.addr);
    for (args, reply) in script {
        c.roundtrip(&cmd(args), reply);
    }
}

/// A key past its deadline is gone for every command at once, its space is reclaimed soon
/// after (the range's leader reaps it), and a deadline outlives a restart.
#[test]
fn a_key_past_its_deadline_is_gone_and_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    let now = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.unwrap().as_millis() as u64
    };
    let deadline = now() + 300;
    // Keys in two ranges (the shipped config cuts at f, key:000000500000, m and t).
    for k in ["a-gone", "z-gone"] {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .arg("PXAT")
            .arg(deadline)
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("counter")
        .arg(1)
        .arg("EX")
        .arg(100)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg("a-gone")
        .arg("z-gone")
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 2);
    // The deadline passes (by this machine's clock, which the node's follows).
    while now() <= deadline + 20 {
        std::thread::sleep(std::time::Duration::from_millis(deadline + 21 - now()));
    }
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("a-gone")
        .arg("z-gone")
        .arg("plain")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, [None, None, Some("1".to_string())]);
    let exists: u64 = redis::cmd("EXISTS")
        .arg("a-gone")
        .arg("z-gone")
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 0);
    let ttl: i64 = redis::cmd("TTL").arg("a-gone").query(&mut con).unwrap();
    assert_eq!(ttl, -2);
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.sort();
    assert_eq!(keys, ["counter", "plain"]);
    // An expired key counts as absent to a command too: INCR starts again from nothing.
    let _: () = redis::cmd("SET")
        .arg("n")
        .arg(41)
        .arg("PXAT")
        .arg(deadline)
        .query(&mut con)
        .unwrap();
    let n: i64 = redis::cmd("INCR").arg("n").query(&mut con).unwrap();
    assert_eq!(n, 1);
    // DBSIZE counts what is stored: the expired keys until they are reaped.
    let reaped_by = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
        if n == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < reaped_by,
            "{n} keys stored, not 3"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(info.contains("db0:keys=3,expires=1,"), "{info}");
    drop(con);
    server.kill();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    let ttl: i64 = redis::cmd("TTL").arg("counter").query(&mut con).unwrap();
    assert!((90..=100).contains(&ttl), "TTL {ttl} after a restart");
    let ttl: i64 = redis::cmd("TTL").arg("plain").query(&mut con).unwrap();
    assert_eq!(ttl, -1);
}

/// `SCAN` and `KEYS` walk every range of the node (the shipped config cuts at f,
/// key:000000500000, m and t) in key order, each key once, as applied: a key written or
/// deleted just before, which the Store has not written to sled yet, included.
#[test]
fn scan_and_keys_find_every_key_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();
    let mut want: Vec<String> = ["", "a", "f", "fig", "key:000000499999", "key:000000500000"]
        .into_iter()
        .chain(["lemon", "m", "melon", "s", "t", "zebra", "\u{ff}"])
        .map(String::from)
        .chain((0..40).map(|i| format!("k{i:02}")))
        .collect();
    for k in &want {
        let _: () = redis::cmd("SET").arg(k).arg(1).query(&mut con).unwrap();
    }
    // DBSIZE has the Store write everything to sled first; then a deletion and a write that
    // are not there yet.
    let n: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, want.len());
    let _: () = redis::cmd("DEL").arg("k07").query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg("new").arg(1).query(&mut con).unwrap();
    want.retain(|k| k != "k07");
    want.push("new".into());
    want.sort();

    // The steps alternate between two connections, as a client's pool may: cursors are the
    // node's.
    let mut other = server.client();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    for step in 0.. {
        let via = if step % 2 == 0 { &mut con } else { &mut other };
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(3)
            .query(via)
            .unwrap();
        assert!(keys.len() <= 3, "{keys:?}");
        seen.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, want);

    let matched: Vec<String> = redis::cmd("KEYS").arg("k[0-1]?").query(&mut con).unwrap();
    let expect: Vec<&String> = want
        .iter()
        .filter(|k| k.len() == 3 && (k.starts_with("k0") || k.starts_with("k1")))
        .collect();
    assert_eq!(matched.iter().collect::<Vec<_>>(), expect);
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(all, want);
    let (_, none): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("TYPE")
        .arg("hash")
        .query(&mut con)
        .unwrap();
    assert!(none.is_empty());

    // The first range holds "" and "a" only: a step that matched nothing, and goes on.
    let (next, none): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("zeb*")
        .query(&mut con)
        .unwrap();
    assert!(next != 0 && none.is_empty(), "{next} {none:?}");
    let mut c = Raw::connect(server.addr);
    c.roundtrip(&cmd(&[b"SCAN", b"12345"]), b"-ERR invalid cursor\r\n");
}

#[test]
fn the_redis_crate_handshake_commands_and_a_thousand_pipelined() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut con = server.client();

    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 5);
    let missing: Option<String> = redis::cmd("GET").arg("missing").query(&mut con).unwrap();
    assert_eq!(missing, None);

    let mut pipe = redis::pipe();
    for i in 0..1000 {
        if i % 2 == 0 {
            pipe.cmd("SET").arg(format!("p{i}")).arg(i);
        } else {
            pipe.cmd("INCR").arg("seq");
        }
    }
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, r) in replies.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r, &redis::Value::Okay, "reply {i}");
        } else {
            // INCR answers 1, 2, 3, ... in request order.
            assert_eq!(r, &redis::Value::Int(i as i64 / 2 + 1), "reply {i}");
        }
    }
    let mut pipe = redis::pipe();
    for i in (0..1000).step_by(2) {
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(values, (0..1000).step_by(2).collect::<Vec<i64>>());

    // Writes and reads mixed in one pipeline behave as if run one after the other.
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg("mixed").arg(i);
        pipe.cmd("GET").arg("mixed");
        pipe.cmd("INCR").arg("mixed-counter");
        pipe.cmd("EXISTS").arg(format!("later{i}"));
        pipe.cmd("SET").arg(format!("later{i}")).arg(1);
    }
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    for i in 0..200usize {
        let r = &replies[i * 5..i * 5 + 5];
        assert_eq!(
            r[1],
            redis::Value::BulkString(i.to_string().into_bytes()),
            "GET after SET {i}"
        );
        assert_eq!(r[2], redis::Value::Int(i as i64 + 1));
        assert_eq!(r[3], redis::Value::Int(0), "EXISTS saw a later write");
        assert_eq!(r[4], redis::Value::Okay);
    }
}

#[test]
fn the_handshakes_of_redis_cli_and_redis_py() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "");
    let mut c = Raw::connect(server.addr);
    // redis-py 5 sends these right after connecting; redis-cli asks for command docs.
    c.roundtrip(
        &[
            cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"]),
            cmd(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"5.0.1"]),
            cmd(&[b"COMMAND", b"DOCS"]),
            cmd(&[b"PING"]),
        ]
        .concat(),
        b"+OK\r\n+OK\r\n*0\r\n+PONG\r\n",
    );
}

#[test]
fn auth_is_required_when_a_password_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), "password = \"s3cret\"\n");
    let mut c = Raw::connect(server.addr);
    c.roundtrip(
        &cmd(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    c.roundtrip(&cmd(&[b"PING"]), b"-NOAUTH Authentication required.\r\n");
    c.roundtrip(
        &cmd(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of: NOAUTH Authentication required.\r\n",
    );
    c.roundtrip(&cmd(&[b"MULTI"]), b"-NOAUTH Authentication required.\r\n");
    c.roundtrip(
        &cmd(&[b"AUTH", b"wrong"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.roundtrip(&cmd(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    c.roundtrip(&cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");

    // HELLO can authenticate too.
    let mut c = Raw::connect(server.addr);
    c.send(&cmd(&[b"HELLO", b"2", b"AUTH", b"default", b"s3cret"]));
    assert_eq!(c.line(), "*14\r\n");

    // And through the redis crate, with the password in the URL.
    let url = format!("redis://:s3cret@{}/", server.addr);
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    let bad = format!("redis://:nope@{}/", server.addr);
    assert!(redis::Client::open(bad).unwrap().get_connection().is_err());
}
