//! Regression tests for issue 14 (hostile input to the `attnc` tool): where output goes
//! (`--output` onto special files, permissions, umask, real I/O errors, stdout errors),
//! sizes that must be refused before allocating, and usage conventions. Each test runs
//! the built binary the way a user would.

use attnc::Shape;
use attnc::io::write_safetensors;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod cli_util;
use cli_util::*;

/// A small q/k/v input file for `attnc run`.
fn inputs(dir: &Path) -> PathBuf {
    let shape = Shape {
        b: 1,
        hq: 1,
        hkv: 1,
        lq: 4,
        lkv: 4,
        d: 8,
        dv: 8,
    };
    let p = dir.join("in.safetensors");
    write_safetensors(&p, &qkv_inputs(&shape, 1)).unwrap();
    p
}

fn run_to(input: &Path, output: &str) -> Output {
    attnc(&[
        "run",
        "examples/causal.attn",
        "--inputs",
        &input.display().to_string(),
        "--output",
        output,
    ])
}

#[test]
fn output_to_dev_null_writes_through() {
    let dir = tmpdir("devnull");
    let out = run_to(&inputs(&dir), "/dev/null");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m = std::fs::metadata("/dev/null").unwrap();
    assert!(m.file_type().is_char_device(), "/dev/null was replaced");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_to_a_fifo_writes_through_it() {
    let dir = tmpdir("fifo");
    let input = inputs(&dir);
    let fifo = dir.join("pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    let out = run_to(&input, &fifo.display().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let bytes = reader.join().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors through the fifo");
    assert!(st.names().contains(&"o"));
    let m = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(
        m.file_type().is_fifo(),
        "the fifo was replaced by a regular file"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_keeps_permissions_and_respects_umask() {
    let dir = tmpdir("perm");
    let input = inputs(&dir);
    // an existing file keeps its mode
    let existing = dir.join("existing.safetensors");
    std::fs::write(&existing, b"old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run_to(&input, &existing.display().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(std::fs::read(&existing).unwrap().len() > 3, "not rewritten");
    // a new file gets 0666 minus the umask
    let new = dir.join("new.safetensors");
    let cmd = format!(
        "umask 022; exec '{}' run examples/causal.attn --inputs '{}' --output '{}'",
        env!("CARGO_BIN_EXE_attnc"),
        input.display(),
        new.display()
    );
    let out = Command::new("sh")
        .args(["-c", &cmd])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = std::fs::metadata(&new).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // a directory is refused, and left alone
    let out = run_to(&input, &dir.display().to_string());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
    assert!(dir.is_dir());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_write_error_names_the_io_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIPPED (no /dev/full)");
        return;
    }
    let dir = tmpdir("full");
    let out = run_to(&inputs(&dir), "/dev/full");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("/dev/full") && t.contains("No space left"),
        "{t}"
    );
    assert!(!t.contains("not a valid safetensors"), "{t}");
    // unwritable directory / missing parent: the OS error, not a safetensors error
    let out = run_to(&inputs(&dir), "/no/such/dir/o.safetensors");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("No such file"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stdout_write_error_exits_nonzero() {
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIPPED (no /dev/full)");
        return;
    }
    for args in [
        &["emit", "clif", "examples/causal.attn"][..],
        &["emit", "ir", "examples/causal.attn"][..],
        &["check", "examples/causal.attn"][..],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_attnc"))
            .args(args)
            .current_dir(root())
            .stdout(Stdio::from(full))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("No space left"), "{}", text(&out));
    }
    // a closed pipe stays quiet and successful
    let mut child = Command::new(env!("CARGO_BIN_EXE_attnc"))
        .args(["emit", "clif", "examples/causal.attn"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Runs attnc and expects a clean size error (exit 1, no panic/abort) mentioning `want`.
fn size_error(args: &[&str], want: &str) {
    let out = attnc(args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
    assert!(t.contains(want), "{args:?}: expected `{want}` in:\n{t}");
    assert!(!t.contains("panicked"), "{args:?}: {t}");
}

#[test]
fn huge_sizes_are_refused_before_allocating() {
    let f = "examples/causal.attn";
    size_error(
        &["bench", f, "--d", "4611686018427387904", "--iters", "1"],
        "65536",
    );
    size_error(&["bench", f, "--lq", "2147483647", "--iters", "1"], "limit");
    // a thread count past the pool limit (used to spawn threads until the OS gave up)
    size_error(
        &[
            "bench",
            f,
            "--lq",
            "64",
            "--threads",
            "1048576",
            "--iters",
            "1",
        ],
        "`threads` = 1048576 exceeds the supported maximum 1024",
    );
    size_error(
        &[
            "bench", f, "--b", "65536", "--h", "65536", "--lq", "64", "--iters", "1",
        ],
        "limit",
    );
    size_error(
        &[
            "bench",
            "examples/document_causal.attn",
            "--attention",
            "document_causal",
            "--docs",
            "18446744073709551615",
            "--lq",
            "64",
            "--iters",
            "1",
        ],
        "--docs",
    );
    // `bench --decode`: a page size of 0 divided by zero, a huge cache aborted on a
    // failed allocation
    for (shape, page, want) in [
        (
            "1,2,2,1,16",
            "0",
            "--page-size: a page holds at least one row",
        ),
        ("1,2,2,1,1000000000", "16", "synthetic tensor `k`"),
        (
            "1,2,2,1,1000",
            "4000000000000",
            "--page-size 4000000000000: Lkv 1000 in whole pages",
        ),
        (
            "1,2,2,100000000000,16",
            "16",
            "exceeds the supported maximum",
        ),
    ] {
        size_error(
            &[
                "bench",
                f,
                "--decode",
                "--decode-shape",
                shape,
                "--kv-cache",
                "paged",
                "--page-size",
                page,
                "--iters",
                "1",
            ],
            want,
        );
    }
    size_error(
        &["emit", "ptx", f, "--d", "4294967424"],
        "between 1 and 65536",
    );
    size_error(
        &[
            "blockmask",
            f,
            "--lq",
            "2147483647",
            "--lkv",
            "2147483647",
            "--block",
            "1",
        ],
        "limit",
    );
    size_error(
        &[
            "blockmask",
            f,
            "--lq",
            "100000",
            "--lkv",
            "100000",
            "--exact",
        ],
        "limit",
    );
    size_error(
        &[
            "blockmask",
            "examples/document_causal.attn",
            "--attention",
            "document_causal",
            "--lq",
            "2147483647",
            "--lkv",
            "2147483647",
        ],
        "limit",
    );
}

/// A usage error: exit 2 (clap), naming what is allowed.
fn usage_error(args: &[&str], want: &[&str]) {
    let out = attnc(args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
    for w in want {
        assert!(t.contains(w), "{args:?}: expected `{w}` in:\n{t}");
    }
}

#[test]
fn bad_flag_values_are_usage_errors_with_the_allowed_values() {
    let f = "examples/causal.attn";
    usage_error(&["bench", f, "--dtype", "i32"], &["f32", "f16", "bf16"]);
    usage_error(&["emit", "ptx", f, "--arch", "sm_70"], &["sm_80", "sm_90"]);
    usage_error(&["emit", "ptx", f, "--dtype", "f32"], &["bf16", "f16"]);
    usage_error(
        &["bench", f, "--backend", "tpu"],
        &["reference", "cpu", "cuda"],
    );
    usage_error(
        &["blockmask", f, "--lq", "8", "--lkv", "8", "--block", "0"],
        &["QxK"],
    );
    usage_error(
        &["blockmask", f, "--lq", "8", "--lkv", "8", "--block", "ax2"],
        &["QxK"],
    );
    usage_error(
        &["blockmask", f, "--lq", "8", "--lkv", "8", "--param", "w"],
        &["NAME=VALUE"],
    );
    usage_error(&["bench", f, "--param", "w=abc"], &["not a number or bool"]);
    for s in ["nan", "inf", "-inf"] {
        usage_error(
            &[
                "run",
                f,
                "--inputs",
                "x",
                "--output",
                "y",
                &format!("--scale={s}"),
            ],
            &["finite"],
        );
    }
    usage_error(
        &["check", f, "--color", "sometimes"],
        &["auto", "always", "never"],
    );
}

/// `bench --decode` times its own shapes (issue 12's list or `--decode-shape`): a prefill
/// shape flag beside it is a usage error naming both flags (before session 19 it was
/// silently ignored, so `--decode --lkv 8192` timed Lkv 32768..131072), and the decode
/// flags without `--decode` are usage errors naming `--decode`.
#[test]
fn decode_bench_refuses_the_prefill_shape_flags() {
    let f = "examples/causal.attn";
    for (flag, value) in [
        ("--batch", "4"),
        ("--b", "4"),
        ("--heads", "32"),
        ("--h", "32"),
        ("--hkv", "8"),
        ("--lq", "1"),
        ("--lkv", "8192"),
        ("--docs", "4"),
        ("--jit-tiers", "off"),
    ] {
        usage_error(&["bench", f, "--decode", flag, value], &["--decode", flag]);
    }
    for (flag, value) in [
        ("--decode-shape", "1,2,2,1,16"),
        ("--kv-cache", "paged"),
        ("--page-size", "16"),
    ] {
        usage_error(&["bench", f, flag, value], &["--decode", flag]);
    }
}

#[test]
fn batch_and_heads_flags_are_the_same_in_bench_and_blockmask() {
    let f = "examples/causal.attn";
    for (b, h) in [("--batch", "--heads"), ("--b", "--h")] {
        let out = attnc(&["blockmask", f, "--lq", "64", "--lkv", "64", b, "2", h, "2"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let out = attnc(&[
            "bench", f, b, "1", h, "2", "--lq", "32", "--d", "8", "--iters", "1",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

#[test]
fn version_names_llvm_and_the_cuda_driver_api() {
    let out = attnc(&["--version"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("LLVM 22.") && t.contains("CUDA driver API 12.8"),
        "{t}"
    );
}

#[test]
fn color_is_chosen_by_the_flag() {
    let bad = "tests/bad/E0201_mismatched_operands.attn";
    let out = attnc(&["check", bad, "--color", "always"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\u{1b}["),
        "no colour with --color always:\n{err}"
    );
    for mode in ["never", "auto"] {
        // auto: stderr is a pipe here
        let out = attnc(&["check", bad, "--color", mode]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains('\u{1b}'),
            "colour with --color {mode}:\n{err}"
        );
        assert!(err.contains("error[E0201]"), "{err}");
    }
}

#[test]
fn notes_go_to_stderr_and_no_debug_formatting_reaches_users() {
    // document_causal declares a tensor and sliding_window a param: both synthesized
    for f in [
        "examples/document_causal.attn",
        "examples/sliding_window.attn",
    ] {
        let out = attnc(&[
            "blockmask",
            f,
            "--lq",
            "64",
            "--lkv",
            "64",
            "--block",
            "16",
            "--exact",
            "--attention",
            if f.contains("document") {
                "document_causal"
            } else {
                "sliding_window"
            },
        ]);
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{so}{se}");
        assert!(!so.contains("note:"), "a note on stdout:\n{so}");
        for debug in ["I32(", "F32(", "Precision {", "Shape {", " { "] {
            assert!(
                !so.contains(debug) && !se.contains(debug),
                "`{debug}` in:\n{so}{se}"
            );
        }
    }
    let dir = tmpdir("debugfmt");
    let out = run_to(
        &inputs(&dir),
        &dir.join("o.safetensors").display().to_string(),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(!t.contains("Shape {") && t.contains("B=1 Hq=1"), "{t}");
    // `run --grad` and `run --kv-cache` printed `Shape { b: 1, .. }` and `Contiguous`
    let grad_in = dir.join("grad.safetensors");
    let mut t = attnc::io::read_safetensors(&inputs(&dir)).unwrap();
    t.insert("do".to_string(), t["q"].clone());
    write_safetensors(&grad_in, &t).unwrap();
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--grad",
        "--inputs",
        &grad_in.display().to_string(),
        "--output",
        &dir.join("g.safetensors").display().to_string(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(!t.contains("Shape {") && t.contains("B=1 Hq=1"), "{t}");
    let cache = kv_cache_inputs(&dir, None);
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--kv-cache",
        "contiguous",
        "--inputs",
        &cache.display().to_string(),
        "--output",
        &dir.join("c.safetensors").display().to_string(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        !t.contains("Shape {") && !t.contains("Contiguous") && t.contains("contiguous cache, B=1"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A decode input file for `attnc run --kv-cache`: q `[1, 1, 1, 8]`, a cache of 4 rows
/// and `seq_lens`; with `page_table` also that tensor, and the cache one page of 4 rows.
fn kv_cache_inputs(dir: &Path, page_table: Option<attnc::Tensor>) -> PathBuf {
    use attnc::Tensor;
    let mut t = std::collections::BTreeMap::new();
    let ramp = |n: usize| (0..n).map(|i| i as f32 / 8.0).collect::<Vec<f32>>();
    t.insert(
        "q".to_string(),
        Tensor::from_f32(vec![1, 1, 1, 8], &ramp(8)),
    );
    // contiguous [B, Hkv, rows, D]; paged [pages, page size, Hkv, D]
    let dims = if page_table.is_some() {
        vec![1, 4, 1, 8]
    } else {
        vec![1, 1, 4, 8]
    };
    t.insert(
        "k_cache".to_string(),
        Tensor::from_f32(dims.clone(), &ramp(32)),
    );
    t.insert("v_cache".to_string(), Tensor::from_f32(dims, &ramp(32)));
    t.insert("seq_lens".to_string(), Tensor::from_i32(vec![1], &[3]));
    if let Some(pt) = page_table {
        t.insert("page_table".to_string(), pt);
    }
    let p = dir.join(format!("cache{}.safetensors", t.len()));
    write_safetensors(&p, &t).unwrap();
    p
}

/// A page table with no rows may declare any number of pages per row: `run --kv-cache
/// paged` multiplied that by the page size (an overflow panic) before any check.
#[test]
fn a_page_table_of_no_rows_and_huge_width_is_an_input_error() {
    let dir = tmpdir("pagetable");
    let pt = attnc::Tensor::from_bytes(vec![0, 1 << 62], attnc::DType::I32, Vec::new()).unwrap();
    let cache = kv_cache_inputs(&dir, Some(pt));
    let out = attnc(&[
        "run",
        "examples/causal.attn",
        "--kv-cache",
        "paged",
        "--inputs",
        &cache.display().to_string(),
        "--output",
        &dir.join("o.safetensors").display().to_string(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("page_table") && !t.contains("panicked"), "{t}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn attnc_log_shows_the_front_end_and_codegen_spans() {
    let out = Command::new(env!("CARGO_BIN_EXE_attnc"))
        .args(["emit", "clif", "examples/causal.attn"])
        .env("ATTNC_LOG", "info")
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("front_end") && err.contains("close"), "{err}");
    // without ATTNC_LOG: nothing on stderr
    let out = attnc(&["emit", "clif", "examples/causal.attn"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
