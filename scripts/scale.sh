#!/usr/bin/env bash
# Many ranges on the three-node loopback cluster (release build, temporary directories):
#
#   1. starts three nodes whose config cuts the key space "key:000000000000".."key:000000999999"
#      (redis-benchmark's and `flotilla bench`'s keys) into RANGES ranges, and times until
#      every range has a leader and until every replica of every range is quiescent;
#   2. leaves the cluster idle for IDLE seconds and reports the CPU the three processes used
#      together (percent of one core) and each node's RSS;
#   3. runs the same SET load through node 1 against this cluster and against one of 8 ranges
#      (alternating, RUNS times each) and prints the medians and their ratio;
#   4. runs that load over RANGES ranges for SOAK seconds and reports, every 10 s, each
#      node's RSS and the entries its raft logs hold (they must level off, not grow);
#   5. kills node 1 with SIGKILL and times until node 2 sees every range led by a live node;
#   6. a rolling restart: kills node 3, runs the load for 30 s, moves every range's leadership
#      to node 2, starts node 3 again and times until it has applied what node 2 has, and
#      reports nodes 1 and 2's RSS and entry caches while node 3 was down, the snapshots sent
#      (a replica that lags should catch up from the logs), the log entries read back from
#      files, and who leads each range then (node 2 should, still).
#
#   scripts/scale.sh [RANGES] [IDLE] [RUNS] [SOAK] [VALUE_SIZE]
#                                                  defaults: 10000 60 3 120 100
#   ROLLING_ONLY=1 scripts/scale.sh ...            step 6 alone
#
# Needs redis-cli (Debian: apt-get install redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
RANGES=${1:-10000}
IDLE=${2:-60}
RUNS=${3:-3}
SOAK=${4:-120}
VALUE_SIZE=${5:-100}
LOAD=(--connections 50 --pipeline 16 --value-size "$VALUE_SIZE" --keys 1000000 --mix set
  --duration 10)
cargo build --release --quiet
bin=$PWD/target/release/flotilla
work=$(mktemp -d)
. scripts/lib/ranges-cluster.sh
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${pids[$1]}/status"; }

# ROLLING_ONLY=1 runs step 6 alone (about a minute).
if [ -z "${ROLLING_ONLY:-}" ]; then
  # 1. Start-up.
  t0=$(now_ms)
  start "$RANGES"
  until [ "$(count_ranges 1 'leader=n[0-9]')" = "$RANGES" ]; do sleep 0.5; done
  t_leaders=$(( $(now_ms) - t0 ))
  await_quiescent "$RANGES"
  t_quiet=$(( $(now_ms) - t0 ))
  echo "$RANGES ranges: every range led after $t_leaders ms, all quiescent after $t_quiet ms"

  # 2. Idle.
  a=$(cpu_ticks); sleep "$IDLE"; b=$(cpu_ticks)
  hz=$(getconf CLK_TCK)
  awk -v t=$((b - a)) -v hz="$hz" -v s="$IDLE" \
    'BEGIN { printf "idle %d s: the three nodes used %.2f%% of one core together\n", s, 100 * t / hz / s }'
  for i in 0 1 2; do
    echo "node $((i + 1)) RSS: $(awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/${pids[$i]}/status")"
  done
  stop_all

  # 3. The same load over RANGES ranges and over 8.
  : > "$work/results"
  for i in $(seq 1 "$RUNS"); do
    for r in "$RANGES" 8; do
      start "$r"
      until [ "$(count_ranges 1 'leader=n[0-9]')" = "$r" ]; do sleep 0.2; done
      "$bin" bench --addr "127.0.0.1:${BASE}1" "${LOAD[@]}" --json "$work/run.json" > /dev/null
      ops=$(grep -o '"ops_per_sec": *[0-9.]*' "$work/run.json" | grep -o '[0-9.]*$')
      echo "$r $ops" | tee -a "$work/results"
      stop_all
    done
  done
  many=$(awk -v r="$RANGES" '$1 == r {print $2}' "$work/results" | median)
  few=$(awk '$1 == 8 {print $2}' "$work/results" | median)
  awk -v m="$many" -v f="$few" -v r="$RANGES" -v runs="$RUNS" 'BEGIN {
    printf "SET through node 1 (medians of %d): %d ranges %.0f/s, 8 ranges %.0f/s, ratio %.2f\n",
      runs, r, m, f, m / f }'

  # 4. A sustained load: memory levels off.
  start "$RANGES"
  until [ "$(count_ranges 1 'leader=n[0-9]')" = "$RANGES" ]; do sleep 0.2; done
  for t in $(seq 10 10 "$SOAK"); do
    "$bin" bench --addr "127.0.0.1:${BASE}1" "${LOAD[@]}" --json "$work/run.json" > /dev/null
    ops=$(grep -o '"ops_per_sec": *[0-9.]*' "$work/run.json" | grep -o '[0-9.]*$')
    printf "after %3d s of load: %6.0f/s, RSS %s / %s / %s MiB, raft log entries %s / %s / %s\n" \
      "$t" "$ops" "$(rss 0)" "$(rss 1)" "$(rss 2)" \
      "$(info 1 raft_log_entries)" "$(info 2 raft_log_entries)" "$(info 3 raft_log_entries)"
  done
  stop_all

  # 5. Failover of every range node 1 led.
  start "$RANGES"
  until [ "$(count_ranges 1 'leader=n[0-9]')" = "$RANGES" ]; do sleep 0.5; done
  until [ "$(info 1 ranges_quiescent)" = "$RANGES" ]; do sleep 0.5; done
  led=$(count_ranges 2 'leader=n1')
  t0=$(now_ms)
  kill -9 "${pids[0]}"
  until [ "$(count_ranges 2 'leader=n[23]')" = "$RANGES" ]; do sleep 0.1; done
  echo "node 1 killed: the $led ranges it led have new leaders after $(( $(now_ms) - t0 )) ms"
  stop_all
fi

# 6. A rolling restart.
start "$RANGES"
until [ "$(count_ranges 1 'leader=n[0-9]')" = "$RANGES" ]; do sleep 0.5; done
kill -9 "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
for _ in 1 2 3; do "$bin" bench --addr "127.0.0.1:${BASE}1" "${LOAD[@]}" > /dev/null; done
for n in 1 2; do
  echo "node $n with node 3 down: RSS $(rss $((n - 1))) MiB; its entry caches hold" \
    "$(info "$n" raft_entries_cached) entries, $(( $(info "$n" raft_entry_cache_bytes) >> 20 )) MiB"
done
cli 2 flotilla transferleader all 2 > /dev/null
for _ in $(seq 60); do [ "$(count_ranges 2 'leader=n2')" = "$RANGES" ] && break; sleep 0.5; done
echo "rolling restart: 30 s of load with node 3 down; node 2 leads $(count_ranges 2 'leader=n2') of $RANGES ranges"
RUST_LOG=warn "$bin" --config "$work/node3.toml" >> "$work/n3.log" 2>&1 &
pids[2]=$!
until cli 3 ping > /dev/null 2>&1; do sleep 0.05; done
applied() { cli "$1" flotilla ranges | sed -E 's/^([^ ]+) .* applied=([0-9]+).*/\1 \2/' | sort; }
t0=$(now_ms)
until [ "$(applied 2)" = "$(applied 3)" ]; do sleep 0.5; done
echo "node 3 caught up after $(( $(now_ms) - t0 )) ms; snapshots sent by nodes 1 and 2:" \
  "$(info 1 snapshots_sent) and $(info 2 snapshots_sent); log entries read back from files" \
  "by nodes 1 and 2: $(info 1 raft_log_entries_read) and $(info 2 raft_log_entries_read)"
# Node 2 should still lead every range: catching node 3 up must not hold its thread so long
# that the others think it dead.
echo "ranges led, as node 2 sees them: node 1 $(count_ranges 2 'leader=n1')," \
  "node 2 $(count_ranges 2 'leader=n2'), node 3 $(count_ranges 2 'leader=n3')"
