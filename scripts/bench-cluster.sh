#!/usr/bin/env bash
# Side by side on loopback, release build: flotilla on one node, then the three-node cluster of
# config/cluster/ (through node 1), under the same redis-benchmark load, RUNS times each,
# alternating. After each cluster run, the node leading the range of key "k" is killed with
# SIGKILL and the time until a write through another node is answered OK again is measured.
# Prints each run and the medians. Needs redis-benchmark and redis-cli
# (Debian: apt-get install redis-tools).
#
#   scripts/bench-cluster.sh [RUNS] [redis-benchmark load]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
shift || true
LOAD=${*:-"-t set -n 200000 -c 50 -P 16 -d 100"}
cargo build --release --quiet
work=$(mktemp -d)
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
BASE=16380

stop_all() {
  kill -9 "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
await_port() { until redis-cli -p "$1" ping >/dev/null 2>&1; do sleep 0.1; done; }
bench() { # port -> requests per second of the first test
  redis-benchmark -p "$1" $LOAD -q 2>/dev/null | tr '\r' '\n' | grep -E '^[A-Z]+: [0-9]' \
    | head -1 | awk '{print $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

start_single() {
  rm -rf "$work/single"
  printf 'data_dir = "%s/single"\nclient_addr = "127.0.0.1:%s"\n' "$work" "$BASE" > "$work/single.toml"
  RUST_LOG=warn ./target/release/flotilla --config "$work/single.toml" > "$work/single.log" 2>&1 &
  pids+=($!)
  await_port $BASE
}

start_cluster() {
  rm -rf "$work/n1" "$work/n2" "$work/n3"
  for n in 1 2 3; do
    sed -e "s|^data_dir = .*|data_dir = \"$work/n$n\"|" \
        -e "s|127.0.0.1:638|127.0.0.1:$((BASE / 10))|; s|127.0.0.1:738|127.0.0.1:$((BASE / 10 + 100))|" \
        "config/cluster/node$n.toml" > "$work/node$n.toml"
    RUST_LOG=warn ./target/release/flotilla --config "$work/node$n.toml" > "$work/n$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2 3; do await_port "$((BASE / 10))$n"; done
  until [ "$(redis-cli -p "$((BASE / 10))1" flotilla ranges | grep -c 'leader=n[0-9]')" = 5 ]; do
    sleep 0.1
  done
}

# Kills the leader of the range of "k" and measures until a write elsewhere succeeds.
failover_ms() {
  local leader port start
  leader=$(redis-cli -p "$((BASE / 10))1" flotilla ranges | grep '^r2 ' | sed 's/.*leader=n\([0-9]*\).*/\1/')
  port="$((BASE / 10))$(( leader % 3 + 1 ))"
  start=$(now_ms)
  kill -9 "${pids[$((leader - 1))]}"
  until [ "$(redis-cli -p "$port" set k v 2>/dev/null)" = "OK" ]; do :; done
  echo $(( $(now_ms) - start ))
}

: > "$work/results"
for i in $(seq 1 "$RUNS"); do
  start_single
  echo "single $(bench $BASE)" | tee -a "$work/results"
  stop_all
  start_cluster
  echo "cluster $(bench "$((BASE / 10))1")" | tee -a "$work/results"
  echo "failover $(failover_ms)" | tee -a "$work/results"
  stop_all
done
s=$(grep '^single ' "$work/results" | awk '{print $2}' | median)
c=$(grep '^cluster ' "$work/results" | awk '{print $2}' | median)
f=$(grep '^failover ' "$work/results" | awk '{print $2}' | median)
echo "--- medians of $RUNS runs ($LOAD)"
awk -v s="$s" -v c="$c" -v f="$f" 'BEGIN {
  printf "single node %.0f/s  three nodes (through node 1) %.0f/s  ratio %.2f\n", s, c, c/s
  printf "writes answered again %d ms after the leader node was killed\n", f }'
