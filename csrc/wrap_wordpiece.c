/*
 * wrap_wordpiece.c -- stickytoken._core.WordPiece: a WordPiece vocabulary's trie
 * (wordpiece.c) as a Python object, and its encode method.
 *
 * Made once per process from the tokenizer's own vocabulary ({entry: id}); encode releases
 * the GIL around the kernel.  The trie is read-only once made, so several threads may encode
 * with one object.  Declared in wrap_text.h; module.c adds the type to the module.
 */
#define NO_IMPORT_ARRAY
#include "intake.h"
#include "wrap_text.h"

#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    st_wp *wp;
    int64_t unk_id;
    int64_t max_chars;
    int lowercase;
    int64_t size;       /* vocabulary entries */
} wordpiece_object;

/* WordPiece(vocab, *, prefix='##', unk_id, max_chars=100, lowercase=True). */
static PyObject *wordpiece_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static const char *const F = "WordPiece";
    static char *kwlist[] = {"vocab", "prefix", "unk_id", "max_chars", "lowercase", NULL};
    PyObject *vocab_o, *prefix_o = NULL, *unk_o = NULL, *max_o = NULL, *keys = NULL, *values = NULL;
    int lowercase = 1, rc;
    intake_strs entries = INTAKE_STRS_INIT;
    int64_t *ids = NULL, unk_id = 0, max_chars = 100, bad = -1, i;
    const char *prefix = "##";
    Py_ssize_t prefix_len = 2;
    st_wp *wp = NULL;
    st_ivec ids_v;
    wordpiece_object *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOp:WordPiece", kwlist, &vocab_o, &prefix_o,
                                     &unk_o, &max_o, &lowercase))
        return NULL;
    if (!unk_o)
        return intake_arg_error(PyExc_TypeError, F, "missing required keyword-only argument 'unk_id'");
    if (!PyDict_Check(vocab_o))
        return intake_arg_error(PyExc_TypeError, F, "vocab must be a dict {entry: id}, got %s",
                                Py_TYPE(vocab_o)->tp_name);
    if (prefix_o) {
        if (!PyUnicode_Check(prefix_o))
            return intake_arg_error(PyExc_TypeError, F, "prefix must be a str, got %s", Py_TYPE(prefix_o)->tp_name);
        prefix = PyUnicode_AsUTF8AndSize(prefix_o, &prefix_len);
        if (!prefix) return NULL;
    }
    if (intake_get_int64(unk_o, F, "unk_id", &unk_id) < 0) return NULL;
    if (max_o && intake_get_int64(max_o, F, "max_chars", &max_chars) < 0) return NULL;
    if (unk_id < 0)
        return intake_arg_error(PyExc_ValueError, F, "unk_id must be >= 0, got %lld", (long long)unk_id);
    if (max_chars < 0)
        return intake_arg_error(PyExc_ValueError, F, "max_chars must be >= 0, got %lld", (long long)max_chars);
    keys = PyDict_Keys(vocab_o);
    values = keys ? PyDict_Values(vocab_o) : NULL;
    if (!values) goto done;
    if (intake_strs_get(&entries, keys, F, "vocab's entries") < 0) goto done;
    ids = (int64_t *)PyMem_Malloc((size_t)(entries.n + 1) * sizeof(int64_t));
    if (!ids) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < entries.n; i++)
        if (intake_get_int64(PyList_GET_ITEM(values, (Py_ssize_t)i), F, "vocab's ids", &ids[i]) < 0) goto done;
    ids_v.data = ids;
    ids_v.n = entries.n;
    ids_v.stride = sizeof(int64_t);
    Py_BEGIN_ALLOW_THREADS
    rc = st_wp_new(entries.ptrs, entries.lens, ids_v, entries.n, prefix, (int64_t)prefix_len, &wp, &bad);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_VALUE && bad >= 0) {
        intake_arg_error(PyExc_ValueError, F, "vocab[%R] = %lld: ids must be >= 0", PyList_GET_ITEM(keys, (Py_ssize_t)bad),
                         (long long)ids[bad]);
        goto done;
    }
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    self = (wordpiece_object *)type->tp_alloc(type, 0);
    if (!self) goto done;
    self->wp = wp;
    wp = NULL;
    self->unk_id = unk_id;
    self->max_chars = max_chars;
    self->lowercase = lowercase;
    self->size = entries.n;
done:
    st_wp_free(wp);
    PyMem_Free(ids);
    intake_strs_release(&entries);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return (PyObject *)self;
}

static void wordpiece_dealloc(wordpiece_object *self)
{
    st_wp_free(self->wp);
    self->wp = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(wordpiece_encode_doc,
"encode(words) -> (ids int64 [M], counts int64 [len(words)])\n\n"
"Each word's WordPiece ids, concatenated; counts[i] is word i's number of ids, or -1 for a\n"
"word that is not made only of ASCII letters and digits (not tokenized here).");

/* encode(words): each plain ASCII word's ids, and how many each has (-1: not plain ASCII). */
static PyObject *wordpiece_encode(wordpiece_object *self, PyObject *words_o)
{
    static const char *const F = "WordPiece.encode";
    intake_strs words = INTAKE_STRS_INIT;
    int64_t *buf = NULL, total = 0, i;
    PyObject *ids = NULL, *counts = NULL, *result = NULL;
    int rc;
    if (intake_strs_get(&words, words_o, F, "words") < 0) return NULL;
    buf = (int64_t *)PyMem_RawMalloc((size_t)(words.total + 1) * sizeof(int64_t));
    counts = intake_new_array(1, words.n, 0, NPY_INT64);
    if (!buf) {
        PyErr_NoMemory();
        goto done;
    }
    if (!counts) goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = st_wp_encode(self->wp, words.ptrs, words.lens, words.n, self->lowercase, self->max_chars,
                      self->unk_id, buf, (int64_t *)PyArray_DATA((PyArrayObject *)counts));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        intake_status_error(F, rc);
        goto done;
    }
    for (i = 0; i < words.n; i++) {
        int64_t c = ((const int64_t *)PyArray_DATA((PyArrayObject *)counts))[i];
        if (c > 0) total += c;
    }
    ids = intake_new_array(1, total, 0, NPY_INT64);
    if (!ids) goto done;
    if (total) memcpy(PyArray_DATA((PyArrayObject *)ids), buf, (size_t)total * sizeof(int64_t));
    result = Py_BuildValue("(NN)", ids, counts);   /* steals both */
    ids = counts = NULL;
done:
    Py_XDECREF(ids);
    Py_XDECREF(counts);
    PyMem_RawFree(buf);
    intake_strs_release(&words);
    return result;
}

static PyObject *wordpiece_repr(wordpiece_object *self)
{
    return PyUnicode_FromFormat("WordPiece(%lld entries, unk_id=%lld, max_chars=%lld, lowercase=%s)",
                                (long long)self->size, (long long)self->unk_id, (long long)self->max_chars,
                                self->lowercase ? "True" : "False");
}

static PyMethodDef wordpiece_methods[] = {
    {"encode", (PyCFunction)wordpiece_encode, METH_O, wordpiece_encode_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *get_unk_id(wordpiece_object *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong((long long)self->unk_id);
}

static PyObject *get_max_chars(wordpiece_object *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong((long long)self->max_chars);
}

static PyObject *get_lowercase(wordpiece_object *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->lowercase);
}

static PyGetSetDef wordpiece_getset[] = {
    {"unk_id", (getter)get_unk_id, NULL, "the id a word no entry fits becomes", NULL},
    {"max_chars", (getter)get_max_chars, NULL, "words longer than this become [unk_id]", NULL},
    {"lowercase", (getter)get_lowercase, NULL, "whether A-Z are lowercased first", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(wordpiece_doc,
"WordPiece(vocab, *, prefix='##', unk_id, max_chars=100, lowercase=True)\n\n"
"A WordPiece vocabulary ({entry: id}, as in tokenizer.json's model) as a byte trie: encode\n"
"splits words of ASCII letters and digits as the tokenizers library's WordPiece model does\n"
"(greedy longest match first, later pieces under the prefix; unknown or too long -> unk_id).");

PyTypeObject wordpiece_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stickytoken._core.WordPiece",
    .tp_basicsize = sizeof(wordpiece_object),
    .tp_dealloc = (destructor)wordpiece_dealloc,
    .tp_repr = (reprfunc)wordpiece_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = wordpiece_doc,
    .tp_methods = wordpiece_methods,
    .tp_getset = wordpiece_getset,
    .tp_new = wordpiece_new,
};
