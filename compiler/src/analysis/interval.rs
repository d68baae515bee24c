//! The abstract domain of the block-sparsity analysis and its evaluator.
//!
//! In: a mask [`Function`], param values (each a singleton, or unknown), captured-tensor
//! summaries ([`TensorSummary`]) and a [`Box4`] of argument ranges `b x h x q x kv`.
//! Out: an [`AbsBool`] saying whether the mask may / must be true / false somewhere in
//! the box, and (on request) split hints: points where cutting the box along one
//! argument makes some comparison or division inside the mask exact.
//!
//! Domain, per SSA value:
//! - bool: may/must flags for true and false ([`AbsBool`]);
//! - i32: an interval, plus — when the value is exactly an affine form
//!   `c_b*b + c_h*h + c_q*q + c_kv*kv + k` over the whole box, with no i32 wrap-around —
//!   that form ([`Aff`]). Comparisons of two affine values are decided on the exact
//!   range of their difference, so `q - kv < w` is exact on every box. Results of the
//!   bitwise operators and shifts also carry the bits known at every point ([`Bits`]),
//!   which narrow their interval: bit (de)interleaving (Morton codes) keeps the holes an
//!   interval would fill, and is exact over aligned boxes;
//! - f32: an interval plus a may-be-NaN flag (IEEE `+ - * /` are monotone and correctly
//!   rounded, so corners give exact bounds; transcendental functions are widened by
//!   two ulps).
//!
//! Soundness is the contract: the concrete value at every point of the box lies in the
//! abstract value. Any op whose result may wrap becomes the full i32 range and sets
//! [`Evaluator::overflowed`].

use super::summaries::TensorSummary;
use crate::ir::{Arg, BinOp, Cmp, Function, Inst, Scalar, Type, UnOp, Value};

/// Index of each argument in a [`Box4`].
pub const VB: usize = 0;
pub const VH: usize = 1;
pub const VQ: usize = 2;
pub const VKV: usize = 3;
const VAR_NAMES: [&str; 4] = ["b", "h", "q", "kv"];

/// A non-empty box of argument values: `lo[i]..=hi[i]` for b, h, q, kv.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Box4 {
    pub lo: [i64; 4],
    pub hi: [i64; 4],
}

impl Box4 {
    pub fn new(b: (i64, i64), h: (i64, i64), q: (i64, i64), kv: (i64, i64)) -> Self {
        Box4 {
            lo: [b.0, h.0, q.0, kv.0],
            hi: [b.1, h.1, q.1, kv.1],
        }
    }
    /// Splits along `var` into `lo..=p-1` and `p..=hi`; `None` unless `lo < p <= hi`.
    pub fn split(&self, var: usize, p: i64) -> Option<(Box4, Box4)> {
        if !(self.lo[var] < p && p <= self.hi[var]) {
            return None;
        }
        let mut a = *self;
        let mut b = *self;
        a.hi[var] = p - 1;
        b.lo[var] = p;
        Some((a, b))
    }
    /// Number of points (saturating).
    pub fn volume(&self) -> u128 {
        (0..4)
            .map(|i| (self.hi[i] - self.lo[i] + 1).max(0) as u128)
            .product()
    }
}

/// What the mask does on a box. `may_*` over-approximate (false = provably never),
/// `must_*` under-approximate (true = provably somewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbsBool {
    pub may_t: bool,
    pub may_f: bool,
    pub must_t: bool,
    pub must_f: bool,
}

impl AbsBool {
    pub const TRUE: AbsBool = AbsBool {
        may_t: true,
        may_f: false,
        must_t: true,
        must_f: false,
    };
    pub const FALSE: AbsBool = AbsBool {
        may_t: false,
        may_f: true,
        must_t: false,
        must_f: true,
    };
    pub const UNKNOWN: AbsBool = AbsBool {
        may_t: true,
        may_f: true,
        must_t: false,
        must_f: false,
    };
    /// Proven to be true somewhere and false somewhere.
    pub const MIXED: AbsBool = AbsBool {
        may_t: true,
        may_f: true,
        must_t: true,
        must_f: true,
    };

    pub fn constant(b: bool) -> Self {
        if b { Self::TRUE } else { Self::FALSE }
    }
    pub fn is_true(self) -> bool {
        !self.may_f
    }
    pub fn is_false(self) -> bool {
        !self.may_t
    }
    /// Whether the classification of the box is settled: all true, all false or
    /// provably mixed.
    pub fn exact(self) -> bool {
        self.is_true() || self.is_false() || (self.must_t && self.must_f)
    }
    fn norm(mut self) -> Self {
        if !self.may_f {
            self.must_t = true;
            self.must_f = false;
        }
        if !self.may_t {
            self.must_f = true;
            self.must_t = false;
        }
        self
    }
    #[allow(clippy::should_implement_trait)] // a lattice operation, not `!` on values
    pub fn not(self) -> Self {
        AbsBool {
            may_t: self.may_f,
            may_f: self.may_t,
            must_t: self.must_f,
            must_f: self.must_t,
        }
    }
    pub fn and(self, o: Self) -> Self {
        AbsBool {
            may_t: self.may_t && o.may_t,
            may_f: self.may_f || o.may_f,
            must_t: (self.is_true() && o.must_t) || (o.is_true() && self.must_t),
            must_f: self.must_f || o.must_f,
        }
        .norm()
    }
    pub fn or(self, o: Self) -> Self {
        self.not().and(o.not()).not()
    }
    pub fn xor(self, o: Self) -> Self {
        if self.is_true() {
            return o.not();
        }
        if self.is_false() {
            return o;
        }
        if o.is_true() {
            return self.not();
        }
        if o.is_false() {
            return self;
        }
        AbsBool {
            may_t: (self.may_t && o.may_f) || (self.may_f && o.may_t),
            may_f: (self.may_t && o.may_t) || (self.may_f && o.may_f),
            must_t: false,
            must_f: false,
        }
        .norm()
    }
    /// `c ? x : y`
    pub fn select(c: Self, x: Self, y: Self) -> Self {
        if c.is_true() {
            return x;
        }
        if c.is_false() {
            return y;
        }
        AbsBool {
            may_t: (c.may_t && x.may_t) || (c.may_f && y.may_t),
            may_f: (c.may_t && x.may_f) || (c.may_f && y.may_f),
            must_t: (c.must_t && x.is_true()) || (c.must_f && y.is_true()),
            must_f: (c.must_t && x.is_false()) || (c.must_f && y.is_false()),
        }
        .norm()
    }
    /// The value over the union of two boxes.
    pub fn union(self, o: Self) -> Self {
        AbsBool {
            may_t: self.may_t || o.may_t,
            may_f: self.may_f || o.may_f,
            must_t: self.must_t || o.must_t,
            must_f: self.must_f || o.must_f,
        }
    }
    /// Both are sound descriptions of the same box: keep what each proves.
    pub fn meet(self, o: Self) -> Self {
        AbsBool {
            may_t: self.may_t && o.may_t,
            may_f: self.may_f && o.may_f,
            must_t: self.must_t || o.must_t,
            must_f: self.must_f || o.must_f,
        }
        .norm()
    }
}

/// An affine form `c[VB]*b + c[VH]*h + c[VQ]*q + c[VKV]*kv + k` with exact integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aff {
    pub c: [i64; 4],
    pub k: i64,
}

impl Aff {
    pub fn constant(k: i64) -> Self {
        Aff { c: [0; 4], k }
    }
    pub fn var(v: usize) -> Self {
        let mut c = [0; 4];
        c[v] = 1;
        Aff { c, k: 0 }
    }
    fn add(&self, o: &Aff) -> Option<Aff> {
        let mut c = [0; 4];
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = self.c[i].checked_add(o.c[i])?;
        }
        Some(Aff {
            c,
            k: self.k.checked_add(o.k)?,
        })
    }
    fn scale(&self, s: i64) -> Option<Aff> {
        let mut c = [0; 4];
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = self.c[i].checked_mul(s)?;
        }
        Some(Aff {
            c,
            k: self.k.checked_mul(s)?,
        })
    }
    fn sub(&self, o: &Aff) -> Option<Aff> {
        self.add(&o.scale(-1)?)
    }
    /// Exact range over the box (attained at corners).
    pub fn range(&self, bx: &Box4) -> (i128, i128) {
        let (mut lo, mut hi) = (self.k as i128, self.k as i128);
        for i in 0..4 {
            let c = self.c[i] as i128;
            let (a, b) = (c * bx.lo[i] as i128, c * bx.hi[i] as i128);
            lo += a.min(b);
            hi += a.max(b);
        }
        (lo, hi)
    }
    /// Whether every integer between the min and max over a box is attained (all
    /// non-zero coefficients are +-1).
    fn unit(&self) -> bool {
        self.c.iter().all(|&c| c == 0 || c == 1 || c == -1)
    }
}

/// An i32 value: `lo..=hi` (within i32), and its affine form when it has one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntV {
    pub lo: i64,
    pub hi: i64,
    pub aff: Option<Aff>,
    /// Bits known at every point besides what `lo..=hi` says (set by the bitwise
    /// operators: `x & 0x55` of an aligned range has every odd bit zero, which no interval
    /// says); [`IntV::known`] adds the range's own.
    pub bits: Bits,
}

/// Known bits of an i32's two's-complement pattern: a bit set in `zeros` is 0 at every
/// point, one set in `ones` is 1 (LLVM's `KnownBits`). Bitwise index arithmetic (Morton
/// codes, bit (de)interleaving) keeps its holes here, where an interval would fill them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bits {
    pub zeros: u32,
    pub ones: u32,
}

impl Bits {
    pub const NONE: Bits = Bits { zeros: 0, ones: 0 };

    /// The bits every value of `lo..=hi` shares: those above the highest bit where `lo`
    /// and `hi` differ (none across zero, where the sign differs; none for a range
    /// outside i32).
    pub fn of_range(lo: i64, hi: i64) -> Bits {
        if lo < I32_LO || hi > I32_HI || lo > hi {
            // not an i32 range: nothing is known (rather than bits of a truncation)
            return Bits::NONE;
        }
        let (l, h) = (lo as i32 as u32, hi as i32 as u32);
        let diff = l ^ h;
        let known = if diff == 0 {
            u32::MAX
        } else {
            !(u32::MAX >> diff.leading_zeros())
        };
        Bits {
            zeros: !l & known,
            ones: l & known,
        }
    }

    /// What either side knows (both describe the same values).
    fn union(self, o: Bits) -> Bits {
        Bits {
            zeros: self.zeros | o.zeros,
            ones: self.ones | o.ones,
        }
    }

    /// What both sides know (values from either).
    fn common(self, o: Bits) -> Bits {
        Bits {
            zeros: self.zeros & o.zeros,
            ones: self.ones & o.ones,
        }
    }

    /// The smallest and largest i32 with these bits.
    pub fn range(self) -> (i64, i64) {
        let free = !(self.zeros | self.ones);
        // an unknown sign bit: set for the smallest, clear for the largest
        let free_sign = free & (1u32 << 31);
        let (lo, hi) = (self.ones | free_sign, (self.ones | free) & !free_sign);
        (lo as i32 as i64, hi as i32 as i64)
    }

    /// The known bits of `x op y` for `&`, `|`, `^` (exact per bit) and for `>>` / `<<`
    /// by one amount in 0..32; `None` for anything else.
    fn binary(op: BinOp, x: Bits, y: Bits, amount: Option<i64>) -> Option<Bits> {
        Some(match op {
            BinOp::IAnd => Bits {
                zeros: x.zeros | y.zeros,
                ones: x.ones & y.ones,
            },
            BinOp::IOr => Bits {
                zeros: x.zeros & y.zeros,
                ones: x.ones | y.ones,
            },
            BinOp::IXor => Bits {
                zeros: (x.zeros & y.zeros) | (x.ones & y.ones),
                ones: (x.zeros & y.ones) | (x.ones & y.zeros),
            },
            BinOp::IShr => {
                let n = amount.filter(|n| (0..32).contains(n))? as u32;
                // arithmetic: the sign bit's knowledge fills in from the top
                Bits {
                    zeros: ((x.zeros as i32) >> n) as u32,
                    ones: ((x.ones as i32) >> n) as u32,
                }
            }
            BinOp::IShl => {
                let n = amount.filter(|n| (0..32).contains(n))? as u32;
                Bits {
                    zeros: (x.zeros << n) | ((1u32 << n) - 1),
                    ones: x.ones << n,
                }
            }
            _ => return None,
        })
    }
}

const I32_LO: i64 = i32::MIN as i64;
const I32_HI: i64 = i32::MAX as i64;

impl IntV {
    pub fn top() -> Self {
        IntV::range(I32_LO, I32_HI)
    }
    pub fn single(x: i64) -> Self {
        IntV {
            lo: x,
            hi: x,
            aff: Some(Aff::constant(x)),
            bits: Bits::NONE,
        }
    }
    pub fn range(lo: i64, hi: i64) -> Self {
        IntV {
            lo,
            hi,
            aff: None,
            bits: Bits::NONE,
        }
    }
    /// Every bit known of the values: the range's shared top bits and `bits`.
    pub fn known(&self) -> Bits {
        Bits::of_range(self.lo, self.hi).union(self.bits)
    }
    fn singleton(&self) -> Option<i64> {
        (self.lo == self.hi).then_some(self.lo)
    }
    fn join(&self, o: &IntV) -> IntV {
        IntV {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
            aff: if self.aff == o.aff { self.aff } else { None },
            bits: self.known().common(o.known()),
        }
    }
}

/// An f32 value: the non-NaN values lie in `lo..=hi` (empty when `lo > hi`), and NaN is
/// possible when `nan`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FltV {
    pub lo: f32,
    pub hi: f32,
    pub nan: bool,
}

impl FltV {
    pub fn top() -> Self {
        FltV {
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
            nan: true,
        }
    }
    pub fn single(x: f32) -> Self {
        if x.is_nan() {
            FltV {
                lo: f32::INFINITY,
                hi: f32::NEG_INFINITY,
                nan: true,
            }
        } else {
            FltV {
                lo: x,
                hi: x,
                nan: false,
            }
        }
    }
    fn empty(&self) -> bool {
        self.lo > self.hi
    }
    fn contains(&self, x: f32) -> bool {
        !self.empty() && self.lo <= x && x <= self.hi
    }
    fn join(&self, o: &FltV) -> FltV {
        if self.empty() {
            return FltV {
                nan: self.nan || o.nan,
                ..*o
            };
        }
        if o.empty() {
            return FltV {
                nan: self.nan || o.nan,
                ..*self
            };
        }
        FltV {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
            nan: self.nan || o.nan,
        }
    }
}

/// The abstract value of one SSA value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AVal {
    Bool(AbsBool),
    Int(IntV),
    Float(FltV),
}

impl AVal {
    fn b(&self) -> AbsBool {
        match self {
            AVal::Bool(b) => *b,
            _ => AbsBool::UNKNOWN,
        }
    }
    fn i(&self) -> IntV {
        match self {
            AVal::Int(v) => *v,
            _ => IntV::top(),
        }
    }
    fn f(&self) -> FltV {
        match self {
            AVal::Float(v) => *v,
            _ => FltV::top(),
        }
    }
    fn top(t: Type) -> AVal {
        match t {
            Type::Bool => AVal::Bool(AbsBool::UNKNOWN),
            Type::I32 => AVal::Int(IntV::top()),
            Type::F32 => AVal::Float(FltV::top()),
        }
    }
    fn zero(t: Type) -> AVal {
        match t {
            Type::Bool => AVal::Bool(AbsBool::FALSE),
            Type::I32 => AVal::Int(IntV::single(0)),
            Type::F32 => AVal::Float(FltV::single(0.0)),
        }
    }
    fn join(&self, o: &AVal) -> AVal {
        match (self, o) {
            (AVal::Bool(a), AVal::Bool(b)) => AVal::Bool(AbsBool::select(AbsBool::UNKNOWN, *a, *b)),
            (AVal::Int(a), AVal::Int(b)) => AVal::Int(a.join(b)),
            (AVal::Float(a), AVal::Float(b)) => AVal::Float(a.join(b)),
            _ => *self,
        }
    }
}

/// A point to cut a box at: `var < at` and `var >= at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Split {
    pub var: usize,
    pub at: i64,
}

/// Evaluates one mask function over boxes. Reuses its buffers between calls.
pub struct Evaluator<'a> {
    f: &'a Function,
    live: Vec<usize>,
    params: Vec<Option<Scalar>>,
    tensors: &'a [TensorSummary<'a>],
    vals: Vec<AVal>,
    collect: bool,
    /// Split hints found by the last [`Evaluator::eval`] with hints enabled.
    pub splits: Vec<Split>,
    /// Set when some i32 operation may have wrapped on some evaluated box.
    pub overflowed: bool,
    /// Number of box evaluations so far.
    pub evals: u64,
}

/// Highest tensor rank read without falling back to unknown.
const MAX_RANK: usize = 8;

/// How many multiples of a divisor inside a box are worth splitting at.
const MAX_DIV_SPLITS: i64 = 8;

impl<'a> Evaluator<'a> {
    /// `params[i]` is the value of param `i` (None = unknown); `tensors[i]` summarizes
    /// tensor `i`. Loads of a tensor index beyond `tensors` are treated as unknown.
    pub fn new(
        f: &'a Function,
        params: Vec<Option<Scalar>>,
        tensors: &'a [TensorSummary<'a>],
    ) -> Self {
        let live = f
            .live()
            .iter()
            .enumerate()
            .filter(|(_, l)| **l)
            .map(|(i, _)| i)
            .collect();
        Evaluator {
            f,
            live,
            params,
            tensors,
            vals: vec![AVal::Bool(AbsBool::UNKNOWN); f.insts.len()],
            collect: false,
            splits: Vec::new(),
            overflowed: false,
            evals: 0,
        }
    }

    /// Evaluates the function over `bx` (every range non-empty). With `hints`, fills
    /// [`Evaluator::splits`].
    pub fn eval(&mut self, bx: &Box4, hints: bool) -> AbsBool {
        self.evals += 1;
        self.collect = hints;
        self.splits.clear();
        if self.f.insts.is_empty() {
            return AbsBool::UNKNOWN;
        }
        for k in 0..self.live.len() {
            let i = self.live[k];
            let v = self.eval_inst(i, bx);
            self.vals[i] = v;
        }
        self.vals[self.f.ret.index()].b()
    }

    /// Evaluates `bx`; while the result is not settled, cuts the box at a split hint and
    /// evaluates both halves, spending at most `budget` further evaluations.
    pub fn refine(&mut self, bx: &Box4, budget: &mut u32) -> AbsBool {
        let r = self.eval(bx, true);
        if r.exact() || *budget == 0 {
            return r;
        }
        let halves = self.splits.iter().find_map(|s| bx.split(s.var, s.at));
        let Some((a, b)) = halves else { return r };
        *budget -= 1;
        let ra = self.refine(&a, budget);
        let rb = self.refine(&b, budget);
        r.meet(ra.union(rb))
    }

    fn v(&self, v: Value) -> &AVal {
        &self.vals[v.index()]
    }

    fn int_from_aff(&mut self, aff: Option<Aff>, lo: i128, hi: i128, bx: &Box4) -> IntV {
        // Tighten with the affine range when there is one.
        let (mut lo, mut hi) = (lo, hi);
        if let Some(a) = &aff {
            let (alo, ahi) = a.range(bx);
            lo = lo.max(alo);
            hi = hi.min(ahi);
        }
        if lo < I32_LO as i128 || hi > I32_HI as i128 {
            self.overflowed = true;
            return IntV::top();
        }
        IntV {
            lo: lo as i64,
            hi: hi as i64,
            aff,
            bits: Bits::NONE,
        }
    }

    /// Adds hints that make `a(x) >= t` and `a(x) > t` exact when `a` depends on one
    /// non-singleton argument.
    fn hint_threshold(&mut self, a: &Aff, t: i64, bx: &Box4) {
        let mut var = None;
        let mut k = a.k as i128 - t as i128;
        for i in 0..4 {
            if a.c[i] == 0 {
                continue;
            }
            if bx.lo[i] == bx.hi[i] {
                k += a.c[i] as i128 * bx.lo[i] as i128;
            } else if var.is_some() {
                return;
            } else {
                var = Some(i);
            }
        }
        let Some(x) = var else { return };
        let c = a.c[x] as i128;
        // c*x + k >= 0 changes at x = ceil(-k/c) (c > 0) or floor(k/-c) + 1 (c < 0);
        // c*x + k > 0 at floor(-k/c) + 1 (c > 0) or ceil(k/-c) (c < 0).
        let (p1, p2) = if c > 0 {
            (div_ceil(-k, c), div_floor(-k, c) + 1)
        } else {
            (div_floor(k, -c) + 1, div_ceil(k, -c))
        };
        for p in [p1, p2] {
            if p > bx.lo[x] as i128 && p <= bx.hi[x] as i128 {
                let s = Split {
                    var: x,
                    at: p as i64,
                };
                if !self.splits.contains(&s) {
                    self.splits.push(s);
                }
            }
        }
    }

    fn eval_inst(&mut self, i: usize, bx: &Box4) -> AVal {
        let f = self.f;
        match &f.insts[i] {
            Inst::Arg(a) => {
                let var = match a {
                    Arg::B => VB,
                    Arg::H => VH,
                    Arg::Q => VQ,
                    Arg::Kv => VKV,
                    Arg::S => return AVal::Float(FltV::top()),
                };
                AVal::Int(IntV {
                    lo: bx.lo[var],
                    hi: bx.hi[var],
                    aff: Some(Aff::var(var)),
                    bits: Bits::NONE,
                })
            }
            Inst::ConstBool(b) => AVal::Bool(AbsBool::constant(*b)),
            Inst::ConstI32(x) => AVal::Int(IntV::single(*x as i64)),
            Inst::ConstF32(bits) => AVal::Float(FltV::single(f32::from_bits(*bits))),
            Inst::Param(id) => match self.params.get(id.0 as usize).copied().flatten() {
                Some(s) => match f.types[i] {
                    Type::Bool => AVal::Bool(AbsBool::constant(s.as_bool())),
                    Type::I32 => AVal::Int(IntV::single(s.as_i32() as i64)),
                    Type::F32 => AVal::Float(FltV::single(s.as_f32())),
                },
                None => AVal::top(f.types[i]),
            },
            Inst::Unary(op, a) => self.unary(*op, *a, bx),
            Inst::Binary(op, a, b) => self.binary(*op, *a, *b, bx),
            Inst::Select(c, a, b) => {
                let c = self.v(*c).b();
                let (x, y) = (*self.v(*a), *self.v(*b));
                if c.is_true() {
                    x
                } else if c.is_false() {
                    y
                } else {
                    match (x, y) {
                        (AVal::Bool(x), AVal::Bool(y)) => AVal::Bool(AbsBool::select(c, x, y)),
                        _ => x.join(&y),
                    }
                }
            }
            Inst::Load {
                tensor,
                indices,
                guard,
            } => {
                let g = self.v(*guard).b();
                let ty = f.types[i];
                if g.is_false() {
                    return AVal::zero(ty);
                }
                // Tensors have rank 1..=4; a fixed buffer avoids allocating per box.
                let mut idx = [(0i64, 0i64); MAX_RANK];
                if indices.len() > MAX_RANK {
                    return AVal::top(ty);
                }
                for (k, v) in indices.iter().enumerate() {
                    let x = self.v(*v).i();
                    idx[k] = (x.lo, x.hi);
                }
                let read = match self.tensors.get(tensor.0 as usize) {
                    Some(s) => match s.range(&idx[..indices.len()]) {
                        Some((lo, hi)) => match ty {
                            Type::I32 => AVal::Int(IntV::range(lo as i64, hi as i64)),
                            Type::F32 => AVal::Float(FltV {
                                lo: lo as f32,
                                hi: hi as f32,
                                nan: s.has_nan(),
                            }),
                            Type::Bool => AVal::top(ty),
                        },
                        None => AVal::top(ty),
                    },
                    None => AVal::top(ty),
                };
                if g.is_true() {
                    read
                } else {
                    read.join(&AVal::zero(ty))
                }
            }
        }
    }

    fn unary(&mut self, op: UnOp, a: Value, bx: &Box4) -> AVal {
        let av = *self.v(a);
        match op {
            UnOp::Not => AVal::Bool(av.b().not()),
            UnOp::INeg => {
                let x = av.i();
                let aff = x.aff.and_then(|a| a.scale(-1));
                AVal::Int(self.int_from_aff(aff, -(x.hi as i128), -(x.lo as i128), bx))
            }
            UnOp::IAbs => {
                let x = av.i();
                if x.lo >= 0 {
                    AVal::Int(x)
                } else if x.hi <= 0 {
                    let aff = x.aff.and_then(|a| a.scale(-1));
                    AVal::Int(self.int_from_aff(aff, -(x.hi as i128), -(x.lo as i128), bx))
                } else {
                    let m = (-(x.lo as i128)).max(x.hi as i128);
                    AVal::Int(self.int_from_aff(None, 0, m, bx))
                }
            }
            UnOp::B2I => {
                let b = av.b();
                AVal::Int(if b.is_true() {
                    IntV::single(1)
                } else if b.is_false() {
                    IntV::single(0)
                } else {
                    IntV::range(0, 1)
                })
            }
            UnOp::I2F => {
                let x = av.i();
                AVal::Float(FltV {
                    lo: x.lo as i32 as f32,
                    hi: x.hi as i32 as f32,
                    nan: false,
                })
            }
            UnOp::F2I => {
                let x = av.f();
                let mut r = if x.empty() {
                    IntV::single(0)
                } else {
                    IntV::range(x.lo as i32 as i64, x.hi as i32 as i64)
                };
                if x.nan {
                    r = r.join(&IntV::single(0));
                    r.aff = None;
                }
                r.aff = if r.lo == r.hi {
                    Some(Aff::constant(r.lo))
                } else {
                    None
                };
                AVal::Int(r)
            }
            UnOp::FNeg => {
                let x = av.f();
                AVal::Float(if x.empty() {
                    x
                } else {
                    FltV {
                        lo: -x.hi,
                        hi: -x.lo,
                        nan: x.nan,
                    }
                })
            }
            UnOp::FAbs => {
                let x = av.f();
                AVal::Float(if x.empty() || x.lo >= 0.0 {
                    x
                } else if x.hi <= 0.0 {
                    FltV {
                        lo: -x.hi,
                        hi: -x.lo,
                        nan: x.nan,
                    }
                } else {
                    FltV {
                        lo: 0.0,
                        hi: (-x.lo).max(x.hi),
                        nan: x.nan,
                    }
                })
            }
            UnOp::Floor | UnOp::Ceil => {
                let x = av.f();
                let g = if op == UnOp::Floor {
                    f32::floor
                } else {
                    f32::ceil
                };
                AVal::Float(if x.empty() {
                    x
                } else {
                    FltV {
                        lo: g(x.lo),
                        hi: g(x.hi),
                        nan: x.nan,
                    }
                })
            }
            UnOp::Exp | UnOp::Exp2 | UnOp::Log | UnOp::Log2 | UnOp::Sqrt | UnOp::Tanh => {
                let x = av.f();
                AVal::Float(monotone(op, x))
            }
        }
    }

    fn binary(&mut self, op: BinOp, a: Value, b: Value, bx: &Box4) -> AVal {
        let (av, bv) = (*self.v(a), *self.v(b));
        match op {
            BinOp::And => AVal::Bool(av.b().and(bv.b())),
            BinOp::Or => AVal::Bool(av.b().or(bv.b())),
            BinOp::Xor => AVal::Bool(av.b().xor(bv.b())),
            BinOp::BEq => AVal::Bool(av.b().xor(bv.b()).not()),
            BinOp::IAdd | BinOp::ISub => {
                let (x, y) = (av.i(), bv.i());
                let (lo, hi, aff) = if op == BinOp::IAdd {
                    (
                        x.lo as i128 + y.lo as i128,
                        x.hi as i128 + y.hi as i128,
                        x.aff.zip(y.aff).and_then(|(p, q)| p.add(&q)),
                    )
                } else {
                    (
                        x.lo as i128 - y.hi as i128,
                        x.hi as i128 - y.lo as i128,
                        x.aff.zip(y.aff).and_then(|(p, q)| p.sub(&q)),
                    )
                };
                AVal::Int(self.int_from_aff(aff, lo, hi, bx))
            }
            BinOp::IMul => {
                let (x, y) = (av.i(), bv.i());
                let c = [
                    x.lo as i128 * y.lo as i128,
                    x.lo as i128 * y.hi as i128,
                    x.hi as i128 * y.lo as i128,
                    x.hi as i128 * y.hi as i128,
                ];
                let aff = match (x.singleton(), y.singleton()) {
                    (_, Some(k)) => x.aff.and_then(|p| p.scale(k)),
                    (Some(k), _) => y.aff.and_then(|p| p.scale(k)),
                    _ => None,
                };
                let (lo, hi) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
                AVal::Int(self.int_from_aff(aff, lo, hi, bx))
            }
            BinOp::IDiv => {
                let (x, y) = (av.i(), bv.i());
                self.hint_divisor(&x, &y, bx);
                if let (Some(d), Some(n)) = (y.singleton(), x.singleton()) {
                    return AVal::Int(
                        IntV::single(crate::ir::floor_div(n as i32, d as i32) as i64),
                    );
                }
                let (lo, hi) = div_range(x.lo, x.hi, y.lo, y.hi);
                AVal::Int(self.int_from_aff(None, lo, hi, bx))
            }
            BinOp::IRem => {
                let (x, y) = (av.i(), bv.i());
                self.hint_divisor(&x, &y, bx);
                AVal::Int(rem_range(x, y))
            }
            BinOp::IAnd | BinOp::IOr | BinOp::IXor | BinOp::IShr => {
                let (x, y) = (av.i(), bv.i());
                AVal::Int(with_bits(op, bitwise_range(op, x, y), x, y))
            }
            BinOp::IShl => {
                let (x, y) = (av.i(), bv.i());
                match shl_range(x, y) {
                    Some(r) => AVal::Int(with_bits(op, r, x, y)),
                    None => {
                        // bits may be shifted out of the top: wraps like i32 arithmetic
                        self.overflowed = true;
                        AVal::Int(IntV::top())
                    }
                }
            }
            BinOp::IMin | BinOp::IMax => {
                let (x, y) = (av.i(), bv.i());
                let is_min = op == BinOp::IMin;
                // If one operand dominates the other on the whole box, keep its form.
                if let (Some(p), Some(q)) = (x.aff, y.aff)
                    && let Some(d) = p.sub(&q)
                {
                    let (dlo, dhi) = d.range(bx);
                    if dhi <= 0 {
                        return AVal::Int(if is_min { x } else { y });
                    }
                    if dlo >= 0 {
                        return AVal::Int(if is_min { y } else { x });
                    }
                    if self.collect {
                        self.hint_threshold(&d, 0, bx);
                    }
                }
                if x.hi <= y.lo {
                    return AVal::Int(if is_min { x } else { y });
                }
                if y.hi <= x.lo {
                    return AVal::Int(if is_min { y } else { x });
                }
                let (lo, hi) = if is_min {
                    (x.lo.min(y.lo), x.hi.min(y.hi))
                } else {
                    (x.lo.max(y.lo), x.hi.max(y.hi))
                };
                AVal::Int(IntV::range(lo, hi))
            }
            BinOp::ICmp(c) => AVal::Bool(self.icmp(c, a, b, bx)),
            BinOp::FCmp(c) => AVal::Bool(fcmp(c, av.f(), bv.f())),
            BinOp::FAdd | BinOp::FSub | BinOp::FMul | BinOp::FDiv | BinOp::FPow => {
                AVal::Float(farith(op, av.f(), bv.f()))
            }
            BinOp::FMin | BinOp::FMax => {
                let (x, y) = (av.f(), bv.f());
                let is_min = op == BinOp::FMin;
                let mut r = if x.empty() || y.empty() {
                    FltV {
                        lo: f32::INFINITY,
                        hi: f32::NEG_INFINITY,
                        nan: false,
                    }
                } else if is_min {
                    FltV {
                        lo: x.lo.min(y.lo),
                        hi: x.hi.min(y.hi),
                        nan: false,
                    }
                } else {
                    FltV {
                        lo: x.lo.max(y.lo),
                        hi: x.hi.max(y.hi),
                        nan: false,
                    }
                };
                // minNum: a NaN operand yields the other one.
                if x.nan {
                    r = r.join(&FltV { nan: false, ..y });
                }
                if y.nan {
                    r = r.join(&FltV { nan: false, ..x });
                }
                r.nan = x.nan && y.nan;
                AVal::Float(r)
            }
        }
    }

    /// For `x / y` and `x % y` with a constant divisor `y` and an affine, non-constant
    /// `x` (while collecting): `hint_multiples` of `y` on `x`.
    fn hint_divisor(&mut self, x: &IntV, y: &IntV, bx: &Box4) {
        if let (Some(d), Some(aff)) = (y.singleton(), x.aff)
            && d != 0
            && x.lo != x.hi
            && self.collect
        {
            self.hint_multiples(&aff, x.lo, x.hi, d, bx);
        }
    }

    /// Hints at the multiples of `d` that `aff` crosses on the box (where `aff / d` and
    /// `aff % d` change), when there are few.
    fn hint_multiples(&mut self, aff: &Aff, lo: i64, hi: i64, d: i64, bx: &Box4) {
        let m = d.unsigned_abs() as i64;
        let first = div_ceil(lo as i128 + 1, m as i128) as i64; // first multiple > lo
        let last = div_floor(hi as i128, m as i128) as i64;
        if last < first || last - first >= MAX_DIV_SPLITS {
            return;
        }
        for k in first..=last {
            self.hint_threshold(aff, k * m, bx);
        }
    }

    fn icmp(&mut self, c: Cmp, a: Value, b: Value, bx: &Box4) -> AbsBool {
        if a == b {
            return AbsBool::constant(matches!(c, Cmp::Eq | Cmp::Le | Cmp::Ge));
        }
        let (x, y) = (self.v(a).i(), self.v(b).i());
        if let (Some(p), Some(q)) = (x.aff, y.aff)
            && let Some(d) = p.sub(&q)
        {
            let (lo, hi) = d.range(bx);
            let r = cmp_range(c, lo, hi, d.unit());
            if self.collect && !(r.is_true() || r.is_false()) {
                self.hint_threshold(&d, 0, bx);
            }
            return r;
        }
        let (lo, hi) = (x.lo as i128 - y.hi as i128, x.hi as i128 - y.lo as i128);
        let r = cmp_range(c, lo, hi, false);
        // Intervals alone prove no mixture.
        if r.is_true() || r.is_false() {
            r
        } else {
            AbsBool::UNKNOWN
        }
    }
}

/// `d <cmp> 0` for `d` in `lo..=hi` with both ends attained; `dense` when every integer
/// in between is attained too.
fn cmp_range(c: Cmp, lo: i128, hi: i128, dense: bool) -> AbsBool {
    let (t, f) = match c {
        Cmp::Lt => (hi < 0, lo >= 0),
        Cmp::Le => (hi <= 0, lo > 0),
        Cmp::Gt => (lo > 0, hi <= 0),
        Cmp::Ge => (lo >= 0, hi < 0),
        Cmp::Eq => (lo == 0 && hi == 0, lo > 0 || hi < 0),
        Cmp::Ne => (lo > 0 || hi < 0, lo == 0 && hi == 0),
    };
    if t {
        return AbsBool::TRUE;
    }
    if f {
        return AbsBool::FALSE;
    }
    let mixed = match c {
        Cmp::Eq | Cmp::Ne => dense,
        _ => true,
    };
    if mixed {
        AbsBool::MIXED
    } else {
        AbsBool::UNKNOWN
    }
}

fn fcmp(c: Cmp, x: FltV, y: FltV) -> AbsBool {
    let nan_outcome = AbsBool::constant(c == Cmp::Ne);
    let ordered = if x.empty() || y.empty() {
        None
    } else {
        let (t, f) = match c {
            Cmp::Lt => (x.hi < y.lo, x.lo >= y.hi),
            Cmp::Le => (x.hi <= y.lo, x.lo > y.hi),
            Cmp::Gt => (x.lo > y.hi, x.hi <= y.lo),
            Cmp::Ge => (x.lo >= y.hi, x.hi < y.lo),
            Cmp::Eq => (
                x.lo == x.hi && y.lo == y.hi && x.lo == y.lo,
                x.hi < y.lo || y.hi < x.lo,
            ),
            Cmp::Ne => (
                x.hi < y.lo || y.hi < x.lo,
                x.lo == x.hi && y.lo == y.hi && x.lo == y.lo,
            ),
        };
        Some(if t {
            AbsBool::TRUE
        } else if f {
            AbsBool::FALSE
        } else {
            AbsBool::UNKNOWN
        })
    };
    match (ordered, x.nan || y.nan) {
        (Some(r), false) => r,
        (Some(r), true) => AbsBool::select(AbsBool::UNKNOWN, r, nan_outcome),
        (None, _) => nan_outcome,
    }
}

fn farith(op: BinOp, x: FltV, y: FltV) -> FltV {
    if op == BinOp::FPow {
        return FltV::top();
    }
    if x.empty() || y.empty() {
        return FltV {
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
            nan: true,
        };
    }
    let has_inf = |v: &FltV| v.lo == f32::NEG_INFINITY || v.hi == f32::INFINITY;
    let has_zero = |v: &FltV| v.contains(0.0);
    let mut nan = x.nan || y.nan;
    match op {
        BinOp::FAdd => {
            nan |= (x.hi == f32::INFINITY && y.lo == f32::NEG_INFINITY)
                || (x.lo == f32::NEG_INFINITY && y.hi == f32::INFINITY)
        }
        BinOp::FSub => {
            nan |= (x.hi == f32::INFINITY && y.hi == f32::INFINITY)
                || (x.lo == f32::NEG_INFINITY && y.lo == f32::NEG_INFINITY)
        }
        BinOp::FMul => nan |= (has_zero(&x) && has_inf(&y)) || (has_inf(&x) && has_zero(&y)),
        BinOp::FDiv => {
            if has_zero(&y) {
                return FltV::top();
            }
            nan |= has_inf(&x) && has_inf(&y);
        }
        _ => {}
    }
    let g = |a: f32, b: f32| match op {
        BinOp::FAdd => a + b,
        BinOp::FSub => a - b,
        BinOp::FMul => a * b,
        _ => a / b,
    };
    let c = [g(x.lo, y.lo), g(x.lo, y.hi), g(x.hi, y.lo), g(x.hi, y.hi)];
    if c.iter().any(|v| v.is_nan()) {
        return FltV::top();
    }
    let lo = c.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    FltV { lo, hi, nan }
}

/// Monotone increasing transcendental functions, widened by two ulps on each side since
/// their implementations are not guaranteed correctly rounded.
fn monotone(op: UnOp, x: FltV) -> FltV {
    if x.empty() {
        return x;
    }
    let mut nan = x.nan;
    let (mut lo, hi) = (x.lo, x.hi);
    if matches!(op, UnOp::Log | UnOp::Log2 | UnOp::Sqrt) && lo < 0.0 {
        nan = true;
        if hi < 0.0 {
            return FltV {
                lo: f32::INFINITY,
                hi: f32::NEG_INFINITY,
                nan: true,
            };
        }
        lo = 0.0;
    }
    let g = |v: f32| match op {
        UnOp::Exp => v.exp(),
        UnOp::Exp2 => v.exp2(),
        UnOp::Log => v.ln(),
        UnOp::Log2 => v.log2(),
        UnOp::Sqrt => v.sqrt(),
        _ => v.tanh(),
    };
    let (mut rl, mut rh) = (g(lo), g(hi));
    if rl.is_nan() || rh.is_nan() {
        return FltV::top();
    }
    for _ in 0..2 {
        if rl.is_finite() {
            rl = rl.next_down();
        }
        if rh.is_finite() {
            rh = rh.next_up();
        }
    }
    match op {
        UnOp::Exp | UnOp::Exp2 | UnOp::Sqrt => rl = rl.max(0.0),
        UnOp::Tanh => {
            rl = rl.max(-1.0);
            rh = rh.min(1.0);
        }
        _ => {}
    }
    if op == UnOp::Sqrt && lo == 0.0 {
        // sqrt(-0.0) = -0.0, equal to 0.0 under comparison.
        rl = rl.min(0.0);
    }
    FltV {
        lo: rl,
        hi: rh,
        nan,
    }
}

pub(crate) fn div_floor(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

pub(crate) fn div_ceil(a: i128, b: i128) -> i128 {
    -div_floor(-a, b)
}

/// Range of floor division `x / d` (x / 0 = 0, MIN / -1 wraps) for x, d in intervals.
fn div_range(xlo: i64, xhi: i64, dlo: i64, dhi: i64) -> (i128, i128) {
    let mut lo = i128::MAX;
    let mut hi = i128::MIN;
    let mut add = |v: i128| {
        lo = lo.min(v);
        hi = hi.max(v);
    };
    if dlo <= 0 && 0 <= dhi {
        add(0);
    }
    // Parts of the divisor range of one sign; floor(x/d) is monotone in x for fixed d and
    // in d for fixed x, so extremes lie at corners.
    let parts = [(dlo.max(1), dhi), (dlo, dhi.min(-1))];
    for (l, h) in parts {
        if l > h {
            continue;
        }
        for x in [xlo, xhi] {
            for d in [l, h] {
                if x == I32_LO && d == -1 {
                    add(I32_LO as i128); // wraps
                    // x = MIN + 1 gives MAX: the range may reach it.
                    add(I32_HI as i128);
                } else {
                    add(div_floor(x as i128, d as i128));
                }
            }
        }
        if xlo < 0 && 0 <= xhi {
            // x = -1 and x = 0 are turning points when d varies.
            for x in [-1i64, 0] {
                for d in [l, h] {
                    add(div_floor(x as i128, d as i128));
                }
            }
        }
    }
    (lo, hi)
}

fn rem_range(x: IntV, y: IntV) -> IntV {
    if let Some(d) = y.singleton() {
        if d == 0 {
            return IntV::single(0);
        }
        let (xl, xh, d128) = (x.lo as i128, x.hi as i128, d as i128);
        if div_floor(xl, d128) == div_floor(xh, d128) {
            let (a, b) = (
                xl - div_floor(xl, d128) * d128,
                xh - div_floor(xh, d128) * d128,
            );
            let (lo, hi) = (a.min(b), a.max(b));
            return IntV::range(lo as i64, hi as i64);
        }
        return if d > 0 {
            IntV::range(0, d - 1)
        } else {
            IntV::range(d + 1, 0)
        };
    }
    let mut lo = 0i64;
    let mut hi = 0i64;
    if y.hi >= 1 {
        hi = hi.max(y.hi - 1);
    }
    if y.lo <= -1 {
        lo = lo.min(y.lo + 1);
    }
    IntV::range(lo, hi)
}

/// `r`, the range of `x op y` for a bitwise operator or a shift, narrowed by the bits
/// known of the result (`Bits::binary`), which it keeps.
fn with_bits(op: BinOp, r: IntV, x: IntV, y: IntV) -> IntV {
    if r.lo == r.hi {
        return r;
    }
    let Some(bits) = Bits::binary(op, x.known(), y.known(), y.singleton()) else {
        return r;
    };
    let (blo, bhi) = bits.range();
    let (lo, hi) = (r.lo.max(blo), r.hi.min(bhi));
    if lo > hi {
        // cannot happen for sound inputs; keep the interval rather than claim nothing
        return r;
    }
    IntV {
        lo,
        hi,
        aff: r.aff,
        bits,
    }
}

/// The range of `x op y` for the bitwise operators and `>>`: exact for singletons and,
/// for `&`, `|`, `^` of two non-negative ranges, the exact bounds over them (`min_and`
/// ...); `x & y` with one non-negative side at most that side; `>>` monotone in `x` and,
/// per sign of `x`, in the shift; else all of i32.
fn bitwise_range(op: BinOp, x: IntV, y: IntV) -> IntV {
    if let (Some(a), Some(b)) = (x.singleton(), y.singleton()) {
        let r = crate::ir::eval_binary(
            op,
            crate::ir::Scalar::I32(a as i32),
            crate::ir::Scalar::I32(b as i32),
        );
        return IntV::single(r.as_i32() as i64);
    }
    // both operands within 0..=i32::MAX: the exact bounds over the two ranges
    // (Hacker's Delight 4-3, on the unsigned bit patterns)
    let nonneg = x.lo >= 0 && y.lo >= 0;
    let (a, b, c, d) = (x.lo as u32, x.hi as u32, y.lo as u32, y.hi as u32);
    match op {
        BinOp::IAnd if nonneg => {
            IntV::range(min_and(a, b, c, d) as i64, max_and(a, b, c, d) as i64)
        }
        BinOp::IAnd => match (x.lo >= 0, y.lo >= 0) {
            (true, false) => IntV::range(0, x.hi),
            (false, true) => IntV::range(0, y.hi),
            _ => IntV::top(),
        },
        BinOp::IOr if nonneg => IntV::range(min_or(a, b, c, d) as i64, max_or(a, b, c, d) as i64),
        BinOp::IXor if nonneg => {
            IntV::range(min_xor(a, b, c, d) as i64, max_xor(a, b, c, d) as i64)
        }
        BinOp::IShr => {
            let sh = |a: i64, n: i64| crate::ir::shr(a as i32, n as i32) as i64;
            let (nlo, nhi) = (y.lo.clamp(0, 31), y.hi.clamp(0, 31));
            let mut lo = sh(x.lo, nlo).min(sh(x.lo, nhi));
            let mut hi = sh(x.hi, nlo).max(sh(x.hi, nhi));
            if y.lo < 0 || y.hi > 31 {
                // amounts outside 0..32 give the sign
                lo = lo.min(sh(x.lo, 32));
                hi = hi.max(sh(x.hi, 32));
            }
            IntV::range(lo, hi)
        }
        _ => IntV::top(),
    }
}

// Bounds of x & y, x | y, x ^ y for x in a..=b and y in c..=d (unsigned; Hacker's
// Delight, 2nd ed., 4-3: each walks the bits from the top, raising a lower bound or
// lowering an upper one where that keeps it within its range).

fn min_or(mut a: u32, b: u32, mut c: u32, d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if !a & c & m != 0 {
            let t = (a | m) & m.wrapping_neg();
            if t <= b {
                a = t;
                break;
            }
        } else if a & !c & m != 0 {
            let t = (c | m) & m.wrapping_neg();
            if t <= d {
                c = t;
                break;
            }
        }
        m >>= 1;
    }
    a | c
}

fn max_or(a: u32, mut b: u32, c: u32, mut d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if b & d & m != 0 {
            let t = (b - m) | (m - 1);
            if t >= a {
                b = t;
                break;
            }
            let t = (d - m) | (m - 1);
            if t >= c {
                d = t;
                break;
            }
        }
        m >>= 1;
    }
    b | d
}

fn min_and(mut a: u32, b: u32, mut c: u32, d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if !a & !c & m != 0 {
            let t = (a | m) & m.wrapping_neg();
            if t <= b {
                a = t;
                break;
            }
            let t = (c | m) & m.wrapping_neg();
            if t <= d {
                c = t;
                break;
            }
        }
        m >>= 1;
    }
    a & c
}

fn max_and(a: u32, mut b: u32, c: u32, mut d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if b & !d & m != 0 {
            let t = (b & !m) | (m - 1);
            if t >= a {
                b = t;
                break;
            }
        } else if !b & d & m != 0 {
            let t = (d & !m) | (m - 1);
            if t >= c {
                d = t;
                break;
            }
        }
        m >>= 1;
    }
    b & d
}

fn min_xor(mut a: u32, b: u32, mut c: u32, d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if !a & c & m != 0 {
            let t = (a | m) & m.wrapping_neg();
            if t <= b {
                a = t;
            }
        } else if a & !c & m != 0 {
            let t = (c | m) & m.wrapping_neg();
            if t <= d {
                c = t;
            }
        }
        m >>= 1;
    }
    a ^ c
}

fn max_xor(a: u32, mut b: u32, c: u32, mut d: u32) -> u32 {
    let mut m = 1u32 << 31;
    while m != 0 {
        if b & d & m != 0 {
            let t = (b - m) | (m - 1);
            if t >= a {
                b = t;
            } else {
                let t = (d - m) | (m - 1);
                if t >= c {
                    d = t;
                }
            }
        }
        m >>= 1;
    }
    b ^ d
}

/// The range of `x << y` where no bit of a value in `x` can leave the i32 range (`None`
/// otherwise: the result may wrap).
fn shl_range(x: IntV, y: IntV) -> Option<IntV> {
    if let (Some(a), Some(b)) = (x.singleton(), y.singleton()) {
        return Some(IntV::single(crate::ir::shl(a as i32, b as i32) as i64));
    }
    if y.lo < 0 || y.hi > 31 {
        return None;
    }
    // monotone in x for each shift; the extremes at the ends of both ranges
    let ends = [
        (x.lo as i128) << y.lo,
        (x.lo as i128) << y.hi,
        (x.hi as i128) << y.lo,
        (x.hi as i128) << y.hi,
    ];
    let (lo, hi) = (*ends.iter().min()?, *ends.iter().max()?);
    (lo >= I32_LO as i128 && hi <= I32_HI as i128).then(|| IntV::range(lo as i64, hi as i64))
}

/// Human name of a box argument.
pub fn var_name(v: usize) -> &'static str {
    VAR_NAMES[v]
}

#[cfg(test)]
mod tests {
    #[test]
    fn bitwise_bounds_are_exact_over_small_ranges() {
        // every pair of ranges within 0..40 against brute force (the bounds are attained)
        let n = 40u32;
        for a in (0..n).step_by(3) {
            for b in (a..n).step_by(5) {
                for c in (0..n).step_by(4) {
                    for d in (c..n).step_by(7) {
                        let mut want = [(u32::MAX, 0u32); 3];
                        for x in a..=b {
                            for y in c..=d {
                                for (k, v) in [x & y, x | y, x ^ y].into_iter().enumerate() {
                                    want[k] = (want[k].0.min(v), want[k].1.max(v));
                                }
                            }
                        }
                        let got = [
                            (min_and(a, b, c, d), max_and(a, b, c, d)),
                            (min_or(a, b, c, d), max_or(a, b, c, d)),
                            (min_xor(a, b, c, d), max_xor(a, b, c, d)),
                        ];
                        assert_eq!(got, want, "x in {a}..={b}, y in {c}..={d}");
                    }
                }
            }
        }
    }

    /// Values of a small universe (-70..70 and the i32 extremes) agreeing with `k`.
    fn members(k: Bits) -> Vec<i32> {
        (-70..70)
            .chain([i32::MIN, i32::MIN + 5, i32::MAX - 5, i32::MAX])
            .filter(|&v| (v as u32) & k.zeros == 0 && (v as u32) & k.ones == k.ones)
            .collect()
    }

    #[test]
    fn known_bits_are_sound() {
        // ranges: every value carries the range's shared bits, and Bits::range bounds them
        for lo in -40i64..40 {
            for hi in lo..40 {
                let k = Bits::of_range(lo, hi);
                let (blo, bhi) = k.range();
                for v in lo..=hi {
                    let u = v as i32 as u32;
                    assert!(
                        u & k.zeros == 0 && u & k.ones == k.ones,
                        "{v} in {lo}..={hi}"
                    );
                    assert!(blo <= v && v <= bhi);
                }
            }
        }
        // beyond i32 nothing is known (no bits of a truncated bound)
        assert_eq!(Bits::of_range(-(1 << 40), 5), Bits::NONE);
        assert_eq!(Bits::of_range(3, 1 << 33), Bits::NONE);
        // operators: each result of members agrees with the bits claimed, for random bits
        // (bit 31 and six low bits free to be known)
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut random_bits = || {
            let pick = 0x8000_003f_u32;
            let known = rng.random::<u32>() & pick;
            let ones = rng.random::<u32>() & known;
            Bits {
                zeros: known & !ones,
                ones,
            }
        };
        let mut checked = 0;
        for _ in 0..400 {
            let (kx, ky) = (random_bits(), random_bits());
            let (xs, ys) = (members(kx), members(ky));
            for op in [
                BinOp::IAnd,
                BinOp::IOr,
                BinOp::IXor,
                BinOp::IShr,
                BinOp::IShl,
            ] {
                let shift = matches!(op, BinOp::IShr | BinOp::IShl);
                for amount in [
                    None,
                    Some(0),
                    Some(1),
                    Some(5),
                    Some(31),
                    Some(32),
                    Some(-1),
                ] {
                    if amount.is_some() != shift {
                        continue;
                    }
                    let Some(r) = Bits::binary(op, kx, ky, amount) else {
                        continue;
                    };
                    assert_eq!(r.zeros & r.ones, 0, "{op:?}: contradictory bits");
                    let (blo, bhi) = r.range();
                    for &x in &xs {
                        let ys_here: Vec<i32> = match amount {
                            Some(n) => vec![n as i32],
                            None => ys.clone(),
                        };
                        for &y in &ys_here {
                            let v = crate::ir::eval_binary(
                                op,
                                crate::ir::Scalar::I32(x),
                                crate::ir::Scalar::I32(y),
                            )
                            .as_i32();
                            let u = v as u32;
                            assert!(
                                u & r.zeros == 0 && u & r.ones == r.ones,
                                "{op:?} {x} {y} = {v} against {r:?} (x {kx:?}, y {ky:?})"
                            );
                            assert!(blo <= v as i64 && v as i64 <= bhi);
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000, "only {checked} results checked");
    }

    #[test]
    fn bit_deinterleaving_is_exact_on_aligned_ranges() {
        // a Morton code's column (its even bits, packed) over every aligned range of 2^k
        // codes is exactly the range's columns: intervals alone lose the holes after the
        // first mask (`examples/morton_natten.attn`'s blocks were 39% visited, 21.5% kept)
        // one operator as the evaluator applies it: the range, narrowed by the bits
        let apply = |op, x: IntV, y: IntV| with_bits(op, bitwise_range(op, x, y), x, y);
        let deinterleave = |x: IntV| {
            let mut c = x;
            let steps = [
                (0, 0x5555_5555),
                (1, 0x3333_3333),
                (2, 0x0F0F_0F0F),
                (4, 0x00FF_00FF),
                (8, 0x0000_FFFF),
            ];
            for (shift, mask) in steps {
                if shift > 0 {
                    let sh = apply(BinOp::IShr, c, IntV::single(shift));
                    c = apply(BinOp::IOr, c, sh);
                }
                c = apply(BinOp::IAnd, c, IntV::single(mask));
            }
            c
        };
        let exact = |code: i64| {
            let mut c = (code as i32) & 0x5555_5555;
            for (shift, mask) in [
                (1, 0x3333_3333),
                (2, 0x0F0F_0F0F),
                (4, 0x00FF_00FF),
                (8, 0xFFFF),
            ] {
                c = (c | (c >> shift)) & mask;
            }
            c as i64
        };
        for k in 0..12 {
            for base in [0i64, 1, 3, 7, 100, 1000] {
                let lo = base << k;
                let hi = lo + (1 << k) - 1;
                // rows too: the odd bits, `code >> 1`
                for pre in [0, 1] {
                    let x = IntV::range(lo >> pre, hi >> pre);
                    let got = deinterleave(x);
                    let want = (lo..=hi).map(|c| exact(c >> pre));
                    let (wlo, whi) = (want.clone().min().unwrap(), want.max().unwrap());
                    assert_eq!((got.lo, got.hi), (wlo, whi), "codes {lo}..={hi} >> {pre}");
                }
            }
        }
    }

    use super::*;
    use crate::ir::{FnKind, Function};
    use attnc_grammar::ast::Span;

    fn causal() -> Function {
        let mut f = Function::new(FnKind::Mask);
        let s = Span::default();
        let q = f.push(Inst::Arg(Arg::Q), Type::I32, s);
        let kv = f.push(Inst::Arg(Arg::Kv), Type::I32, s);
        f.ret = f.push(Inst::Binary(BinOp::ICmp(Cmp::Ge), q, kv), Type::Bool, s);
        f
    }

    #[test]
    fn causal_boxes() {
        let f = causal();
        let mut e = Evaluator::new(&f, vec![], &[]);
        let bx = |q: (i64, i64), kv: (i64, i64)| Box4::new((0, 0), (0, 0), q, kv);
        assert_eq!(e.eval(&bx((128, 255), (0, 127)), false), AbsBool::TRUE);
        assert_eq!(e.eval(&bx((0, 127), (128, 255)), false), AbsBool::FALSE);
        assert_eq!(e.eval(&bx((0, 127), (0, 127)), false), AbsBool::MIXED);
        assert_eq!(e.eval(&bx((0, 127), (127, 127)), false), AbsBool::MIXED);
        assert_eq!(e.eval(&bx((127, 127), (0, 127)), false), AbsBool::TRUE);
    }

    #[test]
    fn division_ranges() {
        assert_eq!(div_range(-7, 7, 2, 2), (-4, 3));
        assert_eq!(div_range(5, 5, -1, 1), (-5, 5));
        assert_eq!(
            rem_range(IntV::range(3, 5), IntV::single(4)),
            IntV::range(0, 3)
        );
        assert_eq!(
            rem_range(IntV::range(5, 6), IntV::single(4)),
            IntV::range(1, 2)
        );
    }
}
