#!/usr/bin/env bash
# Session 29 call 1: what session 28 left unrun (chunked prefill's runs routed by the run's
# forward kernel at D64, a204ca2; the caller-buffer decode without its fallback, 1edc60c)
# and the GPU backward at head dim 256 (dK / dV in column halves on the two-kernel wgmma
# path). Every gpu_decode test in parallel, memcheck on the D64 runs test; gpu_backward's
# D256 test, its memcheck / racecheck on one small case; the package's decode / chunked /
# paged / cache / D256 tests; the D256 backward bench next to Flex (Triton) and SDPA
# flash / cuDNN. Carry .bin-s29 (gpu_decode.xz, gpu_backward.xz: release builds of the
# tree) and .bin-py29 (python-gpu-pack.sh of the tree). Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
for t in gpu_decode gpu_backward; do xz -dc .bin-s29/$t.xz > $B/$t; chmod +x $B/$t; done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 300 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
( timeout 300 compute-sanitizer --tool memcheck $B/gpu_decode --exact gpu_decode_caller_runs_d64 > $OUT/s_memcheck_runs_d64.log 2>&1; echo "rc=$?" >> $OUT/s_memcheck_runs_d64.log ) &
( timeout 300 $B/gpu_backward --exact gpu_backward_head_dim_256 > $OUT/b_head_dim_256.log 2>&1; echo "rc=$?" >> $OUT/b_head_dim_256.log ) &
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log $OUT/s_*.log $OUT/b_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=" $f | tr '\n' ' ' | cut -c1-160)"
  grep -E "panicked" -A4 $f | head -6
done
grep -E "^  " $OUT/b_head_dim_256.log | tail -4
here=$(cd .bin-py29 && pwd); root=$PWD
TESTS="decode or chunk or paged or cache or head_dim_256" NPROC=6 TEST_TIMEOUT=240 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -8
grep -hE "FAILED|Error" $OUT/pytest_*.log 2>/dev/null | head -10
cd "$root"
t1=$(date +%s)
ATTNC_BWD_BENCH_D=256 ATTNC_BWD_BENCH_ONLY=full,causal,sliding1024,softcap_causal,doc_causal timeout 150 $B/gpu_backward --ignored --exact gpu_backward_bench 2>&1 | grep -E "attnc_bwd|D256" | cut -c1-220
echo "attnc bench: $(( $(date +%s) - t1 )) s"
ATTNC_TORCH_SHAPES=D256 ATTNC_TORCH_ONLY=full,causal,sliding1024,softcap_causal,doc_causal timeout 200 python3 scripts/gpu_bench_torch_bwd.py 2>&1 | grep -v Warning | tail -22
