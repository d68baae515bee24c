#!/usr/bin/env bash
# Session 21 (rt21): one training step through Python (python/bench/flash_step.py, dense and
# causal B2 H16 L8192 D128 bf16): attnc (deterministic, the default), attnc_nd
# (deterministic=False: like FA4, whose backward is non-deterministic by default), Flex FLASH
# (FA4, when ../shared/bench/fa4/install.sh a + b ran on this machine: /tmp/fa4site.path) and
# SDPA cuDNN, in one process, ROUNDS rounds (default 3). Wheel: wheels/ of this folder (main's
# package; rt21 changed no runtime code), tree/: python/bench and examples of branch rt21.
# For the final check: `bash .bin-rt21/fc.sh` right after the FA4 anchors (< 60 s; FC_S caps
# the bench). Logs under $OUT: flash_step.{log,json}.
set -u
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/attnc-out}
mkdir -p "$OUT"
py=${PYTHON:-python3}
t0=$SECONDS
site=/tmp/attnc-rt21
rm -rf "$site"
"$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "$here"/wheels/attnc-*.whl
fa4=$(cat /tmp/fa4site.path 2>/dev/null || true)
[ -n "$fa4" ] || echo "fc.sh: /tmp/fa4site.path missing: FA4 not installed on this machine (FLASH rows will fail)"
cd "$here/tree" || exit 1
export PYTHONUNBUFFERED=1 ATTNC_CACHE_DIR=/tmp/attnc-cache
PYTHONPATH=$site${fa4:+:$fa4} timeout "${FC_S:-55}" "$py" python/bench/flash_step.py --cases dense,causal \
  --rounds "${ROUNDS:-3}" ${EXTRA:-} --out "$OUT" > "$OUT/flash_step.log" 2>&1
echo "flash_step rc=$? ($((SECONDS - t0)) s)"
grep -Ev "Warning|warn\(" "$OUT/flash_step.log" | tail -40 | cut -c1-230
echo "== fc.sh done ($((SECONDS - t0)) s) =="
