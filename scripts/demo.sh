#!/usr/bin/env bash
# Builds LakeLink (optimized, for any x86-64-v3 CPU), generates a TPC-H demo lake and
# opens the SQL shell over it in embedded mode.
#   scripts/demo.sh [SCALE_FACTOR]     (default 1: 6 million lineitem rows)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/system-deps.sh
scale="${1:-1}"

scripts/fetch-models.sh

echo "== building lakelink (release; about 30 minutes the first time)"
cargo build --release --workspace --bins

lake="$LAKELINK_CACHE/demo/tpch-sf$scale"
# A lake from before the NL catalog (_lakelink/catalog.toml) is generated again.
if [ ! -f "$lake/.complete" ] || [ ! -f "$lake/_lakelink/catalog.toml" ]; then
  echo "== generating TPC-H SF $scale into $lake"
  "$CARGO_TARGET_DIR/release/lakelink" datagen tpch --scale "$scale" --out "$lake"
  touch "$lake/.complete"
fi

cat <<'SQL'
== example queries (paste one at the prompt):
  \d
  \d lineitem
  SELECT l_returnflag, l_linestatus, count(*) AS orders, sum(l_extendedprice) AS revenue
    FROM lineitem GROUP BY 1, 2 ORDER BY 1, 2;
  SELECT n_name, sum(o_totalprice) AS total FROM orders
    JOIN customer ON o_custkey = c_custkey JOIN nation ON c_nationkey = n_nationkey
    GROUP BY n_name ORDER BY total DESC LIMIT 5;
  -- the local model (Qwen2.5-Coder-0.5B on this CPU), once per distinct value:
  SELECT o_orderpriority, llm_classify(o_comment, 'complaint', 'request', 'other') AS kind, count(*)
    FROM orders WHERE o_orderdate = DATE '1995-03-15' GROUP BY 1, 2 ORDER BY 1, 2;
  SELECT function, count(*), sum(rows), sum(prompt_tokens) FROM system.model_calls GROUP BY 1;
  -- plain English, compiled into checked SQL by the local model:
  SELECT * FROM nl_query('How many customers are in the building market segment?');
  SELECT o_orderkey, o_totalprice FROM orders WHERE nl_filter('urgent orders from 1995') LIMIT 5;
  \nl which 5 suppliers in Germany have the largest account balance
  SELECT question, sql, outcome, model_calls FROM system.nl_tasks;
SQL
exec "$CARGO_TARGET_DIR/release/lakelink" --lake "$lake"
