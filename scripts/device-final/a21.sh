#!/usr/bin/env bash
# session 21 final check call A (cold): a.sh (every GPU test binary; the forward's q_ahead / o_tma / cross_tile tests now
# one run_sweep) + beside it: compute-sanitizer racecheck / memcheck of o_tma through the sweep, memcheck / racecheck of
# dec21's one-CTA-per-head combine (`u`, gpu_decode_combine_rows), bwd21's `+c` (bwd_s_ahead) under the backward's
# tests and racecheck; then rt21's gpu_backward_paths_bench (kernel path / runtime JIT / Bound::backward_cuda_into,
# deterministic and not, same rounds).
set -u
mkdir -p /tmp/fo /tmp/fx; B=/tmp/fa
( sleep 15; export ATTNC_CACHE_DIR=/tmp/attnc-cache-x ATTNC_EXAMPLES=$PWD/examples
  ATTNC_GPU_OTMA_CASES=3 timeout 200 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu --exact gpu_o_tma_matches_oracle > /tmp/fx/racecheck_otma.log 2>&1; echo "rc=$?" >> /tmp/fx/racecheck_otma.log
  timeout 60 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_combine_rows > /tmp/fx/memcheck_dec_rows.log 2>&1; echo "rc=$?" >> /tmp/fx/memcheck_dec_rows.log
  timeout 60 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_decode --exact gpu_decode_combine_rows > /tmp/fx/racecheck_dec_rows.log 2>&1; echo "rc=$?" >> /tmp/fx/racecheck_dec_rows.log
) &
( sleep 20; export ATTNC_CACHE_DIR=/tmp/attnc-cache-y ATTNC_EXAMPLES=$PWD/examples
  ATTNC_GPU_OTMA_CASES=0 timeout 200 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu --exact gpu_o_tma_matches_oracle > /tmp/fx/memcheck_otma.log 2>&1; echo "rc=$?" >> /tmp/fx/memcheck_otma.log
) &
( sleep 25; export ATTNC_CACHE_DIR=/tmp/attnc-cache-z ATTNC_EXAMPLES=$PWD/examples ATTNC_BWD_TEST_CFG=default+c
  for t in gpu_backward_samples_match_reference gpu_backward_is_deterministic gpu_backward_fully_masked_rows; do
    timeout 100 $B/gpu_backward --exact $t > /tmp/fx/bwd_c_$t.log 2>&1; echo "rc=$?" >> /tmp/fx/bwd_c_$t.log; done
  timeout 100 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_backward --exact gpu_backward_fused_sanitize > /tmp/fx/racecheck_bwd_c.log 2>&1; echo "rc=$?" >> /tmp/fx/racecheck_bwd_c.log
) &
(T=140 WGMMA=0 BWD_CFG=none bash .bin-fa/a.sh) > $OUT/a.log 2>&1
wait
echo "=== extras"; for f in /tmp/fx/*.log; do echo "$(basename $f): $(grep -hE "test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|kernels,|rc=" $f | tr '\n' ' ' | cut -c1-220)"; done
echo "=== rt21 paths bench"; ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_EXAMPLES=$PWD/examples ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,softcap_causal ATTNC_BWD_PATHS_ND=full,causal,alibi_causal,softcap_causal ATTNC_BWD_PATHS_ROUNDS=5 \
  timeout 60 $B/gpu_backward --ignored --exact gpu_backward_paths_bench --nocapture > /tmp/fo/paths.txt 2>&1; echo "paths rc=$?"
grep -E "attnc_bwd_paths|parts|panicked|rror" /tmp/fo/paths.txt | cut -c1-300
cp /tmp/fx/* /tmp/fo/ 2>/dev/null; tar -C /tmp/fo -cJf $OUT/a_logs.tar.xz .
tail -c 9000 $OUT/a.log
