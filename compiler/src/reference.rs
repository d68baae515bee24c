//! The reference attention: the semantics contract of design.md section 1, computed
//! naively in f64 with the mask and score evaluated by the IR interpreter (in f32, as
//! every backend does). This is the oracle every backend is tested against.
//!
//! In: a [`Program`], a [`Shape`], f32 Q/K/V in the layouts of [`crate::shape`], the
//! scale and [`Bindings`]. Out: `O` (f32) and `LSE` (f32, natural log), or the first
//! out-of-range tensor read.

use crate::interp::{Args, Bindings, EvalError, eval};
use crate::ir::{Program, Scalar};
use crate::shape::Shape;

/// Output of one attention call.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
}

/// Panics unless q, k and v have `shape`'s lengths (a caller's bug): the first check of
/// [`attention`] and of `reference_grad::backward`.
#[track_caller]
pub(crate) fn assert_qkv_lens(shape: &Shape, q: &[f32], k: &[f32], v: &[f32]) {
    assert_eq!(q.len(), shape.q_len(), "q length");
    assert_eq!(k.len(), shape.k_len(), "k length");
    assert_eq!(v.len(), shape.v_len(), "v length");
}

/// One element's raw score `f32(scale · q·k)` (the dot in f64) as the interpreter's
/// arguments for the score, and whether the mask keeps it: the input of the score in the
/// semantics contract, shared by the reference forward and backward (`reference_grad`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn raw_and_kept(
    p: &Program,
    bind: &Bindings,
    scratch: &mut Vec<Scalar>,
    scale: f32,
    qrow: &[f32],
    krow: &[f32],
    [b, h, i, j]: [usize; 4],
) -> Result<(Args, bool), EvalError> {
    let dot: f64 = qrow
        .iter()
        .zip(krow)
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    let args = Args::at((scale as f64 * dot) as f32, [b, h, i, j]);
    let keep = match &p.mask {
        Some(m) => eval(m, p, args, bind, scratch)?.as_bool(),
        None => true,
    };
    Ok((args, keep))
}

pub fn attention(
    p: &Program,
    shape: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    bind: &Bindings,
) -> Result<Output, EvalError> {
    let Shape {
        b: nb,
        hq,
        lq,
        lkv,
        d,
        dv,
        ..
    } = *shape;
    assert_qkv_lens(shape, q, k, v);
    let mut o = vec![0f32; shape.o_len()];
    let mut lse = vec![f32::NEG_INFINITY; shape.lse_len()];
    let mut scratch = Vec::new();
    let mut s = vec![f64::NEG_INFINITY; lkv];
    let mut acc = vec![0f64; dv];
    for b in 0..nb {
        for h in 0..hq {
            let hk = shape.kv_head(h);
            for i in 0..lq {
                let qrow = &q[((b * hq + h) * lq + i) * d..][..d];
                let mut max = f64::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    let krow = &k[((b * shape.hkv + hk) * lkv + j) * d..][..d];
                    let (args, keep) =
                        raw_and_kept(p, bind, &mut scratch, scale, qrow, krow, [b, h, i, j])?;
                    *sj = if !keep {
                        f64::NEG_INFINITY
                    } else {
                        match &p.score {
                            Some(f) => eval(f, p, args, bind, &mut scratch)?.as_f32() as f64,
                            None => args.s as f64,
                        }
                    };
                    // A NaN score never becomes the max (`NaN > max` is false): a row
                    // whose every unmasked score is NaN is treated as fully masked
                    // (O = 0, LSE = -inf); next to a non-NaN score it makes the row NaN
                    // (exp(NaN - max)), and so does +inf (exp(inf - inf)). The rule is
                    // documented in docs/language.md section 1 and tested on every backend.
                    if *sj > max {
                        max = *sj;
                    }
                }
                let row = (b * hq + h) * lq + i;
                if max == f64::NEG_INFINITY {
                    // fully masked row: O = 0, LSE = -inf
                    continue;
                }
                acc.iter_mut().for_each(|a| *a = 0.0);
                let mut sum = 0f64;
                for (j, sj) in s.iter().enumerate() {
                    if *sj == f64::NEG_INFINITY {
                        continue;
                    }
                    let w = (*sj - max).exp();
                    sum += w;
                    let vrow = &v[((b * shape.hkv + hk) * lkv + j) * dv..][..dv];
                    for (a, x) in acc.iter_mut().zip(vrow) {
                        *a += w * *x as f64;
                    }
                }
                for (out, a) in o[row * dv..][..dv].iter_mut().zip(&acc) {
                    *out = (*a / sum) as f32;
                }
                lse[row] = (max + sum.ln()) as f32;
            }
        }
    }
    Ok(Output { o, lse })
}
