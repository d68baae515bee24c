#!/usr/bin/env bash
# Session 37's GPU check of the uniform-read paths (backend/llvm/uniform.rs; refused in
# session 37, for the next session). Build here first:
#   CARGO_TARGET_DIR=/work/rel-target cargo test --release -p attnc --test gpu_backward --test gpu --no-run
#   CARGO_TARGET_DIR=/work/rel-target cargo build --release -p attnc --bin attnc
#   strip each, xz -T2 -6 into .bin-s37/{gpu_backward,gpu,attnc}.xz   (~13 MiB each)
# then run with carry [".bin-s37"]. Order: the tests (the backward's capture-gradient
# path `bwd_uniform_reads` = `+U`, the forward's `uniform_reads`) against the f64
# reference / oracle, memcheck and racecheck of the backward one, then the benchmarks:
# the relative-position table's backward default vs `+U` (D128, D64) and its forward with
# ATTNC_FWD_UNIFORM=0 / 1 next to dense, and a whole call through the runtime
# (`attnc bench --grad` with ATTNC_BWD_UNIFORM=1). If every test passes and `+U` is
# faster, make both options the binding's default (PtxOptions::backward_for_binding /
# for_binding) and re-run `python/bench/capture_grad_step.py`.
set -u
mkdir -p /tmp/s37
for n in gpu_backward gpu attnc; do xz -dc .bin-s37/$n.xz > /tmp/s37/$n; chmod +x /tmp/s37/$n; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
B=/tmp/s37/gpu_backward
(timeout 300 /tmp/s37/gpu --exact gpu_uniform_reads_match_oracle > $OUT/t_fwd_uniform.log 2>&1; echo "rc=$?" >> $OUT/t_fwd_uniform.log) &
for t in gpu_backward_uniform_reads gpu_backward_capture_grads; do
  timeout 300 $B --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E 'test result|panicked' $OUT/$t.log | head -3 | tr '\n' ' ')"
done
for tool in memcheck racecheck; do
  timeout 300 compute-sanitizer --tool $tool $B --exact gpu_backward_uniform_reads > $OUT/san_$tool.log 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' $OUT/san_$tool.log | head -3 | tr '\n' ' ')"
done
wait
echo "forward: $(grep -E 'test result|kernels,|^rc=' $OUT/t_fwd_uniform.log | tr '\n' ' ')"
grep -hE "panicked|mismatch|differs|failed:" $OUT/*.log | head -10
for d in 128 64; do
  echo "== backward kernel bench D$d (median): default, +U, default, +U"
  ATTNC_BWD_BENCH_D=$d ATTNC_BWD_BENCH_ONLY=full,relbias_full ATTNC_BWD_BENCH_CFG=default,default+U,default,default+U \
    timeout 150 $B --ignored --exact gpu_backward_bench 2>&1 | grep -E "TFLOP|error" | cut -c1-200
done
echo "== forward: dense, relative table with ATTNC_FWD_UNIFORM=0 / 1 (B2 H16 L8192 D128 bf16)"
A=/tmp/s37/attnc
$A bench examples/dense.attn --backend cuda --batch 2 --heads 16 --lq 8192 --d 128 --dtype bf16 --iters 10 2>&1 | tail -1 | cut -c1-200
for u in 0 1 0 1; do
  ATTNC_FWD_UNIFORM=$u $A bench examples/relative_bias_table.attn --backend cuda --batch 2 --heads 16 --lq 8192 --d 128 \
    --dtype bf16 --iters 10 2>&1 | tail -1 | sed "s/^/U=$u /" | cut -c1-200
done
echo "== through the runtime: attnc bench --grad, ATTNC_BWD_UNIFORM=0 / 1"
for u in 0 1; do
  ATTNC_BWD_UNIFORM=$u ATTNC_FWD_UNIFORM=$u $A bench examples/relative_bias_table.attn --backend cuda --batch 2 --heads 16 \
    --lq 8192 --d 128 --dtype bf16 --iters 10 --grad 2>&1 | tail -1 | sed "s/^/U=$u /" | cut -c1-220
done
