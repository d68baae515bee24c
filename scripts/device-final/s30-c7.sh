#!/usr/bin/env bash
# Session 30 call 7 (final check, main f991d1f: the D256 path and the review): every gpu_decode test in its own
# process and the package's whole CUDA test file in 8 processes. Carry .bin-s30 and
# .bin-py30. Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in $($B/gpu_decode --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 400 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
TESTS="not zz_no_such_test" NPROC=8 TEST_TIMEOUT=400 bash .bin-py30/python-gpu-select.sh > $OUT/py.log 2>&1
wait $(jobs -p); echo "all: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|^rc=" $f | tr '\n' ' ' | cut -c1-100)"
  grep -E "panicked" -A4 $f | head -6
done
tail -12 $OUT/py.log
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
