//! Source diagnostics: what every error of the front end becomes.
//!
//! In: errors found by the parser, name resolution, type checking and bind-time checks,
//! each with a [`Span`]. Out: [`Diagnostic`] values, and their rustc-like rendering
//! through codespan-reporting ([`render`]).

use attnc_grammar::ast::Span;
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::{Error as FilesError, Location};
use codespan_reporting::term::{self, Config, termcolor};

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

/// At most this many diagnostics are rendered; the rest are counted in one line.
pub const MAX_RENDERED: usize = 50;

/// Source lines longer than this (in bytes) are shown as a window around the labels.
pub const LINE_WINDOW: usize = 160;

/// Renders diagnostics like rustc, as plain text unless [`set_color`] switched colour
/// on. At most [`MAX_RENDERED`] are shown,
/// then a count of the others; lines longer than [`LINE_WINDOW`] bytes are cut to a
/// window around the label (line and column numbers stay those of the file). Spans
/// outside the source are clamped (never panics).
/// With [`render`]'s colour switched on by [`set_color`] (the CLI's `--color`).
pub fn render(diags: &[Diagnostic], file_name: &str, source: &str) -> String {
    let color = COLOR.load(std::sync::atomic::Ordering::Relaxed);
    render_styled(diags, file_name, source, color)
}

static COLOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`render`] colours diagnostics (ANSI escapes), process-wide; default off.
pub fn set_color(on: bool) {
    COLOR.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// [`render`], with ANSI colours when `color` is set (for a terminal).
pub fn render_styled(diags: &[Diagnostic], file_name: &str, source: &str, color: bool) -> String {
    let config = Config::default();
    let lines = LineStarts::new(source);
    let mut out = Vec::new();
    for d in diags.iter().take(MAX_RENDERED) {
        let mut spans = vec![clamp(d.span, source.len())];
        spans.extend(d.secondary.iter().map(|(s, _)| clamp(*s, source.len())));
        let file = Windowed::new(file_name, source, &lines, &spans);
        let mut labels =
            vec![Label::primary((), file.map(&spans[0])).with_message(d.label.clone())];
        for ((_, l), r) in d.secondary.iter().zip(&spans[1..]) {
            labels.push(Label::secondary((), file.map(r)).with_message(l.clone()));
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
        if color {
            let mut buf = termcolor::Buffer::ansi();
            let styles = term::Styles::default();
            let mut w = term::StylesWriter::new(&mut buf, &styles);
            let _ = term::emit_to_write_style(&mut w, &config, &file, &cs);
            out.extend_from_slice(buf.as_slice());
        } else {
            let _ = term::emit_to_io_write(&mut out, &config, &file, &cs);
        }
    }
    let mut out = String::from_utf8_lossy(&out).into_owned();
    if diags.len() > MAX_RENDERED {
        let more = diags.len() - MAX_RENDERED;
        let errors = diags[MAX_RENDERED..]
            .iter()
            .filter(|d| d.is_error())
            .count();
        out.push_str(&format!(
            "note: {more} more diagnostic{} not shown ({errors} error{}); fix the ones above first\n\n",
            if more == 1 { "" } else { "s" },
            if errors == 1 { "" } else { "s" },
        ));
    }
    out
}

/// Byte offsets where the source's lines start.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(source: &str) -> Self {
        LineStarts(codespan_reporting::files::line_starts(source).collect())
    }
    /// The line holding byte `at`.
    fn line(&self, at: usize) -> usize {
        self.0.partition_point(|&s| s <= at).saturating_sub(1)
    }
}

/// The source as one diagnostic shows it: lines the labels touch are kept (cut to a
/// window of [`LINE_WINDOW`] bytes around the labels when longer, with `...` at cut
/// ends), every other line is left empty, so line numbers are the file's; reported
/// columns are mapped back to the file too.
struct Windowed<'s> {
    name: &'s str,
    original: &'s str,
    lines: &'s LineStarts,
    text: String,
    /// (start in `text`, start in `original`, length) of each kept piece, ascending.
    pieces: Vec<(usize, usize, usize)>,
}

impl<'s> Windowed<'s> {
    fn new(
        name: &'s str,
        original: &'s str,
        lines: &'s LineStarts,
        spans: &[std::ops::Range<usize>],
    ) -> Self {
        // per touched line: the byte range of it to keep
        let mut keep: Vec<(usize, usize, usize)> = Vec::new(); // (line, from, to)
        for r in spans {
            let (first, last) = (lines.line(r.start), lines.line(r.end));
            for line in first..=last {
                let ls = lines.0[line];
                let le = lines.0.get(line + 1).copied().unwrap_or(original.len());
                let le = if original[ls..le].ends_with('\n') {
                    le - 1
                } else {
                    le
                };
                let (from, to) = if le - ls <= LINE_WINDOW {
                    (ls, le)
                } else {
                    let a = r.start.clamp(ls, le);
                    let b = r.end.clamp(a, le).min(a + LINE_WINDOW / 2);
                    let from = a.saturating_sub(LINE_WINDOW / 4).max(ls);
                    let to = (b + LINE_WINDOW / 4).min(le).max(from);
                    (floor_char(original, from), ceil_char(original, to))
                };
                match keep.iter_mut().find(|k| k.0 == line) {
                    Some(k) => {
                        k.1 = k.1.min(from);
                        k.2 = k.2.max(to);
                    }
                    None => keep.push((line, from, to)),
                }
            }
        }
        keep.sort_unstable();
        // a single line between two shown ones is printed by the renderer: keep it too
        let gaps: Vec<usize> = keep
            .windows(2)
            .filter(|w| w[1].0 == w[0].0 + 2)
            .map(|w| w[0].0 + 1)
            .collect();
        for line in gaps {
            let ls = lines.0[line];
            let le = lines.0.get(line + 1).copied().unwrap_or(original.len());
            let le = if original[ls..le].ends_with('\n') {
                le - 1
            } else {
                le
            };
            keep.push((line, ls, ceil_char(original, le.min(ls + LINE_WINDOW))));
        }
        keep.sort_unstable();
        let mut text = String::new();
        let mut pieces = Vec::new();
        let mut line = 0;
        for (l, from, to) in keep {
            while line < l {
                text.push('\n');
                line += 1;
            }
            let (ls, le) = (
                lines.0[l],
                lines.0.get(l + 1).copied().unwrap_or(original.len()),
            );
            if from > ls {
                text.push_str("...");
            }
            pieces.push((text.len(), from, to - from));
            text.push_str(&original[from..to]);
            if to < le && !original[to..le].trim_end_matches(['\n', '\r']).is_empty() {
                text.push_str("...");
            }
        }
        Windowed {
            name,
            original,
            lines,
            text,
            pieces,
        }
    }

    /// A byte range of the original as a range of the shown text.
    fn map(&self, r: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let one = |at: usize| {
            for &(t, o, n) in &self.pieces {
                if at <= o + n {
                    return t + at.saturating_sub(o).min(n);
                }
            }
            self.text.len()
        };
        let a = one(r.start);
        a..one(r.end).max(a)
    }

    /// A byte offset of the shown text back in the original.
    fn unmap(&self, at: usize) -> usize {
        let mut best = 0;
        for &(t, o, n) in &self.pieces {
            if at >= t {
                best = o + (at - t).min(n);
            }
        }
        best
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

impl<'a> codespan_reporting::files::Files<'a> for Windowed<'a> {
    type FileId = ();
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, (): ()) -> Result<&'a str, FilesError> {
        Ok(self.name)
    }
    fn source(&'a self, (): ()) -> Result<&'a str, FilesError> {
        Ok(&self.text)
    }
    fn line_index(&'a self, (): (), byte_index: usize) -> Result<usize, FilesError> {
        Ok(self.text[..byte_index.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count())
    }
    fn line_range(
        &'a self,
        (): (),
        line_index: usize,
    ) -> Result<std::ops::Range<usize>, FilesError> {
        let mut start = 0;
        for _ in 0..line_index {
            match self.text[start..].find('\n') {
                Some(i) => start += i + 1,
                None => {
                    return Err(FilesError::LineTooLarge {
                        given: line_index,
                        max: line_index,
                    });
                }
            }
        }
        let end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i + 1);
        Ok(start..end)
    }
    fn location(&'a self, (): (), byte_index: usize) -> Result<Location, FilesError> {
        // the file's own line and column
        let at = self.unmap(byte_index);
        let line = self.lines.line(at);
        let col = self.original[self.lines.0[line]..at].chars().count();
        Ok(Location {
            line_number: line + 1,
            column_number: col + 1,
        })
    }
}
