#!/usr/bin/env bash
# Compares builds on the cluster figures: runs scripts/bench-cluster.sh for each build in turn,
# ROUNDS times (so that a slow minute of the machine does not fall on one build only), appends
# its figures to OUT, then prints the median and range of each figure per build
# (scripts/bench-summary.py OUT).
#
#   scripts/bench-ab.sh OUT ROUNDS NEBULA_BIN...
#
# Environment: as scripts/bench-cluster.sh (SEED=0 for the cross-node command alone, RUNS,
# FSYNC, NODES_ON_TMPFS). A build older than the cookie-key file needs NEBULA_SECRET: one is
# set for all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 OUT ROUNDS NEBULA_BIN..." >&2; exit 2; }
out=$1 rounds=$2
shift 2
export NEBULA_SECRET=${NEBULA_SECRET:-$(head -c 32 /dev/urandom | base64)}
for r in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    NEBULA_BIN=$bin scripts/bench-cluster.sh ab | grep -E "cross-node deliveries|ack latency|cpu|seed[0-9]+ delivery latency" \
      | sed "s|^|$bin r$r |" >> "$out"
  done
done
python3 scripts/bench-summary.py "$out"
