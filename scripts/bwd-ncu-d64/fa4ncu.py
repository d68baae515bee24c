# bwd64n: FA4's D64 backward (its default, deterministic=False) launched once dense then once
# causal, B4 H16 L4096 bf16, for ncu -k "regex:BackwardSm90|bwd_sm90" -c 2. The anchors'
# layout ((B,H,S,D) tensors passed transposed). Needs PYTHONPATH=$(cat /tmp/fa4site.path).
import sys, time, torch
from flash_attn.cute.interface import flash_attn_func
B, H, S, D = 4, 16, 4096, 64
torch.manual_seed(0)
q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
do = torch.randn_like(q)
for causal in ([False, True] if "--causal" in sys.argv else [False]):
    t0 = time.time()
    o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
    o = (o[0] if isinstance(o, tuple) else o).transpose(1, 2)
    o.backward(do); torch.cuda.synchronize()
    print(f"fa4 D64 {'causal' if causal else 'dense'} fwd+bwd done ({time.time() - t0:.1f} s)", flush=True)
