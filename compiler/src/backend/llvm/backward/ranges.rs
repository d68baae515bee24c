//! The backward-ranges kernel: the per-row block ranges the backward kernels read
//! ([`KernelParam::Ranges`]), made on the device from a block table the block-table kernel
//! built there (`blocktable.rs`) for a mask over captured tensors, so that a backward over
//! device tensors (the Python package's autograd) visits the blocks their data selects
//! rather than every block of the mask's linear range, with no host round trip.
//!
//! In: [`PtxOptions`] (the architecture, and `q_block` x `kv_block`: the backward
//! kernels' tiles, which the table was built at). Out: the kind's `KernelSpec` and PTX.
//! Parameters ([`PARAMS`]): the table (`RowStart`, `Runs`: `BlockMaps::flatten`'s layout,
//! built without `PtxOptions::mask_kinds`, so run kinds are 0 partial and 1 full), the two
//! outputs `Ranges` (dQ) and `KvRanges` (dK/dV), `Lq`, `Lkv` and `Group`.
//!
//! Output: the values `cuda::backward::{q_ranges, kv_ranges}` make on the host from the
//! same block maps — the exact ones, every point evaluated, which is what the builder
//! makes (`classify::brute_force_maps_like_tables`; the GPU tests compare word for word;
//! the host's own maps classify from summaries of the tensors and may leave a full block
//! partial, so these ranges are at least as sparse as a host build's):
//! - `Ranges[4 row ..]`, per table row (map `(b, h)`, q block): `[first, end, full_first,
//!   full_end]` of its kv blocks — the span of its runs and its longest full run (the
//!   first of equally long ones; `(0, 0)` without one); `[0; 4]` for a row without runs;
//! - `KvRanges[4 ((b_map * kv_head_maps + kv_head_map) * nkv + c) ..]`, per kv block `c`
//!   of each (b, kv head) map: the same over the q blocks whose row reaches block `c` for
//!   some query head of the group, the full range over those where every head's block is
//!   full (the maps of a mask that reads `h` are per query head; `Group` = Hq / Hkv then,
//!   else 1 and one map for all heads).
//!
//! Grid (`TableBlocks` = max(q blocks, kv blocks), `MapKvHeads`, `MapBatches`), two warps:
//! ```text
//! x, hk, bm = ctaid; G = Group; the group's maps: bm * (nctaid.y * G) + hk * G + i, i < G
//! warp 0, the dK/dV column c = x (c < nkv):
//!     for each 32 rows r0, r0 + 32, ..: lane l looks block c up in row r0 + l of each map
//!         (its runs are sorted: the scan stops at the first run ending after c)
//!         reach = ballot(some map's block is partial or full)
//!         all   = ballot(every map's block is full)
//!         first reach = r0 + ctz(reach) (once), end = r0 + 32 - clz(reach)
//!         the longest run of all's bits, carried across the 32-row steps
//!     lane 0 stores [first, end, full_first, full_end], or [0; 4] where no row reaches c
//! warp 1, the dQ row of q block x (x < nq): lane l takes map i = l, l + 32, .. < G
//!     span = (its first run's start, its last run's end), longest run of kind 1
//! ```
//! Reads stay inside the table: rows are `< maps * nq`, runs inside each row's
//! `(begin, end)`, which its builder wrote (no output word is left unwritten for a launch
//! of this grid, so the outputs need no zeroing).

use super::super::cta::Args;
use super::super::gpu::{GLOBAL, Gpu, R, Var};
use super::super::launch_spec::{GridDim, KernelSpec};
use super::super::{EmitText, EmitTimes, KernelParam, PtxKernel, PtxOptions, sanitize};
use super::{count_leading_zeros, count_trailing_zeros, warp_ballot};
use crate::backend::KernelKind;
use crate::plan::{KvBounds, Plan};
use inkwell::AddressSpace;
use inkwell::IntPredicate;
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{IntValue, PointerValue};

/// Threads per CTA: the column's warp and the row's.
pub const THREADS: u32 = 64;
/// The kernel's parameters, in launch order.
pub const PARAMS: [KernelParam; 7] = [
    KernelParam::RowStart,
    KernelParam::Runs,
    KernelParam::Ranges,
    KernelParam::KvRanges,
    KernelParam::Lq,
    KernelParam::Lkv,
    KernelParam::Group,
];
const PASSES: &str = "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,gvn)";

/// The launch description (no code).
pub(crate) fn spec(plan: &Plan, opts: &PtxOptions) -> KernelSpec {
    KernelSpec {
        kind: KernelKind::BackwardRanges,
        entry: format!("attnc_bwd_ranges_{}", sanitize(&plan.program().name)),
        options: *opts,
        q_block: opts.q_block,
        kv_block: opts.kv_block,
        threads: THREADS,
        smem_bytes: 0,
        params: PARAMS.to_vec(),
        grid: [
            GridDim::TableBlocks,
            GridDim::MapKvHeads,
            GridDim::MapBatches,
        ],
        kv_bounds: KvBounds::Table,
        table_skip: None,
    }
}

/// Generates the kernel: its [`spec`] and PTX.
pub(crate) fn generate(
    plan: &Plan,
    opts: &PtxOptions,
    text: EmitText,
) -> Result<(PtxKernel, EmitTimes), super::LlvmError> {
    let spec = spec(plan, opts);
    let tiles = (opts.q_block as i64, opts.kv_block as i64);
    let (ptx, llvm_ir, times) = super::super::run_pipeline(
        plan.program(),
        opts,
        &spec.entry,
        PASSES,
        text,
        |ctx, module| build(ctx, module, tiles, &spec.entry),
    )?;
    Ok((PtxKernel { spec, ptx, llvm_ir }, times))
}

fn build<'ctx>(
    ctx: &'ctx Context,
    module: Module<'ctx>,
    tiles: (i64, i64),
    entry: &str,
) -> R<Module<'ctx>> {
    use KernelParam as P;
    let gptr = ctx.ptr_type(AddressSpace::from(GLOBAL));
    let tys: Vec<BasicMetadataTypeEnum<'ctx>> = PARAMS
        .iter()
        .map(|p| match p {
            P::RowStart | P::Runs | P::Ranges | P::KvRanges => gptr.into(),
            _ => ctx.i32_type().into(),
        })
        .collect();
    let func = module.add_function(entry, ctx.void_type().fn_type(&tys, false), None);
    func.set_call_conventions(71); // ptx_kernel
    func.add_attribute(
        AttributeLoc::Function,
        ctx.create_string_attribute("nvvm.maxntid", &THREADS.to_string()),
    );
    let g = Gpu::new(ctx, module, func);
    let start = g.open_body();
    body(&g, tiles)?;
    g.b.build_return(None)?;
    g.close_allocas(start)?;
    Ok(g.module.clone())
}

/// A block table on the device, as the block-table kernel wrote it, and the maps of one
/// (b, kv head) group.
struct Table<'ctx> {
    row_start: PointerValue<'ctx>,
    runs: PointerValue<'ctx>,
    /// q blocks per map.
    nq: IntValue<'ctx>,
    /// The group's first map, and its maps (`Group`).
    first_map: IntValue<'ctx>,
    group: IntValue<'ctx>,
}

/// One run of a row: kv blocks `start..end`, `full` 1 (full) or 0 (partial).
struct Run<'ctx> {
    start: IntValue<'ctx>,
    end: IntValue<'ctx>,
    full: IntValue<'ctx>,
}

impl<'ctx> Table<'ctx> {
    /// The table row of the group's map `i` at q block `r`.
    fn row(&self, g: &Gpu<'ctx>, i: IntValue<'ctx>, r: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        g.add(g.mul(g.add(self.first_map, i)?, self.nq)?, r)
    }
    /// The run indices `begin..end` of a row.
    fn span(&self, g: &Gpu<'ctx>, row: IntValue<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        let at = g.zext64(g.mul(row, g.c32(2))?)?;
        Ok((
            g.load_i32(self.row_start, at)?,
            g.load_i32(self.row_start, g.b.build_int_add(at, g.c64(1), "")?)?,
        ))
    }
    fn run(&self, g: &Gpu<'ctx>, j: IntValue<'ctx>) -> R<Run<'ctx>> {
        let at = g.zext64(g.mul(j, g.c32(3))?)?;
        let word = |k: i64| -> R<IntValue<'ctx>> {
            g.load_i32(self.runs, g.b.build_int_add(at, g.c64(k), "")?)
        };
        Ok(Run {
            start: word(0)?,
            end: word(1)?,
            full: word(2)?,
        })
    }
    /// Block `c`'s kind in `row`: 0 empty, 1 partial, 2 full. The runs are sorted and
    /// disjoint: the scan stops at the first run that ends after `c`.
    fn kind_at(&self, g: &Gpu<'ctx>, row: IntValue<'ctx>, c: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let (begin, end) = self.span(g, row)?;
        let j = g.var(g.i32, begin)?;
        let kind = g.var(g.i32, g.c32(0))?;
        let more = g.var(g.i1, g.cbool(true))?;
        g.while_loop(
            || {
                let left = g.icmp(IntPredicate::ULT, g.geti(&j)?, end)?;
                Ok(g.b.build_and(left, g.geti(&more)?, "")?)
            },
            || {
                let run = self.run(g, g.geti(&j)?)?;
                let past = g.icmp(IntPredicate::ULT, c, run.end)?;
                let inside = g.icmp(IntPredicate::UGE, c, run.start)?;
                let here = g.b.build_and(past, inside, "")?;
                let full = g.icmp(IntPredicate::EQ, run.full, g.c32(1))?;
                let k = g.selecti(full, g.c32(2), g.c32(1))?;
                g.set(&kind, g.selecti(here, k, g.c32(0))?)?;
                g.set(&more, g.b.build_not(past, "")?)?;
                g.set(&j, g.add(g.geti(&j)?, g.c32(1))?)
            },
        )?;
        g.geti(&kind)
    }
}

/// `best = (start, end)` where `cond` holds and the span is strictly longer than `best`'s
/// (so the first of equally long ones stays, as the host's rule).
fn keep_longer<'ctx>(
    g: &Gpu<'ctx>,
    best: &(Var<'ctx>, Var<'ctx>),
    (start, end): (IntValue<'ctx>, IntValue<'ctx>),
    cond: IntValue<'ctx>,
) -> R<()> {
    let (b0, b1) = (g.geti(&best.0)?, g.geti(&best.1)?);
    let longer = g.icmp(IntPredicate::SGT, g.sub(end, start)?, g.sub(b1, b0)?)?;
    let take = g.b.build_and(cond, longer, "")?;
    g.set(&best.0, g.selecti(take, start, b0)?)?;
    g.set(&best.1, g.selecti(take, end, b1)?)
}

/// The longest run of set bits seen so far over a sequence of rows: its start and end,
/// and the current run's start (`-1`: none open).
struct Longest<'ctx> {
    best: (Var<'ctx>, Var<'ctx>),
    open: Var<'ctx>,
}

impl<'ctx> Longest<'ctx> {
    fn new(g: &Gpu<'ctx>) -> R<Self> {
        Ok(Longest {
            best: (g.var(g.i32, g.c32(0))?, g.var(g.i32, g.c32(0))?),
            open: g.var(g.i32, g.c32(-1))?,
        })
    }
    /// Row `r` is in (`set`) or out: a run grows or closes; the best is replaced only by
    /// a strictly longer one ([`keep_longer`]).
    fn push(&self, g: &Gpu<'ctx>, r: IntValue<'ctx>, set: IntValue<'ctx>) -> R<()> {
        let open = g.geti(&self.open)?;
        let was_open = g.icmp(IntPredicate::SGE, open, g.c32(0))?;
        let start = g.selecti(was_open, open, r)?;
        g.set(&self.open, g.selecti(set, start, g.c32(-1))?)?;
        keep_longer(g, &self.best, (start, g.add(r, g.c32(1))?), set)
    }
    fn get(&self, g: &Gpu<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        Ok((g.geti(&self.best.0)?, g.geti(&self.best.1)?))
    }
}

fn body<'ctx>(g: &Gpu<'ctx>, (qbs, kvbs): (i64, i64)) -> R<()> {
    use KernelParam as P;
    let a = Args { g, params: &PARAMS };
    let tid = g.tid_x()?;
    let warp = g.lshr(tid, g.c32(5))?;
    let lane = g.and(tid, g.c32(31))?;
    let (x, hk, bm) = (g.ctaid('x')?, g.ctaid('y')?, g.ctaid('z')?);
    let group = a.int(P::Group)?;
    let ceil = |n: IntValue<'ctx>, blk: i64| g.udiv(g.add(n, g.c32(blk - 1))?, g.c32(blk));
    let nq = ceil(a.int(P::Lq)?, qbs)?;
    let nkv = ceil(a.int(P::Lkv)?, kvbs)?;
    let head_maps = g.mul(g.nctaid('y')?, group)?;
    let table = Table {
        row_start: a.ptr(P::RowStart)?,
        runs: a.ptr(P::Runs)?,
        nq,
        first_map: g.add(g.mul(bm, head_maps)?, g.mul(hk, group)?)?,
        group,
    };
    let column = g.b.build_and(
        g.icmp(IntPredicate::EQ, warp, g.c32(0))?,
        g.icmp(IntPredicate::ULT, x, nkv)?,
        "",
    )?;
    g.if_then(column, || {
        let out = g.mul(
            g.add(g.mul(g.add(g.mul(bm, g.nctaid('y')?)?, hk)?, nkv)?, x)?,
            g.c32(4),
        )?;
        dkdv_column(g, &table, x, lane, out, a.ptr(P::KvRanges)?)
    })?;
    let row = g.b.build_and(
        g.icmp(IntPredicate::EQ, warp, g.c32(1))?,
        g.icmp(IntPredicate::ULT, x, nq)?,
        "",
    )?;
    g.if_then(row, || dq_rows(g, &table, x, lane, a.ptr(P::Ranges)?))
}

/// Warp 0: the q blocks that reach kv block `c` (module header), stored at `out`.
fn dkdv_column<'ctx>(
    g: &Gpu<'ctx>,
    t: &Table<'ctx>,
    c: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    out: IntValue<'ctx>,
    ranges: PointerValue<'ctx>,
) -> R<()> {
    let first = g.var(g.i32, g.c32(-1))?;
    let end = g.var(g.i32, g.c32(0))?;
    let full = Longest::new(g)?;
    g.for_range(g.c32(0), t.nq, g.c32(32), |r0| {
        let r = g.add(r0, lane)?;
        let live = g.icmp(IntPredicate::ULT, r, t.nq)?;
        let reach = g.var(g.i1, g.cbool(false))?;
        let all = g.var(g.i1, live)?;
        g.if_then(live, || {
            g.for_range(g.c32(0), t.group, g.c32(1), |i| {
                let kind = t.kind_at(g, t.row(g, i, r)?, c)?;
                let some = g.icmp(IntPredicate::NE, kind, g.c32(0))?;
                g.set(&reach, g.b.build_or(g.geti(&reach)?, some, "")?)?;
                let is_full = g.icmp(IntPredicate::EQ, kind, g.c32(2))?;
                g.set(&all, g.b.build_and(g.geti(&all)?, is_full, "")?)
            })
        })?;
        let reach = warp_ballot(g, g.geti(&reach)?)?;
        let all = warp_ballot(g, g.geti(&all)?)?;
        let any = g.icmp(IntPredicate::NE, reach, g.c32(0))?;
        g.if_then(any, || {
            let lowest = g.add(r0, count_trailing_zeros(g, reach, false)?)?;
            let none_yet = g.icmp(IntPredicate::SLT, g.geti(&first)?, g.c32(0))?;
            g.set(&first, g.selecti(none_yet, lowest, g.geti(&first)?)?)?;
            let clz = count_leading_zeros(g, reach)?;
            g.set(&end, g.sub(g.add(r0, g.c32(32))?, clz)?)
        })?;
        // (the bits past nq are clear: a run closes there, which no later step reopens)
        g.for_range(g.c32(0), g.c32(32), g.c32(1), |k| {
            let bit = g.and(g.lshr(all, k)?, g.c32(1))?;
            full.push(g, g.add(r0, k)?, g.icmp(IntPredicate::NE, bit, g.c32(0))?)
        })
    })?;
    let lane0 = g.icmp(IntPredicate::EQ, lane, g.c32(0))?;
    g.if_then(lane0, || {
        let some = g.icmp(IntPredicate::SGE, g.geti(&first)?, g.c32(0))?;
        let (f0, f1) = full.get(g)?;
        let vals = [g.geti(&first)?, g.geti(&end)?, f0, f1].map(|v| g.selecti(some, v, g.c32(0)));
        store4(g, ranges, out, vals)
    })
}

/// Warp 1: the kv-block spans of q block `r` in the group's maps (module header).
fn dq_rows<'ctx>(
    g: &Gpu<'ctx>,
    t: &Table<'ctx>,
    r: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    ranges: PointerValue<'ctx>,
) -> R<()> {
    g.for_range(lane, t.group, g.c32(32), |i| {
        let row = t.row(g, i, r)?;
        let (begin, end) = t.span(g, row)?;
        let best = (g.var(g.i32, g.c32(0))?, g.var(g.i32, g.c32(0))?);
        g.for_range(begin, end, g.c32(1), |j| {
            let run = t.run(g, j)?;
            let is_full = g.icmp(IntPredicate::EQ, run.full, g.c32(1))?;
            keep_longer(g, &best, (run.start, run.end), is_full)
        })?;
        let some = g.icmp(IntPredicate::ULT, begin, end)?;
        let out = g.mul(row, g.c32(4))?;
        g.if_else(
            some,
            || {
                let (first, last) = (t.run(g, begin)?, t.run(g, g.sub(end, g.c32(1))?)?);
                let vals = [first.start, last.end, g.geti(&best.0)?, g.geti(&best.1)?];
                store4(g, ranges, out, vals.map(Ok))
            },
            || store4(g, ranges, out, [0; 4].map(|_| Ok(g.c32(0)))),
        )
    })
}

/// `base[at .. at + 4] = vals` (i32 words).
fn store4<'ctx>(
    g: &Gpu<'ctx>,
    base: PointerValue<'ctx>,
    at: IntValue<'ctx>,
    vals: [R<IntValue<'ctx>>; 4],
) -> R<()> {
    for (k, v) in vals.into_iter().enumerate() {
        let idx = g.zext64(g.add(at, g.c32(k as i64))?)?;
        // SAFETY: `at` indexes a whole quadruple of the output the launch binds (module
        // header: rows < maps * nq, columns < kv-head maps * nkv per batch map).
        let p = unsafe { g.b.build_gep(g.i32, base, &[idx], "")? };
        g.store(p, v?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::llvm::{Arch, InputType, samples};

    /// On every sample and the backward's tile shapes: the spec without code is the spec
    /// of the code, the PTX has the entry and its two ballots, and two
    /// generations give the same text; `ATTNC_PTXAS` also assembles it for sm_90a.
    #[test]
    fn ranges_kernel_generates() {
        let ptxas = std::env::var("ATTNC_PTXAS").ok();
        for p in samples::all(16) {
            let plan = Plan::new(&p);
            for (qb, kb) in [(64, 128), (128, 128), (64, 64)] {
                let mut o = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
                o.q_block = qb;
                o.kv_block = kb;
                let what = format!("{} {qb}x{kb}", p.name);
                let (k, _) = generate(&plan, &o, EmitText::PtxOnly).unwrap();
                assert_eq!(k.spec, spec(&plan, &o), "{what}");
                assert!(
                    k.ptx.contains(&format!(".entry {}(", k.spec.entry)),
                    "{what}"
                );
                assert_eq!(k.ptx.matches("vote.sync.ballot.b32").count(), 2, "{what}");
                let (again, _) = generate(&plan, &o, EmitText::PtxOnly).unwrap();
                assert_eq!(k.ptx, again.ptx, "{what}: deterministic");
                if let Some(ptxas) = &ptxas {
                    let f = std::env::temp_dir()
                        .join(format!("attnc_bwd_ranges_{}.ptx", std::process::id()));
                    std::fs::write(&f, &k.ptx).unwrap();
                    let out = std::process::Command::new(ptxas)
                        .args(["-arch=sm_90a", "-o", "/dev/null"])
                        .arg(&f)
                        .output()
                        .unwrap();
                    let _ = std::fs::remove_file(&f);
                    assert!(
                        out.status.success() && out.stderr.is_empty(),
                        "{what}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
}
