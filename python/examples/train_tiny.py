"""Trains a tiny transformer language model with a document + ALiBi causal attention,
once with attnc and once with PyTorch FlexAttention (on CUDA; on the CPU, where
FlexAttention has no backward, with a dense PyTorch attention of the same variant), from
the same initial weights on the same batches; prints both loss curves, checks they agree,
and prints tokens/s for both.

    python python/examples/train_tiny.py                      # CPU, 300 steps
    python python/examples/train_tiny.py --device cuda --dtype bf16 --steps 300 --seq 1024

Data: packed documents of random lengths; each document is a random token string
repeated, so the model can only predict the repeats by attending within its own document
(the mask) - the loss falls well below log(vocab) when attention works. FlexAttention
runs compiled (torch.compile).
Exit status 1 when the two loss curves disagree beyond ``--tol``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import attnc

SOURCE = """
const HEADS: i32 = {heads};
tensor doc: i32[B, KV];
fn slope(h: i32) -> f32 {{ exp2(-8.0 * (h + 1) as f32 / HEADS as f32) }}
mask causal(b, h, q, kv)   {{ q >= kv }}
mask same_doc(b, h, q, kv) {{ doc[b, q] == doc[b, kv] }}
score alibi(s, b, h, q, kv) {{ s + slope(h) * (kv - q) as f32 }}
attention document_alibi {{ mask = causal & same_doc; score = alibi; }}
"""


def batches(steps, batch, seq, vocab, seed):
    """(tokens [B, L+1], doc ids [B, L+1]) per step: documents of 8..seq/2 tokens, each a
    random string of 4..16 tokens repeated."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        toks = torch.empty(batch, seq + 1, dtype=torch.long)
        docs = torch.empty(batch, seq + 1, dtype=torch.int32)
        for b in range(batch):
            pos, d = 0, 0
            while pos < seq + 1:
                n = int(torch.randint(8, max(9, seq // 2), (1,), generator=g))
                period = int(torch.randint(4, 17, (1,), generator=g))
                pattern = torch.randint(0, vocab, (period,), generator=g)
                body = pattern.repeat(n // period + 1)[:n]
                end = min(pos + n, seq + 1)
                toks[b, pos:end] = body[: end - pos]
                docs[b, pos:end] = d
                pos, d = end, d + 1
        out.append((toks, docs))
    return out


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x, attend):
        b, l, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, l, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        o = attend(q, k, v)
        x = x + self.proj(o.transpose(1, 2).reshape(b, l, dim))
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab, dim, heads, layers):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, attend):
        x = self.emb(tokens)
        for blk in self.blocks:
            x = blk(x, attend)
        return self.head(self.norm(x))


def attnc_attention(heads, block_mask=False):
    """attnc's attention for a batch's document ids; with ``block_mask`` (CUDA), one block
    mask per batch (made at the first layer's call, shared by every layer, like Flex's)."""
    attn = attnc.compile(SOURCE.format(heads=heads), name="train_tiny.attn").attention()

    def make(docs, dtype):
        made = {}

        def attend(q, k, v):
            if block_mask:
                key = (q.shape, q.dtype)
                if key not in made:
                    made[key] = attn.block_mask(q, k, v, doc=docs)
                return attn(q, k, v, doc=docs, block_mask=made[key])
            return attn(q, k, v, doc=docs)

        return attend

    return make


def flex_attention_fn(heads, device, compile_flex):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    slopes = torch.exp2(-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads).to(device)
    flex = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention

    def make(docs, dtype):
        def mask_mod(b, h, q, kv):
            return (q >= kv) & (docs[b, q] == docs[b, kv])

        def score_mod(s, b, h, q, kv):
            return s + slopes[h] * (kv - q)

        bsz, l = docs.shape
        block_mask = create_block_mask(mask_mod, bsz, None, l, l, device=device)

        def attend(q, k, v):
            return flex(q, k, v, score_mod=score_mod, block_mask=block_mask)

        return attend

    return make


def dense_attention_fn(heads, device):
    """The same variant as a dense PyTorch computation (scores materialized): the
    reference on the CPU, where FlexAttention has no backward."""
    slopes = torch.exp2(-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads).to(device)

    def make(docs, dtype):
        l = docs.shape[1]
        pos = torch.arange(l, device=device)
        allowed = (pos[:, None] >= pos[None, :]) & (docs[:, None, :, None] == docs[:, None, None, :])
        bias = slopes.view(1, heads, 1, 1) * (pos[None, :] - pos[:, None]).float()

        def attend(q, k, v):
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
            s = s.masked_fill(~allowed, float("-inf"))
            return torch.softmax(s, dim=-1).to(v.dtype) @ v

        return attend

    return make


def train(name, model, make_attend, data, args, device, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    tokens = 0
    timed = 0.0
    for step, (toks, docs) in enumerate(data):
        toks, docs = toks.to(device), docs.to(device)
        inp, tgt, d = toks[:, :-1], toks[:, 1:], docs[:, :-1].contiguous()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(inp, make_attend(d, dtype))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))  # synchronizes: the step is done
        if step >= args.warmup:
            timed += time.perf_counter() - t0
            tokens += inp.numel()
        if step % args.log_every == 0 or step == len(data) - 1:
            print(f"{name:>6} step {step:4d} loss {losses[-1]:.4f}", flush=True)
    return losses, tokens / timed if timed else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=5, help="steps not timed (JIT, compile)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--tol", type=float, default=0.05, help="max |mean loss difference| over the last 10%% of steps, relative")
    p.add_argument("--reference", choices=["flex", "dense"], default=None,
                   help="what attnc is compared with: FlexAttention (default on CUDA; it has no backward on the CPU) "
                   "or a dense PyTorch attention of the same variant (default on the CPU)")
    p.add_argument("--flex-compile", action="store_true", help="compile FlexAttention on the CPU too")
    p.add_argument("--attnc-block-mask", choices=["on", "off"], default=None,
                   help="attnc with one block mask per batch (attnc.Attention.block_mask; default on for CUDA)")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        p.error("the CPU runs f32")
    torch.manual_seed(0)
    init = TinyLM(args.vocab, args.dim, args.heads, args.layers)
    data = batches(args.steps, args.batch, args.seq, args.vocab, seed=1)
    print(
        f"train_tiny: {args.layers} layers, dim {args.dim}, {args.heads} heads, B{args.batch} L{args.seq}, "
        f"{args.steps} steps on {device} ({args.dtype}); torch {torch.__version__}",
        flush=True,
    )
    results = {}
    reference = args.reference or ("flex" if device.type == "cuda" else "dense")
    if reference == "flex":
        ref = flex_attention_fn(args.heads, device, device.type == "cuda" or args.flex_compile)
    else:
        ref = dense_attention_fn(args.heads, device)
    use_bm = (args.attnc_block_mask or ("on" if device.type == "cuda" else "off")) == "on"
    print(f"attnc block mask per batch: {'on' if use_bm else 'off'}", flush=True)
    for name, make in (("attnc", attnc_attention(args.heads, use_bm)), (reference, ref)):
        torch.manual_seed(0)
        model = TinyLM(args.vocab, args.dim, args.heads, args.layers)
        model.load_state_dict(init.state_dict())
        model.to(device)
        results[name] = train(name, model, make, data, args, device, dtype)
    (la, tps_a), (lf, tps_f) = results["attnc"], results[reference]
    tail = max(1, len(la) // 10)
    ma, mf = sum(la[-tail:]) / tail, sum(lf[-tail:]) / tail
    first = abs(la[0] - lf[0])
    rel = abs(ma - mf) / max(abs(mf), 1e-9)
    r = reference
    print(f"first loss: attnc {la[0]:.5f} {r} {lf[0]:.5f} (|diff| {first:.2e}); initial log(vocab) = {math.log(args.vocab):.3f}")
    print(f"mean loss over the last {tail} steps: attnc {ma:.4f} {r} {mf:.4f} (relative difference {rel:.4f}, tolerance {args.tol})")
    print(f"tokens/s: attnc {tps_a:,.0f}, {r} {tps_f:,.0f} (attnc/{r} {tps_a / tps_f:.2f}x)")
    ok = rel <= args.tol and first <= 1e-2 * max(1.0, abs(lf[0]))
    print("losses agree" if ok else "LOSSES DISAGREE")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
