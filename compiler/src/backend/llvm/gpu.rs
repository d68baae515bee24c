//! A thin layer over inkwell for writing NVPTX kernels: special registers, barriers,
//! warp shuffles, fast math, `cp.async`, `ldmatrix`, `mma.sync`, Hopper `wgmma` (shared-
//! memory matrix descriptors, fences, commit/wait groups), packing to 16-bit pairs, and
//! swizzled shared-memory tiles (row-swizzled, or the wgmma 128-byte-swizzled slabs).
//!
//! In: an LLVM context/module and a kernel function under construction. Out: LLVM
//! instructions appended at the builder's position. Every helper is one PTX idea, so
//! that the kernel generator (`kernel.rs`) reads like the algorithm.

use super::{InputType, LlvmError};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum, FloatType, IntType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FastMathFlags, FloatValue, FunctionValue,
    GlobalValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

pub(crate) type R<T> = Result<T, LlvmError>;

/// Whether an inline asm statement has side effects: `Volatile` ones LLVM neither merges,
/// moves across each other nor drops; `Pure` ones are values like arithmetic.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asm {
    Pure,
    Volatile,
}

/// The types of call arguments (integers, floats, pointers, vectors: what the generator
/// passes), for declaring an intrinsic or typing an inline asm statement.
fn arg_types<'ctx>(args: &[BasicMetadataValueEnum<'ctx>]) -> R<Vec<BasicMetadataTypeEnum<'ctx>>> {
    args.iter()
        .map(|a| match a {
            BasicMetadataValueEnum::IntValue(v) => Ok(v.get_type().into()),
            BasicMetadataValueEnum::FloatValue(v) => Ok(v.get_type().into()),
            BasicMetadataValueEnum::PointerValue(v) => Ok(v.get_type().into()),
            BasicMetadataValueEnum::VectorValue(v) => Ok(v.get_type().into()),
            _ => Err(LlvmError::Internal("call argument kind")),
        })
        .collect()
}

pub(crate) const GLOBAL: u16 = 1;
pub(crate) const SHARED: u16 = 3;

/// The builder state of one kernel.
pub(crate) struct Gpu<'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    /// Positioned in the entry block, where every `alloca` goes (so that SROA promotes them).
    pub ab: Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
    pub smem: GlobalValue<'ctx>,
    pub i1: IntType<'ctx>,
    pub i32: IntType<'ctx>,
    pub i64: IntType<'ctx>,
    pub f32: FloatType<'ctx>,
}

impl<'ctx> Gpu<'ctx> {
    pub fn new(ctx: &'ctx Context, module: Module<'ctx>, func: FunctionValue<'ctx>) -> Self {
        let b = ctx.create_builder();
        let ab = ctx.create_builder();
        let i8 = ctx.i8_type();
        let smem = module.add_global(i8.array_type(0), Some(AddressSpace::from(SHARED)), "smem");
        smem.set_linkage(Linkage::External);
        smem.set_alignment(128);
        Gpu {
            ctx,
            module,
            b,
            ab,
            func,
            smem,
            i1: ctx.bool_type(),
            i32: ctx.i32_type(),
            i64: ctx.i64_type(),
            f32: ctx.f32_type(),
        }
    }

    // ---- constants and small arithmetic -------------------------------------------------

    pub fn c32(&self, x: i64) -> IntValue<'ctx> {
        self.i32.const_int(x as u64, true)
    }
    pub fn c64(&self, x: i64) -> IntValue<'ctx> {
        self.i64.const_int(x as u64, true)
    }
    pub fn cf(&self, x: f32) -> FloatValue<'ctx> {
        self.f32.const_float(x as f64)
    }
    pub fn cbool(&self, x: bool) -> IntValue<'ctx> {
        self.i1.const_int(x as u64, false)
    }
    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_add(a, b, "")?)
    }
    pub fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_sub(a, b, "")?)
    }
    pub fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_mul(a, b, "")?)
    }
    pub fn and(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_and(a, b, "")?)
    }
    pub fn or(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_or(a, b, "")?)
    }
    pub fn xor(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_xor(a, b, "")?)
    }
    pub fn shl(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_left_shift(a, b, "")?)
    }
    pub fn lshr(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_right_shift(a, b, false, "")?)
    }
    pub fn udiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_unsigned_div(a, b, "")?)
    }
    pub fn icmp(&self, p: IntPredicate, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_compare(p, a, b, "")?)
    }
    pub fn fcmp(
        &self,
        p: FloatPredicate,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        Ok(self.b.build_float_compare(p, a, b, "")?)
    }
    /// Marks a float instruction `contract`, so that a multiply feeding an add becomes one
    /// `fma.rn.f32` (one rounding instead of two; NVPTX fuses only with this flag).
    fn contract(&self, v: FloatValue<'ctx>) -> FloatValue<'ctx> {
        if let Some(i) = v.as_instruction_value() {
            let _ = i.set_fast_math_flags(FastMathFlags::AllowContract);
        }
        v
    }
    pub fn fadd(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.contract(self.b.build_float_add(a, b, "")?))
    }
    pub fn fsub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.contract(self.b.build_float_sub(a, b, "")?))
    }
    pub fn fmul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.contract(self.b.build_float_mul(a, b, "")?))
    }
    pub fn select<V: BasicValue<'ctx>>(
        &self,
        c: IntValue<'ctx>,
        a: V,
        b: V,
    ) -> R<BasicValueEnum<'ctx>> {
        Ok(self.b.build_select(c, a, b, "")?)
    }
    pub fn selecti(
        &self,
        c: IntValue<'ctx>,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        Ok(self.select(c, a, b)?.into_int_value())
    }
    pub fn selectf(
        &self,
        c: IntValue<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        Ok(self.select(c, a, b)?.into_float_value())
    }
    pub fn zext64(&self, a: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_z_extend(a, self.i64, "")?)
    }
    /// An i1 (or narrower) integer as i32, zero-extended.
    pub fn zext32(&self, a: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_z_extend(a, self.i32, "")?)
    }
    pub fn sext64(&self, a: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_s_extend(a, self.i64, "")?)
    }
    pub fn fmax(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.call_f("llvm.maxnum.f32", &[a.into(), b.into()])
    }

    // ---- intrinsics and inline asm -------------------------------------------------------

    /// Calls `name`, declaring it on first use with the argument types given.
    pub fn call(
        &self,
        name: &str,
        ret: Option<BasicTypeEnum<'ctx>>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> R<Option<BasicValueEnum<'ctx>>> {
        let f = match self.module.get_function(name) {
            Some(f) => f,
            None => {
                let tys = arg_types(args)?;
                let ft = match ret {
                    Some(t) => t.fn_type(&tys, false),
                    None => self.ctx.void_type().fn_type(&tys, false),
                };
                self.module.add_function(name, ft, None)
            }
        };
        let cs = self.b.build_call(f, args, "")?;
        Ok(cs.try_as_basic_value().basic())
    }
    fn call_f(&self, name: &str, args: &[BasicMetadataValueEnum<'ctx>]) -> R<FloatValue<'ctx>> {
        Ok(self
            .call(name, Some(self.f32.into()), args)?
            .ok_or(LlvmError::Internal("void call"))?
            .into_float_value())
    }
    fn call_i(&self, name: &str, args: &[BasicMetadataValueEnum<'ctx>]) -> R<IntValue<'ctx>> {
        Ok(self
            .call(name, Some(self.i32.into()), args)?
            .ok_or(LlvmError::Internal("void call"))?
            .into_int_value())
    }
    /// A pure inline asm statement `text` (`$0` the f32 result, `$1` = `x`): LLVM may
    /// merge, move or drop it like arithmetic.
    fn asm_f(&self, text: &str, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self
            .asm_value(self.f32.into(), text, "=f,f", Asm::Pure, &[x.into()])?
            .into_float_value())
    }

    /// The inline asm value of `text` under `constraints` with type `ft`: side effects
    /// as `effects` says, AT&T dialect, no stack alignment, cannot throw.
    fn inline_asm(
        &self,
        ft: inkwell::types::FunctionType<'ctx>,
        text: &str,
        constraints: &str,
        effects: Asm,
    ) -> inkwell::values::PointerValue<'ctx> {
        self.ctx.create_inline_asm(
            ft,
            text.into(),
            constraints.into(),
            effects == Asm::Volatile,
            false,
            None,
            false,
        )
    }

    /// An inline asm statement with one result of type `ret` (its constraint first in
    /// `constraints`), on `args`; not convergent (compare [`Self::asm_call`]).
    fn asm_value(
        &self,
        ret: BasicTypeEnum<'ctx>,
        text: &str,
        constraints: &str,
        effects: Asm,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let ft = ret.fn_type(&arg_types(args)?, false);
        let asm = self.inline_asm(ft, text, constraints, effects);
        self.b
            .build_indirect_call(ft, asm, args, "")?
            .try_as_basic_value()
            .basic()
            .ok_or(LlvmError::Internal("inline asm result"))
    }

    /// A side-effecting inline asm statement that returns `n` f32 values (none: void).
    /// `constraints` lists the outputs first; the call is `convergent`, so that no pass
    /// moves a warp- or warpgroup-collective instruction under a branch.
    fn asm_call(
        &self,
        text: &str,
        constraints: &str,
        n_out: usize,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> R<Vec<FloatValue<'ctx>>> {
        let tys = arg_types(args)?;
        let st = self.ctx.struct_type(&vec![self.f32.into(); n_out], false);
        let ft = match n_out {
            0 => self.ctx.void_type().fn_type(&tys, false),
            1 => self.f32.fn_type(&tys, false),
            _ => st.fn_type(&tys, false),
        };
        let asm = self.inline_asm(ft, text, constraints, Asm::Volatile);
        let cs = self.b.build_indirect_call(ft, asm, args, "")?;
        let conv = self.ctx.create_enum_attribute(
            inkwell::attributes::Attribute::get_named_enum_kind_id("convergent"),
            0,
        );
        cs.add_attribute(inkwell::attributes::AttributeLoc::Function, conv);
        let v = cs.try_as_basic_value().basic();
        match (n_out, v) {
            (0, _) => Ok(Vec::new()),
            (1, Some(v)) => Ok(vec![v.into_float_value()]),
            (_, Some(v)) => {
                let s = v.into_struct_value();
                (0..n_out as u32)
                    .map(|i| Ok(self.b.build_extract_value(s, i, "")?.into_float_value()))
                    .collect()
            }
            _ => Err(LlvmError::Internal("inline asm result")),
        }
    }

    pub fn tid_x(&self) -> R<IntValue<'ctx>> {
        self.call_i("llvm.nvvm.read.ptx.sreg.tid.x", &[])
    }
    pub fn ctaid(&self, axis: char) -> R<IntValue<'ctx>> {
        self.call_i(&format!("llvm.nvvm.read.ptx.sreg.ctaid.{axis}"), &[])
    }
    /// The grid's size along `axis`.
    pub fn nctaid(&self, axis: char) -> R<IntValue<'ctx>> {
        self.call_i(&format!("llvm.nvvm.read.ptx.sreg.nctaid.{axis}"), &[])
    }
    pub fn urem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_unsigned_rem(a, b, "")?)
    }
    /// `bar.sync 0`: every thread of the CTA.
    pub fn barrier(&self) -> R<()> {
        self.call(
            "llvm.nvvm.barrier.cta.sync.aligned.all",
            None,
            &[self.c32(0).into()],
        )?;
        Ok(())
    }
    /// `shfl.sync.bfly` over the full warp.
    pub fn shfl_xor(&self, x: FloatValue<'ctx>, lanes: i64) -> R<FloatValue<'ctx>> {
        self.call_f(
            "llvm.nvvm.shfl.sync.bfly.f32",
            &[
                self.c32(-1).into(),
                x.into(),
                self.c32(lanes).into(),
                self.c32(31).into(),
            ],
        )
    }
    /// `shfl.sync.bfly.b32` over the full warp: the `x` of lane `lane ^ lanes`.
    pub fn shfl_xor_i32(&self, x: IntValue<'ctx>, lanes: i64) -> R<IntValue<'ctx>> {
        self.call_i(
            "llvm.nvvm.shfl.sync.bfly.i32",
            &[
                self.c32(-1).into(),
                x.into(),
                self.c32(lanes).into(),
                self.c32(31).into(),
            ],
        )
    }
    /// `shfl.sync.idx.b32` over the full warp: lane `src`'s `x` (`src` in 0..32).
    pub fn shfl_idx_i32(&self, x: IntValue<'ctx>, src: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.call_i(
            "llvm.nvvm.shfl.sync.idx.i32",
            &[
                self.c32(-1).into(),
                x.into(),
                src.into(),
                self.c32(31).into(),
            ],
        )
    }
    /// `vote.sync.any.pred` over the full warp: whether `p` holds in any lane.
    pub fn vote_any(&self, p: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self
            .call(
                "llvm.nvvm.vote.any.sync",
                Some(self.i1.into()),
                &[self.c32(-1).into(), p.into()],
            )?
            .ok_or(LlvmError::Internal("vote"))?
            .into_int_value())
    }
    /// `vote.sync.all.pred` over the full warp: whether `p` holds in every lane.
    pub fn vote_all(&self, p: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self
            .call(
                "llvm.nvvm.vote.all.sync",
                Some(self.i1.into()),
                &[self.c32(-1).into(), p.into()],
            )?
            .ok_or(LlvmError::Internal("vote.all"))?
            .into_int_value())
    }
    /// `ex2.approx.ftz.f32`: 2^x, max relative error 2^-22 (PTX ISA), subnormals flushed.
    pub fn ex2(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.call_f("llvm.nvvm.ex2.approx.ftz.f32", &[x.into()])
    }
    /// `lg2.approx.f32`: log2(x), max absolute error 2^-22 near 1.
    pub fn lg2(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.call_f("llvm.nvvm.lg2.approx.f", &[x.into()])
    }
    /// `tanh.approx.f32` (sm_75+): max relative error about 2^-11 (PTX ISA).
    pub fn tanh(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.asm_f("tanh.approx.f32 $0, $1;", x)
    }
    /// `rcp.approx.ftz.f32`: 1/x, max relative error 1 ulp (PTX ISA), subnormals flushed.
    /// Inline, where IEEE `rcp.rn.f32` is a ptxas subroutine: in a relocatable compile
    /// (the driver's linker) such a call serializes every wgmma of the kernel (C7509).
    pub fn rcp(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.asm_f("rcp.approx.ftz.f32 $0, $1;", x)
    }
    /// `mov.b32` of `x` as a volatile inline statement: a second register with x's value
    /// that LLVM neither merges with `x` nor moves across other volatile statements (a
    /// wgmma accumulator input that must be its own register before `wgmma.fence`).
    pub fn fcopy(&self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self
            .asm_value(
                self.f32.into(),
                "mov.b32 $0, $1;",
                "=f,f",
                Asm::Volatile,
                &[x.into()],
            )?
            .into_float_value())
    }
    /// `mov.b32` / `mov.b64` of `x` (an i32 or i64) as a pure inline statement: the same
    /// value, whose bits LLVM no longer knows and which it merges with no computation
    /// outside the blocks this one dominates (so a later `add` of a constant stays an `add`
    /// instead of an `or` of the low word where it can prove the low bits zero; a position
    /// made in one element path is not taken from another's).
    pub fn opaque(&self, x: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let wide = x.get_type().get_bit_width() == 64;
        let (ty, asm, cons) = if wide {
            (self.i64, "mov.b64 $0, $1;", "=l,l")
        } else {
            (self.i32, "mov.b32 $0, $1;", "=r,r")
        };
        Ok(self
            .asm_value(ty.into(), asm, cons, Asm::Pure, &[x.into()])?
            .into_int_value())
    }
    /// `div.full.f32`: x / y, max error 2 ulp over the full range (PTX ISA), inline (IEEE
    /// `div.rn.f32` is a subroutine call: see [`Self::rcp`]). A division by a constant
    /// power of two (whose reciprocal is a normal f32) is the multiplication by its
    /// reciprocal instead: the same correctly rounded result, one FMUL.
    pub fn fdiv(&self, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        if let Some(r) = y
            .get_constant()
            .and_then(|(c, _)| exact_reciprocal(c as f32))
        {
            return self.fmul(x, self.cf(r));
        }
        Ok(self
            .asm_value(
                self.f32.into(),
                "div.full.f32 $0, $1, $2;",
                "=f,f,f",
                Asm::Pure,
                &[x.into(), y.into()],
            )?
            .into_float_value())
    }
    pub fn fintr(&self, name: &str, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.call_f(name, &[x.into()])
    }
    pub fn fintr2(
        &self,
        name: &str,
        x: FloatValue<'ctx>,
        y: FloatValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        self.call_f(name, &[x.into(), y.into()])
    }
    /// `a * b + c` with one rounding (`llvm.fma.f32`).
    pub fn fma(
        &self,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        c: FloatValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        self.call_f("llvm.fma.f32", &[a.into(), b.into(), c.into()])
    }
    pub fn iintr2(&self, name: &str, x: IntValue<'ctx>, y: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.call_i(name, &[x.into(), y.into()])
    }

    // ---- memory ----------------------------------------------------------------------------

    /// `base + index * size_of(elem)` in the global address space (index is i64).
    pub fn gep_bytes(
        &self,
        base: PointerValue<'ctx>,
        byte_off: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        // SAFETY: the kernel computes in-range offsets (clamped or predicated loads).
        Ok(unsafe {
            self.b
                .build_gep(self.ctx.i8_type(), base, &[byte_off], "")?
        })
    }
    pub fn load_i32(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let idx = if index.get_type().get_bit_width() == 64 {
            index
        } else {
            self.sext64(index)?
        };
        // SAFETY: see gep_bytes.
        let p = unsafe { self.b.build_gep(self.i32, base, &[idx], "")? };
        Ok(self.b.build_load(self.i32, p, "")?.into_int_value())
    }
    pub fn load_f32(&self, base: PointerValue<'ctx>, index: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let idx = if index.get_type().get_bit_width() == 64 {
            index
        } else {
            self.sext64(index)?
        };
        // SAFETY: see gep_bytes.
        let p = unsafe { self.b.build_gep(self.f32, base, &[idx], "")? };
        Ok(self.b.build_load(self.f32, p, "")?.into_float_value())
    }
    pub fn store<V: BasicValue<'ctx>>(&self, ptr: PointerValue<'ctx>, v: V) -> R<()> {
        self.b.build_store(ptr, v)?;
        Ok(())
    }
    /// A pointer into dynamic shared memory at a byte offset.
    pub fn smem_at(&self, byte_off: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        // SAFETY: offsets stay inside the dynamic shared memory the launch reserves.
        Ok(unsafe {
            self.b.build_gep(
                self.ctx.i8_type(),
                self.smem.as_pointer_value(),
                &[byte_off],
                "",
            )?
        })
    }
    /// `cp.async.cg.shared.global [dst], [src], 16, src_size`: bytes past `src_size` are zero.
    pub fn cp_async16(
        &self,
        dst: PointerValue<'ctx>,
        src: PointerValue<'ctx>,
        src_size: IntValue<'ctx>,
    ) -> R<()> {
        self.call(
            "llvm.nvvm.cp.async.cg.shared.global.16.s",
            None,
            &[dst.into(), src.into(), src_size.into()],
        )?;
        Ok(())
    }
    /// [`Self::cp_async16`] with a 32-bit shared-window destination `dst + imm` (`dst`
    /// from [`Self::smem_addr32`], `imm` a constant in the instruction) and `src` a global
    /// pointer; `src_size` `None`: all 16 bytes read (no zero fill).
    /// `qualifiers` after `.global`: e.g. `.L2::256B` (the L2 fetches the 256-byte piece
    /// around the source from memory at once), or none.
    pub fn cp_async16_smem32_with(
        &self,
        dst: IntValue<'ctx>,
        imm: u32,
        src: PointerValue<'ctx>,
        src_size: Option<IntValue<'ctx>>,
        qualifiers: &str,
    ) -> R<()> {
        let src = self.b.build_ptr_to_int(src, self.i64, "")?;
        match src_size {
            Some(n) => self.asm_void(
                &format!("cp.async.cg.shared.global{qualifiers} [$0+{imm}], [$1], 16, $2;"),
                "r,l,r,~{memory}",
                &[dst, src, n],
            ),
            None => self.asm_void(
                &format!("cp.async.cg.shared.global{qualifiers} [$0+{imm}], [$1], 16;"),
                "r,l,~{memory}",
                &[dst, src],
            ),
        }
    }

    pub fn cp_async_commit(&self) -> R<()> {
        self.call("llvm.nvvm.cp.async.commit.group", None, &[])?;
        Ok(())
    }
    /// Waits until at most `n` committed groups of this thread are still in flight.
    pub fn cp_async_wait(&self, n: i64) -> R<()> {
        self.call("llvm.nvvm.cp.async.wait.group", None, &[self.c32(n).into()])?;
        Ok(())
    }
    /// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16`: four 8x8 matrices, lane `l`
    /// giving the address of row `l % 8` of matrix `l / 8`.
    pub fn ldmatrix_x4(&self, addr: PointerValue<'ctx>, trans: bool) -> R<[IntValue<'ctx>; 4]> {
        let name = if trans {
            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.trans.b16.p3"
        } else {
            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.b16.p3"
        };
        let st = self.ctx.struct_type(&[self.i32.into(); 4], false);
        let v = self
            .call(name, Some(st.into()), &[addr.into()])?
            .ok_or(LlvmError::Internal("ldmatrix"))?;
        let s = v.into_struct_value();
        let mut out = [self.c32(0); 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self
                .b
                .build_extract_value(s, i as u32, "")?
                .into_int_value();
        }
        Ok(out)
    }
    /// `stmatrix.sync.aligned.m8n8.x4.shared.b16` (sm_90): four 8x8 matrices of 16-bit
    /// elements, lane `l` giving the (16-byte aligned) address of row `l % 8` of matrix
    /// `l / 8`; register `m` of lane `l` holds matrix `m`'s elements (row `l / 4`, columns
    /// `2 (l % 4)` in the low and `2 (l % 4) + 1` in the high 16 bits): the inverse of
    /// [`Self::ldmatrix_x4`] without `.trans`, the accumulator fragments' layout.
    pub fn stmatrix_x4(&self, addr: PointerValue<'ctx>, r: [IntValue<'ctx>; 4]) -> R<()> {
        self.stmatrix_call("llvm.nvvm.stmatrix.sync.aligned.m8n8.x4.b16.p3", addr, r)
    }
    /// [`Self::stmatrix_x4`] with `.trans`: each 8x8 matrix stored transposed (lane `l`
    /// gives the address of memory row `l % 8` of matrix `l / 8`, which receives column
    /// `l % 8` of the fragment matrix: register `m` of lane `l`, row `l / 4`, columns
    /// `2 (l % 4)`, `+ 1`, lands in memory rows `2 (l % 4)`, `+ 1` at column `l / 4`).
    pub fn stmatrix_x4_trans(&self, addr: PointerValue<'ctx>, r: [IntValue<'ctx>; 4]) -> R<()> {
        self.stmatrix_call(
            "llvm.nvvm.stmatrix.sync.aligned.m8n8.x4.trans.b16.p3",
            addr,
            r,
        )
    }
    /// The `stmatrix` intrinsic `name` with its address and four registers.
    fn stmatrix_call(&self, name: &str, addr: PointerValue<'ctx>, r: [IntValue<'ctx>; 4]) -> R<()> {
        let args = [
            addr.into(),
            r[0].into(),
            r[1].into(),
            r[2].into(),
            r[3].into(),
        ];
        self.call(name, None, &args)?;
        Ok(())
    }
    /// Two f32 at byte offset `off` (8-byte aligned) of the dynamic shared memory, one
    /// `ld.shared.v2.f32`.
    pub fn ld_shared_v2(&self, off: IntValue<'ctx>) -> R<[FloatValue<'ctx>; 2]> {
        let ld = self
            .b
            .build_load(self.f32.vec_type(2), self.smem_at(off)?, "")?;
        ld.as_instruction_value()
            .ok_or(LlvmError::Internal("load"))?
            .set_alignment(8)
            .map_err(|_| LlvmError::Internal("alignment"))?;
        let v = ld.into_vector_value();
        Ok([
            self.b
                .build_extract_element(v, self.c32(0), "")?
                .into_float_value(),
            self.b
                .build_extract_element(v, self.c32(1), "")?
                .into_float_value(),
        ])
    }
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32`: `c + a * b`.
    pub fn mma(
        &self,
        ty: InputType,
        a: &[IntValue<'ctx>; 4],
        b: &[IntValue<'ctx>; 2],
        c: &[FloatValue<'ctx>; 4],
    ) -> R<[FloatValue<'ctx>; 4]> {
        let st = self.ctx.struct_type(&[self.f32.into(); 4], false);
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::with_capacity(10);
        let name = match ty {
            InputType::Bf16 => {
                args.extend(
                    a.iter()
                        .chain(b.iter())
                        .map(|x| BasicMetadataValueEnum::from(*x)),
                );
                "llvm.nvvm.mma.m16n8k16.row.col.bf16"
            }
            InputType::F16 => {
                let h2 = self.ctx.f16_type().vec_type(2);
                for x in a.iter().chain(b.iter()) {
                    args.push(self.b.build_bit_cast(*x, h2, "")?.into());
                }
                "llvm.nvvm.mma.m16n8k16.row.col.f32.f32"
            }
        };
        args.extend(c.iter().map(|x| BasicMetadataValueEnum::from(*x)));
        let v = self
            .call(name, Some(st.into()), &args)?
            .ok_or(LlvmError::Internal("mma"))?;
        let s = v.into_struct_value();
        let mut out = [self.cf(0.0); 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self
                .b
                .build_extract_value(s, i as u32, "")?
                .into_float_value();
        }
        Ok(out)
    }
    // ---- Hopper wgmma (sm_90a) ----------------------------------------------------------------

    /// `fence.proxy.async.shared::cta`: this thread's earlier shared-memory writes (ordinary
    /// stores and `cp.async`) become visible to the async proxy (the wgmma operand reads)
    /// once a barrier follows.
    pub fn fence_proxy_async(&self) -> R<()> {
        self.asm_call("fence.proxy.async.shared::cta;", "~{memory}", 0, &[])?;
        Ok(())
    }
    /// `wgmma.fence.sync.aligned`: orders this warpgroup's register accesses before the
    /// `wgmma.mma_async` that follow (needed whenever accumulators or A fragments were
    /// written since the last wgmma).
    pub fn wgmma_fence(&self) -> R<()> {
        self.asm_call("wgmma.fence.sync.aligned;", "~{memory}", 0, &[])?;
        Ok(())
    }
    /// `wgmma.commit_group.sync.aligned`: the wgmma issued so far form one group.
    pub fn wgmma_commit(&self) -> R<()> {
        self.asm_call("wgmma.commit_group.sync.aligned;", "~{memory}", 0, &[])?;
        Ok(())
    }
    /// `wgmma.wait_group.sync.aligned n`, threading the accumulators `regs` through the
    /// statement: the values returned are defined only after the wait, so no read of an
    /// accumulator can move above it.
    pub fn wgmma_wait(&self, n: u32, regs: &[FloatValue<'ctx>]) -> R<Vec<FloatValue<'ctx>>> {
        self.wgmma_wait_note(n, regs, "")
    }
    /// [`Self::wgmma_wait`] with a PTX comment after it (`note`, if not empty): two waits
    /// with different notes are different asm to LLVM, which so does not merge them.
    pub fn wgmma_wait_note(
        &self,
        n: u32,
        regs: &[FloatValue<'ctx>],
        note: &str,
    ) -> R<Vec<FloatValue<'ctx>>> {
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" // {note}")
        };
        let k = regs.len();
        let mut cons: Vec<String> = (0..k).map(|_| "=f".to_string()).collect();
        cons.extend((0..k).map(|i| i.to_string()));
        cons.push("~{memory}".into());
        let args: Vec<BasicMetadataValueEnum<'ctx>> = regs.iter().map(|r| (*r).into()).collect();
        self.asm_call(
            &format!("wgmma.wait_group.sync.aligned {n};{note}"),
            &cons.join(","),
            k,
            &args,
        )
    }
    /// The shared-memory window address of byte `off` of the dynamic shared memory (i32).
    pub fn smem_addr32(&self, off: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let base = self
            .b
            .build_ptr_to_int(self.smem.as_pointer_value(), self.i64, "")?;
        let base = self.b.build_int_truncate(base, self.i32, "")?;
        self.add(base, off)
    }
    /// A wgmma shared-memory matrix descriptor with the 128-byte swizzle: start address
    /// `addr` (a shared-window byte address, 16-byte aligned, its swizzle atom 1024-byte
    /// aligned), leading and stride byte offsets `lbo`, `sbo` (multiples of 16).
    pub fn wgmma_desc(&self, addr: IntValue<'ctx>, lbo: u32, sbo: u32) -> R<IntValue<'ctx>> {
        let lo = self.and(self.lshr(addr, self.c32(4))?, self.c32(0x3fff))?;
        let hi =
            ((lbo as u64 >> 4) & 0x3fff) << 16 | ((sbo as u64 >> 4) & 0x3fff) << 32 | 1u64 << 62;
        self.or(self.zext64(lo)?, self.i64.const_int(hi, false))
    }
    /// The low word of [`Self::wgmma_desc`] for `addr` and `lbo` (start address and
    /// leading byte offset): [`Self::wgmma_desc_at`] derives the descriptors of
    /// `addr + off` from it with one 32-bit add each.
    pub fn wgmma_desc_lo(&self, addr: IntValue<'ctx>, lbo: u32) -> R<IntValue<'ctx>> {
        let lo = self.and(self.lshr(addr, self.c32(4))?, self.c32(0x3fff))?;
        self.or(lo, self.c32((((lbo >> 4) & 0x3fff) << 16) as i64))
    }
    /// [`Self::wgmma_desc`] of `addr + off` (`off` a multiple of 16) from `lo` =
    /// [`Self::wgmma_desc_lo`] of `addr`: the start-address field plus `off / 16`. The
    /// same value: a shared-window address is below 2^18, so the 14-bit field of
    /// `addr + off` is `addr / 16 + off / 16` and the add carries into no other field.
    pub fn wgmma_desc_at(&self, lo: IntValue<'ctx>, off: u32, sbo: u32) -> R<IntValue<'ctx>> {
        debug_assert!(off.is_multiple_of(16));
        let lo = if off == 0 {
            lo
        } else {
            self.add(lo, self.c32((off >> 4) as i64))?
        };
        let hi = ((sbo as u64 >> 4) & 0x3fff) << 32 | 1u64 << 62;
        self.or(self.zext64(lo)?, self.i64.const_int(hi, false))
    }
    /// [`Self::wgmma_desc_at`] of offset 0 as one 64-bit value, from which
    /// [`Self::wgmma_desc_step`] derives the descriptor of `addr + off` with one 64-bit add.
    /// (Through [`Self::opaque`]: LLVM would otherwise turn the adds of the first
    /// k-steps, whose bits it proves disjoint from an aligned base's, into `or`s of the
    /// low word, which ptxas again joins with the high word per descriptor.)
    pub fn wgmma_desc_base(&self, lo: IntValue<'ctx>, sbo: u32) -> R<IntValue<'ctx>> {
        self.opaque(self.wgmma_desc_at(lo, 0, sbo)?)
    }
    /// [`Self::wgmma_desc_at`] of `off` (a multiple of 16) from `base` =
    /// [`Self::wgmma_desc_base`]: `base + off / 16` as a 64-bit add (the same value: the
    /// start-address field does not carry, see [`Self::wgmma_desc_at`]), which ptxas
    /// issues as one `UIADD3.64` per descriptor instead of a 32-bit add and a move of the
    /// constant high word.
    pub fn wgmma_desc_step(&self, base: IntValue<'ctx>, off: u32) -> R<IntValue<'ctx>> {
        debug_assert!(off.is_multiple_of(16));
        if off == 0 {
            return Ok(base);
        }
        self.add(base, self.c64((off >> 4) as i64))
    }
    /// `wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty}`: this warpgroup's 64 x n f32
    /// accumulator (`n / 2` registers per thread, in m16n8 accumulator order per n8 chunk)
    /// `= acc + A B` (`acc` None: `= A B`). A is a K-major shared-memory descriptor or four
    /// registers of the m16n8k16 A-fragment layout (per warp, its 16 rows); B is a
    /// shared-memory descriptor, K-major or, with `trans_b`, N-major. Asynchronous: the
    /// results may be read only after `wgmma_commit` and `wgmma_wait`.
    pub fn wgmma(
        &self,
        ty: InputType,
        n: u32,
        a: WgmmaA<'ctx>,
        b_desc: IntValue<'ctx>,
        trans_b: bool,
        acc: Option<&[FloatValue<'ctx>]>,
    ) -> R<Vec<FloatValue<'ctx>>> {
        self.wgmma_t(ty, n, a, false, b_desc, trans_b, acc)
    }
    /// [`Self::wgmma`] with A, when it is a shared-memory descriptor, M-major (`trans_a`:
    /// the tile's rows are the reduction dimension, as a `trans_b` B's are; 16-bit types).
    #[allow(clippy::too_many_arguments)]
    pub fn wgmma_t(
        &self,
        ty: InputType,
        n: u32,
        a: WgmmaA<'ctx>,
        trans_a: bool,
        b_desc: IntValue<'ctx>,
        trans_b: bool,
        acc: Option<&[FloatValue<'ctx>]>,
    ) -> R<Vec<FloatValue<'ctx>>> {
        let k = n as usize / 2;
        if acc.is_some_and(|a| a.len() != k) {
            return Err(LlvmError::Internal("wgmma accumulator count"));
        }
        let t = ty.name();
        let mut cons: Vec<String> = (0..k).map(|_| "=f".to_string()).collect();
        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::new();
        if let Some(acc) = acc {
            cons.extend((0..k).map(|i| i.to_string()));
            args.extend(acc.iter().map(|x| BasicMetadataValueEnum::from(*x)));
        }
        let mut next = cons.len();
        let d_list = (0..k)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let a_text = match a {
            WgmmaA::Desc(d) => {
                cons.push("l".into());
                args.push(d.into());
                next += 1;
                format!("${}", next - 1)
            }
            WgmmaA::Regs(r) => {
                let s = (0..4)
                    .map(|i| format!("${}", next + i))
                    .collect::<Vec<_>>()
                    .join(",");
                for x in r {
                    cons.push("r".into());
                    args.push(x.into());
                }
                next += 4;
                format!("{{{s}}}")
            }
        };
        cons.push("l".into());
        args.push(b_desc.into());
        let b_text = format!("${next}");
        // scale-d (a predicate): accumulate onto `acc`, or overwrite
        cons.push("r".into());
        args.push(self.c32(acc.is_some() as i64).into());
        let scale_d = format!("${}", next + 1);
        let tail = match a {
            WgmmaA::Desc(_) => format!("p, 1, 1, {}, {}", trans_a as u32, trans_b as u32),
            WgmmaA::Regs(_) => format!("p, 1, 1, {}", trans_b as u32),
        };
        cons.push("~{memory}".into());
        let text = format!(
            "{{\n.reg .pred p;\nsetp.ne.b32 p, {scale_d}, 0;\nwgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t} {{{d_list}}}, {a_text}, {b_text}, {tail};\n}}"
        );
        self.asm_call(&text, &cons.join(","), k, &args)
    }

    // ---- ordered global reductions (the fused backward's dQ) ---------------------------------

    /// Spins (this thread) until the u32 at global address `addr` (i64) equals `want`:
    /// `ld.acquire.gpu.global.u32` in a loop, so that what the writer released before its
    /// increment ([`Self::release_inc`]) is visible to this thread's later accesses (and,
    /// after a barrier, to its CTA's).
    pub fn spin_until_eq(&self, addr: IntValue<'ctx>, want: IntValue<'ctx>) -> R<()> {
        let wait = self.block("sem_wait");
        let done = self.block("sem_done");
        self.br(wait)?;
        self.b.position_at_end(wait);
        let v = self.asm_i32(
            "ld.acquire.gpu.global.u32 $0, [$1];",
            "=r,l,~{memory}",
            &[addr],
        )?;
        self.cond_br(self.icmp(IntPredicate::EQ, v, want)?, done, wait)?;
        self.b.position_at_end(done);
        Ok(())
    }
    /// `fence.acq_rel.gpu; red.relaxed.gpu.global.add.u32 [addr], 1` (this thread): every
    /// write that happens before the fence (this CTA's, when a barrier precedes it) is
    /// visible to a thread that sees the new count with [`Self::spin_until_eq`].
    pub fn release_inc(&self, addr: IntValue<'ctx>) -> R<()> {
        self.asm_void(
            "fence.acq_rel.gpu;\nred.relaxed.gpu.global.add.u32 [$0], 1;",
            "l,~{memory}",
            &[addr],
        )
    }
    /// `fence.acq_rel.gpu; atom.relaxed.gpu.global.add.u32 old, [addr], 1; fence.acq_rel.gpu`
    /// (this thread), returning the count before the add: every write that happens before
    /// the first fence (this CTA's, when a barrier precedes it) is visible to the thread
    /// that sees the last count, after its second fence (and, after a barrier, to its CTA).
    pub fn acq_rel_inc(&self, addr: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.asm_i32(
            "fence.acq_rel.gpu;\natom.relaxed.gpu.global.add.u32 $0, [$1], 1;\nfence.acq_rel.gpu;",
            "=r,l,~{memory}",
            &[addr],
        )
    }
    /// `fence.acq_rel.gpu; atom.relaxed.gpu.global.add.u32 old, [addr], val;
    /// fence.acq_rel.gpu` (this thread): as [`Self::acq_rel_inc`], adding `val`.
    pub fn acq_rel_add(&self, addr: IntValue<'ctx>, val: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.asm_i32(
            "fence.acq_rel.gpu;\natom.relaxed.gpu.global.add.u32 $0, [$1], $2;\nfence.acq_rel.gpu;",
            "=r,l,r,~{memory}",
            &[addr, val],
        )
    }
    /// `fence.acq_rel.gpu; red.relaxed.gpu.global.add.u32 [addr], val` (this thread): as
    /// [`Self::release_inc`], adding `val`.
    pub fn release_add(&self, addr: IntValue<'ctx>, val: IntValue<'ctx>) -> R<()> {
        self.asm_void(
            "fence.acq_rel.gpu;\nred.relaxed.gpu.global.add.u32 [$0], $1;",
            "l,r,~{memory}",
            &[addr, val],
        )
    }
    /// `ld.acquire.gpu.global.u32` of `addr` (once).
    pub fn load_acquire_u32(&self, addr: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.asm_i32(
            "ld.acquire.gpu.global.u32 $0, [$1];",
            "=r,l,~{memory}",
            &[addr],
        )
    }
    /// `nanosleep.u32 ns` (sm_70+): this thread sleeps about `ns` nanoseconds.
    pub fn nanosleep(&self, ns: u32) -> R<()> {
        self.asm_void(&format!("nanosleep.u32 {ns};"), "~{memory}", &[])
    }
    /// `fence.acq_rel.gpu` (this thread).
    pub fn fence_acq_rel_gpu(&self) -> R<()> {
        self.asm_void("fence.acq_rel.gpu;", "~{memory}", &[])
    }
    /// `griddepcontrol.launch_dependents` (sm_90): this CTA lets the grid launched after it
    /// with programmatic stream serialization start (once every CTA of this grid has said
    /// so or exited); that grid's [`Self::griddep_wait`] still waits for this whole grid.
    /// A no-op when no such grid follows.
    pub fn griddep_launch_dependents(&self) -> R<()> {
        self.asm_void("griddepcontrol.launch_dependents;", "~{memory}", &[])
    }
    /// `griddepcontrol.wait` (sm_90): waits until the grids this one depends on (launched
    /// before it with programmatic stream serialization) have completed and their memory
    /// is visible. A no-op for a grid launched without that attribute.
    pub fn griddep_wait(&self) -> R<()> {
        self.asm_void("griddepcontrol.wait;", "~{memory}", &[])
    }
    /// A `volatile` f32 load (`ld.volatile.global`: never served from a stale L1 line)
    /// of `base[index]` (index i64): data another CTA of the same launch wrote.
    pub fn load_f32_volatile(
        &self,
        base: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        // SAFETY: see gep_bytes.
        let p = unsafe { self.b.build_gep(self.f32, base, &[index], "")? };
        let v = self.b.build_load(self.f32, p, "")?;
        if let Some(i) = v.as_instruction_value() {
            i.set_volatile(true)
                .map_err(|_| LlvmError::Internal("volatile load"))?;
        }
        Ok(v.into_float_value())
    }
    /// Where `store` (an i32) is non-zero `st.global.v4.f32 [addr], {v}`, else
    /// `red.relaxed.gpu.global.add.v4.f32` (sm_90, PTX 8.1): predicated inside one statement, so that no branch separates
    /// an in-flight wgmma from its wait (ptxas serializes wgmma across divergent paths).
    pub fn st_or_red_v4(
        &self,
        addr: IntValue<'ctx>,
        v: [FloatValue<'ctx>; 4],
        store: IntValue<'ctx>,
    ) -> R<()> {
        let args: Vec<BasicMetadataValueEnum<'ctx>> = std::iter::once(addr.into())
            .chain(v.iter().map(|x| (*x).into()))
            .chain(std::iter::once(store.into()))
            .collect();
        self.asm_call(
            "{\n.reg .pred p;\nsetp.ne.b32 p, $5, 0;\n@p st.global.v4.f32 [$0], {$1, $2, $3, $4};\n@!p red.relaxed.gpu.global.add.v4.f32 [$0], {$1, $2, $3, $4};\n}",
            "l,f,f,f,f,r,~{memory}",
            0,
            &args,
        )?;
        Ok(())
    }

    /// One bulk copy (TMA, one thread) of `bytes` from shared-window address `src` (i32,
    /// 16-byte aligned) to global address `dst` (i64, 16-byte aligned), committed as its
    /// own bulk group: where `store` (i32) is non-zero `cp.async.bulk` (a plain copy),
    /// else `cp.reduce.async.bulk ... .add.f32` (element-wise f32 addition into global
    /// memory). Predicated inside one statement (no branch).
    pub fn bulk_store_or_add_f32(
        &self,
        dst: IntValue<'ctx>,
        src: IntValue<'ctx>,
        bytes: u32,
        store: IntValue<'ctx>,
    ) -> R<()> {
        self.asm_void(
            &format!(
                "{{\n.reg .pred p;\nsetp.ne.b32 p, $2, 0;\n@p cp.async.bulk.global.shared::cta.bulk_group [$0], [$1], {bytes};\n@!p cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [$0], [$1], {bytes};\ncp.async.bulk.commit_group;\n}}"
            ),
            "l,r,r,~{memory}",
            &[dst, src, store],
        )
    }
    /// `cp.async.bulk.wait_group.read n` (`read`: until at most `n` of this thread's bulk
    /// groups still read their shared-memory source) or `cp.async.bulk.wait_group n`
    /// (until at most `n` are incomplete, their writes done).
    pub fn bulk_wait(&self, read: bool, n: u32) -> R<()> {
        let r = if read { ".read" } else { "" };
        self.asm_void(
            &format!("cp.async.bulk.wait_group{r} {n};"),
            "~{memory}",
            &[],
        )
    }
    /// `fence.proxy.async.global`: orders this thread's global-memory accesses through
    /// the generic proxy (a semaphore's acquire or release) with those of the async proxy
    /// (bulk copies), both ways.
    pub fn fence_proxy_async_global(&self) -> R<()> {
        self.asm_void("fence.proxy.async.global;", "~{memory}", &[])
    }
    /// `st.shared.v4.f32 [off], v` at byte offset `off` (16-byte aligned) of the dynamic
    /// shared memory.
    pub fn st_shared_v4(&self, off: IntValue<'ctx>, v: [FloatValue<'ctx>; 4]) -> R<()> {
        let mut x = self.f32.vec_type(4).get_undef();
        for (i, e) in v.iter().enumerate() {
            x = self.b.build_insert_element(x, *e, self.c32(i as i64), "")?;
        }
        let st = self.b.build_store(self.smem_at(off)?, x)?;
        st.set_alignment(16)
            .map_err(|_| LlvmError::Internal("alignment"))?;
        Ok(())
    }

    /// At shared-window address `addr` (i32, 16-byte aligned), where `active` (i32) is
    /// non-zero: `[addr] = v` if `store` (i32) is non-zero, else `[addr] = [addr] + v`
    /// (four f32, the value in memory first). One statement, predicated (no branch, so
    /// no divergent path under asynchronous wgmma), in program order with the memory
    /// statements around it.
    pub fn st_if_or_add_shared_v4(
        &self,
        addr: IntValue<'ctx>,
        v: [FloatValue<'ctx>; 4],
        store: IntValue<'ctx>,
        active: IntValue<'ctx>,
    ) -> R<()> {
        let args: Vec<BasicMetadataValueEnum<'ctx>> = std::iter::once(addr.into())
            .chain(v.iter().map(|x| (*x).into()))
            .chain([store.into(), active.into()])
            .collect();
        self.asm_call(
            "{\n.reg .pred p, q, s, a;\n.reg .f32 w<4>;\nsetp.ne.b32 p, $6, 0;\nsetp.ne.b32 q, $5, 0;\nand.pred s, p, q;\nand.pred a, p, !q;\n@s st.shared.v4.f32 [$0], {$1, $2, $3, $4};\n@a ld.shared.v4.f32 {w0, w1, w2, w3}, [$0];\n@a add.rn.f32 w0, w0, $1;\n@a add.rn.f32 w1, w1, $2;\n@a add.rn.f32 w2, w2, $3;\n@a add.rn.f32 w3, w3, $4;\n@a st.shared.v4.f32 [$0], {w0, w1, w2, w3};\n}",
            "r,f,f,f,f,r,r,~{memory}",
            0,
            &args,
        )?;
        Ok(())
    }

    /// A side-effecting inline asm statement with one i32 result.
    fn asm_i32(&self, text: &str, constraints: &str, args: &[IntValue<'ctx>]) -> R<IntValue<'ctx>> {
        let args: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|a| (*a).into()).collect();
        Ok(self
            .asm_value(self.i32.into(), text, constraints, Asm::Volatile, &args)?
            .into_int_value())
    }
    /// `%globaltimer`'s low 32 bits (ns; a diagnostic: `decode_mma::COPY_TRACE`), read
    /// where the statement stands (a side-effecting asm: not moved or merged).
    pub fn globaltimer_lo(&self) -> R<IntValue<'ctx>> {
        self.asm_i32("mov.u32 $0, %globaltimer_lo;", "=r,~{memory}", &[])
    }
    /// `%smid`: the SM this thread runs on (a diagnostic: `decode_mma::COPY_TRACE`).
    pub fn smid(&self) -> R<IntValue<'ctx>> {
        self.asm_i32("mov.u32 $0, %smid;", "=r", &[])
    }
    /// `ld.shared.u32` at shared-window address `addr` (ordered with the mbarrier
    /// statements around it: an asm statement that clobbers memory).
    pub fn ld_shared_u32(&self, addr: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.asm_i32("ld.shared.u32 $0, [$1];", "=r,r,~{memory}", &[addr])
    }
    /// `st.shared.u32 [addr], v` at shared-window address `addr`.
    pub fn st_shared_u32(&self, addr: IntValue<'ctx>, v: IntValue<'ctx>) -> R<()> {
        self.asm_void("st.shared.u32 [$0], $1;", "r,r,~{memory}", &[addr, v])
    }
    /// `atom.relaxed.gpu.global.add.u32 old, [addr], 1` (this thread; `addr` an i64
    /// global address): the count before the add.
    pub fn atom_inc_relaxed(&self, addr: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        self.asm_i32(
            "atom.relaxed.gpu.global.add.u32 $0, [$1], 1;",
            "=r,l,~{memory}",
            &[addr],
        )
    }
    /// [`Self::atom_inc_relaxed`] by the threads whose `who` is 0 (predicated in one
    /// statement, no branch: the result register is waited on only where it is used);
    /// 0 for the others.
    pub fn atom_inc_relaxed_if_zero(
        &self,
        who: IntValue<'ctx>,
        addr: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        self.asm_i32(
            "{ .reg .pred p; setp.eq.u32 p, $1, 0; mov.u32 $0, 0; @p atom.relaxed.gpu.global.add.u32 $0, [$2], 1; }",
            "=r,r,l,~{memory}",
            &[who, addr],
        )
    }
    /// `st.relaxed.gpu.global.u32 [addr], v` (`addr` an i64 global address).
    pub fn st_global_u32(&self, addr: IntValue<'ctx>, v: IntValue<'ctx>) -> R<()> {
        self.asm_void(
            "st.relaxed.gpu.global.u32 [$0], $1;",
            "l,r,~{memory}",
            &[addr, v],
        )
    }

    // ---- Hopper warp specialization: mbarriers, TMA, named barriers, setmaxnreg ------------

    /// A side-effecting, convergent inline asm statement with no result.
    fn asm_void(&self, text: &str, constraints: &str, args: &[IntValue<'ctx>]) -> R<()> {
        let args: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|a| (*a).into()).collect();
        self.asm_call(text, constraints, 0, &args)?;
        Ok(())
    }
    /// `bar.sync id, n`: waits until `n` threads (a multiple of 32) have arrived at named
    /// barrier `id` (1..=15; 0 is the CTA-wide [`Self::barrier`]), this warp's included.
    pub fn bar_sync(&self, id: u32, n: u32) -> R<()> {
        self.asm_void(&format!("bar.sync {id}, {n};"), "~{memory}", &[])
    }
    /// `bar.arrive id, n`: this warp arrives at named barrier `id` without waiting.
    pub fn bar_arrive(&self, id: u32, n: u32) -> R<()> {
        self.asm_void(&format!("bar.arrive {id}, {n};"), "~{memory}", &[])
    }
    /// [`Self::bar_sync`] with the barrier id in a register.
    pub fn bar_sync_reg(&self, id: IntValue<'ctx>, n: u32) -> R<()> {
        self.asm_void(&format!("bar.sync $0, {n};"), "r,~{memory}", &[id])
    }
    /// [`Self::bar_arrive`] with the barrier id in a register.
    pub fn bar_arrive_reg(&self, id: IntValue<'ctx>, n: u32) -> R<()> {
        self.asm_void(&format!("bar.arrive $0, {n};"), "r,~{memory}", &[id])
    }
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n` (sm_90a): this warpgroup's registers per
    /// thread become `n` (a multiple of 8 in 24..=256). Every warp of the warpgroup runs
    /// it; the kernel needs a register cap at entry (`.maxntid` with `.minnctapersm`).
    pub fn setmaxnreg(&self, inc: bool, n: u32) -> R<()> {
        let op = if inc { "inc" } else { "dec" };
        self.asm_void(
            &format!("setmaxnreg.{op}.sync.aligned.u32 {n};"),
            "~{memory}",
            &[],
        )
    }
    /// `mbarrier.init.shared::cta.b64 [bar], count` (`bar`: a shared-window address).
    pub fn mbar_init(&self, bar: IntValue<'ctx>, count: u32) -> R<()> {
        self.asm_void(
            &format!("mbarrier.init.shared::cta.b64 [$0], {count};"),
            "r,~{memory}",
            &[bar],
        )
    }
    /// `fence.mbarrier_init.release.cluster`: the mbarrier inits above become visible to
    /// the async proxy (TMA's complete_tx) once a barrier follows.
    pub fn fence_mbar_init(&self) -> R<()> {
        self.asm_void("fence.mbarrier_init.release.cluster;", "~{memory}", &[])
    }
    /// `mbarrier.arrive.shared::cta.b64`: one arrival of this thread at `bar`.
    pub fn mbar_arrive(&self, bar: IntValue<'ctx>) -> R<()> {
        self.asm_void(
            "mbarrier.arrive.shared::cta.b64 _, [$0];",
            "r,~{memory}",
            &[bar],
        )
    }
    /// `mbarrier.arrive.expect_tx.shared::cta.b64`: one arrival at `bar` that also makes
    /// the current phase wait for `bytes` more bytes of asynchronous copies.
    pub fn mbar_arrive_expect_tx(&self, bar: IntValue<'ctx>, bytes: u32) -> R<()> {
        self.asm_void(
            &format!("mbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], {bytes};"),
            "r,~{memory}",
            &[bar],
        )
    }
    /// [`Self::mbar_arrive_expect_tx`] that returns the arrival's state (a 64-bit token of
    /// the phase it arrived in, for [`Self::mbar_wait_state`]): a thread that waits for its
    /// own copies without keeping the barrier's parity.
    pub fn mbar_arrive_expect_tx_state(
        &self,
        bar: IntValue<'ctx>,
        bytes: u32,
    ) -> R<IntValue<'ctx>> {
        Ok(self
            .asm_value(
                self.i64.into(),
                &format!("mbarrier.arrive.expect_tx.shared::cta.b64 $0, [$1], {bytes};"),
                "=l,r,~{memory}",
                Asm::Volatile,
                &[bar.into()],
            )?
            .into_int_value())
    }
    /// Waits until the phase that `state` (from [`Self::mbar_arrive_expect_tx_state`])
    /// names has completed: `mbarrier.try_wait` on the state, in a loop.
    pub fn mbar_wait_state(&self, bar: IntValue<'ctx>, state: IntValue<'ctx>) -> R<()> {
        self.try_wait_loop("mbarrier.try_wait.shared::cta.b64", "l", bar, state)
    }
    /// Waits until the phase of `bar` with parity `parity` (0 or 1) has completed:
    /// `mbarrier.try_wait.parity` (which suspends for a while in hardware) in a loop. A
    /// fresh barrier's phase of parity 1 counts as completed (the one before phase 0).
    pub fn mbar_wait(&self, bar: IntValue<'ctx>, parity: IntValue<'ctx>) -> R<()> {
        self.try_wait_loop("mbarrier.try_wait.parity.shared::cta.b64", "r", bar, parity)
    }
    /// `op p, [bar], x` (an mbarrier try-wait, `x` of constraint `x_constraint`) until `p`
    /// holds.
    fn try_wait_loop(
        &self,
        op: &str,
        x_constraint: &str,
        bar: IntValue<'ctx>,
        x: IntValue<'ctx>,
    ) -> R<()> {
        let wait = self.block("mbar_wait");
        let done = self.block("mbar_done");
        self.br(wait)?;
        self.b.position_at_end(wait);
        let ok = self.asm_i32(
            &format!("{{\n.reg .pred p;\n{op} p, [$1], $2;\nselp.u32 $0, 1, 0, p;\n}}"),
            &format!("=r,r,{x_constraint},~{{memory}}"),
            &[bar, x],
        )?;
        self.cond_br(self.icmp(IntPredicate::NE, ok, self.c32(0))?, done, wait)?;
        self.b.position_at_end(done);
        Ok(())
    }
    /// `cp.async.bulk.tensor.3d` global -> shared (TMA, one thread): the box of the tensor
    /// map `map` (a grid-constant kernel parameter) at coordinates `(c0, c1, c2)`, D
    /// innermost, into shared address `dst`; its bytes complete a transaction of `bar`.
    pub fn tma_load_3d(
        &self,
        dst: IntValue<'ctx>,
        map: PointerValue<'ctx>,
        c: [IntValue<'ctx>; 3],
        bar: IntValue<'ctx>,
    ) -> R<()> {
        let m = self.b.build_ptr_to_int(map, self.i64, "")?;
        self.asm_void(
            "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [$0], [$1, {$2, $3, $4}], [$5];",
            "r,l,r,r,r,r,~{memory}",
            &[dst, m, c[0], c[1], c[2], bar],
        )
    }

    /// `cp.async.bulk` global -> shared (one thread, no tensor map): `bytes` (a multiple of
    /// 16) from global address `src` (i64, 16-byte aligned) to shared address `dst` (i32,
    /// 16-byte aligned); its bytes complete a transaction of `bar`.
    pub fn bulk_load(
        &self,
        dst: IntValue<'ctx>,
        src: IntValue<'ctx>,
        bytes: u32,
        bar: IntValue<'ctx>,
    ) -> R<()> {
        self.asm_void(
            &format!(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [$0], [$1], {bytes}, [$2];"
            ),
            "r,l,r,~{memory}",
            &[dst, src, bar],
        )
    }

    /// `cp.async.bulk.tensor.3d` shared -> global (a TMA store, one thread): the box of
    /// the tensor map `map` at coordinates `(c0, c1, c2)` (D innermost; elements outside
    /// the tensor are not written) from shared address `src`, in this thread's current
    /// bulk group ([`Self::bulk_commit`] closes it, [`Self::bulk_wait`] waits for it).
    /// The writes of `src` by other threads must be made visible to the async proxy first
    /// (`fence.proxy.async.shared::cta` by each writer, then a barrier).
    pub fn tma_store_3d(
        &self,
        map: PointerValue<'ctx>,
        c: [IntValue<'ctx>; 3],
        src: IntValue<'ctx>,
    ) -> R<()> {
        let m = self.b.build_ptr_to_int(map, self.i64, "")?;
        self.asm_void(
            "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [$0, {$1, $2, $3}], [$4];",
            "l,r,r,r,r,~{memory}",
            &[m, c[0], c[1], c[2], src],
        )
    }
    /// `cp.async.bulk.commit_group`: this thread's bulk copies issued since the last
    /// commit become one bulk group.
    pub fn bulk_commit(&self) -> R<()> {
        self.asm_void("cp.async.bulk.commit_group;", "~{memory}", &[])
    }

    /// Two f32 rounded to the input type, `lo` in the low 16 bits (the fragment order).
    pub fn pack2(
        &self,
        ty: InputType,
        lo: FloatValue<'ctx>,
        hi: FloatValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let v2 = self.f32.vec_type(2);
        let mut v = v2.get_undef();
        v = self.b.build_insert_element(v, lo, self.c32(0), "")?;
        v = self.b.build_insert_element(v, hi, self.c32(1), "")?;
        let h = match ty {
            InputType::Bf16 => self.ctx.bf16_type().vec_type(2),
            InputType::F16 => self.ctx.f16_type().vec_type(2),
        };
        let t = self.b.build_float_trunc(v, h, "")?;
        Ok(self.b.build_bit_cast(t, self.i32, "")?.into_int_value())
    }

    // ---- control flow and local state -------------------------------------------------------

    pub fn block(&self, name: &str) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.ctx.append_basic_block(self.func, name)
    }
    /// Opens the kernel's body: the entry block `allocas` (builder `ab`, where [`Gpu::var`]
    /// puts every alloca) and after it `start` (builder `b`), which the body is built
    /// into. Returns `start` for [`Gpu::close_allocas`].
    pub fn open_body(&self) -> inkwell::basic_block::BasicBlock<'ctx> {
        let allocas = self.block("allocas");
        let start = self.block("start");
        self.ab.position_at_end(allocas);
        self.b.position_at_end(start);
        start
    }
    /// Ends `allocas` with its branch to `start` (from [`Gpu::open_body`]), once the body
    /// is built and so every alloca is in it.
    pub fn close_allocas(&self, start: inkwell::basic_block::BasicBlock<'ctx>) -> R<()> {
        self.ab.build_unconditional_branch(start)?;
        Ok(())
    }
    pub fn br(&self, bb: inkwell::basic_block::BasicBlock<'ctx>) -> R<()> {
        self.b.build_unconditional_branch(bb)?;
        Ok(())
    }
    pub fn cond_br(
        &self,
        c: IntValue<'ctx>,
        t: inkwell::basic_block::BasicBlock<'ctx>,
        f: inkwell::basic_block::BasicBlock<'ctx>,
    ) -> R<()> {
        self.b.build_conditional_branch(c, t, f)?;
        Ok(())
    }
    /// Runs `body` only when `c` holds.
    pub fn if_then(&self, c: IntValue<'ctx>, body: impl FnOnce() -> R<()>) -> R<()> {
        let then = self.block("then");
        let cont = self.block("cont");
        self.cond_br(c, then, cont)?;
        self.b.position_at_end(then);
        body()?;
        self.br(cont)?;
        self.b.position_at_end(cont);
        Ok(())
    }
    /// Runs `then` when `c` holds, else `other` (no values out of either arm).
    pub fn if_else(
        &self,
        c: IntValue<'ctx>,
        then: impl FnOnce() -> R<()>,
        other: impl FnOnce() -> R<()>,
    ) -> R<()> {
        let (then_bb, else_bb, cont) = (self.block("then"), self.block("else"), self.block("cont"));
        self.cond_br(c, then_bb, else_bb)?;
        self.b.position_at_end(then_bb);
        then()?;
        self.br(cont)?;
        self.b.position_at_end(else_bb);
        other()?;
        self.br(cont)?;
        self.b.position_at_end(cont);
        Ok(())
    }
    /// `for (i = start; i < end; i += step) body(i)` with signed i32 compares (`step > 0`).
    pub fn for_range(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: impl FnOnce(IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let iv = self.var(self.i32, start)?;
        let head = self.block("for_head");
        let bb = self.block("for_body");
        let exit = self.block("for_exit");
        self.br(head)?;
        self.b.position_at_end(head);
        let i = self.geti(&iv)?;
        self.cond_br(self.icmp(IntPredicate::SLT, i, end)?, bb, exit)?;
        self.b.position_at_end(bb);
        body(i)?;
        self.set(&iv, self.add(i, step)?)?;
        self.br(head)?;
        self.b.position_at_end(exit);
        Ok(())
    }
    /// `while cond() { body() }`, `cond` evaluated at the loop head before every pass.
    pub fn while_loop(
        &self,
        cond: impl Fn() -> R<IntValue<'ctx>>,
        body: impl FnOnce() -> R<()>,
    ) -> R<()> {
        let head = self.block("while_head");
        let bb = self.block("while_body");
        let exit = self.block("while_exit");
        self.br(head)?;
        self.b.position_at_end(head);
        self.cond_br(cond()?, bb, exit)?;
        self.b.position_at_end(bb);
        body()?;
        self.br(head)?;
        self.b.position_at_end(exit);
        Ok(())
    }
    /// A mutable local (promoted to registers by SROA).
    pub fn var<T: BasicType<'ctx>>(&self, ty: T, init: impl BasicValue<'ctx>) -> R<Var<'ctx>> {
        let ty = ty.as_basic_type_enum();
        let ptr = self.ab.build_alloca(ty, "")?;
        self.b.build_store(ptr, init)?;
        Ok(Var { ptr, ty })
    }
    pub fn get(&self, v: &Var<'ctx>) -> R<BasicValueEnum<'ctx>> {
        Ok(self.b.build_load(v.ty, v.ptr, "")?)
    }
    pub fn getf(&self, v: &Var<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.get(v)?.into_float_value())
    }
    pub fn geti(&self, v: &Var<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.get(v)?.into_int_value())
    }
    pub fn set(&self, v: &Var<'ctx>, x: impl BasicValue<'ctx>) -> R<()> {
        self.b.build_store(v.ptr, x)?;
        Ok(())
    }
}

/// The A operand of a `wgmma`: a shared-memory descriptor or four fragment registers.
#[derive(Clone, Copy)]
pub(crate) enum WgmmaA<'ctx> {
    Desc(IntValue<'ctx>),
    Regs([IntValue<'ctx>; 4]),
}

/// A local variable living in an `alloca` of the entry block.
#[derive(Clone, Copy)]
pub(crate) struct Var<'ctx> {
    ptr: PointerValue<'ctx>,
    ty: BasicTypeEnum<'ctx>,
}

/// A tile of 16-bit elements in shared memory, `rows` rows of `cols` elements, stored
/// in 16-byte chunks with the chunk index XOR-swizzled by the row (so that the eight rows
/// an `ldmatrix` phase reads, and the rows `cp.async` writes, fall in distinct banks).
///
/// With `slab` (the wgmma canonical 128-byte-swizzled layout, `cols` a multiple of 64):
/// the tile is split into slabs of 64 columns, slab `s` at `s * rows * 128` bytes; in a
/// slab, row `r` is 128 bytes at `r * 128` and its chunk `c` sits at chunk `c ^ (r % 8)`
/// (so each 8-row group is one 1024-byte swizzle atom). At 64 columns both layouts agree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SmemTile {
    pub offset: u32,
    pub rows: u32,
    pub cols: u32,
    pub slab: bool,
}

impl SmemTile {
    pub fn chunks(&self) -> u32 {
        self.cols / 8
    }
    pub fn bytes(&self) -> u32 {
        self.rows * self.cols * 2
    }
    /// The shared-memory address of 16-byte chunk `chunk` of row `row`.
    pub fn addr<'ctx>(
        &self,
        g: &Gpu<'ctx>,
        row: IntValue<'ctx>,
        chunk: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        self.addr_at(g, row, chunk, g.c32(0))
    }
    /// `addr` in a copy of the tile placed `extra` bytes further (a second buffer).
    pub fn addr_at<'ctx>(
        &self,
        g: &Gpu<'ctx>,
        row: IntValue<'ctx>,
        chunk: IntValue<'ctx>,
        extra: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        g.smem_at(self.off_at(g, row, chunk, extra)?)
    }
    /// The byte offset into dynamic shared memory that [`Self::addr_at`] points at (i32).
    pub fn off_at<'ctx>(
        &self,
        g: &Gpu<'ctx>,
        row: IntValue<'ctx>,
        chunk: IntValue<'ctx>,
        extra: IntValue<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let off = if self.slab {
            let slab = g.lshr(chunk, g.c32(3))?;
            let sw = g.xor(g.and(chunk, g.c32(7))?, g.and(row, g.c32(7))?)?;
            g.add(
                g.add(
                    g.mul(slab, g.c32(self.rows as i64 * 128))?,
                    g.mul(row, g.c32(128))?,
                )?,
                g.shl(sw, g.c32(4))?,
            )?
        } else {
            let mask = self.chunks().min(8) as i64 - 1;
            let sw = g.xor(chunk, g.and(row, g.c32(mask))?)?;
            g.add(
                g.mul(row, g.c32(self.cols as i64 * 2))?,
                g.shl(sw, g.c32(4))?,
            )?
        };
        g.add(g.add(off, extra)?, g.c32(self.offset as i64))
    }
    /// [`Self::off_at`] with `extra` = 0 for constant `row` and `chunk`, on the host.
    pub fn off_host(&self, row: u32, chunk: u32) -> u32 {
        let off = if self.slab {
            (chunk >> 3) * self.rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4)
        } else {
            let mask = self.chunks().min(8) - 1;
            row * self.cols * 2 + ((chunk ^ (row & mask)) << 4)
        };
        off + self.offset
    }
    /// Starts copying rows `row0 .. row0 + rows` of a row-major global matrix (row stride
    /// `cols` elements, `base` pointing at its row 0) into the tile with `cp.async`, all
    /// `threads` threads taking part; rows at or past `valid_rows` (relative to `row0`) are
    /// zero-filled and read nothing. A whole tile in range (the uniform common case) takes
    /// a path without checks whose per-copy addresses are one base plus constants.
    /// `extra`: a byte offset added to the tile's place (a second buffer), usually 0.
    #[allow(clippy::too_many_arguments)]
    pub fn load_async<'ctx>(
        &self,
        g: &Gpu<'ctx>,
        tid: IntValue<'ctx>,
        threads: u32,
        base: PointerValue<'ctx>,
        row0: IntValue<'ctx>,
        valid_rows: IntValue<'ctx>,
        extra: IntValue<'ctx>,
    ) -> R<()> {
        let total = self.rows * self.chunks();
        debug_assert_eq!(total % threads, 0);
        let log_chunks = self.chunks().trailing_zeros() as i64;
        let rpp = threads / self.chunks(); // rows per pass of all threads
        let period = self.chunks().min(8);
        if !rpp.is_multiple_of(period) {
            return self.load_async_checked(g, tid, threads, base, row0, valid_rows, extra);
        }
        let whole = g.icmp(IntPredicate::SGE, valid_rows, g.c32(self.rows as i64))?;
        let fast = g.block("tile_whole");
        let slow = g.block("tile_tail");
        let done = g.block("tile_issued");
        g.cond_br(whole, fast, slow)?;
        g.b.position_at_end(fast);
        let trow = g.lshr(tid, g.c32(log_chunks))?;
        let chunk = g.and(tid, g.c32(self.chunks() as i64 - 1))?;
        let dst0 = self.addr_at(g, trow, chunk, extra)?;
        let stride = self.cols as i64 * 2;
        let grow = g.zext64(g.add(row0, trow)?)?;
        let src0 = g.gep_bytes(
            base,
            g.add(
                g.mul(grow, g.c64(stride))?,
                g.zext64(g.shl(chunk, g.c32(4))?)?,
            )?,
        )?;
        // rows `step` apart (a multiple of the swizzle period) are `step * dst_stride`
        // bytes apart in shared memory
        let dst_stride = if self.slab { 128 } else { stride };
        for k in 0..total / threads {
            let step = (k * rpp) as i64;
            // SAFETY: inside the tile's shared memory
            let dst = unsafe {
                g.b.build_gep(g.ctx.i8_type(), dst0, &[g.c32(step * dst_stride)], "")?
            };
            let src = g.gep_bytes(src0, g.c64(step * stride))?;
            g.cp_async16(dst, src, g.c32(16))?;
        }
        g.br(done)?;
        g.b.position_at_end(slow);
        self.load_async_checked(g, tid, threads, base, row0, valid_rows, extra)?;
        g.br(done)?;
        g.b.position_at_end(done);
        Ok(())
    }

    /// `load_async` with a bounds check per 16-byte copy.
    #[allow(clippy::too_many_arguments)]
    fn load_async_checked<'ctx>(
        &self,
        g: &Gpu<'ctx>,
        tid: IntValue<'ctx>,
        threads: u32,
        base: PointerValue<'ctx>,
        row0: IntValue<'ctx>,
        valid_rows: IntValue<'ctx>,
        extra: IntValue<'ctx>,
    ) -> R<()> {
        let total = self.rows * self.chunks();
        let log_chunks = self.chunks().trailing_zeros() as i64;
        for k in 0..total / threads {
            let i = g.add(tid, g.c32((k * threads) as i64))?;
            let row = g.lshr(i, g.c32(log_chunks))?;
            let chunk = g.and(i, g.c32(self.chunks() as i64 - 1))?;
            let ok = g.icmp(IntPredicate::SLT, row, valid_rows)?;
            let grow = g.zext64(g.add(row0, row)?)?;
            let off = g.add(
                g.mul(grow, g.c64(self.cols as i64 * 2))?,
                g.zext64(g.shl(chunk, g.c32(4))?)?,
            )?;
            let off = g.selecti(ok, off, g.c64(0))?;
            let src = g.gep_bytes(base, off)?;
            let size = g.selecti(ok, g.c32(16), g.c32(0))?;
            g.cp_async16(self.addr_at(g, row, chunk, extra)?, src, size)?;
        }
        Ok(())
    }
}

/// `1 / y` when it is exact: `y = ±2^k` with `1 / y` a normal f32 (then `x * (1 / y)` and
/// the IEEE `x / y` round the same real number).
fn exact_reciprocal(y: f32) -> Option<f32> {
    let r = 1.0 / y;
    (y.is_normal() && r.is_normal() && y.abs().to_bits() & 0x007f_ffff == 0).then_some(r)
}

#[cfg(test)]
mod reciprocal_tests {
    use super::exact_reciprocal;

    #[test]
    fn only_powers_of_two_have_an_exact_reciprocal() {
        assert_eq!(exact_reciprocal(16.0), Some(0.0625));
        assert_eq!(exact_reciprocal(-0.5), Some(-2.0));
        assert_eq!(exact_reciprocal(30.0), None);
        assert_eq!(exact_reciprocal(0.0), None);
        assert_eq!(exact_reciprocal(f32::INFINITY), None);
        assert_eq!(exact_reciprocal(f32::NAN), None);
        // 2^127: its reciprocal 2^-127 is subnormal
        assert_eq!(exact_reciprocal(f32::from_bits(0x7f00_0000)), None);
        assert_eq!(exact_reciprocal(f32::MIN_POSITIVE), Some(2f32.powi(126)));
        assert_eq!(exact_reciprocal(f32::MIN_POSITIVE / 2.0), None);
        for k in -126..=126 {
            let y = 2f32.powi(k);
            assert_eq!(exact_reciprocal(y), Some(2f32.powi(-k)), "2^{k}");
        }
    }
}
