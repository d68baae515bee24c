//! Parser tests: snippets in, trees (as S-expressions) and error lists checked.

mod common;

use attnc_grammar::ast::{Dim, ExprKind, Item, MaskBody, Span};
use attnc_grammar::{ParseErrorKind, parse};
use common::{block, check_spans, expr, mask_body, sexpr};

const EXAMPLE: &str = r#"
// examples/document_alibi.attn
const HEADS: i32 = 16;
tensor doc: i32[B, KV];        // captured tensor
param  window: i32;            /* runtime scalar /* nested */ */

fn slope(h: i32) -> f32 { exp2(-8.0 * (h + 1) as f32 / HEADS as f32) }

mask causal(b, h, q, kv)   { q >= kv }
mask local(b, h, q, kv)    { q - kv < window }
mask same_doc(b, h, q, kv) { doc[b, q] == doc[b, kv] }
score alibi(s, b, h, q, kv) { s + slope(h) * (kv - q) as f32 }
mask both = causal & !(local | same_doc);

attention document_alibi {
    mask  = causal & local & same_doc;
    score = alibi;
}
"#;

#[test]
fn all_item_kinds() {
    let (file, errors) = parse(EXAMPLE);
    assert!(errors.is_empty(), "{errors:#?}");
    let names: Vec<&str> = file.items.iter().map(|i| i.name().name.as_str()).collect();
    assert_eq!(
        names,
        [
            "HEADS",
            "doc",
            "window",
            "slope",
            "causal",
            "local",
            "same_doc",
            "alibi",
            "both",
            "document_alibi"
        ]
    );
    for item in &file.items {
        let s = item.span();
        let text = &EXAMPLE[s.range()];
        assert!(
            text.ends_with(';') || text.ends_with('}'),
            "item span {text:?}"
        );
    }
    match &file.items[1] {
        Item::Tensor(t) => {
            assert_eq!(t.elem.name, "i32");
            assert!(
                matches!(&t.dims[..], [Dim::Name(b), Dim::Name(kv)] if b.name == "B" && kv.name == "KV")
            );
        }
        other => panic!("{other:?}"),
    }
    match &file.items[3] {
        Item::Fn(f) => {
            assert_eq!(f.params.len(), 1);
            assert_eq!(f.params[0].name.name, "h");
            assert_eq!(f.params[0].ty.name, "i32");
            assert_eq!(f.ret.name, "f32");
            assert_eq!(
                block(&f.body),
                "{(call exp2 (/ (* (Neg 8.0) (as (+ h 1) f32)) (as HEADS f32)))}"
            );
        }
        other => panic!("{other:?}"),
    }
    match &file.items[4] {
        Item::Mask(m) => match &m.body {
            MaskBody::Fn { params, body } => {
                let p: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                assert_eq!(p, ["b", "h", "q", "kv"]);
                assert_eq!(block(body), "{(>= q kv)}");
                assert_eq!(&EXAMPLE[body.span.range()], "{ q >= kv }");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mask_body(&file.items[6]),
        "{(== (index doc b q) (index doc b kv))}"
    );
    match &file.items[7] {
        Item::Score(s) => {
            assert_eq!(s.params.len(), 5);
            assert_eq!(
                block(&s.body),
                "{(+ s (* (call slope h) (as (- kv q) f32)))}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mask_body(&file.items[8]),
        "(& causal (Not (| local same_doc)))"
    );
    match &file.items[9] {
        Item::Attention(a) => {
            let f: Vec<(String, String)> = a
                .fields
                .iter()
                .map(|f| (f.key.name.clone(), sexpr(&f.value)))
                .collect();
            assert_eq!(
                f,
                [
                    (
                        "mask".to_string(),
                        "(& (& causal local) same_doc)".to_string()
                    ),
                    ("score".to_string(), "alibi".to_string())
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tensor_dims_and_params() {
    let (file, errors) = parse("tensor bias: f16[B, H, 128, KV,]; param w: f32;");
    assert!(errors.is_empty(), "{errors:#?}");
    match &file.items[0] {
        Item::Tensor(t) => {
            assert_eq!(t.dims.len(), 4);
            assert!(matches!(t.dims[2], Dim::Int(128, s) if s == Span::new(23, 26)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&file.items[1], Item::Param(p) if p.ty.name == "f32"));
}

#[test]
fn precedence() {
    assert_eq!(expr("a + b * c"), "(+ a (* b c))");
    assert_eq!(expr("a * b + c"), "(+ (* a b) c)");
    assert_eq!(expr("a - b - c"), "(- (- a b) c)");
    assert_eq!(expr("a / b % c"), "(% (/ a b) c)");
    assert_eq!(expr("-x as f32"), "(as (Neg x) f32)");
    assert_eq!(expr("x as i32 as f32"), "(as (as x i32) f32)");
    assert_eq!(expr("a * b as f32"), "(* a (as b f32))");
    assert_eq!(expr("a < b & c >= d"), "(& (< a b) (>= c d))");
    assert_eq!(expr("a | b & c"), "(| a (& b c))");
    assert_eq!(expr("a || b && c"), "(|| a (&& b c))");
    assert_eq!(expr("a && b | c"), "(&& a (| b c))");
    assert_eq!(expr("a == b + 1"), "(== a (+ b 1))");
    assert_eq!(expr("!a & !b"), "(& (Not a) (Not b))");
    assert_eq!(expr("- -3"), "(Neg (Neg 3))");
    assert_eq!(expr("f(a, b + 1,)"), "(call f a (+ b 1))");
    assert_eq!(expr("f()"), "(call f)");
    assert_eq!(expr("t[b, h, q - 1]"), "(index t b h (- q 1))");
    assert_eq!(expr("(a + b) * c"), "(* (+ a b) c)");
}

#[test]
fn literals() {
    assert_eq!(expr("1_000"), "1000");
    assert_eq!(expr("1.5"), "1.5");
    assert_eq!(expr("1e-3"), "0.001");
    assert_eq!(expr("2.5E+3"), "2500.0");
    assert_eq!(expr("2e3"), "2000.0");
    assert_eq!(expr("true & false"), "(& true false)");
    assert_eq!(expr("-9223372036854775807"), "(Neg 9223372036854775807)");
}

#[test]
fn if_else_chains_and_blocks() {
    assert_eq!(expr("if a < b { 1 } else { 2 }"), "(if (< a b) {1} {2})");
    assert_eq!(
        expr("if a { 1 } else if b { 2 } else { 3 }"),
        "(if a {1} (if b {2} {3}))"
    );
    assert_eq!(
        expr("{ let x = 1; let y: f32 = x as f32; y * 2.0 }"),
        "{let x = 1; let y: f32 = (as x f32); (* y 2.0)}"
    );
    assert_eq!(expr("if {a} {b} else {c} + 1"), "(+ (if {a} {b} {c}) 1)");
    assert_eq!(expr("{ let x = 1; }"), "{let x = 1; <none>}");
    assert_eq!(expr("{}"), "{<none>}");
}

#[test]
fn expression_spans_cover_their_text() {
    let src = "const X: i32 = (a + b) * -c as f32;";
    let (file, errors) = parse(src);
    assert!(errors.is_empty());
    let Item::Const(c) = &file.items[0] else {
        panic!()
    };
    assert_eq!(&src[c.value.span.range()], "(a + b) * -c as f32");
    let ExprKind::Binary(_, l, r) = &c.value.kind else {
        panic!()
    };
    assert_eq!(&src[l.span.range()], "(a + b)");
    assert_eq!(&src[r.span.range()], "-c as f32");
    assert_eq!(&src[c.span.range()], src);
    let mut spans = Vec::new();
    common::all_expr_spans(&file, &mut spans);
    for (s, e) in spans {
        assert!(s < e && e <= src.len());
    }
}

fn kinds(src: &str) -> Vec<ParseErrorKind> {
    let (_, errors) = parse(src);
    check_spans(src, &errors);
    errors.iter().map(|e| e.kind).collect()
}

#[test]
fn three_independent_errors() {
    let src = "
const A: i32 = 1 + ;
fn f(x: i32) -> i32 {
    let y = x * * 2;
    y
}
mask m(b, h, q, kv) { q >= kv }
param p i32;
mask ok(b, h, q, kv) { q == kv }
";
    let (file, errors) = parse(src);
    check_spans(src, &errors);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors
            .iter()
            .all(|e| e.kind == ParseErrorKind::UnexpectedToken)
    );
    // The items around the errors survive.
    let names: Vec<&str> = file.items.iter().map(|i| i.name().name.as_str()).collect();
    assert!(
        names.contains(&"f") && names.contains(&"m") && names.contains(&"ok"),
        "{names:?}"
    );
    assert_eq!(errors[0].message, "expected an expression, found `;`");
}

#[test]
fn missing_semicolon_keeps_the_let() {
    let src = "fn f(x: i32) -> i32 {\n    let y = x * 2\n    let z = y;\n    z\n}";
    let (file, errors) = parse(src);
    check_spans(src, &errors);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, ParseErrorKind::MissingSemicolon);
    assert_eq!(errors[0].kind.code(), "E0008");
    assert_eq!(errors[0].hint.as_deref(), Some("add `;` after `2`"));
    let Item::Fn(f) = &file.items[0] else {
        panic!()
    };
    assert_eq!(block(&f.body), "{let y = (* x 2); let z = y; z}");
}

#[test]
fn specific_mistakes() {
    assert_eq!(
        kinds("mask m(b, h, q, kv) { q < kv < b }"),
        [ParseErrorKind::ChainedComparison]
    );
    assert_eq!(
        kinds("score s(s, b, h, q, kv) { if s > 0.0 { s } }"),
        [ParseErrorKind::MissingElse]
    );
    let (_, e) = parse("const A: bool = if a = b { true } else { false };");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].hint.as_deref().unwrap().contains("=="));
    assert_eq!(
        kinds("param p: i32\nparam q: i32;"),
        [ParseErrorKind::MissingSemicolon]
    );
    assert_eq!(
        kinds("attention a { mask = m; score = s }"),
        [ParseErrorKind::MissingSemicolon]
    );
    let (_, e) = parse("fn f() -> i32 { let mask = 1; mask }");
    assert!(e[0].hint.as_deref().unwrap().contains("keyword"), "{e:#?}");
    let (_, e) = parse("fn f() -> i32 { 1; }");
    assert!(
        e[0].hint.as_deref().unwrap().contains("takes no `;`"),
        "{e:#?}"
    );
}

#[test]
fn lexical_errors_are_reported_once() {
    assert_eq!(
        kinds("const A: i32 = a $ b;"),
        [ParseErrorKind::UnknownCharacter]
    );
    assert_eq!(
        kinds("const A: i32 = a.abs();"),
        [ParseErrorKind::UnknownCharacter]
    );
    assert_eq!(
        kinds("const A: i32 = 99999999999999999999;"),
        [ParseErrorKind::InvalidNumber]
    );
    assert_eq!(
        kinds("const A: f32 = 1. + 1e;"),
        [ParseErrorKind::InvalidNumber; 2]
    );
    assert_eq!(
        kinds("const A: i32 = 1; /* open"),
        [ParseErrorKind::UnterminatedComment]
    );
    assert_eq!(
        kinds("tensor t: i32[99999999999999999999];"),
        [ParseErrorKind::InvalidNumber]
    );
    assert_eq!(
        kinds("€ const A: i32 = 1;"),
        [ParseErrorKind::UnknownCharacter]
    );
}

#[test]
fn eof_errors() {
    let src = "fn f(a: i32, ";
    let (_, errors) = parse(src);
    check_spans(src, &errors);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ParseErrorKind::UnexpectedEof);
    assert!(
        errors[0]
            .message
            .starts_with("unexpected end of file, expected"),
        "{}",
        errors[0].message
    );
    let src = "mask m(b, h, q, kv) { q >= kv  // no brace\n";
    let (_, errors) = parse(src);
    check_spans(src, &errors);
    assert_eq!(errors[0].kind, ParseErrorKind::UnexpectedEof);
}

#[test]
fn expected_lists_are_readable() {
    let (_, errors) = parse("fn f(a: i32 b: i32) -> i32 { a }");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].expected, ["`)`", "`,`"]);
    assert_eq!(
        errors[0].message,
        "expected one of `)`, `,`, found identifier `b`"
    );
}

#[test]
fn deep_nesting_is_cut_off() {
    for (open, close) in [("(1 + ", ")"), ("{", "}"), ("-", ""), ("f(", ")")] {
        let n = 20_000;
        let src = format!("const A: i32 = {}1{};", open.repeat(n), close.repeat(n));
        let (file, errors) = parse(&src);
        check_spans(&src, &errors);
        assert_eq!(errors.len(), 1, "{open}: {errors:#?}");
        assert_eq!(errors[0].kind, ParseErrorKind::NestingTooDeep);
        assert_eq!(file.items.len(), 1);
    }
    let src = format!(
        "const A: i32 = {}1{};",
        "(".repeat(20_000),
        ")".repeat(20_000)
    );
    assert!(parse(&src).1.is_empty(), "parentheses add no depth");
    let src = format!("const A: i32 = 1{};", " + 1".repeat(100_000));
    let (_, errors) = parse(&src);
    assert_eq!(errors.len(), 1);
    // Unbalanced and deep: still no panic.
    let src = "(".repeat(50_000);
    let (_, errors) = parse(&src);
    check_spans(&src, &errors);
    assert!(!errors.is_empty());
}

#[test]
fn nothing_panics_on_odd_inputs() {
    for src in [
        "",
        " ",
        "}",
        ";;;;",
        "const",
        "attention",
        "attention a {",
        "attention a { mask = ",
        "if",
        "mask m = ;",
        "é",
        "\u{0}",
        "const A: i32 = 1 /* é",
        "score s() { {{{{ }",
        "fn f() -> { }",
        "let x = 1;",
    ] {
        let (_, errors) = parse(src);
        check_spans(src, &errors);
    }
}
