#!/usr/bin/env bash
# Session 46: where a capture-gradient backward's fused dK/dV kernel goes, next to dense's
# (B2 H16 L8192 D128 bf16, `attnc bench --grad`, the runtime's kernels, one launch of the
# fused kernel each, clocks left alone): duration, instructions, spills' local loads and
# stores, global loads / reductions / atomics, and the stall reasons per issued
# instruction. Usage (repo root, device): bash s46-ncu-caps.sh path/to/attnc
set -u
A=$1
export ATTNC_CACHE_DIR=/tmp/attnc-cache-ncu ATTNC_EXAMPLES=$PWD/examples
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
M=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__sass_inst_executed_op_local_ld.sum,smsp__sass_inst_executed_op_local_st.sum,smsp__sass_inst_executed_op_global_ld.sum,smsp__sass_inst_executed_op_global_red.sum,smsp__sass_inst_executed_op_global_atom.sum,smsp__sass_inst_executed_op_shared_ld.sum,smsp__sass_inst_executed_op_shared_st.sum,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
for ex in "dense.attn" "relative_bias_table.attn" "t5_relative_bias.attn --attention t5_encoder"; do
  tag=$(echo $ex | cut -d. -f1)$(echo $ex | grep -o 't5_encoder')
  timeout 120 "$NCU" --clock-control none --section WarpStateStats --metrics $M --page raw -k regex:bwd_dkdv --launch-skip 2 --launch-count 1 \
    "$A" bench examples/$ex --backend cuda --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 128 --iters 2 --grad \
    > /tmp/ncu_$tag.txt 2>&1
  echo "== ncu $tag rc=$?"
  grep -E "gpu__time_duration.sum|smsp__inst_executed.sum |op_local|op_global|op_shared|gmma_cycles|smsp__average_warp_latency_per_inst_issued|smsp__average_warps_issue_stalled_.*_per_issue_active.ratio" /tmp/ncu_$tag.txt \
    | awk '$NF+0 > 0.05 || /duration|inst_executed|op_/ {print "  "$1" = "$NF}' | head -40
  [ -n "${OUT:-}" ] && cp /tmp/ncu_$tag.txt "$OUT"/
done; true
