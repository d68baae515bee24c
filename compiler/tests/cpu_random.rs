//! Random IR programs through the CPU backend, against the oracle.
//!
//! Masks and scores are random typed expressions over every IR operation, args, params
//! and captured tensors (the grammar's parser is not wired yet, so programs are generated
//! at the IR level). Fast mode: tensor indices are reduced into range (`e % N`), so the
//! oracle never fails, and results must match within the tolerance of `cpu_kernel.rs`
//! (2e-4 relative). Checked mode: indices are arbitrary; the kernel must fail exactly when
//! the oracle fails (with all-partial maps both evaluate the mask everywhere and the score
//! where the mask holds) and otherwise match it.
//!
//! Operations whose CPU version is an approximation (`exp exp2 tanh` in the vector path:
//! a few ulp) appear only at the top of a score, where no comparison or rounding can
//! amplify an ulp into a different mask bit; everything else (including `log log2 pow`,
//! which call the same libm functions as the interpreter) is bit-exact and may appear
//! anywhere. Divisions are `a / (|b| + 1)` so that the sign of a zero never matters.

use attnc_compiler::analysis::blockmap::{BlockMap, BlockMaps};
use attnc_compiler::backend::cranelift::workers::Scoped;
use attnc_compiler::backend::cranelift::{CpuError, CpuKernel, CpuOptions};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::Scalar;
use attnc_compiler::ir::{
    Arg, BinOp, Cmp, DimSpec, ElemType, FnKind, Function, Inst, ParamId, ParamInfo, Program,
    TensorId, TensorInfo, Type, UnOp, Value, verify_program,
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

const NI: usize = 37; // length of the i32 table
const NF: usize = 23; // length of the f32 table

struct Gen<'r> {
    f: Function,
    rng: &'r mut StdRng,
    checked: bool,
    /// Leaves `kv - q` and `q - kv` besides `q` and `kv` (relative positions: the values
    /// the CPU kernel tabulates per diagonal, `diag`).
    relative: bool,
}

impl Gen<'_> {
    fn push(&mut self, i: Inst, t: Type) -> Value {
        let n = self.f.len();
        self.f.push(i, t, Span::new(n, n + 1))
    }
    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        self.push(Inst::Binary(op, a, b), op.signature().1)
    }
    fn un(&mut self, op: UnOp, a: Value) -> Value {
        self.push(Inst::Unary(op, a), op.signature().1)
    }
    fn ci(&mut self, x: i32) -> Value {
        self.push(Inst::ConstI32(x), Type::I32)
    }
    fn cf(&mut self, x: f32) -> Value {
        self.push(Inst::f32(x), Type::F32)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn index(&mut self, d: u32, n: usize) -> Value {
        let e = self.int(d);
        if self.checked && self.rng.random_bool(0.5) {
            e
        } else {
            let n = self.ci(n as i32);
            self.bin(BinOp::IRem, e, n)
        }
    }

    fn guard(&mut self, d: u32) -> Value {
        if self.rng.random_bool(0.5) {
            self.push(Inst::ConstBool(true), Type::Bool)
        } else {
            self.boolean(d)
        }
    }

    fn int(&mut self, d: u32) -> Value {
        if d == 0 || self.rng.random_bool(0.2) {
            if self.relative && self.rng.random_bool(0.6) {
                let (q, kv) = (
                    self.push(Inst::Arg(Arg::Q), Type::I32),
                    self.push(Inst::Arg(Arg::Kv), Type::I32),
                );
                return match self.rng.random_bool(0.5) {
                    true => self.bin(BinOp::ISub, kv, q),
                    false => self.bin(BinOp::ISub, q, kv),
                };
            }
            return match self.rng.random_range(0..7) {
                0 => self.push(Inst::Arg(Arg::B), Type::I32),
                1 => self.push(Inst::Arg(Arg::H), Type::I32),
                2 | 3 => self.push(Inst::Arg(Arg::Q), Type::I32),
                4 | 5 => self.push(Inst::Arg(Arg::Kv), Type::I32),
                _ => {
                    let x = self.rng.random_range(-9..10);
                    self.ci(x)
                }
            };
        }
        let d = d - 1;
        match self.rng.random_range(0..9) {
            0..=3 => {
                let op = self.pick(&[
                    BinOp::IAdd,
                    BinOp::ISub,
                    BinOp::IMul,
                    BinOp::IDiv,
                    BinOp::IRem,
                    BinOp::IMin,
                    BinOp::IMax,
                    BinOp::IAnd,
                    BinOp::IOr,
                    BinOp::IXor,
                    BinOp::IShl,
                    BinOp::IShr,
                ]);
                let (a, b) = (self.int(d), self.int(d));
                self.bin(op, a, b)
            }
            4 => {
                let op = self.pick(&[UnOp::INeg, UnOp::IAbs]);
                let a = self.int(d);
                self.un(op, a)
            }
            5 => {
                let a = self.float(d);
                self.un(UnOp::F2I, a)
            }
            6 => {
                let a = self.boolean(d);
                self.un(UnOp::B2I, a)
            }
            7 => {
                let (c, a, b) = (self.boolean(d), self.int(d), self.int(d));
                self.push(Inst::Select(c, a, b), Type::I32)
            }
            _ => {
                if self.rng.random_bool(0.5) {
                    self.push(Inst::Param(ParamId(0)), Type::I32)
                } else {
                    let i = self.index(d, NI);
                    let g = self.guard(d);
                    self.push(
                        Inst::Load {
                            tensor: TensorId(0),
                            indices: vec![i],
                            guard: g,
                        },
                        Type::I32,
                    )
                }
            }
        }
    }

    fn float(&mut self, d: u32) -> Value {
        if d == 0 || self.rng.random_bool(0.2) {
            return if self.rng.random_bool(0.5) {
                let a = self.int(0);
                self.un(UnOp::I2F, a)
            } else if self.rng.random_bool(0.15) {
                // NaN and infinities: IEEE and minNum/maxNum semantics must agree
                let x = self.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]);
                self.cf(x)
            } else {
                let x = self.rng.random_range(-4.0f32..4.0);
                self.cf(x)
            };
        }
        let d = d - 1;
        match self.rng.random_range(0..10) {
            0..=2 => {
                let op = self.pick(&[
                    BinOp::FAdd,
                    BinOp::FSub,
                    BinOp::FMul,
                    BinOp::FMin,
                    BinOp::FMax,
                ]);
                let (a, b) = (self.float(d), self.float(d));
                self.bin(op, a, b)
            }
            3 => {
                // a / (|b| + 1)
                let (a, b) = (self.float(d), self.float(d));
                let b = self.un(UnOp::FAbs, b);
                let one = self.cf(1.0);
                let b = self.bin(BinOp::FAdd, b, one);
                self.bin(BinOp::FDiv, a, b)
            }
            4 => {
                let op = self.pick(&[UnOp::FNeg, UnOp::FAbs, UnOp::Floor, UnOp::Ceil, UnOp::Sqrt]);
                let a = self.float(d);
                self.un(op, a)
            }
            5 => {
                // log(|a| + 1), log2(|a| + 1)
                let op = self.pick(&[UnOp::Log, UnOp::Log2]);
                let a = self.float(d);
                let a = self.un(UnOp::FAbs, a);
                let one = self.cf(1.0);
                let a = self.bin(BinOp::FAdd, a, one);
                self.un(op, a)
            }
            6 => {
                // pow(|a| + 0.5, clamp(b, -2, 2))
                let (a, b) = (self.float(d), self.float(d));
                let a = self.un(UnOp::FAbs, a);
                let h = self.cf(0.5);
                let a = self.bin(BinOp::FAdd, a, h);
                let (lo, hi) = (self.cf(-2.0), self.cf(2.0));
                let b = self.bin(BinOp::FMax, b, lo);
                let b = self.bin(BinOp::FMin, b, hi);
                self.bin(BinOp::FPow, a, b)
            }
            7 => {
                let a = self.int(d);
                self.un(UnOp::I2F, a)
            }
            8 => {
                let (c, a, b) = (self.boolean(d), self.float(d), self.float(d));
                self.push(Inst::Select(c, a, b), Type::F32)
            }
            _ => {
                if self.rng.random_bool(0.4) {
                    self.push(Inst::Param(ParamId(1)), Type::F32)
                } else {
                    let i = self.index(d, NF);
                    let g = self.guard(d);
                    self.push(
                        Inst::Load {
                            tensor: TensorId(1),
                            indices: vec![i],
                            guard: g,
                        },
                        Type::F32,
                    )
                }
            }
        }
    }

    fn boolean(&mut self, d: u32) -> Value {
        if d == 0 || self.rng.random_bool(0.1) {
            return if self.rng.random_bool(0.7) {
                let (a, b) = (self.int(0), self.int(0));
                let c = self.pick(&[Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge]);
                self.bin(BinOp::ICmp(c), a, b)
            } else {
                let b = self.rng.random_bool(0.5);
                self.push(Inst::ConstBool(b), Type::Bool)
            };
        }
        let d = d - 1;
        let c = self.pick(&[Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge]);
        match self.rng.random_range(0..7) {
            0 | 1 => {
                let (a, b) = (self.int(d), self.int(d));
                self.bin(BinOp::ICmp(c), a, b)
            }
            2 => {
                let (a, b) = (self.float(d), self.float(d));
                self.bin(BinOp::FCmp(c), a, b)
            }
            3 | 4 => {
                let op = self.pick(&[BinOp::And, BinOp::Or, BinOp::Xor, BinOp::BEq]);
                let (a, b) = (self.boolean(d), self.boolean(d));
                self.bin(op, a, b)
            }
            5 => {
                let a = self.boolean(d);
                self.un(UnOp::Not, a)
            }
            _ => {
                let (c, a, b) = (self.boolean(d), self.boolean(d), self.boolean(d));
                self.push(Inst::Select(c, a, b), Type::Bool)
            }
        }
    }
}

fn random_program_with(rng: &mut StdRng, checked: bool, relative: bool) -> Program {
    let depth = rng.random_range(1..5);
    let mask = if rng.random_bool(0.85) {
        let mut g = Gen {
            f: Function::new(FnKind::Mask),
            rng,
            checked,
            relative,
        };
        let mut m = g.boolean(depth);
        if g.rng.random_bool(0.5) {
            // keep enough of the matrix alive
            let (q, kv) = (
                g.push(Inst::Arg(Arg::Q), Type::I32),
                g.push(Inst::Arg(Arg::Kv), Type::I32),
            );
            let c = g.bin(BinOp::ICmp(Cmp::Ge), q, kv);
            m = g.bin(BinOp::Or, m, c);
        }
        g.f.ret = m;
        Some(g.f)
    } else {
        None
    };
    let score = if rng.random_bool(0.85) {
        let mut g = Gen {
            f: Function::new(FnKind::Score),
            rng,
            checked,
            relative,
        };
        // s + clamp(e, -5, 5) + 0.3 tanh(e2) + 0.2 exp(-|e3|) + 0.1 exp2(clamp(e4, -3, 3))
        let s = g.push(Inst::Arg(Arg::S), Type::F32);
        let e = g.float(depth);
        let (lo, hi) = (g.cf(-5.0), g.cf(5.0));
        let e = g.bin(BinOp::FMax, e, lo);
        let e = g.bin(BinOp::FMin, e, hi);
        let mut r = g.bin(BinOp::FAdd, s, e);
        if g.rng.random_bool(0.6) {
            let e2 = g.float(depth);
            let t = g.un(UnOp::Tanh, e2);
            let k = g.cf(0.3);
            let t = g.bin(BinOp::FMul, k, t);
            r = g.bin(BinOp::FAdd, r, t);
        }
        if g.rng.random_bool(0.4) {
            let e3 = g.float(depth);
            let a = g.un(UnOp::FAbs, e3);
            let a = g.un(UnOp::FNeg, a);
            let x = g.un(UnOp::Exp, a);
            let k = g.cf(0.2);
            let x = g.bin(BinOp::FMul, k, x);
            r = g.bin(BinOp::FAdd, r, x);
        }
        if g.rng.random_bool(0.3) {
            let e4 = g.float(depth);
            let (lo, hi) = (g.cf(-3.0), g.cf(3.0));
            let e4 = g.bin(BinOp::FMax, e4, lo);
            let e4 = g.bin(BinOp::FMin, e4, hi);
            let x = g.un(UnOp::Exp2, e4);
            let k = g.cf(0.1);
            let x = g.bin(BinOp::FMul, k, x);
            r = g.bin(BinOp::FAdd, r, x);
        }
        g.f.ret = r;
        Some(g.f)
    } else {
        None
    };
    Program {
        name: "random".into(),
        span: Span::new(0, 1),
        params: vec![
            ParamInfo {
                name: "pi".into(),
                ty: Type::I32,
                span: Span::new(0, 1),
            },
            ParamInfo {
                name: "pf".into(),
                ty: Type::F32,
                span: Span::new(0, 1),
            },
        ],
        tensors: vec![
            TensorInfo {
                name: "ti".into(),
                elem: ElemType::I32,
                dims: vec![DimSpec::Fixed(NI)],
                span: Span::new(0, 1),
            },
            TensorInfo {
                name: "tf".into(),
                elem: ElemType::F32,
                dims: vec![DimSpec::Fixed(NF)],
                span: Span::new(0, 1),
            },
        ],
        mask,
        score,
    }
}

fn bindings(rng: &mut StdRng) -> Bindings {
    Bindings {
        params: vec![
            Scalar::I32(rng.random_range(-6..7)),
            Scalar::F32(rng.random_range(-3.0f32..3.0)),
        ],
        tensors: vec![
            BoundTensor {
                dims: vec![NI],
                data: TensorData::I32((0..NI).map(|_| rng.random_range(-50..50)).collect()),
            },
            BoundTensor {
                dims: vec![NF],
                data: TensorData::F32((0..NF).map(|_| rng.random_range(-4.0f32..4.0)).collect()),
            },
        ],
    }
}

fn close(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 2e-4 * (1.0 + w.abs())
        };
        if !ok {
            return Err(format!("{what}[{i}] = {g}, oracle {w}"));
        }
    }
    Ok(())
}

/// One generated case: a program, a shape, its inputs and bindings, and tile sizes.
struct Case {
    p: Program,
    shape: Shape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bind: Bindings,
    qb: usize,
    kb: usize,
}

impl Case {
    fn draw(rng: &mut StdRng, checked: bool, relative: bool) -> Result<Case, String> {
        let p = random_program_with(rng, checked, relative);
        verify_program(&p).map_err(|e| format!("generator produced bad IR: {e}"))?;
        let hkv = rng.random_range(1..3);
        let shape = Shape {
            b: rng.random_range(1..3),
            hq: hkv * rng.random_range(1..3),
            hkv,
            lq: rng.random_range(1..70),
            lkv: rng.random_range(1..70),
            d: 32,
            dv: [16, 32, 20][rng.random_range(0..3)],
        };
        let mut r = |n: usize| {
            (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let (q, k, v) = (r(shape.q_len()), r(shape.k_len()), r(shape.v_len()));
        let bind = bindings(rng);
        let qb = [16, 32, 64][rng.random_range(0..3)];
        let kb = [7, 16, 64][rng.random_range(0..3)];
        Ok(Case {
            p,
            shape,
            q,
            k,
            v,
            bind,
            qb,
            kb,
        })
    }

    fn oracle(&self) -> Result<reference::Output, attnc_compiler::interp::EvalError> {
        let c = self;
        reference::attention(
            &c.p,
            &c.shape,
            &c.q,
            &c.k,
            &c.v,
            c.shape.default_scale(),
            &c.bind,
        )
    }

    /// O and LSE of the kernel compiled with `opts` and the case's tile sizes, on
    /// all-partial block maps (the mask evaluated everywhere).
    fn run(&self, opts: CpuOptions) -> Result<(Vec<f32>, Vec<f32>), CpuError> {
        let (s, qb, kb) = (&self.shape, self.qb, self.kb);
        let opts = CpuOptions {
            q_block: qb,
            kv_block: kb,
            ..opts
        };
        let kern = compile(&self.p, &opts)?;
        let maps = BlockMaps::single(BlockMap::all_partial(s.lq, s.lkv, qb, kb));
        let mut o = vec![0f32; s.o_len()];
        let mut lse = vec![0f32; s.lse_len()];
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let scale = s.default_scale();
        kern.run(
            s,
            q,
            k,
            v,
            scale,
            &self.bind,
            &maps,
            &Scoped(2),
            &mut o,
            &mut lse,
        )?;
        Ok((o, lse))
    }

    fn context(&self) -> String {
        format!(
            "shape {:?} blocks {}x{}\n{:#?}",
            self.shape, self.qb, self.kb, self.p
        )
    }
}

fn run_one(seed: u64, checked: bool) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let c = Case::draw(&mut rng, checked, false)?;
    let opts = CpuOptions {
        checked,
        ..CpuOptions::default()
    };
    match (c.oracle(), c.run(opts)) {
        (Ok(w), Ok((o, lse))) => close("o", &o, &w.o).and_then(|_| close("lse", &lse, &w.lse)),
        (Err(_), Err(CpuError::Eval(_))) => Ok(()),
        (w, g) => Err(format!("oracle {:?} vs kernel {:?}", w.err(), g.err())),
    }
    .map_err(|e| format!("{e}\n{}", c.context()))
}

#[test]
fn random_programs_fast_mode() {
    for seed in 0..150 {
        if let Err(e) = run_one(seed, false) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn random_programs_checked_mode() {
    for seed in 1000..1080 {
        if let Err(e) = run_one(seed, true) {
            panic!("seed {seed}: {e}");
        }
    }
}

/// Scores over relative positions (`kv - q`, `q - kv` among the leaves): the kernel with
/// its diagonal tables (`CpuOptions::diagonal_tables`, the default) gives bit for bit the
/// O and LSE of the same kernel computing every value per element, and both match the
/// oracle; odd key blocks (7) and every q block; at least a third of the programs have
/// tables (else the test tests nothing).
#[test]
fn diagonal_tables_give_the_per_element_values() {
    use attnc_compiler::backend::cranelift::diag::Diagonals;
    let (mut tabled, n) = (0, 160u64);
    for seed in 0..n {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xd1a6);
        let c = Case::draw(&mut rng, false, true).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if let Some(f) = &c.p.score
            && Diagonals::find(f, &c.p, &[f.ret], 0, c.qb, c.kb).is_some()
        {
            tabled += 1;
        }
        let ctx = format!("seed {seed}, {}", c.context());
        let run = |diagonal_tables: bool| {
            let opts = CpuOptions {
                diagonal_tables,
                ..CpuOptions::default()
            };
            c.run(opts).unwrap_or_else(|e| panic!("{e}\n{ctx}"))
        };
        let ((o, lse), (o2, lse2)) = (run(true), run(false));
        let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&o), bits(&o2), "O\n{ctx}");
        assert_eq!(bits(&lse), bits(&lse2), "LSE\n{ctx}");
        let w = c.oracle().unwrap_or_else(|e| panic!("oracle: {e}\n{ctx}"));
        close("o", &o, &w.o)
            .and_then(|_| close("lse", &lse, &w.lse))
            .unwrap_or_else(|e| panic!("{e}\n{ctx}"));
    }
    assert!(
        3 * tabled >= n,
        "only {tabled} of {n} programs have diagonal tables"
    );
}

/// [`diagonal_tables_give_the_per_element_values`] for the backward: the element
/// function reading its diagonal tables gives bit for bit the dQ, dK, dV and capture
/// and param gradients of the one computing every value per element, and both match the
/// f64 reference gradients (`reference_grad`); odd key blocks (7: the scalar tail of
/// each row, which computes per element, next to vector sites that read tables). A
/// gradient the kernel gives as NaN where the reference has a number is a chain-rule
/// product `0·∞` (an `exp` that underflowed to 0 after a division by a read: the
/// derivative pass multiplies as PyTorch's autograd does, `grad` module docs; the
/// forward-mode reference never multiplies by a zero weight): such a case is compared
/// on/off only, and there must be few. `ATTNC_CASES=N` runs N programs (default 120).
#[test]
fn diagonal_tables_give_the_per_element_gradients() {
    use attnc_compiler::backend::cranelift::backward::compile_backward;
    use attnc_compiler::reference_grad;
    let n: u64 = std::env::var("ATTNC_CASES").map_or(120, |s| s.parse().expect("ATTNC_CASES"));
    let (mut tabled, mut zero_inf) = (0, 0);
    for seed in 0..n {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb4c6);
        let c = Case::draw(&mut rng, false, true).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let ctx = format!("seed {seed}, {}", c.context());
        let s = &c.shape;
        let dout: Vec<f32> = (0..s.o_len())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let (o, lse) = c
            .run(CpuOptions::default())
            .unwrap_or_else(|e| panic!("{e}\n{ctx}"));
        let maps = BlockMaps::single(BlockMap::all_partial(s.lq, s.lkv, c.qb, c.kb));
        let run = |diagonal_tables: bool| {
            let opts = CpuOptions {
                diagonal_tables,
                q_block: c.qb,
                kv_block: c.kb,
                ..CpuOptions::default()
            };
            let kern = compile_backward(&c.p, &opts).unwrap_or_else(|e| panic!("{e}\n{ctx}"));
            let (q, k, v) = (&c.q, &c.k, &c.v);
            let scale = s.default_scale();
            let g = kern.run(
                s,
                q,
                k,
                v,
                &o,
                &lse,
                &dout,
                None,
                scale,
                &c.bind,
                &maps,
                &Scoped(2),
            );
            (
                g.unwrap_or_else(|e| panic!("{e}\n{ctx}")),
                kern.has_diagonal_tables(),
            )
        };
        let ((g, has), (g2, has2)) = (run(true), run(false));
        assert!(!has2, "tables off, yet tabled\n{ctx}");
        tabled += has as u32;
        assert_eq!(format!("{g:?}"), format!("{g2:?}"), "gradients\n{ctx}");
        let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&g.dq), bits(&g2.dq), "dQ\n{ctx}");
        assert_eq!(bits(&g.dk), bits(&g2.dk), "dK\n{ctx}");
        assert_eq!(bits(&g.dv), bits(&g2.dv), "dV\n{ctx}");
        let w = reference_grad::backward(
            &c.p,
            s,
            &c.q,
            &c.k,
            &c.v,
            &dout,
            None,
            s.default_scale(),
            &c.bind,
        )
        .unwrap_or_else(|e| panic!("oracle: {e}\n{ctx}"));
        let nan_for_number = |got: &[f32], want: &[f32]| {
            got.iter().zip(want).any(|(a, b)| a.is_nan() && !b.is_nan())
        };
        let caps_nan = g.tensors.iter().zip(&w.tensors).any(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => nan_for_number(a, b),
            _ => false,
        });
        if caps_nan || nan_for_number(&g.dq, &w.dq) || nan_for_number(&g.dk, &w.dk) {
            zero_inf += 1;
            continue;
        }
        let near = |what: &str, got: &[f32], want: &[f32]| {
            let m = want
                .iter()
                .filter(|x| x.is_finite())
                .fold(1f32, |m, x| m.max(x.abs()));
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let ok = match b.is_finite() {
                    true => (a - b).abs() <= 2e-3 * m,
                    false => a.is_nan() == b.is_nan() && (b.is_nan() || a == b),
                };
                assert!(ok, "{what}[{i}] = {a}, reference {b}\n{ctx}");
            }
        };
        near("dq", &g.dq, &w.dq);
        near("dk", &g.dk, &w.dk);
        near("dv", &g.dv, &w.dv);
        for (t, (a, b)) in g.tensors.iter().zip(&w.tensors).enumerate() {
            if let (Some(a), Some(b)) = (a, b) {
                near(&format!("tensor {t}"), a, b);
            }
        }
    }
    assert!(
        3 * tabled as u64 >= n,
        "only {tabled} of {n} programs have diagonal tables in the backward"
    );
    assert!(
        10 * zero_inf <= n,
        "{zero_inf} of {n} programs compared on/off only (NaN gradients)"
    );
    println!("{tabled} of {n} programs with diagonal tables, {zero_inf} compared on/off only");
}
