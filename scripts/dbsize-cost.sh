#!/usr/bin/env bash
# What a DBSIZE costs over many ranges (release build, temporary directories): starts the
# three-node loopback cluster of scripts/scale.sh over RANGES ranges, waits until every range is
# quiescent, then reports the CPU the three nodes use idle for 10 s, the time six DBSIZEs take
# (through node 1 and node 2 in turn), and the CPU the nodes use while node 2 is asked DBSIZE
# once a second for 10 s. Each DBSIZE has every range apply a read index, which wakes it.
#
#   scripts/dbsize-cost.sh [RANGES]        default: 10000
#
# Needs redis-cli (Debian: apt-get install redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
RANGES=${1:-10000}
cargo build --release --quiet
bin=$PWD/target/release/flotilla
work=$(mktemp -d)
. scripts/lib/ranges-cluster.sh
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT


start "$RANGES"
until [ "$(count_ranges 1 'leader=n[0-9]')" = "$RANGES" ]; do sleep 0.5; done
await_quiescent "$RANGES"
a=$(cpu_ticks); sleep 10; b=$(cpu_ticks)
echo "$RANGES ranges, idle 10 s: $((b - a)) clock ticks of the three nodes ($(getconf CLK_TCK) a second)"
for n in 1 2 1 2 1 2; do
  t0=$(now_ms); keys=$(cli "$n" dbsize); t1=$(now_ms)
  echo "DBSIZE through node $n: $keys, in $((t1 - t0)) ms"
done
await_quiescent "$RANGES"
a=$(cpu_ticks); t0=$(now_ms)
for _ in $(seq 10); do cli 2 dbsize > /dev/null; sleep 1; done
b=$(cpu_ticks); t1=$(now_ms)
echo "DBSIZE through node 2 once a second: $((b - a)) clock ticks in $((t1 - t0)) ms"
