#!/usr/bin/env bash
# Session 21 (rt21) device call: the kernel bench's path, the runtime JIT's kernels and the
# runtime's call (Bound::backward_cuda_into_with) interleaved in one process
# (gpu_backward_paths_bench, B2 H16 L8192 D128 bf16; deterministic, and deterministic=False on
# dense / causal / ALiBi + causal), then SDPA cuDNN's backward (sdpa_bwd.py), then the Python
# training step without FA4 (flash_step.py --no-flash: attnc, attnc_nd, SDPA cuDNN).
# Carried as .bin-rt21/run.sh with gpu_backward.xz (release, stripped, xz'd), sdpa_bwd.py
# (= rt21-sdpa_bwd.py), fc.sh (= rt21-fc.sh), wheels/ and tree/ (fc.sh's header).
# Session 21: 56 s wall, `PATHS_S=48 SDPA_S=15 FC_S=22 bash .bin-rt21/run.sh`; PY=0 skips Python.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/rt21b; OUT=${OUT:-/tmp/rt21-out}; mkdir -p $B "$OUT"
t0=$SECONDS
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache-rt21 ATTNC_EXAMPLES=$PWD/examples
q() { nvidia-smi --query-gpu=name,driver_version,temperature.gpu,clocks.sm,power.draw --format=csv,noheader; }
q
ATTNC_BWD_PATHS_ND=${ND:-full,causal,alibi_causal} timeout ${PATHS_S:-50} $B/gpu_backward --ignored --exact gpu_backward_paths_bench --nocapture > "$OUT/paths.txt" 2>&1
echo "paths rc=$? at $((SECONDS - t0)) s"
grep -E "attnc_bwd_paths|parts|panicked|rror" "$OUT/paths.txt" | cut -c1-600
q
timeout ${SDPA_S:-20} python3 "$here/sdpa_bwd.py" > "$OUT/sdpa.txt" 2>&1; echo "sdpa rc=$? at $((SECONDS - t0)) s"
grep -v -i warn "$OUT/sdpa.txt"
if [ "${PY:-1}" = 1 ]; then
  FC_S=${FC_S:-25} ROUNDS=2 EXTRA=--no-flash bash "$here/fc.sh"
fi
q; echo "== run.sh done at $((SECONDS - t0)) s"
