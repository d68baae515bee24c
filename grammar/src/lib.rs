//! attnc-grammar: source text in, [`ast::File`] plus every parse error out.
//!
//! [`parse`] lexes ([`lexer`]), parses with the lalrpop-generated LR parser (recovering
//! from errors at item, `let`, block and attention-field boundaries) and turns every
//! problem into a [`ParseError`] with a span inside the source, a rustc-like message, the
//! readable list of what was expected and, for common mistakes, a hint. It never panics.

pub mod ast;
pub mod lexer;

mod actions;
mod errors;

lalrpop_util::lalrpop_mod!(
    #[allow(
        clippy::all,
        clippy::pedantic,
        unused_parens,
        unused_imports,
        dead_code
    )]
    parser,
    "/grammar.rs"
);

pub use actions::MAX_DEPTH;
pub use errors::{ParseError, ParseErrorKind};

/// Parses a whole `.attn` file. Always returns a tree: items with errors in them are left
/// out or hold [`ast::ExprKind::Error`] where the parser recovered. The errors are sorted by
/// position; every span lies within `0..=source.len()` on `char` boundaries.
pub fn parse(source: &str) -> (ast::File, Vec<ParseError>) {
    let (tokens, lex_errors) = lexer::lex(source);
    let mut ctx = actions::Ctx::default();
    let result = parser::FileParser::new().parse(&mut ctx, tokens.iter().cloned().map(Ok));
    let (items, fatal) = match result {
        Ok(items) => (items, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let errors = errors::collect(source, &tokens, lex_errors, ctx, fatal);
    (ast::File { items }, errors)
}
