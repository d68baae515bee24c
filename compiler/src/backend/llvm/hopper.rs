//! The warp-specialized sm_90a forward (`PtxOptions::ws`): FlashAttention-3's schedule on
//! the phases the other forward kernel uses.
//!
//! In: the kernel function (its parameters include the TMA tensor maps `TmaQ`, `TmaK`,
//! `TmaV`), the program, [`PtxOptions`] and the row's kv bounds. Out: the kernel body. It
//! reads Q, K and V through the tensor maps and writes O and the LSE like `kernel.rs`.
//!
//! One CTA per (q block of 128 rows, query head, batch), 384 threads in three roles (at D
//! and Dv 64 also q blocks of 192 rows: three consumer warpgroups, 512 threads):
//! ```text
//! thread 0: init the mbarriers (q_full; per ring stage k_full, v_full: 1 arrival + the
//!           TMA bytes; k_empty, v_empty: 256 arrivals, one per consumer thread); barrier
//! producer (warpgroup 2; setmaxnreg.dec, one thread works):
//!     TMA Q -> q_full
//!     for each kv block j of the runs, ring stage s = i mod stages, phase = (i / stages) & 1:
//!         wait k_empty[s] (phase ^ 1); TMA K[j] -> stage s, k_full[s]
//!         wait v_empty[s] (phase ^ 1); TMA V[j] -> stage s, v_full[s]
//! consumers (warpgroups 0 and 1, 64 query rows each; setmaxnreg.inc):
//!     wait q_full; (negative scale, raw scores: negate Q, fence, consumer barrier)
//!     warpgroup 0 arrives at its own turn barrier (it goes first)
//!     first block:  wait k_full; [turn] issue S(j0) [pass the turn]; wait; release K;
//!                   score/mask, online softmax -> P(j0)
//!     each next j:  wait k_full[s], v_full[s']; [turn] issue S(j), P(j-1) V(j-1)
//!                   [pass the turn]; wait S; release K[s]; score/mask, softmax (O's rescale
//!                   deferred); wait P V; release V[s']; O *= alpha if a row's max moved
//!     last:         wait v_full; [turn] issue P V(last); wait; [pass the turn]
//!     epilogue (O / l, LSE), as in `kernel.rs`
//! ```
//! "[turn]" is `bar.sync 2 + wg, 256` and "[pass the turn]" `bar.arrive 2 + next(wg), 256`
//! (next: round robin over the consumer warpgroups): they issue their products in turn,
//! so the tensor cores run one warpgroup's products while the others do their softmax
//! (ping-pong). Each does one sync and one arrive per issue; the last warpgroup skips its
//! last arrive, so that the arrivals at each barrier match its syncs. Shared memory: Q, the K ring, the V ring (each buffer
//! in the 128-byte-swizzled slab layout TMA's `SWIZZLE_128B` writes for a box of 64
//! columns), then the mbarriers ([`Layout`]).

use super::bounds::KvBounds;
use super::cta::{Args, place, row_runs};
use super::expr::Env;
use super::gpu::{Gpu, R, SmemTile, Var};
use super::matmul::{pv_wgmma_issue, qk_wgmma_issue};
use super::pipeline::{KvCursor, KvPos, negate_own_chunks};
use super::score::score_and_mask;
use super::softmax::{epilogue, online_softmax};
use super::tile::{AccTile, Cfg, Ctx, FragRegs, RowState, split4, tiles};
use super::{KernelParam, PtxOptions};
use crate::ir::Program;
use inkwell::values::IntValue;
use inkwell::{FloatPredicate, IntPredicate};

/// Registers per thread of the producer warpgroup and of each consumer warpgroup after
/// `setmaxnreg`, by the number of consumer warpgroups: two, 128 x 40 + 256 x 232 = 64512
/// of the SM's 65536 (at entry ptxas caps 384 threads at 168); three (`q_block` 192, D
/// and Dv 64, FA3's D64 shape), 128 x 32 + 384 x 160 = 65536.
fn registers(consumers: u32) -> (u32, u32) {
    if consumers == 3 { (32, 160) } else { (40, 232) }
}
/// Named barriers: the consumers' barrier (Q negation) and the turn barriers, one per
/// consumer warpgroup.
const BAR_CONSUMERS: u32 = 1;
const BAR_TURN0: u32 = 2;

/// The shared-memory layout of the warp-specialized kernel.
pub(crate) struct Layout {
    pub q: SmemTile,
    pub k: SmemTile,
    pub v: SmemTile,
    pub stages: u32,
    /// Byte offset of the mbarriers (8 bytes each): q_full, then per stage k_full,
    /// k_empty, v_full, v_empty ([`Bars`]).
    pub bars: u32,
    /// Total dynamic shared memory.
    pub bytes: u32,
}

impl Layout {
    pub fn new(opts: &PtxOptions) -> Self {
        let (q, k, v) = tiles(opts);
        let bars = v.offset + v.bytes() * opts.stages;
        Layout {
            q,
            k,
            v,
            stages: opts.stages,
            bars,
            bytes: bars + 8 * (1 + 4 * opts.stages),
        }
    }
}

/// The mbarriers' shared-window addresses.
struct Bars<'ctx> {
    base: IntValue<'ctx>,
    stages: u32,
}

impl<'ctx> Bars<'ctx> {
    fn at(&self, g: &Gpu<'ctx>, index: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        g.add(self.base, g.shl(index, g.c32(3))?)
    }
    fn q_full(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32(0))
    }
    /// Barrier `which` (0 k_full, 1 k_empty, 2 v_full, 3 v_empty) of ring stage `s`.
    fn ring(&self, g: &Gpu<'ctx>, which: u32, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.add(s, g.c32((1 + which * self.stages) as i64))?)
    }
    fn k_full(&self, g: &Gpu<'ctx>, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.ring(g, 0, s)
    }
    fn k_empty(&self, g: &Gpu<'ctx>, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.ring(g, 1, s)
    }
    fn v_full(&self, g: &Gpu<'ctx>, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.ring(g, 2, s)
    }
    fn v_empty(&self, g: &Gpu<'ctx>, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.ring(g, 3, s)
    }
}

/// A position in the K/V ring: the stage and the parity of its current use.
struct Ring<'ctx> {
    stage: Var<'ctx>,
    phase: Var<'ctx>,
    stages: u32,
}

impl<'ctx> Ring<'ctx> {
    fn new(g: &Gpu<'ctx>, stages: u32) -> R<Self> {
        Ok(Ring {
            stage: g.var(g.i32, g.c32(0))?,
            phase: g.var(g.i32, g.c32(0))?,
            stages,
        })
    }
    fn get(&self, g: &Gpu<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        Ok((g.geti(&self.stage)?, g.geti(&self.phase)?))
    }
    fn set(&self, g: &Gpu<'ctx>, at: (IntValue<'ctx>, IntValue<'ctx>)) -> R<()> {
        g.set(&self.stage, at.0)?;
        g.set(&self.phase, at.1)
    }
    /// The next stage (the phase flips when the ring wraps).
    fn advance(&self, g: &Gpu<'ctx>) -> R<()> {
        let (s, ph) = self.get(g)?;
        let s1 = g.add(s, g.c32(1))?;
        let wrap = g.icmp(IntPredicate::EQ, s1, g.c32(self.stages as i64))?;
        g.set(&self.stage, g.selecti(wrap, g.c32(0), s1)?)?;
        g.set(&self.phase, g.selecti(wrap, g.xor(ph, g.c32(1))?, ph)?)
    }
}

/// The kernel body: barrier setup, then the producer or a consumer by warpgroup.
pub(crate) fn body<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    params: &[KernelParam],
) -> R<()> {
    let a = Args { g, params };
    let lay = Layout::new(opts);
    let (cx, at) = place(g, c, p, &a)?;
    let runs = row_runs(g, c, p, kv, &a, &cx, at.qb, at.nqb)?;
    let bars = Bars {
        base: g.smem_addr32(g.c32(lay.bars as i64))?,
        stages: lay.stages,
    };

    // ---- thread 0 initialises the mbarriers; everyone waits for that --------------------
    g.if_then(g.icmp(IntPredicate::EQ, at.tid, g.c32(0))?, || {
        g.mbar_init(bars.q_full(g)?, 1)?;
        for s in 0..lay.stages {
            let s = g.c32(s as i64);
            g.mbar_init(bars.k_full(g, s)?, 1)?;
            g.mbar_init(bars.v_full(g, s)?, 1)?;
            g.mbar_init(bars.k_empty(g, s)?, c.threads)?;
            g.mbar_init(bars.v_empty(g, s)?, c.threads)?;
        }
        g.fence_mbar_init()
    })?;
    g.barrier()?;

    let any_block = g.icmp(IntPredicate::ULT, runs.beg, runs.end)?;
    let producer_bb = g.block("producer");
    let consumer_bb = g.block("consumer");
    g.cond_br(
        g.icmp(IntPredicate::UGE, at.tid, g.c32(c.threads as i64))?,
        producer_bb,
        consumer_bb,
    )?;

    // ---- producer warpgroup: one thread issues every TMA copy ------------------------------
    g.b.position_at_end(producer_bb);
    let (producer_regs, consumer_regs) = registers(c.threads / 128);
    g.setmaxnreg(false, producer_regs)?;
    let first = g.icmp(IntPredicate::EQ, at.tid, g.c32(c.threads as i64))?;
    g.if_then(g.and(first, any_block)?, || {
        let prod = Producer {
            g,
            c,
            lay: &lay,
            bars: &bars,
            cx: &cx,
            a: &a,
            hq: at.hq,
        };
        prod.run(&runs)
    })?;
    g.b.build_return(None)?;

    // ---- consumer warpgroups ------------------------------------------------------------------
    g.b.position_at_end(consumer_bb);
    g.setmaxnreg(true, consumer_regs)?;
    let env = Env::load(g, p, opts.checked, &|k| a.ptr(k), &|k| a.int(k))?;
    let cons = Consumer {
        g,
        c,
        p,
        cx: &cx,
        env,
        lay: &lay,
        bars: &bars,
        tid: at.tid,
        wg: g.lshr(cx.warp, g.c32(2))?,
        consumers: c.threads / 128,
        o: AccTile::new(g, 1, (c.dv / 8) as usize, 0.0)?,
        m: RowState::new(g, 1, f32::NEG_INFINITY)?,
        l: RowState::new(g, 1, 0.0)?,
        alpha: RowState::new(g, 1, 1.0)?,
        p_prev: FragRegs::zeros(g, (c.kvb / 16) as usize)?,
        ring: Ring::new(g, lay.stages)?,
        prev: Ring::new(g, lay.stages)?,
    };
    let work = g.block("consume");
    let epi = g.block("epilogue");
    g.cond_br(any_block, work, epi)?;
    g.b.position_at_end(work);
    cons.run(&runs, epi)?;
    g.b.position_at_end(epi);
    epilogue(
        g,
        c,
        &cx,
        0,
        a.ptr(KernelParam::O)?,
        a.ptr(KernelParam::Lse)?,
        at.hq,
        &cons.m.rows[0],
        &cons.l.rows[0],
        &cons.o.tiles[0],
    )?;
    g.b.build_return(None)?;
    Ok(())
}

/// The producer's view: what it copies where.
struct Producer<'a, 'ctx> {
    g: &'a Gpu<'ctx>,
    c: &'a Cfg,
    lay: &'a Layout,
    bars: &'a Bars<'ctx>,
    cx: &'a Ctx<'ctx>,
    a: &'a Args<'a, 'ctx>,
    hq: IntValue<'ctx>,
}

impl<'ctx> Producer<'_, 'ctx> {
    /// Copies `rows` rows from `row0` of slice `slice` of a tensor map into `tile` (`buf`
    /// bytes further), one box of 64 columns per slab.
    fn copy(
        &self,
        tile: &SmemTile,
        map: KernelParam,
        buf: IntValue<'ctx>,
        row0: IntValue<'ctx>,
        slice: IntValue<'ctx>,
        bar: IntValue<'ctx>,
    ) -> R<()> {
        let g = self.g;
        let map = self.a.ptr(map)?;
        for s in 0..tile.cols / 64 {
            let off = tile.offset + s * tile.rows * 128;
            let dst = g.smem_addr32(g.add(buf, g.c32(off as i64))?)?;
            g.tma_load_3d(dst, map, [g.c32(64 * s as i64), row0, slice], bar)?;
        }
        Ok(())
    }

    /// Q, then K and V of every kv block of the runs into the ring.
    fn run(&self, runs: &super::bounds::RowRuns<'ctx>) -> R<()> {
        let (g, c, cx, lay, bars) = (self.g, self.c, self.cx, self.lay, self.bars);
        let zero = g.c32(0);
        // Q: slice b * Hq + h
        let q_slice = g.add(g.mul(cx.b, self.hq)?, cx.h)?;
        g.mbar_arrive_expect_tx(bars.q_full(g)?, lay.q.bytes())?;
        self.copy(
            &lay.q,
            KernelParam::TmaQ,
            zero,
            cx.q0,
            q_slice,
            bars.q_full(g)?,
        )?;
        // K, V: slice b * Hkv + h / (Hq / Hkv)
        let hkv = self.a.int(KernelParam::Hkv)?;
        let hk = g.udiv(cx.h, g.udiv(self.hq, hkv)?)?;
        let kv_slice = g.add(g.mul(cx.b, hkv)?, hk)?;
        let cursor = KvCursor::new(g, runs.beg)?;
        cursor.start(g, runs)?;
        let ring = Ring::new(g, lay.stages)?;
        let lp = g.block("produce");
        let done = g.block("produced");
        g.br(lp)?;
        g.b.position_at_end(lp);
        let pos = cursor.get(g)?;
        let kv0 = g.mul(pos.j, g.c32(c.kvb as i64))?;
        let (s, ph) = ring.get(g)?;
        let free = g.xor(ph, g.c32(1))?;
        g.mbar_wait(bars.k_empty(g, s)?, free)?;
        g.mbar_arrive_expect_tx(bars.k_full(g, s)?, lay.k.bytes())?;
        let kbuf = g.mul(s, g.c32(lay.k.bytes() as i64))?;
        self.copy(
            &lay.k,
            KernelParam::TmaK,
            kbuf,
            kv0,
            kv_slice,
            bars.k_full(g, s)?,
        )?;
        g.mbar_wait(bars.v_empty(g, s)?, free)?;
        g.mbar_arrive_expect_tx(bars.v_full(g, s)?, lay.v.bytes())?;
        let vbuf = g.mul(s, g.c32(lay.v.bytes() as i64))?;
        self.copy(
            &lay.v,
            KernelParam::TmaV,
            vbuf,
            kv0,
            kv_slice,
            bars.v_full(g, s)?,
        )?;
        ring.advance(g)?;
        let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
        cursor.set(g, &next)?;
        g.cond_br(has_next, lp, done)?;
        g.b.position_at_end(done);
        Ok(())
    }
}

/// A consumer warpgroup's state.
struct Consumer<'a, 'ctx> {
    g: &'a Gpu<'ctx>,
    c: &'a Cfg,
    p: &'a Program,
    cx: &'a Ctx<'ctx>,
    env: Env<'ctx>,
    lay: &'a Layout,
    bars: &'a Bars<'ctx>,
    tid: IntValue<'ctx>,
    /// This warpgroup (0 .. consumers).
    wg: IntValue<'ctx>,
    /// Consumer warpgroups (2, or 3 at `q_block` 192).
    consumers: u32,
    /// O, the running row max m and row sum l (in units of `c2`), the deferred rescale.
    o: AccTile<'ctx>,
    m: RowState<'ctx>,
    l: RowState<'ctx>,
    alpha: RowState<'ctx>,
    /// P of the previous block (A fragments of its P V).
    p_prev: FragRegs<'ctx>,
    /// The ring position of this block's K and of the previous block's V.
    ring: Ring<'ctx>,
    prev: Ring<'ctx>,
}

impl<'ctx> Consumer<'_, 'ctx> {
    /// Waits for this warpgroup's turn to issue wgmma.
    fn take_turn(&self) -> R<()> {
        let g = self.g;
        g.bar_sync_reg(g.add(self.wg, g.c32(BAR_TURN0 as i64))?, 256)
    }
    /// Passes the turn to the next warpgroup (round robin).
    fn pass_turn(&self) -> R<()> {
        let g = self.g;
        let next = if self.consumers == 2 {
            g.xor(self.wg, g.c32(1))?
        } else {
            let next = g.add(self.wg, g.c32(1))?;
            let last = g.icmp(IntPredicate::EQ, next, g.c32(self.consumers as i64))?;
            g.selecti(last, g.c32(0), next)?
        };
        g.bar_arrive_reg(g.add(next, g.c32(BAR_TURN0 as i64))?, 256)
    }

    /// Score, mask and online softmax of S for the block at `pos`; P goes to `p_prev`
    /// and the rescale factors of O to `alpha`. Returns whether some row's max moved.
    fn softmax(
        &self,
        s: &[inkwell::values::FloatValue<'ctx>],
        pos: &KvPos<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let (g, c, cx) = (self.g, self.c, self.cx);
        let kv0 = g.mul(pos.j, g.c32(c.kvb as i64))?;
        let t = score_and_mask(g, c, cx, &self.env, self.p, &split4(s), kv0, pos.full)?;
        let (pfrag, any) = online_softmax(
            g,
            c,
            cx,
            &t,
            &self.m,
            &self.l,
            &self.o,
            Some(&self.alpha),
            &mut || Ok(()),
        )?;
        self.p_prev.store(g, &pfrag[0])?;
        Ok(any)
    }

    fn kbuf(&self, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.g.mul(s, self.g.c32(self.lay.k.bytes() as i64))
    }
    fn vbuf(&self, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.g.mul(s, self.g.c32(self.lay.v.bytes() as i64))
    }

    /// The kv loop of a row with at least one block; ends branching to `epi`.
    fn run(
        &self,
        runs: &super::bounds::RowRuns<'ctx>,
        epi: inkwell::basic_block::BasicBlock<'ctx>,
    ) -> R<()> {
        let (g, c, cx, bars) = (self.g, self.c, self.cx, self.bars);
        let lp = g.block("kv_loop");
        let last = g.block("pv_last");

        // ---- Q ready (negated in place for a negative scale on the raw-score path) ---------
        g.mbar_wait(bars.q_full(g)?, g.c32(0))?;
        if cx.raw {
            let neg = g.fcmp(FloatPredicate::OLT, cx.scale, g.cf(0.0))?;
            g.if_then(neg, || {
                negate_own_chunks(g, &c.q, self.tid, c.threads)?;
                g.fence_proxy_async()?;
                g.bar_sync(BAR_CONSUMERS, c.threads)
            })?;
        }
        // warpgroup 0 issues first
        g.if_then(g.icmp(IntPredicate::EQ, self.wg, g.c32(0))?, || {
            g.bar_arrive(BAR_TURN0, 256)
        })?;

        // ---- the first block: S only -----------------------------------------------------------
        let cursor = KvCursor::new(g, runs.beg)?;
        cursor.start(g, runs)?;
        let pos = cursor.get(g)?;
        let (s, ph) = self.ring.get(g)?;
        g.mbar_wait(bars.k_full(g, s)?, ph)?;
        self.take_turn()?;
        let s_async = qk_wgmma_issue(g, c, cx, self.kbuf(s)?)?;
        self.pass_turn()?;
        let sv = g.wgmma_wait(0, &s_async)?;
        g.mbar_arrive(bars.k_empty(g, s)?)?;
        self.softmax(&sv, &pos)?;
        self.prev.set(g, (s, ph))?;
        self.ring.advance(g)?;
        let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
        cursor.set(g, &next)?;
        g.cond_br(has_next, lp, last)?;

        // ---- each next block: S(j) and P V(j-1) in flight together ------------------------------
        g.b.position_at_end(lp);
        let pos = cursor.get(g)?;
        let (s, ph) = self.ring.get(g)?;
        let (ps, pph) = self.prev.get(g)?;
        // (V(j-1) was copied before K(j): waiting for it first costs nothing and keeps
        // the wait loops out of the wgmma issue)
        g.mbar_wait(bars.k_full(g, s)?, ph)?;
        g.mbar_wait(bars.v_full(g, ps)?, pph)?;
        self.take_turn()?;
        let s_async = qk_wgmma_issue(g, c, cx, self.kbuf(s)?)?;
        let o_in = self.o.flat(g)?;
        let p_in = self.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, self.vbuf(ps)?)?;
        self.pass_turn()?;
        let sv = g.wgmma_wait(1, &s_async)?;
        g.mbar_arrive(bars.k_empty(g, s)?)?;
        let any = self.softmax(&sv, &pos)?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        g.mbar_arrive(bars.v_empty(g, ps)?)?;
        self.o.store_flat(g, &o_now)?;
        g.if_then(any, || self.o.scale_rows(g, &self.alpha))?;
        self.prev.set(g, (s, ph))?;
        self.ring.advance(g)?;
        let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
        cursor.set(g, &next)?;
        g.cond_br(has_next, lp, last)?;

        // ---- the last block's P V --------------------------------------------------------------
        g.b.position_at_end(last);
        let (ps, pph) = self.prev.get(g)?;
        g.mbar_wait(bars.v_full(g, ps)?, pph)?;
        self.take_turn()?;
        let o_in = self.o.flat(g)?;
        let p_in = self.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, self.vbuf(ps)?)?;
        let o_now = g.wgmma_wait(0, &o_async)?;
        self.o.store_flat(g, &o_now)?;
        // the last warpgroup's last turn is taken by no one (and no branch inside the
        // wgmma issue-to-wait stretch)
        let last_wg = g.c32(self.consumers as i64 - 1);
        g.if_then(g.icmp(IntPredicate::NE, self.wg, last_wg)?, || {
            self.pass_turn()
        })?;
        g.br(epi)
    }
}
