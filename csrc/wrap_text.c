/*
 * wrap_text.c -- the Python functions of stickytoken._core that take strings: token
 * categories and byte-level decoding (vocab.c), and the insertion batches (insert.c).
 *
 * Each parses and checks its arguments through intake.h, allocates its outputs, and releases
 * the GIL around its kernel.  Declared in wrap_text.h; module.c lists them in the module.
 */
#define NO_IMPORT_ARRAY
#include "intake.h"
#include "wrap_text.h"

#include <stdint.h>
#include <string.h>

/* ==== vocab ================================================================================ */

const char token_categories_doc[] =
"token_categories(texts, reencoded, offsets, special_ids) -> int8 array [V]\n\n"
"Category code of each id (docs/algorithm.md section 1, rules in the documented order).";

/* token_categories(texts, reencoded, offsets, special_ids): the category code of every id. */
PyObject *py_token_categories(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "token_categories";
    static char *kwlist[] = {"texts", "reencoded", "offsets", "special_ids", NULL};
    PyObject *texts_o, *re_o, *off_o, *sp_o, *out = NULL, *result = NULL;
    intake_view re = INTAKE_VIEW_INIT, off = INTAKE_VIEW_INIT, sp = INTAKE_VIEW_INIT;
    intake_strs texts = INTAKE_STRS_INIT;
    int64_t bad = -1;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:token_categories", kwlist, &texts_o, &re_o,
                                     &off_o, &sp_o))
        return NULL;
    if (intake_strs_get(&texts, texts_o, F, "texts") < 0) goto done;
    if (intake_view_get(&re, module, re_o, F, "reencoded", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&off, module, off_o, F, "offsets", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&sp, module, sp_o, F, "special_ids", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (off.shape[0] != texts.n + 1) {
        intake_arg_error(PyExc_ValueError, F, "offsets must have len(texts) + 1 = %lld entries, got %lld",
                         (long long)(texts.n + 1), (long long)off.shape[0]);
        goto done;
    }
    out = intake_new_array(1, texts.n, 0, NPY_INT8);
    if (!out) goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = st_vocab_categories(texts.ptrs, texts.lens, texts.n, intake_view_ivec(&re),
                             intake_view_ivec(&off), intake_view_ivec(&sp),
                             (int8_t *)PyArray_DATA((PyArrayObject *)out), &bad);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_VALUE) {
        intake_arg_error(PyExc_ValueError, F, "offsets[%lld] = %lld is out of range or decreasing "
                         "(offsets must rise from 0 to at most len(reencoded) = %lld)", (long long)bad,
                         (long long)st_ivec_at(intake_view_ivec(&off), bad), (long long)re.shape[0]);
        goto done;
    }
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(out);
    intake_strs_release(&texts);
    intake_view_release(&re);
    intake_view_release(&off);
    intake_view_release(&sp);
    return result;
}

const char bytelevel_decode_doc[] =
"bytelevel_decode(tokens, invalid='hex') -> list[str]\n\n"
"GPT-2 byte-level stand-in strings (e.g. 'Ġthe') to UTF-8 text; invalid UTF-8 shown as\n"
"'<0xAB>' per byte (invalid='hex') or U+FFFD (invalid='replace').";

/* bytelevel_decode(tokens, invalid='hex'): the UTF-8 text of GPT-2 byte-level strings. */
PyObject *py_bytelevel_decode(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "bytelevel_decode";
    static char *kwlist[] = {"tokens", "invalid", NULL};
    PyObject *tokens_o, *invalid_o = NULL, *list = NULL, *result = NULL;
    intake_strs tokens = INTAKE_STRS_INIT;
    char *dst = NULL;
    int64_t *dst_off = NULL, bad = -1, i;
    uint32_t bad_cp = 0;
    int mode = ST_INVALID_HEX, rc;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:bytelevel_decode", kwlist, &tokens_o, &invalid_o))
        return NULL;
    if (invalid_o) {
        if (!PyUnicode_Check(invalid_o)) {
            return intake_arg_error(PyExc_TypeError, F, "invalid must be 'hex' or 'replace', got %s",
                                    Py_TYPE(invalid_o)->tp_name);
        }
        if (PyUnicode_CompareWithASCIIString(invalid_o, "hex") == 0) mode = ST_INVALID_HEX;
        else if (PyUnicode_CompareWithASCIIString(invalid_o, "replace") == 0) mode = ST_INVALID_REPLACE;
        else return intake_arg_error(PyExc_ValueError, F, "invalid must be 'hex' or 'replace', got %R", invalid_o);
    }
    if (intake_strs_get(&tokens, tokens_o, F, "tokens") < 0) goto done;
    dst = (char *)PyMem_RawMalloc((size_t)(6 * tokens.total + 1));
    dst_off = (int64_t *)PyMem_RawMalloc((size_t)(tokens.n + 1) * sizeof(int64_t));
    if (!dst || !dst_off) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = st_vocab_bytelevel_decode(tokens.ptrs, tokens.lens, tokens.n, mode, dst, dst_off, &bad, &bad_cp);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_VALUE) {
        char cp[16];
        PyOS_snprintf(cp, sizeof cp, "U+%04X", (unsigned)bad_cp);
        intake_arg_error(PyExc_ValueError, F, "tokens[%lld] = %R holds %s, which is not a GPT-2 "
                         "byte-level stand-in character", (long long)bad,
                         PyTuple_GET_ITEM(tokens.tuple, (Py_ssize_t)bad), cp);
        goto done;
    }
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    list = PyList_New((Py_ssize_t)tokens.n);
    if (!list) goto done;
    for (i = 0; i < tokens.n; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(dst + dst_off[i], (Py_ssize_t)(dst_off[i + 1] - dst_off[i]), "strict");
        if (!s) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    result = list;
    list = NULL;
done:
    Py_XDECREF(list);
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    intake_strs_release(&tokens);
    return result;
}

/* ==== insertion ============================================================================ */

/* The insert_num and variants arguments of both insertion functions: insert_num >= 1;
 * variants default to (PREFIX, SUFFIX, INSERT).  *owned receives a PyMem array the caller
 * frees (NULL when the default is used).  0, or -1 with an exception set. */
static int get_insertion(const char *F, PyObject *k_o, PyObject *var_o, int64_t *insert_num,
                         const int **variants, int64_t *nv, int **owned)
{
    static const int all_variants[3] = {ST_VAR_PREFIX, ST_VAR_SUFFIX, ST_VAR_INSERT};
    if (intake_get_int64(k_o, F, "insert_num", insert_num) < 0) return -1;
    if (*insert_num < 1) {
        intake_arg_error(PyExc_ValueError, F, "insert_num must be >= 1, got %lld", (long long)*insert_num);
        return -1;
    }
    if (var_o) {
        if (intake_get_variants(var_o, F, owned, nv) < 0) return -1;
        *variants = *owned;
    } else {
        *variants = all_variants;
        *nv = 3;
    }
    return 0;
}

const char build_token_batch_doc[] =
"build_token_batch(base_ids, base_offsets, token_ids, *, insert_num, variants=(0, 1, 2),\n"
"                  frame_prefix, frame_suffix, pad_id, max_length, seed)\n"
"-> (input_ids [N, L], attention_mask [N, L], lengths [N], index [N, 4])\n\n"
"Padded id rows of every (token, pair, variant, k) in token-major order.";

/* build_token_batch(...): padded id rows, masks, lengths and index of every insertion. */
PyObject *py_build_token_batch(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "build_token_batch";
    static char *kwlist[] = {"base_ids", "base_offsets", "token_ids", "insert_num", "variants",
                             "frame_prefix", "frame_suffix", "pad_id", "max_length", "seed", NULL};
    PyObject *bi_o, *bo_o, *ti_o, *k_o = NULL, *var_o = NULL, *fp_o = NULL, *fs_o = NULL;
    PyObject *pad_o = NULL, *ml_o = NULL, *seed_o = NULL;
    PyObject *ids = NULL, *mask = NULL, *lengths = NULL, *index = NULL, *result = NULL;
    intake_view bi = INTAKE_VIEW_INIT, bo = INTAKE_VIEW_INIT, ti = INTAKE_VIEW_INIT;
    intake_view fp = INTAKE_VIEW_INIT, fs = INTAKE_VIEW_INIT;
    int *variants = NULL, rc;
    st_batch_spec spec;
    int64_t n_rows = 0, width = 0, bad = -1;
    memset(&spec, 0, sizeof spec);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|$OOOOOOO:build_token_batch", kwlist, &bi_o,
                                     &bo_o, &ti_o, &k_o, &var_o, &fp_o, &fs_o, &pad_o, &ml_o, &seed_o))
        return NULL;
    {
        const char *missing = !k_o ? "insert_num" : !fp_o ? "frame_prefix" : !fs_o ? "frame_suffix"
                            : !pad_o ? "pad_id" : !ml_o ? "max_length" : !seed_o ? "seed" : NULL;
        if (missing)
            return intake_arg_error(PyExc_TypeError, F, "missing required keyword-only argument '%s'", missing);
    }
    if (get_insertion(F, k_o, var_o, &spec.insert_num, &spec.variants, &spec.nv, &variants) < 0) goto done;
    if (intake_get_int64(pad_o, F, "pad_id", &spec.pad_id) < 0) goto done;
    if (intake_get_int64(ml_o, F, "max_length", &spec.max_length) < 0) goto done;
    if (intake_get_seed(seed_o, F, &spec.seed) < 0) goto done;
    if (intake_view_get(&bi, module, bi_o, F, "base_ids", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&bo, module, bo_o, F, "base_offsets", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&ti, module, ti_o, F, "token_ids", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&fp, module, fp_o, F, "frame_prefix", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (intake_view_get(&fs, module, fs_o, F, "frame_suffix", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (bo.shape[0] < 1) {
        intake_arg_error(PyExc_ValueError, F, "base_offsets must hold P + 1 >= 1 entries, got 0");
        goto done;
    }
    if (spec.max_length < fp.shape[0] + fs.shape[0]) {
        intake_arg_error(PyExc_ValueError, F, "max_length (%lld) must be at least len(frame_prefix) + "
                         "len(frame_suffix) = %lld", (long long)spec.max_length,
                         (long long)(fp.shape[0] + fs.shape[0]));
        goto done;
    }
    spec.base_ids = intake_view_ivec(&bi);
    spec.base_offsets = intake_view_ivec(&bo);
    spec.token_ids = intake_view_ivec(&ti);
    spec.frame_prefix = intake_view_ivec(&fp);
    spec.frame_suffix = intake_view_ivec(&fs);
    rc = st_insert_batch_shape(&spec, &n_rows, &width, &bad);
    if (rc != ST_OK) {
        if (bad >= 0)
            intake_arg_error(PyExc_ValueError, F, "base_offsets[%lld] = %lld is out of range or decreasing "
                             "(offsets must rise from 0 to at most len(base_ids) = %lld)", (long long)bad,
                             (long long)st_ivec_at(spec.base_offsets, bad), (long long)bi.shape[0]);
        else
            intake_arg_error(PyExc_ValueError, F, "the batch is too large (T * P * len(variants) * insert_num overflows)");
        goto done;
    }
    ids = intake_new_array(2, n_rows, width, NPY_INT64);
    mask = intake_new_array(2, n_rows, width, NPY_INT64);
    lengths = intake_new_array(1, n_rows, 0, NPY_INT64);
    index = intake_new_array(2, n_rows, 4, NPY_INT64);
    if (!ids || !mask || !lengths || !index) goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = st_insert_build_batch(&spec, width, (int64_t *)PyArray_DATA((PyArrayObject *)ids),
                               (int64_t *)PyArray_DATA((PyArrayObject *)mask),
                               (int64_t *)PyArray_DATA((PyArrayObject *)lengths),
                               (int64_t *)PyArray_DATA((PyArrayObject *)index));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    result = Py_BuildValue("(NNNN)", ids, mask, lengths, index);   /* steals all four */
    ids = mask = lengths = index = NULL;
done:
    Py_XDECREF(ids);
    Py_XDECREF(mask);
    Py_XDECREF(lengths);
    Py_XDECREF(index);
    PyMem_Free(variants);
    intake_view_release(&bi);
    intake_view_release(&bo);
    intake_view_release(&ti);
    intake_view_release(&fp);
    intake_view_release(&fs);
    return result;
}

const char build_text_variants_doc[] =
"build_text_variants(token_texts, token_ids, base_texts, *, insert_num, variants=(0, 1, 2), seed)\n"
"-> (texts [N], index [N, 4])\n\n"
"The paper's prefix / suffix / insert strings, same seeding and row order as build_token_batch.";

/* build_text_variants(...): the paper's text of every insertion, and its index. */
PyObject *py_build_text_variants(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "build_text_variants";
    static char *kwlist[] = {"token_texts", "token_ids", "base_texts", "insert_num", "variants",
                             "seed", NULL};
    PyObject *tt_o, *ti_o, *bt_o, *k_o = NULL, *var_o = NULL, *seed_o = NULL;
    PyObject *index = NULL, *list = NULL, *result = NULL;
    intake_strs tt = INTAKE_STRS_INIT, bt = INTAKE_STRS_INIT;
    intake_view ti = INTAKE_VIEW_INIT;
    int *variants = NULL, rc;
    st_text_spec spec;
    int64_t n_rows = 0, n_bytes = 0, *dst_off = NULL, i;
    char *dst = NULL;
    memset(&spec, 0, sizeof spec);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|$OOO:build_text_variants", kwlist, &tt_o,
                                     &ti_o, &bt_o, &k_o, &var_o, &seed_o))
        return NULL;
    if (!k_o || !seed_o)
        return intake_arg_error(PyExc_TypeError, F, "missing required keyword-only argument '%s'",
                                !k_o ? "insert_num" : "seed");
    if (get_insertion(F, k_o, var_o, &spec.insert_num, &spec.variants, &spec.nv, &variants) < 0) goto done;
    if (intake_get_seed(seed_o, F, &spec.seed) < 0) goto done;
    if (intake_strs_get(&tt, tt_o, F, "token_texts") < 0) goto done;
    if (intake_strs_get(&bt, bt_o, F, "base_texts") < 0) goto done;
    if (intake_view_get(&ti, module, ti_o, F, "token_ids", INTAKE_WANT_INT64, 1) < 0) goto done;
    if (ti.shape[0] != tt.n) {
        intake_arg_error(PyExc_ValueError, F, "token_ids must have one id per token text (%lld), got %lld",
                         (long long)tt.n, (long long)ti.shape[0]);
        goto done;
    }
    spec.token_texts = tt.ptrs;
    spec.token_lens = tt.lens;
    spec.T = tt.n;
    spec.token_ids = intake_view_ivec(&ti);
    spec.base_texts = bt.ptrs;
    spec.base_lens = bt.lens;
    spec.P = bt.n;
    rc = st_insert_text_size(&spec, &n_rows, &n_bytes);
    if (rc != ST_OK) {
        intake_arg_error(PyExc_ValueError, F, "the batch is too large");
        goto done;
    }
    dst = (char *)PyMem_RawMalloc((size_t)n_bytes + 1);
    dst_off = (int64_t *)PyMem_RawMalloc((size_t)(n_rows + 1) * sizeof(int64_t));
    index = intake_new_array(2, n_rows, 4, NPY_INT64);
    if (!dst || !dst_off) {
        PyErr_NoMemory();
        goto done;
    }
    if (!index) goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = st_insert_build_texts(&spec, dst, dst_off, (int64_t *)PyArray_DATA((PyArrayObject *)index));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    list = PyList_New((Py_ssize_t)n_rows);
    if (!list) goto done;
    for (i = 0; i < n_rows; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(dst + dst_off[i], (Py_ssize_t)(dst_off[i + 1] - dst_off[i]),
                                           "surrogatepass");
        if (!s) goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    result = Py_BuildValue("(NN)", list, index);   /* steals both */
    list = index = NULL;
done:
    Py_XDECREF(list);
    Py_XDECREF(index);
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    PyMem_Free(variants);
    intake_strs_release(&tt);
    intake_strs_release(&bt);
    intake_view_release(&ti);
    return result;
}
