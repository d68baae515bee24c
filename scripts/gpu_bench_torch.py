"""PyTorch side of the attnc GPU benchmark (adapted from ../shared/bench/flex_anchors.py):
FlexAttention (torch.compile, Triton), SDPA flash (FA2) and cuDNN, bf16, at
B2 H16 L8192 D128 and B4 H16 L4096 D64, variants full, causal, sliding1024,
alibi_causal, softcap_causal, doc_causal (8 sorted documents). TFLOP/s counts only
unmasked pairs. Also create_block_mask (eager and compiled) for document + causal at
B2 S8192 and B1 S131072 (compare with gpu_bench_block_table). Then prints attnc's numbers (from $OUT/attnc_bench.json, written by the
gpu_bench test binary earlier in the same run) next to them.
Usage: python3 gpu_bench_torch.py [attnc_bench.json]"""
import torch, time, json, os, sys
import torch._dynamo
torch._dynamo.config.recompile_limit = 1000
torch._dynamo.config.cache_size_limit = 1000
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

def bench(fn, iters=20, warm=5):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return min(ts)

flex = torch.compile(flex_attention, dynamic=False)
def causal(b, h, q, kv): return q >= kv
def sliding(b, h, q, kv): return (q >= kv) & (q - kv < 1024)
def alibi(score, b, h, q, kv): return score + torch.exp2(-8.0 * (h + 1) / 16) * (kv - q)
def softcap(score, b, h, q, kv): return 30.0 * torch.tanh(score / 30.0)

def density(mask_fn, S):
    qi = torch.arange(S, device=dev)[:, None]; ki = torch.arange(S, device=dev)[None, :]
    return mask_fn(0, 0, qi, ki).float().mean().item()

only = os.environ.get("ATTNC_TORCH_ONLY")  # e.g. "full,causal"
for (B, H, S, D) in [(2, 16, 8192, 128), (4, 16, 4096, 64)]:
    q = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn_like(q); v = torch.randn_like(q)
    doc = torch.sort(torch.randint(0, 8, (S,), device=dev))[0]
    def docmask(b, h, qq, kk): return (doc[qq] == doc[kk]) & (qq >= kk)
    variants = [("full", None, None), ("causal", causal, None), ("sliding1024", sliding, None),
                ("alibi_causal", causal, alibi), ("softcap_causal", causal, softcap), ("doc_causal", docmask, None)]
    for name, mm, sm in variants:
        if only and name not in only.split(","): continue
        bm = create_block_mask(mm, B=None, H=None, Q_LEN=S, KV_LEN=S, device=dev) if mm else None
        t0 = time.time(); flex(q, k, v, score_mod=sm, block_mask=bm); torch.cuda.synchronize(); tc = time.time() - t0
        ms = bench(lambda: flex(q, k, v, score_mod=sm, block_mask=bm))
        frac = 1.0 if mm is None else density(mm, S)
        fl = 4 * B * H * S * S * D * frac
        key = f"flex/{name}/B{B}H{H}S{S}D{D}"
        res[key] = dict(ms=ms, tflops=fl / ms / 1e9, density=frac, first_call_s=tc)
        print(key, f"{ms:.3f} ms {fl/ms/1e9:.1f} TFLOP/s first-call {tc:.2f}s", flush=True)
    for bname, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
        for causal_flag in [False, True]:
            try:
                with sdpa_kernel(backend):
                    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal_flag))
            except Exception as ex:
                print(bname, "failed", type(ex).__name__); continue
            frac = (S * (S + 1) / 2) / (S * S) if causal_flag else 1.0
            fl = 4 * B * H * S * S * D * frac
            key = f"{bname}/{'causal' if causal_flag else 'full'}/B{B}H{H}S{S}D{D}"
            res[key] = dict(ms=ms, tflops=fl / ms / 1e9)
            print(key, f"{ms:.3f} ms {fl/ms/1e9:.1f} TFLOP/s", flush=True)
    del q, k, v
    torch.cuda.empty_cache()

# create_block_mask for document + causal with per-batch sorted ids (8 documents), the
# counterpart of attnc's block table built on the GPU (gpu_bench_block_table in bench.log)
if not only or "blockmask" in only.split(","):
    for (B, S) in [(2, 8192), (1, 131072)]:
        docb = torch.sort(torch.randint(0, 8, (B, S), device=dev), dim=1)[0]
        def dm(b, h, qq, kk): return (docb[b, qq] == docb[b, kk]) & (qq >= kk)
        for comp in [False, True]:
            kind = "compiled" if comp else "eager"
            try:
                fn = lambda: create_block_mask(dm, B=B, H=None, Q_LEN=S, KV_LEN=S, device=dev, _compile=comp)
                t0 = time.time(); fn(); torch.cuda.synchronize(); first = time.time() - t0
                ms = bench(fn, iters=5, warm=1)
                res[f"create_block_mask/doc_causal/{kind}/B{B}S{S}"] = dict(ms=ms, first_call_s=first)
                print(f"create_block_mask doc_causal B{B} S{S} {kind}: {ms:.3f} ms (first call {first:.2f} s)", flush=True)
            except Exception as ex:
                print(f"create_block_mask doc_causal B{B} S{S} {kind}: failed ({type(ex).__name__})", flush=True)
            torch.cuda.empty_cache()

out = os.environ.get("OUT", ".")
json.dump(res, open(out + "/torch_bench.json", "w"), indent=1)
path = sys.argv[1] if len(sys.argv) > 1 else out + "/attnc_bench.json"
try:
    at = json.load(open(path))
except Exception as ex:
    print("no attnc results:", ex); sys.exit(0)
print(f"\n{'variant':<32}{'attnc':>8}{'flex':>8}{'FA2':>8}{'cuDNN':>8}{'x flex':>8}{'x FA2':>8}  jit cold/disk/mem ms")
for shape in ["B2H16S8192D128", "B4H16S4096D64"]:
    for name in ["full", "causal", "sliding1024", "alibi_causal", "softcap_causal", "doc_causal"]:
        a = at.get(f"attnc/{name}/{shape}"); f = res.get(f"flex/{name}/{shape}")
        fa = res.get(f"sdpa_flash/{name}/{shape}"); cu = res.get(f"sdpa_cudnn/{name}/{shape}")
        if not a: continue
        g = lambda r: f"{r['tflops']:8.1f}" if r else f"{'-':>8}"
        rf = f"{a['tflops']/f['tflops']:8.2f}" if f else f"{'-':>8}"
        r2 = f"{a['tflops']/fa['tflops']:8.2f}" if fa else f"{'-':>8}"
        print(f"{name + '/' + shape:<32}{a['tflops']:8.1f}{g(f)}{g(fa)}{g(cu)}{rf}{r2}  {a['jit_cold_ms']:.1f}/{a['jit_disk_warm_ms']:.1f}/{a['jit_mem_warm_ms']:.3f}")
