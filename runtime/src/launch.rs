//! The seam between compiling and launching: per backend, what `bind` prepares and
//! how `forward` runs it.
//!
//! In: a verified `Program`, bind options, host inputs and the converted captures.
//! Out: `O` and `LSE` as f32 vectors in the layouts of `attnc_compiler::shape`.
//! Block maps: index-only masks are classified once at bind time (the shape is known);
//! masks over params are classified at each launch from the param values; masks over
//! captured tensors, on the CUDA backend, get their table built on the GPU at each
//! launch by the block-table kernel (JIT-compiled and cached beside the attention
//! kernel; exact; same stream, no host pass), and elsewhere (CPU, or
//! `BindOptions::gpu_block_tables` off, or a table too large for the device) from
//! per-block tensor summaries on the host (never by evaluating every point).
//! CUDA kernels whose kv bounds are a closed form (`PtxKernel::kv_bounds`: no mask, or
//! a conjunction of linear constraints) get no block maps at all: each launch passes the
//! closed form's offsets for its params (`classify::closed_form_bounds`), or asks for
//! every block partial when the mask's i32 arithmetic may wrap for that launch.
//! CUDA JIT: `bind` gets a [`JitKernel`] from the process's [`JitCache`] under the tier
//! policy of the bind options (or `ATTNC_JIT_TIERS`); each `forward` takes the module
//! current at its start and releases retired ones after it has synchronized.

use crate::api::{BindOptions, Variant, out_of_bounds};
use crate::cache::DiskCache;
use crate::cuda::{
    CudaDevice, CudaError, CudaKernel, DeviceProblem, DeviceTable, JitCache, JitKernel, JitStats,
    JitTier, JitTiers, KvBlocks,
};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::classify::{
    Implied, MaskInfo, Tier, analyze, build_block_maps, closed_form_bounds,
};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions};
use attnc_compiler::backend::llvm::{InputType, KvBounds, PtxOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::interp::EvalError;
use attnc_compiler::ir::Program;
use attnc_compiler::reference;
use std::sync::{Arc, OnceLock};

/// What a bound variant holds for its backend.
pub(crate) enum Kernel {
    Reference,
    Cpu {
        kernel: Box<CpuKernel>,
        info: MaskInfo,
        maps: Option<BlockMaps>,
        /// q, k, v as f32, reused between calls.
        inputs: [Vec<f32>; 3],
    },
    Cuda {
        /// The best module loaded so far (tiered JIT: swapped to the optimized one when
        /// it is ready; each call takes the current one once).
        kernel: Arc<JitKernel>,
        /// How the JIT served the bind.
        jit: JitStats,
        info: MaskInfo,
        maps: Option<BlockMaps>,
        /// The block-table kernel, for masks over captured tensors with
        /// `gpu_block_tables` on, with the mask's linear conjuncts whose bounds each
        /// launch passes it (when it was built to skip the tiles outside them).
        table: Option<TableBuilder>,
    },
}

/// The block-table kernel of a binding and what its launches need from the host.
pub(crate) struct TableBuilder {
    kernel: Arc<CudaKernel>,
    /// The mask's linear conjuncts, when the kernel skips the tiles outside them
    /// (`PtxKernel::table_skip`).
    implied: Option<Implied>,
}

impl TableBuilder {
    /// The skip bounds of one launch (`None`: skip nothing, or no skip form).
    fn skip(&self, opts: &BindOptions, bindings: &Bindings) -> Result<Option<Vec<Bound>>> {
        match &self.implied {
            Some(imp) => imp
                .bounds(&opts.shape, bindings)
                .map_err(|e| Error::Backend {
                    backend: "blocks",
                    message: e.to_string(),
                }),
            None => Ok(None),
        }
    }
}

impl Kernel {
    /// The kv-bounds source of a CUDA kernel.
    pub(crate) fn kv_bounds(&self) -> Option<KvBounds> {
        match self {
            Kernel::Cuda { kernel, .. } => Some(kernel.current().0.meta().kv_bounds.clone()),
            _ => None,
        }
    }
}

/// The process's CUDA device 0 and its JIT cache (in memory, PTX and cubins on disk), opened
/// on first use. Opening a context costs tens of milliseconds, so all bindings share it.
struct Gpu {
    device: CudaDevice,
    jit: JitCache,
}

static GPU: OnceLock<Result<Gpu, CudaError>> = OnceLock::new();

fn gpu() -> Result<&'static Gpu, CudaError> {
    GPU.get_or_init(|| {
        let device = CudaDevice::new(0)?;
        let level = crate::cuda::jit::opt_level_from_env().map_err(CudaError::Mismatch)?;
        Ok(Gpu {
            device,
            jit: JitCache::new(DiskCache::from_env()).with_opt_level(level),
        })
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Waits (at most `timeout` in all) for the tiered JIT's background compiles of this
/// process to finish, so that their optimized cubins reach the disk cache before a
/// short-lived program exits. Returns at once when the CUDA backend was never used.
pub fn wait_for_background_jit(timeout: std::time::Duration) {
    if let Some(Ok(g)) = GPU.get() {
        g.jit.wait_pending(timeout);
    }
}

/// Name and compute capability of the GPU the CUDA backend would use.
pub fn cuda_device_info() -> Result<String> {
    let g = gpu().map_err(|e| Error::BackendUnavailable {
        backend: "cuda",
        reason: e.to_string(),
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

fn cuda_error(variant: &Variant, e: CudaError) -> Error {
    match e {
        CudaError::OutOfBounds {
            in_score,
            inst,
            tensor,
            index,
        } => {
            let p = variant.program();
            let f = if in_score {
                p.score.as_ref()
            } else {
                p.mask.as_ref()
            };
            let span = f
                .and_then(|f| f.spans.get(inst as usize).copied())
                .unwrap_or(p.span);
            let info = p.tensors.get(tensor as usize);
            let e = EvalError::OutOfBounds {
                tensor: info
                    .map(|t| t.name.clone())
                    .unwrap_or_else(|| format!("#{tensor}")),
                index: index.iter().map(|x| *x as i64).collect(),
                dims: Vec::new(),
                span,
            };
            out_of_bounds(variant, &e)
        }
        CudaError::NoDriver | CudaError::NoDevice(_) | CudaError::UnsupportedGpu(..) => {
            Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            }
        }
        other => Error::Backend {
            backend: "cuda",
            message: other.to_string(),
        },
    }
}

fn cpu_error(variant: &Variant, e: CpuError) -> Error {
    match e {
        CpuError::Eval(e) => out_of_bounds(variant, &e),
        other => Error::Backend {
            backend: "cpu",
            message: other.to_string(),
        },
    }
}

pub(crate) fn prepare(program: &Program, opts: &BindOptions) -> Result<Kernel> {
    match opts.backend {
        crate::api::Backend::Reference => Ok(Kernel::Reference),
        crate::api::Backend::Cpu => {
            let cpu_opts = CpuOptions {
                checked: opts.checked,
                ..CpuOptions::default()
            };
            let kernel =
                attnc_compiler::backend::cranelift::compile(program, &cpu_opts).map_err(|e| {
                    Error::Backend {
                        backend: "cpu",
                        message: e.to_string(),
                    }
                })?;
            let info = analyze(program);
            Ok(Kernel::Cpu {
                kernel: Box::new(kernel),
                info,
                maps: None,
                inputs: Default::default(),
            })
        }
        crate::api::Backend::Cuda => {
            let input = match opts.dtype {
                DType::BF16 => InputType::Bf16,
                DType::F16 => InputType::F16,
                other => {
                    return Err(Error::InputDType {
                        which: "q, k, v (the CUDA backend takes bf16 or f16; convert them, or use the cpu backend for f32)".into(),
                        expected: "bf16 or f16".into(),
                        got: other,
                    });
                }
            };
            // a bad setting is reported before (and without) a device
            let tiers = match opts.jit_tiers {
                Some(t) => t,
                None => JitTiers::from_env().map_err(Error::Usage)?,
            };
            let g = gpu().map_err(|e| Error::BackendUnavailable {
                backend: "cuda",
                reason: e.to_string(),
            })?;
            let mut popts = PtxOptions::new(
                g.device.arch(),
                opts.shape.d as u32,
                opts.shape.dv as u32,
                input,
            );
            popts.checked = opts.checked;
            let (kernel, jit) = g
                .jit
                .get_tiered(&g.device, program, &popts, tiers)
                .map_err(|e| Error::Backend {
                    backend: "cuda",
                    message: e.to_string(),
                })?;
            let info = analyze(program);
            let table = if info.tier == Tier::Tensors && opts.gpu_block_tables {
                let (t, _stats) =
                    g.jit
                        .get_table(&g.device, program, &popts)
                        .map_err(|e| Error::Backend {
                            backend: "cuda",
                            message: e.to_string(),
                        })?;
                // the builder's skip form is derived from the same program (deterministic)
                let implied = t
                    .meta()
                    .table_skip
                    .as_ref()
                    .and_then(|_| Implied::derive(program));
                Some(TableBuilder { kernel: t, implied })
            } else {
                None
            };
            Ok(Kernel::Cuda {
                kernel,
                jit,
                info,
                maps: None,
                table,
            })
        }
    }
}

/// Whether a launch's block maps stay valid for every later launch of the binding.
fn reusable(info: &MaskInfo, opts: &BindOptions) -> bool {
    matches!(info.tier, Tier::Dense | Tier::IndexOnly) && !opts.checked
}

/// The block maps of one launch for a kernel with these block sizes. In checked mode
/// every block is partial, so that every mask read the source performs is checked.
pub(crate) fn launch_maps(
    program: &Program,
    info: &MaskInfo,
    opts: &BindOptions,
    q_block: usize,
    kv_block: usize,
    bindings: &Bindings,
) -> Result<BlockMaps> {
    if opts.checked && program.mask.is_some() {
        let s = opts.shape;
        return Ok(BlockMaps::single(
            attnc_compiler::analysis::blockmap::BlockMap::all_partial(
                s.lq, s.lkv, q_block, kv_block,
            ),
        ));
    }
    build_block_maps(program, info, &opts.shape, q_block, kv_block, bindings).map_err(|e| {
        Error::Backend {
            backend: "blocks",
            message: e.to_string(),
        }
    })
}

/// The closed form's bounds of one launch of a closed-form CUDA kernel (`None`: every
/// block partial, see `classify::closed_form_bounds`); `Ok(None)` for a table kernel.
fn closed_form_launch(
    kernel: &CudaKernel,
    program: &Program,
    opts: &BindOptions,
    bindings: &Bindings,
) -> Result<Option<Option<Vec<Bound>>>> {
    let KvBounds::ClosedForm(cf) = &kernel.meta().kv_bounds else {
        return Ok(None);
    };
    closed_form_bounds(program, cf, &opts.shape, bindings)
        .map(Some)
        .map_err(|e| Error::Backend {
            backend: "blocks",
            message: e.to_string(),
        })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
) -> Result<(Vec<f32>, Vec<f32>)> {
    match kernel {
        Kernel::Reference => {
            let out = reference::attention(
                variant.program(),
                &opts.shape,
                &q.to_f32(),
                &k.to_f32(),
                &v.to_f32(),
                scale,
                bindings,
            )
            .map_err(|e| out_of_bounds(variant, &e))?;
            Ok((out.o, out.lse))
        }
        Kernel::Cpu {
            kernel,
            info,
            maps,
            inputs,
        } => {
            let launch;
            let maps = match maps {
                Some(m) => &*m,
                None => {
                    let built = launch_maps(
                        variant.program(),
                        info,
                        opts,
                        kernel.q_block(),
                        kernel.kv_block(),
                        bindings,
                    )?;
                    if reusable(info, opts) {
                        // index-only: the shape fixes the maps; keep them for later calls
                        &*maps.insert(built)
                    } else {
                        launch = built;
                        &launch
                    }
                }
            };
            let s = opts.shape;
            let mut o = vec![0f32; s.o_len()];
            let mut lse = vec![0f32; s.lse_len()];
            let threads = if opts.threads == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                opts.threads
            };
            let [qf, kf, vf] = inputs;
            q.read_f32_into(qf);
            k.read_f32_into(kf);
            v.read_f32_into(vf);
            kernel
                .run(
                    &s, qf, kf, vf, scale, bindings, maps, threads, &mut o, &mut lse,
                )
                .map_err(|e| cpu_error(variant, e))?;
            Ok((o, lse))
        }
        Kernel::Cuda {
            kernel: jit,
            info,
            maps,
            table,
            ..
        } => {
            let g = gpu().map_err(|e| cuda_error(variant, e))?;
            // this call keeps the module it starts with, whatever is swapped in meanwhile
            let (kernel, _) = jit.current();
            let p = cuda_problem(
                g, &kernel, info, maps, table, variant, opts, scale, q, k, v, bindings,
            )?;
            kernel
                .launch(&g.device, &p)
                .map_err(|e| cuda_error(variant, e))?;
            let (o, lse) = kernel
                .download(&g.device, &p)
                .map_err(|e| cuda_error(variant, e))?;
            drop(kernel);
            jit.release_retired(&g.device)
                .map_err(|e| cuda_error(variant, e))?;
            let o_t = Tensor::from_bytes(
                vec![o.len()],
                opts.dtype,
                o.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
            .ok_or_else(|| Error::Backend {
                backend: "cuda",
                message: "output size".into(),
            })?;
            Ok((o_t.to_f32(), lse))
        }
    }
}

/// The block-table kernel to use for this launch, if the table is built on the GPU: a
/// builder exists (tensor masks, `gpu_block_tables`) and the table fits on the device.
fn device_table<'a>(
    kernel: &CudaKernel,
    table: &'a Option<TableBuilder>,
    info: &MaskInfo,
    opts: &BindOptions,
) -> Option<&'a TableBuilder> {
    let t = table.as_ref()?;
    let m = kernel.meta();
    let geom = DeviceTable::new(&opts.shape, m.q_block, m.kv_block, info.uses_b, info.uses_h);
    geom.capacity(&opts.shape).map(|_| t)
}

/// Uploads one launch's inputs and provides its block table: built on the device by the
/// block-table kernel (enqueued, same stream), or built on the host (kept for later
/// calls where it cannot change) and uploaded.
#[allow(clippy::too_many_arguments)]
fn cuda_problem(
    g: &Gpu,
    kernel: &CudaKernel,
    info: &MaskInfo,
    maps: &mut Option<BlockMaps>,
    table: &Option<TableBuilder>,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
) -> Result<DeviceProblem> {
    let bits = |t: &Tensor| {
        t.to_u16_bits().ok_or_else(|| Error::InputDType {
            which: "q/k/v".into(),
            expected: "bf16 or f16".into(),
            got: t.dtype(),
        })
    };
    if let Some(builder) = device_table(kernel, table, info, opts) {
        let p = kernel
            .upload_for_table(
                &g.device,
                &opts.shape,
                &bits(q)?,
                &bits(k)?,
                &bits(v)?,
                scale,
                bindings,
                info.uses_b,
                info.uses_h,
            )
            .map_err(|e| cuda_error(variant, e))?;
        let skip = builder.skip(opts, bindings)?;
        builder
            .kernel
            .build_table(&g.device, &p, skip.as_deref())
            .map_err(|e| cuda_error(variant, e))?;
        return Ok(p);
    }
    if let Some(bounds) = closed_form_launch(kernel, variant.program(), opts, bindings)? {
        return kernel
            .upload(
                &g.device,
                &opts.shape,
                &bits(q)?,
                &bits(k)?,
                &bits(v)?,
                scale,
                bindings,
                KvBlocks::ClosedForm(bounds.as_deref()),
            )
            .map_err(|e| cuda_error(variant, e));
    }
    let (qb, kb) = (
        kernel.meta().q_block as usize,
        kernel.meta().kv_block as usize,
    );
    let launch;
    let maps = match maps {
        Some(m) => &*m,
        None => {
            let built = launch_maps(variant.program(), info, opts, qb, kb, bindings)?;
            if reusable(info, opts) {
                &*maps.insert(built)
            } else {
                launch = built;
                &launch
            }
        }
    };
    kernel
        .upload(
            &g.device,
            &opts.shape,
            &bits(q)?,
            &bits(k)?,
            &bits(v)?,
            scale,
            bindings,
            KvBlocks::Maps(maps),
        )
        .map_err(|e| cuda_error(variant, e))
}

/// For the CUDA backend: uploads the inputs once and times `iters` back-to-back launches
/// on the device (CUDA events, median of 3 repetitions), excluding host transfers, of the
/// module current at the start (a tier swapped in meanwhile is not mixed in); returns the
/// milliseconds and that module's tier. `None` for backends that run on the host (time
/// `forward` instead).
#[allow(clippy::too_many_arguments)]
pub(crate) fn device_time_ms(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
    iters: usize,
) -> Result<Option<(f64, JitTier)>> {
    let Kernel::Cuda {
        kernel: jit,
        info,
        maps,
        table,
        ..
    } = kernel
    else {
        return Ok(None);
    };
    let g = gpu().map_err(|e| cuda_error(variant, e))?;
    let (kernel, tier) = jit.current();
    let problem = cuda_problem(
        g, &kernel, info, maps, table, variant, opts, scale, q, k, v, bindings,
    )?;
    let ms = kernel
        .time(&g.device, &problem, 3, iters.max(1), 3)
        .map_err(|e| cuda_error(variant, e))?;
    Ok(Some((ms, tier)))
}

/// The JIT's report of a CUDA binding (`None` for other backends).
pub(crate) fn jit_stats(kernel: &Kernel) -> Option<JitStats> {
    match kernel {
        Kernel::Cuda { jit, .. } => Some(*jit),
        _ => None,
    }
}

/// For a CUDA binding: waits (at most `timeout`) until the optimized module is in use;
/// its timings, or the reason it is not. `None` for other backends.
pub(crate) fn wait_optimized(
    kernel: &Kernel,
    timeout: std::time::Duration,
) -> Option<Result<crate::cuda::ReadyStats, CudaError>> {
    match kernel {
        Kernel::Cuda { kernel, .. } => Some(kernel.wait_optimized(timeout)),
        _ => None,
    }
}

/// For the CUDA backend with the block table built on the GPU: uploads the inputs once
/// and times `iters` back-to-back builds of the table (CUDA events, median of 3).
/// `None` where the table is not built on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn table_time_ms(
    kernel: &mut Kernel,
    variant: &Variant,
    opts: &BindOptions,
    scale: f32,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bindings: &Bindings,
    iters: usize,
) -> Result<Option<f64>> {
    let Kernel::Cuda {
        kernel: jit,
        info,
        maps,
        table,
        ..
    } = kernel
    else {
        return Ok(None);
    };
    let (kernel, _) = jit.current();
    let Some(builder) = device_table(&kernel, table, info, opts) else {
        return Ok(None);
    };
    let g = gpu().map_err(|e| cuda_error(variant, e))?;
    let problem = cuda_problem(
        g, &kernel, info, maps, table, variant, opts, scale, q, k, v, bindings,
    )?;
    let skip = builder.skip(opts, bindings)?;
    let ms = builder
        .kernel
        .time_table(&g.device, &problem, skip.as_deref(), 3, iters.max(1), 3)
        .map_err(|e| cuda_error(variant, e))?;
    Ok(Some(ms))
}
