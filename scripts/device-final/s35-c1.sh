#!/usr/bin/env bash
# Session 35 call 1 (prepared, NOT run: no device machine was lent in session 35): the
# GPU checks of session 35's work, for the next session's first call —
#   * the Rust API's padded head dims on CUDA (`attnc::head_pad`):
#     gpu_backward_padded_head_dims (D96, D72, D80, D192/Dv128 bound through
#     `Variant::bind`: forward, backward with capture gradients and decoding against the
#     reference backend);
#   * attnc.flex on CUDA (test_flex.py's CUDA tests: ported closures over CUDA tensors,
#     forward against float64 and FlexAttention, gradients to a bias table and a
#     learnable soft-cap) and the package's head-dim tests (unchanged code path);
#   * the language's integer bitwise operators on the GPU: every example through the
#     forward (gpu_samples_match_oracle: examples/morton_natten.attn is new) and generated
#     programs (gpu_random_forward_bf16 / _backward_bf16: the generator now makes `& | ^
#     ! << >>`);
#   * session 34's unrun call 7 (two dQ writers + bulk statistics on the capture-gradient
#     D128 bindings: relative-bias table, learnable soft-cap param; racecheck).
# Build first (this machine): release gpu_backward, gpu (runtime) and gpu_random (tests
# crate) of HEAD into .bin-s35 (`CARGO_TARGET_DIR=/work/rel-target cargo test --release
# -p attnc --test gpu_backward --test gpu --no-run` and `-p attnc-tests --test gpu_random
# --no-run`, strip, xz -T2 -6 to .bin-s35/<name>.xz) and
# `bash scripts/python-gpu-pack.sh /work/main/.bin-py35`; carry .bin-s35, .bin-py35.
set -u
xz -dc .bin-s35/gpu_backward.xz > /tmp/gpu_backward; chmod +x /tmp/gpu_backward
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
root=$PWD
B=/tmp/gpu_backward
for n in gpu gpu_random; do xz -dc .bin-s35/$n.xz > /tmp/$n; chmod +x /tmp/$n; done
(timeout 240 $B --exact gpu_backward_padded_head_dims > $OUT/t_padded.log 2>&1; echo "rc=$?" >> $OUT/t_padded.log) &
(timeout 240 /tmp/gpu --exact gpu_samples_match_oracle > $OUT/t_samples.log 2>&1; echo "rc=$?" >> $OUT/t_samples.log
 for t in gpu_random_forward_bf16 gpu_random_backward_bf16; do
   timeout 200 /tmp/gpu_random --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log; done) &
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py" TESTS="flex or head_dim" NPROC=4 TEST_TIMEOUT=240 bash .bin-py35/python-gpu-select.sh 2>&1 | tail -6
cd "$root"
wait
echo "== padded: $(grep -E 'test result|^rc=' $OUT/t_padded.log | tr '\n' ' ')"; grep -E "matched|panicked" $OUT/t_padded.log | head -12
for f in $OUT/t_samples.log $OUT/t_gpu_random_*.log; do echo "== $(basename $f): $(grep -E 'test result|^rc=' $f | tr '\n' ' ')"; grep -E "morton|panicked" $f | head -4; done
grep -hE "^FAILED|^ERROR" $OUT/pytest_*.log | head
ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=relbias_full,softcap_param_causal \
ATTNC_BWD_BENCH_CFG=default,default+2+b,default,default+2+b \
  timeout 150 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error|refused|unknown" | grep -oE "^.{0,160}"
ATTNC_BWD_TEST_CFG=default+2+b timeout 150 compute-sanitizer --tool racecheck $B --exact gpu_backward_capture_sanitize 2>&1 \
  | grep -E "RACECHECK SUMMARY|test result|panicked|has no" | head -5
