#!/usr/bin/env bash
# What a snapshot costs the clients of the node that sends it. On the three-node cluster of
# config/cluster/ (ports and data directories rewritten, every range led by node 1): SETs over
# 400,000 keys for 6 s, then node 3 killed and SETs on for 2 s (far past the point where node 1
# compacts its log, so node 3 will need snapshots), then GETs through node 1 with one
# connection for 8 s while node 3 is started again 2 s in and sent its snapshots. Prints the
# reads' latency (the longest is the stall a client saw) and the snapshots node 1 sent.
#
#   scripts/snapshot-stall.sh [--port-base P] [--no-build]
#
#   --port-base P   client ports P+1..P+3, raft ports P+11..P+13 (default 26480)
#   --no-build      use target/release/flotilla as it is instead of building it first
#
# Needs redis-cli (Debian: apt-get install redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=26480
BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --port-base) BASE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) echo "snapshot-stall.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! command -v redis-cli > /dev/null; then
  echo "snapshot-stall.sh: redis-cli not found (Debian: apt-get install redis-tools)" >&2
  exit 1
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release --quiet
fi
FLOTILLA=./target/release/flotilla
. scripts/lib/cluster-config.sh

for port in $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 11)) $((BASE + 12)) \
  $((BASE + 13)); do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    echo "snapshot-stall.sh: port $port is in use; choose other ports with --port-base" >&2
    exit 1
  fi
done

work=$(mktemp -d -t flotilla-snapshot.XXXXXX)
pids=(0 0 0 0) # nodes 1-3, and the reads
stop_all() {
  for p in "${pids[@]}"; do
    if [ "$p" != 0 ]; then
      kill -9 "$p" 2> /dev/null || true
      wait "$p" 2> /dev/null || true
    fi
  done
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# Waits up to 30 s for `cmd` to succeed; else says `what`, shows the nodes' logs and stops.
await() {
  local what=$1
  shift
  for _ in $(seq 300); do
    if "$@" > /dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "snapshot-stall.sh: $what; the nodes' logs:" >&2
  tail -n 5 "$work"/n?.log >&2
  exit 1
}
ranges_led() { [ "$(redis-cli -p $((BASE + 1)) flotilla ranges | grep -c "$1")" = 5 ]; }

start() {
  local n=$1
  cluster_config "$n" "$work" "$BASE" > "$work/node$n.toml"
  RUST_LOG=warn "$FLOTILLA" --config "$work/node$n.toml" >> "$work/n$n.log" 2>&1 &
  pids[n - 1]=$!
}

for n in 1 2 3; do start "$n"; done
for n in 1 2 3; do await "node $n does not answer" redis-cli -p $((BASE + n)) ping; done
await "the cluster has not elected a leader for every range" ranges_led 'leader=n[0-9]'
redis-cli -p $((BASE + 1)) flotilla transferleader all 1 > /dev/null
await "leadership did not move to node 1" ranges_led 'leader=n1'

load() { "$FLOTILLA" bench --addr 127.0.0.1:$((BASE + 1)) --keys 400000 --warmup 0 "$@"; }
load --duration 6 > /dev/null
kill -9 "${pids[2]}"
wait "${pids[2]}" 2> /dev/null || true
pids[2]=0
load --duration 2 > /dev/null
load --connections 1 --pipeline 1 --mix get --no-fill --duration 8 > "$work/reads.txt" &
pids[3]=$!
sleep 2
start 3
wait "${pids[3]}"
pids[3]=0
echo "GET, one connection, through node 1 while node 3 is started again and caught up:"
grep -E 'ops/s|latency' "$work/reads.txt"
redis-cli -p $((BASE + 1)) info | tr -d '\r' | grep '^snapshots_sent' | sed 's/^/node 1 /'
