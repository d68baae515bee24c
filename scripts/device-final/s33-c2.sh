#!/usr/bin/env bash
# Session 33 call 2: gpu_backward_caller_device_tables with call 1's failing case fixed
# (the test's document + causal case at Lq > Lkv indexed the ids past their length in the
# oracle: Lq < Lkv now), alone and under compute-sanitizer memcheck / racecheck; the
# document + causal training step's device timeline without / with a block mask
# (doc_step_timeline.py). Carry .bin-s33 (gpu_backward.xz), .bin-py33.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s33/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
for tool in memcheck racecheck; do
  ( timeout 280 compute-sanitizer --tool $tool $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/s_${tool}_bwdtables.log 2>&1; echo "rc=$?" >> $OUT/s_${tool}_bwdtables.log ) &
done
rm -rf /tmp/attnc-py
TESTS="" bash .bin-py33/python-gpu-select.sh 2>&1 | tail -1
cd "$root"
(cd .bin-py33/tree/python/bench && PYTHONPATH=/tmp/attnc-py timeout 120 python3 doc_step_timeline.py $root/examples 2>&1 | grep -v -i warn)
timeout 200 $B/gpu_backward --exact gpu_backward_caller_device_tables > $OUT/t_tables.log 2>&1; echo "rc=$?" >> $OUT/t_tables.log
grep -E "ranges as|^test result|panicked|^rc=" $OUT/t_tables.log
wait
for f in $OUT/s_*.log; do echo "== $(basename $f)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result|^rc=|panicked" $f | head -6; done
