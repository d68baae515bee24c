//! Property tests: random bytes and random token soups in; `parse` must not panic, every
//! error span must lie in the source, and the returned tree's spans too.

mod common;

use attnc_grammar::parse;
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "const",
    "param",
    "tensor",
    "fn",
    "mask",
    "score",
    "attention",
    "let",
    "if",
    "else",
    "as",
    "true",
    "false",
    "x",
    "kv",
    "f32",
    "i32",
    "0",
    "42",
    "1.5",
    "1e-3",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    ";",
    ":",
    "->",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "!",
    "&&",
    "||",
    "&",
    "|",
    "//c\n",
    "/*c*/",
    "$",
    "é",
    "1.",
    "99999999999999999999",
];

fn check(src: &str) {
    let (file, errors) = parse(src);
    common::check_spans(src, &errors);
    let mut spans = Vec::new();
    common::all_expr_spans(&file, &mut spans);
    for (s, e) in spans {
        assert!(
            s <= e && e <= src.len(),
            "expression span {s}..{e} outside 0..{}",
            src.len()
        );
    }
    for item in &file.items {
        assert!(item.span().end <= src.len());
    }
}

proptest! {
    // 384 cases unless PROPTEST_CASES says otherwise (for a longer soak).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(384),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_sequences(idx in proptest::collection::vec(0..TOKENS.len(), 0..120)) {
        let src: Vec<&str> = idx.iter().map(|&i| TOKENS[i]).collect();
        check(&src.join(" "));
    }

    #[test]
    fn valid_file_with_one_token_removed(cut in 0usize..200) {
        let src = "const H: i32 = 16; tensor d: i32[B, KV]; param w: i32; \
                   fn s(h: i32) -> f32 { exp2(-8.0 * (h + 1) as f32 / H as f32) } \
                   mask c(b, h, q, kv) { if q >= kv { q - kv < w } else { false } } \
                   score a(s, b, h, q, kv) { let t = s + s(h); t * 2.0 } \
                   attention x { mask = c & !c; score = a; }";
        let words: Vec<&str> = src.split_whitespace().collect();
        let cut = cut % words.len();
        let mutated: Vec<&str> = words.iter().enumerate().filter(|&(i, _)| i != cut).map(|(_, w)| *w).collect();
        check(&mutated.join(" "));
    }
}
