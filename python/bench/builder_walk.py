"""The block-table builder's walk, simulated on the host for one chunked-prefill call of
``document_causal`` (lengths on the device, all at Lkv; 128 x 128 tiles, 8 rows a step
spread over the tile): per tile the steps the builder walks before the rows left cannot
change its kind (blocktable.rs's exit rule with `mask_kinds`, session 32's), on the ids that
``profile_kernels.py`` draws (the same generator sequence), so that a slow builder there
can be traced to the tiles that walk. Prints the steps per table row and the tiles that
walk longest, with their rows' and columns' id ranges.

usage: python3 builder_walk.py [B,LQ,LKV ...]   (a CUDA GPU draws the ids as the bench does)"""

import sys

import torch

from profile_kernels import chunked_documents  # this folder (sys.path[0] when run as a script)


def walk(doc_b, q0pos, qn, kv0, kvn, lkv, rows=8):
    """Steps of one tile: (kind, steps); kind -1 = decided by the ranges."""
    qpos = torch.arange(q0pos, q0pos + qn)
    kv = torch.arange(kv0, kv0 + kvn)
    x = doc_b[qpos.clamp(max=lkv - 1)]
    y = doc_b[kv]
    xlo, xhi, ylo, yhi = int(x.min()), int(x.max()), int(y.min()), int(y.max())
    if xhi < ylo or yhi < xlo:
        return "empty(range)", 0
    one = xlo == xhi == ylo == yhi
    l_all = kv0 + kvn - 1 <= q0pos  # causal holds on the whole tile (the closed form's full range)
    if one and l_all:
        return "full(range)", 0
    L = qpos[:, None] >= kv[None, :]
    N = torch.where(L, x[:, None] == y[None, :], torch.ones_like(L))  # guarded reads: 0 == 0 where L is false
    stride = (qn + rows - 1) // rows
    # (L everywhere and the ids not one value: N false where L holds, known before the walk)
    known = l_all and not one
    t, fl, fnn = False, False, known
    for s in range(stride):
        rr = [min(s + stride * u, qn - 1) for u in range(rows - 1)] + [max(qn - 1 - s, 0)]
        l, n = L[rr], N[rr]
        t |= bool((l & n).any())
        fl |= bool((~l).any())
        fnn |= bool((l & ~n).any())
        if t and (fl or l_all) and (fnn or one):
            return "partial", s + 1
    kind = "empty" if not t else ("full" if not (fl or fnn) else "partial")
    return kind, stride


def main():
    shapes = sys.argv[1:] or ["8,512,8192", "8,256,8192"]
    g = torch.Generator(device="cuda").manual_seed(0)
    for arg in shapes:
        b, lq, lkv = (int(v) for v in arg.split(","))
        doc = chunked_documents(b, 32, 8, lq, lkv, g)[3].cpu()
        q_shift = lkv - lq
        worst = []
        print(f"B{b} Lq{lq} Lkv{lkv}: ids per sequence {[int(doc[i, -1]) + 1 for i in range(b)]}")
        for bi in range(b):
            per_row = []
            for i in range((lq + 127) // 128):
                q0pos = q_shift + 128 * i
                qn = min(128, lq - 128 * i)
                hi = min((q0pos + qn - 1) // 128 + 1, (lkv + 127) // 128)
                # one warp per tile, 8 warps: the row's time is its slowest warp's sum
                warps = [0] * 8
                for j in range(hi):
                    kind, steps = walk(doc[bi], q0pos, qn, 128 * j, min(128, lkv - 128 * j), lkv)
                    warps[j % 8] += steps
                    if steps >= 4:
                        worst.append((steps, bi, i, j, kind,
                                      (int(doc[bi, q0pos]), int(doc[bi, q0pos + qn - 1])),
                                      (int(doc[bi, 128 * j]), int(doc[bi, min(lkv, 128 * j + 128) - 1]))))
                per_row.append(max(warps))
            print(f"  b{bi}: slowest warp's steps per row {per_row}")
        worst.sort(reverse=True)
        for w in worst[:12]:
            print(f"  {w[0]:3d} steps: b{w[1]} row {w[2]} tile {w[3]} {w[4]}, row ids {w[5]}, column ids {w[6]}")


if __name__ == "__main__":
    main()
