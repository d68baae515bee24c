//! The seam between compiling and launching: per backend, what `bind` prepares and
//! how `forward` runs it.
//!
//! In: a verified `Program`, bind options, host inputs and the converted captures.
//! Out: `O` and `LSE` as f32 vectors in the layouts of `attnc_compiler::shape`.
//! Block maps: index-only masks are classified once at bind time (the shape is known);
//! masks over params or captured tensors are classified at each launch, from the
//! param values and per-block tensor summaries (never by evaluating every point).

use crate::api::{BindOptions, Variant, out_of_bounds};
use crate::cache::DiskCache;
use crate::cuda::{CudaDevice, CudaError, CudaKernel, JitCache};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::classify::{MaskInfo, Tier, analyze, build_block_maps};
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions};
use attnc_compiler::backend::llvm::{InputType, PtxOptions};
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
        kernel: Arc<CudaKernel>,
        info: MaskInfo,
        maps: Option<BlockMaps>,
    },
}

/// The process's CUDA device 0 and its JIT cache (in memory, and PTX on disk), opened
/// on first use. Opening a context costs tens of milliseconds, so all bindings share it.
struct Gpu {
    device: CudaDevice,
    jit: JitCache,
}

fn gpu() -> Result<&'static Gpu, CudaError> {
    static GPU: OnceLock<Result<Gpu, CudaError>> = OnceLock::new();
    GPU.get_or_init(|| {
        let device = CudaDevice::new(0)?;
        Ok(Gpu {
            device,
            jit: JitCache::new(DiskCache::from_env()),
        })
    })
    .as_ref()
    .map_err(|e| e.clone())
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
            let (kernel, _stats) =
                g.jit
                    .get(&g.device, program, &popts)
                    .map_err(|e| Error::Backend {
                        backend: "cuda",
                        message: e.to_string(),
                    })?;
            Ok(Kernel::Cuda {
                kernel,
                info: analyze(program),
                maps: None,
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
        Kernel::Cuda { kernel, info, maps } => {
            let g = gpu().map_err(|e| cuda_error(variant, e))?;
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
            let bits = |t: &Tensor| {
                t.to_u16_bits().ok_or_else(|| Error::InputDType {
                    which: "q/k/v".into(),
                    expected: "bf16 or f16".into(),
                    got: t.dtype(),
                })
            };
            let (o, lse) = kernel
                .forward_host(
                    &g.device,
                    &opts.shape,
                    &bits(q)?,
                    &bits(k)?,
                    &bits(v)?,
                    scale,
                    bindings,
                    maps,
                )
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

/// For the CUDA backend: uploads the inputs once and times `iters` back-to-back launches
/// on the device (CUDA events, median of 3 repetitions), excluding host transfers.
/// `None` for backends that run on the host (time `forward` instead).
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
) -> Result<Option<f64>> {
    let Kernel::Cuda { kernel, info, .. } = kernel else {
        return Ok(None);
    };
    let g = gpu().map_err(|e| cuda_error(variant, e))?;
    let (qb, kb) = (
        kernel.meta().q_block as usize,
        kernel.meta().kv_block as usize,
    );
    let maps = launch_maps(variant.program(), info, opts, qb, kb, bindings)?;
    let bits = |t: &Tensor| {
        t.to_u16_bits().ok_or_else(|| Error::InputDType {
            which: "q/k/v".into(),
            expected: "bf16 or f16".into(),
            got: t.dtype(),
        })
    };
    let problem = kernel
        .upload(
            &g.device,
            &opts.shape,
            &bits(q)?,
            &bits(k)?,
            &bits(v)?,
            scale,
            bindings,
            &maps,
        )
        .map_err(|e| cuda_error(variant, e))?;
    let ms = kernel
        .time(&g.device, &problem, 3, iters.max(1), 3)
        .map_err(|e| cuda_error(variant, e))?;
    Ok(Some(ms))
}
