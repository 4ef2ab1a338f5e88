#!/usr/bin/env bash
# The test command (CI runs it through .ci/run): set-up, then every check
# in order. Each check in ci/ also runs alone, e.g. `ci/clippy.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh
ci/fmt.sh
ci/clippy.sh
ci/docs.sh
ci/unit.sh
ci/integration.sh
ci/e2e.sh
ci/bi.sh
