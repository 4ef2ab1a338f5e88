#!/usr/bin/env bash
# The API docs build without a warning, and the generated reference pages
# (docs/config.md, docs/functions.md) match their sources.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace --quiet --test docs
