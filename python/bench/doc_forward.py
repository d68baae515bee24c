"""Document + causal forward through the Python package at B2 H16 L8192 D128 bf16 (8 sorted
random documents per sequence): attnc's zero-copy call, which builds its block table on
the GPU in every call (`blocktable`), next to FlexAttention compiled (Triton) with its
block mask made once outside the timing. CUDA events, min of 3 x 20 calls after warm-ups;
TFLOP/s over the mask's unmasked pairs (4 B H D x pairs).

usage: python3 doc_forward.py [--examples DIR] [B,H,L ...]
"""

import argparse
import pathlib

import torch

import attnc
from cuda_timing import bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("shapes", nargs="*", default=["2,16,8192"])
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    attn = attnc.compile(pathlib.Path(a.examples) / "document_causal.attn").attention("document_causal")
    flex = torch.compile(flex_attention, dynamic=False)
    for arg in a.shapes:
        b, h, l = (int(x) for x in arg.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, l, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
        pairs = sum(int(((doc[i][:, None] == doc[i][None, :]).tril()).sum()) for i in range(b))
        tf = 4 * h * 128 * pairs / 1e12

        def mm(bb, hh, qi, ki):
            return (qi >= ki) & (doc[bb, qi] == doc[bb, ki])

        bm = create_block_mask(mm, b, None, l, l, device="cuda")
        ref = flex(q, k, v, block_mask=bm)
        o = attn(q, k, v, doc=doc)
        diff = float((o.float() - ref.float()).abs().max())
        ms_f = bench(lambda: flex(q, k, v, block_mask=bm))
        ms_a = bench(lambda: attn(q, k, v, doc=doc))
        print(f"doc_forward B{b} H{h} L{l}: attnc {ms_a * 1e3:.1f} us {tf / ms_a * 1e3:.1f} TFLOP/s "
              f"(table built every call), flex_triton {ms_f * 1e3:.1f} us {tf / ms_f * 1e3:.1f} TFLOP/s, "
              f"x flex {ms_f / ms_a:.2f}, maxdiff {diff:.3g}", flush=True)


if __name__ == "__main__":
    main()
