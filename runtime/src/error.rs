//! The runtime's error type. Every failure a user can cause is one of these variants;
//! none of them is a panic.

use crate::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source did not compile; `rendered` holds the diagnostics as rustc-like text.
    #[error("{rendered}")]
    Compile { rendered: String, count: usize },
    #[error("no attention named `{name}` in {file}; it defines: {available}")]
    UnknownAttention {
        name: String,
        file: String,
        available: String,
    },
    #[error("{0}")]
    Shape(#[from] attnc_compiler::shape::ShapeError),
    #[error("input `{which}` has shape {got:?}, expected {expected}")]
    InputShape {
        which: String,
        expected: String,
        got: Vec<usize>,
    },
    #[error("input `{which}` has dtype {got}, expected {expected}")]
    InputDType {
        which: String,
        expected: String,
        got: DType,
    },
    /// A capture (tensor or param) problem; `rendered` points at its declaration.
    #[error("{message}\n{rendered}")]
    Capture {
        name: String,
        message: String,
        rendered: String,
    },
    #[error("capture `{name}` is not declared by attention `{attention}` (it reads: {declared})")]
    UnknownCapture {
        name: String,
        attention: String,
        declared: String,
    },
    /// A tensor read out of range in checked mode; `rendered` points at the read.
    #[error("{message}\n{rendered}")]
    OutOfBounds { message: String, rendered: String },
    #[error("backend `{backend}` is not available: {reason}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: String, message: String },
    #[error("{0}")]
    Usage(String),
    /// A KV-cache input of `forward_with_cache` that does not fit (shape, dtype, page
    /// size, `seq_lens`, page ids); `tensor` names it.
    #[error("error[{code}]: {message}")]
    Cache {
        code: &'static str,
        tensor: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
