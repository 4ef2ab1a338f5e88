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
echo "== BI suite: Debian's Chromium and Apache Superset in $LAKELINK_BI_VENV"
command -v chromium >/dev/null || install_debian_packages chromium
if [ ! -x "$LAKELINK_BI_VENV/bin/python" ]; then
  python3 -m venv "$LAKELINK_BI_VENV"
fi
"$LAKELINK_BI_VENV/bin/pip" install --quiet --disable-pip-version-check \
  -r tests/bi/requirements.txt -c tests/bi/constraints.txt
# LakeLink's engine spec for Superset, from this checkout.
"$LAKELINK_BI_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall \
  ./clients/superset
