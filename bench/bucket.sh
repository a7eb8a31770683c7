#!/usr/bin/env bash
# Runs the bucket snapshot benchmark: builds visage-dr and the list_walk example
# in release mode, starts a throw-away Garage on 127.0.0.1, runs bench/bucket.py
# and removes the Garage and the scratch directory afterwards.
#
# Usage: bench/bucket.sh [RESULTS_JSON [BUCKET_PY_FLAGS...]]
#   RESULTS_JSON defaults to /tmp/visage-dr-bucket-bench.json.
# Needs: rclone, restic, GNU time (/usr/bin/time), python3, garage.
# BENCH_KEEP=1 keeps the scratch directory; BENCH_SKIP_BUILD=1 uses the
# binaries already in target/release.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
results="${1:-/tmp/visage-dr-bucket-bench.json}"
shift || true
cd "$root"

for tool in rclone restic /usr/bin/time python3 garage; do
  command -v "$tool" > /dev/null || { echo "missing $tool; on Debian: apt-get install rclone restic time" >&2; exit 1; }
done

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -j 2
  cargo build --release -j 2 --example list_walk
fi

work="$(mktemp -d /tmp/visage-dr-bench.XXXXXX)"
eval "$(scripts/garage-up "$work/garage")"
cleanup() {
  kill "$GARAGE_PID" 2> /dev/null || true
  if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -h | awk '/^Mem:/ {print $2}') memory; garage $(garage --version | head -1)," \
  "$(restic version | cut -d' ' -f1-2), $(rclone version | head -1), visage-dr $(git rev-parse --short HEAD)" \
  "($(git status --porcelain -- src Cargo.toml | wc -l) files changed since that commit)" >&2

python3 bench/bucket.py --work "$work" --results "$results" "$@"
