//! Block masks made once (like FlexAttention's `create_block_mask`): for an attention
//! whose mask reads captured tensors (document ids, ...), the caller-buffer forward
//! rebuilds its block table on the GPU at every call and the backward visits every block
//! of the mask's linear range; a block mask made once from the captures replaces both
//! for as long as the captures do not change.
//!
//! In: a CUDA binding, its captures as host tensors ([`Bound::block_mask_tables`]: the
//! block maps of the forward kernel's tiles and, with `backward`, the backward kernels'
//! per-row ranges, from the tensors' per-block summaries: sound, and exact where a block
//! pair is settled by them, e.g. sorted document ids). The caller copies the tables to the
//! device and passes their addresses with the call ([`DeviceBlockMask`]), together with
//! what they were made from. Out: `Bound::forward_cuda_into_masked` /
//! `Bound::backward_cuda_into_masked` launch the attention kernels on those tables; a
//! block mask that does not fit the binding (shape, tiles, lengths) or was made from other
//! captures (another tensor, other dims, other values of the params the mask reads) is an
//! error, never a silently wrong result. (The Python package also checks torch's version
//! counter of each captured tensor, which sees in-place writes.)
//!
//! For a document mask `L && doc[b, q] == doc[b, kv]` whose ids form contiguous
//! documents, where the binding runs document tiles (`BindOptions::doc_tiles`), the block
//! mask also carries the tile list of the document-tiled forward ([`DocTileList`],
//! `exec::cuda::documents`): the forward then runs that kernel on it (FlashAttention's
//! varlen layout, read in place) instead of the table kernel; with `backward`, and where
//! the binding's backward kernels have a document variant
//! (`backward::doc_backward_options`), also the backward's document kv tiles and their
//! per-q-block ranges ([`DocBackwardList`], `backend::llvm::bounds::doc_kv_ranges`): the
//! backward then runs that variant (kv tiles aligned to each document) on them.

use super::DeviceTensor;
use crate::api::{Bound, Captures, ParamValue};
use crate::cuda::backward::{kv_ranges, q_ranges};
use crate::error::{Error, Result};
use crate::exec::cuda::caller::{CallerDocs, CallerRanges, CallerTable};
use crate::policy;
use attnc_compiler::plan::MapRecipe;
use attnc_compiler::shape::Shape;
use std::collections::HashMap;

/// The forward kernel's table: one `(begin, end)` pair per (map, q block) row and
/// `(start, end, full)` run triples (`BlockMaps::flatten`), with the map strides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskTable {
    pub tiles: (u32, u32),
    pub row_start: Vec<u32>,
    pub runs: Vec<u32>,
    pub strides: (i32, i32),
}

/// The backward kernels' ranges (`cuda::backward::{kv_ranges, q_ranges}`) at their tiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskRanges {
    pub tiles: (u32, u32),
    pub kv: Vec<i32>,
    pub kv_strides: (i32, i32),
    pub q: Vec<i32>,
    pub q_strides: (i32, i32),
}

/// The document-tiled forward's tile list (`analysis::documents::call_tiles`): four i32
/// words a tile, `(b, row0, rows, qi)`, for q tiles of `q_block` rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocTileList {
    pub q_block: u32,
    pub tiles: Vec<i32>,
}

pub use crate::backward::DocBackwardList;

/// A block mask's tables on the host, and what they were made from: the names and dims of
/// the captured tensors the mask reads, and the words of the params it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMaskTables {
    pub shape: Shape,
    pub forward: MaskTable,
    pub backward: Option<MaskRanges>,
    /// The document tiles of these captures, where the binding runs them (module header).
    pub documents: Option<DocTileList>,
    /// The backward's document kv tiles, where its kernels run them (module header).
    pub backward_documents: Option<DocBackwardList>,
    pub tensors: Vec<(String, Vec<usize>)>,
    pub params: Vec<(String, u32)>,
}

/// A device buffer: address and length in 4-byte words.
pub type DeviceWords = (u64, usize);

/// The backward's ranges in device memory: `(tiles, kv ranges, kv strides, q ranges, q
/// strides)`.
pub type DeviceMaskRanges = ((u32, u32), DeviceWords, (i32, i32), DeviceWords, (i32, i32));

/// A block mask's tables in device memory (i32/u32 words, as [`BlockMaskTables`] holds
/// them) and what they were made from: each captured tensor the mask reads with the
/// device address (0: not compared) and dims it had, and the params' words.
#[derive(Clone, Debug)]
pub struct DeviceBlockMask {
    pub shape: Shape,
    pub tiles: (u32, u32),
    pub row_start: DeviceWords,
    pub runs: DeviceWords,
    pub strides: (i32, i32),
    pub backward: Option<DeviceMaskRanges>,
    /// The document tile list's `q_block` and words ([`DocTileList`]), if it has one.
    pub documents: Option<(u32, DeviceWords)>,
    /// The backward's document kv tiles: their kernels' tiles, the entries' words and the
    /// ranges' ([`DocBackwardList`]), if it has them.
    pub backward_documents: Option<((u32, u32), DeviceWords, DeviceWords)>,
    pub tensors: Vec<(String, u64, Vec<usize>)>,
    pub params: Vec<(String, u32)>,
}

fn stale(what: String) -> Error {
    Error::Usage(format!(
        "stale block mask: {what}; make a new block mask for these captures"
    ))
}

/// The block maps' (b, h) strides and number of maps of a mask that reads `b` / `h`.
fn map_layout(shape: &Shape, uses_b: bool, uses_h: bool) -> ((i32, i32), usize) {
    let nh = if uses_h { shape.hq } else { 1 };
    let nb = if uses_b { shape.b } else { 1 };
    ((if uses_b { nh as i32 } else { 0 }, uses_h as i32), nb * nh)
}

impl Bound {
    /// The tiles of this CUDA binding's forward kernel.
    fn forward_tiles(&self) -> Result<(u32, u32)> {
        let exec = self.exec();
        let Some(cuda) = exec.cuda() else {
            return Err(Error::Usage("block masks are for CUDA bindings".into()));
        };
        Ok(cuda.forward_tiles())
    }

    /// A mask over captured tensors with table kernels: what a block mask is for.
    fn require_tensor_mask(&self) -> Result<()> {
        self.require_cuda("block masks")?;
        if self.plan().map_recipe() != MapRecipe::Tensors {
            return Err(Error::Usage(format!(
                "`{}`'s mask reads no captured tensor: its blocks come from a closed form or the params at no cost per call, so it takes no block mask",
                self.variant().program().name
            )));
        }
        Ok(())
    }

    /// CUDA backend, a mask over captured tensors: the tables of a block mask for these
    /// captures (host tensors: those the mask reads, and values for its params), for the
    /// forward kernel and, with `backward`, the backward kernels (loaded here on first
    /// use). Sound for any data: a block is empty only where the mask is false on all of
    /// it, full only where it is true on all of it.
    pub fn block_mask_tables(
        &mut self,
        captures: &Captures,
        backward: bool,
    ) -> Result<BlockMaskTables> {
        self.refuse_padded("Bound::block_mask_tables")?;
        self.require_tensor_mask()?;
        let shape = self.options().shape;
        let bindings = crate::api::bind_captures(self.variant(), &shape, captures)?;
        let tiles = self.forward_tiles()?;
        let plan = self.plan().clone();
        let blocks = |e| Error::Backend {
            backend: "blocks",
            message: format!("{e}"),
        };
        let maps = plan
            .block_maps(&shape, tiles.0 as usize, tiles.1 as usize, &bindings)
            .map_err(blocks)?;
        let (row_start, runs) = maps.flatten();
        let forward = MaskTable {
            tiles,
            row_start,
            runs: runs.iter().flat_map(|r| [r.start, r.end, r.full]).collect(),
            strides: (maps.b_stride as i32, maps.h_stride as i32),
        };
        let backward = if backward {
            let kernels = self.cuda_backward_kernels(true)?;
            let ko = kernels.options();
            let bt = (ko.q_block, ko.kv_block);
            let bmaps = plan
                .block_maps(&shape, bt.0 as usize, bt.1 as usize, &bindings)
                .map_err(blocks)?;
            let (kv, kv_strides) = kv_ranges(&bmaps, &shape);
            let (q, q_strides) = q_ranges(&bmaps);
            Some(MaskRanges {
                tiles: bt,
                kv,
                kv_strides,
                q,
                q_strides,
            })
        } else {
            None
        };
        let documents = {
            let (exec, plan, _, opts) = self.parts_mut();
            match exec.cuda_mut() {
                Some(cuda) => cuda
                    .doc_tiles_for(plan, opts, &bindings)
                    .map_err(|e| self.variant().render(e))?,
                None => None,
            }
        }
        .map(|(q_block, tiles)| DocTileList { q_block, tiles });
        let backward_documents = if backward.is_some() {
            self.doc_backward_list(&bindings)?
        } else {
            None
        };
        let p = self.variant().program();
        let reads = plan.mask_reads();
        Ok(BlockMaskTables {
            shape,
            forward,
            backward,
            documents,
            backward_documents,
            tensors: reads
                .tensors
                .iter()
                .map(|t| {
                    (
                        p.tensors[*t].name.clone(),
                        bindings.tensors[*t].dims.clone(),
                    )
                })
                .collect(),
            params: reads
                .params
                .iter()
                .map(|i| {
                    (
                        p.params[*i].name.clone(),
                        policy::scalar_bits(&bindings.params[*i]),
                    )
                })
                .collect(),
        })
    }

    /// Checks a block mask against this binding and this call's captures (module header)
    /// and returns the forward table's addresses and, with `backward`, the ranges'.
    pub(crate) fn check_block_mask(
        &mut self,
        mask: &DeviceBlockMask,
        tensors: &HashMap<String, DeviceTensor>,
        params: &HashMap<String, ParamValue>,
        backward: bool,
    ) -> Result<(CallerTable, Option<CallerRanges>)> {
        self.require_tensor_mask()?;
        let shape = self.options().shape;
        if mask.shape != shape {
            return Err(stale(format!(
                "it was made for shape {:?}, this binding's is {shape:?}",
                mask.shape
            )));
        }
        // (borrowed, not cloned: a clone of the plan copies the program and its IR text,
        // at every call of the Python package with a block mask)
        let plan = self.plan();
        let p = self.variant().program();
        let reads = plan.mask_reads();
        if reads.tensors.len() != mask.tensors.len() || reads.params.len() != mask.params.len() {
            return Err(stale(
                "it records other captures than this attention's mask reads".into(),
            ));
        }
        for (t, (name, ptr, dims)) in reads.tensors.iter().zip(&mask.tensors) {
            let want = &p.tensors[*t].name;
            let now = tensors.get(want);
            // a recorded address of 0 is not compared (the Python package checks the
            // tensor's identity and version itself)
            let same = now.is_some_and(|x| &x.dims == dims && (*ptr == 0 || x.ptr == *ptr));
            if name != want || !same {
                return Err(stale(format!(
                    "captured tensor `{want}` is not the tensor it was made from (another tensor, or other dims)"
                )));
            }
        }
        let bound = crate::api::bind_params(self.variant(), params)?;
        for (i, (name, bits)) in reads.params.iter().zip(&mask.params) {
            let now = policy::scalar_bits(&bound[*i]);
            if *name != p.params[*i].name || now != *bits {
                return Err(stale(format!(
                    "param `{}` differs from its value when the mask was made",
                    p.params[*i].name
                )));
            }
        }
        let m = plan.mask();
        let tiles = self.forward_tiles()?;
        let (strides, n_maps) = map_layout(&shape, m.uses_b, m.uses_h);
        let nq = shape.lq.div_ceil(tiles.0 as usize);
        if mask.tiles != tiles
            || mask.strides != strides
            || mask.row_start.1 != 2 * n_maps * nq
            || mask.runs.1 == 0
            || !mask.runs.1.is_multiple_of(3)
        {
            return Err(stale(format!(
                "its forward table does not fit this binding's kernel (tiles {:?}, strides {:?}, {} row words; the kernel's: tiles {tiles:?}, strides {strides:?}, {} row words)",
                mask.tiles,
                mask.strides,
                mask.row_start.1,
                2 * n_maps * nq
            )));
        }
        // (document tiles: for the q tile height of this binding's document-tiled kernel,
        // at most one tile per row; a binding that runs none, or a call without rows, reads
        // the table)
        let doc_q_block = self.exec().cuda().and_then(|c| c.doc_q_block());
        let doc_tiles = match (mask.documents, doc_q_block) {
            (Some(_), Some(_)) if shape.b * shape.lq == 0 => None,
            (Some((qb, (ptr, words))), Some(want)) => {
                let n = words / 4;
                if qb != want || !words.is_multiple_of(4) || n == 0 || n > shape.b * shape.lq {
                    return Err(stale(format!(
                        "its document tiles ({words} words for q tiles of {qb} rows) do not fit this binding's kernel (q tiles of {want} rows, at most {} tiles)",
                        shape.b * shape.lq
                    )));
                }
                Some((ptr, n as u32))
            }
            _ => None,
        };
        let table = CallerTable {
            row_start: mask.row_start.0,
            runs: mask.runs.0,
            strides,
            doc_tiles,
        };
        if !backward {
            return Ok((table, None));
        }
        let Some((bt, kv, kv_strides, q, q_strides)) = mask.backward else {
            return Err(Error::Usage(
                "this block mask was made without the backward's ranges (make it with backward)"
                    .into(),
            ));
        };
        let kernels = self.cuda_backward_kernels(true)?;
        let ko = kernels.options();
        let nq = shape.lq.div_ceil(bt.0 as usize);
        let nkv = shape.lkv.div_ceil(bt.1 as usize);
        let nb = if kv_strides.0 != 0 { shape.b } else { 1 };
        let nh = if kv_strides.1 != 0 { shape.hkv } else { 1 };
        if bt != (ko.q_block, ko.kv_block)
            || q_strides != strides
            || q.1 != 4 * n_maps * nq
            || kv.1 != 4 * nb * nh * nkv
        {
            return Err(stale(
                "its backward ranges do not fit this binding's backward kernels".into(),
            ));
        }
        // (the backward's document kv tiles: for the tiles of this binding's document
        // variant, at most one entry per key, a range quadruple per (batch, q block))
        let docs = match mask.backward_documents {
            Some(_) if shape.b * shape.lkv == 0 => None,
            Some((tiles, (tp, tw), (rp, rw))) => {
                let Some(k) = self.cuda_doc_backward_kernels(true)? else {
                    return Err(stale(
                        "it carries the backward's document kv tiles, which this binding's backward kernels do not run".into(),
                    ));
                };
                let ko = k.options();
                let n = tw / 4;
                let nq = shape.lq.div_ceil(ko.q_block as usize);
                if tiles != (ko.q_block, ko.kv_block)
                    || !tw.is_multiple_of(4)
                    || n == 0
                    || n > shape.b * shape.lkv
                    || rw != 4 * shape.b * nq
                {
                    return Err(stale(format!(
                        "its backward document kv tiles ({tw} words, {rw} range words, tiles {tiles:?}) do not fit this binding's kernels (tiles {:?})",
                        (ko.q_block, ko.kv_block)
                    )));
                }
                Some(CallerDocs {
                    tiles: tp,
                    n: n as u32,
                    ranges: rp,
                })
            }
            None => None,
        };
        Ok((
            table,
            Some(CallerRanges {
                kv: kv.0,
                q: q.0,
                strides: [kv_strides, q_strides],
                docs,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::map_layout;
    use crate::{Captures, Compiled, Shape, Tensor};

    /// Block masks are made for CUDA bindings of masks over captured tensors only.
    #[test]
    fn block_masks_need_a_cuda_binding() {
        let c = Compiled::from_source(
            "t.attn",
            "tensor doc: i32[B, KV];\nmask m(b, h, q, kv) { doc[b, q] == doc[b, kv] }\nattention a { mask = m; }",
        )
        .unwrap();
        let shape = Shape {
            b: 1,
            hq: 2,
            hkv: 2,
            lq: 16,
            lkv: 16,
            d: 16,
            dv: 16,
        };
        let mut bound = c
            .attention("a")
            .unwrap()
            .bind(crate::BindOptions::new(
                crate::Backend::Cpu,
                shape,
                crate::DType::F32,
            ))
            .unwrap();
        let caps = Captures::default().tensor("doc", Tensor::from_i32(vec![1, 16], &[0; 16]));
        let e = bound.block_mask_tables(&caps, true).unwrap_err();
        assert!(e.to_string().contains("cpu backend"), "{e}");
    }

    /// The map layout a call is checked against is the one `plan.block_maps` makes (the
    /// tables of `block_mask_tables`), for masks reading b, h, both or neither.
    #[test]
    fn map_layout_is_the_block_maps_layout() {
        let shape = Shape {
            b: 3,
            hq: 4,
            hkv: 2,
            lq: 130,
            lkv: 130,
            d: 64,
            dv: 64,
        };
        for (mask, uses_b, uses_h) in [
            ("q >= kv && doc[b, q] == doc[b, kv]", true, false),
            ("hd[h, q] == hd[h, kv]", false, true),
            (
                "doc[b, q] == doc[b, kv] && hd[h, q] <= hd[h, kv]",
                true,
                true,
            ),
            ("hd[0, q] == hd[0, kv]", false, false),
        ] {
            let src = format!(
                "tensor doc: i32[B, KV];\ntensor hd: i32[H, KV];\nmask m(b, h, q, kv) {{ {mask} }}\nattention a {{ mask = m; }}"
            );
            let c = Compiled::from_source("t.attn", &src).unwrap();
            let v = c.attention("a").unwrap();
            let ids = |n: usize, rows: usize| -> Vec<i32> {
                (0..rows * n).map(|i| ((i % n) / 40) as i32).collect()
            };
            let mut caps = Captures::default();
            for t in &v.program().tensors {
                let rows = if t.name == "doc" { 3 } else { 4 };
                caps = caps.tensor(&t.name, Tensor::from_i32(vec![rows, 130], &ids(130, rows)));
            }
            let bind = crate::api::bind_captures(&v, &shape, &caps).unwrap();
            let plan = attnc_compiler::plan::Plan::new(v.program());
            assert_eq!(
                (plan.mask().uses_b, plan.mask().uses_h),
                (uses_b, uses_h),
                "{mask}"
            );
            let maps = plan.block_maps(&shape, 64, 64, &bind).unwrap();
            let (strides, n) = map_layout(&shape, uses_b, uses_h);
            assert_eq!(
                strides,
                (maps.b_stride as i32, maps.h_stride as i32),
                "{mask}"
            );
            assert_eq!(maps.maps.len(), n, "{mask}");
            assert_eq!(
                maps.flatten().0.len(),
                2 * n * 130usize.div_ceil(64),
                "{mask}"
            );
        }
    }
}
