//! Starting the built `flotilla` binary for tests: on loopback, on a port the OS assigns, in a
//! temporary data directory, always killed when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// Writes `config/single-node.toml` with its address (port 0: the OS assigns one) and data
/// directory (in `dir`) replaced, and the `key = value` lines of `extra` replacing or adding to
/// its keys; the file's path.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/single-node.toml"
    ))
    .unwrap();
    let overridden: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut text = String::new();
    for line in shipped.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        if overridden.contains(&key) {
            continue;
        }
        if line.starts_with("client_addr") {
            text.push_str("client_addr = \"127.0.0.1:0\"\n");
        } else if line.starts_with("data_dir") {
            text.push_str(&format!("data_dir = {:?}\n", dir.join("data")));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(extra);
    let config = dir.join("node.toml");
    std::fs::write(&config, text).unwrap();
    config
}

/// A running `flotilla` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
}

impl Server {
    /// Starts a node from `config/single-node.toml` with its address and data directory
    /// replaced, and the `key = value` lines of `extra` replacing or adding to its keys.
    pub fn start_in(dir: &Path, extra: &str) -> Server {
        Server::start_with_config(&write_config(dir, extra))
    }

    /// As [`Server::start_in`], the process allowed to open at most `files` files (`ulimit
    /// -n`, soft and hard).
    pub fn start_with_open_files(dir: &Path, extra: &str, files: u64) -> Server {
        let config = write_config(dir, extra);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" --config \"$1\""))
            .arg(BIN)
            .arg(&config);
        Server::spawn(command, &config)
    }

    /// Starts a node from a config file, waiting until it serves clients.
    pub fn start_with_config(config: &Path) -> Server {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config);
        Server::spawn(command, config)
    }

    /// Starts a node from a config file with its raft socket passed to it, as a service
    /// manager does (systemd's socket activation): the test keeps the socket, bound to a port
    /// the OS assigned, for as long as the node may be restarted.
    pub fn start_with_raft_socket(config: &Path, raft: &TcpListener) -> Server {
        Server::spawn(raft_socket_command(config, raft), config)
    }

    fn spawn(mut command: Command, config: &Path) -> Server {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flotilla");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.split("serving clients on ").nth(1) {
                        break a.trim().parse().unwrap();
                    }
                }
                _ => {
                    let status = child.wait().unwrap();
                    panic!("flotilla exited before serving: {status}");
                }
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            config: config.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn client(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        client
            .get_connection_with_timeout(Duration::from_secs(10))
            .unwrap()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `FLOTILLA RANGES`: each range's span (`r1 ["", "f")`) and its size (`size=`), in key
    /// order.
    pub fn range_sizes(&self) -> Vec<(String, String)> {
        let lines: Vec<String> = redis::cmd("FLOTILLA")
            .arg("RANGES")
            .query(&mut self.client())
            .unwrap();
        (lines.iter())
            .map(|l| {
                let span = l.split(" replicas").next().unwrap().to_string();
                let size = l.split(" size=").nth(1).unwrap().split(' ').next().unwrap();
                (span, size.to_string())
            })
            .collect()
    }

    /// Stops the node as a service manager does, with SIGTERM, and waits for it to exit.
    pub fn stop(mut self) {
        // SAFETY: `kill` takes any pid and signal number; the child is not reaped yet, so its
        // pid is still its own.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that starts a node from a config file with its raft socket passed to it, as a
/// service manager does (systemd's socket activation: the socket is file descriptor 3, and
/// `LISTEN_PID` and `LISTEN_FDS` say so).
pub fn raft_socket_command(config: &Path, raft: &TcpListener) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // The child's file descriptor 3 is overwritten below: it must not be the pipe through
    // which `Command` learns that exec failed, which takes the lowest free descriptor.
    static TAKE_FD_3: std::sync::Once = std::sync::Once::new();
    TAKE_FD_3.call_once(|| {
        // SAFETY: fcntl on a descriptor number only queries it.
        if unsafe { libc::fcntl(3, libc::F_GETFD) } == -1 {
            std::mem::forget(std::fs::File::open("/dev/null").unwrap());
        }
    });
    // The command owns a duplicate of the socket, whatever becomes of `raft`.
    let socket = std::os::fd::OwnedFd::from(raft.try_clone().unwrap());
    // A shell learns its pid (`$$`), which `exec` hands on to flotilla: LISTEN_PID names
    // the process the socket is for.
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" --config "$1""#)
        .arg(BIN)
        .arg(config);
    // SAFETY: between fork and exec, only async-signal-safe calls on descriptors the child
    // owns: the socket goes to descriptor 3, open across exec.
    unsafe {
        command.pre_exec(move || {
            let fd = socket.as_raw_fd();
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs a command to its end, killing it after `limit`: its exit code and stderr.
pub fn run_within(mut command: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// A raw TCP client speaking bytes, for asserting on exact replies.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads exactly the length of `expected` and asserts it matches.
    pub fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        self.stream.read_exact(&mut got).unwrap_or_else(|e| {
            panic!(
                "reading reply (wanted {:?}): {e}",
                String::from_utf8_lossy(expected)
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Sends `request` and asserts the reply is exactly `reply`.
    pub fn roundtrip(&mut self, request: &[u8], reply: &[u8]) {
        self.send(request);
        self.expect(reply);
    }

    /// Reads one CRLF-terminated line.
    pub fn line(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(b"\r\n") {
            self.stream.read_exact(&mut b).unwrap();
            out.push(b[0]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Another handle on the same connection (to send from one thread and read from another).
    pub fn try_clone(&self) -> Raw {
        Raw {
            stream: self.stream.try_clone().unwrap(),
        }
    }

    /// Sends `bytes`, as far as the server takes them: a server that closes the connection
    /// meanwhile is not an error.
    pub fn send_all(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads and drops everything until the server closes the connection (or resets it).
    pub fn drain_to_end(&mut self) {
        let mut scratch = vec![0u8; 1 << 16];
        loop {
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Asserts the server closed the connection (after any bytes already read).
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let n = self.stream.read_to_end(&mut rest).unwrap();
        assert_eq!(
            n,
            0,
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}
