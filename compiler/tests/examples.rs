//! Every `examples/*.attn` compiles cleanly, and the IR of each is snapshot-tested
//! (`snapshots/examples__<file stem>.snap`).

mod common;

use common::example_files;

#[test]
fn examples_compile_and_match_ir_snapshots() {
    let files = example_files();
    assert!(
        files.len() >= 16,
        "expected at least 16 examples, found {}",
        files.len()
    );
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        assert!(
            src.starts_with("//"),
            "{stem}.attn must start with a `//` comment saying what it is"
        );
        let module = match attnc_compiler::compile_source(&src) {
            Ok(m) => m,
            Err(d) => panic!(
                "{stem}.attn does not compile:\n{}",
                attnc_compiler::render(&d, &format!("{stem}.attn"), &src)
            ),
        };
        assert!(!module.programs.is_empty(), "{stem}.attn has no attention");
        let ir: Vec<String> = module
            .programs
            .iter()
            .map(attnc_compiler::ir::write_program)
            .collect();
        insta::assert_snapshot!(stem.as_str(), ir.join("\n"));
    }
}
