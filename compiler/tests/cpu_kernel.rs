//! Differential tests of the Cranelift CPU backend against the oracle
//! (`reference::attention`: f64 softmax, IR interpreter for mask and score).
//!
//! Tolerance: |o - o_ref| <= 2e-4 * (1 + |o_ref|) and the same for LSE. Justification: the
//! kernel accumulates in f32 (dot products over D <= 128 terms of size <= 1, sums of at
//! most a few hundred softmax weights, all <= 1), pre-multiplies Q by the scale, and uses a
//! polynomial exp with about 2 ulp error; each of these contributes a relative error of a
//! few 1e-6 to 1e-5, so 2e-4 leaves a margin of >10x while still catching any wrong
//! element, mask bit or rescaling (those produce errors of order 1e-2 and above).

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMaps};
use attnc_compiler::backend::cranelift::workers::Scoped;
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions, Isa};
use attnc_compiler::interp::{Args, Bindings, BoundTensor, EvalError, TensorData, eval};
use attnc_compiler::ir::{
    Arg, BinOp, Cmp, DimSpec, ElemType, FnKind, Function, Inst, ParamId, ParamInfo, Program,
    Scalar, TensorId, TensorInfo, Type, UnOp, Value,
};
use attnc_compiler::reference;
use attnc_compiler::shape::Shape;
use attnc_grammar::ast::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The forward CPU kernel of `p`.
fn compile(p: &Program, opts: &CpuOptions) -> Result<CpuKernel, CpuError> {
    attnc_compiler::backend::cranelift::compile(
        &attnc_compiler::plan::Plan::new(p),
        attnc_compiler::backend::KernelKind::Forward,
        opts,
    )
}

/// The CLIF of `p`'s forward CPU kernel.
fn emit_clif(p: &Program, opts: &CpuOptions) -> Result<String, CpuError> {
    attnc_compiler::backend::cranelift::emit_clif(
        &attnc_compiler::plan::Plan::new(p),
        attnc_compiler::backend::KernelKind::Forward,
        opts,
    )
}

// ------------------------------------------------------------------ program building

struct Fb {
    f: Function,
    n: usize,
}

impl Fb {
    fn new(kind: FnKind) -> Fb {
        Fb {
            f: Function::new(kind),
            n: 0,
        }
    }
    fn push(&mut self, i: Inst, t: Type) -> Value {
        self.n += 1;
        let n = self.n;
        self.f.push(i, t, Span::new(n * 10, n * 10 + 5))
    }
    fn arg(&mut self, a: Arg) -> Value {
        self.push(Inst::Arg(a), a.ty())
    }
    fn i(&mut self, x: i32) -> Value {
        self.push(Inst::ConstI32(x), Type::I32)
    }
    fn f(&mut self, x: f32) -> Value {
        self.push(Inst::f32(x), Type::F32)
    }
    fn t(&mut self) -> Value {
        self.push(Inst::ConstBool(true), Type::Bool)
    }
    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        let t = op.signature().1;
        self.push(Inst::Binary(op, a, b), t)
    }
    fn un(&mut self, op: UnOp, a: Value) -> Value {
        let t = op.signature().1;
        self.push(Inst::Unary(op, a), t)
    }
    fn param(&mut self, id: u32, t: Type) -> Value {
        self.push(Inst::Param(ParamId(id)), t)
    }
    fn load(&mut self, t: u32, idx: Vec<Value>, guard: Value, ty: Type) -> Value {
        self.push(
            Inst::Load {
                tensor: TensorId(t),
                indices: idx,
                guard,
            },
            ty,
        )
    }
    fn done(mut self, ret: Value) -> Function {
        self.f.ret = ret;
        self.f
    }
}

fn program(name: &str, mask: Option<Function>, score: Option<Function>) -> Program {
    Program {
        name: name.into(),
        span: Span::new(0, 1),
        params: vec![],
        tensors: vec![],
        mask,
        score,
    }
}

fn causal_fn(fb: &mut Fb) -> Value {
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    fb.bin(BinOp::ICmp(Cmp::Ge), q, kv)
}

fn causal_mask() -> Function {
    let mut fb = Fb::new(FnKind::Mask);
    let r = causal_fn(&mut fb);
    fb.done(r)
}

fn dense() -> Program {
    program("dense", None, None)
}

fn causal() -> Program {
    program("causal", Some(causal_mask()), None)
}

/// causal & (q - kv < window), window a param
fn sliding() -> Program {
    let mut fb = Fb::new(FnKind::Mask);
    let c = causal_fn(&mut fb);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let d = fb.bin(BinOp::ISub, q, kv);
    let w = fb.param(0, Type::I32);
    let l = fb.bin(BinOp::ICmp(Cmp::Lt), d, w);
    let r = fb.bin(BinOp::And, c, l);
    let mut p = program("sliding", Some(fb.done(r)), None);
    p.params.push(ParamInfo {
        name: "window".into(),
        ty: Type::I32,
        span: Span::new(1, 2),
    });
    p
}

/// s + exp2(-8 (h+1) / 8) * (kv - q) as f32, causal
fn alibi() -> Program {
    let mut fb = Fb::new(FnKind::Score);
    let s = fb.arg(Arg::S);
    let h = fb.arg(Arg::H);
    let one = fb.i(1);
    let h1 = fb.bin(BinOp::IAdd, h, one);
    let h1f = fb.un(UnOp::I2F, h1);
    let m8 = fb.f(-8.0);
    let x = fb.bin(BinOp::FMul, m8, h1f);
    let heads = fb.f(8.0);
    let x = fb.bin(BinOp::FDiv, x, heads);
    let slope = fb.un(UnOp::Exp2, x);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let d = fb.bin(BinOp::ISub, kv, q);
    let df = fb.un(UnOp::I2F, d);
    let b = fb.bin(BinOp::FMul, slope, df);
    let r = fb.bin(BinOp::FAdd, s, b);
    program("alibi", Some(causal_mask()), Some(fb.done(r)))
}

/// 2 * tanh(s / 2), causal (a small cap so that it matters)
fn softcap(with_mask: bool) -> Program {
    let mut fb = Fb::new(FnKind::Score);
    let s = fb.arg(Arg::S);
    let c = fb.f(2.0);
    let x = fb.bin(BinOp::FDiv, s, c);
    let t = fb.un(UnOp::Tanh, x);
    let r = fb.bin(BinOp::FMul, c, t);
    program("softcap", with_mask.then(causal_mask), Some(fb.done(r)))
}

/// doc[b, q] == doc[b, kv] & causal, doc: i32[B, KV]
fn document() -> Program {
    let mut fb = Fb::new(FnKind::Mask);
    let c = causal_fn(&mut fb);
    let b = fb.arg(Arg::B);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let t = fb.t();
    let dq = fb.load(0, vec![b, q], t, Type::I32);
    let dk = fb.load(0, vec![b, kv], t, Type::I32);
    let e = fb.bin(BinOp::ICmp(Cmp::Eq), dq, dk);
    let r = fb.bin(BinOp::And, c, e);
    let mut p = program("document", Some(fb.done(r)), None);
    p.tensors.push(TensorInfo {
        name: "doc".into(),
        elem: ElemType::I32,
        dims: vec![DimSpec::B, DimSpec::Kv],
        span: Span::new(3, 4),
    });
    p
}

/// kv <= q - 5: rows 0..5 are fully masked
fn late_start() -> Program {
    let mut fb = Fb::new(FnKind::Mask);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let five = fb.i(5);
    let q5 = fb.bin(BinOp::ISub, q, five);
    let r = fb.bin(BinOp::ICmp(Cmp::Le), kv, q5);
    program("late_start", Some(fb.done(r)), None)
}

/// (q / 16 == kv / 16) | ((q - kv) % 5 == 0) | ((kv - q) / c == 1), c a param (0 allowed)
fn floor_ops() -> Program {
    let mut fb = Fb::new(FnKind::Mask);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let sixteen = fb.i(16);
    let a = fb.bin(BinOp::IDiv, q, sixteen);
    let b = fb.bin(BinOp::IDiv, kv, sixteen);
    let e1 = fb.bin(BinOp::ICmp(Cmp::Eq), a, b);
    let d = fb.bin(BinOp::ISub, q, kv);
    let five = fb.i(-5);
    let r = fb.bin(BinOp::IRem, d, five);
    let zero = fb.i(0);
    let e2 = fb.bin(BinOp::ICmp(Cmp::Eq), r, zero);
    let c = fb.param(0, Type::I32);
    let nd = fb.bin(BinOp::ISub, kv, q);
    let x = fb.bin(BinOp::IDiv, nd, c);
    let one = fb.i(1);
    let e3 = fb.bin(BinOp::ICmp(Cmp::Eq), x, one);
    let y = fb.bin(BinOp::IRem, nd, c);
    let e4 = fb.bin(BinOp::ICmp(Cmp::Eq), y, one);
    let o = fb.bin(BinOp::Or, e1, e2);
    let o = fb.bin(BinOp::Or, o, e3);
    let o = fb.bin(BinOp::Or, o, e4);
    let mut p = program("floor_ops", Some(fb.done(o)), None);
    p.params.push(ParamInfo {
        name: "c".into(),
        ty: Type::I32,
        span: Span::new(1, 2),
    });
    p
}

/// head-dependent: h % 2 == 0 | q >= kv; score s * (1 + h) as f32 / 4 + bias[kv - q + 40] with
/// bias: f32[N]; the load is guarded by (kv - q + 40 >= 0)
fn head_bias() -> Program {
    let mut fb = Fb::new(FnKind::Mask);
    let h = fb.arg(Arg::H);
    let two = fb.i(2);
    let r = fb.bin(BinOp::IRem, h, two);
    let zero = fb.i(0);
    let even = fb.bin(BinOp::ICmp(Cmp::Eq), r, zero);
    let c = causal_fn(&mut fb);
    let m = fb.bin(BinOp::Or, even, c);
    let mask = fb.done(m);

    let mut fb = Fb::new(FnKind::Score);
    let s = fb.arg(Arg::S);
    let h = fb.arg(Arg::H);
    let one = fb.i(1);
    let h1 = fb.bin(BinOp::IAdd, h, one);
    let h1f = fb.un(UnOp::I2F, h1);
    let four = fb.f(4.0);
    let k = fb.bin(BinOp::FDiv, h1f, four);
    let x = fb.bin(BinOp::FMul, s, k);
    let q = fb.arg(Arg::Q);
    let kv = fb.arg(Arg::Kv);
    let d = fb.bin(BinOp::ISub, kv, q);
    let forty = fb.i(40);
    let idx = fb.bin(BinOp::IAdd, d, forty);
    let zero = fb.i(0);
    let g = fb.bin(BinOp::ICmp(Cmp::Ge), idx, zero);
    let b = fb.load(0, vec![idx], g, Type::F32);
    let fmin = fb.bin(BinOp::FMax, b, x);
    let y = fb.bin(BinOp::FAdd, x, b);
    let y = fb.bin(BinOp::FMin, y, fmin);
    let mut p = program("head_bias", Some(mask), Some(fb.done(y)));
    p.tensors.push(TensorInfo {
        name: "bias".into(),
        elem: ElemType::F32,
        dims: vec![DimSpec::Symbol("N".into())],
        span: Span::new(5, 6),
    });
    p
}

// ------------------------------------------------------------------ running and checking

struct Case {
    shape: Shape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn case(rng: &mut StdRng, shape: Shape) -> Case {
    let mut r = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    Case {
        shape,
        q: r(shape.q_len()),
        k: r(shape.k_len()),
        v: r(shape.v_len()),
    }
}

/// The exact block map of `p` by brute force (test only): full / partial / empty.
fn brute_map(
    p: &Program,
    shape: &Shape,
    bind: &Bindings,
    bq: usize,
    bkv: usize,
    b: usize,
    h: usize,
) -> BlockMap {
    let Some(m) = &p.mask else {
        return BlockMap::dense(shape.lq, shape.lkv, bq, bkv);
    };
    let mut scratch = Vec::new();
    BlockMap::from_fn(shape.lq, shape.lkv, bq, bkv, |i, j| {
        let (mut t, mut f) = (false, false);
        for qi in i * bq..((i + 1) * bq).min(shape.lq) {
            for kj in j * bkv..((j + 1) * bkv).min(shape.lkv) {
                let a = Args {
                    s: 0.0,
                    b: b as i32,
                    h: h as i32,
                    q: qi as i32,
                    kv: kj as i32,
                };
                if eval(m, p, a, bind, &mut scratch)
                    .map(|x| x.as_bool())
                    .unwrap_or(true)
                {
                    t = true
                } else {
                    f = true
                }
            }
        }
        match (t, f) {
            (true, false) => BlockKind::Full,
            (false, true) => BlockKind::Empty,
            _ => BlockKind::Partial,
        }
    })
}

fn exact_maps(p: &Program, shape: &Shape, bind: &Bindings, k: &CpuKernel) -> BlockMaps {
    let mut maps = Vec::new();
    for b in 0..shape.b {
        for h in 0..shape.hq {
            maps.push(brute_map(p, shape, bind, k.q_block(), k.kv_block(), b, h));
        }
    }
    BlockMaps {
        b_stride: shape.hq,
        h_stride: 1,
        maps,
    }
}

fn run(
    k: &CpuKernel,
    c: &Case,
    bind: &Bindings,
    maps: &BlockMaps,
    threads: usize,
) -> Result<(Vec<f32>, Vec<f32>), CpuError> {
    let mut o = vec![f32::NAN; c.shape.o_len()];
    let mut lse = vec![f32::NAN; c.shape.lse_len()];
    k.run(
        &c.shape,
        &c.q,
        &c.k,
        &c.v,
        c.shape.default_scale(),
        bind,
        maps,
        &Scoped(threads),
        &mut o,
        &mut lse,
    )?;
    Ok((o, lse))
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 2e-4 * (1.0 + w.abs())
        };
        assert!(ok, "{what}[{i}] = {g}, oracle {w}");
    }
}

/// Runs `p` on `c` and compares with the oracle; exact maps and all-partial maps.
fn check(k: &CpuKernel, p: &Program, c: &Case, bind: &Bindings, threads: usize) {
    let want =
        reference::attention(p, &c.shape, &c.q, &c.k, &c.v, c.shape.default_scale(), bind).unwrap();
    let maps = exact_maps(p, &c.shape, bind, k);
    let (o, lse) = run(k, c, bind, &maps, threads).unwrap();
    let tag = format!("{} {:?}", p.name, c.shape);
    close(&format!("{tag} o"), &o, &want.o);
    close(&format!("{tag} lse"), &lse, &want.lse);
    if p.mask.is_some() {
        let all = BlockMaps::single(BlockMap::all_partial(
            c.shape.lq,
            c.shape.lkv,
            k.q_block(),
            k.kv_block(),
        ));
        let (o2, lse2) = run(k, c, bind, &all, threads).unwrap();
        close(&format!("{tag} o (all partial)"), &o2, &want.o);
        close(&format!("{tag} lse (all partial)"), &lse2, &want.lse);
    }
}

fn shape(b: usize, hq: usize, hkv: usize, lq: usize, lkv: usize, d: usize, dv: usize) -> Shape {
    Shape {
        b,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv,
    }
}

fn no_bind() -> Bindings {
    Bindings::default()
}

fn window(w: i32) -> Bindings {
    Bindings {
        params: vec![Scalar::I32(w)],
        tensors: vec![],
    }
}

fn docs(b: usize, lkv: usize, ndocs: usize, rng: &mut StdRng) -> Bindings {
    let mut data = Vec::new();
    for _ in 0..b {
        let mut cuts: Vec<usize> = (0..ndocs - 1).map(|_| rng.random_range(0..=lkv)).collect();
        cuts.sort();
        for i in 0..lkv {
            data.push(cuts.iter().filter(|c| **c <= i).count() as i32);
        }
    }
    Bindings {
        params: vec![],
        tensors: vec![BoundTensor {
            dims: vec![b, lkv],
            data: TensorData::I32(data),
        }],
    }
}

fn bias_bind(n: usize, rng: &mut StdRng) -> Bindings {
    let data = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Bindings {
        params: vec![],
        tensors: vec![BoundTensor {
            dims: vec![n],
            data: TensorData::F32(data),
        }],
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn kernel_is_send_and_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<CpuKernel>();
}

#[test]
fn dense_and_causal_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(1);
    let progs = [dense(), causal()];
    let kernels: Vec<CpuKernel> = progs
        .iter()
        .map(|p| compile(p, &CpuOptions::default()).unwrap())
        .collect();
    for it in 0..6 {
        let d = [32, 64, 128][it % 3];
        let dv = [64, 32, 128, 48, 24, 16][it];
        let hkv = 1 + it % 2;
        let hq = hkv * (1 + (it / 2) % 3);
        let lq = rng.random_range(1..140);
        let lkv = if it % 2 == 0 {
            lq
        } else {
            rng.random_range(1..140)
        };
        let c = case(&mut rng, shape(1 + it % 2, hq, hkv, lq, lkv, d, dv));
        for (p, k) in progs.iter().zip(&kernels) {
            check(k, p, &c, &no_bind(), 1 + it % 3);
        }
    }
}

#[test]
fn variants_with_scores() {
    let mut rng = StdRng::seed_from_u64(2);
    for p in [alibi(), softcap(true), softcap(false), late_start()] {
        let k = compile(&p, &CpuOptions::default()).unwrap();
        for (lq, lkv) in [(77, 77), (130, 45), (5, 200), (1, 150)] {
            let c = case(&mut rng, shape(1, 4, 2, lq, lkv, 64, 64));
            check(&k, &p, &c, &no_bind(), 2);
        }
    }
}

#[test]
fn fully_masked_rows_give_zero_and_neg_inf() {
    let mut rng = StdRng::seed_from_u64(3);
    let p = late_start();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(1, 1, 1, 70, 70, 32, 32));
    let maps = exact_maps(&p, &c.shape, &no_bind(), &k);
    let (o, lse) = run(&k, &c, &no_bind(), &maps, 1).unwrap();
    for i in 0..5 {
        assert_eq!(lse[i], f32::NEG_INFINITY);
        assert!(o[i * 32..(i + 1) * 32].iter().all(|x| *x == 0.0));
    }
    assert!(o.iter().chain(&lse).all(|x| !x.is_nan()));
    // Lkv = 0: every row is fully masked
    let c = case(&mut rng, shape(1, 2, 1, 9, 0, 32, 32));
    let maps = BlockMaps::single(BlockMap::dense(9, 0, k.q_block(), k.kv_block()));
    let (o, lse) = run(&k, &c, &no_bind(), &maps, 2).unwrap();
    assert!(lse.iter().all(|x| *x == f32::NEG_INFINITY));
    assert!(o.iter().all(|x| *x == 0.0));
}

#[test]
fn params_change_without_recompiling() {
    let mut rng = StdRng::seed_from_u64(4);
    let p = sliding();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(1, 2, 2, 150, 150, 64, 64));
    for w in [1, 3, 17, 64, 1000, -2] {
        check(&k, &p, &c, &window(w), 2);
    }
    let p = floor_ops();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(1, 1, 1, 90, 70, 32, 32));
    for cdiv in [0, 3, -4, 1, -1] {
        check(&k, &p, &c, &window(cdiv), 1);
    }
}

#[test]
fn captured_tensors_change_without_recompiling() {
    let mut rng = StdRng::seed_from_u64(5);
    let p = document();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(2, 2, 1, 140, 140, 64, 64));
    for n in [1, 3, 8] {
        let bind = docs(2, 140, n, &mut rng);
        check(&k, &p, &c, &bind, 3);
    }
    let p = head_bias();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(1, 4, 2, 60, 100, 32, 32));
    for n in [140, 200, 1000] {
        check(&k, &p, &c, &bias_bind(n, &mut rng), 2);
    }
}

#[test]
fn checked_mode_reports_out_of_range_reads() {
    let mut rng = StdRng::seed_from_u64(6);
    let p = head_bias();
    let opts = CpuOptions {
        checked: true,
        ..CpuOptions::default()
    };
    let k = compile(&p, &opts).unwrap();
    let c = case(&mut rng, shape(1, 2, 1, 30, 30, 32, 32));
    // in range everywhere (kv - q + 40 in 11..70): same result as the oracle
    check(&k, &p, &c, &bias_bind(80, &mut rng), 2);
    // too short: the oracle and the kernel both fail on `bias`, at the load's span
    let bind = bias_bind(50, &mut rng);
    let want = reference::attention(&p, &c.shape, &c.q, &c.k, &c.v, 0.1, &bind).unwrap_err();
    let maps = exact_maps(&p, &c.shape, &bind, &k);
    let got = run(&k, &c, &bind, &maps, 2).unwrap_err();
    let CpuError::Eval(EvalError::OutOfBounds {
        tensor,
        index,
        dims,
        span,
    }) = got
    else {
        panic!("{got:?}")
    };
    let EvalError::OutOfBounds {
        tensor: t2,
        span: s2,
        ..
    } = want;
    assert_eq!((tensor.as_str(), span), (t2.as_str(), s2));
    assert_eq!(dims, vec![50]);
    assert!(index[0] >= 50, "{index:?}");
    // the same error whatever the thread count
    let again = run(&k, &c, &bind, &maps, 1).unwrap_err();
    assert_eq!(
        format!("{again:?}"),
        format!("{:?}", run(&k, &c, &bind, &maps, 3).unwrap_err())
    );
    // fast mode never fails and never reads out of range
    let fast = compile(&p, &CpuOptions::default()).unwrap();
    run(&fast, &c, &bind, &maps, 2).unwrap();
}

#[test]
fn threads_give_identical_bits() {
    let mut rng = StdRng::seed_from_u64(7);
    let p = alibi();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(2, 4, 4, 200, 190, 64, 64));
    let maps = exact_maps(&p, &c.shape, &no_bind(), &k);
    let one = run(&k, &c, &no_bind(), &maps, 1).unwrap();
    let four = run(&k, &c, &no_bind(), &maps, 4).unwrap();
    assert_eq!(one, four);
}

#[test]
fn micro_kernel_builds_and_tile_sizes() {
    let mut rng = StdRng::seed_from_u64(8);
    let p = document();
    let c = case(&mut rng, shape(1, 2, 2, 83, 83, 64, 40));
    let bind = docs(1, 83, 4, &mut rng);
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if !isa.supported() {
            eprintln!("skipped: {isa:?} not supported here");
            continue;
        }
        for (qb, kb) in [(64, 64), (16, 7), (32, 128), (128, 32)] {
            let opts = CpuOptions {
                q_block: qb,
                kv_block: kb,
                isa: Some(isa),
                ..CpuOptions::default()
            };
            let k = compile(&p, &opts).unwrap();
            check(&k, &p, &c, &bind, 2);
        }
    }
}

#[test]
fn clif_is_deterministic() {
    for p in [
        dense(),
        causal(),
        alibi(),
        document(),
        head_bias(),
        floor_ops(),
    ] {
        let a = emit_clif(&p, &CpuOptions::default()).unwrap();
        let b = emit_clif(&p, &CpuOptions::default()).unwrap();
        assert_eq!(a, b);
        assert!(
            a.contains("call") && a.contains(" = attnc_tile_qk\n"),
            "{a}"
        );
        let checked = emit_clif(
            &p,
            &CpuOptions {
                checked: true,
                ..CpuOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            checked,
            emit_clif(
                &p,
                &CpuOptions {
                    checked: true,
                    ..CpuOptions::default()
                }
            )
            .unwrap()
        );
    }
}

#[test]
fn bad_calls_are_errors() {
    let mut rng = StdRng::seed_from_u64(9);
    let p = sliding();
    let k = compile(&p, &CpuOptions::default()).unwrap();
    let c = case(&mut rng, shape(1, 2, 1, 10, 10, 32, 32));
    let maps = BlockMaps::single(BlockMap::dense(10, 10, 64, 64));
    assert!(matches!(
        run(&k, &c, &no_bind(), &maps, 1),
        Err(CpuError::Bindings(_))
    ));
    let wrong = BlockMaps::single(BlockMap::dense(10, 10, 32, 64));
    assert!(matches!(
        run(&k, &c, &window(3), &wrong, 1),
        Err(CpuError::BlockMap(_))
    ));
    let mut broken = BlockMap::dense(10, 10, 64, 64);
    broken.runs[0].end = 9;
    assert!(matches!(
        run(&k, &c, &window(3), &BlockMaps::single(broken), 1),
        Err(CpuError::BlockMap(_))
    ));
    let few = BlockMaps {
        b_stride: 0,
        h_stride: 1,
        maps: vec![BlockMap::dense(10, 10, 64, 64)],
    };
    assert!(matches!(
        run(&k, &c, &window(3), &few, 1),
        Err(CpuError::BlockMap(_))
    ));
    let mut short = case(&mut rng, c.shape);
    short.k.pop();
    assert!(matches!(
        run(&k, &short, &window(3), &maps, 1),
        Err(CpuError::Length { .. })
    ));
    assert!(matches!(
        compile(
            &p,
            &CpuOptions {
                q_block: 24,
                ..CpuOptions::default()
            }
        ),
        Err(CpuError::Options(_))
    ));
    let mut bad = causal();
    bad.mask.as_mut().unwrap().ret = Value(0);
    assert!(matches!(
        compile(&bad, &CpuOptions::default()),
        Err(CpuError::Verify(_))
    ));
}

/// A kernel compiled with `kv_rows` walks the pages of a paged cache in place: K/V rows
/// scattered over shuffled pages (4, 16 and 128 rows, keys starting inside the first page,
/// rows of a page further apart than D), give the bits the dense kernel gives on the same
/// rows, in every micro-kernel build, for odd block sizes, GQA and D != Dv. Bad page
/// lists are errors.
#[test]
fn kv_pages_walk_scattered_pages_bit_identically() {
    use attnc_compiler::backend::cranelift::KvPages;
    let mut rng = StdRng::seed_from_u64(21);
    let p = document();
    let c = case(&mut rng, shape(2, 4, 2, 37, 83, 64, 40));
    let bind = docs(2, 83, 5, &mut rng);
    let s = c.shape;
    let lists = s.b * s.hkv;
    let (k_ld, v_ld) = (s.d + 3, s.dv + 5);
    // the pages of each (b, kv head), shuffled, rows `ld` apart
    let paged = |rng: &mut StdRng, ps: usize, row0: usize| {
        let per = (row0 + s.lkv).div_ceil(ps);
        let mut perm: Vec<usize> = (0..lists * per).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.random_range(0..=i));
        }
        let mut kbuf = vec![f32::NAN; perm.len() * ps * k_ld];
        let mut vbuf = vec![f32::NAN; perm.len() * ps * v_ld];
        for l in 0..lists {
            for j in 0..s.lkv {
                let (page, slot) = ((row0 + j) / ps, (row0 + j) % ps);
                let phys = perm[l * per + page];
                let src = l * s.lkv + j;
                kbuf[(phys * ps + slot) * k_ld..][..s.d].copy_from_slice(&c.k[src * s.d..][..s.d]);
                vbuf[(phys * ps + slot) * v_ld..][..s.dv]
                    .copy_from_slice(&c.v[src * s.dv..][..s.dv]);
            }
        }
        let k_pages: Vec<usize> = perm.iter().map(|x| x * ps * k_ld).collect();
        let v_pages: Vec<usize> = perm.iter().map(|x| x * ps * v_ld).collect();
        (kbuf, vbuf, k_pages, v_pages)
    };
    let run_pages = |k: &CpuKernel, kv: KvPages| {
        let maps = exact_maps(&p, &s, &bind, k);
        let mut o = vec![f32::NAN; s.o_len()];
        let mut lse = vec![f32::NAN; s.lse_len()];
        k.run_rows(
            &s,
            &c.q,
            kv,
            s.default_scale(),
            &bind,
            &maps,
            &Scoped(2),
            &mut o,
            &mut lse,
        )
        .map(|()| (o, lse))
    };
    let layouts: Vec<_> = [(16, 0), (4, 3), (128, 45)]
        .into_iter()
        .map(|(ps, row0)| (ps, row0, paged(&mut rng, ps, row0)))
        .collect();
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if !isa.supported() {
            eprintln!("skipped: {isa:?} not supported here");
            continue;
        }
        for (qb, kb) in [(64, 64), (16, 7)] {
            let opts = CpuOptions {
                q_block: qb,
                kv_block: kb,
                isa: Some(isa),
                ..CpuOptions::default()
            };
            let dense = compile(&p, &opts).unwrap();
            let pages_k = compile(
                &p,
                &CpuOptions {
                    kv_rows: true,
                    ..opts.clone()
                },
            )
            .unwrap();
            let want = run(&dense, &c, &bind, &exact_maps(&p, &s, &bind, &dense), 2).unwrap();
            check(&dense, &p, &c, &bind, 2);
            for (ps, row0, (kbuf, vbuf, k_pages, v_pages)) in &layouts {
                let kv = KvPages {
                    k: kbuf,
                    v: vbuf,
                    k_pages,
                    v_pages,
                    page_size: *ps,
                    row0: *row0,
                    k_ld,
                    v_ld,
                };
                let got = run_pages(&pages_k, kv).unwrap();
                assert!(
                    got == want,
                    "{isa:?} {qb}x{kb} pages of {ps} from row {row0}"
                );
                // each kernel takes only its own form of K/V
                assert!(matches!(run_pages(&dense, kv), Err(CpuError::Options(_))));
            }
            let maps = exact_maps(&p, &s, &bind, &pages_k);
            assert!(matches!(
                run(&pages_k, &c, &bind, &maps, 1),
                Err(CpuError::Options(_))
            ));
        }
    }
    let k = compile(
        &p,
        &CpuOptions {
            kv_rows: true,
            ..CpuOptions::default()
        },
    )
    .unwrap();
    let (ps, row0, (kbuf, vbuf, k_pages, v_pages)) = &layouts[0];
    let kv = KvPages {
        k: kbuf,
        v: vbuf,
        k_pages,
        v_pages,
        page_size: *ps,
        row0: *row0,
        k_ld,
        v_ld,
    };
    // a page whose last row leaves the tensor, a short list, a page size not a power of 2
    let bad_err = |kv| run_pages(&k, kv).map(|_| ()).unwrap_err();
    let mut bad = v_pages.clone();
    // page 3 is full: its last row ends one float past the tensor
    bad[3] = vbuf.len() - (ps - 1) * v_ld - s.dv + 1;
    let e = bad_err(KvPages {
        v_pages: &bad,
        ..kv
    });
    assert!(
        matches!(
            e,
            CpuError::Row {
                what: "v_pages",
                index: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = bad_err(KvPages {
        k_pages: &k_pages[1..],
        ..kv
    });
    assert!(
        matches!(
            e,
            CpuError::Length {
                what: "k_pages",
                ..
            }
        ),
        "{e}"
    );
    let e = bad_err(KvPages {
        page_size: 12,
        ..kv
    });
    assert!(matches!(e, CpuError::Options(_)), "{e}");
}
