#!/usr/bin/env bash
# Starts the three-node demo cluster of config/cluster/ (clients on 6381-6383) in the
# foreground; Ctrl-C stops all three. Data goes to ./flotilla-data/node1..3.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT INT TERM
for n in 1 2 3; do
  ./target/release/flotilla --config "config/cluster/node$n.toml" &
done
wait
