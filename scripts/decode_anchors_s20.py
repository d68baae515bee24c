"""dec20's same-call anchors: SDPA cuDNN at B8 Hq32 Hkv8 Lkv32768 D128 bf16, Lq 1, 4, 16 (the
decode shapes of scripts/decode-s20.sh; scripts/decode_bench_torch.py --no-flex's method:
best of 3 x 50 calls). GB/s counts K and V read."""
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
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

B, H, Hkv, Lkv, D = 8, 32, 8, 32768, 128
torch.manual_seed(0)
k = torch.randn(B, Hkv, Lkv, D, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
gb = 2 * B * Hkv * Lkv * D * 2 / 1e9
for Lq in (16, 1, 4):
    q = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16)
    def sd():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    ms = bench(sd)
    print(f"anchor decode dense B{B} Hq{H} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D} | sdpa_cudnn {ms * 1e3:.1f} us {gb / ms * 1e3:.0f} GB/s", flush=True)
