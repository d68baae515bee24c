//! Score and mask on the fragments of S: the logits of one kv block.
//!
//! In: S = Q Kᵀ as m16n8 accumulator values `[m-tile][n8 tile]`, the block's first kv
//! position and whether it is a full block; the program's `score`/`mask` functions
//! (lowered per element by `expr.rs`). Out: the logits `t` in log2 units (or raw scores,
//! [`Ctx::raw`]) in an [`AccTile`], -inf where masked or outside the sequence.

use super::PtxOptions;
use super::expr::{
    Elem, Env, PosF, emit_function, emit_function_at, emit_values_at, emit_values_hoisted,
    float_exact,
};
use super::gpu::{Gpu, R, Var};
use super::tile::{Acc, AccTile, Cfg, Ctx, row_inside, thread_row0};
use super::uniform::{self, TileBox};
use crate::ir::{Function, Program};
use inkwell::IntPredicate;
use inkwell::values::{FloatValue, IntValue};

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// A partial block's mask as keep bits (`Cfg::mask_early`): bit `e % 32` of word
/// `e / 32` for the thread's element `e = (m-tile * n8 tiles + n8 tile) * 4 + i`, in
/// [`score_and_mask`]'s order; set where the mask holds and kv is inside the sequence.
pub(crate) struct MaskBits<'ctx> {
    words: Vec<Var<'ctx>>,
}

/// Run kind of a partial block where the mask's other conjuncts `N` hold wherever its
/// linear ones `L` do, so that the mask is `L` there (`PtxOptions::mask_kinds`): only `L`
/// is evaluated.
pub(crate) const KIND_LINEAR_ONLY: u32 = 2;
/// Run kind of a partial block where the linear conjuncts `L` hold at every point: only
/// `N` is evaluated.
pub(crate) const KIND_OTHER_ONLY: u32 = 3;

/// `PtxOptions::mask_kinds` for `p`: its mask's (linear, other) conjuncts
/// (`analysis::linear::split_conjuncts`), or `None` (option off, checked mode, or a mask
/// that does not split). The block-table kernel and the attention kernels ask this same
/// function, so a table holds kinds 2 and 3 exactly when its reader knows them.
pub(crate) fn mask_kinds(p: &Program, opts: &PtxOptions) -> Option<(Function, Function)> {
    if !opts.mask_kinds || opts.checked {
        return None;
    }
    crate::analysis::linear::split_conjuncts(p.mask.as_ref()?)
}

/// Whether the block at `kv0` is scored on the fast path: a full block that ends inside
/// the sequence (run kind 1; any non-zero kind without `kinds`). Also returns the tail
/// condition (the block ends past `Lkv`).
fn fast_path<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    kv0: IntValue<'ctx>,
    full: IntValue<'ctx>,
    kinds: bool,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(c.kvb as i64))?, cx.lkv)?;
    let is_full = if kinds {
        g.icmp(IntPredicate::EQ, full, g.c32(1))?
    } else {
        g.icmp(IntPredicate::NE, full, g.c32(0))?
    };
    let fast = g.and(is_full, g.xor(tail, g.cbool(true))?)?;
    Ok((fast, tail))
}

/// `Cfg::mask_early`: the keep bits of the block at `kv0` for an S fragment of `m_tiles`
/// x `n8_tiles` accumulators, evaluated only on a partial or tail block (the words stay 0
/// on a full one, whose score path does not read them). It reads no S value, so the
/// warp-specialized consumers emit it between the issue of S and the wait for it. `None`
/// (the mask is evaluated per element in [`score_and_mask`]) without the option, without
/// a mask and in checked mode (whose reports are made where the oracle reads).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mask_bits<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    env: &Env<'ctx>,
    p: &Program,
    (m_tiles, n8_tiles): (usize, usize),
    kv0: IntValue<'ctx>,
    full: IntValue<'ctx>,
) -> R<Option<MaskBits<'ctx>>> {
    let Some(f) = &p.mask else {
        return Ok(None);
    };
    if !c.mask_early || env.err.is_some() {
        return Ok(None);
    }
    let n = m_tiles * n8_tiles * 4;
    let words = (0..n.div_ceil(32))
        .map(|_| g.var(g.i32, g.c32(0)))
        .collect::<R<Vec<_>>>()?;
    let (fast, _) = fast_path(g, c, cx, kv0, full, env.kinds.is_some())?;
    g.if_then(g.xor(fast, g.cbool(true))?, || {
        let col_base = g.add(kv0, g.mul(g.and(cx.lane, g.c32(3))?, g.c32(2))?)?;
        let mut acc = vec![g.c32(0); words.len()];
        for mi in 0..m_tiles {
            let row_base = thread_row0(g, c, cx, mi)?;
            for nt in 0..n8_tiles {
                for i in 0..4 {
                    let q = g.add(row_base, g.c32(8 * (i as i64 / 2)))?;
                    let kv = g.add(col_base, g.c32(nt as i64 * 8 + (i as i64 % 2)))?;
                    let kv_in = g.icmp(IntPredicate::SLT, kv, cx.lkv)?;
                    let e = Elem {
                        s: g.cf(0.0),
                        b: cx.b,
                        h: cx.h,
                        q,
                        kv,
                        inside: g.and(row_inside(g, c, cx, q)?, kv_in)?,
                        rel: None,
                    };
                    let keep = g.and(kv_in, emit_function(g, env, f, e)?.into_int_value())?;
                    let at = (mi * n8_tiles + nt) * 4 + i;
                    let bit = g.selecti(keep, g.c32(1i64 << (at % 32)), g.c32(0))?;
                    acc[at / 32] = g.or(acc[at / 32], bit)?;
                }
            }
        }
        for (w, x) in words.iter().zip(acc) {
            g.set(w, x)?;
        }
        Ok(())
    })?;
    Ok(Some(MaskBits { words }))
}

/// The logits in log2 units: `score(scale * s) * log2 e`, or -inf where masked. Full
/// blocks that end inside the sequence skip the mask and the bounds checks; with
/// [`Cfg::split_tail`] partial blocks that end inside it skip the kv bounds check. With
/// `bits` ([`mask_bits`] of the same block) the partial paths test the element's bit
/// instead of evaluating the mask.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_and_mask<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    env: &Env<'ctx>,
    p: &Program,
    s: &[Vec<Acc<'ctx>>],
    kv0: IntValue<'ctx>,
    full: IntValue<'ctx>,
    bits: Option<&MaskBits<'ctx>>,
) -> R<AccTile<'ctx>> {
    let t = AccTile::new(g, s.len(), s.first().map_or(0, Vec::len), 0.0)?;
    let (fast, tail) = fast_path(g, c, cx, kv0, full, env.kinds.is_some())?;
    let fast_bb = g.block("full_block");
    let slow_bb = g.block("partial_block");
    let merge = g.block("scored");
    // `Cfg::split_tail`: partial blocks inside the sequence get their own path, without
    // the kv bounds check (only the tail block needs it)
    let split = c.split_tail && p.mask.is_some();
    let inner_bb = if split {
        Some(g.block("partial_inner_block"))
    } else {
        None
    };
    // `PtxOptions::mask_kinds` (with `split`, not with keep bits): the partial blocks
    // inside the sequence of kind 2 evaluate only the linear conjuncts, of kind 3 only
    // the others
    let kinds = match (&env.kinds, bits) {
        (Some((l, n)), None) if split => Some((
            (l, g.block("partial_linear_block")),
            (n, g.block("partial_other_block")),
        )),
        _ => None,
    };
    let scale_log2 = g.fmul(cx.scale, g.cf(LOG2E))?;
    let row_bases: Vec<IntValue<'ctx>> = (0..c.mt)
        .map(|i| thread_row0(g, c, cx, i))
        .collect::<R<_>>()?;
    let col_base = g.add(kv0, g.mul(g.and(cx.lane, g.c32(3))?, g.c32(2))?)?;
    // `kv - q` of each m-tile's first element (`Elem::rel`, `Cfg::diag_cse`): an
    // element's is this plus a constant, so the elements of one diagonal share it
    let rel_bases: Option<Vec<IntValue<'ctx>>> = match c.diag_cse {
        true => Some(
            row_bases
                .iter()
                .map(|r| g.sub(col_base, *r))
                .collect::<R<_>>()?,
        ),
        false => None,
    };
    // the positions as exact floats (`Cfg::float_positions`): one conversion per row and
    // one for the thread's first column (a column is that plus a constant), and the
    // score's linear forms, once per block (the emitter reads them per element)
    let float_pos = match &p.score {
        Some(f) if c.float_positions => Some((
            g.b.build_signed_int_to_float(col_base, g.f32, "")?,
            crate::analysis::linear::linear_ints(f),
        )),
        _ => None,
    };
    // `Cfg::pos_bias`: a score `s + (lin as f32) c` (ALiBi) as `fma(s_raw, scale log2 e,
    // fma(kv, ±c log2 e, (±q + k) c log2 e))`; `c log2 e` made here once, the row term
    // once per row (the same value for every element of the row, so its rounding is a
    // row constant the softmax cancels)
    let bias = match (&p.score, &float_pos) {
        (Some(f), Some(_)) if c.pos_bias => match crate::analysis::linear::pos_bias(f) {
            Some(pb) if float_exact(&pb.lin) => {
                let at = Elem {
                    s: g.cf(0.0),
                    b: cx.b,
                    h: cx.h,
                    q: g.c32(0),
                    kv: g.c32(0),
                    inside: g.cbool(true),
                    rel: None,
                };
                let vals = emit_values_at(g, env, f, at, &[pb.c], None)?;
                let cv = vals[pb.c.index()]
                    .ok_or(super::LlvmError::Internal("position bias"))?
                    .into_float_value();
                Some((pb.lin, g.fmul(cv, g.cf(LOG2E))?))
            }
            _ => None,
        },
        _ => None,
    };
    // `Cfg::uniform_reads`: full blocks where the score's reads are each one element over
    // every lane's box of positions read them once (`uniform`)
    let uni = match &p.score {
        Some(f) if c.uniform_reads && env.err.is_none() && uniform::analyzable(f) => {
            let (mut q_lo, mut q_hi) = (row_bases[0], row_bases[0]);
            for r in &row_bases[1..] {
                q_lo = g.selecti(g.icmp(IntPredicate::SLT, *r, q_lo)?, *r, q_lo)?;
                q_hi = g.selecti(g.icmp(IntPredicate::SGT, *r, q_hi)?, *r, q_hi)?;
            }
            let n8 = s.first().map_or(1, Vec::len).max(1) as i64;
            let tile = TileBox {
                b: cx.b,
                h: cx.h,
                // rows row_base and row_base + 8, columns col_base + 8 nt + 0 / 1
                q: (q_lo, g.add(q_hi, g.c32(8))?),
                kv: (col_base, g.add(col_base, g.c32(8 * (n8 - 1) + 1))?),
            };
            let tl = uniform::emit_tile_loads(g, env, f, tile)?;
            let go = g.vote_all(g.and(fast, tl.uniform)?)?;
            let bb = g.block("full_uniform_block");
            let rest = g.block("not_uniform_block");
            g.cond_br(go, bb, rest)?;
            g.b.position_at_end(rest);
            Some((tl, bb))
        }
        _ => None,
    };
    match inner_bb {
        Some(inner) => {
            let head = g.block("not_full_block");
            g.cond_br(fast, fast_bb, head)?;
            g.b.position_at_end(head);
            match &kinds {
                Some(((_, lin_bb), (_, other_bb))) => {
                    let which = g.block("partial_kind");
                    g.cond_br(tail, slow_bb, which)?;
                    g.b.position_at_end(which);
                    g.b.build_switch(
                        full,
                        inner,
                        &[
                            (g.c32(KIND_LINEAR_ONLY as i64), *lin_bb),
                            (g.c32(KIND_OTHER_ONLY as i64), *other_bb),
                        ],
                    )?;
                }
                None => g.cond_br(tail, slow_bb, inner)?,
            }
        }
        None => g.cond_br(fast, fast_bb, slow_bb)?,
    }
    // (full, tail, the mask evaluated): the full blocks inside the sequence, the partial
    // blocks inside it (with `split`; by kind with `kinds`), the rest
    let all = p.mask.as_ref();
    let mut paths: Vec<(bool, bool, Option<&Function>, _)> = vec![(true, false, None, fast_bb)];
    if let Some((_, bb)) = &uni {
        paths.push((true, false, None, *bb));
    }
    if let Some(inner) = inner_bb {
        paths.push((false, false, all, inner));
    }
    if let Some(((l, lin_bb), (n, other_bb))) = &kinds {
        paths.push((false, false, Some(*l), *lin_bb));
        paths.push((false, false, Some(*n), *other_bb));
    }
    paths.push((false, true, all, slow_bb));
    for (full_path, tail_path, mask_fn, bb) in paths {
        let slow = !full_path;
        // the uniform path's reads, made once above
        let hoisted = match &uni {
            Some((tl, ub)) if *ub == bb => Some(&tl.values),
            _ => None,
        };
        g.b.position_at_end(bb);
        for (mi, nt, acc) in s
            .iter()
            .enumerate()
            .flat_map(|(mi, si)| si.iter().enumerate().map(move |(nt, a)| (mi, nt, a)))
        {
            let row_base = row_bases[mi];
            for (i, x) in acc.iter().enumerate() {
                let (dq, dkv) = (8 * (i as i64 / 2), nt as i64 * 8 + (i as i64 % 2));
                let q = g.add(row_base, g.c32(dq))?;
                let kv = g.add(col_base, g.c32(dkv))?;
                let q_in = row_inside(g, c, cx, q)?;
                let kv_in = g.icmp(IntPredicate::SLT, kv, cx.lkv)?;
                let e = Elem {
                    s: g.fmul(*x, cx.scale)?,
                    b: cx.b,
                    h: cx.h,
                    q,
                    kv,
                    inside: g.and(q_in, kv_in)?,
                    rel: match &rel_bases {
                        Some(r) => Some(g.add(r[mi], g.c32(dkv - dq))?),
                        None => None,
                    },
                };
                let pos = match &float_pos {
                    Some((col_base_f, forms)) => Some(PosF {
                        q: g.b.build_signed_int_to_float(q, g.f32, "")?,
                        kv: g.fadd(*col_base_f, g.cf((nt * 8 + i % 2) as f32))?,
                        forms,
                    }),
                    None => None,
                };
                let score = |e: Elem<'ctx>| -> R<FloatValue<'ctx>> {
                    match (&p.score, &bias, pos) {
                        (Some(_), Some((lin, cl)), Some(pos)) => {
                            let row = match lin.q {
                                0 => None,
                                1 => Some(pos.q),
                                _ => Some(g.b.build_float_neg(pos.q, "")?),
                            };
                            let row = match (row, lin.k) {
                                (Some(r), 0) => r,
                                (Some(r), k) => g.fadd(r, g.cf(k as f32))?,
                                (None, k) => g.cf(k as f32),
                            };
                            let row = g.fmul(row, *cl)?;
                            let b = match lin.kv {
                                0 => row,
                                1 => g.fma(pos.kv, *cl, row)?,
                                _ => g.fma(pos.kv, g.b.build_float_neg(*cl, "")?, row)?,
                            };
                            g.fma(*x, scale_log2, b)
                        }
                        (Some(f), _, _) if let Some(h) = hoisted => {
                            let vals = emit_values_hoisted(g, env, f, e, &[f.ret], pos, h)?;
                            let v = vals[f.ret.index()]
                                .ok_or(super::LlvmError::Internal("score not emitted"))?;
                            g.fmul(v.into_float_value(), g.cf(LOG2E))
                        }
                        (Some(f), _, _) => Ok(g.fmul(
                            emit_function_at(g, env, f, e, pos)?.into_float_value(),
                            g.cf(LOG2E),
                        )?),
                        (None, _, _) if cx.raw => Ok(*x),
                        (None, _, _) => g.fmul(*x, scale_log2),
                    }
                };
                let v = if !slow {
                    score(e)?
                } else {
                    let at = (mi * s[mi].len() + nt) * 4 + i;
                    let keep = match (bits, mask_fn) {
                        // the bit that `mask_bits` set before the wait (the kv bounds
                        // included)
                        (Some(b), _) => {
                            let w = g.geti(&b.words[at / 32])?;
                            let m = g.and(w, g.c32(1i64 << (at % 32)))?;
                            g.icmp(IntPredicate::NE, m, g.c32(0))?
                        }
                        // a partial block inside the sequence: every kv is below Lkv
                        (None, Some(f)) if split && !tail_path => {
                            emit_function(g, env, f, e)?.into_int_value()
                        }
                        (None, Some(f)) => {
                            g.and(kv_in, emit_function(g, env, f, e)?.into_int_value())?
                        }
                        (None, None) => kv_in,
                    };
                    // the score is evaluated only where the mask holds (checked mode reports
                    // only reads the oracle performs)
                    let e = Elem {
                        inside: g.and(e.inside, keep)?,
                        ..e
                    };
                    let sc = score(e)?;
                    g.selectf(keep, sc, g.cf(f32::NEG_INFINITY))?
                };
                g.set(&t.tiles[mi][nt][i], v)?;
            }
        }
        g.br(merge)?;
    }
    g.b.position_at_end(merge);
    Ok(t)
}
