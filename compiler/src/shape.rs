//! The shape of one attention call, shared by the oracle, the analyses and every backend.
//!
//! Layouts are contiguous row-major: `Q[B, Hq, Lq, D]`, `K[B, Hkv, Lkv, D]`,
//! `V[B, Hkv, Lkv, Dv]`, `O[B, Hq, Lq, Dv]`, `LSE[B, Hq, Lq]`. Query head `h` reads kv
//! head `h / (Hq / Hkv)` (GQA).

/// Largest head dimension (`D`, `Dv`) a shape may have.
pub const MAX_HEAD_DIM: usize = 1 << 16;

/// Largest number of elements of any one tensor of a call (q, k, v, o): its f32 bytes
/// must fit in `isize` (Rust's allocation limit), so element counts never wrap.
pub const MAX_ELEMENTS: usize = (isize::MAX as usize) / 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub lq: usize,
    pub lkv: usize,
    pub d: usize,
    pub dv: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error(
        "the number of query heads ({hq}) must be a positive multiple of the number of kv heads ({hkv})"
    )]
    Heads { hq: usize, hkv: usize },
    #[error("dimension `{what}` must be positive")]
    Zero { what: &'static str },
    #[error("dimension `{what}` = {value} exceeds the supported maximum {max}")]
    TooLarge {
        what: &'static str,
        value: usize,
        max: usize,
    },
    #[error(
        "tensor `{what}` would have more than {max} elements (the limit) at this shape: {shape}"
    )]
    TooManyElements {
        what: &'static str,
        shape: String,
        max: usize,
    },
}

impl std::fmt::Display for Shape {
    /// `B=1 Hq=8 Hkv=8 Lq=2048 Lkv=2048 D=64 Dv=64`, for user-facing messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "B={} Hq={} Hkv={} Lq={} Lkv={} D={} Dv={}",
            self.b, self.hq, self.hkv, self.lq, self.lkv, self.d, self.dv
        )
    }
}

impl Shape {
    pub fn validate(&self) -> Result<(), ShapeError> {
        for (what, v) in [
            ("B", self.b),
            ("Hq", self.hq),
            ("Hkv", self.hkv),
            ("D", self.d),
            ("Dv", self.dv),
        ] {
            if v == 0 {
                return Err(ShapeError::Zero { what });
            }
        }
        if !self.hq.is_multiple_of(self.hkv) {
            return Err(ShapeError::Heads {
                hq: self.hq,
                hkv: self.hkv,
            });
        }
        let max = i32::MAX as usize;
        for (what, v, max) in [
            ("B", self.b, max),
            ("Hq", self.hq, max),
            ("Lq", self.lq, max),
            ("Lkv", self.lkv, max),
            ("D", self.d, MAX_HEAD_DIM),
            ("Dv", self.dv, MAX_HEAD_DIM),
        ] {
            if v > max {
                return Err(ShapeError::TooLarge {
                    what,
                    value: v,
                    max,
                });
            }
        }
        // every length below is then computable without wrapping
        for (what, dims) in [
            ("q", [self.b, self.hq, self.lq, self.d]),
            ("k", [self.b, self.hkv, self.lkv, self.d]),
            ("v", [self.b, self.hkv, self.lkv, self.dv]),
            ("o", [self.b, self.hq, self.lq, self.dv]),
        ] {
            let n = dims.iter().try_fold(1usize, |n, &x| n.checked_mul(x));
            if n.is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(ShapeError::TooManyElements {
                    what,
                    shape: self.to_string(),
                    max: MAX_ELEMENTS,
                });
            }
        }
        Ok(())
    }
    /// The kv head read by query head `h`.
    pub fn kv_head(&self, h: usize) -> usize {
        h / (self.hq / self.hkv)
    }
    pub fn q_len(&self) -> usize {
        self.b * self.hq * self.lq * self.d
    }
    pub fn k_len(&self) -> usize {
        self.b * self.hkv * self.lkv * self.d
    }
    pub fn v_len(&self) -> usize {
        self.b * self.hkv * self.lkv * self.dv
    }
    pub fn o_len(&self) -> usize {
        self.b * self.hq * self.lq * self.dv
    }
    pub fn lse_len(&self) -> usize {
        self.b * self.hq * self.lq
    }
    /// The default softmax scale `1/sqrt(D)`.
    pub fn default_scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}
