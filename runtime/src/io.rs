//! Tensors in files: safetensors in and out (what PyTorch users already have).
//!
//! In: a path. Out: named host [`Tensor`]s; and the reverse for writing.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: p.clone(),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: p.clone(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = from_st(view.dtype()).ok_or_else(|| Error::Safetensors {
            path: p.clone(),
            message: format!(
                "tensor `{name}` has dtype {:?}; attnc reads f32, f16, bf16, i32 and i64",
                view.dtype()
            ),
        })?;
        let t = Tensor::from_bytes(view.shape().to_vec(), dtype, view.data().to_vec()).ok_or_else(
            || Error::Safetensors {
                path: p.clone(),
                message: format!("tensor `{name}` has a byte size that does not match its shape"),
            },
        )?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes tensors to a safetensors file (through [`write_file`]).
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let p = path.display().to_string();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v = safetensors::tensor::TensorView::new(
                to_st(t.dtype()),
                t.shape().to_vec(),
                t.bytes(),
            )
            .map_err(|e| Error::Safetensors {
                path: p.clone(),
                message: e.to_string(),
            })?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Safetensors {
        path: p,
        message: e.to_string(),
    })?;
    write_file(path, &bytes)
}

/// Writes `bytes` to `path` the way a shell redirection does: the file is opened for
/// writing (created with mode 0666 minus the umask, or truncated in place, keeping its
/// owner and permissions), so a read-only file is refused with the system's error, and a
/// FIFO or device node (`/dev/null`, `/dev/stdout`) is written through rather than
/// replaced by a regular file. A directory is refused. Every failure names the path and
/// the real I/O error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source: std::io::Error| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.flush().map_err(io)
}
