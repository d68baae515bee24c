//! The documents of one call's packed sequences, and the tile list of the document-tiled
//! forward (`PtxOptions::doc_tiles`).
//!
//! In: the id function of a document mask (`Plan::doc_split`: the document of row `q` of
//! batch `b`), the program and one call's [`Bindings`], the batch count and the sequence
//! length. Out: per batch the runs of rows with one id ([`document_runs`]; `None` when an
//! id comes back after another, so that a document is not one run of rows and the
//! split does not describe the mask), and from them the tile list ([`doc_tiles`]): per
//! tile `(b, row0, rows, qi)`, q block `qi` of the document of `rows` rows from `row0`,
//! heavy tiles first.

use crate::analysis::blockmap::Run;
use crate::analysis::linear::Bound;
use crate::backend::llvm::bounds::row_range;
use crate::interp::{Args, Bindings, EvalError, TensorData, eval};
use crate::ir::{Arg, Function, Inst, Program, Scalar, Value};
use std::collections::HashSet;

/// One document: `rows` rows from `row0` of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document {
    pub row0: usize,
    pub rows: usize,
}

/// The documents of each batch `0..b` of sequences of `len` rows: the maximal runs of
/// rows whose `id` (evaluated at `(b, 0, q, 0)`) is the same. `Ok(None)` when some id of a
/// batch occurs in two runs (the documents are not contiguous) or is not an i32; an
/// out-of-range read of the id function is its error.
pub fn document_runs(
    id: &Function,
    p: &Program,
    bind: &Bindings,
    b: usize,
    len: usize,
) -> Result<Option<Vec<Vec<Document>>>, EvalError> {
    let mut scratch = Vec::new();
    let direct = direct_ids(id, bind, b, len);
    let mut all = Vec::with_capacity(b);
    for bi in 0..b {
        let mut runs: Vec<Document> = Vec::new();
        let mut seen = HashSet::new();
        let mut last = None;
        for q in 0..len {
            let x = match direct {
                Some((data, stride)) => data[bi * stride + q],
                None => match eval(id, p, Args::at(0.0, [bi, 0, q, 0]), bind, &mut scratch)? {
                    Scalar::I32(x) => x,
                    _ => return Ok(None),
                },
            };
            if last == Some(x) {
                runs.last_mut().expect("a run is open").rows += 1;
                continue;
            }
            if !seen.insert(x) {
                return Ok(None);
            }
            last = Some(x);
            runs.push(Document { row0: q, rows: 1 });
        }
        all.push(runs);
    }
    Ok(Some(all))
}

/// The ids in place where the id function is one read of an i32 tensor at `[b, q]` or
/// `[q]` whose dims hold every `(b, q)` of `b` batches of `len` rows: the data and the
/// batch stride (the interpreter's value at every point, without it).
fn direct_ids<'a>(
    id: &Function,
    bind: &'a Bindings,
    b: usize,
    len: usize,
) -> Option<(&'a [i32], usize)> {
    let Inst::Load {
        tensor, indices, ..
    } = id.inst(id.ret)
    else {
        return None;
    };
    let t = bind.tensors.get(tensor.0 as usize)?;
    let TensorData::I32(data) = &t.data else {
        return None;
    };
    let arg = |v: &Value| match id.inst(*v) {
        Inst::Arg(a) => Some(*a),
        _ => None,
    };
    let stride = match (&indices[..], &t.dims[..]) {
        ([ib, iq], &[db, dq])
            if arg(ib) == Some(Arg::B) && arg(iq) == Some(Arg::Q) && b <= db && len <= dq =>
        {
            dq
        }
        ([iq], &[dq]) if arg(iq) == Some(Arg::Q) && len <= dq => 0,
        _ => return None,
    };
    (data.len() >= t.dims.iter().product::<usize>()).then_some((data.as_slice(), stride))
}

/// The tile list of [`document_runs`]' documents for q blocks of `q_block` rows: per
/// tile the i32 quadruple `(b, row0, rows, qi)`, flattened. Heavy tiles first (a stable
/// order, so the list is a function of the documents): where the mask's work grows with
/// `q` (`grows`: a causal triangle) by the q block's index in its document, else by the
/// document's length.
pub fn doc_tiles(docs: &[Vec<Document>], q_block: usize, grows: bool) -> Vec<i32> {
    let mut tiles: Vec<[usize; 4]> = Vec::new();
    for (b, runs) in docs.iter().enumerate() {
        for d in runs {
            for qi in 0..d.rows.div_ceil(q_block) {
                tiles.push([b, d.row0, d.rows, qi]);
            }
        }
    }
    let work = |t: &[usize; 4]| if grows { t[3] } else { t[2] };
    tiles.sort_by_key(|t| std::cmp::Reverse(work(t)));
    tiles
        .iter()
        .flat_map(|t| t.iter().map(|&x| x as i32))
        .collect()
}

/// The runs of kv blocks of each tile of `tiles` ([`doc_tiles`]), counted from the tile's
/// document's first row, CSR (`row_start` with one entry per tile and one more, `runs`):
/// the range of the closed form `coefs` / `bounds` (a document mask's linear part,
/// `Plan::doc_split`; each offset moved to the document's first row, `k + a_kv row0`) over
/// the tile's rows with the document's length as the keys, computed with the kernels' own
/// arithmetic (`bounds::row_range`): a partial, a full and a partial run. `bounds`
/// `None` where the closed form cannot be trusted for the call (every block partial);
/// `has_mask` false: no mask (every block full).
pub fn doc_tile_runs(
    tiles: &[i32],
    coefs: &[(i64, i64)],
    bounds: Option<&[Bound]>,
    has_mask: bool,
    q_block: usize,
    kv_block: usize,
) -> (Vec<u32>, Vec<Run>) {
    let mut row_start = vec![0u32];
    let mut runs = Vec::new();
    for t in tiles.chunks(4) {
        let [row0, rows, qi] = [t[1], t[2], t[3]].map(|x| x as usize);
        let q0 = row0 + qi * q_block;
        let q1 = (q0 + q_block).min(row0 + rows) - 1;
        let nkv = rows.div_ceil(kv_block) as u32;
        let mut push = |start: u32, end: u32, full: u32| {
            if start < end {
                runs.push(Run { start, end, full });
            }
        };
        match (has_mask, bounds) {
            (false, _) => push(0, nkv, 1),
            (true, None) => push(0, nkv, 0),
            (true, Some(bs)) => {
                let shifted: Vec<Bound> = bs
                    .iter()
                    .map(|c| Bound {
                        k: c.k + c.a_kv * row0 as i128,
                        ..*c
                    })
                    .collect();
                let r = row_range(coefs, &shifted, q0 as i64, q1 as i64, rows, kv_block);
                let (first, end) = (r.first as u32, r.end as u32);
                let (ff, fe) = (r.full_first as u32, r.full_end as u32);
                if ff < fe {
                    push(first, ff, 0);
                    push(ff, fe, 1);
                    push(fe, end, 0);
                } else {
                    push(first, end, 0);
                }
            }
        }
        row_start.push(runs.len() as u32);
    }
    (row_start, runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{BoundTensor, TensorData};

    fn program(src: &str) -> Program {
        crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs
            .remove(0)
    }

    /// Runs of equal ids per batch, and the refusals: an id that comes back, a read out
    /// of range (an error, not a panic).
    #[test]
    fn runs_of_ids_per_batch() {
        let p = program(
            "tensor doc: i32[B, KV];\n mask m(b, h, q, kv) { q >= kv && doc[b, q] == doc[b, kv] }\n attention a { mask = m; }",
        );
        let plan = crate::plan::Plan::new(&p);
        let (_, id) = plan.doc_split().expect("a document mask");
        let bind = |ids: Vec<i32>, b: usize| Bindings {
            params: vec![],
            tensors: vec![BoundTensor {
                dims: vec![b, ids.len() / b],
                data: TensorData::I32(ids),
            }],
        };
        let two = bind(vec![4, 4, 4, 7, 9, 9, 0, 0, 1, 1, 1, 1], 2);
        let runs = document_runs(&id, &p, &two, 2, 6).unwrap().unwrap();
        let d = |row0, rows| Document { row0, rows };
        assert_eq!(
            runs,
            vec![vec![d(0, 3), d(3, 1), d(4, 2)], vec![d(0, 2), d(2, 4)]]
        );
        // an id of batch 0 may recur in batch 1, not inside one batch
        let back = bind(vec![4, 4, 7, 4], 1);
        assert_eq!(document_runs(&id, &p, &back, 1, 4).unwrap(), None);
        assert!(document_runs(&id, &p, &two, 2, 7).is_err());
        // (the same runs through the interpreter: an id function that is not one read)
        let p2 = program(
            "tensor doc: i32[B, KV];\n mask m(b, h, q, kv) { q >= kv && doc[b, q] / 2 == doc[b, kv] / 2 }\n attention a { mask = m; }",
        );
        let (_, id2) = crate::plan::Plan::new(&p2)
            .doc_split()
            .expect("a document mask");
        assert!(direct_ids(&id2, &two, 2, 6).is_none());
        assert!(direct_ids(&id, &two, 2, 6).is_some());
        // (ids / 2: batch 1's 0 0 1 1 1 1 are one document)
        let halves = vec![runs[0].clone(), vec![d(0, 6)]];
        assert_eq!(
            document_runs(&id2, &p2, &two, 2, 6).unwrap().unwrap(),
            halves
        );
        // tiles: heavy first, each document's q blocks
        let t = doc_tiles(&runs, 2, true);
        let quads: Vec<&[i32]> = t.chunks(4).collect();
        assert_eq!(quads.len(), 2 + 1 + 1 + 1 + 2);
        assert_eq!(quads[0], [0, 0, 3, 1]);
        assert_eq!(quads[1], [1, 2, 4, 1]);
        assert!(quads[2..].iter().all(|q| q[3] == 0));
        let by_len = doc_tiles(&runs, 2, false);
        assert_eq!(&by_len[..4], &[1, 2, 4, 0]);
    }

    /// The document tiles as the kernels run them (`PtxOptions::doc_tiles`,
    /// `CpuOptions::doc_tiles`), simulated on the host with the runs of [`doc_tile_runs`]
    /// (the closed-form arithmetic the GPU kernel emits as IR, `bounds::row_range`, and the
    /// CPU kernel reads as a table): for random packed documents (lengths from one row to
    /// several tiles) and document masks with and without a causal / window / chunk part,
    /// every row lies in exactly one tile; each tile's visited kv blocks, counted from its
    /// document's first row with the offsets shifted by it (`k + a_kv row0`) and the
    /// document's length as the keys, keep exactly the keys the whole mask keeps for each
    /// of its rows — a full block only where the mask holds at every point, a partial one
    /// evaluating `L` alone (the split's program), which must equal the whole mask there.
    #[test]
    fn doc_tiles_keep_exactly_the_mask() {
        use crate::plan::KvBounds;
        use crate::shape::Shape;
        let src = "tensor doc: i32[B, KV];\n param window: i32;\n\
            mask causal(b, h, q, kv) { q >= kv }\n\
            mask same(b, h, q, kv) { doc[b, q] == doc[b, kv] }\n\
            mask local(b, h, q, kv) { q - kv <= window }\n\
            mask chunk(b, h, q, kv) { q / 48 == kv / 48 }\n\
            attention only { mask = same; }\n\
            attention causal_doc { mask = causal & same; }\n\
            attention window_doc { mask = causal & local & same; }\n\
            attention chunked { mask = chunk & causal; }\n";
        let programs = crate::compile_source(src)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .programs;
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut tiles_seen, mut partial_seen) = (0, 0);
        for case in 0..12 {
            let (b, l) = (2, 1 + next(400) as usize);
            // sorted ids with random cuts (some documents of one row), or few long ones
            let docs = if case % 3 == 0 {
                2
            } else {
                1 + next(40) as i32
            };
            let mut ids = Vec::new();
            for _ in 0..b {
                let mut row: Vec<i32> = (0..l).map(|_| next(docs as u64) as i32).collect();
                row.sort();
                ids.extend(row);
            }
            let bind = Bindings {
                params: vec![Scalar::I32(17)],
                tensors: vec![BoundTensor {
                    dims: vec![b, l],
                    data: TensorData::I32(ids),
                }],
            };
            let shape = Shape {
                b,
                hq: 1,
                hkv: 1,
                lq: l,
                lkv: l,
                d: 64,
                dv: 64,
            };
            for p in &programs {
                // (the bindings hold every tensor and param of the source; programs keep
                // their own lists: bind by name)
                let mine = Bindings {
                    params: p.params.iter().map(|_| Scalar::I32(17)).collect(),
                    tensors: p.tensors.iter().map(|_| bind.tensors[0].clone()).collect(),
                };
                let plan = crate::plan::Plan::new(p);
                let (dplan, id) = plan.doc_split().unwrap_or_else(|| panic!("{}", p.name));
                let runs = document_runs(&id, p, &mine, b, l).unwrap().unwrap();
                let KvBounds::ClosedForm(cf) = dplan.kv_bounds(false) else {
                    panic!("{}: no closed form", p.name);
                };
                let coefs = dplan.kv_bounds(false).coefficients();
                let bounds = dplan.closed_form_bounds(&cf, &shape, &mine).unwrap();
                for (qb, kvb) in [(128usize, 128usize), (64, 64), (192, 128)] {
                    let tiles = doc_tiles(&runs, qb, dplan.kv_bounds(false).work_grows_with_q());
                    let has_mask = dplan.program().mask.is_some();
                    let (row_start, tile_runs) =
                        doc_tile_runs(&tiles, &coefs, bounds.as_deref(), has_mask, qb, kvb);
                    let mut covered = vec![0u8; b * l];
                    let mut scratch = Vec::new();
                    let mut at = |f: &Function, bi: usize, q: usize, kv: usize| {
                        eval(f, p, Args::at(0.0, [bi, 0, q, kv]), &mine, &mut scratch).unwrap()
                            == Scalar::Bool(true)
                    };
                    for (ti, t) in tiles.chunks(4).enumerate() {
                        let [bi, row0, rows, qi] = [t[0], t[1], t[2], t[3]].map(|x| x as usize);
                        let q0 = row0 + qi * qb;
                        let q_end = (q0 + qb).min(row0 + rows);
                        assert!(q0 < q_end, "{}: an empty tile", p.name);
                        let mine_runs =
                            &tile_runs[row_start[ti] as usize..row_start[ti + 1] as usize];
                        tiles_seen += 1;
                        for q in q0..q_end {
                            covered[bi * l + q] += 1;
                            let mut kept = vec![false; l];
                            for r in mine_runs {
                                for j in r.start as usize..r.end as usize {
                                    let kvs =
                                        row0 + j * kvb..(row0 + (j + 1) * kvb).min(row0 + rows);
                                    for kv in kvs {
                                        kept[kv] = if r.full == 1 {
                                            true
                                        } else {
                                            partial_seen += 1;
                                            match &dplan.program().mask {
                                                Some(m) => at(m, bi, q, kv),
                                                None => true,
                                            }
                                        };
                                    }
                                }
                            }
                            let whole = p.mask.as_ref().unwrap();
                            for (kv, &k) in kept.iter().enumerate() {
                                assert_eq!(
                                    k,
                                    at(whole, bi, q, kv),
                                    "{} L{l} tiles {qb}x{kvb}: row {q} key {kv} of batch {bi} (tile {t:?})",
                                    p.name
                                );
                            }
                        }
                    }
                    assert!(
                        covered.iter().all(|&c| c == 1),
                        "{}: rows not covered once",
                        p.name
                    );
                }
            }
        }
        assert!(
            tiles_seen > 100 && partial_seen > 1000,
            "{tiles_seen} {partial_seen}"
        );
    }
}
