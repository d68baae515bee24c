//! Test helpers: an AST in, a compact S-expression string out, and a span checker.
#![allow(dead_code)]

use attnc_grammar::ast::{Block, Expr, ExprKind, File, Item, MaskBody};
use attnc_grammar::{ParseError, parse};

pub fn sexpr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Unary(op, a) => format!("({op:?} {})", sexpr(a)),
        ExprKind::Binary(op, a, b) => format!("({} {} {})", op.symbol(), sexpr(a), sexpr(b)),
        ExprKind::Cast(a, t) => format!("(as {} {})", sexpr(a), t.name),
        ExprKind::Call(f, args) => format!("(call {}{})", f.name, list(args)),
        ExprKind::Index(t, idx) => format!("(index {}{})", t.name, list(idx)),
        ExprKind::If(c, t, e) => format!("(if {} {} {})", sexpr(c), block(t), sexpr(e)),
        ExprKind::Block(b) => block(b),
        ExprKind::Error => "<error>".to_string(),
    }
}

fn list(v: &[Expr]) -> String {
    v.iter().map(|e| format!(" {}", sexpr(e))).collect()
}

pub fn block(b: &Block) -> String {
    let mut s = String::from("{");
    for l in &b.lets {
        let ty =
            l.ty.as_ref()
                .map(|t| format!(": {}", t.name))
                .unwrap_or_default();
        s += &format!("let {}{ty} = {}; ", l.name.name, sexpr(&l.value));
    }
    match &b.tail {
        Some(t) => s += &sexpr(t),
        None => s += "<none>",
    }
    s + "}"
}

/// Parses `const X: i32 = <src>;` and returns its value as an S-expression.
pub fn expr(src: &str) -> String {
    let text = format!("const X: i32 = {src};");
    let (file, errors) = parse(&text);
    assert!(errors.is_empty(), "errors in {src:?}: {errors:#?}");
    match &file.items[..] {
        [Item::Const(c)] => sexpr(&c.value),
        other => panic!("unexpected items {other:?}"),
    }
}

pub fn mask_body(item: &Item) -> String {
    match item {
        Item::Mask(m) => match &m.body {
            MaskBody::Fn { body, .. } => block(body),
            MaskBody::Compose(e) => sexpr(e),
        },
        other => panic!("not a mask: {other:?}"),
    }
}

/// Asserts every error span lies within the source on char boundaries.
pub fn check_spans(src: &str, errors: &[ParseError]) {
    for e in errors {
        assert!(e.span.start <= e.span.end, "reversed span {e:?}");
        assert!(
            e.span.end <= src.len(),
            "span past the end {e:?} (len {})",
            src.len()
        );
        assert!(
            src.is_char_boundary(e.span.start) && src.is_char_boundary(e.span.end),
            "{e:?}"
        );
        assert!(!e.message.is_empty());
    }
}

/// Visits every expression of a file (bounded: the parser caps nesting).
pub fn all_expr_spans(file: &File, out: &mut Vec<(usize, usize)>) {
    fn e(x: &Expr, out: &mut Vec<(usize, usize)>) {
        out.push((x.span.start, x.span.end));
        match &x.kind {
            ExprKind::Unary(_, a) | ExprKind::Cast(a, _) => e(a, out),
            ExprKind::Binary(_, a, b) => {
                e(a, out);
                e(b, out);
            }
            ExprKind::Call(_, v) | ExprKind::Index(_, v) => v.iter().for_each(|a| e(a, out)),
            ExprKind::If(c, t, f) => {
                e(c, out);
                b(t, out);
                e(f, out);
            }
            ExprKind::Block(bl) => b(bl, out),
            _ => {}
        }
    }
    fn b(bl: &Block, out: &mut Vec<(usize, usize)>) {
        out.push((bl.span.start, bl.span.end));
        bl.lets.iter().for_each(|l| e(&l.value, out));
        if let Some(t) = &bl.tail {
            e(t, out);
        }
    }
    for item in &file.items {
        match item {
            Item::Const(c) => e(&c.value, out),
            Item::Fn(f) => b(&f.body, out),
            Item::Mask(m) => match &m.body {
                MaskBody::Fn { body, .. } => b(body, out),
                MaskBody::Compose(x) => e(x, out),
            },
            Item::Score(s) => b(&s.body, out),
            Item::Attention(a) => a.fields.iter().for_each(|f| e(&f.value, out)),
            Item::Param(_) | Item::Tensor(_) => {}
        }
    }
}
