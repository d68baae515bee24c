//! `attnc bench`: time one attention on one backend with synthetic inputs.
//!
//! In: the .attn file and attention, a shape, a backend, params. Out: compile time,
//! time per call and FLOP rate counting only unmasked pairs, on stdout; for CUDA also
//! where the kernel's kv blocks come from (`kv bounds: closed form` or `block table`)
//! and, for masks over captured tensors, the time of the block-table build on the
//! device ("block table (gpu)") next to the host build it replaces.

use super::{BackendArg, parse_params};
use attnc::{BindOptions, Compiled, DType, Error, Shape, bench, synth};
use attnc_compiler::analysis::classify::{analyze, build_block_maps};
use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions};
use std::path::PathBuf;

pub(crate) struct BenchArgs {
    pub file: PathBuf,
    pub attention: Option<String>,
    pub backend: BackendArg,
    pub shape: Shape,
    pub dtype: String,
    pub threads: usize,
    pub iters: usize,
    pub params: Vec<String>,
    pub docs: usize,
}

pub(crate) fn bench(a: &BenchArgs) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let front_ms = t0.elapsed().as_secs_f64() * 1e3;
    let dtype = DType::parse(&a.dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| Error::Usage(format!("--dtype: `{}` is not f32, f16 or bf16", a.dtype)))?;
    let shape = a.shape;
    let mut caps = synth::captures_with_ids(variant.program(), &shape, 7, a.docs);
    for (name, v) in parse_params(&a.params)? {
        caps.params.insert(name, v);
    }
    let (q, k, v) = synth::qkv(&shape, dtype, 11);
    // the CUDA context is created once per process (tens to hundreds of ms, paid by every
    // CUDA program); time it apart from the JIT
    if a.backend == BackendArg::Cuda {
        let t0 = std::time::Instant::now();
        let info = attnc::cuda_device_info()?;
        let context_ms = t0.elapsed().as_secs_f64() * 1e3;
        outln!("device: {info}; CUDA context {context_ms:.1} ms");
    }
    let mut opts = BindOptions::new(a.backend.backend(), shape, dtype);
    opts.threads = a.threads;
    let t0 = std::time::Instant::now();
    let mut bound = variant.bind(opts)?;
    let bind_ms = t0.elapsed().as_secs_f64() * 1e3;
    // the work actually done: unmasked pairs, from block maps at a fine granularity
    let bindings = bound.bindings(&caps)?;
    let p = variant.program();
    let maps = build_block_maps(p, &analyze(p), &shape, 64, 64, &bindings)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let pairs = attnc_compiler::analysis::density::unmasked_pairs(p, &shape, &maps, &bindings);
    let density = pairs as f64 / (shape.b * shape.hq * shape.lq * shape.lkv) as f64;
    let mut err = None;
    let device_ms = bound.device_time_ms(&q, &k, &v, &caps, a.iters)?;
    let ms = if let Some(ms) = device_ms {
        ms
    } else {
        bench::time_ms(
            || {
                if let Err(e) = bound.forward(&q, &k, &v, &caps) {
                    err.get_or_insert(e);
                }
            },
            1,
            a.iters,
            3,
        )
    };
    if let Some(e) = err {
        return Err(e);
    }
    // masks over captured tensors on the GPU: the block table is built on the device
    // before every launch; time it apart, next to the host build it replaces
    let table_ms = bound.block_table_time_ms(&q, &k, &v, &caps, a.iters)?;
    let kv = bound
        .kv_bounds()
        .map(|k| format!(", kv bounds: {}", k.name()))
        .unwrap_or_default();
    let gflops = bench::flops(&shape, pairs) / (ms * 1e-3) / 1e9;
    let unit = if device_ms.is_some() {
        format!("{:.1} TFLOP/s (device time)", gflops / 1e3)
    } else {
        format!("{gflops:.1} GFLOP/s")
    };
    outln!(
        "{} {} B{} Hq{} Hkv{} Lq{} Lkv{} D{} {}: compile {:.2} ms (front end {front_ms:.2} ms, bind+JIT {bind_ms:.2} ms), {ms:.3} ms/call, density {density:.4}, {unit}{kv}",
        variant.name(),
        a.backend.backend().name(),
        shape.b,
        shape.hq,
        shape.hkv,
        shape.lq,
        shape.lkv,
        shape.d,
        dtype,
        front_ms + bind_ms,
    );
    if let Some(t) = table_ms {
        let o = PtxOptions::new(Arch::Sm90, shape.d as u32, shape.dv as u32, InputType::Bf16);
        let (qb, kb) = (o.q_block as usize, o.kv_block as usize);
        let t0 = std::time::Instant::now();
        build_block_maps(p, &analyze(p), &shape, qb, kb, &bindings)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let host_ms = t0.elapsed().as_secs_f64() * 1e3;
        outln!(
            "block table (gpu): {t:.3} ms/build, exact ({qb}x{kb} tiles; not included above); host from tensor summaries: {host_ms:.3} ms"
        );
    }
    Ok(())
}
