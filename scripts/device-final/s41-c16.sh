#!/usr/bin/env bash
# Session 41 call 16 (carry .bin-pycuda with the backward's document kv tiles at D64 too):
# the Python block-mask / document tests, compute-sanitizer racecheck and memcheck of a
# small document step on the backward's document kv tiles (D128 and D64), then
# doc_tiles.py's attnc rows at B4 H16 L4096 D64 (backward document kv tiles or the block
# ranges) and again at the D128 shapes.
set -u
here=$PWD/.bin-pycuda
. .bin-pycuda/python-gpu-lib.sh
pygpu_install
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== pytest ($((SECONDS - t0)) s)"
pygpu_pytest "block_mask or doc" 8 200
cat > /tmp/step.py <<'PY'
import sys, torch, attnc
d = int(sys.argv[1])
attn = attnc.compile("examples/document_causal.attn").attention("document_causal")
g = torch.Generator().manual_seed(0)
b, h, hkv, l = 1, 2, 1, 333
q = torch.randn(b, h, l, d, generator=g).cuda().bfloat16().requires_grad_(True)
k, v = (torch.randn(b, hkv, l, d, generator=g).cuda().bfloat16().requires_grad_(True) for _ in range(2))
doc = torch.sort(torch.randint(0, 4, (b, l), dtype=torch.int32, generator=g), dim=1).values.cuda()
bm = attn.block_mask(q, k, v, doc=doc)
print(bm)
attn(q, k, v, doc=doc, block_mask=bm).float().sum().backward()
torch.cuda.synchronize()
print("grads finite", all(bool(torch.isfinite(x.grad).all()) for x in (q, k, v)))
PY
for d in 64 128; do
  for tool in racecheck memcheck; do
    echo "== $tool D$d ($((SECONDS - t0)) s)"
    timeout 150 /usr/local/cuda/bin/compute-sanitizer --tool $tool python3 /tmp/step.py $d 2>&1 \
      | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|BlockMask|finite|Error|hazard" | head -6
  done
done
cd python/bench
echo "== doc_tiles ($((SECONDS - t0)) s)"
timeout 200 "$py" doc_tiles.py --examples ../../examples --rounds 3 --shapes d64,gqa,b2 --only attnc_tiles,attnc_fwdtiles,attnc_table 2>&1 \
  | grep -E "^doc_tiles|^  |Error" | cut -c1-200
echo "== done ($((SECONDS - t0)) s)"
