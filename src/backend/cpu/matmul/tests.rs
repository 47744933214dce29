//! The matmul against the scalar FMA chain: every instruction set, layout, block edge and thread count.

use super::super::{detect, set_isa_cap, Isa};
use super::*;

/// The reference: each element an FMA chain over k ascending from zero.
fn reference<T: Tiled>(a: &[T], b: &[T], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<T> {
    let p = Problem { a, b, m, k, n, ta, tb };
    let mut c = vec![T::ZERO; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = T::ZERO;
            for q in 0..k {
                s = p.a_at(i, q).mul_add(p.b_at(q, j), s);
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn matmul_t<T: Tiled>(a: &[T], b: &[T], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<T> {
    let mut c = vec![T::ZERO; m * n];
    matmul_t_into("test", &mut c, a, b, m, k, n, ta, tb).unwrap();
    c
}

/// Shapes around every tile and block edge; k up to several k blocks (kc ≤ 1024), with op(B) small
/// enough to pack all its k blocks at once, and (the last) larger than half of common L2 sizes.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (4, 16, 16),
    (6, 16, 8),
    (9, 33, 17),
    (7, 300, 37),
    (13, 2, 40),
    (5, 0, 3),
    (25, 700, 70),
    (12, 2100, 33),
    (130, 64, 65),
    (20, 1100, 600),
];

#[test]
fn matches_naive_f64() {
    for &(m, k, n) in SHAPES {
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64 - 6.0) / 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64 - 5.0) / 7.0).collect();
        let c = matmul_t(&a, &b, m, k, n, false, false);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-9 * (1.0 + want.abs()), "{m}x{k}x{n} at ({i},{j})");
            }
        }
    }
}

/// Every instruction set, every layout, f32 and f64: the same bits as the scalar FMA chain.
/// (Capping the level is process-wide, and harmless to tests running beside this one: every level
/// gives the same bits.)
#[test]
fn every_instruction_set_and_layout_gives_the_bits_of_the_fma_chain() {
    fn check<T: Tiled>(cast: impl Fn(f32) -> T) {
        for &(m, k, n) in SHAPES {
            let a: Vec<T> = (0..m * k).map(|i| cast(((i * 7919 % 1013) as f32).sin())).collect();
            let b: Vec<T> = (0..k * n).map(|i| cast(((i * 104729 % 997) as f32).cos())).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let want: Vec<u64> = reference(&a, &b, m, k, n, ta, tb).iter().map(|x| x.to_f64().to_bits()).collect();
                for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= detect()) {
                    set_isa_cap(isa);
                    let got: Vec<u64> = matmul_t(&a, &b, m, k, n, ta, tb).iter().map(|x| x.to_f64().to_bits()).collect();
                    assert!(got == want, "{isa:?} {m}x{k}x{n} ta={ta} tb={tb} ({})", std::any::type_name::<T>());
                }
                set_isa_cap(Isa::Avx512);
            }
        }
    }
    check::<f32>(|x| x);
    check::<f64>(|x| x as f64 * 1.000_000_1);
}

/// Small (run on the calling thread) and large (split into tasks) products, rows or columns split:
/// the same bits as the reference for any thread count.
#[test]
fn same_bits_for_any_thread_count() {
    for (m, k, n) in [(37, 129, 45), (83, 301, 77), (40, 300, 260)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32).cos()).collect();
        let want: Vec<u32> = reference(&a, &b, m, k, n, false, true).iter().map(|x| x.to_bits()).collect();
        for t in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let got = pool.install(|| matmul_t(&a, &b, m, k, n, false, true));
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "{m}x{k}x{n} on {t} threads");
        }
    }
}

/// One row or one column of tiles (the in-place path of `skinny`), split into tasks or not, with
/// partial last panels of the operand read in place: the bits of the reference, every layout and
/// thread count.
#[test]
fn single_row_or_column_of_tiles_gives_the_bits_of_the_fma_chain() {
    for (m, k, n) in [(10, 520, 300), (3, 1100, 70), (300, 520, 24), (517, 64, 20), (12, 2100, 33), (1, 9, 1000), (700, 30, 1)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let want: Vec<u32> = reference(&a, &b, m, k, n, ta, tb).iter().map(|x| x.to_bits()).collect();
            for t in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                let got = pool.install(|| matmul_t(&a, &b, m, k, n, ta, tb));
                assert!(got.iter().map(|x| x.to_bits()).eq(want.iter().copied()), "{m}x{k}x{n} ta={ta} tb={tb} on {t} threads");
            }
        }
    }
}

/// Tiny blocks (16 k steps, 2 tiles of rows and of columns), so that small products run every loop of
/// the nest many times over: A blocks after the first (several ic), k blocks packed one per region and
/// all at once, B blocks after the first, on one thread and split into tasks; every instruction set
/// and layout gives the bits of the FMA chain.
#[test]
fn small_blocks_reach_every_loop_and_keep_the_bits() {
    for (m, k, n) in [(100, 130, 90), (61, 40, 200), (7, 300, 33), (130, 9, 5), (40, 20, 1400)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32).cos()).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let want: Vec<u32> = reference(&a, &b, m, k, n, ta, tb).iter().map(|x| x.to_bits()).collect();
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= detect()) {
                let (mr, nr) = f32::tile(isa, m);
                // nc · kc below k · n keeps one k block per region, a large budget packs them all;
                // split 0 shares the blocks between threads, usize::MAX runs one part per thread.
                for (whole, split) in [(false, 0), (true, 0), (false, usize::MAX), (true, usize::MAX)] {
                    let bl = Blocks { kc: 16, mc: 2 * mr, nc: if whole { 64 * nr } else { 2 * nr }, split };
                    for t in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                        let got = pool.install(|| {
                            let mut c = vec![0f32; m * n];
                            let p = Problem { a: &a, b: &b, m, k, n, ta, tb };
                            product("test", &mut c, &p, isa, (mr, nr), bl).unwrap();
                            c
                        });
                        assert!(
                            got.iter().map(|x| x.to_bits()).eq(want.iter().copied()),
                            "{isa:?} {m}x{k}x{n} ta={ta} tb={tb} {bl:?} on {t} threads"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn cache_sizes_and_blocks_are_sane() {
    let c = Caches::get();
    assert!(c.l1d >= 8 << 10 && c.l2 >= c.l1d && c.l3 >= 1 << 10, "{c:?}");
    let b = Blocks::new(12, 32, 4);
    assert!(b.kc >= 64 && b.kc.is_multiple_of(8) && b.mc.is_multiple_of(12) && b.nc.is_multiple_of(32), "{b:?}");
}
