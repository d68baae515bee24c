//! Semantic actions of the grammar: parsed pieces in, AST nodes out.
//!
//! Every expression and block is built here together with its nesting depth. A node that
//! would nest deeper than [`MAX_DEPTH`] becomes [`ExprKind::Error`] (its span is recorded in
//! [`Ctx::too_deep`] and later reported), and so does every node built on top of it. No tree
//! the parser holds or returns is therefore deeper than about [`MAX_DEPTH`], so consumers may
//! walk it recursively, and dropping it cannot overflow the stack.

use lalrpop_util::ErrorRecovery;

use crate::ast::{BinOp, Block, Expr, ExprKind, Ident, Let, Span, TypeName, UnOp};
use crate::lexer::{LexError, Tok};

/// The deepest nesting of expressions and blocks the parser builds.
pub const MAX_DEPTH: u32 = 256;

/// The depth of a node cut off for nesting too deep; poisons every node built on it.
const POISONED: u32 = u32::MAX;

/// An expression with its depth.
pub struct D {
    pub e: Expr,
    pub d: u32,
}

/// A block with its depth.
pub struct BlockD {
    pub b: Block,
    pub d: u32,
}

/// What the actions record beside the tree.
#[derive(Default)]
pub struct Ctx {
    /// Errors the parser recovered from at a `!` in the grammar.
    pub recovered: Vec<ErrorRecovery<usize, Tok, LexError>>,
    /// Spans of expressions cut off for nesting deeper than [`MAX_DEPTH`].
    pub too_deep: Vec<Span>,
}

impl Ctx {
    /// Builds a node whose children have depth at most `child_depth`.
    fn node(&mut self, kind: ExprKind, span: Span, child_depth: u32) -> D {
        if child_depth == POISONED {
            return D {
                e: Expr {
                    kind: ExprKind::Error,
                    span,
                },
                d: POISONED,
            };
        }
        if child_depth >= MAX_DEPTH {
            self.too_deep.push(span);
            return D {
                e: Expr {
                    kind: ExprKind::Error,
                    span,
                },
                d: POISONED,
            };
        }
        D {
            e: Expr { kind, span },
            d: child_depth + 1,
        }
    }

    pub fn leaf(&mut self, kind: ExprKind, span: Span) -> D {
        self.node(kind, span, 0)
    }

    pub fn error_expr(&mut self, span: Span) -> D {
        self.leaf(ExprKind::Error, span)
    }

    pub fn binary(&mut self, op: BinOp, a: D, b: D, span: Span) -> D {
        let d = a.d.max(b.d);
        self.node(ExprKind::Binary(op, Box::new(a.e), Box::new(b.e)), span, d)
    }

    /// `a $ b`: an error expression over both operands (the lexer reported the `$`).
    pub fn unknown_op(&mut self, a: D, b: D, span: Span) -> D {
        let d = a.d.max(b.d);
        drop((a, b));
        self.node(ExprKind::Error, span, d)
    }

    pub fn unary(&mut self, op: UnOp, a: D, span: Span) -> D {
        let d = a.d;
        self.node(ExprKind::Unary(op, Box::new(a.e)), span, d)
    }

    pub fn cast(&mut self, a: D, ty: TypeName, span: Span) -> D {
        let d = a.d;
        self.node(ExprKind::Cast(Box::new(a.e), ty), span, d)
    }

    pub fn call(&mut self, f: Ident, args: Vec<D>, span: Span) -> D {
        let (args, d) = split(args);
        self.node(ExprKind::Call(f, args), span, d)
    }

    pub fn index(&mut self, t: Ident, idx: Vec<D>, span: Span) -> D {
        let (idx, d) = split(idx);
        self.node(ExprKind::Index(t, idx), span, d)
    }

    /// `( e )`: the expression itself, its span widened over the parentheses.
    pub fn paren(&mut self, mut e: D, span: Span) -> D {
        e.e.span = span;
        e
    }

    pub fn if_expr(&mut self, c: D, then: BlockD, els: D, span: Span) -> D {
        let d = c.d.max(then.d).max(els.d);
        self.node(
            ExprKind::If(Box::new(c.e), then.b, Box::new(els.e)),
            span,
            d,
        )
    }

    pub fn block_expr(&mut self, b: BlockD, span: Span) -> D {
        let d = b.d;
        self.node(ExprKind::Block(b.b), span, d)
    }

    pub fn block(&mut self, lets: Vec<(Let, u32)>, tail: Option<D>, span: Span) -> BlockD {
        let mut d = tail.as_ref().map_or(0, |t| t.d);
        let lets: Vec<Let> = lets
            .into_iter()
            .map(|(l, ld)| {
                d = d.max(ld);
                l
            })
            .collect();
        let poisoned = d == POISONED;
        if poisoned || d >= MAX_DEPTH {
            if !poisoned {
                self.too_deep.push(span);
            }
            let tail = Some(Box::new(Expr {
                kind: ExprKind::Error,
                span,
            }));
            return BlockD {
                b: Block {
                    lets: Vec::new(),
                    tail,
                    span,
                },
                d: POISONED,
            };
        }
        BlockD {
            b: Block {
                lets,
                tail: tail.map(|t| Box::new(t.e)),
                span,
            },
            d: d + 1,
        }
    }
}

fn split(v: Vec<D>) -> (Vec<Expr>, u32) {
    let d = v.iter().map(|x| x.d).max().unwrap_or(0);
    (v.into_iter().map(|x| x.e).collect(), d)
}
