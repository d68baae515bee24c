"""Session 21 (rt21): SDPA cuDNN backward anchors in the same call, B2 H16 L8192 D128 bf16,
dense and causal; backward = (forward + backward) - forward, best of 3 x 10 after 3 warm-up
calls (scripts/fa4_anchors_lite.py's rule); TFLOP/s = 2.5 x forward flops / time."""
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
def bench(fn, iters=10, warm=3):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(3):
        s.record()
        for _ in range(iters): fn()
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / iters)
    return min(ts)
B, H, S, D = 2, 16, 8192, 128
torch.manual_seed(0)
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
for rnd in range(2):
    for causal in (False, True):
        fl = 4 * B * H * S * S * D * ((S + 1) / (2 * S) if causal else 1.0)
        def f():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        def step():
            for x in (q, k, v): x.grad = None
            f().backward(do)
        tf = bench(f); tb = bench(step) - tf
        print(f"[round {rnd}] sdpa_cudnn {'causal' if causal else 'dense'} B{B}H{H}L{S}D{D}: fwd {tf:.3f} ms {fl/tf/1e9:.1f} TFLOP/s, "
              f"bwd {tb:.3f} ms {2.5*fl/tb/1e9:.1f} TFLOP/s", flush=True)
