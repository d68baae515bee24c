"""Chunked-prefill anchors measured by PyTorch in the same device run as `attnc bench
--decode` with Lq > 16: SDPA cuDNN and flash (FA2) on q [B, Hq, Lq, D] against contiguous
K/V [B, Hkv, Lkv, D] holding the chunk's logical keys (enable_gqa), bf16: dense (no mask),
and the chunk's causal mask (lower-right aligned: row i at position Lkv - Lq + i) through
torch's CausalBias. TFLOP/s counts 4 B Hq Lq Lkv D (every key of every row, as attnc's
bench counts its reachable keys). usage: python3 chunk_bench_torch.py B,HQ,HKV,LQ,LKV ..."""
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.bias import causal_lower_right
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
D = 128

def bench(fn, iters=20, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)

for arg in sys.argv[1:]:
    B, H, Hkv, Lq, Lkv = (int(x) for x in arg.split(","))
    torch.manual_seed(0)
    q = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, Lkv, D, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
    tf = 4 * B * H * Lq * Lkv * D / 1e12
    cands = {}
    for bn, be in [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]:
        def sd(be=be):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        cands[bn] = sd
    bias = causal_lower_right(Lq, Lkv)
    cands["sdpa_causal_lr"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    out = []
    for key, f in cands.items():
        try:
            ms = bench(f)
            out.append(f"{key} {ms * 1e3:.1f} us {tf / ms * 1e3:.0f} TFLOP/s")
        except Exception as ex:
            out.append(f"{key} ERR {type(ex).__name__}: {str(ex)[:80]}")
    print(f"anchor chunk B{B} Hq{H} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D} | " + " | ".join(out), flush=True)
    del q, k, v; torch.cuda.empty_cache()
