//! Starting a node from its configuration and serving until told to stop.

use crate::commands::Shared;
use crate::config::Config;
use crate::peers::{Credentials, Reachability};
use flotilla_actors::ids::NodeId;
use flotilla_actors::messages::RaftBatch;
use flotilla_actors::node::Node;
use flotilla_actors::transport::{Transport, Unreachable};
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// The transport of a node without peers: every range is replicated on this node alone.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _: RaftBatch) -> Result<(), Unreachable> {
        Err(Unreachable)
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for clients on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the raft socket passed by the service manager: {0}")]
    RaftSocket(String),
    #[error("the process may open {0} files (ulimit -n): too few for a node")]
    Files(u64),
    #[error("cannot open the data directory {dir}: {source}")]
    Storage {
        dir: String,
        source: flotilla_actors::storage::StorageError,
    },
}

/// Makes a panic on any thread end the process, after the usual report, as a panic ends etcd
/// and TiKV. A node's actors run as tasks, whose panics tokio catches: without this, a Store
/// that panicked (on a full disk, say) left a process that answered every command with an
/// error and, in a cluster, kept leading its ranges through a MultiRaft still alive, so they
/// took no write until someone killed it. A node's data survives the abort as it survives
/// `kill -9`, and a service manager restarts it.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Files a node keeps open for other than its clients, at most: its data (sled's files, the raft
/// log's), its peers' connections and those that have not said hello yet
/// ([`crate::peers::MAX_HELLOS`]), clients refused and not yet closed
/// ([`crate::server::MAX_REFUSED`]), its listeners, its standard streams. About 30 at rest.
pub const RESERVED_FILES: u64 = 256;

/// Raises the process's limit of open files to what `max_clients` clients and the node need, as
/// far as the system lets it (stepping down from there, as Redis does), and answers how many
/// clients fit in it, which may be fewer (logged). Past the limit, a client's connection would
/// take the descriptor the node's data or a peer needed: a flood of clients made the node fail
/// to open its raft log's next file, and stop. Under a low limit the node keeps half of it for
/// itself.
// `rlim_t` is 32 bits on some targets.
#[allow(clippy::unnecessary_cast)]
fn fit_clients(max_clients: usize) -> Result<usize, StartError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(max_clients);
    }
    let (mut current, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    let wanted = (max_clients as u64)
        .saturating_add(RESERVED_FILES)
        .min(hard);
    // The system may refuse more than it allows a process (Linux's fs.nr_open, macOS's
    // kern.maxfilesperproc) whatever the hard limit says: step down until it takes one.
    let mut trying = wanted;
    while trying > current {
        let raised = libc::rlimit {
            rlim_cur: trying as libc::rlim_t,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            current = trying;
            break;
        }
        trying = trying.saturating_sub(16);
    }
    let fit = current - RESERVED_FILES.min(current / 2);
    if fit == 0 {
        return Err(StartError::Files(current));
    }
    let fit = fit.min(max_clients as u64) as usize;
    if fit < max_clients {
        log::warn!(
            "max_clients lowered from {max_clients} to {fit}: the process may open {current} \
             files (ulimit -n; hard limit {hard}), and the node keeps {} for its data and peers",
            current as usize - fit
        );
    }
    Ok(fit)
}

/// Runs a node until SIGINT or SIGTERM, its raft connections on `passed_raft` if a service
/// manager passed that socket (see [`passed_raft_socket`]). Must be called inside an actix
/// system.
pub async fn run(
    mut config: Config,
    passed_raft: Option<std::net::TcpListener>,
) -> Result<(), StartError> {
    config.max_clients = fit_clients(config.max_clients)?;
    let listener = TcpListener::bind(config.client_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.client_addr,
            source,
        })?;
    let client_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.client_addr,
        source,
    })?;
    let peers = config.peer_addrs().unwrap_or_default();
    let credentials = Credentials {
        cluster_id: config.cluster_id.clone(),
        secret: config.cluster_secret.clone().unwrap_or_default(),
    };
    let raft_listener = match config.raft_addr {
        Some(addr) if !peers.is_empty() => Some(match passed_raft {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| StartError::Listen { addr, source })?,
        }),
        _ => None,
    };
    let me = NodeId(config.node_id);
    let (transport, connections, reachability): (Box<dyn Transport>, _, _) = if peers.is_empty() {
        (Box::new(NoPeers), Vec::new(), Reachability::default())
    } else {
        let (transport, connections) = crate::peers::connect(me, &peers, &credentials);
        let reachability = transport.reachability();
        (Box::new(transport), connections, reachability)
    };
    let settings = config.node_settings();
    let clock = settings.store.clock.clone();
    let node = Node::start(settings, transport).map_err(|source| StartError::Storage {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    // The raft connections run on MultiRaft's thread (they stop with it).
    let raft_thread = node.raft_thread();
    for task in connections {
        raft_thread.spawn(task);
    }
    if let Some(l) = raft_listener {
        if let Ok(a) = l.local_addr() {
            println!("flotilla: node {} raft on {a}", config.node_id);
        }
        let multiraft = node.multiraft.clone().recipient();
        // Registered with the runtime of the thread that polls it.
        raft_thread.spawn(async move {
            match TcpListener::from_std(l) {
                Ok(l) => crate::peers::listen(l, me, credentials, multiraft).await,
                Err(e) => {
                    // Peers could not reach this node: stop rather than run cut off.
                    log::error!("the raft listener: {e}");
                    actix::System::current().stop_with_code(1);
                }
            }
        });
    }
    let shared = Arc::new(Shared {
        store: node.store.clone(),
        engine: node.engine.clone(),
        counting: tokio::sync::Semaphore::new(1),
        multiraft: node.multiraft.clone(),
        metrics: node.metrics.clone(),
        config: config.clone(),
        peers: reachability,
        client_addr,
        started: Instant::now(),
        clients: AtomicUsize::new(0),
        refusing: AtomicUsize::new(0),
        next_client_id: AtomicU64::new(0),
        connections: Default::default(),
        cursors: Default::default(),
        clock,
    });
    // Tests and scripts read this line to learn the address (the port may be OS-assigned).
    println!(
        "flotilla: node {} serving clients on {client_addr}",
        config.node_id
    );
    let _ = std::io::stdout().flush();
    log::info!(
        "node {} up: data in {}, {} ranges",
        config.node_id,
        config.data_dir.display(),
        config.split_keys.len() + 1
    );
    let _ = std::io::stdout().flush();
    let server = actix_rt::spawn(crate::server::serve(listener, shared, node.store_thread()));
    wait_for_signal().await;
    log::info!("stopping");
    server.abort();
    node.stop();
    Ok(())
}

/// The raft socket a service manager opened for this process, if it passed one (systemd's
/// socket activation: `LISTEN_PID` is this process, `LISTEN_FDS` at least 1, the socket is file
/// descriptor 3). It must be a listening TCP socket bound to `raft_addr`, the address the peers
/// know this node by (a port of 0 there takes the socket's). Called first thing, before
/// anything else in the process opens a file descriptor that could be taken for it.
pub fn passed_raft_socket(
    raft_addr: Option<std::net::SocketAddr>,
) -> Result<Option<std::net::TcpListener>, StartError> {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let count: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    const FIRST_PASSED_FD: libc::c_int = 3;
    let bad = |what: String| StartError::RaftSocket(what);
    let option = |name: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`; on a descriptor that is
        // not an open socket it fails and touches nothing.
        let r = unsafe {
            libc::getsockopt(
                FIRST_PASSED_FD,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(value)
    };
    if option(libc::SO_TYPE) != Some(libc::SOCK_STREAM) || option(libc::SO_ACCEPTCONN) != Some(1) {
        return Err(bad(
            "file descriptor 3 is not a listening stream socket".into()
        ));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor 3 is an open socket (checked above), passed to this process under the
    // protocol checked above, and nothing else in the process owns or closes it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(FIRST_PASSED_FD) };
    let local = listener
        .local_addr()
        .map_err(|e| bad(format!("file descriptor 3 is not a TCP socket: {e}")))?;
    if let Some(raft_addr) = raft_addr {
        if local.ip() != raft_addr.ip()
            || (raft_addr.port() != 0 && local.port() != raft_addr.port())
        {
            return Err(bad(format!(
                "it is bound to {local}, not to raft_addr {raft_addr}"
            )));
        }
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| bad(format!("file descriptor 3: {e}")))?;
    Ok(Some(listener))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    /// A panic in a task of an arbiter (where a node's Store and MultiRaft run) ends the process
    /// once `abort_on_panic` is set; without it, tokio catches the panic and the process runs on.
    #[test]
    fn a_panic_on_a_node_thread_ends_the_process() {
        const CHILD: &str = "FLOTILLA_TEST_PANIC_CHILD";
        if let Some(abort) = std::env::var_os(CHILD) {
            if abort == "1" {
                super::abort_on_panic();
            }
            actix::System::new().block_on(async {
                let arbiter = actix::Arbiter::new();
                let (after, panicked) = tokio::sync::oneshot::channel();
                arbiter.spawn(async { panic!("a task of the arbiter panics") });
                // Runs after the task that panicked, on the same thread, if the process does.
                arbiter.spawn(async move {
                    let _ = after.send(());
                });
                panicked.await.expect("the arbiter's thread runs on");
            });
            return;
        }
        for abort in [false, true] {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "run::tests::a_panic_on_a_node_thread_ends_the_process",
                ])
                .env(CHILD, if abort { "1" } else { "0" })
                .output()
                .unwrap();
            let how = (child.status, String::from_utf8_lossy(&child.stderr));
            if abort {
                assert_eq!(child.status.signal(), Some(libc::SIGABRT), "{how:?}");
            } else {
                assert!(child.status.success(), "{how:?}");
            }
        }
    }
}
