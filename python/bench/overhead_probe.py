"""Where attnc's per-call host time goes (B1 H4 L64 D64 bf16, a CUDA GPU): wall clock per
call (3000 back-to-back calls) of SDPA, one torch launch, the eager call's two allocations,
attnc's eager call and its extension alone (dense and causal), single driver queries
through ctypes; then cProfile of the eager call. With the package installed:
``python python/bench/overhead_probe.py``."""
import cProfile, ctypes, io, pstats
import torch, torch.nn.functional as F
import attnc
from attnc import _ops
from bench_gpu import EXAMPLES as EX, wall_us  # this folder (sys.path[0] when run as a script)

q, k, v = (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
o, lse = torch.empty_like(q), torch.empty(1, 4, 64, device="cuda")
scratch = torch.zeros_like(q)
att = {n: attnc.compile(EX / f"{n}.attn").attention() for n in ("dense", "causal")}
st = _ops._stream(q)
rows = {
    "sdpa causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "torch.empty_like": lambda: torch.empty_like(q),
    "q.new_empty x2": lambda: (q.new_empty((1, 4, 64, 64)), q.new_empty((1, 4, 64), dtype=torch.float32)),
    "one launch (x.add_(0))": lambda: scratch.add_(0),
    "_stream(q)": lambda: _ops._stream(q),
    "_dense x3": lambda: (_ops._dense(q), _ops._dense(k), _ops._dense(v)),
}
for n, a in att.items():
    inner = a._inner
    rows[f"attnc {n} eager"] = (lambda a=a: a(q, k, v))
    rows[f"attnc {n} rust-only"] = (lambda inner=inner: inner.forward(q, k, v, o, lse, None, [], [], st, 0))
cu = ctypes.CDLL("libcuda.so.1")
ver = ctypes.c_int(); at = ctypes.c_int(); st_ = ctypes.c_int(); ctx = ctypes.c_void_p()
rows["ctypes cuDriverGetVersion"] = lambda: cu.cuDriverGetVersion(ctypes.byref(ver))
rows["ctypes cuPointerGetAttribute"] = lambda: cu.cuPointerGetAttribute(ctypes.byref(at), 9, ctypes.c_uint64(q.data_ptr()))
rows["ctypes cuStreamIsCapturing"] = lambda: cu.cuStreamIsCapturing(ctypes.c_void_p(st), ctypes.byref(st_))
rows["ctypes cuCtxGetCurrent"] = lambda: cu.cuCtxGetCurrent(ctypes.byref(ctx))
for name, fn in rows.items():
    print(f"{name:>32}: {wall_us(fn, iters=3000, warm=100):7.1f} us/call", flush=True)
pr = cProfile.Profile()
c = att["causal"]
pr.enable()
for _ in range(3000):
    c(q, k, v)
torch.cuda.synchronize()
pr.disable()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
print(s.getvalue()[:5000])
