//! A launch's values by name: device buffers, scalars and grid extents, keyed by the
//! names a [`KernelSpec`] uses ([`KernelParam`], [`GridDim`]).
//!
//! In: buffers and scalars set by whoever owns them (`DeviceProblem::args` for an
//! attention call; a kernel kind adds its own names). Out: the argument list of a spec, in
//! its parameter order ([`LaunchArgs::bind`]), and its grid ([`LaunchArgs::grid`]); a
//! missing name is an error naming it, never a wrong argument.

use super::CudaError;
use attnc_compiler::backend::llvm::{GridDim, KernelParam, KernelSpec};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device pointer (from a live [`CudaSlice`] of this device).
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    /// A TMA tensor map, passed by value (made by `tma.rs`).
    Map(TensorMap),
}

/// A `CUtensorMap` as a kernel argument: 128 opaque bytes, 64-byte aligned (the kernel
/// declares each map `.param .align 64 .b8 [128]`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorMap(pub [u64; 16]);

// SAFETY: plain bytes with the size and alignment of the kernel's parameter.
unsafe impl cudarc::driver::DeviceRepr for TensorMap {}

/// Named launch values. Later settings of a name replace earlier ones.
#[derive(Clone, Debug, Default)]
pub struct LaunchArgs {
    values: HashMap<KernelParam, Arg>,
    extents: HashMap<GridDim, u32>,
    /// A grid computed by the caller, replacing the spec's rule.
    grid: Option<(u32, u32, u32)>,
    /// The rows between consecutive (batch, kv head) slices of K and V when it is not
    /// `Lkv` (a contiguous cache's `Lkv_max`: chunked prefill's runs read K/V in place);
    /// only the tensor maps of the warp-specialized forward honour it (`tma.rs`).
    kv_pitch: Option<u64>,
}

impl LaunchArgs {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets a buffer parameter to `buf` (which must stay alive until the launch has run).
    pub fn buffer<T>(&mut self, p: KernelParam, buf: &CudaSlice<T>, stream: &CudaStream) {
        self.values.insert(p, Arg::Ptr(buf.device_ptr(stream).0));
    }
    /// Sets a scalar parameter.
    pub fn scalar(&mut self, p: KernelParam, v: Arg) {
        self.values.insert(p, v);
    }
    pub fn i32(&mut self, p: KernelParam, v: i32) {
        self.scalar(p, Arg::I32(v));
    }
    pub fn i64(&mut self, p: KernelParam, v: i64) {
        self.scalar(p, Arg::I64(v));
    }
    pub fn f32(&mut self, p: KernelParam, v: f32) {
        self.scalar(p, Arg::F32(v));
    }
    /// Sets the document-tiled forward's tile list (`PtxOptions::doc_tiles`): `n` tiles at
    /// device address `list`, for each of `heads` query heads. One CTA a tile walks the
    /// list on the grid's x axis; persistent CTAs walk `NumQBlocks x Hq x Batch` tiles, the
    /// list's entries for every head (`NumQBlocks` = `n`, `Batch` = 1).
    pub fn doc_tiles(&mut self, list: u64, n: u32, heads: usize) {
        let n = if heads == 0 { 0 } else { n };
        self.scalar(KernelParam::DocTiles, Arg::Ptr(list));
        self.extent(GridDim::DocTiles, n);
        self.i32(KernelParam::NumQBlocks, n as i32);
        self.i32(KernelParam::Batch, 1);
        self.extent(GridDim::QBlocks, n);
    }
    /// Sets the size of a grid axis.
    pub fn extent(&mut self, d: GridDim, n: u32) {
        self.extents.insert(d, n);
    }
    /// Sets the whole grid (instead of sizing it by the spec's rule).
    pub fn set_grid(&mut self, grid: (u32, u32, u32)) {
        self.grid = Some(grid);
    }
    /// Sets K's and V's slice pitch in rows (see the field).
    pub fn set_kv_pitch(&mut self, rows: u64) {
        self.kv_pitch = Some(rows);
    }
    /// K's and V's slice pitch in rows, if set.
    pub fn kv_pitch(&self) -> Option<u64> {
        self.kv_pitch
    }
    /// Every value of `other` replaces this one's.
    pub fn merge(&mut self, other: &LaunchArgs) {
        self.values
            .extend(other.values.iter().map(|(k, v)| (*k, *v)));
        self.extents
            .extend(other.extents.iter().map(|(k, v)| (*k, *v)));
        if other.kv_pitch.is_some() {
            self.kv_pitch = other.kv_pitch;
        }
    }
    /// Whether every value is a scalar (no buffer).
    pub fn scalars_only(&self) -> bool {
        self.values.values().all(|v| !matches!(v, Arg::Ptr(_)))
    }
    /// The value of `p`, if set.
    pub fn value(&self, p: KernelParam) -> Option<Arg> {
        self.values.get(&p).copied()
    }
    /// The size of grid axis `d`, if set.
    pub fn extent_of(&self, d: GridDim) -> Option<u32> {
        self.extents.get(&d).copied()
    }
    /// The names set.
    pub fn names(&self) -> impl Iterator<Item = &KernelParam> {
        self.values.keys()
    }

    /// The arguments of `spec`, in its parameter order.
    pub fn bind(&self, spec: &KernelSpec) -> Result<Vec<Arg>, CudaError> {
        spec.params
            .iter()
            .map(|p| {
                self.values.get(p).copied().ok_or_else(|| {
                    CudaError::Mismatch(format!(
                        "kernel {} ({}): no value for its parameter {p:?}",
                        spec.entry, spec.kind
                    ))
                })
            })
            .collect()
    }

    /// The grid of `spec` (a persistent axis: one CTA per tile, at most `u32::MAX`).
    pub fn grid(&self, spec: &KernelSpec) -> Result<(u32, u32, u32), CudaError> {
        self.grid_on(spec, u32::MAX)
    }

    /// The grid of `spec` on a device of `sms` multiprocessors: a
    /// [`GridDim::Persistent`] axis has `min(QBlocks x Heads x Batches, sms)` CTAs, a
    /// [`GridDim::KvPersistent`] one `min(KvBlocks x KvHeads x Batches, sms)` (with a
    /// [`GridDim::DocTiles`] extent, the backward on document kv tiles: `min(DocTiles x
    /// KvHeads, sms)`).
    pub fn grid_on(&self, spec: &KernelSpec, sms: u32) -> Result<(u32, u32, u32), CudaError> {
        if let Some(g) = self.grid {
            return Ok(g);
        }
        let extent = |d: GridDim| {
            self.extents.get(&d).copied().ok_or_else(|| {
                CudaError::Mismatch(format!(
                    "kernel {} ({}): no size for its grid axis {d}",
                    spec.entry, spec.kind
                ))
            })
        };
        let dim = |d: GridDim| match d {
            GridDim::One => Ok(1),
            GridDim::Persistent => {
                let tiles = extent(GridDim::QBlocks)? as u64
                    * extent(GridDim::Heads)? as u64
                    * extent(GridDim::Batches)? as u64;
                Ok(tiles.min(sms as u64) as u32)
            }
            GridDim::KvPersistent => {
                // (the backward on document kv tiles: the list's entries per kv head)
                let tiles = match self.extents.get(&GridDim::DocTiles) {
                    Some(&n) => n as u64 * extent(GridDim::KvHeads)? as u64,
                    None => {
                        extent(GridDim::KvBlocks)? as u64
                            * extent(GridDim::KvHeads)? as u64
                            * extent(GridDim::Batches)? as u64
                    }
                };
                Ok(tiles.min(sms as u64) as u32)
            }
            d => extent(d),
        };
        let [x, y, z] = spec.grid;
        Ok((dim(x)?, dim(y)?, dim(z)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions};
    use attnc_compiler::plan::Plan;

    #[test]
    fn binds_in_spec_order_and_names_what_is_missing() {
        let p = attnc_compiler::compile_source(
            "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }",
        )
        .unwrap()
        .programs
        .remove(0);
        let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
        let spec = attnc_compiler::backend::llvm::spec(&Plan::new(&p), KernelKind::Forward, &opts)
            .unwrap();
        let mut a = LaunchArgs::new();
        for (i, p) in spec.params.iter().enumerate() {
            a.i64(*p, i as i64);
        }
        let bound = a.bind(&spec).unwrap();
        assert_eq!(bound.len(), spec.params.len());
        assert!(
            bound
                .iter()
                .enumerate()
                .all(|(i, x)| *x == Arg::I64(i as i64))
        );
        let mut b = LaunchArgs::new();
        b.i32(KernelParam::Lq, 3);
        let e = b.bind(&spec).unwrap_err().to_string();
        assert!(e.contains("Q") && e.contains("attnc_a"), "{e}");
        assert!(
            b.grid(&spec)
                .unwrap_err()
                .to_string()
                .contains("NumQBlocks")
        );
        b.extent(GridDim::QBlocks, 2);
        b.extent(GridDim::Heads, 3);
        b.extent(GridDim::Batches, 4);
        assert_eq!(b.grid(&spec).unwrap(), (2, 3, 4));
        assert!(b.scalars_only());
        // persistent CTAs: min(tiles, SMs) on x
        let pers = PtxOptions {
            persistent: true,
            ..PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16)
        };
        let spec = attnc_compiler::backend::llvm::spec(&Plan::new(&p), KernelKind::Forward, &pers)
            .unwrap();
        assert_eq!(b.grid_on(&spec, 132).unwrap(), (24, 1, 1));
        assert_eq!(b.grid_on(&spec, 5).unwrap(), (5, 1, 1));
        assert_eq!(b.grid(&spec).unwrap(), (24, 1, 1));
        assert!(spec.params.contains(&KernelParam::Batch));
    }
}
