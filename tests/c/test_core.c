/*
 * test_core.c -- a standalone C driver for the kernels of st_core.h, with no Python.
 *
 * Built and run by scripts/sanitize.sh under AddressSanitizer + UBSan with LeakSanitizer on
 * (and under valgrind when it is installed); it links the kernel files only:
 *
 *     gcc -std=c99 -g -I csrc tests/c/test_core.c csrc/vocab.c csrc/insert.c csrc/stats.c csrc/wordpiece.c -lm
 *
 * Exits 0 when every check holds; prints each failure.  Not part of the extension.
 */
#include "st_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

#define NEAR(a, b, tol) CHECK(fabs((double)(a) - (double)(b)) <= (tol))

/* A contiguous int64 vector over p[0..n). */
static st_ivec ivec(const int64_t *p, int64_t n)
{
    st_ivec v;
    v.data = p;
    v.n = n;
    v.stride = (int64_t)sizeof(int64_t);
    return v;
}

/* A C-contiguous rows x cols matrix of type t over p. */
static st_mat mat(const void *p, st_dtype t, int64_t rows, int64_t cols)
{
    st_mat m;
    m.data = p;
    m.dtype = t;
    m.rows = rows;
    m.cols = cols;
    m.s0 = cols * (int64_t)st_dtype_size(t);
    m.s1 = (int64_t)st_dtype_size(t);
    return m;
}

/* ==== conversions ========================================================================== */

/* binary16 / bfloat16 conversions, special values included; element sizes. */
static void test_half(void)
{
    CHECK(st_f16_to_float(0x3c00) == 1.0f);
    CHECK(st_f16_to_float(0xc000) == -2.0f);
    CHECK(st_f16_to_float(0x7bff) == 65504.0f);
    CHECK(st_f16_to_float(0x0001) == 5.9604644775390625e-08f);   /* smallest subnormal */
    CHECK(st_f16_to_float(0x03ff) == 6.097555160522461e-05f);    /* largest subnormal */
    CHECK(isinf(st_f16_to_float(0x7c00)) && st_f16_to_float(0xfc00) < 0);
    CHECK(isnan(st_f16_to_float(0x7e00)));
    CHECK(st_f16_to_float(0x8000) == 0.0f && signbit(st_f16_to_float(0x8000)));
    CHECK(st_bf16_to_float(0x3f80) == 1.0f);
    CHECK(st_bf16_to_float(0x4049) == 3.140625f);
    CHECK(isnan(st_bf16_to_float(0x7fc0)));
    CHECK(st_dtype_size(ST_BF16) == 2 && st_dtype_size(ST_F64) == 8);
}

/* ==== stats ================================================================================ */

/* Distances to reference rows: known values, zero vectors, mixed dtypes, index checks. */
static void test_row_distances(void)
{
    const double x[3 * 2] = {3, 4, 0, 0, 1, 0};
    const float refs[2 * 2] = {3, 4, 0, 1};
    const uint16_t xh[3 * 2] = {0x4200, 0x4400, 0, 0, 0x3c00, 0};        /* f16 3, 4, 0, 0, 1, 0 */
    const uint16_t rb[2 * 2] = {0x4040, 0x4080, 0, 0x3f80};              /* bf16 3, 4, 0, 1 */
    const int64_t idx[3] = {0, 0, 1};
    double out[9], out2[9];
    st_mat xm = mat(x, ST_F64, 3, 2), rm = mat(refs, ST_F32, 2, 2);
    st_mat xhm = mat(xh, ST_F16, 3, 2), rbm = mat(rb, ST_BF16, 2, 2);
    int64_t bad = -1, i;
    CHECK(st_stats_row_distances(&xm, &rm, ivec(idx, 3), out) == ST_OK);
    NEAR(out[0], 0.0, 1e-15);
    NEAR(out[1], 0.0, 1e-15);
    NEAR(out[3], 1.0, 0);          /* zero vector */
    NEAR(out[4], 5.0, 1e-15);
    NEAR(out[5], 7.0, 1e-15);
    NEAR(out[6], 1.0, 1e-15);      /* orthogonal */
    NEAR(out[7], sqrt(2.0), 1e-15);
    NEAR(out[8], 2.0, 1e-15);
    CHECK(st_stats_row_distances(&xhm, &rbm, ivec(idx, 3), out2) == ST_OK);
    for (i = 0; i < 9; i++) NEAR(out[i], out2[i], 1e-15);
    CHECK(st_stats_check_index(ivec(idx, 3), 1, &bad) == ST_ERR_INDEX && bad == 2);
    CHECK(st_stats_check_index(ivec(idx, 3), 2, &bad) == ST_OK);
    {   /* strided: every other column of a 3 x 4 matrix, rows reversed */
        const double wide[3 * 4] = {1, 9, 0, 9, 0, 9, 0, 9, 3, 9, 4, 9};
        st_mat sm;
        sm.data = wide + 8;
        sm.dtype = ST_F64;
        sm.rows = 3;
        sm.cols = 2;
        sm.s0 = -4 * (int64_t)sizeof(double);
        sm.s1 = 2 * (int64_t)sizeof(double);
        CHECK(st_stats_row_distances(&sm, &rm, ivec(idx, 3), out2) == ST_OK);
        NEAR(out2[0], 0.0, 1e-15);   /* row (3, 4) vs (3, 4) */
        NEAR(out2[3], 1.0, 0);       /* zero row */
        NEAR(out2[6], 1.0, 1e-15);   /* (1, 0) vs (0, 1) */
    }
}

/* Sticky scores and verification counts of known sequences. */
static void test_scores(void)
{
    const double seqs[2 * 4] = {0.5, 0.4, 0.45, 0.3, 0.2, 0.2, 0.2, 0.2};
    const double td[2] = {0.2, 0.5};
    double out[2];
    uint8_t counts[2];
    st_mat sm = mat(seqs, ST_F64, 2, 4), tm = mat(td, ST_F64, 2, 1), one = mat(seqs, ST_F64, 2, 1);
    CHECK(st_stats_sticky_score(&sm, &tm, 0.1, 0.05, 0.01, out) == ST_OK);
    NEAR(out[0], (0.25 + 0.2 + 0.02) / (0.05 + 0.05 + 0.01), 1e-12);
    NEAR(out[1], 0.05 / 0.01, 1e-12);
    CHECK(st_stats_verify_counts(&sm, counts) == ST_OK);
    CHECK(counts[0] == 1 && counts[1] == 0);
    CHECK(st_stats_verify_counts(&one, counts) == ST_ERR_VALUE);
}

/* Mean similarity and pairwise cosine of a small basis with a zero row. */
static void test_similarity(void)
{
    const double eye[3 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 0};
    double work[3 * 3], out[9], r = -1;
    st_mat em = mat(eye, ST_F64, 3, 3), none = mat(eye, ST_F64, 0, 3);
    CHECK(st_stats_mean_similarity(&em, work, &r) == ST_OK);
    NEAR(r, 2.0 / 9.0, 1e-15);
    CHECK(st_stats_mean_similarity(&none, work, &r) == ST_ERR_EMPTY);
    CHECK(st_stats_pairwise_cosine(&em, work, out) == ST_OK);
    NEAR(out[0], 1.0, 1e-15);
    NEAR(out[1], 0.0, 0);
    NEAR(out[8], 0.0, 0);   /* zero row */
}

/* Percentiles with NaNs skipped, all-NaN input, a bad level, a large shuffled input. */
static void test_percentiles(void)
{
    const double x[7] = {5, NAN, 1, 4, 2, NAN, 3};
    const double nans[2] = {NAN, NAN};
    const double q[5] = {0, 25, 50, 98, 100}, bad_q = 101;
    double work[7], out[5];
    st_mat xm = mat(x, ST_F64, 7, 1), nm = mat(nans, ST_F64, 2, 1);
    CHECK(st_stats_percentiles(&xm, q, 5, work, out) == ST_OK);
    NEAR(out[0], 1.0, 0);
    NEAR(out[1], 2.0, 0);
    NEAR(out[2], 3.0, 0);
    NEAR(out[3], 4.92, 1e-12);
    NEAR(out[4], 5.0, 0);
    CHECK(st_stats_percentiles(&nm, q, 5, work, out) == ST_ERR_EMPTY);
    CHECK(st_stats_percentiles(&xm, &bad_q, 1, work, out) == ST_ERR_VALUE);
    {   /* a larger shuffled input: the k-th value is k */
        enum { N = 10001 };
        double *v = (double *)malloc(N * sizeof(double)), *w = (double *)malloc(N * sizeof(double));
        double qq[3] = {10, 50, 90}, o[3];
        st_mat vm;
        uint64_t state = st_rng_seed(1, 2, 3);
        int64_t i;
        for (i = 0; i < N; i++) v[i] = (double)i;
        for (i = N - 1; i > 0; i--) {
            int64_t j = (int64_t)st_rng_uniform(&state, (uint64_t)i);
            double t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
        vm = mat(v, ST_F64, N, 1);
        CHECK(st_stats_percentiles(&vm, qq, 3, w, o) == ST_OK);
        NEAR(o[0], 1000.0, 0);
        NEAR(o[1], 5000.0, 0);
        NEAR(o[2], 9000.0, 0);
        free(v);
        free(w);
    }
}

/* ==== insert =============================================================================== */

/* The seeded generator against fixed values (the Python twin draws the same). */
static void test_rng(void)
{
    uint64_t s = st_rng_seed(42, 1000, 0), pos[8];
    int k;
    const uint64_t want[8] = {0, 5, 4, 4, 2, 1, 6, 10};
    CHECK(st_rng_next(&s) == UINT64_C(12360305002117935715));
    CHECK(st_rng_next(&s) == UINT64_C(11314266278219191049));
    s = st_rng_seed(42, 1000, 0);
    for (k = 0; k < 8; k++) pos[k] = st_rng_uniform(&s, (uint64_t)(4 + k));
    for (k = 0; k < 8; k++) CHECK(pos[k] == want[k]);
    s = st_rng_seed(UINT64_MAX, UINT64_MAX - 4, 0);
    CHECK(st_rng_uniform(&s, UINT64_MAX) == UINT64_C(494536342532936093));
}

/* Token-id batches: shape, padding, masks, index; a too-short max_length; bad offsets. */
static void test_batch(void)
{
    const int64_t base[3] = {7, 8, 9}, off[3] = {0, 1, 3}, tok[2] = {50, 60};
    const int64_t fp[1] = {1}, fs[1] = {2};
    const int variants[3] = {0, 1, 2};
    st_batch_spec spec;
    int64_t n = 0, w = 0, bad = -1, *ids, *mask, *len, *index;
    memset(&spec, 0, sizeof spec);
    spec.base_ids = ivec(base, 3);
    spec.base_offsets = ivec(off, 3);
    spec.token_ids = ivec(tok, 2);
    spec.variants = variants;
    spec.nv = 3;
    spec.insert_num = 2;
    spec.frame_prefix = ivec(fp, 1);
    spec.frame_suffix = ivec(fs, 1);
    spec.pad_id = -9;
    spec.max_length = 64;
    spec.seed = 0;
    CHECK(st_insert_batch_shape(&spec, &n, &w, &bad) == ST_OK);
    CHECK(n == 24 && w == 6);
    ids = (int64_t *)malloc((size_t)(n * w) * sizeof(int64_t));
    mask = (int64_t *)malloc((size_t)(n * w) * sizeof(int64_t));
    len = (int64_t *)malloc((size_t)n * sizeof(int64_t));
    index = (int64_t *)malloc((size_t)(4 * n) * sizeof(int64_t));
    CHECK(st_insert_build_batch(&spec, w, ids, mask, len, index) == ST_OK);
    CHECK(ids[0] == 1 && ids[1] == 50 && ids[2] == 7 && ids[3] == 2 && ids[4] == -9);
    CHECK(mask[3] == 1 && mask[4] == 0 && len[0] == 4 && len[1] == 5);
    CHECK(index[4 * 12] == 1 && index[4 * 12 + 3] == 1);
    free(ids);
    free(mask);
    free(len);
    free(index);
    spec.max_length = 1;   /* shorter than the frame */
    CHECK(st_insert_batch_shape(&spec, &n, &w, &bad) == ST_ERR_VALUE);
    {
        const int64_t bad_off[3] = {0, 2, 1};
        spec.max_length = 64;
        spec.base_offsets = ivec(bad_off, 3);
        CHECK(st_insert_batch_shape(&spec, &n, &w, &bad) == ST_ERR_VALUE && bad == 2);
    }
}

/* Text variants: sizes, prefix / suffix / insert rows, a unicode base. */
static void test_texts(void)
{
    const char *tokens[1] = {"X"}, *bases[2] = {"a b  c", " h\xc3\xa9llo\xe3\x80\x80w "};
    const int64_t tlen[1] = {1}, blen[2] = {6, 12}, tid[1] = {1000};
    const int variants[3] = {0, 1, 2};
    st_text_spec spec;
    int64_t n = 0, nb = 0, *off, *index;
    char *dst;
    memset(&spec, 0, sizeof spec);
    spec.token_texts = tokens;
    spec.token_lens = tlen;
    spec.T = 1;
    spec.token_ids = ivec(tid, 1);
    spec.base_texts = bases;
    spec.base_lens = blen;
    spec.P = 2;
    spec.variants = variants;
    spec.nv = 3;
    spec.insert_num = 2;
    spec.seed = 42;
    CHECK(st_insert_text_size(&spec, &n, &nb) == ST_OK);
    CHECK(n == 12);
    dst = (char *)malloc((size_t)nb + 1);
    off = (int64_t *)malloc((size_t)(n + 1) * sizeof(int64_t));
    index = (int64_t *)malloc((size_t)(4 * n) * sizeof(int64_t));
    CHECK(st_insert_build_texts(&spec, dst, off, index) == ST_OK);
    CHECK(off[n] == nb);
    CHECK(off[1] == 7 && memcmp(dst, "Xa b  c", 7) == 0);
    CHECK(off[4] - off[3] == 8 && memcmp(dst + off[3], "a b  cXX", 8) == 0);   /* suffix, k = 2 */
    /* insert rows of the unicode base: words "h\xc3\xa9llo" and "w" plus two X, single spaces */
    CHECK(off[12] - off[11] == 6 + 1 + 2 + 3);
    CHECK(index[4 * 11] == 0 && index[4 * 11 + 1] == 1 && index[4 * 11 + 2] == 2 && index[4 * 11 + 3] == 2);
    free(dst);
    free(off);
    free(index);
}

/* Stable length order, narrow and extreme ranges, empty input; strided lengths. */
static void test_length_order(void)
{
    const int64_t small[6] = {3, 1, 3, 0, 1, 3};
    const int64_t wide[5] = {INT64_MAX, INT64_MIN, 0, INT64_MIN, INT64_MAX};
    int64_t order[6];
    CHECK(st_insert_length_order(ivec(small, 6), order) == ST_OK);
    CHECK(order[0] == 3 && order[1] == 1 && order[2] == 4 && order[3] == 0 && order[4] == 2 && order[5] == 5);
    CHECK(st_insert_length_order(ivec(wide, 5), order) == ST_OK);
    CHECK(order[0] == 1 && order[1] == 3 && order[2] == 2 && order[3] == 0 && order[4] == 4);
    CHECK(st_insert_length_order(ivec(wide, 0), order) == ST_OK);
    {   /* every other element of small, through a 16-byte stride: 3, 3, 1 */
        st_ivec every_other = ivec(small, 3);
        every_other.stride = 2 * (int64_t)sizeof(int64_t);
        CHECK(st_ivec_at(every_other, 2) == 1);
        CHECK(st_insert_length_order(every_other, order) == ST_OK);
        CHECK(order[0] == 2 && order[1] == 0 && order[2] == 1);
    }
}

/* ==== vocab ================================================================================ */

/* One id of each category; bad offsets; names; whitespace. */
static void test_categories(void)
{
    const char *texts[6] = {" \xe3\x80\x80", "the", "[unused1]", "a\xef\xbf\xbd", "cat", "##s"};
    const int64_t lens[6] = {4, 3, 9, 4, 3, 3};
    const int64_t re[7] = {0, 1, 9, 9, 2, 7, 8}, off[7] = {0, 1, 2, 4, 5, 6, 6}, sp[1] = {1};
    const int64_t bad_off[7] = {0, 1, 2, 9, 5, 6, 6};
    int8_t out[6];
    int64_t bad = -1;
    CHECK(st_vocab_categories(texts, lens, 6, ivec(re, 7), ivec(off, 7), ivec(sp, 1), out, &bad) == ST_OK);
    CHECK(out[0] == ST_CAT_MEANINGLESS);
    CHECK(out[1] == ST_CAT_OK_SPECIAL);
    CHECK(out[2] == ST_CAT_UNREACHABLE_SPECIAL);
    CHECK(out[3] == ST_CAT_UNDECODEABLE);
    CHECK(out[4] == ST_CAT_UNREACHABLE_SINGLE_TOKEN);
    CHECK(out[5] == ST_CAT_UNREACHABLE_MULTI_TOKEN);
    CHECK(st_vocab_categories(texts, lens, 6, ivec(re, 7), ivec(bad_off, 7), ivec(sp, 0), out, &bad) == ST_ERR_VALUE);
    CHECK(bad == 3);
    CHECK(strcmp(st_category_name(ST_CAT_OK_SPECIAL), "OK_SPECIAL") == 0 && st_category_name(7) == NULL);
    CHECK(st_unicode_isspace(0x3000) && st_unicode_isspace(0x1c) && !st_unicode_isspace(0x200b));
}

/* Byte-level decoding: text, cut UTF-8 as hex or U+FFFD, a non-stand-in character. */
static void test_bytelevel(void)
{
    /* "\xc4\xa0the" is 'Ġthe'; "\xc4\xa0\xc3\xa2\xc4\xa2" is 'ĠâĢ' (bytes 20 e2 80: cut) */
    const char *src[3] = {"\xc4\xa0the", "\xc4\xa0\xc3\xa2\xc4\xa2", "a b"};
    const int64_t lens[3] = {5, 6, 3};
    char dst[6 * 14];
    int64_t off[4], bad = -1;
    uint32_t cp = 0;
    CHECK(st_vocab_bytelevel_decode(src, lens, 2, ST_INVALID_HEX, dst, off, &bad, &cp) == ST_OK);
    CHECK(off[1] == 4 && memcmp(dst, " the", 4) == 0);
    CHECK(off[2] - off[1] == 13 && memcmp(dst + off[1], " <0xE2><0x80>", 13) == 0);
    CHECK(st_vocab_bytelevel_decode(src, lens, 2, ST_INVALID_REPLACE, dst, off, &bad, &cp) == ST_OK);
    CHECK(off[2] - off[1] == 4 && memcmp(dst + off[1], " \xef\xbf\xbd", 4) == 0);
    CHECK(st_vocab_bytelevel_decode(src, lens, 3, ST_INVALID_HEX, dst, off, &bad, &cp) == ST_ERR_VALUE);
    CHECK(bad == 2 && cp == 0x20);
}

/* ==== wordpiece ============================================================================ */

/* Longest match first, the prefix root, capitals, unknown and long words, words left to the
 * caller; a negative id and a repeated entry refused; a large vocabulary built and freed. */
static void test_wordpiece(void)
{
    const char *entries[6] = {"[UNK]", "a", "ab", "abc", "##b", "##bc"};
    const int64_t lens[6] = {5, 1, 2, 3, 3, 4}, ids[6] = {0, 1, 2, 3, 4, 5}, neg[6] = {0, 1, 2, -3, 4, 5};
    const char *words[7] = {"abc", "ABCBC", "abbc", "ad", "a-b", "", "aaaa"};
    const int64_t wlens[7] = {3, 5, 4, 2, 3, 0, 4};
    const char *dup[2] = {"ab", "ab"};
    const int64_t dup_lens[2] = {2, 2};
    int64_t out[21], counts[7], bad = -1, i;
    st_wp *wp = NULL;
    CHECK(st_wp_new(entries, lens, ivec(neg, 6), 6, "##", 2, &wp, &bad) == ST_ERR_VALUE);
    CHECK(bad == 3 && wp == NULL);
    CHECK(st_wp_new(dup, dup_lens, ivec(ids, 2), 2, "##", 2, &wp, &bad) == ST_ERR_VALUE);
    CHECK(bad == 1 && wp == NULL);
    CHECK(st_wp_new(entries, lens, ivec(ids, 6), 6, "##", 2, &wp, &bad) == ST_OK && wp != NULL);
    if (!wp) return;
    CHECK(st_wp_encode(wp, words, wlens, 7, 1, 3, 0, out, counts) == ST_OK);
    CHECK(counts[0] == 1 && out[0] == 3);                               /* abc */
    CHECK(counts[1] == 1 && out[1] == 0);                               /* ABCBC: longer than 3 */
    CHECK(counts[2] == 1 && out[2] == 0);                               /* abbc: too long too */
    CHECK(counts[3] == 1 && out[3] == 0);                               /* ad: no entry at d */
    CHECK(counts[4] == -1 && counts[5] == 0);                           /* a-b: the caller's; "" */
    CHECK(counts[6] == 1 && out[4] == 0);                               /* aaaa: too long */
    CHECK(st_wp_encode(wp, words, wlens, 3, 1, 100, 0, out, counts) == ST_OK);
    CHECK(counts[0] == 1 && out[0] == 3);
    CHECK(counts[1] == 2 && out[1] == 3 && out[2] == 5);                /* abc ##bc, lowercased */
    CHECK(counts[2] == 2 && out[3] == 2 && out[4] == 5);                /* ab ##bc */
    CHECK(st_wp_encode(wp, words + 1, wlens + 1, 1, 0, 100, 0, out, counts) == ST_OK);
    CHECK(counts[0] == 1 && out[0] == 0);                               /* ABCBC kept capital: unknown */
    st_wp_free(wp);
    st_wp_free(NULL);
    {   /* entries that all carry the prefix make nodes under both roots: more nodes than bytes */
        const char *cont[3] = {"##xyz", "##qrs", "x"};
        const int64_t cont_lens[3] = {5, 5, 1};
        const char *w[1] = {"xyz"};
        const int64_t wl[1] = {3};
        wp = NULL;
        CHECK(st_wp_new(cont, cont_lens, ivec(ids, 3), 3, "##", 2, &wp, &bad) == ST_OK);
        if (wp) {
            CHECK(st_wp_encode(wp, w, wl, 1, 1, 100, 9, out, counts) == ST_OK);
            CHECK(counts[0] == 1 && out[0] == 9);   /* x, then no "##yz": unknown */
            st_wp_free(wp);
        }
    }
    {   /* 20,000 entries of 1..8 letters: built, walked and freed (the leak checkers look here) */
        enum { N = 20000 };
        char (*buf)[9] = malloc(sizeof(char[9]) * N);
        const char **e = malloc(sizeof(char *) * N);
        int64_t *l = malloc(sizeof(int64_t) * N), *id = malloc(sizeof(int64_t) * N);
        uint64_t st = st_rng_seed(7, 0, 0);
        int64_t n = 0, k;
        if (buf && e && l && id) {
            for (i = 0; i < N; i++) {
                int64_t len = 1 + (int64_t)st_rng_uniform(&st, 7);
                for (k = 0; k < len; k++) buf[n][k] = (char)('a' + st_rng_uniform(&st, 3));
                for (k = 0; k < n && !(l[k] == len && memcmp(buf[k], buf[n], (size_t)len) == 0); k++) {}
                if (k < n) continue;   /* a repeat */
                e[n] = buf[n];
                l[n] = len;
                id[n] = n;
                n++;
            }
            CHECK(st_wp_new(e, l, ivec(id, n), n, "##", 2, &wp, &bad) == ST_OK);
            if (wp) {
                const char *w[1] = {"abcdabcdabcdabcdabcdabcd"};
                const int64_t wl[1] = {24};
                CHECK(st_wp_encode(wp, w, wl, 1, 1, 100, 99, out, counts) == ST_OK);
                CHECK(counts[0] == 1 && out[0] == 99);   /* no entry holds d */
                st_wp_free(wp);
            }
        }
        free(buf);
        free(e);
        free(l);
        free(id);
    }
}

/* Runs every test; exit status 1 when a check failed. */
int main(void)
{
    test_half();
    test_row_distances();
    test_scores();
    test_similarity();
    test_percentiles();
    test_rng();
    test_batch();
    test_texts();
    test_length_order();
    test_categories();
    test_bytelevel();
    test_wordpiece();
    if (failures) {
        fprintf(stderr, "test_core: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_core: all checks passed\n");
    return 0;
}
