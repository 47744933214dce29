//! The f32 exponential and the instruction sets' agreement.

use super::*;
use crate::backend::cpu::{set_isa_cap, Isa};

#[test]
fn fast_exp_f32_is_accurate() {
    let mut worst = 0f64;
    for i in 0..200_000 {
        let x = -87.0 + 87.5 * i as f32 / 200_000.0;
        let (got, want) = (x.fast_exp() as f64, (x as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 3e-7, "max relative error {worst}");
    assert_eq!(f32::NEG_INFINITY.fast_exp(), 0.0);
    assert_eq!((-100f32).fast_exp(), 0.0);
    assert!(f32::NAN.fast_exp().is_nan());
    assert_eq!(0f32.fast_exp(), 1.0);
}

fn data<T: Float>(n: usize, seed: u64) -> Vec<T> {
    (0..n).map(|i| T::from_f64(((i as u64 * 7919 + seed * 104_729) % 1013) as f64 / 507.0 - 1.0)).collect()
}

/// The portable, AVX2 and AVX-512 instantiations give the same bits, in f32 and f64, for head widths
/// that fill two-register tiles, one-register tiles and partial ones, and for sums over keys long
/// enough to be cut into blocks.
#[test]
fn instruction_sets_agree_bitwise() {
    fn check<T: AttnFloat>(nk: usize, d: usize, dv: usize) {
        for causal in [false, true] {
            let g = AttnShape { heads: 2, nq: 37, nk, d, dv, scale: 0.3, causal };
            let (q, k, v) = (data::<T>(2 * 37 * d, 1), data::<T>(2 * nk * d, 2), data::<T>(2 * nk * dv, 3));
            let (d_o, a) = (data::<T>(2 * 37 * dv, 4), data::<T>(2 * 37 * d, 5));
            let (b, e) = (data::<T>(2 * nk * d, 6), data::<T>(2 * nk * dv, 7));
            let all = Need { q: true, kv: true, d_o: true };
            let run = || {
                let (o, lse) = forward("t", g, &q, &k, &v).unwrap();
                let bw = backward("t", g, [&q, &k, &v], [&o, &lse], &d_o, all).unwrap();
                let bb = backward_backward("t", g, [&q, &k, &v], [&o, &lse], &d_o, [&a, &b, &e], all).unwrap();
                [o, lse, bw, bb].map(|x| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>())
            };
            let mut results = vec![];
            // Capping the level for the whole process is harmless to tests running beside this one:
            // every level gives the same bits.
            for cap in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                set_isa_cap(cap);
                results.push(run());
            }
            assert!(results[0] == results[1] && results[1] == results[2], "{} d {d} dv {dv} causal {causal}", T::DTYPE);
        }
    }
    // 29 keys: a partial key panel; 1100 keys: sums over keys cut into k blocks whose length
    // differs between the instruction sets (it is sized from the register tile's width).
    for (nk, d, dv) in [(29, 19, 21), (29, 8, 8), (29, 32, 16), (1100, 16, 8)] {
        check::<f32>(nk, d, dv);
        check::<f64>(nk, d, dv);
    }
}

/// A thread keeps scratch between calls up to SCRATCH_KEEP_BYTES; a bigger buffer is freed on drop.
#[test]
fn scratch_kept_between_calls_is_bounded() {
    use super::gemm::{kept_scratch_bytes, SCRATCH_KEEP_BYTES};
    // Its own thread: the pool is per thread, and other tests' kernels use the rayon workers.
    std::thread::spawn(|| {
        let mut small = scratch();
        small.carve::<f32>(&[1 << 20]);
        drop(small);
        let kept = kept_scratch_bytes();
        assert!((4 << 20..=SCRATCH_KEEP_BYTES).contains(&kept), "a 4 MiB buffer is kept for reuse: {kept}");
        let mut big = scratch();
        big.carve::<f64>(&[SCRATCH_KEEP_BYTES / 8 + 1]);
        drop(big);
        assert_eq!(kept_scratch_bytes(), 0, "a buffer past the bound is freed");
        let (mut a, mut b) = (scratch(), scratch());
        a.carve::<f64>(&[SCRATCH_KEEP_BYTES / 16]);
        b.carve::<f64>(&[SCRATCH_KEEP_BYTES / 16 + 1]);
        drop((a, b));
        assert!(kept_scratch_bytes() <= SCRATCH_KEEP_BYTES, "the bound is on the total");
        super::release_scratch();
        assert_eq!(kept_scratch_bytes(), 0);
        // Memory no machine has, or a size that overflows: None (the kernels report OutOfMemory).
        assert!(scratch().carve::<f64>(&[1 << 58]).is_none());
        assert!(scratch().carve::<f32>(&[usize::MAX, 2]).is_none());
        assert!(scratch().slices::<f64, 2>([usize::MAX / 4, 1]).is_none());
    })
    .join()
    .unwrap();
}
