# CPU anchors for session 44's tabulated relative-position values (f32 B1 H8 L2048 D64, 2
# threads, forward, ms median of 3): FlexAttention on the CPU (torch.compile) with the
# score_mods of examples/relative_bias_table.attn and t5_relative_bias.attn (t5_encoder:
# HuggingFace T5's bidirectional buckets), and SDPA with the bias materialized as a
# float attn_mask [1, H, L, L] (how PyTorch users run T5 without FlexAttention; the
# bias's build not timed). Next to `attnc bench examples/... --threads 2`.
# ATTNC_GRAD=1 (session 45): a training step instead — SDPA with the bias gathered from the
# learned table every step (HuggingFace T5's `compute_bias`; the bucket matrix made once),
# forward + backward to q, k, v and the table (FlexAttention has no CPU backward); next to
# `attnc bench ... --grad` (its forward + backward).
#   .venv/bin/python scripts/cpu_relbias_torch.py
import math, os, time, torch, warnings
from torch.nn.attention.flex_attention import flex_attention
from torch_timing import median_ms as t
warnings.simplefilter("ignore")
torch.set_num_threads(int(os.environ.get("ATTNC_THREADS", "2")))  # (the device call: 16)
torch.manual_seed(0)
B, H, L, D = 1, 8, 2048, 64
q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
rel = torch.randn(H, 129)        # relative_bias_table.attn: bias[h, clamp(q - kv, -64, 64) + 64]
t5 = torch.randn(32, H)          # t5_relative_bias.attn: t5_bias[bucket(kv - q, true), h]

def bucket(rp):
    nb, maxd = 16, 128           # bidirectional: 32 buckets, half each way
    off = (rp > 0).to(torch.int64) * nb
    n = rp.abs()
    max_exact = nb // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(maxd / max_exact)
                         * (nb - max_exact)).to(torch.int64)
    large = torch.clamp(large, max=nb - 1)
    return off + torch.where(n < max_exact, n, large)

def rel_mod(score, b, h, qi, ki): return score + rel[h, torch.clamp(qi - ki, -64, 64) + 64]
def t5_mod(score, b, h, qi, ki): return score + t5[bucket(ki - qi), h]

pos = torch.arange(L)
bias = {"relative_bias_table": rel[:, torch.clamp(pos[:, None] - pos[None, :], -64, 64) + 64],
        "t5_encoder": t5[bucket(pos[None, :] - pos[:, None])].permute(2, 0, 1)}
fa = torch.compile(flex_attention)


print(torch.__version__)
if os.environ.get("ATTNC_GRAD"):
    idx = {"relative_bias_table": (rel, lambda tab: tab[:, torch.clamp(pos[:, None] - pos[None, :], -64, 64) + 64]),
           "t5_encoder": (t5, lambda tab: tab[bucket(pos[None, :] - pos[:, None])].permute(2, 0, 1))}
    qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
    do = torch.randn_like(q)
    for name, (tab0, gather) in idx.items():
        tab = tab0.clone().requires_grad_(True)
        if name == "t5_encoder":  # the bucket matrix once, the gather per step
            bk = bucket(pos[None, :] - pos[:, None])
            gather = lambda tab: tab[bk].permute(2, 0, 1)  # noqa: E731
        def step():
            m = gather(tab)[None]
            o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, attn_mask=m)
            torch.autograd.grad(o, (qg, kg, vg, tab), do)
        print(f"{name}: sdpa cpu + float mask from the table, forward + backward {t(step):.2f} ms", flush=True)
    def dense_step():
        o = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)
        torch.autograd.grad(o, (qg, kg, vg), do)
    print(f"dense: sdpa cpu forward + backward {t(dense_step):.2f} ms")
    raise SystemExit
for name, mod in (("relative_bias_table", rel_mod), ("t5_encoder", t5_mod)):
    if not os.environ.get("ATTNC_NO_FLEX"):
        t0 = time.perf_counter(); fa(q, k, v, score_mod=mod); first = time.perf_counter() - t0
        print(f"{name}: flex cpu {t(lambda: fa(q, k, v, score_mod=mod)):.2f} ms (first call {first:.1f} s)", flush=True)
    m = bias[name][None].contiguous()
    print(f"{name}: sdpa cpu + float mask {t(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)):.2f} ms", flush=True)
print(f"dense: sdpa cpu {t(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)):.2f} ms")
