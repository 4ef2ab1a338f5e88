#!/usr/bin/env bash
# Unit tests: each crate's own tests, next to its code.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== unit tests"
cargo test --workspace --no-fail-fast --lib --bins
