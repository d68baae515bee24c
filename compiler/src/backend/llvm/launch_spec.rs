//! The launch description of a generated kernel: [`KernelSpec`] (kind, entry, parameters
//! in launch order, grid rule as [`GridDim`]s, threads, shared memory, tiles, kv source).
//!
//! In: nothing (types only). Out: what every generator fills in (`spec.rs`, `backward.rs`,
//! ...) and what a runtime launches by.

use super::{KernelParam, PtxOptions};
use crate::analysis::linear::ClosedForm;
use crate::backend::KernelKind;
use crate::plan::KvBounds;
use std::fmt;

/// One axis of a launch grid, named by what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridDim {
    /// 1.
    One,
    /// `ceil(Lq / q_block)`.
    QBlocks,
    /// `ceil(Lq / (2 q_block))`: the backward's dQ kernel on pairs of q tiles
    /// (`PtxOptions::bwd_dq_pair`).
    QBlockPairs,
    /// Persistent CTAs: `min(QBlocks x Heads x Batches, SMs of the device)` (the
    /// persistent warp-specialized forward, `PtxOptions::persistent`).
    Persistent,
    /// The tiles of a document-tiled forward's list (`PtxOptions::doc_tiles`, one CTA
    /// per entry of `KernelParam::DocTiles`).
    DocTiles,
    /// `Hq`.
    Heads,
    /// `B`.
    Batches,
    /// Block-table maps over heads: `Hq` when the mask reads `h`, else 1.
    MapHeads,
    /// Block-table maps over batches: `B` when the mask reads `b`, else 1.
    MapBatches,
    /// `ceil(Lkv / kv_block)`.
    KvBlocks,
    /// `max(ceil(Lq / q_block), ceil(Lkv / kv_block))`: the backward-ranges kernel, one
    /// CTA per q block and kv block index (`backward/ranges.rs`).
    TableBlocks,
    /// Backward-ranges maps over kv heads: `Hkv` when the mask reads `h`, else 1.
    MapKvHeads,
    /// Persistent CTAs of the fused backward: `min(KvBlocks x KvHeads x Batches, SMs of
    /// the device)` (`PtxOptions::bwd_persist`).
    KvPersistent,
    /// `Hkv`.
    KvHeads,
    /// `ceil(B Hq Lq / rows per CTA)` of the backward's pre kernel.
    PreRows,
    /// `Lq` (the decode combine kernel: one CTA per query row).
    QRows,
    /// The decode kernel's splits of each sequence's reachable positions.
    Splits,
    /// The decode kernel's CTAs along the splits when it steals work
    /// (`decode_mma::COPY_STEAL`): its static splits, fewer than [`GridDim::Splits`].
    SplitCtas,
    /// `Hkv * row_groups` (the decode kernel: kv heads times row groups per kv head).
    KvHeadRowGroups,
}

/// How to launch a generated kernel, and what it was generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub kind: KernelKind,
    pub entry: String,
    pub options: PtxOptions,
    pub q_block: u32,
    pub kv_block: u32,
    /// Threads per CTA (block = (threads, 1, 1)).
    pub threads: u32,
    /// Dynamic shared memory per CTA in bytes.
    pub smem_bytes: u32,
    /// The kernel's parameters in launch order.
    pub params: Vec<KernelParam>,
    /// The grid: (x, y, z).
    pub grid: [GridDim; 3],
    /// Where an attention kernel reads its kv blocks from: the closed form (computed in
    /// the kernel; the runtime passes offsets and builds no block maps) or the block
    /// table (`Table` for a block-table builder, which writes one).
    pub kv_bounds: KvBounds,
    /// Block-table builders only: the closed form of the mask's linear conjuncts
    /// (`Plan::table_skip`) whose per-q-block kv range the kernel computes to classify
    /// the tiles outside it empty without evaluating them (one [`KernelParam::KvOffset`]
    /// per constraint, and [`KernelParam::KvAllPartial`] to skip nothing); `None` for
    /// other kinds and builders that evaluate every tile.
    pub table_skip: Option<ClosedForm>,
}

impl KernelSpec {
    /// `grid = (x, y, z), block = (threads, 1, 1)` in words.
    pub fn launch_text(&self) -> String {
        let [x, y, z] = self.grid;
        format!("grid = ({x}, {y}, {z}), block = ({}, 1, 1)", self.threads)
    }
}

impl fmt::Display for GridDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GridDim::One => "1",
            GridDim::QBlocks => "NumQBlocks",
            GridDim::QBlockPairs => "ceil(NumQBlocks / 2)",
            GridDim::Persistent => "min(NumQBlocks x Hq x B, SMs)",
            GridDim::DocTiles => "document tiles",
            GridDim::Heads => "Hq",
            GridDim::Batches => "B",
            GridDim::MapHeads => "maps over h",
            GridDim::MapBatches => "maps over b",
            GridDim::KvBlocks => "NumKvBlocks",
            GridDim::TableBlocks => "max(NumQBlocks, NumKvBlocks)",
            GridDim::MapKvHeads => "maps over kv heads",
            GridDim::KvPersistent => "min(NumKvBlocks x Hkv x B, SMs)",
            GridDim::KvHeads => "Hkv",
            GridDim::PreRows => "ceil(B Hq Lq / rows per CTA)",
            GridDim::QRows => "Lq",
            GridDim::Splits => "splits",
            GridDim::SplitCtas => "static splits",
            GridDim::KvHeadRowGroups => "Hkv x row groups",
        })
    }
}
