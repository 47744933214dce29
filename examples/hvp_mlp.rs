//! The README's demo: the Hessian-vector product of a small MLP's loss with respect to all of its
//! parameters, by reverse over reverse, beside central finite differences of the gradient.
//!
//! ```sh
//! cargo run --release --example hvp_mlp
//! ```
//!
//! The MLP is 8 → 16 → 4 with tanh, batch 32, mean cross-entropy, in f64. H·v comes from
//! `metagrad::hvp` (the gradient of ⟨∇loss, v⟩ where ∇loss was taken with `create_graph = true`); the
//! reference is (∇loss(θ + h·v) − ∇loss(θ − h·v)) / 2h. Exits with status 1 if they disagree by more
//! than `|Hv − fd| ≤ ATOL + RTOL·|fd|` anywhere.

use metagrad::{gradcheck, DType, Result, Tensor, Var};
use std::process::ExitCode;

const ATOL: f64 = 1e-7;
const RTOL: f64 = 1e-6;
const STEP: f64 = 1e-5;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hvp_mlp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let (d_in, hidden, classes, batch) = (8, 16, 4, 32);
    let x = Var::constant(Tensor::randn([batch, d_in], DType::F64, 1));
    let labels: Vec<usize> = (0..batch).map(|i| (i * 7 + 3) % classes).collect();
    let loss =
        move |p: &[Var]| -> Result<Var> { x.matmul(&p[0])?.add(&p[1])?.tanh()?.matmul(&p[2])?.add(&p[3])?.cross_entropy(&labels, None) };

    let scaled = |shape: &[usize], seed: u64, scale: f64| -> Result<Tensor> {
        let t = Tensor::randn(shape.to_vec(), DType::F64, seed);
        Tensor::from_vec(t.to_vec_f64().iter().map(|v| v * scale).collect::<Vec<_>>(), shape.to_vec())
    };
    let names = ["W1", "b1", "W2", "b2"];
    let params = vec![
        scaled(&[d_in, hidden], 10, 1.0 / (d_in as f64).sqrt())?,
        scaled(&[hidden], 11, 0.1)?,
        scaled(&[hidden, classes], 12, 1.0 / (hidden as f64).sqrt())?,
        scaled(&[classes], 13, 0.1)?,
    ];
    let dirs: Vec<Tensor> = params.iter().enumerate().map(|(i, p)| Tensor::randn(p.shape().clone(), DType::F64, 100 + i as u64)).collect();

    let t0 = std::time::Instant::now();
    let r = gradcheck::check_hvp(&loss, &params, &dirs, STEP)?;
    let elapsed = t0.elapsed();

    let n: usize = params.iter().map(|p| p.numel()).sum();
    println!("MLP {d_in}-{hidden}-{classes}, tanh, batch {batch}, cross-entropy, f64: H·v over {n} parameters");
    println!("reverse over reverse (metagrad::hvp) vs central differences of the gradient, step {STEP:e}\n");
    println!("{:<8} {:>22} {:>22} {:>10}", "entry", "H·v", "finite diff.", "abs err");
    for (i, name) in names.iter().enumerate() {
        for j in 0..3.min(r.analytic[i].len()) {
            let (a, f) = (r.analytic[i][j], r.numeric[i][j]);
            println!("{:<8} {a:>22.15e} {f:>22.15e} {:>10.2e}", format!("{name}[{j}]"), (a - f).abs());
        }
    }
    let ok = r.within(ATOL, RTOL);
    println!("\n{r}");
    println!(
        "tolerance |Hv − fd| ≤ {ATOL:e} + {RTOL:e}·|fd|: {}  ({:.2} ms)",
        if ok { "ok" } else { "FAILED" },
        elapsed.as_secs_f64() * 1e3
    );
    Ok(ok)
}
