//! The exact amount of work a mask leaves: unmasked (q, kv) pairs.
//!
//! In: a program, a shape, block maps built for it and bindings. Out: the number of
//! pairs whose mask is true, counted from the maps — full blocks whole, the mask
//! evaluated (by the interpreter) only inside partial blocks — so FLOP rates can count
//! only unmasked pairs (4·B·H·Lq·Lkv·D·density), as FlexAttention's numbers do.

use crate::analysis::blockmap::{BlockMaps, Run};
use crate::interp::{Args, Bindings, eval};
use crate::ir::Program;
use crate::shape::Shape;

/// Unmasked (q, kv) pairs over all batches and heads.
pub fn unmasked_pairs(p: &Program, shape: &Shape, maps: &BlockMaps, bind: &Bindings) -> u64 {
    let Some(mask) = &p.mask else {
        return (shape.b * shape.hq * shape.lq * shape.lkv) as u64;
    };
    let mut scratch = Vec::new();
    let mut total = 0u64;
    // maps shared across b and/or h are counted once and scaled, when the mask itself
    // does not read b / h
    let b_iter = if mask.uses_arg(crate::ir::Arg::B) {
        shape.b
    } else {
        1
    };
    let h_iter = if mask.uses_arg(crate::ir::Arg::H) {
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
                            let args = Args::at(0.0, [b, h, q, kv]);
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
