#!/usr/bin/env bash
# Session 24 call D (carry .bin-s24: main's release gpu_backward with session 24's final
# defaults): the backward bench on every variant at D128 (B2 H16 L8192) and D64 (B4 H16
# L4096), the defaults interleaved with `default+R24` (the writer warpgroup back at 24
# registers, the math at 240: the defaults before call C's decision) where the default has
# 40, and one pair of `+R32` / `+R40` where not measured.
set -u
. "$(cd "$(dirname "$0")" && pwd)/bwd-lib.sh"
echo "=== D128 ($(el) s)"
bb 80 d_d128a ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R24,default+R32,default,default+R24
bb 80 d_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,softcap_causal,sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R32,default+R40,default
echo "=== D64 ($(el) s)"
bb 60 d_d64a ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R24,default,default+R24
bb 60 d_d64b ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default
echo "total $(el) s"
