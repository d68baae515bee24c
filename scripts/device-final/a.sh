#!/usr/bin/env bash
# final GPU check, call A: every GPU test binary in parallel processes (gpu on its three matrix paths, WGMMA=0 leaves out the plain wgmma one; gpu_backward on the default and, with ATTNC_BWD_TEST_CFG=wg64x128o, the Ordered scheme; racecheck of both fused kernels; gpu_decode; gpu_random), then the backward bench (the default = the runtime's choice per binding, bwd_lpt for causal-type masks since session 8, on every variant at both shapes; other schemes on three) and the backward through the runtime's caller path (gpu_backward_runtime_bench, D128). Logs are copied to $OUT.
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/fa; rm -rf /tmp/fo; mkdir -p $B /tmp/fo
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
T=${T:-170}; t0=$(date +%s)
run() { local name=$1; shift; ( "$@" > /tmp/fo/$name.log 2>&1; echo "rc=$?" >> /tmp/fo/$name.log ) & }
export ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_EXAMPLES=$PWD/examples
for b in $B/*; do n=$(basename $b); case $n in
  # gpu takes ~215 s on each path since session 7 (the dynamic schedule doubled the persistent test); session 13: the ws path
  # was cut at 270 s (3 JIT tests not reached) and gpu_decode at 270 s (copy variants x3 bindings): both get T + 170
  # session 10's warp-specialized path was cut at 240 s beside the others (4 of 21 tests not reached)
  gpu) TG=$((T + 170)); ATTNC_GPU_MMA=sync run gpu_sync timeout $TG $b; [ "${WGMMA:-1}" = 1 ] && ATTNC_GPU_MMA=wgmma run gpu_wgmma timeout $TG $b; # (session 15: the ws path in two processes, the mask/table tests and the rest: session 14's single process was cut after 17 of 23)
    ATTNC_GPU_MMA=ws run gpu_ws timeout $TG $b --skip gpu_jit --skip gpu_lpt --skip gpu_persistent --skip gpu_q_from_end --skip gpu_cross_tile --skip gpu_late_wait --skip gpu_d256
    ATTNC_GPU_MMA=ws run gpu_ws2 timeout $TG $b --skip gpu_samples --skip gpu_all_partial --skip gpu_fully_masked --skip gpu_negative --skip gpu_checked_mode --skip gpu_block_tables --skip gpu_forward --skip gpu_closed_form --skip gpu_api;;
  gpu_random) ATTNC_CASES=${CASES:-15} run gpu_random timeout $T $b;;
  # gpu_backward: 12 tests since session 11; cut at 140 s beside the others after 9 (the other 3 took 5 s alone)
  gpu_backward) run gpu_backward timeout $((T + 60)) $b; ATTNC_BWD_TEST_CFG=wg64x128o run gpu_backward_ordered timeout $((T + 60)) $b
    run racecheck_bwd_fused timeout $T compute-sanitizer --tool racecheck --print-limit 5 $b --exact gpu_backward_fused_sanitize
    ATTNC_BWD_TEST_CFG=wg64x128o run racecheck_bwd_ordered timeout $T compute-sanitizer --tool racecheck --print-limit 5 $b --exact gpu_backward_fused_sanitize;;
  # gpu_decode: 13 tests since session 10 (the chunked prefill ones); cut at 220 s beside the
  # others in session 10's check after 5 (the other 8 took 51 s alone)
  gpu_decode) run $n timeout $((T + 170)) $b
    # (session 11: the decode kernel reads its prologue before griddepcontrol.wait by default: memcheck and racecheck it)
    run memcheck_decode timeout $T compute-sanitizer --tool memcheck --print-limit 5 $b --exact gpu_decode_sanitize
    run racecheck_decode timeout $T compute-sanitizer --tool racecheck --print-limit 5 $b --exact gpu_decode_sanitize
    # (session 12: one split per item runs the direct kernel, no combine; the sanitize cases use 3 splits by default)
    ATTNC_DECODE_SPLITS=1 run memcheck_decode_direct timeout $T compute-sanitizer --tool memcheck --print-limit 5 $b --exact gpu_decode_sanitize
    ATTNC_DECODE_SPLITS=1 run racecheck_decode_direct timeout $T compute-sanitizer --tool racecheck --print-limit 5 $b --exact gpu_decode_sanitize;;
  *) run $n timeout $T $b;;
esac; done
wait; echo "tests: $(( $(date +%s) - t0 )) s"
for f in /tmp/fo/*.log; do echo "=== $(basename $f)"; grep -E "^test |test result|FAILED|panicked|rc=|SKIPPED|cases passed|SUMMARY" $f | grep -v " ok$" | cut -c1-180 | head -24; done
for f in /tmp/fo/*.log; do grep -q "rc=0" $f || { echo "=== FULL TAIL $(basename $f)"; tail -25 $f | cut -c1-300; }; done
echo "=== bwd bench"; t0=$(date +%s)
ATTNC_BWD_BENCH_CFG=default timeout 120 $B/gpu_backward --ignored gpu_backward_bench --nocapture > /tmp/fo/bwd_bench_all.txt 2>&1
grep -v "^$" /tmp/fo/bwd_bench_all.txt | tail -20 | cut -c1-200
# BWD_CFG=none leaves out the other schemes
if [ "${BWD_CFG:-}" != none ]; then
ATTNC_BWD_BENCH_CFG=${BWD_CFG:-wg64x128bt,wg64x128o,separate} ATTNC_BWD_BENCH_ONLY=full,causal,softcap_causal timeout 120 $B/gpu_backward --ignored gpu_backward_bench --nocapture > /tmp/fo/bwd_bench_cfg.txt 2>&1
grep -v "^$" /tmp/fo/bwd_bench_cfg.txt | tail -16 | cut -c1-200
fi
# the backward as users run it: Bound::backward_cuda_into, the runtime's kernels through its JIT
timeout 40 $B/gpu_backward --ignored gpu_backward_runtime_bench --nocapture > /tmp/fo/bwd_bench_runtime.txt 2>&1
grep -E "TFLOP|panicked" /tmp/fo/bwd_bench_runtime.txt | cut -c1-160
echo "bwd bench: $(( $(date +%s) - t0 )) s"
[ -n "${OUT:-}" ] && cp /tmp/fo/* "$OUT"/ 2>/dev/null; true
