// Tiled GEMM-shaped kernels: the batched matrix product and the three implicit-GEMM convolutions
// (forward, input gradient, weight gradient), all through one tile loop.
//
// C[i, j] = Σ_k A(i, k) · B(k, j), where a *problem* struct says how to read A and B (plain matrices,
// or convolution operands indexed on the fly, i.e. im2col without materializing it) and where to store
// C. Every output element is one fused multiply-add per k in ascending k (acc = fma(a, b, acc)), the
// same rounding sequence as the CPU matmul, so results are bitwise deterministic by construction. The
// weight gradient's long k range is split into fixed chunks (split-K) whose partial sums go to fixed
// slots and are then reduced in ascending order by `sum_axis` (reduce.cu): no atomics.
//
// Our own kernel rather than cuBLAS/cuDNN: the rounding sequence is ours and fixed, independent of the
// library version and of any workspace or algorithm heuristics.
//
// Tiling: a 64×64 block of C per thread block of 256 threads, 4×4 outputs per thread (rows ty + 16r,
// columns tx + 16c), k in slices of 16 staged through shared memory.

#define GM_T 64
#define GM_K 16

// C[i, j] for i in [row0, row0 + 64), j in [col0, col0 + 64), k in [k0, k1), through problem `p`.
template <typename T, typename P> __device__ void gemm_tile(const P& p, u64 m, u64 n, u64 k0, u64 k1) {
    __shared__ T as[GM_K][GM_T];
    __shared__ T bs[GM_K][GM_T];
    if (blockDim.x != 256) __trap();
    const unsigned t = threadIdx.x, tx = t % 16, ty = t / 16;
    const u64 row0 = (u64)blockIdx.y * GM_T, col0 = (u64)blockIdx.x * GM_T;
    T acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = T(0);
    for (u64 kb = k0; kb < k1; kb += GM_K) {
        for (unsigned e = t; e < GM_T * GM_K; e += 256) {
            // A tile: consecutive threads walk k (A is row-major in k for every problem but the
            // transposed matmul); B tile: consecutive threads walk j.
            const unsigned r = e / GM_K, ka = e % GM_K;
            const u64 gi = row0 + r, gk = kb + ka;
            as[ka][r] = (gi < m && gk < k1) ? p.a(gi, gk) : T(0);
            const unsigned q = e % GM_T, kq = e / GM_T;
            const u64 gj = col0 + q, gkb = kb + kq;
            bs[kq][q] = (gj < n && gkb < k1) ? p.b(gkb, gj) : T(0);
        }
        __syncthreads();
        const unsigned kn = (unsigned)((k1 - kb) < GM_K ? (k1 - kb) : GM_K);
        for (unsigned kq = 0; kq < kn; kq++) {
            T av[4], bv[4];
            for (int r = 0; r < 4; r++) av[r] = as[kq][ty + 16 * r];
            for (int q = 0; q < 4; q++) bv[q] = bs[kq][tx + 16 * q];
            for (int r = 0; r < 4; r++)
                for (int q = 0; q < 4; q++) acc[r][q] = mg_fma(av[r], bv[q], acc[r][q]);
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) {
            const u64 gi = row0 + ty + 16 * r, gj = col0 + tx + 16 * q;
            if (gi < m && gj < n) p.store(gi, gj, acc[r][q]);
        }
}

// ---- Batched matrix product: C[z] = op(A[z]) · op(B[z]), A m×k (k×m when ta), B k×n (n×k when tb).
template <typename T> struct MatProblem {
    const T* pa;
    const T* pb;
    T* pc;
    u64 m, k, n;
    int ta, tb;
    __device__ T a(u64 i, u64 kk) const { return ta ? pa[kk * m + i] : pa[i * k + kk]; }
    __device__ T b(u64 kk, u64 j) const { return tb ? pb[j * k + kk] : pb[kk * n + j]; }
    __device__ void store(u64 i, u64 j, T v) const { pc[i * n + j] = v; }
};

template <typename T> __device__ void matmul(T* c, const T* a, const T* b, u64 m, u64 k, u64 n, int ta, int tb) {
    const u64 z = blockIdx.z;
    MatProblem<T> p = {a + z * m * k, b + z * k * n, c + z * m * n, m, k, n, ta, tb};
    gemm_tile<T>(p, m, n, 0, k);
}
#define MATMUL_PARAMS(T) (T* c, const T* a, const T* b, u64 m, u64 k, u64 n, int ta, int tb)
MG_F32_F64(matmul, MATMUL_PARAMS, (c, a, b, m, k, n, ta, tb))

// ---- Convolution as implicit GEMM, summed over up to 4 operand pairs (the conv nodes of
// src/ops/conv.rs: one pair for conv2d and its gradients, two for the fused second-order output
// dȳ = conv(gx, w) + conv(x, gw), whose pairs concatenate along k: one pass).
#define MG_MAX_PAIRS 4
struct ConvPairs {
    Geom g;
    i64 o;          // output channels
    i64 pairs;      // 1..=MG_MAX_PAIRS
    u64 first[MG_MAX_PAIRS];  // per pair: x (forward, weight grad) or y (input grad)
    u64 second[MG_MAX_PAIRS]; // per pair: w (forward, input grad) or y (weight grad)
};

// x[n, c, row, col] read by tap (ki, kj) of output pixel (oh, ow), or 0 in the padding.
template <typename T>
__device__ __forceinline__ T conv_x(const Geom& g, const T* x, i64 n, i64 c, i64 ki, i64 kj, i64 oh, i64 ow) {
    const i64 row = geom_row(g, ki, oh), col = geom_col(g, kj, ow);
    return (row >= 0 && col >= 0) ? x[((n * g.c + c) * g.h + row) * g.w + col] : T(0);
}

// Entry p of a pair-pointer array, by selects rather than a dynamic index (which would copy the whole
// parameter struct to local memory: ptxas reported a 600-byte stack frame before this).
__device__ __forceinline__ u64 pick(const u64 (&a)[MG_MAX_PAIRS], i64 p) {
    return p == 0 ? a[0] : p == 1 ? a[1] : p == 2 ? a[2] : a[3];
}

// y[n, o, oh, ow] = Σ_p Σ_{c, ki, kj} w_p[o, c, ki, kj] · x_p[n, c, row, col]:
// rows o, columns (n, oh, ow), k = (p, c, ki, kj).
template <typename T> struct ConvForward {
    ConvPairs s;
    T* y;
    __device__ T a(u64 o, u64 k) const {
        const i64 ckk = s.g.c * s.g.kh * s.g.kw, p = (i64)k / ckk, r = (i64)k % ckk;
        return ((const T*)pick(s.second, p))[o * ckk + r];
    }
    __device__ T b(u64 k, u64 q) const {
        const Geom& g = s.g;
        const i64 ckk = g.c * g.kh * g.kw, p = (i64)k / ckk, r = (i64)k % ckk;
        const i64 c = r / (g.kh * g.kw), ki = r / g.kw % g.kh, kj = r % g.kw;
        const i64 n = (i64)q / (g.ho * g.wo), oh = (i64)q / g.wo % g.ho, ow = (i64)q % g.wo;
        return conv_x(g, (const T*)pick(s.first, p), n, c, ki, kj, oh, ow);
    }
    __device__ void store(u64 o, u64 q, T v) const {
        const Geom& g = s.g;
        const i64 n = (i64)q / (g.ho * g.wo), pix = (i64)q % (g.ho * g.wo);
        y[(n * s.o + (i64)o) * g.ho * g.wo + pix] = v;
    }
};

// x[n, c, h, w] = Σ_p Σ_{o, ki, kj} w_p[o, c, ki, kj] · y_p[n, o, oh, ow] over the taps that read (h, w):
// rows c, columns (n, h, w), k = (p, o, ki, kj).
template <typename T> struct ConvInputGrad {
    ConvPairs s;
    T* x;
    __device__ T a(u64 c, u64 k) const {
        const Geom& g = s.g;
        const i64 okk = s.o * g.kh * g.kw, p = (i64)k / okk, r = (i64)k % okk;
        const i64 o = r / (g.kh * g.kw), tap = r % (g.kh * g.kw);
        return ((const T*)pick(s.second, p))[(o * g.c + (i64)c) * g.kh * g.kw + tap];
    }
    __device__ T b(u64 k, u64 q) const {
        const Geom& g = s.g;
        const i64 okk = s.o * g.kh * g.kw, p = (i64)k / okk, r = (i64)k % okk;
        const i64 o = r / (g.kh * g.kw), ki = r / g.kw % g.kh, kj = r % g.kw;
        const i64 n = (i64)q / (g.h * g.w), h = (i64)q / g.w % g.h, w = (i64)q % g.w;
        const i64 oh = geom_out_row(g, ki, h), ow = geom_out_col(g, kj, w);
        return (oh >= 0 && ow >= 0) ? ((const T*)pick(s.first, p))[((n * s.o + o) * g.ho + oh) * g.wo + ow] : T(0);
    }
    __device__ void store(u64 c, u64 q, T v) const {
        const Geom& g = s.g;
        const i64 n = (i64)q / (g.h * g.w), pix = (i64)q % (g.h * g.w);
        x[(n * g.c + (i64)c) * g.h * g.w + pix] = v;
    }
};

// Partial weight gradients over k chunk z: part[z, o, (c, ki, kj)] = Σ_p Σ_{(n, oh, ow) in chunk}
// y_p[n, o, oh, ow] · x_p[n, c, row, col]: rows o, columns (c, ki, kj), k = (p, n, oh, ow).
template <typename T> struct ConvWeightGrad {
    ConvPairs s;
    T* part;
    __device__ T a(u64 o, u64 k) const {
        const Geom& g = s.g;
        const i64 nhw = g.n * g.ho * g.wo, p = (i64)k / nhw, r = (i64)k % nhw;
        const i64 n = r / (g.ho * g.wo), pix = r % (g.ho * g.wo);
        return ((const T*)pick(s.second, p))[(n * s.o + (i64)o) * g.ho * g.wo + pix];
    }
    __device__ T b(u64 k, u64 j) const {
        const Geom& g = s.g;
        const i64 nhw = g.n * g.ho * g.wo, p = (i64)k / nhw, r = (i64)k % nhw;
        const i64 n = r / (g.ho * g.wo), oh = r / g.wo % g.ho, ow = r % g.wo;
        const i64 c = (i64)j / (g.kh * g.kw), ki = (i64)j / g.kw % g.kh, kj = (i64)j % g.kw;
        return conv_x(g, (const T*)pick(s.first, p), n, c, ki, kj, oh, ow);
    }
    __device__ void store(u64 o, u64 j, T v) const {
        const i64 ckk = s.g.c * s.g.kh * s.g.kw;
        part[((i64)blockIdx.z * s.o + (i64)o) * ckk + (i64)j] = v;
    }
};

// mode 0: forward, 1: input gradient, 2: weight-gradient partials over k chunks of `chunk` (blockIdx.z
// is the chunk). `out` is y, x or the partials.
template <typename T> __device__ void conv_gemm(T* out, ConvPairs s, int mode, u64 chunk) {
    const Geom& g = s.g;
    const u64 P = (u64)s.pairs;
    if (mode == 0) {
        ConvForward<T> p = {s, out};
        gemm_tile<T>(p, (u64)s.o, (u64)(g.n * g.ho * g.wo), 0, P * (u64)(g.c * g.kh * g.kw));
    } else if (mode == 1) {
        ConvInputGrad<T> p = {s, out};
        gemm_tile<T>(p, (u64)g.c, (u64)(g.n * g.h * g.w), 0, P * (u64)(s.o * g.kh * g.kw));
    } else {
        ConvWeightGrad<T> p = {s, out};
        const u64 k = P * (u64)(g.n * g.ho * g.wo), k0 = (u64)blockIdx.z * chunk;
        gemm_tile<T>(p, (u64)s.o, (u64)(g.c * g.kh * g.kw), k0, k0 + chunk < k ? k0 + chunk : k);
    }
}
#define CONV_PARAMS(T) (T* out, ConvPairs s, int mode, u64 chunk)
MG_F32_F64(conv_gemm, CONV_PARAMS, (out, s, mode, chunk))
