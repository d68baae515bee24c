# PyTorch SDPA on the CPU with a learned [B, H, Q, KV] bias as a float attn_mask that
# requires grad (the anchor of docs/performance.md "Session 38"); 2 threads, f32,
# B1 H8 L2048 D64: forward and backward of every input and the bias, min of 2 after a
# warm-up. Usage: .venv/bin/python scripts/cpu_bias_bench_torch.py
import torch, time, sys
import torch.nn.functional as F
torch.set_num_threads(2)
B,H,L,D=1,8,2048,64
g=torch.Generator().manual_seed(0)
q,k,v=[torch.randn(B,H,L,D,generator=g) for _ in range(3)]
bias=torch.randn(B,H,L,L,generator=g)
def run(with_bias):
    qq,kk,vv=[x.clone().requires_grad_(True) for x in (q,k,v)]
    bb=bias.clone().requires_grad_(True) if with_bias else None
    t=time.perf_counter()
    o=F.scaled_dot_product_attention(qq,kk,vv,attn_mask=bb)
    t1=time.perf_counter()
    o.backward(torch.randn_like(o))
    t2=time.perf_counter()
    return (t1-t)*1e3,(t2-t1)*1e3
run(True); run(False)
for wb in [False, True]:
    r=[run(wb) for _ in range(2)]
    f=min(x[0] for x in r); b=min(x[1] for x in r)
    print(f"sdpa {'bias' if wb else 'dense'}: forward {f:.1f} ms, backward {b:.1f} ms, step {f+b:.1f} ms")
