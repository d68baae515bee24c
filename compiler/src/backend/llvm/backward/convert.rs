//! The fused backward's dQ conversion: per step (`convert_body`) or in wide pieces
//! ([`PtxOptions::bwd_convert_wide`], `convert_wide_body`).
//!
//! In: the f32 workspace `DqAccum` of one (q block, query head, batch) tile, in the
//! fused kernel's fragment order (per 16-row group `mg` and 8-column group `ng` of the
//! tile, 32 lanes of 16 bytes: lane `l` holds rows `16 mg + l / 4` and `+ 8`, columns
//! `8 ng + 2 (l % 4)` and `+ 1`), the tile's semaphore `DqSem` (0: no kv block added to
//! it) and the scale. Out: dQ (the input type), `scale x` rounded once per element, 0 for
//! a tile nobody added to: the same values as `convert_body`, the per-step kernel.
//!
//! Each thread takes whole 64-byte pieces of the workspace: the four lanes of one quad
//! `qd` of an (`mg`, `ng`) fragment tile, i.e. rows `16 mg + qd` and `+ 8`, columns
//! `8 ng .. 8 ng + 8`, so that each row's 8 columns leave as one 16-byte store; piece
//! `u` of the tile starts at byte `64 u` (`u = (mg ng_count + ng) 8 + qd`). Piece `tid +
//! k CONVERT_THREADS` is the thread's k-th: a warp reads 2 KiB in a row and stores
//! 64 contiguous bytes of 16 rows. Every load of the thread is issued before its first
//! store (the per-step kernel waited for each load before its stores and wrote 4-byte
//! words: measured at ~3x its bandwidth time on an H200, session 13).
//!
//! Chained ([`PtxOptions::bwd_pdl`]: launched under the fused kernel's tail by
//! programmatic dependent launch): the CTA waits for the fused grid
//! (`griddepcontrol.wait`) before it reads the workspace; with
//! [`PtxOptions::bwd_convert_early`] only for its own tile instead (`wait_for_tile`:
//! thread 0 spins, acquire and `nanosleep`, until the tile's semaphore carries
//! [`DQ_DONE_FLAG`], set by the writer that adds the tile's last part once its addition is
//! done, or until every writer of the fused grid has counted itself done in the word after
//! the semaphores, which covers tiles nobody adds to; after a spin budget of about 2 s, for
//! the whole fused grid, counted in the word after that one), and the grid's last CTA waits for
//! the fused grid after its stores (`early_tail`), so the conversion grid never completes
//! before the fused one. The same loads of the same sums: the same dQ.

use super::{DQ_DONE_FLAG, convert_early, pdl, slice_base};
use crate::backend::llvm::cta::Args;
use crate::backend::llvm::gpu::{Gpu, R};
use crate::backend::llvm::{BwdDq, KernelParam, LlvmError, PtxOptions};
use inkwell::IntPredicate;
use inkwell::values::{BasicValue, FloatValue, IntValue, PointerValue, VectorValue};

/// Threads of the convert kernel.
pub const CONVERT_THREADS: u32 = 128;

/// One convert CTA's tile: its thread, Lq, the scale, whether any kv block added to the
/// tile, the tile's workspace (`src`) and dQ slice (`dst`, rows from `q0`).
struct Tile<'ctx> {
    tid: IntValue<'ctx>,
    lq: IntValue<'ctx>,
    scale: FloatValue<'ctx>,
    added: IntValue<'ctx>,
    src: PointerValue<'ctx>,
    dst: PointerValue<'ctx>,
    q0: IntValue<'ctx>,
}

/// The tile of this CTA (q block `ctaid.x`, query head `ctaid.y`, batch `ctaid.z`).
fn tile<'ctx>(g: &Gpu<'ctx>, opts: &PtxOptions, a: &Args<'_, 'ctx>) -> R<Tile<'ctx>> {
    let br = opts.q_block;
    let d = opts.d;
    let tid = g.tid_x()?;
    let qb = g.ctaid('x')?;
    let h = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let lq = a.int(KernelParam::Lq)?;
    let hq = a.int(KernelParam::Hq)?;
    let scale = a.get(KernelParam::Scale)?.into_float_value();
    let nq = g.udiv(g.add(lq, g.c32(br as i64 - 1))?, g.c32(br as i64))?;
    let tile = g.add(g.mul(g.add(g.mul(b, hq)?, h)?, nq)?, qb)?;
    if convert_early(opts) {
        wait_for_tile(g, opts, a, (tid, tile, nq))?;
    } else if pdl(opts) {
        // launched under the fused kernel's tail: its sums first
        g.griddep_wait()?;
    }
    // Ordered and OrderedBulk never zero DqAccum (the first adder stores): a q block that
    // no kv block visited (DqSem = 0) holds whatever the workspace held before (a caller's
    // torch.empty, an earlier call's sums) and converts to 0; Atomic's accumulator is
    // zeroed before the kernel.
    let added = if matches!(opts.bwd_dq, BwdDq::Ordered | BwdDq::OrderedBulk) && !opts.bwd_dq_free {
        let n = g.load_i32(a.ptr(KernelParam::DqSem)?, g.zext64(tile)?)?;
        g.icmp(IntPredicate::NE, n, g.c32(0))?
    } else {
        g.cbool(true)
    };
    let src = g.gep_bytes(
        a.ptr(KernelParam::DqAccum)?,
        g.mul(g.zext64(tile)?, g.c64((br * d * 4) as i64))?,
    )?;
    let dst = slice_base(g, a.ptr(KernelParam::DQ)?, b, hq, h, lq, d)?;
    let q0 = g.mul(qb, g.c32(br as i64))?;
    Ok(Tile {
        tid,
        lq,
        scale,
        added,
        src,
        dst,
        q0,
    })
}

impl<'ctx> Tile<'ctx> {
    /// Element `i` of workspace floats `v` as dQ holds it: `scale x`, 0 for a tile nobody
    /// added to (rounded to the input type by the store's pack).
    fn scaled(&self, g: &Gpu<'ctx>, v: VectorValue<'ctx>, i: u64) -> R<FloatValue<'ctx>> {
        let x =
            g.b.build_extract_element(v, g.c32(i as i64), "")?
                .into_float_value();
        g.selectf(self.added, g.fmul(x, self.scale)?, g.cf(0.0))
    }

    /// Byte `off` of the tile's dQ slice.
    fn at(&self, g: &Gpu<'ctx>, off: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        g.gep_bytes(self.dst, off)
    }
}

/// Stores `v` at `ptr`, `align` bytes aligned.
fn store_aligned<'ctx>(
    g: &Gpu<'ctx>,
    ptr: PointerValue<'ctx>,
    v: impl BasicValue<'ctx>,
    align: u32,
) -> R<()> {
    let st = g.b.build_store(ptr, v)?;
    st.set_alignment(align)
        .map_err(|_| LlvmError::Internal("alignment"))?;
    Ok(())
}

/// Four workspace floats at `ptr` (16 bytes, aligned).
fn load4<'ctx>(g: &Gpu<'ctx>, ptr: PointerValue<'ctx>) -> R<VectorValue<'ctx>> {
    let ld = g.b.build_load(g.f32.vec_type(4), ptr, "")?;
    ld.as_instruction_value()
        .ok_or(LlvmError::Internal("load"))?
        .set_alignment(16)
        .map_err(|_| LlvmError::Internal("alignment"))?;
    Ok(ld.into_vector_value())
}

/// Spins of [`wait_for_tile`] (with a `nanosleep` of [`EARLY_SLEEP_NS`] each, about 2 s)
/// after which a conversion stops waiting for its tile's flag and waits for the whole
/// fused grid instead (`griddepcontrol.wait`), counting itself in `DqSem[tiles + 1]`:
/// the fused kernel always sets the flag, so only a tile whose last addition comes that
/// late (or a bug) takes this path, slower but with the same dQ, never a workspace read
/// before its sums (until session 16 the conversion went on without the flag: a wrong dQ
/// and no error).
const EARLY_SPINS: u32 = 1 << 24;
const EARLY_SLEEP_NS: u32 = 128;

/// [`PtxOptions::bwd_convert_early`]: thread 0 waits (acquire) until the tile's
/// semaphore has [`DQ_DONE_FLAG`] (its last adder is done) or the writers' done count
/// (`DqSem[B Hq nq]`) reaches every writer of the fused grid (nkv Hkv B CTAs, or with
/// `bwd_doc_tiles` NumDocTiles Hkv, one or two
/// writers each: then no addition is left, for tiles nobody adds to too); then the CTA's
/// barrier and each thread's `fence.acq_rel.gpu` (its workspace loads after them). After
/// [`EARLY_SPINS`] spins (at once with [`PtxOptions::bwd_convert_timeout_now`], the test
/// hook) thread 0 adds one to the fallback count `DqSem[tiles + 1]` and waits for the
/// fused grid (`griddepcontrol.wait`: its memory visible to this grid) before the barrier.
fn wait_for_tile<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    a: &Args<'_, 'ctx>,
    (tid, tile, nq): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
) -> R<()> {
    let sem =
        g.b.build_ptr_to_int(a.ptr(KernelParam::DqSem)?, g.i64, "")?;
    let batches = g.nctaid('z')?;
    let hq = a.int(KernelParam::Hq)?;
    let lkv = a.int(KernelParam::Lkv)?;
    let hkv = a.int(KernelParam::Hkv)?;
    let bc = opts.kv_block as i64;
    let nkv = g.udiv(g.add(lkv, g.c32(bc - 1))?, g.c32(bc))?;
    let writers = if opts.overlap || opts.bwd_two_writers {
        2
    } else {
        1
    };
    // (bwd_doc_tiles: the fused grid's tiles are the document tile list's entries per kv
    // head)
    let fused_tiles = if opts.bwd_doc_tiles {
        g.mul(a.int(KernelParam::NumDocTiles)?, hkv)?
    } else {
        g.mul(g.mul(nkv, hkv)?, batches)?
    };
    let want = g.mul(fused_tiles, g.c32(writers))?;
    let tiles = g.mul(g.mul(batches, hq)?, nq)?;
    let word =
        |i: IntValue<'ctx>| -> R<IntValue<'ctx>> { g.add(sem, g.mul(g.zext64(i)?, g.c64(4))?) };
    let (own, count) = (word(tile)?, word(tiles)?);
    let fallbacks = word(g.add(tiles, g.c32(1))?)?;
    g.if_then(g.icmp(IntPredicate::EQ, tid, g.c32(0))?, || {
        let spins = g.var(g.i32, g.c32(0))?;
        let head = g.block("early_wait");
        let more = g.block("early_count");
        let sleep = g.block("early_sleep");
        let timeout = g.block("early_timeout");
        let done = g.block("early_done");
        if opts.bwd_convert_timeout_now {
            g.br(timeout)?;
        } else {
            g.br(head)?;
        }
        g.b.position_at_end(head);
        let v = g.load_acquire_u32(own)?;
        let flagged = g.icmp(
            IntPredicate::NE,
            g.and(v, g.c32(DQ_DONE_FLAG as i64))?,
            g.c32(0),
        )?;
        g.cond_br(flagged, done, more)?;
        g.b.position_at_end(more);
        let n = g.load_acquire_u32(count)?;
        g.cond_br(g.icmp(IntPredicate::UGE, n, want)?, done, sleep)?;
        g.b.position_at_end(sleep);
        g.nanosleep(EARLY_SLEEP_NS)?;
        let k = g.add(g.geti(&spins)?, g.c32(1))?;
        g.set(&spins, k)?;
        g.cond_br(
            g.icmp(IntPredicate::UGE, k, g.c32(EARLY_SPINS as i64))?,
            timeout,
            head,
        )?;
        // no flag in time: counted, then the whole fused grid (as without early)
        g.b.position_at_end(timeout);
        g.release_inc(fallbacks)?;
        g.griddep_wait()?;
        g.br(done)?;
        g.b.position_at_end(done);
        Ok(())
    })?;
    g.barrier()?;
    g.fence_acq_rel_gpu()
}

/// [`PtxOptions::bwd_convert_early`]: the grid's last CTA waits for the fused grid
/// (`griddepcontrol.wait`) after its stores, so that the conversion grid completes after
/// the fused one (whose math warps may still store dK and dV when the last flag is set)
/// and work after it in the stream finds both done; one CTA, scheduled last, waits.
fn early_tail(g: &Gpu<'_>, opts: &PtxOptions) -> R<()> {
    if !convert_early(opts) {
        return Ok(());
    }
    let mut last = g.cbool(true);
    for axis in ['x', 'y', 'z'] {
        let at_end = g.icmp(
            IntPredicate::EQ,
            g.ctaid(axis)?,
            g.sub(g.nctaid(axis)?, g.c32(1))?,
        )?;
        last = g.and(last, at_end)?;
    }
    g.if_then(last, || g.griddep_wait())
}

/// The convert kernel: dQ = scale * DqAccum of one (q block, head, batch), rounded to the
/// input type; 0 where no kv block added (`Ordered`, `OrderedBulk`: DqSem = 0; `Atomic`:
/// the host zeroes DqAccum).
pub(super) fn convert_body<'ctx>(g: &Gpu<'ctx>, opts: &PtxOptions, a: &Args<'_, 'ctx>) -> R<()> {
    let (br, d) = (opts.q_block, opts.d);
    let t = tile(g, opts, a)?;
    let ngroups = d / 8;
    for k in 0..(br * d / 4) / CONVERT_THREADS {
        let idx = g.add(t.tid, g.c32((k * CONVERT_THREADS) as i64))?;
        let lane = g.and(idx, g.c32(31))?;
        let rest = g.lshr(idx, g.c32(5))?;
        let ng = g.and(rest, g.c32(ngroups as i64 - 1))?;
        let mg = g.lshr(rest, g.c32(ngroups.trailing_zeros() as i64))?;
        let v = load4(g, g.gep_bytes(t.src, g.zext64(g.mul(idx, g.c32(16))?)?)?)?;
        let r0 = g.add(g.mul(mg, g.c32(16))?, g.lshr(lane, g.c32(2))?)?;
        let colb = g.mul(
            g.add(
                g.mul(ng, g.c32(8))?,
                g.mul(g.and(lane, g.c32(3))?, g.c32(2))?,
            )?,
            g.c32(2),
        )?;
        for hr in 0..2u64 {
            let row = g.add(g.add(t.q0, r0)?, g.c32(8 * hr as i64))?;
            let (x, y) = (t.scaled(g, v, 2 * hr)?, t.scaled(g, v, 2 * hr + 1)?);
            g.if_then(g.icmp(IntPredicate::SLT, row, t.lq)?, || {
                let off = g.add(g.mul(g.zext64(row)?, g.c64(d as i64 * 2))?, g.zext64(colb)?)?;
                store_aligned(g, t.at(g, off)?, g.pack2(opts.input, x, y)?, 4)
            })?;
        }
    }
    early_tail(g, opts)?;
    g.b.build_return(None)?;
    Ok(())
}

/// The wide conversion's body (one CTA of [`CONVERT_THREADS`] per tile; the launch of
/// `convert_body`).
pub(super) fn convert_wide_body<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    a: &Args<'_, 'ctx>,
) -> R<()> {
    let br = opts.q_block;
    let d = opts.d;
    let pieces = br * d / 16;
    if !d.is_multiple_of(8) || !(d / 8).is_power_of_two() || !pieces.is_multiple_of(CONVERT_THREADS)
    {
        return Err(LlvmError::Internal("wide dQ conversion: tile shape"));
    }
    let t = tile(g, opts, a)?;
    // a tile whose rows all lie below Lq stores without a branch (its loads stay in one
    // block, ahead of the stores); the last q tile checks each row
    let whole = g.icmp(IntPredicate::ULE, g.add(t.q0, g.c32(br as i64))?, t.lq)?;
    let tail = g.block("tail");
    let done = g.block("done");
    let fast = g.block("whole");
    g.cond_br(whole, fast, tail)?;
    g.b.position_at_end(fast);
    pieces_body(g, opts, &t, false)?;
    g.br(done)?;
    g.b.position_at_end(tail);
    pieces_body(g, opts, &t, true)?;
    g.br(done)?;
    g.b.position_at_end(done);
    early_tail(g, opts)?;
    g.b.build_return(None)?;
    Ok(())
}

/// One thread's pieces: every load, then per piece its two rows' 16-byte stores (each
/// checked against Lq when `check`).
fn pieces_body<'ctx>(g: &Gpu<'ctx>, opts: &PtxOptions, t: &Tile<'ctx>, check: bool) -> R<()> {
    let (br, d) = (opts.q_block, opts.d);
    let per_thread = br * d / 16 / CONVERT_THREADS;
    let ngroups = d / 8;
    let w4 = g.i32.vec_type(4);
    // every piece's four 16-byte loads first
    let mut loaded = Vec::with_capacity(per_thread as usize);
    for k in 0..per_thread {
        let u = g.add(t.tid, g.c32((k * CONVERT_THREADS) as i64))?;
        let base = g.gep_bytes(t.src, g.zext64(g.mul(u, g.c32(64))?)?)?;
        let mut lanes = Vec::with_capacity(4);
        for j in 0..4 {
            lanes.push(load4(g, g.gep_bytes(base, g.c64(16 * j))?)?);
        }
        loaded.push((u, lanes));
    }
    for (u, lanes) in loaded {
        let qd = g.and(u, g.c32(7))?;
        let rest = g.lshr(u, g.c32(3))?;
        let ng = g.and(rest, g.c32(ngroups as i64 - 1))?;
        let mg = g.lshr(rest, g.c32(ngroups.trailing_zeros() as i64))?;
        let r0 = g.add(g.add(t.q0, g.mul(mg, g.c32(16))?)?, qd)?;
        let colb = g.zext64(g.mul(ng, g.c32(16))?)?;
        for hr in 0..2u64 {
            // row r0 + 8 hr: element 2 hr (column 2 j) and 2 hr + 1 of lane j of the quad
            let mut word = w4.get_undef();
            for (j, v) in lanes.iter().enumerate() {
                let (x, y) = (t.scaled(g, *v, 2 * hr)?, t.scaled(g, *v, 2 * hr + 1)?);
                let packed = g.pack2(opts.input, x, y)?;
                word =
                    g.b.build_insert_element(word, packed, g.c32(j as i64), "")?;
            }
            let row = g.add(r0, g.c32(8 * hr as i64))?;
            let store = || -> R<()> {
                let off = g.add(g.mul(g.zext64(row)?, g.c64(d as i64 * 2))?, colb)?;
                store_aligned(g, t.at(g, off)?, word, 16)
            };
            if check {
                g.if_then(g.icmp(IntPredicate::SLT, row, t.lq)?, store)?;
            } else {
                store()?;
            }
        }
    }
    Ok(())
}

/// The conversion of the fused kernel's q tiles of 80 (`fused::q80`): the workspace holds
/// dQᵀ's fragments (`fused::q80_slot_offset`: 512-byte fragment tiles `ng (D / 16) + mg`
/// of q group `ng` and D group `mg`, lane `l`'s 16 bytes the D rows `16 mg + l / 4`, `+ 8`
/// and q columns `8 ng + 2 (l % 4)`, `+ 1`). Piece `u = 4 tile + p` is the 8 lanes `4 j +
/// p` of a fragment tile (128 bytes): q rows `8 ng + 2 p`, `+ 1`, D columns `16 mg ..
/// 16 mg + 16`, stored as four 16-byte words (q row, D half `h`: element `2 h + e` of
/// lanes `4 j + p`, j = 0..8). Every load of the thread first; `scale x` rounded once per
/// element, 0 for a tile nobody added to (as `convert_body`).
pub(super) fn convert_t_body<'ctx>(g: &Gpu<'ctx>, opts: &PtxOptions, a: &Args<'_, 'ctx>) -> R<()> {
    let (br, d) = (opts.q_block, opts.d);
    if !br.is_multiple_of(8) || !d.is_multiple_of(16) {
        return Err(LlvmError::Internal("transposed dQ conversion: tile shape"));
    }
    let t = tile(g, opts, a)?;
    let (pieces, dgroups) = (br / 8 * (d / 16) * 4, d / 16);
    let w4 = g.i32.vec_type(4);
    let mut loaded = Vec::new();
    for k in 0..pieces.div_ceil(CONVERT_THREADS) {
        let u = g.add(t.tid, g.c32((k * CONVERT_THREADS) as i64))?;
        let valid = g.icmp(IntPredicate::ULT, u, g.c32(pieces as i64))?;
        let u = g.selecti(valid, u, g.c32(0))?;
        let (p, ft) = (g.and(u, g.c32(3))?, g.lshr(u, g.c32(2))?);
        let base = g.gep_bytes(
            t.src,
            g.zext64(g.add(g.mul(ft, g.c32(512))?, g.mul(p, g.c32(16))?)?)?,
        )?;
        let mut lanes = Vec::with_capacity(8);
        for j in 0..8 {
            lanes.push(load4(g, g.gep_bytes(base, g.c64(64 * j))?)?);
        }
        loaded.push((valid, p, ft, lanes));
    }
    for (valid, p, ft, lanes) in loaded {
        let (mg, ng) = (
            g.urem(ft, g.c32(dgroups as i64))?,
            g.udiv(ft, g.c32(dgroups as i64))?,
        );
        let r0 = g.add(g.add(t.q0, g.mul(ng, g.c32(8))?)?, g.mul(p, g.c32(2))?)?;
        for e in 0..2u64 {
            let row = g.add(r0, g.c32(e as i64))?;
            let ok = g.and(valid, g.icmp(IntPredicate::SLT, row, t.lq)?)?;
            for h in 0..2u64 {
                let el = |j: usize| t.scaled(g, lanes[j], 2 * h + e);
                let mut word = w4.get_undef();
                for m in 0..4 {
                    let packed = g.pack2(opts.input, el(2 * m)?, el(2 * m + 1)?)?;
                    word =
                        g.b.build_insert_element(word, packed, g.c32(m as i64), "")?;
                }
                let col = g.add(g.mul(mg, g.c32(16))?, g.c32(8 * h as i64))?;
                g.if_then(ok, || {
                    let off = g.add(
                        g.mul(g.zext64(row)?, g.c64(d as i64 * 2))?,
                        g.zext64(g.mul(col, g.c32(2))?)?,
                    )?;
                    store_aligned(g, t.at(g, off)?, word, 16)
                })?;
            }
        }
    }
    early_tail(g, opts)?;
    g.b.build_return(None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llvm::backward::{BackwardKind, emit_backward};
    use crate::backend::llvm::{Arch, InputType, samples};
    use crate::plan::Plan;

    /// The pieces' index arithmetic (as the kernel's): every (row, column) of the tile is
    /// stored exactly once, from the workspace float the fragment layout puts there (the
    /// per-step kernel's `idx`, lane, element).
    #[test]
    fn wide_pieces_store_every_element_once() {
        for (br, d) in [(64u32, 128u32), (64, 64), (128, 64), (128, 128)] {
            let ngroups = d / 8;
            let mut seen = vec![None; (br * d) as usize];
            for u in 0..br * d / 16 {
                let (qd, rest) = (u & 7, u >> 3);
                let (ng, mg) = (rest & (ngroups - 1), rest >> ngroups.trailing_zeros());
                for hr in 0..2 {
                    for j in 0..4 {
                        for e in 0..2 {
                            // float 4 j + 2 hr + e of the piece, stored at column 2 j + e
                            // of the row's 16-byte word
                            let float = u * 16 + 4 * j + 2 * hr + e;
                            let (row, col) = (16 * mg + qd + 8 * hr, 8 * ng + 2 * j + e);
                            let at = (row * d + col) as usize;
                            assert!(seen[at].is_none(), "{br}x{d}: ({row}, {col}) twice");
                            seen[at] = Some(float);
                        }
                    }
                }
            }
            // the per-step kernel: float 4 idx + i holds row 16 mg + lane / 4 + 8 (i / 2),
            // column 8 ng + 2 (lane % 4) + i % 2
            for idx in 0..br * d / 4 {
                let (lane, rest) = (idx & 31, idx >> 5);
                let (ng, mg) = (rest & (ngroups - 1), rest >> ngroups.trailing_zeros());
                for i in 0..4 {
                    let row = 16 * mg + lane / 4 + 8 * (i / 2);
                    let col = 8 * ng + 2 * (lane % 4) + i % 2;
                    assert_eq!(seen[(row * d + col) as usize], Some(4 * idx + i));
                }
            }
        }
    }

    /// q tiles of 80 (`convert_t_body`): every (q row, D column) of the tile is stored
    /// exactly once, from the workspace float that `fused::q80_slot_offset` gives the dQᵀ
    /// fragment element of that row and column.
    #[test]
    fn transposed_pieces_store_every_element_once() {
        use crate::backend::llvm::backward::fused::q80_slot_offset;
        let (br, d) = (80u32, 128u32);
        // the math warps' side: element i of lane l of group nt of warp w
        let mut want = std::collections::HashMap::new();
        for w in 0..d / 16 {
            for lane in 0..32 {
                for nt in 0..br / 8 {
                    for i in 0..4 {
                        let row = 16 * w + lane / 4 + 8 * (i / 2);
                        let col = 8 * nt + 2 * (lane % 4) + i % 2;
                        let float = q80_slot_offset(d, w, lane, nt) / 4 + i;
                        assert!(want.insert((col, row), float).is_none());
                    }
                }
            }
        }
        assert_eq!(want.len() as u32, br * d);
        let mut seen = std::collections::HashMap::new();
        for u in 0..br / 8 * (d / 16) * 4 {
            let (p, t) = (u & 3, u >> 2);
            let (mg, ng) = (t % (d / 16), t / (d / 16));
            for e in 0..2 {
                for h in 0..2 {
                    for j in 0..8 {
                        // lane 4 j + p's element 2 h + e at (q row, D column)
                        let float = (t * 512 + (4 * j + p) * 16) / 4 + 2 * h + e;
                        let (q, dc) = (8 * ng + 2 * p + e, 16 * mg + 8 * h + j);
                        assert!(seen.insert((q, dc), float).is_none(), "({q}, {dc}) twice");
                    }
                }
            }
        }
        assert_eq!(seen, want);
    }

    /// `ptxas -v` (sm_90a) on `ptx`, written to a temporary file named after `tag` and
    /// removed afterwards: asserts that it assembles without a warning (`what` names the
    /// kernel in the message) and returns ptxas's report (registers, spills).
    fn ptxas_verbose(ptxas: &str, tag: &str, what: &str, ptx: &str) -> String {
        let f = std::env::temp_dir().join(format!("attnc_{tag}_{}.ptx", std::process::id()));
        std::fs::write(&f, ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90a", "-v", "-o", "/dev/null"])
            .arg(&f)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&f);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what}: {err}");
        assert!(!err.contains("warning"), "{what}: {err}");
        err
    }

    /// `bwd_pdl` and `bwd_convert_early` on the runtime's bindings (causal: longest
    /// first; sliding: the warp-wide search and two writers; dense): the pre kernel lets the
    /// fused kernel start, the fused kernel lets the conversion start and waits for the
    /// pre kernel (in the writer warpgroup and the math warps), its writers flag their
    /// last additions and count themselves done; the conversion spins on its tile (its
    /// last CTA waits for the fused grid after its stores; past its spin budget, it counts
    /// itself and waits for the fused grid), or with `bwd_pdl` alone waits for the fused
    /// grid first; with the test hook `bwd_convert_timeout_now` it goes to that fallback
    /// at once (no spin left). Off: none of it. `ATTNC_PTXAS` also assembles the kernels
    /// for sm_90a (no warnings).
    #[test]
    fn chained_kernels_generate() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (p, d) in [
            (samples::causal(), 128u32),
            (samples::sliding(), 128),
            (samples::causal(), 64),
            (samples::dense(), 128),
        ] {
            let plan = Plan::new(&p);
            let base = PtxOptions::backward(Arch::Sm90, d, d, InputType::Bf16)
                .backward_for_binding(&plan, 8192);
            for (pdl, early, now) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, true, true),
            ] {
                let o = PtxOptions {
                    bwd_pdl: pdl,
                    bwd_convert_early: early,
                    bwd_convert_timeout_now: now,
                    ..base
                };
                let k: Vec<_> = [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq]
                    .into_iter()
                    .map(|kind| emit_backward(&plan, &o, kind).unwrap())
                    .collect();
                let n = |i: usize, s: &str| k[i].ptx.matches(s).count();
                let key = format!("{} D{d} pdl {pdl} early {early} now {now}", p.name);
                assert_eq!(
                    n(0, "griddepcontrol.launch_dependents"),
                    pdl as usize,
                    "{key}"
                );
                assert_eq!(
                    n(1, "griddepcontrol.launch_dependents"),
                    pdl as usize,
                    "{key}"
                );
                // the writer warpgroup's wait and the math warps'
                assert_eq!(n(1, "griddepcontrol.wait"), 2 * pdl as usize, "{key}");
                // with bwd_convert_early only the grid's last CTA waits, after its stores,
                // and a CTA past its spin budget (counted: the one add of the conversion)
                assert_eq!(
                    n(2, "griddepcontrol.wait"),
                    pdl as usize + early as usize,
                    "{key}"
                );
                assert_eq!(
                    n(2, "red.relaxed.gpu.global.add.u32"),
                    early as usize,
                    "{key}"
                );
                assert_eq!(n(2, "nanosleep"), (early && !now) as usize, "{key}");
                assert_eq!(n(0, "griddepcontrol.wait"), 0, "{key}");
                // the flagged release: `red.relaxed.gpu.global.add.u32 [..], %r` (the
                // plain ones add the immediate 1)
                let flagged = k[1]
                    .ptx
                    .lines()
                    .filter(|l| {
                        l.contains("red.relaxed.gpu.global.add.u32") && !l.ends_with(", 1;")
                    })
                    .count();
                assert_eq!(flagged > 0, early, "{key}");
                assert_eq!(
                    k[2].params.contains(&KernelParam::Lkv),
                    early,
                    "{key}: the conversion reads Lkv, Hkv for the writers' count"
                );
                if let Some(ptxas) = &ptxas {
                    for (i, kk) in k.iter().enumerate() {
                        let tag = format!("chained_{i}_{pdl}_{early}_{now}");
                        let err = ptxas_verbose(ptxas, &tag, &format!("{key} kernel {i}"), &kk.ptx);
                        if i > 0 {
                            println!("{key} kernel {i}: {err}");
                        }
                    }
                }
            }
        }
    }

    /// The wide kernel generates for the fused tiles (D128 q tiles of 64, D64 of 64 and
    /// 128; bf16, f16): 16-byte loads and stores only (no 4-byte stores), four loads per
    /// piece, on whole tiles every load before the first store; `ATTNC_PTXAS` (a ptxas path) also assembles it for sm_90a.
    #[test]
    fn wide_convert_generates() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (d, q_block, ty) in [
            (128u32, 64u32, InputType::Bf16),
            (128, 64, InputType::F16),
            (64, 64, InputType::Bf16),
            (64, 128, InputType::Bf16),
        ] {
            let o = PtxOptions {
                q_block,
                bwd_convert_wide: true,
                ..PtxOptions::backward(Arch::Sm90, d, d, ty)
            };
            assert_eq!(o.bwd_dq, BwdDq::OrderedBulk);
            let k = emit_backward(&Plan::new(&samples::causal()), &o, BackwardKind::Dq).unwrap();
            let n = |s: &str| k.ptx.matches(s).count();
            let pieces = (q_block * d / 16 / CONVERT_THREADS) as usize;
            // two copies (whole tiles, the last tile's checked rows), each with four
            // loads per piece and two 16-byte stores
            assert_eq!(n("ld.global.v4."), 8 * pieces, "D{d} q{q_block}");
            assert_eq!(n("st.global.v4.b32"), 4 * pieces, "D{d} q{q_block}");
            assert_eq!(n("st.global.b32"), 0, "D{d} q{q_block}");
            // the whole tiles' copy: every load before its first store
            let (mut run, mut longest) = (0, 0);
            for l in k.ptx.lines() {
                if l.contains("ld.global.v4.") {
                    run += 1;
                    longest = longest.max(run);
                } else if l.contains("st.global.") {
                    run = 0;
                }
            }
            assert_eq!(longest, 4 * pieces, "D{d} q{q_block}");
            let plain = PtxOptions {
                bwd_convert_wide: false,
                ..o
            };
            let old =
                emit_backward(&Plan::new(&samples::causal()), &plain, BackwardKind::Dq).unwrap();
            assert_eq!(old.params, k.params, "the same launch");
            assert_eq!((old.threads, old.smem_bytes), (k.threads, k.smem_bytes));
            if let Some(ptxas) = &ptxas {
                let tag = format!("convert_wide_{d}_{q_block}_{}", ty.name());
                let err = ptxas_verbose(ptxas, &tag, "ptxas", &k.ptx);
                println!("D{d} q{q_block} {}: {err}", ty.name());
            }
        }
    }
}
