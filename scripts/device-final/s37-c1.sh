#!/usr/bin/env bash
# Session 37 call 1 (cold; carry .bin-s36 (main's release gpu_backward of session 36),
# .bin-py36 (its wheel)): where the capture-gradient backward's time goes — the kernel
# bench of the relative-position table (relbias_full, a [H, 129] table's gradient) next to
# dense, ncu of its fused dK/dV kernel next to dense's, and a training step with a learned
# relative-position table / soft-cap through Python against compiled Flex (Triton)
# (python/bench/capture_grad_step.py: no capture-gradient anchor was ever measured).
set -u
mkdir -p /tmp/s37
xz -dc .bin-s36/gpu_backward.xz > /tmp/s37/gpu_backward; chmod +x /tmp/s37/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
B=/tmp/s37/gpu_backward
echo "== kernel bench D128 (median): dense, relbias_full"
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,relbias_full,softcap_param_causal ATTNC_BWD_BENCH_CFG=default \
  timeout 120 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error" | cut -c1-220
echo "== ncu: fused dK/dV kernel, relbias_full then dense"
which ncu
for v in relbias_full full; do
  ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=$v ATTNC_BWD_BENCH_CFG=default timeout 150 \
    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section LaunchStats --section SourceCounters -k regex:dkdv -s 3 -c 1 \
    $B --ignored --exact gpu_backward_bench > $OUT/ncu_$v.log 2>&1
  echo "-- $v rc=$?"
  grep -E "Duration|Executed Instructions |Issue Slots Busy|Executed Ipc Active|No Eligible|Warp Cycles Per Issued|Stall|Registers Per|Local Memory|Branch Instructions |Compute \(SM\) Throughput|L1/TEX Hit|L2 Hit|Memory Throughput|Avg. Active Threads|Local" $OUT/ncu_$v.log | head -40 | cut -c1-200
done
echo "== training step with learned captures: attnc vs compiled Flex (Triton)"
here=$root/.bin-py36; . .bin-py36/python-gpu-lib.sh; pygpu_install > /dev/null 2>&1
cd "$root"
(cd python/bench && PYTHONPATH=/tmp/attnc-py timeout 300 python3 capture_grad_step.py --no-flash --rounds 3 2>&1 \
  | grep -Ev "Warning|warn\(" | tail -30 | cut -c1-240)
