#!/usr/bin/env bash
# End-to-end tests through the ADBC Flight SQL driver (Python) against
# separate scheduler, executor and model processes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== end-to-end tests through ADBC"
cargo build --workspace --bins
export LAKELINK_BIN_DIR="$CARGO_TARGET_DIR/debug"
export LAKELINK_TEST_LAKE_CACHE="$LAKELINK_CACHE/test-lakes"
# --capture=sys: what native code (the ADBC driver) writes to stderr reaches
# this log even when it takes the interpreter down.
"$LAKELINK_VENV/bin/python" -m pytest tests/python -q --capture=sys "$@"
echo "== the same suite as a secured deployment runs it: TLS everywhere, a token on every cluster"
LAKELINK_TEST_TLS=1 LAKELINK_TEST_AUTH=1 "$LAKELINK_VENV/bin/python" -m pytest tests/python -q --capture=sys "$@"
