/*
 * stats.c -- distances, sticky scores, verification counts, mean similarity, pairwise cosine
 * and percentiles (std-algorithm sections 2-4).
 *
 * Inputs are read through byte strides, so strided and transposed views work; each kernel
 * has a contiguous fast path.  Half-precision inputs are widened element by element; every
 * sum accumulates in double.
 */
#include "st_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== element access ======================================================================= */

size_t st_dtype_size(st_dtype t)
{
    switch (t) {
    case ST_F64: return 8;
    case ST_F32: return 4;
    case ST_F16: return 2;
    case ST_BF16: return 2;
    }
    return 0;
}

/* binary16 -> binary32, exact for every input (subnormals, inf, NaN payloads included). */
float st_f16_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            f = (float)man * 5.9604644775390625e-08f;   /* man * 2^-24 */
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 -> binary32: the 16 bits are the upper half of the float. */
float st_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#define LD_F64(p) (*(const double *)(const void *)(p))
#define LD_F32(p) ((double)*(const float *)(const void *)(p))
#define LD_F16(p) ((double)st_f16_to_float(*(const uint16_t *)(const void *)(p)))
#define LD_BF16(p) ((double)st_bf16_to_float(*(const uint16_t *)(const void *)(p)))

/* Element (i, j) of a matrix, widened to double (slow path, any dtype). */
static double mat_get(const st_mat *m, int64_t i, int64_t j)
{
    const char *p = (const char *)m->data + i * m->s0 + j * m->s1;
    switch (m->dtype) {
    case ST_F64: return LD_F64(p);
    case ST_F32: return LD_F32(p);
    case ST_F16: return LD_F16(p);
    case ST_BF16: return LD_BF16(p);
    }
    return NAN;
}

static int64_t ivec_at(st_ivec v, int64_t i)
{
    return *(const int64_t *)(const void *)((const char *)v.data + i * v.stride);
}

/* Row i of a matrix widened into dst[cols]. */
static void mat_row(const st_mat *m, int64_t i, double *dst)
{
    const char *p = (const char *)m->data + i * m->s0;
    int64_t j, d = m->cols, s = m->s1;
    switch (m->dtype) {
    case ST_F64:
        if (s == 8) { memcpy(dst, p, (size_t)d * sizeof(double)); break; }
        for (j = 0; j < d; j++) dst[j] = LD_F64(p + j * s);
        break;
    case ST_F32:
        if (s == 4) { const float *f = (const float *)(const void *)p; for (j = 0; j < d; j++) dst[j] = f[j]; break; }
        for (j = 0; j < d; j++) dst[j] = LD_F32(p + j * s);
        break;
    case ST_F16:
        for (j = 0; j < d; j++) dst[j] = LD_F16(p + j * s);
        break;
    case ST_BF16:
        for (j = 0; j < d; j++) dst[j] = LD_BF16(p + j * s);
        break;
    }
}

int st_stats_check_index(st_ivec idx, int64_t limit, int64_t *bad)
{
    int64_t i;
    for (i = 0; i < idx.n; i++) {
        int64_t v = ivec_at(idx, i);
        if (v < 0 || v >= limit) {
            if (bad) *bad = i;
            return ST_ERR_INDEX;
        }
    }
    return ST_OK;
}

/* ==== row distances ======================================================================== */

/* One typed row-distance kernel per (x dtype, refs dtype) pair; LDX / LDR load one element.  The inner loop keeps four
 * independent lanes per sum so that it pipelines (and vectorises) without reassociation
 * flags; the contiguous case is a separate loop with constant strides. */
#define ROWDIST_LOOP(XS, RS)                                                                  \
    for (j = 0; j + 4 <= d; j += 4) {                                                         \
        int l;                                                                                \
        for (l = 0; l < 4; l++) {                                                             \
            double a = LDX(xp + (j + l) * (XS)), b = LDR(rp + (j + l) * (RS)), t = a - b;      \
            dot[l] += a * b; xx[l] += a * a; rr[l] += b * b; sq[l] += t * t; ab[l] += fabs(t); \
        }                                                                                     \
    }                                                                                         \
    for (; j < d; j++) {                                                                      \
        double a = LDX(xp + j * (XS)), b = LDR(rp + j * (RS)), t = a - b;                      \
        dot[0] += a * b; xx[0] += a * a; rr[0] += b * b; sq[0] += t * t; ab[0] += fabs(t);     \
    }

#define DEFINE_ROWDIST(NAME, TX, TR)                                                  \
    static void NAME(const st_mat *x, const st_mat *r, st_ivec idx, double *out)              \
    {                                                                                         \
        int64_t i, j, n = x->rows, d = x->cols, xs = x->s1, rs = r->s1;                       \
        for (i = 0; i < n; i++) {                                                             \
            const char *xp = (const char *)x->data + i * x->s0;                               \
            const char *rp = (const char *)r->data + ivec_at(idx, i) * r->s0;                 \
            double dot[4] = {0, 0, 0, 0}, xx[4] = {0, 0, 0, 0}, rr[4] = {0, 0, 0, 0};         \
            double sq[4] = {0, 0, 0, 0}, ab[4] = {0, 0, 0, 0};                                \
            double sdot, sxx, srr;                                                            \
            if (xs == (int64_t)sizeof(TX) && rs == (int64_t)sizeof(TR)) {                     \
                ROWDIST_LOOP((int64_t)sizeof(TX), (int64_t)sizeof(TR))                        \
            } else {                                                                          \
                ROWDIST_LOOP(xs, rs)                                                          \
            }                                                                                 \
            sdot = (dot[0] + dot[1]) + (dot[2] + dot[3]);                                     \
            sxx = (xx[0] + xx[1]) + (xx[2] + xx[3]);                                          \
            srr = (rr[0] + rr[1]) + (rr[2] + rr[3]);                                          \
            out[3 * i] = (sxx == 0.0 || srr == 0.0) ? 1.0 : 1.0 - sdot / (sqrt(sxx) * sqrt(srr)); \
            out[3 * i + 1] = sqrt((sq[0] + sq[1]) + (sq[2] + sq[3]));                         \
            out[3 * i + 2] = (ab[0] + ab[1]) + (ab[2] + ab[3]);                               \
        }                                                                                     \
    }

#define LDX LD_F64
#define LDR LD_F64
DEFINE_ROWDIST(rowdist_f64_f64, double, double)
#undef LDR
#define LDR LD_F32
DEFINE_ROWDIST(rowdist_f64_f32, double, float)
#undef LDR
#define LDR LD_F16
DEFINE_ROWDIST(rowdist_f64_f16, double, uint16_t)
#undef LDR
#define LDR LD_BF16
DEFINE_ROWDIST(rowdist_f64_bf16, double, uint16_t)
#undef LDR
#undef LDX

#define LDX LD_F32
#define LDR LD_F64
DEFINE_ROWDIST(rowdist_f32_f64, float, double)
#undef LDR
#define LDR LD_F32
DEFINE_ROWDIST(rowdist_f32_f32, float, float)
#undef LDR
#define LDR LD_F16
DEFINE_ROWDIST(rowdist_f32_f16, float, uint16_t)
#undef LDR
#define LDR LD_BF16
DEFINE_ROWDIST(rowdist_f32_bf16, float, uint16_t)
#undef LDR
#undef LDX

#define LDX LD_F16
#define LDR LD_F64
DEFINE_ROWDIST(rowdist_f16_f64, uint16_t, double)
#undef LDR
#define LDR LD_F32
DEFINE_ROWDIST(rowdist_f16_f32, uint16_t, float)
#undef LDR
#define LDR LD_F16
DEFINE_ROWDIST(rowdist_f16_f16, uint16_t, uint16_t)
#undef LDR
#define LDR LD_BF16
DEFINE_ROWDIST(rowdist_f16_bf16, uint16_t, uint16_t)
#undef LDR
#undef LDX

#define LDX LD_BF16
#define LDR LD_F64
DEFINE_ROWDIST(rowdist_bf16_f64, uint16_t, double)
#undef LDR
#define LDR LD_F32
DEFINE_ROWDIST(rowdist_bf16_f32, uint16_t, float)
#undef LDR
#define LDR LD_F16
DEFINE_ROWDIST(rowdist_bf16_f16, uint16_t, uint16_t)
#undef LDR
#define LDR LD_BF16
DEFINE_ROWDIST(rowdist_bf16_bf16, uint16_t, uint16_t)
#undef LDR
#undef LDX

typedef void (*rowdist_fn)(const st_mat *, const st_mat *, st_ivec, double *);

int st_stats_row_distances(const st_mat *x, const st_mat *refs, st_ivec ref_index, double *out)
{
    static const rowdist_fn table[4][4] = {
        {rowdist_f64_f64, rowdist_f64_f32, rowdist_f64_f16, rowdist_f64_bf16},
        {rowdist_f32_f64, rowdist_f32_f32, rowdist_f32_f16, rowdist_f32_bf16},
        {rowdist_f16_f64, rowdist_f16_f32, rowdist_f16_f16, rowdist_f16_bf16},
        {rowdist_bf16_f64, rowdist_bf16_f32, rowdist_bf16_f16, rowdist_bf16_bf16},
    };
    if ((unsigned)x->dtype > ST_BF16 || (unsigned)refs->dtype > ST_BF16) return ST_ERR_DTYPE;
    if (x->cols != refs->cols || ref_index.n != x->rows) return ST_ERR_VALUE;
    table[x->dtype][refs->dtype](x, refs, ref_index, out);
    return ST_OK;
}

/* ==== sticky score and verification ======================================================== */

int st_stats_sticky_score(const st_mat *seqs, const st_mat *td, double a, double b, double c0,
                          double *out)
{
    int64_t i, j, n = seqs->rows, L = seqs->cols;
    if (td->rows != n) return ST_ERR_VALUE;
    for (i = 0; i < n; i++) {
        double fall = 0.0, rise = 0.0, nfall = 0.0, nrise = 0.0;
        double prev = L > 0 ? mat_get(seqs, i, 0) : 0.0;
        for (j = 1; j < L; j++) {
            double cur = mat_get(seqs, i, j), step = cur - prev;
            if (step < 0.0) { fall -= step; nfall += 1.0; }
            else if (step > 0.0) { rise += step; nrise += 1.0; }
            prev = cur;
        }
        out[i] = (fall + a * nfall + 0.1 * mat_get(td, i, 0)) / (rise + b * nrise + c0);
    }
    return ST_OK;
}

int st_stats_verify_counts(const st_mat *seqs, uint8_t *out)
{
    int64_t i, j, n = seqs->rows, L = seqs->cols;
    if (L < 2) return ST_ERR_VALUE;
    for (i = 0; i < n; i++) {
        double s = 0.0;
        for (j = 1; j < L; j++) s += mat_get(seqs, i, j);
        out[i] = (uint8_t)(s / (double)(L - 1) - mat_get(seqs, i, 0) < 0.0);
    }
    return ST_OK;
}

/* ==== similarity =========================================================================== */

/* Unit-normalises row i of emb into u[cols] (a zero row stays zero). */
static void unit_row(const st_mat *emb, int64_t i, double *u)
{
    int64_t j, d = emb->cols;
    double ss = 0.0, inv;
    mat_row(emb, i, u);
    for (j = 0; j < d; j++) ss += u[j] * u[j];
    if (ss == 0.0) return;
    inv = 1.0 / sqrt(ss);
    for (j = 0; j < d; j++) u[j] *= inv;
}

int st_stats_mean_similarity(const st_mat *emb, double *work, double *result)
{
    int64_t i, j, V = emb->rows, d = emb->cols;
    double *sum, *u, acc = 0.0;
    if (V == 0) return ST_ERR_EMPTY;
    /* work holds 2*d doubles: the running sum and the current unit row */
    sum = work;
    u = work + d;
    for (j = 0; j < d; j++) sum[j] = 0.0;
    for (i = 0; i < V; i++) {
        unit_row(emb, i, u);
        for (j = 0; j < d; j++) sum[j] += u[j];
    }
    for (j = 0; j < d; j++) acc += sum[j] * sum[j];
    *result = acc / ((double)V * (double)V);
    return ST_OK;
}

static double dot4(const double *a, const double *b, int64_t d)
{
    double s[4] = {0, 0, 0, 0};
    int64_t j;
    for (j = 0; j + 4 <= d; j += 4) {
        s[0] += a[j] * b[j];
        s[1] += a[j + 1] * b[j + 1];
        s[2] += a[j + 2] * b[j + 2];
        s[3] += a[j + 3] * b[j + 3];
    }
    for (; j < d; j++) s[0] += a[j] * b[j];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

int st_stats_pairwise_cosine(const st_mat *emb, double *work, double *out)
{
    enum { BLOCK = 32 };
    int64_t i, j, n = emb->rows, d = emb->cols, ib, jb;
    for (i = 0; i < n; i++) unit_row(emb, i, work + i * d);
    /* upper triangle in cache-sized blocks, mirrored */
    for (ib = 0; ib < n; ib += BLOCK) {
        int64_t iend = ib + BLOCK < n ? ib + BLOCK : n;
        for (jb = ib; jb < n; jb += BLOCK) {
            int64_t jend = jb + BLOCK < n ? jb + BLOCK : n;
            for (i = ib; i < iend; i++) {
                for (j = (jb > i ? jb : i); j < jend; j++) {
                    double c = dot4(work + i * d, work + j * d, d);
                    out[i * n + j] = c;
                    out[j * n + i] = c;
                }
            }
        }
    }
    return ST_OK;
}

/* ==== percentiles ========================================================================== */

static void swapd(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* Rearranges v[0..n) so that v[k] is the k-th smallest, smaller-or-equal values before it and
 * greater-or-equal after (quickselect, median-of-three; falls back to a sort when it stalls). */
static void select_kth(double *v, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1, budget = 64;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2, i, j;
        double pivot;
        if (--budget == 0) {
            qsort(v + lo, (size_t)(hi - lo + 1), sizeof(double), cmp_double);
            return;
        }
        if (v[mid] < v[lo]) swapd(&v[mid], &v[lo]);
        if (v[hi] < v[lo]) swapd(&v[hi], &v[lo]);
        if (v[hi] < v[mid]) swapd(&v[hi], &v[mid]);
        pivot = v[mid];
        i = lo;
        j = hi;
        while (i <= j) {   /* Hoare partition */
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) {
                swapd(&v[i], &v[j]);
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return;
    }
}

int st_stats_percentiles(const st_mat *x, const double *q, int64_t nq, double *work, double *out)
{
    int64_t i, m = 0, finite = 0, t;
    for (t = 0; t < nq; t++)
        if (!(q[t] >= 0.0 && q[t] <= 100.0)) return ST_ERR_VALUE;
    for (i = 0; i < x->rows; i++) {
        double v = mat_get(x, i, 0);
        if (isnan(v)) continue;
        if (isfinite(v)) finite++;
        work[m++] = v;
    }
    if (finite == 0) return ST_ERR_EMPTY;
    for (t = 0; t < nq; t++) {
        /* NumPy's 'linear' method, step for step: virtual index (n-1)*q, neighbours below and
         * above (the last value twice past the end), gamma = index - lower, then _lerp. */
        double vi = (double)(m - 1) * (q[t] / 100.0), lower, a, b, gamma, diff, r;
        int64_t k;
        if (vi >= (double)(m - 1)) {
            k = m - 1;
            lower = -1.0;
        } else {
            lower = floor(vi);
            k = (int64_t)lower;
        }
        select_kth(work, m, k);
        a = work[k];
        if (k + 1 < m && lower >= 0.0) {
            b = work[k + 1];
            for (i = k + 2; i < m; i++)
                if (work[i] < b) b = work[i];
        } else {
            b = a;
        }
        gamma = vi - lower;
        diff = b - a;
        r = a + diff * gamma;
        if (gamma >= 0.5) r = b - diff * (1.0 - gamma);
        out[t] = r;
    }
    return ST_OK;
}
