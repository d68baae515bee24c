//! Which kernels compute their kv loop bounds from the closed form of the mask, and
//! whether those bounds are the analysis's. Runs without a GPU: the kernel's arithmetic is
//! run on the host (`bounds::row_range`, the same code the kernel emits as LLVM IR) and
//! compared with `ClosedForm::row` and with the block maps the table path and the CPU
//! backend get from `build_block_maps`; runtime/tests/gpu.rs runs both kinds of kernel.

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap, BlockMapBuilder};
use attnc_compiler::analysis::classify::{
    BlockError, MaskInfo, build_block_maps, closed_form_bounds,
};
use attnc_compiler::analysis::linear::ClosedForm;
use attnc_compiler::backend::llvm::bounds::row_range;
use attnc_compiler::backend::llvm::{
    Arch, EmitText, InputType, KernelParam, KernelSpec, KvBounds, LlvmError, PtxKernel, PtxOptions,
};
use attnc_compiler::interp::Bindings;
use attnc_compiler::ir::{Program, Scalar};
use attnc_compiler::shape::Shape;
mod common;

use common::example_files;

use attnc_compiler::backend::KernelKind;
use attnc_compiler::plan::Plan;

/// The plan's mask analysis of `p`.
fn analyze(p: &Program) -> MaskInfo {
    Plan::new(p).mask().clone()
}

/// The forward kernel's launch description.
fn layout(p: &Program, opts: &PtxOptions) -> Result<KernelSpec, LlvmError> {
    attnc_compiler::backend::llvm::spec(&Plan::new(p), KernelKind::Forward, opts)
}

/// The forward kernel.
fn emit(p: &Program, opts: &PtxOptions) -> Result<PtxKernel, LlvmError> {
    attnc_compiler::backend::llvm::generate(
        &Plan::new(p),
        KernelKind::Forward,
        opts,
        EmitText::PtxAndLlvm,
    )
    .map(|(k, _)| k)
}

fn examples() -> Vec<Program> {
    let mut v = Vec::new();
    for path in example_files() {
        let src = std::fs::read_to_string(&path).unwrap();
        v.extend(
            attnc_compiler::compile_source(&src)
                .expect("examples compile")
                .programs,
        );
    }
    v
}

fn one(src: &str) -> Program {
    attnc_compiler::compile_source(src)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .programs
        .remove(0)
}

/// The attentions of examples/ that take the closed-form path: no mask, or a mask that
/// is a conjunction of linear constraints in q and kv (causal, sliding window).
const CLOSED: &[&str] = &[
    "alibi",
    "alibi_causal",
    "alibi_softcap_causal",
    "causal_attention",
    "dense",
    "learned_bias",
    "relative_bias_table",
    "sliding_window",
    "softcap",
    "softcap_causal",
    "softcap_sliding",
    "t5_decoder",
    "t5_encoder",
];

#[test]
fn examples_take_the_expected_kv_bounds_path() {
    let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
    let mut closed = Vec::new();
    let mut table = Vec::new();
    for p in examples() {
        let k = layout(&p, &opts).unwrap();
        let has_table = k.params.contains(&KernelParam::RowStart);
        let offsets = k
            .params
            .iter()
            .filter(|x| matches!(x, KernelParam::KvOffset(_)))
            .count();
        match &k.kv_bounds {
            KvBounds::ClosedForm(cf) => {
                assert!(
                    !has_table && !k.params.contains(&KernelParam::Runs),
                    "{}",
                    p.name
                );
                assert_eq!(offsets, cf.constraints.len(), "{}", p.name);
                assert_eq!(
                    k.params.contains(&KernelParam::KvAllPartial),
                    p.mask.is_some(),
                    "{}",
                    p.name
                );
                // the same closed form the analysis derives (or none for no mask)
                match &p.mask {
                    Some(_) => assert_eq!(analyze(&p).closed_form.as_ref(), Some(cf)),
                    None => assert!(cf.constraints.is_empty()),
                }
                closed.push(p.name.clone());
            }
            KvBounds::Table => {
                assert!(has_table && offsets == 0, "{}", p.name);
                assert!(p.mask.is_some(), "{}: a dense kernel reads a table", p.name);
                table.push(p.name.clone());
            }
        }
        // forcing the table path works for every program
        let forced = layout(
            &p,
            &PtxOptions {
                kv_table: true,
                ..opts
            },
        )
        .unwrap();
        assert_eq!(forced.kv_bounds, KvBounds::Table);
        assert!(forced.params.contains(&KernelParam::RowStart));
    }
    closed.sort();
    assert_eq!(closed, CLOSED, "closed-form kernels");
    // prefix-LM (an `|`), chunked (division), documents (tensors) ... keep the table
    for name in ["prefix_lm", "chunked_causal", "document_causal", "natten"] {
        assert!(table.iter().any(|t| t == name), "{name} in {table:?}");
    }
}

#[test]
fn emitted_kernels_record_their_kv_bounds() {
    let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
    let causal = one("mask c(b, h, q, kv) { q >= kv } attention a { mask = c; }");
    let k = emit(&causal, &opts).unwrap();
    assert!(k.kv_bounds.is_closed_form());
    assert_eq!(k.spec, layout(&causal, &opts).unwrap());
    // the closed-form kernel has an i64 offset param and no CSR table; the forced table
    // kernel the other way round
    let params = |ptx: &str| {
        ptx.lines()
            .filter(|l| l.trim_start().starts_with(".param"))
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };
    let cf = params(&k.ptx);
    let table = emit(
        &causal,
        &PtxOptions {
            kv_table: true,
            ..opts
        },
    )
    .unwrap();
    let tp = params(&table.ptx);
    assert_eq!(cf.len(), k.params.len());
    assert_eq!(tp.len(), table.params.len());
    assert!(
        cf.iter().filter(|l| l.contains(".u64")).count()
            < tp.iter().filter(|l| l.contains(".u64")).count()
    );
    assert_ne!(k.ptx, table.ptx);
    // coefficients beyond the i64-safe limit fall back to the table
    let steep = one("mask c(b, h, q, kv) { q * 2000000000 >= kv } attention a { mask = c; }");
    assert!(analyze(&steep).closed_form.is_some());
    assert_eq!(layout(&steep, &opts).unwrap().kv_bounds, KvBounds::Table);
}

/// The CSR map a closed-form kernel walks, from the host model of its arithmetic.
fn kernel_map(
    coefs: &[(i64, i64)],
    bounds: &[attnc_compiler::analysis::linear::Bound],
    lq: usize,
    lkv: usize,
    qb: usize,
    kvb: usize,
) -> BlockMap {
    let mut bld = BlockMapBuilder::new(lq, lkv, qb, kvb);
    for i in 0..lq.div_ceil(qb) {
        let q0 = (i * qb) as i64;
        let q1 = (((i + 1) * qb).min(lq) - 1) as i64;
        let r = row_range(coefs, bounds, q0, q1, lkv, kvb);
        let exact = ClosedForm::row(bounds, q0, q1, lkv, kvb);
        assert_eq!(r, exact, "q block {i} of {lq}x{lkv} ({qb}x{kvb})");
        assert!(r.first <= r.full_first && r.full_first <= r.full_end && r.full_end <= r.end);
        bld.push_run(r.first, r.full_first, BlockKind::Partial);
        bld.push_run(r.full_first, r.full_end, BlockKind::Full);
        bld.push_run(r.full_end, r.end, BlockKind::Partial);
        bld.end_row();
    }
    bld.finish()
}

#[test]
fn kernel_ranges_equal_the_analysis_on_closed_form_masks() {
    let extra = [
        // first rows fully masked (q < 5), Lq != Lkv
        "mask m(b, h, q, kv) { q - kv >= 5 } attention late_start { mask = m; }",
        // last rows fully masked
        "mask m(b, h, q, kv) { kv > q + 5 } attention strictly_ahead { mask = m; }",
        // a band with a param offset and a steeper slope
        "param off: i32; mask m(b, h, q, kv) { 2 * kv <= 3 * q + off && kv + 7 >= q } attention band { mask = m; }",
        // a q-only constraint: rows below a param are empty
        "param start: i32; mask m(b, h, q, kv) { q >= start && q >= kv } attention rows_from { mask = m; }",
    ];
    let mut programs: Vec<Program> = examples()
        .into_iter()
        .filter(|p| CLOSED.contains(&p.name.as_str()))
        .collect();
    programs.extend(extra.iter().map(|s| one(s)));
    let opts = PtxOptions::new(Arch::Sm90, 64, 64, InputType::Bf16);
    let mut rows = 0;
    for p in &programs {
        let KvBounds::ClosedForm(cf) = layout(p, &opts).unwrap().kv_bounds else {
            panic!("{}: not closed form", p.name);
        };
        let coefs: Vec<(i64, i64)> = cf
            .constraints
            .iter()
            .map(|c| (c.expr.q, c.expr.kv))
            .collect();
        for &(lq, lkv) in &[
            (1, 1),
            (77, 131),
            (131, 77),
            (200, 63),
            (300, 257),
            (129, 129),
            (64, 0),
        ] {
            for param in [-3, 0, 1, 40, 100, 1 << 30] {
                let bind = Bindings {
                    params: p.params.iter().map(|_| Scalar::I32(param)).collect(),
                    tensors: vec![],
                };
                let shape = Shape {
                    b: 2,
                    hq: 4,
                    hkv: 2,
                    lq,
                    lkv,
                    d: 64,
                    dv: 64,
                };
                let Some(bounds) = closed_form_bounds(p, &cf, &shape, &bind).unwrap() else {
                    // i32 wrap: the kernel is told to visit every block as partial
                    continue;
                };
                for (qb, kvb) in [(64, 64), (128, 64), (64, 32), (128, 128)] {
                    let mine = kernel_map(&coefs, &bounds, lq, lkv, qb, kvb);
                    rows += mine.n_q_blocks();
                    if lkv == 0 {
                        continue;
                    }
                    // what the table path and the CPU backend get (programs with captured
                    // tensors, read only by their scores, are compared with the map of the
                    // closed form, which is what build_block_maps gives them too)
                    let want = if p.tensors.is_empty() {
                        let maps =
                            build_block_maps(p, &analyze(p), &shape, qb, kvb, &bind).unwrap();
                        assert_eq!(maps.maps.len(), 1, "{}: one map for every (b, h)", p.name);
                        maps.maps[0].clone()
                    } else if p.mask.is_none() {
                        BlockMap::dense(lq, lkv, qb, kvb)
                    } else {
                        ClosedForm::block_map(&bounds, lq, lkv, qb, kvb)
                    };
                    assert_eq!(
                        want, mine,
                        "{} {lq}x{lkv} param {param} blocks {qb}x{kvb}",
                        p.name
                    );
                }
            }
        }
    }
    assert!(rows > 5000, "{rows}");
}

#[test]
fn missing_params_and_wrapping_arithmetic_are_reported() {
    let p = one(
        "param w: i32; mask m(b, h, q, kv) { q - kv <= w && q >= kv } attention s { mask = m; }",
    );
    let cf = analyze(&p).closed_form.unwrap();
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 100,
        lkv: 100,
        d: 64,
        dv: 64,
    };
    let e = closed_form_bounds(&p, &cf, &shape, &Bindings::default()).unwrap_err();
    assert!(
        matches!(&e, BlockError::MissingParam { name } if name == "w"),
        "{e}"
    );
    let bind = |w| Bindings {
        params: vec![Scalar::I32(w)],
        tensors: vec![],
    };
    assert!(
        closed_form_bounds(&p, &cf, &shape, &bind(10))
            .unwrap()
            .is_some()
    );
    // `q - kv - w` wraps for w near i32::MIN: the closed form is not trusted
    let p2 = one("param w: i32; mask m(b, h, q, kv) { q - kv - w >= 0 } attention s { mask = m; }");
    let cf2 = analyze(&p2).closed_form.unwrap();
    assert!(
        closed_form_bounds(&p2, &cf2, &shape, &bind(i32::MIN + 5))
            .unwrap()
            .is_none()
    );
    assert!(
        closed_form_bounds(&p2, &cf2, &shape, &bind(5))
            .unwrap()
            .is_some()
    );
}
