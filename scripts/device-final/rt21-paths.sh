#!/usr/bin/env bash
# Session 21 (rt21): gpu_backward_paths_bench alone — per variant the kernel bench's path, the
# runtime JIT's kernels and Bound::backward_cuda_into, deterministic and deterministic=False,
# all six timed in the same rounds (B2 H16 L8192 D128 bf16). ~20 s. ONLY / ND / ROUNDS override.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/rt21b; OUT=${OUT:-/tmp/rt21-out}; mkdir -p $B "$OUT"
t0=$SECONDS
xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache-rt21 ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,clocks.sm,power.draw --format=csv,noheader
ATTNC_BWD_BENCH_ONLY=${ONLY:-full,causal,alibi_causal,softcap_causal} ATTNC_BWD_PATHS_ND=${ND:-full,causal,alibi_causal,softcap_causal} \
  ATTNC_BWD_PATHS_ROUNDS=${ROUNDS:-9} timeout ${PATHS_S:-60} $B/gpu_backward --ignored --exact gpu_backward_paths_bench --nocapture > "$OUT/paths.txt" 2>&1
echo "paths rc=$? at $((SECONDS - t0)) s"
grep -E "attnc_bwd_paths|parts|rounds ms|panicked|rror" "$OUT/paths.txt" | cut -c1-400
