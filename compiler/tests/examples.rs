//! Every `examples/*.attn` compiles cleanly, and the IR of each is snapshot-tested
//! (`snapshots/examples__<file stem>.snap`).

use std::path::{Path, PathBuf};

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    files
}

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
