//! Backends: IR (plus block maps) in, executable kernels or kernel text out.
pub mod cranelift;
pub mod llvm;
