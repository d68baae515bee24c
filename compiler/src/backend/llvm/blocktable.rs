//! The block-table kernel: builds, on the GPU, the block table the attention kernel reads,
//! for masks whose blocks depend on captured tensors (`Tier::Tensors`: document ids and
//! the like), so that a launch needs no host pass over the tensors and no upload.
//!
//! In: a [`Program`] with a mask and [`PtxOptions`] (arch, `q_block` x `kv_block` tiles,
//! checked mode; the other fields do not change the code). Out: the kernel function in an
//! LLVM module; its parameters are [`param_list`], its launch is one CTA of [`THREADS`]
//! threads per table row: grid = (NumQBlocks, maps over h, maps over b), where a mask that
//! does not read `h` (or `b`) has one map for all heads (batches), as in
//! `analysis::classify::build_block_maps`.
//!
//! Output format (the one `BlockMaps::flatten` produces and the attention kernel reads):
//! row `r = (b_map * n_h_maps + h_map) * NumQBlocks + q_block` writes its (begin, end)
//! pair at `row_start[2 r], row_start[2 r + 1]` and its runs `(start, end, full)` into
//! its own slot `runs[r * n_kv_blocks ..]` (a row holds at most `n_kv_blocks` runs), so
//! every row is written by its CTA alone, with no global scan.
//!
//! Per CTA (one q block of one map):
//! ```text
//! kv_lo..kv_hi = the q block's kv-block range of the mask's linear conjuncts
//!                (`Plan::table_skip`, `bounds::block_range` on the KvOffset params), or
//!                0..n_kv_blocks (no such conjunct, checked mode, or KvAllPartial set)
//! for each chunk of CHUNK kv blocks in kv_lo..kv_hi (the tiles outside are empty):
//!     each warp takes kv blocks j = chunk + warp, + WARPS, ...:
//!         a document mask `L && x == y` (`linear::SeparableEq`, fast mode): x over the
//!         q block's rows and y over the tile's columns, their ranges reduced over the
//!         warp; disjoint: empty; one value on both sides where the linear conjuncts'
//!         closed form holds on the whole tile (kv_full, trusted: a skip form without
//!         KvAllPartial) or there is no linear conjunct: full; either way done. Else:
//!         lane l evaluates the mask at (q, kv) for every in-range row q of the q block
//!         and kv = j * kv_block + 32 s + l (kv < Lkv only), s < kv_block / 32, ROWS
//!         rows per step spread over the tile, its first and last rows in the first
//!         step (their reads in flight together);
//!         seen_true / seen_false per lane; after each step a warp vote stops the tile
//!         once both were seen (partial; with `mask_kinds` also L false somewhere and N
//!         false somewhere L holds, or the rows left cannot change the kind: L holds on
//!         the whole tile by the trusted closed form, or N wherever L does by the ranges'
//!         one value; where L holds everywhere the ranges are not one value, so N is
//!         false somewhere L holds and the walk stops at its first true point) — not in
//!         checked mode, which evaluates every point so that every out-of-range read is
//!         recorded
//!         kind = vote(any true) ? (vote(any false) ? partial : full) : empty -> smem
//!     barrier; thread 0 merges the chunk's kinds into runs (adjacent equal kinds merge,
//!     empty blocks end a run); barrier
//! thread 0 writes the last run and the row's (begin, end)
//! ```
//! Skipping is sound because the mask implies its linear conjuncts: outside their range
//! it is false everywhere (the host passes `KvAllPartial` when their i32 arithmetic may
//! wrap for the launch, `classify::Implied::bounds`, since the range is over exact
//! integers). The classification is exact: full means the mask is true at every point of the tile
//! inside `0..Lq x 0..Lkv`, empty that it is true at none; it equals
//! `classify::brute_force_maps` wherever the mask is evaluated exactly (integer and
//! comparison ops; float math uses the same approximate instructions as the attention
//! kernel, so the table always agrees with what the attention kernel would evaluate).
//! Captured tensors are read exactly as the attention kernel reads them (`expr.rs`: indices
//! clamped; checked mode records the first out-of-range read whose guard held into the
//! same error words).

use super::bounds::block_range;
use super::expr::{Elem, Env, emit_function};
use super::gpu::{GLOBAL, Gpu, R};
use super::{KernelParam, LlvmError, PtxOptions};
use crate::analysis::linear::ClosedForm;
use crate::ir::Program;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};

/// Threads per CTA (8 warps; 32 were no faster on an H200, session 31: the rows walked
/// at every point of a tile are the builder's cost, see `linear::SeparableEq`).
pub const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// kv blocks classified between two compaction steps (one `u32` kind each in shared memory).
const CHUNK: u32 = 256;
/// Rows of a tile a warp evaluates per step of its row loop (their reads in flight
/// together; one row per step: the documents' builder 159 µs at B8 Lq512 Lkv8192 on an
/// H200, eight 154 µs, session 31).
const ROWS: u32 = 8;

/// Dynamic shared memory of the kernel: the kinds of one chunk.
pub fn smem_bytes() -> u32 {
    CHUNK * 4
}

/// The kernel's parameters, in launch order. `RowStart` and `Runs` are written. With a
/// skip form (`Plan::table_skip`), one i64 `KvOffset` per constraint and the i32 `KvAllPartial` flag;
/// with `device_lens` (`PtxOptions::device_lens`) `SeqLens` last.
pub fn param_list(
    p: &Program,
    skip: Option<&ClosedForm>,
    device_lens: Option<u32>,
) -> Vec<KernelParam> {
    use KernelParam::*;
    let mut v = vec![RowStart, Runs, Params, Err];
    v.extend((0..p.tensors.len() as u32).map(Tensor));
    v.extend([Lq, Lkv, NumQBlocks]);
    for (t, info) in p.tensors.iter().enumerate() {
        v.extend((0..info.dims.len() as u32).map(|dim| TensorDim {
            tensor: t as u32,
            dim,
        }));
    }
    if let Some(cf) = skip {
        v.extend((0..cf.constraints.len() as u32).map(KvOffset));
        v.push(KvAllPartial);
    }
    if device_lens.is_some() {
        v.push(SeqLens);
    }
    v
}

/// Builds the kernel `entry` into `module`.
pub(crate) fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    opts: &PtxOptions,
    skip: Option<&ClosedForm>,
    entry: &str,
) -> R<Module<'ctx>> {
    let mask = p.mask.as_ref().ok_or(LlvmError::Internal(
        "block table of a program without a mask",
    ))?;
    if !opts.kv_block.is_multiple_of(32) {
        return Err(LlvmError::Unsupported(format!(
            "block table with kv blocks of {}: needs a multiple of 32",
            opts.kv_block
        )));
    }
    if let Some(q0) = opts.device_lens
        && !p
            .params
            .get(q0 as usize)
            .is_some_and(|x| x.ty == crate::ir::Type::I32)
    {
        return Err(LlvmError::Unsupported(format!(
            "block table with lengths on the device: param {q0} is not an i32 param"
        )));
    }
    let params = param_list(p, skip, opts.device_lens);
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|k| match k {
            KernelParam::Lq
            | KernelParam::Lkv
            | KernelParam::NumQBlocks
            | KernelParam::KvAllPartial
            | KernelParam::TensorDim { .. } => ctx.i32_type().into(),
            KernelParam::KvOffset(_) => ctx.i64_type().into(),
            _ => gptr.into(),
        })
        .collect();
    let ft = ctx.void_type().fn_type(&tys, false);
    let func = module.add_function(entry, ft, None);
    func.set_call_conventions(71); // ptx_kernel: emitted as a .entry
    func.add_attribute(
        AttributeLoc::Function,
        ctx.create_string_attribute("nvvm.maxntid", &THREADS.to_string()),
    );
    // captured tensors and params are only read: their loads may leave the row loop
    let noalias = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
    let readonly = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("readonly"), 0);
    for (i, k) in params.iter().enumerate() {
        if matches!(k, KernelParam::Tensor(_) | KernelParam::Params) {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
            func.add_attribute(AttributeLoc::Param(i as u32), readonly);
        }
    }
    let g = Gpu::new(ctx, module, func);
    let start = g.open_body();
    body(&g, p, mask, opts, &params, skip)?;
    g.close_allocas(start)?;
    Ok(g.module)
}

fn body<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    mask: &crate::ir::Function,
    opts: &PtxOptions,
    params: &[KernelParam],
    skip: Option<&ClosedForm>,
) -> R<()> {
    let arg = |want: KernelParam| -> R<inkwell::values::BasicValueEnum<'ctx>> {
        let i = params
            .iter()
            .position(|k| *k == want)
            .ok_or(LlvmError::Internal("missing kernel param"))?;
        g.func
            .get_nth_param(i as u32)
            .ok_or(LlvmError::Internal("kernel param"))
    };
    let ptr = |want| -> R<PointerValue<'ctx>> { Ok(arg(want)?.into_pointer_value()) };
    let int = |want| -> R<IntValue<'ctx>> { Ok(arg(want)?.into_int_value()) };
    let (qbs, kvbs) = (opts.q_block as i64, opts.kv_block as i64);

    // ---- which row this CTA writes ---------------------------------------------------------
    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let (lq, lkv, nqb) = (
        int(KernelParam::Lq)?,
        int(KernelParam::Lkv)?,
        int(KernelParam::NumQBlocks)?,
    );
    let qb = g.ctaid('x')?;
    let h = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let n_h = sreg(g, "nctaid.y")?;
    let map = g.add(g.mul(b, n_h)?, h)?;
    let row = g.add(g.mul(map, nqb)?, qb)?;
    // (the table's layout: every row has room for the capacity's kv blocks)
    let nkv = g.udiv(g.add(lkv, g.c32(kvbs - 1))?, g.c32(kvbs))?;
    // `device_lens` (one map per batch, `b` the batch): this sequence's keys, its length
    // clamped into `0..=Lkv`, and the offset param's value for it, `length - Lq` (as the
    // attention kernel's `cta::place_tile`)
    let (lkv, shift) = match opts.device_lens {
        Some(_) => {
            let n = super::cta::sequence_len(g, ptr(KernelParam::SeqLens)?, g.zext64(b)?, lkv)?;
            (n, Some(g.sub(n, lq)?))
        }
        None => (lkv, None),
    };
    // this row's slot of runs (u32 run index; the runtime keeps the table under 2^32 runs)
    let slot = g.mul(row, nkv)?;
    let q0 = g.mul(qb, g.c32(qbs))?;
    let qn = g.iintr2("llvm.smin.i32", g.c32(qbs), g.sub(lq, q0)?)?;
    let row_start = ptr(KernelParam::RowStart)?;
    let runs = ptr(KernelParam::Runs)?;
    // ---- the kv blocks that may hold a true point: kv_lo..kv_hi ---------------------------------
    // (the range of the mask's linear conjuncts; every tile outside it is empty and is
    // never evaluated; the whole row without a skip form or with KvAllPartial set)
    // (and the tiles where every linear conjunct holds at every point: kv_full)
    let (kv_lo, kv_hi, kv_full) = match skip {
        Some(cf) => {
            let coefs: Vec<(i64, i64)> = cf
                .constraints
                .iter()
                .map(|c| (c.expr.q, c.expr.kv))
                .collect();
            let mut offsets: Vec<IntValue<'ctx>> = (0..coefs.len() as u32)
                .map(|i| int(KernelParam::KvOffset(i)))
                .collect::<R<_>>()?;
            // (`device_lens`: the host's offsets at the param's value 0, plus each
            // constraint's coefficient of it times this sequence's value)
            if let (Some(pi), Some(shift)) = (opts.device_lens, shift) {
                super::cta::shift_offsets(g, cf, pi, shift, &mut offsets)?;
            }
            let all = int(KernelParam::KvAllPartial)?;
            let [first, end, ff, fe] = block_range(
                g,
                &coefs,
                &offsets,
                Some(all),
                q0,
                qbs as u32,
                lq,
                lkv,
                kvbs as u32,
            )?;
            // (with KvAllPartial set no tile is known full: `kv_full` says nothing)
            let trusted = g.icmp(IntPredicate::EQ, all, g.c32(0))?;
            (first, end, Some((ff, fe, trusted)))
        }
        None => (g.c32(0), nkv, None),
    };
    // (`device_lens`: the tiles past this sequence's keys hold no point: empty)
    let kv_hi = match shift {
        Some(_) => {
            let nkv_b = g.udiv(g.add(lkv, g.c32(kvbs - 1))?, g.c32(kvbs))?;
            g.iintr2("llvm.smin.i32", kv_hi, nkv_b)?
        }
        None => kv_hi,
    };

    // ---- params and captured tensors (as in the attention kernel) -----------------------------
    let mut env = Env::load(g, p, opts.checked, &ptr, &int)?;
    if let (Some(pi), Some(shift)) = (opts.device_lens, shift) {
        env.params[pi as usize] = shift.into();
    }
    // `PtxOptions::mask_kinds`: the mask as `L && N`; a partial tile where one of them
    // holds at every point gets its own kind
    let kinds = super::score::mask_kinds(p, opts);

    // ---- state ----------------------------------------------------------------------------------
    let seen_t = g.var(g.i1, g.cbool(false))?;
    let seen_f = g.var(g.i1, g.cbool(false))?;
    // (with `kinds`) L false, N false at some point
    let seen_ln = match kinds {
        Some(_) => Some((g.var(g.i1, g.cbool(false))?, g.var(g.i1, g.cbool(false))?)),
        None => None,
    };
    let r_var = g.var(g.i32, g.c32(0))?;
    // a document mask's tiles from the ranges of its two sides (`linear::SeparableEq`;
    // not in checked mode, whose reads are all reported): the tile's kind, or -1 where
    // the ranges do not decide it and the rows are walked
    let sep = if opts.checked {
        None
    } else {
        crate::analysis::linear::separable_eq(mask)
    };
    let no_linear = crate::analysis::linear::implied_mask(mask).is_none();
    // (its query side's range over this CTA's rows, read once for every tile)
    let x_of_rows = match &sep {
        Some(sep) => Some(x_range(
            g,
            &env,
            sep,
            (b, h),
            q0,
            g.sub(qn, g.c32(1))?,
            lane,
            qbs,
        )?),
        None => None,
    };
    let kind_var = g.var(g.i32, g.c32(-1))?;
    // thread 0's run under construction: kind (0 empty, 1 partial, 2 full), start, count
    let cur_kind = g.var(g.i32, g.c32(0))?;
    let cur_start = g.var(g.i32, g.c32(0))?;
    let n_runs = g.var(g.i32, g.c32(0))?;
    let is_t0 = g.icmp(IntPredicate::EQ, tid, g.c32(0))?;
    let subcols = (kvbs / 32) as usize;

    let write_run = |start: IntValue<'ctx>, end: IntValue<'ctx>, kind: IntValue<'ctx>| -> R<()> {
        let n = g.geti(&n_runs)?;
        let at = g.mul(g.zext64(g.add(slot, n)?)?, g.c64(3))?;
        // run kind: 1 full, 0 partial; with `kinds` 2 (tile kind 3: N holds where L
        // does) and 3 (tile kind 4: L holds)
        let full = match kinds {
            Some(_) => g.selecti(
                g.icmp(IntPredicate::UGE, kind, g.c32(3))?,
                g.sub(kind, g.c32(1))?,
                g.selecti(
                    g.icmp(IntPredicate::EQ, kind, g.c32(2))?,
                    g.c32(1),
                    g.c32(0),
                )?,
            )?,
            None => {
                g.b.build_int_z_extend(g.icmp(IntPredicate::EQ, kind, g.c32(2))?, g.i32, "")?
            }
        };
        g.store(gep_u32(g, runs, at)?, start)?;
        g.store(gep_u32(g, runs, g.add(at, g.c64(1))?)?, end)?;
        g.store(gep_u32(g, runs, g.add(at, g.c64(2))?)?, full)?;
        g.set(&n_runs, g.add(n, g.c32(1))?)
    };

    g.for_range(kv_lo, kv_hi, g.c32(CHUNK as i64), |c0| {
        let cend = g.iintr2("llvm.smin.i32", g.add(c0, g.c32(CHUNK as i64))?, kv_hi)?;
        // ---- classify this chunk's tiles, one warp per tile
        g.for_range(g.add(c0, warp)?, cend, g.c32(WARPS as i64), |j| {
            let kv0 = g.mul(j, g.c32(kvbs))?;
            let cols: Vec<(IntValue<'ctx>, IntValue<'ctx>)> = (0..subcols)
                .map(|s| {
                    let kv = g.add(g.add(kv0, g.c32(32 * s as i64))?, lane)?;
                    Ok((kv, g.icmp(IntPredicate::SLT, kv, lkv)?))
                })
                .collect::<R<_>>()?;
            // the linear conjuncts hold at every point of the tile: the trusted closed
            // form's full range
            let l_holds = match kv_full {
                Some((ff, fe, trusted)) => g.and(
                    trusted,
                    g.and(
                        g.icmp(IntPredicate::SGE, j, ff)?,
                        g.icmp(IntPredicate::SLT, j, fe)?,
                    )?,
                )?,
                None => g.cbool(false),
            };
            let fast = match &sep {
                Some(sep) => {
                    let tile = RangeTile { b, h, q0 };
                    let x = x_of_rows.ok_or(LlvmError::Internal("x range"))?;
                    let no_form = kv_full.is_none() && no_linear;
                    range_kind(g, &env, sep, &tile, x, &cols, (l_holds, no_form))?
                }
                None => (g.c32(-1), g.cbool(false)),
            };
            // (`n_all`: x == y at every point, so N holds wherever L does)
            let (fast, n_all) = fast;
            g.set(&kind_var, fast)?;
            // (with `kinds`) L is never false on the tile, so the walk need not wait to
            // see it false before it stops
            let l_all = match &seen_ln {
                Some(_) => l_holds,
                None => g.cbool(false),
            };
            // (a document tile walked where L holds everywhere: its ids are not one value
            // on both sides (that tile is full by the ranges), so x != y at some point, and
            // there, every guard of N's reads holding, N is false and L true: known before
            // the walk, which then stops at its first true point)
            let n_false = match &sep {
                Some(_) => g.and(l_all, g.xor(n_all, g.cbool(true))?)?,
                None => g.cbool(false),
            };
            g.if_then(g.icmp(IntPredicate::SLT, fast, g.c32(0))?, || {
                g.set(&seen_t, g.cbool(false))?;
                g.set(&seen_f, n_false)?;
                if let Some((seen_fl, seen_fn)) = &seen_ln {
                    g.set(seen_fl, g.cbool(false))?;
                    g.set(seen_fn, n_false)?;
                }
                g.set(&r_var, g.c32(0))?;
                // rows 0..qn (qn >= 1) ROWS at a time, step r taking rows r, r + stride,
                // .., r + (ROWS - 2) stride and qn - 1 - r (stride = ceil(qn / ROWS):
                // together every row): a do-while loop, so that loads of the kv-only part
                // of the mask are executed on entry and may be hoisted out of it; the ROWS
                // rows' reads (a row's document id) are independent, so their latencies
                // overlap (one row per step waited for each read in turn: a block that
                // holds no true point walks every row); spread over the tile, so that the
                // first step already sees its first and last rows and each part of it at
                // least stride rows tall (a document starting in the tile's last rows: the
                // rows from the top found it last); rows past qn repeat row qn - 1, which
                // changes no vote and reads nothing new
                let stride = g.udiv(g.add(qn, g.c32(ROWS as i64 - 1))?, g.c32(ROWS as i64))?;
                let rows = g.block("tile_rows");
                let done = g.block("tile_done");
                g.br(rows)?;
                g.b.position_at_end(rows);
                let r = g.geti(&r_var)?;
                let last = g.sub(qn, g.c32(1))?;
                let (mut t, mut f) = (g.geti(&seen_t)?, g.geti(&seen_f)?);
                let (mut fl, mut fnn) = match &seen_ln {
                    Some((seen_fl, seen_fn)) => (g.geti(seen_fl)?, g.geti(seen_fn)?),
                    None => (g.cbool(false), g.cbool(false)),
                };
                let points = (0..ROWS).flat_map(|u| cols.iter().map(move |c| (u, *c)));
                for (u, (kv, kv_in)) in points {
                    let ru = if u + 1 < ROWS {
                        let ru = g.add(r, g.mul(stride, g.c32(u as i64))?)?;
                        g.iintr2("llvm.smin.i32", ru, last)?
                    } else {
                        // (the last of a step's rows from the tile's end: the first step
                        // sees its first and last rows)
                        g.iintr2("llvm.smax.i32", g.sub(last, r)?, g.c32(0))?
                    };
                    let q = g.add(q0, ru)?;
                    let e = Elem {
                        s: g.cf(0.0),
                        b,
                        h,
                        q,
                        kv,
                        inside: kv_in,
                        rel: None,
                    };
                    let m = match &kinds {
                        Some((l, n)) => {
                            let lv = emit_function(g, &env, l, e)?.into_int_value();
                            let nv = emit_function(g, &env, n, e)?.into_int_value();
                            // (N counts as false only where L holds: a tile where N
                            // holds wherever L does is L's alone, whatever N reads
                            // where L is false, e.g. its guarded reads' zeros)
                            fl = g.or(fl, g.and(kv_in, g.xor(lv, g.cbool(true))?)?)?;
                            let n_false = g.and(lv, g.xor(nv, g.cbool(true))?)?;
                            fnn = g.or(fnn, g.and(kv_in, n_false)?)?;
                            g.and(lv, nv)?
                        }
                        None => emit_function(g, &env, mask, e)?.into_int_value(),
                    };
                    t = g.or(t, g.and(kv_in, m)?)?;
                    f = g.or(f, g.and(kv_in, g.xor(m, g.cbool(true))?)?)?;
                }
                g.set(&seen_t, t)?;
                g.set(&seen_f, f)?;
                if let Some((seen_fl, seen_fn)) = &seen_ln {
                    g.set(seen_fl, fl)?;
                    g.set(seen_fn, fnn)?;
                }
                let r1 = g.add(r, g.c32(1))?;
                g.set(&r_var, r1)?;
                let mut more = g.icmp(IntPredicate::SLT, r1, stride)?;
                if !opts.checked {
                    // partial as soon as the warp has seen both values (with `kinds`: and
                    // L false somewhere and N false somewhere L holds, so that neither
                    // kind applies; or the one of them the rows left cannot change:
                    // L holds on the whole tile, `l_all`, or N wherever L does, `n_all`)
                    let both = match kinds {
                        Some(_) => g.and(
                            g.vote_any(t)?,
                            g.and(
                                g.or(g.vote_any(fl)?, l_all)?,
                                g.or(g.vote_any(fnn)?, n_all)?,
                            )?,
                        )?,
                        None => g.and(g.vote_any(t)?, g.vote_any(f)?)?,
                    };
                    more = g.and(more, g.xor(both, g.cbool(true))?)?;
                }
                g.cond_br(more, rows, done)?;
                g.b.position_at_end(done);
                let any_t = g.vote_any(g.geti(&seen_t)?)?;
                let any_f = g.vote_any(g.geti(&seen_f)?)?;
                // tile kinds: 0 empty, 1 partial, 2 full; with `kinds` 3 (partial, N holds
                // wherever L does) and 4 (partial, L holds everywhere)
                let partial = match &seen_ln {
                    Some((seen_fl, seen_fn)) => {
                        let any_fl = g.vote_any(g.geti(seen_fl)?)?;
                        let any_fn = g.vote_any(g.geti(seen_fn)?)?;
                        g.selecti(any_fn, g.selecti(any_fl, g.c32(1), g.c32(4))?, g.c32(3))?
                    }
                    None => g.c32(1),
                };
                let kind = g.selecti(any_t, g.selecti(any_f, partial, g.c32(2))?, g.c32(0))?;
                g.set(&kind_var, kind)
            })?;
            let kind = g.geti(&kind_var)?;
            g.if_then(g.icmp(IntPredicate::EQ, lane, g.c32(0))?, || {
                let off = g.shl(g.sub(j, c0)?, g.c32(2))?;
                g.store(g.smem_at(off)?, kind)
            })
        })?;
        g.barrier()?;
        // ---- thread 0 merges the chunk into runs
        g.if_then(is_t0, || {
            g.for_range(c0, cend, g.c32(1), |j| {
                let kind =
                    g.b.build_load(g.i32, g.smem_at(g.shl(g.sub(j, c0)?, g.c32(2))?)?, "")?
                        .into_int_value();
                let cur = g.geti(&cur_kind)?;
                g.if_then(g.icmp(IntPredicate::NE, kind, cur)?, || {
                    g.if_then(g.icmp(IntPredicate::NE, cur, g.c32(0))?, || {
                        write_run(g.geti(&cur_start)?, j, cur)
                    })?;
                    g.set(&cur_kind, kind)?;
                    g.set(&cur_start, j)
                })
            })
        })?;
        g.barrier()
    })?;

    // ---- the last run and the row's (begin, end) ------------------------------------------------
    g.if_then(is_t0, || {
        let cur = g.geti(&cur_kind)?;
        // the tiles from kv_hi on are empty
        g.if_then(g.icmp(IntPredicate::NE, cur, g.c32(0))?, || {
            write_run(g.geti(&cur_start)?, kv_hi, cur)
        })?;
        let at = g.mul(g.zext64(row)?, g.c64(2))?;
        g.store(gep_u32(g, row_start, at)?, slot)?;
        g.store(
            gep_u32(g, row_start, g.add(at, g.c64(1))?)?,
            g.add(slot, g.geti(&n_runs)?)?,
        )
    })?;
    g.b.build_return(None)?;
    Ok(())
}

/// One tile of [`range_kind`]: its batch and head (the map's) and the q block's first row.
struct RangeTile<'ctx> {
    b: IntValue<'ctx>,
    h: IntValue<'ctx>,
    q0: IntValue<'ctx>,
}

/// `(lo, hi)` reduced over the warp: the smallest `lo` and the largest `hi` of its lanes.
fn warp_range<'ctx>(
    g: &Gpu<'ctx>,
    (mut lo, mut hi): (IntValue<'ctx>, IntValue<'ctx>),
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    for w in [16, 8, 4, 2, 1] {
        lo = g.iintr2("llvm.smin.i32", lo, g.shfl_xor_i32(lo, w)?)?;
        hi = g.iintr2("llvm.smax.i32", hi, g.shfl_xor_i32(hi, w)?)?;
    }
    Ok((lo, hi))
}

/// The range `(min, max)` of a document mask's query side `x` (`linear::SeparableEq`)
/// over the q block's rows `q0 ..= q0 + last` (lane l: rows l, l + 32, ..; past the last
/// row the last again), reduced over the warp: the same for every tile of the row, so
/// read once per CTA.
#[allow(clippy::too_many_arguments)]
fn x_range<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    sep: &crate::analysis::linear::SeparableEq,
    (b, h): (IntValue<'ctx>, IntValue<'ctx>),
    q0: IntValue<'ctx>,
    last: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    qbs: i64,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let min = |a, b| g.iintr2("llvm.smin.i32", a, b);
    let max = |a, b| g.iintr2("llvm.smax.i32", a, b);
    let (mut xlo, mut xhi) = (g.c32(i32::MAX as i64), g.c32(i32::MIN as i64));
    for k in 0..(qbs / 32) {
        let r = min(g.add(lane, g.c32(32 * k))?, last)?;
        let e = Elem {
            s: g.cf(0.0),
            b,
            h,
            q: g.add(q0, r)?,
            kv: g.c32(0),
            inside: g.cbool(true),
            rel: None,
        };
        let x = emit_function(g, env, &sep.x, e)?.into_int_value();
        xlo = min(xlo, x)?;
        xhi = max(xhi, x)?;
    }
    warp_range(g, (xlo, xhi))
}

/// A document mask's tile kind from the ranges of its two sides (`linear::SeparableEq`,
/// module docs): `x` over the q block's rows ([`x_range`]), `y` over the tile's columns
/// below Lkv (`cols`), reduced over the warp; 0 (empty) where the ranges are disjoint, 2
/// (full) where both are one value and the linear conjuncts hold on the whole tile
/// (`l_holds`: the trusted closed form's full range) or there is neither a linear
/// conjunct nor a closed form (`no_form`); else -1 (the rows are walked). Also whether both are the same one value:
/// then `x == y` at every point, and N (`x == y` with its reads guarded by L's conjuncts)
/// holds wherever L does.
#[allow(clippy::too_many_arguments)]
fn range_kind<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    sep: &crate::analysis::linear::SeparableEq,
    t: &RangeTile<'ctx>,
    x: (IntValue<'ctx>, IntValue<'ctx>),
    cols: &[(IntValue<'ctx>, IntValue<'ctx>)],
    (l_holds, no_form): (IntValue<'ctx>, bool),
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let e = |q, kv, inside| Elem {
        s: g.cf(0.0),
        b: t.b,
        h: t.h,
        q,
        kv,
        inside,
        rel: None,
    };
    let (imin, imax) = (g.c32(i32::MAX as i64), g.c32(i32::MIN as i64));
    let min = |a, b| g.iintr2("llvm.smin.i32", a, b);
    let max = |a, b| g.iintr2("llvm.smax.i32", a, b);
    let (xlo, xhi) = x;
    let (mut ylo, mut yhi) = (imin, imax);
    for &(kv, kv_in) in cols {
        let y = emit_function(g, env, &sep.y, e(t.q0, kv, kv_in))?.into_int_value();
        ylo = min(ylo, g.selecti(kv_in, y, imin)?)?;
        yhi = max(yhi, g.selecti(kv_in, y, imax)?)?;
    }
    let (ylo, yhi) = warp_range(g, (ylo, yhi))?;
    // no point has x == y (no column below Lkv: ylo > yhi, also none)
    let lt = |a, b| g.icmp(IntPredicate::SLT, a, b);
    let eq = |a, b| g.icmp(IntPredicate::EQ, a, b);
    let disjoint = g.or(lt(xhi, ylo)?, lt(yhi, xlo)?)?;
    // x == y at every point: the linear conjuncts' kind
    let one = g.and(g.and(eq(xlo, xhi)?, eq(ylo, yhi)?)?, eq(xlo, ylo)?)?;
    // (full where the trusted closed form says the linear conjuncts hold on the whole
    // tile, or where there is no linear conjunct; elsewhere the rows are walked: the
    // closed form's range is not exact about where they hold nowhere, e.g. an empty band)
    let one_kind = if no_form {
        g.c32(2)
    } else {
        g.selecti(l_holds, g.c32(2), g.c32(-1))?
    };
    let kind = g.selecti(disjoint, g.c32(0), g.selecti(one, one_kind, g.c32(-1))?)?;
    Ok((kind, one))
}

/// A special register (`%nctaid.y`, ...) as i32.
fn sreg<'ctx>(g: &Gpu<'ctx>, name: &str) -> R<IntValue<'ctx>> {
    Ok(g.call(
        &format!("llvm.nvvm.read.ptx.sreg.{name}"),
        Some(g.i32.into()),
        &[],
    )?
    .ok_or(LlvmError::Internal("special register"))?
    .into_int_value())
}

/// `base + 4 * index` (index i64) in the global address space.
fn gep_u32<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
) -> R<PointerValue<'ctx>> {
    g.gep_bytes(base, g.mul(index, g.c64(4))?)
}

#[cfg(test)]
mod tests {
    use crate::analysis::blockmap::BlockKind;
    use crate::analysis::classify::brute_force_maps;
    use crate::analysis::linear::{ClosedForm, SeparableEq, separable_eq, split_conjuncts};
    use crate::interp::{Args, Bindings, BoundTensor, TensorData, eval};
    use crate::ir::{Program, Scalar};
    use crate::shape::Shape;

    /// One case of the document-mask tests: an example's program, its mask's two sides,
    /// the closed form of its linear conjuncts (the plan's, as the runtime passes it), a
    /// shape (B = 2), tiles, ids and the window param.
    struct DocCase<'a> {
        name: String,
        p: &'a Program,
        sep: &'a SeparableEq,
        cf: Option<&'a ClosedForm>,
        shape: Shape,
        bind: Bindings,
        tiles: (usize, usize),
        sorted: bool,
        window: i32,
    }

    /// Every document example (`document_causal`, `document_sliding_causal`,
    /// `document_alibi`) x the windows 300, 64, 0 and -5 (an empty band) x `shapes`
    /// (`(Lq, Lkv, q_block, kv_block, sorted, ids)`: B = 2, ids drawn from `0..ids` by a
    /// xorshift seeded with `seed`, sorted per sequence or not), each handed to `f`.
    fn for_each_doc_case(
        seed: u64,
        shapes: &[(usize, usize, usize, usize, bool, u64)],
        mut f: impl FnMut(&DocCase),
    ) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for file in [
            "document_causal",
            "document_sliding_causal",
            "document_alibi",
        ] {
            let src = std::fs::read_to_string(dir.join(format!("{file}.attn"))).unwrap();
            let programs: Vec<Program> = crate::compile_source(&src).unwrap().programs;
            let p = programs.iter().find(|p| p.name == file).unwrap();
            let sep = separable_eq(p.mask.as_ref().unwrap())
                .unwrap_or_else(|| panic!("{file}: separable"));
            let plan = crate::plan::Plan::new(p);
            let cf = plan.table_skip(false).cloned();
            for window in [300, 64, 0, -5] {
                for &(lq, lkv, qb, kvb, sorted, ids) in shapes {
                    let shape = Shape {
                        b: 2,
                        hq: 1,
                        hkv: 1,
                        lq,
                        lkv,
                        d: 64,
                        dv: 64,
                    };
                    let n = lq.max(lkv);
                    let mut data: Vec<i32> = (0..2 * n).map(|_| (next() % ids) as i32).collect();
                    if sorted {
                        for b in 0..2 {
                            data[b * n..(b + 1) * n].sort();
                        }
                    }
                    let bind = Bindings {
                        params: p.params.iter().map(|_| Scalar::I32(window)).collect(),
                        tensors: vec![BoundTensor {
                            dims: vec![2, n],
                            data: TensorData::I32(data),
                        }],
                    };
                    f(&DocCase {
                        name: format!(
                            "{file} window {window} {shape:?} {qb}x{kvb} sorted {sorted}"
                        ),
                        p,
                        sep: &sep,
                        cf: cf.as_ref(),
                        shape,
                        bind,
                        tiles: (qb, kvb),
                        sorted,
                        window,
                    });
                }
            }
        }
    }

    /// The builder's range rule for document masks (`body`: `linear::SeparableEq`) restated
    /// on the host: per tile, `x` over the q block's rows below Lq and `y` over its columns
    /// below Lkv; disjoint ranges: empty; one value on both sides where the closed form's
    /// full range holds the tile (or the mask has no linear conjunct): full; else the rows
    /// are walked (undecided). On every document example (windows 300, 64, 0 and an empty
    /// band, -5), ids sorted and not, odd shapes and both tile sizes, whatever the rule
    /// decides is the exact (brute-force) kind, and it decides a quarter of the tiles of
    /// sorted ids or more.
    #[test]
    fn range_rule_agrees_with_brute_force() {
        let (mut decided, mut tiles) = (0usize, 0usize);
        let shapes = [
            (300, 300, 128, 128, true, 5),
            (257, 333, 64, 64, true, 5),
            (130, 700, 128, 64, false, 5),
            (200, 200, 64, 128, true, 5),
        ];
        for_each_doc_case(0x9e3779b97f4a7c15, &shapes, |c| {
            let (p, (qb, kvb), Shape { lq, lkv, .. }) = (c.p, c.tiles, c.shape);
            let exact = brute_force_maps(p, &c.shape, qb, kvb, &c.bind).unwrap();
            let bounds = c.cf.and_then(|cf| cf.bounds(&c.bind.params));
            let mut s = Vec::new();
            let mut at = |f, b: usize, q: usize, kv: usize| {
                let a = Args::at(0.0, [b, 0, q, kv]);
                eval(f, p, a, &c.bind, &mut s).unwrap().as_i32()
            };
            for b in 0..2 {
                for i in 0..lq.div_ceil(qb) {
                    let rows = i * qb..((i + 1) * qb).min(lq);
                    let xs: Vec<i32> = rows.clone().map(|q| at(&c.sep.x, b, q, 0)).collect();
                    let (xlo, xhi) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
                    let full = bounds.as_ref().map(|bd| {
                        ClosedForm::row(bd, rows.start as i64, rows.end as i64 - 1, lkv, kvb)
                    });
                    for j in 0..lkv.div_ceil(kvb) {
                        let ys: Vec<i32> = (j * kvb..((j + 1) * kvb).min(lkv))
                            .map(|kv| at(&c.sep.y, b, 0, kv))
                            .collect();
                        let (ylo, yhi) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
                        let in_full = match &full {
                            Some(r) => (r.full_first..r.full_end).contains(&j),
                            None => c.cf.is_none(),
                        };
                        let rule = if xhi < ylo || yhi < xlo {
                            Some(BlockKind::Empty)
                        } else if xlo == xhi && ylo == yhi && xlo == ylo && in_full {
                            Some(BlockKind::Full)
                        } else {
                            None
                        };
                        tiles += c.sorted as usize;
                        if let Some(k) = rule {
                            decided += c.sorted as usize;
                            let want = exact.get(b, 0).kind(i, j);
                            assert_eq!(k, want, "{}: b {b} tile ({i}, {j})", c.name);
                        }
                    }
                }
            }
        });
        // (sorted ids, about 5 documents per sequence: most tiles of a few hundred
        // positions hold a document's edge, and those are walked)
        assert!(
            decided * 4 > tiles,
            "{decided} of {tiles} tiles of sorted ids decided"
        );
    }

    /// The builder's whole classification of a document mask with `mask_kinds` (`body`)
    /// restated on the host: the range rule, then for the tiles it leaves the walk — ROWS
    /// rows a step spread over the tile (rows r, r + stride, .., and qn - 1 - r), L and N
    /// (`split_conjuncts`) evaluated by the interpreter at each, stopping once the rows
    /// left cannot change the kind (t && (L false seen || L holds everywhere) && (N false
    /// where L holds seen || the ids one value), N false known before the walk where L
    /// holds everywhere) — gives every tile its exact kind, and every partial tile the
    /// run kind the attention kernel may read: 2 where N holds wherever L does (the
    /// interpreter at every point), else 3 where L holds at every point, else 0. The GPU
    /// test `gpu_block_tables_match_brute_force` checks the generated kernel the same way;
    /// this one runs without a GPU and also bounds the walk: on sorted ids no table row's
    /// tiles take more than 4 steps in all for one warp of 8 (a document starting in a
    /// tile's last rows walked all 16 before session 32; windows of 64 and more).
    #[test]
    fn walk_gives_the_exact_kinds_in_few_steps() {
        const ROWS: usize = super::ROWS as usize;
        let mut walked = 0usize;
        let shapes = [
            (300, 300, 128, 128, true, 5),
            (257, 333, 64, 64, true, 5),
            (130, 700, 128, 64, false, 5),
            (512, 1024, 128, 128, true, 40),
            (200, 200, 64, 128, true, 3),
            // (unsorted ids from a wide range: a tile's equal pairs are few, so its first
            // true point is often past the first step, or absent)
            (300, 300, 128, 128, false, 3000),
            (257, 333, 64, 64, false, 2000),
        ];
        for_each_doc_case(0x2545f4914f6cdd1d, &shapes, |c| {
            let (p, (qb, kvb), Shape { lq, lkv, .. }) = (c.p, c.tiles, c.shape);
            let (l, n) = split_conjuncts(p.mask.as_ref().unwrap()).unwrap();
            let exact = brute_force_maps(p, &c.shape, qb, kvb, &c.bind).unwrap();
            let bounds = c.cf.and_then(|cf| cf.bounds(&c.bind.params));
            let mut s = Vec::new();
            let mut at = |f, b: usize, q: usize, kv: usize| {
                eval(f, p, Args::at(0.0, [b, 0, q, kv]), &c.bind, &mut s).unwrap()
            };
            let case = &c.name;
            for b in 0..2 {
                for i in 0..lq.div_ceil(qb) {
                    let rows = i * qb..((i + 1) * qb).min(lq);
                    let qn = rows.len();
                    let xs: Vec<i32> = rows
                        .clone()
                        .map(|q| at(&c.sep.x, b, q, 0).as_i32())
                        .collect();
                    let (xlo, xhi) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
                    let full = bounds.as_ref().map(|bd| {
                        ClosedForm::row(bd, rows.start as i64, rows.end as i64 - 1, lkv, kvb)
                    });
                    // one warp's steps per tile j % 8 (the builder's 8 warps)
                    let mut warps = [0usize; 8];
                    for j in 0..lkv.div_ceil(kvb) {
                        let cols = j * kvb..((j + 1) * kvb).min(lkv);
                        let ys: Vec<i32> = cols
                            .clone()
                            .map(|kv| at(&c.sep.y, b, 0, kv).as_i32())
                            .collect();
                        let (ylo, yhi) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
                        let l_all = match &full {
                            Some(r) => (r.full_first..r.full_end).contains(&j),
                            None => false,
                        };
                        let one = xlo == xhi && ylo == yhi && xlo == ylo;
                        let want = exact.get(b, 0).kind(i, j);
                        // (the tiles outside the closed form's range: never evaluated, empty)
                        if full
                            .as_ref()
                            .is_some_and(|r| !(r.first..r.end).contains(&j))
                        {
                            assert_eq!(want, BlockKind::Empty, "{case}: b {b} tile ({i}, {j})");
                            continue;
                        }
                        // (tile kind, run kind of a partial tile)
                        let got = if xhi < ylo || yhi < xlo {
                            (BlockKind::Empty, None)
                        } else if one && l_all {
                            (BlockKind::Full, None)
                        } else {
                            walked += 1;
                            let stride = qn.div_ceil(ROWS);
                            let known = l_all && !one;
                            let (mut t, mut f, mut fl, mut fnn) = (false, known, false, known);
                            let mut steps = 0;
                            for r in 0..stride {
                                steps += 1;
                                let picked = (0..ROWS).map(|u| {
                                    if u + 1 < ROWS {
                                        (r + stride * u).min(qn - 1)
                                    } else {
                                        (qn - 1).saturating_sub(r)
                                    }
                                });
                                for row in picked {
                                    for kv in cols.clone() {
                                        let q = rows.start + row;
                                        let lv = at(&l, b, q, kv).as_bool();
                                        let nv = at(&n, b, q, kv).as_bool();
                                        t |= lv && nv;
                                        f |= !(lv && nv);
                                        fl |= !lv;
                                        fnn |= lv && !nv;
                                    }
                                }
                                if t && (fl || l_all) && (fnn || one) {
                                    break;
                                }
                            }
                            warps[j % 8] += steps;
                            let run = if !fnn {
                                2
                            } else if !fl {
                                3
                            } else {
                                0
                            };
                            match (t, f) {
                                (false, _) => (BlockKind::Empty, None),
                                (true, false) => (BlockKind::Full, None),
                                (true, true) => (BlockKind::Partial, Some(run)),
                            }
                        };
                        assert_eq!(got.0, want, "{case}: b {b} tile ({i}, {j})");
                        if let Some(kind) = got.1 {
                            // the kinds by the interpreter at every point of the tile
                            let (mut n_where_l, mut l_everywhere) = (true, true);
                            for q in rows.clone() {
                                for kv in cols.clone() {
                                    let lv = at(&l, b, q, kv).as_bool();
                                    l_everywhere &= lv;
                                    n_where_l &= !lv || at(&n, b, q, kv).as_bool();
                                }
                            }
                            let want = if n_where_l {
                                2
                            } else if l_everywhere {
                                3
                            } else {
                                0
                            };
                            assert_eq!(
                                kind, want,
                                "{case}: b {b} partial tile ({i}, {j}) run kind"
                            );
                        }
                    }
                    // (not the degenerate windows: 0, where N holds wherever L does but the
                    // ids are not one value, walks every row to learn it; an empty band's
                    // tiles hold no true point)
                    let window_ok = p.params.is_empty() || c.window >= 64;
                    if c.sorted && qb == 128 && kvb == 128 && window_ok {
                        let most = warps.iter().max().unwrap();
                        assert!(
                            *most <= 4,
                            "{case}: b {b} row {i}: a warp walks {most} steps"
                        );
                    }
                }
            }
        });
        assert!(walked > 100, "{walked} tiles walked");
    }
}
