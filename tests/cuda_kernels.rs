//! The CUDA foundation on any machine: every kernel in `kernels/` compiles with NVRTC (when NVRTC is
//! present), and opening a CUDA device fails with an error, not a panic, when there is no GPU.
//!
//! Without NVRTC or a GPU these tests print that they skipped and pass, unless
//! `METAGRAD_REQUIRE_CUDA=1` is set, when they fail instead (that is how they run on the GPU machine).

use metagrad::cuda;
use metagrad::{Device, Error};

fn require_cuda() -> bool {
    std::env::var("METAGRAD_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    if !cuda::nvrtc_available() {
        assert!(!require_cuda(), "METAGRAD_REQUIRE_CUDA=1 but NVRTC (libnvrtc.so.13) was not found");
        println!("skipped: NVRTC not found (set METAGRAD_REQUIRE_CUDA=1 to fail instead)");
        return;
    }
    let sources = cuda::kernel_sources();
    assert!(!sources.is_empty());
    // METAGRAD_PTX_DIR=dir writes the PTX there, e.g. for `ptxas -arch=sm_90 -v dir/reduce.sm_90.ptx`.
    let dump = std::env::var_os("METAGRAD_PTX_DIR").map(std::path::PathBuf::from);
    let mut entries = 0;
    for (name, src) in sources {
        for arch in ["sm_80", "sm_90"] {
            let ptx = cuda::compile_ptx(name, src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(&format!(".target {arch}")), "{name}: PTX is not for {arch}");
            let n = ptx.matches(".entry ").count();
            assert!(n > 0, "{name}: PTX has no kernel entry point");
            if arch == "sm_90" {
                entries += n;
            }
            if let Some(dir) = &dump {
                let stem = name.trim_end_matches(".cu");
                std::fs::write(dir.join(format!("{stem}.{arch}.ptx")), &ptx).unwrap();
            }
        }
    }
    println!("compiled {entries} kernels ({} files) for sm_80 and sm_90", sources.len());
}

#[test]
fn a_broken_kernel_is_an_error_with_the_nvrtc_log() {
    if !cuda::nvrtc_available() {
        println!("skipped: NVRTC not found");
        return;
    }
    let err = cuda::compile_ptx("broken.cu", "extern \"C\" __global__ void k() { undefined_name; }", "sm_90");
    match err {
        Err(Error::Invalid { msg, .. }) => assert!(msg.contains("broken.cu") && msg.contains("undefined_name"), "{msg}"),
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn device_cuda_is_ok_with_a_gpu_and_a_clear_error_without() {
    match Device::cuda(0) {
        Ok(d) => {
            assert!(cuda::available());
            assert_eq!(d, Device::Cuda(0));
            assert_eq!(d.to_string(), "cuda:0");
        }
        Err(e) => {
            assert!(!require_cuda(), "METAGRAD_REQUIRE_CUDA=1 but {e}");
            assert!(!cuda::available());
            assert!(matches!(e, Error::Device { op: "Device::cuda", .. }), "{e:?}");
            assert!(e.to_string().contains("cuda:0"), "{e}");
            println!("no GPU here: {e}");
        }
    }
    // An ordinal far past any machine's device count is always an error naming it.
    let e = Device::cuda(4096).unwrap_err();
    assert!(e.to_string().contains("cuda:4096"), "{e}");
    // The best device is the GPU exactly when one can be opened.
    assert_eq!(Device::best(), if cuda::available() { Device::Cuda(0) } else { Device::Cpu });
}
