// Element-wise kernels: unary maps, broadcast binary ops, strided copies (permute, broadcast, narrow,
// pad, concat), fill, dtype casts and the non-finite check.
//
// Semantics follow the CPU kernels in src/ops/unary.rs and src/ops/binary.rs, op by op (relu(NaN) = 0,
// sigmoid split at 0 so exp never overflows, affine as one fused multiply-add). Each output element is
// written by one thread: results do not depend on the launch configuration.

// Unary op codes: `unary_code` in src/backend/cuda/storage.rs.
enum UnaryOp {
    U_NEG, U_EXP, U_LOG, U_TANH, U_SIGMOID, U_RELU, U_SQRT, U_RSQRT, U_ABS, U_SQUARE, U_ERF, U_POWF,
    U_CLAMP, U_AFFINE, U_STEP, U_SIGN, U_IN_RANGE, U_SIN, U_COS, U_NONZERO, U_GELU, U_GELU_GRAD
};

template <typename T> __device__ __forceinline__ T unary_op(int op, T x, T p, T q) {
    switch (op) {
    case U_NEG: return -x;
    case U_EXP: return mg_exp(x);
    case U_LOG: return mg_log(x);
    case U_TANH: return mg_tanh(x);
    case U_SIGMOID: {
        if (x >= T(0)) return T(1) / (T(1) + mg_exp(-x));
        const T e = mg_exp(x);
        return e / (T(1) + e);
    }
    case U_RELU: return x > T(0) ? x : T(0);
    case U_SQRT: return mg_sqrt(x);
    case U_RSQRT: return T(1) / mg_sqrt(x);
    case U_ABS: return mg_abs(x);
    case U_SQUARE: return x * x;
    case U_ERF: return mg_erf(x);
    case U_POWF: return mg_pow(x, p);
    case U_CLAMP: return x < p ? p : (x > q ? q : x);
    case U_AFFINE: return mg_fma(p, x, q);
    case U_STEP: return x > T(0) ? T(1) : T(0);
    case U_SIGN: return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    case U_IN_RANGE: return (x >= p && x <= q) ? T(1) : T(0);
    case U_SIN: return mg_sin(x);
    case U_COS: return mg_cos(x);
    case U_NONZERO: return x != T(0) ? T(1) : T(0); // NaN counts as nonzero
    // x/2 · (1 + erf(x/√2)) as the composite ops round it (mul_scalar is an fma with 0).
    case U_GELU: return mg_fma(T(0.5), x, T(0)) * (mg_erf(mg_fma(T(0.70710678118654752440), x, T(0))) + T(1));
    case U_GELU_GRAD: {
        const T cdf = T(0.5) * (mg_erf(T(0.70710678118654752440) * x) + T(1));
        const T pdf = mg_exp(T(-0.5) * x * x) * T(0.39894228040143267794);
        return pdf == T(0) ? cdf : mg_fma(x, pdf, cdf); // Φ(x) where φ underflows, also at ±∞
    }
    }
    __trap();
}

template <typename T>
__device__ void unary(T* __restrict__ out, const T* __restrict__ x, u64 n, int op, double p0, double p1) {
    const T p = (T)p0, q = (T)p1;
    MG_FOR_EACH(i, n) out[i] = unary_op<T>(op, x[i], p, q);
}
#define UNARY_PARAMS(T) (T* out, const T* x, u64 n, int op, double p0, double p1)
MG_F32_F64(unary, UNARY_PARAMS, (out, x, n, op, p0, p1))

// Binary op codes: the order of `BinaryOp` in src/backend/spec.rs.
enum BinaryOp { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN, B_SELECT };

template <typename T> __device__ __forceinline__ T binary_op(int op, T a, T b) {
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_MAX: return (b > a || mg_isnan(b)) ? b : a; // ties and a NaN in a give a
    case B_MIN: return (b < a || mg_isnan(b)) ? b : a;
    case B_SELECT: return b != T(0) ? a : T(-0.0); // x + (-0) = x: see BinaryOp::Select
    }
    __trap();
}

// out[i] = a[offset_a(i)] op b[offset_b(i)] with NumPy broadcasting through the strides.
template <typename T>
__device__ void binary(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, u64 n, int op, Strides s) {
    if (s.rank == 0) {
        MG_FOR_EACH(i, n) out[i] = binary_op<T>(op, a[i], b[i]); // same shapes: contiguous
        return;
    }
    MG_FOR_EACH(i, n) {
        i64 oa, ob;
        mg_offsets(s, i, &oa, &ob);
        out[i] = binary_op<T>(op, a[oa], b[ob]);
    }
}
#define BINARY_PARAMS(T) (T* out, const T* a, const T* b, u64 n, int op, Strides s)
MG_F32_F64(binary, BINARY_PARAMS, (out, a, b, n, op, s))

// dst[off_dst + Σ k_d·sa_d] = src[off_src + Σ k_d·sb_d] for every index k of s.dims: one mechanism for
// permute (permuted source strides), broadcast (zero source strides), narrow (source offset), pad and
// concat (destination offset and strides; the rest of dst is zeroed first).
template <typename T>
__device__ void copy(T* __restrict__ dst, i64 off_dst, const T* __restrict__ src, i64 off_src, u64 n, Strides s) {
    MG_FOR_EACH(i, n) {
        i64 od, os;
        mg_offsets(s, i, &od, &os);
        dst[off_dst + od] = src[off_src + os];
    }
}
#define COPY_PARAMS(T) (T* dst, i64 off_dst, const T* src, i64 off_src, u64 n, Strides s)
MG_F32_F64(copy, COPY_PARAMS, (dst, off_dst, src, off_src, n, s))

template <typename T> __device__ void fill(T* out, u64 n, double v) {
    const T x = (T)v;
    MG_FOR_EACH(i, n) out[i] = x;
}
#define FILL_PARAMS(T) (T* out, u64 n, double v)
MG_F32_F64(fill, FILL_PARAMS, (out, n, v))

// Number of NaN or infinite elements, in out[0] (added to it when `add`, so that one counter sums
// the counts of several tensors): one block of 256 threads, a fixed tree.
template <typename T> __device__ void count_nonfinite(u64* out, const T* x, u64 n, u64 add) {
    __shared__ u64 s[256];
    if (blockDim.x != 256 || gridDim.x != 1) __trap();
    const unsigned t = threadIdx.x;
    u64 c = 0;
    for (u64 i = t; i < n; i += 256) c += mg_isfinite(x[i]) ? 0 : 1;
    s[t] = c;
    __syncthreads();
    for (unsigned h = 128; h > 0; h >>= 1) {
        if (t < h) s[t] += s[t + h];
        __syncthreads();
    }
    if (t == 0) out[0] = (add ? out[0] : 0) + s[0];
}
#define NONFINITE_PARAMS(T) (u64* out, const T* x, u64 n, u64 add)
MG_F32_F64(count_nonfinite, NONFINITE_PARAMS, (out, x, n, add))

// Casts between f32 and f64, and between f32 and the 16-bit storage types (round to nearest even,
// NaN kept quiet), bit-exact with the `half` crate the CPU backend uses.
extern "C" __global__ void cast_f32_f64(double* out, const float* x, u64 n) { MG_FOR_EACH(i, n) out[i] = (double)x[i]; }
extern "C" __global__ void cast_f64_f32(float* out, const double* x, u64 n) { MG_FOR_EACH(i, n) out[i] = (float)x[i]; }

__device__ __forceinline__ unsigned short mg_f32_to_bf16(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); // NaN stays NaN
    const unsigned round = 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)((u + round) >> 16);
}
__device__ __forceinline__ float mg_bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
extern "C" __global__ void cast_f32_bf16(unsigned short* out, const float* x, u64 n) { MG_FOR_EACH(i, n) out[i] = mg_f32_to_bf16(x[i]); }
extern "C" __global__ void cast_bf16_f32(float* out, const unsigned short* x, u64 n) { MG_FOR_EACH(i, n) out[i] = mg_bf16_to_f32(x[i]); }
