# Shared settings for LakeLink's scripts; sourced, not run.
# Builds and downloads live outside the checkout so that every clone (and CI)
# reuses them.
export LAKELINK_CACHE="${LAKELINK_CACHE:-$HOME/.cache/lakelink}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LAKELINK_CACHE/target}"
export LAKELINK_VENV="${LAKELINK_VENV:-$LAKELINK_CACHE/venv}"
export LAKELINK_BI_VENV="${LAKELINK_BI_VENV:-$LAKELINK_CACHE/bi-venv}"
mkdir -p "$LAKELINK_CACHE"
