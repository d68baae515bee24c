"""The FlashAttention-4 anchors that issues 10 and 11 compare against, trimmed to fit one
short device call: FlexAttention's FLASH backend (FA4 through score_mod/mask_mod), FA4
called directly and SDPA cuDNN, forward and backward, bf16, at B2 H16 L8192 D128 (and,
with --d64, B4 H16 L4096 D64; with --gqa, B1 Hq32 Hkv8 L16384 D128, the Llama-3 shape), for
dense, causal, ALiBi + causal and softcap + causal; with --decode, the decoding anchors of
issue 12 (FA4 direct, SDPA cuDNN and flash; contiguous cache, dense; microseconds and GB/s
of K/V read) at B8 Hq32 Hkv8 Lkv32768 Lq 1/4/16, B64 Lkv8192 Lq1, B1 Lkv131072 Lq1;
with --no-bwd, forward only; the extra shapes time the backward only with --bwd-extra (the
D64 shape alone with --bwd-d64).
The full set (Flex Triton, sliding window, documents, GQA, decoding) is
../shared/bench/fa4/anchors_fa4.py; this keeps its conventions: TFLOP/s over unmasked
pairs, forward 4*B*H*Lq*Lkv*D*density, backward 2.5x that; best of 3 x 10 iterations
after 3 warm-up calls; backward = (forward + backward) - forward.
Needs FA4 on PYTHONPATH (install with ../shared/bench/fa4/prepare.sh + install.sh a|b;
then PYTHONPATH=$(cat /tmp/fa4site.path)). Prints one line per (variant, backend) and
writes $OUT/fa4_anchors_lite.json."""
import sys, os, time, json, torch
import torch._dynamo
torch._dynamo.config.recompile_limit = 1000
torch._dynamo.config.cache_size_limit = 1000
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
dev = "cuda"
flex = torch.compile(flex_attention, dynamic=False)
try:
    from flash_attn.cute.interface import flash_attn_func
except Exception as ex:
    flash_attn_func = None
    print("FA4 not importable:", type(ex).__name__, str(ex)[:200], flush=True)
print(torch.__version__, torch.cuda.get_device_name(), flush=True)

def bench(fn, iters=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)

def causal(b, h, q, kv): return q >= kv
def alibi(score, b, h, q, kv): return score + torch.exp2(-8.0 * (h + 1) / 16) * (kv - q)
def softcap(score, b, h, q, kv): return 30.0 * torch.tanh(score / 30.0)

NO_BWD = "--no-bwd" in sys.argv
BWD_EXTRA = "--bwd-extra" in sys.argv
BWD_D64 = "--bwd-d64" in sys.argv

def fwd_bwd(f, q, k, v, do, extra=False, d64=False):
    tf = bench(lambda: f(q, k, v))
    if NO_BWD or (extra and not BWD_EXTRA and not (d64 and BWD_D64)):
        return tf, float("nan")
    def step():
        for x in (q, k, v): x.grad = None
        f(q, k, v).backward(do)
    return tf, max(bench(step) - tf, 1e-6)

res = {}
shapes = [(2, 16, 16, 8192, 128)] + ([(4, 16, 16, 4096, 64)] if "--d64" in sys.argv else []) \
    + ([(1, 32, 8, 16384, 128)] if "--gqa" in sys.argv else [])
shapes0 = shapes[0]
if "--only-extra" in sys.argv:
    shapes = shapes[1:]
for (B, H, Hkv, S, D) in shapes:
    torch.manual_seed(0)
    q = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, Hkv, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    do = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
    gqa = H != Hkv
    tag = f"B{B}H{H}L{S}D{D}" if not gqa else f"B{B}H{H}Hkv{Hkv}L{S}D{D}"
    for name, mm, sm in [("dense", None, None), ("causal", causal, None),
                         ("alibi_causal", causal, alibi), ("softcap_causal", causal, softcap)]:
        dens = 1.0 if mm is None else (S + 1) / (2 * S)
        fl = 4 * B * H * S * S * D * dens
        bm = create_block_mask(mm, B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev) if mm else None
        row = {}
        def put(key, f):
            try:
                t0 = time.time(); f(q, k, v); torch.cuda.synchronize(); first = time.time() - t0
                tf, tb = fwd_bwd(f, q, k, v, do, extra=(B, H, Hkv, S, D) != shapes0, d64=D == 64)
                row[key] = dict(fwd=fl / tf / 1e9, bwd=2.5 * fl / tb / 1e9, first_call_s=first)
            except Exception as ex:
                row[key] = dict(error=f"{type(ex).__name__}: {str(ex)[:160]}")
        put("flex_FLASH", lambda q, k, v: flex(q, k, v, score_mod=sm, block_mask=bm, enable_gqa=gqa, kernel_options={"BACKEND": "FLASH"}))
        if flash_attn_func is not None and sm in (None, softcap):
            kw = dict(causal=mm is not None)
            if sm is softcap: kw["softcap"] = 30.0
            def fa4(q, k, v):
                o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw)
                return (o[0] if isinstance(o, tuple) else o).transpose(1, 2)
            put("fa4", fa4)
        if sm is None:
            def sd(q, k, v):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=mm is causal, enable_gqa=gqa)
            put("cudnn", sd)
        res[f"{name}/{tag}"] = row
        cells = [f"{key} " + (f"fwd {r['fwd']:.0f} bwd {r['bwd']:.0f} first {r['first_call_s']:.1f}s" if "fwd" in r else f"ERR {r['error'][:80]}") for key, r in row.items()]
        print(f"{name:15s} {tag:18s} | " + " | ".join(cells), flush=True)
    del q, k, v, do; torch.cuda.empty_cache()
# decoding: a few query rows against a long contiguous cache (memory bound), dense
if "--decode" in sys.argv:
    for (B, H, Hkv, Lq, Lkv, D) in [(8, 32, 8, 1, 32768, 128), (8, 32, 8, 4, 32768, 128), (8, 32, 8, 16, 32768, 128),
                                    (64, 32, 8, 1, 8192, 128), (1, 32, 8, 1, 131072, 128)]:
        torch.manual_seed(0)
        q = torch.randn(B, H, Lq, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, Lkv, D, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
        gb = 2 * B * Hkv * Lkv * D * 2 / 1e9
        row = {}
        cands = {}
        for bn, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]:
            def sd(be=be):
                with sdpa_kernel(be):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            cands[bn] = sd
        if flash_attn_func is not None:
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            cands["fa4"] = lambda: flash_attn_func(qt, kt, vt)
        for key, f in cands.items():
            try:
                ms = bench(f, iters=50)
                row[key] = dict(us=ms * 1e3, GBps=gb / ms * 1e3)
            except Exception as ex:
                row[key] = dict(error=f"{type(ex).__name__}: {str(ex)[:160]}")
        tag = f"decode B{B}H{H}Hkv{Hkv}Lq{Lq}Lkv{Lkv}D{D}"
        res[tag] = row
        print(f"{tag:40s} | " + " | ".join(f"{k_} " + (f"{r['us']:.1f} us {r['GBps']:.0f} GB/s" if "us" in r else f"ERR {r['error'][:80]}") for k_, r in row.items()), flush=True)
        del q, k, v; torch.cuda.empty_cache()
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "fa4_anchors_lite.json"), "w"), indent=1)
