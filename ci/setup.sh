#!/usr/bin/env bash
# Set-up every other script needs: the Debian packages the build and the
# tests use, the default local models (verified by sha256) and the Python
# venv of the end-to-end suite. Nothing is fetched again once present.
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
