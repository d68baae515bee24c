#!/usr/bin/env bash
# Session 34 call 4: main with session 34's D128 backward defaults (b27ccfa: two dQ writer
# threads + bulk statistics on dense and the causal-type closed forms). The kernel bench
# on the new defaults next to SDPA cuDNN's backward (same call); every gpu_backward test
# (one process each, in parallel after the benches); the package's gradient / backward
# tests and the training step (bench_gpu.py fwdbwd: attnc, compiled Flex, SDPA);
# head_dims.py again (its output kept this time). Carry .bin-s34 (release gpu_backward of
# b27ccfa, sdpa_bwd.py), .bin-py34 (the wheel of b27ccfa).
set -u
xz -dc .bin-s34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
B=/tmp/gpu_backward
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal,alibi_causal,softcap_causal \
ATTNC_BWD_BENCH_CFG=default,default \
  timeout 150 $B --ignored --exact gpu_backward_bench > $OUT/bench128.log 2>&1
grep -oE "attnc_bwd/[a-z_]+/\S+ \[[^]]+\]: [0-9.]+ ms [0-9.]+ TFLOP/s" $OUT/bench128.log
timeout 120 python3 .bin-s34/sdpa_bwd.py 2>&1 | grep -E "round|sdpa" | tail -4
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py34/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py34/tree && timeout 150 python3 python/bench/bench_gpu.py --parts fwdbwd --fwdbwd-cases dense,causal --budget-s 100 --out $OUT 2>&1 | grep -E "^forward" | tail -4)
(cd .bin-py34/tree && timeout 200 python3 python/bench/head_dims.py examples > $OUT/head_dims.log 2>&1; grep -Ev "Warning|warn\(|^W1204|^\s*$|SOLUTION|If you want|This will allow|_warn_once|torch._dynamo" $OUT/head_dims.log | head -40)
unset PYTHONPATH
for t in gpu_backward_samples_match_reference gpu_backward_head_dim_256 gpu_backward_fully_masked_rows gpu_backward_dlse \
         gpu_backward_is_deterministic gpu_backward_dq_schemes gpu_backward_convert_timeout gpu_backward_api_every_example \
         gpu_backward_capture_grads gpu_backward_fused_sanitize gpu_backward_wscan gpu_backward_element_orders gpu_backward_q80 \
         gpu_backward_persist gpu_backward_persist_dyn gpu_backward_caller_buffers gpu_backward_caller_device_tables \
         gpu_backward_nondeterministic gpu_backward_head_dim_256_mma_sync; do
  (timeout 300 $B --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) &
  while [ "$(jobs -r | wc -l)" -ge 8 ]; do sleep 1; done
done
for tool in racecheck memcheck; do
  (timeout 300 compute-sanitizer --tool $tool $B --exact gpu_backward_fused_sanitize > $OUT/s_$tool.log 2>&1; echo "rc=$?" >> $OUT/s_$tool.log) &
done
TESTS="gradients or backward or head_dim" NPROC=4 TEST_TIMEOUT=280 bash .bin-py34/python-gpu-select.sh 2>&1 | tail -6
cd "$root"
wait
for f in $OUT/t_*.log $OUT/s_*.log; do echo "== $(basename $f) $(grep -E 'test result|ERROR SUMMARY|RACECHECK SUMMARY|^rc=' $f | tr '\n' ' ')"; done
grep -hE "panicked|FAILED" $OUT/t_*.log | head -10
