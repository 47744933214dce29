//! A custom op built as a downstream crate would build it: `examples/custom_op.rs` (compiled here
//! as a module, so it sees metagrad's public items only) defines softplus with its own forward (CPU
//! loop, or a CUDA kernel through the crate's NVRTC path) and a VJP that is another custom op with a
//! fused forward and a VJP in `Var` ops. Its gradient, HVP and a third derivative must match central
//! finite differences in f64, on the CPU and on a CUDA device when there is one (the kernel emulator
//! in CI).

#[allow(dead_code)]
#[path = "../examples/custom_op.rs"]
mod example;

use metagrad::Device;

fn check(d: Device) {
    let [e1, e2, e3] = example::check_on(d).unwrap();
    assert!(e1 < 1e-6 && e2 < 1e-8 && e3 < 1e-6, "{d}: max relative errors {e1:e} (grad), {e2:e} (HVP), {e3:e} (third order)");
}

#[test]
fn custom_op_matches_finite_differences_to_third_order_on_the_cpu() {
    check(Device::Cpu);
}

#[test]
fn custom_op_with_its_own_cuda_kernel_matches_finite_differences() {
    match Device::cuda(0) {
        Ok(d) => check(d),
        Err(e) => {
            assert!(!std::env::var("METAGRAD_REQUIRE_CUDA").is_ok_and(|v| v == "1"), "METAGRAD_REQUIRE_CUDA=1 but {e}");
            println!("skipped: {e}");
        }
    }
}
