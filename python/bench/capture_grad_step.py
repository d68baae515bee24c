"""A training step with a learned score capture (forward + backward, the capture's gradient
too): attnc next to FlexAttention compiled (Triton backend; its backward sums a captured
buffer's gradient with float atomics) and, where FA4 is importable, Flex's FLASH backend
(reported as an error if it refuses captured gradients), in one process.

Cases (bf16 q/k/v, f32 captures), B2 H16 L``--l`` D``--d``:
- ``relbias``: a learned relative-position table ``rel[H, 129]`` read at
  ``clamp(q - kv, -64, 64) + 64`` (Shaw / Swin style), no mask
  (``examples/relative_bias_table.attn``);
- ``relbias_causal``: the same under a causal mask;
- ``softcap_param``: a learnable soft-cap (an f32 tensor of one element read at 0)
  under a causal mask;
- ``t5`` / ``t5_causal`` (session 45): T5's bucketed relative-position bias, a learned
  ``t5_bias[32, H]`` read at the bucket of ``kv - q`` (bidirectional buckets; the decoder's
  one-sided buckets under a causal mask: ``examples/t5_relative_bias.attn``), next to Flex
  with HuggingFace's ``_relative_position_bucket`` in its ``score_mod`` and ``sdpa_bias``:
  what HuggingFace's ``T5Attention`` does — the bias gathered into a float ``[1, H, L, L]``
  mask every step (the bucket matrix made once), the causal part as ``-inf`` in it, SDPA
  with that mask (its memory-efficient kernel, whose backward gives the mask's gradient);
  ``attnc_nobias``: attnc's dense (``t5``) or causal (``t5_causal``) attention, no bias.
Per row: CUDA-event ms per step (``f(...).backward(dO)``, every gradient accumulated as in
training), min over ``--rounds`` rounds; the gradients of q, k, v and the capture against
attnc's. Prints ratios other / attnc (> 1: attnc faster).

    python python/bench/capture_grad_step.py [--cases relbias,relbias_causal,softcap_param]
        [--l 8192] [--d 128] [--rounds 3] [--no-flash]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch

import attnc
from bench_gpu import event_ms  # this folder (sys.path[0] when run as a script)

EX = pathlib.Path(__file__).resolve().parents[2] / "examples"

SRC_CAUSAL_REL = """
tensor rel_bias: f32[H, 129];
mask causal(b, h, q, kv) { q >= kv }
score relative_bias(s, b, h, q, kv) { s + rel_bias[h, clamp(q - kv, -64, 64) + 64] }
attention relbias_causal { mask = causal; score = relative_bias; }
"""
SRC_SOFTCAP_PARAM = """
tensor cap: f32[1];
mask causal(b, h, q, kv) { q >= kv }
score softcap(s, b, h, q, kv) { cap[0] * tanh(s / cap[0]) }
attention softcap_param { mask = causal; score = softcap; }
"""


def t5_bucket(rel, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
    """HuggingFace's ``T5Attention._relative_position_bucket`` (``rel`` = kv - q)."""
    ret = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n //= 2
        ret = ret + (rel > 0).to(rel.dtype) * n
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = n // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (n - max_exact)).to(rel.dtype)
    large = torch.clamp(large, max=n - 1)
    return ret + torch.where(is_small, rel, large)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="relbias,relbias_causal,softcap_param")
    ap.add_argument("--no-sdpa", action="store_true", help="leave out the sdpa_bias rows (t5 cases)")
    ap.add_argument("--l", type=int, default=8192)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-flash", action="store_true")
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import torch._dynamo

    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} attnc {attnc.__version__}", flush=True)
    b, h, l, d = 2, 16, a.l, a.d
    for case in a.cases.split(","):
        g = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
                   for _ in range(3))
        do = torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, generator=g)
        causal = case not in ("relbias", "t5")
        extra = {}
        if case.startswith("t5"):
            cap = (0.5 * torch.randn(32, h, device="cuda", generator=g)).requires_grad_(True)
            attn = attnc.compile(EX / "t5_relative_bias.attn").attention("t5_decoder" if causal else "t5_encoder")
            ours = lambda q, k, v: attn(q, k, v, t5_bias=cap)  # noqa: E731
            bidir = not causal

            def score_mod(score, b_, h_, qi, ki):
                return score + cap[t5_bucket(ki - qi, bidir), h_]

            if not a.no_sdpa:
                pos = torch.arange(l, device="cuda")
                buckets = t5_bucket(pos[None, :] - pos[:, None], bidir)  # [q, kv], made once
                keep = (pos[:, None] >= pos[None, :]) if causal else None

                def sdpa_bias(q, k, v):
                    bias = cap[buckets].permute(2, 0, 1)[None]
                    if keep is not None:
                        bias = bias.masked_fill(~keep, float("-inf"))
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))

                extra["sdpa_bias"] = sdpa_bias
            # the same shape without the bias (what the bias costs attnc)
            plain = attnc.compile(EX / ("causal.attn" if causal else "dense.attn")).attention()
            extra["attnc_nobias"] = lambda q, k, v: plain(q, k, v)  # noqa: E731
        elif case.startswith("relbias"):
            cap = (0.5 * torch.randn(h, 129, device="cuda", generator=g)).requires_grad_(True)
            if case == "relbias":
                attn = attnc.compile(EX / "relative_bias_table.attn").attention("relative_bias_table")
            else:
                attn = attnc.compile(SRC_CAUSAL_REL).attention("relbias_causal")
            ours = lambda q, k, v: attn(q, k, v, rel_bias=cap)  # noqa: E731

            def score_mod(score, b_, h_, qi, ki):
                return score + cap[h_, (qi - ki).clamp(-64, 64) + 64]
        else:
            cap = torch.full((1,), 30.0, device="cuda").requires_grad_(True)
            attn = attnc.compile(SRC_SOFTCAP_PARAM).attention("softcap_param")
            ours = lambda q, k, v: attn(q, k, v, cap=cap)  # noqa: E731

            def score_mod(score, b_, h_, qi, ki):
                return cap[0] * torch.tanh(score / cap[0])
        bm = create_block_mask(lambda b_, h_, qi, ki: qi >= ki, None, None, l, l, device="cuda") if causal else None
        rows = {"attnc": ours,
                "flex_TRITON": lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=bm,
                                                   kernel_options={"BACKEND": "TRITON"})}
        if not a.no_flash:
            rows["flex_FLASH"] = lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=bm,
                                                     kernel_options={"BACKEND": "FLASH"})
        rows.update(extra)
        grads, ok = {}, {}
        for name, f in rows.items():
            t0 = time.perf_counter()
            for x in (q, k, v, cap):
                x.grad = None
            try:
                f(q, k, v).backward(do)
                torch.cuda.synchronize()
                if name != "attnc_nobias":  # (no capture: nothing to compare)
                    grads[name] = [x.grad.float().clone() for x in (q, k, v, cap)]
                ok[name] = f
                print(f"{case} {name}: first step {time.perf_counter() - t0:.1f} s", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"{case} {name} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        for name, gs in grads.items():
            if name != "attnc" and "attnc" in grads:
                diff = [float((x - y).abs().max()) for x, y in zip(gs, grads["attnc"])]
                scale = float(grads["attnc"][3].abs().max())
                print(f"{case} {name}: max |grad - attnc's| dq {diff[0]:.3g} dk {diff[1]:.3g} dv {diff[2]:.3g} "
                      f"dcapture {diff[3]:.3g} (|dcapture| max {scale:.3g})", flush=True)
        del grads
        steps = {n: [] for n in ok}
        for rnd in range(a.rounds):
            for name, f in ok.items():
                for x in (q, k, v, cap):
                    x.grad = None
                steps[name].append(event_ms(lambda: f(q, k, v).backward(do), iters=a.iters, warm=2))
                print(f"[round {rnd}] {case:15s} {name:12s} step {steps[name][-1]:.3f} ms", flush=True)
        if steps.get("attnc"):
            for name, s in steps.items():
                if name != "attnc":
                    print(f"{case} step {name} / attnc: min {min(s):.3f} / {min(steps['attnc']):.3f} = "
                          f"{min(s) / min(steps['attnc']):.3f}", flush=True)


if __name__ == "__main__":
    main()
