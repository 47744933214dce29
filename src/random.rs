//! Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11; the generator of cuRAND and JAX).
//!
//! Each output is a pure function of `(key, counter)`, so a tensor's element `i` depends only on the
//! seed and `i`: the same numbers on any thread count, in any order, on any device. Training loops that
//! need fresh numbers per step derive a key with [`derive_seed`]`(seed, step)`.

use rayon::prelude::*;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: four 32-bit outputs for a 128-bit counter and a 64-bit key.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// A new 64-bit seed for `(seed, stream)`, e.g. one per training step: deterministic and well mixed.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let r = philox4x32([stream as u32, (stream >> 32) as u32, 0x5EED, 0], [seed as u32, (seed >> 32) as u32]);
    (r[0] as u64) | ((r[1] as u64) << 32)
}

fn block(seed: u64, i: u64) -> [u32; 4] {
    philox4x32([i as u32, (i >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

fn unit(hi: u32, lo: u32) -> f64 {
    // 53 random bits -> [0, 1).
    (((hi as u64) << 21) ^ (lo as u64 >> 11)) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[allow(clippy::panic)]
fn out_of_memory(e: std::collections::TryReserveError) -> Vec<f64> {
    panic!("random samples: {e}")
}

/// `n` values `f(i)`, computed in parallel; an allocation that fails is an error, not an abort.
fn fill(n: usize, f: impl Fn(u64) -> f64 + Sync) -> Result<Vec<f64>, std::collections::TryReserveError> {
    let _kernel = crate::mode::kernel_scope(); // see kernel_scope: stolen jobs keep their grad mode
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize(n, 0.0);
    v.par_iter_mut().enumerate().with_min_len(1 << 12).for_each(|(i, x)| *x = f(i as u64));
    Ok(v)
}

/// `n` uniform samples in [0, 1); element i uses counter i.
///
/// # Panics
/// If `n` values do not fit in memory ([`try_uniform_vec`] returns that as an error).
pub fn uniform_vec(seed: u64, n: usize) -> Vec<f64> {
    try_uniform_vec(seed, n).unwrap_or_else(out_of_memory)
}

/// `n` standard normal samples (Box–Muller on the two uniforms of counter i).
///
/// # Panics
/// If `n` values do not fit in memory ([`try_normal_vec`] returns that as an error).
pub fn normal_vec(seed: u64, n: usize) -> Vec<f64> {
    try_normal_vec(seed, n).unwrap_or_else(out_of_memory)
}

/// [`uniform_vec`], with an allocation failure as an error.
pub fn try_uniform_vec(seed: u64, n: usize) -> Result<Vec<f64>, std::collections::TryReserveError> {
    fill(n, |i| {
        let r = block(seed, i);
        unit(r[0], r[1])
    })
}

/// [`normal_vec`], with an allocation failure as an error.
pub fn try_normal_vec(seed: u64, n: usize) -> Result<Vec<f64>, std::collections::TryReserveError> {
    fill(n, |i| {
        let r = block(seed, i);
        let u1 = 1.0 - unit(r[0], r[1]); // (0, 1]: log is finite
        let u2 = unit(r[2], r[3]);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn philox_known_answer() {
        // Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32_10).
        assert_eq!(philox4x32([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32([0xffffffff; 4], [0xffffffff; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }
    #[test]
    fn normal_moments() {
        let v = normal_vec(7, 200_000);
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        assert!(m.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {m} var {var}");
    }
}
