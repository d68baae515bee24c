"""Session 25: where the caller path's chunked prefill (seq_lens on the device) spends its time."""
import sys, torch, attnc
from torch.profiler import profile, ProfilerActivity
ex = sys.argv[1]
attn = attnc.compile(ex + "/dense.attn").attention()
for (b, hq, hkv, lq, lkv) in [(8, 32, 8, 256, 8192), (8, 32, 8, 16, 32768)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, lq, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, lkv, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    sl = torch.full((b,), lkv, dtype=torch.int32, device="cuda")
    for _ in range(3): attn.decode(q, k, v, sl)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5): attn.decode(q, k, v, sl)
        torch.cuda.synchronize()
    print(f"== B{b} Lq{lq} Lkv{lkv} path {attn._inner.decode_path(q, k, v, None, None)}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
