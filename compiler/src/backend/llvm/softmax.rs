//! The online softmax of FlashAttention over m16n8 fragments, and its end: O / l and the
//! log-sum-exp.
//!
//! In: one block's logits `t` ([`AccTile`], in units of [`Ctx::c2`]), the running row
//! max `m` and sum `l` ([`RowState`]) and the output accumulator O. Out ([`online_softmax`]):
//! m, l and O updated, P as bf16/f16 A fragments for P V; ([`epilogue`]): O normalized
//! and stored with the LSE (natural log; rows with nothing unmasked give O = 0 and
//! LSE = -inf).

use super::LlvmError;
use super::gpu::{Gpu, R, Var};
use super::tile::{AccTile, Cfg, Ctx, Frag, RowState, row_inside, thread_row0};
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

const LN2: f32 = std::f32::consts::LN_2;

/// Rescaling threshold of the running max, in log2 units (P stays below 2^8). Measured
/// on an H200 (D128 dense): 342 TFLOP/s against 332 when rescaling at every increase
/// (and 315 without the raw-score FMA path).
const RESCALE_LOG2: f32 = 8.0;

/// Online softmax over this block's logits `t` (`[m-tile][n-tile]`, in units of
/// `c2`): updates m and l, rescales O, and returns P as bf16/f16 A fragments,
/// `[m-tile][16 kv columns]`, and the warp's vote whether any row's max moved. Lazy
/// rescaling: the running max moves (and O and l are rescaled) only when some row of the
/// warp grows by more than `RESCALE_LOG2` in log2 units; otherwise P is taken against
/// the stale max (P < 2^RESCALE_LOG2, exact after the final division since O, l and the
/// LSE all use the same max). `before_exp` runs after the rescale and before the
/// exponentials. With `defer`, O is not touched: the rescale factors go there instead,
/// and the caller multiplies O by them ([`AccTile::scale_rows`]) when the vote holds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn online_softmax<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    t: &AccTile<'ctx>,
    m: &RowState<'ctx>,
    l: &RowState<'ctx>,
    o: &AccTile<'ctx>,
    defer: Option<&RowState<'ctx>>,
    before_exp: &mut dyn FnMut() -> R<()>,
) -> R<(Vec<Vec<Frag<'ctx>>>, IntValue<'ctx>)> {
    let (p, _, any) = softmax_rows(g, c, cx, t, m, l, o, defer, before_exp, true)?;
    Ok((p, any))
}

/// The row reduction `op` of `xs`: one chain, or (`Cfg::softmax_ilp`) four interleaved
/// chains joined at the end, whose fixed-latency dependencies overlap.
fn reduce<'ctx>(
    ilp: bool,
    init: FloatValue<'ctx>,
    xs: &[FloatValue<'ctx>],
    op: &dyn Fn(FloatValue<'ctx>, FloatValue<'ctx>) -> R<FloatValue<'ctx>>,
) -> R<FloatValue<'ctx>> {
    if !ilp || xs.len() < 8 {
        let mut acc = init;
        for x in xs {
            acc = op(acc, *x)?;
        }
        return Ok(acc);
    }
    let mut acc = [op(init, xs[0])?, xs[1], xs[2], xs[3]];
    for (i, x) in xs.iter().enumerate().skip(4) {
        acc[i % 4] = op(acc[i % 4], *x)?;
    }
    op(op(acc[0], acc[1])?, op(acc[2], acc[3])?)
}

/// [`online_softmax`] without the packing: P as f32 values, `[m-tile][n-tile][4]` (the
/// accumulator layout of `t`), for [`pack_p`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn online_softmax_exp<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    t: &AccTile<'ctx>,
    m: &RowState<'ctx>,
    l: &RowState<'ctx>,
    o: &AccTile<'ctx>,
    defer: Option<&RowState<'ctx>>,
    before_exp: &mut dyn FnMut() -> R<()>,
) -> R<(Vec<Vec<[FloatValue<'ctx>; 4]>>, IntValue<'ctx>)> {
    let (_, p, any) = softmax_rows(g, c, cx, t, m, l, o, defer, before_exp, false)?;
    Ok((p, any))
}

/// The body of [`online_softmax`] (`pack`: P packed per m-tile, right after its
/// exponentials) and [`online_softmax_exp`] (P left as f32).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn softmax_rows<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    t: &AccTile<'ctx>,
    m: &RowState<'ctx>,
    l: &RowState<'ctx>,
    o: &AccTile<'ctx>,
    defer: Option<&RowState<'ctx>>,
    before_exp: &mut dyn FnMut() -> R<()>,
    pack: bool,
) -> R<(
    Vec<Vec<Frag<'ctx>>>,
    Vec<Vec<[FloatValue<'ctx>; 4]>>,
    IntValue<'ctx>,
)> {
    let ilp = c.softmax_ilp;
    let (m, l) = (&m.rows, &l.rows);
    let thresh = RESCALE_LOG2;
    let tv = t.values(g)?;
    // row maxima of this block and whether any row of the warp needs a new max
    let mut m_blk = vec![[g.cf(0.0); 2]; c.mt];
    let mut any = g.cbool(false);
    for (i, ti) in tv.iter().enumerate() {
        for hr in 0..2 {
            let mut mx = g.cf(f32::NEG_INFINITY);
            if ilp {
                let xs: Vec<_> = ti.iter().flat_map(|x| [x[2 * hr], x[2 * hr + 1]]).collect();
                mx = reduce(true, mx, &xs, &|a, b| g.fmax(a, b))?;
            } else {
                for x in ti {
                    mx = g.fmax(mx, g.fmax(x[2 * hr], x[2 * hr + 1])?)?;
                }
            }
            // the four lanes of a row
            mx = g.fmax(mx, g.shfl_xor(mx, 1)?)?;
            mx = g.fmax(mx, g.shfl_xor(mx, 2)?)?;
            let m_old = g.getf(&m[i][hr])?;
            m_blk[i][hr] = mx;
            // grows by more than the threshold (always true from -inf to finite: +inf)
            let grow = g.fmul(g.fsub(mx, m_old)?, cx.c2)?;
            let need = g.fcmp(FloatPredicate::OGT, grow, g.cf(thresh))?;
            any = g.or(any, need)?;
        }
    }
    let any = g.vote_any(any)?;
    g.if_then(any, || {
        for i in 0..c.mt {
            for hr in 0..2 {
                let m_old = g.getf(&m[i][hr])?;
                let m_new = g.fmax(m_old, m_blk[i][hr])?;
                // never -inf - -inf: a row with nothing unmasked yet keeps alpha = 2^0
                let none = g.fcmp(FloatPredicate::OEQ, m_new, g.cf(f32::NEG_INFINITY))?;
                let m_new_u = g.selectf(none, g.cf(0.0), m_new)?;
                let alpha = g.ex2(g.fmul(g.fsub(m_old, m_new_u)?, cx.c2)?)?;
                g.set(&m[i][hr], m_new)?;
                g.set(&l[i][hr], g.fmul(g.getf(&l[i][hr])?, alpha)?)?;
                if let Some(d) = defer {
                    g.set(&d.rows[i][hr], alpha)?;
                    continue;
                }
                for acc in &o.tiles[i] {
                    for cc in 0..2 {
                        let v = &acc[2 * hr + cc];
                        g.set(v, g.fmul(g.getf(v)?, alpha)?)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    before_exp()?;
    let mut out = Vec::with_capacity(c.mt);
    let mut raw = Vec::with_capacity(c.mt);
    for (i, ti) in tv.iter().enumerate() {
        let mut pv = ti.clone();
        for hr in 0..2 {
            let m_cur = g.getf(&m[i][hr])?;
            let none = g.fcmp(FloatPredicate::OEQ, m_cur, g.cf(f32::NEG_INFINITY))?;
            let mc = g.fmul(g.selectf(none, g.cf(0.0), m_cur)?, cx.c2)?;
            let mut sum = g.cf(0.0);
            let mut es = Vec::with_capacity(2 * ti.len());
            for (nt, x) in ti.iter().enumerate() {
                for cc in 0..2 {
                    // one FMA + ex2 per element
                    let e = g.ex2(g.fsub(g.fmul(x[2 * hr + cc], cx.c2)?, mc)?)?;
                    pv[nt][2 * hr + cc] = e;
                    if ilp {
                        es.push(e);
                    } else {
                        sum = g.fadd(sum, e)?;
                    }
                }
            }
            if ilp {
                sum = reduce(true, sum, &es, &|a, b| g.fadd(a, b))?;
            }
            g.set(&l[i][hr], g.fadd(g.getf(&l[i][hr])?, sum)?)?;
        }
        if pack {
            out.push(pack_p(g, c, std::slice::from_ref(&pv))?.remove(0));
        } else {
            raw.push(pv);
        }
    }
    Ok((out, raw, any))
}

/// P of [`online_softmax_exp`] as bf16/f16 A fragments, `[m-tile][16 kv columns]`.
pub(crate) fn pack_p<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &[Vec<[FloatValue<'ctx>; 4]>],
) -> R<Vec<Vec<Frag<'ctx>>>> {
    p.iter()
        .map(|pv| {
            (0..(c.kvb / 16) as usize)
                .map(|kk| {
                    let (a, b) = (&pv[2 * kk], &pv[2 * kk + 1]);
                    Ok([
                        g.pack2(c.ty, a[0], a[1])?,
                        g.pack2(c.ty, a[2], a[3])?,
                        g.pack2(c.ty, b[0], b[1])?,
                        g.pack2(c.ty, b[2], b[3])?,
                    ])
                })
                .collect::<R<_>>()
        })
        .collect()
}

/// The end of the softmax for m-tile `mtile`: O / l (rows with l = 0 give 0) stored as
/// bf16/f16 at `o_ptr` (`[B, Hq, Lq, Dv]`) and LSE = (c2 m + log2 l) ln 2 (-inf for such
/// rows) at `lse_ptr` (`[B, Hq, Lq]`), rows past `Lq` skipped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn epilogue<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    mtile: usize,
    o_ptr: PointerValue<'ctx>,
    lse_ptr: PointerValue<'ctx>,
    hq: IntValue<'ctx>,
    m: &[Var<'ctx>; 2],
    l: &[Var<'ctx>; 2],
    o: &[[Var<'ctx>; 4]],
) -> R<()> {
    let slice = g.add(g.mul(cx.b, hq)?, cx.h)?;
    let row_base = thread_row0(g, c, cx, mtile)?;
    let quad = g.and(cx.lane, g.c32(3))?;
    for hr in 0..2 {
        let (lt, pos, inv) = row_total(g, &l[hr])?;
        let row = g.add(row_base, g.c32(8 * hr as i64))?;
        let mhr = g.getf(&m[hr])?;
        let vals: Vec<[FloatValue<'ctx>; 2]> = o
            .iter()
            .map(|x| Ok([g.getf(&x[2 * hr])?, g.getf(&x[2 * hr + 1])?]))
            .collect::<R<_>>()?;
        g.if_then(row_inside(g, c, cx, row)?, || {
            let grow = g.zext64(g.add(g.mul(slice, cx.lq)?, row)?)?;
            let base = g.add(
                g.mul(grow, g.c64(c.dv as i64 * 2))?,
                g.zext64(g.mul(quad, g.c32(4))?)?,
            )?;
            for (nt, v) in vals.iter().enumerate() {
                let packed = g.pack2(c.ty, g.fmul(v[0], inv)?, g.fmul(v[1], inv)?)?;
                let ptr = g.gep_bytes(o_ptr, g.add(base, g.c64(nt as i64 * 16))?)?;
                let st = g.b.build_store(ptr, packed)?;
                st.set_alignment(4)
                    .map_err(|_| LlvmError::Internal("alignment"))?;
            }
            g.if_then(g.icmp(IntPredicate::EQ, quad, g.c32(0))?, || {
                store_lse(g, cx, lse_ptr, grow, mhr, lt, pos)
            })
        })?;
    }
    Ok(())
}

/// A row's softmax sum `l` over its quad (each thread holds a quarter of the row's
/// columns), whether it is positive (some column kept) and its reciprocal (0 where not):
/// `(total, positive, 1 / total)`, as [`epilogue`] and the warp-specialized kernel's
/// `o_tma` epilogue normalize O.
pub(crate) fn row_total<'ctx>(
    g: &Gpu<'ctx>,
    l: &Var<'ctx>,
) -> R<(FloatValue<'ctx>, IntValue<'ctx>, FloatValue<'ctx>)> {
    let mut lt = g.getf(l)?;
    lt = g.fadd(lt, g.shfl_xor(lt, 1)?)?;
    lt = g.fadd(lt, g.shfl_xor(lt, 2)?)?;
    let pos = g.fcmp(FloatPredicate::OGT, lt, g.cf(0.0))?;
    // approximate (1 ulp) and inline: see `Gpu::rcp`
    let inv = g.selectf(pos, g.rcp(lt)?, g.cf(0.0))?;
    Ok((lt, pos, inv))
}

/// Stores a row's LSE (natural log, from the base-2 state: `(m c2 + log2 l) ln 2`, -inf
/// where no column was kept) at global row `grow` of `lse_ptr`.
pub(crate) fn store_lse<'ctx>(
    g: &Gpu<'ctx>,
    cx: &Ctx<'ctx>,
    lse_ptr: PointerValue<'ctx>,
    grow: IntValue<'ctx>,
    m: FloatValue<'ctx>,
    lt: FloatValue<'ctx>,
    pos: IntValue<'ctx>,
) -> R<()> {
    let lse = g.fmul(g.fadd(g.fmul(m, cx.c2)?, g.lg2(lt)?)?, g.cf(LN2))?;
    let lse = g.selectf(pos, lse, g.cf(f32::NEG_INFINITY))?;
    let ptr = g.gep_bytes(lse_ptr, g.mul(grow, g.c64(4))?)?;
    g.store(ptr, lse)
}
