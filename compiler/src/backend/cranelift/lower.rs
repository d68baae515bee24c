//! Translation of one IR [`Function`] (mask or score) into Cranelift instructions, split
//! by loop level so that the kernel generator can hoist work out of its tile loops.
//!
//! In: a verified [`Function`], its [`Program`], and an [`Env`] giving the Cranelift values
//! of the arguments, params pointer and captured-tensor descriptors. Out: Cranelift values
//! emitted through [`Gen`]; the function's result via [`Lowering::ret`].
//!
//! Every value gets a [`Level`]: `Inv` (depends only on b, h, params, constants: computed
//! once per work item), `Q` (depends on the query position only: precomputed per tile row
//! into `Tile::qslots`), `Kv` (key position only: computed once per key column), `Both`
//! (computed per element). Loads in checked mode are always `Both`, so that a load runs
//! exactly where the source would perform it (a score's loads only where the mask holds).
//!
//! Scalar semantics follow `ir::scalar` exactly: wrapping i32 arithmetic, floor
//! division/remainder with `x / 0 = 0` and `MIN / -1 = MIN`, saturating `F2I`, IEEE
//! minNum/maxNum, and libm calls (the same Rust functions the interpreter uses) for
//! `exp exp2 log log2 tanh pow`. Bools are `i8` 0/1.
//!
//! Per-element values in fast mode are 4-lane vectors ([`Lowering::vemit`]); there, in a
//! score, `exp`, `exp2` and `tanh` are inline polynomial / rational approximations (a few
//! ulp, using `fma`, which Cranelift lowers to a library call on CPUs without FMA, so the
//! CLIF does not depend on the host); a mask's run per lane through libm like every other
//! level's (its comparisons are the oracle's); `log log2 pow` and integer division run per
//! lane.

use super::CpuError;
use super::abi::off;
use super::builder::Gen;
use crate::ir::{Arg, BinOp, Cmp, FnKind, Function, Inst, Program, Type, UnOp, Value};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value as CValue, types};

/// How often a value must be recomputed inside the kernel's loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Inv = 0,
    Q = 1,
    Kv = 2,
    Both = 3,
}

impl Level {
    fn join(self, o: Level) -> Level {
        match (self as u8) | (o as u8) {
            0 => Level::Inv,
            1 => Level::Q,
            2 => Level::Kv,
            _ => Level::Both,
        }
    }
}

/// The Cranelift values a function reads besides its own instructions.
pub struct Env {
    pub b: CValue,
    pub h: CValue,
    pub q: Option<CValue>,
    pub kv: Option<CValue>,
    pub s: Option<CValue>,
    pub params: CValue,
    pub tensors: Vec<TensorVals>,
    /// The tile pointer (checked mode writes its error record there).
    pub tile: CValue,
    pub checked: bool,
}

/// One captured tensor's descriptor, loaded once per work item.
pub struct TensorVals {
    pub ptr: CValue,
    pub dims: Vec<CValue>,
    pub cdims: Vec<CValue>,
    pub cmax: Vec<CValue>,
}

impl TensorVals {
    /// The descriptors of `program`'s tensors, from the array of abi `TensorDesc`s at
    /// `tdescs`: pointer, dims, clamp dims and their maxima (the forward and backward
    /// element kernels' prologue).
    pub fn load_all(g: &mut Gen, program: &Program, tdescs: CValue) -> Vec<TensorVals> {
        let i64t = types::I64;
        let mut tensors = Vec::new();
        for (t, info) in program.tensors.iter().enumerate() {
            let base = t as i32 * off::TD_SIZE;
            let ptr = g.ld(i64t, tdescs, base + off::TD_PTR);
            let mut tv = TensorVals {
                ptr,
                dims: vec![],
                cdims: vec![],
                cmax: vec![],
            };
            for k in 0..info.dims.len() as i32 {
                tv.dims
                    .push(g.ld(i64t, tdescs, base + off::TD_DIMS + 8 * k));
                let cd = g.ld(i64t, tdescs, base + off::TD_CDIMS + 8 * k);
                tv.cdims.push(cd);
                tv.cmax.push(g.b.ins().iadd_imm_s(cd, -1));
            }
            tensors.push(tv);
        }
        tensors
    }
}

/// Symbols of the math functions generated code may call.
pub const MATH: [(&str, *const u8); 6] = [
    ("attnc_expf", attnc_expf as *const u8),
    ("attnc_exp2f", attnc_exp2f as *const u8),
    ("attnc_logf", attnc_logf as *const u8),
    ("attnc_log2f", attnc_log2f as *const u8),
    ("attnc_tanhf", attnc_tanhf as *const u8),
    ("attnc_powf", attnc_powf as *const u8),
];

extern "C" fn attnc_expf(x: f32) -> f32 {
    x.exp()
}
extern "C" fn attnc_exp2f(x: f32) -> f32 {
    x.exp2()
}
extern "C" fn attnc_logf(x: f32) -> f32 {
    x.ln()
}
extern "C" fn attnc_log2f(x: f32) -> f32 {
    x.log2()
}
extern "C" fn attnc_tanhf(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn attnc_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// The lowering state of one function inside one kernel.
pub struct Lowering<'p> {
    pub f: &'p Function,
    p: &'p Program,
    pub level: Vec<Level>,
    live: Vec<bool>,
    /// Slot in `Tile::qslots` of each `Q`-level value that the per-element code needs.
    pub slot: Vec<Option<u32>>,
    vals: Vec<Option<CValue>>,
    /// Per-element values as 4-lane vectors at a vector site (see [`Lowering::vemit`]).
    vvals: Vec<Option<CValue>>,
    /// The values the live set starts from (the return value, and outputs).
    roots: Vec<Value>,
    /// The first slot of a value read from a table at vector sites instead of computed
    /// ([`Lowering::tabulate`], `VEnv::table`).
    table: Vec<Option<u32>>,
    /// `FnKind` tag of checked-mode error sites.
    site_tag: i64,
}

impl<'p> Lowering<'p> {
    /// Classifies `f`'s values; its slots are numbered from `first_slot`.
    pub fn new(f: &'p Function, p: &'p Program, checked: bool, first_slot: u32) -> Self {
        Self::with_outputs(f, p, checked, first_slot, &[])
    }

    /// [`Lowering::new`] for a function with outputs besides its return value (the
    /// derivative pass's `ScoreGrad`): what contributes to any of `outputs` is live, and
    /// [`Lowering::value`] reads them once emitted.
    pub fn with_outputs(
        f: &'p Function,
        p: &'p Program,
        checked: bool,
        first_slot: u32,
        outputs: &[Value],
    ) -> Self {
        let mut roots = outputs.to_vec();
        roots.push(f.ret);
        Self::with_roots(f, p, checked, first_slot, roots)
    }

    /// A lowering of the values `roots` need, and of no others (not even the return
    /// value unless it is one of them): `diag::Diagonals`' lowering of the values it
    /// tabulates.
    pub fn with_roots(
        f: &'p Function,
        p: &'p Program,
        checked: bool,
        first_slot: u32,
        roots: Vec<Value>,
    ) -> Self {
        let n = f.insts.len();
        let live = f.live_from(&roots);
        let mut level = vec![Level::Inv; n];
        for (i, inst) in f.insts.iter().enumerate() {
            level[i] = match inst {
                Inst::Arg(Arg::S) => Level::Both,
                Inst::Arg(Arg::Q) => Level::Q,
                Inst::Arg(Arg::Kv) => Level::Kv,
                Inst::Load { .. } if checked => Level::Both,
                _ => inst
                    .operands()
                    .iter()
                    .fold(Level::Inv, |l, v| l.join(level[v.index()])),
            };
        }
        // Q-level values read by per-element code (or returned) get a slot.
        let mut needed = vec![false; n];
        for (i, inst) in f.insts.iter().enumerate() {
            if live[i] && level[i] == Level::Both {
                for v in inst.operands() {
                    needed[v.index()] = true;
                }
            }
        }
        for r in &roots {
            needed[r.index()] = true;
        }
        let mut slot = vec![None; n];
        let mut next = first_slot;
        for i in 0..n {
            if live[i] && needed[i] && level[i] == Level::Q && f.insts[i] != Inst::Arg(Arg::Q) {
                slot[i] = Some(next);
                next += 1;
            }
        }
        let site_tag = match f.kind {
            FnKind::Mask => 0,
            FnKind::Score => 1,
        };
        Lowering {
            f,
            p,
            level,
            live,
            slot,
            vals: vec![None; n],
            vvals: vec![None; n],
            roots,
            table: vec![None; n],
            site_tag,
        }
    }

    /// Reads each value `v` of `tabled` at vector sites from its table (first slot
    /// `slot`; `VEnv::table` says where the site's lanes sit in it) instead of computing
    /// it, and drops from the live set what only those values needed. Fast mode's vector
    /// sites only: the scalar sites (checked mode) still compute everything.
    pub fn tabulate(&mut self, tabled: &[(Value, u32)]) {
        for (v, slot) in tabled {
            self.table[v.index()] = Some(*slot);
        }
        let table = &self.table;
        self.live = self
            .f
            .live_from_until(&self.roots, |v| table[v.index()].is_some());
    }

    /// Whether some value is read from a table ([`Lowering::tabulate`]).
    pub fn has_table(&self) -> bool {
        self.table.iter().any(Option::is_some)
    }

    pub fn n_slots(&self) -> u32 {
        self.slot.iter().flatten().count() as u32
    }

    /// The Cranelift value of an emitted (live) IR value.
    pub fn value(&self, v: Value) -> CValue {
        self.v(v)
    }

    pub fn ret(&self) -> CValue {
        self.vals[self.f.ret.index()].expect("return value emitted")
    }

    pub fn ret_level(&self) -> Level {
        self.level[self.f.ret.index()]
    }

    /// Drops every value above `Inv` (a new loop site starts).
    pub fn forget(&mut self) {
        for (v, l) in self.vals.iter_mut().zip(&self.level) {
            if *l != Level::Inv {
                *v = None;
            }
        }
    }

    /// Emits the live values of level `lvl` (operands of lower levels must already exist).
    pub fn emit(&mut self, g: &mut Gen, env: &Env, lvl: Level) -> Result<(), CpuError> {
        for i in 0..self.f.insts.len() {
            if self.live[i] && self.level[i] == lvl && self.vals[i].is_none() {
                let v = self.emit_inst(g, env, i)?;
                self.vals[i] = Some(v);
            }
        }
        Ok(())
    }

    /// Emits the `Q`-level values that need slots and stores them at row `i`.
    pub fn store_slots(
        &mut self,
        g: &mut Gen,
        env: &Env,
        base: CValue,
        bq: i64,
        i: CValue,
    ) -> Result<(), CpuError> {
        self.emit(g, env, Level::Q)?;
        for (k, s) in self.slot.iter().enumerate() {
            if let Some(s) = s {
                let addr = slot_addr(g, base, *s, bq, i);
                let v = self.vals[k].expect("slot value emitted");
                let v = to_word(g, v, self.f.types[k]);
                g.b.ins().store(MemFlagsData::trusted(), v, addr, 0);
            }
        }
        Ok(())
    }

    /// Makes the `Q`-level values available at row `i` of a per-element site: `q` itself
    /// from `env`, the others from their slots.
    pub fn load_slots(&mut self, g: &mut Gen, env: &Env, base: CValue, bq: i64, i: CValue) {
        for k in 0..self.f.insts.len() {
            if self.level[k] != Level::Q || !self.live[k] {
                continue;
            }
            if self.f.insts[k] == Inst::Arg(Arg::Q) {
                self.vals[k] = env.q;
            } else if let Some(s) = self.slot[k] {
                let addr = slot_addr(g, base, s, bq, i);
                let w = g.b.ins().load(types::I32, MemFlagsData::trusted(), addr, 0);
                self.vals[k] = Some(from_word(g, w, self.f.types[k]));
            }
        }
    }

    fn v(&self, v: Value) -> CValue {
        self.vals[v.index()].expect("operand emitted before use")
    }

    fn emit_inst(&mut self, g: &mut Gen, env: &Env, i: usize) -> Result<CValue, CpuError> {
        let ty = self.f.types[i];
        let ins = &self.f.insts[i];
        Ok(match ins {
            Inst::Arg(a) => match a {
                Arg::S => env.s.expect("s at a per-element site"),
                Arg::B => env.b,
                Arg::H => env.h,
                Arg::Q => env.q.expect("q at a per-row site"),
                Arg::Kv => env.kv.expect("kv at a per-column site"),
            },
            Inst::ConstBool(b) => g.b.ins().iconst(types::I8, *b as i64),
            Inst::ConstI32(x) => g.b.ins().iconst(types::I32, *x as i64),
            Inst::ConstF32(bits) => g.b.ins().f32const(f32::from_bits(*bits)),
            Inst::Param(id) => {
                let t = cl_type(ty);
                g.b.ins().load(
                    t,
                    MemFlagsData::trusted().with_readonly(),
                    env.params,
                    (id.0 * 4) as i32,
                )
            }
            Inst::Unary(op, a) => {
                let a = self.v(*a);
                self.unary(g, *op, a)
            }
            Inst::Binary(op, a, b) => {
                let (av, bv) = (self.v(*a), self.v(*b));
                let const_b = match self.f.inst(*b) {
                    Inst::ConstI32(c) => Some(*c),
                    _ => None,
                };
                binary(g, *op, av, bv, const_b, false)
            }
            Inst::Select(c, a, b) => {
                let (c, a, b) = (self.v(*c), self.v(*a), self.v(*b));
                g.b.ins().select(c, a, b)
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let idx: Vec<CValue> = indices.iter().map(|v| self.v(*v)).collect();
                let guard_const = matches!(self.f.inst(*guard), Inst::ConstBool(true));
                let guard = self.v(*guard);
                let elem = cl_type(self.p.tensors[tensor.0 as usize].elem.read_type());
                let tv = &env.tensors[tensor.0 as usize];
                let idx64: Vec<CValue> = idx
                    .iter()
                    .map(|x| g.b.ins().sextend(types::I64, *x))
                    .collect();
                if env.checked {
                    // in range iff 0 <= idx < dim, i.e. idx <u dim
                    let mut ok = g.b.ins().iconst(types::I8, 1);
                    for (x, d) in idx64.iter().zip(&tv.dims) {
                        let c = g.b.ins().icmp(IntCC::UnsignedLessThan, *x, *d);
                        ok = g.b.ins().band(ok, c);
                    }
                    let bad = g.b.ins().bxor_imm_u(ok, 1);
                    let bad = if guard_const {
                        bad
                    } else {
                        g.b.ins().band(bad, guard)
                    };
                    let err = g.b.create_block();
                    let cont = g.b.create_block();
                    g.b.ins().brif(bad, err, &[], cont, &[]);
                    g.b.switch_to_block(err);
                    let site =
                        g.b.ins()
                            .iconst(types::I64, (self.site_tag << 32) | i as i64);
                    g.b.ins()
                        .store(MemFlagsData::trusted(), site, env.tile, off::TILE_ERR_SITE);
                    for (k, x) in idx64.iter().enumerate() {
                        g.b.ins().store(
                            MemFlagsData::trusted(),
                            *x,
                            env.tile,
                            off::TILE_ERR_IDX + 8 * k as i32,
                        );
                    }
                    let one = g.b.ins().iconst(types::I32, 1);
                    g.b.ins().return_(&[one]);
                    g.b.switch_to_block(cont);
                }
                // Fast (and, after the check, checked) path: clamp into range; never reads
                // outside the tensor.
                let flat = flat_index(g, &idx64, false, &tv.cdims, &tv.cmax, None);
                let addr = element_address(g, tv.ptr, flat);
                let val =
                    g.b.ins()
                        .load(elem, MemFlagsData::trusted().with_readonly(), addr, 0);
                if guard_const {
                    val
                } else {
                    let z = if elem == types::F32 {
                        g.b.ins().f32const(0.0)
                    } else {
                        g.b.ins().iconst(elem, 0)
                    };
                    g.b.ins().select(guard, val, z)
                }
            }
        })
    }

    fn unary(&mut self, g: &mut Gen, op: UnOp, a: CValue) -> CValue {
        let call = |g: &mut Gen, name: &'static str| g.call_f32(name, &[a]);
        match op {
            UnOp::INeg => g.b.ins().ineg(a),
            UnOp::IAbs => g.b.ins().iabs(a),
            UnOp::FNeg => g.b.ins().fneg(a),
            UnOp::FAbs => g.b.ins().fabs(a),
            UnOp::Not => g.b.ins().bxor_imm_u(a, 1),
            UnOp::Exp => call(g, "attnc_expf"),
            UnOp::Exp2 => call(g, "attnc_exp2f"),
            UnOp::Log => call(g, "attnc_logf"),
            UnOp::Log2 => call(g, "attnc_log2f"),
            UnOp::Tanh => call(g, "attnc_tanhf"),
            UnOp::Sqrt => g.b.ins().sqrt(a),
            UnOp::Floor => g.b.ins().floor(a),
            UnOp::Ceil => g.b.ins().ceil(a),
            UnOp::I2F => g.b.ins().fcvt_from_sint(types::F32, a),
            UnOp::F2I => g.b.ins().fcvt_to_sint_sat(types::I32, a),
            UnOp::B2I => g.b.ins().uextend(types::I32, a),
        }
    }
}

fn ins<'b, 'a>(g: &'b mut Gen<'a>) -> cranelift_frontend::FuncInstBuilder<'b, 'a> {
    g.b.ins()
}

/// `op` on scalars, or with `vector` on the f32x4/i32x4/bool lanes of the vector path
/// (integer division, remainder and `pow` lane by lane).
fn binary(
    g: &mut Gen,
    op: BinOp,
    a: CValue,
    b: CValue,
    const_b: Option<i32>,
    vector: bool,
) -> CValue {
    match op {
        BinOp::IAdd => ins(g).iadd(a, b),
        BinOp::ISub => ins(g).isub(a, b),
        BinOp::IMul => ins(g).imul(a, b),
        BinOp::IDiv | BinOp::IRem if vector => lanewise(g, &[a, b], types::I32X4, |g, x| {
            floor_divrem(g, op == BinOp::IDiv, x[0], x[1], const_b)
        }),
        BinOp::IDiv | BinOp::IRem => floor_divrem(g, op == BinOp::IDiv, a, b, const_b),
        BinOp::IMin => ins(g).smin(a, b),
        BinOp::IMax => ins(g).smax(a, b),
        BinOp::FAdd => ins(g).fadd(a, b),
        BinOp::FSub => ins(g).fsub(a, b),
        BinOp::FMul => ins(g).fmul(a, b),
        BinOp::FDiv => ins(g).fdiv(a, b),
        BinOp::FMin | BinOp::FMax => {
            // IEEE minNum/maxNum (Rust's f32::min/max): a NaN operand yields the other.
            let m = if op == BinOp::FMin {
                ins(g).fmin(a, b)
            } else {
                ins(g).fmax(a, b)
            };
            let a_nan = ins(g).fcmp(FloatCC::Unordered, a, a);
            let b_nan = ins(g).fcmp(FloatCC::Unordered, b, b);
            let select = |g: &mut Gen, c, x, y| {
                if vector {
                    vselect(g, c, x, y)
                } else {
                    ins(g).select(c, x, y)
                }
            };
            let r = select(g, b_nan, a, m);
            select(g, a_nan, b, r)
        }
        BinOp::FPow if vector => {
            lanewise(g, &[a, b], types::F32X4, |g, x| g.call_f32("attnc_powf", x))
        }
        BinOp::FPow => g.call_f32("attnc_powf", &[a, b]),
        BinOp::ICmp(c) => ins(g).icmp(int_cc(c), a, b),
        BinOp::FCmp(c) => ins(g).fcmp(float_cc(c), a, b),
        BinOp::And => ins(g).band(a, b),
        BinOp::Or => ins(g).bor(a, b),
        BinOp::Xor => ins(g).bxor(a, b),
        BinOp::BEq => ins(g).icmp(IntCC::Equal, a, b),
        BinOp::IAnd => ins(g).band(a, b),
        BinOp::IOr => ins(g).bor(a, b),
        BinOp::IXor => ins(g).bxor(a, b),
        BinOp::IShl | BinOp::IShr => shift(g, op == BinOp::IShl, a, b, const_b, vector),
    }
}

/// `a << b` / `a >> b` (arithmetic) with the IR's conventions: a shift amount outside
/// 0..32 gives 0 (left) or the sign (right) — Cranelift's shifts take the amount modulo
/// 32, so it is tested; a constant amount in range shifts vectors by the scalar, other
/// vector amounts go lane by lane.
fn shift(
    g: &mut Gen,
    left: bool,
    a: CValue,
    b: CValue,
    const_b: Option<i32>,
    vector: bool,
) -> CValue {
    if let Some(n) = const_b.filter(|n| (0..32).contains(n)) {
        let k = g.b.ins().iconst(types::I32, n as i64);
        return if left {
            g.b.ins().ishl(a, k)
        } else {
            g.b.ins().sshr(a, k)
        };
    }
    if vector {
        return lanewise(g, &[a, b], types::I32X4, |g, x| {
            shift(g, left, x[0], x[1], const_b, false)
        });
    }
    let in_range = g.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, b, 32);
    let (shifted, outside) = if left {
        (g.b.ins().ishl(a, b), g.b.ins().iconst(types::I32, 0))
    } else {
        (g.b.ins().sshr(a, b), g.b.ins().sshr_imm_u(a, 31))
    };
    g.b.ins().select(in_range, shifted, outside)
}

/// Floor division / remainder with the IR's conventions, never trapping.
fn floor_divrem(g: &mut Gen, div: bool, a: CValue, b: CValue, const_b: Option<i32>) -> CValue {
    let safe_const = matches!(const_b, Some(c) if c != 0 && c != -1);
    let (bs, bz) = if safe_const {
        (b, None)
    } else {
        // b == 0 -> divide by 1 and select 0 at the end; MIN / -1 -> divide by 1 (= MIN, rem 0)
        let bz = g.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let amin = g.b.ins().icmp_imm_s(IntCC::Equal, a, i32::MIN as i64);
        let bm1 = g.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let ovf = g.b.ins().band(amin, bm1);
        let bad = g.b.ins().bor(bz, ovf);
        let one = g.b.ins().iconst(types::I32, 1);
        (g.b.ins().select(bad, one, b), Some(bz))
    };
    let q = g.b.ins().sdiv(a, bs);
    let qb = g.b.ins().imul(q, bs);
    let r = g.b.ins().isub(a, qb);
    // adjust when r != 0 and sign(r) != sign(b)
    let rnz = g.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
    let x = g.b.ins().bxor(r, bs);
    let neg = g.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
    let adj = g.b.ins().band(rnz, neg);
    let res = if div {
        let adj32 = g.b.ins().uextend(types::I32, adj);
        g.b.ins().isub(q, adj32)
    } else {
        let rb = g.b.ins().iadd(r, bs);
        g.b.ins().select(adj, rb, r)
    };
    match bz {
        Some(bz) => {
            let zero = g.b.ins().iconst(types::I32, 0);
            g.b.ins().select(bz, zero, res)
        }
        None => res,
    }
}

fn int_cc(c: Cmp) -> IntCC {
    match c {
        Cmp::Eq => IntCC::Equal,
        Cmp::Ne => IntCC::NotEqual,
        Cmp::Lt => IntCC::SignedLessThan,
        Cmp::Le => IntCC::SignedLessThanOrEqual,
        Cmp::Gt => IntCC::SignedGreaterThan,
        Cmp::Ge => IntCC::SignedGreaterThanOrEqual,
    }
}

/// Rust's float comparisons: ordered, except `!=` (true when either is NaN).
fn float_cc(c: Cmp) -> FloatCC {
    match c {
        Cmp::Eq => FloatCC::Equal,
        Cmp::Ne => FloatCC::NotEqual,
        Cmp::Lt => FloatCC::LessThan,
        Cmp::Le => FloatCC::LessThanOrEqual,
        Cmp::Gt => FloatCC::GreaterThan,
        Cmp::Ge => FloatCC::GreaterThanOrEqual,
    }
}

pub fn cl_type(t: Type) -> cranelift_codegen::ir::Type {
    match t {
        Type::Bool => types::I8,
        Type::I32 => types::I32,
        Type::F32 => types::F32,
    }
}

pub fn slot_addr(g: &mut Gen, base: CValue, slot: u32, bq: i64, i: CValue) -> CValue {
    let idx = g.b.ins().iadd_imm_s(i, slot as i64 * bq);
    let byte = g.b.ins().ishl_imm_u(idx, 2);
    g.b.ins().iadd(base, byte)
}

/// A value as a 32-bit word for a slot.
fn to_word(g: &mut Gen, v: CValue, t: Type) -> CValue {
    match t {
        Type::Bool => g.b.ins().uextend(types::I32, v),
        Type::I32 => v,
        Type::F32 => g.b.ins().bitcast(types::I32, MemFlagsData::new(), v),
    }
}

fn from_word(g: &mut Gen, w: CValue, t: Type) -> CValue {
    match t {
        Type::Bool => g.b.ins().ireduce(types::I8, w),
        Type::I32 => w,
        Type::F32 => g.b.ins().bitcast(types::F32, MemFlagsData::new(), w),
    }
}

/// The per-lane arguments of a vector site: 4 consecutive query rows of one key column
/// (the forward), or 4 consecutive key columns of one query row (the backward's element
/// function, after [`Lowering::promote_kv`]: `q` splatted, `kv` per lane).
pub struct VEnv {
    /// `q0 + i + [0, 1, 2, 3]` (i32x4)
    pub q: CValue,
    /// `kv0 + j + [0, 1, 2, 3]` (i32x4) at a row site; `None` at a column site.
    pub kv: Option<CValue>,
    /// `Sᵀ[j][i..i+4]` (f32x4), or `S[i][j..j+4]` at a row site
    pub s: Option<CValue>,
    /// Where the lanes of this site sit in the tables of [`Lowering::tabulate`]: the
    /// slots' base pointer, the slot length (q block) and the i64 index of lane 0 (the
    /// lanes follow it); `None` at a site that reads no table.
    pub table: Option<(CValue, i64, CValue)>,
}

/// The vector type of an IR type: bools are i32 lane masks (0 or -1).
pub fn vec_type(t: Type) -> cranelift_codegen::ir::Type {
    match t {
        Type::F32 => types::F32X4,
        _ => types::I32X4,
    }
}

impl<'p> Lowering<'p> {
    /// Makes every value that depends on the key position per-element (`Both`), for
    /// vector sites over 4 key columns of one row (`VEnv::kv`); `Q`-level values stay
    /// scalar (emitted per row, splatted where a vector needs them).
    pub fn promote_kv(&mut self) {
        for i in 0..self.f.insts.len() {
            self.level[i] = match &self.f.insts[i] {
                Inst::Arg(Arg::Kv) => Level::Both,
                Inst::Arg(_) | Inst::Load { .. } if self.level[i] == Level::Both => Level::Both,
                Inst::Arg(_) => self.level[i],
                inst => inst
                    .operands()
                    .iter()
                    .fold(Level::Inv, |l, v| l.join(self.level[v.index()])),
            };
        }
    }

    /// An emitted value as a vector at the current vector site (splatted if it does not
    /// vary per element).
    pub fn vvalue(&mut self, g: &mut Gen, v: Value) -> CValue {
        self.vop(g, v)
    }

    /// Starts a new vector site.
    pub fn vforget(&mut self) {
        self.vvals.iter_mut().for_each(|v| *v = None);
    }

    /// The `Q`-level values as vectors over 4 rows starting at row `i`.
    pub fn vload_slots(&mut self, g: &mut Gen, venv: &VEnv, base: CValue, bq: i64, i: CValue) {
        for k in 0..self.f.insts.len() {
            if self.level[k] != Level::Q || !self.live[k] {
                continue;
            }
            if self.f.insts[k] == Inst::Arg(Arg::Q) {
                self.vvals[k] = Some(venv.q);
            } else if let Some(s) = self.slot[k] {
                let addr = slot_addr(g, base, s, bq, i);
                let w =
                    g.b.ins()
                        .load(types::I32X4, MemFlagsData::trusted(), addr, 0);
                self.vvals[k] = Some(match self.f.types[k] {
                    Type::Bool => g.b.ins().ineg(w),
                    Type::I32 => w,
                    Type::F32 => g.b.ins().bitcast(types::F32X4, MemFlagsData::new(), w),
                });
            }
        }
    }

    /// Emits the live `Both`-level values as 4-lane vectors (fast mode only: loads are
    /// clamped gathers).
    pub fn vemit(&mut self, g: &mut Gen, env: &Env, venv: &VEnv) -> Result<(), CpuError> {
        for i in 0..self.f.insts.len() {
            if self.live[i] && self.level[i] == Level::Both && self.vvals[i].is_none() {
                let v = self.vemit_inst(g, env, venv, i)?;
                self.vvals[i] = Some(v);
            }
        }
        Ok(())
    }

    /// The result as a vector (splatted if it does not vary per element).
    pub fn vret(&mut self, g: &mut Gen) -> CValue {
        self.vop(g, self.f.ret)
    }

    /// The dimension of a vector-site read whose index runs along the lanes: exactly
    /// the lanes' position (`q` at a column site, `kv` at a row site: consecutive), every
    /// other index the same in every lane (not reading that position or `s`). `None`:
    /// the read goes lane by lane.
    fn lane_run(&self, venv: &VEnv, indices: &[Value]) -> Option<usize> {
        let lane = if venv.kv.is_some() { Arg::Kv } else { Arg::Q };
        let k = indices
            .iter()
            .position(|v| *self.f.inst(*v) == Inst::Arg(lane))?;
        let varies = |v: Value| {
            let mut stack = vec![v];
            let mut seen = vec![false; self.f.len()];
            while let Some(x) = stack.pop() {
                if std::mem::replace(&mut seen[x.index()], true) {
                    continue;
                }
                match self.f.inst(x) {
                    Inst::Arg(a) if *a == lane || *a == Arg::S => return true,
                    i => stack.extend(i.operands()),
                }
            }
            false
        };
        let uniform = indices
            .iter()
            .enumerate()
            .all(|(d, v)| d == k || !varies(*v));
        uniform.then_some(k)
    }

    /// Operand `v` as a vector: per-element values as they are, others splatted.
    fn vop(&mut self, g: &mut Gen, v: Value) -> CValue {
        if let Some(x) = self.vvals[v.index()] {
            return x;
        }
        let x = self.v(v);
        let t = self.f.types[v.index()];
        let r = splat(g, x, t);
        self.vvals[v.index()] = Some(r);
        r
    }

    fn vemit_inst(
        &mut self,
        g: &mut Gen,
        env: &Env,
        venv: &VEnv,
        i: usize,
    ) -> Result<CValue, CpuError> {
        let ty = self.f.types[i];
        if let (Some(slot), Some((base, bq, at))) = (self.table[i], venv.table) {
            // (tables hold vectors as stored: f32 lanes, i32 lanes, or bool lane masks)
            let addr = slot_addr(g, base, slot, bq, at);
            return Ok(g
                .b
                .ins()
                .load(vec_type(ty), MemFlagsData::trusted(), addr, 0));
        }
        let ins = self.f.insts[i].clone();
        Ok(match ins {
            Inst::Arg(Arg::S) => venv.s.expect("s at a score site"),
            Inst::Arg(Arg::Kv) => venv.kv.expect("kv at a row site"),
            Inst::Arg(_)
            | Inst::ConstBool(_)
            | Inst::ConstI32(_)
            | Inst::ConstF32(_)
            | Inst::Param(_) => {
                unreachable!("only per-element values are emitted as vectors")
            }
            Inst::Unary(op, a) => {
                let a = self.vop(g, a);
                vunary(g, op, a, self.f.kind == FnKind::Mask)
            }
            Inst::Binary(op, a, b) => {
                let (av, bv) = (self.vop(g, a), self.vop(g, b));
                let const_b = match self.f.inst(b) {
                    Inst::ConstI32(c) => Some(*c),
                    _ => None,
                };
                binary(g, op, av, bv, const_b, true)
            }
            Inst::Select(c, a, b) => {
                let (c, a, b) = (self.vop(g, c), self.vop(g, a), self.vop(g, b));
                vselect(g, c, a, b)
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let idx: Vec<CValue> = indices.iter().map(|v| self.vop(g, *v)).collect();
                let guard_const = matches!(self.f.inst(guard), Inst::ConstBool(true));
                let gv = self.vop(g, guard);
                let elem = cl_type(self.p.tensors[tensor.0 as usize].elem.read_type());
                let tv = &env.tensors[tensor.0 as usize];
                let (ptr, cdims, cmax) = (tv.ptr, tv.cdims.clone(), tv.cmax.clone());
                // a fast path before the lane-by-lane read, taken when its test holds: a
                // read whose lanes are consecutive along one dimension (one base address
                // and a stride when the lanes are in range), or else one whose lanes all
                // name one element (a relative-position table away from the diagonal:
                // `clamp(q - kv, ..)` the same in every lane; one load, splatted)
                let run = self.lane_run(venv, &indices);
                let (fast, slow, merge) =
                    (g.b.create_block(), g.b.create_block(), g.b.create_block());
                g.b.append_block_param(merge, vec_type(ty));
                let (scalar, ok) = match run {
                    Some(k) => {
                        let zero = g.b.ins().iconst(types::I64, 0);
                        // lane 0's indices (dimension k's from the site's positions,
                        // `q0 + i + [0, 1, 2, 3]` or `kv0 + j + [0, 1, 2, 3]`)
                        let lanes = venv.kv.unwrap_or(venv.q);
                        let scalar: Vec<CValue> = idx
                            .iter()
                            .enumerate()
                            .map(|(d, x)| {
                                let x = g.b.ins().extractlane(if d == k { lanes } else { *x }, 0);
                                g.b.ins().sextend(types::I64, x)
                            })
                            .collect();
                        // lanes l0 .. l0 + 3 of dimension k inside [0, dim - 1]
                        let lo =
                            g.b.ins()
                                .icmp(IntCC::SignedGreaterThanOrEqual, scalar[k], zero);
                        let last = g.b.ins().iadd_imm_s(scalar[k], 3);
                        let hi = g.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, cmax[k]);
                        (scalar, g.b.ins().band(lo, hi))
                    }
                    None => {
                        // every index vector equal to its lane 0
                        let mut same = None;
                        let mut scalar = Vec::with_capacity(idx.len());
                        for x in &idx {
                            let x0 = g.b.ins().extractlane(*x, 0);
                            let all0 = g.b.ins().splat(types::I32X4, x0);
                            let eq = g.b.ins().icmp(IntCC::Equal, *x, all0);
                            same = Some(match same {
                                None => eq,
                                Some(s) => g.b.ins().band(s, eq),
                            });
                            scalar.push(g.b.ins().sextend(types::I64, x0));
                        }
                        let same = same.expect("a tensor read has an index");
                        (scalar, g.b.ins().vall_true(same))
                    }
                };
                g.b.ins().brif(ok, fast, &[], slow, &[]);
                g.b.switch_to_block(fast);
                // (a run: the other dimensions one value for every lane, clamped)
                let flat = flat_index(g, &scalar, false, &cdims, &cmax, run);
                let addr = element_address(g, ptr, flat);
                let v = match run {
                    Some(k) => {
                        // (not `aligned`: a row's run starts anywhere)
                        let flags = MemFlagsData::new().with_notrap().with_readonly();
                        if k + 1 == idx.len() {
                            g.b.ins().load(vec_type(ty), flags, addr, 0)
                        } else {
                            // the row-major stride of dimension k
                            let mut stride = g.b.ins().iconst(types::I64, 1);
                            for d in &cdims[k + 1..] {
                                stride = g.b.ins().imul(stride, *d);
                            }
                            let step = g.b.ins().ishl_imm_u(stride, 2);
                            let mut a = addr;
                            let mut acc = None;
                            for lane in 0..4u8 {
                                if lane > 0 {
                                    a = g.b.ins().iadd(a, step);
                                }
                                let x = g.b.ins().load(elem, flags, a, 0);
                                acc = Some(match acc {
                                    None => g.b.ins().splat(vec_type(ty), x),
                                    Some(v) => g.b.ins().insertlane(v, x, lane),
                                });
                            }
                            acc.expect("four lanes")
                        }
                    }
                    None => {
                        let flags = MemFlagsData::trusted().with_readonly();
                        let x = g.b.ins().load(elem, flags, addr, 0);
                        g.b.ins().splat(vec_type(ty), x)
                    }
                };
                g.b.ins().jump(merge, &[v.into()]);
                g.b.switch_to_block(slow);
                let val = lanewise(g, &idx, vec_type(ty), |g, lanes| {
                    let flat = flat_index(g, lanes, true, &cdims, &cmax, None);
                    let addr = element_address(g, ptr, flat);
                    g.b.ins()
                        .load(elem, MemFlagsData::trusted().with_readonly(), addr, 0)
                });
                g.b.ins().jump(merge, &[val.into()]);
                g.b.switch_to_block(merge);
                let val = g.b.block_params(merge)[0];
                if guard_const {
                    val
                } else {
                    let z = splat_zero(g, vec_type(ty));
                    vselect(g, gv, val, z)
                }
            }
        })
    }
}

/// The address of the 4-byte element at offset `flat` of the tensor at `ptr`.
fn element_address(g: &mut Gen, ptr: CValue, flat: CValue) -> CValue {
    let byte = g.b.ins().ishl_imm_u(flat, 2);
    g.b.ins().iadd(ptr, byte)
}

/// The row-major element offset of the indices `idx` (i64, or i32 sign-extended here
/// with `widen`) in a tensor of dims `cdims` (`cmax` = dims − 1), each index clamped into
/// `[0, cmax]` (fast mode never reads outside a tensor) except dimension `exact`, which
/// the caller has checked in range.
fn flat_index(
    g: &mut Gen,
    idx: &[CValue],
    widen: bool,
    cdims: &[CValue],
    cmax: &[CValue],
    exact: Option<usize>,
) -> CValue {
    let zero = g.b.ins().iconst(types::I64, 0);
    let mut flat = zero;
    for (k, x) in idx.iter().enumerate() {
        let x = if widen {
            g.b.ins().sextend(types::I64, *x)
        } else {
            *x
        };
        let c = if exact == Some(k) {
            x
        } else {
            let c = g.b.ins().smax(x, zero);
            g.b.ins().smin(c, cmax[k])
        };
        flat = if k == 0 {
            c
        } else {
            let m = g.b.ins().imul(flat, cdims[k]);
            g.b.ins().iadd(m, c)
        };
    }
    flat
}

fn splat(g: &mut Gen, x: CValue, t: Type) -> CValue {
    match t {
        Type::Bool => {
            let w = g.b.ins().uextend(types::I32, x);
            let m = g.b.ins().ineg(w);
            g.b.ins().splat(types::I32X4, m)
        }
        Type::I32 => g.b.ins().splat(types::I32X4, x),
        Type::F32 => g.b.ins().splat(types::F32X4, x),
    }
}

fn splat_zero(g: &mut Gen, t: cranelift_codegen::ir::Type) -> CValue {
    if t == types::F32X4 {
        let z = g.b.ins().f32const(0.0);
        g.b.ins().splat(t, z)
    } else {
        let z = g.b.ins().iconst(types::I32, 0);
        g.b.ins().splat(t, z)
    }
}

fn fsplat(g: &mut Gen, x: f32) -> CValue {
    let c = g.b.ins().f32const(x);
    g.b.ins().splat(types::F32X4, c)
}

fn isplat(g: &mut Gen, x: i32) -> CValue {
    let c = g.b.ins().iconst(types::I32, x as i64);
    g.b.ins().splat(types::I32X4, c)
}

/// `c ? a : b` per lane, `c` an i32 lane mask.
pub fn vselect(g: &mut Gen, c: CValue, a: CValue, b: CValue) -> CValue {
    let t = g.b.func.dfg.value_type(a);
    let c = if t == types::F32X4 {
        g.b.ins().bitcast(types::F32X4, MemFlagsData::new(), c)
    } else {
        c
    };
    g.b.ins().bitselect(c, a, b)
}

/// Applies a scalar computation to each of the 4 lanes.
fn lanewise(
    g: &mut Gen,
    args: &[CValue],
    out: cranelift_codegen::ir::Type,
    mut f: impl FnMut(&mut Gen, &[CValue]) -> CValue,
) -> CValue {
    let mut acc = None;
    for lane in 0..4u8 {
        let xs: Vec<CValue> = args
            .iter()
            .map(|a| g.b.ins().extractlane(*a, lane))
            .collect();
        let r = f(g, &xs);
        acc = Some(match acc {
            None => g.b.ins().splat(out, r),
            Some(v) => g.b.ins().insertlane(v, r, lane),
        });
    }
    acc.expect("four lanes")
}

/// A unary op on a 4-lane vector; `exact` (a mask's values): `exp`, `exp2` and `tanh` by
/// the libm calls of the scalar path per lane, as the oracle and the mask's values at the
/// other loop levels compute them — so that the mask's comparisons are the oracle's (the
/// polynomials of the score path, within a few ulp, can break a tie such as
/// `exp(-abs(select(c, x, y))) < exp(-abs(x))`, whose right side a column computes once
/// by libm).
fn vunary(g: &mut Gen, op: UnOp, a: CValue, exact: bool) -> CValue {
    let call = |g: &mut Gen, name: &'static str| {
        lanewise(g, &[a], types::F32X4, |g, x| g.call_f32(name, x))
    };
    match op {
        UnOp::INeg => g.b.ins().ineg(a),
        UnOp::IAbs => g.b.ins().iabs(a),
        UnOp::FNeg => g.b.ins().fneg(a),
        UnOp::FAbs => g.b.ins().fabs(a),
        UnOp::Not => g.b.ins().bnot(a),
        UnOp::Exp if exact => call(g, "attnc_expf"),
        UnOp::Exp2 if exact => call(g, "attnc_exp2f"),
        UnOp::Tanh if exact => call(g, "attnc_tanhf"),
        UnOp::Exp => vexp(g, a),
        UnOp::Exp2 => vexp2(g, a),
        UnOp::Tanh => vtanh(g, a),
        UnOp::Log => call(g, "attnc_logf"),
        UnOp::Log2 => call(g, "attnc_log2f"),
        UnOp::Sqrt => g.b.ins().sqrt(a),
        UnOp::Floor => g.b.ins().floor(a),
        UnOp::Ceil => g.b.ins().ceil(a),
        UnOp::I2F => g.b.ins().fcvt_from_sint(types::F32X4, a),
        UnOp::F2I => g.b.ins().fcvt_to_sint_sat(types::I32X4, a),
        UnOp::B2I => {
            let one = isplat(g, 1);
            g.b.ins().band(a, one)
        }
    }
}

/// `2^n · p(r)` with `p` the Cephes polynomial for `e^r`, |r| <= ln2/2; `n` integral f32x4.
fn vscale_poly(g: &mut Gen, n: CValue, r: CValue) -> CValue {
    let coef = [
        1.987_569_1e-4f32,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];
    let mut p = fsplat(g, coef[0]);
    for c in &coef[1..] {
        let c = fsplat(g, *c);
        p = g.b.ins().fma(p, r, c);
    }
    let pr = g.b.ins().fmul(p, r);
    let p = g.b.ins().fma(pr, r, r);
    let one = fsplat(g, 1.0);
    let p = g.b.ins().fadd(p, one);
    // 2^n as 2^n1 * 2^n2 with n1 = floor(n / 2): both factors are normal for n in
    // [-151, 129], so p * 2^n1 is exact and the second product rounds once, giving
    // +inf past the largest float and correctly rounded subnormals below the smallest
    // normal (no flush to zero)
    let ni = g.b.ins().fcvt_to_sint_sat(types::I32X4, n);
    let n1 = g.b.ins().sshr_imm_u(ni, 1);
    let n2 = g.b.ins().isub(ni, n1);
    let pow2 = |g: &mut Gen, k: CValue| {
        let b127 = isplat(g, 127);
        let e = g.b.ins().iadd(k, b127);
        let e = g.b.ins().ishl_imm_u(e, 23);
        g.b.ins().bitcast(types::F32X4, MemFlagsData::new(), e)
    };
    let e1 = pow2(g, n1);
    let e2 = pow2(g, n2);
    let p = g.b.ins().fmul(p, e1);
    g.b.ins().fmul(p, e2)
}

fn vclamp(g: &mut Gen, x: CValue, lo: f32, hi: f32) -> CValue {
    let lo = fsplat(g, lo);
    let hi = fsplat(g, hi);
    let x = g.b.ins().fmax(x, lo);
    g.b.ins().fmin(x, hi)
}

/// Inline vector `exp` over the whole f32 range: at most 2 ulp where the result is
/// normal, subnormal results kept, +inf above ln(f32::MAX), 0 below -104, NaN kept
/// (the clamp keeps NaN: Cranelift's `fmin`/`fmax` propagate it). Tested against the
/// oracle in tests/tests/builtins_range.rs.
pub fn vexp(g: &mut Gen, x: CValue) -> CValue {
    let xc = vclamp(g, x, -104.0, 89.0);
    let log2e = fsplat(g, std::f32::consts::LOG2_E);
    let t = g.b.ins().fmul(xc, log2e);
    let n = g.b.ins().nearest(t);
    let hi = fsplat(g, 0.693_359_4);
    let lo = fsplat(g, -2.121_944_4e-4);
    let nhi = g.b.ins().fneg(hi);
    let nlo = g.b.ins().fneg(lo);
    let r = g.b.ins().fma(n, nhi, xc);
    let r = g.b.ins().fma(n, nlo, r);
    vscale_poly(g, n, r)
}

/// Inline vector `exp2` (exact range reduction), over the whole f32 range like [`vexp`].
pub fn vexp2(g: &mut Gen, x: CValue) -> CValue {
    let xc = vclamp(g, x, -151.0, 129.0);
    let n = g.b.ins().nearest(xc);
    let f = g.b.ins().fsub(xc, n);
    let ln2 = fsplat(g, std::f32::consts::LN_2);
    let r = g.b.ins().fmul(f, ln2);
    vscale_poly(g, n, r)
}

/// Inline vector `tanh` (≤ 4 ulp, measured 3): Eigen's rational approximation for |x| < 0.625, and
/// `copysign(1 - 2 / (exp(2|x|) + 1), x)` through [`vexp`] above, which is within an ulp
/// there and saturates to exactly ±1 where f32's tanh does (|x| ≥ 9.0109): the rational
/// form alone stopped at 1 - 2^-24, which `floor(exp2(tanh(x)))` turned into 1 where the
/// oracle gives 2 (found by the differential fuzzer); `x` itself below 4e-4. NaN stays NaN (the compare is
/// false and the rational form keeps it).
///
/// Each form is computed only where a lane needs it: a vector whose lanes are all below the
/// knee (a soft-cap's `tanh(s / 50)` almost always) runs the rational form alone, one
/// whose lanes are all at or above it the exponential form alone, a mixed one both and a
/// select — the same value per lane either way, at half the instructions in the common
/// cases.
pub fn vtanh(g: &mut Gen, x: CValue) -> CValue {
    let ax = g.b.ins().fabs(x);
    let knee = fsplat(g, 0.625);
    let far = g.b.ins().fcmp(FloatCC::GreaterThanOrEqual, ax, knee);
    let any_far = g.b.ins().vany_true(far);
    let [near_only, some_far, far_only, mixed, merge] = [(); 5].map(|()| g.b.create_block());
    g.b.append_block_param(merge, types::F32X4);
    g.b.ins().brif(any_far, some_far, &[], near_only, &[]);
    g.b.switch_to_block(near_only);
    let r = vtanh_rational(g, x);
    g.b.ins().jump(merge, &[r.into()]);
    // (the second test only where some lane is past the knee: not on the common path)
    g.b.switch_to_block(some_far);
    let all_far = g.b.ins().vall_true(far);
    g.b.ins().brif(all_far, far_only, &[], mixed, &[]);
    g.b.switch_to_block(far_only);
    let r = vtanh_exp(g, x, ax);
    g.b.ins().jump(merge, &[r.into()]);
    g.b.switch_to_block(mixed);
    let small = vtanh_rational(g, x);
    let big = vtanh_exp(g, x, ax);
    let r = vselect(g, far, big, small);
    g.b.ins().jump(merge, &[r.into()]);
    g.b.switch_to_block(merge);
    let r = g.b.block_params(merge)[0];
    // tiny |x|: tanh(x) rounds to x (x³/3 is below half an ulp), subnormals included,
    // where the rational form loses precision to the underflowing x²
    let tiny = fsplat(g, 4e-4);
    let near = g.b.ins().fcmp(FloatCC::LessThan, ax, tiny);
    vselect(g, near, x, r)
}

/// `copysign(1 - 2 / (exp(2|x|) + 1), x)`, [`vtanh`]'s form at and above its knee (`ax` =
/// |x|).
fn vtanh_exp(g: &mut Gen, x: CValue, ax: CValue) -> CValue {
    let two_ax = g.b.ins().fadd(ax, ax);
    let e = vexp(g, two_ax);
    let one = fsplat(g, 1.0);
    let two = fsplat(g, 2.0);
    let d = g.b.ins().fadd(e, one);
    let t = g.b.ins().fdiv(two, d);
    let big = g.b.ins().fsub(one, t);
    // copysign by bits (x64 has no vector fcopysign): `big` ≥ 0, so OR in x's sign bit
    let sign_bit = fsplat(g, -0.0);
    let sign = g.b.ins().band(x, sign_bit);
    g.b.ins().bor(big, sign)
}

/// Eigen's rational approximation of `tanh`, clamped to [-7.9, 7.9].
fn vtanh_rational(g: &mut Gen, x: CValue) -> CValue {
    let x = vclamp(g, x, -7.905_311, 7.905_311);
    let x2 = g.b.ins().fmul(x, x);
    let alpha = [
        -2.760_768_5e-16f32,
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ];
    let beta = [
        1.198_258_4e-6f32,
        1.185_347_1e-4,
        2.268_434_6e-3,
        4.893_525e-3,
    ];
    let horner = |g: &mut Gen, c: &[f32]| {
        let mut p = fsplat(g, c[0]);
        for k in &c[1..] {
            let k = fsplat(g, *k);
            p = g.b.ins().fma(p, x2, k);
        }
        p
    };
    let p = horner(g, &alpha);
    let p = g.b.ins().fmul(p, x);
    let q = horner(g, &beta);
    g.b.ins().fdiv(p, q)
}
