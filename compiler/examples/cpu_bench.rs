//! Benchmark of the Cranelift CPU backend on the issue-4 variants.
//!
//! In: command-line options. Out: one line per (variant, L, D) on stdout: time (median of
//! the repetitions), GFLOP/s counting only unmasked pairs (4·B·H·Lq·Lkv·D·density) and
//! the compile time (IR -> callable kernel; the front end is not included).
//!
//! ```text
//! cargo run --release -p attnc-compiler --example cpu_bench -- --threads 2 --l 2048,4096 --d 64,128
//! ```
//!
//! Block maps are built here by per-block interval reasoning (what the block-sparsity
//! analysis derives): corners for the index masks, per-block min/max of the sorted
//! document ids.

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMaps};
use attnc_compiler::backend::cranelift::{CpuOptions, compile};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::{
    Arg, BinOp, Cmp, DimSpec, ElemType, FnKind, Function, Inst, ParamId, ParamInfo, Program,
    Scalar, TensorId, TensorInfo, Type, UnOp, Value,
};
use attnc_compiler::shape::Shape;
use attnc_grammar::ast::Span;
use std::time::Instant;

struct Fb(Function);

impl Fb {
    fn push(&mut self, i: Inst, t: Type) -> Value {
        self.0.push(i, t, Span::new(0, 0))
    }
    fn arg(&mut self, a: Arg) -> Value {
        self.push(Inst::Arg(a), a.ty())
    }
    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        self.push(Inst::Binary(op, a, b), op.signature().1)
    }
    fn un(&mut self, op: UnOp, a: Value) -> Value {
        self.push(Inst::Unary(op, a), op.signature().1)
    }
    fn f(&mut self, x: f32) -> Value {
        self.push(Inst::f32(x), Type::F32)
    }
    fn i(&mut self, x: i32) -> Value {
        self.push(Inst::ConstI32(x), Type::I32)
    }
    fn done(mut self, r: Value) -> Function {
        self.0.ret = r;
        self.0
    }
}

fn causal_into(fb: &mut Fb) -> Value {
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    fb.bin(BinOp::ICmp(Cmp::Ge), q, kv)
}

fn causal_mask() -> Function {
    let mut fb = Fb(Function::new(FnKind::Mask));
    let r = causal_into(&mut fb);
    fb.done(r)
}

fn prog(name: &str, mask: Option<Function>, score: Option<Function>) -> Program {
    Program {
        name: name.into(),
        span: Span::new(0, 0),
        params: vec![],
        tensors: vec![],
        mask,
        score,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Dense,
    Causal,
    Sliding(i32),
    AlibiCausal,
    SoftcapCausal,
    DocumentCausal(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::Dense => "dense".into(),
            Variant::Causal => "causal".into(),
            Variant::Sliding(w) => format!("sliding {w}"),
            Variant::AlibiCausal => "alibi+causal".into(),
            Variant::SoftcapCausal => "softcap+causal".into(),
            Variant::DocumentCausal(n) => format!("document+causal ({n} docs)"),
        }
    }

    fn program(self, heads: usize) -> Program {
        match self {
            Variant::Dense => prog("dense", None, None),
            Variant::Causal => prog("causal", Some(causal_mask()), None),
            Variant::Sliding(_) => {
                let mut fb = Fb(Function::new(FnKind::Mask));
                let c = causal_into(&mut fb);
                let q = fb.arg(Arg::Q);
                let kv = fb.arg(Arg::Kv);
                let d = fb.bin(BinOp::ISub, q, kv);
                let w = fb.push(Inst::Param(ParamId(0)), Type::I32);
                let l = fb.bin(BinOp::ICmp(Cmp::Lt), d, w);
                let r = fb.bin(BinOp::And, c, l);
                let mut p = prog("sliding", Some(fb.done(r)), None);
                p.params.push(ParamInfo {
                    name: "window".into(),
                    ty: Type::I32,
                    span: Span::new(0, 0),
                });
                p
            }
            Variant::AlibiCausal => {
                let mut fb = Fb(Function::new(FnKind::Score));
                let s = fb.arg(Arg::S);
                let h = fb.arg(Arg::H);
                let one = fb.i(1);
                let h1 = fb.bin(BinOp::IAdd, h, one);
                let h1f = fb.un(UnOp::I2F, h1);
                let m8 = fb.f(-8.0);
                let x = fb.bin(BinOp::FMul, m8, h1f);
                let hf = fb.f(heads as f32);
                let x = fb.bin(BinOp::FDiv, x, hf);
                let slope = fb.un(UnOp::Exp2, x);
                let q = fb.arg(Arg::Q);
                let kv = fb.arg(Arg::Kv);
                let d = fb.bin(BinOp::ISub, kv, q);
                let df = fb.un(UnOp::I2F, d);
                let b = fb.bin(BinOp::FMul, slope, df);
                let r = fb.bin(BinOp::FAdd, s, b);
                prog("alibi", Some(causal_mask()), Some(fb.done(r)))
            }
            Variant::SoftcapCausal => {
                let mut fb = Fb(Function::new(FnKind::Score));
                let s = fb.arg(Arg::S);
                let c = fb.f(20.0);
                let x = fb.bin(BinOp::FDiv, s, c);
                let t = fb.un(UnOp::Tanh, x);
                let r = fb.bin(BinOp::FMul, c, t);
                prog("softcap", Some(causal_mask()), Some(fb.done(r)))
            }
            Variant::DocumentCausal(_) => {
                let mut fb = Fb(Function::new(FnKind::Mask));
                let c = causal_into(&mut fb);
                let b = fb.arg(Arg::B);
                let q = fb.arg(Arg::Q);
                let kv = fb.arg(Arg::Kv);
                let t = fb.push(Inst::ConstBool(true), Type::Bool);
                let dq = fb.push(
                    Inst::Load {
                        tensor: TensorId(0),
                        indices: vec![b, q],
                        guard: t,
                    },
                    Type::I32,
                );
                let dk = fb.push(
                    Inst::Load {
                        tensor: TensorId(0),
                        indices: vec![b, kv],
                        guard: t,
                    },
                    Type::I32,
                );
                let e = fb.bin(BinOp::ICmp(Cmp::Eq), dq, dk);
                let r = fb.bin(BinOp::And, c, e);
                let mut p = prog("document", Some(fb.done(r)), None);
                p.tensors.push(TensorInfo {
                    name: "doc".into(),
                    elem: ElemType::I32,
                    dims: vec![DimSpec::B, DimSpec::Kv],
                    span: Span::new(0, 0),
                });
                p
            }
        }
    }

    /// Document ids: `n` equal documents.
    fn docs(n: usize, l: usize) -> Vec<i32> {
        (0..l).map(|i| (i * n / l) as i32).collect()
    }

    fn bindings(self, b: usize, l: usize) -> Bindings {
        match self {
            Variant::Sliding(w) => Bindings {
                params: vec![Scalar::I32(w)],
                tensors: vec![],
            },
            Variant::DocumentCausal(n) => {
                let data: Vec<i32> = (0..b).flat_map(|_| Variant::docs(n, l)).collect();
                Bindings {
                    params: vec![],
                    tensors: vec![BoundTensor {
                        dims: vec![b, l],
                        data: TensorData::I32(data),
                    }],
                }
            }
            _ => Bindings::default(),
        }
    }

    /// Whether (q, kv) is kept, and the block classification from interval bounds.
    fn keep(self, q: usize, kv: usize, doc: &[i32]) -> bool {
        match self {
            Variant::Dense => true,
            Variant::Sliding(w) => q >= kv && ((q - kv) as i64) < w as i64,
            Variant::DocumentCausal(_) => q >= kv && doc[q] == doc[kv],
            _ => q >= kv,
        }
    }

    fn block(self, q0: usize, q1: usize, k0: usize, k1: usize, doc: &[i32]) -> BlockKind {
        // rows q0..=q1, cols k0..=k1
        let causal = if q1 < k0 {
            BlockKind::Empty
        } else if q0 >= k1 {
            BlockKind::Full
        } else {
            BlockKind::Partial
        };
        let and = |a: BlockKind, b: BlockKind| match (a, b) {
            (BlockKind::Empty, _) | (_, BlockKind::Empty) => BlockKind::Empty,
            (BlockKind::Full, BlockKind::Full) => BlockKind::Full,
            _ => BlockKind::Partial,
        };
        match self {
            Variant::Dense => BlockKind::Full,
            Variant::Sliding(w) => {
                let w = w as i64;
                let (dmin, dmax) = (q0 as i64 - k1 as i64, q1 as i64 - k0 as i64);
                let win = if dmax < w {
                    BlockKind::Full
                } else if dmin >= w {
                    BlockKind::Empty
                } else {
                    BlockKind::Partial
                };
                and(causal, win)
            }
            Variant::DocumentCausal(_) => {
                // sorted ids: min/max of a range are its ends
                let (a0, a1, b0, b1) = (doc[q0], doc[q1], doc[k0], doc[k1]);
                let same = if a0 == a1 && b0 == b1 && a0 == b0 {
                    BlockKind::Full
                } else if a1 < b0 || b1 < a0 {
                    BlockKind::Empty
                } else {
                    BlockKind::Partial
                };
                and(causal, same)
            }
            _ => causal,
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(args: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads", 2);
    let reps: usize = arg(&args, "--reps", 3);
    let (b, h) = (arg(&args, "--b", 1usize), arg(&args, "--h", 8usize));
    let ls = list(&args, "--l", &[2048, 4096]);
    let ds = list(&args, "--d", &[64, 128]);
    let only: String = arg(&args, "--only", String::new());
    let variants = [
        Variant::Dense,
        Variant::Causal,
        Variant::Sliding(1024),
        Variant::AlibiCausal,
        Variant::SoftcapCausal,
        Variant::DocumentCausal(8),
    ];
    let opts = CpuOptions::default();
    println!("# attnc CPU backend, f32, B{b} H{h}, {threads} threads, median of {reps}");
    println!(
        "{:<28} {:>6} {:>4} {:>10} {:>9} {:>8} {:>11}",
        "variant", "L", "D", "ms", "GFLOP/s", "density", "compile ms"
    );
    for &l in &ls {
        for &d in &ds {
            let shape = Shape {
                b,
                hq: h,
                hkv: h,
                lq: l,
                lkv: l,
                d,
                dv: d,
            };
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rnd = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                    })
                    .collect()
            };
            let (q, k, v) = (rnd(shape.q_len()), rnd(shape.k_len()), rnd(shape.v_len()));
            let mut o = vec![0f32; shape.o_len()];
            let mut lse = vec![0f32; shape.lse_len()];
            for var in variants {
                if !only.is_empty() && !var.name().contains(&only) {
                    continue;
                }
                let p = var.program(h);
                let t0 = Instant::now();
                let kern = compile(&p, &opts).expect("compile");
                let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
                let bind = var.bindings(b, l);
                let doc = Variant::docs(
                    match var {
                        Variant::DocumentCausal(n) => n,
                        _ => 1,
                    },
                    l,
                );
                let (bq, bkv) = (kern.q_block(), kern.kv_block());
                let map = BlockMap::from_fn(l, l, bq, bkv, |i, j| {
                    var.block(
                        i * bq,
                        ((i + 1) * bq).min(l) - 1,
                        j * bkv,
                        ((j + 1) * bkv).min(l) - 1,
                        &doc,
                    )
                });
                let maps = BlockMaps::single(map);
                let pairs: usize = (0..l)
                    .map(|qi| (0..l).filter(|kj| var.keep(qi, *kj, &doc)).count())
                    .sum();
                let density = pairs as f64 / (l * l) as f64;
                let scale = shape.default_scale();
                let mut times = Vec::new();
                for _ in 0..reps + 1 {
                    let t = Instant::now();
                    kern.run(
                        &shape, &q, &k, &v, scale, &bind, &maps, threads, &mut o, &mut lse,
                    )
                    .expect("run");
                    times.push(t.elapsed().as_secs_f64());
                }
                times.remove(0); // warm-up
                times.sort_by(f64::total_cmp);
                let t = times[times.len() / 2];
                let flops = 4.0 * (b * h) as f64 * (l * l) as f64 * d as f64 * density;
                println!(
                    "{:<28} {:>6} {:>4} {:>10.2} {:>9.1} {:>8.3} {:>11.2}",
                    var.name(),
                    l,
                    d,
                    t * 1e3,
                    flops / t / 1e9,
                    density,
                    compile_ms
                );
            }
        }
    }
}
