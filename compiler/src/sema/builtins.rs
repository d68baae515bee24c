//! The builtin functions of the language and their signatures.
//!
//! In: a call's name and argument count. Out: whether it is a builtin, and how many
//! arguments it takes. Lowering (`lower.rs`) turns each into IR operations.

/// Every builtin: (name, number of arguments, description for the docs and hints).
pub(crate) const BUILTINS: &[(&str, usize, &str)] = &[
    ("abs", 1, "abs(x): |x| for i32 or f32"),
    ("min", 2, "min(a, b): the smaller, i32 or f32"),
    ("max", 2, "max(a, b): the larger, i32 or f32"),
    (
        "clamp",
        3,
        "clamp(x, lo, hi) = min(max(x, lo), hi), i32 or f32",
    ),
    ("exp", 1, "exp(x), f32"),
    ("exp2", 1, "exp2(x) = 2^x, f32"),
    ("log", 1, "log(x), natural logarithm, f32"),
    ("log2", 1, "log2(x), f32"),
    ("sqrt", 1, "sqrt(x), f32"),
    ("tanh", 1, "tanh(x), f32"),
    ("sigmoid", 1, "sigmoid(x) = 1 / (1 + exp(-x)), f32"),
    ("floor", 1, "floor(x), f32 -> f32"),
    ("ceil", 1, "ceil(x), f32 -> f32"),
    ("pow", 2, "pow(a, b) = a^b, f32"),
    (
        "select",
        3,
        "select(c, a, b): a if c else b, evaluating both",
    ),
];

pub(crate) fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|(n, _, _)| *n == name)
}

pub(crate) fn arity(name: &str) -> Option<usize> {
    BUILTINS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, _)| *a)
}

/// How to write a PyTorch function that FlexAttention mods often use, when it is not a
/// builtin under that name.
pub(crate) fn pytorch_equivalent(name: &str) -> Option<String> {
    let h = match name {
        "where" => "write `if c { a } else { b }` (or `select(c, a, b)`, which evaluates both)",
        "minimum" | "fmin" => "use `min(a, b)`",
        "maximum" | "fmax" => "use `max(a, b)`",
        "clip" => "use `clamp(x, lo, hi)`",
        "rsqrt" => "write `1.0 / sqrt(x)`",
        "log1p" => "write `log(1.0 + x)`",
        "expm1" => "write `exp(x) - 1.0`",
        "square" => "write `x * x`",
        "floor_divide" | "div" => "integer `/` is floor division, as in PyTorch: `a / b`",
        "remainder" | "fmod" | "mod" => {
            "integer `%` is the floor remainder, as in PyTorch: `a % b`"
        }
        "logical_and" => "use `&&` (or `&`)",
        "logical_or" => "use `||` (or `|`)",
        "logical_not" => "use `!`",
        "to" | "float" | "int" | "long" => "convert with `as f32` or `as i32`",
        _ => return None,
    };
    Some(format!("`{name}` is not a builtin here; {h}"))
}
