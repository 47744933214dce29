//! Tensors, shapes, dtypes and random numbers: creation, shape utilities (broadcasting, strides, axes),
//! dtype conversions (round to nearest even, checked against `half` and against an exact reference),
//! byte round trips, and the counter-based generator (moments, ranges, seeds, `derive_seed`).
use half::{bf16, f16};
use metagrad::dtype::Element;
use metagrad::{random, DType, Device, Error, Shape, Tensor};
use proptest::prelude::*;

const ALL: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

/// A small deterministic stream of u64s (splitmix64) for sampling bit patterns.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------------
// Creation
// ---------------------------------------------------------------------------------------------------

#[test]
fn from_vec_and_from_slice_keep_values_and_shape() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
    assert_eq!(t.dims(), &[2, 3]);
    assert_eq!(t.rank(), 2);
    assert_eq!(t.numel(), 6);
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.device(), Device::Cpu);
    assert_eq!(t.size_in_bytes(), 24);
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    let d = [0.5f64, -0.25, 8.0];
    let s = Tensor::from_slice(&d, [3]).unwrap();
    assert_eq!(s.dtype(), DType::F64);
    assert_eq!(s.to_vec::<f64>().unwrap(), d.to_vec());
    assert_eq!(s.size_in_bytes(), 24);

    let b = Tensor::from_vec(vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)], [2, 1]).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(b.to_vec_f64(), vec![1.5, -2.0]);
    assert_eq!(b.size_in_bytes(), 4);
    let h = Tensor::from_vec(vec![f16::from_f32(0.125)], [1, 1, 1]).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(h.to_scalar().unwrap(), 0.125);
}

#[test]
fn scalars_and_empty_tensors() {
    let s = Tensor::from_vec(vec![3.5f64], ()).unwrap();
    assert_eq!(s.rank(), 0);
    assert_eq!(s.numel(), 1);
    assert_eq!(s.dims(), &[] as &[usize]);
    assert_eq!(s.to_scalar().unwrap(), 3.5);
    let s2 = Tensor::scalar(-1.25, DType::F32);
    assert_eq!(s2.rank(), 0);
    assert_eq!(s2.dtype(), DType::F32);
    assert_eq!(s2.to_scalar().unwrap(), -1.25);
    for dt in ALL {
        assert_eq!(Tensor::scalar(2.0, dt).to_scalar().unwrap(), 2.0, "{dt}");
    }

    let e = Tensor::from_vec(Vec::<f32>::new(), [0]).unwrap();
    assert_eq!(e.numel(), 0);
    assert_eq!(e.size_in_bytes(), 0);
    assert!(e.as_bytes().unwrap().is_empty());
    let e = Tensor::from_vec(Vec::<f64>::new(), [2, 0, 3]).unwrap();
    assert_eq!(e.dims(), &[2, 0, 3]);
    assert_eq!(e.numel(), 0);
    assert!(e.to_vec_f64().is_empty());
    assert!(e.all_finite());
    assert!(Tensor::zeros([4, 0], DType::BF16).to_vec_f64().is_empty());
    // A one-element tensor of any rank is a scalar for to_scalar.
    assert_eq!(Tensor::full(7.0, [1, 1, 1], DType::F64).to_scalar().unwrap(), 7.0);
}

#[test]
fn zeros_ones_full_in_every_dtype() {
    for dt in ALL {
        let z = Tensor::zeros([2, 3], dt);
        assert_eq!((z.dtype(), z.dims()), (dt, &[2usize, 3][..]));
        assert!(z.to_vec_f64().iter().all(|&v| v == 0.0 && v.is_sign_positive()), "{dt}");
        assert_eq!(z.size_in_bytes(), 6 * dt.size_in_bytes());
        assert!(z.as_bytes().unwrap().iter().all(|&b| b == 0), "zeros are +0.0 bit patterns in {dt}");
        let o = Tensor::ones([4], dt);
        assert_eq!(o.to_vec_f64(), vec![1.0; 4], "{dt}");
        let f = Tensor::full(-3.0, [2, 2], dt);
        assert_eq!(f.to_vec_f64(), vec![-3.0; 4], "{dt}");
    }
    // full rounds to the dtype.
    assert_eq!(Tensor::full(0.1, [1], DType::F32).to_vec::<f32>().unwrap(), vec![0.1f32]);
    assert_eq!(Tensor::full(0.1, [1], DType::F64).to_vec::<f64>().unwrap(), vec![0.1f64]);
    assert_eq!(Tensor::full(0.1, [1], DType::BF16).to_vec::<bf16>().unwrap(), vec![bf16::from_f64(0.1)]);
    assert_eq!(Tensor::full(0.1, [1], DType::F16).to_vec::<f16>().unwrap(), vec![f16::from_f64(0.1)]);
    // Values beyond a storage type's range become infinities, NaN stays NaN.
    assert_eq!(Tensor::full(1e6, [1], DType::F16).to_vec_f64(), vec![f64::INFINITY]);
    assert!(Tensor::full(f64::NAN, [1], DType::BF16).to_vec_f64()[0].is_nan());
    assert!(!Tensor::full(f64::NAN, [1], DType::F32).all_finite());
    assert!(!Tensor::full(f64::NEG_INFINITY, [1], DType::F16).all_finite());
}

#[test]
fn all_finite_finds_one_bad_value_anywhere_in_every_dtype() {
    // The scan works in chunks: a NaN or ±∞ at the first, a middle, a chunk-edge or the last position
    // is found, while the largest finite values and subnormals are finite (the oracle: f64::is_finite
    // of the value as stored).
    let n = 1000;
    for dt in ALL {
        let base = Tensor::randn([n], DType::F64, 7).try_to_dtype(dt).unwrap();
        assert!(base.all_finite(), "{dt}");
        let big = match dt {
            DType::F64 => f64::MAX,
            DType::F32 => f32::MAX as f64,
            DType::BF16 => bf16::MAX.to_f64(),
            DType::F16 => f16::MAX.to_f64(),
        };
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, big, -big, 1e-310, 0.0] {
            for at in [0, 255, 256, 511, 700, n - 1] {
                let mut v = base.to_vec_f64();
                v[at] = bad;
                let t = Tensor::from_vec(v, [n]).unwrap().try_to_dtype(dt).unwrap();
                let stored = t.to_vec_f64()[at];
                assert_eq!(t.all_finite(), stored.is_finite(), "{dt}: {bad} stored as {stored} at {at}");
            }
        }
    }
}

#[test]
fn arange_values_and_dtypes() {
    let a = Tensor::arange(0.0, 1.0, 5, DType::F64);
    assert_eq!(a.dims(), &[5]);
    assert_eq!(a.to_vec::<f64>().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    let b = Tensor::arange(1.5, -0.5, 4, DType::F32);
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![1.5, 1.0, 0.5, 0.0]);
    // Element i is start + step·i computed in f64, then rounded once.
    let c = Tensor::arange(0.1, 0.1, 10, DType::F32);
    let want: Vec<f32> = (0..10).map(|i| (0.1 + 0.1 * i as f64) as f32).collect();
    assert_eq!(c.to_vec::<f32>().unwrap(), want);
    let e = Tensor::arange(3.0, 1.0, 0, DType::BF16);
    assert_eq!((e.dims(), e.dtype()), (&[0usize][..], DType::BF16));
    assert_eq!(Tensor::arange(0.0, 2.0, 3, DType::F16).to_vec_f64(), vec![0.0, 2.0, 4.0]);
}

#[test]
fn tensor_reshape_shares_the_buffer_and_checks_the_count() {
    let t = Tensor::arange(0.0, 1.0, 12, DType::F32);
    let r = t.reshape([3, 4]).unwrap();
    assert_eq!(r.dims(), &[3, 4]);
    assert_eq!(r.as_bytes().unwrap(), t.as_bytes().unwrap());
    assert_eq!(r.as_bytes().unwrap().as_ptr(), t.as_bytes().unwrap().as_ptr(), "reshape must not copy");
    assert_eq!(r.reshape([2, 2, 3]).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    assert!(t.reshape([5]).is_err());
    assert_eq!(Tensor::scalar(1.0, DType::F64).reshape([1, 1]).unwrap().dims(), &[1, 1]);
}

#[test]
fn clone_is_a_handle_copy_and_bit_eq_compares_bits() {
    let t = Tensor::randn([3, 5], DType::F32, 1);
    let c = t.clone();
    assert_eq!(c.as_bytes().unwrap().as_ptr(), t.as_bytes().unwrap().as_ptr());
    assert!(t.bit_eq(&c));
    // Same values, other dtype or shape: not bit-equal.
    assert!(!t.bit_eq(&t.to_dtype(DType::F64)));
    assert!(!t.bit_eq(&t.reshape([5, 3]).unwrap()));
    // Bitwise: +0 and −0 differ, and a NaN equals itself.
    let pz = Tensor::from_vec(vec![0.0f64], [1]).unwrap();
    let nz = Tensor::from_vec(vec![-0.0f64], [1]).unwrap();
    assert!(!pz.bit_eq(&nz));
    let nan = Tensor::from_vec(vec![f64::NAN], [1]).unwrap();
    assert!(nan.bit_eq(&nan.clone()));
    // Debug shows the shape, dtype, device and at most 8 values.
    let s = format!("{:?}", Tensor::arange(0.0, 1.0, 10, DType::F64));
    assert!(s.contains("[10]") && s.contains("f64") && s.contains("cpu") && s.contains("..."), "{s}");
    let s = format!("{:?}", Tensor::zeros([0], DType::BF16));
    assert!(s.contains("bf16"), "{s}");
}

// ---------------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------------

#[test]
fn shape_basics_and_strides() {
    let s = Shape::new([2, 3, 4]);
    assert_eq!((s.rank(), s.numel()), (3, 24));
    assert_eq!(s.strides(), vec![12, 4, 1]);
    assert_eq!(Shape::new([5]).strides(), vec![1]);
    assert_eq!(Shape::new(Vec::<usize>::new()).strides(), Vec::<usize>::new());
    assert_eq!(Shape::new([3, 0, 2]).strides(), vec![0, 2, 1]);
    assert_eq!(Shape::new([3, 0, 2]).numel(), 0);
    assert_eq!(Shape::from(()).numel(), 1, "a scalar has one element");
    assert_eq!(Shape::from(()).rank(), 0);
    assert_eq!(Shape::new([7, 1, 1]).strides(), vec![1, 1, 1]);
    // Conversions agree.
    assert_eq!(Shape::from([2usize, 3]), Shape::from(vec![2usize, 3]));
    assert_eq!(Shape::from(&[2usize, 3][..]), Shape::new([2, 3]));
    assert_eq!(Shape::from(&s), s);
    assert_eq!(Shape::default(), Shape::from(()));
    // Display is the dims as a list, as errors print them.
    assert_eq!(s.to_string(), "[2, 3, 4]");
    assert_eq!(format!("{:?}", s), "[2, 3, 4]");
    assert_eq!(Shape::from(()).to_string(), "[]");
    // Strides agree with row-major addressing.
    let st = s.strides();
    let mut flat = 0;
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                assert_eq!(i * st[0] + j * st[1] + k * st[2], flat);
                flat += 1;
            }
        }
    }
}

#[test]
fn axis_resolution() {
    let s = Shape::new([2, 3, 4]);
    assert_eq!(s.axis("op", 0).unwrap(), 0);
    assert_eq!(s.axis("op", 2).unwrap(), 2);
    assert_eq!(s.axis("op", -1).unwrap(), 2);
    assert_eq!(s.axis("op", -3).unwrap(), 0);
    for bad in [3isize, -4, 100, isize::MIN, isize::MAX] {
        let e = s.axis("myop", bad).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "myop", .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("myop") && msg.contains("[2, 3, 4]") && msg.contains(&bad.to_string()), "{msg}");
    }
    // A scalar has no axes at all.
    assert!(Shape::from(()).axis("op", 0).is_err());
    assert!(Shape::from(()).axis("op", -1).is_err());
    assert_eq!(s.split_at_axis(0), (1, 2, 12));
    assert_eq!(s.split_at_axis(1), (2, 3, 4));
    assert_eq!(s.split_at_axis(2), (6, 4, 1));
}

#[test]
fn broadcasting_rules() {
    let b = |a: &[usize], c: &[usize]| Shape::broadcast("bc", &Shape::from(a), &Shape::from(c));
    assert_eq!(b(&[2, 3], &[3]).unwrap(), Shape::new([2, 3]));
    assert_eq!(b(&[2, 1], &[1, 3]).unwrap(), Shape::new([2, 3]));
    assert_eq!(b(&[], &[4, 5]).unwrap(), Shape::new([4, 5]));
    assert_eq!(b(&[4, 5], &[]).unwrap(), Shape::new([4, 5]));
    assert_eq!(b(&[5, 1, 4], &[3, 1]).unwrap(), Shape::new([5, 3, 4]));
    assert_eq!(b(&[0], &[1]).unwrap(), Shape::new([0]));
    assert_eq!(b(&[2, 0], &[2, 1]).unwrap(), Shape::new([2, 0]));
    assert_eq!(b(&[1, 1], &[1]).unwrap(), Shape::new([1, 1]));
    for (x, y) in [(&[2usize, 3][..], &[2usize][..]), (&[0], &[2]), (&[4, 3], &[2, 3]), (&[2, 3, 4], &[3, 3])] {
        let e = b(x, y).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "bc", .. }), "{e:?}");
        let m = e.to_string();
        assert!(m.contains(&Shape::from(x).to_string()) && m.contains(&Shape::from(y).to_string()), "{m}");
    }
    assert!(Shape::new([3]).broadcasts_to(&Shape::new([2, 3])));
    assert!(Shape::new([1, 3]).broadcasts_to(&Shape::new([2, 3])));
    assert!(Shape::from(()).broadcasts_to(&Shape::new([2, 3])));
    assert!(!Shape::new([2, 3]).broadcasts_to(&Shape::new([3])));
    assert!(!Shape::new([2]).broadcasts_to(&Shape::new([2, 3])));
    assert!(!Shape::new([1]).broadcasts_to(&Shape::from(())));
    assert!(Shape::new([0]).broadcasts_to(&Shape::new([5, 0])));
    assert!(Shape::new([1]).broadcasts_to(&Shape::new([0])));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// broadcast is symmetric; when it succeeds both operands broadcast to the result; when it fails,
    /// some aligned pair of dimensions differs with neither being 1.
    #[test]
    fn broadcast_properties(a in prop::collection::vec(0usize..4, 0..5), b in prop::collection::vec(0usize..4, 0..5)) {
        let (sa, sb) = (Shape::new(a.clone()), Shape::new(b.clone()));
        let ab = Shape::broadcast("p", &sa, &sb);
        let ba = Shape::broadcast("p", &sb, &sa);
        prop_assert_eq!(ab.is_ok(), ba.is_ok());
        match ab {
            Ok(s) => {
                prop_assert_eq!(&s, ba.as_ref().unwrap());
                prop_assert!(sa.broadcasts_to(&s) && sb.broadcasts_to(&s));
                prop_assert_eq!(s.rank(), a.len().max(b.len()));
            }
            Err(_) => {
                let clash = a.iter().rev().zip(b.iter().rev()).any(|(&x, &y)| x != y && x != 1 && y != 1);
                prop_assert!(clash);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// DTypes and conversions
// ---------------------------------------------------------------------------------------------------

#[test]
fn dtype_properties() {
    assert_eq!(DType::F32.size_in_bytes(), 4);
    assert_eq!(DType::F64.size_in_bytes(), 8);
    assert_eq!(DType::BF16.size_in_bytes(), 2);
    assert_eq!(DType::F16.size_in_bytes(), 2);
    assert!(DType::F32.is_compute() && DType::F64.is_compute());
    assert!(!DType::BF16.is_compute() && !DType::F16.is_compute());
    let names: Vec<String> = ALL.iter().map(|d| d.to_string()).collect();
    assert_eq!(names, ["f32", "f64", "bf16", "f16"]);
    assert_eq!(<f32 as Element>::DTYPE, DType::F32);
    assert_eq!(<f64 as Element>::DTYPE, DType::F64);
    assert_eq!(<bf16 as Element>::DTYPE, DType::BF16);
    assert_eq!(<f16 as Element>::DTYPE, DType::F16);
}

/// Exact round-to-nearest-even of a finite f64 to a binary format with `p` significand bits (implicit
/// bit included), minimum normal exponent `emin` and maximum exponent `emax` (gradual underflow,
/// overflow to infinity). Works on the value alone, so it is an independent reference for `half`.
fn rne(x: f64, p: i32, emin: i32, emax: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let a = x.abs();
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023; // x is a normal f64 in every test below
    let ulp = 2f64.powi(e.max(emin) - (p - 1));
    let r = (a / ulp).round_ties_even() * ulp; // a / ulp and the product are exact: ulp is a power of two
    let r = if r >= 2f64.powi(emax + 1) { f64::INFINITY } else { r };
    r.copysign(x)
}
fn rne_bf16(x: f64) -> bf16 {
    bf16::from_f64(rne(x, 8, -126, 127)) // the argument is representable, so any conversion is exact
}
fn rne_f16(x: f64) -> f16 {
    f16::from_f64(rne(x, 11, -14, 15))
}

#[test]
fn rne_reference_is_sound() {
    // The reference itself, on hand-picked ties and neighbours of ties.
    assert_eq!(rne(1.0 + 2f64.powi(-8), 8, -126, 127), 1.0); // tie → even (1.0)
    assert_eq!(rne(1.0 + 3.0 * 2f64.powi(-8), 8, -126, 127), 1.0 + 2f64.powi(-6)); // tie → even
    assert_eq!(rne(1.0 + 2f64.powi(-8) + 2f64.powi(-40), 8, -126, 127), 1.0 + 2f64.powi(-7)); // above the tie
    assert_eq!(rne(65520.0, 11, -14, 15), f64::INFINITY); // f16: max 65504, half-ulp above overflows
    assert_eq!(rne(65519.0, 11, -14, 15), 65504.0);
    assert_eq!(rne(2f64.powi(-25), 11, -14, 15), 0.0); // half the smallest f16 subnormal: tie → 0
    assert_eq!(rne(3.0 * 2f64.powi(-26), 11, -14, 15), 2f64.powi(-24));
}

#[test]
fn widening_is_exact_for_every_bf16_and_f16() {
    // All 65536 bit patterns of each 16-bit type: widening to f32 and f64 is exact (matches `half`),
    // and narrowing back returns the same bits (NaNs stay NaN).
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let b: Vec<bf16> = bits.iter().map(|&u| bf16::from_bits(u)).collect();
    let h: Vec<f16> = bits.iter().map(|&u| f16::from_bits(u)).collect();
    let bt = Tensor::from_vec(b.clone(), [b.len()]).unwrap();
    let ht = Tensor::from_vec(h.clone(), [h.len()]).unwrap();
    for (t, name) in [(&bt, "bf16"), (&ht, "f16")] {
        let w32 = t.to_dtype(DType::F32).to_vec::<f32>().unwrap();
        let w64 = t.to_dtype(DType::F64).to_vec::<f64>().unwrap();
        let v64 = t.to_vec_f64();
        let back32 = t.to_dtype(DType::F32).to_dtype(t.dtype());
        let back64 = t.to_dtype(DType::F64).to_dtype(t.dtype());
        for i in 0..bits.len() {
            let (want32, want64) = if name == "bf16" { (b[i].to_f32(), b[i].to_f64()) } else { (h[i].to_f32(), h[i].to_f64()) };
            if want64.is_nan() {
                assert!(w32[i].is_nan() && w64[i].is_nan() && v64[i].is_nan(), "{name} {:#06x}", bits[i]);
                continue;
            }
            assert_eq!(w32[i].to_bits(), want32.to_bits(), "{name} {:#06x} -> f32", bits[i]);
            assert_eq!(w64[i].to_bits(), want64.to_bits(), "{name} {:#06x} -> f64", bits[i]);
            assert_eq!(v64[i].to_bits(), want64.to_bits(), "{name} {:#06x} to_vec_f64", bits[i]);
            assert_eq!(w64[i].to_bits(), (w32[i] as f64).to_bits(), "{name} {:#06x}: f32 and f64 widenings agree", bits[i]);
            assert_eq!(&back32.as_bytes().unwrap()[2 * i..2 * i + 2], &bits[i].to_le_bytes(), "{name} {:#06x} via f32", bits[i]);
            assert_eq!(&back64.as_bytes().unwrap()[2 * i..2 * i + 2], &bits[i].to_le_bytes(), "{name} {:#06x} via f64", bits[i]);
        }
    }
}

#[test]
fn f32_f64_round_trip_is_exact() {
    let mut st = 1;
    let v: Vec<f32> = (0..100_000)
        .map(|_| f32::from_bits(splitmix(&mut st) as u32))
        .filter(|x| !x.is_nan())
        .chain([0.0, -0.0, f32::MIN_POSITIVE, 1e-45, f32::MAX, f32::INFINITY, f32::NEG_INFINITY])
        .collect();
    let t = Tensor::from_slice(&v, [v.len()]).unwrap();
    let w = t.to_dtype(DType::F64);
    assert_eq!(w.to_vec::<f64>().unwrap(), v.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!(w.to_dtype(DType::F32).bit_eq(&t), "f32 -> f64 -> f32 must be the identity");
    assert!(t.to_dtype(DType::F32).bit_eq(&t), "same-dtype conversion is the identity");
    // f64 -> f32 rounds to nearest even (Rust's `as`), including overflow to infinity.
    let d = [1.0 + 2f64.powi(-24), 1.0 + 3.0 * 2f64.powi(-24), 1e300, -1e300, 1e-300, 0.1];
    let n = Tensor::from_slice(&d, [d.len()]).unwrap().to_dtype(DType::F32).to_vec::<f32>().unwrap();
    assert_eq!(n, vec![1.0, 1.0 + 2f32.powi(-22), f32::INFINITY, f32::NEG_INFINITY, 0.0, 0.1f32]);
    // Element's own conversions.
    assert_eq!(<f32 as Element>::from_f64(0.1), 0.1f32);
    assert_eq!(<f32 as Element>::to_f64(0.1f32), 0.1f32 as f64);
    assert_eq!(<f64 as Element>::from_f64(0.1), 0.1);
}

#[test]
fn f32_to_bf16_and_f16_round_to_nearest_even() {
    let mut st = 2;
    let mut v: Vec<f32> = (0..200_000).map(|_| f32::from_bits(splitmix(&mut st) as u32)).filter(|x| x.is_finite()).collect();
    // Values near f16's range, where the random bit patterns rarely land, and exact ties.
    v.extend((0..50_000).map(|_| f32::from_bits(splitmix(&mut st) as u32 & 0x8FFF_FFFF | 0x3000_0000)));
    v.extend([
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        -(1.0 + 3.0 * 2f32.powi(-11)),
        65504.0,
        65519.99,
        65520.0,
        2f32.powi(-25),
        3.0 * 2f32.powi(-26),
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        0.0,
        -0.0,
    ]);
    let t = Tensor::from_slice(&v, [v.len()]).unwrap();
    let b = t.to_dtype(DType::BF16).to_vec::<bf16>().unwrap();
    let h = t.to_dtype(DType::F16).to_vec::<f16>().unwrap();
    for i in 0..v.len() {
        assert_eq!(b[i].to_bits(), bf16::from_f32(v[i]).to_bits(), "bf16 of {:e} ({:#x}) vs half", v[i], v[i].to_bits());
        assert_eq!(h[i].to_bits(), f16::from_f32(v[i]).to_bits(), "f16 of {:e} ({:#x}) vs half", v[i], v[i].to_bits());
        assert_eq!(b[i].to_bits(), rne_bf16(v[i] as f64).to_bits(), "bf16 of {:e} ({:#x}) vs exact RNE", v[i], v[i].to_bits());
        assert_eq!(h[i].to_bits(), rne_f16(v[i] as f64).to_bits(), "f16 of {:e} ({:#x}) vs exact RNE", v[i], v[i].to_bits());
    }
    // The ties, spelled out.
    let n = v.len();
    let tail = |x: &[f64]| x[x.len() - 16..].to_vec();
    let bw = tail(&t.to_dtype(DType::BF16).to_vec_f64());
    assert_eq!(bw[0], 1.0);
    assert_eq!(bw[1], 1.0 + 2f64.powi(-6));
    let hw = tail(&t.to_dtype(DType::F16).to_vec_f64());
    assert_eq!(&hw[2..8], &[1.0, 1.0 + 2f64.powi(-9), -(1.0 + 2f64.powi(-9)), 65504.0, 65504.0, f64::INFINITY]);
    assert_eq!(&hw[8..10], &[0.0, 2f64.powi(-24)]);
    assert!(h[n - 1].is_sign_negative() && b[n - 1].is_sign_negative(), "−0 keeps its sign");
    // NaN and infinities pass through.
    let s = Tensor::from_vec(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY], [3]).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let w = s.to_dtype(dt).to_vec_f64();
        assert!(w[0].is_nan() && w[1] == f64::INFINITY && w[2] == f64::NEG_INFINITY, "{dt}: {w:?}");
    }
}

#[test]
fn f64_to_bf16_and_f16_round_to_nearest_even_once() {
    // Narrowing from f64 must round once, from the exact value: no double rounding through f32 and no
    // sticky bits dropped. Near-ties below are one f64 ulp-ish away from a tie of the target format.
    let mut v: Vec<f64> = vec![
        1.0 + 2f64.powi(-8) + 2f64.powi(-40),           // just above a bf16 tie: up
        1.0 + 2f64.powi(-8) - 2f64.powi(-40),           // just below a bf16 tie: down
        1.0 + 3.0 * 2f64.powi(-8) - 2f64.powi(-40),     // just below a bf16 tie: down (f32 would round to the tie, then to even = up)
        1.0 + 2f64.powi(-11) + 2f64.powi(-45),          // just above an f16 tie
        1.0 + 3.0 * 2f64.powi(-11) - 2f64.powi(-40),    // just below an f16 tie
        -(1.0 + 3.0 * 2f64.powi(-11) - 2f64.powi(-40)), // same, negative
        65519.999999999,                                // f16: just below the overflow threshold
        2f64.powi(-25) + 2f64.powi(-60),                // f16: just above half the smallest subnormal
        1.0 + 2f64.powi(-8),                            // exact bf16 tie
        1.0 + 3.0 * 2f64.powi(-11),                     // exact f16 tie
    ];
    let mut st = 3;
    for _ in 0..100_000 {
        // Random significands around [2^-30, 2^30): every tie class is hit by the low bits.
        let e = (splitmix(&mut st) % 60) as i32 - 30;
        let m = 1.0 + (splitmix(&mut st) >> 12) as f64 * 2f64.powi(-52);
        let s = if splitmix(&mut st) & 1 == 1 { -1.0 } else { 1.0 };
        v.push(s * m * 2f64.powi(e));
        // And exact near-ties of both formats: a tie plus or minus a tiny amount.
        let k = (splitmix(&mut st) >> 40) as f64;
        let tie_b = (1.0 + (2.0 * k % 256.0 + 1.0) * 2f64.powi(-8)) * 2f64.powi(e);
        let tie_h = (1.0 + (2.0 * k % 2048.0 + 1.0) * 2f64.powi(-11)) * 2f64.powi(e.clamp(-14, 15));
        let d = 2f64.powi(-35 - (splitmix(&mut st) % 10) as i32);
        v.extend([tie_b * (1.0 + d), tie_b * (1.0 - d), tie_h * (1.0 + d), tie_h * (1.0 - d)]);
    }
    let t = Tensor::from_slice(&v, [v.len()]).unwrap();
    let b = t.to_dtype(DType::BF16).to_vec::<bf16>().unwrap();
    let h = t.to_dtype(DType::F16).to_vec::<f16>().unwrap();
    let mut bad = Vec::new();
    for i in 0..v.len() {
        if b[i].to_bits() != rne_bf16(v[i]).to_bits() {
            bad.push(format!("bf16({:e}) = {} want {}", v[i], b[i], rne_bf16(v[i])));
        }
        if h[i].to_bits() != rne_f16(v[i]).to_bits() {
            bad.push(format!("f16({:e}) = {} want {}", v[i], h[i], rne_f16(v[i])));
        }
    }
    assert!(bad.is_empty(), "{} of {} conversions are not correctly rounded, e.g. {:?}", bad.len(), 2 * v.len(), &bad[..bad.len().min(6)]);
    // The same rounding for the constructors and for Element::from_f64.
    for &x in &v[..10] {
        assert_eq!(Tensor::full(x, [1], DType::BF16).to_vec::<bf16>().unwrap()[0].to_bits(), rne_bf16(x).to_bits(), "full bf16 {x:e}");
        assert_eq!(Tensor::full(x, [1], DType::F16).to_vec::<f16>().unwrap()[0].to_bits(), rne_f16(x).to_bits(), "full f16 {x:e}");
        assert_eq!(<bf16 as Element>::from_f64(x).to_bits(), rne_bf16(x).to_bits(), "Element bf16 {x:e}");
        assert_eq!(<f16 as Element>::from_f64(x).to_bits(), rne_f16(x).to_bits(), "Element f16 {x:e}");
    }
    // Narrowing f64 -> f32 -> bf16 may differ (double rounding); direct f64 -> bf16 is the exact one.
    let direct = Tensor::from_vec(vec![1.0 + 3.0 * 2f64.powi(-8) - 2f64.powi(-40)], [1]).unwrap().to_dtype(DType::BF16);
    assert_eq!(direct.to_vec_f64(), vec![1.0 + 2f64.powi(-7)]);
}

#[test]
fn conversions_between_storage_types() {
    // bf16 <-> f16 goes through the exact value: representable values survive, others round once.
    let vals = [0.0, -0.0, 1.0, -2.5, 0.375, 1024.0, 3.0e-5, 70000.0, 1e-8];
    let b = Tensor::from_slice(&vals, [vals.len()]).unwrap().to_dtype(DType::BF16);
    let h = b.to_dtype(DType::F16).to_vec::<f16>().unwrap();
    for (i, x) in b.to_vec_f64().into_iter().enumerate() {
        assert_eq!(h[i].to_bits(), rne_f16(x).to_bits(), "bf16 {x:e} -> f16");
    }
    let h = Tensor::from_slice(&vals, [vals.len()]).unwrap().to_dtype(DType::F16);
    let b = h.to_dtype(DType::BF16).to_vec::<bf16>().unwrap();
    for (i, x) in h.to_vec_f64().into_iter().enumerate() {
        assert_eq!(b[i].to_bits(), rne_bf16(x).to_bits(), "f16 {x:e} -> bf16");
    }
}

#[test]
fn bytes_round_trip_in_every_dtype() {
    let src = Tensor::randn([3, 7], DType::F64, 11);
    for dt in ALL {
        let t = src.to_dtype(dt);
        let bytes = t.as_bytes().unwrap().to_vec();
        assert_eq!(bytes.len(), 21 * dt.size_in_bytes());
        let u = Tensor::from_bytes(&bytes, dt, [3, 7]).unwrap();
        assert!(u.bit_eq(&t), "{dt}");
        // Unaligned input is accepted (copied element by element).
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let w = Tensor::from_bytes(&shifted[1..], dt, [21]).unwrap();
        assert_eq!(w.as_bytes().unwrap(), &bytes[..], "{dt} unaligned");
        assert_eq!(w.dims(), &[21]);
        // Empty.
        assert_eq!(Tensor::from_bytes(&[], dt, [0, 4]).unwrap().dims(), &[0, 4]);
    }
    // Little-endian layout.
    let one = Tensor::from_vec(vec![1.0f32], [1]).unwrap();
    assert_eq!(one.as_bytes().unwrap(), &1.0f32.to_le_bytes());
    assert_eq!(Tensor::from_bytes(&2.5f64.to_le_bytes(), DType::F64, ()).unwrap().to_scalar().unwrap(), 2.5);
    assert_eq!(Tensor::from_bytes(&bf16::from_f32(-3.0).to_le_bytes(), DType::BF16, [1]).unwrap().to_scalar().unwrap(), -3.0);
    // Wrong lengths are errors.
    assert!(Tensor::from_bytes(&[0u8; 7], DType::F32, [2]).is_err());
    assert!(Tensor::from_bytes(&[0u8; 8], DType::F32, [3]).is_err());
}

// ---------------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------------

fn moments(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let c = |k: i32| v.iter().map(|x| (x - m).powi(k)).sum::<f64>() / n;
    let var = c(2);
    (m, var, c(3) / var.powf(1.5), c(4) / (var * var))
}

#[test]
fn randn_moments_in_f32_and_f64() {
    for dt in [DType::F64, DType::F32] {
        let t = Tensor::randn([500, 400], dt, 42);
        assert_eq!((t.dims(), t.dtype()), (&[500usize, 400][..], dt));
        assert!(t.all_finite());
        let (m, var, skew, kurt) = moments(&t.to_vec_f64());
        // n = 200 000: standard errors are 0.0022 (mean), 0.0032 (var), 0.0055 (skew), 0.011 (kurtosis).
        assert!(m.abs() < 0.01, "{dt}: mean {m}");
        assert!((var - 1.0).abs() < 0.015, "{dt}: var {var}");
        assert!(skew.abs() < 0.03, "{dt}: skew {skew}");
        assert!((kurt - 3.0).abs() < 0.06, "{dt}: kurtosis {kurt}");
    }
    // Tail mass: P(|z| > 2) = 0.0455.
    let v = Tensor::randn([200_000], DType::F64, 7).to_vec_f64();
    let tail = v.iter().filter(|x| x.abs() > 2.0).count() as f64 / v.len() as f64;
    assert!((tail - 0.0455).abs() < 0.003, "tail {tail}");
}

trait NextDown {
    fn next_down_compat(self) -> Self;
}
impl NextDown for f32 {
    /// The next f32 toward −∞ (for positive finite values).
    fn next_down_compat(self) -> f32 {
        f32::from_bits(self.to_bits() - 1)
    }
}

#[test]
fn uniform_stays_below_hi_in_narrow_dtypes() {
    // [1, 1 + 2⁻²³): in f32 about half the f64 samples round up to hi.
    let hi = 1.0 + 2f64.powi(-23);
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let t = Tensor::rand_uniform([10_000], 1.0, hi, dt, 3);
        assert!(t.to_vec_f64().iter().all(|&x| (1.0..hi).contains(&x)), "{dt}");
    }
    let n = Tensor::rand_uniform([10_000], -2.0, -1.0 + 1e-9, DType::BF16, 4);
    assert!(n.to_vec_f64().iter().all(|&x| (-2.0..-1.0 + 1e-9).contains(&x)));
}

#[test]
fn uniform_range_and_moments() {
    for (lo, hi) in [(0.0, 1.0), (-3.0, 5.0), (2.0, 2.5)] {
        let t = Tensor::rand_uniform([200_000], lo, hi, DType::F64, 9);
        let v = t.to_vec::<f64>().unwrap();
        assert!(v.iter().all(|&x| x >= lo && x < hi), "f64 samples must lie in [{lo}, {hi})");
        let (m, var, _, _) = moments(&v);
        let w = hi - lo;
        assert!((m - (lo + hi) / 2.0).abs() < 0.01 * w, "mean {m} for [{lo}, {hi})");
        assert!((var / (w * w) - 1.0 / 12.0).abs() < 0.002, "var {var} for [{lo}, {hi})");
        // Both halves of the range are hit about equally, and the extremes come close to the ends.
        let below = v.iter().filter(|&&x| x < (lo + hi) / 2.0).count() as f64 / v.len() as f64;
        assert!((below - 0.5).abs() < 0.01);
        assert!(v.iter().cloned().fold(f64::INFINITY, f64::min) < lo + 1e-3 * w);
        assert!(v.iter().cloned().fold(f64::NEG_INFINITY, f64::max) > hi - 1e-3 * w);
        // In f32 the samples are the f64 ones rounded, except that one rounding up to hi becomes the
        // largest f32 below hi: the interval stays half-open.
        let f = Tensor::rand_uniform([200_000], lo, hi, DType::F32, 9);
        let top = (hi as f32).next_down_compat();
        for (a, b) in f.to_vec::<f32>().unwrap().iter().zip(t.to_dtype(DType::F32).to_vec::<f32>().unwrap()) {
            assert!(a.to_bits() == b.to_bits() || (b as f64 >= hi && *a == top), "{a} vs {b}");
        }
        assert!(f.to_vec_f64().iter().all(|&x| x >= lo && x < hi));
    }
    let u = random::uniform_vec(5, 10_000);
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
}

#[test]
fn same_seed_same_bits_different_seed_different_bits() {
    for dt in ALL {
        let a = Tensor::randn([64, 33], dt, 1234);
        assert!(a.bit_eq(&Tensor::randn([64, 33], dt, 1234)), "{dt}");
        let b = Tensor::randn([64, 33], dt, 1235);
        assert!(!a.bit_eq(&b), "{dt}");
        let same = a.to_vec_f64().iter().zip(b.to_vec_f64()).filter(|(x, y)| **x == *y).count();
        assert!(same < 64 * 33 / 50, "{dt}: {same} equal elements between seeds");
        let u = Tensor::rand_uniform([64, 33], -1.0, 1.0, dt, 1234);
        assert!(u.bit_eq(&Tensor::rand_uniform([64, 33], -1.0, 1.0, dt, 1234)), "{dt}");
        assert!(!u.bit_eq(&Tensor::rand_uniform([64, 33], -1.0, 1.0, dt, 99)), "{dt}");
    }
    // Nearby seeds are unrelated (no shifted copies): seed s+1 is not seed s offset by one element.
    let a = Tensor::randn([1000], DType::F64, 10).to_vec_f64();
    let b = Tensor::randn([1000], DType::F64, 11).to_vec_f64();
    assert!(a[1..] != b[..999] && a[..999] != b[1..]);
    let corr: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / 1000.0;
    assert!(corr.abs() < 0.15, "correlation {corr}");
}

#[test]
fn element_i_depends_only_on_seed_and_i() {
    // Shape-independent: a prefix of a longer draw, and the same bytes under any shape.
    let long = Tensor::randn([1000], DType::F64, 77).to_vec_f64();
    let short = Tensor::randn([37], DType::F64, 77).to_vec_f64();
    assert_eq!(&long[..37], &short[..]);
    assert_eq!(Tensor::randn([20, 50], DType::F64, 77).to_vec_f64(), long);
    assert_eq!(random::normal_vec(77, 1000), long);
    // Lower precisions are the f64 draw rounded once.
    for dt in [DType::F32, DType::BF16, DType::F16] {
        assert!(Tensor::randn([1000], dt, 77).bit_eq(&Tensor::randn([1000], DType::F64, 77).to_dtype(dt)), "{dt}");
    }
    let u = Tensor::rand_uniform([100], 0.0, 1.0, DType::F64, 3).to_vec_f64();
    assert_eq!(u, random::uniform_vec(3, 100));
    // Scalars and empty shapes.
    assert_eq!(Tensor::randn((), DType::F64, 77).to_scalar().unwrap(), long[0]);
    assert_eq!(Tensor::randn([0, 3], DType::F32, 77).numel(), 0);
}

#[test]
fn derive_seed_is_deterministic_and_well_mixed() {
    assert_eq!(random::derive_seed(1, 2), random::derive_seed(1, 2));
    // It is one Philox block of (stream, 0x5EED) under the key `seed`.
    for (s, t) in [(0u64, 0u64), (1, 2), (u64::MAX, 7), (0xDEAD_BEEF_0123_4567, u64::MAX)] {
        let r = random::philox4x32([t as u32, (t >> 32) as u32, 0x5EED, 0], [s as u32, (s >> 32) as u32]);
        assert_eq!(random::derive_seed(s, t), r[0] as u64 | (r[1] as u64) << 32);
    }
    // No collisions over a grid of seeds and streams; derived seeds differ from their parents.
    let mut seen = std::collections::HashSet::new();
    for s in 0..64u64 {
        for t in 0..256u64 {
            let d = random::derive_seed(s, t);
            assert!(seen.insert(d), "collision at ({s}, {t})");
            assert_ne!(d, s);
        }
    }
    // Streams and seeds are not interchangeable.
    assert_ne!(random::derive_seed(1, 2), random::derive_seed(2, 1));
    // Bits are balanced: about half of the 64 bits flip between neighbouring streams.
    let mut flips = 0u32;
    for t in 0..1000u64 {
        flips += (random::derive_seed(5, t) ^ random::derive_seed(5, t + 1)).count_ones();
    }
    let avg = flips as f64 / 1000.0;
    assert!((avg - 32.0).abs() < 1.0, "average bit flips {avg}");
    // Per-step tensors from derived seeds differ from one another.
    let a = Tensor::randn([16], DType::F32, random::derive_seed(9, 0));
    let b = Tensor::randn([16], DType::F32, random::derive_seed(9, 1));
    assert!(!a.bit_eq(&b));
}
