//! The TCP transport between nodes, on each node's raft address.
//!
//! # Format
//!
//! A connection carries length-prefixed frames: a 4-byte big-endian length, then that many bytes
//! of a bincode-encoded [`Frame`]. The first frame a connecting node sends is
//! [`Frame::Hello`], proving the cluster id and shared secret of the config; a connection that
//! does not is refused and logged. Every later frame is one [`Frame::Batch`]: every raft
//! message of one MultiRaft round for the receiving node, each as protobuf bytes.
//!
//! Every frame is checked against [`MAX_FRAME_BYTES`] before it is read, and decoded under a
//! limit; bytes that are not a frame close that connection and nothing else (contract 8).
//!
//! Outbound, each peer has a bounded queue and a task that connects (with backoff) and writes.
//! While the peer is not connected, or its queue is full, `send` fails at once and MultiRaft
//! tells raft with `report_unreachable`: MultiRaft never waits for the network.

use actix::Recipient;
use flotilla_actors::codec;
use flotilla_actors::ids::{NodeId, RangeId};
use flotilla_actors::messages::RaftBatch;
use flotilla_actors::transport::{Transport, Unreachable};
use protobuf::Message as ProtoMessage;
use raft::prelude::Message as RaftMessage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The largest frame accepted (a whole range snapshot travels in one).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Batches queued for one peer before `send` reports it unreachable.
const QUEUE_BATCHES: usize = 1024;

/// What travels on a raft connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame of a connection.
    Hello {
        cluster_id: String,
        secret: String,
        from: u64,
    },
    /// The raft messages of one round, as `(range, protobuf bytes)`.
    Batch {
        from: u64,
        to: u64,
        messages: Vec<(u64, Vec<u8>)>,
    },
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

/// The largest first frame (a hello) accepted before a peer has proven who it is.
const MAX_HELLO_BYTES: usize = 4 << 10;

async fn read_frame(stream: &mut TcpStream, max: usize) -> Result<Frame, FrameError> {
    let len = stream.read_u32().await? as usize;
    if len > max {
        return Err(FrameError::Oversized(len, max));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    codec::decode(&buf).map_err(|e| FrameError::Decode(e.to_string()))
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

impl Transport for TcpTransport {
    fn send(&self, batch: RaftBatch) -> Result<(), Unreachable> {
        let peer = self.peers.get(&batch.to).ok_or(Unreachable)?;
        if !peer.connected.load(Ordering::Relaxed) {
            return Err(Unreachable);
        }
        peer.queue.try_send(batch).map_err(|_| Unreachable)
    }
}

/// Starts a connection task per peer on the current runtime and returns the transport.
pub fn connect(
    me: NodeId,
    peers: &HashMap<NodeId, SocketAddr>,
    credentials: &Credentials,
) -> TcpTransport {
    let mut out = HashMap::new();
    for (&node, &addr) in peers {
        if node == me {
            continue;
        }
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let connected = Arc::new(AtomicBool::new(false));
        let hello = encode_frame(&Frame::Hello {
            cluster_id: credentials.cluster_id.clone(),
            secret: credentials.secret.clone(),
            from: me.0,
        });
        actix_rt::spawn(outbound(node, addr, hello, rx, connected.clone()));
        out.insert(
            node,
            Peer {
                queue: tx,
                connected,
            },
        );
    }
    TcpTransport { peers: out }
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
            if w.write_all(&hello).await.is_ok() && w.flush().await.is_ok() {
                log::info!("connected to {node} at {addr}");
                connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(20);
                // The peer never writes on this connection: a read that returns means it
                // closed (or died), which is noticed at once rather than at the next write.
                let mut closed = Box::pin(async move {
                    let mut b = [0u8; 1];
                    let _ = rd.read(&mut b).await;
                });
                loop {
                    let batch = tokio::select! {
                        b = rx.recv() => match b {
                            Some(b) => b,
                            None => return,
                        },
                        _ = &mut closed => break,
                    };
                    let frame = Frame::Batch {
                        from: batch.from.0,
                        to: batch.to.0,
                        messages: batch
                            .messages
                            .iter()
                            .map(|(r, m)| {
                                (r.0, m.write_to_bytes().expect("encoding a raft message"))
                            })
                            .collect(),
                    };
                    if w.write_all(&encode_frame(&frame)).await.is_err() {
                        break;
                    }
                    if rx.is_empty() && w.flush().await.is_err() {
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
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (credentials, multiraft) = (credentials.clone(), multiraft.clone());
        actix_rt::spawn(async move {
            if let Err(e) = inbound(stream, me, &credentials, &multiraft).await {
                match e {
                    FrameError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                        log::info!("raft connection from {addr} closed")
                    }
                    e => log::warn!("raft connection from {addr} dropped: {e}"),
                }
            }
        });
    }
}

async fn inbound(
    mut stream: TcpStream,
    me: NodeId,
    credentials: &Credentials,
    multiraft: &Recipient<RaftBatch>,
) -> Result<(), FrameError> {
    let from = match read_frame(&mut stream, MAX_HELLO_BYTES).await? {
        Frame::Hello {
            cluster_id,
            secret,
            from,
        } => {
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
        Frame::Batch { .. } => {
            return Err(FrameError::Refused(
                "no hello before the first batch".into(),
            ))
        }
    };
    loop {
        match read_frame(&mut stream, MAX_FRAME_BYTES).await? {
            Frame::Batch {
                from: f,
                to,
                messages,
            } => {
                if f != from || to != me.0 {
                    return Err(FrameError::Refused(format!(
                        "batch from {f} to {to} on the connection of {from}"
                    )));
                }
                let mut decoded = Vec::with_capacity(messages.len());
                for (range, bytes) in messages {
                    let m = RaftMessage::parse_from_bytes(&bytes)
                        .map_err(|e| FrameError::Decode(e.to_string()))?;
                    decoded.push((RangeId(range), m));
                }
                multiraft.do_send(RaftBatch {
                    from: NodeId(from),
                    to: me,
                    messages: decoded,
                });
            }
            Frame::Hello { .. } => return Err(FrameError::Refused("a second hello".into())),
        }
    }
}
