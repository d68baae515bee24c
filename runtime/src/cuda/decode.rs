//! The split-KV decode kernel and its combine kernel on the device: the kernels
//! ([`KernelKind::Decode`] or [`KernelKind::DecodeMma`], and [`KernelKind::DecodeCombine`] of
//! `attnc_compiler::backend::llvm::decode`) come from the JIT cache like every kind's, and
//! launch through the one launch ([`CudaKernel::launch_args`]) with their parameters bound
//! by name from a [`DecodeProblem`].
//!
//! In: the plan of the attention, [`DecodeOptions`], host inputs (16-bit Q and caches,
//! i32 page table, seq_lens and reachable ranges, bindings) and the launch geometry
//! ([`DecodeGeometry`]). Out: O (16-bit) and LSE (f32) downloaded, or the device time per
//! call. Every buffer is sized from the geometry and checked here, so the kernels index
//! inside their allocations: page ids are clamped in the kernel, key positions are
//! bounded by the ranges (which the host computes inside `0..seq_len`). A host-buffer
//! call may launch the fused tensor-core kernel ([`KernelKind::DecodeMmaFused`], the
//! combine folded in, counting in a zeroed `DecodeSem` buffer; or its one-split form,
//! `decode_mma::COPY_DIRECT`, which writes O and LSE without partials) alone instead of
//! decode + combine; the caller-buffer path (`launch_values`) always launches the pair. On sm_90
//! the combine kernel is launched by programmatic dependent launch (under the decode
//! kernel's tail; `launch_pair`), and a host-buffer call's decode kernel too when
//! [`DecodeProblem::chain`] (under the previous kernel's tail on the stream).

use super::{Arg, CudaDevice, CudaError, CudaKernel, JitCache, JitKernel, JitTiers, LaunchArgs};
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::decode::DecodeOptions;
use attnc_compiler::backend::llvm::{GridDim, KernelParam};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::Plan;
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::Arc;

/// Both kernels, loaded (and the tensor-core kernel with the combine folded in, when
/// [`DecodeModule::with_fused`] loaded it).
#[derive(Clone)]
pub struct DecodeModule {
    decode: Arc<JitKernel>,
    combine: Arc<JitKernel>,
    fused: Option<Arc<JitKernel>>,
    rows: u32,
    d: u32,
}

/// The shape of one launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeGeometry {
    pub b: u32,
    pub hq: u32,
    pub hkv: u32,
    pub lq: u32,
    /// Row groups per kv head (`ceil(G * Lq / rows)`), splits per (b, kv head, group).
    pub row_groups: u32,
    pub splits: u32,
    /// Positions per split.
    pub chunk: u32,
    /// CTAs along the splits: `splits`, or with work stealing (`decode_mma::COPY_STEAL`,
    /// `steal_chunk > 0`) the static splits of `chunk` positions, after which the
    /// `splits - split_ctas` stolen splits take `steal_chunk` positions each.
    pub split_ctas: u32,
    /// Positions per stolen split (a multiple of 64); 0 without work stealing.
    pub steal_chunk: u32,
    /// The tensor-core kernel cuts each range into balanced splits
    /// (`decode_mma::COPY_BALANCED`: split `s` from tile `floor(s T / splits)` of the
    /// range's `T` tiles) instead of `chunk` positions each; not with work stealing.
    pub balanced: bool,
    /// The tensor-core kernel's splits continue their streams into chunks of
    /// `steal_chunk` positions after the static splits' `splits x chunk`
    /// (`decode_mma::COPY_STREAM`, taken from a counter per (b, kv head, row group)):
    /// the splits' own keys no longer cover a range.
    pub stream: bool,
    /// Contiguous: `Lkv_max`; paged: 0.
    pub lkv_max: u32,
    /// Paged: `log2(page_size)`, `max_pages`, `num_pages`; contiguous: 0.
    pub page_shift: u32,
    pub max_pages: u32,
    pub num_pages: u32,
    pub scale: f32,
}

impl DecodeGeometry {
    /// The positions `[k0, k1)` split `split` reads of a sequence whose reachable range
    /// is `lo..hi` (the kernels' `split_keys` and `decode_mma`'s `steal_keys`, without
    /// (with `stream`: its own split's keys, not the chunks it took after them)
    /// the tensor-core kernel's rounding of `lo`).
    pub fn split_keys(&self, lo: i64, hi: i64, split: u32) -> (i64, i64) {
        if self.balanced && self.steal_chunk == 0 {
            let tile = attnc_compiler::backend::llvm::decode_mma::KV_TILE as i64;
            let tiles = ((hi - lo).max(0) + tile - 1) / tile;
            let cut = |s: i64| lo + s * tiles / self.splits.max(1) as i64 * tile;
            let k0 = cut(split as i64);
            return (k0, cut(split as i64 + 1).min(hi).max(k0));
        }
        let big = split.min(self.split_ctas) as i64;
        let k0 = lo + big * self.chunk as i64 + (split as i64 - big) * self.steal_chunk as i64;
        let len = if split < self.split_ctas {
            self.chunk
        } else {
            self.steal_chunk
        };
        (k0, (k0 + len as i64).min(hi).max(k0))
    }

    /// The positions all splits cover from a range's start.
    pub fn covered(&self) -> u64 {
        if self.stream && self.steal_chunk > 0 {
            return u64::MAX;
        }
        self.split_ctas as u64 * self.chunk as u64
            + (self.splits - self.split_ctas.min(self.splits)) as u64 * self.steal_chunk as u64
    }
}

/// Inputs, partials and outputs of one call, on the device.
pub struct DecodeProblem {
    pub geom: DecodeGeometry,
    q: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    page_table: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    ranges: CudaSlice<i32>,
    part_o: CudaSlice<f32>,
    part_lse: CudaSlice<f32>,
    o: CudaSlice<u16>,
    lse: CudaSlice<f32>,
    params: CudaSlice<u32>,
    err: CudaSlice<u32>,
    tensors: Vec<(CudaSlice<u32>, Vec<i32>)>,
    /// `DecodeSem` of the fused kernel: one u32 per (b, kv head, row group), zero between
    /// launches.
    sem: CudaSlice<u32>,
    /// Launch the fused kernel (when the module has one) instead of decode + combine.
    pub fused: bool,
    /// Launch the combine kernel after the decode kernel has completed, not overlapped
    /// with its tail (benchmarks; see [`DecodeModule::launch`]).
    pub serial: bool,
    /// Launch the decode kernel (or the fused kernel) by programmatic dependent launch
    /// too (`decode::gpu` sets it for host-tensor calls on sm_90 unless
    /// `DecodeTuning::serial_decode`; see [`DecodeModule::launch`]).
    pub chain: bool,
}

/// One CTA's record of a `decode_mma::COPY_TRACE` launch ([`DecodeModule::trace`]): its
/// `(b, kv head, row group, split)` and the six words it stored (SM, then five timer
/// readings).
pub type TraceRecord = ([u32; 4], [u32; 6]);

/// Device addresses of one decode call's buffers, owned by a [`DecodeProblem`] or by the
/// caller (the caller-buffer decode, `exec::cuda::caller::decode`): the inputs, the
/// reachable ranges, the partials, the outputs, the params and error words, and each
/// captured tensor (i32/f32 words, at least one) with its dims (each at least 1).
#[derive(Clone, Debug)]
pub struct DecodePtrs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub page_table: u64,
    pub seq_lens: u64,
    pub ranges: u64,
    pub part_o: u64,
    pub part_lse: u64,
    pub o: u64,
    pub lse: u64,
    pub params: u64,
    pub err: u64,
    pub tensors: Vec<(u64, Vec<i32>)>,
}

/// The launch values of both kernels by name: buffers, scalars, grid extents.
pub fn launch_values(g: &DecodeGeometry, p: &DecodePtrs) -> LaunchArgs {
    use KernelParam as P;
    let mut a = LaunchArgs::new();
    for (k, ptr) in [
        (P::Q, p.q),
        (P::K, p.k),
        (P::V, p.v),
        (P::PageTable, p.page_table),
        (P::SeqLens, p.seq_lens),
        (P::Ranges, p.ranges),
        (P::PartO, p.part_o),
        (P::PartLse, p.part_lse),
        (P::O, p.o),
        (P::Lse, p.lse),
        (P::Params, p.params),
        (P::Err, p.err),
    ] {
        a.scalar(k, Arg::Ptr(ptr));
    }
    for (t, (buf, dims)) in p.tensors.iter().enumerate() {
        a.scalar(P::Tensor(t as u32), Arg::Ptr(*buf));
        for (dim, n) in dims.iter().enumerate() {
            a.i32(
                P::TensorDim {
                    tensor: t as u32,
                    dim: dim as u32,
                },
                *n,
            );
        }
    }
    for (p, x) in [
        (P::Hq, g.hq),
        (P::Hkv, g.hkv),
        (P::Lq, g.lq),
        (P::Group, g.hq / g.hkv),
        (P::RowGroups, g.row_groups),
        (P::Splits, g.splits),
        (P::Chunk, g.chunk),
        (P::LkvMax, g.lkv_max),
        (P::PageShift, g.page_shift),
        (P::MaxPages, g.max_pages),
        (P::NumPages, g.num_pages),
    ] {
        a.i32(p, x as i32);
    }
    a.i32(P::StealChunk, g.steal_chunk as i32);
    a.f32(P::Scale, g.scale);
    a.extent(GridDim::Splits, g.splits);
    a.extent(GridDim::SplitCtas, g.split_ctas);
    a.extent(GridDim::KvHeadRowGroups, g.hkv * g.row_groups);
    a.extent(GridDim::Batches, g.b);
    a.extent(GridDim::QRows, g.lq);
    a.extent(GridDim::Heads, g.hq);
    a
}

impl DecodeProblem {
    /// The launch values of both kernels by name: buffers, scalars, grid extents.
    fn args(&self, dev: &CudaDevice) -> LaunchArgs {
        let s = &dev.stream;
        let ptr = |b: &CudaSlice<u16>| b.device_ptr(s).0;
        let ptr_i = |b: &CudaSlice<i32>| b.device_ptr(s).0;
        let ptr_f = |b: &CudaSlice<f32>| b.device_ptr(s).0;
        let ptr_u = |b: &CudaSlice<u32>| b.device_ptr(s).0;
        let mut a = launch_values(
            &self.geom,
            &DecodePtrs {
                q: ptr(&self.q),
                k: ptr(&self.k),
                v: ptr(&self.v),
                page_table: ptr_i(&self.page_table),
                seq_lens: ptr_i(&self.seq_lens),
                ranges: ptr_i(&self.ranges),
                part_o: ptr_f(&self.part_o),
                part_lse: ptr_f(&self.part_lse),
                o: ptr(&self.o),
                lse: ptr_f(&self.lse),
                params: ptr_u(&self.params),
                err: ptr_u(&self.err),
                tensors: self
                    .tensors
                    .iter()
                    .map(|(b, dims)| (ptr_u(b), dims.clone()))
                    .collect(),
            },
        );
        a.scalar(KernelParam::DecodeSem, Arg::Ptr(ptr_u(&self.sem)));
        a
    }
}

/// Enqueues `kernel` with `args`: by programmatic dependent launch when `overlapped` and
/// `dev` is sm_90 (the decode kernels wait there for the previous grid before touching
/// memory), else plainly.
///
/// # Safety
/// As [`DecodeModule::launch_values`].
unsafe fn launch_one(
    dev: &CudaDevice,
    kernel: &CudaKernel,
    args: &LaunchArgs,
    overlapped: bool,
) -> Result<(), CudaError> {
    // SAFETY: forwarded from the caller.
    unsafe {
        if overlapped && dev.arch() == attnc_compiler::backend::llvm::Arch::Sm90 {
            kernel.launch_args_overlapped(dev, args)
        } else {
            kernel.launch_args(dev, args)
        }
    }
}

impl DecodeModule {
    /// The decode and combine kernels of `plan` under `opts`, from `jit` (memory, disk,
    /// or generated and compiled; the optimized module, no tiers).
    pub fn load(
        dev: &CudaDevice,
        jit: &JitCache,
        plan: &Plan,
        opts: &DecodeOptions,
    ) -> Result<Self, CudaError> {
        Self::load_kind(dev, jit, plan, opts, KernelKind::Decode)
    }

    /// [`Self::load`] with the decode kernel of `kind`: [`KernelKind::Decode`] (SIMT) or
    /// [`KernelKind::DecodeMma`] (tensor cores; `opts.rows` 16, 32 or 64). Both write the
    /// same partials, merged by the same combine kernel.
    pub fn load_kind(
        dev: &CudaDevice,
        jit: &JitCache,
        plan: &Plan,
        opts: &DecodeOptions,
        kind: KernelKind,
    ) -> Result<Self, CudaError> {
        let popts = opts.ptx_options();
        let get = |kind| {
            jit.get(dev, plan, kind, &popts, JitTiers::Off)
                .map(|(k, _)| k)
        };
        Ok(DecodeModule {
            decode: get(kind)?,
            combine: get(KernelKind::DecodeCombine)?,
            fused: None,
            rows: opts.rows,
            d: opts.d,
        })
    }

    /// This module with the fused tensor-core kernel ([`KernelKind::DecodeMmaFused`]: the
    /// combine folded into the decode kernel) loaded too; a host-buffer call whose
    /// [`DecodeProblem::fused`] is set launches it alone.
    pub fn with_fused(
        mut self,
        dev: &CudaDevice,
        jit: &JitCache,
        plan: &Plan,
        opts: &DecodeOptions,
    ) -> Result<Self, CudaError> {
        let (k, _) = jit.get(
            dev,
            plan,
            KernelKind::DecodeMmaFused,
            &opts.ptx_options(),
            JitTiers::Off,
        )?;
        self.fused = Some(k);
        Ok(self)
    }

    /// Whether the fused kernel is loaded.
    pub fn has_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// With `decode::COPY_DEVICE_RANGES` (the kernel takes no `Ranges`: it computes each
    /// sequence's range from `SeqLens`, the capacity `Lkv` and the implied conjuncts'
    /// offsets itself): `Some(number of KvOffset params)`; else `None`.
    pub fn device_ranges(&self) -> Option<usize> {
        let (k, _) = self.decode.current();
        let params = &k.spec().params;
        (!params.contains(&KernelParam::Ranges)).then(|| {
            params
                .iter()
                .filter(|p| matches!(p, KernelParam::KvOffset(_)))
                .count()
        })
    }

    /// Uploads one call. `q`, `k`, `v` are 16-bit elements in the decode layouts;
    /// `ranges` is `[B, 2]` (lo, hi) with `0 <= lo <= hi <= seq_lens[b]`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        dev: &CudaDevice,
        geom: DecodeGeometry,
        q: &[u16],
        k: &[u16],
        v: &[u16],
        page_table: &[i32],
        seq_lens: &[i32],
        ranges: &[i32],
        bind: &Bindings,
    ) -> Result<DecodeProblem, CudaError> {
        let g = geom;
        let d = self.d as usize;
        let bad = |m: String| Err(CudaError::Mismatch(m));
        let (b, hq, hkv, lq) = (g.b as usize, g.hq as usize, g.hkv as usize, g.lq as usize);
        if hkv == 0 || hq % hkv != 0 {
            return bad(format!("Hq {hq} is not a multiple of Hkv {hkv}"));
        }
        let rows = (hq / hkv) * lq;
        if g.row_groups as usize != rows.div_ceil(self.rows as usize) {
            return bad("row groups do not match the kernel's rows per CTA".into());
        }
        let cache_rows = if g.max_pages > 0 {
            g.num_pages as usize * (1usize << g.page_shift)
        } else {
            b * g.lkv_max as usize
        };
        if q.len() != b * hq * lq * d
            || k.len() != cache_rows * hkv * d
            || v.len() != k.len()
            || seq_lens.len() != b
            || ranges.len() != 2 * b
            || (g.max_pages > 0
                && (page_table.len() != b * g.max_pages as usize || g.num_pages == 0))
        {
            return bad("decode inputs do not match the geometry".into());
        }
        let cap = if g.max_pages > 0 {
            (g.max_pages as usize) << g.page_shift
        } else {
            g.lkv_max as usize
        };
        for i in 0..b {
            let (lo, hi, n) = (ranges[2 * i], ranges[2 * i + 1], seq_lens[i]);
            if lo < 0 || lo > hi || hi > n || n as usize > cap {
                return bad(format!(
                    "range {lo}..{hi} of sequence {i} (length {n}) is invalid"
                ));
            }
            if (hi - lo) as u64 > g.covered()
                || g.split_ctas == 0
                || g.split_ctas > g.splits
                || (g.split_ctas < g.splits && g.steal_chunk == 0)
            {
                return bad("splits x chunk do not cover a range".into());
            }
        }
        let s = &dev.stream;
        let words: Vec<u32> = bind
            .params
            .iter()
            .map(super::problem::param_word)
            .chain([0])
            .collect();
        let mut tensors = Vec::new();
        for t in &bind.tensors {
            let (data, dims) = super::problem::tensor_words(t);
            tensors.push((s.clone_htod(&data)?, dims));
        }
        let (part_o, parts) = self.workspace(&g);
        let nonempty_i = |v: &[i32]| if v.is_empty() { vec![0] } else { v.to_vec() };
        Ok(DecodeProblem {
            geom,
            q: s.clone_htod(q)?,
            k: s.clone_htod(k)?,
            v: s.clone_htod(v)?,
            page_table: s.clone_htod(&nonempty_i(page_table))?,
            seq_lens: s.clone_htod(&nonempty_i(seq_lens))?,
            ranges: s.clone_htod(&nonempty_i(ranges))?,
            part_o: s.alloc_zeros(part_o.max(1))?,
            part_lse: s.alloc_zeros(parts.max(1))?,
            o: s.alloc_zeros((b * hq * lq * d).max(1))?,
            lse: s.alloc_zeros((b * hq * lq).max(1))?,
            params: s.clone_htod(&words)?,
            err: s.alloc_zeros(8)?,
            tensors,
            // (two words per (b, kv head, row group): `decode_mma::COPY_STREAM`'s counts)
            sem: s.alloc_zeros((2 * b * hkv * g.row_groups as usize).max(1))?,
            fused: false,
            serial: false,
            chain: false,
        })
    }

    /// The partials a launch of `geom` writes, in f32 elements: `(O, LSE)`.
    pub fn workspace(&self, geom: &DecodeGeometry) -> (usize, usize) {
        let g = geom;
        let parts = g.b as usize
            * g.hkv as usize
            * g.row_groups as usize
            * g.splits as usize
            * self.rows as usize;
        (parts * self.d as usize, parts)
    }

    /// Enqueues both kernels with `args` ([`launch_values`] of `geom`).
    ///
    /// # Safety
    /// Every buffer of `args` must be live device memory of `dev`'s context sized for
    /// `geom` (q, k, v, page table, seq_lens, ranges inside each sequence and covered by
    /// the splits, partials as [`Self::workspace`] says, outputs, params, error words,
    /// tensors), as [`Self::upload`] checks for a [`DecodeProblem`].
    pub unsafe fn launch_values(
        &self,
        dev: &CudaDevice,
        geom: &DecodeGeometry,
        args: &LaunchArgs,
    ) -> Result<(), CudaError> {
        if geom.b == 0 {
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_pair(dev, args, false, false) }
    }

    /// Enqueues the decode kernel, then the combine kernel: on sm_90 (unless `serial`)
    /// with programmatic stream serialization, so that the combine grid is scheduled
    /// while the decode grid's last CTAs run (they let it start, `let_combine_start` in
    /// `decode.rs`) and its CTAs wait on the SMs for the decode grid's completion
    /// (`griddepcontrol.wait`, before any read) instead of starting after a launch gap.
    /// With `chain`, the decode kernel is launched so too (it waits for the previous
    /// kernel on the stream before it touches memory).
    ///
    /// # Safety
    /// As [`Self::launch_values`].
    unsafe fn launch_pair(
        &self,
        dev: &CudaDevice,
        args: &LaunchArgs,
        serial: bool,
        chain: bool,
    ) -> Result<(), CudaError> {
        let (decode, _): (Arc<CudaKernel>, _) = self.decode.current();
        let (combine, _): (Arc<CudaKernel>, _) = self.combine.current();
        // SAFETY: forwarded from the caller; on sm_90 the decode kernels wait for the
        // previous grid before they touch memory, the combine kernel for the decode grid
        // before it reads the partials.
        unsafe {
            launch_one(dev, &decode, args, chain)?;
            launch_one(dev, &combine, args, !serial)
        }
    }

    /// Enqueues the decode kernel and the combine kernel.
    pub fn launch(&self, dev: &CudaDevice, p: &DecodeProblem) -> Result<(), CudaError> {
        if p.geom.b == 0 {
            return Ok(());
        }
        let args = p.args(dev);
        // SAFETY (both arms): every buffer of `args` belongs to `p`, sized from its
        // geometry in `upload` (which checked the inputs against it, the ranges inside
        // each sequence and the splits covering them; `sem` one word per (b, kv head, row
        // group), zero between launches); the scalars are that geometry's.
        match &self.fused {
            Some(f) if p.fused => {
                let (kernel, _): (Arc<CudaKernel>, _) = f.current();
                unsafe { launch_one(dev, &kernel, &args, p.chain) }
            }
            _ => unsafe { self.launch_pair(dev, &args, p.serial, p.chain) },
        }
    }

    /// Waits and copies O (16-bit) and LSE back.
    pub fn download(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
    ) -> Result<(Vec<u16>, Vec<f32>), CudaError> {
        dev.stream.synchronize()?;
        Ok((dev.stream.clone_dtoh(&p.o)?, dev.stream.clone_dtoh(&p.lse)?))
    }

    /// Device milliseconds per call (decode + combine), median of 5 timings of `iters`
    /// (`ATTNC_DECODE_BENCH_REPS=N`: of N; `attnc bench --decode` interleaves its
    /// configurations finely with 1). A diagnostic, `ATTNC_DECODE_BENCH_PART=decode` or
    /// `combine`: a call of decode + combine kernels times only the one kernel, launched
    /// as in a call (the decode kernel's partials, or the combine's O, rewritten each
    /// time), so that a call's time splits into its kernels; ignored by the fused kinds.
    pub fn time(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
        iters: usize,
    ) -> Result<f64, CudaError> {
        let reps = std::env::var("ATTNC_DECODE_BENCH_REPS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(5);
        let part = std::env::var("ATTNC_DECODE_BENCH_PART").unwrap_or_default();
        let one = match part.trim() {
            "decode" => Some(&self.decode),
            "combine" => Some(&self.combine),
            _ => None,
        };
        match one {
            Some(k) if p.geom.b > 0 && !(self.fused.is_some() && p.fused) => {
                let (kernel, _): (Arc<CudaKernel>, _) = k.current();
                let overlapped = if part.trim() == "decode" {
                    p.chain
                } else {
                    !p.serial
                };
                dev.time(3, iters, reps, || {
                    let args = p.args(dev);
                    // SAFETY: as in `launch` (every buffer of `args` belongs to `p`, sized
                    // from its geometry); one kernel of the pair alone reads what the
                    // other leaves (the combine the partials of an earlier decode
                    // launch, or zeros) and writes only its own outputs.
                    unsafe { launch_one(dev, &kernel, &args, overlapped) }
                })
            }
            _ => dev.time(3, iters, reps, || self.launch(dev, p)),
        }
    }

    /// The per-CTA records of the last launch of `p` by a decode kernel built with
    /// `decode_mma::COPY_TRACE` (waits for the stream): for each partial whose last row
    /// is padding (`(rg + 1) x rows > G x Lq`), its `(b, kv head, row group, split)` and
    /// the six words the kernel stored there (SM, then `%globaltimer` low words at its
    /// start, wait, first tiles, loop end, end). Empty when no partial has such a row.
    pub fn trace(
        &self,
        dev: &CudaDevice,
        p: &DecodeProblem,
    ) -> Result<Vec<TraceRecord>, CudaError> {
        dev.stream.synchronize()?;
        let part_o: Vec<f32> = dev.stream.clone_dtoh(&p.part_o)?;
        let g = &p.geom;
        let (rows, d) = (self.rows as usize, self.d as usize);
        let live = (g.hq / g.hkv.max(1)) as usize * g.lq as usize;
        let mut out = Vec::new();
        let n = g.b as usize * g.hkv as usize * g.row_groups as usize * g.splits as usize;
        for pidx in 0..n {
            let split = pidx % g.splits as usize;
            let grp = pidx / g.splits as usize;
            let rg = grp % g.row_groups as usize;
            let hk = (grp / g.row_groups as usize) % g.hkv as usize;
            let b = grp / (g.row_groups as usize * g.hkv as usize);
            if (rg + 1) * rows <= live {
                continue;
            }
            let at = (pidx * rows + rows - 1) * d;
            let mut w = [0u32; 6];
            for (i, x) in w.iter_mut().enumerate() {
                *x = part_o[at + i].to_bits();
            }
            out.push(([b as u32, hk as u32, rg as u32, split as u32], w));
        }
        Ok(out)
    }
}
