// Fused attention: forward, backward and backward-over-backward, O(N) memory, no atomics.
//
// For one head: S = c·Q·Kᵀ (causal: query i sees keys j ≤ i), P = softmax(S), O = P·V. The math of
// the backward and of its VJP (backward-over-backward) is in ../shared/DESIGN.md; the formulas are
// repeated at each kernel. Nothing N×N reaches device memory: P and the other per-pair quantities are
// recomputed tile by tile from Q, K, V, the cotangents and per-row statistics (logsumexp ℓ, D, D̄, ρ).
//
// Two kinds of pass, so that every output has exactly one writer:
//  - row passes: a block owns AT_R = 16 query rows of one head and sweeps the keys in tiles of
//    AT_C = 16 (outputs indexed by query: O, ℓ, dQ, Q̄, dŌ, and the statistics D̄, ρ);
//  - column passes: a block owns 16 keys and sweeps the queries (outputs indexed by key: dK, dV, K̄, V̄).
// Within a block, thread t handles the pair (t / 16, t % 16) of the current tile; per-row reductions
// run serially over the tile's 16 entries in ascending order; accumulators are split over threads by
// (row, column c) with c = t % 16 + 16m. The order of every sum depends only on the shapes.
//
// This first version reads Q, K, V and the cotangents from global memory (L1/L2-cached) and uses no
// tensor cores; widths d, dv ≤ 128 (wider problems use the composite path).

#define AT_R 16
#define AT_C 16
#define AT_W 8 // accumulator slots per thread: widths up to 16 · AT_W = 128

struct Attn {
    i64 heads, nq, nk, d, dv;
    i64 scale_bits; // the scale c, as the bits of a double
    i64 causal;
    i64 need_q, need_kv, need_do;
    u64 q, k, v, lse, d_o, a, b, e; // inputs (a, b, e: cotangents of dQ, dK, dV)
    u64 dd, dbar, rho;              // per-row statistics D, D̄, ρ (heads · nq each)
    u64 out_q, out_k, out_v, out_o; // outputs
};

// Up to 16 consecutive vectors of one width (rows of Q, dO, a or of K, V, b, e): the first, and how
// many exist (a tile can run past the end).
template <typename T> struct Vecs {
    const T* first;
    unsigned count;
};

template <typename T> struct AttnView {
    const Attn& p;
    i64 h;
    __device__ T c() const { return (T)__longlong_as_double(p.scale_bits); }
    __device__ const T* row(u64 base, i64 i, i64 w) const { return (const T*)base + (h * p.nq + i) * w; }
    __device__ const T* col(u64 base, i64 j, i64 w) const { return (const T*)base + (h * p.nk + j) * w; }
    __device__ Vecs<T> rows(u64 base, i64 start, i64 w) const { return {row(base, start, w), (unsigned)min((i64)AT_C, p.nq - start)}; }
    __device__ Vecs<T> cols(u64 base, i64 start, i64 w) const { return {col(base, start, w), (unsigned)min((i64)AT_C, p.nk - start)}; }
    __device__ bool visible(i64 i, i64 j) const { return i < p.nq && j < p.nk && (!p.causal || j <= i); }
    __device__ T stat(u64 base, i64 i) const { return ((const T*)base)[h * p.nq + i]; }
};

// Writes key j's outputs of a column pass: c·ak to out_k (width d) and av to out_v (width dv).
template <typename T> __device__ void store_kv(const AttnView<T>& a, i64 j, unsigned lane, const T* ak, const T* av) {
    const Attn& p = a.p;
    if (j >= p.nk || !p.need_kv) return;
    T* k = (T*)p.out_k + (a.h * p.nk + j) * p.d;
    T* v = (T*)p.out_v + (a.h * p.nk + j) * p.dv;
    for (int m = 0; m < AT_W; m++) {
        if (lane + 16 * m < p.d) k[lane + 16 * m] = a.c() * ak[m];
        if (lane + 16 * m < p.dv) v[lane + 16 * m] = av[m];
    }
}

template <typename T> __device__ __forceinline__ T dot(const T* x, const T* y, i64 n) {
    T s = T(0);
    for (i64 k = 0; k < n; k++) s = mg_fma(x[k], y[k], s);
    return s;
}

// acc[m] += Σ_{jj < v.count} w[row][jj] · v_jj[c] for column c = lane + 16m of the vectors v (of
// width `width`, consecutive in memory), in jj order.
template <typename T>
__device__ __forceinline__ void accumulate(T* acc, const T (*w)[AT_C + 1], unsigned row, unsigned lane, i64 width, Vecs<T> v) {
    for (int m = 0; m < AT_W; m++) {
        const i64 c = lane + 16 * m;
        if (c >= width) break;
        T s = acc[m];
        for (unsigned jj = 0; jj < v.count; jj++) s = mg_fma(w[row][jj], v.first[jj * width + c], s);
        acc[m] = s;
    }
}

// ---- Forward (row pass): online softmax over key tiles; O = P·V, ℓ = m + log l.
template <typename T> __device__ void attn_forward(Attn p) {
    __shared__ T sp[AT_R][AT_C + 1];
    __shared__ T sm[AT_R], sl[AT_R], salpha[AT_R];
    if (blockDim.x != AT_R * AT_C) __trap();
    const AttnView<T> a = {p, (i64)blockIdx.y};
    const unsigned t = threadIdx.x, r = t / AT_C, jj = t % AT_C;
    const i64 i = (i64)blockIdx.x * AT_R + r;
    const T c = a.c();
    T acc[AT_W];
    for (int m = 0; m < AT_W; m++) acc[m] = T(0);
    if (t < AT_R) {
        sm[t] = -mg_inf<T>();
        sl[t] = T(0);
    }
    __syncthreads();
    for (i64 j0 = 0; j0 < p.nk; j0 += AT_C) {
        const i64 j = j0 + jj;
        sp[r][jj] = a.visible(i, j) ? c * dot(a.row(p.q, i, p.d), a.col(p.k, j, p.d), p.d) : -mg_inf<T>();
        __syncthreads();
        if (t < AT_R) {
            T mx = sm[t];
            for (unsigned q = 0; q < AT_C; q++) mx = sp[t][q] > mx ? sp[t][q] : mx;
            const T alpha = mx == -mg_inf<T>() ? T(1) : mg_exp(sm[t] - mx);
            T l = sl[t] * alpha;
            for (unsigned q = 0; q < AT_C; q++) {
                const T e = sp[t][q] == -mg_inf<T>() ? T(0) : mg_exp(sp[t][q] - mx);
                sp[t][q] = e;
                l += e;
            }
            sm[t] = mx;
            sl[t] = l;
            salpha[t] = alpha;
        }
        __syncthreads();
        for (int m = 0; m < AT_W; m++) acc[m] *= salpha[r];
        accumulate<T>(acc, sp, r, jj, p.dv, a.cols(p.v, j0, p.dv));
        __syncthreads();
    }
    if (i < p.nq) {
        const T inv = T(1) / sl[r];
        T* o = (T*)p.out_o + (a.h * p.nq + i) * p.dv;
        for (int m = 0; m < AT_W; m++) {
            const i64 col = jj + 16 * m;
            if (col < p.dv) o[col] = acc[m] * inv;
        }
        if (jj == 0) ((T*)p.lse)[a.h * p.nq + i] = sm[r] + mg_log(sl[r]);
    }
}

// D_i = Σ_c x_i[c] · y_i[c] for each of `rows` rows of width `w` (one thread per row).
template <typename T> __device__ void attn_rowdot(T* out, const T* x, const T* y, u64 rows, u64 w) {
    MG_FOR_EACH(i, rows) out[i] = dot(x + i * w, y + i * w, (i64)w);
}
#define ROWDOT_PARAMS(T) (T* out, const T* x, const T* y, u64 rows, u64 w)
MG_F32_F64(attn_rowdot, ROWDOT_PARAMS, (out, x, y, rows, w))

// The per-pair quantities of the backward, recomputed: P = exp(c·q·k − ℓ), dP = dO·v, dS = P∘(dP − D).
template <typename T> struct Pair {
    T p, dp, ds;
};
template <typename T> __device__ __forceinline__ Pair<T> pair(const AttnView<T>& a, i64 i, i64 j) {
    Pair<T> r = {T(0), T(0), T(0)};
    if (!a.visible(i, j)) return r;
    const Attn& p = a.p;
    r.p = mg_exp(a.c() * dot(a.row(p.q, i, p.d), a.col(p.k, j, p.d), p.d) - a.stat(p.lse, i));
    r.dp = dot(a.row(p.d_o, i, p.dv), a.col(p.v, j, p.dv), p.dv);
    r.ds = r.p * (r.dp - a.stat(p.dd, i));
    return r;
}

// ---- Backward, row pass: dQ_i = c·Σ_j dS_ij k_j.
template <typename T> __device__ void attn_backward_rows(Attn p) {
    __shared__ T sds[AT_R][AT_C + 1];
    if (blockDim.x != AT_R * AT_C) __trap();
    const AttnView<T> a = {p, (i64)blockIdx.y};
    const unsigned t = threadIdx.x, r = t / AT_C, jj = t % AT_C;
    const i64 i = (i64)blockIdx.x * AT_R + r;
    T acc[AT_W];
    for (int m = 0; m < AT_W; m++) acc[m] = T(0);
    for (i64 j0 = 0; j0 < p.nk; j0 += AT_C) {
        sds[r][jj] = pair(a, i, j0 + jj).ds;
        __syncthreads();
        accumulate<T>(acc, sds, r, jj, p.d, a.cols(p.k, j0, p.d));
        __syncthreads();
    }
    if (i < p.nq && p.need_q) {
        T* dq = (T*)p.out_q + (a.h * p.nq + i) * p.d;
        for (int m = 0; m < AT_W; m++)
            if (jj + 16 * m < p.d) dq[jj + 16 * m] = a.c() * acc[m];
    }
}

// ---- Backward, column pass: dV_j = Σ_i P_ij dO_i; dK_j = c·Σ_i dS_ij q_i.
template <typename T> __device__ void attn_backward_cols(Attn p) {
    __shared__ T sp[AT_R][AT_C + 1];
    __shared__ T sds[AT_R][AT_C + 1];
    if (blockDim.x != AT_R * AT_C) __trap();
    const AttnView<T> a = {p, (i64)blockIdx.y};
    const unsigned t = threadIdx.x, r = t / AT_C, ii = t % AT_C;
    const i64 j = (i64)blockIdx.x * AT_R + r;
    T av[AT_W], ak[AT_W];
    for (int m = 0; m < AT_W; m++) av[m] = ak[m] = T(0);
    for (i64 i0 = 0; i0 < p.nq; i0 += AT_C) {
        const Pair<T> x = pair(a, i0 + ii, j);
        sp[r][ii] = x.p;
        sds[r][ii] = x.ds;
        __syncthreads();
        accumulate<T>(av, sp, r, ii, p.dv, a.rows(p.d_o, i0, p.dv));
        accumulate<T>(ak, sds, r, ii, p.d, a.rows(p.q, i0, p.d));
        __syncthreads();
    }
    store_kv(a, j, ii, ak, av);
}

// The per-pair quantities of backward-over-backward (given cotangents a, b, e of dQ, dK, dV):
// dS̄ = c(a_i·k_j + q_i·b_j); dP̄ = P(dS̄ + D̄_i); P̄ = dO_i·e_j + dS̄(dP − D_i) + D̄_i dP.
template <typename T> struct Pair2 {
    Pair<T> b;
    T dsb, dpb, pb;
};
template <typename T> __device__ __forceinline__ Pair2<T> pair2(const AttnView<T>& a, i64 i, i64 j, T dbar) {
    Pair2<T> r = {pair(a, i, j), T(0), T(0), T(0)};
    if (!a.visible(i, j)) return r;
    const Attn& p = a.p;
    r.dsb = a.c() * (dot(a.row(p.a, i, p.d), a.col(p.k, j, p.d), p.d) + dot(a.row(p.q, i, p.d), a.col(p.b, j, p.d), p.d));
    r.dpb = r.b.p * (r.dsb + dbar);
    r.pb = dot(a.row(p.d_o, i, p.dv), a.col(p.e, j, p.dv), p.dv) + r.dsb * (r.b.dp - a.stat(p.dd, i)) + dbar * r.b.dp;
    return r;
}

// −D̄_i's term for pair (i, j): dS̄_ij P_ij, without the other per-pair quantities (sweep 1 needs no more).
template <typename T> __device__ __forceinline__ T dbar_term(const AttnView<T>& a, i64 i, i64 j) {
    if (!a.visible(i, j)) return T(0);
    const Attn& p = a.p;
    const T pij = mg_exp(a.c() * dot(a.row(p.q, i, p.d), a.col(p.k, j, p.d), p.d) - a.stat(p.lse, i));
    const T dsb = a.c() * (dot(a.row(p.a, i, p.d), a.col(p.k, j, p.d), p.d) + dot(a.row(p.q, i, p.d), a.col(p.b, j, p.d), p.d));
    return dsb * pij;
}

// ---- Backward-over-backward, row pass. Sweep 1: D̄_i = −Σ_j dS̄_ij P_ij. Sweep 2: ρ_i = Σ_j P̄_ij P_ij,
// and with S̄ = P∘(P̄ − ρ): Q̄_i = c·Σ_j (dS_ij b_j + S̄_ij k_j) = c·(u_i − ρ_i w_i) where
// u_i = Σ_j (dS_ij b_j + P_ij P̄_ij k_j) and w_i = Σ_j P_ij k_j; dŌ_i = Σ_j (P_ij e_j + dP̄_ij v_j).
template <typename T> __device__ void attn_bb_rows(Attn p) {
    __shared__ T s1[AT_R][AT_C + 1], s2[AT_R][AT_C + 1], s3[AT_R][AT_C + 1], s4[AT_R][AT_C + 1];
    __shared__ T sdbar[AT_R], srho[AT_R];
    if (blockDim.x != AT_R * AT_C) __trap();
    const AttnView<T> a = {p, (i64)blockIdx.y};
    const unsigned t = threadIdx.x, r = t / AT_C, jj = t % AT_C;
    const i64 i = (i64)blockIdx.x * AT_R + r;
    if (t < AT_R) sdbar[t] = srho[t] = T(0);
    __syncthreads();
    for (i64 j0 = 0; j0 < p.nk; j0 += AT_C) {
        s1[r][jj] = -dbar_term(a, i, j0 + jj);
        __syncthreads();
        if (t < AT_R)
            for (unsigned q = 0; q < AT_C; q++) sdbar[t] += s1[t][q];
        __syncthreads();
    }
    const T dbar = sdbar[r];
    T u[AT_W], w[AT_W], od[AT_W];
    for (int m = 0; m < AT_W; m++) u[m] = w[m] = od[m] = T(0);
    for (i64 j0 = 0; j0 < p.nk; j0 += AT_C) {
        const Pair2<T> x = pair2(a, i, j0 + jj, dbar);
        s1[r][jj] = x.b.ds;
        s2[r][jj] = x.b.p * x.pb;
        s3[r][jj] = x.b.p;
        s4[r][jj] = x.dpb;
        __syncthreads();
        if (t < AT_R)
            for (unsigned q = 0; q < AT_C; q++) srho[t] += s2[t][q];
        accumulate<T>(u, s1, r, jj, p.d, a.cols(p.b, j0, p.d));
        accumulate<T>(u, s2, r, jj, p.d, a.cols(p.k, j0, p.d));
        accumulate<T>(w, s3, r, jj, p.d, a.cols(p.k, j0, p.d));
        accumulate<T>(od, s3, r, jj, p.dv, a.cols(p.e, j0, p.dv));
        accumulate<T>(od, s4, r, jj, p.dv, a.cols(p.v, j0, p.dv));
        __syncthreads();
    }
    if (i < p.nq) {
        const T rho = srho[r], c = a.c();
        if (jj == 0) {
            ((T*)p.dbar)[a.h * p.nq + i] = dbar;
            ((T*)p.rho)[a.h * p.nq + i] = rho;
        }
        T* qb = (T*)p.out_q + (a.h * p.nq + i) * p.d;
        T* ob = (T*)p.out_o + (a.h * p.nq + i) * p.dv;
        for (int m = 0; m < AT_W; m++) {
            const i64 col = jj + 16 * m;
            if (p.need_q && col < p.d) qb[col] = c * (u[m] - rho * w[m]);
            if (p.need_do && col < p.dv) ob[col] = od[m];
        }
    }
}

// ---- Backward-over-backward, column pass (after the row pass wrote D̄ and ρ):
// V̄_j = Σ_i dP̄_ij dO_i; K̄_j = c·Σ_i (dS_ij a_i + S̄_ij q_i) with S̄_ij = P_ij (P̄_ij − ρ_i).
template <typename T> __device__ void attn_bb_cols(Attn p) {
    __shared__ T s1[AT_R][AT_C + 1], s2[AT_R][AT_C + 1], s3[AT_R][AT_C + 1];
    if (blockDim.x != AT_R * AT_C) __trap();
    const AttnView<T> a = {p, (i64)blockIdx.y};
    const unsigned t = threadIdx.x, r = t / AT_C, ii = t % AT_C;
    const i64 j = (i64)blockIdx.x * AT_R + r;
    T av[AT_W], ak[AT_W];
    for (int m = 0; m < AT_W; m++) av[m] = ak[m] = T(0);
    for (i64 i0 = 0; i0 < p.nq; i0 += AT_C) {
        const i64 i = i0 + ii;
        const bool in = i < p.nq;
        const Pair2<T> x = pair2(a, i, j, in ? a.stat(p.dbar, i) : T(0));
        s1[r][ii] = x.dpb;
        s2[r][ii] = x.b.ds;
        s3[r][ii] = x.b.p * (x.pb - (in ? a.stat(p.rho, i) : T(0)));
        __syncthreads();
        accumulate<T>(av, s1, r, ii, p.dv, a.rows(p.d_o, i0, p.dv));
        accumulate<T>(ak, s2, r, ii, p.d, a.rows(p.a, i0, p.d));
        accumulate<T>(ak, s3, r, ii, p.d, a.rows(p.q, i0, p.d));
        __syncthreads();
    }
    store_kv(a, j, ii, ak, av);
}

#define ATTN_PARAMS(T) (Attn p)
MG_F32_F64(attn_forward, ATTN_PARAMS, (p))
MG_F32_F64(attn_backward_rows, ATTN_PARAMS, (p))
MG_F32_F64(attn_backward_cols, ATTN_PARAMS, (p))
MG_F32_F64(attn_bb_rows, ATTN_PARAMS, (p))
MG_F32_F64(attn_bb_cols, ATTN_PARAMS, (p))
