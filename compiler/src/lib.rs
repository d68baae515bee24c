//! attnc-compiler: checked AST in, IR out; passes and analyses over the IR; backends.
//!
//! Flow: `attnc_grammar::parse` -> [`sema`] (names, types, lowering to [`ir`]) ->
//! [`passes`] (fold, CSE) -> [`ir::verify_program`] -> analyses ([`analysis`]) ->
//! backends ([`interp`] and [`reference`](mod@reference) as the oracle, Cranelift for CPUs, LLVM for PTX).
pub mod analysis;
pub mod backend;
pub mod build_info;
pub mod decode;
pub mod diag;
pub mod dual;
pub mod grad;
pub mod interp;
pub mod ir;
pub mod lift;
pub mod passes;
pub mod plan;
pub mod reference;
pub mod reference_grad;
pub mod sema;
pub mod shape;
pub mod test_matrix;

pub use diag::{Diagnostic, render};
pub use sema::{Module, compile_source};
