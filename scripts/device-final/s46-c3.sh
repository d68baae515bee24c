#!/usr/bin/env bash
# Session 46, call 3 (carry .bin-s46b (attnc) and .bin-pycuda): ncu of the capture-gradient fused
# kernels next to dense's (s46-ncu-caps.sh), then T5's learned bias and the relative
# table trained through Python with the diagonal scan and diag_cse (the wheel of this
# commit): python/bench/capture_grad_step.py, attnc vs SDPA with the gathered bias (T5)
# and compiled Flex (Triton) where it compiles.
set -u
mkdir -p /tmp/s46
[ -x /tmp/s46/attnc ] || { xz -dc .bin-s46b/attnc.xz > /tmp/s46/attnc; chmod +x /tmp/s46/attnc; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ "${NCU:-1}" = 1 ] && bash scripts/device-final/s46-ncu-caps.sh /tmp/s46/attnc
[ -d /tmp/attnc-py/attnc ] || python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-py .bin-pycuda/wheels/attnc-*.whl
export ATTNC_CACHE_DIR=/tmp/attnc-cache PYTHONPATH=/tmp/attnc-py PYTHONUNBUFFERED=1
cd python/bench
for args in "--cases t5,t5_causal --l 4096 --d 64" "--cases t5,t5_causal,relbias --l 8192 --d 128 --no-sdpa"; do
  t0=$SECONDS
  echo "== $args"
  timeout ${PY_S:-200} python3 capture_grad_step.py $args --rounds 3 --no-flash 2>&1 \
    | grep -Ev "Warning|warn\(" | cut -c1-260
  echo "rc=$? ($((SECONDS - t0)) s)"
done
