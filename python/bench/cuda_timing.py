"""CUDA-event timing for the benchmarks (``chunked_prefill.py``,
``chunked_prefill_documents.py``, ``doc_forward.py``, ``doc_tiles.py``, ``gqa_step.py``):
``bench``, ms per call of ``fn``, the min over 3 rounds of ``iters`` back-to-back calls
after ``warm`` warm-ups; ``fwd_step_rounds`` and ``report``, the forward and the training
step of several backends timed in interleaved rounds and printed with TFLOP/s."""

import statistics

import torch


def bench(fn, iters=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    s, e, ts = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(3):
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return min(ts)


def fwd_step_rounds(runs, inputs, rounds, step=True):
    """Times each backend of ``runs`` (key -> ``f(q, k, v)``) on ``inputs[key]`` = ``(q, k,
    v, dO)`` (q, k, v leaves that require grad) in ``rounds`` interleaved rounds: the
    forward alone and, with ``step``, forward + ``o.backward(dO)`` (``bench`` of 10 calls
    each). Returns ``({key: (fwd_ms, step_ms or None)}, {key: error})``: the medians of the
    rounds, and the backends that raised (their message), timed no further."""
    times = {key: ([], []) for key in runs}
    failed = {}
    for _ in range(rounds):
        for key, f in runs.items():
            if key in failed:
                continue
            q, k, v, do = inputs[key]
            try:
                times[key][0].append(bench(lambda: f(q, k, v), iters=10))
                if step:
                    def one_step():
                        for t in (q, k, v):
                            t.grad = None
                        f(q, k, v).backward(do)
                    times[key][1].append(bench(one_step, iters=10))
            except Exception as ex:
                failed[key] = f"{type(ex).__name__}: {str(ex)[:160]}"
    med = {key: (statistics.median(f), statistics.median(s) if s else None)
           for key, (f, s) in times.items() if key not in failed}
    return med, failed


def report(times, failed, flops, width=13):
    """One line per backend of ``fwd_step_rounds``' results (µs and TFLOP/s over ``flops``
    for the forward, 2.5x for the backward = step - forward) and the rows as a dict."""
    rows = {}
    for key, err in failed.items():
        print(f"  {key:{width}s} ERR {err}", flush=True)
        rows[key] = {"error": err}
    for key, (fwd, st) in times.items():
        row = {"fwd_ms": fwd, "fwd_tflops": flops / fwd / 1e9}
        line = f"  {key:{width}s} fwd {fwd * 1e3:8.1f} us {flops / fwd / 1e9:6.1f} TFLOP/s"
        if st is not None:
            bw = max(st - fwd, 1e-6)
            row.update(step_ms=st, bwd_tflops=2.5 * flops / bw / 1e9, step_tflops=3.5 * flops / st / 1e9)
            line += f" | step {st * 1e3:8.1f} us, bwd {2.5 * flops / bw / 1e9:6.1f} TFLOP/s"
        rows[key] = row
        print(line, flush=True)
    return rows
