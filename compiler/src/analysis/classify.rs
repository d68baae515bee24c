//! Block classification: which (q-block, kv-block) tiles of a mask are empty, full or
//! partial, derived by analysis of the mask IR rather than by evaluating it everywhere.
//!
//! In: a verified [`Program`], its [`MaskInfo`] (from `analyze`, at compile time: `plan::Plan`), the
//! launch [`Shape`], block sizes and [`Bindings`] (param values, captured tensors).
//! Out: [`BlockMaps`] — one [`BlockMap`] per (b, h) slice the mask depends on, with
//! broadcasting strides for the arguments it ignores.
//!
//! Three tiers share one evaluator ([`Evaluator`]): index-only masks, masks over params
//! (params become singleton intervals) and masks over captured tensors (loads answered
//! by per-chunk min/max summaries built in one O(N) pass). Conjunctions of linear
//! constraints in q and kv use their closed form ([`ClosedForm`]) in O(#q-blocks); all
//! other masks are classified quadtree-style: a rectangle of blocks is evaluated as one
//! box, settled rectangles are emitted whole and unsettled ones are cut in two, down to
//! single blocks, whose unsettled results are refined by cutting the element box at the
//! points the evaluator suggests (so `kv < P || q >= kv` is exact).
//!
//! On the CUDA backend, tensor masks are not classified here at launch: the block-table
//! kernel (`backend::llvm::blocktable`) builds their exact table on the GPU; this module
//! stays the path for the CPU backend and the fallback, and [`brute_force_maps`] is the
//! oracle both are tested against.
//! [`Implied`] is the closed form of a mask's linear conjuncts with its per-launch check
//! (what the block-table kernel uses to skip tiles).
//! [`closed_form_bounds`] gives one launch's closed-form bounds (or `None` when the
//! mask's i32 arithmetic may wrap there); block maps and the closed-form GPU kernels
//! (`backend::llvm::bounds`, which need no maps) both decide with it.
//!
//! Soundness: a block reported empty holds no position (inside `0..lq x 0..lkv`) where
//! the mask is true; a full block none where it is false. Partial is always safe.

use super::blockmap::{BlockKind, BlockMap, BlockMapBuilder, BlockMaps};
use super::interval::{Box4, Evaluator};
use super::linear::ClosedForm;
use super::summaries::TensorSummary;
use crate::interp::{Args, Bindings, EvalError, eval};
use crate::ir::{Arg, Program, Scalar};
use crate::shape::{Shape, ShapeError};
use std::fmt;

/// When a mask's block structure can be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// No mask: every block full.
    Dense,
    /// Depends only on indices (and constants): known once the shape is.
    IndexOnly,
    /// Reads runtime params: classified at launch with their values.
    Params,
    /// Reads captured tensors: classified at launch from tensor summaries.
    Tensors,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Dense => "dense (no mask)",
            Tier::IndexOnly => "index-only (classified when the shape is known)",
            Tier::Params => "params (classified at launch)",
            Tier::Tensors => "captured tensors (classified at launch from tensor summaries)",
        })
    }
}

/// What the compile-time analysis knows about a program's mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskInfo {
    pub tier: Tier,
    /// Whether the mask reads `b` / `h` (otherwise one map serves every batch / head).
    pub uses_b: bool,
    pub uses_h: bool,
    /// The closed form of the kv-block range per q-block, when the mask is a
    /// conjunction of linear constraints in q and kv.
    pub closed_form: Option<ClosedForm>,
}

impl fmt::Display for MaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tier: {}", self.tier)?;
        let dep = match (self.uses_b, self.uses_h) {
            (false, false) => "one map for all batches and heads",
            (true, false) => "one map per batch",
            (false, true) => "one map per head",
            (true, true) => "one map per (batch, head)",
        };
        writeln!(f, "depends on: {dep}")?;
        match &self.closed_form {
            Some(cf) => write!(f, "closed form:\n{cf}"),
            None => write!(f, "closed form: none (quadtree classification)"),
        }
    }
}

/// Errors building block maps from user-supplied sizes and bindings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block sizes must be positive (got {q_block}x{kv_block})")]
    BlockSize { q_block: usize, kv_block: usize },
    #[error("the block maps would have {blocks} blocks; the limit is {max} (use larger blocks)")]
    TooManyBlocks { blocks: String, max: usize },
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("param `{name}` has no value")]
    MissingParam { name: String },
    #[error("captured tensor `{name}` is not bound")]
    MissingTensor { name: String },
    #[error("captured tensor `{name}` has {len} elements but its dims {dims:?} need {expected}")]
    TensorSize {
        name: String,
        len: usize,
        dims: Vec<usize>,
        expected: usize,
    },
}

/// Compile-time facts about `p`'s mask. Called once per program by `plan::Plan::new`;
/// everything else reads the plan.
pub(crate) fn analyze(p: &Program) -> MaskInfo {
    let _span = tracing::debug_span!("analysis", attention = %p.name).entered();
    super::count(1, 0);
    let Some(f) = &p.mask else {
        return MaskInfo {
            tier: Tier::Dense,
            uses_b: false,
            uses_h: false,
            closed_form: None,
        };
    };
    let tier = if f.uses_tensors() {
        Tier::Tensors
    } else if f.uses_params() {
        Tier::Params
    } else {
        Tier::IndexOnly
    };
    let (uses_b, uses_h) = (f.uses_arg(Arg::B), f.uses_arg(Arg::H));
    let closed_form = if tier != Tier::Tensors && !uses_b && !uses_h {
        ClosedForm::derive(p)
    } else {
        None
    };
    MaskInfo {
        tier,
        uses_b,
        uses_h,
        closed_form,
    }
}

/// Evaluations a single block may spend on refinement.
const REFINE_BUDGET: u32 = 24;

/// Most blocks (over all maps) one launch's block maps may have.
pub const MAX_BLOCKS: usize = 1 << 28;

/// Builds the block maps of one launch.
pub fn build_block_maps(
    p: &Program,
    info: &MaskInfo,
    shape: &Shape,
    q_block: usize,
    kv_block: usize,
    bind: &Bindings,
) -> Result<BlockMaps, BlockError> {
    let _span = tracing::debug_span!("block_maps", attention = %p.name, lq = shape.lq, lkv = shape.lkv, q_block, kv_block).entered();
    if q_block == 0 || kv_block == 0 {
        return Err(BlockError::BlockSize { q_block, kv_block });
    }
    shape.validate()?;
    let (lq, lkv) = (shape.lq, shape.lkv);
    let blocks = [
        lq.div_ceil(q_block),
        lkv.div_ceil(kv_block),
        if info.uses_b { shape.b } else { 1 },
        if info.uses_h { shape.hq } else { 1 },
    ]
    .iter()
    .try_fold(1usize, |n, &x| n.checked_mul(x));
    if blocks.is_none_or(|n| n > MAX_BLOCKS) {
        return Err(BlockError::TooManyBlocks {
            blocks: blocks.map_or("more than 2^64".into(), |n| n.to_string()),
            max: MAX_BLOCKS,
        });
    }
    let Some(f) = &p.mask else {
        return Ok(BlockMaps::single(BlockMap::dense(
            lq, lkv, q_block, kv_block,
        )));
    };
    let params = param_values(p, bind)?;
    // (the data of captured tensors is read only by masks over them: a caller-buffer
    // call binds the others by their dims alone, `exec::cuda::caller`)
    if info.tier == Tier::Tensors {
        check_tensors(p, bind)?;
    }
    let summaries: Vec<TensorSummary> = bind.tensors.iter().map(TensorSummary::new).collect();
    let mut ev = Evaluator::new(f, params.iter().map(|s| Some(*s)).collect(), &summaries);
    if lq == 0 || lkv == 0 {
        return Ok(BlockMaps::single(BlockMap::all_partial(
            lq, lkv, q_block, kv_block,
        )));
    }
    // Closed form, when no i32 arithmetic can wrap over the whole domain.
    if let Some(cf) = info
        .closed_form
        .as_ref()
        .filter(|_| !info.uses_b && !info.uses_h)
        && let Some(bounds) = closed_form_bounds(p, cf, shape, bind)?
    {
        return Ok(BlockMaps::single(ClosedForm::block_map(
            &bounds, lq, lkv, q_block, kv_block,
        )));
    }
    let nb = if info.uses_b { shape.b } else { 1 };
    let nh = if info.uses_h { shape.hq } else { 1 };
    let mut maps = Vec::with_capacity(nb * nh);
    for b in 0..nb {
        let br = if info.uses_b {
            (b as i64, b as i64)
        } else {
            (0, shape.b as i64 - 1)
        };
        for h in 0..nh {
            let hr = if info.uses_h {
                (h as i64, h as i64)
            } else {
                (0, shape.hq as i64 - 1)
            };
            maps.push(quadtree(&mut ev, br, hr, lq, lkv, q_block, kv_block));
        }
    }
    Ok(BlockMaps {
        b_stride: if info.uses_b { nh } else { 0 },
        h_stride: if info.uses_h { 1 } else { 0 },
        maps,
    })
}

/// The bounds of `cf` (the closed form of `p`'s mask, or the empty one of a program
/// without mask) for one launch: `Ok(None)` when the mask's i32 arithmetic could wrap
/// somewhere in `0..B x 0..Hq x 0..Lq x 0..Lkv` with these params (the closed form is over
/// exact integers, so it describes the mask only where nothing wraps); an error when a
/// param has no value. Block maps (CPU, table kernels) and closed-form GPU kernels both
/// decide here.
pub fn closed_form_bounds(
    p: &Program,
    cf: &ClosedForm,
    shape: &Shape,
    bind: &Bindings,
) -> Result<Option<Vec<super::linear::Bound>>, BlockError> {
    shape.validate()?;
    let params = param_values(p, bind)?;
    if let Some(f) = &p.mask
        && shape.lq > 0
        && shape.lkv > 0
        && shape.b > 0
        && shape.hq > 0
    {
        let mut ev = Evaluator::new(f, params.iter().map(|s| Some(*s)).collect(), &[]);
        let whole = Box4::new(
            (0, shape.b as i64 - 1),
            (0, shape.hq as i64 - 1),
            (0, shape.lq as i64 - 1),
            (0, shape.lkv as i64 - 1),
        );
        ev.eval(&whole, false);
        if ev.overflowed {
            return Ok(None);
        }
    }
    Ok(cf.bounds(&params))
}

/// The linear conjuncts of a mask (`ClosedForm::derive_implied`) with the program they
/// form (`p` with its mask replaced by their conjunction, `linear::implied_mask`), so that
/// a launch can check, like [`closed_form_bounds`] does for a whole closed-form mask,
/// whether their i32 arithmetic may wrap.
#[derive(Clone, Debug, PartialEq)]
pub struct Implied {
    pub program: Program,
    pub closed_form: ClosedForm,
}

impl Implied {
    /// `None` when no top-level conjunct of `p`'s mask is linear.
    pub(crate) fn derive(p: &Program) -> Option<Implied> {
        let closed_form = ClosedForm::derive_implied(p)?;
        let mask = super::linear::implied_mask(p.mask.as_ref()?)?;
        Some(Implied {
            program: Program {
                mask: Some(mask),
                ..p.clone()
            },
            closed_form,
        })
    }

    /// The implied constraints' bounds for one launch: the mask can be true only where
    /// they hold. `Ok(None)` when their i32 arithmetic may wrap in this launch (then they
    /// bound nothing); an error when a param has no value.
    pub fn bounds(
        &self,
        shape: &Shape,
        bind: &Bindings,
    ) -> Result<Option<Vec<super::linear::Bound>>, BlockError> {
        closed_form_bounds(&self.program, &self.closed_form, shape, bind)
    }
}

fn param_values(p: &Program, bind: &Bindings) -> Result<Vec<Scalar>, BlockError> {
    if bind.params.len() < p.params.len() {
        return Err(BlockError::MissingParam {
            name: p.params[bind.params.len()].name.clone(),
        });
    }
    Ok(bind.params[..p.params.len()].to_vec())
}

fn check_tensors(p: &Program, bind: &Bindings) -> Result<(), BlockError> {
    for (i, t) in p.tensors.iter().enumerate() {
        let Some(bt) = bind.tensors.get(i) else {
            return Err(BlockError::MissingTensor {
                name: t.name.clone(),
            });
        };
        let expected = bt.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(bt.data.len()) {
            return Err(BlockError::TensorSize {
                name: t.name.clone(),
                len: bt.data.len(),
                dims: bt.dims.clone(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
    }
    Ok(())
}

/// Classifies one (b, h) slice — `b` and `h` are argument ranges — by quadtree
/// subdivision of the block grid.
pub fn quadtree(
    ev: &mut Evaluator,
    b: (i64, i64),
    h: (i64, i64),
    lq: usize,
    lkv: usize,
    q_block: usize,
    kv_block: usize,
) -> BlockMap {
    let nq = lq.div_ceil(q_block);
    let nkv = lkv.div_ceil(kv_block);
    // (row, start, end, full) for every row of every non-empty settled rectangle.
    let mut pieces: Vec<(u32, u32, u32, bool)> = Vec::new();
    let mut stack: Vec<(usize, usize, usize, usize)> = Vec::new();
    if nq > 0 && nkv > 0 {
        stack.push((0, nq, 0, nkv));
    }
    let elem = |i0: usize, i1: usize, len: usize, blk: usize| {
        ((i0 * blk) as i64, ((i1 * blk).min(len) - 1) as i64)
    };
    while let Some((i0, i1, j0, j1)) = stack.pop() {
        let bx = Box4::new(b, h, elem(i0, i1, lq, q_block), elem(j0, j1, lkv, kv_block));
        let single = i1 - i0 == 1 && j1 - j0 == 1;
        let r = if single {
            let mut budget = REFINE_BUDGET;
            ev.refine(&bx, &mut budget)
        } else {
            ev.eval(&bx, false)
        };
        if r.is_false() {
            continue;
        }
        if r.is_true() || single {
            for row in i0..i1 {
                pieces.push((row as u32, j0 as u32, j1 as u32, r.is_true()));
            }
            continue;
        }
        // Cut the longer side; push the second half first so the first is done first.
        if i1 - i0 >= j1 - j0 {
            let m = (i0 + i1) / 2;
            stack.push((m, i1, j0, j1));
            stack.push((i0, m, j0, j1));
        } else {
            let m = (j0 + j1) / 2;
            stack.push((i0, i1, m, j1));
            stack.push((i0, i1, j0, m));
        }
    }
    pieces.sort_unstable_by_key(|&(row, start, _, _)| ((row as u64) << 32) | start as u64);
    let mut bld = BlockMapBuilder::new(lq, lkv, q_block, kv_block);
    let mut k = 0;
    for row in 0..nq as u32 {
        while k < pieces.len() && pieces[k].0 == row {
            let (_, s, e, full) = pieces[k];
            bld.push_run(
                s as usize,
                e as usize,
                if full {
                    BlockKind::Full
                } else {
                    BlockKind::Partial
                },
            );
            k += 1;
        }
        bld.end_row();
    }
    bld.finish()
}

/// The exact block maps, by evaluating the mask at every point with the interpreter
/// (the oracle for tests; FlexAttention's method). One map per (b, h):
/// `b_stride = hq`, `h_stride = 1`.
pub fn brute_force_maps(
    p: &Program,
    shape: &Shape,
    q_block: usize,
    kv_block: usize,
    bind: &Bindings,
) -> Result<BlockMaps, EvalError> {
    brute_force_over(p, shape, (q_block, kv_block), bind, (true, true))
}

/// [`brute_force_maps`] in [`build_block_maps`]' layout: one map per batch only where the
/// mask reads `b` (`info.uses_b`), per head where it reads `h` — what the GPU block-table
/// kernel builds, exactly, where the mask's arithmetic is exact (the kernel's test of its
/// tables, and the backward's ranges made from them, compare with this).
pub fn brute_force_maps_like_tables(
    p: &Program,
    info: &MaskInfo,
    shape: &Shape,
    q_block: usize,
    kv_block: usize,
    bind: &Bindings,
) -> Result<BlockMaps, EvalError> {
    brute_force_over(
        p,
        shape,
        (q_block, kv_block),
        bind,
        (info.uses_b, info.uses_h),
    )
}

/// The brute-force maps of the batches and heads `per` says (`(per batch, per head)`:
/// all of them, else only the first, with stride 0).
fn brute_force_over(
    p: &Program,
    shape: &Shape,
    (q_block, kv_block): (usize, usize),
    bind: &Bindings,
    per: (bool, bool),
) -> Result<BlockMaps, EvalError> {
    let nb = if per.0 { shape.b } else { shape.b.min(1) };
    let nh = if per.1 { shape.hq } else { shape.hq.min(1) };
    let mut maps = Vec::new();
    let mut scratch = Vec::new();
    for b in 0..nb {
        for h in 0..nh {
            let Some(f) = &p.mask else {
                maps.push(BlockMap::dense(shape.lq, shape.lkv, q_block, kv_block));
                continue;
            };
            let (nq, nkv) = (shape.lq.div_ceil(q_block), shape.lkv.div_ceil(kv_block));
            // (has true, has false) per block
            let mut seen = vec![(false, false); nq * nkv];
            for q in 0..shape.lq {
                for kv in 0..shape.lkv {
                    let args = Args::at(0.0, [b, h, q, kv]);
                    let v = eval(f, p, args, bind, &mut scratch)?.as_bool();
                    let s = &mut seen[(q / q_block) * nkv + kv / kv_block];
                    if v { s.0 = true } else { s.1 = true }
                }
            }
            maps.push(BlockMap::from_fn(
                shape.lq,
                shape.lkv,
                q_block,
                kv_block,
                |i, j| match seen[i * nkv + j] {
                    (true, false) => BlockKind::Full,
                    (false, _) => BlockKind::Empty,
                    (true, true) => BlockKind::Partial,
                },
            ));
        }
    }
    Ok(BlockMaps {
        b_stride: if per.0 { nh } else { 0 },
        h_stride: per.1 as usize,
        maps,
    })
}

/// Errors of [`precision`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PrecisionError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(
        "unsound: block ({i}, {j}) of slice (b={b}, h={h}) is {found:?} but the mask says {exact:?}"
    )]
    Unsound {
        b: usize,
        h: usize,
        i: usize,
        j: usize,
        found: BlockKind,
        exact: BlockKind,
    },
}

/// The analysis next to brute force, summed over all (b, h) slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Precision {
    /// Partial blocks the analysis reports.
    pub partial_found: usize,
    /// Blocks that really are partial.
    pub partial_exact: usize,
    pub total_blocks: usize,
}

/// Runs the analysis and brute force on the same launch, checks soundness (an error
/// names the first unsound block) and returns (partial found, exact partial).
pub fn precision(
    p: &Program,
    shape: &Shape,
    q_block: usize,
    kv_block: usize,
    bind: &Bindings,
) -> Result<Precision, PrecisionError> {
    let info = analyze(p);
    let got = build_block_maps(p, &info, shape, q_block, kv_block, bind)?;
    let exact = brute_force_maps(p, shape, q_block, kv_block, bind)?;
    let mut out = Precision {
        partial_found: 0,
        partial_exact: 0,
        total_blocks: 0,
    };
    for b in 0..shape.b {
        for h in 0..shape.hq {
            let (g, e) = (got.get(b, h), exact.get(b, h));
            let (nq, nkv) = (e.n_q_blocks(), e.n_kv_blocks());
            out.total_blocks += nq * nkv;
            for i in 0..nq {
                for j in 0..nkv {
                    let (fk, ek) = (g.kind(i, j), e.kind(i, j));
                    let sound = fk == ek || fk == BlockKind::Partial;
                    if !sound {
                        return Err(PrecisionError::Unsound {
                            b,
                            h,
                            i,
                            j,
                            found: fk,
                            exact: ek,
                        });
                    }
                    out.partial_found += (fk == BlockKind::Partial) as usize;
                    out.partial_exact += (ek == BlockKind::Partial) as usize;
                }
            }
        }
    }
    Ok(out)
}
