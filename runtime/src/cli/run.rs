//! `attnc run`: tensors from a safetensors file through one backend, `o` and `lse` out.
//!
//! In: the .attn file, the attention name, a safetensors file with `q`, `k`, `v` and
//! each captured tensor by name, params from flags. Out: a safetensors file with `o`
//! and `lse`, and a one-line summary on stdout.

use super::{BackendArg, parse_params};
use attnc::io::{read_safetensors, write_safetensors};
use attnc::{BindOptions, Bound, Captures, Compiled, DType, Error, Output, Shape, Tensor, Variant};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) struct RunArgs {
    pub file: PathBuf,
    pub attention: Option<String>,
    pub inputs: PathBuf,
    pub output: PathBuf,
    pub backend: BackendArg,
    pub scale: Option<f32>,
    pub params: Vec<String>,
    pub checked: bool,
    pub threads: usize,
    /// `--jit-tiers` (None: `ATTNC_JIT_TIERS`, default off).
    pub jit_tiers: Option<attnc::cuda::JitTiers>,
}

pub(crate) fn run(a: &RunArgs) -> Result<(), Error> {
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let mut tensors = read_safetensors(&a.inputs)?;
    let mut take = |name: &str| {
        tensors.remove(name).ok_or_else(|| {
            Error::Usage(format!(
                "{} has no tensor `{name}` (q, k and v are required)",
                a.inputs.display()
            ))
        })
    };
    let (q, k, v) = (take("q")?, take("k")?, take("v")?);
    let (mut bound, captures) = bind_inputs(a, &variant, &q, &k, &v, tensors)?;
    let shape = bound.shape();
    let t0 = std::time::Instant::now();
    let out = bound.forward(&q, &k, &v, &captures)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    write_result(
        a,
        out,
        &format!("{} on {shape}", variant.name()),
        q.dtype(),
        ms,
    )
}

/// Writes `o` and `lse` to `--output` and the summary line (`what`: the attention and
/// its problem) of `run` and `run --kv-cache`.
pub(crate) fn write_result(
    a: &RunArgs,
    out: Output,
    what: &str,
    dtype: DType,
    ms: f64,
) -> Result<(), Error> {
    let mut result = BTreeMap::new();
    result.insert("o".to_string(), out.o);
    result.insert("lse".to_string(), out.lse);
    write_safetensors(&a.output, &result)?;
    outln!(
        "{}: {what} ({dtype}) with the {} backend in {ms:.2} ms -> {}",
        a.file.display(),
        a.backend.backend().name(),
        a.output.display()
    );
    Ok(())
}

/// The bound variant and captures of a `run` (with or without `--grad`): the shape from q,
/// k and v (each rank 4), the file's other tensors as captures, params and bind options
/// from the flags.
pub(crate) fn bind_inputs(
    a: &RunArgs,
    variant: &Variant,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<(Bound, Captures), Error> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.shape().len() != 4 {
            return Err(Error::InputShape {
                which: name.into(),
                expected: "rank 4: [B, H, L, D]".into(),
                got: t.shape().to_vec(),
            });
        }
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let shape = Shape {
        b: qs[0],
        hq: qs[1],
        hkv: ks[1],
        lq: qs[2],
        lkv: ks[2],
        d: qs[3],
        dv: vs[3],
    };
    bind_shape(a, variant, shape, q.dtype(), tensors)
}

/// The bound variant and captures for a known `shape` and `dtype`: `tensors` as
/// captures, params and bind options from the flags (`run` and `run --kv-cache`).
pub(crate) fn bind_shape(
    a: &RunArgs,
    variant: &Variant,
    shape: Shape,
    dtype: DType,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<(Bound, Captures), Error> {
    let mut captures = Captures::default();
    for (name, t) in tensors {
        captures.tensors.insert(name, t);
    }
    for (name, v) in parse_params(&a.params)? {
        captures.params.insert(name, v);
    }
    let mut opts = BindOptions::new(a.backend.backend(), shape, dtype);
    opts.scale = a.scale;
    opts.checked = a.checked;
    opts.threads = a.threads;
    opts.jit_tiers = a.jit_tiers;
    Ok((variant.bind(opts)?, captures))
}
