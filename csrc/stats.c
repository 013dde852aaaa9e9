/*
 * stats.c -- distances, sticky scores, verification counts, mean similarity, pairwise cosine
 * and percentiles (docs/algorithm.md §2-4).
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

/* Bytes of one element of type t (0 for an unknown type). */
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

/* The float whose binary32 bit pattern is bits. */
static float bits_to_float(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* binary16 -> binary32, exact for every input (subnormals, inf, NaN payloads included).
 * Branch-free so that conversion loops vectorise: the exponent is rebased by 112 for normal
 * numbers, by 224 for inf / NaN, and subnormals are rebuilt by a subtraction. */
static float f16_to_float(uint16_t h)
{
    uint32_t m = (uint32_t)(h & 0x7fffu) << 13, e = m & 0x0f800000u;
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, bits;
    float sub = bits_to_float(m + (113u << 23)) - bits_to_float(113u << 23);
    uint32_t sub_bits;
    memcpy(&sub_bits, &sub, sizeof sub_bits);
    bits = e == 0 ? sub_bits : e == 0x0f800000u ? m + (224u << 23) : m + (112u << 23);
    return bits_to_float(bits | sign);
}

/* binary16 bit pattern -> float (exact). */
float st_f16_to_float(uint16_t h)
{
    return f16_to_float(h);
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
#define LD_F16(p) ((double)f16_to_float(*(const uint16_t *)(const void *)(p)))
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

/* ST_OK when every idx[i] lies in [0, limit); else ST_ERR_INDEX, *bad = the first bad i. */
int st_stats_check_index(st_ivec idx, int64_t limit, int64_t *bad)
{
    int64_t i;
    for (i = 0; i < idx.n; i++) {
        int64_t v = st_ivec_at(idx, i);
        if (v < 0 || v >= limit) {
            if (bad) *bad = i;
            return ST_ERR_INDEX;
        }
    }
    return ST_OK;
}

/* ==== row distances ======================================================================== */

/* Row distances work through L1-sized chunks: a chunk of the x row and of its reference row
 * is widened to double (a tight typed loop per dtype), then one double loop accumulates the
 * five sums in four independent lanes each, so it pipelines and vectorises without any
 * reassociation flags.  The sums are combined lane-wise at the end of the row. */
enum { ROW_CHUNK = 256 };

/* Widens n elements of a row (byte stride s) into dst. */
static void load_chunk(const char *p, st_dtype t, int64_t s, int64_t n, double *dst)
{
    int64_t j;
    switch (t) {
    case ST_F64:
        if (s == 8) { memcpy(dst, p, (size_t)n * sizeof(double)); break; }
        for (j = 0; j < n; j++) dst[j] = LD_F64(p + j * s);
        break;
    case ST_F32:
        if (s == 4) {
            const float *f = (const float *)(const void *)p;
            for (j = 0; j < n; j++) dst[j] = (double)f[j];
            break;
        }
        for (j = 0; j < n; j++) dst[j] = LD_F32(p + j * s);
        break;
    case ST_BF16:
        if (s == 2) {
            const uint16_t *h = (const uint16_t *)(const void *)p;
            for (j = 0; j < n; j++) {
                uint32_t bits = (uint32_t)h[j] << 16;
                float f;
                memcpy(&f, &bits, sizeof f);
                dst[j] = (double)f;
            }
            break;
        }
        for (j = 0; j < n; j++) dst[j] = LD_BF16(p + j * s);
        break;
    case ST_F16:
        if (s == 2) {
            const uint16_t *h = (const uint16_t *)(const void *)p;
            for (j = 0; j < n; j++) dst[j] = (double)f16_to_float(h[j]);
            break;
        }
        for (j = 0; j < n; j++) dst[j] = LD_F16(p + j * s);
        break;
    }
}

typedef struct {
    double dot[4], xx[4], rr[4], sq[4], ab[4];
} row_sums;

/* Adds a.b, a.a, b.b, |a-b|^2 and |a-b|_1 of two rows into four-lane sums. */
static void accumulate(const double *a, const double *b, int64_t n, row_sums *acc)
{
    int64_t j;
    int l;
    for (j = 0; j + 4 <= n; j += 4) {
        for (l = 0; l < 4; l++) {
            double u = a[j + l], v = b[j + l], t = u - v;
            acc->dot[l] += u * v;
            acc->xx[l] += u * u;
            acc->rr[l] += v * v;
            acc->sq[l] += t * t;
            acc->ab[l] += fabs(t);
        }
    }
    for (; j < n; j++) {
        double u = a[j], v = b[j], t = u - v;
        acc->dot[0] += u * v;
        acc->xx[0] += u * u;
        acc->rr[0] += v * v;
        acc->sq[0] += t * t;
        acc->ab[0] += fabs(t);
    }
}

/* Sum of the four lanes of a partial sum. */
static double lanes(const double v[4])
{
    return (v[0] + v[1]) + (v[2] + v[3]);
}

/* Cosine, euclidean and manhattan distance of each x row to its reference row. */
int st_stats_row_distances(const st_mat *x, const st_mat *refs, st_ivec ref_index, double *out)
{
    double xa[ROW_CHUNK], ra[ROW_CHUNK];
    int64_t i, j, n = x->rows, d = x->cols;
    int x_direct = x->dtype == ST_F64 && x->s1 == 8, r_direct = refs->dtype == ST_F64 && refs->s1 == 8;
    if ((unsigned)x->dtype > ST_BF16 || (unsigned)refs->dtype > ST_BF16) return ST_ERR_DTYPE;
    if (x->cols != refs->cols || ref_index.n != x->rows) return ST_ERR_VALUE;
    for (i = 0; i < n; i++) {
        const char *xp = (const char *)x->data + i * x->s0;
        const char *rp = (const char *)refs->data + st_ivec_at(ref_index, i) * refs->s0;
        row_sums acc;
        double xx, rr;
        memset(&acc, 0, sizeof acc);
        for (j = 0; j < d; j += ROW_CHUNK) {
            int64_t m = d - j < ROW_CHUNK ? d - j : ROW_CHUNK;
            const double *a = xa, *b = ra;   /* contiguous float64 is read in place */
            if (x_direct) a = (const double *)(const void *)xp + j;
            else load_chunk(xp + j * x->s1, x->dtype, x->s1, m, xa);
            if (r_direct) b = (const double *)(const void *)rp + j;
            else load_chunk(rp + j * refs->s1, refs->dtype, refs->s1, m, ra);
            accumulate(a, b, m, &acc);
        }
        xx = lanes(acc.xx);
        rr = lanes(acc.rr);
        out[3 * i] = (xx == 0.0 || rr == 0.0) ? 1.0 : 1.0 - lanes(acc.dot) / (sqrt(xx) * sqrt(rr));
        out[3 * i + 1] = sqrt(lanes(acc.sq));
        out[3 * i + 2] = lanes(acc.ab);
    }
    return ST_OK;
}

/* ==== sticky score and verification ======================================================== */

/* Sticky score of each distance sequence: falls over rises, weighted by their counts. */
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

/* 1 per row where mean(D[1:]) - D[0] < 0, else 0. */
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

/* Mean cosine similarity over all ordered row pairs, |sum u_i|^2 / V^2. */
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

/* Dot product of two d-vectors, summed in four lanes. */
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

/* n x n cosine similarities of emb's rows (0 where a row is zero). */
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

/* Exchanges two doubles. */
static void swapd(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

/* qsort order of doubles, ascending (no NaN reaches it). */
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

/* Linear-interpolation percentiles of x's non-NaN values at the levels q[0..nq). */
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
