//! Forward over caller-owned buffers: the entry points of bindings to other runtimes
//! (the Python package), which hand attnc memory they own instead of host [`Tensor`]s.
//!
//! In: a [`Bound`], q/k/v as slices in the layouts of `attnc_compiler::shape`
//! (`[B, H, L, D]`, contiguous), captures by name, and `o`/`lse` buffers the caller
//! allocated. Out: `o` and `lse` written in place, or an [`Error`]; nothing is copied on
//! the way in or out (the CPU kernel reads the caller's q/k/v and writes its o/lse).
//!
//! [`Tensor`]: crate::Tensor

use crate::api::{Backend, Bound, Captures};
use crate::error::{Error, Result};
use crate::tensor::DType;

impl Bound {
    /// CPU backend, f32: runs attention on the caller's `q`, `k`, `v` and writes `o`
    /// (`[B, Hq, Lq, Dv]`) and `lse` (`[B, Hq, Lq]`, natural log, `-inf` for fully
    /// masked rows). Every length is checked against the bound shape.
    pub fn forward_f32_into(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        captures: &Captures,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        let opts = self.options();
        if opts.backend != Backend::Cpu {
            return Err(Error::Usage(format!(
                "forward_f32_into runs CPU bindings; this one is bound to the {} backend",
                opts.backend.name()
            )));
        }
        if opts.dtype != DType::F32 {
            return Err(Error::InputDType {
                which: "q, k, v".into(),
                expected: opts.dtype.name().into(),
                got: DType::F32,
            });
        }
        let s = opts.shape;
        for (which, expected, got) in [
            ("q", s.q_len(), q.len()),
            ("k", s.k_len(), k.len()),
            ("v", s.v_len(), v.len()),
            ("o", s.o_len(), o.len()),
            ("lse", s.lse_len(), lse.len()),
        ] {
            if expected != got {
                return Err(Error::Usage(format!(
                    "buffer `{which}` holds {got} elements, the bound shape needs {expected}"
                )));
            }
        }
        let bindings = self.bindings(captures)?;
        let scale = self.scale();
        let (exec, plan, variant, opts) = self.parts_mut();
        let Some(cpu) = exec.cpu_mut() else {
            return Err(Error::Usage(format!(
                "this binding runs on the {} backend, not on the CPU",
                opts.backend.name()
            )));
        };
        cpu.forward_into(plan, opts, scale, q, k, v, &bindings, o, lse)
            .map_err(|e| variant.render(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backend, BindOptions, Captures, Compiled, DType, ParamValue, Shape, Tensor};

    /// The caller-buffer path gives the same bits as the host-tensor path.
    #[test]
    fn into_matches_forward() {
        let src = "param w: i32;\nmask m(b, h, q, kv) { q >= kv && q - kv < w }\nattention a { mask = m; }";
        let c = Compiled::from_source("t.attn", src).unwrap();
        let shape = Shape {
            b: 2,
            hq: 4,
            hkv: 2,
            lq: 37,
            lkv: 37,
            d: 16,
            dv: 8,
        };
        let mut bound = c
            .attention("a")
            .unwrap()
            .bind(BindOptions::new(Backend::Cpu, shape, DType::F32))
            .unwrap();
        let fill = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let (q, k, v) = (
            fill(shape.q_len(), 1),
            fill(shape.k_len(), 2),
            fill(shape.v_len(), 3),
        );
        let caps = Captures::default().param("w", ParamValue::I32(5));
        let out = bound
            .forward(
                &Tensor::from_f32(vec![2, 4, 37, 16], &q),
                &Tensor::from_f32(vec![2, 2, 37, 16], &k),
                &Tensor::from_f32(vec![2, 2, 37, 8], &v),
                &caps,
            )
            .unwrap();
        let mut o = vec![0f32; shape.o_len()];
        let mut lse = vec![0f32; shape.lse_len()];
        bound
            .forward_f32_into(&q, &k, &v, &caps, &mut o, &mut lse)
            .unwrap();
        assert_eq!(out.o.to_f32(), o);
        assert_eq!(out.lse.to_f32(), lse);
        // a wrong length is an error, not an out-of-bounds access
        let err = bound.forward_f32_into(&q[1..], &k, &v, &caps, &mut o, &mut lse);
        assert!(err.is_err());
    }
}
