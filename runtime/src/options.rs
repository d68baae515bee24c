//! How to bind a variant: the backend and the bind options.
//!
//! In: nothing. Out: [`Backend`] and [`BindOptions`], read by the API (`api`), the
//! executors (`exec`) and the CLI. Depends on nothing else of the runtime but the tensor
//! dtype and the JIT tier policy.

use crate::tensor::DType;
use attnc_compiler::shape::Shape;

/// Where a bound variant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The f64 reference implementation (the oracle): slow, exact.
    Reference,
    /// Cranelift-generated CPU kernels.
    Cpu,
    /// LLVM-generated PTX on an NVIDIA GPU.
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// How to bind a variant.
#[derive(Clone, Debug)]
pub struct BindOptions {
    pub backend: Backend,
    pub shape: Shape,
    /// dtype of q, k, v and O.
    pub dtype: DType,
    /// Softmax scale; `None` means `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// CPU threads (0 = all available cores).
    pub threads: usize,
    /// Report out-of-range tensor reads instead of clamping them.
    pub checked: bool,
    /// CUDA backend, masks over captured tensors: build the block table on the GPU
    /// (exact, from the device-resident tensors; `backend::llvm::blocktable`) rather than
    /// on the host from tensor summaries. Default true; the environment variable
    /// `ATTNC_BLOCK_TABLES=host` makes the default false. Other backends ignore it.
    pub gpu_block_tables: bool,
    /// CUDA: the tiered JIT policy (a quickly compiled module first, the optimized one
    /// swapped in when ready); `None` reads `ATTNC_JIT_TIERS`, default off.
    pub jit_tiers: Option<crate::cuda::JitTiers>,
    /// CUDA: the device ordinal the binding compiles for and launches on (its primary
    /// context; default 0). Other backends ignore it.
    pub device: usize,
}

impl BindOptions {
    pub fn new(backend: Backend, shape: Shape, dtype: DType) -> Self {
        BindOptions {
            backend,
            shape,
            dtype,
            scale: None,
            threads: 0,
            checked: false,
            gpu_block_tables: std::env::var("ATTNC_BLOCK_TABLES").map_or(true, |v| v != "host"),
            jit_tiers: None,
            device: 0,
        }
    }
}
