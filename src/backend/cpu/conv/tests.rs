//! The convolution kernels against their definition, and across instruction sets.

use super::*;

impl ConvShape {
    fn x_len(&self) -> usize {
        self.lens().unwrap().0
    }
    fn w_len(&self) -> usize {
        self.lens().unwrap().1
    }
    fn y_len(&self) -> usize {
        self.lens().unwrap().2
    }
}

#[allow(clippy::too_many_arguments)]
fn shape(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: (usize, usize),
    st: (usize, usize),
    p: (usize, usize),
    d: (usize, usize),
) -> ConvShape {
    let out = |x: usize, k: usize, s: usize, p: usize, d: usize| (x + 2 * p - d * (k - 1) - 1) / s + 1;
    ConvShape {
        n,
        c,
        h,
        w,
        o,
        kh: k.0,
        kw: k.1,
        ho: out(h, k.0, st.0, p.0, d.0),
        wo: out(w, k.1, st.1, p.1, d.1),
        stride: st,
        padding: p,
        dilation: d,
    }
}

fn data(len: usize, seed: usize) -> Vec<f64> {
    (0..len).map(|i| (((i * 7919 + seed * 104729) % 1013) as f64 / 1013.0 - 0.5) * 2.0).collect()
}

/// The three maps by their definition, one loop over (n, o, c, oh, ow, ki, kj).
fn naive(s: &ConvShape, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut dx, mut dw) = (vec![0.0; s.y_len()], vec![0.0; s.x_len()], vec![0.0; s.w_len()]);
    for n in 0..s.n {
        for o in 0..s.o {
            for c in 0..s.c {
                for oh in 0..s.ho {
                    for ow in 0..s.wo {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let r = (oh * s.stride.0 + ki * s.dilation.0) as isize - s.padding.0 as isize;
                                let q = (ow * s.stride.1 + kj * s.dilation.1) as isize - s.padding.1 as isize;
                                if r < 0 || q < 0 || r >= s.h as isize || q >= s.w as isize {
                                    continue;
                                }
                                let xi = ((n * s.c + c) * s.h + r as usize) * s.w + q as usize;
                                let wi = ((o * s.c + c) * s.kh + ki) * s.kw + kj;
                                let yi = ((n * s.o + o) * s.ho + oh) * s.wo + ow;
                                y[yi] += w[wi] * x[xi];
                                dx[xi] += w[wi] * dy[yi];
                                dw[wi] += x[xi] * dy[yi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

#[test]
fn kernels_match_the_definition_and_agree_bitwise_across_instruction_sets() {
    let cases = [
        shape(2, 3, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
        shape(3, 2, 9, 8, 4, (3, 2), (2, 3), (2, 1), (1, 2)),
        shape(1, 4, 5, 5, 3, (1, 1), (2, 2), (0, 0), (1, 1)),
        shape(2, 1, 6, 40, 33, (2, 3), (1, 1), (0, 3), (2, 1)),
    ];
    let isas = match super::super::detect() {
        Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
        Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
        Isa::Portable => vec![Isa::Portable],
    };
    for (ci, s) in cases.iter().enumerate() {
        let (x, w, dy) = (data(s.x_len(), ci), data(s.w_len(), ci + 10), data(s.y_len(), ci + 20));
        let (y0, dx0, dw0) = naive(s, &x, &w, &dy);
        let close = |a: &[f64], b: &[f64], what: &str| {
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!((p - q).abs() < 1e-12, "case {ci} {what}[{i}]: {p} vs {q}");
            }
        };
        let mut first: Option<(Vec<f64>, Vec<f64>, Vec<f64>)> = None;
        for &isa in &isas {
            let y = forward_with("t", isa, s, &[(&x, &w)]).unwrap();
            let dx = backward_input_with("t", isa, s, &[(&dy, &w)]).unwrap();
            let dw = backward_weight_with("t", isa, s, &[(&x, &dy)]).unwrap();
            close(&y, &y0, "y");
            close(&dx, &dx0, "dx");
            close(&dw, &dw0, "dw");
            match &first {
                None => first = Some((y, dx, dw)),
                Some(f) => assert!(f.0 == y && f.1 == dx && f.2 == dw, "case {ci}: {isa:?} differs bitwise"),
            }
        }
        // Two pairs sum like one convolution over concatenated operands.
        let (x2, w2, dy2) = (data(s.x_len(), ci + 30), data(s.w_len(), ci + 40), data(s.y_len(), ci + 50));
        let (y1, dx1, dw1) = naive(s, &x2, &w2, &dy2);
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p + q).collect::<Vec<_>>();
        close(&conv2d_forward("t", s, &[(&x, &w), (&x2, &w2)]).unwrap(), &add(&y0, &y1), "y pairs");
        close(&conv2d_backward_input("t", s, &[(&dy, &w), (&dy2, &w2)]).unwrap(), &add(&dx0, &dx1), "dx pairs");
        close(&conv2d_backward_weight("t", s, &[(&x, &dy), (&x2, &dy2)]).unwrap(), &add(&dw0, &dw1), "dw pairs");
    }
}

/// The documented summation orders, written as plain loops: each output one FMA chain from zero over
/// (pair, reduction channel, ki, kj) ascending, zeros of the padding included; the weight gradient per
/// contiguous group of images (min(n, 16) groups), groups added in order.
fn chains<T: Tiled>(s: &ConvShape, pairs: &[(&[T], &[T], &[T])]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let xi = |n: usize, c: usize, oh: usize, ow: usize, ki: usize, kj: usize| {
        let r = (oh * s.stride.0 + ki * s.dilation.0) as isize - s.padding.0 as isize;
        let q = (ow * s.stride.1 + kj * s.dilation.1) as isize - s.padding.1 as isize;
        (r >= 0 && q >= 0 && r < s.h as isize && q < s.w as isize).then(|| ((n * s.c + c) * s.h + r as usize) * s.w + q as usize)
    };
    let wi = |o: usize, c: usize, ki: usize, kj: usize| ((o * s.c + c) * s.kh + ki) * s.kw + kj;
    let yi = |n: usize, o: usize, oh: usize, ow: usize| ((n * s.o + o) * s.ho + oh) * s.wo + ow;
    let mut y = vec![T::ZERO; s.y_len()];
    for (n, o, oh, ow) in itertools(s.n, s.o, s.ho, s.wo) {
        let mut acc = T::ZERO;
        for &(x, w, _) in pairs {
            for (c, ki, kj) in (0..s.c).flat_map(|c| (0..s.kh).flat_map(move |ki| (0..s.kw).map(move |kj| (c, ki, kj)))) {
                acc = w[wi(o, c, ki, kj)].mul_add(xi(n, c, oh, ow, ki, kj).map_or(T::ZERO, |i| x[i]), acc);
            }
        }
        y[yi(n, o, oh, ow)] = acc;
    }
    let mut dx = vec![T::ZERO; s.x_len()];
    for (n, c, h, wc) in itertools(s.n, s.c, s.h, s.w) {
        let mut acc = T::ZERO;
        for &(_, w, dy) in pairs {
            for (o, ki, kj) in (0..s.o).flat_map(|o| (0..s.kh).flat_map(move |ki| (0..s.kw).map(move |kj| (o, ki, kj)))) {
                // Output pixel reaching (h, wc) through tap (ki, kj), if the stride lands on it.
                let src = |x: usize, k: usize, st: usize, p: usize, d: usize, len: usize| {
                    let v = (x + p) as isize - (k * d) as isize;
                    (v >= 0 && (v as usize).is_multiple_of(st) && (v as usize / st) < len).then(|| v as usize / st)
                };
                let oh = src(h, ki, s.stride.0, s.padding.0, s.dilation.0, s.ho);
                let ow = src(wc, kj, s.stride.1, s.padding.1, s.dilation.1, s.wo);
                let g = match (oh, ow) {
                    (Some(oh), Some(ow)) => dy[yi(n, o, oh, ow)],
                    _ => T::ZERO,
                };
                acc = w[wi(o, c, ki, kj)].mul_add(g, acc);
            }
        }
        dx[((n * s.c + c) * s.h + h) * s.w + wc] = acc;
    }
    let splits = s.n.min(16);
    let mut dw = vec![T::ZERO; s.w_len()];
    for (o, c, ki, kj) in itertools(s.o, s.c, s.kh, s.kw) {
        let mut total = T::ZERO;
        for split in 0..splits {
            let mut acc = T::ZERO;
            for &(x, _, dy) in pairs {
                for n in split * s.n / splits..(split + 1) * s.n / splits {
                    for (oh, ow) in (0..s.ho).flat_map(|oh| (0..s.wo).map(move |ow| (oh, ow))) {
                        acc = xi(n, c, oh, ow, ki, kj).map_or(T::ZERO, |i| x[i]).mul_add(dy[yi(n, o, oh, ow)], acc);
                    }
                }
            }
            total = if split == 0 { acc } else { total + acc };
        }
        dw[wi(o, c, ki, kj)] = total;
    }
    (y, dx, dw)
}

/// (a, b, c, d) over a × b × c × d, row-major.
fn itertools(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
}

fn bitwise_case<T: Tiled>(s: &ConvShape, seed: usize) {
    let gen = |len: usize, sd: usize| data(len, sd).into_iter().map(T::from_f64).collect::<Vec<T>>();
    let (x, w, dy) = (gen(s.x_len(), seed), gen(s.w_len(), seed + 1), gen(s.y_len(), seed + 2));
    let (x2, w2, dy2) = (gen(s.x_len(), seed + 3), gen(s.w_len(), seed + 4), gen(s.y_len(), seed + 5));
    let (y, dx, dw) = chains(s, &[(&x, &w, &dy), (&x2, &w2, &dy2)]);
    assert!(conv2d_forward("t", s, &[(&x, &w), (&x2, &w2)]).unwrap() == y, "{s:?}: forward");
    assert!(conv2d_backward_input("t", s, &[(&dy, &w), (&dy2, &w2)]).unwrap() == dx, "{s:?}: input gradient");
    assert!(conv2d_backward_weight("t", s, &[(&x, &dy), (&x2, &dy2)]).unwrap() == dw, "{s:?}: weight gradient");
}

#[test]
fn kernels_give_the_bits_of_their_documented_fma_chains() {
    let cases = [
        shape(2, 3, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
        shape(3, 2, 9, 8, 4, (3, 2), (2, 3), (2, 1), (1, 2)),
        shape(1, 4, 5, 5, 3, (1, 1), (2, 2), (0, 0), (1, 1)),
        shape(2, 1, 6, 40, 33, (2, 3), (1, 1), (0, 3), (2, 1)),
        // Tiles and blocks: channels past one register tile, rows past one k block, a batch past 16.
        shape(18, 5, 12, 35, 14, (3, 3), (1, 1), (1, 1), (1, 1)),
        shape(2, 40, 9, 9, 70, (3, 3), (1, 1), (1, 1), (1, 1)),
    ];
    for (i, s) in cases.iter().enumerate() {
        bitwise_case::<f32>(s, 100 + i);
        bitwise_case::<f64>(s, 200 + i);
    }
}
