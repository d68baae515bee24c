//! Relative-position values of the score tabulated per key block: the values that depend
//! on the query and key positions only through their difference.
//!
//! In: a score function (fast mode) and the values its element code needs (the return
//! value; the backward's element function: the derivative pass's outputs). Out: a
//! [`Diagonals`] — the *diagonal* values worth a table (their first slots after the
//! score's own), the [`Lowering`] that computes them over a vector of diagonals, and the
//! code that fills the tables of one key block ([`Diagonals::fill`], the forward) or of
//! one tile ([`Diagonals::fill_rows`], the backward's element function, `backward::elem`);
//! the score's lowering reads them through [`Lowering::tabulate`].
//!
//! A value is *diagonal* when it depends on `q` and `kv` only through `kv - q` (or
//! `q - kv`) and not on `s`: T5's bucket of `kv - q` and its table read, a
//! relative-position table `bias[h, kv - q + 64]` (ALiBi's slope times the distance is
//! one too, but cheaper to compute than to read: not tabulated).
//! Over a tile of `bq` rows and `bkv` keys such a value takes at most `bq + bkv - 1`
//! distinct arguments, one per diagonal, where the per-element code computes it
//! `bq · bkv` times; the tables hold it once per diagonal (T5's `log` per lane is 32x
//! fewer calls on 64 x 64 tiles), and the element code reads 4 consecutive rows' values with
//! one vector load. The tabulated values are the frontier of the diagonal part: diagonal
//! values used by a value that is not (or returned); a diagonal part cheaper than a
//! table read and its index ([`MIN_COST`]) is not tabulated.
//!
//! Layout: diagonal `kv - q` of a key block from `kv0` and the tile's rows from `q0` sits
//! at index `e = (kv0 + bkv - 1 - q0) - (kv - q)`, which for row `q0 + i` and key
//! `kv0 + j` is `bkv - 1 - j + i`: consecutive rows, consecutive indices. The table is
//! filled for `e` in `0 .. bkv - 1 + nrows` (rounded up to 4), computed with `kv` set to
//! `kv0 + bkv - 1 - q0` and `q` to `e` (so that `kv - q` is the diagonal): the same
//! arithmetic as the element code's, so the same values bit for bit. The backward's
//! vector sites run along a row (4 keys of one query), so its tables run the other way:
//! index `t = j - i + bq - 1` holds diagonal `kv0 - q0 - (bq - 1) + t`, filled for
//! `t` in `0 .. bq + bkv - 1` (rounded up to 4) with `q` set to `-t`.

use super::CpuError;
use super::builder::Gen;
use super::lower::{Env, Level, Lowering, VEnv, slot_addr};
use crate::analysis::diagonal::classify;
use crate::ir::{BinOp, Function, Inst, Program, UnOp, Value};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value as CValue, types};

/// The least cost of a diagonal part worth tables (per instruction: 6 a read or a libm
/// call, 4 a division, 1 any other): a vector load and its index cost about what a few
/// vector instructions do.
pub const MIN_COST: u32 = 6;

/// The cost of one instruction of a diagonal part: libm calls per lane, reads (gathers)
/// and integer divisions as several vector instructions.
fn cost(inst: &Inst) -> u32 {
    match inst {
        Inst::Load { .. } => 6,
        Inst::Unary(UnOp::Log | UnOp::Log2 | UnOp::Exp | UnOp::Exp2 | UnOp::Tanh, _) => 6,
        Inst::Binary(BinOp::IDiv | BinOp::IRem | BinOp::FPow | BinOp::FDiv, _, _) => 4,
        Inst::Arg(_) | Inst::ConstBool(_) | Inst::ConstI32(_) | Inst::ConstF32(_) => 0,
        _ => 1,
    }
}

/// The diagonal values of a score ([`Diagonals::find`]).
pub struct Diagonals<'p> {
    /// Computes the tabulated values, `q` a vector of table indices, `kv` the block's
    /// largest diagonal.
    lowering: Lowering<'p>,
    /// Each tabulated value and its first slot.
    values: Vec<(Value, u32)>,
    /// Slots each table takes (`bq + bkv + 4` words, in slots of `bq`).
    per_table: u32,
}

impl<'p> Diagonals<'p> {
    /// The diagonal values that `roots` (the values the element code needs: the
    /// score's return value, or the derivative pass's outputs) read worth tables, their
    /// tables from slot `first_slot` on (slots of `bq` words; q blocks of `bq`, key
    /// blocks of `bkv`); `None` when there are none.
    pub fn find(
        f: &'p Function,
        p: &'p Program,
        roots: &[Value],
        first_slot: u32,
        bq: usize,
        bkv: usize,
    ) -> Option<Self> {
        let n = f.insts.len();
        let live = f.live_from(roots);
        let (_, diagonal) = classify(f);
        // the frontier: diagonal values that a value of another kind reads, or roots
        let mut frontier = vec![false; n];
        for r in roots {
            frontier[r.index()] = diagonal[r.index()];
        }
        for (i, inst) in f.insts.iter().enumerate() {
            if live[i] && !diagonal[i] {
                for v in inst.operands() {
                    frontier[v.index()] |= diagonal[v.index()];
                }
            }
        }
        let roots: Vec<Value> = (0..n)
            .filter(|&i| frontier[i])
            .map(|i| Value(i as u32))
            .collect();
        // what the tables save: the live diagonal instructions behind the frontier
        let behind = f.live_from(&roots);
        let saved: u32 = (0..n)
            .filter(|&i| behind[i] && diagonal[i])
            .map(|i| cost(&f.insts[i]))
            .sum();
        if roots.is_empty() || saved < MIN_COST {
            return None;
        }
        let lowering = Lowering::with_roots(f, p, false, 0, roots.clone());
        // (every `q`-only value would need a slot: a diagonal part has none)
        debug_assert_eq!(lowering.n_slots(), 0);
        // (the fill writes 4 indices at a time up to `bkv + 2 + nrows` rounded up to 4,
        // with `nrows <= bq`)
        let per_table = (bq + bkv + 4).div_ceil(bq) as u32;
        let values = roots
            .into_iter()
            .enumerate()
            .map(|(k, v)| (v, first_slot + k as u32 * per_table))
            .collect();
        Some(Diagonals {
            lowering,
            values,
            per_table,
        })
    }

    /// Each tabulated value and its first slot (for [`Lowering::tabulate`]).
    pub fn values(&self) -> &[(Value, u32)] {
        &self.values
    }

    /// Slots the tables take.
    pub fn n_slots(&self) -> u32 {
        self.values.len() as u32 * self.per_table
    }

    /// Emits the loop-invariant values the tables need (at the kernel's entry).
    pub fn emit_invariants(&mut self, g: &mut Gen, env: &Env) -> Result<(), CpuError> {
        self.lowering.emit(g, env, Level::Inv)
    }

    /// Fills the forward's tables of the key block from `kv0` against the tile's rows
    /// from `q0` (`nrows` of them; i64 values), slots at `qslots` of `bq` words each:
    /// index `e` holds diagonal `kv0 + bkv - 1 - q0 - e` (module docs, Layout).
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &mut self,
        g: &mut Gen,
        env: &mut Env,
        qslots: CValue,
        bq: i64,
        bkv: i64,
        q0: CValue,
        kv0: CValue,
        nrows: CValue,
    ) -> Result<(), CpuError> {
        // the block's largest diagonal, kv0 + bkv - 1 - q0
        let dmax = g.b.ins().iadd_imm_s(kv0, bkv - 1);
        let dmax = g.b.ins().isub(dmax, q0);
        // indices 0 .. bkv - 1 + nrows rounded up to 4 (the element code reads rows 4 at
        // a time, padding rows included)
        let n = g.b.ins().iadd_imm_s(nrows, 3);
        let n = g.b.ins().band_imm_s(n, !3);
        let n = g.b.ins().iadd_imm_s(n, bkv - 1);
        self.fill_from(g, env, qslots, bq, dmax, Run::Down, n)
    }

    /// Fills the backward's tables of a `bq` x `bkv` tile of rows from `q0` and keys
    /// from `kv0` (i64 values), slots at `slots` of `bq` words each: index `t` holds
    /// diagonal `kv0 - q0 - (bq - 1) + t`, so that row `i`'s keys `j .. j + 4` sit at
    /// `t = j - i + bq - 1` onwards, in lane order (the element function's vector sites
    /// run along a row).
    #[allow(clippy::too_many_arguments)]
    pub fn fill_rows(
        &mut self,
        g: &mut Gen,
        env: &mut Env,
        slots: CValue,
        bq: i64,
        bkv: i64,
        q0: CValue,
        kv0: CValue,
    ) -> Result<(), CpuError> {
        let dmin = g.b.ins().isub(kv0, q0);
        let dmin = g.b.ins().iadd_imm_s(dmin, 1 - bq);
        let n = g.b.ins().iconst(types::I64, bq + bkv - 1);
        self.fill_from(g, env, slots, bq, dmin, Run::Up, n)
    }

    /// Fills indices `0 .. n` (rounded up to 4), 4 at a time, index `e` holding diagonal
    /// `d0 - e` (`Run::Down`) or `d0 + e` (`Run::Up`): computed with `kv` set to `d0` and
    /// `q` to `e` or `-e`, the same arithmetic as the element code's, so the same values
    /// bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn fill_from(
        &mut self,
        g: &mut Gen,
        env: &mut Env,
        slots: CValue,
        slot_len: i64,
        d0: CValue,
        run: Run,
        n: CValue,
    ) -> Result<(), CpuError> {
        env.kv = Some(g.b.ins().ireduce(types::I32, d0));
        env.q = None;
        env.s = None;
        self.lowering.forget();
        self.lowering.emit(g, env, Level::Kv)?;
        let zero = g.b.ins().iconst(types::I64, 0);
        let iota = g.iota();
        g.for_step(zero, n, 4, |g, e| {
            let e32 = g.b.ins().ireduce(types::I32, e);
            let lanes = g.b.ins().splat(types::I32X4, e32);
            let lanes = g.b.ins().iadd(lanes, iota);
            let q = match run {
                Run::Down => lanes,
                Run::Up => g.b.ins().ineg(lanes),
            };
            let venv = VEnv {
                q,
                kv: None,
                s: None,
                table: None,
            };
            let l = &mut self.lowering;
            l.vforget();
            l.vload_slots(g, &venv, slots, slot_len, e);
            l.vemit(g, env, &venv)?;
            for &(v, slot) in &self.values {
                let x = l.vvalue(g, v);
                let addr = slot_addr(g, slots, slot, slot_len, e);
                g.b.ins().store(MemFlagsData::trusted(), x, addr, 0);
            }
            Ok(())
        })
    }
}

/// Which way a table's indices run along the diagonals ([`Diagonals::fill_from`]).
#[derive(Clone, Copy)]
enum Run {
    /// Index `e` holds diagonal `d0 - e` (the forward: rows down a key column).
    Down,
    /// Index `e` holds diagonal `d0 + e` (the backward: keys along a row).
    Up,
}
