//! Soundness of block classification on random masks built from every IR op: random
//! expression trees over q, kv, b, h, constants (small and huge, so i32 wrap-around is
//! exercised), an i32 and an f32 param, and two small captured tensors (read through
//! clamped indices or through guards). For each mask, random small shapes and block
//! sizes: no empty block may hold a true element and no full block a false one
//! (checked against the interpreter at every point by `classify::precision`).
//! A second generator builds conjunctions of random linear constraints, which take the
//! closed-form path.

use attnc_compiler::analysis::classify::{MaskInfo, precision};
use attnc_compiler::interp::{Bindings, BoundTensor, TensorData};
use attnc_compiler::ir::{
    Arg, BinOp, Cmp, DimSpec, ElemType, FnKind, Function, Inst, ParamId, ParamInfo, Program,
    Scalar, TensorId, TensorInfo, Type, UnOp, Value, verify_program,
};
use attnc_compiler::plan::Plan;
use attnc_compiler::shape::Shape;
use attnc_grammar::ast::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The plan's mask analysis of `p`.
fn analyze(p: &Program) -> MaskInfo {
    Plan::new(p).mask().clone()
}

const CMPS: [Cmp; 6] = [Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge];

struct Gen {
    f: Function,
    rng: StdRng,
    n0: i32,
    n1: i32,
}

impl Gen {
    fn push(&mut self, i: Inst, t: Type) -> Value {
        self.f.push(i, t, Span::default())
    }
    fn c(&mut self, x: i32) -> Value {
        self.push(Inst::ConstI32(x), Type::I32)
    }
    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        let t = op.signature().1;
        self.push(Inst::Binary(op, a, b), t)
    }
    fn clamp(&mut self, x: Value, n: i32) -> Value {
        let z = self.c(0);
        let hi = self.c(n - 1);
        let a = self.bin(BinOp::IMax, x, z);
        self.bin(BinOp::IMin, a, hi)
    }
    fn arg(&mut self) -> Value {
        let a = [Arg::Q, Arg::Kv, Arg::Q, Arg::Kv, Arg::B, Arg::H][self.rng.random_range(0..6)];
        self.push(Inst::Arg(a), Type::I32)
    }
    fn konst(&mut self) -> i32 {
        match self.rng.random_range(0..10) {
            0 => [i32::MAX, i32::MIN, 1 << 30, -(1 << 29), 65536][self.rng.random_range(0..5)],
            1..=3 => self.rng.random_range(1..9),
            _ => self.rng.random_range(-20..40),
        }
    }
    /// An i32 index into a tensor dim of size `n`: clamped (guard true) or guarded.
    fn index(&mut self, depth: u32, n: i32) -> (Value, Option<Value>) {
        let x = self.int(depth);
        if self.rng.random_bool(0.5) {
            (self.clamp(x, n), None)
        } else {
            let z = self.c(0);
            let nn = self.c(n);
            let ge = self.bin(BinOp::ICmp(Cmp::Ge), x, z);
            let lt = self.bin(BinOp::ICmp(Cmp::Lt), x, nn);
            (x, Some(self.bin(BinOp::And, ge, lt)))
        }
    }
    fn load(&mut self, depth: u32, float: bool) -> Value {
        let (tensor, idx, guard) = if float {
            let (b, g0) = self.index(depth, 2);
            let (q, g1) = self.index(depth, self.n1);
            let g = match (g0, g1) {
                (Some(a), Some(b)) => Some(self.bin(BinOp::And, a, b)),
                (a, b) => a.or(b),
            };
            (TensorId(1), vec![b, q], g)
        } else {
            let (x, g) = self.index(depth, self.n0);
            (TensorId(0), vec![x], g)
        };
        let guard = match guard {
            Some(g) => g,
            None => self.push(Inst::ConstBool(true), Type::Bool),
        };
        let t = if float { Type::F32 } else { Type::I32 };
        self.push(
            Inst::Load {
                tensor,
                indices: idx,
                guard,
            },
            t,
        )
    }
    fn int(&mut self, depth: u32) -> Value {
        if depth == 0 || self.rng.random_bool(0.25) {
            return match self.rng.random_range(0..8) {
                0..=3 => self.arg(),
                4 | 5 => {
                    let k = self.konst();
                    self.c(k)
                }
                6 => self.push(Inst::Param(ParamId(0)), Type::I32),
                _ => self.load(0, false),
            };
        }
        let d = depth - 1;
        match self.rng.random_range(0..14) {
            0 => {
                let (a, b) = (self.int(d), self.int(d));
                self.bin(BinOp::IAdd, a, b)
            }
            1 => {
                let (a, b) = (self.int(d), self.int(d));
                self.bin(BinOp::ISub, a, b)
            }
            2 => {
                let a = self.int(d);
                let b = if self.rng.random_bool(0.7) {
                    let k = self.konst();
                    self.c(k)
                } else {
                    self.int(d)
                };
                self.bin(BinOp::IMul, a, b)
            }
            3 | 4 => {
                let a = self.int(d);
                let b = if self.rng.random_bool(0.7) {
                    let k = self.rng.random_range(-9..17);
                    self.c(k)
                } else {
                    self.int(d)
                };
                let op = if self.rng.random_bool(0.5) {
                    BinOp::IDiv
                } else {
                    BinOp::IRem
                };
                self.bin(op, a, b)
            }
            5 => {
                let (a, b) = (self.int(d), self.int(d));
                let op = if self.rng.random_bool(0.5) {
                    BinOp::IMin
                } else {
                    BinOp::IMax
                };
                self.bin(op, a, b)
            }
            6 => {
                let a = self.int(d);
                let op = if self.rng.random_bool(0.5) {
                    UnOp::INeg
                } else {
                    UnOp::IAbs
                };
                self.push(Inst::Unary(op, a), Type::I32)
            }
            7 => {
                let (c, a, b) = (self.boolean(d), self.int(d), self.int(d));
                self.push(Inst::Select(c, a, b), Type::I32)
            }
            8 => {
                let a = self.float(d);
                self.push(Inst::Unary(UnOp::F2I, a), Type::I32)
            }
            9 => {
                let a = self.boolean(d);
                self.push(Inst::Unary(UnOp::B2I, a), Type::I32)
            }
            10 => self.load(d, false),
            11 => {
                // bitwise operators; shift amounts in and out of 0..32 (negative too)
                let a = self.int(d);
                let op = [
                    BinOp::IAnd,
                    BinOp::IOr,
                    BinOp::IXor,
                    BinOp::IShl,
                    BinOp::IShr,
                ][self.rng.random_range(0..5)];
                let b = if self.rng.random_bool(0.6) {
                    let k = if matches!(op, BinOp::IShl | BinOp::IShr) {
                        self.rng.random_range(-3..36)
                    } else {
                        self.rng.random_range(-9..64)
                    };
                    self.c(k)
                } else {
                    self.int(d)
                };
                self.bin(op, a, b)
            }
            _ => self.arg(),
        }
    }
    fn float(&mut self, depth: u32) -> Value {
        if depth == 0 || self.rng.random_bool(0.25) {
            return match self.rng.random_range(0..5) {
                0 => {
                    let x = [0.0, -0.0, 1.5, -3.25, 1e30, f32::INFINITY, f32::NAN, 0.1]
                        [self.rng.random_range(0..8)];
                    self.push(Inst::f32(x), Type::F32)
                }
                1 => self.push(Inst::Param(ParamId(1)), Type::F32),
                2 => self.load(0, true),
                _ => {
                    let a = self.arg();
                    self.push(Inst::Unary(UnOp::I2F, a), Type::F32)
                }
            };
        }
        let d = depth - 1;
        match self.rng.random_range(0..6) {
            0 | 1 => {
                let op = [
                    BinOp::FAdd,
                    BinOp::FSub,
                    BinOp::FMul,
                    BinOp::FDiv,
                    BinOp::FMin,
                    BinOp::FMax,
                    BinOp::FPow,
                ][self.rng.random_range(0..7)];
                let (a, b) = (self.float(d), self.float(d));
                self.bin(op, a, b)
            }
            2 => {
                let op = [
                    UnOp::FNeg,
                    UnOp::FAbs,
                    UnOp::Exp,
                    UnOp::Exp2,
                    UnOp::Log,
                    UnOp::Log2,
                    UnOp::Sqrt,
                    UnOp::Tanh,
                    UnOp::Floor,
                    UnOp::Ceil,
                ][self.rng.random_range(0..10)];
                let a = self.float(d);
                self.push(Inst::Unary(op, a), Type::F32)
            }
            3 => {
                let (c, a, b) = (self.boolean(d), self.float(d), self.float(d));
                self.push(Inst::Select(c, a, b), Type::F32)
            }
            _ => {
                let a = self.int(d);
                self.push(Inst::Unary(UnOp::I2F, a), Type::F32)
            }
        }
    }
    /// `a q + b kv - k` for random small `a`, `b` (-3..=3) and `k` (-30..30).
    fn linear_side(&mut self) -> Value {
        let (a, b, k) = (
            self.rng.random_range(-3..4),
            self.rng.random_range(-3..4),
            self.rng.random_range(-30..30),
        );
        let q = self.push(Inst::Arg(Arg::Q), Type::I32);
        let kv = self.push(Inst::Arg(Arg::Kv), Type::I32);
        let (ca, cb, ck) = (self.c(a), self.c(b), self.c(k));
        let x = self.bin(BinOp::IMul, q, ca);
        let y = self.bin(BinOp::IMul, cb, kv);
        let s = self.bin(BinOp::IAdd, x, y);
        self.bin(BinOp::ISub, s, ck)
    }
    /// A conjunction of 1 to 4 conjuncts: linear constraints `a q + b kv - k (+ p) cmp 0`
    /// (some with the param) and random booleans (every IR op, some with tensors, params,
    /// b and h; only those when `only_random`), joined by `&` or by `c ? a : false` (the
    /// lowering of `&&`).
    fn mixed_conjunction(&mut self, only_random: bool) -> Value {
        let n = self.rng.random_range(1..5);
        let mut acc: Option<Value> = None;
        for _ in 0..n {
            let atom = if only_random || self.rng.random_bool(0.5) {
                let depth = self.rng.random_range(1..4);
                self.boolean(depth)
            } else {
                let mut r = self.linear_side();
                if self.rng.random_bool(0.3) {
                    let p = self.push(Inst::Param(ParamId(0)), Type::I32);
                    r = self.bin(BinOp::IAdd, r, p);
                }
                let z = self.c(0);
                let c = [Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge][self.rng.random_range(0..5)];
                self.bin(BinOp::ICmp(c), r, z)
            };
            acc = Some(match acc {
                None => atom,
                Some(a) if self.rng.random_bool(0.5) => self.bin(BinOp::And, a, atom),
                Some(a) => {
                    let f = self.push(Inst::ConstBool(false), Type::Bool);
                    self.push(Inst::Select(a, atom, f), Type::Bool)
                }
            });
        }
        acc.unwrap()
    }
    fn boolean(&mut self, depth: u32) -> Value {
        if depth == 0 || self.rng.random_bool(0.1) {
            let b = self.rng.random_bool(0.5);
            return self.push(Inst::ConstBool(b), Type::Bool);
        }
        let d = depth - 1;
        match self.rng.random_range(0..10) {
            0..=3 => {
                let c = CMPS[self.rng.random_range(0..6)];
                let (a, b) = (self.int(d), self.int(d));
                self.bin(BinOp::ICmp(c), a, b)
            }
            4 => {
                let c = CMPS[self.rng.random_range(0..6)];
                let (a, b) = (self.float(d), self.float(d));
                self.bin(BinOp::FCmp(c), a, b)
            }
            5 | 6 => {
                let op =
                    [BinOp::And, BinOp::Or, BinOp::Xor, BinOp::BEq][self.rng.random_range(0..4)];
                let (a, b) = (self.boolean(d), self.boolean(d));
                self.bin(op, a, b)
            }
            7 => {
                let a = self.boolean(d);
                self.push(Inst::Unary(UnOp::Not, a), Type::Bool)
            }
            _ => {
                let (c, a, b) = (self.boolean(d), self.boolean(d), self.boolean(d));
                self.push(Inst::Select(c, a, b), Type::Bool)
            }
        }
    }
}

fn program(f: Function, n0: i32, n1: i32) -> Program {
    Program {
        name: "random".into(),
        span: Span::default(),
        params: vec![
            ParamInfo {
                name: "p".into(),
                ty: Type::I32,
                span: Span::default(),
            },
            ParamInfo {
                name: "x".into(),
                ty: Type::F32,
                span: Span::default(),
            },
        ],
        tensors: vec![
            TensorInfo {
                name: "t".into(),
                elem: ElemType::I32,
                dims: vec![DimSpec::Fixed(n0 as usize)],
                span: Span::default(),
            },
            TensorInfo {
                name: "u".into(),
                elem: ElemType::F32,
                dims: vec![DimSpec::Fixed(2), DimSpec::Fixed(n1 as usize)],
                span: Span::default(),
            },
        ],
        mask: Some(f),
        score: None,
    }
}

fn bindings(rng: &mut StdRng, n0: i32, n1: i32) -> Bindings {
    let mut t: Vec<i32> = (0..n0).map(|_| rng.random_range(-10..30)).collect();
    if rng.random_bool(0.5) {
        t.sort();
    }
    let u: Vec<f32> = (0..2 * n1)
        .map(|_| match rng.random_range(0..10) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            _ => rng.random_range(-50.0..50.0),
        })
        .collect();
    let p = match rng.random_range(0..4) {
        0 => i32::MAX,
        _ => rng.random_range(-10..40),
    };
    Bindings {
        params: vec![Scalar::I32(p), Scalar::F32(rng.random_range(-5.0..5.0))],
        tensors: vec![
            BoundTensor {
                dims: vec![n0 as usize],
                data: TensorData::I32(t),
            },
            BoundTensor {
                dims: vec![2, n1 as usize],
                data: TensorData::F32(u),
            },
        ],
    }
}

fn random_shape(rng: &mut StdRng) -> (Shape, usize, usize) {
    let h = rng.random_range(1..=3);
    let s = Shape {
        b: rng.random_range(1..=2),
        hq: h,
        hkv: h,
        lq: rng.random_range(1..=40),
        lkv: rng.random_range(1..=40),
        d: 8,
        dv: 8,
    };
    (s, rng.random_range(1..=9), rng.random_range(1..=9))
}

#[test]
fn random_masks_are_sound() {
    let mut rng = StdRng::seed_from_u64(0x5eed_b10c);
    let cases: usize = std::env::var("BLOCKS_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut settled = 0usize;
    for case in 0..cases {
        let (n0, n1) = (rng.random_range(1..20), rng.random_range(1..20));
        let mut g = Gen {
            f: Function::new(FnKind::Mask),
            rng: StdRng::seed_from_u64(case as u64),
            n0,
            n1,
        };
        let depth = g.rng.random_range(1..6);
        g.f.ret = g.boolean(depth);
        let p = program(g.f, n0, n1);
        verify_program(&p).expect("generator builds valid IR");
        for _ in 0..3 {
            let bind = bindings(&mut rng, n0, n1);
            let (s, qb, kb) = random_shape(&mut rng);
            match precision(&p, &s, qb, kb, &bind) {
                Ok(r) => settled += r.total_blocks - r.partial_found,
                Err(e) => panic!(
                    "case {case}: {e}\n{}",
                    attnc_compiler::ir::write_program(&p)
                ),
            }
        }
    }
    // The analysis must settle a good share of blocks, or this test proves little.
    assert!(settled > cases, "only {settled} blocks settled");
}

#[test]
fn random_linear_conjunctions_are_sound_and_closed_form() {
    let mut rng = StdRng::seed_from_u64(42);
    for case in 0..300 {
        let mut g = Gen {
            f: Function::new(FnKind::Mask),
            rng: StdRng::seed_from_u64(1000 + case),
            n0: 1,
            n1: 1,
        };
        let n = g.rng.random_range(1..4);
        let mut acc: Option<Value> = None;
        for _ in 0..n {
            // a*q + b*kv - k  <cmp>  a'*q + b'*kv - k' (+ p)
            let l = g.linear_side();
            let r = g.linear_side();
            let r = if g.rng.random_bool(0.3) {
                let p = g.push(Inst::Param(ParamId(0)), Type::I32);
                g.bin(BinOp::IAdd, r, p)
            } else {
                r
            };
            let c = [Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge][g.rng.random_range(0..5)];
            let mut atom = g.bin(BinOp::ICmp(c), l, r);
            if g.rng.random_bool(0.2) && c != Cmp::Eq {
                atom = g.push(Inst::Unary(UnOp::Not, atom), Type::Bool);
            }
            acc = Some(match acc {
                Some(a) => g.bin(BinOp::And, a, atom),
                None => atom,
            });
        }
        g.f.ret = acc.unwrap();
        let p = program(g.f, 1, 1);
        verify_program(&p).unwrap();
        assert!(
            analyze(&p).closed_form.is_some(),
            "case {case}: no closed form"
        );
        for _ in 0..4 {
            let bind = bindings(&mut rng, 1, 1);
            let (mut s, qb, kb) = random_shape(&mut rng);
            s.lq = rng.random_range(1..=60);
            s.lkv = rng.random_range(1..=60);
            if let Err(e) = precision(&p, &s, qb, kb, &bind) {
                panic!(
                    "case {case}: {e}\n{}",
                    attnc_compiler::ir::write_program(&p)
                );
            }
        }
    }
}

/// `Implied` (the closed form of a mask's linear conjuncts) over-approximates the mask:
/// on random masks `linear & random & linear ...` (random parts from every IR op, some
/// with tensors, params, b and h), wherever the interpreter says the mask is true, the
/// implied bounds' block map (`ClosedForm::block_map`) has a non-empty block, and at
/// every point where the mask is true every implied constraint holds. Also on the fully
/// random masks of `random_masks_are_sound`, where a linear conjunct occurs by chance.
#[test]
fn implied_linear_conjuncts_are_sound() {
    use attnc_compiler::analysis::blockmap::BlockKind;
    use attnc_compiler::analysis::classify::brute_force_maps;
    use attnc_compiler::analysis::linear::ClosedForm;
    let mut rng = StdRng::seed_from_u64(0x1a7e_d00d);
    let (mut derived, mut skipped_blocks, mut checked_blocks) = (0usize, 0usize, 0usize);
    for case in 0..400u64 {
        let (n0, n1) = (rng.random_range(1..20), rng.random_range(1..20));
        let mut g = Gen {
            f: Function::new(FnKind::Mask),
            rng: StdRng::seed_from_u64(77_000 + case),
            n0,
            n1,
        };
        g.f.ret = g.mixed_conjunction(case % 5 == 4);
        let p = program(g.f, n0, n1);
        verify_program(&p).expect("generator builds valid IR");
        let Some(imp) = Plan::new(&p).implied().cloned() else {
            continue;
        };
        derived += 1;
        assert_eq!(
            Some(&imp.closed_form),
            Plan::new(&imp.program).mask().closed_form.as_ref(),
            "case {case}"
        );
        for _ in 0..3 {
            let bind = bindings(&mut rng, n0, n1);
            let (s, qb, kb) = random_shape(&mut rng);
            let Some(bounds) = imp.bounds(&s, &bind).expect("params bound") else {
                continue;
            };
            let over = ClosedForm::block_map(&bounds, s.lq, s.lkv, qb, kb);
            let exact = brute_force_maps(&p, &s, qb, kb, &bind).expect("interpreter");
            for b in 0..s.b {
                for h in 0..s.hq {
                    let e = exact.get(b, h);
                    for i in 0..e.n_q_blocks() {
                        for j in 0..e.n_kv_blocks() {
                            checked_blocks += 1;
                            let skip = over.kind(i, j) == BlockKind::Empty;
                            skipped_blocks += skip as usize;
                            assert!(
                                !skip || e.kind(i, j) == BlockKind::Empty,
                                "case {case}: block ({i}, {j}) of (b={b}, h={h}) skipped but the mask is {:?} there\n{}\nimplied: {}",
                                e.kind(i, j),
                                attnc_compiler::ir::write_program(&p),
                                imp.closed_form
                            );
                        }
                    }
                }
            }
            // pointwise: mask true => every implied constraint holds
            let mut scratch = Vec::new();
            for q in 0..s.lq as i32 {
                for kv in 0..s.lkv as i32 {
                    let args = attnc_compiler::interp::Args {
                        s: 0.0,
                        b: 0,
                        h: 0,
                        q,
                        kv,
                    };
                    let m = attnc_compiler::interp::eval(
                        p.mask.as_ref().unwrap(),
                        &p,
                        args,
                        &bind,
                        &mut scratch,
                    )
                    .expect("interpreter")
                    .as_bool();
                    if m {
                        for bd in &bounds {
                            let v = bd.a_q * q as i128 + bd.a_kv * kv as i128 + bd.k;
                            assert!(
                                v >= 0,
                                "case {case}: mask true at ({q}, {kv}) but {bd:?} < 0"
                            );
                        }
                    }
                }
            }
        }
    }
    // the test must exercise derivations and actual skips
    assert!(derived > 100, "only {derived} masks had linear conjuncts");
    assert!(
        skipped_blocks > checked_blocks / 20,
        "only {skipped_blocks} of {checked_blocks} blocks skipped"
    );
}

/// `split_conjuncts` (what `PtxOptions::mask_kinds` evaluates one side of) on the random
/// conjunctions of `implied_linear_conjuncts_are_sound`: where it splits a mask into
/// `(L, N)`, both are valid programs, `L` has a closed form (its conjuncts are linear)
/// and `N` none of its own linear conjuncts, and at every point of random shapes (b, h,
/// q, kv, random params and tensor data) `mask == L && N` exactly. It splits exactly the
/// masks with both linear and other conjuncts: where it does not, the mask is either
/// fully linear (a closed form) or has no linear conjunct (no implied bounds).
#[test]
fn split_conjuncts_are_exact_on_random_masks() {
    use attnc_compiler::analysis::linear::split_conjuncts;
    use attnc_compiler::interp::{Args, eval};
    let mut rng = StdRng::seed_from_u64(0x5b17_c0de);
    let (mut split, mut points) = (0usize, 0usize);
    for case in 0..300u64 {
        let (n0, n1) = (rng.random_range(1..20), rng.random_range(1..20));
        let mut g = Gen {
            f: Function::new(FnKind::Mask),
            rng: StdRng::seed_from_u64(91_000 + case),
            n0,
            n1,
        };
        g.f.ret = g.mixed_conjunction(false);
        let p = program(g.f, n0, n1);
        verify_program(&p).expect("generator builds valid IR");
        let mask = p.mask.as_ref().unwrap();
        let plan = Plan::new(&p);
        let Some((l, n)) = split_conjuncts(mask) else {
            assert!(
                plan.implied().is_none() || plan.mask().closed_form.is_some(),
                "case {case}: linear and other conjuncts but no split\n{}",
                attnc_compiler::ir::write_program(&p)
            );
            continue;
        };
        split += 1;
        let with = |m: &Function| Program {
            mask: Some(m.clone()),
            ..p.clone()
        };
        let (pl, pn) = (with(&l), with(&n));
        verify_program(&pl).expect("L is a valid mask");
        verify_program(&pn).expect("N is a valid mask");
        assert!(
            Plan::new(&pl).mask().closed_form.is_some(),
            "case {case}: L has no closed form\n{}",
            attnc_compiler::ir::write_program(&pl)
        );
        assert!(
            split_conjuncts(&l).is_none() && split_conjuncts(&n).is_none(),
            "case {case}: a side splits again"
        );
        for _ in 0..3 {
            let bind = bindings(&mut rng, n0, n1);
            let (s, _, _) = random_shape(&mut rng);
            let mut scratch = Vec::new();
            let mut at = |f: &Function, args: Args| {
                eval(f, &p, args, &bind, &mut scratch)
                    .expect("interpreter")
                    .as_bool()
            };
            for b in 0..s.b as i32 {
                for h in 0..s.hq as i32 {
                    for q in 0..s.lq as i32 {
                        for kv in 0..s.lkv as i32 {
                            let args = Args {
                                s: 0.0,
                                b,
                                h,
                                q,
                                kv,
                            };
                            let (m, lv, nv) = (at(mask, args), at(&l, args), at(&n, args));
                            points += 1;
                            assert_eq!(
                                m,
                                lv && nv,
                                "case {case} at (b={b}, h={h}, q={q}, kv={kv}): mask {m}, L {lv}, N {nv}\n{}",
                                attnc_compiler::ir::write_program(&p)
                            );
                        }
                    }
                }
            }
        }
    }
    println!("{split} of 300 masks split, {points} points compared");
    // the test must see many splits
    assert!(split > 100, "only {split} of 300 masks split");
    assert!(points > 200_000, "only {points} points compared");
}
