/*
 * intake.h -- how stickytoken._core takes its arguments in: module state, argument errors,
 * read-only views of NumPy / buffer / DLPack arrays, scalars, strings, outputs.
 *
 * Included by the two files that see Python: intake.c (defines all of this) and module.c (the
 * wrappers and module init).  Every helper that can fail returns -1 (or NULL) with a Python
 * exception set; messages read "func: name ...", func being the Python-level function.
 *
 * NumPy's C API lives in one table shared by both files: module.c calls import_array() and
 * owns the table; intake.c defines NO_IMPORT_ARRAY before including this header.
 */
#ifndef ST_INTAKE_H
#define ST_INTAKE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_21_API_VERSION
#endif
#define NPY_TARGET_VERSION NPY_1_21_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL stickytoken_core_ARRAY_API
#include <numpy/arrayobject.h>

#include <stdint.h>

#include "st_core.h"

/* ==== module state ========================================================================= */

/* Every module-level object, one per module instance (PEP 489 style state). */
typedef struct {
    PyObject *str_dlpack;          /* "__dlpack__" */
    PyObject *str_dlpack_device;   /* "__dlpack_device__" */
    PyObject *str_max_version;     /* "max_version" */
    PyObject *max_version;         /* (1, 0) */
} intake_state;

/* The state of module (borrowed; lives as long as the module). */
intake_state *intake_get_state(PyObject *module);

/* ==== argument errors ====================================================================== */

/* Sets exc("func: <message>"), formatted as PyUnicode_FromFormat does; returns NULL. */
PyObject *intake_arg_error(PyObject *exc, const char *func, const char *fmt, ...);

/* Sets MemoryError for ST_ERR_NOMEM, RuntimeError for any other failed status; returns NULL. */
PyObject *intake_status_error(const char *func, int status);

/* ==== array views ========================================================================== */

#define INTAKE_MAXDIM 8

/* Element kinds a view can hold: the float kinds are st_dtype's codes. */
enum { INTAKE_F64 = ST_F64, INTAKE_F32 = ST_F32, INTAKE_F16 = ST_F16, INTAKE_BF16 = ST_BF16,
       INTAKE_I64 = 10 };

/* What an argument must hold. */
enum { INTAKE_WANT_FLOAT = 1, INTAKE_WANT_INT64 = 2 };

/* A read-only view of an array argument.  Holds either a NumPy array (owner) or a consumed
 * DLPack capsule (capsule + managed); intake_view_release gives both back.  Start every view
 * as INTAKE_VIEW_INIT so that releasing an unfilled view is a no-op. */
typedef struct {
    const char *data;
    int kind;                         /* INTAKE_F64 ... INTAKE_I64 */
    int ndim;
    int64_t shape[INTAKE_MAXDIM];
    int64_t strides[INTAKE_MAXDIM];   /* bytes */
    int64_t itemsize;
    PyObject *owner;                  /* new reference or NULL */
    PyObject *capsule;                /* new reference or NULL */
    void *managed;                    /* DLManagedTensor(Versioned) whose deleter we call */
    int versioned;
} intake_view;

#define INTAKE_VIEW_INIT {NULL, 0, 0, {0}, {0}, 0, NULL, NULL, NULL, 0}

/* Fills v from obj (borrowed): a NumPy array, a DLPack producer or a buffer holding `want`
 * elements in exactly ndim dimensions.  The view holds its own references; release it with
 * intake_view_release on every path, failures included.  0, or -1 with an exception set. */
int intake_view_get(intake_view *v, PyObject *module, PyObject *obj, const char *func,
                    const char *name, int want, int ndim);

/* Gives back what v holds (calls a consumed capsule's deleter exactly once, drops the
 * references); keeps a pending exception.  Safe on an empty or already released view. */
void intake_view_release(intake_view *v);

/* v as a kernel matrix (1-D: one column).  Borrows v's data: valid until v is released. */
st_mat intake_view_mat(const intake_view *v);

/* A 1-D int64 view as a kernel vector.  Borrows v's data: valid until v is released. */
st_ivec intake_view_ivec(const intake_view *v);

/* ==== scalars, strings, variants =========================================================== */

/* An int argument (anything with __index__, not float) as int64; obj borrowed. */
int intake_get_int64(PyObject *obj, const char *func, const char *name, int64_t *out);

/* The seed argument: any int, reduced modulo 2^64; obj borrowed. */
int intake_get_seed(PyObject *obj, const char *func, uint64_t *out);

/* A float argument (float, int or anything with __float__) as double; obj borrowed. */
int intake_get_double(PyObject *obj, const char *func, const char *name, double *out);

/* UTF-8 views of a sequence of str.  tuple keeps the strings alive (an immutable copy, so
 * nothing can free them while the GIL is released); keep holds re-encodings of strings with
 * lone surrogates.  Start as INTAKE_STRS_INIT, end with intake_strs_release. */
typedef struct {
    PyObject *tuple;       /* new reference or NULL */
    PyObject *keep;        /* new reference or NULL */
    const char **ptrs;     /* n UTF-8 pointers into tuple's / keep's objects (PyMem) */
    int64_t *lens;         /* n byte lengths (PyMem) */
    int64_t n;
    int64_t total;         /* sum of lens */
} intake_strs;

#define INTAKE_STRS_INIT {NULL, NULL, NULL, NULL, 0, 0}

/* Fills s from obj (borrowed), a sequence of str (not a str or bytes itself); lone
 * surrogates are kept, encoded as "surrogatepass" would. */
int intake_strs_get(intake_strs *s, PyObject *obj, const char *func, const char *name);

/* Drops what s holds; safe on an empty or already released s. */
void intake_strs_release(intake_strs *s);

/* The variants argument (obj borrowed), codes 0..2 -> *out (PyMem; caller frees) and *n. */
int intake_get_variants(PyObject *obj, const char *func, int **out, int64_t *n);

/* ==== outputs ============================================================================== */

/* A new uninitialised C-contiguous array, [d0] (nd 1) or [d0, d1] (nd 2); new reference. */
PyObject *intake_new_array(int nd, int64_t d0, int64_t d1, int type);

#endif /* ST_INTAKE_H */
