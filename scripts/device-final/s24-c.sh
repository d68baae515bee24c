#!/usr/bin/env bash
# Session 24 call C (carry .bin-s24: main's release gpu_backward with bulk statistics on
# every D64 binding, and the writer warpgroup's register count as an option,
# `bwd_writer_regs` / the bench's `+R40`):
# 1. the backward bench, interleaved x2: D128 causal and ALiBi + causal `default`,
#    `default+R40`, `default+P+R40`; D128 sliding 1024, document + causal, D64 sliding
#    1024, document + causal, ALiBi + causal `default` against `default+R40`;
# 2. every gpu_backward test on the defaults, compute-sanitizer racecheck and memcheck of
#    the sanitize test; then the tests that take ATTNC_BWD_TEST_CFG with `default+R40`.
set -u
. "$(cd "$(dirname "$0")" && pwd)/bwd-lib.sh"
echo "=== bench D128 R40 ($(el) s)"
bb 70 c_d128a ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default+P+R40,default,default+R40,default+P+R40
bb 50 c_d128b ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default,default+R40
echo "=== bench D64 R40 ($(el) s)"
bb 60 c_d64 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal,alibi_causal ATTNC_BWD_BENCH_CFG=default,default+R40,default,default+R40
echo "=== tests ($(el) s)"
tests 250
echo "=== tests with default+R40 ($(el) s)"
( export ATTNC_BWD_TEST_CFG=default+R40; tests 200 _R40 )
summary c_logs.tar.xz
echo "total $(el) s"
