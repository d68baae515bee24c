//! The documents of one call's packed sequences, and the tile list of the document-tiled
//! forward (`PtxOptions::doc_tiles`).
//!
//! In: the id function of a document mask (`Plan::doc_split`: the document of row `q` of
//! batch `b`), the program and one call's [`Bindings`], the batch count and the sequence
//! length. Out: per batch the runs of rows with one id ([`document_runs`]; `None` when an
//! id comes back after another, so that a document is not one run of rows and the
//! split does not describe the mask), and from them the tile list ([`doc_tiles`]): per
//! tile `(b, row0, rows, qi)`, q block `qi` of the document of `rows` rows from `row0`,
//! heavy tiles first. Each tile's kv runs come from the kernels' closed-form arithmetic
//! (`backend::llvm::bounds::doc_tile_runs`).

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

/// The tile list of one call ([`document_runs`], then [`doc_tiles`]), or `None` where the
/// call's ids do not form contiguous documents or the id function cannot be evaluated
/// (the caller then runs its block-table kernel, which meets the same read as it does).
#[allow(clippy::too_many_arguments)]
pub fn call_tiles(
    id: &Function,
    p: &Program,
    bind: &Bindings,
    b: usize,
    len: usize,
    q_block: usize,
    grows: bool,
) -> Option<Vec<i32>> {
    let docs = document_runs(id, p, bind, b, len).ok()??;
    Some(doc_tiles(&docs, q_block, grows))
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

/// Whether one entry `(b, row0, rows, i)` of a document tile list ([`doc_tiles`], or the
/// backward's kv tiles, `backend::llvm::bounds::doc_kv_ranges`) lies in its sequence: `b`
/// one of `batches`, its document of `rows >= 1` rows from `row0` inside `len` rows, and
/// its tile `i` of `block` rows starting inside the document. Every launcher checks its
/// list with it before a kernel reads by it.
pub fn tile_in_sequence(t: [i32; 4], batches: usize, len: usize, block: usize) -> bool {
    let [b, row0, rows, i] = t.map(|x| x as i64);
    (0..batches as i64).contains(&b)
        && row0 >= 0
        && rows >= 1
        && row0 + rows <= len as i64
        && i >= 0
        && i * (block as i64) < rows
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
        let runs = document_runs(id, &p, &two, 2, 6).unwrap().unwrap();
        let d = |row0, rows| Document { row0, rows };
        assert_eq!(
            runs,
            vec![vec![d(0, 3), d(3, 1), d(4, 2)], vec![d(0, 2), d(2, 4)]]
        );
        // an id of batch 0 may recur in batch 1, not inside one batch
        let back = bind(vec![4, 4, 7, 4], 1);
        assert_eq!(document_runs(id, &p, &back, 1, 4).unwrap(), None);
        assert!(document_runs(id, &p, &two, 2, 7).is_err());
        // (the same runs through the interpreter: an id function that is not one read)
        let p2 = program(
            "tensor doc: i32[B, KV];\n mask m(b, h, q, kv) { q >= kv && doc[b, q] / 2 == doc[b, kv] / 2 }\n attention a { mask = m; }",
        );
        let plan2 = crate::plan::Plan::new(&p2);
        let (_, id2) = plan2.doc_split().expect("a document mask");
        assert!(direct_ids(id2, &two, 2, 6).is_none());
        assert!(direct_ids(id, &two, 2, 6).is_some());
        // (ids / 2: batch 1's 0 0 1 1 1 1 are one document)
        let halves = vec![runs[0].clone(), vec![d(0, 6)]];
        assert_eq!(
            document_runs(id2, &p2, &two, 2, 6).unwrap().unwrap(),
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
}
