//! Size and length checks of the API (issue 14): shapes are bounded (D too) and their
//! tensor lengths computed without wrapping; tensor constructors check the data length
//! against the shape; block maps refuse absurd block counts with the limit.

use attnc::{Backend, BindOptions, Compiled, DType, Shape, Tensor};
use attnc_compiler::shape::{MAX_HEAD_DIM, ShapeError};

fn shape(b: usize, h: usize, l: usize, d: usize) -> Shape {
    Shape {
        b,
        hq: h,
        hkv: h,
        lq: l,
        lkv: l,
        d,
        dv: d,
    }
}

#[test]
fn shapes_bound_head_dims_and_element_counts() {
    assert!(shape(1, 8, 2048, 64).validate().is_ok());
    let e = shape(1, 8, 2048, 4611686018427387904)
        .validate()
        .unwrap_err();
    assert!(
        matches!(
            e,
            ShapeError::TooLarge {
                what: "D",
                max: MAX_HEAD_DIM,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("65536"), "{e}");
    // each factor in range, the product is not
    let e = shape(65536, 65536, i32::MAX as usize, 65536)
        .validate()
        .unwrap_err();
    assert!(matches!(e, ShapeError::TooManyElements { .. }), "{e}");
    assert!(e.to_string().contains("limit"), "{e}");
    // bind says the same, before compiling anything
    let c = Compiled::from_source(
        "a.attn",
        "mask m(b, h, q, kv) { q >= kv }\nattention a { mask = m; }\n",
    )
    .unwrap();
    let v = c.select(None).unwrap();
    let e = v
        .bind(BindOptions::new(
            Backend::Reference,
            shape(1, 1, 4, 1 << 20),
            DType::F32,
        ))
        .err()
        .expect("D = 2^20 bound");
    assert!(e.to_string().contains("65536"), "{e}");
}

#[test]
#[should_panic(expected = "tensor data has 1 values but shape [1, 1, 64, 64] needs 4096")]
fn from_f32_as_checks_the_data_length() {
    let _ = Tensor::from_f32_as(vec![1, 1, 64, 64], &[1.0], DType::F32);
}

#[test]
fn constructors_check_lengths_and_never_wrap() {
    for dt in [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64] {
        let t = Tensor::from_f32_as(vec![2, 3], &[1.0; 6], dt);
        assert_eq!(t.len(), 6);
    }
    assert!(Tensor::from_bytes(vec![2, 3], DType::F32, vec![0; 23]).is_none());
    // a shape whose element count wraps is refused, not wrapped to a small length
    assert!(Tensor::from_bytes(vec![1 << 40, 1 << 40], DType::F32, vec![]).is_none());
    assert!(std::panic::catch_unwind(|| Tensor::from_f32(vec![2, 3], &[0.0; 5])).is_err());
    assert!(std::panic::catch_unwind(|| Tensor::from_i32(vec![usize::MAX, 2], &[])).is_err());
}

#[test]
fn block_maps_refuse_absurd_block_counts() {
    use attnc_compiler::analysis::classify::BlockError;
    let m = attnc_compiler::compile_source(
        "mask m(b, h, q, kv) { q >= kv }\nattention a { mask = m; }\n",
    )
    .unwrap();
    let p = &m.programs[0];
    let s = shape(1, 1, i32::MAX as usize, 1);
    let bind = attnc_compiler::interp::Bindings::default();
    let plan = attnc_compiler::plan::Plan::new(p);
    let e = plan
        .block_maps(&s, 1, 1, &bind)
        .expect_err("2^62 blocks built");
    assert!(matches!(e, BlockError::TooManyBlocks { .. }), "{e}");
    assert!(e.to_string().contains("limit"), "{e}");
}
