// Prelude prepended to every kernel file (src/backend/cuda/mod.rs does it; NVRTC has no include path).
//
// Conventions for every kernel in kernels/:
//  - entry points are `extern "C"` and named `<op>_<dtype>` (`unary_f32`, `sum_axis_f64`, ...);
//  - device pointers and sizes are 64-bit; scalar parameters are passed as double and rounded to T once;
//  - each output element is written by exactly one thread; no atomics anywhere; every reduction runs in
//    an order fixed by the shapes alone (never by the grid size or by scheduling), so two runs give the
//    same bits;
//  - only plain CUDA C (shared memory, __syncthreads, math functions), so the same sources also compile
//    with g++ for the host emulator (src/backend/cuda/emu), which tests them without a GPU.

typedef unsigned long long u64;
typedef long long i64;

// Math overloads so templates read the same for f32 and f64.
__device__ __forceinline__ float mg_exp(float x) { return expf(x); }
__device__ __forceinline__ double mg_exp(double x) { return exp(x); }
__device__ __forceinline__ float mg_log(float x) { return logf(x); }
__device__ __forceinline__ double mg_log(double x) { return log(x); }
__device__ __forceinline__ float mg_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double mg_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float mg_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double mg_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float mg_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double mg_abs(double x) { return fabs(x); }
__device__ __forceinline__ float mg_erf(float x) { return erff(x); }
__device__ __forceinline__ double mg_erf(double x) { return erf(x); }
__device__ __forceinline__ float mg_sin(float x) { return sinf(x); }
__device__ __forceinline__ double mg_sin(double x) { return sin(x); }
__device__ __forceinline__ float mg_cos(float x) { return cosf(x); }
__device__ __forceinline__ double mg_cos(double x) { return cos(x); }
__device__ __forceinline__ float mg_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double mg_pow(double x, double p) { return pow(x, p); }
__device__ __forceinline__ float mg_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double mg_fma(double a, double b, double c) { return fma(a, b, c); }
// +infinity (NVRTC defines no INFINITY macro without headers).
template <typename T> __device__ __forceinline__ T mg_inf();
template <> __device__ __forceinline__ float mg_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double mg_inf<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
template <typename T> __device__ __forceinline__ bool mg_isnan(T x) { return x != x; }
template <typename T> __device__ __forceinline__ bool mg_isfinite(T x) { return x - x == T(0); }

// Up to MG_MAX_RANK dimensions with per-operand element strides (0 on broadcast dimensions), as filled
// in by src/backend/cuda/ops.rs: `rank`, then `dims`, then the strides of operands a and b.
#define MG_MAX_RANK 8
struct Strides {
    i64 rank;
    i64 dims[MG_MAX_RANK];
    i64 sa[MG_MAX_RANK];
    i64 sb[MG_MAX_RANK];
};

// Offsets into a and b of row-major output element `i`.
__device__ __forceinline__ void mg_offsets(const Strides& s, u64 i, i64* oa, i64* ob) {
    i64 a = 0, b = 0;
    for (int d = (int)s.rank - 1; d >= 0; d--) {
        const i64 n = s.dims[d];
        const i64 k = (i64)(i % (u64)n);
        i /= (u64)n;
        a += k * s.sa[d];
        b += k * s.sb[d];
    }
    *oa = a;
    *ob = b;
}

// A 2-D window geometry (src/ops/conv.rs `Geometry`): input n×c×h×w, window kh×kw, output ho×wo,
// stride (sh, sw), padding (ph, pw), dilation (dh, dw).
struct Geom {
    i64 n, c, h, w, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw;
};

// The input row read by tap ki of output row oh, or −1 outside the image (same for columns).
__device__ __forceinline__ i64 geom_row(const Geom& g, i64 ki, i64 oh) {
    const i64 r = oh * g.sh + ki * g.dh - g.ph;
    return (r >= 0 && r < g.h) ? r : -1;
}
__device__ __forceinline__ i64 geom_col(const Geom& g, i64 kj, i64 ow) {
    const i64 c = ow * g.sw + kj * g.dw - g.pw;
    return (c >= 0 && c < g.w) ? c : -1;
}
// The output row whose tap ki reads input row r, or −1 (same for columns).
__device__ __forceinline__ i64 geom_out_row(const Geom& g, i64 ki, i64 r) {
    const i64 t = r + g.ph - ki * g.dh;
    if (t < 0 || t % g.sh != 0 || t / g.sh >= g.ho) return -1;
    return t / g.sh;
}
__device__ __forceinline__ i64 geom_out_col(const Geom& g, i64 kj, i64 c) {
    const i64 t = c + g.pw - kj * g.dw;
    if (t < 0 || t % g.sw != 0 || t / g.sw >= g.wo) return -1;
    return t / g.sw;
}

// One thread per element, any grid (grid-stride loop).
#define MG_FOR_EACH(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// Instantiates the kernels `name_f32` and `name_f64` from the device template `name<T>`: `params` is a
// function-like macro giving the parameter list for an element type, `args` the argument list.
#define MG_F32_F64(name, params, args)                                                     \
    extern "C" __global__ void name##_f32 params(float) { name<float> args; }              \
    extern "C" __global__ void name##_f64 params(double) { name<double> args; }
