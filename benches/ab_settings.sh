#!/usr/bin/env bash
# Compares two scheduler configurations on the TPC-H queries, interleaved: two
# release-build clusters (a scheduler and two executors each, see cluster.sh)
# run side by side and every query alternates between them, so a machine that
# slows down or speeds up during the run affects both alike.
#   benches/ab_settings.sh LAKE_DIR "SCHEDULER ARGS A" "SCHEDULER ARGS B" [QUERIES]
# e.g. benches/ab_settings.sh ~/.cache/lakelink/bench-data/tpch-sf10 \
#        "--set ballista.optimizer.broadcast_join_threshold_rows=1000000" "" "3 4 10"
# Prints the best of 3 per query for A and B and the geometric means, and says
# where the two printed results differ.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
lake="$1"; args_a="$2"; args_b="$3"; queries="${4:-$(seq 1 22)}"
shell="$CARGO_TARGET_DIR/release/lakelink"
out=$(mktemp -d)
pids=()
# Ending a cluster's `sleep` lets cluster.sh stop its processes.
cleanup() { for p in "${pids[@]}"; do pkill -P "$p" sleep 2>/dev/null || true; done; }
trap cleanup EXIT
LAKELINK_SCHEDULER_ARGS="$args_a" benches/cluster.sh "$lake" 51000 -- sleep infinity > "$out/a.log" 2>&1 &
pids+=($!)
LAKELINK_SCHEDULER_ARGS="$args_b" benches/cluster.sh "$lake" 52000 -- sleep infinity > "$out/b.log" 2>&1 &
pids+=($!)
sleep 8

# Seconds one query takes on the cluster at port $1; stops the run on an error.
run() {
  local start end
  start=$(date +%s.%N)
  if ! "$shell" --host "grpc://127.0.0.1:$1" -f "tests/testdata/tpch/q$2.sql" > "$out/q$2-$1.txt" 2>&1; then
    echo "q$2 failed on port $1:" >&2; tail -3 "$out/q$2-$1.txt" >&2; exit 1
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

echo "query A B"
for q in $queries; do
  best_a=999; best_b=999
  for _ in 1 2 3; do
    t=$(run 51000 "$q"); best_a=$(echo "if ($t < $best_a) $t else $best_a" | bc)
    t=$(run 52000 "$q"); best_b=$(echo "if ($t < $best_b) $t else $best_b" | bc)
  done
  differ=""; cmp -s "$out/q$q-51000.txt" "$out/q$q-52000.txt" || differ=" (results differ: $out/q$q-*.txt)"
  printf "q%s %.3f %.3f%s\n" "$q" "$best_a" "$best_b" "$differ"
done | tee "$out/times.txt"
awk '{ a += log($2); b += log($3); n++ } END { printf "geomean %.3f %.3f (B/A %.3f)\n", exp(a/n), exp(b/n), exp((b-a)/n) }' "$out/times.txt"
