//! The CPU backend: one fused flash-attention forward kernel per attention, generated as
//! Cranelift IR and JIT-compiled for the host.
//!
//! In: a [`Program`] (verified here) and [`CpuOptions`]. Out: a [`CpuKernel`] that runs
//! the attention on f32 tensors with a [`BlockMaps`] built for its tile sizes
//! ([`CpuKernel::q_block`], [`CpuKernel::kv_block`]), or the CLIF text of the generated
//! code ([`emit_clif`], deterministic: same program and options, byte-identical text).
//!
//! ```text
//! let k = compile(&Plan::new(&program), KernelKind::Forward, &CpuOptions::default())?;
//! let maps = BlockMaps::single(BlockMap::dense(lq, lkv, k.q_block(), k.kv_block()));
//! k.run(&shape, &q, &k_, &v, scale, &bindings, &maps, &Scoped(threads), &mut o, &mut lse)?;
//! ```
//!
//! The head dims D and Dv are runtime values (taken from the [`Shape`] of each call), so
//! one kernel serves every head size; the tile sizes and the checked flag are compile
//! time. Structure: [`codegen`] writes the kernel (tile loops, block-sparse iteration,
//! inlined mask/score via [`lower`]); [`micro`] holds the precompiled SIMD products and
//! softmax update it calls; [`abi`] the structs they share; `launch` validates a call
//! and splits work items (b, h, q-tile) over the threads of a [`workers::Workers`]
//! (the runtime's pool lives in the runtime, not here).

pub mod abi;
pub mod backward;
pub mod builder;
pub mod codegen;
pub mod diag;
mod launch;
pub mod lower;
pub mod micro;
pub mod workers;

pub use launch::{DocTable, KvPages};
pub use micro::Isa;

use crate::analysis::blockmap::BlockMaps;
use crate::backend::KernelKind;
use crate::interp::{Bindings, EvalError};
use crate::ir::{Program, VerifyError, verify_program};
use crate::plan::Plan;
use crate::shape::{Shape, ShapeError};
use abi::{Ctx, Tile};
use cranelift_codegen::ir::Signature;
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use std::sync::Mutex;

/// Compile-time options of a CPU kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CpuOptions {
    /// Query rows per work item (a multiple of 16, at most 256).
    pub q_block: usize,
    /// Keys per inner tile (1..=1024).
    pub kv_block: usize,
    /// Checked mode: report the first out-of-range captured-tensor read (whose guard
    /// holds) instead of clamping it. Only reads that the kernel performs are checked: a
    /// block the map calls *full* never evaluates the mask, so check with
    /// `BlockMap::all_partial` maps to see every mask read.
    pub checked: bool,
    /// Force a micro-kernel build (tests of the fallbacks); `None` = best available.
    pub isa: Option<Isa>,
    /// K and V rows are found by a page walk (page pointer lists, run with
    /// [`CpuKernel::run_rows`]) instead of dense `[B, Hkv, Lkv, D]` tensors: a decoding
    /// step reads a paged cache in place.
    pub kv_rows: bool,
    /// Work item `(b, h, t)` is tile `t` of a document tile list (`Ctx::doc_tiles`, run
    /// with [`CpuKernel::run_docs`]): its query rows `row0 + qi q_block ..` up to its
    /// document's end `row0 + rows`, its kv blocks from `row0` and keys up to that end
    /// (the program of a document mask's linear part, `Plan::doc_split`; positions stay
    /// absolute). Dense K/V only (not with `kv_rows`).
    pub doc_tiles: bool,
    /// Fast mode: the score's values that depend on the positions only through `kv - q`
    /// (relative-position biases) computed once per diagonal of each key block and read
    /// from tables (`diag`), not per element; the same values either way. Default true
    /// (false: tests comparing the two, benchmarks).
    pub diagonal_tables: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            q_block: 64,
            kv_block: 64,
            checked: false,
            isa: None,
            kv_rows: false,
            doc_tiles: false,
            diagonal_tables: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("invalid CPU kernel options: {0}")]
    Options(String),
    #[error("the CPU does not support the {0:?} micro-kernels")]
    Isa(Isa),
    #[error("Cranelift JIT: {0}")]
    Jit(String),
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("`{what}` has {got} elements, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "`{what}` entry {index} puts a row of {len} floats at {at}, outside its tensor of {size}"
    )]
    Row {
        what: &'static str,
        index: usize,
        at: usize,
        len: usize,
        size: usize,
    },
    #[error("block maps do not fit this call: {0}")]
    BlockMap(String),
    #[error("bindings do not fit the attention: {0}")]
    Bindings(String),
    /// Checked mode: the first out-of-range tensor read (as the interpreter reports it).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A worker thread panicked (a bug in attnc): the call's output is not valid.
    #[error(transparent)]
    Worker(#[from] workers::WorkerPanic),
}

impl CpuError {
    fn jit(e: impl std::fmt::Display) -> CpuError {
        CpuError::Jit(e.to_string())
    }
}

/// `kernel(ctx, tile, b, h, qt) -> status` as compiled.
type KernelFn = unsafe extern "C" fn(*const Ctx, *mut Tile, i64, i64, i64) -> i32;

/// A compiled attention kernel.
pub struct CpuKernel {
    /// Owns the executable memory of `entry`; freed on drop.
    _code: JitCode,
    entry: KernelFn,
    program: Program,
    opts: CpuOptions,
    isa: Isa,
    slots: u32,
}

impl CpuKernel {
    pub fn q_block(&self) -> usize {
        self.opts.q_block
    }
    pub fn kv_block(&self) -> usize {
        self.opts.kv_block
    }
    pub fn options(&self) -> &CpuOptions {
        &self.opts
    }
    /// The micro-kernel build this kernel calls.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn program(&self) -> &Program {
        &self.program
    }
}

pub(super) fn check_options(opts: &CpuOptions) -> Result<(), CpuError> {
    if opts.q_block == 0 || !opts.q_block.is_multiple_of(16) || opts.q_block > 256 {
        return Err(CpuError::Options(format!(
            "q_block = {} must be a multiple of 16 in 16..=256",
            opts.q_block
        )));
    }
    if opts.kv_block == 0 || opts.kv_block > 1024 {
        return Err(CpuError::Options(format!(
            "kv_block = {} must be in 1..=1024",
            opts.kv_block
        )));
    }
    if opts.doc_tiles && opts.kv_rows {
        return Err(CpuError::Options(
            "document tiles read dense K/V: not with kv_rows".into(),
        ));
    }
    Ok(())
}

pub(super) fn new_module(isa: Isa) -> Result<JITModule, CpuError> {
    let mut flags = settings::builder();
    for (k, v) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
    ] {
        flags.set(k, v).map_err(CpuError::jit)?;
    }
    let target = cranelift_native::builder()
        .map_err(CpuError::jit)?
        .finish(settings::Flags::new(flags))
        .map_err(CpuError::jit)?;
    let mut jb = JITBuilder::with_isa(target, default_libcall_names());
    for (name, ptr) in isa.symbols().into_iter().chain(lower::MATH) {
        jb.symbol(name, ptr);
    }
    Ok(JITModule::new(jb))
}

/// Checks `program` and `opts`, makes the JIT module for `opts`' ISA and declares the
/// one exported function `name` with the signature `sig` gives for the module's calling
/// convention (declared first, so that it is `u0:0`, the name the generators give it).
fn prepare(
    program: &Program,
    opts: &CpuOptions,
    name: &str,
    sig: fn(CallConv) -> Signature,
) -> Result<(Isa, JITModule, FuncId), CpuError> {
    verify_program(program)?;
    check_options(opts)?;
    let isa = opts.isa.unwrap_or_else(Isa::detect);
    if !isa.supported() {
        return Err(CpuError::Isa(isa));
    }
    let mut module = new_module(isa)?;
    let sig = sig(module.isa().default_call_conv());
    let id = module
        .declare_function(name, Linkage::Export, &sig)
        .map_err(CpuError::jit)?;
    Ok((isa, module, id))
}

/// The executable memory of a finalized JIT module, freed on drop. Its owner (a
/// [`CpuKernel`], a [`backward::CpuBackward`]) keeps the entry pointer that
/// [`JitCode::define`] returns beside it and calls it only through `&self`.
struct JitCode(Mutex<Option<JITModule>>);

impl JitCode {
    /// Defines `id` (declared by [`prepare`]) as `func` and finalizes `module`: the
    /// module's memory and the address of the finalized function.
    fn define(
        mut module: JITModule,
        id: FuncId,
        func: cranelift_codegen::ir::Function,
    ) -> Result<(JitCode, *const u8), CpuError> {
        let mut ctx = module.make_context();
        ctx.func = func;
        module
            .define_function(id, &mut ctx)
            .map_err(|e| CpuError::Jit(format!("{e:?}")))?;
        module.finalize_definitions().map_err(CpuError::jit)?;
        let ptr = module.get_finalized_function(id);
        Ok((JitCode(Mutex::new(Some(module))), ptr))
    }
}

impl Drop for JitCode {
    fn drop(&mut self) {
        let m = self
            .0
            .get_mut()
            .map(Option::take)
            .unwrap_or_else(|e| e.into_inner().take());
        if let Some(m) = m {
            // SAFETY: the only pointer into this memory is the owner's entry, dropped
            // with the owner, which drops this; no call can be running since a call
            // borrows the owner.
            unsafe { m.free_memory() };
        }
    }
}

/// The kinds this backend generates.
fn check_kind(kind: KernelKind) -> Result<(), CpuError> {
    match kind {
        KernelKind::Forward => Ok(()),
        other => Err(CpuError::Options(format!(
            "the CPU backend does not generate {other} kernels"
        ))),
    }
}

/// The CLIF text of the generated kernel `kind` of `plan` (before Cranelift's
/// optimizations), preceded by comment lines naming the attention and the imported
/// symbols (`fnN`).
pub fn emit_clif(plan: &Plan, kind: KernelKind, opts: &CpuOptions) -> Result<String, CpuError> {
    check_kind(kind)?;
    let program = plan.program();
    let (_, _, _, g) = generate_kernel(program, opts)?;
    let mut out = format!(
        "; attention {}: q_block {}, kv_block {}, checked {}{}\n",
        program.name,
        opts.q_block,
        opts.kv_block,
        opts.checked,
        if opts.kv_rows { ", kv_rows" } else { "" }
    );
    for (i, name) in g.imports.iter().enumerate() {
        out.push_str(&format!("; fn{i} = {name}\n"));
    }
    out.push_str(&g.func.display().to_string());
    Ok(out)
}

/// The forward kernel of `program` generated (not yet defined) in a fresh module:
/// [`prepare`], then `codegen::generate` on [`kernel_program`].
fn generate_kernel(
    program: &Program,
    opts: &CpuOptions,
) -> Result<(Isa, JITModule, FuncId, codegen::Generated), CpuError> {
    let (isa, mut module, id) = prepare(
        program,
        opts,
        codegen::KERNEL_NAME,
        codegen::kernel_signature,
    )?;
    let mut fctx = FunctionBuilderContext::new();
    let g = codegen::generate(&kernel_program(program, opts), opts, &mut module, &mut fctx)?;
    Ok((isa, module, id, g))
}

/// The program the kernel is generated from: in fast mode, with tensor reads unguarded
/// (`passes::unguard_loads`: reads are clamped, so they may be hoisted past their guards).
fn kernel_program(program: &Program, opts: &CpuOptions) -> Program {
    let mut p = program.clone();
    if !opts.checked {
        p.mask = p.mask.as_ref().map(crate::passes::unguard_loads);
        p.score = p.score.as_ref().map(crate::passes::unguard_loads);
    }
    p
}

/// Generates and JIT-compiles the kernel `kind` of `plan`.
pub fn compile(plan: &Plan, kind: KernelKind, opts: &CpuOptions) -> Result<CpuKernel, CpuError> {
    check_kind(kind)?;
    let program = plan.program();
    let _span =
        tracing::info_span!("codegen", backend = "cpu", attention = %program.name).entered();
    let (isa, module, id, g) = generate_kernel(program, opts)?;
    let (code, ptr) = JitCode::define(module, id, g.func)?;
    // SAFETY: `ptr` is the finalized code of a function with `kernel_signature`, which
    // is the C ABI of `KernelFn` on this host.
    let entry = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
    Ok(CpuKernel {
        _code: code,
        entry,
        program: program.clone(),
        opts: opts.clone(),
        isa,
        slots: g.slots,
    })
}

impl CpuKernel {
    /// Runs the attention: `o[B, Hq, Lq, Dv]` and `lse[B, Hq, Lq]` (natural log) from f32
    /// `q`, `k`, `v` in the layouts of [`crate::shape`]. `maps` must be built for this
    /// kernel's block sizes and the shape's lengths. Work items (b, h, q-tile) are split
    /// over the threads of `workers` (the runtime's pool, or [`workers::Scoped`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        shape: &Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bindings: &Bindings,
        maps: &BlockMaps,
        workers: &dyn workers::Workers,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), CpuError> {
        let kv = launch::KvInput::Dense { k, v };
        let blocks = launch::Blocks::Maps(maps);
        launch::run(self, shape, q, kv, scale, bindings, blocks, workers, o, lse)
    }

    /// [`Self::run`] for a kernel compiled with `CpuOptions::doc_tiles`: the work items
    /// are the tiles of `docs` (for every query head), each visiting its own runs of kv
    /// blocks (every tile and run checked against the shape first).
    #[allow(clippy::too_many_arguments)]
    pub fn run_docs(
        &self,
        shape: &Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        bindings: &Bindings,
        docs: DocTable,
        workers: &dyn workers::Workers,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), CpuError> {
        let kv = launch::KvInput::Dense { k, v };
        let blocks = launch::Blocks::Docs(docs);
        launch::run(self, shape, q, kv, scale, bindings, blocks, workers, o, lse)
    }

    /// [`Self::run`] for a kernel compiled with `CpuOptions::kv_rows`: K and V rows are
    /// found through the pages of `kv` (every row a key uses checked inside its tensor).
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        shape: &Shape,
        q: &[f32],
        kv: KvPages,
        scale: f32,
        bindings: &Bindings,
        maps: &BlockMaps,
        workers: &dyn workers::Workers,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), CpuError> {
        let kv = launch::KvInput::Paged(kv);
        let blocks = launch::Blocks::Maps(maps);
        launch::run(self, shape, q, kv, scale, bindings, blocks, workers, o, lse)
    }
}
