//! Helpers shared by the example binaries (`mod common;` in each; cargo does not build this directory
//! as an example of its own).

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
