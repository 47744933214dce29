//! Special functions written as straight-line arithmetic, so element-wise loops over them vectorize.
//!
//! Only correctly rounded IEEE operations (+, −, ×, ÷, conversions, and `mul_add`, one fused
//! multiply-add: an instruction with AVX2/AVX-512 or on AArch64, a correctly rounded libm call
//! elsewhere), and no branches that could differ between lanes, so the scalar, AVX2 and AVX-512 code
//! paths give the same bits, on every platform: unlike libm's `tanhf`, whose last bit can depend on the
//! C library.
//!
//! Each function is written once over [`Lanes`]: one f64 (the scalar `*_f32`), or a [`Block`] of
//! [`BLOCK`] values (the `*_f32_block` forms the element-wise loops use), where every step is one
//! operation applied to each lane in turn. The polynomials are chains of dependent multiply-adds, so a
//! loop over single values waits on each step's latency; a block runs [`BLOCK`] independent chains
//! side by side (four AVX2 vectors of f64), which keeps the FMA units busy: erf over 65,536 f32 on one
//! Zen 3 core went from 4.6 to 2.5 ns per value. Each lane sees the scalar form's operations in the
//! scalar form's order, so both give the same bits (tested).

/// The number of values in a [`Block`].
pub(crate) const BLOCK: usize = 16;

/// One f64, or [`BLOCK`] of them, with each operation applied lane by lane (see the module docs).
pub(crate) trait Lanes: Copy {
    /// Every lane `v`.
    fn splat(v: f64) -> Self;
    /// `f` on every lane.
    fn map(self, f: impl Fn(f64) -> f64) -> Self;
    /// `f` on every pair of lanes.
    fn zip(self, b: Self, f: impl Fn(f64, f64) -> f64) -> Self;
    /// `f` on every triple of lanes.
    fn zip3(self, b: Self, c: Self, f: impl Fn(f64, f64, f64) -> f64) -> Self;
}

impl Lanes for f64 {
    #[inline(always)]
    fn splat(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn map(self, f: impl Fn(f64) -> f64) -> f64 {
        f(self)
    }
    #[inline(always)]
    fn zip(self, b: f64, f: impl Fn(f64, f64) -> f64) -> f64 {
        f(self, b)
    }
    #[inline(always)]
    fn zip3(self, b: f64, c: f64, f: impl Fn(f64, f64, f64) -> f64) -> f64 {
        f(self, b, c)
    }
}

/// [`BLOCK`] f64 lanes.
#[derive(Clone, Copy)]
pub(crate) struct Block(pub(crate) [f64; BLOCK]);

impl Lanes for Block {
    #[inline(always)]
    fn splat(v: f64) -> Block {
        Block([v; BLOCK])
    }
    #[inline(always)]
    fn map(mut self, f: impl Fn(f64) -> f64) -> Block {
        for a in &mut self.0 {
            *a = f(*a);
        }
        self
    }
    #[inline(always)]
    fn zip(mut self, b: Block, f: impl Fn(f64, f64) -> f64) -> Block {
        for (a, &b) in self.0.iter_mut().zip(&b.0) {
            *a = f(*a, b);
        }
        self
    }
    #[inline(always)]
    fn zip3(mut self, b: Block, c: Block, f: impl Fn(f64, f64, f64) -> f64) -> Block {
        for ((a, &b), &c) in self.0.iter_mut().zip(&b.0).zip(&c.0) {
            *a = f(*a, b, c);
        }
        self
    }
}

/// A block of f32 widened to f64 (exactly).
#[inline(always)]
fn widen(x: &[f32; BLOCK]) -> Block {
    let mut w = [0.0; BLOCK];
    for (w, &x) in w.iter_mut().zip(x) {
        *w = x as f64;
    }
    Block(w)
}

/// A block of f32-exact f64 values narrowed to f32 (exactly).
#[inline(always)]
fn narrow(y: Block) -> [f32; BLOCK] {
    let mut n = [0.0; BLOCK];
    for (n, &y) in n.iter_mut().zip(&y.0) {
        *n = y as f32;
    }
    n
}

/// tanh for f32, computed in f64 and rounded once: tanh(t) = expm1(2t) / (expm1(2t) + 2) for t = |x|,
/// with the sign restored. expm1(u) = 2ᵏ·expm1(r) + (2ᵏ − 1) with u = k·ln2 + r, |r| ≤ ln2/2, and
/// expm1(r) a degree-13 Taylor polynomial (truncation < 1e-17): no cancellation near 0. The quotient
/// is the numerator times the reciprocal of the denominator, which starts as the f32 reciprocal
/// (2⁻²⁴ relative) and takes one Newton step in f64 (2⁻⁴⁸): a vector f64 division costs as much as the
/// whole polynomial. So the f64 value is within a few 1e-15 relative of tanh(x) and the result is
/// within 1 ulp (correctly rounded but for near-ties; on 22.5M sampled f32 it matched f64 tanh rounded
/// to f32 every time, glibc's `tanhf` in 97.3%).
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    tanh_lanes(x as f64) as f32
}

/// [`tanh_f32`] on a block (the same bits value by value).
#[inline(always)]
pub(crate) fn tanh_f32_block(x: &[f32; BLOCK]) -> [f32; BLOCK] {
    narrow(tanh_lanes(widen(x)))
}

/// [`tanh_f32`] over [`Lanes`]: `x` holds f32 values, the result their f32 tanh (widened).
#[inline(always)]
fn tanh_lanes<L: Lanes>(x: L) -> L {
    // tanh(9.1) rounds to 1 in f32 (as does everything beyond ~9.01); NaN stays NaN.
    let t = x.map(|x| {
        let t = x.abs();
        if t > 9.1 {
            9.1
        } else {
            t
        }
    });
    let (s, em1) = exp_split(t.map(|t| 2.0 * t), &INV_FACT); // 0 ≤ k ≤ 27
    let e = s.zip(em1, |s, em1| s.mul_add(em1, s - 1.0)); // expm1(2t)
    let d = e.map(|e| e + 2.0); // in [2, 2²⁷]
    let y = d.map(|d| (1.0 / d as f32) as f64);
    let y = y.zip(d, |y, d| y.mul_add((-d).mul_add(y, 1.0), y)); // one Newton step for 1/d
    e.zip3(y, x, |e, y, x| ((e * y) as f32).copysign(x as f32) as f64)
}

/// 1.5·2⁵²: adding it rounds a double of magnitude < 2⁵¹ to an integer, whose value sits in the low
/// bits of the sum.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// 1/n! for n = 13 down to 2 (Horner order for expm1(r) = r·(1 + r·(1/2! + r·(1/3! + ...)))).
const INV_FACT: [f64; 12] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    1.0 / 2.0,
];

/// (2ᵏ, expm1(r)) for u = k·ln2 + r, k = round(u/ln2), |r| ≤ ln2/2, with expm1(r) by Horner over
/// `terms` (a tail of [`INV_FACT`]: its length is the degree less one). |u| must keep 2ᵏ a normal f64.
#[inline(always)]
fn exp_split<L: Lanes>(u: L, terms: &[f64]) -> (L, L) {
    let kb = u.map(|u| u * std::f64::consts::LOG2_E + MAGIC);
    let k = kb.map(|kb| kb - MAGIC); // round(u / ln2)
    let r = u.zip(k, |u, k| u - k * std::f64::consts::LN_2);
    let mut p = L::splat(terms.first().copied().unwrap_or(0.0));
    for &c in terms.get(1..).unwrap_or_default() {
        p = p.zip(r, |p, r| p.mul_add(r, c));
    }
    let em1 = p.zip(r, |p, r| p.mul_add(r, 1.0) * r);
    let s = kb.map(|kb| f64::from_bits((kb.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(1023)) << 52));
    (s, em1)
}

/// e^x for f32, computed in f64 and rounded once: e^u = 2ᵏ·e^r with u = k·ln2 + r, |r| ≤ ln2/2, and
/// e^r a degree-12 Taylor polynomial (truncation < 2e-16). The f64 value is within a few 1e-16
/// relative of e^x, so the result is e^x correctly rounded but for near-ties (on the 22.2M sampled
/// f32 of the test it matched f64 `exp` rounded to f32 every time), overflow gives +∞ and underflow rounds
/// through the subnormals to 0 as the one rounding does. Unlike the C library's `expf`, it is the same
/// bits on every platform, and the element-wise loops over it vectorize (8 f64 lanes with AVX-512).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_lanes(x as f64) as f32
}

/// [`exp_f32`] on a block (the same bits value by value).
#[inline(always)]
pub(crate) fn exp_f32_block(x: &[f32; BLOCK]) -> [f32; BLOCK] {
    narrow(exp_lanes(widen(x)))
}

/// [`exp_f32`] over [`Lanes`] (as [`tanh_lanes`]).
#[inline(always)]
fn exp_lanes<L: Lanes>(x: L) -> L {
    // e^89 overflows f32 and e^−104 rounds to 0 in it; NaN stays NaN. So −150 ≤ k ≤ 129 and 2ᵏ is
    // a normal f64.
    let u = x.map(|x| x.clamp(-104.0, 89.0));
    let (s, em1) = exp_split(u, INV_FACT.get(1..).unwrap_or_default()); // degree 12
    s.zip(em1, |s, em1| s.mul_add(em1, s) as f32 as f64)
}

/// erf for f32, computed in f64 and rounded once: erf(t) = t·P(t²/8 − 1) for t = |x| ≤ 4, P a
/// degree-24 Chebyshev interpolant of erf(t)/t (coefficients fitted to Python's `math.erf` at 200
/// Chebyshev nodes; measured error 1.2e-14 relative on [0, 4]) evaluated by Clenshaw's recurrence,
/// which is stable where the power form would cancel; erf(t) rounds to 1 in f32 beyond t = 3.92. The
/// sign is restored (erf(−0) = −0). So the result is erf(x) correctly rounded but for near-ties (on
/// the 22.4M sampled f32 of the test it matched libm's f64 `erf` rounded to f32 every time),
/// the same bits on every platform, and the loops over it vectorize (libm's `erff` is a call per
/// element).
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    erf_lanes(x as f64) as f32
}

/// [`erf_f32`] on a block (the same bits value by value).
#[inline(always)]
pub(crate) fn erf_f32_block(x: &[f32; BLOCK]) -> [f32; BLOCK] {
    narrow(erf_lanes(widen(x)))
}

/// The Chebyshev coefficients of [`erf_f32`].
const ERF_C: [f64; 25] = [
    0.48591295690286296,
    -0.34540785500494986,
    0.16182910121364597,
    -0.07648275610550904,
    0.03466993680050742,
    -0.014811864147814907,
    0.005922937956232049,
    -0.002211840658810317,
    0.000771415427840231,
    -0.0002515965878096518,
    7.688658221067917e-05,
    -2.2065495939037507e-05,
    5.96127404148707e-06,
    -1.5197750713995407e-06,
    3.6649304328057847e-07,
    -8.378998357961364e-08,
    1.8201448759070282e-08,
    -3.7644780271609535e-09,
    7.42736826730862e-10,
    -1.4005327672600652e-10,
    2.5282903910320508e-11,
    -4.3766251595366894e-12,
    7.274780052022496e-13,
    -1.163771140216619e-13,
    1.787218001128718e-14,
];

/// [`erf_f32`] over [`Lanes`] (as [`tanh_lanes`]).
#[inline(always)]
fn erf_lanes<L: Lanes>(x: L) -> L {
    let t = x.map(|x| {
        let t = x.abs();
        if t > 4.0 {
            4.0
        } else {
            t
        }
    }); // NaN stays NaN
    let u = t.map(|t| (t * t).mul_add(0.125, -1.0));
    let u2 = u.map(|u| u + u);
    let (mut b1, mut b2) = (L::splat(0.0), L::splat(0.0));
    for &c in ERF_C[1..].iter().rev() {
        let b = u2.zip3(b1, b2, |u2, b1, b2| u2.mul_add(b1, c - b2));
        b2 = b1;
        b1 = b;
    }
    let p = u.zip3(b1, b2, |u, b1, b2| u.mul_add(b1, ERF_C[0] - b2));
    p.zip3(t, x, |p, t, x| ((p * t) as f32).copysign(x as f32) as f64)
}

/// sin for f32: the libm crate's f64 sine (pure Rust, so the same bits on every platform and ISA, unlike
/// the C library's `sinf`) of the exactly widened argument, rounded to f32 once. The f64 value is within
/// 1 ulp (of f64) of sin(x), so the result is sin(x) correctly rounded but for near-ties. Not
/// vectorized (a call per element), unlike [`tanh_f32`].
#[inline(always)]
pub(crate) fn sin_f32(x: f32) -> f32 {
    libm::sin(x as f64) as f32
}

/// cos for f32, as [`sin_f32`].
#[inline(always)]
pub(crate) fn cos_f32(x: f32) -> f32 {
    libm::cos(x as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn tanh_f32_within_one_ulp_of_f64_tanh() {
        let (mut worst, mut off, mut n) = (0u32, 0usize, 0usize);
        let mut check = |x: f32| {
            let (got, want) = (tanh_f32(x), (x as f64).tanh() as f32);
            let d = ulps(got, want);
            assert!(d <= 1, "tanh_f32({x:e}) = {got:e}, want {want:e}");
            worst = worst.max(d);
            off += (d > 0) as usize;
            n += 1;
        };
        // Every 97th f32 in [0, 12] and its negative, plus tiny, subnormal and huge values.
        let mut bits = 0u32;
        while f32::from_bits(bits) <= 12.0 {
            let x = f32::from_bits(bits);
            check(x);
            check(-x);
            bits += 97;
        }
        for x in [f32::MIN_POSITIVE, 1e-40, 1e-30, 1e-8, 9.0, 9.01, 9.1, 9.2, 20.0, 1e30, f32::MAX] {
            check(x);
            check(-x);
        }
        assert!(off * 10_000 < n, "{off} of {n} values are off by one ulp (worst {worst})");
    }

    #[test]
    fn sin_cos_f32_within_one_ulp_of_f64_std() {
        let (mut off, mut n) = (0usize, 0usize);
        let mut check = |x: f32| {
            for (got, want, name) in [(sin_f32(x), (x as f64).sin() as f32, "sin"), (cos_f32(x), (x as f64).cos() as f32, "cos")] {
                let d = ulps(got, want);
                assert!(d <= 1 || (got.is_nan() && want.is_nan()), "{name}_f32({x:e}) = {got:e}, want {want:e}");
                off += (d > 0 && !got.is_nan()) as usize;
                n += 1;
            }
        };
        // Every 9973rd f32 in [0, 1e6] and its negative (large arguments exercise the argument
        // reduction), plus special and huge values.
        let mut bits = 0u32;
        while f32::from_bits(bits) <= 1e6 {
            let x = f32::from_bits(bits);
            check(x);
            check(-x);
            bits += 9973;
        }
        for x in [f32::MIN_POSITIVE, 1e-40, 1e-30, 1e-8, std::f32::consts::FRAC_PI_2, std::f32::consts::PI, 1e10, 1e30, f32::MAX] {
            check(x);
            check(-x);
        }
        assert!(off * 10_000 < n, "{off} of {n} values are off by one ulp");
    }

    #[test]
    fn sin_cos_f32_special_values() {
        assert_eq!(sin_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(sin_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos_f32(0.0), 1.0);
        assert_eq!(cos_f32(-0.0), 1.0);
        for x in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            assert!(sin_f32(x).is_nan() && cos_f32(x).is_nan(), "{x}");
        }
    }

    #[test]
    fn tanh_f32_special_values() {
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// The block forms against the scalar forms, bit for bit, on every 4099th f32 bit pattern (both
    /// signs, NaNs, infinities and subnormals among them), each value in every lane position.
    #[test]
    fn block_forms_give_the_scalar_bits() {
        let mut xs: Vec<f32> = (0..=u32::MAX / 4099).map(|i| f32::from_bits(i * 4099)).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 9.1, -9.1, 4.0, -4.0, 89.0, -104.0]);
        type Form = (&'static str, fn(f32) -> f32, fn(&[f32; BLOCK]) -> [f32; BLOCK]);
        let forms: [Form; 3] = [("exp", exp_f32, exp_f32_block), ("tanh", tanh_f32, tanh_f32_block), ("erf", erf_f32, erf_f32_block)];
        for (name, one, block) in forms {
            // Shifted by one each time, so each value meets every lane.
            for shift in 0..BLOCK {
                for w in xs[shift..].chunks_exact(BLOCK) {
                    let w: &[f32; BLOCK] = w.try_into().unwrap();
                    for (&x, y) in w.iter().zip(block(w)) {
                        let want = one(x);
                        assert!(
                            y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                            "{name}({x:e}): block {y:e}, scalar {want:e}"
                        );
                    }
                }
            }
        }
    }

    /// Every `step`th f32 in [0, hi] and its negative, plus `extra`, against `want`: within 1 ulp, and
    /// off by one in fewer than 1 in 10,000.
    fn sweep(name: &str, got: impl Fn(f32) -> f32, want: impl Fn(f32) -> f32, hi: f32, step: u32, extra: &[f32]) {
        let (mut off, mut n) = (0usize, 0usize);
        let mut check = |x: f32| {
            let (g, w) = (got(x), want(x));
            let d = ulps(g, w);
            assert!(d <= 1 || (g.is_nan() && w.is_nan()), "{name}({x:e}) = {g:e}, want {w:e}");
            off += (d > 0) as usize;
            n += 1;
        };
        let mut bits = 0u32;
        while f32::from_bits(bits) <= hi {
            check(f32::from_bits(bits));
            check(-f32::from_bits(bits));
            bits += step;
        }
        for &x in extra {
            check(x);
            check(-x);
        }
        assert!(off * 10_000 < n, "{name}: {off} of {n} values are off by one ulp");
    }

    #[test]
    fn exp_f32_within_one_ulp_of_f64_exp() {
        let extra = [f32::MIN_POSITIVE, 1e-40, 1e-8, 80.0, 88.72, 88.73, 89.0, 100.0, 103.0, 103.3, 103.97, 104.0, 200.0, f32::MAX];
        sweep("exp_f32", exp_f32, |x| (x as f64).exp() as f32, 120.0, 101, &extra);
    }

    #[test]
    fn erf_f32_within_one_ulp_of_f64_erf() {
        let extra = [f32::MIN_POSITIVE, 1e-40, 1e-30, 1e-8, 3.9, 3.92, 3.93, 4.0, 4.1, 10.0, 1e30, f32::MAX];
        sweep("erf_f32", erf_f32, |x| libm::erf(x as f64) as f32, 6.0, 97, &extra);
    }

    #[test]
    fn exp_erf_f32_special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY).to_bits(), 0.0f32.to_bits());
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(erf_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
    }
}
