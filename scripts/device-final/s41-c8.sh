#!/usr/bin/env bash
# Session 41 call 8 (carry .bin-pycuda of scripts/python-gpu-pack.sh at the backward's
# document kv tiles): the Python block mask / document tests (forward and backward on
# document tiles against the oracle, determinism, graphs), compute-sanitizer memcheck of
# one document step on them, then doc_tiles.py's attnc rows (document tiles forward +
# backward / forward only / neither) at B2 H16 L8192 and B1 Hq32 Hkv8 L16384 D128.
set -u
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest ($((SECONDS - t0)) s)"
PYTEST_FILES="python/tests/test_cuda.py python/tests/test_flex.py" pygpu_pytest "block_mask or doc or flex" 8 240
echo "== memcheck ($((SECONDS - t0)) s)"
cat > /tmp/step.py <<'PY'
import torch, attnc
attn = attnc.compile("examples/document_causal.attn").attention("document_causal")
g = torch.Generator().manual_seed(0)
b, h, hkv, l = 2, 4, 2, 777
q = torch.randn(b, h, l, 128, generator=g).cuda().bfloat16().requires_grad_(True)
k, v = (torch.randn(b, hkv, l, 128, generator=g).cuda().bfloat16().requires_grad_(True) for _ in range(2))
doc = torch.sort(torch.randint(0, 6, (b, l), dtype=torch.int32, generator=g), dim=1).values.cuda()
bm = attn.block_mask(q, k, v, doc=doc)
print(bm)
attn(q, k, v, doc=doc, block_mask=bm).float().sum().backward()
torch.cuda.synchronize()
print("grads finite", all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v)))
PY
timeout 200 /usr/local/cuda/bin/compute-sanitizer --tool memcheck python3 /tmp/step.py 2>&1 | grep -E "ERROR SUMMARY|BlockMask|finite|Error" | head -8
cd python/bench
echo "== doc_tiles ($((SECONDS - t0)) s)"
timeout 200 "$py" doc_tiles.py --examples ../../examples --rounds 3 --only attnc_tiles,attnc_fwdtiles,attnc_table 2>&1 \
  | grep -E "^doc_tiles|^  |Error" | cut -c1-200
echo "== done ($((SECONDS - t0)) s)"
