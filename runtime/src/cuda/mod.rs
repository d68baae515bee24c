//! The CUDA runtime: loads the kernels of `attnc_compiler::backend::llvm` with the driver
//! API (through cudarc, loaded dynamically) and launches them.
//!
//! Everything builds and runs without CUDA: [`CudaDevice::new`] returns
//! [`CudaError::NoDriver`] / [`CudaError::NoDevice`] where there is no driver or GPU.
//!
//! Modules, one job each:
//! - [`device`]: [`CudaDevice`] (context, the one stream, uploads, event timing).
//! - [`args`]: [`LaunchArgs`], a launch's values by name ([`KernelParam`] and
//!   [`GridDim`]): what binds a kernel's parameters in its spec's order.
//! - [`kernel`]: [`CudaKernel`], a loaded module and its [`KernelSpec`]; the one launch
//!   ([`CudaKernel::launch`]) for every kernel kind.
//! - [`problem`]: [`DeviceProblem`], the buffers of one attention call on the device (Q,
//!   K, V, O, LSE, params, captured tensors, the kv source: host block maps, closed-form
//!   offsets, or a block table built on the device by the block-table kernel, fresh or
//!   kept from an earlier call), uploaded by one [`CudaKernel::upload`].
//! - [`jit_cache`]: [`JitCache`], `(plan, kind, options)` -> loaded kernel ([`JitKernel`]):
//!   memory, then the cubin on disk, then the PTX on disk or generated, then the driver's
//!   linker; one lookup for every kind.
//! - [`jit`]: PTX -> cubin (`cuLink*`, `ptxas` level), cubins on disk, the tiered swap.
//! - [`decode`]: the split-KV decode and combine kernels' problem ([`decode::DecodeProblem`]:
//!   buffers and geometry, bound by name) and module (both kinds from the [`JitCache`]).
//! - [`backward`]: the backward's upload, block ranges and three launches.
//! - [`tma`]: the TMA tensor maps of the warp-specialized forward, made per launch.
//!
//! [`KernelParam`]: attnc_compiler::backend::llvm::KernelParam
//! [`GridDim`]: attnc_compiler::backend::llvm::GridDim
//! [`KernelSpec`]: attnc_compiler::backend::llvm::KernelSpec

pub mod args;
pub mod backward;
pub mod decode;
pub mod device;
pub mod jit;
pub mod jit_cache;
pub mod kernel;
pub mod problem;
pub mod tma;

pub use args::{Arg, LaunchArgs};
pub use device::CudaDevice;
pub use jit::{JitKernel, JitTier, JitTiers, OPTIMIZED_LEVEL, ReadyStats};
pub use jit_cache::{JitCache, JitStats};
pub use kernel::CudaKernel;
pub use problem::{BuiltTable, DEVICE_TABLE_MAX_BYTES, DeviceProblem, DeviceTable, KvBlocks, Qkv};

use attnc_compiler::backend::llvm::LlvmError;
use cudarc::driver::DriverError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda is not installed)")]
    NoDriver,
    #[error("no CUDA device with ordinal {0}")]
    NoDevice(usize),
    #[error("unsupported GPU: compute capability {0}.{1} (attnc needs 8.0 or newer)")]
    UnsupportedGpu(i32, i32),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("PTX generation: {0}")]
    Codegen(#[from] LlvmError),
    #[error("{0}")]
    Mismatch(String),
    /// Checked mode: the first out-of-range captured-tensor read of the launch.
    #[error("out-of-range read of tensor #{tensor} at {index:?} (instruction v{inst} of the {})", if *in_score { "score" } else { "mask" })]
    OutOfBounds {
        in_score: bool,
        inst: u32,
        tensor: u32,
        index: Vec<i32>,
    },
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_is_a_clean_error() {
        match CudaDevice::new(0) {
            Ok(d) => eprintln!("CUDA device present: {}", d.name()),
            Err(e) => assert!(
                matches!(e, CudaError::NoDriver | CudaError::NoDevice(_)),
                "{e}"
            ),
        }
        assert!(matches!(
            CudaDevice::new(1 << 20),
            Err(CudaError::NoDriver | CudaError::NoDevice(_))
        ));
    }
}
