#!/usr/bin/env bash
# Formatting (rustfmt.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== format"
cargo fmt --all --check
