//! CUDA decoding with the split-KV kernels: when they apply, which of the two runs, how
//! the launch is shaped, and the host side of one call.
//!
//! In: the binding's options, the checked decode shape, host tensors, the reachable
//! range of each sequence (`cpu::sequences`, from the mask's block structure over logical
//! positions: closed form, params or summaries; a sliding window reaches only its window)
//! and the bindings of the original program. Out: `O`, `LSE` (f32), or the device time.
//!
//! The kernels apply in fast mode to Lq <= [`MAX_LQ`], D = Dv in {32, 64, 128, 256},
//! bf16/f16, and to every Lq (chunked prefill: 17..thousands of new rows against the
//! cache) at D = Dv in {64, 128}, where the tensor-core kernel takes the G x Lq packed
//! rows of a kv head in row groups of 64 (a grid dimension; each row group reads the kv
//! head's reachable range, the union over its rows, the mask applied per element) and
//! the splits fill the GPU as for decoding; everything else (checked mode, Lq > 16 at
//! D 32 / 256) takes the prefill path (`cuda.rs`). Chunked prefill measured on an H200
//! (session 10, bf16 D128 B8 Hq32 Hkv8, dense, µs, SDPA flash / cuDNN in the same call):
//! Lq 64 Lkv 8192 268.6 (386.4 / 204.9), Lq 512 Lkv 32768 7664.7 (6396.0 / 3439.8): the
//! kernel is bound by mma.sync (~260-290 TFLOP/s), not by K/V; on wgmma since session 25
//! (`decode_mma::COPY_WGMMA` on sm_90): 1.30-1.37x (Lq 512 Lkv 32768 5386.0 µs, ~408
//! TFLOP/s; see [`copy_for`]).
//!
//! Which kernel ([`choose`]): the tensor-core kernel (`KernelKind::DecodeMma`: the R = G
//! x Lq packed rows of a kv head in m16 tiles, K/V through a cp.async ring, mma.sync)
//! when D is 64 or 128, for every R (it pads R up to 16 rows; the tensor cores are idle
//! enough that the padding costs nothing in a kernel bound by HBM); else the SIMT kernel
//! (`KernelKind::Decode`: registers only, one lane group per key; D 32 and 256).
//! Measured on an H200 (bf16, D128, Hq32 Hkv8, dense, contiguous, same device call):
//! B8 Lkv32768 Lq1 (R 4) 241.9 µs against SIMT 416.8, Lq4 (R 16) 242.3 against 1683.1,
//! Lq16 (R 64) 268.7 against 5703.6; B64 Lkv8192 Lq1 479.9 against 764.8; B1 Lkv131072
//! Lq1 133.8 against 247.3 (SDPA cuDNN: 241.9, 755.7, 785.1, 471.1, 127.8). Session 5
//! (combine over threads, another call): B1 Lkv131072 131.9 µs (cuDNN 130.3); 66 or 132
//! splits instead of the chosen 33: 136.0, 141.5; B8 Lq16 8 splits instead of 4: slower.
//! The binding's [`DecodeTuning`] (`BindOptions::decode`; by default the `ATTNC_DECODE_*`
//! variables, read once per process) overrides the choices (benchmarks, tests): `kernel`
//! (`mma` only where the kernel takes the head dim), `splits` (the tensor-core kernel's
//! split count), `max_rows` (caps its rows per CTA; Lq16 at 32 rows: 306.0 µs against
//! 272.6 at 64, session 6), `fused_combine` (its fused variant, the combine folded in:
//! off by default, see [`fused`]).
//!
//! Launches (sm_90, programmatic dependent launch; `cuda/decode.rs`): the combine kernel
//! under the decode kernel's tail (its CTAs scheduled while the last decode CTAs run,
//! waiting on the SMs for the grid's completion), and the decode kernel of a host-tensor
//! call under the previous kernel's tail (it waits for that grid before touching
//! memory; a previous call's combine lets it be scheduled early, so consecutive calls
//! overlap a launch). Measured on an H200 (session 8, one call, same inputs, µs,
//! combine after the decode kernel / under its tail / and the decode kernel chained,
//! SDPA cuDNN in the same call): B64 Lkv8192 Lq1 492.3 / 491.9 / 487.2 (cuDNN 485.1),
//! B1 Lkv131072 Lq1 131.9 / 130.2 / 128.3 (129.9), B8 Lkv32768 Lq1 247.0 / 247.9 / 247.7
//! (247.0): chained is the default (`DecodeTuning::serial_decode`, `serial_combine`
//! turn each off; the caller-buffer path chains the combine only). A host-tensor call
//! with one split (B64 Lkv8192 Lq1, chunked prefill with many row groups) launches no
//! combine kernel: the one-split form of the fused kind writes O and LSE itself
//! ([`COPY`], `decode_mma::COPY_DIRECT`, since session 12).
//!
//! Rows per CTA: SIMT, every row of a kv head up to [`MAX_ROWS`] (K/V read once), else
//! groups of [`MAX_ROWS`]; tensor cores, 16 M rows (M = 1, 2 or 4 m-tiles: the smallest
//! power of two covering R, at most 4; R > 64 takes several row groups). Splits per
//! (sequence, kv head, row group): SIMT, enough CTAs for [`TARGET_CTAS`], each at least
//! [`MIN_CHUNK`] positions; tensor cores, the count that minimizes
//! `waves x (tiles per split + MMA_FILL_TILES)` with [`MMA_SLOTS`] resident CTAs (a
//! wave of equal splits keeps every SM streaming; each split pays its pipeline fill).

use crate::cuda::CudaDevice;
use crate::cuda::decode::{DecodeGeometry, DecodeModule};
use crate::error::{Error, Result};
use crate::options::DecodeTuning;
use crate::tensor::{DType, Tensor};
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::InputType;
use attnc_compiler::backend::llvm::decode::DecodeOptions;
use attnc_compiler::backend::llvm::decode_mma;
use attnc_compiler::decode::{CacheLayout, DecodeShape};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;

/// Largest Lq the SIMT kernel takes (the tensor-core kernel takes every Lq: above this,
/// chunked prefill, it is the only split-KV kernel that runs).
pub(crate) const MAX_LQ: usize = 16;
/// Most CTAs along the grid's y (Hkv x row groups) and z (B) dimensions.
const MAX_GRID_YZ: usize = 65535;
/// Largest number of rows one CTA of the SIMT kernel holds in registers.
pub(crate) const MAX_ROWS: usize = 8;
/// Resident CTAs of the tensor-core kernel on an H200: 132 SMs x 2 (shared memory).
const MMA_SLOTS: usize = 132 * 2;
/// Resident CTAs of the tensor-core kernel for `shape` under `tuning`: [`MMA_SLOTS`], or
/// one per SM when its 64-row D128 kernel has `decode_mma::COPY_WGMMA_DEEP`'s ring (208
/// KiB of shared memory; on sm_80, which ignores the bit, the split count is then half
/// the usual).
fn mma_slots(shape: &DecodeShape, tuning: &DecodeTuning) -> usize {
    let deep = decode_mma::COPY_WGMMA | decode_mma::COPY_WGMMA_DEEP;
    if shape.d == 128
        && copy_for(shape, tuning) & deep == deep
        && rows_per_cta(shape, Kernel::Mma, tuning) == 64
    {
        MMA_SLOTS / 2
    } else {
        MMA_SLOTS
    }
}
/// The pipeline fill of one split, in tiles of the tensor-core kernel.
const MMA_FILL_TILES: usize = 4;
/// The tensor-core kernel's K/V copy variant (`decode_mma::COPY_*` bits;
/// `DecodeTuning::copy` overrides it): [`decode_mma::COPY_EARLY`], the prologue's reads
/// issued before `griddepcontrol.wait`, so that a chained call's first tiles load while
/// the previous call's combine kernel runs. Measured on an H200 in session 11 (one call,
/// 0 / d / e timed in 5 rotated rounds, bf16 D128 Hq32 Hkv8 dense, µs, SDPA cuDNN of the
/// same call): B8 Lkv32768 Lq1 ~243.2 / 240.5 (cuDNN 243.5), B1 Lkv131072 125.9 / 124.0
/// (126.7; 4.33 TB/s), B64 Lkv8192 477.0 / 476.4 (473.1); paged 16 likewise; a call
/// after a kernel that does not let it start early (not chained) is unchanged.
/// Session 10 (0 / a / b / c / abc): none faster; `d` (`cp.async` with `.L2::256B`) is
/// 8-10% slower (session 11): docs/performance.md, "Session 11 (decode)".
/// With [`decode_mma::COPY_DIRECT`] (session 12): a host-tensor call whose geometry has
/// one split runs the fused kind in its one-split form, which writes O and LSE itself
/// (no partials, no combine kernel; and a chained call's decode kernel then starts under
/// the previous call's decode kernel's tail). Measured on an H200 (one call, e / ef in 7
/// rotated rounds, SDPA cuDNN of the same call, µs): B64 Lkv8192 Lq1 (one split, two
/// waves) 486.2 / 476.8 (cuDNN 486.2), paged 16 495.6 / 484.7; chunked prefill B8 Lq64
/// Lkv8192 (one split per row group) 277.0 / 256.0; calls with several splits
/// (B8 Lkv32768 Lq1: 245.5 / 246.2) run the same kernels as before.
/// With [`decode_mma::COPY_IDS_LATE`] (session 14): a paged kernel keeps the next tile's
/// page ids as loaded and clamps them where that tile's copy reads them, so no warp waits
/// for the page-table load inside the loop (contiguous caches: the same kernel). Measured
/// on an H200 (session 14's final check, `ef` / `efi` in the same rotated rounds, paged vs
/// contiguous): B8 Lkv32768 Lq16 page 16 +7.2% / +2.8%, page 128 +4.6% / +2.5%; Lq4 page 16
/// +2.0% / +1.0%; Lq1 +1.5% / +0.6%; sliding 4096 Lq1 +4.5% / +2.9%; contiguous unchanged.
/// [`decode_mma::COPY_COMBINE_TRIGGER`] (`j`) was no faster alone in session 15. Session 15 also
/// measured (same call, same rotated rounds, B8 Lkv32768 Lq1, µs): 8 or 16 splits
/// instead of the chosen 4, 249.0 / 251.3 against 244.7; the fused kernel chained
/// (`fused_combine`) 249.4 against 244.6 (Lq4 256.1 / 247.6, B1 Lkv131072 133.3 / 126.5).
/// With [`decode_mma::COPY_FULL_TILE`] (session 16): a tile on which every element is
/// kept (below the split's end, every row of the CTA live, the mask's exact linear form
/// true on the whole tile: no mask, causal, sliding window, ...) takes its logits without
/// the per-element tests, bit for bit the same values. Measured on an H200 (session 16,
/// `efi` / `efik` in the same 7 rotated rounds, B8 Hq32 Hkv8 Lkv32768 Lq16 bf16 D128, µs):
/// causal contiguous 330.6 / 298.7, paged 16 +7.9% / +2.4%, paged 128 +5.6% / +0.8% of
/// contiguous; dense contiguous 315.3 / 298.2, paged +4.2% / +4.5% and +2.9% / +3.6%;
/// Lq1, Lq4, B64 Lkv8192, B1 Lkv131072 within 0.2% (3 rounds).
/// With [`decode_mma::COPY_COMBINE_TRIGGER`] and [`decode_mma::COPY_BALANCED`] (`jo`,
/// session 19: the combine kernel lets the next call's decode kernel launch before its
/// wait; each range cut into splits of `floor(T / splits)` or one more tile). Measured on
/// an H200 (two calls, rotated rounds, bf16 D128 Hq32 Hkv8 dense, µs, `efik` / `efikj` /
/// `efikjo`): B1 Lkv131072 Lq1 124.2 / 123.4 / 122.9 (7 rounds; `efiko` 124.5, SDPA cuDNN
/// 128.2) and 124.6 / 124.2 / 123.5 (9 rounds, ranges 124.6-125.0 against 123.2-123.6);
/// B8 Lkv32768 Lq1 241.1 / 240.7 / 240.8, Lq4 241.8 / 242.2 / 242.1, Lq16 281.2 / 280.2 /
/// 277.6 (5 rounds), B8 Lq1 paged 16 +1.4% / +2.0% / +1.5% of contiguous (243.0 / 244.9 /
/// 243.4). Not in it: [`decode_mma::COPY_STREAM`] (`p`, splits that continue their
/// streams, not bit-reproducible): B1 125.7 / 127.6 (chunks of 4 / 8 tiles), slower.
/// With [`decode_mma::COPY_WGMMA`] (`q`, session 20: the products on wgmma in the 64-row
/// kernel, sm_90; decode calls, and chunked prefill since session 25: [`copy_for`]).
/// Measured on an H200 (one
/// call, bf16 D128 Hq32 Hkv8 B8 Lkv32768 Lq16, µs, `efikjo` / `efikjoq` in the same 15
/// interleaved rounds, median [range]): dense contiguous 287.1 [283.4-294.6] / 278.9
/// [277.9-279.5]; paged 16 306.7 (+6.8% of contiguous) / 281.1 (+0.8%), paged 128 304.7
/// (+6.2%) / 278.4 (−0.2%); causal (7 rounds) 281.3 / 275.5, paged 16 +5.4% / +0.7%;
/// SDPA cuDNN 756.6 in the same call. Lq1 / Lq4 (16 rows) run the same kernels.
/// Not in it: [`decode_mma::COPY_WGMMA_ROWS32`] (`r`: Lq8's 32 rows in the 64-row wgmma
/// kernel): 269.6 against 255.8, slower.
const COPY: u32 = decode_mma::COPY_EARLY
    | decode_mma::COPY_DIRECT
    | decode_mma::COPY_IDS_LATE
    | decode_mma::COPY_FULL_TILE
    | decode_mma::COPY_COMBINE_TRIGGER
    | decode_mma::COPY_BALANCED
    | decode_mma::COPY_WGMMA;

/// The tensor-core kernel's copy bits for `shape`: `tuning.copy`, else [`COPY`], with
/// [`decode_mma::COPY_COMBINE_ROWS`] for 4 to [`MAX_LQ`] query rows. The one place the
/// default is resolved (`decode_options`, `rows_per_cta`, `mma_slots`).
///
/// Chunked prefill (Lq > [`MAX_LQ`]) runs [`decode_mma::COPY_WGMMA`] too since session 25
/// (it kept `mma.sync` until then, measured on decode calls only). Measured on an H200
/// (session 25 call 1, `attnc bench --decode`, bf16 D128 Hq32 Hkv8, dense, µs, `efikjo` /
/// `efikjoq`, two rounds each, SDPA cuDNN in the same call): B8 Lq64 Lkv8192 231.5, 231.2 /
/// 178.2, 178.0 (1.30x; cuDNN 203.8), Lq256 Lkv8192 904.7, 917.6 / 666.7, 681.4 (1.35x;
/// cuDNN 414.9), Lq512 Lkv8192 1861.3, 1839.2 / 1361.7, 1431.3, Lq512 Lkv32768 7175.1,
/// 7176.8 / 5387.0, 5386.0 (1.33x; cuDNN 3511.8), B1 Lq512 Lkv32768 857.8, 854.4 / 634.3,
/// 626.2; paged 16 likewise (955.5 / 728.8 at Lq256); causal Lq256 920.3 / 667.0. The
/// chunked tests (`gpu_decode_chunked_*`, `gpu_decode_caller_buffers`) pass with it.
///
/// [`decode_mma::COPY_COMBINE_ROWS`] (`u`, session 21; the combine kernel only: one CTA per
/// (query head, sequence), its four warps over the head's rows) measured on an H200
/// (session 22 call 1, one process, bf16 D128 Hq32 Hkv8 dense, µs, `efikjoq` / `efikjoqu`,
/// median of 9 (Lq16) or 5 rotated rounds): B8 Lkv32768 Lq16 contiguous 279.9 / 273.6, paged
/// 16 283.1 / 274.8; Lq4 247.8 / 244.5; the combine alone at Lq16 12.6 / 6.4 (4096 CTAs
/// against 256). At one row a CTA has one busy warp: B8 Lq1 244.9 / 242.4 but B1
/// Lkv131072 Lq1 (33 splits merged by one warp instead of four) 125.1 / 127.3, so not
/// below 4 rows; chunked prefill (hundreds of rows per head) keeps the per-row combine.
fn copy_for(shape: &DecodeShape, tuning: &DecodeTuning) -> u32 {
    match tuning.copy {
        Some(c) => c,
        None if shape.lq > MAX_LQ => COPY,
        None if shape.lq >= 4 => COPY | decode_mma::COPY_COMBINE_ROWS,
        None => COPY,
    }
}

/// The split-KV kernel that runs a call.
pub(crate) use crate::options::DecodeKernel as Kernel;

/// The kernel for `shape` under `tuning` (see the module docs).
pub(crate) fn choose(shape: &DecodeShape, tuning: &DecodeTuning) -> Kernel {
    let fits = [64, 128].contains(&shape.d);
    match tuning.kernel {
        // chunked prefill: the tensor-core kernel only (`applies`)
        _ if fits && shape.lq > MAX_LQ => Kernel::Mma,
        Some(Kernel::Simt) => Kernel::Simt,
        _ if fits => Kernel::Mma,
        _ => Kernel::Simt,
    }
}
/// CTAs a launch aims for (an H200 has 132 SMs; several CTAs per SM hide latency).
const TARGET_CTAS: usize = 132 * 8;
/// Fewest positions per split.
const MIN_CHUNK: usize = 256;

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        message: e.to_string(),
    }
}

/// Whether the split-KV kernel runs this call: Lq <= [`MAX_LQ`] at D 32, 64, 128 and 256,
/// any Lq (chunked prefill: the G x Lq packed rows of a kv head in row groups of up to 64,
/// a grid dimension) at D 64 and 128, where the tensor-core kernel runs; its grid's
/// Hkv x row groups and B within [`MAX_GRID_YZ`] (counted at 16 rows per CTA, the
/// fewest). The tensor-core kernel addresses within a page in 32 bits: a page's bytes,
/// `page_size x Hkv x D x 2`, must fit.
pub(crate) fn applies(shape: &DecodeShape, dtype: DType, checked: bool) -> bool {
    let page_fits = match shape.layout {
        CacheLayout::Paged { page_size, .. } => {
            page_size * shape.hkv * shape.d * 2 <= u32::MAX as usize
        }
        CacheLayout::Contiguous { .. } => true,
    };
    let rows = (shape.hq / shape.hkv.max(1)) * shape.lq;
    let grid_fits = shape.hkv * rows.div_ceil(16) <= MAX_GRID_YZ && shape.b <= MAX_GRID_YZ;
    !checked
        && (shape.lq <= MAX_LQ || [64, 128].contains(&shape.d))
        && grid_fits
        && shape.d == shape.dv
        && [32, 64, 128, 256].contains(&shape.d)
        && matches!(dtype, DType::BF16 | DType::F16)
        && page_fits
}

/// The kernels of a binding: one module per layout, taken from the JIT cache on first use.
pub(crate) struct GpuDecode {
    /// The binding's plan (of the original program: the kernels evaluate the mask and
    /// score at logical positions themselves).
    plan: Plan,
    /// The binding's overrides of the automatic choices.
    tuning: DecodeTuning,
    /// `[contiguous, paged]` of the SIMT kernel, then of the tensor-core kernel, then of
    /// the tensor-core kernel that steals work (`decode_mma::COPY_STEAL`: host-tensor
    /// calls only, see [`steal_geometry`]).
    ///
    /// Then the same four for caller-buffer calls ([`Self::caller_module`]: kernels that
    /// compute each sequence's range themselves, `decode::COPY_DEVICE_RANGES`).
    modules: [Option<DecodeModule>; 10],
    /// The last call [`Self::time_ms`] uploaded, with what identifies its inputs: timing
    /// the same inputs again (the rounds of `attnc bench --decode`) uploads nothing. Its
    /// device buffers live until the next timed call with other inputs or the binding's
    /// end.
    timed: Option<(TimedKey, crate::cuda::decode::DecodeProblem)>,
    /// The per-CTA records of the last timed call's last launch when its kernel records
    /// them (`decode_mma::COPY_TRACE`, `ATTNC_DECODE_COPY` letter `l`).
    pub(crate) trace: Option<Vec<super::CtaTrace>>,
}

/// What identifies a timed call's inputs: the shape, the host tensors' addresses and
/// sizes (q, k, v; a timing does not depend on their values), the page table, lengths,
/// ranges, the scale's bits and the bindings.
type TimedKey = (
    DecodeShape,
    [(usize, usize); 3],
    Vec<i32>,
    Vec<i32>,
    Vec<i32>,
    u32,
    Bindings,
);

impl GpuDecode {
    pub(crate) fn new(plan: Plan, tuning: DecodeTuning) -> Self {
        GpuDecode {
            plan,
            tuning,
            modules: Default::default(),
            timed: None,
            trace: None,
        }
    }

    /// The kernel that runs `shape` in this binding.
    pub(crate) fn kernel(&self, shape: &DecodeShape) -> Kernel {
        choose(shape, &self.tuning)
    }

    pub(crate) fn module(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        dtype: DType,
    ) -> Result<&DecodeModule> {
        self.module_with(dev, shape, dtype, false)
    }

    /// [`Self::module`] for caller-buffer calls (lengths only on the device): kernels
    /// that compute each sequence's reachable keys and clamped length from `seq_lens`
    /// themselves (`decode::COPY_DEVICE_RANGES`), so that no decode-ranges kernel runs
    /// before them.
    pub(crate) fn caller_module(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        dtype: DType,
    ) -> Result<&DecodeModule> {
        self.module_with(dev, shape, dtype, true)
    }

    fn module_with(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        dtype: DType,
        device_ranges: bool,
    ) -> Result<&DecodeModule> {
        let paged = matches!(shape.layout, CacheLayout::Paged { .. });
        let kernel = self.kernel(shape);
        let tuning = self.tuning;
        let at = paged as usize + 2 * (kernel == Kernel::Mma) as usize;
        let slot = &mut self.modules[if device_ranges { 6 + at } else { at }];
        if slot.is_none() {
            let mut opts = decode_options(dev, shape, dtype, kernel, &tuning);
            if device_ranges {
                opts.copy |= attnc_compiler::backend::llvm::decode::COPY_DEVICE_RANGES;
            }
            let kind = match kernel {
                Kernel::Simt => KernelKind::Decode,
                Kernel::Mma => KernelKind::DecodeMma,
            };
            let jit = crate::exec::cuda::cuda_jit_of(dev)?;
            *slot =
                Some(DecodeModule::load_kind(dev, jit, &self.plan, &opts, kind).map_err(backend)?);
        }
        slot.as_ref().ok_or_else(|| backend("decode module"))
    }

    /// [`Self::module`], with the fused kernel loaded when `fused` (tensor cores only);
    /// with `steal` (not `fused`), the tensor-core kernel with `decode_mma::COPY_STEAL`
    /// (or `COPY_STREAM` when the copy has that and not the former).
    fn module_for(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        dtype: DType,
        fused: bool,
        steal: bool,
    ) -> Result<&DecodeModule> {
        let paged = matches!(shape.layout, CacheLayout::Paged { .. });
        if steal && !fused {
            let tuning = self.tuning;
            let slot = &mut self.modules[paged as usize + 4];
            if slot.is_none() {
                let mut opts = decode_options(dev, shape, dtype, Kernel::Mma, &tuning);
                // (`steal_geometry`: stealing when the copy has both)
                opts.copy |= if copy_for(shape, &tuning) & decode_mma::COPY_STEAL != 0 {
                    decode_mma::COPY_STEAL
                } else {
                    decode_mma::COPY_STREAM
                };
                let jit = crate::exec::cuda::cuda_jit_of(dev)?;
                *slot = Some(
                    DecodeModule::load_kind(dev, jit, &self.plan, &opts, KernelKind::DecodeMma)
                        .map_err(backend)?,
                );
            }
            return slot.as_ref().ok_or_else(|| backend("decode module"));
        }
        let plan = self.plan.clone();
        let tuning = self.tuning;
        let m = self.module(dev, shape, dtype)?;
        if fused && !m.has_fused() {
            let mut opts = decode_options(dev, shape, dtype, Kernel::Mma, &tuning);
            // the fused kind: the combine folded in (`fused_combine`), else the
            // one-split kernel writing O and LSE itself (`COPY_DIRECT`, see `fused`)
            if !tuning.fused_combine {
                opts.copy |= decode_mma::COPY_DIRECT;
            }
            let jit = crate::exec::cuda::cuda_jit_of(dev)?;
            let loaded = m
                .clone()
                .with_fused(dev, jit, &plan, &opts)
                .map_err(backend)?;
            self.modules[paged as usize + 2] = Some(loaded);
        }
        self.module(dev, shape, dtype)
    }

    /// Uploads one call; `ranges` has one `(lo, hi)` per sequence.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<(&DecodeModule, crate::cuda::decode::DecodeProblem)> {
        let geom = steal_geometry(
            shape,
            ranges,
            geometry(shape, ranges, scale, &self.tuning),
            &self.tuning,
        );
        let fused = fused(shape, &self.tuning, geom.splits);
        let (serial, chain) = (self.tuning.serial_combine, !self.tuning.serial_decode);
        let m = self.module_for(dev, shape, q.dtype(), fused, geom.steal_chunk > 0)?;
        let bits = |t: &Tensor| {
            t.to_u16_bits()
                .ok_or_else(|| backend("16-bit inputs expected"))
        };
        let mut p = m
            .upload(
                dev,
                geom,
                &bits(q)?,
                &bits(k)?,
                &bits(v)?,
                page_table,
                seq_lens,
                ranges,
                bind,
            )
            .map_err(backend)?;
        p.fused = fused;
        p.serial = serial;
        p.chain = chain;
        Ok((m, p))
    }

    /// Runs one call: O (as f32) and LSE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let dtype = q.dtype();
        let (m, p) = self.upload(
            dev, shape, scale, q, k, v, page_table, seq_lens, ranges, bind,
        )?;
        m.launch(dev, &p).map_err(backend)?;
        let (o, lse) = m.download(dev, &p).map_err(backend)?;
        let bytes: Vec<u8> = o.iter().flat_map(|x| x.to_le_bytes()).collect();
        let o = Tensor::from_bytes(vec![o.len()], dtype, bytes)
            .ok_or_else(|| backend("output size"))?
            .to_f32();
        Ok((o, lse))
    }

    /// Device milliseconds per call (inputs uploaded once).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn time_ms(
        &mut self,
        dev: &CudaDevice,
        shape: &DecodeShape,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
        iters: usize,
    ) -> Result<f64> {
        let at = |t: &Tensor| (t.bytes().as_ptr() as usize, t.bytes().len());
        let key = (
            *shape,
            [at(q), at(k), at(v)],
            page_table.to_vec(),
            seq_lens.to_vec(),
            ranges.to_vec(),
            scale.to_bits(),
            bind.clone(),
        );
        let p = match self.timed.take() {
            Some((k0, p)) if k0 == key => p,
            _ => {
                self.timed = None; // the previous inputs' buffers go first
                self.upload(
                    dev, shape, scale, q, k, v, page_table, seq_lens, ranges, bind,
                )?
                .1
            }
        };
        // COPY_TRACE (plain kind): the last launch's records, with each split's keys
        let traced = copy_for(shape, &self.tuning) & decode_mma::COPY_TRACE != 0
            && self.kernel(shape) == Kernel::Mma
            && !p.fused;
        let m = self.module_for(dev, shape, q.dtype(), p.fused, p.geom.steal_chunk > 0)?;
        let ms = m.time(dev, &p, iters).map_err(backend)?;
        let trace = if traced {
            let g = p.geom;
            let recs = m.trace(dev, &p).map_err(backend)?;
            Some(
                recs.into_iter()
                    .map(|([b, hk, rg, split], w)| {
                        let (lo, hi) = (ranges[2 * b as usize], ranges[2 * b as usize + 1]);
                        let (k0, k1) = g.split_keys(lo as i64, hi as i64, split);
                        let keys = (k1 - k0) as u32;
                        super::CtaTrace {
                            b,
                            kv_head: hk,
                            row_group: rg,
                            split,
                            keys,
                            sm: w[0],
                            t: [w[1], w[2], w[3], w[4], w[5]],
                        }
                    })
                    .collect(),
            )
        } else {
            None
        };
        self.trace = trace;
        self.timed = Some((key, p));
        Ok(ms)
    }
}

/// The decode kernels' options for `shape` and `dtype` on `dev` with `kernel`'s rows per
/// CTA.
fn decode_options(
    dev: &CudaDevice,
    shape: &DecodeShape,
    dtype: DType,
    kernel: Kernel,
    tuning: &DecodeTuning,
) -> DecodeOptions {
    DecodeOptions {
        arch: dev.arch(),
        d: shape.d as u32,
        input: if dtype == DType::F16 {
            InputType::F16
        } else {
            InputType::Bf16
        },
        rows: rows_per_cta(shape, kernel, tuning) as u32,
        paged: matches!(shape.layout, CacheLayout::Paged { .. }),
        // (COPY_DIRECT is a bit of the fused kind only, COPY_STEAL / COPY_STREAM of the
        // host-tensor calls' stealing / streaming kernel: `GpuDecode::module_for`)
        copy: match kernel {
            Kernel::Mma => {
                copy_for(shape, tuning)
                    & !(decode_mma::COPY_DIRECT | decode_mma::COPY_STEAL | decode_mma::COPY_STREAM)
            }
            Kernel::Simt => 0,
        },
    }
}

/// Rows per CTA of `kernel` (see the module docs); `tuning.max_rows` (16, 32 or 64) caps
/// the tensor-core kernel's (benchmarks: more row groups, each reading K/V).
fn rows_per_cta(shape: &DecodeShape, kernel: Kernel, tuning: &DecodeTuning) -> usize {
    let rows = (shape.hq / shape.hkv) * shape.lq;
    match kernel {
        Kernel::Simt => rows.min(MAX_ROWS),
        Kernel::Mma => {
            let mut natural = 16 * rows.div_ceil(16).next_power_of_two().min(4);
            // COPY_WGMMA_ROWS32 with COPY_WGMMA: 17..=32 rows in the 64-row wgmma kernel
            let both = decode_mma::COPY_WGMMA | decode_mma::COPY_WGMMA_ROWS32;
            if natural == 32 && copy_for(shape, tuning) & both == both {
                natural = 64;
            }
            match tuning.max_rows {
                Some(cap @ (16 | 32 | 64)) => natural.min(cap),
                _ => natural,
            }
        }
    }
}

/// Whether a host-tensor call runs the fused kernel (the combine folded into the
/// tensor-core kernel: `KernelKind::DecodeMmaFused`) rather than decode + combine: when
/// `tuning.fused_combine` (benchmarks, tests), or in its one-split form (below). The
/// merging fused kernel is off by default: measured on an H200
/// (session 6, same process, same inputs, µs, separate / fused) it gains ~0.5% at B8
/// Lkv32768 Lq1 (241.8 / 240.7) and B64 Lkv8192 (483.0 / 480.8) but loses at B1
/// Lkv131072 Lq1 (129.1 / 131.1: the merge runs after the last split, behind a fence and
/// an atomic), Lq4 (243.1 / 247.9) and Lq16 (272.6 / 297.0: 16 rows per warp in turn).
///
/// With [`decode_mma::COPY_DIRECT`] in the copy (the default, [`COPY`]; not with
/// `fused_combine`), a call whose geometry has one split (`splits`) runs the fused kind
/// in its one-split form: each CTA writes its rows' O and LSE, no partials and no
/// combine kernel. (The caller-buffer path keeps decode + combine.)
fn fused(shape: &DecodeShape, tuning: &DecodeTuning, splits: u32) -> bool {
    let direct = copy_for(shape, tuning) & decode_mma::COPY_DIRECT != 0 && splits == 1;
    (tuning.fused_combine || direct) && choose(shape, tuning) == Kernel::Mma
}

/// The launch geometry of a call.
pub(crate) fn geometry(
    shape: &DecodeShape,
    ranges: &[i32],
    scale: f32,
    tuning: &DecodeTuning,
) -> DecodeGeometry {
    let kernel = choose(shape, tuning);
    let rows = (shape.hq / shape.hkv) * shape.lq;
    let rpc = rows_per_cta(shape, kernel, tuning);
    let row_groups = rows.div_ceil(rpc);
    // (the tensor-core kernel's COPY_PAGE_PASS starts its splits at `lo` rounded down to
    // a tile, `decode::split_keys_from`: the span counts from there; the host's ranges
    // are whole tiles already)
    let page_pass = kernel == Kernel::Mma
        && matches!(shape.layout, CacheLayout::Paged { .. })
        && copy_for(shape, tuning) & (decode_mma::COPY_PAGE_PASS | decode_mma::COPY_TMA) != 0;
    let lo_mask = if page_pass {
        !(decode_mma::KV_TILE as i32 - 1)
    } else {
        !0
    };
    let span = ranges
        .chunks(2)
        .map(|r| (r[1] - (r[0] & lo_mask)).max(0) as usize)
        .max()
        .unwrap_or(0);
    let ctas = shape.b * shape.hkv * row_groups;
    let (splits, chunk) = match kernel {
        Kernel::Simt => {
            let splits = TARGET_CTAS
                .div_ceil(ctas.max(1))
                .min(span.div_ceil(MIN_CHUNK))
                .max(1);
            let chunk = span.div_ceil(splits).div_ceil(64) * 64;
            let chunk = chunk.max(64);
            (span.div_ceil(chunk).max(1), chunk)
        }
        Kernel::Mma => match tuning.splits {
            // benchmarks: a forced split count (tiles per split rounded up)
            Some(n) if n > 0 => {
                let tile = attnc_compiler::backend::llvm::decode_mma::KV_TILE as usize;
                let chunk = span.div_ceil(tile).max(1).div_ceil(n) * tile;
                (span.div_ceil(chunk).max(1), chunk)
            }
            _ => mma_splits(ctas, span, mma_slots(shape, tuning)),
        },
    };
    let (lkv_max, page_shift, max_pages, num_pages) = match shape.layout {
        CacheLayout::Contiguous { lkv_max } => (lkv_max, 0, 0, 0),
        CacheLayout::Paged {
            num_pages,
            page_size,
            max_pages,
        } => (0, page_size.trailing_zeros(), max_pages, num_pages),
    };
    DecodeGeometry {
        b: shape.b as u32,
        hq: shape.hq as u32,
        hkv: shape.hkv as u32,
        lq: shape.lq as u32,
        row_groups: row_groups as u32,
        splits: splits as u32,
        chunk: chunk as u32,
        split_ctas: splits as u32,
        steal_chunk: 0,
        balanced: kernel == Kernel::Mma && copy_for(shape, tuning) & decode_mma::COPY_BALANCED != 0,
        stream: false,
        lkv_max: lkv_max as u32,
        page_shift,
        max_pages: max_pages as u32,
        num_pages: num_pages as u32,
        scale,
    }
}

/// [`STEAL`]: by default the static splits take 80% of the longest range's tiles, the
/// rest goes in stolen splits of 8 tiles.
const STEAL: (u16, u16) = (80, 8);

/// `geom` of a host-tensor call with work stealing (`decode_mma::COPY_STEAL`) when the
/// copy has the bit (`ATTNC_DECODE_COPY` letter `n`), the tensor-core kernel runs with
/// decode + combine kernels (not `fused_combine`) and `geom` has several splits: the
/// same CTAs (`split_ctas` = its splits) take `pct`% of the longest range's tiles in
/// their static splits (`tuning.steal` = `(pct, tiles)`, [`STEAL`] by default), the rest
/// is cut into stolen splits of `tiles` tiles each. Else `geom` (the caller-buffer path
/// never steals: its workspace has no counter).
fn steal_geometry(
    shape: &DecodeShape,
    ranges: &[i32],
    geom: DecodeGeometry,
    tuning: &DecodeTuning,
) -> DecodeGeometry {
    let copy = copy_for(shape, tuning);
    if copy & decode_mma::COPY_STEAL == 0 && copy & decode_mma::COPY_STREAM != 0 {
        return stream_geometry(ranges, geom, tuning, shape);
    }
    if copy & decode_mma::COPY_STEAL == 0
        || copy & decode_mma::COPY_TMA != 0
        || tuning.fused_combine
        || choose(shape, tuning) != Kernel::Mma
        || geom.splits < 2
    {
        return geom;
    }
    let tile = decode_mma::KV_TILE as usize;
    let (pct, per) = tuning.steal.unwrap_or(STEAL);
    let (pct, per) = (pct.clamp(1, 100) as usize, per.max(1) as usize);
    let splits = geom.splits as usize;
    let tiles = longest_tiles(ranges, &geom);
    let static_tiles = (tiles * pct / 100 / splits).max(1);
    let rest = tiles.saturating_sub(static_tiles * splits);
    if rest == 0 {
        return geom;
    }
    let stolen = rest.div_ceil(per);
    DecodeGeometry {
        splits: (splits + stolen) as u32,
        chunk: (static_tiles * tile) as u32,
        split_ctas: splits as u32,
        steal_chunk: (per * tile) as u32,
        ..geom
    }
}

/// The longest of `ranges`' (`(lo, hi)` per sequence) kv tiles, each range counted from its
/// start rounded down to a tile (as the kernel's `COPY_PAGE_PASS` rounds it) and at most the
/// keys of `geom`'s splits: what [`steal_geometry`] and [`stream_geometry`] divide.
fn longest_tiles(ranges: &[i32], geom: &DecodeGeometry) -> usize {
    let tile = decode_mma::KV_TILE as usize;
    ranges
        .chunks(2)
        .map(|r| (r[1] - (r[0] & !(tile as i32 - 1))).max(0) as usize)
        .max()
        .unwrap_or(0)
        .min(geom.splits as usize * geom.chunk as usize)
        .div_ceil(tile)
}

/// `geom` of a host-tensor call whose splits continue their streams
/// (`decode_mma::COPY_STREAM`, letter `p`; not with `n`, which wins), when the tensor-core
/// kernel runs with decode + combine kernels (not `fused_combine`, not TMA) and `geom` has
/// several splits: the same splits (one partial each) take `pct`% of the longest range's
/// tiles in their own splits, at least `decode_mma::STREAM_AHEAD` tiles each (the kernel
/// takes a chunk that many tiles ahead), and the rest in chunks of `tiles` (at least 2)
/// from the counter (`tuning.steal` = `(pct, tiles)`, [`STREAM`] by default). Else `geom`.
fn stream_geometry(
    ranges: &[i32],
    geom: DecodeGeometry,
    tuning: &DecodeTuning,
    shape: &DecodeShape,
) -> DecodeGeometry {
    let copy = copy_for(shape, tuning);
    if (copy & decode_mma::COPY_TMA != 0 && matches!(shape.layout, CacheLayout::Paged { .. }))
        || tuning.fused_combine
        || choose(shape, tuning) != Kernel::Mma
        || geom.splits < 2
    {
        return geom;
    }
    let tile = decode_mma::KV_TILE as usize;
    let (pct, per) = tuning.steal.unwrap_or(STREAM);
    let (pct, per) = (pct.clamp(1, 100) as usize, (per as usize).max(2));
    let splits = geom.splits as usize;
    let tiles = longest_tiles(ranges, &geom);
    let own = (tiles * pct / 100 / splits).max(decode_mma::STREAM_AHEAD as usize);
    if own * splits >= tiles {
        return geom;
    }
    DecodeGeometry {
        chunk: (own * tile) as u32,
        steal_chunk: (per * tile) as u32,
        stream: true,
        ..geom
    }
}

/// [`stream_geometry`]'s default: the own splits take 90% of the longest range's tiles,
/// the rest goes in chunks of 4 tiles.
const STREAM: (u16, u16) = (90, 4);

/// Splits and positions per split of the tensor-core kernel for `ctas` (sequence, kv
/// head, row group) triples whose longest reachable range is `span`: the count with the
/// least `waves x (tiles per split + MMA_FILL_TILES)`, fewer splits on ties.
fn mma_splits(ctas: usize, span: usize, slots: usize) -> (usize, usize) {
    let tile = attnc_compiler::backend::llvm::decode_mma::KV_TILE as usize;
    let tiles = span.div_ceil(tile).max(1);
    let ctas = ctas.max(1);
    let mut best = (usize::MAX, 1);
    for s in 1..=tiles.min(4096) {
        let waves = (ctas * s).div_ceil(slots);
        let cost = waves * (tiles.div_ceil(s) + MMA_FILL_TILES);
        if cost < best.0 {
            best = (cost, s);
        }
    }
    let chunk = tiles.div_ceil(best.1) * tile;
    (span.div_ceil(chunk).max(1), chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_beyond_32_bit_offsets_take_the_prefill_path() {
        let paged = |hkv: usize| DecodeShape {
            b: 1,
            hq: hkv,
            hkv,
            lq: 1,
            d: 128,
            dv: 128,
            layout: CacheLayout::Paged {
                num_pages: 1,
                page_size: 256,
                max_pages: 1,
            },
        };
        assert!(applies(&paged(8), DType::BF16, false));
        // 256 x 65536 x 128 x 2 bytes = 4 GiB per page
        assert!(!applies(&paged(1 << 16), DType::BF16, false));
    }

    fn contiguous(b: usize, hq: usize, hkv: usize, lq: usize, d: usize) -> DecodeShape {
        DecodeShape {
            b,
            hq,
            hkv,
            lq,
            d,
            dv: d,
            layout: CacheLayout::Contiguous { lkv_max: 8192 },
        }
    }

    /// Chunked prefill's default copy is the decode calls' (the products on wgmma,
    /// session 25), without the per-head combine of 4..=16 rows.
    #[test]
    fn chunked_prefill_copy_is_on_wgmma() {
        let t = DecodeTuning::default();
        for lq in [17, 64, 256, 4096] {
            let c = copy_for(&contiguous(8, 32, 8, lq, 128), &t);
            assert_eq!(c, COPY, "lq {lq}");
            assert_ne!(c & decode_mma::COPY_WGMMA, 0, "lq {lq}");
            assert_eq!(c & decode_mma::COPY_COMBINE_ROWS, 0, "lq {lq}");
        }
        assert_eq!(
            copy_for(&contiguous(8, 32, 8, 16, 128), &t),
            COPY | decode_mma::COPY_COMBINE_ROWS
        );
        let forced = DecodeTuning {
            copy: Some(decode_mma::COPY_EARLY),
            ..DecodeTuning::default()
        };
        assert_eq!(
            copy_for(&contiguous(8, 32, 8, 256, 128), &forced),
            decode_mma::COPY_EARLY
        );
    }

    #[test]
    fn chunked_prefill_runs_the_tensor_core_kernel() {
        let simt = DecodeTuning {
            kernel: Some(Kernel::Simt),
            ..DecodeTuning::default()
        };
        for lq in [17, 33, 64, 100, 256, 512, 4096] {
            for d in [64, 128] {
                let s = contiguous(8, 32, 8, lq, d);
                assert!(applies(&s, DType::BF16, false), "lq {lq} d {d}");
                assert!(applies(&s, DType::F16, false), "lq {lq} d {d}");
                assert!(!applies(&s, DType::BF16, true), "checked: the prefill path");
                // the SIMT kernel takes Lq <= 16 only: forcing it keeps tensor cores
                assert_eq!(choose(&s, &simt), Kernel::Mma, "lq {lq} d {d}");
                assert_eq!(choose(&s, &DecodeTuning::default()), Kernel::Mma);
            }
            for d in [32, 256] {
                assert!(!applies(&contiguous(8, 32, 8, lq, d), DType::BF16, false));
            }
        }
        for d in [32, 64, 128, 256] {
            assert!(applies(&contiguous(8, 32, 8, 16, d), DType::BF16, false));
            assert_eq!(choose(&contiguous(8, 32, 8, 16, d), &simt), Kernel::Simt);
        }
        // grid y = Hkv x row groups (counted at 16 rows) at most 65535
        assert!(applies(
            &contiguous(1, 64, 64, 16368, 128),
            DType::BF16,
            false
        ));
        assert!(!applies(
            &contiguous(1, 64, 64, 16369, 128),
            DType::BF16,
            false
        ));
    }

    #[test]
    fn chunked_prefill_geometry_covers_every_row_and_key() {
        let t = DecodeTuning::default();
        // (B, Hq, Hkv, Lq, span) -> row groups of 64 rows covering G x Lq, splits
        // covering the span, enough CTAs for the GPU when the work allows
        for (b, hq, hkv, lq, span) in [
            (8, 32, 8, 64, 8192),
            (8, 32, 8, 256, 32768),
            (8, 32, 8, 512, 8192),
            (1, 32, 8, 100, 32768),
            (3, 8, 8, 17, 300),
            (2, 4, 1, 33, 33),
        ] {
            let s = contiguous(b, hq, hkv, lq, 128);
            let ranges: Vec<i32> = (0..b).flat_map(|_| [0, span as i32]).collect();
            let g = geometry(&s, &ranges, 1.0, &t);
            let rows = (hq / hkv) * lq;
            let rpc = rows_per_cta(&s, Kernel::Mma, &t);
            assert_eq!(rpc, 16 * rows.div_ceil(16).next_power_of_two().min(4));
            assert_eq!(g.row_groups as usize, rows.div_ceil(rpc), "{lq}");
            let (splits, chunk) = (g.splits as usize, g.chunk as usize);
            assert!(splits * chunk >= span && (splits - 1) * chunk < span.max(1));
            let ctas = b * hkv * g.row_groups as usize * splits;
            if span >= 8192 {
                assert!(ctas >= MMA_SLOTS * 9 / 10, "{b} {lq} {span}: {ctas} CTAs");
            }
        }
    }

    #[test]
    fn mma_splits_fill_the_gpu_and_cover_the_span() {
        // issue 12's shapes: (CTAs before splitting, span) -> every SM streams
        for (ctas, span) in [
            (64, 32768),
            (512, 8192),
            (8, 131072),
            (64, 4096),
            (3, 1),
            (1, 0),
        ] {
            let (s, chunk) = mma_splits(ctas, span, MMA_SLOTS);
            assert!(s >= 1 && chunk % 64 == 0 && chunk > 0, "{ctas} {span}");
            assert!(
                s * chunk >= span && (s - 1) * chunk < span.max(1),
                "{ctas} {span}"
            );
            if span >= 8192 {
                assert!(ctas * s >= MMA_SLOTS * 9 / 10, "{ctas} {span}: {s} splits");
            }
        }
    }
}
