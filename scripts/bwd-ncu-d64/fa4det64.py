# bwd64x: FA4's backward at D64 with deterministic=True (its anchor is its non-deterministic
# default), B4 H16 L4096 bf16, dense then causal; the anchors' conventions (fa4_anchors_lite.py:
# (B,H,S,D) tensors passed transposed, backward = (forward + backward) - forward, min of 3 x 10
# after 3 warm-ups, TFLOP/s = 2.5 x 4 B H S^2 D density). Needs PYTHONPATH=$(cat /tmp/fa4site.path).
import sys, time, torch
from flash_attn.cute.interface import flash_attn_func
B, H, S, D = 4, 16, 4096, 64
torch.manual_seed(0)
q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
do = torch.randn_like(q)
def bench(fn, iters=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize(); ts = []
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)
dets = [True, False] if "--both" in sys.argv else [True]
for causal in [False, True]:
    for det in dets:
        def f(q, k, v):
            o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, deterministic=det)
            return (o[0] if isinstance(o, tuple) else o).transpose(1, 2)
        try:
            t0 = time.time(); f(q, k, v).backward(do); torch.cuda.synchronize(); first = time.time() - t0
            tf = bench(lambda: f(q, k, v))
            def step():
                for x in (q, k, v): x.grad = None
                f(q, k, v).backward(do)
            tb = bench(step) - tf
            fl = 10 * B * H * S * S * D * ((S + 1) / (2 * S) if causal else 1.0)
            print(f"fa4 D64 {'causal' if causal else 'dense'} deterministic={det}: bwd {tb:.3f} ms {fl / tb / 1e9:.1f} TFLOP/s (first call {first:.1f} s)", flush=True)
        except Exception as ex:
            print(f"fa4 D64 {'causal' if causal else 'dense'} deterministic={det}: ERR {type(ex).__name__}: {str(ex)[:160]}", flush=True)
