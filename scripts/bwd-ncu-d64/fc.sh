#!/usr/bin/env bash
# bwd64n for the final check: bwd_stats_bulk (`+b`: the TMA producer's L2 / Delta rows by two
# cp.async.bulk on the buffer's full barrier, FA4's load_LSE / load_dPsum, instead of per-lane
# global loads + shared stores) against the default, one process, interleaved: D64 B4 H16
# L4096 dense x3, causal x2, then D128 B2 H16 L8192 dense / causal x1 if time is left; then
# the GPU tests with ATTNC_BWD_TEST_CFG=default+b (samples, determinism, fully-masked rows,
# racecheck of the fused kernel; in parallel). < 60 s (FC_S) from the repo root, carry
# .bin-bwd64n (the branch's release gpu_backward). Writes $OUT/bwd64n_fc*.txt, bwd64n_t_*.log.
set -u
t0=$SECONDS; FC_S=${FC_S:-58}
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/bwd64n-out}; mkdir -p "$OUT"
B=/tmp/bwd64nb; mkdir -p $B
[ -x $B/gpu_backward ] || { xz -dc "$here/gpu_backward.xz" > $B/gpu_backward; chmod +x $B/gpu_backward; }
export ATTNC_EXAMPLES=$PWD/examples
ATTNC_CACHE_DIR=/tmp/c7 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=full \
  ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b,default,default+b \
  timeout 16 $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > "$OUT/bwd64n_fc_dense.txt" 2>&1
echo "bwd64n fc dense rc=$? ($((SECONDS - t0)) s)"
ATTNC_CACHE_DIR=/tmp/c7 ATTNC_BWD_BENCH_D=64 ATTNC_BWD_BENCH_ONLY=causal \
  ATTNC_BWD_BENCH_CFG=default,default+b,default,default+b \
  timeout 10 $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > "$OUT/bwd64n_fc_causal.txt" 2>&1
echo "bwd64n fc causal rc=$? ($((SECONDS - t0)) s)"
if [ $((SECONDS - t0)) -lt $((FC_S - 45)) ]; then
  ATTNC_CACHE_DIR=/tmp/c7 ATTNC_BWD_BENCH_D=128 ATTNC_BWD_BENCH_ONLY=full,causal \
    ATTNC_BWD_BENCH_CFG=default,default+b \
    timeout 12 $B/gpu_backward --ignored --exact gpu_backward_bench --nocapture > "$OUT/bwd64n_fc_d128.txt" 2>&1
  echo "bwd64n fc d128 rc=$? ($((SECONDS - t0)) s)"
fi
grep -hE "TFLOP|panicked" "$OUT"/bwd64n_fc*.txt | cut -c1-200
left=$(( FC_S - 3 - SECONDS + t0 )); [ $left -lt 5 ] && left=5
run() { local name=$1; shift; ( "$@" > "$OUT/bwd64n_$name.log" 2>&1; echo "rc=$?" >> "$OUT/bwd64n_$name.log" ) & }
export ATTNC_BWD_TEST_CFG=default+b
ATTNC_CACHE_DIR=/tmp/c1 run t_samples timeout $left $B/gpu_backward --exact gpu_backward_samples_match_reference
ATTNC_CACHE_DIR=/tmp/c2 run t_determ timeout $left $B/gpu_backward --exact gpu_backward_is_deterministic
ATTNC_CACHE_DIR=/tmp/c3 run t_masked timeout $left $B/gpu_backward --exact gpu_backward_fully_masked_rows
ATTNC_CACHE_DIR=/tmp/c4 run t_racecheck timeout $left compute-sanitizer --tool racecheck --print-limit 5 $B/gpu_backward --exact gpu_backward_fused_sanitize
wait
unset ATTNC_BWD_TEST_CFG
for f in "$OUT"/bwd64n_t_*.log; do echo "== $(basename $f): $(grep -hE "^test |test result|panicked|SUMMARY|rc=" $f | grep -v " ok$" | tr '\n' ' ' | cut -c1-300)"; done
echo "== bwd64n fc done ($((SECONDS - t0)) s) =="
