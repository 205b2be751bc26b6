//! Client connections: accept, then for each connection a reader that parses requests and
//! starts them, and a writer that sends the replies back in request order (pipelining). The
//! connections run on the Store's thread: a request reaches the Store, and its reply the
//! connection, without waking another thread.
//!
//! At most [`MAX_IN_FLIGHT`] requests of one connection are under way at once; the reader stops
//! reading while the writer catches up, so a client that never reads its replies holds at most
//! that many replies (each as large as what it asked for: 1 GiB for 1,024 values of 1 MiB). A
//! connection that sends bytes that cannot be framed gets one protocol error and is closed
//! (once what it still sends is read, so that it can read the error: see [`linger`]); other
//! connections never notice.

use crate::commands::{PendingReply, Reply, Session, Shared};
use crate::resp::{self, reply, Limits};
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Requests of one connection under way at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Clients refused (over `max_clients`) whose connections are open at once, while the node
/// writes them the refusal and lingers; past that, one is closed at once. Each holds a file
/// descriptor (see `run::RESERVED_FILES`).
pub const MAX_REFUSED: usize = 64;

/// Replies are written once this much is buffered, or when no more are ready.
const WRITE_CHUNK: usize = 64 << 10;

/// After a protocol error, what the client still sends is read and dropped, for at most this
/// long and this many bytes, before the connection is closed (see [`linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// Accepts clients until the task is dropped, and runs each connection on `thread`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, thread: actix::ArbiterHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // Counted and refused here, so that only admitted clients wait for the thread.
                let clients = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
                if clients > shared.config.max_clients {
                    shared.clients.fetch_sub(1, Ordering::Relaxed);
                    if shared.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSED {
                        shared.refusing.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    let shared = shared.clone();
                    actix_rt::spawn(async move {
                        if let Some(mut stream) = refuse(stream).await {
                            linger(&mut stream).await;
                        }
                        shared.refusing.fetch_sub(1, Ordering::Relaxed);
                    });
                    continue;
                }
                let shared = shared.clone();
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(e) => {
                        log::warn!("a client connection from {peer}: {e}");
                        shared.clients.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                };
                thread.spawn_fn(move || {
                    actix_rt::spawn(async move {
                        // Registered with the runtime of the thread that polls it.
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                let local = stream.local_addr().unwrap_or(shared.client_addr);
                                let session = Session::new(shared.clone(), peer, local);
                                connection(stream, session, &shared).await;
                            }
                            Err(e) => log::warn!("a client connection from {peer}: {e}"),
                        }
                        shared.clients.fetch_sub(1, Ordering::Relaxed);
                    });
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                log::warn!("accepting a client failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Writes the refusal and ends the stream; the stream, to [`linger`] on, if that went well.
async fn refuse(mut stream: TcpStream) -> Option<TcpStream> {
    let mut out = BytesMut::new();
    reply::error(&mut out, "ERR max number of clients reached");
    let sent = stream.write_all(&out).await.is_ok() && stream.shutdown().await.is_ok();
    sent.then_some(stream)
}

async fn connection(stream: TcpStream, mut session: Session, shared: &Shared) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<PendingReply>(MAX_IN_FLIGHT);
    let conn = session.connection();

    // Killed by another connection (`CLIENT KILL`), the writer stops at once, wherever it
    // waits (for a reply, or for a client that does not read to take one): the replies due are
    // dropped, and the commands among them not started yet never run.
    let writing = conn.clone();
    let writer = actix_rt::spawn(async move {
        let mut out = BytesMut::new();
        let write = async {
            while let Some(pending) = rx.recv().await {
                let Reply { bytes, close } = pending.await;
                out.extend_from_slice(&bytes);
                if close || out.len() >= WRITE_CHUNK || rx.is_empty() {
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if close {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            () = writing.killed() => {}
            () = write => {}
        }
    });

    let limits = Limits::new(shared.config.max_value_bytes);
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut parser = resp::RequestParser::default();
    // Closed by the node (a protocol error, `QUIT`), not by the client.
    let mut closing = false;
    'read: loop {
        let read = tokio::select! {
            biased;
            // `CLIENT KILL`: nothing more is read, even what came with it; what was asked
            // before is answered, then the connection closes.
            () = conn.killed() => break,
            read = rd.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => conn.active(),
        }
        loop {
            match parser.parse(&mut buf, &limits) {
                Ok(None) => break,
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    if conn.stops_reading() {
                        break 'read;
                    }
                    // Nothing after `QUIT` runs, as in Redis: its reply closes the connection.
                    let quit = args[0].eq_ignore_ascii_case(b"quit");
                    let pending = session.execute(args);
                    let sent = tokio::select! {
                        biased;
                        () = conn.killed() => break 'read,
                        sent = tx.send(pending) => sent,
                    };
                    if sent.is_err() {
                        break 'read;
                    }
                    // Nor after a `CLIENT KILL` of this connection.
                    if quit || conn.stops_reading() {
                        closing = true;
                        break 'read;
                    }
                }
                Err(e) => {
                    let mut out = BytesMut::new();
                    reply::error(&mut out, format!("ERR {e}"));
                    let refusal: PendingReply = Box::pin(std::future::ready(Reply {
                        bytes: out,
                        close: true,
                    }));
                    let _ = tx.send(refusal).await;
                    closing = true;
                    break 'read;
                }
            }
        }
        // Keep the buffer from holding on to the memory of one huge request.
        if buf.is_empty() && buf.capacity() > (1 << 20) {
            buf = BytesMut::with_capacity(16 << 10);
        }
    }
    drop(tx);
    let _ = writer.await;
    // Out of `CLIENT LIST` while it lingers.
    drop(session);
    if closing && !conn.is_killed() {
        linger(&mut rd).await;
    }
}

/// Reads and drops what a client refused with a protocol error (or that sent `QUIT`) still
/// sends, until it closes
/// (or [`LINGER`] or [`LINGER_BYTES`] runs out). The error and the end of the stream are
/// written by then; closing a socket with bytes unread would reset the connection instead, and
/// a client still sending (the rest of a value over `max_value_bytes`, as redis-cli sends a
/// command whole) would see its write fail and never read the error.
async fn linger(rd: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let drain = async {
        let mut scratch = vec![0u8; 64 << 10];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
