#!/usr/bin/env bash
# The performance targets of issue 5, measured on loopback with `flotilla bench`.
#
# Each run starts, loads and stops, in turn: flotilla on one node; the three-node cluster of
# config/cluster/ (ports and data directories rewritten, every range's leadership moved to
# node 1, loaded through node 1); and
# redis-server with appendonly yes, appendfsync always (the baseline). Every server starts
# empty in a temporary directory. After the cluster's loads, the node leading the range of key
# "k" is killed with SIGKILL and the time until a write through another node is answered OK
# again is measured. At the end it prints the medians of the runs with their ratios to Redis,
# the targets, and writes the results (one JSON per run and load, table.md, targets.md,
# medians.tsv, bench.svg) to the results directory.
#
#   scripts/bench.sh [--runs N] [--duration S] [--warmup S] [--keys N] [--results DIR]
#                    [--port-base P] [--no-build]
#
#   --runs N        rounds of all three servers (default 3, or $RUNS)
#   --duration S    seconds measured per load (default 10, or $DURATION)
#   --warmup S      seconds of load before each measurement (default 1, or $WARMUP)
#   --keys N        key space of every load (default 100000)
#   --results DIR   where the results go (default: a new temporary directory, printed)
#   --port-base P   ports used: P (one node), P+1..P+3 (cluster clients), P+9 (Redis),
#                   P+11..P+14 (cluster raft); default 26380
#   --no-build      use target/release/flotilla as it is instead of building it first
#
# A quick check that everything works: scripts/bench.sh --runs 1 --duration 3
# Needs redis-server and redis-cli (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
KEYS=100000
RESULTS=""
BASE=26380
BUILD=1
usage() { sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; }
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --port-base) BASE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

for tool in redis-server redis-cli; do
  if ! command -v "$tool" > /dev/null; then
    echo "bench.sh: $tool not found. Redis with appendfsync always is the baseline of every" \
      "comparison; install it (Debian: apt-get install redis-server)." >&2
    exit 1
  fi
done

SINGLE=$BASE
CLUSTER=$((BASE + 1)) # node 1; nodes 2 and 3 on the next two ports
REDIS=$((BASE + 9))
for port in $SINGLE $CLUSTER $((BASE + 2)) $((BASE + 3)) $REDIS $((BASE + 11)) $((BASE + 12)) \
  $((BASE + 13)) $((BASE + 14)); do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    echo "bench.sh: port $port is in use; choose other ports with --port-base" >&2
    exit 1
  fi
done

if [ -z "$RESULTS" ]; then
  RESULTS=$(mktemp -d -t flotilla-bench.XXXXXX)
else
  mkdir -p "$RESULTS"
  if compgen -G "$RESULTS/run*.json" > /dev/null; then
    echo "bench.sh: $RESULTS already holds results (run*.json); choose another directory" >&2
    exit 1
  fi
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release --quiet
fi
FLOTILLA=./target/release/flotilla
. scripts/lib/cluster-config.sh

work=$(mktemp -d -t flotilla-bench-work.XXXXXX)
pids=()
stop_all() {
  if [ ${#pids[@]} -gt 0 ]; then
    kill -9 "${pids[@]}" 2> /dev/null || true
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  fi
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Waits until the server on port $1 answers PING; shows its log $2 if it does not in 30 s.
await_port() {
  local deadline=$(($(now_ms) + 30000))
  until redis-cli -p "$1" ping > /dev/null 2>&1; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      echo "bench.sh: nothing answers on port $1 after 30 s; its log:" >&2
      tail -20 "$2" >&2
      exit 1
    fi
    sleep 0.1
  done
}

start_single() {
  rm -rf "$work/single"
  printf 'data_dir = "%s/single"\nclient_addr = "127.0.0.1:%s"\n' "$work" "$SINGLE" > "$work/single.toml"
  RUST_LOG=warn "$FLOTILLA" --config "$work/single.toml" > "$work/single.log" 2>&1 &
  pids+=($!)
  await_port "$SINGLE" "$work/single.log"
}

start_cluster() {
  local n
  rm -rf "$work/n1" "$work/n2" "$work/n3"
  for n in 1 2 3; do
    cluster_config "$n" "$work" "$BASE" > "$work/node$n.toml"
    RUST_LOG=warn "$FLOTILLA" --config "$work/node$n.toml" > "$work/n$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2 3; do await_port "$((BASE + n))" "$work/n$n.log"; done
  await_ranges 'leader=n[0-9]' "the cluster has not elected a leader for every range"
  # Every range led by node 1, the node the loads go through, as a client that routes its
  # requests to the leaders would have it: where elections put leadership varies from run to
  # run, and with it the hops a request takes (runs differed by up to 2x).
  redis-cli -p "$CLUSTER" flotilla transferleader all 1 > /dev/null
  await_ranges 'leader=n1' "leadership did not move to node 1"
}

# await_ranges PATTERN FAILURE: waits up to 30 s until all 5 ranges of FLOTILLA RANGES on node
# 1 match PATTERN; exits with FAILURE otherwise.
await_ranges() {
  local deadline=$(($(now_ms) + 30000))
  until [ "$(redis-cli -p "$CLUSTER" flotilla ranges | grep -c "$1")" = 5 ]; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      echo "bench.sh: $2 in 30 s" >&2
      exit 1
    fi
    sleep 0.1
  done
}

start_redis() {
  rm -rf "$work/redis"
  mkdir -p "$work/redis"
  redis-server --port "$REDIS" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save '' --daemonize no > "$work/redis.log" 2>&1 &
  pids+=($!)
  await_port "$REDIS" "$work/redis.log"
}

# load NAME PORT MIX CONNECTIONS PIPELINE: one `flotilla bench` into run<run>-<nn>-*.json,
# numbered so that the report lists the loads in the order they ran.
load() {
  local name=$1 port=$2 mix=$3 conns=$4 pipeline=$5
  local file
  step=$((step + 1))
  file=$(printf '%s/run%s-%02d-%s-%s-c%s-p%s.json' "$RESULTS" "$run" "$step" \
    "$(echo "$name" | tr ' ' '-')" "$mix" "$conns" "$pipeline")
  "$FLOTILLA" bench --addr "127.0.0.1:$port" --name "$name" --mix "$mix" \
    --connections "$conns" --pipeline "$pipeline" --value-size 100 --keys "$KEYS" \
    --duration "$DURATION" --warmup "$WARMUP" --json "$file" | sed 's/^/  /' ||
    echo "  (flotilla bench failed)"
}

# Kills the node leading the range of "k" and measures until a write through another node
# is answered OK; prints milliseconds, or nothing if there was none within 30 s.
failover_ms() {
  local leader port start
  leader=$(redis-cli -p "$CLUSTER" flotilla ranges | sed -n 's/^r2 .*leader=n\([0-9]*\).*/\1/p')
  [ -n "$leader" ] || return 0
  port=$((BASE + leader % 3 + 1))
  start=$(now_ms)
  kill -9 "${pids[$((leader - 1))]}"
  until [ "$(redis-cli -p "$port" set k v 2> /dev/null)" = "OK" ]; do
    [ "$(now_ms)" -lt $((start + 30000)) ] || return 0
  done
  echo $(($(now_ms) - start))
}

T1="flotilla 1 node"
T3="flotilla 3 nodes"
TR="redis always"
echo "results: $RESULTS"
echo "$RUNS run(s) of 12 loads, each ${WARMUP} s of warmup and ${DURATION} s measured"
: > "$RESULTS/failover.txt"
for run in $(seq 1 "$RUNS"); do
  step=0
  echo "=== run $run of $RUNS: $T1"
  start_single
  load "$T1" "$SINGLE" set 50 16
  load "$T1" "$SINGLE" set 1 1
  load "$T1" "$SINGLE" get 50 16
  stop_all

  echo "=== run $run of $RUNS: $T3 (through node 1)"
  start_cluster
  load "$T3" "$CLUSTER" set 64 1
  load "$T3" "$CLUSTER" set 50 16
  load "$T3" "$CLUSTER" set 1 1
  load "$T3" "$CLUSTER" get 64 1
  ms=$(failover_ms)
  echo "  writes answered again ${ms:-(not within 30 s)} ms after the leader node was killed"
  [ -z "$ms" ] || echo "$ms" >> "$RESULTS/failover.txt"
  stop_all

  echo "=== run $run of $RUNS: $TR (appendonly yes, appendfsync always)"
  start_redis
  load "$TR" "$REDIS" set 50 16
  load "$TR" "$REDIS" set 1 1
  load "$TR" "$REDIS" get 50 16
  load "$TR" "$REDIS" set 64 1
  load "$TR" "$REDIS" get 64 1
  stop_all
done

echo
echo "=== medians of $RUNS run(s), ${DURATION} s each (latency in ms)"
"$FLOTILLA" bench report --baseline "$TR" --svg "$RESULTS/bench.svg" \
  --tsv "$RESULTS/medians.tsv" "$RESULTS"/run*.json | tee "$RESULTS/table.md"

# med TARGET LOAD COLUMN: a median from medians.tsv (empty when not measured).
med() {
  awk -F'\t' -v t="$1" -v l="$2" -v c="$3" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == l && $2 == t { print $col[c] }' "$RESULTS/medians.tsv"
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) print a / b }'; }
# check LABEL MEASURED OP GOAL UNIT: one line of the targets table; UNIT is x, /s or ms.
check() {
  awk -v label="$1" -v v="$2" -v op="$3" -v goal="$4" -v unit="$5" '
    function show(x,   s, out) {
      if (unit == "x") return sprintf("%.2f×", x)
      if (unit == "ms") return sprintf("%.3f ms", x)
      s = sprintf("%.0f", x); out = ""
      while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
      return s out "/s"
    }
    BEGIN {
      if (v == "") { printf "| %s | %s %s | not measured | |\n", label, op, show(goal); exit }
      met = (op == "≥") ? (v + 0 >= goal + 0) : (v + 0 <= goal + 0)
      printf "| %s | %s %s | %s | %s |\n", label, op, show(goal), show(v), met ? "yes" : "no"
    }'
}
L50="SET c50 P16 100B"
L1="SET c1 P1 100B"
G50="GET c50 P16 100B"
fail=$(sort -n "$RESULTS/failover.txt" | awk '{a[NR] = $1} END { if (NR) print a[int((NR + 1) / 2)] }')
{
  echo "| target | goal | measured | met |"
  echo "| --- | --- | ---: | --- |"
  check "P1 one node SET, c50 P16, ÷ Redis" "$(div "$(med "$T1" "$L50" ops_per_sec)" "$(med "$TR" "$L50" ops_per_sec)")" ≥ 1.0 x
  check "P2 three nodes SET, c64 P1" "$(med "$T3" "SET c64 P1 100B" ops_per_sec)" ≥ 70000 /s
  check "P2 three nodes SET, c50 P16, ÷ Redis" "$(div "$(med "$T3" "$L50" ops_per_sec)" "$(med "$TR" "$L50" ops_per_sec)")" ≥ 0.5 x
  check "P3 one node SET p50, c1 P1, ÷ Redis p50" "$(div "$(med "$T1" "$L1" p50_ms)" "$(med "$TR" "$L1" p50_ms)")" ≤ 1.5 x
  check "P3 three nodes SET p50, c1 P1" "$(med "$T3" "$L1" p50_ms)" ≤ 0.4 ms
  check "P4 one node GET, c50 P16, ÷ Redis" "$(div "$(med "$T1" "$G50" ops_per_sec)" "$(med "$TR" "$G50" ops_per_sec)")" ≥ 0.5 x
  check "P4 three nodes GET, c64 P1" "$(med "$T3" "GET c64 P1 100B" ops_per_sec)" ≥ 150000 /s
  echo "| writes answered again after the leader node is killed (median) | | ${fail:-none} ms | |"
} > "$RESULTS/targets.md"
echo
echo "=== targets"
cat "$RESULTS/targets.md"
echo
echo "results, JSON per run and load, table.md, targets.md, medians.tsv and bench.svg: $RESULTS"
