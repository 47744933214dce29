//! Helpers shared by the example binaries (`mod common;` in each; cargo does not build this directory
//! as an example of its own): timing statistics, and the machine header printed beside every figure
//! (CPU model, cores, instruction-set level, measured f32 FMA peak), since figures vary across
//! machines.

#![allow(dead_code)] // each example uses a subset

pub mod mgd;
pub mod mgdata;
pub mod mnist_cnn;
pub mod plot;

use std::time::Instant;

/// The median of timings (the mean of the two middle ones for an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The CPU model from /proc/cpuinfo ("unknown" elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

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

/// The measured peak f32 FMA throughput (GFLOP/s) on all rayon threads at the widest vector width
/// this CPU has (AVX-512: 16 lanes, AVX2: 8): 12 independent accumulators per thread, so the loop is
/// bound by FMA issue rate, not latency. Best of 3; `None` without AVX2.
pub fn fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        let lanes = if std::is_x86_feature_detected!("avx512f") {
            16
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            8
        } else {
            return None;
        };
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
    None
}

/// The machine, as one line of text and as JSON fields: CPU model, threads, the kernels' ISA level,
/// and the measured f32 FMA peak.
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub isa: &'static str,
    pub peak_gflops: Option<f64>,
}

impl Machine {
    /// Measures the machine (the FMA peak takes about a second).
    pub fn measure() -> Machine {
        Machine { cpu: cpu_model(), threads: rayon::current_num_threads(), isa: metagrad::cpu_isa(), peak_gflops: fma_peak_gflops() }
    }

    /// "CPU model, N threads, ISA avx512, f32 FMA peak P GFLOP/s (measured)".
    pub fn line(&self) -> String {
        let peak = self.peak_gflops.map_or_else(|| "n/a".to_string(), |p| format!("{p:.0} GFLOP/s"));
        format!("{}, {} threads, ISA {}, f32 FMA peak {peak} (measured)", self.cpu, self.threads, self.isa)
    }

    /// The same as JSON object fields (no braces).
    pub fn json_fields(&self) -> String {
        let peak = self.peak_gflops.map_or_else(|| "null".to_string(), |p| format!("{p:.1}"));
        format!(
            "\"cpu\": \"{}\", \"threads\": {}, \"isa\": \"{}\", \"fma_peak_gflops\": {peak}",
            self.cpu.replace('"', "'"),
            self.threads,
            self.isa
        )
    }
}

/// The device named on the command line: `cpu`, `cuda` (device 0) or `auto` (`Device::best()`:
/// CUDA device 0 when one can be opened, else the CPU).
pub fn device(name: &str) -> metagrad::Result<metagrad::Device> {
    match name {
        "cpu" => Ok(metagrad::Device::Cpu),
        "cuda" => metagrad::Device::cuda(0),
        "auto" => Ok(metagrad::Device::best()),
        other => Err(metagrad::Error::Invalid { op: "--device", msg: format!("`{other}` is not one of cpu, cuda, auto") }),
    }
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}
