#!/usr/bin/env bash
# Integration tests: real clusters (a scheduler and executors) on loopback
# ports, real Flight SQL clients, the real local model and the scripted
# model double; the SQL-surface .slt files.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "== integration tests"
cargo build --workspace --bins --tests
cargo test --workspace --no-fail-fast --tests
