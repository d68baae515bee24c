//! Shared helpers of the GPU tests and the GPU benchmark: device opening with a named
//! skip, random 16-bit inputs, brute-force block maps, bindings of the sample programs.
#![allow(dead_code)]

use attnc::cuda::{CudaDevice, CudaError, CudaKernel, DeviceProblem, JitCache, JitTiers};
use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMaps};
use attnc_compiler::analysis::linear::Bound;
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::InputType;
use attnc_compiler::backend::llvm::{EmitText, LlvmError, PtxKernel, PtxOptions, generate};
use attnc_compiler::interp::{Args, Bindings, BoundTensor, TensorData, eval};
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The device, or None after printing `SKIPPED name: no CUDA device`.
pub fn device_or_skip(name: &str) -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice(_))) => {
            println!("SKIPPED {name}: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("{name}: opening the CUDA device failed: {e}"),
    }
}

/// A GPU test: its name and body (panics on failure).
pub type GpuTest = (&'static str, fn(&CudaDevice));

/// The main of a GPU test binary (`harness = false`): runs `tests` through libtest-mimic,
/// so libtest's interface works (a name filter, `--exact`, `--skip`, `--list`,
/// `--test-threads`) and the summary is libtest's `test result: ...` line. Tests run one
/// at a time (one device) unless `--test-threads` says otherwise. Without a CUDA device
/// each selected test prints `test NAME ... SKIPPED (no CUDA device)` and is reported as
/// ignored (running it anyway with `--ignored` fails: nothing was tested).
pub fn run_gpu_tests(tests: &[GpuTest]) -> ! {
    run_gpu_tests_and_benches(tests, &[])
}

/// [`run_gpu_tests`] with benchmarks: `benches` are ignored trials, run only with
/// `--ignored` (libtest's convention; e.g. `gpu_backward --ignored bench`).
pub fn run_gpu_tests_and_benches(tests: &[GpuTest], benches: &[GpuTest]) -> ! {
    use libtest_mimic::{Arguments, Failed, Trial};
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let dev = if args.list {
        None
    } else {
        device_or_skip("gpu tests").map(std::sync::Arc::new)
    };
    let selected = |name: &str| {
        let by_filter = args.filter.as_deref().is_none_or(|f| {
            if args.exact {
                name == f
            } else {
                name.contains(f)
            }
        });
        let skipped = args.skip.iter().any(|s| {
            if args.exact {
                name == s
            } else {
                name.contains(s.as_str())
            }
        });
        by_filter && !skipped
    };
    let trials = tests
        .iter()
        .map(|t| (t, false))
        .chain(benches.iter().map(|t| (t, true)))
        .map(|(&(name, f), bench)| match &dev {
            Some(d) => {
                let d = d.clone();
                Trial::test(name, move || {
                    f(&d);
                    Ok(())
                })
                .with_ignored_flag(bench)
            }
            None => {
                if !args.list && selected(name) && (!bench || args.ignored || args.include_ignored)
                {
                    println!("test {name} ... SKIPPED (no CUDA device)");
                }
                Trial::test(name, || Err(Failed::from("no CUDA device"))).with_ignored_flag(true)
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// The `examples/` folder: `$ATTNC_EXAMPLES` if set, else `examples` in the working
/// directory or the nearest of its parents that has one (cargo runs tests from the
/// crate folder; a copied test binary runs from wherever it is started), never the
/// build machine's absolute path.
pub fn examples_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("ATTNC_EXAMPLES") {
        return d.into();
    }
    let cwd = std::env::current_dir().expect("working directory");
    cwd.ancestors()
        .map(|a| a.join("examples"))
        .find(|d| d.join("causal.attn").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no examples/ in {} or its parents; set ATTNC_EXAMPLES",
                cwd.display()
            )
        })
}

pub fn to_bits(x: f32, ty: InputType) -> u16 {
    match ty {
        InputType::Bf16 => half::bf16::from_f32(x).to_bits(),
        InputType::F16 => half::f16::from_f32(x).to_bits(),
    }
}

pub fn from_bits(x: u16, ty: InputType) -> f32 {
    match ty {
        InputType::Bf16 => half::bf16::from_bits(x).to_f32(),
        InputType::F16 => half::f16::from_bits(x).to_f32(),
    }
}

/// Random values in [-amp, amp] as 16-bit bits and as the f32 they round to.
pub fn random_input(rng: &mut StdRng, n: usize, amp: f32, ty: InputType) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| to_bits(rng.random_range(-amp..amp), ty))
        .collect();
    let vals = bits.iter().map(|b| from_bits(*b, ty)).collect();
    (bits, vals)
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Bindings for the sample programs: `window` param, sorted `doc` ids [B, KV], `bias` [H, 7].
pub fn bindings(
    p: &Program,
    shape: &Shape,
    rng: &mut StdRng,
    window: i32,
    docs: usize,
) -> Bindings {
    let mut b = Bindings::default();
    for param in &p.params {
        match param.name.as_str() {
            "window" => b.params.push(Scalar::I32(window)),
            // other params (the uniform-read tests' `maxd`): a fixed value of their type
            _ => b.params.push(match param.ty {
                attnc_compiler::ir::Type::I32 => Scalar::I32(100),
                attnc_compiler::ir::Type::F32 => Scalar::F32(1.0),
                attnc_compiler::ir::Type::Bool => Scalar::Bool(true),
            }),
        }
    }
    for t in &p.tensors {
        match t.name.as_str() {
            "doc" => {
                let mut data = Vec::new();
                for _ in 0..shape.b {
                    let mut ids: Vec<i32> = (0..shape.lkv)
                        .map(|_| rng.random_range(0..docs as i32))
                        .collect();
                    ids.sort();
                    data.extend(ids);
                }
                b.tensors.push(BoundTensor {
                    dims: vec![shape.b, shape.lkv],
                    data: TensorData::I32(data),
                });
            }
            "bias" => {
                let data = (0..shape.hq * 7)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                b.tensors.push(BoundTensor {
                    dims: vec![shape.hq, 7],
                    data: TensorData::F32(data),
                });
            }
            // other tensors (the uniform-read tests' tables): their declared dims (a
            // symbol 8), integers in 0..300, floats k / 64 in [-1, 1] (exact in bf16 and
            // f16, so the kernel reads the reference's values)
            _ => {
                use attnc_compiler::ir::ElemType;
                let dims = attnc::synth::dims_of(&t.dims, shape);
                let n = dims.iter().product();
                let data = match t.elem {
                    ElemType::I32 | ElemType::I64 => {
                        TensorData::I32((0..n).map(|_| rng.random_range(0..300)).collect())
                    }
                    _ => TensorData::F32(
                        (0..n)
                            .map(|_| rng.random_range(-64..=64) as f32 / 64.0)
                            .collect(),
                    ),
                };
                b.tensors.push(BoundTensor { dims, data });
            }
        }
    }
    b
}

/// Block maps by evaluating `keep(b, h, q, kv)` at every point (tests and benchmarks only:
/// the analysis replaces this). One map per (b, h) when `per_bh`, else one shared map.
pub fn brute_force_maps(
    shape: &Shape,
    qb: usize,
    kvb: usize,
    per_bh: (bool, bool),
    keep: impl Fn(usize, usize, usize, usize) -> bool,
) -> BlockMaps {
    let nb = if per_bh.0 { shape.b } else { 1 };
    let nh = if per_bh.1 { shape.hq } else { 1 };
    let mut maps = Vec::new();
    for b in 0..nb {
        for h in 0..nh {
            maps.push(BlockMap::from_fn(shape.lq, shape.lkv, qb, kvb, |i, j| {
                let (mut any, mut all) = (false, true);
                for q in i * qb..((i + 1) * qb).min(shape.lq) {
                    for kv in j * kvb..((j + 1) * kvb).min(shape.lkv) {
                        if keep(b, h, q, kv) {
                            any = true;
                        } else {
                            all = false;
                        }
                        if any && !all {
                            return BlockKind::Partial;
                        }
                    }
                }
                if !any {
                    BlockKind::Empty
                } else if all {
                    BlockKind::Full
                } else {
                    BlockKind::Partial
                }
            }));
        }
    }
    BlockMaps {
        b_stride: if per_bh.0 { nh } else { 0 },
        h_stride: if per_bh.1 { 1 } else { 0 },
        maps,
    }
}

/// Brute-force maps from the program's mask, evaluated by the interpreter (reads out of
/// range count as "keep", so the map stays sound).
pub fn interp_maps(
    p: &Program,
    shape: &Shape,
    bind: &Bindings,
    qb: usize,
    kvb: usize,
) -> BlockMaps {
    match &p.mask {
        None => BlockMaps::single(BlockMap::dense(shape.lq, shape.lkv, qb, kvb)),
        Some(m) => {
            let scratch = std::cell::RefCell::new(Vec::new());
            brute_force_maps(shape, qb, kvb, (true, true), |b, h, q, kv| {
                let args = Args {
                    s: 0.0,
                    b: b as i32,
                    h: h as i32,
                    q: q as i32,
                    kv: kv as i32,
                };
                eval(m, p, args, bind, &mut scratch.borrow_mut())
                    .map(|x| x.as_bool())
                    .unwrap_or(true)
            })
        }
    }
}

/// The kernel `kind` of `p` (PTX and LLVM IR).
pub fn emit_kind(p: &Program, kind: KernelKind, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    generate(&Plan::new(p), kind, opts, EmitText::PtxAndLlvm).map(|(k, _)| k)
}

/// The forward kernel of `p`.
pub fn emit(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    emit_kind(p, KernelKind::Forward, opts)
}

/// The block-table kernel of `p`.
pub fn emit_block_table(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    emit_kind(p, KernelKind::BlockTable, opts)
}

/// Launches a block-table builder on `prob` with the skip bounds `skip`.
pub fn build_table(
    dev: &CudaDevice,
    builder: &CudaKernel,
    prob: &DeviceProblem,
    skip: Option<&[Bound]>,
) -> Result<(), CudaError> {
    let extra = prob.skip_args(builder.spec(), skip)?;
    builder.launch(dev, prob, &extra)
}

/// Times a block-table builder on `prob` (median ms per build).
pub fn time_table(
    dev: &CudaDevice,
    builder: &CudaKernel,
    prob: &DeviceProblem,
    skip: Option<&[Bound]>,
    (warmup, iters, reps): (usize, usize, usize),
) -> Result<f64, CudaError> {
    let extra = prob.skip_args(builder.spec(), skip)?;
    builder.time(dev, prob, &extra, warmup, iters, reps)
}

/// The optimized forward kernel of `p` from `cache` (tiers off).
pub fn jit_forward(
    cache: &JitCache,
    dev: &CudaDevice,
    p: &Program,
    opts: &PtxOptions,
) -> Result<(std::sync::Arc<CudaKernel>, attnc::cuda::JitStats), CudaError> {
    let (k, s) = cache.get(dev, &Plan::new(p), KernelKind::Forward, opts, JitTiers::Off)?;
    Ok((k.current().0, s))
}
