#!/usr/bin/env bash
# Runs on the GPU machine from the repo root with .bin carried (see scripts/device-check).
# Parts (ATTNC_PARTS, default "gpu cli cpu"):
#   gpu  GPU tests vs the oracle, compute-sanitizer, GPU benchmark next to PyTorch
#        FlexAttention / SDPA flash / cuDNN in the same run (scripts/gpu-remote.sh)
#   cli  the attnc CLI on the GPU: cuda-info, demo on cpu+cuda vs the oracle (D32; cuda
#        also at D64 and D128), bench
#        --backend cuda with cold (new cache dir) and warm (second process) JIT
#   decode  attnc bench --decode --backend cuda over issue 12's shapes (dense, causal,
#        sliding 4096; contiguous, paged 16 and 128) next to SDPA cuDNN/flash and
#        FlexAttention decoding measured by torch in the same run (decode_bench_torch.py)
#   cpu  attnc's CPU backend vs PyTorch SDPA / FlexAttention-on-CPU, 2 and 16 threads
#   python  the Python package (wheel from .bin/py, installed with pip --no-index into
#        /tmp/attnc-py): the pytest suite with CUDA tensors (python/tests), then
#        python/bench/bench_gpu.py (call overhead vs FlexAttention/SDPA, throughput vs
#        `attnc bench`, train_tiny tokens/s); not in the default set: ATTNC_PARTS=python
#   jit  JIT latency with the driver cache off: cold / warm (cubin from disk) / tiered,
#        and ptxas levels 0..4 for causal D128 (scripts/jit-probe-remote.sh, ~1 minute;
#        not in the default set: ATTNC_PARTS=jit)
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/attnc-out}; mkdir -p "$OUT"
parts=${ATTNC_PARTS:-gpu cli decode cpu}
status=0
xz -dkf .bin/attnc.xz && chmod +x .bin/attnc
for part in $parts; do
  case $part in
    gpu) bash .bin/gpu-remote.sh || status=1 ;;
    cli)
      echo "== attnc CLI on the GPU =="
      .bin/attnc cuda-info || status=1
      .bin/attnc demo examples --backends cpu,cuda 2>&1 | tee "$OUT/demo.log" | tail -40; [ "${PIPESTATUS[0]}" = 0 ] || status=1
      # D64 and D128: the default kernel on sm_90 is the wgmma one there (D32 runs mma.sync)
      for d in 64 128; do
        .bin/attnc demo examples --backends cuda --d $d 2>&1 | tee "$OUT/demo_d$d.log" | tail -2; [ "${PIPESTATUS[0]}" = 0 ] || status=1
      done
      export ATTNC_CACHE_DIR=$OUT/jit-cache; rm -rf "$ATTNC_CACHE_DIR"
      for v in "dense.attn dense" "causal.attn causal_attention" "sliding_window.attn sliding_window --param window=1024" \
               "alibi_causal.attn alibi_causal" "softcap.attn softcap_causal" "document_causal.attn document_causal --docs 8"; do
        set -- $v; f=$1; a=$2; shift 2
        for run in cold warm; do
          echo -n "$run: "; .bin/attnc bench examples/$f --attention "$a" --backend cuda --dtype bf16 --b 2 --h 16 --lq 8192 --d 128 --iters 10 "$@" || status=1
        done
      done
      ;;
    decode)
      echo "== decoding: attnc bench --decode (CUDA) =="
      for v in "dense.attn" "causal.attn" "sliding_window.attn --param window=4096"; do
        set -- $v; f=$1; shift
        timeout 300 .bin/attnc bench examples/$f --decode --backend cuda --dtype bf16 --d 128 --iters 20 "$@" 2>&1 | tee -a "$OUT/decode_bench.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
      done
      echo "== decoding anchors (torch, same run) =="
      PYTHONUNBUFFERED=1 timeout 300 python3 .bin/decode_bench_torch.py 2>&1 | grep -v Warning | tee -a "$OUT/decode_bench.log"
      ;;
    cpu) bash scripts/cpu-bench-remote.sh 2>&1 | tee "$OUT/cpu.log" || status=1 ;;
    jit) bash scripts/jit-probe-remote.sh || status=1 ;;
    python)
      echo "== Python package on the GPU =="
      rm -rf /tmp/attnc-py
      if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/attnc-py .bin/py/*.whl || status=1
      else  # a wheel is a zip archive
        for w in .bin/py/*.whl; do python3 -m zipfile -e "$w" /tmp/attnc-py; done
      fi
      export PYTHONPATH=/tmp/attnc-py${PYTHONPATH:+:$PYTHONPATH}
      timeout 900 python3 -m pytest python/tests -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | grep -Ev " PASSED " | tail -60
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      timeout 900 python3 python/bench/bench_gpu.py --attnc-bin .bin/attnc --out "$OUT" 2>&1 | tee "$OUT/python_bench.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
      ;;
  esac
done
exit $status
