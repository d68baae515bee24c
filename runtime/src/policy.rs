//! Policy, apart from execution: where a launch's kv blocks come from and when a block
//! table may be reused.
//!
//! In: the [`Plan`], the bind options, one launch's bindings. Out: the block maps of a
//! launch and whether they stay valid for the binding ([`launch_maps`], [`reusable`]);
//! the key of a device-built block table ([`TableKey`]: the shape, the tiles and the exact
//! bits of what the mask reads, from `Plan::mask_reads`) and whether a kept table matches
//! a launch ([`table_matches`]).

use crate::options::BindOptions;
use attnc_compiler::analysis::blockmap::{BlockMap, BlockMaps};
use attnc_compiler::analysis::classify::BlockError;
use attnc_compiler::interp::{Bindings, TensorData};
use attnc_compiler::ir::Scalar;
use attnc_compiler::plan::{MapRecipe, Plan, Reads};
use attnc_compiler::shape::Shape;

/// Whether a launch's block maps stay valid for every later launch of the binding: the
/// shape fixes them (no mask or index-only) and checked mode is off.
pub(crate) fn reusable(plan: &Plan, opts: &BindOptions) -> bool {
    plan.map_recipe() == MapRecipe::PerShape && !opts.checked
}

/// The block maps of one launch for a kernel with these block sizes. In checked mode
/// every block is partial, so that every mask read the source performs is checked.
pub(crate) fn launch_maps(
    plan: &Plan,
    opts: &BindOptions,
    q_block: usize,
    kv_block: usize,
    bindings: &Bindings,
) -> Result<BlockMaps, BlockError> {
    if opts.checked && plan.program().mask.is_some() {
        let s = opts.shape;
        return Ok(BlockMaps::single(BlockMap::all_partial(
            s.lq, s.lkv, q_block, kv_block,
        )));
    }
    plan.block_maps(&opts.shape, q_block, kv_block, bindings)
}

/// The maps of a launch: the binding's kept ones, or built now (and kept when
/// [`reusable`]).
pub(crate) fn maps_for<'a>(
    kept: &'a mut Option<BlockMaps>,
    scratch: &'a mut Option<BlockMaps>,
    plan: &Plan,
    opts: &BindOptions,
    q_block: usize,
    kv_block: usize,
    bindings: &Bindings,
) -> Result<&'a BlockMaps, BlockError> {
    if kept.is_some() {
        return Ok(kept.as_ref().expect("checked"));
    }
    let built = launch_maps(plan, opts, q_block, kv_block, bindings)?;
    Ok(if reusable(plan, opts) {
        // index-only: the shape fixes the maps; keep them for later calls
        &*kept.insert(built)
    } else {
        &*scratch.insert(built)
    })
}

/// What a device-built block table was built from: the shape, the tiles and the exact
/// bits of the params and captured tensors (dims and elements) the mask reads. Equal
/// keys give equal tables (the builder is deterministic), so the table is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableKey {
    shape: Shape,
    tiles: (u32, u32),
    params: Vec<u32>,
    tensors: Vec<(Vec<usize>, Vec<u32>)>,
}

/// The 32-bit word of a param as the kernels read it (also the params buffer's words).
pub(crate) fn scalar_bits(x: &Scalar) -> u32 {
    match x {
        Scalar::Bool(b) => *b as u32,
        Scalar::I32(v) => *v as u32,
        Scalar::F32(v) => v.to_bits(),
    }
}

fn tensor_bits(d: &TensorData) -> Vec<u32> {
    match d {
        TensorData::I32(v) => v.iter().map(|x| *x as u32).collect(),
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
    }
}

/// Whether `d` holds exactly the elements `bits` (float bits compared, so -0.0 and NaN
/// payloads count as changes).
fn same_bits(d: &TensorData, bits: &[u32]) -> bool {
    match d {
        TensorData::I32(v) => {
            v.len() == bits.len() && v.iter().zip(bits).all(|(a, b)| *a as u32 == *b)
        }
        TensorData::F32(v) => {
            v.len() == bits.len() && v.iter().zip(bits).all(|(a, b)| a.to_bits() == *b)
        }
    }
}

/// The key of a launch (copies the mask's tensors: call on a miss only).
pub(crate) fn table_key(
    deps: &Reads,
    shape: &Shape,
    tiles: (u32, u32),
    bind: &Bindings,
) -> TableKey {
    TableKey {
        shape: *shape,
        tiles,
        params: deps
            .params
            .iter()
            .map(|&i| bind.params.get(i).map_or(u32::MAX, scalar_bits))
            .collect(),
        tensors: deps
            .tensors
            .iter()
            .map(|&i| match bind.tensors.get(i) {
                Some(t) => (t.dims.clone(), tensor_bits(&t.data)),
                None => (vec![], vec![]),
            })
            .collect(),
    }
}

/// Whether a launch has key `key`, compared in place (no copy).
pub(crate) fn table_matches(
    deps: &Reads,
    key: &TableKey,
    shape: &Shape,
    tiles: (u32, u32),
    bind: &Bindings,
) -> bool {
    key.shape == *shape
        && key.tiles == tiles
        && key.params.len() == deps.params.len()
        && deps
            .params
            .iter()
            .zip(&key.params)
            .all(|(&i, w)| bind.params.get(i).is_some_and(|x| scalar_bits(x) == *w))
        && key.tensors.len() == deps.tensors.len()
        && deps
            .tensors
            .iter()
            .zip(&key.tensors)
            .all(|(&i, (dims, bits))| {
                bind.tensors
                    .get(i)
                    .is_some_and(|t| t.dims == *dims && same_bits(&t.data, bits))
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::interp::BoundTensor;
    use attnc_compiler::ir::Program;

    fn program() -> Program {
        attnc_compiler::compile_source(
            "tensor doc: i32[B, KV]; tensor bias: f32[KV]; tensor w: f32[KV]; \
             param window: i32; param temp: f32; \
             mask m(b, h, q, kv) { q - kv <= window && doc[b, q] == doc[b, kv] && w[kv] > 0.0 } \
             score s(s, b, h, q, kv) { s * temp + bias[kv] } \
             attention a { mask = m; score = s; }",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .programs
        .remove(0)
    }

    fn bindings(p: &Program) -> Bindings {
        let mut b = Bindings::default();
        for prm in &p.params {
            b.params.push(match prm.name.as_str() {
                "window" => Scalar::I32(16),
                "temp" => Scalar::F32(0.5),
                other => panic!("{other}"),
            });
        }
        for t in &p.tensors {
            b.tensors.push(match t.name.as_str() {
                "doc" => BoundTensor {
                    dims: vec![2, 8],
                    data: TensorData::I32((0..16).map(|i| i / 3).collect()),
                },
                "bias" => BoundTensor {
                    dims: vec![8],
                    data: TensorData::F32(vec![0.25; 8]),
                },
                "w" => BoundTensor {
                    dims: vec![8],
                    data: TensorData::F32(vec![1.0, -1.0, 0.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                },
                other => panic!("{other}"),
            });
        }
        b
    }

    fn index(p: &Program, name: &str) -> usize {
        p.tensors.iter().position(|t| t.name == name).unwrap()
    }

    /// The key of a kept GPU table: equal inputs reuse it; any change to a tensor or
    /// param the mask reads, to the shape or to the tiles rebuilds; what only the score
    /// reads does not count.
    #[test]
    fn table_key_changes_exactly_with_what_the_mask_reads() {
        let p = program();
        let plan = Plan::new(&p);
        let deps = plan.mask_reads();
        let shape = Shape {
            b: 2,
            hq: 2,
            hkv: 2,
            lq: 8,
            lkv: 8,
            d: 16,
            dv: 16,
        };
        let tiles = (64, 64);
        let base = bindings(&p);
        let key = table_key(deps, &shape, tiles, &base);
        assert!(table_matches(deps, &key, &shape, tiles, &base));
        assert!(table_matches(deps, &key, &shape, tiles, &base.clone()));
        // each change that must rebuild
        let mut changed: Vec<(&str, Bindings)> = Vec::new();
        let mut b = base.clone();
        if let TensorData::I32(v) = &mut b.tensors[index(&p, "doc")].data {
            v[13] += 1; // one document id
        }
        changed.push(("one doc id", b));
        let mut b = base.clone();
        if let TensorData::F32(v) = &mut b.tensors[index(&p, "w")].data {
            v[2] = -0.0; // == 0.0, but other bits
        }
        changed.push(("0.0 -> -0.0 in w", b));
        let mut b = base.clone();
        b.tensors[index(&p, "doc")].dims = vec![1, 16];
        changed.push(("doc dims", b));
        let mut b = base.clone();
        let wi = p.params.iter().position(|x| x.name == "window").unwrap();
        b.params[wi] = Scalar::I32(-16);
        changed.push(("window", b));
        for (what, b) in &changed {
            assert!(
                !table_matches(deps, &key, &shape, tiles, b),
                "{what}: reused"
            );
            // and the rebuilt table's key matches the new inputs
            let k2 = table_key(deps, &shape, tiles, b);
            assert!(table_matches(deps, &k2, &shape, tiles, b), "{what}");
            assert_ne!(k2, key, "{what}");
        }
        let other_shape = Shape { lq: 9, ..shape };
        assert!(!table_matches(deps, &key, &other_shape, tiles, &base));
        assert!(!table_matches(deps, &key, &shape, (128, 64), &base));
        // only the score reads `bias` and `temp`: changing them keeps the table
        let mut b = base.clone();
        if let TensorData::F32(v) = &mut b.tensors[index(&p, "bias")].data {
            v[0] = 9.0;
        }
        let ti = p.params.iter().position(|x| x.name == "temp").unwrap();
        b.params[ti] = Scalar::F32(2.0);
        assert!(table_matches(deps, &key, &shape, tiles, &b));
        // a missing tensor never matches
        let mut b = base.clone();
        b.tensors.truncate(index(&p, "doc"));
        assert!(!table_matches(deps, &key, &shape, tiles, &b));
    }
}
