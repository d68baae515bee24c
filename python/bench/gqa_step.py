"""The training step of grouped-query attention (Llama-3's B1 Hq32 Hkv8 L16384 D128) next to
the same variants at B2 H16 L8192 D128, through the Python package, with the anchors in the
same process: FA4 called directly (where importable), FlexAttention's FLASH backend and
SDPA cuDNN (``enable_gqa``). bf16; the forward alone and forward + backward
(``o.backward(dO)``), CUDA events, each backend in ``--rounds`` interleaved rounds of 3 x 10
calls after warm-ups, the median of the rounds' minima; TFLOP/s over unmasked pairs
(forward 4 B H L^2 D density, backward 2.5x that; backward = step - forward).

usage: python3 gqa_step.py [--examples DIR] [--rounds N] [--variants dense,causal] [--shapes gqa,mha]
"""

import argparse
import os
import json
import pathlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnc
from cuda_timing import fwd_step_rounds, report  # this folder (sys.path[0] when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="dense,causal")
    ap.add_argument("--shapes", default="gqa,mha")
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    try:
        from flash_attn.cute.interface import flash_attn_func
    except Exception as ex:
        flash_attn_func = None
        print(f"FA4 not importable: {type(ex).__name__}", flush=True)
    flex = torch.compile(flex_attention, dynamic=False)
    ex = pathlib.Path(a.examples)
    attns = {"dense": attnc.compile(ex / "dense.attn").attention(), "causal": attnc.compile(ex / "causal.attn").attention()}
    shapes = {"gqa": (1, 32, 8, 16384), "mha": (2, 16, 16, 8192)}
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    out = {}
    for sname in a.shapes.split(","):
        b, h, hkv, l = shapes[sname]
        d = 128
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(b, hkv, l, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        gqa = h != hkv
        for var in a.variants.split(","):
            causal = var == "causal"
            fl = 4 * b * h * l * l * d * ((l + 1) / (2 * l) if causal else 1.0)
            attn = attns[var]
            bm = create_block_mask(lambda b_, h_, q_, k_: q_ >= k_, None, None, l, l, device="cuda") if causal else None
            runs = {
                "attnc": lambda q, k, v: attn(q, k, v),
                "flex_FLASH": lambda q, k, v: flex(q, k, v, block_mask=bm, enable_gqa=gqa,
                                                   kernel_options={"BACKEND": "FLASH"}),
            }

            def cudnn(q, k, v):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

            runs["cudnn"] = cudnn
            if flash_attn_func is not None:
                def fa4(q, k, v):
                    o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
                    return (o[0] if isinstance(o, tuple) else o).transpose(1, 2)

                runs["fa4"] = fa4
            leaves = tuple(x.detach().clone().requires_grad_(True) for x in (q, k, v)) + (do,)
            times, failed = fwd_step_rounds(runs, {key: leaves for key in runs}, a.rounds)
            tag = f"{var} B{b} H{h}" + (f" Hkv{hkv}" if gqa else "") + f" L{l} D{d}"
            print(f"gqa_step {tag}", flush=True)
            rows = report(times, failed, fl, width=11)
            if "fwd_ms" in rows.get("attnc", {}):
                for phase in ("fwd_ms", "step_ms"):
                    anchors = [(r[phase], key) for key, r in rows.items() if key != "attnc" and phase in r]
                    if anchors:
                        t, key = min(anchors)
                        print(f"  attnc {phase[:-3]}: {t / rows['attnc'][phase]:.3f}x the best anchor ({key})", flush=True)
            out[tag] = rows
        del q, k, v, do
        torch.cuda.empty_cache()
    json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "gqa_step.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
