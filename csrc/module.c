/*
 * module.c -- the Python functions of stickytoken._core and the module itself.
 *
 * Each function parses and checks its arguments (through intake.h), allocates its outputs,
 * then releases the GIL around one kernel from st_core.h.  The array kernels (statistics and
 * length_order) share one dispatcher, run_kernel: each of them is a table of arguments plus
 * a shape check and a kernel call.  The string-taking kernels (token categories, byte-level
 * decoding, insertion batches) have wrappers of their own, in wrap_text.c.
 *
 * With intake.c and wrap_text.c, the only files that include Python.h and NumPy; this one
 * calls import_array() and so owns NumPy's API table (see intake.h).
 */
#include "intake.h"
#include "wrap_text.h"

#include <stdint.h>
#include <string.h>

/* ==== array kernels: one dispatcher ======================================================== */

/*
 * An array kernel takes up to KERNEL_MAXARGS arguments -- arrays and float scalars -- and
 * gives one output array or one or two doubles.  run_kernel does, once for all of them:
 * convert the float scalars (in argument order), acquire the array views (in argument
 * order), run the kernel's check (cross-argument shapes; it also sizes the output and the
 * scratch), allocate both, release the GIL around the kernel, turn a failed status into an
 * exception, build the result, and release everything on every path.
 */

#define KERNEL_MAXARGS 5

/* What an argument is: an array of float or int64 elements, or a float scalar. */
enum { ARG_FLOAT = INTAKE_WANT_FLOAT, ARG_INT64 = INTAKE_WANT_INT64, ARG_DOUBLE = 3 };

/* One argument of an array kernel, by position. */
typedef struct {
    const char *name;
    int kind;             /* ARG_FLOAT, ARG_INT64 (arrays of ndim dimensions) or ARG_DOUBLE */
    int ndim;
    double dflt;          /* ARG_DOUBLE: the value of an omitted optional argument */
    const char *range;    /* ARG_DOUBLE: "[lo, hi]" when the value must lie in [lo, hi], or NULL */
    double lo, hi;
} kernel_arg;

#define FLOAT_ARRAY(nm, nd) {.name = (nm), .kind = ARG_FLOAT, .ndim = (nd)}
#define INT64_ARRAY(nm, nd) {.name = (nm), .kind = ARG_INT64, .ndim = (nd)}
#define FLOAT_SCALAR(nm) {.name = (nm), .kind = ARG_DOUBLE}
#define FLOAT_DEFAULT(nm, d) {.name = (nm), .kind = ARG_DOUBLE, .dflt = (d)}
#define FLOAT_WITHIN(nm, l, h, text) {.name = (nm), .kind = ARG_DOUBLE, .range = (text), .lo = (l), .hi = (h)}

/* One call in flight: its converted arguments, and the output and scratch its check asked for. */
typedef struct {
    intake_view view[KERNEL_MAXARGS];   /* array arguments by position (other slots stay empty) */
    st_mat mat[KERNEL_MAXARGS];         /* ARG_FLOAT arguments as kernel matrices */
    st_ivec vec[KERNEL_MAXARGS];        /* ARG_INT64 arguments as kernel vectors */
    double num[KERNEL_MAXARGS];         /* ARG_DOUBLE arguments */
    int out_nd;                         /* output array: 0 (none), 1 ([d0]) or 2 ([d0, d1]) */
    int64_t out_d0, out_d1;
    int out_type;                       /* its NumPy type number */
    void *out;                          /* its data, once allocated */
    int64_t work_n;                     /* doubles of scratch (0: none) */
    double *work;
    double res[2];                      /* scalar results */
} kernel_call;

/* One array kernel: its Python name and arguments, and what is particular to it. */
typedef struct {
    const char *func;
    const char *format;                 /* PyArg format ("OO|O:name"); NULL for METH_O */
    char **kwlist;
    int nargs;
    kernel_arg args[KERNEL_MAXARGS];
    /* Checks across arguments and sizes the output / scratch (kernel_out, kernel_work); GIL
     * held.  0, or -1 with an exception set.  NULL: no check, no output, no scratch. */
    int (*check)(const char *func, kernel_call *c);
    /* The kernel, run without the GIL: touches no Python object.  Returns an ST_ status. */
    int (*kernel)(kernel_call *c);
    /* Optional: sets the exception for a status the kernel reports on valid arguments and
     * returns 1; 0 leaves it to intake_status_error. */
    int (*status)(const char *func, const kernel_call *c, int rc);
    /* Optional: the result (new reference) from res.  NULL: the output array. */
    PyObject *(*result)(const kernel_call *c);
} kernel_spec;

/* Asks for an output array of the given type, 1-D [d0] or 2-D [d0, d1]. */
static void kernel_out(kernel_call *c, int nd, int64_t d0, int64_t d1, int type)
{
    c->out_nd = nd;
    c->out_d0 = d0;
    c->out_d1 = d1;
    c->out_type = type;
}

/* Asks for n doubles of scratch (one more is allocated, so that n == 0 still gets a buffer). */
static void kernel_work(kernel_call *c, int64_t n)
{
    c->work_n = n + 1;
}

/* Runs kernel k on its parsed arguments obj[0 .. k->nargs) (borrowed; NULL = omitted
 * optional).  Returns a new reference, or NULL with an exception set. */
static PyObject *run_kernel(PyObject *module, const kernel_spec *k, PyObject *const *obj)
{
    kernel_call c;
    PyObject *out = NULL, *result = NULL;
    int i, rc;
    memset(&c, 0, sizeof c);
    for (i = 0; i < KERNEL_MAXARGS; i++) {
        const intake_view empty = INTAKE_VIEW_INIT;
        c.view[i] = empty;
    }

    /* 1. float scalars first, so that their errors come before any array's */
    for (i = 0; i < k->nargs; i++) {
        const kernel_arg *a = &k->args[i];
        if (a->kind != ARG_DOUBLE) continue;
        if (!obj[i]) {
            c.num[i] = a->dflt;
            continue;
        }
        if (intake_get_double(obj[i], k->func, a->name, &c.num[i]) < 0) return NULL;
        if (a->range && !(c.num[i] >= a->lo && c.num[i] <= a->hi))
            return intake_arg_error(PyExc_ValueError, k->func, "%s must be in %s, got %R", a->name,
                                    a->range, obj[i]);
    }

    /* 2. array views, in argument order */
    for (i = 0; i < k->nargs; i++) {
        const kernel_arg *a = &k->args[i];
        if (a->kind == ARG_DOUBLE) continue;
        if (intake_view_get(&c.view[i], module, obj[i], k->func, a->name, a->kind, a->ndim) < 0)
            goto done;
        if (a->kind == ARG_FLOAT) c.mat[i] = intake_view_mat(&c.view[i]);
        else c.vec[i] = intake_view_ivec(&c.view[i]);
    }

    /* 3. checks across arguments; they size the output and the scratch */
    if (k->check && k->check(k->func, &c) < 0) goto done;

    /* 4. output and scratch, allocated while the GIL is held */
    if (c.out_nd) {
        out = intake_new_array(c.out_nd, c.out_d0, c.out_d1, c.out_type);
        if (!out) goto done;
        c.out = PyArray_DATA((PyArrayObject *)out);
    }
    if (c.work_n > 0) {
        c.work = (double *)PyMem_RawMalloc((size_t)c.work_n * sizeof(double));
        if (!c.work) {
            PyErr_NoMemory();
            goto done;
        }
    }

    /* 5. the kernel, without the GIL */
    Py_BEGIN_ALLOW_THREADS
    rc = k->kernel(&c);
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        if (!k->status || !k->status(k->func, &c, rc)) intake_status_error(k->func, rc);
        goto done;
    }

    /* 6. the result */
    if (k->result) {
        result = k->result(&c);
    } else {
        result = out;
        out = NULL;
    }
done:
    Py_XDECREF(out);
    PyMem_RawFree(c.work);
    for (i = 0; i < KERNEL_MAXARGS; i++) intake_view_release(&c.view[i]);
    return result;
}

/* run_kernel for a METH_VARARGS | METH_KEYWORDS function: parses by k's format and kwlist. */
static PyObject *run_kernel_args(PyObject *module, const kernel_spec *k, PyObject *args,
                                 PyObject *kwds)
{
    PyObject *obj[KERNEL_MAXARGS] = {NULL, NULL, NULL, NULL, NULL};
    /* the format names at most KERNEL_MAXARGS objects; PyArg ignores the pointers past them */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, k->format, k->kwlist, &obj[0], &obj[1], &obj[2],
                                     &obj[3], &obj[4]))
        return NULL;
    return run_kernel(module, k, obj);
}

/* The first scalar result as a Python float (new reference). */
static PyObject *first_result(const kernel_call *c)
{
    return PyFloat_FromDouble(c->res[0]);
}

PyDoc_STRVAR(length_order_doc,
"length_order(lengths) -> int64 array\n\n"
"Stable permutation that sorts lengths ascending.");

/* lengths [n] -> an int64 [n] output. */
static int length_order_check(const char *func, kernel_call *c)
{
    (void)func;
    kernel_out(c, 1, c->view[0].shape[0], 0, NPY_INT64);
    return 0;
}

/* The stable ascending argsort of lengths. */
static int length_order_kernel(kernel_call *c)
{
    return st_insert_length_order(c->vec[0], (int64_t *)c->out);
}

static const kernel_spec length_order_spec = {
    .func = "length_order", .nargs = 1,
    .args = {INT64_ARRAY("lengths", 1)},
    .check = length_order_check, .kernel = length_order_kernel,
};

/* length_order(lengths): the stable permutation that sorts lengths. */
static PyObject *py_length_order(PyObject *module, PyObject *arg)
{
    return run_kernel(module, &length_order_spec, &arg);
}

/* ==== statistics =========================================================================== */

PyDoc_STRVAR(row_distances_doc,
"row_distances(x, refs, ref_index) -> float64 [n, 3]\n\n"
"Cosine distance, euclidean and manhattan distance of x[i] to refs[ref_index[i]].");

/* x [n, d] and refs [m, d] share d; ref_index has n entries, each a row of refs -> [n, 3]. */
static int row_distances_check(const char *F, kernel_call *c)
{
    const intake_view *x = &c->view[0], *r = &c->view[1], *idx = &c->view[2];
    int64_t bad = -1;
    if (x->shape[1] != r->shape[1]) {
        intake_arg_error(PyExc_ValueError, F, "x has %lld columns but refs has %lld", (long long)x->shape[1],
                         (long long)r->shape[1]);
        return -1;
    }
    if (idx->shape[0] != x->shape[0]) {
        intake_arg_error(PyExc_ValueError, F, "ref_index must have one entry per row of x (%lld), got %lld",
                         (long long)x->shape[0], (long long)idx->shape[0]);
        return -1;
    }
    if (st_stats_check_index(c->vec[2], r->shape[0], &bad) != ST_OK) {
        intake_arg_error(PyExc_ValueError, F, "ref_index[%lld] = %lld is out of range for refs with %lld rows",
                         (long long)bad, (long long)st_ivec_at(c->vec[2], bad), (long long)r->shape[0]);
        return -1;
    }
    kernel_out(c, 2, x->shape[0], 3, NPY_FLOAT64);
    return 0;
}

/* The three distances of each x row to its reference row. */
static int row_distances_kernel(kernel_call *c)
{
    return st_stats_row_distances(&c->mat[0], &c->mat[1], c->vec[2], (double *)c->out);
}

static char *row_distances_kw[] = {"x", "refs", "ref_index", NULL};
static const kernel_spec row_distances_spec = {
    .func = "row_distances", .format = "OOO:row_distances", .kwlist = row_distances_kw, .nargs = 3,
    .args = {FLOAT_ARRAY("x", 2), FLOAT_ARRAY("refs", 2), INT64_ARRAY("ref_index", 1)},
    .check = row_distances_check, .kernel = row_distances_kernel,
};

/* row_distances(x, refs, ref_index): float64 [n, 3] distances. */
static PyObject *py_row_distances(PyObject *module, PyObject *args, PyObject *kwds)
{
    return run_kernel_args(module, &row_distances_spec, args, kwds);
}

PyDoc_STRVAR(sticky_score_doc,
"sticky_score(seqs, td, a, b, c0) -> float64 [n]\n\n"
"(fall + a*n_fall + 0.1*td) / (rise + b*n_rise + c0) of each distance sequence.");

/* td has one entry per row of seqs -> float64 [n]. */
static int sticky_score_check(const char *F, kernel_call *c)
{
    const intake_view *s = &c->view[0], *t = &c->view[1];
    if (t->shape[0] != s->shape[0]) {
        intake_arg_error(PyExc_ValueError, F, "td must have one entry per row of seqs (%lld), got %lld",
                         (long long)s->shape[0], (long long)t->shape[0]);
        return -1;
    }
    kernel_out(c, 1, s->shape[0], 0, NPY_FLOAT64);
    return 0;
}

/* The sticky score of each distance sequence. */
static int sticky_score_kernel(kernel_call *c)
{
    return st_stats_sticky_score(&c->mat[0], &c->mat[1], c->num[2], c->num[3], c->num[4],
                                 (double *)c->out);
}

static char *sticky_score_kw[] = {"seqs", "td", "a", "b", "c0", NULL};
static const kernel_spec sticky_score_spec = {
    .func = "sticky_score", .format = "OOOOO:sticky_score", .kwlist = sticky_score_kw, .nargs = 5,
    .args = {FLOAT_ARRAY("seqs", 2), FLOAT_ARRAY("td", 1), FLOAT_SCALAR("a"), FLOAT_SCALAR("b"),
             FLOAT_SCALAR("c0")},
    .check = sticky_score_check, .kernel = sticky_score_kernel,
};

/* sticky_score(seqs, td, a, b, c0): float64 [n] scores. */
static PyObject *py_sticky_score(PyObject *module, PyObject *args, PyObject *kwds)
{
    return run_kernel_args(module, &sticky_score_spec, args, kwds);
}

PyDoc_STRVAR(verify_counts_doc,
"verify_counts(seqs) -> uint8 [n]\n\n"
"1 where mean(D[1:]) - D[0] < 0 (the texts moved closer on average), else 0.");

/* seqs holds d0 and at least one d_k -> uint8 [n]. */
static int verify_counts_check(const char *F, kernel_call *c)
{
    const intake_view *s = &c->view[0];
    if (s->shape[1] < 2) {
        intake_arg_error(PyExc_ValueError, F, "seqs must have L >= 2 columns (d0 and at least one d_k), got %lld",
                         (long long)s->shape[1]);
        return -1;
    }
    kernel_out(c, 1, s->shape[0], 0, NPY_UINT8);
    return 0;
}

/* 1 per sequence that moved closer on average. */
static int verify_counts_kernel(kernel_call *c)
{
    return st_stats_verify_counts(&c->mat[0], (uint8_t *)c->out);
}

static const kernel_spec verify_counts_spec = {
    .func = "verify_counts", .nargs = 1,
    .args = {FLOAT_ARRAY("seqs", 2)},
    .check = verify_counts_check, .kernel = verify_counts_kernel,
};

/* verify_counts(seqs): uint8 [n] verification outcomes. */
static PyObject *py_verify_counts(PyObject *module, PyObject *arg)
{
    return run_kernel(module, &verify_counts_spec, &arg);
}

PyDoc_STRVAR(mean_similarity_doc,
"mean_similarity(emb) -> float\n\n"
"Mean cosine similarity over all ordered pairs of emb's rows, |sum u_i|^2 / V^2.");

/* emb has at least one row; scratch: 2*d doubles. */
static int mean_similarity_check(const char *F, kernel_call *c)
{
    const intake_view *e = &c->view[0];
    if (e->shape[0] == 0) {
        intake_arg_error(PyExc_ValueError, F, "emb has no rows; the mean similarity of nothing is undefined");
        return -1;
    }
    kernel_work(c, 2 * e->shape[1]);
    return 0;
}

/* The mean cosine similarity of emb's rows, into res[0]. */
static int mean_similarity_kernel(kernel_call *c)
{
    return st_stats_mean_similarity(&c->mat[0], c->work, &c->res[0]);
}

static const kernel_spec mean_similarity_spec = {
    .func = "mean_similarity", .nargs = 1,
    .args = {FLOAT_ARRAY("emb", 2)},
    .check = mean_similarity_check, .kernel = mean_similarity_kernel, .result = first_result,
};

/* mean_similarity(emb): a float. */
static PyObject *py_mean_similarity(PyObject *module, PyObject *arg)
{
    return run_kernel(module, &mean_similarity_spec, &arg);
}

PyDoc_STRVAR(pairwise_cosine_doc,
"pairwise_cosine(emb) -> float64 [n, n]\n\n"
"Cosine similarities of emb's rows (0 where a row is zero).");

/* emb [n, d] small enough to index -> float64 [n, n]; scratch: n*d doubles. */
static int pairwise_cosine_check(const char *F, kernel_call *c)
{
    const intake_view *e = &c->view[0];
    if (e->shape[1] > 0 && e->shape[0] > (int64_t)(PY_SSIZE_T_MAX / 8) / e->shape[1]) {
        intake_arg_error(PyExc_ValueError, F, "emb is too large (%lld x %lld)", (long long)e->shape[0],
                         (long long)e->shape[1]);
        return -1;
    }
    kernel_out(c, 2, e->shape[0], e->shape[0], NPY_FLOAT64);
    kernel_work(c, e->shape[0] * e->shape[1]);
    return 0;
}

/* The cosine similarity of every pair of emb's rows. */
static int pairwise_cosine_kernel(kernel_call *c)
{
    return st_stats_pairwise_cosine(&c->mat[0], c->work, (double *)c->out);
}

static const kernel_spec pairwise_cosine_spec = {
    .func = "pairwise_cosine", .nargs = 1,
    .args = {FLOAT_ARRAY("emb", 2)},
    .check = pairwise_cosine_check, .kernel = pairwise_cosine_kernel,
};

/* pairwise_cosine(emb): float64 [n, n] similarities. */
static PyObject *py_pairwise_cosine(PyObject *module, PyObject *arg)
{
    return run_kernel(module, &pairwise_cosine_spec, &arg);
}

/* Percentiles of x [n]: scratch of n doubles. */
static int percentiles_check(const char *func, kernel_call *c)
{
    (void)func;
    kernel_work(c, c->view[0].shape[0]);
    return 0;
}

/* The error for an x without a finite value (ST_ERR_EMPTY); 0 for any other status. */
static int percentiles_status(const char *F, const kernel_call *c, int rc)
{
    if (rc != ST_ERR_EMPTY) return 0;
    intake_arg_error(PyExc_ValueError, F, "x holds no finite value (%lld values, NaNs skipped)",
                     (long long)c->view[0].shape[0]);
    return 1;
}

PyDoc_STRVAR(percentile_doc,
"percentile(x, q) -> float\n\n"
"Linear-interpolation percentile (NumPy's default) of x's non-NaN values, q in [0, 100].");

/* The q-th percentile of x, into res[0]. */
static int percentile_kernel(kernel_call *c)
{
    return st_stats_percentiles(&c->mat[0], &c->num[1], 1, c->work, c->res);
}

static char *percentile_kw[] = {"x", "q", NULL};
static const kernel_spec percentile_spec = {
    .func = "percentile", .format = "OO:percentile", .kwlist = percentile_kw, .nargs = 2,
    .args = {FLOAT_ARRAY("x", 1), FLOAT_WITHIN("q", 0.0, 100.0, "[0, 100]")},
    .check = percentiles_check, .kernel = percentile_kernel, .status = percentiles_status,
    .result = first_result,
};

/* percentile(x, q): a float. */
static PyObject *py_percentile(PyObject *module, PyObject *args, PyObject *kwds)
{
    return run_kernel_args(module, &percentile_spec, args, kwds);
}

PyDoc_STRVAR(iqr_fence_doc,
"iqr_fence(x, k=0.7) -> float\n\n"
"Q3 + k * (Q3 - Q1) with linear-interpolation quartiles; NaNs skipped.");

/* The quartiles Q1, Q3 of x, into res[0], res[1]. */
static int iqr_fence_kernel(kernel_call *c)
{
    static const double q[2] = {25.0, 75.0};
    return st_stats_percentiles(&c->mat[0], q, 2, c->work, c->res);
}

/* Q3 + k * (Q3 - Q1) as a Python float. */
static PyObject *iqr_fence_result(const kernel_call *c)
{
    return PyFloat_FromDouble(c->res[1] + c->num[1] * (c->res[1] - c->res[0]));
}

static char *iqr_fence_kw[] = {"x", "k", NULL};
static const kernel_spec iqr_fence_spec = {
    .func = "iqr_fence", .format = "O|O:iqr_fence", .kwlist = iqr_fence_kw, .nargs = 2,
    .args = {FLOAT_ARRAY("x", 1), FLOAT_DEFAULT("k", 0.7)},
    .check = percentiles_check, .kernel = iqr_fence_kernel, .status = percentiles_status,
    .result = iqr_fence_result,
};

/* iqr_fence(x, k=0.7): a float. */
static PyObject *py_iqr_fence(PyObject *module, PyObject *args, PyObject *kwds)
{
    return run_kernel_args(module, &iqr_fence_spec, args, kwds);
}

/* ==== module =============================================================================== */

static PyMethodDef core_methods[] = {
    {"token_categories", (PyCFunction)(void (*)(void))py_token_categories, METH_VARARGS | METH_KEYWORDS, token_categories_doc},
    {"bytelevel_decode", (PyCFunction)(void (*)(void))py_bytelevel_decode, METH_VARARGS | METH_KEYWORDS, bytelevel_decode_doc},
    {"build_token_batch", (PyCFunction)(void (*)(void))py_build_token_batch, METH_VARARGS | METH_KEYWORDS, build_token_batch_doc},
    {"build_text_variants", (PyCFunction)(void (*)(void))py_build_text_variants, METH_VARARGS | METH_KEYWORDS, build_text_variants_doc},
    {"length_order", (PyCFunction)py_length_order, METH_O, length_order_doc},
    {"row_distances", (PyCFunction)(void (*)(void))py_row_distances, METH_VARARGS | METH_KEYWORDS, row_distances_doc},
    {"sticky_score", (PyCFunction)(void (*)(void))py_sticky_score, METH_VARARGS | METH_KEYWORDS, sticky_score_doc},
    {"verify_counts", (PyCFunction)py_verify_counts, METH_O, verify_counts_doc},
    {"mean_similarity", (PyCFunction)py_mean_similarity, METH_O, mean_similarity_doc},
    {"pairwise_cosine", (PyCFunction)py_pairwise_cosine, METH_O, pairwise_cosine_doc},
    {"percentile", (PyCFunction)(void (*)(void))py_percentile, METH_VARARGS | METH_KEYWORDS, percentile_doc},
    {"iqr_fence", (PyCFunction)(void (*)(void))py_iqr_fence, METH_VARARGS | METH_KEYWORDS, iqr_fence_doc},
    {NULL, NULL, 0, NULL},
};

/* Visits the module state's objects for the garbage collector. */
static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    intake_state *st = intake_get_state(m);
    Py_VISIT(st->max_version);
    return 0;
}

/* Drops the module state's references. */
static int core_clear(PyObject *m)
{
    intake_state *st = intake_get_state(m);
    Py_CLEAR(st->str_dlpack);
    Py_CLEAR(st->str_dlpack_device);
    Py_CLEAR(st->str_max_version);
    Py_CLEAR(st->max_version);
    return 0;
}

/* Frees the module state (the module is being deallocated). */
static void core_free(void *m)
{
    core_clear((PyObject *)m);
}

PyDoc_STRVAR(core_doc,
"stickytoken._core: the C kernels of stickytoken (see _core.pyi for the contract).");

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", core_doc, sizeof(intake_state), core_methods,
    NULL, core_traverse, core_clear, core_free,
};

/* The module: NumPy's API imported, state filled, category and variant constants and the
 * WordPiece type added. */
PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m, *names = NULL;
    intake_state *st;
    int i;
    import_array();
    m = PyModule_Create(&core_module);
    if (!m) return NULL;
    st = intake_get_state(m);
    st->str_dlpack = PyUnicode_InternFromString("__dlpack__");
    st->str_dlpack_device = PyUnicode_InternFromString("__dlpack_device__");
    st->str_max_version = PyUnicode_InternFromString("max_version");
    st->max_version = Py_BuildValue("(ii)", 1, 0);
    if (!st->str_dlpack || !st->str_dlpack_device || !st->str_max_version || !st->max_version) goto fail;
    names = PyTuple_New(ST_CAT_COUNT);
    if (!names) goto fail;
    for (i = 0; i < ST_CAT_COUNT; i++) {
        PyObject *s = PyUnicode_FromString(st_category_name(i));
        if (!s) goto fail;
        PyTuple_SET_ITEM(names, i, s);
        if (PyModule_AddIntConstant(m, st_category_name(i), i) < 0) goto fail;
    }
    if (PyModule_AddObject(m, "CATEGORY_NAMES", names) < 0) goto fail;
    names = NULL;
    if (PyModule_AddIntConstant(m, "PREFIX", ST_VAR_PREFIX) < 0 ||
        PyModule_AddIntConstant(m, "SUFFIX", ST_VAR_SUFFIX) < 0 ||
        PyModule_AddIntConstant(m, "INSERT", ST_VAR_INSERT) < 0)
        goto fail;
    if (PyType_Ready(&wordpiece_type) < 0 || PyModule_AddType(m, &wordpiece_type) < 0) goto fail;
    return m;
fail:
    Py_XDECREF(names);
    Py_DECREF(m);
    return NULL;
}
