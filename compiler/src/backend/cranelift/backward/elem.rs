//! The generated part of the CPU backward: one Cranelift function per attention that
//! applies the mask and the score's derivative (`grad::ScoreGrad`) to one tile of raw
//! scores.
//!
//! In: the program, its [`ScoreGrad`] and the JIT module. Out: the Cranelift function
//! `elem(ctx, tile, b, h, q0, kv0, nrows, ncols, full)` over an [`ElemTile`]
//! (row-major `[i][j]` planes with row stride `stride` and plane size `plane`):
//!
//! ```text
//! <mask/grad values that depend on b, h, params only>
//! for i in 0..nrows:                       q = q0 + i; <values of q only>
//!   for j in 0..ncols:                     kv = kv0 + j; s = S[i][j]
//!     if full || mask(b, h, q, kv):
//!       S[i][j]  = score(s)                (the recomputed forward score)
//!       DS[i][j] = ∂score/∂s
//!       for each read r:   FLAT[r][i][j] = guard ? clamped flat index : -1
//!                          PART[r][i][j] = ∂score/∂read
//!       for each param k:  PART[R + k][i][j] = ∂score/∂param
//!     else: S = -inf, DS = 0, FLAT = -1, PART = 0
//! ```
//!
//! The full/partial split is one branch outside the loops (two loop nests). Reads are
//! clamped exactly as the forward kernel clamps them (`lower.rs`), so a gradient goes
//! to the element the forward read.
//!
//! Each row runs 4 columns at a time (`vcolumns`: 4-lane vectors by `Lowering::vemit`
//! after `Lowering::promote_kv`, `q` splatted, `kv` per lane), then the last
//! `ncols % 4` columns one by one. The vector sites use the forward's fast-mode inline
//! `exp`/`exp2`/`tanh` (so the recomputed score is the forward's, and a softcap's
//! `tanh` is no libm call per element); the scalar tail keeps the libm calls. Masked
//! lanes are selected away after the fact (every lane evaluates the score: reads are
//! clamped, so that is safe), giving the same planes as the scalar code.

// `x.as_deref_mut()` on an `Option<&mut Lowering>` is the reborrow that lets one lowering
// serve two loop nests; clippy reads it as a no-op.
#![allow(clippy::needless_option_as_deref)]

use super::super::abi::TensorDesc;
use super::super::builder::Gen;
use super::super::diag::Diagonals;
use super::super::lower::{Env, Level, Lowering, TensorVals, VEnv, vselect};
use super::super::{CpuError, CpuOptions};
use crate::grad::ScoreGrad;
use crate::ir::Program;
use cranelift_codegen::ir::{
    AbiParam, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value, types,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::Module;
use std::mem::offset_of;

/// Launch-wide data the element function reads.
#[repr(C)]
#[derive(Debug)]
pub struct ElemCtx {
    /// Param values as 32-bit words.
    pub params: *const u32,
    pub tensors: *const TensorDesc,
}

/// The planes of one tile. `s` is read (raw scaled scores) and overwritten (scores,
/// -inf where masked); the others are written.
#[repr(C)]
#[derive(Debug)]
pub struct ElemTile {
    pub s: *mut f32,
    pub ds: *mut f32,
    /// `[reads][plane]`
    pub flat: *mut i64,
    /// `[reads + params][plane]`
    pub part: *mut f32,
    pub stride: i64,
    pub plane: i64,
    /// The score's diagonal tables ([`Elem::table_words`] words; unused when 0).
    pub diag: *mut u32,
}

const CTX_PARAMS: i32 = offset_of!(ElemCtx, params) as i32;
const CTX_TENSORS: i32 = offset_of!(ElemCtx, tensors) as i32;
const T_S: i32 = offset_of!(ElemTile, s) as i32;
const T_DS: i32 = offset_of!(ElemTile, ds) as i32;
const T_FLAT: i32 = offset_of!(ElemTile, flat) as i32;
const T_PART: i32 = offset_of!(ElemTile, part) as i32;
const T_STRIDE: i32 = offset_of!(ElemTile, stride) as i32;
const T_PLANE: i32 = offset_of!(ElemTile, plane) as i32;
const T_DIAG: i32 = offset_of!(ElemTile, diag) as i32;

pub const ELEM_NAME: &str = "attnc_backward_elem";

/// `(ctx, tile, b, h, q0, kv0, nrows, ncols, full)`, all i64, no result.
pub fn elem_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    for _ in 0..9 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// The generated element function and the table space it needs.
pub struct Elem {
    pub func: Function,
    /// Words of [`ElemTile::diag`] the function uses: the score's relative-position
    /// values tabulated per tile (`diag::Diagonals`, [`CpuOptions::diagonal_tables`]);
    /// 0 when none are.
    pub table_words: usize,
}

/// Generates the element function (tiles of `opts.q_block` x `opts.kv_block`).
pub fn generate(
    program: &Program,
    grad: &ScoreGrad,
    opts: &CpuOptions,
    module: &mut JITModule,
    fctx: &mut FunctionBuilderContext,
) -> Result<Elem, CpuError> {
    let call_conv = module.isa().default_call_conv();
    let mut func =
        Function::with_name_signature(UserFuncName::user(0, 0), elem_signature(call_conv));
    let mut mask = program.mask.as_ref().map(|f| {
        let mut m = Lowering::new(f, program, false, 0);
        m.promote_kv();
        m
    });
    let outputs = grad.outputs();
    let score_lowering = || {
        let mut l = Lowering::with_outputs(&grad.func, program, false, 0, &outputs);
        l.promote_kv();
        l
    };
    let mut score = score_lowering();
    // the score's diagonal values, tabulated per tile for the vector sites; the scalar
    // tail (`ncols % 4` columns) computes them with a lowering of its own
    let (bq, bkv) = (opts.q_block, opts.kv_block);
    let mut diag = None;
    let mut tail = None;
    if opts.diagonal_tables {
        let mut roots = outputs.clone();
        roots.push(grad.func.ret);
        if let Some(d) = Diagonals::find(&grad.func, program, &roots, 0, bq, bkv) {
            score.tabulate(d.values());
            tail = Some(score_lowering());
            diag = Some(d);
        }
    }
    let table_words = diag.as_ref().map_or(0, |d| d.n_slots() as usize * bq);
    {
        let b = FunctionBuilder::new(&mut func, fctx);
        let mut g = Gen::new(b, module, call_conv);
        let mut sc = Score {
            vector: score,
            tail,
            diag,
        };
        body(&mut g, program, grad, opts, mask.as_mut(), &mut sc)?;
        g.b.seal_all_blocks();
        let cfg = g.frontend_config();
        g.b.finalize(cfg);
    }
    Ok(Elem { func, table_words })
}

/// The score's lowerings: the vector sites' (reading the diagonal tables when there
/// are any), the scalar tail's when that differs, and the tables' fill.
struct Score<'p> {
    vector: Lowering<'p>,
    tail: Option<Lowering<'p>>,
    diag: Option<Diagonals<'p>>,
}

impl<'p> Score<'p> {
    fn tail(&mut self) -> &mut Lowering<'p> {
        self.tail.as_mut().unwrap_or(&mut self.vector)
    }

    /// Drops the per-row values and emits row `q`'s (`env.q`).
    fn start_row(&mut self, g: &mut Gen, env: &Env) -> Result<(), CpuError> {
        self.vector.forget();
        self.vector.emit(g, env, Level::Q)?;
        if let Some(t) = &mut self.tail {
            t.forget();
            t.emit(g, env, Level::Q)?;
        }
        Ok(())
    }
}

fn body<'p>(
    g: &mut Gen,
    program: &Program,
    grad: &ScoreGrad,
    opts: &CpuOptions,
    mut mask: Option<&mut Lowering<'p>>,
    score: &mut Score<'p>,
) -> Result<(), CpuError> {
    let i64t = types::I64;
    let entry = g.b.create_block();
    g.b.append_block_params_for_function_params(entry);
    g.b.switch_to_block(entry);
    let [ctx, tile, bi, hi, q0, kv0, nrows, ncols, full] =
        <[Value; 9]>::try_from(g.b.block_params(entry)).expect("nine params");
    let params = g.ld(i64t, ctx, CTX_PARAMS);
    let tdescs = g.ld(i64t, ctx, CTX_TENSORS);
    let tensors = TensorVals::load_all(g, program, tdescs);
    let s_base = g.ld(i64t, tile, T_S);
    let ds_base = g.ld(i64t, tile, T_DS);
    let flat_base = g.ld(i64t, tile, T_FLAT);
    let part_base = g.ld(i64t, tile, T_PART);
    let stride = g.ld(i64t, tile, T_STRIDE);
    let plane = g.ld(i64t, tile, T_PLANE);
    let diag_base = g.ld(i64t, tile, T_DIAG);
    let b32 = g.b.ins().ireduce(types::I32, bi);
    let h32 = g.b.ins().ireduce(types::I32, hi);
    let mut env = Env {
        b: b32,
        h: h32,
        q: None,
        kv: None,
        s: None,
        params,
        tensors,
        tile,
        checked: false,
    };
    if let Some(m) = mask.as_deref_mut() {
        m.emit(g, &env, Level::Inv)?;
    }
    score.vector.emit(g, &env, Level::Inv)?;
    if let Some(t) = &mut score.tail {
        t.emit(g, &env, Level::Inv)?;
    }
    let (bq, bkv) = (opts.q_block as i64, opts.kv_block as i64);
    if let Some(d) = &mut score.diag {
        // this tile's diagonals (`Diagonals::fill_rows`)
        d.emit_invariants(g, &env)?;
        d.fill_rows(g, &mut env, diag_base, bq, bkv, q0, kv0)?;
    }
    let planes = Planes {
        s: s_base,
        ds: ds_base,
        flat: flat_base,
        part: part_base,
        plane,
        diag: diag_base,
        bq,
    };
    match mask {
        None => nest(
            g, &mut env, grad, None, score, &planes, q0, kv0, nrows, ncols, stride,
        )?,
        Some(m) => {
            let (t, e, join) = (g.b.create_block(), g.b.create_block(), g.b.create_block());
            g.b.ins().brif(full, t, &[], e, &[]);
            g.b.switch_to_block(t);
            nest(
                g, &mut env, grad, None, score, &planes, q0, kv0, nrows, ncols, stride,
            )?;
            g.b.ins().jump(join, &[]);
            g.b.switch_to_block(e);
            nest(
                g,
                &mut env,
                grad,
                Some(m),
                score,
                &planes,
                q0,
                kv0,
                nrows,
                ncols,
                stride,
            )?;
            g.b.ins().jump(join, &[]);
            g.b.switch_to_block(join);
        }
    }
    g.b.ins().return_(&[]);
    Ok(())
}

struct Planes {
    s: Value,
    ds: Value,
    flat: Value,
    part: Value,
    plane: Value,
    /// The diagonal tables (`ElemTile::diag`) and their slot length (the q block).
    diag: Value,
    bq: i64,
}

/// One loop nest over the tile; with `mask`, elements where it is false are written as
/// masked.
#[allow(clippy::too_many_arguments)]
fn nest<'p>(
    g: &mut Gen,
    env: &mut Env,
    grad: &ScoreGrad,
    mut mask: Option<&mut Lowering<'p>>,
    score: &mut Score<'p>,
    pl: &Planes,
    q0: Value,
    kv0: Value,
    nrows: Value,
    ncols: Value,
    stride: Value,
) -> Result<(), CpuError> {
    let i64t = types::I64;
    let zero = g.b.ins().iconst(i64t, 0);
    g.for_range(zero, nrows, |g, i| {
        let q = g.b.ins().iadd(q0, i);
        env.q = Some(g.b.ins().ireduce(types::I32, q));
        env.kv = None;
        env.s = None;
        if let Some(m) = mask.as_deref_mut() {
            m.forget();
            m.emit(g, env, Level::Q)?;
        }
        score.start_row(g, env)?;
        let row = g.b.ins().imul(i, stride);
        let zero = g.b.ins().iconst(i64t, 0);
        // 4 columns at a time, then the rest one by one
        let n4 = g.b.ins().band_imm_s(ncols, -4);
        // row i's keys j.. in the diagonal tables: t = j - i + bq - 1
        let last = g.b.ins().iconst(i64t, pl.bq - 1);
        let t0 = g.b.ins().isub(last, i);
        g.for_step(zero, n4, 4, |g, j| {
            let t = g.b.ins().iadd(t0, j);
            let sites = Sites { row, j, t };
            vcolumns(g, env, grad, mask.as_deref_mut(), score, pl, kv0, sites)
        })?;
        g.for_range(n4, ncols, |g, j| {
            let kv = g.b.ins().iadd(kv0, j);
            env.kv = Some(g.b.ins().ireduce(types::I32, kv));
            let idx = g.b.ins().iadd(row, j);
            let s_addr = addr(g, pl.s, idx, 2);
            let s =
                g.b.ins()
                    .load(types::F32, MemFlagsData::trusted(), s_addr, 0);
            env.s = Some(s);
            match mask.as_deref_mut() {
                None => {
                    write_kept(g, env, grad, score.tail(), pl, idx, s_addr)?;
                }
                Some(m) => {
                    m.emit(g, env, Level::Kv)?;
                    m.emit(g, env, Level::Both)?;
                    let keep = m.ret();
                    let (t, e, join) = (g.b.create_block(), g.b.create_block(), g.b.create_block());
                    g.b.ins().brif(keep, t, &[], e, &[]);
                    g.b.switch_to_block(t);
                    write_kept(g, env, grad, score.tail(), pl, idx, s_addr)?;
                    g.b.ins().jump(join, &[]);
                    g.b.switch_to_block(e);
                    write_masked(g, grad, pl, idx, s_addr);
                    g.b.ins().jump(join, &[]);
                    g.b.switch_to_block(join);
                    // the mask's per-element values stay in this column's block; the
                    // next emission site (next nest) starts after `forget`
                }
            }
            Ok(())
        })
    })
}

/// Where a vector site sits: the plane offset of its row, its first column, and that
/// column's index in the diagonal tables.
struct Sites {
    row: Value,
    j: Value,
    t: Value,
}

/// Elements `j..j + 4` of the row at `row` (a multiple of 4 below `ncols`) as 4-lane
/// vectors: the mask, score, derivative and partials by `Lowering::vemit` (inline `exp`,
/// `exp2`, `tanh`: the forward's fast-mode functions; the diagonal values from their
/// tables), then the same planes as [`write_kept`] / [`write_masked`] per lane.
#[allow(clippy::too_many_arguments)]
fn vcolumns<'p>(
    g: &mut Gen,
    env: &Env,
    grad: &ScoreGrad,
    mask: Option<&mut Lowering<'p>>,
    score: &mut Score<'p>,
    pl: &Planes,
    kv0: Value,
    Sites { row, j, t }: Sites,
) -> Result<(), CpuError> {
    let score = &mut score.vector;
    let fl = MemFlagsData::new().with_notrap();
    let kv = g.b.ins().iadd(kv0, j);
    let kv = g.b.ins().ireduce(types::I32, kv);
    let kv = g.b.ins().splat(types::I32X4, kv);
    let iota = g.iota();
    let kv = g.b.ins().iadd(kv, iota);
    let q = env.q.expect("q at a row");
    let q = g.b.ins().splat(types::I32X4, q);
    let idx = g.b.ins().iadd(row, j);
    let s_addr = addr(g, pl.s, idx, 2);
    let s = g.b.ins().load(types::F32X4, fl, s_addr, 0);
    let venv = VEnv {
        q,
        kv: Some(kv),
        s: Some(s),
        table: score.has_table().then_some((pl.diag, pl.bq, t)),
    };
    let keep = match mask {
        Some(m) => {
            m.vforget();
            m.vemit(g, env, &venv)?;
            Some(m.vret(g))
        }
        None => None,
    };
    score.vforget();
    score.vemit(g, env, &venv)?;
    let zero = g.b.ins().f32const(0.0);
    let zero = g.b.ins().splat(types::F32X4, zero);
    let kept = |g: &mut Gen, v: Value, other: Value| match keep {
        Some(k) => vselect(g, k, v, other),
        None => v,
    };
    let sc = score.vvalue(g, grad.score);
    let ninf = g.b.ins().f32const(f32::NEG_INFINITY);
    let ninf = g.b.ins().splat(types::F32X4, ninf);
    let sc = kept(g, sc, ninf);
    g.b.ins().store(fl, sc, s_addr, 0);
    let ds = score.vvalue(g, grad.d_s);
    let ds = kept(g, ds, zero);
    let a = addr(g, pl.ds, idx, 2);
    g.b.ins().store(fl, ds, a, 0);
    // flat indices as two i64x2 halves: each index clamped in i32 lanes (to at most
    // i32::MAX: the same as clamping the i32 index in i64), widened, then combined
    let neg1 = g.b.ins().iconst(types::I64, -1);
    let neg1 = g.b.ins().splat(types::I64X2, neg1);
    let zero32 = g.b.ins().iconst(types::I32, 0);
    let zero32 = g.b.ins().splat(types::I32X4, zero32);
    let i32max = g.b.ins().iconst(types::I64, i32::MAX as i64);
    for (r, read) in grad.reads.iter().enumerate() {
        let tv = &env.tensors[read.tensor.0 as usize];
        let (cdims, cmax) = (tv.cdims.clone(), tv.cmax.clone());
        let mut flat: Option<[Value; 2]> = None;
        for (k, v) in read.indices.iter().enumerate() {
            let x = score.vvalue(g, *v);
            let hi = g.b.ins().smin(cmax[k], i32max);
            let hi = g.b.ins().ireduce(types::I32, hi);
            let hi = g.b.ins().splat(types::I32X4, hi);
            let c = g.b.ins().smax(x, zero32);
            let c = g.b.ins().smin(c, hi);
            let c = [g.b.ins().swiden_low(c), g.b.ins().swiden_high(c)];
            flat = Some(match flat {
                None => c,
                Some(f) => {
                    let dim = g.b.ins().splat(types::I64X2, cdims[k]);
                    [0, 1].map(|h| {
                        let m = g.b.ins().imul(f[h], dim);
                        g.b.ins().iadd(m, c[h])
                    })
                }
            });
        }
        let flat = flat.unwrap_or_else(|| {
            let z = g.b.ins().iconst(types::I64, 0);
            [g.b.ins().splat(types::I64X2, z); 2]
        });
        let guard = score.vvalue(g, read.guard);
        let guard = match keep {
            Some(k) => g.b.ins().band(guard, k),
            None => guard,
        };
        let guard = [g.b.ins().swiden_low(guard), g.b.ins().swiden_high(guard)];
        let a = plane_addr(g, pl.flat, pl.plane, r, idx, 3);
        for h in 0..2 {
            let f = g.b.ins().bitselect(guard[h], flat[h], neg1);
            g.b.ins().store(fl, f, a, 16 * h as i32);
        }
        let part = score.vvalue(g, read.partial);
        let part = kept(g, part, zero);
        let a = plane_addr(g, pl.part, pl.plane, r, idx, 2);
        g.b.ins().store(fl, part, a, 0);
    }
    for (k, p) in grad.params.iter().enumerate() {
        let part = score.vvalue(g, p.partial);
        let part = kept(g, part, zero);
        let a = plane_addr(g, pl.part, pl.plane, grad.reads.len() + k, idx, 2);
        g.b.ins().store(fl, part, a, 0);
    }
    Ok(())
}

/// `base + (idx << shift)`
fn addr(g: &mut Gen, base: Value, idx: Value, shift: i64) -> Value {
    let off = g.b.ins().ishl_imm_u(idx, shift);
    g.b.ins().iadd(base, off)
}

/// The address of element `idx` of plane `k` of a table with `1 << shift`-byte entries.
fn plane_addr(g: &mut Gen, base: Value, plane: Value, k: usize, idx: Value, shift: i64) -> Value {
    let p = g.b.ins().imul_imm_s(plane, k as i64);
    let e = g.b.ins().iadd(p, idx);
    addr(g, base, e, shift)
}

fn write_kept(
    g: &mut Gen,
    env: &Env,
    grad: &ScoreGrad,
    score: &mut Lowering,
    pl: &Planes,
    idx: Value,
    s_addr: Value,
) -> Result<(), CpuError> {
    score.emit(g, env, Level::Kv)?;
    score.emit(g, env, Level::Both)?;
    let fl = MemFlagsData::trusted();
    let sc = score.value(grad.score);
    g.b.ins().store(fl, sc, s_addr, 0);
    let ds = score.value(grad.d_s);
    let a = addr(g, pl.ds, idx, 2);
    g.b.ins().store(fl, ds, a, 0);
    let neg1 = g.b.ins().iconst(types::I64, -1);
    for (r, read) in grad.reads.iter().enumerate() {
        let tv = &env.tensors[read.tensor.0 as usize];
        let zero = g.b.ins().iconst(types::I64, 0);
        let mut flat = zero;
        for (k, v) in read.indices.iter().enumerate() {
            let x = score.value(*v);
            let x = g.b.ins().sextend(types::I64, x);
            let c = g.b.ins().smax(x, zero);
            let c = g.b.ins().smin(c, tv.cmax[k]);
            flat = if k == 0 {
                c
            } else {
                let m = g.b.ins().imul(flat, tv.cdims[k]);
                g.b.ins().iadd(m, c)
            };
        }
        let guard = score.value(read.guard);
        let flat = g.b.ins().select(guard, flat, neg1);
        let a = plane_addr(g, pl.flat, pl.plane, r, idx, 3);
        g.b.ins().store(fl, flat, a, 0);
        let part = score.value(read.partial);
        let a = plane_addr(g, pl.part, pl.plane, r, idx, 2);
        g.b.ins().store(fl, part, a, 0);
    }
    for (k, p) in grad.params.iter().enumerate() {
        let part = score.value(p.partial);
        let a = plane_addr(g, pl.part, pl.plane, grad.reads.len() + k, idx, 2);
        g.b.ins().store(fl, part, a, 0);
    }
    Ok(())
}

fn write_masked(g: &mut Gen, grad: &ScoreGrad, pl: &Planes, idx: Value, s_addr: Value) {
    let fl = MemFlagsData::trusted();
    let ninf = g.b.ins().f32const(f32::NEG_INFINITY);
    g.b.ins().store(fl, ninf, s_addr, 0);
    let z = g.b.ins().f32const(0.0);
    let a = addr(g, pl.ds, idx, 2);
    g.b.ins().store(fl, z, a, 0);
    let neg1 = g.b.ins().iconst(types::I64, -1);
    for r in 0..grad.reads.len() {
        let a = plane_addr(g, pl.flat, pl.plane, r, idx, 3);
        g.b.ins().store(fl, neg1, a, 0);
    }
    for k in 0..grad.reads.len() + grad.params.len() {
        let a = plane_addr(g, pl.part, pl.plane, k, idx, 2);
        g.b.ins().store(fl, z, a, 0);
    }
}
