//! Scalar semantics of every IR operation, in one place.
//!
//! In: operand values. Out: the result the IR defines (see the module docs of `ir`).
//! The interpreter, constant folding and the block-sparsity analysis's point checks use
//! these functions; backends are tested against them.

use super::{BinOp, UnOp};

/// A runtime value of the IR.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    I32(i32),
    F32(f32),
}

impl Scalar {
    pub fn as_bool(self) -> bool {
        match self {
            Scalar::Bool(b) => b,
            Scalar::I32(x) => x != 0,
            Scalar::F32(x) => x != 0.0,
        }
    }
    pub fn as_i32(self) -> i32 {
        match self {
            Scalar::Bool(b) => b as i32,
            Scalar::I32(x) => x,
            Scalar::F32(x) => x as i32,
        }
    }
    pub fn as_f32(self) -> f32 {
        match self {
            Scalar::Bool(b) => b as i32 as f32,
            Scalar::I32(x) => x as f32,
            Scalar::F32(x) => x,
        }
    }
}

/// Floor division with the IR's conventions (x / 0 = 0, MIN / -1 wraps).
pub fn floor_div(a: i32, b: i32) -> i32 {
    if b == 0 {
        return 0;
    }
    let q = a.wrapping_div(b);
    if (a.wrapping_rem(b) != 0) && ((a < 0) != (b < 0)) {
        q.wrapping_sub(1)
    } else {
        q
    }
}

/// Floor remainder: result has the sign of the divisor (x % 0 = 0).
pub fn floor_rem(a: i32, b: i32) -> i32 {
    if b == 0 {
        return 0;
    }
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r.wrapping_add(b)
    } else {
        r
    }
}

pub fn eval_unary(op: UnOp, a: Scalar) -> Scalar {
    match op {
        UnOp::INeg => Scalar::I32(a.as_i32().wrapping_neg()),
        UnOp::IAbs => Scalar::I32(a.as_i32().wrapping_abs()),
        UnOp::FNeg => Scalar::F32(-a.as_f32()),
        UnOp::FAbs => Scalar::F32(a.as_f32().abs()),
        UnOp::Not => Scalar::Bool(!a.as_bool()),
        UnOp::Exp => Scalar::F32(a.as_f32().exp()),
        UnOp::Exp2 => Scalar::F32(a.as_f32().exp2()),
        UnOp::Log => Scalar::F32(a.as_f32().ln()),
        UnOp::Log2 => Scalar::F32(a.as_f32().log2()),
        UnOp::Sqrt => Scalar::F32(a.as_f32().sqrt()),
        UnOp::Tanh => Scalar::F32(a.as_f32().tanh()),
        UnOp::Floor => Scalar::F32(a.as_f32().floor()),
        UnOp::Ceil => Scalar::F32(a.as_f32().ceil()),
        UnOp::I2F => Scalar::F32(a.as_i32() as f32),
        UnOp::F2I => Scalar::I32(a.as_f32() as i32),
        UnOp::B2I => Scalar::I32(a.as_bool() as i32),
    }
}

pub fn eval_binary(op: BinOp, a: Scalar, b: Scalar) -> Scalar {
    use Scalar::*;
    match op {
        BinOp::IAdd => I32(a.as_i32().wrapping_add(b.as_i32())),
        BinOp::ISub => I32(a.as_i32().wrapping_sub(b.as_i32())),
        BinOp::IMul => I32(a.as_i32().wrapping_mul(b.as_i32())),
        BinOp::IDiv => I32(floor_div(a.as_i32(), b.as_i32())),
        BinOp::IRem => I32(floor_rem(a.as_i32(), b.as_i32())),
        BinOp::IMin => I32(a.as_i32().min(b.as_i32())),
        BinOp::IMax => I32(a.as_i32().max(b.as_i32())),
        BinOp::FAdd => F32(a.as_f32() + b.as_f32()),
        BinOp::FSub => F32(a.as_f32() - b.as_f32()),
        BinOp::FMul => F32(a.as_f32() * b.as_f32()),
        BinOp::FDiv => F32(a.as_f32() / b.as_f32()),
        BinOp::FMin => F32(fmin(a.as_f32(), b.as_f32())),
        BinOp::FMax => F32(fmax(a.as_f32(), b.as_f32())),
        BinOp::FPow => F32(a.as_f32().powf(b.as_f32())),
        BinOp::ICmp(c) => Bool(c.eval(a.as_i32(), b.as_i32())),
        BinOp::FCmp(c) => Bool(c.eval(a.as_f32(), b.as_f32())),
        BinOp::And => Bool(a.as_bool() && b.as_bool()),
        BinOp::Or => Bool(a.as_bool() || b.as_bool()),
        BinOp::BEq => Bool(a.as_bool() == b.as_bool()),
        BinOp::Xor => Bool(a.as_bool() != b.as_bool()),
        BinOp::IAnd => I32(a.as_i32() & b.as_i32()),
        BinOp::IOr => I32(a.as_i32() | b.as_i32()),
        BinOp::IXor => I32(a.as_i32() ^ b.as_i32()),
        BinOp::IShl => I32(shl(a.as_i32(), b.as_i32())),
        BinOp::IShr => I32(shr(a.as_i32(), b.as_i32())),
    }
}

/// `a << n`; 0 for a shift amount outside 0..32 (all bits shifted out: PyTorch's
/// `bitwise_left_shift` of an int32 by 32 or more), bits past the top dropped.
pub fn shl(a: i32, n: i32) -> i32 {
    if (0..32).contains(&n) { a << n } else { 0 }
}

/// `a >> n`, arithmetic (the sign fills in); for a shift amount outside 0..32 the sign
/// alone: 0 or -1 (PyTorch's `bitwise_right_shift` of an int32 by 32 or more).
pub fn shr(a: i32, n: i32) -> i32 {
    if (0..32).contains(&n) {
        a >> n
    } else {
        a >> 31
    }
}

/// `min` of two f32 (IEEE 754-2019 minimumNumber): the other operand when one is NaN
/// (NaN only when both are), and `-0.0` is less than `+0.0`. (`f32::min` leaves the sign
/// of a pair of zeros unspecified; every backend implements this definition.)
pub fn fmin(a: f32, b: f32) -> f32 {
    if a == b {
        // equal: identical bits, or a pair of zeros where -0.0 wins
        f32::from_bits(a.to_bits() | b.to_bits())
    } else {
        a.min(b)
    }
}

/// `max` of two f32 (IEEE 754-2019 maximumNumber): the other operand when one is NaN,
/// and `+0.0` is greater than `-0.0`.
pub fn fmax(a: f32, b: f32) -> f32 {
    if a == b {
        f32::from_bits(a.to_bits() & b.to_bits())
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Cmp;

    #[test]
    fn floor_division_matches_python() {
        // Python: 7 // 2 = 3, -7 // 2 = -4, 7 // -2 = -4, -7 // -2 = 3
        assert_eq!(floor_div(7, 2), 3);
        assert_eq!(floor_div(-7, 2), -4);
        assert_eq!(floor_div(7, -2), -4);
        assert_eq!(floor_div(-7, -2), 3);
        assert_eq!(floor_div(-8, 2), -4);
        // Python: 7 % 2 = 1, -7 % 2 = 1, 7 % -2 = -1, -7 % -2 = -1
        assert_eq!(floor_rem(7, 2), 1);
        assert_eq!(floor_rem(-7, 2), 1);
        assert_eq!(floor_rem(7, -2), -1);
        assert_eq!(floor_rem(-7, -2), -1);
        assert_eq!(floor_div(5, 0), 0);
        assert_eq!(floor_rem(5, 0), 0);
        assert_eq!(floor_div(i32::MIN, -1), i32::MIN);
        assert_eq!(floor_rem(i32::MIN, -1), 0);
    }

    #[test]
    fn bitwise_and_shifts_match_int32_torch() {
        let b = |op, x, y| eval_binary(op, Scalar::I32(x), Scalar::I32(y)).as_i32();
        assert_eq!(b(BinOp::IAnd, 0b1100, 0b1010), 0b1000);
        assert_eq!(b(BinOp::IOr, 0b1100, 0b1010), 0b1110);
        assert_eq!(b(BinOp::IXor, 0b1100, 0b1010), 0b0110);
        assert_eq!(b(BinOp::IAnd, -1, 77), 77);
        assert_eq!(b(BinOp::IXor, -8, -1), 7);
        // shifts: two's complement, bits past the top dropped, the sign filling `>>`
        assert_eq!(b(BinOp::IShl, 3, 4), 48);
        assert_eq!(b(BinOp::IShl, 1, 31), i32::MIN);
        assert_eq!(b(BinOp::IShl, 0x4000_0001, 2), 4);
        assert_eq!(b(BinOp::IShr, -17, 2), -5);
        assert_eq!(b(BinOp::IShr, 17, 2), 4);
        // an amount outside 0..32: everything shifted out (torch's int32 shifts by >= 32)
        assert_eq!(b(BinOp::IShl, 5, 32), 0);
        assert_eq!(b(BinOp::IShl, 5, -1), 0);
        assert_eq!(b(BinOp::IShr, 5, 40), 0);
        assert_eq!(b(BinOp::IShr, -5, 40), -1);
        assert_eq!(b(BinOp::IShr, -5, -3), -1);
    }

    #[test]
    fn f2i_truncates_and_saturates() {
        assert_eq!(eval_unary(UnOp::F2I, Scalar::F32(-2.7)), Scalar::I32(-2));
        assert_eq!(eval_unary(UnOp::F2I, Scalar::F32(f32::NAN)), Scalar::I32(0));
        assert_eq!(
            eval_unary(UnOp::F2I, Scalar::F32(1e20)),
            Scalar::I32(i32::MAX)
        );
    }

    #[test]
    fn comparisons() {
        assert_eq!(
            eval_binary(BinOp::ICmp(Cmp::Ge), Scalar::I32(3), Scalar::I32(3)),
            Scalar::Bool(true)
        );
        assert_eq!(
            eval_binary(
                BinOp::FCmp(Cmp::Lt),
                Scalar::F32(f32::NAN),
                Scalar::F32(1.0)
            ),
            Scalar::Bool(false)
        );
    }
}
