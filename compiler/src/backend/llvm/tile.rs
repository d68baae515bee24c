//! Tiles and fragments of the tensor-core kernels: the fixed sizes of one kernel
//! ([`Cfg`]), where a thread works ([`Ctx`]), the mma fragment types and the register
//! tiles that live across kv blocks ([`AccTile`], [`RowState`]).
//!
//! In: [`PtxOptions`]; values the kernel computed at its start. Out: types and small
//! helpers that `matmul.rs`, `score.rs`, `softmax.rs`, `pipeline.rs` and `kernel.rs`
//! share. Layout of an m16n8 accumulator ([`Acc`]): element `e` of lane `l` sits at row
//! `l / 4 + 8 (e / 2)` and column `2 (l % 4) + e % 2`, so each thread holds two rows
//! (the two halves `hr` of [`RowState`]) of each m-tile.

use super::gpu::{Gpu, R, SmemTile, Var};
use super::{InputType, Mma, PtxOptions};
use inkwell::IntPredicate;
use inkwell::values::{FloatValue, IntValue};

/// An A or B operand fragment of `mma.m16n8k16`: four registers of two packed 16-bit
/// elements (an `ldmatrix.x4` result, or P packed from an accumulator).
pub(crate) type Frag<'ctx> = [IntValue<'ctx>; 4];

/// The four f32 values of one m16n8 accumulator held by a thread.
pub(crate) type Acc<'ctx> = [FloatValue<'ctx>; 4];

/// Accumulator values of a warp's rows: `[m-tile][n8 tile]`.
pub(crate) type AccValues<'ctx> = Vec<Vec<Acc<'ctx>>>;

/// Fixed sizes of one kernel.
pub(crate) struct Cfg {
    pub ty: InputType,
    pub d: u32,
    pub dv: u32,
    pub qb: u32,
    pub kvb: u32,
    pub threads: u32,
    /// m16 tiles of query rows per warp. (`threads`: the threads owning query rows; the
    /// warp-specialized kernel's producer warpgroup is not counted.)
    pub mt: usize,
    pub q_in_regs: bool,
    /// The wgmma path (else mma.sync).
    pub wg: bool,
    /// `PtxOptions::lpt_group`: 0, or the (head, batch) slices per group of the
    /// longest-first CTA order (`cta::place`).
    pub lpt_group: u32,
    /// `PtxOptions::float_positions`.
    pub float_positions: bool,
    /// `PtxOptions::pos_bias` (with `float_positions`, not in checked mode).
    pub pos_bias: bool,
    /// `PtxOptions::diag_cse`.
    pub diag_cse: bool,
    /// `PtxOptions::uniform_reads` (not in checked mode).
    pub uniform_reads: bool,
    /// `PtxOptions::q_from_end` (with `ws`; `kernel::build` clears it for block tables):
    /// q block `i` starts at row `i qb - pad`, which may be negative (`cta::place_tile`);
    /// row checks are then unsigned, so rows below 0 count as outside the sequence.
    pub q_from_end: bool,
    /// `PtxOptions::split_tail`: the score's partial blocks that end inside the sequence
    /// have their own path without the kv bounds check (`score::score_and_mask`).
    pub split_tail: bool,
    /// `PtxOptions::pv_wait_late` (the warp-specialized kernel).
    pub pv_wait_late: bool,
    /// `PtxOptions::softmax_ilp` (the warp-specialized kernel).
    pub softmax_ilp: bool,
    /// `PtxOptions::mask_early` (the warp-specialized kernel).
    pub mask_early: bool,
    /// `PtxOptions::kv_cache` = `Paged` on the warp-specialized kernel: K/V tiles by page.
    pub paged_kv: bool,
    /// `PtxOptions::producers` where it applies (`paged_kv`; not with `q_ahead`), else 1.
    pub producers: u32,
    /// `PtxOptions::device_lens` (the warp-specialized kernel): the param that takes each
    /// tile's `Lkv_b - Lq` ([`Ctx::q_shift`]).
    pub device_lens: Option<u32>,
    /// `PtxOptions::doc_tiles` (the warp-specialized kernel): each CTA's tile from the
    /// tile list ([`Ctx::row_end`], [`Ctx::kv_origin`]).
    pub doc_tiles: bool,
    pub q: SmemTile,
    pub k: SmemTile,
    pub v: SmemTile,
}

impl Cfg {
    /// The sizes `opts` asks for, with the shared-memory tiles of [`tiles`].
    pub fn new(opts: &PtxOptions) -> Self {
        let (q, k, v) = tiles(opts);
        Cfg {
            ty: opts.input,
            d: opts.d,
            dv: opts.dv,
            qb: opts.q_block,
            kvb: opts.kv_block,
            threads: opts.compute_threads(),
            mt: opts.m_tiles as usize,
            q_in_regs: opts.q_in_regs && opts.mma == Mma::Sync,
            wg: opts.mma == Mma::Wgmma,
            lpt_group: opts.lpt_group,
            float_positions: opts.float_positions,
            pos_bias: opts.pos_bias && opts.float_positions && !opts.checked,
            diag_cse: opts.diag_cse,
            uniform_reads: opts.uniform_reads && !opts.checked,
            q_from_end: opts.ws && opts.q_from_end,
            split_tail: opts.split_tail,
            pv_wait_late: opts.ws && opts.pv_wait_late,
            softmax_ilp: opts.ws && opts.softmax_ilp,
            mask_early: opts.ws && opts.mask_early,
            paged_kv: opts.ws && opts.kv_cache == super::KvCache::Paged,
            producers: if opts.ws && opts.kv_cache == super::KvCache::Paged && !opts.q_ahead {
                opts.producers as u32
            } else {
                1
            },
            device_lens: if opts.ws { opts.device_lens } else { None },
            doc_tiles: opts.ws && opts.doc_tiles,
            q,
            k,
            v,
        }
    }
}

/// Shared-memory tiles of Q, K and V: Q, one K tile (two with `k_prefetch` or
/// `overlap`, `stages` with `ws`), then V (its buffers follow it: see `kernel::sizes`). On the wgmma path they are in the 128-byte-swizzled slab layout
/// (every tile a multiple of 1024 bytes, so each swizzle atom is 1024-byte aligned).
pub(crate) fn tiles(opts: &PtxOptions) -> (SmemTile, SmemTile, SmemTile) {
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
                * if opts.ws {
                    opts.stages
                } else if opts.k_prefetch || opts.overlap {
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

/// Values every phase of the kernel reads: where this thread and its CTA work.
pub(crate) struct Ctx<'ctx> {
    pub warp: IntValue<'ctx>,
    pub lane: IntValue<'ctx>,
    pub b: IntValue<'ctx>,
    pub h: IntValue<'ctx>,
    /// The first query row of this CTA's q block (negative for the first q block under
    /// [`Cfg::q_from_end`]).
    pub q0: IntValue<'ctx>,
    /// `Lq`: the rows of each Q, O and LSE head (their stride).
    pub lq: IntValue<'ctx>,
    /// The end of this tile's rows: `Lq`, or under [`Cfg::doc_tiles`] its document's
    /// end (`row0 + rows`); rows at or past it are outside ([`row_inside`]).
    pub row_end: IntValue<'ctx>,
    /// Under [`Cfg::doc_tiles`]: the first key of kv block 0 (its document's first row;
    /// [`Ctx::kv_start`]), else `None` (block `j` starts at `j kv_block`).
    pub kv_origin: Option<IntValue<'ctx>>,
    /// The keys of this tile's sequence: `Lkv`, or under [`Cfg::device_lens`] its
    /// `clamp(seq_lens[b], 0, Lkv)`, or under [`Cfg::doc_tiles`] the end of its
    /// document (keys at or past it are outside).
    pub lkv: IntValue<'ctx>,
    /// Under [`Cfg::device_lens`]: `lkv - Lq`, the value of that param for this tile
    /// (its first row's position; [`super::expr::Env::at_tile`], `cta::row_runs`).
    pub q_shift: Option<IntValue<'ctx>>,
    pub scale: FloatValue<'ctx>,
    /// The identity score: logits stay raw scores `s` (no multiply) and the softmax works
    /// in `c2 * s` (one FMA per element), with `c2 = |scale| log2 e` (Q is negated in
    /// shared memory when the scale is negative, so that the max of `s` is the max of
    /// `c2 s`). With a score function the logits are `score(scale s) log2 e` and `c2 = 1`.
    pub raw: bool,
    pub c2: FloatValue<'ctx>,
}

impl<'ctx> Ctx<'ctx> {
    /// The first key of kv block `j` of blocks of `kv_block` keys: `j kv_block`, after
    /// [`Ctx::kv_origin`] where the tile has one.
    pub fn kv_start(&self, g: &Gpu<'ctx>, j: IntValue<'ctx>, kv_block: u32) -> R<IntValue<'ctx>> {
        let kv0 = g.mul(j, g.c32(kv_block as i64))?;
        match self.kv_origin {
            Some(origin) => g.add(origin, kv0),
            None => Ok(kv0),
        }
    }
}

/// The first query row (within the q block) of m-tile `i` of this warp.
pub(crate) fn mtile_row0<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    i: usize,
) -> R<IntValue<'ctx>> {
    g.add(
        g.mul(cx.warp, g.c32(16 * c.mt as i64))?,
        g.c32(16 * i as i64),
    )
}

/// The query row of this thread's first accumulator row in m-tile `i` (the second is 8
/// further): `q0 + mtile_row0 + lane / 4`.
pub(crate) fn thread_row0<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    i: usize,
) -> R<IntValue<'ctx>> {
    g.add(
        g.add(cx.q0, mtile_row0(g, c, cx, i)?)?,
        g.lshr(cx.lane, g.c32(2))?,
    )
}

/// Whether query row `row` is inside the sequence: `row < Ctx::row_end`, unsigned under
/// [`Cfg::q_from_end`] so that rows below 0 are outside too.
pub(crate) fn row_inside<'ctx>(
    g: &Gpu<'ctx>,
    c: &Cfg,
    cx: &Ctx<'ctx>,
    row: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    let pred = if c.q_from_end {
        IntPredicate::ULT
    } else {
        IntPredicate::SLT
    };
    g.icmp(pred, row, cx.row_end)
}

fn vars4<'ctx>(g: &Gpu<'ctx>, init: FloatValue<'ctx>) -> R<[Var<'ctx>; 4]> {
    Ok([
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
        g.var(g.f32, init)?,
    ])
}

/// A register tile of m16n8 f32 accumulators, `[m-tile][n8 tile]`, held in mutable
/// locals (promoted to registers) so that it lives across blocks and branches.
#[derive(Clone)]
pub(crate) struct AccTile<'ctx> {
    pub tiles: Vec<Vec<[Var<'ctx>; 4]>>,
}

impl<'ctx> AccTile<'ctx> {
    /// `mt` m-tiles of `nt` accumulators, every element `init`.
    pub fn new(g: &Gpu<'ctx>, mt: usize, nt: usize, init: f32) -> R<Self> {
        let tiles = (0..mt)
            .map(|_| (0..nt).map(|_| vars4(g, g.cf(init))).collect::<R<_>>())
            .collect::<R<_>>()?;
        Ok(AccTile { tiles })
    }

    /// The current values, `[m-tile][n8 tile]`.
    pub fn values(&self, g: &Gpu<'ctx>) -> R<AccValues<'ctx>> {
        self.tiles
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
                    .collect::<R<_>>()
            })
            .collect()
    }

    /// Stores `vals` (`[m-tile][n8 tile]`, the shape of the tile).
    pub fn store(&self, g: &Gpu<'ctx>, vals: &[Vec<Acc<'ctx>>]) -> R<()> {
        for (oi, ai) in self.tiles.iter().zip(vals) {
            for (x, v) in oi.iter().zip(ai) {
                for i in 0..4 {
                    g.set(&x[i], v[i])?;
                }
            }
        }
        Ok(())
    }

    /// The values of m-tile 0, flat in accumulator order (a wgmma accumulator).
    pub fn flat(&self, g: &Gpu<'ctx>) -> R<Vec<FloatValue<'ctx>>> {
        let mut v = Vec::with_capacity(self.tiles[0].len() * 4);
        for x in &self.tiles[0] {
            for e in x {
                v.push(g.getf(e)?);
            }
        }
        Ok(v)
    }

    /// Stores a flat wgmma accumulator into m-tile 0.
    pub fn store_flat(&self, g: &Gpu<'ctx>, vals: &[FloatValue<'ctx>]) -> R<()> {
        for (x, v) in self.tiles[0].iter().zip(vals.chunks(4)) {
            for i in 0..4 {
                g.set(&x[i], v[i])?;
            }
        }
        Ok(())
    }

    /// Multiplies each row half `hr` of m-tile `i` by `factor[i][hr]`.
    pub fn scale_rows(&self, g: &Gpu<'ctx>, factor: &RowState<'ctx>) -> R<()> {
        for (oi, ai) in self.tiles.iter().zip(&factor.rows) {
            for acc in oi {
                for (e, v) in acc.iter().enumerate() {
                    let a = g.getf(&ai[e / 2])?;
                    g.set(v, g.fmul(g.getf(v)?, a)?)?;
                }
            }
        }
        Ok(())
    }
}

/// One f32 per accumulator row of this thread: `[m-tile][row half]` (rows `lane / 4`
/// and `lane / 4 + 8`), e.g. the running max or sum of the online softmax.
#[derive(Clone)]
pub(crate) struct RowState<'ctx> {
    pub rows: Vec<[Var<'ctx>; 2]>,
}

impl<'ctx> RowState<'ctx> {
    pub fn new(g: &Gpu<'ctx>, mt: usize, init: f32) -> R<Self> {
        let rows = (0..mt)
            .map(|_| Ok([g.var(g.f32, g.cf(init))?, g.var(g.f32, g.cf(init))?]))
            .collect::<R<_>>()?;
        Ok(RowState { rows })
    }
}

/// `[[x; 4]]` of one m-tile from a flat wgmma accumulator (m16n8 order per n8 chunk).
pub(crate) fn split4<'ctx>(acc: &[FloatValue<'ctx>]) -> AccValues<'ctx> {
    vec![acc.chunks(4).map(|x| [x[0], x[1], x[2], x[3]]).collect()]
}

/// A fragments held in mutable locals (P of the previous block on the overlapped wgmma
/// path): one [`Frag`] per 16 kv columns.
#[derive(Clone)]
pub(crate) struct FragRegs<'ctx> {
    pub frags: Vec<[Var<'ctx>; 4]>,
}

impl<'ctx> FragRegs<'ctx> {
    /// `n` fragments, every register zero.
    pub fn zeros(g: &Gpu<'ctx>, n: usize) -> R<Self> {
        let zero = g.c32(0);
        let frags = (0..n)
            .map(|_| {
                Ok([
                    g.var(g.i32, zero)?,
                    g.var(g.i32, zero)?,
                    g.var(g.i32, zero)?,
                    g.var(g.i32, zero)?,
                ])
            })
            .collect::<R<_>>()?;
        Ok(FragRegs { frags })
    }

    pub fn values(&self, g: &Gpu<'ctx>) -> R<Vec<Frag<'ctx>>> {
        self.frags
            .iter()
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

    pub fn store(&self, g: &Gpu<'ctx>, vals: &[Frag<'ctx>]) -> R<()> {
        for (pv, pf) in self.frags.iter().zip(vals) {
            for (v, x) in pv.iter().zip(pf) {
                g.set(v, *x)?;
            }
        }
        Ok(())
    }
}
