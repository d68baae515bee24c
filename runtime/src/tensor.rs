//! Host tensors: what users pass to `forward` and what `attnc run` reads and writes.
//!
//! In: raw little-endian bytes with a dtype and a shape (from safetensors or built in
//! Rust), or a vector of f32 values kept as the tensor's memory (`from_f32_vec`: outputs
//! and gradients computed as f32, without a copy). Out: typed views converted for the
//! kernels (`to_f32`, `read_f32_into`, `to_i32`, bf16/f16 bits).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

/// Element type of a host tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f32" | "float32" => DType::F32,
            "f16" | "float16" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "i32" | "int32" => DType::I32,
            "i64" | "int64" => DType::I64,
            _ => return None,
        })
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Little-endian 16-bit words of `bytes`.
fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The little-endian bytes of 16-bit words.
fn le_bytes(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The number of elements of `shape`, `None` when it does not fit in `usize`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The constructors' check: `len` values fill `shape` exactly.
fn check_len(shape: &[usize], len: usize) {
    let n = elements(shape);
    assert!(
        n == Some(len),
        "tensor data has {len} values but shape {shape:?} needs {}",
        n.map_or("more than usize::MAX".to_string(), |n| n.to_string())
    );
}

/// A dense, row-major host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    bytes: Store,
}

/// A tensor's memory: bytes as given, or (f32 tensors made from a vector of values on a
/// little-endian host) that vector itself, so that a gradient or an output computed as
/// f32 values becomes a tensor without a copy. Either way the bytes are the
/// little-endian values; equality compares bytes.
#[derive(Clone, Debug)]
enum Store {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

impl Store {
    fn new_f32(data: Vec<f32>) -> Store {
        if cfg!(target_endian = "little") {
            Store::F32(data)
        } else {
            Store::Bytes(data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Store) -> bool {
        **self == **other
    }
}

impl std::ops::Deref for Store {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Store::Bytes(b) => b,
            // SAFETY: the view covers exactly the vector's initialised values (f32 has no
            // padding; any byte may be read as u8) and borrows it.
            Store::F32(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), size_of_val(&v[..]))
            },
        }
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Store::Bytes(b) => b,
            // SAFETY: as in `deref`, borrowed mutably; every byte pattern written makes
            // valid f32 values.
            Store::F32(v) => unsafe {
                std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size_of_val(&v[..]))
            },
        }
    }
}

impl Tensor {
    /// Wraps bytes; `None` when the byte count does not match the shape and dtype.
    pub fn from_bytes(shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> Option<Tensor> {
        let n = elements(&shape)?;
        if n.checked_mul(dtype.size())? != bytes.len() {
            return None;
        }
        Some(Tensor {
            shape,
            dtype,
            bytes: Store::Bytes(bytes),
        })
    }
    /// # Panics
    /// When `data.len()` is not the number of elements of `shape` (as every constructor).
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Tensor {
        check_len(&shape, data.len());
        Tensor {
            shape,
            dtype: DType::F32,
            bytes: Store::new_f32(data.to_vec()),
        }
    }
    /// [`from_f32`](Self::from_f32) taking the values' vector as the tensor's memory (no
    /// copy on a little-endian host).
    ///
    /// # Panics
    /// As [`from_f32`](Self::from_f32).
    pub fn from_f32_vec(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        check_len(&shape, data.len());
        Tensor {
            shape,
            dtype: DType::F32,
            bytes: Store::new_f32(data),
        }
    }
    pub fn from_i32(shape: Vec<usize>, data: &[i32]) -> Tensor {
        check_len(&shape, data.len());
        Tensor {
            shape,
            dtype: DType::I32,
            bytes: Store::Bytes(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
    pub fn from_i64(shape: Vec<usize>, data: &[i64]) -> Tensor {
        check_len(&shape, data.len());
        Tensor {
            shape,
            dtype: DType::I64,
            bytes: Store::Bytes(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
    /// Converts f32 values to a float dtype (rounding to nearest even for f16/bf16).
    pub fn from_f32_as(shape: Vec<usize>, data: &[f32], dtype: DType) -> Tensor {
        check_len(&shape, data.len());
        let bytes = match dtype {
            DType::F32 => return Tensor::from_f32(shape, data),
            DType::F16 => {
                let mut h = vec![f16::ZERO; data.len()];
                h.convert_from_f32_slice(data);
                le_bytes(h.reinterpret_cast())
            }
            DType::BF16 => {
                let mut h = vec![bf16::ZERO; data.len()];
                h.convert_from_f32_slice(data);
                le_bytes(h.reinterpret_cast())
            }
            DType::I32 => data
                .iter()
                .flat_map(|x| (*x as i32).to_le_bytes())
                .collect(),
            DType::I64 => data
                .iter()
                .flat_map(|x| (*x as i64).to_le_bytes())
                .collect(),
        };
        Tensor {
            shape,
            dtype,
            bytes: Store::Bytes(bytes),
        }
    }
    /// [`from_f32_as`](Self::from_f32_as) taking the values' vector: an f32 tensor keeps
    /// it as its memory (no copy), other dtypes convert.
    pub fn from_f32_vec_as(shape: Vec<usize>, data: Vec<f32>, dtype: DType) -> Tensor {
        match dtype {
            DType::F32 => Tensor::from_f32_vec(shape, data),
            _ => Tensor::from_f32_as(shape, &data, dtype),
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// A copy with the last dim resized to `n`: its first `n` columns kept, zeros
    /// appended past the old width (any dtype; a rank-0 tensor, or one whose last dim is
    /// 0, is returned unchanged).
    pub fn resize_last_dim(&self, n: usize) -> Tensor {
        let Some(&w) = self.shape.last() else {
            return self.clone();
        };
        if w == n || w == 0 {
            return self.clone();
        }
        let e = self.dtype.size();
        let rows = self.len() / w;
        let keep = w.min(n) * e;
        let mut bytes = vec![0u8; rows * n * e];
        for (dst, src) in bytes
            .chunks_exact_mut(n * e)
            .zip(self.bytes.chunks_exact(w * e))
        {
            dst[..keep].copy_from_slice(&src[..keep]);
        }
        let mut shape = self.shape.clone();
        *shape.last_mut().expect("rank checked above") = n;
        Tensor {
            shape,
            dtype: self.dtype,
            bytes: Store::Bytes(bytes),
        }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The number of elements (the constructors guarantee it fits: it never wraps).
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements of an f32 tensor as a slice, without a copy: `None` for other
    /// dtypes, on big-endian hosts, or when the bytes are not 4-aligned (the allocator
    /// aligns them in practice).
    pub fn f32_slice(&self) -> Option<&[f32]> {
        let b = &self.bytes;
        if self.dtype != DType::F32
            || cfg!(target_endian = "big")
            || b.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0
        {
            return None;
        }
        // SAFETY: the bytes are 4-aligned and hold `len / 4` whole f32 values (an f32
        // tensor), every bit pattern is a valid f32, and on a little-endian host they
        // read as the tensor's values; the slice borrows `self`.
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) })
    }

    /// [`f32_slice`](Self::f32_slice), writable: the values of an f32 tensor in place
    /// (`None` for other dtypes, on big-endian hosts, or when the bytes are not 4-aligned).
    pub fn f32_slice_mut(&mut self) -> Option<&mut [f32]> {
        let b = &mut self.bytes;
        if self.dtype != DType::F32
            || cfg!(target_endian = "big")
            || b.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0
        {
            return None;
        }
        // SAFETY: as in `f32_slice`; the slice borrows `self` mutably, and every bit
        // pattern written through it is a valid f32 (and bytes).
        Some(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<f32>(), b.len() / 4) })
    }

    /// Every element as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                let mut out = Vec::new();
                self.read_f32_into(&mut out);
                out
            }
            DType::I32 => self.to_i32().into_iter().map(|x| x as f32).collect(),
            DType::I64 => self.to_i64().into_iter().map(|x| x as f32).collect(),
        }
    }
    /// Every element as f32, written into `out` (its allocation is reused: repeated calls
    /// of the same size neither allocate nor fault in fresh pages).
    pub fn read_f32_into(&self, out: &mut Vec<f32>) {
        out.clear();
        let b = &self.bytes;
        match self.dtype {
            DType::F32 => match self.f32_slice() {
                // (a copy the compiler makes a memcpy)
                Some(x) => out.extend_from_slice(x),
                None => out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
            },
            // half's slice conversions (vectorized where the CPU allows)
            DType::F16 => {
                let bits = u16s(b);
                out.resize(bits.len(), 0.0);
                let h: &[f16] = bits.reinterpret_cast();
                h.convert_to_f32_slice(out);
            }
            DType::BF16 => {
                let bits = u16s(b);
                out.resize(bits.len(), 0.0);
                let h: &[bf16] = bits.reinterpret_cast();
                h.convert_to_f32_slice(out);
            }
            _ => out.extend(self.to_f32()),
        }
    }
    /// Every element as i32 (i64 saturated to the i32 range, so that a length of `1 << 40`
    /// stays out of range for the checks that follow instead of wrapping to 0; floats
    /// truncated toward zero, saturating).
    pub fn to_i32(&self) -> Vec<i32> {
        let b = &self.bytes;
        match self.dtype {
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::I64 => self
                .to_i64()
                .into_iter()
                .map(|x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                .collect(),
            _ => self.to_f32().into_iter().map(|x| x as i32).collect(),
        }
    }
    fn to_i64(&self) -> Vec<i64> {
        self.bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
    /// The raw 16-bit patterns of an f16/bf16 tensor.
    pub fn to_u16_bits(&self) -> Option<Vec<u16>> {
        match self.dtype {
            DType::F16 | DType::BF16 => Some(
                self.bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let t = Tensor::from_f32_as(vec![2, 2], &[1.0, -2.5, 0.125, 3.0], DType::BF16);
        assert_eq!(t.to_f32(), vec![1.0, -2.5, 0.125, 3.0]);
        let t = Tensor::from_i64(vec![4], &[1, -2, 1 << 40, -(1 << 40)]);
        assert_eq!(t.to_i32(), [1, -2, i32::MAX, i32::MIN]);
        assert!(Tensor::from_bytes(vec![3], DType::F32, vec![0; 11]).is_none());
        let x = [1.5f32, -0.0, f32::NEG_INFINITY, 7e-39];
        let t = Tensor::from_f32(vec![4], &x);
        assert_eq!(t.bytes()[..4], 1.5f32.to_le_bytes());
        assert_eq!(t.bytes()[12..], 7e-39f32.to_le_bytes());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&t.to_f32()), bits(&x));
        if cfg!(target_endian = "little") {
            assert_eq!(bits(t.f32_slice().expect("aligned f32 bytes")), bits(&x));
        }
        assert!(
            Tensor::from_f32_as(vec![4], &x, DType::BF16)
                .f32_slice()
                .is_none()
        );
    }

    /// A tensor that keeps its values' vector reads, compares, converts and is written
    /// exactly as one made from the same values' bytes.
    #[test]
    fn vector_backed_tensors_are_their_bytes() {
        let x = vec![1.5f32, -0.0, f32::NEG_INFINITY, 7e-39, 3.25, -2.0];
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let from_bytes = Tensor::from_bytes(vec![2, 3], DType::F32, bytes.clone()).unwrap();
        let mut kept = Tensor::from_f32_vec(vec![2, 3], x.clone());
        assert_eq!(kept, from_bytes);
        assert_eq!(kept.bytes(), &bytes[..]);
        assert_eq!(kept.len(), 6);
        let mut out = vec![9.0; 2];
        kept.read_f32_into(&mut out);
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // written through the f32 view: the bytes follow, equality follows the bytes
        kept.f32_slice_mut().expect("an f32 tensor")[4] = 8.0;
        assert_eq!(kept.bytes()[16..20], 8.0f32.to_le_bytes());
        assert_ne!(kept, from_bytes);
        assert_eq!(kept.resize_last_dim(2).to_f32(), [1.5, -0.0, 7e-39, 8.0]);
        // other dtypes convert as from_f32_as does
        let h = Tensor::from_f32_vec_as(vec![6], x.clone(), DType::BF16);
        assert_eq!(h, Tensor::from_f32_as(vec![6], &x, DType::BF16));
    }
}
