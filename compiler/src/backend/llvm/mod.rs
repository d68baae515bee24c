//! The NVIDIA backend: the kernels of an attention (the FlashAttention-2 class forward
//! kernel, the block-table builder), built as LLVM IR with inkwell and emitted as PTX by
//! LLVM's NVPTX target.
//!
//! In: a [`crate::plan::Plan`] (the verified program and every analysis result), a
//! [`crate::backend::KernelKind`] and [`PtxOptions`] (arch, head dims, input type, tile
//! sizes, checked mode). Out: a [`KernelSpec`] ([`spec()`]: entry name, parameters in
//! launch order ([`KernelParam`]), grid rule ([`GridDim`]), threads per CTA, dynamic
//! shared memory, tiles, kv source) or a [`PtxKernel`] ([`generate`]: the spec with PTX
//! and LLVM IR text). The same input always gives byte-identical text.
//!
//! Kernel (see `kernel.rs`): one CTA per (q block, head, batch); each warp owns 16 or 32
//! query rows (`m_tiles`); K/V tiles stream through swizzled shared memory with `cp.async` (V of block j
//! loads while S = Q K^T is computed, K of block j+1 while O += P V is); f32
//! accumulation; exp2-based online softmax; P stays in registers. Two matrix paths
//! ([`Mma`]): `mma.sync` m16n8k16 with `ldmatrix` (sm_80 and later), or Hopper
//! `wgmma.mma_async` per warpgroup of 64 rows with Q/K/V in 128-byte-swizzled shared
//! memory (PTX target `sm_90a`; the default on sm_90 at D/Dv 64 and 128), the latter
//! also warp-specialized (`hopper.rs`, [`PtxOptions::ws`], the default at D or Dv 128):
//! a TMA producer warpgroup, an mbarrier K/V ring and two consumer warpgroups in
//! ping-pong.
//! kv blocks come, per q block, from the closed form of the mask computed in the kernel
//! (no mask, causal, sliding window, bands: at most three runs partial/full/partial, no
//! table) or else from the block table ((begin, end) pairs into runs of full/partial
//! blocks per q block), built on the host or, for masks over captured tensors, on the GPU
//! by the block-table kernel (`blocktable.rs`); [`KernelSpec::kv_bounds`] records which
//! (see `bounds.rs`). The mask is evaluated only in partial blocks and in the block
//! holding the end of the sequence.

pub mod backward;
pub mod blocktable;
pub mod bounds;
mod cta;
pub mod decode;
pub mod decode_mma;
mod decode_ranges;
mod expr;
mod gpu;
mod hopper;
mod kernel;
pub mod launch_spec;
mod matmul;
mod pipeline;
pub mod samples;
mod score;
mod softmax;
pub mod spec;
mod tile;
mod uniform;

pub use crate::plan::KvBounds;
pub use launch_spec::{GridDim, KernelSpec};
pub use spec::{generate, spec};

use crate::ir::Program;
use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple,
};
use std::fmt;

/// GPU architecture to generate for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Sm80,
    Sm90,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }
    fn ptx_feature(self) -> &'static str {
        match self {
            Arch::Sm80 => "+ptx78",
            Arch::Sm90 => "+ptx80",
        }
    }
    /// Parses `sm_80` / `sm_90` (also `sm80`, `80`).
    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim_start_matches("sm_").trim_start_matches("sm") {
            "80" | "86" | "89" => Some(Arch::Sm80),
            "90" | "90a" => Some(Arch::Sm90),
            _ => None,
        }
    }
    /// The arch to use for a device of compute capability (major, minor).
    pub fn for_capability(major: i32, _minor: i32) -> Option<Arch> {
        match major {
            8 => Some(Arch::Sm80),
            m if m >= 9 => Some(Arch::Sm90),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The layout of the K/V cache a decode kernel reads ([`KernelKind::Decode`](crate::backend::KernelKind::Decode);
/// other kinds ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCache {
    /// `[B, Hkv, Lkv_max, D]`.
    Contiguous,
    /// `[num_pages, page_size, Hkv, D]` through a page table.
    Paged,
}

/// The tensor-core instruction family of the two matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mma {
    /// `mma.sync` m16n8k16 per warp, operands through `ldmatrix` (sm_80 and later).
    Sync,
    /// Hopper `wgmma.mma_async` per warpgroup of 4 warps (64 query rows each): S = Q K^T
    /// with Q and K read by the tensor cores from 128-byte-swizzled shared memory, O += P V
    /// with P from registers and V from shared memory (transposed by the instruction).
    /// Needs `Arch::Sm90` (the PTX targets `sm_90a`), head dims that are multiples of 64
    /// up to 256 and one m-tile per warp.
    Wgmma,
}

/// How the GPU backward computes dQ (`backward.rs`, `backward/fused.rs`; other kinds
/// ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BwdDq {
    /// A second kernel over q blocks recomputes S and dP (7 matrix products per tile).
    Separate,
    /// The dK/dV kernel also computes `dS K` per tile (5 products) and adds it into an
    /// f32 workspace in a fixed order per q block (a semaphore per (b, h, q block));
    /// a small kernel converts the workspace to dQ. Deterministic.
    Ordered,
    /// As `Ordered` without the semaphore wait: plain f32 reductions in whatever order
    /// the CTAs reach them. Not deterministic (run-to-run differences in the last bits).
    Atomic,
    /// As `Ordered` (the same order, deterministic), but the math warpgroups only write
    /// each dQ part into shared memory (two slots) and go on; a writer warpgroup waits
    /// for the tile's turn and adds the part with one bulk reduction (TMA,
    /// `cp.reduce.async.bulk`), so the wait no longer stalls the products.
    OrderedBulk,
}

/// Element type of Q, K, V and O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputType {
    Bf16,
    F16,
}

impl InputType {
    pub fn name(self) -> &'static str {
        match self {
            InputType::Bf16 => "bf16",
            InputType::F16 => "f16",
        }
    }
}

/// Everything that selects a kernel besides the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtxOptions {
    pub arch: Arch,
    /// Head dim of Q and K.
    pub d: u32,
    /// Head dim of V and O.
    pub dv: u32,
    pub input: InputType,
    /// Out-of-range tensor reads are recorded into the error words (else: indices clamped).
    pub checked: bool,
    /// Query rows per CTA (16 per warp): 64 or 128. The decode kernels: rows (query heads x
    /// new rows of one kv head) per CTA, 1..=16 (`decode::DecodeOptions::ptx_options`).
    pub q_block: u32,
    /// kv positions per tile: 32, 64 or 128.
    pub kv_block: u32,
    /// m16 tiles of query rows per warp (1 or 2): each warp owns `16 * m_tiles` rows, so
    /// every K/V fragment read from shared memory feeds `m_tiles` times as many mma.
    pub m_tiles: u32,
    /// Q fragments stay in registers for the whole kv loop (else re-read from shared
    /// memory with `ldmatrix` each block, which frees `m_tiles * d / 4` registers).
    pub q_in_regs: bool,
    /// K is double-buffered in shared memory and the copy of K[j+1] starts at the top of
    /// iteration j (a whole iteration ahead), instead of after the softmax of block j.
    pub k_prefetch: bool,
    /// The wait for V\[j\] and the barrier before P V come before the exponentials of the
    /// softmax (after the max and the rescale), so that the `ex2` and the P V `mma.sync`
    /// share one basic block and ptxas can interleave them. Applies to programs without a
    /// score function only. Measured on an H200 (bf16, D128 128x64x2): dense 383 TFLOP/s
    /// against 375 with the sync after the exponentials, causal 336-338 against 320, D64
    /// 128x64x2 dense 327 against 320-326; but ALiBi + causal (a score function) 2.06 ms
    /// against 1.87.
    pub early_sync: bool,
    /// Always read kv blocks from the block table, even where the mask has a closed
    /// form (for tests of the table path and comparisons); off by default.
    pub kv_table: bool,
    /// The matrix instruction family (`Mma::Wgmma` only on sm_90).
    pub mma: Mma,
    /// wgmma only: software pipelining inside each warpgroup. Iteration j issues
    /// S(j) = Q K\[j\]^T and then O += P(j-1) V\[j-1\] (both asynchronous), waits for S(j)
    /// only, computes the softmax of block j while the tensor cores run the P V of block
    /// j-1, and rescales O after that completes; K and V are both double-buffered (the
    /// copies of K\[next\] and V\[j\] start at the top of iteration j). `k_prefetch` is
    /// ignored (always on). The fused backward (`backward/fused.rs`, `bwd_dq` not
    /// `Separate`): each product issued as soon as its operands exist (Sᵀ and dPᵀ before the
    /// next visit's loads, P computed while dPᵀ runs, dV and dK before the barrier that
    /// publishes dS) and, with `OrderedBulk`, one writer thread per dQ slot; off by
    /// default there (measured 0.95-1.02x, `backward/fused.rs`).
    pub overlap: bool,
    /// CTAs per SM that the register allocation must allow (`.minnctapersm`, which caps
    /// registers per thread); 0 leaves it to ptxas.
    pub min_ctas: u32,
    /// wgmma only: the warp-specialized schedule (`hopper.rs`): a producer warpgroup
    /// loads Q, K and V with TMA (`cp.async.bulk.tensor`, host-made tensor maps) into a
    /// ring of `stages` K/V buffers whose fill and release are mbarriers, and two consumer
    /// warpgroups (64 query rows each, registers raised with `setmaxnreg`) run the
    /// overlapped S(j) / P V(j-1) loop in ping-pong (named barriers order their wgmma
    /// issue, so one's softmax runs under the other's products). Needs q_block 128; one
    /// CTA per SM. `overlap`, `k_prefetch` and `min_ctas` are ignored.
    pub ws: bool,
    /// With `ws`: K/V ring stages (2..=4).
    pub stages: u32,
    /// The forward's CTA order: 0 (the default) maps the grid's x to q blocks, heavy
    /// (late) ones first, within each (head, batch); `n` > 0 orders all CTAs longest
    /// first over groups of `n` (head, batch) slices (`cta::lpt_order`: FA3's L2-aware
    /// LPT order, for causal masks). Off in `new`; the runtime turns it on (groups of 8)
    /// for the warp-specialized kernel when the closed-form kv range grows with q
    /// (`KvBounds::work_grows_with_q`: causal-type masks, measured 3-5% faster there).
    pub lpt_group: u32,
    /// With `ws`: persistent CTAs (`hopper.rs`): the grid is `min(tiles, SMs)` CTAs
    /// ([`GridDim::Persistent`]) and each walks its (q block, head, batch) tiles in
    /// rounds of `grid` tiles (of the order of [`Self::lpt_group`], taken as a snake:
    /// `hopper::for_each_tile`), so that the producer loads the
    /// next tile's Q, K and V while the consumers finish the last P V and store O
    /// (the prologue and epilogue of one tile hide under the other's products). Needs
    /// [`KernelParam::Batch`]. Off in `new`; [`Self::for_binding`] turns it on where every
    /// tile has the same short work (bands at D128, no mask on the D64 three-consumer
    /// kernel), on dense D128 with [`Self::tail_split`], and, with
    /// [`Self::dynamic_tiles`], where the tiles' work differs.
    pub persistent: bool,
    /// With `persistent`: each CTA takes its next tile from a global counter
    /// ([`KernelParam::TileCounter`], an atomic add by the producer, broadcast to the
    /// consumers through shared memory under the `q_full` mbarrier) instead of the static
    /// snake rounds, so tiles of unequal work (causal-type masks in the LPT order of
    /// [`Self::lpt_group`]) go to whichever CTA is free first, as FA3's dynamic
    /// scheduler does. The counter resets itself (the last CTA to finish zeroes it). Off
    /// in `new`; [`Self::for_binding`] turns it on for causal-type ranges and block
    /// tables at D, Dv <= 128.
    pub dynamic_tiles: bool,
    /// With `persistent` (static rounds, not [`Self::dynamic_tiles`]) and a closed-form
    /// kv range: the launch's last tiles are split along kv across every CTA
    /// (`hopper.rs`, "The last tiles split along kv"), so that no SM idles through a
    /// last round of a few whole tiles (B1 Hq32 Hkv8 L16384: 4096 tiles on 132 SMs are
    /// 31 rounds and 4 tiles). The tiles of the last `R + G` (`R` = tiles mod `G`, `G` the
    /// grid; none when `R` is 0) are cut into pieces of equal kv blocks, one contiguous
    /// range per CTA; a piece that is not a whole tile stores its O, m and l (f32, in the
    /// accumulators' order) into a workspace ([`KernelParam::TailWork`], two slots per
    /// CTA: [`Self::tail_work_floats`]) and counts its blocks in a per-tile word of
    /// [`KernelParam::TileCounter`] (after words 0 and 1); the CTA whose count completes
    /// the tile merges every piece of the tile in a fixed order (deterministic) and writes
    /// O and the LSE, then zeroes the word for the next launch. Block tables ignore it.
    /// On a band (a range bounded below: a sliding window) a tile's units are counted
    /// from its own first kv block, as many per tile as the band's widest span, so that
    /// the pieces share the blocks a band visits. Off in `new`; [`Self::for_binding`]
    /// turns it on where it was measured faster (session 18: dense D128 and D64);
    /// `ATTNC_FWD_TAIL=1|0` with `ATTNC_FWD_PERSISTENT=1` overrides it in the runtime.
    pub tail_split: bool,
    /// With `ws` and a closed-form kv range: the q blocks end at `Lq` instead of starting
    /// at 0 (block `i` covers rows `i q_block - pad ..`, `pad = NumQBlocks q_block - Lq`),
    /// so the partial q block is the first one, not the last. Under a causal-type mask
    /// the first is the lightest (one kv block) and the last the heaviest: at B4 H16
    /// L4096 D64 with q blocks of 192 (pad 128) the last block carried every kv block
    /// for 64 rows, ~5% of the launch's products. Rows below 0 are read as zeros by TMA,
    /// masked like rows past `Lq` and never stored. Block tables ignore it (their rows
    /// are q blocks from 0). Off in `new`; [`Self::for_binding`] turns it on where the kv
    /// range grows with q, at D, Dv <= 128. Measured on an H200 (bf16, `attnc bench`,
    /// one call, two runs each): causal B4 H16 L4096 D64 0.315 / 0.316 ms against 0.329 /
    /// 0.332 without it (436 TFLOP/s against 416).
    pub q_from_end: bool,
    /// The forward's score on partial kv blocks (those the mask cuts) that end inside
    /// the sequence takes its own path, without the kv bounds check of the tail block:
    /// per element one compare and one select fewer (`score::score_and_mask`; the
    /// diagonal blocks of causal masks), for one more copy of the score's element code.
    /// Off in `new`; [`Self::for_binding`] turns it on for programs without a score
    /// function on the warp-specialized kernel with two consumer warpgroups at D, Dv <=
    /// 128. Measured on an H200 (bf16, `attnc bench`, one call): causal D128 0.803 ms
    /// against 0.827 without it; ALiBi + causal D128 1.083 against 1.023 and at the GQA
    /// shape 4.058 against 3.875 (min rule), D64 0.459 / 0.458: off with a score.
    pub split_tail: bool,
    /// With `persistent`: two Q buffers (each with its own `q_full` / `q_empty` mbarriers
    /// and, with [`Self::dynamic_tiles`], tile slot), used in turn by a CTA's tiles, so
    /// that the producer copies the next tile's Q as soon as it has issued this tile's
    /// last K and V, instead of waiting until the consumers have finished every S of this
    /// tile; the next tile's first product then does not wait for Q's copy. For short
    /// tiles (bands, D64). One more Q tile of shared memory. Off in `new`;
    /// [`Self::for_binding`] turns it on wherever the CTAs are persistent.
    pub q_double: bool,
    /// With `dynamic_tiles`: the next tile's first S = Q Kᵀ is issued together with this
    /// tile's last P V (one wgmma issue, as inside a tile); once both are complete, its
    /// score and softmax run before this tile's epilogue (`hopper.rs`,
    /// `Consumer::cross_tile`), so a CTA's tiles do not each start with an S issued
    /// alone. For short tiles (block tables, documents). Falls back to the last P V alone
    /// when the next tile has no blocks, is the end, or Q is negated in shared memory (a
    /// negative scale on the raw-score path). Off in `new`: a first version, with the
    /// next tile's softmax under the P V, ran 1.14x (documents) to 1.40x (causal) slower
    /// on an H200 (the driver's ptxas serialized its wgmma, C7513); this one is clean
    /// under ptxas 13.0 and 13.5 but not yet timed.
    pub cross_tile: bool,
    /// With `dynamic_tiles`: the producer takes the next tile from the counter when it
    /// starts a tile instead of after the tile's copies (`hopper.rs`, `produce_dynamic`),
    /// so the add's latency hides under the copies and the next tile's Q is copied right
    /// after this tile's last K and V (what [`Self::cross_tile`] waits for). Each CTA so
    /// holds one tile ahead. Off in `new`.
    pub early_claim: bool,
    /// With `dynamic_tiles` and `q_double`: the producer claims the next tile when it
    /// starts a tile and copies that tile's Q (into the other Q buffer, with its index in
    /// that buffer's slot) right after this tile's first K and V, instead of after this
    /// tile's last ones (`hopper.rs`, `produce_ahead`), so the next tile's Q is in shared
    /// memory long before this tile's epilogue (FlashAttention-3's producer loads the next
    /// Q while the consumers finish a tile). Off in `new` and `for_binding`: measured no
    /// faster on an H200 at B2 H16 L8192 D128 causal (alternated in one process, 0.8053
    /// against 0.8046 ms, 2 of 12 rounds won), ~1% faster in the steady rounds at B1 Hq32
    /// Hkv8 L16384 (docs/performance.md, "Session 19 (fwd19)").
    pub q_ahead: bool,
    /// With `dynamic_tiles` on the two-consumer kernel at Dv 128 (q blocks of 128, two
    /// K/V stages): each consumer warpgroup writes its 64 rows of O through shared memory
    /// (`stmatrix` into a 32 KB staging buffer in the 128-byte swizzle, `hopper.rs`,
    /// `epilogue_tma`) and one of its threads stores them with two TMA copies
    /// (`cp.async.bulk.tensor` through [`KernelParam::TmaO`], rows outside `0..Lq` not
    /// written), instead of 32 four-byte global stores per thread; the copy runs while the
    /// warpgroup starts its next tile (FlashAttention-3's epilogue). The LSE is stored as
    /// before. Under [`Self::q_from_end`] a warpgroup whose 64 rows start above row 0 (the
    /// first q block) copies its rows inside from the buffer with 16-byte stores: TMA
    /// stores at negative rows raised an illegal instruction on an H200 (loads there read
    /// zeros). Off in `new`; [`Self::for_binding`] turns it on for causal-type closed
    /// forms without a score or with a position bias (ALiBi) at D = Dv = 128 (H200,
    /// session 20: causal B2 H16 L8192 D128 0.950x the time, B1 Hq32 Hkv8 L16384 0.963x,
    /// alternated in one process; ALiBi + causal 1.03x / 1.02x TFLOP/s).
    pub o_tma: bool,
    /// With `ws`: the consumers' wait for P V(j-1) comes after the exponentials of
    /// block j in the PTX's block order, not only in the instruction order: the wait, the
    /// V release and O's rescale sit in the two arms of the rescale branch, and P(j) is
    /// packed to bf16/f16 after them (`hopper.rs`, `Consumer::run`). ptxas schedules
    /// within a basic block and hoisted the wait (`WARPGROUP.DEPBAR`) above every `ex2`
    /// of the default kernel, so the exponentials waited for the P V. Off in `new`:
    /// measured no faster on an H200 (B2 H16 L8192 D128, `gpu_bench`, one call: dense
    /// 709.6 / 708.4 TFLOP/s against 707.7 / 705.5, causal 0.823 ms against 0.815; the
    /// P V completes before the exponentials would end anyway).
    pub pv_wait_late: bool,
    /// The online softmax's row max and row sum over four independent chains per row
    /// (FlashAttention-4's `fmax_reduce` on sm_90) instead of one, so that the
    /// reductions' fixed-latency dependencies overlap (`softmax.rs`, warp-specialized
    /// kernel only). The sum's order changes (f32 rounding only). Off in `new`: measured
    /// no faster on an H200 (dense D128 705.3 / 708.1 TFLOP/s against 707.7 / 705.5,
    /// causal 0.820 ms against 0.815; with `pv_wait_late` 0.830, documents 0.247 / 0.242).
    pub softmax_ilp: bool,
    /// With `ws`: a partial block's mask is evaluated before the consumers wait for its
    /// S (while S and the previous P V run on the tensor cores) into keep bits, one per
    /// element of the thread's S fragment (`score::mask_bits`); after the wait each element
    /// only tests its bit. The mask's tensor reads (a document mask's ids: two row and 32
    /// column reads per thread and block) and compares leave the softmax's critical path.
    /// Programs without a mask and checked mode are unchanged. Off in `new` and
    /// `for_binding`: measured slower on an H200 (`gpu_bench`, one call: document + causal
    /// B2 H16 L8192 D128 0.279-0.282 ms against 0.244, GQA documents 0.734 against 0.658,
    /// sliding window 1024 0.290 against 0.265): in the issue-to-wait window S, O and P
    /// hold 160 registers, and the mask's addresses and reads there make ptxas spill
    /// (72 bytes; 0 without the option) in the loop that every block runs.
    pub mask_early: bool,
    /// Per-conjunct kinds of partial blocks for masks `L && N` whose top-level conjuncts
    /// split into linear ones `L` and others `N` (`analysis::linear::split_conjuncts`;
    /// e.g. `q >= kv && doc[b, q] == doc[b, kv]`): the block-table kernel writes a
    /// partial block where `N` holds wherever `L` does (so the mask is `L` there) as run
    /// kind 2 and one where `L` holds at every point as run kind 3 (0 = partial, 1 = full
    /// as before; points inside `Lq x Lkv`), and the attention
    /// kernel's score evaluates only `L` (a document's diagonal block: no id reads) or
    /// only `N` (a document's start below the diagonal: no causal test) on them
    /// (`score::score_and_mask`). Other masks, host-built tables (kinds 0 and 1 only)
    /// and checked mode are unchanged. Off in `new`; `for_binding` turns it on for block
    /// tables on the warp-specialized kernel (D, Dv <= 128).
    pub mask_kinds: bool,
    /// A score of the form `s + (lin as f32) * c` ([`crate::analysis::linear::pos_bias`]:
    /// `lin` a linear form `±q ± kv + k` of the positions, `c` the same for every element
    /// of a head, as ALiBi's slope) emitted as `fma(s_raw, scale log2 e, fma(kv, c log2 e,
    /// (±q + k) c log2 e))` with the positions as exact floats: two instructions an
    /// element where the IR's order takes four (the difference, the product, the scaled
    /// sum, the log2 e product). The rounding of the row term `(±q + k) c log2 e` is the
    /// same for every element of a row, so the softmax (invariant to a row's constant) is
    /// as exact as before. Needs [`Self::float_positions`]; checked mode and other scores
    /// are unchanged. Off in `new`; `for_binding` turns it on with `float_positions`.
    pub pos_bias: bool,
    /// The per-element score and mask (the forward's, and the backward's element code)
    /// take `kv - q` as the thread's `first column - first row` plus a constant
    /// (`expr::Elem::rel`, `backward::PosBase`), so that LLVM computes the
    /// values that depend on the positions only through `kv - q` (T5's bucket, its `lg2`
    /// and its table read; a window's comparisons) once per diagonal of the thread's
    /// fragment instead of per element: T5 at sm_90a D128 254 → 138 `lg2` and 252 → 136
    /// global loads in the PTX, but 24 → 160 bytes of spills (ptxas 13.0; D64 524 → 1320),
    /// sliding windows fewer instructions and no spills. Same values. Off in `new`;
    /// `for_binding` and `backward_for_binding` turn it on where the score computes a
    /// costly value from `kv - q` alone (`diag_cse_pays`; `ATTNC_FWD_DIAG` /
    /// `ATTNC_BWD_DIAG=1|0` override).
    pub diag_cse: bool,
    /// The forward's score tensor reads that are one element over a thread's box of
    /// positions (`uniform`: a relative-position table's clamp of `q - kv` away from the
    /// diagonal, a bucket table) read once per block: on full blocks where every lane's
    /// reads are each one element (`vote.all`), the score takes them from registers
    /// instead of an index and a gather per element. The same elements read: the same
    /// logits. Not in checked mode. Off in `new`; on in `for_binding` (session 39, run
    /// on an H200: a relative-position table's forward 1.29x).
    pub uniform_reads: bool,
    /// The K/V cache layout (contiguous by default): the decode kernels' cache; with `ws`,
    /// [`KvCache::Paged`] makes the forward read K and V from a paged cache `[pages, P,
    /// Hkv, D]` through [`KernelParam::PageTable`] (`i32[B, MaxPages]`, page ids clamped
    /// into `0..NumPages`), `P = 2^PageShift` (from 16 rows), each kv tile one TMA box of
    /// one page's rows of one head per `min(P, kv_block)` rows (`hopper.rs`,
    /// `Producer::copy_kv`; the tensor maps `TmaK`/`TmaV` view the cache as `{D, Hkv,
    /// pages x P}`; the V rows of a tile past `Lkv` zeroed before the consumers read it,
    /// `Producer::copy_v_tail`): chunked
    /// prefill's runs on a paged cache (the runtime's `decode::cuda`). Other kinds ignore it.
    pub kv_cache: KvCache,
    /// With [`KvCache::Paged`] on the warp-specialized kernel (one CTA per tile,
    /// persistent CTAs in static rounds, or the dynamic scheduler without `q_ahead`): the
    /// producer threads that issue the copies, each the first of a warp of the producer
    /// warpgroup, walking the same kv blocks with its own ring position (under the
    /// dynamic scheduler, the tiles it reads from the tile slot): 1 (every copy), 2 (the
    /// second, warp 1's, issues every V copy) or 4 (K's boxes alternate between warps 0
    /// and 2, V's between warps 1 and 3; the first of each pair counts the tile's bytes) —
    /// pages smaller than the kv tile take a TMA box per page, a page id load per box, and
    /// one thread issuing them all is the copy's limit. 1 by default; other kinds ignore it.
    pub producers: u8,
    /// `Some(p)` on the warp-specialized forward: the sequences' lengths stay on the device
    /// ([`KernelParam::SeqLens`], `i32[B]`). A tile of batch `b` sees `Lkv_b =
    /// clamp(seq_lens[b], 0, Lkv)` keys (its kv range, tail checks and, with a contiguous
    /// cache too, the zeroed V rows past `Lkv_b` of its last tile: slots of the cache
    /// nobody wrote), and param `p` (the position-offset program's `__q0`,
    /// `decode::device_offset_program`) takes `Lkv_b - Lq` in its element code and in its
    /// closed-form kv offsets (`KvOffset(i)` is the offset at `__q0 = 0`; the kernel adds
    /// the constraint's coefficient of `p` times `Lkv_b - Lq`). Chunked prefill over a
    /// cache whose lengths the host does not know: one launch of the whole batch on the
    /// prefill kernel. Closed-form kv bounds only; not with `tail_split`, `q_ahead` or
    /// `cross_tile`. `None` by default; other kinds ignore it.
    pub device_lens: Option<u32>,
    /// The warp-specialized forward of a document mask's linear part (`Plan::doc_split`:
    /// the program whose mask is `L` of `L && doc[q] == doc[kv]`), one CTA per entry of a
    /// tile list ([`KernelParam::DocTiles`]) and query head: each tile lies in one
    /// document (`rows` rows from its first row `row0`, the q block `qi` of it), its q
    /// block starts at `row0 + qi q_block` and its kv blocks at `row0 + j kv_block`, so
    /// tiles and kv blocks are aligned to the document's start (FlashAttention's varlen
    /// layout over one packed sequence, read in place): no block straddles two documents
    /// and none needs the document test. Rows and keys past the document's end are
    /// outside (not written, masked); positions stay absolute for the score and `L`.
    /// One CTA per tile (grid `DocTiles x Hq`), or persistent CTAs over `NumQBlocks x Hq`
    /// tiles with `NumQBlocks` the list's length and `Batch` 1 (tile `t` is entry
    /// `t % NumQBlocks` for head `t / NumQBlocks`). Closed-form kv bounds only; not with `tail_split`, `o_tma`,
    /// `q_ahead`, `cross_tile`, `q_from_end`, `device_lens` or a paged cache. Off by
    /// default; other kinds ignore it.
    pub doc_tiles: bool,
    /// The backward's dQ scheme (`Separate` by default; other kinds ignore it).
    pub bwd_dq: BwdDq,
    /// The fused backward with [`BwdDq::OrderedBulk`] (`backward/fused.rs`): a producer
    /// warp of the writer warpgroup loads each visit's Q and dO with TMA
    /// ([`KernelParam::TmaQ`], [`KernelParam::TmaDo`]) and its L2/Delta rows into a
    /// two-buffer ring whose fill and release are mbarriers, so the math warps issue no
    /// copies (and their `fence.proxy.async` have none in flight). Off by default; other
    /// kinds ignore it.
    pub bwd_tma: bool,
    /// The fused backward's CTA order (`backward/fused.rs`): the grid is (kv head, kv
    /// block, batch) with kv blocks ascending, so each wave holds the same kv blocks of
    /// many heads, the longest (first) ones first; dQ tiles add in ascending kv-block
    /// order and each CTA visits its q blocks in descending order. Off: (kv block
    /// descending, kv head, batch), descending addition order, q blocks ascending.
    /// Off in `backward`; [`Self::backward_for_binding`] (the runtime's choice) turns it on
    /// for causal-type masks (passed the GPU suite and racecheck in sessions 7 and 8;
    /// measured there: 1.03-1.06x on causal, ALiBi + causal and soft-cap + causal, 0.98x
    /// dense).
    pub bwd_lpt: bool,
    /// The fused backward's visit search (`backward/fused.rs`, `OrderedBulk`): each warp
    /// tests 32 q blocks at once (one lane each, a ballot picks the first hit) instead of
    /// one q block per step, the writer's search is a whole warp's, and the math warps
    /// search for the next visit after issuing Sᵀ and dPᵀ (under the products). The
    /// same visits in the same order: only the time to find them changes. A kv block of a
    /// band or a block table visits a few of many q blocks, and every CTA walked all of
    /// them one by one. Off in `backward`; [`Self::backward_for_binding`] turns it on for
    /// bands and block tables.
    pub bwd_wscan: bool,
    /// The fused backward with the TMA producer (`backward/fused.rs`): persistent CTAs
    /// ([`GridDim::KvPersistent`]: `min(kv tiles, SMs)`), each walking the kv tiles
    /// (kv block, kv head, batch) `ctaid.x, ctaid.x + nctaid.x, ..` in the grid's order:
    /// the producer loads the next tile's first Q/dO and the writer adds the last tile's
    /// dQ parts while the math warps store dK/dV and load the next K/V. A tile waits
    /// only for tiles of lower index (every CTA is resident), as the CTA order does.
    /// No capture gradients. Off in `backward` (measured on an H200: 1.00x on sliding
    /// windows, 0.87-0.90x on document masks; `backward/fused.rs`).
    pub bwd_persist: bool,
    /// With [`Self::bwd_persist`] (`backward/fused.rs`): each CTA's first kv tile is
    /// `ctaid.x`, every next one `nctaid.x` plus a global counter's old value (one
    /// `atom.add` by the producer warp per tile, the tile id handed to the math and writer
    /// warps through a two-entry ring in shared memory with its mbarriers; the counter is
    /// a word of `DqSem`, which every launch zeroes anyway). Tiles are so taken in
    /// increasing order by resident CTAs (the ordered dQ's no-deadlock argument holds),
    /// longest first on the causal-type bindings (`bwd_lpt`'s order), and the hardware's
    /// balancing is back. Works with [`Self::bwd_visit_rec`] (and so `bwd_dv_early` /
    /// `bwd_empty_late`) and [`Self::bwd_convert_early`]. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on (with `bwd_persist`, through
    /// [`Self::tile_counter`]) for every band and block table and D64's causal-type
    /// bindings (sessions 23 / 24, one H200, whole backward: D64 causal 1.05x, ALiBi
    /// 1.028x, soft-cap 1.04x, sliding 1.058x, documents 1.09x; D128 sliding 1.037x,
    /// documents 1.025x); the kernel bench's `+P`.
    pub bwd_persist_dyn: bool,
    /// The fused backward of a document mask over packed sequences on kv tiles aligned to
    /// each document (`backward/fused.rs`, "Document kv tiles"): the tiles are the entries
    /// of [`KernelParam::DocTiles`] (`(b, row0, rows, kj)`: kv rows `row0 + kj kv_block`
    /// of the document `row0 .. row0 + rows`, [`KernelParam::NumDocTiles`] of them, kv
    /// heads innermost), the q blocks stay on the global grid, and the per-row ranges
    /// ([`KernelParam::Ranges`], per (batch, q block)) count kv tiles in list entries, so
    /// a q block's adders are the entries `first .. end`, in ascending order with each
    /// tile's q blocks visited in descending order (as [`Self::bwd_lpt`]'s kv blocks: each
    /// document's heaviest tile first). Keys past the document's last row are outside the
    /// tile (masked, not loaded, their dK/dV not stored). With [`Self::bwd_persist_dyn`],
    /// block tables and not `bwd_lpt` itself; made by the runtime from a block mask's ids.
    pub bwd_doc_tiles: bool,
    /// The fused backward with [`BwdDq::OrderedBulk`] and [`Self::bwd_tma`]
    /// (`backward/fused.rs`): each math warpgroup computes the dQ part of its own 64 kv
    /// rows (`dS K` over those rows only, every column), so it reads only its own rows
    /// of dSᵀ and the two warpgroups no longer meet at a dS barrier every visit (a
    /// barrier of the warpgroup's own 128 threads publishes its dSᵀ rows); warpgroup 1
    /// stores its part into the visit's dQ slot and warpgroup 0 adds its own to it (a
    /// fixed order: deterministic) before the writer's bulk addition. One warpgroup's
    /// element code can then run under the other's products. Off by default (measured
    /// on an H200: 0.88-0.90x at D128 dense / causal, 0.99-1.01x at D64; `backward/fused.rs`);
    /// other kinds ignore it.
    pub bwd_wg_dq: bool,
    /// The fused backward with the TMA producer ([`Self::bwd_tma`], `backward/fused.rs`):
    /// the math warps search for the next visit after issuing this visit's Sᵀ and dPᵀ
    /// (under the products) instead of before, as [`Self::bwd_wscan`] does. The same
    /// visits in the same order (bit-identical gradients). Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on at D64 with the TMA producer (measured
    /// there 1.02-1.04x on the fused kernel, no gain at D128).
    pub bwd_scan_under: bool,
    /// The fused backward with [`BwdDq::OrderedBulk`]: the writer adds each dQ part as
    /// soon as it is in its slot (`cp.reduce.async.bulk`), without waiting for its turn
    /// (no semaphore, DqAccum zeroed first): NOT deterministic (float additions in any
    /// order), for measuring what the ordered chain costs (one H200, B2 H16 L8192 D128
    /// bf16, whole backward: dense 1.04x, causal 1.01x; D64 1.00x / 1.02x). Off by
    /// default (the kernel bench's `default+u`); other kinds ignore it.
    pub bwd_dq_free: bool,
    /// The fused backward (`backward/fused.rs`): the math warps store dSᵀ into its
    /// 128-byte-swizzled tile with `stmatrix.sync.aligned.m8n8.x4.shared.b16` (one
    /// instruction per 16 q columns per thread instead of four `st.shared.b32`; the same
    /// bytes at the same addresses) and load the per-row L2 and Delta pairs with
    /// `ld.shared.v2.f32` (half the loads). Fewer instructions in the math warps' visit
    /// (docs/performance.md, session 11 (bwd3) and session 12 (bwd)). Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on where measured; the kernel bench's `+x`
    /// (`-x` off); other kinds ignore it.
    pub bwd_stmatrix: bool,
    /// The fused backward (`backward/fused.rs`): each wgmma operand tile's shared-memory
    /// descriptors come from one base descriptor plus a constant per k-step (one add
    /// instead of the shift, mask and or of every descriptor), and the math warps'
    /// warpgroup index is read through `shfl.sync` (warp-uniform, so ptxas can keep the
    /// K/V descriptors in uniform registers). The same descriptors, so the same results.
    /// Fewer instructions in the math warps' visit. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on where measured; the kernel bench's `+d`
    /// (`-d` off); other kinds ignore it.
    pub bwd_desc: bool,
    /// The fused backward (`backward/fused.rs`), on full blocks of the identity score
    /// without capture gradients: dS = P (dP - Delta) without the select that makes it
    /// +0 where P = 0 (there every element is unmasked and in bounds and dP - Delta is
    /// finite, so an underflowed P gives ±0 either way: the same gradients up to the
    /// sign of a zero sum). Partial blocks keep it. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on where measured; the kernel bench's `+g`
    /// (`-g` off); other kinds ignore it.
    pub bwd_ds_unguarded: bool,
    /// The fused backward with [`Self::bwd_desc`] (`backward/fused.rs`): each operand
    /// tile's wgmma descriptors as one 64-bit base descriptor plus a 64-bit constant per
    /// k-step (`Gpu::wgmma_desc_base` / `wgmma_desc_step`) instead of a 32-bit add and the
    /// constant high word joined per descriptor: ptxas then steps each descriptor with one
    /// `UIADD3.64` (as FlashAttention-4's SASS does) instead of a `UIADD3` and a `UMOV` of
    /// the high word per operand and k-step. The same descriptors (the start-address field
    /// never carries: a shared-window address is below 2^18), so the same products. Off by
    /// default; the kernel bench's `+a`. Other kinds and `bwd_desc` off ignore it.
    pub bwd_desc64: bool,
    /// The fused backward (`backward/fused.rs`), a score whose derivative is a constant
    /// (affine in s: ALiBi, `s + bias[q]`) without capture gradients, on full blocks: dS =
    /// P (dP - Delta) d without the select that makes it +0 where P = 0, as
    /// [`Self::bwd_ds_unguarded`] does for the identity score (on a full block every
    /// element is unmasked and in bounds, the logit finite and dP - Delta finite, so an
    /// underflowed P gives ±0 either way: the same gradients up to the sign of a zero
    /// sum). Partial blocks keep it. Off by default; the kernel bench's `+f`. Other kinds
    /// ignore it.
    pub bwd_affine_unguarded: bool,
    /// The fused backward with [`BwdDq::OrderedBulk`] (`backward/fused.rs`): two dQ
    /// writer threads (lane 0 of the writer warpgroup's warps 0 and 1), each adding the
    /// visits of one of the two dQ slots, as `overlap` has them, without `overlap`'s
    /// product order: a visit's semaphore wait and bulk addition no longer wait for the
    /// previous visit's addition to complete. The same additions in the same order per
    /// dQ tile (the semaphores): bit-identical gradients. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on with [`Self::bwd_wscan`] (bands and
    /// block tables; measured on an H200: D128 sliding 1024 1.11x, document + causal
    /// 1.03x; dense 1.00x, fused kernel alone). Other kinds ignore it.
    pub bwd_two_writers: bool,
    /// The fused backward (`backward/fused.rs`): dK and dV stored 8 bytes per thread and
    /// instruction (`st.global.v2.b32` after one shuffle per pair of n8 column groups
    /// between the lanes of a quad's pairs) instead of 4: half the store instructions and
    /// full 32-byte sectors. The same values at the same addresses. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on with [`Self::bwd_wscan`], where a CTA's
    /// few visits make the stores a large share (ncu, D128 sliding 1024: 6% of the math
    /// warps' samples in `STG` throttled; with two writers measured 1.05x sliding, 1.07x
    /// document + causal, 1.02x dense). Other kinds ignore it.
    pub bwd_store_pairs: bool,
    /// The fused backward with [`BwdDq::OrderedBulk`] and the TMA producer
    /// (`backward/fused.rs`): the two math warpgroups take turns in their element code
    /// (P, dS; named barriers), so that one warpgroup's products run on the tensor cores
    /// while the other computes (the forward's ping-pong); each warpgroup computes visit
    /// n - 1's dQ part after visit n's element code (the turns order the dSᵀ tiles, no
    /// barrier of both warpgroups per visit) and issues visit n + 1's Sᵀ and dPᵀ before
    /// its turn. The same products and additions in the same order per dQ tile:
    /// bit-identical gradients. Off by default; the kernel bench's `+y`. Other kinds
    /// ignore it.
    pub bwd_pingpong: bool,
    /// With [`Self::bwd_pingpong`] (`backward/fused.rs`): after a warpgroup's turn, dV and
    /// dK are one group and the last visit's dQ part another, so once dV and dK have
    /// completed (the Q/dO buffer free) the next visit's search, its `q_full` wait and its
    /// Sᵀ are issued while the dQ part still runs, and its dPᵀ once the dQ part has
    /// completed and is in its slot: the tensor cores get the next products queued
    /// behind the dQ part instead of idling through the slot's stores, the search and the
    /// buffer's wait. The same products and additions in the same order: bit-identical
    /// gradients. Off by default: slower on an H200 (session 21, one call, D64 B4 H16
    /// L4096 whole backward TFLOP/s, dense default / `+n` 440.3 / 425.3 mean of four,
    /// causal `+y` / `+y+n` 374.7 / 380.4 against the default's 384.8;
    /// docs/performance.md, "Session 21 (bwd64x)"); the kernel bench's `+n`. Ignored
    /// without the turns; other kinds ignore it.
    pub bwd_ping_next: bool,
    /// The fused backward (`backward/fused.rs`), where a visit waits for Sᵀ and dPᵀ
    /// before its element code (not `overlap`, not [`Self::bwd_pingpong`]): the visit's
    /// L2 and Delta loads from shared memory issued before that wait instead of after it,
    /// so their latency passes under the tensor cores' Sᵀ and dPᵀ (ncu, one H200, D128
    /// dense: the first subtractions and FMAs after the wait held 7% of the math warps'
    /// stall samples, short scoreboard on those loads). The same values: bit-identical
    /// gradients. Off by default; the kernel bench's `+h`. Other kinds ignore it.
    pub bwd_stats_early: bool,
    /// The fused backward (`backward/fused.rs`) on q tiles of 64 and (since session 19)
    /// D64's q tiles of 128, without `overlap`, [`Self::bwd_pingpong`],
    /// [`Self::bwd_wg_dq`] or capture gradients: a visit waits
    /// for Sᵀ alone, computes P (the exponentials) while dPᵀ runs on the tensor cores,
    /// then waits for dPᵀ and computes dS (FlashAttention-3's order for P: `overlap`'s
    /// element code, without its dV before the dS barrier), the products after the dS
    /// barrier as before; with [`Self::bwd_dv_early`] dV is issued after the dSᵀ stores,
    /// before the barrier (with [`Self::bwd_empty_late`] too: FlashAttention-4's
    /// `mma_one_m_block` order, its hdim-64 tile being ours at q tiles of 128).
    /// Deterministic. Off by default; the kernel bench's `+e`. Other kinds and q tiles of
    /// 80 ignore it.
    pub bwd_p_under_dp: bool,
    /// The fused backward with [`BwdDq::OrderedBulk`] (`backward/fused.rs`), neither
    /// [`Self::bwd_pingpong`] nor [`Self::bwd_wg_dq`]: a visit waits for its free dQ slot
    /// (`empty`) after it has issued dQ, dV and dK and waited for dQ, right before the
    /// dQ part's stores into the slot (FlashAttention-4's order: its dQ-empty barrier
    /// follows the dQ and dK issue), instead of between the dS barrier and the products'
    /// issue, so the wait runs under dV and dK instead of with the tensor cores idle.
    /// The same values in the same order: bit-identical gradients. The kernel bench's
    /// `+z`; off in [`Self::backward`], on in [`Self::backward_for_binding`] for the D128
    /// causal-type bindings with the identity score or a constant derivative (one H200,
    /// whole backward with `bwd_dv_early`: causal 1.04x, ALiBi + causal 1.035x) and (session
    /// 19) D64's causal-type bindings on q tiles of 128 whose score reads no positions per
    /// element (causal 1.02x, soft-cap + causal 1.02x). Other kinds ignore it.
    pub bwd_empty_late: bool,
    /// The fused backward (`backward/fused.rs`) with the element code after both waits
    /// or (since session 19) with [`Self::bwd_p_under_dp`] (not `overlap`,
    /// [`Self::bwd_pingpong`], [`Self::bwd_wg_dq`] or q tiles of 80): each warpgroup
    /// issues dV += Pᵀ dO (its own
    /// rows of P, from registers) right after its dSᵀ stores, before the dS barrier
    /// (FlashAttention-4's order), so the tensor cores have it while the warpgroups meet;
    /// dQ and dK after the barrier. The same products and values: bit-identical
    /// gradients. The kernel bench's `+j`; off in [`Self::backward`], on in
    /// [`Self::backward_for_binding`] for D128 dense (one H200, whole backward 1.03x), D128
    /// bands and block tables (session 19: sliding 1.01x, document + causal 1.015x) and,
    /// with [`Self::bwd_empty_late`], the causal-type bindings named there. Other kinds
    /// ignore it.
    pub bwd_dv_early: bool,
    /// The two-kernel backward at D = Dv = 256 (two warpgroups on one kv tile, a column
    /// half of dK and dV each: `backward::dkdv_parts`): the first warpgroup computes Sᵀ,
    /// the second dPᵀ, and they exchange the two f32 accumulators through 32 KiB of shared
    /// memory (thread to thread: both have the same fragment layout) instead of each
    /// computing both — four products of 64 x 64 x 256 per visit instead of six, the
    /// element code done by both. Bit-identical gradients. On in
    /// [`Self::backward_separate`] at D = Dv = 256 on sm_90; other kinds ignore it.
    pub bwd_xchg: bool,
    /// The two-kernel backward's dQ kernel at a head dim of 256 with closed-form kv
    /// bounds: each CTA takes two q tiles (two warpgroups, `2 q_block` rows, grid
    /// [`GridDim::QBlockPairs`]) over one kv range, K double-buffered and V single-buffered
    /// (reloaded once the visit's dP has read it): 224 KiB of shared memory instead of two
    /// CTAs' 2 x 192 KiB, so two warpgroups per SM instead of one. Tables keep one tile
    /// per CTA. On in [`Self::backward_separate`] at D or Dv 256 on sm_90 (where
    /// `backward::dq_pair` applies); other kinds ignore it.
    pub bwd_dq_pair: bool,
    /// The fused backward with [`Self::bwd_dv_early`] (`backward/fused.rs`; the element
    /// code after both waits, no capture gradients, checked mode, `bwd_band_keep` rows or
    /// `bwd_exp_emu`, q tiles of 64): P and dS in chunks of 16 q columns (the k-step of
    /// dV's RS product), each chunk's dV k-step issued as soon as its P is rounded (a
    /// `wgmma.fence` before each, one commit group after the last), so the tensor cores
    /// run dV += Pᵀ dO under the rest of the exponentials and dS instead of after them;
    /// each chunk's dSᵀ stored as it is made. Full and partial blocks share one path (the
    /// mask and bounds per element selected away on full blocks: a branch on the block
    /// kind whose paths merge with dV in flight makes ptxas 13.0 serialize every wgmma,
    /// C7512). The same values in the same order: bit-identical gradients. The kernel
    /// bench's `+i`; off: slower on an H200 (session 19, whole backward D128 dense 0.975x,
    /// causal 0.97x, ALiBi + causal 0.965x; docs/performance.md, "Session 19 (bwd19)").
    /// Other kinds ignore it.
    pub bwd_dv_chunks: bool,
    /// With [`Self::bwd_dv_chunks`]: each chunk's dK += dSᵀ Q k-step issued too, as soon
    /// as its dS is rounded (before the dS barrier; dSᵀ Q needs only the warpgroup's own
    /// rows), so dV and dK both run under the element code and only dQ follows the barrier
    /// (its wait then covers dV and dK). The same values in the same order. The kernel
    /// bench's `+o`; off: no faster on an H200 than `bwd_dv_chunks` alone, both slower than
    /// the default (session 19, whole backward D128 dense 0.97x, causal 0.97x, ALiBi +
    /// causal 0.947x the default).
    /// Ignored without `bwd_dv_chunks`.
    pub bwd_dk_chunks: bool,
    /// The fused backward (`backward/fused.rs`), identity or general score without
    /// capture gradients, on full blocks: `bwd_exp_emu` of every 8 exponentials of a
    /// thread's fragment (elements `4 nt + i` with `(4 nt + i) % 8 < bwd_exp_emu`) computed
    /// on the FMA pipe instead of the `ex2` unit (the SFU, 16 results per cycle and SM:
    /// with two math warps per scheduler 64 `MUFU.EX2` = 512 cycles a visit at D128, the
    /// tensor cores idle): `2^x = 2^j p(x - j)`, `j` rounded by the 1.5 * 2^23 addition,
    /// `p` a degree-3 polynomial on [-0.5, 0.5] (relative error 7.7e-5, P is rounded to
    /// bf16 / f16 for dV and dS anyway), the exponent added as an integer (x clamped at
    /// -125). 0 (off) by default: no gain on an H200 (session 15, whole backward, D128 dense
    /// `+m2` within the noise, `+m4` 2% and `+m8` 7% slower, causal `+m2` the same, D64
    /// dense `+m2` 6% slower); the kernel bench's `+m1` .. `+m8`. Other kinds ignore it.
    pub bwd_exp_emu: u8,
    /// The fused backward (`backward/fused.rs`; no capture gradients, q tiles of 64, the
    /// TMA producer, not `overlap` or `bwd_pingpong`): the row statistics start the score
    /// products' accumulators instead of being read by the element code. 1: dPᵀ's
    /// accumulator starts at -Delta, so dS' = P dP' is one `FMUL` and the element code
    /// loads no Delta; 2 (the identity score; 1 with a score function): besides, Sᵀ's
    /// starts at -L2 / (scale log2 e), so P = 2^(S' scale log2 e) and the element code
    /// loads no statistics (q tiles of 80 always start both: `backward_q80`). The starts
    /// are loaded, negated and copied (each accumulator input its own register) before
    /// the `wgmma.fence` that precedes Sᵀ: written after it, ptxas 13.0 waits for Sᵀ
    /// before issuing dPᵀ (C7517). The same products; the differences are the rounding of
    /// the shifted accumulators. 0 (off) by default; the kernel bench's `+w1` / `+w2`
    /// (docs/performance.md, "Session 20 (bwd20)"). Other kinds ignore it.
    pub bwd_stat_acc: u8,
    /// The fused backward (`backward/fused.rs`; with `bwd_dv_early`, the TMA producer,
    /// OrderedBulk, q tiles of 64, no capture gradients, not `overlap`, `bwd_pingpong`,
    /// `bwd_wg_dq`, `bwd_dv_chunks`, `bwd_p_under_dp`, `bwd_stat_acc` or q tiles of 80):
    /// the next visit's Sᵀ is issued under this visit's dK, after dQ's wait and its slot
    /// stores (its buffer's `q_full` waited for there; the first visit's before the loop),
    /// so the loop top (dK's wait, the buffer given back, the record or search, dPᵀ's
    /// descriptors) runs with Sᵀ on the tensor cores; the loop top issues dPᵀ alone. Sᵀ's
    /// 32 accumulator registers cross the back edge in flight (a visit without a next one
    /// issues it on a buffer no one reads and the end waits for it). The same products
    /// and values (bit-identical gradients). Off by default; the kernel bench's `+c`
    /// (docs/performance.md, "Session 21 (bwd21)"). Other kinds ignore it.
    pub bwd_s_ahead: bool,
    /// The fused backward's TMA producer ([`Self::bwd_tma`], `backward/fused.rs`): a visit's
    /// L2 and Delta rows come into its ring buffer as two bulk copies (`cp.async.bulk`
    /// global -> shared, 4 Br bytes each) issued by lane 0 with the Q and dO copies and
    /// completing on the same `full` mbarrier (FlashAttention-4's `load_LSE` /
    /// `load_dPsum`), instead of every lane loading its rows from global memory and storing
    /// them (at Br = 128 four dependent global round trips per visit between the buffer's
    /// `empty` wait and the TMA issue). Where the q tile runs past Lq, or Lq or a stat
    /// array's address leaves a row unaligned to 16 bytes, the visit takes the per-lane path
    /// (+inf / 0 past Lq). The same values: bit-identical gradients. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on at D64 without capture gradients
    /// (session 23, one H200: dense 1.10x, causal 1.02x whole backward; session 24:
    /// sliding 1.02x, documents 1.026x, ALiBi 1.009x) and on D128 dense (1.009x); the
    /// kernel bench's `+b` (docs/performance.md, "Session 23", "Session 24"). Other kinds
    /// ignore it.
    pub bwd_stats_bulk: bool,
    /// The fused backward under `BwdDq::OrderedBulk` (`backward/fused.rs`): the writer
    /// warpgroup's registers after its `setmaxnreg.dec` (0: the default 24; else 24..=56,
    /// a multiple of 8); each math warpgroup then takes the most the launch's 168 x 384
    /// leaves, at most 240 (32 and 40: 232; 48 and 56: 224). ptxas 13.0 moves the
    /// spills between the roles with it (D128 ALiBi + causal 16 -> 0 bytes at 40, the
    /// band 200 -> 64; D64 bands and tables 0 at 56). Session 24 (the kernel bench's
    /// `+R40`, `+R56`; docs/performance.md "Session 24"). Other kinds ignore it.
    pub bwd_writer_regs: u32,
    /// The fused backward (`backward/fused.rs`), identity or general score (not the
    /// affine one), on the partial blocks of an exact closed-form mask (a band, a causal
    /// diagonal): the mask as one q interval per kv row of the thread's fragment
    /// (`bounds::q_interval`, computed once per partial visit), two compares per element
    /// against constants, instead of the mask's IR and the bounds per element. Launches
    /// whose closed form is not trusted (`KvAllPartial`) take the per-element mask. The
    /// same elements kept: the same gradients. Off in `backward`;
    /// [`Self::backward_for_binding`] turns it on for bands (with [`Self::bwd_wscan`]); the
    /// kernel bench's `+k`.
    pub bwd_band_keep: bool,
    /// The fused backward with capture gradients whose reads' index arithmetic has
    /// interval rules (`uniform::analyzable`: a relative-position table's clamp of
    /// `q - kv`, a bucket table, ...): per visit the indices are evaluated over the
    /// visit's box of positions (`uniform::emit_tile_loads`) and, on full blocks where
    /// every read is one element, the element code takes that value from a register and
    /// sums one run per read site for the flush, instead of an index, a gather and a run
    /// test per element. The same elements read, the gradients summed in another (fixed)
    /// order. Off in `new`; on in `backward_for_binding` wherever the fused kernel runs
    /// (session 39, run on an H200: a relative-position table's backward 1.52x at D128);
    /// the kernel bench's `+U`, `ATTNC_BWD_UNIFORM=0|1` in the runtime.
    pub bwd_uniform_reads: bool,
    /// The fused backward with the TMA producer ([`Self::bwd_tma`]; with
    /// [`Self::bwd_persist`] only on the counter's tile order, [`Self::bwd_persist_dyn`],
    /// where each tile's end record takes a ring buffer of its own): the producer warp, which walks the visits anyway, stores
    /// each visit (query head, q block, kv range, full range) in a 32-byte record per ring
    /// buffer before it arrives at the buffer's `full` barrier, and after the last visit a
    /// record without one; the math warps read the record after that wait instead of
    /// searching for the next visit themselves (their scan per visit: the closed form's i64
    /// arithmetic or the block table's loads, ballot and shuffles). The same visits in the
    /// same order: the same gradients. Off in `backward`; [`Self::backward_for_binding`]
    /// turns it on for bands and block tables (with [`Self::bwd_wscan`]); the kernel
    /// bench's `+r`.
    pub bwd_visit_rec: bool,
    /// The fused backward's dQ conversion (the kernel after the fused dK/dV kernel: f32
    /// workspace `DqAccum` times the scale to the input type): each thread reads whole
    /// 64-byte pieces of the workspace (the four lanes of one quad of an m16n8 fragment:
    /// two rows of 8 columns), every piece's loads issued before any store, and stores
    /// each row's 8 columns as one 16-byte word, instead of one 16-byte load and two
    /// 4-byte stores per step. The same products and roundings: the same dQ. Other kinds
    /// ignore it. The kernel bench's `+c`.
    pub bwd_convert_wide: bool,
    /// The fused backward's three kernels chained by programmatic dependent launch
    /// (sm_90): the pre kernel and the fused dK/dV + dQ kernel let the next grid start
    /// (`griddepcontrol.launch_dependents`, first thing), the fused kernel waits for the
    /// pre kernel (`griddepcontrol.wait`) after its prologue (barriers, K and V copies
    /// issued) and before anything the pre kernel writes or the semaphores, the dQ
    /// conversion before its loads (or per tile, [`Self::bwd_convert_early`]); the runtime
    /// launches the fused kernel and the conversion with programmatic stream
    /// serialization (the semaphores zeroed before the pre kernel). The same kernels'
    /// arithmetic: the same gradients. Fused (`BwdDq` not `Separate`) only; other
    /// schemes ignore it. The kernel bench's `+l`.
    pub bwd_pdl: bool,
    /// With [`Self::bwd_pdl`], `BwdDq::OrderedBulk` (ordered, not `bwd_dq_free`, not
    /// `bwd_persist` unless [`Self::bwd_persist_dyn`], whose writers count themselves
    /// once per tile: the same count): the dQ conversion of a tile starts once that tile's last addition
    /// is done instead of after the whole fused kernel: the writer that adds last into a
    /// dQ tile (rank end - first - 1) releases its semaphore with a flag bit
    /// ([`crate::backend::llvm::backward::DQ_DONE_FLAG`]) and each writer thread counts
    /// itself done in the word after the semaphores (`DqSem[tiles]`); a conversion CTA
    /// spins (acquire, with `nanosleep`) until its tile's flag or the count of every
    /// writer of the grid, then converts. So the conversion runs under the fused
    /// kernel's tail. The same sums: the same dQ. The kernel bench's `+t`. A conversion
    /// CTA whose flag has not come after its spin budget (about 2 s) waits for the whole
    /// fused grid (`griddepcontrol.wait`, as without this option) and counts itself in
    /// the word after the writers' count (`DqSem[tiles + 1]`,
    /// `CudaBackward::early_fallbacks`): slower, never a dQ read before its sums.
    pub bwd_convert_early: bool,
    /// Test hook for [`Self::bwd_convert_early`]: every conversion CTA takes the spin
    /// budget's fallback at once (counts itself, waits for the whole fused grid), as if
    /// its tile's flag never came. Off everywhere but the GPU test that forces the
    /// fallback (`gpu_backward_convert_timeout`).
    pub bwd_convert_timeout_now: bool,
    /// The forward's positions are below [`FLOAT_POSITIONS_MAX`] (every row and column of
    /// the tiles, tails included): the score converts integer sums of `q`, `kv` and a
    /// constant to f32 as float sums of the positions converted once per row and column
    /// (`expr::PosF`), exact under that bound, instead of a `cvt` per element
    /// (which runs on the SM's quarter-rate pipe beside `ex2`). Off by default; the
    /// runtime turns it on for a binding whose Lq and Lkv allow it.
    pub float_positions: bool,
    /// The tensor-core decode kernel's K/V copy (`decode_mma.rs`), a set of
    /// `decode_mma::COPY_*` bits: [`decode_mma::COPY_FULL`] (full tiles copied without
    /// per-row bounds checks), [`decode_mma::COPY_SMEM32`] (32-bit shared-memory
    /// destinations), [`decode_mma::COPY_PAGE_PASS`] (paged: each pass's page from the
    /// tile's alignment). 0 (the default): none. Other kinds ignore it.
    pub decode_copy: u32,
}

/// Whether [`PtxOptions::diag_cse`] pays for `plan` (the forward's and the backward's
/// rule, `for_binding` / `backward_for_binding`): its score computes a costly value from
/// `kv - q` alone (`analysis::diagonal::costly_diagonal`).
pub(crate) fn diag_cse_pays(plan: &crate::plan::Plan) -> bool {
    plan.program()
        .score
        .as_ref()
        .is_some_and(crate::analysis::diagonal::costly_diagonal)
}

/// The bound on positions (and on the constant of a converted position sum) under which
/// [`PtxOptions::float_positions`] is exact: every partial sum of `±q ± kv + c` stays
/// below 2^24 in magnitude, where f32 holds every integer.
pub const FLOAT_POSITIONS_MAX: i64 = 1 << 22;

/// The head dims (D and Dv) the PTX kernels take (`PtxOptions::validate`): the swizzled
/// tiles need D / 8 a power of two. The runtime pads other dims to one of these
/// (`attnc::head_pad`).
pub const HEAD_DIMS: [u32; 5] = [16, 32, 64, 128, 256];

/// Whether a binding whose longest sequence (max of Lq and Lkv) is `longest` may use
/// [`PtxOptions::float_positions`]: positions, plus a margin of 256 for the offsets of a
/// fragment's elements, stay under [`FLOAT_POSITIONS_MAX`]. The forward's and the
/// backward's binding rules both ask this.
pub fn float_positions_fit(longest: usize) -> bool {
    longest as i64 + 256 <= FLOAT_POSITIONS_MAX
}

impl PtxOptions {
    /// These options for the document-tiled forward ([`PtxOptions::doc_tiles`]) of the
    /// program of `Plan::doc_split`: whole tiles in the list's order (one CTA per tile,
    /// or persistent CTAs with or without the tile counter as the binding chose; not the
    /// kv split of the last tiles, q blocks from the end or the longest-first grid order:
    /// the list is in that order already), no TMA stores of O (a tile's last rows belong
    /// to the next document) and no Q ahead or cross-tile products; the closed form,
    /// never a table.
    pub fn for_doc_tiles(self) -> Self {
        PtxOptions {
            doc_tiles: true,
            tail_split: false,
            o_tma: false,
            q_ahead: false,
            cross_tile: false,
            q_from_end: false,
            early_claim: false,
            lpt_group: 0,
            kv_table: false,
            ..self
        }
    }

    /// The defaults for `arch`: on sm_90 with D and Dv of 64 or 128 the wgmma path
    /// ([`Self::wgmma`]: 128 query rows, 2 CTAs per SM; kv tiles of 128 at D64, 64 at
    /// D128), else mma.sync ([`Self::sync`]). Measured on an H200 (bf16, B2 H16 L8192 D128
    /// / B4 H16 L4096 D64, ms): D128 wgmma 128x64 dense 1.96-2.01, causal 1.10-1.12,
    /// ALiBi+causal 1.41, softcap+causal 1.88 against mma.sync 128x64x2 2.87, 1.62, 1.87,
    /// 3.02 (kv 128: 2.58 dense, and with 2 CTAs per SM it spills); D64 wgmma 128x128
    /// dense 0.616, causal 0.368, ALiBi+causal 0.545 against 0.840, 0.487, 0.607 (kv 64:
    /// 0.73 dense). Without the 2-CTA register cap ptxas gives score-function kernels
    /// 150-190 registers and one CTA per SM: ALiBi+causal D128 1.78 ms, softcap 2.74.
    ///
    /// At D or Dv 128 the default is the warp-specialized TMA kernel ([`Self::ws`], kv
    /// tiles of 128, 2 stages), measured on an H200 (bf16, B2 H16 L8192 D128, direct PTX
    /// load): dense 1.525 ms (721 TFLOP/s) against 1.940 for wgmma 128x64, causal 0.837
    /// against 1.081; at D64 it lost (dense 0.646 ms against 0.616).
    pub fn new(arch: Arch, d: u32, dv: u32, input: InputType) -> Self {
        let s = Self::sync(arch, d, dv, input);
        if arch == Arch::Sm90 && matches!(d, 64 | 128) && matches!(dv, 64 | 128) {
            if d.max(dv) == 128 {
                s.warp_specialized(128, 2)
            } else {
                PtxOptions {
                    kv_block: 128,
                    ..s.wgmma()
                }
            }
        } else {
            s
        }
    }
    /// The mma.sync defaults, measured best on an H200 (bf16, dense): at D 96..128, 128 query rows over
    /// 4 warps of 32 rows (2 m-tiles) with Q re-read from shared memory and kv tiles of 64
    /// (333 TFLOP/s at D128 vs 285 for 64x64 with 16 rows per warp); otherwise 64 query
    /// rows (4 warps of 16) and kv tiles of 64 (280 at D64; 2 m-tiles give the same).
    pub fn sync(arch: Arch, d: u32, dv: u32, input: InputType) -> Self {
        let o = PtxOptions {
            arch,
            d,
            dv,
            input,
            checked: false,
            q_block: 64,
            kv_block: 64,
            m_tiles: 1,
            q_in_regs: true,
            k_prefetch: dv <= 128,
            early_sync: true,
            kv_table: false,
            mma: Mma::Sync,
            overlap: false,
            min_ctas: 0,
            ws: false,
            stages: 2,
            lpt_group: 0,
            persistent: false,
            dynamic_tiles: false,
            tail_split: false,
            q_from_end: false,
            split_tail: false,
            q_double: false,
            cross_tile: false,
            early_claim: false,
            q_ahead: false,
            o_tma: false,
            pv_wait_late: false,
            softmax_ilp: false,
            mask_early: false,
            mask_kinds: false,
            pos_bias: false,
            diag_cse: false,
            uniform_reads: false,
            kv_cache: KvCache::Contiguous,
            producers: 1,
            device_lens: None,
            doc_tiles: false,
            bwd_dq: BwdDq::Separate,
            bwd_tma: false,
            bwd_lpt: false,
            bwd_wscan: false,
            bwd_persist: false,
            bwd_persist_dyn: false,
            bwd_doc_tiles: false,
            bwd_wg_dq: false,
            bwd_scan_under: false,
            bwd_dq_free: false,
            bwd_stmatrix: false,
            bwd_desc: false,
            bwd_ds_unguarded: false,
            bwd_desc64: false,
            bwd_affine_unguarded: false,
            bwd_empty_late: false,
            bwd_dv_early: false,
            bwd_xchg: false,
            bwd_dq_pair: false,
            bwd_dv_chunks: false,
            bwd_dk_chunks: false,
            bwd_two_writers: false,
            bwd_store_pairs: false,
            bwd_pingpong: false,
            bwd_ping_next: false,
            bwd_stats_early: false,
            bwd_p_under_dp: false,
            bwd_exp_emu: 0,
            bwd_stat_acc: 0,
            bwd_s_ahead: false,
            bwd_stats_bulk: false,
            bwd_writer_regs: 0,
            bwd_band_keep: false,
            bwd_uniform_reads: false,
            bwd_visit_rec: false,
            bwd_convert_wide: false,
            bwd_pdl: false,
            bwd_convert_early: false,
            bwd_convert_timeout_now: false,
            float_positions: false,
            decode_copy: 0,
        };
        if (96..=128).contains(&d.max(dv)) {
            PtxOptions {
                q_block: 128,
                ..o.with_m_tiles(2)
            }
        } else {
            o
        }
    }
    /// These defaults refined for one binding: the plan's kv bounds (`kv_table`: the
    /// table forced), its score and the longest of Lq, Lkv. Measured on an H200 (bf16, B4
    /// H16 L4096 D64 / B2 H16 L8192 D128, ms, one run):
    /// - positions as exact floats ([`Self::float_positions`]) below 2^22 positions
    ///   (ALiBi + causal D128 1.088 against 1.121);
    /// - at D, Dv 64 with a closed-form kv range that is not a band: the three-consumer
    ///   warp-specialized kernel (q blocks of 192): dense 0.550 against 0.620 for plain
    ///   wgmma 128x128, causal 0.347 / 0.373, ALiBi + causal 0.507 / 0.571, softcap +
    ///   causal 0.515 / 0.554; bands (sliding window 0.236 / 0.199) and block tables
    ///   (document + causal 0.212 / 0.161) keep plain wgmma; a score that reads positions
    ///   or tensors per element ([`crate::plan::Reads::per_element`]: ALiBi, bias tables,
    ///   T5) spills at the three-consumer kernel's 160 registers (ptxas: ALiBi + causal 212
    ///   bytes, learned bias 396, T5 520-608; none at 232) and takes the two-consumer
    ///   kernel (q blocks of 128): ALiBi + causal 0.481 against 0.507;
    /// - the longest-first CTA order ([`Self::lpt_group`], groups of 8) where the kv range
    ///   grows with q (`KvBounds::work_grows_with_q`): causal D128 0.819 against 0.844,
    ///   ALiBi + causal 1.060 / 1.088, softcap + causal 1.102 / 1.140; D64 plain wgmma
    ///   causal 0.342 / 0.373; and for block tables on the warp-specialized kernel at D,
    ///   Dv <= 128 (session 12, `gpu_bench`, document + causal D128 with the dynamic
    ///   scheduler: 0.243 / 0.244 against 0.250 / 0.249; sessions 11 and 7: 0.244 / 0.249,
    ///   0.248 / 0.251);
    /// - persistent CTAs ([`Self::persistent`]) for bands at D128 (sliding window 1024:
    ///   0.271 / 0.275 against 0.295 / 0.285 in two calls) and without a mask on the
    ///   three-consumer D64 kernel (dense 0.540 / 0.537 against 0.558 / 0.547); not for
    ///   causal-type ranges, where the static rounds of tiles lose to the hardware's own
    ///   CTA order (causal D128 0.826 against 0.825 with LPT, document + causal 0.420
    ///   against 0.279), nor dense D128 (1.550 / 1.607 against 1.563 / 1.552);
    /// - persistent CTAs with the dynamic tile scheduler ([`Self::dynamic_tiles`]) for
    ///   causal-type ranges and block tables at D, Dv <= 128 (one call, against one CTA
    ///   per tile in the LPT order): causal D128 0.801 against 0.816, ALiBi + causal D128
    ///   1.012 / 1.054, document + causal D128 (table) 0.251 against 0.271 (0.248 with
    ///   the LPT order), causal D64 (three consumers) 0.328 / 0.338, ALiBi + causal D64
    ///   (two consumers) 0.457 / 0.478, GQA causal (B1 Hq32 Hkv8 L16384) 3.012 / 3.036;
    ///   not for dense (D128 1.545 against 1.550 for one CTA per tile: noise), nor D64
    ///   no mask (0.540 against 0.531 with static rounds);
    /// - two Q buffers ([`Self::q_double`]) wherever the CTAs are persistent (session 9,
    ///   one call, `gpu_bench` candidates interleaved, medians of 3 x 5): sliding window
    ///   1024 D128 0.259 ms against 0.265 (3 processes), causal D64 0.308 / 0.307 against
    ///   0.316 / 0.318, dense D64 0.531 / 0.533 against 0.539 / 0.538, GQA ALiBi + causal
    ///   3.925 / 3.925 against 3.992 / 3.976; causal D128 0.806 / 0.810 against 0.803 /
    ///   0.810 and GQA causal 3.025-3.034 against 3.020-3.120 (no change);
    /// - tiles of 64 x 64 for bands and block tables at D, Dv 64 (the plain wgmma kernel;
    ///   session 11, one call, `gpu_bench` B4 H16 L4096 / the runtime through
    ///   `ATTNC_FWD_TILE`): document + causal 0.124 ms against 0.163 for 128 x 128 / 175.0
    ///   TFLOP/s against 142.4, sliding window 1024 0.196 / 0.201 and 310.6 / 300.8
    ///   TFLOP/s (64 x 128 0.154 / 0.197 ms, 128 x 64 0.152 / 0.234, mma.sync 64 x 64
    ///   0.145 / 0.233, the two-consumer warp-specialized kernel 0.155 / 0.198); dense at
    ///   64 x 64 runs at 0.90x of 128 x 128 (0.700 against 0.628 ms), the cost for a
    ///   table or band that is mostly full blocks.
    pub fn for_binding(self, plan: &crate::plan::Plan, longest: usize) -> Self {
        let kv = plan.kv_bounds(self.kv_table);
        let mut o = self;
        o.float_positions = float_positions_fit(longest);
        // a position bias score (ALiBi) in two instructions an element, wherever the
        // positions are exact floats (H200, session 16, one call, `attnc bench` min of 3 x
        // 10, ALiBi + causal TFLOP/s off / on: GQA B1 Hq32 Hkv8 L16384 D128 553-557 /
        // 610-612, B2 H16 L8192 D128 538 / 583-586, B4 H16 L4096 D64 304 / 338)
        o.pos_bias = o.float_positions;
        // `kv - q` shared along the fragments' diagonals where the score computes a
        // costly value from it alone (T5's bucket; H100, session 45, `attnc bench
        // --backend cuda`, forward ms off / on: B2 H16 L8192 D128 T5 encoder 6.92 / 3.51,
        // decoder 3.06 / 1.97; B4 H16 L4096 D64 2.47 / 1.61, 1.21 / 0.73); not for windows
        // (sliding D128 2% slower) nor for a relative-position table (no faster)
        o.diag_cse = diag_cse_pays(plan);
        if o.mma == Mma::Wgmma
            && !o.ws
            && o.d.max(o.dv) == 64
            && kv.is_closed_form()
            && !kv.bounds_kv_below()
        {
            o = if plan.score_reads().per_element() {
                o.warp_specialized(128, 2)
            } else {
                PtxOptions {
                    q_block: 192,
                    ..o.warp_specialized(128, 2)
                }
            };
        }
        // D, Dv 64 bands and block tables (what stays on the plain wgmma kernel): tiles of
        // 64 x 64, whose partial blocks waste less of a short row's products than 128 x
        // 128 (document + causal 1.23-1.31x, sliding window 1024 1.03x; a full block
        // table would run at the 64 x 64 dense rate, 0.90x)
        if o.mma == Mma::Wgmma
            && !o.ws
            && o.d.max(o.dv) == 64
            && (!kv.is_closed_form() || kv.bounds_kv_below())
        {
            o.q_block = 64;
            o.kv_block = 64;
        }
        // D = Dv = 256 on sm_90: the warp-specialized kernel with kv tiles of 64 (Q and
        // two K/V stages fill 193 KB of shared memory) instead of mma.sync 64x64
        if o.arch == Arch::Sm90 && o.mma == Mma::Sync && o.d == 256 && o.dv == 256 {
            o = o.warp_specialized(64, 2);
        }
        if o.mma == Mma::Wgmma && kv.work_grows_with_q() {
            o.lpt_group = 8;
        }
        // block tables on the warp-specialized kernel (D, Dv <= 128): the same order (H200,
        // `gpu_bench` document + causal B2 H16 L8192 D128, session 12, one call, two
        // candidate orders: 0.243 / 0.244 ms against 0.250 / 0.249 in the plain order;
        // session 11: 0.244 against 0.249)
        if o.ws && o.d.max(o.dv) <= 128 && !kv.is_closed_form() {
            o.lpt_group = 8;
        }
        // the partial q block first, where it is the lightest
        // (D, Dv <= 128: D256 not yet run with either on a GPU)
        let small = o.ws && o.d.max(o.dv) <= 128;
        o.q_from_end = small && kv.is_closed_form() && kv.work_grows_with_q();
        // (not at q blocks of 192: its consumers' 160 registers spill with the third copy
        // of the element code, 160 bytes on causal; not with a score function: ALiBi +
        // causal 1.083 ms against 1.023 without it)
        o.split_tail = small && o.q_block <= 128 && plan.program().score.is_none();
        // partial blocks by conjunct kind on block tables (documents: the diagonal block
        // inside one document tests `q >= kv` alone, a document's start below it the ids
        // alone; H200, session 15, `gpu_bench` document + causal B2 H16 L8192 D128, one
        // call: 0.222 ms, re-timed 0.217 (317.5 TFLOP/s), against 0.244 / 0.243)
        o.mask_kinds = small && !kv.is_closed_form();
        // persistent CTAs where every tile has the same, short work: bands at D128 and no
        // mask on the three-consumer D64 kernel (not yet timed at D256); with the dynamic
        // tile scheduler where the tiles' work differs: causal-type ranges (in the LPT
        // order above) and block tables
        let uniform = (kv.bounds_kv_below() && o.d.max(o.dv) == 128)
            || (o.q_block == 192 && plan.program().mask.is_none());
        let unequal = kv.work_grows_with_q() || !kv.is_closed_form();
        if o.ws && o.d.max(o.dv) <= 128 && uniform {
            o.persistent = true;
        } else if o.ws && o.d.max(o.dv) <= 128 && unequal {
            o.persistent = true;
            o.dynamic_tiles = true;
        }
        // the last tiles split along kv on dense attention (no mask, no score), persistent
        // in static rounds (H200, session 18, one process, 12 alternated rounds, ms
        // median one CTA per tile / split: B2 H16 L8192 D128 1.743 / 1.646, won 12 of 12;
        // B1 Hq32 Hkv8 L16384 D128 6.781 / 6.537, won 11 of 12; three consumers at B4 H16
        // L4096 D64, persistent already, 0.551 / 0.545, won 12 of 12); not on bands (a
        // sliding window 1024 at D128, same call, 0.281 / 0.304 at B2, 0.576 / 0.587 at
        // GQA: slower) or with a score (not timed)
        let dense = plan.program().score.is_none() && plan.program().mask.is_none();
        let dense128 = o.ws && o.d == 128 && o.dv == 128 && dense && kv.is_closed_form();
        if dense128 {
            o.persistent = true;
            o.dynamic_tiles = false;
        }
        let dense64 = o.ws && o.q_block == 192 && dense;
        o.tail_split = o.persistent && !o.dynamic_tiles && (dense128 || dense64);
        // two Q buffers wherever the CTAs are persistent (D, Dv <= 128 with 2 stages:
        // 192 KB of shared memory at D128)
        o.q_double = o.persistent;
        // O through shared memory and TMA stores on causal-type closed forms without a
        // score at D = Dv = 128, the dynamic scheduler's (H200, session 20, one process,
        // alternated rounds against the same kernel without it, causal: B2 H16 L8192
        // median 0.950x the time, 12 of 12 rounds won; B1 Hq32 Hkv8 L16384 0.963x, 9 of
        // 12; `attnc bench` min of 3 x 10: 706 against 681.5 TFLOP/s at B2); and with a
        // position bias (ALiBi: the lead's H200 call, `attnc bench` min of 3 x 10 in three
        // alternated rounds, B2 611-615 against 596-598 TFLOP/s, GQA 637-649 against
        // 620-634); other scores (soft-cap: 488 against 492, no gain), bands (sliding 1024:
        // within 1%) and block tables (16 bytes of spills) keep the register stores
        o.o_tma = o.dynamic_tiles
            && o.d == 128
            && o.dv == 128
            && o.q_block == 128
            && o.stages == 2
            && kv.is_closed_form()
            && kv.work_grows_with_q()
            && plan
                .program()
                .score
                .as_ref()
                .is_none_or(|f| crate::analysis::linear::pos_bias(f).is_some());
        // session 39: a score's tensor reads that are one element over a thread's box read
        // once (session 37's `uniform_reads`; checked mode keeps the gathers). One H200,
        // one call, `attnc bench` B2 H16 L8192 D128, two alternated pairs off / on: a
        // relative-position table 450.9, 451.4 / 590.9, 578.1 TFLOP/s (1.29x; dense 727 in
        // the same call); `gpu_uniform_reads_match_oracle` (every matrix path) and
        // `gpu_samples_match_oracle` (every example) pass with it
        o.uniform_reads = true;
        o
    }
    /// Sets `m_tiles` and the defaults for it: Q in registers while `m_tiles * d <= 128`
    /// (else re-read from shared memory), and K prefetched a whole iteration ahead while
    /// `m_tiles * dv <= 128`. Measured on an H200 (bf16 dense): prefetch gives D64
    /// 128x64x2 332 TFLOP/s (320 without) and D128 64x64x1 324 (307), but D128 128x64x2,
    /// whose O accumulators alone take 128 registers, 353 (375 without).
    pub fn with_m_tiles(mut self, m_tiles: u32) -> Self {
        self.m_tiles = m_tiles;
        self.q_in_regs = m_tiles * self.d <= 128;
        self.k_prefetch = m_tiles * self.dv <= 128;
        self
    }
    /// These options on the wgmma path with its tile defaults: 128 query rows (two
    /// warpgroups), kv tiles of 64, one m-tile per warp, K prefetched a whole iteration
    /// ahead, registers capped for 2 CTAs per SM (128 per thread), no `overlap`.
    pub fn wgmma(self) -> Self {
        PtxOptions {
            mma: Mma::Wgmma,
            q_block: 128,
            kv_block: 64,
            m_tiles: 1,
            q_in_regs: false,
            k_prefetch: true,
            min_ctas: 2,
            ws: false,
            ..self
        }
    }
    /// The PTX target: `sm_90a` for wgmma (arch-specific features), else the arch.
    pub fn target_cpu(&self) -> &'static str {
        match self.mma {
            Mma::Wgmma => "sm_90a",
            Mma::Sync => self.arch.name(),
        }
    }
    /// These options on the warp-specialized wgmma schedule ([`Self::ws`]): 128 query
    /// rows in two consumer warpgroups plus the producer, kv tiles of `kv_block`, a ring
    /// of `stages` K/V buffers.
    pub fn warp_specialized(self, kv_block: u32, stages: u32) -> Self {
        PtxOptions {
            ws: true,
            stages,
            kv_block,
            min_ctas: 1,
            overlap: false,
            ..self.wgmma()
        }
    }
    /// Threads per CTA: one warp per `16 * m_tiles` query rows (the consumers), and with
    /// `ws` the producer warpgroup after them.
    pub fn threads(&self) -> u32 {
        self.compute_threads() + if self.ws { 128 } else { 0 }
    }
    /// The threads that own query rows: one warp per `16 * m_tiles` rows.
    pub fn compute_threads(&self) -> u32 {
        self.q_block / (16 * self.m_tiles.max(1)) * 32
    }
    /// [`Self::tail_split`]: the f32 words of the workspace ([`KernelParam::TailWork`])
    /// for a grid of at most `sms` CTAs: two slots per CTA, each one piece's O (`dv / 2`
    /// accumulators per consumer thread), m and l (two rows per thread).
    pub fn tail_work_floats(&self, sms: u32) -> usize {
        2 * sms as usize * self.compute_threads() as usize * (self.dv as usize / 2 + 4)
    }
    /// The u32 words of [`KernelParam::TileCounter`] for a grid of at most `sms` CTAs: the
    /// dynamic scheduler's two, then [`Self::tail_split`]'s count per split tile (at most
    /// `2 sms - 1` tiles).
    pub fn tile_counter_words(sms: u32) -> usize {
        2 + 2 * sms as usize
    }
    /// A stable one-line description (used in cache keys and file headers).
    pub fn key(&self) -> String {
        format!(
            "arch={} d={} dv={} in={} checked={} qb={} kvb={} mt={} qregs={} kpf={} esync={} kvtable={}",
            self.arch,
            self.d,
            self.dv,
            self.input.name(),
            self.checked,
            self.q_block,
            self.kv_block,
            self.m_tiles,
            self.q_in_regs,
            self.k_prefetch,
            self.early_sync,
            self.kv_table
        ) + match (self.mma, self.overlap) {
            (Mma::Sync, _) => "",
            (Mma::Wgmma, false) => " mma=wgmma",
            (Mma::Wgmma, true) => " mma=wgmma overlap",
        } + &if self.min_ctas > 0 {
            format!(" minctas={}", self.min_ctas)
        } else {
            String::new()
        } + &if self.ws {
            format!(" ws stages={}", self.stages)
        } else {
            String::new()
        } + &if self.lpt_group > 0 {
            format!(" lpt={}", self.lpt_group)
        } else {
            String::new()
        } + if self.persistent { " persistent" } else { "" }
            + if self.dynamic_tiles { " dynamic" } else { "" }
            + if self.tail_split { " tail-split" } else { "" }
            + if self.q_from_end { " qend" } else { "" }
            + if self.split_tail { " split-tail" } else { "" }
            + if self.q_double { " q2" } else { "" }
            + if self.cross_tile { " cross" } else { "" }
            + if self.early_claim { " claim-early" } else { "" }
            + if self.q_ahead { " q-ahead" } else { "" }
            + if self.o_tma { " o-tma" } else { "" }
            + if self.pv_wait_late {
                " pv-wait-late"
            } else {
                ""
            }
            + if self.softmax_ilp { " softmax-ilp" } else { "" }
            + if self.mask_early { " mask-early" } else { "" }
            + if self.mask_kinds { " mask-kinds" } else { "" }
            + if self.pos_bias { " pos-bias" } else { "" }
            + if self.diag_cse { " diag-cse" } else { "" }
            + match self.kv_cache {
                KvCache::Contiguous => "",
                KvCache::Paged => " kv=paged",
            }
            + match self.producers {
                2 => " v-producer",
                4 => " producers4",
                _ => "",
            }
            + &match self.device_lens {
                Some(p) => format!(" lens=device(q0=p{p})"),
                None => String::new(),
            }
            + if self.doc_tiles { " doc-tiles" } else { "" }
            + match self.bwd_dq {
                BwdDq::Separate => "",
                BwdDq::Ordered => " dq=ordered",
                BwdDq::Atomic => " dq=atomic",
                BwdDq::OrderedBulk => " dq=ordered-bulk",
            }
            + if self.bwd_tma { " bwd-tma" } else { "" }
            + if self.bwd_lpt { " bwd-lpt" } else { "" }
            + if self.bwd_wscan { " bwd-wscan" } else { "" }
            + if self.bwd_persist { " bwd-persist" } else { "" }
            + if self.bwd_persist_dyn {
                " bwd-persist-dyn"
            } else {
                ""
            }
            + if self.bwd_doc_tiles {
                " bwd-doc-tiles"
            } else {
                ""
            }
            + if self.bwd_wg_dq { " bwd-wg-dq" } else { "" }
            + if self.bwd_scan_under {
                " bwd-scan-under"
            } else {
                ""
            }
            + if self.bwd_dq_free { " bwd-dq-free" } else { "" }
            + if self.bwd_stmatrix {
                " bwd-stmatrix"
            } else {
                ""
            }
            + if self.bwd_desc { " bwd-desc" } else { "" }
            + if self.bwd_ds_unguarded {
                " bwd-ds-unguarded"
            } else {
                ""
            }
            + if self.bwd_desc64 { " bwd-desc64" } else { "" }
            + if self.bwd_affine_unguarded {
                " bwd-affine-unguarded"
            } else {
                ""
            }
            + if self.bwd_two_writers {
                " bwd-two-writers"
            } else {
                ""
            }
            + if self.bwd_store_pairs {
                " bwd-store-pairs"
            } else {
                ""
            }
            + if self.bwd_pingpong {
                " bwd-pingpong"
            } else {
                ""
            }
            + if self.bwd_ping_next {
                " bwd-ping-next"
            } else {
                ""
            }
            + if self.bwd_stats_early {
                " bwd-stats-early"
            } else {
                ""
            }
            + if self.bwd_p_under_dp {
                " bwd-p-under-dp"
            } else {
                ""
            }
            + if self.bwd_empty_late {
                " bwd-empty-late"
            } else {
                ""
            }
            + if self.bwd_dv_early {
                " bwd-dv-early"
            } else {
                ""
            }
            + if self.bwd_xchg { " bwd-xchg" } else { "" }
            + if self.bwd_dq_pair { " bwd-dq-pair" } else { "" }
            + if self.bwd_dv_chunks {
                " bwd-dv-chunks"
            } else {
                ""
            }
            + if self.bwd_dk_chunks {
                " bwd-dk-chunks"
            } else {
                ""
            }
            + &if self.bwd_exp_emu != 0 {
                format!(" bwd-exp-emu={}", self.bwd_exp_emu)
            } else {
                String::new()
            }
            + &if self.bwd_stat_acc != 0 {
                format!(" bwd-stat-acc={}", self.bwd_stat_acc)
            } else {
                String::new()
            }
            + if self.bwd_s_ahead { " bwd-s-ahead" } else { "" }
            + if self.bwd_stats_bulk {
                " bwd-stats-bulk"
            } else {
                ""
            }
            + &if self.bwd_writer_regs != 0 {
                format!(" bwd-writer-regs={}", self.bwd_writer_regs)
            } else {
                String::new()
            }
            + if self.bwd_band_keep {
                " bwd-band-keep"
            } else {
                ""
            }
            + if self.uniform_reads {
                " uniform-reads"
            } else {
                ""
            }
            + if self.bwd_uniform_reads {
                " bwd-uniform-reads"
            } else {
                ""
            }
            + if self.bwd_visit_rec {
                " bwd-visit-rec"
            } else {
                ""
            }
            + if self.bwd_convert_wide {
                " bwd-convert-wide"
            } else {
                ""
            }
            + if self.bwd_pdl { " bwd-pdl" } else { "" }
            + if self.bwd_convert_early {
                " bwd-convert-early"
            } else {
                ""
            }
            + if self.bwd_convert_timeout_now {
                " bwd-convert-timeout-now"
            } else {
                ""
            }
            + if self.float_positions { " fpos" } else { "" }
            + &if self.decode_copy != 0 {
                format!(" decode-copy={}", self.decode_copy)
            } else {
                String::new()
            }
    }
    pub(crate) fn validate(&self) -> Result<(), LlvmError> {
        // the swizzled tiles index 16-byte chunks with shifts and masks and XOR the chunk
        // with the row: D / 8 must be a power of two (D = 96 addressed past its rows and
        // faulted on an H200)
        let dim_ok = |x: u32| HEAD_DIMS.contains(&x);
        if !dim_ok(self.d) || !dim_ok(self.dv) {
            return Err(LlvmError::Unsupported(format!(
                "head dims D={} Dv={}: the PTX backend supports 16, 32, 64, 128 and 256 (the CPU backend takes any); zeros appended to q's, k's and v's rows up to one of those change nothing but the cost (pass the true head dim's scale and keep O's first Dv columns: the runtime's bindings (`attnc::head_pad`) and the Python package pad by themselves)",
                self.d, self.dv
            )));
        }
        let ws192 = self.ws && self.q_block == 192 && self.d.max(self.dv) <= 64;
        // 80: the fused backward's q tiles of 80 (`backward::fused::q80_fits`)
        let bwd80 = self.q_block == 80 && backward::fused::q80_fits(self);
        if !(matches!(self.q_block, 64 | 128) || ws192 || bwd80)
            || !matches!(self.kv_block, 32 | 64 | 128)
        {
            return Err(LlvmError::Unsupported(format!(
                "tile {}x{}: q_block must be 64 or 128 (192: the warp-specialized kernel at D, Dv 64; 80: the fused backward at D128) and kv_block 32, 64 or 128",
                self.q_block, self.kv_block
            )));
        }
        if !matches!(self.m_tiles, 1 | 2)
            || !(matches!(self.compute_threads(), 64 | 128 | 256) || ws192 || bwd80)
        {
            return Err(LlvmError::Unsupported(format!(
                "{} m-tiles per warp with a q block of {}: needs 1 or 2 m-tiles and 2, 4 or 8 warps",
                self.m_tiles, self.q_block
            )));
        }
        if self.persistent && !self.ws {
            return Err(LlvmError::Unsupported(
                "persistent CTAs are an option of the warp-specialized kernel (ws)".into(),
            ));
        }
        if self.dynamic_tiles && !self.persistent {
            return Err(LlvmError::Unsupported(
                "dynamic tiles are an option of persistent CTAs (persistent)".into(),
            ));
        }
        if ![1, 2, 4].contains(&self.producers) {
            return Err(LlvmError::Unsupported(format!(
                "{} producer threads: 1, 2 or 4",
                self.producers
            )));
        }
        if self.tail_split && (!self.persistent || self.dynamic_tiles) {
            return Err(LlvmError::Unsupported(
                "the last tiles split along kv (tail_split) are an option of persistent CTAs in static rounds (persistent, not dynamic_tiles)".into(),
            ));
        }
        if self.early_claim && !self.dynamic_tiles {
            return Err(LlvmError::Unsupported(
                "the early claim (early_claim) is an option of the dynamic tile scheduler (dynamic_tiles)".into(),
            ));
        }
        if self.q_ahead && (!self.dynamic_tiles || !self.q_double || self.cross_tile) {
            return Err(LlvmError::Unsupported(
                "the next tile's Q ahead (q_ahead) is an option of the dynamic tile scheduler with two Q buffers (dynamic_tiles, q_double), not with cross_tile".into(),
            ));
        }
        if self.o_tma
            && (!self.dynamic_tiles || self.dv != 128 || self.d > 128 || self.q_block != 128)
        {
            return Err(LlvmError::Unsupported(format!(
                "O through shared memory and TMA (o_tma) is an option of the dynamic tile scheduler (dynamic_tiles) with q blocks of 128 at Dv 128, D <= 128 (got q {} D {} Dv {})",
                self.q_block, self.d, self.dv
            )));
        }
        if self.cross_tile && !self.dynamic_tiles {
            return Err(LlvmError::Unsupported(
                "the cross-tile issue (cross_tile) is an option of the dynamic tile scheduler (dynamic_tiles)".into(),
            ));
        }
        if self.q_double && !self.persistent {
            return Err(LlvmError::Unsupported(
                "two Q buffers (q_double) are an option of persistent CTAs (persistent)".into(),
            ));
        }
        if self.q_from_end && !self.ws {
            return Err(LlvmError::Unsupported(
                "q blocks from the end (q_from_end) are an option of the warp-specialized kernel (ws)".into(),
            ));
        }
        if self.overlap && self.mma != Mma::Wgmma {
            return Err(LlvmError::Unsupported(
                "overlap (the pipelined P V) is a wgmma-path option".into(),
            ));
        }
        if self.mma == Mma::Wgmma {
            if self.arch != Arch::Sm90 {
                return Err(LlvmError::Unsupported(format!(
                    "wgmma needs sm_90 (the kernel targets sm_90a), not {}",
                    self.arch
                )));
            }
            let ok = |x: u32| x.is_multiple_of(64) && x <= 256;
            if !ok(self.d) || !ok(self.dv) {
                return Err(LlvmError::Unsupported(format!(
                    "head dims D={} Dv={}: the wgmma kernel supports multiples of 64 up to 256",
                    self.d, self.dv
                )));
            }
            if self.m_tiles != 1
                || !(matches!(self.q_block, 64 | 128) || ws192 || bwd80)
                || !matches!(self.kv_block, 64 | 128)
            {
                return Err(LlvmError::Unsupported(format!(
                    "wgmma tile {}x{} with {} m-tiles: needs q_block 64 or 128, kv_block 64 or 128 and 1 m-tile",
                    self.q_block, self.kv_block, self.m_tiles
                )));
            }
        }
        if self.ws
            && (self.mma != Mma::Wgmma
                || !(self.q_block == 128 || ws192)
                || !matches!(self.stages, 2..=4)
                || self.d.max(self.dv) > 256)
        {
            return Err(LlvmError::Unsupported(format!(
                "the warp-specialized schedule needs wgmma, q_block 128 (or 192 at D, Dv <= 64), 2..=4 stages and D, Dv <= 256 (got {} q {} stages {} D {} Dv {})",
                if self.mma == Mma::Wgmma {
                    "wgmma"
                } else {
                    "mma.sync"
                },
                self.q_block,
                self.stages,
                self.d,
                self.dv
            )));
        }
        // Q and the K/V ring in the 227 KB of shared memory a CTA may have
        let ring = self.q_block * self.d * 2 * (1 + self.q_double as u32)
            + self.stages * self.kv_block * (self.d + self.dv) * 2
            + if self.o_tma {
                self.q_block * self.dv * 2
            } else {
                0
            }
            + 1024;
        if self.ws && ring > 227 * 1024 {
            return Err(LlvmError::Unsupported(format!(
                "{} K/V stages of {} rows at D={} Dv={}{} need {ring} bytes of shared memory (at most 232448)",
                self.stages,
                self.kv_block,
                self.d,
                self.dv,
                match (self.q_double, self.o_tma) {
                    (true, true) => " with two Q buffers and O's staging buffer (o_tma)",
                    (true, false) => " with two Q buffers",
                    (false, true) => " with O's staging buffer (o_tma)",
                    (false, false) => "",
                }
            )));
        }
        // (the fused backward's q tiles of 80 copy K and V over its kv tile's 256 threads)
        if bwd80 {
            return Ok(());
        }
        let threads = self.compute_threads();
        for (what, rows, cols) in [
            ("Q", self.q_block, self.d),
            ("K", self.kv_block, self.d),
            ("V", self.kv_block, self.dv),
        ] {
            // (the warp-specialized kernel loads K and V with TMA; its consumers touch
            // only Q's chunks, to negate them)
            if (rows * cols / 8) % threads != 0 && !(self.ws && what != "Q") {
                return Err(LlvmError::Unsupported(format!(
                    "{what} tile {rows}x{cols} does not split over {threads} threads"
                )));
            }
        }
        Ok(())
    }
}

/// One kernel parameter, in launch order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelParam {
    /// `Q[B, Hq, Lq, D]` (input type).
    Q,
    /// `K[B, Hkv, Lkv, D]`.
    K,
    /// `V[B, Hkv, Lkv, Dv]`.
    V,
    /// `O[B, Hq, Lq, Dv]` (input type, written).
    O,
    /// `LSE[B, Hq, Lq]` (f32, natural log, written).
    Lse,
    /// `u32` (begin, end) pair per block-table row (`BlockMaps::flatten`): row `r`'s
    /// runs are `runs[row_start[2 r] .. row_start[2 r + 1]]`; table kernels only
    /// ([`KvBounds::Table`]).
    RowStart,
    /// `u32` triples (start, end, full) of the flattened block maps; table kernels only.
    Runs,
    /// i64 offset `k` of constraint `i` of the closed form (`bounds::kernel_offsets`);
    /// closed-form kernels ([`KvBounds::ClosedForm`]), and block-table builders with a
    /// [`KernelSpec::table_skip`] form (offset of its constraint `i`).
    KvOffset(u32),
    /// i32: non-zero makes every kv block of every q block partial (the host sets it
    /// when the mask's i32 arithmetic may wrap for the launch's lengths and params, so
    /// the exact closed form does not describe it); closed-form kernels with a mask, and
    /// block-table builders with a `table_skip` form (non-zero: skip no tile).
    KvAllPartial,
    /// Runtime params, one 32-bit word each (i32, f32 bits, bool as 0/1).
    Params,
    /// `u32[8]` error words (checked mode; zeroed by the host; unused in fast mode).
    Err,
    /// Captured tensor `i` as i32 or f32 elements (at least one element).
    Tensor(u32),
    /// i32 scalars:
    Lq,
    Lkv,
    Hq,
    Hkv,
    /// Number of q blocks (`ceil(Lq / q_block)`), also the rows of each map.
    NumQBlocks,
    /// `B` (the persistent warp-specialized forward: its tiles are NumQBlocks x Hq x B).
    Batch,
    /// Map index of slice (b, h) is `b * MapBStride + h * MapHStride` (table kernels).
    MapBStride,
    MapHStride,
    /// f32 softmax scale.
    Scale,
    /// Size of dim `dim` of captured tensor `tensor` (i32).
    TensorDim {
        tensor: u32,
        dim: u32,
    },
    /// The warp-specialized forward (`PtxOptions::ws`): TMA tensor maps (`CUtensorMap`,
    /// 128 bytes, passed by value as 64-byte-aligned grid constants) of Q, K and V viewed
    /// as `[B*H, L, D]` with D innermost, boxes of 64 columns by `q_block` (Q) or
    /// `kv_block` (K, V) rows, 128-byte swizzle, rows past `L` zero-filled. The runtime
    /// makes them from the Q/K/V pointers and the launch's shape.
    TmaQ,
    TmaK,
    TmaV,
    /// The warp-specialized forward with [`PtxOptions::o_tma`]: the tensor map of O
    /// (`[B*Hq, Lq, Dv]`, boxes of 64 columns by 64 rows, one consumer warpgroup's, the
    /// 128-byte swizzle), written by TMA stores; rows outside `0..Lq` are not written.
    TmaO,
    /// Backward kernels (`backward.rs`): `dO[B, Hq, Lq, Dv]` (input type).
    DOut,
    /// f32 `[B, Hq, Lq]`: `rowsum(dO ∘ O) − dLSE` (written by the pre kernel).
    Delta,
    /// f32 `[B, Hq, Lq]`: `LSE log2 e`, +inf for fully masked rows (written by the pre kernel).
    Lse2,
    /// f32 `[B, Hq, Lq]`: the LSE's incoming gradient (read only when `HasDLse` is non-zero).
    DLse,
    /// i32: non-zero when `DLse` is given.
    HasDLse,
    /// The fused backward with [`PtxOptions::bwd_tma`]: the TMA tensor map of dO, as
    /// [`KernelParam::TmaQ`] (`[B*Hq, Lq, Dv]`, boxes of 64 columns by `q_block` rows).
    TmaDo,
    /// Outputs of the backward: `dQ` (like Q), `dK` (like K), `dV` (like V), input type.
    DQ,
    DK,
    DV,
    /// i64: `B * Hq * Lq`, the rows of the pre kernel.
    Rows,
    /// Backward kernels of masks without a closed form: i32 quadruples `[first, end,
    /// full_first, full_end]` of blocks per (map, row) (`backward.rs`), indexed by
    /// `(b * MapBStride + head * MapHStride) * rows + row`. The decode kernel: `i32[B, 2]`,
    /// the positions `lo..hi` each sequence's mask can reach (`decode.rs`).
    Ranges,
    /// The backward-ranges kernel's second output (`backward/ranges.rs`): the dK/dV
    /// kernel's `Ranges`, per (b, kv head) map and kv block.
    KvRanges,
    /// Backward dQ kernel of a score that reads captured tensor `i` differentiably: its
    /// gradient in fixed point, three u64 words per element (`backward.rs`, "Capture
    /// gradients"); zeroed by the host before the launch.
    TensorGrad(u32),
    /// The same for the f32 params the score reads differentiably: three u64 words per
    /// param of the program.
    ParamGrad,
    /// The fused backward (`BwdDq::Ordered`/`Atomic`, `backward/fused.rs`): f32 dQ
    /// partial sums, `[B, Hq, ceil(Lq / q_block)]` tiles of `q_block x D` in the
    /// accumulator-fragment order; written by the dK/dV kernel, read by the dQ kernel.
    DqAccum,
    /// u32 `[B, Hq, ceil(Lq / q_block)]`: how many kv blocks have added their part to each
    /// dQ tile (zeroed by the host before the dK/dV kernel).
    DqSem,
    /// Decode kernels (`decode.rs`): `i32[B, max_pages]` (paged; any one-element buffer
    /// for a contiguous cache).
    PageTable,
    /// `i32[B]`: each sequence's length.
    SeqLens,
    /// The forward with [`PtxOptions::doc_tiles`]: `i32[tiles, 4]`, per tile `(b, row0,
    /// rows, qi)`: its batch, its document's first row and length, and its q block within
    /// the document (the grid's x axis walks the list: [`GridDim::DocTiles`]). The fused
    /// backward with [`PtxOptions::bwd_doc_tiles`]: the same layout for its kv tiles,
    /// `(b, row0, rows, kj)` with `kj` in kv blocks.
    DocTiles,
    /// i32: the fused backward with [`PtxOptions::bwd_doc_tiles`]: the entries of
    /// [`KernelParam::DocTiles`] (its kv tiles per kv head).
    NumDocTiles,
    /// f32 partials of the splits: `[B, Hkv, row_groups, splits, rows, Dv]` / `[.., rows]`.
    PartO,
    PartLse,
    /// i32 scalars of the decode kernels: `Hq / Hkv`; row groups per kv head
    /// (`ceil(G * Lq / rows)`); splits; positions per split; contiguous: `Lkv_max`;
    /// paged: `log2(page_size)`, `max_pages`, `num_pages`.
    Group,
    RowGroups,
    Splits,
    Chunk,
    LkvMax,
    PageShift,
    MaxPages,
    NumPages,
    /// u32 `[B, Hkv, row_groups]`: splits of each (b, kv head, row group) that have
    /// written their partials ([`KernelKind::DecodeMmaFused`](crate::backend::KernelKind::DecodeMmaFused);
    /// zero before the first launch, reset to zero by the CTA that merges). The plain
    /// tensor-core decode kernel with `decode_mma::COPY_STEAL`: word 0 counts the work
    /// items handed out (zero before the first launch, reset to zero by the launch's
    /// last CTA).
    DecodeSem,
    /// i32: keys per stolen split of the tensor-core decode kernel with
    /// `decode_mma::COPY_STEAL` (the splits from `nctaid.x` on; a multiple of 64).
    StealChunk,
    /// u32 `[2 + 2 SMs]` ([`PtxOptions::tile_counter_words`]) of the persistent forward:
    /// with `PtxOptions::dynamic_tiles` words 0 and 1, the next tile to hand out (beyond
    /// each CTA's first) and the CTAs done, reset to zero by the last CTA of each launch;
    /// with `PtxOptions::tail_split` word `2 + k`, the kv blocks of split tile `k` done,
    /// reset to zero by the CTA that merges the tile. Zero before the first launch.
    TileCounter,
    /// f32 workspace of `PtxOptions::tail_split` ([`PtxOptions::tail_work_floats`]): the
    /// pieces' O, m and l, two slots per CTA, written and read in one launch.
    TailWork,
}

/// A generated kernel: its launch description ([`KernelSpec`], also through `Deref`) and
/// its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxKernel {
    pub spec: KernelSpec,
    pub ptx: String,
    /// The optimized LLVM IR (empty when generated with [`EmitText::PtxOnly`]).
    pub llvm_ir: String,
}

impl std::ops::Deref for PtxKernel {
    type Target = KernelSpec;
    fn deref(&self) -> &KernelSpec {
        &self.spec
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlvmError {
    #[error("unsupported kernel configuration: {0}")]
    Unsupported(String),
    #[error("LLVM builder: {0}")]
    Builder(String),
    #[error("LLVM: {0}")]
    Llvm(String),
    #[error("internal error in the PTX generator: {0}")]
    Internal(&'static str),
}

impl From<inkwell::builder::BuilderError> for LlvmError {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        LlvmError::Builder(e.to_string())
    }
}

/// Where the time of one [`generate`] went, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EmitTimes {
    /// Target machine + building the kernel's LLVM IR with inkwell + module verification.
    pub build_ms: f64,
    /// The LLVM pass pipeline (`PASSES`).
    pub opt_ms: f64,
    /// NVPTX code generation (instruction selection, register allocation, PTX printing).
    pub ptx_ms: f64,
    /// Everything, including printing the LLVM IR text when it was asked for.
    pub total_ms: f64,
}

/// What [`generate`] produces besides PTX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitText {
    /// PTX only (`llvm_ir` left empty): what a JIT needs.
    PtxOnly,
    /// PTX and the optimized LLVM IR text.
    PtxAndLlvm,
}

/// The version of the LLVM attnc is linked with (major, minor, patch), for `--version`.
pub fn llvm_version() -> (u32, u32, u32) {
    inkwell::support::get_llvm_version()
}

/// Runs `build` on a fresh NVPTX module for `opts.arch`, verifies it, runs the pass
/// pipeline and returns (PTX, LLVM IR text (empty with [`EmitText::PtxOnly`]), the time
/// of each stage).
fn run_pipeline(
    program: &Program,
    opts: &PtxOptions,
    entry: &str,
    passes: &str,
    text: EmitText,
    build: impl for<'ctx> FnOnce(
        &'ctx Context,
        inkwell::module::Module<'ctx>,
    ) -> Result<inkwell::module::Module<'ctx>, LlvmError>,
) -> Result<(String, String, EmitTimes), LlvmError> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| Target::initialize_nvptx(&InitializationConfig::default()));
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(|e| LlvmError::Llvm(e.to_string()))?;
    // Codegen level `Less` (O1), not `Aggressive`: the PTX of every example (62 kernels
    // for each of sm_80 and sm_90 at D 64 and 128) is byte-identical, and `attnc emit ptx`
    // takes about 6% less CPU time (0.71 s against 0.76 s for 8 kernels). `None` makes
    // NVPTX code generation 3x faster but changes the PTX (no FMA contraction, 5x the
    // moves), so it is not used.
    let tm = target
        .create_target_machine(
            &triple,
            opts.target_cpu(),
            // the fused backward's vector reductions (`red.global.add.v4.f32`) need PTX 8.1
            if opts.bwd_dq != BwdDq::Separate && opts.arch == Arch::Sm90 {
                "+ptx81"
            } else {
                opts.arch.ptx_feature()
            },
            OptimizationLevel::Less,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| LlvmError::Llvm("cannot create the NVPTX target machine".into()))?;
    let ctx = Context::create();
    let module = ctx.create_module(&format!("attnc_{}", program.name));
    module.set_triple(&triple);
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let module = build(&ctx, module)?;
    if let Ok(path) = std::env::var("ATTNC_DUMP_LL") {
        let _ = std::fs::write(path, module.print_to_string().to_string());
    }
    module.verify().map_err(|e| {
        let mut e = e.to_string();
        e.truncate(2000);
        LlvmError::Llvm(format!("module verification failed: {e}"))
    })?;
    let build_ms = ms(t0);
    let t1 = std::time::Instant::now();
    let pbo = PassBuilderOptions::create();
    module
        .run_passes(passes, &tm, pbo)
        .map_err(|e| LlvmError::Llvm(e.to_string()))?;
    let opt_ms = ms(t1);
    let llvm_ir = match text {
        EmitText::PtxAndLlvm => module.print_to_string().to_string(),
        EmitText::PtxOnly => String::new(),
    };
    let t2 = std::time::Instant::now();
    let buf = tm
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| LlvmError::Llvm(e.to_string()))?;
    let ptx = String::from_utf8_lossy(buf.as_slice())
        .trim_end_matches('\0')
        .to_string();
    let ptx_ms = ms(t2);
    if !ptx.contains(&format!(".entry {entry}")) {
        return Err(LlvmError::Internal(
            "the kernel was not emitted as a .entry",
        ));
    }
    let times = EmitTimes {
        build_ms,
        opt_ms,
        ptx_ms,
        total_ms: ms(t0),
    };
    Ok((ptx, llvm_ir, times))
}

/// The LLVM pass pipeline. The kernel is straight-line code per loop iteration built
/// from allocas (with the loop-invariant address math already written outside the hot
/// path), so promotion, CSE, combining and GVN are all it needs; measured on an H200
/// (bf16, D128 128x64x2): 375 TFLOP/s dense and no spills, against 363 with 40-byte
/// spills for `default<O1>` and about 350 for O2/O3 (LICM hoists per-copy addresses
/// into registers), and a cold compile of about 80 ms instead of 100-115.
///
/// instcombine runs without its fixpoint check (`<no-verify-fixpoint>`) in every pipeline
/// of this backend: LLVM 22 reports, as a fatal error that aborts the process, any
/// function on which one instcombine run did not reach its fixpoint — a check of LLVM's
/// own convergence, not of the code, which the second `instcombine` finishes. User
/// programs reach it (session 36: Morton-order bit interleaving over a 64 x 64 canvas;
/// earlier `cross_tile` / `q_ahead` kernels, the backward, decoding, f16).
pub(super) const PASSES: &str = "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,gvn,instcombine<no-verify-fixpoint>)";

/// The block-table kernel's pipeline: [`PASSES`] plus loop-invariant code motion, which
/// takes the kv-only reads of a mask (`doc[b, kv]`) out of the loop over a tile's rows.
const TABLE_PASSES: &str = "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,loop-mssa(licm),gvn,instcombine<no-verify-fixpoint>)";

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests;
