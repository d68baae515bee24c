//! Every `tests/bad/*.attn` is rejected with the error its file name announces
//! (`E0xxx_what.attn`; `multiple_errors.attn` must give several), every span lies inside
//! the source, and the rendered diagnostics are snapshot-tested
//! (`snapshots/diagnostics__<file stem>.snap`).

use std::path::{Path, PathBuf};

fn bad_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    files
}

fn check_span(stem: &str, src: &str, what: &str, span: attnc_grammar::ast::Span) {
    assert!(
        span.start <= span.end && span.end <= src.len(),
        "{stem}: {what} span {span:?} lies outside the source (length {})",
        src.len()
    );
    assert!(
        src.is_char_boundary(span.start) && src.is_char_boundary(span.end),
        "{stem}: {what} span {span:?} is not on char boundaries"
    );
}

#[test]
fn bad_inputs_are_rejected_with_their_code() {
    let files = bad_files();
    assert!(
        files.len() >= 30,
        "expected at least 30 bad inputs, found {}",
        files.len()
    );
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let name = format!("{stem}.attn");
        let src = std::fs::read_to_string(&path).unwrap();
        assert!(
            src.starts_with("//"),
            "{name} must start with a comment saying what it tests"
        );
        let diags = match attnc_compiler::compile_source(&src) {
            Ok(_) => panic!("{name} compiled, but it is a bad input"),
            Err(d) => d,
        };
        assert!(!diags.is_empty(), "{name}: Err without diagnostics");
        for d in &diags {
            check_span(&stem, &src, d.code, d.span);
            for (s, _) in &d.secondary {
                check_span(&stem, &src, "secondary", *s);
            }
        }
        let codes: Vec<&str> = diags.iter().map(|d| d.code).collect();
        if let Some(code) = stem.split('_').next().filter(|c| c.starts_with('E')) {
            assert!(
                codes.contains(&code),
                "{name}: expected {code} among {codes:?}"
            );
        } else {
            assert!(
                diags.len() >= 3,
                "{name}: expected several errors, got {codes:?}"
            );
        }
        let rendered = attnc_compiler::render(&diags, &name, &src);
        insta::assert_snapshot!(stem.as_str(), rendered);
    }
}

#[test]
fn every_tested_code_is_documented() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/language.md"))
            .expect("docs/language.md");
    for path in bad_files() {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if let Some(code) = stem.split('_').next().filter(|c| c.starts_with('E')) {
            assert!(
                doc.contains(&format!("| {code} |")),
                "{code} (tested by {stem}.attn) has no row in docs/language.md"
            );
        }
    }
}
