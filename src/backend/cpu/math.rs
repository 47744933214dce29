//! Special functions written as straight-line arithmetic, so element-wise loops over them vectorize.
//!
//! Only correctly rounded IEEE operations (+, −, ×, ÷, conversions, and `mul_add`, one fused
//! multiply-add: an instruction with AVX2/AVX-512 or on AArch64, a correctly rounded libm call
//! elsewhere), and no branches that could differ between lanes, so the scalar, AVX2 and AVX-512 code
//! paths give the same bits, on every platform: unlike libm's `tanhf`, whose last bit can depend on the
//! C library.

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
    let t = (x as f64).abs();
    // tanh(9.1) rounds to 1 in f32 (as does everything beyond ~9.01); NaN stays NaN.
    let t = if t > 9.1 { 9.1 } else { t };
    let (s, em1) = exp_split(2.0 * t, &INV_FACT); // 0 ≤ k ≤ 27
    let e = s.mul_add(em1, s - 1.0); // expm1(2t)
    let d = e + 2.0; // in [2, 2²⁷]
    let y = (1.0 / d as f32) as f64;
    let y = y.mul_add((-d).mul_add(y, 1.0), y); // one Newton step for 1/d
    ((e * y) as f32).copysign(x)
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
fn exp_split(u: f64, terms: &[f64]) -> (f64, f64) {
    let kb = u * std::f64::consts::LOG2_E + MAGIC;
    let k = kb - MAGIC; // round(u / ln2)
    let r = u - k * std::f64::consts::LN_2;
    let mut p = terms.first().copied().unwrap_or(0.0);
    for &c in terms.get(1..).unwrap_or_default() {
        p = p.mul_add(r, c);
    }
    let em1 = p.mul_add(r, 1.0) * r;
    let s = f64::from_bits((kb.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(1023)) << 52);
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
    // e^89 overflows f32 and e^−104 rounds to 0 in it; NaN stays NaN. So −150 ≤ k ≤ 129 and 2ᵏ is
    // a normal f64.
    let u = (x as f64).clamp(-104.0, 89.0);
    let (s, em1) = exp_split(u, INV_FACT.get(1..).unwrap_or_default()); // degree 12
    s.mul_add(em1, s) as f32
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
    const C: [f64; 25] = [
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
    let t = (x as f64).abs();
    let t = if t > 4.0 { 4.0 } else { t }; // NaN stays NaN
    let u = (t * t).mul_add(0.125, -1.0);
    let u2 = u + u;
    let (mut b1, mut b2) = (0.0f64, 0.0f64);
    for &c in C[1..].iter().rev() {
        let b = u2.mul_add(b1, c - b2);
        b2 = b1;
        b1 = b;
    }
    let p = u.mul_add(b1, C[0] - b2);
    ((p * t) as f32).copysign(x)
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
