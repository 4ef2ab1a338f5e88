#!/usr/bin/env bash
# BI tools through Flight SQL: Apache Superset (PyPI) on a secured cluster,
# driven in headless Chromium by Playwright (tests/bi). Needs ci/setup.sh's
# BI venv and browser.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== BI suite: Apache Superset in a real browser"
cargo build --workspace --bins
export LAKELINK_BIN_DIR="$CARGO_TARGET_DIR/debug"
export LAKELINK_TEST_LAKE_CACHE="$LAKELINK_CACHE/test-lakes"
"$LAKELINK_BI_VENV/bin/python" -m pytest tests/bi -q "$@"
