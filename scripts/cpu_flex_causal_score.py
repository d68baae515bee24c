# FlexAttention on the CPU (torch.compile), f32 B1 H8 L2048 D64, 2 threads: the causal
# score_mod (torch.where(q >= kv, score, -inf)) without a block mask, and causal as a
# mask_mod with its block mask; forward only (FlexAttention has no CPU backward).
import time, torch, warnings
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
from torch_timing import median_ms as t
warnings.simplefilter("ignore")
torch.set_num_threads(2)
B, H, L, D = 1, 8, 2048, 64
q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
def causal_score(score, b, h, qi, ki): return torch.where(qi >= ki, score, -float("inf"))
def causal(b, h, qi, ki): return qi >= ki
fa = torch.compile(flex_attention)
bm = create_block_mask(causal, B, H, L, L, device="cpu")
t0 = time.perf_counter(); fa(q, k, v, score_mod=causal_score); first = time.perf_counter() - t0
print(f"flex cpu causal score_mod, no block mask: {t(lambda: fa(q, k, v, score_mod=causal_score)):.2f} ms (first call {first:.1f} s)")
print(f"flex cpu causal mask_mod + block mask: {t(lambda: fa(q, k, v, block_mask=bm)):.2f} ms")
sd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
print(f"sdpa cpu is_causal: {t(sd):.2f} ms")
