//! The CUDA backend in one page: place tensors on a GPU, take a gradient and a Hessian-vector product
//! there, check them against the CPU, and read the allocator's counters.
//!
//! ```sh
//! cargo run --release --example cuda_quickstart                              # needs a GPU
//! METAGRAD_CUDA_EMULATOR=1 cargo run --release --example cuda_quickstart     # no GPU: the kernel emulator
//! ```
//!
//! | CPU | CUDA |
//! | --- | --- |
//! | `Tensor::randn(..)` | `Tensor::randn(..).to_device(dev)?` (random numbers are drawn on the host) |
//! | `Tensor::zeros(..)` | `Tensor::full_on(0.0, .., dev)?` (a fill kernel, no upload) |
//! | `t.to_vec_f64()` | the same: downloads after the queued kernels finish |
//! | `t.as_slice::<f32>()?` | an error naming the device: copy first with `to_device(Device::Cpu)` |

use metagrad::cuda;
use metagrad::{grad, hvp, DType, Device, Result, Tape, Tensor, Var};

/// loss(W1, W2) = mean cross-entropy of tanh(x·W1)·W2 on fixed data, on `dev`.
fn loss_and_derivatives(dev: Device) -> Result<(f64, Vec<Tensor>, Vec<Tensor>)> {
    let tape = Tape::new();
    let w1 = tape.var(Tensor::randn([32, 64], DType::F64, 1).to_device(dev)?);
    let w2 = tape.var(Tensor::randn([64, 10], DType::F64, 2).to_device(dev)?);
    let x = Var::constant(Tensor::randn([128, 32], DType::F64, 3).to_device(dev)?);
    let labels: Vec<usize> = (0..128).map(|i| (i * 7) % 10).collect();
    let loss = x.matmul(&w1)?.tanh()?.matmul(&w2)?.cross_entropy(&labels, None)?;
    let g = grad(&loss, &[&w1, &w2], false)?.iter().map(|g| g.value().clone()).collect();
    // Backward-over-backward: the Hessian of the loss times a direction, on the device.
    let v = [Tensor::full_on(1.0, [32, 64], DType::F64, dev)?, Tensor::full_on(-1.0, [64, 10], DType::F64, dev)?];
    let tape = Tape::new();
    let (w1, w2) = (tape.var(w1.value().clone()), tape.var(w2.value().clone()));
    let loss2 = x.matmul(&w1)?.tanh()?.matmul(&w2)?.cross_entropy(&labels, None)?;
    let h = hvp(&loss2, &[&w1, &w2], &v)?;
    Ok((loss.value().to_scalar()?, g, h))
}

fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    let mut worst = 0.0f64;
    for (a, b) in a.iter().zip(b) {
        let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
        let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale);
    }
    worst
}

fn main() -> Result<()> {
    let dev = Device::best();
    if dev == Device::Cpu {
        println!("no CUDA device here (set METAGRAD_CUDA_EMULATOR=1 to run the CUDA path on the kernel emulator)");
        return Ok(());
    }
    println!("device {dev}: {}", cuda::device_name(dev)?);
    let (l_gpu, g_gpu, h_gpu) = loss_and_derivatives(dev)?;
    let (l_cpu, g_cpu, h_cpu) = loss_and_derivatives(Device::Cpu)?;
    println!("loss: {l_gpu:.12} on {dev}, {l_cpu:.12} on the CPU");
    println!("gradient: max relative difference {:.2e}", max_rel_diff(&g_gpu, &g_cpu));
    println!("HVP: max relative difference {:.2e}", max_rel_diff(&h_gpu, &h_cpu));
    let again = loss_and_derivatives(dev)?;
    let same = again.1.iter().chain(&again.2).zip(g_gpu.iter().chain(&h_gpu)).all(|(a, b)| a.bit_eq(b));
    println!("second run on {dev}: {} bits", if same { "the same" } else { "DIFFERENT" });
    let s = cuda::memory_stats(dev)?;
    println!(
        "allocator: {} driver allocations, {} cache hits, peak {:.1} KiB in use, {:.1} KiB cached",
        s.driver_allocs,
        s.cache_hits,
        s.peak_bytes_in_use as f64 / 1024.0,
        s.bytes_cached as f64 / 1024.0
    );
    Ok(())
}
