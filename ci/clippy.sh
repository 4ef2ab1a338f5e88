#!/usr/bin/env bash
# Lints of every target, warnings as errors (clippy.toml forbids bare
# tokio::spawn).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings
