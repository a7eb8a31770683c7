#!/usr/bin/env bash
# Runs the checkpoint push benchmark: a 1 GiB checkpoint pushed to
# `visage-dr serve` (repository on a throw-away Garage on 127.0.0.1), against
# a plain single-stream upload of the same file to the same Garage with curl.
# Prints both throughputs, their ratio and the server's peak RSS.
#
# Usage: bench/push.sh [SIZE_MIB]      (default 1024)
# BENCH_SKIP_BUILD=1 uses the binary already in target/release.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
size_mib="${1:-1024}"
cd "$root"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -j 2
fi
bin="$root/target/release/visage-dr"

work="$(mktemp -d /tmp/visage-dr-push-bench.XXXXXX)"
eval "$(scripts/garage-up "$work/garage")"
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2> /dev/null || true
  kill "$GARAGE_PID" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY" AWS_REGION="$S3_REGION"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -h | awk '/^Mem:/ {print $2}') memory; garage $(garage --version | head -1 | cut -d' ' -f2)," \
  "visage-dr $(git rev-parse --short HEAD)" >&2

file="$work/checkpoint.bin"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$file"
sha=$(sha256sum "$file" | cut -d' ' -f1)
bytes=$(stat -c %s "$file")
s3() { curl -fsS --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
         -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"; }
now() { date +%s.%N; }
# CPU seconds (user plus system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# Baseline: one PUT of the whole file, streamed by curl.
s3 -X PUT "$S3_ENDPOINT/plain-upload" > /dev/null
garage_before=$(cpu "$GARAGE_PID")
start=$(now)
s3 -X PUT -T "$file" "$S3_ENDPOINT/plain-upload/checkpoint.bin" > /dev/null
plain=$(echo "$(now) - $start" | bc)
plain_garage=$(echo "$(cpu "$GARAGE_PID") - $garage_before" | bc)

# visage-dr serve with its repository on the same Garage.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
token="bench-token-$(openssl rand -hex 8)"
echo "$token push,read" > "$work/tokens"
AWS_ENDPOINT_URL="$S3_ENDPOINT" "$bin" serve --repo "s3://$S3_BUCKET/dr" --tokens-file "$work/tokens" \
  --listen "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2> /dev/null && break; sleep 0.1; done
garage_before=$(cpu "$GARAGE_PID")
serve_before=$(cpu "$serve_pid")
start=$(now)
code=$(curl -sS -o "$work/push.json" -w '%{http_code}' -X PUT -T "$file" \
  -H "Authorization: Bearer $token" -H "X-Content-SHA256: $sha" \
  "http://127.0.0.1:$port/v1/checkpoints/bench/step-1")
push=$(echo "$(now) - $start" | bc)
[ "$code" = 201 ] || { echo "push failed with HTTP $code: $(cat "$work/push.json")" >&2; exit 1; }
push_garage=$(echo "$(cpu "$GARAGE_PID") - $garage_before" | bc)
push_serve=$(echo "$(cpu "$serve_pid") - $serve_before" | bc)
rss_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$serve_pid/status")

mbps() { echo "scale=1; $bytes / 1000000 / $1" | bc; }
echo "| step | seconds | MB/s | visage-dr CPU s | Garage CPU s |"
echo "| --- | ---: | ---: | ---: | ---: |"
echo "| plain PUT with curl | $plain | $(mbps "$plain") | - | $plain_garage |"
echo "| visage-dr push | $push | $(mbps "$push") | $push_serve | $push_garage |"
echo
echo "push / plain throughput: $(echo "scale=2; $plain / $push" | bc)"
echo "server peak RSS: $((rss_kib / 1024)) MiB"
