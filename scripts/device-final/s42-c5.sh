#!/usr/bin/env bash
# Session 42 call 5 (carry .bin-s42: release gpu_backward and attnc of 13931c9 (this
# session's device-time commit); .bin-pycuda packed from 6bc500b): the new
# gpu_backward_device_time, `attnc bench --grad --backend cuda` (now device time) on
# document + causal with the backward's document kv tiles and without
# (ATTNC_FWD_DOC_TILES=0) at B2 H16 L8192 and B1 Hq32 Hkv8 L16384 D128, dense and causal
# at B2 H16 L8192, then the Python package's CUDA tests.
# Not run in session 42 (no machine was lent after call 3). To pack from main:
#   CARGO_TARGET_DIR=/work/rel-target cargo test --release -p attnc --test gpu_backward --no-run
#   CARGO_TARGET_DIR=/work/rel-target cargo build --release -p attnc --bin attnc
#   mkdir -p .bin-s42; strip + xz the gpu_backward-* test binary and attnc into
#   .bin-s42/{gpu_backward,attnc}.xz; bash scripts/python-gpu-pack.sh (.bin-pycuda)
set -u
mkdir -p /tmp/s42
for b in gpu_backward attnc; do xz -dc .bin-s42/$b.xz > /tmp/s42/$b; chmod +x /tmp/s42/$b; done
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in gpu_backward_device_time; do
  echo "== $t ($SECONDS s)"
  timeout 120 /tmp/s42/gpu_backward --exact $t > $OUT/$t.log 2>&1; echo "rc=$?"
  grep -E "device time|test result|panicked" $OUT/$t.log | cut -c1-200 | tail -6
done
A=/tmp/s42/attnc
echo "== bench --grad ($SECONDS s)"
for r in 1 2; do
  for env in 1 0; do
    ATTNC_FWD_DOC_TILES=$env timeout 100 $A bench examples/document_causal.attn --attention document_causal --backend cuda --grad --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 128 --iters 20 2>&1 | tail -1 | cut -c1-260
    ATTNC_FWD_DOC_TILES=$env timeout 100 $A bench examples/document_causal.attn --attention document_causal --backend cuda --grad --dtype bf16 --batch 1 --heads 32 --hkv 8 --lq 16384 --d 128 --iters 20 2>&1 | tail -1 | cut -c1-260
  done
done
for f in dense causal; do
  timeout 100 $A bench examples/$f.attn --backend cuda --grad --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 128 --iters 20 2>&1 | tail -1 | cut -c1-260
done
echo "== python ($SECONDS s)"
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install > /dev/null 2>&1
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py python/tests/test_autograd.py python/tests/test_head_dims.py" \
  pygpu_pytest "not (every_example_matches and f16 and not bf16)" 8 300
echo "== done ($SECONDS s)"
