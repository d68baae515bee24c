//! Hostile programs: the example files and generated programs mutated token by token
//! (tokens deleted, repeated, swapped; numbers set to the i32 and f32 extremes; names
//! replaced by other names, positions, builtins and keywords; operators by other
//! operators; snippets inserted), then taken as far as they go (one case in four with
//! NaN, infinities, huge floats and extreme integers among q, k, the captured tensors
//! and the params) — compiled, planned, bound and run on the reference and CPU backends
//! (forward, backward where the program has a score, decoding against a contiguous or
//! paged KV cache), and through the PTX generator with every kernel a binding gets
//! (`fuzzdiff::kernel_sets`).
//! Nothing may panic: a bad program is a compile error (`error[E…]`) or an error from
//! the call, never a crash. Results are not compared (a mutated score may overflow to
//! NaN legitimately); `passes.rs` judges well-formed programs against the oracle.
//!
//! In: a seed (and whether to generate kernels). Out: `Ok(what happened)`, or
//! `Err(message)` naming the seed, the source and the stage that panicked. Used by
//! `tests/tests/mutated_programs.rs` and the fuzz driver's `mutate` mode.

use crate::progs::{Gen, program};
use crate::{example_files, pick, range};
use attnc::synth::Rng;
use attnc::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape, Tensor, synth};
use attnc_compiler::ir::{ElemType, Program, Type};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// How far a mutated program got ([`case`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Mutants rejected with a compile error before one compiled (or all 12).
    pub rejected: usize,
    /// A mutant compiled without errors.
    pub compiled: bool,
    /// At least one attention ran its forward on the CPU.
    pub ran: bool,
    /// At least one attention decoded against a cache on the CPU.
    pub decoded: bool,
    /// Kernels generated (with `ptx`).
    pub kernels: usize,
}

/// The tokens of `src`: identifiers and keywords, numbers (with `.`, exponents), runs of
/// operator characters split into the language's operators, single brackets and
/// punctuation, whitespace and comments kept as tokens of their own so that joining the
/// tokens gives `src` back.
fn tokens(src: &str) -> Vec<String> {
    let cs: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let start = i;
        if c.is_whitespace() {
            while i < cs.len() && cs[i].is_whitespace() {
                i += 1;
            }
        } else if c == '/' && cs.get(i + 1) == Some(&'/') {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            while i < cs.len()
                && (cs[i].is_ascii_alphanumeric()
                    || cs[i] == '.'
                    || ((cs[i] == '-' || cs[i] == '+') && matches!(cs[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else {
            let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
            i += if OPS2.contains(&two.as_str()) { 2 } else { 1 };
        }
        out.push(cs[start..i].iter().collect());
    }
    out
}

const OPS2: [&str; 8] = ["==", "!=", "<=", ">=", "&&", "||", "<<", ">>"];
const OPS: [&str; 20] = [
    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "&", "|", "^", "!",
    "<<", ">>", "=",
];
const NUMBERS: [&str; 16] = [
    "0",
    "1",
    "-1",
    "2147483647",
    "2147483648",
    "-2147483648",
    "4294967296",
    "99999999999999999999",
    "0.0",
    "-0.0",
    "1e38",
    "3.5e38",
    "1e-45",
    "1e400",
    "0x7FFFFFFF",
    "65536",
];
const NAMES: [&str; 34] = [
    "q", "kv", "h", "b", "s", "doc", "window", "exp", "exp2", "log", "log2", "tanh", "sqrt",
    "sigmoid", "pow", "min", "max", "clamp", "abs", "select", "floor", "ceil", "if", "else", "as",
    "i32", "f32", "i64", "f16", "bf16", "B", "KV", "H", "Q",
];
/// The item keywords: mutated only by the structural mutations.
const KEYWORDS: [&str; 7] = [
    "tensor",
    "param",
    "const",
    "fn",
    "mask",
    "score",
    "attention",
];
const SNIPPETS: [&str; 14] = [
    "if q > 3 { 1 } else { 2 }",
    " as f32",
    " as i32",
    "[0]",
    "[b, q]",
    "(",
    ")",
    "{",
    "}",
    ";",
    ",",
    "log(0.0)",
    "s / 0.0",
    "q % 0",
];

/// `src` with one to three random token mutations (one most often). Four times in five a
/// token inside braces (a body or an attention block), not an item keyword, changes by
/// its class so that many results still parse: a number becomes an extreme, a name
/// another name of the source or a position, builtin, type or `if`/`else`/`as`, an
/// operator another operator, anything else gets a snippet after it; otherwise any token
/// is deleted, repeated, swapped with another or followed by a snippet.
pub fn mutate(src: &str, rng: &mut Rng) -> String {
    let mut t = tokens(src);
    let words: Vec<String> = t
        .iter()
        .filter(|x| x.starts_with(|c: char| c.is_alphabetic() || c == '_'))
        .cloned()
        .collect();
    let count = match rng.below(10) {
        0..=5 => 1,
        6..=8 => 2,
        _ => 3,
    };
    for _ in 0..count {
        // tokens that are not whitespace or comments; those inside braces (bodies and
        // attention blocks: expressions and compositions) for the mutations by class
        let mut depth = 0i32;
        let mut solid = Vec::new();
        let mut inner = Vec::new();
        for (i, x) in t.iter().enumerate() {
            if x.trim().is_empty() || x.starts_with("//") {
                continue;
            }
            depth += i32::from(x == "{") - i32::from(x == "}");
            solid.push(i);
            if depth > 0 && x != "{" && !KEYWORDS.contains(&x.as_str()) {
                inner.push(i);
            }
        }
        if solid.is_empty() {
            break;
        }
        if rng.below(5) == 0 || inner.is_empty() {
            let (i, j) = (*pick(rng, &solid), *pick(rng, &solid));
            match rng.below(4) {
                0 => t[i] = String::new(),
                1 => t[i] = format!("{} {}", t[i], t[i]),
                2 => t.swap(i, j),
                _ => t[i] = format!("{} {}", t[i], pick(rng, &SNIPPETS)),
            }
            continue;
        }
        let i = *pick(rng, &inner);
        if t[i].starts_with(|c: char| c.is_ascii_digit()) {
            t[i] = pick(rng, &NUMBERS).to_string();
        } else if t[i].starts_with(|c: char| c.is_alphabetic() || c == '_') {
            t[i] = if rng.below(2) == 0 {
                pick(rng, &words).clone()
            } else {
                pick(rng, &NAMES).to_string()
            };
        } else if OPS.contains(&t[i].as_str()) {
            t[i] = pick(rng, &OPS).to_string();
        } else {
            t[i] = format!("{} {}", t[i], pick(rng, &SNIPPETS));
        }
    }
    t.concat()
}

/// Values a hostile case puts among its tensors' elements and params, one in eight.
const HOSTILE_FLOATS: [f32; 7] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e30,
    -1e30,
    f32::MIN_POSITIVE,
    -0.0,
];
const HOSTILE_INTS: [i64; 6] = [
    i32::MIN as i64,
    i32::MAX as i64,
    -1,
    1 << 20,
    i64::MIN,
    i64::MAX,
];

/// Captures for what `p` declares at `shape` (dims as `synth::dims_of` gives them: a
/// symbol dim is 8), random values (with `hostile` also NaN,
/// infinities, huge and extreme integers); `None` where a declared tensor would be larger
/// than 2^18 elements (a mutated fixed dim).
fn captures(p: &Program, shape: &Shape, rng: &mut Rng, hostile: bool) -> Option<Captures> {
    let mut c = Captures::default();
    for param in &p.params {
        let v = match param.ty {
            Type::F32 if hostile && rng.below(4) == 0 => {
                ParamValue::F32(*pick(rng, &HOSTILE_FLOATS))
            }
            Type::F32 => ParamValue::F32(rng.normal() * 4.0),
            _ if hostile && rng.below(4) == 0 => ParamValue::I32(*pick(rng, &HOSTILE_INTS) as i32),
            _ => ParamValue::I32(range(rng, 0, 40) as i32 - 8),
        };
        c.params.insert(param.name.clone(), v);
    }
    for t in &p.tensors {
        let dims = synth::dims_of(&t.dims, shape);
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 18)?;
        let ints = |rng: &mut Rng| -> Vec<i64> {
            (0..n)
                .map(|_| {
                    if hostile && rng.below(8) == 0 {
                        *pick(rng, &HOSTILE_INTS)
                    } else {
                        rng.below(2 * shape.lkv as u64 + 8) as i64 - 4
                    }
                })
                .collect()
        };
        let floats = |rng: &mut Rng| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    if hostile && rng.below(8) == 0 {
                        *pick(rng, &HOSTILE_FLOATS)
                    } else {
                        rng.normal()
                    }
                })
                .collect()
        };
        let tensor = match t.elem {
            ElemType::I32 => {
                let v: Vec<i32> = ints(rng).into_iter().map(|x| x as i32).collect();
                Tensor::from_i32(dims, &v)
            }
            ElemType::I64 => Tensor::from_i64(dims, &ints(rng)),
            ElemType::F32 => Tensor::from_f32(dims, &floats(rng)),
            ElemType::F16 => Tensor::from_f32_as(dims, &floats(rng), DType::F16),
            ElemType::BF16 => Tensor::from_f32_as(dims, &floats(rng), DType::BF16),
        };
        c.tensors.insert(t.name.clone(), tensor);
    }
    Some(c)
}

/// Runs `f`, turning a panic into an error that names `stage`.
fn guarded<T>(stage: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{stage} panicked: {msg}")
    })
}

/// The source a case mutates: an example file (two times in three) or a generated
/// program (with or without `Gen::grad`, sometimes a document mask).
fn base_source(seed: u64, rng: &mut Rng) -> String {
    if rng.below(3) != 0 {
        let files = example_files();
        let f = pick(rng, &files);
        std::fs::read_to_string(f).expect("an example file")
    } else {
        let grad = rng.below(2) == 0;
        let mut g = if rng.below(3) == 0 {
            Gen::documents(seed, grad)
        } else {
            Gen::new(seed, grad)
        };
        program(&mut g)
    }
}

/// Mutants of one source from `seed` through the compiler until one compiles (at most
/// 12), that one through every stage it reaches ([`Reached`]); with
/// `ptx` also the kernels of its first attention (`kernels`). `Err` when a stage panicked or a compile error was not rendered
/// with its code.
pub fn case(seed: u64, ptx: bool) -> Result<Reached, String> {
    let mut rng = Rng::new(seed ^ 0x6d75_7461_7465);
    let mut reached = Reached::default();
    let base = base_source(seed, &mut rng);
    // mutants of `base` until one compiles (at most 12): every one through the compiler,
    // the first that compiles on to the backends
    let mut found = None;
    for _ in 0..12 {
        let src = mutate(&base, &mut rng);
        let ctx = |e: String| format!("seed {seed}: {e}\n--- source ---\n{src}");
        match guarded("compile", || Compiled::from_source("mutated.attn", &src)).map_err(ctx)? {
            Ok(c) => {
                found = Some((src, c));
                break;
            }
            Err(attnc::Error::Compile { rendered, .. }) => {
                if !rendered.contains("error[E") {
                    return Err(ctx(format!(
                        "a compile error without its code:\n{rendered}"
                    )));
                }
                reached.rejected += 1;
            }
            Err(e) => return Err(ctx(format!("compile: not a compile error: {e}"))),
        }
    }
    let Some((src, compiled)) = found else {
        return Ok(reached);
    };
    let ctx = |e: String| format!("seed {seed}: {e}\n--- source ---\n{src}");
    reached.compiled = true;
    // one case in four: NaN, infinities and extremes among q, k, the captures and params
    let hostile = rng.below(4) == 0;
    let shape = {
        let hkv = range(&mut rng, 1, 2);
        Shape {
            b: range(&mut rng, 1, 2),
            hq: hkv * range(&mut rng, 1, 2),
            hkv,
            lq: range(&mut rng, 1, 40),
            lkv: range(&mut rng, 1, 40),
            d: 16,
            dv: 16,
        }
    };
    let names: Vec<String> = compiled.names().iter().map(|s| s.to_string()).collect();
    for (ai, name) in names.iter().enumerate() {
        let var = compiled
            .attention(name)
            .map_err(|e| ctx(format!("attention {name} listed but not found: {e}")))?;
        let Some(caps) = captures(var.program(), &shape, &mut rng, hostile) else {
            continue;
        };
        let (mut q, mut k, v) = synth::qkv(&shape, DType::F32, seed);
        let dout = synth::qkv(&shape, DType::F32, seed ^ 1).0;
        if hostile {
            // a few elements of q and k NaN, infinite or huge
            for t in [&mut q, &mut k] {
                let mut x = t.to_f32();
                for _ in 0..range(&mut rng, 1, 3) {
                    let i = rng.below(x.len() as u64) as usize;
                    x[i] = *pick(&mut rng, &HOSTILE_FLOATS);
                }
                *t = Tensor::from_f32(t.shape().to_vec(), &x);
            }
        }
        for backend in [Backend::Reference, Backend::Cpu] {
            for checked in [false, true] {
                let stage = format!("{name} on {backend:?} (checked {checked})");
                guarded(&stage, || {
                    let mut o = BindOptions::new(backend, shape, DType::F32);
                    (o.threads, o.checked) = (2, checked);
                    let Ok(mut bound) = var.bind(o) else {
                        return false;
                    };
                    let Ok(fwd) = bound.forward(&q, &k, &v, &caps) else {
                        return false;
                    };
                    if var.program().score.is_some() {
                        let _ = bound.backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, None, &caps);
                    }
                    true
                })
                .map(|ran| reached.ran |= ran && backend == Backend::Cpu)
                .map_err(ctx)?;
            }
        }
        // decoding against a KV cache (contiguous or paged) at the logical positions
        let cap = shape.lkv;
        let logical = Shape { lq: cap, ..shape };
        if let Some(dcaps) = captures(var.program(), &logical, &mut rng, hostile) {
            let mut drng = crate::decode_util::Rng(seed | 1);
            let lq = 1 + drng.below(4);
            let lens: Vec<i32> = (0..shape.b).map(|_| drng.below(cap + 1) as i32).collect();
            let page = [None, Some(16)][drng.below(2)];
            let c = crate::decode_util::case(
                &mut drng, shape.b, shape.hq, shape.hkv, lq, 16, cap, lens, page,
            );
            for backend in [Backend::Reference, Backend::Cpu] {
                let stage = format!("{name} decoding on {backend:?}");
                let out = guarded(&stage, || {
                    crate::decode_util::run(&compiled, name, &c, backend, 2, &dcaps, false)
                })
                .map_err(ctx)?;
                reached.decoded |= out.is_ok() && backend == Backend::Cpu;
            }
        }
        if ptx && ai == 0 {
            reached.kernels += kernels(var.program()).map_err(ctx)?;
        }
    }
    Ok(reached)
}

/// The kernels a binding of `p` gets (`fuzzdiff::kernel_sets`: sm_90 D128 bf16 and sm_80
/// D64 f16, sequences up to 300 rows): how many were generated; an error from the
/// generator is fine (a program the kernels do not take), a panic is not.
fn kernels(p: &Program) -> Result<usize, String> {
    use attnc_compiler::backend::llvm::{Arch, EmitText, InputType, generate};
    let plan = attnc_compiler::plan::Plan::new(p);
    let targets = [
        (Arch::Sm90, 128, InputType::Bf16),
        (Arch::Sm80, 64, InputType::F16),
    ];
    let mut made = 0;
    for (plan, kind, o) in crate::fuzzdiff::kernel_sets(&plan, &targets, 300) {
        let stage = format!("{kind} ({})", o.key());
        if guarded(&stage, || generate(plan, kind, &o, EmitText::PtxOnly))?.is_ok() {
            made += 1;
        }
    }
    Ok(made)
}
