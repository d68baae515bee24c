//! attnc errors as Python exceptions.
//!
//! In: a runtime [`Error`], compiler [`Diagnostic`]s, or a panic caught at the FFI
//! boundary. Out: an `attnc.AttncError` (or its subclass `attnc.CompileError`) whose
//! attributes are `code` (the attnc error code, docs/language.md), `rendered` (the
//! rustc-like text), `spans` (byte ranges `(start, end)` into the source) and
//! `diagnostics` (one dict per diagnostic: code, message, span, line, column, label,
//! hint). Codes of the runtime's errors that carry none of their own are the
//! `E031x` codes listed in docs/language.md.

use attnc::Error;
use attnc_compiler::diag::Diagnostic;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    attnc,
    AttncError,
    PyException,
    "An attnc error: `.code` (e.g. E0303), `.rendered` (the diagnostic as text), `.spans`, `.diagnostics`."
);
pyo3::create_exception!(
    attnc,
    CompileError,
    AttncError,
    "The source did not compile: `.code` of the first error, `.rendered`, `.spans`, `.diagnostics`."
);

/// Codes for runtime errors that are not source diagnostics.
pub mod code {
    /// No attention of that name in the module (or several and none chosen).
    pub const UNKNOWN_ATTENTION: &str = "E0310";
    /// A keyword that names no param or tensor of the attention.
    pub const UNKNOWN_CAPTURE: &str = "E0311";
    /// q/k/v (or a capture) with an unusable shape: rank, sizes, heads.
    pub const INPUT_SHAPE: &str = "E0312";
    /// q/k/v (or a capture) of a dtype the backend does not take.
    pub const INPUT_DTYPE: &str = "E0313";
    /// Tensors on different devices, on a device attnc does not run on, or a backend
    /// that is not available here.
    pub const DEVICE: &str = "E0314";
    /// A param value that is not a bool, int or float, or out of the i32 range.
    pub const PARAM_VALUE: &str = "E0315";
    /// A failure inside a backend (JIT, driver, launch).
    pub const BACKEND: &str = "E0316";
    /// A source file that cannot be read.
    pub const IO: &str = "E0317";
    /// A block mask that does not fit the call (`attnc.BlockMask`: another attention,
    /// shape, dtype, device or scale, or captures that changed since it was made). Raised
    /// by the package's Python code; listed here so that the codes stay one list.
    #[allow(dead_code)]
    pub const STALE_BLOCK_MASK: &str = "E0318";
    /// A call option of the wrong type (`deterministic` not True or False). Raised by the
    /// package's Python code; listed here so that the codes stay one list.
    #[allow(dead_code)]
    pub const CALL_OPTION: &str = "E0319";
    /// An internal error (a bug in attnc: a panic caught at the boundary).
    pub const INTERNAL: &str = "E0900";
}

/// One diagnostic as the structured part of an exception.
pub struct DiagInfo {
    pub code: String,
    pub message: String,
    pub span: (usize, usize),
    pub line: usize,
    pub column: usize,
    pub label: String,
    pub hint: Option<String>,
}

impl DiagInfo {
    pub fn from_diagnostic(d: &Diagnostic, text: &str) -> DiagInfo {
        DiagInfo::at(d.code, &d.message, (d.span.start, d.span.end), text)
            .with_label(&d.label, d.hint.clone())
    }
    /// A diagnostic at `span` of `text` (line and column 1-based, column in characters).
    pub fn at(code: &str, message: &str, span: (usize, usize), text: &str) -> DiagInfo {
        let start = span.0.min(text.len());
        let start = (0..=start)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        DiagInfo {
            code: code.to_string(),
            message: message.to_string(),
            span,
            line,
            column,
            label: String::new(),
            hint: None,
        }
    }
    fn with_label(mut self, label: &str, hint: Option<String>) -> DiagInfo {
        self.label = label.to_string();
        self.hint = hint;
        self
    }
}

/// Builds an exception of type `E` with the attributes above.
fn raise<E: pyo3::PyTypeInfo>(
    py: Python<'_>,
    code: &str,
    rendered: &str,
    diags: &[DiagInfo],
) -> PyErr {
    let err = PyErr::from_type(E::type_object(py), rendered.to_string());
    let value = err.value(py);
    let fill = || -> PyResult<()> {
        value.setattr("code", code)?;
        value.setattr("rendered", rendered)?;
        value.setattr("spans", diags.iter().map(|d| d.span).collect::<Vec<_>>())?;
        let list = pyo3::types::PyList::empty(py);
        for d in diags {
            let x = PyDict::new(py);
            x.set_item("code", &d.code)?;
            x.set_item("message", &d.message)?;
            x.set_item("span", d.span)?;
            x.set_item("line", d.line)?;
            x.set_item("column", d.column)?;
            x.set_item("label", &d.label)?;
            x.set_item("hint", &d.hint)?;
            list.append(x)?;
        }
        value.setattr("diagnostics", list)?;
        Ok(())
    };
    match fill() {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// A compile failure with its diagnostics.
pub fn compile_error(py: Python<'_>, rendered: &str, diags: &[DiagInfo]) -> PyErr {
    let code = diags.first().map_or("E0000", |d| d.code.as_str());
    raise::<CompileError>(py, code, rendered, diags)
}

/// An `AttncError` with a code and message (no source location).
pub fn attnc_error(py: Python<'_>, code: &str, message: &str) -> PyErr {
    raise::<AttncError>(py, code, message, &[])
}

/// The code written into a rendered diagnostic (`error[E0303]: ...`).
fn rendered_code(rendered: &str) -> Option<&str> {
    let i = rendered.find("error[")? + "error[".len();
    let n = rendered[i..].find(']')?;
    Some(&rendered[i..i + n])
}

/// A runtime error as an exception. `locate` finds the declaration span of a capture
/// by name (for capture errors), with the source text.
pub fn runtime_error(
    py: Python<'_>,
    e: &Error,
    locate: &dyn Fn(&str) -> Option<DiagInfo>,
) -> PyErr {
    let text = e.to_string();
    let simple = |code: &str| attnc_error(py, code, &text);
    match e {
        Error::Compile { rendered, .. } => {
            let code = rendered_code(rendered).unwrap_or("E0000").to_string();
            raise::<CompileError>(py, &code, rendered, &[])
        }
        Error::Capture { name, .. } | Error::OutOfBounds { message: name, .. } => {
            let code = rendered_code(&text).unwrap_or(code::BACKEND).to_string();
            let diags: Vec<DiagInfo> = match e {
                Error::Capture { .. } => locate(name)
                    .map(|mut d| {
                        d.code = code.clone();
                        d.message = text.lines().next().unwrap_or("").to_string();
                        d
                    })
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
            raise::<AttncError>(py, &code, &text, &diags)
        }
        Error::UnknownAttention { .. } => simple(code::UNKNOWN_ATTENTION),
        Error::UnknownCapture { .. } => simple(code::UNKNOWN_CAPTURE),
        Error::Shape(_) | Error::InputShape { .. } => simple(code::INPUT_SHAPE),
        Error::InputDType { .. } => simple(code::INPUT_DTYPE),
        Error::BackendUnavailable { .. } => simple(code::DEVICE),
        Error::Io { .. } => simple(code::IO),
        // decoding's cache errors carry their own codes (E0320..E0324)
        Error::Cache { code, .. } => simple(code),
        _ => simple(code::BACKEND),
    }
}

/// Runs `f`, turning a panic into an `AttncError` (code E0900) rather than letting it
/// cross into the interpreter.
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(attnc_error(
                py,
                code::INTERNAL,
                &format!("internal error in attnc (please report it): {msg}"),
            ))
        }
    }
}
