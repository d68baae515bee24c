"""Where the Python document + causal training step's time goes (session 17): bench_gpu.py's
``fwdbwd`` case ``document_causal`` with a block mask made once (B2 H16 L4096 D128 bf16, 8
sorted random document ids per batch row, the same inputs and seeds), timed per backward
configuration, next to compiled FlexAttention (block mask made once) in the same process:

- ``fwd``: the forward alone (no autograd), CUDA-event ms per call;
- ``bwd``: the backward alone (``o.backward(dO, retain_graph=True)`` on one forward);
- ``step``: forward + backward, as bench_gpu.py times it (``attn(...).backward(dO)``);
- ``host``: wall-clock µs to enqueue one step (N steps, no synchronization inside; the
  queue does not fill at these counts), so ``host >= step`` means the step is host-bound;
- ``gpu``: the sum of the CUDA kernels' device time per step (torch.profiler, CUPTI sees
  the runtime's driver-API launches on torch's stream), with the largest kernels.

Backward configurations (each binds its own attention: a comment makes another registry
key; the variables are read when its backward kernels are first looked up): ``default``,
and the runtime's later per-binding defaults for block tables turned off one by one
(``ATTNC_BWD_PDL=0``: session 15's chained launches and early dQ conversion;
``ATTNC_BWD_WIDE=0``: session 14's wide conversion; ``ATTNC_BWD_REC=0`` and
``ATTNC_BWD_CUTS=0``: session 13's visit records and instruction cuts — all four off is
the table path of session 12), and ``nd``: ``deterministic=False``. Also dense D128 at the
same shape deterministic and not (the user-visible gain of the option through Python).

``--wait FILE``: compile and warm everything first, then wait (at most ``--wait-s`` s)
until FILE exists before timing (another job may share the GPU until then).
Prints one line per configuration; writes DIR/doc_step.json (default $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import torch

import attnc
from bench_gpu import event_ms  # this folder (sys.path[0] when run as a script)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

CONFIGS = [
    ("default", {}),
    ("pdl0", {"ATTNC_BWD_PDL": "0"}),
    ("pdl0_wide0", {"ATTNC_BWD_PDL": "0", "ATTNC_BWD_WIDE": "0"}),
    ("s12", {"ATTNC_BWD_PDL": "0", "ATTNC_BWD_WIDE": "0", "ATTNC_BWD_REC": "0", "ATTNC_BWD_CUTS": "0"}),
    ("nd", {}),
]


def bind(file, attention, tag, env):
    """The attention under its own registry key, its backward kernels looked up with `env`
    set (done by the caller's first backward; the variables are restored after it)."""
    return attnc.compile((EXAMPLES / file).read_text() + f"\n// doc_step {tag}\n").attention(attention), env


def host_us(fn, n=20):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def gpu_ms(fn, steps=5):
    """Sum of the CUDA kernels' device time per step and the five largest (name, µs)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in ev) / steps / 1e3
    top = sorted(ev, key=lambda e: -e.self_device_time_total)[:6]
    return total, [(e.key[:48], round(e.self_device_time_total / steps, 1), e.count // steps) for e in top]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    ap.add_argument("--wait", default=None)
    ap.add_argument("--wait-s", type=float, default=60.0)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--configs", default=",".join(c for c, _ in CONFIGS))
    a = ap.parse_args()
    t_start = time.perf_counter()
    b, h, l, d = 2, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
    doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    caps = {"doc": doc}
    steps = {}
    wanted = set(a.configs.split(","))
    for name, env in CONFIGS:
        if name not in wanted:
            continue
        attn, env = bind("document_causal.attn", "document_causal", name, env)
        bm = attn.block_mask(q, k, v, **caps)
        det = name != "nd"
        old = {kk: os.environ.get(kk) for kk in env}
        os.environ.update(env)
        try:
            attn(q, k, v, block_mask=bm, deterministic=det, **caps).backward(do)  # kernels looked up here
        finally:
            for kk, vv in old.items():
                if vv is None:
                    del os.environ[kk]
                else:
                    os.environ[kk] = vv
        steps[name] = (attn, bm, det)
    dense = attnc.compile(EXAMPLES / "dense.attn").attention("dense")
    for det in (True, False):
        dense(q, k, v, deterministic=det).backward(do)
    flex_step = None
    if not a.no_flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
            fbm = create_block_mask(lambda b_, h_, qi, ki: (qi >= ki) & (doc[b_, qi] == doc[b_, ki]),
                                    b, None, l, l, device="cuda")
            flex_step = (flex, fbm)
            flex(q, k, v, block_mask=fbm).backward(do)
        except Exception as e:  # report, time the rest
            print(f"flex failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            flex_step = None
    for x in (q, k, v):
        x.grad = None
    torch.cuda.synchronize()
    print(f"compiled and warmed in {time.perf_counter() - t_start:.1f} s", flush=True)
    if a.wait:
        t0 = time.perf_counter()
        while not os.path.exists(a.wait) and time.perf_counter() - t0 < a.wait_s:
            time.sleep(0.2)
        print(f"waited {time.perf_counter() - t0:.1f} s for {a.wait}", flush=True)
    res = {"shape": [b, h, l, d], "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    rows = []
    for name, (attn, bm, det) in steps.items():
        rows.append((f"document_causal {name}",
                     lambda attn=attn, bm=bm, det=det: attn(q, k, v, block_mask=bm, deterministic=det, **caps),
                     lambda attn=attn, bm=bm, det=det: attn(q.detach(), k.detach(), v.detach(), block_mask=bm,
                                                            deterministic=det, **caps)))
    if flex_step is not None:
        flex, fbm = flex_step
        rows.append(("document_causal flex_compiled", lambda: flex(q, k, v, block_mask=fbm),
                     lambda: flex(q.detach(), k.detach(), v.detach(), block_mask=fbm)))
    for det in (True, False):
        rows.append((f"dense {'default' if det else 'nd'}", lambda det=det: dense(q, k, v, deterministic=det),
                     lambda det=det: dense(q.detach(), k.detach(), v.detach(), deterministic=det)))
    # each timed twice, in two rounds (the GPU's state moves between rounds); each row printed
    # when measured. (Compiled Flex's backward refuses retain_graph — donated buffers — so its
    # `bwd` is not timed.)
    def measure(r, key, fn):
        try:
            r.setdefault(key, []).append(fn())
        except Exception as e:  # noqa: BLE001 (report, go on)
            r[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:160]}"

    for rnd in range(2):
        for who, call, fwd in rows:
            r = res.setdefault(who, {})
            measure(r, "fwd_ms", lambda: event_ms(fwd, iters=10, warm=3))
            if "flex" not in who:
                o = call()
                measure(r, "bwd_ms", lambda: event_ms(lambda: o.backward(do, retain_graph=True), iters=10, warm=3))
                del o
            measure(r, "step_ms", lambda: event_ms(lambda: call().backward(do), iters=10, warm=3))
            measure(r, "host_us", lambda: host_us(lambda: call().backward(do)))
            if rnd == 0:
                try:
                    r["gpu_ms"], r["top_kernels"] = gpu_ms(lambda: call().backward(do))
                except Exception as e:  # noqa: BLE001
                    r["gpu_ms"], r["top_kernels"] = float("nan"), [f"{type(e).__name__}: {str(e)[:120]}"]
            for x in (q, k, v):
                x.grad = None
            f = lambda xs: "/".join(f"{x:.3f}" for x in xs)  # noqa: E731
            print(f"[round {rnd}] {who:32s} fwd {f(r.get('fwd_ms', []))} bwd {f(r.get('bwd_ms', []))} "
                  f"step {f(r.get('step_ms', []))} ms, host {'/'.join(f'{x:.0f}' for x in r.get('host_us', []))} "
                  f"us/step, kernels {r.get('gpu_ms', float('nan')):.3f} ms/step "
                  f"{[kk for kk in r if kk.endswith('_error')]}", flush=True)
            if rnd == 0:
                print(f"{'':10s} top kernels (us/step, launches/step): {r['top_kernels']}", flush=True)
    # where the host time of a step goes (the default configuration): cProfile over 20 steps,
    # the functions by their own time (the extension's entries appear as builtins)
    if "default" in steps:
        import cProfile
        import pstats

        attn, bm, det = steps["default"]
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            attn(q, k, v, block_mask=bm, deterministic=det, **caps).backward(do)
        prof.disable()
        torch.cuda.synchronize()
        st = pstats.Stats(prof)
        top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:14]
        res["host_profile_us_per_step"] = [(f"{fn[0].split('/')[-1]}:{fn[1]}:{fn[2]}", round(v[2] / 20 * 1e6, 1),
                                            v[1] // 20) for fn, v in top]
        print("host profile of the default step (own us/step, calls/step):", flush=True)
        for name, us, n in res["host_profile_us_per_step"]:
            print(f"  {us:8.1f} {n:4d}  {name[:90]}", flush=True)
        for x in (q, k, v):
            x.grad = None
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "doc_step.json").write_text(json.dumps(res, indent=1))
    print(f"doc_step done in {time.perf_counter() - t_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
