//! Parse diagnostics: lexer errors, lalrpop's recovered and fatal errors and the depth
//! cut-offs in; a sorted, de-duplicated list of [`ParseError`]s with rustc-like messages,
//! readable `expected` lists and hints out.

use std::fmt;

use lalrpop_util::{ErrorRecovery, ParseError as LalrError};

use crate::actions::{Ctx, MAX_DEPTH};
use crate::ast::Span;
use crate::lexer::{LexError, LexErrorKind, SpannedTok, Tok};

/// One syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// Where; always within `0..=source.len()`, on `char` boundaries.
    pub span: Span,
    /// The whole message, e.g. "expected `;`, found `}`".
    pub message: String,
    /// What the parser would have accepted, each readable (`` `;` ``, `identifier`), sorted.
    pub expected: Vec<String>,
    /// Advice for a likely mistake.
    pub hint: Option<String>,
}

/// The kind of a syntax error, with a stable code (see [`ParseErrorKind::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// E0001: a character that starts no token.
    UnknownCharacter,
    /// E0002: `/*` without a matching `*/`.
    UnterminatedComment,
    /// E0003: an integer literal too large for 64 bits, or a malformed float (`1.`, `1e`).
    InvalidNumber,
    /// E0004: a token the grammar does not allow here.
    UnexpectedToken,
    /// E0005: the file ends in the middle of an item.
    UnexpectedEof,
    /// E0006: comparisons chained without parentheses, `a < b < c`.
    ChainedComparison,
    /// E0007: expressions or blocks nested deeper than the parser allows.
    NestingTooDeep,
    /// E0008: a `;` is missing (before the reported token).
    MissingSemicolon,
    /// E0009: an `if` expression without its `else` branch.
    MissingElse,
}

impl ParseErrorKind {
    /// A stable code, "E0001".."E0009".
    pub fn code(&self) -> &'static str {
        match self {
            ParseErrorKind::UnknownCharacter => "E0001",
            ParseErrorKind::UnterminatedComment => "E0002",
            ParseErrorKind::InvalidNumber => "E0003",
            ParseErrorKind::UnexpectedToken => "E0004",
            ParseErrorKind::UnexpectedEof => "E0005",
            ParseErrorKind::ChainedComparison => "E0006",
            ParseErrorKind::NestingTooDeep => "E0007",
            ParseErrorKind::MissingSemicolon => "E0008",
            ParseErrorKind::MissingElse => "E0009",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.kind.code(), self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// Everything the parse produced, turned into sorted, de-duplicated [`ParseError`]s.
pub(crate) fn collect(
    source: &str,
    tokens: &[SpannedTok],
    lex_errors: Vec<LexError>,
    ctx: Ctx,
    fatal: Option<LalrError<usize, Tok, LexError>>,
) -> Vec<ParseError> {
    let mut out = Vec::new();
    let mut unterminated_comment = false;
    for e in &lex_errors {
        out.push(lex_error(source, e));
        unterminated_comment |= e.kind == LexErrorKind::UnterminatedComment;
    }
    let parse_errors = ctx
        .recovered
        .into_iter()
        .map(|r: ErrorRecovery<usize, Tok, LexError>| r.error)
        .chain(fatal);
    for e in parse_errors {
        let is_eof = matches!(e, LalrError::UnrecognizedEof { .. });
        // The file ends inside the comment: that is the one error to report.
        if is_eof && unterminated_comment {
            continue;
        }
        // The lexer already reported the character.
        if let LalrError::UnrecognizedToken {
            token: (_, Tok::Unknown, _),
            ..
        } = &e
        {
            continue;
        }
        out.push(parse_error(source, tokens, e));
    }
    for span in ctx.too_deep {
        out.push(ParseError {
            kind: ParseErrorKind::NestingTooDeep,
            span: clamp(source, span),
            message: format!("expression nested too deeply (the limit is {MAX_DEPTH} levels)"),
            expected: Vec::new(),
            hint: Some("split it up with `let`s or helper `fn`s".to_string()),
        });
    }
    out.sort_by_key(|e| (e.span.start, e.span.end));
    out.dedup_by(|a, b| a.span.start == b.span.start && a.kind == b.kind);
    out
}

fn lex_error(source: &str, e: &LexError) -> ParseError {
    let span = clamp(source, e.span);
    let text = &source[span.range()];
    let (kind, message, hint) = match e.kind {
        LexErrorKind::UnknownCharacter => {
            let hint = match text {
                "." => {
                    // `x.abs()` (a method call, as in PyTorch) vs a malformed float
                    let after = &source[span.end..];
                    let method: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !method.is_empty() && !method.starts_with(|c: char| c.is_ascii_digit()) {
                        Some(format!(
                            "there are no methods; call the builtin as a function: `{method}(x)`"
                        ))
                    } else {
                        Some("there is no `.` operator; floats are written `1.0`".to_string())
                    }
                }
                "'" | "\"" => Some("the language has no strings or characters".to_string()),
                "^" => Some("there is no `^` operator; use `!=` for booleans".to_string()),
                "~" => Some("use `!` for logical not".to_string()),
                _ => None,
            };
            let shown = text.escape_debug();
            (
                ParseErrorKind::UnknownCharacter,
                format!("unknown character `{shown}`"),
                hint,
            )
        }
        LexErrorKind::UnterminatedComment => (
            ParseErrorKind::UnterminatedComment,
            "unterminated block comment".to_string(),
            Some("close it with `*/` (block comments nest)".to_string()),
        ),
        LexErrorKind::IntegerTooLarge if text.starts_with("0x") || text.starts_with("0X") => (
            ParseErrorKind::InvalidNumber,
            "hexadecimal literal is too large".to_string(),
            Some("hexadecimal literals hold 32 bits: at most `0xFFFF_FFFF`".to_string()),
        ),
        LexErrorKind::IntegerTooLarge => (
            ParseErrorKind::InvalidNumber,
            "integer literal is too large".to_string(),
            Some(format!(
                "integers must lie within {}..={}",
                i64::MIN,
                i64::MAX
            )),
        ),
        LexErrorKind::MalformedFloat => {
            let hint = if text.starts_with("0x") || text.starts_with("0X") {
                "write hexadecimal digits after `0x`, as in `0xFF`".to_string()
            } else if text.ends_with('.') {
                format!("write a digit after the point: `{text}0`")
            } else {
                "an exponent needs digits, as in `1e-3`".to_string()
            };
            (
                ParseErrorKind::InvalidNumber,
                format!("malformed number `{text}`"),
                Some(hint),
            )
        }
    };
    ParseError {
        kind,
        span,
        message,
        expected: Vec::new(),
        hint,
    }
}

fn parse_error(
    source: &str,
    tokens: &[SpannedTok],
    e: LalrError<usize, Tok, LexError>,
) -> ParseError {
    match e {
        LalrError::UnrecognizedEof { location, expected } => {
            let expected = readable(&expected);
            let span = clamp(source, Span::new(location, location));
            let hint = if expected.iter().any(|x| x == "`}`") {
                Some("a `}` is missing".to_string())
            } else if expected.iter().any(|x| x == "`;`") {
                Some("a `;` is missing".to_string())
            } else {
                None
            };
            ParseError {
                kind: ParseErrorKind::UnexpectedEof,
                span,
                message: format!("unexpected end of file, expected {}", summary(&expected)),
                expected,
                hint,
            }
        }
        LalrError::UnrecognizedToken {
            token: (l, tok, r),
            expected,
        } => {
            let expected = readable(&expected);
            unexpected_token(source, tokens, l, tok, r, expected)
        }
        LalrError::ExtraToken { token: (l, tok, r) } => {
            unexpected_token(source, tokens, l, tok, r, Vec::new())
        }
        LalrError::InvalidToken { location } => ParseError {
            kind: ParseErrorKind::UnexpectedToken,
            span: clamp(source, Span::new(location, location)),
            message: "invalid token".to_string(),
            expected: Vec::new(),
            hint: None,
        },
        LalrError::User { error } => lex_error(source, &error),
    }
}

fn unexpected_token(
    source: &str,
    tokens: &[SpannedTok],
    l: usize,
    tok: Tok,
    r: usize,
    expected: Vec<String>,
) -> ParseError {
    let span = clamp(source, Span::new(l, r));
    let found = tok.describe();
    let has = |s: &str| expected.iter().any(|x| x == s);
    let is_cmp = matches!(
        tok,
        Tok::EqEq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge
    );
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", summary(&expected))
    };
    let mut kind = ParseErrorKind::UnexpectedToken;
    let mut hint = None;
    if is_cmp && !has("`==`") && has("`&`") {
        return ParseError {
            kind: ParseErrorKind::ChainedComparison,
            span,
            message: "comparison operators cannot be chained".to_string(),
            expected,
            hint: Some("join the comparisons with `&&`: `a < b && b < c`".to_string()),
        };
    } else if tok == Tok::Assign && has("`==`") {
        hint = Some("use `==` to compare; `=` only binds a name".to_string());
    } else if has("`else`") && !has("`;`") {
        kind = ParseErrorKind::MissingElse;
        hint = Some("an `if` is an expression and needs an `else { ... }` branch".to_string());
    } else if has("`;`") && tok != Tok::Semi {
        // Tokens are sorted and disjoint, so their ends are sorted too.
        let before = tokens.partition_point(|t| t.2 <= l);
        let prev_end = before.checked_sub(1).map(|i| tokens[i].2);
        let on_new_line =
            prev_end.is_some_and(|p| source.get(p..l).is_some_and(|g| g.contains('\n')));
        if on_new_line || matches!(tok, Tok::RBrace | Tok::Let) || tok.starts_item() {
            kind = ParseErrorKind::MissingSemicolon;
            hint = Some(match prev_end {
                Some(p) => {
                    let prev = source.get(..p).unwrap_or("");
                    let last: String = prev
                        .chars()
                        .rev()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    let last: String = last.chars().rev().collect();
                    format!("add `;` after `{last}`")
                }
                None => "add `;` here".to_string(),
            });
        }
    } else if tok.is_keyword() && has("identifier") {
        let word = tok.spelling().unwrap_or("");
        hint = Some(format!(
            "`{word}` is a keyword and cannot be used as a name"
        ));
    } else if tok == Tok::Semi && has("`}`") && !has("`;`") {
        hint = Some("the last expression of a block is its value and takes no `;`".to_string());
    }
    ParseError {
        kind,
        span,
        message,
        expected,
        hint,
    }
}

/// lalrpop's terminal names to how they read in source, de-duplicated and sorted.
fn readable(expected: &[String]) -> Vec<String> {
    let mut out: Vec<String> = expected
        .iter()
        .filter_map(|name| {
            Some(match name.as_str() {
                "Ident" => "identifier".to_string(),
                "Int" => "integer".to_string(),
                "Float" => "float".to_string(),
                "BadNumber" | "Unknown" => return None,
                quoted => {
                    let inner = quoted.strip_prefix('"').and_then(|s| s.strip_suffix('"'));
                    format!("`{}`", inner.unwrap_or(quoted))
                }
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

const OPERATORS: &[&str] = &[
    "`+`", "`-`", "`*`", "`/`", "`%`", "`==`", "`!=`", "`<`", "`<=`", "`>`", "`>=`", "`&`", "`|`",
    "`&&`", "`||`", "`as`",
];
const EXPR_STARTS: &[&str] = &[
    "integer",
    "float",
    "identifier",
    "`true`",
    "`false`",
    "`(`",
    "`-`",
    "`!`",
    "`if`",
    "`{`",
];

/// A short reading of an `expected` list: expression starts read "an expression" and binary
/// operators "an operator" when most of them are there.
fn summary(expected: &[String]) -> String {
    let has = |s: &str| expected.iter().any(|x| x == s);
    let expr = has("integer") && has("`(`");
    let op = has("`+`") && has("`*`");
    let mut words: Vec<String> = expected
        .iter()
        .filter(|x| !(expr && EXPR_STARTS.contains(&x.as_str())))
        .filter(|x| !(op && OPERATORS.contains(&x.as_str())))
        .cloned()
        .collect();
    if expr {
        words.push("an expression".to_string());
    }
    if op {
        words.push("an operator".to_string());
    }
    match words.len() {
        0 => "nothing".to_string(),
        1 => words.remove(0),
        _ => format!("one of {}", words.join(", ")),
    }
}

/// Clamps a span into the source, on `char` boundaries.
fn clamp(source: &str, span: Span) -> Span {
    let len = source.len();
    let mut s = span.start.min(len);
    while !source.is_char_boundary(s) {
        s -= 1;
    }
    let mut e = span.end.clamp(s, len);
    while !source.is_char_boundary(e) {
        e += 1;
    }
    Span::new(s, e)
}
