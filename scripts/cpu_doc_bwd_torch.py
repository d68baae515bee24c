"""CPU anchors for attnc's CPU backward on document masks: document + causal (8 sorted
ids per sequence, as `attnc bench --docs 8`), B1 H8 L2048 f32, D64 and D128, the
backward timed alone (`torch.autograd.grad` over one kept graph, best of 3 x 3) for SDPA
with the mask as a boolean `attn_mask` and for compiled FlexAttention with a block mask
made once; GFLOP/s at 2.5x the forward's FLOPs over unmasked pairs, next to
`attnc bench examples/document_causal.attn --attention document_causal --grad`.
Run: python3 cpu_doc_bwd_torch.py THREADS [THREADS...]"""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
from torch_timing import best_ms as bench




torch.manual_seed(0)
flex = torch.compile(flex_attention, dynamic=False)
for threads in [int(t) for t in sys.argv[1:]] or [2]:
    torch.set_num_threads(threads)
    B, H, L = 1, 8, 2048
    doc = torch.sort(torch.randint(0, 8, (L,)))[0]
    qi, ki = torch.arange(L)[:, None], torch.arange(L)[None, :]
    mask = (doc[qi] == doc[ki]) & (qi >= ki)
    dens = mask.float().mean().item()
    for D in (64, 128):
        q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
        flops = 2.5 * 4 * B * H * L * L * D * dens
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        do = torch.randn_like(out)
        ms = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
        print(f"sdpa_bwd/doc_causal/L{L}D{D}/t{threads} {ms:.2f} ms {flops / ms / 1e6:.1f} GFLOP/s density {dens:.4f}", flush=True)
        try:
            def docmask(b, h, qq, kk):
                return (doc[qq] == doc[kk]) & (qq >= kk)
            bm = create_block_mask(docmask, B=None, H=None, Q_LEN=L, KV_LEN=L, device="cpu")
            out = flex(q, k, v, block_mask=bm)
            ms = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            print(f"flex_cpu_bwd/doc_causal/L{L}D{D}/t{threads} {ms:.2f} ms {flops / ms / 1e6:.1f} GFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001 (an anchor that does not run is reported)
            print(f"flex_cpu_bwd/doc_causal/L{L}D{D}/t{threads} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
