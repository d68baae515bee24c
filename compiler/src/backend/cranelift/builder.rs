//! The function builder the CPU generators write through: typed loads, imports by name,
//! calls, counted loops and if/else on Cranelift's `FunctionBuilder`.
//!
//! In: a `FunctionBuilder` and the JIT module (for imports). Out: instructions appended to
//! the function being built. Used by `codegen` (the kernel's loops and phases) and `lower`
//! (mask and score IR), which depend on it and not on each other's internals.

use super::CpuError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature, Type, Value, types,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::FunctionBuilder;
use cranelift_jit::JITModule;
use cranelift_module::{Linkage, Module};

/// A thin layer over Cranelift's builder: typed loads, imports by name, loops.
pub struct Gen<'a> {
    pub b: FunctionBuilder<'a>,
    pub(super) module: &'a mut JITModule,
    pub(super) imports: Vec<(&'static str, FuncRef)>,
    pub(super) call_conv: CallConv,
}

impl<'a> Gen<'a> {
    pub(crate) fn new(
        b: FunctionBuilder<'a>,
        module: &'a mut JITModule,
        call_conv: CallConv,
    ) -> Self {
        Gen {
            b,
            module,
            imports: Vec::new(),
            call_conv,
        }
    }

    /// The target's frontend configuration (for `FunctionBuilder::finalize`).
    pub(crate) fn frontend_config(&self) -> cranelift_codegen::isa::TargetFrontendConfig {
        self.module.isa().frontend_config()
    }

    pub fn ld(&mut self, ty: Type, base: Value, offset: i32) -> Value {
        self.b
            .ins()
            .load(ty, MemFlagsData::trusted().with_readonly(), base, offset)
    }

    fn import(
        &mut self,
        name: &'static str,
        params: &[Type],
        rets: &[Type],
    ) -> Result<FuncRef, CpuError> {
        if let Some((_, f)) = self.imports.iter().find(|(n, _)| *n == name) {
            return Ok(*f);
        }
        let mut sig = Signature::new(self.call_conv);
        sig.params.extend(params.iter().map(|t| AbiParam::new(*t)));
        sig.returns.extend(rets.iter().map(|t| AbiParam::new(*t)));
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(CpuError::jit)?;
        let f = self.module.declare_func_in_func(id, self.b.func);
        self.imports.push((name, f));
        Ok(f)
    }

    /// Calls an f32 math function (imported on first use).
    pub fn call_f32(&mut self, name: &'static str, args: &[Value]) -> Value {
        let params = vec![types::F32; args.len()];
        // Imports of the fixed math symbols cannot fail after the module accepted the
        // micro-kernel imports; fall back to a trap-free NaN if they ever do.
        match self.import(name, &params, &[types::F32]) {
            Ok(f) => {
                let c = self.b.ins().call(f, args);
                self.b.inst_results(c)[0]
            }
            Err(_) => self.b.ins().f32const(f32::NAN),
        }
    }

    pub(super) fn call(&mut self, name: &'static str, args: &[Value]) -> Result<(), CpuError> {
        let params: Vec<Type> = args
            .iter()
            .map(|a| self.b.func.dfg.value_type(*a))
            .collect();
        let f = self.import(name, &params, &[])?;
        self.b.ins().call(f, args);
        Ok(())
    }

    /// `for iv in lo..hi { body(iv) }` on i64 values.
    pub fn for_range(
        &mut self,
        lo: Value,
        hi: Value,
        body: impl FnOnce(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        self.for_step(lo, hi, 1, body)
    }

    /// `for iv in (lo..hi).step_by(step) { body(iv) }` on i64 values.
    pub fn for_step(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        body: impl FnOnce(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let header = self.b.create_block();
        let body_b = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[lo.into()]);
        self.b.switch_to_block(header);
        let iv = self.b.block_params(header)[0];
        let c = self.b.ins().icmp(IntCC::SignedLessThan, iv, hi);
        self.b.ins().brif(c, body_b, &[], exit, &[]);
        self.b.switch_to_block(body_b);
        body(self, iv)?;
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// The i32x4 constant `[0, 1, 2, 3]`.
    pub fn iota(&mut self) -> Value {
        let bytes: Vec<u8> = [0i32, 1, 2, 3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let c = self.b.func.dfg.constants.insert(bytes.into());
        self.b.ins().vconst(types::I32X4, c)
    }

    /// `if c { then } else { els }`, both arms falling through to the join.
    pub(super) fn if_else(
        &mut self,
        c: Value,
        then: impl FnOnce(&mut Self) -> Result<(), CpuError>,
        els: impl FnOnce(&mut Self) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let (t, e, j) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(c, t, &[], e, &[]);
        self.b.switch_to_block(t);
        then(self)?;
        self.b.ins().jump(j, &[]);
        self.b.switch_to_block(e);
        els(self)?;
        self.b.ins().jump(j, &[]);
        self.b.switch_to_block(j);
        Ok(())
    }
}
