//! Head dims a backend's kernels do not take, run zero-padded: Phi-3's 96, DiT's 72,
//! Stable Diffusion's 80, DeepSeek MLA's 192 with Dv 128 on CUDA, whose kernels take 16
//! (forward), 32, 64, 128 and 256 (`PtxOptions::validate`).
//!
//! In: the caller's [`BindOptions`] (its shape's D and Dv, its backend,
//! `pad_head_dims`). Out: a [`HeadPad`] (the caller's dims and the dim the kernels run
//! at), the kernels' options (the padded shape and the caller's scale), and the tensors
//! of each host-tensor call resized: q, k, v (and o, dO in the backward, the caches in
//! decoding) widened with zero columns, O and the gradients narrowed back.
//!
//! Why it is exact: S = Q·Kᵀ is unchanged by zero columns appended to both; V's zero
//! columns give O zero columns, dropped; in the backward dO's appended columns are
//! zeros, so dP = dO·Vᵀ, D = rowsum(dO ∘ O) and every gradient's first D / Dv columns
//! are the unpadded problem's. The score and mask never see the head dim. The softmax
//! scale stays the caller's (1/√D of the true D unless given).
//!
//! The Python package pads on its own (`python/attnc/__init__.py`, `_cuda_head_dim`,
//! the same dims), because it reads torch tensors in place; caller-buffer entries
//! (`external`) refuse a padded binding: their buffers are the kernels' shape.

use crate::error::{Error, Result};
use crate::options::{Backend, BindOptions};
use crate::tensor::Tensor;

/// The head dims the CUDA kernels take (`attnc_compiler::backend::llvm::HEAD_DIMS`; the
/// backward from 32, and at 256 the other dim 128 or 256). Mirrored by the Python
/// package's `_CUDA_HEAD_DIMS`.
pub const CUDA_HEAD_DIMS: [usize; 5] = {
    let d = attnc_compiler::backend::llvm::HEAD_DIMS;
    [
        d[0] as usize,
        d[1] as usize,
        d[2] as usize,
        d[3] as usize,
        d[4] as usize,
    ]
};

/// Whether the CUDA kernels take head dims `d` and `dv` as they are.
pub fn cuda_takes(d: usize, dv: usize) -> bool {
    CUDA_HEAD_DIMS.contains(&d)
        && CUDA_HEAD_DIMS.contains(&dv)
        && (d.max(dv) < 256 || d.min(dv) >= 128)
}

/// A binding whose kernels run at head dim `to` for a caller's `d` and `dv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadPad {
    /// The caller's head dim of q and k.
    pub d: usize,
    /// The caller's head dim of v and O.
    pub dv: usize,
    /// The head dim of the kernels (both D and Dv).
    pub to: usize,
}

impl HeadPad {
    /// The padding `opts` asks for: `pad_head_dims` when given (an error below D or Dv),
    /// else on CUDA the smallest of [`CUDA_HEAD_DIMS`] at least D and Dv when the
    /// kernels do not take the dims (none above 256: the backend's own error then);
    /// `None` when the kernels run the caller's dims.
    pub fn choose(opts: &BindOptions) -> Result<Option<HeadPad>> {
        let (d, dv) = (opts.shape.d, opts.shape.dv);
        let to = match opts.pad_head_dims {
            Some(to) if to < d.max(dv) => {
                return Err(Error::Usage(format!(
                    "`pad_head_dims` = {to} is below the head dims D={d} Dv={dv}: the kernels' head dim holds both"
                )));
            }
            Some(to) => to,
            None if opts.backend == Backend::Cuda && !cuda_takes(d, dv) => {
                match CUDA_HEAD_DIMS.iter().find(|&&x| x >= d.max(dv)) {
                    Some(&to) => to,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        Ok((to != d || to != dv).then_some(HeadPad { d, dv, to }))
    }

    /// The options the kernels are bound with: the padded shape, and the caller's scale
    /// fixed (the default one of the true D: `Shape::default_scale` would take the
    /// padded one).
    pub fn kernel_options(&self, opts: &BindOptions) -> BindOptions {
        let mut o = opts.clone();
        o.scale = Some(opts.scale.unwrap_or_else(|| opts.shape.default_scale()));
        o.shape.d = self.to;
        o.shape.dv = self.to;
        o.pad_head_dims = None;
        o
    }

    /// A q/k/v/o/dO-like tensor (head dim last) at the kernels' head dim.
    pub fn widen(&self, t: &Tensor) -> Tensor {
        t.resize_last_dim(self.to)
    }

    /// O, dO-like tensors (Dv last) back at the caller's Dv.
    pub fn narrow_v(&self, t: Tensor) -> Tensor {
        self.narrow(t, self.dv)
    }

    /// dQ, dK-like tensors (D last) back at the caller's D.
    pub fn narrow_qk(&self, t: Tensor) -> Tensor {
        self.narrow(t, self.d)
    }

    /// `t` (at the kernels' dim) with its first `n` columns (no copy when that is all).
    fn narrow(&self, t: Tensor, n: usize) -> Tensor {
        if n == self.to {
            t
        } else {
            t.resize_last_dim(n)
        }
    }

    /// The error of a caller-buffer entry (`what`) on a padded binding.
    pub fn caller_buffers_refused(&self, what: &str) -> Error {
        Error::Usage(format!(
            "{what}: this binding runs head dims D={} Dv={} zero-padded to {} for host-tensor calls; caller buffers are read in place, so bind at head dim {} and pass q, k, v (and caches) with zero columns appended (O's first {} columns are the result)",
            self.d, self.dv, self.to, self.to, self.dv
        ))
    }
}
