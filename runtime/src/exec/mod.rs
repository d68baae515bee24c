//! The executors: what `bind` prepares per backend and how `forward` runs it.
//!
//! In: the [`Plan`] of a bind, the [`BindOptions`], host inputs and the converted
//! captures. Out: `O` (in the bind's dtype: the GPU's bf16/f16 as written) and `LSE` (f32) in the layouts of
//! `attnc_compiler::shape`, or a raw [`ExecError`] (a backend's own error), which the API
//! renders with the source (`api::render`). Policy (which kv path, when maps or device
//! tables are reused) lives in `crate::policy`; the executors carry it out:
//! [`cpu`] (Cranelift kernel, host block maps), [`pool`] (the CPU worker threads), [`cuda`] (the JIT cache,
//! device problems, the block-table kernel, kept tables).

pub(crate) mod cpu;
pub(crate) mod cuda;
pub(crate) mod pool;

use crate::error::Error;
use crate::options::{Backend, BindOptions};
use crate::tensor::Tensor;
use attnc_compiler::analysis::classify::BlockError;
use attnc_compiler::backend::cranelift::CpuError;
use attnc_compiler::interp::{Bindings, EvalError};
use attnc_compiler::plan::Plan;
use attnc_compiler::reference;

pub use cuda::{cuda_device_info, wait_for_background_jit};

/// A backend's own failure, before the API renders it.
#[derive(Debug)]
pub(crate) enum ExecError {
    /// Already an API error (options refused before any backend work).
    Api(Error),
    /// The oracle's checked read failed.
    Reference(EvalError),
    Cpu(CpuError),
    Cuda(crate::cuda::CudaError),
    /// No usable CUDA device or driver (or the device could not be opened).
    CudaUnavailable(crate::cuda::CudaError),
    /// Building block maps or a launch's closed-form bounds.
    Blocks(BlockError),
}

impl From<CpuError> for ExecError {
    fn from(e: CpuError) -> Self {
        ExecError::Cpu(e)
    }
}
impl From<crate::cuda::CudaError> for ExecError {
    fn from(e: crate::cuda::CudaError) -> Self {
        ExecError::Cuda(e)
    }
}
impl From<BlockError> for ExecError {
    fn from(e: BlockError) -> Self {
        ExecError::Blocks(e)
    }
}

pub(crate) type ExecResult<T> = std::result::Result<T, ExecError>;

/// What a bound variant holds for its backend.
pub(crate) enum Exec {
    Reference,
    Cpu(Box<cpu::CpuExec>),
    Cuda(Box<cuda::CudaExec>),
}

impl Exec {
    /// Prepares `plan` for the backend of `opts` (JIT-compiling for CPU and GPU).
    pub(crate) fn prepare(plan: &Plan, opts: &BindOptions) -> ExecResult<Exec> {
        Ok(match opts.backend {
            Backend::Reference => Exec::Reference,
            Backend::Cpu => Exec::Cpu(Box::new(cpu::CpuExec::prepare(plan, opts)?)),
            Backend::Cuda => Exec::Cuda(Box::new(cuda::CudaExec::prepare(plan, opts)?)),
        })
    }

    /// One forward call: `O` as a `[B, Hq, Lq, Dv]` tensor in the bind's dtype (the
    /// CUDA kernels' bf16/f16 output as written, not through f32), `LSE` as f32.
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
        let s = opts.shape;
        let o_dims = vec![s.b, s.hq, s.lq, s.dv];
        let host = |(o, lse): (Vec<f32>, Vec<f32>)| {
            (Tensor::from_f32_vec_as(o_dims.clone(), o, opts.dtype), lse)
        };
        match self {
            Exec::Reference => {
                let out = reference::attention(
                    plan.program(),
                    &opts.shape,
                    &q.to_f32(),
                    &k.to_f32(),
                    &v.to_f32(),
                    scale,
                    bindings,
                )
                .map_err(ExecError::Reference)?;
                Ok(host((out.o, out.lse)))
            }
            Exec::Cpu(c) => c.forward(plan, opts, scale, q, k, v, bindings).map(host),
            Exec::Cuda(c) => c.forward(plan, opts, scale, q, k, v, bindings),
        }
    }

    /// The CPU executor of a CPU binding.
    pub(crate) fn cpu_mut(&mut self) -> Option<&mut cpu::CpuExec> {
        match self {
            Exec::Cpu(c) => Some(c),
            _ => None,
        }
    }

    /// The CUDA executor of a CUDA binding.
    pub(crate) fn cuda(&self) -> Option<&cuda::CudaExec> {
        match self {
            Exec::Cuda(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn cuda_mut(&mut self) -> Option<&mut cuda::CudaExec> {
        match self {
            Exec::Cuda(c) => Some(c),
            _ => None,
        }
    }
}
