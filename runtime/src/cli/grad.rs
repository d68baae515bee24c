//! `attnc run --grad` and `attnc bench --grad`: the backward pass from the command line.
//!
//! `run --grad` In: the forward's inputs (q, k, v, captured tensors by name) plus `do`
//! (and optionally `dlse`) in the same safetensors file. Out: `o`, `lse`, `dq`, `dk`,
//! `dv` and `d<name>` for every differentiable captured tensor (its shape and dtype) and
//! f32 param (a one-element f32 tensor), and a one-line summary.
//!
//! `bench --grad` In: the bench's arguments. Out: one line with the forward and the
//! backward timed separately (same synthetic inputs, dO ~ N(0, 1); on CUDA the kernels'
//! device time, `Bound::device_time_ms` and `Bound::backward_device_time_ms`, elsewhere
//! the calls' wall time), the backward's
//! GFLOP/s counted as 2.5x the forward's FLOPs over unmasked pairs (FlashAttention's
//! convention) and the backward/forward time ratio.
//!
//! `--nondeterministic` (both): the backward under `BackwardOptions { deterministic:
//! false }` (`Bound::backward_with`: the CUDA binding's non-deterministic kernels; the
//! CPU and reference backends are deterministic either way); the summary line says so.

use super::bench::BenchArgs;
use super::parse_params;
use super::run::RunArgs;
use attnc::io::{read_safetensors, write_safetensors};
use attnc::{BackwardOptions, BindOptions, Compiled, DType, Error, Tensor, bench, synth};
use std::collections::BTreeMap;

/// `--nondeterministic`'s backward options and the summary's words for them.
fn backward_options(nondeterministic: bool) -> (BackwardOptions, &'static str) {
    if nondeterministic {
        (BackwardOptions::nondeterministic(), " (non-deterministic)")
    } else {
        (BackwardOptions::default(), "")
    }
}

pub(crate) fn run(a: &RunArgs, nondeterministic: bool) -> Result<(), Error> {
    let (bwd, words) = backward_options(nondeterministic);
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let mut tensors = read_safetensors(&a.inputs)?;
    let mut take = |name: &str| {
        tensors.remove(name).ok_or_else(|| {
            Error::Usage(format!(
                "{} has no tensor `{name}` (q, k, v and, with --grad, do are required)",
                a.inputs.display()
            ))
        })
    };
    let (q, k, v, dout) = (take("q")?, take("k")?, take("v")?, take("do")?);
    let dlse = tensors.remove("dlse");
    let (mut bound, captures) = super::run::bind_inputs(a, &variant, &q, &k, &v, tensors)?;
    let shape = bound.shape();
    let t0 = std::time::Instant::now();
    let out = bound.forward(&q, &k, &v, &captures)?;
    let fwd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = std::time::Instant::now();
    let g = bound.backward_with(
        &q,
        &k,
        &v,
        &out.o,
        &out.lse,
        &dout,
        dlse.as_ref(),
        &captures,
        &bwd,
    )?;
    let bwd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut result = BTreeMap::new();
    result.insert("o".to_string(), out.o);
    result.insert("lse".to_string(), out.lse);
    result.insert("dq".to_string(), g.dq);
    result.insert("dk".to_string(), g.dk);
    result.insert("dv".to_string(), g.dv);
    for (name, t) in g.tensors {
        result.insert(format!("d{name}"), t);
    }
    for (name, x) in g.params {
        result.insert(format!("d{name}"), Tensor::from_f32(vec![1], &[x]));
    }
    write_safetensors(&a.output, &result)?;
    outln!(
        "{}: {} on {} ({}) with the {} backend: forward {fwd_ms:.2} ms, backward{words} {bwd_ms:.2} ms -> {}",
        a.file.display(),
        variant.name(),
        shape,
        q.dtype(),
        a.backend.backend().name(),
        a.output.display()
    );
    Ok(())
}

pub(crate) fn bench(a: &BenchArgs, nondeterministic: bool) -> Result<(), Error> {
    let (bwd, words) = backward_options(nondeterministic);
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let dtype = DType::parse(&a.dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| Error::Usage(format!("--dtype: `{}` is not f32, f16 or bf16", a.dtype)))?;
    let shape = a.shape;
    let mut caps = synth::captures_with_ids(variant.program(), &shape, 7, a.docs);
    for (name, v) in parse_params(&a.params)? {
        caps.params.insert(name, v);
    }
    let (q, k, v) = synth::qkv(&shape, dtype, 11);
    let mut opts = BindOptions::new(a.backend.backend(), shape, dtype);
    opts.threads = a.threads;
    let mut bound = variant.bind(opts)?;
    let (_, pairs) = super::bench::unmasked_pairs(&bound, &caps)?;
    let fwd_flops = bench::flops(&shape, pairs);
    let mut rng = synth::Rng::new(13);
    let dout: Vec<f32> = (0..shape.o_len()).map(|_| rng.normal()).collect();
    let dout = Tensor::from_f32_as(vec![shape.b, shape.hq, shape.lq, shape.dv], &dout, dtype);
    let out = bound.forward(&q, &k, &v, &caps)?;
    // device backends: the kernels' time (inputs uploaded once, CUDA events), as the
    // forward bench reports it; host backends: the calls' wall time
    let device = match bound.device_time_ms(&q, &k, &v, &caps, a.iters)? {
        Some(fwd_ms) => bound
            .backward_device_time_ms(&q, &k, &v, &out.o, &out.lse, &dout, &caps, a.iters, &bwd)?
            .map(|bwd_ms| (fwd_ms, bwd_ms)),
        None => None,
    };
    let (fwd_ms, bwd_ms) = match device {
        Some(t) => t,
        None => {
            let mut err = None;
            let fwd_ms = bench::time_ms(
                || {
                    if let Err(e) = bound.forward(&q, &k, &v, &caps) {
                        err.get_or_insert(e);
                    }
                },
                1,
                a.iters,
                3,
            );
            let bwd_ms = bench::time_ms(
                || {
                    let g =
                        bound.backward_with(&q, &k, &v, &out.o, &out.lse, &dout, None, &caps, &bwd);
                    if let Err(e) = g {
                        err.get_or_insert(e);
                    }
                },
                1,
                a.iters,
                3,
            );
            if let Some(e) = err {
                return Err(e);
            }
            (fwd_ms, bwd_ms)
        }
    };
    let timing = if device.is_some() {
        " (device time)"
    } else {
        ""
    };
    let gflops = |f: f64, ms: f64| f / (ms * 1e-3) / 1e9;
    // (the kernels on document tiles, where a document mask's ids allow them)
    let words = if bound.doc_tile_backward_calls() > 0 {
        format!("{words} (document tiles)")
    } else {
        words.to_string()
    };
    outln!(
        "{} {} {} {} threads {}{timing}: forward {fwd_ms:.3} ms/call ({:.1} GFLOP/s), backward{words} {bwd_ms:.3} ms/call ({:.1} GFLOP/s at 2.5x the forward's FLOPs), backward/forward {:.2}",
        variant.name(),
        a.backend.backend().name(),
        super::shape_words(&shape),
        dtype,
        a.threads,
        gflops(fwd_flops, fwd_ms),
        gflops(2.5 * fwd_flops, bwd_ms),
        bwd_ms / fwd_ms,
    );
    Ok(())
}
