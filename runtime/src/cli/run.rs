//! `attnc run`: tensors from a safetensors file through one backend, `o` and `lse` out.
//!
//! In: the .attn file, the attention name, a safetensors file with `q`, `k`, `v` and
//! each captured tensor by name, params from flags. Out: a safetensors file with `o`
//! and `lse`, and a one-line summary on stdout.

use super::{BackendArg, parse_params};
use attnc::io::{read_safetensors, write_safetensors};
use attnc::{BindOptions, Bound, Captures, Compiled, Error, Shape, Tensor, Variant};
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
    let shape = bound.options().shape;
    let t0 = std::time::Instant::now();
    let out = bound.forward(&q, &k, &v, &captures)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut result = BTreeMap::new();
    result.insert("o".to_string(), out.o);
    result.insert("lse".to_string(), out.lse);
    write_safetensors(&a.output, &result)?;
    outln!(
        "{}: {} on {} ({}) with the {} backend in {ms:.2} ms -> {}",
        a.file.display(),
        variant.name(),
        shape,
        q.dtype(),
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
    let mut captures = Captures::default();
    for (name, t) in tensors {
        captures.tensors.insert(name, t);
    }
    for (name, v) in parse_params(&a.params)? {
        captures.params.insert(name, v);
    }
    let mut opts = BindOptions::new(a.backend.backend(), shape, q.dtype());
    opts.scale = a.scale;
    opts.checked = a.checked;
    opts.threads = a.threads;
    opts.jit_tiers = a.jit_tiers;
    Ok((variant.bind(opts)?, captures))
}
