//! The decode-ranges kernel: on the device, the key positions each sequence of a decode
//! call can reach, for calls whose `seq_lens` live on the device (the caller-buffer
//! decode, `attnc::external`), so that no host round trip is needed before the split-KV
//! kernel (`decode.rs`) launches.
//!
//! In: the [`Plan`] (the implied linear conjuncts of its mask, `Plan::table_skip`, whose
//! i64 offsets arrive as [`KernelParam::KvOffset`] params computed by the host for the
//! logical shape, with [`KernelParam::KvAllPartial`] set when they bound nothing) and
//! [`PtxOptions`] (only the architecture matters). Out: the kind's `KernelSpec` and PTX.
//!
//! Grid `(B, 1, 1)`, one warp; thread 0 of CTA `b`:
//! ```text
//! n      = clamp(seq_lens[b], 0, Lkv)            Lkv: the cache's capacity in positions
//! rows   = positions max(n - Lq, 0) ..= n - 1    (rows at negative positions do not exist)
//! lo, hi = the element range of the linear conjuncts over those rows, within 0..n
//!          (bounds::element_range; 0..n without conjuncts or with KvAllPartial)
//! ranges[b] = (lo, hi), (0, 0) when n = 0
//! ranges[2 B + b] = n                            the clamped lengths
//! ```
//! The clamp is what keeps the split-KV kernel's reads inside the cache whatever the
//! caller's `seq_lens` hold: it reads keys `lo..hi` only, and takes its lengths (the rows'
//! positions) from the clamped copy, so a length beyond the capacity is the capacity and
//! a negative one 0 (checked mode, on the host path, reports them instead).

use super::bounds::element_range;
use super::cta::Args;
use super::gpu::{GLOBAL, Gpu, R};
use super::{
    EmitText, EmitTimes, GridDim, KernelParam, KernelSpec, LlvmError, PtxKernel, PtxOptions,
};
use crate::backend::KernelKind;
use crate::plan::{KvBounds, Plan};
use inkwell::AddressSpace;
use inkwell::IntPredicate;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{IntValue, PointerValue};

/// Threads per CTA (thread 0 works).
pub const THREADS: u32 = 32;
const PASSES: &str = "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,gvn)";

/// The coefficients `(a_q, a_kv)` of the conjuncts the kernel bounds by (empty: none).
fn coefficients(plan: &Plan) -> Vec<(i64, i64)> {
    plan.table_skip(false)
        .map(|cf| KvBounds::ClosedForm(cf.clone()).coefficients())
        .unwrap_or_default()
}

/// [`coefficients`] of `p`'s plan: what the split-KV kernels bound by when they compute
/// the ranges themselves (`decode::COPY_DEVICE_RANGES`), in the order of their
/// `KvOffset` params.
pub(super) fn conjuncts(p: &crate::ir::Program) -> Vec<(i64, i64)> {
    coefficients(&Plan::new(p))
}

/// Sequence `b`'s reachable keys `(lo, hi)` and its length clamped into `0..=Lkv` (the
/// module header's rule), from `lens[b]`, the `Lkv`, `Lq`, `KvOffset` and `KvAllPartial`
/// params of `a`, for the conjuncts `coefs` (none: `0..n`).
pub(super) fn reachable<'ctx>(
    g: &Gpu<'ctx>,
    a: &Args<'_, 'ctx>,
    coefs: &[(i64, i64)],
    lens: PointerValue<'ctx>,
    b: IntValue<'ctx>,
) -> R<(IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>)> {
    use KernelParam as P;
    let n = super::cta::sequence_len(g, lens, b, a.int(P::Lkv)?)?;
    let (mut lo, mut hi) = (g.c32(0), n);
    if !coefs.is_empty() {
        let q1 = g.sub(n, g.c32(1))?;
        let q0 = g.iintr2("llvm.smax.i32", g.sub(n, a.int(P::Lq)?)?, g.c32(0))?;
        let offsets: Vec<IntValue<'ctx>> = (0..coefs.len() as u32)
            .map(|i| a.int(P::KvOffset(i)))
            .collect::<R<_>>()?;
        let [first, end] = element_range(
            g,
            coefs,
            &offsets,
            g.sext64(q0)?,
            g.sext64(q1)?,
            g.sext64(n)?,
        )?;
        let t =
            |x: IntValue<'ctx>| -> R<IntValue<'ctx>> { Ok(g.b.build_int_truncate(x, g.i32, "")?) };
        let all = g.icmp(IntPredicate::NE, a.int(P::KvAllPartial)?, g.c32(0))?;
        lo = g.selecti(all, lo, t(first)?)?;
        hi = g.selecti(all, hi, t(end)?)?;
    }
    // no keys (n = 0, or nothing reachable): (0, 0)
    let none = g.icmp(IntPredicate::SLE, hi, lo)?;
    let lo = g.selecti(none, g.c32(0), lo)?;
    let hi = g.selecti(none, g.c32(0), hi)?;
    Ok((lo, hi, n))
}

/// The parameters: `SeqLens, Ranges, Lq, Lkv`, then with conjuncts their `KvOffset`s and
/// `KvAllPartial`.
fn param_list(plan: &Plan) -> Vec<KernelParam> {
    let mut v = vec![
        KernelParam::SeqLens,
        KernelParam::Ranges,
        KernelParam::Lq,
        KernelParam::Lkv,
    ];
    let n = coefficients(plan).len() as u32;
    if n > 0 {
        v.extend((0..n).map(KernelParam::KvOffset));
        v.push(KernelParam::KvAllPartial);
    }
    v
}

/// The launch description: grid `(B, 1, 1)`, [`THREADS`] threads, no shared memory.
pub(crate) fn spec(plan: &Plan, opts: &PtxOptions) -> Result<KernelSpec, LlvmError> {
    Ok(KernelSpec {
        kind: KernelKind::DecodeRanges,
        entry: format!(
            "attnc_decode_ranges_{}",
            super::sanitize(&plan.program().name)
        ),
        options: *opts,
        q_block: 1,
        kv_block: 1,
        threads: THREADS,
        smem_bytes: 0,
        params: param_list(plan),
        grid: [GridDim::Batches, GridDim::One, GridDim::One],
        kv_bounds: KvBounds::Table,
        table_skip: plan.table_skip(false).cloned(),
    })
}

/// Generates the kernel: its [`spec`] and PTX.
pub(crate) fn generate(
    plan: &Plan,
    opts: &PtxOptions,
    text: EmitText,
) -> Result<(PtxKernel, EmitTimes), LlvmError> {
    let spec = spec(plan, opts)?;
    let coefs = coefficients(plan);
    let (ptx, llvm_ir, times) = super::run_pipeline(
        plan.program(),
        opts,
        &spec.entry,
        PASSES,
        text,
        |ctx, module| build(ctx, module, &coefs, &spec.params, &spec.entry),
    )?;
    Ok((PtxKernel { spec, ptx, llvm_ir }, times))
}

fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    coefs: &[(i64, i64)],
    params: &[KernelParam],
    entry: &str,
) -> R<Module<'ctx>> {
    use KernelParam as P;
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|p| match p {
            P::SeqLens | P::Ranges => gptr.into(),
            P::KvOffset(_) => ctx.i64_type().into(),
            _ => ctx.i32_type().into(),
        })
        .collect();
    let func = module.add_function(entry, ctx.void_type().fn_type(&tys, false), None);
    func.set_call_conventions(71); // ptx_kernel
    let g = Gpu::new(ctx, module, func);
    let start = g.open_body();
    let a = Args { g: &g, params };
    let g = &g;
    let b = g.ctaid('x')?;
    let first_thread = g.icmp(IntPredicate::EQ, g.tid_x()?, g.c32(0))?;
    g.if_then(first_thread, || {
        let (lo, hi, n) = reachable(g, &a, coefs, a.ptr(P::SeqLens)?, b)?;
        let ranges = a.ptr(P::Ranges)?;
        let at = g.mul(b, g.c32(2))?;
        store_i32(g, ranges, at, lo)?;
        store_i32(g, ranges, g.add(at, g.c32(1))?, hi)?;
        let batches = g.nctaid('x')?;
        store_i32(g, ranges, g.add(g.mul(batches, g.c32(2))?, b)?, n)
    })?;
    g.b.build_return(None)?;
    g.close_allocas(start)?;
    Ok(g.module.clone())
}

/// `base[index] = v` (i32 elements, `index` i32 non-negative).
fn store_i32<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    v: IntValue<'ctx>,
) -> R<()> {
    let idx = g.zext64(index)?;
    // SAFETY: `index` < 3 B, inside the `i32[3 B]` ranges buffer the launch binds.
    let p = unsafe { g.b.build_gep(g.i32, base, &[idx], "")? };
    g.store(p, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llvm::{Arch, InputType, samples};

    /// Every sample generates; masks with linear conjuncts take their offsets, others
    /// read only the lengths; the spec without code is the spec of the code.
    #[test]
    fn ranges_kernel_generates_for_every_sample() {
        let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
        let mut with_offsets = 0;
        for p in samples::all(16) {
            let plan = Plan::new(&p);
            let s = spec(&plan, &opts).unwrap();
            let (k, _) = generate(&plan, &opts, EmitText::PtxOnly).unwrap();
            assert_eq!(k.spec, s, "{}", p.name);
            assert!(
                k.ptx.contains(&format!(".entry {}(", s.entry)),
                "{}",
                p.name
            );
            let n = coefficients(&plan).len();
            assert_eq!(
                s.params
                    .iter()
                    .filter(|x| matches!(x, KernelParam::KvOffset(_)))
                    .count(),
                n
            );
            with_offsets += (n > 0) as usize;
        }
        assert!(with_offsets > 0);
    }
}

/// The split-KV kernels with `decode::COPY_DEVICE_RANGES`: the decode-ranges kernel's
/// computation inside them.
#[cfg(test)]
mod device_ranges {
    use crate::backend::llvm::decode::{COPY_DEVICE_RANGES, DecodeOptions, emit_decode};
    use crate::backend::llvm::decode_mma::{
        COPY_BALANCED, COPY_DIRECT, COPY_EARLY, COPY_FULL_TILE, COPY_IDS_LATE, COPY_STEAL,
        COPY_WGMMA, emit_decode_mma,
    };
    use crate::backend::llvm::{Arch, InputType, KernelParam, samples};

    /// On every sample, the SIMT kernel (4 rows) and the tensor-core one (64 rows: mma.sync
    /// and wgmma, the runtime's default bits, work stealing, paged and contiguous): the
    /// kernel takes no `Ranges` and instead the capacity `Lkv` and, where the mask implies
    /// linear conjuncts, one `KvOffset` each and `KvAllPartial` (the decode-ranges
    /// kernel's parameters, in its order), reads `SeqLens` and clamps it (more min / max), and
    /// is deterministic; the combine kernel is unchanged; without the bit the kernel is
    /// as before (`Ranges`, no `Lkv`).
    #[test]
    fn split_kv_kernels_compute_their_ranges() {
        let base = COPY_EARLY | COPY_DIRECT | COPY_IDS_LATE | COPY_FULL_TILE | COPY_BALANCED;
        let mut with_offsets = 0;
        for (p, (rows, copy, paged)) in crate::test_matrix::cases(
            &samples::all(16),
            &[
                (4, 0, false),
                (4, 0, true),
                (64, base, false),
                (64, base | COPY_WGMMA, true),
                (16, COPY_STEAL, true),
            ],
        ) {
            let n = super::conjuncts(&p).len();
            let o = DecodeOptions {
                arch: Arch::Sm90,
                d: 128,
                input: InputType::Bf16,
                rows,
                paged,
                copy,
            };
            let on = DecodeOptions {
                copy: copy | COPY_DEVICE_RANGES,
                ..o
            };
            let emit = |o: &DecodeOptions| {
                if o.rows <= 4 {
                    emit_decode(&p, o).unwrap()
                } else {
                    emit_decode_mma(&p, o).unwrap()
                }
            };
            let (a, b) = (emit(&o), emit(&on));
            let what = format!("{} {}", p.name, on.key());
            assert_ne!(o.key(), on.key(), "{what}");
            assert!(a.decode_params.contains(&KernelParam::Ranges), "{what}");
            assert!(!a.decode_params.contains(&KernelParam::Lkv), "{what}");
            let mut want: Vec<KernelParam> = a
                .decode_params
                .iter()
                .copied()
                .filter(|k| *k != KernelParam::Ranges)
                .collect();
            let at = want.iter().position(|k| *k == KernelParam::Scale).unwrap() + 1;
            let mut tail = vec![KernelParam::Lkv];
            if n > 0 {
                tail.extend((0..n as u32).map(KernelParam::KvOffset));
                tail.push(KernelParam::KvAllPartial);
            }
            want.splice(at..at, tail);
            assert_eq!(b.decode_params, want, "{what}");
            assert_eq!(
                (&a.combine_ptx, &a.combine_params),
                (&b.combine_ptx, &b.combine_params),
                "{what}"
            );
            let clamps = |k: &str| k.matches("min.s32").count() + k.matches("max.s32").count();
            assert!(clamps(&b.decode_ptx) > clamps(&a.decode_ptx), "{what}");
            assert_eq!(
                b.decode_ptx.matches(".param .u64").count(),
                a.decode_ptx.matches(".param .u64").count() - 1 + n,
                "{what}: Ranges out, the i64 offsets in"
            );
            assert_eq!(emit(&on), b, "{what}: deterministic");
        }
        for p in samples::all(16) {
            let n = super::conjuncts(&p).len();
            with_offsets += (n > 0) as usize;
        }
        assert!(with_offsets > 0);
    }
}
