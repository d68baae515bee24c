#[test]
fn smoke() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/document_alibi.attn"
    ))
    .unwrap();
    match attnc_compiler::compile_source(&src) {
        Ok(m) => {
            for p in &m.programs {
                println!("{}", attnc_compiler::ir::write_program(p));
            }
        }
        Err(d) => panic!("{}", attnc_compiler::render(&d, "x.attn", &src)),
    }
    let bad = "mask m(b,h,q,kv) { q + 1.5 }\nscore s(s,b,h,q,kv) { s + q }\nattention a { mask = m; score = nope; }";
    let d = attnc_compiler::compile_source(bad).unwrap_err();
    println!("{}", attnc_compiler::render(&d, "bad.attn", bad));
}
