"""SDPA on the CPU (f32, forward) at the shapes of scripts/device-final/s44-cpu.sh's tile
sweep: B1 H8, L 2048/4096, D 64/128, dense and causal, at the thread counts given.
GFLOP/s over unmasked pairs (4*B*H*L*L*D*density), best of 3 repetitions of 3 calls.
  python3 cpu_tiles_torch.py THREADS [THREADS...]"""
import os, sys
import torch
import torch.nn.functional as F
from torch_timing import best_ms as bench

torch.manual_seed(0)
print(torch.__version__, os.popen("lscpu | grep 'Model name'").read().strip(), flush=True)


with torch.no_grad():
    for threads in [int(t) for t in sys.argv[1:]] or [16]:
        torch.set_num_threads(threads)
        for L in (2048, 4096):
            for D in (64, 128):
                q, k, v = (torch.randn(1, 8, L, D) for _ in range(3))
                for name, causal in (("dense", False), ("causal", True)):
                    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                    dens = (L + 1) / (2 * L) if causal else 1.0
                    gf = 4 * 8 * L * L * D * dens / ms / 1e6
                    print(f"sdpa {name} threads {threads} L{L} D{D}: {ms:.3f} ms {gf:.1f} GFLOP/s", flush=True)
