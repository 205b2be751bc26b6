# Sourced by the scripts that run a three-node loopback cluster over many ranges (scale.sh,
# profile.sh). The caller sets `bin` (the flotilla binary) and `work` (a temporary directory)
# and kills "${pids[@]}" on exit.
#
# Clients on ${BASE}1-3, raft on $((BASE + 100))1-3.
BASE=${BASE:-2638}
pids=()

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cli() { redis-cli -p "$BASE$1" "${@:2}"; }
count_ranges() { cli "$1" flotilla ranges | grep -c "$2" || true; }
info() { cli "$1" info | tr -d '\r' | grep "^$2:" | cut -d: -f2; }

# Writes the three nodes' configs for $1 ranges, cutting "key:000000000000".."key:000000999999"
# (redis-benchmark's and `flotilla bench`'s keys) evenly. Ranges are bound to 512 MiB rather
# than 64, so that the loads with 1 KiB values (128 MiB a range over 8 ranges) compare the
# number of ranges asked for.
configure() {
  local splits n
  splits=$(awk -v n="$1" 'BEGIN { for (i = 1; i < n; i++) {
      printf "%s\"key:%012d\"", (i > 1 ? "," : ""), int(i * 1000000 / n) } }')
  for n in 1 2 3; do
    cat > "$work/node$n.toml" <<CONFIG
node_id = $n
data_dir = "$work/n$n"
client_addr = "127.0.0.1:$BASE$n"
raft_addr = "127.0.0.1:$((BASE + 100))$n"
cluster_id = "scale"
cluster_secret = "scale"
initial_members = [1, 2, 3]
split_keys = [$splits]
range_max_bytes = 536870912
[peers]
1 = "127.0.0.1:$((BASE + 100))1"
2 = "127.0.0.1:$((BASE + 100))2"
3 = "127.0.0.1:$((BASE + 100))3"
CONFIG
  done
}

# Starts three empty nodes over $1 ranges and waits until each answers.
start() {
  local n
  configure "$1"
  rm -rf "$work"/n[123]
  for n in 1 2 3; do
    RUST_LOG=warn "$bin" --config "$work/node$n.toml" > "$work/n$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2 3; do until cli "$n" ping > /dev/null 2>&1; do sleep 0.05; done; done
}

stop_all() {
  kill -9 "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# CPU time (clock ticks, user and system) of node $1 (1-3).
node_ticks() { awk '{print $14 + $15}' "/proc/${pids[$(($1 - 1))]}/stat"; }

# Waits until every replica of the $1 ranges is quiescent on the three nodes.
await_quiescent() {
  until [ "$(info 1 ranges_quiescent)" = "$1" ] && [ "$(info 2 ranges_quiescent)" = "$1" ] \
    && [ "$(info 3 ranges_quiescent)" = "$1" ]; do sleep 0.5; done
}

# CPU time (clock ticks) of the three nodes together.
cpu_ticks() { local n; for n in 1 2 3; do node_ticks "$n"; done | awk '{s += $1} END {print s}'; }
