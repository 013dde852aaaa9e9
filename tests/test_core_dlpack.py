"""The DLPack consumer of stickytoken._core.

Pins: torch CPU tensors of every float dtype (bfloat16 included) and int64 are read in place,
strided views included; capsules are consumed by the protocol (versioned capsule preferred,
version checked, renamed to its "used" name, deleter called exactly once, after the kernel,
also when another argument fails later); device memory (CUDA) is refused with BufferError
before anything is consumed; bad dtypes and lanes are ValueError.  Producers are built with
ctypes so that every field of the capsule can be controlled.
"""
import ctypes
import sys

import numpy as np
import pytest

from stickytoken import _core as C
from stickytoken import _reference as R

torch = pytest.importorskip("torch")


# ---- a DLPack producer made with ctypes --------------------------------------------------------
class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]

CODES = {"f": 2, "i": 0, "u": 1}


class Producer:
    """Exposes a NumPy array through a hand-made capsule; records what the consumer did."""

    def __init__(self, arr, *, device=1, version=(1, 0), lanes=1, code=None, bits=None,
                 compact=False, byte_offset=0, report_device=None, legacy_signature=False):
        self.arr = arr
        base_ptr = arr.ctypes.data - byte_offset
        self.shape = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
        self.strides = (ctypes.c_int64 * max(arr.ndim, 1))(*[s // arr.itemsize for s in arr.strides])
        tensor = DLTensor(ctypes.c_void_p(base_ptr), DLDevice(device, 0), arr.ndim,
                          DLDataType(CODES[arr.dtype.kind] if code is None else code,
                                     arr.itemsize * 8 if bits is None else bits, lanes),
                          self.shape, None if compact else self.strides, byte_offset)
        self.deleted = 0
        self.dlpack_calls = 0

        def deleter(_ptr):
            self.deleted += 1

        self._deleter = DELETER(deleter)
        self.version = version
        self.versioned = DLManagedTensorVersioned(DLPackVersion(*version) if version else DLPackVersion(1, 0),
                                                  None, self._deleter, 0, tensor)
        self.legacy = DLManagedTensor(tensor, None, self._deleter)
        self.capsule = None
        self.report_device = report_device
        if legacy_signature:
            self.__dlpack__ = self._legacy_dlpack

    def _make(self, versioned):
        if versioned:
            self._name = b"dltensor_versioned"
            self.capsule = _capsule_new(ctypes.addressof(self.versioned), self._name, None)
        else:
            self._name = b"dltensor"
            self.capsule = _capsule_new(ctypes.addressof(self.legacy), self._name, None)
        return self.capsule

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.dlpack_calls += 1
        return self._make(max_version is not None and self.version is not None)

    def _legacy_dlpack(self, stream=None):
        self.dlpack_calls += 1
        return self._make(False)

    def __getattr__(self, name):
        if name == "__dlpack_device__" and self.__dict__.get("report_device") is not None:
            return lambda: (self.report_device, 0)
        raise AttributeError(name)

    @property
    def capsule_name(self):
        return _capsule_name(self.capsule).decode()


def _x_refs(rng):
    x = rng.standard_normal((6, 5))
    refs = rng.standard_normal((2, 5))
    return x, refs, np.array([0, 1, 0, 1, 1, 0])


# ---- the protocol ------------------------------------------------------------------------------
def test_versioned_capsule_is_preferred_consumed_and_deleted_once():
    rng = np.random.default_rng(1)
    x, refs, idx = _x_refs(rng)
    p = Producer(x)
    got = C.row_distances(p, refs, idx)
    np.testing.assert_allclose(got, R.row_distances(x, refs, idx), rtol=1e-12)
    assert p.capsule_name == "used_dltensor_versioned"
    assert p.deleted == 1 and p.dlpack_calls == 1


def test_legacy_capsule_and_legacy_signature():
    rng = np.random.default_rng(2)
    x, refs, idx = _x_refs(rng)
    for p in (Producer(x, version=None), Producer(x, legacy_signature=True)):
        got = C.row_distances(p, refs, idx)
        np.testing.assert_allclose(got, R.row_distances(x, refs, idx), rtol=1e-12)
        assert p.capsule_name == "used_dltensor"
        assert p.deleted == 1


def test_null_strides_byte_offset_and_element_strides():
    rng = np.random.default_rng(3)
    big = rng.standard_normal((8, 10))
    refs = rng.standard_normal((1, 10))
    idx = np.zeros(8, np.int64)
    p = Producer(big, compact=True)                    # NULL strides: compact row-major
    np.testing.assert_allclose(C.row_distances(p, refs, idx), R.row_distances(big, refs, idx), rtol=1e-12)
    view = big[2:, 1::3]                               # element strides (10, 3), offset 2*10+1
    p = Producer(view, byte_offset=8 * 21)
    np.testing.assert_allclose(C.row_distances(p, refs[:, 1::3], idx[:6]),
                               R.row_distances(view, refs[:, 1::3], idx[:6]), rtol=1e-12)
    assert p.deleted == 1
    t = big.T                                          # transposed, via strides
    p = Producer(t)
    np.testing.assert_allclose(C.pairwise_cosine(p), R.pairwise_cosine(t), atol=1e-13)


def test_cuda_capsule_is_refused_and_left_unconsumed():
    x = np.zeros((3, 4))
    p = Producer(x, device=2)
    with pytest.raises(BufferError, match=r"row_distances: x: tensor is on cuda; call \.cpu\(\) first"):
        C.row_distances(p, x, np.zeros(3, np.int64))
    assert p.capsule_name == "dltensor_versioned"   # not consumed: the producer still owns it
    assert p.deleted == 0
    p = Producer(x, device=10)
    with pytest.raises(BufferError, match=r"tensor is on rocm"):
        C.mean_similarity(p)


def test_cuda_reported_by_dlpack_device_is_refused_before_export():
    x = np.zeros((3, 4))
    p = Producer(x, report_device=2)
    with pytest.raises(BufferError, match=r"tensor is on cuda; call \.cpu\(\) first"):
        C.mean_similarity(p)
    assert p.dlpack_calls == 0


def test_pinned_host_memory_is_readable():
    x = np.arange(12.0).reshape(3, 4)
    p = Producer(x, device=3, report_device=3)   # kDLCUDAHost
    assert C.mean_similarity(p) == pytest.approx(R.mean_similarity(x))
    assert p.deleted == 1


def test_unsupported_version_lanes_and_dtypes():
    x = np.zeros((3, 4))
    p = Producer(x, version=(2, 0))
    with pytest.raises(BufferError, match=r"unsupported DLPack version 2\.0"):
        C.mean_similarity(p)
    assert p.deleted == 0 and p.capsule_name == "dltensor_versioned"
    with pytest.raises(ValueError, match=r"mean_similarity: emb must be a float array .* got float64 x 2 lanes"):
        C.mean_similarity(Producer(x, lanes=2))
    with pytest.raises(ValueError, match=r"got int32"):
        C.mean_similarity(Producer(np.zeros((3, 4), np.int32)))
    with pytest.raises(ValueError, match=r"got complex128"):
        C.mean_similarity(Producer(x, code=5, bits=128))
    with pytest.raises(ValueError, match=r"length_order: lengths must be an int64 array, got float64"):
        C.length_order(Producer(np.zeros(3)))


def test_capsule_released_once_when_a_later_argument_fails():
    x = np.zeros((3, 4))
    p = Producer(x)
    with pytest.raises(ValueError, match=r"x has 4 columns but refs has 5"):
        C.row_distances(p, np.zeros((1, 5)), np.zeros(3, np.int64))
    assert p.deleted == 1 and p.capsule_name == "used_dltensor_versioned"
    q = Producer(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"ref_index\[0\] = 0 is out of range for refs with 0 rows"):
        C.row_distances(x, np.zeros((0, 4)), q)
    assert q.deleted == 1


def test_bad_producers_raise_buffer_error():
    class NotACapsule:
        def __dlpack__(self, **kw):
            return 42

    class Fails:
        def __dlpack__(self, **kw):
            raise RuntimeError("cannot export")

    with pytest.raises(BufferError, match=r"did not return an unused DLPack capsule"):
        C.mean_similarity(NotACapsule())
    with pytest.raises(BufferError, match=r"__dlpack__\(\) failed") as info:
        C.mean_similarity(Fails())
    cause = info.value.__cause__
    assert isinstance(cause, RuntimeError) and str(cause) == "cannot export"
    assert cause.__traceback__ is not None and cause.__traceback__.tb_frame.f_code.co_name == "__dlpack__"


def test_numpy_dlpack_producer_through_a_wrapper():
    class Wrap:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    x = np.random.default_rng(4).standard_normal((5, 7))[:, ::2]
    w = Wrap(x)
    assert C.mean_similarity(w) == pytest.approx(R.mean_similarity(x), rel=1e-12)
    before = sys.getrefcount(x)
    for _ in range(20):
        C.mean_similarity(w)
    assert sys.getrefcount(x) == before   # numpy's deleter ran each time


# ---- torch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_torch_tensors_of_every_float_dtype(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(33, 20, generator=g).to(dtype)
    refs = torch.randn(3, 20, generator=g).to(dtype)
    idx = torch.randint(0, 3, (33,), generator=g)
    want = R.row_distances(x.double().numpy(), refs.double().numpy(), idx.numpy())
    np.testing.assert_allclose(C.row_distances(x, refs, idx), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(C.row_distances(x.T.contiguous().T, refs, idx), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(C.row_distances(x[::2, ::3], refs[:, ::3], idx[::2]),
                               R.row_distances(x.double().numpy()[::2, ::3], refs.double().numpy()[:, ::3],
                                               idx.numpy()[::2]), rtol=1e-9, atol=1e-12)
    assert C.mean_similarity(x) == pytest.approx(R.mean_similarity(x.double().numpy()), rel=1e-10)


def test_torch_tensor_refcount_and_values_kept():
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(6)).bfloat16()
    keep = x.clone()
    before = sys.getrefcount(x)
    for _ in range(30):
        C.mean_similarity(x)
        C.pairwise_cosine(x)
    assert sys.getrefcount(x) == before
    assert torch.equal(x, keep)


def test_torch_requires_grad_is_a_buffer_error():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), requires_grad=True)
    with pytest.raises(BufferError, match=r"mean_similarity: emb: __dlpack__\(\) failed"):
        C.mean_similarity(x)
    assert C.mean_similarity(x.detach()) == pytest.approx(R.mean_similarity(x.detach().double().numpy()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_cuda_tensor_is_refused():
    with pytest.raises(BufferError, match=r"tensor is on cuda; call \.cpu\(\) first"):
        C.mean_similarity(torch.ones(3, 3, device="cuda"))
