"""GPU benchmark of the attnc Python package (scripts/device-remote.sh, ATTNC_PARTS=python).

1. Call overhead: microseconds per call at a tiny shape (B1 H4 L64 D64 bf16, causal),
   wall clock over many back-to-back calls (launch-bound), for attnc, FlexAttention
   (torch.compile'd, block mask made once) and SDPA.
2. Throughput at B2 H16 L8192 D128 bf16 (dense and causal): ms per call through Python
   (CUDA events), next to the `attnc bench` CLI's ms/call of the same run (target: within 3%).
3. python/examples/train_tiny.py on the GPU: tokens/s with attnc and with FlexAttention.
4. Variants at B2 H16 L8192 D128 bf16 (causal, document + sliding window, causal ALiBi,
   causal soft-cap): attnc (zero-copy forward on the current stream) against
   FlexAttention (compiled; Triton, and the FLASH backend where ``kernel_options=
   {"BACKEND": "FLASH"}`` works on this machine, else its error is recorded) and SDPA
   (where it expresses the variant), CUDA-event ms per forward in the same run, each
   output checked against Flex's (max abs difference printed). attnc's document case
   includes building its block table on the GPU in every call (the caller-stream path
   keeps no table between calls); Flex's block mask is made once, outside the timing.

5. Forward + backward (``fwdbwd``) at B2 H16 L4096 D128 bf16, dense, causal and document +
   causal: CUDA-event ms per step for attnc (zero-copy backward on the current stream: on
   sm_90 at D64 and D128 dQ fused into the dK/dV kernel, as ``Bound::backward``; document + causal
   also with a block mask made once, ``attnc_block_mask``), Flex (compiled; not with
   ``--fwdbwd-no-flex``) and SDPA (dense, causal), gradients checked against Flex's;
   document + causal also forward only (``fwd_only_*``). ``--fwdbwd-two-kernel`` adds
   ``attnc_two_kernel``: the same attention bound under ``ATTNC_BWD_DQ=separate`` (dQ by
   a second kernel, the caller path before the fused one), its gradients compared with
   the fused ones. The ``overhead`` part
   also times a forward + backward step at the tiny shape, and splits attnc's call into
   the custom-op path and the extension alone.

Usage: python3 bench_gpu.py [--attnc-bin .bin/attnc] [--out DIR] [--skip-train]
                            [--parts overhead,throughput,train,compare] [--budget-s S]
Writes DIR/python_bench.json (default $OUT or /tmp/attnc-out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import attnc

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def wall_us(fn, iters=2000, warm=50):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def gpu_us(fn, n=50):
    """The stream's time per call of ``fn`` in µs: CUDA events around ``n`` back-to-back
    calls after one warm-up (the GPU's idle gaps included where the host is the slower)."""
    return event_ms(fn, iters=n, warm=1, reps=1) * 1e3


def host_steps(fn, iters, warm=50):
    """The extension's and the runtime's steps of ``fn``'s calls (``_attnc.host_trace``,
    `host_trace.rs`'s stages) over ``iters`` calls after ``warm``: ``(stage, µs a lap,
    laps a call)`` for each stage that ran."""
    from attnc import _attnc

    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    _attnc.host_trace_take()
    _attnc.host_trace(True)
    for _ in range(iters):
        fn()
    _attnc.host_trace(False)
    torch.cuda.synchronize()
    return [(name, ns / laps / 1e3, laps / iters) for name, ns, laps in _attnc.host_trace_take() if laps]


def host_us(fn, n=30):
    """Host time of one enqueue of ``fn``, in µs: the clock stopped before the GPU work
    is waited for (``n`` calls after a synchronize)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def event_ms(fn, iters=20, warm=5, reps=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / iters)
    return sorted(times)[len(times) // 2]


def overhead(res):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    causal = attnc.compile(EXAMPLES / "causal.attn").attention()
    flex = torch.compile(flex_attention)
    bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, 64, 64, device="cuda")
    o, lse = torch.empty_like(q), torch.empty(1, 4, 64, device="cuda")
    scratch = torch.zeros_like(q)
    inner = causal._inner
    from attnc import _ops

    rows = {
        "attnc": lambda: causal(q, k, v),
        # the parts of attnc's call: through the custom op (what torch.compile traces),
        # and the extension alone (o/lse preallocated, the stream handle fetched once)
        "attnc_custom_op": lambda: torch.ops.attnc.forward(q, k, v, causal._key, None, "", [], "", [], True),
        "attnc_rust_only": lambda: inner.forward(q, k, v, o, lse, None, [], [], _ops._stream(q), 0),
        "flex_compiled": lambda: flex(q, k, v, block_mask=bm),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        # what the host itself costs in this run (the timings move ~1.3x between runs):
        # one torch kernel launch, and the two allocations attnc's eager call makes
        "torch_one_launch": lambda: scratch.add_(0),
        "torch_new_empty_x2": lambda: (q.new_empty(q.shape), q.new_empty(lse.shape, dtype=torch.float32)),
    }
    out = {}
    for name, fn in rows.items():
        out[name] = wall_us(fn)
        print(f"call overhead B1 H4 L64 D64 bf16 causal: {name:>16} {out[name]:8.1f} us/call", flush=True)
    # a training step's attention: forward + backward (q, k, v require grad)
    qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))

    def step(fn):
        def run():
            fn(qg, kg, vg).sum().backward()
        return run

    steps = {
        "attnc": step(lambda a, b_, c: causal(a, b_, c)),
        "flex_compiled": step(lambda a, b_, c: flex(a, b_, c, block_mask=bm)),
        "sdpa": step(lambda a, b_, c: F.scaled_dot_product_attention(a, b_, c, is_causal=True)),
    }
    for name, fn in steps.items():
        try:
            out[f"fwd_bwd_{name}"] = wall_us(fn, iters=500)
            print(f"forward+backward overhead B1 H4 L64 D64 bf16 causal: {name:>14} {out[f'fwd_bwd_{name}']:8.1f} us/step", flush=True)
        except Exception as e:
            print(f"forward+backward {name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
    res["overhead_us"] = out


def cli_ms(bin_path, file, attention, extra=()):
    cmd = [bin_path, "bench", str(EXAMPLES / file), "--attention", attention, "--backend", "cuda", "--dtype", "bf16",
           "--b", "2", "--h", "16", "--lq", "8192", "--d", "128", "--iters", "20", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"([\d.]+) ms/call", r.stdout)
    if r.returncode != 0 or not m:
        print(f"attnc bench failed: {r.stdout}{r.stderr}", flush=True)
        return None
    return float(m[1])


def throughput(res, bin_path):
    out = {}
    for file, name in (("dense.attn", "dense"), ("causal.attn", "causal_attention")):
        attn = attnc.compile(EXAMPLES / file).attention(name)
        q, k, v = (torch.randn(2, 16, 8192, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ms = event_ms(lambda: attn(q, k, v))
        flops = 4 * 2 * 16 * 8192 * 8192 * 128 * (0.5 if "causal" in name else 1.0)
        cli = cli_ms(bin_path, file, name) if bin_path else None
        ratio = f", CLI {cli:.3f} ms/call, python/CLI {ms / cli:.3f}" if cli else ""
        print(f"throughput B2 H16 L8192 D128 bf16 {name}: python {ms:.3f} ms/call ({flops / ms / 1e9:.1f} TFLOP/s){ratio}", flush=True)
        out[name] = {"python_ms": ms, "cli_ms": cli}
    res["throughput"] = out


def train(res):
    script = ROOT / "python" / "examples" / "train_tiny.py"
    cmd = [sys.executable, str(script), "--device", "cuda", "--dtype", "bf16", "--seq", "1024", "--batch", "8",
           "--dim", "256", "--heads", "4", "--layers", "4", "--steps", "200", "--log-every", "50"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-2000:] if r.returncode else "", flush=True)
    m = re.search(r"tokens/s: attnc ([\d,]+), flex ([\d,]+)", r.stdout)
    res["train_tiny"] = {
        "returncode": r.returncode,
        "attnc_tokens_s": float(m[1].replace(",", "")) if m else None,
        "flex_tokens_s": float(m[2].replace(",", "")) if m else None,
    }


def compare(res, budget_s):
    """Section 4 (module header)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    t_start = time.perf_counter()
    b, h, l, d = 2, 16, 8192, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    n_docs = 8
    doc = torch.sort(torch.randint(0, n_docs, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    window = 1024
    slope = torch.exp2(-8.0 * (torch.arange(h, device="cuda") + 1).float() / 16)
    flex = torch.compile(flex_attention, dynamic=False)

    def causal_mm(b_, h_, qi, ki):
        return qi >= ki

    def doc_window_mm(b_, h_, qi, ki):
        return (qi >= ki) & (qi - ki <= window) & (doc[b_, qi] == doc[b_, ki])

    def alibi_sm(score, b_, h_, qi, ki):
        return score + slope[h_] * (ki - qi).float()

    def softcap_sm(score, b_, h_, qi, ki):
        return 50.0 * torch.tanh(score / 50.0)

    cases = [
        # name, (file, attention, captures), Flex (mask_mod, mask over batches?, score_mod), SDPA call or None, FLOP fraction
        ("causal", ("causal.attn", "causal_attention", {}), (causal_mm, False, None),
         lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 0.5),
        ("document_sliding_causal", ("document_sliding_causal.attn", None, {"doc": doc, "window": window}),
         (doc_window_mm, True, None), None, None),
        ("alibi_causal", ("alibi_causal.attn", "alibi_causal", {}), (causal_mm, False, alibi_sm), None, 0.5),
        ("softcap_causal", ("softcap.attn", "softcap_causal", {}), (causal_mm, False, softcap_sm), None, 0.5),
    ]
    out = {}
    for name, (file, attention, caps), (mm, per_batch, sm), sdpa, frac in cases:
        if time.perf_counter() - t_start > budget_s:
            print(f"compare: time budget of {budget_s} s spent, {name} and later cases skipped", flush=True)
            break
        row = {}
        try:
            attn = attnc.compile(EXAMPLES / file).attention(attention)
            ours = attn(q, k, v, **caps)
            row["attnc_ms"] = event_ms(lambda: attn(q, k, v, **caps))
        except Exception as e:
            row["attnc_error"] = f"{type(e).__name__}: {e}"
            ours = None
        bm = create_block_mask(mm, b if per_batch else None, None, l, l, device="cuda")
        for backend in ("TRITON", "FLASH"):
            opts = {"BACKEND": backend}
            try:
                try:
                    ref = flex(q, k, v, score_mod=sm, block_mask=bm, kernel_options=opts)
                except Exception as e:
                    if backend != "TRITON":
                        raise
                    # a torch without the BACKEND option: its default is the Triton kernel
                    print(f"flex BACKEND=TRITON refused ({type(e).__name__}); default kernel options", flush=True)
                    opts = None
                    ref = flex(q, k, v, score_mod=sm, block_mask=bm, kernel_options=opts)
                row[f"flex_{backend.lower()}_ms"] = event_ms(
                    lambda: flex(q, k, v, score_mod=sm, block_mask=bm, kernel_options=opts))
                if ours is not None:
                    row[f"max_abs_diff_vs_flex_{backend.lower()}"] = float((ours.float() - ref.float()).abs().max())
            except Exception as e:
                row[f"flex_{backend.lower()}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if sdpa is not None:
            try:
                row["sdpa_ms"] = event_ms(sdpa)
            except Exception as e:
                row["sdpa_error"] = f"{type(e).__name__}: {e}"
        parts = []
        for key in ("attnc_ms", "flex_triton_ms", "flex_flash_ms", "sdpa_ms"):
            if key in row:
                tf = f" {4 * b * h * l * l * d * frac / row[key] / 1e9:.0f} TFLOP/s" if frac else ""
                parts.append(f"{key[:-3]} {row[key]:.3f} ms{tf}")
        ratios = [f"attnc/{k[:-3]} {row['attnc_ms'] / row[k]:.2f}" for k in ("flex_triton_ms", "flex_flash_ms", "sdpa_ms")
                  if k in row and "attnc_ms" in row]
        errs = [f"{k}: {v}" for k, v in row.items() if k.endswith("_error")]
        diffs = [f"{k} {v:.3g}" for k, v in row.items() if k.startswith("max_abs")]
        print(f"B2 H16 L8192 D128 bf16 {name}: " + ", ".join(parts + ratios + diffs)
              + ("" if not errs else "; " + "; ".join(errs)), flush=True)
        out[name] = row
    res["compare"] = out


def fwdbwd(res, budget_s, only=None, two_kernel=False, use_flex=True):
    """Forward + backward at B2 H16 L4096 D128 bf16 (dense; causal; document + causal),
    CUDA-event ms per step (o.backward(dO) with dO fixed), attnc (zero-copy backward on the
    current stream; with ``two_kernel`` also on the two-kernel backward) next to
    FlexAttention (compiled, unless not ``use_flex``) and SDPA (dense, causal) in the same
    run."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    t_start = time.perf_counter()
    b, h, l, d = 2, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
    doc = torch.sort(torch.randint(0, 8, (b, l), device="cuda", dtype=torch.int32, generator=g), dim=1).values
    flex = torch.compile(flex_attention, dynamic=False)

    def causal_mm(b_, h_, qi, ki):
        return qi >= ki

    def doc_mm(b_, h_, qi, ki):
        return (qi >= ki) & (doc[b_, qi] == doc[b_, ki])

    def dense_mm(b_, h_, qi, ki):
        return qi >= 0

    cases = [
        ("dense", ("dense.attn", "dense", {}), dense_mm, False,
         lambda: F.scaled_dot_product_attention(q, k, v)),
        ("causal", ("causal.attn", "causal_attention", {}), causal_mm, False,
         lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        ("document_causal", ("document_causal.attn", "document_causal", {"doc": doc}), doc_mm, True, None),
    ]
    out = {}
    density = {"dense": 1.0, "causal": 0.5}
    cases = [c for c in cases if only is None or c[0] in only]
    for name, (file, attention, caps), mm, per_batch, sdpa in cases:
        if time.perf_counter() - t_start > budget_s:
            print(f"fwdbwd: time budget of {budget_s} s spent, {name} skipped", flush=True)
            break
        attn = attnc.compile(EXAMPLES / file).attention(attention)
        bm = create_block_mask(mm, b if per_batch else None, None, l, l, device="cuda") if use_flex else None
        runs = {"attnc": lambda: attn(q, k, v, **caps).backward(do)}
        if two_kernel:
            # another registry key (a comment in the source): its own bindings, whose
            # backward kernels are looked up (on the first backward) under the variable
            two = attnc.compile((EXAMPLES / file).read_text() + "\n// two-kernel backward\n").attention(attention)
            os.environ["ATTNC_BWD_DQ"] = "separate"
            try:
                two(q, k, v, **caps).backward(do)
            finally:
                del os.environ["ATTNC_BWD_DQ"]
            for x in (q, k, v):
                x.grad = None
            runs["attnc_two_kernel"] = lambda: two(q, k, v, **caps).backward(do)
        if per_batch:
            # a block mask made once (attnc.Attention.block_mask), like Flex's
            abm = attn.block_mask(q, k, v, **caps)
            runs["attnc_block_mask"] = lambda: attn(q, k, v, block_mask=abm, **caps).backward(do)
        if use_flex and time.perf_counter() - t_start < budget_s:
            runs["flex_compiled"] = lambda: flex(q, k, v, block_mask=bm).backward(do)
        if per_batch:
            # forward only, without autograd
            runs["fwd_only_attnc"] = lambda: attn(q.detach(), k.detach(), v.detach(), **caps)
            runs["fwd_only_attnc_block_mask"] = lambda: attn(q.detach(), k.detach(), v.detach(), block_mask=abm, **caps)
            if use_flex:
                runs["fwd_only_flex_compiled"] = lambda: flex(q.detach(), k.detach(), v.detach(), block_mask=bm)
        if sdpa is not None:
            runs["sdpa"] = lambda: sdpa().backward(do)
        row = {}
        for who, fn in runs.items():
            try:
                row[f"{who}_ms"] = event_ms(fn, iters=10, warm=3)
            except Exception as e:
                row[f"{who}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        for other, key in (("flex_compiled", "max_abs_dgrad_vs_flex"),
                           ("attnc_two_kernel", "max_abs_dgrad_fused_vs_two_kernel")):
            if other not in runs:
                continue
            try:  # gradients against Flex's, or the two-kernel backward's
                grads = []
                for fn in (runs.get("attnc_block_mask", runs["attnc"]), runs[other]):
                    for x in (q, k, v):
                        x.grad = None
                    fn()
                    grads.append([x.grad.float() for x in (q, k, v)])
                row[key] = max(float((a - r).abs().max()) for a, r in zip(*grads))
            except Exception as e:
                row[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        for x in (q, k, v):
            x.grad = None
        # forward + backward: 3.5 x the forward's 4 B H L^2 D flops over the unmasked pairs
        tflops = (lambda ms: f" ({3.5 * 4 * b * h * l * l * d * density[name] / ms / 1e9:.0f} TFLOP/s)"
                  if name in density else "")
        parts = [f"{k_[:-3]} {v_:.3f} ms" + (tflops(v_) if not k_.startswith("fwd_only") else "")
                 for k_, v_ in row.items() if k_.endswith("_ms")]
        ratios = [f"{a[:-3]}/{k_[:-3]} {row[a] / row[k_]:.2f}" for a in ("attnc_ms", "attnc_block_mask_ms")
                  for k_ in ("flex_compiled_ms", "sdpa_ms", "attnc_two_kernel_ms") if k_ in row and a in row]
        ratios += [f"{a[:-3]}/fwd_only_flex_compiled {row[a] / row['fwd_only_flex_compiled_ms']:.2f}"
                   for a in ("fwd_only_attnc_ms", "fwd_only_attnc_block_mask_ms")
                   if a in row and "fwd_only_flex_compiled_ms" in row]
        extra = [f"{k_} {v_}" for k_, v_ in row.items() if not k_.endswith("_ms")]
        print(f"forward+backward B2 H16 L4096 D128 bf16 {name}: " + ", ".join(parts + ratios + extra), flush=True)
        out[name] = row
    res["fwdbwd"] = out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--attnc-bin", default=None)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/attnc-out"))
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--parts", default="overhead,throughput,train,compare,fwdbwd")
    p.add_argument("--budget-s", type=float, default=240.0, help="time budget of the compare part")
    p.add_argument("--fwdbwd-cases", default=None, help="comma-separated cases of fwdbwd (default: all)")
    p.add_argument("--fwdbwd-two-kernel", action="store_true", help="fwdbwd: also attnc's two-kernel backward")
    p.add_argument("--fwdbwd-no-flex", action="store_true", help="fwdbwd: without FlexAttention")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    if a.skip_train:
        parts.discard("train")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, attnc {attnc.__version__}", flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    status = 0
    steps = {
        "overhead": lambda: overhead(res),
        "throughput": lambda: throughput(res, a.attnc_bin),
        "train": lambda: train(res),
        "compare": lambda: compare(res, a.budget_s),
        "fwdbwd": lambda: fwdbwd(res, a.budget_s, a.fwdbwd_cases and set(a.fwdbwd_cases.split(",")),
                                 a.fwdbwd_two_kernel, not a.fwdbwd_no_flex),
    }
    for name, step in steps.items():
        if name not in parts:
            continue
        try:
            step()
        except Exception as e:  # report and go on with the other parts
            print(f"benchmark step failed: {type(e).__name__}: {e}", flush=True)
            status = 1
        # written after every step: a run stopped by a time limit keeps what it measured
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "python_bench.json"), "w") as f:
            json.dump(res, f, indent=1)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
