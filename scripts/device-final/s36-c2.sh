#!/usr/bin/env bash
# Session 36 call 2 (warm, after s36-c1.sh on the same machine; carry .fa4a, .bin-s36b): FA4 part a,
# then attnc's forward on every anchor variant (CLI `attnc bench`, min of 3 x 10) and the
# decoding sweep's three B8 rows, with the binaries call 1 left in /tmp/s36.
set -u
bash .fa4a/install.sh a 2>&1 | tail -1
xz -dc .bin-s36b/attnc.xz > /tmp/s36/attnc; chmod +x /tmp/s36/attnc
export ATTNC_EXAMPLES=$PWD/examples ATTNC_CACHE_DIR=/tmp/attnc-cache
A=/tmp/s36/attnc
fw() { local ex=$1; shift; timeout 40 env "$@" ATTNC_BENCH_STAT=min $A bench examples/$ex.attn --backend cuda --dtype bf16 --iters 10 $SHAPE 2>&1 | grep TFLOP | grep -v "jit tiers" | sed -E 's/.*bf16: (compile [0-9.]+ ms)?[^)]*\)?,? ?//' | cut -c1-120; }
echo "=== attnc forward, min of 3 x 10"
for SHAPE in "--d 128 --batch 2 --heads 16 --lq 8192" "--d 128 --batch 1 --heads 32 --hkv 8 --lq 16384" "--d 64 --batch 4 --heads 16 --lq 4096"; do
  for ex in dense causal; do echo "$SHAPE $ex: $(fw $ex X=1)"; done
  echo "$SHAPE alibi_causal: $(SHAPE="$SHAPE --attention alibi_causal" fw alibi_causal X=1)"
  echo "$SHAPE softcap_causal: $(SHAPE="$SHAPE --attention softcap_causal" fw softcap X=1)"
  echo "$SHAPE sliding: $(SHAPE="$SHAPE --param window=1023" fw sliding_window X=1)"
  echo "$SHAPE document: $(SHAPE="$SHAPE --attention document_causal" fw document_causal X=1)"
done
echo "=== decoding B8 Hq32 Hkv8 Lkv32768 (3 rounds)"
for lq in 1 4 16; do
  ATTNC_DECODE_BENCH_ROUNDS=3 timeout 40 $A bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,$lq,32768 --kv-cache contiguous,paged --page-size 128 2>&1 | grep -E "^decode|rror" | cut -c1-200
done
