//! Source diagnostics: what every error of the front end becomes.
//!
//! In: errors found by the parser, name resolution, type checking and bind-time checks,
//! each with a [`Span`]. Out: [`Diagnostic`] values, and their rustc-like rendering
//! through codespan-reporting ([`render`]).

use attnc_grammar::ast::Span;
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One message about the user's source.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable code, e.g. `E0201`; docs/language.md explains each.
    pub code: &'static str,
    pub message: String,
    /// Where the problem is.
    pub span: Span,
    /// Text under the primary span (may be empty).
    pub label: String,
    /// Other places worth pointing at.
    pub secondary: Vec<(Span, String)>,
    /// A suggestion on how to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            hint: None,
        }
    }
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
    pub fn with_secondary(mut self, span: Span, label: impl Into<String>) -> Self {
        self.secondary.push((span, label.into()));
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error[{}]: {} (at bytes {}..{})",
            self.code, self.message, self.span.start, self.span.end
        )
    }
}

fn clamp(span: Span, len: usize) -> std::ops::Range<usize> {
    let start = span.start.min(len);
    let end = span.end.clamp(start, len);
    start..end
}

/// Renders diagnostics like rustc, as plain text. Spans outside the source are clamped
/// (never panics).
pub fn render(diags: &[Diagnostic], file_name: &str, source: &str) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config::default();
    let mut out = String::new();
    for d in diags {
        let mut labels =
            vec![Label::primary((), clamp(d.span, source.len())).with_message(d.label.clone())];
        for (s, l) in &d.secondary {
            labels.push(Label::secondary((), clamp(*s, source.len())).with_message(l.clone()));
        }
        let mut cs = match d.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_code(d.code)
        .with_message(d.message.clone())
        .with_labels(labels);
        if let Some(h) = &d.hint {
            cs = cs.with_notes(vec![format!("hint: {h}")]);
        }
        let mut text = String::new();
        let _ = term::emit_to_string(&mut text, &config, &file, &cs);
        out.push_str(&text);
    }
    out
}
