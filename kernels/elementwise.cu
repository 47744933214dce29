// Element-wise kernels: unary maps and broadcast-free binary ops on contiguous buffers, f32 and f64.
//
// Header-free on purpose (NVRTC has no default include path): math comes from NVRTC's built-in device
// math functions. Every entry point is `extern "C"` so its name in the PTX is `<op>_<dtype>`, e.g.
// `exp_f32`. Each output element is written by exactly one thread with no reduction, so results do not
// depend on the launch configuration. Any grid works (grid-stride loop); n is the element count.
//
// Semantics follow the CPU kernels in src/ops/unary.rs and src/ops/binary.rs (e.g. relu(NaN) = 0,
// sigmoid split at 0 so that exp never overflows).

typedef unsigned long long u64;

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

struct Neg { template <typename T> __device__ static T f(T x) { return -x; } };
struct Exp { template <typename T> __device__ static T f(T x) { return mg_exp(x); } };
struct Log { template <typename T> __device__ static T f(T x) { return mg_log(x); } };
struct Tanh { template <typename T> __device__ static T f(T x) { return mg_tanh(x); } };
struct Sqrt { template <typename T> __device__ static T f(T x) { return mg_sqrt(x); } };
struct Rsqrt { template <typename T> __device__ static T f(T x) { return T(1) / mg_sqrt(x); } };
struct Abs { template <typename T> __device__ static T f(T x) { return mg_abs(x); } };
struct Square { template <typename T> __device__ static T f(T x) { return x * x; } };
struct Erf { template <typename T> __device__ static T f(T x) { return mg_erf(x); } };
struct Relu { template <typename T> __device__ static T f(T x) { return x > T(0) ? x : T(0); } };
struct Step { template <typename T> __device__ static T f(T x) { return x > T(0) ? T(1) : T(0); } };
struct Sigmoid {
    template <typename T> __device__ static T f(T x) {
        if (x >= T(0)) return T(1) / (T(1) + mg_exp(-x));
        T e = mg_exp(x);
        return e / (T(1) + e);
    }
};

struct Add { template <typename T> __device__ static T f(T a, T b) { return a + b; } };
struct Sub { template <typename T> __device__ static T f(T a, T b) { return a - b; } };
struct Mul { template <typename T> __device__ static T f(T a, T b) { return a * b; } };
struct Div { template <typename T> __device__ static T f(T a, T b) { return a / b; } };

template <typename Op, typename T>
__device__ __forceinline__ void unary_map(const T* __restrict__ x, T* __restrict__ out, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = Op::f(x[i]);
    }
}

template <typename Op, typename T>
__device__ __forceinline__ void binary_zip(const T* __restrict__ a, const T* __restrict__ b,
                                           T* __restrict__ out, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = Op::f(a[i], b[i]);
    }
}

#define MG_UNARY(name, Op)                                                                          \
    extern "C" __global__ void name##_f32(const float* x, float* out, u64 n) {                     \
        unary_map<Op, float>(x, out, n);                                                            \
    }                                                                                               \
    extern "C" __global__ void name##_f64(const double* x, double* out, u64 n) {                   \
        unary_map<Op, double>(x, out, n);                                                           \
    }

#define MG_BINARY(name, Op)                                                                         \
    extern "C" __global__ void name##_f32(const float* a, const float* b, float* out, u64 n) {     \
        binary_zip<Op, float>(a, b, out, n);                                                        \
    }                                                                                               \
    extern "C" __global__ void name##_f64(const double* a, const double* b, double* out, u64 n) {  \
        binary_zip<Op, double>(a, b, out, n);                                                       \
    }

MG_UNARY(neg, Neg)
MG_UNARY(exp, Exp)
MG_UNARY(log, Log)
MG_UNARY(tanh, Tanh)
MG_UNARY(sigmoid, Sigmoid)
MG_UNARY(relu, Relu)
MG_UNARY(sqrt, Sqrt)
MG_UNARY(rsqrt, Rsqrt)
MG_UNARY(abs, Abs)
MG_UNARY(square, Square)
MG_UNARY(erf, Erf)
MG_UNARY(step, Step)

MG_BINARY(add, Add)
MG_BINARY(sub, Sub)
MG_BINARY(mul, Mul)
MG_BINARY(div, Div)
