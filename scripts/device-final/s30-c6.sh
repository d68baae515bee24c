#!/usr/bin/env bash
# Session 30 call 6: chunked prefill at head dim 256 on caller buffers (the prefill kernel
# alone: device lengths, host-length runs): gpu_decode_caller_prefill_device with its D256
# cases, memcheck of it; the package's chunked tests (the new D256 zero-copy test) and the
# decode / graph ones; a D256 chunked-prefill timing against the host-copy path it took
# before. Carry .bin-s30 and .bin-py30.
set -u
B=/tmp/cb; mkdir -p $B
xz -dc .bin-s30/gpu_decode.xz > $B/gpu_decode; chmod +x $B/gpu_decode
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
export ATTNC_CACHE_DIR=/tmp/attnc-cache ATTNC_EXAMPLES=$PWD/examples
t0=$(date +%s)
( timeout 300 $B/gpu_decode --exact gpu_decode_caller_prefill_device > $OUT/t_dev.log 2>&1; echo "rc=$?" >> $OUT/t_dev.log ) &
( timeout 400 compute-sanitizer --tool memcheck --print-limit 5 $B/gpu_decode --exact gpu_decode_caller_prefill_device \
    > $OUT/memcheck.log 2>&1; echo "rc=$?" >> $OUT/memcheck.log ) &
for t in gpu_decode_caller_buffers gpu_decode_caller_prefill_runs gpu_decode_head_dims; do
  ( timeout 300 $B/gpu_decode --exact $t > $OUT/t_$t.log 2>&1; echo "rc=$?" >> $OUT/t_$t.log ) &
done
root=$PWD
( TESTS="chunked or decode or graph or clamped" NPROC=6 TEST_TIMEOUT=300 bash .bin-py30/python-gpu-select.sh > $OUT/py.log 2>&1 ) &
wait $(jobs -p); echo "tests: $(( $(date +%s) - t0 )) s"
for f in $OUT/t_*.log; do
  echo "== $(basename $f .log): $(grep -E "^test result|^rc=" $f | tr '\n' ' ' | cut -c1-100)"
  grep -E "panicked" -A4 $f | head -8
done
echo "== memcheck: $(grep -E "ERROR SUMMARY|^rc=|test result" $OUT/memcheck.log | tr '\n' ' ')"
tail -8 $OUT/py.log
grep -hE "^FAILED|^ERROR|Error:" $OUT/pytest_*.log 2>/dev/null | head -12
cd "$root"; export PYTHONPATH=/tmp/attnc-py
timeout 120 python3 - <<'PY' 2>&1 | grep -v Warning
import torch, attnc, pathlib
ex = pathlib.Path("examples")
attn = attnc.compile(ex / "softcap_sliding.attn").attention()
def bench(f, iters=10):
    for _ in range(2): f()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    for _ in range(3):
        s.record()
        for _ in range(iters): f()
        e.record(); torch.cuda.synchronize(); best = min(best, s.elapsed_time(e) / iters)
    return best
for b, hq, hkv, lq, lkv in [(4, 16, 8, 256, 8192), (8, 8, 4, 512, 4096)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, lq, 256, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, hkv, lkv, 256, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, hkv, lkv, 256, device="cuda", dtype=torch.bfloat16, generator=g)
    dl = torch.full((b,), lkv, dtype=torch.int32, device="cuda")
    out = []
    for label, sl in (("device_lens", dl), ("host_lens", dl.cpu())):
        o = attn.decode(q, k, v, sl, window=1024)
        ms = bench(lambda sl=sl: attn.decode(q, k, v, sl, window=1024))
        out.append(f"{label} ({attn._inner.decode_path(q, k, v, None, None)}) {ms*1e3:.1f} us")
    # the host-copy path such calls took before (zero-copy refused): wall time of one call
    import time
    zc = attn._zero_copy
    attn._zero_copy = lambda *a: False
    ho = attn.decode(q, k, v, dl, window=1024)
    torch.cuda.synchronize(); t = time.perf_counter()
    ho = attn.decode(q, k, v, dl, window=1024)
    torch.cuda.synchronize(); out.append(f"host copies (before) {1e6 * (time.perf_counter() - t):.0f} us")
    attn._zero_copy = zc
    out.append(f"maxdiff {float((ho.float() - o.float()).abs().max()):.3g}")
    print(f"gemma-2 local D256 B{b} Hq{hq} Hkv{hkv} Lq{lq} Lkv{lkv} | " + " | ".join(out), flush=True)
PY
echo "total: $(( $(date +%s) - t0 )) s"
