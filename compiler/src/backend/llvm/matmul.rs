//! The two products of attention on tensor cores, per warp: S = Q Kᵀ and O += P V.
//!
//! In: the tiles of [`Cfg`] in shared memory (Q, K and V in their `SmemTile` layouts; a
//! byte offset selects the second buffer of a double-buffered tile), P as A fragments
//! from registers. Out: S as m16n8 accumulator values `[m-tile][n8 tile]`; O updated in
//! its [`AccTile`]. Two matrix paths: `mma.sync` m16n8k16 with `ldmatrix` (Q fragments
//! from registers or re-read from shared memory) and Hopper `wgmma` per warpgroup of 64
//! rows (operands K-major or N-major behind 128-byte-swizzle descriptors; the `_issue`
//! forms leave the group in flight, valid after a `wgmma_wait` that covers it).

use super::LlvmError;
use super::gpu::{Gpu, R, SmemTile, WgmmaA};
use super::tile::{AccTile, AccValues, Cfg, Ctx, Frag, mtile_row0, split4};
use inkwell::values::{FloatValue, IntValue};

/// A fragments of this warp's Q rows: `[m-tile][ks]`, one [`Frag`] per 16 columns of D.
pub(crate) fn load_q_fragments<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
) -> R<Vec<Vec<Frag<'ctx>>>> {
    (0..c.mt)
        .map(|i| {
            (0..c.d as usize / 16)
                .map(|ks| load_q_fragment(g, c, cx, i, ks))
                .collect()
        })
        .collect()
}

/// The A fragment of m-tile `i`, columns `16 ks ..`, of this warp's Q rows.
fn load_q_fragment<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    i: usize,
    ks: usize,
) -> R<Frag<'ctx>> {
    // lane l addresses row (l % 8) + 8 ((l / 8) % 2) of the m-tile, chunk 2 ks + l / 16
    let r8 = g.and(cx.lane, g.c32(7))?;
    let hi8 = g.and(g.lshr(cx.lane, g.c32(3))?, g.c32(1))?;
    let row = g.add(g.add(mtile_row0(g, c, cx, i)?, r8)?, g.mul(hi8, g.c32(8))?)?;
    let half = g.lshr(cx.lane, g.c32(4))?;
    let chunk = g.add(g.c32(2 * ks as i64), half)?;
    g.ldmatrix_x4(c.q.addr(g, row, chunk)?, false)
}

/// S = Q K^T for this warp (mma.sync): per m-tile, `kv_block / 8` accumulators of m16n8.
/// Q comes from `qfrag` (`[m-tile][ks]`) or, without it, from shared memory; K from the
/// K buffer `kbuf` bytes past the K tile.
pub(crate) fn qk<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    qfrag: Option<&[Vec<Frag<'ctx>>]>,
    kbuf: IntValue<'ctx>,
) -> R<AccValues<'ctx>> {
    let zero = g.cf(0.0);
    let mut s = vec![vec![[zero; 4]; (c.kvb / 8) as usize]; c.mt];
    // lane l: matrix mi = l / 8 -> kv row (2 ntp + mi / 2) * 8 + l % 8, chunk 2 ks + mi % 2
    let r8 = g.and(cx.lane, g.c32(7))?;
    let mi = g.lshr(cx.lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.lshr(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.and(mi, g.c32(1))?;
    for ks in 0..c.d as usize / 16 {
        let a: Vec<Frag<'ctx>> = (0..c.mt)
            .map(|i| match qfrag {
                Some(q) => Ok(q[i][ks]),
                None => load_q_fragment(g, c, cx, i, ks),
            })
            .collect::<R<_>>()?;
        for ntp in 0..(c.kvb / 16) as usize {
            let row = g.add(row_in, g.c32(16 * ntp as i64))?;
            let chunk = g.add(chunk_in, g.c32(2 * ks as i64))?;
            let bf = g.ldmatrix_x4(c.k.addr_at(g, row, chunk, kbuf)?, false)?;
            for (i, a) in a.iter().enumerate() {
                s[i][2 * ntp] = g.mma(c.ty, a, &[bf[0], bf[1]], &s[i][2 * ntp])?;
                s[i][2 * ntp + 1] = g.mma(c.ty, a, &[bf[2], bf[3]], &s[i][2 * ntp + 1])?;
            }
        }
    }
    Ok(s)
}

/// O += P V for this warp (mma.sync; V fragments via `ldmatrix.trans`).
pub(crate) fn pv<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    pfrag: &[Vec<Frag<'ctx>>],
    o: &AccTile<'ctx>,
) -> R<()> {
    pv_at(g, c, cx, pfrag, o, g.c32(0))
}

/// [`pv`] with V read `vbuf` bytes past the V tile (a ring buffer, a slice of its rows).
pub(crate) fn pv_at<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    pfrag: &[Vec<Frag<'ctx>>],
    o: &AccTile<'ctx>,
    vbuf: IntValue<'ctx>,
) -> R<()> {
    let mut acc = o.values(g)?;
    // lane l: matrix mi = l / 8 -> kv row 16 kk + (mi % 2) * 8 + l % 8, chunk 2 ntp + mi / 2
    let r8 = g.and(cx.lane, g.c32(7))?;
    let mi = g.lshr(cx.lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.and(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.lshr(mi, g.c32(1))?;
    for kk in 0..(c.kvb / 16) as usize {
        for ntp in 0..(c.dv / 16) as usize {
            let row = g.add(row_in, g.c32(16 * kk as i64))?;
            let chunk = g.add(chunk_in, g.c32(2 * ntp as i64))?;
            let bf = g.ldmatrix_x4(c.v.addr_at(g, row, chunk, vbuf)?, true)?;
            for (acc, pf) in acc.iter_mut().zip(pfrag) {
                let a = &pf[kk];
                acc[2 * ntp] = g.mma(c.ty, a, &[bf[0], bf[1]], &acc[2 * ntp])?;
                acc[2 * ntp + 1] = g.mma(c.ty, a, &[bf[2], bf[3]], &acc[2 * ntp + 1])?;
            }
        }
    }
    o.store(g, &acc)
}

/// Byte offset of the 16-column step `ks` (of a 128-byte-swizzled slab tile) from the
/// tile start: the slab, then 32 bytes per step inside the 128-byte row (the hardware
/// applies the swizzle to the address bits, so the start moves unswizzled).
fn kstep_offset(t: &SmemTile, ks: u32) -> u32 {
    (ks / 4) * t.rows * 128 + (ks % 4) * 32
}

/// S = Q K^T with wgmma for this warp's 16 rows (its warpgroup's 64): `kv_block / 8`
/// m16n8-ordered accumulators, in the `[m-tile][n-tile]` shape of [`qk`] (one m-tile).
/// Q and K are K-major in shared memory (8-row groups 1024 bytes apart); issued, then
/// waited for at once.
pub(crate) fn qk_wgmma<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    kbuf: IntValue<'ctx>,
) -> R<AccValues<'ctx>> {
    let acc = qk_wgmma_issue(g, c, cx, kbuf, None)?;
    Ok(split4(&g.wgmma_wait(0, &acc)?))
}

/// Issues S = Q K^T (one committed wgmma group); the values returned are valid only
/// after a `wgmma_wait` that covers the group.
pub(crate) fn qk_wgmma_issue<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    kbuf: IntValue<'ctx>,
    qbuf: Option<IntValue<'ctx>>,
) -> R<Vec<FloatValue<'ctx>>> {
    let wgi = g.lshr(cx.warp, g.c32(2))?;
    let mut q_off = g.add(g.mul(wgi, g.c32(64 * 128))?, g.c32(c.q.offset as i64))?;
    if let Some(qbuf) = qbuf {
        // (the persistent kernel's second Q buffer: `PtxOptions::q_double`)
        q_off = g.add(q_off, qbuf)?;
    }
    let q_base = g.smem_addr32(q_off)?;
    let k_base = g.smem_addr32(g.add(kbuf, g.c32(c.k.offset as i64))?)?;
    g.wgmma_fence()?;
    let mut acc: Option<Vec<FloatValue<'ctx>>> = None;
    for ks in 0..c.d / 16 {
        let da = g.wgmma_desc(
            g.add(q_base, g.c32(kstep_offset(&c.q, ks) as i64))?,
            16,
            1024,
        )?;
        let db = g.wgmma_desc(
            g.add(k_base, g.c32(kstep_offset(&c.k, ks) as i64))?,
            16,
            1024,
        )?;
        acc = Some(g.wgmma(c.ty, c.kvb, WgmmaA::Desc(da), db, false, acc.as_deref())?);
    }
    g.wgmma_commit()?;
    acc.ok_or(LlvmError::Internal("empty QK"))
}

/// O += P V with wgmma: P from registers (the A fragments of `online_softmax`, one
/// m-tile), V N-major in shared memory (`imm-trans-b`): 64-column slabs `kv_block * 128`
/// bytes apart (leading byte offset), 8 kv rows 1024 bytes apart (stride byte offset).
pub(crate) fn pv_wgmma<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    pfrag: &[Vec<Frag<'ctx>>],
    o: &AccTile<'ctx>,
) -> R<()> {
    let acc = o.flat(g)?;
    let acc = pv_wgmma_issue(g, c, &pfrag[0], &acc, g.c32(0))?;
    o.store_flat(g, &g.wgmma_wait(0, &acc)?)
}

/// Issues O += P V (one committed wgmma group) with V in the buffer `vbuf` bytes past
/// the V tile; the values returned are valid only after a `wgmma_wait` covering it.
pub(crate) fn pv_wgmma_issue<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    pfrag: &[Frag<'ctx>],
    o: &[FloatValue<'ctx>],
    vbuf: IntValue<'ctx>,
) -> R<Vec<FloatValue<'ctx>>> {
    let v_base = g.smem_addr32(g.add(vbuf, g.c32(c.v.offset as i64))?)?;
    g.wgmma_fence()?;
    let mut acc = o.to_vec();
    for kk in 0..c.kvb / 16 {
        let db = g.wgmma_desc(
            g.add(v_base, g.c32(kk as i64 * 16 * 128))?,
            c.v.rows * 128,
            1024,
        )?;
        acc = g.wgmma(
            c.ty,
            c.dv,
            WgmmaA::Regs(pfrag[kk as usize]),
            db,
            true,
            Some(&acc),
        )?;
    }
    g.wgmma_commit()?;
    Ok(acc)
}
