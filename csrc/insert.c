/*
 * insert.c -- insertion batches (docs/algorithm.md §3): padded token-id rows, the paper's
 * text variants, the seeded generator behind the insert positions, and the length order.
 */
#include "st_core.h"

#include <stdlib.h>
#include <string.h>

/* ==== seeded generator ===================================================================== */

#define ST_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

/* splitmix64's finaliser: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* splitmix64 state of one (seed, token id, pair index) triple. */
uint64_t st_rng_seed(uint64_t seed, uint64_t token_id, uint64_t pair)
{
    uint64_t s = mix64(seed + ST_GOLDEN);
    s = mix64(s ^ (token_id + ST_GOLDEN));
    return mix64(s ^ (pair + ST_GOLDEN));
}

/* Next 64 random bits; advances the state. */
uint64_t st_rng_next(uint64_t *state)
{
    *state += ST_GOLDEN;
    return mix64(*state);
}

/* Uniform integer in [0, n], unbiased (rejects the short last bucket). */
uint64_t st_rng_uniform(uint64_t *state, uint64_t n)
{
    uint64_t range = n + 1, threshold, r;
    if (range == 0) return st_rng_next(state);   /* n == 2^64 - 1: every value */
    threshold = (0 - range) % range;              /* 2^64 mod range: the short bucket */
    do {
        r = st_rng_next(state);
    } while (r < threshold);
    return r % range;
}

/* ==== helpers ============================================================================== */

/* Checks offsets[0..n] non-decreasing within [0, limit]; *bad = first bad position. */
static int check_offsets(st_ivec off, int64_t limit, int64_t *bad)
{
    int64_t i;
    for (i = 0; i < off.n; i++) {
        int64_t o = st_ivec_at(off, i);
        if (o < 0 || o > limit || (i > 0 && o < st_ivec_at(off, i - 1))) {
            if (bad) *bad = i;
            return ST_ERR_VALUE;
        }
    }
    return ST_OK;
}

/* a * b, or -1 when it would overflow int64 (a, b >= 0). */
static int64_t mul_checked(int64_t a, int64_t b)
{
    if (a != 0 && b > INT64_MAX / a) return -1;
    return a * b;
}

/* ==== token-id batches ===================================================================== */

/* Checks a batch spec; its row count and padded width. */
int st_insert_batch_shape(const st_batch_spec *spec, int64_t *n_rows, int64_t *width,
                          int64_t *bad)
{
    int64_t P = spec->base_offsets.n - 1, T = spec->token_ids.n, K = spec->insert_num;
    int64_t frame = spec->frame_prefix.n + spec->frame_suffix.n, cap, maxb = 0, p, n;
    if (bad) *bad = -1;
    if (P < 0 || K < 1 || spec->max_length < frame) return ST_ERR_VALUE;
    if (check_offsets(spec->base_offsets, spec->base_ids.n, bad) != ST_OK) return ST_ERR_VALUE;
    for (p = 0; p < spec->nv; p++)
        if (spec->variants[p] < 0 || spec->variants[p] > 2) return ST_ERR_VALUE;
    for (p = 0; p < P; p++) {
        int64_t b = st_ivec_at(spec->base_offsets, p + 1) - st_ivec_at(spec->base_offsets, p);
        if (b > maxb) maxb = b;
    }
    n = mul_checked(mul_checked(mul_checked(T, P), spec->nv), K);
    if (n < 0 || maxb > INT64_MAX - K) return ST_ERR_VALUE;
    cap = spec->max_length - frame;
    *n_rows = n;
    *width = n == 0 ? 0 : frame + (maxb + K < cap ? maxb + K : cap);
    return ST_OK;
}

/* Writes one row: frame prefix, content (cut to cap), frame suffix, padding. */
static int64_t write_row(const st_batch_spec *spec, const int64_t *content, int64_t clen,
                         int64_t width, int64_t *ids, int64_t *mask)
{
    int64_t j, len = 0, cap = spec->max_length - spec->frame_prefix.n - spec->frame_suffix.n;
    if (clen > cap) clen = cap;
    for (j = 0; j < spec->frame_prefix.n; j++) ids[len++] = st_ivec_at(spec->frame_prefix, j);
    memcpy(ids + len, content, (size_t)clen * sizeof(int64_t));
    len += clen;
    for (j = 0; j < spec->frame_suffix.n; j++) ids[len++] = st_ivec_at(spec->frame_suffix, j);
    for (j = 0; j < len; j++) mask[j] = 1;
    for (j = len; j < width; j++) {
        ids[j] = spec->pad_id;
        mask[j] = 0;
    }
    return len;
}

/* Padded id rows, masks, lengths and (t, p, v, k) index rows of a checked spec. */
int st_insert_build_batch(const st_batch_spec *spec, int64_t width, int64_t *input_ids,
                          int64_t *mask, int64_t *lengths, int64_t *index)
{
    int64_t P = spec->base_offsets.n - 1, T = spec->token_ids.n, K = spec->insert_num;
    int64_t nv = spec->nv, maxb = 0, t, p, v, k, j, row = 0;
    int64_t *content, *cur;
    for (p = 0; p < P; p++) {
        int64_t b = st_ivec_at(spec->base_offsets, p + 1) - st_ivec_at(spec->base_offsets, p);
        if (b > maxb) maxb = b;
    }
    /* content: the row being built; cur: the insert variant's growing sequence */
    content = (int64_t *)malloc((size_t)(2 * (maxb + K)) * sizeof(int64_t));
    if (!content) return ST_ERR_NOMEM;
    cur = content + maxb + K;
    for (t = 0; t < T; t++) {
        int64_t tok = st_ivec_at(spec->token_ids, t);
        for (p = 0; p < P; p++) {
            int64_t b0 = st_ivec_at(spec->base_offsets, p), B = st_ivec_at(spec->base_offsets, p + 1) - b0;
            for (v = 0; v < nv; v++) {
                int var = spec->variants[v];
                uint64_t state = st_rng_seed(spec->seed, (uint64_t)tok, (uint64_t)p);
                int64_t clen = B;
                if (var == ST_VAR_INSERT)
                    for (j = 0; j < B; j++) cur[j] = st_ivec_at(spec->base_ids, b0 + j);
                for (k = 1; k <= K; k++, row++) {
                    int64_t *ids = input_ids + row * width, *m = mask + row * width;
                    const int64_t *src = content;
                    if (var == ST_VAR_PREFIX) {
                        for (j = 0; j < k; j++) content[j] = tok;
                        for (j = 0; j < B; j++) content[k + j] = st_ivec_at(spec->base_ids, b0 + j);
                        clen = B + k;
                    } else if (var == ST_VAR_SUFFIX) {
                        for (j = 0; j < B; j++) content[j] = st_ivec_at(spec->base_ids, b0 + j);
                        for (j = 0; j < k; j++) content[B + j] = tok;
                        clen = B + k;
                    } else {
                        int64_t pos = (int64_t)st_rng_uniform(&state, (uint64_t)clen);
                        memmove(cur + pos + 1, cur + pos, (size_t)(clen - pos) * sizeof(int64_t));
                        cur[pos] = tok;
                        clen++;
                        src = cur;
                    }
                    lengths[row] = write_row(spec, src, clen, width, ids, m);
                    index[4 * row] = t;
                    index[4 * row + 1] = p;
                    index[4 * row + 2] = var;
                    index[4 * row + 3] = k;
                }
            }
        }
    }
    free(content);
    return ST_OK;
}

/* ==== text variants ======================================================================== */

/* Words of a text as Python's str.split() finds them: (start, length) pairs appended to
 * words (when non-NULL); returns the count. */
static int64_t split_words(const char *s, int64_t len, int64_t *words)
{
    int64_t pos = 0, n = 0, start = -1, used;
    while (pos < len) {
        uint32_t cp = st_utf8_next((const unsigned char *)s + pos, len - pos, &used);
        if (st_unicode_isspace(cp)) {
            if (start >= 0) {
                if (words) { words[2 * n] = start; words[2 * n + 1] = pos - start; }
                n++;
                start = -1;
            }
        } else if (start < 0) {
            start = pos;
        }
        pos += used;
    }
    if (start >= 0) {
        if (words) { words[2 * n] = start; words[2 * n + 1] = len - start; }
        n++;
    }
    return n;
}

/* Row count and total UTF-8 bytes of every text variant of a spec. */
int st_insert_text_size(const st_text_spec *spec, int64_t *n_rows, int64_t *n_bytes)
{
    int64_t t, p, v, k, total = 0, K = spec->insert_num, n;
    if (K < 1) return ST_ERR_VALUE;
    for (v = 0; v < spec->nv; v++)
        if (spec->variants[v] < 0 || spec->variants[v] > 2) return ST_ERR_VALUE;
    n = mul_checked(mul_checked(mul_checked(spec->T, spec->P), spec->nv), K);
    if (n < 0) return ST_ERR_VALUE;
    for (p = 0; p < spec->P; p++) {
        const char *c = spec->base_texts[p];
        int64_t lc = spec->base_lens[p], nw = 0, wbytes = 0, used, pos = 0;
        int has_insert = 0;
        for (v = 0; v < spec->nv; v++) has_insert |= spec->variants[v] == ST_VAR_INSERT;
        if (has_insert) {   /* bytes of the words: the text minus its whitespace */
            nw = split_words(c, lc, NULL);
            while (pos < lc) {
                uint32_t cp = st_utf8_next((const unsigned char *)c + pos, lc - pos, &used);
                if (!st_unicode_isspace(cp)) wbytes += used;
                pos += used;
            }
        }
        for (t = 0; t < spec->T; t++) {
            int64_t lt = spec->token_lens[t];
            for (v = 0; v < spec->nv; v++)
                for (k = 1; k <= K; k++)
                    total += spec->variants[v] == ST_VAR_INSERT ? wbytes + k * lt + (nw + k - 1)
                                                                 : lc + k * lt;
        }
    }
    *n_rows = n;
    *n_bytes = total;
    return ST_OK;
}

/* Every text variant of a spec, concatenated into dst, with offsets and (t, p, v, k) index rows. */
int st_insert_build_texts(const st_text_spec *spec, char *dst, int64_t *dst_off, int64_t *index)
{
    int64_t t, p, v, k, j, K = spec->insert_num, row = 0, out = 0, maxw = 0;
    int64_t *words, *order;
    for (p = 0; p < spec->P; p++) {
        int64_t nw = split_words(spec->base_texts[p], spec->base_lens[p], NULL);
        if (nw > maxw) maxw = nw;
    }
    /* words: (start, len) of the current base; order: word indices, -1 for the token */
    words = (int64_t *)malloc((size_t)(2 * maxw + 1) * sizeof(int64_t));
    order = (int64_t *)malloc((size_t)(maxw + K + 1) * sizeof(int64_t));
    if (!words || !order) {
        free(words);
        free(order);
        return ST_ERR_NOMEM;
    }
    dst_off[0] = 0;
    for (t = 0; t < spec->T; t++) {
        const char *tt = spec->token_texts[t];
        int64_t lt = spec->token_lens[t];
        uint64_t tok = (uint64_t)st_ivec_at(spec->token_ids, t);
        for (p = 0; p < spec->P; p++) {
            const char *c = spec->base_texts[p];
            int64_t lc = spec->base_lens[p], nw = -1;
            for (v = 0; v < spec->nv; v++) {
                int var = spec->variants[v];
                uint64_t state = st_rng_seed(spec->seed, tok, (uint64_t)p);
                int64_t cur = 0;
                if (var == ST_VAR_INSERT) {
                    if (nw < 0) nw = split_words(c, lc, words);
                    for (j = 0; j < nw; j++) order[j] = j;
                    cur = nw;
                }
                for (k = 1; k <= K; k++, row++) {
                    if (var == ST_VAR_PREFIX) {
                        for (j = 0; j < k; j++, out += lt) memcpy(dst + out, tt, (size_t)lt);
                        memcpy(dst + out, c, (size_t)lc);
                        out += lc;
                    } else if (var == ST_VAR_SUFFIX) {
                        memcpy(dst + out, c, (size_t)lc);
                        out += lc;
                        for (j = 0; j < k; j++, out += lt) memcpy(dst + out, tt, (size_t)lt);
                    } else {
                        int64_t pos = (int64_t)st_rng_uniform(&state, (uint64_t)cur);
                        memmove(order + pos + 1, order + pos, (size_t)(cur - pos) * sizeof(int64_t));
                        order[pos] = -1;
                        cur++;
                        for (j = 0; j < cur; j++) {
                            if (j > 0) dst[out++] = ' ';
                            if (order[j] < 0) {
                                memcpy(dst + out, tt, (size_t)lt);
                                out += lt;
                            } else {
                                memcpy(dst + out, c + words[2 * order[j]], (size_t)words[2 * order[j] + 1]);
                                out += words[2 * order[j] + 1];
                            }
                        }
                    }
                    dst_off[row + 1] = out;
                    index[4 * row] = t;
                    index[4 * row + 1] = p;
                    index[4 * row + 2] = var;
                    index[4 * row + 3] = k;
                }
            }
        }
    }
    free(words);
    free(order);
    return ST_OK;
}

/* ==== length order ========================================================================= */

/* Stable ascending argsort of lengths (counting sort for a narrow range, else merge sort). */
int st_insert_length_order(st_ivec lengths, int64_t *order)
{
    int64_t n = lengths.n, i, lo, hi;
    uint64_t range;
    if (n == 0) return ST_OK;
    lo = hi = st_ivec_at(lengths, 0);
    for (i = 1; i < n; i++) {
        int64_t v = st_ivec_at(lengths, i);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    range = (uint64_t)hi - (uint64_t)lo;
    if (range <= (uint64_t)n * 2 + 1024) {   /* stable counting sort */
        int64_t *count = (int64_t *)calloc((size_t)range + 2, sizeof(int64_t));
        if (!count) return ST_ERR_NOMEM;
        for (i = 0; i < n; i++) count[(uint64_t)st_ivec_at(lengths, i) - (uint64_t)lo + 1]++;
        for (i = 1; i <= (int64_t)range + 1; i++) count[i] += count[i - 1];
        for (i = 0; i < n; i++) order[count[(uint64_t)st_ivec_at(lengths, i) - (uint64_t)lo]++] = i;
        free(count);
    } else {                                  /* stable bottom-up merge sort of indices */
        int64_t *tmp = (int64_t *)malloc((size_t)n * sizeof(int64_t)), *a = order, *b, *sw, w;
        if (!tmp) return ST_ERR_NOMEM;
        b = tmp;
        for (i = 0; i < n; i++) a[i] = i;
        for (w = 1; w < n; w *= 2) {
            for (lo = 0; lo < n; lo += 2 * w) {
                int64_t mid = lo + w < n ? lo + w : n, end = lo + 2 * w < n ? lo + 2 * w : n;
                int64_t x = lo, y = mid, o = lo;
                while (x < mid && y < end)
                    b[o++] = st_ivec_at(lengths, a[y]) < st_ivec_at(lengths, a[x]) ? a[y++] : a[x++];
                while (x < mid) b[o++] = a[x++];
                while (y < end) b[o++] = a[y++];
            }
            sw = a;
            a = b;
            b = sw;
        }
        if (a != order) memcpy(order, a, (size_t)n * sizeof(int64_t));
        free(tmp);
    }
    return ST_OK;
}
