//! Where a forward CTA works, before any schedule's first load: its kernel parameters by
//! role ([`Args`]), its place ([`place`]: thread, q block, query head, batch, GQA kv head,
//! softmax units, the Q/K/V head bases) and the runs of kv blocks of its q block
//! ([`row_runs`]: the block table's row or the closed form).
//!
//! In: the kernel function's parameters ([`KernelParam`] order) and [`Cfg`]. Out: values
//! both forward schedules (`kernel.rs`, `hopper.rs`) start from.

use super::bounds::{KvBounds, RowRuns};
use super::gpu::{Gpu, R};
use super::tile::{Cfg, Ctx};
use super::{KernelParam, LlvmError};
use crate::ir::Program;
use inkwell::IntPredicate;
use inkwell::values::{BasicValueEnum, IntValue, PointerValue};

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// The kernel's parameters by role.
pub(crate) struct Args<'a, 'ctx> {
    pub g: &'a Gpu<'ctx>,
    pub params: &'a [KernelParam],
}

impl<'ctx> Args<'_, 'ctx> {
    pub fn get(&self, want: KernelParam) -> R<BasicValueEnum<'ctx>> {
        let i = self
            .params
            .iter()
            .position(|k| *k == want)
            .ok_or(LlvmError::Internal("missing kernel param"))?;
        self.g
            .func
            .get_nth_param(i as u32)
            .ok_or(LlvmError::Internal("kernel param"))
    }
    pub fn ptr(&self, want: KernelParam) -> R<PointerValue<'ctx>> {
        Ok(self.get(want)?.into_pointer_value())
    }
    pub fn int(&self, want: KernelParam) -> R<IntValue<'ctx>> {
        Ok(self.get(want)?.into_int_value())
    }
    /// The closed form's launch values: one i64 `KvOffset` per constraint, and where the
    /// binding has a mask the i32 `KvAllPartial` flag (set by the host when the closed
    /// form does not hold for this launch).
    #[allow(clippy::type_complexity)]
    pub fn closed_form(
        &self,
        constraints: usize,
        p: &Program,
    ) -> R<(Vec<IntValue<'ctx>>, Option<IntValue<'ctx>>)> {
        let offsets = (0..constraints as u32)
            .map(|i| self.int(KernelParam::KvOffset(i)))
            .collect::<R<Vec<_>>>()?;
        let all_partial = match p.mask {
            Some(_) => Some(self.int(KernelParam::KvAllPartial)?),
            None => None,
        };
        Ok((offsets, all_partial))
    }
}

/// Where this CTA works and the heads it reads: besides [`Ctx`], the thread index, the q
/// block and the number of q blocks, `Hq`, and row 0 of its Q, K and V heads.
pub(crate) struct Place<'ctx> {
    pub tid: IntValue<'ctx>,
    pub qb: IntValue<'ctx>,
    pub nqb: IntValue<'ctx>,
    pub hq: IntValue<'ctx>,
    pub qbase: PointerValue<'ctx>,
    pub kbase: PointerValue<'ctx>,
    pub vbase: PointerValue<'ctx>,
}

/// The CTA's place: q block (heavy, late ones first for causal masks), query head, batch,
/// the kv head of its GQA group, and the softmax units ([`Ctx::c2`]).
pub(crate) fn place<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    a: &Args<'_, 'ctx>,
) -> R<(Ctx<'ctx>, Place<'ctx>)> {
    place_tile(g, c, p, a, None)
}

/// The place of tile `tile` of a persistent CTA (`Some`: the linear tile index, in
/// `0 .. NumQBlocks x Hq x B`, ordered like the grid of [`place`]), or of this CTA of a
/// grid with one CTA per tile (`None`).
pub(crate) fn place_tile<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    a: &Args<'_, 'ctx>,
    tile: Option<IntValue<'ctx>>,
) -> R<(Ctx<'ctx>, Place<'ctx>)> {
    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let (lq, lkv, hq, hkv, nqb) = (
        a.int(KernelParam::Lq)?,
        a.int(KernelParam::Lkv)?,
        a.int(KernelParam::Hq)?,
        a.int(KernelParam::Hkv)?,
        a.int(KernelParam::NumQBlocks)?,
    );
    // (`Cfg::doc_tiles`: entry `r` of the tile list, `(b, row0, rows, qi)`, and query head
    // `h`: `(ctaid.x, ctaid.y)`, or of a persistent CTA's tile `t`, `(t % n, t / n)` with
    // `n = NumQBlocks` the list's length: head by head as the grid's CTAs start, so that
    // the q tiles of one document and head, which read the same K/V, run together (heads
    // inner, the same document's tiles of one head a list apart: each read K/V from
    // HBM again, 0.76x one CTA a tile at B2 H16 L8192 D128 on an H100))
    let doc = match (tile, c.doc_tiles) {
        (_, false) => None,
        (None, true) => Some((g.ctaid('x')?, g.ctaid('y')?)),
        (Some(t), true) => Some((g.urem(t, nqb)?, g.udiv(t, nqb)?)),
    };
    let doc = match doc {
        Some((r, h)) => {
            let list = a.ptr(KernelParam::DocTiles)?;
            let at = g.mul(r, g.c32(4))?;
            let field = |k: i64| g.load_i32(list, g.zext64(g.add(at, g.c32(k))?)?);
            Some(([field(0)?, field(1)?, field(2)?, field(3)?], h))
        }
        None => None,
    };
    let (qb, h, b) = match (tile, c.lpt_group) {
        _ if let Some(([b, _, _, qi], h)) = doc => (qi, h, b),
        // heavy (late, for causal masks) q blocks first within each (head, batch)
        (None, 0) => (
            g.sub(g.sub(nqb, g.c32(1))?, g.ctaid('x')?)?,
            g.ctaid('y')?,
            g.ctaid('z')?,
        ),
        (None, group) => {
            let batches = g.nctaid('z')?;
            let linear = g.add(
                g.ctaid('x')?,
                g.mul(nqb, g.add(g.ctaid('y')?, g.mul(hq, g.ctaid('z')?)?)?)?,
            )?;
            lpt_order(g, group, nqb, hq, batches, linear)?
        }
        // the same orders over the linear tile index
        (Some(t), 0) => {
            let slice = g.udiv(t, nqb)?;
            (
                g.sub(g.sub(nqb, g.c32(1))?, g.urem(t, nqb)?)?,
                g.urem(slice, hq)?,
                g.udiv(slice, hq)?,
            )
        }
        (Some(t), group) => {
            let batches = a.int(KernelParam::Batch)?;
            lpt_order(g, group, nqb, hq, batches, t)?
        }
    };
    let hk = g.udiv(h, g.udiv(hq, hkv)?)?;
    // (`Cfg::device_lens`: this sequence's keys, its length clamped into `0..=Lkv`, and
    // its first row's position)
    let (lkv_tile, q_shift) = match c.device_lens {
        Some(_) => {
            let n = sequence_len(g, a.ptr(KernelParam::SeqLens)?, g.zext64(b)?, lkv)?;
            (n, Some(g.sub(n, lq)?))
        }
        None => (lkv, None),
    };
    let mut q0 = g.mul(qb, g.c32(c.qb as i64))?;
    // (`Cfg::doc_tiles`: the document's rows, its keys from its first row)
    let (mut row_end, mut lkv_tile, mut kv_origin) = (lq, lkv_tile, None);
    if let Some(([_, row0, rows, _], _)) = doc {
        q0 = g.add(row0, q0)?;
        row_end = g.add(row0, rows)?;
        lkv_tile = row_end;
        kv_origin = Some(row0);
    }
    if c.q_from_end {
        // the q blocks end at Lq: shifted down by pad = nqb qb - Lq (the first may start
        // below row 0)
        let pad = g.sub(g.mul(nqb, g.c32(c.qb as i64))?, lq)?;
        q0 = g.sub(q0, pad)?;
    }
    let scale = a.get(KernelParam::Scale)?.into_float_value();
    let raw = p.score.is_none();
    let c2 = if raw {
        let a = g.fintr("llvm.fabs.f32", scale)?;
        g.fmax(g.fmul(a, g.cf(LOG2E))?, g.cf(1e-30))?
    } else {
        g.cf(1.0)
    };
    let head_base = |base: PointerValue<'ctx>,
                     heads: IntValue<'ctx>,
                     head: IntValue<'ctx>,
                     len: IntValue<'ctx>,
                     dim: u32| {
        let slice = g.zext64(g.add(g.mul(b, heads)?, head)?)?;
        let off = g.mul(g.mul(slice, g.zext64(len)?)?, g.c64(dim as i64 * 2))?;
        g.gep_bytes(base, off)
    };
    let at = Place {
        tid,
        qb,
        nqb,
        hq,
        qbase: head_base(a.ptr(KernelParam::Q)?, hq, h, lq, c.d)?,
        kbase: head_base(a.ptr(KernelParam::K)?, hkv, hk, lkv, c.d)?,
        vbase: head_base(a.ptr(KernelParam::V)?, hkv, hk, lkv, c.dv)?,
    };
    let cx = Ctx {
        warp,
        lane,
        b,
        h,
        q0,
        lq,
        row_end,
        kv_origin,
        lkv: lkv_tile,
        q_shift,
        scale,
        raw,
        c2,
    };
    Ok((cx, at))
}

/// The runs of kv blocks of this CTA's q block: the row of the block table, or the closed
/// form computed here from the kernel's i64 offsets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_runs<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    kv: &KvBounds,
    a: &Args<'_, 'ctx>,
    cx: &Ctx<'ctx>,
    qb: IntValue<'ctx>,
    nqb: IntValue<'ctx>,
) -> R<RowRuns<'ctx>> {
    match kv {
        KvBounds::Table => {
            let map = g.add(
                g.mul(cx.b, a.int(KernelParam::MapBStride)?)?,
                g.mul(cx.h, a.int(KernelParam::MapHStride)?)?,
            )?;
            let row = g.add(g.mul(map, nqb)?, qb)?;
            RowRuns::table(
                g,
                a.ptr(KernelParam::RowStart)?,
                a.ptr(KernelParam::Runs)?,
                row,
            )
        }
        KvBounds::ClosedForm(cf) => {
            let (mut offsets, all_partial) = a.closed_form(cf.constraints.len(), p)?;
            // (`Cfg::device_lens`: the offsets at `__q0 = 0`, plus each constraint's
            // coefficient of it times this tile's value)
            if let (Some(pi), Some(shift)) = (c.device_lens, cx.q_shift) {
                shift_offsets(g, cf, pi, shift, &mut offsets)?;
            }
            // (`Cfg::doc_tiles`: keys counted from the document's first row `o`: each
            // constraint `a_q q + a_kv kv + k >= 0` at `kv = o + kv'` has offset
            // `k + a_kv o`, and the document's keys are `0..lkv - o`)
            let mut lkv = cx.lkv;
            if let Some(origin) = cx.kv_origin {
                let o = g.sext64(origin)?;
                for (k, con) in offsets.iter_mut().zip(&cf.constraints) {
                    if con.expr.kv != 0 {
                        *k = g.add(*k, g.mul(o, g.c64(con.expr.kv))?)?;
                    }
                }
                lkv = g.sub(cx.lkv, origin)?;
            }
            RowRuns::closed_form(
                g,
                &kv.coefficients(),
                &offsets,
                all_partial,
                cx.q0,
                c.q_from_end,
                c.qb,
                cx.row_end,
                lkv,
                c.kvb,
            )
        }
    }
}

/// A sequence's keys: `lens[index]` (a `seq_lens` entry) clamped into `0..=lkv` (the
/// cache's capacity; a length past it counts as the capacity, a negative one as 0).
pub(crate) fn sequence_len<'ctx>(
    g: &Gpu<'ctx>,
    lens: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    lkv: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    let n = g.load_i32(lens, index)?;
    let n = g.iintr2("llvm.smax.i32", n, g.c32(0))?;
    g.iintr2("llvm.smin.i32", n, lkv)
}

/// Closed-form kv offsets made by the host at the value 0 of param `pi` (the position
/// offset of `PtxOptions::device_lens`) moved to its value `shift` (i32): each
/// constraint's offset plus its coefficient of the param times `shift` (i64).
pub(crate) fn shift_offsets<'ctx>(
    g: &Gpu<'ctx>,
    cf: &crate::analysis::linear::ClosedForm,
    pi: u32,
    shift: IntValue<'ctx>,
    offsets: &mut [IntValue<'ctx>],
) -> R<()> {
    let shift = g.sext64(shift)?;
    for (k, con) in offsets.iter_mut().zip(&cf.constraints) {
        let coef: i64 = con
            .expr
            .params
            .iter()
            .filter(|(p, _)| *p == pi)
            .map(|(_, c)| *c)
            .sum();
        if coef != 0 {
            *k = g.add(*k, g.mul(shift, g.c64(coef))?)?;
        }
    }
    Ok(())
}

/// The (q block, head, batch) of this CTA in longest-first order over groups of `group`
/// (head, batch) slices: the grid's linear index walks the slices of a group for the
/// heaviest q block, then the next lighter one, and so on, before the next group (so the
/// last CTAs of the launch are light ones, and a group's K/V stays in L2). A bijection
/// of the grid (`NumQBlocks` x `Hq` x `B`, any `group`; the last group may be partial),
/// from the linear index `linear` of the CTA (or of a persistent CTA's tile).
fn lpt_order<'ctx>(
    g: &Gpu<'ctx>,
    group: u32,
    nqb: IntValue<'ctx>,
    hq: IntValue<'ctx>,
    batches: IntValue<'ctx>,
    linear: IntValue<'ctx>,
) -> R<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>)> {
    let slices = g.mul(hq, batches)?;
    let full = g.c32(group as i64);
    let per_group = g.mul(nqb, full)?;
    let first = g.mul(g.udiv(linear, per_group)?, full)?;
    let within = g.urem(linear, per_group)?;
    let left = g.sub(slices, first)?;
    let size = g.selecti(g.icmp(IntPredicate::ULT, left, full)?, left, full)?;
    let rank = g.udiv(within, size)?;
    let slice = g.add(first, g.urem(within, size)?)?;
    let qb = g.sub(g.sub(nqb, g.c32(1))?, rank)?;
    Ok((qb, g.urem(slice, hq)?, g.udiv(slice, hq)?))
}

/// Marks kernel parameter `i` of `func` as a TMA tensor map: 128 bytes passed by value
/// (`byval [128 x i8]`, 64-byte aligned) and `nvvm.grid_constant`, so that the kernel
/// reads it where the launch put it (the address `cp.async.bulk.tensor` takes).
pub(crate) fn tensor_map_param<'ctx>(
    ctx: &'ctx inkwell::context::Context,
    func: inkwell::values::FunctionValue<'ctx>,
    i: u32,
) {
    use inkwell::attributes::{Attribute, AttributeLoc};
    use inkwell::types::AnyType;
    let map_ty = ctx.i8_type().array_type(128).as_any_type_enum();
    let at = AttributeLoc::Param(i);
    func.add_attribute(
        at,
        ctx.create_type_attribute(Attribute::get_named_enum_kind_id("byval"), map_ty),
    );
    func.add_attribute(
        at,
        ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("align"), 64),
    );
    func.add_attribute(at, ctx.create_string_attribute("nvvm.grid_constant", ""));
}
