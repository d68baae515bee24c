"""One training step (forward + backward) through Python: attnc next to FlexAttention's
FLASH backend (FlashAttention-4, ``kernel_options={"BACKEND": "FLASH"}``, when FA4 is
importable), its Triton backend (compiled, ``--triton``) and SDPA cuDNN (dense and causal),
in one process (session 20; issue 10's "forward + backward of one training step faster
than FlexAttention's best backend").

Cases (bf16): ``dense`` and ``causal`` at B2 H16 L8192 D128, and (session 25) ``sliding``
(causal window of 1024 keys: attnc's ``sliding_window`` with ``window=1023``), ``alibi_causal``
and ``softcap_causal`` (soft-cap 50, attnc's example's) at the same shape, Flex with the
FA4 anchors' mask_mod / score_mod; ``document`` = document +
causal at B2 H16 L4096 D128, 8 sorted random document ids (one packing for both batch
rows, as in the FA4 anchors; host_step.py packs each row on its own) and a block mask made
once for each library. Per row: ``fwd`` CUDA-event ms per forward (no autograd), ``step`` CUDA-event ms
per ``f(q, k, v).backward(dO)`` (gradients accumulate into q/k/v.grad, as in training),
``host`` wall-clock us to enqueue one step. Each row in ``--rounds`` rounds, the rows of a
case interleaved within a round. ``attnc_nd`` (dense and causal; ``--no-nd`` leaves it out,
session 21) is attnc with ``deterministic=False``, the like-for-like row for FLASH, whose
FlashAttention-4 backward is non-deterministic by default (attnc's default is
deterministic). Prints one line per row and round and the ratios
(other / attnc: > 1 means attnc is faster); writes DIR/flash_step.json (default $OUT).

    python python/bench/flash_step.py [--cases dense,causal,document] [--triton] [--rounds 3]
        [--d 256 --l 4096]   # head dim / length (session 29: Gemma's head dim 256;
                             # case softcap_sliding = Gemma 2's local layers)

FLASH needs FA4 on PYTHONPATH (``../shared/bench/fa4/install.sh``); without it its rows
say why they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch
import torch.nn.functional as F

import attnc
from bench_gpu import EXAMPLES, event_ms, host_us  # this folder (sys.path[0] when run as a script)


def causal_mod(b, h, qi, ki):
    return qi >= ki


def sliding_mod(b, h, qi, ki):
    return (qi >= ki) & (qi - ki < 1024)


def alibi_mod(score, b, h, qi, ki):
    return score + torch.exp2(-8.0 * (h + 1) / 16) * (ki - qi)


def softcap_mod(score, b, h, qi, ki):
    return 50.0 * torch.tanh(score / 50.0)


# case: (attnc file, attention, captures, Flex mask_mod, Flex score_mod)
SCORED = {
    "sliding": ("sliding_window.attn", None, {"window": 1023}, sliding_mod, None),
    "alibi_causal": ("alibi_causal.attn", "alibi_causal", {}, causal_mod, alibi_mod),
    "softcap_causal": ("softcap.attn", "softcap_causal", {}, causal_mod, softcap_mod),
    # Gemma 2's local layers: soft-cap 50 and a causal window (1024 keys here)
    "softcap_sliding": ("softcap_sliding.attn", None, {"window": 1023}, sliding_mod, softcap_mod),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    ap.add_argument("--cases", default="dense,causal,document")
    ap.add_argument("--triton", action="store_true", help="also compiled Flex with its Triton backend")
    ap.add_argument("--no-flash", action="store_true")
    ap.add_argument("--no-nd", action="store_true", help="leave out attnc with deterministic=False")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d", type=int, default=128, help="head dim (256: Gemma's; session 29)")
    ap.add_argument("--l", type=int, default=0, help="sequence length (default 8192, document 4096)")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    t_start = time.perf_counter()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import torch._dynamo

    # one compiled graph per case, backend and grad mode (the FA4 anchors' limits)
    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "attnc": attnc.__version__}
    try:  # FLASH's own import (what flex_attention's FLASH backend calls)
        import flash_attn.cute.interface  # noqa: F401

        res["fa4"] = "importable"
    except Exception as e:  # noqa: BLE001
        res["fa4"] = f"not importable: {type(e).__name__}: {str(e)[:160]}"
    print(f"{res['device']} torch {res['torch']} attnc {res['attnc']}; FA4 {res['fa4']}", flush=True)
    backends = [] if a.no_flash else ["FLASH"]
    if a.triton:
        backends.append("TRITON")

    for case in a.cases.split(","):
        b, h, d = 2, 16, a.d
        l = a.l or (4096 if case == "document" else 8192)
        g = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
                   for _ in range(3))
        do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        rows = {}
        if case == "document":
            # one packing for both batch rows (the FA4 anchors' form: a block mask with
            # B=None, whose mask_mod reads the ids by position only)
            doc1 = torch.sort(torch.randint(0, 8, (l,), device="cuda", dtype=torch.int32, generator=g)).values
            doc = doc1.expand(b, l).contiguous()
            attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
            bm = attn.block_mask(q, k, v, doc=doc)
            rows["attnc"] = lambda q, k, v: attn(q, k, v, block_mask=bm, doc=doc)
            fbm = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (doc1[qi] == doc1[ki]), None, None, l, l,
                                    device="cuda")
        else:
            file, name, caps, mask_mod, score_mod = SCORED.get(case, (f"{case}.attn", None, {}, None, None))
            if case == "causal":
                mask_mod = causal_mod
            attn = attnc.compile(EXAMPLES / file).attention(name)
            rows["attnc"] = lambda q, k, v: attn(q, k, v, **caps)
            if not a.no_nd:
                rows["attnc_nd"] = lambda q, k, v: attn(q, k, v, deterministic=False, **caps)
            fbm = None if mask_mod is None else create_block_mask(mask_mod, None, None, l, l, device="cuda")

            if case in ("dense", "causal"):
                def sdpa(q, k, v, causal=case == "causal"):
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                rows["sdpa_cudnn"] = sdpa
        for be in backends:
            sm = None if case == "document" else SCORED.get(case, (None,) * 5)[4]
            rows[f"flex_{be}"] = (lambda q, k, v, be=be, fbm=fbm, sm=sm:
                                  flex(q, k, v, score_mod=sm, block_mask=fbm, kernel_options={"BACKEND": be}))
        ok = {}
        for name, f in rows.items():
            t0 = time.perf_counter()
            try:
                f(q, k, v).backward(do)
                with torch.no_grad():
                    f(q, k, v)
                torch.cuda.synchronize()
                ok[name] = f
                print(f"{case} {name}: first step {time.perf_counter() - t0:.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001 (report, time the rest)
                res[f"{case} {name}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(f"{case} {name} failed: {res[f'{case} {name}']['error']}", flush=True)
        # the gradients of each row against attnc's (one step from zero gradients)
        grads = {}
        for name, f in ok.items():
            for x in (q, k, v):
                x.grad = None
            try:
                f(q, k, v).backward(do)
                grads[name] = [x.grad.float() for x in (q, k, v)]
            except Exception as e:  # noqa: BLE001
                print(f"{case} {name} gradient run failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        if "attnc" in grads:
            for name, gs in grads.items():
                if name != "attnc":
                    diff = [float((x - y).abs().max()) for x, y in zip(gs, grads["attnc"])]
                    res.setdefault(f"{case} {name}", {})["grad_max_diff_vs_attnc"] = diff
                    print(f"{case} {name}: max |grad - attnc's| (dq, dk, dv) {[f'{x:.3g}' for x in diff]}", flush=True)
        del grads
        for rnd in range(a.rounds):
            for name, f in ok.items():
                r = res.setdefault(f"{case} {name}", {})
                for x in (q, k, v):
                    x.grad = None
                try:
                    with torch.no_grad():
                        r.setdefault("fwd_ms", []).append(event_ms(lambda: f(q, k, v), iters=a.iters, warm=2))
                    r.setdefault("step_ms", []).append(event_ms(lambda: f(q, k, v).backward(do), iters=a.iters, warm=2))
                    r.setdefault("host_us", []).append(host_us(lambda: f(q, k, v).backward(do), n=10))
                except Exception as e:  # noqa: BLE001
                    r["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                print(f"[round {rnd}] {case:9s} {name:12s} fwd {r.get('fwd_ms', [float('nan')])[-1]:.3f} ms "
                      f"step {r.get('step_ms', [float('nan')])[-1]:.3f} ms host {r.get('host_us', [float('nan')])[-1]:.0f} us"
                      f"{' ' + r['error'] if 'error' in r else ''}", flush=True)
        ours = res.get(f"{case} attnc", {}).get("step_ms", [])
        for name in ok:
            theirs = res.get(f"{case} {name}", {}).get("step_ms", [])
            if name != "attnc" and ours and theirs:
                ratio = [t / o for o, t in zip(ours, theirs)]
                res[f"{case} {name}"]["step_over_attnc"] = ratio
                print(f"{case} step {name} / attnc per round {'/'.join(f'{x:.3f}' for x in ratio)}; "
                      f"min {min(theirs):.3f} / {min(ours):.3f} = {min(theirs) / min(ours):.3f}", flush=True)
        nd = res.get(f"{case} attnc_nd", {}).get("step_ms", [])
        for name in ok:
            theirs = res.get(f"{case} {name}", {}).get("step_ms", [])
            if name.startswith("flex_") and nd and theirs:
                ratio = [t / o for o, t in zip(nd, theirs)]
                res[f"{case} {name}"]["step_over_attnc_nd"] = ratio
                print(f"{case} step {name} / attnc_nd per round {'/'.join(f'{x:.3f}' for x in ratio)}; "
                      f"min {min(theirs):.3f} / {min(nd):.3f} = {min(theirs) / min(nd):.3f}", flush=True)
        for x in (q, k, v):
            x.grad = None
        del q, k, v, do, rows, ok
        torch.cuda.empty_cache()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flash_step.json").write_text(json.dumps(res, indent=1))
    print(f"flash_step done in {time.perf_counter() - t_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
