//! The FlashAttention-2 forward kernel, written against the helpers of `gpu.rs`.
//!
//! In: a [`Program`] and [`PtxOptions`]. Out: the kernel function in an LLVM module, its
//! parameter order, threads per CTA and dynamic shared memory.
//!
//! Per CTA (q block `qb`, query head `h`, batch `b`), each warp owning `16 * m_tiles` query
//! rows (every K/V fragment read with `ldmatrix` feeds `m_tiles` mma); Q fragments stay in
//! registers or, with `q_in_regs` off, are re-read from shared memory per kv block:
//! ```text
//! runs of kv blocks of this q block (`bounds.rs`): closed form computed here (at most
//!     partial, full, partial; offsets from kernel params) or the row of the block table
//! cp.async Q tile; if there is any run: cp.async K[first] (else straight to the epilogue)
//! wait; Q fragments <- ldmatrix (kept in registers for the whole loop)
//! for each kv block j of the runs (never an empty run; table runs from the block table):
//!     wait K[j]; barrier; cp.async V[j]
//!     (k_prefetch: cp.async K[next] into the other K buffer, a whole iteration ahead)
//!     S = Q K[j]^T                               (mma.sync, K via ldmatrix)
//!     t = full block ? score(S) : mask & in-range ? score(S) : -inf
//!         (no score fn: t = S raw, softmax in units c2 = |scale| log2 e, Q negated
//!          in shared memory for a negative scale; else t = score(scale S) log2 e, c2 = 1)
//!     online softmax: if any row of the warp has rowmax t > m + 8/c2 (vote):
//!         m' = max(m, rowmax t); O, l *= 2^(c2 (m - m'))     (lazy rescale)
//!     (early_sync, raw scores: the next line's wait + barrier come here instead, so
//!      that the ex2 and the P V mma share a basic block)
//!     P = 2^(c2 t - c2 m) (one FMA + ex2); l += rowsum P
//!     wait V[j]; barrier; cp.async K[next] (without k_prefetch)
//!     O = O 2^(m - m') + P V[j]                  (P as A fragments, V via ldmatrix.trans)
//! O /= l; LSE = (c2 m + log2 l) ln 2; rows with l = 0 give O = 0, LSE = -inf
//! ```
//! Element (lane, register) positions of an m16n8 accumulator: rows `lane/4` and
//! `lane/4 + 8`, columns `2 (lane % 4) + {0, 1}`.
//!
//! The wgmma path (`Mma::Wgmma`, sm_90a) keeps this loop and replaces the two products:
//! warps 4w..4w+3 form warpgroup w, which owns query rows 64w..64w+63 (each warp its 16,
//! `m_tiles` = 1, so the softmax and the epilogue above run unchanged: a wgmma
//! accumulator's n8 chunks have the m16n8 layout per warp). Q, K and V sit in the
//! canonical 128-byte-swizzled layout (`SmemTile::slab`: 64-column slabs, 8-row atoms of
//! 1024 bytes); S = Q K^T is `d / 16` wgmma m64n{kv_block}k16 with both operands K-major
//! descriptors (stride byte offset 1024, the start advanced 32 bytes per k-step inside
//! the slab); O += P V is `kv_block / 16` wgmma m64n{dv}k16 with P's A fragments from
//! registers and V N-major (`imm-trans-b`; leading byte offset = one slab, stride byte
//! offset 1024). Every shared-memory write the tensor cores read (cp.async, the Q
//! negation, the zeroed V buffer) is followed by `fence.proxy.async` before the barrier.
//! Each product is one commit group; the wait threads the accumulators through the
//! `wgmma.wait_group` asm so no read of them is scheduled above it. With `overlap`
//! (K and V double-buffered):
//! ```text
//! for each block j: wait; barrier; cp.async V[j], K[next]
//!     issue S(j) = Q K[j]^T; issue O += P(j-1) V[j-1]   (P(-1) = 0, its V buffer zeroed)
//!     wait_group 1 (S ready); mask/score; softmax (max, l, P(j); O's rescale deferred)
//!     wait_group 0 (O ready); O *= 2^(c2 (m - m')) if any row's max moved
//! after the last block: wait; barrier; O += P(last) V[last]
//! ```

use super::bounds::{KvBounds, RowRuns};
use super::expr::{Elem, Env, emit_function};
use super::gpu::{GLOBAL, Gpu, R, SmemTile, Var, WgmmaA};
use super::{InputType, KernelParam, LlvmError, Mma, PtxOptions};
use crate::ir::Program;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::BasicValue;
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;

/// Shared-memory tiles of Q, K and V.
/// On the wgmma path they are in the 128-byte-swizzled slab layout (every tile a
/// multiple of 1024 bytes, so each swizzle atom is 1024-byte aligned).
fn tiles(opts: &PtxOptions) -> (SmemTile, SmemTile, SmemTile) {
    let slab = opts.mma == Mma::Wgmma;
    let q = SmemTile {
        offset: 0,
        rows: opts.q_block,
        cols: opts.d,
        slab,
    };
    let k = SmemTile {
        offset: q.bytes(),
        rows: opts.kv_block,
        cols: opts.d,
        slab,
    };
    let v = SmemTile {
        offset: q.bytes()
            + k.bytes()
                * if opts.k_prefetch || opts.overlap {
                    2
                } else {
                    1
                },
        rows: opts.kv_block,
        cols: opts.dv,
        slab,
    };
    (q, k, v)
}

/// (threads per CTA, dynamic shared memory bytes): Q, one or two K tiles, one or (with
/// `overlap`) two V tiles.
pub(crate) fn sizes(opts: &PtxOptions) -> (u32, u32) {
    let (_, _, v) = tiles(opts);
    let nv = if opts.overlap { 2 } else { 1 };
    (opts.threads(), v.offset + v.bytes() * nv)
}

pub(crate) struct Built<'ctx> {
    pub module: Module<'ctx>,
    pub threads: u32,
    pub smem_bytes: u32,
    pub params: Vec<KernelParam>,
}

/// The parameter list of a program's kernel, in launch order.
pub(crate) fn param_list(p: &Program, kv: &KvBounds) -> Vec<KernelParam> {
    use KernelParam::*;
    let mut v = vec![Q, K, V, O, Lse];
    v.extend(super::bounds::kv_params(kv, p.mask.is_some()));
    v.extend([Params, Err]);
    v.extend((0..p.tensors.len() as u32).map(Tensor));
    v.extend([Lq, Lkv, Hq, Hkv, NumQBlocks]);
    if !kv.is_closed_form() {
        v.extend([MapBStride, MapHStride]);
    }
    v.push(Scale);
    for (t, info) in p.tensors.iter().enumerate() {
        v.extend((0..info.dims.len() as u32).map(|dim| TensorDim {
            tensor: t as u32,
            dim,
        }));
    }
    v
}

/// Fixed sizes of one kernel.
struct Cfg {
    ty: InputType,
    d: u32,
    dv: u32,
    qb: u32,
    kvb: u32,
    threads: u32,
    /// m16 tiles of query rows per warp.
    mt: usize,
    q_in_regs: bool,
    /// The wgmma path (else mma.sync).
    wg: bool,
    q: SmemTile,
    k: SmemTile,
    v: SmemTile,
}

/// Values every phase of the kernel reads.
struct Ctx<'ctx> {
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    b: IntValue<'ctx>,
    h: IntValue<'ctx>,
    q0: IntValue<'ctx>,
    lq: IntValue<'ctx>,
    lkv: IntValue<'ctx>,
    scale: FloatValue<'ctx>,
    /// The identity score: logits stay raw scores `s` (no multiply) and the softmax works
    /// in `c2 * s` (one FMA per element), with `c2 = |scale| log2 e` (Q is negated in
    /// shared memory when the scale is negative, so that the max of `s` is the max of
    /// `c2 s`). With a score function the logits are `score(scale s) log2 e` and `c2 = 1`.
    raw: bool,
    c2: FloatValue<'ctx>,
}

pub(crate) fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    entry: &str,
) -> R<Built<'ctx>> {
    let params = param_list(p, kv);
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|k| match k {
            KernelParam::Scale => ctx.f32_type().into(),
            KernelParam::Lq
            | KernelParam::Lkv
            | KernelParam::Hq
            | KernelParam::Hkv
            | KernelParam::NumQBlocks
            | KernelParam::MapBStride
            | KernelParam::MapHStride
            | KernelParam::KvAllPartial
            | KernelParam::TensorDim { .. } => ctx.i32_type().into(),
            KernelParam::KvOffset(_) => ctx.i64_type().into(),
            _ => gptr.into(),
        })
        .collect();
    let ft = ctx.void_type().fn_type(&tys, false);
    let func = module.add_function(entry, ft, None);
    func.set_call_conventions(71); // ptx_kernel: emitted as a .entry
    let threads = opts.threads();
    func.add_attribute(
        AttributeLoc::Function,
        ctx.create_string_attribute("nvvm.maxntid", &threads.to_string()),
    );
    if opts.min_ctas > 0 {
        func.add_attribute(
            AttributeLoc::Function,
            ctx.create_string_attribute("nvvm.minctasm", &opts.min_ctas.to_string()),
        );
    }
    let noalias = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
    for (i, k) in params.iter().enumerate() {
        if matches!(
            k,
            KernelParam::Q | KernelParam::K | KernelParam::V | KernelParam::O | KernelParam::Lse
        ) {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
        }
    }
    let (q, k, v) = tiles(opts);
    let cfg = Cfg {
        ty: opts.input,
        d: opts.d,
        dv: opts.dv,
        qb: opts.q_block,
        kvb: opts.kv_block,
        threads,
        mt: opts.m_tiles as usize,
        q_in_regs: opts.q_in_regs && opts.mma == Mma::Sync,
        wg: opts.mma == Mma::Wgmma,
        q,
        k,
        v,
    };
    let smem_bytes = sizes(opts).1;

    let g = Gpu::new(ctx, module, func);
    if cfg.wg {
        // the wgmma swizzle atoms (1024 bytes) must be aligned in the shared window
        g.smem.set_alignment(1024);
    }
    let allocas = g.block("allocas");
    let start = g.block("start");
    g.ab.position_at_end(allocas);
    g.b.position_at_end(start);
    body(&g, &cfg, p, opts, kv, &params)?;
    g.ab.build_unconditional_branch(start)?;
    Ok(Built {
        module: g.module,
        threads,
        smem_bytes,
        params,
    })
}

fn body<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    params: &[KernelParam],
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

    // ---- where this CTA works ----------------------------------------------------------------
    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let (lq, lkv, hq, hkv, nqb) = (
        int(KernelParam::Lq)?,
        int(KernelParam::Lkv)?,
        int(KernelParam::Hq)?,
        int(KernelParam::Hkv)?,
        int(KernelParam::NumQBlocks)?,
    );
    // heavy (late, for causal masks) q blocks first
    let qb = g.sub(g.sub(nqb, g.c32(1))?, g.ctaid('x')?)?;
    let h = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let hk = g.udiv(h, g.udiv(hq, hkv)?)?;
    let q0 = g.mul(qb, g.c32(c.qb as i64))?;
    let scale = arg(KernelParam::Scale)?.into_float_value();
    let raw = p.score.is_none();
    let c2 = if raw {
        let a = g.fintr("llvm.fabs.f32", scale)?;
        g.fmax(g.fmul(a, g.cf(LOG2E))?, g.cf(1e-30))?
    } else {
        g.cf(1.0)
    };
    let cx = Ctx {
        warp,
        lane,
        b,
        h,
        q0,
        lq,
        lkv,
        scale,
        raw,
        c2,
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
    let qbase = head_base(ptr(KernelParam::Q)?, hq, h, lq, c.d)?;
    let kbase = head_base(ptr(KernelParam::K)?, hkv, hk, lkv, c.d)?;
    let vbase = head_base(ptr(KernelParam::V)?, hkv, hk, lkv, c.dv)?;

    // ---- the runs of kv blocks of this q block -------------------------------------------------
    let runs = match kv {
        KvBounds::Table => {
            let map = g.add(
                g.mul(b, int(KernelParam::MapBStride)?)?,
                g.mul(h, int(KernelParam::MapHStride)?)?,
            )?;
            let row = g.add(g.mul(map, nqb)?, qb)?;
            RowRuns::table(g, ptr(KernelParam::RowStart)?, ptr(KernelParam::Runs)?, row)?
        }
        KvBounds::ClosedForm(cf) => {
            let offsets = (0..cf.constraints.len() as u32)
                .map(|i| int(KernelParam::KvOffset(i)))
                .collect::<R<Vec<_>>>()?;
            let all_partial = match p.mask {
                Some(_) => Some(int(KernelParam::KvAllPartial)?),
                None => None,
            };
            RowRuns::closed_form(
                g,
                &kv.coefficients(),
                &offsets,
                all_partial,
                q0,
                c.qb,
                lq,
                lkv,
                c.kvb,
            )?
        }
    };
    let (r_beg, r_end) = (runs.beg, runs.end);

    // ---- params and captured tensors ----------------------------------------------------------
    let env = Env::load(g, p, opts.checked, &ptr, &int)?;

    // ---- state --------------------------------------------------------------------------------
    let nt_o = (c.dv / 8) as usize;
    let o_acc: Vec<Vec<[Var<'ctx>; 4]>> = (0..c.mt)
        .map(|_| (0..nt_o).map(|_| vars4(g, g.cf(0.0))).collect::<R<_>>())
        .collect::<R<_>>()?;
    let m: Vec<[Var<'ctx>; 2]> = (0..c.mt)
        .map(|_| {
            Ok([
                g.var(g.f32, g.cf(f32::NEG_INFINITY))?,
                g.var(g.f32, g.cf(f32::NEG_INFINITY))?,
            ])
        })
        .collect::<R<_>>()?;
    let l: Vec<[Var<'ctx>; 2]> = (0..c.mt)
        .map(|_| Ok([g.var(g.f32, g.cf(0.0))?, g.var(g.f32, g.cf(0.0))?]))
        .collect::<R<_>>()?;
    let st_j = g.var(g.i32, g.c32(0))?;
    let st_end = g.var(g.i32, g.c32(0))?;
    let st_full = g.var(g.i32, g.c32(0))?;
    let st_r = g.var(g.i32, r_beg)?;
    // with `k_prefetch`: the byte offset of the current K buffer (0 or one K tile)
    let st_kbuf = g.var(g.i32, g.c32(0))?;
    let st_nj = g.var(g.i32, g.c32(0))?;
    let zero = g.c32(0);
    // with `overlap`: the V buffer of block j, P of the previous block (zero before the
    // first) and the deferred O rescale factors
    let (st_vbuf, p_prev, alpha) = if c.wg && opts.overlap {
        (
            Some(g.var(g.i32, g.c32(0))?),
            (0..c.kvb / 16)
                .map(|_| {
                    Ok([
                        g.var(g.i32, zero)?,
                        g.var(g.i32, zero)?,
                        g.var(g.i32, zero)?,
                        g.var(g.i32, zero)?,
                    ])
                })
                .collect::<R<Vec<_>>>()?,
            (0..c.mt)
                .map(|_| Ok([g.var(g.f32, g.cf(1.0))?, g.var(g.f32, g.cf(1.0))?]))
                .collect::<R<Vec<_>>>()?,
        )
    } else {
        (None, Vec::new(), Vec::new())
    };

    // the block after (j, run end, full, run r): the rest of this run, else the next run
    // of the row; (next j, end, full, r, whether there is one). The run read is always
    // inside the row (`r_beg` when there is no next run).
    let advance = |j: IntValue<'ctx>,
                   run_end: IntValue<'ctx>,
                   full: IntValue<'ctx>,
                   r: IntValue<'ctx>,
                   fallback: IntValue<'ctx>| {
        let j1 = g.add(j, g.c32(1))?;
        let in_run = g.icmp(IntPredicate::ULT, j1, run_end)?;
        let r1 = g.add(r, g.c32(1))?;
        let more_runs = g.icmp(IntPredicate::ULT, r1, r_end)?;
        let (nj, nend, nfull) = runs.load(g, g.selecti(more_runs, r1, fallback)?)?;
        R::Ok((
            g.selecti(in_run, j1, nj)?,
            g.selecti(in_run, run_end, nend)?,
            g.selecti(in_run, full, nfull)?,
            g.selecti(in_run, r, r1)?,
            g.or(in_run, more_runs)?,
        ))
    };

    // ---- prologue: Q and the first K tile -----------------------------------------------------
    c.q.load_async(g, tid, c.threads, qbase, q0, g.sub(lq, q0)?, zero)?;
    g.cp_async_commit()?;
    let pre = g.block("prologue");
    let lp = g.block("kv_loop");
    let epi = g.block("epilogue");
    g.cond_br(g.icmp(IntPredicate::ULT, r_beg, r_end)?, pre, epi)?;

    g.b.position_at_end(pre);
    let (j0, e0, f0) = runs.load(g, r_beg)?;
    g.set(&st_j, j0)?;
    g.set(&st_end, e0)?;
    g.set(&st_full, f0)?;
    let kv_start = |j: IntValue<'ctx>| g.mul(j, g.c32(c.kvb as i64));
    c.k.load_async(
        g,
        tid,
        c.threads,
        kbase,
        kv_start(j0)?,
        g.sub(lkv, kv_start(j0)?)?,
        zero,
    )?;
    g.cp_async_commit()?;
    g.cp_async_wait(0)?;
    if raw {
        // a negative scale: S' = (-Q) K^T, so that max s' gives max |scale| s'
        let neg = g.fcmp(FloatPredicate::OLT, scale, g.cf(0.0))?;
        g.if_then(neg, || negate_own_chunks(g, &c.q, tid, c.threads))?;
    }
    if c.wg && opts.overlap {
        // the first iteration's P V reads the second V buffer with P = 0: keep it finite
        zero_own_chunks(g, &c.v, tid, c.threads, c.v.bytes())?;
    }
    proxy_fence(g, c)?;
    g.barrier()?;
    let qfrag = if c.q_in_regs && !c.wg {
        Some(load_q_fragments(g, c, &cx)?)
    } else {
        None
    };
    g.br(lp)?;

    // ---- main loop over kv blocks ---------------------------------------------------------------
    g.b.position_at_end(lp);
    let j = g.geti(&st_j)?;
    let run_end = g.geti(&st_end)?;
    let full = g.geti(&st_full)?;
    let r = g.geti(&st_r)?;
    let kv0 = kv_start(j)?;
    g.cp_async_wait(0)?;
    proxy_fence(g, c)?;
    g.barrier()?;
    if let Some(st_vbuf) = st_vbuf {
        let tail = g.block("pv_last");
        // K[j] and V[j-1] are in shared memory; V[j] and K[next] start copying into the
        // buffers that S(j-1) and P V(j-2) read (both finished before the barrier above)
        let vbuf = g.geti(&st_vbuf)?;
        let kbuf = g.geti(&st_kbuf)?;
        let vother = g.xor(vbuf, g.c32(c.v.bytes() as i64))?;
        let kother = g.xor(kbuf, g.c32(c.k.bytes() as i64))?;
        c.v.load_async(g, tid, c.threads, vbase, kv0, g.sub(lkv, kv0)?, vbuf)?;
        let (next_j, next_end, next_full, next_r, has_next) = advance(j, run_end, full, r, r)?;
        g.if_then(has_next, || {
            let nkv0 = kv_start(next_j)?;
            c.k.load_async(g, tid, c.threads, kbase, nkv0, g.sub(lkv, nkv0)?, kother)
        })?;
        g.cp_async_commit()?;
        // S(j), then P V(j-1): two wgmma groups; wait for the first only
        let s_async = qk_wgmma_issue(g, c, &cx, kbuf)?;
        let o_in = o_values(g, &o_acc)?;
        let p_in = p_values(g, &p_prev)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, vother)?;
        let s = split4(&g.wgmma_wait(1, &s_async)?);
        let t = score_and_mask(g, c, &cx, &env, p, &s, kv0, full)?;
        let (pfrag, any) =
            online_softmax(g, c, &cx, &t, &m, &l, &o_acc, Some(&alpha), &mut || Ok(()))?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        set_o(g, &o_acc, &o_now)?;
        g.if_then(any, || {
            for (oi, ai) in o_acc.iter().zip(&alpha) {
                for acc in oi {
                    for (e, v) in acc.iter().enumerate() {
                        let a = g.getf(&ai[e / 2])?;
                        g.set(v, g.fmul(g.getf(v)?, a)?)?;
                    }
                }
            }
            Ok(())
        })?;
        for (pv, pf) in p_prev.iter().zip(&pfrag[0]) {
            for (v, x) in pv.iter().zip(pf) {
                g.set(v, *x)?;
            }
        }
        g.set(&st_j, next_j)?;
        g.set(&st_end, next_end)?;
        g.set(&st_full, next_full)?;
        g.set(&st_r, next_r)?;
        g.set(&st_kbuf, kother)?;
        g.set(&st_vbuf, vother)?;
        g.cond_br(has_next, lp, tail)?;
        // the last block's P V: V[last] is in the buffer the last iteration filled
        g.b.position_at_end(tail);
        g.cp_async_wait(0)?;
        proxy_fence(g, c)?;
        g.barrier()?;
        let vlast = g.xor(g.geti(&st_vbuf)?, g.c32(c.v.bytes() as i64))?;
        let o_in = o_values(g, &o_acc)?;
        let p_in = p_values(g, &p_prev)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, vlast)?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        set_o(g, &o_acc, &o_now)?;
        g.br(epi)?;
    } else {
        c.v.load_async(g, tid, c.threads, vbase, kv0, g.sub(lkv, kv0)?, zero)?;
        g.cp_async_commit()?;
        // with `k_prefetch`: (the K buffer this block reads, the other one)
        let kbufs = if opts.k_prefetch {
            // K[next] into the other buffer (last read by the QK of the previous block, which
            // every warp finished before the barrier above), a whole iteration ahead; the next
            // block is j + 1 inside a run, else the start of the next run (read only then)
            let j1 = g.add(j, g.c32(1))?;
            let in_run = g.icmp(IntPredicate::ULT, j1, run_end)?;
            let r1 = g.add(r, g.c32(1))?;
            let more_runs = g.icmp(IntPredicate::ULT, r1, r_end)?;
            let has = g.or(in_run, more_runs)?;
            g.set(&st_nj, j1)?;
            g.if_then(g.and(g.xor(in_run, g.cbool(true))?, more_runs)?, || {
                let (nj, _, _) = runs.load(g, r1)?;
                g.set(&st_nj, nj)
            })?;
            let nj = g.geti(&st_nj)?;
            let kbuf = g.geti(&st_kbuf)?;
            let other = g.xor(kbuf, g.c32(c.k.bytes() as i64))?;
            g.if_then(has, || {
                let nkv0 = kv_start(nj)?;
                c.k.load_async(g, tid, c.threads, kbase, nkv0, g.sub(lkv, nkv0)?, other)
            })?;
            g.cp_async_commit()?;
            Some((kbuf, other))
        } else {
            None
        };
        let kbuf = kbufs.map_or(zero, |(kbuf, _)| kbuf);
        let s = if c.wg {
            qk_wgmma(g, c, &cx, kbuf)?
        } else {
            qk(g, c, &cx, qfrag.as_deref(), kbuf)?
        };
        let (next_j, next_end, next_full, next_r, has_next) = advance(j, run_end, full, r, r)?;
        let t = score_and_mask(g, c, &cx, &env, p, &s, kv0, full)?;
        let mut sync = || -> R<()> {
            if kbufs.is_some() {
                // V[j] (K[next] may still be in flight)
                g.cp_async_wait(1)?;
                proxy_fence(g, c)?;
                g.barrier()
            } else {
                // V[j], then K[next] into the buffer every warp has finished reading
                g.cp_async_wait(0)?;
                proxy_fence(g, c)?;
                g.barrier()?;
                g.if_then(has_next, || {
                    let nkv0 = kv_start(next_j)?;
                    c.k.load_async(g, tid, c.threads, kbase, nkv0, g.sub(lkv, nkv0)?, zero)?;
                    g.cp_async_commit()
                })
            }
        };
        let pfrag = if opts.early_sync && raw {
            online_softmax(g, c, &cx, &t, &m, &l, &o_acc, None, &mut sync)?.0
        } else {
            let p = online_softmax(g, c, &cx, &t, &m, &l, &o_acc, None, &mut || Ok(()))?.0;
            sync()?;
            p
        };
        if c.wg {
            pv_wgmma(g, c, &cx, &pfrag, &o_acc)?;
        } else {
            pv(g, c, &cx, &pfrag, &o_acc)?;
        }
        g.set(&st_j, next_j)?;
        g.set(&st_end, next_end)?;
        g.set(&st_full, next_full)?;
        g.set(&st_r, next_r)?;
        if let Some((_, other)) = kbufs {
            g.set(&st_kbuf, other)?;
        }
        g.cond_br(has_next, lp, epi)?;
    }

    // ---- epilogue: normalize, store O and LSE ---------------------------------------------------
    g.b.position_at_end(epi);
    g.cp_async_wait(0)?;
    for i in 0..c.mt {
        epilogue(
            g,
            c,
            &cx,
            i,
            ptr(KernelParam::O)?,
            ptr(KernelParam::Lse)?,
            hq,
            &m[i],
            &l[i],
            &o_acc[i],
        )?;
    }
    g.b.build_return(None)?;
    Ok(())
}

fn vars4<'ctx>(g: &Gpu<'ctx>, init: FloatValue<'ctx>) -> R<[Var<'ctx>; 4]> {
    Ok([
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
    ])
}

/// The first query row (within the q block) of m-tile `i` of this warp.
fn mtile_row0<'ctx>(g: &Gpu<'ctx>, c: &Cfg, cx: &Ctx<'ctx>, i: usize) -> R<IntValue<'ctx>> {
    g.add(
        g.mul(cx.warp, g.c32(16 * c.mt as i64))?,
        g.c32(16 * i as i64),
    )
}

/// A fragments of this warp's Q rows: `[m-tile][ks]`, one `[i32; 4]` per 16 columns of D.
fn load_q_fragments<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
) -> R<Vec<Vec<[IntValue<'ctx>; 4]>>> {
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
) -> R<[IntValue<'ctx>; 4]> {
    // lane l addresses row (l % 8) + 8 ((l / 8) % 2) of the m-tile, chunk 2 ks + l / 16
    let r8 = g.and(cx.lane, g.c32(7))?;
    let hi8 = g.and(g.lshr(cx.lane, g.c32(3))?, g.c32(1))?;
    let row = g.add(g.add(mtile_row0(g, c, cx, i)?, r8)?, g.mul(hi8, g.c32(8))?)?;
    let half = g.lshr(cx.lane, g.c32(4))?;
    let chunk = g.add(g.c32(2 * ks as i64), half)?;
    g.ldmatrix_x4(c.q.addr(g, row, chunk)?, false)
}

/// S = Q K^T for this warp: per m-tile, `kv_block / 8` accumulators of m16n8. Q comes
/// from `qfrag` (`[m-tile][ks]`) or, without it, from shared memory.
fn qk<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    qfrag: Option<&[Vec<[IntValue<'ctx>; 4]>]>,
    kbuf: IntValue<'ctx>,
) -> R<Vec<Vec<[FloatValue<'ctx>; 4]>>> {
    let zero = g.cf(0.0);
    let mut s = vec![vec![[zero; 4]; (c.kvb / 8) as usize]; c.mt];
    // lane l: matrix mi = l / 8 -> kv row (2 ntp + mi / 2) * 8 + l % 8, chunk 2 ks + mi % 2
    let r8 = g.and(cx.lane, g.c32(7))?;
    let mi = g.lshr(cx.lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.lshr(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.and(mi, g.c32(1))?;
    for ks in 0..c.d as usize / 16 {
        let a: Vec<[IntValue<'ctx>; 4]> = (0..c.mt)
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

/// On the wgmma path: makes this thread's shared-memory writes (cp.async, the Q negation)
/// visible to the tensor cores' async-proxy reads after the barrier that follows.
fn proxy_fence(g: &Gpu<'_>, c: &Cfg) -> R<()> {
    if c.wg { g.fence_proxy_async() } else { Ok(()) }
}

/// Byte offset of the 16-column step `ks` (of a 128-byte-swizzled slab tile) from the
/// tile start: the slab, then 32 bytes per step inside the 128-byte row (the hardware
/// applies the swizzle to the address bits, so the start moves unswizzled).
fn kstep_offset(t: &SmemTile, ks: u32) -> u32 {
    (ks / 4) * t.rows * 128 + (ks % 4) * 32
}

/// S = Q K^T with wgmma for this warp's 16 rows (its warpgroup's 64): `kv_block / 8`
/// m16n8-ordered accumulators, in the `[m-tile][n-tile]` shape of `qk` (one m-tile).
/// Q and K are K-major in shared memory (8-row groups 1024 bytes apart); issued, then
/// waited for at once.
fn qk_wgmma<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    kbuf: IntValue<'ctx>,
) -> R<Vec<Vec<[FloatValue<'ctx>; 4]>>> {
    let acc = qk_wgmma_issue(g, c, cx, kbuf)?;
    Ok(split4(&g.wgmma_wait(0, &acc)?))
}

/// Issues S = Q K^T (one committed wgmma group); the values returned are valid only
/// after a `wgmma_wait` that covers the group.
fn qk_wgmma_issue<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    kbuf: IntValue<'ctx>,
) -> R<Vec<FloatValue<'ctx>>> {
    let wgi = g.lshr(cx.warp, g.c32(2))?;
    let q_base = g.smem_addr32(g.add(g.mul(wgi, g.c32(64 * 128))?, g.c32(c.q.offset as i64))?)?;
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

/// `[[x; 4]]` of one m-tile from a flat accumulator list (m16n8 order per n8 chunk).
fn split4<'ctx>(acc: &[FloatValue<'ctx>]) -> Vec<Vec<[FloatValue<'ctx>; 4]>> {
    vec![acc.chunks(4).map(|x| [x[0], x[1], x[2], x[3]]).collect()]
}

/// The current values of O (one m-tile), flat in accumulator order.
fn o_values<'ctx>(g: &Gpu<'ctx>, o: &[Vec<[Var<'ctx>; 4]>]) -> R<Vec<FloatValue<'ctx>>> {
    let mut v = Vec::with_capacity(o[0].len() * 4);
    for x in &o[0] {
        for e in x {
            v.push(g.getf(e)?);
        }
    }
    Ok(v)
}

fn set_o<'ctx>(g: &Gpu<'ctx>, o: &[Vec<[Var<'ctx>; 4]>], vals: &[FloatValue<'ctx>]) -> R<()> {
    for (x, v) in o[0].iter().zip(vals.chunks(4)) {
        for i in 0..4 {
            g.set(&x[i], v[i])?;
        }
    }
    Ok(())
}

fn p_values<'ctx>(g: &Gpu<'ctx>, p: &[[Var<'ctx>; 4]]) -> R<Vec<[IntValue<'ctx>; 4]>> {
    p.iter()
        .map(|x| {
            Ok([
                g.geti(&x[0])?,
                g.geti(&x[1])?,
                g.geti(&x[2])?,
                g.geti(&x[3])?,
            ])
        })
        .collect()
}

/// O += P V with wgmma: P from registers (the A fragments of `online_softmax`, one
/// m-tile), V N-major in shared memory (`imm-trans-b`): 64-column slabs `kv_block * 128`
/// bytes apart (leading byte offset), 8 kv rows 1024 bytes apart (stride byte offset).
fn pv_wgmma<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    _cx: &Ctx<'ctx>,
    pfrag: &[Vec<[IntValue<'ctx>; 4]>],
    o: &[Vec<[Var<'ctx>; 4]>],
) -> R<()> {
    let acc = o_values(g, o)?;
    let acc = pv_wgmma_issue(g, c, &pfrag[0], &acc, g.c32(0))?;
    set_o(g, o, &g.wgmma_wait(0, &acc)?)
}

/// Issues O += P V (one committed wgmma group) with V in the buffer `vbuf` bytes past
/// the V tile; the values returned are valid only after a `wgmma_wait` covering it.
fn pv_wgmma_issue<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    pfrag: &[[IntValue<'ctx>; 4]],
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

/// The logits in log2 units: `score(scale * s) * log2 e`, or -inf where masked. Full
/// blocks that end inside the sequence skip the mask and the bounds checks.
#[allow(clippy::too_many_arguments)]
fn score_and_mask<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    env: &Env<'ctx>,
    p: &Program,
    s: &[Vec<[FloatValue<'ctx>; 4]>],
    kv0: IntValue<'ctx>,
    full: IntValue<'ctx>,
) -> R<Vec<Vec<[Var<'ctx>; 4]>>> {
    let t: Vec<Vec<[Var<'ctx>; 4]>> = s
        .iter()
        .map(|si| si.iter().map(|_| vars4(g, g.cf(0.0))).collect::<R<_>>())
        .collect::<R<_>>()?;
    let tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(c.kvb as i64))?, cx.lkv)?;
    let fast = g.and(
        g.icmp(IntPredicate::NE, full, g.c32(0))?,
        g.xor(tail, g.cbool(true))?,
    )?;
    let fast_bb = g.block("full_block");
    let slow_bb = g.block("partial_block");
    let merge = g.block("scored");
    let scale_log2 = g.fmul(cx.scale, g.cf(LOG2E))?;
    let row_bases: Vec<IntValue<'ctx>> = (0..c.mt)
        .map(|i| {
            g.add(
                g.add(cx.q0, mtile_row0(g, c, cx, i)?)?,
                g.lshr(cx.lane, g.c32(2))?,
            )
        })
        .collect::<R<_>>()?;
    let col_base = g.add(kv0, g.mul(g.and(cx.lane, g.c32(3))?, g.c32(2))?)?;
    g.cond_br(fast, fast_bb, slow_bb)?;
    for slow in [false, true] {
        g.b.position_at_end(if slow { slow_bb } else { fast_bb });
        for (mi, nt, acc) in s
            .iter()
            .enumerate()
            .flat_map(|(mi, si)| si.iter().enumerate().map(move |(nt, a)| (mi, nt, a)))
        {
            let row_base = row_bases[mi];
            for (i, x) in acc.iter().enumerate() {
                let q = g.add(row_base, g.c32(8 * (i as i64 / 2)))?;
                let kv = g.add(col_base, g.c32(nt as i64 * 8 + (i as i64 % 2)))?;
                let q_in = g.icmp(IntPredicate::SLT, q, cx.lq)?;
                let kv_in = g.icmp(IntPredicate::SLT, kv, cx.lkv)?;
                let e = Elem {
                    s: g.fmul(*x, cx.scale)?,
                    b: cx.b,
                    h: cx.h,
                    q,
                    kv,
                    inside: g.and(q_in, kv_in)?,
                };
                let score = |e: Elem<'ctx>| -> R<FloatValue<'ctx>> {
                    match &p.score {
                        Some(f) => Ok(
                            g.fmul(emit_function(g, env, f, e)?.into_float_value(), g.cf(LOG2E))?
                        ),
                        None if cx.raw => Ok(*x),
                        None => g.fmul(*x, scale_log2),
                    }
                };
                let v = if !slow {
                    score(e)?
                } else {
                    let keep = match &p.mask {
                        Some(f) => g.and(kv_in, emit_function(g, env, f, e)?.into_int_value())?,
                        None => kv_in,
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
                g.set(&t[mi][nt][i], v)?;
            }
        }
        g.br(merge)?;
    }
    g.b.position_at_end(merge);
    Ok(t)
}

/// Online softmax over this block's logits `t` (`[m-tile][n-tile]`, in units of
/// `c2`): updates m and l, rescales O, and returns P as bf16/f16 A fragments,
/// `[m-tile][16 kv columns]`. Lazy rescaling: the running max moves (and O and l are
/// rescaled) only when some row of the warp grows by more than `RESCALE_LOG2` in log2
/// units; otherwise P is taken against the stale max (P < 2^RESCALE_LOG2, exact after
/// the final division since O, l and the LSE all use the same max). `before_exp` runs
/// after the rescale and before the exponentials. With `defer` (per m-tile, the two
/// row halves), O is not touched: the rescale factors go there instead, and the caller
/// multiplies O by them when the returned vote (any row rescaled) holds.
#[allow(clippy::too_many_arguments)]
fn online_softmax<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    t: &[Vec<[Var<'ctx>; 4]>],
    m: &[[Var<'ctx>; 2]],
    l: &[[Var<'ctx>; 2]],
    o: &[Vec<[Var<'ctx>; 4]>],
    defer: Option<&[[Var<'ctx>; 2]]>,
    before_exp: &mut dyn FnMut() -> R<()>,
) -> R<(Vec<Vec<[IntValue<'ctx>; 4]>>, IntValue<'ctx>)> {
    let thresh = RESCALE_LOG2;
    let tv: Vec<Vec<[FloatValue<'ctx>; 4]>> = t
        .iter()
        .map(|ti| {
            ti.iter()
                .map(|x| {
                    Ok([
                        g.getf(&x[0])?,
                        g.getf(&x[1])?,
                        g.getf(&x[2])?,
                        g.getf(&x[3])?,
                    ])
                })
                .collect::<R<Vec<_>>>()
        })
        .collect::<R<_>>()?;
    // row maxima of this block and whether any row of the warp needs a new max
    let mut m_blk = vec![[g.cf(0.0); 2]; c.mt];
    let mut any = g.cbool(false);
    for (i, ti) in tv.iter().enumerate() {
        for hr in 0..2 {
            let mut mx = g.cf(f32::NEG_INFINITY);
            for x in ti {
                mx = g.fmax(mx, g.fmax(x[2 * hr], x[2 * hr + 1])?)?;
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
                    g.set(&d[i][hr], alpha)?;
                    continue;
                }
                for acc in &o[i] {
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
    for (i, ti) in tv.iter().enumerate() {
        let mut pv = ti.clone();
        for hr in 0..2 {
            let m_cur = g.getf(&m[i][hr])?;
            let none = g.fcmp(FloatPredicate::OEQ, m_cur, g.cf(f32::NEG_INFINITY))?;
            let mc = g.fmul(g.selectf(none, g.cf(0.0), m_cur)?, cx.c2)?;
            let mut sum = g.cf(0.0);
            for (nt, x) in ti.iter().enumerate() {
                for cc in 0..2 {
                    // one FMA + ex2 per element
                    let e = g.ex2(g.fsub(g.fmul(x[2 * hr + cc], cx.c2)?, mc)?)?;
                    pv[nt][2 * hr + cc] = e;
                    sum = g.fadd(sum, e)?;
                }
            }
            g.set(&l[i][hr], g.fadd(g.getf(&l[i][hr])?, sum)?)?;
        }
        out.push(
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
                .collect::<R<_>>()?,
        );
    }
    Ok((out, any))
}

/// Rescaling threshold of the running max, in log2 units (P stays below 2^8). Measured
/// on an H200 (D128 dense): 342 TFLOP/s against 332 when rescaling at every increase
/// (and 315 without the raw-score FMA path).
const RESCALE_LOG2: f32 = 8.0;

/// Negates (flips the sign bit of) the 16-byte chunks of `tile` that this thread loaded
/// with `load_async`.
fn negate_own_chunks<'ctx>(
    g: &Gpu<'ctx>,
    tile: &SmemTile,
    tid: IntValue<'ctx>,
    threads: u32,
) -> R<()> {
    let total = tile.rows * tile.chunks();
    let log_chunks = tile.chunks().trailing_zeros() as i64;
    let v4 = g.i32.vec_type(4);
    let sign = g.c32(0x8000_8000u32 as i32 as i64);
    let signs = inkwell::types::VectorType::const_vector(&[sign; 4]);
    for k in 0..total / threads {
        let i = g.add(tid, g.c32((k * threads) as i64))?;
        let row = g.lshr(i, g.c32(log_chunks))?;
        let chunk = g.and(i, g.c32(tile.chunks() as i64 - 1))?;
        let ptr = tile.addr(g, row, chunk)?;
        let ld = g.b.build_load(v4, ptr, "")?;
        ld.as_instruction_value()
            .ok_or(LlvmError::Internal("load"))?
            .set_alignment(16)
            .map_err(|_| LlvmError::Internal("alignment"))?;
        let x = g.b.build_xor(ld.into_vector_value(), signs, "")?;
        let st = g.b.build_store(ptr, x)?;
        st.set_alignment(16)
            .map_err(|_| LlvmError::Internal("alignment"))?;
    }
    Ok(())
}

/// Zeroes the 16-byte chunks of `tile` (placed `extra` bytes further) that this thread
/// would copy with `load_async`.
fn zero_own_chunks<'ctx>(
    g: &Gpu<'ctx>,
    tile: &SmemTile,
    tid: IntValue<'ctx>,
    threads: u32,
    extra: u32,
) -> R<()> {
    let total = tile.rows * tile.chunks();
    let log_chunks = tile.chunks().trailing_zeros() as i64;
    let v4 = g.i32.vec_type(4);
    for k in 0..total / threads {
        let i = g.add(tid, g.c32((k * threads) as i64))?;
        let row = g.lshr(i, g.c32(log_chunks))?;
        let chunk = g.and(i, g.c32(tile.chunks() as i64 - 1))?;
        let ptr = tile.addr_at(g, row, chunk, g.c32(extra as i64))?;
        let st = g.b.build_store(ptr, v4.const_zero())?;
        st.set_alignment(16)
            .map_err(|_| LlvmError::Internal("alignment"))?;
    }
    Ok(())
}

/// O += P V for this warp (V fragments via `ldmatrix.trans`).
fn pv<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    pfrag: &[Vec<[IntValue<'ctx>; 4]>],
    o: &[Vec<[Var<'ctx>; 4]>],
) -> R<()> {
    let mut acc: Vec<Vec<[FloatValue<'ctx>; 4]>> = o
        .iter()
        .map(|oi| {
            oi.iter()
                .map(|x| {
                    Ok([
                        g.getf(&x[0])?,
                        g.getf(&x[1])?,
                        g.getf(&x[2])?,
                        g.getf(&x[3])?,
                    ])
                })
                .collect::<R<_>>()
        })
        .collect::<R<_>>()?;
    // lane l: matrix mi = l / 8 -> kv row 16 kk + (mi % 2) * 8 + l % 8, chunk 2 ntp + mi / 2
    let r8 = g.and(cx.lane, g.c32(7))?;
    let mi = g.lshr(cx.lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.and(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.lshr(mi, g.c32(1))?;
    for kk in 0..(c.kvb / 16) as usize {
        for ntp in 0..(c.dv / 16) as usize {
            let row = g.add(row_in, g.c32(16 * kk as i64))?;
            let chunk = g.add(chunk_in, g.c32(2 * ntp as i64))?;
            let bf = g.ldmatrix_x4(c.v.addr(g, row, chunk)?, true)?;
            for (acc, pf) in acc.iter_mut().zip(pfrag) {
                let a = &pf[kk];
                acc[2 * ntp] = g.mma(c.ty, a, &[bf[0], bf[1]], &acc[2 * ntp])?;
                acc[2 * ntp + 1] = g.mma(c.ty, a, &[bf[2], bf[3]], &acc[2 * ntp + 1])?;
            }
        }
    }
    for (oi, ai) in o.iter().zip(&acc) {
        for (x, v) in oi.iter().zip(ai) {
            for i in 0..4 {
                g.set(&x[i], v[i])?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn epilogue<'ctx>(
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
    let row_base = g.add(
        g.add(cx.q0, mtile_row0(g, c, cx, mtile)?)?,
        g.lshr(cx.lane, g.c32(2))?,
    )?;
    let quad = g.and(cx.lane, g.c32(3))?;
    for hr in 0..2 {
        let mut lt = g.getf(&l[hr])?;
        lt = g.fadd(lt, g.shfl_xor(lt, 1)?)?;
        lt = g.fadd(lt, g.shfl_xor(lt, 2)?)?;
        let pos = g.fcmp(FloatPredicate::OGT, lt, g.cf(0.0))?;
        let inv = g.selectf(pos, g.b.build_float_div(g.cf(1.0), lt, "")?, g.cf(0.0))?;
        let row = g.add(row_base, g.c32(8 * hr as i64))?;
        let mhr = g.getf(&m[hr])?;
        let vals: Vec<[FloatValue<'ctx>; 2]> = o
            .iter()
            .map(|x| Ok([g.getf(&x[2 * hr])?, g.getf(&x[2 * hr + 1])?]))
            .collect::<R<_>>()?;
        g.if_then(g.icmp(IntPredicate::SLT, row, cx.lq)?, || {
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
                let lse = g.fmul(g.fadd(g.fmul(mhr, cx.c2)?, g.lg2(lt)?)?, g.cf(LN2))?;
                let lse = g.selectf(pos, lse, g.cf(f32::NEG_INFINITY))?;
                let ptr = g.gep_bytes(lse_ptr, g.mul(grow, g.c64(4))?)?;
                g.store(ptr, lse)
            })
        })?;
    }
    Ok(())
}
