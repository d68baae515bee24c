//! attnc-grammar: source text in, [`ast::File`] plus every parse error out.
pub mod ast;
