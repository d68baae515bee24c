//! Shared helpers of the command-line tests (`cli.rs`, `cli_grad.rs`, `cli_hostile.rs`):
//! the repository root, running the built `attnc` there, its output as text, a scratch
//! directory per test, an input file's q, k and v.
#![allow(dead_code)]

use attnc::{DType, Shape, Tensor, synth};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (examples/ lives there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs the `attnc` binary of this build from the repository root.
pub fn attnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnc"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run attnc")
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// q, k and v of `shape` (f32, `synth::qkv` with `seed`) by name: the tensors of an
/// `attnc run` input file.
pub fn qkv_inputs(shape: &Shape, seed: u64) -> BTreeMap<String, Tensor> {
    let (q, k, v) = synth::qkv(shape, DType::F32, seed);
    BTreeMap::from([
        ("q".to_string(), q),
        ("k".to_string(), k),
        ("v".to_string(), v),
    ])
}

/// A scratch directory of this test process, `attnc-cli-{tag}-{pid}` under the temp dir.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnc-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
