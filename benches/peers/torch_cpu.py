"""PyTorch eager (CPU, float32) peer of metagrad's bob_throughput: one JSON object keyed by workload.

    python benches/peers/torch_cpu.py [--threads 2] [--reps 10] [--workload NAME]

Per workload (medians over --reps after 2 untimed warm-ups; `*_min_ms` is the best repetition):
- forward_ms: the loss with autograd recording (parameters require grad);
- backward_ms: torch.autograd.grad(loss, params), after an untimed forward;
- bob_ms: the Hessian-vector product by reverse over reverse, *including* the forward: loss, then
  g = autograd.grad(loss, params, create_graph=True), then autograd.grad(sum_i <g_i, v_i>, params);
  bob_after_forward_ms is the same minus its forward (metagrad's own bob_ms excludes the forward);
- peak_rss_mib: resident memory growth during the last (untimed) warm-up bob (see _common.peak_rss_growth).
Attention uses the explicit math path (softmax(Q Kᵀ / 8) V): PyTorch's CPU
F.scaled_dot_product_attention has no double backward; `sdpa_double_backward` records the probe.
`matmul` gives the GFLOP/s of a @ b per shape "MxKxN".
"""
import functools
import json
import time

import torch
import torch.nn.functional as F

import _common as c


def mlp():
    x, labels, params, v = c.mlp_data()
    x, labels = torch.from_numpy(x), torch.from_numpy(labels)

    def loss(p):
        h = x
        for l in range(0, len(p), 2):
            h = h @ p[l] + p[l + 1]
            if l + 2 < len(p):
                h = torch.tanh(h)
        return F.cross_entropy(h, labels)

    return loss, params, v


def attention(n):
    r, params, v = c.attention_data(n)
    r = torch.from_numpy(r)

    def loss(p):
        q, k, vv = p
        s = (q @ k.transpose(-2, -1)) * 0.125
        return ((torch.softmax(s, dim=-1) @ vv) * r).sum()

    return loss, params, v


def conv():
    x, r, params, v = c.conv_data()
    x, r = torch.from_numpy(x), torch.from_numpy(r)

    def loss(p):
        y = F.conv2d(torch.tanh(F.conv2d(x, p[0], padding=1)), p[1], padding=1)
        return (y * r).sum() / r.numel()

    return loss, params, v


@functools.cache
def sdpa_double_backward():
    """Whether F.scaled_dot_product_attention supports a create_graph double backward on CPU (probed
    once, at the N=512 shape)."""
    q, k, v, r = (torch.randn(1, 4, 512, 64, requires_grad=i < 3) for i in range(4))
    try:
        out = F.scaled_dot_product_attention(q, k, v, scale=0.125)
        g = torch.autograd.grad((out * r).sum(), (q, k, v), create_graph=True)
        torch.autograd.grad(sum((gi * gi).sum() for gi in g), (q, k, v))
        return {"supported": True}
    except RuntimeError as e:
        return {"supported": False, "error": str(e).splitlines()[0]}


def measure(loss, params_np, v_np, reps):
    params = [torch.from_numpy(p).requires_grad_() for p in params_np]
    v = [torch.from_numpy(d) for d in v_np]

    def forward():
        t0 = time.perf_counter()
        loss(params)
        return {"forward": c.elapsed_ms(t0)}

    def backward():
        l = loss(params)
        t0 = time.perf_counter()
        torch.autograd.grad(l, params)
        return {"backward": c.elapsed_ms(t0)}

    def bob():
        t0 = time.perf_counter()
        l = loss(params)
        t1 = time.perf_counter()
        g = torch.autograd.grad(l, params, create_graph=True)
        torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
        return {"bob": c.elapsed_ms(t0), "bob_after_forward": c.elapsed_ms(t1)}

    out = c.time_reps([forward, backward, bob], reps, peak_of=2)
    out["bob_over_backward"] = round(out["bob_ms"] / out["backward_ms"], 3)
    out["params"] = sum(p.numel() for p in params)
    return out


def timed_matmul(a, b):
    a, b = torch.from_numpy(a), torch.from_numpy(b)

    def run():
        t0 = time.perf_counter()
        a @ b
        return c.elapsed_ms(t0)

    return run


def main():
    args = c.parse_args("PyTorch")
    torch.set_num_threads(args.threads)
    common = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(), "dtype": "float32", "device": "cpu"}
    builders = {"mlp_784_512_512_10_b512": mlp, "conv_b32_c3_32_32_hw32_k3": conv}
    builders.update({name: (lambda n=n: attention(n)) for name, n in c.ATTENTION.items()})
    results = {}
    for name in c.selected(args):
        reps = c.reps_for(name, args.reps)
        if name == "matmul":
            results[name] = {**c.matmul_entry(timed_matmul, reps), **common}
            continue
        entry = measure(*builders[name](), reps)
        if name in c.ATTENTION:
            entry["bob_gflops"] = c.attention_bob_gflops(c.ATTENTION[name], entry["bob_ms"])
            entry["sdpa_double_backward"] = sdpa_double_backward()
        elif name.startswith("conv"):
            entry["mkldnn"] = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        results[name] = {**entry, "backward_includes_forward": False, "reps": reps, **common}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
