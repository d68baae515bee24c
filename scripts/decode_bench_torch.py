"""Decoding anchors measured by PyTorch in the same device run as `attnc bench --decode`:
SDPA cuDNN and flash (FA2) and FlexAttention (Triton), bf16, dense, contiguous
[B, H, L, D] caches, issue 12's shapes. GB/s counts K and V read (2 * B * Hkv * Lkv * D
* 2 bytes). usage: python3 decode_bench_torch.py [--no-flex] (--no-flex: SDPA only, no
torch.compile: what scripts/decode-remote.sh runs)"""
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
no_flex = "--no-flex" in sys.argv[1:]
if not no_flex:
    from torch.nn.attention.flex_attention import flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
print(torch.__version__, torch.cuda.get_device_name(), flush=True)

def bench(fn, iters=50, warm=5):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)

for (B, H, Hkv, Lq, Lkv, D) in [(8, 32, 8, 1, 32768, 128), (8, 32, 8, 4, 32768, 128), (8, 32, 8, 16, 32768, 128),
                                 (64, 32, 8, 1, 8192, 128), (1, 32, 8, 1, 131072, 128)]:
    torch.manual_seed(0)
    q = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, Lkv, D, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
    gb = 2 * B * Hkv * Lkv * D * 2 / 1e9
    cands = {} if no_flex else {"flex_triton": lambda: flex(q, k, v, enable_gqa=True)}
    for bn, be in [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]:
        def sd(be=be):
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        cands[bn] = sd
    out = []
    for key, f in cands.items():
        try:
            ms = bench(f)
            out.append(f"{key} {ms * 1e3:.1f} us {gb / ms * 1e3:.0f} GB/s")
        except Exception as ex:
            out.append(f"{key} ERR {type(ex).__name__}: {str(ex)[:80]}")
    print(f"anchor decode dense B{B} Hq{H} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D} | " + " | ".join(out), flush=True)
    del q, k, v; torch.cuda.empty_cache()
