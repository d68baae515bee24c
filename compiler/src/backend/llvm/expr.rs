//! Translation of one IR [`Function`] (a mask or a score) into LLVM values, inlined at one
//! attention-matrix element.
//!
//! In: the function, the element's arguments (s, b, h, q, kv), the kernel's params and
//! captured-tensor arguments. Out: the returned value (i1 for masks, f32 for scores).
//! Semantics follow `ir::scalar` exactly for integer and comparison ops; `exp`, `exp2`,
//! `log`, `log2`, `tanh` and `pow` use PTX's approximate instructions, and `/` on floats
//! `div.full.f32` (2 ulp; errors documented on each helper in `gpu.rs` and in
//! `emit_unary`).
//!
//! Tensor reads: the fast mode clamps each index into range (never reads outside the
//! tensor); the checked mode also records the first out-of-range read whose guard held
//! and whose element lies inside `0..Lq x 0..Lkv` in the error words:
//! `err[0] = 1 + inst | (1 << 16 if score)`, `err[1] = tensor`, `err[2..2+rank] = indices`.

use super::KernelParam;
use super::gpu::{Gpu, R};
use crate::analysis::linear::LinExpr;
use crate::ir::{Arg, BinOp, Cmp, FnKind, Function, Inst, Program, TensorId, Type, UnOp};
use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::{AtomicOrdering, FloatPredicate, IntPredicate};

/// A captured tensor as the kernel sees it: a pointer to i32 or f32 elements and its dims.
#[derive(Clone)]
pub(crate) struct TensorArg<'ctx> {
    pub ptr: PointerValue<'ctx>,
    pub float: bool,
    pub dims: Vec<IntValue<'ctx>>,
}

/// What every element evaluation shares.
#[derive(Clone)]
pub(crate) struct Env<'ctx> {
    pub params: Vec<BasicValueEnum<'ctx>>,
    pub tensors: Vec<TensorArg<'ctx>>,
    /// The error words, in checked mode.
    pub err: Option<PointerValue<'ctx>>,
    /// `PtxOptions::mask_kinds`: the mask's linear and other conjuncts (`score::mask_kinds`),
    /// set by the forward and block-table kernels after [`Env::load`] (`None` there).
    pub kinds: Option<(Function, Function)>,
}

impl<'ctx> Env<'ctx> {
    /// Reads the program's params (one 32-bit word each) and describes its captured
    /// tensors from the kernel parameters (`ptr` / `int` look one up by kind); with
    /// `checked`, out-of-range reads go to the error words. Shared by the attention and
    /// block-table kernels, so both read captures identically.
    pub(crate) fn load(
        g: &Gpu<'ctx>,
        p: &Program,
        checked: bool,
        ptr: &dyn Fn(KernelParam) -> R<PointerValue<'ctx>>,
        int: &dyn Fn(KernelParam) -> R<IntValue<'ctx>>,
    ) -> R<Self> {
        let pw = ptr(KernelParam::Params)?;
        let mut params = Vec::new();
        for (i, info) in p.params.iter().enumerate() {
            let w = g.load_i32(pw, g.c64(i as i64))?;
            params.push(match info.ty {
                Type::I32 => w.into(),
                Type::F32 => g.b.build_bit_cast(w, g.f32, "")?,
                Type::Bool => g.icmp(IntPredicate::NE, w, g.c32(0))?.into(),
            });
        }
        let mut tensors = Vec::new();
        for (t, info) in p.tensors.iter().enumerate() {
            let dims = (0..info.dims.len() as u32)
                .map(|dim| {
                    int(KernelParam::TensorDim {
                        tensor: t as u32,
                        dim,
                    })
                })
                .collect::<R<Vec<_>>>()?;
            tensors.push(TensorArg {
                ptr: ptr(KernelParam::Tensor(t as u32))?,
                float: info.elem.read_type() == Type::F32,
                dims,
            });
        }
        Ok(Env {
            params,
            tensors,
            err: if checked {
                Some(ptr(KernelParam::Err)?)
            } else {
                None
            },
            kinds: None,
        })
    }

    /// The environment of one tile: under `PtxOptions::device_lens` (`Cfg::device_lens`)
    /// its param takes the tile's value ([`super::tile::Ctx::q_shift`]), else `None` (the
    /// kernel's environment serves every tile).
    pub(crate) fn at_tile(
        &self,
        c: &super::tile::Cfg,
        cx: &super::tile::Ctx<'ctx>,
    ) -> Option<Self> {
        let (Some(p), Some(shift)) = (c.device_lens, cx.q_shift) else {
            return None;
        };
        let mut env = self.clone();
        env.params[p as usize] = shift.into();
        Some(env)
    }
}

/// The arguments of one element.
#[derive(Clone, Copy)]
pub(crate) struct Elem<'ctx> {
    pub s: FloatValue<'ctx>,
    pub b: IntValue<'ctx>,
    pub h: IntValue<'ctx>,
    pub q: IntValue<'ctx>,
    pub kv: IntValue<'ctx>,
    /// The element lies inside `0..Lq x 0..Lkv` (checked mode reports only those).
    pub inside: IntValue<'ctx>,
    /// `kv - q` made as the thread's `first column - first row` plus a constant, where
    /// the caller has it: the elements of one diagonal of the thread's fragment then
    /// share one LLVM value for `kv - q` (and `q - kv`), and LLVM merges everything the
    /// score computes from it alone (T5's bucket, its `lg2`, its table read) instead of
    /// computing it per element. `None`: `kv - q` from `q` and `kv` per element.
    pub rel: Option<IntValue<'ctx>>,
}

/// The element's positions as f32, exact: `(q as f32, kv as f32)` for positions below
/// `FLOAT_POSITIONS_MAX` (`PtxOptions::float_positions`), made once per row and column by
/// the caller; `forms`: the function's linear forms (`analysis::linear::linear_ints`),
/// computed once by the caller.
#[derive(Clone, Copy)]
pub(crate) struct PosF<'a, 'ctx> {
    pub q: FloatValue<'ctx>,
    pub kv: FloatValue<'ctx>,
    pub forms: &'a [Option<LinExpr>],
}

pub(crate) fn emit_function<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    e: Elem<'ctx>,
) -> R<BasicValueEnum<'ctx>> {
    emit_function_at(g, env, f, e, None)
}

/// [`emit_function`] with the element's positions as floats: an `i32 -> f32` conversion
/// of `±q ± kv + c` (each coefficient -1, 0 or 1, `|c| <= FLOAT_POSITIONS_MAX`) becomes
/// float additions of `pos` (exact: every partial sum stays below 2^24), not a `cvt`.
pub(crate) fn emit_function_at<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    e: Elem<'ctx>,
    pos: Option<PosF<'_, 'ctx>>,
) -> R<BasicValueEnum<'ctx>> {
    let vals = emit_values_at(g, env, f, e, &[f.ret], pos)?;
    vals[f.ret.index()].ok_or(super::LlvmError::Internal(
        "IR value used before definition",
    ))
}

/// Converting a value of linear form `form` to f32 as float sums of the exact f32
/// positions gives the same result as converting the integer: no params, the
/// coefficients of q and kv -1, 0 or 1 (not both 0) and the constant at most
/// `FLOAT_POSITIONS_MAX` in magnitude, so with positions below `FLOAT_POSITIONS_MAX` no
/// partial sum reaches 2^24 (nor overflows the i32).
pub(crate) fn float_exact(form: &LinExpr) -> bool {
    form.params.is_empty()
        && form.q.abs() <= 1
        && form.kv.abs() <= 1
        && form.k.abs() <= super::FLOAT_POSITIONS_MAX
        && (form.q != 0 || form.kv != 0)
}

/// A [`float_exact`] form from the float positions: `(±kv ± q) + k`.
fn emit_float_form<'ctx>(
    g: &Gpu<'ctx>,
    form: &LinExpr,
    pos: PosF<'_, 'ctx>,
) -> R<FloatValue<'ctx>> {
    let term = |x: FloatValue<'ctx>, coef: i64| -> R<Option<FloatValue<'ctx>>> {
        Ok(match coef {
            0 => None,
            1 => Some(x),
            _ => Some(g.b.build_float_neg(x, "")?),
        })
    };
    let kv = term(pos.kv, form.kv)?;
    let v = match (kv, form.q) {
        (Some(k), 1) => g.fadd(k, pos.q)?,
        (Some(k), -1) => g.fsub(k, pos.q)?,
        (Some(k), _) => k,
        (None, coef) => term(pos.q, coef)?.ok_or(super::LlvmError::Internal("linear form"))?,
    };
    if form.k == 0 {
        Ok(v)
    } else {
        g.fadd(v, g.cf(form.k as f32))
    }
}

/// Like [`emit_function`], for several outputs of one function (the backward's score,
/// derivative and read sites), with the element's float positions where given
/// ([`emit_function_at`]): every value that one of `roots` depends on is emitted once;
/// `out[v.index()]` is the LLVM value of IR value `v` (`None` where not emitted).
pub(crate) fn emit_values_at<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    e: Elem<'ctx>,
    roots: &[crate::ir::Value],
    pos: Option<PosF<'_, 'ctx>>,
) -> R<Vec<Option<BasicValueEnum<'ctx>>>> {
    emit_values_hoisted(g, env, f, e, roots, pos, &[])
}

/// [`emit_values_at`] where some reads were made once for the whole tile
/// (`uniform::emit_tile_loads`): `hoisted[i]`, where present, is the value `Load` `i`
/// reads at every element (its guard applied here per element).
pub(crate) fn emit_values_hoisted<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    f: &Function,
    e: Elem<'ctx>,
    roots: &[crate::ir::Value],
    pos: Option<PosF<'_, 'ctx>>,
    hoisted: &[Option<BasicValueEnum<'ctx>>],
) -> R<Vec<Option<BasicValueEnum<'ctx>>>> {
    let hoisted_at = |i: usize| hoisted.get(i).copied().flatten();
    // (a hoisted load's indices, still emitted, are dead code LLVM removes)
    let live = f.live_from(roots);
    let mut vals: Vec<Option<BasicValueEnum<'ctx>>> = vec![None; f.insts.len()];
    let get = |vals: &Vec<Option<BasicValueEnum<'ctx>>>, v: crate::ir::Value| {
        vals[v.index()].ok_or(super::LlvmError::Internal(
            "IR value used before definition",
        ))
    };
    for (i, inst) in f.insts.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let v: BasicValueEnum<'ctx> = match inst {
            Inst::Arg(a) => match a {
                Arg::S => e.s.into(),
                Arg::B => e.b.into(),
                Arg::H => e.h.into(),
                Arg::Q => e.q.into(),
                Arg::Kv => e.kv.into(),
            },
            Inst::ConstBool(x) => g.cbool(*x).into(),
            Inst::ConstI32(x) => g.c32(*x as i64).into(),
            Inst::ConstF32(bits) => g.f32.const_float(f32::from_bits(*bits) as f64).into(),
            Inst::Param(p) => env.params[p.0 as usize],
            Inst::Unary(UnOp::I2F, a)
                if let Some(pos) = pos
                    && let Some(Some(form)) = pos.forms.get(a.index())
                    && float_exact(form) =>
            {
                emit_float_form(g, form, pos)?.into()
            }
            Inst::Unary(op, a) => emit_unary(g, *op, get(&vals, *a)?)?,
            // `kv - q` / `q - kv` from the element's shared diagonal value (`Elem::rel`)
            Inst::Binary(BinOp::ISub, a, b)
                if let Some(rel) = e.rel
                    && let (Inst::Arg(x), Inst::Arg(y)) = (f.inst(*a), f.inst(*b))
                    && matches!((x, y), (Arg::Kv, Arg::Q) | (Arg::Q, Arg::Kv)) =>
            {
                match x {
                    Arg::Kv => rel.into(),
                    _ => g.sub(g.c32(0), rel)?.into(),
                }
            }
            Inst::Binary(op, a, b) => emit_binary(g, *op, get(&vals, *a)?, get(&vals, *b)?)?,
            Inst::Select(c, a, b) => g.select(
                get(&vals, *c)?.into_int_value(),
                get(&vals, *a)?,
                get(&vals, *b)?,
            )?,
            Inst::Load { guard, .. } if let Some(v) = hoisted_at(i) => {
                let guard = get(&vals, *guard)?.into_int_value();
                if v.is_float_value() {
                    g.selectf(guard, v.into_float_value(), g.cf(0.0))?.into()
                } else {
                    g.selecti(guard, v.into_int_value(), g.c32(0))?.into()
                }
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let idx: Vec<IntValue<'ctx>> = indices
                    .iter()
                    .map(|v| get(&vals, *v).map(|x| x.into_int_value()))
                    .collect::<R<_>>()?;
                let guard = get(&vals, *guard)?.into_int_value();
                let tag = (i as u32 + 1) | if f.kind == FnKind::Score { 1 << 16 } else { 0 };
                emit_load(g, env, *tensor, &idx, guard, e.inside, tag, f.types[i])?
            }
        };
        vals[i] = Some(v);
    }
    Ok(vals)
}

#[allow(clippy::too_many_arguments)]
fn emit_load<'ctx>(
    g: &Gpu<'ctx>,
    env: &Env<'ctx>,
    tensor: TensorId,
    idx: &[IntValue<'ctx>],
    guard: IntValue<'ctx>,
    inside: IntValue<'ctx>,
    tag: u32,
    ty: Type,
) -> R<BasicValueEnum<'ctx>> {
    let t = &env.tensors[tensor.0 as usize];
    let (flat, oob) = flat_index(g, t, idx)?;
    if let Some(err) = env.err {
        let report = g.and(g.and(oob, guard)?, inside)?;
        g.if_then(report, || {
            let won = g.b.build_cmpxchg(
                err,
                g.c32(0),
                g.c32(tag as i64),
                AtomicOrdering::Monotonic,
                AtomicOrdering::Monotonic,
            )?;
            let won = g.b.build_extract_value(won, 1, "")?.into_int_value();
            g.if_then(won, || {
                g.store(gep_i32(g, err, 1)?, g.c32(tensor.0 as i64))?;
                for (k, x) in idx.iter().enumerate() {
                    g.store(gep_i32(g, err, 2 + k as i64)?, *x)?;
                }
                Ok(())
            })
        })?;
    }
    let v: BasicValueEnum<'ctx> = if t.float {
        let x = g.load_f32(t.ptr, flat)?;
        let x = if ty == Type::F32 {
            x
        } else {
            return Err(super::LlvmError::Internal("tensor read type"));
        };
        g.selectf(guard, x, g.cf(0.0))?.into()
    } else {
        let x = g.load_i32(t.ptr, flat)?;
        g.selecti(guard, x, g.c32(0))?.into()
    };
    Ok(v)
}

/// The element a read of `t` at `idx` touches in fast mode, as a flat i64 index: `sum
/// clamp(idx_k) * stride_k` (dims are >= 1, the runtime guarantees it); and whether any
/// index was out of range. The backward scatters capture gradients to the same element.
pub(crate) fn flat_index<'ctx>(
    g: &Gpu<'ctx>,
    t: &TensorArg<'ctx>,
    idx: &[IntValue<'ctx>],
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let mut flat = g.c64(0);
    let mut oob = g.cbool(false);
    for (x, dim) in idx.iter().zip(&t.dims) {
        let hi = g.sub(*dim, g.c32(1))?;
        oob = g.or(oob, g.icmp(IntPredicate::UGT, *x, hi)?)?;
        let c = g.iintr2("llvm.smax.i32", *x, g.c32(0))?;
        let c = g.iintr2("llvm.smin.i32", c, hi)?;
        flat = g.add(g.mul(flat, g.zext64(*dim)?)?, g.zext64(c)?)?;
    }
    Ok((flat, oob))
}

fn gep_i32<'ctx>(g: &Gpu<'ctx>, p: PointerValue<'ctx>, i: i64) -> R<PointerValue<'ctx>> {
    g.gep_bytes(p, g.c64(i * 4))
}

fn emit_unary<'ctx>(g: &Gpu<'ctx>, op: UnOp, a: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2: f32 = std::f32::consts::LN_2;
    Ok(match op {
        UnOp::INeg => g.sub(g.c32(0), a.into_int_value())?.into(),
        UnOp::IAbs => {
            let x = a.into_int_value();
            let neg = g.icmp(IntPredicate::SLT, x, g.c32(0))?;
            g.select(neg, g.sub(g.c32(0), x)?, x)?
        }
        UnOp::Not => g.xor(a.into_int_value(), g.cbool(true))?.into(),
        UnOp::B2I => {
            g.b.build_int_z_extend(a.into_int_value(), g.i32, "")?
                .into()
        }
        UnOp::I2F => {
            g.b.build_signed_int_to_float(a.into_int_value(), g.f32, "")?
                .into()
        }
        UnOp::F2I => {
            // Rust `as`: truncate, saturate, NaN -> 0 (cvt.rzi.s32.f32 after LLVM's clamps)
            let x = a.into_float_value();
            g.call("llvm.fptosi.sat.i32.f32", Some(g.i32.into()), &[x.into()])?
                .ok_or(super::LlvmError::Internal("fptosi.sat"))?
        }
        UnOp::FNeg => g.b.build_float_neg(a.into_float_value(), "")?.into(),
        UnOp::FAbs => g.fintr("llvm.fabs.f32", a.into_float_value())?.into(),
        UnOp::Sqrt => g.fintr("llvm.sqrt.f32", a.into_float_value())?.into(),
        UnOp::Floor => g.fintr("llvm.floor.f32", a.into_float_value())?.into(),
        UnOp::Ceil => g.fintr("llvm.ceil.f32", a.into_float_value())?.into(),
        // exp(x) = 2^(x log2 e) with ex2.approx: relative error ~2^-22 plus the rounding of
        // the product (grows with |x|: ~|x| * 2^-24 relative).
        UnOp::Exp => g.ex2(g.fmul(a.into_float_value(), g.cf(LOG2E))?)?.into(),
        UnOp::Exp2 => g.ex2(a.into_float_value())?.into(),
        UnOp::Log => g.fmul(g.lg2(a.into_float_value())?, g.cf(LN2))?.into(),
        UnOp::Log2 => g.lg2(a.into_float_value())?.into(),
        UnOp::Tanh => g.tanh(a.into_float_value())?.into(),
    })
}

fn emit_binary<'ctx>(
    g: &Gpu<'ctx>,
    op: BinOp,
    a: BasicValueEnum<'ctx>,
    b: BasicValueEnum<'ctx>,
) -> R<BasicValueEnum<'ctx>> {
    use BinOp::*;
    Ok(match op {
        IAdd | ISub | IMul | IDiv | IRem | IMin | IMax => {
            let (x, y) = (a.into_int_value(), b.into_int_value());
            match op {
                IAdd => g.add(x, y)?.into(),
                ISub => g.sub(x, y)?.into(),
                IMul => g.mul(x, y)?.into(),
                IDiv => floor_div(g, x, y)?.into(),
                IRem => floor_rem(g, x, y)?.into(),
                IMin => g.iintr2("llvm.smin.i32", x, y)?.into(),
                _ => g.iintr2("llvm.smax.i32", x, y)?.into(),
            }
        }
        FAdd | FSub | FMul | FDiv | FMin | FMax | FPow => {
            let (x, y) = (a.into_float_value(), b.into_float_value());
            match op {
                FAdd => g.fadd(x, y)?.into(),
                FSub => g.fsub(x, y)?.into(),
                FMul => g.fmul(x, y)?.into(),
                FDiv => g.fdiv(x, y)?.into(),
                FMin | FMax => min_max(g, op == FMin, x, y)?.into(),
                _ => pow(g, x, y)?.into(),
            }
        }
        ICmp(c) => g
            .icmp(int_pred(c), a.into_int_value(), b.into_int_value())?
            .into(),
        FCmp(c) => g
            .fcmp(float_pred(c), a.into_float_value(), b.into_float_value())?
            .into(),
        IAnd => g.and(a.into_int_value(), b.into_int_value())?.into(),
        IOr => g.or(a.into_int_value(), b.into_int_value())?.into(),
        IXor => g.xor(a.into_int_value(), b.into_int_value())?.into(),
        IShl | IShr => shift(g, op == IShl, a.into_int_value(), b.into_int_value())?.into(),
        And => g.and(a.into_int_value(), b.into_int_value())?.into(),
        Or => g.or(a.into_int_value(), b.into_int_value())?.into(),
        Xor => g.xor(a.into_int_value(), b.into_int_value())?.into(),
        BEq => g
            .xor(
                g.xor(a.into_int_value(), b.into_int_value())?,
                g.cbool(true),
            )?
            .into(),
    })
}

/// `x << n` / `x >> n` (arithmetic) with the IR's conventions: a shift amount outside
/// 0..32 gives 0 (left) or the sign (right); LLVM's shift by 32 or more is poison, so the
/// amount is taken in range first.
fn shift<'ctx>(
    g: &Gpu<'ctx>,
    left: bool,
    x: IntValue<'ctx>,
    n: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    let in_range = g.icmp(IntPredicate::ULT, n, g.c32(32))?;
    let amount = g.selecti(in_range, n, g.c32(0))?;
    let (shifted, outside) = if left {
        (g.shl(x, amount)?, g.c32(0))
    } else {
        (
            g.b.build_right_shift(x, amount, true, "")?,
            g.b.build_right_shift(x, g.c32(31), true, "")?,
        )
    };
    g.selecti(in_range, shifted, outside)
}

fn int_pred(c: Cmp) -> IntPredicate {
    match c {
        Cmp::Eq => IntPredicate::EQ,
        Cmp::Ne => IntPredicate::NE,
        Cmp::Lt => IntPredicate::SLT,
        Cmp::Le => IntPredicate::SLE,
        Cmp::Gt => IntPredicate::SGT,
        Cmp::Ge => IntPredicate::SGE,
    }
}

/// Rust's float comparisons: ordered, except `!=` which is true on NaN.
fn float_pred(c: Cmp) -> FloatPredicate {
    match c {
        Cmp::Eq => FloatPredicate::OEQ,
        Cmp::Ne => FloatPredicate::UNE,
        Cmp::Lt => FloatPredicate::OLT,
        Cmp::Le => FloatPredicate::OLE,
        Cmp::Gt => FloatPredicate::OGT,
        Cmp::Ge => FloatPredicate::OGE,
    }
}

/// Truncating quotient without UB: divisor 0 and -1 are replaced by 1 (fixed up after).
fn safe_sdiv<'ctx>(
    g: &Gpu<'ctx>,
    x: IntValue<'ctx>,
    y: IntValue<'ctx>,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let zero = g.icmp(IntPredicate::EQ, y, g.c32(0))?;
    let m1 = g.icmp(IntPredicate::EQ, y, g.c32(-1))?;
    let special = g.or(zero, m1)?;
    let ys = g.selecti(special, g.c32(1), y)?;
    let q = g.b.build_int_signed_div(x, ys, "")?;
    // y == -1: wrapping negation; y == 0: 0
    let q = g.selecti(m1, g.sub(g.c32(0), x)?, q)?;
    let q = g.selecti(zero, g.c32(0), q)?;
    Ok((q, zero))
}

/// Floor division (`ir::floor_div`): x / 0 = 0, MIN / -1 = MIN.
fn floor_div<'ctx>(g: &Gpu<'ctx>, x: IntValue<'ctx>, y: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    let (q, _) = safe_sdiv(g, x, y)?;
    let r = g.sub(x, g.mul(q, y)?)?;
    let adjust = g.and(
        g.icmp(IntPredicate::NE, r, g.c32(0))?,
        g.icmp(IntPredicate::SLT, g.xor(r, y)?, g.c32(0))?,
    )?;
    g.selecti(adjust, g.sub(q, g.c32(1))?, q)
}

/// Floor remainder (`ir::floor_rem`): sign of the divisor, x % 0 = 0.
fn floor_rem<'ctx>(g: &Gpu<'ctx>, x: IntValue<'ctx>, y: IntValue<'ctx>) -> R<IntValue<'ctx>> {
    let (q, zero) = safe_sdiv(g, x, y)?;
    let r = g.sub(x, g.mul(q, y)?)?;
    let adjust = g.and(
        g.icmp(IntPredicate::NE, r, g.c32(0))?,
        g.icmp(IntPredicate::SLT, g.xor(r, y)?, g.c32(0))?,
    )?;
    let r = g.selecti(adjust, g.add(r, y)?, r)?;
    g.selecti(zero, g.c32(0), r)
}

/// `pow(x, y)` as `2^(y log2 |x|)` with the sign of an odd integer power of a negative
/// base, NaN for a negative base and a non-integer exponent, and `pow(x, 0) = 1`.
/// Approximate (ex2/lg2.approx): relative error grows with |y log2 |x||, ~1e-6 typical.
fn pow<'ctx>(g: &Gpu<'ctx>, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
    let ax = g.fintr("llvm.fabs.f32", x)?;
    let r = g.ex2(g.fmul(y, g.lg2(ax)?)?)?;
    let neg = g.fcmp(FloatPredicate::OLT, x, g.cf(0.0))?;
    let yi = g.fintr("llvm.floor.f32", y)?;
    let is_int = g.fcmp(FloatPredicate::OEQ, yi, y)?;
    let half = g.fmul(y, g.cf(0.5))?;
    let odd = g.fcmp(FloatPredicate::ONE, g.fintr("llvm.floor.f32", half)?, half)?;
    let negr = g.b.build_float_neg(r, "")?;
    let signed = g.selectf(odd, negr, r)?;
    let nan = g.cf(f32::NAN);
    let neg_res = g.selectf(is_int, signed, nan)?;
    let r = g.selectf(neg, neg_res, r)?;
    let y0 = g.fcmp(FloatPredicate::OEQ, y, g.cf(0.0))?;
    g.selectf(y0, g.cf(1.0), r)
}

/// `min`/`max` as `ir::scalar` defines them (IEEE 754-2019 minimumNumber/maximumNumber):
/// the other operand when one is NaN, and `-0.0 < +0.0`. `llvm.minnum` leaves the sign of
/// an equal pair of zeros open, so equal operands are combined bitwise: for min the sign
/// bits are OR-ed (-0.0 if either is), for max AND-ed (equal nonzero floats have equal
/// bits, so this only decides zeros).
fn min_max<'ctx>(
    g: &Gpu<'ctx>,
    min: bool,
    x: FloatValue<'ctx>,
    y: FloatValue<'ctx>,
) -> R<FloatValue<'ctx>> {
    let r = if min {
        g.fintr2("llvm.minnum.f32", x, y)?
    } else {
        g.fintr2("llvm.maxnum.f32", x, y)?
    };
    let eq = g.fcmp(FloatPredicate::OEQ, x, y)?;
    let xb = g.b.build_bit_cast(x, g.i32, "")?.into_int_value();
    let yb = g.b.build_bit_cast(y, g.i32, "")?.into_int_value();
    let bits = if min {
        g.b.build_or(xb, yb, "")?
    } else {
        g.b.build_and(xb, yb, "")?
    };
    let same = g.b.build_bit_cast(bits, g.f32, "")?.into_float_value();
    g.selectf(eq, same, r)
}

#[cfg(test)]
mod tests {
    use super::{Inst, LinExpr, UnOp, float_exact};
    use crate::analysis::linear::linear_ints;

    /// The linear form of the operand of the score's first `i32 -> f32` conversion.
    fn converted(score: &str) -> Option<LinExpr> {
        let src = format!(
            "const C: i32 = 5;\nscore f(s, b, h, q, kv) {{ s + ({score}) as f32 }}\nattention a {{ score = f; }}"
        );
        let m = crate::compile_source(&src).expect("compiles");
        let f = m.programs[0].score.as_ref().expect("a score");
        let forms = linear_ints(f);
        let operand = f
            .insts
            .iter()
            .find_map(|i| match i {
                Inst::Unary(UnOp::I2F, a) => Some(*a),
                _ => None,
            })
            .expect("a conversion");
        forms[operand.index()].clone()
    }

    #[test]
    fn position_sums_have_linear_forms() {
        let f = |q, kv, k| {
            Some(LinExpr {
                q,
                kv,
                params: vec![],
                k,
            })
        };
        assert_eq!(converted("kv - q"), f(-1, 1, 0));
        assert_eq!(converted("q - kv + C"), f(1, -1, 5));
        assert_eq!(converted("-(kv - q) - 3"), f(1, -1, -3));
        assert_eq!(converted("kv + q"), f(1, 1, 0));
        assert!(!converted("kv * 2").is_some_and(|x| float_exact(&x)));
        assert_eq!(converted("kv / 2 - q"), None);
        assert_eq!(converted("h - q"), None);
        assert!(float_exact(&converted("kv - q").unwrap()));
        assert!(float_exact(&converted("kv + q - 7").unwrap()));
        // a coefficient of 2 or a constant past the bound: converted per element
        assert!(!float_exact(&converted("kv + kv - q").unwrap()));
        assert!(!float_exact(&converted("kv - 5000000").unwrap()));
    }
}
