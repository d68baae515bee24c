"""Head dims the CUDA kernels do not take, which attnc runs zero-padded to the next one
they take (`attnc._cuda_head_dim`): forward and forward + backward next to SDPA (its
default backend, and cuDNN where it takes the shape) and FlexAttention compiled (Triton),
same process, bf16, CUDA-event ms (median of 3 x 10 after 3 warm-ups).

  PYTHONPATH=... python3 head_dims.py [EXAMPLES_DIR]

Cases: Phi-3's D96 causal (B2 H32 L4096), DiT-XL's D72 dense (B16 H16 L1024), DeepSeek
MLA's D192 / Dv128 causal (B2 H16 L4096), Stable Diffusion's D80 dense (B8 H10 L4096); and short sequences at D128 (no padding) for
comparison.
TFLOP/s count the true head dims: forward 2 B H L^2 (D + Dv) x density, forward +
backward 3.5x that."""
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnc
from bench_gpu import event_ms  # (median of 3 rounds; this script passes 10 x 3)

EXAMPLES = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "examples")


CASES = [
    ("phi3_d96_causal", 2, 32, 4096, 96, 96, True),
    ("dit_d72_dense", 16, 16, 1024, 72, 72, False),
    ("mla_d192_dv128_causal", 2, 16, 4096, 192, 128, True),
    ("sd_d80_dense", 8, 10, 4096, 80, 80, False),
    # short sequences at head dims the kernels take (no padding), for comparison
    ("dense_d128_L1024", 16, 16, 1024, 128, 128, False),
    ("causal_d128_L1024", 16, 16, 1024, 128, 128, True),
    ("causal_d128_L2048", 8, 16, 2048, 128, 128, True),
]


def main():
    # (one compiled Flex for every shape, with and without grad: more than dynamo's
    # default 8 recompilations, after which it would run Flex eagerly)
    torch._dynamo.config.recompile_limit = 64
    flex = torch.compile(flex_attention, dynamic=False)
    for name, b, h, l, d, dv, causal in CASES:
        g = torch.Generator(device="cuda").manual_seed(1)
        mk = lambda dd: torch.randn(b, h, l, dd, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
        q, k, v = mk(d).requires_grad_(True), mk(d).requires_grad_(True), mk(dv).requires_grad_(True)
        do = mk(dv)
        attn = attnc.compile(EXAMPLES / ("causal.attn" if causal else "dense.attn")).attention()
        bm = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, l, l, device="cuda") if causal else None
        fwd = {
            "attnc": lambda: attn(q, k, v),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
            "flex": lambda: flex(q, k, v, block_mask=bm),
        }

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        fwd["sdpa_cudnn"] = cudnn
        if dv != d and max(d, dv) <= 256:
            # the other padding: D to 256, Dv kept (a pair the kernels take, on other kernels)
            pd = lambda x: F.pad(x, (0, 256 - x.shape[-1]))  # noqa: E731
            fwd["attnc_dv_kept"] = lambda: attn(pd(q), pd(k), v, scale=d ** -0.5)
        dens = 0.5 if causal else 1.0
        flops = 2 * b * h * l * l * (d + dv) * dens
        row = []
        ref = None
        for who, f in fwd.items():
            try:
                with torch.no_grad():
                    out = f()
                    if ref is None:
                        ref = out.float()
                    err = float((out.float() - ref).abs().max())
                    ms = event_ms(f, iters=10, warm=3)
                for x in (q, k, v):
                    x.grad = None
                ms2 = event_ms(lambda: f().backward(do), iters=10, warm=3)
                row.append(f"{who} fwd {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s), fwd+bwd {ms2:.3f} ms "
                           f"({3.5 * flops / ms2 / 1e9:.0f}), |o - attnc| {err:.3g}")
            except Exception as e:
                row.append(f"{who}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        print(f"{name} B{b} H{h} L{l} D{d} Dv{dv} (padded to {attnc._cuda_head_dim(q, k, v)}):", flush=True)
        for r in row:
            print("   ", r, flush=True)


if __name__ == "__main__":
    main()
