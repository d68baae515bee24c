#!/usr/bin/env bash
# Session 43 call 1 (carry .bin-s43: release gpu, gpu_random, gpu_backward and attnc built
# from main): everything sessions 42 and 43 built that has
# not run on a GPU — scores that mask with -inf lifted into the mask (a quarter of the
# generated programs: gpu_random), windows through abs / max / min now closed forms and split conjuncts
# (dilated_sliding_window's tables and partial blocks; gpu_samples_match_oracle and the
# closed-form / table tests, every example's backward), the generated document masks through the CUDA forward, backward and
# decoding (gpu_random_documents_*, session 43: mirrored ids with commutative operations
# now split into document tiles), gpu_backward_device_time, `attnc bench --grad
# --backend cuda` (device time) on document + causal with the backward's document kv
# tiles and without (ATTNC_FWD_DOC_TILES=0); the Python package's CUDA tests are s43-c2.sh.
# To pack from main:
#   CARGO_TARGET_DIR=/work/rel-target cargo test --release -p attnc --test gpu_backward --no-run
#   CARGO_TARGET_DIR=/work/rel-target cargo test --release -p attnc-tests --test gpu_random --no-run
#   CARGO_TARGET_DIR=/work/rel-target cargo test --release -p attnc --test gpu --no-run
#   CARGO_TARGET_DIR=/work/rel-target cargo build --release -p attnc --bin attnc
#   mkdir -p .bin-s43; strip + xz the gpu-*, gpu_backward-* and gpu_random-* test binaries
#   and attnc into .bin-s43/{gpu,gpu_backward,gpu_random,attnc}.xz (53.6 MB: with
#   .bin-pycuda it passes the 64 MiB carry limit, so the Python tests are call 2,
#   s43-c2.sh, carrying .bin-pycuda from bash scripts/python-gpu-pack.sh)
set -u
mkdir -p /tmp/s43
for b in gpu gpu_random gpu_backward attnc; do xz -dc .bin-s43/$b.xz > /tmp/s43/$b; chmod +x /tmp/s43/$b; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== gpu forward: examples, closed forms, tables ($SECONDS s)"
for t in gpu_samples_match_oracle gpu_closed_form_matches_oracle gpu_block_tables_match_brute_force \
         gpu_forward_with_gpu_tables_matches_oracle gpu_api_closed_form_and_table_agree_with_reference; do
  timeout 150 /tmp/s43/gpu --exact $t > $OUT/$t.log 2>&1; echo "$t rc=$?"
  grep -E "test result|panicked" $OUT/$t.log | cut -c1-200 | tail -3
done
timeout 200 /tmp/s43/gpu_backward --exact gpu_backward_api_every_example > $OUT/bwd_every.log 2>&1; echo "gpu_backward_api_every_example rc=$?"
grep -E "test result|panicked" $OUT/bwd_every.log | cut -c1-200 | tail -3
echo "== gpu_random: every pass, generated document masks among them ($SECONDS s)"
ATTNC_CASES=30 timeout 420 /tmp/s43/gpu_random --test-threads 1 > $OUT/gpu_random_documents.log 2>&1
echo "rc=$?"
grep -E "^test |cases passed|cases failed|panicked" $OUT/gpu_random_documents.log | cut -c1-220 | head -20
for t in gpu_backward_device_time; do
  echo "== $t ($SECONDS s)"
  timeout 120 /tmp/s43/gpu_backward --exact $t > $OUT/$t.log 2>&1; echo "rc=$?"
  grep -E "device time|test result|panicked" $OUT/$t.log | cut -c1-200 | tail -6
done
A=/tmp/s43/attnc
echo "== bench --grad ($SECONDS s)"
for env in 1 0; do
  ATTNC_FWD_DOC_TILES=$env timeout 100 $A bench examples/document_causal.attn --attention document_causal --backend cuda --grad --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 128 --iters 20 2>&1 | tail -1 | cut -c1-260
  ATTNC_FWD_DOC_TILES=$env timeout 100 $A bench examples/document_causal.attn --attention document_causal --backend cuda --grad --dtype bf16 --batch 1 --heads 32 --hkv 8 --lq 16384 --d 128 --iters 20 2>&1 | tail -1 | cut -c1-260
done
echo "== done ($SECONDS s)"
