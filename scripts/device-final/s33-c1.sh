#!/usr/bin/env bash
# Session 33 call 1: the backward's block ranges made on the device for masks over
# captured tensors (block-table kernel at the backward's tiles + backward-ranges kernel):
# gpu_backward_caller_device_tables (ranges word for word as the host's, gradients
# bit-identical to Bound::backward's and within tolerance of the f64 oracle), the caller
# backward's other tests, compute-sanitizer memcheck / racecheck of the new test and of
# session 32's final builder (its call 8, not run then); the package's backward and
# document tests; bench_gpu.py fwdbwd document_causal (attnc without / with a block mask,
# compiled Flex, same process). Carry .bin-s33 (gpu_decode.xz, gpu_backward.xz; the
# `gpu` binary left out: the carry limit),
# .bin-py33.
set -u
B=/tmp/cb; mkdir -p $B
for n in gpu_decode gpu_backward; do xz -dc .bin-s33/$n.xz > $B/$n; chmod +x $B/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# the new test first, alone (its output quoted)
timeout 200 $B/gpu_backward --exact gpu_backward_caller_device_tables 2>&1 | grep -Ev "^\s*$" | tail -20
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py33/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py33/tree && timeout 150 python3 python/bench/bench_gpu.py --parts fwdbwd --fwdbwd-cases document_causal --budget-s 100 --out $OUT 2>&1 | grep -Ev "Warning|warn\(" | tail -12)
(cd .bin-py33/tree/python/bench && timeout 100 python3 kernel_timeline.py $root/examples 2>&1 | grep -v -i warn | tail -8)
unset PYTHONPATH
for t in gpu_backward_caller_buffers gpu_backward_api_every_example gpu_backward_capture_grads; do
  (timeout 280 $B/gpu_backward --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) &
done
for tool in memcheck racecheck; do
  ( timeout 280 compute-sanitizer --tool $tool $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/s_${tool}_bwdtables.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_bwdtables.log ) &
  ( timeout 280 compute-sanitizer --tool $tool $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents > $OUT/s_${tool}_docs.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_docs.log ) &

done
TESTS="gradients or backward or block_mask or document" NPROC=4 TEST_TIMEOUT=280 bash .bin-py33/python-gpu-select.sh 2>&1 | tail -6
cd "$root"
wait
for f in $OUT/t_*.log $OUT/s_*.log; do echo "== $(basename $f)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test |^test result|^rc=|panicked" $f | head -8; done
