"""CPU anchors for attnc's CPU backend: PyTorch SDPA (dense, causal) and FlexAttention on
the CPU, f32, at the same shapes and thread counts as scripts/cpu-bench-remote.sh runs
`attnc bench`. TFLOP counting only unmasked pairs: 4*B*H*Lq*Lkv*D*density.
Backward (`sdpa_bwd/...`): SDPA's CPU backward (the flash kernel's backward) for dense and
causal at L2048 D64/D128, timed alone (autograd.grad over one kept graph), TFLOP counted
as 2.5x the forward's (FlashAttention's convention), next to `attnc bench --grad`.
Run on a machine with PyTorch >= 2.5: python3 cpu_bench_torch.py THREADS [THREADS...]
(`nofwd`: backward only; `noflex`: no FlexAttention)"""
import sys, time, json, os
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
from torch_timing import best_ms as bench

torch.manual_seed(0)
threads_list = [int(t) for t in sys.argv[1:] if t.isdigit()] or [2]
with_flex = "noflex" not in sys.argv[1:]
with_fwd = "nofwd" not in sys.argv[1:]
res = {"torch": torch.__version__, "cpu": os.popen("lscpu | grep 'Model name'").read().strip()}
print(torch.__version__, res["cpu"], flush=True)


def causal(b, h, q, kv): return q >= kv
def sliding(b, h, q, kv): return (q >= kv) & (q - kv <= 1024)
def alibi(score, b, h, q, kv): return score + torch.exp2(-8.0 * (h + 1) / 8) * (kv - q)
def softcap(score, b, h, q, kv): return 20.0 * torch.tanh(score / 20.0)

flex = torch.compile(flex_attention, dynamic=False)
for threads in threads_list:
    torch.set_num_threads(threads)
    for (L, D) in [(2048, 64), (2048, 128)]:
        B, H = 1, 8
        for name, is_causal in [("dense", False), ("causal", True)]:
            q = torch.randn(B, H, L, D, requires_grad=True)
            k = torch.randn(B, H, L, D, requires_grad=True)
            v = torch.randn(B, H, L, D, requires_grad=True)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
            do = torch.randn_like(out)
            ms = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            dens = (L * (L + 1) / 2) / (L * L) if is_causal else 1.0
            tf = 2.5 * 4 * B * H * L * L * D * dens / ms / 1e6
            key = f"sdpa_bwd/{name}/L{L}D{D}/t{threads}"
            res[key] = dict(ms=ms, gflops=tf)
            print(key, f"{ms:.2f} ms {tf:.1f} GFLOP/s (2.5x forward FLOPs)", flush=True)
    for (L, D) in ([(2048, 64), (2048, 128), (4096, 64), (4096, 128)] if with_fwd else []):
        B, H = 1, 8
        q = torch.randn(B, H, L, D); k = torch.randn_like(q); v = torch.randn_like(q)
        for name, is_causal in [("dense", False), ("causal", True)]:
            with torch.no_grad():
                ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
            dens = (L * (L + 1) / 2) / (L * L) if is_causal else 1.0
            tf = 4 * B * H * L * L * D * dens / ms / 1e6
            key = f"sdpa/{name}/L{L}D{D}/t{threads}"
            res[key] = dict(ms=ms, gflops=tf)
            print(key, f"{ms:.2f} ms {tf:.1f} GFLOP/s", flush=True)
        if (L, D) != (2048, 64) or not with_flex:
            continue
        doc = torch.sort(torch.randint(0, 8, (L,)))[0]
        def docmask(b, h, qq, kk): return (doc[qq] == doc[kk]) & (qq >= kk)
        for name, mm, sm in [("causal", causal, None), ("sliding1024", sliding, None), ("alibi_causal", causal, alibi),
                             ("softcap_causal", causal, softcap), ("doc_causal", docmask, None)]:
            try:
                bm = create_block_mask(mm, B=None, H=None, Q_LEN=L, KV_LEN=L, device="cpu")
                t0 = time.time(); flex(q, k, v, score_mod=sm, block_mask=bm); first = time.time() - t0
                ms = bench(lambda: flex(q, k, v, score_mod=sm, block_mask=bm))
                qi = torch.arange(L)[:, None]; ki = torch.arange(L)[None, :]
                dens = mm(0, 0, qi, ki).float().mean().item()
                tf = 4 * B * H * L * L * D * dens / ms / 1e6
                key = f"flex_cpu/{name}/L{L}D{D}/t{threads}"
                res[key] = dict(ms=ms, gflops=tf, first_call_s=first, density=dens)
                print(key, f"{ms:.2f} ms {tf:.1f} GFLOP/s first call {first:.1f} s", flush=True)
            except Exception as ex:
                print("flex_cpu", name, "failed:", type(ex).__name__, str(ex)[:200], flush=True)
out = os.environ.get("OUT", ".")
json.dump(res, open(os.path.join(out, f"cpu_anchors_t{threads_list[0]}.json"), "w"), indent=1)
