"""Timing helpers of the CPU anchor scripts (scripts/cpu_*_torch.py, cpu_flex_causal_score.py),
imported from their folder (`python3 scripts/X.py` puts scripts/ on the path)."""
import time


def best_ms(fn, iters=3, reps=3):
    """One warm-up call, then the best of `reps` averages over `iters` calls, in ms."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e3


def median_ms(fn, n=3):
    """One warm-up call, then the median of `n` timed calls, in ms."""
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3
