//! The differential fuzz check (issue 14): one input (bytes from libFuzzer or the
//! `fuzz_differential` driver) becomes
//! 1. a **builtin sweep**: one float builtin (`exp exp2 log log2 sqrt tanh sigmoid floor
//!    ceil abs`, `min`/`max`/`pow` against an f32 param, `as i32`) applied to 64 f32
//!    values taken as raw bit patterns from the input (so every f32 can occur: NaN,
//!    ±inf, subnormals, ±0, the largest floats), read through the kernel (one key,
//!    `k = v = 1`, `D = 1`, scale 1: the row's LSE is the score) on the CPU backend and
//!    the oracle; they must agree within the bound docs/language.md gives for the CPU
//!    path (2 ulp `exp`/`exp2`, 4 ulp `sigmoid` and `tanh`, exact otherwise),
//!    NaN where the oracle has NaN and the same infinities;
//! 2. a **random program** from the grammar (`progs`, seeded from the input) on a small
//!    random shape, CPU against the oracle within the CPU tolerance (1e-4), as
//!    `tests/random_programs.rs` does.
//!
//! In: bytes. Out: `Ok(())` or a message naming the case (program, shape, values).
//! Bound kernels of the builtin sweep are cached per thread, so a sweep costs one
//! forward call.

use crate::progs::{Gen, captures, program};
use crate::{max_abs_err, random_shape, variant};
use attnc::{
    Backend, BindOptions, Bound, Captures, Compiled, DType, ParamValue, Shape, Tensor, synth,
};
use std::cell::RefCell;
use std::collections::HashMap;

/// Rows of one builtin sweep.
pub const SWEEP: usize = 64;

/// (score body, bound): `Ulps(n)` or exact.
const BUILTINS: &[(&str, Bound_)] = &[
    ("exp(s)", Bound_::Ulps(2)),
    ("exp2(s)", Bound_::Ulps(2)),
    ("sigmoid(s)", Bound_::Ulps(4)),
    ("tanh(s)", Bound_::Ulps(4)),
    ("log(s)", Bound_::Ulps(0)),
    ("log2(s)", Bound_::Ulps(0)),
    ("sqrt(s)", Bound_::Ulps(0)),
    ("floor(s)", Bound_::Ulps(0)),
    ("ceil(s)", Bound_::Ulps(0)),
    ("abs(s)", Bound_::Ulps(0)),
    ("min(s, fp)", Bound_::Ulps(0)),
    ("max(s, fp)", Bound_::Ulps(0)),
    ("pow(s, fp)", Bound_::Ulps(0)),
    ("(s as i32) as f32", Bound_::Ulps(0)),
];

#[derive(Clone, Copy, Debug)]
enum Bound_ {
    Ulps(u64),
}

thread_local! {
    static BOUND: RefCell<HashMap<(usize, bool), (Bound, Bound)>> = RefCell::new(HashMap::new());
}

/// Distance in units in the last place (ordered bit patterns).
pub fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN - i } else { i }) as i64
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Little reader over the input bytes (zeros past the end).
struct Bytes<'a>(&'a [u8], usize);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }
}

/// Both checks on one input.
pub fn check(data: &[u8]) -> Result<(), String> {
    builtins(data)?;
    programs(data)
}

/// Check 1: a builtin over f32 bit patterns from `data`.
pub fn builtins(data: &[u8]) -> Result<(), String> {
    let mut r = Bytes(data, 0);
    let which = r.u8() as usize % BUILTINS.len();
    let (body, bound) = BUILTINS[which];
    let fp = f32::from_bits(r.u32());
    let xs: Vec<f32> = (0..SWEEP).map(|_| f32::from_bits(r.u32())).collect();
    let q = Tensor::from_f32(vec![1, 1, SWEEP, 1], &xs);
    let one = Tensor::from_f32(vec![1, 1, 1, 1], &[1.0]);
    let caps = if body.contains("fp") {
        Captures::default().param("fp", ParamValue::F32(fp))
    } else {
        Captures::default()
    };
    let (cpu, oracle) = BOUND.with(|cell| {
        let mut cache = cell.borrow_mut();
        let uses_fp = body.contains("fp");
        let (c, o) = cache.entry((which, uses_fp)).or_insert_with(|| {
            let decl = if uses_fp { "param fp: f32;\n" } else { "" };
            let src = format!(
                "{decl}score f(s, b, h, q, kv) {{ {body} }}\nattention a {{ score = f; }}\n"
            );
            let v = Compiled::from_source("builtin.attn", &src)
                .and_then(|c| c.select(None))
                .expect("builtin program compiles");
            let shape = Shape {
                b: 1,
                hq: 1,
                hkv: 1,
                lq: SWEEP,
                lkv: 1,
                d: 1,
                dv: 1,
            };
            let bind = |backend| {
                let mut o = BindOptions::new(backend, shape, DType::F32);
                o.scale = Some(1.0);
                o.threads = 1;
                v.bind(o).expect("bind")
            };
            (bind(Backend::Cpu), bind(Backend::Reference))
        });
        let run = |b: &mut Bound| b.forward(&q, &one, &one, &caps).map(|o| o.lse.to_f32());
        (run(c), run(o))
    });
    let cpu = cpu.map_err(|e| format!("{body}: cpu failed: {e}"))?;
    let oracle = oracle.map_err(|e| format!("{body}: oracle failed: {e}"))?;
    for ((&x, &c), &o) in xs.iter().zip(&cpu).zip(&oracle) {
        let ctx = || {
            format!(
                "{body} at s = {x:e} ({:#010x}), fp = {fp:e}: cpu {c:e}, oracle {o:e}",
                x.to_bits()
            )
        };
        if o.is_nan() || c.is_nan() {
            if o.is_nan() != c.is_nan() {
                return Err(ctx());
            }
            continue;
        }
        if o.is_infinite() || c.is_infinite() {
            if o != c {
                return Err(ctx());
            }
            continue;
        }
        let ok = match bound {
            Bound_::Ulps(0) => ulps(c, o) == 0,
            // the oracle is itself within 1 ulp of the exact value (libm)
            Bound_::Ulps(n) => {
                ulps(c, o) <= n + 1 || (o.abs() < f32::MIN_POSITIVE && (c - o).abs() <= 3e-45)
            }
        };
        if !ok {
            return Err(format!("{} ({} ulp; bound {bound:?})", ctx(), ulps(c, o)));
        }
    }
    Ok(())
}

/// Check 2: a random program from the grammar, seeded from `data`.
pub fn programs(data: &[u8]) -> Result<(), String> {
    let mut r = Bytes(data, 0);
    let seed = r.u64() ^ 0x5eed;
    let mut g = Gen::new(seed, false);
    let src = program(&mut g);
    let var = variant(&src, "a");
    let rng = &mut g.rng;
    let shape = random_shape(rng, 2, 40, 8);
    let caps = captures(var.program(), &shape, rng);
    let ctx = format!("seed {seed}, shape {shape}\n{src}");
    let (q, k, v) = synth::qkv(&shape, DType::F32, seed);
    let run = |backend| {
        let mut o = BindOptions::new(backend, shape, DType::F32);
        o.threads = 1;
        var.bind(o)
            .and_then(|mut b| b.forward(&q, &k, &v, &caps))
            .map_err(|e| format!("{backend:?} failed: {e}\n{ctx}"))
    };
    let want = run(Backend::Reference)?;
    let got = run(Backend::Cpu)?;
    for (what, g, w) in [
        ("O", got.o.to_f32(), want.o.to_f32()),
        ("LSE", got.lse.to_f32(), want.lse.to_f32()),
    ] {
        let (e, i) = max_abs_err(&g, &w);
        if e > 1e-4 {
            return Err(format!(
                "{what}: error {e:e} at {i}: cpu {} oracle {}\n{ctx}",
                g[i], w[i]
            ));
        }
    }
    Ok(())
}

/// Document-tiled kernels [`ptx_kernels`] generated in this process (the forward's and the
/// backward's), for the fuzz driver's final line.
pub static DOC_KERNELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One generated program (`progs::Gen` from `seed`; half of them with a differentiable
/// score, a third document masks, `Gen::documents`) through the PTX generator, on the
/// CPU, with every kernel a binding gets ([`kernel_sets`]: sm_90 D128 bf16, D64 f16,
/// sm_80 D128).
/// A failure is an error the generator returns for a program the runtime would launch;
/// a crash (an LLVM fatal error, as LLVM 22's instcombine fixpoint check was in session
/// 36) ends the process, which the fuzzer reports by dying.
pub fn ptx_kernels(seed: u64) -> Result<(), String> {
    use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, generate};
    let grad = seed % 2 == 1;
    let mut g = if seed % 3 == 2 {
        Gen::documents(seed, grad)
    } else {
        Gen::new(seed, grad)
    };
    let src = program(&mut g);
    let var = variant(&src, "a");
    let plan = &attnc_compiler::plan::Plan::new(var.program());
    let longest = 1 + (seed % 20_000) as usize;
    let targets = [
        (Arch::Sm90, 128, InputType::Bf16),
        (Arch::Sm90, 64, InputType::F16),
        (Arch::Sm80, 128, InputType::Bf16),
    ];
    let sets = kernel_sets(plan, &targets, longest);
    for (plan, kind, o) in sets {
        if o.doc_tiles || o.bwd_doc_tiles {
            DOC_KERNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (k, _) = generate(plan, kind, &o, EmitText::PtxOnly)
            .map_err(|e| format!("seed {seed}: {kind} ({}): {e}\n{src}", o.key()))?;
        if !k.ptx.contains(".entry") {
            return Err(format!("seed {seed}: {kind}: no .entry\n{src}"));
        }
    }
    Ok(())
}

/// The kernels a binding of `plan` gets on each `(arch, head dim, input type)` of
/// `targets` for sequences up to `longest` rows, as `(plan, kind, options)`: the forward
/// (`PtxOptions::new(..).for_binding`), the block-table kernel for masks over captured
/// tensors, the backward's three kernels (`PtxOptions::backward(..).backward_for_binding`)
/// and, on sm_90, the fused kernel's uniform-read variant where the score has capture
/// gradients; for a document mask (`Plan::doc_split`) also the document-tiled forward of
/// its linear part (where the forward is warp-specialized) and the fused backward on
/// document kv tiles (`attnc::backward::doc_backward_options`, where it has one). Shared
/// by [`ptx_kernels`] and `mutate::case`.
pub fn kernel_sets<'p>(
    plan: &'p attnc_compiler::plan::Plan,
    targets: &[(
        attnc_compiler::backend::llvm::Arch,
        u32,
        attnc_compiler::backend::llvm::InputType,
    )],
    longest: usize,
) -> Vec<(
    &'p attnc_compiler::plan::Plan,
    attnc_compiler::backend::KernelKind,
    attnc_compiler::backend::llvm::PtxOptions,
)> {
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, PtxOptions};
    use attnc_compiler::plan::MapRecipe;
    let mut sets = Vec::new();
    for &(arch, d, ty) in targets {
        let f = PtxOptions::new(arch, d, d, ty).for_binding(plan, longest);
        if let Some((dplan, _)) = plan.doc_split() {
            let fd = PtxOptions::new(arch, d, d, ty)
                .for_binding(dplan, longest)
                .for_doc_tiles();
            if fd.ws {
                sets.push((dplan, KernelKind::Forward, fd));
            }
            let shape = attnc::Shape {
                b: 2,
                hq: 4,
                hkv: 2,
                lq: longest,
                lkv: longest,
                d: d as usize,
                dv: d as usize,
            };
            let base =
                attnc::backward::backward_kernel_options(plan, &shape, arch, ty, false, true);
            if let Some(o) = attnc::backward::doc_backward_options(&base, plan) {
                sets.push((plan, KernelKind::BackwardDkDv, o));
            }
        }
        sets.push((plan, KernelKind::Forward, f));
        if plan.map_recipe() == MapRecipe::Tensors {
            sets.push((plan, KernelKind::BlockTable, f));
        }
        let b = PtxOptions::backward(arch, d, d, ty).backward_for_binding(plan, longest);
        for k in [
            KernelKind::BackwardPre,
            KernelKind::BackwardDkDv,
            KernelKind::BackwardDq,
        ] {
            sets.push((plan, k, b));
        }
        // the uniform-read path of capture gradients, where it changes the fused kernel
        if arch == Arch::Sm90
            && !attnc_compiler::backend::llvm::backward::capture_grads(plan.program()).is_empty()
        {
            let u = PtxOptions {
                bwd_uniform_reads: true,
                ..b
            };
            sets.push((plan, KernelKind::BackwardDkDv, u));
        }
    }
    sets
}
