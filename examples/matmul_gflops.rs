//! GFLOP/s of the CPU matmul kernel on the MLP benchmark's shapes, beside the machine's measured FMA
//! peak (a register-only loop of independent FMAs on all rayon threads).
//!
//! ```sh
//! cargo run --release --example matmul_gflops                  # all threads
//! RAYON_NUM_THREADS=1 cargo run --release --example matmul_gflops
//! ```

mod common;
use common::median;
use metagrad::Tensor;
use rayon::prelude::*;
use std::time::Instant;

#[inline(always)]
fn fma_loop<const L: usize>(iters: usize, seed: f32) -> [[f32; L]; 12] {
    let mut acc = [[seed; L]; 12];
    let (a, b) = (std::hint::black_box([0.999_999f32; L]), std::hint::black_box([1e-7f32; L]));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            for j in 0..L {
                r[j] = r[j].mul_add(a[j], b[j]);
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize, seed: f32) -> [[f32; 8]; 12] {
    fma_loop::<8>(iters, seed)
}

/// 12 independent zmm FMA chains (auto-vectorization keeps to 256 bits, so intrinsics).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); 12];
    let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-7)));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

/// Peak f32 FMA throughput in GFLOP/s on all rayon threads with AVX2 (8 lanes) or AVX-512 (16): 12
/// independent accumulators per thread, so the loop is bound by FMA issue rate, not latency.
#[cfg(target_arch = "x86_64")]
fn fma_peak(lanes: usize) -> Option<f64> {
    let ok = match lanes {
        8 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        _ => std::is_x86_feature_detected!("avx512f"),
    };
    if !ok {
        return None;
    }
    let iters = 20_000_000usize;
    let threads = rayon::current_num_threads();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        (0..threads).into_par_iter().for_each(|t| {
            // SAFETY: the features were detected above.
            unsafe {
                if lanes == 8 {
                    std::hint::black_box(fma_avx2(iters, t as f32));
                } else {
                    std::hint::black_box(fma_avx512(iters, t as f32));
                }
            }
        });
        let s = t0.elapsed().as_secs_f64();
        best = best.max((threads * iters * 12 * lanes * 2) as f64 / s / 1e9);
    }
    Some(best)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_lanes: usize) -> Option<f64> {
    None
}

fn main() {
    let threads = rayon::current_num_threads();
    // (name, m, k, n, A transposed, B transposed): the MLP benchmark's products.
    let shapes: [(&str, usize, usize, usize, bool, bool); 5] = [
        ("fwd layer 1      x·W1", 512, 784, 512, false, false),
        ("fwd layer 2      h·W2", 512, 512, 512, false, false),
        ("fwd layer 3      h·W3", 512, 512, 10, false, false),
        ("bwd dW1        xᵀ·g1", 784, 512, 512, true, false),
        ("bwd dh1       g2·W2ᵀ", 512, 512, 512, false, true),
    ];
    println!("{threads} threads; 30 runs: median and best (the machine may be shared: best is the cleaner)\n");
    println!("{:<24} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9}", "shape", "m", "k", "n", "ms(med)", "GFLOP/s", "best");
    for (name, m, k, n, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32) * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32) * 1e-3 - 0.5).collect();
        let a = Tensor::from_vec(a, if ta { [k, m] } else { [m, k] }).expect("shape");
        let b = Tensor::from_vec(b, if tb { [n, k] } else { [k, n] }).expect("shape");
        let mut times = Vec::new();
        for _ in 0..31 {
            let t0 = Instant::now();
            std::hint::black_box(a.matmul_t(&b, ta, tb).expect("matmul"));
            times.push(t0.elapsed().as_secs_f64());
        }
        times.remove(0);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let t = median(times);
        let gf = |t: f64| (2 * m * k * n) as f64 / t / 1e9;
        println!("{name:<24} {m:>5} {k:>5} {n:>5} {:>9.3} {:>9.1} {:>9.1}", t * 1e3, gf(t), gf(best));
    }
    let show = |p: Option<f64>| p.map_or("n/a".to_string(), |g| format!("{g:.0} GFLOP/s"));
    println!("\nmeasured f32 FMA peak on {threads} threads: AVX2 {}, AVX-512 {}", show(fma_peak(8)), show(fma_peak(16)));
}
