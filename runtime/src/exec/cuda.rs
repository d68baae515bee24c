//! The CUDA executor: the kernels of a plan from the process's JIT cache, one device
//! problem per call, the block-table kernel and the table kept between calls.
//!
//! In: the plan, bind options, host q/k/v (bf16/f16) and bindings. Out: O (f32 values of
//! the 16-bit output) and LSE, or a raw [`CudaError`] / `BlockError`.
//! Per call the kv source is, in order (the choice is `policy`'s data, carried out here):
//! a table built on the GPU by the block-table kernel (masks over captured tensors with
//! `gpu_block_tables`, when it fits the device), reused from the last successful call
//! when what the mask reads is bit-for-bit unchanged; the closed form's offsets
//! (`Plan::closed_form_bounds`; every block partial when the mask's i32 arithmetic may
//! wrap); else host block maps (`policy::maps_for`, kept when the shape fixes them).
//! Each call takes the JIT module current at its start and releases retired ones after
//! it has synchronized. Calls on caller-owned device memory and the caller's stream
//! (no upload, download or synchronization) are [`caller`]'s.

pub(crate) mod caller;
mod documents;

use super::{ExecError, ExecResult};
use crate::cache::DiskCache;
use crate::cuda::{
    BuiltTable, CudaDevice, CudaError, CudaKernel, DeviceProblem, DeviceTable, JitCache, JitKernel,
    JitStats, JitTier, JitTiers, KvBlocks, LaunchArgs, Qkv, ReadyStats,
};
use crate::error::{Error, Result};
use crate::options::BindOptions;
use crate::policy::{self, TableKey};
use crate::tensor::{DType, Tensor};
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{InputType, KvBounds, PtxOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::plan::{MapRecipe, Plan};
use std::sync::{Arc, OnceLock};

/// One CUDA device of the process (its primary context, the one the CUDA runtime and
/// hence torch use) and its JIT cache (in memory per device; PTX and cubins on disk,
/// shared), opened on first use. Opening a context costs tens of milliseconds, so all
/// bindings of a device share it.
struct Gpu {
    device: CudaDevice,
    jit: JitCache,
}

/// Device ordinals the process can open (one lazily opened [`Gpu`] each).
const MAX_DEVICES: usize = 64;

static GPUS: [OnceLock<std::result::Result<Gpu, CudaError>>; MAX_DEVICES] =
    [const { OnceLock::new() }; MAX_DEVICES];

/// Device `ordinal` (opened on first use).
fn gpu_at(ordinal: usize) -> ExecResult<&'static Gpu> {
    let Some(cell) = GPUS.get(ordinal) else {
        return Err(ExecError::CudaUnavailable(CudaError::NoDevice(ordinal)));
    };
    cell.get_or_init(|| {
        let device = CudaDevice::new(ordinal)?;
        let level = crate::cuda::jit::opt_level_from_env().map_err(CudaError::Mismatch)?;
        Ok(Gpu {
            device,
            jit: JitCache::new(DiskCache::from_env()).with_opt_level(level),
        })
    })
    .as_ref()
    .map_err(|e| ExecError::CudaUnavailable(e.clone()))
}

/// Device 0 (tools and tests that take the first device).
fn gpu() -> ExecResult<&'static Gpu> {
    gpu_at(0)
}

/// CUDA device `ordinal` (opened on first use), for launch paths beside the executor
/// (the backward).
pub(crate) fn device_at(ordinal: usize) -> ExecResult<&'static CudaDevice> {
    gpu_at(ordinal).map(|g| &g.device)
}

/// CUDA device `ordinal` as an API error when there is none (the decode kernels).
pub(crate) fn cuda_device_at(ordinal: usize) -> Result<&'static CudaDevice> {
    api_gpu(ordinal).map(|g| &g.device)
}

/// The JIT cache of `dev`'s ordinal (every kernel kind; modules belong to one context),
/// as an API error when there is no device.
pub(crate) fn cuda_jit_of(dev: &CudaDevice) -> Result<&'static JitCache> {
    api_gpu(dev.ordinal()).map(|g| &g.jit)
}

/// The JIT cache of device `ordinal`.
pub(crate) fn cuda_jit_at(ordinal: usize) -> Result<&'static JitCache> {
    api_gpu(ordinal).map(|g| &g.jit)
}

fn api_gpu(ordinal: usize) -> Result<&'static Gpu> {
    gpu_at(ordinal).map_err(|e| match e {
        ExecError::CudaUnavailable(e) => Error::BackendUnavailable {
            backend: "cuda",
            reason: e.to_string(),
        },
        _ => unreachable!("gpu_at() fails only with CudaUnavailable"),
    })
}

/// Waits (at most `timeout` in all) for the tiered JIT's background compiles of this
/// process to finish, so that their optimized cubins reach the disk cache before a
/// short-lived program exits. Returns at once when the CUDA backend was never used.
pub fn wait_for_background_jit(timeout: std::time::Duration) {
    let until = std::time::Instant::now() + timeout;
    for cell in &GPUS {
        if let Some(Ok(g)) = cell.get() {
            g.jit
                .wait_pending(until.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

/// Name and compute capability of the GPU the CUDA backend would use.
pub fn cuda_device_info() -> Result<String> {
    let g = gpu().map_err(|e| match e {
        ExecError::CudaUnavailable(e) => Error::BackendUnavailable {
            backend: "cuda",
            reason: e.to_string(),
        },
        _ => unreachable!("gpu() fails only with CudaUnavailable"),
    })?;
    let (major, minor) = g.device.capability();
    let arch = g.device.arch();
    let at = |d| PtxOptions::new(arch, d, d, InputType::Bf16).target_cpu();
    Ok(format!(
        "{} (sm_{major}{minor}, PTX target {} at D64/D128, {} otherwise)",
        g.device.name(),
        at(128),
        at(96)
    ))
}

/// A device-built table kept after a successful forward.
struct KeptTable {
    key: TableKey,
    table: BuiltTable,
}

/// A CUDA binding.
pub(crate) struct CudaExec {
    /// The device ordinal of the binding (`BindOptions::device`).
    ordinal: usize,
    /// The best forward module loaded so far (tiered JIT: swapped to the optimized one
    /// when it is ready; each call takes the current one once).
    kernel: Arc<JitKernel>,
    /// The forward options the binding chose ([`forward_options_for`]; the kernel's, or
    /// its tiers' target).
    chosen: PtxOptions,
    /// How the JIT served the bind.
    jit: JitStats,
    /// Host block maps fixed by the shape (kept after the first call).
    maps: Option<BlockMaps>,
    /// The block-table kernel, for masks over captured tensors with `gpu_block_tables`.
    table: Option<Arc<CudaKernel>>,
    /// The table the builder made at the last successful `forward`, with what it was
    /// built from; reused while that stays the same.
    kept: Option<Box<KeptTable>>,
    /// `(built, reused)`: forwards that ran the block-table kernel / reused a kept table.
    table_counts: (u64, u64),
    /// Calls on caller-owned buffers: what each caller stream keeps ([`caller`]).
    caller: caller::CallerStates,
    /// The kernels that make a caller backward's block ranges on the device (masks over
    /// captured tensors), for the last backward kernels' options that needed them.
    bwd_tables: Option<Arc<caller::backward::BwdTableKernels>>,
    /// The document-tiled kernel of a document mask ([`documents`]), where it applies.
    doc: Option<Box<documents::DocExec>>,
    /// Forwards and device timings that ran the document-tiled kernel.
    doc_calls: u64,
}

/// The CUDA kernels' input type for the bind's dtype (bf16 or f16; else an error).
fn input_type(opts: &BindOptions) -> ExecResult<InputType> {
    match opts.dtype {
        DType::BF16 => Ok(InputType::Bf16),
        DType::F16 => Ok(InputType::F16),
        other => Err(ExecError::Api(Error::InputDType {
            which: "q, k, v (the CUDA backend takes bf16 or f16; convert them, or use the cpu backend for f32)".into(),
            expected: "bf16 or f16".into(),
            got: other,
        })),
    }
}

/// Whether a binding of `opts` could read a caller's KV cache in place (slices a pitch
/// apart, or pages with `kv_pages`): its forward (the plan and shape's choice,
/// [`forward_options_for`]) is the warp-specialized kernel, which alone reads K/V through
/// tensor maps (sm_90, D 64/128, fast mode; at D64 bands and block tables, for one, run
/// another kernel). Chunked prefill's runs ask this before they take a call
/// (`Bound::caller_prefill_runs`), so that a shape without it goes to the split-KV kernels
/// instead of failing to bind or launch.
pub(crate) fn cache_forward_applies(
    plan: &Plan,
    opts: &BindOptions,
    arch: attnc_compiler::backend::llvm::Arch,
) -> bool {
    let Ok(input) = input_type(opts) else {
        return false;
    };
    // (with `kv_pages`, another kernel is an error; without, its options say `ws` or not)
    forward_options_for(plan, opts, arch, input).is_ok_and(|p| p.ws)
}

/// The forward kernel's options for a binding: the plan and shape's choice
/// (`PtxOptions::for_binding`: float positions, the D64 kernel, the CTA order), the
/// environment's overrides, a paged cache.
fn forward_options_for(
    plan: &Plan,
    opts: &BindOptions,
    arch: attnc_compiler::backend::llvm::Arch,
    input: InputType,
) -> ExecResult<PtxOptions> {
    let mut popts = PtxOptions::new(arch, opts.shape.d as u32, opts.shape.dv as u32, input);
    popts.checked = opts.checked;
    let longest = opts.shape.lq.max(opts.shape.lkv);
    popts = popts.for_binding(plan, longest);
    popts = forward_tile_from_env(popts);
    popts = forward_schedule_from_env(popts);
    if opts.kv_pages {
        if !popts.ws {
            return Err(ExecError::Api(Error::Usage(
                "a paged K/V cache is read by the warp-specialized forward only (sm_90, D 64/128, fast mode)".into(),
            )));
        }
        popts.kv_cache = attnc_compiler::backend::llvm::KvCache::Paged;
        // (V's copies from a second producer thread unless the tuning says otherwise)
        popts.producers = match opts.decode.paged_producers {
            0 => 2,
            n => n,
        };
    }
    if opts.device_lens {
        let q0 = plan
            .program()
            .params
            .iter()
            .position(|p| p.name == attnc_compiler::decode::OFFSET_PARAMS[1]);
        // a closed-form mask, or a block table built on the GPU from the same lengths
        // (any other mask: documents, masks over params, over b / h; `builds_tables`);
        // host block maps know no lengths
        let kv_ok = plan.kv_bounds(popts.kv_table).is_closed_form() || opts.gpu_block_tables;
        let (true, Some(q0), true) = (popts.ws, q0, kv_ok) else {
            return Err(ExecError::Api(Error::Usage(
                "lengths on the device are read by the warp-specialized forward (sm_90, fast mode) of a position-offset program whose mask has a closed form or a block table built on the GPU (not with ATTNC_BLOCK_TABLES=host) only".into(),
            )));
        };
        popts.device_lens = Some(q0 as u32);
        // the dynamic tile scheduler: the sequences' lengths, hence the tiles' work,
        // differ (and the kernel's pieces cannot be cut from the capacity); unless
        // `ATTNC_FWD_PERSISTENT` says otherwise (measurements). At head dim 256 one CTA
        // per tile, as its forward runs (no room for a second Q buffer; the persistent
        // kernels not measured there)
        let small = popts.d.max(popts.dv) <= 128;
        if small && std::env::var_os("ATTNC_FWD_PERSISTENT").is_none() {
            popts.persistent = true;
            popts.dynamic_tiles = true;
        }
        popts.tail_split = false;
        popts.q_ahead = false;
        popts.cross_tile = false;
        popts.q_double = popts.persistent && small;
    }
    Ok(popts)
}

/// Whether a binding of kernel options `popts` (the forward's; the caller backward asks
/// with its kernels', which read no lengths) builds its block tables on the GPU
/// (`KernelKind::BlockTable`, with `gpu_block_tables`): a mask over captured tensors
/// (their data is on the device, or its upload would cost more than the build), and with
/// the lengths on the device (`PtxOptions::device_lens`, chunked prefill) every mask whose
/// kernel reads a table — masks over params or over b / h too: each sequence's map is
/// built at its own length, which no host map knows.
fn builds_tables(plan: &Plan, opts: &BindOptions, popts: &PtxOptions) -> bool {
    opts.gpu_block_tables
        && (plan.map_recipe() == MapRecipe::Tensors
            || (popts.device_lens.is_some() && !plan.kv_bounds(popts.kv_table).is_closed_form()))
}

fn bits(t: &Tensor) -> ExecResult<Vec<u16>> {
    t.to_u16_bits().ok_or_else(|| {
        ExecError::Api(Error::InputDType {
            which: "q/k/v".into(),
            expected: "bf16 or f16".into(),
            got: t.dtype(),
        })
    })
}

impl CudaExec {
    pub(crate) fn prepare(plan: &Plan, opts: &BindOptions) -> ExecResult<Self> {
        let input = input_type(opts)?;
        // a bad setting is reported before (and without) a device
        let tiers = match opts.jit_tiers {
            Some(t) => t,
            None => JitTiers::from_env().map_err(|e| ExecError::Api(Error::Usage(e)))?,
        };
        let g = gpu_at(opts.device)?;
        let popts = forward_options_for(plan, opts, g.device.arch(), input)?;
        let (kernel, jit) = g
            .jit
            .get(&g.device, plan, KernelKind::Forward, &popts, tiers)?;
        let doc = documents::DocExec::prepare(g, plan, opts, &popts)?.map(Box::new);
        let table = if builds_tables(plan, opts, &popts) {
            let (t, _stats) = g.jit.get(
                &g.device,
                plan,
                KernelKind::BlockTable,
                &popts,
                JitTiers::Off,
            )?;
            Some(t.current().0)
        } else {
            None
        };
        Ok(CudaExec {
            ordinal: opts.device,
            kernel,
            chosen: popts,
            jit,
            maps: None,
            table,
            kept: None,
            table_counts: (0, 0),
            caller: Default::default(),
            bwd_tables: None,
            doc,
            doc_calls: 0,
        })
    }

    /// Points this binding at `opts`' shape (the rest of `opts` as bound) when that shape
    /// selects the forward kernel this binding loaded ([`forward_options_for`]; true), so
    /// that a caller whose lengths change every call (chunked prefill's runs in a serving
    /// loop) keeps one binding: its module and its caller streams' state (buffers, tail
    /// workspace; a stream's block table is keyed by its shape). Drops what the old shape
    /// fixed (host block maps, the kept device table). False: the kernel would differ
    /// (bind anew); nothing changed.
    pub(crate) fn reshape(&mut self, plan: &Plan, opts: &BindOptions) -> ExecResult<bool> {
        let g = gpu_at(opts.device)?;
        if forward_options_for(plan, opts, g.device.arch(), input_type(opts)?)? != self.chosen {
            return Ok(false);
        }
        self.maps = None;
        self.kept = None;
        Ok(true)
    }

    /// The forward kernel's `(q_block, kv_block)`.
    pub(crate) fn forward_tiles(&self) -> (u32, u32) {
        let (k, _) = self.kernel.current();
        (k.spec().q_block, k.spec().kv_block)
    }

    /// The kv-bounds source of the forward kernel.
    pub(crate) fn kv_bounds(&self) -> KvBounds {
        self.kernel.current().0.spec().kv_bounds.clone()
    }

    /// The forward kernel's options.
    pub(crate) fn forward_options(&self) -> PtxOptions {
        self.kernel.current().0.spec().options
    }

    /// `(built, reused)`: forwards that built the block table on the GPU / reused the
    /// one kept from an earlier call.
    pub(crate) fn table_counts(&self) -> (u64, u64) {
        self.table_counts
    }

    /// Forwards and device timings that ran the document-tiled kernel ([`documents`]).
    pub(crate) fn doc_tile_calls(&self) -> u64 {
        self.doc_calls
    }

    /// The document tile list of calls with `bindings` (the ids' data on the host) for a
    /// block mask (`Bound::block_mask_tables`): `(q_block, tiles)`, the document-tiled
    /// kernel compiled now, or `None` where the binding runs no document tiles or the ids
    /// do not form contiguous documents.
    pub(crate) fn doc_tiles_for(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        bindings: &Bindings,
    ) -> ExecResult<Option<(u32, Vec<i32>)>> {
        let g = gpu_at(self.ordinal)?;
        let Some(doc) = self.doc.as_mut() else {
            return Ok(None);
        };
        Ok(doc
            .tiles(g, plan, opts, bindings)?
            .map(|(k, tiles)| (k.spec().q_block, tiles)))
    }

    /// The q tile height of the document-tiled kernel's tile lists, where the binding runs
    /// document tiles.
    pub(crate) fn doc_q_block(&self) -> Option<u32> {
        self.doc.as_ref().map(|d| d.q_block())
    }

    /// How the JIT served the bind.
    pub(crate) fn jit_stats(&self) -> JitStats {
        self.jit
    }

    /// Waits (at most `timeout`) until the optimized module is in use; its timings.
    pub(crate) fn wait_optimized(
        &self,
        timeout: std::time::Duration,
    ) -> std::result::Result<ReadyStats, CudaError> {
        self.kernel.wait_optimized(timeout)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
    ) -> ExecResult<(Tensor, Vec<f32>)> {
        let g = gpu_at(self.ordinal)?;
        // this call keeps the module it starts with, whatever is swapped in meanwhile
        let (kernel, _) = self.kernel.current();
        let doc = match &mut self.doc {
            Some(d) => d.problem(g, plan, opts, scale, q, k, v, bindings)?,
            None => None,
        };
        let (o, lse, built, p) = match doc {
            Some((dk, p)) => {
                dk.launch(&g.device, &p, &LaunchArgs::new())?;
                let (o, lse) = p.download(&g.device)?;
                self.doc_calls += 1;
                (o, lse, None, None)
            }
            None => {
                let (p, built) =
                    self.problem(g, &kernel, plan, opts, scale, q, k, v, bindings, true)?;
                kernel.launch(&g.device, &p, &LaunchArgs::new())?;
                let (o, lse) = p.download(&g.device)?;
                (o, lse, built, Some(p))
            }
        };
        // a table built by this call (and free of checked-mode errors) serves later
        // calls with the same key
        match (built, p.and_then(|p| p.built_table())) {
            (Some(key), Some(table)) => {
                self.kept = Some(Box::new(KeptTable { key, table }));
                self.table_counts.0 += 1;
            }
            (None, Some(_)) => self.table_counts.1 += 1,
            _ => {}
        }
        drop(kernel);
        self.kernel.release_retired(&g.device)?;
        // the kernel's bf16/f16 bits as they are (no round trip through f32)
        let s = opts.shape;
        let o_t = Tensor::from_bytes(
            vec![s.b, s.hq, s.lq, s.dv],
            opts.dtype,
            o.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
        .ok_or_else(|| CudaError::Mismatch("output size".into()))?;
        Ok((o_t, lse))
    }

    /// The block-table kernel to use for this launch, if the table is built on the GPU:
    /// a builder exists (tensor masks, `gpu_block_tables`) and the table fits the device.
    fn device_table(
        &self,
        kernel: &CudaKernel,
        plan: &Plan,
        opts: &BindOptions,
    ) -> Option<&Arc<CudaKernel>> {
        let t = self.table.as_ref()?;
        let m = kernel.spec();
        let geom = DeviceTable::new(
            &opts.shape,
            m.q_block,
            m.kv_block,
            plan.mask().uses_b,
            plan.mask().uses_h,
        );
        geom.capacity(&opts.shape).map(|_| t)
    }

    /// Uploads one call's inputs and provides its kv source (see the module header);
    /// a table built here is enqueued on the stream (the key it was built from comes
    /// back, for the caller to keep it under once the call succeeded). `reuse`: whether a
    /// kept table may serve.
    #[allow(clippy::too_many_arguments)]
    fn problem(
        &mut self,
        g: &Gpu,
        kernel: &CudaKernel,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
        reuse: bool,
    ) -> ExecResult<(DeviceProblem, Option<TableKey>)> {
        let (q, k, v) = (bits(q)?, bits(k)?, bits(v)?);
        let shape = &opts.shape;
        let upload = |blocks| {
            kernel.upload(
                &g.device,
                shape,
                Qkv::Host(&q, &k, &v),
                scale,
                bindings,
                blocks,
            )
        };
        if let Some(builder) = self.device_table(kernel, plan, opts) {
            let deps = plan.mask_reads();
            let tiles = (kernel.spec().q_block, kernel.spec().kv_block);
            if reuse
                && let Some(kt) = &self.kept
                && policy::table_matches(deps, &kt.key, shape, tiles, bindings)
            {
                return Ok((upload(KvBlocks::Kept(&kt.table))?, None));
            }
            let key = policy::table_key(deps, shape, tiles, bindings);
            let m = plan.mask();
            let p = upload(KvBlocks::Build {
                uses_b: m.uses_b,
                uses_h: m.uses_h,
            })?;
            let skip = plan.skip_bounds(shape, bindings)?;
            let extra = p.skip_args(builder.spec(), skip.as_deref())?;
            builder.launch(&g.device, &p, &extra)?;
            return Ok((p, Some(key)));
        }
        if let KvBounds::ClosedForm(cf) = &kernel.spec().kv_bounds {
            let bounds = plan.closed_form_bounds(cf, shape, bindings)?;
            return Ok((upload(KvBlocks::ClosedForm(bounds.as_deref()))?, None));
        }
        let mut scratch = None;
        let maps = policy::maps_for(
            &mut self.maps,
            &mut scratch,
            plan,
            opts,
            kernel.spec().q_block as usize,
            kernel.spec().kv_block as usize,
            bindings,
        )?;
        Ok((upload(KvBlocks::Maps(maps))?, None))
    }

    /// Uploads the inputs once and times `iters` back-to-back launches of the forward
    /// kernel (CUDA events, median of 3), excluding host transfers, of the module current
    /// at the start; the milliseconds and that module's tier. A table built here is not
    /// kept (its call's errors are not checked).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn device_time(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
        iters: usize,
    ) -> ExecResult<(f64, JitTier)> {
        let g = gpu_at(self.ordinal)?;
        let (kernel, tier) = self.kernel.current();
        if let Some(d) = &mut self.doc
            && let Some((dk, p)) = d.problem(g, plan, opts, scale, q, k, v, bindings)?
        {
            let ms = dk.time(&g.device, &p, &LaunchArgs::new(), 3, iters.max(1), 3)?;
            self.doc_calls += 1;
            return Ok((ms, JitTier::Optimized));
        }
        let (p, _) = self.problem(g, &kernel, plan, opts, scale, q, k, v, bindings, true)?;
        let ms = kernel.time(&g.device, &p, &LaunchArgs::new(), 3, iters.max(1), 3)?;
        Ok((ms, tier))
    }

    /// With the block table built on the GPU: uploads the inputs once and times `iters`
    /// back-to-back builds of the table (CUDA events, median of 3). `None` where the
    /// table is not built on the device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn table_time(
        &mut self,
        plan: &Plan,
        opts: &BindOptions,
        scale: f32,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bindings: &Bindings,
        iters: usize,
    ) -> ExecResult<Option<f64>> {
        let (kernel, _) = self.kernel.current();
        let Some(builder) = self.device_table(&kernel, plan, opts).cloned() else {
            return Ok(None);
        };
        let g = gpu_at(self.ordinal)?;
        // never the kept table: the build kernel itself is timed, into this problem's table
        let (p, _) = self.problem(g, &kernel, plan, opts, scale, q, k, v, bindings, false)?;
        let skip = plan.skip_bounds(&opts.shape, bindings)?;
        let extra = p.skip_args(builder.spec(), skip.as_deref())?;
        let ms = builder.time(&g.device, &p, &extra, 3, iters.max(1), 3)?;
        Ok(Some(ms))
    }
}

/// The plain (not warp-specialized) forward kernel's tile as the environment overrides it
/// (for comparing tiles through the runtime with one binary): `ATTNC_FWD_TILE=QxKV` (e.g.
/// `64x64`) sets the q and kv blocks of the plain wgmma kernel, `QxKVs` (e.g. `64x64s`)
/// puts the binding on the mma.sync kernel with that tile (its defaults: one m-tile).
/// The warp-specialized kernel, unset variables and values that do not parse keep the
/// binding's choice; a tile the kernel does not take is refused when it is generated.
fn forward_tile_from_env(o: PtxOptions) -> PtxOptions {
    if o.ws {
        return o;
    }
    let Ok(v) = std::env::var("ATTNC_FWD_TILE") else {
        return o;
    };
    let v = v.trim();
    let (v, sync) = match v.strip_suffix('s') {
        Some(t) => (t, true),
        None => (v, false),
    };
    let Some((Ok(qb), Ok(kvb))) = v
        .split_once('x')
        .map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>()))
    else {
        return o;
    };
    let mut n = if sync {
        PtxOptions {
            checked: o.checked,
            float_positions: o.float_positions,
            kv_table: o.kv_table,
            ..PtxOptions::sync(o.arch, o.d, o.dv, o.input)
        }
    } else {
        o
    };
    n.q_block = qb;
    n.kv_block = kvb;
    n
}

/// The warp-specialized forward's CTA schedule as the environment overrides it (for
/// comparing schedules with one binary): `ATTNC_FWD_PERSISTENT=1|dyn|0` turns persistent
/// CTAs (`PtxOptions::persistent`) on with static rounds of tiles, on with the dynamic
/// tile scheduler (`PtxOptions::dynamic_tiles`), or off; `ATTNC_FWD_Q_END=1|0` q blocks from
/// the end (`PtxOptions::q_from_end`) on or off; `ATTNC_FWD_SPLIT_TAIL=1|0` the score's
/// path for partial blocks inside the sequence (`PtxOptions::split_tail`); `ATTNC_FWD_Q2=1|0`
/// two Q buffers for persistent CTAs (`PtxOptions::q_double`); `ATTNC_FWD_CROSS=1|0` the
/// next tile's first S with the last P V (`PtxOptions::cross_tile`, with the dynamic
/// scheduler); `ATTNC_FWD_CLAIM=1|0` the next tile claimed when a tile starts
/// (`PtxOptions::early_claim`); `ATTNC_FWD_QAHEAD=1|0` the next tile's Q copied after this
/// tile's first K and V (`PtxOptions::q_ahead`, with the dynamic scheduler and two Q
/// buffers); `ATTNC_FWD_LATE_WAIT=1|0` the wait for the last P V after
/// the exponentials (`PtxOptions::pv_wait_late`); `ATTNC_FWD_ILP=1|0` the softmax's
/// reductions over four chains (`PtxOptions::softmax_ilp`); `ATTNC_FWD_MASK_EARLY=1|0` a
/// partial block's mask evaluated before the wait for S (`PtxOptions::mask_early`);
/// `ATTNC_FWD_MASK_KINDS=1|0` partial blocks by conjunct kind (`PtxOptions::mask_kinds`;
/// the GPU block table is built with the same options); `ATTNC_FWD_POS_BIAS=1|0` a
/// position bias score (ALiBi) in two instructions an element (`PtxOptions::pos_bias`);
/// `ATTNC_FWD_DIAG=1|0` `kv - q` shared along the fragment's diagonals
/// (`PtxOptions::diag_cse`); `ATTNC_FWD_TAIL=1|0` the last tiles split along kv (`PtxOptions::tail_split`, with
/// persistent CTAs in static rounds: `ATTNC_FWD_PERSISTENT=1`);
/// `ATTNC_FWD_STAGES=2|3` the K/V ring's stages (3: one Q buffer above D, Dv 64);
/// `ATTNC_FWD_OTMA=1|0` O through shared memory and TMA stores (`PtxOptions::o_tma`, with
/// the dynamic scheduler at Dv 128 and two stages); `ATTNC_FWD_UNIFORM=1|0` score reads
/// that are one element over a thread's box read once (`PtxOptions::uniform_reads`, sessions
/// 37 and 39, on by default);
/// `ATTNC_FWD_LPT=N` sets the longest-first order's
/// group (`PtxOptions::lpt_group`, 0 = the plain order). Other kernels, unset variables
/// and values that do not parse keep the binding's choice.
fn forward_schedule_from_env(mut o: PtxOptions) -> PtxOptions {
    if !o.ws {
        return o;
    }
    match std::env::var("ATTNC_FWD_PERSISTENT").as_deref() {
        Ok("1") => (o.persistent, o.dynamic_tiles) = (true, false),
        Ok("dyn") => (o.persistent, o.dynamic_tiles) = (true, true),
        Ok("0") => (o.persistent, o.dynamic_tiles) = (false, false),
        _ => {}
    }
    for (name, switch) in [
        ("ATTNC_FWD_Q_END", &mut o.q_from_end),
        ("ATTNC_FWD_SPLIT_TAIL", &mut o.split_tail),
        ("ATTNC_FWD_Q2", &mut o.q_double),
        ("ATTNC_FWD_CLAIM", &mut o.early_claim),
        ("ATTNC_FWD_QAHEAD", &mut o.q_ahead),
        ("ATTNC_FWD_CROSS", &mut o.cross_tile),
        ("ATTNC_FWD_LATE_WAIT", &mut o.pv_wait_late),
        ("ATTNC_FWD_ILP", &mut o.softmax_ilp),
        ("ATTNC_FWD_MASK_EARLY", &mut o.mask_early),
        ("ATTNC_FWD_MASK_KINDS", &mut o.mask_kinds),
        ("ATTNC_FWD_POS_BIAS", &mut o.pos_bias),
        ("ATTNC_FWD_DIAG", &mut o.diag_cse),
        ("ATTNC_FWD_TAIL", &mut o.tail_split),
        ("ATTNC_FWD_OTMA", &mut o.o_tma),
        ("ATTNC_FWD_UNIFORM", &mut o.uniform_reads),
    ] {
        if let Some(on) = env_switch(name) {
            *switch = on;
        }
    }
    // `ATTNC_FWD_STAGES=2|3`: the K/V ring's stages; three leave no room for a second Q
    // buffer above D, Dv 64 (session 19: causal D128 with three stages and one Q buffer won
    // 11 of 12 alternated rounds at B2, 9 of 12 at GQA, by 0.3-1%; not the default)
    if let Some(n) = std::env::var("ATTNC_FWD_STAGES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| (2..=3).contains(n))
    {
        o.stages = n;
        if n == 3 && o.d.max(o.dv) > 64 {
            o.q_double = false;
        }
    }
    // (two Q buffers only with persistent CTAs, the cross-tile issue with the dynamic
    // scheduler)
    o.q_double &= o.persistent;
    o.cross_tile &= o.dynamic_tiles;
    o.early_claim &= o.dynamic_tiles;
    o.q_ahead &= o.dynamic_tiles && o.q_double && !o.cross_tile;
    o.tail_split &= o.persistent && !o.dynamic_tiles;
    // (O's staging buffer: the dynamic scheduler, q blocks of 128 at Dv 128, D <= 128, and
    // two stages — a third leaves no room for it at D128)
    o.o_tma &= o.dynamic_tiles && o.q_block == 128 && o.dv == 128 && o.d <= 128 && o.stages == 2;
    if let Some(n) = std::env::var("ATTNC_FWD_LPT")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        o.lpt_group = n;
    }
    o
}

/// An on/off environment switch: `Some(true)` when `name` is `1`, `Some(false)` when it
/// is `0`, `None` when it is unset or anything else (the binding's choice stays).
pub(crate) fn env_switch(name: &str) -> Option<bool> {
    match std::env::var(name).as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::backend::llvm::{Arch, EmitText, spec};
    use attnc_compiler::shape::Shape;

    /// Every attention program of `examples/`.
    fn example_programs() -> Vec<attnc_compiler::ir::Program> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "attn") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            out.extend(attnc_compiler::compile_source(&src).unwrap().programs);
        }
        out
    }

    /// Chunked prefill's paged runs as the runtime configures their kernel
    /// ([`forward_options_for`] with `kv_pages`, on the position-offset program a run
    /// binds): for every example's attentions, D64 and D128, with one, two and four
    /// producer threads (`DecodeTuning::paged_producers`; 0 is the runtime's default of
    /// two for a binding made directly, the runs choosing by page size), the options say
    /// so and the kernel generates, each count its own PTX (the producer's copies differ),
    /// the same parameters and shared memory; where the plan's forward for the shape is
    /// not the warp-specialized kernel (D64 bands and block tables) the options are refused
    /// and [`cache_forward_applies`] says no.
    #[test]
    fn paged_runs_kernels_generate_for_every_producer_count() {
        let (mut kernels, mut refused) = (0, 0);
        for (p, d) in attnc_compiler::test_matrix::cases(&example_programs(), &[64, 128]) {
            let plan = Plan::new(&attnc_compiler::decode::offset_program(&p));
            let shape = Shape {
                b: 8,
                hq: 32,
                hkv: 8,
                lq: 256,
                lkv: 8192,
                d,
                dv: d,
            };
            let mut o = BindOptions::new(crate::Backend::Cuda, shape, DType::BF16);
            o.kv_pages = true;
            let mut seen = Vec::new();
            for (n, want) in [(0, 2), (1, 1), (2, 2), (4, 4)] {
                o.decode.paged_producers = n;
                let what = format!("{} d{d} producers {n}", p.name);
                let applies = cache_forward_applies(&plan, &o, Arch::Sm90);
                let got = forward_options_for(&plan, &o, Arch::Sm90, InputType::Bf16);
                // (a plan whose forward is not the warp-specialized kernel here:
                // refused, and the runs say so before they bind)
                assert_eq!(applies, got.is_ok(), "{what}");
                let Ok(popts) = got else {
                    refused += 1;
                    continue;
                };
                assert_eq!(popts.producers, want, "{what}");
                let (k, _) = spec::generate(&plan, KernelKind::Forward, &popts, EmitText::PtxOnly)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                seen.push((n, k));
                kernels += 1;
            }
            let Some((_, default)) = seen.first() else {
                continue;
            };
            for (n, k) in &seen[1..] {
                let what = format!("{} d{d} producers {n}", p.name);
                assert_eq!(
                    (&k.spec.params, k.spec.smem_bytes, k.spec.threads),
                    (
                        &default.spec.params,
                        default.spec.smem_bytes,
                        default.spec.threads
                    ),
                    "{what}"
                );
                assert_eq!(k.ptx == default.ptx, *n == 2, "{what}");
            }
        }
        // (the whole product: 100 and more; the test command's rotation: half)
        let least = if attnc_compiler::test_matrix::long_tests() {
            100
        } else {
            50
        };
        assert!(kernels >= least && refused > 0, "{kernels} / {refused}");
    }

    /// The document-tiled forward (`PtxOptions::doc_tiles`) of every example whose mask
    /// is a document mask (`Plan::doc_split`), at D64 and D128: its options (no TMA stores
    /// of O, no kv split of the last tiles), the tile list among its params — on the grid's
    /// x axis with one CTA a tile, walked by persistent CTAs otherwise —, the kernel
    /// deterministic and without the tile list when the option is off; a program without
    /// a document mask has no split. (For ptxas: `ATTNC_DOC_PTX_DIR=dir`.)
    #[test]
    fn doc_tiles_kernels_generate_for_document_masks() {
        use attnc_compiler::backend::llvm::{GridDim, KernelParam};
        let (mut kernels, mut others) = (0, 0);
        for p in example_programs() {
            let plan = Plan::new(&p);
            let Some((dplan, _)) = plan.doc_split() else {
                others += 1;
                continue;
            };
            assert!(dplan.kv_bounds(false).is_closed_form(), "{}", p.name);
            for d in [64, 128] {
                let shape = Shape {
                    b: 2,
                    hq: 16,
                    hkv: 16,
                    lq: 8192,
                    lkv: 8192,
                    d,
                    dv: d,
                };
                let what = format!("{} d{d}", p.name);
                let o = BindOptions::new(crate::Backend::Cuda, shape, DType::BF16);
                let popts = forward_options_for(dplan, &o, Arch::Sm90, InputType::Bf16)
                    .unwrap()
                    .for_doc_tiles();
                // (D64 bands run on the plain wgmma kernel: no document tiles there)
                if !popts.ws {
                    continue;
                }
                assert!(popts.doc_tiles, "{what}");
                assert!(
                    !popts.o_tma && !popts.tail_split && !popts.q_from_end,
                    "{what}"
                );
                let emit = |o: &PtxOptions| {
                    spec::generate(dplan, KernelKind::Forward, o, EmitText::PtxOnly)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                        .0
                };
                let (k, again) = (emit(&popts), emit(&popts));
                assert_eq!(k.ptx, again.ptx, "{what}: deterministic");
                assert!(k.spec.params.contains(&KernelParam::DocTiles), "{what}");
                // (one CTA per tile: the list on the grid's x axis; persistent CTAs with
                // the tile counter: `NumQBlocks x Hq` tiles)
                let one = emit(&PtxOptions {
                    persistent: false,
                    dynamic_tiles: false,
                    q_double: false,
                    early_claim: false,
                    ..popts
                });
                assert_eq!(one.spec.grid[0], GridDim::DocTiles, "{what}");
                let pers = emit(&PtxOptions {
                    persistent: true,
                    dynamic_tiles: true,
                    ..popts
                });
                assert_eq!(pers.spec.grid[0], GridDim::Persistent, "{what}");
                assert!(pers.spec.params.contains(&KernelParam::DocTiles), "{what}");
                let plain = PtxOptions {
                    doc_tiles: false,
                    ..popts
                };
                let k0 = emit(&plain);
                assert!(!k0.spec.params.contains(&KernelParam::DocTiles), "{what}");
                assert_ne!(k0.ptx, k.ptx, "{what}");
                if let Ok(dir) = std::env::var("ATTNC_DOC_PTX_DIR") {
                    let dir = std::path::Path::new(&dir);
                    std::fs::write(dir.join(format!("{}_d{d}_one.ptx", p.name)), &one.ptx).unwrap();
                    std::fs::write(dir.join(format!("{}_d{d}_pers.ptx", p.name)), &pers.ptx)
                        .unwrap();
                }
                kernels += 1;
            }
        }
        assert!(kernels >= 5 && others > 10, "{kernels} / {others}");
    }

    /// Chunked prefill with the lengths on the device (`BindOptions::device_lens`, on
    /// `decode::device_offset_program`), as the runtime configures it: for every example's
    /// attentions, D64, D128 and D256, contiguous and paged, the options say so (the `__q0`
    /// param, the dynamic scheduler up to D128 and one CTA per tile at D256, no kv split) and the kernel generates twice
    /// identically, reading `SeqLens` and, at the same shape without the option, not;
    /// every mask without a closed form (over captured tensors, params, b / h; session 33:
    /// before, tensors only) takes a block table built on the GPU per sequence (its builder
    /// reads `SeqLens` too); D64's bands are refused, and [`cache_forward_applies`] agrees.
    #[test]
    fn device_lens_kernels_generate_for_every_closed_form() {
        use attnc_compiler::backend::llvm::KernelParam;
        let (mut kernels, mut refused, mut tables, mut other_tables) = (0, 0, 0, 0);
        let settings = [64, 128, 256].map(|d| [(d, false), (d, true)]).concat();
        for (p, (d, paged)) in attnc_compiler::test_matrix::cases(&example_programs(), &settings) {
            let dp = attnc_compiler::decode::device_offset_program(&p);
            let plan = Plan::new(&dp);
            let q0 = dp.params.iter().position(|x| x.name == "__q0").unwrap();
            let shape = Shape {
                b: 8,
                hq: 32,
                hkv: 8,
                lq: 256,
                lkv: 8192,
                d,
                dv: d,
            };
            let what = format!("{} d{d} paged {paged}", p.name);
            let mut o = BindOptions::new(crate::Backend::Cuda, shape, DType::BF16);
            o.kv_pages = paged;
            o.device_lens = true;
            let applies = cache_forward_applies(&plan, &o, Arch::Sm90);
            let got = forward_options_for(&plan, &o, Arch::Sm90, InputType::Bf16);
            assert_eq!(applies, got.is_ok(), "{what}");
            let Ok(popts) = got else {
                refused += 1;
                continue;
            };
            let table = !plan.kv_bounds(false).is_closed_form();
            // (every table mask's table built on the GPU: tensors, params, b / h)
            assert_eq!(builds_tables(&plan, &o, &popts), table, "{what}");
            other_tables += (table && plan.map_recipe() != MapRecipe::Tensors) as usize;
            assert_eq!(popts.device_lens, Some(q0 as u32), "{what}");
            // (head dim 256: one CTA per tile, as its forward)
            assert_eq!(popts.persistent, d <= 128, "{what}");
            assert_eq!(popts.dynamic_tiles, d <= 128, "{what}");
            assert!(!popts.tail_split && !popts.q_ahead, "{what}");
            let emit = || {
                spec::generate(&plan, KernelKind::Forward, &popts, EmitText::PtxOnly)
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
                    .0
            };
            let (k, again) = (emit(), emit());
            assert_eq!(k.ptx, again.ptx, "{what}: deterministic");
            assert!(k.spec.params.contains(&KernelParam::SeqLens), "{what}");
            let plain = PtxOptions {
                device_lens: None,
                ..popts
            };
            let (k0, _) = spec::generate(&plan, KernelKind::Forward, &plain, EmitText::PtxOnly)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(!k0.spec.params.contains(&KernelParam::SeqLens), "{what}");
            assert!(k.spec.smem_bytes <= 227 * 1024, "{what}");
            if table {
                // the builder of the per-sequence tables: the same lengths
                let b = || {
                    spec::generate(&plan, KernelKind::BlockTable, &popts, EmitText::PtxOnly)
                        .unwrap_or_else(|e| panic!("{what}: builder: {e}"))
                        .0
                };
                let (t, again) = (b(), b());
                assert_eq!(t.ptx, again.ptx, "{what}: builder deterministic");
                assert!(t.spec.params.contains(&KernelParam::SeqLens), "{what}");
                let (t0, _) =
                    spec::generate(&plan, KernelKind::BlockTable, &plain, EmitText::PtxOnly)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(!t0.spec.params.contains(&KernelParam::SeqLens), "{what}");
                tables += 1;
            }
            // (for ptxas: `ATTNC_LENS_PTX_DIR=dir`)
            if let Ok(dir) = std::env::var("ATTNC_LENS_PTX_DIR") {
                let name = format!("{}_d{d}_{}.ptx", p.name, paged as u8);
                let dir = std::path::Path::new(&dir);
                std::fs::write(dir.join(&name), &k.ptx).unwrap();
                // (the same binding without the option, to compare)
                std::fs::write(dir.join(format!("plain_{name}")), &k0.ptx).unwrap();
            }
            kernels += 1;
        }
        // (the whole product: 40 kernels and more; the test command's rotation: one
        // setting per program)
        let (k_least, t_least) = if attnc_compiler::test_matrix::long_tests() {
            (40, 6)
        } else {
            (15, 3)
        };
        assert!(
            kernels >= k_least && refused > 0 && tables >= t_least && other_tables >= t_least,
            "{kernels} / {refused} / {tables} / {other_tables}"
        );
    }
}
