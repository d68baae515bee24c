#!/usr/bin/env bash
# Decoding on the CPU: attnc's split-KV CPU path (`attnc bench --decode --backend cpu`)
# next to PyTorch SDPA on the CPU (f32, GQA via enable_gqa, the same shapes and thread
# count), in one run on one machine. GB/s counts K and V read once.
#   bash scripts/cpu_decode_bench.sh [THREADS]        (default: all cores)
# Needs a release attnc (cargo build --release -p attnc; or ATTNC_BIN=path, e.g. a binary
# carried to the GPU machine's host) and torch: .venv (scripts/python-setup.sh), else
# python3 (the GPU machine's has torch).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
bin=${ATTNC_BIN:-target/release/attnc}
[ -x "$bin" ] || cargo build --release -q -p attnc --bin attnc
py=.venv/bin/python; [ -x "$py" ] || py=python3
shapes=("1,32,8,1,32768" "8,32,8,1,4096" "1,32,8,4,32768" "1,32,8,16,8192")
echo "== attnc (CPU, f32, D128, $threads threads) =="
for s in "${shapes[@]}"; do
  "$bin" bench --decode examples/causal.attn --backend cpu --dtype f32 --d 128 \
    --threads "$threads" --kv-cache contiguous,paged --page-size 16 --decode-shape "$s" --iters 5
done
echo "== torch SDPA (CPU, f32, D128, $threads threads) =="
"$py" - "$threads" "${shapes[@]}" <<'PY'
import sys, time, torch, torch.nn.functional as F
threads = int(sys.argv[1]); torch.set_num_threads(threads)
print("torch", torch.__version__, "threads", torch.get_num_threads())
for s in sys.argv[2:]:
    B, Hq, Hkv, Lq, Lkv = map(int, s.split(",")); D = 128
    q = torch.randn(B, Hq, Lq, D); k = torch.randn(B, Hkv, Lkv, D); v = torch.randn(B, Hkv, Lkv, D)
    # causal at logical positions: the Lq new rows are the last Lq positions
    mask = None
    if Lq > 1:
        qi = torch.arange(Lkv - Lq, Lkv).view(Lq, 1); ki = torch.arange(Lkv).view(1, Lkv)
        mask = qi >= ki
    f = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ms = min(ts) * 1e3
    gb = 2 * B * Hkv * Lkv * D * 4 / 1e9
    print(f"sdpa_cpu B{B} Hq{Hq} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D}: {ms:.3f} ms, {gb / ms * 1e3:.1f} GB/s")
PY
