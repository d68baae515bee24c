#!/usr/bin/env bash
# Session 20 (py20): one training step (forward + backward) through Python, attnc next to
# FlexAttention's FLASH backend (FA4) and SDPA cuDNN, in one process
# (python/bench/flash_step.py: dense and causal B2 H16 L8192 D128, document + causal B2 H16
# L4096 D128 with block masks made once). For the final check, right after the FA4 anchors
# on the same machine (FA4 installed by ../shared/bench/fa4/install.sh a + b: it reads
# /tmp/fa4site.path). Carry the folder scripts/python-gpu-pack.sh fills, with this script;
# then `bash .bin-py20/fc.sh` (< 70 s; FC_S caps the bench). Without FA4 the FLASH rows
# say why they are missing. Logs under $OUT: flash_step.{log,json}.
set -u
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/attnc-out}
mkdir -p "$OUT"
py=${PYTHON:-python3}
t0=$SECONDS
site=/tmp/attnc-py20
rm -rf "$site"
"$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "$here"/wheels/attnc-*.whl
fa4=$(cat /tmp/fa4site.path 2>/dev/null || true)
[ -n "$fa4" ] || echo "fc.sh: /tmp/fa4site.path missing: FA4 not installed on this machine (FLASH rows will fail)"
cd "$here/tree" || exit 1
export PYTHONUNBUFFERED=1 ATTNC_CACHE_DIR=/tmp/attnc-cache
PYTHONPATH=$site${fa4:+:$fa4} timeout "${FC_S:-62}" "$py" python/bench/flash_step.py --rounds "${ROUNDS:-3}" \
  --out "$OUT" > "$OUT/flash_step.log" 2>&1
echo "flash_step rc=$?"
grep -Ev "Warning|warn\(" "$OUT/flash_step.log" | tail -40 | cut -c1-230
echo "== done ($((SECONDS - t0)) s) =="
