//! The tensor-core split-KV decode kernel ([`KernelKind::DecodeMma`]): the rows of a kv
//! head packed into m16 tiles, K/V staged through a `cp.async` ring in shared memory, S
//! = Q Kᵀ and O += P V on `mma.sync.m16n8k16` (sm_80 and sm_90), the score and mask on
//! S's fragments. Its partials go to the same combine kernel as the SIMT kernel's
//! (`decode.rs`), with `rows` = the CTA's rows.
//!
//! In: a verified [`Program`] (mask and score at logical positions, see `crate::decode`),
//! [`DecodeOptions`] with `rows` 16, 32 or 64 and D 64 or 128. Out: the kernel's IR
//! (`spec`, `generate`, reached through `llvm::spec`) and its shared memory ([`smem_bytes`]).
//!
//! Grid `(splits, Hkv * row_groups, B)`, [`THREADS`] threads (4 warps):
//! ```text
//! rows: r = g * Lq + i as in decode.rs; the CTA takes rows rg * RPC .. + RPC, RPC =
//!     rows = 16 M (M = 1, 2, 4 m-tiles); Q of those rows -> shared memory (cp.async,
//!     rows past G * Lq zero) -> A fragments in registers
//! keys: lo + split * chunk .. min(lo + (split + 1) * chunk, hi) in tiles of KV_TILE = 64
//! ring: `stages(D)` buffers of one K tile and one V tile (64 x D each, rows 16-byte-chunk
//!     swizzled); all 128 threads copy a tile with cp.async.cg, two 16-byte chunks of a
//!     row per thread and pass (c and c + D/16: one address per row, a paged one through
//!     the page ids held in lanes; keys past the split's end
//!     zero-filled: no read, P V sees 0, never NaN), one commit group per tile, tile t +
//!     stages - 1 issued after the barrier that frees its buffer (one barrier per tile)
//! warp w: m-tile w % M, key slice w / M of each tile (64 M / 4 keys): S = Q Kᵀ (ldmatrix
//!     K), logits on the fragments (scale, score, mask at (b, h of the row, position of
//!     the row, key position); -inf outside the split or for rows that do not exist),
//!     the forward's online softmax (`softmax::online_softmax`, log2 units, lazy
//!     rescale), O += P V (ldmatrix.trans V)
//! end: the 4 / M warps of an m-tile merge (m, l, O) through shared memory (over the
//!     ring); the split's normalized O (f32) and LSE (natural log; -inf when it saw no
//!     key) go to part_o[b, hk, rg, split, RPC, D] / part_lse, as the SIMT kernel's
//! ```
//! Fused ([`KernelKind::DecodeMmaFused`]): the same kernel with the combine folded in: after
//! its partials, each CTA counts itself in `DecodeSem[b, hk, rg]`; the last split of the
//! group to arrive merges the group's partials in split order into O and LSE (see
//! `fused_combine`), so no combine kernel is launched (one launch fewer, and the merge
//! of a group starts as soon as its last split ends, under the other groups' tails).
//! With [`COPY_DIRECT`] (the runtime's default for a call with one split) the fused kind
//! is the one-split kernel instead: each CTA writes its rows' O (16-bit) and LSE, no
//! partials, no count, no merge.
//!
//! On sm_90 the kernel lets the combine kernel start (`griddepcontrol.launch_dependents`)
//! first thing and waits for the previous grid (`griddepcontrol.wait`) before any global
//! access, or with [`COPY_EARLY`] (the runtime's default) after the prologue's reads and
//! before anything is written.
//!
//! Shared memory at D128: Q 4-16 KB + 3 stages x 32 KB (2 CTAs per SM on an H200); D64:
//! 6 stages x 16 KB. Fast mode only (checked mode runs the prefill path).

use super::cta::Args;
use super::decode::{
    DecodeKernels, DecodeOptions, DecodeParam, MMA_ROWS, SeqKeys, cache_row_elem, check_dv,
    declare, decode_env, decode_params, decode_spec, finite_or_zero, generate_spec, item_range,
    let_combine_start, merge_partials, seq_keys, split_keys_from, with_combine,
};
use super::expr::{Elem, Env, emit_function};
use super::gpu::{Gpu, R, SmemTile, Var};
use super::matmul::{load_q_fragments, pv_at, pv_wgmma_issue, qk, qk_wgmma, qk_wgmma_issue};
use super::softmax::online_softmax;
use super::tile::{AccTile, AccValues, Cfg, Ctx, RowState, split4};
use super::{
    EmitText, EmitTimes, GridDim, InputType, KernelSpec, LlvmError, PtxKernel, PtxOptions,
};
use crate::backend::KernelKind;
use crate::ir::Program;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

/// Threads per CTA (4 warps), as the SIMT kernel.
pub const THREADS: u32 = 128;
const WARPS: u32 = THREADS / 32;
/// Keys per shared-memory tile.
pub const KV_TILE: u32 = 64;
/// Shared memory the K/V ring may take.
const RING_BYTES: u32 = 96 * 1024;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;
/// 16-byte chunks of one K/V row that a thread copies per pass of a tile's copy.
const CHUNKS_PER_THREAD: u32 = 2;
/// Splits merged per round of the fused kernel's combine (loads issued together).
const FUSED_UNROLL: u32 = 16;
/// [`COPY_STREAM`]: shared slots for the chunks a CTA took (a power of two; a CTA's
/// window of issued and known tiles spans fewer chunks).
const STREAM_SLOTS: u32 = 8;
/// [`COPY_STREAM`]: thread 0 takes the next chunk when this many tiles of the CTA's known
/// work are left (the count lands one iteration later; the page ids are fetched 3 tiles
/// ahead).
pub const STREAM_AHEAD: u32 = 5;

/// [`PtxOptions::decode_copy`] bit: a tile whose 64 keys all lie below the split's end
/// is copied without the per-row bounds check (no compare and selects per 16-row pass;
/// both layouts); partial tiles keep it.
pub const COPY_FULL: u32 = 1;
/// [`PtxOptions::decode_copy`] bit: the `cp.async` destinations as 32-bit shared-window
/// addresses, one base per tile plus a constant in each instruction (instead of a 64-bit
/// shared address per copy).
pub const COPY_SMEM32: u32 = 2;
/// [`PtxOptions::decode_copy`] bit, paged layout: each 16-row pass's page id and slot
/// from the tile's alignment (tiles start on multiples of [`KV_TILE`]) instead of per
/// row (see `Pages::byte_pass`).
pub const COPY_PAGE_PASS: u32 = 4;
/// The three copy variants of session 9 (`abc`).
pub const COPY_ALL: u32 = COPY_FULL | COPY_SMEM32 | COPY_PAGE_PASS;
/// [`PtxOptions::decode_copy`] bit: the K/V copies ask the L2 for the 256 bytes around
/// each source (`cp.async...L2::256B`: a D128 row at once) instead of its 32-byte
/// sectors as the copies reach them.
pub const COPY_L2_256: u32 = 8;
/// [`PtxOptions::decode_copy`] bit (sm_90; every kind — the merging fused kind too since
/// session 17, before which it kept the wait first): the prologue's reads
/// (ranges, lengths, page ids, Q and the first `stages - 1` K/V tiles) are issued before
/// `griddepcontrol.wait`, which moves to the end of the prologue. Only inputs are read
/// there and the kernel writes nothing before the wait (the merging fused kind's
/// partials, count and merge come after its loop), so a launch under the previous
/// kernel's tail is correct as long as that kernel does not write the inputs (the
/// runtime chains a host-tensor call's decode kernel after its own combine kernels, or
/// the fused kernel after the previous fused kernel, or after the uploads' copies; the
/// caller-buffer path does not chain the decode kernel).
pub const COPY_EARLY: u32 = 16;
/// [`PtxOptions::decode_copy`] bit of the fused kind ([`KernelKind::DecodeMmaFused`]; the
/// plain kind ignores it): the launch has one split per (b, kv head, row group), so each
/// CTA writes its rows' normalized O (16-bit) and LSE straight into the outputs: no
/// partials, no count, no merge, no combine kernel (the bits the combine kernel gives for
/// one split: weight `exp2(0)` = 1, sum 1). It also takes [`COPY_EARLY`] (nothing is
/// written before the wait). The runtime launches it only when the call's geometry has
/// one split (`decode::gpu`).
pub const COPY_DIRECT: u32 = 32;
/// [`PtxOptions::decode_copy`] bit, paged layout at D128 (16 rows per pass of the tile's
/// copy, at most a page's [`crate::decode::MIN_PAGE`] positions): the tiles start on
/// multiples of [`KV_TILE`] as with [`COPY_PAGE_PASS`], so each pass's 16 rows lie in
/// one page at consecutive slots; lane `p` of every warp holds pass `p`'s 64-bit page
/// base (the page's start plus its first row's slot, computed with the page ids one
/// tile ahead, `Pages::fetch_bases`), and a copy's address is that base (one shuffle
/// pair with a constant lane) plus the thread's loop-invariant offset (its row in the
/// pass and its chunk in the row) — no per-pass page arithmetic. Other D: ignored
/// ([`COPY_PAGE_PASS`]'s or the plain paged copy).
pub const COPY_PAGE_BASE: u32 = 64;
/// [`PtxOptions::decode_copy`] bit, paged layout on sm_90 (tiles start on multiples of
/// [`KV_TILE`] as with [`COPY_PAGE_PASS`]): a full tile (all 64 keys below the split's
/// end) is copied by TMA — lanes of warp 0 each issue one `cp.async.bulk.tensor.3d` box
/// (64 columns x 1 kv head x `min(P, 64)` rows of one page, through the tensor maps
/// `TmaK` / `TmaV` of the cache viewed as `{D, Hkv, pages x P}`, 128-byte swizzle)
/// completing on the stage's mbarrier, which every thread waits on before reading the
/// tile; the K/V tiles are then 64-column slabs (`SmemTile::slab`). A partial tile
/// (the split's last) keeps the checked `cp.async` copy (rows past the end zero-filled:
/// TMA would read the page's stale rows). Contiguous layout, other archs: ignored.
pub const COPY_TMA: u32 = 128;
/// [`PtxOptions::decode_copy`] bit, paged layout (not with [`COPY_PAGE_BASE`], which
/// computes its bases from the ids as they load): the page ids that the loop loads one
/// tile ahead (`Pages::fetch`) are kept as loaded and clamped into the cache where the
/// next tile's copy reads them (`Pages::ids`: two min/max per tile), so that nothing
/// in the loading iteration consumes the load. Without it the clamp follows the load in
/// the same iteration: ptxas 13.0 puts it ~230 instructions after the `LDG` (before the
/// softmax's rescale branch, at 64 rows D128), where a warp waits for the table's
/// latency once per tile — hidden while the kernel waits for HBM (Lq 1, 4), exposed at
/// 64 rows (Lq 16), where the kernel is bound by its issue. Contiguous: ignored.
pub const COPY_IDS_LATE: u32 = 256;
/// [`PtxOptions::decode_copy`] bit of the combine kernel (defined with it in `decode.rs`):
/// the combine kernel lets the next grid launch before its own `griddepcontrol.wait`.
pub use super::decode::COPY_COMBINE_TRIGGER;
/// [`PtxOptions::decode_copy`] bit (both layouts): a tile on which every element is
/// known to be kept takes its logits without the per-element bounds and mask tests —
/// `scale x S x log2 e` on every fragment, the same bits the tested path gives where
/// every test holds. A tile is such when (CTA-uniform, tested once per tile) its 64
/// keys all lie below the split's end, every row of the CTA exists (its packed row
/// below `G x Lq`, the sequence at least `Lq` long) and the mask holds on the whole box
/// of the CTA's positions `seq_len - Lq ..= seq_len - 1` x the tile's keys: no mask, or a
/// mask that is exactly a conjunction of linear constraints (`full_tile_form`: `q`,
/// `kv`, `q - kv`, i32 constants and params compared, no other arithmetic, so its i32
/// evaluation never wraps and equals the exact form), each checked at the box's corner
/// where it is smallest (i64). Other masks: ignored (byte-identical PTX). At 64 rows
/// (Lq 16, GQA 4:1) the loop is bound by its issue and the tests were ~8% (dense) to
/// ~15% (causal) of its instructions.
pub const COPY_FULL_TILE: u32 = 1024;
/// [`PtxOptions::decode_copy`] bit, a diagnostic of the plain kind (not the fused kinds):
/// each CTA records where its time went — `%smid` and `%globaltimer` (its low 32 bits,
/// ns) at its start, when `griddepcontrol.wait` returned, when the prologue's tiles had
/// landed, when its loop ended and after its partials' stores — into the first six words
/// of its partial's last row (`part_o[.., RPC - 1, 0..6]` as u32 bits) when that row is
/// padding (the CTA's last packed row at or past `G x Lq`: Lq 1 and 2 at GQA 4:1; the
/// combine never reads such rows), stored by thread 0 after a barrier that orders the
/// row's own stores before it. The runtime reads the records back
/// (`DecodeModule::trace`, `attnc bench --decode` with `ATTNC_DECODE_BENCH_TRACE=1`).
/// Results are the same bits as without it.
pub const COPY_TRACE: u32 = 2048;
/// [`PtxOptions::decode_copy`] bit of the combine kernel (defined with it in `decode.rs`):
/// one combine CTA per (query head, sequence), its warps over the rows.
pub use super::decode::COPY_COMBINE_ROWS;
/// [`PtxOptions::decode_copy`] bit of the combine kernel (defined with it in `decode.rs`):
/// each warp merges up to 16 splits per round instead of 8.
pub use super::decode::COPY_COMBINE_WIDE;
pub use super::decode::COPY_DEVICE_RANGES;
/// [`PtxOptions::decode_copy`] bit of the plain kind (not the fused kinds, not with
/// [`COPY_TMA`]; see [`steals`]): work stealing. The launch has `nctaid.x` CTAs along the
/// splits (the static splits, each `Chunk` keys) and `Splits` splits in all: the splits
/// from `nctaid.x` on (each `StealChunk` keys, after the static ones) are work items
/// handed out by a counter (`DecodeSem[0]`). A CTA runs its own split (`ctaid`, the
/// prologue before `griddepcontrol.wait` as [`COPY_EARLY`] says), then, as long as the
/// counter hands out items, item `v` = split `nctaid.x + v / (Y Z)`, `(y, z)` = `v % (Y
/// Z)` (one relaxed atomic add by thread 0 when a split's loop ends, its latency under
/// the split's merge and stores; broadcast through shared memory); the CTA whose add is
/// the launch's last (`Splits x Y x Z - 1`: every CTA adds once more than it takes)
/// zeroes the counter for the next launch. Every split's partial goes to its own slot,
/// so the combine merges the same partials in the same order whichever CTA ran them:
/// results are deterministic, bit for bit those of a launch of the same splits without
/// stealing. The point: CTAs that stream faster take more of the small splits, so the
/// grid's CTAs end together (session 17's records: the same work per CTA ended over
/// ~24 µs at B1 Lkv131072).
pub const COPY_STEAL: u32 = 8192;
/// Whether [`COPY_STEAL`] applies to a kernel of `opts` (the plain kind when not `fused`).
pub fn steals(opts: &DecodeOptions, fused: bool) -> bool {
    opts.copy & COPY_STEAL != 0 && !fused && !tma_copy(opts)
}
/// [`PtxOptions::decode_copy`] bit of the tensor-core kinds (not with [`COPY_STEAL`],
/// whose splits are its own): balanced splits. Item `b`'s range of `T` tiles (from `lo`,
/// rounded as `split_keys_from` rounds it) is cut into the `Splits` splits at tiles
/// `floor(s T / Splits)`, so that every split has `floor(T / Splits)` or one more tile
/// (`T` and the products in 64 bits), instead of `Chunk` keys each with the rest in the
/// last split (B1 Lkv131072: 2048 tiles in 33 splits, 32 of 63 tiles and one of 32,
/// against 2 of 63 and 31 of 62). A sequence shorter than the launch's longest is then
/// spread over every split too. The launch's `Splits x Chunk` covers every range as
/// before (each split has at most `ceil(T / Splits)` tiles). Deterministic: the partials
/// are merged in split order as before (different bits from the unbalanced cut: other
/// partial sums).
pub const COPY_BALANCED: u32 = 16384;
/// [`PtxOptions::decode_copy`] bit of the plain kind (not the fused kinds, not with
/// [`COPY_TMA`] or [`COPY_STEAL`]; see [`streams`]): a split that continues its stream.
/// Each CTA runs its own split of `Chunk` keys (the launch's `Splits x Chunk` cover only
/// part of a range), then takes chunks of `StealChunk` keys of the rest of its item's range
/// (from key `lo + Splits x Chunk` on) from the item's counter (`DecodeSem[2 i]`, item `i`
/// = its (b, kv head, row group)), **within the same loop**: thread 0 adds to the counter
/// when 5 tiles of the CTA's known work are left, stores the count into a shared slot in
/// the next iteration (the add's latency under a tile's compute), and after that
/// iteration's barrier every thread extends the loop's end by the chunk's tiles (or stops
/// taking when the chunks are gone). The ring stays full across the boundary (no new
/// prologue) and the chunk's tiles go into the same accumulators: one partial per CTA as
/// without the bit. Which chunks a CTA merges depends on timing, so results are **not
/// bit-reproducible** from call to call (each is a correct merge of the same keys). The
/// CTA that counts last in `DecodeSem[2 i + 1]` after its loop zeroes both words for the
/// next launch. The runtime sizes the own split at 5 tiles at least (a split with keys
/// after it has its whole `Chunk`), so a claim always lands before its first tile's
/// page ids are fetched (3 tiles ahead).
pub const COPY_STREAM: u32 = 32768;
/// Whether [`COPY_STREAM`] applies to a kernel of `opts` (the plain kind when not `fused`).
pub fn streams(opts: &DecodeOptions, fused: bool) -> bool {
    opts.copy & COPY_STREAM != 0 && !fused && !tma_copy(opts) && opts.copy & COPY_STEAL == 0
}
/// [`PtxOptions::decode_copy`] bit (sm_90, 64 rows per CTA, D 64 or 128; ignored
/// otherwise — see [`wgmma_path`]): the two products on Hopper `wgmma` instead of
/// `mma.sync`. The CTA's four warps are one warpgroup of 64 rows (warp `w` keeps m-tile
/// `w`, as without the bit), Q and the ring's K/V tiles are stored in the wgmma
/// canonical layout (64-column slabs, 128-byte swizzle, `SmemTile::slab`; the
/// `cp.async` copies write it, each thread's writes made visible to the async proxy by
/// `fence.proxy.async` before the tile's barrier), S = Q Kᵀ is 8 (D128) `wgmma
/// m64n64k16` from two shared-memory descriptors, O += P V 4 `wgmma m64n{D}k16` with
/// P from registers (the softmax's A fragments) and V N-major; each group is waited for
/// before its results are read (the softmax on S's fragments and O's rescale are
/// those of the `mma.sync` path: the accumulator layout per warp is the same). At 64
/// rows the `mma.sync` loop issues 128 `HMMA` and 64 `LDSM` per warp and tile (Lq 16
/// at GQA 4:1 ran at 3.7-4.0 TB/s against 4.4 at Lq 1 and 4); here 12 `wgmma` per
/// warpgroup and tile.
pub const COPY_WGMMA: u32 = 65536;
/// [`PtxOptions::decode_copy`] bit of the runtime (the kernels ignore it: byte-identical
/// PTX): with [`COPY_WGMMA`], a call with 17..=32 packed rows per kv head (Lq 8 at GQA
/// 4:1) runs the 64-row kernel (its rows past `G x Lq` padding: zero Q, never stored
/// where the combine reads) instead of the 32-row one, so that it takes the wgmma path.
pub const COPY_WGMMA_ROWS32: u32 = 131072;
/// [`PtxOptions::decode_copy`] bit, with [`COPY_WGMMA`] where it applies ([`wgmma_path`]):
/// a deep ring, as many stages as 192 KiB hold (6 at D128; D64 has 6 already), so one
/// CTA per SM with up to 5 tiles (160 KiB at D128) in flight instead of two CTAs with
/// 2 each (128 KiB); the runtime sizes its splits for 132 resident CTAs then. Whether
/// the ring's depth, rather than the products, keeps Lq16 below Lq 1 / 4's rate: no —
/// slower on the H200 (session 20's final check, B8 Lq16: 343.5 against 274.6 µs), off.
pub const COPY_WGMMA_DEEP: u32 = 262144;
/// [`PtxOptions::decode_copy`] bit, with [`COPY_WGMMA`] where it applies ([`wgmma_path`];
/// not with [`COPY_STREAM`] or [`COPY_TMA`], which keep their loop): O += P V's wait is
/// deferred into the next tile. A tile's iteration waits for its copies and the barrier
/// (P V of the tile before still in flight), waits for that P V, issues S = Q Kᵀ, takes a
/// second barrier (every warp is done with the previous tile's buffer) and issues the
/// copy that refills it while S runs, then waits for S; P V is issued after the softmax
/// and left in flight (the last one waited for after the loop). So the tensor cores run
/// P V(t - 1) under the copy wait, the proxy fence and the first barrier, and S(t) under
/// the second barrier and the copy issue, instead of the warpgroup waiting for each group
/// right where it is issued. (A `wait_group 1` after S's issue, which would leave S in
/// flight while waiting for the older P V, makes ptxas 13.0 serialize the loop's wgmma:
/// C7514.)
pub const COPY_WGMMA_DEFER: u32 = 524288;
/// [`PtxOptions::decode_copy`] bit, with [`COPY_WGMMA`] where it applies ([`two_groups`]:
/// the plain kind, not with [`COPY_TMA`], [`COPY_STEAL`], [`COPY_STREAM`]; it replaces
/// [`COPY_WGMMA_DEFER`]): two warpgroups per CTA ([`THREADS_WG2`] threads), each on one
/// half of every tile's keys. Warpgroup `k` (warps `4k..4k+3`, warp `w` keeping m-tile
/// `w % 4` of the 64 rows) computes S = Q Kᵀ on keys `32k..32k+31` of the tile (8 `wgmma
/// m64n32k16`, Q shared by both), the logits and online softmax of those 32 keys, and O +=
/// P V over them (2 `wgmma m64n{D}k16`, V's rows `32k..` of the buffer), with its own (m,
/// l, O); the two halves merge through shared memory at the end as the `mma.sync`
/// path's key slices do. The ring, its one barrier per tile and its tiles in flight are
/// unchanged; the 256 threads share each tile's copy (one 16-byte chunk of a row per
/// thread and pass instead of two). The kernel asks for 2 CTAs per SM (`.maxntid 256`,
/// `.minnctapersm 2`: at most 128 registers), so an SM runs 16 warps (4 dependent
/// chains of half a tile each) instead of 8 (2 chains of a whole tile): the 64-row
/// kernel's per-tile chain copy wait -> S -> softmax -> P V was the candidate for its
/// ~16 µs over the 16-row kernel (session 21).
pub const COPY_WGMMA_WG2: u32 = 2097152;
/// [`PtxOptions::decode_copy`] bit, with [`COPY_WGMMA_WG2`] where it applies ([`two_groups`]):
/// the kernel at most [`WG2_REGS`] registers per thread (`.maxnreg`) instead of the 128
/// that two CTAs of 256 threads may take. Two such CTAs then leave 8192 of an SM's 65536
/// registers free: room for a CTA of the combine kernel (128 threads x 48 registers),
/// which the decode kernel lets launch early (`griddepcontrol.launch_dependents`), to
/// be resident beside them and wait there, as it can beside two CTAs of the one-warpgroup
/// kernel (2 x 128 threads x 127 registers). In session 22's call `v` was 1.5% faster
/// alone (decode kernels chained) but not in calls with the combine (0.997x, with `u`
/// 0.999x): the register file it fills is the candidate.
pub const COPY_WGMMA_WG2_REGS: u32 = 4194304;
/// Registers per thread with [`COPY_WGMMA_WG2_REGS`] (ptxas 13.0: no spills at D128, dense).
pub const WG2_REGS: u32 = 112;
/// Threads of a CTA with [`COPY_WGMMA_WG2`] (two warpgroups).
pub const THREADS_WG2: u32 = 256;
/// Whether [`COPY_WGMMA_WG2`] applies to a kernel of `opts` (`fused`: a fused kind).
pub fn two_groups(opts: &DecodeOptions, fused: bool) -> bool {
    opts.copy & COPY_WGMMA_WG2 != 0
        && wgmma_path(opts)
        && !fused
        && !tma_copy(opts)
        && opts.copy & (COPY_STEAL | COPY_STREAM) == 0
}
/// Threads per CTA of a kernel of `opts`: [`THREADS`], or [`THREADS_WG2`] ([`two_groups`]).
pub fn cta_threads(opts: &DecodeOptions, fused: bool) -> u32 {
    if two_groups(opts, fused) {
        THREADS_WG2
    } else {
        THREADS
    }
}
/// Shared memory [`COPY_WGMMA_DEEP`]'s ring may take.
const DEEP_RING_BYTES: u32 = 192 * 1024;
/// The ring's stages of a kernel of `opts`: [`stages`], or with [`COPY_WGMMA_DEEP`] on the
/// wgmma path as many as 192 KiB hold (2..=6).
pub fn ring_stages(opts: &DecodeOptions) -> u32 {
    if wgmma_path(opts) && opts.copy & COPY_WGMMA_DEEP != 0 {
        (DEEP_RING_BYTES / stage_bytes(opts.d)).clamp(2, 6)
    } else {
        stages(opts.d)
    }
}
/// Whether [`COPY_WGMMA`] applies to a kernel of `opts`: sm_90, 64 rows, D 64 or 128.
pub fn wgmma_path(opts: &DecodeOptions) -> bool {
    opts.copy & COPY_WGMMA != 0
        && opts.arch == super::Arch::Sm90
        && opts.rows == 64
        && matches!(opts.d, 64 | 128)
}
/// Every [`PtxOptions::decode_copy`] bit.
pub const COPY_BITS: u32 = COPY_ALL
    | COPY_L2_256
    | COPY_EARLY
    | COPY_DIRECT
    | COPY_PAGE_BASE
    | COPY_TMA
    | COPY_IDS_LATE
    | COPY_COMBINE_TRIGGER
    | COPY_FULL_TILE
    | COPY_TRACE
    | COPY_COMBINE_WIDE
    | COPY_STEAL
    | COPY_BALANCED
    | COPY_STREAM
    | COPY_WGMMA
    | COPY_WGMMA_ROWS32
    | COPY_WGMMA_DEEP
    | COPY_WGMMA_DEFER
    | COPY_COMBINE_ROWS
    | COPY_WGMMA_WG2
    | COPY_WGMMA_WG2_REGS
    | COPY_DEVICE_RANGES;

/// One constraint of [`full_tile_form`]: `q*q + kv*kv + Σ c*param + k >= 0` (exact).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TileConstraint {
    pub q: i64,
    pub kv: i64,
    pub params: Vec<(u32, i64)>,
    pub k: i64,
}

/// [`COPY_FULL_TILE`]'s form of `p`'s mask: `Some(constraints)` (empty without a mask)
/// when the mask is exactly the conjunction of linear constraints over `q`, `kv` and i32
/// params AND its i32 code cannot wrap: its instructions are only the arguments `q` and
/// `kv`, i32 constants and params, `q - kv` / `kv - q` (no other arithmetic: every value
/// compared lies in `(-2^31, 2^31)` exactly), integer comparisons other than `!=`, `!`
/// of a comparison, `&` and `&&`. `None` otherwise (the tile test then does not apply).
/// Built on the per-value linear forms (`analysis::linear::linear_ints`), as the score
/// emitter reads them.
pub(crate) fn full_tile_form(p: &Program) -> Option<Vec<TileConstraint>> {
    use crate::ir::{Arg, BinOp, Cmp, Inst, Type, UnOp, Value};
    let Some(f) = &p.mask else {
        return Some(vec![]);
    };
    let is_arg = |v: Value, a: Arg| matches!(f.inst(v), Inst::Arg(x) if *x == a);
    for (i, inst) in f.insts.iter().enumerate() {
        let ok = match inst {
            Inst::Arg(Arg::Q | Arg::Kv) | Inst::ConstI32(_) | Inst::ConstBool(_) => true,
            Inst::Param(_) => f.types[i] == Type::I32,
            Inst::Unary(UnOp::Not, _) => true,
            Inst::Binary(BinOp::ISub, a, b) => {
                (is_arg(*a, Arg::Q) && is_arg(*b, Arg::Kv))
                    || (is_arg(*a, Arg::Kv) && is_arg(*b, Arg::Q))
            }
            Inst::Binary(BinOp::ICmp(_) | BinOp::And, _, _) => true,
            Inst::Select(_, _, c) => matches!(f.inst(*c), Inst::ConstBool(false)),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    let lin = crate::analysis::linear::linear_ints(f);
    // `a - b + k >= 0` for `a`, `b` values with linear forms (small here: sums of +-1)
    let diff = |a: Value, b: Value, k: i64| -> Option<TileConstraint> {
        let (x, y) = (lin[a.index()].as_ref()?, lin[b.index()].as_ref()?);
        let mut params = x.params.clone();
        for &(pi, c) in &y.params {
            match params.iter_mut().find(|e| e.0 == pi) {
                Some(e) => e.1 -= c,
                None => params.push((pi, -c)),
            }
        }
        params.retain(|e| e.1 != 0);
        let small = |v: i64| v.abs() <= 1 << 20;
        let c = TileConstraint {
            q: x.q - y.q,
            kv: x.kv - y.kv,
            params,
            k: x.k - y.k + k,
        };
        (small(c.q) && small(c.kv) && c.params.iter().all(|e| small(e.1)) && c.k.abs() <= 1 << 40)
            .then_some(c)
    };
    // the constraints `a cmp b` is the conjunction of
    let cmp = |c: Cmp, a: Value, b: Value| -> Option<Vec<TileConstraint>> {
        Some(match c {
            Cmp::Ge => vec![diff(a, b, 0)?],
            Cmp::Gt => vec![diff(a, b, -1)?],
            Cmp::Le => vec![diff(b, a, 0)?],
            Cmp::Lt => vec![diff(b, a, -1)?],
            Cmp::Eq => vec![diff(a, b, 0)?, diff(b, a, 0)?],
            Cmp::Ne => return None,
        })
    };
    let negate = |c: Cmp| match c {
        Cmp::Ge => Cmp::Lt,
        Cmp::Gt => Cmp::Le,
        Cmp::Le => Cmp::Gt,
        Cmp::Lt => Cmp::Ge,
        Cmp::Eq => Cmp::Ne,
        Cmp::Ne => Cmp::Eq,
    };
    let mut out = Vec::new();
    let mut stack = vec![f.ret];
    while let Some(v) = stack.pop() {
        match f.inst(v) {
            Inst::ConstBool(true) => {}
            Inst::Binary(BinOp::And, a, b) | Inst::Select(a, b, _) => stack.extend([*b, *a]),
            Inst::Binary(BinOp::ICmp(c), a, b) => out.extend(cmp(*c, *a, *b)?),
            Inst::Unary(UnOp::Not, x) => match f.inst(*x) {
                Inst::Binary(BinOp::ICmp(c), a, b) => out.extend(cmp(negate(*c), *a, *b)?),
                _ => return None,
            },
            _ => return None,
        }
    }
    Some(out)
}

/// Whether [`COPY_TMA`] applies to `opts` (paged, sm_90).
pub fn tma_copy(opts: &DecodeOptions) -> bool {
    opts.paged && opts.copy & COPY_TMA != 0 && opts.arch == super::Arch::Sm90
}

/// Checks the options this kernel takes: rows 16, 32 or 64, D 64 or 128.
pub fn validate(opts: &DecodeOptions) -> Result<(), LlvmError> {
    if ![64, 128].contains(&opts.d) {
        return Err(LlvmError::Unsupported(format!(
            "tensor-core decode kernel with D = {}: needs 64 or 128",
            opts.d
        )));
    }
    if opts.copy & !COPY_BITS != 0 {
        return Err(LlvmError::Unsupported(format!(
            "tensor-core decode kernel with copy bits {:#x}: no such COPY_* bits",
            opts.copy & !COPY_BITS
        )));
    }
    if !MMA_ROWS.contains(&opts.rows) {
        return Err(LlvmError::Unsupported(format!(
            "tensor-core decode kernel with {} rows per CTA: needs 16, 32 or 64",
            opts.rows
        )));
    }
    Ok(())
}

/// 16-byte chunks of one K/V row a thread copies per pass of a tile's copy in a CTA of
/// `threads`: [`CHUNKS_PER_THREAD`] at [`THREADS`], one at [`THREADS_WG2`] (the same
/// rows per pass).
fn copy_chunks(threads: u32) -> u32 {
    (CHUNKS_PER_THREAD * THREADS / threads).max(1)
}

/// Bytes of one ring stage (a K and a V tile).
fn stage_bytes(d: u32) -> u32 {
    2 * KV_TILE * d * 2
}

/// Ring stages at head dim `d`: as many as `RING_BYTES` (96 KiB) holds, 2..=6.
pub fn stages(d: u32) -> u32 {
    (RING_BYTES / stage_bytes(d)).clamp(2, 6)
}

/// Bytes of the end's merge area: per warp 16 rows of O (f32), m and l (for the most
/// warps a CTA has: [`THREADS_WG2`]; below the ring's 96 KiB at D 64 and 128 either way).
fn merge_bytes(d: u32) -> u32 {
    THREADS_WG2 / 32 * 16 * (d + 2) * 4
}

/// Dynamic shared memory: the Q tile, then the ring (the merge area reuses it); with
/// [`COPY_TMA`] one mbarrier per stage after them; with [`COPY_STEAL`] the next work
/// item's word (16 bytes) after them.
pub fn smem_bytes(opts: &DecodeOptions) -> u32 {
    ring_end(opts)
        + if tma_copy(opts) {
            8 * ring_stages(opts)
        } else if opts.copy & COPY_STEAL != 0 {
            16
        } else if opts.copy & COPY_STREAM != 0 {
            4 * (1 + STREAM_SLOTS)
        } else {
            0
        }
}

/// The end of the Q tile and the ring (or the merge area): [`COPY_TMA`]'s mbarriers.
fn ring_end(opts: &DecodeOptions) -> u32 {
    opts.rows * opts.d * 2 + (ring_stages(opts) * stage_bytes(opts.d)).max(merge_bytes(opts.d))
}

/// The launch description of [`KernelKind::DecodeMma`] (or [`KernelKind::DecodeMmaFused`])
/// without generating code: grid (splits, Hkv x row groups, B), [`THREADS`] threads,
/// [`smem_bytes`]; the parameters and kv source of the SIMT kernel (`decode::spec`), and
/// for the fused kernel also `O`, `Lse` and `DecodeSem`.
pub(crate) fn spec(
    p: &Program,
    kind: KernelKind,
    opts: &PtxOptions,
) -> Result<KernelSpec, LlvmError> {
    let d = DecodeOptions::from_ptx(opts);
    validate(&d)?;
    check_dv(opts)?;
    let fused = match kind {
        KernelKind::DecodeMma => false,
        KernelKind::DecodeMmaFused => true,
        _ => return Err(LlvmError::Internal("not a tensor-core decode kind")),
    };
    let mut params = decode_params(p, d.copy);
    if fused {
        params.extend([DecodeParam::O, DecodeParam::Lse, DecodeParam::DecodeSem]);
    }
    if tma_copy(&d) {
        params.extend([DecodeParam::TmaK, DecodeParam::TmaV]);
    }
    // COPY_STEAL: the counter and the stolen splits' keys; fewer CTAs than splits
    let steal = steals(&d, fused);
    if steal || streams(&d, fused) {
        params.extend([DecodeParam::DecodeSem, DecodeParam::StealChunk]);
    }
    let entry = format!(
        "attnc_decode_mma{}_{}",
        if fused { "_fused" } else { "" },
        super::sanitize(&p.name)
    );
    Ok(decode_spec(
        kind,
        entry,
        opts,
        params,
        [
            if steal {
                GridDim::SplitCtas
            } else {
                GridDim::Splits
            },
            GridDim::KvHeadRowGroups,
            GridDim::Batches,
        ],
        (KV_TILE, cta_threads(&d, fused), smem_bytes(&d)),
    ))
}

/// Generates [`KernelKind::DecodeMma`] or [`KernelKind::DecodeMmaFused`]: its [`spec`] and
/// PTX (LLVM IR text with [`EmitText::PtxAndLlvm`]), with the SIMT kernel's pass pipeline.
pub(crate) fn generate(
    program: &Program,
    kind: KernelKind,
    opts: &PtxOptions,
    text: EmitText,
) -> Result<(PtxKernel, EmitTimes), LlvmError> {
    let spec = spec(program, kind, opts)?;
    let fused = kind == KernelKind::DecodeMmaFused;
    generate_spec(program, spec, text, |ctx, module, d, spec| {
        build(ctx, module, program, d, &spec.params, &spec.entry, fused)
    })
}

/// The tensor-core decode kernel and its combine kernel (tests and tools).
pub fn emit_decode_mma(
    program: &Program,
    opts: &DecodeOptions,
) -> Result<DecodeKernels, LlvmError> {
    let (dk, _) = generate(
        program,
        KernelKind::DecodeMma,
        &opts.ptx_options(),
        EmitText::PtxOnly,
    )?;
    with_combine(program, opts, dk)
}

/// The fused tensor-core decode kernel's PTX ([`KernelKind::DecodeMmaFused`]; tests and
/// tools).
pub fn emit_decode_mma_fused(program: &Program, opts: &DecodeOptions) -> Result<String, LlvmError> {
    let (k, _) = generate(
        program,
        KernelKind::DecodeMmaFused,
        &opts.ptx_options(),
        EmitText::PtxOnly,
    )?;
    Ok(k.ptx)
}

/// The page table as this kernel reads it: lane `l` of every warp holds the physical
/// page of logical page `p0 + l` of the next tile to issue (`p0`: the page of its first
/// key), loaded one tile ahead ([`Pages::fetch`]) so that the table's latency overlaps a
/// tile's work instead of stalling the copies; each row takes its page from its lane by
/// a shuffle. A 64-key tile spans at most 64 / 16 + 1 = 5 pages (pages of 16..=256
/// positions: `crate::decode::MIN_PAGE`).
struct Pages<'ctx> {
    ids: Var<'ctx>,
    shift: IntValue<'ctx>,
    /// `page_size - 1`
    in_page: IntValue<'ctx>,
    /// `b * max_pages`: this sequence's row of the table
    table_row: IntValue<'ctx>,
    last_page: IntValue<'ctx>,
    last_id: IntValue<'ctx>,
    table: PointerValue<'ctx>,
    lane: IntValue<'ctx>,
    /// bytes of one position (all kv heads) and of one page (i32: a page of at most 256
    /// positions of `Hkv x D` 16-bit elements is far below 4 GiB; the cache's byte
    /// offsets are i64, as `id x page_bytes` by one widening multiply)
    row_bytes: IntValue<'ctx>,
    page_bytes: IntValue<'ctx>,
    /// bytes from a position's start to this thread's first 16 bytes of kv head `hk` (i32)
    head_bytes: IntValue<'ctx>,
    /// [`COPY_IDS_LATE`]: `ids` holds the ids as loaded, clamped where they are used
    late: bool,
}

impl<'ctx> Pages<'ctx> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        g: &Gpu<'ctx>,
        a: &Args<'_, 'ctx>,
        b: IntValue<'ctx>,
        hk: IntValue<'ctx>,
        hkv: IntValue<'ctx>,
        d: u32,
        tch: IntValue<'ctx>,
        lane: IntValue<'ctx>,
        late: bool,
    ) -> R<Self> {
        use DecodeParam as P;
        let shift = a.int(P::PageShift)?;
        let maxp = a.int(P::MaxPages)?;
        let row_bytes = g.mul(hkv, g.c32(d as i64 * 2))?;
        Ok(Pages {
            ids: g.var(g.i32, g.c32(0))?,
            shift,
            in_page: g.sub(g.shl(g.c32(1), shift)?, g.c32(1))?,
            table_row: g.mul(b, maxp)?,
            last_page: g.sub(maxp, g.c32(1))?,
            last_id: g.sub(a.int(P::NumPages)?, g.c32(1))?,
            table: a.ptr(P::PageTable)?,
            lane,
            row_bytes,
            page_bytes: g.shl(row_bytes, shift)?,
            head_bytes: g.add(g.mul(hk, g.c32(d as i64 * 2))?, g.mul(tch, g.c32(16))?)?,
            late,
        })
    }

    /// The logical page of key position `j`.
    fn first(&self, g: &Gpu<'ctx>, j: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(g.b.build_right_shift(j, self.shift, false, "")?)
    }

    /// Loads the page ids of the tile starting at key `key0` (the logical page clamped
    /// into the table's row, the id into the cache: fast mode never reads outside).
    /// With [`COPY_IDS_LATE`] the id is kept as loaded ([`Pages::ids`] clamps it).
    fn fetch(&self, g: &Gpu<'ctx>, key0: IntValue<'ctx>) -> R<()> {
        let lp = g.add(self.first(g, key0)?, self.lane)?;
        let lp = g.iintr2("llvm.smin.i32", lp, self.last_page)?;
        let id = g.load_i32(self.table, g.add(self.table_row, lp)?)?;
        if self.late {
            return g.set(&self.ids, id);
        }
        g.set(&self.ids, self.clamp(g, id)?)
    }

    /// A page id clamped into the cache (`0..=num_pages - 1`).
    fn clamp(&self, g: &Gpu<'ctx>, id: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let id = g.iintr2("llvm.smax.i32", id, g.c32(0))?;
        g.iintr2("llvm.smin.i32", id, self.last_id)
    }

    /// The ids of the next tile to issue ([`Pages::fetch`]'s), clamped into the cache.
    fn ids(&self, g: &Gpu<'ctx>) -> R<IntValue<'ctx>> {
        let ids = g.geti(&self.ids)?;
        if self.late {
            self.clamp(g, ids)
        } else {
            Ok(ids)
        }
    }

    /// The byte offset of this thread's 16 bytes of key `j` in the cache (`j` in the tile
    /// whose ids are `ids` and whose first page is `p0`).
    fn byte(
        &self,
        g: &Gpu<'ctx>,
        ids: IntValue<'ctx>,
        p0: IntValue<'ctx>,
        j: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let src = g.sub(self.first(g, j)?, p0)?;
        let id = g.shfl_idx_i32(ids, g.and(src, g.c32(31))?)?;
        let slot = g.and(j, self.in_page)?;
        // the page's start: u32 x u32 -> u64 (one `mul.wide.u32`); within it, i32
        let page = g.mul(g.zext64(id)?, g.zext64(self.page_bytes)?)?;
        let within = g.add(g.mul(slot, self.row_bytes)?, self.head_bytes)?;
        g.add(page, g.zext64(within)?)
    }
}

impl<'ctx> Pages<'ctx> {
    /// [`COPY_PAGE_BASE`]: loads into `bases` (lane `l`) the byte offset in the cache of
    /// the first row of pass `l` (`rpp` rows each) of the tile starting at key `key0`, a
    /// multiple of [`KV_TILE`]: its page's start plus its slot's bytes. With `rpp` <= 16
    /// <= the page size `P` (both powers of two) and `key0 + l rpp` a multiple of `rpp`,
    /// the pass's rows `key0 + l rpp + r` (r < rpp) share its page and sit at slots
    /// `(key0 + l rpp) & (P - 1)` + r < P. Lanes past the tile's passes compute a clamped
    /// (never used) base; the id is clamped into the cache as in [`Pages::fetch`], so even
    /// rows past the split's end address bytes inside an existing page.
    fn fetch_bases(
        &self,
        g: &Gpu<'ctx>,
        bases: &Var<'ctx>,
        key0: IntValue<'ctx>,
        rpp: u32,
    ) -> R<()> {
        let key = g.add(key0, g.mul(self.lane, g.c32(rpp as i64))?)?;
        let lp = g.iintr2("llvm.smin.i32", self.first(g, key)?, self.last_page)?;
        let id = g.load_i32(self.table, g.add(self.table_row, lp)?)?;
        let id = g.iintr2("llvm.smax.i32", id, g.c32(0))?;
        let id = g.iintr2("llvm.smin.i32", id, self.last_id)?;
        let page = g.mul(g.zext64(id)?, g.zext64(self.page_bytes)?)?;
        let slot = g.mul(g.and(key, self.in_page)?, self.row_bytes)?;
        g.set(bases, g.add(page, g.zext64(slot)?)?)
    }

    /// [`COPY_PAGE_BASE`]: pass `pass`'s base (lane `pass` of `bases`) plus this thread's
    /// offset `thread` (its row in the pass x row bytes + its chunk's bytes in its head).
    fn byte_base(
        &self,
        g: &Gpu<'ctx>,
        bases: IntValue<'ctx>,
        pass: u32,
        thread: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let src = g.c32(pass as i64);
        let lo = g.b.build_int_truncate(bases, g.i32, "")?;
        let hi =
            g.b.build_int_truncate(g.lshr(bases, g.c64(32))?, g.i32, "")?;
        let lo = g.zext64(g.shfl_idx_i32(lo, src)?)?;
        let hi = g.zext64(g.shfl_idx_i32(hi, src)?)?;
        let base = g.or(lo, g.shl(hi, g.c64(32))?)?;
        g.add(base, thread)
    }

    /// [`Pages::byte`] for [`COPY_PAGE_PASS`]: the byte offset of this thread's 16 bytes
    /// of the tile's row `row` (0..64; `trow` + a constant per pass, so everything but
    /// the shuffle and the page's start is loop-invariant), `tile_slot` the bytes of the
    /// tile's first key within its page, `ids` the tile's page ids (lane `l`: logical
    /// page `p0 + l`, `p0` the page of the tile's first key `key0`).
    ///
    /// Why this is the row's page and slot: every tile starts on a multiple of
    /// [`KV_TILE`] = 64: the split's first key `lo + split x chunk` has `lo` rounded down
    /// to a multiple of 64 ([`split_keys_from`]: a no-op for the host's ranges, whole
    /// blocks of 64 keys; the keys it adds below a device-computed `lo` are masked by the
    /// mask itself, see there) and `chunk` a multiple of 64 (`decode::gpu::geometry`). Pages are powers of two of at
    /// least 16 positions (`crate::decode::MIN_PAGE`). With `P` the page size and key
    /// `j = key0 + row`: if `P <= 64`, `key0` is a multiple of `P`, so `j`'s page is
    /// `p0 + row / P` and its slot `row % P`; if `P > 64`, `key0 % P` is a multiple of
    /// 64 at most `P - 64`, so `j` stays in page `p0` (`row / P` = 0) at slot `key0 % P +
    /// row`. Both cases: lane `row >> shift` (at most 3 < 32) and slot `(key0 & (P-1)) +
    /// (row & (P-1))`. The slot is below `P`, the lane's id is clamped into the cache
    /// (`Pages::fetch`), so even a row past the split's end (a partial tile: zero-filled,
    /// `src_size` 0) addresses bytes inside an existing page: no read past a page's end.
    fn byte_pass(
        &self,
        g: &Gpu<'ctx>,
        ids: IntValue<'ctx>,
        tile_slot: IntValue<'ctx>,
        row: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let src = g.lshr(row, self.shift)?;
        let id = g.shfl_idx_i32(ids, src)?;
        let slot = g.and(row, self.in_page)?;
        let within = g.add(
            tile_slot,
            g.add(g.mul(slot, self.row_bytes)?, self.head_bytes)?,
        )?;
        let page = g.mul(g.zext64(id)?, g.zext64(self.page_bytes)?)?;
        g.add(page, g.zext64(within)?)
    }
}

/// [`COPY_SMEM32`]'s constants: for pass `p` and chunk copy `c` (index `p x cpt + c`),
/// the bytes from this thread's K destination of pass 0, chunk copy 0 (row `trow`, chunk
/// `tch`) to its K and V destinations, when they are the same for every thread (checked
/// here over all of them: the swizzle XORs the chunk with `row % 8`; passes move rows by
/// `rpp`, a multiple of 8, and at D128 the second chunk copy moves the chunk by `tpr` =
/// 8, past the XOR's bits); `None` otherwise (D64: `tpr` = 4 meets the XOR).
fn copy_deltas(
    kt: &SmemTile,
    vt: &SmemTile,
    rpp: u32,
    tpr: u32,
    cpt: u32,
) -> Option<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for pass in 0..KV_TILE / rpp {
        for c in 0..cpt {
            let at = |t: &SmemTile, trow: u32, tch: u32| {
                t.off_host(trow + pass * rpp, tch + c * tpr) as i64 - kt.off_host(trow, tch) as i64
            };
            let (dk, dv) = (at(kt, 0, 0), at(vt, 0, 0));
            for trow in 0..rpp {
                for tch in 0..tpr {
                    if at(kt, trow, tch) != dk || at(vt, trow, tch) != dv {
                        return None;
                    }
                }
            }
            out.push((u32::try_from(dk).ok()?, u32::try_from(dv).ok()?));
        }
    }
    Some(out)
}

/// Where one of this thread's two accumulator rows (`lane / 4 + 8 hr` of its m-tile)
/// sits: query head, position, whether it exists.
struct RowInfo<'ctx> {
    h: IntValue<'ctx>,
    pos: IntValue<'ctx>,
    live: IntValue<'ctx>,
}

pub(super) fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    opts: &DecodeOptions,
    params: &[DecodeParam],
    entry: &str,
    fused: bool,
) -> R<Module<'ctx>> {
    use DecodeParam as P;
    let g = declare(ctx, module, params, entry);
    // COPY_WGMMA: the products on wgmma (see the bit); its swizzle atoms (1024 bytes)
    // aligned in the shared window
    let wg = wgmma_path(opts);
    // COPY_WGMMA_WG2: two warpgroups on the key halves of each tile (see the bit), two
    // CTAs per SM asked for (at most 128 registers)
    let wg2 = two_groups(opts, fused);
    let threads = cta_threads(opts, fused);
    let warps = threads / 32;
    if wg2 {
        use inkwell::attributes::AttributeLoc;
        g.func
            .remove_string_attribute(AttributeLoc::Function, "nvvm.maxntid");
        g.func.add_attribute(
            AttributeLoc::Function,
            ctx.create_string_attribute("nvvm.maxntid", &threads.to_string()),
        );
        g.func.add_attribute(
            AttributeLoc::Function,
            ctx.create_string_attribute("nvvm.minctasm", "2"),
        );
        if opts.copy & COPY_WGMMA_WG2_REGS != 0 {
            // COPY_WGMMA_WG2_REGS: room for a combine CTA beside two of these
            g.func.add_attribute(
                AttributeLoc::Function,
                ctx.create_string_attribute("nvvm.maxnreg", &WG2_REGS.to_string()),
            );
        }
    }
    if wg {
        g.smem.set_alignment(1024);
    }
    let start = g.open_body();
    let a = Args { g: &g, params };
    let g = &g;
    // COPY_DIRECT (fused kind): one split, O and LSE written here (see the bit)
    let direct = fused && opts.copy & COPY_DIRECT != 0;
    // COPY_EARLY: griddepcontrol.wait after the prologue's reads (see the bit)
    // (the merging fused kind too since session 17: it writes nothing before the wait
    // either — its partials, count and merge come after the loop)
    let early = opts.copy & COPY_EARLY != 0 && opts.arch == super::Arch::Sm90;
    // COPY_TRACE (plain kind): the SM and the start time, then the times below
    let trace = opts.copy & COPY_TRACE != 0 && !fused;
    let t_start = if trace {
        Some((g.smid()?, g.globaltimer_lo()?))
    } else {
        None
    };
    if early {
        g.griddep_launch_dependents()?;
    } else {
        let_combine_start(g, opts)?;
    }
    let mut t_wait = if trace && !early {
        Some(g.globaltimer_lo()?)
    } else {
        None
    };
    let d = opts.d;
    let rpc = opts.rows;
    let m_cta = rpc / 16; // m-tiles per CTA
    let slices = warps / m_cta; // warps sharing an m-tile (key slices of a tile)
    let sw = KV_TILE / slices; // keys per slice
    let nstages = ring_stages(opts);
    let row_bytes = d as i64 * 2;

    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let mi = g.and(warp, g.c32(m_cta as i64 - 1))?;
    let si = g.lshr(warp, g.c32(m_cta.trailing_zeros() as i64))?;
    // COPY_STEAL: the CTA's work item (its own split first), the body below a loop over
    // the items it takes (see the bit)
    let steal = steals(opts, fused);
    let item = if steal {
        let vars = (
            g.var(g.i32, g.ctaid('x')?)?,
            g.var(g.i32, g.ctaid('y')?)?,
            g.var(g.i32, g.ctaid('z')?)?,
        );
        let head = g.block("item");
        g.br(head)?;
        g.b.position_at_end(head);
        Some((vars, head))
    } else {
        None
    };
    let (split, y, b) = match &item {
        Some(((vs, vy, vb), _)) => (g.geti(vs)?, g.geti(vy)?, g.geti(vb)?),
        None => (g.ctaid('x')?, g.ctaid('y')?, g.ctaid('z')?),
    };
    // COPY_TRACE with COPY_STEAL: each item's record starts at its item
    let t_start = match (t_start, &item) {
        (Some((sm, _)), Some(_)) => Some((sm, g.globaltimer_lo()?)),
        (t, _) => t,
    };
    let (hkv, lq, group, rgs) = (
        a.int(P::Hkv)?,
        a.int(P::Lq)?,
        a.int(P::Group)?,
        a.int(P::RowGroups)?,
    );
    let hk = g.udiv(y, rgs)?;
    let rg = g.sub(y, g.mul(hk, rgs)?)?;
    let nrows = g.mul(group, lq)?;
    let keys = seq_keys(g, &a, p, opts.copy, b)?;
    let seq_len = keys.len;
    // COPY_PAGE_PASS: tiles start on multiples of KV_TILE (`split_keys_from`)
    let page_pass = opts.paged && opts.copy & COPY_PAGE_PASS != 0;
    // COPY_PAGE_BASE: per-pass page bases in lanes, at 16 rows per pass (D128)
    let page_base = opts.paged
        && opts.copy & COPY_PAGE_BASE != 0
        && threads / (d / 8 / copy_chunks(threads)) <= crate::decode::MIN_PAGE as u32;
    // COPY_TMA: full tiles by TMA boxes of one page's rows (tiles on multiples of 64)
    let tma = tma_copy(opts);
    let align = if page_pass || page_base || tma {
        KV_TILE
    } else {
        1
    };
    let (k0, k1) = if steal {
        steal_keys(g, &a, &keys, split, align)?
    } else if opts.copy & COPY_BALANCED != 0 && !direct {
        // (the one-split form reads its whole range either way)
        balanced_keys(g, &a, &keys, split, align)?
    } else {
        split_keys_from(g, &a, &keys, split, align)?
    };
    // COPY_STREAM: the own split's keys end at `own_end`; the chunks after the static
    // splits follow from the item's counter, every tile's keys bounded by the range's end
    let stream = streams(opts, fused);
    let (k1, own_end, sv) = if stream {
        let (lo, hi) = item_range(g, &keys, align)?;
        let c0 = g.c32(0);
        let tile_shift = g.c32(KV_TILE.trailing_zeros() as i64);
        let tiles_of = |keys: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let keys = g.iintr2("llvm.smax.i32", keys, c0)?;
            g.lshr(g.add(keys, g.c32(KV_TILE as i64 - 1))?, tile_shift)
        };
        let cbase = g.add(lo, g.mul(a.int(P::Splits)?, a.int(P::Chunk)?)?)?;
        let ck = a.int(P::StealChunk)?;
        let ct = g.lshr(ck, tile_shift)?;
        let rest = g.iintr2("llvm.smax.i32", g.sub(hi, cbase)?, c0)?;
        let nchunks = g.udiv(g.add(rest, g.sub(ck, g.c32(1))?)?, ck)?;
        let n0 = tiles_of(g.sub(k1, k0)?)?;
        // the item (b, kv head, row group): two words of the counter buffer
        let item = g.add(g.mul(g.add(g.mul(b, hkv)?, hk)?, rgs)?, rg)?;
        let sem = g.gep_bytes(a.ptr(P::DecodeSem)?, g.mul(g.zext64(item)?, g.c64(8))?)?;
        let claim = g.b.build_ptr_to_int(sem, g.i64, "")?;
        let st = Stream {
            hi,
            cbase,
            ck,
            ct,
            nchunks,
            n0,
            claim,
            done: g.add(claim, g.c64(4))?,
            slots: ring_end(opts) as i64,
            total: g.var(g.i32, n0)?,
            nq: g.var(g.i32, c0)?,
            pend: g.var(g.i32, c0)?,
            dry: g.var(g.i32, c0)?,
            tok: g.var(g.i32, c0)?,
        };
        (hi, k1, Some(st))
    } else {
        (k1, k1, None)
    };
    let scale = a.get(P::Scale)?.into_float_value();

    let env = decode_env(g, p, &a)?;

    // ---- shared memory: Q, then the ring of (K, V) tiles ----
    let qt = SmemTile {
        offset: 0,
        rows: rpc,
        cols: d,
        // COPY_WGMMA: Q in wgmma's canonical layout too
        slab: wg,
    };
    let kt = SmemTile {
        offset: qt.bytes(),
        rows: KV_TILE,
        cols: d,
        // COPY_TMA: the 128-byte-swizzled 64-column slabs a TMA box fills (COPY_WGMMA:
        // wgmma's canonical layout, the same slabs)
        slab: tma || wg,
    };
    let vt = SmemTile {
        offset: kt.offset + kt.bytes(),
        ..kt
    };
    let stage = stage_bytes(d) as i64;
    // the warp's view: one m-tile (its `mi`, through `Ctx::warp`), `sw` keys of a tile
    let cfg = Cfg {
        ty: opts.input,
        d,
        dv: d,
        qb: rpc,
        kvb: sw,
        threads,
        mt: 1,
        q_in_regs: !wg,
        wg: false,
        lpt_group: 0,
        float_positions: false,
        pos_bias: false,
        diag_cse: false,
        uniform_reads: false,
        q_from_end: false,
        split_tail: false,
        pv_wait_late: false,
        mask_early: false,
        paged_kv: false,
        producers: 1,
        device_lens: None,
        doc_tiles: false,
        softmax_ilp: false,
        q: qt,
        k: kt,
        v: vt,
    };
    let zero = g.c32(0);
    let cx = Ctx {
        warp: mi,
        lane,
        b,
        h: zero,
        q0: zero,
        lq,
        row_end: lq,
        kv_origin: None,
        lkv: k1,
        q_shift: None,
        scale,
        raw: false,
        c2: g.cf(1.0),
    };

    // ---- Q rows of this CTA -> shared memory (one commit group) ----
    let chunks = d / 8;
    let qptr = a.ptr(P::Q)?;
    let hq = a.int(P::Hq)?;
    for k in 0..(rpc * chunks).div_ceil(threads) {
        let idx = g.add(tid, g.c32((k * threads) as i64))?;
        let row = g.udiv(idx, g.c32(chunks as i64))?;
        let ch = g.and(idx, g.c32(chunks as i64 - 1))?;
        let pr = g.add(g.mul(rg, g.c32(rpc as i64))?, row)?;
        let ok = g.icmp(IntPredicate::SLT, pr, nrows)?;
        let prc = g.selecti(ok, pr, zero)?;
        let gi = g.udiv(prc, lq)?;
        let i = g.sub(prc, g.mul(gi, lq)?)?;
        let h = g.add(g.mul(hk, group)?, gi)?;
        let qrow = g.add(g.mul(g.add(g.mul(b, hq)?, h)?, lq)?, i)?;
        let off = g.add(
            g.mul(g.zext64(qrow)?, g.c64(row_bytes))?,
            g.zext64(g.shl(ch, g.c32(4))?)?,
        )?;
        let size = g.selecti(ok, g.c32(16), zero)?;
        g.cp_async16(qt.addr(g, row, ch)?, g.gep_bytes(qptr, off)?, size)?;
    }
    g.cp_async_commit()?;

    // ---- this thread's two accumulator rows ----
    let rows: Vec<RowInfo<'ctx>> = (0..2)
        .map(|hr| {
            let r = g.add(
                g.add(g.mul(mi, g.c32(16))?, g.lshr(lane, g.c32(2))?)?,
                g.c32(8 * hr),
            )?;
            let pr = g.add(g.mul(rg, g.c32(rpc as i64))?, r)?;
            let in_group = g.icmp(IntPredicate::SLT, pr, nrows)?;
            let prc = g.selecti(in_group, pr, zero)?;
            let gi = g.udiv(prc, lq)?;
            let i = g.sub(prc, g.mul(gi, lq)?)?;
            let h = g.add(g.mul(hk, group)?, gi)?;
            let pos = g.add(g.sub(seq_len, lq)?, i)?;
            let live = g.and(in_group, g.icmp(IntPredicate::SGE, pos, zero)?)?;
            Ok(RowInfo { h, pos, live })
        })
        .collect::<R<_>>()?;

    // ---- one K/V tile -> a ring buffer ----
    let kptr = a.ptr(P::K)?;
    let vptr = a.ptr(P::V)?;
    // each thread copies CHUNKS_PER_THREAD 16-byte chunks of a key row (chunks tch, tch +
    // tpr): one address per row and pass (a paged one is a page-table shuffle and a
    // multiply), each copy instruction of a warp covering whole 128-byte pieces of rows
    let cpt = copy_chunks(threads);
    let tpr = chunks / cpt; // threads per row
    let rpp = threads / tpr; // rows per pass of all threads
    let trow = g.udiv(tid, g.c32(tpr as i64))?;
    let tch = g.and(tid, g.c32(tpr as i64 - 1))?;
    let pages = if opts.paged {
        // COPY_IDS_LATE: not with COPY_PAGE_BASE (its bases are computed at the load)
        let late = opts.copy & COPY_IDS_LATE != 0 && !page_base;
        Some(Pages::new(g, &a, b, hk, hkv, d, tch, lane, late)?)
    } else {
        None
    };
    // COPY_PAGE_BASE: lane p holds pass p's page base (i64) of the next tile to issue;
    // this thread's offset from it: its row in the pass and its chunk in its head
    let page_bases = match (&pages, page_base) {
        (Some(pg), true) => Some((
            g.var(g.i64, g.c64(0))?,
            g.zext64(g.add(g.mul(trow, pg.row_bytes)?, pg.head_bytes)?)?,
        )),
        _ => None,
    };
    let tile_key0 = |t: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let own = g.add(k0, g.mul(t, g.c32(KV_TILE as i64))?)?;
        match &sv {
            None => Ok(own),
            // COPY_STREAM: tile n0 + q ct + r is tile r of the q-th chunk taken, whose
            // index is in slot q % STREAM_SLOTS
            Some(st) => {
                let key = g.var(g.i32, own)?;
                g.if_then(g.icmp(IntPredicate::SGE, t, st.n0)?, || {
                    let u = g.sub(t, st.n0)?;
                    let q = g.udiv(u, st.ct)?;
                    let r = g.sub(u, g.mul(q, st.ct)?)?;
                    let c = g.ld_shared_u32(st.slot(g, q)?)?;
                    let k = g.add(
                        st.cbase,
                        g.add(g.mul(c, st.ck)?, g.mul(r, g.c32(KV_TILE as i64))?)?,
                    )?;
                    g.set(&key, k)
                })?;
                g.geti(&key)
            }
        }
    };
    let unchecked_full = opts.copy & COPY_FULL != 0;
    let smem32 = opts.copy & COPY_SMEM32 != 0;
    // COPY_L2_256: the K/V copies' prefetch-size qualifier
    let l2q = if opts.copy & COPY_L2_256 != 0 {
        ".L2::256B"
    } else {
        ""
    };
    // COPY_SMEM32: this thread's destination of pass 0, chunk tch of K, as a 32-bit
    // shared-window address without the buffer (the buffer's offset is added per tile);
    // every other copy of the tile is that address plus a constant of the instruction
    // (None where the swizzle makes them differ between threads, D64: each copy then
    // adds its own loop-invariant offset to the tile's buffer, V a constant from K)
    let dst_deltas = if smem32 {
        copy_deltas(&kt, &vt, rpp, tpr, cpt)
    } else {
        None
    };
    let dst0 = if dst_deltas.is_some() {
        Some(g.smem_addr32(kt.off_at(g, trow, tch, zero)?)?)
    } else {
        None
    };
    let base_thread = page_bases.as_ref().map(|x| x.1);
    // one tile's copies; `checked`: rows at or past the split's end `k1` are zero-filled
    // and read nothing (without: a full tile, every row below k1)
    let copy_tile = |key0: IntValue<'ctx>,
                     extra: IntValue<'ctx>,
                     ids: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
                     checked: bool|
     -> R<()> {
        let dst = match dst0 {
            Some(d0) => Some(g.add(d0, extra)?),
            None => None,
        };
        // COPY_PAGE_PASS: the bytes of the tile's first position within its page
        let tile_slot = match (&pages, page_pass && !page_base) {
            (Some(pg), true) => Some(g.mul(g.and(key0, pg.in_page)?, pg.row_bytes)?),
            _ => None,
        };
        for pass in 0..KV_TILE / rpp {
            let row = g.add(trow, g.c32((pass * rpp) as i64))?;
            let j = g.add(key0, row)?;
            let valid = if checked {
                Some(g.icmp(IntPredicate::SLT, j, k1)?)
            } else {
                None
            };
            let byte = match (&pages, ids, tile_slot, base_thread) {
                (Some(pg), Some((bases, _)), _, Some(thread)) => {
                    // every row's address is inside an existing page whether or not
                    // the row is valid (see `Pages::fetch_bases`)
                    pg.byte_base(g, bases, pass, thread)?
                }
                (Some(pg), Some((ids, _)), Some(ts), _) => {
                    // every row's address is inside an existing page whether or not
                    // the row is valid (see `Pages::byte_pass`)
                    pg.byte_pass(g, ids, ts, row)?
                }
                (Some(pg), Some((ids, p0)), _, _) => {
                    // keys past the split read the tile's first key's page (no bytes)
                    let jj = match valid {
                        Some(v) => g.selecti(v, j, key0)?,
                        None => j,
                    };
                    pg.byte(g, ids, p0, jj)?
                }
                _ => {
                    let jc = match valid {
                        Some(v) => g.selecti(v, j, k0)?,
                        None => j,
                    };
                    let at = g.add(
                        cache_row_elem(g, &a, opts, b, hk, hkv, jc)?,
                        g.zext64(g.mul(tch, g.c32(8))?)?,
                    )?;
                    g.mul(at, g.c64(2))?
                }
            };
            let size = match valid {
                Some(v) => Some(g.selecti(v, g.c32(16), zero)?),
                None => None,
            };
            for c in 0..cpt {
                let (ch, at) = if c == 0 {
                    (tch, byte)
                } else {
                    (
                        g.add(tch, g.c32((c * tpr) as i64))?,
                        g.add(byte, g.c64((c * tpr * 16) as i64))?,
                    )
                };
                match (dst, &dst_deltas) {
                    (Some(dst), Some(deltas)) => {
                        let (dk, dv) = deltas[(pass * cpt + c) as usize];
                        g.cp_async16_smem32_with(dst, dk, g.gep_bytes(kptr, at)?, size, l2q)?;
                        g.cp_async16_smem32_with(dst, dv, g.gep_bytes(vptr, at)?, size, l2q)?;
                    }
                    _ if smem32 || !l2q.is_empty() => {
                        let dst = g.smem_addr32(kt.off_at(g, row, ch, extra)?)?;
                        let dv = vt.offset - kt.offset;
                        g.cp_async16_smem32_with(dst, 0, g.gep_bytes(kptr, at)?, size, l2q)?;
                        g.cp_async16_smem32_with(dst, dv, g.gep_bytes(vptr, at)?, size, l2q)?;
                    }
                    _ => {
                        let size = size.unwrap_or(g.c32(16));
                        g.cp_async16(kt.addr_at(g, row, ch, extra)?, g.gep_bytes(kptr, at)?, size)?;
                        g.cp_async16(vt.addr_at(g, row, ch, extra)?, g.gep_bytes(vptr, at)?, size)?;
                    }
                }
            }
        }
        Ok(())
    };
    // COPY_TMA: stage s's mbarrier (a shared-window address)
    let bars0 = ring_end(opts) as i64;
    let bar = |buf: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.smem_addr32(g.add(g.mul(buf, g.c32(8))?, g.c32(bars0))?)
    };
    let full_tile = |key0: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.icmp(IntPredicate::SLE, g.add(key0, g.c32(KV_TILE as i64))?, k1)
    };
    // COPY_TMA: a full tile's boxes, one per lane of warp 0: lane l copies tensor l % 2
    // (K, V), slab (l / 2) % slabs, box l / (2 slabs) of the tile's 64 / R boxes of R =
    // min(P, 64) rows (each in one page: the tile starts on a multiple of 64, see
    // `Pages::byte_pass`), from row `id P + slot` of the cache's `{D, Hkv, pages P}`
    let slabs = d / 64;
    let tma_tile = |key0: IntValue<'ctx>, buf: IntValue<'ctx>, ids: IntValue<'ctx>| -> R<()> {
        let pg = pages
            .as_ref()
            .ok_or(super::LlvmError::Internal("COPY_TMA without pages"))?;
        let bar = bar(buf)?;
        // R = min(P, 64) rows per box: log2 R = min(shift, 6)
        let lr = g.iintr2("llvm.umin.i32", pg.shift, g.c32(6))?;
        let which = g.and(lane, g.c32(1))?;
        let slab = g.and(g.lshr(lane, g.c32(1))?, g.c32(slabs as i64 - 1))?;
        let bx = g.lshr(lane, g.c32(1 + slabs.trailing_zeros() as i64))?;
        let off = g.shl(bx, lr)?; // the box's first row in the tile
        let id = g.shfl_idx_i32(ids, g.and(g.lshr(off, pg.shift)?, g.c32(31))?)?;
        let slot = g.and(g.add(key0, off)?, pg.in_page)?;
        let row = g.add(g.shl(id, pg.shift)?, slot)?;
        let nbox = g.lshr(g.c32(KV_TILE as i64), lr)?;
        let active = g.icmp(
            IntPredicate::ULT,
            lane,
            g.mul(nbox, g.c32(2 * slabs as i64))?,
        )?;
        g.if_then(g.icmp(IntPredicate::EQ, lane, zero)?, || {
            g.mbar_arrive_expect_tx(bar, 2 * KV_TILE * d * 2)
        })?;
        g.if_then(active, || {
            let stage_off = g.add(g.mul(buf, g.c32(stage))?, g.c32(kt.offset as i64))?;
            // the box lands at row `off` of its slab: slab x 64 rows x 128 + off x 128
            let dst = g.add(
                stage_off,
                g.add(
                    g.mul(which, g.c32((vt.offset - kt.offset) as i64))?,
                    g.add(
                        g.mul(slab, g.c32((KV_TILE * 128) as i64))?,
                        g.mul(off, g.c32(128))?,
                    )?,
                )?,
            )?;
            let dst = g.smem_addr32(dst)?;
            let col = g.mul(slab, g.c32(64))?;
            let (mk, mv) = (a.ptr(P::TmaK)?, a.ptr(P::TmaV)?);
            let is_v = g.icmp(IntPredicate::NE, which, zero)?;
            let map = g.b.build_select(is_v, mv, mk, "")?.into_pointer_value();
            g.tma_load_3d(dst, map, [col, hk, row], bar)
        })
    };
    let issue = |t: IntValue<'ctx>, buf: IntValue<'ctx>| -> R<()> {
        let key0 = tile_key0(t)?;
        let extra = g.mul(buf, g.c32(stage))?;
        let ids = match (&pages, &page_bases) {
            (Some(_), Some((bases, _))) => Some((g.geti(bases)?, zero)),
            (Some(pg), None) => Some((pg.ids(g)?, pg.first(g, key0)?)),
            _ => None,
        };
        if tma {
            // COPY_TMA: a full tile by warp 0's boxes, a partial one (the split's last)
            // by every thread's checked copy
            let ids0 = ids.map(|x| x.0).unwrap_or(zero);
            let (fb, pb, cont) = (g.block("tma"), g.block("part"), g.block("copied"));
            g.cond_br(full_tile(key0)?, fb, pb)?;
            g.b.position_at_end(fb);
            g.if_then(g.icmp(IntPredicate::EQ, warp, zero)?, || {
                tma_tile(key0, buf, ids0)
            })?;
            g.br(cont)?;
            g.b.position_at_end(pb);
            copy_tile(key0, extra, ids, true)?;
            g.br(cont)?;
            g.b.position_at_end(cont);
            return Ok(());
        }
        if unchecked_full {
            // COPY_FULL: a tile whose 64 keys are all below k1 takes the copy without
            // per-row checks
            let full = g.icmp(IntPredicate::SLE, g.add(key0, g.c32(KV_TILE as i64))?, k1)?;
            let (fb, pb, cont) = (g.block("full"), g.block("part"), g.block("copied"));
            g.cond_br(full, fb, pb)?;
            g.b.position_at_end(fb);
            copy_tile(key0, extra, ids, false)?;
            g.br(cont)?;
            g.b.position_at_end(pb);
            copy_tile(key0, extra, ids, true)?;
            g.br(cont)?;
            g.b.position_at_end(cont);
            Ok(())
        } else {
            copy_tile(key0, extra, ids, true)
        }
    };

    // ---- prologue: stages - 1 tiles in flight, then Q's fragments ----
    let span = g.iintr2("llvm.smax.i32", g.sub(own_end, k0)?, zero)?;
    let ntiles = g.lshr(
        g.add(span, g.c32(KV_TILE as i64 - 1))?,
        g.c32(KV_TILE.trailing_zeros() as i64),
    )?;
    // the page ids of tile `t`, when it exists (the table is read for existing tiles only)
    // the tiles known now (COPY_STREAM: grows as chunks are taken)
    let known = || -> R<IntValue<'ctx>> {
        match &sv {
            Some(st) => g.geti(&st.total),
            None => Ok(ntiles),
        }
    };
    let fetch = |t: IntValue<'ctx>| -> R<()> {
        match &pages {
            Some(pg) => g.if_then(
                g.icmp(IntPredicate::SLT, t, known()?)?,
                || match &page_bases {
                    Some((bases, _)) => pg.fetch_bases(g, bases, tile_key0(t)?, rpp),
                    None => pg.fetch(g, tile_key0(t)?),
                },
            ),
            None => Ok(()),
        }
    };
    if tma {
        // COPY_TMA: one mbarrier per stage (one arrival: warp 0's lane 0 with the bytes),
        // visible to the async proxy and every thread before the first copy and wait
        g.if_then(g.icmp(IntPredicate::EQ, tid, zero)?, || {
            for s in 0..nstages {
                g.mbar_init(bar(g.c32(s as i64))?, 1)?;
            }
            g.fence_mbar_init()
        })?;
        g.barrier()?;
    }
    fetch(zero)?;
    for s in 0..nstages - 1 {
        let sv = g.c32(s as i64);
        g.if_then(g.icmp(IntPredicate::SLT, sv, ntiles)?, || issue(sv, sv))?;
        g.cp_async_commit()?;
        fetch(g.c32(s as i64 + 1))?;
    }
    if early {
        // nothing written yet: the previous grid's completion is awaited only now
        g.griddep_wait()?;
        if trace {
            t_wait = Some(g.globaltimer_lo()?);
        }
    }
    g.cp_async_wait(nstages as i64 - 1)?;
    if wg {
        // COPY_WGMMA: this thread's Q copies visible to wgmma's reads after the barrier
        g.fence_proxy_async()?;
    }
    g.barrier()?;
    let t_first = if trace {
        Some(g.globaltimer_lo()?)
    } else {
        None
    };
    // (COPY_WGMMA: Q is read from shared memory by each S = Q Kᵀ)
    let qfrag = if wg {
        None
    } else {
        Some(load_q_fragments(g, &cfg, &cx)?)
    };

    let m = RowState::new(g, 1, f32::NEG_INFINITY)?;
    let l = RowState::new(g, 1, 0.0)?;
    let o = AccTile::new(g, 1, (d / 8) as usize, 0.0)?;
    let cur = g.var(g.i32, zero)?;
    let next = g.var(g.i32, g.c32(nstages as i64 - 1))?;
    let wrap = |x: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let x1 = g.add(x, g.c32(1))?;
        g.selecti(
            g.icmp(IntPredicate::EQ, x1, g.c32(nstages as i64))?,
            zero,
            x1,
        )
    };
    // COPY_FULL_TILE: whether tile `key0..key0 + 64` is kept on every element of the CTA
    // (see the bit); hoisted here: the rows' part and the constraints' q and param parts
    let full_form = if opts.copy & COPY_FULL_TILE != 0 {
        full_tile_form(p)
    } else {
        None
    };
    let kept_tile = match full_form {
        Some(cons) => {
            let all_live = g.and(
                g.icmp(
                    IntPredicate::SLE,
                    g.add(g.mul(rg, g.c32(rpc as i64))?, g.c32(rpc as i64))?,
                    nrows,
                )?,
                g.icmp(IntPredicate::SGE, g.sub(seq_len, lq)?, zero)?,
            )?;
            let qmin = g.sext64(g.sub(seq_len, lq)?)?;
            let qmax = g.sext64(g.sub(seq_len, g.c32(1))?)?;
            // per constraint `a_q q + a_kv kv + sum c_p param_p + k >= 0`: its smallest
            // value over the rows and params (i64), and a_kv
            let mut parts = Vec::new();
            for e in &cons {
                let qsel = if e.q >= 0 { qmin } else { qmax };
                let mut base = g.add(g.mul(qsel, g.c64(e.q))?, g.c64(e.k))?;
                for &(pi, coef) in &e.params {
                    let pv = env.params[pi as usize];
                    if !pv.is_int_value() {
                        return Err(LlvmError::Internal("full-tile form with a non-i32 param"));
                    }
                    base = g.add(base, g.mul(g.sext64(pv.into_int_value())?, g.c64(coef))?)?;
                }
                parts.push((base, e.kv));
            }
            Some(move |key0: IntValue<'ctx>| -> R<IntValue<'ctx>> {
                let end = g.add(key0, g.c32(KV_TILE as i64))?;
                let mut ok = g.and(all_live, g.icmp(IntPredicate::SLE, end, k1)?)?;
                for &(base, akv) in &parts {
                    // the tile's keys key0 ..= key0 + 63: the smallest a_kv kv
                    let kv = if akv >= 0 {
                        key0
                    } else {
                        g.sub(end, g.c32(1))?
                    };
                    let v = g.add(base, g.mul(g.sext64(kv)?, g.c64(akv))?)?;
                    ok = g.and(ok, g.icmp(IntPredicate::SGE, v, g.c64(0))?)?;
                }
                Ok(ok)
            })
        }
        None => None,
    };
    // a warp's key slice: `sw` rows into the tile (into each slab with COPY_TMA)
    // (COPY_WGMMA_WG2: a warpgroup's key half, 32 rows into each 64-column slab)
    let slice_row_bytes = if tma || wg2 { 128 } else { row_bytes };
    let slice_bytes = g.mul(si, g.c32(sw as i64 * slice_row_bytes))?;
    // COPY_WGMMA_DEFER: P V's wait deferred into the next tile (see the bit)
    let defer = wg && opts.copy & COPY_WGMMA_DEFER != 0 && !tma && sv.is_none() && !wg2;
    // the copy of tile it + stages - 1 into the buffer tile it - 1 used (every warp is
    // done with it), then the page ids of the tile after it
    let refill = |it: IntValue<'ctx>| -> R<()> {
        let nt = g.add(it, g.c32(nstages as i64 - 1))?;
        let nbuf = g.geti(&next)?;
        g.if_then(g.icmp(IntPredicate::SLT, nt, known()?)?, || issue(nt, nbuf))?;
        g.cp_async_commit()?;
        // the next tile's page ids load while this tile is computed
        fetch(g.add(nt, g.c32(1))?)?;
        g.set(&next, wrap(nbuf)?)
    };
    let compute = |it: IntValue<'ctx>, buf: IntValue<'ctx>| -> R<()> {
        if tma {
            // COPY_TMA: a full tile's boxes have landed (phase it / stages of its
            // buffer's barrier: only a split's last tile is copied otherwise)
            let key0 = tile_key0(it)?;
            g.if_then(full_tile(key0)?, || {
                let ph = g.and(g.udiv(it, g.c32(nstages as i64))?, g.c32(1))?;
                g.mbar_wait(bar(buf)?, ph)
            })?;
        }
        let at = g.add(g.mul(buf, g.c32(stage))?, slice_bytes)?;
        let s = match &qfrag {
            Some(qf) => qk(g, &cfg, &cx, Some(qf), at)?,
            // COPY_WGMMA_DEFER: the previous tile's P V waited for, S issued, every warp
            // past that wait, the refill under S, then S
            None if defer => {
                let ov = g.wgmma_wait_note(0, &o.flat(g)?, "P V of the tile before")?;
                o.store_flat(g, &ov)?;
                let acc = qk_wgmma_issue(g, &cfg, &cx, at, None)?;
                g.barrier()?;
                refill(it)?;
                split4(&g.wgmma_wait(0, &acc)?)
            }
            // COPY_WGMMA: 64 rows x 64 keys (`kvb` = 64: one key slice), waited for here
            None => qk_wgmma(g, &cfg, &cx, at)?,
        };
        let key0 = match &sv {
            Some(_) => g.add(tile_key0(it)?, g.mul(si, g.c32(sw as i64))?)?,
            None => g.add(
                g.add(k0, g.mul(it, g.c32(KV_TILE as i64))?)?,
                g.mul(si, g.c32(sw as i64))?,
            )?,
        };
        let t = AccTile::new(g, 1, s[0].len(), 0.0)?;
        match &kept_tile {
            // COPY_FULL_TILE: a tile where every test holds takes the logits without them
            Some(full) => {
                let (fb, pb, cont) = (
                    g.block("full_tile"),
                    g.block("part_tile"),
                    g.block("logits"),
                );
                g.cond_br(full(tile_key0(it)?)?, fb, pb)?;
                g.b.position_at_end(fb);
                logits(g, p, &env, &s, &rows, b, key0, None, lane, scale, &t)?;
                g.br(cont)?;
                g.b.position_at_end(pb);
                logits(g, p, &env, &s, &rows, b, key0, Some(k1), lane, scale, &t)?;
                g.br(cont)?;
                g.b.position_at_end(cont);
            }
            None => logits(g, p, &env, &s, &rows, b, key0, Some(k1), lane, scale, &t)?,
        }
        let (pf, _) = online_softmax(g, &cfg, &cx, &t, &m, &l, &o, None, &mut || Ok(()))?;
        if wg {
            // COPY_WGMMA: O += P V from the warps' P fragments, waited for before the
            // next tile's rescale and before the barrier that frees this buffer
            let acc = pv_wgmma_issue(g, &cfg, &pf[0], &o.flat(g)?, at)?;
            if defer {
                // COPY_WGMMA_DEFER: left in flight (waited for by the next tile's
                // S, or after the loop)
                return o.store_flat(g, &acc);
            }
            return o.store_flat(g, &g.wgmma_wait(0, &acc)?);
        }
        pv_at(g, &cfg, &cx, &pf, &o, at)
    };
    let body = |it: IntValue<'ctx>| -> R<()> {
        // tile `it` has landed (its group and every older one); every warp is done
        // with tile it - 1, whose buffer the next copy refills
        g.cp_async_wait(nstages as i64 - 2)?;
        if wg {
            // COPY_WGMMA: this thread's copies of the tile visible to wgmma's reads
            g.fence_proxy_async()?;
        }
        g.barrier()?;
        if let Some(st) = &sv {
            // COPY_STREAM: the count thread 0 stored before the barrier (a chunk, or
            // none left), then thread 0 takes the next chunk when few tiles are left
            st.land(g)?;
            st.take(g, tid, it)?;
        }
        if !defer {
            refill(it)?;
        }

        let buf = g.geti(&cur)?;
        match &sv {
            // COPY_STREAM: an iteration past the known tiles only waits for a count
            Some(st) => g.if_then(g.icmp(IntPredicate::SLT, it, g.geti(&st.total)?)?, || {
                compute(it, buf)
            })?,
            None => compute(it, buf)?,
        }
        g.set(&cur, wrap(buf)?)
    };
    match &sv {
        Some(st) => {
            // COPY_STREAM: while tiles are known or a count is on its way
            let iv = g.var(g.i32, zero)?;
            let (head, bb, exit) = (
                g.block("stream_head"),
                g.block("stream"),
                g.block("streamed"),
            );
            g.br(head)?;
            g.b.position_at_end(head);
            let it = g.geti(&iv)?;
            let go = g.or(
                g.icmp(IntPredicate::SLT, it, g.geti(&st.total)?)?,
                g.icmp(IntPredicate::NE, g.geti(&st.pend)?, zero)?,
            )?;
            g.cond_br(go, bb, exit)?;
            g.b.position_at_end(bb);
            st.publish(g, tid)?;
            body(it)?;
            g.set(&iv, g.add(it, g.c32(1))?)?;
            g.br(head)?;
            g.b.position_at_end(exit);
        }
        None => g.for_range(zero, ntiles, g.c32(1), body)?,
    }
    if defer {
        // COPY_WGMMA_DEFER: the last tile's P V
        let ov = g.wgmma_wait_note(0, &o.flat(g)?, "the last P V")?;
        o.store_flat(g, &ov)?;
    }
    g.cp_async_wait(0)?;
    g.barrier()?;
    // COPY_STREAM: this CTA is done taking; it counts itself (the add's latency under the
    // merge and the stores below)
    let done = match &sv {
        Some(st) => Some(g.atom_inc_relaxed_if_zero(tid, st.done)?),
        None => None,
    };
    // COPY_STEAL: thread 0 takes the next item now (the add's latency under the merge
    // and the stores below; the value is used at the end)
    let counter = if steal {
        Some(g.b.build_ptr_to_int(a.ptr(P::DecodeSem)?, g.i64, "")?)
    } else {
        None
    };
    let taken = match counter {
        Some(ctr) => Some(g.atom_inc_relaxed_if_zero(tid, ctr)?),
        None => None,
    };
    let t_loop = if trace {
        Some(g.globaltimer_lo()?)
    } else {
        None
    };

    // ---- the warps of an m-tile merge through shared memory ----
    // per warp: O [16][d] f32, then m [16], l [16] (after every warp's O)
    let mbase = kt.offset as i64;
    let o_at = |w: IntValue<'ctx>, r: IntValue<'ctx>, c: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let idx = g.add(g.mul(g.add(g.mul(w, g.c32(16))?, r)?, g.c32(d as i64))?, c)?;
        g.add(g.mul(idx, g.c32(4))?, g.c32(mbase))
    };
    let ml_at = |which: i64, w: IntValue<'ctx>, r: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let idx = g.add(g.mul(w, g.c32(16))?, r)?;
        let base = mbase + (warps * 16 * d) as i64 * 4 + which * (warps * 16) as i64 * 4;
        g.add(g.mul(idx, g.c32(4))?, g.c32(base))
    };
    let quad = g.and(lane, g.c32(3))?;
    let ov = o.values(g)?;
    for hr in 0..2i64 {
        let r = g.add(g.lshr(lane, g.c32(2))?, g.c32(8 * hr))?;
        let mut lt = g.getf(&l.rows[0][hr as usize])?;
        lt = g.fadd(lt, g.shfl_xor(lt, 1)?)?;
        lt = g.fadd(lt, g.shfl_xor(lt, 2)?)?;
        let mv = g.getf(&m.rows[0][hr as usize])?;
        g.if_then(g.icmp(IntPredicate::EQ, quad, zero)?, || {
            g.store(g.smem_at(ml_at(0, warp, r)?)?, mv)?;
            g.store(g.smem_at(ml_at(1, warp, r)?)?, lt)
        })?;
        for (nt, acc) in ov[0].iter().enumerate() {
            for e in 0..2 {
                let c = g.add(g.mul(quad, g.c32(2))?, g.c32(nt as i64 * 8 + e))?;
                g.store(
                    g.smem_at(o_at(warp, r, c)?)?,
                    acc[2 * hr as usize + e as usize],
                )?;
            }
        }
    }
    g.barrier()?;

    // thread t: row t / tpr of the CTA, columns t % tpr + k tpr
    let tpr = threads / rpc;
    let r = g.udiv(tid, g.c32(tpr as i64))?;
    let c0 = g.and(tid, g.c32(tpr as i64 - 1))?;
    let rmi = g.lshr(r, g.c32(4))?;
    let rr = g.and(r, g.c32(15))?;
    let fload = |off: IntValue<'ctx>| -> R<FloatValue<'ctx>> {
        Ok(g.b
            .build_load(g.f32, g.smem_at(off)?, "")?
            .into_float_value())
    };
    let owners: Vec<IntValue<'ctx>> = (0..slices)
        .map(|k| g.add(rmi, g.c32((k * m_cta) as i64)))
        .collect::<R<_>>()?;
    let ms: Vec<FloatValue<'ctx>> = owners
        .iter()
        .map(|w| fload(ml_at(0, *w, rr)?))
        .collect::<R<_>>()?;
    let ls: Vec<FloatValue<'ctx>> = owners
        .iter()
        .map(|w| fload(ml_at(1, *w, rr)?))
        .collect::<R<_>>()?;
    let mut mx = ms[0];
    for x in &ms[1..] {
        mx = g.fmax(mx, *x)?;
    }
    let none = g.fcmp(FloatPredicate::OEQ, mx, g.cf(f32::NEG_INFINITY))?;
    let mref = g.selectf(none, g.cf(0.0), mx)?;
    let f: Vec<FloatValue<'ctx>> = ms
        .iter()
        .map(|x| g.ex2(g.fsub(*x, mref)?))
        .collect::<R<_>>()?;
    let mut lsum = g.fmul(ls[0], f[0])?;
    for (x, fx) in ls.iter().zip(&f).skip(1) {
        lsum = g.fadd(lsum, g.fmul(*x, *fx)?)?;
    }
    let empty = g.fcmp(FloatPredicate::OEQ, lsum, g.cf(0.0))?;
    let inv = g.selectf(empty, g.cf(0.0), g.rcp(lsum)?)?;
    let lse = g.fmul(g.fadd(mref, g.lg2(lsum)?)?, g.cf(LN2))?;
    let lse = g.selectf(empty, g.cf(f32::NEG_INFINITY), lse)?;
    if direct {
        // COPY_DIRECT: row r of the CTA is the group's packed row rg RPC + r (query head
        // hk G + gi, new row i); rows past the group's end write nothing
        let pr = g.add(g.mul(rg, g.c32(rpc as i64))?, r)?;
        let half = match opts.input {
            InputType::Bf16 => g.ctx.bf16_type(),
            InputType::F16 => g.ctx.f16_type(),
        };
        g.if_then(g.icmp(IntPredicate::SLT, pr, nrows)?, || {
            let gi = g.udiv(pr, lq)?;
            let i = g.sub(pr, g.mul(gi, lq)?)?;
            let h = g.add(g.mul(hk, group)?, gi)?;
            let out_row = g.zext64(g.add(g.mul(g.add(g.mul(b, hq)?, h)?, lq)?, i)?)?;
            g.if_then(g.icmp(IntPredicate::EQ, c0, zero)?, || {
                g.store(g.gep_bytes(a.ptr(P::Lse)?, g.mul(out_row, g.c64(4))?)?, lse)
            })?;
            let optr = a.ptr(P::O)?;
            for k in 0..d / tpr {
                let c = g.add(c0, g.c32((k * tpr) as i64))?;
                let mut acc = g.cf(0.0);
                for (w, fx) in owners.iter().zip(&f) {
                    acc = g.fadd(acc, g.fmul(fload(o_at(*w, rr, c)?)?, *fx)?)?;
                }
                let hv = g.b.build_float_trunc(g.fmul(acc, inv)?, half, "")?;
                let at = g.add(g.mul(out_row, g.c64(d as i64))?, g.zext64(c)?)?;
                g.store(g.gep_bytes(optr, g.mul(at, g.c64(2))?)?, hv)?;
            }
            Ok(())
        })?;
        g.b.build_return(None)?;
        g.close_allocas(start)?;
        return Ok(g.module.clone());
    }
    let splits = a.int(P::Splits)?;
    // partial index: ((b * Hkv + hk) * rgs + rg) * splits + split, row r
    let pidx = g.add(
        g.mul(g.add(g.mul(g.add(g.mul(b, hkv)?, hk)?, rgs)?, rg)?, splits)?,
        split,
    )?;
    let prow = g.add(g.mul(g.zext64(pidx)?, g.c64(rpc as i64))?, g.zext64(r)?)?;
    g.if_then(g.icmp(IntPredicate::EQ, c0, zero)?, || {
        g.store(
            g.gep_bytes(a.ptr(P::PartLse)?, g.mul(prow, g.c64(4))?)?,
            lse,
        )
    })?;
    let po = a.ptr(P::PartO)?;
    for k in 0..d / tpr {
        let c = g.add(c0, g.c32((k * tpr) as i64))?;
        let mut acc = g.cf(0.0);
        for (w, fx) in owners.iter().zip(&f) {
            acc = g.fadd(acc, g.fmul(fload(o_at(*w, rr, c)?)?, *fx)?)?;
        }
        let at = g.add(g.mul(prow, g.c64(d as i64))?, g.zext64(c)?)?;
        g.store(g.gep_bytes(po, g.mul(at, g.c64(4))?)?, g.fmul(acc, inv)?)?;
    }
    if let (Some((sm, t0)), Some(t1), Some(t2), Some(t3)) = (t_start, t_wait, t_first, t_loop) {
        // COPY_TRACE: after every thread's stores of the partial (the barrier orders the
        // last row's stores before thread 0's), thread 0 writes the record into that
        // row when it is padding (the CTA's last packed row at or past G x Lq)
        g.barrier()?;
        let t4 = g.globaltimer_lo()?;
        let last = g.add(g.mul(rg, g.c32(rpc as i64))?, g.c32(rpc as i64 - 1))?;
        let pad = g.icmp(IntPredicate::SGE, last, nrows)?;
        let first = g.icmp(IntPredicate::EQ, tid, zero)?;
        g.if_then(g.and(pad, first)?, || {
            let row = g.add(
                g.mul(g.zext64(pidx)?, g.c64(rpc as i64))?,
                g.c64(rpc as i64 - 1),
            )?;
            for (i, w) in [sm, t0, t1, t2, t3, t4].into_iter().enumerate() {
                let at = g.add(g.mul(row, g.c64(d as i64))?, g.c64(i as i64))?;
                g.store(g.gep_bytes(po, g.mul(at, g.c64(4))?)?, w)?;
            }
            Ok(())
        })?;
    }
    if let (Some(st), Some(done)) = (&sv, done) {
        // COPY_STREAM: the item's last CTA to count (every other one has stopped taking)
        // zeroes both words for the next launch
        let last = g.sub(a.int(P::Splits)?, g.c32(1))?;
        let first = g.icmp(IntPredicate::EQ, tid, zero)?;
        g.if_then(g.and(first, g.icmp(IntPredicate::EQ, done, last)?)?, || {
            g.st_global_u32(st.claim, zero)?;
            g.st_global_u32(st.done, zero)
        })?;
    }
    if let (Some(((vs, vy, vb), head)), Some(taken), Some(ctr)) = (&item, &taken, counter) {
        // COPY_STEAL: thread 0 publishes the item it took (and, when its add was the
        // launch's last, zeroes the counter); every thread then runs that item or ends.
        // The barrier also orders every read of the merge area before the next item's
        // copies into it.
        let (sg, ny, nz) = (g.nctaid('x')?, g.nctaid('y')?, g.nctaid('z')?);
        let yz = g.mul(ny, nz)?;
        let slot = g.smem_addr32(g.c32(ring_end(opts) as i64))?;
        g.if_then(g.icmp(IntPredicate::EQ, tid, zero)?, || {
            let v = *taken;
            g.st_shared_u32(slot, v)?;
            let last = g.sub(g.mul(splits, yz)?, g.c32(1))?;
            g.if_then(g.icmp(IntPredicate::EQ, v, last)?, || {
                g.st_global_u32(ctr, zero)
            })
        })?;
        g.barrier()?;
        let v = g.ld_shared_u32(slot)?;
        let stolen = g.mul(g.sub(splits, sg)?, yz)?;
        let (more, done) = (g.block("steal"), g.block("stolen_all"));
        g.cond_br(g.icmp(IntPredicate::ULT, v, stolen)?, more, done)?;
        g.b.position_at_end(more);
        let r = g.urem(v, yz)?;
        g.set(vs, g.add(sg, g.udiv(v, yz)?)?)?;
        g.set(vy, g.urem(r, ny)?)?;
        g.set(vb, g.udiv(r, ny)?)?;
        g.br(*head)?;
        g.b.position_at_end(done);
    }
    if fused {
        let place = Group {
            b,
            hk,
            rg,
            hq,
            lq,
            group,
            nrows,
            splits,
            rgs,
            hkv,
        };
        fused_combine(g, &a, opts, tid, warp, lane, &place, mbase)?;
    }
    g.b.build_return(None)?;
    g.close_allocas(start)?;
    Ok(g.module.clone())
}

/// [`COPY_STEAL`]'s keys `[k0, k1)` of split `split` of a sequence (`keys`): the range's first
/// key `lo` (rounded down to a multiple of `align`, as `split_keys_from`), then the
/// `nctaid.x` static splits of `Chunk` keys, then the stolen splits of `StealChunk` keys;
/// `k1` at most the range's end.
fn steal_keys<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    keys: &SeqKeys<'ctx>,
    split: IntValue<'ctx>,
    align: u32,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    use DecodeParam as P;
    let (lo, hi) = item_range(g, keys, align)?;
    let (chunk, small) = (a.int(P::Chunk)?, a.int(P::StealChunk)?);
    let sg = g.nctaid('x')?;
    let big = g.iintr2("llvm.umin.i32", split, sg)?;
    let k0 = g.add(
        lo,
        g.add(g.mul(big, chunk)?, g.mul(g.sub(split, big)?, small)?)?,
    )?;
    let len = g.selecti(g.icmp(IntPredicate::ULT, split, sg)?, chunk, small)?;
    let k1 = g.iintr2("llvm.smin.i32", g.add(k0, len)?, hi)?;
    Ok((k0, k1))
}

/// [`COPY_STREAM`]'s state of a CTA (uniform over its threads but `tok`): the item's
/// range end `hi`, its chunks from key `cbase` of `ck` keys (`ct` tiles) each, `nchunks` of
/// them, the own split's `n0` tiles, the counter words' addresses (`claim`, `done`), the
/// shared slots' offset; the tiles known (`total`), the chunks taken (`nq`), whether a count
/// is on its way (`pend`), whether the chunks are gone (`dry`), thread 0's count (`tok`).
struct Stream<'ctx> {
    hi: IntValue<'ctx>,
    cbase: IntValue<'ctx>,
    ck: IntValue<'ctx>,
    ct: IntValue<'ctx>,
    nchunks: IntValue<'ctx>,
    n0: IntValue<'ctx>,
    claim: IntValue<'ctx>,
    done: IntValue<'ctx>,
    slots: i64,
    total: Var<'ctx>,
    nq: Var<'ctx>,
    pend: Var<'ctx>,
    dry: Var<'ctx>,
    tok: Var<'ctx>,
}

impl<'ctx> Stream<'ctx> {
    /// The shared-window address of the slot of the `q`-th chunk taken.
    fn slot(&self, g: &Gpu<'ctx>, q: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let i = g.and(q, g.c32(STREAM_SLOTS as i64 - 1))?;
        g.smem_addr32(g.add(g.c32(self.slots), g.shl(i, g.c32(2))?)?)
    }

    /// Before the iteration's barrier: thread 0 stores its pending count into the next
    /// chunk's slot.
    fn publish(&self, g: &Gpu<'ctx>, tid: IntValue<'ctx>) -> R<()> {
        let zero = g.c32(0);
        let go = g.and(
            g.icmp(IntPredicate::NE, g.geti(&self.pend)?, zero)?,
            g.icmp(IntPredicate::EQ, tid, zero)?,
        )?;
        g.if_then(go, || {
            g.st_shared_u32(self.slot(g, g.geti(&self.nq)?)?, g.geti(&self.tok)?)
        })
    }

    /// After the barrier: the pending count lands — a chunk (its tiles extend the known
    /// ones) or none left.
    fn land(&self, g: &Gpu<'ctx>) -> R<()> {
        let zero = g.c32(0);
        g.if_then(g.icmp(IntPredicate::NE, g.geti(&self.pend)?, zero)?, || {
            let nq = g.geti(&self.nq)?;
            let c = g.ld_shared_u32(self.slot(g, nq)?)?;
            let ok = g.icmp(IntPredicate::ULT, c, self.nchunks)?;
            let start = g.add(self.cbase, g.mul(c, self.ck)?)?;
            let keys = g.iintr2("llvm.smin.i32", g.sub(self.hi, start)?, self.ck)?;
            let keys = g.selecti(ok, keys, zero)?;
            let tiles = g.lshr(
                g.add(keys, g.c32(KV_TILE as i64 - 1))?,
                g.c32(KV_TILE.trailing_zeros() as i64),
            )?;
            g.set(&self.total, g.add(g.geti(&self.total)?, tiles)?)?;
            g.set(&self.nq, g.add(nq, g.zext32(ok)?)?)?;
            g.set(&self.dry, g.zext32(g.b.build_not(ok, "")?)?)?;
            g.set(&self.pend, zero)
        })
    }

    /// Thread 0 takes the next chunk (a relaxed add; its count is stored one iteration
    /// later) when at most [`STREAM_AHEAD`] known tiles are left from `it` on.
    fn take(&self, g: &Gpu<'ctx>, tid: IntValue<'ctx>, it: IntValue<'ctx>) -> R<()> {
        let zero = g.c32(0);
        let left = g.sub(g.geti(&self.total)?, it)?;
        let go = g.and(
            g.and(
                g.icmp(IntPredicate::EQ, g.geti(&self.pend)?, zero)?,
                g.icmp(IntPredicate::EQ, g.geti(&self.dry)?, zero)?,
            )?,
            g.icmp(IntPredicate::SLE, left, g.c32(STREAM_AHEAD as i64))?,
        )?;
        g.if_then(go, || {
            g.set(&self.tok, g.atom_inc_relaxed_if_zero(tid, self.claim)?)?;
            g.set(&self.pend, g.c32(1))
        })
    }
}

/// [`COPY_BALANCED`]'s keys `[k0, k1)` of split `split` of a sequence (`keys`): the range
/// `lo..hi` (`lo` rounded down to a multiple of `align`, as `split_keys_from`) of `T =
/// ceil((hi - lo) / 64)` tiles, split `s` from tile `floor(s T / Splits)` to tile
/// `floor((s + 1) T / Splits)` (64-bit products: no wrap), `k1` at most `hi`.
fn balanced_keys<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    keys: &SeqKeys<'ctx>,
    split: IntValue<'ctx>,
    align: u32,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    use DecodeParam as P;
    let (lo, hi) = item_range(g, keys, align)?;
    let span = g.iintr2("llvm.smax.i32", g.sub(hi, lo)?, g.c32(0))?;
    let tiles = g.lshr(
        g.add(span, g.c32(KV_TILE as i64 - 1))?,
        g.c32(KV_TILE.trailing_zeros() as i64),
    )?;
    let (t64, s64) = (g.zext64(tiles)?, g.zext64(a.int(P::Splits)?)?);
    let cut = |s: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let t = g.udiv(g.mul(g.zext64(s)?, t64)?, s64)?;
        let t = g.b.build_int_truncate(t, g.i32, "")?;
        g.add(lo, g.shl(t, g.c32(KV_TILE.trailing_zeros() as i64))?)
    };
    let k0 = cut(split)?;
    let k1 = g.iintr2("llvm.smin.i32", cut(g.add(split, g.c32(1))?)?, hi)?;
    Ok((k0, k1))
}

/// Where a CTA of the fused kernel sits: its (b, kv head, row group) and the launch's
/// sizes.
struct Group<'ctx> {
    b: IntValue<'ctx>,
    hk: IntValue<'ctx>,
    rg: IntValue<'ctx>,
    hq: IntValue<'ctx>,
    lq: IntValue<'ctx>,
    group: IntValue<'ctx>,
    nrows: IntValue<'ctx>,
    splits: IntValue<'ctx>,
    rgs: IntValue<'ctx>,
    hkv: IntValue<'ctx>,
}

/// The fused kernel's end (after this CTA's partials are stored): the CTA counts itself
/// in `DecodeSem[b, hk, rg]` (a release-acquire atomic after a barrier); the last of the
/// group's splits to arrive resets the count and merges the group's partials into O and
/// LSE, exactly as the combine kernel: warp w takes rows w, w + 4, .. of the group's
/// rows, lane l columns l D/32 .. (l + 1) D/32, and walks the splits in order,
/// [`FUSED_UNROLL`] at a time (every load issued before the sums), with a running max
/// (`O = Σ exp(lse_s - m) o_s / Σ exp(lse_s - m)`, `LSE = m + log Σ ..`; O = 0 and LSE =
/// -inf when every split is empty). The order of the sums does not depend on which CTA
/// merges: the result is deterministic. Partials are read with volatile loads (other
/// CTAs wrote them in this launch).
#[allow(clippy::too_many_arguments)]
fn fused_combine<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    opts: &DecodeOptions,
    tid: IntValue<'ctx>,
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    at: &Group<'ctx>,
    flag_off: i64,
) -> R<()> {
    use DecodeParam as P;
    let d = opts.d as i64;
    let rpc = opts.rows as i64;
    let zero = g.c32(0);
    // every thread's partial stores happen before thread 0's release
    g.barrier()?;
    let gidx = g.add(g.mul(g.add(g.mul(at.b, at.hkv)?, at.hk)?, at.rgs)?, at.rg)?;
    let sem = g.gep_bytes(a.ptr(P::DecodeSem)?, g.mul(g.zext64(gidx)?, g.c64(4))?)?;
    let sem_addr = g.b.build_ptr_to_int(sem, g.i64, "")?;
    let flag = g.smem_at(g.c32(flag_off))?;
    g.if_then(g.icmp(IntPredicate::EQ, tid, zero)?, || {
        let old = g.acq_rel_inc(sem_addr)?;
        g.store(flag, old)
    })?;
    g.barrier()?;
    let old = g.b.build_load(g.i32, flag, "")?.into_int_value();
    let last = g.icmp(IntPredicate::EQ, old, g.sub(at.splits, g.c32(1))?)?;
    g.if_then(last, || {
        // the next launch counts from zero again (every split of the group has counted)
        g.if_then(g.icmp(IntPredicate::EQ, tid, zero)?, || g.store(sem, zero))?;
        let cpt = d / 32;
        let c0 = g.zext64(g.mul(lane, g.c32(cpt))?)?;
        let pl = a.ptr(P::PartLse)?;
        let po = a.ptr(P::PartO)?;
        let optr = a.ptr(P::O)?;
        let half = match opts.input {
            InputType::Bf16 => g.ctx.bf16_type(),
            InputType::F16 => g.ctx.f16_type(),
        };
        let first = g.mul(at.rg, g.c32(rpc))?;
        let nv = g.iintr2("llvm.smin.i32", g.sub(at.nrows, first)?, g.c32(rpc))?;
        // partial index of split 0 of this group
        let pbase = g.zext64(g.mul(gidx, at.splits)?)?;
        g.for_range(warp, nv, g.c32(WARPS as i64), |r| {
            let m = g.var(g.f32, g.cf(f32::NEG_INFINITY))?;
            let sum = g.var(g.f32, g.cf(0.0))?;
            let accs: Vec<Var<'ctx>> = (0..cpt)
                .map(|_| g.var(g.f32, g.cf(0.0)))
                .collect::<R<_>>()?;
            let step = g.c32(FUSED_UNROLL as i64);
            g.for_range(zero, at.splits, step, |s0| {
                let mut loaded = Vec::new();
                for u in 0..FUSED_UNROLL as i64 {
                    let s = g.add(s0, g.c32(u))?;
                    let ok = g.icmp(IntPredicate::SLT, s, at.splits)?;
                    let sc = g.zext64(g.selecti(ok, s, s0)?)?;
                    let prow = g.add(g.mul(g.add(pbase, sc)?, g.c64(rpc))?, g.zext64(r)?)?;
                    let l = g.load_f32_volatile(pl, prow)?;
                    let oat = g.add(g.mul(prow, g.c64(d))?, c0)?;
                    let os: Vec<FloatValue<'ctx>> = (0..cpt)
                        .map(|c| g.load_f32_volatile(po, g.add(oat, g.c64(c))?))
                        .collect::<R<_>>()?;
                    let l = g.selectf(ok, l, g.cf(f32::NEG_INFINITY))?;
                    loaded.push((l, os));
                }
                merge_partials(g, &m, &sum, &accs, loaded)?;
                Ok(())
            })?;
            // row r of the group: query head hk G + gi, new row i
            let pr = g.add(first, r)?;
            let gi = g.udiv(pr, at.lq)?;
            let i = g.sub(pr, g.mul(gi, at.lq)?)?;
            let h = g.add(g.mul(at.hk, at.group)?, gi)?;
            let out_row = g.zext64(g.add(g.mul(g.add(g.mul(at.b, at.hq)?, h)?, at.lq)?, i)?)?;
            let sum = g.getf(&sum)?;
            let empty = g.fcmp(FloatPredicate::OEQ, sum, g.cf(0.0))?;
            let inv = g.selectf(empty, g.cf(0.0), g.rcp(sum)?)?;
            for (c, acc) in accs.iter().enumerate() {
                let v = g.fmul(g.getf(acc)?, inv)?;
                let hv = g.b.build_float_trunc(v, half, "")?;
                let oat = g.add(g.add(g.mul(out_row, g.c64(d))?, c0)?, g.c64(c as i64))?;
                g.store(g.gep_bytes(optr, g.mul(oat, g.c64(2))?)?, hv)?;
            }
            let mref = finite_or_zero(g, g.getf(&m)?)?;
            let lse = g.fadd(mref, g.fmul(g.lg2(sum)?, g.cf(LN2))?)?;
            let lse = g.selectf(empty, g.cf(f32::NEG_INFINITY), lse)?;
            g.if_then(g.icmp(IntPredicate::EQ, lane, zero)?, || {
                g.store(g.gep_bytes(a.ptr(P::Lse)?, g.mul(out_row, g.c64(4))?)?, lse)
            })
        })
    })
}

/// The logits of this warp's slice of a tile into `t`, in log2 units: `score(scale s)
/// log2 e` (or `scale s log2 e`) where the mask holds, the key is inside the split (`kv <
/// k1`) and the row exists; -inf elsewhere. `key0`: the slice's first key position. `k1`
/// `None` ([`COPY_FULL_TILE`], a tile where every element is kept): no bounds, row or
/// mask test, the values the tests give when they all hold.
#[allow(clippy::too_many_arguments)]
fn logits<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    env: &Env<'ctx>,
    s: &AccValues<'ctx>,
    rows: &[RowInfo<'ctx>],
    b: IntValue<'ctx>,
    key0: IntValue<'ctx>,
    k1: Option<IntValue<'ctx>>,
    lane: IntValue<'ctx>,
    scale: FloatValue<'ctx>,
    t: &AccTile<'ctx>,
) -> R<()> {
    let col = g.add(key0, g.mul(g.and(lane, g.c32(3))?, g.c32(2))?)?;
    for (nt, acc) in s[0].iter().enumerate() {
        for (e, x) in acc.iter().enumerate() {
            let row = &rows[e / 2];
            let kv = g.add(col, g.c32(nt as i64 * 8 + (e as i64 % 2)))?;
            let sv = g.fmul(*x, scale)?;
            let Some(k1) = k1 else {
                let sc = match &p.score {
                    Some(f) => {
                        let el = Elem {
                            s: sv,
                            b,
                            h: row.h,
                            q: row.pos,
                            kv,
                            inside: g.cbool(true),
                            rel: None,
                        };
                        emit_function(g, env, f, el)?.into_float_value()
                    }
                    None => sv,
                };
                g.set(&t.tiles[0][nt][e], g.fmul(sc, g.cf(LOG2E))?)?;
                continue;
            };
            let inside = g.and(g.icmp(IntPredicate::SLT, kv, k1)?, row.live)?;
            let el = Elem {
                s: sv,
                b,
                h: row.h,
                q: row.pos,
                kv,
                inside,
                rel: None,
            };
            let keep = match &p.mask {
                Some(f) => g.and(inside, emit_function(g, env, f, el)?.into_int_value())?,
                None => inside,
            };
            let sc = match &p.score {
                Some(f) => emit_function(
                    g,
                    env,
                    f,
                    Elem {
                        inside: g.and(inside, keep)?,
                        ..el
                    },
                )?
                .into_float_value(),
                None => sv,
            };
            let v = g.selectf(keep, g.fmul(sc, g.cf(LOG2E))?, g.cf(f32::NEG_INFINITY))?;
            g.set(&t.tiles[0][nt][e], v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Arch, InputType};
    use super::*;

    /// Asserts that `ptxas` (sm_90a) assembles `ptx`, written to a temporary file named
    /// after `tag` and `key` and removed afterwards.
    fn ptxas_accepts(ptxas: &str, tag: &str, key: &str, ptx: &str) -> String {
        ptxas_run(ptxas, tag, key, ptx, &[])
    }

    /// [`ptxas_accepts`] with `args` (e.g. `-v`) before the file: its stderr.
    fn ptxas_run(ptxas: &str, tag: &str, key: &str, ptx: &str, args: &[&str]) -> String {
        let f = std::env::temp_dir().join(format!(
            "attnc_{tag}_{}_{}.ptx",
            std::process::id(),
            key.replace([':', ' '], "_")
        ));
        std::fs::write(&f, ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90a", "-o", "/dev/null"])
            .args(args)
            .arg(&f)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&f);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{key}: ptxas: {err}");
        err
    }

    /// The decode kernel's PTX for `o`: the fused kernel (one split per item writes O)
    /// under [`COPY_DIRECT`], the split kernel otherwise.
    fn decode_ptx(p: &crate::ir::Program, o: &DecodeOptions) -> String {
        if o.copy & COPY_DIRECT != 0 {
            emit_decode_mma_fused(p, o).unwrap()
        } else {
            emit_decode_mma(p, o).unwrap().decode_ptx
        }
    }

    /// The first program of `examples/{ex}.attn`.
    fn example(ex: &str) -> crate::ir::Program {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let src = std::fs::read_to_string(format!("{dir}/{ex}.attn")).unwrap();
        crate::compile_source(&src).unwrap().programs.swap_remove(0)
    }

    /// Every example, both layouts, every m-tile count, both head dims and input types;
    /// with `ATTNC_DECODE_PTX_DIR` set the PTX goes there (for `ptxas -v`).
    #[test]
    fn mma_decode_kernel_generates_for_every_example_and_layout() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut programs = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "attn") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            programs.extend(crate::compile_source(&src).unwrap().programs);
        }
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut n = 0;
        for (p, (paged, rows, d, input)) in crate::test_matrix::cases(
            &programs,
            &[
                (false, 16, 128, InputType::Bf16),
                (true, 16, 128, InputType::Bf16),
                (true, 32, 64, InputType::F16),
                (false, 64, 128, InputType::F16),
                (true, 64, 128, InputType::Bf16),
            ],
        ) {
            let o = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input,
                rows,
                paged,
                copy: 0,
            };
            let k = emit_decode_mma(&p, &o).unwrap();
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                let f = format!("{dir}/{}_{}.ptx", k.decode_entry, o.key().replace(':', "_"));
                std::fs::write(f, &k.decode_ptx).unwrap();
            }
            assert!(k.decode_ptx.contains(&format!(".entry {}", k.decode_entry)));
            assert!(k.decode_ptx.contains("mma.sync.aligned.m16n8k16"));
            assert!(k.decode_ptx.contains("cp.async.cg.shared.global"));
            assert_eq!(k.smem_bytes, smem_bytes(&o));
            // the fused kernel: the same kernel, a counter and the merge
            let f = emit_decode_mma_fused(&p, &o).unwrap();
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                let name = format!("{}_fused_{}.ptx", k.decode_entry, o.key());
                std::fs::write(format!("{dir}/{}", name.replace(':', "_")), &f).unwrap();
            }
            assert!(f.contains(".entry attnc_decode_mma_fused_"));
            assert!(f.contains("atom.relaxed.gpu.global.add.u32"));
            assert!(f.contains("ld.volatile.global"));
            assert!(f.contains("mma.sync.aligned.m16n8k16"));
            n += 1;
        }
        assert!(n > 20);
        // rows and head dims it does not take are refused with a clear error
        let p = &crate::compile_source("attention dense {}")
            .unwrap()
            .programs[0];
        for (rows, d) in [(8, 128), (16, 256)] {
            let o = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input: InputType::Bf16,
                rows,
                paged: false,
                copy: 0,
            };
            let e = emit_decode_mma(p, &o).unwrap_err().to_string();
            assert!(e.contains("tensor-core decode kernel"), "{e}");
        }
    }

    /// The PTX of the copy variants (`COPY_*` bits): dense, causal and sliding window,
    /// both layouts, 16
    /// and 64 rows at D128 and 32 rows at D64.
    fn copy_variants() -> Vec<(String, DecodeOptions, String)> {
        let mut out = Vec::new();
        for (ex, (rows, d)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window"],
            &[(16, 128), (64, 128), (32, 64)],
        ) {
            let p = &example(ex);
            for paged in [false, true] {
                for copy in [
                    0,
                    COPY_FULL,
                    COPY_SMEM32,
                    COPY_PAGE_PASS,
                    COPY_ALL,
                    COPY_L2_256,
                    COPY_EARLY,
                    COPY_L2_256 | COPY_EARLY,
                    // (COPY_DIRECT is the fused kind's: `mma_decode_direct`;
                    // COPY_PAGE_BASE after session 12's variants, below; COPY_TMA:
                    // `mma_decode_tma`)
                    // (session 9-12's bits: COPY_IDS_LATE in `mma_decode_ids_late`)
                    COPY_BITS & !COPY_DIRECT & !COPY_PAGE_BASE & !COPY_TMA & !COPY_IDS_LATE,
                    COPY_PAGE_BASE,
                    COPY_PAGE_BASE | COPY_EARLY,
                    COPY_FULL | COPY_SMEM32 | COPY_PAGE_BASE,
                ] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy,
                    };
                    let k = emit_decode_mma(p, &o).unwrap();
                    out.push((p.name.clone(), o, k.decode_ptx));
                }
            }
        }
        out
    }

    /// The instructions of the main loop's steady-state copy of one tile: the fewest
    /// instructions (labels, braces and directives not counted) of a basic block that
    /// holds all of a tile's `cp.async` copies (the loop's full-tile copy; the prologue's
    /// and partial tiles' copies compute more).
    fn copy_block_instructions(ptx: &str, copies: usize) -> usize {
        let mut best = usize::MAX;
        let (mut n, mut c) = (0, 0);
        for line in ptx.lines().map(str::trim) {
            if line.starts_with("$L__") || line.starts_with('}') {
                if c == copies {
                    best = best.min(n);
                }
                (n, c) = (0, 0);
                continue;
            }
            if line.is_empty() || line.starts_with("//") || line.starts_with('.') || line == "{" {
                continue;
            }
            n += 1;
            if line.starts_with("cp.async.cg.shared.global") {
                c += 1;
            }
        }
        best
    }

    /// The copy variants generate, take the same parameters and shared memory, use the
    /// 32-bit destinations where asked, and cut the steady-state copy's instructions;
    /// with `ATTNC_DECODE_PTX_DIR` set their PTX goes there, and with `ATTNC_PTXAS` (a
    /// `ptxas` binary) each must pass `ptxas -arch=sm_90a`.
    #[test]
    fn mma_decode_copy_variants() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let mut base = std::collections::HashMap::new();
        // (name, rows, d, paged) -> the loop's copy instructions of `abc`; `abg`'s
        let mut abc = std::collections::HashMap::new();
        let mut abg = Vec::new();
        for (name, o, ptx) in copy_variants() {
            if o.copy == COPY_FULL | COPY_SMEM32 | COPY_PAGE_BASE {
                let copies = (2 * KV_TILE * o.d / 8 / THREADS) as usize;
                abg.push((
                    name.clone(),
                    o,
                    copy_block_instructions(&ptx, copies),
                    ptx.clone(),
                ));
            }
            // a tile's copies: 64 rows x D / 8 chunks over 128 threads, K and V
            let copies = (2 * KV_TILE * o.d / 8 / THREADS) as usize;
            let n = copy_block_instructions(&ptx, copies);
            let key = format!("{name} {}", o.key());
            eprintln!("{key}: {n} instructions in the loop's tile copy");
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                std::fs::write(format!("{dir}/{}.ptx", key.replace([':', ' '], "_")), &ptx)
                    .unwrap();
            }
            if let Some(ptxas) = &ptxas {
                ptxas_accepts(ptxas, "copy", &key, &ptx);
            }
            // a 32-bit register (`%rN`, not `%rdN`) as a copy's destination (also the
            // L2_256 copies': inline assembly)
            let smem32 = ptx.lines().any(|l| {
                l.trim()
                    .strip_prefix("cp.async.cg.shared.global")
                    .map(|r| r.strip_prefix(".L2::256B").unwrap_or(r))
                    .and_then(|r| r.strip_prefix(" [%r"))
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            });
            // COPY_L2_256: every K/V copy (not Q's) with the prefetch size
            let l2 = ptx
                .lines()
                .filter(|l| l.trim().starts_with("cp.async.cg.shared.global.L2::256B"))
                .count();
            assert_eq!(l2 > 0, o.copy & COPY_L2_256 != 0, "{key}");
            // COPY_EARLY: one wait, after the prologue's copies (the first cp.async)
            let lines: Vec<&str> = ptx.lines().map(str::trim).collect();
            let at = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.starts_with("griddepcontrol.wait"))
                    .count(),
                1,
                "{key}"
            );
            let early = at("griddepcontrol.wait") > at("cp.async.cg.shared.global");
            assert_eq!(early, o.copy & COPY_EARLY != 0, "{key}");
            assert_eq!(smem32, o.copy & (COPY_SMEM32 | COPY_L2_256) != 0, "{key}");
            if o.copy & COPY_ALL == 0 && o.copy != 0 {
                continue;
            }
            if o.copy == 0 {
                assert!(n < usize::MAX, "{key}: no steady-state copy block");
                base.insert((name.clone(), o.rows, o.d, o.paged), n);
                continue;
            }
            let n0 = base[&(name.clone(), o.rows, o.d, o.paged)];
            let applies = o.copy & (COPY_FULL | COPY_SMEM32) != 0 || o.paged;
            if applies {
                assert!(n < n0, "{key}: {n} instructions, {n0} without");
            }
            if o.copy == COPY_ALL {
                abc.insert((name.clone(), o.rows, o.d, o.paged), n);
            }
        }
        // COPY_PAGE_BASE: paged D128 takes each pass's base from a constant lane (two
        // shuffles per pass, no page arithmetic in the copy; PTX instructions: 60 per
        // tile against `abc`'s 53, measured 1.5% faster at Lq16 page 16, see
        // docs/performance.md); elsewhere it is ignored: `ab`'s kernel
        // examples x (rows, D) (the rotation or the product), both layouts
        let cases = if crate::test_matrix::long_tests() {
            9
        } else {
            3
        };
        assert_eq!(abg.len(), 2 * cases);
        for (name, o, n, ptx) in abg {
            let key = format!("{name} {}", o.key());
            if o.paged && o.d == 128 {
                let n1 = abc[&(name.clone(), o.rows, o.d, o.paged)];
                assert!(
                    n <= n1 + 8,
                    "{key}: {n} instructions, {n1} with COPY_PAGE_PASS"
                );
                for pass in 0..KV_TILE / 16 {
                    let lane = format!(", {pass}, 31, -1;");
                    let shfl = ptx
                        .lines()
                        .filter(|l| l.contains("shfl.sync.idx.b32") && l.ends_with(&lane))
                        .count();
                    assert!(shfl >= 2, "{key}: pass {pass}'s base not from lane {pass}");
                }
            } else {
                let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
                let ex = if name == "causal_attention" {
                    "causal"
                } else {
                    &name
                };
                let src = std::fs::read_to_string(format!("{dir}/{ex}.attn")).unwrap();
                let p = &crate::compile_source(&src).unwrap().programs[0];
                let ab = DecodeOptions {
                    copy: COPY_FULL | COPY_SMEM32,
                    ..o
                };
                let k = emit_decode_mma(p, &ab).unwrap();
                assert!(ptx == k.decode_ptx, "{key}: not ab's kernel");
            }
        }
    }

    /// [`COPY_TMA`]: paged on sm_90, full tiles by `cp.async.bulk.tensor.3d` boxes (lanes
    /// of warp 0) through the `TmaK` / `TmaV` maps (grid-constant 128-byte parameters)
    /// with a wait on the stage's mbarrier, partial tiles by the checked `cp.async`;
    /// more shared memory by one mbarrier per stage; the contiguous layout ignores the bit
    /// (byte-identical PTX). Plain, merging-fused and one-split kinds, with the other
    /// bits the runtime combines it with. `ATTNC_DECODE_PTX_DIR` (files `tma_*`) /
    /// `ATTNC_PTXAS` as in [`mma_decode_copy_variants`].
    #[test]
    fn mma_decode_tma() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let check = |key: &str, ptx: &str| {
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                let f = format!("{dir}/tma_{}.ptx", key.replace([':', ' '], "_"));
                std::fs::write(f, ptx).unwrap();
            }
            if let Some(ptxas) = &ptxas {
                ptxas_accepts(ptxas, "tma", key, ptx);
            }
        };
        for (ex, (rows, d)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window"],
            &[(16, 128), (64, 128), (32, 64)],
        ) {
            let p = &example(ex);
            for paged in [false, true] {
                for copy in [
                    COPY_TMA,
                    COPY_TMA | COPY_EARLY,
                    COPY_TMA | COPY_EARLY | COPY_DIRECT,
                    COPY_TMA | COPY_FULL | COPY_SMEM32 | COPY_EARLY,
                ] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy,
                    };
                    let key = format!("{} {}", p.name, o.key());
                    let plain = emit_decode_mma(p, &o).unwrap().decode_ptx;
                    let fused = emit_decode_mma_fused(p, &o).unwrap();
                    let without = DecodeOptions {
                        copy: copy & !COPY_TMA,
                        ..o
                    };
                    assert_eq!(
                        smem_bytes(&o),
                        smem_bytes(&without) + if paged { 8 * stages(d) } else { 0 },
                        "{key}"
                    );
                    if !paged {
                        assert_eq!(
                            plain,
                            emit_decode_mma(p, &without).unwrap().decode_ptx,
                            "{key}: the contiguous kernel took COPY_TMA"
                        );
                        continue;
                    }
                    for (kind, ptx) in [("plain", &plain), ("fused", &fused)] {
                        let key = format!("{key} {kind}");
                        let count = |w: &str| ptx.matches(w).count();
                        // one issuing site per tile issue: the prologue's stages - 1
                        // (unrolled) and the loop's
                        assert_eq!(
                            count("cp.async.bulk.tensor.3d.shared::cluster.global"),
                            stages(d) as usize,
                            "{key}"
                        );
                        assert!(count("mbarrier.try_wait.parity") >= 1, "{key}");
                        assert_eq!(count("mbarrier.init.shared::cta.b64"), stages(d) as usize);
                        assert_eq!(count(".param .align 64 .b8"), 2, "{key}: two maps");
                        // the partial tile's checked copy is still there
                        assert!(count("cp.async.cg.shared.global") > 0, "{key}");
                        if copy & COPY_EARLY != 0 {
                            let lines: Vec<&str> = ptx.lines().map(str::trim).collect();
                            let at = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
                            assert!(
                                at("griddepcontrol.wait") > at("cp.async.bulk.tensor"),
                                "{key}: the prologue's boxes before the wait"
                            );
                        }
                        check(&key, ptx);
                    }
                }
            }
        }
    }

    /// [`COPY_IDS_LATE`]: generates with the loop's copies (`e`, `abce`, `eh` TMA, `efg`
    /// where it is ignored) for every example's rows / D, plain and one-split fused
    /// kinds; contiguous caches and [`COPY_PAGE_BASE`] ignore it (byte-identical PTX), a
    /// paged kernel changes. `ATTNC_DECODE_PTX_DIR` (files `late_*`) / `ATTNC_PTXAS` as
    /// in [`mma_decode_copy_variants`].
    #[test]
    fn mma_decode_ids_late() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (ex, (rows, d)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window"],
            &[(16, 128), (64, 128), (32, 64)],
        ) {
            let p = &example(ex);
            for paged in [false, true] {
                for copy in [
                    COPY_EARLY,
                    COPY_EARLY | COPY_DIRECT,
                    COPY_ALL | COPY_EARLY,
                    COPY_EARLY | COPY_TMA,
                    COPY_EARLY | COPY_PAGE_BASE,
                ] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy: copy | COPY_IDS_LATE,
                    };
                    let without = DecodeOptions { copy, ..o };
                    let key = format!("{} {}", p.name, o.key());
                    let (ptx, ptx0) = (decode_ptx(p, &o), decode_ptx(p, &without));
                    let ignored = !paged || copy & COPY_PAGE_BASE != 0 && d == 128;
                    assert_eq!(ptx == ptx0, ignored, "{key}");
                    if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                        let f = format!("{dir}/late_{}.ptx", key.replace([':', ' '], "_"));
                        std::fs::write(f, &ptx).unwrap();
                    }
                    if let Some(ptxas) = &ptxas {
                        ptxas_accepts(ptxas, "late", &key, &ptx);
                    }
                }
            }
        }
    }

    /// [`full_tile_form`]: no mask, causal and the sliding window qualify (exact linear
    /// forms whose i32 code cannot wrap); masks with other arithmetic, over tensors or
    /// ids do not.
    #[test]
    fn full_tile_forms() {
        assert_eq!(full_tile_form(&example("dense")).map(|c| c.len()), Some(0));
        assert_eq!(full_tile_form(&example("causal")).map(|c| c.len()), Some(1));
        assert_eq!(
            full_tile_form(&example("sliding_window")).map(|c| c.len()),
            Some(2)
        );
        assert!(full_tile_form(&example("document_causal")).is_none());
        let prog = |src: &str| crate::compile_source(src).unwrap().programs.swap_remove(0);
        // `q + 5` may wrap in i32: the exact form would not be the kernel's mask
        let shifted = prog("mask m(b, h, q, kv) { q + 5 >= kv }\nattention a { mask = m; }");
        assert!(full_tile_form(&shifted).is_none());
        let offset = prog("mask m(b, h, q, kv) { q - kv >= 3 }\nattention a { mask = m; }");
        assert_eq!(full_tile_form(&offset).map(|c| c.len()), Some(1));
    }

    /// [`COPY_FULL_TILE`]: the loop branches to a logits block without the tests where
    /// the form applies (dense, causal, sliding window: PTX changes, ptxas accepts it),
    /// byte-identical PTX where it does not (document masks); with
    /// `ATTNC_DECODE_PTX_DIR` the kernels go there (`full_*`).
    #[test]
    fn mma_decode_full_tile() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (ex, (rows, d)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window", "document_causal"],
            &[(16, 128), (64, 128), (32, 64)],
        ) {
            let p = &example(ex);
            for paged in [false, true] {
                for copy in [
                    COPY_EARLY | COPY_IDS_LATE,
                    COPY_EARLY | COPY_DIRECT | COPY_IDS_LATE,
                    COPY_ALL | COPY_EARLY | COPY_IDS_LATE,
                ] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy: copy | COPY_FULL_TILE,
                    };
                    let without = DecodeOptions { copy, ..o };
                    let key = format!("{} {}", p.name, o.key());
                    let (ptx, ptx0) = (decode_ptx(p, &o), decode_ptx(p, &without));
                    assert_eq!(ptx == ptx0, ex == "document_causal", "{key}");
                    if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                        let f = format!("{dir}/full_{}.ptx", key.replace([':', ' '], "_"));
                        std::fs::write(f, &ptx).unwrap();
                    }
                    if let Some(ptxas) = &ptxas {
                        ptxas_accepts(ptxas, "full", &key, &ptx);
                    }
                }
            }
        }
    }

    /// [`COPY_COMBINE_TRIGGER`]: the combine kernel lets the next grid launch before its
    /// `griddepcontrol.wait` (after it without the bit); the decode kernels (plain and
    /// fused) ignore the bit: byte-identical PTX.
    #[test]
    fn mma_decode_combine_trigger() {
        let p = &example("dense");
        for (rows, d, paged) in [(16, 128, false), (64, 128, true), (32, 64, true)] {
            for copy in [COPY_EARLY | COPY_IDS_LATE, COPY_EARLY | COPY_DIRECT, 0] {
                let o = DecodeOptions {
                    arch: Arch::Sm90,
                    d,
                    input: InputType::Bf16,
                    rows,
                    paged,
                    copy,
                };
                let with = DecodeOptions {
                    copy: copy | COPY_COMBINE_TRIGGER,
                    ..o
                };
                let key = with.key();
                let (k0, k1) = (
                    emit_decode_mma(p, &o).unwrap(),
                    emit_decode_mma(p, &with).unwrap(),
                );
                assert_eq!(
                    k0.decode_ptx, k1.decode_ptx,
                    "{key}: the decode kernel took the bit"
                );
                assert_eq!(
                    emit_decode_mma_fused(p, &o).unwrap(),
                    emit_decode_mma_fused(p, &with).unwrap(),
                    "{key}: the fused kernel took the bit"
                );
                let order = |ptx: &str| {
                    let lines: Vec<&str> = ptx.lines().map(str::trim).collect();
                    let at = |w: &str| {
                        let hits: Vec<usize> = (0..lines.len())
                            .filter(|&i| lines[i].starts_with(w))
                            .collect();
                        assert_eq!(hits.len(), 1, "{key}: one {w}");
                        hits[0]
                    };
                    at("griddepcontrol.launch_dependents") < at("griddepcontrol.wait")
                };
                assert!(
                    !order(&k0.combine_ptx),
                    "{key}: trigger after the wait by default"
                );
                assert!(order(&k1.combine_ptx), "{key}: trigger before the wait");
                let strip = |ptx: &str| {
                    ptx.lines()
                        .filter(|l| !l.trim().starts_with("griddepcontrol"))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                assert_eq!(strip(&k0.combine_ptx), strip(&k1.combine_ptx), "{key}");
            }
        }
    }

    /// Session 17's bits: [`COPY_TRACE`] adds the SM read and five timer reads to the
    /// plain kind only (the fused kinds and the combine kernel byte-identical);
    /// [`COPY_COMBINE_WIDE`] changes the combine kernel only (16 splits' loads per round
    /// instead of 8: more loads in its loop), the decode kernels byte-identical; and
    /// [`COPY_EARLY`] moves the merging fused kind's `griddepcontrol.wait` after the
    /// prologue's copies (it stood first before). `ATTNC_PTXAS` as in
    /// [`mma_decode_copy_variants`].
    #[test]
    fn mma_decode_trace_wide_combine_fused_early() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let count = |ptx: &str, w: &str| ptx.matches(w).count();
        for (ex, (rows, d, paged)) in crate::test_matrix::cases(
            &["dense", "causal"],
            &[
                (16, 128, false),
                (16, 128, true),
                (64, 128, true),
                (32, 64, false),
            ],
        ) {
            let p = &example(ex);
            for base in [COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE, 0] {
                let o = DecodeOptions {
                    arch: Arch::Sm90,
                    d,
                    input: InputType::Bf16,
                    rows,
                    paged,
                    copy: base,
                };
                let key = format!("{ex} {}", o.key());
                let k0 = emit_decode_mma(p, &o).unwrap();
                let f0 = emit_decode_mma_fused(p, &o).unwrap();
                let direct = DecodeOptions {
                    copy: base | COPY_DIRECT,
                    ..o
                };
                let d0 = emit_decode_mma_fused(p, &direct).unwrap();
                // COPY_TRACE
                let t = DecodeOptions {
                    copy: base | COPY_TRACE,
                    ..o
                };
                let kt = emit_decode_mma(p, &t).unwrap();
                assert_eq!(count(&k0.decode_ptx, "%globaltimer_lo"), 0, "{key}");
                assert_eq!(count(&kt.decode_ptx, "%globaltimer_lo"), 5, "{key}");
                assert_eq!(count(&kt.decode_ptx, "%smid"), 1, "{key}");
                assert_eq!(
                    kt.combine_ptx, k0.combine_ptx,
                    "{key}: combine took COPY_TRACE"
                );
                assert_eq!(
                    emit_decode_mma_fused(p, &t).unwrap(),
                    f0,
                    "{key}: fused took it"
                );
                let td = DecodeOptions {
                    copy: base | COPY_DIRECT | COPY_TRACE,
                    ..o
                };
                assert_eq!(
                    emit_decode_mma_fused(p, &td).unwrap(),
                    d0,
                    "{key}: direct took it"
                );
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "trace", &key, &kt.decode_ptx);
                }
                // COPY_COMBINE_WIDE
                let w = DecodeOptions {
                    copy: base | COPY_COMBINE_WIDE,
                    ..o
                };
                let kw = emit_decode_mma(p, &w).unwrap();
                assert_eq!(
                    kw.decode_ptx, k0.decode_ptx,
                    "{key}: decode took COPY_COMBINE_WIDE"
                );
                assert_eq!(emit_decode_mma_fused(p, &w).unwrap(), f0, "{key}");
                let loads = |ptx: &str| count(ptx, "ld.global");
                assert!(
                    loads(&kw.combine_ptx) > loads(&k0.combine_ptx),
                    "{key}: the wide combine issues more loads per round"
                );
                // COPY_EARLY on the merging fused kind: its wait after the prologue's
                // copies, one wait
                let lines: Vec<&str> = f0.lines().map(str::trim).collect();
                let at = |w: &str| lines.iter().position(|l| l.starts_with(w)).unwrap();
                assert_eq!(count(&f0, "griddepcontrol.wait"), 1, "{key}");
                assert_eq!(
                    at("griddepcontrol.wait") > at("cp.async.cg.shared.global"),
                    base & COPY_EARLY != 0,
                    "{key}: the merging fused kind's wait"
                );
            }
        }
    }

    /// Work stealing ([`COPY_STEAL`]): the plain kind's spec takes the counter
    /// (`DecodeSem`) and `StealChunk` and launches `SplitCtas` CTAs along x; its PTX has
    /// one atomic add (the next item) and the reset store; the combine kernel and the
    /// fused kinds ignore the bit (byte-identical PTX), as does a TMA copy; with
    /// [`COPY_TRACE`] too, one more timer reading (each item's start). `ATTNC_PTXAS`: the
    /// kernels assemble.
    #[test]
    fn mma_decode_steal() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let count = |ptx: &str, w: &str| ptx.matches(w).count();
        for (ex, (rows, d, paged)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window", "document_causal"],
            &[
                (16, 128, false),
                (16, 128, true),
                (64, 128, true),
                (32, 64, false),
            ],
        ) {
            let p = &example(ex);
            for base in [COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE, 0] {
                let o = DecodeOptions {
                    arch: Arch::Sm90,
                    d,
                    input: InputType::Bf16,
                    rows,
                    paged,
                    copy: base,
                };
                let n = DecodeOptions {
                    copy: base | COPY_STEAL,
                    ..o
                };
                let key = format!("{ex} {}", n.key());
                let k0 = emit_decode_mma(p, &o).unwrap();
                let kn = emit_decode_mma(p, &n).unwrap();
                let atom = "atom.relaxed.gpu.global.add.u32";
                assert_eq!(count(&k0.decode_ptx, atom), 0, "{key}");
                assert_eq!(count(&kn.decode_ptx, atom), 1, "{key}");
                assert_eq!(
                    count(&kn.decode_ptx, "st.relaxed.gpu.global.u32"),
                    1,
                    "{key}"
                );
                assert_eq!(kn.combine_ptx, k0.combine_ptx, "{key}: combine took it");
                assert_eq!(
                    emit_decode_mma_fused(p, &n).unwrap(),
                    emit_decode_mma_fused(p, &o).unwrap(),
                    "{key}: fused took it"
                );
                let direct = |c: u32| DecodeOptions {
                    copy: c | COPY_DIRECT,
                    ..o
                };
                assert_eq!(
                    emit_decode_mma_fused(p, &direct(n.copy)).unwrap(),
                    emit_decode_mma_fused(p, &direct(o.copy)).unwrap(),
                    "{key}: direct took it"
                );
                let sp =
                    |o: &DecodeOptions| spec(p, KernelKind::DecodeMma, &o.ptx_options()).unwrap();
                let (s0, sn) = (sp(&o), sp(&n));
                assert_eq!(s0.grid[0], GridDim::Splits, "{key}");
                assert_eq!(sn.grid[0], GridDim::SplitCtas, "{key}");
                assert!(!s0.params.contains(&DecodeParam::StealChunk), "{key}");
                for q in [DecodeParam::DecodeSem, DecodeParam::StealChunk] {
                    assert!(sn.params.contains(&q), "{key}: {q:?}");
                }
                assert_eq!(sn.smem_bytes, s0.smem_bytes + 16, "{key}");
                let t = DecodeOptions {
                    copy: n.copy | COPY_TRACE,
                    ..o
                };
                let kt = emit_decode_mma(p, &t).unwrap();
                let t0 = emit_decode_mma(
                    p,
                    &DecodeOptions {
                        copy: base | COPY_TRACE,
                        ..o
                    },
                )
                .unwrap();
                assert_eq!(
                    count(&kt.decode_ptx, "%globaltimer_lo"),
                    count(&t0.decode_ptx, "%globaltimer_lo") + 1,
                    "{key}: each item's start"
                );
                if paged {
                    let tma = |c: u32| DecodeOptions {
                        copy: c | COPY_TMA,
                        ..o
                    };
                    assert_eq!(
                        emit_decode_mma(p, &tma(n.copy)).unwrap().decode_ptx,
                        emit_decode_mma(p, &tma(o.copy)).unwrap().decode_ptx,
                        "{key}: TMA took it"
                    );
                }
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "steal", &key, &kn.decode_ptx);
                    ptxas_accepts(ptxas, "steal_trace", &key, &kt.decode_ptx);
                }
            }
        }
    }

    /// [`COPY_STREAM`]: the plain kernel takes it (two relaxed adds: the take in the loop
    /// and the count after it; two relaxed stores: the reset; the counter and chunk
    /// params, the splits' grid, the slots in shared memory); the combine, the fused
    /// kinds and TMA kernels do not (byte-identical), nor does [`COPY_STEAL`] (it wins);
    /// ptxas 13.0 accepts the kernels (`ATTNC_PTXAS`).
    #[test]
    fn mma_decode_stream() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let count = |ptx: &str, w: &str| ptx.matches(w).count();
        for (ex, (rows, d, paged)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window", "document_causal"],
            &[
                (16, 128, false),
                (16, 128, true),
                (64, 128, true),
                (32, 64, false),
            ],
        ) {
            let p = &example(ex);
            for base in [COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE, 0] {
                let o = DecodeOptions {
                    arch: Arch::Sm90,
                    d,
                    input: InputType::Bf16,
                    rows,
                    paged,
                    copy: base,
                };
                let with = |c: u32| DecodeOptions { copy: c, ..o };
                let os = with(base | COPY_STREAM);
                let key = format!("{ex} {}", os.key());
                let (k0, ks) = (
                    emit_decode_mma(p, &o).unwrap(),
                    emit_decode_mma(p, &os).unwrap(),
                );
                let atom = "atom.relaxed.gpu.global.add.u32";
                assert_eq!(count(&k0.decode_ptx, atom), 0, "{key}");
                assert_eq!(count(&ks.decode_ptx, atom), 2, "{key}");
                assert_eq!(
                    count(&ks.decode_ptx, "st.relaxed.gpu.global.u32"),
                    2,
                    "{key}"
                );
                assert_eq!(ks.combine_ptx, k0.combine_ptx, "{key}: combine took it");
                assert_eq!(
                    emit_decode_mma_fused(p, &os).unwrap(),
                    emit_decode_mma_fused(p, &o).unwrap(),
                    "{key}: fused took it"
                );
                assert_eq!(
                    emit_decode_mma_fused(p, &with(os.copy | COPY_DIRECT)).unwrap(),
                    emit_decode_mma_fused(p, &with(o.copy | COPY_DIRECT)).unwrap(),
                    "{key}: direct took it"
                );
                assert_eq!(
                    emit_decode_mma(p, &with(os.copy | COPY_STEAL))
                        .unwrap()
                        .decode_ptx,
                    emit_decode_mma(p, &with(o.copy | COPY_STEAL))
                        .unwrap()
                        .decode_ptx,
                    "{key}: steal took it"
                );
                if paged {
                    assert_eq!(
                        emit_decode_mma(p, &with(os.copy | COPY_TMA))
                            .unwrap()
                            .decode_ptx,
                        emit_decode_mma(p, &with(o.copy | COPY_TMA))
                            .unwrap()
                            .decode_ptx,
                        "{key}: TMA took it"
                    );
                }
                let sp =
                    |o: &DecodeOptions| spec(p, KernelKind::DecodeMma, &o.ptx_options()).unwrap();
                let (s0, ss) = (sp(&o), sp(&os));
                assert_eq!(ss.grid, s0.grid, "{key}");
                assert_eq!(ss.grid[0], GridDim::Splits, "{key}");
                for q in [DecodeParam::DecodeSem, DecodeParam::StealChunk] {
                    assert!(!s0.params.contains(&q), "{key}: {q:?}");
                    assert!(ss.params.contains(&q), "{key}: {q:?}");
                }
                assert_eq!(
                    ss.smem_bytes,
                    s0.smem_bytes + 4 * (1 + STREAM_SLOTS),
                    "{key}"
                );
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "stream", &key, &ks.decode_ptx);
                }
            }
        }
    }

    /// [`COPY_BALANCED`]: the plain and the merging fused kernel take it (other PTX, the
    /// same spec: params, grid, shared memory), the combine kernel and the one-split
    /// form do not (byte-identical), and [`COPY_STEAL`] keeps its own splits (its PTX
    /// unchanged by the bit); ptxas 13.0 accepts the kernels (`ATTNC_PTXAS`); with
    /// `ATTNC_DECODE_PTX_DIR` both plain kernels go there (for the diff).
    #[test]
    fn mma_decode_balanced() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (ex, (rows, d, paged)) in crate::test_matrix::cases(
            &["dense", "causal", "sliding_window", "document_causal"],
            &[
                (16, 128, false),
                (16, 128, true),
                (64, 128, true),
                (32, 64, false),
            ],
        ) {
            let p = &example(ex);
            for base in [COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE, 0] {
                let o = DecodeOptions {
                    arch: Arch::Sm90,
                    d,
                    input: InputType::Bf16,
                    rows,
                    paged,
                    copy: base,
                };
                let with = |c: u32| DecodeOptions { copy: c, ..o };
                let ob = with(base | COPY_BALANCED);
                let key = format!("{ex} {}", ob.key());
                let (k0, kb) = (
                    emit_decode_mma(p, &o).unwrap(),
                    emit_decode_mma(p, &ob).unwrap(),
                );
                assert_ne!(
                    kb.decode_ptx, k0.decode_ptx,
                    "{key}: plain kernel unchanged"
                );
                assert_eq!(kb.combine_ptx, k0.combine_ptx, "{key}: combine took it");
                if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                    let f = |t: &str| format!("{dir}/{t}_{}.ptx", key.replace([':', ' '], "_"));
                    std::fs::write(f("unbalanced"), &k0.decode_ptx).unwrap();
                    std::fs::write(f("balanced"), &kb.decode_ptx).unwrap();
                }
                assert_ne!(
                    emit_decode_mma_fused(p, &ob).unwrap(),
                    emit_decode_mma_fused(p, &o).unwrap(),
                    "{key}: merging fused kernel unchanged"
                );
                assert_eq!(
                    emit_decode_mma_fused(p, &with(ob.copy | COPY_DIRECT)).unwrap(),
                    emit_decode_mma_fused(p, &with(o.copy | COPY_DIRECT)).unwrap(),
                    "{key}: direct took it"
                );
                assert_eq!(
                    emit_decode_mma(p, &with(ob.copy | COPY_STEAL))
                        .unwrap()
                        .decode_ptx,
                    emit_decode_mma(p, &with(o.copy | COPY_STEAL))
                        .unwrap()
                        .decode_ptx,
                    "{key}: steal took it"
                );
                for kind in [KernelKind::DecodeMma, KernelKind::DecodeMmaFused] {
                    let sp = |o: &DecodeOptions| spec(p, kind, &o.ptx_options()).unwrap();
                    let (s0, sb) = (sp(&o), sp(&ob));
                    assert_eq!(s0.params, sb.params, "{key} {kind:?}");
                    assert_eq!(s0.grid, sb.grid, "{key} {kind:?}");
                    assert_eq!(s0.smem_bytes, sb.smem_bytes, "{key} {kind:?}");
                }
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "balanced", &key, &kb.decode_ptx);
                }
            }
        }
    }

    /// [`COPY_WGMMA`]: at 64 rows on sm_90 (D128 and D64, both layouts, the plain, merging
    /// fused and one-split kinds) the products are wgmma (8 `m64n64k16` for S at D128, 4
    /// `m64n{D}k16` for P V, each group waited for), no `mma.sync` and no Q fragments
    /// held (`ldmatrix` gone from the loop), a proxy fence before the prologue's and every
    /// tile's barrier, shared memory 1024-byte aligned and the same size; every other
    /// row count, and sm_80, ignore the bit (byte-identical PTX); copy bits outside
    /// [`COPY_BITS`] are refused. `ATTNC_DECODE_PTX_DIR` / `ATTNC_PTXAS` as in
    /// [`mma_decode_copy_variants`].
    #[test]
    fn mma_decode_wgmma() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let base = COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE | COPY_BALANCED;
        for (ex, (rows, d, paged, input)) in crate::test_matrix::cases(
            &[
                "dense",
                "causal",
                "sliding_window",
                "document_causal",
                "softcap",
            ],
            &[
                (64, 128, false, InputType::Bf16),
                (64, 128, true, InputType::Bf16),
                (64, 64, false, InputType::F16),
                (16, 128, false, InputType::Bf16),
                (32, 128, true, InputType::Bf16),
            ],
        ) {
            let p = &example(ex);
            let o = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input,
                rows,
                paged,
                copy: base,
            };
            let ow = DecodeOptions {
                copy: base | COPY_WGMMA,
                ..o
            };
            let key = format!("{ex} {}", ow.key());
            let (k0, kw) = (
                emit_decode_mma(p, &o).unwrap(),
                emit_decode_mma(p, &ow).unwrap(),
            );
            let (f0, fw) = (
                emit_decode_mma_fused(p, &o).unwrap(),
                emit_decode_mma_fused(p, &ow).unwrap(),
            );
            let direct = |c: u32| {
                let od = DecodeOptions {
                    copy: c | COPY_DIRECT,
                    ..o
                };
                emit_decode_mma_fused(p, &od).unwrap()
            };
            let (d0, dw) = (direct(o.copy), direct(ow.copy));
            assert_eq!(kw.combine_ptx, k0.combine_ptx, "{key}: combine took it");
            assert_eq!(kw.smem_bytes, k0.smem_bytes, "{key}");
            // COPY_WGMMA_DEEP: 6 stages at D128 on the wgmma path, else ignored
            let od = DecodeOptions {
                copy: ow.copy | COPY_WGMMA_DEEP,
                ..o
            };
            let kd = emit_decode_mma(p, &od).unwrap();
            if rows == 64 && d == 128 {
                assert_ne!(kd.decode_ptx, kw.decode_ptx, "{key}: deep ring");
                assert_eq!(kd.smem_bytes, 64 * 128 * 2 + 6 * 32768, "{key}: deep ring");
                assert_eq!(ring_stages(&od), 6);
                let n = |pat: &str| kd.decode_ptx.matches(pat).count();
                assert_eq!(n(".m64n64k16."), 8, "{key}: deep");
                assert_eq!(n("fence.proxy.async.shared::cta"), 2, "{key}: deep");
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "wgmma", &format!("{key} deep"), &kd.decode_ptx);
                }
                // and without COPY_WGMMA the bit means nothing
                let o0 = DecodeOptions {
                    copy: o.copy | COPY_WGMMA_DEEP,
                    ..o
                };
                assert_eq!(emit_decode_mma(p, &o0).unwrap().decode_ptx, k0.decode_ptx);
            } else {
                assert_eq!(kd.decode_ptx, kw.decode_ptx, "{key}: deep ignored");
                assert_eq!(kd.smem_bytes, kw.smem_bytes, "{key}: deep ignored");
            }
            // COPY_WGMMA_DEFER: P V's wait in the next tile (plain, fused, direct)
            let ot = DecodeOptions {
                copy: ow.copy | COPY_WGMMA_DEFER,
                ..o
            };
            let kt = emit_decode_mma(p, &ot).unwrap();
            let ft = emit_decode_mma_fused(p, &ot).unwrap();
            let dt = direct(ot.copy);
            assert_eq!(kt.smem_bytes, kw.smem_bytes, "{key}: defer");
            assert_eq!(kt.combine_ptx, kw.combine_ptx, "{key}: defer");
            if rows != 64 {
                assert_eq!(
                    kt.decode_ptx, k0.decode_ptx,
                    "{key}: defer, not at {rows} rows"
                );
                assert_eq!(ft, f0, "{key}: defer fused, not at {rows} rows");
                // and without COPY_WGMMA the bit means nothing either
                let o1 = DecodeOptions {
                    copy: o.copy | COPY_WGMMA_DEFER,
                    ..o
                };
                assert_eq!(emit_decode_mma(p, &o1).unwrap().decode_ptx, k0.decode_ptx);
            } else {
                if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                    let f = format!("{dir}/defer_{}.ptx", key.replace([':', ' '], "_"));
                    std::fs::write(f, &kt.decode_ptx).unwrap();
                }
                for (x, ptx, base_ptx) in [
                    ("plain", &kt.decode_ptx, &kw.decode_ptx),
                    ("fused", &ft, &fw),
                    ("direct", &dt, &dw),
                ] {
                    assert_ne!(ptx, base_ptx, "{key} {x}: defer");
                    let n = |pat: &str| ptx.matches(pat).count();
                    let nb = |pat: &str| base_ptx.matches(pat).count();
                    // the same products and fences; S's wait, the previous P V's
                    // and the last P V's after the loop; one more barrier per tile
                    for pat in [
                        ".m64n64k16.",
                        "fence.proxy.async.shared::cta",
                        "cp.async.commit_group",
                    ] {
                        assert_eq!(n(pat), nb(pat), "{key} {x}: {pat}");
                    }
                    assert_eq!(n("wgmma.wait_group.sync.aligned 0"), 3, "{key} {x}");
                    assert_eq!(n("aligned 0; // P V of the tile before"), 1, "{key} {x}");
                    assert_eq!(n("bar.sync"), nb("bar.sync") + 1, "{key} {x}");
                    assert_eq!(n("mma.sync"), 0, "{key} {x}");
                    if let Some(ptxas) = &ptxas {
                        // without a wgmma serialization warning (C75xx)
                        let err = ptxas_accepts(ptxas, "wgmma", &format!("{key} {x} defer"), ptx);
                        assert!(!err.contains("C75"), "{key} {x} defer: {err}");
                    }
                }
            }
            if rows != 64 {
                assert_eq!(kw.decode_ptx, k0.decode_ptx, "{key}: not at {rows} rows");
                assert_eq!(fw, f0, "{key}: fused, not at {rows} rows");
                assert_eq!(dw, d0, "{key}: direct, not at {rows} rows");
                continue;
            }
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                let f = |t: &str| format!("{dir}/{t}_{}.ptx", key.replace([':', ' '], "_"));
                std::fs::write(f("sync"), &k0.decode_ptx).unwrap();
                std::fs::write(f("wgmma"), &kw.decode_ptx).unwrap();
            }
            for (x, ptx) in [("plain", &kw.decode_ptx), ("fused", &fw), ("direct", &dw)] {
                let n = |pat: &str| ptx.matches(pat).count();
                assert_eq!(n("mma.sync"), 0, "{key} {x}");
                assert_eq!(n("ldmatrix"), 0, "{key} {x}");
                let (ns, npv) = (n(".m64n64k16."), n(&format!(".m64n{d}k16.")));
                // S: D / 16 k-steps of n64; P V: 4 k-steps of n = D (at D64 both n64)
                if d == 128 {
                    assert_eq!((ns, npv), (8, 4), "{key} {x}");
                } else {
                    assert_eq!(ns, 8, "{key} {x}");
                }
                assert_eq!(n("wgmma.wait_group.sync.aligned 0"), 2, "{key} {x}");
                assert_eq!(n("fence.proxy.async.shared::cta"), 2, "{key} {x}");
                assert!(ptx.contains(".align 1024"), "{key} {x}");
                if let Some(ptxas) = &ptxas {
                    ptxas_accepts(ptxas, "wgmma", &format!("{key} {x}"), ptx);
                }
            }
            // the mma.sync kernel keeps its products
            assert_eq!(k0.decode_ptx.matches("wgmma").count(), 0, "{key}");
            // sm_80 ignores the bit
            let a80 = |c: u32| {
                let o8 = DecodeOptions {
                    arch: Arch::Sm80,
                    copy: c,
                    ..o
                };
                emit_decode_mma(p, &o8).unwrap().decode_ptx
            };
            assert_eq!(a80(ow.copy), a80(o.copy), "{key}: sm_80");
        }
        // bits without a meaning are refused
        let o = DecodeOptions {
            arch: Arch::Sm90,
            d: 128,
            input: InputType::Bf16,
            rows: 64,
            paged: false,
            copy: COPY_BITS + 1,
        };
        let e = emit_decode_mma(&example("dense"), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("copy bits"), "{e}");
    }

    /// [`COPY_WGMMA_WG2`]: at 64 rows on sm_90 (D128 and D64, both layouts, every example)
    /// the plain kind has 256 threads (`.maxntid 256`, `.minnctapersm 2`), S on n32 (one
    /// key half per warpgroup: D / 16 `m64n32k16`), P V over 32 keys (2 k-steps), the
    /// same fences and waits and no `mma.sync`; the shared memory and the combine kernel
    /// unchanged; ptxas 13 (`ATTNC_PTXAS`) accepts it without a wgmma serialization
    /// warning and within 128 registers (two CTAs per SM). Ignored (byte-identical PTX,
    /// 128 threads) by the fused kinds, below 64 rows, without [`COPY_WGMMA`], with
    /// [`COPY_TMA`] (paged), [`COPY_STEAL`] and [`COPY_STREAM`]; it replaces
    /// [`COPY_WGMMA_DEFER`].
    #[test]
    fn mma_decode_wgmma_wg2() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let base = COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE | COPY_BALANCED;
        for (ex, (rows, d, paged, input)) in crate::test_matrix::cases(
            &[
                "dense",
                "causal",
                "sliding_window",
                "document_causal",
                "softcap",
            ],
            &[
                (64, 128, false, InputType::Bf16),
                (64, 128, true, InputType::Bf16),
                (64, 64, false, InputType::F16),
                (64, 64, true, InputType::Bf16),
                (16, 128, false, InputType::Bf16),
                (32, 128, true, InputType::Bf16),
            ],
        ) {
            let p = &example(ex);
            let ow = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input,
                rows,
                paged,
                copy: base | COPY_WGMMA,
            };
            let o2 = DecodeOptions {
                copy: ow.copy | COPY_WGMMA_WG2,
                ..ow
            };
            let key = format!("{ex} {}", o2.key());
            let (kw, k2) = (
                emit_decode_mma(p, &ow).unwrap(),
                emit_decode_mma(p, &o2).unwrap(),
            );
            assert_eq!(k2.combine_ptx, kw.combine_ptx, "{key}: combine");
            assert_eq!(k2.smem_bytes, kw.smem_bytes, "{key}: shared memory");
            assert_eq!(kw.threads, THREADS, "{key}");
            // the fused kinds (merging, one-split) ignore it
            assert_eq!(
                emit_decode_mma_fused(p, &o2).unwrap(),
                emit_decode_mma_fused(p, &ow).unwrap(),
                "{key}: fused"
            );
            let (od, owd) = (
                DecodeOptions {
                    copy: o2.copy | COPY_DIRECT,
                    ..o2
                },
                DecodeOptions {
                    copy: ow.copy | COPY_DIRECT,
                    ..ow
                },
            );
            assert_eq!(decode_ptx(p, &od), decode_ptx(p, &owd), "{key}: direct");
            // without COPY_WGMMA, or on sm_80, the bit means nothing
            let plain = |c: u32, arch: Arch| {
                let x = DecodeOptions {
                    arch,
                    copy: c,
                    ..ow
                };
                let k = emit_decode_mma(p, &x).unwrap();
                (k.decode_ptx, k.threads)
            };
            assert_eq!(
                plain(base | COPY_WGMMA_WG2, Arch::Sm90),
                plain(base, Arch::Sm90),
                "{key}: without q"
            );
            // COPY_WGMMA_WG2_REGS means nothing without v
            assert_eq!(
                plain(ow.copy | COPY_WGMMA_WG2_REGS, Arch::Sm90),
                plain(ow.copy, Arch::Sm90),
                "{key}: w without v"
            );
            assert_eq!(
                plain(o2.copy, Arch::Sm80),
                plain(ow.copy, Arch::Sm80),
                "{key}: sm_80"
            );
            if paged {
                // COPY_TMA keeps its loop
                assert_eq!(
                    plain(o2.copy | COPY_TMA, Arch::Sm90),
                    plain(ow.copy | COPY_TMA, Arch::Sm90),
                    "{key}: tma"
                );
            }
            // COPY_WGMMA_WG2_REGS: the same kernel with a register cap
            let or = DecodeOptions {
                copy: o2.copy | COPY_WGMMA_WG2_REGS,
                ..o2
            };
            let kr = emit_decode_mma(p, &or).unwrap();
            if rows != 64 {
                assert_eq!(k2.decode_ptx, kw.decode_ptx, "{key}: not at {rows} rows");
                assert_eq!(kr.decode_ptx, kw.decode_ptx, "{key}: w not at {rows} rows");
                assert_eq!(k2.threads, THREADS, "{key}");
                continue;
            }
            assert_eq!(kr.threads, THREADS_WG2, "{key}");
            assert!(kr.decode_ptx.contains(".maxnreg 112\n"), "{key}");
            assert!(!k2.decode_ptx.contains(".maxnreg"), "{key}");
            assert_eq!(
                kr.decode_ptx.replace(".maxnreg 112\n", ""),
                k2.decode_ptx,
                "{key}: w only caps the registers"
            );
            assert_eq!(k2.threads, THREADS_WG2, "{key}");
            // it replaces COPY_WGMMA_DEFER
            assert_eq!(
                plain(o2.copy | COPY_WGMMA_DEFER, Arch::Sm90),
                (k2.decode_ptx.clone(), THREADS_WG2),
                "{key}: defer"
            );
            if let Some(ptxas) = &ptxas {
                // (document-causal's per-element document lookups spill a few
                // words under the cap: allowed there)
                let spills = ex == "document_causal";
                let regs = ptxas_regs(ptxas, &format!("{key} w"), &kr.decode_ptx, spills);
                eprintln!("{key} w: {regs} registers");
                assert!(regs <= WG2_REGS, "{key} w: {regs} registers");
            }
            let ptx = &k2.decode_ptx;
            if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                let f = format!("{dir}/wg2_{}.ptx", key.replace([':', ' '], "_"));
                std::fs::write(f, ptx).unwrap();
                // the combine kernels that run beside it (with and without u)
                let ou = DecodeOptions {
                    copy: o2.copy | COPY_COMBINE_ROWS,
                    ..o2
                };
                let f = format!("{dir}/combine_{}.ptx", key.replace([':', ' '], "_"));
                std::fs::write(f, &k2.combine_ptx).unwrap();
                let f = format!("{dir}/combine_u_{}.ptx", key.replace([':', ' '], "_"));
                std::fs::write(f, emit_decode_mma(p, &ou).unwrap().combine_ptx).unwrap();
            }
            let n = |pat: &str| ptx.matches(pat).count();
            let nw = |pat: &str| kw.decode_ptx.matches(pat).count();
            assert!(ptx.contains(".maxntid 256\n"), "{key}");
            assert!(ptx.contains(".minnctapersm 2"), "{key}");
            assert!(kw.decode_ptx.contains(".maxntid 128\n"), "{key}");
            assert_eq!(n("mma.sync"), 0, "{key}");
            // S: D / 16 k-steps of n32 (one key half); P V: 2 k-steps of n = D
            assert_eq!(n(".m64n32k16."), (d / 16) as usize, "{key}: S");
            assert_eq!(n(&format!(".m64n{d}k16.")), 2, "{key}: P V");
            for pat in [
                "wgmma.wait_group.sync.aligned 0",
                "fence.proxy.async.shared::cta",
                "cp.async.commit_group",
                "bar.sync",
            ] {
                assert_eq!(n(pat), nw(pat), "{key}: {pat}");
            }
            if let Some(ptxas) = &ptxas {
                let regs = ptxas_regs(ptxas, &key, ptx, false);
                eprintln!("{key}: {regs} registers");
                assert!(regs <= 128, "{key}: {regs} registers");
            }
        }
    }

    /// `ptxas -v` on `ptx` (sm_90a): accepted, without a wgmma serialization warning
    /// (C75xx) and, unless `spills`, without spills; the registers it uses.
    fn ptxas_regs(ptxas: &str, key: &str, ptx: &str, spills: bool) -> u32 {
        let err = ptxas_run(ptxas, "wg2", key, ptx, &["-v"]);
        assert!(!err.contains("C75"), "{key}: {err}");
        assert!(
            spills || err.contains(" 0 bytes spill stores"),
            "{key}: spills: {err}"
        );
        err.split("Used ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{key}: no register count in {err}"))
    }

    /// [`COPY_COMBINE_ROWS`]: the combine kernel only (the decode kernels' PTX
    /// byte-identical, plain and fused): grid `(1, Hq, B)`, no shared memory and no
    /// barrier (each warp merges its rows alone), O and LSE still stored; ptxas accepts it
    /// (`ATTNC_PTXAS`).
    #[test]
    fn mma_decode_combine_rows() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        let p = &example("dense");
        let base = COPY_EARLY | COPY_IDS_LATE | COPY_FULL_TILE | COPY_BALANCED | COPY_WGMMA;
        for (rows, d, input, extra) in [
            (64, 128, InputType::Bf16, 0),
            (16, 128, InputType::Bf16, COPY_COMBINE_TRIGGER),
            (32, 64, InputType::F16, COPY_COMBINE_WIDE),
        ] {
            let o = DecodeOptions {
                arch: Arch::Sm90,
                d,
                input,
                rows,
                paged: false,
                copy: base | extra,
            };
            let ou = DecodeOptions {
                copy: o.copy | COPY_COMBINE_ROWS,
                ..o
            };
            let key = ou.key();
            let (k0, ku) = (
                emit_decode_mma(p, &o).unwrap(),
                emit_decode_mma(p, &ou).unwrap(),
            );
            assert_eq!(
                ku.decode_ptx, k0.decode_ptx,
                "{key}: the decode kernel took it"
            );
            assert_eq!(
                emit_decode_mma_fused(p, &ou).unwrap(),
                emit_decode_mma_fused(p, &o).unwrap(),
                "{key}: the fused kernel took it"
            );
            assert_ne!(ku.combine_ptx, k0.combine_ptx, "{key}");
            let n = |ptx: &str, pat: &str| ptx.matches(pat).count();
            assert_eq!(n(&ku.combine_ptx, "bar.sync"), 0, "{key}");
            // (the dynamic shared memory is declared, never read or written)
            assert_eq!(n(&ku.combine_ptx, "ld.shared"), 0, "{key}");
            assert_eq!(n(&ku.combine_ptx, "st.shared"), 0, "{key}");
            assert!(n(&k0.combine_ptx, "st.shared") > 0, "{key}");
            assert!(n(&k0.combine_ptx, "bar.sync") > 0, "{key}");
            // O (16-bit) and LSE stored, the partials read; the trigger / wait kept
            let stores = |ptx: &str| {
                let mut v: Vec<String> = ptx
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("st.global"))
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            assert_eq!(stores(&ku.combine_ptx), stores(&k0.combine_ptx), "{key}");
            assert_eq!(stores(&ku.combine_ptx).len(), 2, "{key}: O and LSE");
            for pat in ["griddepcontrol.wait", "griddepcontrol.launch_dependents"] {
                assert_eq!(
                    n(&ku.combine_ptx, pat),
                    n(&k0.combine_ptx, pat),
                    "{key} {pat}"
                );
            }
            let sp = |x: &DecodeOptions| {
                super::super::decode::spec(p, KernelKind::DecodeCombine, &x.ptx_options()).unwrap()
            };
            let (s0, su) = (sp(&o), sp(&ou));
            assert_eq!(s0.grid, [GridDim::QRows, GridDim::Heads, GridDim::Batches]);
            assert_eq!(su.grid, [GridDim::One, GridDim::Heads, GridDim::Batches]);
            assert_eq!(su.smem_bytes, 0, "{key}");
            assert_eq!((su.params, su.threads), (s0.params, s0.threads), "{key}");
            if let Some(ptxas) = &ptxas {
                let err = ptxas_accepts(ptxas, "combine_rows", &key, &ku.combine_ptx);
                assert!(!err.contains("warning"), "{key}: {err}");
            }
        }
    }

    /// The one-split kernel ([`COPY_DIRECT`] on the fused kind): generates for every
    /// example's rows / D / layout, with and without [`COPY_EARLY`]; writes O (16-bit)
    /// and LSE itself: no partials' stores of f32 O, no count (`atom`), one
    /// `griddepcontrol.wait`, after the prologue's copies with `COPY_EARLY`; the plain
    /// kind ignores the bit (byte-identical PTX). `ATTNC_DECODE_PTX_DIR` / `ATTNC_PTXAS`
    /// as in [`mma_decode_copy_variants`].
    #[test]
    fn mma_decode_direct() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for (ex, (rows, d)) in crate::test_matrix::cases(
            &["dense", "causal", "alibi"],
            &[(16, 128), (64, 128), (32, 64)],
        ) {
            let p = &example(ex);
            for paged in [false, true] {
                for copy in [
                    COPY_DIRECT,
                    COPY_DIRECT | COPY_EARLY,
                    COPY_BITS & !COPY_PAGE_BASE & !COPY_TMA & !COPY_IDS_LATE,
                ] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy,
                    };
                    let key = format!("{} {}", p.name, o.key());
                    let ptx = emit_decode_mma_fused(p, &o).unwrap();
                    let plain = emit_decode_mma(p, &o).unwrap().decode_ptx;
                    let without = DecodeOptions {
                        copy: copy & !COPY_DIRECT,
                        ..o
                    };
                    assert_eq!(
                        plain,
                        emit_decode_mma(p, &without).unwrap().decode_ptx,
                        "{key}: the plain kind took COPY_DIRECT"
                    );
                    if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                        let f = format!("{dir}/direct_{}.ptx", key.replace([':', ' '], "_"));
                        std::fs::write(f, &ptx).unwrap();
                    }
                    if let Some(ptxas) = &ptxas {
                        ptxas_accepts(ptxas, "direct", &key, &ptx);
                    }
                    let lines: Vec<&str> = ptx.lines().map(str::trim).collect();
                    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
                    assert_eq!(count("atom"), 0, "{key}: a count in the one-split kernel");
                    assert_eq!(count("st.global.b32"), 1, "{key}: LSE only (no partials)");
                    assert!(count("st.global.b16") > 0, "{key}: no 16-bit O stores");
                    assert_eq!(count("griddepcontrol.wait"), 1, "{key}");
                    let at = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
                    let early = at("griddepcontrol.wait") > at("cp.async.cg.shared.global");
                    assert_eq!(early, copy & COPY_EARLY != 0, "{key}");
                }
            }
        }
    }
}
