//! Reading torch tensors and Python values passed to an attention call.
//!
//! In: Python objects (torch tensors, read through their public methods: `data_ptr`,
//! `shape`, `stride`, `dtype`, `device`; bools, ints and floats for params). Out:
//! [`TensorArg`]s (pointer, shape, dtype, device, contiguity; no copy), attnc host
//! [`Tensor`]s for captures (one copy, as the runtime's captures own their data), and
//! [`ParamValue`]s. Nothing here dereferences a pointer: callers check dtype, device,
//! contiguity and sizes before making a slice.

use crate::errors::{attnc_error, code};
use attnc::{DType, ParamValue, Tensor};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PyInt};

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(i64),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A torch tensor as attnc sees it (nothing copied).
#[derive(Clone, Debug)]
pub struct TensorArg {
    pub name: String,
    pub ptr: usize,
    pub shape: Vec<usize>,
    /// Read only for a tensor that is not contiguous (for its error message); empty
    /// otherwise.
    pub strides: Vec<isize>,
    /// torch's `is_contiguous()`: row-major contiguous (size-1 dimensions may have any
    /// stride; empty tensors are).
    is_contiguous: bool,
    /// `None` for a torch dtype attnc has no counterpart for (named in `torch_dtype`).
    pub dtype: Option<DType>,
    pub torch_dtype: String,
    pub device: Device,
}

/// torch's dtype objects attnc takes, asked of `torch` once per process: a tensor's
/// dtype is told by identity (`torch.bfloat16` is one object), not by its name, which
/// would make a string per read.
static TORCH_DTYPES: PyOnceLock<[(Py<PyAny>, DType, &'static str); 5]> = PyOnceLock::new();

fn torch_dtypes(py: Python<'_>) -> PyResult<&[(Py<PyAny>, DType, &'static str); 5]> {
    TORCH_DTYPES.get_or_try_init(py, || {
        let torch = py.import("torch")?;
        let get = |name: &'static str, d: DType| -> PyResult<(Py<PyAny>, DType, &'static str)> {
            Ok((torch.getattr(name)?.unbind(), d, name))
        };
        Ok([
            get("float32", DType::F32)?,
            get("float16", DType::F16)?,
            get("bfloat16", DType::BF16)?,
            get("int32", DType::I32)?,
            get("int64", DType::I64)?,
        ])
    })
}

impl TensorArg {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Row-major contiguous (size-1 dimensions may have any stride; empty tensors are).
    pub fn contiguous(&self) -> bool {
        self.is_contiguous
    }
    /// Reads a torch tensor; `name` is used in errors. Six attribute reads: dtype (by
    /// identity), shape, `is_contiguous()` (the strides only when it is not),
    /// `data_ptr()`, `is_cuda` and `get_device()` (`Tensor.device` would make a
    /// torch.device object per read).
    pub fn read(py: Python<'_>, name: &str, t: &Bound<'_, PyAny>) -> PyResult<TensorArg> {
        let not_tensor = || {
            attnc_error(
                py,
                code::INPUT_DTYPE,
                &format!(
                    "`{name}` must be a torch.Tensor, got {}",
                    t.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|_| "?".into())
                ),
            )
        };
        let dtype_obj = t.getattr(intern!(py, "dtype")).map_err(|_| not_tensor())?;
        let (dtype, torch_dtype) = match torch_dtypes(py)?
            .iter()
            .find(|(obj, _, _)| obj.bind(py).is(&dtype_obj))
        {
            Some((_, d, n)) => (Some(*d), format!("torch.{n}")),
            None => (None, dtype_obj.str()?.to_string()),
        };
        let shape: Vec<usize> = t
            .getattr(intern!(py, "shape"))?
            .extract()
            .map_err(|_| not_tensor())?;
        let is_contiguous: bool = t
            .call_method0(intern!(py, "is_contiguous"))
            .and_then(|c| c.extract())
            .map_err(|_| not_tensor())?;
        let strides: Vec<isize> = if is_contiguous {
            Vec::new()
        } else {
            t.call_method0(intern!(py, "stride"))?.extract()?
        };
        let ptr: usize = t.call_method0(intern!(py, "data_ptr"))?.extract()?;
        let device = if t.getattr(intern!(py, "is_cuda"))?.extract::<bool>()? {
            Device::Cuda(
                t.call_method0(intern!(py, "get_device"))?
                    .extract::<i64>()?,
            )
        } else if t.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            Device::Cpu
        } else {
            let kind: String = t.getattr("device")?.getattr("type")?.extract()?;
            return Err(attnc_error(
                py,
                code::DEVICE,
                &format!(
                    "`{name}` is on device `{kind}`; attnc runs on cpu (f32) and cuda (bf16, f16)"
                ),
            ));
        };
        Ok(TensorArg {
            name: name.to_string(),
            ptr,
            shape,
            strides,
            is_contiguous,
            dtype,
            torch_dtype,
            device,
        })
    }

    /// A host copy for the runtime's captures (CPU tensors, contiguous).
    pub fn to_host_tensor(&self, py: Python<'_>) -> PyResult<Tensor> {
        let Some(dtype) = self.dtype else {
            return Err(attnc_error(
                py,
                code::INPUT_DTYPE,
                &format!(
                    "tensor `{}` has dtype {}; captured tensors are int32, int64, float32, float16 or bfloat16",
                    self.name, self.torch_dtype
                ),
            ));
        };
        if self.device != Device::Cpu {
            return Err(attnc_error(
                py,
                code::DEVICE,
                &format!("tensor `{}` is on {}, expected cpu", self.name, self.device),
            ));
        }
        if !self.contiguous() {
            return Err(attnc_error(
                py,
                code::INPUT_SHAPE,
                &format!("tensor `{}` is not contiguous", self.name),
            ));
        }
        let n = self.numel() * dtype.size();
        let bytes = if n == 0 {
            Vec::new()
        } else {
            // SAFETY: a contiguous CPU tensor of this dtype and shape holds `n` bytes at
            // `ptr` (torch's `data_ptr`), alive while the caller holds the tensor (the
            // Python frame that passed it does, for the whole call); read-only here.
            unsafe { std::slice::from_raw_parts(self.ptr as *const u8, n) }.to_vec()
        };
        Tensor::from_bytes(self.shape.clone(), dtype, bytes).ok_or_else(|| {
            attnc_error(
                py,
                code::INPUT_SHAPE,
                &format!("tensor `{}`: size", self.name),
            )
        })
    }
}

/// The params of a call, `(name, value)` pairs, as the runtime takes them by name.
pub fn param_values(
    py: Python<'_>,
    params: &[(String, Bound<'_, PyAny>)],
) -> PyResult<std::collections::HashMap<String, ParamValue>> {
    params
        .iter()
        .map(|(name, v)| Ok((name.clone(), param_value(py, name, v)?)))
        .collect()
}

/// A param value from a Python bool, int or float.
pub fn param_value(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<ParamValue> {
    if v.is_instance_of::<PyBool>() {
        return Ok(ParamValue::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        let x: i64 = v.extract()?;
        return i32::try_from(x).map(ParamValue::I32).map_err(|_| {
            attnc_error(
                py,
                code::PARAM_VALUE,
                &format!("param `{name}` = {x} is outside the i32 range"),
            )
        });
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(ParamValue::F32(v.extract::<f64>()? as f32));
    }
    // 0-dim tensors and numpy scalars: through `item()`
    if let Ok(item) = v.call_method0("item")
        && (item.is_instance_of::<PyBool>()
            || item.is_instance_of::<PyInt>()
            || item.is_instance_of::<PyFloat>())
    {
        return param_value(py, name, &item);
    }
    Err(attnc_error(
        py,
        code::PARAM_VALUE,
        &format!(
            "param `{name}` must be a bool, int or float, got {}",
            v.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        ),
    ))
}
