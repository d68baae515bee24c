"""PyTorch anchors of the attnc GPU *backward* benchmark: FlexAttention (torch.compile,
Triton backend) and SDPA flash / cuDNN backward, bf16, B2 H16 L8192 D128 and B4 H16 L4096
D64, variants full, causal, sliding1024, alibi_causal, softcap_causal, doc_causal
(8 sorted documents). Times the backward only (out.backward(dO, retain_graph=True) after
one forward), backward TFLOP/s = 2.5 * 4*B*H*S*S*D*density / time. Then prints attnc's
numbers (from $OUT/attnc_bwd_bench.json, written by `gpu_backward --ignored bench` earlier in the
same run) next to them.
Environment: ATTNC_TORCH_ONLY=full,causal (variants), ATTNC_TORCH_SHAPES=D128 (shapes;
D256 = B2 H16 L4096 D256, Gemma's head dim, runs only when named).
Usage: python3 gpu_bench_torch_bwd.py [attnc_bwd_bench.json]"""
import torch, json, os, sys
import torch._dynamo
torch._dynamo.config.recompile_limit = 1000
torch._dynamo.config.cache_size_limit = 1000
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
res = {}

def bench(fn, iters=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return sorted(ts)[1]

flex = torch.compile(flex_attention, dynamic=False)
def causal(b, h, q, kv): return q >= kv
def sliding(b, h, q, kv): return (q >= kv) & (q - kv < 1024)
def alibi(score, b, h, q, kv): return score + torch.exp2(-8.0 * (h + 1) / 16) * (kv - q)
def softcap(score, b, h, q, kv): return 30.0 * torch.tanh(score / 30.0)

def density(mask_fn, S):
    qi = torch.arange(S, device=dev)[:, None]; ki = torch.arange(S, device=dev)[None, :]
    return mask_fn(0, 0, qi, ki).float().mean().item()

only = os.environ.get("ATTNC_TORCH_ONLY")
shapes = os.environ.get("ATTNC_TORCH_SHAPES")  # e.g. "D128": only the shapes named
for (B, H, S, D) in [(2, 16, 8192, 128), (4, 16, 4096, 64), (2, 16, 4096, 256)]:
    if shapes and f"D{D}" not in shapes.split(","): continue
    if D == 256 and not shapes: continue  # head dim 256 (Gemma-style) only when named
    q = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
    do = torch.randn_like(q)
    doc = torch.sort(torch.randint(0, 8, (S,), device=dev))[0]
    def docmask(b, h, qq, kk): return (doc[qq] == doc[kk]) & (qq >= kk)
    # capture gradients: a relative-position table and a learnable soft-cap (requires_grad)
    rel = (torch.rand(H, 129, device=dev) * 2 - 1).requires_grad_(True)
    cap = torch.tensor(30.0, device=dev, requires_grad=True)
    def relbias(score, b, h, q, kv): return score + rel[h, torch.clamp(q - kv, -64, 64) + 64]
    def softcap_param(score, b, h, q, kv): return cap * torch.tanh(score / cap)
    variants = [("full", None, None), ("causal", causal, None), ("sliding1024", sliding, None),
                ("alibi_causal", causal, alibi), ("softcap_causal", causal, softcap), ("doc_causal", docmask, None),
                ("relbias_full", None, relbias), ("softcap_param_causal", causal, softcap_param)]
    for name, mm, sm in variants:
        if only and name not in only.split(","): continue
        bm = create_block_mask(mm, B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev) if mm else None
        try:
            out = flex(q, k, v, score_mod=sm, block_mask=bm)
            ms = bench(lambda: out.backward(do, retain_graph=True))
        except Exception as ex:
            print(f"flex/{name}: failed ({type(ex).__name__}: {ex})", flush=True); continue
        q.grad = k.grad = v.grad = rel.grad = cap.grad = None
        frac = 1.0 if mm is None else density(mm, S)
        fl = 2.5 * 4 * B * H * S * S * D * frac
        key = f"flex_bwd/{name}/B{B}H{H}S{S}D{D}"
        res[key] = dict(ms=ms, tflops=fl / ms / 1e9)
        print(key, f"{ms:.3f} ms {fl/ms/1e9:.1f} TFLOP/s", flush=True)
        del out
    for bname, backend in [("sdpa_flash_bwd", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn_bwd", SDPBackend.CUDNN_ATTENTION)]:
        for causal_flag in [False, True]:
            try:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal_flag)
                    ms = bench(lambda: out.backward(do, retain_graph=True))
            except Exception as ex:
                print(bname, "failed", type(ex).__name__); continue
            q.grad = k.grad = v.grad = None
            frac = (S * (S + 1) / 2) / (S * S) if causal_flag else 1.0
            fl = 2.5 * 4 * B * H * S * S * D * frac
            key = f"{bname}/{'causal' if causal_flag else 'full'}/B{B}H{H}S{S}D{D}"
            res[key] = dict(ms=ms, tflops=fl / ms / 1e9)
            print(key, f"{ms:.3f} ms {fl/ms/1e9:.1f} TFLOP/s", flush=True)
            del out
    del q, k, v, do
    torch.cuda.empty_cache()

out = os.environ.get("OUT", ".")
json.dump(res, open(out + "/torch_bwd_bench.json", "w"), indent=1)
path = sys.argv[1] if len(sys.argv) > 1 else out + "/attnc_bwd_bench.json"
try:
    at = json.load(open(path))
except Exception as ex:
    print("no attnc backward results:", ex); sys.exit(0)
print(f"\n{'backward TFLOP/s':<32}{'attnc':>8}{'flex':>8}{'FA2':>8}{'cuDNN':>8}{'x flex':>8}{'x best':>8}")
for shape in ["B2H16S8192D128", "B4H16S4096D64", "B2H16S4096D256"]:
    for name in ["full", "causal", "sliding1024", "alibi_causal", "softcap_causal", "doc_causal",
                 "relbias_full", "softcap_param_causal"]:
        a = at.get(f"attnc_bwd/{name}/{shape}")
        if not a: continue
        f = res.get(f"flex_bwd/{name}/{shape}"); fa = res.get(f"sdpa_flash_bwd/{name}/{shape}"); cu = res.get(f"sdpa_cudnn_bwd/{name}/{shape}")
        g = lambda r: f"{r['tflops']:8.1f}" if r else f"{'-':>8}"
        best = max([r['tflops'] for r in (f, fa, cu) if r] or [0])
        rf = f"{a['tflops']/f['tflops']:8.2f}" if f else f"{'-':>8}"
        rb = f"{a['tflops']/best:8.2f}" if best else f"{'-':>8}"
        print(f"{name + '/' + shape:<32}{a['tflops']:8.1f}{g(f)}{g(fa)}{g(cu)}{rf}{rb}")
