//! The lexer: source text in, a list of [`SpannedTok`]s and a list of [`LexError`]s out.
//!
//! Built on logos. Whitespace, `//` line comments and `/* */` block comments (which nest,
//! as in Rust) are skipped. A character that starts no token, an unterminated block
//! comment and a malformed or out-of-range number are reported as [`LexError`]s and lexing
//! goes on after them; a bad number still yields a [`Tok::BadNumber`] token so that the
//! parser sees an operand where the user wrote one. Every span lies on `char` boundaries
//! within `0..=source.len()`.

use std::fmt;

use logos::Logos;

use crate::ast::Span;

/// What went wrong while lexing; the payload of logos' error token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LexErrorKind {
    /// A character that starts no token.
    #[default]
    UnknownCharacter,
    /// `/*` without its matching `*/`.
    UnterminatedComment,
    /// An integer literal that does not fit in an `i64`.
    IntegerTooLarge,
    /// `1.` (no digit after the point), `1e` / `1e+` (no exponent digits) and the like.
    MalformedFloat,
}

/// A lexing error with the span of the offending text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LexError {
    pub kind: LexErrorKind,
    pub span: Span,
}

/// One token. Literal tokens carry their value; identifiers their text.
#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(error = LexErrorKind)]
#[logos(skip r"[ \t\r\n\f\v]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Tok {
    #[token("/*", block_comment)]
    BlockComment,

    #[token("const")]
    Const,
    #[token("param")]
    Param,
    #[token("tensor")]
    Tensor,
    #[token("fn")]
    Fn,
    #[token("mask")]
    Mask,
    #[token("score")]
    Score,
    #[token("attention")]
    Attention,
    #[token("let")]
    Let,
    #[token("if")]
    If,
    #[token("else")]
    Else,
    #[token("as")]
    As,
    #[token("true")]
    True,
    #[token("false")]
    False,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string())]
    Ident(String),

    /// A decimal integer literal, `_` separators allowed; or a hexadecimal one (`0x`, up
    /// to 32 bits: `0x8000_0000` and above denote the i32 of that bit pattern, negative).
    #[regex(r"[0-9][0-9_]*", parse_int)]
    #[regex(r"0[xX][0-9a-fA-F_]*", parse_hex)]
    Int(i64),

    /// `1.5`, `1.5e-3`, `2E10`, `1_000.0`.
    #[regex(r"[0-9][0-9_]*\.[0-9][0-9_]*([eE][+-]?_*[0-9][0-9_]*)?", parse_float)]
    #[regex(r"[0-9][0-9_]*[eE][+-]?_*[0-9][0-9_]*", parse_float)]
    Float(f64),

    /// A number that could not be read (reported as a [`LexError`] by [`lex`]); the parser
    /// treats it as an operand.
    #[regex(r"[0-9][0-9_]*\.", malformed_float)]
    #[regex(r"[0-9][0-9_]*(\.[0-9][0-9_]*)?[eE][+-]?_*", malformed_float)]
    BadNumber,

    /// A character that starts no token (reported as a [`LexError`] by [`lex`]). The parser
    /// reads it as an unknown binary operator, so that `a $ b` yields just the one error.
    Unknown,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token("->")]
    Arrow,
    #[token("=")]
    Assign,
    #[token("==")]
    EqEq,
    #[token("!=")]
    Ne,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("!")]
    Bang,
    #[token("&&")]
    AndAnd,
    #[token("||")]
    OrOr,
    #[token("&")]
    And,
    #[token("|")]
    Or,
    #[token("^")]
    Caret,
    #[token("<<")]
    Shl,
    #[token(">>")]
    Shr,
}

/// Skips a (nested) block comment whose `/*` was just matched.
fn block_comment(lex: &mut logos::Lexer<Tok>) -> Result<logos::Skip, LexErrorKind> {
    let rest = lex.remainder().as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < rest.len() {
        if rest[i] == b'*' && rest.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                lex.bump(i);
                return Ok(logos::Skip);
            }
        } else if rest[i] == b'/' && rest.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    // `i` is `rest.len()` here, a char boundary.
    lex.bump(rest.len());
    Err(LexErrorKind::UnterminatedComment)
}

fn malformed_float(_: &mut logos::Lexer<Tok>) -> Result<(), LexErrorKind> {
    Err(LexErrorKind::MalformedFloat)
}

fn parse_int(lex: &mut logos::Lexer<Tok>) -> Result<i64, LexErrorKind> {
    let digits: String = lex.slice().chars().filter(|&c| c != '_').collect();
    digits
        .parse::<i64>()
        .map_err(|_| LexErrorKind::IntegerTooLarge)
}

fn parse_hex(lex: &mut logos::Lexer<Tok>) -> Result<i64, LexErrorKind> {
    let digits: String = lex.slice()[2..].chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return Err(LexErrorKind::MalformedFloat);
    }
    // a 32-bit pattern: its i32 value (so that masks such as 0xFFFF_0000 are what C and
    // PyTorch's int32 tensors make of them)
    u32::from_str_radix(&digits, 16)
        .map(|x| x as i32 as i64)
        .map_err(|_| LexErrorKind::IntegerTooLarge)
}

fn parse_float(lex: &mut logos::Lexer<Tok>) -> Result<f64, LexErrorKind> {
    let text: String = lex.slice().chars().filter(|&c| c != '_').collect();
    text.parse::<f64>()
        .map_err(|_| LexErrorKind::MalformedFloat)
}

/// A token with its byte span `start..end`, in the triple form lalrpop expects.
pub type SpannedTok = (usize, Tok, usize);

/// Lexes the whole source. Never fails: errors are returned beside the tokens. A bad
/// number becomes a [`Tok::BadNumber`] token, an unknown character a [`Tok::Unknown`]
/// token; an unterminated comment yields no token.
pub fn lex(source: &str) -> (Vec<SpannedTok>, Vec<LexError>) {
    let mut toks = Vec::new();
    let mut errors = Vec::new();
    let mut lexer = Tok::lexer(source);
    while let Some(result) = lexer.next() {
        let range = lexer.span();
        let span = char_span(source, range.start, range.end);
        match result {
            Ok(tok) => toks.push((span.start, tok, span.end)),
            Err(kind) => {
                errors.push(LexError { kind, span });
                match kind {
                    LexErrorKind::IntegerTooLarge | LexErrorKind::MalformedFloat => {
                        toks.push((span.start, Tok::BadNumber, span.end));
                    }
                    LexErrorKind::UnknownCharacter => {
                        toks.push((span.start, Tok::Unknown, span.end));
                    }
                    LexErrorKind::UnterminatedComment => {}
                }
            }
        }
    }
    (toks, errors)
}

/// Widens `start..end` to `char` boundaries, clamped to the source, and never empty
/// unless at the end of the source.
fn char_span(source: &str, start: usize, end: usize) -> Span {
    let len = source.len();
    let mut s = start.min(len);
    while !source.is_char_boundary(s) {
        s -= 1;
    }
    let mut e = end.clamp(s, len);
    if e == s && s < len {
        e += 1;
    }
    while !source.is_char_boundary(e) {
        e += 1;
    }
    Span::new(s, e)
}

impl Tok {
    /// How the token is written, for messages: `` `;` ``, `` `let` ``, `identifier `x``.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(name) => format!("identifier `{name}`"),
            Tok::Int(v) => format!("integer `{v}`"),
            Tok::Float(v) => format!("float `{v:?}`"),
            Tok::BadNumber => "malformed number".to_string(),
            Tok::Unknown => "unknown character".to_string(),
            Tok::BlockComment => "comment".to_string(),
            other => match other.spelling() {
                Some(s) if other.is_keyword() => format!("keyword `{s}`"),
                Some(s) => format!("`{s}`"),
                None => format!("{other:?}"),
            },
        }
    }

    /// The fixed spelling of keywords and punctuation; `None` for tokens with a value.
    pub fn spelling(&self) -> Option<&'static str> {
        Some(match self {
            Tok::Const => "const",
            Tok::Param => "param",
            Tok::Tensor => "tensor",
            Tok::Fn => "fn",
            Tok::Mask => "mask",
            Tok::Score => "score",
            Tok::Attention => "attention",
            Tok::Let => "let",
            Tok::If => "if",
            Tok::Else => "else",
            Tok::As => "as",
            Tok::True => "true",
            Tok::False => "false",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Semi => ";",
            Tok::Colon => ":",
            Tok::Arrow => "->",
            Tok::Assign => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Bang => "!",
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            Tok::And => "&",
            Tok::Or => "|",
            Tok::Caret => "^",
            Tok::Shl => "<<",
            Tok::Shr => ">>",
            Tok::Ident(_)
            | Tok::Int(_)
            | Tok::Float(_)
            | Tok::BadNumber
            | Tok::Unknown
            | Tok::BlockComment => {
                return None;
            }
        })
    }

    pub fn is_keyword(&self) -> bool {
        self.starts_item()
            || matches!(
                self,
                Tok::Let | Tok::If | Tok::Else | Tok::As | Tok::True | Tok::False
            )
    }

    /// Keywords that start an item.
    pub fn starts_item(&self) -> bool {
        matches!(
            self,
            Tok::Const
                | Tok::Param
                | Tok::Tensor
                | Tok::Fn
                | Tok::Mask
                | Tok::Score
                | Tok::Attention
        )
    }
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(name) => f.write_str(name),
            Tok::Int(v) => write!(f, "{v}"),
            Tok::Float(v) => write!(f, "{v:?}"),
            other => f.write_str(other.spelling().unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LexErrorKind, Tok, lex};
    use crate::ast::Span;

    fn toks(src: &str) -> Vec<Tok> {
        let (t, e) = lex(src);
        assert!(e.is_empty(), "{e:?}");
        t.into_iter().map(|(_, t, _)| t).collect()
    }

    #[test]
    fn keywords_identifiers_and_punctuation() {
        use Tok::*;
        assert_eq!(
            toks("const param tensor fn mask score attention let if else as true false"),
            [
                Const, Param, Tensor, Fn, Mask, Score, Attention, Let, If, Else, As, True, False
            ]
        );
        assert_eq!(
            toks("constant _x x1 fn_"),
            [
                Ident("constant".into()),
                Ident("_x".into()),
                Ident("x1".into()),
                Ident("fn_".into())
            ]
        );
        assert_eq!(
            toks("( ) { } [ ] , ; : -> = == != < <= > >= + - * / % ! && || & | ^ << >>"),
            [
                LParen, RParen, LBrace, RBrace, LBracket, RBracket, Comma, Semi, Colon, Arrow,
                Assign, EqEq, Ne, Lt, Le, Gt, Ge, Plus, Minus, Star, Slash, Percent, Bang, AndAnd,
                OrOr, And, Or, Caret, Shl, Shr
            ]
        );
        assert_eq!(
            toks("a<=-b"),
            [Ident("a".into()), Le, Minus, Ident("b".into())]
        );
    }

    #[test]
    fn numbers() {
        use Tok::*;
        assert_eq!(
            toks("0 42 1_000 1.5 1e-3 2.5E+3 7e2 1_0.2_5"),
            [
                Int(0),
                Int(42),
                Int(1000),
                Float(1.5),
                Float(1e-3),
                Float(2500.0),
                Float(700.0),
                Float(10.25)
            ]
        );
        assert_eq!(toks("9223372036854775807"), [Int(i64::MAX)]);
        assert_eq!(
            toks("0x55555555 0xFF_FF 0X10 0xFFFFFFFF 0x8000_0000"),
            [
                Int(0x5555_5555),
                Int(0xFFFF),
                Int(16),
                Int(-1),
                Int(i32::MIN as i64)
            ]
        );
        let (t, e) = lex("99999999999999999999 1. 1e+ 3");
        assert_eq!(
            e.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [
                LexErrorKind::IntegerTooLarge,
                LexErrorKind::MalformedFloat,
                LexErrorKind::MalformedFloat
            ]
        );
        assert_eq!(e[1].span, Span::new(21, 23));
        assert_eq!(
            t.into_iter().map(|(_, t, _)| t).collect::<Vec<_>>(),
            [BadNumber, BadNumber, BadNumber, Int(3)]
        );
    }

    #[test]
    fn comments_and_spans() {
        let (t, e) = lex("a // line\n/* block /* nested */ still */ b");
        assert!(e.is_empty());
        assert_eq!(
            t,
            [
                (0, Tok::Ident("a".into()), 1),
                (41, Tok::Ident("b".into()), 42)
            ]
        );
        let (t, e) = lex("a /* open /* */");
        assert_eq!(t.len(), 1);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, LexErrorKind::UnterminatedComment);
        assert_eq!(e[0].span, Span::new(2, 15));
    }

    #[test]
    fn unknown_characters_keep_going() {
        let src = "a $ é b";
        let (t, e) = lex(src);
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.kind == LexErrorKind::UnknownCharacter));
        assert_eq!(&src[e[1].span.range()], "é");
        let kinds: Vec<Tok> = t.into_iter().map(|(_, t, _)| t).collect();
        assert_eq!(
            kinds,
            [
                Tok::Ident("a".into()),
                Tok::Unknown,
                Tok::Unknown,
                Tok::Ident("b".into())
            ]
        );
    }
}
