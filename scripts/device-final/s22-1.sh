#!/usr/bin/env bash
# Session 22 call 1 (carry .bin-bwd21 and .bin-dec21; no FA4): session 21's untimed options —
# bwd21's `+c` (bwd_s_ahead) against the default on D128 dense / causal / ALiBi + causal
# (interleaved x3, then the GPU tests with it on: .bin-bwd21/fc.sh), dec21's `u`
# (COPY_COMBINE_ROWS) against the default decode copy (.bin-dec21/fc.sh: B8 Lq16 contiguous
# + paged 16, Lq1 / Lq4, the combine alone, B1 Lkv131072, gpu_decode_combine_rows, SDPA cuDNN),
# and SDPA cuDNN's backward (D128 dense / causal) in the same call. The binaries are unpacked
# to /tmp/bwd21b and /tmp/d21, where the later calls of this session find them.
set -u
O=${OUT:-/tmp/s22-1}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "=== bwd21 fc ($(el) s)"
OUT=$O FC_S=70 bash .bin-bwd21/fc.sh 2>&1 | cut -c1-220
echo "=== dec21 fc ($(el) s)"
OUT=$O/d21 BUDGET=62 bash .bin-dec21/fc.sh 2>&1 | cut -c1-300
echo "=== SDPA cuDNN backward ($(el) s)"
timeout 40 python3 scripts/device-final/rt21-sdpa_bwd.py 2>&1 | grep -v Warning | cut -c1-200
echo "total $(el) s"
