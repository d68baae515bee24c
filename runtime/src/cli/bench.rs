//! `attnc bench`: time one attention on one backend with synthetic inputs.
//!
//! In: the .attn file and attention, a shape, a backend, params, the JIT tier policy.
//! Out: compile time, time per call and FLOP rate counting only unmasked pairs, on
//! stdout. For CUDA also where the kernel's kv blocks come from (`kv bounds: closed
//! form`, `block table`, or `document tiles` for a document mask over packed sequences,
//! `BindOptions::doc_tiles`); for masks over captured tensors the time of the block-table
//! build on the device ("block table (gpu)") next to the host build it replaces; and
//! where the JIT's time went, one line each:
//! `jit: codegen X ms (llvm build a, opt b, ptx c), driver d ms, load e ms, first usable
//! F ms [tier; cubin/ptx cache lookups]` and `jit tiers: first usable F ms (Ok), optimized
//! ready G ms (driver d ms, load e ms); kernel Ok x ms (T TFLOP/s), optimized y ms (T
//! TFLOP/s)`, each kernel timed with its own module (the optimized one after waiting
//! for it). CUDA device times are the median of 3 x `--iters` calls after 3 warm-up
//! calls; `ATTNC_BENCH_STAT=min` reports the fastest repetition (the anchors' rule) and
//! `ATTNC_BENCH_WARM_MS=N` times after N ms more of calls (the rate under sustained load).

use super::{BackendArg, parse_params};
use attnc::{BindOptions, Compiled, DType, Error, Shape, bench, synth};
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
    /// `--jit-tiers` (None: `ATTNC_JIT_TIERS`, default off).
    pub jit_tiers: Option<attnc::cuda::JitTiers>,
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
    // sizes are checked before anything is allocated
    synth::checked_inputs(variant.program(), &shape, true)?;
    if a.docs == 0 || a.docs > i32::MAX as usize {
        return Err(Error::Usage(format!(
            "--docs {}: the number of documents must be between 1 and {}",
            a.docs,
            i32::MAX
        )));
    }
    let mut caps = synth::captures_with_ids(variant.program(), &shape, 7, a.docs);
    for (name, v) in parse_params(&a.params)? {
        caps.params.insert(name, v);
    }
    let (q, k, v) = synth::qkv(&shape, dtype, 11);
    // a bad ATTNC_JIT_TIERS is a usage error, before any device is opened
    let jit_tiers = match a.jit_tiers {
        Some(t) => t,
        None => attnc::cuda::JitTiers::from_env().map_err(Error::Usage)?,
    };
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
    opts.jit_tiers = Some(jit_tiers);
    let t0 = std::time::Instant::now();
    let mut bound = variant.bind(opts)?;
    let bind_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (bindings, pairs) = unmasked_pairs(&bound, &caps)?;
    let density = pairs as f64 / (shape.b * shape.hq * shape.lq * shape.lkv) as f64;
    let mut err = None;
    let flops = bench::flops(&shape, pairs);
    let tflops = |ms: f64| flops / (ms * 1e-3) / 1e12;
    let mut device_ms = None;
    if let Some(jit) = bound.jit_stats() {
        let c = &jit.codegen;
        let lookup = |l: Option<attnc::cache::Lookup>| match l {
            None => "-",
            Some(attnc::cache::Lookup::Hit) => "hit",
            Some(attnc::cache::Lookup::Miss) => "miss",
            Some(attnc::cache::Lookup::Corrupt) => "corrupt (rebuilt)",
        };
        outln!(
            "jit: codegen {:.1} ms (llvm build {:.1}, opt {:.1}, ptx {:.1}), driver {:.1} ms, load {:.2} ms, first usable {bind_ms:.2} ms [{} module; cubin {}, ptx {}{}]",
            c.total_ms,
            c.build_ms,
            c.opt_ms,
            c.ptx_ms,
            jit.driver_ms,
            jit.load_ms,
            jit.tier,
            lookup(jit.cubin),
            lookup(jit.disk),
            if jit.memory_hit { ", in memory" } else { "" },
        );
        // kernel time of the first module while it is still the current one
        let first = match jit.tier {
            attnc::cuda::JitTier::Low(_) => bound.device_time(&q, &k, &v, &caps, a.iters)?,
            attnc::cuda::JitTier::Optimized => None,
        };
        let ready = bound.wait_optimized(std::time::Duration::from_secs(120));
        let (opt_ms, opt_tier) = bound
            .device_time(&q, &k, &v, &caps, a.iters)?
            .ok_or_else(|| Error::Usage("the cuda backend gave no device time".into()))?;
        let ready_text = match &ready {
            Ok(Some(r)) if r.driver_ms > 0.0 => format!(
                "optimized ready {:.1} ms (driver {:.1} ms, load {:.2} ms)",
                r.ready_ms, r.driver_ms, r.load_ms
            ),
            Ok(Some(r)) => format!("optimized ready {:.2} ms (cubin from disk)", r.ready_ms),
            Ok(None) => "optimized ready: n/a".to_string(),
            Err(e) => format!("optimized tier failed: {e}"),
        };
        let first_text = match first {
            Some((ms, tier)) => format!("kernel {tier} {ms:.3} ms ({:.1} TFLOP/s), ", tflops(ms)),
            None => String::new(),
        };
        outln!(
            "jit tiers: first usable {bind_ms:.2} ms ({}), {ready_text}; {first_text}kernel {opt_tier} {opt_ms:.3} ms ({:.1} TFLOP/s)",
            jit.tier,
            tflops(opt_ms),
        );
        device_ms = Some(opt_ms);
    }
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
    let kv = match bound.doc_tile_calls() {
        // (the timed kernel: the document-tiled one, `BindOptions::doc_tiles`)
        Some(n) if n > 0 => {
            ", kv bounds: document tiles (the closed form of the mask's linear part)".to_string()
        }
        _ => bound
            .kv_bounds()
            .map(|k| format!(", kv bounds: {}", k.name()))
            .unwrap_or_default(),
    };
    let gflops = flops / (ms * 1e-3) / 1e9;
    let unit = if device_ms.is_some() {
        format!("{:.1} TFLOP/s (device time)", gflops / 1e3)
    } else {
        format!("{gflops:.1} GFLOP/s")
    };
    outln!(
        "{} {} {} {}: compile {:.2} ms (front end {front_ms:.2} ms, bind+JIT {bind_ms:.2} ms), {ms:.3} ms/call, density {density:.4}, {unit}{kv}",
        variant.name(),
        a.backend.backend().name(),
        super::shape_words(&shape),
        dtype,
        front_ms + bind_ms,
    );
    if let Some(t) = table_ms {
        let o = PtxOptions::new(Arch::Sm90, shape.d as u32, shape.dv as u32, InputType::Bf16);
        let (qb, kb) = (o.q_block as usize, o.kv_block as usize);
        let t0 = std::time::Instant::now();
        bound
            .plan()
            .block_maps(&shape, qb, kb, &bindings)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let host_ms = t0.elapsed().as_secs_f64() * 1e3;
        outln!(
            "block table (gpu): {t:.3} ms/build, exact ({qb}x{kb} tiles; not included above); host from tensor summaries: {host_ms:.3} ms"
        );
    }
    Ok(())
}

/// The work a bound call actually does: its unmasked (q, kv) pairs, from block maps at a
/// fine granularity (64 x 64 tiles, partial tiles counted per element), with the
/// captures' bindings they were computed for (`bench` and `bench --grad`).
pub(crate) fn unmasked_pairs(
    bound: &attnc::Bound,
    caps: &attnc::Captures,
) -> Result<(attnc_compiler::interp::Bindings, u64), Error> {
    let shape = bound.shape();
    let bindings = bound.bindings(caps)?;
    let maps = bound
        .plan()
        .block_maps(&shape, 64, 64, &bindings)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let p = bound.variant().program();
    let pairs = attnc_compiler::analysis::density::unmasked_pairs(p, &shape, &maps, &bindings);
    Ok((bindings, pairs))
}
