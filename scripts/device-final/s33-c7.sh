#!/usr/bin/env bash
# Session 33 call 7: chunked prefill with the lengths on the device for masks without a
# closed form over no tensor (block tables built on the GPU per sequence): the GPU test
# (gpu_decode_caller_prefill_device, now with chunked + causal and NATTEN), the
# documents' test, the backward's device-ranges test on the final runtime; the bench of
# chunked + causal against compiled Flex and against the split-KV kernels (the path
# before: ATTNC_DECODE_PREFILL=0); the document training step (bench_gpu.py fwdbwd
# document_causal, twice) and the package's prefill / decode / document tests.
# Carry .bin-s33 (gpu_decode.xz, gpu_backward.xz), .bin-py33.
set -u
B=/tmp/cb; mkdir -p $B
for n in gpu_decode gpu_backward; do xz -dc .bin-s33/$n.xz > $B/$n; chmod +x $B/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
(timeout 280 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_prefill.log 2>&1; echo "rc=$?" >> $OUT/t_prefill.log) &
(timeout 280 $B/gpu_decode --exact gpu_decode_caller_prefill_device_documents > $OUT/t_docs.log 2>&1; echo "rc=$?" >> $OUT/t_docs.log) &
(timeout 280 $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/t_bwd.log 2>&1; echo "rc=$?" >> $OUT/t_bwd.log) &
wait
for f in t_prefill t_docs t_bwd; do echo "== $f"; grep -E "^test result|panicked|^rc=" $OUT/$f.log | head -5; done
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py33/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
bench=.bin-py33/tree/python/bench
(cd $bench && timeout 150 python3 chunked_prefill_documents.py --mask chunked --examples $root/examples 8,32,8,512,8192 8,32,8,256,8192 2>&1 | grep -v -i warn)
(cd $bench && ATTNC_DECODE_PREFILL=0 timeout 100 python3 chunked_prefill_documents.py --mask chunked --no-flex --examples $root/examples 8,32,8,512,8192 2>&1 | grep -v -i warn | tail -3)
for i in 1 2; do
  (cd .bin-py33/tree && timeout 120 python3 python/bench/bench_gpu.py --parts fwdbwd --fwdbwd-cases document_causal --budget-s 100 --out $OUT 2>&1 | grep "^forward+backward")
done
unset PYTHONPATH
TESTS="prefill or decode or document" NPROC=4 TEST_TIMEOUT=200 bash .bin-py33/python-gpu-select.sh 2>&1 | tail -6
