//! Benchmark support: the work a variant really does, and timing of a bound kernel.
//!
//! In: a program, a shape, its block maps and bindings. Out: the exact number of
//! unmasked (q, kv) pairs — counted from the block maps, evaluating the mask only
//! inside partial blocks — so that FLOP rates count only unmasked pairs
//! (4·B·H·Lq·Lkv·D·density, as FlexAttention's numbers do), and timing helpers.

use attnc_compiler::analysis::blockmap::{BlockMaps, Run};
use attnc_compiler::interp::{Args, Bindings, eval};
use attnc_compiler::ir::Program;
use attnc_compiler::shape::Shape;

/// Unmasked (q, kv) pairs over all batches and heads.
pub fn unmasked_pairs(p: &Program, shape: &Shape, maps: &BlockMaps, bind: &Bindings) -> u64 {
    let Some(mask) = &p.mask else {
        return (shape.b * shape.hq * shape.lq * shape.lkv) as u64;
    };
    let mut scratch = Vec::new();
    let mut total = 0u64;
    // maps shared across b and/or h are counted once and scaled, when the mask itself
    // does not read b / h
    let b_iter = if mask.uses_arg(attnc_compiler::ir::Arg::B) {
        shape.b
    } else {
        1
    };
    let h_iter = if mask.uses_arg(attnc_compiler::ir::Arg::H) {
        shape.hq
    } else {
        1
    };
    let scale = ((shape.b / b_iter) * (shape.hq / h_iter)) as u64;
    for b in 0..b_iter {
        for h in 0..h_iter {
            let m = maps.get(
                if maps.b_stride == 0 { 0 } else { b },
                if maps.h_stride == 0 { 0 } else { h },
            );
            for i in 0..m.n_q_blocks() {
                let q0 = i * m.q_block;
                let q1 = (q0 + m.q_block).min(m.lq);
                for &Run { start, end, full } in m.row(i) {
                    let k0 = start as usize * m.kv_block;
                    let k1 = (end as usize * m.kv_block).min(m.lkv);
                    if full == 1 {
                        total += ((q1 - q0) * (k1 - k0)) as u64 * scale;
                        continue;
                    }
                    for q in q0..q1 {
                        for kv in k0..k1 {
                            let args = Args {
                                s: 0.0,
                                b: b as i32,
                                h: h as i32,
                                q: q as i32,
                                kv: kv as i32,
                            };
                            if eval(mask, p, args, bind, &mut scratch)
                                .map(|v| v.as_bool())
                                .unwrap_or(false)
                            {
                                total += scale;
                            }
                        }
                    }
                }
            }
        }
    }
    total
}

/// FLOPs of a forward pass over `pairs` unmasked pairs (QKᵀ and PV, multiply-add = 2).
pub fn flops(shape: &Shape, pairs: u64) -> f64 {
    2.0 * pairs as f64 * (shape.d + shape.dv) as f64
}

/// Runs `f` `warmup` times, then `iters` times in `reps` repetitions; returns the best
/// mean time per call in milliseconds.
pub fn time_ms(mut f: impl FnMut(), warmup: usize, iters: usize, reps: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            f();
        }
        best = best.min(t0.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64);
    }
    best
}
