#!/usr/bin/env bash
# final GPU check, call B: FA4 part a installed; attnc's forward bench (gpu_bench), decode bench, the GQA shape and D256 through attnc bench
# (gpu_bench candidates: the runtime's choices since session 9 — `e` q blocks from the end for causal-type masks, `m` split_tail without a score, `d` two Q buffers wherever CTAs are persistent; D128 sliding = 128x128xtzmd, causal = 128x128xtgyemd, ALiBi/softcap = 128x128xtgyed, documents = 128x128xtymd (session 15: + `j` partial blocks by conjunct kind, the runtime's default on tables, its table built on the GPU), D64 dense = 192x128xtzd, causal/softcap = 192x128xtgyed, ALiBi = 128x128xtgyed, sliding/documents = 64x64xw (session 11); session 8's tzm, tgye and 192 tgye for comparison)
set -u
here=$(cd "$(dirname "$0")" && pwd); B=/tmp/fb; mkdir -p $B
for f in "$here"/*.xz; do xz -dc "$f" > $B/$(basename "$f" .xz) & done; wait; chmod +x $B/*
(bash .fa4a/install.sh a 2>&1 | tail -1) &
export ATTNC_CACHE_DIR=/tmp/attnc-cache-fb ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
# FWD=0 leaves out the forward benches (gpu_bench, GQA, D256) where the forward kernels did not change since the last check
# (session 15: FWD_VARIANTS=doc_causal times only the variants whose forward kernels changed; GQA_EX and D256=0 likewise for the GQA shape and D256)
[ "${FWD:-1}" = 1 ] && env ${FWD_VARIANTS:+ATTNC_BENCH_VARIANTS=$FWD_VARIANTS} ATTNC_BENCH_DIMS=${DIMS:-128,64,256} ATTNC_BENCH_TILES=128x128xt ATTNC_BENCH_EXTRA=${EXTRA:-128x128xtzmd,128x128xtzm,128x128xtgyemd,128x128xtgyed,128x128xtgye,128x128xtymd,128x128xtymdj,192x128xtzd,192x128xtgyed,192x128xtgye,128x64xt,64x64xw} timeout 200 $B/gpu_bench --ignored --exact gpu_bench --nocapture 2>&1 | grep -E "tile |^attnc/|using" | grep -v "JIT" | cut -c1-140
echo "fwd bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
echo "=== decode bench"
# (session 12: B1 read 4.01 TB/s contiguous in one round against 4.19-4.22 paged in the same sweep: three rotated rounds per shape)
ATTNC_DECODE_BENCH_ROUNDS=3 timeout 150 $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 2>&1 | tail -16 | cut -c1-200
# (session 12: the paged Lq 16 copies side by side in rotated rounds: the default ef, abcef, decode2's abefg)
# (session 14: ef, efi and abcefi — decode's page ids clamped at use, COPY_IDS_LATE, off by default, alone and with abc, whose paged loop has the contiguous loop's instruction count: the A/B its helper could not time)
# (session 15: efi is the default since 180e350; ef stays as the old reference)
# (session 16: efik is the default since COPY_FULL_TILE, `k`: whole kept tiles without the per-element tests; efi = session 15's default)
# (session 17: 7 rounds of the median of 5 timings let a slow phase of the GPU (~0.5 s, every configuration 10-40% slower) land on
# some configurations' rounds only; 21 rounds of one timing each after 2 warm rounds interleave them finely: dense page 16 +4.6%, causal +4.2%)
echo "=== decode Lq16, 21 rotated rounds of one timing (the default efik and session 15's efi; LQ16_COPIES=ef,abcefi,abcefik,.. for other variants)"
ATTNC_DECODE_BENCH_ROUNDS=21 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=${LQ16_COPIES:-efik,efi} timeout 90 $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128 2>&1 | tail -24 | cut -c1-280
# (session 13: issue 12's causal and sliding 4096 next to dense; causal at Lq 1 is dense at logical positions; anchors: c.sh's decode_bench_torch.py --masks)
echo "=== decode causal Lq 4 and sliding 4096 (every shape), 3 rotated rounds"
ATTNC_DECODE_BENCH_ROUNDS=3 timeout 60 $B/attnc bench examples/causal.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,4,32768 --kv-cache contiguous,paged --page-size 16,128 2>&1 | grep -E "^decode|rror" | cut -c1-200
# (session 15: causal Lq16 with the default efi read paged 16 / 128 +6.5% / +6.4% of contiguous, 7 rounds, range +4.1..+9.5%:
# issue 12's "paged within 5%" fails there; the same 7 rotated rounds as dense Lq16, with abcefi beside the default)
# (session 16: with efik, decode's call read paged 16 / 128 +2.4% / +0.8% of contiguous, efi +7.9% / +5.6% in the same rounds)
echo "=== decode causal Lq16, 21 rotated rounds of one timing (the default efik and session 15's efi; CAUSAL16_COPIES=.. for others)"
ATTNC_DECODE_BENCH_ROUNDS=21 ATTNC_DECODE_BENCH_REPS=1 ATTNC_DECODE_BENCH_WARM_ROUNDS=2 ATTNC_DECODE_BENCH_COPY=${CAUSAL16_COPIES:-efik,efi} timeout 90 $B/attnc bench examples/causal.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,16,32768 --kv-cache contiguous,paged --page-size 16,128 2>&1 | grep -E "^decode|rror" | cut -c1-280
ATTNC_DECODE_BENCH_ROUNDS=3 timeout 120 $B/attnc bench examples/sliding_window.attn --param window=4096 --decode --backend cuda --dtype bf16 --d 128 --iters 20 --kv-cache contiguous,paged --page-size 16,128 2>&1 | grep -E "^decode|rror" | cut -c1-200
# (session 14's ef vs efi lines; efi is the default since 180e350: DECODE_I=1 runs them again)
if [ "${DECODE_I:-0}" = 1 ]; then
echo "=== decode ef vs efi (COPY_IDS_LATE), paged 16: B8 Lq4/Lq1 dense, sliding 4096 B8 Lq1, 3 rotated rounds (DECODE_I=0 skips)"
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=ef,efi timeout 30 $B/attnc bench examples/dense.attn --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,4,32768 --decode-shape 8,32,8,1,32768 --kv-cache contiguous,paged --page-size 16 2>&1 | grep -E "^decode|rror" | cut -c1-200
ATTNC_DECODE_BENCH_ROUNDS=3 ATTNC_DECODE_BENCH_COPY=ef,efi timeout 20 $B/attnc bench examples/sliding_window.attn --param window=4096 --decode --backend cuda --dtype bf16 --d 128 --iters 20 --decode-shape 8,32,8,1,32768 --kv-cache contiguous,paged --page-size 16 2>&1 | grep -E "^decode|rror" | cut -c1-200
fi
echo "decode bench: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
# (session 12 timed fwd's cross_tile/early_claim here (off, slower); session 13 leaves it out: CROSS=1 runs it)
if [ "${CROSS:-0}" = 1 ]; then
echo "=== cross_tile"
ATTNC_BENCH_NO_DEFAULTS=1 ATTNC_BENCH_DIMS=128 ATTNC_BENCH_VARIANTS=doc_causal,causal ATTNC_BENCH_TILES=128x128xt ATTNC_BENCH_EXTRA=128x128xtgyemd,128x128xtgyemdh,128x128xtgyemdhf timeout 60 $B/gpu_bench --ignored --exact gpu_bench --nocapture 2>&1 | grep -E "tile |^attnc/|using" | grep -v "JIT" | cut -c1-140
fi
if [ "${FWD:-1}" = 1 ]; then
echo "=== GQA B1 Hq32 Hkv8 L16384 D128 (median of 3 x 20 calls, then min of 3 x 10 as fa4_anchors_lite.py: at 6 ms a call the GPU's clocks drop within a few hundred ms)"
# (sliding_window: the anchors' window of 1024 keys, `q - kv <= 1023`; without --param the synthesized window is Lq/4)
for ex in ${GQA_EX:-dense causal alibi_causal:alibi_causal softcap:softcap_causal sliding_window document_causal:document_causal}; do f=${ex%%:*}; a=""; [ "$f" != "$ex" ] && a="--attention ${ex##*:}"; [ "$f" = sliding_window ] && a="--param window=1023"
  timeout 40 $B/attnc bench examples/$f.attn $a --backend cuda --dtype bf16 --batch 1 --heads 32 --hkv 8 --lq 16384 --d 128 --iters 20 2>&1 | grep "TFLOP" | sed 's/compile.*(front/(front/' | cut -c1-200
  echo "  min rule: $(ATTNC_BENCH_STAT=min timeout 40 $B/attnc bench examples/$f.attn $a --backend cuda --dtype bf16 --batch 1 --heads 32 --hkv 8 --lq 16384 --d 128 --iters 10 2>&1 | grep "TFLOP" | grep -v "jit tiers" | sed -E 's/.*bf16: (compile [0-9.]+ ms)?[^)]*\)?,? ?//' | cut -c1-160)"
  # (session 10: the min rule after 0.5 s of load, the sustained rate: 9-12% lower at causal / ALiBi)
  case $f in causal|alibi_causal) echo "  min rule after 0.5 s of load: $(ATTNC_BENCH_WARM_MS=500 ATTNC_BENCH_STAT=min timeout 40 $B/attnc bench examples/$f.attn $a --backend cuda --dtype bf16 --batch 1 --heads 32 --hkv 8 --lq 16384 --d 128 --iters 10 2>&1 | grep "TFLOP" | grep -v "jit tiers" | sed -E 's/.*bf16: (compile [0-9.]+ ms)?[^)]*\)?,? ?//' | cut -c1-160)";; esac; done
[ "${D256:-1}" = 1 ] && echo "=== D256 B2 H16 L8192 (runtime choice)"
[ "${D256:-1}" = 1 ] && for ex in dense causal softcap_sliding; do timeout 40 $B/attnc bench examples/$ex.attn --backend cuda --dtype bf16 --batch 2 --heads 16 --lq 8192 --d 256 --iters 10 2>&1 | grep TFLOP | cut -c1-200; done
fi
echo "attnc benches: $(( $(date +%s) - t0 )) s"
# NCU=1: the ncu figures of dense and causal D128 (ncu.sh, ~20 s; issue 11's "after")
[ "${NCU:-0}" = 1 ] && { echo "=== ncu"; bash "$here/ncu.sh" $B/attnc; }
wait
