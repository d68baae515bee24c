//! The shape of one attention call, shared by the oracle, the analyses and every backend.
//!
//! Layouts are contiguous row-major: `Q[B, Hq, Lq, D]`, `K[B, Hkv, Lkv, D]`,
//! `V[B, Hkv, Lkv, Dv]`, `O[B, Hq, Lq, Dv]`, `LSE[B, Hq, Lq]`. Query head `h` reads kv
//! head `h / (Hq / Hkv)` (GQA).

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
        for (what, v) in [
            ("B", self.b),
            ("Hq", self.hq),
            ("Lq", self.lq),
            ("Lkv", self.lkv),
        ] {
            if v > max {
                return Err(ShapeError::TooLarge {
                    what,
                    value: v,
                    max,
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
