//! `flotilla bench`: a load generator for any RESP2 server (flotilla or Redis), and
//! `flotilla bench report`: its results compared in a markdown table and an SVG chart.
//!
//! # How a load runs
//!
//! 1. **Fill.** When the mix reads, every key of the key space is first written once (batches
//!    of 64 pipelined `SET`s over `--connections` connections), so a `GET` finds a value. Not
//!    measured.
//! 2. **Warmup** for `--warmup` seconds: the load runs, nothing is recorded.
//! 3. **Measurement** for `--duration` seconds. Each connection loops: it encodes a batch of
//!    `--pipeline` requests (operations drawn from `--mix`, keys uniformly from `--keys`),
//!    writes the batch in one write, and reads until every reply of the batch is in. A
//!    request's latency runs from the write of its batch to the read that brought its reply,
//!    and goes into an HDR histogram. Batches written before the deadline are waited for;
//!    throughput is the replies of the batches written during the measurement divided by the
//!    time from its start to the last of those replies.
//!
//! Everything runs on one thread (a current-thread tokio runtime): the generator shares the
//! machine with the server under test and should take as little of it as it can.
//!
//! Error replies (`-BUSY`, `-TRYAGAIN`, ...) are counted as errors, not operations, and the
//! first one is kept. A `GET` of a missing key (`$-1`) is an operation, counted as a miss.
//!
//! # Keys
//!
//! `key:` and twelve digits, as `redis-benchmark -r` makes them. The `--keys` keys are spread
//! evenly over `key:000000000000` to `key:000000999999`, so that they straddle the split point
//! `key:000000500000` of flotilla's shipped configurations and fall into two ranges.

use bytes::{Buf, BytesMut};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `flotilla bench [load options]`, or `flotilla bench report FILE...`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub report: Option<BenchCommand>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Compare result files of `flotilla bench --json`: prints a markdown table (medians of the
    /// runs of each target under each load, and ratios to a baseline target) and can write an
    /// SVG bar chart.
    Report(ReportArgs),
}

/// What load to put on which server.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The server under test (flotilla, Redis, or any RESP2 server).
    #[arg(long, default_value = "127.0.0.1:6380")]
    pub addr: String,
    /// Connections, each with one batch of requests in flight at a time.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Requests per batch, written together in one write.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pipeline: u32,
    /// Bytes in each value written.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=64 << 20))]
    pub value_size: u32,
    /// Keys in the key space, chosen uniformly.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=KEY_SPAN))]
    pub keys: u64,
    /// Operations and their weights: `set`, `get`, or `set=1,get=9`.
    #[arg(long, default_value = "set")]
    pub mix: Mix,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub duration: f64,
    /// Seconds of load before the measurement, not recorded.
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub warmup: f64,
    /// Do not write every key before a mix that reads (its GETs may then find nothing).
    #[arg(long)]
    pub no_fill: bool,
    /// The target's name in the results (default: the address).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write the results to this file as JSON (for `flotilla bench report`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Result files written by `flotilla bench --json`; several runs of one target under one
    /// load are summed up by their medians.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The target (by name) the others are compared with under each load; default: the target
    /// of the first file.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Write an SVG bar chart of throughput and latency here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the table's medians here as tab-separated values, with a header line (for scripts).
    #[arg(long, value_name = "FILE")]
    pub tsv: Option<PathBuf>,
}

/// Key numbers are spread over `0..KEY_SPAN` (see the module documentation).
const KEY_SPAN: u64 = 1_000_000;
/// Requests per batch while filling the key space.
const FILL_BATCH: u64 = 64;
/// Latencies are recorded in nanoseconds, up to a minute, to three significant digits.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds")),
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match seconds(s)? {
        v if v > 0.0 => Ok(v),
        _ => Err("must be more than 0 seconds".to_string()),
    }
}

/// An operation the generator can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
}

impl Op {
    const ALL: [(Op, &'static str); 2] = [(Op::Set, "set"), (Op::Get, "get")];

    fn name(self) -> &'static str {
        match self {
            Op::Set => "SET",
            Op::Get => "GET",
        }
    }
}

/// The operations of a load and their weights, as given to `--mix`: `set`, `get`,
/// `set=1,get=9`. Each request is drawn independently with these odds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    /// The operation for a number drawn uniformly from `0..self.total`.
    fn pick(&self, mut n: u32) -> Op {
        for &(op, w) in &self.weights {
            if n < w {
                return op;
            }
            n -= w;
        }
        unreachable!("drawn past the mix's total weight")
    }

    fn reads(&self) -> bool {
        self.weights.iter().any(|&(op, _)| op == Op::Get)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        if s.trim().is_empty() {
            return Err("empty mix: give operations such as `set`, `get` or `set=1,get=9`".into());
        }
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in s.split(',') {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => (n.trim(), Some(w.trim())),
                None => (part.trim(), None),
            };
            let Some(&(op, _)) = Op::ALL
                .iter()
                .find(|(_, known)| known.eq_ignore_ascii_case(name))
            else {
                return Err(format!("unknown operation `{name}` (known: set, get)"));
            };
            let weight = match weight {
                None => 1,
                Some(w) => match w.parse::<u32>() {
                    Ok(w) if (1..=1_000_000).contains(&w) => w,
                    _ => {
                        return Err(format!(
                            "the weight of `{name}` must be a whole number from 1 to 1000000, not `{w}`"
                        ))
                    }
                },
            };
            if weights.iter().any(|&(o, _)| o == op) {
                return Err(format!("`{name}` appears twice"));
            }
            weights.push((op, weight));
        }
        let total = weights.iter().map(|&(_, w)| w).sum();
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(op, _)] = self.weights[..] {
            return f.write_str(op.name());
        }
        for (i, (op, w)) in self.weights.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}={w}", op.name())?;
        }
        Ok(())
    }
}

/// The parameters of a load, as recorded in its results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Load {
    pub mix: String,
    pub connections: u32,
    pub pipeline: u32,
    pub value_size: u32,
    pub keys: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
}

impl Load {
    /// What tells loads apart in a report: `SET c50 P16 100B`.
    pub fn label(&self) -> String {
        format!(
            "{} c{} P{} {}B",
            self.mix, self.connections, self.pipeline, self.value_size
        )
    }
}

/// Request latencies, in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one run of `flotilla bench` measured: the file `--json` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// The target's name (`--name`).
    pub name: String,
    pub addr: String,
    pub load: Load,
    /// Requests answered with anything but an error, during the measurement.
    pub ops: u64,
    /// Error replies during the measurement, and connections lost.
    pub errors: u64,
    /// GETs that found no value.
    pub misses: u64,
    pub first_error: Option<String>,
    /// From the start of the measurement to the last reply counted.
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
}

/// Runs `flotilla bench` or `flotilla bench report`.
pub fn main(args: &BenchArgs) -> ExitCode {
    let outcome = match &args.report {
        Some(BenchCommand::Report(report)) => run_report(report),
        None => run_load(&args.load),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flotilla bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_load(args: &LoadArgs) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let name = args.name.clone().unwrap_or_else(|| args.addr.clone());
    let load = Load {
        mix: args.mix.to_string(),
        connections: args.connections,
        pipeline: args.pipeline,
        value_size: args.value_size,
        keys: args.keys,
        duration_s: args.duration,
        warmup_s: args.warmup,
    };
    println!(
        "{name}: {}, {} connections, pipeline {}, {}-byte values, {} keys, {} s after {} s of warmup",
        load.mix, load.connections, load.pipeline, load.value_size, load.keys, load.duration_s,
        load.warmup_s
    );
    let requests = Requests::new(args.value_size as usize);
    let results = runtime.block_on(async {
        if args.mix.reads() && !args.no_fill {
            let started = Instant::now();
            fill(args, &requests).await?;
            println!(
                "  filled {} keys in {:.1} s",
                args.keys,
                started.elapsed().as_secs_f64()
            );
        }
        measure(args, &requests, name, load).await
    })?;
    print_results(&results);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results).expect("results serialize");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(if results.ops == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_results(r: &Results) {
    let l = &r.latency_ms;
    println!(
        "  {} ops/s ({} ops in {:.2} s), {} errors{}",
        thousands(r.ops_per_sec),
        thousands(r.ops as f64),
        r.elapsed_s,
        r.errors,
        if r.misses > 0 {
            format!(", {} GETs found nothing", r.misses)
        } else {
            String::new()
        }
    );
    println!(
        "  latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p99, l.p999, l.max, l.mean
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}

/// Encodes requests: `key:` and twelve digits, and the one value every SET writes.
struct Requests {
    /// `\r\n$<size>\r\n<value>\r\n`: what follows a SET's key.
    set_tail: Vec<u8>,
}

const SET_HEAD: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\n";
const GET_HEAD: &[u8] = b"*2\r\n$3\r\nGET\r\n$16\r\n";

impl Requests {
    fn new(value_size: usize) -> Requests {
        let mut set_tail = format!("\r\n${value_size}\r\n").into_bytes();
        set_tail.resize(set_tail.len() + value_size, b'x');
        set_tail.extend_from_slice(b"\r\n");
        Requests { set_tail }
    }

    fn push(&self, out: &mut Vec<u8>, op: Op, key_index: u64, keys: u64) {
        out.extend_from_slice(match op {
            Op::Set => SET_HEAD,
            Op::Get => GET_HEAD,
        });
        push_key(out, key_index * (KEY_SPAN / keys));
        match op {
            Op::Set => out.extend_from_slice(&self.set_tail),
            Op::Get => out.extend_from_slice(b"\r\n"),
        }
    }
}

/// Appends `key:` and `n` in twelve digits (16 bytes).
fn push_key(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [b'0'; 12];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(b"key:");
    out.extend_from_slice(&digits);
}

/// The kind of one reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Anything but an error or a null.
    Value,
    /// `$-1` or `*-1`.
    Null,
    /// `-...`; its text is the reply's first line.
    Error,
}

/// The length and kind of the first reply in `buf`; `Ok(None)` while it is incomplete.
fn parse_reply(buf: &[u8]) -> Result<Option<(usize, Reply)>, String> {
    reply_at(buf, 0)
}

fn reply_at(buf: &[u8], pos: usize) -> Result<Option<(usize, Reply)>, String> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let after_line = pos + nl + 1;
    let line = &buf[pos + 1..pos + nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let length = || {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| format!("bad length in reply: {:?}", line.escape_ascii().to_string()))
    };
    Ok(match kind {
        b'+' | b':' => Some((after_line, Reply::Value)),
        b'-' => Some((after_line, Reply::Error)),
        b'$' => match length()? {
            n if n < 0 => Some((after_line, Reply::Null)),
            n => {
                let end = after_line + n as usize + 2;
                (buf.len() >= end).then_some((end, Reply::Value))
            }
        },
        b'*' => match length()? {
            n if n < 0 => Some((after_line, Reply::Null)),
            n => {
                let mut end = after_line;
                for _ in 0..n {
                    match reply_at(buf, end)? {
                        Some((e, _)) => end = e,
                        None => return Ok(None),
                    }
                }
                Some((end, Reply::Value))
            }
        },
        other => {
            return Err(format!(
                "not a RESP2 reply: starts with {:?}",
                (other as char).escape_default().to_string()
            ))
        }
    })
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    Ok(stream)
}

/// Reads replies into `buf` until `count` of them are complete, calling `seen` with each and
/// the instant of the read that completed it.
async fn read_replies(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    count: u64,
    mut seen: impl FnMut(Reply, &[u8], Instant),
) -> Result<(), String> {
    let mut left = count;
    let mut now = Instant::now();
    loop {
        while left > 0 {
            let Some((len, reply)) = parse_reply(buf)? else {
                break;
            };
            seen(reply, &buf[..len], now);
            buf.advance(len);
            left -= 1;
        }
        if left == 0 {
            return Ok(());
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".to_string());
        }
        now = Instant::now();
    }
}

fn error_text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply.trim_ascii_end()).into_owned()
}

/// Writes every key once: connection `i` writes the keys `i`, `i + connections`, ...
async fn fill(args: &LoadArgs, requests: &Requests) -> Result<(), String> {
    let connections = u64::from(args.connections).min(args.keys);
    let fill_one = |first: u64| async move {
        let mut stream = connect(&args.addr).await?;
        let mut out = Vec::new();
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut key = first;
        while key < args.keys {
            out.clear();
            let mut batch = 0;
            while batch < FILL_BATCH && key < args.keys {
                requests.push(&mut out, Op::Set, key, args.keys);
                key += connections;
                batch += 1;
            }
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("writing: {e}"))?;
            let mut failed = None;
            read_replies(&mut stream, &mut buf, batch, |reply, bytes, _| {
                if reply == Reply::Error && failed.is_none() {
                    failed = Some(error_text(bytes));
                }
            })
            .await?;
            if let Some(e) = failed {
                return Err(format!("filling the key space: {e}"));
            }
        }
        Ok::<(), String>(())
    };
    let all = futures::future::join_all((0..connections).map(fill_one)).await;
    all.into_iter().collect()
}

/// When the phases of a load end.
struct Clock {
    measure_from: Instant,
    end: Instant,
}

/// What one connection measured.
struct Tally {
    latency_ns: Histogram<u64>,
    ops: u64,
    errors: u64,
    misses: u64,
    first_error: Option<String>,
    last_reply: Instant,
}

impl Tally {
    fn new(start: Instant) -> Tally {
        Tally {
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid histogram bounds"),
            ops: 0,
            errors: 0,
            misses: 0,
            first_error: None,
            last_reply: start,
        }
    }

    fn error(&mut self, text: String) {
        self.errors += 1;
        self.first_error.get_or_insert(text);
    }
}

/// Counts shared with the progress line.
#[derive(Default)]
struct Progress {
    ops: Cell<u64>,
    errors: Cell<u64>,
}

async fn run_connection(
    args: &LoadArgs,
    requests: &Requests,
    mut stream: TcpStream,
    seed: u64,
    clock: &Clock,
    progress: &Progress,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new(clock.measure_from);
    let mut out = Vec::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let pipeline = u64::from(args.pipeline);
    loop {
        if Instant::now() >= clock.end {
            return tally;
        }
        out.clear();
        for _ in 0..pipeline {
            let op = args.mix.pick(rng.gen_range(0..args.mix.total));
            requests.push(&mut out, op, rng.gen_range(0..args.keys), args.keys);
        }
        let written = Instant::now();
        let recorded = written >= clock.measure_from;
        if let Err(e) = stream.write_all(&out).await {
            tally.error(format!("writing: {e}"));
            return tally;
        }
        let read = read_replies(&mut stream, &mut buf, pipeline, |reply, bytes, at| {
            if !recorded {
                return;
            }
            match reply {
                Reply::Error => {
                    tally.error(error_text(bytes));
                    progress.errors.set(progress.errors.get() + 1);
                }
                Reply::Null | Reply::Value => {
                    if reply == Reply::Null {
                        tally.misses += 1;
                    }
                    tally.ops += 1;
                    let ns = at.duration_since(written).as_nanos() as u64;
                    tally.latency_ns.saturating_record(ns.max(1));
                    progress.ops.set(progress.ops.get() + 1);
                }
            }
            tally.last_reply = at;
        })
        .await;
        if let Err(e) = read {
            // The batch's requests have no known outcome: one error for the lost connection.
            tally.error(e);
            return tally;
        }
    }
}

async fn measure(
    args: &LoadArgs,
    requests: &Requests,
    name: String,
    load: Load,
) -> Result<Results, String> {
    let streams: Result<Vec<TcpStream>, String> =
        futures::future::join_all((0..args.connections).map(|_| connect(&args.addr)))
            .await
            .into_iter()
            .collect();
    let streams = streams?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let clock = Clock {
        measure_from,
        end: measure_from + Duration::from_secs_f64(args.duration),
    };
    let progress = Progress::default();
    let connections = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| run_connection(args, requests, s, i as u64, &clock, &progress));
    let tallies = tokio::select! {
        t = futures::future::join_all(connections) => t,
        _ = show_progress(&clock, start, &progress) => unreachable!("the progress line never ends"),
    };
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    let mut total = Tally::new(measure_from);
    for t in tallies {
        total
            .latency_ns
            .add(&t.latency_ns)
            .expect("histograms of equal bounds");
        total.ops += t.ops;
        total.errors += t.errors;
        total.misses += t.misses;
        total.last_reply = total.last_reply.max(t.last_reply);
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
    }
    let elapsed_s = total
        .last_reply
        .duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let ms = |ns: u64| ns as f64 / 1e6;
    let h = &total.latency_ns;
    Ok(Results {
        name,
        addr: args.addr.clone(),
        load,
        ops: total.ops,
        errors: total.errors,
        misses: total.misses,
        first_error: total.first_error,
        elapsed_s,
        ops_per_sec: total.ops as f64 / elapsed_s,
        latency_ms: Latency {
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        },
    })
}

/// Redraws a progress line on stderr while it is a terminal; otherwise waits forever.
async fn show_progress(clock: &Clock, start: Instant, progress: &Progress) {
    if !std::io::stderr().is_terminal() {
        return std::future::pending().await;
    }
    let total = clock.end.duration_since(start).as_secs_f64();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let done = ((now.duration_since(start).as_secs_f64() / total) * 30.0).min(30.0) as usize;
        let status = if now < clock.measure_from {
            "warming up".to_string()
        } else {
            let measured = now.duration_since(clock.measure_from).as_secs_f64();
            format!(
                "{:.1}/{:.1} s  {} ops/s  {} errors",
                measured.min(clock.end.duration_since(clock.measure_from).as_secs_f64()),
                clock.end.duration_since(clock.measure_from).as_secs_f64(),
                thousands(progress.ops.get() as f64 / measured.max(1e-3)),
                progress.errors.get()
            )
        };
        eprint!(
            "\r[{}{}] {status}\x1b[K",
            "#".repeat(done),
            " ".repeat(30 - done)
        );
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The medians of one target's runs under one load.
#[derive(Debug)]
struct Row {
    load: String,
    target: String,
    runs: usize,
    ops_per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Summed over the runs.
    errors: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row per (load, target), in the order they first appear in `results`.
fn rows(results: &[Results]) -> Vec<Row> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in results {
        let key = (r.load.label(), r.name.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    // Rows of one load together, loads in order of first appearance.
    let mut loads: Vec<String> = Vec::new();
    for (load, _) in &keys {
        if !loads.contains(load) {
            loads.push(load.clone());
        }
    }
    keys.sort_by_key(|(load, _)| loads.iter().position(|l| l == load));
    keys.into_iter()
        .map(|(load, target)| {
            let runs: Vec<&Results> = results
                .iter()
                .filter(|r| r.load.label() == load && r.name == target)
                .collect();
            let of = |f: fn(&Results) -> f64| median(runs.iter().map(|r| f(r)).collect());
            Row {
                runs: runs.len(),
                ops_per_sec: of(|r| r.ops_per_sec),
                p50: of(|r| r.latency_ms.p50),
                p99: of(|r| r.latency_ms.p99),
                p999: of(|r| r.latency_ms.p999),
                errors: runs.iter().map(|r| r.errors).sum(),
                load,
                target,
            }
        })
        .collect()
}

fn run_report(args: &ReportArgs) -> Result<ExitCode, String> {
    let mut results = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let r: Results = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not a result of `flotilla bench --json`: {e}",
                path.display()
            )
        })?;
        results.push(r);
    }
    let baseline = args
        .baseline
        .clone()
        .unwrap_or_else(|| results[0].name.clone());
    if !results.iter().any(|r| r.name == baseline) {
        return Err(format!("no result is named {baseline:?} (the baseline)"));
    }
    let rows = rows(&results);
    print!("{}", markdown(&rows, &baseline));
    if let Some(path) = &args.svg {
        write(path, &svg(&rows))?;
    }
    if let Some(path) = &args.tsv {
        write(path, &tsv(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `rows`' baseline row under the same load as `row`.
fn baseline_of<'a>(rows: &'a [Row], row: &Row, baseline: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.load == row.load && r.target == baseline)
}

fn markdown(rows: &[Row], baseline: &str) -> String {
    let mut out = format!(
        "| load | target | runs | ops/s | p50 ms | p99 ms | p999 ms | errors | ops/s ÷ {baseline} | p50 ÷ {baseline} |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in rows {
        let (ops_ratio, p50_ratio) = match baseline_of(rows, r, baseline) {
            Some(b) => (
                format!("{:.2}×", r.ops_per_sec / b.ops_per_sec),
                format!("{:.2}×", r.p50 / b.p50),
            ),
            None => ("–".to_string(), "–".to_string()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {ops_ratio} | {p50_ratio} |\n",
            r.load,
            r.target,
            r.runs,
            thousands(r.ops_per_sec),
            r.p50,
            r.p99,
            r.p999,
            r.errors
        ));
    }
    out
}

fn tsv(rows: &[Row]) -> String {
    let mut out = "load\ttarget\truns\tops_per_sec\tp50_ms\tp99_ms\tp999_ms\terrors\n".to_string();
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{:.1}\t{:.4}\t{:.4}\t{:.4}\t{}\n",
            r.load, r.target, r.runs, r.ops_per_sec, r.p50, r.p99, r.p999, r.errors
        ));
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Two columns of horizontal bars, one group per load: throughput, and p50 latency with a
/// tick at p99. Bars are scaled within their load; each target keeps its colour.
fn svg(rows: &[Row]) -> String {
    const PALETTE: [&str; 7] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f",
    ];
    const WIDTH: f64 = 980.0;
    const LABEL_END: f64 = 200.0;
    const OPS_X: f64 = 210.0;
    const OPS_W: f64 = 260.0;
    const LAT_X: f64 = 590.0;
    const LAT_W: f64 = 230.0;
    const ROW_H: f64 = 22.0;
    const GROUP_GAP: f64 = 30.0;
    let mut targets: Vec<&str> = Vec::new();
    let mut loads: Vec<&str> = Vec::new();
    for r in rows {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
        if !loads.contains(&r.load.as_str()) {
            loads.push(&r.load);
        }
    }
    let colour = |target: &str| {
        PALETTE[targets.iter().position(|t| *t == target).unwrap_or(0) % PALETTE.len()]
    };
    let height = 70.0 + loads.len() as f64 * GROUP_GAP + rows.len() as f64 * ROW_H + 10.0;
    let mut body = String::new();
    let mut y = 70.0;
    for load in &loads {
        let group: Vec<&Row> = rows.iter().filter(|r| r.load == *load).collect();
        let max_ops = group.iter().map(|r| r.ops_per_sec).fold(0.0, f64::max);
        let max_lat = group.iter().map(|r| r.p99).fold(0.0, f64::max);
        y += GROUP_GAP;
        body.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>\n",
            y - 8.0,
            xml_escape(load)
        ));
        for r in group {
            let c = colour(&r.target);
            let ops_w = if max_ops > 0.0 {
                r.ops_per_sec / max_ops * OPS_W
            } else {
                0.0
            };
            let (p50_w, p99_x) = if max_lat > 0.0 {
                (r.p50 / max_lat * LAT_W, LAT_X + r.p99 / max_lat * LAT_W)
            } else {
                (0.0, LAT_X)
            };
            body.push_str(&format!(
                "<text x=\"{LABEL_END}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{OPS_X}\" y=\"{:.0}\" width=\"{ops_w:.1}\" height=\"14\" fill=\"{c}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n\
                 <rect x=\"{LAT_X}\" y=\"{:.0}\" width=\"{p50_w:.1}\" height=\"14\" fill=\"{c}\"/>\n\
                 <line x1=\"{p99_x:.1}\" x2=\"{p99_x:.1}\" y1=\"{:.0}\" y2=\"{:.0}\" stroke=\"#333\" stroke-width=\"2\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{:.3} / {:.3}</text>\n",
                y + 11.0,
                xml_escape(&r.target),
                y,
                OPS_X + ops_w + 4.0,
                y + 11.0,
                thousands(r.ops_per_sec),
                y,
                y - 2.0,
                y + 16.0,
                p99_x.max(LAT_X + p50_w) + 4.0,
                y + 11.0,
                r.p50,
                r.p99,
            ));
            y += ROW_H;
        }
    }
    let runs = {
        let (lo, hi) = rows.iter().fold((usize::MAX, 0), |(lo, hi), r| {
            (lo.min(r.runs), hi.max(r.runs))
        });
        if lo == hi {
            format!("medians of {lo} run{}", if lo == 1 { "" } else { "s" })
        } else {
            format!("medians of {lo} to {hi} runs")
        }
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">flotilla bench: {runs}</text>\n\
         <text x=\"{OPS_X}\" y=\"56\" font-weight=\"bold\">throughput, ops/s</text>\n\
         <text x=\"{LAT_X}\" y=\"56\" font-weight=\"bold\">latency ms: bar p50, tick p99</text>\n\
         <text x=\"{:.0}\" y=\"24\" text-anchor=\"end\" fill=\"#666\">bars are scaled within each load</text>\n\
         {body}</svg>\n",
        WIDTH - 10.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_with_weights_and_print_back() {
        let set: Mix = "set".parse().unwrap();
        assert_eq!(set.weights, vec![(Op::Set, 1)]);
        assert_eq!(set.to_string(), "SET");
        let mixed: Mix = " SET = 1 , get=9".parse().unwrap();
        assert_eq!(mixed.weights, vec![(Op::Set, 1), (Op::Get, 9)]);
        assert_eq!(mixed.total, 10);
        assert_eq!(mixed.to_string(), "SET=1,GET=9");
        assert!(mixed.reads() && !set.reads());
        let picks: Vec<Op> = (0..10).map(|n| mixed.pick(n)).collect();
        assert_eq!(picks[0], Op::Set);
        assert!(picks[1..].iter().all(|&op| op == Op::Get));
    }

    #[test]
    fn malformed_mixes_are_refused_with_the_reason() {
        let err = |s: &str| s.parse::<Mix>().unwrap_err();
        assert!(err("").contains("empty mix"));
        assert_eq!(err("set,del"), "unknown operation `del` (known: set, get)");
        assert!(err("set=x").contains("the weight of `set` must be a whole number"));
        assert!(err("get=0").contains("not `0`"));
        assert!(err("set=1,").contains("unknown operation ``"));
        assert_eq!(err("set,SET=2"), "`SET` appears twice");
    }

    #[test]
    fn keys_are_spread_over_the_key_span() {
        let r = Requests::new(3);
        let mut out = Vec::new();
        r.push(&mut out, Op::Get, 7, 100_000);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000070\r\n");
        out.clear();
        r.push(&mut out, Op::Set, 99_999, 100_000);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000999990\r\n$3\r\nxxx\r\n"
        );
    }

    #[test]
    fn replies_are_framed_whole_or_not_at_all() {
        assert_eq!(parse_reply(b"+OK\r\n"), Ok(Some((5, Reply::Value))));
        assert_eq!(parse_reply(b"+OK\r"), Ok(None));
        assert_eq!(parse_reply(b"-BUSY x\r\n+OK"), Ok(Some((9, Reply::Error))));
        assert_eq!(parse_reply(b"$-1\r\n"), Ok(Some((5, Reply::Null))));
        assert_eq!(parse_reply(b"$3\r\nab"), Ok(None));
        assert_eq!(parse_reply(b"$3\r\nabc\r\n"), Ok(Some((9, Reply::Value))));
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n$-1\r\n"),
            Ok(Some((13, Reply::Value)))
        );
        assert_eq!(parse_reply(b"*2\r\n:1\r\n"), Ok(None));
        assert!(parse_reply(b"?\r\n").is_err());
        assert!(parse_reply(b"$x\r\n").is_err());
    }

    #[test]
    fn medians_group_runs_by_load_and_target() {
        let result = |name: &str, pipeline, ops_per_sec, p50| Results {
            name: name.to_string(),
            addr: String::new(),
            load: Load {
                mix: "SET".into(),
                connections: 1,
                pipeline,
                value_size: 100,
                keys: 10,
                duration_s: 1.0,
                warmup_s: 0.0,
            },
            ops: 1,
            errors: 1,
            misses: 0,
            first_error: None,
            elapsed_s: 1.0,
            ops_per_sec,
            latency_ms: Latency {
                mean: p50,
                p50,
                p99: p50,
                p999: p50,
                max: p50,
            },
        };
        let rows = rows(&[
            result("a", 1, 10.0, 1.0),
            result("b", 16, 5.0, 4.0),
            result("a", 1, 30.0, 3.0),
            result("b", 1, 40.0, 2.0),
            result("a", 1, 20.0, 2.0),
        ]);
        let got: Vec<(&str, &str, usize, f64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.load.as_str(),
                    r.target.as_str(),
                    r.runs,
                    r.ops_per_sec,
                    r.errors,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("SET c1 P1 100B", "a", 3, 20.0, 3),
                ("SET c1 P1 100B", "b", 1, 40.0, 1),
                ("SET c1 P16 100B", "b", 1, 5.0, 1),
            ]
        );
        let table = markdown(&rows, "a");
        assert!(
            table.contains("| SET c1 P1 100B | b | 1 | 40 | 2.000 |"),
            "{table}"
        );
        assert!(table.contains("| 2.00× | 1.00× |"), "{table}");
        assert!(
            table.contains("| SET c1 P16 100B | b | 1 | 5 | 4.000 | 4.000 | 4.000 | 1 | – | – |")
        );
        assert!(svg(&rows).starts_with("<svg"));
    }
}
