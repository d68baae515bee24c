#!/usr/bin/env bash
# Session 24 call B (carry .bin-s24: main's release gpu_backward with session 24's
# defaults: the tile counter on every band / table and D64's causal-type bindings, bulk
# statistics on D128 dense as well):
# 1. the backward bench: D128 dense new default against `default-b`, x2; bulk statistics
#    where not measured (D128 sliding 1024 and document + causal; D64 sliding 1024,
#    document + causal, ALiBi + causal, soft-cap + causal), `default` against
#    `default+b`, x2;
# 2. every gpu_backward test on the new defaults, compute-sanitizer racecheck and memcheck
#    of the fused kernel's sanitize test (a band and a block table among its cases).
set -u
. "$(cd "$(dirname "$0")" && pwd)/bwd-lib.sh"
echo "=== bench D128 dense default vs -b ($(el) s)"
bb 50 b_d128 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full ATTNC_BWD_BENCH_CFG=default,default-b,default,default-b
echo "=== +b on bands, tables, D64 score functions ($(el) s)"
bb 50 b_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b
bb 80 b_d64b ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b
echo "=== tests ($(el) s)"
tests 300
summary b_logs.tar.xz
echo "total $(el) s"
