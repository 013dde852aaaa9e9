/*
 * module.c -- the CPython + NumPy binding of the stickytoken core (stickytoken._core).
 *
 * The only file that includes Python.h and NumPy.  Every function parses and checks its
 * arguments, allocates its outputs, then releases the GIL around one kernel from st_core.h.
 * Arrays come in as NumPy arrays, buffer-protocol objects or DLPack tensors (read in place).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_21_API_VERSION
#define NPY_TARGET_VERSION NPY_1_21_API_VERSION
#include <numpy/arrayobject.h>

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "st_core.h"

/* ==== module state ========================================================================= */

typedef struct {
    PyObject *str_dlpack;          /* "__dlpack__" */
    PyObject *str_dlpack_device;   /* "__dlpack_device__" */
    PyObject *str_max_version;     /* "max_version" */
    PyObject *max_version;         /* (1, 0) */
} core_state;

static core_state *get_state(PyObject *module)
{
    return (core_state *)PyModule_GetState(module);
}

/* ==== errors =============================================================================== */

/* Sets exc with "func: <formatted message>"; returns NULL. */
static PyObject *arg_error(PyObject *exc, const char *func, const char *fmt, ...)
{
    PyObject *msg;
    va_list va;
    va_start(va, fmt);
    msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg) {
        PyErr_Format(exc, "%s: %U", func, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* Replaces the pending exception by exc("func: name: <message>"), chaining the original as
 * its __cause__. */
static void error_from_cause(PyObject *exc, const char *func, const char *name, const char *what)
{
    PyObject *type, *value, *tb, *new_type, *new_value, *new_tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) PyException_SetTraceback(value, tb);
    PyErr_Format(exc, "%s: %s: %s (%S)", func, name, what, value ? value : Py_None);
    PyErr_Fetch(&new_type, &new_value, &new_tb);
    PyErr_NormalizeException(&new_type, &new_value, &new_tb);
    if (new_value && value) {
        PyException_SetCause(new_value, value);   /* steals value */
        value = NULL;
    }
    PyErr_Restore(new_type, new_value, new_tb);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* ==== DLPack (declared here so that no header is needed; DLPack 1.x ABI) ================== */

typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

enum { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLROCMHost = 11 };
enum { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLOpaqueHandle = 3, kDLBfloat = 4,
       kDLComplex = 5, kDLBool = 6 };
#define ST_DLPACK_MAJOR 1

static const char *dl_device_name(int32_t t)
{
    switch (t) {
    case 1: return "cpu";
    case 2: return "cuda";
    case 3: return "cuda_host";
    case 4: return "opencl";
    case 7: return "vulkan";
    case 8: return "metal";
    case 9: return "vpi";
    case 10: return "rocm";
    case 11: return "rocm_host";
    case 12: return "ext_dev";
    case 13: return "cuda_managed";
    case 14: return "oneapi";
    case 15: return "webgpu";
    case 16: return "hexagon";
    case 17: return "maia";
    }
    return "an unknown device";
}

static int dl_device_readable(int32_t t)
{
    return t == kDLCPU || t == kDLCUDAHost || t == kDLROCMHost;
}

/* ==== array views ========================================================================== */

#define VIEW_MAXDIM 8
enum { KIND_F64 = ST_F64, KIND_F32 = ST_F32, KIND_F16 = ST_F16, KIND_BF16 = ST_BF16,
       KIND_I64 = 10 };
enum { WANT_FLOAT = 1, WANT_INT64 = 2 };

/* A read-only view of an argument.  Owns either a NumPy array (owner) or a consumed DLPack
 * capsule (capsule + managed); view_release gives both back. */
typedef struct {
    const char *data;
    int kind;
    int ndim;
    int64_t shape[VIEW_MAXDIM];
    int64_t strides[VIEW_MAXDIM];   /* bytes */
    int64_t itemsize;
    PyObject *owner;                /* new reference or NULL */
    PyObject *capsule;              /* new reference or NULL */
    void *managed;                  /* DLManagedTensor(Versioned) whose deleter we call */
    int versioned;
} view_t;

#define VIEW_INIT {NULL, 0, 0, {0}, {0}, 0, NULL, NULL, NULL, 0}

/* Gives back what a view holds: calls a consumed capsule's deleter (exactly once) and drops
 * the references.  A pending exception survives the deleter (which may run Python code). */
static void view_release(view_t *v)
{
    PyObject *type, *value, *tb;
    if (!v->managed && !v->capsule && !v->owner) return;
    PyErr_Fetch(&type, &value, &tb);
    if (v->managed) {
        if (v->versioned) {
            DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)v->managed;
            if (m->deleter) m->deleter(m);
        } else {
            DLManagedTensor *m = (DLManagedTensor *)v->managed;
            if (m->deleter) m->deleter(m);
        }
        v->managed = NULL;
    }
    Py_CLEAR(v->capsule);
    Py_CLEAR(v->owner);
    PyErr_Restore(type, value, tb);
}

static const char *want_text(int want)
{
    return want == WANT_FLOAT ? "a float array (float16, bfloat16, float32 or float64)"
                              : "an int64 array";
}

/* Checks the dimension count; sets ValueError naming the argument. */
static int check_ndim(const view_t *v, const char *func, const char *name, int ndim)
{
    if (v->ndim != ndim) {
        arg_error(PyExc_ValueError, func, "%s must be %d-D, got %d-D", name, ndim, v->ndim);
        return -1;
    }
    return 0;
}

/* View of a NumPy array (borrowed arr; the view takes its own reference or an aligned copy). */
static int view_from_numpy(view_t *v, PyArrayObject *arr, const char *func, const char *name,
                           int want)
{
    PyArray_Descr *descr = PyArray_DESCR(arr);
    int i, kind = -1;
    if (descr->kind == 'f' && PyArray_ISNOTSWAPPED(arr)) {
        if (PyDataType_ELSIZE(descr) == 8) kind = KIND_F64;
        else if (PyDataType_ELSIZE(descr) == 4) kind = KIND_F32;
        else if (PyDataType_ELSIZE(descr) == 2) kind = KIND_F16;
    } else if (descr->kind == 'i' && PyDataType_ELSIZE(descr) == 8 && PyArray_ISNOTSWAPPED(arr)) {
        kind = KIND_I64;
    }
    if (kind < 0 || (want == WANT_FLOAT) != (kind != KIND_I64)) {
        arg_error(PyExc_ValueError, func, "%s must be %s, got %S%s", name, want_text(want),
                  (PyObject *)descr, PyArray_ISNOTSWAPPED(arr) ? "" : " (non-native byte order)");
        return -1;
    }
    if (PyArray_NDIM(arr) > VIEW_MAXDIM) {
        arg_error(PyExc_ValueError, func, "%s has too many dimensions (%d)", name, PyArray_NDIM(arr));
        return -1;
    }
    if (PyArray_ISALIGNED(arr)) {
        Py_INCREF(arr);
        v->owner = (PyObject *)arr;
    } else {
        v->owner = PyArray_NewCopy(arr, NPY_CORDER);
        if (!v->owner) return -1;
        arr = (PyArrayObject *)v->owner;
    }
    v->data = (const char *)PyArray_DATA(arr);
    v->kind = kind;
    v->ndim = PyArray_NDIM(arr);
    v->itemsize = (int64_t)PyArray_ITEMSIZE(arr);
    for (i = 0; i < v->ndim; i++) {
        v->shape[i] = (int64_t)PyArray_DIM(arr, i);
        v->strides[i] = (int64_t)PyArray_STRIDE(arr, i);
    }
    return 0;
}

/* Text for a DLPack dtype, for messages. */
static PyObject *dl_dtype_text(DLDataType t)
{
    static const char *const codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    const char *c = t.code < 7 ? codes[t.code] : "code?";
    if (t.lanes != 1) return PyUnicode_FromFormat("%s%d x %d lanes", c, (int)t.bits, (int)t.lanes);
    return PyUnicode_FromFormat("%s%d", c, (int)t.bits);
}

/* View of a DLPack producer (an object with __dlpack__).  On success the capsule is renamed
 * to its "used" name and the view calls the deleter when released. */
static int view_from_dlpack(view_t *v, PyObject *module, PyObject *obj, PyObject *dlpack,
                            const char *func, const char *name, int want)
{
    core_state *st = get_state(module);
    PyObject *dev = NULL, *capsule = NULL, *args = NULL, *kwargs = NULL;
    DLTensor *t;
    void *managed;
    int versioned, kind = -1, i;
    int64_t itemsize;

    /* 1. the device, as the producer reports it, before asking for a capsule */
    if (PyObject_HasAttr(obj, st->str_dlpack_device)) {
        long dtype_dev;
        dev = PyObject_CallMethodNoArgs(obj, st->str_dlpack_device);
        if (!dev) {
            error_from_cause(PyExc_BufferError, func, name, "__dlpack_device__() failed");
            goto fail;
        }
        if (!PyTuple_Check(dev) || PyTuple_GET_SIZE(dev) != 2) {
            arg_error(PyExc_BufferError, func, "%s: __dlpack_device__() must return a (type, id) tuple, got %R", name, dev);
            goto fail;
        }
        dtype_dev = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
        if (dtype_dev == -1 && PyErr_Occurred()) {
            error_from_cause(PyExc_BufferError, func, name, "__dlpack_device__() gave a bad device type");
            goto fail;
        }
        if (!dl_device_readable((int32_t)dtype_dev)) {
            arg_error(PyExc_BufferError, func, "%s: tensor is on %s; call .cpu() first", name,
                      dl_device_name((int32_t)dtype_dev));
            goto fail;
        }
        Py_CLEAR(dev);
    }

    /* 2. the capsule: versioned when the producer takes max_version, legacy otherwise */
    args = PyTuple_New(0);
    kwargs = PyDict_New();
    if (!args || !kwargs || PyDict_SetItem(kwargs, st->str_max_version, st->max_version) < 0) goto fail;
    capsule = PyObject_Call(dlpack, args, kwargs);
    if (!capsule && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        capsule = PyObject_CallNoArgs(dlpack);
    }
    if (!capsule) {
        error_from_cause(PyExc_BufferError, func, name, "__dlpack__() failed");
        goto fail;
    }
    if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)PyCapsule_GetPointer(capsule, "dltensor_versioned");
        if (!m) goto fail;
        if (m->version.major != ST_DLPACK_MAJOR) {
            arg_error(PyExc_BufferError, func, "%s: unsupported DLPack version %u.%u (need 1.x)",
                      name, (unsigned)m->version.major, (unsigned)m->version.minor);
            goto fail;
        }
        versioned = 1;
        managed = m;
        t = &m->dl_tensor;
    } else if (PyCapsule_IsValid(capsule, "dltensor")) {
        DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(capsule, "dltensor");
        if (!m) goto fail;
        versioned = 0;
        managed = m;
        t = &m->dl_tensor;
    } else {
        arg_error(PyExc_BufferError, func, "%s: __dlpack__() did not return an unused DLPack capsule", name);
        goto fail;
    }

    /* 3. device, lanes, dtype, dimensions */
    if (!dl_device_readable(t->device.device_type)) {
        arg_error(PyExc_BufferError, func, "%s: tensor is on %s; call .cpu() first", name,
                  dl_device_name(t->device.device_type));
        goto fail;
    }
    if (t->dtype.lanes == 1) {
        if (t->dtype.code == kDLFloat && t->dtype.bits == 64) kind = KIND_F64;
        else if (t->dtype.code == kDLFloat && t->dtype.bits == 32) kind = KIND_F32;
        else if (t->dtype.code == kDLFloat && t->dtype.bits == 16) kind = KIND_F16;
        else if (t->dtype.code == kDLBfloat && t->dtype.bits == 16) kind = KIND_BF16;
        else if (t->dtype.code == kDLInt && t->dtype.bits == 64) kind = KIND_I64;
    }
    if (kind < 0 || (want == WANT_FLOAT) != (kind != KIND_I64)) {
        PyObject *txt = dl_dtype_text(t->dtype);
        if (txt) {
            arg_error(PyExc_ValueError, func, "%s must be %s, got %U", name, want_text(want), txt);
            Py_DECREF(txt);
        }
        goto fail;
    }
    if (t->ndim < 0 || t->ndim > VIEW_MAXDIM) {
        arg_error(PyExc_ValueError, func, "%s has an unsupported number of dimensions (%d)", name, (int)t->ndim);
        goto fail;
    }
    itemsize = t->dtype.bits / 8;
    v->data = (const char *)t->data + t->byte_offset;
    v->kind = kind;
    v->ndim = t->ndim;
    v->itemsize = itemsize;
    for (i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            arg_error(PyExc_BufferError, func, "%s: DLPack tensor has a negative extent", name);
            goto fail;
        }
        v->shape[i] = t->shape[i];
    }
    if (t->strides) {
        for (i = 0; i < t->ndim; i++) v->strides[i] = t->strides[i] * itemsize;
    } else {   /* compact row-major */
        int64_t s = itemsize;
        for (i = t->ndim - 1; i >= 0; i--) {
            v->strides[i] = s;
            s *= v->shape[i] > 0 ? v->shape[i] : 1;
        }
    }
    if (((uintptr_t)v->data) % (uintptr_t)itemsize != 0) {
        arg_error(PyExc_BufferError, func, "%s: DLPack tensor data is not aligned to its %d-byte elements",
                  name, (int)itemsize);
        goto fail;
    }

    /* 4. everything is in place: consume the capsule (its deleter is now ours to call) */
    if (PyCapsule_SetName(capsule, versioned ? "used_dltensor_versioned" : "used_dltensor") < 0) goto fail;
    v->capsule = capsule;
    v->managed = managed;
    v->versioned = versioned;
    Py_DECREF(args);
    Py_DECREF(kwargs);
    return 0;

fail:
    Py_XDECREF(dev);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_XDECREF(capsule);   /* unconsumed: the producer's capsule destructor frees the tensor */
    v->data = NULL;
    return -1;
}

/* Fills a view from any accepted array argument.  Returns 0 or -1 with an exception set. */
static int view_acquire(view_t *v, PyObject *module, PyObject *obj, const char *func,
                        const char *name, int want)
{
    core_state *st = get_state(module);
    PyObject *dlpack;
    if (PyArray_Check(obj)) return view_from_numpy(v, (PyArrayObject *)obj, func, name, want);
    if (!PyUnicode_Check(obj) && !PyBytes_Check(obj) && !PyByteArray_Check(obj) &&
        PyObject_HasAttr(obj, st->str_dlpack)) {
        int rc;
        dlpack = PyObject_GetAttr(obj, st->str_dlpack);
        if (!dlpack) return -1;
        rc = view_from_dlpack(v, module, obj, dlpack, func, name, want);
        Py_DECREF(dlpack);
        return rc;
    }
    if (PyObject_CheckBuffer(obj) && !PyUnicode_Check(obj)) {
        PyObject *mv, *arr;
        int rc;
        mv = PyMemoryView_FromObject(obj);
        if (!mv) {
            error_from_cause(PyExc_BufferError, func, name, "the buffer cannot be read");
            return -1;
        }
        arr = PyArray_FromAny(mv, NULL, 0, 0, 0, NULL);
        Py_DECREF(mv);
        if (!arr) {
            error_from_cause(PyExc_BufferError, func, name, "the buffer cannot be read");
            return -1;
        }
        rc = view_from_numpy(v, (PyArrayObject *)arr, func, name, want);
        Py_DECREF(arr);
        return rc;
    }
    arg_error(PyExc_TypeError, func, "%s must be a NumPy array, a buffer or a DLPack tensor, got %s",
              name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* Acquire + dimension check in one step. */
static int view_get(view_t *v, PyObject *module, PyObject *obj, const char *func,
                    const char *name, int want, int ndim)
{
    if (view_acquire(v, module, obj, func, name, want) < 0) return -1;
    if (check_ndim(v, func, name, ndim) < 0) return -1;
    return 0;
}

static st_mat view_mat(const view_t *v)
{
    st_mat m;
    m.data = v->data;
    m.dtype = (st_dtype)v->kind;
    m.rows = v->ndim >= 1 ? v->shape[0] : 1;
    m.cols = v->ndim >= 2 ? v->shape[1] : 1;
    m.s0 = v->ndim >= 1 ? v->strides[0] : 0;
    m.s1 = v->ndim >= 2 ? v->strides[1] : v->itemsize;
    return m;
}

static st_ivec view_ivec(const view_t *v)
{
    st_ivec r;
    r.data = (const int64_t *)(const void *)v->data;
    r.n = v->shape[0];
    r.stride = v->strides[0];
    return r;
}

static int64_t ivec_get(st_ivec v, int64_t i)
{
    return *(const int64_t *)(const void *)((const char *)v.data + i * v.stride);
}

/* ==== scalars and sequences ================================================================ */

/* An int argument (anything with __index__) as int64. */
static int get_int64(PyObject *obj, const char *func, const char *name, int64_t *out)
{
    PyObject *idx;
    long long val;
    if (PyFloat_Check(obj) || !PyIndex_Check(obj)) {
        arg_error(PyExc_TypeError, func, "%s must be an int, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    idx = PyNumber_Index(obj);
    if (!idx) return -1;
    val = PyLong_AsLongLong(idx);
    Py_DECREF(idx);
    if (val == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        arg_error(PyExc_ValueError, func, "%s is out of the int64 range", name);
        return -1;
    }
    *out = (int64_t)val;
    return 0;
}

/* A seed: any int, reduced modulo 2^64. */
static int get_seed(PyObject *obj, const char *func, uint64_t *out)
{
    PyObject *idx;
    unsigned long long val;
    if (PyFloat_Check(obj) || !PyIndex_Check(obj)) {
        arg_error(PyExc_TypeError, func, "seed must be an int, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    idx = PyNumber_Index(obj);
    if (!idx) return -1;
    val = PyLong_AsUnsignedLongLongMask(idx);
    Py_DECREF(idx);
    if (val == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)val;
    return 0;
}

static int get_double(PyObject *obj, const char *func, const char *name, double *out)
{
    if (!PyFloat_Check(obj) && !PyLong_Check(obj) && !PyIndex_Check(obj) &&
        !PyNumber_Check(obj)) {
        arg_error(PyExc_TypeError, func, "%s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        arg_error(PyExc_TypeError, func, "%s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

/* UTF-8 views of a sequence of str.  tuple keeps the strings alive (an immutable copy, so
 * nothing can free them while the GIL is released); keep holds re-encodings of strings with
 * lone surrogates. */
typedef struct {
    PyObject *tuple;
    PyObject *keep;
    const char **ptrs;
    int64_t *lens;
    int64_t n;
    int64_t total;
} strs_t;

#define STRS_INIT {NULL, NULL, NULL, NULL, 0, 0}

static void strs_release(strs_t *s)
{
    Py_CLEAR(s->tuple);
    Py_CLEAR(s->keep);
    PyMem_Free((void *)s->ptrs);
    PyMem_Free(s->lens);
    s->ptrs = NULL;
    s->lens = NULL;
}

static int strs_get(strs_t *s, PyObject *obj, const char *func, const char *name)
{
    Py_ssize_t i, n;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
        arg_error(PyExc_TypeError, func, "%s must be a sequence of str, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    s->tuple = PySequence_Tuple(obj);
    if (!s->tuple) return -1;
    n = PyTuple_GET_SIZE(s->tuple);
    s->n = n;
    s->ptrs = (const char **)PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(char *));
    s->lens = (int64_t *)PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!s->ptrs || !s->lens) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(s->tuple, i);
        Py_ssize_t len;
        const char *p;
        if (!PyUnicode_Check(item)) {
            arg_error(PyExc_TypeError, func, "%s[%zd] must be str, got %s", name, i, Py_TYPE(item)->tp_name);
            return -1;
        }
        p = PyUnicode_AsUTF8AndSize(item, &len);
        if (!p) {   /* lone surrogates: keep them, encoded as UTF-8 would */
            PyObject *b;
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
            PyErr_Clear();
            b = PyUnicode_AsEncodedString(item, "utf-8", "surrogatepass");
            if (!b) return -1;
            if (!s->keep && !(s->keep = PyList_New(0))) {
                Py_DECREF(b);
                return -1;
            }
            if (PyList_Append(s->keep, b) < 0) {
                Py_DECREF(b);
                return -1;
            }
            Py_DECREF(b);
            p = PyBytes_AS_STRING(b);
            len = PyBytes_GET_SIZE(b);
        }
        s->ptrs[i] = p;
        s->lens[i] = (int64_t)len;
        s->total += (int64_t)len;
    }
    return 0;
}

/* variants: a sequence of the codes 0, 1, 2 -> a new int array (PyMem) and its length. */
static int get_variants(PyObject *obj, const char *func, int **out, int64_t *n)
{
    PyObject *tup;
    Py_ssize_t i, len;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
        arg_error(PyExc_TypeError, func, "variants must be a sequence of int, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    tup = PySequence_Tuple(obj);
    if (!tup) return -1;
    len = PyTuple_GET_SIZE(tup);
    *out = (int *)PyMem_Malloc((size_t)(len > 0 ? len : 1) * sizeof(int));
    if (!*out) {
        Py_DECREF(tup);
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < len; i++) {
        int64_t v;
        char nm[32];
        PyOS_snprintf(nm, sizeof nm, "variants[%d]", (int)i);
        if (get_int64(PyTuple_GET_ITEM(tup, i), func, nm, &v) < 0) goto fail;
        if (v < 0 || v > 2) {
            arg_error(PyExc_ValueError, func, "variants[%zd] must be 0 (PREFIX), 1 (SUFFIX) or 2 (INSERT), got %lld",
                      i, (long long)v);
            goto fail;
        }
        (*out)[i] = (int)v;
    }
    *n = len;
    Py_DECREF(tup);
    return 0;
fail:
    Py_DECREF(tup);
    PyMem_Free(*out);
    *out = NULL;
    return -1;
}

/* Raises the error for a failed kernel status (only reached for NOMEM / unexpected codes). */
static PyObject *status_error(const char *func, int status)
{
    if (status == ST_ERR_NOMEM) return PyErr_NoMemory();
    return arg_error(PyExc_RuntimeError, func, "internal error (status %d)", status);
}

static PyObject *new_array(int nd, int64_t d0, int64_t d1, int type)
{
    npy_intp dims[2];
    dims[0] = (npy_intp)d0;
    dims[1] = (npy_intp)d1;
    return PyArray_EMPTY(nd, dims, type, 0);
}

/* ==== vocab ================================================================================ */

PyDoc_STRVAR(token_categories_doc,
"token_categories(texts, reencoded, offsets, special_ids) -> int8 array [V]\n\n"
"Category code of each id (std-algorithm section 1, rules in the documented order).");

static PyObject *py_token_categories(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "token_categories";
    static char *kwlist[] = {"texts", "reencoded", "offsets", "special_ids", NULL};
    PyObject *texts_o, *re_o, *off_o, *sp_o, *out = NULL;
    view_t re = VIEW_INIT, off = VIEW_INIT, sp = VIEW_INIT;
    strs_t texts = STRS_INIT;
    int64_t bad = -1;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:token_categories", kwlist, &texts_o, &re_o,
                                     &off_o, &sp_o))
        return NULL;
    if (strs_get(&texts, texts_o, F, "texts") < 0) goto fail;
    if (view_get(&re, module, re_o, F, "reencoded", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&off, module, off_o, F, "offsets", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&sp, module, sp_o, F, "special_ids", WANT_INT64, 1) < 0) goto fail;
    if (off.shape[0] != texts.n + 1) {
        arg_error(PyExc_ValueError, F, "offsets must have len(texts) + 1 = %lld entries, got %lld",
                  (long long)(texts.n + 1), (long long)off.shape[0]);
        goto fail;
    }
    out = new_array(1, texts.n, 0, NPY_INT8);
    if (!out) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = st_vocab_categories(texts.ptrs, texts.lens, texts.n, view_ivec(&re), view_ivec(&off),
                             view_ivec(&sp), (int8_t *)PyArray_DATA((PyArrayObject *)out), &bad);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_VALUE) {
        arg_error(PyExc_ValueError, F, "offsets[%lld] = %lld is out of range or decreasing "
                  "(offsets must rise from 0 to at most len(reencoded) = %lld)", (long long)bad,
                  (long long)ivec_get(view_ivec(&off), bad), (long long)re.shape[0]);
        goto fail;
    }
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    strs_release(&texts);
    view_release(&re);
    view_release(&off);
    view_release(&sp);
    return out;
fail:
    Py_XDECREF(out);
    strs_release(&texts);
    view_release(&re);
    view_release(&off);
    view_release(&sp);
    return NULL;
}

PyDoc_STRVAR(bytelevel_decode_doc,
"bytelevel_decode(tokens, invalid='hex') -> list[str]\n\n"
"GPT-2 byte-level stand-in strings (e.g. 'Ġthe') to UTF-8 text; invalid UTF-8 shown as\n"
"'<0xAB>' per byte (invalid='hex') or U+FFFD (invalid='replace').");

static PyObject *py_bytelevel_decode(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "bytelevel_decode";
    static char *kwlist[] = {"tokens", "invalid", NULL};
    PyObject *tokens_o, *invalid_o = NULL, *list = NULL;
    strs_t tokens = STRS_INIT;
    char *dst = NULL;
    int64_t *dst_off = NULL, bad = -1, i;
    uint32_t bad_cp = 0;
    int mode = ST_INVALID_HEX, rc;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:bytelevel_decode", kwlist, &tokens_o, &invalid_o))
        return NULL;
    if (invalid_o) {
        if (!PyUnicode_Check(invalid_o)) {
            return arg_error(PyExc_TypeError, F, "invalid must be 'hex' or 'replace', got %s",
                             Py_TYPE(invalid_o)->tp_name);
        }
        if (PyUnicode_CompareWithASCIIString(invalid_o, "hex") == 0) mode = ST_INVALID_HEX;
        else if (PyUnicode_CompareWithASCIIString(invalid_o, "replace") == 0) mode = ST_INVALID_REPLACE;
        else return arg_error(PyExc_ValueError, F, "invalid must be 'hex' or 'replace', got %R", invalid_o);
    }
    if (strs_get(&tokens, tokens_o, F, "tokens") < 0) goto fail;
    dst = (char *)PyMem_RawMalloc((size_t)(6 * tokens.total + 1));
    dst_off = (int64_t *)PyMem_RawMalloc((size_t)(tokens.n + 1) * sizeof(int64_t));
    if (!dst || !dst_off) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = st_vocab_bytelevel_decode(tokens.ptrs, tokens.lens, tokens.n, mode, dst, dst_off, &bad, &bad_cp);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_VALUE) {
        char cp[16];
        PyOS_snprintf(cp, sizeof cp, "U+%04X", (unsigned)bad_cp);
        arg_error(PyExc_ValueError, F, "tokens[%lld] = %R holds %s, which is not a GPT-2 "
                  "byte-level stand-in character", (long long)bad,
                  PyTuple_GET_ITEM(tokens.tuple, (Py_ssize_t)bad), cp);
        goto fail;
    }
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    list = PyList_New((Py_ssize_t)tokens.n);
    if (!list) goto fail;
    for (i = 0; i < tokens.n; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(dst + dst_off[i], (Py_ssize_t)(dst_off[i + 1] - dst_off[i]), "strict");
        if (!s) goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    strs_release(&tokens);
    return list;
fail:
    Py_XDECREF(list);
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    strs_release(&tokens);
    return NULL;
}

/* ==== insertion ============================================================================ */

PyDoc_STRVAR(build_token_batch_doc,
"build_token_batch(base_ids, base_offsets, token_ids, *, insert_num, variants=(0, 1, 2),\n"
"                  frame_prefix, frame_suffix, pad_id, max_length, seed)\n"
"-> (input_ids [N, L], attention_mask [N, L], lengths [N], index [N, 4])\n\n"
"Padded id rows of every (token, pair, variant, k) in token-major order.");

static PyObject *py_build_token_batch(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "build_token_batch";
    static char *kwlist[] = {"base_ids", "base_offsets", "token_ids", "insert_num", "variants",
                             "frame_prefix", "frame_suffix", "pad_id", "max_length", "seed", NULL};
    PyObject *bi_o, *bo_o, *ti_o, *k_o = NULL, *var_o = NULL, *fp_o = NULL, *fs_o = NULL;
    PyObject *pad_o = NULL, *ml_o = NULL, *seed_o = NULL;
    PyObject *ids = NULL, *mask = NULL, *lengths = NULL, *index = NULL;
    view_t bi = VIEW_INIT, bo = VIEW_INIT, ti = VIEW_INIT, fp = VIEW_INIT, fs = VIEW_INIT;
    int default_variants[3] = {0, 1, 2}, *variants = NULL, rc;
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
            return arg_error(PyExc_TypeError, F, "missing required keyword-only argument '%s'", missing);
    }
    if (get_int64(k_o, F, "insert_num", &spec.insert_num) < 0) goto fail;
    if (spec.insert_num < 1) {
        arg_error(PyExc_ValueError, F, "insert_num must be >= 1, got %lld", (long long)spec.insert_num);
        goto fail;
    }
    if (var_o) {
        if (get_variants(var_o, F, &variants, &spec.nv) < 0) goto fail;
        spec.variants = variants;
    } else {
        spec.variants = default_variants;
        spec.nv = 3;
    }
    if (get_int64(pad_o, F, "pad_id", &spec.pad_id) < 0) goto fail;
    if (get_int64(ml_o, F, "max_length", &spec.max_length) < 0) goto fail;
    if (get_seed(seed_o, F, &spec.seed) < 0) goto fail;
    if (view_get(&bi, module, bi_o, F, "base_ids", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&bo, module, bo_o, F, "base_offsets", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&ti, module, ti_o, F, "token_ids", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&fp, module, fp_o, F, "frame_prefix", WANT_INT64, 1) < 0) goto fail;
    if (view_get(&fs, module, fs_o, F, "frame_suffix", WANT_INT64, 1) < 0) goto fail;
    if (bo.shape[0] < 1) {
        arg_error(PyExc_ValueError, F, "base_offsets must hold P + 1 >= 1 entries, got 0");
        goto fail;
    }
    if (spec.max_length < fp.shape[0] + fs.shape[0]) {
        arg_error(PyExc_ValueError, F, "max_length (%lld) must be at least len(frame_prefix) + "
                  "len(frame_suffix) = %lld", (long long)spec.max_length,
                  (long long)(fp.shape[0] + fs.shape[0]));
        goto fail;
    }
    spec.base_ids = view_ivec(&bi);
    spec.base_offsets = view_ivec(&bo);
    spec.token_ids = view_ivec(&ti);
    spec.frame_prefix = view_ivec(&fp);
    spec.frame_suffix = view_ivec(&fs);
    rc = st_insert_batch_shape(&spec, &n_rows, &width, &bad);
    if (rc != ST_OK) {
        if (bad >= 0)
            arg_error(PyExc_ValueError, F, "base_offsets[%lld] = %lld is out of range or decreasing "
                      "(offsets must rise from 0 to at most len(base_ids) = %lld)", (long long)bad,
                      (long long)ivec_get(spec.base_offsets, bad), (long long)bi.shape[0]);
        else
            arg_error(PyExc_ValueError, F, "the batch is too large (T * P * len(variants) * insert_num overflows)");
        goto fail;
    }
    ids = new_array(2, n_rows, width, NPY_INT64);
    mask = new_array(2, n_rows, width, NPY_INT64);
    lengths = new_array(1, n_rows, 0, NPY_INT64);
    index = new_array(2, n_rows, 4, NPY_INT64);
    if (!ids || !mask || !lengths || !index) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = st_insert_build_batch(&spec, width, (int64_t *)PyArray_DATA((PyArrayObject *)ids),
                               (int64_t *)PyArray_DATA((PyArrayObject *)mask),
                               (int64_t *)PyArray_DATA((PyArrayObject *)lengths),
                               (int64_t *)PyArray_DATA((PyArrayObject *)index));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    PyMem_Free(variants);
    view_release(&bi);
    view_release(&bo);
    view_release(&ti);
    view_release(&fp);
    view_release(&fs);
    return Py_BuildValue("(NNNN)", ids, mask, lengths, index);
fail:
    Py_XDECREF(ids);
    Py_XDECREF(mask);
    Py_XDECREF(lengths);
    Py_XDECREF(index);
    PyMem_Free(variants);
    view_release(&bi);
    view_release(&bo);
    view_release(&ti);
    view_release(&fp);
    view_release(&fs);
    return NULL;
}

PyDoc_STRVAR(build_text_variants_doc,
"build_text_variants(token_texts, token_ids, base_texts, *, insert_num, variants=(0, 1, 2), seed)\n"
"-> (texts [N], index [N, 4])\n\n"
"The paper's prefix / suffix / insert strings, same seeding and row order as build_token_batch.");

static PyObject *py_build_text_variants(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "build_text_variants";
    static char *kwlist[] = {"token_texts", "token_ids", "base_texts", "insert_num", "variants",
                             "seed", NULL};
    PyObject *tt_o, *ti_o, *bt_o, *k_o = NULL, *var_o = NULL, *seed_o = NULL;
    PyObject *index = NULL, *list = NULL;
    strs_t tt = STRS_INIT, bt = STRS_INIT;
    view_t ti = VIEW_INIT;
    int default_variants[3] = {0, 1, 2}, *variants = NULL, rc;
    st_text_spec spec;
    int64_t n_rows = 0, n_bytes = 0, *dst_off = NULL, i;
    char *dst = NULL;
    memset(&spec, 0, sizeof spec);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|$OOO:build_text_variants", kwlist, &tt_o,
                                     &ti_o, &bt_o, &k_o, &var_o, &seed_o))
        return NULL;
    if (!k_o || !seed_o)
        return arg_error(PyExc_TypeError, F, "missing required keyword-only argument '%s'",
                         !k_o ? "insert_num" : "seed");
    if (get_int64(k_o, F, "insert_num", &spec.insert_num) < 0) goto fail;
    if (spec.insert_num < 1) {
        arg_error(PyExc_ValueError, F, "insert_num must be >= 1, got %lld", (long long)spec.insert_num);
        goto fail;
    }
    if (var_o) {
        if (get_variants(var_o, F, &variants, &spec.nv) < 0) goto fail;
        spec.variants = variants;
    } else {
        spec.variants = default_variants;
        spec.nv = 3;
    }
    if (get_seed(seed_o, F, &spec.seed) < 0) goto fail;
    if (strs_get(&tt, tt_o, F, "token_texts") < 0) goto fail;
    if (strs_get(&bt, bt_o, F, "base_texts") < 0) goto fail;
    if (view_get(&ti, module, ti_o, F, "token_ids", WANT_INT64, 1) < 0) goto fail;
    if (ti.shape[0] != tt.n) {
        arg_error(PyExc_ValueError, F, "token_ids must have one id per token text (%lld), got %lld",
                  (long long)tt.n, (long long)ti.shape[0]);
        goto fail;
    }
    spec.token_texts = tt.ptrs;
    spec.token_lens = tt.lens;
    spec.T = tt.n;
    spec.token_ids = view_ivec(&ti);
    spec.base_texts = bt.ptrs;
    spec.base_lens = bt.lens;
    spec.P = bt.n;
    rc = st_insert_text_size(&spec, &n_rows, &n_bytes);
    if (rc != ST_OK) {
        arg_error(PyExc_ValueError, F, "the batch is too large");
        goto fail;
    }
    dst = (char *)PyMem_RawMalloc((size_t)n_bytes + 1);
    dst_off = (int64_t *)PyMem_RawMalloc((size_t)(n_rows + 1) * sizeof(int64_t));
    index = new_array(2, n_rows, 4, NPY_INT64);
    if (!dst || !dst_off) {
        PyErr_NoMemory();
        goto fail;
    }
    if (!index) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = st_insert_build_texts(&spec, dst, dst_off, (int64_t *)PyArray_DATA((PyArrayObject *)index));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    list = PyList_New((Py_ssize_t)n_rows);
    if (!list) goto fail;
    for (i = 0; i < n_rows; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(dst + dst_off[i], (Py_ssize_t)(dst_off[i + 1] - dst_off[i]),
                                           "surrogatepass");
        if (!s) goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    PyMem_Free(variants);
    strs_release(&tt);
    strs_release(&bt);
    view_release(&ti);
    return Py_BuildValue("(NN)", list, index);
fail:
    Py_XDECREF(list);
    Py_XDECREF(index);
    PyMem_RawFree(dst);
    PyMem_RawFree(dst_off);
    PyMem_Free(variants);
    strs_release(&tt);
    strs_release(&bt);
    view_release(&ti);
    return NULL;
}

PyDoc_STRVAR(length_order_doc,
"length_order(lengths) -> int64 array\n\n"
"Stable permutation that sorts lengths ascending.");

static PyObject *py_length_order(PyObject *module, PyObject *arg)
{
    static const char *const F = "length_order";
    view_t v = VIEW_INIT;
    PyObject *out = NULL;
    int rc;
    if (view_get(&v, module, arg, F, "lengths", WANT_INT64, 1) < 0) goto fail;
    out = new_array(1, v.shape[0], 0, NPY_INT64);
    if (!out) goto fail;
    Py_BEGIN_ALLOW_THREADS
    rc = st_insert_length_order(view_ivec(&v), (int64_t *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    view_release(&v);
    return out;
fail:
    Py_XDECREF(out);
    view_release(&v);
    return NULL;
}

/* ==== statistics =========================================================================== */

PyDoc_STRVAR(row_distances_doc,
"row_distances(x, refs, ref_index) -> float64 [n, 3]\n\n"
"Cosine distance, euclidean and manhattan distance of x[i] to refs[ref_index[i]].");

static PyObject *py_row_distances(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "row_distances";
    static char *kwlist[] = {"x", "refs", "ref_index", NULL};
    PyObject *x_o, *r_o, *i_o, *out = NULL;
    view_t x = VIEW_INIT, r = VIEW_INIT, idx = VIEW_INIT;
    st_mat xm, rm;
    int64_t bad = -1;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:row_distances", kwlist, &x_o, &r_o, &i_o))
        return NULL;
    if (view_get(&x, module, x_o, F, "x", WANT_FLOAT, 2) < 0) goto fail;
    if (view_get(&r, module, r_o, F, "refs", WANT_FLOAT, 2) < 0) goto fail;
    if (view_get(&idx, module, i_o, F, "ref_index", WANT_INT64, 1) < 0) goto fail;
    if (x.shape[1] != r.shape[1]) {
        arg_error(PyExc_ValueError, F, "x has %lld columns but refs has %lld", (long long)x.shape[1],
                  (long long)r.shape[1]);
        goto fail;
    }
    if (idx.shape[0] != x.shape[0]) {
        arg_error(PyExc_ValueError, F, "ref_index must have one entry per row of x (%lld), got %lld",
                  (long long)x.shape[0], (long long)idx.shape[0]);
        goto fail;
    }
    if (st_stats_check_index(view_ivec(&idx), r.shape[0], &bad) != ST_OK) {
        arg_error(PyExc_ValueError, F, "ref_index[%lld] = %lld is out of range for refs with %lld rows",
                  (long long)bad, (long long)ivec_get(view_ivec(&idx), bad), (long long)r.shape[0]);
        goto fail;
    }
    out = new_array(2, x.shape[0], 3, NPY_FLOAT64);
    if (!out) goto fail;
    xm = view_mat(&x);
    rm = view_mat(&r);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_row_distances(&xm, &rm, view_ivec(&idx), (double *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    view_release(&x);
    view_release(&r);
    view_release(&idx);
    return out;
fail:
    Py_XDECREF(out);
    view_release(&x);
    view_release(&r);
    view_release(&idx);
    return NULL;
}

PyDoc_STRVAR(sticky_score_doc,
"sticky_score(seqs, td, a, b, c0) -> float64 [n]\n\n"
"(fall + a*n_fall + 0.1*td) / (rise + b*n_rise + c0) of each distance sequence.");

static PyObject *py_sticky_score(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "sticky_score";
    static char *kwlist[] = {"seqs", "td", "a", "b", "c0", NULL};
    PyObject *s_o, *t_o, *a_o, *b_o, *c_o, *out = NULL;
    view_t s = VIEW_INIT, t = VIEW_INIT;
    double a, b, c0;
    st_mat sm, tm;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO:sticky_score", kwlist, &s_o, &t_o, &a_o, &b_o, &c_o))
        return NULL;
    if (get_double(a_o, F, "a", &a) < 0 || get_double(b_o, F, "b", &b) < 0 ||
        get_double(c_o, F, "c0", &c0) < 0)
        return NULL;
    if (view_get(&s, module, s_o, F, "seqs", WANT_FLOAT, 2) < 0) goto fail;
    if (view_get(&t, module, t_o, F, "td", WANT_FLOAT, 1) < 0) goto fail;
    if (t.shape[0] != s.shape[0]) {
        arg_error(PyExc_ValueError, F, "td must have one entry per row of seqs (%lld), got %lld",
                  (long long)s.shape[0], (long long)t.shape[0]);
        goto fail;
    }
    out = new_array(1, s.shape[0], 0, NPY_FLOAT64);
    if (!out) goto fail;
    sm = view_mat(&s);
    tm = view_mat(&t);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_sticky_score(&sm, &tm, a, b, c0, (double *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    view_release(&s);
    view_release(&t);
    return out;
fail:
    Py_XDECREF(out);
    view_release(&s);
    view_release(&t);
    return NULL;
}

PyDoc_STRVAR(verify_counts_doc,
"verify_counts(seqs) -> uint8 [n]\n\n"
"1 where mean(D[1:]) - D[0] < 0 (the texts moved closer on average), else 0.");

static PyObject *py_verify_counts(PyObject *module, PyObject *arg)
{
    static const char *const F = "verify_counts";
    view_t s = VIEW_INIT;
    PyObject *out = NULL;
    st_mat sm;
    int rc;
    if (view_get(&s, module, arg, F, "seqs", WANT_FLOAT, 2) < 0) goto fail;
    if (s.shape[1] < 2) {
        arg_error(PyExc_ValueError, F, "seqs must have L >= 2 columns (d0 and at least one d_k), got %lld",
                  (long long)s.shape[1]);
        goto fail;
    }
    out = new_array(1, s.shape[0], 0, NPY_UINT8);
    if (!out) goto fail;
    sm = view_mat(&s);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_verify_counts(&sm, (uint8_t *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    view_release(&s);
    return out;
fail:
    Py_XDECREF(out);
    view_release(&s);
    return NULL;
}

PyDoc_STRVAR(mean_similarity_doc,
"mean_similarity(emb) -> float\n\n"
"Mean cosine similarity over all ordered pairs of emb's rows, |sum u_i|^2 / V^2.");

static PyObject *py_mean_similarity(PyObject *module, PyObject *arg)
{
    static const char *const F = "mean_similarity";
    view_t e = VIEW_INIT;
    double *work = NULL, result = 0.0;
    st_mat em;
    int rc;
    if (view_get(&e, module, arg, F, "emb", WANT_FLOAT, 2) < 0) goto fail;
    if (e.shape[0] == 0) {
        arg_error(PyExc_ValueError, F, "emb has no rows; the mean similarity of nothing is undefined");
        goto fail;
    }
    work = (double *)PyMem_RawMalloc((size_t)(2 * e.shape[1] + 1) * sizeof(double));
    if (!work) {
        PyErr_NoMemory();
        goto fail;
    }
    em = view_mat(&e);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_mean_similarity(&em, work, &result);
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    PyMem_RawFree(work);
    view_release(&e);
    return PyFloat_FromDouble(result);
fail:
    PyMem_RawFree(work);
    view_release(&e);
    return NULL;
}

PyDoc_STRVAR(pairwise_cosine_doc,
"pairwise_cosine(emb) -> float64 [n, n]\n\n"
"Cosine similarities of emb's rows (0 where a row is zero).");

static PyObject *py_pairwise_cosine(PyObject *module, PyObject *arg)
{
    static const char *const F = "pairwise_cosine";
    view_t e = VIEW_INIT;
    PyObject *out = NULL;
    double *work = NULL;
    st_mat em;
    int rc;
    if (view_get(&e, module, arg, F, "emb", WANT_FLOAT, 2) < 0) goto fail;
    if (e.shape[1] > 0 && e.shape[0] > (int64_t)(PY_SSIZE_T_MAX / 8) / e.shape[1]) {
        arg_error(PyExc_ValueError, F, "emb is too large (%lld x %lld)", (long long)e.shape[0],
                  (long long)e.shape[1]);
        goto fail;
    }
    out = new_array(2, e.shape[0], e.shape[0], NPY_FLOAT64);
    if (!out) goto fail;
    work = (double *)PyMem_RawMalloc((size_t)(e.shape[0] * e.shape[1] + 1) * sizeof(double));
    if (!work) {
        PyErr_NoMemory();
        goto fail;
    }
    em = view_mat(&e);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_pairwise_cosine(&em, work, (double *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    PyMem_RawFree(work);
    view_release(&e);
    return out;
fail:
    Py_XDECREF(out);
    PyMem_RawFree(work);
    view_release(&e);
    return NULL;
}

/* Percentiles q[nq] of a 1-D float argument into out[nq]; 0 or -1 with an exception set. */
static int percentiles(PyObject *module, PyObject *x_o, const char *F, const double *q, int64_t nq,
                       double *out)
{
    view_t x = VIEW_INIT;
    double *work = NULL;
    st_mat xm;
    int rc;
    if (view_get(&x, module, x_o, F, "x", WANT_FLOAT, 1) < 0) goto fail;
    work = (double *)PyMem_RawMalloc((size_t)(x.shape[0] + 1) * sizeof(double));
    if (!work) {
        PyErr_NoMemory();
        goto fail;
    }
    xm = view_mat(&x);
    Py_BEGIN_ALLOW_THREADS
    rc = st_stats_percentiles(&xm, q, nq, work, out);
    Py_END_ALLOW_THREADS
    if (rc == ST_ERR_EMPTY) {
        arg_error(PyExc_ValueError, F, "x holds no finite value (%lld values, NaNs skipped)",
                  (long long)x.shape[0]);
        goto fail;
    }
    if (rc != ST_OK) {
        status_error(F, rc);
        goto fail;
    }
    PyMem_RawFree(work);
    view_release(&x);
    return 0;
fail:
    PyMem_RawFree(work);
    view_release(&x);
    return -1;
}

PyDoc_STRVAR(percentile_doc,
"percentile(x, q) -> float\n\n"
"Linear-interpolation percentile (NumPy's default) of x's non-NaN values, q in [0, 100].");

static PyObject *py_percentile(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "percentile";
    static char *kwlist[] = {"x", "q", NULL};
    PyObject *x_o, *q_o;
    double q, out;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:percentile", kwlist, &x_o, &q_o)) return NULL;
    if (get_double(q_o, F, "q", &q) < 0) return NULL;
    if (!(q >= 0.0 && q <= 100.0)) return arg_error(PyExc_ValueError, F, "q must be in [0, 100], got %R", q_o);
    if (percentiles(module, x_o, F, &q, 1, &out) < 0) return NULL;
    return PyFloat_FromDouble(out);
}

PyDoc_STRVAR(iqr_fence_doc,
"iqr_fence(x, k=0.7) -> float\n\n"
"Q3 + k * (Q3 - Q1) with linear-interpolation quartiles; NaNs skipped.");

static PyObject *py_iqr_fence(PyObject *module, PyObject *args, PyObject *kwds)
{
    static const char *const F = "iqr_fence";
    static char *kwlist[] = {"x", "k", NULL};
    static const double q[2] = {25.0, 75.0};
    PyObject *x_o, *k_o = NULL;
    double k = 0.7, out[2];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:iqr_fence", kwlist, &x_o, &k_o)) return NULL;
    if (k_o && get_double(k_o, F, "k", &k) < 0) return NULL;
    if (percentiles(module, x_o, F, q, 2, out) < 0) return NULL;
    return PyFloat_FromDouble(out[1] + k * (out[1] - out[0]));
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

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    core_state *st = get_state(m);
    Py_VISIT(st->max_version);
    return 0;
}

static int core_clear(PyObject *m)
{
    core_state *st = get_state(m);
    Py_CLEAR(st->str_dlpack);
    Py_CLEAR(st->str_dlpack_device);
    Py_CLEAR(st->str_max_version);
    Py_CLEAR(st->max_version);
    return 0;
}

static void core_free(void *m)
{
    core_clear((PyObject *)m);
}

PyDoc_STRVAR(core_doc,
"stickytoken._core: the C kernels of stickytoken (see _core.pyi for the contract).");

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", core_doc, sizeof(core_state), core_methods,
    NULL, core_traverse, core_clear, core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m, *names = NULL;
    core_state *st;
    int i;
    import_array();
    m = PyModule_Create(&core_module);
    if (!m) return NULL;
    st = get_state(m);
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
    return m;
fail:
    Py_XDECREF(names);
    Py_DECREF(m);
    return NULL;
}
