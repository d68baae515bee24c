//! The split-KV decode kernel and its combine kernel (flash-decoding) for a few new query
//! rows against a contiguous or paged KV cache.
//!
//! In: a verified [`Program`] (its own mask and score: evaluated at logical positions,
//! see `crate::decode`), a kind ([`KernelKind::Decode`] or [`KernelKind::DecodeCombine`])
//! and [`PtxOptions`] standing for [`DecodeOptions`] ([`DecodeOptions::ptx_options`]).
//! Out: the kind's `KernelSpec` (`spec`: entry, [`KernelParam`]s, grid rule, threads,
//! shared memory) and PTX (`generate`, reached through `llvm::spec::generate`); or both
//! kernels at once ([`emit_decode`] → [`DecodeKernels`], for tests and tools). The
//! tensor-core kernels (`decode_mma.rs`) take their spec and pipeline from here too
//! (`check_dv`, `decode_spec`, `generate_spec`).
//!
//! Decode kernel, grid `(splits, Hkv * row_groups, B)`, [`THREADS`] threads:
//! ```text
//! rows of a kv head: r = g * Lq + i (query head hk * G + g, new row i at position
//!     seq_lens[b] - Lq + i; a row at a negative position does not exist), R = G * Lq;
//!     the CTA takes rows rg * RPC .. rg * RPC + RPC (GQA packing: K/V read once for
//!     every head of the group and every row, when R <= RPC)
//! keys: ranges[b] = (lo, hi), the positions the mask can reach (host, per call); the CTA
//!     takes lo + split * chunk .. min(lo + (split + 1) * chunk, hi)
//! lane layout: a key row of D elements is D / 8 lanes x 16 bytes (one vector load);
//!     a warp covers 256 / D keys per step, UNROLL steps per iteration (all loads issued
//!     first), the 4 warps interleave their iterations
//! per iteration: K and V rows of UNROLL keys (16-byte loads, through the page table
//!     for a paged cache, the page id clamped into range), dots for every row (8 FMAs,
//!     then a butterfly over the key's lanes), score + mask fused (expr.rs, at (b, h,
//!     position, kv)), one online-softmax rescale per UNROLL keys, O += P V
//! end: the key slots of a warp merge by shuffles, the warps through shared memory;
//!     warp 0 writes the split's normalized O (f32) and LSE (natural log; -inf when it
//!     saw no key) to part_o[b, hk, rg, split, RPC, Dv] / part_lse[.., RPC]
//! ```
//! Combine kernel, grid `(Lq, Hq, B)`, [`THREADS`] threads: the exact merge of a row's
//! splits, `LSE = log Σ exp(lse_s)`, `O = Σ exp(lse_s - LSE) o_s` (O = 0 and LSE = -inf
//! when every split is empty), O written in the input type, LSE in f32. One pass over
//! the partials, so that a row of up to 32 splits costs one memory latency: warp w takes
//! splits w, w + 4, .., `COMBINE_UNROLL` (8) at a time (every LSE and O load of a round
//! issued before the sums), lane l the columns l D/32 .. (l + 1) D/32, with a running
//! max; the 4 warps' (max, sum, O) merge through shared memory in warp order
//! (deterministic). On sm_90 it starts with `griddepcontrol.wait`: the runtime launches
//! it under the decode kernel's tail (programmatic dependent launch), and the decode
//! kernels let it start (`griddepcontrol.launch_dependents`, first thing).
//!
//! Which decode kernel runs (the runtime's `decode/gpu.rs`, which has the numbers): the
//! tensor-core kernel (`decode_mma.rs`, same grid, parameters and partials) at D 64 and
//! 128 for every G x Lq; this SIMT kernel at D 32 and 256.
//!
//! Loads are direct 16-byte `ld.global.nc` into registers (UNROLL x 2 per lane in flight)
//! rather than a `cp.async` ring through shared memory: each K/V element is used by its
//! own lane only, so shared memory would add a copy and a barrier per stage. Fast mode
//! only (checked mode runs the prefill path).

use super::cta::Args;
use super::expr::{Elem, Env, emit_function};
use super::gpu::{GLOBAL, Gpu, R, Var};
use super::{
    Arch, EmitText, EmitTimes, GridDim, InputType, KernelParam, KernelSpec, KvCache, LlvmError,
    PtxKernel, PtxOptions,
};
use crate::backend::KernelKind;
use crate::ir::Program;
use crate::plan::KvBounds;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicValue, FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

/// Threads per CTA of both kernels (4 warps).
pub const THREADS: u32 = 128;
const WARPS: u32 = THREADS / 32;
/// Key steps per warp iteration (loads issued together).
const UNROLL: u32 = 4;
/// Splits per warp and round of the combine kernel (loads issued together).
const COMBINE_UNROLL: i64 = 8;
/// The pass pipeline: the block-table kernel's (licm takes the kv-independent parts of
/// the mask out of the key loop), with instcombine's fixpoint check off (the unrolled
/// online softmax needs more than one round; the result is the same).
pub(super) const DECODE_PASSES: &str = "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,loop-mssa(licm),gvn,instcombine<no-verify-fixpoint>)";
const LOG2E: f32 = std::f32::consts::LOG2_E;

/// Rows per CTA of the tensor-core decode kernel (`decode_mma.rs`): its partials have as
/// many rows, and the combine kernel takes them too.
pub const MMA_ROWS: [u32; 3] = [16, 32, 64];

/// Compile-time options of the decode kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeOptions {
    pub arch: Arch,
    /// Head dim of K and V (D = Dv): 32, 64, 128 or 256.
    pub d: u32,
    pub input: InputType,
    /// Rows (query heads x new rows of one kv head) per CTA: 1..=16.
    pub rows: u32,
    pub paged: bool,
    /// The tensor-core kernel only: its K/V copy's `decode_mma::COPY_*` bits (0: the
    /// default copy; [`PtxOptions::decode_copy`]).
    pub copy: u32,
}

impl DecodeOptions {
    pub fn key(&self) -> String {
        format!(
            "decode:{}:d{}:{}:r{}:{}",
            self.arch.name(),
            self.d,
            self.input.name(),
            self.rows,
            if self.paged { "paged" } else { "contiguous" }
        ) + &if self.copy != 0 {
            format!(":copy{}", self.copy)
        } else {
            String::new()
        }
    }
    pub fn validate(&self) -> Result<(), LlvmError> {
        if ![32, 64, 128, 256].contains(&self.d) {
            return Err(LlvmError::Unsupported(format!(
                "decode kernel with D = {}: needs 32, 64, 128 or 256",
                self.d
            )));
        }
        if !(1..=16).contains(&self.rows) {
            return Err(LlvmError::Unsupported(format!(
                "decode kernel with {} rows per CTA: needs 1..=16",
                self.rows
            )));
        }
        Ok(())
    }
    /// Lanes holding one key row (16 bytes each).
    fn lanes_per_key(&self) -> u32 {
        self.d / 8
    }
    /// Dynamic shared memory: per warp, RPC x (m, l) and RPC x D partial O.
    pub fn smem_bytes(&self) -> u32 {
        WARPS * self.rows * (2 + self.d) * 4
    }
}

/// The parameters of the decode and combine kernels are [`KernelParam`]s (their launch
/// binds them by name like every kind's): `Q, K, V, PageTable, SeqLens, Ranges, PartO,
/// PartLse, O, Lse, Params, Err, Tensor, TensorDim, Hq, Hkv, Lq, Group, RowGroups, Splits,
/// Chunk, LkvMax, PageShift, MaxPages, NumPages, Scale`.
pub use super::KernelParam as DecodeParam;

/// Both kernels of one decode configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeKernels {
    pub options: DecodeOptions,
    pub decode_ptx: String,
    pub decode_entry: String,
    pub decode_params: Vec<DecodeParam>,
    pub combine_ptx: String,
    pub combine_entry: String,
    pub combine_params: Vec<DecodeParam>,
    pub threads: u32,
    pub smem_bytes: u32,
}

pub(super) fn decode_params(p: &Program, copy: u32) -> Vec<DecodeParam> {
    use DecodeParam::*;
    let device = copy & COPY_DEVICE_RANGES != 0;
    let mut v = vec![Q, K, V, PageTable, SeqLens];
    if !device {
        v.push(Ranges);
    }
    v.extend([PartO, PartLse, Params, Err]);
    v.extend((0..p.tensors.len() as u32).map(Tensor));
    v.extend([
        Hq, Hkv, Lq, Group, RowGroups, Splits, Chunk, LkvMax, PageShift, MaxPages, NumPages,
    ]);
    for (t, info) in p.tensors.iter().enumerate() {
        v.extend((0..info.dims.len() as u32).map(|dim| TensorDim {
            tensor: t as u32,
            dim,
        }));
    }
    v.push(Scale);
    if device {
        // the cache's capacity and the implied conjuncts' offsets (`decode_ranges`)
        v.push(Lkv);
        let n = super::decode_ranges::conjuncts(p).len() as u32;
        if n > 0 {
            v.extend((0..n).map(KvOffset));
            v.push(KvAllPartial);
        }
    }
    v
}

fn combine_params() -> Vec<DecodeParam> {
    use DecodeParam::*;
    vec![
        PartO, PartLse, O, Lse, Hq, Hkv, Lq, Group, RowGroups, Splits,
    ]
}

impl DecodeOptions {
    /// The [`PtxOptions`] that stand for these options in the specs and cache keys of
    /// [`KernelKind::Decode`] and [`KernelKind::DecodeCombine`]: arch, D = Dv, input type,
    /// `q_block` = rows per CTA, `kv_cache` = the layout (the rest: `PtxOptions::new`'s).
    pub fn ptx_options(&self) -> PtxOptions {
        PtxOptions {
            q_block: self.rows,
            kv_cache: if self.paged {
                KvCache::Paged
            } else {
                KvCache::Contiguous
            },
            // (the forward's warp-specialized schedule is no decode option)
            ws: false,
            decode_copy: self.copy,
            ..PtxOptions::new(self.arch, self.d, self.d, self.input)
        }
    }

    /// The decode options `opts` stand for (the inverse of [`Self::ptx_options`]).
    pub fn from_ptx(opts: &PtxOptions) -> Self {
        DecodeOptions {
            arch: opts.arch,
            d: opts.d,
            input: opts.input,
            rows: opts.q_block,
            paged: opts.kv_cache == KvCache::Paged,
            copy: opts.decode_copy,
        }
    }
}

/// The launch description of a decode kind, without generating code: the decode kernel
/// (grid (splits, Hkv x row groups, B), [`THREADS`] threads, per-warp partials in shared
/// memory) or the combine kernel (grid (Lq, Hq, B), the warps' sums in shared memory). Its kv source is
/// the host's reachable ranges (`Ranges`), recorded as [`KvBounds::Table`].
pub(crate) fn spec(
    p: &Program,
    kind: KernelKind,
    opts: &PtxOptions,
) -> Result<KernelSpec, LlvmError> {
    let d = DecodeOptions::from_ptx(opts);
    match kind {
        // the combine kernel merges the partials of either decode kernel
        KernelKind::DecodeCombine if MMA_ROWS.contains(&d.rows) => {}
        _ => d.validate()?,
    }
    check_dv(opts)?;
    let name = super::sanitize(&p.name);
    let (entry, params, grid, smem_bytes) = match kind {
        KernelKind::Decode => (
            format!("attnc_decode_{name}"),
            decode_params(p, d.copy),
            [GridDim::Splits, GridDim::KvHeadRowGroups, GridDim::Batches],
            d.smem_bytes(),
        ),
        // COPY_COMBINE_ROWS: one CTA per (head, sequence), no shared memory
        KernelKind::DecodeCombine if d.copy & COPY_COMBINE_ROWS != 0 => (
            format!("attnc_decode_combine_{}", d.input.name()),
            combine_params(),
            [GridDim::One, GridDim::Heads, GridDim::Batches],
            0,
        ),
        KernelKind::DecodeCombine => (
            format!("attnc_decode_combine_{}", d.input.name()),
            combine_params(),
            [GridDim::QRows, GridDim::Heads, GridDim::Batches],
            combine_smem_bytes(d.d),
        ),
        _ => return Err(LlvmError::Internal("not a decode kernel kind")),
    };
    Ok(decode_spec(
        kind,
        entry,
        opts,
        params,
        grid,
        (0, THREADS, smem_bytes),
    ))
}

/// Every decode kernel needs D = Dv.
pub(super) fn check_dv(opts: &PtxOptions) -> Result<(), LlvmError> {
    if opts.dv != opts.d {
        return Err(LlvmError::Unsupported(format!(
            "decode kernel with D = {} and Dv = {}: needs D = Dv",
            opts.d, opts.dv
        )));
    }
    Ok(())
}

/// The [`KernelSpec`] of a decode kind (this module's kernels and `decode_mma.rs`'s):
/// `opts.q_block` rows per CTA, the host's reachable ranges as kv source
/// ([`KvBounds::Table`]); `(kv_block, threads, smem_bytes)` the kernel's own.
pub(super) fn decode_spec(
    kind: KernelKind,
    entry: String,
    opts: &PtxOptions,
    params: Vec<DecodeParam>,
    grid: [GridDim; 3],
    (kv_block, threads, smem_bytes): (u32, u32, u32),
) -> KernelSpec {
    KernelSpec {
        kind,
        entry,
        options: *opts,
        q_block: opts.q_block,
        kv_block,
        threads,
        smem_bytes,
        params,
        grid,
        kv_bounds: KvBounds::Table,
        table_skip: None,
    }
}

/// Generates a decode kind: its [`spec`] and PTX (LLVM IR text with
/// [`EmitText::PtxAndLlvm`]).
pub(crate) fn generate(
    program: &Program,
    kind: KernelKind,
    opts: &PtxOptions,
    text: EmitText,
) -> Result<(PtxKernel, EmitTimes), LlvmError> {
    let spec = spec(program, kind, opts)?;
    generate_spec(program, spec, text, |ctx, module, d, spec| match kind {
        KernelKind::Decode => build_decode(ctx, module, program, d, &spec.params, &spec.entry),
        _ => build_combine(ctx, module, d, &spec.params, &spec.entry),
    })
}

/// Generates the decode kind of `spec` (this module's kernels and `decode_mma.rs`'s):
/// `program` verified, `build` (the kernel's body, given the [`DecodeOptions`] of
/// `spec.options`) run through [`DECODE_PASSES`] for the PTX target of the options'
/// matrix path (mma.sync needs nothing past sm_80).
pub(super) fn generate_spec(
    program: &Program,
    spec: KernelSpec,
    text: EmitText,
    build: impl for<'ctx> FnOnce(
        &'ctx Context,
        Module<'ctx>,
        &DecodeOptions,
        &KernelSpec,
    ) -> R<Module<'ctx>>,
) -> Result<(PtxKernel, EmitTimes), LlvmError> {
    crate::ir::verify_program(program).map_err(|e| LlvmError::Unsupported(e.to_string()))?;
    let d = DecodeOptions::from_ptx(&spec.options);
    let popts = PtxOptions::new(d.arch, d.d, d.d, d.input);
    let (ptx, llvm_ir, times) = super::run_pipeline(
        program,
        &popts,
        &spec.entry,
        DECODE_PASSES,
        text,
        |ctx, module| build(ctx, module, &d, &spec),
    )?;
    Ok((PtxKernel { spec, ptx, llvm_ir }, times))
}

/// Generates both kernels (tests and tools; the runtime takes each kind through the JIT
/// cache).
pub fn emit_decode(program: &Program, opts: &DecodeOptions) -> Result<DecodeKernels, LlvmError> {
    opts.validate()?;
    let popts = opts.ptx_options();
    let (dk, _) = generate(program, KernelKind::Decode, &popts, EmitText::PtxOnly)?;
    with_combine(program, opts, dk)
}

/// [`DecodeKernels`] of the generated decode kernel `dk` and its combine kernel.
pub(super) fn with_combine(
    program: &Program,
    opts: &DecodeOptions,
    dk: PtxKernel,
) -> Result<DecodeKernels, LlvmError> {
    let (ck, _) = generate(
        program,
        KernelKind::DecodeCombine,
        &opts.ptx_options(),
        EmitText::PtxOnly,
    )?;
    Ok(DecodeKernels {
        options: *opts,
        decode_ptx: dk.ptx,
        decode_entry: dk.spec.entry,
        decode_params: dk.spec.params,
        combine_ptx: ck.ptx,
        combine_entry: ck.spec.entry,
        combine_params: ck.spec.params,
        threads: dk.spec.threads,
        smem_bytes: dk.spec.smem_bytes,
    })
}

/// `PtxOptions::decode_copy` bit of the combine kernel (`KernelKind::DecodeCombine`
/// loaded with these options; sm_90; the decode kernels ignore it): the combine kernel
/// lets the next grid on the stream launch (`griddepcontrol.launch_dependents`) before
/// its own `griddepcontrol.wait` instead of after it, so that a chained call's decode
/// kernel is scheduled while this call's decode grid still runs: its CTAs take the SM
/// slots the decode CTAs leave and issue their prologue's reads
/// (`decode_mma::COPY_EARLY`) under this call's tail and combine, instead of being launched only once the decode grid
/// has completed. Correct because that decode kernel writes nothing before its own
/// wait, which returns only after this combine grid (which read the partials) has
/// completed; no deadlock, because a grid launched by programmatic dependent launch
/// starts only after every CTA of the grid before it has started (and every CTA of
/// the combine grid starts after every CTA of the decode grid has). Off by default
/// (`ATTNC_DECODE_COPY` letter `j`): measured on an H200 (session 15, `efi` / `efij` in
/// the same rotated rounds, bf16 D128 Hq32 Hkv8) no faster — B8 Lkv32768 Lq1 244.6 /
/// 245.9 µs (and 244.7 / 244.3 in a second line), Lq4 247.6 / 248.1, B1 Lkv131072 126.5 /
/// 126.4: the time between two chained calls is not the next decode grid's launch.
pub const COPY_COMBINE_TRIGGER: u32 = 512;
/// [`DecodeOptions::copy`] bit of the combine kernel (`decode_mma::COPY_COMBINE_WIDE`,
/// `ATTNC_DECODE_COPY` letter `m`): each warp issues the loads of up to
/// `COMBINE_UNROLL_WIDE` splits per round instead of `COMBINE_UNROLL`, so that up to
/// 64 splits (B1 Lkv131072's 33) merge after one round of L2 latency instead of two
/// (warp 0 took splits 0, 4, .., 28 and then 32 alone). The sums' order is the same
/// splits in the same order per warp, in rounds of another size: the running max, hence
/// the rescales and their roundings, may differ from the default's (bits may differ by
/// rounding, both within the oracle's tolerance).
pub const COPY_COMBINE_WIDE: u32 = 4096;
/// [`DecodeOptions::copy`] bit of the combine kernel (`decode_mma::COPY_COMBINE_ROWS`,
/// `ATTNC_DECODE_COPY` letter `u`; the decode kernels ignore it): one CTA per (query
/// head, sequence), grid `(1, Hq, B)`, instead of one per query row: warp w merges rows
/// w, w + 4, .. of the head, each row's splits by itself (rounds of `COMBINE_UNROLL`
/// splits' loads, a running max; no shared memory, no barrier), lane l the columns l
/// D/32 .. (l + 1) D/32. At Lq 16 (GQA 4:1, B8 Hq32) the default's 4096 CTAs x 128
/// threads fill every SM twice, so the next call's decode kernel cannot start under the
/// combine (session 21, H200: 12.7 µs alone and ~14.6 µs of the call's 269.5; Lq 1's
/// 256 CTAs 5.7 µs alone, ~1.3 µs exposed); here 256 CTAs at every Lq. Another order
/// of the sums than the default's (a row's splits in one warp, in split order): bits may
/// differ by rounding; deterministic.
pub const COPY_COMBINE_ROWS: u32 = 1048576;
/// [`DecodeOptions::copy`] bit of both split-KV decode kernels (the combine kernel ignores
/// it): each CTA computes its sequence's reachable keys and clamped length from `SeqLens`
/// itself, as the decode-ranges kernel (`decode_ranges.rs`) would have written them, so
/// that a caller-buffer call (lengths only on the device) is two launches instead of
/// three. The kernel takes no `Ranges`; it takes the cache's capacity `Lkv` and, for a
/// mask with implied linear conjuncts, their `KvOffset`s and `KvAllPartial` (the
/// decode-ranges kernel's parameters). The runtime sets it on the caller-buffer path;
/// the host path keeps its host-computed `Ranges`.
pub const COPY_DEVICE_RANGES: u32 = 8388608;
/// Splits per round of a combine warp with [`COPY_COMBINE_WIDE`].
const COMBINE_UNROLL_WIDE: i64 = 16;

/// Shared memory of the combine kernel: per warp D partial sums of O, a max and a sum.
pub(crate) fn combine_smem_bytes(d: u32) -> u32 {
    WARPS * (d + 2) * 4
}

/// Declares `entry` with `params` (pointers global, scalars i32, `Scale` f32); read-only
/// inputs are `noalias readonly` (so their loads become `ld.global.nc`).
pub(super) fn declare<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    params: &[DecodeParam],
    entry: &str,
) -> Gpu<'ctx> {
    use DecodeParam::*;
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let is_ptr = |p: &DecodeParam| {
        matches!(
            p,
            Q | K
                | V
                | PageTable
                | SeqLens
                | Ranges
                | PartO
                | PartLse
                | O
                | Lse
                | Params
                | Err
                | Tensor(_)
                | DecodeSem
        )
    };
    // a tensor map (the tensor-core kernel's `COPY_TMA`): 128 bytes by value, in place
    let map_ptr = ctx.ptr_type(AddressSpace::default());
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|p| match p {
            Scale => ctx.f32_type().into(),
            TmaK | TmaV => map_ptr.into(),
            KvOffset(_) => ctx.i64_type().into(),
            p if is_ptr(p) => gptr.into(),
            _ => ctx.i32_type().into(),
        })
        .collect();
    let func = module.add_function(entry, ctx.void_type().fn_type(&tys, false), None);
    func.set_call_conventions(71); // ptx_kernel
    func.add_attribute(
        AttributeLoc::Function,
        ctx.create_string_attribute("nvvm.maxntid", &THREADS.to_string()),
    );
    let noalias = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
    let readonly = ctx.create_enum_attribute(Attribute::get_named_enum_kind_id("readonly"), 0);
    for (i, p) in params.iter().enumerate() {
        if matches!(p, TmaK | TmaV) {
            super::cta::tensor_map_param(ctx, func, i as u32);
        }
        // (the combine kernel's partials are not `readonly`: its loads must stay after
        // its `griddepcontrol.wait`, and invariant `ld.global.nc` loads may move)
        if matches!(
            p,
            Q | K | V | PageTable | SeqLens | Ranges | Params | Tensor(_)
        ) {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
            func.add_attribute(AttributeLoc::Param(i as u32), readonly);
        }
    }
    Gpu::new(ctx, module, func)
}

/// At a decode kernel's start on sm_90: `griddepcontrol.launch_dependents`, so that the
/// combine kernel, launched after it with programmatic stream serialization (the
/// runtime's `DecodeModule` launch), is scheduled while this grid's last CTAs still run
/// and waits for the grid's completion on the SMs (`griddepcontrol.wait` at its start)
/// instead of after a launch gap; then `griddepcontrol.wait`, before any global memory
/// access, so that this kernel too may be launched that way (after whatever kernel
/// precedes it on the stream: it waits for that grid's completion). Nothing on sm_80.
pub(super) fn let_combine_start(g: &Gpu<'_>, opts: &DecodeOptions) -> R<()> {
    if opts.arch == Arch::Sm90 {
        g.griddep_launch_dependents()?;
        g.griddep_wait()?;
    }
    Ok(())
}

/// 8 elements of the input type at `ptr` (16 bytes, aligned) as f32.
fn load8<'ctx>(g: &Gpu<'ctx>, ty: InputType, ptr: PointerValue<'ctx>) -> R<Vec<FloatValue<'ctx>>> {
    let v4 = g.i32.vec_type(4);
    let raw = g.b.build_load(v4, ptr, "")?;
    raw.as_instruction_value()
        .ok_or(LlvmError::Internal("vector load"))?
        .set_alignment(16)
        .map_err(|e| LlvmError::Builder(e.to_string()))?;
    let h8 = match ty {
        InputType::Bf16 => g.ctx.bf16_type().vec_type(8),
        InputType::F16 => g.ctx.f16_type().vec_type(8),
    };
    let h = g.b.build_bit_cast(raw, h8, "")?.into_vector_value();
    let f = g.b.build_float_ext(h, g.f32.vec_type(8), "")?;
    (0..8)
        .map(|e| {
            Ok(g.b
                .build_extract_element(f, g.c32(e), "")?
                .into_float_value())
        })
        .collect()
}

/// `x == -inf ? 0 : x`: the reference point of an exponent, so that a row that has seen
/// no key yet gives exp(-inf - 0) = 0 rather than NaN.
pub(super) fn finite_or_zero<'ctx>(g: &Gpu<'ctx>, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
    let inf = g.fcmp(FloatPredicate::OEQ, x, g.cf(f32::NEG_INFINITY))?;
    g.selectf(inf, g.cf(0.0), x)
}

/// `exp(x - m)` via `ex2`, with `m` from [`finite_or_zero`].
/// One round of a split merge: the partials `loaded` (each an LSE, -inf where absent, and
/// its O columns) folded into the running max `m`, sum `sum` and unnormalized columns
/// `accs` (each scaled by `exp(lse - m_new)`, the old state by `exp(m_old - m_new)`).
/// Shared by the combine kernel and the fused combine of the tensor-core decode kernel.
pub(super) fn merge_partials<'ctx>(
    g: &Gpu<'ctx>,
    m: &Var<'ctx>,
    sum: &Var<'ctx>,
    accs: &[Var<'ctx>],
    loaded: Vec<(FloatValue<'ctx>, Vec<FloatValue<'ctx>>)>,
) -> R<()> {
    let m_old = g.getf(m)?;
    let mut mx = m_old;
    for (l, _) in &loaded {
        mx = g.fmax(mx, *l)?;
    }
    let mref = finite_or_zero(g, mx)?;
    let keep = exp_from(g, m_old, mref)?;
    let mut s_new = g.fmul(g.getf(sum)?, keep)?;
    let mut acc_new: Vec<FloatValue<'ctx>> = accs
        .iter()
        .map(|x| g.fmul(g.getf(x)?, keep))
        .collect::<R<_>>()?;
    for (l, os) in loaded {
        let w = exp_from(g, l, mref)?;
        s_new = g.fadd(s_new, w)?;
        for (x, o) in acc_new.iter_mut().zip(os) {
            *x = g.fadd(*x, g.fmul(w, o)?)?;
        }
    }
    g.set(m, mx)?;
    g.set(sum, s_new)?;
    for (v, x) in accs.iter().zip(acc_new) {
        g.set(v, x)?;
    }
    Ok(())
}

pub(super) fn exp_from<'ctx>(
    g: &Gpu<'ctx>,
    x: FloatValue<'ctx>,
    m: FloatValue<'ctx>,
) -> R<FloatValue<'ctx>> {
    g.ex2(g.fmul(g.fsub(x, m)?, g.cf(LOG2E))?)
}

/// One softmax state: running max, running sum, 8 output elements per row.
struct State<'ctx> {
    m: Vec<Var<'ctx>>,
    l: Vec<Var<'ctx>>,
    acc: Vec<Vec<Var<'ctx>>>,
}

/// The element offset of key position `j`'s row (kv head `hk` of sequence `b`) in the
/// cache: through the page table for a paged cache (the page id clamped into the cache:
/// fast mode), else `[B, Hkv, Lkv_max, D]`. Shared by both decode kernels.
#[allow(clippy::too_many_arguments)]
pub(super) fn cache_row_elem<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    opts: &DecodeOptions,
    b: IntValue<'ctx>,
    hk: IntValue<'ctx>,
    hkv: IntValue<'ctx>,
    j: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    use DecodeParam as P;
    let d = opts.d as i64;
    if opts.paged {
        let shift = a.int(P::PageShift)?;
        let maxp = a.int(P::MaxPages)?;
        let npages = a.int(P::NumPages)?;
        let lp = g.b.build_right_shift(j, shift, false, "")?;
        let ps_mask = g.sub(g.shl(g.c32(1), shift)?, g.c32(1))?;
        let at = g.add(g.mul(b, maxp)?, lp)?;
        let id = g.load_i32(a.ptr(P::PageTable)?, at)?;
        // fast mode: clamp the page id into the cache
        let id = g.iintr2("llvm.smax.i32", id, g.c32(0))?;
        let id = g.iintr2("llvm.smin.i32", id, g.sub(npages, g.c32(1))?)?;
        let slot_in_page = g.and(j, ps_mask)?;
        let prow = g.add(
            g.mul(g.zext64(id)?, g.zext64(g.shl(g.c32(1), shift)?)?)?,
            g.zext64(slot_in_page)?,
        )?;
        g.mul(
            g.add(g.mul(prow, g.zext64(hkv)?)?, g.zext64(hk)?)?,
            g.c64(d),
        )
    } else {
        let lmax = a.int(P::LkvMax)?;
        let r = g.add(
            g.mul(g.zext64(g.add(g.mul(b, hkv)?, hk)?)?, g.zext64(lmax)?)?,
            g.zext64(j)?,
        )?;
        g.mul(r, g.c64(d))
    }
}

/// A CTA's sequence: its reachable keys `[lo, hi)` and its length (the new rows'
/// positions end there), each either read from the launch (the host's `Ranges`, or the
/// decode-ranges kernel's with the clamped lengths after them) or, with
/// [`COPY_DEVICE_RANGES`], computed here from `SeqLens` as the decode-ranges kernel
/// computes them (`decode_ranges::reachable`).
pub(super) struct SeqKeys<'ctx> {
    pub lo: IntValue<'ctx>,
    pub hi: IntValue<'ctx>,
    pub len: IntValue<'ctx>,
}

/// [`SeqKeys`] of sequence `b` for a kernel of `p` with `copy` bits.
pub(super) fn seq_keys<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    p: &Program,
    copy: u32,
    b: IntValue<'ctx>,
) -> R<SeqKeys<'ctx>> {
    use DecodeParam as P;
    let lens = a.ptr(P::SeqLens)?;
    if copy & COPY_DEVICE_RANGES != 0 {
        let coefs = super::decode_ranges::conjuncts(p);
        let (lo, hi, len) = super::decode_ranges::reachable(g, a, &coefs, lens, b)?;
        return Ok(SeqKeys { lo, hi, len });
    }
    let len = g.load_i32(lens, b)?;
    let ranges = a.ptr(P::Ranges)?;
    let lo = g.load_i32(ranges, g.mul(b, g.c32(2))?)?;
    let hi = g.load_i32(ranges, g.add(g.mul(b, g.c32(2))?, g.c32(1))?)?;
    Ok(SeqKeys { lo, hi, len })
}

/// The keys `[k0, k1)` split `split` of a sequence reads: its reachable range `(lo, hi)`
/// cut into splits of `Chunk` keys (both split-KV kernels).
pub(super) fn split_keys<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    keys: &SeqKeys<'ctx>,
    split: IntValue<'ctx>,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    split_keys_from(g, a, keys, split, 1)
}

/// [`split_keys`] with the range's first key `lo` rounded down to a multiple of `align`
/// (a power of two; 1: as it is) before the splits are cut: the tensor-core kernel's
/// `COPY_PAGE_PASS` (`decode_mma.rs`) needs tiles on multiples of 64. The host's ranges
/// are whole blocks of 64 keys already; the decode-ranges kernel's (caller buffers) are
/// exact, and the keys the rounding adds lie below the element range of the mask's
/// implied linear conjuncts, so the mask (evaluated on every element) excludes them; the
/// launch's splits x chunk covers them (the host sizes it from the cache's capacity
/// there, from `lo` rounded the same way otherwise: `decode::gpu::geometry`).
pub(super) fn split_keys_from<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    keys: &SeqKeys<'ctx>,
    split: IntValue<'ctx>,
    align: u32,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let (lo, hi) = item_range(g, keys, align)?;
    let chunk = a.int(DecodeParam::Chunk)?;
    let k0 = g.add(lo, g.mul(split, chunk)?)?;
    let k1 = g.iintr2("llvm.smin.i32", g.add(k0, chunk)?, hi)?;
    Ok((k0, k1))
}

/// A sequence's kv range `[lo, hi)`, `lo` rounded down to `align` keys (a power of two)
/// when `align > 1`: the start every split of the item counts from ([`split_keys_from`];
/// the work-stealing splits of `decode_mma` too).
pub(super) fn item_range<'ctx>(
    g: &Gpu<'ctx>,
    keys: &SeqKeys<'ctx>,
    align: u32,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    let lo = if align > 1 {
        g.and(keys.lo, g.c32(-(align as i64)))?
    } else {
        keys.lo
    };
    Ok((lo, keys.hi))
}

/// The score/mask environment of a split-KV kernel from its parameters: params, the error
/// word, the captured tensors and their dims (no checked mode: it runs the prefill path).
pub(super) fn decode_env<'ctx>(g: &Gpu<'ctx>, p: &Program, a: &Args<'_, 'ctx>) -> R<Env<'ctx>> {
    use DecodeParam as P;
    Env::load(
        g,
        p,
        false,
        &|k| match k {
            KernelParam::Params => a.ptr(P::Params),
            KernelParam::Err => a.ptr(P::Err),
            KernelParam::Tensor(t) => a.ptr(P::Tensor(t)),
            _ => Err(LlvmError::Internal("decode kernel pointer param")),
        },
        &|k| match k {
            KernelParam::TensorDim { tensor, dim } => a.int(P::TensorDim { tensor, dim }),
            _ => Err(LlvmError::Internal("decode kernel int param")),
        },
    )
}

fn build_decode<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    p: &Program,
    opts: &DecodeOptions,
    params: &[DecodeParam],
    entry: &str,
) -> R<Module<'ctx>> {
    use DecodeParam as P;
    let g = declare(ctx, module, params, entry);
    let start = g.open_body();
    let a = Args { g: &g, params };
    let g = &g;
    let_combine_start(g, opts)?;
    let rpc = opts.rows as usize;
    let d = opts.d as i64;
    let lpk = opts.lanes_per_key() as i64;
    let kpw = 32 / lpk; // keys per warp step
    let esize = 2i64;

    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let slot = g.udiv(lane, g.c32(lpk))?; // key slot in the warp step
    let chunk8 = g.sub(lane, g.mul(slot, g.c32(lpk))?)?; // which 8 elements
    let split = g.ctaid('x')?;
    let y = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let (hkv, lq, group, rgs) = (
        a.int(P::Hkv)?,
        a.int(P::Lq)?,
        a.int(P::Group)?,
        a.int(P::RowGroups)?,
    );
    let hk = g.udiv(y, rgs)?;
    let rg = g.sub(y, g.mul(hk, rgs)?)?;
    let nrows = g.mul(group, lq)?;
    let keys = seq_keys(g, &a, p, opts.copy, b)?;
    let seq_len = keys.len;
    let (k0, k1) = split_keys(g, &a, &keys, split)?;

    let env = decode_env(g, p, &a)?;

    // ---- the rows of this CTA: head, position, existence; q pre-scaled in registers ----
    let scale = a.get(P::Scale)?.into_float_value();
    let qptr = a.ptr(P::Q)?;
    struct Row<'ctx> {
        h: IntValue<'ctx>,
        pos: IntValue<'ctx>,
        live: IntValue<'ctx>,
        q: Vec<FloatValue<'ctx>>,
    }
    let mut rows = Vec::with_capacity(rpc);
    for r in 0..rpc {
        let row = g.add(g.mul(rg, g.c32(rpc as i64))?, g.c32(r as i64))?;
        let in_group = g.icmp(IntPredicate::SLT, row, nrows)?;
        let row_c = g.selecti(in_group, row, g.c32(0))?;
        let gi = g.udiv(row_c, lq)?;
        let i = g.sub(row_c, g.mul(gi, lq)?)?;
        let h = g.add(g.mul(hk, group)?, gi)?;
        let pos = g.add(g.sub(seq_len, lq)?, i)?;
        let live = g.and(in_group, g.icmp(IntPredicate::SGE, pos, g.c32(0))?)?;
        // q[b, h, i, chunk8 * 8 ..]
        let qrow = g.add(g.mul(g.add(g.mul(b, a.int(P::Hq)?)?, h)?, lq)?, i)?;
        let off = g.add(
            g.mul(g.zext64(qrow)?, g.c64(d))?,
            g.zext64(g.mul(chunk8, g.c32(8))?)?,
        )?;
        let qv = load8(g, opts.input, g.gep_bytes(qptr, g.mul(off, g.c64(esize))?)?)?;
        let q = qv
            .into_iter()
            .map(|x| g.fmul(x, scale))
            .collect::<R<Vec<_>>>()?;
        rows.push(Row { h, pos, live, q });
    }

    // ---- softmax state ----
    let neg_inf = g.cf(f32::NEG_INFINITY);
    let st = State {
        m: (0..rpc).map(|_| g.var(g.f32, neg_inf)).collect::<R<_>>()?,
        l: (0..rpc)
            .map(|_| g.var(g.f32, g.cf(0.0)))
            .collect::<R<_>>()?,
        acc: (0..rpc)
            .map(|_| (0..8).map(|_| g.var(g.f32, g.cf(0.0))).collect::<R<_>>())
            .collect::<R<_>>()?,
    };

    // ---- the address of key `j`'s row in the cache (elements) ----
    let kptr = a.ptr(P::K)?;
    let vptr = a.ptr(P::V)?;
    let row_elem = |j: IntValue<'ctx>| cache_row_elem(g, &a, opts, b, hk, hkv, j);

    // ---- the key loop: each warp takes UNROLL steps of kpw keys per iteration ----
    let per_iter = (WARPS as i64) * (UNROLL as i64) * kpw;
    let last = g.sub(k1, g.c32(1))?;
    g.for_range(k0, k1, g.c32(per_iter), |base| {
        let wbase = g.add(base, g.mul(warp, g.c32(UNROLL as i64 * kpw))?)?;
        // issue every load first
        let mut keys = Vec::with_capacity(UNROLL as usize);
        for u in 0..UNROLL as i64 {
            let j = g.add(g.add(wbase, g.c32(u * kpw))?, slot)?;
            let valid = g.icmp(IntPredicate::SLT, j, k1)?;
            let jc = g.selecti(valid, j, last)?;
            let at = g.add(row_elem(jc)?, g.zext64(g.mul(chunk8, g.c32(8))?)?)?;
            let byte = g.mul(at, g.c64(esize))?;
            let kv = load8(g, opts.input, g.gep_bytes(kptr, byte)?)?;
            let vv = load8(g, opts.input, g.gep_bytes(vptr, byte)?)?;
            keys.push((j, valid, kv, vv));
        }
        for (r, row) in rows.iter().enumerate() {
            // scores of the UNROLL keys
            let mut s = Vec::with_capacity(keys.len());
            for (j, valid, kv, _) in &keys {
                let mut dot = g.fmul(row.q[0], kv[0])?;
                for (qe, ke) in row.q.iter().zip(kv).skip(1) {
                    dot = g
                        .call(
                            "llvm.fma.f32",
                            Some(g.f32.into()),
                            &[(*qe).into(), (*ke).into(), dot.into()],
                        )?
                        .ok_or(LlvmError::Internal("fma"))?
                        .into_float_value();
                }
                let mut x = 1;
                while x < lpk {
                    dot = g.fadd(dot, g.shfl_xor(dot, x)?)?;
                    x *= 2;
                }
                let inside = g.and(*valid, row.live)?;
                let e = Elem {
                    s: dot,
                    b,
                    h: row.h,
                    q: row.pos,
                    kv: *j,
                    inside,
                    rel: None,
                };
                let keep = match &p.mask {
                    Some(m) => g.and(inside, emit_function(g, &env, m, e)?.into_int_value())?,
                    None => inside,
                };
                let sc = match &p.score {
                    Some(f) => emit_function(g, &env, f, e)?.into_float_value(),
                    None => dot,
                };
                s.push(g.selectf(keep, sc, neg_inf)?);
            }
            // one rescale for the UNROLL keys
            let m_old = g.getf(&st.m[r])?;
            let mut m_new = m_old;
            for x in &s {
                m_new = g.fmax(m_new, *x)?;
            }
            let mref = finite_or_zero(g, m_new)?;
            let alpha = exp_from(g, m_old, mref)?;
            let pk: Vec<FloatValue<'ctx>> =
                s.iter().map(|x| exp_from(g, *x, mref)).collect::<R<_>>()?;
            let mut l = g.fmul(g.getf(&st.l[r])?, alpha)?;
            for x in &pk {
                l = g.fadd(l, *x)?;
            }
            g.set(&st.m[r], m_new)?;
            g.set(&st.l[r], l)?;
            for e in 0..8 {
                let mut o = g.fmul(g.getf(&st.acc[r][e])?, alpha)?;
                for (u, (_, _, _, vv)) in keys.iter().enumerate() {
                    o = g
                        .call(
                            "llvm.fma.f32",
                            Some(g.f32.into()),
                            &[pk[u].into(), vv[e].into(), o.into()],
                        )?
                        .ok_or(LlvmError::Internal("fma"))?
                        .into_float_value();
                }
                g.set(&st.acc[r][e], o)?;
            }
        }
        Ok(())
    })?;

    // ---- merge the key slots of each warp (butterfly over lanes lpk, 2 lpk, ...) ----
    let merge = |m1: FloatValue<'ctx>,
                 l1: FloatValue<'ctx>,
                 m2: FloatValue<'ctx>,
                 l2: FloatValue<'ctx>|
     -> R<(
        FloatValue<'ctx>,
        FloatValue<'ctx>,
        FloatValue<'ctx>,
        FloatValue<'ctx>,
    )> {
        let m = g.fmax(m1, m2)?;
        let mref = finite_or_zero(g, m)?;
        let f1 = exp_from(g, m1, mref)?;
        let f2 = exp_from(g, m2, mref)?;
        let l = g.fadd(g.fmul(l1, f1)?, g.fmul(l2, f2)?)?;
        Ok((m, l, f1, f2))
    };
    let mut x = lpk;
    while x < 32 {
        for r in 0..rpc {
            let (m1, l1) = (g.getf(&st.m[r])?, g.getf(&st.l[r])?);
            let (m2, l2) = (g.shfl_xor(m1, x)?, g.shfl_xor(l1, x)?);
            let (m, l, f1, f2) = merge(m1, l1, m2, l2)?;
            for e in 0..8 {
                let o1 = g.getf(&st.acc[r][e])?;
                let o2 = g.shfl_xor(o1, x)?;
                g.set(&st.acc[r][e], g.fadd(g.fmul(o1, f1)?, g.fmul(o2, f2)?)?)?;
            }
            g.set(&st.m[r], m)?;
            g.set(&st.l[r], l)?;
        }
        x *= 2;
    }

    // ---- warps through shared memory: per warp [rpc] m, [rpc] l, [rpc][d] o ----
    let wbytes = (rpc as i64) * (2 + d) * 4;
    let wbase = g.mul(warp, g.c32(wbytes))?;
    let lane0 = g.icmp(IntPredicate::EQ, lane, g.c32(0))?;
    let slot0 = g.icmp(IntPredicate::EQ, slot, g.c32(0))?;
    for r in 0..rpc {
        let (m, l) = (g.getf(&st.m[r])?, g.getf(&st.l[r])?);
        g.if_then(lane0, || {
            g.store(g.smem_at(g.add(wbase, g.c32(r as i64 * 4))?)?, m)?;
            g.store(g.smem_at(g.add(wbase, g.c32((rpc + r) as i64 * 4))?)?, l)
        })?;
        let accs: Vec<FloatValue<'ctx>> =
            (0..8).map(|e| g.getf(&st.acc[r][e])).collect::<R<_>>()?;
        g.if_then(slot0, || {
            for (e, v) in accs.iter().enumerate() {
                let col = g.add(g.mul(chunk8, g.c32(8))?, g.c32(e as i64))?;
                let off = g.add(
                    wbase,
                    g.mul(g.add(g.c32(2 * rpc as i64 + r as i64 * d), col)?, g.c32(4))?,
                )?;
                g.store(g.smem_at(off)?, *v)?;
            }
            Ok(())
        })?;
    }
    g.barrier()?;

    // ---- warp 0 merges the warps and writes the split's partial ----
    let is_w0 = g.icmp(IntPredicate::EQ, warp, g.c32(0))?;
    let splits = a.int(P::Splits)?;
    g.if_then(is_w0, || {
        // partial index: ((b * Hkv + hk) * rgs + rg) * splits + split
        let pidx = g.add(
            g.mul(g.add(g.mul(g.add(g.mul(b, hkv)?, hk)?, rgs)?, rg)?, splits)?,
            split,
        )?;
        let pidx = g.zext64(pidx)?;
        let po = a.ptr(P::PartO)?;
        let pl = a.ptr(P::PartLse)?;
        let fload = |off: IntValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(g.b
                .build_load(g.f32, g.smem_at(off)?, "")?
                .into_float_value())
        };
        for r in 0..rpc {
            let mut m = fload(g.c32(r as i64 * 4))?;
            let mut l = fload(g.c32((rpc + r) as i64 * 4))?;
            // lanes cover columns lane, lane + 32, ...
            let ncol = (d as usize).div_ceil(32);
            let mut o: Vec<FloatValue<'ctx>> = (0..ncol)
                .map(|c| {
                    let col = g.add(lane, g.c32(32 * c as i64))?;
                    let colc = g.iintr2("llvm.smin.i32", col, g.c32(d - 1))?;
                    fload(g.mul(g.add(g.c32(2 * rpc as i64 + r as i64 * d), colc)?, g.c32(4))?)
                })
                .collect::<R<_>>()?;
            for w in 1..WARPS as i64 {
                let wb = w * wbytes;
                let m2 = fload(g.c32(wb + r as i64 * 4))?;
                let l2 = fload(g.c32(wb + (rpc + r) as i64 * 4))?;
                let (mm, ll, f1, f2) = merge(m, l, m2, l2)?;
                for (c, oc) in o.iter_mut().enumerate() {
                    let col = g.add(lane, g.c32(32 * c as i64))?;
                    let colc = g.iintr2("llvm.smin.i32", col, g.c32(d - 1))?;
                    let o2 = fload(g.add(
                        g.c32(wb),
                        g.mul(g.add(g.c32(2 * rpc as i64 + r as i64 * d), colc)?, g.c32(4))?,
                    )?)?;
                    *oc = g.fadd(g.fmul(*oc, f1)?, g.fmul(o2, f2)?)?;
                }
                m = mm;
                l = ll;
            }
            // normalized O and LSE (natural log); -inf / 0 when no key was seen
            let empty = g.fcmp(FloatPredicate::OEQ, l, g.cf(0.0))?;
            let inv = g.selectf(empty, g.cf(0.0), g.b.build_float_div(g.cf(1.0), l, "")?)?;
            let lse = g.fadd(m, g.fmul(g.lg2(l)?, g.cf(std::f32::consts::LN_2))?)?;
            let lse = g.selectf(empty, neg_inf, lse)?;
            let prow = g.add(g.mul(pidx, g.c64(rpc as i64))?, g.c64(r as i64))?;
            g.if_then(lane0, || {
                g.store(g.gep_bytes(pl, g.mul(prow, g.c64(4))?)?, lse)
            })?;
            for (c, oc) in o.iter().enumerate() {
                let col = g.add(lane, g.c32(32 * c as i64))?;
                let ok = g.icmp(IntPredicate::SLT, col, g.c32(d))?;
                let v = g.fmul(*oc, inv)?;
                g.if_then(ok, || {
                    let at = g.add(g.mul(prow, g.c64(d))?, g.zext64(col)?)?;
                    g.store(g.gep_bytes(po, g.mul(at, g.c64(4))?)?, v)
                })?;
            }
        }
        Ok(())
    })?;
    g.b.build_return(None)?;
    g.close_allocas(start)?;
    Ok(g.module.clone())
}

fn build_combine<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    opts: &DecodeOptions,
    params: &[DecodeParam],
    entry: &str,
) -> R<Module<'ctx>> {
    use DecodeParam as P;
    let g = declare(ctx, module, params, entry);
    let start = g.open_body();
    let a = Args { g: &g, params };
    let g = &g;
    let rpc = opts.rows as i64;
    let d = opts.d as i64;
    // sm_90: the grid may start under the decode kernel's tail (programmatic dependent
    // launch); nothing is read before the decode grid has completed
    if opts.arch == Arch::Sm90 {
        // the next call's decode kernel may be scheduled now (it waits for this grid):
        // with COPY_COMBINE_TRIGGER already before the wait, under the decode grid
        let trigger_first = opts.copy & COPY_COMBINE_TRIGGER != 0;
        if trigger_first {
            g.griddep_launch_dependents()?;
        }
        g.griddep_wait()?;
        if !trigger_first {
            g.griddep_launch_dependents()?;
        }
    }
    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    if opts.copy & COPY_COMBINE_ROWS != 0 {
        combine_rows(g, &a, opts, warp, lane)?;
        g.b.build_return(None)?;
        g.close_allocas(start)?;
        return Ok(g.module.clone());
    }
    let i = g.ctaid('x')?;
    let h = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let (hq, hkv, lq, group, rgs, splits) = (
        a.int(P::Hq)?,
        a.int(P::Hkv)?,
        a.int(P::Lq)?,
        a.int(P::Group)?,
        a.int(P::RowGroups)?,
        a.int(P::Splits)?,
    );
    let hk = g.udiv(h, group)?;
    let gi = g.sub(h, g.mul(hk, group)?)?;
    let row = g.add(g.mul(gi, lq)?, i)?;
    let rg = g.udiv(row, g.c32(rpc))?;
    let rl = g.sub(row, g.mul(rg, g.c32(rpc))?)?;
    // partial (split s) of this row: ((b * Hkv + hk) * rgs + rg) * splits + s, row rl
    let base = g.mul(g.add(g.mul(g.add(g.mul(b, hkv)?, hk)?, rgs)?, rg)?, splits)?;
    let pl = a.ptr(P::PartLse)?;
    let po = a.ptr(P::PartO)?;
    let prow = |s: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.add(
            g.mul(g.zext64(g.add(base, s)?)?, g.c64(rpc))?,
            g.zext64(rl)?,
        )
    };
    // shared memory: per warp D partial sums of O, then per warp a max and a sum
    let red_at = |which: i64, w: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let at = (WARPS as i64 * d + which * WARPS as i64) * 4;
        g.add(g.mul(w, g.c32(4))?, g.c32(at))
    };
    // 1. warp w merges splits w, w + WARPS, .. in rounds of COMBINE_UNROLL (every load
    //    of a round, LSE and O, issued before its sums) with a running max: (m_w, sum_w,
    //    acc_w) with acc_w = sum over its splits of exp(lse_s - m_w) o_s; lane l holds
    //    columns l * cpt .. + cpt
    let cpt = d / 32;
    let c0 = g.mul(lane, g.c32(cpt))?;
    let m_run = g.var(g.f32, g.cf(f32::NEG_INFINITY))?;
    let s_run = g.var(g.f32, g.cf(0.0))?;
    let accs: Vec<Var<'ctx>> = (0..cpt)
        .map(|_| g.var(g.f32, g.cf(0.0)))
        .collect::<R<_>>()?;
    let unroll = if opts.copy & COPY_COMBINE_WIDE != 0 {
        COMBINE_UNROLL_WIDE
    } else {
        COMBINE_UNROLL
    };
    let wstep = g.c32(WARPS as i64 * unroll);
    g.for_range(warp, splits, wstep, |s0| {
        let mut loaded = Vec::new();
        for u in 0..unroll {
            let s = g.add(s0, g.c32(u * WARPS as i64))?;
            let ok = g.icmp(IntPredicate::SLT, s, splits)?;
            let pr = prow(g.selecti(ok, s, s0)?)?;
            let l = g.load_f32(pl, pr)?;
            let at = g.add(g.mul(pr, g.c64(d))?, g.zext64(c0)?)?;
            let os: Vec<FloatValue<'ctx>> = (0..cpt)
                .map(|c| g.load_f32(po, g.add(at, g.c64(c))?))
                .collect::<R<_>>()?;
            loaded.push((g.selectf(ok, l, g.cf(f32::NEG_INFINITY))?, os));
        }
        merge_partials(g, &m_run, &s_run, &accs, loaded)
    })?;
    // 2. the warps' states through shared memory: acc_w per column, m_w and sum_w
    let part_at = |w: IntValue<'ctx>, c: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.mul(g.add(g.mul(w, g.c32(d))?, c)?, g.c32(4))
    };
    for (k, acc) in accs.iter().enumerate() {
        let c = g.add(c0, g.c32(k as i64))?;
        g.store(g.smem_at(part_at(warp, c)?)?, g.getf(acc)?)?;
    }
    g.if_then(g.icmp(IntPredicate::EQ, lane, g.c32(0))?, || {
        g.store(g.smem_at(red_at(0, warp)?)?, g.getf(&m_run)?)?;
        g.store(g.smem_at(red_at(1, warp)?)?, g.getf(&s_run)?)
    })?;
    g.barrier()?;
    // 3. every thread: the CTA's max, each warp's weight exp(m_w - m), the sum; thread t
    //    writes columns t, t + THREADS, .. of O = sum_w f_w acc_w / sum_w f_w sum_w (the
    //    warps in order: deterministic)
    let ld = |off: IntValue<'ctx>| -> R<FloatValue<'ctx>> {
        Ok(g.b
            .build_load(g.f32, g.smem_at(off)?, "")?
            .into_float_value())
    };
    let ms: Vec<FloatValue<'ctx>> = (0..WARPS)
        .map(|w| ld(red_at(0, g.c32(w as i64))?))
        .collect::<R<_>>()?;
    let mut m = ms[0];
    for x in &ms[1..] {
        m = g.fmax(m, *x)?;
    }
    let mref = finite_or_zero(g, m)?;
    let fs: Vec<FloatValue<'ctx>> = ms.iter().map(|x| exp_from(g, *x, mref)).collect::<R<_>>()?;
    let mut sum = g.cf(0.0);
    for (w, f) in fs.iter().enumerate() {
        let sw = ld(red_at(1, g.c32(w as i64))?)?;
        sum = g.fadd(sum, g.fmul(*f, sw)?)?;
    }
    let empty = g.fcmp(FloatPredicate::OEQ, sum, g.cf(0.0))?;
    let inv = g.selectf(empty, g.cf(0.0), g.b.build_float_div(g.cf(1.0), sum, "")?)?;
    let out_row = g.zext64(g.add(g.mul(g.add(g.mul(b, hq)?, h)?, lq)?, i)?)?;
    let half = match opts.input {
        InputType::Bf16 => g.ctx.bf16_type(),
        InputType::F16 => g.ctx.f16_type(),
    };
    let optr = a.ptr(P::O)?;
    for k in 0..(d as u32).div_ceil(THREADS) {
        let col = g.add(tid, g.c32(k as i64 * THREADS as i64))?;
        let ok = g.icmp(IntPredicate::SLT, col, g.c32(d))?;
        g.if_then(ok, || {
            let mut v = g.cf(0.0);
            for (w, f) in fs.iter().enumerate() {
                let x = ld(part_at(g.c32(w as i64), col)?)?;
                v = g.fadd(v, g.fmul(*f, x)?)?;
            }
            let hv = g.b.build_float_trunc(g.fmul(v, inv)?, half, "")?;
            let at = g.add(g.mul(out_row, g.c64(d))?, g.zext64(col)?)?;
            g.store(g.gep_bytes(optr, g.mul(at, g.c64(2))?)?, hv)
        })?;
    }
    let lse = g.fadd(mref, g.fmul(g.lg2(sum)?, g.cf(std::f32::consts::LN_2))?)?;
    let lse = g.selectf(empty, g.cf(f32::NEG_INFINITY), lse)?;
    g.if_then(g.icmp(IntPredicate::EQ, tid, g.c32(0))?, || {
        g.store(g.gep_bytes(a.ptr(P::Lse)?, g.mul(out_row, g.c64(4))?)?, lse)
    })?;
    g.b.build_return(None)?;
    g.close_allocas(start)?;
    Ok(g.module.clone())
}

/// [`COPY_COMBINE_ROWS`]'s combine: CTA (0, h, b), warp `warp` merges rows `warp`,
/// `warp + WARPS`, .. of head `h`, each row's splits in split order (rounds of
/// [`COMBINE_UNROLL`] loads), and writes the row's O (lane `lane`: columns `lane D/32`
/// ..) and LSE (lane 0).
fn combine_rows<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    opts: &DecodeOptions,
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
) -> R<()> {
    use DecodeParam as P;
    let rpc = opts.rows as i64;
    let d = opts.d as i64;
    let h = g.ctaid('y')?;
    let b = g.ctaid('z')?;
    let (hq, hkv, lq, group, rgs, splits) = (
        a.int(P::Hq)?,
        a.int(P::Hkv)?,
        a.int(P::Lq)?,
        a.int(P::Group)?,
        a.int(P::RowGroups)?,
        a.int(P::Splits)?,
    );
    let hk = g.udiv(h, group)?;
    let gi = g.sub(h, g.mul(hk, group)?)?;
    let (pl, po, optr) = (a.ptr(P::PartLse)?, a.ptr(P::PartO)?, a.ptr(P::O)?);
    let half = match opts.input {
        InputType::Bf16 => g.ctx.bf16_type(),
        InputType::F16 => g.ctx.f16_type(),
    };
    let cpt = d / 32;
    let c0 = g.mul(lane, g.c32(cpt))?;
    let m_run = g.var(g.f32, g.cf(f32::NEG_INFINITY))?;
    let s_run = g.var(g.f32, g.cf(0.0))?;
    let accs: Vec<Var<'ctx>> = (0..cpt)
        .map(|_| g.var(g.f32, g.cf(0.0)))
        .collect::<R<_>>()?;
    g.for_range(warp, lq, g.c32(WARPS as i64), |i| {
        let row = g.add(g.mul(gi, lq)?, i)?;
        let rg = g.udiv(row, g.c32(rpc))?;
        let rl = g.sub(row, g.mul(rg, g.c32(rpc))?)?;
        // partial (split s) of this row: ((b * Hkv + hk) * rgs + rg) * splits + s, row rl
        let base = g.mul(g.add(g.mul(g.add(g.mul(b, hkv)?, hk)?, rgs)?, rg)?, splits)?;
        let prow = |s: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            g.add(
                g.mul(g.zext64(g.add(base, s)?)?, g.c64(rpc))?,
                g.zext64(rl)?,
            )
        };
        g.set(&m_run, g.cf(f32::NEG_INFINITY))?;
        g.set(&s_run, g.cf(0.0))?;
        for acc in &accs {
            g.set(acc, g.cf(0.0))?;
        }
        g.for_range(g.c32(0), splits, g.c32(COMBINE_UNROLL), |s0| {
            let mut loaded = Vec::new();
            for u in 0..COMBINE_UNROLL {
                let s = g.add(s0, g.c32(u))?;
                let ok = g.icmp(IntPredicate::SLT, s, splits)?;
                let pr = prow(g.selecti(ok, s, s0)?)?;
                let l = g.load_f32(pl, pr)?;
                let at = g.add(g.mul(pr, g.c64(d))?, g.zext64(c0)?)?;
                let os: Vec<FloatValue<'ctx>> = (0..cpt)
                    .map(|c| g.load_f32(po, g.add(at, g.c64(c))?))
                    .collect::<R<_>>()?;
                loaded.push((g.selectf(ok, l, g.cf(f32::NEG_INFINITY))?, os));
            }
            merge_partials(g, &m_run, &s_run, &accs, loaded)
        })?;
        let sum = g.getf(&s_run)?;
        let mref = finite_or_zero(g, g.getf(&m_run)?)?;
        let empty = g.fcmp(FloatPredicate::OEQ, sum, g.cf(0.0))?;
        let inv = g.selectf(empty, g.cf(0.0), g.b.build_float_div(g.cf(1.0), sum, "")?)?;
        let out_row = g.zext64(g.add(g.mul(g.add(g.mul(b, hq)?, h)?, lq)?, i)?)?;
        for (k, acc) in accs.iter().enumerate() {
            let col = g.add(c0, g.c32(k as i64))?;
            let hv =
                g.b.build_float_trunc(g.fmul(g.getf(acc)?, inv)?, half, "")?;
            let at = g.add(g.mul(out_row, g.c64(d))?, g.zext64(col)?)?;
            g.store(g.gep_bytes(optr, g.mul(at, g.c64(2))?)?, hv)?;
        }
        let lse = g.fadd(mref, g.fmul(g.lg2(sum)?, g.cf(std::f32::consts::LN_2))?)?;
        let lse = g.selectf(empty, g.cf(f32::NEG_INFINITY), lse)?;
        g.if_then(g.icmp(IntPredicate::EQ, lane, g.c32(0))?, || {
            g.store(g.gep_bytes(a.ptr(P::Lse)?, g.mul(out_row, g.c64(4))?)?, lse)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_kernels_generate_for_every_example_and_layout() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "attn") {
                continue;
            }
            let src = std::fs::read_to_string(&path).unwrap();
            for p in crate::compile_source(&src).unwrap().programs {
                for (paged, rows, d) in [(false, 4, 128), (true, 8, 128), (true, 1, 64)] {
                    let o = DecodeOptions {
                        arch: Arch::Sm90,
                        d,
                        input: InputType::Bf16,
                        rows,
                        paged,
                        copy: 0,
                    };
                    assert_eq!(DecodeOptions::from_ptx(&o.ptx_options()), o);
                    let k = emit_decode(&p, &o).unwrap();
                    if let Ok(dir) = std::env::var("ATTNC_DECODE_PTX_DIR") {
                        let f =
                            format!("{dir}/{}_{}.ptx", k.decode_entry, o.key().replace(':', "_"));
                        std::fs::write(f, &k.decode_ptx).unwrap();
                        let f = format!("{dir}/{}.ptx", k.combine_entry);
                        std::fs::write(f, &k.combine_ptx).unwrap();
                    }
                    assert!(k.decode_ptx.contains(&format!(".entry {}", k.decode_entry)));
                    assert!(
                        k.combine_ptx
                            .contains(&format!(".entry {}", k.combine_entry))
                    );
                    n += 1;
                }
            }
        }
        assert!(n > 20);
    }
}
