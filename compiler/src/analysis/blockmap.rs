//! The block structure of a mask: which kv blocks each query block visits, and whether
//! each visited block is *full* (mask true at every in-range position: skip the mask)
//! or *partial* (evaluate the mask per element). Blocks not listed are *empty* (skip).
//!
//! In: produced by the block-sparsity analysis (or [`BlockMap::dense`] /
//! [`BlockMap::all_partial`]). Out: read by kernels as a table of runs — the
//! information of FlexAttention's `kv_num_blocks / kv_indices / full_kv_*`, run-length
//! encoded so that banded masks cost O(#q-blocks), not O(#blocks): PTX kernels read one
//! `(begin, end)` pair per row ([`BlockMaps::flatten`], also what the GPU table builder
//! `backend::llvm::blocktable` writes), CPU kernels a CSR ([`BlockMaps::flatten_csr`]).
//!
//! Blocks at the end of a sequence may be shorter than the block size; "full" and
//! "partial" refer only to positions inside `0..lq` x `0..lkv`. Kernels bound their
//! loops by the lengths themselves.

/// A run of consecutive kv blocks `start..end` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Run {
    pub start: u32,
    pub end: u32,
    /// 1 = full (no mask evaluation needed), 0 = partial; in a table built on the GPU
    /// with `PtxOptions::mask_kinds` also 2 (partial, the mask's non-linear conjuncts hold
    /// wherever its linear ones do: the mask is its linear conjuncts there) and 3
    /// (partial, its linear conjuncts hold on the whole block).
    pub full: u32,
}

/// The classification of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    Empty,
    Partial,
    Full,
}

/// Block structure for one (batch, head) slice — or for all of them, when the mask does
/// not depend on b / h.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    pub lq: usize,
    pub lkv: usize,
    pub q_block: usize,
    pub kv_block: usize,
    /// `runs[row_start[i] as usize..row_start[i + 1] as usize]` are q-block `i`'s runs,
    /// ascending and non-overlapping. Length `n_q_blocks() + 1`.
    pub row_start: Vec<u32>,
    pub runs: Vec<Run>,
}

impl BlockMap {
    pub fn n_q_blocks(&self) -> usize {
        self.lq.div_ceil(self.q_block)
    }
    pub fn n_kv_blocks(&self) -> usize {
        self.lkv.div_ceil(self.kv_block)
    }

    /// Every block full (no mask).
    pub fn dense(lq: usize, lkv: usize, q_block: usize, kv_block: usize) -> Self {
        Self::uniform(lq, lkv, q_block, kv_block, 1)
    }

    /// Every block partial (the mask is evaluated everywhere; always sound).
    pub fn all_partial(lq: usize, lkv: usize, q_block: usize, kv_block: usize) -> Self {
        Self::uniform(lq, lkv, q_block, kv_block, 0)
    }

    fn uniform(lq: usize, lkv: usize, q_block: usize, kv_block: usize, full: u32) -> Self {
        let nq = lq.div_ceil(q_block);
        let nkv = lkv.div_ceil(kv_block) as u32;
        let mut row_start = Vec::with_capacity(nq + 1);
        let mut runs = Vec::new();
        row_start.push(0);
        for _ in 0..nq {
            if nkv > 0 {
                runs.push(Run {
                    start: 0,
                    end: nkv,
                    full,
                });
            }
            row_start.push(runs.len() as u32);
        }
        BlockMap {
            lq,
            lkv,
            q_block,
            kv_block,
            row_start,
            runs,
        }
    }

    /// Builds a map from a per-block classification function (used by the analysis and by
    /// brute-force tests). Adjacent blocks of the same kind merge into one run.
    pub fn from_fn(
        lq: usize,
        lkv: usize,
        q_block: usize,
        kv_block: usize,
        mut kind: impl FnMut(usize, usize) -> BlockKind,
    ) -> Self {
        let nq = lq.div_ceil(q_block);
        let nkv = lkv.div_ceil(kv_block);
        let mut b = BlockMapBuilder::new(lq, lkv, q_block, kv_block);
        for i in 0..nq {
            for j in 0..nkv {
                b.push(j, kind(i, j));
            }
            b.end_row();
        }
        b.finish()
    }

    /// q-block `i`'s runs.
    pub fn row(&self, i: usize) -> &[Run] {
        &self.runs[self.row_start[i] as usize..self.row_start[i + 1] as usize]
    }

    /// The kind of block (i, j).
    pub fn kind(&self, i: usize, j: usize) -> BlockKind {
        for r in self.row(i) {
            if (r.start as usize..r.end as usize).contains(&j) {
                return if r.full == 1 {
                    BlockKind::Full
                } else {
                    BlockKind::Partial
                };
            }
        }
        BlockKind::Empty
    }

    /// (empty, partial, full) block counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let (mut partial, mut full) = (0, 0);
        for r in &self.runs {
            let n = (r.end - r.start) as usize;
            if r.full == 1 { full += n } else { partial += n }
        }
        (
            self.n_q_blocks() * self.n_kv_blocks() - partial - full,
            partial,
            full,
        )
    }
}

/// Builds a [`BlockMap`] row by row, merging adjacent blocks of the same kind.
pub struct BlockMapBuilder {
    map: BlockMap,
}

impl BlockMapBuilder {
    pub fn new(lq: usize, lkv: usize, q_block: usize, kv_block: usize) -> Self {
        assert!(q_block > 0 && kv_block > 0, "block sizes must be positive");
        BlockMapBuilder {
            map: BlockMap {
                lq,
                lkv,
                q_block,
                kv_block,
                row_start: vec![0],
                runs: Vec::new(),
            },
        }
    }
    /// Adds kv block `j` of the current row; `j` must ascend within a row.
    pub fn push(&mut self, j: usize, kind: BlockKind) {
        self.push_run(j, j + 1, kind);
    }
    /// Adds kv blocks `start..end` of the current row, all of one kind.
    pub fn push_run(&mut self, start: usize, end: usize, kind: BlockKind) {
        let full = match kind {
            BlockKind::Empty => return,
            BlockKind::Partial => 0,
            BlockKind::Full => 1,
        };
        if start >= end {
            return;
        }
        let row_begin = *self.map.row_start.last().unwrap() as usize;
        if self.map.runs.len() > row_begin {
            let last = self.map.runs.last_mut().unwrap();
            if last.end as usize == start && last.full == full {
                last.end = end as u32;
                return;
            }
        }
        self.map.runs.push(Run {
            start: start as u32,
            end: end as u32,
            full,
        });
    }
    pub fn end_row(&mut self) {
        let n = self.map.runs.len() as u32;
        self.map.row_start.push(n);
    }
    pub fn finish(self) -> BlockMap {
        self.map
    }
}

/// The block maps of one launch: one map per (b, h) slice, or fewer when the mask does
/// not depend on b and/or h. The map of slice (b, h) is `maps[b * b_stride + h * h_stride]`
/// (a stride of 0 broadcasts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMaps {
    pub b_stride: usize,
    pub h_stride: usize,
    pub maps: Vec<BlockMap>,
}

impl BlockMaps {
    pub fn single(map: BlockMap) -> Self {
        BlockMaps {
            b_stride: 0,
            h_stride: 0,
            maps: vec![map],
        }
    }
    pub fn get(&self, b: usize, h: usize) -> &BlockMap {
        &self.maps[b * self.b_stride + h * self.h_stride]
    }
    /// Flattens all maps into the table the PTX kernels read: `ranges` holds one
    /// `(begin, end)` pair per row (`ranges[2 r]`, `ranges[2 r + 1]`), row `r` of map `m`
    /// being `m * n_q_blocks + i`, and its runs are `runs[begin..end]`. Pairs rather
    /// than a CSR so that a builder on the GPU can write each row on its own into a
    /// fixed-capacity slot (`backend::llvm::blocktable`); here the rows are packed.
    /// Returns (ranges, runs).
    pub fn flatten(&self) -> (Vec<u32>, Vec<Run>) {
        let mut ranges = Vec::new();
        let mut runs = Vec::new();
        for m in &self.maps {
            for i in 0..m.n_q_blocks() {
                ranges.push(runs.len() as u32);
                runs.extend_from_slice(m.row(i));
                ranges.push(runs.len() as u32);
            }
        }
        (ranges, runs)
    }
    /// Flattens all maps into one CSR table (what the CPU kernels read): the rows of map
    /// `m` are `m * n_q_blocks .. (m + 1) * n_q_blocks`; returns (row_start, runs).
    pub fn flatten_csr(&self) -> (Vec<u32>, Vec<Run>) {
        let mut row_start = vec![0u32];
        let mut runs = Vec::new();
        for m in &self.maps {
            for i in 0..m.n_q_blocks() {
                runs.extend_from_slice(m.row(i));
                row_start.push(runs.len() as u32);
            }
        }
        (row_start, runs)
    }
    /// Reads back the maps of a `flatten`-format table (pairs per row; runs anywhere
    /// in `runs`), for `n_maps` maps of this geometry with the given strides. `None`
    /// when a pair or a run is malformed (out of range, unordered, overlapping). Runs of
    /// kinds 2 and 3 (a GPU table's partial blocks by conjunct, `PtxOptions::mask_kinds`)
    /// read as partial.
    #[allow(clippy::too_many_arguments)]
    pub fn from_pairs(
        ranges: &[u32],
        runs: &[Run],
        n_maps: usize,
        lq: usize,
        lkv: usize,
        q_block: usize,
        kv_block: usize,
        b_stride: usize,
        h_stride: usize,
    ) -> Option<BlockMaps> {
        let nq = lq.div_ceil(q_block);
        let nkv = lkv.div_ceil(kv_block);
        if ranges.len() != 2 * n_maps * nq {
            return None;
        }
        let mut maps = Vec::with_capacity(n_maps);
        for m in 0..n_maps {
            let mut bld = BlockMapBuilder::new(lq, lkv, q_block, kv_block);
            for i in 0..nq {
                let r = m * nq + i;
                let (b, e) = (ranges[2 * r] as usize, ranges[2 * r + 1] as usize);
                if b > e || e > runs.len() {
                    return None;
                }
                let mut prev_end = 0;
                for run in &runs[b..e] {
                    let (s, t) = (run.start as usize, run.end as usize);
                    // (kinds 2 and 3: partial blocks by conjunct, `PtxOptions::mask_kinds`)
                    if s < prev_end || s >= t || t > nkv || run.full > 3 {
                        return None;
                    }
                    prev_end = t;
                    let kind = if run.full == 1 {
                        BlockKind::Full
                    } else {
                        BlockKind::Partial
                    };
                    bld.push_run(s, t, kind);
                }
                bld.end_row();
            }
            maps.push(bld.finish());
        }
        Some(BlockMaps {
            b_stride,
            h_stride,
            maps,
        })
    }
    /// Whether slice (b, h) has the same blocks in both (maps of equal geometry; the
    /// strides may differ). Runs are compared block by block, so a run split in two
    /// equals the merged run.
    pub fn same_blocks(&self, other: &BlockMaps, b: usize, h: usize) -> bool {
        let (x, y) = (self.get(b, h), other.get(b, h));
        if (x.lq, x.lkv, x.q_block, x.kv_block) != (y.lq, y.lkv, y.q_block, y.kv_block) {
            return false;
        }
        (0..x.n_q_blocks()).all(|i| (0..x.n_kv_blocks()).all(|j| x.kind(i, j) == y.kind(i, j)))
    }
}

impl BlockMap {
    /// The transposed view (for the backward's dK/dV pass, which iterates over kv
    /// blocks): a map whose rows are this map's kv blocks and whose runs are q-block
    /// ranges, with the roles of the geometry swapped (`lq`/`q_block` of the result are
    /// this map's `lkv`/`kv_block`). Block (j, i) of the result has the kind of block
    /// (i, j) here. Costs O(visited blocks + rows).
    pub fn transpose(&self) -> BlockMap {
        let (nq, nkv) = (self.n_q_blocks(), self.n_kv_blocks());
        // per kv block: the (q block, full) entries, in ascending q-block order
        let mut cols: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nkv];
        for i in 0..nq {
            for r in self.row(i) {
                for j in r.start..r.end {
                    cols[j as usize].push((i as u32, r.full));
                }
            }
        }
        let mut b = BlockMapBuilder::new(self.lkv, self.lq, self.kv_block, self.q_block);
        for col in cols {
            for (i, full) in col {
                let kind = if full == 1 {
                    BlockKind::Full
                } else {
                    BlockKind::Partial
                };
                b.push(i as usize, kind);
            }
            b.end_row();
        }
        b.finish()
    }
}

impl BlockMaps {
    /// Every map transposed ([`BlockMap::transpose`]), same strides: for slice (b, h),
    /// the q-block runs of each kv block.
    pub fn transpose(&self) -> BlockMaps {
        BlockMaps {
            b_stride: self.b_stride,
            h_stride: self.h_stride,
            maps: self.maps.iter().map(BlockMap::transpose).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_merges_runs_and_counts() {
        // causal 3x3 blocks
        let m = BlockMap::from_fn(300, 300, 100, 100, |i, j| {
            if j < i {
                BlockKind::Full
            } else if j == i {
                BlockKind::Partial
            } else {
                BlockKind::Empty
            }
        });
        assert_eq!(
            m.row(2),
            &[
                Run {
                    start: 0,
                    end: 2,
                    full: 1
                },
                Run {
                    start: 2,
                    end: 3,
                    full: 0
                }
            ]
        );
        assert_eq!(m.counts(), (3, 3, 3));
        assert_eq!(m.kind(0, 2), BlockKind::Empty);
        assert_eq!(m.kind(2, 1), BlockKind::Full);
        let d = BlockMap::dense(130, 70, 64, 64);
        assert_eq!(d.counts(), (0, 0, 6));
    }

    #[test]
    fn flatten_pairs_round_trip_and_match_csr() {
        let kinds = [BlockKind::Empty, BlockKind::Partial, BlockKind::Full];
        let a = BlockMap::from_fn(300, 200, 64, 64, |i, j| kinds[(i * 7 + j * 3) % 3]);
        let b = BlockMap::from_fn(300, 200, 64, 64, |i, j| kinds[(i + j) % 3]);
        let maps = BlockMaps {
            b_stride: 2,
            h_stride: 1,
            maps: vec![a.clone(), b.clone(), b, a],
        };
        let (pairs, runs) = maps.flatten();
        let (csr, runs_csr) = maps.flatten_csr();
        assert_eq!(runs, runs_csr);
        assert_eq!(pairs.len(), 2 * (csr.len() - 1));
        for r in 0..csr.len() - 1 {
            assert_eq!((pairs[2 * r], pairs[2 * r + 1]), (csr[r], csr[r + 1]));
        }
        let back = BlockMaps::from_pairs(&pairs, &runs, 4, 300, 200, 64, 64, 2, 1).unwrap();
        assert_eq!(back, maps);
        for (b, h) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            assert!(back.same_blocks(&maps, b, h));
        }
        assert!(!back.same_blocks(&maps.clone_swapped(), 0, 0));
        // rows in any order and place (a GPU table's fixed slots) read back the same
        let mut spread = Vec::new();
        let mut ranges = Vec::new();
        for r in 0..csr.len() - 1 {
            let row = &runs[csr[r] as usize..csr[r + 1] as usize];
            let at = 10 * r as u32;
            spread.resize(
                at as usize,
                Run {
                    start: 9,
                    end: 9,
                    full: 7,
                },
            );
            spread.extend_from_slice(row);
            ranges.extend([at, at + row.len() as u32]);
        }
        let back2 = BlockMaps::from_pairs(&ranges, &spread, 4, 300, 200, 64, 64, 2, 1).unwrap();
        assert_eq!(back2, maps);
        // malformed: end before begin, a run past the row
        let mut bad = pairs.clone();
        bad.swap(0, 1);
        if bad[0] != bad[1] {
            assert!(BlockMaps::from_pairs(&bad, &runs, 4, 300, 200, 64, 64, 2, 1).is_none());
        }
        let mut bad_runs = runs.clone();
        bad_runs[0].end = 99;
        assert!(BlockMaps::from_pairs(&pairs, &bad_runs, 4, 300, 200, 64, 64, 2, 1).is_none());
    }

    #[test]
    fn transpose_matches_brute_force() {
        let kinds = [BlockKind::Empty, BlockKind::Partial, BlockKind::Full];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..60 {
            let (qb, kb) = (1 + next() as usize % 64, 1 + next() as usize % 64);
            let (lq, lkv) = (next() as usize % 700, next() as usize % 700);
            // banded, random and causal-like maps
            let band = next() as usize % 5;
            let m = BlockMap::from_fn(lq, lkv, qb, kb, |i, j| match case % 3 {
                0 => kinds[(next() % 3) as usize],
                1 if j <= i + band && j + band >= i => kinds[1 + (i + j) % 2],
                1 => BlockKind::Empty,
                _ if j * kb < i * qb => BlockKind::Full,
                _ if j * kb < (i + 1) * qb => BlockKind::Partial,
                _ => BlockKind::Empty,
            });
            let t = m.transpose();
            assert_eq!((t.lq, t.lkv, t.q_block, t.kv_block), (lkv, lq, kb, qb));
            assert_eq!(t.n_q_blocks(), m.n_kv_blocks());
            for i in 0..m.n_q_blocks() {
                for j in 0..m.n_kv_blocks() {
                    assert_eq!(t.kind(j, i), m.kind(i, j), "case {case} block ({i}, {j})");
                }
            }
            let (e, p, f) = m.counts();
            assert_eq!(t.counts(), (e, p, f));
            assert_eq!(t.transpose(), m, "case {case}: transposing twice");
        }
        let maps = BlockMaps {
            b_stride: 1,
            h_stride: 0,
            maps: vec![
                BlockMap::dense(100, 300, 32, 64),
                BlockMap::all_partial(5, 9, 16, 4),
            ],
        };
        let t = maps.transpose();
        assert_eq!((t.b_stride, t.h_stride), (1, 0));
        assert_eq!(t.get(1, 0).kind(2, 0), BlockKind::Partial);
        assert_eq!(t.get(0, 3).counts(), (0, 0, 20));
    }

    impl BlockMaps {
        fn clone_swapped(&self) -> BlockMaps {
            let mut m = self.clone();
            m.maps.swap(0, 1);
            m
        }
    }
}
