#!/usr/bin/env bash
# Where a write's CPU goes on the three-node loopback cluster, crate by crate (release build,
# temporary directories). For RANGES ranges and then for 8, it runs the SET load of `scale.sh`
# (50 connections, pipeline 16, a million keys) through node 1 four times, each on three new
# nodes with every range led by node 1:
#
#   1. without a profiler, for each node's CPU time per write (user and system, from /proc);
#   2-4. with `perf record` (DWARF call graphs, user and kernel) on node 1, 2 and 3 in turn.
#
# Each sample is counted to the innermost crate on its stack (raft-rs, raft-engine, sled,
# protobuf, bincode, actix/tokio, flotilla's own code; "other" when none is), and each node's
# shares are scaled by its CPU per write of run 1. It prints, per load, the µs of CPU per write
# of the three nodes together by crate (see README, "Many ranges").
#
#   scripts/profile.sh [RANGES] [SECONDS]                  defaults: 10000 10
#
# Needs redis-cli and perf (Debian: apt-get install redis-tools linux-perf), and
# /proc/sys/kernel/perf_event_paranoid at 1 or below for the kernel's part.
set -euo pipefail
cd "$(dirname "$0")/.."
RANGES=${1:-10000}
DURATION=${2:-10}
LOAD=(--connections 50 --pipeline 16 --value-size 100 --keys 1000000 --mix set
  --duration "$DURATION" --warmup 1)
command -v perf > /dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
if [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ]; then
  echo "note: perf_event_paranoid > 1, so the kernel's part is not sampled" >&2
fi
cargo build --release --quiet
bin=$PWD/target/release/flotilla
work=$(mktemp -d)
. scripts/lib/ranges-cluster.sh
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

# Starts the cluster over $1 ranges, every range led by node 1.
start_led() {
  start "$1"
  until [ "$(count_ranges 1 'leader=n[0-9]')" = "$1" ]; do sleep 0.2; done
  cli 1 flotilla transferleader all 1 > /dev/null
  until [ "$(count_ranges 1 'leader=n1')" = "$1" ]; do sleep 0.2; done
}

# Runs the load through node 1; its ops/s land in $work/ops.
load() {
  "$bin" bench --addr "127.0.0.1:${BASE}1" "${LOAD[@]}" --json "$work/run.json" > /dev/null
  grep -o '"ops_per_sec": *[0-9.]*' "$work/run.json" | grep -o '[0-9.]*$' > "$work/ops"
}

# Prints "crate share" lines for perf data $1: each sample's innermost crate.
by_crate() {
  perf script -i "$1" -F ip,sym 2> /dev/null | awk '
    BEGIN { RS = ""; FS = "\n" }
    {
      n++; c = "other"
      for (i = 1; i <= NF; i++) {
        s = $i; sub(/^[ \t]*[0-9a-f]+ /, "", s)
        if (s ~ /(^|[<( &*])raft::/) { c = "raft-rs"; break }
        if (s ~ /raft_engine::/) { c = "raft-engine"; break }
        if (s ~ /sled::/) { c = "sled"; break }
        if (s ~ /protobuf::/) { c = "protobuf"; break }
        if (s ~ /flotilla/) { c = "flotilla"; break }
        if (s ~ /bincode::/) { c = "bincode"; break }
        if (s ~ /(actix|tokio)/) { c = "actix/tokio"; break }
      }
      count[c]++
    }
    END { for (c in count) print c, count[c] / n }'
}

for r in "$RANGES" 8; do
  start_led "$r"
  # CPU time over the middle of an unprofiled run.
  load &
  lp=$!
  sleep 2
  for n in 1 2 3; do before[$n]=$(node_ticks "$n"); done
  sleep $((DURATION - 3))
  for n in 1 2 3; do after[$n]=$(node_ticks "$n"); done
  wait "$lp"
  stop_all
  ops=$(cat "$work/ops")
  for n in 1 2 3; do
    us[$n]=$(awk -v t=$((after[n] - before[n])) -v hz="$hz" -v ops="$ops" -v s=$((DURATION - 3)) \
      'BEGIN { printf "%.2f", t / hz * 1e6 / (ops * s) }')
  done
  echo "$r ranges: $ops writes/s; CPU per write: node 1 ${us[1]} µs, node 2 ${us[2]} µs, node 3 ${us[3]} µs"
  : > "$work/shares"
  for n in 1 2 3; do
    start_led "$r"
    load &
    lp=$!
    sleep 2
    perf record -q -F 499 --call-graph dwarf,16384 -p "${pids[$((n - 1))]}" -o "$work/perf.data" \
      -- sleep $((DURATION - 3)) > /dev/null 2>&1
    wait "$lp"
    stop_all
    by_crate "$work/perf.data" | awk -v us="${us[$n]}" '{print $1, $2 * us}' >> "$work/shares"
  done
  awk '{t[$1] += $2} END { for (c in t) printf "  %-12s %6.1f µs\n", c, t[c] }' "$work/shares" |
    sort -k2 -rn
  awk '{all += $2} END { printf "  %-12s %6.1f µs\n", "total", all }' "$work/shares"
done
