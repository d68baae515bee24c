//! The GPU backward pass: three kernels per attention, FlashAttention-2 structure,
//! deterministic (no float atomics; every output element is written by one thread once).
//!
//! In: a verified [`Program`] (its score's derivative `∂score/∂s` comes from the
//! derivative pass, `grad::differentiate`, lowered with the forward's expression lowering
//! `expr.rs`), [`PtxOptions`] (arch,
//! head dims, input type, `q_block` = Br rows of Q per tile, `kv_block` = Bc rows of K/V
//! per tile, checked mode; the mma.sync path) and the [`BackwardKind`].
//! Out: a [`PtxKernel`] (PTX, entry, threads, shared memory, parameter order).
//!
//! With `L2 = LSE log2 e` (+inf for a fully masked row, so that its P is 0), and
//! `t = score(scale s)` (or `scale s` without a score function):
//! ```text
//! Pre  (one thread group of `lanes` per row):   Delta = rowsum(dO ∘ O) − dLSE,  Lse2 = L2
//! DkDv (CTA per (kv block, kv head, batch); warp w owns kv rows 16w..16w+15 of the block):
//!   cp.async K, V tiles;  dK = dV = 0 (f32 registers)
//!   for each query head h of the kv head's group (GQA: sums stay in registers),
//!     for each q block i of this kv block's q range (closed form of the mask's linear
//!     constraints with the roles of q and kv swapped, or every q block):
//!       (Q_i, dO_i, L2_i, Delta_i double-buffered: block i+1 is copied while i computes)
//!       Sᵀ = K Q_iᵀ;  Pᵀ = 2^(t log2 e − L2)   (mask / bounds only in partial blocks)
//!       dPᵀ = V dO_iᵀ;  dSᵀ = Pᵀ ∘ (dPᵀ − Delta) ∘ score'(scale s)   (0 where P = 0)
//!       dV += Pᵀ dO_i;  dK += dSᵀ Q_i        (P, dS rounded to the input type)
//!   dK *= scale; store dK, dV (input type)
//! Dq   (CTA per (q block, query head, batch); warp w owns q rows 16w..16w+15):
//!   cp.async Q, dO tiles; for each kv block j of the q block's runs (closed form as the
//!   forward kernel's, or every kv block), K_j/V_j double-buffered:
//!       S = Q K_jᵀ;  P, dP = dO V_jᵀ, dS as above;  dQ += dS K_j
//!   dQ *= scale; store dQ (input type)
//! ```
//! Products are `mma.sync` m16n8k16 with operands through `ldmatrix` from the row-swizzled
//! tiles of `gpu.rs` (`.trans` where the tile's rows are the reduction dimension); the
//! accumulators of P and dS become A fragments in registers, as P does in the forward.
//! On sm_90 (`Mma::Wgmma`, the default there at D, Dv 64/128) each product is a Hopper
//! `wgmma` per warpgroup of 64 rows instead: the tiles are 128-byte-swizzled slabs
//! (`SmemTile::slab`), `Sᵀ = K Qᵀ`, `dPᵀ = V dOᵀ` (dK/dV) and `S = Q Kᵀ`, `dP = dO Vᵀ` (dQ)
//! read both operands K-major from shared memory, and `dV += Pᵀ dO`, `dK += dSᵀ Q`,
//! `dQ += dS K` take P / dS from registers and the other operand N-major (`trans-b`).
//! The accumulator layout per warp is the mma.sync one, so everything between the
//! products is shared. Measured on an H200 (bf16, B2 H16 L8192 D128, whole backward):
//! dense 233 -> 388 TFLOP/s, causal 224 -> 371; D64 (B4 L4096) dense 206 -> 292.
//! Full blocks skip the mask and the bounds checks; partial blocks (and the blocks at the
//! end of either sequence) evaluate the mask at every element.
//!
//! ## Head dim 256 (sm_90, session 29)
//!
//! The two-kernel path on wgmma. A warpgroup's 64 kv rows of dK and dV at 256 columns
//! would need 256 accumulator registers per thread, so the dK/dV kernel runs two
//! warpgroups on one kv tile, each accumulating half of dK's and dV's columns
//! (`dkdv_parts`); at D = Dv one computes Sᵀ and the other dPᵀ, exchanged through shared
//! memory thread to thread (`PtxOptions::bwd_xchg`). The dQ kernel takes two q tiles per
//! CTA on closed-form bounds (`PtxOptions::bwd_dq_pair`: two warpgroups, K double- and V
//! single-buffered). Both fit the 227 KiB of an sm_90 CTA's shared memory.
//!
//! On mma.sync (sm_80, session 31) the same split with warps: the dK/dV kernel's eight
//! warps hold kv rows `16 (w % 4) ..` of column part `w / 4` (FlashAttention-2's 8-warp
//! hdim-256 tile), each computing Sᵀ and dPᵀ of its rows over the whole head dim with
//! A's fragments read one k-step at a time, with one (Q, dO, L2, Delta) buffer whose next
//! copies are issued once every warp has read it; the dQ kernel keeps one V and two K
//! buffers (the next V copied after every warp's dP). Both fit an A100's 163 KiB
//! ([`single_buffer`], [`SM80_SMEM_BYTES`]); ptxas 13.0 sm_80: the dK/dV kernel 255
//! registers, no spills; the dQ kernel 64-96 bytes of spill stores.
//!
//! ## Capture gradients
//!
//! When the score reads captured f32/f16/bf16 tensors or f32 params differentiably
//! ([`capture_grads`]), the dQ kernel also computes their gradients: it evaluates the
//! derivative IR of `grad::differentiate` (score, `∂score/∂s`, and per read site its
//! guard, indices and partial; per param its partial; one CSE'd function, emitted once per
//! element) and, per kept element with `g = dS' = P (dP − Delta)` (in f32, before the
//! rounding of dS to the input type):
//! - read site r whose guard holds: adds `g · partial_r` to element `flat(clamp(indices))`
//!   (the element the forward read) of the tensor's gradient [`KernelParam::TensorGrad`];
//!   consecutive contributions of a thread to the same element (in its fixed order over
//!   the tile's fragment) are summed in registers first (f32, that fixed order) and
//!   sent as one fixed-point contribution (`Run`: the clamped ends of a
//!   relative-position table, T5 buckets); at the end of a tile, when every lane's
//!   pending run names one element, the warp sums their words (integers, butterfly) and
//!   one lane sends them: one atomic pair per warp instead of 32;
//! - param i: adds `g · partial_i` to a per-thread f32 sum; after the kv loop a warp sums
//!   its lanes' sums (butterfly, fixed order) and lane 0 adds the result to
//!   [`KernelParam::ParamGrad`].
//!
//! With [`PtxOptions::bwd_uniform_reads`] (the fused kernel) a visit whose reads are each
//! one element over its box of positions (`uniform`: a relative-position table or T5's
//! buckets away from the diagonal) takes, on full blocks, a path that reads each table
//! element once, adds every element's contribution to one run per read site (the thread's
//! fixed order) and flushes those runs as above: no index, gather or run test per element.
//! The other full blocks of such a kernel take the partial blocks' path. The fused
//! kernel's element paths make their positions themselves wherever it sums capture
//! gradients (`ElemCtx::fresh_pos`): ptxas then spills less in every visit (T5's backward
//! 1.19x, a learned `[B, H, Q, KV]` bias's 1.05x on an H100).
//!
//! Deterministic without ordering the additions: every gradient element is three u64
//! words `[hi, lo, flags]` summed with integer atomics (`atom.global.add.u64`, `or.b64`),
//! which are associative. A finite contribution `c` is split exactly (in f64) into
//! `hi = floor(c 2^32)` (i64, two's complement) and `lo = rint(frac(c 2^32) 2^28)` in
//! `0..=2^28`, so the element is `Σhi 2^-32 + Σlo 2^-60` (the host combines the words in
//! i128 and rounds once to f32, [`fixed_to_f32`]); a non-finite one sets a flag (1: +inf,
//! 2: −inf, 4: NaN). Limits (documented, not checked): each contribution and the sum must
//! lie within ±2^31, contributions below 2^-60 in magnitude are lost, and at most 2^35
//! contributions may reach one element (the `lo` sum stays below 2^64). The atomics
//! contend where many elements hit one gradient element (a T5 bucket table): correct,
//! not fast.
//!
//! Masks without a closed form ([`KvBounds::Table`]) read per-row block ranges built by
//! the host from the block maps ([`KernelParam::Ranges`]: `[first, end, full_first,
//! full_end]` per row; for dK/dV the transposed view, per kv head the union over its
//! query heads): blocks in `first..end` outside the full range are evaluated as partial.

mod convert;
pub(crate) mod fused;
pub(crate) mod ranges;

use super::bounds::{KvBounds, RowRuns, RunSource, block_range};
use super::cta::Args;
use super::expr::{
    Elem, Env, PosF, emit_function, emit_function_at, emit_values_at, emit_values_hoisted,
    flat_index,
};
use super::gpu::{GLOBAL, Gpu, R, SmemTile, Var, WgmmaA};
use super::launch_spec::{GridDim, KernelSpec};
use super::uniform::{self, TileBox};
use super::{
    BwdDq, InputType, KernelParam, LlvmError, Mma, PASSES, PtxKernel, PtxOptions, sanitize,
};
use crate::backend::KernelKind;
use crate::ir::{Function, Program};
use crate::plan::Plan;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, AtomicOrdering, AtomicRMWBinOp, FloatPredicate, IntPredicate};

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// The three backward kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackwardKind {
    /// `Delta = rowsum(dO ∘ O) − dLSE` and `Lse2 = LSE log2 e` (+inf where LSE = −inf).
    Pre,
    /// dK and dV, one CTA per (kv block, kv head, batch).
    DkDv,
    /// dQ, one CTA per (q block, query head, batch).
    Dq,
}

impl BackwardKind {
    pub fn name(self) -> &'static str {
        match self {
            BackwardKind::Pre => "bwd_pre",
            BackwardKind::DkDv => "bwd_dkdv",
            BackwardKind::Dq => "bwd_dq",
        }
    }
}

/// [`PtxOptions::bwd_convert_early`]: the bit the last adder of a dQ tile adds to the
/// tile's semaphore with its increment (no adder waits for a count that high).
pub const DQ_DONE_FLAG: u32 = 1 << 31;

/// Whether kernels built with `o` convert each dQ tile once its last addition is done
/// ([`PtxOptions::bwd_convert_early`] where it applies: with `bwd_pdl`, ordered bulk
/// additions, not `bwd_dq_free`, not `bwd_persist`). Their `DqSem` has one more word
/// (the writers' done count, after the tiles' semaphores).
pub fn convert_early(o: &PtxOptions) -> bool {
    o.bwd_pdl
        && o.bwd_convert_early
        && o.bwd_dq == BwdDq::OrderedBulk
        && !o.bwd_dq_free
        && (!o.bwd_persist || o.bwd_persist_dyn)
}

/// Whether kernels built with `o` take their kv tiles from a global counter
/// ([`PtxOptions::bwd_persist_dyn`] with persistent CTAs, the fused scheme with the TMA
/// producer). Their `DqSem` has three words after the tiles' semaphores (the writers'
/// done count, the conversions' fallback count, then the tile counter:
/// [`DQ_TILE_COUNTER`]).
pub fn persist_dyn(o: &PtxOptions) -> bool {
    o.bwd_persist && o.bwd_persist_dyn && fused::tma_producer(o)
}

/// Whether `n` is a [`PtxOptions::bwd_writer_regs`] the fused kernel takes (0, the
/// default, or a multiple of 8 in 24..=56; the kernel refuses others).
pub use fused::writer_regs_allowed;

/// [`persist_dyn`]: the tile counter's word in `DqSem`, after the tiles' semaphores.
pub const DQ_TILE_COUNTER: u32 = 2;

/// [`PtxOptions::bwd_pdl`] where it applies (a fused scheme).
pub fn pdl(o: &PtxOptions) -> bool {
    o.bwd_pdl && o.bwd_dq != BwdDq::Separate
}

/// Rows of the pre kernel per CTA (128 threads, `lanes` threads per row).
pub fn pre_rows_per_cta(dv: u32) -> u32 {
    128 / pre_lanes(dv)
}

/// Threads per row of the pre kernel: one 16-byte chunk each per step, at most 8.
fn pre_lanes(dv: u32) -> u32 {
    (dv / 8).clamp(1, 8)
}

impl PtxOptions {
    /// The backward kernels' defaults: Br = Bc = 64 (4 warps of 16 rows), dQ by a second
    /// kernel; on sm_90 with D, Dv in {64, 128} the wgmma products (sm_90a), and at D128
    /// (and D = Dv = 64 since session 9)
    /// dQ fused into the dK/dV kernel, deterministic, its additions made by a writer
    /// warpgroup ([`BwdDq::OrderedBulk`], `backward/fused.rs`, kv tiles of 128), else
    /// mma.sync. Measured on an H200 (bf16, B2 H16 L8192 D128, whole backward): dense
    /// 6.83 ms fused (`Ordered`) against 7.26 separate, causal 3.69 / 3.69, softcap + causal
    /// 4.00 / 4.24; `OrderedBulk` against `Ordered` (one call, TFLOP/s): dense 466.5 / 403.0,
    /// causal 376.4 / 368.8, softcap 346.2 / 340.6; at D64 (B4 L4096, kv tiles of 64, one
    /// warpgroup) fused lost: dense 3.45 against 2.35.
    ///
    /// Session 7: the fused kernel's Q and dO come from a TMA producer warp
    /// ([`PtxOptions::bwd_tma`]; one H200, one call, TFLOP/s without / with: dense
    /// 459.3 / 549.3, causal 380.6 / 456.7, sliding 206.5 / 233.6, ALiBi + causal 323.5 /
    /// 345.1, soft-cap + causal 349.9 / 399.3, document + causal 133.4 / 143.4).
    ///
    /// Session 9: D64 takes the same kernel (kv tiles of 128, each math warpgroup computing
    /// 32 of dQ's 64 columns); one H200, one call, B4 H16 L4096 D64, TFLOP/s two kernels /
    /// fused: dense 292.5 / 335.3, causal 270.9 / 277.4, ALiBi + causal 245.6 / 285.4,
    /// soft-cap + causal 213.9 / 248.7.
    ///
    /// Session 14: the dQ conversion after the fused kernel in 64-byte pieces, every load
    /// first ([`Self::bwd_convert_wide`]; the same dQ).
    pub fn backward(arch: super::Arch, d: u32, dv: u32, input: InputType) -> Self {
        let o = Self::backward_separate(arch, d, dv, input);
        if o.mma == Mma::Wgmma && ((d == 128 && dv <= 128) || (d, dv) == (64, 64)) {
            PtxOptions {
                bwd_tma: true,
                bwd_convert_wide: true,
                ..o.backward_fused(BwdDq::OrderedBulk)
            }
        } else {
            o
        }
    }

    /// The backward with dQ by a second kernel (`BwdDq::Separate`: no workspace, what
    /// the caller-buffer entry points launch): Br = Bc = 64; wgmma on sm_90 at D, Dv
    /// 64/128 and at head dims of 256 (D, Dv in {128, 256}: dK and dV in column halves,
    /// [`dkdv_parts`]), else mma.sync.
    pub fn backward_separate(arch: super::Arch, d: u32, dv: u32, input: InputType) -> Self {
        let o = PtxOptions {
            q_block: 64,
            kv_block: 64,
            ..PtxOptions::sync(arch, d, dv, input).with_m_tiles(1)
        };
        if arch == super::Arch::Sm90 && wgmma_dims(d, dv) {
            PtxOptions {
                bwd_xchg: (d, dv) == (256, 256),
                bwd_dq_pair: d.max(dv) == 256,
                ..o.backward_wgmma()
            }
        } else {
            PtxOptions {
                bwd_xchg: (d, dv) == (256, 256),
                ..o
            }
        }
    }

    /// These backward options refined for one binding (the runtime's, as
    /// [`PtxOptions::for_binding`] for the forward): `plan`'s kv bounds and the longest of
    /// Lq, Lkv.
    /// - the fused kernel's longest-first CTA order ([`Self::bwd_lpt`]) where a kv
    ///   block's work (its q blocks) varies with the block: the causal-type ranges of
    ///   [`crate::plan::KvBounds::work_grows_with_q`]; kept off for dense (one H200, session
    ///   7, TFLOP/s with / without: dense 518.9 / 530.4, causal 468.5 / 450.5, soft-cap +
    ///   causal 412.0 / 393.1), bands and block tables (not measured);
    /// - positions as exact floats ([`Self::float_positions`]) below 2^22 positions: the
    ///   score converts `kv - q` (ALiBi) by one float subtraction of positions converted
    ///   once per row and column, not a `cvt` per element.
    /// - at D = Dv = 64 on the fused kernel (`OrderedBulk` with the TMA producer, kv tiles
    ///   of 128), q tiles of 128 (each math warpgroup computing 64 rows of dQ) with the
    ///   longest-first order, for closed-form kv ranges that are not bands and a score
    ///   that reads no positions or tensors per element and has no capture gradients
    ///   (one H200, one call, B4 H16 L4096, TFLOP/s q tiles of 64 / 128 / 128 in the
    ///   longest-first order: dense 329.8 / 347.1 / 390.0, causal 271.3 / 307.8 / 313.0,
    ///   soft-cap + causal 245.5 / 266.0 / 273.9; ALiBi + causal, which reads positions,
    ///   284.3 / 256.3 / 268.8: ptxas spills 188 bytes at 128, none at 64).
    /// - the warp-wide visit search ([`Self::bwd_wscan`]) on the fused kernel with the TMA
    ///   producer for bands (sliding windows) and block tables (document masks): a kv
    ///   block there visits a few of many q blocks (one H200, one call, bf16 TFLOP/s
    ///   without / with: D128 sliding 1024 226.8 / 289.4, document + causal 144.1 /
    ///   213.2; D64 174.6 / 188.8, 70.5 / 97.9); not with `bwd_lpt` (refused).
    ///   There also two dQ writer threads ([`Self::bwd_two_writers`]) and dK/dV stored 8
    ///   bytes per thread ([`Self::bwd_store_pairs`]): one H200, one call (session 12),
    ///   bf16 TFLOP/s without / with both (fused kernel alone, ms): D128 sliding 1024 290.1
    ///   (0.948) / 339.8 (0.782), document + causal 216.1 (0.657) / 235.2 (0.593); D64 194.8
    ///   (0.693) / 232.2 (0.575), 102.4 (0.354) / 111.2 (0.322). Two writers alone: D128
    ///   sliding 322.7 (0.824), document 222.9 (0.632).
    /// - at D64 with the TMA producer, the math warps' visit search under Sᵀ and dPᵀ
    ///   ([`Self::bwd_scan_under`]; one H200, one call, B4 H16 L4096 bf16, fused kernel
    ///   alone in ms without / with: dense 1.681 / 1.655, causal 1.019 / 0.982; ptxas
    ///   spill stores dense 28 -> 8 bytes). At D128 it gained nothing (dense 5.262 /
    ///   5.244, causal 2.865 / 2.784-2.852, ALiBi + causal 2.778 / 2.807-2.817): off.
    /// - fewer instructions in the fused kernel's visit ([`Self::bwd_stmatrix`],
    ///   [`Self::bwd_desc`], [`Self::bwd_ds_unguarded`]; ptxas sm_90a, SASS per visit of
    ///   the full-block path: D128 dense 741 -> 452, D64 dense 941 -> 634) with the TMA
    ///   producer, except for bands and block tables, capture gradients and q tiles of
    ///   128 with a score function (one H200, one call, fused kernel alone in ms without /
    ///   with: D128 dense 5.310 / 5.156, causal 2.985 / 2.833, ALiBi + causal 2.752 /
    ///   2.753, soft-cap + causal 3.219 / 3.204; D64 dense 1.631 / 1.567, causal 0.959 /
    ///   0.864, ALiBi + causal 1.097 / 1.064; D64 soft-cap + causal 1.118 / 1.226: left
    ///   out).
    /// - at D64, causal-type bindings whose score reads positions (ALiBi) on q tiles of 128
    ///   too ([`Self::backward_q128_positions`]; ptxas spills 28 bytes there now, 188
    ///   before session 12's cuts; one H200, session 13, fused kernel alone in ms q tiles
    ///   of 64 / 128: ALiBi + causal 1.080, 1.077 / 0.897), and the math warpgroups' turns
    ///   ([`Self::bwd_pingpong`]) for D64 without mask or score (dense 1.571 / 1.506-1.515;
    ///   causal, ALiBi and D128 within 1%: left out).
    /// - bands and block tables (the warp-wide search) without capture gradients: those
    ///   cuts too, each visit from the producer's record ([`Self::bwd_visit_rec`]) and a
    ///   band's partial blocks by row intervals ([`Self::bwd_band_keep`]; nothing on
    ///   tables). One H200, one call (session 13), bf16 TFLOP/s before / after (fused
    ///   kernel alone, ms): D128 sliding 1024 344.6 (0.771) / 357.6 (0.739), document +
    ///   causal 234.5 (0.597) / 244.3 (0.567); D64 232.7 (0.573) / 256.7 (0.513), 111.7
    ///   (0.320) / 119.8 (0.295). The cuts alone: 356.4 / 236.4 / 245.3 / 113.7; the
    ///   records alone 345.2 / 242.1 / 240.3 / 115.4; the row intervals alone 341.4 / - /
    ///   231.7 / - (with the records 348.3 / 244.3).
    /// - bands and block tables (the warp-wide search) on sm_90: the three kernels chained
    ///   by programmatic dependent launch ([`Self::bwd_pdl`]) and each dQ tile converted
    ///   as soon as its last addition is done ([`Self::bwd_convert_early`]), so that the
    ///   conversion runs under the fused kernel's tail. One H200, one call (session 15),
    ///   bf16 whole-backward TFLOP/s default / with both (two runs each, same process):
    ///   D128 document + causal 263.3, 263.5 / 277.9, 277.3; sliding 1024 391.3, 390.9 /
    ///   394.5, 395.3; D64 document 124.9, 123.1 / 130.0, sliding 266.7, 267.7 / 272.8.
    ///   Dense and causal within the runs' spread (D128 dense 550.1, 570.3 / 572.8,
    ///   572.7; causal 495.6, 493.5 / 492.2, 493.2; D64 dense 448.7 / 452.8, causal 378.3,
    ///   375.2 / 379.0): off there; `bwd_pdl` alone gained nothing (D128 dense 563.1,
    ///   causal 494.7, sliding 391.0, document 262.0).
    /// - at D128, the causal-type (longest-first) bindings without capture gradients: each
    ///   visit from the producer's record ([`Self::bwd_visit_rec`]), so the math warps no
    ///   longer run the scalar visit search at the top of every visit with the tensor cores
    ///   idle (ncu, session 16: ~140 instructions per warp and visit, 12% of their stall
    ///   samples). One H200, one call, whole backward TFLOP/s default / with (two runs
    ///   each): causal 488.8, 490.7 / 505.8, 506.3; ALiBi + causal 485.7, 485.1 / 496.8,
    ///   498.0; soft-cap + causal 430.6, 431.6 / 468.1, 468.9. Dense left out (its search
    ///   is one step; fused kernel 5.117, 5.177 / 5.259, 5.244 ms).
    /// - FlashAttention-4's order after the element code: dV issued before the dS barrier
    ///   ([`Self::bwd_dv_early`]) on D128 dense and, with the dQ slot's wait after the
    ///   products' issue ([`Self::bwd_empty_late`]), the D128 causal-type bindings with the
    ///   identity score or a constant derivative (session 18: dense 1.03x, causal 1.04x,
    ///   ALiBi + causal 1.035x); since session 19 both on D64's causal-type bindings on q
    ///   tiles of 128 whose score reads no positions per element (one H200, whole backward:
    ///   causal 1.02x, soft-cap + causal 1.02x) and dV early on D128 bands and block tables
    ///   (sliding 1024 1.01x, document + causal 1.015x).
    pub fn backward_for_binding(self, plan: &Plan, longest: usize) -> Self {
        let mut o = self;
        o.float_positions = super::float_positions_fit(longest);
        o.diag_cse = super::diag_cse_pays(plan);
        if fused::q128_fits(&o) && o.q_block == 64 {
            let kv = backward_bounds(plan, &o);
            if kv.is_closed_form()
                && !kv.bounds_kv_below()
                && !plan.score_reads().per_element()
                && capture_grads(plan.program()).is_empty()
            {
                o.q_block = 128;
                o.bwd_lpt = true;
            }
        }
        if o.bwd_dq != BwdDq::Separate && backward_bounds(plan, &o).work_grows_with_q() {
            o.bwd_lpt = true;
        }
        if o.bwd_dq == BwdDq::OrderedBulk && o.bwd_tma && !o.bwd_lpt {
            let kv = backward_bounds(plan, &o);
            if !kv.is_closed_form() || kv.bounds_kv_below() {
                o.bwd_wscan = true;
                o.bwd_two_writers = true;
                o.bwd_store_pairs = true;
                // session 15: the kernels chained, each dQ tile converted once added
                o.bwd_pdl = true;
                o.bwd_convert_early = true;
            }
        }
        // D64: the next visit's search under Sᵀ and dPᵀ (as bwd_wscan's); D128 gained
        // nothing (docs/performance.md, "Session 11 (bwd)")
        o.bwd_scan_under = fused::tma_producer(&o) && o.d == 64;
        // the math warps' instruction cuts (session 12): not for bands and block tables
        // (not measured), capture gradients (not measured) or q tiles of 128 with a score
        // function (D64 soft-cap: stmatrix makes ptxas spill 224 bytes, 0.91x)
        if fused::tma_producer(&o)
            && !o.bwd_wscan
            && capture_grads(plan.program()).is_empty()
            && !(o.q_block == 128 && plan.program().score.is_some())
        {
            o.bwd_stmatrix = true;
            o.bwd_desc = true;
            o.bwd_ds_unguarded = true;
        }
        // session 13: D64 ALiBi-type bindings on q tiles of 128 (one H200, one call, B4
        // H16 L4096, fused kernel alone in ms q tiles of 64 / 128: ALiBi + causal 1.080,
        // 1.077 / 0.897)
        let mut o = o.backward_q128_positions();
        // session 13: the math warpgroups' turns for D64 without mask or score (one H200,
        // two calls, B4 H16 L4096, fused kernel alone in ms without / with: dense 1.561 /
        // 1.490, 1.571 / 1.506 and 1.515; causal 0.865 / 0.868, ALiBi + causal on q tiles
        // of 128 0.897 / 0.923, D128 dense 5.180 / 5.193, causal 2.859 / 2.828, ALiBi +
        // causal 2.745 / 2.763: not there)
        let prog = plan.program();
        if o.d == 64
            && o.q_block == 128
            && fused::tma_producer(&o)
            && prog.mask.is_none()
            && prog.score.is_none()
            && capture_grads(prog).is_empty()
        {
            o.bwd_pingpong = true;
        }
        // bands and block tables (the warp-wide search) without capture gradients (session
        // 13): the same cuts, the visits from the producer's records and a band's partial
        // blocks by row intervals (a no-op on tables)
        if fused::tma_producer(&o)
            && o.bwd_wscan
            && !o.bwd_persist
            && capture_grads(plan.program()).is_empty()
        {
            o.bwd_stmatrix = true;
            o.bwd_desc = true;
            o.bwd_ds_unguarded = true;
            o.bwd_visit_rec = true;
            o.bwd_band_keep = true;
        }
        // session 16: at D128 the causal-type (longest-first) bindings' visits from the
        // producer's records too (ncu, causal: the math warps' scalar search was ~140
        // instructions per warp and visit at the loop top, tensor cores idle, 12% of their
        // stall samples; FlashAttention-4 has none). One H200, one call, whole backward
        // TFLOP/s default / with, two runs each: causal 488.8, 490.7 / 505.8, 506.3; ALiBi +
        // causal 485.7, 485.1 / 496.8, 498.0; soft-cap + causal 430.6, 431.6 / 468.1,
        // 468.9. Dense (one search step) not: fused kernel 5.117, 5.177 / 5.259, 5.244 ms
        if fused::tma_producer(&o)
            && o.d == 128
            && o.bwd_lpt
            && !o.bwd_wscan
            && !o.bwd_persist
            && !o.bwd_pingpong
            && capture_grads(plan.program()).is_empty()
        {
            o.bwd_visit_rec = true;
        }
        // session 18: FlashAttention-4's order after the element code at D128 — dV issued
        // before the dS barrier (`bwd_dv_early`) and, on the causal-type bindings, the dQ
        // slot's `empty` wait after the products' issue (`bwd_empty_late`). One H200, one
        // call, whole backward TFLOP/s default / with, two runs each: dense (`+j`) 558.9,
        // 559.4 / 576.4, 578.5; causal (`+j+z`) 503.6, 506.0 / 526.9, 523.4; ALiBi + causal
        // 498.5, 500.0 / 517.2, 516.7. Only where measured: dense (no mask, identity score)
        // and the causal-type bindings whose score is the identity or has a constant
        // derivative (ALiBi); soft-cap and the others unchanged
        if d128_closed_form_fused(&o)
            && !o.bwd_pingpong
            && !o.overlap
            && !o.bwd_wg_dq
            && capture_grads(prog).is_empty()
        {
            let measured_score = prog.score.is_none() || constant_derivative(prog);
            if prog.mask.is_none() && prog.score.is_none() && !o.bwd_lpt {
                o.bwd_dv_early = true;
            } else if o.bwd_lpt && o.bwd_visit_rec && measured_score {
                o.bwd_dv_early = true;
                o.bwd_empty_late = true;
            }
        }
        // session 19: the same order at D64 on the causal-type bindings on q tiles of 128
        // whose score reads no positions per element (causal, soft-cap: `bwd_dv_early` and
        // `bwd_empty_late`) and at D128 on bands and block tables (`bwd_dv_early`). One
        // H200, one call, whole backward TFLOP/s default / with, two runs each: D64 causal
        // 371.5, 372.2 / 382.2, 378.8; soft-cap + causal 292.7, 292.3 / 299.9, 298.1; D128
        // sliding 1024 389.9, 389.5 / 394.0, 393.5; document + causal 274.7, 271.3 / 278.6,
        // 275.6. D64 ALiBi + causal within the runs' spread (371.4, 371.8 / 374.1, 371.6),
        // D64 dense keeps the turns (without them `+j` 438.2, 438.9 against 439.9, 441.7)
        if fused::tma_producer(&o)
            && o.bwd_dq == BwdDq::OrderedBulk
            && !o.bwd_persist
            && !o.bwd_pingpong
            && !o.overlap
            && !o.bwd_wg_dq
            && capture_grads(prog).is_empty()
        {
            if o.d == 64 && o.q_block == 128 && o.bwd_lpt && !plan.score_reads().per_element() {
                o.bwd_dv_early = true;
                o.bwd_empty_late = true;
            } else if o.d == 128 && o.q_block == 64 && o.bwd_wscan {
                o.bwd_dv_early = true;
            }
        }
        // session 23: at D64 without a score function (dense, causal) the producer's L2 /
        // Delta rows by two bulk copies (`bwd_stats_bulk`, FlashAttention-4's load_LSE /
        // load_dPsum). One H200, one call, B4 H16 L4096 whole backward TFLOP/s default /
        // with, interleaved: dense 446.7, 445.9 / 492.4, 493.3; causal 385.1, 385.5 /
        // 393.3, 393.5. Session 24 (calls A / B, with the tile counter where it is the
        // default): every other D64 binding, two pairs each: sliding 1024 286.9, 286.9 /
        // 293.6, 291.4; document + causal 140.8, 140.5 / 144.4, 144.3; ALiBi + causal
        // 382.0, 382.5 / 385.8, 385.8; soft-cap + causal 311.5, 312.0 / 312.0, 312.8; D128
        // dense, five pairs: 573.0, 566.8, 567.7, 569.4, 574.3 / 573.9, 577.5, 581.1,
        // 575.6, 568.0 (1.009x). Not on D128 causal (528.2, 525.0, 526.8 / 516.4, 516.2,
        // 514.7: 0.98x), sliding 1024 (411.7, 412.0 / 413.7, 410.6), document + causal
        // (289.1, 288.5 / 286.7, 286.5); D128 score functions not measured
        if fused::tma_producer(&o)
            && capture_grads(prog).is_empty()
            && (o.d == 64 || (o.d == 128 && prog.mask.is_none() && prog.score.is_none()))
        {
            o.bwd_stats_bulk = true;
        }
        // session 23: persistent CTAs taking their kv tiles from a global counter
        // (`bwd_persist` + `bwd_persist_dyn`, on top of the options above, as the kernel
        // bench's `+P`) where it measured faster. One H200, one call, whole backward
        // TFLOP/s default / with, interleaved: D64 causal 384.4, 385.6 / 404.2, 405.6 (with
        // `bwd_stats_bulk` as well, the next call: 383.6, 386.0 / 405.3, 410.9). Session
        // 24 (its call A, two interleaved pairs each, after gpu_backward_convert_timeout
        // passed with it on bands and tables — session 23 had read 16 "fallbacks" there
        // because the host read `DqSem`'s last word, which under the counter is the
        // counter itself: `cuda::backward::early_fallback_count`): D128 sliding 1024 393.3,
        // 394.7 / 408.4, 408.4; document + causal 275.9, 278.6 / 285.7, 283.8; D64 document
        // + causal 129.0, 129.1 / 140.7, 140.5; D64 sliding 1024 271.0, 270.9 / 286.7,
        // 286.5; D64 ALiBi + causal 371.7, 368.8 / 381.7, 379.6; D64 soft-cap + causal
        // 299.8, 299.5 / 311.4, 311.9. Not where it measured slower or even: D128 causal
        // 524.8, 525.3 / 517.8, 516.9, ALiBi + causal 518.4, 517.9 / 485.7, 488.8 (ptxas
        // spills 68 / 124 bytes with it), dense 576.7, 565.2 / 572.9, 572.0, soft-cap +
        // causal 470.9, 471.2 / 474.0, 474.6 (1.007x)
        let band_or_table = o.bwd_wscan && o.bwd_dq == BwdDq::OrderedBulk;
        // (the longest-first order: no warp-wide search, no early conversion)
        let d64_causal = o.d == 64 && o.bwd_lpt;
        if band_or_table || d64_causal {
            o = o.tile_counter(plan);
        }
        // session 24: the writer warpgroup at 40 registers after `setmaxnreg`, the math
        // warpgroups at 232 (`bwd_writer_regs`; ptxas 13.0's spills move between the
        // roles). One H200, call C, whole backward TFLOP/s default / with, two interleaved
        // pairs: D128 causal 525.1, 525.1 / 531.1, 533.0; ALiBi + causal 519.2, 517.6 /
        // 524.0, 526.1; D64 sliding 1024 292.5, 293.1 / 295.5, 299.4; D64 document +
        // causal 144.2, 144.6 / 148.6, 148.0. Not where slower: D128 sliding 1024 412.4,
        // 408.8 / 405.6, 402.5; D128 document + causal 287.2, 289.1 / 268.4, 271.4; D64
        // ALiBi + causal 387.4, 388.9 / 373.3, 376.4. Call D (default / `+R24`): D128 causal
        // 527.6, 527.9 / 526.0, 525.4, ALiBi + causal 522.0, 520.1 / 519.9, 519.6 (over
        // both calls 1.009x / 1.008x); D64 sliding 299.2, 300.1 / 295.0, 294.7, documents
        // 148.9, 149.1 / 145.1, 144.9; and slower with 40 where it is not the default:
        // D128 dense 559.6 against 565.2, 568.3, soft-cap + causal 464.9 against 468.5,
        // 472.0; D64 dense 429.7 against 494.6, 486.4, causal 336.2 against 406.2, 406.9,
        // soft-cap + causal 306.7 against 314.5, 315.1
        let d128_causal = o.d == 128
            && o.bwd_lpt
            && !o.bwd_persist
            && prog.mask.is_some()
            && (prog.score.is_none() || constant_derivative(prog));
        let d64_band_or_table = o.d == 64 && band_or_table;
        if fused::tma_producer(&o)
            && o.bwd_dq == BwdDq::OrderedBulk
            && capture_grads(prog).is_empty()
            && (d128_causal || d64_band_or_table)
        {
            o.bwd_writer_regs = 40;
        }
        // session 34: at D128 on q tiles of 64 outside bands and block tables (every closed
        // form: dense, causal, ALiBi and soft-cap + causal measured; the other closed forms
        // run the same writer and producer code), two dQ writer threads, one per slot
        // (`bwd_two_writers`), with the producer's L2 / Delta rows by two bulk copies
        // (`bwd_stats_bulk`, dense's already). One H200, two calls, main's kernels with the
        // kernel bench's `default+2+b`, whole backward TFLOP/s default / with, interleaved:
        // dense 568.3, 565.4, 571.5, 580.5, 566.8 / 568.1, 594.3, 585.2, 596.6, 575.8
        // (1.025x); causal 531.7, 533.9, 530.7, 531.9, 530.8 / 551.3, 550.0, 551.7, 551.9,
        // 550.5 (1.037x); ALiBi + causal 525.0, 526.7, 525.7, 526.0, 524.9 / 572.2, 571.2,
        // 571.6, 571.9, 571.9 (1.088x); soft-cap + causal 472.2, 472.5, 471.6 / 481.0, 481.5,
        // 481.4 (1.019x). Either alone less (`+2`: causal 538.9, 542.8, ALiBi 550.5,
        // 550.5; `+b`: causal 524.5, 524.2, ALiBi 519.3, 519.5); D64 dense and causal with
        // two writers within 1% (not there)
        if d128_closed_form_fused(&o) && capture_grads(prog).is_empty() {
            o.bwd_two_writers = true;
            o.bwd_stats_bulk = true;
        }
        // session 39: capture gradients whose reads are one element over a visit's box
        // from the uniform-read path (session 37's `bwd_uniform_reads`) wherever the fused
        // kernel runs (a binding without such reads generates the same kernel). One H200,
        // one call, kernel bench median default / `+U`, two interleaved pairs: a relative-
        // position table `[H, 129]` with its gradient, D128 156.9, 156.4 / 242.7, 235.4
        // TFLOP/s (1.52x), D64 112.0, 112.3 / 128.4, 125.6 (1.13x); dense 590.7, 591.2 /
        // 593.3, 594.2. A training step through Python (forward's `uniform_reads` too,
        // B2 H16 L8192 D128, min of 3): relative table 20.22 -> 13.20 ms, + causal 12.34
        // -> 6.34, learnable soft-cap + causal 9.44 -> 6.67. `gpu_backward` (every test)
        // passes with it, memcheck and racecheck clean on `gpu_backward_uniform_reads`
        o.bwd_uniform_reads = o.bwd_dq != BwdDq::Separate;
        o
    }

    /// These options on persistent CTAs that take their kv tiles from a global counter
    /// ([`Self::bwd_persist`] + [`Self::bwd_persist_dyn`]) where the fused kernel has
    /// them: the TMA producer, no capture gradients, neither [`Self::bwd_pingpong`] nor
    /// [`Self::bwd_s_ahead`]; elsewhere unchanged. The kernel bench's `+P`.
    pub fn tile_counter(self, plan: &Plan) -> Self {
        let fits = fused::tma_producer(&self)
            && capture_grads(plan.program()).is_empty()
            && !self.bwd_pingpong
            && !self.bwd_s_ahead;
        if !fits {
            return self;
        }
        Self {
            bwd_persist: true,
            bwd_persist_dyn: true,
            ..self
        }
    }

    /// These options on the grid's own tile order: no persistent CTAs (neither
    /// [`Self::bwd_persist`] nor [`Self::bwd_persist_dyn`], which
    /// [`Self::backward_for_binding`] turns on for some bindings since session 23). For
    /// composing with what the tile counter refuses ([`Self::bwd_pingpong`],
    /// [`Self::bwd_s_ahead`]) and for comparing with the defaults before; what the
    /// runtime's `ATTNC_BWD_PERSIST=0` does.
    pub fn static_tiles(self) -> Self {
        Self {
            bwd_persist: false,
            bwd_persist_dyn: false,
            ..self
        }
    }

    /// At D = Dv = 64 on the fused kernel: q tiles of 128 (each math warpgroup computing
    /// 64 rows of dQ) also for the closed-form causal-type bindings
    /// [`Self::backward_for_binding`] leaves at 64 because the score reads positions per
    /// element (ALiBi), keeping the instruction cuts (`bwd_stmatrix`, `bwd_desc`,
    /// `bwd_ds_unguarded`): ptxas 13.0 sm_90a spills 28 bytes there now (188 bytes in
    /// session 8, before the cuts, when q tiles of 128 measured slower). Other bindings
    /// unchanged. The kernel bench's `+8`.
    pub fn backward_q128_positions(self) -> Self {
        if self.d == 64
            && self.q_block == 64
            && self.bwd_lpt
            && self.bwd_stmatrix
            && fused::q128_fits(&self)
        {
            PtxOptions {
                q_block: 128,
                ..self
            }
        } else {
            self
        }
    }

    /// At D = Dv = 128 on the fused kernel with the TMA producer, for bindings without a
    /// mask or score function (dense, the identity score): q tiles of 80 (FlashAttention-3
    /// and -4's dense hdim-128 tile; `backward/fused.rs`, "q tiles of 80": Sᵀ and dPᵀ
    /// `m64n80k16`, dQᵀ = Kᵀ dSᵀ, one dQ slot). Other options unchanged. The kernel
    /// bench's `+q`. Not the binding's default: one H200 (session 16, B2 H16 L8192 D128
    /// dense, interleaved), fused kernel 5.160, 5.147 ms default / 5.135, 5.131 with q
    /// tiles of 80 (0.996x), the conversion 8 us slower, whole backward within the spread.
    pub fn backward_q80(self, plan: &Plan) -> Self {
        let o = PtxOptions {
            q_block: 80,
            ..self
        };
        if self.q_block == 64
            && plan.program().mask.is_none()
            && plan.program().score.is_none()
            && capture_grads(plan.program()).is_empty()
            && fused::q80_fits(&o)
        {
            o
        } else {
            self
        }
    }

    /// These (wgmma) backward options with dQ fused into the dK/dV kernel under `dq`
    /// (`Ordered` or `Atomic`): Br = 64, Bc = 128 at D 128 (two warpgroups, each
    /// computing 64 columns of the dQ tile), 64 at D 64 (one warpgroup) except under
    /// `OrderedBulk` (its writer needs two math warpgroups: 32 dQ columns each); `bwd_tma`
    /// kept only under `OrderedBulk` (the scheme it needs).
    pub fn backward_fused(self, dq: BwdDq) -> Self {
        PtxOptions {
            mma: Mma::Wgmma,
            q_in_regs: false,
            q_block: 64,
            kv_block: if self.d == 128 || dq == BwdDq::OrderedBulk {
                128
            } else {
                64
            },
            bwd_dq: dq,
            bwd_tma: self.bwd_tma && dq == BwdDq::OrderedBulk,
            ..self
        }
    }

    /// These backward options on the wgmma path (sm_90a; same tiles).
    pub fn backward_wgmma(self) -> Self {
        PtxOptions {
            mma: Mma::Wgmma,
            q_in_regs: false,
            ..self
        }
    }

    /// These backward options on the mma.sync path (same tiles).
    pub fn backward_sync(self) -> Self {
        PtxOptions {
            mma: Mma::Sync,
            ..self
        }
    }
}

/// Head dims the wgmma backward takes: D, Dv in {64, 128}, or in {128, 256} with one of
/// them 256 (the two-kernel path only: dK and dV in column halves, [`dkdv_parts`]).
fn wgmma_dims(d: u32, dv: u32) -> bool {
    (matches!(d, 64 | 128) && matches!(dv, 64 | 128))
        || (matches!(d, 128 | 256) && matches!(dv, 128 | 256))
}

/// The column parts of dK and dV that the two-kernel path's dK/dV kernel splits between
/// its warpgroups: 2 on the wgmma path when D or Dv is 256 (a warpgroup's 64 kv rows of
/// dK and dV at 256 columns would take 256 accumulator registers per thread), else 1.
/// With 2, the CTA's two warpgroups share one 64-row kv tile and its Q / dO buffers and
/// each accumulates half of dK's and dV's columns; both compute Sᵀ and dPᵀ over the whole
/// head dim (6 products of 64 x 64 x 256 per visit), or at D = Dv with
/// [`PtxOptions::bwd_xchg`] one each, exchanged (4). One H200, session 29, B2 H16 L4096
/// D256: the dK/dV kernel 1.51x (dense) and 1.46x (causal) faster than with one CTA per
/// column half (192 KiB of shared memory: one CTA, so one warpgroup, per SM); the
/// exchange 1.05x / 1.11x on top.
///
/// On mma.sync (sm_80, and sm_90 where a test asks for it) a head dim of 256 splits the
/// same way: eight warps, warp `w` holding kv rows `16 (w % 4) ..` of column part `w / 4`
/// (64 + 64 accumulator registers per thread), each computing Sᵀ and dPᵀ for its rows
/// over the whole head dim — FlashAttention-2's 8-warp hdim-256 tile on the A100.
pub fn dkdv_parts(o: &PtxOptions) -> u32 {
    if o.bwd_dq == BwdDq::Separate && o.d.max(o.dv) > 128 {
        2
    } else {
        1
    }
}

/// Whether the two-kernel path runs with one shared-memory buffer where it keeps two, so
/// that a head dim of 256 fits an sm_80 CTA's 163 KiB ([`SM80_SMEM_BYTES`]; the wgmma
/// path has its own layouts): mma.sync with D or Dv 256. The dK/dV kernel then has one
/// (Q, dO, L2, Delta) buffer — the next visit's copies are issued once every warp has
/// read this visit's (FlashAttention-2 on the A100 at hdim 256: "no double buffering") —
/// and the dQ kernel one V buffer beside its two K buffers (V's next tile copied once
/// every warp's dP has read it, as [`dq_pair`] does).
pub fn single_buffer(o: &PtxOptions) -> bool {
    o.mma == Mma::Sync && o.d.max(o.dv) > 128
}

/// The most dynamic shared memory an sm_80 CTA may take (an A100's opt-in limit, 163
/// KiB; sm_86 / sm_89 GPUs allow 99 KiB, and the runtime checks the device's own limit).
pub const SM80_SMEM_BYTES: u32 = 163 * 1024;

/// Whether the dK/dV kernel's two warpgroups split Sᵀ and dPᵀ and exchange them
/// ([`PtxOptions::bwd_xchg`]: D = Dv, two column parts, 64 x 64 tiles).
pub fn xchg(o: &PtxOptions) -> bool {
    o.bwd_xchg && dkdv_parts(o) == 2 && o.d == o.dv && (o.q_block, o.kv_block) == (64, 64)
}

/// Whether the two-kernel path's dQ kernel takes pairs of q tiles
/// ([`PtxOptions::bwd_dq_pair`]): wgmma, q tiles of 64, closed-form kv bounds (a block
/// table's ranges are per q tile).
pub fn dq_pair(o: &PtxOptions, kv: &KvBounds) -> bool {
    o.bwd_dq_pair
        && o.mma == Mma::Wgmma
        && o.bwd_dq == BwdDq::Separate
        && o.q_block == 64
        && kv.is_closed_form()
}

/// Bytes of the exchange region ([`xchg`]): Sᵀ then dPᵀ, 64 x 64 f32 each, element `e` of
/// thread `t` (of its warpgroup) at `512 e + 4 t`.
const XCHG_BYTES: u32 = 2 * 64 * 64 * 4;

/// The fused D128 kernel on q tiles of 64 with ordered bulk additions and the TMA
/// producer, outside bands and block tables (no warp-wide search, no tile counter): the
/// dense and causal-type bindings [`PtxOptions::backward_for_binding`] tunes at D128.
fn d128_closed_form_fused(o: &PtxOptions) -> bool {
    fused::tma_producer(o)
        && o.d == 128
        && o.q_block == 64
        && o.bwd_dq == BwdDq::OrderedBulk
        && !o.bwd_wscan
        && !o.bwd_persist
}

fn validate(opts: &PtxOptions) -> Result<(), LlvmError> {
    opts.validate()?;
    let ok = |x: u32| matches!(x, 32 | 64 | 128 | 256);
    if !ok(opts.d) || !ok(opts.dv) {
        return Err(LlvmError::Unsupported(format!(
            "head dims D={} Dv={}: the GPU backward supports 32, 64, 128 and 256 (the CPU backend takes any)",
            opts.d, opts.dv
        )));
    }
    if opts.d.max(opts.dv) == 256
        && !(opts.bwd_dq == BwdDq::Separate
            && matches!(opts.d, 128 | 256)
            && matches!(opts.dv, 128 | 256)
            && (opts.mma == Mma::Wgmma || (opts.q_block, opts.kv_block) == (64, 64)))
    {
        return Err(LlvmError::Unsupported(format!(
            "head dims D={} Dv={}: the GPU backward takes a head dim of 256 with dQ by its own kernel, the other head dim 128 or 256 (and on mma.sync tiles of 64 x 64); the cpu backend takes any",
            opts.d, opts.dv
        )));
    }
    if opts.m_tiles != 1 {
        return Err(LlvmError::Unsupported(
            "the GPU backward runs with one m-tile per warp".into(),
        ));
    }
    if opts.mma == Mma::Wgmma && !wgmma_dims(opts.d, opts.dv) {
        return Err(LlvmError::Unsupported(format!(
            "head dims D={} Dv={}: the wgmma backward supports 64 and 128, and 256 with 128 or 256",
            opts.d, opts.dv
        )));
    }
    // q tiles of 80: the fused kernel's dQᵀ form (`fused::q80_fits`, checked there)
    let q80 = opts.q_block == 80 && opts.bwd_dq != BwdDq::Separate;
    if !(matches!(opts.q_block, 64 | 128) || q80) || !matches!(opts.kv_block, 64 | 128) {
        return Err(LlvmError::Unsupported(format!(
            "backward tile {}x{}: Br and Bc must be 64 or 128",
            opts.q_block, opts.kv_block
        )));
    }
    if opts.bwd_dq != BwdDq::Separate {
        fused::validate(opts)?;
    }
    if opts.arch == super::Arch::Sm80 {
        // what an A100 CTA may take (the D256 layouts are sized for it: `single_buffer`)
        let dq = DqTiles::new(opts, false).bytes;
        let dkdv = DkDvTiles::new(opts).bytes;
        if dq.max(dkdv) > SM80_SMEM_BYTES {
            return Err(LlvmError::Unsupported(format!(
                "backward tile {}x{} at D={} Dv={}: {} bytes of shared memory, more than an sm_80 CTA's {SM80_SMEM_BYTES}",
                opts.q_block,
                opts.kv_block,
                opts.d,
                opts.dv,
                dq.max(dkdv)
            )));
        }
    }
    Ok(())
}

/// Where the dK/dV and dQ kernels find their blocks: the closed form when the forward
/// kernel of the same options has one, else every block (partial). Read from the
/// binding's plan (its analysis is computed once, `crate::plan`).
pub fn backward_bounds(plan: &Plan, opts: &PtxOptions) -> KvBounds {
    plan.kv_bounds(opts.kv_table)
}

/// The launch description of one backward kernel.
pub fn backward_layout(
    plan: &Plan,
    opts: &PtxOptions,
    kind: BackwardKind,
) -> Result<KernelSpec, LlvmError> {
    let p = plan.program();
    validate(opts)?;
    let kv_bounds = backward_bounds(plan, opts);
    use GridDim as G;
    let (threads, smem_bytes, grid, kernel_kind) = match kind {
        BackwardKind::Pre => (
            128,
            0,
            [G::PreRows, G::One, G::One],
            KernelKind::BackwardPre,
        ),
        BackwardKind::DkDv => (
            opts.kv_block / 16 * 32 * dkdv_parts(opts) + fused::writer_threads(opts),
            DkDvTiles::new(opts).bytes,
            if opts.bwd_persist && opts.bwd_dq != BwdDq::Separate {
                [G::KvPersistent, G::One, G::One]
            } else if opts.bwd_lpt && opts.bwd_dq != BwdDq::Separate {
                [G::KvHeads, G::KvBlocks, G::Batches]
            } else {
                [G::KvBlocks, G::KvHeads, G::Batches]
            },
            KernelKind::BackwardDkDv,
        ),
        BackwardKind::Dq if opts.bwd_dq != BwdDq::Separate => (
            convert::CONVERT_THREADS,
            0,
            [G::QBlocks, G::Heads, G::Batches],
            KernelKind::BackwardDq,
        ),
        BackwardKind::Dq => {
            let pair = dq_pair(opts, &kv_bounds);
            (
                opts.q_block / 16 * 32 * (1 + pair as u32),
                DqTiles::new(opts, pair).bytes,
                if pair {
                    [G::QBlockPairs, G::Heads, G::Batches]
                } else {
                    [G::QBlocks, G::Heads, G::Batches]
                },
                KernelKind::BackwardDq,
            )
        }
    };
    Ok(KernelSpec {
        kind: kernel_kind,
        entry: format!("attnc_{}_{}", kind.name(), sanitize(&p.name)),
        options: *opts,
        q_block: opts.q_block,
        kv_block: opts.kv_block,
        threads,
        smem_bytes,
        params: param_list(p, &kv_bounds, kind, opts),
        kv_bounds,
        table_skip: None,
        grid,
    })
}

/// The captures whose gradients the dQ kernel of a program computes (module docs,
/// "Capture gradients").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureGrads {
    /// Ids of the captured tensors the score reads differentiably (sorted, distinct).
    pub tensors: Vec<u32>,
    /// Ids of the f32 params the score reads differentiably (sorted).
    pub params: Vec<u32>,
}

impl CaptureGrads {
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.params.is_empty()
    }
}

/// What [`CaptureGrads`] `p` needs (empty without a score function).
pub fn capture_grads(p: &Program) -> CaptureGrads {
    if p.score.is_none() {
        return CaptureGrads::default();
    }
    let sg = crate::grad::differentiate(p);
    let mut tensors: Vec<u32> = sg.reads.iter().map(|r| r.tensor.0).collect();
    tensors.sort_unstable();
    tensors.dedup();
    CaptureGrads {
        tensors,
        params: sg.params.iter().map(|x| x.param.0).collect(),
    }
}

/// One gradient element from its three fixed-point words `[hi, lo, flags]` (module docs):
/// `Σhi 2^-32 + Σlo 2^-60` rounded once to f32; +inf, −inf or NaN when a non-finite
/// contribution was added (NaN when it was NaN or both infinities were).
pub fn fixed_to_f32(words: [u64; 3]) -> f32 {
    let [hi, lo, flags] = words;
    match flags {
        0 => {
            let total = ((hi as i64 as i128) << 28) + lo as i128;
            // i128 -> f64 rounds once; the scaling by 2^-60 is exact
            ((total as f64) * (-60f64).exp2()) as f32
        }
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        _ => f32::NAN,
    }
}

/// Whether `p`'s score has a constant derivative `∂score/∂s` (ALiBi-type scores: the
/// logit plus a bias), the score functions the binding's order options were measured on
/// besides the identity.
fn constant_derivative(p: &Program) -> bool {
    score_and_derivative(p)
        .is_some_and(|(_, d)| matches!(d.insts[d.ret.index()], crate::ir::Inst::ConstF32(_)))
}

/// The score and its derivative `∂score/∂s` as two functions of the element's arguments
/// (from `grad::differentiate`: one CSE'd instruction list, so LLVM shares their common
/// part); `None` for a program without a score function (identity score).
fn score_and_derivative(p: &Program) -> Option<(Function, Function)> {
    p.score.as_ref()?;
    let sg = crate::grad::differentiate(p);
    let score = Function {
        ret: sg.score,
        ..sg.func.clone()
    };
    let d_s = Function {
        ret: sg.d_s,
        ..sg.func
    };
    Some((score, d_s))
}

/// Generates one backward kernel of `p` (PTX and LLVM IR text).
pub fn emit_backward(
    plan: &Plan,
    opts: &PtxOptions,
    kind: BackwardKind,
) -> Result<PtxKernel, LlvmError> {
    let p = plan.program();
    let k = backward_layout(plan, opts, kind)?;
    let sd = score_and_derivative(p);
    let (ptx, llvm_ir, _) = super::run_pipeline(
        p,
        opts,
        &k.entry,
        PASSES,
        super::EmitText::PtxAndLlvm,
        |ctx, module| build(ctx, module, p, sd.as_ref(), opts, &k, kind),
    )?;
    Ok(PtxKernel {
        spec: k,
        ptx,
        llvm_ir,
    })
}

/// The parameter list of a backward kernel, in launch order.
pub(crate) fn param_list(
    p: &Program,
    kv: &KvBounds,
    kind: BackwardKind,
    opts: &PtxOptions,
) -> Vec<KernelParam> {
    use KernelParam::*;
    let fused = opts.bwd_dq != BwdDq::Separate;
    let mut v = match kind {
        BackwardKind::Pre => {
            return vec![O, DOut, Lse, DLse, HasDLse, Delta, Lse2, Rows];
        }
        BackwardKind::DkDv if fused => vec![Q, K, V, DOut, Delta, Lse2, DK, DV, DqAccum, DqSem],
        BackwardKind::DkDv => vec![Q, K, V, DOut, Delta, Lse2, DK, DV],
        BackwardKind::Dq if fused && convert_early(opts) && opts.bwd_doc_tiles => {
            return vec![DqAccum, DqSem, DQ, Lq, Hq, Scale, Lkv, Hkv, NumDocTiles];
        }
        BackwardKind::Dq if fused && convert_early(opts) => {
            return vec![DqAccum, DqSem, DQ, Lq, Hq, Scale, Lkv, Hkv];
        }
        BackwardKind::Dq if fused => return vec![DqAccum, DqSem, DQ, Lq, Hq, Scale],
        BackwardKind::Dq => vec![Q, K, V, DOut, Delta, Lse2, DQ],
    };
    // the capture gradients are summed where dS' is: the dQ kernel, or the fused one
    let caps = match (kind, fused) {
        (BackwardKind::Dq, false) | (BackwardKind::DkDv, true) => capture_grads(p),
        _ => CaptureGrads::default(),
    };
    match kv {
        KvBounds::ClosedForm(_) => v.extend(super::bounds::kv_params(kv, p.mask.is_some())),
        KvBounds::Table => v.extend([Ranges, MapBStride, MapHStride]),
    }
    v.extend([Params, Err]);
    v.extend((0..p.tensors.len() as u32).map(Tensor));
    v.extend([Lq, Lkv, Hq, Hkv, Scale]);
    for (t, info) in p.tensors.iter().enumerate() {
        v.extend((0..info.dims.len() as u32).map(|dim| TensorDim {
            tensor: t as u32,
            dim,
        }));
    }
    v.extend(caps.tensors.iter().map(|t| TensorGrad(*t)));
    if !caps.params.is_empty() {
        v.push(ParamGrad);
    }
    if kind == BackwardKind::DkDv && fused::tma_producer(opts) {
        v.extend([TmaQ, TmaDo]);
    }
    if kind == BackwardKind::DkDv && fused && opts.bwd_persist {
        v.push(Batch);
    }
    if kind == BackwardKind::DkDv && fused && opts.bwd_doc_tiles {
        v.extend([DocTiles, NumDocTiles]);
    }
    v
}

/// Shared memory of the dK/dV kernel: K, V, then two buffers of (Q, dO, L2, Delta), and
/// with dQ fused the dSᵀ tile (Bc rows of Br). On the wgmma path the tiles are
/// 128-byte-swizzled slabs and each buffer starts on a 1024-byte boundary (the swizzle
/// atoms must be aligned).
pub(super) struct DkDvTiles {
    pub k: SmemTile,
    pub v: SmemTile,
    pub q: SmemTile,
    pub d_o: SmemTile,
    /// Byte offsets of the L2 and Delta rows (f32) in buffer 0.
    pub l2: u32,
    pub delta: u32,
    /// Bytes of one (Q, dO, L2, Delta) buffer.
    pub buf: u32,
    /// Bytes from buffer 0's L2/Delta rows to buffer 1's: `buf`, or with
    /// [`PtxOptions::bwd_tma`] (rows kept apart, after both Q/dO buffers) `8 q_block`.
    pub stat_buf: u32,
    /// The fused kernel's dSᵀ tile (rows: kv, columns: q); with [`PtxOptions::bwd_tma`]
    /// two of them (visit n writes tile n % 2, the next at `ds.offset + ds.bytes()`).
    pub ds: Option<SmemTile>,
    /// `BwdDq::OrderedBulk`: byte offset of the dQ slots ([`fused::DQ_SLOTS`] of
    /// `q_block x D` f32 each) and of their mbarriers (8 bytes each: full, then empty,
    /// then with [`PtxOptions::bwd_wg_dq`] half).
    pub dq_slots: Option<(u32, u32)>,
    /// [`PtxOptions::bwd_tma`]: byte offset of the (Q, dO, L2, Delta) buffers' mbarriers
    /// (8 bytes each: full 0, full 1, empty 0, empty 1).
    pub q_bars: Option<u32>,
    /// [`PtxOptions::bwd_visit_rec`]: byte offset of the two visit records (32 bytes per
    /// ring buffer: found, query head, q block, first, end, full first, full end).
    pub visit_rec: Option<u32>,
    /// [`PtxOptions::bwd_persist_dyn`]: byte offset of the tile ring (two tile ids, then
    /// the mbarriers full 0, full 1, empty 0, empty 1: [`fused::TILE_RING_BYTES`]).
    pub tile_ring: Option<u32>,
    /// [`xchg`]: byte offset of the Sᵀ / dPᵀ exchange region ([`XCHG_BYTES`]).
    pub xchg: Option<u32>,
    pub bytes: u32,
}

impl DkDvTiles {
    pub fn new(o: &PtxOptions) -> Self {
        let slab = o.mma == Mma::Wgmma;
        let tile = |offset, rows, cols| SmemTile {
            offset,
            rows,
            cols,
            slab,
        };
        let k = tile(0, o.kv_block, o.d);
        let v = tile(k.bytes(), o.kv_block, o.dv);
        let q = tile(v.offset + v.bytes(), o.q_block, o.d);
        let d_o = tile(q.offset + q.bytes(), o.q_block, o.dv);
        let tma = fused::tma_producer(o);
        let (l2, buf, stat_buf, ds, mut bytes) = if tma {
            // [Q, dO] x 2 (the TMA boxes' 1024-byte alignment), [L2, Delta] x 2, dSᵀ x 2
            let buf = (q.bytes() + d_o.bytes()).next_multiple_of(1024);
            let l2 = q.offset + 2 * buf;
            let stat_buf = 8 * o.q_block;
            // q tiles of 80 (dQᵀ = Kᵀ dSᵀ): dS un-transposed, q rows x kv columns
            let (rows, cols) = if fused::q80(o) {
                (o.q_block, o.kv_block)
            } else {
                (o.kv_block, o.q_block)
            };
            let ds = tile((l2 + 2 * stat_buf).next_multiple_of(1024), rows, cols);
            (l2, buf, stat_buf, Some(ds), ds.offset + 2 * ds.bytes())
        } else {
            let l2 = d_o.offset + d_o.bytes();
            let mut buf = l2 + 8 * o.q_block - q.offset;
            if slab {
                buf = buf.next_multiple_of(1024);
            }
            // one buffer ([`single_buffer`]): the next visit's copies reuse it (`buf` 0:
            // the loop's buffer toggle keeps it)
            let bufs = if single_buffer(o) { 1 } else { 2 };
            let ds = (o.bwd_dq != BwdDq::Separate)
                .then(|| tile(q.offset + bufs * buf, o.kv_block, o.q_block));
            (
                l2,
                if bufs == 1 { 0 } else { buf },
                buf,
                ds,
                q.offset + bufs * buf + ds.map_or(0, |t| t.bytes()),
            )
        };
        let delta = l2 + 4 * o.q_block;
        let dq_slots = (o.bwd_dq == BwdDq::OrderedBulk).then(|| {
            let slots = bytes.next_multiple_of(1024);
            let n = fused::dq_slots(o);
            let bars = slots + n * o.q_block * o.d * 4;
            // full, empty (and with `bwd_wg_dq` half) per slot
            bytes = bars + (2 + o.bwd_wg_dq as u32) * n * 8;
            (slots, bars)
        });
        let q_bars = fused::tma_producer(o).then(|| {
            let at = bytes.next_multiple_of(8);
            bytes = at + 4 * 8;
            at
        });
        let visit_rec = (fused::tma_producer(o) && o.bwd_visit_rec).then(|| {
            let at = bytes.next_multiple_of(16);
            bytes = at + 2 * fused::VISIT_REC_BYTES;
            at
        });
        let tile_ring = persist_dyn(o).then(|| {
            let at = bytes.next_multiple_of(8);
            bytes = at + fused::TILE_RING_BYTES;
            at
        });
        let xchg = xchg(o).then(|| {
            let at = bytes.next_multiple_of(16);
            bytes = at + XCHG_BYTES;
            at
        });
        DkDvTiles {
            k,
            v,
            q,
            d_o,
            l2,
            delta,
            buf,
            stat_buf,
            ds,
            dq_slots,
            q_bars,
            visit_rec,
            tile_ring,
            xchg,
            bytes,
        }
    }
}

/// Shared memory of the dQ kernel: Q, dO, then two buffers of (K, V) (slabs on the
/// wgmma path; every tile a multiple of 1024 bytes there); with [`dq_pair`] Q and dO of
/// two q tiles, one V and two K buffers (`buf` = K's bytes); with [`single_buffer`] one
/// q tile's Q and dO, one V and two K buffers.
struct DqTiles {
    q: SmemTile,
    d_o: SmemTile,
    k: SmemTile,
    v: SmemTile,
    buf: u32,
    bytes: u32,
}

impl DqTiles {
    fn new(o: &PtxOptions, pair: bool) -> Self {
        let slab = o.mma == Mma::Wgmma;
        let tile = |offset, rows, cols| SmemTile {
            offset,
            rows,
            cols,
            slab,
        };
        if pair || single_buffer(o) {
            let rows = o.q_block * (1 + pair as u32);
            let q = tile(0, rows, o.d);
            let d_o = tile(q.bytes(), rows, o.dv);
            let v = tile(d_o.offset + d_o.bytes(), o.kv_block, o.dv);
            let k = tile(v.offset + v.bytes(), o.kv_block, o.d);
            return DqTiles {
                q,
                d_o,
                k,
                v,
                buf: k.bytes(),
                bytes: k.offset + 2 * k.bytes(),
            };
        }
        let q = tile(0, o.q_block, o.d);
        let d_o = tile(q.bytes(), o.q_block, o.dv);
        let k = tile(d_o.offset + d_o.bytes(), o.kv_block, o.d);
        let v = tile(k.offset + k.bytes(), o.kv_block, o.dv);
        let buf = k.bytes() + v.bytes();
        DqTiles {
            q,
            d_o,
            k,
            v,
            buf,
            bytes: k.offset + 2 * buf,
        }
    }
}

fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    sd: Option<&(Function, Function)>,
    opts: &PtxOptions,
    k: &KernelSpec,
    kind: BackwardKind,
) -> R<Module<'ctx>> {
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = k
        .params
        .iter()
        .map(|kp| match kp {
            KernelParam::Scale => ctx.f32_type().into(),
            KernelParam::KvOffset(_) | KernelParam::Rows => ctx.i64_type().into(),
            KernelParam::Lq
            | KernelParam::Lkv
            | KernelParam::Hq
            | KernelParam::Hkv
            | KernelParam::HasDLse
            | KernelParam::MapBStride
            | KernelParam::MapHStride
            | KernelParam::KvAllPartial
            | KernelParam::Batch
            | KernelParam::NumDocTiles
            | KernelParam::TensorDim { .. } => ctx.i32_type().into(),
            // a tensor map: a by-value 128-byte parameter, addressed in place (grid constant)
            KernelParam::TmaQ | KernelParam::TmaDo => ctx.ptr_type(AddressSpace::default()).into(),
            _ => gptr.into(),
        })
        .collect();
    let ft = ctx.void_type().fn_type(&tys, false);
    let func = module.add_function(&k.entry, ft, None);
    func.set_call_conventions(71); // ptx_kernel
    func.add_attribute(
        AttributeLoc::Function,
        ctx.create_string_attribute("nvvm.maxntid", &k.threads.to_string()),
    );
    if kind == BackwardKind::DkDv && fused::writer_threads(opts) > 0 {
        // setmaxnreg needs a register cap at entry: one CTA per SM
        func.add_attribute(
            AttributeLoc::Function,
            ctx.create_string_attribute("nvvm.minctasm", "1"),
        );
    }
    let noalias = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
    for (i, kp) in k.params.iter().enumerate() {
        if matches!(kp, KernelParam::TmaQ | KernelParam::TmaDo) {
            super::cta::tensor_map_param(ctx, func, i as u32);
        }
        if matches!(
            kp,
            KernelParam::Q
                | KernelParam::K
                | KernelParam::V
                | KernelParam::O
                | KernelParam::DOut
                | KernelParam::Delta
                | KernelParam::Lse2
                | KernelParam::DQ
                | KernelParam::DK
                | KernelParam::DV
                | KernelParam::TensorGrad(_)
                | KernelParam::ParamGrad
                | KernelParam::DqAccum
                | KernelParam::DqSem
        ) {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
        }
    }
    let g = Gpu::new(ctx, module, func);
    if opts.mma == Mma::Wgmma {
        // the wgmma swizzle atoms (1024 bytes) must be aligned in the shared window
        g.smem.set_alignment(1024);
    }
    let start = g.open_body();
    let args = Args {
        g: &g,
        params: &k.params,
    };
    let fused = opts.bwd_dq != BwdDq::Separate;
    match kind {
        BackwardKind::Pre => pre_body(&g, opts, &args)?,
        BackwardKind::DkDv if fused => fused::dkdv_dq_body(&g, p, sd, opts, &k.kv_bounds, &args)?,
        BackwardKind::DkDv => dkdv_body(&g, p, sd, opts, &k.kv_bounds, &args)?,
        BackwardKind::Dq if fused && fused::q80(opts) => convert::convert_t_body(&g, opts, &args)?,
        BackwardKind::Dq if fused && opts.bwd_convert_wide => {
            convert::convert_wide_body(&g, opts, &args)?
        }
        BackwardKind::Dq if fused => convert::convert_body(&g, opts, &args)?,
        BackwardKind::Dq => dq_body(&g, p, sd, opts, &k.kv_bounds, &args)?,
    }
    g.close_allocas(start)?;
    Ok(g.module)
}

// ---- the pre kernel ---------------------------------------------------------------------------

fn pre_body<'ctx>(g: &Gpu<'ctx>, opts: &PtxOptions, a: &Args<'_, 'ctx>) -> R<()> {
    if pdl(opts) {
        // bwd_pdl: the fused kernel may start under this grid's tail (it waits for it)
        g.griddep_launch_dependents()?;
    }
    let lanes = pre_lanes(opts.dv);
    let rows_per_cta = pre_rows_per_cta(opts.dv);
    let chunks = opts.dv / 8;
    let tid = g.tid_x()?;
    let sub = g.and(tid, g.c32(lanes as i64 - 1))?;
    let row = g.add(
        g.mul(g.zext64(g.ctaid('x')?)?, g.c64(rows_per_cta as i64))?,
        g.zext64(g.lshr(tid, g.c32(lanes.trailing_zeros() as i64))?)?,
    )?;
    let rows = a.int(KernelParam::Rows)?;
    let inside = g.icmp(IntPredicate::SLT, row, rows)?;
    let o = a.ptr(KernelParam::O)?;
    let d_o = a.ptr(KernelParam::DOut)?;
    let half = match opts.input {
        InputType::Bf16 => g.ctx.bf16_type().vec_type(8),
        InputType::F16 => g.ctx.f16_type().vec_type(8),
    };
    let f8 = g.f32.vec_type(8);
    let v4 = g.i32.vec_type(4);
    let acc = g.var(g.f32, g.cf(0.0))?;
    g.if_then(inside, || {
        let mut sum = g.cf(0.0);
        for step in 0..chunks.div_ceil(lanes) {
            let chunk = g.add(sub, g.c32((step * lanes) as i64))?;
            let ok = g.icmp(IntPredicate::ULT, chunk, g.c32(chunks as i64))?;
            let off = g.add(
                g.mul(row, g.c64(opts.dv as i64 * 2))?,
                g.zext64(g.shl(chunk, g.c32(4))?)?,
            )?;
            let off = g.selecti(ok, off, g.c64(0))?;
            let load = |base| -> R<inkwell::values::VectorValue<'ctx>> {
                let ptr = g.gep_bytes(base, off)?;
                let ld = g.b.build_load(v4, ptr, "")?;
                ld.as_instruction_value()
                    .ok_or(LlvmError::Internal("load"))?
                    .set_alignment(16)
                    .map_err(|_| LlvmError::Internal("alignment"))?;
                let h = g.b.build_bit_cast(ld, half, "")?.into_vector_value();
                Ok(g.b.build_float_ext(h, f8, "")?)
            };
            let (x, y) = (load(o)?, load(d_o)?);
            let mut part = g.cf(0.0);
            for i in 0..8 {
                let xi =
                    g.b.build_extract_element(x, g.c32(i), "")?
                        .into_float_value();
                let yi =
                    g.b.build_extract_element(y, g.c32(i), "")?
                        .into_float_value();
                part = g.fadd(part, g.fmul(xi, yi)?)?;
            }
            sum = g.fadd(sum, g.selectf(ok, part, g.cf(0.0))?)?;
        }
        g.set(&acc, sum)
    })?;
    // the `lanes` threads of a row (adjacent lanes) sum their parts
    let mut sum = g.getf(&acc)?;
    let mut w = 1;
    while w < lanes {
        sum = g.fadd(sum, g.shfl_xor(sum, w as i64)?)?;
        w *= 2;
    }
    g.if_then(
        g.and(inside, g.icmp(IntPredicate::EQ, sub, g.c32(0))?)?,
        || {
            let at = g.mul(row, g.c64(4))?;
            let has = g.icmp(IntPredicate::NE, a.int(KernelParam::HasDLse)?, g.c32(0))?;
            let dlse = g.var(g.f32, g.cf(0.0))?;
            g.if_then(has, || {
                let x = g.load_f32(a.ptr(KernelParam::DLse)?, row)?;
                g.set(&dlse, x)
            })?;
            let delta = g.fsub(sum, g.getf(&dlse)?)?;
            g.store(g.gep_bytes(a.ptr(KernelParam::Delta)?, at)?, delta)?;
            let lse = g.load_f32(a.ptr(KernelParam::Lse)?, row)?;
            let dead = g.fcmp(FloatPredicate::OEQ, lse, g.cf(f32::NEG_INFINITY))?;
            let l2 = g.selectf(dead, g.cf(f32::INFINITY), g.fmul(lse, g.cf(LOG2E))?)?;
            g.store(g.gep_bytes(a.ptr(KernelParam::Lse2)?, at)?, l2)
        },
    )?;
    g.b.build_return(None)?;
    Ok(())
}

// ---- fragments and products -------------------------------------------------------------------

/// One warp's m16 x n accumulator: `n / 8` m16n8 tiles; element `i` of tile `nt` is at row
/// `lane / 4 + 8 (i / 2)`, column `8 nt + 2 (lane % 4) + i % 2`.
pub(super) type Acc<'ctx> = Vec<[FloatValue<'ctx>; 4]>;

/// A fragments of rows `row0..row0 + 16` of a row-major tile, one per 16 columns.
fn frags_a<'ctx>(
    g: &Gpu<'ctx>,
    t: &SmemTile,
    lane: IntValue<'ctx>,
    row0: IntValue<'ctx>,
    extra: IntValue<'ctx>,
) -> R<Vec<[IntValue<'ctx>; 4]>> {
    // lane l addresses row (l % 8) + 8 ((l / 8) % 2), chunk 2 ks + l / 16
    let r8 = g.and(lane, g.c32(7))?;
    let hi8 = g.and(g.lshr(lane, g.c32(3))?, g.c32(1))?;
    let row = g.add(g.add(row0, r8)?, g.mul(hi8, g.c32(8))?)?;
    let half = g.lshr(lane, g.c32(4))?;
    (0..t.cols / 16)
        .map(|ks| {
            let chunk = g.add(g.c32(2 * ks as i64), half)?;
            g.ldmatrix_x4(t.addr_at(g, row, chunk, extra)?, false)
        })
        .collect()
}

/// The A fragment of k-step `ks` of the warp's 16 rows `row0 ..` of `t` (one of
/// [`frags_a`]'s).
fn frag_a_step<'ctx>(
    g: &Gpu<'ctx>,
    t: &SmemTile,
    lane: IntValue<'ctx>,
    row0: IntValue<'ctx>,
    ks: u32,
) -> R<[IntValue<'ctx>; 4]> {
    let r8 = g.and(lane, g.c32(7))?;
    let hi8 = g.and(g.lshr(lane, g.c32(3))?, g.c32(1))?;
    let row = g.add(g.add(row0, r8)?, g.mul(hi8, g.c32(8))?)?;
    let chunk = g.add(g.c32(2 * ks as i64), g.lshr(lane, g.c32(4))?)?;
    g.ldmatrix_x4(t.addr_at(g, row, chunk, g.c32(0))?, false)
}

/// Where [`mm_abt`] takes its A operand (16 x k): fragments already in registers, or the
/// warp's 16 rows `row0 ..` of a shared-memory tile, loaded one k-step at a time (4
/// registers live instead of k / 4: the head dim of 256's products on mma.sync).
#[derive(Clone, Copy)]
enum ASrc<'a, 'ctx> {
    Frags(&'a [[IntValue<'ctx>; 4]]),
    Rows(&'a SmemTile, IntValue<'ctx>),
}

/// `C = A Bᵀ` for this warp: A (16 x k) as fragments or rows ([`ASrc`]), B all `b.rows`
/// rows of a tile whose columns are the k dimension. Returns `b.rows / 8` m16n8 tiles.
fn mm_abt<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: ASrc<'_, 'ctx>,
    b: &SmemTile,
    lane: IntValue<'ctx>,
    extra: IntValue<'ctx>,
) -> R<Acc<'ctx>> {
    let zero = g.cf(0.0);
    let mut c = vec![[zero; 4]; (b.rows / 8) as usize];
    // lane l: matrix mi = l / 8 -> row (2 ntp + mi / 2) * 8 + l % 8, chunk 2 ks + mi % 2
    let r8 = g.and(lane, g.c32(7))?;
    let mi = g.lshr(lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.lshr(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.and(mi, g.c32(1))?;
    let steps = match a {
        ASrc::Frags(f) => f.len(),
        ASrc::Rows(t, _) => (t.cols / 16) as usize,
    };
    for ks in 0..steps {
        let af = match a {
            ASrc::Frags(f) => f[ks],
            ASrc::Rows(t, row0) => frag_a_step(g, t, lane, row0, ks as u32)?,
        };
        let af = &af;
        for ntp in 0..(b.rows / 16) as usize {
            let row = g.add(row_in, g.c32(16 * ntp as i64))?;
            let chunk = g.add(chunk_in, g.c32(2 * ks as i64))?;
            let bf = g.ldmatrix_x4(b.addr_at(g, row, chunk, extra)?, false)?;
            c[2 * ntp] = g.mma(ty, af, &[bf[0], bf[1]], &c[2 * ntp])?;
            c[2 * ntp + 1] = g.mma(ty, af, &[bf[2], bf[3]], &c[2 * ntp + 1])?;
        }
    }
    Ok(c)
}

/// `acc += A B` for this warp: A (16 x k) as fragments (k = `b.rows`), B a tile whose rows
/// are the k dimension (read with `ldmatrix.trans`), `acc` over its `b.cols` columns.
fn mm_ab<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: &[[IntValue<'ctx>; 4]],
    b: &SmemTile,
    lane: IntValue<'ctx>,
    extra: IntValue<'ctx>,
    acc: &mut Acc<'ctx>,
) -> R<()> {
    mm_ab_cols(g, ty, a, (b, b.cols), lane, extra, acc)
}

/// [`mm_ab`] over the first `cols` columns of `b` (a column part: `extra` adds the
/// part's byte offset into the rows, a multiple of 8 chunks so the swizzle holds).
fn mm_ab_cols<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: &[[IntValue<'ctx>; 4]],
    (b, cols): (&SmemTile, u32),
    lane: IntValue<'ctx>,
    extra: IntValue<'ctx>,
    acc: &mut Acc<'ctx>,
) -> R<()> {
    debug_assert!(cols == b.cols || (!b.slab && (cols / 8).is_multiple_of(8)));
    // lane l: matrix mi = l / 8 -> row 16 kk + (mi % 2) * 8 + l % 8, chunk 2 ntp + mi / 2
    let r8 = g.and(lane, g.c32(7))?;
    let mi = g.lshr(lane, g.c32(3))?;
    let row_in = g.add(g.mul(g.and(mi, g.c32(1))?, g.c32(8))?, r8)?;
    let chunk_in = g.lshr(mi, g.c32(1))?;
    for (kk, af) in a.iter().enumerate() {
        for ntp in 0..(cols / 16) as usize {
            let row = g.add(row_in, g.c32(16 * kk as i64))?;
            let chunk = g.add(chunk_in, g.c32(2 * ntp as i64))?;
            let bf = g.ldmatrix_x4(b.addr_at(g, row, chunk, extra)?, true)?;
            acc[2 * ntp] = g.mma(ty, af, &[bf[0], bf[1]], &acc[2 * ntp])?;
            acc[2 * ntp + 1] = g.mma(ty, af, &[bf[2], bf[3]], &acc[2 * ntp + 1])?;
        }
    }
    Ok(())
}

/// An accumulator (16 x n) rounded to the input type as A fragments, one per 16 columns.
pub(super) fn acc_to_a<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    x: &Acc<'ctx>,
) -> R<Vec<[IntValue<'ctx>; 4]>> {
    (0..x.len() / 2)
        .map(|kk| {
            let (a, b) = (&x[2 * kk], &x[2 * kk + 1]);
            Ok([
                g.pack2(ty, a[0], a[1])?,
                g.pack2(ty, a[2], a[3])?,
                g.pack2(ty, b[0], b[1])?,
                g.pack2(ty, b[2], b[3])?,
            ])
        })
        .collect()
}

/// Byte offset of the 16-column step `ks` of a slab tile from its start: the 64-column
/// slab, then 32 bytes per step inside the 128-byte row (the hardware swizzles).
pub(super) fn slab_kstep(t: &SmemTile, ks: u32) -> u32 {
    (ks / 4) * t.rows * 128 + (ks % 4) * 32
}

/// How a fused kernel forms each operand tile's wgmma descriptors: every descriptor from
/// its address (`Each`), or from one base per tile plus a constant per k-step
/// ([`PtxOptions::bwd_desc`]): the low word plus a 32-bit constant, the high word joined
/// per descriptor (`Base`), or with [`PtxOptions::bwd_desc64`] one 64-bit base plus a
/// 64-bit constant (`Base64`: one `UIADD3.64` per descriptor in ptxas's SASS). The same
/// descriptors each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Desc {
    Each,
    Base,
    Base64,
}

impl Desc {
    /// The fused kernel's form under `o`.
    pub fn of(o: &PtxOptions) -> Self {
        match (o.bwd_desc, o.bwd_desc64) {
            (false, _) => Desc::Each,
            (true, false) => Desc::Base,
            (true, true) => Desc::Base64,
        }
    }
}

/// One operand tile's descriptors from its base ([`Desc::Base`] / [`Desc::Base64`]): the
/// low word of the tile's first descriptor and, for `Base64`, that descriptor as one
/// 64-bit value (stride byte offset 1024, the slabs' 8-row step).
#[derive(Clone, Copy)]
pub(super) struct DescBase<'ctx> {
    lo: IntValue<'ctx>,
    wide: Option<IntValue<'ctx>>,
}

impl<'ctx> DescBase<'ctx> {
    /// The base of the tile at shared-window address `addr` with leading byte offset `lbo`.
    pub fn new(g: &Gpu<'ctx>, d: Desc, addr: IntValue<'ctx>, lbo: u32) -> R<Self> {
        let lo = g.wgmma_desc_lo(addr, lbo)?;
        let wide = if d == Desc::Base64 {
            Some(g.wgmma_desc_base(lo, 1024)?)
        } else {
            None
        };
        Ok(DescBase { lo, wide })
    }

    /// The descriptor of the tile's address plus `off` bytes (a multiple of 16).
    pub fn at(&self, g: &Gpu<'ctx>, off: u32) -> R<IntValue<'ctx>> {
        match self.wide {
            Some(w) => g.wgmma_desc_step(w, off),
            None => g.wgmma_desc_at(self.lo, off, 1024),
        }
    }
}

/// Issues `A Bᵀ` on this warp's warpgroup (wgmma, not committed): A its 64 rows (from
/// row `64 wg`) of the slab tile `a`, B every row of the slab tile `b` placed `b_extra`
/// bytes further, both K-major (their columns are the reduction dimension). Returns the
/// warpgroup accumulator (`b.rows / 2` values per thread, m16n8 order per 8 columns),
/// valid after a `wgmma_wait` that covers it. `desc`: how the descriptors are formed
/// ([`Desc`]; the same values). `init`: the accumulator's values before the product
/// (`init + A Bᵀ`; none: `A Bᵀ`).
#[allow(clippy::too_many_arguments)]
pub(super) fn wg_abt<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: &SmemTile,
    wg: IntValue<'ctx>,
    b: &SmemTile,
    b_extra: IntValue<'ctx>,
    desc: Desc,
    init: Option<&[FloatValue<'ctx>]>,
) -> R<Vec<FloatValue<'ctx>>> {
    let a_base = g.smem_addr32(g.add(g.mul(wg, g.c32(64 * 128))?, g.c32(a.offset as i64))?)?;
    let b_base = g.smem_addr32(g.add(b_extra, g.c32(b.offset as i64))?)?;
    let mut acc: Option<Vec<FloatValue<'ctx>>> = init.map(|x| x.to_vec());
    if desc != Desc::Each {
        // PtxOptions::bwd_desc: one base descriptor per tile, a constant per k-step
        let (la, lb) = (
            DescBase::new(g, desc, a_base, 16)?,
            DescBase::new(g, desc, b_base, 16)?,
        );
        for ks in 0..a.cols / 16 {
            let da = la.at(g, slab_kstep(a, ks))?;
            let db = lb.at(g, slab_kstep(b, ks))?;
            acc = Some(g.wgmma(ty, b.rows, WgmmaA::Desc(da), db, false, acc.as_deref())?);
        }
        return acc.ok_or(LlvmError::Internal("empty wgmma product"));
    }
    for ks in 0..a.cols / 16 {
        let da = g.wgmma_desc(g.add(a_base, g.c32(slab_kstep(a, ks) as i64))?, 16, 1024)?;
        let db = g.wgmma_desc(g.add(b_base, g.c32(slab_kstep(b, ks) as i64))?, 16, 1024)?;
        acc = Some(g.wgmma(ty, b.rows, WgmmaA::Desc(da), db, false, acc.as_deref())?);
    }
    acc.ok_or(LlvmError::Internal("empty wgmma product"))
}

/// Issues `acc + A B` on this warp's warpgroup (wgmma, not committed): A this warp's 16
/// rows as fragments (one per 16 of the reduction dimension, `b.rows` in all), B the slab
/// tile `b` (placed `b_extra` bytes further) whose rows are the reduction dimension,
/// N-major (`trans-b`): 64-column slabs `b.rows * 128` bytes apart, 8 rows 1024 apart.
/// `desc`: how the descriptors are formed ([`Desc`]).
pub(super) fn wg_ab<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: &[[IntValue<'ctx>; 4]],
    b: &SmemTile,
    b_extra: IntValue<'ctx>,
    acc: &[FloatValue<'ctx>],
    desc: Desc,
) -> R<Vec<FloatValue<'ctx>>> {
    let base = g.smem_addr32(g.add(b_extra, g.c32(b.offset as i64))?)?;
    let mut acc = acc.to_vec();
    if desc != Desc::Each {
        let lo = DescBase::new(g, desc, base, b.rows * 128)?;
        for (kk, af) in a.iter().enumerate() {
            let db = lo.at(g, kk as u32 * 16 * 128)?;
            acc = g.wgmma(ty, b.cols, WgmmaA::Regs(*af), db, true, Some(&acc))?;
        }
        return Ok(acc);
    }
    for (kk, af) in a.iter().enumerate() {
        let db = g.wgmma_desc(
            g.add(base, g.c32(kk as i64 * 16 * 128))?,
            b.rows * 128,
            1024,
        )?;
        acc = g.wgmma(ty, b.cols, WgmmaA::Regs(*af), db, true, Some(&acc))?;
    }
    Ok(acc)
}

/// K-step `kk` of [`wg_ab`] alone (A fragment `a`, the reduction rows `16 kk ..` of `b`):
/// `acc + A B` over those 16 rows, not committed ([`PtxOptions::bwd_dv_chunks`]: each
/// chunk's step issued as soon as its fragment is ready). The same descriptor as
/// [`wg_ab`]'s step `kk`.
#[allow(clippy::too_many_arguments)]
pub(super) fn wg_ab_step<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    a: [IntValue<'ctx>; 4],
    b: &SmemTile,
    b_extra: IntValue<'ctx>,
    kk: u32,
    acc: &[FloatValue<'ctx>],
    desc: Desc,
) -> R<Vec<FloatValue<'ctx>>> {
    let base = g.smem_addr32(g.add(b_extra, g.c32(b.offset as i64))?)?;
    let db = if desc != Desc::Each {
        DescBase::new(g, desc, base, b.rows * 128)?.at(g, kk * 16 * 128)?
    } else {
        g.wgmma_desc(
            g.add(base, g.c32(kk as i64 * 16 * 128))?,
            b.rows * 128,
            1024,
        )?
    };
    g.wgmma(ty, b.cols, WgmmaA::Regs(a), db, true, Some(acc))
}

/// A warpgroup accumulator as this warp's m16n8 tiles, and back.
pub(super) fn from_flat<'ctx>(x: &[FloatValue<'ctx>]) -> Acc<'ctx> {
    x.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

pub(super) fn to_flat<'ctx>(x: &Acc<'ctx>) -> Vec<FloatValue<'ctx>> {
    x.iter().flatten().copied().collect()
}

/// Waits for every wgmma group of this thread and returns `x` (an accumulator of the
/// last group) as m16n8 tiles.
pub(super) fn wg_result<'ctx>(g: &Gpu<'ctx>, x: &[FloatValue<'ctx>]) -> R<Acc<'ctx>> {
    Ok(from_flat(&g.wgmma_wait(0, x)?))
}

pub(super) fn acc_vars<'ctx>(g: &Gpu<'ctx>, n_tiles: usize) -> R<Vec<[Var<'ctx>; 4]>> {
    (0..n_tiles)
        .map(|_| {
            Ok([
                g.var(g.f32, g.cf(0.0))?,
                g.var(g.f32, g.cf(0.0))?,
                g.var(g.f32, g.cf(0.0))?,
                g.var(g.f32, g.cf(0.0))?,
            ])
        })
        .collect()
}

pub(super) fn acc_get<'ctx>(g: &Gpu<'ctx>, v: &[[Var<'ctx>; 4]]) -> R<Acc<'ctx>> {
    v.iter()
        .map(|x| {
            Ok([
                g.getf(&x[0])?,
                g.getf(&x[1])?,
                g.getf(&x[2])?,
                g.getf(&x[3])?,
            ])
        })
        .collect()
}

pub(super) fn acc_set<'ctx>(g: &Gpu<'ctx>, v: &[[Var<'ctx>; 4]], x: &Acc<'ctx>) -> R<()> {
    for (a, b) in v.iter().zip(x) {
        for i in 0..4 {
            g.set(&a[i], b[i])?;
        }
    }
    Ok(())
}

/// Stores this warp's 16 rows (`row0 + lane / 4 + 8 hr`, rows < `len` only) of an
/// accumulator times `mul`, rounded to the input type, into the row-major matrix at
/// `base` (row stride `cols` elements).
#[allow(clippy::too_many_arguments)]
pub(super) fn store_rows<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    lane: IntValue<'ctx>,
    base: PointerValue<'ctx>,
    row0: IntValue<'ctx>,
    len: IntValue<'ctx>,
    cols: u32,
    acc: &Acc<'ctx>,
    mul: Option<FloatValue<'ctx>>,
) -> R<()> {
    let quad = g.and(lane, g.c32(3))?;
    let rb = g.add(row0, g.lshr(lane, g.c32(2))?)?;
    for hr in 0..2 {
        let row = g.add(rb, g.c32(8 * hr as i64))?;
        let vals: Vec<[FloatValue<'ctx>; 2]> = acc
            .iter()
            .map(|x| {
                let f = |v| match mul {
                    Some(m) => g.fmul(v, m),
                    None => Ok(v),
                };
                Ok([f(x[2 * hr])?, f(x[2 * hr + 1])?])
            })
            .collect::<R<_>>()?;
        g.if_then(g.icmp(IntPredicate::SLT, row, len)?, || {
            let off = g.add(
                g.mul(g.zext64(row)?, g.c64(cols as i64 * 2))?,
                g.zext64(g.mul(quad, g.c32(4))?)?,
            )?;
            for (nt, v) in vals.iter().enumerate() {
                let packed = g.pack2(ty, v[0], v[1])?;
                let ptr = g.gep_bytes(base, g.add(off, g.c64(nt as i64 * 16))?)?;
                let st = g.b.build_store(ptr, packed)?;
                st.set_alignment(4)
                    .map_err(|_| LlvmError::Internal("alignment"))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `base + ((b * heads + head) * len) * dim * 2` bytes: the (b, head) slice of a
/// `[B, heads, len, dim]` 16-bit tensor.
pub(super) fn slice_base<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    b: IntValue<'ctx>,
    heads: IntValue<'ctx>,
    head: IntValue<'ctx>,
    len: IntValue<'ctx>,
    dim: u32,
) -> R<PointerValue<'ctx>> {
    let slice = g.zext64(g.add(g.mul(b, heads)?, head)?)?;
    let off = g.mul(g.mul(slice, g.zext64(len)?)?, g.c64(dim as i64 * 2))?;
    g.gep_bytes(base, off)
}

// ---- P and dS on the fragments ----------------------------------------------------------------

/// The per-element inputs of [`grad_scores`].
pub(super) struct ElemCtx<'a, 'ctx> {
    pub p: &'a Program,
    /// The score and `∂score/∂s` (none: the identity score).
    pub sd: Option<&'a (Function, Function)>,
    pub env: &'a Env<'ctx>,
    pub scale: FloatValue<'ctx>,
    pub b: IntValue<'ctx>,
    pub h: IntValue<'ctx>,
    pub lq: IntValue<'ctx>,
    pub lkv: IntValue<'ctx>,
    /// The kernel that sums capture gradients (the dQ or the fused kernel): where they go.
    pub cap: Option<&'a CapCtx<'a, 'ctx>>,
    /// [`PtxOptions::bwd_ds_unguarded`]: on full blocks, with the identity score and no
    /// capture gradients, dS = P (dP - Delta) without the select that zeroes it where P = 0.
    pub full_unguarded: bool,
    /// [`PtxOptions::bwd_affine_unguarded`]: the same for a score whose derivative is a
    /// constant ([`grad_scores_affine`]).
    pub affine_unguarded: bool,
    /// [`PtxOptions::bwd_band_keep`]: the partial blocks' mask as q intervals per kv row.
    pub band: Option<&'a BandKeep<'a, 'ctx>>,
    /// [`PtxOptions::bwd_exp_emu`]: of every 8 elements `4 nt + i` of the fragment, the
    /// first `exp_emu` take [`ex2_poly`] on full blocks (0: every element `ex2`).
    pub exp_emu: u32,
    /// The tile's box of positions (the fused kernel's visit), for capture gradients whose
    /// reads are one element over the tile ([`super::uniform`]): full blocks where they
    /// are take a path that reads each once and sums one run per read site.
    pub tile: Option<TileBox<'ctx>>,
    /// The element's position made afresh in each element path (from bases LLVM cannot
    /// merge across paths) instead of once before the paths branch: positions made before
    /// the branch stay live across it, and where the paths need many registers (capture
    /// gradients) ptxas spills S and dP there to make room, in every path.
    pub fresh_pos: Option<&'a dyn Fn(usize, usize) -> R<Pos<'ctx>>>,
}

/// `2^x` on the FMA pipe ([`PtxOptions::bwd_exp_emu`]): `x` clamped at -125 (p's exponent is
/// 126 or 127: the sum stays a normal number), `j` =
/// round(x) by adding and subtracting 1.5 * 2^23 (round-to-nearest adds, never
/// contracted), `p(f)` of `f = x - j` in [-0.5, 0.5] a degree-3 least-squares fit of
/// `2^f` in relative error (7.7e-5 at most, f32 coefficients), and `2^j` added to p's
/// exponent as an integer (`j << 23`: the low bits of `x + 1.5 * 2^23` are `j` in two's
/// complement and `0x4b400000 << 23` vanishes mod 2^32). For finite x of a full block:
/// logits there are at most ~0 (P <= 1); below -125 the result is a tiny non-negative
/// number instead of 0 (never NaN).
pub(super) fn ex2_poly<'ctx>(g: &Gpu<'ctx>, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const C: [f32; 4] = [0.999_928_95, 0.693_276_2, 0.242_604_05, 0.055_088_684];
    let x = g.fmax(x, g.cf(-125.0))?;
    let t = g.fintr2("llvm.nvvm.add.rn.f", x, g.cf(MAGIC))?;
    let j = g.fintr2("llvm.nvvm.add.rn.f", t, g.cf(-MAGIC))?;
    let f = g.fsub(x, j)?;
    let fma =
        |a: FloatValue<'ctx>, b: FloatValue<'ctx>, c: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(g.call(
                "llvm.fma.f32",
                Some(g.f32.into()),
                &[a.into(), b.into(), c.into()],
            )?
            .ok_or(LlvmError::Internal("fma"))?
            .into_float_value())
        };
    let mut p = g.cf(C[3]);
    for &c in C[..3].iter().rev() {
        p = fma(p, f, g.cf(c))?;
    }
    let tb = g.b.build_bit_cast(t, g.i32, "")?.into_int_value();
    let pb = g.b.build_bit_cast(p, g.i32, "")?.into_int_value();
    let r = g.add(pb, g.shl(tb, g.c32(23))?)?;
    Ok(g.b.build_bit_cast(r, g.f32, "")?.into_float_value())
}

/// `2^x` of fragment element (`nt`, `i`): [`ex2_poly`] where `emu` ([`ElemCtx::exp_emu`],
/// full blocks only) picks it, else `ex2.approx.ftz`.
fn ex2_at<'ctx>(
    g: &Gpu<'ctx>,
    emu: u32,
    nt: usize,
    i: usize,
    x: FloatValue<'ctx>,
) -> R<FloatValue<'ctx>> {
    if ((4 * nt + i) % 8) < emu as usize {
        ex2_poly(g, x)
    } else {
        g.ex2(x)
    }
}

/// [`PtxOptions::bwd_band_keep`]: a partial block's mask of an exact closed form on the
/// kv-row x q-column fragments, per kv row half `i / 2` of the thread: `(lo, hi)` such that
/// element (`nt`, `i`) is kept iff `lo <= 8 nt + i % 2 <= hi` (q relative to the thread's
/// first column, clamped into the tile: i32 compares against constants).
pub(super) struct BandKeep<'a, 'ctx> {
    /// The closed form holds for this launch (`KvAllPartial` = 0); else the partial path
    /// evaluates the mask per element.
    pub ok: IntValue<'ctx>,
    /// Emits the two rows' `(lo, hi)` (called once, in the band path's block).
    pub rows: &'a dyn Fn() -> R<[(IntValue<'ctx>, IntValue<'ctx>); 2]>,
}

/// One element's position: the integers and, with float positions
/// ([`PtxOptions::float_positions`]), the same positions as exact floats `(q, kv)`.
#[derive(Clone, Copy)]
pub(super) struct Pos<'ctx> {
    pub q: IntValue<'ctx>,
    pub kv: IntValue<'ctx>,
    pub f: Option<(FloatValue<'ctx>, FloatValue<'ctx>)>,
    /// `kv - q` as the bases' difference plus a constant (`expr::Elem::rel`;
    /// `PtxOptions::diag_cse`).
    pub rel: Option<IntValue<'ctx>>,
}

/// The float positions of a fragment's elements, whose positions are `(q + dq, kv + dkv)`
/// for base positions (q, kv) and offsets constant per element: with float positions
/// ([`PtxOptions::float_positions`]) one conversion of each base and a float addition of
/// the offset (exact below `FLOAT_POSITIONS_MAX`), so the score converts no position per
/// element (`expr::PosF`); without, nothing (the kernel is as before).
#[derive(Clone, Copy)]
pub(super) struct PosBase<'ctx> {
    f: Option<(FloatValue<'ctx>, FloatValue<'ctx>)>,
    /// `kv - q` of the bases (`PtxOptions::diag_cse`).
    rel: Option<IntValue<'ctx>>,
}

impl<'ctx> PosBase<'ctx> {
    /// `base` gives the base positions (called once, only with float positions or
    /// `diag_cse`).
    pub fn new(
        g: &Gpu<'ctx>,
        opts: &PtxOptions,
        base: &dyn Fn() -> R<(IntValue<'ctx>, IntValue<'ctx>)>,
    ) -> R<Self> {
        let share = opts.diag_cse && !opts.checked;
        if !opts.float_positions && !share {
            return Ok(PosBase { f: None, rel: None });
        }
        let (q, kv) = base()?;
        let f = if opts.float_positions {
            Some((
                g.b.build_signed_int_to_float(q, g.f32, "")?,
                g.b.build_signed_int_to_float(kv, g.f32, "")?,
            ))
        } else {
            None
        };
        let rel = if share { Some(g.sub(kv, q)?) } else { None };
        Ok(PosBase { f, rel })
    }

    /// The element at (`q`, `kv`), offsets (`dq`, `dkv`) from the bases.
    pub fn at(
        &self,
        g: &Gpu<'ctx>,
        (q, kv): (IntValue<'ctx>, IntValue<'ctx>),
        dq: i64,
        dkv: i64,
    ) -> R<Pos<'ctx>> {
        let off = |x: FloatValue<'ctx>, d: i64| {
            if d == 0 {
                Ok(x)
            } else {
                g.fadd(x, g.cf(d as f32))
            }
        };
        Ok(Pos {
            q,
            kv,
            f: match self.f {
                Some((qf, kvf)) => Some((off(qf, dq)?, off(kvf, dkv)?)),
                None => None,
            },
            rel: match self.rel {
                Some(r) => Some(g.add(r, g.c32(dkv - dq))?),
                None => None,
            },
        })
    }
}

/// A function's linear forms (`analysis::linear::linear_ints`) for [`PosF`].
type Forms = Vec<Option<crate::analysis::linear::LinExpr>>;

/// The element's float positions with `forms` ([`PosF`]), where both exist.
fn pos_f<'a, 'ctx>(pos: &Pos<'ctx>, forms: Option<&'a Forms>) -> Option<PosF<'a, 'ctx>> {
    match (pos.f, forms) {
        (Some((q, kv)), Some(forms)) => Some(PosF { q, kv, forms }),
        _ => None,
    }
}

impl<'ctx> ElemCtx<'_, 'ctx> {
    /// The score's element at (`q`, `kv`) from the raw dot product `x`: the scaled score and
    /// whether the position exists (inside both lengths); on the partial-block path
    /// (`slow`) also whether the mask keeps it, which is returned too (none on the
    /// full-block path).
    fn element_at(
        &self,
        g: &Gpu<'ctx>,
        x: FloatValue<'ctx>,
        pos: Pos<'ctx>,
        slow: bool,
    ) -> R<(Elem<'ctx>, Option<IntValue<'ctx>>)> {
        let (q, kv) = (pos.q, pos.kv);
        let q_in = g.icmp(IntPredicate::SLT, q, self.lq)?;
        let kv_in = g.icmp(IntPredicate::SLT, kv, self.lkv)?;
        let el = Elem {
            s: g.fmul(x, self.scale)?,
            b: self.b,
            h: self.h,
            q,
            kv,
            inside: g.and(q_in, kv_in)?,
            rel: pos.rel,
        };
        if !slow {
            return Ok((el, None));
        }
        let k = g.and(q_in, kv_in)?;
        let keep = match &self.p.mask {
            Some(f) => g.and(k, emit_function(g, self.env, f, el)?.into_int_value())?,
            None => k,
        };
        let el = Elem {
            inside: g.and(el.inside, keep)?,
            ..el
        };
        Ok((el, Some(keep)))
    }

    /// The element's logit in log2 units, `score · log2 e − L2` (`x · raw_mul − L2` for
    /// the identity score, `raw_mul` = scale · log2 e), and `∂score/∂s` there (none for
    /// the identity score); `pos`: the element's float positions.
    fn logit(
        &self,
        g: &Gpu<'ctx>,
        el: Elem<'ctx>,
        pos: Option<PosF<'_, 'ctx>>,
        x: FloatValue<'ctx>,
        l2: FloatValue<'ctx>,
        raw_mul: FloatValue<'ctx>,
    ) -> R<(FloatValue<'ctx>, Option<FloatValue<'ctx>>)> {
        Ok(match self.sd {
            Some((f, df)) => (
                g.fsub(
                    g.fmul(
                        emit_function_at(g, self.env, f, el, pos)?.into_float_value(),
                        g.cf(LOG2E),
                    )?,
                    l2,
                )?,
                Some(emit_function_at(g, self.env, df, el, pos)?.into_float_value()),
            ),
            None => (g.fsub(g.fmul(x, raw_mul)?, l2)?, None),
        })
    }
}

/// The capture-gradient side of the dQ kernel (module docs, "Capture gradients").
pub(super) struct CapCtx<'a, 'ctx> {
    /// The score and all its derivatives, one function.
    sg: &'a crate::grad::ScoreGrad,
    /// Per captured tensor id: its gradient words (tensors with read sites only).
    tensor_grads: Vec<Option<PointerValue<'ctx>>>,
    /// The params' gradient words.
    param_grads: Option<PointerValue<'ctx>>,
    /// Per entry of `sg.params`: this thread's f32 sum.
    param_sums: Vec<Var<'ctx>>,
}

impl<'a, 'ctx> CapCtx<'a, 'ctx> {
    pub fn new(
        g: &Gpu<'ctx>,
        sg: &'a crate::grad::ScoreGrad,
        p: &Program,
        a: &Args<'_, 'ctx>,
    ) -> R<Self> {
        let caps = capture_grads(p);
        let mut tensor_grads = vec![None; p.tensors.len()];
        for t in &caps.tensors {
            tensor_grads[*t as usize] = Some(a.ptr(KernelParam::TensorGrad(*t))?);
        }
        Ok(CapCtx {
            sg,
            tensor_grads,
            param_grads: if caps.params.is_empty() {
                None
            } else {
                Some(a.ptr(KernelParam::ParamGrad)?)
            },
            param_sums: sg
                .params
                .iter()
                .map(|_| g.var(g.f32, g.cf(0.0)))
                .collect::<R<_>>()?,
        })
    }

    /// Empty runs, one per read site, for the elements of one path of a tile.
    fn runs(&self, g: &Gpu<'ctx>) -> Vec<Run<'ctx>> {
        vec![
            Run {
                valid: g.cbool(false),
                index: g.c64(0),
                sum: g.cf(0.0),
            };
            self.sg.reads.len()
        ]
    }

    /// Sends the pending runs (the end of a path of a tile; the whole warp is here). When
    /// every pending run of the warp names one gradient element (a relative-position
    /// table's clamped end, a T5 bucket), the warp sums its words first (integers: exact,
    /// any order) and its first such lane sends one atomic pair instead of 32.
    fn flush(&self, g: &Gpu<'ctx>, runs: &[Run<'ctx>]) -> R<()> {
        for (r, run) in self.sg.reads.iter().zip(runs) {
            let base = self.tensor_grads[r.tensor.0 as usize]
                .ok_or(LlvmError::Internal("tensor gradient buffer"))?;
            // a non-finite sum sets its flag alone; a finite one becomes fixed-point words
            let finite = is_finite(g, run.sum)?;
            g.if_then(g.and(run.valid, g.xor(finite, g.cbool(true))?)?, || {
                flag_add(g, base, run.index, run.sum)
            })?;
            let (hi, lo) = fixed_split(g, run.sum)?;
            let run = FixedRun {
                valid: g.and(run.valid, finite)?,
                index: run.index,
                hi,
                lo,
            };
            let ballot = warp_ballot(g, run.valid)?;
            // the first lane with a pending run (32 when none: masked to 0, unused)
            let leader = count_trailing_zeros(g, ballot, false)?;
            let leader = g.and(leader, g.c32(31))?;
            let lead_index = shfl_idx64(g, run.index, leader)?;
            let same = g.or(
                g.xor(run.valid, g.cbool(true))?,
                g.icmp(IntPredicate::EQ, run.index, lead_index)?,
            )?;
            let one = g.and(
                g.vote_all(same)?,
                g.icmp(IntPredicate::NE, ballot, g.c32(0))?,
            )?;
            let (one_bb, each_bb, done) = (
                g.block("grad_warp_sum"),
                g.block("grad_lane_sends"),
                g.block("grad_flushed"),
            );
            g.cond_br(one, one_bb, each_bb)?;
            g.b.position_at_end(one_bb);
            let mut hi = g.selecti(run.valid, run.hi, g.c64(0))?;
            let mut lo = g.selecti(run.valid, run.lo, g.c64(0))?;
            for w in [16, 8, 4, 2, 1] {
                hi = g.add(hi, shfl_xor64(g, hi, w)?)?;
                lo = g.add(lo, shfl_xor64(g, lo, w)?)?;
            }
            let lane = g.and(g.tid_x()?, g.c32(31))?;
            g.if_then(g.icmp(IntPredicate::EQ, lane, leader)?, || {
                words_add(g, base, lead_index, (hi, lo))
            })?;
            g.br(done)?;
            g.b.position_at_end(each_bb);
            g.if_then(run.valid, || {
                words_add(g, base, run.index, (run.hi, run.lo))
            })?;
            g.br(done)?;
            g.b.position_at_end(done);
        }
        Ok(())
    }

    /// The per-element part: `g = dS'` of a kept element (`kept`), the derivative IR's
    /// values `vals` at it; tensor contributions extend or replace the read sites' `runs`.
    /// On a tile of [`CapCtx::uniform_runs`] (`uniform`) every contribution adds to its
    /// read site's one run: no index per element, nothing sent before the flush.
    #[allow(clippy::too_many_arguments)]
    fn element(
        &self,
        g: &Gpu<'ctx>,
        env: &Env<'ctx>,
        vals: &[Option<BasicValueEnum<'ctx>>],
        dsp: FloatValue<'ctx>,
        kept: IntValue<'ctx>,
        runs: &mut [Run<'ctx>],
        uniform: bool,
    ) -> R<()> {
        let val = |v: crate::ir::Value| {
            vals[v.index()].ok_or(LlvmError::Internal("derivative output not emitted"))
        };
        self.param_terms(g, &val, dsp, kept)?;
        if uniform {
            for (r, run) in self.sg.reads.iter().zip(runs.iter_mut()) {
                let c = g.fmul(dsp, val(r.partial)?.into_float_value())?;
                let add = g.and(kept, val(r.guard)?.into_int_value())?;
                run.sum = g.fadd(run.sum, g.selectf(add, c, g.cf(0.0))?)?;
            }
            return Ok(());
        }
        for (r, run) in self.sg.reads.iter().zip(runs.iter_mut()) {
            let Some(base) = self.tensor_grads[r.tensor.0 as usize] else {
                return Err(LlvmError::Internal("tensor gradient buffer"));
            };
            let idx: Vec<IntValue<'ctx>> = r
                .indices
                .iter()
                .map(|v| val(*v).map(|x| x.into_int_value()))
                .collect::<R<_>>()?;
            let guard = val(r.guard)?.into_int_value();
            let c = g.fmul(dsp, val(r.partial)?.into_float_value())?;
            let (flat, _) = flat_index(g, &env.tensors[r.tensor.0 as usize], &idx)?;
            let add = g.and(kept, guard)?;
            let same = g.and(run.valid, g.icmp(IntPredicate::EQ, flat, run.index)?)?;
            // another element: send the run so far
            let send = g.and(g.and(run.valid, add)?, g.xor(same, g.cbool(true))?)?;
            let prev = *run;
            g.if_then(send, || fixed_add(g, base, prev.index, prev.sum))?;
            let sum = g.selectf(same, g.fadd(prev.sum, c)?, c)?;
            *run = Run {
                valid: g.or(prev.valid, add)?,
                index: g.selecti(add, flat, prev.index)?,
                sum: g.selectf(add, sum, prev.sum)?,
            };
        }
        Ok(())
    }

    /// Runs for a tile whose reads are each one element (`uniform::TileLoads`): read site
    /// r's run is that element (`flat`, per `Load` instruction), summed from 0.
    fn uniform_runs(&self, g: &Gpu<'ctx>, flat: &[Option<IntValue<'ctx>>]) -> R<Vec<Run<'ctx>>> {
        self.sg
            .reads
            .iter()
            .map(|r| {
                Ok(Run {
                    valid: g.cbool(true),
                    index: flat[r.load.index()].ok_or(LlvmError::Internal("tile load"))?,
                    sum: g.cf(0.0),
                })
            })
            .collect()
    }

    /// Adds a kept element's terms `dS' · ∂score/∂param` to the thread's param sums.
    fn param_terms(
        &self,
        g: &Gpu<'ctx>,
        val: &dyn Fn(crate::ir::Value) -> R<BasicValueEnum<'ctx>>,
        dsp: FloatValue<'ctx>,
        kept: IntValue<'ctx>,
    ) -> R<()> {
        for (pg, sum) in self.sg.params.iter().zip(&self.param_sums) {
            let c = g.fmul(dsp, val(pg.partial)?.into_float_value())?;
            let c = g.selectf(kept, c, g.cf(0.0))?;
            g.set(sum, g.fadd(g.getf(sum)?, c)?)?;
        }
        Ok(())
    }

    /// After the kv loop: each warp adds the sum of its lanes' param sums.
    pub fn finish(&self, g: &Gpu<'ctx>, lane: IntValue<'ctx>) -> R<()> {
        let Some(base) = self.param_grads else {
            return Ok(());
        };
        for (pg, sum) in self.sg.params.iter().zip(&self.param_sums) {
            let mut x = g.getf(sum)?;
            for w in [16, 8, 4, 2, 1] {
                x = g.fadd(x, g.shfl_xor(x, w)?)?;
            }
            g.if_then(g.icmp(IntPredicate::EQ, lane, g.c32(0))?, || {
                fixed_add(g, base, g.c64(pg.param.0 as i64), x)
            })?;
        }
        Ok(())
    }
}

/// `vote.sync.ballot.b32` over the full warp: bit `l` set where `p` holds in lane `l`.
pub(super) fn warp_ballot<'ctx>(g: &Gpu<'ctx>, p: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    Ok(g.call(
        "llvm.nvvm.vote.ballot.sync",
        Some(g.i32.into()),
        &[g.c32(-1).into(), p.into()],
    )?
    .ok_or(LlvmError::Internal("ballot"))?
    .into_int_value())
}

/// `llvm.cttz.i32`: the index of `x`'s lowest set bit (a ballot's first lane); `x` = 0
/// gives 32, or poison with `zero_is_poison`.
pub(super) fn count_trailing_zeros<'ctx>(
    g: &Gpu<'ctx>,
    x: IntValue<'ctx>,
    zero_is_poison: bool,
) -> R<IntValue<'ctx>> {
    Ok(g.call(
        "llvm.cttz.i32",
        Some(g.i32.into()),
        &[x.into(), g.cbool(zero_is_poison).into()],
    )?
    .ok_or(LlvmError::Internal("cttz"))?
    .into_int_value())
}

/// `llvm.ctlz.i32`: the number of zero bits above `x`'s highest set bit (a ballot's last
/// lane is `31 - clz`); `x` = 0 gives 32.
pub(super) fn count_leading_zeros<'ctx>(g: &Gpu<'ctx>, x: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    Ok(g.call(
        "llvm.ctlz.i32",
        Some(g.i32.into()),
        &[x.into(), g.cbool(false).into()],
    )?
    .ok_or(LlvmError::Internal("ctlz"))?
    .into_int_value())
}

/// An i64 shuffled over the full warp as two i32 halves: `name` is the
/// `llvm.nvvm.shfl.sync.*.i32` intrinsic, `arg` its lane argument.
fn shfl64<'ctx>(
    g: &Gpu<'ctx>,
    name: &str,
    x: IntValue<'ctx>,
    arg: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    let lo = g.b.build_int_truncate(x, g.i32, "")?;
    let hi = g.b.build_int_truncate(g.lshr(x, g.c64(32))?, g.i32, "")?;
    let sh = |v: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        Ok(g.call(
            name,
            Some(g.i32.into()),
            &[g.c32(-1).into(), v.into(), arg.into(), g.c32(31).into()],
        )?
        .ok_or(LlvmError::Internal("shfl"))?
        .into_int_value())
    };
    let (lo, hi) = (g.zext64(sh(lo)?)?, g.zext64(sh(hi)?)?);
    g.or(g.shl(hi, g.c64(32))?, lo)
}

/// `x` of lane `lane` (every lane of the warp taking part).
fn shfl_idx64<'ctx>(g: &Gpu<'ctx>, x: IntValue<'ctx>, lane: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    shfl64(g, "llvm.nvvm.shfl.sync.idx.i32", x, lane)
}

/// `x` of lane `lane ^ w` (every lane of the warp taking part).
fn shfl_xor64<'ctx>(g: &Gpu<'ctx>, x: IntValue<'ctx>, w: i64) -> R<IntValue<'ctx>> {
    shfl64(g, "llvm.nvvm.shfl.sync.bfly.i32", x, g.c32(w))
}

/// `c` as fixed-point words `(hi, lo)` (module docs, "Capture gradients"), exact for
/// finite `c` (meaningless otherwise: callers send non-finite values to [`flag_add`]).
fn fixed_split<'ctx>(g: &Gpu<'ctx>, c: FloatValue<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let i64t = g.ctx.i64_type();
    let f64t = g.ctx.f64_type();
    let f64c = |name: &str, x: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
        Ok(g.call(name, Some(f64t.into()), &[x.into()])?
            .ok_or(LlvmError::Internal("f64 intrinsic"))?
            .into_float_value())
    };
    let to_i64 = |name: &str, x: FloatValue<'ctx>| -> R<IntValue<'ctx>> {
        Ok(g.call(name, Some(i64t.into()), &[x.into()])?
            .ok_or(LlvmError::Internal("fptoi.sat"))?
            .into_int_value())
    };
    // exact in f64: c has 24 significant bits
    let y = g.b.build_float_mul(
        g.b.build_float_ext(c, f64t, "")?,
        f64t.const_float(2f64.powi(32)),
        "",
    )?;
    let hf = f64c("llvm.floor.f64", y)?;
    let frac = g.b.build_float_sub(y, hf, "")?;
    let lo = f64c(
        "llvm.rint.f64",
        g.b.build_float_mul(frac, f64t.const_float(2f64.powi(28)), "")?,
    )?;
    Ok((
        to_i64("llvm.fptosi.sat.i64.f64", hf)?,
        to_i64("llvm.fptoui.sat.i64.f64", lo)?,
    ))
}

/// The address of word `k` of gradient element `index` (three u64 words per element).
fn grad_word<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    k: i64,
) -> R<PointerValue<'ctx>> {
    g.gep_bytes(base, g.add(g.mul(index, g.c64(24))?, g.c64(8 * k))?)
}

/// Adds the words `(hi, lo)` to gradient element `index` of `base` (integer atomics).
fn words_add<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    (hi, lo): (IntValue<'ctx>, IntValue<'ctx>),
) -> R<()> {
    for (k, v) in [(0, hi), (1, lo)] {
        g.b.build_atomicrmw(
            AtomicRMWBinOp::Add,
            grad_word(g, base, index, k)?,
            v,
            AtomicOrdering::Monotonic,
        )?;
    }
    Ok(())
}

/// Records a non-finite `c` in the flags word of gradient element `index` (1: +inf,
/// 2: −inf, 4: NaN).
fn flag_add<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    c: FloatValue<'ctx>,
) -> R<()> {
    let nan = g.fcmp(FloatPredicate::UNO, c, c)?;
    let pos = g.fcmp(FloatPredicate::OGT, c, g.cf(0.0))?;
    let flag = g.selecti(nan, g.c64(4), g.selecti(pos, g.c64(1), g.c64(2))?)?;
    g.b.build_atomicrmw(
        AtomicRMWBinOp::Or,
        grad_word(g, base, index, 2)?,
        flag,
        AtomicOrdering::Monotonic,
    )?;
    Ok(())
}

/// Whether `c` is finite.
fn is_finite<'ctx>(g: &Gpu<'ctx>, c: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
    let abs = g.fintr("llvm.fabs.f32", c)?;
    g.fcmp(FloatPredicate::OLT, abs, g.cf(f32::INFINITY))
}

/// Adds `c` to gradient element `index` of `base`: the words when finite, else a flag.
fn fixed_add<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    c: FloatValue<'ctx>,
) -> R<()> {
    let finite = is_finite(g, c)?;
    g.if_then(finite, || words_add(g, base, index, fixed_split(g, c)?))?;
    g.if_then(g.xor(finite, g.cbool(true))?, || {
        flag_add(g, base, index, c)
    })
}

/// One read site's run of equal gradient elements in a thread's sequence of elements
/// (SSA values of the current path): contributions to the same element as the previous
/// one are summed here in f32 (in the thread's fixed order, so the sum is the same every
/// run) and sent, split into fixed-point words once, when the element changes or the
/// tile ends. A relative-position table's clamped ends, a T5 bucket: most of a thread's
/// 32 elements of a tile hit one gradient element.
#[derive(Clone, Copy)]
struct Run<'ctx> {
    valid: IntValue<'ctx>,
    index: IntValue<'ctx>,
    sum: FloatValue<'ctx>,
}

/// A run's finite sum as fixed-point words (what the warp sums at a flush).
#[derive(Clone, Copy)]
struct FixedRun<'ctx> {
    valid: IntValue<'ctx>,
    index: IntValue<'ctx>,
    hi: IntValue<'ctx>,
    lo: IntValue<'ctx>,
}

/// `logit` where the mask keeps the element (`keep`; none: the full-block path, no
/// mask), −∞ (P = 0) where it does not.
fn kept_logit<'ctx>(
    g: &Gpu<'ctx>,
    keep: Option<IntValue<'ctx>>,
    logit: FloatValue<'ctx>,
) -> R<FloatValue<'ctx>> {
    match keep {
        Some(k) => g.selectf(k, logit, g.cf(f32::NEG_INFINITY)),
        None => Ok(logit),
    }
}

/// P (probabilities) and dS (`P ∘ (dP − Delta) ∘ score'`, the gradient of the scores
/// before the scale) of one warp's tile, from the raw dot products `s` and `dp`.
/// `at(nt, i)` gives element (nt, i)'s (q, kv, L2, Delta). `full` selects the path
/// without mask and bounds checks.
pub(super) fn grad_scores<'ctx>(
    g: &Gpu<'ctx>,
    e: &ElemCtx<'_, 'ctx>,
    s: &Acc<'ctx>,
    dp: &Acc<'ctx>,
    at: &dyn Fn(usize, usize) -> R<(Pos<'ctx>, FloatValue<'ctx>, FloatValue<'ctx>)>,
    full: IntValue<'ctx>,
) -> R<(Acc<'ctx>, Acc<'ctx>)> {
    if let Some(d) = affine_score(e) {
        return grad_scores_affine(g, e, s, dp, at, full, d);
    }
    let pv = acc_vars(g, s.len())?;
    let dsv = acc_vars(g, s.len())?;
    let fast_bb = g.block("bwd_full_block");
    let slow_bb = g.block("bwd_partial_block");
    // bwd_band_keep: partial blocks of a trusted closed form take the row intervals
    let band = e
        .band
        .map(|b| (b, g.block("bwd_band_pick"), g.block("bwd_band_block")));
    let merge = g.block("bwd_scored");
    // positions and row statistics are computed once, before the branch
    let mut pos = Vec::with_capacity(s.len());
    for nt in 0..s.len() {
        pos.push((0..4).map(|i| at(nt, i)).collect::<R<Vec<_>>>()?);
    }
    // the linear forms of the score (and derivative: one instruction list) and of the
    // capture-gradient function, for the float positions
    let forms = e.sd.map(|(f, _)| crate::analysis::linear::linear_ints(f));
    let cap_forms = e
        .cap
        .map(|c| crate::analysis::linear::linear_ints(&c.sg.func));
    let raw_mul = g.fmul(e.scale, g.cf(LOG2E))?;
    // capture gradients whose reads are one element over this tile (a relative-position
    // table away from the diagonal): full blocks of such tiles take their own path
    let tile_loads = match (e.cap, e.tile) {
        (Some(cap), Some(tile)) if e.env.err.is_none() && uniform::analyzable(&cap.sg.func) => {
            Some(uniform::emit_tile_loads(g, e.env, &cap.sg.func, tile)?)
        }
        _ => None,
    };
    let uni_bb = tile_loads.as_ref().map(|_| g.block("bwd_uniform_block"));
    if let (Some(tl), Some(ub)) = (&tile_loads, uni_bb) {
        let rest = g.block("bwd_not_uniform");
        g.cond_br(g.and(full, tl.uniform)?, ub, rest)?;
        g.b.position_at_end(rest);
    }
    match band {
        Some((bk, pick, band_bb)) => {
            g.cond_br(full, fast_bb, pick)?;
            g.b.position_at_end(pick);
            g.cond_br(bk.ok, band_bb, slow_bb)?;
        }
        // a uniform path: the full blocks whose reads are not one element (along the
        // diagonal: few) take the partial path, whose element code is right for them
        // too; one element path fewer makes ptxas spill less in all (with
        // `ElemCtx::fresh_pos`: fused.rs)
        None if tile_loads.is_some() => g.br(slow_bb)?,
        None => g.cond_br(full, fast_bb, slow_bb)?,
    }
    let fast = tile_loads.is_none() || band.is_some();
    if !fast {
        // (nothing branches to it)
        fast_bb
            .remove_from_function()
            .map_err(|_| LlvmError::Internal("full-block path"))?;
    }
    let paths = fast
        .then_some((fast_bb, false, false, false))
        .into_iter()
        .chain([(slow_bb, true, false, false)])
        .chain(band.map(|(_, _, bb)| (bb, true, true, false)))
        .chain(uni_bb.map(|bb| (bb, false, false, true)));
    for (bb, slow, in_band, uni) in paths {
        g.b.position_at_end(bb);
        let rows = match band {
            Some((bk, ..)) if in_band => Some((bk.rows)()?),
            _ => None,
        };
        let hoisted = match (&tile_loads, e.cap) {
            (Some(tl), Some(cap)) if uni => Some((tl, cap)),
            _ => None,
        };
        let mut runs = match (hoisted, e.cap) {
            (Some((tl, cap)), _) => cap.uniform_runs(g, &tl.flat)?,
            (None, Some(cap)) => cap.runs(g),
            (None, None) => Vec::new(),
        };
        for nt in 0..s.len() {
            for i in 0..4 {
                let (at, l2, delta) = pos[nt][i];
                let at = match e.fresh_pos {
                    Some(fresh) => fresh(nt, i)?,
                    None => at,
                };
                let x = s[nt][i];
                let (el, keep) = match rows {
                    // the row's interval: one compare per side against the element's
                    // column offset (a constant)
                    Some(r) => {
                        let (lo, hi) = r[i / 2];
                        let c = g.c32(8 * nt as i64 + (i % 2) as i64);
                        let keep = g.and(
                            g.icmp(IntPredicate::SLE, lo, c)?,
                            g.icmp(IntPredicate::SLE, c, hi)?,
                        )?;
                        let (el, _) = e.element_at(g, x, at, false)?;
                        (Elem { inside: keep, ..el }, Some(keep))
                    }
                    None => e.element_at(g, x, at, slow)?,
                };
                // with capture gradients: the whole derivative IR at once
                let cap_vals = match e.cap {
                    Some(cap) => {
                        let vals = match hoisted {
                            Some((tl, cap)) => emit_values_hoisted(
                                g,
                                e.env,
                                &cap.sg.func,
                                el,
                                &cap.sg.outputs(),
                                pos_f(&at, cap_forms.as_ref()),
                                &tl.values,
                            )?,
                            None => emit_values_at(
                                g,
                                e.env,
                                &cap.sg.func,
                                el,
                                &cap.sg.outputs(),
                                pos_f(&at, cap_forms.as_ref()),
                            )?,
                        };
                        let f = |v: crate::ir::Value| {
                            vals[v.index()]
                                .map(|x| x.into_float_value())
                                .ok_or(LlvmError::Internal("score output not emitted"))
                        };
                        let (t, d) = (f(cap.sg.score)?, f(cap.sg.d_s)?);
                        Some((vals, t, d))
                    }
                    None => None,
                };
                // t log2 e - L2
                let (logit, dprime) = match &cap_vals {
                    Some((_, t, d)) => (g.fsub(g.fmul(*t, g.cf(LOG2E))?, l2)?, Some(*d)),
                    None => e.logit(g, el, pos_f(&at, forms.as_ref()), x, l2, raw_mul)?,
                };
                let logit = kept_logit(g, keep, logit)?;
                // bwd_exp_emu: some exponentials of full blocks on the FMA pipe
                let emu = if slow || e.cap.is_some() {
                    0
                } else {
                    e.exp_emu
                };
                let pr = ex2_at(g, emu, nt, i, logit)?;
                // dS' = P (dP - Delta), then dS = dS' score'
                let dsp = g.fmul(pr, g.fsub(dp[nt][i], delta)?)?;
                let mut ds = dsp;
                if let Some(d) = dprime {
                    ds = g.fmul(ds, d)?;
                }
                // nothing flows through a masked, -inf or underflowed element (never
                // 0 * inf = NaN from the derivative there)
                let zero = g.fcmp(FloatPredicate::OEQ, pr, g.cf(0.0))?;
                // bwd_ds_unguarded: a full block of the identity score has no masked
                // element, no derivative and finite dP - Delta, so P = 0 (an underflow)
                // gives dS = ±0 without the select
                let unguarded = e.full_unguarded && !slow && dprime.is_none() && e.cap.is_none();
                let ds = if unguarded {
                    ds
                } else {
                    g.selectf(zero, g.cf(0.0), ds)?
                };
                if let (Some(cap), Some((vals, _, _))) = (e.cap, &cap_vals) {
                    let kept = g.xor(zero, g.cbool(true))?;
                    cap.element(g, e.env, vals, dsp, kept, &mut runs, hoisted.is_some())?;
                }
                g.set(&pv[nt][i], pr)?;
                g.set(&dsv[nt][i], ds)?;
            }
        }
        if let Some(cap) = e.cap {
            cap.flush(g, &runs)?;
        }
        g.br(merge)?;
    }
    g.b.position_at_end(merge);
    Ok((acc_get(g, &pv)?, acc_get(g, &dsv)?))
}

/// [`PtxOptions::bwd_dv_chunks`]: P of the n8 column groups `nts` of one warp's tile
/// ([`grad_scores`]' values, without capture gradients or checked mode) on one path for
/// full and partial blocks: the mask and bounds per element (`or`ed with `full`, so a full
/// block drops nothing, as its path in [`grad_scores`]), no branch. Returns P and, with a
/// score function, `∂score/∂s` per element (for [`ds_chunk`]).
pub(super) fn p_chunk<'ctx>(
    g: &Gpu<'ctx>,
    e: &ElemCtx<'_, 'ctx>,
    s: &Acc<'ctx>,
    at: &dyn Fn(usize, usize) -> R<(Pos<'ctx>, FloatValue<'ctx>, FloatValue<'ctx>)>,
    full: IntValue<'ctx>,
    nts: std::ops::Range<usize>,
) -> R<(Acc<'ctx>, Option<Acc<'ctx>>)> {
    if e.cap.is_some() || e.env.err.is_some() || e.band.is_some() {
        return Err(LlvmError::Internal(
            "p_chunk: capture gradients, checked mode or band rows",
        ));
    }
    let forms = e.sd.map(|(f, _)| crate::analysis::linear::linear_ints(f));
    let raw_mul = g.fmul(e.scale, g.cf(LOG2E))?;
    let mut pt = Vec::with_capacity(nts.len());
    let mut dpr = Vec::with_capacity(nts.len());
    for nt in nts {
        let (mut p4, mut d4) = ([g.cf(0.0); 4], [g.cf(1.0); 4]);
        for i in 0..4 {
            let (pos, l2, _) = at(nt, i)?;
            let x = s[nt][i];
            let (el, _) = e.element_at(g, x, pos, false)?;
            let (_, keep) = e.element_at(g, x, pos, true)?;
            let keep = match keep {
                Some(k) => Some(g.or(full, k)?),
                None => None,
            };
            let (logit, dprime) = e.logit(g, el, pos_f(&pos, forms.as_ref()), x, l2, raw_mul)?;
            p4[i] = g.ex2(kept_logit(g, keep, logit)?)?;
            if let Some(d) = dprime {
                d4[i] = d;
            }
        }
        pt.push(p4);
        dpr.push(d4);
    }
    Ok((pt, e.sd.map(|_| dpr)))
}

/// [`PtxOptions::bwd_dv_chunks`]: dS of the n8 column groups `nts` from [`p_chunk`]'s P
/// (`p`, `dprime`): `P (dP − Delta) score'`, 0 where P = 0 as [`grad_scores`] (on a
/// full block not for the identity score with [`ElemCtx::full_unguarded`] nor a finite
/// constant derivative with [`ElemCtx::affine_unguarded`]: its unguarded paths).
#[allow(clippy::too_many_arguments)]
pub(super) fn ds_chunk<'ctx>(
    g: &Gpu<'ctx>,
    e: &ElemCtx<'_, 'ctx>,
    p: &Acc<'ctx>,
    dprime: Option<&Acc<'ctx>>,
    dp: &Acc<'ctx>,
    at: &dyn Fn(usize, usize) -> R<(Pos<'ctx>, FloatValue<'ctx>, FloatValue<'ctx>)>,
    full: IntValue<'ctx>,
    nts: std::ops::Range<usize>,
) -> R<Acc<'ctx>> {
    let unguarded = match (e.sd, affine_score(e)) {
        (None, _) => e.full_unguarded,
        (Some(_), Some(d)) => e.affine_unguarded && d.is_finite(),
        (Some(_), None) => false,
    };
    // the P = 0 select everywhere, or only off full blocks
    let guard = if unguarded {
        g.xor(full, g.cbool(true))?
    } else {
        g.cbool(true)
    };
    let mut out = Vec::with_capacity(nts.len());
    for (k, nt) in nts.enumerate() {
        let mut t = [g.cf(0.0); 4];
        for (i, x) in t.iter_mut().enumerate() {
            let (_, _, delta) = at(nt, i)?;
            let pr = p[k][i];
            let mut ds = g.fmul(pr, g.fsub(dp[nt][i], delta)?)?;
            if let Some(d) = dprime {
                ds = g.fmul(ds, d[k][i])?;
            }
            let zero = g.and(g.fcmp(FloatPredicate::OEQ, pr, g.cf(0.0))?, guard)?;
            *x = g.selectf(zero, g.cf(0.0), ds)?;
        }
        out.push(t);
    }
    Ok(out)
}

/// The constant `∂score/∂s` of a score function affine in s (ALiBi, `s + bias[q]`) when
/// neither capture gradients nor the checked mode's read reports need the score evaluated
/// per path ([`grad_scores_affine`]); none otherwise (the identity score too: it keeps
/// [`grad_scores`]' two paths, as measured).
fn affine_score(e: &ElemCtx<'_, '_>) -> Option<f32> {
    let (_, df) = e.sd?;
    if e.cap.is_some() || e.env.err.is_some() {
        return None;
    }
    match df.insts[df.ret.index()] {
        crate::ir::Inst::ConstF32(bits) => Some(f32::from_bits(bits)),
        _ => None,
    }
}

/// [`grad_scores`] for a score whose derivative is the constant `d` ([`affine_score`]):
/// every element's logit is computed once, before the full / partial branch (S dies
/// there), and the partial path only masks it (−inf where the mask or the bounds drop
/// the element); P and dS follow once, after the merge. So the score's per-element terms
/// (ALiBi's `slope (kv − q)`) are consumed where they are made, instead of being emitted
/// in both paths and hoisted above the branch by LLVM as 32 live values per thread
/// (ptxas spilled the fused D128 kernel: 84 bytes of spill stores with float positions,
/// 116 without).
fn grad_scores_affine<'ctx>(
    g: &Gpu<'ctx>,
    e: &ElemCtx<'_, 'ctx>,
    s: &Acc<'ctx>,
    dp: &Acc<'ctx>,
    at: &dyn Fn(usize, usize) -> R<(Pos<'ctx>, FloatValue<'ctx>, FloatValue<'ctx>)>,
    full: IntValue<'ctx>,
    d: f32,
) -> R<(Acc<'ctx>, Acc<'ctx>)> {
    let n = s.len();
    let forms = e.sd.map(|(f, _)| crate::analysis::linear::linear_ints(f));
    let raw_mul = g.fmul(e.scale, g.cf(LOG2E))?;
    let logits = acc_vars(g, n)?;
    let mut pos = Vec::with_capacity(n);
    for nt in 0..n {
        let mut row = Vec::with_capacity(4);
        for i in 0..4 {
            let (p, l2, delta) = at(nt, i)?;
            let x = s[nt][i];
            let (el, _) = e.element_at(g, x, p, false)?;
            let (logit, _) = e.logit(g, el, pos_f(&p, forms.as_ref()), x, l2, raw_mul)?;
            g.set(&logits[nt][i], logit)?;
            row.push((p, delta));
        }
        pos.push(row);
    }
    let slow_bb = g.block("bwd_partial_block");
    let merge = g.block("bwd_scored");
    // bwd_affine_unguarded (a finite constant derivative): full blocks compute P and dS on
    // their own path, without the P = 0 select (as bwd_ds_unguarded for the identity)
    let unguarded = e.affine_unguarded && d.is_finite();
    let fast_bb = if unguarded {
        Some(g.block("bwd_full_block"))
    } else {
        None
    };
    g.cond_br(full, fast_bb.unwrap_or(merge), slow_bb)?;
    g.b.position_at_end(slow_bb);
    for (nt, row) in pos.iter().enumerate() {
        for (i, (p, _)) in row.iter().enumerate() {
            let (_, keep) = e.element_at(g, s[nt][i], *p, true)?;
            let v = &logits[nt][i];
            g.set(v, kept_logit(g, keep, g.getf(v)?)?)?;
        }
    }
    // P and dS from the logits: `guard` the P = 0 select of dS
    let p_ds = |guard: bool| -> R<(Acc<'ctx>, Acc<'ctx>)> {
        let mut pt = Vec::with_capacity(n);
        let mut dst = Vec::with_capacity(n);
        for (nt, row) in pos.iter().enumerate() {
            let (mut p4, mut d4) = ([g.cf(0.0); 4], [g.cf(0.0); 4]);
            for (i, (_, delta)) in row.iter().enumerate() {
                let pr = g.ex2(g.getf(&logits[nt][i])?)?;
                // dS' = P (dP - Delta), dS = dS' d; 0 where P = 0 (as grad_scores)
                let mut ds = g.fmul(pr, g.fsub(dp[nt][i], *delta)?)?;
                if d != 1.0 {
                    ds = g.fmul(ds, g.cf(d))?;
                }
                p4[i] = pr;
                d4[i] = if guard {
                    let zero = g.fcmp(FloatPredicate::OEQ, pr, g.cf(0.0))?;
                    g.selectf(zero, g.cf(0.0), ds)?
                } else {
                    ds
                };
            }
            pt.push(p4);
            dst.push(d4);
        }
        Ok((pt, dst))
    };
    let Some(fast_bb) = fast_bb else {
        g.br(merge)?;
        g.b.position_at_end(merge);
        return p_ds(true);
    };
    let (pv, dsv) = (acc_vars(g, n)?, acc_vars(g, n)?);
    for (bb, guard) in [(slow_bb, true), (fast_bb, false)] {
        if !guard {
            g.b.position_at_end(bb);
        }
        let (pt, dst) = p_ds(guard)?;
        acc_set(g, &pv, &pt)?;
        acc_set(g, &dsv, &dst)?;
        g.br(merge)?;
    }
    g.b.position_at_end(merge);
    Ok((acc_get(g, &pv)?, acc_get(g, &dsv)?))
}

/// The first half of [`grad_scores`] without capture gradients (`e.cap` none), for a
/// kernel that computes P while the tensor cores still run dP: per element of the
/// fragment `s`, `P = 2^(t log2 e − L2)` (masked / out of bounds: 0; mask and bounds only
/// where `full` is false) and, with a score function, `P' = P · score'(scale s)` (0 where
/// P = 0: nothing flows through a masked or underflowed element). `l2(nt, i)` gives the
/// element's (q, kv, L2). Returns P rounded to the input type as A fragments (as
/// [`acc_to_a`]; packed inside each branch, so that only half as many registers meet at
/// the merge) and P' (P itself for the identity score), from which [`grad_ds`] finishes dS.
pub(super) fn grad_p<'ctx>(
    g: &Gpu<'ctx>,
    ty: InputType,
    e: &ElemCtx<'_, 'ctx>,
    s: &Acc<'ctx>,
    l2: &dyn Fn(usize, usize) -> R<(Pos<'ctx>, FloatValue<'ctx>)>,
    full: IntValue<'ctx>,
) -> R<(Vec<[IntValue<'ctx>; 4]>, Acc<'ctx>)> {
    if e.cap.is_some() {
        return Err(LlvmError::Internal(
            "grad_p: capture gradients need grad_scores",
        ));
    }
    let pdv = acc_vars(g, s.len())?;
    // per m16n8 tile: its rows' two packed pairs
    let packed = (0..s.len())
        .map(|_| Ok([g.var(g.i32, g.c32(0))?, g.var(g.i32, g.c32(0))?]))
        .collect::<R<Vec<_>>>()?;
    let fast_bb = g.block("bwd_p_full_block");
    let slow_bb = g.block("bwd_p_partial_block");
    let merge = g.block("bwd_p_done");
    let mut pos = Vec::with_capacity(s.len());
    for nt in 0..s.len() {
        pos.push((0..4).map(|i| l2(nt, i)).collect::<R<Vec<_>>>()?);
    }
    let forms = e.sd.map(|(f, _)| crate::analysis::linear::linear_ints(f));
    let raw_mul = g.fmul(e.scale, g.cf(LOG2E))?;
    g.cond_br(full, fast_bb, slow_bb)?;
    for slow in [false, true] {
        g.b.position_at_end(if slow { slow_bb } else { fast_bb });
        for nt in 0..s.len() {
            let mut p4 = [g.cf(0.0); 4];
            for i in 0..4 {
                let (at, l2) = pos[nt][i];
                let x = s[nt][i];
                let (el, keep) = e.element_at(g, x, at, slow)?;
                let (logit, dprime) = e.logit(g, el, pos_f(&at, forms.as_ref()), x, l2, raw_mul)?;
                let logit = kept_logit(g, keep, logit)?;
                let pr = ex2_at(g, if slow { 0 } else { e.exp_emu }, nt, i, logit)?;
                p4[i] = pr;
                let pd = match dprime {
                    Some(d) => {
                        let zero = g.fcmp(FloatPredicate::OEQ, pr, g.cf(0.0))?;
                        g.selectf(zero, g.cf(0.0), g.fmul(pr, d)?)?
                    }
                    None => pr,
                };
                g.set(&pdv[nt][i], pd)?;
            }
            g.set(&packed[nt][0], g.pack2(ty, p4[0], p4[1])?)?;
            g.set(&packed[nt][1], g.pack2(ty, p4[2], p4[3])?)?;
        }
        g.br(merge)?;
    }
    g.b.position_at_end(merge);
    let pa = (0..s.len() / 2)
        .map(|kk| {
            let (a, b) = (&packed[2 * kk], &packed[2 * kk + 1]);
            Ok([
                g.geti(&a[0])?,
                g.geti(&a[1])?,
                g.geti(&b[0])?,
                g.geti(&b[1])?,
            ])
        })
        .collect::<R<Vec<_>>>()?;
    Ok((pa, acc_get(g, &pdv)?))
}

/// The second half of [`grad_p`]: `dS = P' (dP − Delta)` per element (`pd`: P', P for the
/// identity score), 0 where P' = 0; `delta(nt, i)` gives the element's Delta.
pub(super) fn grad_ds<'ctx>(
    g: &Gpu<'ctx>,
    pd: &Acc<'ctx>,
    dp: &Acc<'ctx>,
    delta: &dyn Fn(usize, usize) -> R<FloatValue<'ctx>>,
) -> R<Acc<'ctx>> {
    let mut out = Vec::with_capacity(pd.len());
    for nt in 0..pd.len() {
        let mut t = [g.cf(0.0); 4];
        for (i, x) in t.iter_mut().enumerate() {
            let ds = g.fmul(pd[nt][i], g.fsub(dp[nt][i], delta(nt, i)?)?)?;
            let zero = g.fcmp(FloatPredicate::OEQ, pd[nt][i], g.cf(0.0))?;
            *x = g.selectf(zero, g.cf(0.0), ds)?;
        }
        out.push(t);
    }
    Ok(out)
}

/// The shared prologue of the two main kernels: thread position, sizes and the element
/// context pieces.
pub(super) struct Common<'ctx> {
    pub tid: IntValue<'ctx>,
    pub warp: IntValue<'ctx>,
    pub lane: IntValue<'ctx>,
    pub b: IntValue<'ctx>,
    pub lq: IntValue<'ctx>,
    pub lkv: IntValue<'ctx>,
    pub hq: IntValue<'ctx>,
    pub hkv: IntValue<'ctx>,
    pub scale: FloatValue<'ctx>,
    pub env: Env<'ctx>,
}

pub(super) fn common<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    opts: &PtxOptions,
    a: &Args<'_, 'ctx>,
) -> R<Common<'ctx>> {
    let tid = g.tid_x()?;
    let ptr = |k| a.ptr(k);
    let int = |k| a.int(k);
    Ok(Common {
        tid,
        warp: g.lshr(tid, g.c32(5))?,
        lane: g.and(tid, g.c32(31))?,
        b: g.ctaid('z')?,
        lq: a.int(KernelParam::Lq)?,
        lkv: a.int(KernelParam::Lkv)?,
        hq: a.int(KernelParam::Hq)?,
        hkv: a.int(KernelParam::Hkv)?,
        scale: a.get(KernelParam::Scale)?.into_float_value(),
        env: Env::load(g, p, opts.checked, &ptr, &int)?,
    })
}

/// The block range `[first, end, full_first, full_end]` of the "other" sequence for the
/// block starting at `row0` of this kernel's sequence: the closed form (the roles of q and
/// kv swapped with `transpose`), or the host's ranges (row `row0 / rows` of the map of
/// (b, `head`)).
#[allow(clippy::too_many_arguments)]
pub(super) fn blocks<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    kv: &KvBounds,
    a: &Args<'_, 'ctx>,
    transpose: bool,
    (b, head): (IntValue<'ctx>, IntValue<'ctx>),
    row0: IntValue<'ctx>,
    rows: u32,
    len: IntValue<'ctx>,
    other_len: IntValue<'ctx>,
    other_block: u32,
) -> R<[IntValue<'ctx>; 4]> {
    match kv {
        KvBounds::ClosedForm(cf) => {
            let (offsets, all_partial) = a.closed_form(cf.constraints.len(), p)?;
            let coefs: Vec<(i64, i64)> = kv
                .coefficients()
                .into_iter()
                .map(|(aq, akv)| if transpose { (akv, aq) } else { (aq, akv) })
                .collect();
            block_range(
                g,
                &coefs,
                &offsets,
                all_partial,
                row0,
                rows,
                len,
                other_len,
                other_block,
            )
        }
        KvBounds::Table => {
            let _ = other_block;
            let n_rows = g.udiv(g.add(len, g.c32(rows as i64 - 1))?, g.c32(rows as i64))?;
            let map = g.add(
                g.mul(b, a.int(KernelParam::MapBStride)?)?,
                g.mul(head, a.int(KernelParam::MapHStride)?)?,
            )?;
            let row = g.add(
                g.mul(g.zext64(map)?, g.zext64(n_rows)?)?,
                g.zext64(g.udiv(row0, g.c32(rows as i64))?)?,
            )?;
            let at = g.mul(row, g.c64(4))?;
            let t = a.ptr(KernelParam::Ranges)?;
            Ok([
                g.load_i32(t, at)?,
                g.load_i32(t, g.add(at, g.c64(1))?)?,
                g.load_i32(t, g.add(at, g.c64(2))?)?,
                g.load_i32(t, g.add(at, g.c64(3))?)?,
            ])
        }
    }
}

// ---- the dK/dV kernel -------------------------------------------------------------------------

/// Copies Q and dO of (query head `h`, q block `qb`) into buffer `buf` (cp.async) and
/// the block's rows' L2 and Delta (from `stats`, the `Lse2` and `Delta` pointers; +inf and
/// 0 past Lq) into the tiles' row statistics: the Q side of both dK/dV kernels.
#[allow(clippy::too_many_arguments)]
pub(super) fn load_q_block<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    c: &Common<'ctx>,
    t: &DkDvTiles,
    opts: &PtxOptions,
    stats: (PointerValue<'ctx>, PointerValue<'ctx>),
    threads: u32,
    (h, qb): (IntValue<'ctx>, IntValue<'ctx>),
    buf: IntValue<'ctx>,
) -> R<()> {
    let br = opts.q_block;
    let q0 = g.mul(qb, g.c32(br as i64))?;
    let qbase = slice_base(g, a.ptr(KernelParam::Q)?, c.b, c.hq, h, c.lq, opts.d)?;
    let obase = slice_base(g, a.ptr(KernelParam::DOut)?, c.b, c.hq, h, c.lq, opts.dv)?;
    let valid = g.sub(c.lq, q0)?;
    t.q.load_async(g, c.tid, threads, qbase, q0, valid, buf)?;
    t.d_o.load_async(g, c.tid, threads, obase, q0, valid, buf)?;
    g.cp_async_commit()?;
    for k in 0..br.div_ceil(threads) {
        let i = g.add(c.tid, g.c32((k * threads) as i64))?;
        g.if_then(g.icmp(IntPredicate::ULT, i, g.c32(br as i64))?, || {
            let q = g.add(q0, i)?;
            let ok = g.icmp(IntPredicate::SLT, q, c.lq)?;
            let row = g.add(
                g.mul(g.zext64(g.add(g.mul(c.b, c.hq)?, h)?)?, g.zext64(c.lq)?)?,
                g.zext64(g.selecti(ok, q, g.c32(0))?)?,
            )?;
            let l2 = g.selectf(ok, g.load_f32(stats.0, row)?, g.cf(f32::INFINITY))?;
            let dl = g.selectf(ok, g.load_f32(stats.1, row)?, g.cf(0.0))?;
            let at = g.add(buf, g.mul(i, g.c32(4))?)?;
            g.store(g.smem_at(g.add(at, g.c32(t.l2 as i64))?)?, l2)?;
            g.store(g.smem_at(g.add(at, g.c32(t.delta as i64))?)?, dl)
        })?;
    }
    Ok(())
}

/// One (query, L2, Delta) per column a lane holds in the kv-row x q-column fragments of
/// S and dP: element (nt, i) is kv row `kv0 + row0 + lane / 4 + 8 (i / 2)` and q column
/// `q0 + 8 nt + 2 (lane % 4) + i % 2`, its L2 and Delta read from buffer `buf`'s row
/// statistics. Returns the lane's first kv row and the columns' statistics in (nt, i % 2)
/// order.
#[allow(clippy::type_complexity)]
pub(super) fn frag_row_stats<'ctx>(
    g: &Gpu<'ctx>,
    c: &Common<'ctx>,
    t: &DkDvTiles,
    br: u32,
    (kv0, row0): (IntValue<'ctx>, IntValue<'ctx>),
    q0: IntValue<'ctx>,
    buf: IntValue<'ctx>,
) -> R<(
    IntValue<'ctx>,
    Vec<(IntValue<'ctx>, BasicValueEnum<'ctx>, BasicValueEnum<'ctx>)>,
)> {
    let kv_row = g.add(g.add(kv0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
    let col = g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?;
    let mut stats = Vec::new();
    for nt in 0..(br / 8) as usize {
        for cc in 0..2 {
            let ci = g.add(col, g.c32(8 * nt as i64 + cc))?;
            let at = g.add(buf, g.mul(ci, g.c32(4))?)?;
            let l2 =
                g.b.build_load(g.f32, g.smem_at(g.add(at, g.c32(t.l2 as i64))?)?, "")?;
            let dl =
                g.b.build_load(g.f32, g.smem_at(g.add(at, g.c32(t.delta as i64))?)?, "")?;
            stats.push((g.add(q0, ci)?, l2, dl));
        }
    }
    Ok((kv_row, stats))
}

/// Element (`nt`, `i`) of the kv-row x q-column fragments of [`frag_row_stats`] (q column
/// q0 + 2 (lane % 4) + 8 nt + i % 2, kv row `kv_row` + 8 (i / 2)): its position (float
/// positions from `pb`) and its row's L2 and Delta.
pub(super) fn frag_element<'ctx>(
    g: &Gpu<'ctx>,
    pb: &PosBase<'ctx>,
    kv_row: IntValue<'ctx>,
    stats: &[(IntValue<'ctx>, BasicValueEnum<'ctx>, BasicValueEnum<'ctx>)],
    nt: usize,
    i: usize,
) -> R<(Pos<'ctx>, FloatValue<'ctx>, FloatValue<'ctx>)> {
    let (q, l2, dl) = stats[nt * 2 + i % 2];
    let pos = frag_pos(g, pb, q, kv_row, nt, i)?;
    Ok((pos, l2.into_float_value(), dl.into_float_value()))
}

/// The position of element (`nt`, `i`) of the kv-row x q-column fragments (its q column
/// `q`, kv row `kv_row` + 8 (i / 2); float positions from `pb`).
pub(super) fn frag_pos<'ctx>(
    g: &Gpu<'ctx>,
    pb: &PosBase<'ctx>,
    q: IntValue<'ctx>,
    kv_row: IntValue<'ctx>,
    nt: usize,
    i: usize,
) -> R<Pos<'ctx>> {
    let kv = g.add(kv_row, g.c32(8 * (i as i64 / 2)))?;
    pb.at(
        g,
        (q, kv),
        8 * nt as i64 + (i % 2) as i64,
        8 * (i as i64 / 2),
    )
}

/// The first q column of a lane in the kv-row x q-column fragments of [`frag_row_stats`]:
/// `q0 + 2 (lane % 4)`.
pub(super) fn frag_col0<'ctx>(
    g: &Gpu<'ctx>,
    c: &Common<'ctx>,
    q0: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    g.add(q0, g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?)
}

/// One row statistic (L2 or Delta: the byte offset `stat` of its array in the tiles) per
/// column a lane holds in the kv-row x q-column fragments (as [`frag_row_stats`], in
/// (nt, i % 2) order), read from buffer `buf`.
pub(super) fn frag_col_stat<'ctx>(
    g: &Gpu<'ctx>,
    c: &Common<'ctx>,
    br: u32,
    buf: IntValue<'ctx>,
    stat: u32,
) -> R<Vec<FloatValue<'ctx>>> {
    let col = g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?;
    let mut out = Vec::new();
    for nt in 0..(br / 8) as usize {
        for cc in 0..2 {
            let ci = g.add(col, g.c32(8 * nt as i64 + cc))?;
            let at = g.add(g.add(buf, g.mul(ci, g.c32(4))?)?, g.c32(stat as i64))?;
            out.push(
                g.b.build_load(g.f32, g.smem_at(at)?, "")?
                    .into_float_value(),
            );
        }
    }
    Ok(out)
}

/// The top of a visit in the two-kernel path's loops: this thread's `cp.async` copies
/// waited for, made visible to the tensor cores with wgmma (`wg`), then a CTA barrier.
fn wait_tiles(g: &Gpu<'_>, wg: bool) -> R<()> {
    g.cp_async_wait(0)?;
    if wg {
        // this thread's copies become visible to the tensor cores after the barrier
        g.fence_proxy_async()?;
    }
    g.barrier()
}

/// A visit's two products in the two-kernel path, `S = A_s B_sᵀ` and `dP = A_dp B_dpᵀ`
/// (the dK/dV kernel: `(K, Q)`, `(V, dO)`; the dQ kernel: `(Q, K)`, `(dO, V)`), B_s in
/// buffer `buf_s` and B_dp in `buf_dp` (the same buffer, except the dQ kernel's single V
/// buffer under `dq_pair`): with wgmma on the warp's warpgroup (one commit group each),
/// else with mma.sync from the warp's 16 rows `row0 ..` of A.
#[allow(clippy::too_many_arguments)]
fn score_products<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    c: &Common<'ctx>,
    row0: IntValue<'ctx>,
    (buf_s, buf_dp): (IntValue<'ctx>, IntValue<'ctx>),
    (a_s, b_s): (&SmemTile, &SmemTile),
    (a_dp, b_dp): (&SmemTile, &SmemTile),
) -> R<(Acc<'ctx>, Acc<'ctx>)> {
    let ty = opts.input;
    if opts.mma == Mma::Wgmma {
        let wgi = g.lshr(c.warp, g.c32(2))?;
        g.wgmma_fence()?;
        let s = wg_abt(g, ty, a_s, wgi, b_s, buf_s, Desc::Each, None)?;
        g.wgmma_commit()?;
        let dp = wg_abt(g, ty, a_dp, wgi, b_dp, buf_dp, Desc::Each, None)?;
        g.wgmma_commit()?;
        Ok((wg_result(g, &s)?, wg_result(g, &dp)?))
    } else if single_buffer(opts) {
        // a head dim of 256: A's fragments a k-step at a time
        let s = mm_abt(g, ty, ASrc::Rows(a_s, row0), b_s, c.lane, buf_s)?;
        let dp = mm_abt(g, ty, ASrc::Rows(a_dp, row0), b_dp, c.lane, buf_dp)?;
        Ok((s, dp))
    } else {
        let zero = g.c32(0);
        let af = frags_a(g, a_s, c.lane, row0, zero)?;
        let s = mm_abt(g, ty, ASrc::Frags(&af), b_s, c.lane, buf_s)?;
        let af = frags_a(g, a_dp, c.lane, row0, zero)?;
        Ok((s, mm_abt(g, ty, ASrc::Frags(&af), b_dp, c.lane, buf_dp)?))
    }
}

fn dkdv_body<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    sd: Option<&(Function, Function)>,
    opts: &PtxOptions,
    kvb: &KvBounds,
    a: &Args<'_, 'ctx>,
) -> R<()> {
    let t = DkDvTiles::new(opts);
    let wg = opts.mma == Mma::Wgmma;
    let (br, bc) = (opts.q_block, opts.kv_block);
    // warpgroup w of `parts` accumulates column part w of dK and dV (`dkdv_parts`; one
    // part below a head dim of 256); every warpgroup holds the tile's same kv rows
    let parts = dkdv_parts(opts);
    let threads = bc / 16 * 32 * parts;
    let ty = opts.input;
    let mut c = common(g, p, opts, a)?;
    let zero = g.c32(0);
    let part = if parts > 1 {
        let part = g.lshr(c.warp, g.c32(2))?;
        c.warp = g.and(c.warp, g.c32(3))?;
        part
    } else {
        zero
    };
    let hk = g.ctaid('y')?;
    let kv0 = g.mul(g.ctaid('x')?, g.c32(bc as i64))?;
    let group = g.udiv(c.hq, c.hkv)?;
    let kbase = slice_base(g, a.ptr(KernelParam::K)?, c.b, c.hkv, hk, c.lkv, opts.d)?;
    let vbase = slice_base(g, a.ptr(KernelParam::V)?, c.b, c.hkv, hk, c.lkv, opts.dv)?;
    let [first, end, ff, fe] = blocks(g, p, kvb, a, true, (c.b, hk), kv0, bc, c.lkv, c.lq, br)?;
    let nq = g.sub(end, first)?;
    let nq = g.selecti(g.icmp(IntPredicate::SLT, nq, zero)?, zero, nq)?;
    let n_iter = g.mul(nq, group)?;
    let kv_tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(bc as i64))?, c.lkv)?;

    // (query head, q block) of iteration `it`
    let head_block = |it: IntValue<'ctx>| -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        let hi = g.udiv(it, nq)?;
        let qb = g.add(first, g.sub(it, g.mul(hi, nq)?)?)?;
        Ok((g.add(g.mul(hk, group)?, hi)?, qb))
    };
    let row_stats = (a.ptr(KernelParam::Lse2)?, a.ptr(KernelParam::Delta)?);
    let load_q = |h: IntValue<'ctx>, qb: IntValue<'ctx>, buf: IntValue<'ctx>| {
        load_q_block(g, a, &c, &t, opts, row_stats, threads, (h, qb), buf)
    };

    let dk = acc_vars(g, (opts.d / parts / 8) as usize)?;
    let dv = acc_vars(g, (opts.dv / parts / 8) as usize)?;
    // this part's columns of Q and dO: whole 64-column slabs, `part` parts further
    let (q_part, do_part) = (col_part(&t.q, parts), col_part(&t.d_o, parts));
    let part_at = |tile: &SmemTile, buf| -> R<IntValue<'ctx>> {
        let slab_bytes = tile.rows * 128 * (tile.cols / parts / 64);
        g.add(buf, g.mul(part, g.c32(slab_bytes as i64))?)
    };
    let st_it = g.var(g.i32, zero)?;
    let st_buf = g.var(g.i32, zero)?;

    t.k.load_async(g, c.tid, threads, kbase, kv0, g.sub(c.lkv, kv0)?, zero)?;
    t.v.load_async(g, c.tid, threads, vbase, kv0, g.sub(c.lkv, kv0)?, zero)?;
    g.cp_async_commit()?;
    let lp = g.block("q_loop");
    let epi = g.block("dkdv_store");
    let pre = g.block("dkdv_prologue");
    g.cond_br(g.icmp(IntPredicate::SGT, n_iter, zero)?, pre, epi)?;
    g.b.position_at_end(pre);
    let (h0, qb0) = head_block(zero)?;
    load_q(h0, qb0, zero)?;
    g.br(lp)?;

    g.b.position_at_end(lp);
    let it = g.geti(&st_it)?;
    let buf = g.geti(&st_buf)?;
    let other = g.xor(buf, g.c32(t.buf as i64))?;
    wait_tiles(g, wg)?;
    // the next (head, q block) into the other buffer, which every warp finished reading
    // before the barrier above (one buffer: after this visit's products, below)
    let it1 = g.add(it, g.c32(1))?;
    let has_next = g.icmp(IntPredicate::SLT, it1, n_iter)?;
    let load_next = || {
        g.if_then(has_next, || {
            let (h1, qb1) = head_block(it1)?;
            load_q(h1, qb1, other)
        })
    };
    let single = single_buffer(opts);
    if !single {
        load_next()?;
    }
    let (h, qb) = head_block(it)?;
    let q0 = g.mul(qb, g.c32(br as i64))?;
    let q_tail = g.icmp(IntPredicate::SGT, g.add(q0, g.c32(br as i64))?, c.lq)?;
    let in_full = g.and(
        g.icmp(IntPredicate::SGE, qb, ff)?,
        g.icmp(IntPredicate::SLT, qb, fe)?,
    )?;
    let full = g.and(in_full, g.xor(g.or(q_tail, kv_tail)?, g.cbool(true))?)?;

    let row0 = g.mul(c.warp, g.c32(16))?;
    let (s, dp) = match t.xchg {
        Some(at) => exchanged_products(g, opts, &t, &c, part, row0, buf, at)?,
        None => score_products(g, opts, &c, row0, (buf, buf), (&t.k, &t.q), (&t.v, &t.d_o))?,
    };
    let (kv_row, stats) = frag_row_stats(g, &c, &t, br, (kv0, row0), q0, buf)?;
    let ec = ElemCtx {
        p,
        sd,
        env: &c.env,
        scale: c.scale,
        b: c.b,
        h,
        lq: c.lq,
        lkv: c.lkv,
        cap: None,
        full_unguarded: false,
        affine_unguarded: false,
        band: None,
        exp_emu: 0,
        tile: None,
        fresh_pos: None,
    };
    // element (nt, i): q column q0 + 2 (lane % 4) + 8 nt + i % 2, kv row kv_row + 8 (i / 2)
    let pb = PosBase::new(g, opts, &|| Ok((frag_col0(g, &c, q0)?, kv_row)))?;
    let at = |nt: usize, i: usize| frag_element(g, &pb, kv_row, &stats, nt, i);
    let mut dv_acc = acc_get(g, &dv)?;
    let mut dk_acc = acc_get(g, &dk)?;
    let (pt, dst) = grad_scores(g, &ec, &s, &dp, &at, full)?;
    if wg {
        g.wgmma_fence()?;
        let dv1 = wg_ab(
            g,
            ty,
            &acc_to_a(g, ty, &pt)?,
            &do_part,
            part_at(&t.d_o, buf)?,
            &to_flat(&dv_acc),
            Desc::Each,
        )?;
        let dk1 = wg_ab(
            g,
            ty,
            &acc_to_a(g, ty, &dst)?,
            &q_part,
            part_at(&t.q, buf)?,
            &to_flat(&dk_acc),
            Desc::Each,
        )?;
        g.wgmma_commit()?;
        dv_acc = wg_result(g, &dv1)?;
        dk_acc = wg_result(g, &dk1)?;
    } else {
        // this part's columns of dO and Q: `1 / parts` of each row, `part` parts in (the
        // rows' 16-byte chunks are swizzled within groups of 8, a part is 16 or more)
        let col_at = |tile: &SmemTile| -> R<IntValue<'ctx>> {
            g.add(buf, g.mul(part, g.c32((tile.cols / parts * 2) as i64))?)
        };
        mm_ab_cols(
            g,
            ty,
            &acc_to_a(g, ty, &pt)?,
            (&t.d_o, opts.dv / parts),
            c.lane,
            col_at(&t.d_o)?,
            &mut dv_acc,
        )?;
        mm_ab_cols(
            g,
            ty,
            &acc_to_a(g, ty, &dst)?,
            (&t.q, opts.d / parts),
            c.lane,
            col_at(&t.q)?,
            &mut dk_acc,
        )?;
    }
    acc_set(g, &dv, &dv_acc)?;
    acc_set(g, &dk, &dk_acc)?;
    if single {
        // every warp has read the buffer: the next visit's copies into it
        g.barrier()?;
        load_next()?;
    }
    g.set(&st_it, it1)?;
    g.set(&st_buf, other)?;
    g.cond_br(has_next, lp, epi)?;
    dkdv_epilogue(g, opts, &c, a, (hk, part), kv0, &dk, &dv, epi)
}

/// Sᵀ and dPᵀ of the visit in buffer `buf` with [`xchg`]: part `part` 0 (a warpgroup, or
/// on mma.sync four warps) computes Sᵀ = K Qᵀ, 1 computes dPᵀ = V dOᵀ (the same shapes: D
/// = Dv; A and B picked by address), each stores its accumulator in its half of the
/// exchange region at `at` (thread to thread: both parts hold the same fragment layout)
/// and, after the CTA's barrier, reads the other's. The loop's next barrier (before the
/// next visit's stores) comes after every thread's reads.
#[allow(clippy::too_many_arguments)]
fn exchanged_products<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    t: &DkDvTiles,
    c: &Common<'ctx>,
    part: IntValue<'ctx>,
    row0: IntValue<'ctx>,
    buf: IntValue<'ctx>,
    at: u32,
) -> R<(Acc<'ctx>, Acc<'ctx>)> {
    let ty = opts.input;
    // V's rows follow K's, dO's tile Q's: one address step each
    let b_extra = g.add(buf, g.mul(part, g.c32((t.d_o.offset - t.q.offset) as i64))?)?;
    let own = if opts.mma == Mma::Wgmma {
        let a_step = (t.v.offset - t.k.offset) / (64 * 128);
        g.wgmma_fence()?;
        let acc = wg_abt(
            g,
            ty,
            &t.k,
            g.mul(part, g.c32(a_step as i64))?,
            &t.q,
            b_extra,
            Desc::Each,
            None,
        )?;
        g.wgmma_commit()?;
        wg_result(g, &acc)?
    } else {
        // V's rows are K's rows kv_block on (the same swizzle: kv_block is a multiple of 8)
        debug_assert_eq!(t.v.offset - t.k.offset, t.k.rows * t.k.cols * 2);
        let a_row = g.add(row0, g.mul(part, g.c32(t.k.rows as i64))?)?;
        mm_abt(g, ty, ASrc::Rows(&t.k, a_row), &t.q, c.lane, b_extra)?
    };
    let thread = g.and(c.tid, g.c32(127))?;
    let slot = |half: IntValue<'ctx>, e: usize| -> R<PointerValue<'ctx>> {
        let off = g.add(
            g.mul(half, g.c32((XCHG_BYTES / 2) as i64))?,
            g.add(
                g.mul(thread, g.c32(4))?,
                g.c32((at + 512 * e as u32) as i64),
            )?,
        )?;
        g.smem_at(off)
    };
    let other_half = g.xor(part, g.c32(1))?;
    for (e, v) in own.iter().flatten().enumerate() {
        g.store(slot(part, e)?, *v)?;
    }
    g.barrier()?;
    let first = g.icmp(IntPredicate::EQ, part, g.c32(0))?;
    let (mut s, mut dp) = (Vec::new(), Vec::new());
    for (i, tile) in own.iter().enumerate() {
        let (mut st, mut dpt) = (*tile, *tile);
        for j in 0..4 {
            let other = g.load_f32(slot(other_half, 4 * i + j)?, g.c32(0))?;
            st[j] = g.selectf(first, tile[j], other)?;
            dpt[j] = g.selectf(first, other, tile[j])?;
        }
        s.push(st);
        dp.push(dpt);
    }
    Ok((s, dp))
}

/// The first `1 / parts` of slab tile `t`'s columns as a tile of their own (the wgmma B
/// operand of one column part: its slabs are `t.rows * 128` bytes apart as in `t`).
fn col_part(t: &SmemTile, parts: u32) -> SmemTile {
    SmemTile {
        cols: t.cols / parts,
        ..*t
    }
}

/// The end of the dK/dV kernel (block `epi`): dK (times the scale) and dV stored.
#[allow(clippy::too_many_arguments)]
pub(super) fn dkdv_epilogue<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    c: &Common<'ctx>,
    a: &Args<'_, 'ctx>,
    (hk, part): (IntValue<'ctx>, IntValue<'ctx>),
    kv0: IntValue<'ctx>,
    dk: &[[Var<'ctx>; 4]],
    dv: &[[Var<'ctx>; 4]],
    epi: inkwell::basic_block::BasicBlock<'ctx>,
) -> R<()> {
    g.b.position_at_end(epi);
    g.cp_async_wait(0)?;
    dkdv_store(g, opts, c, a, (c.b, hk, part), (kv0, c.lkv), dk, dv)?;
    g.b.build_return(None)?;
    Ok(())
}

/// dK (times the scale) and dV of kv rows `kv0 .. row_end` of (batch, kv head) stored: one word
/// per n8 column group and thread, or with `PtxOptions::bwd_store_pairs` 8 bytes per
/// thread and instruction ([`fused::store_rows_pairs`]); with [`dkdv_parts`] > 1 the
/// accumulators hold column part `part` of each.
#[allow(clippy::too_many_arguments)]
pub(super) fn dkdv_store<'ctx>(
    g: &Gpu<'ctx>,
    opts: &PtxOptions,
    c: &Common<'ctx>,
    a: &Args<'_, 'ctx>,
    (b, hk, part): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    (kv0, row_end): (IntValue<'ctx>, IntValue<'ctx>),
    dk: &[[Var<'ctx>; 4]],
    dv: &[[Var<'ctx>; 4]],
) -> R<()> {
    let ty = opts.input;
    let parts = dkdv_parts(opts);
    let base = |t, dim: u32| -> R<PointerValue<'ctx>> {
        let at = slice_base(g, a.ptr(t)?, b, c.hkv, hk, c.lkv, dim)?;
        if parts == 1 {
            return Ok(at);
        }
        let col_bytes = g.mul(part, g.c32((dim / parts * 2) as i64))?;
        g.gep_bytes(at, g.zext64(col_bytes)?)
    };
    let dk_base = base(KernelParam::DK, opts.d)?;
    let dv_base = base(KernelParam::DV, opts.dv)?;
    let row0 = g.add(kv0, g.mul(c.warp, g.c32(16))?)?;
    if opts.bwd_store_pairs {
        let (dk, dv) = (acc_get(g, dk)?, acc_get(g, dv)?);
        let rows = (row0, row_end);
        fused::store_rows_pairs(g, ty, c.lane, dk_base, rows, opts.d, &dk, Some(c.scale))?;
        return fused::store_rows_pairs(g, ty, c.lane, dv_base, rows, opts.dv, &dv, None);
    }
    store_rows(
        g,
        ty,
        c.lane,
        dk_base,
        row0,
        row_end,
        opts.d,
        &acc_get(g, dk)?,
        Some(c.scale),
    )?;
    store_rows(
        g,
        ty,
        c.lane,
        dv_base,
        row0,
        row_end,
        opts.dv,
        &acc_get(g, dv)?,
        None,
    )
}

// ---- the dQ kernel ----------------------------------------------------------------------------

fn dq_body<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    sd: Option<&(Function, Function)>,
    opts: &PtxOptions,
    kvb: &KvBounds,
    a: &Args<'_, 'ctx>,
) -> R<()> {
    // `dq_pair`: two warpgroups on two q tiles (the CTA's rows `br` = 2 q_block)
    let pair = dq_pair(opts, kvb);
    // one V buffer (copied once every warp's dP has read it): `dq_pair`, `single_buffer`
    let v_one = pair || single_buffer(opts);
    let t = DqTiles::new(opts, pair);
    let wg = opts.mma == Mma::Wgmma;
    let (br, bc) = (opts.q_block * (1 + pair as u32), opts.kv_block);
    let threads = br / 16 * 32;
    let ty = opts.input;
    let c = common(g, p, opts, a)?;
    let zero = g.c32(0);
    let h = g.ctaid('y')?;
    let q0 = g.mul(g.ctaid('x')?, g.c32(br as i64))?;
    let hk = g.udiv(h, g.udiv(c.hq, c.hkv)?)?;
    let qbase = slice_base(g, a.ptr(KernelParam::Q)?, c.b, c.hq, h, c.lq, opts.d)?;
    let obase = slice_base(g, a.ptr(KernelParam::DOut)?, c.b, c.hq, h, c.lq, opts.dv)?;
    let kbase = slice_base(g, a.ptr(KernelParam::K)?, c.b, c.hkv, hk, c.lkv, opts.d)?;
    let vbase = slice_base(g, a.ptr(KernelParam::V)?, c.b, c.hkv, hk, c.lkv, opts.dv)?;
    let [first, end, ff, fe] = blocks(g, p, kvb, a, false, (c.b, h), q0, br, c.lq, c.lkv, bc)?;
    let runs = {
        // the same three runs as the forward kernel's closed form: (first, ff,
        // partial), (ff, fe, full), (fe, end, partial)
        let lt = |x, y| g.icmp(IntPredicate::SLT, x, y);
        let has_full = lt(ff, fe)?;
        let one = g.c32(1);
        let beg = g.selecti(
            g.and(has_full, g.xor(lt(first, ff)?, g.cbool(true))?)?,
            one,
            zero,
        )?;
        let end_full = g.selecti(lt(fe, end)?, g.c32(3), g.c32(2))?;
        let end_part = g.selecti(lt(first, end)?, one, zero)?;
        RowRuns {
            beg,
            end: g.selecti(has_full, end_full, end_part)?,
            src: RunSource::Regs([
                [first, g.selecti(has_full, ff, end)?, zero],
                [ff, fe, one],
                [fe, end, zero],
            ]),
        }
    };

    // row statistics of this thread's two rows
    let row0 = g.mul(c.warp, g.c32(16))?;
    let q_row = g.add(g.add(q0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
    let slice_rows = g.mul(g.zext64(g.add(g.mul(c.b, c.hq)?, h)?)?, g.zext64(c.lq)?)?;
    let mut stats = Vec::new();
    for hr in 0..2 {
        let q = g.add(q_row, g.c32(8 * hr))?;
        let ok = g.icmp(IntPredicate::SLT, q, c.lq)?;
        let row = g.add(slice_rows, g.zext64(g.selecti(ok, q, zero)?)?)?;
        let l2 = g.selectf(
            ok,
            g.load_f32(a.ptr(KernelParam::Lse2)?, row)?,
            g.cf(f32::INFINITY),
        )?;
        let dl = g.selectf(ok, g.load_f32(a.ptr(KernelParam::Delta)?, row)?, g.cf(0.0))?;
        stats.push((q, l2, dl));
    }

    let dq = acc_vars(g, (opts.d / 8) as usize)?;
    let sg = (!capture_grads(p).is_empty()).then(|| crate::grad::differentiate(p));
    let cap = match &sg {
        Some(sg) => Some(CapCtx::new(g, sg, p, a)?),
        None => None,
    };
    let st_j = g.var(g.i32, zero)?;
    let st_end = g.var(g.i32, zero)?;
    let st_full = g.var(g.i32, zero)?;
    let st_r = g.var(g.i32, runs.beg)?;
    let st_buf = g.var(g.i32, zero)?;
    let load_k = |j: IntValue<'ctx>, buf: IntValue<'ctx>| -> R<()> {
        let kv0 = g.mul(j, g.c32(bc as i64))?;
        t.k.load_async(g, c.tid, threads, kbase, kv0, g.sub(c.lkv, kv0)?, buf)
    };
    let load_v = |j: IntValue<'ctx>, buf: IntValue<'ctx>| -> R<()> {
        let kv0 = g.mul(j, g.c32(bc as i64))?;
        t.v.load_async(g, c.tid, threads, vbase, kv0, g.sub(c.lkv, kv0)?, buf)
    };
    let load_kv = |j: IntValue<'ctx>, buf: IntValue<'ctx>| -> R<()> {
        load_k(j, buf)?;
        load_v(j, if v_one { zero } else { buf })?;
        g.cp_async_commit()
    };

    t.q.load_async(g, c.tid, threads, qbase, q0, g.sub(c.lq, q0)?, zero)?;
    t.d_o
        .load_async(g, c.tid, threads, obase, q0, g.sub(c.lq, q0)?, zero)?;
    g.cp_async_commit()?;
    let pre = g.block("dq_prologue");
    let lp = g.block("kv_loop");
    let epi = g.block("dq_store");
    g.cond_br(g.icmp(IntPredicate::ULT, runs.beg, runs.end)?, pre, epi)?;
    g.b.position_at_end(pre);
    let (j0, e0, f0) = runs.load(g, runs.beg)?;
    g.set(&st_j, j0)?;
    g.set(&st_end, e0)?;
    g.set(&st_full, f0)?;
    load_kv(j0, zero)?;
    g.br(lp)?;

    g.b.position_at_end(lp);
    let j = g.geti(&st_j)?;
    let run_end = g.geti(&st_end)?;
    let full = g.geti(&st_full)?;
    let r = g.geti(&st_r)?;
    let buf = g.geti(&st_buf)?;
    let other = g.xor(buf, g.c32(t.buf as i64))?;
    wait_tiles(g, wg)?;
    // the next block: the rest of this run, else the start of the next run
    let j1 = g.add(j, g.c32(1))?;
    let in_run = g.icmp(IntPredicate::ULT, j1, run_end)?;
    let r1 = g.add(r, g.c32(1))?;
    let more_runs = g.icmp(IntPredicate::ULT, r1, runs.end)?;
    let (nj, nend, nfull) = runs.load(g, g.selecti(more_runs, r1, r)?)?;
    let next_j = g.selecti(in_run, j1, nj)?;
    let next_end = g.selecti(in_run, run_end, nend)?;
    let next_full = g.selecti(in_run, full, nfull)?;
    let next_r = g.selecti(in_run, r, r1)?;
    let has_next = g.or(in_run, more_runs)?;
    if v_one {
        // K into the other buffer now; V once this visit's dP has read it (below)
        g.if_then(has_next, || {
            load_k(next_j, other)?;
            g.cp_async_commit()
        })?;
    } else {
        g.if_then(has_next, || load_kv(next_j, other))?;
    }

    let kv0 = g.mul(j, g.c32(bc as i64))?;
    let q_tail = g.icmp(IntPredicate::SGT, g.add(q0, g.c32(br as i64))?, c.lq)?;
    let kv_tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(bc as i64))?, c.lkv)?;
    let full = g.and(
        g.icmp(IntPredicate::NE, full, zero)?,
        g.xor(g.or(q_tail, kv_tail)?, g.cbool(true))?,
    )?;
    // `v_one`: K in buffer `buf`, V in its one buffer (`dq_pair`: each warpgroup its 64
    // rows)
    let v_buf = if v_one { zero } else { buf };
    let (s, dp) = score_products(
        g,
        opts,
        &c,
        row0,
        (buf, v_buf),
        (&t.q, &t.k),
        (&t.d_o, &t.v),
    )?;
    if v_one {
        // every warp's dP has read V: the next V into its buffer
        g.barrier()?;
        g.if_then(has_next, || {
            load_v(next_j, zero)?;
            g.cp_async_commit()
        })?;
    }
    let col = g.add(kv0, g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?)?;
    let ec = ElemCtx {
        p,
        sd,
        env: &c.env,
        scale: c.scale,
        b: c.b,
        h,
        lq: c.lq,
        lkv: c.lkv,
        cap: cap.as_ref(),
        full_unguarded: false,
        affine_unguarded: false,
        band: None,
        exp_emu: 0,
        tile: None,
        fresh_pos: None,
    };
    // element (nt, i): q row q_row + 8 (i / 2), kv column col + 8 nt + i % 2
    let pb = PosBase::new(g, opts, &|| Ok((q_row, col)))?;
    let at = |nt: usize, i: usize| {
        let (q, l2, dl) = stats[i / 2];
        let kv = g.add(col, g.c32(8 * nt as i64 + (i as i64 % 2)))?;
        let pos = pb.at(
            g,
            (q, kv),
            8 * (i as i64 / 2),
            8 * nt as i64 + (i as i64 % 2),
        )?;
        Ok((pos, l2, dl))
    };
    let (_, ds) = grad_scores(g, &ec, &s, &dp, &at, full)?;
    let dsa = acc_to_a(g, ty, &ds)?;
    let mut dq_acc = acc_get(g, &dq)?;
    if wg {
        g.wgmma_fence()?;
        let dq1 = wg_ab(g, ty, &dsa, &t.k, buf, &to_flat(&dq_acc), Desc::Each)?;
        g.wgmma_commit()?;
        dq_acc = wg_result(g, &dq1)?;
    } else {
        mm_ab(g, ty, &dsa, &t.k, c.lane, buf, &mut dq_acc)?;
    }
    acc_set(g, &dq, &dq_acc)?;
    g.set(&st_j, next_j)?;
    g.set(&st_end, next_end)?;
    g.set(&st_full, next_full)?;
    g.set(&st_r, next_r)?;
    g.set(&st_buf, other)?;
    g.cond_br(has_next, lp, epi)?;

    g.b.position_at_end(epi);
    g.cp_async_wait(0)?;
    if let Some(cap) = &cap {
        cap.finish(g, c.lane)?;
    }
    let dq_base = slice_base(g, a.ptr(KernelParam::DQ)?, c.b, c.hq, h, c.lq, opts.d)?;
    store_rows(
        g,
        ty,
        c.lane,
        dq_base,
        g.add(q0, row0)?,
        c.lq,
        opts.d,
        &acc_get(g, &dq)?,
        Some(c.scale),
    )?;
    g.b.build_return(None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llvm::{Arch, samples};

    #[test]
    fn every_sample_emits_three_kernels() {
        let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
        for p in samples::all(8) {
            for (arch, d, ty) in [
                (Arch::Sm80, 64, InputType::Bf16),
                (Arch::Sm80, 128, InputType::Bf16),
                (Arch::Sm80, 128, InputType::F16),
                (Arch::Sm80, 32, InputType::F16),
                (Arch::Sm90, 64, InputType::Bf16),
                (Arch::Sm90, 128, InputType::Bf16),
                (Arch::Sm90, 128, InputType::F16),
                (Arch::Sm90, 32, InputType::Bf16),
            ] {
                let o = PtxOptions::backward(arch, d, d, ty);
                // sm_90 at D 64/128: the wgmma products; elsewhere mma.sync
                assert_eq!(o.mma == Mma::Wgmma, arch == Arch::Sm90 && d >= 64);
                for kind in [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq] {
                    let k = emit_backward(&Plan::new(&p), &o, kind)
                        .unwrap_or_else(|e| panic!("{} {kind:?} D{d}: {e}", p.name));
                    assert!(k.ptx.contains(&format!(".entry {}", k.entry)));
                    assert!(!k.ptx.contains("atom.global.add.f32"), "no float atomics");
                    // dQ fused into the dK/dV kernel on the wgmma path, ordered by
                    // semaphores, added by the writer warpgroup's bulk reductions; the
                    // dQ kernel then converts the f32 workspace
                    let fused = o.bwd_dq == BwdDq::OrderedBulk;
                    assert_eq!(fused, o.mma == Mma::Wgmma && d >= 64);
                    let wgmma = k.ptx.contains("wgmma.mma_async");
                    match kind {
                        BackwardKind::Pre => {}
                        BackwardKind::DkDv => {
                            assert_eq!(wgmma, o.mma == Mma::Wgmma);
                            let red = k.ptx.contains("cp.reduce.async.bulk.global.shared::cta");
                            assert_eq!(red, fused);
                            assert!(!k.ptx.contains("red.relaxed.gpu.global.add.v4.f32"));
                            // every f32 reduction waits for its turn first
                            assert_eq!(k.ptx.contains("ld.acquire.gpu.global.u32"), fused);
                        }
                        BackwardKind::Dq => assert_eq!(wgmma, !fused && o.mma == Mma::Wgmma),
                    }
                    if let Some(dir) = &dir {
                        std::fs::write(
                            format!("{dir}/{}_{arch}_d{d}_{}.ptx", k.entry, ty.name()),
                            &k.ptx,
                        )
                        .unwrap();
                    }
                }
            }
        }
    }

    /// Head dims of 256 on sm_90: the two-kernel path on wgmma, the dK/dV kernel's two
    /// warpgroups on one kv tile, each accumulating half of dK's and dV's columns (m64n128
    /// products at 256) after Sᵀ and dPᵀ over the whole head dim; the dQ
    /// kernel's dQ = dS K in one m64n256 product per k-step at D256, two q tiles per CTA
    /// on closed-form bounds (`dq_pair`); every sample, both
    /// input types, D = Dv = 256 and 128 / 256 mixed; deterministic text.
    /// `ATTNC_BWD_PTX_DIR` dumps the kernels (for ptxas).
    #[test]
    fn head_dim_256_kernels() {
        let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
        for (p, (d, dv, ty)) in crate::test_matrix::cases(
            &samples::all(8),
            &[
                (256, 256, InputType::Bf16),
                (256, 256, InputType::F16),
                (128, 256, InputType::Bf16),
                (256, 128, InputType::Bf16),
            ],
        ) {
            let o = PtxOptions::backward(Arch::Sm90, d, dv, ty);
            assert_eq!((o.mma, o.bwd_dq), (Mma::Wgmma, BwdDq::Separate));
            assert_eq!(dkdv_parts(&o), 2);
            let plan = Plan::new(&p);
            for kind in [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq] {
                let k = emit_backward(&plan, &o, kind)
                    .unwrap_or_else(|e| panic!("{} {kind:?} D{d}/{dv}: {e}", p.name));
                let again = emit_backward(&plan, &o, kind).unwrap();
                assert_eq!(k.ptx, again.ptx, "deterministic");
                assert!(!k.ptx.contains("atom.global.add.f32"), "no float atomics");
                let has = |n: u32| {
                    k.ptx
                        .contains(&format!("wgmma.mma_async.sync.aligned.m64n{n}k16"))
                };
                match kind {
                    BackwardKind::Pre => {}
                    BackwardKind::DkDv => {
                        // two warpgroups on one kv tile, a column half each;
                        // at D = Dv one computes Sᵀ, the other dPᵀ (exchanged)
                        assert_eq!(k.threads, 256);
                        assert_eq!(xchg(&o), d == dv);
                        let off = PtxOptions {
                            bwd_xchg: false,
                            ..o
                        };
                        let both = emit_backward(&plan, &off, kind).unwrap();
                        assert_eq!(
                            both.smem_bytes + XCHG_BYTES * (d == dv) as u32,
                            k.smem_bytes
                        );
                        // Sᵀ, dPᵀ: 64 q columns; dV, dK: a half of 128 columns each
                        assert!(has(64) && has(128) && !has(256), "{}", p.name);
                        assert!(k.smem_bytes <= 227 * 1024);
                    }
                    BackwardKind::Dq => {
                        assert!(has(64) && has(d), "{}", p.name);
                        assert!(k.smem_bytes <= 227 * 1024);
                        // closed forms: two q tiles per CTA (`dq_pair`); tables one
                        let pair = k.kv_bounds.is_closed_form();
                        assert_eq!(dq_pair(&o, &k.kv_bounds), pair);
                        assert_eq!(k.threads, if pair { 256 } else { 128 });
                        let x = if pair {
                            GridDim::QBlockPairs
                        } else {
                            GridDim::QBlocks
                        };
                        assert_eq!(k.grid[0], x);
                    }
                }
                if let Some(dir) = &dir {
                    std::fs::write(
                        format!("{dir}/{}_d{d}x{dv}_{}.ptx", k.entry, ty.name()),
                        &k.ptx,
                    )
                    .unwrap();
                }
            }
        }
    }

    /// Head dims of 256 on sm_80 (mma.sync): the dK/dV kernel's eight warps, a column half
    /// of dK and dV per four (m16n8 tiles over 128 columns), one Q/dO buffer; the dQ
    /// kernel's one V and two K buffers; both within an A100 CTA's 163 KiB; every sample,
    /// both input types, D = Dv = 256 and 128 / 256 mixed; deterministic text. Tiles of
    /// 128 kv rows at D256 (16 warps) and mixes with a head dim below 128 are refused
    /// with the reason. `ATTNC_BWD_PTX_DIR` dumps the kernels (for ptxas).
    #[test]
    fn head_dim_256_mma_sync_kernels() {
        let dir = std::env::var("ATTNC_BWD_PTX_DIR").ok();
        for (p, (d, dv, ty)) in crate::test_matrix::cases(
            &samples::all(8),
            &[
                (256, 256, InputType::Bf16),
                (256, 256, InputType::F16),
                (128, 256, InputType::Bf16),
                (256, 128, InputType::Bf16),
            ],
        ) {
            let o = PtxOptions::backward(Arch::Sm80, d, dv, ty);
            assert_eq!((o.mma, o.bwd_dq), (Mma::Sync, BwdDq::Separate));
            assert!(single_buffer(&o) && dkdv_parts(&o) == 2);
            // at D = Dv the four warps of one part compute Sᵀ, the other's dPᵀ
            assert_eq!(xchg(&o), d == dv);
            let plan = Plan::new(&p);
            for kind in [BackwardKind::Pre, BackwardKind::DkDv, BackwardKind::Dq] {
                let k = emit_backward(&plan, &o, kind)
                    .unwrap_or_else(|e| panic!("{} {kind:?} D{d}/{dv}: {e}", p.name));
                let again = emit_backward(&plan, &o, kind).unwrap();
                assert_eq!(k.ptx, again.ptx, "deterministic");
                assert!(!k.ptx.contains("wgmma"), "mma.sync only");
                assert!(!k.ptx.contains("atom.global.add.f32"), "no float atomics");
                assert!(k.smem_bytes <= SM80_SMEM_BYTES, "{} {kind:?}", p.name);
                match kind {
                    BackwardKind::Pre => {}
                    BackwardKind::DkDv => {
                        assert_eq!(k.threads, 256);
                        // K, V, then one (Q, dO, L2, Delta) buffer
                        let t = DkDvTiles::new(&o);
                        assert_eq!(t.buf, 0);
                        let x = XCHG_BYTES * (d == dv) as u32;
                        assert_eq!(k.smem_bytes, 64 * 2 * (2 * d + 2 * dv) + 512 + x);
                        let off = PtxOptions {
                            bwd_xchg: false,
                            ..o
                        };
                        let both = emit_backward(&plan, &off, kind).unwrap();
                        assert_eq!(both.smem_bytes + x, k.smem_bytes);
                    }
                    BackwardKind::Dq => {
                        assert_eq!(k.threads, 128);
                        // Q, dO, V, two K buffers
                        assert_eq!(k.smem_bytes, 64 * 2 * (3 * d + 2 * dv));
                    }
                }
                if let Some(dir) = &dir {
                    std::fs::write(
                        format!("{dir}/{}_sm80_d{d}x{dv}_{}.ptx", k.entry, ty.name()),
                        &k.ptx,
                    )
                    .unwrap();
                }
            }
        }
        let p = samples::causal();
        let o = PtxOptions::backward(Arch::Sm80, 256, 256, InputType::Bf16);
        for (q_block, kv_block) in [(64, 128), (128, 64)] {
            let o = PtxOptions {
                q_block,
                kv_block,
                ..o
            };
            let e = emit_backward(&Plan::new(&p), &o, BackwardKind::DkDv).unwrap_err();
            assert!(e.to_string().contains("tiles of 64 x 64"), "{e}");
        }
        let o = PtxOptions::backward(Arch::Sm80, 256, 64, InputType::Bf16);
        let e = emit_backward(&Plan::new(&p), &o, BackwardKind::DkDv).unwrap_err();
        assert!(
            e.to_string().contains("the other head dim 128 or 256"),
            "{e}"
        );
    }

    /// The kernel's split of a contribution (`fixed_add`, here in Rust with the same f64
    /// operations) summed in wrapping u64 words, decoded by `fixed_to_f32`: the f64 sum
    /// rounded to f32 (up to the 2^-60 resolution), in any order; non-finite flags.
    #[test]
    fn fixed_point_sums_are_exact_and_order_free() {
        fn split(c: f32) -> [u64; 3] {
            if !c.is_finite() {
                return [
                    0,
                    0,
                    if c.is_nan() {
                        4
                    } else if c > 0.0 {
                        1
                    } else {
                        2
                    },
                ];
            }
            let y = c as f64 * 2f64.powi(32);
            let hf = y.floor();
            let lo = ((y - hf) * 2f64.powi(28)).round_ties_even();
            [hf as i64 as u64, lo as u64, 0]
        }
        fn sum(xs: &[f32]) -> [u64; 3] {
            xs.iter().fold([0; 3], |a, x| {
                let w = split(*x);
                [
                    a[0].wrapping_add(w[0]),
                    a[1].wrapping_add(w[1]),
                    a[2] | w[2],
                ]
            })
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in [1usize, 2, 7, 1000] {
            let xs: Vec<f32> = (0..n)
                .map(|_| {
                    let m = (next() % 2_000_001) as f32 / 1e6 - 1.0;
                    let e = (next() % 40) as i32 - 30;
                    m * 2f32.powi(e)
                })
                .collect();
            let exact: f64 = xs.iter().map(|x| *x as f64).sum();
            let got = fixed_to_f32(sum(&xs));
            let tol = (exact.abs() * 1e-7).max(n as f64 * 2f64.powi(-60));
            assert!((got as f64 - exact).abs() <= tol, "{n}: {got} vs {exact}");
            let mut rev = xs.clone();
            rev.reverse();
            assert_eq!(fixed_to_f32(sum(&rev)).to_bits(), got.to_bits());
        }
        assert_eq!(fixed_to_f32(sum(&[-0.75, 0.25])), -0.5);
        // tiny values: exact up to the resolution 2^-60
        assert!((fixed_to_f32(sum(&[-1e-12])) as f64 + 1e-12).abs() <= 2f64.powi(-60));
        assert_eq!(fixed_to_f32(sum(&[1.0, f32::INFINITY])), f32::INFINITY);
        assert!(fixed_to_f32(sum(&[f32::INFINITY, f32::NEG_INFINITY])).is_nan());
        assert!(fixed_to_f32(sum(&[f32::NAN])).is_nan());
    }

    /// The fused dQ scheme's options: the defaults (fused at D128 on sm_90 only), its
    /// limits (wgmma, Br 64, at least 64 dQ columns per warpgroup) as errors, and cache
    /// keys that tell the schemes apart.
    #[test]
    fn fused_dq_options() {
        let p = samples::causal();
        let plan = Plan::new(&p);
        let d128 = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
        assert_eq!(
            (d128.bwd_dq, d128.q_block, d128.kv_block, d128.bwd_tma),
            (BwdDq::OrderedBulk, 64, 128, true)
        );
        // another scheme drops the TMA producer (it needs the bulk scheme's writer warps)
        assert!(!d128.backward_fused(BwdDq::Ordered).bwd_tma);
        assert!(d128.backward_fused(BwdDq::OrderedBulk).bwd_tma);
        let sep = PtxOptions::backward_separate(Arch::Sm90, 128, 128, InputType::Bf16);
        assert_eq!(sep.bwd_dq, BwdDq::Separate);
        // D64 (session 9): the same scheme, kv tiles of 128, 32 dQ columns per warpgroup
        let d64 = PtxOptions::backward(Arch::Sm90, 64, 64, InputType::Bf16);
        assert_eq!(
            (d64.bwd_dq, d64.q_block, d64.kv_block, d64.bwd_tma),
            (BwdDq::OrderedBulk, 64, 128, true)
        );
        // D64 with Dv128 keeps the two kernels
        assert_eq!(
            PtxOptions::backward(Arch::Sm90, 64, 128, InputType::Bf16).bwd_dq,
            BwdDq::Separate
        );
        // Ordered at D64 keeps one warpgroup (64 dQ columns); two (32 each) are valid too
        let d64o = PtxOptions {
            kv_block: 128,
            ..PtxOptions::backward_separate(Arch::Sm90, 64, 64, InputType::Bf16)
                .backward_fused(BwdDq::Ordered)
        };
        assert!(emit_backward(&plan, &d64o, BackwardKind::DkDv).is_ok());
        assert_eq!(
            PtxOptions::backward(Arch::Sm80, 128, 128, InputType::Bf16).bwd_dq,
            BwdDq::Separate
        );
        let atomic = sep.backward_fused(BwdDq::Atomic);
        let tma = d128;
        let d128 = PtxOptions {
            bwd_tma: false,
            ..d128
        };
        let keys = [sep.key(), d128.key(), atomic.key(), tma.key()];
        for (i, a) in keys.iter().enumerate() {
            assert!(keys[i + 1..].iter().all(|b| a != b), "{a}");
        }
        // bwd_tma: the producer warp's maps, its mbarriers and dSᵀ x 2 in shared memory
        let k = emit_backward(&plan, &tma, BackwardKind::DkDv).unwrap();
        assert!(k.params.ends_with(&[KernelParam::TmaQ, KernelParam::TmaDo]));
        let t = DkDvTiles::new(&tma);
        assert_eq!(k.smem_bytes, t.bytes);
        assert!(t.bytes <= 227 * 1024 && t.q_bars.is_some() && t.stat_buf == 512);
        let ds = t.ds.unwrap().offset;
        assert!(ds >= t.l2 + 2 * t.stat_buf && ds.is_multiple_of(1024));
        assert!(DkDvTiles::new(&d128).q_bars.is_none());
        let bad = [
            PtxOptions {
                q_block: 128,
                ..d128
            },
            PtxOptions {
                bwd_dq: BwdDq::Ordered,
                ..PtxOptions::backward(Arch::Sm80, 128, 128, InputType::Bf16)
            },
            // TMA loads need the bulk scheme's writer warpgroup
            PtxOptions {
                bwd_tma: true,
                ..sep.backward_fused(BwdDq::Ordered)
            },
        ];
        for o in bad {
            assert!(
                emit_backward(&plan, &o, BackwardKind::DkDv).is_err(),
                "{}",
                o.key()
            );
        }
        // the convert kernel reads the workspace, the fused kernel sums the capture gradients
        let conv = emit_backward(&plan, &d128, BackwardKind::Dq).unwrap();
        assert!(conv.params.contains(&KernelParam::DqAccum) && conv.ptx.contains(".version 8.1"));
        let bt = samples::bias_table();
        let fused = emit_backward(&Plan::new(&bt), &d128, BackwardKind::DkDv).unwrap();
        assert!(fused.params.contains(&KernelParam::TensorGrad(0)));
        let conv = emit_backward(&Plan::new(&bt), &d128, BackwardKind::Dq).unwrap();
        assert!(!conv.params.contains(&KernelParam::TensorGrad(0)));
    }

    #[test]
    fn unsupported_configurations_are_errors() {
        let p = samples::softcap_causal();
        // D256 on mma.sync: tiles of 64 x 64 only (`head_dim_256_mma_sync_kernels`)
        let o = PtxOptions {
            kv_block: 128,
            ..PtxOptions::backward(Arch::Sm80, 256, 256, InputType::Bf16)
        };
        let e = emit_backward(&Plan::new(&p), &o, BackwardKind::Pre).unwrap_err();
        assert!(e.to_string().contains("64 x 64"), "{e}");
        // not in the fused kernel, nor beside a head dim of 64
        let fused = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
        let o = PtxOptions {
            d: 256,
            dv: 256,
            ..fused
        };
        assert!(emit_backward(&Plan::new(&p), &o, BackwardKind::DkDv).is_err());
        let o = PtxOptions::backward(Arch::Sm90, 64, 256, InputType::Bf16);
        assert!(emit_backward(&Plan::new(&p), &o, BackwardKind::DkDv).is_err());
        let o = PtxOptions::backward(Arch::Sm90, 96, 96, InputType::Bf16);
        let e = emit_backward(&Plan::new(&p), &o, BackwardKind::DkDv).unwrap_err();
        assert!(e.to_string().contains("32, 64, 128 and 256"), "{e}");
        // which captures get gradients
        assert_eq!(capture_grads(&samples::bias_table()).tensors, vec![0]);
        assert!(capture_grads(&samples::alibi_causal(8)).is_empty());
        assert!(capture_grads(&samples::document_causal()).is_empty());
    }
}
