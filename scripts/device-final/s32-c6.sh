#!/usr/bin/env bash
# Session 32 call 6 (as call 5; a document tile walked where L holds everywhere stops at its first true point, each step sees the last rows): the block-table builder's walk stopping where the trusted closed
# form says the linear conjuncts hold on the whole tile, the query side's range read
# once per CTA: kernel times (profile_kernels.py, kernel_timeline.py), then the
# block-table GPU tests (brute force, tables against the oracle, documents' chunked
# prefill) and the package's document tests. Carry .bin-s32 (gpu.xz, gpu_decode.xz), .bin-py32.
set -u
B=/tmp/cb; mkdir -p $B
for n in gpu gpu_decode; do xz -dc .bin-s32/$n.xz > $B/$n; chmod +x $B/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py32/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
(cd .bin-py32/tree/python/bench && timeout 120 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v -i warn)
(cd .bin-py32/tree/python/bench && timeout 120 python3 kernel_timeline.py $root/examples 2>&1 | grep -v -i warn)
(cd .bin-py32/tree/python/bench && timeout 150 python3 chunked_prefill_documents.py --no-flex --examples $root/examples 8,32,8,512,8192 8,32,8,256,8192 2>&1 | grep -v -i warn)
(cd .bin-py32/tree/python/bench && timeout 100 python3 doc_forward.py --examples $root/examples 2>&1 | grep -v -i warn | tail -6)
(cd .bin-py32/tree/python/bench && timeout 60 python3 builder_walk.py 8,512,8192 8,256,8192 2>&1 | grep -v -i warn | head -14)
unset PYTHONPATH
(timeout 250 $B/gpu --exact gpu_block_tables_match_brute_force > $OUT/t_brute.log 2>&1; echo "rc=$?" >> $OUT/t_brute.log) &
for t in gpu_forward_with_gpu_tables_matches_oracle gpu_forward_reuses_and_rebuilds_tables gpu_checked_mode_with_gpu_tables gpu_api_closed_form_and_table_agree_with_reference; do (timeout 250 $B/gpu --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) & done
(timeout 250 $B/gpu_decode gpu_decode_caller_prefill_device_documents > $OUT/t_dec.log 2>&1; echo "rc=$?" >> $OUT/t_dec.log) &
TESTS="document" NPROC=4 TEST_TIMEOUT=240 bash .bin-py32/python-gpu-select.sh 2>&1 | tail -4
cd "$root"
wait
for f in t_brute t_dec t_gpu_forward_with_gpu_tables_matches_oracle t_gpu_forward_reuses_and_rebuilds_tables t_gpu_checked_mode_with_gpu_tables t_gpu_api_closed_form_and_table_agree_with_reference; do echo "== $f"; grep -E "^test |^test result|^rc=|panicked" $OUT/$f.log | head -12; done
