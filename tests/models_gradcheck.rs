//! Small models built from many ops, checked end to end: the gradient against central differences and
//! the Hessian-vector product (reverse over reverse) against differences of the gradient, in f64.
use metagrad::*;

type Model = Box<dyn Fn(&[Var]) -> Result<Var>>;

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), DType::F64, seed)
}
#[test]
fn models_first_and_second_order_match_finite_differences() {
    let cases: Vec<(&str, Model, Vec<Tensor>)> = vec![
        (
            "mlp",
            Box::new(|v: &[Var]| v[0].matmul(&v[1])?.tanh()?.matmul(&v[2])?.cross_entropy(&[0, 2, 1], None)),
            vec![t(&[3, 4], 1), t(&[4, 5], 2), t(&[5, 3], 3)],
        ),
        (
            "conv",
            Box::new(|v: &[Var]| {
                v[0].conv2d(&v[1], Some(&v[2]), Conv2dOpts { stride: (2, 1), padding: (1, 1), dilation: (1, 2) })?
                    .tanh()?
                    .avg_pool2d((2, 2), Conv2dOpts::new(1, 0))?
                    .square()?
                    .sum_all()
            }),
            vec![t(&[2, 3, 5, 6], 4), t(&[4, 3, 3, 2], 5), t(&[4], 6)],
        ),
        (
            "attn",
            Box::new(|v: &[Var]| v[0].attention(&v[1], &v[2], 0.7, true)?.square()?.mean_all()),
            vec![t(&[2, 3, 4], 7), t(&[2, 5, 4], 8), t(&[2, 5, 3], 9)],
        ),
        (
            "norms",
            Box::new(|v: &[Var]| {
                v[0].batch_norm(&v[1], &v[2], 1e-5)?.layer_norm(None, None, 1e-5)?.gelu()?.logsumexp(1, false)?.max(0, false)?.sum_all()
            }),
            vec![t(&[3, 2, 4], 10), t(&[2], 11), t(&[2], 12)],
        ),
        (
            "shape",
            Box::new(|v: &[Var]| {
                Var::concat(&[&v[0], &v[1]], 1)?
                    .index_select(0, &[1, 0, 1])?
                    .narrow(1, 1, 3)?
                    .softmax(0)?
                    .log()?
                    .mul(&v[1].sum(&[0], true)?)?
                    .sum_all()
            }),
            vec![t(&[2, 2], 13), t(&[2, 3], 14)],
        ),
    ];
    for (name, f, xs) in cases {
        let r = gradcheck::check_grad(&f, &xs, 1e-6).unwrap();
        println!("{name} grad: {r}");
        assert!(r.within(1e-6, 1e-5), "{name}: {r}");
        let v: Vec<Tensor> = xs.iter().enumerate().map(|(i, x)| t(x.dims(), 100 + i as u64)).collect();
        let r = gradcheck::check_hvp(&f, &xs, &v, 1e-5).unwrap();
        println!("{name} hvp: {r}");
        assert!(r.within(1e-5, 1e-4), "{name}: {r}");
    }
}
