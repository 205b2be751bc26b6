//! Ranges split as they grow (CockroachDB's `range_max_bytes`, TiKV's split checker).
//!
//! A range is one raft group: a snapshot of it carries all its data (a node cannot send one
//! over 1 GiB), and all its writes go through one leader. So a range whose keys and values
//! take more than `StoreSettings::range_max_bytes` is split in two, by the node that leads it,
//! with the same `Command::Split` as `FLOTILLA SPLIT`.
//!
//! sled cannot tell what a span of keys takes without reading it, so a range is measured by
//! reading it ([`Engine::split_points`], on a thread of its own), and only when it may be past
//! the bound. Each range's size is part of its applied state ([`RangeSize`], stored with its
//! applied index): the last measure, which its leader proposes as a [`Command::Measured`] for
//! every replica to take, and the bytes of keys and values applied since (an overwrite or a
//! delete counts as growth, so this is more than the range grew). A new range takes 0 bytes,
//! a `FLUSHDB` leaves 0, a snapshot installed what it held, and the size of a range split off
//! is not known until it is measured (what is applied to it meanwhile counts all the same, as
//! grown since: its measure may be taken while it is written). So a node that starts again,
//! or that becomes a range's leader, knows its size without reading it (CockroachDB keeps its
//! ranges' `MVCCStats` the same way). The leader's node measures:
//!
//! - a range whose size passes the bound, the bytes applied since its last measure being at
//!   least a sixteenth of it;
//! - a range split off, at once;
//! - a range whose size is past the bound or not known (split off and not measured before its
//!   leader changed, or of a data directory of format 2) when this node becomes its leader (or
//!   starts), if this node has not measured it since it started: so a range past a bound
//!   lowered since is split though nobody writes it.
//!
//! A measure that finds where to cut proposes the splits, then the size of what stays left of
//! the first cut (taken only if the range ends there by then: see [`Command::Measured`]).
//! A measure reads sled once everything the Store had applied when it was asked for is
//! written there (not while a `FLUSHDB`'s keys are being deleted), and what is applied after
//! that counts as grown since (some of it may have been read too: counted twice, more than
//! the range holds). The keys of a hash tag a measure passes over unread are not counted.
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
use crate::storage::Measure;

/// How often a Store looks for the ranges to measure.
pub(super) const SIZE_EVERY: Duration = Duration::from_secs(1);

/// The least time between two measures of a range.
const MEASURE_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// A range to measure, on the sizer thread.
pub(super) struct SizeJob {
    pub(super) range: RangeId,
    start: Vec<u8>,
    end: Vec<u8>,
    max_bytes: u64,
    /// The range's bytes applied since its last measure when this one was asked for (see
    /// [`Command::Measured`]).
    grown: u64,
}

impl SizeJob {
    pub(super) fn run(&self, engine: &Engine) -> Result<Measure, String> {
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
    measured: Result<Measure, String>,
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

/// Whether `r` is to be measured, with a bound of `max` bytes: a range whose size is not
/// known, or past the bound, with at least a sixteenth of it applied since its last measure
/// unless it was never measured here.
fn due(r: &RangeState, max: u64) -> bool {
    let unmeasured = r.measured_at.is_none();
    let grown = r.size.grown >= max / 16;
    (r.size.bytes()).is_none_or(|bytes| bytes > max && (unmeasured || grown))
}

impl Store {
    /// Counts `bytes` applied to `range`, which then may be due a measure if led here.
    pub(super) fn grew(&mut self, range: RangeId, bytes: u64) {
        let max = self.settings.range_max_bytes;
        if let Some(r) = self.ranges.get_mut(&range) {
            r.size.grown += bytes;
            if r.leader == Some(self.node) && due(r, max) {
                self.to_size.insert(range);
            }
        }
    }

    /// Notes that this node now leads `range`: measured, even if nobody writes it, if its size
    /// is past the bound (a bound lowered since it was measured, or a range that cannot be
    /// cut) or not known (split off and not measured before its leader changed, or of a data
    /// directory of format 2), and this node has not measured it since it started.
    pub(super) fn leading(&mut self, range: RangeId) {
        let max = self.settings.range_max_bytes;
        if let Some(r) = self.ranges.get(&range) {
            if r.size.bytes().is_none_or(|bytes| bytes > max) && due(r, max) {
                self.to_size.insert(range);
            }
        }
    }

    /// Applies a [`Command::Measured`] to `range`: its size becomes `bytes`, and what was
    /// applied to it since the measure was asked for past `grown`, unless the range ends past
    /// `end`.
    pub(super) fn measured(&mut self, range: RangeId, end: &[u8], bytes: u64, grown: u64) {
        let Some(r) = self.ranges.get_mut(&range) else {
            return;
        };
        // Measured as far as `end`: taken if the range ends there or before (split since).
        let range_end = &r.descriptor.end_key;
        if end.is_empty() || (!range_end.is_empty() && range_end.as_slice() <= end) {
            r.size = RangeSize {
                measured: Some(bytes),
                grown: r.size.grown.saturating_sub(grown),
            };
        }
    }

    /// Measures the ranges that may be past `range_max_bytes` and are led here; the leader of
    /// the others measures them, and one with no leader yet waits for one. Not while a
    /// `FLUSHDB`'s keys are being deleted: a measure reads sled once everything applied when
    /// it was asked for is written, which would wait for the deletion, and the Store does not
    /// hand the writer more meanwhile (see [`Store::hand_over_unwritten`]).
    pub(super) fn measure(&mut self, ctx: &mut Context<Self>) {
        if self.clearing() {
            return;
        }
        let (now, max) = (Instant::now(), self.settings.range_max_bytes);
        let mut jobs = Vec::new();
        for range in std::mem::take(&mut self.to_size) {
            let Some(r) = self.ranges.get_mut(&range) else {
                continue;
            };
            if !due(r, max) {
                // Measured since it was due.
                continue;
            }
            let recent = r
                .measured_at
                .is_some_and(|at| now < at + MEASURE_AT_MOST_EVERY);
            let twice = !r.indivisible && r.size.bytes().is_some_and(|b| b >= 2 * max);
            if r.leader.is_none() || (recent && !twice) || self.sizing.contains(&range) {
                self.to_size.insert(range);
                continue;
            }
            if r.leader != Some(self.node) {
                continue;
            }
            r.measured_at = Some(now);
            self.sizing.insert(range);
            jobs.push(SizeJob {
                range,
                start: r.descriptor.start_key.clone(),
                end: r.descriptor.end_key.clone(),
                max_bytes: max,
                grown: r.size.grown,
            });
        }
        if jobs.is_empty() {
            return;
        }
        // Read once everything applied so far is in sled: at once, or once the writer has
        // written the batches it holds (see `measures_after`).
        self.hand_over_now();
        if self.in_flight.is_empty() {
            jobs.into_iter()
                .for_each(|job| self.start_measure(job, ctx));
        } else {
            let seq = self.handed_writes;
            self.measures_after
                .extend(jobs.into_iter().map(|job| (seq, job)));
        }
    }

    /// Starts the measures that waited for the writer to write batch `seq` (see `measure`).
    pub(super) fn written_for_measures(&mut self, seq: u64, ctx: &mut Context<Self>) {
        while self.measures_after.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, job) = self.measures_after.pop_front().expect("just seen");
            self.start_measure(job, ctx);
        }
    }

    /// Measures a range, on the sizer thread if there is one.
    fn start_measure(&mut self, job: SizeJob, ctx: &mut Context<Self>) {
        match &self.sizer {
            Some(sizer) => {
                let range = job.range;
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

    /// Records a measure, and proposes the splits it found if the range still has the span
    /// measured and is led here.
    fn sized(&mut self, msg: Sized, ctx: &mut Context<Self>) {
        let Sized { job, measured } = msg;
        let SizeJob {
            range,
            start,
            end,
            grown,
            ..
        } = job;
        let (node, max) = (self.node, self.settings.range_max_bytes);
        self.sizing.remove(&range);
        let Some(r) = self.ranges.get_mut(&range) else {
            return;
        };
        let same = r.descriptor.start_key == start && r.descriptor.end_key == end;
        let measure = match measured {
            Ok(m) if same => m,
            Ok(_) => return,
            Err(e) => {
                log::error!("{node}: {range}: measuring its data: {e}");
                return;
            }
        };
        let Measure { bytes, cuts, first } = measure;
        log::debug!(
            "{node}: {range} measured: {bytes} bytes, {} cuts",
            cuts.len()
        );
        self.ranges_measured += 1;
        r.indivisible = bytes > max && cuts.is_empty();
        if r.leader != Some(node) {
            return;
        }
        // After the splits, if any: the size of what they leave the range.
        let end = cuts.first().cloned().unwrap_or(end);
        let size = Command::Measured {
            end,
            bytes: first,
            grown,
        };
        if cuts.is_empty() {
            self.propose_measured(range, size);
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
        self.propose_measured(range, size);
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
                // Its measure is not taken where the first split failed: measured again.
                if let Some(r) = s.ranges.get_mut(&range) {
                    r.measured_at = None;
                }
                s.to_size.insert(range);
            }
        }));
    }

    /// Proposes a [`Command::Measured`]; nobody waits for its answer.
    fn propose_measured(&mut self, range: RangeId, measured: Command) {
        let (tx, _) = oneshot::channel();
        let payload = ProposalPayload::Command(codec::encode(&measured));
        let deadline = Instant::now() + self.settings.admin_timeout;
        self.propose(range, payload, Waiter::Write(WriteSlot::with(tx)), deadline);
    }
}

impl Handler<Sized> for Store {
    type Result = ();
    fn handle(&mut self, msg: Sized, ctx: &mut Context<Self>) {
        self.sized(msg, ctx);
    }
}
