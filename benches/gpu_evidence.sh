#!/usr/bin/env bash
# Everything the CUDA issues (#4, #5, #6) need from a GPU machine, in one run, with raw logs.
#
# Here (the development machine, with Rust):
#     ../shared/tools/gpu-stage.sh                      # builds and stages the binaries into .gpu/
#     cp benches/gpu_evidence.sh benches/torch_gpu_hvp.py .gpu/
# Then with the device tool: carry [".gpu"], command
#     METAGRAD_REQUIRE_CUDA=1 LOG_DIR=$OUT bash .gpu/gpu_evidence.sh
# and commit $OUT/*.log under benches/results/ (device, date and command are in each log's header).
set -uo pipefail
cd "$(dirname "$0")"
out=${LOG_DIR:-/tmp}
header() { echo "# $1"; echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; echo "# command: $2"; echo; }
export METAGRAD_REQUIRE_CUDA=1
# The staged binaries run away from this machine's source tree: point them at the bundled digits.
export METAGRAD_MNIST=${METAGRAD_MNIST:-$(cd .. && pwd)/data/mnist/mnist10k.bin}
{ header "every test binary with METAGRAD_REQUIRE_CUDA=1" "bash run.sh"; bash run.sh; } 2>&1 | tee "$out/gpu-tests.log"
{ header "CUDA quickstart (GPU vs CPU, repeatability, allocator)" "run.sh example-cuda_quickstart"; bash run.sh example-cuda_quickstart; } 2>&1 | tee "$out/gpu-quickstart.log"
{ header "bob_throughput on cuda:0" "run.sh example-bob_throughput --device cuda --json --reps 10"; bash run.sh example-bob_throughput --device cuda --json --reps 10; } 2>&1 | tee "$out/gpu-bob.log"
{ header "bob_throughput on the CPU of the GPU machine" "run.sh example-bob_throughput --json --reps 5"; bash run.sh example-bob_throughput --json --reps 5; } 2>&1 | tee "$out/gpu-machine-cpu-bob.log"
{ header "the MGD demo on cuda:0" "run.sh example-metagradient_descent --device cuda --out /tmp/mgd"; bash run.sh example-metagradient_descent --device cuda --out /tmp/mgd; } 2>&1 | tee "$out/gpu-demo.log"
{ header "PyTorch peers (TF32 off)" "python3 torch_gpu_hvp.py 10"; PYTHONUNBUFFERED=1 python3 torch_gpu_hvp.py 10; } 2>&1 | tee "$out/gpu-torch.log"
