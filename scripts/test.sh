#!/usr/bin/env bash
# Installs what the tests need and runs them all: Rust unit and integration
# tests (real clusters on loopback ports), then the end-to-end suite through
# the ADBC Flight SQL driver against separate scheduler and executor processes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/system-deps.sh
scripts/fetch-models.sh

echo "== Python test client (ADBC Flight SQL driver) in $LAKELINK_VENV"
if [ ! -x "$LAKELINK_VENV/bin/python" ]; then
  python3 -m venv "$LAKELINK_VENV"
fi
"$LAKELINK_VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== building (debug)"
cargo build --workspace --bins --tests

echo "== Rust tests"
cargo test --workspace --no-fail-fast

echo "== end-to-end tests through ADBC"
export LAKELINK_BIN_DIR="$CARGO_TARGET_DIR/debug"
export LAKELINK_TEST_LAKE_CACHE="$LAKELINK_CACHE/test-lakes"
"$LAKELINK_VENV/bin/python" -m pytest tests/python -q
