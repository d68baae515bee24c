//! Where the kernel's kv blocks come from: a closed form computed in the kernel, or the
//! block table (built by the host, or on the GPU for masks over captured tensors).
//!
//! In: the [`KvBounds`] of the plan (`Plan::kv_bounds`); while building the kernel,
//! its q block (`q0`, `q1`), `Lkv` and the per-constraint offsets passed as kernel params.
//! Out: [`KvBounds`] (recorded in the `PtxKernel`, so that the runtime knows whether to
//! build block maps), and per CTA the runs of kv blocks the loop visits (`RowRuns`): up
//! to three runs (partial, full, partial) in registers for a closed form, or the row of the
//! block table (`RowStart` (begin, end) pairs + `Runs`). Both sources give `beg..end` run indices and
//! `RowRuns::load`, so the kernel's loop is the same for both.
//!
//! The closed form (`analysis::linear`) is a conjunction of `a_q*q + a_kv*kv + k >= 0`:
//! the coefficients are constants of the program and are compiled in; the offsets `k`
//! depend on runtime params and arrive as i64 kernel params ([`KernelParam::KvOffset`]),
//! computed by the host with [`kernel_offsets`]. The per-q-block range is the arithmetic
//! of `ClosedForm::row`, written once (`row`) against `Arith`: emitted as LLVM IR in
//! the kernel and run on i64 by [`row_range`], which tests compare with `ClosedForm::row`.
//!
//! Widths: lengths are below 2^31 and coefficients at most [`MAX_COEF`] = 2^30 in
//! magnitude (larger ones take the table path), so `|a_q q| < 2^61`; offsets are clamped
//! to `±2^62` (a clamped constraint has the same sign at every in-range (q, kv), so the
//! same ranges), so every intermediate stays below 2^63 and i64 never wraps.

use super::gpu::{Gpu, R};
use super::{KernelParam, LlvmError};
use crate::analysis::blockmap::Run;
use crate::analysis::linear::{Bound, RowRange};
use inkwell::IntPredicate;
use inkwell::values::{IntValue, PointerValue};

pub use crate::plan::{KvBounds, MAX_COEF};

/// Offsets are clamped to `-K_CLAMP..=K_CLAMP` before they reach the kernel.
pub const K_CLAMP: i128 = 1 << 62;

/// The kernel params a kv source adds to an attention kernel, in launch order.
pub(crate) fn kv_params(kv: &KvBounds, has_mask: bool) -> Vec<KernelParam> {
    match kv {
        KvBounds::Table => vec![KernelParam::RowStart, KernelParam::Runs],
        KvBounds::ClosedForm(cf) => {
            let mut v: Vec<KernelParam> = (0..cf.constraints.len() as u32)
                .map(KernelParam::KvOffset)
                .collect();
            if has_mask {
                v.push(KernelParam::KvAllPartial);
            }
            v
        }
    }
}

/// The i64 kernel params of a closed-form kernel: each bound's offset, clamped to
/// `±K_CLAMP` (which changes no range, see the module header).
pub fn kernel_offsets(bounds: &[Bound]) -> Vec<i64> {
    bounds
        .iter()
        .map(|b| b.k.clamp(-K_CLAMP, K_CLAMP) as i64)
        .collect()
}

/// Integer arithmetic [`row`] (and `uniform`'s interval rules) are written against: LLVM
/// IR (i64 values, i1 conditions) in the kernel, plain wrapping i64 on the host.
pub(crate) trait Arith {
    type I: Copy;
    type B: Copy;
    fn c(&self, x: i64) -> Self::I;
    fn add(&self, a: Self::I, b: Self::I) -> R<Self::I>;
    fn sub(&self, a: Self::I, b: Self::I) -> R<Self::I>;
    fn mul(&self, a: Self::I, b: Self::I) -> R<Self::I>;
    /// Truncating division by a non-zero constant.
    fn sdiv(&self, a: Self::I, d: i64) -> R<Self::I>;
    fn slt(&self, a: Self::I, b: Self::I) -> R<Self::B>;
    fn eq(&self, a: Self::I, b: Self::I) -> R<Self::B>;
    fn or(&self, a: Self::B, b: Self::B) -> R<Self::B>;
    fn not(&self, a: Self::B) -> R<Self::B>;
    fn f(&self) -> Self::B;
    fn t(&self) -> Self::B;
    fn sel(&self, c: Self::B, a: Self::I, b: Self::I) -> R<Self::I>;

    fn and(&self, a: Self::B, b: Self::B) -> R<Self::B> {
        self.not(self.or(self.not(a)?, self.not(b)?)?)
    }
    fn max(&self, a: Self::I, b: Self::I) -> R<Self::I> {
        self.sel(self.slt(a, b)?, b, a)
    }
    fn min(&self, a: Self::I, b: Self::I) -> R<Self::I> {
        self.sel(self.slt(b, a)?, b, a)
    }
    /// `floor(x / d)` for a constant `d > 0`.
    fn floor_div(&self, x: Self::I, d: i64) -> R<Self::I> {
        if d == 1 {
            return Ok(x);
        }
        let t = self.sdiv(x, d)?;
        let r = self.sub(x, self.mul(t, self.c(d))?)?;
        self.sel(self.slt(r, self.c(0))?, self.sub(t, self.c(1))?, t)
    }
    /// `ceil(x / d)` for a constant `d > 0`.
    fn ceil_div(&self, x: Self::I, d: i64) -> R<Self::I> {
        let neg = self.sub(self.c(0), x)?;
        self.sub(self.c(0), self.floor_div(neg, d)?)
    }
}

/// `ClosedForm::row` on i64: `[first, end, full_first, full_end]` of the q block of rows
/// `q0..=q1` (`q1 < Lq`), for constraints `coefs[i].0 q + coefs[i].1 kv + ks[i] >= 0`.
pub(crate) fn row<A: Arith>(
    a: &A,
    coefs: &[(i64, i64)],
    ks: &[A::I],
    q0: A::I,
    q1: A::I,
    lkv: A::I,
    kv_block: i64,
) -> R<[A::I; 4]> {
    let zero = a.c(0);
    // element ranges: non-empty [ne_lo, ne_hi], full [f_lo, f_hi]
    let last = a.sub(lkv, a.c(1))?;
    let (mut ne_lo, mut ne_hi, mut f_lo, mut f_hi) = (zero, last, zero, last);
    let (mut dead, mut nofull) = (a.f(), a.f());
    for (&(aq, akv), &k) in coefs.iter().zip(ks) {
        // the q end that minimizes / maximizes a_q q
        let (qlo, qhi) = if aq >= 0 { (q0, q1) } else { (q1, q0) };
        let vmin = a.add(a.mul(a.c(aq), qlo)?, k)?;
        let vmax = a.add(a.mul(a.c(aq), qhi)?, k)?;
        if akv == 0 {
            dead = a.or(dead, a.slt(vmax, zero)?)?;
            nofull = a.or(nofull, a.slt(vmin, zero)?)?;
        } else if akv > 0 {
            // kv >= ceil(-(a_q q + k) / a_kv)
            let neg = |v| a.sub(zero, v);
            ne_lo = a.max(ne_lo, a.ceil_div(neg(vmax)?, akv)?)?;
            f_lo = a.max(f_lo, a.ceil_div(neg(vmin)?, akv)?)?;
        } else {
            // kv <= floor((a_q q + k) / -a_kv)
            ne_hi = a.min(ne_hi, a.floor_div(vmax, -akv)?)?;
            f_hi = a.min(f_hi, a.floor_div(vmin, -akv)?)?;
        }
    }
    let empty = a.or(dead, a.slt(ne_hi, ne_lo)?)?;
    let first = a.floor_div(ne_lo, kv_block)?;
    let end = a.add(a.floor_div(ne_hi, kv_block)?, a.c(1))?;
    let nkv = a.floor_div(a.add(lkv, a.c(kv_block - 1))?, kv_block)?;
    let ff = a.ceil_div(f_lo, kv_block)?;
    let fe = a.sel(
        a.eq(f_hi, last)?,
        nkv,
        a.floor_div(a.add(f_hi, a.c(1))?, kv_block)?,
    )?;
    let no_full = a.or(a.or(nofull, a.slt(f_hi, f_lo)?)?, a.not(a.slt(ff, fe)?)?)?;
    let full_first = a.sel(no_full, first, ff)?;
    let full_end = a.sel(no_full, first, fe)?;
    Ok([
        a.sel(empty, zero, first)?,
        a.sel(empty, zero, end)?,
        a.sel(empty, zero, full_first)?,
        a.sel(empty, zero, full_end)?,
    ])
}

/// Plain i64 arithmetic (wrapping, as LLVM's `add`/`sub`/`mul` without flags).
pub(crate) struct Host;

impl Arith for Host {
    type I = i64;
    type B = bool;
    fn c(&self, x: i64) -> i64 {
        x
    }
    fn add(&self, a: i64, b: i64) -> R<i64> {
        Ok(a.wrapping_add(b))
    }
    fn sub(&self, a: i64, b: i64) -> R<i64> {
        Ok(a.wrapping_sub(b))
    }
    fn mul(&self, a: i64, b: i64) -> R<i64> {
        Ok(a.wrapping_mul(b))
    }
    fn sdiv(&self, a: i64, d: i64) -> R<i64> {
        Ok(a.wrapping_div(d))
    }
    fn slt(&self, a: i64, b: i64) -> R<bool> {
        Ok(a < b)
    }
    fn eq(&self, a: i64, b: i64) -> R<bool> {
        Ok(a == b)
    }
    fn or(&self, a: bool, b: bool) -> R<bool> {
        Ok(a || b)
    }
    fn not(&self, a: bool) -> R<bool> {
        Ok(!a)
    }
    fn f(&self) -> bool {
        false
    }
    fn t(&self) -> bool {
        true
    }
    fn sel(&self, c: bool, a: i64, b: i64) -> R<i64> {
        Ok(if c { a } else { b })
    }
}

/// The kernel's per-q-block range, computed on the host with the kernel's arithmetic
/// (i64, clamped offsets): equal to `ClosedForm::row` for `q0 <= q1 < 2^31`,
/// `Lkv < 2^31`, coefficients up to [`MAX_COEF`] and any offsets.
pub fn row_range(
    coefs: &[(i64, i64)],
    bounds: &[Bound],
    q0: i64,
    q1: i64,
    lkv: usize,
    kv_block: usize,
) -> RowRange {
    let ks = kernel_offsets(bounds);
    let r = row(&Host, coefs, &ks, q0, q1, lkv as i64, kv_block as i64).unwrap_or([0, 0, 0, 0]);
    RowRange {
        first: r[0] as usize,
        end: r[1] as usize,
        full_first: r[2] as usize,
        full_end: r[3] as usize,
    }
}

/// LLVM IR arithmetic on i64 values.
pub(crate) struct Ir<'a, 'ctx>(pub &'a Gpu<'ctx>);

impl<'ctx> Arith for Ir<'_, 'ctx> {
    type I = IntValue<'ctx>;
    type B = IntValue<'ctx>;
    fn c(&self, x: i64) -> IntValue<'ctx> {
        self.0.c64(x)
    }
    fn add(&self, a: Self::I, b: Self::I) -> R<Self::I> {
        self.0.add(a, b)
    }
    fn sub(&self, a: Self::I, b: Self::I) -> R<Self::I> {
        self.0.sub(a, b)
    }
    fn mul(&self, a: Self::I, b: Self::I) -> R<Self::I> {
        self.0.mul(a, b)
    }
    fn sdiv(&self, a: Self::I, d: i64) -> R<Self::I> {
        Ok(self.0.b.build_int_signed_div(a, self.0.c64(d), "")?)
    }
    fn slt(&self, a: Self::I, b: Self::I) -> R<Self::B> {
        self.0.icmp(IntPredicate::SLT, a, b)
    }
    fn eq(&self, a: Self::I, b: Self::I) -> R<Self::B> {
        self.0.icmp(IntPredicate::EQ, a, b)
    }
    fn or(&self, a: Self::B, b: Self::B) -> R<Self::B> {
        self.0.or(a, b)
    }
    fn not(&self, a: Self::B) -> R<Self::B> {
        self.0.xor(a, self.0.cbool(true))
    }
    fn f(&self) -> Self::B {
        self.0.cbool(false)
    }
    fn t(&self) -> Self::B {
        self.0.cbool(true)
    }
    fn sel(&self, c: Self::B, a: Self::I, b: Self::I) -> R<Self::I> {
        self.0.selecti(c, a, b)
    }
}

/// The q rows `[lo, hi]` (empty when `lo > hi`) of kv position `kv` where every
/// constraint `coefs[i].0 q + coefs[i].1 kv + ks[i] >= 0` holds, within `0..lq`: per
/// constraint `c = a_kv kv + k`, `a_q > 0` bounds q below by `ceil(-c / a_q)`, `a_q < 0`
/// above by `floor(c / -a_q)`, `a_q = 0` keeps every q or none (`c < 0`). The mask of a
/// closed form on one kv row of a fragment (`PtxOptions::bwd_band_keep`); the widths of
/// the module header (i64, no wrap).
pub(crate) fn q_interval<A: Arith>(
    a: &A,
    coefs: &[(i64, i64)],
    ks: &[A::I],
    kv: A::I,
    lq: A::I,
) -> R<[A::I; 2]> {
    let (mut lo, mut hi) = (a.c(0), a.sub(lq, a.c(1))?);
    for (&(aq, akv), &k) in coefs.iter().zip(ks) {
        let c = a.add(a.mul(a.c(akv), kv)?, k)?;
        if aq > 0 {
            lo = a.max(lo, a.ceil_div(a.sub(a.c(0), c)?, aq)?)?;
        } else if aq < 0 {
            hi = a.min(hi, a.floor_div(c, -aq)?)?;
        } else {
            hi = a.sel(a.slt(c, a.c(0))?, a.c(-1), hi)?;
        }
    }
    Ok([lo, hi])
}

/// [`q_interval`] in the kernel (i64 values: `kv`, `lq` and the kernel's `offsets`).
pub(crate) fn q_interval_ir<'ctx>(
    g: &Gpu<'ctx>,
    coefs: &[(i64, i64)],
    offsets: &[IntValue<'ctx>],
    kv: IntValue<'ctx>,
    lq: IntValue<'ctx>,
) -> R<[IntValue<'ctx>; 2]> {
    q_interval(&Ir(g), coefs, offsets, kv, lq)
}

/// `[first, end, full_first, full_end]` (i32) of the q block of rows
/// `q0..min(q0 + q_block, lq)`: [`row`] on the kernel's i64 `offsets`; with `all_partial`
/// non-zero, every kv block partial (`[0, nkv, 0, 0]`). What [`RowRuns::closed_form`]
/// makes runs of, and what the block-table kernel skips tiles outside of.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_range<'ctx>(
    g: &Gpu<'ctx>,
    coefs: &[(i64, i64)],
    offsets: &[IntValue<'ctx>],
    all_partial: Option<IntValue<'ctx>>,
    q0: IntValue<'ctx>,
    q_block: u32,
    lq: IntValue<'ctx>,
    lkv: IntValue<'ctx>,
    kv_block: u32,
) -> R<[IntValue<'ctx>; 4]> {
    let a = Ir(g);
    let q0_64 = g.sext64(q0)?;
    let q_end = a.min(a.add(q0_64, g.c64(q_block as i64))?, g.sext64(lq)?)?;
    block_range_rows(g, coefs, offsets, all_partial, q0_64, q_end, lkv, kv_block)
}

/// [`block_range`] of the rows `q0..q_end` (i64, `q0 < q_end`).
#[allow(clippy::too_many_arguments)]
fn block_range_rows<'ctx>(
    g: &Gpu<'ctx>,
    coefs: &[(i64, i64)],
    offsets: &[IntValue<'ctx>],
    all_partial: Option<IntValue<'ctx>>,
    q0_64: IntValue<'ctx>,
    q_end: IntValue<'ctx>,
    lkv: IntValue<'ctx>,
    kv_block: u32,
) -> R<[IntValue<'ctx>; 4]> {
    let a = Ir(g);
    let q1 = a.sub(q_end, g.c64(1))?;
    let lkv64 = g.sext64(lkv)?;
    let r = row(&a, coefs, offsets, q0_64, q1, lkv64, kv_block as i64)?;
    let t = |x: IntValue<'ctx>| -> R<IntValue<'ctx>> { Ok(g.b.build_int_truncate(x, g.i32, "")?) };
    let (mut first, mut end, mut ff, mut fe) = (t(r[0])?, t(r[1])?, t(r[2])?, t(r[3])?);
    if let Some(flag) = all_partial {
        let all = g.icmp(IntPredicate::NE, flag, g.c32(0))?;
        let nkv = t(a.floor_div(a.add(lkv64, g.c64(kv_block as i64 - 1))?, kv_block as i64)?)?;
        first = g.selecti(all, g.c32(0), first)?;
        end = g.selecti(all, nkv, end)?;
        ff = g.selecti(all, g.c32(0), ff)?;
        fe = g.selecti(all, g.c32(0), fe)?;
    }
    Ok([first, end, ff, fe])
}

/// `(first, end)` (i64) of the key positions `0..lkv` that rows `q0..=q1` can reach
/// under the constraints (`coefs`, i64 `offsets`): [`row`] with one-element blocks,
/// `(0, 0)` when none. The decode-ranges kernel (`decode_ranges.rs`) bounds each
/// sequence's key loop by it.
pub(crate) fn element_range<'ctx>(
    g: &Gpu<'ctx>,
    coefs: &[(i64, i64)],
    offsets: &[IntValue<'ctx>],
    q0: IntValue<'ctx>,
    q1: IntValue<'ctx>,
    lkv: IntValue<'ctx>,
) -> R<[IntValue<'ctx>; 2]> {
    let r = row(&Ir(g), coefs, offsets, q0, q1, lkv, 1)?;
    Ok([r[0], r[1]])
}

/// Where the runs of one q block's row are read from.
pub(crate) enum RunSource<'ctx> {
    /// `u32` triples (start, end, full) in global memory (the `Runs` param).
    Table(PointerValue<'ctx>),
    /// Three runs in registers: (first, full_first, 0), (full_first, full_end, 1),
    /// (full_end, end, 0); without a full run the first is (first, end, 0).
    Regs([[IntValue<'ctx>; 3]; 3]),
}

/// The runs `beg..end` of this CTA's q block (never an empty run).
pub(crate) struct RowRuns<'ctx> {
    pub beg: IntValue<'ctx>,
    pub end: IntValue<'ctx>,
    pub src: RunSource<'ctx>,
}

impl<'ctx> RowRuns<'ctx> {
    /// The table's row `row`: runs `Runs[RowStart[2 row] .. RowStart[2 row + 1]]`.
    pub fn table(
        g: &Gpu<'ctx>,
        row_start: PointerValue<'ctx>,
        runs: PointerValue<'ctx>,
        row: IntValue<'ctx>,
    ) -> R<Self> {
        // one (begin, end) pair per row (`BlockMaps::flatten`, or the GPU table builder)
        let at = g.mul(row, g.c32(2))?;
        Ok(RowRuns {
            beg: g.load_i32(row_start, g.zext64(at)?)?,
            end: g.load_i32(row_start, g.zext64(g.add(at, g.c32(1))?)?)?,
            src: RunSource::Table(runs),
        })
    }

    /// The runs of the q block of rows `q0..min(q0 + q_block, lq)` from the closed form's
    /// `coefs` and the i64 `offsets` (kernel params); with `all_partial` (an i32 param,
    /// non-zero when the host cannot trust the closed form for this launch) one partial
    /// run over every kv block instead. `from_zero`: `q0` may be negative (q blocks
    /// from the end, `Cfg::q_from_end`) and only the rows from 0 count.
    #[allow(clippy::too_many_arguments)]
    pub fn closed_form(
        g: &Gpu<'ctx>,
        coefs: &[(i64, i64)],
        offsets: &[IntValue<'ctx>],
        all_partial: Option<IntValue<'ctx>>,
        q0: IntValue<'ctx>,
        from_zero: bool,
        q_block: u32,
        lq: IntValue<'ctx>,
        lkv: IntValue<'ctx>,
        kv_block: u32,
    ) -> R<Self> {
        let a = Ir(g);
        let q0_64 = g.sext64(q0)?;
        let q_end = a.min(a.add(q0_64, g.c64(q_block as i64))?, g.sext64(lq)?)?;
        let q0_64 = if from_zero {
            a.max(q0_64, g.c64(0))?
        } else {
            q0_64
        };
        let [first, end, ff, fe] =
            block_range_rows(g, coefs, offsets, all_partial, q0_64, q_end, lkv, kv_block)?;
        let lt = |x, y| g.icmp(IntPredicate::SLT, x, y);
        let has_full = lt(ff, fe)?;
        let (zero, one) = (g.c32(0), g.c32(1));
        let run0 = [first, g.selecti(has_full, ff, end)?, zero];
        let run1 = [ff, fe, one];
        let run2 = [fe, end, zero];
        // skip an empty leading or trailing partial run
        let beg = g.selecti(
            g.and(has_full, g.xor(lt(first, ff)?, g.cbool(true))?)?,
            one,
            zero,
        )?;
        let end_full = g.selecti(lt(fe, end)?, g.c32(3), g.c32(2))?;
        let end_part = g.selecti(lt(first, end)?, one, zero)?;
        Ok(RowRuns {
            beg,
            end: g.selecti(has_full, end_full, end_part)?,
            src: RunSource::Regs([run0, run1, run2]),
        })
    }

    /// The kv blocks `first..end` that these runs cover (empty when `first >= end`): the
    /// start of the first run and the end of the last, which a closed form's runs in
    /// registers always hold (`None` for a block table's).
    pub fn extent(&self) -> Option<(IntValue<'ctx>, IntValue<'ctx>)> {
        match &self.src {
            RunSource::Regs(runs) => Some((runs[0][0], runs[2][1])),
            RunSource::Table(_) => None,
        }
    }

    /// These runs restricted to kv blocks `lo..hi` (`PtxOptions::tail_split`'s pieces):
    /// each run clamped into the range, `beg..end` narrowed to the runs left non-empty
    /// (empty when none is). Clamping runs that follow each other leaves empty runs only
    /// at the ends, so the runs between stay non-empty as the cursor needs. A closed
    /// form's runs only (in registers).
    pub fn clamp(&self, g: &Gpu<'ctx>, lo: IntValue<'ctx>, hi: IntValue<'ctx>) -> R<Self> {
        let RunSource::Regs(runs) = &self.src else {
            return Err(LlvmError::Internal("clamped runs of a block table"));
        };
        let cl = |x: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            g.iintr2("llvm.smin.i32", g.iintr2("llvm.smax.i32", x, lo)?, hi)
        };
        let mut out = *runs;
        let mut kept = Vec::with_capacity(3);
        for (r, run) in runs.iter().enumerate() {
            let (s, e) = (cl(run[0])?, cl(run[1])?);
            out[r] = [s, e, run[2]];
            let rc = g.c32(r as i64);
            let inside = g.and(
                g.icmp(IntPredicate::ULE, self.beg, rc)?,
                g.icmp(IntPredicate::ULT, rc, self.end)?,
            )?;
            kept.push(g.and(inside, g.icmp(IntPredicate::SLT, s, e)?)?);
        }
        let (zero, one, two) = (g.c32(0), g.c32(1), g.c32(2));
        let beg = g.selecti(kept[0], zero, g.selecti(kept[1], one, two)?)?;
        let end = g.selecti(
            kept[2],
            g.c32(3),
            g.selecti(kept[1], two, g.selecti(kept[0], one, zero)?)?,
        )?;
        Ok(RowRuns {
            beg,
            end,
            src: RunSource::Regs(out),
        })
    }

    /// (start, end, full) of run `r` (`beg <= r < end`).
    pub fn load(
        &self,
        g: &Gpu<'ctx>,
        r: IntValue<'ctx>,
    ) -> R<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>)> {
        match &self.src {
            RunSource::Table(runs) => {
                let base = g.mul(g.zext64(r)?, g.c64(3))?;
                Ok((
                    g.load_i32(*runs, base)?,
                    g.load_i32(*runs, g.add(base, g.c64(1))?)?,
                    g.load_i32(*runs, g.add(base, g.c64(2))?)?,
                ))
            }
            RunSource::Regs(runs) => {
                let is0 = g.icmp(IntPredicate::EQ, r, g.c32(0))?;
                let is1 = g.icmp(IntPredicate::EQ, r, g.c32(1))?;
                let pick = |i: usize| -> R<IntValue<'ctx>> {
                    g.selecti(is0, runs[0][i], g.selecti(is1, runs[1][i], runs[2][i])?)
                };
                Ok((pick(0)?, pick(1)?, pick(2)?))
            }
        }
    }
}

/// The runs of kv blocks of each tile of `tiles` (`analysis::documents::doc_tiles`), counted from the tile's
/// document's first row, CSR (`row_start` with one entry per tile and one more, `runs`):
/// the range of the closed form `coefs` / `bounds` (a document mask's linear part,
/// `Plan::doc_split`; each offset moved to the document's first row, `k + a_kv row0`) over
/// the tile's rows with the document's length as the keys, computed with the kernels' own
/// arithmetic ([`row_range`]): a partial, a full and a partial run. `bounds`
/// `None` where the closed form cannot be trusted for the call (every block partial);
/// `has_mask` false: no mask (every block full).
pub fn doc_tile_runs(
    tiles: &[i32],
    coefs: &[(i64, i64)],
    bounds: Option<&[Bound]>,
    has_mask: bool,
    q_block: usize,
    kv_block: usize,
) -> (Vec<u32>, Vec<Run>) {
    let mut row_start = vec![0u32];
    let mut runs = Vec::new();
    for t in tiles.chunks(4) {
        let [row0, rows, qi] = [t[1], t[2], t[3]].map(|x| x as usize);
        let q0 = row0 + qi * q_block;
        let q1 = (q0 + q_block).min(row0 + rows) - 1;
        let nkv = rows.div_ceil(kv_block) as u32;
        let mut push = |start: u32, end: u32, full: u32| {
            if start < end {
                runs.push(Run { start, end, full });
            }
        };
        match (has_mask, bounds) {
            (false, _) => push(0, nkv, 1),
            (true, None) => push(0, nkv, 0),
            (true, Some(bs)) => {
                let shifted: Vec<Bound> = bs
                    .iter()
                    .map(|c| Bound {
                        k: c.k + c.a_kv * row0 as i128,
                        ..*c
                    })
                    .collect();
                let r = row_range(coefs, &shifted, q0 as i64, q1 as i64, rows, kv_block);
                let (first, end) = (r.first as u32, r.end as u32);
                let (ff, fe) = (r.full_first as u32, r.full_end as u32);
                if ff < fe {
                    push(first, ff, 0);
                    push(ff, fe, 1);
                    push(fe, end, 0);
                } else {
                    push(first, end, 0);
                }
            }
        }
        row_start.push(runs.len() as u32);
    }
    (row_start, runs)
}

/// The fused backward's document kv tiles ([`PtxOptions::bwd_doc_tiles`]) of `docs`
/// (`analysis::documents::document_runs`): the list, four i32 words an entry `(b, row0,
/// rows, kj)` (each document's kv blocks of `kv_block` rows from its first row, in order
/// of batch, row and block), and per (batch, q block of `q_block` rows on the global grid)
/// the `[first, end, full_first, full_end]` entries that add into it: every entry holding
/// a key some row of the block keeps under the document mask (its document's rows, the
/// closed form `coefs` / `bounds` of the mask's linear part with each offset moved to the
/// document's first row, as [`doc_tile_runs`]; `bounds` `None`: every key of the
/// document), as one span of entries (those inside it that keep nothing visit as
/// partial), and the longest run of entries full for every row: all `q_block` rows in
/// the entry's document and every key of the entry kept by each (`has_mask` false: the
/// document alone is the mask). `[0; 4]` for a block that keeps nothing.
///
/// [`PtxOptions::bwd_doc_tiles`]: super::PtxOptions::bwd_doc_tiles
#[allow(clippy::too_many_arguments)]
pub fn doc_kv_ranges(
    docs: &[Vec<crate::analysis::documents::Document>],
    coefs: &[(i64, i64)],
    bounds: Option<&[Bound]>,
    has_mask: bool,
    len: usize,
    q_block: usize,
    kv_block: usize,
) -> (Vec<i32>, Vec<i32>) {
    let mut tiles = Vec::new();
    let mut ranges = Vec::new();
    let nq = len.div_ceil(q_block);
    let mut e0 = 0usize;
    for (b, runs) in docs.iter().enumerate() {
        // each document's first entry, and each row's document
        let mut firsts = Vec::with_capacity(runs.len());
        let mut doc_of = vec![0usize; len];
        for (di, d) in runs.iter().enumerate() {
            firsts.push(e0);
            let n = d.rows.div_ceil(kv_block);
            for kj in 0..n {
                tiles.extend([b, d.row0, d.rows, kj].map(|x| x as i32));
            }
            e0 += n;
            doc_of[d.row0..d.row0 + d.rows].fill(di);
        }
        for i in 0..nq {
            let (q0, q1) = (i * q_block, ((i + 1) * q_block).min(len));
            let (mut first, mut end) = (usize::MAX, 0usize);
            // the entries full for every row so far (an interval), none once a row differs
            let mut full: Option<(usize, usize)> = (q1 - q0 == q_block).then_some((0, usize::MAX));
            for (q, &di) in doc_of.iter().enumerate().take(q1).skip(q0) {
                let d = runs[di];
                let n = d.rows.div_ceil(kv_block);
                let [f, e, ff, fe] = match (has_mask, bounds) {
                    (false, _) => [0, n, 0, n],
                    (true, None) => [0, n, 0, 0],
                    (true, Some(bs)) => {
                        let shifted: Vec<Bound> = bs
                            .iter()
                            .map(|c| Bound {
                                k: c.k + c.a_kv * d.row0 as i128,
                                ..*c
                            })
                            .collect();
                        let r = row_range(coefs, &shifted, q as i64, q as i64, d.rows, kv_block);
                        let c = |x: usize| x.min(n);
                        [c(r.first), c(r.end), c(r.full_first), c(r.full_end)]
                    }
                };
                if f < e {
                    first = first.min(firsts[di] + f);
                    end = end.max(firsts[di] + e);
                }
                full = full.and_then(|(a, z)| {
                    let (a, z) = (a.max(firsts[di] + ff), z.min(firsts[di] + fe));
                    (ff < fe && a < z).then_some((a, z))
                });
            }
            if first < end {
                let (ff, fe) = full.map_or((0, 0), |(a, z)| (a.max(first), z.min(end)));
                let (ff, fe) = if ff < fe { (ff, fe) } else { (0, 0) };
                ranges.extend([first, end, ff, fe].map(|x| x as i32));
            } else {
                ranges.extend([0; 4]);
            }
        }
    }
    (tiles, ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::linear::ClosedForm;

    #[test]
    fn host_rows_match_the_exact_closed_form() {
        // deterministic pseudo-random cases, including huge offsets (clamped) and
        // coefficients at the limit
        let mut s: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let coef = |x: u64| -> i64 {
            match x % 8 {
                0 => 0,
                1 => 1,
                2 => -1,
                3 => MAX_COEF,
                4 => -MAX_COEF,
                _ => (x >> 8) as i64 % 7 - 3,
            }
        };
        let mut checked = 0;
        for _ in 0..200_000 {
            let n = (next() % 3) as usize + 1;
            let coefs: Vec<(i64, i64)> = (0..n).map(|_| (coef(next()), coef(next()))).collect();
            let bounds: Vec<Bound> = coefs
                .iter()
                .map(|&(a_q, a_kv)| {
                    let x = next();
                    let k: i128 = match x % 6 {
                        0 => (x >> 8) as i64 as i128 * 1000,
                        1 => -(((x >> 8) % 300) as i128),
                        _ => ((x >> 8) % 600) as i128 - 300,
                    };
                    Bound {
                        a_q: a_q as i128,
                        a_kv: a_kv as i128,
                        k,
                    }
                })
                .collect();
            let big = next() % 5 == 0;
            let lkv = if big {
                (i32::MAX as u64 - next() % 1000) as usize
            } else {
                (next() % 400) as usize
            };
            let lq = if big {
                i32::MAX as i64 - (next() % 1000) as i64
            } else {
                (next() % 400) as i64 + 1
            };
            let kvb = [32usize, 64, 128][(next() % 3) as usize];
            let qb = [64i64, 128][(next() % 2) as usize];
            let q0 = (next() as i64 % lq).abs() / qb * qb;
            let q1 = (q0 + qb).min(lq) - 1;
            let want = ClosedForm::row(&bounds, q0, q1, lkv, kvb);
            let got = row_range(&coefs, &bounds, q0, q1, lkv, kvb);
            assert_eq!(
                got, want,
                "coefs {coefs:?} bounds {bounds:?} rows {q0}..={q1} lkv {lkv} kvb {kvb}"
            );
            checked += 1;
        }
        assert_eq!(checked, 200_000);
    }

    /// `q_interval` (on i64) is exactly the set of q in `0..lq` where every constraint
    /// holds, for kv rows of random small closed forms (brute force over q).
    #[test]
    fn q_interval_is_the_rows_mask() {
        let mut s: u64 = 0x2545f4914f6cdd1d;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut nonempty = 0;
        for _ in 0..20_000 {
            let n = (next() % 3) as usize + 1;
            let coefs: Vec<(i64, i64)> = (0..n)
                .map(|_| ((next() % 7) as i64 - 3, (next() % 7) as i64 - 3))
                .collect();
            let ks: Vec<i64> = (0..n).map(|_| (next() % 400) as i64 - 200).collect();
            let lq = (next() % 150) as i64 + 1;
            let kv = (next() % 150) as i64;
            let [lo, hi] = q_interval(&Host, &coefs, &ks, kv, lq).unwrap();
            for q in 0..lq {
                let keep = coefs
                    .iter()
                    .zip(&ks)
                    .all(|(&(aq, akv), &k)| aq * q + akv * kv + k >= 0);
                assert_eq!(
                    keep,
                    lo <= q && q <= hi,
                    "coefs {coefs:?} ks {ks:?} kv {kv} lq {lq} q {q}: [{lo}, {hi}]"
                );
            }
            nonempty += (lo <= hi) as u32;
        }
        assert!(nonempty > 1000, "{nonempty}");
    }

    /// The document tiles as the kernels run them (`PtxOptions::doc_tiles`,
    /// `CpuOptions::doc_tiles`), simulated on the host with the runs of [`super::doc_tile_runs`]
    /// (the closed-form arithmetic the GPU kernel emits as IR, `bounds::row_range`, and the
    /// CPU kernel reads as a table): for random packed documents (lengths from one row to
    /// several tiles) and document masks with and without a causal / window / chunk part,
    /// every row lies in exactly one tile; each tile's visited kv blocks, counted from its
    /// document's first row with the offsets shifted by it (`k + a_kv row0`) and the
    /// document's length as the keys, keep exactly the keys the whole mask keeps for each
    /// of its rows — a full block only where the mask holds at every point, a partial one
    /// evaluating `L` alone (the split's program), which must equal the whole mask there.
    /// A deterministic xorshift stream: `next(n)` in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// `b` rows of `l` sorted ids drawn from `0..docs`: packed documents of random lengths
    /// (some of one row).
    fn packed_ids(next: &mut impl FnMut(u64) -> u64, b: usize, l: usize, docs: i32) -> Vec<i32> {
        let mut ids = Vec::new();
        for _ in 0..b {
            let mut row: Vec<i32> = (0..l).map(|_| next(docs as u64) as i32).collect();
            row.sort();
            ids.extend(row);
        }
        ids
    }

    /// One head over `b` sequences of `l` rows (the document tests' shape).
    fn packed_shape(b: usize, l: usize) -> crate::shape::Shape {
        crate::shape::Shape {
            b,
            hq: 1,
            hkv: 1,
            lq: l,
            lkv: l,
            d: 64,
            dv: 64,
        }
    }

    /// `p`'s bindings in the document tests: every tensor the ids (`[b, l]`), every param
    /// `param` (programs keep their own lists of the source's declarations).
    fn packed_bindings(
        p: &crate::ir::Program,
        ids: &[i32],
        b: usize,
        l: usize,
        param: i32,
    ) -> crate::interp::Bindings {
        use crate::interp::{BoundTensor, TensorData};
        crate::interp::Bindings {
            params: p
                .params
                .iter()
                .map(|_| crate::ir::Scalar::I32(param))
                .collect(),
            tensors: p
                .tensors
                .iter()
                .map(|_| BoundTensor {
                    dims: vec![b, l],
                    data: TensorData::I32(ids.to_vec()),
                })
                .collect(),
        }
    }

    /// The backward's document kv tiles and per-q-block entry ranges
    /// ([`doc_kv_ranges`]) against the whole mask evaluated at every point, over random
    /// packed documents, four document masks and three tile shapes: the entries cover
    /// every key once; every key a row keeps lies in an entry inside its q block's span;
    /// an entry of the full run keeps every key for every row of the block (fails when
    /// the offsets are not moved to the document's first row, or the full run is taken
    /// over rows of two documents).
    #[test]
    fn doc_kv_ranges_visit_every_kept_key() {
        use crate::analysis::documents::document_runs;
        use crate::interp::{Args, eval};
        use crate::ir::Scalar;
        use crate::plan::KvBounds;
        let src = "tensor doc: i32[B, KV];\n param window: i32;\n\
            mask causal(b, h, q, kv) { q >= kv }\n\
            mask same(b, h, q, kv) { doc[b, q] == doc[b, kv] }\n\
            mask local(b, h, q, kv) { q - kv <= window }\n\
            attention only { mask = same; }\n\
            attention causal_doc { mask = causal & same; }\n\
            attention window_doc { mask = causal & local & same; }\n\
            attention two_sided { mask = local & same; }\n";
        let programs = crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs;
        let mut next = xorshift(0x2545f4914f6cdd1d);
        let (mut full_seen, mut kept_seen) = (0usize, 0usize);
        for case in 0..10 {
            let (b, l) = (2, 1 + next(500) as usize);
            let docs = if case % 3 == 0 {
                2
            } else {
                1 + next(30) as i32
            };
            let ids = packed_ids(&mut next, b, l, docs);
            let shape = packed_shape(b, l);
            for p in &programs {
                let mine = packed_bindings(p, &ids, b, l, 45);
                let plan = crate::plan::Plan::new(p);
                let (dplan, id) = plan.doc_split().unwrap_or_else(|| panic!("{}", p.name));
                let runs = document_runs(id, p, &mine, b, l).unwrap().unwrap();
                let KvBounds::ClosedForm(cf) = dplan.kv_bounds(false) else {
                    panic!("{}: no closed form", p.name);
                };
                let coefs = dplan.kv_bounds(false).coefficients();
                let bounds = dplan.closed_form_bounds(&cf, &shape, &mine).unwrap();
                let has_mask = dplan.program().mask.is_some();
                let whole = p.mask.as_ref().unwrap();
                let mut scratch = Vec::new();
                let mut keeps = |bi: usize, q: usize, kv: usize| {
                    eval(whole, p, Args::at(0.0, [bi, 0, q, kv]), &mine, &mut scratch).unwrap()
                        == Scalar::Bool(true)
                };
                for (qb, kvb) in [(64usize, 128usize), (64, 64), (128, 128)] {
                    let (tiles, ranges) =
                        doc_kv_ranges(&runs, &coefs, bounds.as_deref(), has_mask, l, qb, kvb);
                    let nq = l.div_ceil(qb);
                    assert_eq!(ranges.len(), 4 * b * nq, "{}", p.name);
                    // the entry holding each (batch, key), and each entry's batch and keys
                    let mut entry_of = vec![usize::MAX; b * l];
                    let mut keys = Vec::new();
                    for (e, t) in tiles.chunks(4).enumerate() {
                        let [bi, row0, rows, kj] = [t[0], t[1], t[2], t[3]].map(|x| x as usize);
                        let kv0 = row0 + kj * kvb;
                        let kv1 = (kv0 + kvb).min(row0 + rows);
                        assert!(kv0 < kv1, "{}: an empty entry", p.name);
                        for kv in kv0..kv1 {
                            assert_eq!(entry_of[bi * l + kv], usize::MAX, "{}: key twice", p.name);
                            entry_of[bi * l + kv] = e;
                        }
                        keys.push((bi, kv0..kv1));
                    }
                    assert!(entry_of.iter().all(|&e| e != usize::MAX), "{}", p.name);
                    for bi in 0..b {
                        for i in 0..nq {
                            let r = &ranges[4 * (bi * nq + i)..][..4];
                            let [first, end, ff, fe] = [r[0], r[1], r[2], r[3]].map(|x| x as usize);
                            let rows = i * qb..((i + 1) * qb).min(l);
                            for key in &keys[first..end] {
                                assert_eq!(key.0, bi, "{}: another batch's entry", p.name);
                            }
                            for q in rows.clone() {
                                for kv in 0..l {
                                    if keeps(bi, q, kv) {
                                        kept_seen += 1;
                                        let e = entry_of[bi * l + kv];
                                        assert!(
                                            first <= e && e < end,
                                            "{} L{l} {qb}x{kvb}: row {q} key {kv} (entry {e}) outside {r:?}",
                                            p.name
                                        );
                                    }
                                }
                            }
                            for (e, key) in keys.iter().enumerate().take(fe).skip(ff) {
                                full_seen += 1;
                                assert_eq!(
                                    rows.len(),
                                    qb,
                                    "{}: a full entry of a short block",
                                    p.name
                                );
                                for q in rows.clone() {
                                    for kv in key.1.clone() {
                                        assert!(
                                            keeps(bi, q, kv),
                                            "{} L{l} {qb}x{kvb}: full entry {e} drops row {q} key {kv}",
                                            p.name
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            full_seen > 100 && kept_seen > 10_000,
            "{full_seen} {kept_seen}"
        );
    }

    #[test]
    fn doc_tiles_keep_exactly_the_mask() {
        use crate::analysis::documents::{doc_tiles, document_runs};
        use crate::interp::{Args, eval};
        use crate::ir::{Function, Scalar};
        use crate::plan::KvBounds;
        let src = "tensor doc: i32[B, KV];\n param window: i32;\n\
            mask causal(b, h, q, kv) { q >= kv }\n\
            mask same(b, h, q, kv) { doc[b, q] == doc[b, kv] }\n\
            mask local(b, h, q, kv) { q - kv <= window }\n\
            mask chunk(b, h, q, kv) { q / 48 == kv / 48 }\n\
            attention only { mask = same; }\n\
            attention causal_doc { mask = causal & same; }\n\
            attention window_doc { mask = causal & local & same; }\n\
            attention chunked { mask = chunk & causal; }\n";
        let programs = crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs;
        let mut next = xorshift(0x9e3779b97f4a7c15);
        let (mut tiles_seen, mut partial_seen) = (0, 0);
        for case in 0..12 {
            let (b, l) = (2, 1 + next(400) as usize);
            // sorted ids with random cuts (some documents of one row), or few long ones
            let docs = if case % 3 == 0 {
                2
            } else {
                1 + next(40) as i32
            };
            let ids = packed_ids(&mut next, b, l, docs);
            let shape = packed_shape(b, l);
            for p in &programs {
                let mine = packed_bindings(p, &ids, b, l, 17);
                let plan = crate::plan::Plan::new(p);
                let (dplan, id) = plan.doc_split().unwrap_or_else(|| panic!("{}", p.name));
                let runs = document_runs(id, p, &mine, b, l).unwrap().unwrap();
                let KvBounds::ClosedForm(cf) = dplan.kv_bounds(false) else {
                    panic!("{}: no closed form", p.name);
                };
                let coefs = dplan.kv_bounds(false).coefficients();
                let bounds = dplan.closed_form_bounds(&cf, &shape, &mine).unwrap();
                for (qb, kvb) in [(128usize, 128usize), (64, 64), (192, 128)] {
                    let tiles = doc_tiles(&runs, qb, dplan.kv_bounds(false).work_grows_with_q());
                    let has_mask = dplan.program().mask.is_some();
                    let (row_start, tile_runs) =
                        doc_tile_runs(&tiles, &coefs, bounds.as_deref(), has_mask, qb, kvb);
                    let mut covered = vec![0u8; b * l];
                    let mut scratch = Vec::new();
                    let mut at = |f: &Function, bi: usize, q: usize, kv: usize| {
                        eval(f, p, Args::at(0.0, [bi, 0, q, kv]), &mine, &mut scratch).unwrap()
                            == Scalar::Bool(true)
                    };
                    for (ti, t) in tiles.chunks(4).enumerate() {
                        let [bi, row0, rows, qi] = [t[0], t[1], t[2], t[3]].map(|x| x as usize);
                        let q0 = row0 + qi * qb;
                        let q_end = (q0 + qb).min(row0 + rows);
                        assert!(q0 < q_end, "{}: an empty tile", p.name);
                        let mine_runs =
                            &tile_runs[row_start[ti] as usize..row_start[ti + 1] as usize];
                        tiles_seen += 1;
                        for q in q0..q_end {
                            covered[bi * l + q] += 1;
                            let mut kept = vec![false; l];
                            for r in mine_runs {
                                for j in r.start as usize..r.end as usize {
                                    let kvs =
                                        row0 + j * kvb..(row0 + (j + 1) * kvb).min(row0 + rows);
                                    for kv in kvs {
                                        kept[kv] = if r.full == 1 {
                                            true
                                        } else {
                                            partial_seen += 1;
                                            match &dplan.program().mask {
                                                Some(m) => at(m, bi, q, kv),
                                                None => true,
                                            }
                                        };
                                    }
                                }
                            }
                            let whole = p.mask.as_ref().unwrap();
                            for (kv, &k) in kept.iter().enumerate() {
                                assert_eq!(
                                    k,
                                    at(whole, bi, q, kv),
                                    "{} L{l} tiles {qb}x{kvb}: row {q} key {kv} of batch {bi} (tile {t:?})",
                                    p.name
                                );
                            }
                        }
                    }
                    assert!(
                        covered.iter().all(|&c| c == 1),
                        "{}: rows not covered once",
                        p.name
                    );
                }
            }
        }
        assert!(
            tiles_seen > 100 && partial_seen > 1000,
            "{tiles_seen} {partial_seen}"
        );
    }
}
