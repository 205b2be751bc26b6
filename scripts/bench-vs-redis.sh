#!/usr/bin/env bash
# Side by side on loopback: flotilla (single node, release build) and redis-server with
# appendonly yes / appendfsync always, under the same redis-benchmark load, RUNS times each,
# alternating. Prints each run and the medians. Needs redis-server and redis-benchmark
# (Debian: apt-get install redis-server redis-tools).
#
#   scripts/bench-vs-redis.sh [RUNS] [extra redis-benchmark args]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
shift || true
LOAD=${*:-"-t set,get -n 200000 -c 50 -P 16 -d 100"}
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
FPORT=16380
RPORT=16379

start_flotilla() {
  rm -rf "$work/flotilla"
  printf 'data_dir = "%s/flotilla"\nclient_addr = "127.0.0.1:%s"\n' "$work" "$FPORT" > "$work/f.toml"
  RUST_LOG=warn ./target/release/flotilla --config "$work/f.toml" > "$work/f.log" 2>&1 &
  until redis-cli -p $FPORT ping >/dev/null 2>&1; do sleep 0.1; done
}
start_redis() {
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port $RPORT --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save '' --daemonize no > "$work/r.log" 2>&1 &
  until redis-cli -p $RPORT ping >/dev/null 2>&1; do sleep 0.1; done
}
bench() { # port -> "SET GET" requests per second
  redis-benchmark -p "$1" $LOAD -q 2>/dev/null | tr '\r' '\n' | grep -E '^(SET|GET): [0-9]' \
    | awk '{print $1, $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$work/results"
for i in $(seq 1 "$RUNS"); do
  start_flotilla; bench $FPORT | sed "s/^/flotilla /" | tee -a "$work/results"; kill %1; wait %1 2>/dev/null || true
  start_redis; bench $RPORT | sed "s/^/redis-always /" | tee -a "$work/results"; kill %1; wait %1 2>/dev/null || true
done
echo "--- medians of $RUNS runs ($LOAD)"
for op in SET: GET:; do
  f=$(grep "^flotilla $op" "$work/results" | awk '{print $3}' | median)
  r=$(grep "^redis-always $op" "$work/results" | awk '{print $3}' | median)
  [ -n "$f" ] && [ -n "$r" ] && awk -v op="$op" -v f="$f" -v r="$r" \
    'BEGIN {printf "%s flotilla %.0f/s  redis(appendfsync always) %.0f/s  ratio %.2f\n", op, f, r, f/r}'
done
