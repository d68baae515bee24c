//! A host program: JIT-compile an attention variant once, then call it many times with
//! different runtime params and captured tensors (no recompilation).
//!
//! Run: `cargo run --release -p attnc --example host [-- cuda]`
//! In: examples/document_alibi.attn. Out: a few numbers per call on stdout.

use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape, Tensor, synth};
use std::path::Path;

fn main() -> Result<(), attnc::Error> {
    let use_gpu = std::env::args().any(|a| a == "cuda");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/document_alibi.attn");
    let t0 = std::time::Instant::now();
    let compiled = Compiled::from_file(&path)?;
    let variant = compiled.attention("document_alibi")?;
    let shape = Shape {
        b: 2,
        hq: 16,
        hkv: 4,
        lq: 1000,
        lkv: 1000,
        d: 64,
        dv: 64,
    };
    let (backend, dtype) = if use_gpu {
        (Backend::Cuda, DType::BF16)
    } else {
        (Backend::Cpu, DType::F32)
    };
    let mut bound = variant.bind(BindOptions::new(backend, shape, dtype))?;
    println!(
        "compiled and bound for {:?} in {:.1} ms",
        backend,
        t0.elapsed().as_secs_f64() * 1e3
    );

    let (q, k, v) = synth::qkv(&shape, dtype, 1);
    for (window, docs) in [(64, 2), (256, 2), (256, 5)] {
        // documents: `docs` equal runs of positions per batch
        let ids: Vec<i32> = (0..shape.b * shape.lkv)
            .map(|i| ((i % shape.lkv) * docs / shape.lkv) as i32)
            .collect();
        let caps = Captures::default()
            .tensor("doc", Tensor::from_i32(vec![shape.b, shape.lkv], &ids))
            .param("window", ParamValue::I32(window));
        let t = std::time::Instant::now();
        let out = bound.forward(&q, &k, &v, &caps)?;
        let lse = out.lse.to_f32();
        let mean_lse = lse.iter().sum::<f32>() / lse.len() as f32;
        println!(
            "window {window:4}, {docs} documents: forward {:.2} ms, mean LSE {mean_lse:.4}, O[0] = {:.5}",
            t.elapsed().as_secs_f64() * 1e3,
            out.o.to_f32()[0]
        );
    }
    Ok(())
}
