"""Host time of the package's calls next to compiled FlexAttention in one process (sessions
18, 20; the FLASH backend and the L8192 dense / causal steps: flash_step.py): the document + causal training step (B2 H16 L4096 D128 bf16, 8 sorted random document
ids per batch row, a block mask made once for each; as doc_step.py's ``default`` row) and
the call overhead at a tiny shape (B1 H4 L64 D64 bf16 causal: the forward, and forward +
backward), for attnc, compiled Flex and SDPA (tiny shape only).

Per row: ``fwd`` CUDA-event ms per forward (no autograd), ``step`` CUDA-event ms per
forward + backward (``o.backward(dO)``; the gradients accumulate into q/k/v.grad as in
training), ``host`` wall-clock µs to enqueue one step without synchronizing (``host >=
step`` means the step is host-bound). Each row timed in ``--rounds`` rounds, the rows
interleaved within a round (the host's speed moves between rounds). Tiny shape: wall-clock
µs per call over back-to-back calls (launch- and host-bound).

``--wait FILE``: compile and warm everything first, then wait (at most ``--wait-s`` s) until
FILE exists before timing (the device script runs the CUDA tests meanwhile). Prints one line
per row and round; writes DIR/host_step.json (default $OUT).
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
from bench_gpu import EXAMPLES, event_ms, wall_us, host_us  # this folder (sys.path[0] when run as a script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    ap.add_argument("--wait", default=None)
    ap.add_argument("--wait-s", type=float, default=90.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile of 20 attnc document steps")
    a = ap.parse_args()
    t_start = time.perf_counter()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "attnc": attnc.__version__}
    rows = []  # (name, kind, fn): kind "doc" (event ms + host) or "tiny" (wall us)

    # the document + causal step
    b, h, l, d = 2, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
    doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    attn = attnc.compile(EXAMPLES / "document_causal.attn").attention("document_causal")
    bm = attn.block_mask(q, k, v, doc=doc)
    fbm = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (doc[b_, qi] == doc[b_, ki]), b, None, l, l,
                            device="cuda")
    doc_rows = {
        "document_causal attnc": (lambda: attn(q, k, v, block_mask=bm, doc=doc),
                                  lambda: attn(q.detach(), k.detach(), v.detach(), block_mask=bm, doc=doc)),
        "document_causal flex_compiled": (lambda: flex(q, k, v, block_mask=fbm),
                                          lambda: flex(q.detach(), k.detach(), v.detach(), block_mask=fbm)),
    }
    for name, (call, fwd) in doc_rows.items():
        try:
            call().backward(do)
            fwd()
            rows.append((name, "doc", (call, fwd)))
        except Exception as e:  # noqa: BLE001 (report, time the rest)
            print(f"{name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    # gradients of the two against each other (one step from zero gradients)
    try:
        gs = []
        for call, _ in doc_rows.values():
            for x in (q, k, v):
                x.grad = None
            call().backward(do)
            gs.append([x.grad.float() for x in (q, k, v)])
        res["doc_grad_max_diff"] = [float((x - y).abs().max()) for x, y in zip(*gs)]
        print(f"document_causal gradients attnc vs flex max |diff| (dq, dk, dv): {res['doc_grad_max_diff']}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"gradient comparison failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    for x in (q, k, v):
        x.grad = None
    # the extension's two calls alone (buffers made once, the stream handle fetched once):
    # host µs per enqueue, beside the whole step's
    try:
        from attnc import _ops

        inner, st = attn._inner, _ops._stream(q)
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        o0, lse0 = attn(qd, kd, vd, block_mask=bm, doc=doc, return_lse=True)
        dq, dk, dv = torch.empty_like(qd), torch.empty_like(kd), torch.empty_like(vd)
        # the packed scratch (session 20: the rows and the fused dQ's workspace in one
        # buffer, as the package's backward passes it)
        scratch, work = torch.empty(inner.backward_scratch(qd, kd, vd, None, True), device="cuda"), None
        caps_l = [("doc", doc)]
        ext = {
            "ext forward": lambda: inner.forward(qd, kd, vd, o0, lse0, None, caps_l, [], st, 0, bm._rust),
            "ext backward_cuda": lambda: inner.backward_cuda(qd, kd, vd, o0, lse0, do, None, dq, dk, dv, scratch, None,
                                                             caps_l, [], [], None, st, bm._rust, work, True),
        }
        for name, fn in ext.items():
            fn()
            rows.append((f"document_causal {name}", "ext", fn))
    except Exception as e:  # noqa: BLE001
        print(f"extension rows failed: {type(e).__name__}: {str(e)[:300]}", flush=True)

    # the tiny shape (call overhead)
    if not a.no_tiny:
        tq, tk, tv = (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        tqg, tkg, tvg = (x.clone().requires_grad_(True) for x in (tq, tk, tv))
        causal = attnc.compile(EXAMPLES / "causal.attn").attention()
        tbm = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, 64, 64, device="cuda")
        tiny = {
            "tiny fwd attnc": lambda: causal(tq, tk, tv),
            "tiny fwd flex_compiled": lambda: flex(tq, tk, tv, block_mask=tbm),
            "tiny fwd sdpa": lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True),
            "tiny step attnc": lambda: causal(tqg, tkg, tvg).sum().backward(),
            "tiny step flex_compiled": lambda: flex(tqg, tkg, tvg, block_mask=tbm).sum().backward(),
            "tiny step sdpa": lambda: F.scaled_dot_product_attention(tqg, tkg, tvg, is_causal=True).sum().backward(),
        }
        for name, fn in tiny.items():
            try:
                fn()
                rows.append((name, "tiny", fn))
            except Exception as e:  # noqa: BLE001
                print(f"{name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    torch.cuda.synchronize()
    print(f"compiled and warmed in {time.perf_counter() - t_start:.1f} s", flush=True)
    if a.wait:
        t0 = time.perf_counter()
        while not os.path.exists(a.wait) and time.perf_counter() - t0 < a.wait_s:
            time.sleep(0.2)
        print(f"waited {time.perf_counter() - t0:.1f} s for {a.wait}", flush=True)

    def measure(r, key, fn):
        try:
            r.setdefault(key, []).append(fn())
        except Exception as e:  # noqa: BLE001 (report, go on)
            r[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:160]}"

    f3 = lambda xs: "/".join(f"{x:.3f}" for x in xs)  # noqa: E731
    f0 = lambda xs: "/".join(f"{x:.0f}" for x in xs)  # noqa: E731
    for rnd in range(a.rounds):
        for name, kind, fn in rows:
            r = res.setdefault(name, {})
            if kind == "doc":
                call, fwd = fn
                measure(r, "fwd_ms", lambda: event_ms(fwd, iters=10, warm=3))
                measure(r, "step_ms", lambda: event_ms(lambda: call().backward(do), iters=10, warm=3))
                measure(r, "host_us", lambda: host_us(lambda: call().backward(do)))
                measure(r, "fwd_host_us", lambda: host_us(fwd))
                for x in (q, k, v):
                    x.grad = None
                print(f"[round {rnd}] {name:32s} fwd {f3(r.get('fwd_ms', []))} ms step {f3(r.get('step_ms', []))} ms, "
                      f"host {f0(r.get('host_us', []))} us/step, fwd host {f0(r.get('fwd_host_us', []))} us/call "
                      f"{[kk for kk in r if kk.endswith('_error')]}", flush=True)
            elif kind == "ext":
                measure(r, "host_us", lambda: host_us(fn))
                print(f"[round {rnd}] {name:32s} host {f0(r.get('host_us', []))} us/call "
                      f"{[kk for kk in r if kk.endswith('_error')]}", flush=True)
            else:
                measure(r, "us", lambda: wall_us(fn, iters=1000, warm=20))
                print(f"[round {rnd}] {name:32s} {r.get('us', [])[-1] if r.get('us') else float('nan'):8.1f} us/call "
                      f"{[kk for kk in r if kk.endswith('_error')]}", flush=True)
        for x in (q, k, v):
            x.grad = None
    # ratios: Flex / attnc (> 1: attnc faster), per round
    for key in ("step_ms", "host_us", "fwd_ms"):
        ours, theirs = (res.get(f"document_causal {w}", {}).get(key, []) for w in ("attnc", "flex_compiled"))
        if ours and theirs:
            res[f"doc_{key}_flex_over_attnc"] = [t / o for o, t in zip(ours, theirs)]
            print(f"document_causal {key}: flex/attnc per round {f3(res[f'doc_{key}_flex_over_attnc'])}, "
                  f"min attnc {min(ours):.3f} vs min flex {min(theirs):.3f}", flush=True)
    if a.profile:
        import cProfile
        import pstats

        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            attn(q, k, v, block_mask=bm, doc=doc).backward(do)
        prof.disable()
        torch.cuda.synchronize()
        st = pstats.Stats(prof)
        top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:16]
        res["host_profile_us_per_step"] = [(f"{fn[0].split('/')[-1]}:{fn[1]}:{fn[2]}", round(v[2] / 20 * 1e6, 1),
                                            v[1] // 20) for fn, v in top]
        print("host profile of the attnc document step (own us/step, calls/step; main thread only):", flush=True)
        for name, us, n in res["host_profile_us_per_step"]:
            print(f"  {us:8.1f} {n:4d}  {name[:90]}", flush=True)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_step.json").write_text(json.dumps(res, indent=1))
    print(f"host_step done in {time.perf_counter() - t_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
