/*
 * st_core.h -- the whole public C API of the stickytoken core.
 *
 * Plain C99.  No Python, no global state.  Every kernel takes data pointers, int64 shapes and
 * byte strides, writes into buffers the caller owns and returns a status code (ST_OK == 0,
 * a negative ST_ERR_* otherwise).  Nothing here aborts or prints.  The one object the core
 * allocates for its caller is a WordPiece trie (st_wp_new / st_wp_free).
 *
 * Stages (one file each): vocab.c (token categories, byte-level decoding), insert.c (insertion
 * batches, text variants, seeded generator, length order), stats.c (distances, scores,
 * verification counts, mean similarity, pairwise cosine, percentiles), wordpiece.c (WordPiece
 * splitting of plain ASCII words).
 */
#ifndef ST_CORE_H
#define ST_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------ */
enum {
    ST_OK = 0,
    ST_ERR_NOMEM = -1,   /* an internal allocation failed */
    ST_ERR_VALUE = -2,   /* a bad value (the kernel's comment says which) */
    ST_ERR_INDEX = -3,   /* an index out of range */
    ST_ERR_EMPTY = -4,   /* no (finite) value to work on */
    ST_ERR_DTYPE = -5    /* an element type the kernel does not handle */
};

/* ---- element types of float inputs ------------------------------------------------------- */
typedef enum {
    ST_F64 = 0,
    ST_F32 = 1,
    ST_F16 = 2,   /* IEEE binary16, stored as uint16 */
    ST_BF16 = 3   /* bfloat16, stored as uint16 (upper half of a binary32) */
} st_dtype;

/* Size in bytes of one element of type t (0 for an unknown type). */
size_t st_dtype_size(st_dtype t);

/* binary16 / bfloat16 bit patterns to float (exact). */
float st_f16_to_float(uint16_t h);
float st_bf16_to_float(uint16_t h);

/* A read-only 2-D float matrix: element (i, j) lives at data + i*s0 + j*s1 (byte strides,
 * any sign).  A 1-D array is a matrix with one column. */
typedef struct {
    const void *data;
    st_dtype dtype;
    int64_t rows, cols;
    int64_t s0, s1;
} st_mat;

/* A read-only 1-D int64 vector with a byte stride. */
typedef struct {
    const int64_t *data;   /* first element; only dereferenced through st_ivec_at */
    int64_t n;
    int64_t stride;        /* bytes */
} st_ivec;

/* Element i of v (0 <= i < v.n; not checked). */
static inline int64_t st_ivec_at(st_ivec v, int64_t i)
{
    return *(const int64_t *)(const void *)((const char *)v.data + i * v.stride);
}

/* ---- unicode helpers (vocab.c) ------------------------------------------------------------ */

/* 1 when cp is whitespace by Python's str.isspace, else 0. */
int st_unicode_isspace(uint32_t cp);

/* Decode one code point from s[0..n) (n >= 1) leniently: well-formed UTF-8 and encoded
 * surrogates give their code point; any other byte gives itself as a code point.  Stores the
 * number of bytes used (>= 1) in *used. */
uint32_t st_utf8_next(const unsigned char *s, int64_t n, int64_t *used);

/* ---- vocab.c: token categories ----------------------------------------------------------- */
enum {
    ST_CAT_OK = 0,
    ST_CAT_OK_SPECIAL = 1,
    ST_CAT_MEANINGLESS = 2,
    ST_CAT_UNREACHABLE_SPECIAL = 3,
    ST_CAT_UNDECODEABLE = 4,
    ST_CAT_UNREACHABLE_SINGLE_TOKEN = 5,
    ST_CAT_UNREACHABLE_MULTI_TOKEN = 6,
    ST_CAT_COUNT = 7
};

/* Name of a category code ("OK", ...), NULL when out of range. */
const char *st_category_name(int code);

/* Category of each of the V ids (docs/algorithm.md §1, rules in the documented order).
 * texts[i] / text_lens[i]: UTF-8 bytes of id i's decoded text.  reencoded[offsets[i] ..
 * offsets[i+1]) are its re-encoded ids (offsets has V+1 entries, checked non-decreasing and
 * within [0, n_reencoded]: ST_ERR_VALUE, *bad = the offending position).  special[0..n_special)
 * are the special ids (any order, repeats allowed).  Writes out[V]. */
int st_vocab_categories(const char *const *texts, const int64_t *text_lens, int64_t V,
                        st_ivec reencoded, st_ivec offsets, st_ivec special,
                        int8_t *out, int64_t *bad);

/* How invalid UTF-8 is shown by st_vocab_bytelevel_decode. */
enum { ST_INVALID_HEX = 0, ST_INVALID_REPLACE = 1 };

/* GPT-2 byte-level decoding of n strings, src[i] holding src_lens[i] UTF-8 bytes: each
 * character is mapped back to its byte and the bytes are decoded as UTF-8; invalid subparts
 * (maximal, as Python's decoder finds them) become "<0xAB>" per byte (HEX) or one U+FFFD
 * each (REPLACE).  dst must hold 6 * sum(src_lens) bytes; dst_off[n+1] receives the output
 * offsets.  A character that is not a byte-level stand-in: ST_ERR_VALUE with *bad = the
 * string's index and *bad_cp = the character. */
int st_vocab_bytelevel_decode(const char *const *src, const int64_t *src_lens, int64_t n,
                              int invalid, char *dst, int64_t *dst_off, int64_t *bad,
                              uint32_t *bad_cp);

/* ---- insert.c: seeded generator ---------------------------------------------------------- */

/* splitmix64 state seeded by (seed, token id, pair index): identical on every platform. */
uint64_t st_rng_seed(uint64_t seed, uint64_t token_id, uint64_t pair);

/* Next 64 random bits of a splitmix64 state. */
uint64_t st_rng_next(uint64_t *state);

/* Uniform integer in [0, n] inclusive, unbiased (rejection of the short last bucket). */
uint64_t st_rng_uniform(uint64_t *state, uint64_t n);

/* ---- insert.c: token-id batches ---------------------------------------------------------- */
enum { ST_VAR_PREFIX = 0, ST_VAR_SUFFIX = 1, ST_VAR_INSERT = 2 };

typedef struct {
    st_ivec base_ids;       /* flat ids of the P base sequences */
    st_ivec base_offsets;   /* P+1 offsets into base_ids */
    st_ivec token_ids;      /* T tokens to insert */
    const int *variants;    /* nv codes, each 0..2 */
    int64_t nv;
    int64_t insert_num;     /* K >= 1 */
    st_ivec frame_prefix, frame_suffix;
    int64_t pad_id;
    int64_t max_length;     /* >= len(frame_prefix) + len(frame_suffix) */
    uint64_t seed;
} st_batch_spec;

/* Checks a batch spec (ST_ERR_VALUE / ST_ERR_INDEX with *bad the offending position) and
 * computes the row count N = T*P*nv*K and the padded width L. */
int st_insert_batch_shape(const st_batch_spec *spec, int64_t *n_rows, int64_t *width,
                          int64_t *bad);

/* Fills input_ids[N*L], mask[N*L], lengths[N], index[N*4] (rows token-major: t, p, variant,
 * k = 1..K), all C-contiguous int64, for a spec checked by st_insert_batch_shape. */
int st_insert_build_batch(const st_batch_spec *spec, int64_t width, int64_t *input_ids,
                          int64_t *mask, int64_t *lengths, int64_t *index);

/* ---- insert.c: text variants ------------------------------------------------------------- */
typedef struct {
    const char *const *token_texts;  const int64_t *token_lens;  int64_t T;
    st_ivec token_ids;               /* T ids, for seeding */
    const char *const *base_texts;   const int64_t *base_lens;   int64_t P;
    const int *variants;             int64_t nv;
    int64_t insert_num;
    uint64_t seed;
} st_text_spec;

/* Total UTF-8 bytes of all text variants of a spec (so the caller can size a buffer). */
int st_insert_text_size(const st_text_spec *spec, int64_t *n_rows, int64_t *n_bytes);

/* Writes the texts (UTF-8, concatenated; text r is dst[dst_off[r] .. dst_off[r+1]),
 * dst_off has N+1 entries) and index[N*4]. */
int st_insert_build_texts(const st_text_spec *spec, char *dst, int64_t *dst_off, int64_t *index);

/* ---- insert.c: length order -------------------------------------------------------------- */

/* Stable ascending argsort of lengths[0..n) into order[n]. */
int st_insert_length_order(st_ivec lengths, int64_t *order);

/* ---- stats.c ----------------------------------------------------------------------------- */

/* Index check: every idx[i] in [0, limit); else ST_ERR_INDEX with *bad = i. */
int st_stats_check_index(st_ivec idx, int64_t limit, int64_t *bad);

/* out[i*3 + 0..2] = cosine distance (1 - cos; 1 when either vector is zero), euclidean and
 * manhattan distance of x row i to refs row ref_index[i] (indices already checked).
 * x is n x d, refs m x d, any float dtypes; sums in double. */
int st_stats_row_distances(const st_mat *x, const st_mat *refs, st_ivec ref_index, double *out);

/* Sticky score of each row of the n x L distance sequences:
 * (fall + a*n_fall + 0.1*td) / (rise + b*n_rise + c0).  td is n x 1. */
int st_stats_sticky_score(const st_mat *seqs, const st_mat *td, double a, double b, double c0,
                          double *out);

/* out[i] = 1 when mean(D[1:]) - D[0] < 0 for row i of the n x L sequences (L >= 2). */
int st_stats_verify_counts(const st_mat *seqs, uint8_t *out);

/* |sum_i u_i|^2 / V^2 over the V rows of emb, u_i = row / |row| (zero rows give zero u).
 * work: 2*d doubles.  ST_ERR_EMPTY when V == 0. */
int st_stats_mean_similarity(const st_mat *emb, double *work, double *result);

/* out[n*n] = cosine similarities of emb's rows (0 where a row is zero).  work: n*d doubles. */
int st_stats_pairwise_cosine(const st_mat *emb, double *work, double *out);

/* Linear-interpolation percentiles (NumPy's default method) of the non-NaN values of x
 * (n x 1), for nq levels q[j] in [0, 100] -> out[j].  work: n doubles.  ST_ERR_EMPTY when no
 * finite value is present; ST_ERR_VALUE when a q is out of range. */
int st_stats_percentiles(const st_mat *x, const double *q, int64_t nq, double *work, double *out);

/* ---- wordpiece.c -------------------------------------------------------------------------- */

/* A byte trie of a WordPiece vocabulary (opaque; made by st_wp_new, freed by st_wp_free). */
typedef struct st_wp st_wp;

/* The trie of n vocabulary entries: entry i is entries[i] (lens[i] UTF-8 bytes) with id
 * ids[i] >= 0.  An entry that begins with prefix (prefix_len bytes, the continuing-subword
 * prefix such as "##") and is longer also goes, without it, under the trie's second root,
 * where a word's later pieces are looked up.  Empty entries are skipped.  ST_ERR_VALUE with
 * *bad = i: a negative id or length, or an entry given twice; ST_ERR_NOMEM.  On success *out
 * is a new trie. */
int st_wp_new(const char *const *entries, const int64_t *lens, st_ivec ids, int64_t n,
              const char *prefix, int64_t prefix_len, st_wp **out, int64_t *bad);

/* Frees a trie (NULL: nothing). */
void st_wp_free(st_wp *wp);

/* WordPiece of n words (words[i], lens[i] bytes), as the tokenizers library's WordPiece model
 * splits one pre-tokenized word, for words made only of ASCII letters and digits: A-Z
 * lowercased first when lowercase; a word longer than max_chars, or one where some position
 * starts no entry, is [unk_id]; otherwise, from the start, the longest entry that fits (the
 * first piece under the first root, later ones under the second).  Word i's ids are appended
 * to out and counts[i] is their number; any other word gets counts[i] = -1 and no ids (the
 * caller's to tokenize).  out must hold sum(lens) ids. */
int st_wp_encode(const st_wp *wp, const char *const *words, const int64_t *lens, int64_t n,
                 int lowercase, int64_t max_chars, int64_t unk_id, int64_t *out, int64_t *counts);

#ifdef __cplusplus
}
#endif
#endif /* ST_CORE_H */
