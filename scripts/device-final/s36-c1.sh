#!/usr/bin/env bash
# Session 36 call 1 (cold): the GPU checks that session 35 prepared and could not run
# (s35-c1.sh: padded head dims through the Rust API, attnc.flex on CUDA, every example and
# generated programs with bitwise operators on the GPU, two dQ writers + bulk statistics
# on the capture-gradient D128 bindings with racecheck), then session 36's known bits
# (Morton neighbourhood attention, python/bench/morton_natten.py, against compiled Flex).
# Leaves the binaries in /tmp/s36 and the wheel in /tmp/attnc-py for calls 2-4 on the
# same warm machine. Build first (this machine): release gpu_backward, gpu (runtime),
# gpu_random (tests crate) and the `attnc` CLI (strip, xz -T2 -6, NAME.xz; 13 MiB each)
# into .bin-s36 (gpu_backward, gpu: call 1), .bin-s36b (attnc: call 2) and .bin-s36c
# (gpu_random: call 4), `bash scripts/python-gpu-pack.sh /work/main/.bin-py36`; carry
# .bin-s36, .bin-py36 (61 MiB with the checkout; generated programs on the GPU moved to
# call 4 for want of room).
set -u
mkdir -p /tmp/s36
for n in gpu_backward gpu; do xz -dc .bin-s36/$n.xz > /tmp/s36/$n; chmod +x /tmp/s36/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
B=/tmp/s36/gpu_backward
(timeout 240 $B --exact gpu_backward_padded_head_dims > $OUT/t_padded.log 2>&1; echo "rc=$?" >> $OUT/t_padded.log) &
(timeout 240 /tmp/s36/gpu --exact gpu_samples_match_oracle > $OUT/t_samples.log 2>&1; echo "rc=$?" >> $OUT/t_samples.log) &
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py" TESTS="flex or head_dim" NPROC=4 TEST_TIMEOUT=240 bash .bin-py36/python-gpu-select.sh 2>&1 | tail -6
cd "$root"
wait
echo "== padded: $(grep -E 'test result|^rc=' $OUT/t_padded.log | tr '\n' ' ')"; grep -E "matched|panicked" $OUT/t_padded.log | head -12
for f in $OUT/t_samples.log; do echo "== $(basename $f): $(grep -E 'test result|^rc=' $f | tr '\n' ' ')"; grep -E "morton|panicked" $f | head -4; done
grep -hE "^FAILED|^ERROR" $OUT/pytest_*.log | head
echo "== capture-gradient bindings: default vs +2+b (two writers, bulk statistics), D128"
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=relbias_full,softcap_param_causal \
ATTNC_BWD_BENCH_CFG=default,default+2+b,default,default+2+b \
  timeout 150 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error|refused|unknown" | grep -oE "^.{0,160}"
ATTNC_BWD_TEST_CFG=default+2+b timeout 150 compute-sanitizer --tool racecheck $B --exact gpu_backward_capture_sanitize 2>&1 \
  | grep -E "RACECHECK SUMMARY|test result|panicked|has no" | head -5
echo "== morton neighbourhood attention (known bits): attnc vs compiled Flex (Triton)"
(cd python/bench && PYTHONPATH=/tmp/attnc-py PYTHONUNBUFFERED=1 timeout 150 python3 morton_natten.py 64,64,7,4,16 128,128,15,1,16 2>&1 | grep -E "morton|Error|error" | tail -6)
