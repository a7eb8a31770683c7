#!/usr/bin/env bash
# Runs the bucket snapshot benchmark: builds visage-dr and the list_walk example
# in release mode, starts a throw-away Garage on 127.0.0.1, runs bench/bucket.py
# and removes the Garage and the scratch directory afterwards.
#
# Usage: bench/bucket.sh [RESULTS_JSON]   (default /tmp/visage-dr-bucket-bench.json)
# Needs: rclone, restic, GNU time (/usr/bin/time), python3, garage.
# BENCH_KEEP=1 keeps the scratch directory; extra bucket.py flags go in BENCH_ARGS.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-/tmp/visage-dr-bucket-bench.json}"
cd "$root"

for tool in rclone restic /usr/bin/time python3 garage; do
  command -v "$tool" > /dev/null || { echo "missing $tool; on Debian: apt-get install rclone restic time" >&2; exit 1; }
done

cargo build --release -j 2
cargo build --release -j 2 --example list_walk

work="$(mktemp -d /tmp/visage-dr-bench.XXXXXX)"
eval "$(scripts/garage-up "$work/garage")"
cleanup() {
  kill "$GARAGE_PID" 2> /dev/null || true
  if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -h | awk '/^Mem:/ {print $2}') memory; garage $(garage --version | head -1)," \
  "$(restic version | cut -d' ' -f1-2), $(rclone version | head -1), visage-dr $(git rev-parse --short HEAD)" >&2

# shellcheck disable=SC2086
python3 bench/bucket.py --work "$work" --results "$results" ${BENCH_ARGS:-}
