//! CUDA decoding, interim path (correct, not fast): per sequence, the live rows against
//! the kv range its mask can reach, gathered on the host through the page table (raw
//! elements, any dtype) and run by the prefill kernel of the position-offset program
//! (`attnc_compiler::decode::offset_program`; the mask and score see logical positions
//! through the `__b0/__q0/__kv0` params). One launch per sequence, no split-KV and no
//! device-resident cache: the split-KV decode kernel of issue 12 is not written yet.
//!
//! In: the checked decode shape, host tensors, captures of the original program.
//! Out: `O` and `LSE` as f32 in the decode layouts.

use crate::api::{Backend, BindOptions, Bound, Captures, ParamValue, Variant};
use crate::error::Result;
use crate::tensor::Tensor;
use attnc_compiler::decode::{DecodeShape, OFFSET_PARAMS, live_rows};
use attnc_compiler::shape::Shape;
use std::collections::HashMap;

pub(crate) struct CudaState {
    /// The position-offset program, as a variant of the same source.
    variant: Variant,
    /// One binding per (live rows, gathered length), made on first use (the JIT's
    /// memory cache makes every binding after the first cheap).
    bound: HashMap<(usize, usize), Bound>,
}

impl CudaState {
    pub(crate) fn new(variant: Variant) -> Self {
        CudaState {
            variant,
            bound: HashMap::new(),
        }
    }

    /// Runs one call. `spans[i]` is the reachable range of the `i`-th sequence with live
    /// rows that reach a key (`cpu::sequences`), `live` their batch indices.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        opts: &BindOptions,
        scale: f32,
        shape: &DecodeShape,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        page_table: &[i32],
        seq_lens: &[i32],
        live: &[(usize, (usize, usize))],
        captures: &Captures,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = shape;
        let esize = q.dtype().size();
        let mut o = vec![0f32; s.o_len()];
        let mut lse = vec![f32::NEG_INFINITY; s.lse_len()];
        for &(b, (lo, hi)) in live {
            let n = seq_lens[b] as usize;
            let (first, pos) = live_rows(s.lq, n);
            let rows = s.lq - first;
            let len = hi - lo;
            // q rows first.. of every head, K/V positions lo..hi of every kv head
            let mut qb = Vec::with_capacity(s.hq * rows * s.d * esize);
            for h in 0..s.hq {
                let at = ((b * s.hq + h) * s.lq + first) * s.d * esize;
                qb.extend_from_slice(&q.bytes()[at..at + rows * s.d * esize]);
            }
            let gather = |t: &Tensor, d: usize| {
                let mut out = Vec::with_capacity(s.hkv * len * d * esize);
                for hk in 0..s.hkv {
                    for p in lo..hi {
                        let at = s.row_offset(page_table, b, hk, p, d) * esize;
                        out.extend_from_slice(&t.bytes()[at..at + d * esize]);
                    }
                }
                out
            };
            let one = Shape {
                b: 1,
                hq: s.hq,
                hkv: s.hkv,
                lq: rows,
                lkv: len,
                d: s.d,
                dv: s.dv,
            };
            let tensor = |dims: Vec<usize>, bytes: Vec<u8>| {
                Tensor::from_bytes(dims, q.dtype(), bytes).expect("sizes computed from the shape")
            };
            let qt = tensor(vec![1, s.hq, rows, s.d], qb);
            let kt = tensor(vec![1, s.hkv, len, s.d], gather(k, s.d));
            let vt = tensor(vec![1, s.hkv, len, s.dv], gather(v, s.dv));
            let mut caps = captures.clone();
            for (name, x) in OFFSET_PARAMS.iter().zip([b, pos, lo]) {
                caps.params
                    .insert(name.to_string(), ParamValue::I32(x as i32));
            }
            let bound = match self.bound.entry((rows, len)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut o = BindOptions::new(Backend::Cuda, one, opts.dtype);
                    o.scale = Some(scale);
                    o.checked = opts.checked;
                    o.gpu_block_tables = opts.gpu_block_tables;
                    o.jit_tiers = opts.jit_tiers;
                    e.insert(self.variant.bind(o)?)
                }
            };
            let out = bound.forward(&qt, &kt, &vt, &caps)?;
            let (po, pl) = (out.o.to_f32(), out.lse.to_f32());
            attnc_compiler::decode::scatter_rows(s, b, first, &po, &pl, &mut o, &mut lse);
        }
        Ok((o, lse))
    }
}
