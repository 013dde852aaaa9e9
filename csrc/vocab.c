/*
 * vocab.c -- token categories and GPT-2 byte-level decoding (docs/algorithm.md §1).
 *
 * Texts arrive as UTF-8 bytes with explicit lengths; the rules look at code points.
 */
#include "st_core.h"

#include <stdlib.h>
#include <string.h>

/* ==== unicode helpers ====================================================================== */

/* 1 when cp is whitespace by Python's str.isspace (see st_core.h). */
int st_unicode_isspace(uint32_t cp)
{
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20);
    switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200a;
    }
}

/* Next code point of s[0..n), decoded leniently (see st_core.h). */
uint32_t st_utf8_next(const unsigned char *s, int64_t n, int64_t *used)
{
    unsigned c = s[0];
    int64_t len, k;
    uint32_t cp;
    if (c < 0x80) { *used = 1; return c; }
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1fu; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0fu; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07u; }
    else { *used = 1; return c; }
    if (len > n) { *used = 1; return c; }
    for (k = 1; k < len; k++) {
        if ((s[k] & 0xc0u) != 0x80u) { *used = 1; return c; }
        cp = (cp << 6) | (s[k] & 0x3fu);
    }
    *used = len;
    return cp;
}

/* ==== categories =========================================================================== */

static const char *const category_names[ST_CAT_COUNT] = {
    "OK", "OK_SPECIAL", "MEANINGLESS", "UNREACHABLE_SPECIAL", "UNDECODEABLE",
    "UNREACHABLE_SINGLE_TOKEN", "UNREACHABLE_MULTI_TOKEN",
};

/* Name of a category code, NULL when out of range. */
const char *st_category_name(int code)
{
    return (code >= 0 && code < ST_CAT_COUNT) ? category_names[code] : NULL;
}

/* qsort order of int64 values, ascending. */
static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

/* A letter for the UNREACHABLE_SPECIAL rule: ASCII letter or a code point >= U+00C0 outside
 * the multiplication/division signs and the general / CJK punctuation blocks. */
static int is_letter(uint32_t cp)
{
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z');
    if (cp < 0xc0 || cp == 0xd7 || cp == 0xf7) return 0;
    if (cp >= 0x2000 && cp <= 0x206f) return 0;
    if (cp >= 0x3000 && cp <= 0x303f) return 0;
    return 1;
}

/* Category of one text with its re-encoding (count ids starting at reenc position `first`). */
static int8_t categorize(const unsigned char *s, int64_t len, int64_t id, int64_t count,
                         int64_t first_id, int special)
{
    int64_t pos = 0, ncp = 0, used;
    uint32_t cp, first = 0, last = 0;
    int all_space = 1, letter = 0, fffd = 0;
    while (pos < len) {
        cp = st_utf8_next(s + pos, len - pos, &used);
        pos += used;
        if (ncp == 0) first = cp;
        last = cp;
        ncp++;
        if (all_space && !st_unicode_isspace(cp)) all_space = 0;
        if (!letter && is_letter(cp)) letter = 1;
        if (cp == 0xfffd) fffd = 1;
    }
    if (all_space) return ST_CAT_MEANINGLESS;
    if (count == 1 && first_id == id) return special ? ST_CAT_OK_SPECIAL : ST_CAT_OK;
    if (ncp >= 3 && (first == '[' || first == '<') && (last == ']' || last == '>') && letter)
        return ST_CAT_UNREACHABLE_SPECIAL;
    if (fffd) return ST_CAT_UNDECODEABLE;
    if (count == 1) return ST_CAT_UNREACHABLE_SINGLE_TOKEN;
    return ST_CAT_UNREACHABLE_MULTI_TOKEN;
}

/* Category code of each of the V ids, rules checked in the documented order. */
int st_vocab_categories(const char *const *texts, const int64_t *text_lens, int64_t V,
                        st_ivec reencoded, st_ivec offsets, st_ivec special,
                        int8_t *out, int64_t *bad)
{
    int64_t i, *sorted = NULL;
    if (offsets.n != V + 1) {
        if (bad) *bad = -1;
        return ST_ERR_VALUE;
    }
    for (i = 0; i <= V; i++) {
        int64_t o = st_ivec_at(offsets, i);
        if (o < 0 || o > reencoded.n || (i > 0 && o < st_ivec_at(offsets, i - 1))) {
            if (bad) *bad = i;
            return ST_ERR_VALUE;
        }
    }
    if (special.n > 0) {
        sorted = (int64_t *)malloc((size_t)special.n * sizeof(int64_t));
        if (!sorted) return ST_ERR_NOMEM;
        for (i = 0; i < special.n; i++) sorted[i] = st_ivec_at(special, i);
        qsort(sorted, (size_t)special.n, sizeof(int64_t), cmp_i64);
    }
    for (i = 0; i < V; i++) {
        int64_t lo = st_ivec_at(offsets, i), count = st_ivec_at(offsets, i + 1) - lo;
        int64_t first_id = count > 0 ? st_ivec_at(reencoded, lo) : -1;
        int sp = sorted != NULL &&
                 bsearch(&i, sorted, (size_t)special.n, sizeof(int64_t), cmp_i64) != NULL;
        out[i] = categorize((const unsigned char *)texts[i], text_lens[i], i, count, first_id, sp);
    }
    free(sorted);
    return ST_OK;
}

/* ==== byte-level decoding ================================================================== */

/* GPT-2's bytes_to_unicode, inverted: table[cp] = byte for cp < 324, -1 for other cps. */
static void byte_decoder(int16_t table[324])
{
    int b, extra = 0;
    for (b = 0; b < 324; b++) table[b] = -1;
    for (b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (printable) table[b] = (int16_t)b;
        else table[256 + extra++] = (int16_t)b;
    }
}

/* Length of the well-formed UTF-8 sequence at s[0..n), or -(length of the maximal invalid
 * subpart) when there is none (Unicode 3.9, table 3-7; what Python's decoder reports). */
static int64_t utf8_wellformed(const unsigned char *s, int64_t n)
{
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    int64_t len, k;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return -1;
    }
    for (k = 1; k < len; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) return -k;
        lo = 0x80;
        hi = 0xbf;
    }
    return len;
}

/* UTF-8 text of n GPT-2 byte-level strings; invalid UTF-8 as hex or U+FFFD. */
int st_vocab_bytelevel_decode(const char *const *src, const int64_t *src_lens, int64_t n,
                              int invalid, char *dst, int64_t *dst_off, int64_t *bad,
                              uint32_t *bad_cp)
{
    static const char hexdigits[] = "0123456789ABCDEF";
    int16_t table[324];
    int64_t i, maxlen = 0, out = 0;
    unsigned char *bytes;
    byte_decoder(table);
    for (i = 0; i < n; i++)
        if (src_lens[i] > maxlen) maxlen = src_lens[i];
    bytes = (unsigned char *)malloc((size_t)(maxlen > 0 ? maxlen : 1));
    if (!bytes) return ST_ERR_NOMEM;
    dst_off[0] = 0;
    for (i = 0; i < n; i++) {
        const unsigned char *s = (const unsigned char *)src[i];
        int64_t len = src_lens[i], pos = 0, nb = 0, used;
        while (pos < len) {   /* stand-in characters -> bytes */
            uint32_t cp = st_utf8_next(s + pos, len - pos, &used);
            if (cp >= 324 || table[cp] < 0) {
                free(bytes);
                if (bad) *bad = i;
                if (bad_cp) *bad_cp = cp;
                return ST_ERR_VALUE;
            }
            bytes[nb++] = (unsigned char)table[cp];
            pos += used;
        }
        pos = 0;
        while (pos < nb) {    /* bytes -> UTF-8, invalid subparts shown */
            int64_t w = utf8_wellformed(bytes + pos, nb - pos), k;
            if (w > 0) {
                memcpy(dst + out, bytes + pos, (size_t)w);
                out += w;
                pos += w;
            } else if (invalid == ST_INVALID_REPLACE) {
                memcpy(dst + out, "\xef\xbf\xbd", 3);
                out += 3;
                pos += -w;
            } else {
                for (k = 0; k < -w; k++, pos++) {
                    dst[out++] = '<';
                    dst[out++] = '0';
                    dst[out++] = 'x';
                    dst[out++] = hexdigits[bytes[pos] >> 4];
                    dst[out++] = hexdigits[bytes[pos] & 15];
                    dst[out++] = '>';
                }
            }
        }
        dst_off[i + 1] = out;
    }
    free(bytes);
    return ST_OK;
}
