#!/usr/bin/env bash
# Session 29 call 6 (final check, the tree of call 5): every gpu_backward test in parallel
# processes (the dQ grid now from the kernel's spec on the host path) and the package's
# whole CUDA test file in 8 processes. Carry .bin-s29 and .bin-py29. Logs under $OUT.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s29/gpu_backward.xz > $B/gpu_backward; chmod +x $B/gpu_backward
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
for t in $($B/gpu_backward --list 2>/dev/null | grep ': test' | sed 's/: test//'); do
  ( timeout 300 $B/gpu_backward --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
wait $(jobs -p); echo "rust tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|^rc=" $f | tr '\n' ' ' | cut -c1-110)"
  grep -E "panicked" -A4 $f | head -6
done
TESTS="not zz_no_such_test" NPROC=8 TEST_TIMEOUT=330 bash .bin-py29/python-gpu-select.sh 2>&1 | tail -12
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
