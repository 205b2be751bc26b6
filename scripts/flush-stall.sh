#!/usr/bin/env bash
# What FLUSHDB costs the clients of a single node. Starts one node (port chosen by the OS, data
# in a temporary directory), SETs N keys key:000000000000.. of 100-byte values through
# `redis-cli --pipe`, checks DBSIZE is N, then runs FLUSHDB while one connection sends PING and
# another `SET other:x 1`, each in a loop (a request, its reply, 1 ms, the next). Prints
# FLUSHDB's wall time, DBSIZE's right after (it answers once the keys are deleted), the longest
# PING and SET from a second before FLUSHDB to a second after DBSIZE, the node's memory before
# and after, and one summary line:
#   keys=N flushdb_s=… worst_ping_ms=… worst_set_ms=… rss_before_mb=… hwm_after_mb=…
#   dbsize_after=… dbsize_s=…
#
#   BIN=path/to/flotilla scripts/flush-stall.sh [--keys N]
#
#   BIN         the binary measured (default target/release/flotilla; it is not built)
#   --keys N    keys loaded before the flush (default 1000000)
#
# Needs redis-cli (Debian: apt-get install redis-tools) and python3.
set -euo pipefail
BIN=${BIN:-}
if [ -n "$BIN" ]; then BIN=$(realpath "$BIN"); fi # relative to where it was run from
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/flotilla}

KEYS=1000000
while [ $# -gt 0 ]; do
  case $1 in
    --keys) KEYS=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) echo "flush-stall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in redis-cli python3; do
  if ! command -v "$tool" > /dev/null; then
    echo "flush-stall.sh: $tool not found (Debian: apt-get install redis-tools python3)" >&2
    exit 1
  fi
done
[ -x "$BIN" ] || { echo "flush-stall.sh: $BIN is not an executable" >&2; exit 1; }

work=$(mktemp -d -t flotilla-flush.XXXXXX)
node=0
pinger=0
stop_all() {
  for p in $pinger $node; do
    [ "$p" = 0 ] || { kill "$p" 2> /dev/null; wait "$p" 2> /dev/null; } || true
  done
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
mem_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$node/status"; } # VmRSS / VmHWM
mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
fail() { echo "flush-stall.sh: $1; the node's log:" >&2; tail -n 20 "$work/node.log" >&2; exit 1; }

# 1. One node on 127.0.0.1, port 0: the node prints the port the OS gave it.
printf 'data_dir = "%s/data"\nclient_addr = "127.0.0.1:0"\n' "$work" > "$work/node.toml"
RUST_LOG=warn "$BIN" --config "$work/node.toml" > "$work/node.log" 2>&1 &
node=$!
PORT=""
for _ in $(seq 300); do
  PORT=$(sed -n 's/.*serving clients on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/node.log" | head -1)
  if [ -n "$PORT" ] && [ "$(redis-cli -p "$PORT" ping 2> /dev/null)" = PONG ]; then break; fi
  kill -0 "$node" 2> /dev/null || fail "the node exited at start"
  PORT=""
  sleep 0.1
done
[ -n "$PORT" ] || fail "the node does not answer PING after 30 s"
echo "node pid $node on 127.0.0.1:$PORT, $BIN"

# 2. N SETs of 100-byte values, every key once, in RESP through redis-cli --pipe.
t0=$(now)
python3 -c '
import sys
n, out, v, parts = int(sys.argv[1]), sys.stdout.buffer, b"v" * 100, []
for i in range(n):
    parts.append(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n" % (i, v))
    if len(parts) == 10000:
        out.write(b"".join(parts)); parts = []
out.write(b"".join(parts))' "$KEYS" | redis-cli -p "$PORT" --pipe > "$work/load.txt" 2>&1 ||
  { cat "$work/load.txt" >&2; fail "redis-cli --pipe failed"; }
echo "loaded in $(since "$t0") s: $(tail -n 1 "$work/load.txt")"
dbsize=$(redis-cli -p "$PORT" dbsize)
echo "DBSIZE $dbsize"
[ "$dbsize" = "$KEYS" ] || fail "DBSIZE is $dbsize after loading $KEYS keys"

# 3. The node's memory before the flush.
rss_before=$(mem_kb VmRSS)
hwm_before=$(mem_kb VmHWM)
echo "before: VmRSS $(mb "$rss_before") MB, VmHWM $(mb "$hwm_before") MB"

# 4. PING on one connection, SET other:x 1 on another, until $work/stop appears; then one line
# each: worst ms, requests, requests over 100 ms, error replies (and the first); then one line
# per request over 100 ms: when it was sent (epoch seconds), how long it took.
cat > "$work/pinger.py" << 'EOF'
import os, socket, sys, threading, time
port, stop = int(sys.argv[1]), sys.argv[2]
def loop(name, cmd, ok, res):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not os.path.exists(stop):
        res["start"] = t = time.perf_counter()
        s.sendall(cmd)
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                res["err"] += 1; res["first"] = "connection closed by the node"; return
            buf += chunk
        ms = (time.perf_counter() - t) * 1000
        res["start"] = None
        res["n"] += 1; res["worst"] = max(res["worst"], ms)
        if ms > 100: res["slow"].append((time.time() - ms / 1000, ms))
        if buf != ok:
            res["err"] += 1; res["first"] = res["first"] or buf.decode(errors="replace").strip()
        time.sleep(0.001)
runs = [("ping", b"PING\r\n", b"+PONG\r\n"),
        ("set", b"*3\r\n$3\r\nSET\r\n$7\r\nother:x\r\n$1\r\n1\r\n", b"+OK\r\n")]
res = [dict(n=0, worst=0.0, slow=[], err=0, first="", start=None) for _ in runs]
threads = [threading.Thread(target=loop, args=r + (x,), daemon=True) for r, x in zip(runs, res)]
for t in threads: t.start()
for t in threads: t.join(timeout=120)
for (name, _, _), x in zip(runs, res):
    if x["start"] is not None:  # still unanswered: at least this long
        ms = (time.perf_counter() - x["start"]) * 1000
        x["worst"] = max(x["worst"], ms); x["slow"].append((time.time() - ms / 1000, ms))
    print(name, "%.1f" % x["worst"], x["n"], len(x["slow"]), x["err"], x["first"])
for (name, _, _), x in zip(runs, res):
    for t, ms in x["slow"]: print("slow", name, "%.3f" % t, "%.1f" % ms)
EOF
python3 "$work/pinger.py" "$PORT" "$work/stop" > "$work/pinger.txt" 2>&1 &
pinger=$!
sleep 1 # a second of the quiet node's latencies

# 5. FLUSHDB, timed until its reply.
flush_t0=$(now)
flush_reply=$(redis-cli -p "$PORT" flushdb 2>&1 || true)
flush_s=$(since "$flush_t0")
echo "FLUSHDB: $flush_reply in $flush_s s; VmRSS then $(mb "$(mem_kb VmRSS)") MB"
sleep 1

# 6. DBSIZE, timed: it counts once what was applied before is written, so it answers once the
# keys are deleted too; the clients run on through it and a second after. Then their worst
# latencies, and the node's memory.
t0=$(now)
dbsize_after=$(redis-cli -p "$PORT" dbsize 2>&1 || true)
dbsize_s=$(since "$t0")
echo "DBSIZE after: $dbsize_after in $dbsize_s s"
sleep 1
touch "$work/stop"
wait "$pinger" || true
pinger=0
kill -0 "$node" 2> /dev/null || fail "the node exited"
{ read -r _ worst_ping n_ping slow_ping err_ping first_ping && read -r _ worst_set n_set slow_set \
  err_set first_set; } < "$work/pinger.txt" || { cat "$work/pinger.txt" >&2; fail "pinger failed"; }
echo "PING: worst $worst_ping ms, $n_ping sent, $slow_ping over 100 ms," \
  "$err_ping error replies $first_ping"
echo "SET other:x: worst $worst_set ms, $n_set sent, $slow_set over 100 ms," \
  "$err_set error replies $first_set"
awk -v t0="$flush_t0" '$1 == "slow" {
  printf "  %s over 100 ms: sent %+.3f s from FLUSHDB, answered in %.3f s\n", $2, $3 - t0, $4 / 1000
}' "$work/pinger.txt"
rss_after=$(mem_kb VmRSS)
hwm_after=$(mem_kb VmHWM)
echo "after: VmRSS $(mb "$rss_after") MB, VmHWM $(mb "$hwm_after") MB (peak)"
if grep -q panicked "$work/node.log"; then
  grep -A 3 panicked "$work/node.log" | sed 's/^/node log: /' >&2
fi

# 7. One line.
extra=""
[ "$flush_reply" = OK ] || extra=" flushdb_reply=\"$flush_reply\""
echo "keys=$KEYS flushdb_s=$flush_s worst_ping_ms=$worst_ping worst_set_ms=$worst_set" \
  "rss_before_mb=$(mb "$rss_before") hwm_after_mb=$(mb "$hwm_after")" \
  "dbsize_after=$dbsize_after dbsize_s=$dbsize_s$extra"
