//! Starting a node: its sled database, its MultiRaft and Store actors, each on its own thread
//! (an arbiter), wired to each other and to a transport.

use crate::ids::{NodeId, RangeId, ReplicaId};
use crate::multiraft::{MultiRaft, RaftMetrics, RaftSettings};
use crate::storage::{Engine, RangeDescriptor, StorageError, WriteBatch};
use crate::store::{Store, StoreSettings};
use crate::transport::Transport;
use actix::dev::channel;
use actix::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// MultiRaft's mailbox bound for `send`; everything reaches it by `do_send`, which ignores it.
const RAFT_MAILBOX: usize = 1024;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node: NodeId,
    pub data_dir: PathBuf,
    /// Keys at which the key space is cut into the initial ranges (used when the data
    /// directory is new; afterwards the stored range descriptors rule).
    pub split_keys: Vec<Vec<u8>>,
    /// The nodes that replicate every initial range.
    pub initial_members: Vec<NodeId>,
    /// sled's cache size.
    pub cache_bytes: u64,
    /// Whether writes are made durable (`false` only in simulations, whose crashes stop
    /// actors, not machines).
    pub durable: bool,
    pub raft: RaftSettings,
    pub store: StoreSettings,
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub store: Addr<Store>,
    pub multiraft: Addr<MultiRaft>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<RaftMetrics>,
    arbiters: Vec<Arbiter>,
    /// The Store's writer, snapshot builder and purger threads (see
    /// `Store::run_on_own_threads`), and MultiRaft's purger of raft log files.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The initial ranges: `[""; k1)`, `[k1; k2)`, …, `[kn; ∞)`, numbered from 1.
pub fn initial_ranges(split_keys: &[Vec<u8>], members: &[NodeId]) -> Vec<RangeDescriptor> {
    let mut bounds = vec![Vec::new()];
    bounds.extend(split_keys.iter().cloned());
    bounds.push(Vec::new());
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| RangeDescriptor {
            id: RangeId(i as u64 + 1),
            start_key: w[0].clone(),
            end_key: w[1].clone(),
            voters: members.iter().map(|&n| ReplicaId::new(n, 0)).collect(),
            learners: Vec::new(),
            removed: Vec::new(),
        })
        .collect()
}

impl Node {
    /// Opens the data directory (bootstrapping it when new), loads every range and starts the
    /// actors. The caller connects `transport`'s other end to [`Node::multiraft`].
    pub fn start(
        settings: NodeSettings,
        transport: Box<dyn Transport>,
    ) -> Result<Node, StorageError> {
        Node::start_with(settings, transport, true)
    }

    /// Like [`Node::start`], but both actors run on the calling thread's arbiter (which must
    /// belong to a running actix `System`): a simulation runs whole clusters on one thread,
    /// under tokio's paused clock, so that a seed replays exactly.
    pub fn start_here(
        settings: NodeSettings,
        transport: Box<dyn Transport>,
    ) -> Result<Node, StorageError> {
        Node::start_with(settings, transport, false)
    }

    fn start_with(
        settings: NodeSettings,
        transport: Box<dyn Transport>,
        own_threads: bool,
    ) -> Result<Node, StorageError> {
        let engine = if settings.durable {
            Engine::open(&settings.data_dir, settings.cache_bytes)?
        } else {
            Engine::open_volatile(&settings.data_dir, settings.cache_bytes)?
        };
        if !engine.is_bootstrapped()? && settings.initial_members.contains(&settings.node) {
            let mut batch = WriteBatch::default();
            for d in initial_ranges(&settings.split_keys, &settings.initial_members) {
                engine.bootstrap_range(&d, &mut batch)?;
            }
            engine.commit(batch)?;
        }
        let metrics = Arc::new(RaftMetrics::default());
        // Addresses first, actors second, so each can be given the other's address; each
        // actor then starts on its own thread from its receiving end.
        let (raft_tx, raft_rx) = channel::channel::<MultiRaft>(RAFT_MAILBOX);
        let (store_tx, store_rx) = channel::channel::<Store>(settings.store.mailbox_capacity);
        let raft_addr = Addr::new(raft_tx);
        let store_addr = Addr::new(store_tx);
        let mut multiraft = MultiRaft::load(
            settings.node,
            engine.clone(),
            settings.raft.clone(),
            store_addr.clone().recipient(),
            transport,
            metrics.clone(),
            &settings.store,
        )?;
        let mut store = Store::load(
            settings.node,
            engine.boot(),
            engine.clone(),
            raft_addr.clone(),
            settings.store.clone(),
            metrics.clone(),
        )?;
        let mut arbiters = Vec::new();
        let mut threads = Vec::new();
        if own_threads {
            threads = store.run_on_own_threads(store_addr.clone())?;
            threads.push(multiraft.purge_on_own_thread(&raft_addr)?);
            let raft_arbiter = Arbiter::new();
            let store_arbiter = Arbiter::new();
            raft_arbiter.spawn_fn(move || {
                Context::with_receiver(raft_rx).run(multiraft);
            });
            store_arbiter.spawn_fn(move || {
                Context::with_receiver(store_rx).run(store);
            });
            arbiters = vec![raft_arbiter, store_arbiter];
        } else {
            Context::with_receiver(raft_rx).run(multiraft);
            Context::with_receiver(store_rx).run(store);
        }
        Ok(Node {
            id: settings.node,
            store: store_addr,
            multiraft: raft_addr,
            engine,
            metrics,
            arbiters,
            threads,
        })
    }

    /// Stops the actors of a node started with [`Node::start_here`]; the data directory is
    /// released once they are dropped, when the `Weak` returned no longer upgrades.
    pub fn shut_down_here(self) -> std::sync::Weak<Engine> {
        self.store.do_send(crate::messages::Shutdown);
        self.multiraft.do_send(crate::messages::Shutdown);
        Arc::downgrade(&self.engine)
    }

    /// The thread MultiRaft runs on (the current one for a node started here), for tasks that
    /// should run beside it.
    pub fn raft_thread(&self) -> actix::ArbiterHandle {
        self.arbiters
            .first()
            .map_or_else(Arbiter::current, |a| a.handle())
    }

    /// The thread the Store runs on (the current one for a node started here).
    pub fn store_thread(&self) -> actix::ArbiterHandle {
        self.arbiters
            .get(1)
            .map_or_else(Arbiter::current, |a| a.handle())
    }

    /// Stops the actors and waits for their threads, releasing the data directory.
    pub fn stop(self) {
        for a in &self.arbiters {
            a.stop();
        }
        for a in self.arbiters {
            let _ = a.join();
        }
        // The Store is gone with its arbiter: its writer ends once it has written what it
        // held, its builder once the build under way is done (the queued ones are dropped),
        // its purger after the chunk under way (the next start finishes the purges).
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
