// Sum over the middle axis of a contiguous (outer, n, inner) view: out[o, i] = sum_j x[o, j, i].
//
// Bitwise deterministic by construction: no atomics, and a reduction tree fixed by n alone.
//  - One block computes one output element (a grid-stride loop over the outer * inner outputs, so any
//    grid size gives the same bits).
//  - The block size is fixed at MG_REDUCE_BLOCK threads; a launch with another block size traps.
//  - Thread t sums x[o, j, i] for j = t, t + MG_REDUCE_BLOCK, ... in ascending j, then the
//    MG_REDUCE_BLOCK partial sums are combined in shared memory by a fixed halving tree
//    (s[t] += s[t + h] for h = BLOCK/2, ..., 1).
// The order differs from the CPU kernel's, so GPU and CPU sums agree to rounding, not bitwise; two GPU
// runs agree bitwise on any device. Header-free (NVRTC has no default include path).

typedef unsigned long long u64;

#define MG_REDUCE_BLOCK 256

template <typename T>
__device__ __forceinline__ void sum_axis(const T* __restrict__ x, T* __restrict__ out, u64 outer, u64 n,
                                         u64 inner) {
    __shared__ T s[MG_REDUCE_BLOCK];
    if (blockDim.x != MG_REDUCE_BLOCK) __trap();
    const unsigned t = threadIdx.x;
    const u64 outputs = outer * inner;
    for (u64 k = blockIdx.x; k < outputs; k += gridDim.x) {
        const u64 o = k / inner;
        const u64 i = k - o * inner;
        const T* row = x + o * n * inner + i;
        T acc = T(0);
        for (u64 j = t; j < n; j += MG_REDUCE_BLOCK) acc += row[j * inner];
        s[t] = acc;
        __syncthreads();
        for (unsigned h = MG_REDUCE_BLOCK / 2; h > 0; h >>= 1) {
            if (t < h) s[t] += s[t + h];
            __syncthreads();
        }
        if (t == 0) out[k] = s[0];
        __syncthreads(); // s is reused by the next output of this block
    }
}

extern "C" __global__ void sum_axis_f32(const float* x, float* out, u64 outer, u64 n, u64 inner) {
    sum_axis<float>(x, out, outer, n, inner);
}

extern "C" __global__ void sum_axis_f64(const double* x, double* out, u64 outer, u64 n, u64 inner) {
    sum_axis<double>(x, out, outer, n, inner);
}
