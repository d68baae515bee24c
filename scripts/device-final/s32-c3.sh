#!/usr/bin/env bash
# Session 32 calls 3-6 (the block-table builder's walk; call 3: the walk stopping where
# the trusted closed form says L holds on the whole tile, the query side's range once per
# CTA; call 4: run kind 2 = N wherever L; call 5: rows spread over the tile; call 6: a
# tile where L holds everywhere stopping at its first true point, the last rows in each
# step): kernel times (profile_kernels.py, kernel_timeline.py), with CHUNKED=flex (call
# 4) or CHUNKED=noflex (calls 5, 6) the chunked documents prefill (chunked_prefill_documents.py)
# and the documents forward through Python against Flex (doc_forward.py), with WALK=1
# (call 6) the walk simulated on the profile's ids (builder_walk.py); then the block-table
# GPU tests (brute force; the four table tests, one process each — call 3 passed them as
# one filter list, which the harness refused, so they ran from call 4 on), the documents'
# chunked prefill test and the package's document tests.
# Carry .bin-s32 (gpu.xz, gpu_decode.xz), .bin-py32.
set -u
B=/tmp/cb; mkdir -p $B
for n in gpu gpu_decode; do xz -dc .bin-s32/$n.xz > $B/$n; chmod +x $B/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py32/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
export PYTHONPATH=/tmp/attnc-py
bench=.bin-py32/tree/python/bench
(cd $bench && timeout 120 python3 profile_kernels.py --examples $root/examples 2>&1 | grep -v -i warn)
(cd $bench && timeout 120 python3 kernel_timeline.py $root/examples 2>&1 | grep -v -i warn)
case "${CHUNKED:-}" in
  flex|noflex)
    flag=$([ "$CHUNKED" = noflex ] && echo --no-flex)
    # shellcheck disable=SC2086
    (cd $bench && timeout 150 python3 chunked_prefill_documents.py $flag --examples $root/examples 8,32,8,512,8192 8,32,8,256,8192 2>&1 | grep -v -i warn)
    (cd $bench && timeout 100 python3 doc_forward.py --examples $root/examples 2>&1 | grep -v -i warn | tail -6)
    ;;
esac
[ "${WALK:-0}" = 1 ] && (cd $bench && timeout 60 python3 builder_walk.py 8,512,8192 8,256,8192 2>&1 | grep -v -i warn | head -14)
unset PYTHONPATH
(timeout 250 $B/gpu --exact gpu_block_tables_match_brute_force > $OUT/t_brute.log 2>&1; echo "rc=$?" >> $OUT/t_brute.log) &
tables="gpu_forward_with_gpu_tables_matches_oracle gpu_forward_reuses_and_rebuilds_tables gpu_checked_mode_with_gpu_tables gpu_api_closed_form_and_table_agree_with_reference"
for t in $tables; do (timeout 250 $B/gpu --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) & done
(timeout 250 $B/gpu_decode gpu_decode_caller_prefill_device_documents > $OUT/t_dec.log 2>&1; echo "rc=$?" >> $OUT/t_dec.log) &
TESTS="document" NPROC=4 TEST_TIMEOUT=240 bash .bin-py32/python-gpu-select.sh 2>&1 | tail -4
cd "$root"
wait
for f in t_brute t_dec $(for t in $tables; do echo t_$t; done); do echo "== $f"; grep -E "^test |^test result|^rc=|panicked" $OUT/$f.log | head -12; done
