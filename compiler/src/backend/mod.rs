//! Code generators: `llvm` (PTX for NVIDIA GPUs) and `cranelift` (CPU machine code).
pub mod llvm;
