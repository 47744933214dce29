//! Defining your own differentiable op on metagrad's public API, the way the crate's fused attention is
//! built: `softplus(x) = ln(1 + eˣ)` with
//! - a forward of its own (a loop over CPU slices, or a CUDA kernel compiled through the crate's NVRTC
//!   path when the tensor lives on a GPU), and
//! - a VJP that is *another custom op*, `softplus_backward(x, g) = g·σ(x)`, with a fused forward of its
//!   own, whose VJP in turn is written in `Var` ops.
//!
//! Nothing else is needed for second and third derivatives: the VJPs are recorded like any other ops
//! when a backward runs with `create_graph`. The example checks the gradient, the Hessian-vector
//! product and a third derivative against central finite differences in f64 (`metagrad::gradcheck`),
//! on the CPU and, when one is available (or `METAGRAD_CUDA_EMULATOR=1`), on a CUDA device.
//!
//! ```sh
//! cargo run --release --example custom_op
//! ```

use metagrad::cuda::{Kernel, KernelArg};
use metagrad::gradcheck::{check_grad, check_hvp};
use metagrad::{grad, CustomOp, DType, Device, Result, Tensor, Var};

/// CUDA C for both ops, f32 and f64 (header-free, as NVRTC needs; also runs on the kernel emulator).
const KERNELS: &str = r#"
template <typename T> __device__ T sp_log1p(T x);
template <> __device__ float sp_log1p<float>(float x) { return log1pf(x); }
template <> __device__ double sp_log1p<double>(double x) { return log1p(x); }
template <typename T> __device__ T sp_exp(T x);
template <> __device__ float sp_exp<float>(float x) { return expf(x); }
template <> __device__ double sp_exp<double>(double x) { return exp(x); }

// y = ln(1 + e^x), written so that e^x never overflows.
template <typename T> __device__ void softplus(T* y, const T* x, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) {
        T v = x[i];
        y[i] = v > T(0) ? v + sp_log1p(sp_exp(-v)) : sp_log1p(sp_exp(v));
    }
}
// dx = g·σ(x), with σ split at 0 the same way.
template <typename T> __device__ void softplus_backward(T* dx, const T* x, const T* g, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) {
        T v = x[i];
        T s = v >= T(0) ? T(1) / (T(1) + sp_exp(-v)) : sp_exp(v) / (T(1) + sp_exp(v));
        dx[i] = g[i] * s;
    }
}
extern "C" __global__ void softplus_f32(float* y, const float* x, unsigned long long n) { softplus<float>(y, x, n); }
extern "C" __global__ void softplus_f64(double* y, const double* x, unsigned long long n) { softplus<double>(y, x, n); }
extern "C" __global__ void softplus_backward_f32(float* dx, const float* x, const float* g, unsigned long long n) { softplus_backward<float>(dx, x, g, n); }
extern "C" __global__ void softplus_backward_f64(double* dx, const double* x, const double* g, unsigned long long n) { softplus_backward<double>(dx, x, g, n); }
"#;

/// σ(x) split at 0 so that e^x never overflows (the same formula as the kernel).
fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        v.exp() / (1.0 + v.exp())
    }
}

/// Runs `f` on every element of the CPU tensors `xs` (all of one compute dtype), computing in f64 and
/// rounding once.
fn cpu_map(xs: &[&Tensor], f: impl Fn(&[f64]) -> f64) -> Result<Tensor> {
    let vals: Vec<Vec<f64>> = xs.iter().map(|x| x.try_to_vec_f64()).collect::<Result<_>>()?;
    let out: Vec<f64> = (0..xs[0].numel()).map(|i| f(&vals.iter().map(|v| v[i]).collect::<Vec<_>>())).collect();
    Tensor::from_vec(out, xs[0].shape().clone())?.try_to_dtype(xs[0].dtype())
}

/// Launches `name_<dtype>` of [`KERNELS`] with one output like `xs[0]` and the inputs `xs`.
fn cuda_map(name: &str, xs: &[&Tensor]) -> Result<Tensor> {
    let x = xs[0];
    let kernel = Kernel::new(format!("{name}_{}", x.dtype()), KERNELS);
    let mut out = Tensor::full_on(0.0, x.shape().clone(), x.dtype(), x.device())?;
    let n = x.numel() as u64;
    let mut args = vec![KernelArg::Out(&mut out)];
    args.extend(xs.iter().map(|t| KernelArg::In(t)));
    args.push(KernelArg::U64(n));
    // SAFETY: the kernel's parameters are (T* out, const T* in..., unsigned long long n), exactly
    // `args`; it writes out[i] and reads in[i] for i < n only, and every tensor has n elements.
    unsafe { kernel.launch([n.div_ceil(256).max(1) as u32, 1, 1], [256, 1, 1], &mut args)? };
    Ok(out)
}

/// softplus(x) = ln(1 + eˣ). Its VJP is the custom op [`SoftplusBackward`].
pub struct Softplus;

impl CustomOp for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        if inputs[0].is_cuda() {
            cuda_map("softplus", inputs)
        } else {
            cpu_map(inputs, |v| if v[0] > 0.0 { v[0] + (-v[0]).exp().ln_1p() } else { v[0].exp().ln_1p() })
        }
    }
    fn backward(&self, inputs: &[Var], _output: &Var, grad: &Var) -> Result<Vec<Option<Var>>> {
        Ok(vec![Some(Var::apply(SoftplusBackward, &[&inputs[0], grad])?)])
    }
}

/// softplus_backward(x, g) = g·σ(x), fused; its VJP is written in `Var` ops:
/// with cotangent c, x̄ = c·g·σ(x)·(1 − σ(x)) and ḡ = c·σ(x).
pub struct SoftplusBackward;

impl CustomOp for SoftplusBackward {
    fn name(&self) -> &'static str {
        "softplus_backward"
    }
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        if inputs[0].is_cuda() {
            cuda_map("softplus_backward", inputs)
        } else {
            cpu_map(inputs, |v| v[1] * sigmoid(v[0]))
        }
    }
    fn backward(&self, inputs: &[Var], _output: &Var, c: &Var) -> Result<Vec<Option<Var>>> {
        let (x, g) = (&inputs[0], &inputs[1]);
        let s = x.sigmoid()?;
        let ds = s.mul(&s.affine(-1.0, 1.0)?)?; // σ'(x) = σ(1 − σ)
        let xbar = if x.is_tracked() { Some(c.mul(g)?.mul(&ds)?) } else { None };
        let gbar = if g.is_tracked() { Some(c.mul(&s)?) } else { None };
        Ok(vec![xbar, gbar])
    }
}

/// softplus as a `Var` method would be: one line on top of the op.
pub fn softplus(x: &Var) -> Result<Var> {
    Var::apply(Softplus, &[x])
}

/// The largest errors of the three checks (first, second and third order) on `device`.
pub fn check_on(device: Device) -> Result<[f64; 3]> {
    let x = Tensor::from_vec(vec![-2.5f64, -0.7, 0.0, 0.4, 1.9, 4.0], [2, 3])?;
    let w = Tensor::from_vec(vec![0.3f64, -1.1, 0.8, 2.0, -0.5, 0.9], [2, 3])?;
    let on = |t: &Tensor| t.to_device(device);
    let (wd, u, v) = (on(&w)?, on(&Tensor::ones([2, 3], DType::F64))?, on(&w.sub(&x)?)?);
    // f(x) = Σ w ∘ softplus(x)²: nonzero derivatives of every order.
    let f = move |xs: &[Var]| -> Result<Var> { softplus(&xs[0].to_device(device)?)?.square()?.mul(&Var::constant(wd.clone()))?.sum_all() };
    let first = check_grad(&f, std::slice::from_ref(&x), 1e-6)?;
    let second = check_hvp(&f, std::slice::from_ref(&x), std::slice::from_ref(&w), 1e-5)?;
    // A third-order quantity: F(x) = ⟨∇ₓ⟨∇f(x), v⟩, u⟩, whose gradient holds third derivatives of f.
    let third = check_grad(
        |xs: &[Var]| {
            let g = grad(&f(xs)?, &[&xs[0]], true)?.remove(0);
            let gv = g.to_device(device)?.mul(&Var::constant(v.clone()))?.sum_all()?;
            let h = grad(&gv, &[&xs[0]], true)?.remove(0);
            h.to_device(device)?.mul(&Var::constant(u.clone()))?.sum_all()
        },
        std::slice::from_ref(&x),
        1e-5,
    )?;
    Ok([first.max_rel_err, second.max_rel_err, third.max_rel_err])
}

fn main() -> Result<()> {
    let mut devices = vec![Device::Cpu];
    if metagrad::cuda::available() {
        devices.push(Device::cuda(0)?);
    }
    for d in devices {
        let [e1, e2, e3] = check_on(d)?;
        println!("{d}: softplus vs finite differences (f64), max relative error: gradient {e1:.1e}, HVP {e2:.1e}, third order {e3:.1e}");
        if e1 > 1e-6 || e2 > 1e-5 || e3 > 1e-4 {
            return Err(metagrad::Error::Invalid {
                op: "custom_op example",
                msg: format!("derivatives disagree with finite differences on {d}"),
            });
        }
    }
    Ok(())
}
