//! The seam between compiling and launching: per backend, what `bind` prepares and
//! how `forward` runs it.
//!
//! In: a verified `Program`, bind options, host inputs and the converted captures.
//! Out: `O` and `LSE` as f32 vectors in the layouts of `attnc_compiler::shape`.
//! Block maps: index-only masks are classified once at bind time (the shape is known);
//! masks over params or captured tensors are classified at each launch, from the
//! param values and per-block tensor summaries (never by evaluating every point).

use crate::api::{BindOptions, Variant, out_of_bounds};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use attnc_compiler::analysis::blockmap::BlockMaps;
use attnc_compiler::analysis::classify::{MaskInfo, Tier, analyze, build_block_maps};
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions};
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::Program;
use attnc_compiler::reference;

/// What a bound variant holds for its backend.
pub(crate) enum Kernel {
    Reference,
    Cpu {
        kernel: Box<CpuKernel>,
        info: MaskInfo,
        maps: Option<BlockMaps>,
    },
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
            })
        }
        crate::api::Backend::Cuda => Err(Error::BackendUnavailable {
            backend: "cuda",
            reason: "the CUDA backend is not built into this version".into(),
        }),
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
        Kernel::Cpu { kernel, info, maps } => {
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
            kernel
                .run(
                    &s,
                    &q.to_f32(),
                    &k.to_f32(),
                    &v.to_f32(),
                    scale,
                    bindings,
                    maps,
                    threads,
                    &mut o,
                    &mut lse,
                )
                .map_err(|e| cpu_error(variant, e))?;
            Ok((o, lse))
        }
    }
}
