// Batched matrix product C[b] = op(A[b]) · op(B[b]), where op transposes on request (ta, tb): A is
// m×k (k×m when ta) and B is k×n (n×k when tb), all row-major and contiguous, batches packed.
//
// Our own kernel rather than cuBLAS: every output element is one fused multiply-add per k in ascending
// k (acc = fma(a, b, acc)), the same rounding sequence as the CPU kernel, so results are bitwise
// deterministic by construction and independent of the library version, with no workspace or
// split-K heuristics to pin down.
//
// Tiling: a 64×64 block of C per thread block of 256 threads, 4×4 outputs per thread (rows ty + 16r,
// columns tx + 16c), k in slices of 16 staged through shared memory.

#define MM_T 64
#define MM_K 16

template <typename T>
__device__ void matmul(T* __restrict__ c, const T* __restrict__ a, const T* __restrict__ b, u64 m, u64 k, u64 n, int ta, int tb) {
    __shared__ T as[MM_K][MM_T];
    __shared__ T bs[MM_K][MM_T];
    if (blockDim.x != 256) __trap();
    const unsigned t = threadIdx.x, tx = t % 16, ty = t / 16;
    const u64 batch = blockIdx.z;
    const u64 row0 = (u64)blockIdx.y * MM_T, col0 = (u64)blockIdx.x * MM_T;
    a += batch * m * k;
    b += batch * k * n;
    c += batch * m * n;
    T acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = T(0);
    for (u64 k0 = 0; k0 < k; k0 += MM_K) {
        for (unsigned e = t; e < MM_T * MM_K; e += 256) {
            // A tile: as[kq][r] = op(A)[row0 + r, k0 + kq]; B tile: bs[kq][q] = op(B)[k0 + kq, col0 + q].
            const unsigned r = ta ? e % MM_T : e / MM_K, kq = ta ? e / MM_T : e % MM_K;
            const u64 gr = row0 + r, gk = k0 + kq;
            as[kq][r] = (gr < m && gk < k) ? (ta ? a[gk * m + gr] : a[gr * k + gk]) : T(0);
            const unsigned q = tb ? e / MM_K : e % MM_T, kb = tb ? e % MM_K : e / MM_T;
            const u64 gc = col0 + q, gkb = k0 + kb;
            bs[kb][q] = (gc < n && gkb < k) ? (tb ? b[gc * k + gkb] : b[gkb * n + gc]) : T(0);
        }
        __syncthreads();
        const unsigned kn = (unsigned)((k - k0) < MM_K ? (k - k0) : MM_K);
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
            const u64 gr = row0 + ty + 16 * r, gc = col0 + tx + 16 * q;
            if (gr < m && gc < n) c[gr * n + gc] = acc[r][q];
        }
}
#define MATMUL_PARAMS(T) (T* c, const T* a, const T* b, u64 m, u64 k, u64 n, int ta, int tb)
MG_F32_F64(matmul, MATMUL_PARAMS, (c, a, b, m, k, n, ta, tb))
