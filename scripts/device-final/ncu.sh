#!/usr/bin/env bash
# issue 11's ncu figures: dense and causal D128 (B2 H16 L8192 bf16) through `attnc bench`
# (the runtime's kernels), one launch each, clocks left alone, the sections of session 7's
# "before" (docs/performance.md). Usage on the device, repo root: bash ncu.sh path/to/attnc
# (call B: NCU=1 bash .bin-fb/b.sh runs it with its attnc). Full output to $OUT when set.
set -u
A=$1
export ATTNC_CACHE_DIR=/tmp/attnc-cache-ncu ATTNC_EXAMPLES=$PWD/examples
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for ex in dense causal; do
  timeout 60 "$NCU" --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section WarpStateStats --page raw -k regex:attnc --launch-skip 4 --launch-count 1 \
    "$A" bench examples/$ex.attn --backend cuda --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 128 --iters 2 \
    > /tmp/ncu_$ex.txt 2>&1
  echo "ncu $ex rc=$?"
  grep -E "gpu__time_duration.sum|sm__cycles_elapsed.avg.per_second|pipe_tensor.*pct|sm__inst_executed.avg.per_cycle_active |smsp__average_warp_latency_per_inst_issued|smsp__average_warps_issue_stalled_.*_per_issue_active.ratio|dram__throughput.avg.pct|lts__throughput.avg.pct" /tmp/ncu_$ex.txt | awk '{print "  "$1" = "$NF}' | head -40
  [ -n "${OUT:-}" ] && cp /tmp/ncu_$ex.txt "$OUT"/
done; true
