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

//!
//! The phases live in modules a backward or decode kernel can share: `tile.rs` (sizes,
//! fragments, register tiles), `matmul.rs` (S = Q Kᵀ, O += P V on both matrix paths),
//! `score.rs` (score and mask on S's fragments), `softmax.rs` (online softmax, the
//! epilogue), `pipeline.rs` (the kv cursor and its next-block step, the K/V `cp.async`
//! stages), `cta.rs` (the CTA's place and its kv runs). This file is the algorithm: the
//! prologue, one kv-loop iteration per matrix schedule, the epilogue; with
//! `PtxOptions::ws` the kernel body is the warp-specialized one of `hopper.rs` instead.

use super::bounds::{KvBounds, RowRuns};
use super::cta::{Args, place, row_runs, tensor_map_param};
use super::expr::Env;
use super::gpu::{GLOBAL, Gpu, R, Var};
use super::matmul::{load_q_fragments, pv, pv_wgmma, pv_wgmma_issue, qk, qk_wgmma, qk_wgmma_issue};
use super::pipeline::{
    KvCursor, KvPos, KvStream, Step, negate_own_chunks, proxy_fence, zero_own_chunks,
};
use super::score::score_and_mask;
use super::softmax::{epilogue, online_softmax};
use super::tile::{AccTile, Cfg, Ctx, Frag, FragRegs, RowState, split4, tiles};
use super::{KernelParam, KvCache, LlvmError, PtxOptions};
use crate::ir::Program;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::IntValue;
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

/// (threads per CTA, dynamic shared memory bytes): Q, one or two K tiles, one or (with
/// `overlap`) two V tiles; with `ws` the K/V ring and its mbarriers (`hopper::Layout`).
pub(crate) fn sizes(opts: &PtxOptions) -> (u32, u32) {
    if opts.ws {
        return (opts.threads(), super::hopper::Layout::new(opts).bytes);
    }
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
pub(crate) fn param_list(p: &Program, kv: &KvBounds, opts: &PtxOptions) -> Vec<KernelParam> {
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
    if opts.ws {
        v.extend([TmaQ, TmaK, TmaV]);
    }
    if opts.ws && opts.kv_cache == KvCache::Paged {
        v.extend([PageTable, PageShift, MaxPages, NumPages]);
    }
    if opts.ws && opts.o_tma {
        v.push(TmaO);
    }
    if opts.ws && opts.device_lens.is_some() {
        v.push(SeqLens);
    }
    if opts.ws && opts.doc_tiles {
        v.push(DocTiles);
    }
    if opts.persistent {
        v.push(Batch);
    }
    let tail = super::hopper::tail_split_on(opts, kv);
    if opts.dynamic_tiles || tail {
        v.push(TileCounter);
    }
    if tail {
        v.push(TailWork);
    }
    v
}

pub(crate) fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    entry: &str,
) -> R<Built<'ctx>> {
    if opts.kv_cache == KvCache::Paged && !opts.ws {
        return Err(LlvmError::Unsupported(
            "a paged K/V cache (kv_cache = Paged) is read by the warp-specialized forward (ws) only"
                .into(),
        ));
    }
    if let Some(q0) = opts.device_lens {
        // (a block table: built per sequence on the GPU from the same lengths,
        // `blocktable`, the runtime's choice for masks over captured tensors)
        let ok = opts.ws
            && !opts.tail_split
            && !opts.q_ahead
            && !opts.cross_tile
            && p.params
                .get(q0 as usize)
                .is_some_and(|x| x.ty == crate::ir::Type::I32);
        if !ok {
            return Err(LlvmError::Unsupported(format!(
                "lengths on the device (device_lens = param {q0}) need the warp-specialized forward without tail_split, q_ahead or cross_tile, and an i32 param {q0}"
            )));
        }
    }
    if opts.doc_tiles {
        let ok = opts.ws
            && kv.is_closed_form()
            && !opts.tail_split
            && !opts.o_tma
            && !opts.q_ahead
            && !opts.cross_tile
            && !opts.q_from_end
            && opts.device_lens.is_none()
            && opts.kv_cache == KvCache::Contiguous;
        if !ok {
            return Err(LlvmError::Unsupported(
                "document tiles (doc_tiles) need the warp-specialized forward with closed-form kv bounds, whole tiles in the list's order (not tail_split, o_tma, q_ahead, cross_tile, q_from_end), no lengths on the device and a contiguous cache".into(),
            ));
        }
    }
    let params = param_list(p, kv, opts);
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    // a tensor map: a by-value 128-byte parameter, addressed in place (grid constant)
    let map_ptr = ctx.ptr_type(AddressSpace::default());
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|k| match k {
            KernelParam::Scale => ctx.f32_type().into(),
            KernelParam::Lq
            | KernelParam::Lkv
            | KernelParam::Hq
            | KernelParam::Hkv
            | KernelParam::NumQBlocks
            | KernelParam::Batch
            | KernelParam::MapBStride
            | KernelParam::MapHStride
            | KernelParam::KvAllPartial
            | KernelParam::PageShift
            | KernelParam::MaxPages
            | KernelParam::NumPages
            | KernelParam::TensorDim { .. } => ctx.i32_type().into(),
            KernelParam::KvOffset(_) => ctx.i64_type().into(),
            KernelParam::TmaQ | KernelParam::TmaK | KernelParam::TmaV | KernelParam::TmaO => {
                map_ptr.into()
            }
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
            KernelParam::TmaQ | KernelParam::TmaK | KernelParam::TmaV | KernelParam::TmaO
        ) {
            tensor_map_param(ctx, func, i as u32);
        }
        if matches!(
            k,
            KernelParam::Q | KernelParam::K | KernelParam::V | KernelParam::O | KernelParam::Lse
        ) {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
        }
    }
    let mut cfg = Cfg::new(opts);
    // block tables index their rows by q blocks from row 0
    cfg.q_from_end &= kv.is_closed_form();
    let smem_bytes = sizes(opts).1;

    let g = Gpu::new(ctx, module, func);
    if cfg.wg {
        // the wgmma swizzle atoms (1024 bytes) must be aligned in the shared window
        g.smem.set_alignment(1024);
    }
    let start = g.open_body();
    if opts.ws {
        super::hopper::body(&g, &cfg, p, opts, kv, &params)?;
    } else {
        body(&g, &cfg, p, opts, kv, &params)?;
    }
    g.close_allocas(start)?;
    Ok(Built {
        module: g.module,
        threads,
        smem_bytes,
        params,
    })
}

/// Everything one forward kernel's phases share: its sizes, its place, the program and
/// its loaded params/tensors, the row's kv runs, the K/V stream and the state that
/// lives across kv blocks.
struct Forward<'a, 'ctx> {
    g: &'a Gpu<'ctx>,
    c: &'a Cfg,
    cx: Ctx<'ctx>,
    p: &'a Program,
    opts: &'a PtxOptions,
    env: Env<'ctx>,
    runs: RowRuns<'ctx>,
    kvs: KvStream<'ctx>,
    /// O, the running row max m and row sum l (in units of `c2`).
    o: AccTile<'ctx>,
    m: RowState<'ctx>,
    l: RowState<'ctx>,
    cursor: KvCursor<'ctx>,
    /// With `k_prefetch` or `overlap`: the byte offset of the current K buffer (0 or one
    /// K tile).
    kbuf: Var<'ctx>,
    /// With `k_prefetch`: the next block's index.
    next_j: Var<'ctx>,
    /// The Q fragments, when they stay in registers.
    qfrag: Option<Vec<Vec<Frag<'ctx>>>>,
}

/// The overlapped wgmma schedule's state: the V buffer of block j, P of the previous
/// block (zero before the first) and the deferred O rescale factors.
struct Overlap<'ctx> {
    vbuf: Var<'ctx>,
    p_prev: FragRegs<'ctx>,
    alpha: RowState<'ctx>,
}

/// The kernel, phase by phase.
fn body<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    params: &[KernelParam],
) -> R<()> {
    let a = Args { g, params };
    let (cx, at) = place(g, c, p, &a)?;
    let runs = row_runs(g, c, p, kv, &a, &cx, at.qb, at.nqb)?;
    let mut env = Env::load(g, p, opts.checked, &|k| a.ptr(k), &|k| a.int(k))?;
    env.kinds = super::score::mask_kinds(p, opts);

    // ---- state that lives across kv blocks ------------------------------------------------------
    let o = AccTile::new(g, c.mt, (c.dv / 8) as usize, 0.0)?;
    let m = RowState::new(g, c.mt, f32::NEG_INFINITY)?;
    let l = RowState::new(g, c.mt, 0.0)?;
    let cursor = KvCursor::new(g, runs.beg)?;
    let kbuf = g.var(g.i32, g.c32(0))?;
    let next_j = g.var(g.i32, g.c32(0))?;
    let overlap = if c.wg && opts.overlap {
        Some(Overlap {
            vbuf: g.var(g.i32, g.c32(0))?,
            p_prev: FragRegs::zeros(g, (c.kvb / 16) as usize)?,
            alpha: RowState::new(g, c.mt, 1.0)?,
        })
    } else {
        None
    };
    let kvs = KvStream {
        tid: at.tid,
        threads: c.threads,
        kv_block: c.kvb,
        lkv: cx.lkv,
        k: c.k,
        v: c.v,
        kbase: at.kbase,
        vbase: at.vbase,
    };
    let mut f = Forward {
        g,
        c,
        cx,
        p,
        opts,
        env,
        runs,
        kvs,
        o,
        m,
        l,
        cursor,
        kbuf,
        next_j,
        qfrag: None,
    };

    // ---- prologue: Q and the first K tile -----------------------------------------------------
    let (q0, lq) = (f.cx.q0, f.cx.lq);
    c.q.load_async(g, at.tid, c.threads, at.qbase, q0, g.sub(lq, q0)?, g.c32(0))?;
    g.cp_async_commit()?;
    let pre = g.block("prologue");
    let lp = g.block("kv_loop");
    let epi = g.block("epilogue");
    g.cond_br(g.icmp(IntPredicate::ULT, f.runs.beg, f.runs.end)?, pre, epi)?;
    g.b.position_at_end(pre);
    f.prologue(overlap.is_some())?;
    g.br(lp)?;

    // ---- main loop over kv blocks ---------------------------------------------------------------
    g.b.position_at_end(lp);
    let pos = f.cursor.get(g)?;
    let kv0 = f.kvs.kv0(g, pos.j)?;
    g.cp_async_wait(0)?;
    proxy_fence(g, c)?;
    g.barrier()?;
    match &overlap {
        Some(ov) => f.overlapped_iteration(ov, pos, kv0, lp, epi)?,
        None => f.iteration(pos, kv0, lp, epi)?,
    }

    // ---- epilogue: normalize, store O and LSE ---------------------------------------------------
    g.b.position_at_end(epi);
    g.cp_async_wait(0)?;
    for i in 0..c.mt {
        epilogue(
            g,
            c,
            &f.cx,
            i,
            a.ptr(KernelParam::O)?,
            a.ptr(KernelParam::Lse)?,
            at.hq,
            &f.m.rows[i],
            &f.l.rows[i],
            &f.o.tiles[i],
        )?;
    }
    g.b.build_return(None)?;
    Ok(())
}

impl<'ctx> Forward<'_, 'ctx> {
    /// The row has a kv block: K of the first one, Q ready (negated for a negative scale
    /// on the raw-score path), with `overlap` the second V buffer zeroed, Q fragments
    /// loaded when they stay in registers.
    fn prologue(&mut self, overlap: bool) -> R<()> {
        let (g, c) = (self.g, self.c);
        let (tid, zero) = (self.kvs.tid, g.c32(0));
        let j0 = self.cursor.start(g, &self.runs)?;
        self.kvs.load_k(g, j0, zero)?;
        g.cp_async_commit()?;
        g.cp_async_wait(0)?;
        if self.cx.raw {
            // a negative scale: S' = (-Q) K^T, so that max s' gives max |scale| s'
            let neg = g.fcmp(FloatPredicate::OLT, self.cx.scale, g.cf(0.0))?;
            g.if_then(neg, || negate_own_chunks(g, &c.q, tid, c.threads))?;
        }
        if overlap {
            // the first iteration's P V reads the second V buffer with P = 0: keep it finite
            zero_own_chunks(g, &c.v, tid, c.threads, c.v.bytes())?;
        }
        proxy_fence(g, c)?;
        g.barrier()?;
        if c.q_in_regs && !c.wg {
            self.qfrag = Some(load_q_fragments(g, c, &self.cx)?);
        }
        Ok(())
    }

    /// One kv block, K[j] in shared memory (mma.sync, or wgmma without overlap):
    /// V[j] (and with `k_prefetch` K[next]) start copying, S = Q K[j]^T, score and mask,
    /// online softmax, wait for V[j] (and without `k_prefetch` start K[next]), O += P V.
    fn iteration(
        &self,
        pos: KvPos<'ctx>,
        kv0: IntValue<'ctx>,
        lp: BasicBlock<'ctx>,
        epi: BasicBlock<'ctx>,
    ) -> R<()> {
        let (g, c, cx) = (self.g, self.c, &self.cx);
        let zero = g.c32(0);
        self.kvs.load_v(g, kv0, zero)?;
        g.cp_async_commit()?;
        // with `k_prefetch`: (the K buffer this block reads, the other one, the step)
        let prefetch = if self.opts.k_prefetch {
            // K[next] into the other buffer (last read by the QK of the previous block, which
            // every warp finished before the barrier above), a whole iteration ahead
            let step = pos.step(g, &self.runs)?;
            let has = step.exists(g)?;
            let nj = step.next_block(g, &self.runs, &self.next_j)?;
            let kbuf = g.geti(&self.kbuf)?;
            let other = g.xor(kbuf, g.c32(c.k.bytes() as i64))?;
            g.if_then(has, || self.kvs.load_k(g, nj, other))?;
            g.cp_async_commit()?;
            Some((kbuf, other, step))
        } else {
            None
        };
        let kbuf = prefetch.map_or(zero, |(kbuf, _, _)| kbuf);
        let s = if c.wg {
            qk_wgmma(g, c, cx, kbuf)?
        } else {
            qk(g, c, cx, self.qfrag.as_deref(), kbuf)?
        };
        let step: Step<'ctx> = match prefetch {
            Some((_, _, step)) => step,
            None => pos.step(g, &self.runs)?,
        };
        let (next, has_next) = step.next(g, &self.runs)?;
        let t = score_and_mask(g, c, cx, &self.env, self.p, &s, kv0, pos.full, None)?;
        let mut sync = || -> R<()> {
            if prefetch.is_some() {
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
                    self.kvs.load_k(g, next.j, zero)?;
                    g.cp_async_commit()
                })
            }
        };
        let (m, l, o) = (&self.m, &self.l, &self.o);
        let pfrag = if self.opts.early_sync && cx.raw {
            // the wait and barrier between the max and the exponentials, so that the ex2
            // and the P V mma share a basic block
            online_softmax(g, c, cx, &t, m, l, o, None, &mut sync)?.0
        } else {
            let p = online_softmax(g, c, cx, &t, m, l, o, None, &mut || Ok(()))?.0;
            sync()?;
            p
        };
        if c.wg {
            pv_wgmma(g, c, &pfrag, o)?;
        } else {
            pv(g, c, cx, &pfrag, o)?;
        }
        self.cursor.set(g, &next)?;
        if let Some((_, other, _)) = prefetch {
            g.set(&self.kbuf, other)?;
        }
        g.cond_br(has_next, lp, epi)
    }

    /// One kv block on the overlapped wgmma schedule, K[j] and V[j-1] in shared memory:
    /// V[j] and K[next] start copying into the buffers S(j-1) and P V(j-2) read; S(j) and
    /// P V(j-1) are issued as two wgmma groups; the softmax of S(j) runs while P V(j-1)
    /// is in flight and O's rescale is deferred until it lands. After the last block, its
    /// own P V (block `pv_last`).
    fn overlapped_iteration(
        &self,
        ov: &Overlap<'ctx>,
        pos: KvPos<'ctx>,
        kv0: IntValue<'ctx>,
        lp: BasicBlock<'ctx>,
        epi: BasicBlock<'ctx>,
    ) -> R<()> {
        let (g, c, cx) = (self.g, self.c, &self.cx);
        let tail = g.block("pv_last");
        // K[j] and V[j-1] are in shared memory; V[j] and K[next] start copying into the
        // buffers that S(j-1) and P V(j-2) read (both finished before the barrier above)
        let vbuf = g.geti(&ov.vbuf)?;
        let kbuf = g.geti(&self.kbuf)?;
        let vother = g.xor(vbuf, g.c32(c.v.bytes() as i64))?;
        let kother = g.xor(kbuf, g.c32(c.k.bytes() as i64))?;
        self.kvs.load_v(g, kv0, vbuf)?;
        let (next, has_next) = pos.step(g, &self.runs)?.next(g, &self.runs)?;
        g.if_then(has_next, || self.kvs.load_k(g, next.j, kother))?;
        g.cp_async_commit()?;
        // S(j), then P V(j-1): two wgmma groups; wait for the first only
        let s_async = qk_wgmma_issue(g, c, cx, kbuf, None)?;
        let o_in = self.o.flat(g)?;
        let p_in = ov.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, vother)?;
        let s = split4(&g.wgmma_wait(1, &s_async)?);
        let t = score_and_mask(g, c, cx, &self.env, self.p, &s, kv0, pos.full, None)?;
        let (pfrag, any) = online_softmax(
            g,
            c,
            cx,
            &t,
            &self.m,
            &self.l,
            &self.o,
            Some(&ov.alpha),
            &mut || Ok(()),
        )?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        self.o.store_flat(g, &o_now)?;
        g.if_then(any, || self.o.scale_rows(g, &ov.alpha))?;
        ov.p_prev.store(g, &pfrag[0])?;
        self.cursor.set(g, &next)?;
        g.set(&self.kbuf, kother)?;
        g.set(&ov.vbuf, vother)?;
        g.cond_br(has_next, lp, tail)?;
        // the last block's P V: V[last] is in the buffer the last iteration filled
        g.b.position_at_end(tail);
        g.cp_async_wait(0)?;
        proxy_fence(g, c)?;
        g.barrier()?;
        let vlast = g.xor(g.geti(&ov.vbuf)?, g.c32(c.v.bytes() as i64))?;
        let o_in = self.o.flat(g)?;
        let p_in = ov.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, vlast)?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        self.o.store_flat(g, &o_now)?;
        g.br(epi)
    }
}
