//! The kernel generator: one Cranelift function per attention that runs one work item
//! (batch b, query head h, query tile qt) of the fused flash-attention forward pass.
//!
//! In: a verified [`Program`], [`CpuOptions`] and the JIT module (for imports). Out: the
//! Cranelift [`Function`] `kernel(ctx, tile, b, h, qt) -> i32` (0, or 1 after recording a
//! checked-mode out-of-range read in the tile) and the number of `q`-slots its tile needs.
//!
//! The generated code reads like the algorithm:
//!
//! ```text
//! begin(tile, Q rows, nrows, scale)              // pack scale·Qᵀ, m = -inf, l = 0, acc = 0
//! <mask/score values that depend on b, h, params only>
//! for i in rows: <values that depend on q only> -> tile.qslots
//! for run in blockmap.row(b, h, qt):
//!   for kb in run.start..run.end:
//!     qk(tile, K block, ncols)                   // Sᵀ = K·(scale·Qᵀ), tile-sized
//!     if run.full { for j, i: S = score(S, ...) }                 (skipped if no score)
//!     else        { for j, i: S = mask(...) ? score(S, ...) : -inf }
//!     softmax_pv(tile, V block, ncols)           // online softmax + acc += P·V
//! end(tile, O rows, LSE rows)                    // O = acc / l, LSE = m + ln l
//! ```
//!
//! With `CpuOptions::doc_tiles` `qt` is a tile of the document list (`Ctx::doc_tiles`):
//! its rows `row0 + qi bq ..` end at its document's end `row0 + rows`, its kv blocks start
//! at `row0` and its keys end there too, and its runs are row `qt` of the table.
//!
//! With `CpuOptions::kv_rows` K and V are tables of page pointers and `qk`/`softmax_pv`
//! are their `_rows` forms, which take the block's first key and walk the pages (a
//! decoding step reading a paged cache in place).
//!
//! Columns `>= Lkv` never exist (`ncols` bounds every loop) and rows `>= Lq` are padding.

// `x.as_deref_mut()` on an `Option<&mut Lowering>` is the reborrow that lets one lowering
// be used at several sites; clippy reads it as a no-op.
#![allow(clippy::needless_option_as_deref)]

use super::abi::off;
use super::builder::Gen;
use super::diag::Diagonals;
use super::lower::{Env, Level, Lowering, TensorVals, VEnv, vselect};
use super::micro;
use super::{CpuError, CpuOptions};
use crate::ir::Program;
use cranelift_codegen::ir::{
    AbiParam, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value, types,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::Module;

/// Which per-element pass a block needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Full block: score only.
    Score,
    /// Partial block: mask, then score where it holds.
    MaskScore,
}

/// The generated kernel and the tile geometry it expects.
pub struct Generated {
    pub func: Function,
    pub slots: u32,
    /// Imported symbols in declaration order (`fn0`, `fn1`, ... of the CLIF text).
    pub imports: Vec<&'static str>,
}

pub const KERNEL_NAME: &str = "attnc_kernel";

/// The signature of the generated kernel: `(ctx, tile, b, h, qt) -> status`.
pub fn kernel_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..5 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig.returns.push(AbiParam::new(types::I32));
    sig
}

pub fn generate(
    program: &Program,
    opts: &CpuOptions,
    module: &mut JITModule,
    fctx: &mut FunctionBuilderContext,
) -> Result<Generated, CpuError> {
    let call_conv = module.isa().default_call_conv();
    let mut func =
        Function::with_name_signature(UserFuncName::user(0, 0), kernel_signature(call_conv));
    let mut mask = program
        .mask
        .as_ref()
        .map(|f| Lowering::new(f, program, opts.checked, 0));
    let first = mask.as_ref().map_or(0, |m| m.n_slots());
    let mut score = program
        .score
        .as_ref()
        .map(|f| Lowering::new(f, program, opts.checked, first));
    let mut slots = first + score.as_ref().map_or(0, |s| s.n_slots());
    // the score's relative-position values, tabulated per key block (fast mode)
    let mut diag = match (&mut score, opts.checked) {
        (Some(sc), false) if opts.diagonal_tables => Diagonals::find(
            sc.f,
            program,
            &[sc.f.ret],
            slots,
            opts.q_block,
            opts.kv_block,
        )
        .inspect(|d| {
            sc.tabulate(d.values());
        }),
        _ => None,
    };
    slots += diag.as_ref().map_or(0, Diagonals::n_slots);
    let imports;
    {
        let b = FunctionBuilder::new(&mut func, fctx);
        let mut g = Gen {
            b,
            module,
            imports: Vec::new(),
            call_conv,
        };
        body(
            &mut g,
            program,
            opts,
            mask.as_mut(),
            score.as_mut(),
            diag.as_mut(),
        )?;
        g.b.seal_all_blocks();
        let cfg = g.module.isa().frontend_config();
        imports = g.imports.iter().map(|(n, _)| *n).collect();
        g.b.finalize(cfg);
    }
    Ok(Generated {
        func,
        slots,
        imports,
    })
}

fn body<'p>(
    g: &mut Gen,
    program: &Program,
    opts: &CpuOptions,
    mut mask: Option<&mut Lowering<'p>>,
    mut score: Option<&mut Lowering<'p>>,
    mut diag: Option<&mut Diagonals<'p>>,
) -> Result<(), CpuError> {
    let (bq, bkv) = (opts.q_block as i64, opts.kv_block as i64);
    let i64t = types::I64;
    let entry = g.b.create_block();
    g.b.append_block_params_for_function_params(entry);
    g.b.switch_to_block(entry);
    let [ctx, tile, bi, hi, qt] =
        <[Value; 5]>::try_from(g.b.block_params(entry)).expect("five params");

    // ---- launch geometry
    let hq = g.ld(i64t, ctx, off::CTX_HQ);
    let hkv = g.ld(i64t, ctx, off::CTX_HKV);
    let lq = g.ld(i64t, ctx, off::CTX_LQ);
    let lkv = g.ld(i64t, ctx, off::CTX_LKV);
    let d = g.ld(i64t, ctx, off::CTX_D);
    let dv = g.ld(i64t, ctx, off::CTX_DV);
    let group = g.ld(i64t, ctx, off::CTX_GROUP);
    let scale = g.ld(types::F32, ctx, off::CTX_SCALE);
    // this item's rows `q0 .. q0 + nrows` and its keys `kv_origin + kb bkv ..` below
    // `kv_end`: q block `qt`; or (`CpuOptions::doc_tiles`) tile `qt` of the list, q block
    // `qi` of the document of `rows` rows from `row0`, its keys that document's
    let (q0, q_end, kv_origin, kv_end) = if opts.doc_tiles {
        let list = g.ld(i64t, ctx, off::CTX_DOC_TILES);
        let rec = g.b.ins().imul_imm_s(qt, 16);
        let rec = g.b.ins().iadd(list, rec);
        let field = |g: &mut Gen, k: i32| {
            g.b.ins()
                .sload32(MemFlagsData::trusted().with_readonly(), rec, 4 * k)
        };
        let (row0, rows, qi) = (field(g, 1), field(g, 2), field(g, 3));
        let q0 = g.b.ins().imul_imm_s(qi, bq);
        let q0 = g.b.ins().iadd(row0, q0);
        let end = g.b.ins().iadd(row0, rows);
        (q0, end, Some(row0), end)
    } else {
        (g.b.ins().imul_imm_s(qt, bq), lq, None, lkv)
    };
    let left = g.b.ins().isub(q_end, q0);
    let bq_v = g.b.ins().iconst(i64t, bq);
    let nrows = g.b.ins().smin(left, bq_v);
    let hk = g.b.ins().udiv(hi, group);
    // row (b, h, q0) of Q/O/LSE
    let bh = g.b.ins().imul(bi, hq);
    let bh = g.b.ins().iadd(bh, hi);
    let row0 = g.b.ins().imul(bh, lq);
    let row0 = g.b.ins().iadd(row0, q0);
    let qbase = g.ld(i64t, ctx, off::CTX_Q);
    let qoff = g.b.ins().imul(row0, d);
    let qoff = g.b.ins().ishl_imm_u(qoff, 2);
    let qptr = g.b.ins().iadd(qbase, qoff);
    g.call(micro::BEGIN, &[tile, qptr, nrows, scale])?;

    // ---- K/V of kv head hk: dense rows (`d`, `dv` floats a row), or page pointer lists
    // (`opts.kv_rows`: the micro-kernels' `_rows` forms walk the pages)
    let bhk = g.b.ins().imul(bi, hkv);
    let bhk = g.b.ins().iadd(bhk, hk);
    let kvrow0 = g.b.ins().imul(bhk, lkv);
    let kbase = g.ld(i64t, ctx, off::CTX_K);
    let (kbase, vbase, kstride, vstride) = if opts.kv_rows {
        // 8-byte page pointers: the pages of (b, hk) start at entry (b Hkv + hk) kv_pages;
        // the micro-kernels take the block's first key instead of a stride
        let pages = g.ld(i64t, ctx, off::CTX_KV_PAGES);
        let first = g.b.ins().imul(bhk, pages);
        let toff = g.b.ins().ishl_imm_u(first, 3);
        let kbase = g.b.ins().iadd(kbase, toff);
        let vbase = g.ld(i64t, ctx, off::CTX_V);
        let vbase = g.b.ins().iadd(vbase, toff);
        (kbase, vbase, None, None)
    } else {
        let koff = g.b.ins().imul(kvrow0, d);
        let koff = g.b.ins().ishl_imm_u(koff, 2);
        let kbase = g.b.ins().iadd(kbase, koff);
        let vbase = g.ld(i64t, ctx, off::CTX_V);
        let voff = g.b.ins().imul(kvrow0, dv);
        let voff = g.b.ins().ishl_imm_u(voff, 2);
        let vbase = g.b.ins().iadd(vbase, voff);
        let kstride = g.b.ins().ishl_imm_u(d, 2);
        let vstride = g.b.ins().ishl_imm_u(dv, 2);
        (kbase, vbase, Some(kstride), Some(vstride))
    };
    let (qk_fn, spv_fn) = if opts.kv_rows {
        (micro::QK_ROWS, micro::SOFTMAX_PV_ROWS)
    } else {
        (micro::QK, micro::SOFTMAX_PV)
    };

    // ---- the IR's environment and its loop-invariant values
    let b32 = g.b.ins().ireduce(types::I32, bi);
    let h32 = g.b.ins().ireduce(types::I32, hi);
    let params = g.ld(i64t, ctx, off::CTX_PARAMS);
    let tdescs = g.ld(i64t, ctx, off::CTX_TENSORS);
    let tensors = TensorVals::load_all(g, program, tdescs);
    let mut env = Env {
        b: b32,
        h: h32,
        q: None,
        kv: None,
        s: None,
        params,
        tensors,
        tile,
        checked: opts.checked,
    };
    for l in [mask.as_deref_mut(), score.as_deref_mut()]
        .into_iter()
        .flatten()
    {
        l.emit(g, &env, Level::Inv)?;
    }
    if let Some(d) = diag.as_deref_mut() {
        d.emit_invariants(g, &env)?;
    }
    let st = g.ld(i64t, tile, off::TILE_ST);
    let qslots = g.ld(i64t, tile, off::TILE_QSLOTS);

    // ---- per-row precomputation of q-only values
    let has_slots = [mask.as_deref(), score.as_deref()]
        .into_iter()
        .flatten()
        .any(|l| l.n_slots() > 0);
    if has_slots {
        let zero = g.b.ins().iconst(i64t, 0);
        g.for_range(zero, nrows, |g, i| {
            let q = g.b.ins().iadd(q0, i);
            env.q = Some(g.b.ins().ireduce(types::I32, q));
            for l in [mask.as_deref_mut(), score.as_deref_mut()]
                .into_iter()
                .flatten()
            {
                l.forget();
                l.store_slots(g, &env, qslots, bq, i)?;
            }
            Ok(())
        })?;
    }

    // ---- block-sparse loop over this q-tile's runs of kv blocks
    let maps_b = g.ld(i64t, ctx, off::CTX_MAP_B);
    let maps_h = g.ld(i64t, ctx, off::CTX_MAP_H);
    let nqb = g.ld(i64t, ctx, off::CTX_NQB);
    let mi = g.b.ins().imul(bi, maps_b);
    let mh = g.b.ins().imul(hi, maps_h);
    let mi = g.b.ins().iadd(mi, mh);
    let row = g.b.ins().imul(mi, nqb);
    let row = g.b.ins().iadd(row, qt);
    let row_start = g.ld(i64t, ctx, off::CTX_ROW_START);
    let rs_addr = g.b.ins().ishl_imm_u(row, 2);
    let rs_addr = g.b.ins().iadd(row_start, rs_addr);
    let rs =
        g.b.ins()
            .uload32(MemFlagsData::trusted().with_readonly(), rs_addr, 0);
    let re =
        g.b.ins()
            .uload32(MemFlagsData::trusted().with_readonly(), rs_addr, 4);
    let runs = g.ld(i64t, ctx, off::CTX_RUNS);
    g.for_range(rs, re, |g, r| {
        let rp = g.b.ins().imul_imm_s(r, off::RUN_SIZE as i64);
        let rp = g.b.ins().iadd(runs, rp);
        let start =
            g.b.ins()
                .uload32(MemFlagsData::trusted().with_readonly(), rp, 0);
        let end =
            g.b.ins()
                .uload32(MemFlagsData::trusted().with_readonly(), rp, 4);
        let full =
            g.b.ins()
                .load(types::I32, MemFlagsData::trusted().with_readonly(), rp, 8);
        g.for_range(start, end, |g, kb| {
            let kv0 = g.b.ins().imul_imm_s(kb, bkv);
            let kv0 = match kv_origin {
                Some(o) => g.b.ins().iadd(o, kv0),
                None => kv0,
            };
            let left = g.b.ins().isub(kv_end, kv0);
            let bkv_v = g.b.ins().iconst(i64t, bkv);
            let ncols = g.b.ins().smin(left, bkv_v);
            match kstride {
                Some(stride) => {
                    let ko = g.b.ins().imul(kv0, stride);
                    let kp = g.b.ins().iadd(kbase, ko);
                    g.call(qk_fn, &[tile, kp, ncols])?;
                }
                None => g.call(qk_fn, &[tile, kbase, kv0, ncols])?,
            }
            // this block's diagonals of the relative-position values
            if let Some(d) = diag.as_deref_mut() {
                d.fill(g, &mut env, qslots, bq, bkv, q0, kv0, nrows)?;
            }
            let site = Site {
                st,
                qslots,
                q0,
                kv0,
                nrows,
                ncols,
                bq,
                bkv,
            };
            match (mask.as_deref_mut(), score.as_deref_mut()) {
                (None, None) => {}
                (None, Some(s)) => {
                    elementwise(g, &mut env, &site, Pass::Score, None, Some(s), opts)?
                }
                (Some(m), mut s) => {
                    // full blocks: score only; partial blocks: mask, then score
                    let (t, e, join) = (g.b.create_block(), g.b.create_block(), g.b.create_block());
                    g.b.ins().brif(full, t, &[], e, &[]);
                    g.b.switch_to_block(t);
                    if let Some(s) = s.as_deref_mut() {
                        elementwise(g, &mut env, &site, Pass::Score, None, Some(s), opts)?;
                    }
                    g.b.ins().jump(join, &[]);
                    g.b.switch_to_block(e);
                    elementwise(g, &mut env, &site, Pass::MaskScore, Some(m), s, opts)?;
                    g.b.ins().jump(join, &[]);
                    g.b.switch_to_block(join);
                }
            }
            match vstride {
                Some(stride) => {
                    let vo = g.b.ins().imul(kv0, stride);
                    let vp = g.b.ins().iadd(vbase, vo);
                    g.call(spv_fn, &[tile, vp, ncols])
                }
                None => g.call(spv_fn, &[tile, vbase, kv0, ncols]),
            }
        })
    })?;

    // ---- normalize and write this tile's O and LSE rows
    let obase = g.ld(i64t, ctx, off::CTX_O);
    let ooff = g.b.ins().imul(row0, dv);
    let ooff = g.b.ins().ishl_imm_u(ooff, 2);
    let optr = g.b.ins().iadd(obase, ooff);
    let lbase = g.ld(i64t, ctx, off::CTX_LSE);
    let loff = g.b.ins().ishl_imm_u(row0, 2);
    let lptr = g.b.ins().iadd(lbase, loff);
    g.call(micro::END, &[tile, optr, lptr])?;
    let zero = g.b.ins().iconst(types::I32, 0);
    g.b.ins().return_(&[zero]);
    Ok(())
}

/// Where one per-element pass runs.
struct Site {
    st: Value,
    qslots: Value,
    q0: Value,
    kv0: Value,
    nrows: Value,
    ncols: Value,
    bq: i64,
    bkv: i64,
}

/// The per-element pass over the `ncols x nrows` live part of `Sᵀ`: key columns outer
/// (kv-only values computed once per column), query rows inner.
fn elementwise<'p>(
    g: &mut Gen,
    env: &mut Env,
    site: &Site,
    pass: Pass,
    mask: Option<&mut Lowering<'p>>,
    score: Option<&mut Lowering<'p>>,
    opts: &CpuOptions,
) -> Result<(), CpuError> {
    if opts.checked {
        elementwise_scalar(g, env, site, pass, mask, score, opts)
    } else {
        elementwise_vec(g, env, site, pass, mask, score)
    }
}

/// Starts key column `j` of a per-element pass: sets `kv`, emits the kv-level values of
/// the mask and score, and returns the address of the column in the score tile.
fn begin_column<'p>(
    g: &mut Gen,
    env: &mut Env,
    site: &Site,
    j: Value,
    mask: Option<&mut Lowering<'p>>,
    score: Option<&mut Lowering<'p>>,
) -> Result<Value, CpuError> {
    let kv = g.b.ins().iadd(site.kv0, j);
    env.kv = Some(g.b.ins().ireduce(types::I32, kv));
    env.q = None;
    env.s = None;
    for l in [mask, score].into_iter().flatten() {
        l.forget();
        l.emit(g, env, Level::Kv)?;
    }
    let roff = g.b.ins().imul_imm_s(j, site.bq * 4);
    Ok(g.b.ins().iadd(site.st, roff))
}

/// The fast-mode per-element pass: like [`elementwise_scalar`], but 4 query rows at a
/// time in 128-bit vectors (rows up to the next multiple of 4 are tile padding).
fn elementwise_vec<'p>(
    g: &mut Gen,
    env: &mut Env,
    site: &Site,
    pass: Pass,
    mut mask: Option<&mut Lowering<'p>>,
    mut score: Option<&mut Lowering<'p>>,
) -> Result<(), CpuError> {
    let i64t = types::I64;
    let zero = g.b.ins().iconst(i64t, 0);
    g.for_range(zero, site.ncols, |g, j| {
        let rowp = begin_column(g, env, site, j, mask.as_deref_mut(), score.as_deref_mut())?;
        let q0 = g.b.ins().ireduce(types::I32, site.q0);
        let iota = g.iota();
        // row i's index in the score's tables (`diag`): bkv - 1 - j + i
        let tabled = score.as_deref().is_some_and(Lowering::has_table);
        let e0 = tabled.then(|| {
            let e0 = g.b.ins().ineg(j);
            g.b.ins().iadd_imm_s(e0, site.bkv - 1)
        });
        let zero = g.b.ins().iconst(i64t, 0);
        g.for_step(zero, site.nrows, 4, |g, i| {
            let i32v = g.b.ins().ireduce(types::I32, i);
            let qi = g.b.ins().iadd(q0, i32v);
            let qs = g.b.ins().splat(types::I32X4, qi);
            let qv = g.b.ins().iadd(qs, iota);
            let ioff = g.b.ins().ishl_imm_u(i, 2);
            let p = g.b.ins().iadd(rowp, ioff);
            let s = g.b.ins().load(types::F32X4, MemFlagsData::trusted(), p, 0);
            let table = e0.map(|e0| (site.qslots, site.bq, g.b.ins().iadd(e0, i)));
            let venv = VEnv {
                q: qv,
                kv: None,
                s: Some(s),
                table,
            };
            let keep = match (pass, mask.as_deref_mut()) {
                (Pass::MaskScore, Some(m)) => {
                    m.vforget();
                    m.vload_slots(g, &venv, site.qslots, site.bq, i);
                    m.vemit(g, env, &venv)?;
                    Some(m.vret(g))
                }
                _ => None,
            };
            let v = match score.as_deref_mut() {
                Some(sc) => {
                    sc.vforget();
                    sc.vload_slots(g, &venv, site.qslots, site.bq, i);
                    sc.vemit(g, env, &venv)?;
                    sc.vret(g)
                }
                None => s,
            };
            let out = match keep {
                Some(k) => {
                    let ninf = g.b.ins().f32const(f32::NEG_INFINITY);
                    let ninf = g.b.ins().splat(types::F32X4, ninf);
                    vselect(g, k, v, ninf)
                }
                None => v,
            };
            g.b.ins().store(MemFlagsData::trusted(), out, p, 0);
            Ok(())
        })
    })
}

/// The per-element pass, one element at a time (checked mode: loads are checked where
/// the source performs them, the score only where the mask holds).
fn elementwise_scalar<'p>(
    g: &mut Gen,
    env: &mut Env,
    site: &Site,
    pass: Pass,
    mut mask: Option<&mut Lowering<'p>>,
    mut score: Option<&mut Lowering<'p>>,
    opts: &CpuOptions,
) -> Result<(), CpuError> {
    let i64t = types::I64;
    let zero = g.b.ins().iconst(i64t, 0);
    g.for_range(zero, site.ncols, |g, j| {
        let rowp = begin_column(g, env, site, j, mask.as_deref_mut(), score.as_deref_mut())?;
        let zero = g.b.ins().iconst(i64t, 0);
        g.for_range(zero, site.nrows, |g, i| {
            let q = g.b.ins().iadd(site.q0, i);
            env.q = Some(g.b.ins().ireduce(types::I32, q));
            let ioff = g.b.ins().ishl_imm_u(i, 2);
            let p = g.b.ins().iadd(rowp, ioff);
            let s = g.b.ins().load(types::F32, MemFlagsData::trusted(), p, 0);
            env.s = Some(s);
            if let Some(m) = mask.as_deref_mut() {
                m.load_slots(g, env, site.qslots, site.bq, i);
                m.emit(g, env, Level::Both)?;
            }
            if let Some(sc) = score.as_deref_mut() {
                sc.load_slots(g, env, site.qslots, site.bq, i);
            }
            match (pass, mask.as_deref_mut()) {
                (Pass::MaskScore, Some(m)) => {
                    let keep = m.ret();
                    if opts.checked && score.is_some() {
                        // The score runs (and its loads are checked) only where the mask holds.
                        let sc = score.as_deref_mut().expect("score");
                        g.if_else(
                            keep,
                            |g| {
                                sc.emit(g, env, Level::Both)?;
                                let v = sc.ret();
                                g.b.ins().store(MemFlagsData::trusted(), v, p, 0);
                                Ok(())
                            },
                            |g| {
                                let ninf = g.b.ins().f32const(f32::NEG_INFINITY);
                                g.b.ins().store(MemFlagsData::trusted(), ninf, p, 0);
                                Ok(())
                            },
                        )?;
                        // values emitted inside an arm do not dominate later code
                        sc.forget();
                    } else {
                        let v = match score.as_deref_mut() {
                            Some(sc) => {
                                sc.emit(g, env, Level::Both)?;
                                sc.ret()
                            }
                            None => s,
                        };
                        let ninf = g.b.ins().f32const(f32::NEG_INFINITY);
                        let out = g.b.ins().select(keep, v, ninf);
                        g.b.ins().store(MemFlagsData::trusted(), out, p, 0);
                    }
                }
                _ => {
                    if let Some(sc) = score.as_deref_mut() {
                        sc.emit(g, env, Level::Both)?;
                        let v = sc.ret();
                        g.b.ins().store(MemFlagsData::trusted(), v, p, 0);
                    }
                }
            }
            Ok(())
        })
    })
}
