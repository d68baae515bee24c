#!/usr/bin/env bash
# Session 34 call 6: b4d7b9c (D128's causal-type bindings keep their deterministic
# kernels under deterministic=False): gpu_backward_nondeterministic and _q80, the
# package's non-deterministic / determinism / gradient tests. Carry .bin-s34, .bin-py34.
set -u
xz -dc .bin-s34/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
for t in gpu_backward_nondeterministic gpu_backward_q80 gpu_backward_caller_buffers; do
  (timeout 200 /tmp/gpu_backward --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log) &
done
TESTS="deterministic or gradients or fused_backward" NPROC=4 TEST_TIMEOUT=200 bash .bin-py34/python-gpu-select.sh 2>&1 | tail -6
cd "$root"
wait
for f in $OUT/t_*.log; do echo "== $(basename $f) $(grep -E 'test result|^rc=' $f | tr '\n' ' ')"; grep -E "nondeterministic: free" $f | head -8; done
grep -hE "^FAILED|^ERROR" $OUT/pytest_*.log | head
