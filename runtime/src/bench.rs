//! Benchmark support: the work a variant really does, and timing of a bound kernel.
//!
//! In: a shape and a count of unmasked pairs
//! (`attnc_compiler::analysis::density::unmasked_pairs`), or a closure to time. Out:
//! FLOPs and best mean milliseconds per call.

use attnc_compiler::shape::Shape;

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
