//! `attnc blockmask`: the block structure of an attention's mask, derived by analysis.
//!
//! In: the .attn file and attention, lengths, block sizes, optional captures
//! (safetensors) and params. Out: how the mask was classified (tier, closed form),
//! counts of empty/full/partial blocks, density, a text picture, and optionally PNG/SVG
//! files. With `--exact`, also the exact partial count by brute force (small L only).

use super::parse_params;
use attnc::blockview;
use attnc::io::read_safetensors;
use attnc::{Captures, Compiled, Error, Shape};
use attnc_compiler::analysis::classify::precision;
use std::path::PathBuf;

pub(crate) struct BlockmaskArgs {
    pub file: PathBuf,
    pub attention: Option<String>,
    pub lq: usize,
    pub lkv: usize,
    pub block: String,
    pub batch: usize,
    pub head: usize,
    pub inputs: Option<PathBuf>,
    pub params: Vec<String>,
    pub png: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    pub exact: bool,
}

/// Most (b, h, q, kv) pairs `--exact` evaluates by brute force.
const MAX_EXACT_PAIRS: usize = 1 << 30;

pub(crate) fn parse_block(s: &str) -> Result<(usize, usize), Error> {
    let bad = || Error::Usage(format!("--block expects QxK (e.g. 128x64) or N, got `{s}`"));
    let (a, b) = match s.split_once(['x', 'X']) {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a == 0 || b == 0 {
        return Err(bad());
    }
    Ok((a, b))
}

pub(crate) fn blockmask(a: &BlockmaskArgs) -> Result<(), Error> {
    let compiled = Compiled::from_file(&a.file)?;
    let variant = compiled.select(a.attention.as_deref())?;
    let (qb, kb) = parse_block(&a.block)?;
    // captures decide B and H where they are declared with those dims; default 1
    let mut captures = Captures::default();
    if let Some(path) = &a.inputs {
        for (name, t) in read_safetensors(path)? {
            if !matches!(name.as_str(), "q" | "k" | "v") {
                captures.tensors.insert(name, t);
            }
        }
    }
    for (name, v) in parse_params(&a.params)? {
        captures.params.insert(name, v);
    }
    let p = variant.program();
    let shape = Shape {
        b: a.batch.max(1),
        hq: a.head.max(1),
        hkv: 1,
        lq: a.lq,
        lkv: a.lkv,
        d: 64,
        dv: 64,
    };
    attnc::synth::checked_inputs(p, &shape, false)?;
    if a.exact {
        let pairs = [shape.b, shape.hq, shape.lq, shape.lkv]
            .iter()
            .try_fold(1usize, |n, &x| n.checked_mul(x));
        if pairs.is_none_or(|n| n > MAX_EXACT_PAIRS) {
            return Err(Error::Usage(format!(
                "--exact evaluates the mask at every (b, h, q, kv): {} pairs; the limit is {MAX_EXACT_PAIRS} (2^30)",
                pairs.map_or("more than 2^64".to_string(), |n| n.to_string())
            )));
        }
    }
    // what the user did not give is synthesized (sorted ids, L/4 for integer params) and said so
    let synthetic = attnc::synth::captures(p, &shape, 7);
    use std::collections::hash_map::Entry;
    for (name, t) in synthetic.tensors {
        if let Entry::Vacant(e) = captures.tensors.entry(name) {
            eprintln!(
                "note: tensor `{}` not given (--inputs); using synthetic sorted ids / random values",
                e.key()
            );
            e.insert(t);
        }
    }
    for (name, v) in synthetic.params {
        if let Entry::Vacant(e) = captures.params.entry(name) {
            eprintln!("note: param `{}` not given (--param); using {v}", e.key());
            e.insert(v);
        }
    }
    let bound = variant.bind(attnc::BindOptions::new(
        attnc::Backend::Reference,
        shape,
        attnc::DType::F32,
    ))?;
    let bindings = bound.bindings(&captures)?;
    let info = bound.plan().mask();
    let t0 = std::time::Instant::now();
    let maps = bound
        .plan()
        .block_maps(&shape, qb, kb, &bindings)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let us = t0.elapsed().as_secs_f64() * 1e6;
    outln!(
        "attention {} — Lq {} x Lkv {}, blocks {qb}x{kb}",
        p.name,
        a.lq,
        a.lkv
    );
    outln!("{info}");
    outln!("built {} map(s) in {us:.0} us", maps.maps.len());
    let m = maps.get(0, 0);
    let st = blockview::stats(m);
    outln!("{st}");
    if a.exact {
        let pr =
            precision(p, &shape, qb, kb, &bindings).map_err(|e| Error::Usage(e.to_string()))?;
        outln!(
            "exact (brute force): {} partial blocks of {} (the analysis marks {} partial)",
            pr.partial_exact,
            pr.total_blocks,
            pr.partial_found
        );
    }
    out!("{}", blockview::text_picture(m, 64));
    if let Some(path) = &a.png {
        let bytes = blockview::png_bytes(m).map_err(|e| Error::Usage(e.to_string()))?;
        attnc::io::write_file(path, &bytes)?;
        outln!("wrote {}", path.display());
    }
    if let Some(path) = &a.svg {
        attnc::io::write_file(path, blockview::svg_string(m).as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}
