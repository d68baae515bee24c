//! Deterministic synthetic inputs: q/k/v and captures for a program, from a seed.
//!
//! In: a `Program`, a `Shape`, a dtype and a seed. Out: host tensors and [`Captures`]
//! that satisfy the program's declarations (used by `attnc demo`, `attnc bench` and the
//! tests). Integer tensors hold small sorted ids along their last axis (document ids,
//! segment ids), float tensors small normal values; i32 params get a quarter of the
//! query length, f32 params 1.0, bool params true.

use crate::api::{Captures, ParamValue};
use crate::tensor::{DType, Tensor};
use attnc_compiler::ir::{DimSpec, ElemType, Program, Type};
use attnc_compiler::shape::Shape;

/// SplitMix64: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.732_050_8 - 3.464_101_6
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// Most elements [`checked_inputs`] lets one synthetic tensor have (4 GiB of f32).
pub const MAX_SYNTH_ELEMENTS: usize = 1 << 30;

/// Checks, before anything is allocated, that the synthetic captures of `p` at `shape`
/// (and q/k/v when `with_qkv`) are each at most [`MAX_SYNTH_ELEMENTS`] elements (what
/// `attnc bench`, `blockmask` and `demo` would build); the error names the tensor and
/// the limit.
pub fn checked_inputs(p: &Program, shape: &Shape, with_qkv: bool) -> Result<(), crate::Error> {
    shape.validate()?;
    let mut all = Vec::new();
    if with_qkv {
        all.push(("q".to_string(), vec![shape.b, shape.hq, shape.lq, shape.d]));
        all.push((
            "k".to_string(),
            vec![shape.b, shape.hkv, shape.lkv, shape.d],
        ));
        all.push((
            "v".to_string(),
            vec![shape.b, shape.hkv, shape.lkv, shape.dv],
        ));
    }
    for t in &p.tensors {
        all.push((t.name.clone(), dims_of(&t.dims, shape)));
    }
    for (name, dims) in all {
        let n = crate::tensor::elements(&dims);
        if n.is_none_or(|n| n > MAX_SYNTH_ELEMENTS) {
            return Err(crate::Error::Usage(format!(
                "synthetic tensor `{name}` {dims:?} would have {} elements; the limit is {MAX_SYNTH_ELEMENTS} (2^30): use smaller sizes",
                n.map_or("more than 2^64".to_string(), |n| n.to_string())
            )));
        }
    }
    Ok(())
}

/// A declared tensor's dims at `shape` (a symbol dim is 8), as the synthesized captures
/// have them.
pub fn dims_of(dims: &[DimSpec], shape: &Shape) -> Vec<usize> {
    dims.iter()
        .map(|d| match d {
            DimSpec::B => shape.b,
            DimSpec::H => shape.hq,
            DimSpec::Q => shape.lq,
            DimSpec::Kv => shape.lkv,
            DimSpec::Fixed(n) => *n,
            DimSpec::Symbol(_) => 8,
        })
        .collect()
}

/// Random q, k, v (standard normal) in `dtype`.
pub fn qkv(shape: &Shape, dtype: DType, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let mut random = |dims: Vec<usize>| {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_f32_as(dims, &data, dtype)
    };
    let q = random(vec![shape.b, shape.hq, shape.lq, shape.d]);
    let k = random(vec![shape.b, shape.hkv, shape.lkv, shape.d]);
    let v = random(vec![shape.b, shape.hkv, shape.lkv, shape.dv]);
    (q, k, v)
}

/// Captures satisfying the program's declarations. Free symbols in tensor dims get 8.
pub fn captures(p: &Program, shape: &Shape, seed: u64) -> Captures {
    captures_with_ids(p, shape, seed, 4)
}

/// Like [`captures`], with integer tensors holding `ids` sorted ids (documents) along
/// their last axis, at random boundaries.
pub fn captures_with_ids(p: &Program, shape: &Shape, seed: u64, ids: usize) -> Captures {
    let mut rng = Rng::new(seed.wrapping_add(1));
    let mut c = Captures::default();
    for param in &p.params {
        let v = match param.ty {
            Type::I32 => ParamValue::I32((shape.lq / 4).max(1) as i32),
            Type::F32 => ParamValue::F32(1.0),
            Type::Bool => ParamValue::Bool(true),
        };
        c.params.insert(param.name.clone(), v);
    }
    for t in &p.tensors {
        let dims = dims_of(&t.dims, shape);
        let n: usize = dims.iter().product();
        let last = *dims.last().unwrap_or(&1);
        // more ids than positions cannot all occur: bound the cuts drawn per row (by the
        // row length, at least 4096, so small cases keep their random stream)
        let ids = ids.min(last.max(4096) + 1);
        let tensor = match t.elem {
            ElemType::I32 | ElemType::I64 => {
                // sorted ids in 0..ids along the last axis, with random boundaries
                let mut data = Vec::with_capacity(n);
                for _ in 0..n / last.max(1) {
                    let mut cuts: Vec<usize> = (0..ids.saturating_sub(1))
                        .map(|_| rng.below(last as u64 + 1) as usize)
                        .collect();
                    cuts.sort();
                    for i in 0..last {
                        data.push(cuts.iter().filter(|c| **c <= i).count() as i64);
                    }
                }
                if t.elem == ElemType::I32 {
                    Tensor::from_i32(dims, &data.iter().map(|x| *x as i32).collect::<Vec<_>>())
                } else {
                    Tensor::from_i64(dims, &data)
                }
            }
            e => {
                let data: Vec<f32> = (0..n).map(|_| 0.5 * rng.normal()).collect();
                let dtype = match e {
                    ElemType::F16 => DType::F16,
                    ElemType::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                Tensor::from_f32_as(dims, &data, dtype)
            }
        };
        c.tensors.insert(t.name.clone(), tensor);
    }
    c
}
