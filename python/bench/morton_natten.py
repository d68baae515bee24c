"""Neighbourhood attention over a Morton-ordered image (attention-gym's
`generate_morton_natten`) through the Python package, next to FlexAttention compiled
(Triton) with its block mask made once outside the timing. attnc derives the mask's block
sparsity by analysis of `examples/morton_natten.attn` (its canvas and kernel constants
replaced for each shape); Flex evaluates the mask everywhere (`create_block_mask`). CUDA
events, min of 3 x 20 calls after warm-ups; TFLOP/s over the mask's unmasked pairs.
Prints, per shape, both times and the kept-block fraction of Flex's exact block mask.

usage: python3 morton_natten.py [--examples DIR] [--flex-only] [W,H,K,B,HEADS ...]
  (--flex-only: FlexAttention alone, for a machine without the package, next to
  `attnc bench` of the same source, which --write-source DIR writes)
  (canvas W x H tokens, a K x K kernel, batch B; default 64,64,7,4,16 128,128,15,1,16)
"""

import argparse
import pathlib
import re

import torch

from cuda_timing import bench


def deinterleave(code):
    c = code & 0x55555555
    c = (c | (c >> 1)) & 0x33333333
    c = (c | (c >> 2)) & 0x0F0F0F0F
    c = (c | (c >> 4)) & 0x00FF00FF
    return (c | (c >> 8)) & 0x0000FFFF


def morton_mask(w, h, k):
    def mm(b, hh, qi, ki):
        qx, qy = deinterleave(qi), deinterleave(qi >> 1)
        kx, ky = deinterleave(ki), deinterleave(ki >> 1)
        cx = qx.clamp(k // 2, (w - 1) - k // 2)
        cy = qy.clamp(k // 2, (h - 1) - k // 2)
        return ((cx - kx).abs() <= k // 2) & ((cy - ky).abs() <= k // 2)

    return mm


def source(examples, w, h, k):
    text = (pathlib.Path(examples) / "morton_natten.attn").read_text()
    for name, val in (("CANVAS_W", w), ("CANVAS_H", h), ("KERNEL_W", k), ("KERNEL_H", k)):
        text, n = re.subn(rf"const {name}: i32 = \d+;", f"const {name}: i32 = {val};", text)
        assert n == 1, name
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--flex-only", action="store_true")
    ap.add_argument("--write-source", default=None, help="write each shape's .attn source into this folder")
    ap.add_argument("shapes", nargs="*", default=["64,64,7,4,16", "128,128,15,1,16"])
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    for arg in a.shapes:
        w, hgt, k, b, heads = (int(x) for x in arg.split(","))
        n = w * hgt
        src = source(a.examples, w, hgt, k)
        if a.write_source:
            pathlib.Path(a.write_source, f"morton_{w}x{hgt}_k{k}.attn").write_text(src)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, kk, v = (torch.randn(b, heads, n, a.d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        mm = morton_mask(w, hgt, k)
        idx = torch.arange(n, device="cuda", dtype=torch.int32)
        pairs = int(mm(0, 0, idx[:, None], idx[None, :]).sum())
        tf = 4 * b * heads * a.d * pairs / 1e12
        bm = create_block_mask(mm, None, None, n, n, device="cuda")
        kept = float(bm.kv_num_blocks.sum() + (bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0))
        frac = kept / (bm.kv_num_blocks.shape[-1] * ((n + 127) // 128))
        ref = flex(q, kk, v, block_mask=bm)
        ms_f = bench(lambda: flex(q, kk, v, block_mask=bm))
        if a.flex_only:
            print(f"morton_natten canvas {w}x{hgt} kernel {k} B{b} H{heads} L{n} D{a.d}: flex_triton {ms_f * 1e3:.1f} us "
                  f"{tf / ms_f * 1e3:.1f} TFLOP/s (its 128x128 blocks kept {frac:.1%}, density {pairs / n / n:.4f})", flush=True)
            continue
        import attnc

        attn = attnc.compile(src).attention("morton_natten")
        o = attn(q, kk, v)
        diff = float((o.float() - ref.float()).abs().max())
        ms_a = bench(lambda: attn(q, kk, v))
        print(f"morton_natten canvas {w}x{hgt} kernel {k} B{b} H{heads} L{n} D{a.d}: attnc {ms_a * 1e3:.1f} us "
              f"{tf / ms_a * 1e3:.1f} TFLOP/s, flex_triton {ms_f * 1e3:.1f} us {tf / ms_f * 1e3:.1f} TFLOP/s "
              f"(its 128x128 blocks kept {frac:.1%}), x flex {ms_f / ms_a:.2f}, maxdiff {diff:.3g}", flush=True)


if __name__ == "__main__":
    main()
