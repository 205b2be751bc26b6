//! Ranges split as they grow (CockroachDB's `range_max_bytes`, TiKV's split checker).
//!
//! A range is one raft group: a snapshot of it carries all its data (a node cannot send one
//! over 1 GiB), and all its writes go through one leader. So a range whose keys and values
//! take more than `StoreSettings::range_max_bytes` is split in two, by the node that leads it,
//! with the same `Command::Split` as `FLOTILLA SPLIT`.
//!
//! sled cannot tell what a span of keys takes without reading it, so a range is measured by
//! reading it ([`Engine::split_points`], on a thread of its own), and only when it may be past
//! the bound. Every replica counts the bytes of keys and values applied to each range
//! (`RangeState::grown`: an overwrite or a delete counts as growth, so this is more than the
//! range grew). The leader's node measures:
//!
//! - a range whose last measure plus that count passes the bound, the count being at least a
//!   sixteenth of it (a split leaves the left half's measure as it was, more than it holds);
//! - a range this node has not measured since it started, when it is written: a range past
//!   the bound that nobody writes is not looked at;
//! - a range split off, at once.
//!
//! A measure reads no more than four times the bound, and cuts what it read into pieces of
//! half the bound or more, a key of half the bound or more starting a piece of its own, and
//! keys sharing a hash tag ([`crate::storage::hash_tag`]) never parted; the splits are
//! proposed together, from the last key to the first. What lies past the last cut
//! of a range not read to its end is measured as soon as it is split off, so a range far past
//! the bound is cut up about three and a half bounds' worth a second until every piece is
//! within it (a range written faster than that outgrows its measures).
//!
//! A range is measured at most once every [`MEASURE_AT_MOST_EVERY`], unless its last measure
//! and the count since reach twice the bound and it could be cut then. So a range that
//! hovers at the bound under a load that overwrites its keys, or that cannot be cut (a single
//! key), costs at most one read of it every 10 s, or a byte read per byte written.

use super::*;

/// How often a Store looks for the ranges to measure.
pub(super) const SIZE_EVERY: Duration = Duration::from_secs(1);

/// The least time between two measures of a range.
const MEASURE_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// A range to measure, on the sizer thread.
pub(super) struct SizeJob {
    range: RangeId,
    start: Vec<u8>,
    end: Vec<u8>,
    max_bytes: u64,
}

impl SizeJob {
    fn run(&self, engine: &Engine) -> Result<(u64, Vec<Vec<u8>>), String> {
        let (start, end) = (&self.start, &self.end);
        (engine.split_points(start, end, self.max_bytes, MAX_SPLIT_KEY_BYTES))
            .map_err(|e| e.to_string())
    }
}

/// What the sizer thread found: the bytes a range takes (as far as it read), and where to
/// cut it, if anywhere.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Sized {
    job: SizeJob,
    measured: Result<(u64, Vec<Vec<u8>>), String>,
}

/// The sizer thread: measures ranges one at a time, in the order asked.
pub(super) fn size_in_order(
    engine: &Engine,
    jobs: std::sync::mpsc::Receiver<SizeJob>,
    store: &Addr<Store>,
    alive: &std::sync::Weak<()>,
) {
    for job in jobs {
        if alive.strong_count() == 0 {
            continue;
        }
        let began = std::time::Instant::now();
        let measured = job.run(engine);
        log::debug!("{}: measured in {:?}", job.range, began.elapsed());
        store.do_send(Sized { job, measured });
    }
}

impl Store {
    /// Counts `bytes` applied to `range`, which then may be due a measure if led here.
    pub(super) fn grew(&mut self, range: RangeId, bytes: u64) {
        let max = self.settings.range_max_bytes;
        if let Some(r) = self.ranges.get_mut(&range) {
            r.grown += bytes;
            let past = |size| size + r.grown > max && r.grown >= max / 16;
            if r.leader == Some(self.node) && r.size.is_none_or(past) {
                self.to_size.insert(range);
            }
        }
    }

    /// Measures the ranges that may be past `range_max_bytes` and are led here; the leader of
    /// the others measures them, and one with no leader yet waits for one.
    pub(super) fn measure(&mut self, ctx: &mut Context<Self>) {
        let (now, max) = (Instant::now(), self.settings.range_max_bytes);
        for range in std::mem::take(&mut self.to_size) {
            let Some(r) = self.ranges.get_mut(&range) else {
                continue;
            };
            let recent = r
                .measured_at
                .is_some_and(|at| now < at + MEASURE_AT_MOST_EVERY);
            let twice = !r.indivisible && r.size.is_some_and(|size| size + r.grown >= 2 * max);
            if r.leader.is_none() || (recent && !twice) || self.sizing.contains(&range) {
                self.to_size.insert(range);
                continue;
            }
            if r.leader != Some(self.node) {
                continue;
            }
            r.measured_at = Some(now);
            self.sizing.insert(range);
            let job = SizeJob {
                range,
                start: r.descriptor.start_key.clone(),
                end: r.descriptor.end_key.clone(),
                max_bytes: max,
            };
            match &self.sizer {
                Some(sizer) => {
                    if sizer.send(job).is_err() {
                        self.sizing.remove(&range);
                    }
                }
                None => {
                    let measured = job.run(&self.engine);
                    self.sized(Sized { job, measured }, ctx);
                }
            }
        }
    }

    /// Records a measure, and proposes the splits it found if the range still has the span
    /// measured and is led here.
    fn sized(&mut self, msg: Sized, ctx: &mut Context<Self>) {
        let Sized { job, measured } = msg;
        let SizeJob {
            range, start, end, ..
        } = job;
        let (node, max) = (self.node, self.settings.range_max_bytes);
        self.sizing.remove(&range);
        let Some(r) = self.ranges.get_mut(&range) else {
            return;
        };
        let same = r.descriptor.start_key == start && r.descriptor.end_key == end;
        let cuts = match measured {
            Ok((bytes, cuts)) if same => {
                log::debug!(
                    "{node}: {range} measured: {bytes} bytes, {} cuts",
                    cuts.len()
                );
                (r.size, r.grown) = (Some(bytes), 0);
                r.indivisible = bytes > max && cuts.is_empty();
                if r.leader == Some(node) {
                    cuts
                } else {
                    Vec::new()
                }
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                log::error!("{node}: {range}: measuring its data: {e}");
                Vec::new()
            }
        };
        if cuts.is_empty() {
            return;
        }
        let keys: Vec<String> = (cuts.iter())
            .map(|k| format!("{:?}", String::from_utf8_lossy(k)))
            .collect();
        let proposed = match self.propose_splits(range, cuts) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{node}: {range} not split: {e}");
                return;
            }
        };
        // Until the splits are answered.
        self.sizing.insert(range);
        let ids: Vec<String> = proposed.iter().map(|(id, _)| id.to_string()).collect();
        log::info!(
            "{node}: {range} holds more than {max} bytes: splitting it at {} ({})",
            keys.join(", "),
            ids.join(", "),
        );
        let answers = async move {
            let mut failed = None;
            for (_, rx) in proposed {
                if let Err(e) = outcome(rx).await {
                    failed.get_or_insert(e);
                }
            }
            failed
        };
        ctx.spawn(answers.into_actor(self).map(move |failed, s, _| {
            s.sizing.remove(&range);
            if let Some(e) = failed {
                log::warn!("{}: {range}: a split failed: {e}", s.node);
                s.to_size.insert(range);
            }
        }));
    }
}

impl Handler<Sized> for Store {
    type Result = ();
    fn handle(&mut self, msg: Sized, ctx: &mut Context<Self>) {
        self.sized(msg, ctx);
    }
}
