//! Debug helper: a file path (or stdin) in, the parsed tree and errors printed out.
use std::io::Read;

fn main() {
    let mut src = String::new();
    match std::env::args().nth(1) {
        Some(p) => src = std::fs::read_to_string(p).expect("read"),
        None => {
            std::io::stdin().read_to_string(&mut src).expect("stdin");
        }
    }
    let (file, errors) = attnc_grammar::parse(&src);
    println!("{file:#?}");
    for e in errors {
        println!("{:?} {e}\n  expected: {:?}", e.span, e.expected);
    }
}
