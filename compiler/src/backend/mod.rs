//! Backends: a [`crate::plan::Plan`] and a [`KernelKind`] in, executable kernels or kernel
//! text out.
pub mod cranelift;
pub mod kind;
pub mod llvm;

pub use kind::KernelKind;
