//! MultiRaft hands committed work to the Store one batch at a time: a batch the Store has not
//! taken yet holds the next one back, and the Store taking it lets that one go at once.

use actix::prelude::*;
use flotilla_actors::codec;
use flotilla_actors::command::{Command, SetCondition};
use flotilla_actors::ids::{NodeId, ProposalId, RangeId};
use flotilla_actors::messages::*;
use flotilla_actors::multiraft::{MultiRaft, RaftMetrics, RaftSettings};
use flotilla_actors::node::initial_ranges;
use flotilla_actors::storage::{Engine, WriteBatch};
use flotilla_actors::store::StoreSettings;
use flotilla_actors::transport::LocalNetwork;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stands in for the Store: keeps the batches it is given, and takes none by itself.
struct Sink(Arc<Mutex<Vec<Events>>>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Events> for Sink {
    type Result = ();
    fn handle(&mut self, events: Events, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(events);
    }
}

/// Waits, for at most 10 s, until `done` holds.
async fn until(done: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn propose(multiraft: &Addr<MultiRaft>, seq: u64) -> ProposalId {
    let proposal = ProposalId {
        node: NodeId(1),
        boot: 1,
        seq,
    };
    let command = Command::Set {
        key: format!("k{seq}").into_bytes(),
        value: b"v".to_vec(),
        condition: SetCondition::Always,
    };
    multiraft.do_send(Requests(vec![RaftRequest::Propose {
        range: RangeId(1),
        proposal,
        payload: ProposalPayload::Command(codec::encode(&command)),
    }]));
    proposal
}

fn commits(batch: &Events) -> Vec<ProposalId> {
    batch
        .0
        .iter()
        .filter_map(|e| match e {
            Event::CommandCommitted { proposal, .. } => *proposal,
            _ => None,
        })
        .collect()
}

#[test]
fn a_batch_held_behind_one_not_taken_goes_as_soon_as_the_store_takes_that_one() {
    let dir = tempfile::tempdir().unwrap();
    System::new().block_on(async {
        let engine = Engine::open(dir.path(), 16 << 20).unwrap();
        let mut batch = WriteBatch::default();
        for d in initial_ranges(&[], &[NodeId(1)]) {
            engine.bootstrap_range(&d, &mut batch).unwrap();
        }
        engine.commit(batch).unwrap();
        let metrics = Arc::new(RaftMetrics::default());
        let given = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(given.clone()).start();
        // No tick within the test (a range alone elects itself at once): only the Store's
        // word can let a held batch go.
        let settings = RaftSettings {
            tick_interval: Duration::from_secs(3600),
            ..RaftSettings::default()
        };
        let net = LocalNetwork::new(1);
        let multiraft = MultiRaft::load(
            NodeId(1),
            engine,
            settings,
            sink.recipient(),
            Box::new(net.transport()),
            metrics.clone(),
            &StoreSettings::default(),
        )
        .unwrap()
        .start();
        let count = || given.lock().unwrap().len();
        let committed = |p: ProposalId| {
            given
                .lock()
                .unwrap()
                .iter()
                .flat_map(commits)
                .any(|c| c == p)
        };
        // The Store taking `n` batches in all, as its `Events` handler does, and saying so if
        // MultiRaft holds events back.
        let take = |n: usize| {
            metrics
                .event_batches_taken
                .store(n as u64, Ordering::SeqCst);
            if metrics.events_held.swap(false, Ordering::SeqCst) {
                multiraft.do_send(EventsTaken);
            }
        };

        // A Store that takes every batch at once.
        let first = propose(&multiraft, 1);
        assert!(
            until(|| {
                take(count());
                committed(first)
            })
            .await,
            "the first write was never handed over"
        );
        // Then one that has not taken the last batch yet.
        let before = count();
        take(before - 1);
        let second = propose(&multiraft, 2);
        assert!(
            until(|| metrics.events_held.load(Ordering::SeqCst)).await,
            "the commit of the second write was not held back"
        );
        assert_eq!(
            count(),
            before,
            "a batch went to a Store that had not taken the one before"
        );
        assert!(!committed(second));

        // The Store takes it: the held batch goes at once, with no tick to retry it.
        take(before);
        assert!(
            until(|| committed(second)).await,
            "the held batch did not go when the Store took the one before it"
        );
        System::current().stop();
    });
}
