/*
 * intake.c -- how stickytoken._core takes its arguments in (declared in intake.h).
 *
 * Module state, the shared argument-error helpers, read-only views of NumPy arrays, buffers
 * and DLPack tensors (the DLPack consumer lives here), scalar / string / variants getters,
 * kernel-status errors and output allocation.  With module.c, the only file that includes
 * Python.h and NumPy; it uses the NumPy API table that module.c imports.
 */
#define NO_IMPORT_ARRAY
#include "intake.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

/* ==== module state ========================================================================= */

/* The state of module (borrowed). */
intake_state *intake_get_state(PyObject *module)
{
    return (intake_state *)PyModule_GetState(module);
}

/* ==== argument errors ====================================================================== */

/* Sets exc("func: <formatted message>"); returns NULL. */
PyObject *intake_arg_error(PyObject *exc, const char *func, const char *fmt, ...)
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

/* The pending exception, taken (the indicator cleared) as one normalized exception object with
 * its traceback, or NULL when none is pending.  Python 3.12 deprecates PyErr_Fetch/Restore in
 * favour of PyErr_GetRaisedException/SetRaisedException; older versions have only the former. */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raises `exc` again (a reference stolen); NULL clears the indicator.  The inverse of
 * take_exception. */
static void restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (!exc) {
        PyErr_Clear();
        return;
    }
    PyObject *type = (PyObject *)Py_TYPE(exc);
    Py_INCREF(type);
    PyErr_Restore(type, exc, PyException_GetTraceback(exc));
#endif
}

/* Replaces the pending exception by exc("func: name: <message>"), chaining the original as
 * its __cause__. */
static void error_from_cause(PyObject *exc, const char *func, const char *name, const char *what)
{
    PyObject *cause = take_exception(), *raised;
    PyErr_Format(exc, "%s: %s: %s (%S)", func, name, what, cause ? cause : Py_None);
    raised = take_exception();
    if (raised && cause) {
        PyException_SetCause(raised, cause);   /* steals cause */
        cause = NULL;
    }
    restore_exception(raised);
    Py_XDECREF(cause);
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

/* Name of a DLPack device type, for messages. */
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

/* 1 when the CPU can read memory of this DLPack device type (CPU and pinned host memory). */
static int dl_device_readable(int32_t t)
{
    return t == kDLCPU || t == kDLCUDAHost || t == kDLROCMHost;
}

/* ==== array views ========================================================================== */

/* Gives back what a view holds: calls a consumed capsule's deleter (exactly once) and drops
 * the references.  A pending exception survives the deleter (which may run Python code). */
void intake_view_release(intake_view *v)
{
    PyObject *pending;
    if (!v->managed && !v->capsule && !v->owner) return;
    pending = take_exception();
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
    restore_exception(pending);
}

/* What `want` asks for, in words, for messages. */
static const char *want_text(int want)
{
    return want == INTAKE_WANT_FLOAT ? "a float array (float16, bfloat16, float32 or float64)"
                                     : "an int64 array";
}

/* Checks the dimension count; sets ValueError naming the argument. */
static int check_ndim(const intake_view *v, const char *func, const char *name, int ndim)
{
    if (v->ndim != ndim) {
        intake_arg_error(PyExc_ValueError, func, "%s must be %d-D, got %d-D", name, ndim, v->ndim);
        return -1;
    }
    return 0;
}

/* View of a NumPy array (borrowed arr; the view takes its own reference or an aligned copy). */
static int view_from_numpy(intake_view *v, PyArrayObject *arr, const char *func, const char *name,
                           int want)
{
    PyArray_Descr *descr = PyArray_DESCR(arr);
    int i, kind = -1;
    if (descr->kind == 'f' && PyArray_ISNOTSWAPPED(arr)) {
        if (PyDataType_ELSIZE(descr) == 8) kind = INTAKE_F64;
        else if (PyDataType_ELSIZE(descr) == 4) kind = INTAKE_F32;
        else if (PyDataType_ELSIZE(descr) == 2) kind = INTAKE_F16;
    } else if (descr->kind == 'i' && PyDataType_ELSIZE(descr) == 8 && PyArray_ISNOTSWAPPED(arr)) {
        kind = INTAKE_I64;
    }
    if (kind < 0 || (want == INTAKE_WANT_FLOAT) != (kind != INTAKE_I64)) {
        intake_arg_error(PyExc_ValueError, func, "%s must be %s, got %S%s", name, want_text(want),
                         (PyObject *)descr, PyArray_ISNOTSWAPPED(arr) ? "" : " (non-native byte order)");
        return -1;
    }
    if (PyArray_NDIM(arr) > INTAKE_MAXDIM) {
        intake_arg_error(PyExc_ValueError, func, "%s has too many dimensions (%d)", name, PyArray_NDIM(arr));
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
static int view_from_dlpack(intake_view *v, PyObject *module, PyObject *obj, PyObject *dlpack,
                            const char *func, const char *name, int want)
{
    intake_state *st = intake_get_state(module);
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
            intake_arg_error(PyExc_BufferError, func, "%s: __dlpack_device__() must return a (type, id) tuple, got %R", name, dev);
            goto fail;
        }
        dtype_dev = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
        if (dtype_dev == -1 && PyErr_Occurred()) {
            error_from_cause(PyExc_BufferError, func, name, "__dlpack_device__() gave a bad device type");
            goto fail;
        }
        if (!dl_device_readable((int32_t)dtype_dev)) {
            intake_arg_error(PyExc_BufferError, func, "%s: tensor is on %s; call .cpu() first", name,
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
            intake_arg_error(PyExc_BufferError, func, "%s: unsupported DLPack version %u.%u (need 1.x)",
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
        intake_arg_error(PyExc_BufferError, func, "%s: __dlpack__() did not return an unused DLPack capsule", name);
        goto fail;
    }

    /* 3. device, lanes, dtype, dimensions */
    if (!dl_device_readable(t->device.device_type)) {
        intake_arg_error(PyExc_BufferError, func, "%s: tensor is on %s; call .cpu() first", name,
                         dl_device_name(t->device.device_type));
        goto fail;
    }
    if (t->dtype.lanes == 1) {
        if (t->dtype.code == kDLFloat && t->dtype.bits == 64) kind = INTAKE_F64;
        else if (t->dtype.code == kDLFloat && t->dtype.bits == 32) kind = INTAKE_F32;
        else if (t->dtype.code == kDLFloat && t->dtype.bits == 16) kind = INTAKE_F16;
        else if (t->dtype.code == kDLBfloat && t->dtype.bits == 16) kind = INTAKE_BF16;
        else if (t->dtype.code == kDLInt && t->dtype.bits == 64) kind = INTAKE_I64;
    }
    if (kind < 0 || (want == INTAKE_WANT_FLOAT) != (kind != INTAKE_I64)) {
        PyObject *txt = dl_dtype_text(t->dtype);
        if (txt) {
            intake_arg_error(PyExc_ValueError, func, "%s must be %s, got %U", name, want_text(want), txt);
            Py_DECREF(txt);
        }
        goto fail;
    }
    if (t->ndim < 0 || t->ndim > INTAKE_MAXDIM) {
        intake_arg_error(PyExc_ValueError, func, "%s has an unsupported number of dimensions (%d)", name, (int)t->ndim);
        goto fail;
    }
    itemsize = t->dtype.bits / 8;
    v->data = (const char *)t->data + t->byte_offset;
    v->kind = kind;
    v->ndim = t->ndim;
    v->itemsize = itemsize;
    for (i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            intake_arg_error(PyExc_BufferError, func, "%s: DLPack tensor has a negative extent", name);
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
        intake_arg_error(PyExc_BufferError, func, "%s: DLPack tensor data is not aligned to its %d-byte elements",
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
static int view_acquire(intake_view *v, PyObject *module, PyObject *obj, const char *func,
                        const char *name, int want)
{
    intake_state *st = intake_get_state(module);
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
    intake_arg_error(PyExc_TypeError, func, "%s must be a NumPy array, a buffer or a DLPack tensor, got %s",
                     name, Py_TYPE(obj)->tp_name);
    return -1;
}

/* A view of obj with exactly ndim dimensions (intake_view_get in intake.h). */
int intake_view_get(intake_view *v, PyObject *module, PyObject *obj, const char *func,
                    const char *name, int want, int ndim)
{
    if (view_acquire(v, module, obj, func, name, want) < 0) return -1;
    if (check_ndim(v, func, name, ndim) < 0) return -1;
    return 0;
}

/* v as a kernel matrix: rows x cols with byte strides (a 1-D view is one column). */
st_mat intake_view_mat(const intake_view *v)
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

/* A 1-D int64 view as a kernel vector. */
st_ivec intake_view_ivec(const intake_view *v)
{
    st_ivec r;
    r.data = (const int64_t *)(const void *)v->data;
    r.n = v->shape[0];
    r.stride = v->strides[0];
    return r;
}

/* ==== scalars, strings, variants =========================================================== */

/* An int argument (anything with __index__) as int64. */
int intake_get_int64(PyObject *obj, const char *func, const char *name, int64_t *out)
{
    PyObject *idx;
    long long val;
    if (PyFloat_Check(obj) || !PyIndex_Check(obj)) {
        intake_arg_error(PyExc_TypeError, func, "%s must be an int, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    idx = PyNumber_Index(obj);
    if (!idx) return -1;
    val = PyLong_AsLongLong(idx);
    Py_DECREF(idx);
    if (val == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        intake_arg_error(PyExc_ValueError, func, "%s is out of the int64 range", name);
        return -1;
    }
    *out = (int64_t)val;
    return 0;
}

/* A seed: any int, reduced modulo 2^64. */
int intake_get_seed(PyObject *obj, const char *func, uint64_t *out)
{
    PyObject *idx;
    unsigned long long val;
    if (PyFloat_Check(obj) || !PyIndex_Check(obj)) {
        intake_arg_error(PyExc_TypeError, func, "seed must be an int, got %s", Py_TYPE(obj)->tp_name);
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

/* A float argument (float, int, or anything with __float__) as double. */
int intake_get_double(PyObject *obj, const char *func, const char *name, double *out)
{
    if (!PyFloat_Check(obj) && !PyLong_Check(obj) && !PyIndex_Check(obj) &&
        !PyNumber_Check(obj)) {
        intake_arg_error(PyExc_TypeError, func, "%s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        intake_arg_error(PyExc_TypeError, func, "%s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

/* Drops the strings' references and arrays. */
void intake_strs_release(intake_strs *s)
{
    Py_CLEAR(s->tuple);
    Py_CLEAR(s->keep);
    PyMem_Free((void *)s->ptrs);
    PyMem_Free(s->lens);
    s->ptrs = NULL;
    s->lens = NULL;
}

/* UTF-8 pointers and lengths of a sequence of str (intake_strs_get in intake.h). */
int intake_strs_get(intake_strs *s, PyObject *obj, const char *func, const char *name)
{
    Py_ssize_t i, n;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
        intake_arg_error(PyExc_TypeError, func, "%s must be a sequence of str, got %s", name, Py_TYPE(obj)->tp_name);
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
            intake_arg_error(PyExc_TypeError, func, "%s[%zd] must be str, got %s", name, i, Py_TYPE(item)->tp_name);
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
int intake_get_variants(PyObject *obj, const char *func, int **out, int64_t *n)
{
    PyObject *tup;
    Py_ssize_t i, len;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
        intake_arg_error(PyExc_TypeError, func, "variants must be a sequence of int, got %s", Py_TYPE(obj)->tp_name);
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
        if (intake_get_int64(PyTuple_GET_ITEM(tup, i), func, nm, &v) < 0) goto fail;
        if (v < 0 || v > 2) {
            intake_arg_error(PyExc_ValueError, func, "variants[%zd] must be 0 (PREFIX), 1 (SUFFIX) or 2 (INSERT), got %lld",
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

/* ==== kernel status and outputs ============================================================ */

/* Raises the error for a failed kernel status (only reached for NOMEM / unexpected codes). */
PyObject *intake_status_error(const char *func, int status)
{
    if (status == ST_ERR_NOMEM) return PyErr_NoMemory();
    return intake_arg_error(PyExc_RuntimeError, func, "internal error (status %d)", status);
}

/* A new uninitialised C-contiguous array, 1-D [d0] or 2-D [d0, d1] (new reference). */
PyObject *intake_new_array(int nd, int64_t d0, int64_t d1, int type)
{
    npy_intp dims[2];
    dims[0] = (npy_intp)d0;
    dims[1] = (npy_intp)d1;
    return PyArray_EMPTY(nd, dims, type, 0);
}

