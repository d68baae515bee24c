"""The FlashAttention-4 anchors that issues 10 and 11 compare against, trimmed to fit one
short device call: FlexAttention's FLASH backend (FA4 through score_mod/mask_mod), FA4
called directly and SDPA cuDNN, forward and backward, bf16, at B2 H16 L8192 D128 (and,
with --d64, B4 H16 L4096 D64; with --gqa, B1 Hq32 Hkv8 L16384 D128, the Llama-3 shape), for
dense, causal, ALiBi + causal and softcap + causal; with --decode, the decoding anchors of
issue 12 (FA4 direct, SDPA cuDNN and flash; contiguous cache, dense; microseconds and GB/s
of K/V read) at B8 Hq32 Hkv8 Lkv32768 Lq 1/4/16, B64 Lkv8192 Lq1, B1 Lkv131072 Lq1;
with --no-bwd, forward only; the extra shapes time the backward only with --bwd-extra (the
D64 shape alone with --bwd-d64). With --sliding, also sliding window 1024 (causal, a query
sees itself and the 1023 keys before it: attnc's `window = 1024`, `q - kv < 1024`) on every
shape: Flex FLASH with the band's mask_mod and FA4 direct with window_size=(1023, 0), as
../shared/bench/fa4/anchors_fa4.py; with --doc, document + causal (8 sorted random
documents per sequence, as attnc's gpu_bench): Flex FLASH with the mask_mod and FA4
direct through its varlen entry (each document one causal sequence, cu_seqlens), the
fastest exact form of that mask. Densities are counted exactly over the (q, kv) pairs.
The full set (Flex Triton, sliding window, documents, GQA, decoding) is
../shared/bench/fa4/anchors_fa4.py; this keeps its conventions: TFLOP/s over unmasked
pairs, forward 4*B*H*Lq*Lkv*D*density, backward 2.5x that; best of 3 x 10 iterations
after 3 warm-up calls; backward = (forward + backward) - forward. With --warm-ms=N, calls
in rounds of 10 for N ms more before the timing (the sustained rate under the GPU's power
cap, as `ATTNC_BENCH_WARM_MS=N attnc bench`). With --variants=a,b only those variants run
(names as printed: dense, causal, sliding1024, alibi_causal, softcap_causal, doc_causal).
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
try:
    from flash_attn.cute.interface import flash_attn_varlen_func
except Exception:
    flash_attn_varlen_func = None
print(torch.__version__, torch.cuda.get_device_name(), flush=True)

WARM_MS = float(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--warm-ms=")), 0))

def bench(fn, iters=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    t0 = time.time()
    while (time.time() - t0) * 1e3 < WARM_MS:
        for _ in range(iters): fn()
        torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)

def causal(b, h, q, kv): return q >= kv
def sliding(b, h, q, kv): return (q >= kv) & (q - kv < 1024)
def alibi(score, b, h, q, kv): return score + torch.exp2(-8.0 * (h + 1) / 16) * (kv - q)
def softcap(score, b, h, q, kv): return 30.0 * torch.tanh(score / 30.0)

NO_BWD = "--no-bwd" in sys.argv
BWD_EXTRA = "--bwd-extra" in sys.argv
BWD_D64 = "--bwd-d64" in sys.argv
SLIDING = "--sliding" in sys.argv
DOC = "--doc" in sys.argv
ONLY = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--variants=")), None)
OUTF = os.path.join(os.environ.get("OUT", "."), "fa4_anchors_lite.json")

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
    # document ids: 8 sorted random documents (one sequence for every batch row)
    doc = torch.sort(torch.randint(0, 8, (S,), device=dev))[0]
    def docmask(b, h, qq, kk): return (doc[qq] == doc[kk]) & (qq >= kk)
    variants = [("dense", None, None), ("causal", causal, None)] \
        + ([("sliding1024", sliding, None)] if SLIDING else []) \
        + [("alibi_causal", causal, alibi), ("softcap_causal", causal, softcap)] \
        + ([("doc_causal", docmask, None)] if DOC else [])
    if ONLY:
        variants = [v for v in variants if v[0] in ONLY]
    for name, mm, sm in variants:
        if mm is None:
            dens = 1.0
        elif mm is causal:
            dens = (S + 1) / (2 * S)
        else:
            # exact: the kept pairs counted in row chunks
            kept = 0
            for r0 in range(0, S, 2048):
                qi = torch.arange(r0, min(S, r0 + 2048), device=dev)[:, None]
                kept += int(mm(0, 0, qi, torch.arange(S, device=dev)[None, :]).sum().item())
            dens = kept / (S * S)
        fl = 4 * B * H * S * S * D * dens
        bm = create_block_mask(mm, B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev) if mm else None
        row = {}
        def put(key, f, args=None):
            qq, kk, vv, dd = args or (q, k, v, do)
            try:
                t0 = time.time(); f(qq, kk, vv); torch.cuda.synchronize(); first = time.time() - t0
                tf, tb = fwd_bwd(f, qq, kk, vv, dd, extra=(B, H, Hkv, S, D) != shapes0, d64=D == 64)
                row[key] = dict(fwd=fl / tf / 1e9, bwd=2.5 * fl / tb / 1e9, first_call_s=first)
            except Exception as ex:
                row[key] = dict(error=f"{type(ex).__name__}: {str(ex)[:160]}")
        put("flex_FLASH", lambda q, k, v: flex(q, k, v, score_mod=sm, block_mask=bm, enable_gqa=gqa, kernel_options={"BACKEND": "FLASH"}))
        if flash_attn_func is not None and sm in (None, softcap) and mm in (None, causal, sliding):
            kw = dict(causal=mm is not None)
            if mm is sliding: kw["window_size"] = (1023, 0)
            if sm is softcap: kw["softcap"] = 30.0
            def fa4(q, k, v):
                o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw)
                return (o[0] if isinstance(o, tuple) else o).transpose(1, 2)
            put("fa4", fa4)
        if flash_attn_varlen_func is not None and mm is docmask:
            # each (batch row, document) one causal sequence, packed: (B S, H, D)
            lens = torch.unique_consecutive(doc, return_counts=True)[1].to(torch.int32)
            lens = lens.repeat(B)
            cu = torch.zeros(lens.numel() + 1, device=dev, dtype=torch.int32)
            cu[1:] = torch.cumsum(lens, 0)
            mx = int(lens.max().item())
            # packed once, outside the timing (B S, heads, D) leaves
            pk = lambda x: x.detach().transpose(1, 2).reshape(B * S, x.shape[1], D).contiguous().requires_grad_(x.requires_grad)
            packed = (pk(q), pk(k), pk(v), pk(do))
            def fa4_doc(q, k, v):
                o = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu,
                                           max_seqlen_q=mx, max_seqlen_k=mx, causal=True)
                return o[0] if isinstance(o, tuple) else o
            put("fa4_varlen", fa4_doc, packed)
            del packed
        if sm is None and mm in (None, causal):
            def sd(q, k, v):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=mm is causal, enable_gqa=gqa)
            put("cudnn", sd)
        res[f"{name}/{tag}"] = row
        cells = [f"{key} " + (f"fwd {r['fwd']:.0f} bwd {r['bwd']:.0f} first {r['first_call_s']:.1f}s" if "fwd" in r else f"ERR {r['error'][:80]}") for key, r in row.items()]
        print(f"{name:15s} {tag:18s} | " + " | ".join(cells), flush=True)
    del q, k, v, do; torch.cuda.empty_cache()
    json.dump(res, open(OUTF, "w"), indent=1)  # what a timeout leaves
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
json.dump(res, open(OUTF, "w"), indent=1)
