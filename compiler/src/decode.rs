//! Decoding against a KV cache: logical positions, the two cache layouts, and the f64
//! oracle of attention over a cache.
//!
//! In: a [`DecodeShape`] (B, heads, Lq new rows, head dims, [`CacheLayout`]), f32 views of
//! the caches, the page table and `seq_lens`. Out: validation ([`CacheError`], naming the
//! tensor), the logical K/V of a sequence ([`DecodeShape::gather`]), the pages holding one
//! kv head's rows over a range of positions, to read in place ([`DecodeShape::pages`]), the
//! position-offset forms of a program ([`offset_program`], used by backends that run the
//! prefill kernel on a gathered slice; [`packed_offset_program`], the same with a kv
//! head's query heads packed as the rows of one tile) and the oracle
//! ([`reference`](mod@crate::reference)).
//!
//! Semantics (issue 12): positions are *logical*. Sequence `b` holds `seq_lens[b]` tokens
//! at positions `0..seq_lens[b]`; its `Lq` new query rows are its last `Lq` tokens, row
//! `i` at position `seq_lens[b] - Lq + i`. The mask and score see `q` = that position and
//! `kv` = the key's position, so a mask written for prefill (causal, windows, documents
//! over positions) means the same thing for decoding. Keys at positions `>= seq_lens[b]`
//! do not exist: never attended, never read. A row whose position would be negative
//! (`seq_lens[b] < Lq`, including `seq_lens[b] = 0`) is not a token of the sequence: it
//! gives `O = 0`, `LSE = -inf` and its mask/score are never evaluated, exactly like a
//! fully masked row.
//!
//! Layouts (row-major): contiguous `K[B, Hkv, Lkv_max, D]`, `V[B, Hkv, Lkv_max, Dv]`;
//! paged `K[num_pages, page_size, Hkv, D]`, `V[num_pages, page_size, Hkv, Dv]` with
//! `page_table: i32[B, max_pages]` (logical page `p` of sequence `b` is physical page
//! `page_table[b, p]`) — the vLLM/FlashInfer layout. Page sizes are powers of two in
//! 16..=256. `seq_lens: i32[B]`, each in `0..=capacity` (`Lkv_max`, or
//! `max_pages * page_size`). Captured tensors whose dims are named `Q` or `KV` are indexed
//! by positions, so both have the capacity as their size. `Q[B, Hq, Lq, D]`, `O[B, Hq, Lq,
//! Dv]` and `LSE[B, Hq, Lq]` as in [`crate::shape`].
//!
//! Page ids: checked mode reports the first page id outside `0..num_pages` among the
//! pages a sequence uses; fast mode clamps it into range (never reads outside the cache).

use crate::interp::{Bindings, EvalError};
use crate::ir::{Arg, BinOp, DimSpec, Function, Inst, ParamInfo, Program, Scalar, Type, Value};
use crate::reference::{self, Output};
use crate::shape::{Shape, ShapeError};
use attnc_grammar::ast::Span;

/// Smallest and largest page size of a paged cache.
pub const MIN_PAGE: usize = 16;
pub const MAX_PAGE: usize = 256;

/// Where a sequence's keys and values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheLayout {
    /// `[B, Hkv, lkv_max, D]`: sequence `b`'s position `j` is row `j` of its slice.
    Contiguous { lkv_max: usize },
    /// `[num_pages, page_size, Hkv, D]` through `page_table: i32[B, max_pages]`.
    Paged {
        num_pages: usize,
        page_size: usize,
        max_pages: usize,
    },
}

impl CacheLayout {
    /// The most positions a sequence can hold.
    pub fn capacity(&self) -> usize {
        match *self {
            CacheLayout::Contiguous { lkv_max } => lkv_max,
            CacheLayout::Paged {
                page_size,
                max_pages,
                ..
            } => page_size * max_pages,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            CacheLayout::Contiguous { .. } => "contiguous",
            CacheLayout::Paged { .. } => "paged",
        }
    }
}

/// The shape of one decoding call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeShape {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    /// New query rows per sequence.
    pub lq: usize,
    pub d: usize,
    pub dv: usize,
    pub layout: CacheLayout,
}

/// A cache that does not fit its shape, or lengths/page ids out of range. `tensor` names
/// the offending input (`k_cache`, `v_cache`, `page_table`, `seq_lens`, `q`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("`{tensor}`: {message}")]
    Shape {
        tensor: &'static str,
        message: String,
    },
    #[error("`seq_lens[{b}]` = {len} is outside 0..={capacity} (the {layout} cache's capacity)")]
    SeqLen {
        b: usize,
        len: i64,
        capacity: usize,
        layout: &'static str,
    },
    #[error(
        "`page_table[{b}, {page}]` = {id} is not a page of the cache (0..{num_pages}); sequence {b} reads it"
    )]
    PageId {
        b: usize,
        page: usize,
        id: i64,
        num_pages: usize,
    },
}

impl CacheError {
    /// The input tensor the error is about.
    pub fn tensor(&self) -> &'static str {
        match self {
            CacheError::Shape { tensor, .. } => tensor,
            CacheError::SeqLen { .. } => "seq_lens",
            CacheError::PageId { .. } => "page_table",
        }
    }
}

/// f32 views of a call's inputs (what the oracle and the CPU path read).
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// `[B, max_pages]`; empty for a contiguous cache.
    pub page_table: &'a [i32],
    pub seq_lens: &'a [i32],
}

impl DecodeShape {
    pub fn capacity(&self) -> usize {
        self.layout.capacity()
    }
    /// The shape the program is checked against: `Lq` and `Lkv` are both the capacity,
    /// since `q` and `kv` are positions in the same sequence.
    pub fn logical(&self) -> Shape {
        Shape {
            b: self.b,
            hq: self.hq,
            hkv: self.hkv,
            lq: self.capacity(),
            lkv: self.capacity(),
            d: self.d,
            dv: self.dv,
        }
    }
    pub fn q_dims(&self) -> [usize; 4] {
        [self.b, self.hq, self.lq, self.d]
    }
    /// Expected dims of `k_cache` (`v == false`) or `v_cache`.
    pub fn cache_dims(&self, v: bool) -> [usize; 4] {
        let d = if v { self.dv } else { self.d };
        match self.layout {
            CacheLayout::Contiguous { lkv_max } => [self.b, self.hkv, lkv_max, d],
            CacheLayout::Paged {
                num_pages,
                page_size,
                ..
            } => [num_pages, page_size, self.hkv, d],
        }
    }
    /// Expected dims of `page_table` (`None` for a contiguous cache).
    pub fn page_table_dims(&self) -> Option<[usize; 2]> {
        match self.layout {
            CacheLayout::Contiguous { .. } => None,
            CacheLayout::Paged { max_pages, .. } => Some([self.b, max_pages]),
        }
    }
    pub fn o_len(&self) -> usize {
        self.b * self.hq * self.lq * self.dv
    }
    pub fn lse_len(&self) -> usize {
        self.b * self.hq * self.lq
    }

    /// Checks the shape itself: heads, dims, page size, and that every length fits i32.
    pub fn validate(&self) -> Result<(), CacheError> {
        let shape_err = |e: ShapeError| CacheError::Shape {
            tensor: "q",
            message: e.to_string(),
        };
        self.logical().validate().map_err(shape_err)?;
        if self.lq == 0 {
            return Err(CacheError::Shape {
                tensor: "q",
                message: "needs at least one query row (Lq >= 1)".into(),
            });
        }
        if let CacheLayout::Paged {
            page_size,
            num_pages,
            max_pages,
        } = self.layout
        {
            if !page_size.is_power_of_two() || !(MIN_PAGE..=MAX_PAGE).contains(&page_size) {
                return Err(CacheError::Shape {
                    tensor: "k_cache",
                    message: format!(
                        "page size (dimension 1) is {page_size}; it must be a power of two in {MIN_PAGE}..={MAX_PAGE}"
                    ),
                });
            }
            let cap = page_size.checked_mul(max_pages);
            if cap.is_none_or(|c| c > i32::MAX as usize) || num_pages > i32::MAX as usize {
                return Err(CacheError::Shape {
                    tensor: "page_table",
                    message: format!(
                        "{max_pages} pages of {page_size} positions per sequence exceed the i32 positions"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks a call's inputs: lengths of every view, `seq_lens` in range, and (checked
    /// mode) the page ids each sequence reads.
    pub fn check(&self, view: &KvView, q_len: usize, checked: bool) -> Result<(), CacheError> {
        self.validate()?;
        let numel = |d: &[usize]| d.iter().product::<usize>();
        for (tensor, want, got) in [
            ("q", numel(&self.q_dims()), q_len),
            ("k_cache", numel(&self.cache_dims(false)), view.k.len()),
            ("v_cache", numel(&self.cache_dims(true)), view.v.len()),
            (
                "page_table",
                self.page_table_dims().map_or(0, |d| numel(&d)),
                view.page_table.len(),
            ),
            ("seq_lens", self.b, view.seq_lens.len()),
        ] {
            if want != got {
                return Err(CacheError::Shape {
                    tensor,
                    message: format!("{got} elements, expected {want}"),
                });
            }
        }
        self.check_ids(view.page_table, view.seq_lens, checked)
    }

    /// Checks `seq_lens` (in `0..=capacity`) and, in checked mode, the page ids each
    /// sequence reads; both slices have the lengths of the shape.
    pub fn check_ids(
        &self,
        page_table: &[i32],
        seq_lens: &[i32],
        checked: bool,
    ) -> Result<(), CacheError> {
        let cap = self.capacity();
        for (b, &n) in seq_lens.iter().enumerate() {
            if n < 0 || n as usize > cap {
                return Err(CacheError::SeqLen {
                    b,
                    len: n as i64,
                    capacity: cap,
                    layout: self.layout.name(),
                });
            }
        }
        if let CacheLayout::Paged {
            num_pages,
            page_size,
            max_pages,
        } = self.layout
        {
            for (b, &n) in seq_lens.iter().enumerate() {
                let used = (n as usize).div_ceil(page_size);
                if used > 0 && num_pages == 0 {
                    return Err(CacheError::Shape {
                        tensor: "k_cache",
                        message: format!("has no pages, but sequence {b} holds {n} tokens"),
                    });
                }
                if !checked {
                    continue;
                }
                for page in 0..used {
                    let id = page_table[b * max_pages + page];
                    if id < 0 || id as usize >= num_pages {
                        return Err(CacheError::PageId {
                            b,
                            page,
                            id: id as i64,
                            num_pages,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The physical page of logical page `page` of sequence `b`; clamped into range (the
    /// fast mode's rule; checked mode has rejected bad ids in [`Self::check`]).
    pub fn physical_page(&self, page_table: &[i32], b: usize, page: usize) -> usize {
        match self.layout {
            CacheLayout::Contiguous { .. } => 0,
            CacheLayout::Paged {
                num_pages,
                max_pages,
                ..
            } => page_table[b * max_pages + page].clamp(0, num_pages.max(1) as i32 - 1) as usize,
        }
    }

    /// Element offset of `(b, kv head hk, position pos, 0)` in a cache with head dim `d`.
    pub fn row_offset(
        &self,
        page_table: &[i32],
        b: usize,
        hk: usize,
        pos: usize,
        d: usize,
    ) -> usize {
        match self.layout {
            CacheLayout::Contiguous { lkv_max } => ((b * self.hkv + hk) * lkv_max + pos) * d,
            CacheLayout::Paged { page_size, .. } => {
                let page = self.physical_page(page_table, b, pos / page_size);
                ((page * page_size + pos % page_size) * self.hkv + hk) * d
            }
        }
    }

    /// Copies positions `start..end` of sequence `b` into `k_out[Hkv, end - start, D]` and
    /// `v_out[Hkv, end - start, Dv]` (resized). The caller has checked the view.
    pub fn gather(
        &self,
        view: &KvView,
        b: usize,
        start: usize,
        end: usize,
        k_out: &mut Vec<f32>,
        v_out: &mut Vec<f32>,
    ) {
        let n = end - start;
        k_out.resize(self.hkv * n * self.d, 0.0);
        v_out.resize(self.hkv * n * self.dv, 0.0);
        for hk in 0..self.hkv {
            for (j, pos) in (start..end).enumerate() {
                let ko = self.row_offset(view.page_table, b, hk, pos, self.d);
                let vo = self.row_offset(view.page_table, b, hk, pos, self.dv);
                k_out[(hk * n + j) * self.d..][..self.d].copy_from_slice(&view.k[ko..][..self.d]);
                v_out[(hk * n + j) * self.dv..][..self.dv]
                    .copy_from_slice(&view.v[vo..][..self.dv]);
            }
        }
    }
}

/// The rows of sequence `b` that exist: `(first row, its position)`. Rows `first..Lq`
/// sit at positions `pos..seq_len`; rows before `first` do not exist (O = 0, LSE = -inf).
pub fn live_rows(lq: usize, seq_len: usize) -> (usize, usize) {
    let rows = lq.min(seq_len);
    (lq - rows, seq_len - rows)
}

/// Names of the params [`offset_program`] appends: added to `b`, `q` and `kv`.
pub const OFFSET_PARAMS: [&str; 3] = ["__b0", "__q0", "__kv0"];

/// Names of the params [`packed_offset_program`] appends.
pub const PACKED_PARAMS: [&str; 5] = ["__b0", "__q0", "__kv0", "__h0", "__rows"];

/// `p` with `b`, `q` and `kv` replaced by `b + __b0`, `q + __q0` and `kv + __kv0` (three
/// i32 params appended after the program's own), and captured-tensor dims named `B`,
/// `Q` or `KV` turned into symbols (`Q` and `KV` share one: both are positions). Running
/// the result on one sequence's gathered slice `start..end` with `__b0 = b`, `__q0` = the
/// first row's position and `__kv0 = start` evaluates the mask and score at logical
/// positions (with i32 wrapping arithmetic, as the original would at those positions).
pub fn offset_program(p: &Program) -> Program {
    let mut out = with_params(p, &OFFSET_PARAMS, false);
    let base = p.params.len() as u32;
    let shift = |g: &mut Function, a: Arg, span: Span| -> Option<Value> {
        let which = match a {
            Arg::B => 0,
            Arg::Q => 1,
            Arg::Kv => 2,
            _ => return None,
        };
        let x = g.push(Inst::Arg(a), Type::I32, span);
        let off = g.push(
            Inst::Param(crate::ir::ParamId(base + which)),
            Type::I32,
            span,
        );
        Some(g.push(Inst::Binary(BinOp::IAdd, x, off), Type::I32, span))
    };
    out.mask = p.mask.as_ref().map(|f| rewrite_args(f, &shift));
    out.score = p.score.as_ref().map(|f| rewrite_args(f, &shift));
    out
}

/// [`offset_program`] for a launch over a whole batch whose lengths stay on the device
/// (`PtxOptions::device_lens`: the kernel sets `__q0` per sequence to `seq_lens[b] - Lq`,
/// `__b0` and `__kv0` are 0): its mask also requires `q + __q0 >= 0`, so that the rows of a
/// sequence shorter than Lq, which do not exist ([`live_rows`]), are fully masked (O = 0,
/// LSE = -inf) and their score never evaluated. A linear conjunct, so a closed-form mask
/// stays one (no mask becomes this one constraint).
pub fn device_offset_program(p: &Program) -> Program {
    let mut out = offset_program(p);
    let q0 = crate::ir::ParamId(p.params.len() as u32 + 1);
    let span = p.span;
    let mut f = out
        .mask
        .take()
        .unwrap_or_else(|| Function::new(crate::ir::FnKind::Mask));
    let old = (!f.insts.is_empty()).then_some(f.ret);
    let q = f.push(Inst::Arg(Arg::Q), Type::I32, span);
    let off = f.push(Inst::Param(q0), Type::I32, span);
    let pos = f.push(Inst::Binary(BinOp::IAdd, q, off), Type::I32, span);
    let zero = f.push(Inst::ConstI32(0), Type::I32, span);
    let live = f.push(
        Inst::Binary(BinOp::ICmp(crate::ir::Cmp::Ge), pos, zero),
        Type::Bool,
        span,
    );
    f.ret = match old {
        Some(m) => f.push(Inst::Binary(BinOp::And, live, m), Type::Bool, span),
        None => live,
    };
    out.mask = Some(f);
    out
}

/// `p` for a tile of packed rows (GQA packing): row `r` of the kernel's tile (its `q`) is
/// query head `h + __h0 + r / __rows` at position `__q0 + r % __rows`, so that the query
/// heads `__h0 ..` of one kv head, `__rows` new rows each, run as one query head of
/// `G x __rows` rows against their kv head read once; `b` and `kv` are shifted as in
/// [`offset_program`] (five i32 params appended, [`PACKED_PARAMS`]). Captured-tensor
/// dims `B`, `H`, `Q` and `KV` become symbols (the kernel's shape has one head). With
/// `__h0 = 0` and `__rows` = the tile's rows it is [`offset_program`]'s semantics.
pub fn packed_offset_program(p: &Program) -> Program {
    let mut out = with_params(p, &PACKED_PARAMS, true);
    let base = p.params.len() as u32;
    let rewrite = |g: &mut Function, a: Arg, span: Span| -> Option<Value> {
        let param = |g: &mut Function, i: u32| {
            g.push(Inst::Param(crate::ir::ParamId(base + i)), Type::I32, span)
        };
        let bin = |g: &mut Function, op: BinOp, x: Value, y: Value| {
            g.push(Inst::Binary(op, x, y), Type::I32, span)
        };
        let arg = |g: &mut Function, a: Arg| g.push(Inst::Arg(a), Type::I32, span);
        Some(match a {
            Arg::B => {
                let (x, o) = (arg(g, Arg::B), param(g, 0));
                bin(g, BinOp::IAdd, x, o)
            }
            Arg::Kv => {
                let (x, o) = (arg(g, Arg::Kv), param(g, 2));
                bin(g, BinOp::IAdd, x, o)
            }
            Arg::Q => {
                let (r, rows, q0) = (arg(g, Arg::Q), param(g, 4), param(g, 1));
                let i = bin(g, BinOp::IRem, r, rows);
                bin(g, BinOp::IAdd, q0, i)
            }
            Arg::H => {
                let (h, h0, r, rows) = (arg(g, Arg::H), param(g, 3), arg(g, Arg::Q), param(g, 4));
                let gi = bin(g, BinOp::IDiv, r, rows);
                let h = bin(g, BinOp::IAdd, h, h0);
                bin(g, BinOp::IAdd, h, gi)
            }
            _ => return None,
        })
    };
    out.mask = p.mask.as_ref().map(|f| rewrite_args(f, &rewrite));
    out.score = p.score.as_ref().map(|f| rewrite_args(f, &rewrite));
    out
}

/// `p` with i32 params `names` appended and its captured tensors' dims `B`, `Q`, `KV`
/// (and `H` when `heads`) turned into symbols: their sizes come from the bound tensors.
fn with_params(p: &Program, names: &[&str], heads: bool) -> Program {
    let mut out = p.clone();
    for name in names {
        out.params.push(ParamInfo {
            name: (*name).into(),
            ty: Type::I32,
            span: p.span,
        });
    }
    for t in &mut out.tensors {
        for d in &mut t.dims {
            match d {
                DimSpec::B => *d = DimSpec::Symbol("__B".into()),
                DimSpec::H if heads => *d = DimSpec::Symbol("__H".into()),
                DimSpec::Q | DimSpec::Kv => *d = DimSpec::Symbol("__positions".into()),
                _ => {}
            }
        }
    }
    out
}

/// `f` with each argument for which `arg` emits a replacement replaced by it (`None`:
/// kept), every other instruction copied with its operands renumbered.
fn rewrite_args(f: &Function, arg: &dyn Fn(&mut Function, Arg, Span) -> Option<Value>) -> Function {
    let mut g = Function::new(f.kind);
    let mut map: Vec<Value> = Vec::with_capacity(f.len());
    let remap = |m: &[Value], v: Value| m[v.index()];
    for (i, inst) in f.insts.iter().enumerate() {
        let (ty, span) = (f.types[i], f.spans[i]);
        let new = match inst {
            Inst::Arg(a) => match arg(&mut g, *a, span) {
                Some(v) => v,
                None => g.push(inst.clone(), ty, span),
            },
            Inst::Unary(op, a) => g.push(Inst::Unary(*op, remap(&map, *a)), ty, span),
            Inst::Binary(op, a, b) => g.push(
                Inst::Binary(*op, remap(&map, *a), remap(&map, *b)),
                ty,
                span,
            ),
            Inst::Select(c, a, b) => g.push(
                Inst::Select(remap(&map, *c), remap(&map, *a), remap(&map, *b)),
                ty,
                span,
            ),
            Inst::Load {
                tensor,
                indices,
                guard,
            } => g.push(
                Inst::Load {
                    tensor: *tensor,
                    indices: indices.iter().map(|v| remap(&map, *v)).collect(),
                    guard: remap(&map, *guard),
                },
                ty,
                span,
            ),
            other => g.push(other.clone(), ty, span),
        };
        map.push(new);
    }
    g.ret = map[f.ret.index()];
    g
}

/// `bind` (for the original program) with the three offset params of [`offset_program`].
pub fn offset_bindings(bind: &Bindings, b0: usize, q0: usize, kv0: usize) -> Bindings {
    let mut out = bind.clone();
    set_offsets(&mut out, bind.params.len(), b0, q0, kv0);
    out
}

/// Sets (or appends) the offset params at `base..base + 3` of `bind.params`.
pub fn set_offsets(bind: &mut Bindings, base: usize, b0: usize, q0: usize, kv0: usize) {
    bind.params.truncate(base);
    bind.params
        .extend([b0, q0, kv0].map(|x| Scalar::I32(x as i32)));
}

/// The oracle over a cache: for each sequence, its logical K/V are gathered (through
/// the page table) and [`reference::attention`] runs on its live rows with the position
/// offsets. Rows that do not exist give O = 0 and LSE = -inf. The caller has checked
/// the view ([`DecodeShape::check`]); `bind` is for `p` itself.
pub fn reference(
    p: &Program,
    shape: &DecodeShape,
    q: &[f32],
    view: &KvView,
    scale: f32,
    bind: &Bindings,
) -> Result<Output, EvalError> {
    let shifted = offset_program(p);
    let mut o = vec![0f32; shape.o_len()];
    let mut lse = vec![f32::NEG_INFINITY; shape.lse_len()];
    let (mut kb, mut vb, mut qb) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..shape.b {
        let n = view.seq_lens[b] as usize;
        let (first, pos) = live_rows(shape.lq, n);
        let rows = shape.lq - first;
        if rows == 0 {
            continue;
        }
        shape.gather(view, b, 0, n, &mut kb, &mut vb);
        gather_rows(shape, q, b, first, &mut qb);
        let one = Shape {
            b: 1,
            hq: shape.hq,
            hkv: shape.hkv,
            lq: rows,
            lkv: n,
            d: shape.d,
            dv: shape.dv,
        };
        let out = reference::attention(
            &shifted,
            &one,
            &qb,
            &kb,
            &vb,
            scale,
            &offset_bindings(bind, b, pos, 0),
        )?;
        scatter_rows(shape, b, first, &out.o, &out.lse, &mut o, &mut lse);
    }
    Ok(Output { o, lse })
}

/// Sets the params of [`packed_offset_program`] (after the original program's `base`
/// params): sequence `b0`, first row's position `q0`, first key `kv0`, first query head
/// `h0`, `rows` new rows per query head.
pub fn set_packed_offsets(bind: &mut Bindings, base: usize, [b0, q0, kv0, h0, rows]: [usize; 5]) {
    bind.params.truncate(base);
    bind.params
        .extend([b0, q0, kv0, h0, rows].map(|x| Scalar::I32(x as i32)));
}

/// How a cache's rows of one kv head over a range of positions are found in place
/// ([`DecodeShape::pages`]): position `start + j` is, with `p = row0 + j`, row
/// `p % page_size` of the `p / page_size`-th listed page, rows of a page `k_ld` / `v_ld`
/// elements apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageWalk {
    pub page_size: usize,
    pub row0: usize,
    pub k_ld: usize,
    pub v_ld: usize,
}

impl DecodeShape {
    /// The pages holding kv head `hk` of sequence `b` at positions `start..end`
    /// (`start < end`): the element offset of each page's first row of that head in K and
    /// V (into `k_pages`, `v_pages`, cleared first; the page table read once a page), and
    /// the walk. A contiguous cache is one page. The caller has checked the view.
    pub fn pages(
        &self,
        view: &KvView,
        (b, hk): (usize, usize),
        (start, end): (usize, usize),
        k_pages: &mut Vec<usize>,
        v_pages: &mut Vec<usize>,
    ) -> PageWalk {
        k_pages.clear();
        v_pages.clear();
        match self.layout {
            CacheLayout::Paged { page_size, .. } => {
                for lp in start / page_size..end.div_ceil(page_size) {
                    let pos = lp * page_size;
                    k_pages.push(self.row_offset(view.page_table, b, hk, pos, self.d));
                    v_pages.push(self.row_offset(view.page_table, b, hk, pos, self.dv));
                }
                PageWalk {
                    page_size,
                    row0: start % page_size,
                    k_ld: self.hkv * self.d,
                    v_ld: self.hkv * self.dv,
                }
            }
            CacheLayout::Contiguous { .. } => {
                k_pages.push(self.row_offset(view.page_table, b, hk, start, self.d));
                v_pages.push(self.row_offset(view.page_table, b, hk, start, self.dv));
                PageWalk {
                    page_size: (end - start).next_power_of_two(),
                    row0: 0,
                    k_ld: self.d,
                    v_ld: self.dv,
                }
            }
        }
    }
}

/// Rows `first..Lq` of every head of sequence `b` of `q`, as `[1, Hq, Lq - first, D]`.
pub fn gather_rows(shape: &DecodeShape, q: &[f32], b: usize, first: usize, out: &mut Vec<f32>) {
    let (lq, d) = (shape.lq, shape.d);
    let rows = lq - first;
    out.clear();
    for h in 0..shape.hq {
        let at = ((b * shape.hq + h) * lq + first) * d;
        out.extend_from_slice(&q[at..at + rows * d]);
    }
}

/// Writes `[1, Hq, Lq - first, Dv]` / `[1, Hq, Lq - first]` results into rows
/// `first..Lq` of sequence `b` of the full `o` / `lse`.
pub fn scatter_rows(
    shape: &DecodeShape,
    b: usize,
    first: usize,
    o_part: &[f32],
    lse_part: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (lq, dv) = (shape.lq, shape.dv);
    let rows = lq - first;
    for h in 0..shape.hq {
        let row0 = (b * shape.hq + h) * lq + first;
        o[row0 * dv..(row0 + rows) * dv].copy_from_slice(&o_part[h * rows * dv..][..rows * dv]);
        lse[row0..row0 + rows].copy_from_slice(&lse_part[h * rows..][..rows]);
    }
}

/// Merges partial results of disjoint key ranges exactly: `parts` are `(o, lse)` of one
/// row over each range (o normalized within its range; `lse = -inf` for an empty one).
/// Returns the row's O (into `o`) and LSE: `LSE = log Σ exp(lse_i)`, `O = Σ exp(lse_i -
/// LSE) o_i`; every part empty gives O = 0, LSE = -inf.
pub fn combine<'a>(parts: impl Iterator<Item = (&'a [f32], f32)> + Clone, o: &mut [f32]) -> f32 {
    let max = parts
        .clone()
        .map(|(_, l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    o.iter_mut().for_each(|x| *x = 0.0);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let mut sum = 0f32;
    for (po, l) in parts.clone() {
        if l == f32::NEG_INFINITY {
            continue;
        }
        let w = (l - max).exp();
        sum += w;
        for (x, y) in o.iter_mut().zip(po) {
            *x += w * y;
        }
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|x| *x *= inv);
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows the page walk of `pages` finds are the ones `gather` copies: every kv
    /// head, a range starting and ending inside pages, a shuffled page table, both
    /// layouts, D != Dv.
    #[test]
    fn pages_walk_to_the_rows_gather_copies() {
        let (b, hkv, d, dv, ps, max_pages) = (2, 3, 4, 3, 4, 5);
        let num_pages = b * max_pages + 1;
        let table: Vec<i32> = (0..(b * max_pages) as i32)
            .map(|i| (i * 7 + 3) % num_pages as i32)
            .collect();
        for layout in [
            CacheLayout::Paged {
                num_pages,
                page_size: ps,
                max_pages,
            },
            CacheLayout::Contiguous { lkv_max: 20 },
        ] {
            let shape = DecodeShape {
                b,
                hq: 6,
                hkv,
                lq: 1,
                d,
                dv,
                layout,
            };
            let rows = match layout {
                CacheLayout::Paged { .. } => num_pages * ps,
                CacheLayout::Contiguous { lkv_max } => b * lkv_max,
            };
            let k: Vec<f32> = (0..rows * hkv * d).map(|i| i as f32).collect();
            let v: Vec<f32> = (0..rows * hkv * dv).map(|i| -(i as f32)).collect();
            let pt = if matches!(layout, CacheLayout::Paged { .. }) {
                &table[..]
            } else {
                &[]
            };
            let view = KvView {
                k: &k,
                v: &v,
                page_table: pt,
                seq_lens: &[20, 17],
            };
            let (mut k1, mut v1) = (vec![], vec![]);
            shape.gather(&view, 1, 3, 17, &mut k1, &mut v1);
            assert_eq!((k1.len(), v1.len()), (hkv * 14 * d, hkv * 14 * dv));
            let (mut kp, mut vp) = (vec![], vec![]);
            for hk in 0..hkv {
                let w = shape.pages(&view, (1, hk), (3, 17), &mut kp, &mut vp);
                for j in 0..14 {
                    let p = w.row0 + j;
                    let (page, slot) = (p / w.page_size, p % w.page_size);
                    let ko = kp[page] + slot * w.k_ld;
                    let vo = vp[page] + slot * w.v_ld;
                    let (kg, vg) = (
                        &k1[(hk * 14 + j) * d..][..d],
                        &v1[(hk * 14 + j) * dv..][..dv],
                    );
                    assert_eq!(&k[ko..][..d], kg, "{layout:?} hk {hk} row {j}");
                    assert_eq!(&v[vo..][..dv], vg, "{layout:?} hk {hk} row {j}");
                }
                assert!(w.page_size.is_power_of_two() && w.row0 < w.page_size);
                assert_eq!(kp.len(), (w.row0 + 14).div_ceil(w.page_size));
            }
        }
    }

    fn prog(src: &str) -> Program {
        crate::compile_source(src).unwrap().programs.remove(0)
    }

    /// Row r of a packed tile is query head h0 + r / rows at position q0 + r % rows: the
    /// packed program at (b 0, h 0, q r, kv) equals the original at the logical indices,
    /// for the mask and the score, with a head-indexed tensor read.
    #[test]
    fn packed_offset_program_maps_rows_to_heads_and_positions() {
        let p = prog(
            "tensor w: i32[H]; tensor doc: i32[B, KV]; \
             mask m(b, h, q, kv) { q - kv <= w[h] && doc[b, kv] >= 0 } \
             score sc(s, b, h, q, kv) { s + (h * 1000 + q * 10 + b) as f32 } \
             attention a { mask = m; score = sc; }",
        );
        let packed = packed_offset_program(&p);
        crate::ir::verify_program(&packed).unwrap();
        assert_eq!(packed.params.len(), PACKED_PARAMS.len());
        assert!(matches!(packed.tensors[0].dims[0], DimSpec::Symbol(_)));
        let tensors = vec![
            crate::interp::BoundTensor {
                dims: vec![8],
                data: crate::interp::TensorData::I32((0..8).map(|h| 3 * h).collect()),
            },
            crate::interp::BoundTensor {
                dims: vec![2, 40],
                data: crate::interp::TensorData::I32((0..80).map(|i| i % 5 - 1).collect()),
            },
        ];
        let (b0, q0, kv0, h0, rows) = (1, 20, 4, 4, 3);
        let orig = Bindings {
            params: vec![],
            tensors: tensors.clone(),
        };
        let mut bind = Bindings {
            params: vec![],
            tensors,
        };
        set_packed_offsets(&mut bind, 0, [b0, q0, kv0, h0, rows]);
        let mut scratch = Vec::new();
        let args = |b, h, q, kv| crate::interp::Args {
            s: 0.5,
            b,
            h,
            q,
            kv,
        };
        for r in 0..4 * rows as i32 {
            for kv in 0..16 {
                let (h, q) = (h0 as i32 + r / rows as i32, q0 as i32 + r % rows as i32);
                for (fp, fo) in [
                    (packed.mask.as_ref(), p.mask.as_ref()),
                    (packed.score.as_ref(), p.score.as_ref()),
                ] {
                    let got = crate::interp::eval(
                        fp.unwrap(),
                        &packed,
                        args(0, 0, r, kv),
                        &bind,
                        &mut scratch,
                    )
                    .unwrap();
                    let want = crate::interp::eval(
                        fo.unwrap(),
                        &p,
                        args(b0 as i32, h, q, kv + kv0 as i32),
                        &orig,
                        &mut scratch,
                    )
                    .unwrap();
                    assert_eq!(got, want, "row {r} kv {kv}");
                }
            }
        }
    }

    #[test]
    fn offset_program_verifies_and_shifts_positions() {
        let p = prog(
            "tensor doc: i32[B, KV]; mask m(b, h, q, kv) { q >= kv && doc[b, kv] >= 0 } attention a { mask = m; }",
        );
        let s = offset_program(&p);
        crate::ir::verify_program(&s).unwrap();
        assert_eq!(s.params.len(), 3);
        assert!(matches!(s.tensors[0].dims[0], DimSpec::Symbol(_)));
        let mut scratch = Vec::new();
        let bind = Bindings {
            params: vec![Scalar::I32(1), Scalar::I32(10), Scalar::I32(7)],
            tensors: vec![crate::interp::BoundTensor {
                dims: vec![2, 16],
                data: crate::interp::TensorData::I32(vec![0; 32]),
            }],
        };
        let args = |q, kv| crate::interp::Args {
            s: 0.0,
            b: 0,
            h: 0,
            q,
            kv,
        };
        let f = s.mask.as_ref().unwrap();
        // q 0 + 10 >= kv 3 + 7
        assert!(
            crate::interp::eval(f, &s, args(0, 3), &bind, &mut scratch)
                .unwrap()
                .as_bool()
        );
        assert!(
            !crate::interp::eval(f, &s, args(0, 4), &bind, &mut scratch)
                .unwrap()
                .as_bool()
        );
    }

    /// The device-lengths form masks the rows at negative positions and keeps a linear
    /// mask (or none) a closed form: causal gains the row constraint, no mask becomes it.
    #[test]
    fn device_offset_program_masks_rows_before_the_sequence() {
        for (src, constraints) in [
            (
                "mask m(b, h, q, kv) { q >= kv } attention a { mask = m; }",
                2,
            ),
            ("attention a {}", 1),
        ] {
            let p = prog(src);
            let s = device_offset_program(&p);
            crate::ir::verify_program(&s).unwrap();
            assert_eq!(s.params.len(), 3, "{src}");
            let cf = crate::analysis::linear::ClosedForm::derive(&s)
                .unwrap_or_else(|| panic!("{src}: no closed form"));
            assert_eq!(cf.constraints.len(), constraints, "{src}");
            let f = s.mask.as_ref().unwrap();
            let mut scratch = Vec::new();
            let eval = |q0: i32, q: i32, kv: i32, scratch: &mut Vec<_>| {
                let bind = Bindings {
                    params: vec![Scalar::I32(0), Scalar::I32(q0), Scalar::I32(0)],
                    tensors: vec![],
                };
                let args = crate::interp::Args {
                    s: 0.0,
                    b: 0,
                    h: 0,
                    q,
                    kv,
                };
                crate::interp::eval(f, &s, args, &bind, scratch)
                    .unwrap()
                    .as_bool()
            };
            // row 2 of a sequence 3 rows shorter than Lq sits at position -1: masked
            assert!(!eval(-3, 2, 0, &mut scratch), "{src}");
            // row 3 at position 0 sees key 0
            assert!(eval(-3, 3, 0, &mut scratch), "{src}");
        }
    }

    #[test]
    fn live_rows_of_short_sequences() {
        assert_eq!(live_rows(4, 10), (0, 6));
        assert_eq!(live_rows(4, 2), (2, 0));
        assert_eq!(live_rows(4, 0), (4, 0));
    }

    #[test]
    fn combine_is_exact_and_handles_empty_parts() {
        let mut o = [0f32; 2];
        let l = combine(
            [(&[1.0f32, 2.0][..], 0.0f32), (&[3.0, 4.0][..], 0.0)].into_iter(),
            &mut o,
        );
        assert!((l - 2f32.ln()).abs() < 1e-6);
        assert_eq!(o, [2.0, 3.0]);
        let l = combine(
            [
                (&[1.0f32, 2.0][..], f32::NEG_INFINITY),
                (&[5.0, 6.0][..], 1.5),
            ]
            .into_iter(),
            &mut o,
        );
        assert_eq!((l, o), (1.5, [5.0, 6.0]));
        let l = combine(
            [(&[1.0f32, 2.0][..], f32::NEG_INFINITY)].into_iter(),
            &mut o,
        );
        assert_eq!((l, o), (f32::NEG_INFINITY, [0.0, 0.0]));
    }

    #[test]
    fn paged_rows_follow_the_table() {
        let s = DecodeShape {
            b: 2,
            hq: 2,
            hkv: 1,
            lq: 1,
            d: 1,
            dv: 1,
            layout: CacheLayout::Paged {
                num_pages: 3,
                page_size: 16,
                max_pages: 2,
            },
        };
        let table = [2, 0, 1, 7];
        assert_eq!(s.row_offset(&table, 0, 0, 17, 1), 1);
        assert_eq!(s.row_offset(&table, 1, 0, 3, 1), 19);
        // fast mode clamps page 7 to the last page
        assert_eq!(s.row_offset(&table, 1, 0, 16, 1), 32);
        let k = vec![0.0; 48];
        let view = KvView {
            k: &k,
            v: &k,
            page_table: &table,
            seq_lens: &[20, 20],
        };
        assert!(s.check(&view, 4, false).is_ok());
        assert!(matches!(
            s.check(&view, 4, true),
            Err(CacheError::PageId {
                b: 1,
                page: 1,
                id: 7,
                ..
            })
        ));
        let long = KvView {
            seq_lens: &[33, 0],
            ..view
        };
        assert!(matches!(
            s.check(&long, 4, false),
            Err(CacheError::SeqLen { b: 0, .. })
        ));
    }
}
