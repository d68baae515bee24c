"""Document + causal attention through the Python package with a block mask made once, whose
tile list runs the document-tiled forward (``BlockMask.document_tiles``), next to the
anchors in the same process: FlexAttention compiled with its Triton and FLASH (FA4)
backends (block mask made once), and FA4 called directly through its varlen entry (each
document one causal sequence; the fastest exact form of the mask), where importable.

Shapes (bf16, 8 sorted random documents per batch row, drawn like
``../shared/bench/flex_anchors.py``): B2 H16 L8192 and B1 Hq32 Hkv8 L16384 D128, and with
``--shapes d64`` B4 H16 L4096 D64. Per backend
the forward alone and forward + backward (``o.backward(dO)``), CUDA events, each backend
timed in ``--rounds`` interleaved rounds of 3 x 10 calls after warm-ups; the median of the
rounds' minima. TFLOP/s over the mask's unmasked pairs: forward 4 B H D pairs, backward
2.5x that (backward = step - forward). attnc rows: ``attnc_tiles`` (block mask with
document tiles, forward and backward), ``attnc_fwdtiles`` (the forward's alone, the
backward on the block ranges), ``attnc_table`` (the block mask's table and ranges, made
with the tiles dropped), ``attnc_nomask`` (no block mask: the table is built
on the GPU in every call).

``--only KEY,..``: those rows alone (e.g. ``attnc_tiles`` for A/B runs of the backward's
``ATTNC_BWD_*`` settings in separate processes); ``--nd``: attnc's backward with
``deterministic=False``; ``--tag T``: a label printed with each line.

usage: python3 doc_tiles.py [--examples DIR] [--rounds N] [--shapes b2,gqa] [--no-step]
       [--only KEYS] [--nd] [--tag T]
"""

import argparse
import json
import os
import pathlib
import torch

import attnc
from cuda_timing import fwd_step_rounds, report  # this folder (sys.path[0] when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default="b2,gqa")
    ap.add_argument("--no-step", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--nd", action="store_true")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    det = not a.nd
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    try:
        from flash_attn.cute.interface import flash_attn_varlen_func
    except Exception as ex:  # not installed on this machine
        flash_attn_varlen_func = None
        print(f"FA4 not importable: {type(ex).__name__}", flush=True)
    attn = attnc.compile(pathlib.Path(a.examples) / "document_causal.attn").attention("document_causal")
    flex = torch.compile(flex_attention, dynamic=False)
    shapes = {"b2": (2, 16, 16, 8192, 128), "gqa": (1, 32, 8, 16384, 128), "d64": (4, 16, 16, 4096, 64)}
    out = {}
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    for name in a.shapes.split(","):
        b, h, hkv, l, d = shapes[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(b, hkv, l, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
        pairs = sum(int(((doc[i][:, None] == doc[i][None, :]).tril()).sum()) for i in range(b))
        fl = 4 * h * d * pairs

        def mm(bb, hh, qi, ki):
            return (qi >= ki) & (doc[bb, qi] == doc[bb, ki])

        fbm = create_block_mask(mm, b, None, l, l, device="cuda")
        bm = attn.block_mask(q, k, v, doc=doc)
        # (the block mask's table alone: the same tables with the tile list dropped)
        from attnc import _attnc
        table = attnc.BlockMask(bm._key, _attnc.block_mask_handle(_table_tuple(attn, q, k, v, doc)),
                                bm._made_from, bm._params, bm._call)
        fwd_only = attnc.BlockMask(bm._key, _attnc.block_mask_handle(_table_tuple(attn, q, k, v, doc, True)),
                                   bm._made_from, bm._params, bm._call)
        gqa = h != hkv
        runs = {
            "attnc_tiles": lambda q, k, v: attn(q, k, v, doc=doc, block_mask=bm, deterministic=det),
            "attnc_table": lambda q, k, v: attn(q, k, v, doc=doc, block_mask=table, deterministic=det),
            "attnc_fwdtiles": lambda q, k, v: attn(q, k, v, doc=doc, block_mask=fwd_only, deterministic=det),
            "attnc_nomask": lambda q, k, v: attn(q, k, v, doc=doc, deterministic=det),
            "flex_triton": lambda q, k, v: flex(q, k, v, block_mask=fbm, enable_gqa=gqa),
            "flex_FLASH": lambda q, k, v: flex(q, k, v, block_mask=fbm, enable_gqa=gqa,
                                               kernel_options={"BACKEND": "FLASH"}),
        }
        args = {key: (q, k, v, do) for key in runs}
        if flash_attn_varlen_func is not None and (only is None or "fa4_varlen" in only):
            lens = torch.cat([torch.unique_consecutive(doc[i], return_counts=True)[1] for i in range(b)]).to(torch.int32)
            cu = torch.zeros(lens.numel() + 1, device="cuda", dtype=torch.int32)
            cu[1:] = torch.cumsum(lens, 0)
            mx = int(lens.max().item())

            def pk(x):
                return x.transpose(1, 2).reshape(b * l, x.shape[1], d).contiguous()

            def fa4(q, k, v):
                o = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=mx,
                                           max_seqlen_k=mx, causal=True)
                return o[0] if isinstance(o, tuple) else o

            runs["fa4_varlen"] = fa4
            args["fa4_varlen"] = (pk(q), pk(k), pk(v), pk(do))
        if only is not None:
            runs = {key: f for key, f in runs.items() if key in only}
        ref = attn(q, k, v, doc=doc, block_mask=bm).float()
        for key in [x for x in ("attnc_nomask", "flex_triton") if x in runs]:
            diff = float((runs[key](q, k, v).float() - ref).abs().max())
            print(f"  maxdiff attnc_tiles vs {key}: {diff:.3g}", flush=True)
        leaves = {key: tuple(x.detach().clone().requires_grad_(i < 3) for i, x in enumerate(args[key])) for key in runs}
        times, failed = fwd_step_rounds(runs, leaves, a.rounds, step=not a.no_step)
        tag = f"B{b} H{h}" + (f" Hkv{hkv}" if gqa else "") + f" L{l} D{d}"
        print(f"doc_tiles {tag}{' ' + a.tag if a.tag else ''}{'' if det else ' deterministic=False'}: "
              f"{bm.document_tiles} document tiles, {bm.backward_document_tiles} backward kv tiles, "
              f"density {pairs / (b * l * l):.4f}", flush=True)
        rows = report(times, failed, fl)
        best = {}
        for phase in ("fwd_ms", "step_ms"):
            anchors = [(rows[k][phase], k) for k in rows if not k.startswith("attnc") and phase in rows[k]]
            if anchors and phase in rows.get("attnc_tiles", {}) and phase in rows.get("attnc_table", {}):
                t, k = min(anchors)
                best[phase] = (k, t / rows["attnc_tiles"][phase])
                print(f"  attnc_tiles {phase[:-3]}: {t / rows['attnc_tiles'][phase]:.3f}x the best anchor ({k}); "
                      f"{rows['attnc_table'][phase] / rows['attnc_tiles'][phase]:.3f}x attnc_table", flush=True)
        out[tag] = {"rows": rows, "best": best, "document_tiles": bm.document_tiles}
        del q, k, v, do, args, leaves
        torch.cuda.empty_cache()
    path = os.path.join(os.environ.get("OUT", "."), "doc_tiles.json")
    json.dump(out, open(path, "w"), indent=1)


def _table_tuple(attn, q, k, v, doc, forward_tiles=False):
    """The tuple of a block mask of ``doc`` without its document tiles (its table and
    ranges alone), or with ``forward_tiles`` without the backward's only."""
    shape, fwd, bwd, read_t, read_p, docs, _ = attn._inner.block_mask_tables(
        q, k, v, None, [("doc", doc.cpu())], [], True)
    i32 = lambda xs: torch.tensor(xs if xs else [0], dtype=torch.int64).to(torch.int32).to(q.device)  # noqa: E731
    fwd_t = (i32(fwd[0]), i32(fwd[1]), fwd[2], fwd[3])
    bwd_t = None if bwd is None else (bwd[0], i32(bwd[1]), bwd[2], i32(bwd[3]), bwd[4])
    docs_t = (docs[0], i32(docs[1])) if forward_tiles and docs is not None else None
    return (shape, fwd_t, bwd_t, read_t, read_p, docs_t, None)


if __name__ == "__main__":
    main()
