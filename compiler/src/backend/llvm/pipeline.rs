//! The K/V pipeline of a kernel that streams kv blocks through shared memory: where the
//! loop is in the row's runs of kv blocks ([`KvCursor`], [`KvPos`]), the step to the next
//! block (written once, [`Step`]), the `cp.async` stages that fill the K and V tiles
//! ([`KvStream`]), and the shared-memory chores around them (the async-proxy fence, Q
//! negation, zeroing a buffer).
//!
//! In: the runs of this CTA's row (`bounds.rs`: closed form or block table), the K/V
//! head bases in global memory and the tiles of [`Cfg`]. Out: IR that issues the copies
//! and moves the cursor; the kernel decides when to wait and where the barriers go.

use super::LlvmError;
use super::bounds::RowRuns;
use super::gpu::{Gpu, R, SmemTile, Var};
use super::tile::Cfg;
use inkwell::IntPredicate;
use inkwell::values::{BasicValue, IntValue, PointerValue};

/// Where the kv loop is: kv block `j` of run `r` of the row; the run ends before block
/// `end` and is `full` (non-zero) when its blocks need no mask.
#[derive(Clone, Copy)]
pub(crate) struct KvPos<'ctx> {
    pub j: IntValue<'ctx>,
    pub end: IntValue<'ctx>,
    pub full: IntValue<'ctx>,
    pub r: IntValue<'ctx>,
}

impl<'ctx> KvPos<'ctx> {
    /// The step to the block after this one: `j + 1` inside the run, else the first
    /// block of run `r + 1` if the row has one.
    pub fn step(&self, g: &Gpu<'ctx>, runs: &RowRuns<'ctx>) -> R<Step<'ctx>> {
        let j1 = g.add(self.j, g.c32(1))?;
        let in_run = g.icmp(IntPredicate::ULT, j1, self.end)?;
        let r1 = g.add(self.r, g.c32(1))?;
        let more_runs = g.icmp(IntPredicate::ULT, r1, runs.end)?;
        Ok(Step {
            from: *self,
            j1,
            in_run,
            r1,
            more_runs,
        })
    }
}

/// The step from one kv block to the next ([`KvPos::step`]).
#[derive(Clone, Copy)]
pub(crate) struct Step<'ctx> {
    from: KvPos<'ctx>,
    j1: IntValue<'ctx>,
    /// `j + 1` is still in the run.
    in_run: IntValue<'ctx>,
    r1: IntValue<'ctx>,
    /// The row has a run after `r`.
    more_runs: IntValue<'ctx>,
}

impl<'ctx> Step<'ctx> {
    /// Whether there is a next block.
    pub fn exists(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        g.or(self.in_run, self.more_runs)
    }

    /// The whole next position and whether it exists. The run read is always inside the
    /// row (run `r` again when there is no next run), so it can be read unconditionally.
    pub fn next(&self, g: &Gpu<'ctx>, runs: &RowRuns<'ctx>) -> R<(KvPos<'ctx>, IntValue<'ctx>)> {
        let Step {
            from,
            j1,
            in_run,
            r1,
            more_runs,
        } = *self;
        let (nj, nend, nfull) = runs.load(g, g.selecti(more_runs, r1, from.r)?)?;
        Ok((
            KvPos {
                j: g.selecti(in_run, j1, nj)?,
                end: g.selecti(in_run, from.end, nend)?,
                full: g.selecti(in_run, from.full, nfull)?,
                r: g.selecti(in_run, from.r, r1)?,
            },
            self.exists(g)?,
        ))
    }

    /// Only the next block's index (meaningful when [`Step::exists`]), reading the next
    /// run's start only when the step leaves the run; `scratch` is an i32 local.
    pub fn next_block(
        &self,
        g: &Gpu<'ctx>,
        runs: &RowRuns<'ctx>,
        scratch: &Var<'ctx>,
    ) -> R<IntValue<'ctx>> {
        g.set(scratch, self.j1)?;
        g.if_then(
            g.and(g.xor(self.in_run, g.cbool(true))?, self.more_runs)?,
            || {
                let (nj, _, _) = runs.load(g, self.r1)?;
                g.set(scratch, nj)
            },
        )?;
        g.geti(scratch)
    }
}

/// The loop's position in mutable locals (it changes every iteration).
pub(crate) struct KvCursor<'ctx> {
    j: Var<'ctx>,
    end: Var<'ctx>,
    full: Var<'ctx>,
    r: Var<'ctx>,
}

impl<'ctx> KvCursor<'ctx> {
    /// A cursor at run `r_beg` (its block set by [`KvCursor::start`]).
    pub fn new(g: &Gpu<'ctx>, r_beg: IntValue<'ctx>) -> R<Self> {
        Ok(KvCursor {
            j: g.var(g.i32, g.c32(0))?,
            end: g.var(g.i32, g.c32(0))?,
            full: g.var(g.i32, g.c32(0))?,
            r: g.var(g.i32, r_beg)?,
        })
    }

    /// Moves to the first block of the row's first run (there must be one) and returns it.
    pub fn start(&self, g: &Gpu<'ctx>, runs: &RowRuns<'ctx>) -> R<IntValue<'ctx>> {
        let (j0, e0, f0) = runs.load(g, runs.beg)?;
        g.set(&self.j, j0)?;
        g.set(&self.end, e0)?;
        g.set(&self.full, f0)?;
        Ok(j0)
    }

    pub fn get(&self, g: &Gpu<'ctx>) -> R<KvPos<'ctx>> {
        Ok(KvPos {
            j: g.geti(&self.j)?,
            end: g.geti(&self.end)?,
            full: g.geti(&self.full)?,
            r: g.geti(&self.r)?,
        })
    }

    pub fn set(&self, g: &Gpu<'ctx>, p: &KvPos<'ctx>) -> R<()> {
        g.set(&self.j, p.j)?;
        g.set(&self.end, p.end)?;
        g.set(&self.full, p.full)?;
        g.set(&self.r, p.r)
    }
}

/// The `cp.async` stages of K and V: kv block `j` of this CTA's kv head into a K or V
/// tile (rows past `Lkv` zero-filled), every thread of the CTA taking part. A buffer
/// argument is a byte offset from the tile (0, or one tile for the second buffer).
pub(crate) struct KvStream<'ctx> {
    pub tid: IntValue<'ctx>,
    pub threads: u32,
    pub kv_block: u32,
    pub lkv: IntValue<'ctx>,
    pub k: SmemTile,
    pub v: SmemTile,
    /// Row 0 of this CTA's K and V heads in global memory.
    pub kbase: PointerValue<'ctx>,
    pub vbase: PointerValue<'ctx>,
}

impl<'ctx> KvStream<'ctx> {
    /// The first kv position of block `j`.
    pub fn kv0(&self, g: &Gpu<'ctx>, j: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        g.mul(j, g.c32(self.kv_block as i64))
    }

    /// Starts copying K of block `j` into the K buffer `buf`.
    pub fn load_k(&self, g: &Gpu<'ctx>, j: IntValue<'ctx>, buf: IntValue<'ctx>) -> R<()> {
        let kv0 = self.kv0(g, j)?;
        self.k.load_async(
            g,
            self.tid,
            self.threads,
            self.kbase,
            kv0,
            g.sub(self.lkv, kv0)?,
            buf,
        )
    }

    /// Starts copying V of the block starting at kv position `kv0` into the V buffer `buf`.
    pub fn load_v(&self, g: &Gpu<'ctx>, kv0: IntValue<'ctx>, buf: IntValue<'ctx>) -> R<()> {
        self.v.load_async(
            g,
            self.tid,
            self.threads,
            self.vbase,
            kv0,
            g.sub(self.lkv, kv0)?,
            buf,
        )
    }
}

/// On the wgmma path: makes this thread's shared-memory writes (cp.async, the Q negation)
/// visible to the tensor cores' async-proxy reads after the barrier that follows.
pub(crate) fn proxy_fence(g: &Gpu<'_>, c: &Cfg) -> R<()> {
    if c.wg { g.fence_proxy_async() } else { Ok(()) }
}

/// Negates (flips the sign bit of) the 16-byte chunks of `tile` that this thread loaded
/// with `load_async`.
pub(crate) fn negate_own_chunks<'ctx>(
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
pub(crate) fn zero_own_chunks<'ctx>(
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
