// Host emulation of the CUDA C subset the kernels in kernels/ use, so that those same sources compile
// with g++ and run on the CPU (see src/backend/cuda/emulator.rs). One block runs at a time; its threads
// are fibers on one OS thread, switched at __syncthreads, so shared memory is plain static
// storage and every run is deterministic. Slow, and exact about nothing but the kernels' logic.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstddef>
#include <utility>
#include <type_traits>

struct uint3 { unsigned x, y, z; };
extern uint3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();
[[noreturn]] void __trap();

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)

using std::min;
using std::max;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }

typedef void (*EmuThunk)(void** args);
int emu_register(const char* name, EmuThunk thunk);

template <typename F> struct EmuCall;
template <typename... A> struct EmuCall<void (*)(A...)> {
    template <void (*f)(A...), std::size_t... I> static void invoke(void** a, std::index_sequence<I...>) {
        f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
    }
    template <void (*f)(A...)> static void thunk(void** a) { invoke<f>(a, std::index_sequence_for<A...>{}); }
};
#define EMU_REGISTER(name) static int emu_reg_##name = emu_register(#name, &EmuCall<decltype(&name)>::thunk<&name>);
