//! Shared helpers of the cross-crate test suites (`tests/tests/*.rs`).
//!
//! - the example files and their attentions;
//! - [`dense_attention`]: an independent dense softmax attention in f64 (materializes the
//!   Lq x Lkv score matrix per (b, h); mask and score through the IR interpreter), used
//!   to check the reference oracle, which in turn checks every backend;
//! - error measures that treat matching infinities as equal and NaN as a failure.

/// The KV-cache cases of the decoding tests (shared with `runtime/tests`).
#[path = "../runtime/tests/decode_util/mod.rs"]
#[allow(clippy::should_implement_trait)] // its xorshift `Rng::next`
pub mod decode_util;
pub mod fuzzdiff;
pub mod mutate;
pub mod passes;
pub mod progs;

use attnc::{Backend, BindOptions, Captures, Compiled, DType, Shape, Variant};
use attnc_compiler::interp::{Args, Bindings, EvalError, eval};
use attnc_compiler::ir::Program;
use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `examples/*.attn`, sorted.
pub fn example_files() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "attn"))
        .collect();
    files.sort();
    files
}

/// One attention of one example file.
pub struct Example {
    /// File stem, e.g. `document_causal`.
    pub file: String,
    /// Attention name, e.g. `packed_causal`.
    pub name: String,
    pub variant: Variant,
}

impl Example {
    /// `file/name`, for messages and snapshot names.
    pub fn id(&self) -> String {
        format!("{}/{}", self.file, self.name)
    }
    pub fn program(&self) -> &Program {
        self.variant.program()
    }
    /// Whether the attention reads a tensor declared over `KV` at index `q` (document
    /// ids, global-token flags): such masks are meant for self-attention, and a call
    /// needs `Lq <= Lkv` to stay in range. (Tensors declared with `Q`/`KV` dims follow
    /// the shape.)
    pub fn self_attention_only(&self) -> bool {
        matches!(
            self.file.as_str(),
            "document_alibi"
                | "document_causal"
                | "document_sliding_causal"
                | "global_sliding_window"
        )
    }
}

/// Every attention of every example, in file order then source order.
pub fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    for path in example_files() {
        let file = path.file_stem().unwrap().to_string_lossy().into_owned();
        let compiled = Compiled::from_file(&path)
            .unwrap_or_else(|e| panic!("{} does not compile:\n{e}", path.display()));
        for name in compiled.names() {
            out.push(Example {
                file: file.clone(),
                name: name.to_string(),
                variant: compiled.attention(name).unwrap(),
            });
        }
    }
    out
}

/// Compiles a source that must compile, and returns its attention `name`.
pub fn variant(src: &str, name: &str) -> Variant {
    let c = Compiled::from_source("test.attn", src)
        .unwrap_or_else(|e| panic!("test source does not compile:\n{e}\n{src}"));
    c.attention(name).unwrap()
}

/// The interpreter bindings of `captures` for `variant` at `shape` (checked by the API).
pub fn bindings(variant: &Variant, shape: Shape, captures: &Captures) -> Bindings {
    let bound = variant
        .bind(BindOptions::new(Backend::Reference, shape, DType::F32))
        .expect("bind reference");
    bound.bindings(captures).expect("captures fit")
}

/// Dense attention, written independently of `attnc_compiler::reference`: for each
/// (b, h) the whole Lq x Lkv matrix of masked, scored logits is built first, then each
/// row is normalized with a log-sum-exp over its finite entries (f64 throughout).
/// A row without finite logits gives O = 0 and LSE = -inf.
#[allow(clippy::too_many_arguments)]
pub fn dense_attention(
    p: &Program,
    shape: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    bind: &Bindings,
) -> Result<(Vec<f32>, Vec<f32>), EvalError> {
    let (lq, lkv, d, dv) = (shape.lq, shape.lkv, shape.d, shape.dv);
    let group = shape.hq / shape.hkv;
    let mut o = vec![0f32; shape.b * shape.hq * lq * dv];
    let mut lse = vec![f32::NEG_INFINITY; shape.b * shape.hq * lq];
    let mut scratch = Vec::new();
    for b in 0..shape.b {
        for h in 0..shape.hq {
            let hk = h / group;
            let qs = |i: usize| &q[((b * shape.hq + h) * lq + i) * d..][..d];
            let ks = |j: usize| &k[((b * shape.hkv + hk) * lkv + j) * d..][..d];
            let vs = |j: usize| &v[((b * shape.hkv + hk) * lkv + j) * dv..][..dv];
            // the matrix of logits
            let mut logits = vec![f64::NEG_INFINITY; lq * lkv];
            for i in 0..lq {
                for j in 0..lkv {
                    let mut dot = 0f64;
                    for c in 0..d {
                        dot += qs(i)[c] as f64 * ks(j)[c] as f64;
                    }
                    let s = (dot * scale as f64) as f32;
                    let args = Args {
                        s,
                        b: b as i32,
                        h: h as i32,
                        q: i as i32,
                        kv: j as i32,
                    };
                    let keep = match &p.mask {
                        None => true,
                        Some(m) => eval(m, p, args, bind, &mut scratch)?.as_bool(),
                    };
                    if keep {
                        logits[i * lkv + j] = match &p.score {
                            None => s as f64,
                            Some(f) => eval(f, p, args, bind, &mut scratch)?.as_f32() as f64,
                        };
                    }
                }
            }
            for i in 0..lq {
                let row = &logits[i * lkv..][..lkv];
                let finite_max = row
                    .iter()
                    .copied()
                    .filter(|x| *x != f64::NEG_INFINITY)
                    .fold(f64::NEG_INFINITY, f64::max);
                if finite_max == f64::NEG_INFINITY {
                    continue;
                }
                let l = finite_max + row.iter().map(|x| (x - finite_max).exp()).sum::<f64>().ln();
                let r = (b * shape.hq + h) * lq + i;
                lse[r] = l as f32;
                for c in 0..dv {
                    let mut acc = 0f64;
                    for (j, x) in row.iter().enumerate().take(lkv) {
                        acc += (x - l).exp() * vs(j)[c] as f64;
                    }
                    o[r * dv + c] = acc as f32;
                }
            }
        }
    }
    Ok((o, lse))
}

/// The largest difference between two vectors: equal infinities count 0, a NaN or an
/// infinity against a finite value counts +inf. Also returns the index of the worst.
pub fn max_abs_err(got: &[f32], want: &[f32]) -> (f32, usize) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut worst = (0f32, 0usize);
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let e = if x == y {
            0.0
        } else if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
            f32::INFINITY
        } else {
            (x - y).abs()
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Panics with a message naming `what` when `got` and `want` differ by more than `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let (e, i) = max_abs_err(got, want);
    assert!(
        e <= tol,
        "{what}: max error {e:e} > {tol:e} at flat index {i}: got {} want {}",
        got[i],
        want[i]
    );
}

/// A small deterministic generator (SplitMix64) for random shapes and programs.
pub use attnc::synth::Rng;

/// `lo..=hi`, uniformly.
pub fn range(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

/// A random shape of the differential tests: 1..=2 kv heads, 1..=2 batches,
/// 1..=`max_group` query heads per kv head (GQA), lengths 1..=`max_len` (Lq and Lkv
/// drawn apart), head dims `d`.
pub fn random_shape(rng: &mut Rng, max_group: usize, max_len: usize, d: usize) -> Shape {
    let hkv = range(rng, 1, 2);
    Shape {
        b: range(rng, 1, 2),
        hq: hkv * range(rng, 1, max_group),
        hkv,
        lq: range(rng, 1, max_len),
        lkv: range(rng, 1, max_len),
        d,
        dv: d,
    }
}

/// A random element of `xs`.
pub fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}
