//! `metagrad::nn` layers: each forward against an independent f64 loop, finite-difference gradient
//! and HVP checks, dropout determinism, a REPLAY metagradient through a 1-block transformer built from
//! the layers (against finite differences of `replay::evaluate`), and errors.

use metagrad::gradcheck::{check_grad, check_hvp};
use metagrad::nn::{
    clip_grad_norm, piecewise_linear, warmup_cosine, BatchNorm2d, Block, Conv2d, Dropout, Embedding, Init, LayerNorm, Linear,
    MultiHeadAttention, Params, RmsNorm,
};
use metagrad::optim::{scalar, Sgd};
use metagrad::replay::{evaluate, metagradient, ScheduleKind, StepCtx, Training};
use metagrad::{Conv2dOpts, DType, Error, Result, Tape, Tensor, Var};

const F: DType = DType::F64;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), F, seed)
}

fn vals(v: &Var) -> Vec<f64> {
    v.value().to_vec_f64()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// Parameters with every tensor replaced by a random one (so zero biases and unit gains do not hide
/// mistakes), and their values by name.
fn randomized(p: &Params, seed: u64) -> Params {
    let mut out = Params::new();
    for (i, (name, t)) in p.iter().enumerate() {
        out.insert(name, randn(t.dims(), seed + i as u64).mul_scalar(0.5).unwrap()).unwrap();
    }
    out
}

fn get(p: &Params, name: &str) -> Vec<f64> {
    p.get(name).unwrap().to_vec_f64()
}

/// A scalar loss Σ c ⊙ y² with fixed random c, for gradient checks.
fn loss_of(y: &Var, seed: u64) -> Result<Var> {
    let c = Var::constant(randn(y.dims(), seed));
    y.square()?.mul(&c)?.sum_all()
}

/// Gradient and HVP checks of `f(x, params)` at x and p's values.
fn check_layer(p: &Params, x: &Tensor, f: impl Fn(&Params, &Var, &[Var]) -> Result<Var>, what: &str) {
    let mut inputs = vec![x.clone()];
    inputs.extend(p.iter().map(|(_, t)| t.clone()));
    let func = |v: &[Var]| -> Result<Var> { loss_of(&f(p, &v[0], &v[1..])?, 99) };
    let r = check_grad(func, &inputs, 1e-6).unwrap();
    assert!(r.within(1e-7, 1e-6), "{what} gradient: {r}");
    let dirs: Vec<Tensor> = inputs.iter().enumerate().map(|(i, t)| randn(t.dims(), 500 + i as u64)).collect();
    let r = check_hvp(func, &inputs, &dirs, 1e-5).unwrap();
    assert!(r.within(1e-6, 1e-5), "{what} HVP: {r}");
}

#[test]
fn linear_matches_a_loop_and_gradchecks() {
    let mut p = Params::new();
    let lin = Linear::init(&mut p, "fc", 4, 3, true, F, 1).unwrap();
    assert_eq!(p.names().collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
    let bound = 0.5; // 1/√4
    assert!(get(&p, "fc.weight").iter().all(|w| w.abs() <= bound) && get(&p, "fc.bias").iter().all(|&b| b == 0.0));
    let p = randomized(&p, 10);
    let x = randn(&[2, 3, 4], 2);
    let y = lin.forward(&p.vars(&p.constants()).unwrap(), &Var::constant(x.clone())).unwrap();
    assert_eq!(y.dims(), [2, 3, 3]);
    let (w, b, xv) = (get(&p, "fc.weight"), get(&p, "fc.bias"), x.to_vec_f64());
    let want: Vec<f64> = (0..6)
        .flat_map(|r| (0..3).map(move |o| (r, o)))
        .map(|(r, o)| b[o] + (0..4).map(|i| xv[r * 4 + i] * w[i * 3 + o]).sum::<f64>())
        .collect();
    close(&vals(&y), &want, 1e-12, "linear");
    // A single vector, and no bias.
    let y1 = lin
        .forward(
            &p.vars(&p.constants()).unwrap(),
            &Var::constant(x.reshape([6, 4]).unwrap().narrow(0, 0, 1).unwrap().reshape([4]).unwrap()),
        )
        .unwrap();
    close(&vals(&y1), &want[..3], 1e-12, "linear on a vector");
    let mut q = Params::new();
    let nb = Linear::init(&mut q, "fc", 4, 3, false, F, 1).unwrap();
    assert_eq!(q.len(), 1);
    let mut q2 = Params::new();
    q2.insert("fc.weight", p.get("fc.weight").unwrap().clone()).unwrap();
    let consts = q2.constants();
    let y2 = nb.forward(&q2.vars(&consts).unwrap(), &Var::constant(x.clone())).unwrap();
    let want_nb: Vec<f64> = want.iter().enumerate().map(|(k, v)| v - b[k % 3]).collect();
    close(&vals(&y2), &want_nb, 1e-12, "linear without bias");
    check_layer(&p, &x, |p, x, v| lin.forward(&p.vars(v)?, x), "linear");
}

#[test]
fn init_depends_on_seed_and_name_only() {
    let mut a = Params::new();
    Linear::init(&mut a, "x", 3, 3, false, F, 5).unwrap();
    Linear::init(&mut a, "fc", 4, 3, false, F, 5).unwrap();
    let mut b = Params::new();
    Linear::init(&mut b, "fc", 4, 3, false, F, 5).unwrap();
    assert!(a.get("fc.weight").unwrap().bit_eq(b.get("fc.weight").unwrap()), "same seed and name, same values");
    let mut c = Params::new();
    Linear::init(&mut c, "fc", 4, 3, false, F, 6).unwrap();
    assert!(!c.get("fc.weight").unwrap().bit_eq(b.get("fc.weight").unwrap()));
    let t = Init::Normal(0.02).tensor("w", &[20000], F, 3).unwrap().to_vec_f64();
    let sd = (t.iter().map(|v| v * v).sum::<f64>() / t.len() as f64).sqrt();
    assert!((sd - 0.02).abs() < 0.001, "std {sd}");
}

#[test]
fn conv2d_and_batchnorm_match_loops() {
    let mut p = Params::new();
    let conv = Conv2d::init(&mut p, "conv", (2, 3), (3, 3), Conv2dOpts::new(1, 1), true, F, 4).unwrap();
    let bn = BatchNorm2d::init(&mut p, "bn", 3, 1e-5, F).unwrap();
    let p = randomized(&p, 20);
    let x = randn(&[2, 2, 4, 5], 3);
    let consts = p.constants();
    let nv = p.vars(&consts).unwrap();
    let y = conv.forward(&nv, &Var::constant(x.clone())).unwrap();
    assert_eq!(y.dims(), [2, 3, 4, 5]);
    let (w, b, xv) = (get(&p, "conv.weight"), get(&p, "conv.bias"), x.to_vec_f64());
    let mut want = vec![0.0; 2 * 3 * 4 * 5];
    for n in 0..2 {
        for o in 0..3 {
            for i in 0..4 {
                for j in 0..5 {
                    let mut s = b[o];
                    for c in 0..2 {
                        for di in 0..3 {
                            for dj in 0..3 {
                                let (ii, jj) = (i as isize + di as isize - 1, j as isize + dj as isize - 1);
                                if (0..4).contains(&ii) && (0..5).contains(&jj) {
                                    s += w[((o * 2 + c) * 3 + di) * 3 + dj] * xv[((n * 2 + c) * 4 + ii as usize) * 5 + jj as usize];
                                }
                            }
                        }
                    }
                    want[((n * 3 + o) * 4 + i) * 5 + j] = s;
                }
            }
        }
    }
    close(&vals(&y), &want, 1e-12, "conv2d");
    let z = bn.forward(&nv, &y).unwrap();
    let (g, beta) = (get(&p, "bn.weight"), get(&p, "bn.bias"));
    let zv = vals(&z);
    for o in 0..3 {
        let idx: Vec<usize> = (0..2).flat_map(|n| (0..20).map(move |k| (n * 3 + o) * 20 + k)).collect();
        let m = idx.iter().map(|&k| want[k]).sum::<f64>() / 40.0;
        let var = idx.iter().map(|&k| (want[k] - m).powi(2)).sum::<f64>() / 40.0;
        for &k in &idx {
            let e = (want[k] - m) / (var + 1e-5).sqrt() * g[o] + beta[o];
            assert!((zv[k] - e).abs() < 1e-10, "batch norm {k}: {} vs {e}", zv[k]);
        }
    }
}

#[test]
fn layer_norm_and_rms_norm_match_loops_and_gradcheck() {
    let mut p = Params::new();
    let ln = LayerNorm::init(&mut p, "ln", 5, 1e-5, F).unwrap();
    let rms = RmsNorm::init(&mut p, "rms", 5, 1e-6, F).unwrap();
    assert_eq!(get(&p, "rms.weight"), vec![1.0; 5]);
    let p = randomized(&p, 30);
    let x = randn(&[3, 5], 4);
    let consts = p.constants();
    let nv = p.vars(&consts).unwrap();
    let (a, b) = (ln.forward(&nv, &Var::constant(x.clone())).unwrap(), rms.forward(&nv, &Var::constant(x.clone())).unwrap());
    let (xv, lw, lb, rw) = (x.to_vec_f64(), get(&p, "ln.weight"), get(&p, "ln.bias"), get(&p, "rms.weight"));
    let (mut wa, mut wb) = (vec![], vec![]);
    for r in xv.chunks(5) {
        let m = r.iter().sum::<f64>() / 5.0;
        let v = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 5.0;
        let ms = r.iter().map(|x| x * x).sum::<f64>() / 5.0;
        for (j, x) in r.iter().enumerate() {
            wa.push((x - m) / (v + 1e-5).sqrt() * lw[j] + lb[j]);
            wb.push(x / (ms + 1e-6).sqrt() * rw[j]);
        }
    }
    close(&vals(&a), &wa, 1e-12, "layer norm");
    close(&vals(&b), &wb, 1e-12, "rms norm");
    check_layer(&p, &x, |p, x, v| ln.forward(&p.vars(v)?, x), "layer norm");
    check_layer(&p, &x, |p, x, v| rms.forward(&p.vars(v)?, x), "rms norm");
}

#[test]
fn embedding_selects_rows_and_ties() {
    let mut p = Params::new();
    let emb = Embedding::init(&mut p, "tok", 6, 3, 0.02, F, 5).unwrap();
    let consts = p.constants();
    let nv = p.vars(&consts).unwrap();
    let ids = [5, 0, 2, 2];
    let y = emb.forward(&nv, &ids, &[2, 2]).unwrap();
    assert_eq!(y.dims(), [2, 2, 3]);
    let w = get(&p, "tok.weight");
    let want: Vec<f64> = ids.iter().flat_map(|&i| w[i * 3..i * 3 + 3].to_vec()).collect();
    assert_eq!(vals(&y), want);
    let s = emb.attend(&nv, &y).unwrap();
    assert_eq!(s.dims(), [2, 2, 6]);
    let sv = vals(&s);
    for (k, &i) in ids.iter().enumerate() {
        for v in 0..6 {
            let e: f64 = (0..3).map(|j| w[i * 3 + j] * w[v * 3 + j]).sum();
            assert!((sv[k * 6 + v] - e).abs() < 1e-15);
        }
    }
}

/// Causal multi-head attention of x [B, L, d] with projections from `p` (prefix "attn"), by loops.
fn attention_loop(p: &Params, x: &[f64], (b, l, d, h): (usize, usize, usize, usize)) -> Vec<f64> {
    let (wq, bq, wo, bo) = (get(p, "attn.qkv.weight"), get(p, "attn.qkv.bias"), get(p, "attn.proj.weight"), get(p, "attn.proj.bias"));
    let hd = d / h;
    let lin = |xs: &[f64], w: &[f64], bias: &[f64], n_out: usize, n_in: usize| -> Vec<f64> {
        xs.chunks(n_in).flat_map(|r| (0..n_out).map(move |o| bias[o] + (0..n_in).map(|i| r[i] * w[i * n_out + o]).sum::<f64>())).collect()
    };
    let qkv = lin(x, &wq, &bq, 3 * d, d);
    let mut o = vec![0.0; b * l * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..l {
                let q = |t: usize, part: usize, j: usize| qkv[(bi * l + t) * 3 * d + part * d + hi * hd + j];
                let s: Vec<f64> = (0..=i).map(|t| (0..hd).map(|j| q(i, 0, j) * q(t, 1, j)).sum::<f64>() / (hd as f64).sqrt()).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for j in 0..hd {
                    o[(bi * l + i) * d + hi * hd + j] = s.iter().enumerate().map(|(t, v)| (v - m).exp() / z * q(t, 2, j)).sum();
                }
            }
        }
    }
    lin(&o, &wo, &bo, d, d)
}

#[test]
fn attention_matches_a_loop_and_gradchecks() {
    let (b, l, d, h) = (2, 4, 6, 2);
    let mut p = Params::new();
    let attn = MultiHeadAttention::init(&mut p, "attn", d, h, 0.02, F, 6).unwrap();
    assert_eq!(p.names().collect::<Vec<_>>(), ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"]);
    let p = randomized(&p, 40);
    let x = randn(&[b, l, d], 7);
    let y = attn.forward(&p.vars(&p.constants()).unwrap(), &Var::constant(x.clone())).unwrap();
    close(&vals(&y), &attention_loop(&p, &x.to_vec_f64(), (b, l, d, h)), 1e-12, "attention");
    check_layer(&p, &x, |p, x, v| attn.forward(&p.vars(v)?, x), "attention");
}

#[test]
fn block_is_pre_norm_residual_and_gradchecks() {
    let (b, l, d, h, hid) = (1, 3, 4, 2, 8);
    let mut p = Params::new();
    let block = Block::init(&mut p, "blocks.0", d, h, hid, 0.02, F, 8).unwrap();
    assert_eq!(p.len(), 2 + 4 + 2 + 4);
    let p = randomized(&p, 50);
    let x = randn(&[b, l, d], 9);
    let y = block.forward(&p.vars(&p.constants()).unwrap(), &Var::constant(x.clone())).unwrap();
    // By hand: layer norms, the attention loop (on parameters renamed to its prefix) and the MLP.
    let ln = |xs: &[f64], w: &[f64], bb: &[f64]| -> Vec<f64> {
        xs.chunks(d)
            .flat_map(|r| {
                let m = r.iter().sum::<f64>() / d as f64;
                let v = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / d as f64;
                r.iter().enumerate().map(move |(j, x)| (x - m) / (v + 1e-5).sqrt() * w[j] + bb[j]).collect::<Vec<_>>()
            })
            .collect()
    };
    let mut ap = Params::new();
    for n in ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"] {
        ap.insert(format!("attn.{n}"), p.get(&format!("blocks.0.attn.{n}")).unwrap().clone()).unwrap();
    }
    let g = |n: &str| get(&p, &format!("blocks.0.{n}"));
    let xv = x.to_vec_f64();
    let a = attention_loop(&ap, &ln(&xv, &g("ln1.weight"), &g("ln1.bias")), (b, l, d, h));
    let h1: Vec<f64> = xv.iter().zip(&a).map(|(x, a)| x + a).collect();
    let z = ln(&h1, &g("ln2.weight"), &g("ln2.bias"));
    let (w1, b1, w2, b2) = (g("mlp.fc1.weight"), g("mlp.fc1.bias"), g("mlp.fc2.weight"), g("mlp.fc2.bias"));
    let gelu = |v: f64| 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt()));
    let mut want = h1.clone();
    for r in 0..b * l {
        let hidden: Vec<f64> = (0..hid).map(|k| gelu(b1[k] + (0..d).map(|i| z[r * d + i] * w1[i * hid + k]).sum::<f64>())).collect();
        for o in 0..d {
            want[r * d + o] += b2[o] + (0..hid).map(|k| hidden[k] * w2[k * d + o]).sum::<f64>();
        }
    }
    close(&vals(&y), &want, 1e-9, "block");
    check_layer(&p, &x, |p, x, v| block.forward(&p.vars(v)?, x), "block");
}

/// erf by its Maclaurin series (|x| small here), independent of the crate's.
fn libm_erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..60 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn dropout_masks_are_keyed_by_seed_stream_and_step() {
    let d = Dropout::new(0.25, 3).unwrap();
    let n = 100_000;
    let a = d.keep_mask(42, 7, n).unwrap();
    assert_eq!(a, d.keep_mask(42, 7, n).unwrap(), "same key, same mask bits");
    assert_ne!(a, d.keep_mask(42, 8, n).unwrap(), "another step, another mask");
    assert_ne!(a, d.keep_mask(43, 7, n).unwrap(), "another seed, another mask");
    assert_ne!(a, Dropout::new(0.25, 4).unwrap().keep_mask(42, 7, n).unwrap(), "another stream, another mask");
    assert_eq!(a[..1000], d.keep_mask(42, 7, 1000).unwrap()[..], "element i depends on i only");
    let kept = a.iter().filter(|&&k| k).count() as f64 / n as f64;
    assert!((kept - 0.75).abs() < 0.01, "keep fraction {kept}");
    // forward: kept elements scaled by 1/(1 − p), the others zero; bitwise reproducible.
    let x = randn(&[40, 25], 11);
    let y = d.forward(&Var::constant(x.clone()), 42, 7).unwrap();
    let m = d.keep_mask(42, 7, 1000).unwrap();
    for ((yv, xv), k) in vals(&y).iter().zip(x.to_vec_f64()).zip(&m) {
        assert_eq!(*yv, if *k { xv * (1.0 / 0.75) } else { 0.0 });
    }
    assert!(y.value().bit_eq(d.forward(&Var::constant(x.clone()), 42, 7).unwrap().value()));
    assert!(Dropout::new(0.0, 0).unwrap().forward(&Var::constant(x.clone()), 1, 1).unwrap().value().bit_eq(&x));
    // f32 inputs get an f32 mask.
    assert_eq!(d.forward(&Var::constant(x.to_dtype(DType::F32)), 1, 2).unwrap().dtype(), DType::F32);
}

#[test]
fn clip_grad_norm_scales_and_gradchecks() {
    let g = [randn(&[3, 2], 12), randn(&[4], 13)];
    let norm = g.iter().flat_map(|t| t.to_vec_f64()).map(|v| v * v).sum::<f64>().sqrt();
    for max in [0.5 * norm, 2.0 * norm] {
        let vars: Vec<Var> = g.iter().map(|t| Var::constant(t.clone())).collect();
        let c = clip_grad_norm(&vars, max).unwrap();
        let s = (max / norm).min(1.0);
        for (ci, gi) in c.iter().zip(&g) {
            close(&vals(ci), &gi.to_vec_f64().iter().map(|v| v * s).collect::<Vec<_>>(), 1e-14, "clipped");
        }
        let f = |v: &[Var]| -> Result<Var> {
            let c = clip_grad_norm(v, max)?;
            loss_of(&c[0], 1)?.add(&c[1].mul(&Var::constant(randn(&[4], 2)))?.sum_all()?)
        };
        let r = check_grad(f, &g, 1e-6).unwrap();
        assert!(r.within(1e-8, 1e-6), "clip {max}: {r}");
        let dirs = [randn(&[3, 2], 14), randn(&[4], 15)];
        let r = check_hvp(f, &g, &dirs, 1e-5).unwrap();
        assert!(r.within(1e-7, 1e-5), "clip HVP {max}: {r}");
    }
    assert!(clip_grad_norm(&[], 1.0).unwrap().is_empty());
    // All-zero gradients: finite derivatives (no √0 in the formula).
    let z = Tensor::zeros([3], F);
    let r = check_grad(|v| clip_grad_norm(v, 1.0)?.remove(0).sum_all(), &[z], 1e-6).unwrap();
    assert!(r.max_abs_err < 1e-9 && r.analytic[0].iter().all(|v| v.is_finite()), "{r}");
}

#[test]
fn lr_schedules_are_right_and_differentiable() {
    let peak = Tensor::scalar(0.1, F);
    let (warm, total, r) = (3, 13, 0.1);
    for t in 0..total {
        let lr = warmup_cosine(&Var::constant(peak.clone()), t, warm, total, r).unwrap().value().to_scalar().unwrap();
        let want = if t < warm {
            0.1 * (t + 1) as f64 / 3.0
        } else {
            0.1 * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * (t - warm) as f64 / 10.0).cos()))
        };
        assert!((lr - want).abs() < 1e-15, "t {t}: {lr} vs {want}");
        let rep = check_grad(|v| warmup_cosine(&v[0], t, warm, total, r)?.square(), std::slice::from_ref(&peak), 1e-6).unwrap();
        assert!(rep.within(1e-9, 1e-7), "warmup_cosine grad at {t}: {rep}");
    }
    let keys = Tensor::from_vec(vec![0.0, 1.0, 0.5, 0.25], [4]).unwrap();
    let at = [2, 4, 8, 9];
    let want = [0.0, 0.0, 0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.25, 0.25];
    for (t, w) in want.iter().enumerate() {
        let lr = piecewise_linear(&Var::constant(keys.clone()), &at, t).unwrap().value().to_scalar().unwrap();
        assert!((lr - w).abs() < 1e-15, "t {t}: {lr} vs {w}");
        let f = |v: &[Var]| piecewise_linear(&v[0], &at, t)?.square();
        let rep = check_grad(f, std::slice::from_ref(&keys), 1e-6).unwrap();
        assert!(rep.within(1e-9, 1e-7), "piecewise grad at {t}: {rep}");
        let rep = check_hvp(f, std::slice::from_ref(&keys), &[randn(&[4], t as u64)], 1e-5).unwrap();
        assert!(rep.within(1e-8, 1e-6), "piecewise HVP at {t}: {rep}");
    }
    let one = Tensor::from_vec(vec![0.3], [1]).unwrap();
    assert_eq!(piecewise_linear(&Var::constant(one), &[5], 9).unwrap().value().to_scalar().unwrap(), 0.3);
}

// ---- REPLAY through a 1-block transformer built from the layers ----

const V: usize = 7;
const L: usize = 4;
const D: usize = 8;
const B: usize = 2;
const T: usize = 3;
const CLIP: f64 = 0.5;

struct TinyGpt {
    params: Params,
    tok: Embedding,
    pos: String,
    drop: Dropout,
    block: Block,
    ln_f: LayerNorm,
}

impl TinyGpt {
    fn new() -> TinyGpt {
        let mut params = Params::new();
        let tok = Embedding::init(&mut params, "tok", V, D, 0.3, F, 1).unwrap();
        let pos = "pos".to_string();
        params.insert(&pos, Init::Normal(0.3).tensor(&pos, &[L, D], F, 1).unwrap()).unwrap();
        let block = Block::init(&mut params, "blocks.0", D, 2, 16, 0.3, F, 1).unwrap();
        let ln_f = LayerNorm::init(&mut params, "ln_f", D, 1e-5, F).unwrap();
        params.add_buffers("sgd.momentum").unwrap();
        TinyGpt { params, tok, pos, drop: Dropout::new(0.1, 0).unwrap(), block, ln_f }
    }

    /// Tokens of batch `s`: [B, L + 1], deterministic in s.
    fn tokens(s: usize) -> Vec<usize> {
        (0..B * (L + 1)).map(|i| (i * 3 + s * 5 + i * i * s) % V).collect()
    }

    /// Mean next-token cross-entropy; dropout on the embeddings at `step` (None: no dropout).
    fn loss(&self, state: &[Var], s: usize, step: Option<u64>) -> Result<Var> {
        let p = self.params.vars(state)?;
        let tokens = &Self::tokens(s);
        let inputs: Vec<usize> = (0..B).flat_map(|b| (0..L).map(move |t| tokens[b * (L + 1) + t])).collect();
        let targets: Vec<usize> = (0..B).flat_map(|b| (0..L).map(move |t| tokens[b * (L + 1) + t + 1])).collect();
        let mut h = self.tok.forward(&p, &inputs, &[B, L])?.add(p.get("test", &self.pos)?)?;
        if let Some(step) = step {
            h = self.drop.forward(&h, 1234, step)?;
        }
        let h = self.ln_f.forward(&p, &self.block.forward(&p, &h)?)?;
        self.tok.attend(&p, &h.reshape([B * L, D])?)?.cross_entropy(&targets, None)
    }
}

impl Training for TinyGpt {
    fn steps(&self) -> usize {
        T
    }
    fn initial_state(&self) -> Result<Vec<Tensor>> {
        Ok(self.params.to_state())
    }
    fn step(&self, ctx: &StepCtx, t: usize, state: &[Var], meta: &[Var]) -> Result<Vec<Var>> {
        let (params, bufs) = self.params.split_state(state)?;
        let loss = self.loss(state, t, Some(t as u64))?;
        let g = ctx.grad(&loss, &params.iter().collect::<Vec<_>>())?;
        let g = clip_grad_norm(&g, CLIP)?;
        let p0 = &state[0];
        let opt = Sgd {
            lr: piecewise_linear(&meta[0], &[0, T - 1], t)?,
            momentum: Some(scalar(0.9, p0)),
            weight_decay: scalar(0.0, p0),
            nesterov: false,
        };
        let (p, v) = opt.step(params, &g, bufs[0])?;
        Ok(p.into_iter().chain(v).collect())
    }
    fn output(&self, state: &[Var]) -> Result<Var> {
        self.loss(state, 100, None)
    }
}

#[test]
fn replay_metagradient_through_a_transformer_matches_finite_differences() {
    let tr = TinyGpt::new();
    let z = vec![Tensor::from_vec(vec![0.3, 0.1], [2]).unwrap()];
    // Clipping is active: the first step's gradient norm exceeds CLIP.
    let tape = Tape::new();
    let leaves = tr.params.leaves(&tape);
    let loss = tr.loss(&leaves, 0, Some(0)).unwrap();
    let g = metagrad::grad(&loss, &leaves.iter().collect::<Vec<_>>(), false).unwrap();
    let norm = g.iter().flat_map(vals).map(|v| v * v).sum::<f64>().sqrt();
    assert!(norm > CLIP, "gradient norm {norm}");
    let mg = metagradient(&tr, &z, ScheduleKind::KAry { k: 2 }).unwrap();
    assert_eq!(mg.phi, evaluate(&tr, &z).unwrap());
    for i in 0..2 {
        let h = 1e-5;
        let at = |d: f64| {
            let mut v = z[0].to_vec_f64();
            v[i] += d;
            evaluate(&tr, &[Tensor::from_vec(v, [2]).unwrap()]).unwrap()
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        let a = mg.grads[0].to_vec_f64()[i];
        assert!((a - fd).abs() <= 1e-6 * a.abs().max(fd.abs()) + 1e-10, "lr keypoint {i}: metagradient {a:e} vs finite difference {fd:e}");
        assert!(a.abs() > 1e-6, "a non-trivial metagradient ({a:e})");
    }
    // The trained state, read back by name.
    let named = Params::from_state(&tr.params, &mg.state).unwrap();
    assert!(named.get("blocks.0.attn.qkv.weight").is_some() && named.buffer("sgd.momentum", "pos").is_some());
}

#[test]
fn bad_input_is_an_error_naming_the_layer() {
    let mut p = Params::new();
    let lin = Linear::init(&mut p, "fc", 4, 3, true, F, 1).unwrap();
    let nv_c = p.constants();
    let nv = p.vars(&nv_c).unwrap();
    let e = lin.forward(&nv, &Var::constant(randn(&[2, 5], 1))).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "nn::Linear", .. }) && e.to_string().contains("fc.weight") && e.to_string().contains("[2, 5]"),
        "{e}"
    );
    // A layer whose names are not in the collection.
    let mut other = Params::new();
    let lin2 = Linear::init(&mut other, "head", 4, 3, true, F, 1).unwrap();
    let e = lin2.forward(&nv, &Var::constant(randn(&[2, 4], 1))).unwrap_err();
    assert!(matches!(&e, Error::Invalid { .. }) && e.to_string().contains("head.weight"), "{e}");
    // Params::vars: wrong length, wrong shape.
    assert!(matches!(p.vars(&nv_c[..1]), Err(Error::Invalid { .. })));
    let swapped = vec![nv_c[1].clone(), nv_c[0].clone()];
    let e = p.vars(&swapped).unwrap_err();
    assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains("fc.weight"), "{e}");
    // Heads that do not divide the width, duplicate names, bad sizes.
    let e = MultiHeadAttention::init(&mut Params::new(), "attn", 6, 4, 0.02, F, 1).unwrap_err();
    assert!(matches!(&e, Error::Invalid { op: "nn::MultiHeadAttention", .. }) && e.to_string().contains("4 heads"), "{e}");
    assert!(Linear::init(&mut p, "fc", 4, 3, true, F, 1).is_err(), "duplicate names");
    assert!(Linear::init(&mut Params::new(), "fc", 0, 3, true, F, 1).is_err());
    assert!(LayerNorm::init(&mut Params::new(), "ln", 4, -1.0, F).is_err());
    // Layers given the wrong input rank or width.
    let mut q = Params::new();
    let attn = MultiHeadAttention::init(&mut q, "attn", 4, 2, 0.02, F, 1).unwrap();
    let ln = LayerNorm::init(&mut q, "ln", 4, 1e-5, F).unwrap();
    let conv = Conv2d::init(&mut q, "conv", (2, 3), (3, 3), Conv2dOpts::default(), false, F, 1).unwrap();
    let emb = Embedding::init(&mut q, "emb", 5, 4, 0.02, F, 1).unwrap();
    let qc = q.constants();
    let qv = q.vars(&qc).unwrap();
    let e = attn.forward(&qv, &Var::constant(randn(&[2, 4], 1))).unwrap_err();
    assert!(matches!(&e, Error::Shape { op: "nn::MultiHeadAttention", .. }), "{e}");
    assert!(matches!(ln.forward(&qv, &Var::constant(randn(&[2, 3], 1))), Err(Error::Shape { op: "nn::LayerNorm", .. })));
    assert!(matches!(conv.forward(&qv, &Var::constant(randn(&[1, 3, 5, 5], 1))), Err(Error::Shape { op: "nn::Conv2d", .. })));
    let e = emb.forward(&qv, &[1, 5], &[2]).unwrap_err();
    assert!(matches!(&e, Error::Invalid { op: "nn::Embedding", .. }) && e.to_string().contains("id 5"), "{e}");
    assert!(emb.forward(&qv, &[1, 2], &[3]).is_err());
    // Dropout, clipping, schedules.
    assert!(Dropout::new(1.0, 0).is_err() && Dropout::new(-0.1, 0).is_err() && Dropout::new(f64::NAN, 0).is_err());
    let g = [Var::constant(randn(&[2], 1))];
    assert!(clip_grad_norm(&g, 0.0).is_err() && clip_grad_norm(&g, f64::INFINITY).is_err());
    let peak = Var::constant(Tensor::scalar(0.1, F));
    assert!(warmup_cosine(&peak, 10, 2, 10, 0.0).is_err() && warmup_cosine(&peak, 1, 10, 10, 0.0).is_err());
    assert!(warmup_cosine(&peak, 1, 2, 10, 1.5).is_err());
    assert!(warmup_cosine(&Var::constant(Tensor::zeros([2], F)), 1, 2, 10, 0.0).is_err());
    let keys = Var::constant(Tensor::zeros([3], F));
    assert!(matches!(piecewise_linear(&keys, &[0, 5], 1), Err(Error::Shape { .. })));
    assert!(matches!(piecewise_linear(&keys, &[0, 5, 5], 1), Err(Error::Invalid { .. })));
    // Inside a gradient too: a tracked forward on leaves works with the same layers.
    let tape = Tape::new();
    let leaves = p.leaves(&tape);
    let y = lin.forward(&p.vars(&leaves).unwrap(), &Var::constant(randn(&[2, 4], 1))).unwrap();
    assert!(y.is_tracked());
}

mod hand_written_gpt {
    use super::*;
    const V: usize = 11;
    const L: usize = 5;
    const D: usize = 8;
    const H: usize = 2;
    const BLOCKS: usize = 2;
    const B: usize = 3;

    /// The GPT of `examples/step_speed.rs`, written by hand on the flat parameter list (its code, at small
    /// sizes), against the same model from the layers: the parameter order is the example's, and the loss
    /// and gradients are the same bits.
    #[test]
    fn layers_reproduce_the_hand_written_gpt_bit_for_bit() {
        let (hd, dm) = (D / H, 4 * D);
        let mut p = Params::new();
        let tok = Embedding::init(&mut p, "tok", V, D, 0.02, DType::F32, 3).unwrap();
        p.insert("pos", Init::Normal(0.02).tensor("pos", &[L, D], DType::F32, 3).unwrap()).unwrap();
        let blocks: Vec<Block> =
            (0..BLOCKS).map(|i| Block::init(&mut p, &format!("blocks.{i}"), D, H, dm, 0.02, DType::F32, 3).unwrap()).collect();
        let ln_f = LayerNorm::init(&mut p, "ln_f", D, 1e-5, DType::F32).unwrap();
        let p = {
            let mut r = Params::new();
            for (i, (n, t)) in p.iter().enumerate() {
                r.insert(n, Tensor::randn(t.dims().to_vec(), DType::F32, 70 + i as u64).mul_scalar(0.1).unwrap()).unwrap();
            }
            r
        };
        assert_eq!(p.len(), 2 + 12 * BLOCKS + 2);
        let tokens: Vec<usize> = (0..B * (L + 1)).map(|i| (i * 7 + 3) % V).collect();
        let inputs: Vec<usize> = (0..B).flat_map(|b| (0..L).map(|t| tokens[b * (L + 1) + t]).collect::<Vec<_>>()).collect();
        let targets: Vec<usize> = (0..B).flat_map(|b| (0..L).map(|t| tokens[b * (L + 1) + t + 1]).collect::<Vec<_>>()).collect();
        // step_speed's gpt_loss.
        let by_hand = |p: &[Var]| -> Result<Var> {
            let mut h = p[0].index_select(0, &inputs)?.reshape([B, L, D])?.add(&p[1])?;
            for l in 0..BLOCKS {
                let q = &p[2 + 12 * l..14 + 12 * l];
                let qkv = h.layer_norm(Some(&q[0]), Some(&q[1]), 1e-5)?.matmul(&q[2])?.add(&q[3])?;
                let head = |i: usize| qkv.narrow(-1, i * D, D)?.reshape([B, L, H, hd])?.permute(&[0, 2, 1, 3]);
                let o = head(0)?.attention(&head(1)?, &head(2)?, 1.0 / (hd as f64).sqrt(), true)?;
                let o = o.permute(&[0, 2, 1, 3])?.reshape([B, L, D])?;
                h = h.add(&o.matmul(&q[4])?.add(&q[5])?)?;
                let m = h.layer_norm(Some(&q[6]), Some(&q[7]), 1e-5)?.matmul(&q[8])?.add(&q[9])?.gelu()?.matmul(&q[10])?.add(&q[11])?;
                h = h.add(&m)?;
            }
            let n = p.len();
            let logits = h.layer_norm(Some(&p[n - 2]), Some(&p[n - 1]), 1e-5)?.reshape([B * L, D])?.matmul_t(&p[0], false, true)?;
            logits.cross_entropy(&targets, None)
        };
        let from_layers = |s: &[Var]| -> Result<Var> {
            let v = p.vars(s)?;
            let mut h = tok.forward(&v, &inputs, &[B, L])?.add(v.get("test", "pos")?)?;
            for b in &blocks {
                h = b.forward(&v, &h)?;
            }
            tok.attend(&v, &ln_f.forward(&v, &h)?.reshape([B * L, D])?)?.cross_entropy(&targets, None)
        };
        let tape = Tape::new();
        let leaves = p.leaves(&tape);
        let (a, b) = (by_hand(&leaves).unwrap(), from_layers(&leaves).unwrap());
        assert!(a.value().bit_eq(b.value()), "loss {:?} vs {:?}", a.value(), b.value());
        let refs: Vec<&Var> = leaves.iter().collect();
        let (ga, gb) = (metagrad::grad(&a, &refs, false).unwrap(), metagrad::grad(&b, &refs, false).unwrap());
        for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
            assert!(x.value().bit_eq(y.value()), "gradient of `{}`", p.name_of(i).unwrap());
        }
    }
}
