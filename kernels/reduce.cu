// Reductions over the middle axis of a contiguous (outer, n, inner) view: sum, max (with a one-hot mask
// of the first maximum) and the softmax family.
//
// Bitwise deterministic by construction: no atomics, and a reduction tree fixed by n alone.
//  - One block computes one output row (o, i) (a grid-stride loop over the outer * inner rows, so any
//    grid size gives the same bits); the block size is fixed at 256 threads (another traps).
//  - Thread t reduces elements j = t, t + 256, ... in ascending j, then the 256 partial results are
//    combined in shared memory by a fixed halving tree (s[t] ∘= s[t + h] for h = 128, ..., 1).
// The order differs from the CPU kernels', so GPU and CPU agree to rounding, not bitwise; two GPU runs
// agree bitwise on any device.

#define MG_RB 256

// Combines the 256 per-thread values in s[] with `expr` (of a = s[t], b = s[t + h]) by the fixed tree;
// the result is in s[0].
#define MG_TREE(s, t, a, b, expr)                  \
    __syncthreads();                               \
    for (unsigned h = MG_RB / 2; h > 0; h >>= 1) { \
        if (t < h) {                               \
            const T a = s[t], b = s[t + h];        \
            s[t] = (expr);                         \
        }                                          \
        __syncthreads();                           \
    }

template <typename T> __device__ void sum_axis(T* __restrict__ out, const T* __restrict__ x, u64 outer, u64 n, u64 inner) {
    __shared__ T s[MG_RB];
    if (blockDim.x != MG_RB) __trap();
    const unsigned t = threadIdx.x;
    for (u64 k = blockIdx.x; k < outer * inner; k += gridDim.x) {
        const u64 o = k / inner, i = k % inner;
        const T* row = x + o * n * inner + i;
        T acc = T(0);
        for (u64 j = t; j < n; j += MG_RB) acc += row[j * inner];
        s[t] = acc;
        MG_TREE(s, t, a, b, a + b)
        if (t == 0) out[k] = s[0];
        __syncthreads(); // s is reused by this block's next row
    }
}
#define SUM_PARAMS(T) (T* out, const T* x, u64 outer, u64 n, u64 inner)
MG_F32_F64(sum_axis, SUM_PARAMS, (out, x, outer, n, inner))

// vals[o, i] = max_j x[o, j, i] and mask[o, j, i] = 1 at the first maximum, else 0. NaN wins (the first
// NaN), as on the CPU: the tree keeps the better of two (value, index) pairs, ties to the lower index.
template <typename T>
__device__ void max_axis(T* __restrict__ vals, T* __restrict__ mask, const T* __restrict__ x, u64 outer, u64 n, u64 inner) {
    __shared__ T sv[MG_RB];
    __shared__ u64 si[MG_RB];
    if (blockDim.x != MG_RB) __trap();
    const unsigned t = threadIdx.x;
    for (u64 k = blockIdx.x; k < outer * inner; k += gridDim.x) {
        const u64 o = k / inner, i = k % inner;
        const T* row = x + o * n * inner + i;
        T best = T(0);
        u64 bi = ~0ull; // none yet
        for (u64 j = t; j < n; j += MG_RB) {
            const T c = row[j * inner];
            const bool better = bi == ~0ull || (mg_isnan(c) && !mg_isnan(best)) || (!mg_isnan(best) && c > best);
            if (better) {
                best = c;
                bi = j;
            }
        }
        sv[t] = best;
        si[t] = bi;
        __syncthreads();
        for (unsigned h = MG_RB / 2; h > 0; h >>= 1) {
            if (t < h && si[t + h] != ~0ull) {
                const T a = sv[t], b = sv[t + h];
                const u64 ia = si[t], ib = si[t + h];
                bool take;
                if (ia == ~0ull) take = true;
                else if (mg_isnan(a) || mg_isnan(b)) take = mg_isnan(b) && (!mg_isnan(a) || ib < ia);
                else take = b > a || (b == a && ib < ia);
                if (take) {
                    sv[t] = b;
                    si[t] = ib;
                }
            }
            __syncthreads();
        }
        const u64 win = si[0];
        if (t == 0) vals[k] = sv[0];
        for (u64 j = t; j < n; j += MG_RB) mask[(o * n + j) * inner + i] = j == win ? T(1) : T(0);
        __syncthreads();
    }
}
#define MAX_PARAMS(T) (T* vals, T* mask, const T* x, u64 outer, u64 n, u64 inner)
MG_F32_F64(max_axis, MAX_PARAMS, (vals, mask, x, outer, n, inner))

// mode 0: softmax, 1: log_softmax (both of shape (outer, n, inner)), 2: logsumexp (outer, inner).
// Max-shifted like the CPU kernel: an all-(−inf) or non-finite maximum shifts by 0 instead.
template <typename T>
__device__ void softmax_axis(T* __restrict__ out, const T* __restrict__ x, u64 outer, u64 n, u64 inner, int mode) {
    __shared__ T s[MG_RB];
    if (blockDim.x != MG_RB) __trap();
    const unsigned t = threadIdx.x;
    for (u64 k = blockIdx.x; k < outer * inner; k += gridDim.x) {
        const u64 o = k / inner, i = k % inner;
        const T* row = x + o * n * inner + i;
        T m = -mg_inf<T>();
        for (u64 j = t; j < n; j += MG_RB) m = row[j * inner] > m ? row[j * inner] : m;
        s[t] = m;
        MG_TREE(s, t, a, b, b > a ? b : a)
        m = s[0];
        if (!mg_isfinite(m)) m = T(0);
        __syncthreads();
        T acc = T(0);
        for (u64 j = t; j < n; j += MG_RB) acc += mg_exp(row[j * inner] - m);
        s[t] = acc;
        MG_TREE(s, t, a, b, a + b)
        const T sum = s[0];
        if (mode == 0) {
            const T inv = T(1) / sum;
            for (u64 j = t; j < n; j += MG_RB) out[(o * n + j) * inner + i] = mg_exp(row[j * inner] - m) * inv;
        } else if (mode == 1) {
            const T l = mg_log(sum) + m;
            for (u64 j = t; j < n; j += MG_RB) out[(o * n + j) * inner + i] = row[j * inner] - l;
        } else if (t == 0) {
            out[k] = mg_log(sum) + m;
        }
        __syncthreads();
    }
}
#define SOFTMAX_PARAMS(T) (T* out, const T* x, u64 outer, u64 n, u64 inner, int mode)
MG_F32_F64(softmax_axis, SOFTMAX_PARAMS, (out, x, outer, n, inner, mode))
