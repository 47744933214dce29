//! Element-wise kernels: unary maps, broadcast binary maps, multi-output maps, and dtype casts.
//!
//! Each output element is computed from its inputs alone, so these are trivially deterministic; they
//! parallelize over fixed chunks of the output, and run on the calling thread below [`CHUNK`]
//! elements. The functions of [`unary`] and the closures passed to [`zip`] are fixed at compile time (one instantiation
//! per function), so the loops inline and vectorize; the AVX-512 and AVX2+FMA copies make `mul_add` one
//! instruction and give the same bits as the portable ones (the same IEEE operations per element).

use super::float::Float;
use super::math;
use super::simd::multiversion;
use super::{best_isa, for_chunks, pool, Isa, CHUNK};
use crate::backend::spec::{broadcast_strides, BinaryOp, UnaryOp};
use crate::error::Result;
use rayon::prelude::*;
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

impl UnaryOp {
    /// The function on one element.
    #[inline(always)]
    pub(crate) fn apply<T: Float>(self, x: T) -> T {
        let c = |v: f64| T::from_f64(v);
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => {
                if x >= T::ZERO {
                    T::ONE / (T::ONE + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (T::ONE + e)
                }
            }
            UnaryOp::Relu => {
                if x > T::ZERO {
                    x
                } else {
                    T::ZERO
                }
            }
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => T::ONE / x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Square => x * x,
            UnaryOp::Erf => x.erf(),
            // mul_scalar and add_scalar are fused multiply-adds with 0 and 1 (so −0 becomes +0 as
            // in the composite ops).
            UnaryOp::Gelu => gelu_from(x, gelu_erf_arg(x).erf()),
            UnaryOp::GeluGrad => gelu_grad_from(x, gelu_grad_erf_arg(x).erf(), gelu_grad_exp_arg(x).exp()),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Powf(p) => x.powf(c(p)),
            UnaryOp::Clamp(lo, hi) => {
                if x < c(lo) {
                    c(lo)
                } else if x > c(hi) {
                    c(hi)
                } else {
                    x
                }
            }
            UnaryOp::Affine(a, b) => c(a).mul_add(x, c(b)),
            UnaryOp::Step => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            UnaryOp::Sign => {
                if x > T::ZERO {
                    T::ONE
                } else if x < T::ZERO {
                    -T::ONE
                } else {
                    T::ZERO
                }
            }
            UnaryOp::InRange(lo, hi) => {
                if x >= c(lo) && x <= c(hi) {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            UnaryOp::NonZero => {
                if x != T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }
}

impl UnaryOp {
    /// Whether the loops run this function a block at a time ([`UnaryOp::apply_block`]): those whose
    /// cost is a polynomial (exp, tanh, erf and the GELUs).
    fn has_block_form(self) -> bool {
        matches!(self, UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Erf | UnaryOp::Gelu | UnaryOp::GeluGrad)
    }

    /// The function on a block of values, with the same bits as [`UnaryOp::apply`] on each: the
    /// transcendental part runs the block's values side by side (see [`super::math`]); functions
    /// without a block form ([`UnaryOp::has_block_form`]) go one by one.
    #[inline(always)]
    fn apply_block<T: Float>(self, x: &[T; math::BLOCK]) -> [T; math::BLOCK] {
        let mut y = *x;
        match self {
            UnaryOp::Exp => y = T::exp_block(x),
            UnaryOp::Tanh => y = T::tanh_block(x),
            UnaryOp::Erf => y = T::erf_block(x),
            UnaryOp::Gelu => {
                let mut a = *x;
                for a in &mut a {
                    *a = gelu_erf_arg(*a);
                }
                let e = T::erf_block(&a);
                for ((y, &x), &e) in y.iter_mut().zip(x).zip(&e) {
                    *y = gelu_from(x, e);
                }
            }
            UnaryOp::GeluGrad => {
                let (mut a, mut b) = (*x, *x);
                for (a, b) in a.iter_mut().zip(&mut b) {
                    (*a, *b) = (gelu_grad_erf_arg(*a), gelu_grad_exp_arg(*b));
                }
                let (e, p) = (T::erf_block(&a), T::exp_block(&b));
                for (((y, &x), &e), &p) in y.iter_mut().zip(x).zip(&e).zip(&p) {
                    *y = gelu_grad_from(x, e, p);
                }
            }
            _ => {
                for y in &mut y {
                    *y = self.apply(*y);
                }
            }
        }
        y
    }
}

/// GELU's erf argument x/√2 (a fused multiply-add with 0, as the composite's mul_scalar: −0 becomes
/// +0).
#[inline(always)]
fn gelu_erf_arg<T: Float>(x: T) -> T {
    T::from_f64(FRAC_1_SQRT_2).mul_add(x, T::ZERO)
}

/// GELU from x and erf(x/√2): x/2 · (1 + erf), with the composite's mul_scalar and add_scalar.
#[inline(always)]
fn gelu_from<T: Float>(x: T, erf: T) -> T {
    T::from_f64(0.5).mul_add(x, T::ZERO) * erf.mul_add(T::ONE, T::ONE)
}

/// GELU's derivative's erf argument x/√2.
#[inline(always)]
fn gelu_grad_erf_arg<T: Float>(x: T) -> T {
    T::from_f64(FRAC_1_SQRT_2) * x
}

/// GELU's derivative's exp argument −x²/2.
#[inline(always)]
fn gelu_grad_exp_arg<T: Float>(x: T) -> T {
    T::from_f64(-0.5) * x * x
}

/// GELU's derivative Φ(x) + x·φ(x) from x, erf(x/√2) and e^(−x²/2).
#[inline(always)]
fn gelu_grad_from<T: Float>(x: T, erf: T, exp: T) -> T {
    let cdf = T::from_f64(0.5) * erf.mul_add(T::ONE, T::ONE);
    let pdf = exp * T::from_f64(FRAC_1_SQRT_2 * FRAC_2_SQRT_PI * 0.5);
    // pdf = 0 for |x| ≥ 14 (f32) or 38.6 (f64): the derivative is Φ(x), also at ±∞.
    if pdf == T::ZERO {
        cdf
    } else {
        x.mul_add(pdf, cdf)
    }
}

impl BinaryOp {
    /// The function on one pair of elements.
    #[inline(always)]
    pub(crate) fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => {
                if b > a || b.is_nan() {
                    b
                } else {
                    a
                }
            }
            BinaryOp::Min => {
                if b < a || b.is_nan() {
                    b
                } else {
                    a
                }
            }
            BinaryOp::Select => {
                if b != T::ZERO {
                    a
                } else {
                    -T::ZERO
                }
            }
        }
    }
}

/// `f` on every element of `xs` (parallel over fixed chunks).
pub(crate) fn unary<T: Float>(op: &'static str, xs: &[T], f: UnaryOp) -> Result<Vec<T>> {
    let mut out = pool::for_overwrite(op, xs.len())?;
    let isa = best_isa();
    for_chunks(&mut out, CHUNK, xs.len(), |i, o| {
        let x = xs.get(i * CHUNK..i * CHUNK + o.len()).unwrap_or_default();
        unary_slice(isa, o, x, f)
    });
    Ok(out)
}

/// out[i] = f(xs[i]): a block at a time for the functions with a block form (the same bits, faster:
/// see [`super::math`]), else one loop per variant of `f`: each arm rebuilds its variant from the bound
/// parameters, so the discriminant is a constant in its loop, the per-element `match` of
/// [`UnaryOp::apply`] folds away and simple bodies vectorize. `S` only picks the copy: everything
/// here is inlined into [`unary_slice`]'s `#[target_feature]` copies, so the element function is
/// compiled with their features however large it is (a closure would be a function of its own,
/// compiled without FMA when not inlined: erf's recurrence would then make a libm call per fused
/// multiply-add).
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
fn unary_rows<T: Float, S>(out: &mut [T], xs: &[T], f: UnaryOp) {
    macro_rules! per_variant {
        ($($pat:pat => $fixed:expr),* $(,)?) => {
            match f { $($pat => for (o, &x) in out.iter_mut().zip(xs) { *o = $fixed.apply(x) },)* }
        };
    }
    use UnaryOp::*;
    if f.has_block_form() {
        let mut oc = out.chunks_exact_mut(math::BLOCK);
        let mut xc = xs.chunks_exact(math::BLOCK);
        for (o, x) in (&mut oc).zip(&mut xc) {
            if let (Ok(o), Ok(x)) = (<&mut [T; math::BLOCK]>::try_from(o), <&[T; math::BLOCK]>::try_from(x)) {
                *o = f.apply_block(x);
            }
        }
        for (o, &x) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
            *o = f.apply(x);
        }
        return;
    }
    per_variant!(
        Neg => Neg, Exp => Exp, Log => Log, Tanh => Tanh, Sigmoid => Sigmoid, Relu => Relu, Sqrt => Sqrt,
        Rsqrt => Rsqrt, Abs => Abs, Square => Square, Erf => Erf, Sin => Sin, Cos => Cos, Powf(p) => Powf(p),
        Clamp(lo, hi) => Clamp(lo, hi), Affine(a, b) => Affine(a, b), Step => Step, Sign => Sign,
        InRange(lo, hi) => InRange(lo, hi), NonZero => NonZero, Gelu => Gelu, GeluGrad => GeluGrad,
    )
}

multiversion! {
    fn unary_slice<T: Float>(out: &mut [T], xs: &[T], f: UnaryOp) = unary_rows;
}

/// `f(a, b)` with broadcasting, one kernel instantiation per function (see [`unary`]).
pub(crate) fn binary<T: Float>(
    op: &'static str,
    a: &[T],
    ad: &[usize],
    b: &[T],
    bd: &[usize],
    out: &[usize],
    f: BinaryOp,
) -> Result<Vec<T>> {
    match f {
        BinaryOp::Add => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Add.apply(p, q)),
        BinaryOp::Sub => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Sub.apply(p, q)),
        BinaryOp::Mul => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Mul.apply(p, q)),
        BinaryOp::Div => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Div.apply(p, q)),
        BinaryOp::Max => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Max.apply(p, q)),
        BinaryOp::Min => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Min.apply(p, q)),
        BinaryOp::Select => zip(op, a, ad, b, bd, out, |p: T, q: T| BinaryOp::Select.apply(p, q)),
    }
}

/// out[j] = f(a[j·sa], b[j·sb]) for strides 0 or 1 (a broadcast scalar or a contiguous row), with the
/// common cases spelled out so they vectorize.
#[inline(always)]
fn zip_row<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            for ((o, &x), &y) in out.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        (1, 0) => {
            let y = b[0];
            for (o, &x) in out.iter_mut().zip(&a[..n]) {
                *o = f(x, y);
            }
        }
        (0, 1) => {
            let x = a[0];
            for (o, &y) in out.iter_mut().zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = f(a[j * sa], b[j * sb]);
            }
        }
    }
}

/// [`zip_row`] compiled for AVX2+FMA (same bits; see [`map_slice_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_row_avx2<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    zip_row(out, a, sa, b, sb, f)
}

/// [`zip_row`] compiled for AVX-512 (same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn zip_row_avx512<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    zip_row(out, a, sa, b, sb, f)
}

#[inline(always)]
fn zip_row_dispatch<T: Copy, F: Fn(T, T) -> T>(isa: Isa, out: &mut [T], a: &[T], sa: usize, b: &[T], sb: usize, f: &F) {
    match isa {
        // SAFETY: the caller got `isa` from best_isa(), which checked these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { zip_row_avx512(out, a, sa, b, sb, f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { zip_row_avx2(out, a, sa, b, sb, f) },
        _ => zip_row(out, a, sa, b, sb, f),
    }
}

/// `f(a, b)` element-wise with NumPy broadcasting of `a` (dims `ad`) and `b` (dims `bd`) to `out`
/// (lengths checked by the caller).
pub(crate) fn zip<T: Float, F: Fn(T, T) -> T + Sync>(
    op: &'static str,
    a: &[T],
    ad: &[usize],
    b: &[T],
    bd: &[usize],
    out: &[usize],
    f: F,
) -> Result<Vec<T>> {
    let n = crate::shape::numel(out);
    let mut o = pool::for_overwrite(op, n)?;
    let isa = best_isa();
    if ad == out && bd == out {
        for_chunks(&mut o, CHUNK, n, |i, o| zip_row_dispatch(isa, o, &a[i * CHUNK..], 1, &b[i * CHUNK..], 1, &f));
        return Ok(o);
    }
    if n == 0 {
        return Ok(o);
    }
    let sa = broadcast_strides(ad, out);
    let sb = broadcast_strides(bd, out);
    let r = out.len();
    let last = if r == 0 { 1 } else { out[r - 1] };
    let (la, lb) = if r == 0 { (0, 0) } else { (sa[r - 1], sb[r - 1]) };
    // Rows of the output, grouped so a task has about CHUNK elements.
    let rows_per_task = (CHUNK / last).max(1);
    for_chunks(&mut o, last * rows_per_task, n, |task, rows| {
        for (i, orow) in rows.chunks_mut(last).enumerate() {
            // Offsets of this row's first element.
            let (mut oa, mut ob, mut rem) = (0, 0, task * rows_per_task + i);
            for d in (0..r.saturating_sub(1)).rev() {
                let i = rem % out[d];
                rem /= out[d];
                oa += i * sa[d];
                ob += i * sb[d];
            }
            zip_row_dispatch(isa, orow, &a[oa..], la, &b[ob..], lb, &f);
        }
    });
    Ok(o)
}

/// `N` outputs from `M` inputs of one length: `(out[0][k], …, out[N−1][k]) = f(in[0][k], …, in[M−1][k])`,
/// in parallel over fixed chunks (fused multi-output kernels such as optimizer updates).
///
/// Each chunk runs in blocks of [`BLOCK`] elements computed into registers-sized local arrays, so the
/// loop has no bounds checks and no aliasing between the outputs, and vectorizes like [`map`] (with the
/// same ISA copies: `mul_add` is one instruction there, and the bits are the same everywhere).
pub(crate) fn zip_n<T: Float, const M: usize, const N: usize>(
    op: &'static str,
    ins: [&[T]; M],
    f: impl Fn([T; M]) -> [T; N] + Sync + Send,
) -> Result<[Vec<T>; N]> {
    let len = ins.first().map_or(0, |p| p.len());
    if ins.iter().any(|i| i.len() != len) {
        return crate::error::invalid(op, "fused update: operands of different lengths");
    }
    let mut outs: Vec<Vec<T>> = (0..N).map(|_| pool::for_overwrite(op, len)).collect::<Result<_>>()?;
    let mut chunks: Vec<std::slice::ChunksMut<'_, T>> = outs.iter_mut().map(|o| o.chunks_mut(CHUNK)).collect();
    let mut jobs: Vec<(usize, Vec<&mut [T]>)> = Vec::new();
    for c in 0..len.div_ceil(CHUNK) {
        jobs.push((c, chunks.iter_mut().filter_map(Iterator::next).collect()));
    }
    let isa = best_isa();
    let run = |(c, mut parts): (usize, Vec<&mut [T]>)| {
        let at = c * CHUNK;
        let n = parts.first().map_or(0, |p| p.len());
        let chunk_ins = ins.map(|i| &i[at..at + n]);
        zip_n_dispatch(isa, &chunk_ins, &mut parts, &f);
    };
    if len <= CHUNK {
        jobs.into_iter().for_each(run);
    } else {
        jobs.into_par_iter().for_each(run);
    }
    let mut it = outs.into_iter();
    Ok(std::array::from_fn(|_| it.next().unwrap_or_default()))
}

/// Elements per block of [`zip_n`]: each output is staged in a block this long and copied out whole.
/// Measured on a Zen 3 (AVX2), an SGD-with-momentum update of 100,352 f32 took 95 µs with blocks of
/// 16 (the per-block bookkeeping and a zeroed staging array each time) and 53 µs with 256.
const BLOCK: usize = 256;

#[inline(always)]
fn zip_n_slices<T: Float, const M: usize, const N: usize>(ins: &[&[T]; M], outs: &mut [&mut [T]], f: &impl Fn([T; M]) -> [T; N]) {
    let len = outs.first().map_or(0, |o| o.len());
    let mut at = 0;
    // One staging block for the whole slice: zeroed once here, not once per block.
    let mut ys = [[T::ZERO; BLOCK]; N];
    while at < len {
        let b = BLOCK.min(len - at);
        if b == BLOCK {
            #[allow(clippy::expect_used)] // infallible: each slice has exactly BLOCK elements
            let xs: [&[T; BLOCK]; M] = std::array::from_fn(|m| ins[m][at..at + BLOCK].try_into().expect("a full block"));
            for i in 0..BLOCK {
                let y = f(std::array::from_fn(|m| xs[m][i]));
                for j in 0..N {
                    ys[j][i] = y[j];
                }
            }
        } else {
            for i in 0..b {
                let y = f(std::array::from_fn(|m| ins[m][at + i]));
                for j in 0..N {
                    ys[j][i] = y[j];
                }
            }
        }
        for (o, y) in outs.iter_mut().zip(&ys) {
            match <&mut [T; BLOCK]>::try_from(&mut o[at..at + b]) {
                Ok(o) => *o = *y, // a fixed-size copy: register moves, not a memmove call
                Err(_) => o[at..at + b].copy_from_slice(&y[..b]),
            }
        }
        at += b;
    }
}

/// [`zip_n_slices`] compiled for AVX2+FMA (same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_n_avx2<T: Float, const M: usize, const N: usize>(ins: &[&[T]; M], outs: &mut [&mut [T]], f: &impl Fn([T; M]) -> [T; N]) {
    zip_n_slices(ins, outs, f)
}

/// [`zip_n_slices`] compiled for AVX-512 (same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn zip_n_avx512<T: Float, const M: usize, const N: usize>(ins: &[&[T]; M], outs: &mut [&mut [T]], f: &impl Fn([T; M]) -> [T; N]) {
    zip_n_slices(ins, outs, f)
}

#[inline(always)]
fn zip_n_dispatch<T: Float, const M: usize, const N: usize>(
    isa: Isa,
    ins: &[&[T]; M],
    outs: &mut [&mut [T]],
    f: &impl Fn([T; M]) -> [T; N],
) {
    match isa {
        // SAFETY: the caller got `isa` from best_isa(), which checked these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { zip_n_avx512(ins, outs, f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { zip_n_avx2(ins, outs, f) },
        _ => zip_n_slices(ins, outs, f),
    }
}

#[cfg(test)]
mod tests;
