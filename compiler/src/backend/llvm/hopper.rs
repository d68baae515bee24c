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
//! With `PtxOptions::producers` = 2 (a paged cache) a second producer thread, the first of
//! the producer warpgroup's second warp, issues the V copies (waits on v_empty, the
//! tail's zeroing) over the same kv blocks with its own ring position, and the first
//! thread only Q and K; with 4, K's boxes alternate between the first threads of warps 0
//! and 2 and V's between warps 1 and 3 ([`Copies::roles`]). Under the dynamic scheduler
//! the threads after the first learn each tile from the tile slot as the consumers do
//! ([`produce_dynamic_follow`]).
//!
//! "[turn]" is `bar.sync 2 + wg, 256` and "[pass the turn]" `bar.arrive 2 + next(wg), 256`
//! (next: round robin over the consumer warpgroups): they issue their products in turn,
//! so the tensor cores run one warpgroup's products while the others do their softmax
//! (ping-pong). Each does one sync and one arrive per issue; the last warpgroup skips its
//! last arrive, so that the arrivals at each barrier match its syncs. Shared memory: Q, the K ring, the V ring (each buffer
//! in the 128-byte-swizzled slab layout TMA's `SWIZZLE_128B` writes for a box of 64
//! columns), then the mbarriers ([`Layout`]).
//!
//! Lengths on the device (`PtxOptions::device_lens`, chunked prefill over a cache whose
//! lengths the host does not know): each tile's place (`cta::place_tile`) reads its
//! sequence's length from `SeqLens` and clamps it into `0..=Lkv`; that is the tile's key
//! count (`Ctx::lkv`: its kv range, tail checks, and the V rows past it zeroed by the
//! producer as a paged cache's last page, [`Producer::copy_v_tail`]), and `length - Lq`
//! the value of the position-offset param in the tile's element code (`Env::at_tile`) and
//! closed-form offsets (`cta::row_runs`).
//!
//! Document tiles (`PtxOptions::doc_tiles`, the program of a document mask's linear part):
//! each tile comes from the tile list (`cta::place_tile`: `(b, row0, rows, qi)`), its q
//! block at row `row0 + qi q_block`, its kv blocks from `row0` (`Ctx::kv_origin`: the K/V
//! boxes and the element code's positions through `Ctx::kv_start`), its rows and keys
//! past `row0 + rows` outside (`Ctx::row_end`, `Ctx::lkv`); everything else as below.
//!
//! Persistent CTAs (`PtxOptions::persistent`, [`body_persistent`]): a grid of
//! `min(tiles, SMs)` CTAs, each walking its (q block, head, batch) tiles in rounds of
//! `nctaid.x` taken as a snake ([`for_each_tile`]). The producer keeps its ring position
//! across tiles and waits for a `q_empty` mbarrier (one arrival per consumer thread)
//! before each tile's Q; the consumers reset O, m and l per tile, arrive at `q_empty`
//! once every S of the tile is complete (before the last P V), release the last V, and
//! always pass the turn, warpgroup 0 taking one extra turn at the end, so that the next
//! tile's loads run under the last P V and the epilogue of this one.
//!
//! Two Q buffers (`PtxOptions::q_double`, persistent CTAs only): the CTA's n-th tile
//! with blocks uses buffer `n & 1` (the second after the V ring) with its own q_full,
//! q_empty (and tile slot) at parity `(n >> 1) & 1` ([`Bars::q_use`]), so the producer
//! copies tile n+1's Q right after tile n's last K and V instead of after the consumers'
//! last S of tile n.
//!
//! The dynamic tile scheduler (`PtxOptions::dynamic_tiles`, [`produce_dynamic`],
//! [`consume_dynamic`]): instead of the static rounds, each CTA starts at tile `ctaid.x`
//! and takes its next tiles from a global counter (`TileCounter`, one atomic add by the
//! producer per tile, after the tile's copies are issued). The producer writes the tile
//! index into a shared-memory slot after `q_empty` and before its arrival at `q_full`
//! (every tile, one without blocks and the end marker too); the consumers read it after
//! `q_full`, and free Q at once on a tile without blocks. The last CTA to finish zeroes
//! the counter for the next launch.
//!
//! The last tiles split along kv (`PtxOptions::tail_split`, static rounds only, closed-form
//! kv ranges, [`for_each_piece`]): with `G` CTAs and `R = tiles mod G > 0`, the first
//! `tiles - R - G` tiles run whole in rounds as above; the last `R + G` tiles' kv blocks
//! (`ceil(Lkv / kv_block)` per tile, their units) are cut into `G` contiguous ranges of
//! `floor(c U / G) .. floor((c + 1) U / G)`, one per CTA `c`, so each CTA's last work is
//! about `(R + G) / G` tiles instead of one or two. A range's pieces are one tile's kv
//! blocks `lo..hi` each (the runs clamped: `RowRuns::clamp`); a piece that is not a
//! whole tile (a part) leaves O, m and l unnormalized in slot `2 c` (the CTA's first
//! piece) or `2 c + 1` (its last) of `TailWork`, in the accumulators' order (one f32 per
//! thread and register, coalesced), then counts its blocks into the tile's word of
//! `TileCounter` ([`publish_and_merge`]: every thread's stores and a fence before a
//! consumer barrier, one release-acquire add, the result through shared memory). The
//! part whose count completes the tile zeroes the word, reads the parts of CTAs
//! `owner(first unit) ..= owner(last unit)` in that order (its own too: the same sums
//! whichever CTA merges), merges them as the online softmax does (`m = max`, O and l
//! scaled by `2^(c2 (m_i - m))`) and writes O and the LSE with the usual epilogue.

use super::bounds::{KvBounds, RowRuns};
use super::cta::{Args, place, place_tile, row_runs};
use super::expr::Env;
use super::gpu::{Gpu, R, SmemTile, Var};
use super::matmul::{pv_wgmma_issue, qk_wgmma_issue};
use super::pipeline::{KvCursor, KvPos, negate_own_chunks};
use super::score::{MaskBits, mask_bits, score_and_mask};
use super::softmax::{epilogue, online_softmax, online_softmax_exp, pack_p, row_total, store_lse};
use super::tile::{AccTile, Cfg, Ctx, FragRegs, RowState, row_inside, split4, thread_row0, tiles};
use super::{KernelParam, LlvmError, PtxOptions};
use crate::ir::Program;
use inkwell::values::{BasicValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};

/// `softmax::online_softmax` or `online_softmax_exp` (same arguments, P packed or not).
type OnlineSoftmax<'ctx, T> = fn(
    &Gpu<'ctx>,
    &Cfg,
    &Ctx<'ctx>,
    &AccTile<'ctx>,
    &RowState<'ctx>,
    &RowState<'ctx>,
    &AccTile<'ctx>,
    Option<&RowState<'ctx>>,
    &mut dyn FnMut() -> R<()>,
) -> R<T>;

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
/// `PtxOptions::o_tma`: one named barrier per consumer warpgroup (its 128 threads),
/// `BAR_O0 + wg`, around O's staging buffer ([`epilogue_tma`]).
const BAR_O0: u32 = 4;

/// The shared-memory layout of the warp-specialized kernel.
pub(crate) struct Layout {
    pub q: SmemTile,
    pub k: SmemTile,
    pub v: SmemTile,
    pub stages: u32,
    /// `PtxOptions::q_double`: the second Q buffer's byte offset (after the V ring).
    pub q1: Option<u32>,
    /// `PtxOptions::o_tma`: the byte offset of O's staging buffer (after the Q buffers;
    /// `q_block x Dv` 16-bit elements, per consumer warpgroup two boxes of 64 rows x 64
    /// columns in the 128-byte swizzle, [`epilogue_tma`]).
    pub o_stage: Option<u32>,
    /// Byte offset of the mbarriers (8 bytes each): q_full, then per stage k_full,
    /// k_empty, v_full, v_empty, then (persistent kernel) q_empty, (dynamic scheduler)
    /// the tile slot, then (two Q buffers) the second buffer's q_full, q_empty and slot
    /// ([`Bars`]).
    pub bars: u32,
    /// Total dynamic shared memory.
    pub bytes: u32,
    /// `PtxOptions::tail_split`: byte offset of a u32 after the mbarriers, whether the
    /// part just counted completed its tile (thread 0 to the consumers).
    pub flag: Option<u32>,
    /// A paged cache (`KvCache::Paged`) or lengths on the device (`device_lens`): byte
    /// offset of the producer's own mbarrier, at which it waits for the V tile that ends
    /// past the sequence's keys before zeroing those rows ([`Producer::copy_v_tail`]).
    pub v_tail: Option<u32>,
}

impl Layout {
    pub fn new(opts: &PtxOptions) -> Self {
        let (q, k, v) = tiles(opts);
        let ring_end = v.offset + v.bytes() * opts.stages;
        let double = opts.persistent && opts.q_double;
        let q1 = double.then_some(ring_end);
        let q_end = ring_end + if double { q.bytes() } else { 0 };
        let o_tma = opts.o_tma && opts.dynamic_tiles;
        // (every buffer above is a whole number of 1024-byte swizzle atoms)
        let o_stage = o_tma.then_some(q_end);
        let bars = q_end + if o_tma { opts.q_block * opts.dv * 2 } else { 0 };
        // q_full, the ring's four per stage, the persistent kernel's q_empty, and the
        // dynamic scheduler's tile slot; with two Q buffers also the slot's place and the
        // second buffer's three (`Bars::q_full1` ..)
        let q_bars = if double {
            6
        } else {
            1 + opts.persistent as u32 + opts.dynamic_tiles as u32
        };
        let end = bars + 8 * (4 * opts.stages + q_bars);
        let tail = opts.tail_split && opts.persistent && !opts.dynamic_tiles;
        let flag_end = end + if tail { 8 } else { 0 };
        let paged = opts.kv_cache == super::KvCache::Paged;
        // (V tiles past a sequence's end zeroed: paged caches, and lengths on the device)
        let v_tail = paged || opts.device_lens.is_some();
        Layout {
            q,
            k,
            v,
            stages: opts.stages,
            q1,
            o_stage,
            bars,
            bytes: flag_end + if v_tail { 8 } else { 0 },
            flag: tail.then_some(end),
            v_tail: v_tail.then_some(flag_end),
        }
    }
}

/// The mbarriers' shared-window addresses.
struct Bars<'ctx> {
    base: IntValue<'ctx>,
    stages: u32,
    /// Two Q buffers (`PtxOptions::q_double`).
    double: bool,
    /// [`Layout::v_tail`]'s address.
    v_tail: Option<IntValue<'ctx>>,
}

impl<'ctx> Bars<'ctx> {
    fn new(g: &Gpu<'ctx>, lay: &Layout) -> R<Self> {
        Ok(Bars {
            base: g.smem_addr32(g.c32(lay.bars as i64))?,
            stages: lay.stages,
            double: lay.q1.is_some(),
            v_tail: match lay.v_tail {
                Some(at) => Some(g.smem_addr32(g.c32(at as i64))?),
                None => None,
            },
        })
    }
    /// Thread 0 initialises the mbarriers (the "empty" ones count one arrival per consumer
    /// thread, `consumers`; with `q_empty`, the persistent kernel's too); everyone waits
    /// for that.
    /// `q_readers`: the arrivals at `q_empty` besides the consumers' (the dynamic
    /// scheduler's producer threads after the first, [`produce_dynamic_follow`]).
    fn init(
        &self,
        g: &Gpu<'ctx>,
        tid: IntValue<'ctx>,
        consumers: u32,
        q_empty: bool,
        q_readers: u32,
    ) -> R<()> {
        g.if_then(g.icmp(IntPredicate::EQ, tid, g.c32(0))?, || {
            g.mbar_init(self.q_full(g)?, 1)?;
            if q_empty {
                g.mbar_init(self.q_empty(g)?, consumers + q_readers)?;
            }
            if self.double {
                g.mbar_init(self.q_full1(g)?, 1)?;
                g.mbar_init(self.q_empty1(g)?, consumers + q_readers)?;
            }
            for s in 0..self.stages {
                let s = g.c32(s as i64);
                g.mbar_init(self.k_full(g, s)?, 1)?;
                g.mbar_init(self.v_full(g, s)?, 1)?;
                g.mbar_init(self.k_empty(g, s)?, consumers)?;
                g.mbar_init(self.v_empty(g, s)?, consumers)?;
            }
            if let Some(bar) = self.v_tail {
                g.mbar_init(bar, 1)?;
            }
            g.fence_mbar_init()
        })?;
        g.barrier()
    }
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
    /// The persistent kernel's "Q buffer free" (one arrival per consumer thread).
    fn q_empty(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32((1 + 4 * self.stages) as i64))
    }
    /// The dynamic scheduler's slot (a u32 after the mbarriers): the index of the tile
    /// whose Q the current phase of `q_full` brings (written by the producer before its
    /// arrival there).
    fn tile_slot(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32((2 + 4 * self.stages) as i64))
    }
    /// The second Q buffer's `q_full`, `q_empty` and tile slot (after the first's,
    /// `PtxOptions::q_double`).
    fn q_full1(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32((3 + 4 * self.stages) as i64))
    }
    fn q_empty1(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32((4 + 4 * self.stages) as i64))
    }
    fn tile_slot1(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        self.at(g, g.c32((5 + 4 * self.stages) as i64))
    }
    /// The persistent kernel's Q use number `n` (this CTA's n-th tile with a Q: one
    /// buffer, `n` is the parity; two, buffer `n & 1` with parity `(n >> 1) & 1`).
    fn q_use(&self, g: &Gpu<'ctx>, lay: &Layout, n: IntValue<'ctx>) -> R<QUse<'ctx>> {
        let Some(q1) = lay.q1 else {
            let empty = self.q_empty(g)?;
            return Ok(QUse {
                phase: n,
                empty,
                second: None,
            });
        };
        let second = g.icmp(IntPredicate::NE, g.and(n, g.c32(1))?, g.c32(0))?;
        let phase = g.and(g.lshr(n, g.c32(1))?, g.c32(1))?;
        let empty = g.selecti(second, self.q_empty1(g)?, self.q_empty(g)?)?;
        let full = g.selecti(second, self.q_full1(g)?, self.q_full(g)?)?;
        let slot = g.selecti(second, self.tile_slot1(g)?, self.tile_slot(g)?)?;
        let buf = g.selecti(second, g.c32((q1 - lay.q.offset) as i64), g.c32(0))?;
        Ok(QUse {
            phase,
            empty,
            second: Some(SecondQ {
                is: second,
                full,
                slot,
                buf,
            }),
        })
    }
    /// The Q use number after `n`.
    fn q_next(&self, g: &Gpu<'ctx>, n: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        if self.double {
            g.add(n, g.c32(1))
        } else {
            g.xor(n, g.c32(1))
        }
    }
}

/// The persistent kernel's use of the Q buffer for one tile: the parity of this use
/// and the barrier that frees it (with two Q buffers, which one: `second`).
#[derive(Clone, Copy)]
struct QUse<'ctx> {
    phase: IntValue<'ctx>,
    empty: IntValue<'ctx>,
    second: Option<SecondQ<'ctx>>,
}

/// With two Q buffers (`PtxOptions::q_double`): whether this use is the second buffer,
/// and its `q_full`, tile slot and byte offset from the first.
#[derive(Clone, Copy)]
struct SecondQ<'ctx> {
    is: IntValue<'ctx>,
    full: IntValue<'ctx>,
    slot: IntValue<'ctx>,
    buf: IntValue<'ctx>,
}

impl<'ctx> QUse<'ctx> {
    /// This use's `q_full` (the one buffer's, or the chosen one of two).
    fn full(&self, g: &Gpu<'ctx>, bars: &Bars<'ctx>) -> R<IntValue<'ctx>> {
        match self.second {
            Some(s) => Ok(s.full),
            None => bars.q_full(g),
        }
    }
    /// This use's tile slot (the dynamic scheduler).
    fn slot(&self, g: &Gpu<'ctx>, bars: &Bars<'ctx>) -> R<IntValue<'ctx>> {
        match self.second {
            Some(s) => Ok(s.slot),
            None => bars.tile_slot(g),
        }
    }
}

/// A position in the K/V ring: the stage and the parity of its current use.
#[derive(Clone)]
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
    if opts.persistent {
        return body_persistent(g, c, p, opts, kv, params);
    }
    let a = Args { g, params };
    let lay = Layout::new(opts);
    let (cx, at) = place(g, c, p, &a)?;
    let runs = row_runs(g, c, p, kv, &a, &cx, at.qb, at.nqb)?;
    let bars = Bars::new(g, &lay)?;

    // ---- thread 0 initialises the mbarriers; everyone waits for that --------------------
    bars.init(g, at.tid, c.threads, false, 0)?;

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
    // (`PtxOptions::producers`: the copies shared by the first threads of 2 or 4 warps)
    for &(n, copies) in Copies::roles(c.producers) {
        let thread = g.icmp(IntPredicate::EQ, at.tid, g.c32(c.threads as i64 + n))?;
        g.if_then(g.and(thread, any_block)?, || {
            let prod = Producer {
                g,
                c,
                lay: &lay,
                bars: &bars,
                cx: &cx,
                a: &a,
                hq: at.hq,
                copies,
            };
            prod.run(&runs, None, None, false)
        })?;
    }
    g.b.build_return(None)?;

    // ---- consumer warpgroups ------------------------------------------------------------------
    g.b.position_at_end(consumer_bb);
    g.setmaxnreg(true, consumer_regs)?;
    let mut env = Env::load(g, p, opts.checked, &|k| a.ptr(k), &|k| a.int(k))?;
    env.kinds = super::score::mask_kinds(p, opts);
    // (`device_lens`: the tile's position offset)
    if let Some(at_tile) = env.at_tile(c, &cx) {
        env = at_tile;
    }
    let cons = Consumer {
        g,
        c,
        p,
        cx: &cx,
        env: &env,
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
    cons.run(&runs, epi, None, None)?;
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

/// The persistent kernel's body (`PtxOptions::persistent`): the same roles, each walking
/// its tiles of `NumQBlocks x Hq x B` (in the order of [`place_tile`], rounds of
/// `nctaid.x` tiles taken as a snake: [`for_each_tile`]). The producer waits for `q_empty` before each tile's Q and keeps its
/// ring position across tiles; the consumers reset O, m and l per tile, free Q before
/// their last P V (so that the next tile's Q, K and V load under that P V and the
/// epilogue), release the last V, and always pass the turn on; warpgroup 0 takes one
/// extra turn after its last tile, which matches the arrivals at each turn barrier to
/// its syncs.
fn body_persistent<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    opts: &PtxOptions,
    kv: &KvBounds,
    params: &[KernelParam],
) -> R<()> {
    let a = Args { g, params };
    let lay = Layout::new(opts);
    let bars = Bars::new(g, &lay)?;
    let tid = g.tid_x()?;
    // (`PtxOptions::producers`: under the dynamic scheduler the producer threads after the
    // first read the tile slot too, and say when they have)
    let roles = Copies::roles(c.producers);
    let followers = if opts.dynamic_tiles {
        roles.len() as u32 - 1
    } else {
        0
    };
    bars.init(g, tid, c.threads, true, followers)?;
    let tiles = g.mul(
        g.mul(a.int(KernelParam::NumQBlocks)?, a.int(KernelParam::Hq)?)?,
        a.int(KernelParam::Batch)?,
    )?;
    // (`tail_split`: how this CTA's work is cut, the same walk for both roles)
    let tail = tail_split_on(opts, kv)
        .then(|| Tail::new(g, c, p, kv, &a, tiles))
        .transpose()?;
    let producer_bb = g.block("producer");
    let consumer_bb = g.block("consumer");
    g.cond_br(
        g.icmp(IntPredicate::UGE, tid, g.c32(c.threads as i64))?,
        producer_bb,
        consumer_bb,
    )?;
    let (producer_regs, consumer_regs) = registers(c.threads / 128);

    // ---- producer warpgroup: one thread issues every TMA copy of every tile -----------------
    // (`PtxOptions::producers`: the copies shared by the first threads of 2 or 4 warps,
    // each walking the same tiles)
    g.b.position_at_end(producer_bb);
    g.setmaxnreg(false, producer_regs)?;
    let static_walk = |copies: Copies| -> R<()> {
        let ring = Ring::new(g, lay.stages)?;
        let q_phase = g.var(g.i32, g.c32(0))?;
        let produce = |t: IntValue<'ctx>, piece: Option<&Piece<'ctx>>| -> R<()> {
            let (cx, at) = place_tile(g, c, p, &a, Some(t))?;
            let mut runs = row_runs(g, c, p, kv, &a, &cx, at.qb, at.nqb)?;
            if let (Some(pc), Some(tl)) = (piece, &tail) {
                runs = tl.clamp(g, &runs, pc)?;
            }
            g.if_then(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, || {
                let prod = Producer {
                    g,
                    c,
                    lay: &lay,
                    bars: &bars,
                    cx: &cx,
                    a: &a,
                    hq: at.hq,
                    copies,
                };
                let n = g.geti(&q_phase)?;
                let q = bars.q_use(g, &lay, n)?;
                prod.run(&runs, Some(&ring), Some(q), true)?;
                g.set(&q_phase, bars.q_next(g, n)?)
            })
        };
        match &tail {
            Some(tl) => for_each_piece(g, tl, &mut |pc| produce(pc.t, Some(pc))),
            None => for_each_tile(g, tiles, &mut |t| produce(t, None)),
        }
    };
    // (the dynamic scheduler's walk, shared by its producer threads)
    let walk = Walk {
        kv,
        a: &a,
        lay: &lay,
        bars: &bars,
        tiles,
    };
    g.if_then(
        g.icmp(IntPredicate::EQ, tid, g.c32(c.threads as i64))?,
        || {
            if opts.dynamic_tiles {
                let ring = Ring::new(g, lay.stages)?;
                if opts.q_ahead && lay.q1.is_some() {
                    return produce_ahead(g, c, p, kv, &a, &lay, &bars, &ring, tiles);
                }
                let early = opts.early_claim;
                return produce_dynamic(g, c, p, &walk, &ring, early, roles[0].1);
            }
            static_walk(roles[0].1)
        },
    )?;
    for &(n, copies) in &roles[1..] {
        let thread = g.icmp(IntPredicate::EQ, tid, g.c32(c.threads as i64 + n))?;
        g.if_then(thread, || {
            if opts.dynamic_tiles {
                produce_dynamic_follow(g, c, p, &walk, copies)
            } else {
                static_walk(copies)
            }
        })?;
    }
    g.b.build_return(None)?;

    // ---- consumer warpgroups --------------------------------------------------------------------
    g.b.position_at_end(consumer_bb);
    g.setmaxnreg(true, consumer_regs)?;
    let mut env = Env::load(g, p, opts.checked, &|k| a.ptr(k), &|k| a.int(k))?;
    env.kinds = super::score::mask_kinds(p, opts);
    let wg = g.lshr(g.lshr(tid, g.c32(5))?, g.c32(2))?;
    let o = AccTile::new(g, 1, (c.dv / 8) as usize, 0.0)?;
    let m = RowState::new(g, 1, f32::NEG_INFINITY)?;
    let l = RowState::new(g, 1, 0.0)?;
    let alpha = RowState::new(g, 1, 1.0)?;
    let p_prev = FragRegs::zeros(g, (c.kvb / 16) as usize)?;
    let ring = Ring::new(g, lay.stages)?;
    let prev = Ring::new(g, lay.stages)?;
    let q_phase = g.var(g.i32, g.c32(0))?;
    let wg0 = g.icmp(IntPredicate::EQ, wg, g.c32(0))?;
    // warpgroup 0 issues first
    g.if_then(wg0, || g.bar_arrive(BAR_TURN0, 256))?;
    let dynamic = opts.dynamic_tiles;
    // (`cross_tile`: whether the previous tile ran this one's first block, and the m, l
    // its epilogue reads)
    let cross = (dynamic && opts.cross_tile)
        .then(|| -> R<_> {
            Ok((
                g.var(g.i32, g.c32(0))?,
                RowState::new(g, 1, f32::NEG_INFINITY)?,
                RowState::new(g, 1, 0.0)?,
            ))
        })
        .transpose()?;
    let (m_out, l_out) = match &cross {
        Some((_, mo, lo)) => (mo, lo),
        None => (&m, &l),
    };
    let consume = |t: IntValue<'ctx>, piece: Option<&Piece<'ctx>>| -> R<()> {
        let (cx, at) = place_tile(g, c, p, &a, Some(t))?;
        let mut runs = row_runs(g, c, p, kv, &a, &cx, at.qb, at.nqb)?;
        if let (Some(pc), Some(tl)) = (piece, &tail) {
            runs = tl.clamp(g, &runs, pc)?;
        }
        for x in o.tiles.iter().flatten().flatten() {
            g.set(x, g.cf(0.0))?;
        }
        let reset = || -> R<()> {
            for hr in &m.rows[0] {
                g.set(hr, g.cf(f32::NEG_INFINITY))?;
            }
            for hr in &l.rows[0] {
                g.set(hr, g.cf(0.0))?;
            }
            Ok(())
        };
        match &cross {
            // (m and l of a tile whose first block is done are that block's)
            Some((pre, mo, lo)) => {
                let fresh = g.icmp(IntPredicate::EQ, g.geti(pre)?, g.c32(0))?;
                g.if_then(fresh, || {
                    reset()?;
                    for (dst, src) in mo.rows[0].iter().zip(&m.rows[0]) {
                        g.set(dst, g.getf(src)?)?;
                    }
                    for (dst, src) in lo.rows[0].iter().zip(&l.rows[0]) {
                        g.set(dst, g.getf(src)?)?;
                    }
                    Ok(())
                })?;
            }
            None => reset()?,
        }
        // (`device_lens`: the tile's position offset)
        let tile_env = env.at_tile(c, &cx);
        let cons = Consumer {
            g,
            c,
            p,
            cx: &cx,
            env: tile_env.as_ref().unwrap_or(&env),
            lay: &lay,
            bars: &bars,
            tid,
            wg,
            consumers: c.threads / 128,
            o: o.clone(),
            m: m.clone(),
            l: l.clone(),
            alpha: alpha.clone(),
            p_prev: p_prev.clone(),
            ring: ring.clone(),
            prev: prev.clone(),
        };
        let work = g.block("consume");
        let epi = g.block("epilogue");
        // (dynamic tiles: a tile without blocks frees the Q buffer at once)
        let idle = if dynamic { g.block("idle") } else { epi };
        g.cond_br(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, work, idle)?;
        g.b.position_at_end(work);
        let n = g.geti(&q_phase)?;
        if !dynamic {
            g.set(&q_phase, bars.q_next(g, n)?)?;
        }
        let q = bars.q_use(g, &lay, n)?;
        let cr = cross.as_ref().map(|(pre, mo, lo)| Cross {
            a: &a,
            kv,
            tiles,
            n,
            pre,
            m_out: mo,
            l_out: lo,
        });
        cons.run(&runs, epi, Some(q), cr.as_ref())?;
        if dynamic {
            g.b.position_at_end(idle);
            // (the idle block's own load and selects: `q`'s are in the work block)
            let q = bars.q_use(g, &lay, g.geti(&q_phase)?)?;
            g.mbar_arrive(q.empty)?;
            g.br(epi)?;
        }
        g.b.position_at_end(epi);
        let write = || match lay.o_stage {
            Some(stage) => epilogue_tma(
                g,
                c,
                &cx,
                &a,
                Staging { stage, tid, wg },
                at.hq,
                &m_out.rows[0],
                &l_out.rows[0],
                &o.tiles[0],
            ),
            None => epilogue(
                g,
                c,
                &cx,
                0,
                a.ptr(KernelParam::O)?,
                a.ptr(KernelParam::Lse)?,
                at.hq,
                &m_out.rows[0],
                &l_out.rows[0],
                &o.tiles[0],
            ),
        };
        let (Some(pc), Some(tl)) = (piece, &tail) else {
            return write();
        };
        // (`tail_split`: a part publishes itself; the one that completes its tile merges
        // the tile's parts, then writes O like a whole tile)
        let out = g.block("tile_out");
        let publish = g.block("part_publish");
        let next = g.block("piece_done");
        g.cond_br(pc.part, publish, out)?;
        g.b.position_at_end(publish);
        let merge = Merge {
            c,
            cx: &cx,
            a: &a,
            lay: &lay,
            tid,
            o: &o,
            m: &m,
            l: &l,
        };
        publish_and_merge(g, tl, &merge, pc, out, next)?;
        g.b.position_at_end(out);
        write()?;
        g.br(next)?;
        g.b.position_at_end(next);
        Ok(())
    };
    if dynamic {
        consume_dynamic(g, &lay, &bars, tiles, &q_phase, &mut |t| consume(t, None))?;
    } else if let Some(tl) = &tail {
        for_each_piece(g, tl, &mut |pc| consume(pc.t, Some(pc)))?;
    } else {
        for_each_tile(g, tiles, &mut |t| consume(t, None))?;
    }
    // the last warpgroup passed the turn after its last issue: warpgroup 0 takes it
    g.if_then(wg0, || g.bar_sync(BAR_TURN0, 256))?;
    if lay.o_stage.is_some() {
        // (`o_tma`: each warpgroup's storing thread waits for its last copies before
        // the CTA's shared memory goes away)
        let leader = g.icmp(IntPredicate::EQ, g.and(tid, g.c32(127))?, g.c32(0))?;
        g.if_then(leader, || g.bulk_wait(false, 0))?;
    }
    g.b.build_return(None)?;
    Ok(())
}

/// Where [`epilogue_tma`] stages O: the buffer's byte offset, the consumer thread and
/// its warpgroup.
#[derive(Clone, Copy)]
struct Staging<'ctx> {
    stage: u32,
    tid: IntValue<'ctx>,
    wg: IntValue<'ctx>,
}

/// The epilogue of `PtxOptions::o_tma` (Dv 128, two consumer warpgroups of 64 rows): O /
/// l rounded to the input type into O's staging buffer with `stmatrix` (warpgroup `wg`'s
/// 64 rows at `stage + wg 16384`, two boxes of 64 columns, 8 KB each, in the 128-byte
/// swizzle: row `r` at `r 128`, its 16-byte chunk `k` at chunk `k ^ (r & 7)`), then the
/// warpgroup's first thread stores both boxes with TMA at rows `q0 + 64 wg ..` of the
/// slice (rows outside `0..Lq` are not written) and commits them as one bulk group, which
/// completes while the warpgroup goes on. Before writing the buffer that thread waits
/// until the previous tile's copies have read it (`cp.async.bulk.wait_group.read 0`,
/// then the warpgroup's barrier `BAR_O0 + wg`); the writers' `fence.proxy.async` and the
/// same barrier order the stores before the copies. The LSE is stored as in
/// `softmax::epilogue` (lane 0 of each quad, rows inside the sequence). Under q blocks
/// from the end a warpgroup whose rows start above row 0 copies its rows inside from the
/// buffer itself (16 bytes a thread and step: no TMA store at negative rows).
#[allow(clippy::too_many_arguments)]
fn epilogue_tma<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    a: &Args<'_, 'ctx>,
    st: Staging<'ctx>,
    hq: IntValue<'ctx>,
    m: &[Var<'ctx>; 2],
    l: &[Var<'ctx>; 2],
    o: &[[Var<'ctx>; 4]],
) -> R<()> {
    if c.dv != 128 || o.len() != 16 {
        return Err(LlvmError::Internal("o_tma's epilogue needs Dv 128"));
    }
    let slice = g.add(g.mul(cx.b, hq)?, cx.h)?;
    let row_base = thread_row0(g, c, cx, 0)?;
    let quad = g.and(cx.lane, g.c32(3))?;
    let lse_ptr = a.ptr(KernelParam::Lse)?;
    let leader = g.icmp(IntPredicate::EQ, g.and(st.tid, g.c32(127))?, g.c32(0))?;
    let bar = g.add(st.wg, g.c32(BAR_O0 as i64))?;
    // the previous tile's copies have read the buffer
    g.if_then(leader, || g.bulk_wait(true, 0))?;
    g.bar_sync_reg(bar, 128)?;
    let mut inv = Vec::with_capacity(2);
    for hr in 0..2 {
        let (lt, pos, inv_hr) = row_total(g, &l[hr])?;
        inv.push(inv_hr);
        let row = g.add(row_base, g.c32(8 * hr as i64))?;
        let mhr = g.getf(&m[hr])?;
        let inside = g.and(
            row_inside(g, c, cx, row)?,
            g.icmp(IntPredicate::EQ, quad, g.c32(0))?,
        )?;
        g.if_then(inside, || {
            let grow = g.zext64(g.add(g.mul(slice, cx.lq)?, row)?)?;
            store_lse(g, cx, lse_ptr, grow, mhr, lt, pos)
        })?;
    }
    let row0 = g.add(cx.q0, g.mul(st.wg, g.c32(64))?)?;
    stage_and_store(g, c, cx, a, st, slice, row0, o, &inv)
}

/// [`epilogue_tma`]'s staging: O / l (`inv` per row half) into the warpgroup's part of
/// the buffer with `stmatrix`, then its first thread's two TMA stores at rows `row0 ..
/// row0 + 64` of `slice`, committed as one bulk group.
#[allow(clippy::too_many_arguments)]
fn stage_and_store<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    a: &Args<'_, 'ctx>,
    st: Staging<'ctx>,
    slice: IntValue<'ctx>,
    row0: IntValue<'ctx>,
    o: &[[Var<'ctx>; 4]],
    inv: &[inkwell::values::FloatValue<'ctx>],
) -> R<()> {
    let leader = g.icmp(IntPredicate::EQ, g.and(st.tid, g.c32(127))?, g.c32(0))?;
    let bar = g.add(st.wg, g.c32(BAR_O0 as i64))?;
    // lane l writes row l % 8 of matrix i = l / 8: i & 1 the accumulator half (rows + 8),
    // i >> 1 the second n-tile of the pair
    let i = g.lshr(cx.lane, g.c32(3))?;
    let r8 = g.and(cx.lane, g.c32(7))?;
    let second = g.lshr(i, g.c32(1))?;
    let row = g.add(
        g.add(
            g.mul(g.and(cx.warp, g.c32(3))?, g.c32(16))?,
            g.mul(g.and(i, g.c32(1))?, g.c32(8))?,
        )?,
        r8,
    )?;
    let wg_base = g.add(
        g.c32(st.stage as i64),
        g.add(g.mul(st.wg, g.c32(16384))?, g.mul(row, g.c32(128))?)?,
    )?;
    for pair in 0..8usize {
        let mut r = [g.c32(0); 4];
        for (k, x) in r.iter_mut().enumerate() {
            let (nt, hr) = (2 * pair + (k >> 1), k & 1);
            let (lo, hi) = (g.getf(&o[nt][2 * hr])?, g.getf(&o[nt][2 * hr + 1])?);
            *x = g.pack2(c.ty, g.fmul(lo, inv[hr])?, g.fmul(hi, inv[hr])?)?;
        }
        // 16-byte chunk 2 (pair % 4) + second of box pair / 4, swizzled by the row
        let chunk = g.add(g.c32(2 * (pair % 4) as i64), second)?;
        let off = g.add(
            g.add(wg_base, g.c32(8192 * (pair / 4) as i64))?,
            g.shl(g.xor(chunk, r8)?, g.c32(4))?,
        )?;
        g.stmatrix_x4(g.smem_at(off)?, r)?;
    }
    g.fence_proxy_async()?;
    g.bar_sync_reg(bar, 128)?;
    let tma = |g: &Gpu<'ctx>| {
        g.if_then(leader, || {
            let map = a.ptr(KernelParam::TmaO)?;
            for half in 0..2u32 {
                let src = g.smem_addr32(g.add(
                    g.c32((st.stage + 8192 * half) as i64),
                    g.mul(st.wg, g.c32(16384))?,
                )?)?;
                g.tma_store_3d(map, [g.c32(64 * half as i64), row0, slice], src)?;
            }
            g.bulk_commit()
        })
    };
    if !c.q_from_end {
        return tma(g);
    }
    // (q blocks from the end: a box that starts above row 0 — the first q block's — is
    // copied by the warpgroup's threads, 16 bytes each from the buffer to the rows inside:
    // the H200 raised an illegal instruction on TMA stores at negative rows, where loads
    // read zeros. The condition is the warpgroup's own; the next epilogue's barrier
    // orders these reads before the buffer's next writes.)
    let direct = g.block("o_direct");
    let staged = g.block("o_tma");
    let done = g.block("o_done");
    g.cond_br(g.icmp(IntPredicate::SLT, row0, g.c32(0))?, direct, staged)?;
    g.b.position_at_end(staged);
    tma(g)?;
    g.br(done)?;
    g.b.position_at_end(direct);
    let o_ptr = a.ptr(KernelParam::O)?;
    let t = g.and(st.tid, g.c32(127))?;
    for k in 0..8u32 {
        // chunk q = t + 128 k: row q / 16, 16-byte column chunk q % 16
        let q = g.add(t, g.c32(128 * k as i64))?;
        let r = g.lshr(q, g.c32(4))?;
        let cc = g.and(q, g.c32(15))?;
        let row = g.add(row0, r)?;
        g.if_then(row_inside(g, c, cx, row)?, || {
            let off = g.add(
                g.add(
                    g.c32(st.stage as i64),
                    g.add(g.mul(st.wg, g.c32(16384))?, g.mul(r, g.c32(128))?)?,
                )?,
                g.add(
                    g.mul(g.lshr(cc, g.c32(3))?, g.c32(8192))?,
                    g.shl(g.xor(g.and(cc, g.c32(7))?, g.and(r, g.c32(7))?)?, g.c32(4))?,
                )?,
            )?;
            let v4 = g.i32.vec_type(4);
            let ld = g.b.build_load(v4, g.smem_at(off)?, "")?;
            ld.as_instruction_value()
                .ok_or(LlvmError::Internal("load"))?
                .set_alignment(16)
                .map_err(|_| LlvmError::Internal("alignment"))?;
            let grow = g.zext64(g.add(g.mul(slice, cx.lq)?, row)?)?;
            let byte = g.add(
                g.mul(grow, g.c64(c.dv as i64 * 2))?,
                g.zext64(g.mul(cc, g.c32(16))?)?,
            )?;
            let store = g.b.build_store(g.gep_bytes(o_ptr, byte)?, ld)?;
            store
                .set_alignment(16)
                .map_err(|_| LlvmError::Internal("alignment"))
        })?;
    }
    g.br(done)?;
    g.b.position_at_end(done);
    Ok(())
}

/// `body(t)` for this CTA's tiles below `tiles`, in rounds of `G = nctaid.x` tiles: in
/// round `r` CTA `c` takes tile `r G + c` when `r` is even and `r G + G - 1 - c` when it
/// is odd (a snake). Over tiles ordered heaviest first (the LPT order) each CTA so gets a
/// heavier and a lighter tile in turn, where plain strides would give CTA 0 the heaviest
/// of every round; every tile is taken exactly once.
fn for_each_tile<'ctx>(
    g: &Gpu<'ctx>,
    tiles: IntValue<'ctx>,
    body: &mut dyn FnMut(IntValue<'ctx>) -> R<()>,
) -> R<()> {
    let (c, grid) = (g.ctaid('x')?, g.nctaid('x')?);
    let mirror = g.sub(g.sub(grid, g.c32(1))?, c)?;
    let base = g.var(g.i32, g.c32(0))?;
    let odd = g.var(g.i32, g.c32(0))?;
    let head = g.block("tile");
    let work = g.block("tile_work");
    let done = g.block("tiles_done");
    g.br(head)?;
    g.b.position_at_end(head);
    let round = g.geti(&base)?;
    g.cond_br(g.icmp(IntPredicate::ULT, round, tiles)?, work, done)?;
    g.b.position_at_end(work);
    let flip = g.geti(&odd)?;
    let within = g.selecti(g.icmp(IntPredicate::NE, flip, g.c32(0))?, mirror, c)?;
    let t = g.add(round, within)?;
    g.if_then(g.icmp(IntPredicate::ULT, t, tiles)?, || body(t))?;
    g.set(&base, g.add(round, grid)?)?;
    g.set(&odd, g.xor(flip, g.c32(1))?)?;
    g.br(head)?;
    g.b.position_at_end(done);
    Ok(())
}

/// Whether the kernel of `opts` on kv bounds `kv` splits its last tiles along kv
/// (`PtxOptions::tail_split` on persistent CTAs in static rounds, a closed-form range).
pub(crate) fn tail_split_on(opts: &PtxOptions, kv: &KvBounds) -> bool {
    opts.ws && opts.persistent && !opts.dynamic_tiles && opts.tail_split && kv.is_closed_form()
}

/// How a persistent CTA's work is cut under `PtxOptions::tail_split` (module header):
/// `whole` tiles in `rounds` rounds of `grid`, then this CTA's units (kv blocks of the
/// split tiles) `u_beg..u_end` of `units`, `nkv` per tile. Units are i64. With `band`
/// (a range bounded below, `KvBounds::bounds_kv_below`: a sliding window) a tile's units
/// count from its own first kv block and `nkv` is the widest span of a few q blocks
/// ([`band_units`]), so that the units are the blocks a band visits, not every kv block.
struct Tail<'ctx> {
    band: bool,
    cta: IntValue<'ctx>,
    grid: IntValue<'ctx>,
    whole: IntValue<'ctx>,
    rounds: IntValue<'ctx>,
    nkv: IntValue<'ctx>,
    units: IntValue<'ctx>,
    u_beg: IntValue<'ctx>,
    u_end: IntValue<'ctx>,
}

impl<'ctx> Tail<'ctx> {
    fn new(
        g: &Gpu<'ctx>,
        c: &Cfg,
        p: &Program,
        kv: &KvBounds,
        a: &Args<'_, 'ctx>,
        tiles: IntValue<'ctx>,
    ) -> R<Self> {
        let (cta, grid) = (g.ctaid('x')?, g.nctaid('x')?);
        let kvb = g.c32(c.kvb as i64);
        let band = kv.bounds_kv_below();
        // (at least one unit per tile: with Lkv = 0 each piece is a whole tile without
        // blocks, which writes O = 0 and LSE = -inf)
        let nkv = if band {
            band_units(g, c, p, kv, a)?
        } else {
            g.udiv(
                g.add(a.int(KernelParam::Lkv)?, g.c32(c.kvb as i64 - 1))?,
                kvb,
            )?
        };
        let nkv = g.iintr2("llvm.umax.i32", nkv, g.c32(1))?;
        let rem = g.urem(tiles, grid)?;
        // (grid <= tiles, so rem + grid <= tiles; nothing to split without a remainder)
        let split = g.icmp(IntPredicate::NE, rem, g.c32(0))?;
        let n_split = g.selecti(split, g.add(rem, grid)?, g.c32(0))?;
        let whole = g.sub(tiles, n_split)?;
        let units = g.mul(g.zext64(n_split)?, g.zext64(nkv)?)?;
        let g64 = g.zext64(grid)?;
        let u_beg = g.udiv(g.mul(g.zext64(cta)?, units)?, g64)?;
        let u_end = g.udiv(g.mul(g.zext64(g.add(cta, g.c32(1))?)?, units)?, g64)?;
        Ok(Tail {
            band,
            cta,
            grid,
            whole,
            rounds: g.udiv(whole, grid)?,
            nkv,
            units,
            u_beg,
            u_end,
        })
    }
    /// A tile's runs restricted to piece `pc`: its kv blocks `lo..hi`, or with `band`
    /// the blocks `first + lo .. first + hi` from the tile's first block `first`, the
    /// tile's last piece (`hi = nkv`) to the tile's end (so that a tile wider than `nkv`
    /// loses no block; units past a narrower tile's end are empty).
    fn clamp(&self, g: &Gpu<'ctx>, runs: &RowRuns<'ctx>, pc: &Piece<'ctx>) -> R<RowRuns<'ctx>> {
        if !self.band {
            return runs.clamp(g, pc.lo, pc.hi);
        }
        let (first, end) = runs
            .extent()
            .ok_or(LlvmError::Internal("a band's runs in registers"))?;
        let last = g.icmp(IntPredicate::EQ, pc.hi, self.nkv)?;
        let hi = g.selecti(last, end, g.add(first, pc.hi)?)?;
        runs.clamp(g, g.add(first, pc.lo)?, hi)
    }
    /// The first unit of CTA `cta`'s range (i64).
    fn start(&self, g: &Gpu<'ctx>, cta: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        g.udiv(g.mul(g.zext64(cta)?, self.units)?, g.zext64(self.grid)?)
    }
    /// The CTA whose range holds unit `u` (i64): the last `c` with `start(c) <= u`,
    /// `floor(((u + 1) G - 1) / U)`.
    fn owner(&self, g: &Gpu<'ctx>, u: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let x = g.sub(g.mul(g.add(u, g.c64(1))?, g.zext64(self.grid)?)?, g.c64(1))?;
        Ok(g.b.build_int_truncate(g.udiv(x, self.units)?, g.i32, "")?)
    }
}

/// The units per split tile of a band (`Tail::band`): the widest kv span (in blocks) of
/// q blocks 0, `NumQBlocks / 2` and `NumQBlocks - 1`, whose rows are where a band's span
/// is clamped (the start, the end) or not (the middle). Only the balance of the split
/// depends on it: a tile's last piece runs to the tile's end ([`Tail::clamp`]).
fn band_units<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    kv: &KvBounds,
    a: &Args<'_, 'ctx>,
) -> R<IntValue<'ctx>> {
    let KvBounds::ClosedForm(cf) = kv else {
        return Err(LlvmError::Internal("a band's closed form"));
    };
    let (offsets, all_partial) = a.closed_form(cf.constraints.len(), p)?;
    let (lq, lkv, nqb) = (
        a.int(KernelParam::Lq)?,
        a.int(KernelParam::Lkv)?,
        a.int(KernelParam::NumQBlocks)?,
    );
    // (q blocks from the end: shifted down by the pad, as `place_tile` does)
    let pad = if c.q_from_end {
        g.sub(g.mul(nqb, g.c32(c.qb as i64))?, lq)?
    } else {
        g.c32(0)
    };
    let last = g.sub(nqb, g.c32(1))?;
    let mut widest = g.c32(0);
    for qb in [g.c32(0), g.lshr(nqb, g.c32(1))?, last] {
        let q0 = g.sub(g.mul(qb, g.c32(c.qb as i64))?, pad)?;
        let runs = RowRuns::closed_form(
            g,
            &kv.coefficients(),
            &offsets,
            all_partial,
            q0,
            c.q_from_end,
            c.qb,
            lq,
            lkv,
            c.kvb,
        )?;
        let (first, end) = runs
            .extent()
            .ok_or(LlvmError::Internal("a band's runs in registers"))?;
        widest = g.iintr2("llvm.smax.i32", widest, g.sub(end, first)?)?;
    }
    Ok(widest)
}

/// One piece of a CTA's work under `PtxOptions::tail_split`: tile `t` (split tile `k =
/// t - whole`), its kv blocks `lo..hi`, whether it is a part of the tile (else whole),
/// and the workspace slot of a part.
struct Piece<'ctx> {
    t: IntValue<'ctx>,
    k: IntValue<'ctx>,
    lo: IntValue<'ctx>,
    hi: IntValue<'ctx>,
    part: IntValue<'ctx>,
    slot: IntValue<'ctx>,
}

/// `body(piece)` for this CTA's pieces (`PtxOptions::tail_split`): the whole tiles below
/// `whole` in the snake rounds of [`for_each_tile`], then the pieces of its units
/// `u_beg..u_end`, each up to the end of its tile. One loop, one copy of `body`.
fn for_each_piece<'ctx>(
    g: &Gpu<'ctx>,
    tl: &Tail<'ctx>,
    body: &mut dyn FnMut(&Piece<'ctx>) -> R<()>,
) -> R<()> {
    let round = g.var(g.i32, g.c32(0))?;
    let unit = g.var(g.i64, tl.u_beg)?;
    let head = g.block("piece");
    let work = g.block("piece_work");
    let done = g.block("pieces_done");
    g.br(head)?;
    g.b.position_at_end(head);
    let (r, u) = (g.geti(&round)?, g.geti(&unit)?);
    let in_whole = g.icmp(IntPredicate::ULT, r, tl.rounds)?;
    let more = g.icmp(IntPredicate::ULT, u, tl.u_end)?;
    g.cond_br(g.or(in_whole, more)?, work, done)?;
    g.b.position_at_end(work);
    // a whole tile of round r (odd rounds mirrored)
    let odd = g.icmp(IntPredicate::NE, g.and(r, g.c32(1))?, g.c32(0))?;
    let mirror = g.sub(g.sub(tl.grid, g.c32(1))?, tl.cta)?;
    let t_whole = g.add(g.mul(r, tl.grid)?, g.selecti(odd, mirror, tl.cta)?)?;
    // the piece at unit u: to the end of its tile or of the range
    let nkv64 = g.zext64(tl.nkv)?;
    let k64 = g.udiv(u, nkv64)?;
    let lo64 = g.sub(u, g.mul(k64, nkv64)?)?;
    let left = g.sub(tl.u_end, u)?;
    let room = g.sub(nkv64, lo64)?;
    let len64 = g.selecti(g.icmp(IntPredicate::ULT, left, room)?, left, room)?;
    let i32t =
        |v: IntValue<'ctx>| -> R<IntValue<'ctx>> { Ok(g.b.build_int_truncate(v, g.i32, "")?) };
    let (k, lo, len) = (i32t(k64)?, i32t(lo64)?, i32t(len64)?);
    let zero = g.c32(0);
    let t = g.selecti(in_whole, t_whole, g.add(tl.whole, k)?)?;
    let lo = g.selecti(in_whole, zero, lo)?;
    let hi = g.selecti(in_whole, tl.nkv, g.add(lo, len)?)?;
    let full = g.and(
        g.icmp(IntPredicate::EQ, lo, zero)?,
        g.icmp(IntPredicate::EQ, hi, tl.nkv)?,
    )?;
    let part = g.and(g.xor(in_whole, g.cbool(true))?, g.xor(full, g.cbool(true))?)?;
    // the range's first piece takes slot 2 c, a later one (which starts its tile) 2 c + 1
    let later = g.icmp(IntPredicate::NE, u, tl.u_beg)?;
    let slot = g.add(g.mul(tl.cta, g.c32(2))?, g.zext32(later)?)?;
    body(&Piece {
        t,
        k,
        lo,
        hi,
        part,
        slot,
    })?;
    g.set(&round, g.selecti(in_whole, g.add(r, g.c32(1))?, r)?)?;
    g.set(&unit, g.selecti(in_whole, u, g.add(u, len64)?)?)?;
    g.br(head)?;
    g.b.position_at_end(done);
    Ok(())
}

/// What [`publish_and_merge`] reads and writes: the consumers' registers of this piece.
struct Merge<'a, 'ctx> {
    c: &'a Cfg,
    cx: &'a Ctx<'ctx>,
    a: &'a Args<'a, 'ctx>,
    lay: &'a Layout,
    tid: IntValue<'ctx>,
    o: &'a AccTile<'ctx>,
    m: &'a RowState<'ctx>,
    l: &'a RowState<'ctx>,
}

/// A part's end (`PtxOptions::tail_split`; the consumers, every thread): store this
/// thread's O, m and l into the part's slot of `TailWork` (value `i` of thread `tid` at
/// `(slot n + i) threads + tid`, `n = dv / 2 + 4`), count the part's kv blocks into its
/// tile's word of `TileCounter`, and branch to `next` unless that completed the tile;
/// then (the merging CTA) zero the word, merge the tile's parts in CTA order into m, l
/// and O, and branch to `out` (the epilogue). A barrier of the consumers orders every
/// thread's stores before thread 0's release-acquire add, and the add's result reaches
/// them through the shared-memory flag after a second one; the parts are read with
/// volatile loads after a fence.
fn publish_and_merge<'ctx>(
    g: &Gpu<'ctx>,
    tl: &Tail<'ctx>,
    mg: &Merge<'_, 'ctx>,
    pc: &Piece<'ctx>,
    out: inkwell::basic_block::BasicBlock<'ctx>,
    next: inkwell::basic_block::BasicBlock<'ctx>,
) -> R<()> {
    let (c, tid) = (mg.c, mg.tid);
    let th = c.threads as i64;
    let nd = (c.dv / 2) as usize;
    let n = nd as i64 + 4;
    let work = mg.a.ptr(KernelParam::TailWork)?;
    let tid64 = g.zext64(tid)?;
    // index of value i of this thread in slot `slot`
    let at = |slot: IntValue<'ctx>, i: i64| -> R<IntValue<'ctx>> {
        let s = g.mul(g.zext64(slot)?, g.c64(n * th))?;
        g.add(g.add(s, g.c64(i * th))?, tid64)
    };
    let mut vals = mg.o.flat(g)?;
    for rows in [&mg.m.rows[0], &mg.l.rows[0]] {
        for hr in rows {
            vals.push(g.getf(hr)?);
        }
    }
    for (i, v) in vals.iter().enumerate() {
        let idx = at(pc.slot, i as i64)?;
        g.store(g.gep_bytes(work, g.mul(idx, g.c64(4))?)?, *v)?;
    }
    g.fence_acq_rel_gpu()?;
    g.bar_sync(BAR_CONSUMERS, c.threads)?;
    let flag = g.smem_addr32(g.c32(mg.lay.flag.ok_or(LlvmError::Internal("tail flag"))? as i64))?;
    let counter =
        g.b.build_ptr_to_int(mg.a.ptr(KernelParam::TileCounter)?, g.i64, "")?;
    let word = g.add(counter, g.zext64(g.mul(g.add(pc.k, g.c32(2))?, g.c32(4))?)?)?;
    g.if_then(g.icmp(IntPredicate::EQ, tid, g.c32(0))?, || {
        let len = g.sub(pc.hi, pc.lo)?;
        let old = g.acq_rel_add(word, len)?;
        let last = g.icmp(IntPredicate::EQ, g.add(old, len)?, tl.nkv)?;
        // (every part of the tile has counted: the next launch starts from zero)
        g.if_then(last, || g.st_global_u32(word, g.c32(0)))?;
        g.st_shared_u32(flag, g.zext32(last)?)
    })?;
    g.bar_sync(BAR_CONSUMERS, c.threads)?;
    let last = g.icmp(IntPredicate::NE, g.ld_shared_u32(flag)?, g.c32(0))?;
    let merge = g.block("part_merge");
    g.cond_br(last, merge, next)?;
    g.b.position_at_end(merge);
    g.fence_acq_rel_gpu()?;
    let (o, m, l) = (mg.o, &mg.m.rows[0], &mg.l.rows[0]);
    for x in o.tiles[0].iter().flatten() {
        g.set(x, g.cf(0.0))?;
    }
    for hr in 0..2 {
        g.set(&m[hr], g.cf(f32::NEG_INFINITY))?;
        g.set(&l[hr], g.cf(0.0))?;
    }
    let first_unit = g.mul(g.zext64(pc.k)?, g.zext64(tl.nkv)?)?;
    let last_unit = g.add(first_unit, g.zext64(g.sub(tl.nkv, g.c32(1))?)?)?;
    let (c0, c1) = (tl.owner(g, first_unit)?, tl.owner(g, last_unit)?);
    g.for_range(c0, g.add(c1, g.c32(1))?, g.c32(1), |cc| {
        // (a CTA whose range starts before the tile holds it as its last piece)
        let later = g.icmp(IntPredicate::ULT, tl.start(g, cc)?, first_unit)?;
        let slot = g.add(g.mul(cc, g.c32(2))?, g.zext32(later)?)?;
        let part: Vec<_> = (0..n)
            .map(|i| g.load_f32_volatile(work, at(slot, i)?))
            .collect::<R<_>>()?;
        let mut fa = [g.cf(0.0); 2];
        let mut fb = [g.cf(0.0); 2];
        for hr in 0..2 {
            let (mp, lp) = (part[nd + hr], part[nd + 2 + hr]);
            let mo = g.getf(&m[hr])?;
            let mn = g.fmax(mo, mp)?;
            // (never -inf - -inf: an empty part and an empty sum keep factors 0)
            let none = g.fcmp(FloatPredicate::OEQ, mn, g.cf(f32::NEG_INFINITY))?;
            let mu = g.selectf(none, g.cf(0.0), mn)?;
            fa[hr] = g.ex2(g.fmul(g.fsub(mo, mu)?, mg.cx.c2)?)?;
            fb[hr] = g.ex2(g.fmul(g.fsub(mp, mu)?, mg.cx.c2)?)?;
            g.set(&m[hr], mn)?;
            let lv = g.fadd(g.fmul(g.getf(&l[hr])?, fa[hr])?, g.fmul(lp, fb[hr])?)?;
            g.set(&l[hr], lv)?;
        }
        for (j, x) in o.tiles[0].iter().flatten().enumerate() {
            let hr = (j % 4) / 2;
            let v = g.fadd(g.fmul(g.getf(x)?, fa[hr])?, g.fmul(part[j], fb[hr])?)?;
            g.set(x, v)?;
        }
        Ok(())
    })?;
    g.br(out)
}

/// The producer of the dynamic scheduler (`PtxOptions::dynamic_tiles`): its first tile
/// is `ctaid.x`, each next one `nctaid.x` + an atomic add to `TileCounter[0]`, fetched
/// once this tile's copies are issued (the add's latency hides under the consumers' last
/// blocks). Per tile: wait for `q_empty` (the consumers have read the slot and are done
/// with Q), write the tile index into the slot, then TMA Q, K and V (a tile without
/// blocks, and the end: a plain arrival at `q_full`). With `early` (`PtxOptions::early_claim`)
/// the add is issued when the tile starts, so that the next tile's Q follows this tile's
/// last copies at once. At the end it counts itself in
/// `TileCounter[1]`; the last CTA zeroes both words for the next launch (every CTA's
/// last add happened before its count: `acq_rel_inc`).
/// It issues `copies` (`PtxOptions::producers` > 1: Q and its share of K; the other
/// producer threads the rest, [`produce_dynamic_follow`]).
fn produce_dynamic<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    w: &Walk<'_, 'ctx>,
    ring: &Ring<'ctx>,
    early: bool,
    copies: Copies,
) -> R<()> {
    let (kv, a, lay, bars, tiles) = (w.kv, w.a, w.lay, w.bars, w.tiles);
    let grid = g.nctaid('x')?;
    let counter =
        g.b.build_ptr_to_int(a.ptr(KernelParam::TileCounter)?, g.i64, "")?;
    let next = g.var(g.i32, g.ctaid('x')?)?;
    let q_phase = g.var(g.i32, g.c32(0))?;
    let head = g.block("tile");
    let work = g.block("tile_work");
    let load = g.block("tile_load");
    let idle = g.block("tile_idle");
    let fetch = g.block("tile_fetch");
    let done = g.block("tiles_done");
    g.br(head)?;
    g.b.position_at_end(head);
    let t = g.geti(&next)?;
    let phase = g.geti(&q_phase)?;
    let q = bars.q_use(g, lay, phase)?;
    g.mbar_wait(q.empty, g.xor(q.phase, g.c32(1))?)?;
    g.st_shared_u32(q.slot(g, bars)?, t)?;
    g.cond_br(g.icmp(IntPredicate::ULT, t, tiles)?, work, done)?;

    g.b.position_at_end(work);
    if early {
        // (`early_claim`: the next tile now, its latency under this tile's copies)
        let taken = g.atom_inc_relaxed(counter)?;
        g.set(&next, g.add(taken, grid)?)?;
    }
    let (cx, at) = place_tile(g, c, p, a, Some(t))?;
    let runs = row_runs(g, c, p, kv, a, &cx, at.qb, at.nqb)?;
    g.cond_br(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, load, idle)?;
    g.b.position_at_end(load);
    let prod = Producer {
        g,
        c,
        lay,
        bars,
        cx: &cx,
        a,
        hq: at.hq,
        copies,
    };
    prod.run(&runs, Some(ring), Some(q), false)?;
    g.br(fetch)?;
    g.b.position_at_end(idle);
    g.mbar_arrive(q.full(g, bars)?)?;
    g.br(fetch)?;
    g.b.position_at_end(fetch);
    if !early {
        let taken = g.atom_inc_relaxed(counter)?;
        g.set(&next, g.add(taken, grid)?)?;
    }
    g.set(&q_phase, bars.q_next(g, phase)?)?;
    g.br(head)?;

    g.b.position_at_end(done);
    // the consumers read the end from the slot
    g.mbar_arrive(q.full(g, bars)?)?;
    let finished = g.acq_rel_inc(g.b.build_int_add(counter, g.c64(4), "")?)?;
    g.if_then(
        g.icmp(IntPredicate::EQ, finished, g.sub(grid, g.c32(1))?)?,
        || {
            g.st_global_u32(counter, g.c32(0))?;
            g.st_global_u32(g.b.build_int_add(counter, g.c64(4), "")?, g.c32(0))
        },
    )
}

/// What the dynamic scheduler's producer threads walk: the kv bounds, the kernel's
/// arguments, the shared-memory layout and barriers, and the number of tiles.
struct Walk<'a, 'ctx> {
    kv: &'a KvBounds,
    a: &'a Args<'a, 'ctx>,
    lay: &'a Layout,
    bars: &'a Bars<'ctx>,
    tiles: IntValue<'ctx>,
}

/// A producer thread of the dynamic scheduler after the first (`PtxOptions::producers` >
/// 1, the first thread of another warp of the producer warpgroup): it follows
/// [`produce_dynamic`]'s tiles as the consumers do ([`consume_dynamic`]: per Q use, wait
/// for `q_full`, read the tile index from the slot, stop at the end marker), then arrives
/// at `q_empty` (counted there besides the consumers, so that the slot is not rewritten
/// before this thread has read it) and issues its `copies` (its share of K or V) of every
/// kv block of the tile's runs into the ring at its own position (a tile without blocks
/// copies nothing). Each Q use's `q_full` completes before its tile's first S: V's
/// copies start no later than the consumers need them; K's second share waits for Q's
/// landing (the first S needs Q too).
fn produce_dynamic_follow<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    w: &Walk<'_, 'ctx>,
    copies: Copies,
) -> R<()> {
    let (lay, bars) = (w.lay, w.bars);
    let ring = Ring::new(g, lay.stages)?;
    let q_phase = g.var(g.i32, g.c32(0))?;
    consume_dynamic(g, lay, bars, w.tiles, &q_phase, &mut |t| {
        let q = bars.q_use(g, lay, g.geti(&q_phase)?)?;
        g.mbar_arrive(q.empty)?;
        let (cx, at) = place_tile(g, c, p, w.a, Some(t))?;
        let runs = row_runs(g, c, p, w.kv, w.a, &cx, at.qb, at.nqb)?;
        g.if_then(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, || {
            let prod = Producer {
                g,
                c,
                lay,
                bars,
                cx: &cx,
                a: w.a,
                hq: at.hq,
                copies,
            };
            prod.run_kv(&runs, Some(&ring), None)
        })
    })
}

/// The dynamic scheduler's producer with the next tile's Q ahead (`PtxOptions::q_ahead`,
/// two Q buffers): the CTA's first tile is announced before the walk; at each tile `n`
/// it claims the next tile from the counter, then copies tile `n`'s K and V, and right
/// after the first block's copies (at once on a tile without blocks) announces the next
/// tile into Q use `n + 1`: waits for that buffer's `q_empty` (the consumers free it
/// once tile `n - 1`'s S are complete), writes the index into its slot and copies its
/// Q (a tile without blocks, or the end marker: a plain arrival at `q_full`). The
/// consumers are [`consume_dynamic`]'s, unchanged; the counter resets itself as in
/// [`produce_dynamic`] (each CTA's last claim precedes its count of finished CTAs).
#[allow(clippy::too_many_arguments)]
fn produce_ahead<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    p: &Program,
    kv: &KvBounds,
    a: &Args<'_, 'ctx>,
    lay: &Layout,
    bars: &Bars<'ctx>,
    ring: &Ring<'ctx>,
    tiles: IntValue<'ctx>,
) -> R<()> {
    let grid = g.nctaid('x')?;
    let counter =
        g.b.build_ptr_to_int(a.ptr(KernelParam::TileCounter)?, g.i64, "")?;
    let cur = g.var(g.i32, g.ctaid('x')?)?;
    let q_phase = g.var(g.i32, g.c32(0))?;
    // tile `t` into Q use `n`: its buffer freed, its index in the slot, its Q copied (a
    // tile with blocks) or a plain arrival (no blocks, or the end marker)
    let announce = |t: IntValue<'ctx>, n: IntValue<'ctx>| -> R<()> {
        let q = bars.q_use(g, lay, n)?;
        g.mbar_wait(q.empty, g.xor(q.phase, g.c32(1))?)?;
        g.st_shared_u32(q.slot(g, bars)?, t)?;
        let valid = g.block("ahead_tile");
        let load = g.block("ahead_load");
        let bare = g.block("ahead_bare");
        let out = g.block("ahead_out");
        g.cond_br(g.icmp(IntPredicate::ULT, t, tiles)?, valid, bare)?;
        g.b.position_at_end(valid);
        let (cx, at) = place_tile(g, c, p, a, Some(t))?;
        let runs = row_runs(g, c, p, kv, a, &cx, at.qb, at.nqb)?;
        g.cond_br(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, load, bare)?;
        g.b.position_at_end(load);
        let prod = Producer {
            g,
            c,
            lay,
            bars,
            cx: &cx,
            a,
            hq: at.hq,
            copies: Copies::ALL,
        };
        prod.load_q(Some(q))?;
        g.br(out)?;
        g.b.position_at_end(bare);
        g.mbar_arrive(q.full(g, bars)?)?;
        g.br(out)?;
        g.b.position_at_end(out);
        Ok(())
    };
    announce(g.geti(&cur)?, g.c32(0))?;
    let head = g.block("tile");
    let work = g.block("tile_work");
    let load = g.block("tile_load");
    let idle = g.block("tile_idle");
    let fetch = g.block("tile_fetch");
    let done = g.block("tiles_done");
    g.br(head)?;
    g.b.position_at_end(head);
    let t = g.geti(&cur)?;
    let n = g.geti(&q_phase)?;
    g.cond_br(g.icmp(IntPredicate::ULT, t, tiles)?, work, done)?;

    g.b.position_at_end(work);
    // the next tile now: the add's latency under this tile's first copies
    let taken = g.atom_inc_relaxed(counter)?;
    let mut ahead = || -> R<()> {
        let nt = g.add(taken, grid)?;
        g.set(&cur, nt)?;
        announce(nt, bars.q_next(g, n)?)
    };
    let (cx, at) = place_tile(g, c, p, a, Some(t))?;
    let runs = row_runs(g, c, p, kv, a, &cx, at.qb, at.nqb)?;
    g.cond_br(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, load, idle)?;
    g.b.position_at_end(load);
    let prod = Producer {
        g,
        c,
        lay,
        bars,
        cx: &cx,
        a,
        hq: at.hq,
        copies: Copies::ALL,
    };
    prod.run_kv(&runs, Some(ring), Some(&mut ahead))?;
    g.br(fetch)?;
    g.b.position_at_end(idle);
    ahead()?;
    g.br(fetch)?;
    g.b.position_at_end(fetch);
    g.set(&q_phase, bars.q_next(g, n)?)?;
    g.br(head)?;

    g.b.position_at_end(done);
    let finished = g.acq_rel_inc(g.b.build_int_add(counter, g.c64(4), "")?)?;
    g.if_then(
        g.icmp(IntPredicate::EQ, finished, g.sub(grid, g.c32(1))?)?,
        || {
            g.st_global_u32(counter, g.c32(0))?;
            g.st_global_u32(g.b.build_int_add(counter, g.c64(4), "")?, g.c32(0))
        },
    )
}

/// The consumers' walk over the dynamic scheduler's tiles: per tile, wait for `q_full`
/// (parity `q_phase`), read the tile index from the slot, stop at one past the last
/// tile, else `body(t)` (which frees the Q buffer, by its last P V or at once).
fn consume_dynamic<'ctx>(
    g: &Gpu<'ctx>,
    lay: &Layout,
    bars: &Bars<'ctx>,
    tiles: IntValue<'ctx>,
    q_phase: &Var<'ctx>,
    body: &mut dyn FnMut(IntValue<'ctx>) -> R<()>,
) -> R<()> {
    let head = g.block("tile");
    let work = g.block("tile_work");
    let done = g.block("tiles_done");
    g.br(head)?;
    g.b.position_at_end(head);
    let q = bars.q_use(g, lay, g.geti(q_phase)?)?;
    g.mbar_wait(q.full(g, bars)?, q.phase)?;
    let t = g.ld_shared_u32(q.slot(g, bars)?)?;
    g.cond_br(g.icmp(IntPredicate::ULT, t, tiles)?, work, done)?;
    g.b.position_at_end(work);
    body(t)?;
    g.set(q_phase, bars.q_next(g, g.geti(q_phase)?)?)?;
    g.br(head)?;
    g.b.position_at_end(done);
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
    /// Which copies this thread issues.
    copies: Copies,
}

/// The copies of one producer thread: Q or not, and its share of K's and of V's.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Copies {
    q: bool,
    k: Share,
    v: Share,
}

/// A producer thread's share of a tensor's copies of each kv tile.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    No,
    All,
    /// Half `h` (0 or 1) of the tile's boxes: the boxes `j` with `j mod 2 = h` of a tile
    /// read by page (pages smaller than the tile), else its 64-column slabs `s` with
    /// `s mod 2 = h`. Half 0 counts the whole tile's bytes at the full barrier; half 1's
    /// copies complete on the same barrier (the transaction count may dip below zero
    /// before the count arrives: the phase completes only with the arrival). A tile
    /// ending past `Lkv` (V of a paged cache: [`Producer::copy_v_tail`]) is half 0's alone.
    Half(u32),
}

impl Share {
    /// Whether this share counts the tile's bytes (and takes the tail's V).
    fn counts(self) -> bool {
        matches!(self, Share::All | Share::Half(0))
    }
    /// Whether this share copies item `j` (a box or a slab).
    fn takes(self, j: u32) -> bool {
        match self {
            Share::No => false,
            Share::All => true,
            Share::Half(h) => j % 2 == h,
        }
    }
}

impl Copies {
    /// Every copy (one producer thread).
    const ALL: Copies = Copies {
        q: true,
        k: Share::All,
        v: Share::All,
    };

    /// The producer threads of `PtxOptions::producers` = `n`: (thread offset in the
    /// producer warpgroup, its copies); the first one's copies include Q.
    fn roles(n: u32) -> &'static [(i64, Copies)] {
        const fn c(q: bool, k: Share, v: Share) -> Copies {
            Copies { q, k, v }
        }
        use Share::{All, Half, No};
        const ONE: [(i64, Copies); 1] = [(0, Copies::ALL)];
        const TWO: [(i64, Copies); 2] = [(0, c(true, All, No)), (32, c(false, No, All))];
        const FOUR: [(i64, Copies); 4] = [
            (0, c(true, Half(0), No)),
            (32, c(false, No, Half(0))),
            (64, c(false, Half(1), No)),
            (96, c(false, No, Half(1))),
        ];
        match n {
            2 => &TWO,
            4 => &FOUR,
            _ => &ONE,
        }
    }
}

impl<'ctx> Producer<'_, 'ctx> {
    /// Copies a box of a tensor map into `tile` (`buf` bytes further), one box of 64
    /// columns per slab, at box coordinates `(c1, c2)` after the columns: (row, slice) of
    /// `[B*Hq or B*Hkv, L, D]`, or (kv head, cache row) of a paged cache.
    fn copy(
        &self,
        tile: &SmemTile,
        map: KernelParam,
        buf: IntValue<'ctx>,
        c1: IntValue<'ctx>,
        c2: IntValue<'ctx>,
        bar: IntValue<'ctx>,
    ) -> R<()> {
        self.copy_slabs(tile, map, buf, (c1, c2), bar, Share::All)
    }

    /// [`Self::copy`] of the slabs `share` takes.
    fn copy_slabs(
        &self,
        tile: &SmemTile,
        map: KernelParam,
        buf: IntValue<'ctx>,
        (c1, c2): (IntValue<'ctx>, IntValue<'ctx>),
        bar: IntValue<'ctx>,
        share: Share,
    ) -> R<()> {
        let g = self.g;
        let map = self.a.ptr(map)?;
        for s in (0..tile.cols / 64).filter(|&s| share.takes(s)) {
            let off = tile.offset + s * tile.rows * 128;
            let dst = g.smem_addr32(g.add(buf, g.c32(off as i64))?)?;
            g.tma_load_3d(dst, map, [g.c32(64 * s as i64), c1, c2], bar)?;
        }
        Ok(())
    }

    /// Q, then K and V of every kv block of the runs into the ring (from its start, or
    /// the persistent kernel's: at `ring`'s position, into the Q buffer of `q`, with
    /// `wait`: once `q` says the consumers freed it).
    fn run(
        &self,
        runs: &super::bounds::RowRuns<'ctx>,
        ring: Option<&Ring<'ctx>>,
        q: Option<QUse<'ctx>>,
        wait: bool,
    ) -> R<()> {
        let g = self.g;
        if self.copies.q {
            if let Some(q) = q
                && wait
            {
                g.mbar_wait(q.empty, g.xor(q.phase, g.c32(1))?)?;
            }
            self.load_q(q)?;
        }
        self.run_kv(runs, ring, None)
    }

    /// This tile's Q into the buffer of `q` (the first buffer without), counted at its
    /// `q_full`.
    fn load_q(&self, q: Option<QUse<'ctx>>) -> R<()> {
        let (g, cx, lay, bars) = (self.g, self.cx, self.lay, self.bars);
        let q_full = |g: &Gpu<'ctx>| match q {
            Some(q) => q.full(g, bars),
            None => bars.q_full(g),
        };
        let q_buf = match q.and_then(|q| q.second) {
            Some(s) => s.buf,
            None => g.c32(0),
        };
        // Q: slice b * Hq + h
        let q_slice = g.add(g.mul(cx.b, self.hq)?, cx.h)?;
        g.mbar_arrive_expect_tx(q_full(g)?, lay.q.bytes())?;
        self.copy(&lay.q, KernelParam::TmaQ, q_buf, cx.q0, q_slice, q_full(g)?)
    }

    /// K and V of every kv block of the runs into the ring (see [`Self::run`]); `after_first`
    /// (`PtxOptions::q_ahead`) is emitted once, after the first block's copies.
    fn run_kv(
        &self,
        runs: &super::bounds::RowRuns<'ctx>,
        ring: Option<&Ring<'ctx>>,
        mut after_first: Option<&mut dyn FnMut() -> R<()>>,
    ) -> R<()> {
        let (g, c, cx, lay, bars) = (self.g, self.c, self.cx, self.lay, self.bars);
        // K, V: slice b * Hkv + h / (Hq / Hkv)
        let hkv = self.a.int(KernelParam::Hkv)?;
        let hk = g.udiv(cx.h, g.udiv(self.hq, hkv)?)?;
        let kv_slice = g.add(g.mul(cx.b, hkv)?, hk)?;
        let cursor = KvCursor::new(g, runs.beg)?;
        cursor.start(g, runs)?;
        let own;
        let ring = match ring {
            Some(r) => r,
            None => {
                own = Ring::new(g, lay.stages)?;
                &own
            }
        };
        let first = match after_first {
            Some(_) => Some(g.var(g.i32, g.c32(1))?),
            None => None,
        };
        let lp = g.block("produce");
        let done = g.block("produced");
        g.br(lp)?;
        g.b.position_at_end(lp);
        let pos = cursor.get(g)?;
        let kv0 = cx.kv_start(g, pos.j, c.kvb)?;
        let at = KvAt {
            kv0,
            hk,
            slice: kv_slice,
        };
        let (s, ph) = ring.get(g)?;
        let free = g.xor(ph, g.c32(1))?;
        let (ks, vs) = (self.copies.k, self.copies.v);
        if ks != Share::No {
            g.mbar_wait(bars.k_empty(g, s)?, free)?;
            if ks.counts() {
                g.mbar_arrive_expect_tx(bars.k_full(g, s)?, lay.k.bytes())?;
            }
            let kbuf = g.mul(s, g.c32(lay.k.bytes() as i64))?;
            self.copy_kv(&lay.k, KernelParam::TmaK, kbuf, &at, bars.k_full(g, s)?, ks)?;
        }
        if vs != Share::No {
            let vbuf = g.mul(s, g.c32(lay.v.bytes() as i64))?;
            let copy_v = || -> R<()> {
                g.mbar_wait(bars.v_empty(g, s)?, free)?;
                if vs.counts() {
                    g.mbar_arrive_expect_tx(bars.v_full(g, s)?, lay.v.bytes())?;
                }
                self.copy_kv(&lay.v, KernelParam::TmaV, vbuf, &at, bars.v_full(g, s)?, vs)
            };
            match bars.v_tail {
                // a paged tile that ends past the sequence's keys holds the unused slots
                // of its last page (under `device_lens`, of a contiguous cache too):
                // zeroed before the consumers see it (by the share that counts the bytes;
                // the other copies nothing of it)
                Some(tail_bar) => {
                    let lkv = self.cx.lkv;
                    let tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(c.kvb as i64))?, lkv)?;
                    g.if_else(
                        tail,
                        || {
                            if !vs.counts() {
                                return Ok(());
                            }
                            g.mbar_wait(bars.v_empty(g, s)?, free)?;
                            self.copy_v_tail(vbuf, &at, g.sub(lkv, kv0)?, tail_bar, s)
                        },
                        copy_v,
                    )?;
                }
                None => copy_v()?,
            }
        }
        ring.advance(g)?;
        let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
        cursor.set(g, &next)?;
        if let (Some(f), Some(first)) = (after_first.as_mut(), &first) {
            g.if_then(g.icmp(IntPredicate::NE, g.geti(first)?, g.c32(0))?, || {
                g.set(first, g.c32(0))?;
                f()
            })?;
        }
        g.cond_br(has_next, lp, done)?;
        g.b.position_at_end(done);
        Ok(())
    }
}

impl<'ctx> Producer<'_, 'ctx> {
    /// The V tile of ring stage `s` (at `vbuf`, box coordinates `at`) whose rows from
    /// `keep` on lie past the sequence's end (a paged cache's last page: slots nobody
    /// wrote, maybe NaN, which P = 0 would not cancel in P V): copied by TMA to the
    /// producer's own barrier `tail_bar`, waited for, rows `keep..kv_block` zeroed (a row
    /// of a 128-byte-swizzled slab is its own 128 bytes, so the swizzle does not matter),
    /// made visible to the async proxy (wgmma's reads), then `v_full` completed by a plain
    /// arrival (no bytes pending). One thread (the producer's), once per tile that ends
    /// past `Lkv`.
    fn copy_v_tail(
        &self,
        vbuf: IntValue<'ctx>,
        at: &KvAt<'ctx>,
        keep: IntValue<'ctx>,
        tail_bar: IntValue<'ctx>,
        s: IntValue<'ctx>,
    ) -> R<()> {
        let (g, lay, bars) = (self.g, self.lay, self.bars);
        let v = &lay.v;
        let state = g.mbar_arrive_expect_tx_state(tail_bar, v.bytes())?;
        self.copy_kv(v, KernelParam::TmaV, vbuf, at, tail_bar, Share::All)?;
        g.mbar_wait_state(tail_bar, state)?;
        let zero = [g.cf(0.0); 4];
        g.for_range(keep, g.c32(v.rows as i64), g.c32(1), |r| {
            let row = g.add(vbuf, g.mul(r, g.c32(128))?)?;
            for slab in 0..v.cols / 64 {
                let at = g.add(row, g.c32((v.offset + slab * v.rows * 128) as i64))?;
                for chunk in 0..8 {
                    g.st_shared_v4(g.add(at, g.c32(16 * chunk))?, zero)?;
                }
            }
            Ok(())
        })?;
        g.fence_proxy_async()?;
        g.mbar_arrive(bars.v_full(g, s)?)
    }

    /// The kv tile at `at` of K or V (`map`) into `tile` (`buf` bytes further), counted at
    /// `bar`: one box per 64-column slab at (row `kv0`, slice `b Hkv + hk`) of `[B*Hkv,
    /// L, D]`, or from a paged cache (`KvCache::Paged`, the map viewing it as `{D, Hkv,
    /// pages x P}`, boxes of `min(P, kv_block)` rows): a page of at least the tile one box
    /// ([`Self::page_row`] of `kv0`); smaller pages (from 16 rows) one box per page the
    /// tile spans, their ids loaded four at a time (independent loads), each box into
    /// its rows of the tile (a whole number of 1024-byte swizzle atoms). Two arms of one
    /// branch on the page size, so that pages of the tile's size keep one load a copy
    /// (session 26's call 2 measured eight per tile 6-9% slower there).
    fn copy_kv(
        &self,
        tile: &SmemTile,
        map: KernelParam,
        buf: IntValue<'ctx>,
        at: &KvAt<'ctx>,
        bar: IntValue<'ctx>,
        share: Share,
    ) -> R<()> {
        if !self.c.paged_kv {
            return self.copy_slabs(tile, map, buf, (at.kv0, at.slice), bar, share);
        }
        let g = self.g;
        let shift = self.a.int(KernelParam::PageShift)?;
        let kvb = self.c.kvb;
        // the box of cache row `row` (kv head `hk`) into the tile's rows from `r` on
        // (the slabs of `slabs`)
        let issue = |row: IntValue<'ctx>, r: IntValue<'ctx>, slabs: Share| {
            let box_buf = g.add(buf, g.mul(r, g.c32(128))?)?;
            self.copy_slabs(tile, map, box_buf, (at.hk, row), bar, slabs)
        };
        let small = g.icmp(IntPredicate::ULT, shift, g.c32(kvb.trailing_zeros() as i64))?;
        g.if_else(
            small,
            || {
                // P < kv_block: kv_block / P boxes of P rows (at most kv_block / 16), the
                // ids loaded four at a time (the producer's 40 registers)
                let page = g.shl(g.c32(1), shift)?;
                // (`Share::Half`: every other box, all its slabs)
                let boxes: Vec<u32> = (0..(kvb / 16).max(1)).filter(|&j| share.takes(j)).collect();
                for group in boxes.chunks(4) {
                    let rows = group
                        .iter()
                        .map(|&j| self.page_row(g.add(at.kv0, g.mul(page, g.c32(j as i64))?)?))
                        .collect::<R<Vec<_>>>()?;
                    for (&j, &row) in group.iter().zip(&rows) {
                        let r = g.mul(page, g.c32(j as i64))?;
                        let inside = g.icmp(IntPredicate::ULT, r, g.c32(kvb as i64))?;
                        g.if_then(inside, || issue(row, r, Share::All))?;
                    }
                }
                Ok(())
            },
            || issue(self.page_row(at.kv0)?, g.c32(0), share),
        )
    }

    /// The cache row of position `kv` of this sequence (`KvCache::Paged`): `id P + kv mod
    /// P` with `id = PageTable[b MaxPages + min(kv / P, MaxPages - 1)]` clamped into
    /// `0..NumPages` (never a read outside the table or the cache; the runtime checks the
    /// ids).
    fn page_row(&self, kv: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let (g, a, cx) = (self.g, self.a, self.cx);
        let shift = a.int(KernelParam::PageShift)?;
        let max_pages = a.int(KernelParam::MaxPages)?;
        let last_logical = g.sub(max_pages, g.c32(1))?;
        let logical = g.lshr(kv, shift)?;
        let logical = g.selecti(
            g.icmp(IntPredicate::ULT, logical, last_logical)?,
            logical,
            last_logical,
        )?;
        let idx = g.add(g.mul(cx.b, max_pages)?, logical)?;
        let id = g.load_i32(a.ptr(KernelParam::PageTable)?, idx)?;
        // unsigned: a negative id is past the end too
        let last = g.sub(a.int(KernelParam::NumPages)?, g.c32(1))?;
        let id = g.selecti(g.icmp(IntPredicate::ULT, id, last)?, id, last)?;
        let page = g.shl(g.c32(1), shift)?;
        let within = g.and(kv, g.sub(page, g.c32(1))?)?;
        g.add(g.shl(id, shift)?, within)
    }
}

/// Where a kv tile's rows come from: its first position `kv0`, its kv head `hk` and
/// (contiguous K/V) its slice `b Hkv + hk`.
struct KvAt<'ctx> {
    kv0: IntValue<'ctx>,
    hk: IntValue<'ctx>,
    slice: IntValue<'ctx>,
}

/// A consumer warpgroup's state.
struct Consumer<'a, 'ctx> {
    g: &'a Gpu<'ctx>,
    c: &'a Cfg,
    p: &'a Program,
    cx: &'a Ctx<'ctx>,
    env: &'a Env<'ctx>,
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

    /// `PtxOptions::mask_early`: the keep bits of the block at `pos` for S fragments of
    /// `n` values (emitted between S's issue and its wait; `None` without the option).
    fn mask_early(&self, n: usize, pos: &KvPos<'ctx>) -> R<Option<MaskBits<'ctx>>> {
        let (g, c, cx) = (self.g, self.c, self.cx);
        let kv0 = cx.kv_start(g, pos.j, c.kvb)?;
        mask_bits(g, c, cx, self.env, self.p, (1, n / 4), kv0, pos.full)
    }

    /// Score and mask of S (the wgmma accumulators `s`) for the block at `pos` (with
    /// `bits`, the block's mask from [`Self::mask_early`]), then `online` (one of the
    /// softmax module's two entry points) on this warpgroup's m, l and O, with the rescale
    /// factors of O going to `alpha`.
    fn scored_softmax<T>(
        &self,
        s: &[inkwell::values::FloatValue<'ctx>],
        pos: &KvPos<'ctx>,
        bits: Option<&MaskBits<'ctx>>,
        online: OnlineSoftmax<'ctx, T>,
    ) -> R<T> {
        let (g, c, cx) = (self.g, self.c, self.cx);
        let kv0 = cx.kv_start(g, pos.j, c.kvb)?;
        let t = score_and_mask(g, c, cx, self.env, self.p, &split4(s), kv0, pos.full, bits)?;
        let (m, l, o) = (&self.m, &self.l, &self.o);
        online(g, c, cx, &t, m, l, o, Some(&self.alpha), &mut || Ok(()))
    }

    /// Score, mask and online softmax of S for the block at `pos`; P goes to `p_prev`
    /// and the rescale factors of O to `alpha`. Returns whether some row's max moved.
    /// `bits`: the block's mask from [`Self::mask_early`].
    fn softmax(
        &self,
        s: &[inkwell::values::FloatValue<'ctx>],
        pos: &KvPos<'ctx>,
        bits: Option<&MaskBits<'ctx>>,
    ) -> R<IntValue<'ctx>> {
        let (pfrag, any) = self.scored_softmax(s, pos, bits, online_softmax)?;
        self.p_prev.store(self.g, &pfrag[0])?;
        Ok(any)
    }

    /// [`Self::softmax`] without the packing (`pv_wait_late`): P as f32 values of the
    /// accumulator layout, for [`pack_p`] once the previous P V is complete.
    #[allow(clippy::type_complexity)]
    fn softmax_exp(
        &self,
        s: &[inkwell::values::FloatValue<'ctx>],
        pos: &KvPos<'ctx>,
        bits: Option<&MaskBits<'ctx>>,
    ) -> R<(
        Vec<Vec<[inkwell::values::FloatValue<'ctx>; 4]>>,
        IntValue<'ctx>,
    )> {
        self.scored_softmax(s, pos, bits, online_softmax_exp)
    }

    fn kbuf(&self, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.g.mul(s, self.g.c32(self.lay.k.bytes() as i64))
    }
    fn vbuf(&self, s: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.g.mul(s, self.g.c32(self.lay.v.bytes() as i64))
    }

    /// The kv loop of a row with at least one block; ends branching to `epi`. `q`: the
    /// persistent kernel's use of the Q buffer (its parity; freed before the last P V,
    /// and the turn always passed on: the caller balances the turn barriers).
    fn run(
        &self,
        runs: &super::bounds::RowRuns<'ctx>,
        epi: inkwell::basic_block::BasicBlock<'ctx>,
        q: Option<QUse<'ctx>>,
        cross: Option<&Cross<'_, 'ctx>>,
    ) -> R<()> {
        let (g, c, cx, bars) = (self.g, self.c, self.cx, self.bars);
        let lp = g.block("kv_loop");
        let last = g.block("pv_last");

        // ---- Q ready (negated in place for a negative scale on the raw-score path) ---------
        let q_phase = match q {
            Some(q) => q.phase,
            None => g.c32(0),
        };
        let second = q.and_then(|q| q.second);
        let q_full = match second {
            Some(s) => s.full,
            None => bars.q_full(g)?,
        };
        g.mbar_wait(q_full, q_phase)?;
        if cx.raw {
            let neg = g.fcmp(FloatPredicate::OLT, cx.scale, g.cf(0.0))?;
            g.if_then(neg, || {
                match (second, self.lay.q1) {
                    (Some(s), Some(q1)) => {
                        let tile1 = SmemTile { offset: q1, ..c.q };
                        let first = g.icmp(IntPredicate::EQ, s.buf, g.c32(0))?;
                        g.if_then(s.is, || negate_own_chunks(g, &tile1, self.tid, c.threads))?;
                        g.if_then(first, || negate_own_chunks(g, &c.q, self.tid, c.threads))?;
                    }
                    _ => negate_own_chunks(g, &c.q, self.tid, c.threads)?,
                }
                g.fence_proxy_async()?;
                g.bar_sync(BAR_CONSUMERS, c.threads)
            })?;
        }
        let qbuf = second.map(|s| s.buf);
        // warpgroup 0 issues first (the persistent kernel: once, before its first tile)
        if q.is_none() {
            g.if_then(g.icmp(IntPredicate::EQ, self.wg, g.c32(0))?, || {
                g.bar_arrive(BAR_TURN0, 256)
            })?;
        }

        // ---- the first block: S only -----------------------------------------------------------
        let cursor = KvCursor::new(g, runs.beg)?;
        cursor.start(g, runs)?;
        if let Some(x) = cross {
            // the previous tile issued this one's first S and ran its softmax
            let done = g.icmp(IntPredicate::NE, g.geti(x.pre)?, g.c32(0))?;
            g.set(x.pre, g.c32(0))?;
            let skip = g.block("first_done");
            let first = g.block("first_block");
            g.cond_br(done, skip, first)?;
            g.b.position_at_end(skip);
            let pos = cursor.get(g)?;
            let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
            cursor.set(g, &next)?;
            g.cond_br(has_next, lp, last)?;
            g.b.position_at_end(first);
        }
        let pos = cursor.get(g)?;
        let (s, ph) = self.ring.get(g)?;
        g.mbar_wait(bars.k_full(g, s)?, ph)?;
        self.take_turn()?;
        let s_async = qk_wgmma_issue(g, c, cx, self.kbuf(s)?, qbuf)?;
        self.pass_turn()?;
        let bits = self.mask_early(s_async.len(), &pos)?;
        let sv = g.wgmma_wait(0, &s_async)?;
        g.mbar_arrive(bars.k_empty(g, s)?)?;
        self.softmax(&sv, &pos, bits.as_ref())?;
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
        let s_async = qk_wgmma_issue(g, c, cx, self.kbuf(s)?, qbuf)?;
        let o_in = self.o.flat(g)?;
        let p_in = self.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, self.vbuf(ps)?)?;
        self.pass_turn()?;
        let bits = self.mask_early(s_async.len(), &pos)?;
        let sv = g.wgmma_wait(1, &s_async)?;
        g.mbar_arrive(bars.k_empty(g, s)?)?;
        if c.pv_wait_late {
            // (`pv_wait_late`: the wait in both arms of the rescale branch, after the
            // exponentials' block, and P packed after it; the two waits' texts differ so
            // that LLVM does not hoist them back into one)
            let (p_raw, any) = self.softmax_exp(&sv, &pos, bits.as_ref())?;
            let rescale = g.block("pv_wait_rescale");
            let keep = g.block("pv_wait");
            let done = g.block("pv_done");
            g.cond_br(any, rescale, keep)?;
            for (bb, note) in [(rescale, "rescale"), (keep, "keep")] {
                g.b.position_at_end(bb);
                let o_now = g.wgmma_wait_note(0, &o_async, note)?;
                g.mbar_arrive(bars.v_empty(g, ps)?)?;
                self.o.store_flat(g, &o_now)?;
                if bb == rescale {
                    self.o.scale_rows(g, &self.alpha)?;
                }
                g.br(done)?;
            }
            g.b.position_at_end(done);
            self.p_prev.store(g, &pack_p(g, c, &p_raw)?[0])?;
        } else {
            let any = self.softmax(&sv, &pos, bits.as_ref())?;
            let o_now = g.wgmma_wait(0, &o_async)?;
            g.mbar_arrive(bars.v_empty(g, ps)?)?;
            self.o.store_flat(g, &o_now)?;
            g.if_then(any, || self.o.scale_rows(g, &self.alpha))?;
        }
        self.prev.set(g, (s, ph))?;
        self.ring.advance(g)?;
        let (next, has_next) = pos.step(g, runs)?.next(g, runs)?;
        cursor.set(g, &next)?;
        g.cond_br(has_next, lp, last)?;

        // ---- the last block's P V --------------------------------------------------------------
        g.b.position_at_end(last);
        let (ps, pph) = self.prev.get(g)?;
        if let Some(q) = q {
            // every S of this tile is complete: the producer may load the next tile's Q
            g.mbar_arrive(q.empty)?;
            if let Some(x) = cross {
                let alone = g.block("pv_last_alone");
                self.cross_tile(x, ps, pph, epi, alone)?;
                g.b.position_at_end(alone);
                self.m_l_out(x)?;
            }
            g.mbar_wait(bars.v_full(g, ps)?, pph)?;
            self.take_turn()?;
            let o_in = self.o.flat(g)?;
            let p_in = self.p_prev.values(g)?;
            let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, self.vbuf(ps)?)?;
            self.pass_turn()?;
            let o_now = g.wgmma_wait(0, &o_async)?;
            g.mbar_arrive(bars.v_empty(g, ps)?)?;
            self.o.store_flat(g, &o_now)?;
            return g.br(epi);
        }
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
    /// This tile's m and l to the epilogue's copies (`cross_tile`).
    fn m_l_out(&self, x: &Cross<'_, 'ctx>) -> R<()> {
        let g = self.g;
        for (dst, src) in x.m_out.rows[0].iter().zip(&self.m.rows[0]) {
            g.set(dst, g.getf(src)?)?;
        }
        for (dst, src) in x.l_out.rows[0].iter().zip(&self.l.rows[0]) {
            g.set(dst, g.getf(src)?)?;
        }
        Ok(())
    }

    /// `PtxOptions::cross_tile`, at the last block of a tile (its Q freed, the last P is
    /// in `p_prev` and V at ring position `(ps, pph)`): waits for the next tile's Q and
    /// reads its index; if it is a tile with blocks (and Q is not negated in shared
    /// memory), issues its first S with this tile's last P V in one turn, waits for both,
    /// moves this tile's m and l to the epilogue's copies, runs the next tile's first
    /// score and softmax (from m = -inf, l = 0; the other warpgroups' products run under
    /// it), and branches to `epi` with `pre` set (the next tile then starts at its second
    /// block). Otherwise branches to `alone`.
    fn cross_tile(
        &self,
        x: &Cross<'_, 'ctx>,
        ps: IntValue<'ctx>,
        pph: IntValue<'ctx>,
        epi: inkwell::basic_block::BasicBlock<'ctx>,
        alone: inkwell::basic_block::BasicBlock<'ctx>,
    ) -> R<()> {
        let (g, c, bars) = (self.g, self.c, self.bars);
        let q1 = bars.q_use(g, self.lay, bars.q_next(g, x.n)?)?;
        g.mbar_wait(q1.full(g, bars)?, q1.phase)?;
        let t1 = g.ld_shared_u32(q1.slot(g, bars)?)?;
        let peek = g.block("next_tile");
        g.cond_br(g.icmp(IntPredicate::ULT, t1, x.tiles)?, peek, alone)?;
        g.b.position_at_end(peek);
        let (cx1, at1) = place_tile(g, c, self.p, x.a, Some(t1))?;
        let runs1 = row_runs(g, c, self.p, x.kv, x.a, &cx1, at1.qb, at1.nqb)?;
        let mut go = g.icmp(IntPredicate::ULT, runs1.beg, runs1.end)?;
        if cx1.raw {
            // (a negative scale negates the next Q in shared memory first: not here)
            go = g.and(go, g.fcmp(FloatPredicate::UGE, cx1.scale, g.cf(0.0))?)?;
        }
        let work = g.block("next_first");
        g.cond_br(go, work, alone)?;
        g.b.position_at_end(work);
        let cursor = KvCursor::new(g, runs1.beg)?;
        cursor.start(g, &runs1)?;
        let pos = cursor.get(g)?;
        let (s, ph) = self.ring.get(g)?;
        g.mbar_wait(bars.k_full(g, s)?, ph)?;
        g.mbar_wait(bars.v_full(g, ps)?, pph)?;
        self.take_turn()?;
        let qbuf = q1.second.map(|s| s.buf);
        let s_async = qk_wgmma_issue(g, c, &cx1, self.kbuf(s)?, qbuf)?;
        let o_in = self.o.flat(g)?;
        let p_in = self.p_prev.values(g)?;
        let o_async = pv_wgmma_issue(g, c, &p_in, &o_in, self.vbuf(ps)?)?;
        self.pass_turn()?;
        let sv = g.wgmma_wait(1, &s_async)?;
        // (the P V completes before the next tile's P is written: with P written under it,
        // the driver's ptxas (CUDA 13.0) serializes every wgmma of the kernel, C7513, and
        // the kernel ran 1.14-1.40x slower on an H200)
        let o_now = g.wgmma_wait(0, &o_async)?;
        g.mbar_arrive(bars.k_empty(g, s)?)?;
        g.mbar_arrive(bars.v_empty(g, ps)?)?;
        self.o.store_flat(g, &o_now)?;
        self.m_l_out(x)?;
        for hr in &self.m.rows[0] {
            g.set(hr, g.cf(f32::NEG_INFINITY))?;
        }
        for hr in &self.l.rows[0] {
            g.set(hr, g.cf(0.0))?;
        }
        let next = Consumer {
            cx: &cx1,
            o: self.o.clone(),
            m: self.m.clone(),
            l: self.l.clone(),
            alpha: self.alpha.clone(),
            p_prev: self.p_prev.clone(),
            ring: self.ring.clone(),
            prev: self.prev.clone(),
            ..*self
        };
        // (O's rescale factors are the next tile's: O starts from zero there)
        next.softmax(&sv, &pos, None)?;
        self.prev.set(g, (s, ph))?;
        self.ring.advance(g)?;
        g.set(x.pre, g.c32(1))?;
        g.br(epi)
    }
}

/// What `PtxOptions::cross_tile` needs at a tile's last block: the next tile's place
/// and runs (`a`, `kv`, `tiles`), this tile's Q use number `n`, the flag `pre` (the next
/// tile's first block is done) and the m, l the epilogue reads.
struct Cross<'a, 'ctx> {
    a: &'a Args<'a, 'ctx>,
    kv: &'a KvBounds,
    tiles: IntValue<'ctx>,
    n: IntValue<'ctx>,
    pre: &'a Var<'ctx>,
    m_out: &'a RowState<'ctx>,
    l_out: &'a RowState<'ctx>,
}
