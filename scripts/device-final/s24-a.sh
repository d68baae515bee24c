#!/usr/bin/env bash
# Session 24 call A (carry .bin-s24: main's release gpu_backward with the tile counter's
# persistent CTAs on D128 bands / tables and D64 tables as well, session 23's held-back
# default):
# 1. the backward bench: D128 sliding 1024 and document + causal, D64 document + causal,
#    the new default against `default-P` (the grid's order), interleaved x2; where +P was
#    not measured yet (D64 sliding 1024, ALiBi + causal, soft-cap + causal; D128 soft-cap +
#    causal) `default` against `default+P` x2; bulk statistics at D128 (dense, causal)
#    `default` against `default+b` x3;
# 2. every gpu_backward test on the new defaults (gpu_backward_convert_timeout among
#    them), compute-sanitizer racecheck and memcheck of the fused kernel's sanitize test.
set -u
. "$(cd "$(dirname "$0")" && pwd)/bwd-lib.sh"
echo "=== bench D128 new default vs -P ($(el) s)"
bb 50 a_d128P ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default-P,default,default-P
echo "=== bench D64 new default vs -P; +P where not measured ($(el) s)"
bb 50 a_d64P ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=doc_causal ATTNC_BWD_BENCH_CFG=default,default-P,default,default-P
bb 80 a_d64p ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,alibi_causal,softcap_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
bb 40 a_d128p ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=softcap_causal ATTNC_BWD_BENCH_CFG=default,default+P,default,default+P
echo "=== bench D128 +b ($(el) s)"
bb 80 a_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b,default,default+b
echo "=== tests ($(el) s)"
tests 300
summary a_logs.tar.xz
echo "total $(el) s"
