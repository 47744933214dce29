// Index-driven linear maps and their adjoints: index_select / index_add, gather / scatter_add, im2col /
// col2im and 2-D average pooling / its adjoint.
//
// Every adjoint (a scatter-add on the CPU) is computed here by its outputs: one thread per output
// element sums its contributions in the same order as the CPU kernel, so there are no atomics, the
// result is deterministic, and it matches the CPU bitwise.

// out[o, j, i] = x[o, idx[j], i]; out is (outer, m, inner), x is (outer, n, inner).
template <typename T>
__device__ void index_select(T* __restrict__ out, const T* __restrict__ x, const u64* __restrict__ idx, u64 outer, u64 n, u64 m, u64 inner) {
    MG_FOR_EACH(e, outer * m * inner) {
        const u64 i = e % inner, j = e / inner % m, o = e / (inner * m);
        out[e] = x[(o * n + idx[j]) * inner + i];
    }
}
#define INDEX_SELECT_PARAMS(T) (T* out, const T* x, const u64* idx, u64 outer, u64 n, u64 m, u64 inner)
MG_F32_F64(index_select, INDEX_SELECT_PARAMS, (out, x, idx, outer, n, m, inner))

// out[o, r, i] = Σ g[o, j, i] over the j with idx[j] = r, ascending: the positions j of row r are
// list[start[r] .. start[r + 1]] (built on the host, ascending).
template <typename T>
__device__ void index_add(T* __restrict__ out, const T* __restrict__ g, const u64* __restrict__ start, const u64* __restrict__ list, u64 outer, u64 n, u64 m, u64 inner) {
    MG_FOR_EACH(e, outer * n * inner) {
        const u64 i = e % inner, r = e / inner % n, o = e / (inner * n);
        T acc = T(0);
        for (u64 p = start[r]; p < start[r + 1]; p++) acc += g[(o * m + list[p]) * inner + i];
        out[e] = acc;
    }
}
#define INDEX_ADD_PARAMS(T) (T* out, const T* g, const u64* start, const u64* list, u64 outer, u64 n, u64 m, u64 inner)
MG_F32_F64(index_add, INDEX_ADD_PARAMS, (out, g, start, list, outer, n, m, inner))

// out[o, j, i] = x[o, idx[o, j, i], i]; idx and out are (outer, m, inner), x is (outer, n, inner).
template <typename T>
__device__ void gather(T* __restrict__ out, const T* __restrict__ x, const u64* __restrict__ idx, u64 outer, u64 n, u64 m, u64 inner) {
    MG_FOR_EACH(e, outer * m * inner) {
        const u64 i = e % inner, o = e / (inner * m);
        out[e] = x[(o * n + idx[e]) * inner + i];
    }
}
#define GATHER_PARAMS(T) (T* out, const T* x, const u64* idx, u64 outer, u64 n, u64 m, u64 inner)
MG_F32_F64(gather, GATHER_PARAMS, (out, x, idx, outer, n, m, inner))

// out[o, r, i] = Σ g[o, j, i] over the j (ascending) with idx[o, j, i] = r.
template <typename T>
__device__ void scatter_add(T* __restrict__ out, const T* __restrict__ g, const u64* __restrict__ idx, u64 outer, u64 n, u64 m, u64 inner) {
    MG_FOR_EACH(e, outer * n * inner) {
        const u64 i = e % inner, r = e / inner % n, o = e / (inner * n);
        T acc = T(0);
        for (u64 j = 0; j < m; j++) {
            const u64 at = (o * m + j) * inner + i;
            if (idx[at] == r) acc += g[at];
        }
        out[e] = acc;
    }
}
#define SCATTER_ADD_PARAMS(T) (T* out, const T* g, const u64* idx, u64 outer, u64 n, u64 m, u64 inner)
MG_F32_F64(scatter_add, SCATTER_ADD_PARAMS, (out, g, idx, outer, n, m, inner))

// cols[(c, ki, kj), (n, oh, ow)] = x[n, c, row, col] of that tap, or 0 in the padding.
template <typename T> __device__ void im2col(T* __restrict__ cols, const T* __restrict__ x, Geom g) {
    const u64 ncols = (u64)(g.n * g.ho * g.wo);
    MG_FOR_EACH(e, (u64)(g.c * g.kh * g.kw) * ncols) {
        const i64 q = (i64)(e % ncols), row = (i64)(e / ncols);
        const i64 c = row / (g.kh * g.kw), ki = row / g.kw % g.kh, kj = row % g.kw;
        const i64 n = q / (g.ho * g.wo), oh = q / g.wo % g.ho, ow = q % g.wo;
        const i64 r = geom_row(g, ki, oh), cc = geom_col(g, kj, ow);
        cols[e] = (r >= 0 && cc >= 0) ? x[((n * g.c + c) * g.h + r) * g.w + cc] : T(0);
    }
}
#define IM2COL_PARAMS(T) (T* cols, const T* x, Geom g)
MG_F32_F64(im2col, IM2COL_PARAMS, (cols, x, g))

// The adjoint: x[n, c, r, cc] = Σ over taps (ki, kj ascending) of the column entry that read it.
template <typename T> __device__ void col2im(T* __restrict__ x, const T* __restrict__ cols, Geom g) {
    const u64 ncols = (u64)(g.n * g.ho * g.wo);
    MG_FOR_EACH(e, (u64)(g.n * g.c * g.h * g.w)) {
        const i64 cc = (i64)(e % g.w), r = (i64)(e / g.w % g.h), c = (i64)(e / (g.w * g.h) % g.c), n = (i64)(e / (g.w * g.h * g.c));
        T acc = T(0);
        for (i64 ki = 0; ki < g.kh; ki++) {
            const i64 oh = geom_out_row(g, ki, r);
            if (oh < 0) continue;
            for (i64 kj = 0; kj < g.kw; kj++) {
                const i64 ow = geom_out_col(g, kj, cc);
                if (ow < 0) continue;
                acc += cols[((c * g.kh + ki) * g.kw + kj) * ncols + (n * g.ho + oh) * g.wo + ow];
            }
        }
        x[e] = acc;
    }
}
#define COL2IM_PARAMS(T) (T* x, const T* cols, Geom g)
MG_F32_F64(col2im, COL2IM_PARAMS, (x, cols, g))

// out[n, c, oh, ow] = (Σ_{ki, kj} x over the window, padding as zeros) · inv.
template <typename T> __device__ void avg_pool(T* __restrict__ out, const T* __restrict__ x, Geom g, double inv) {
    MG_FOR_EACH(e, (u64)(g.n * g.c * g.ho * g.wo)) {
        const i64 ow = (i64)(e % g.wo), oh = (i64)(e / g.wo % g.ho), plane = (i64)(e / (g.wo * g.ho));
        const T* s = x + plane * g.h * g.w;
        T acc = T(0);
        for (i64 ki = 0; ki < g.kh; ki++) {
            const i64 r = geom_row(g, ki, oh);
            for (i64 kj = 0; kj < g.kw; kj++) {
                const i64 c = geom_col(g, kj, ow);
                if (r >= 0 && c >= 0) acc += s[r * g.w + c];
            }
        }
        out[e] = acc * (T)inv;
    }
}
#define AVG_POOL_PARAMS(T) (T* out, const T* x, Geom g, double inv)
MG_F32_F64(avg_pool, AVG_POOL_PARAMS, (out, x, g, inv))

// The adjoint: x̄[n, c, r, cc] = Σ (ḡ[oh, ow] · inv) over the windows containing (r, cc), in ascending
// (oh, ow) order like the CPU kernel, i.e. descending taps.
template <typename T> __device__ void avg_pool_adjoint(T* __restrict__ out, const T* __restrict__ gr, Geom g, double inv) {
    MG_FOR_EACH(e, (u64)(g.n * g.c * g.h * g.w)) {
        const i64 cc = (i64)(e % g.w), r = (i64)(e / g.w % g.h), plane = (i64)(e / (g.w * g.h));
        const T* s = gr + plane * g.ho * g.wo;
        T acc = T(0);
        for (i64 ki = g.kh - 1; ki >= 0; ki--) {
            const i64 oh = geom_out_row(g, ki, r);
            if (oh < 0) continue;
            for (i64 kj = g.kw - 1; kj >= 0; kj--) {
                const i64 ow = geom_out_col(g, kj, cc);
                if (ow >= 0) acc += s[oh * g.wo + ow] * (T)inv;
            }
        }
        out[e] = acc;
    }
}
#define AVG_POOL_ADJ_PARAMS(T) (T* out, const T* gr, Geom g, double inv)
MG_F32_F64(avg_pool_adjoint, AVG_POOL_ADJ_PARAMS, (out, gr, g, inv))
