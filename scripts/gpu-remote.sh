#!/usr/bin/env bash
# Runs on the GPU machine (from the repo root, with .bin carried): GPU tests vs the oracle,
# compute-sanitizer memcheck + racecheck on small kernels, the attnc benchmark, PyTorch
# FlexAttention/SDPA/cuDNN in the same run, and a side-by-side table. Logs go to $OUT.
#   ATTNC_QUICK=1   tests + dense/causal bench only, no sanitizers, no torch
#   ATTNC_SKIP=tests,sanitizer,bench,torch,backward,random   skip steps (random: the
#                generated-program tests of every pass, `gpu_random`; backward: the GPU
#                backward's tests, sanitizers, benchmark and torch backward anchors)
set -uo pipefail
OUT=${OUT:-/tmp/attnc-out}; mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)   # the packed folder (.bin, or ATTNC_BIN_DIR)
bin=/tmp/attnc-bin; mkdir -p "$bin"
for f in "$here"/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
skip=${ATTNC_SKIP:-}
[ -n "${ATTNC_QUICK:-}" ] && skip="$skip,sanitizer,torch" && export ATTNC_BENCH_QUICK=1
has() { [[ ",$skip," != *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
export ATTNC_PTX_DUMP=$OUT/ptx
status=0
if has tests; then
  echo "== GPU tests (vs oracle) =="
  timeout 480 "$bin/gpu" --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" | grep -Ev "^\s+ok " ; s=${PIPESTATUS[0]}
  [ "$s" = 0 ] || status=1
fi
if has tests && has backward; then
  echo "== GPU backward tests (vs f64 reference) =="
  timeout 300 "$bin/gpu_backward" 2>&1 | tee "$OUT/backward_tests.log" | grep -Ev "^\s+(dq|dk|dv):" ; s=${PIPESTATUS[0]}
  [ "$s" = 0 ] || status=1
fi
if has sanitizer && has backward; then
  echo "== compute-sanitizer on the backward kernels =="
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu_backward" gpu_backward_fully_masked_rows 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu_backward" gpu_backward_dlse 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/gpu_backward" gpu_backward_fully_masked_rows 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/gpu_backward" gpu_backward_dlse 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu_backward" gpu_backward_capture_sanitize 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if has tests && [ -x "$bin/gpu_decode" ]; then
  echo "== GPU decode tests (split-KV + combine kernels vs the cache oracle) =="
  timeout 300 "$bin/gpu_decode" 2>&1 | tee "$OUT/decode_tests.log" ; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if has tests && has random && [ -x "$bin/gpu_random" ]; then
  echo "== generated programs: forward, backward, decoding vs the oracle (bf16, f16) =="
  timeout 300 "$bin/gpu_random" 2>&1 | tee "$OUT/random_tests.log" ; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if has sanitizer && [ -x "$bin/gpu_decode" ]; then
  echo "== compute-sanitizer on the decode kernels =="
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu_decode" gpu_decode_sanitize 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/gpu_decode" gpu_decode_sanitize 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if has sanitizer; then
  echo "== compute-sanitizer memcheck =="
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu" gpu_all_partial_maps --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu" gpu_checked_mode --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu" gpu_closed_form_param --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  echo "== compute-sanitizer racecheck =="
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/gpu" gpu_all_partial_maps --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  echo "== compute-sanitizer on the block-table kernel =="
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/gpu" gpu_checked_mode_with_gpu_tables --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
  timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/gpu" gpu_forward_with_gpu_tables --test-threads=1 2>&1 | tail -4; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if has bench; then
  echo "== attnc benchmark =="
  timeout 400 "$bin/gpu_bench" --ignored --nocapture --test-threads=1 --exact gpu_bench 2>&1 | tee "$OUT/bench.log" | grep -Ev "^(running|test result|$)"
  echo "== block table built on the GPU vs host (document + causal) =="
  timeout 200 "$bin/gpu_bench" --ignored --nocapture --test-threads=1 --exact gpu_bench_block_table 2>&1 | tee -a "$OUT/bench.log" | grep -Ev "^(running|test result|$)"
fi
if has bench && has backward; then
  echo "== attnc backward benchmark =="
  timeout 300 "$bin/gpu_backward" --ignored bench 2>&1 | tee "$OUT/backward_bench.log" | grep -E "attnc_bwd|D[0-9]+:|FAILED|----"
fi
if has torch && has backward; then
  echo "== PyTorch FlexAttention / SDPA backward anchors (same run) =="
  PYTHONUNBUFFERED=1 timeout 400 python3 "$here/gpu_bench_torch_bwd.py" "$OUT/attnc_bwd_bench.json" 2>&1 | grep -v Warning | tee "$OUT/torch_bwd.log"
fi
if has ptxas && [ -d "$OUT/ptx" ]; then
  echo "== ptxas resource usage =="
  for f in "$OUT"/ptx/*.ptx; do
    arch=sm_90; grep -q '^.target sm_90a' "$f" && arch=sm_90a
    ptxas -arch=$arch -v "$f" -o /dev/null > "$f.ptxas" 2>&1
    echo "$(basename "$f") ($arch): $(grep -Eo 'Used [0-9]+ registers|[0-9]+ bytes spill (stores|loads)' "$f.ptxas" | tr '\n' ' ')"
    grep -E 'C75[0-9][0-9]|wgmma' "$f.ptxas" | head -3
  done
fi
if has torch; then
  echo "== PyTorch FlexAttention / SDPA flash / cuDNN (same run) =="
  PYTHONUNBUFFERED=1 timeout 400 python3 "$here/gpu_bench_torch.py" "$OUT/attnc_bench.json" 2>&1 | grep -v Warning | tee "$OUT/torch.log"
fi
exit $status
