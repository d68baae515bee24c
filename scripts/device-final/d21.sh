#!/usr/bin/env bash
# session 21 final check call D (after C on the same warm machine: FA4 installed, /tmp/fa and /tmp/fb unpacked):
# issue 11's and 10's two remaining shapes, sliding window 1024 and document + causal, attnc and the anchors in one call —
# attnc forward (runtime default through `attnc bench`, min of 3 x 10) at B2 H16 L8192 D128 and the Llama-3 GQA shape,
# attnc backward (kernel bench, median) at D128 and D64, then Flex FLASH / FA4 direct (window_size, varlen) / cuDNN.
set -u
export ATTNC_EXAMPLES=$PWD/examples
fw() { local ex=$1; shift; timeout 40 env "$@" ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_BENCH_STAT=min /tmp/fb/attnc bench examples/$ex.attn --backend cuda --dtype bf16 --iters 10 $SHAPE 2>&1 | grep TFLOP | grep -v "jit tiers" | sed -E 's/.*bf16: (compile [0-9.]+ ms)?[^)]*\)?,? ?//' | cut -c1-120; }
t0=$(date +%s)
echo "=== attnc forward, sliding 1024 (window=1023: a query sees itself and 1023 keys before it) and document + causal (8 docs)"
for SHAPE in "--d 128 --batch 2 --heads 16 --lq 8192" "--d 128 --batch 1 --heads 32 --hkv 8 --lq 16384"; do
  echo "$SHAPE sliding: $(SHAPE="$SHAPE --param window=1023" fw sliding_window X=1)"
  echo "$SHAPE document: $(SHAPE="$SHAPE --attention document_causal" fw document_causal X=1)"; done
echo "=== attnc backward, kernel bench median (sliding1024, doc_causal; D128 then D64)"
ATTNC_CACHE_DIR=/tmp/attnc-cache-final ATTNC_BWD_BENCH_CFG=default ATTNC_BWD_BENCH_ONLY=sliding1024,doc_causal timeout 90 /tmp/fa/gpu_backward --ignored --exact gpu_backward_bench --nocapture 2>&1 | grep -E "TFLOP" | cut -c1-200
echo "attnc: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
PYTHONPATH=$(cat /tmp/fa4site.path) OUT=${OUT:-/tmp} timeout 300 python3 scripts/fa4_anchors_lite.py --gqa --sliding --doc --variants=sliding1024,doc_causal 2>&1 | grep -v "^$" | grep -Ev "UserWarning|exe_args, func_types" | tail -20 | cut -c1-260
echo "anchors: $(( $(date +%s) - t0 )) s"
