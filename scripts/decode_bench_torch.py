"""Decoding anchors measured by PyTorch in the same device run as `attnc bench --decode`:
SDPA cuDNN and flash (FA2) and FlexAttention (Triton), bf16, dense, contiguous
[B, H, L, D] caches, issue 12's shapes. GB/s counts K and V read (2 * B * Hkv * Lkv * D
* 2 bytes). usage: python3 decode_bench_torch.py [--no-flex] [--masks [--window W]]
(--no-flex: SDPA only, no torch.compile: what scripts/decode-remote.sh runs). --masks:
instead of dense, causal and sliding window W (default 4096) at logical positions, as
attnc's examples/causal.attn and examples/sliding_window.attn --param window=W see them
(query row i of Lq at position Lkv - Lq + i; sliding: keys q - W ..= q): SDPA cuDNN and
SDPA memory-efficient with that boolean mask (they read the whole cache), and FA4 direct
(flash_attn.cute, if importable: PYTHONPATH from .fa4X/install.sh) with causal=True /
window_size=(W, 0) (bottom-right aligned: the same keys; it skips the blocks outside)."""
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

MASKS = "--masks" in sys.argv[1:]
W = int(sys.argv[sys.argv.index("--window") + 1]) if "--window" in sys.argv[1:] else 4096
if MASKS:
    try:
        from flash_attn.cute.interface import flash_attn_func
    except Exception as ex:
        flash_attn_func = None
        print("FA4 not importable:", type(ex).__name__, str(ex)[:120], flush=True)
    # (mask, Lq) per shape: causal at Lq 1 is dense at logical positions (the last row
    # sees every key), so causal only where Lq > 1; sliding everywhere
    for (B, H, Hkv, Lq, Lkv, D) in [(8, 32, 8, 1, 32768, 128), (8, 32, 8, 4, 32768, 128), (8, 32, 8, 16, 32768, 128),
                                     (64, 32, 8, 1, 8192, 128), (1, 32, 8, 1, 131072, 128)]:
        torch.manual_seed(0)
        q = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, Lkv, D, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
        qpos = torch.arange(Lkv - Lq, Lkv, device="cuda")[:, None]
        kv = torch.arange(Lkv, device="cuda")[None, :]
        for name in (["causal"] if Lq > 1 else []) + [f"sliding{W}"]:
            mask = kv <= qpos
            if name != "causal":
                mask = mask & (qpos - kv <= W)
            keys = int(mask.sum(1).max())  # the keys a row sees (at most)
            gb = 2 * B * Hkv * Lkv * D * 2 / 1e9
            out = []
            cands = {}
            # (SDPA memory-efficient: "No available kernel" with GQA and a mask, session 13)
            for bn, be in [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
                def sd(be=be, mask=mask):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
                cands[bn] = sd
            if flash_attn_func is not None:
                qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                kw = dict(causal=True) if name == "causal" else dict(causal=True, window_size=(W, 0))
                cands["fa4"] = lambda kw=kw: flash_attn_func(qt, kt, vt, **kw)
            for key, f in cands.items():
                try:
                    ms = bench(f)
                    out.append(f"{key} {ms * 1e3:.1f} us")
                except Exception as ex:
                    out.append(f"{key} ERR {type(ex).__name__}: {str(ex)[:80]}")
            print(f"anchor decode {name} B{B} Hq{H} Hkv{Hkv} Lq{Lq} Lkv{Lkv} D{D} (rows see <= {keys} keys; whole cache {gb * 1e3:.0f} MB) | " + " | ".join(out), flush=True)
        del q, k, v; torch.cuda.empty_cache()
    sys.exit(0)

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
