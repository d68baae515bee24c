#!/usr/bin/env bash
# Session 29 call 2: the D256 backward's dK/dV kernel with two warpgroups on one kv tile
# (a column half each; call 1 ran one CTA per half). gpu_backward's D256 test (kernels'
# PTX dumped for ptxas), memcheck / racecheck of its small case, the whole gpu_backward
# suite, the package's backward tests, the D256 bench next to Flex (Triton) and SDPA
# flash / cuDNN. Carry .bin-s29 (gpu_backward.xz) and .bin-py29. Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
for t in gpu_backward; do xz -dc .bin-s29/$t.xz > $B/$t; chmod +x $B/$t; done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( ATTNC_PTX_DUMP=/tmp/ptx timeout 300 $B/gpu_backward --exact gpu_backward_head_dim_256 > $OUT/b_head_dim_256.log 2>&1; echo "rc=$?" >> $OUT/b_head_dim_256.log ) &
for tool in memcheck racecheck; do
  ( timeout 300 compute-sanitizer --tool $tool $B/gpu_backward --exact gpu_backward_d256_sanitize > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log ) &
done
for t in $($B/gpu_backward --list 2>/dev/null | grep ': test' | sed 's/: test//' | grep -v -E "head_dim_256|d256_sanitize"); do
  ( timeout 300 $B/gpu_backward --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
tar cJf $OUT/ptx256.tar.xz -C /tmp ptx 2>/dev/null
for f in $OUT/b_*.log $OUT/s_*.log $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-150)"
  grep -E "panicked" -A4 $f | head -6
done
root=$PWD
TESTS="head_dim_256 or gradients or backward" NPROC=6 TEST_TIMEOUT=240 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -8
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"
ATTNC_BWD_BENCH_D=256 ATTNC_BWD_BENCH_ONLY=full,causal,sliding1024,softcap_causal,doc_causal timeout 150 $B/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "attnc_bwd|D256" | cut -c1-220
ATTNC_TORCH_SHAPES=D256 ATTNC_TORCH_ONLY=full,causal,softcap_causal timeout 200 python3 scripts/gpu_bench_torch_bwd.py 2>&1 | grep -v Warning | tail -14
