"""The device timeline of a document + causal training step through the package, without
and with a block mask (bench_gpu.py ``fwdbwd``'s case: B2 H16 L4096 D128 bf16, ids sorted
in 0..8 per batch row from the same generator seed): each kernel's start (µs from the
step's first) and duration under torch.profiler, two steps each, and the sum per kernel
name — what the backward's block ranges made on the device cost (the block-table kernel at
the backward's tiles and the backward-ranges kernel) against a block mask's ready ranges,
and whether the backward kernels do the same work either way.

usage: python3 doc_step_timeline.py [EXAMPLES_DIR]"""

import collections
import pathlib
import sys

import torch
import attnc
from kernel_timeline import device_events, print_events  # this folder (sys.path[0] when run as a script)


def doc_step_inputs(examples):
    """bench_gpu.py ``fwdbwd``'s document case: the attention, q, k, v (requiring grad),
    dO, the ids and a block mask made once from them."""
    attn = attnc.compile(pathlib.Path(examples) / "document_causal.attn").attention("document_causal")
    b, h, l, d = 2, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
    doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    return attn, q, k, v, do, doc, attn.block_mask(q, k, v, doc=doc)


def main():
    ex = sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "examples"
    attn, q, k, v, do, doc, bm = doc_step_inputs(ex)
    for tag, step in (("no block mask", lambda: attn(q, k, v, doc=doc).backward(do)),
                      ("block mask", lambda: attn(q, k, v, doc=doc, block_mask=bm).backward(do))):
        ev = device_events(step, 2, cpu=False)
        print(f"{tag}: {len(ev)} device events (two steps)", flush=True)
        print_events(ev)
        per = collections.defaultdict(float)
        for e in ev:
            per[e.name[:60]] += (e.time_range.end - e.time_range.start) / 2
        print(f"  per step: " + ", ".join(f"{n} {t:.1f}" for n, t in per.items()), flush=True)


if __name__ == "__main__":
    main()
