//! The backward from the command line: `attnc run --grad` (reference and CPU backends
//! on the same safetensors inputs: outputs present with the right shapes and the two
//! backends agreeing), `attnc emit ir --grad`, `attnc bench --grad`, and the usage
//! errors of `--grad`.

use attnc::io::{read_safetensors, write_safetensors};
use attnc::{Shape, Tensor, synth};

mod cli_util;
use cli_util::*;

#[test]
fn run_grad_writes_every_gradient_and_backends_agree() {
    let dir = tmpdir("grad");
    let shape = Shape {
        b: 1,
        hq: 4,
        hkv: 2,
        lq: 37,
        lkv: 53,
        d: 16,
        dv: 16,
    };
    let mut rng = synth::Rng::new(6);
    let mut normal = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
    let mut inputs = qkv_inputs(&shape, 5);
    inputs.insert(
        "do".to_string(),
        Tensor::from_f32(vec![1, 4, 37, 16], &normal(4 * 37 * 16)),
    );
    inputs.insert(
        "dlse".to_string(),
        Tensor::from_f32(vec![1, 4, 37], &normal(4 * 37)),
    );
    inputs.insert(
        "bias".to_string(),
        Tensor::from_f32(vec![1, 4, 37, 53], &normal(4 * 37 * 53)),
    );
    let input = dir.join("in.safetensors");
    write_safetensors(&input, &inputs).unwrap();
    let mut outs = Vec::new();
    for backend in ["reference", "cpu"] {
        let output = dir.join(format!("out-{backend}.safetensors"));
        let (i, o) = (input.display().to_string(), output.display().to_string());
        let out = attnc(&[
            "run",
            "examples/learned_bias.attn",
            "--inputs",
            &i,
            "--output",
            &o,
            "--backend",
            backend,
            "--grad",
        ]);
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert!(text(&out).contains("backward"), "{}", text(&out));
        let got = read_safetensors(&output).unwrap();
        let names: Vec<&str> = got.keys().map(|s| s.as_str()).collect();
        assert_eq!(names, ["dbias", "dk", "dq", "dv", "lse", "o"]);
        assert_eq!(got["dq"].shape(), &[1, 4, 37, 16]);
        assert_eq!(got["dk"].shape(), &[1, 2, 53, 16]);
        assert_eq!(got["dbias"].shape(), &[1, 4, 37, 53]);
        outs.push(got);
    }
    for name in ["dq", "dk", "dv", "dbias"] {
        let (a, b) = (outs[0][name].to_f32(), outs[1][name].to_f32());
        let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 2e-4 * (1.0 + max),
            "{name}: reference vs cpu differ by {err}"
        );
        assert!(max > 0.0, "{name} is all zero");
    }
    // without `do` in the inputs: a usage error naming it
    inputs.remove("do");
    write_safetensors(&input, &inputs).unwrap();
    let (i, o) = (
        input.display().to_string(),
        dir.join("x.safetensors").display().to_string(),
    );
    let out = attnc(&[
        "run",
        "examples/learned_bias.attn",
        "--inputs",
        &i,
        "--output",
        &o,
        "--grad",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("`do`"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn emit_ir_grad_and_bench_grad() {
    let out = attnc(&["emit", "ir", "examples/relative_bias_table.attn", "--grad"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("d/ds = ") && t.contains("d/d t0(rel_bias)"),
        "{t}"
    );
    let out = attnc(&["emit", "clif", "examples/causal.attn", "--grad"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("only for `emit ir`"), "{}", text(&out));
    let out = attnc(&[
        "bench",
        "examples/softcap.attn",
        "--attention",
        "softcap_causal",
        "--h",
        "2",
        "--lq",
        "96",
        "--d",
        "32",
        "--iters",
        "1",
        "--grad",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backward/forward"), "{}", text(&out));
}

/// `--nondeterministic` (the backward under `BackwardOptions { deterministic: false }`):
/// accepted by `run --grad` and `bench --grad` and said in their summary lines; on the CPU
/// (deterministic anyway) `run` writes the same bits as without it; without `--grad` it is
/// a usage error naming `--grad` (exit 2), and so is `bench --decode --grad` (decoding has
/// no backward; the flag was silently ignored before session 18).
#[test]
fn nondeterministic_flag_with_grad() {
    let dir = tmpdir("grad-nd");
    let shape = Shape {
        b: 1,
        hq: 2,
        hkv: 1,
        lq: 33,
        lkv: 33,
        d: 16,
        dv: 16,
    };
    let mut rng = synth::Rng::new(9);
    let mut inputs = qkv_inputs(&shape, 4);
    let dout: Vec<f32> = (0..2 * 33 * 16).map(|_| rng.normal()).collect();
    inputs.insert(
        "do".to_string(),
        Tensor::from_f32(vec![1, 2, 33, 16], &dout),
    );
    let input = dir.join("in.safetensors");
    write_safetensors(&input, &inputs).unwrap();
    let i = input.display().to_string();
    let mut outs = Vec::new();
    for nd in [false, true] {
        let output = dir.join(format!("out-{nd}.safetensors"));
        let o = output.display().to_string();
        let mut args = vec![
            "run",
            "examples/causal.attn",
            "--inputs",
            &i,
            "--output",
            &o,
            "--backend",
            "cpu",
            "--grad",
        ];
        if nd {
            args.push("--nondeterministic");
        }
        let out = attnc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            text(&out).contains("backward (non-deterministic)"),
            nd,
            "{}",
            text(&out)
        );
        outs.push(read_safetensors(&output).unwrap());
    }
    for name in ["dq", "dk", "dv"] {
        assert_eq!(
            outs[0][name].to_f32(),
            outs[1][name].to_f32(),
            "{name}: the CPU backward is deterministic either way"
        );
    }
    let o = dir.join("x.safetensors").display().to_string();
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--inputs",
        &i,
        "--output",
        &o,
        "--nondeterministic",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--grad"), "{}", text(&out));
    let out = attnc(&[
        "bench",
        "examples/causal.attn",
        "--h",
        "2",
        "--lq",
        "64",
        "--d",
        "32",
        "--iters",
        "1",
        "--grad",
        "--nondeterministic",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("backward (non-deterministic)"),
        "{}",
        text(&out)
    );
    let out = attnc(&["bench", "examples/causal.attn", "--nondeterministic"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // decoding has no backward: --grad (and so --nondeterministic) with --decode is a
    // usage error naming both, not a flag silently left unused
    for extra in [&["--grad"][..], &["--grad", "--nondeterministic"]] {
        let mut args = vec!["bench", "examples/causal.attn", "--decode"];
        args.extend_from_slice(extra);
        let out = attnc(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("--grad") && text(&out).contains("--decode"),
            "{}",
            text(&out)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
