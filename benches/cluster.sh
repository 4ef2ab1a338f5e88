#!/usr/bin/env bash
# Starts a release-build cluster (a scheduler and two executors as separate
# processes) over a lake and runs a command against it, then stops it.
#   benches/cluster.sh LAKE_DIR PORT -- COMMAND...   (the command sees $LAKELINK_HOST)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
lake="$1"; port="$2"; shift 3
B="${LAKELINK_BIN_DIR:-$CARGO_TARGET_DIR/release}"
logs=$(mktemp -d)
scheduling="${LAKELINK_SCHEDULING:-pull}"   # pull (default) or push
secret="$logs/cluster.secret"
(umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret")
# Extra scheduler flags, e.g. LAKELINK_SCHEDULER_ARGS="--target-partitions 4"
# shellcheck disable=SC2086
"$B/lakelink-scheduler" --lake "$lake" --port "$port" --cluster-port $((port + 1)) --cluster-secret-file "$secret" \
  --bind 127.0.0.1 --scheduling "$scheduling" \
  ${LAKELINK_SCHEDULER_ARGS:-} > "$logs/scheduler.log" 2>&1 &
pids=($!)
sleep 1
for i in 0 1; do
  "$B/lakelink-executor" --scheduler "127.0.0.1:$((port + 1))" --cluster-secret-file "$secret" --bind 127.0.0.1 \
    --port $((port + 2 + 2 * i)) --grpc-port $((port + 3 + 2 * i)) --concurrent-tasks 1 --scheduling "$scheduling" > "$logs/executor-$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 2
LAKELINK_HOST="grpc://127.0.0.1:$port" "$@"
echo "(cluster logs in $logs)"
