//! The peers' deterministic synthetic data (benches/peers/mgdata.py), bit for bit in the integer and
//! uniform parts: splitmix64 of (stream·2³² + i), uniforms in [0, 1) from its top 53 bits, normals by
//! Box–Muller in f64 rounded to f32 (the f64 `ln` and `cos` of NumPy and of the C library may differ
//! in the last bit, so a normal may rarely differ by one f32 ulp from the Python side).

/// The splitmix64 finalizer (wrapping arithmetic).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// uniform(stream, i) in [0, 1).
pub fn uniform(stream: u64, i: u64) -> f64 {
    (splitmix64((stream << 32).wrapping_add(i)) >> 11) as f64 * (-53f64).exp2()
}

/// `n` values normal(stream, i), i < n, as f32 (row-major fill of any shape of n elements).
pub fn normal(stream: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let (u1, u2) = (uniform(stream, 2 * i), uniform(stream, 2 * i + 1));
            ((-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// floor(uniform(stream, i)·classes) for i < n.
pub fn labels(stream: u64, n: usize, classes: usize) -> Vec<usize> {
    (0..n as u64).map(|i| ((uniform(stream, i) * classes as f64).floor() as usize).min(classes - 1)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_answer() {
        assert_eq!(super::splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
