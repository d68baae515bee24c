//! TMA tensor maps of the warp-specialized forward (`PtxOptions::ws`): the `TmaQ`,
//! `TmaK` and `TmaV` parameters made from a launch's Q/K/V pointers and shape (with
//! `PtxOptions::o_tma` also `TmaO` from O: boxes of 64 x 64, a TMA store's, rows past `L`
//! not written); and of the fused backward with `PtxOptions::bwd_tma` (`TmaQ`, `TmaDo` from Q and dO).
//!
//! In: a [`KernelSpec`] and the launch's other values ([`LaunchArgs`]: the Q, K, V
//! pointers, `Lq`, `Lkv`, `Hq`, `Hkv` and the `Batches` grid extent). Out: the same
//! values with the three maps added ([`with_tensor_maps`]); the paged decode kernel's
//! `TmaK` / `TmaV` (`decode_mma::COPY_TMA`: see `encode_paged`). Each map views its tensor
//! (`[B, H, L, D]`, contiguous, 16-bit elements) as the 3-D tensor `{D, L, B*H}` (D
//! innermost) with boxes of 64 columns by the kernel's `q_block` (Q) or `kv_block` (K,
//! V) rows and the 128-byte swizzle, which is the layout the kernel's wgmma descriptors
//! read; rows past `L` in a box are zero-filled and read nothing.

use super::CudaError;
use super::args::{Arg, LaunchArgs, TensorMap};
use attnc_compiler::backend::KernelKind;
use attnc_compiler::backend::llvm::{GridDim, KernelParam, KernelSpec};
use cudarc::driver::sys;

/// Whether `spec` takes tensor maps (the forward's and backward's `TmaQ`; the paged
/// decode kernel's `TmaK` / `TmaV` with `decode_mma::COPY_TMA`).
pub fn needs_maps(spec: &KernelSpec) -> bool {
    spec.params.contains(&KernelParam::TmaQ) || spec.params.contains(&KernelParam::TmaK)
}

/// The paged decode kernel's map (`decode_mma::COPY_TMA`): the cache `[pages, P, Hkv,
/// D]` at `ptr` as the 3-D tensor `{D, Hkv, pages x P}` (D innermost, 16-bit elements),
/// boxes of 64 columns x 1 kv head x `min(P, 64)` rows (one page's rows of one head),
/// 128-byte swizzle: the slabs the kernel's `ldmatrix` reads.
fn encode_paged(
    ptr: u64,
    rows: u64,
    hkv: u64,
    d: u64,
    box_rows: u32,
) -> Result<TensorMap, CudaError> {
    if rows == 0 || hkv == 0 {
        // an empty cache: no tile is ever copied (the driver refuses a zero extent)
        return Ok(TensorMap([0; 16]));
    }
    encode_3d(
        ptr,
        [d, hkv, rows],
        [d * 2, hkv * d * 2],
        [64, 1, box_rows],
        || format!("a paged cache of {rows} positions x {hkv} heads x {d}"),
    )
}

/// The launch values a map is made from, with the error naming what is missing.
struct MapArgs<'a> {
    args: &'a LaunchArgs,
    spec: &'a KernelSpec,
}

impl MapArgs<'_> {
    fn missing(&self, what: &str) -> CudaError {
        CudaError::Mismatch(format!(
            "kernel {}: its tensor maps need {what}",
            self.spec.entry
        ))
    }

    /// The pointer value of `p`.
    fn ptr(&self, p: KernelParam) -> Result<u64, CudaError> {
        match self.args.value(p) {
            Some(Arg::Ptr(x)) => Ok(x),
            _ => Err(self.missing(&format!("{p:?}"))),
        }
    }

    /// The non-negative i32 value of `p`.
    fn int(&self, p: KernelParam) -> Result<u64, CudaError> {
        match self.args.value(p) {
            Some(Arg::I32(x)) if x >= 0 => Ok(x as u64),
            _ => Err(self.missing(&format!("{p:?}"))),
        }
    }
}

/// [`with_tensor_maps`] of the paged decode kernel: `TmaK` / `TmaV` from the K / V
/// cache pointers, `NumPages`, `PageShift` and `Hkv`.
fn with_decode_maps(args: &LaunchArgs, spec: &KernelSpec) -> Result<LaunchArgs, CudaError> {
    let a = MapArgs { args, spec };
    let missing = |what: &str| a.missing(what);
    let ptr = |p: KernelParam| a.ptr(p);
    let int = |p: KernelParam| a.int(p);
    let (pages, shift, hkv) = (
        int(KernelParam::NumPages)?,
        int(KernelParam::PageShift)?,
        int(KernelParam::Hkv)?,
    );
    if shift > 30 {
        return Err(missing("a page shift below 31"));
    }
    let rows = pages << shift;
    let box_rows = (1u32 << shift).min(64);
    let d = spec.options.d as u64;
    let mut out = args.clone();
    for (m, src) in [
        (KernelParam::TmaK, KernelParam::K),
        (KernelParam::TmaV, KernelParam::V),
    ] {
        out.scalar(
            m,
            Arg::Map(encode_paged(ptr(src)?, rows, hkv, d, box_rows)?),
        );
    }
    Ok(out)
}

/// The map of `[slices, rows, d]` 16-bit elements at `ptr`, boxes of 64 x `box_rows`.
fn encode(ptr: u64, slices: u64, rows: u64, d: u64, box_rows: u32) -> Result<TensorMap, CudaError> {
    encode_pitched(ptr, slices, rows, rows, d, box_rows)
}

/// [`encode`] of slices `pitch` rows apart (`pitch >= rows`): the first `rows` rows of
/// each slice (rows past them read as zeros, as past the end of a tensor).
fn encode_pitched(
    ptr: u64,
    slices: u64,
    rows: u64,
    pitch: u64,
    d: u64,
    box_rows: u32,
) -> Result<TensorMap, CudaError> {
    if rows == 0 || slices == 0 {
        // an empty tensor (Lkv = 0: every row fully masked) has no box to load, and the
        // kernel issues no copy for a row without kv blocks (Q's included); the driver
        // refuses a zero extent, so the map stays zero
        return Ok(TensorMap([0; 16]));
    }
    encode_3d(
        ptr,
        [d, rows, slices],
        [d * 2, pitch.max(rows) * d * 2],
        [64, box_rows, 1],
        || format!("a [{slices}, {rows}, {d}] tensor (slices {pitch} rows apart)"),
    )
}

/// The rank-3 tiled map of 16-bit elements at `ptr` (128-byte swizzle, 256-byte L2
/// promotion, no interleave, no fill): extents `dims` (innermost first), byte strides of
/// the outer two dimensions, box extents `boxes`; `what` names the tensor in the error.
fn encode_3d(
    ptr: u64,
    dims: [u64; 3],
    strides: [u64; 2],
    boxes: [u32; 3],
    what: impl FnOnce() -> String,
) -> Result<TensorMap, CudaError> {
    let elem = [1u32, 1, 1];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer argument points at a live local of the rank (3) the call is
    // told; `ptr` is only recorded in the map (the kernel reads through it).
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT16,
            3,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(CudaError::Driver(format!(
            "cuTensorMapEncodeTiled ({r:?}) for {} at {ptr:#x} (TMA needs a 16-byte-aligned base)",
            what()
        )));
    }
    Ok(TensorMap(map.opaque))
}

/// `args` with the tensor maps `spec` takes (`TmaQ`, `TmaK`, `TmaV`, `TmaDo`, `TmaO`) made
/// from its Q/K/V/dO/O pointers and shape.
pub fn with_tensor_maps(args: &LaunchArgs, spec: &KernelSpec) -> Result<LaunchArgs, CudaError> {
    if matches!(
        spec.kind,
        KernelKind::DecodeMma | KernelKind::DecodeMmaFused
    ) {
        return with_decode_maps(args, spec);
    }
    let a = MapArgs { args, spec };
    let missing = |what: &str| a.missing(what);
    let ptr = |p: KernelParam| a.ptr(p);
    let int = |p: KernelParam| a.int(p);
    // the forward on a paged cache (`KvCache::Paged`): K and V as `{D, Hkv, pages x P}`,
    // boxes of one head's `min(P, kv tile)` rows (P a power of two from 16 rows: the
    // kernel's boxes per tile, each a whole number of 1024-byte swizzle atoms)
    let paged = if spec.params.contains(&KernelParam::PageTable) {
        let (pages, shift) = (int(KernelParam::NumPages)?, int(KernelParam::PageShift)?);
        if !(4..=30).contains(&shift) {
            return Err(missing(&format!(
                "pages of 16 to 2^30 rows (page shift {shift})"
            )));
        }
        Some((pages << shift, (1u32 << shift).min(spec.kv_block)))
    } else {
        None
    };
    let b = args
        .extent_of(GridDim::Batches)
        .ok_or_else(|| missing("the batch extent"))? as u64;
    let (lq, lkv, hq, hkv) = (
        int(KernelParam::Lq)?,
        int(KernelParam::Lkv)?,
        int(KernelParam::Hq)?,
        int(KernelParam::Hkv)?,
    );
    let o = &spec.options;
    let (d, dv) = (o.d as u64, o.dv as u64);
    // K's and V's slices `pitch` rows apart (a cache's Lkv_max) or packed
    let pitch = args.kv_pitch().unwrap_or(lkv);
    if pitch < lkv {
        return Err(missing(&format!(
            "a kv pitch of at least Lkv = {lkv} rows (got {pitch})"
        )));
    }
    let mut out = args.clone();
    // the maps this kernel takes (the forward: Q, K, V and with `o_tma` O; the fused
    // backward: Q, dO)
    for &p in &spec.params {
        let m = match p {
            KernelParam::TmaQ => encode(ptr(KernelParam::Q)?, b * hq, lq, d, spec.q_block)?,
            KernelParam::TmaK | KernelParam::TmaV => {
                let (src, w) = if p == KernelParam::TmaK {
                    (ptr(KernelParam::K)?, d)
                } else {
                    (ptr(KernelParam::V)?, dv)
                };
                match paged {
                    Some((rows, box_rows)) => encode_paged(src, rows, hkv, w, box_rows)?,
                    None => encode_pitched(src, b * hkv, lkv, pitch, w, spec.kv_block)?,
                }
            }
            KernelParam::TmaDo => encode(ptr(KernelParam::DOut)?, b * hq, lq, dv, spec.q_block)?,
            // (`PtxOptions::o_tma`: each consumer warpgroup stores its 64 rows)
            KernelParam::TmaO => encode(ptr(KernelParam::O)?, b * hq, lq, dv, 64)?,
            _ => continue,
        };
        out.scalar(p, Arg::Map(m));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnc_compiler::backend::KernelKind;
    use attnc_compiler::backend::llvm::{Arch, InputType, PtxOptions};
    use attnc_compiler::plan::Plan;

    fn spec(opts: &PtxOptions) -> KernelSpec {
        let p = attnc_compiler::compile_source(
            "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }",
        )
        .unwrap()
        .programs
        .remove(0);
        attnc_compiler::backend::llvm::spec(&Plan::new(&p), KernelKind::Forward, opts).unwrap()
    }

    /// Which specs take maps, and a launch without the values the maps are made from is
    /// refused by name before the driver is asked (runs without CUDA).
    #[test]
    fn only_warp_specialized_kernels_take_maps_and_missing_values_are_named() {
        let ws = spec(&PtxOptions::new(Arch::Sm90, 128, 128, InputType::Bf16));
        assert!(needs_maps(&ws));
        assert!(!needs_maps(&spec(&PtxOptions::new(
            Arch::Sm90,
            64,
            64,
            InputType::Bf16
        ))));
        let mut a = LaunchArgs::new();
        let e = with_tensor_maps(&a, &ws).unwrap_err().to_string();
        assert!(e.contains("batch extent"), "{e}");
        a.extent(GridDim::Batches, 2);
        for p in [KernelParam::Lq, KernelParam::Lkv, KernelParam::Hq] {
            a.i32(p, 64);
        }
        let e = with_tensor_maps(&a, &ws).unwrap_err().to_string();
        assert!(e.contains("Hkv") && e.contains(&ws.entry), "{e}");
        a.i32(KernelParam::Hkv, -1);
        let e = with_tensor_maps(&a, &ws).unwrap_err().to_string();
        assert!(e.contains("Hkv"), "a negative count is no shape: {e}");
        a.i32(KernelParam::Hkv, 1);
        let e = with_tensor_maps(&a, &ws).unwrap_err().to_string();
        assert!(e.contains("Q"), "{e}");
    }

    /// The fused backward at D128 (TMA producer: `bwd_tma`, the default) takes the maps
    /// of Q and dO; a launch without dO is refused by name (runs without CUDA: Q's map
    /// of an empty tensor is made without the driver).
    #[test]
    fn the_fused_backward_takes_q_and_do_maps() {
        let p = attnc_compiler::compile_source(
            "mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }",
        )
        .unwrap()
        .programs
        .remove(0);
        let plan = Plan::new(&p);
        let bwd = |o: &PtxOptions| {
            attnc_compiler::backend::llvm::spec(&plan, KernelKind::BackwardDkDv, o).unwrap()
        };
        let o = PtxOptions::backward(Arch::Sm90, 128, 128, InputType::Bf16);
        let dkdv = bwd(&o);
        assert!(needs_maps(&dkdv) && dkdv.params.contains(&KernelParam::TmaDo));
        assert!(!dkdv.params.contains(&KernelParam::TmaK));
        assert!(!needs_maps(&bwd(&PtxOptions {
            bwd_tma: false,
            ..o
        })));
        // D64 takes the fused kernel with the maps too (session 9); the two kernels none
        assert!(needs_maps(&bwd(&PtxOptions::backward(
            Arch::Sm90,
            64,
            64,
            InputType::Bf16
        ))));
        assert!(!needs_maps(&bwd(&PtxOptions::backward_separate(
            Arch::Sm90,
            64,
            64,
            InputType::Bf16
        ))));
        let mut a = LaunchArgs::new();
        a.extent(GridDim::Batches, 1);
        // Lq = 0: no rows, the maps stay zero without the driver
        for (k, v) in [
            (KernelParam::Lq, 0),
            (KernelParam::Lkv, 64),
            (KernelParam::Hq, 2),
            (KernelParam::Hkv, 1),
        ] {
            a.i32(k, v);
        }
        a.scalar(KernelParam::Q, Arg::Ptr(0x1000));
        let e = with_tensor_maps(&a, &dkdv).unwrap_err().to_string();
        assert!(e.contains("DOut") && e.contains(&dkdv.entry), "{e}");
        a.scalar(KernelParam::DOut, Arg::Ptr(0x2000));
        let m = with_tensor_maps(&a, &dkdv).unwrap();
        assert!(matches!(m.value(KernelParam::TmaDo), Some(Arg::Map(_))));
        assert!(m.value(KernelParam::TmaK).is_none());
    }
}
