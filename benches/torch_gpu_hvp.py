"""PyTorch peers of bob_throughput's GPU workloads, for the comparisons in issues #5 and #6.

Times (medians after warm-up, ms, CUDA-synchronized) the forward, the gradient, and the Hessian-vector
product *reverse over reverse* (torch.autograd.grad with create_graph=True, then the gradient of
<g, v>), which is what metagrad's `hvp` computes and what bob_throughput's `bob_ms` reports:
  - attention_b4_h16_n{N}_d64: loss = sum(attention(Q, K, V) * R), non-causal, scale 1/8, f32 with TF32
    off. PyTorch's fused SDPA kernels have no double backward, so its HVP runs the N×N math path; we
    time both `F.scaled_dot_product_attention` and the explicit softmax(QKᵀ)V and report OOM as such.
  - conv_b128_c64_64_hw32_k3_{f32,bf16}: loss = sum(conv(tanh(conv(x, w1)), w2) * R) / numel, padding 1,
    HVP w.r.t. (w1, w2) through cuDNN's double backward (TF32 off for f32).
Prints one JSON object per workload, one per line.

    python3 benches/torch_gpu_hvp.py [reps]        # on the GPU machine (PyTorch is in its image)
"""

import json
import sys

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.deterministic = True
DEV = "cuda"


def timed(f, reps):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end))
    ts.sort()
    return ts[len(ts) // 2]


def measure(name, params, loss_fn, reps, extra):
    dirs = [torch.randn_like(p) for p in params]

    def forward():
        with torch.no_grad():
            loss_fn(params)

    def gradient():
        ps = [p.detach().requires_grad_() for p in params]
        torch.autograd.grad(loss_fn(ps), ps)

    def hvp():
        ps = [p.detach().requires_grad_() for p in params]
        g = torch.autograd.grad(loss_fn(ps), ps, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, dirs))
        torch.autograd.grad(dot, ps)

    out = {"workload": name, "torch": torch.__version__, "device": torch.cuda.get_device_name(), "reps": reps, **extra}
    for key, f in (("forward_ms", forward), ("gradient_ms", gradient), ("bob_ms", hvp)):
        try:
            torch.cuda.reset_peak_memory_stats()
            out[key] = round(timed(f, reps), 3)
            out[key.replace("_ms", "_peak_mib")] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except torch.cuda.OutOfMemoryError as e:
            out[key] = None
            out[key.replace("_ms", "_error")] = "out of memory: " + str(e).split("\n")[0]
            torch.cuda.empty_cache()
    print(json.dumps(out), flush=True)


def attention(n, reps, sdpa):
    shape = (4, 16, n, 64)
    q, k, v, r = (torch.randn(shape, device=DEV) for _ in range(4))

    def loss(p):
        q, k, v = p
        if sdpa:
            o = F.scaled_dot_product_attention(q, k, v, scale=0.125)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1) @ v
        return (o * r).sum()

    flops = 4 * 16 * 24 * n * n * 64
    name = f"attention_b4_h16_n{n}_d64" + ("_sdpa" if sdpa else "_math")
    measure(name, [q, k, v], loss, reps, {"dtype": "float32", "bob_flops": flops})


def conv(dtype, reps):
    x = torch.randn(128, 64, 32, 32, device=DEV, dtype=dtype)
    r = torch.randn(128, 64, 32, 32, device=DEV, dtype=dtype)
    w1 = (torch.randn(64, 64, 3, 3, device=DEV) / 24.0).to(dtype)
    w2 = (torch.randn(64, 64, 3, 3, device=DEV) / 24.0).to(dtype)

    def loss(p):
        y = F.conv2d(torch.tanh(F.conv2d(x, p[0], padding=1)), p[1], padding=1)
        return (y * r).sum() / y.numel()

    tag = "f32" if dtype == torch.float32 else "bf16"
    measure(f"conv_b128_c64_64_hw32_k3_{tag}", [w1, w2], loss, reps, {"dtype": str(dtype)})


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for n in (512, 2048, 8192):
        for sdpa in (True, False):
            attention(n, reps, sdpa)
    for dtype in (torch.float32, torch.bfloat16):
        conv(dtype, reps)


if __name__ == "__main__":
    main()
