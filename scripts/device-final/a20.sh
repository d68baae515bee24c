#!/usr/bin/env bash
# session 20 final check call A: a.sh (every GPU test binary, bwd bench) + compute-sanitizer memcheck / racecheck of fwd20's
# o_tma (O through the staging buffer + TMA stores) and of dec20's wgmma decode kernel in the background, then the runtime backward (not deterministic)
set -u
mkdir -p /tmp/fo /tmp/fx; B=/tmp/fa
( sleep 15; export ATTNC_CACHE_DIR=/tmp/attnc-cache-x ATTNC_EXAMPLES=$PWD/examples
  ATTNC_GPU_OTMA_CASES=3 timeout 200 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu --exact gpu_o_tma_matches_oracle > /tmp/fx/racecheck_otma.log 2>&1; echo "rc=$?" >> /tmp/fx/racecheck_otma.log
) &
( sleep 20; export ATTNC_CACHE_DIR=/tmp/attnc-cache-y ATTNC_EXAMPLES=$PWD/examples
  ATTNC_GPU_OTMA_CASES=0 timeout 200 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu --exact gpu_o_tma_matches_oracle > /tmp/fx/memcheck_otma.log 2>&1; echo "rc=$?" >> /tmp/fx/memcheck_otma.log
  timeout 60 compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_decode --exact gpu_decode_wgmma > /tmp/fx/racecheck_dec_wgmma.log 2>&1; echo "rc=$?" >> /tmp/fx/racecheck_dec_wgmma.log
) &
(T=140 WGMMA=0 BWD_CFG=none bash .bin-fa/a.sh) > $OUT/a.log 2>&1
wait
echo "=== extras"; for f in /tmp/fx/*.log; do echo "$(basename $f): $(grep -hE "test result|ERROR SUMMARY|RACECHECK SUMMARY|panicked|rc=" $f | tr '\n' ' ' | cut -c1-200)"; done
echo "=== bwd runtime ND"; ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_EXAMPLES=$PWD/examples ATTNC_BWD_BENCH_ND=1 timeout 40 $B/gpu_backward --ignored gpu_backward_runtime_bench --nocapture 2>&1 | grep -E "TFLOP|panicked" | cut -c1-160
cp /tmp/fx/* /tmp/fo/ 2>/dev/null; tar -C /tmp/fo -cJf $OUT/a_logs.tar.xz .
tail -c 10500 $OUT/a.log
