//! The TCP transport between nodes, on each node's raft address.
//!
//! # Format
//!
//! A connection carries length-prefixed frames: a 4-byte big-endian length, then that many bytes
//! of a bincode-encoded [`Frame`]. The first frame a connecting node sends is
//! [`Frame::Hello`], naming the protocol version and proving the cluster id and shared secret
//! of the config; a connection that does not match is refused and logged. The receiving node answers [`Frame::Welcome`], and only then
//! does the connecting node count the connection as up (a listening socket held open while its
//! node is down, by a service manager, completes connections that nobody reads). Every later
//! frame is a [`Frame::Batch`] (the raft messages of
//! one MultiRaft round for the receiving node, each as protobuf bytes, with the heartbeats of
//! all ranges coalesced into compact tuples) or a [`Frame::SnapshotChunk`].
//!
//! A round's batch larger than a frame is split over several. A snapshot larger than
//! [`CHUNK_BYTES`] travels in chunks, written between the other frames to that node, so a big
//! range never holds the others' messages back by more than one chunk; the receiver joins the
//! chunks and hands the whole snapshot to MultiRaft, which installs it (see
//! `actors/src/storage.rs`).
//!
//! Every frame is checked against [`MAX_FRAME_BYTES`] before it is read, and decoded under a
//! limit; bytes that are not a frame close that connection and nothing else (contract 8).
//!
//! Outbound, each peer has a bounded queue and a task that connects (with backoff) and writes.
//! While the peer is not connected, or its queue is full, `send` fails at once and MultiRaft
//! tells raft with `report_unreachable`: MultiRaft never waits for the network.

use actix::Recipient;
use flotilla_actors::codec;
use flotilla_actors::ids::{NodeId, RangeId, ReplicaId};
use flotilla_actors::messages::{Heartbeat, RaftBatch};
use flotilla_actors::transport::{Transport, Unreachable};
use protobuf::Message as ProtoMessage;
use raft::prelude::{Message as RaftMessage, MessageType};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The version of this format and of the commands in the raft entries it carries, in every
/// hello: nodes speaking different versions refuse each other's connections with an error
/// that says so. 3: `SET ... GET`, `GETDEL` and `APPEND`, which a node of version 2 cannot
/// apply. 4: key expiry, whose commands and stored values (a tag byte before each, in
/// snapshots too) a node of version 3 cannot read. 5: transactions (`Command::Multi`). 6: a
/// batch carries its sender's clock. 7: range splits (`Command::Split`, `Command::FlushSpan`,
/// and a batch's start keys of ranges appended to from their log's beginning). 8: a range's
/// size in its log (`Command::Measured`).
pub const PROTOCOL_VERSION: u32 = 8;

/// The largest frame accepted.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The size of a snapshot's chunks; smaller snapshots travel inside a batch.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The most snapshot bytes a connection may have received and not yet completed.
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

/// The most ranges whose snapshots a connection may be receiving at once.
pub const MAX_SNAPSHOTS_IN_FLIGHT: usize = 1024;

/// What a frame costs beyond its messages' bytes (lengths, ids), counted generously.
const FRAME_OVERHEAD: usize = 64;

/// Batches queued for one peer before `send` reports it unreachable.
const QUEUE_BATCHES: usize = 1024;

/// What travels on a raft connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame of a connection. Its first field never changes place, so that nodes of
    /// every version read each other's protocol version.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender: a node refuses another version.
        version: u32,
        cluster_id: String,
        secret: String,
        from: u64,
    },
    /// Raft messages of one round, as `(range, protobuf bytes)`, heartbeats coalesced, and
    /// removal notices (see [`RaftBatch`]).
    Batch {
        from: u64,
        /// The sender's boot.
        boot: u64,
        /// The sender's clock (see [`RaftBatch`]).
        clock: u64,
        to: u64,
        #[serde(with = "flotilla_actors::codec::numbered_bytes")]
        messages: Vec<(u64, Vec<u8>)>,
        heartbeats: Vec<Heartbeat>,
        removed: Vec<(RangeId, ReplicaId)>,
        /// A leader's compaction hints (see [`RaftBatch`]).
        compact: Vec<(RangeId, u64)>,
        /// Start keys of ranges appended to from their log's beginning (see [`RaftBatch`]).
        #[serde(with = "flotilla_actors::codec::numbered_bytes")]
        starts: Vec<(u64, Vec<u8>)>,
    },
    /// Part of a range's snapshot. The last chunk carries the `MsgSnapshot` itself (protobuf,
    /// with empty data), whose data is the chunks joined in order.
    SnapshotChunk {
        range: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "serde_bytes")]
        message: Option<Vec<u8>>,
    },
    /// The answer to a hello: the only frame that goes back on a connection.
    Welcome,
}

/// A snapshot on its way: the frames of its chunks, each made when it is to be written (a
/// snapshot may be large: copying it all at once would hold the thread up).
pub struct SnapshotChunks {
    range: u64,
    data: bytes::Bytes,
    /// The raft message, without its data, that the last chunk carries.
    header: Vec<u8>,
    sent: usize,
    chunk: usize,
}

impl Iterator for SnapshotChunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.sent >= self.data.len() {
            return None;
        }
        let end = (self.sent + self.chunk).min(self.data.len());
        let frame = encode_frame(&Frame::SnapshotChunk {
            range: self.range,
            data: self.data[self.sent..end].to_vec(),
            message: (end == self.data.len()).then(|| self.header.clone()),
        });
        self.sent = end;
        Some(frame)
    }
}

/// A batch as the frames that carry it: the batch frames, then the snapshots to send in chunks
/// (written between later batches). Each frame is at most `max_frame` bytes unless one raft
/// message alone is larger.
pub fn frames_of(
    batch: RaftBatch,
    max_frame: usize,
    chunk: usize,
) -> (Vec<Vec<u8>>, Vec<SnapshotChunks>) {
    let (from, boot, clock, to) = (batch.from.0, batch.boot, batch.clock, batch.to.0);
    let mut frames = Vec::new();
    let mut chunks = Vec::new();
    let mut messages = Vec::new();
    let mut size = FRAME_OVERHEAD;
    let mut heartbeats = batch.heartbeats;
    let mut removed = batch.removed;
    let mut compact = batch.compact;
    let mut starts: Vec<(u64, Vec<u8>)> =
        (batch.starts.into_iter()).map(|(r, k)| (r.0, k)).collect();
    size += heartbeats.len() * FRAME_OVERHEAD
        + heartbeats.iter().map(|h| h.context.len()).sum::<usize>()
        + starts.iter().map(|(_, k)| k.len() + 16).sum::<usize>()
        + (removed.len() + compact.len()) * 16;
    // The heartbeats, notices, hints and start keys go with the first frame.
    let mut extras =
        !heartbeats.is_empty() || !removed.is_empty() || !compact.is_empty() || !starts.is_empty();
    let mut flush = |messages: &mut Vec<(u64, Vec<u8>)>, frames: &mut Vec<Vec<u8>>| {
        frames.push(encode_frame(&Frame::Batch {
            from,
            boot,
            clock,
            to,
            messages: std::mem::take(messages),
            heartbeats: std::mem::take(&mut heartbeats),
            removed: std::mem::take(&mut removed),
            compact: std::mem::take(&mut compact),
            starts: std::mem::take(&mut starts),
        }));
    };
    for (range, mut m) in batch.messages {
        if m.get_msg_type() == MessageType::MsgSnapshot
            && m.get_snapshot().data.len() > MAX_SNAPSHOT_BYTES
        {
            // The receiver would refuse it and drop the connection; raft tries again later.
            log::error!(
                "{range}: a snapshot of {} bytes exceeds {MAX_SNAPSHOT_BYTES}; not sent",
                m.get_snapshot().data.len()
            );
            continue;
        }
        if m.get_msg_type() == MessageType::MsgSnapshot && m.get_snapshot().data.len() > chunk {
            let data = std::mem::take(&mut m.mut_snapshot().data);
            let header = m.write_to_bytes().expect("encoding a raft message");
            chunks.push(SnapshotChunks {
                range: range.0,
                data,
                header,
                sent: 0,
                chunk,
            });
            continue;
        }
        let bytes = m.write_to_bytes().expect("encoding a raft message");
        if !messages.is_empty() && size + bytes.len() + FRAME_OVERHEAD > max_frame {
            flush(&mut messages, &mut frames);
            extras = false;
            size = FRAME_OVERHEAD;
        }
        size += bytes.len() + FRAME_OVERHEAD;
        messages.push((range.0, bytes));
    }
    let empty = frames.is_empty() && chunks.is_empty();
    if !messages.is_empty() || extras || empty {
        // An empty batch still travels: it tells the receiver this node is alive.
        flush(&mut messages, &mut frames);
    }
    (frames, chunks)
}

/// Who may talk to this node.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub cluster_id: String,
    pub secret: String,
}

/// Why a connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    Oversized(usize, usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("refused: {0}")]
    Refused(String),
}

/// The largest first frame (a hello) accepted before a peer has proven who it is, and the
/// largest answer to one.
const MAX_HELLO_BYTES: usize = 4 << 10;

/// Raft connections open at once that have not said hello yet: past that, the oldest of them
/// is closed if it has waited [`HELLO_GRACE`], else the new one. Each holds a file descriptor
/// (see `run::RESERVED_FILES`): without a bound, sockets opened to the raft port and left
/// silent took every descriptor the node had. A peer says hello as it connects, so sockets
/// left silent there keep it out for a moment at most (it connects again within a second).
pub const MAX_HELLOS: usize = 64;

/// How long a connection that has not said hello yet is safe from being closed for a newer one:
/// a peer's hello may still be on its way, or not yet read.
const HELLO_GRACE: Duration = Duration::from_millis(500);

/// How long a raft connection may take to say hello before it is closed.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// The raft connections that have not said hello yet, oldest first, each with its task.
#[derive(Default)]
struct Unproven {
    next: u64,
    waiting: VecDeque<(u64, std::time::Instant, tokio::task::AbortHandle)>,
}

/// One connection among the [`Unproven`], until it says hello or ends.
struct AwaitingHello {
    id: u64,
    unproven: Arc<Mutex<Unproven>>,
}

impl Drop for AwaitingHello {
    fn drop(&mut self) {
        let mut u = self.unproven.lock().expect("unproven");
        if let Some(at) = u.waiting.iter().position(|(id, ..)| *id == self.id) {
            u.waiting.remove(at);
        }
    }
}

/// How long a connecting node waits for the answer to its hello before trying again: long, as
/// hellos are answered on the peer's MultiRaft thread, which a slow sync or a large snapshot can
/// hold up; the peer counts as unreachable meanwhile.
const WELCOME_WAIT: Duration = Duration::from_secs(10);

async fn read_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
) -> Result<Frame, FrameError> {
    let len = stream.read_u32().await? as usize;
    if len > max {
        return Err(FrameError::Oversized(len, max));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    decode_frame(&buf)
}

/// Decodes a frame's body (the bytes after its length).
pub fn decode_frame(body: &[u8]) -> Result<Frame, FrameError> {
    codec::decode(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes a raft message of a frame.
pub fn decode_message(bytes: &[u8]) -> Result<RaftMessage, FrameError> {
    RaftMessage::parse_from_bytes(bytes).map_err(|e| FrameError::Decode(e.to_string()))
}

fn encode_frame(frame: &Frame) -> Vec<u8> {
    let body = codec::encode(frame);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

struct Peer {
    queue: mpsc::Sender<RaftBatch>,
    connected: Arc<AtomicBool>,
}

/// The sending side, given to MultiRaft.
pub struct TcpTransport {
    peers: HashMap<NodeId, Peer>,
}

impl TcpTransport {
    /// Which peers this node is connected to now, for the rest of the node to ask.
    pub fn reachability(&self) -> Reachability {
        Reachability(
            (self.peers.iter())
                .map(|(&node, peer)| (node, peer.connected.clone()))
                .collect(),
        )
    }
}

/// Whether each peer is connected now: its connection is up and it answered the hello (a
/// socket that accepts and says nothing does not count).
#[derive(Default)]
pub struct Reachability(HashMap<NodeId, Arc<AtomicBool>>);

impl Reachability {
    pub fn connected(&self, node: NodeId) -> bool {
        self.0.get(&node).is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// How many peers are connected now.
    pub fn count(&self) -> usize {
        (self.0.values())
            .filter(|c| c.load(Ordering::Relaxed))
            .count()
    }
}

impl Transport for TcpTransport {
    fn send(&self, batch: RaftBatch) -> Result<(), Unreachable> {
        let peer = self.peers.get(&batch.to).ok_or(Unreachable)?;
        if !peer.connected.load(Ordering::Relaxed) {
            return Err(Unreachable);
        }
        peer.queue.try_send(batch).map_err(|_| Unreachable)
    }
}

/// The tasks that keep a node's connections to its peers, to run on the thread of its MultiRaft
/// (see [`connect`]).
pub type Connections = Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// The transport, and a connection task per peer to spawn on the thread of the node's MultiRaft:
/// a batch then goes from MultiRaft to its socket, and one read from a socket to MultiRaft,
/// without waking another thread.
pub fn connect(
    me: NodeId,
    peers: &HashMap<NodeId, SocketAddr>,
    credentials: &Credentials,
) -> (TcpTransport, Connections) {
    let mut out = HashMap::new();
    let mut tasks: Connections = Vec::new();
    for (&node, &addr) in peers {
        if node == me {
            continue;
        }
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let connected = Arc::new(AtomicBool::new(false));
        let hello = encode_frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster_id: credentials.cluster_id.clone(),
            secret: credentials.secret.clone(),
            from: me.0,
        });
        tasks.push(Box::pin(outbound(node, addr, hello, rx, connected.clone())));
        out.insert(
            node,
            Peer {
                queue: tx,
                connected,
            },
        );
    }
    (TcpTransport { peers: out }, tasks)
}

async fn outbound(
    node: NodeId,
    addr: SocketAddr,
    hello: Vec<u8>,
    mut rx: mpsc::Receiver<RaftBatch>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        if let Ok(stream) = TcpStream::connect(addr).await {
            let _ = stream.set_nodelay(true);
            let (mut rd, wr) = stream.into_split();
            let mut w = BufWriter::with_capacity(256 << 10, wr);
            let sent = w.write_all(&hello).await.is_ok() && w.flush().await.is_ok();
            let welcomed = sent
                && match tokio::time::timeout(WELCOME_WAIT, read_frame(&mut rd, MAX_HELLO_BYTES))
                    .await
                {
                    Ok(Ok(Frame::Welcome)) => true,
                    Ok(Ok(other)) => {
                        log::warn!("{node} at {addr} answered {other:?} to a hello");
                        false
                    }
                    Ok(Err(e)) => {
                        log::info!("{node} at {addr} did not welcome this node: {e}");
                        false
                    }
                    Err(_) => {
                        log::info!("{node} at {addr} did not answer within {WELCOME_WAIT:?}");
                        false
                    }
                };
            if welcomed {
                log::info!("connected to {node} at {addr}");
                connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(20);
                // The peer writes nothing more on this connection: a read that returns means it
                // closed (or died), which is noticed at once rather than at the next write.
                let mut closed = Box::pin(async move {
                    let mut b = [0u8; 1];
                    let _ = rd.read(&mut b).await;
                });
                // Snapshots still to write in chunks; batches go first.
                let mut chunks: VecDeque<SnapshotChunks> = VecDeque::new();
                loop {
                    let batch = if chunks.is_empty() {
                        tokio::select! {
                            b = rx.recv() => match b {
                                Some(b) => Some(b),
                                None => return,
                            },
                            _ = &mut closed => break,
                        }
                    } else {
                        match rx.try_recv() {
                            Ok(b) => Some(b),
                            Err(mpsc::error::TryRecvError::Empty) => None,
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    };
                    let mut failed = false;
                    if let Some(batch) = batch {
                        let (frames, more) = frames_of(batch, MAX_FRAME_BYTES, CHUNK_BYTES);
                        for f in frames {
                            failed |= w.write_all(&f).await.is_err();
                        }
                        chunks.extend(more);
                    }
                    // One chunk after each batch at most: neither starves the other. Between two
                    // chunks the thread (MultiRaft's) gets a turn.
                    if let Some(snapshot) = chunks.front_mut() {
                        match snapshot.next() {
                            Some(chunk) => failed |= w.write_all(&chunk).await.is_err(),
                            None => {
                                chunks.pop_front();
                            }
                        }
                        tokio::task::yield_now().await;
                    }
                    if failed || (rx.is_empty() && w.flush().await.is_err()) {
                        break;
                    }
                }
                connected.store(false, Ordering::Relaxed);
                log::warn!("lost the connection to {node} at {addr}");
            }
        }
        // Whatever was queued for a dead connection is stale; raft resends what matters.
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Accepts peers' connections on the raft address until the task is dropped.
pub async fn listen(
    listener: TcpListener,
    me: NodeId,
    credentials: Credentials,
    multiraft: Recipient<RaftBatch>,
) {
    let unproven = Arc::new(Mutex::new(Unproven::default()));
    let mut closed = 0u64;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                log::warn!("accepting a raft connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Room for it: the oldest closed if it has had its grace, else this one.
        let (id, evicted, refused) = {
            let mut u = unproven.lock().expect("unproven");
            u.next += 1;
            let full = u.waiting.len() >= MAX_HELLOS;
            let graced = |w: &&(_, std::time::Instant, _)| w.1.elapsed() >= HELLO_GRACE;
            match full && u.waiting.front().filter(graced).is_some() {
                true => (u.next, u.waiting.pop_front(), false),
                false => (u.next, None, full),
            }
        };
        if let Some((_, _, task)) = &evicted {
            task.abort();
        }
        if evicted.is_some() || refused {
            closed += 1;
            if closed % 1000 == 1 {
                log::warn!(
                    "a raft connection closed: {MAX_HELLOS} had not said hello yet ({closed} \
                     closed since start)"
                );
            }
        }
        if refused {
            continue;
        }
        let hello = AwaitingHello {
            id,
            unproven: unproven.clone(),
        };
        let _ = stream.set_nodelay(true);
        let (credentials, multiraft) = (credentials.clone(), multiraft.clone());
        let task = actix_rt::spawn(async move {
            if let Err(e) = inbound(stream, me, &credentials, &multiraft, hello).await {
                match e {
                    FrameError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                        log::info!("raft connection from {addr} closed")
                    }
                    e => log::warn!("raft connection from {addr} dropped: {e}"),
                }
            }
        });
        // Its task has not run yet (this thread runs it, after this): it is waiting.
        let since = std::time::Instant::now();
        (unproven.lock().expect("unproven").waiting).push_back((id, since, task.abort_handle()));
        // Let the connections accepted read their hellos before more are accepted: tokio
        // accepts up to 128 in a row otherwise, and the first would be taken as silent.
        tokio::task::yield_now().await;
    }
}

async fn inbound(
    mut stream: TcpStream,
    me: NodeId,
    credentials: &Credentials,
    multiraft: &Recipient<RaftBatch>,
    awaiting: AwaitingHello,
) -> Result<(), FrameError> {
    let first = tokio::time::timeout(HELLO_WAIT, read_frame(&mut stream, MAX_HELLO_BYTES));
    let first = first.await.map_err(|_| {
        let waited = HELLO_WAIT.as_secs();
        FrameError::Refused(format!("no hello within {waited} s"))
    })??;
    let from = match first {
        Frame::Hello {
            version,
            cluster_id,
            secret,
            from,
        } => {
            if version != PROTOCOL_VERSION {
                return Err(FrameError::Refused(format!(
                    "node {from} speaks raft protocol version {version}, this node \
                     {PROTOCOL_VERSION}: a cluster runs one version"
                )));
            }
            if cluster_id != credentials.cluster_id {
                return Err(FrameError::Refused(format!(
                    "cluster id {cluster_id:?} is not this cluster's"
                )));
            }
            if secret != credentials.secret {
                return Err(FrameError::Refused("wrong cluster secret".into()));
            }
            from
        }
        Frame::Batch { .. } | Frame::SnapshotChunk { .. } | Frame::Welcome => {
            return Err(FrameError::Refused(
                "no hello before the first batch".into(),
            ))
        }
    };
    drop(awaiting);
    stream.write_all(&encode_frame(&Frame::Welcome)).await?;
    // Snapshots being received, per range, and their bytes in all.
    let mut partial: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut partial_bytes = 0usize;
    loop {
        match read_frame(&mut stream, MAX_FRAME_BYTES).await? {
            Frame::Batch {
                from: f,
                boot,
                clock,
                to,
                messages,
                heartbeats,
                removed,
                compact,
                starts,
            } => {
                if f != from || to != me.0 {
                    return Err(FrameError::Refused(format!(
                        "batch from {f} to {to} on the connection of {from}"
                    )));
                }
                let mut batch = RaftBatch::new(NodeId(from), me);
                batch.boot = boot;
                batch.clock = clock;
                for (range, bytes) in messages {
                    batch
                        .messages
                        .push((RangeId(range), decode_message(&bytes)?));
                }
                batch.heartbeats = heartbeats;
                batch.removed = removed;
                batch.compact = compact;
                batch.starts = starts.into_iter().map(|(r, k)| (RangeId(r), k)).collect();
                multiraft.do_send(batch);
            }
            Frame::SnapshotChunk {
                range,
                data,
                message,
            } => {
                partial_bytes += data.len();
                if partial_bytes > MAX_SNAPSHOT_BYTES
                    || (partial.len() >= MAX_SNAPSHOTS_IN_FLIGHT && !partial.contains_key(&range))
                {
                    return Err(FrameError::Refused(format!(
                        "snapshots in flight exceed {MAX_SNAPSHOT_BYTES} bytes or \
                         {MAX_SNAPSHOTS_IN_FLIGHT} ranges"
                    )));
                }
                partial.entry(range).or_default().extend_from_slice(&data);
                if let Some(header) = message {
                    let data = partial.remove(&range).unwrap_or_default();
                    partial_bytes -= data.len();
                    let mut m = decode_message(&header)?;
                    if m.get_msg_type() != MessageType::MsgSnapshot {
                        return Err(FrameError::Decode(
                            "a snapshot chunk that is not a snapshot".into(),
                        ));
                    }
                    m.mut_snapshot().data = data.into();
                    let mut batch = RaftBatch::new(NodeId(from), me);
                    batch.messages.push((RangeId(range), m));
                    multiraft.do_send(batch);
                }
            }
            Frame::Hello { .. } | Frame::Welcome => {
                return Err(FrameError::Refused("a second hello".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::prelude::*;

    fn append(range: u64, bytes: usize) -> (RangeId, RaftMessage) {
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.mut_entries().push(raft::prelude::Entry {
            data: vec![range as u8; bytes].into(),
            ..Default::default()
        });
        (RangeId(range), m)
    }

    fn snapshot(range: u64, bytes: usize) -> (RangeId, RaftMessage) {
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 2;
        m.from = 1;
        m.mut_snapshot().mut_metadata().index = 42;
        m.mut_snapshot().data = (0..bytes).map(|i| i as u8).collect::<Vec<u8>>().into();
        (RangeId(range), m)
    }

    fn heartbeat(range: u64) -> Heartbeat {
        Heartbeat {
            range: RangeId(range),
            from: ReplicaId(1),
            to: ReplicaId(2),
            term: 7,
            commit: 9,
            context: Vec::new(),
            response: false,
            quiesce: false,
        }
    }

    fn decode_frame(bytes: &[u8]) -> Frame {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        codec::decode(&bytes[4..]).unwrap()
    }

    #[test]
    fn a_batch_larger_than_a_frame_is_split_and_a_big_snapshot_chunked() {
        let mut batch = RaftBatch::new(NodeId(1), NodeId(2));
        let sent: Vec<_> = (1..=10).map(|r| append(r, 3000)).collect();
        batch.messages = sent.clone();
        batch.messages.push(snapshot(11, 2500));
        batch.heartbeats = vec![heartbeat(12)];
        batch.removed = vec![(RangeId(13), ReplicaId(2))];
        batch.compact = vec![(RangeId(14), 77)];
        batch.starts = vec![(RangeId(15), b"k".to_vec())];
        let (frames, snapshots) = frames_of(batch, 10_000, 1000);
        let chunks: Vec<Vec<u8>> = snapshots.into_iter().flatten().collect();

        assert!(frames.len() >= 4, "{} frames", frames.len());
        let mut messages = Vec::new();
        let mut heartbeats = Vec::new();
        let mut removed = Vec::new();
        let mut compact = Vec::new();
        let mut starts = Vec::new();
        for f in &frames {
            assert!(f.len() <= 10_000, "a frame of {} bytes", f.len());
            match decode_frame(f) {
                Frame::Batch {
                    from: 1,
                    to: 2,
                    boot: _,
                    clock: _,
                    messages: m,
                    heartbeats: h,
                    removed: r,
                    compact: c,
                    starts: s,
                } => {
                    messages.extend(m);
                    heartbeats.extend(h);
                    removed.extend(r);
                    compact.extend(c);
                    starts.extend(s);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        let sent: Vec<(u64, Vec<u8>)> = sent
            .iter()
            .map(|(r, m)| (r.0, m.write_to_bytes().unwrap()))
            .collect();
        assert_eq!(messages, sent, "every message once, in order");
        assert_eq!(heartbeats, vec![heartbeat(12)]);
        assert_eq!(removed, vec![(RangeId(13), ReplicaId(2))]);
        assert_eq!(compact, vec![(RangeId(14), 77)]);
        assert_eq!(starts, vec![(15, b"k".to_vec())]);

        // The snapshot: three chunks, the last with the message.
        let mut data = Vec::new();
        let mut header = None;
        for (i, c) in chunks.iter().enumerate() {
            match decode_frame(c) {
                Frame::SnapshotChunk {
                    range: 11,
                    data: d,
                    message,
                } => {
                    assert!(d.len() <= 1000);
                    data.extend(d);
                    assert_eq!(message.is_some(), i == chunks.len() - 1);
                    header = message;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert_eq!(chunks.len(), 3);
        assert_eq!(data, snapshot(11, 2500).1.get_snapshot().data.to_vec());
        let header = RaftMessage::parse_from_bytes(&header.unwrap()).unwrap();
        assert_eq!(header.get_snapshot().get_metadata().index, 42);
        assert!(header.get_snapshot().data.is_empty());
    }

    /// Collects what a listener delivers.
    struct Sink(Arc<Mutex<Vec<RaftBatch>>>);

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<RaftBatch> for Sink {
        type Result = ();
        fn handle(&mut self, batch: RaftBatch, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(batch);
        }
    }

    /// Node 2's listener, on a port the OS assigns, delivering to what it answers.
    async fn listening() -> (SocketAddr, Arc<Mutex<Vec<RaftBatch>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(got.clone()).start();
        actix_rt::spawn(listen(listener, NodeId(2), credentials(), sink.recipient()));
        (addr, got)
    }

    fn credentials() -> Credentials {
        Credentials {
            cluster_id: "test".into(),
            secret: "s".into(),
        }
    }

    /// Node 1's transport to node 2 at `addr`, its connection task running here.
    fn transport_to(addr: SocketAddr) -> TcpTransport {
        let (transport, tasks) = connect(
            NodeId(1),
            &HashMap::from([(NodeId(2), addr)]),
            &credentials(),
        );
        for task in tasks {
            actix_rt::spawn(task);
        }
        transport
    }

    #[test]
    fn a_peer_whose_socket_is_open_but_unserved_is_not_counted_connected() {
        System::new().block_on(async {
            // Listening, as a service manager holds a node's socket while it is down, but
            // nobody accepts: connections complete in the kernel and nothing answers.
            let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let transport = transport_to(held.local_addr().unwrap());
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                let batch = RaftBatch::new(NodeId(1), NodeId(2));
                assert!(transport.send(batch).is_err(), "counted connected");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    #[test]
    fn a_snapshot_in_chunks_does_not_hold_back_other_ranges() {
        System::new().block_on(async {
            let (addr, got) = listening().await;
            let transport = transport_to(addr);

            let size = 8 * CHUNK_BYTES + 123;
            let mut big = RaftBatch::new(NodeId(1), NodeId(2));
            big.messages.push(snapshot(1, size));
            let mut small = RaftBatch::new(NodeId(1), NodeId(2));
            small.heartbeats.push(heartbeat(2));
            // Until connected, sending fails at once.
            while transport.send(big.clone()).is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            transport.send(small).unwrap();

            let start = std::time::Instant::now();
            while got.lock().unwrap().len() < 2 {
                assert!(start.elapsed() < Duration::from_secs(20), "not delivered");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let got = got.lock().unwrap();
            assert_eq!(
                got[0].heartbeats,
                vec![heartbeat(2)],
                "the heartbeat came first"
            );
            let (range, m) = &got[1].messages[0];
            assert_eq!(*range, RangeId(1));
            assert_eq!(m.get_snapshot().data.len(), size);
            assert_eq!(m, &snapshot(1, size).1, "the snapshot arrived whole");
        });
    }

    /// Sockets opened to the raft port and left silent do not take every file descriptor of
    /// the node, nor keep a peer out for long: past [`MAX_HELLOS`] of them, a new one is
    /// closed while they are within their grace, and the oldest once it is past, so a peer
    /// that connects then is served.
    #[test]
    fn silent_connections_on_the_raft_port_make_way_for_a_peer() {
        System::new().block_on(async {
            let (addr, got) = listening().await;
            let mut silent = Vec::new();
            for _ in 0..MAX_HELLOS {
                silent.push(TcpStream::connect(addr).await.unwrap());
            }
            let mut byte = [0u8; 1];
            let mut one_more = TcpStream::connect(addr).await.unwrap();
            assert_eq!(
                one_more.read(&mut byte).await.unwrap(),
                0,
                "one more let in"
            );
            tokio::time::sleep(HELLO_GRACE).await;
            let transport = transport_to(addr);
            let mut batch = RaftBatch::new(NodeId(1), NodeId(2));
            batch.heartbeats.push(heartbeat(3));
            let start = std::time::Instant::now();
            while transport.send(batch.clone()).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the peer was kept out"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while got.lock().unwrap().is_empty() {
                assert!(start.elapsed() < Duration::from_secs(5), "not delivered");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The oldest silent one made way, the newest still waits.
            assert_eq!(
                silent[0].read(&mut byte).await.unwrap(),
                0,
                "the oldest open"
            );
            let newest = silent.last_mut().unwrap();
            let read = tokio::time::timeout(Duration::from_millis(100), newest.read(&mut byte));
            assert!(read.await.is_err(), "the newest closed");
        });
    }
}
