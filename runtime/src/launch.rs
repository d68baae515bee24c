//! The seam between compiling and launching: per backend, what `bind` prepares and
//! how `forward` runs it.
//!
//! In: a verified `Program`, bind options, host inputs converted to f32 and the
//! converted captures. Out: `O` and `LSE` as f32 vectors in the layouts of
//! `attnc_compiler::shape`.

use crate::api::{BindOptions, Variant, out_of_bounds};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::Program;
use attnc_compiler::reference;

/// What a bound variant holds for its backend.
pub(crate) enum Kernel {
    Reference,
}

pub(crate) fn prepare(_program: &Program, opts: &BindOptions) -> Result<Kernel> {
    match opts.backend {
        crate::api::Backend::Reference => Ok(Kernel::Reference),
        crate::api::Backend::Cpu => Err(Error::BackendUnavailable {
            backend: "cpu",
            reason: "the CPU backend is not built into this version".into(),
        }),
        crate::api::Backend::Cuda => Err(Error::BackendUnavailable {
            backend: "cuda",
            reason: "the CUDA backend is not built into this version".into(),
        }),
    }
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
    }
}
