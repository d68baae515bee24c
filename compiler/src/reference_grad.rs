//! The reference backward pass: the gradients of the semantics contract (issue 10's
//! formulas) computed naively in f64, the judge of every backend's backward.
//!
//! In: a [`Program`], a [`Shape`], f32 Q/K/V and dO in the layouts of [`crate::shape`],
//! an optional dLSE `[B, Hq, Lq]`, the scale and [`Bindings`]. Out: [`Grads`]: dQ, dK,
//! dV (f32, the layouts of Q/K/V) and the gradient of every f32/f16/bf16 captured tensor
//! and every f32 param (`None` for integer ones), or the first out-of-range tensor read.
//!
//! Independent of the derivative pass (`grad`): the score's partial derivatives come from
//! forward-mode dual numbers ([`crate::dual`]), and O and LSE are recomputed here in f64
//! (the forward's f32 outputs are not inputs). Per row (b, h, i) with the kept logits
//! s'_j (the score of `raw = f32(scale·q·k)`, -inf where masked): P = softmax(s'),
//! D = Σ_j P_j (dO·V_j) (= rowsum(dO∘O)), dS'_j = P_j (dO·V_j − D + dLSE);
//! dS_j = dS'_j·∂score/∂s; dQ_i = scale Σ_j dS_j K_j, dK_j += scale dS_j Q_i,
//! dV_j += P_j dO_i (GQA: summed over the query heads of a kv head);
//! grad[tensor][element read] += dS'_j·∂score/∂read for every performed read,
//! grad\[param\] += dS'_j·∂score/∂param. Elements with P_j = 0 (masked, score -inf)
//! contribute nothing (their partials are never multiplied); a fully masked row gives
//! dQ = 0 and contributes nothing.

use crate::dual::eval_dual;
use crate::interp::{Bindings, EvalError, TensorData};
use crate::ir::Program;
use crate::reference::{assert_qkv_lens, raw_and_kept};
use crate::shape::Shape;

/// Gradients of one backward call, of the oracle and of the CPU backend
/// (`backend::cranelift::backward::Gradients`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    /// dQ, dK, dV: f32 in the layouts of Q, K and V.
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    /// Per `Program::tensors` entry: the gradient (row-major, the tensor's shape) of a
    /// float tensor, `None` for an integer one.
    pub tensors: Vec<Option<Vec<f32>>>,
    /// Per `Program::params` entry: the gradient of an f32 param, `None` otherwise.
    pub params: Vec<Option<f32>>,
}

/// The per-element data of one row: logit, dual of the score (when scored).
struct Elem {
    logit: f64,
    dual: Option<crate::dual::Dual>,
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &Program,
    shape: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    dlse: Option<&[f32]>,
    scale: f32,
    bind: &Bindings,
) -> Result<Grads, EvalError> {
    let Shape {
        b: nb,
        hq,
        hkv,
        lq,
        lkv,
        d,
        dv,
    } = *shape;
    assert_qkv_lens(shape, q, k, v);
    assert_eq!(dout.len(), shape.o_len(), "dO length");
    if let Some(x) = dlse {
        assert_eq!(x.len(), shape.lse_len(), "dLSE length");
    }
    let mut dq = vec![0f64; q.len()];
    let mut dk = vec![0f64; k.len()];
    let mut dvv = vec![0f64; v.len()];
    let mut tg: Vec<Option<Vec<f64>>> = bind
        .tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(x) => Some(vec![0f64; x.len()]),
            TensorData::I32(_) => None,
        })
        .collect();
    let mut pg: Vec<Option<f64>> = p
        .params
        .iter()
        .map(|x| (x.ty == crate::ir::Type::F32).then_some(0.0))
        .collect();
    let mut scratch = Vec::new();
    let mut row: Vec<Elem> = Vec::with_capacity(lkv);
    for b in 0..nb {
        for h in 0..hq {
            let hk = shape.kv_head(h);
            for i in 0..lq {
                let r = (b * hq + h) * lq + i;
                let qrow = &q[r * d..][..d];
                let dorow = &dout[r * dv..][..dv];
                row.clear();
                let mut max = f64::NEG_INFINITY;
                for j in 0..lkv {
                    let krow = &k[((b * hkv + hk) * lkv + j) * d..][..d];
                    let (args, keep) =
                        raw_and_kept(p, bind, &mut scratch, scale, qrow, krow, [b, h, i, j])?;
                    let e = if !keep {
                        Elem {
                            logit: f64::NEG_INFINITY,
                            dual: None,
                        }
                    } else {
                        match &p.score {
                            Some(f) => {
                                let du = eval_dual(f, p, args, bind)?;
                                Elem {
                                    logit: du.score as f64,
                                    dual: Some(du),
                                }
                            }
                            None => Elem {
                                logit: args.s as f64,
                                dual: None,
                            },
                        }
                    };
                    if e.logit > max {
                        max = e.logit;
                    }
                    row.push(e);
                }
                if max == f64::NEG_INFINITY {
                    continue; // fully masked row: dQ = 0, nothing flows
                }
                let sum: f64 = row
                    .iter()
                    .filter(|e| e.logit != f64::NEG_INFINITY)
                    .map(|e| (e.logit - max).exp())
                    .sum();
                let lse = max + sum.ln();
                // P_j and dP_j = dO·V_j, then D = Σ P dP
                let mut pd: Vec<(f64, f64)> = Vec::with_capacity(lkv);
                let mut dsum = 0f64;
                for (j, e) in row.iter().enumerate() {
                    if e.logit == f64::NEG_INFINITY {
                        pd.push((0.0, 0.0));
                        continue;
                    }
                    let pj = (e.logit - lse).exp();
                    let vrow = &v[((b * hkv + hk) * lkv + j) * dv..][..dv];
                    let dpj: f64 = dorow
                        .iter()
                        .zip(vrow)
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    dsum += pj * dpj;
                    pd.push((pj, dpj));
                }
                let dl = dlse.map_or(0.0, |x| x[r] as f64);
                for (j, (e, (pj, dpj))) in row.iter().zip(&pd).enumerate() {
                    if *pj == 0.0 {
                        continue;
                    }
                    let kv_row = (b * hkv + hk) * lkv + j;
                    for (acc, x) in dvv[kv_row * dv..][..dv].iter_mut().zip(dorow) {
                        *acc += pj * *x as f64;
                    }
                    let ds_prime = pj * (dpj - dsum + dl);
                    let (ds, dual) = match &e.dual {
                        Some(du) => (ds_prime * du.d_s, Some(du)),
                        None => (ds_prime, None),
                    };
                    let krow = &k[kv_row * d..][..d];
                    for (acc, x) in dq[r * d..][..d].iter_mut().zip(krow) {
                        *acc += scale as f64 * ds * *x as f64;
                    }
                    for (acc, x) in dk[kv_row * d..][..d].iter_mut().zip(qrow) {
                        *acc += scale as f64 * ds * *x as f64;
                    }
                    if let Some(du) = dual {
                        for rd in &du.reads {
                            if let Some(g) = &mut tg[rd.tensor.0 as usize] {
                                g[rd.flat] += ds_prime * rd.partial;
                            }
                        }
                        for (id, partial) in &du.params {
                            if let Some(g) = &mut pg[id.0 as usize] {
                                *g += ds_prime * partial;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|y| y as f32).collect::<Vec<f32>>();
    Ok(Grads {
        dq: f(dq),
        dk: f(dk),
        dv: f(dvv),
        tensors: tg.into_iter().map(|t| t.map(f)).collect(),
        params: pg.into_iter().map(|x| x.map(|y| y as f32)).collect(),
    })
}
