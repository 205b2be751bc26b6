//! The deterministic simulation: a fixed set of seeds finds no violation, and a seed replays
//! the same history byte for byte.

use std::time::Duration;

#[test]
fn a_fixed_set_of_seeds_finds_no_violation() {
    // 68269: two nodes restarted at once, whose raft logs once shared file numbers and so
    // raft-engine's per-thread block cache (see `sim::number_log_files`), with the clients of
    // then. 90021, for 60 s: a leader applies its own removal with one voter left, and stays
    // until that voter has applied it too (see `Handler<ChangeApplied>` in multiraft.rs);
    // seed 90001 had it strand a range before that, with the clients before key expiry.
    // 421374: a membership change forwarded to a leader that could not be reached, which a
    // first version of waiting for the next leader proposed again as a command (every node
    // stopped at the entry it could not decode).
    let seeds = [
        (1, 10),
        (2, 10),
        (3, 10),
        (4, 10),
        (68269, 10),
        (90021, 60),
        (421374, 10),
    ];
    for (seed, seconds) in seeds {
        let r = flotilla::sim::run(seed, Duration::from_secs(seconds));
        println!(
            "seed {seed}: {} nodes, {} operations ({} unknown), faults {:?}",
            r.nodes, r.operations, r.unknown, r.faults
        );
        assert!(
            r.operations > 200,
            "seed {seed}: only {} operations",
            r.operations
        );
        assert!(r.faults.values().sum::<u64>() > 5);
        assert!(
            r.inconclusive.is_empty(),
            "seed {seed}: {:?} inconclusive",
            r.inconclusive
        );
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:?}\nreplay: flotilla sim --seed {seed} --seeds 1 --duration {seconds}",
            r.violations
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let a = flotilla::sim::run(7, Duration::from_secs(8));
    let b = flotilla::sim::run(7, Duration::from_secs(8));
    assert!(a.operations > 100);
    assert!(a.faults.values().sum::<u64>() > 5);
    if a.history != b.history {
        let first = a
            .history
            .lines()
            .zip(b.history.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        panic!(
            "seed 7 did not replay the same history; first difference at line {first}:\n{:?}\n{:?}",
            a.history.lines().nth(first),
            b.history.lines().nth(first)
        );
    }
    let c = flotilla::sim::run(8, Duration::from_secs(8));
    assert!(a.history != c.history, "another seed, the same history");
}

/// The first seed (of at most `seeds`) on which the simulation finds a violation.
fn caught_within(seeds: u64, bugs: flotilla_actors::store::PlantedBugs) -> Option<(u64, String)> {
    (1..=seeds).find_map(|seed| {
        let r = flotilla::sim::run_with_bugs(seed, Duration::from_secs(5), bugs);
        r.violations.first().map(|v| (seed, v.clone()))
    })
}

#[test]
fn answering_before_commit_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        answer_before_commit: true,
        ..Default::default()
    };
    let (seed, violation) = caught_within(5, bugs).expect("the planted bug went unnoticed");
    println!("answer before commit: caught on seed {seed}: {violation}");
}

#[test]
fn reading_without_a_read_index_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        reads_without_read_index: true,
        ..Default::default()
    };
    let (seed, violation) = caught_within(5, bugs).expect("the planted bug went unnoticed");
    println!("reads without read index: caught on seed {seed}: {violation}");
}

/// Whether a value has expired must be decided alike on every replica: by the time a command
/// was proposed at, carried in its entry. Replicas that decide by their own clock when they
/// apply it part ways (one increments a counter another found expired).
#[test]
fn deciding_expiry_at_apply_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        expiry_decided_at_apply: true,
        ..Default::default()
    };
    let (seed, violation) = caught_within(10, bugs).expect("the planted bug went unnoticed");
    println!("expiry decided at apply: caught on seed {seed}: {violation}");
}

/// `FLUSHDB` must delete what a replica applied and has not written to sled yet too: one that
/// leaves the values not yet handed to its writer leaves a replica with keys another deleted
/// (each replica hands its batches over at times of its own).
#[test]
fn a_flush_that_misses_unwritten_keys_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        flush_misses_unwritten: true,
        ..Default::default()
    };
    let (seed, violation) = caught_within(5, bugs).expect("the planted bug went unnoticed");
    println!("flush missing unwritten keys: caught on seed {seed}: {violation}");
}

/// Snapshots are built while writes go on (as on the builder thread), so one that does not put
/// back the values its range had at its index carries later writes, and a replica that installs
/// it applies them again (an `INCR` twice).
#[test]
fn a_snapshot_holding_writes_after_its_index_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        snapshots_without_kept_values: true,
        ..Default::default()
    };
    // Caught on 5 seeds of the first 60, of 10 s each (a replica's data differs from another's
    // at the same applied index, or a key's history breaks): 7, 24, 39, 51 and 59 (5, 7, 51
    // and 52 before the clients' GETSET and APPEND moved the simulation's choices). The search
    // stops at the first; it goes that far so that a change which moves the simulation's
    // choices still finds one (about 7% a seed: missed in 60 seeds about once in 60 changes,
    // where 8 seeds missed it half the time).
    let (seed, violation) = (1..=60)
        .find_map(|seed| {
            let r = flotilla::sim::run_with_bugs(seed, Duration::from_secs(10), bugs);
            r.violations.first().map(|v| (seed, v.clone()))
        })
        .expect("the planted bug went unnoticed");
    println!("snapshots without kept values: caught on seed {seed}: {violation}");
}

/// Half the simulation's crashes are power failures, which lose a node's sled writes since its
/// last sync: the raft log must still hold every entry they applied. A node whose log
/// compactions do not sync sled first is caught (raft refuses the restarted node's applied
/// index, which its log no longer reaches): on 13 of the first 40 seeds of 5 s, and on none of
/// them when every crash keeps sled's writes.
#[test]
fn compacting_the_log_before_sled_is_durable_is_caught() {
    let bugs = flotilla_actors::store::PlantedBugs {
        compaction_without_data_sync: true,
        ..Default::default()
    };
    let (seed, violation) = caught_within(20, bugs).expect("the planted bug went unnoticed");
    println!("compaction without data sync: caught on seed {seed}: {violation}");
}
