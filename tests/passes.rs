//! Every pass on generated programs: the forward, the backward and decoding against a KV
//! cache, on a backend under test against the f64 oracle (`Backend::Reference`), for
//! random well-typed programs from [`crate::progs`] (with its `grad` option: f32 tensor
//! reads, an f32 param, products, quotients, `pow`, `abs`, `clamp`, nested `if`s) on
//! random small shapes (odd lengths, Lq != Lkv, GQA, fully masked rows wherever the
//! random mask makes them; decoding with per-sequence lengths of 0, short of Lq and full,
//! contiguous and paged caches with shuffled page tables).
//!
//! In: a seed and a [`Target`] (backend, dtype, head dim, tolerances). Out: `Ok(())`, or
//! `Err(message)` naming the seed, the program, the shape and the worst element, so a
//! failure reproduces with that one seed. Used by `tests/random_passes.rs` (CPU, f32, in
//! the test suite) and `tests/gpu_random.rs` (CUDA, bf16/f16, on the GPU machine).

use crate::decode_util::{self, Case};
use crate::progs::{Gen, captures, doc_shape, program};
use crate::{random_shape, variant};
use attnc::synth::Rng;
use attnc::{Backend, BindOptions, Captures, DType, ParamValue, Shape, Tensor, synth};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a pass runs and how close it must come to the oracle.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub backend: Backend,
    pub dtype: DType,
    /// Head dims of the random shapes, one drawn per case (16 on the CPU; 64 and 128 on
    /// the GPU, where they select different kernels: at D128 on sm_90 the
    /// warp-specialized forward).
    pub d: &'static [usize],
    /// Largest sequence length drawn.
    pub max_len: usize,
    /// Forward: |got - want| <= tol (1 + |want|) on O; LSE within 2e-3 (1 + |want|).
    pub tol: f32,
    /// Backward: |got - want| <= abs max|want| + rel |want| + 1e-4, per tensor.
    pub grad_abs: f32,
    pub grad_rel: f32,
    /// Decoding: the new rows per sequence, one drawn per case (on the CPU also 33:
    /// chunked prefill against the cache).
    pub decode_lq: &'static [usize],
}

impl Target {
    /// The head dim of the case of `seed` (the entries of `d` in turn).
    fn head_dim(&self, seed: u64) -> usize {
        self.d[seed as usize % self.d.len()]
    }
    pub fn cpu() -> Target {
        Target {
            backend: Backend::Cpu,
            dtype: DType::F32,
            d: &[16],
            max_len: 150,
            tol: 1e-4,
            grad_abs: 2e-4,
            grad_rel: 2e-4,
            decode_lq: &[1, 1, 2, 4, 16, 33],
        }
    }
    pub fn cuda(dtype: DType) -> Target {
        let bf16 = dtype == DType::BF16;
        Target {
            backend: Backend::Cuda,
            dtype,
            d: &[64, 128],
            max_len: 300,
            tol: if bf16 { 0.02 } else { 0.005 },
            grad_abs: if bf16 { 0.02 } else { 0.005 },
            grad_rel: if bf16 { 0.03 } else { 0.01 },
            decode_lq: &[1, 1, 2, 4, 16],
        }
    }
}

/// One generated program and a random shape for it.
struct Drawn {
    src: String,
    var: attnc::Variant,
    shape: Shape,
    g: Gen,
}

/// Which programs a case draws: [`Gen::new`]'s, or document masks ([`Gen::documents`],
/// shapes with `Lq <= Lkv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Any,
    Documents,
}

impl Kind {
    /// The generator of this kind of program.
    fn generator(self, seed: u64, grad: bool) -> Gen {
        match self {
            Kind::Any => Gen::new(seed, grad),
            Kind::Documents => Gen::documents(seed, grad),
        }
    }
}

fn draw(seed: u64, t: &Target, grad: bool, kind: Kind) -> Drawn {
    let mut g = kind.generator(seed, grad);
    let src = program(&mut g);
    let var = variant(&src, "a");
    let shape = match kind {
        Kind::Any => random_shape(&mut g.rng, 3, t.max_len, t.head_dim(seed)),
        Kind::Documents => doc_shape(&mut g.rng, 3, t.max_len, t.head_dim(seed)),
    };
    Drawn { src, var, shape, g }
}

/// Document cases ([`doc_forward_case`], [`doc_backward_case`]) whose call ran on
/// document tiles (`Bound::doc_tile_calls`, `Bound::doc_tile_backward_calls`), in this
/// process: `[forward, backward]`. The tests ask that most did, so that the cases do not
/// all fall back to the binding's own kernels.
pub static DOC_TILED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn bind(var: &attnc::Variant, backend: Backend, shape: Shape, dtype: DType) -> attnc::Bound {
    let mut o = BindOptions::new(backend, shape, dtype);
    o.threads = 2;
    var.bind(o)
        .unwrap_or_else(|e| panic!("bind {backend:?}: {e}"))
}

/// `got` against `want` with an absolute part relative to the tensor's largest element,
/// plus `floor`.
fn close_grad(what: &str, got: &[f32], want: &[f32], t: &Target, floor: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != {}", got.len(), want.len()));
    }
    let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let lim = t.grad_abs * max + t.grad_rel * w.abs() + 1e-4 + floor;
        let err = (g - w).abs();
        if err.is_nan() || err > lim {
            return Err(format!(
                "{what}[{i}] = {g}, oracle {w} (max |oracle| {max}, limit {lim})"
            ));
        }
    }
    Ok(())
}

/// `got` against `want`: equal infinities, else within `tol (1 + |want|)`; no NaN.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * (1.0 + w.abs())
        };
        if !ok {
            return Err(format!("{what}[{i}] = {g}, oracle {w}"));
        }
    }
    Ok(())
}

/// The forward on `t` against the oracle for the program of `seed`.
pub fn forward_case(seed: u64, t: &Target) -> Result<(), String> {
    forward_case_of(seed, t, Kind::Any)
}

/// [`forward_case`] on a document mask ([`Gen::documents`]): where the ids form
/// contiguous documents and `Lq == Lkv` the call runs on document tiles
/// ([`DOC_TILED`]).
pub fn doc_forward_case(seed: u64, t: &Target) -> Result<(), String> {
    forward_case_of(seed, t, Kind::Documents)
}

fn forward_case_of(seed: u64, t: &Target, kind: Kind) -> Result<(), String> {
    let mut d = draw(seed, t, true, kind);
    let caps = captures(d.var.program(), &d.shape, &mut d.g.rng);
    let ctx = format!(
        "seed {seed}, {:?}, shape {:?}\n{}",
        t.backend, d.shape, d.src
    );
    let (q, k, v) = synth::qkv(&d.shape, t.dtype, seed);
    let want = bind(&d.var, Backend::Reference, d.shape, t.dtype)
        .forward(&q, &k, &v, &caps)
        .map_err(|e| format!("oracle: {e}\n{ctx}"))?;
    let mut under = bind(&d.var, t.backend, d.shape, t.dtype);
    let got = under
        .forward(&q, &k, &v, &caps)
        .map_err(|e| format!("{:?}: {e}\n{ctx}", t.backend))?;
    if under.doc_tile_calls().unwrap_or(0) > 0 {
        DOC_TILED[0].fetch_add(1, Ordering::Relaxed);
    }
    close("O", &got.o.to_f32(), &want.o.to_f32(), t.tol).map_err(|e| format!("{e}\n{ctx}"))?;
    close("LSE", &got.lse.to_f32(), &want.lse.to_f32(), 2e-3).map_err(|e| format!("{e}\n{ctx}"))
}

/// Cases whose gradients matched the oracle only with q nudged ([`backward_case`]), in
/// this process.
pub static NUDGED: AtomicU64 = AtomicU64::new(0);

/// The backward on `t` (dQ, dK, dV, the gradients of the f32 tensors and the f32 param)
/// against the oracle's, both from `t`'s forward O and LSE, with a random dLSE on odd
/// seeds.
///
/// A gradient that misses the oracle is judged again with q nudged by a few parts in
/// 2^12 (f32; the dtype's 4 ulp in 16-bit), and the case passes when that run matches
/// (counted in [`NUDGED`]). Why: a generated score may have a kink in `s` (`abs`,
/// `min`/`max`, `clamp`, a comparison of `s`), where its derivative jumps; an element
/// whose argument lies within f32 rounding of the kink gets the derivative of one side
/// from the kernel's f32 `q·k` and of the other from the oracle's f64 one (fuzz seed
/// 13748689880450642246: `abs(s)` at s = -7.7e-9, one (q, kv) element of dQ and dK off by
/// 8e-3). That input is ill-conditioned, not the kernel wrong; a wrong gradient stays
/// wrong under a nudge of the inputs, which moves such an element off the kink.
pub fn backward_case(seed: u64, t: &Target) -> Result<(), String> {
    backward_case_of(seed, t, Kind::Any)
}

/// [`backward_case`] on a document mask ([`Gen::documents`]): where the ids form
/// contiguous documents, `Lq == Lkv` and the backend has them, the backward runs on
/// document tiles ([`DOC_TILED`]).
pub fn doc_backward_case(seed: u64, t: &Target) -> Result<(), String> {
    backward_case_of(seed, t, Kind::Documents)
}

fn backward_case_of(seed: u64, t: &Target, kind: Kind) -> Result<(), String> {
    match backward_case_at(seed, t, false, kind) {
        Err(Miss::Gradient(first)) => match backward_case_at(seed, t, true, kind) {
            Ok(()) => {
                NUDGED.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(again) => Err(format!("{first}\n(with q nudged: {})", again.message())),
        },
        Err(other) => Err(other.message()),
        Ok(()) => Ok(()),
    }
}

/// How a backward case failed: a gradient off the oracle's (judged again with q nudged,
/// [`backward_case`]) or anything else (an error from a call, a missing gradient), which
/// a nudge cannot excuse.
enum Miss {
    Gradient(String),
    Other(String),
}

impl Miss {
    fn message(self) -> String {
        match self {
            Miss::Gradient(m) | Miss::Other(m) => m,
        }
    }
}

/// q nudged: every element times 1 + u r, u uniform in [-1, 1] (its own stream), r a few
/// units in the last place of the dtype at least (`backward_case`).
fn nudge(q: &Tensor, seed: u64, dtype: DType) -> Tensor {
    let r = match dtype {
        DType::BF16 => 2f32.powi(-6),
        DType::F16 => 2f32.powi(-9),
        _ => 2f32.powi(-12),
    };
    let mut rng = Rng::new(seed ^ 0x6e75_6467);
    let x: Vec<f32> = q
        .to_f32()
        .iter()
        .map(|x| x * (1.0 + (rng.next_u64() as f64 / u64::MAX as f64 * 2.0 - 1.0) as f32 * r))
        .collect();
    Tensor::from_f32_as(q.shape().to_vec(), &x, dtype)
}

fn backward_case_at(seed: u64, t: &Target, nudged: bool, kind: Kind) -> Result<(), Miss> {
    let mut d = draw(seed, t, true, kind);
    let caps = captures(d.var.program(), &d.shape, &mut d.g.rng);
    let ctx = format!(
        "seed {seed}, {:?}, shape {:?}{}\n{}",
        t.backend,
        d.shape,
        if nudged { ", q nudged" } else { "" },
        d.src
    );
    let s = d.shape;
    let (q, k, v) = synth::qkv(&s, t.dtype, seed);
    let q = if nudged { nudge(&q, seed, t.dtype) } else { q };
    let dout = synth::qkv(&s, t.dtype, seed ^ 0x5eed).0;
    let dlse = (seed % 2 == 1).then(|| {
        let x: Vec<f32> = (0..s.b * s.hq * s.lq)
            .map(|_| d.g.rng.normal() * 0.5)
            .collect();
        Tensor::from_f32(vec![s.b, s.hq, s.lq], &x)
    });
    let mut under = bind(&d.var, t.backend, s, t.dtype);
    let fwd = under
        .forward(&q, &k, &v, &caps)
        .map_err(|e| Miss::Other(format!("forward: {e}\n{ctx}")))?;
    let got = under
        .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, dlse.as_ref(), &caps)
        .map_err(|e| Miss::Other(format!("{:?} backward: {e}\n{ctx}", t.backend)))?;
    if under.doc_tile_backward_calls() > 0 && !nudged {
        DOC_TILED[1].fetch_add(1, Ordering::Relaxed);
    }
    let want = bind(&d.var, Backend::Reference, s, t.dtype)
        .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, dlse.as_ref(), &caps)
        .map_err(|e| Miss::Other(format!("oracle backward: {e}\n{ctx}")))?;
    let with = |e: String| Miss::Gradient(format!("{e}\n{ctx}"));
    let other = |e: String| Miss::Other(format!("{e}\n{ctx}"));
    close_grad("dQ", &got.dq.to_f32(), &want.dq.to_f32(), t, 0.0).map_err(with)?;
    close_grad("dK", &got.dk.to_f32(), &want.dk.to_f32(), t, 0.0).map_err(with)?;
    close_grad("dV", &got.dv.to_f32(), &want.dv.to_f32(), t, 0.0).map_err(with)?;
    // A capture or param gradient sums dS' = P (dP - D) over every (b, h, q) row it is
    // read in, and D = rowsum(dO * O) comes from the *stored* O (in the input dtype, as
    // FlashAttention does), while the oracle recomputes O in f64. Where the true sum
    // cancels (a score term constant along kv, e.g. `s + tanh(w[p])`: softmax does not
    // see it, its gradient is exactly 0), what is left is each row's rounding of O, which
    // adds up like a random walk over the rows: a floor of 2 eps sqrt(rows).
    let eps = match t.dtype {
        DType::BF16 => 2f32.powi(-8),
        DType::F16 => 2f32.powi(-11),
        _ => 0.0,
    };
    let floor = 2.0 * eps * ((s.b * s.hq * s.lq) as f32).sqrt();
    if got.tensors.keys().ne(want.tensors.keys()) {
        return Err(other(format!(
            "tensor gradients {:?} != oracle's {:?}",
            got.tensors.keys().collect::<Vec<_>>(),
            want.tensors.keys().collect::<Vec<_>>()
        )));
    }
    for (name, w) in &want.tensors {
        close_grad(
            &format!("d{name}"),
            &got.tensors[name].to_f32(),
            &w.to_f32(),
            t,
            floor,
        )
        .map_err(with)?;
    }
    for (name, w) in &want.params {
        let g = *got
            .params
            .get(name)
            .ok_or_else(|| other(format!("no gradient for param {name}")))?;
        close_grad(&format!("d{name}"), &[g], &[*w], t, floor).map_err(with)?;
    }
    Ok(())
}

/// The caller-buffer backward (`Bound::backward_cuda_into_with`: the Python package's
/// autograd on CUDA tensors) on a generated program on `t` (CUDA), every captured tensor in
/// device memory: dQ, dK, dV and the capture and param gradients (its fixed-point words
/// through `fixed_to_f32`) bit-identical to `Bound::backward`'s on host tensors — which
/// [`backward_case`] checks against the oracle — and, where the mask reads captured
/// tensors, the block ranges it made on the device (the block-table and backward-ranges
/// kernels) equal to the host functions' from the same data (`cuda::backward::{kv_ranges,
/// q_ranges}` of the exact block maps at the backward's tiles,
/// `brute_force_maps_like_tables`) word for word.
pub fn caller_backward_case(seed: u64, t: &Target) -> Result<(), String> {
    use attnc::external::{
        DeviceBackwardBuffers, DeviceDqWorkspace, DeviceGradWords, DeviceTensor, fixed_to_f32,
    };
    use cudarc::driver::{CudaSlice, DevicePtr};
    let mut d = draw(seed, t, true, Kind::Any);
    let caps = captures(d.var.program(), &d.shape, &mut d.g.rng);
    let ctx = format!(
        "seed {seed}, caller-buffer backward, {:?}, shape {:?}\n{}",
        t.dtype, d.shape, d.src
    );
    let with = |e: String| format!("{e}\n{ctx}");
    let s = d.shape;
    let (q, k, v) = synth::qkv(&s, t.dtype, seed);
    let dout = synth::qkv(&s, t.dtype, seed ^ 0x5eed).0;
    let mut under = bind(&d.var, t.backend, s, t.dtype);
    let fwd = under
        .forward(&q, &k, &v, &caps)
        .map_err(|e| with(format!("forward: {e}")))?;
    let want = under
        .backward(&q, &k, &v, &fwd.o, &fwd.lse, &dout, None, &caps)
        .map_err(|e| with(format!("Bound::backward: {e}")))?;
    let dev = attnc::cuda::CudaDevice::new(0).map_err(|e| with(e.to_string()))?;
    let err = |e: attnc::cuda::CudaError| with(e.to_string());
    let up16 = |x: &Tensor| {
        dev.upload_u16(&x.to_u16_bits().expect("16-bit"))
            .map_err(err)
    };
    let ins = [up16(&q)?, up16(&k)?, up16(&v)?, up16(&fwd.o)?, up16(&dout)?];
    let lse = dev.upload(&fwd.lse.to_f32()).map_err(err)?;
    let outs = [s.q_len(), s.k_len(), s.v_len()].map(|n| dev.zeros::<u16>(n));
    let [dq, dk, dv] = outs;
    let (dq, dk, dv) = (dq.map_err(err)?, dk.map_err(err)?, dv.map_err(err)?);
    let rows = s.b * s.hq * s.lq;
    let (delta, lse2) = (
        dev.zeros::<f32>(rows).map_err(err)?,
        dev.zeros::<f32>(rows).map_err(err)?,
    );
    let work = match under
        .backward_cuda_workspace()
        .map_err(|e| with(e.to_string()))?
    {
        Some((a, m)) => Some((
            dev.zeros::<f32>(a).map_err(err)?,
            dev.zeros::<u32>(m).map_err(err)?,
        )),
        None => None,
    };
    // every captured tensor on the device, as its bytes; gradient words where the
    // kernels sum them
    let p = d.var.program();
    let mut held: Vec<CudaSlice<u8>> = Vec::new();
    for ti in &p.tensors {
        held.push(dev.upload(caps.tensors[&ti.name].bytes()).map_err(err)?);
    }
    let (grad_names, param_grads) = under
        .backward_cuda_grad_words()
        .map_err(|e| with(e.to_string()))?;
    let mut words: Vec<(String, CudaSlice<u64>)> = Vec::new();
    for name in &grad_names {
        let n = caps.tensors[name].len();
        words.push((name.clone(), dev.zeros::<u64>(3 * n.max(1)).map_err(err)?));
    }
    let pwords = match param_grads {
        true => Some(dev.zeros::<u64>(3 * p.params.len().max(1)).map_err(err)?),
        false => None,
    };
    let st = ins[0].stream().clone();
    let p16 = |x: &CudaSlice<u16>| x.device_ptr(&st).0;
    let p32 = |x: &CudaSlice<f32>| x.device_ptr(&st).0;
    let bufs = DeviceBackwardBuffers {
        q: p16(&ins[0]),
        k: p16(&ins[1]),
        v: p16(&ins[2]),
        o: p16(&ins[3]),
        lse: p32(&lse),
        d_o: p16(&ins[4]),
        dlse: None,
        dq: p16(&dq),
        dk: p16(&dk),
        dv: p16(&dv),
        delta: p32(&delta),
        lse2: p32(&lse2),
        dq_work: work.as_ref().map(|(a, m)| DeviceDqWorkspace {
            accum: p32(a),
            sem: m.device_ptr(&st).0,
        }),
    };
    let tensors = p
        .tensors
        .iter()
        .zip(&held)
        .map(|(ti, buf)| {
            let x = &caps.tensors[&ti.name];
            let dt = DeviceTensor {
                ptr: buf.device_ptr(&st).0,
                dims: x.shape().to_vec(),
                dtype: x.dtype(),
            };
            (ti.name.clone(), dt)
        })
        .collect();
    let grads = DeviceGradWords {
        tensors: words
            .iter()
            .map(|(n, w)| (n.clone(), w.device_ptr(&st).0))
            .collect(),
        params: pwords.as_ref().map(|w| w.device_ptr(&st).0),
    };
    let stream = st.cu_stream() as u64;
    let det = attnc::BackwardOptions {
        deterministic: true,
    };
    // SAFETY: every buffer is a live allocation of this device on stream `st` sized as
    // the call indexes it for the bound shape (q..dv, the rows, the workspace the binding
    // asked for, each tensor's bytes, 3 words per gradient element and per param), the
    // outputs fresh and read by no one until the downloads below synchronize `st`.
    unsafe {
        under
            .backward_cuda_into_with(&bufs, &tensors, &caps.params, &grads, None, &det, stream)
            .map_err(|e| with(format!("backward_cuda_into: {e}")))?;
    }
    st.synchronize().map_err(|e| with(e.to_string()))?;
    for (nm, got, w) in [
        ("dQ", &dq, &want.dq),
        ("dK", &dk, &want.dk),
        ("dV", &dv, &want.dv),
    ] {
        let got = dev.download(got).map_err(err)?;
        let w = w.to_u16_bits().expect("16-bit");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != w[i]) {
            return Err(with(format!(
                "{nm}[{i}] = {:#06x}, Bound::backward's {:#06x}",
                got[i], w[i]
            )));
        }
    }
    let from_words = |w: &[u64]| -> Vec<f32> {
        w.chunks(3)
            .map(|c| fixed_to_f32([c[0], c[1], c[2]]))
            .collect()
    };
    for (name, w) in &words {
        let got = from_words(&dev.download(w).map_err(err)?);
        let got = &got[..caps.tensors[name].len()];
        let w = want.tensors[name].to_f32();
        if let Some(i) = (0..w.len()).find(|&i| got[i].to_bits() != w[i].to_bits()) {
            return Err(with(format!(
                "d{name}[{i}] = {}, Bound::backward's {}",
                got[i], w[i]
            )));
        }
    }
    if let Some(pw) = &pwords {
        let got = from_words(&dev.download(pw).map_err(err)?);
        for (i, param) in p.params.iter().enumerate() {
            if let Some(w) = want.params.get(&param.name)
                && got[i].to_bits() != w.to_bits()
            {
                return Err(with(format!(
                    "d{} = {}, Bound::backward's {w}",
                    param.name, got[i]
                )));
            }
        }
    }
    // the block ranges of a mask over captured tensors: made on the device, as the host's
    let plan = attnc_compiler::plan::Plan::new(p);
    if plan.map_recipe() == attnc_compiler::plan::MapRecipe::Tensors {
        let seen = under
            .caller_backward_ranges(stream)
            .map_err(|e| with(e.to_string()))?
            .ok_or_else(|| with("a mask over captured tensors, but no block ranges".into()))?;
        if !seen.on_device {
            return Err(with("the block ranges were not made on the device".into()));
        }
        let bind = under.bindings(&caps).map_err(|e| with(e.to_string()))?;
        let (qb, kb) = (seen.tiles.0 as usize, seen.tiles.1 as usize);
        // (exact: every point evaluated, as the device's table; the host's own maps
        // classify from summaries of the tensors, which may leave a full block partial)
        let maps = attnc_compiler::analysis::classify::brute_force_maps_like_tables(
            p,
            plan.mask(),
            &s,
            qb,
            kb,
            &bind,
        )
        .map_err(|e| with(e.to_string()))?;
        let nonempty = |v: Vec<i32>| if v.is_empty() { vec![0] } else { v };
        let kv = nonempty(attnc::cuda::backward::kv_ranges(&maps, &s).0);
        let qr = nonempty(attnc::cuda::backward::q_ranges(&maps).0);
        for (what, got, want) in [("dK/dV", &seen.kv, &kv), ("dQ", &seen.q, &qr)] {
            if got != want {
                let i = (0..got.len().min(want.len()))
                    .find(|&i| got[i] != want[i])
                    .unwrap_or(got.len().min(want.len()));
                return Err(with(format!(
                    "{what} ranges ({qb}x{kb}) differ from the host's at word {i}: {:?} against {:?} (lengths {} / {})",
                    got.get(i..(i + 4).min(got.len())),
                    want.get(i..(i + 4).min(want.len())),
                    got.len(),
                    want.len()
                )));
            }
        }
    }
    Ok(())
}

/// Decoding against a cache on `t` against the cache oracle: `t.decode_lq` new rows per
/// sequence, per-sequence lengths (0, shorter than Lq, full, random), contiguous or paged
/// (page 16 or 32).
pub fn decode_case(seed: u64, t: &Target) -> Result<(), String> {
    decode_case_of(seed, t, Kind::Any)
}

/// [`decode_case`] on a document mask ([`Gen::documents`]; ids over the cache's logical
/// positions): chunked prefill and decoding of packed documents.
pub fn doc_decode_case(seed: u64, t: &Target) -> Result<(), String> {
    decode_case_of(seed, t, Kind::Documents)
}

fn decode_case_of(seed: u64, t: &Target, kind: Kind) -> Result<(), String> {
    let mut g = kind.generator(seed, true);
    let src = program(&mut g);
    let compiled = attnc::Compiled::from_source("random.attn", &src).map_err(|e| e.to_string())?;
    let var = compiled.attention("a").map_err(|e| e.to_string())?;
    let mut rng = decode_util::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let hkv = 1 + rng.below(2);
    let hq = hkv * (1 + rng.below(4));
    let b = 1 + rng.below(3);
    let lq = t.decode_lq[rng.below(t.decode_lq.len())];
    let cap = 1 + rng.below(t.max_len * 2);
    let seq_lens: Vec<i32> = (0..b)
        .map(|i| match (i + rng.below(4)) % 4 {
            0 => cap as i32,
            1 => rng.below(lq.min(cap) + 1) as i32,
            _ => rng.below(cap + 1) as i32,
        })
        .collect();
    let page = [None, Some(16), Some(32)][rng.below(3)];
    let c: Case = decode_util::case_as(
        t.dtype,
        &mut rng,
        b,
        hq,
        hkv,
        lq,
        t.head_dim(seed),
        cap,
        seq_lens,
        page,
    );
    let logical = Shape {
        lq: c.shape.capacity(),
        ..c.bind_shape()
    };
    let mut caps: Captures = captures(var.program(), &logical, &mut g.rng);
    // a mask param small enough to leave some keys visible at decode positions
    for v in caps.params.values_mut() {
        if let ParamValue::I32(x) = v {
            *v = ParamValue::I32(*x % 16);
        }
    }
    let ctx = format!(
        "seed {seed}, {:?}, decode b{b} hq{hq} hkv{hkv} lq{lq} cap{cap} seq_lens {:?} page {page:?}\n{src}",
        t.backend, c.seq_lens
    );
    let want = decode_util::run(&compiled, "a", &c, Backend::Reference, 1, &caps, false)
        .map_err(|e| format!("oracle: {e}\n{ctx}"))?;
    let got = decode_util::run(&compiled, "a", &c, t.backend, 2, &caps, false)
        .map_err(|e| format!("{:?}: {e}\n{ctx}", t.backend))?;
    close("O", &got.o.to_f32(), &want.o.to_f32(), t.tol).map_err(|e| format!("{e}\n{ctx}"))?;
    close("LSE", &got.lse.to_f32(), &want.lse.to_f32(), 2e-3).map_err(|e| format!("{e}\n{ctx}"))
}
