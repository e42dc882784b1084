"""safe_open and load_file keep safetensors 0.8's contract: each test runs the same call through
the `safetensors` package and through shardstream and compares the outcomes (values byte for byte,
exceptions by type and message). Where shardstream knowingly differs, the test says so and pins
both sides (README, "The Python package").

scripts/check-safetensors-contract runs safetensors' own test files against shardstream."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
from conftest import crafted, raw

import shardstream

# Every dtype safetensors 0.8 knows, with the shape each gets in `dtypes_file`.
DTYPES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64",
          "U64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"]
SUB_BYTE = [("F4", "F4", [2, 4]), ("F4_odd", "F4", [2, 3]), ("F4_0d", "F4", [0, 3]),
            ("F6_E2M3", "F6_E2M3", [4]), ("F6_E3M2", "F6_E3M2", [2, 4])]
NAMES = DTYPES + [name for name, _, _ in SUB_BYTE]
FRAMEWORKS = ["pt", "np"]


def outcome(call):
    """("ok", value) or ("raise", exception)."""
    try:
        return "ok", call()
    except Exception as exc:  # noqa: BLE001 - the verdict, whatever its type
        return "raise", exc


def same_value(ours, ref) -> None:
    assert type(ours) is type(ref)
    if isinstance(ref, torch.Tensor):
        assert (ours.dtype, ours.shape, ours.device) == (ref.dtype, ref.shape, ref.device)
        # (a fresh contiguous copy: safetensors' slices are views, whose strides raw() keeps)
        dense = torch.contiguous_format
        assert raw(ours.clone(memory_format=dense)) == raw(ref.clone(memory_format=dense))
    elif isinstance(ref, np.ndarray):
        assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape)
        assert ours.tobytes() == ref.tobytes()
        assert ours.flags.writeable == ref.flags.writeable
    elif isinstance(ref, dict):
        assert list(ours) == list(ref)
        for key in ref:
            same_value(ours[key], ref[key])
    else:
        assert ours == ref


def same_error(ours: BaseException, ref: BaseException) -> None:
    """The same exception as far as a caller can tell: the type (LoadError for SafetensorError,
    the very builtin otherwise) and the message."""
    if isinstance(ref, safetensors.SafetensorError):
        assert isinstance(ours, shardstream.LoadError), repr(ours)
    else:
        assert type(ours) is type(ref), (repr(ours), repr(ref))
    assert str(ours) == str(ref)


def same_outcome(ours_call, ref_call):
    """Runs both, asserts the same outcome, returns shardstream's value (None when both raised)."""
    ref_kind, ref = outcome(ref_call)
    ours_kind, ours = outcome(ours_call)
    assert ours_kind == ref_kind, (ours, ref)
    if ref_kind == "raise":
        same_error(ours, ref)
        return None
    same_value(ours, ref)
    return ours


def checkpoint_bytes(specs, metadata=None, seed=0) -> bytes:
    """crafted's well-formed file, with BOOL tensors holding 0 and 1 only (other bytes are not
    bools: torch's copies turn them into 1)."""
    pairs, data = crafted.layout(specs, metadata, seed)
    data = bytearray(data)
    offset = 0
    for _, dtype, shape in specs:
        size = crafted.nbytes(dtype, shape)
        if dtype == "BOOL":
            data[offset:offset + size] = bytes(b & 1 for b in data[offset:offset + size])
        offset += size
    return crafted.pack(crafted.obj(pairs), bytes(data))


@pytest.fixture(scope="module")
def dtypes_file(tmp_path_factory):
    """Every dtype, 2x3 (sub-byte ones as in SUB_BYTE), with unaligned offsets between them."""
    specs = [(name, name, [2, 3]) for name in DTYPES]
    specs += [(name, dtype, shape) for name, dtype, shape in SUB_BYTE]
    path = tmp_path_factory.mktemp("contract") / "dtypes.safetensors"
    path.write_bytes(checkpoint_bytes(specs, metadata={"format": "pt"}, seed=3))
    return str(path)


@pytest.fixture(scope="module")
def sliced_file(tmp_path_factory):
    """The shapes the slicing edge cases need."""
    tensors = {
        "a": torch.arange(50, dtype=torch.float32).reshape(10, 5),
        "e": torch.zeros(0, 5),
        "z": torch.zeros(3, 0),
        "s": torch.tensor(1.5),
        "v": torch.arange(6, dtype=torch.int16),
        "c": torch.arange(2 * 3 * 4, dtype=torch.int64).reshape(2, 3, 4),
    }
    path = tmp_path_factory.mktemp("contract") / "sliced.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Handles


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("method, args", [
    ("keys", ()), ("offset_keys", ()), ("metadata", ()), ("get_tensors", ()),
    ("get_tensor", ("a",)), ("get_slice", ("a",)), ("get_tensor", ("nope",)),
])
def test_closed_handle(sliced_file, framework, method, args):
    with safetensors.safe_open(sliced_file, framework) as ref:
        pass
    with shardstream.safe_open(sliced_file, framework) as ours:
        pass
    same_outcome(lambda: getattr(ours, method)(*args), lambda: getattr(ref, method)(*args))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_slice_outlives_its_handle(sliced_file, framework):
    with safetensors.safe_open(sliced_file, framework) as ref:
        ref_slice = ref.get_slice("c")
    with shardstream.safe_open(sliced_file, framework) as ours:
        our_slice = ours.get_slice("c")
    same_outcome(lambda: our_slice[1, 1:], lambda: ref_slice[1, 1:])
    assert our_slice.get_shape() == ref_slice.get_shape() == [2, 3, 4]
    assert our_slice.get_dtype() == ref_slice.get_dtype() == "I64"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_handle_reenters_and_exits_twice(sliced_file, framework):
    for module in (safetensors, shardstream):
        f = module.safe_open(sliced_file, framework)
        assert f.__enter__() is f
        f.__exit__(None, None, None)
        f.__exit__(None, None, None)
        assert f.__enter__() is f


# ----------------------------------------------------------------------------------------------
# Opening: the file, the framework, the device, the backend, in safetensors' order


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["notafile", "nope/x.safetensors", ""])
def test_missing_file(tmp_path, monkeypatch, name, framework):
    monkeypatch.chdir(tmp_path)
    same_outcome(lambda: shardstream.safe_open(name, framework),
                 lambda: safetensors.safe_open(name, framework))
    if name:  # Path("") is "."
        same_outcome(lambda: shardstream.safe_open(Path(name), framework),
                     lambda: safetensors.safe_open(Path(name), framework))
    same_outcome(lambda: shardstream.load_file(name), lambda: safetensors.torch.load_file(name))
    with pytest.raises(FileNotFoundError) as info:
        shardstream.safe_open(name, framework)
    assert str(info.value) == f"No such file or directory: {name}"


def test_folder_is_an_oserror(tmp_path):
    """safetensors maps the folder and fails with ENODEV; shardstream says what it is. Both are
    OSError (shardstream.load_file reads folders of shards)."""
    with pytest.raises(OSError):
        safetensors.safe_open(str(tmp_path), "pt")
    with pytest.raises(IsADirectoryError):
        shardstream.safe_open(tmp_path, "pt")


@pytest.mark.parametrize("framework", ["pt", "torch", "pytorch", "np", "numpy", "PT", "Numpy",
                                       "xx", "", None, 1, b"pt"])
def test_framework_spellings(sliced_file, framework):
    same_outcome(lambda: shardstream.safe_open(sliced_file, framework).get_tensor("c"),
                 lambda: safetensors.safe_open(sliced_file, framework).get_tensor("c"))


@pytest.mark.parametrize("framework", ["tf", "tensorflow", "jax", "flax", "mlx", "paddle"])
def test_other_frameworks_are_refused(sliced_file, framework):
    """Frameworks whose tensors are not torch's: safetensors converts numpy arrays into them
    (ModuleNotFoundError where they are not installed); shardstream refuses them plainly."""
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.safe_open(sliced_file, framework)
    assert info.value.rule == "framework"


def test_invalid_framework_comes_before_missing_file():
    same_outcome(lambda: shardstream.safe_open("notafile", "xx"),
                 lambda: safetensors.safe_open("notafile", "xx"))


@pytest.mark.parametrize("filename", [1, None, 1.5, b"sliced.safetensors"])
def test_filename_types(filename):
    same_outcome(lambda: shardstream.safe_open(filename, "pt"),
                 lambda: safetensors.safe_open(filename, "pt"))


def test_pathlike_filename(sliced_file):
    class Spelled:
        def __fspath__(self):
            return sliced_file

    same_outcome(lambda: shardstream.safe_open(Spelled(), "pt").keys(),
                 lambda: safetensors.safe_open(Spelled(), "pt").keys())


# Spellings safetensors refuses, and those it takes for the CPU: the same verdict for both
# frameworks, with numpy refusing every device but the CPU after the file is found.
BAD_DEVICES = ["meta", "gpu", "CPU", "cpu:0", "cuda:0:1", "cuda:", "cuda:x", "cuda:-1",
               "cuda:99999999999999999999999", "mps:1", "mps:x", -1, 0.5, 2 ** 70, [0]]
CPU_DEVICES = ["cpu", None]
ACCELERATORS = ["cuda", "cuda:0", "cuda:+1", 0, 1, True, np.int64(0), "mps", "mps:0", "npu:0",
                "xla", "xpu:2", "hpu", "mlu", "musa:1"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("device", BAD_DEVICES + CPU_DEVICES, ids=repr)
def test_device_spellings(sliced_file, framework, device):
    same_outcome(lambda: shardstream.safe_open(sliced_file, framework, device).get_tensor("c"),
                 lambda: safetensors.safe_open(sliced_file, framework, device).get_tensor("c"))


@pytest.mark.parametrize("device", BAD_DEVICES + CPU_DEVICES, ids=repr)
def test_load_file_device_spellings(sliced_file, device):
    same_outcome(lambda: shardstream.load_file(sliced_file, device),
                 lambda: safetensors.torch.load_file(sliced_file, device))


@pytest.mark.parametrize("device", ACCELERATORS, ids=repr)
def test_accelerators_with_numpy(sliced_file, device):
    same_outcome(lambda: shardstream.safe_open(sliced_file, "np", device),
                 lambda: safetensors.safe_open(sliced_file, "np", device))
    # The file is looked for first.
    same_outcome(lambda: shardstream.safe_open("notafile", "np", device),
                 lambda: safetensors.safe_open("notafile", "np", device))


@pytest.mark.parametrize("device", ACCELERATORS, ids=repr)
def test_accelerators_with_torch(sliced_file, device):
    """safetensors takes every accelerator name torch knows and fails, if at all, when a tensor
    is read; shardstream fills the CPU and CUDA, and says so when the handle opens (rule
    "device", also for CUDA on a machine without one)."""
    safetensors.safe_open(sliced_file, "pt", device)
    if torch.cuda.is_available() and str(device).startswith(("cuda", "0", "1", "True")):
        pytest.skip("a GPU is present: tests/python/test_gpu.py covers cuda")
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.safe_open(sliced_file, "pt", device)
    assert info.value.rule == "device"


def test_torch_device_objects(sliced_file):
    """safetensors refuses torch.device objects ("device device(type='cpu') is invalid");
    shardstream takes them, as its other entry points do."""
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(sliced_file, "pt", torch.device("cpu"))
    with safetensors.safe_open(sliced_file, "pt") as ref:
        want = ref.get_tensor("c")
    for framework in FRAMEWORKS:
        got = shardstream.safe_open(sliced_file, framework, torch.device("cpu")).get_tensor("c")
        assert bytes(np.asarray(got).tobytes()) == raw(want)


@pytest.mark.parametrize("backend", ["mmap", "pread", "x", "MMAP", 'a"b', 1])
def test_backend(sliced_file, backend):
    same_outcome(lambda: shardstream.safe_open(sliced_file, "pt", backend=backend).keys(),
                 lambda: safetensors.safe_open(sliced_file, "pt", backend=backend).keys())
    same_outcome(lambda: shardstream.load_file(sliced_file, backend=backend),
                 lambda: safetensors.torch.load_file(sliced_file, backend=backend))


def test_argument_order(tmp_path):
    """safetensors checks the framework, then the device, then the backend, then the file."""
    cases = [("notafile", "xx", "meta", "x"), ("notafile", "pt", "meta", "x"),
             ("notafile", "pt", "cpu", "x"), ("notafile", "np", "cuda", "mmap")]
    for args in cases:
        same_outcome(lambda: shardstream.safe_open(*args[:3], backend=args[3]),
                     lambda: safetensors.safe_open(*args[:3], backend=args[3]))


# ----------------------------------------------------------------------------------------------
# Names, order, metadata


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_keys_offset_keys_metadata(tmp_path, framework):
    specs = [("zeta", "F32", [2]), ("empty_b", "F32", [0]), ("empty_a", "U8", [0, 4]),
             ("alpha", "I8", [3]), ("é/ü.名前", "U8", [1]), ("Beta", "F16", [2, 2]),
             ("_", "BOOL", [])]
    for metadata in (None, {}, {"format": "pt", "k": "ü"}):
        path = tmp_path / "names.safetensors"
        path.write_bytes(crafted.st_file(specs, metadata=metadata))
        with safetensors.safe_open(str(path), framework) as ref, \
                shardstream.safe_open(path, framework) as ours:
            assert ours.keys() == ref.keys()
            assert ours.metadata() == ref.metadata()
            # Empty tensors sit at one offset: safetensors orders those ties by hash order.
            ranked = [(name, ref.get_slice(name).get_shape()) for name in ref.offset_keys()]
            assert sorted(ours.offset_keys()) == sorted(ref.offset_keys())
            assert [n for n in ours.offset_keys() if not n.startswith("empty")] == \
                [n for n, _ in ranked if not n.startswith("empty")]


def test_empty_tensor_before_the_one_at_its_offset(tmp_path):
    """An empty tensor sorts before the tensor that starts where it sits, as safetensors sorts
    by (begin, end), whatever the header's order."""
    path = tmp_path / "tie.safetensors"
    safetensors.torch.save_file({"a": torch.ones(3), "b": torch.zeros(0), "c": torch.ones(2)},
                                str(path))
    with safetensors.safe_open(str(path), "pt") as ref, shardstream.safe_open(path) as ours:
        assert ours.offset_keys() == ref.offset_keys()
        same_value(ours.get_tensors(), ref.get_tensors())
    same_value(shardstream.load_file(path), safetensors.torch.load_file(str(path)))


@pytest.mark.parametrize("name", [1, None, b"a"], ids=repr)
@pytest.mark.parametrize("method", ["get_tensor", "get_slice"])
def test_tensor_name_types(sliced_file, method, name):
    same_outcome(lambda: getattr(shardstream.safe_open(sliced_file, "pt"), method)(name),
                 lambda: getattr(safetensors.safe_open(sliced_file, "pt"), method)(name))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("method", ["get_tensor", "get_slice"])
def test_missing_tensor(sliced_file, framework, method):
    same_outcome(lambda: getattr(shardstream.safe_open(sliced_file, framework), method)("nope"),
                 lambda: getattr(safetensors.safe_open(sliced_file, framework), method)("nope"))
    with pytest.raises(shardstream.LoadError) as info:
        getattr(shardstream.safe_open(sliced_file, framework), method)("nope")
    assert (info.value.rule, info.value.tensor) == ("missing-tensor", "nope")


# ----------------------------------------------------------------------------------------------
# Every dtype: whole tensors, get_tensors, load_file, slices


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", NAMES)
def test_get_tensor_every_dtype(dtypes_file, framework, name):
    same_outcome(lambda: shardstream.safe_open(dtypes_file, framework).get_tensor(name),
                 lambda: safetensors.safe_open(dtypes_file, framework).get_tensor(name))
    ours = shardstream.safe_open(dtypes_file, framework).get_slice(name)
    ref = safetensors.safe_open(dtypes_file, framework).get_slice(name)
    assert (ours.get_shape(), ours.get_dtype()) == (ref.get_shape(), ref.get_dtype())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_get_tensors_every_dtype(dtypes_file, tmp_path, framework):
    """The whole file fails as safetensors fails (its first refusal in offset order); the
    tensors each framework holds come back in offset order, byte-equal."""
    same_outcome(lambda: shardstream.safe_open(dtypes_file, framework).get_tensors(),
                 lambda: safetensors.safe_open(dtypes_file, framework).get_tensors())
    with safetensors.safe_open(dtypes_file, framework) as ref:
        held = [n for n in ref.offset_keys() if outcome(lambda: ref.get_tensor(n))[0] == "ok"]
    specs = [(n, ref_dtype, shape) for n, ref_dtype, shape in
             [(n, n, [2, 3]) for n in DTYPES] + SUB_BYTE if n in held]
    path = tmp_path / "held.safetensors"
    path.write_bytes(checkpoint_bytes(specs, seed=5))
    same_outcome(lambda: shardstream.safe_open(path, framework).get_tensors(),
                 lambda: safetensors.safe_open(str(path), framework).get_tensors())
    if framework == "pt":
        same_outcome(lambda: shardstream.load_file(path),
                     lambda: safetensors.torch.load_file(str(path)))


@pytest.mark.parametrize("name", ["F6_E2M3", "F4_odd"])
def test_load_file_refusals(tmp_path, name):
    spec = next(s for s in SUB_BYTE if s[0] == name)
    path = tmp_path / "refused.safetensors"
    path.write_bytes(crafted.st_file([("ok", "F32", [2]), spec]))
    same_outcome(lambda: shardstream.load_file(path),
                 lambda: safetensors.torch.load_file(str(path)))
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(path)
    assert (info.value.file, info.value.tensor) == (str(path), name)


SLICES = [0, -1, (slice(None), 1), (slice(None), slice(1, None)), (1, slice(0, 2)), ...,
          (), (slice(None, None, 2),), (0, -1), 5, (slice(None), -4)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("index", SLICES, ids=repr)
@pytest.mark.parametrize("name", NAMES)
def test_get_slice_every_dtype(dtypes_file, framework, name, index):
    ours = shardstream.safe_open(dtypes_file, framework).get_slice(name)
    ref = safetensors.safe_open(dtypes_file, framework).get_slice(name)
    if framework == "pt" and name == "F4":
        # safetensors 0.8 reshapes float4_e2m1fn_x2 bytes to the header's (logical) shape and
        # fails (RuntimeError, twice the elements); shardstream slices the tensor get_tensor
        # returns (two values a byte), as safetensors' get_tensor(name)[index] does.
        with pytest.raises(RuntimeError):
            ref[index]
        whole = safetensors.safe_open(dtypes_file, "pt").get_tensor(name)
        same_outcome(lambda: ours[index], lambda: whole[index])
        return
    if framework == "pt" and name in ("F4_odd", "F4_0d"):
        # An odd last dimension: safetensors slices the logical shape (RuntimeError from the same
        # reshape when there are bytes, torch's verdict on an empty tensor when there are
        # none); shardstream refuses as get_tensor refuses, torch holding no such tensor.
        same_outcome(lambda: ours[index], lambda: ref_get_tensor(dtypes_file, name))
        return
    same_outcome(lambda: ours[index], lambda: ref[index])


def ref_get_tensor(path, name):
    return safetensors.safe_open(path, "pt").get_tensor(name)


# ----------------------------------------------------------------------------------------------
# Slicing edge cases, in each framework's rules


NUMPY_INDICES = [
    slice(3, 3), slice(10, 10), slice(10, None), slice(9, None), slice(-3, None), slice(None, -1),
    slice(0, 5, 3), slice(0, None, 20), slice(0, 20), (slice(None), slice(None, 20)),
    (slice(None), slice(0, 5, 2)), (..., 1), (1, ...), (..., ...), (..., 0, 0, 0), (0, 0, 0),
    (0, -1), (-10, 0), (-11, 0), (slice(2, None), -6), (slice(2, None), 20), (True,),
    (False, 1), 2 ** 31, 2 ** 31 - 1, -2 ** 31, -2 ** 31 - 1, np.int64(2), torch.tensor(3),
    1.0, "x", None, [], [0, 1], [[]], (slice(None), []), ([],), (slice(0, 2), slice(1, 1)),
    (slice(None, None, 2 ** 40),), (slice(np.int64(1), np.int64(3)),), (slice(1.0, 3),),
    (slice(None, None, -1),), (slice(None, None, 0),), (slice(-1, None, 0),),
    slice(2 ** 64, None), slice(2 ** 64 - 1, None), slice(None, 2 ** 70),
    slice(None, None, 2 ** 63), slice(None, None, 2 ** 63 - 1), slice(None, None, -2 ** 64),
    slice(None, None, 1.5), slice("a", None), slice(None, None, True), slice(True, None),
    (slice(None), ...), (..., slice(None), slice(None)), (..., slice(None), slice(None),
                                                         slice(None)),
    (0, ..., 0), (..., -6), (..., 5), (slice(20, 30), 0), (20, 20), (-1, 20),
    (slice(None), slice(None), 0), (slice(None), slice(None), -1), np.array([1, 2]), np.array(1),
    (slice(None, None, 3), slice(1, None, 2)),
]


@pytest.mark.parametrize("index", NUMPY_INDICES, ids=repr)
def test_numpy_slicing(sliced_file, index):
    for name in ("a", "e", "z", "s", "v", "c"):
        same_outcome(lambda: shardstream.safe_open(sliced_file, "np").get_slice(name)[index],
                     lambda: safetensors.safe_open(sliced_file, "np").get_slice(name)[index])


@pytest.mark.parametrize("index", [slice(5, 3), (slice(2, 1),), (slice(None), slice(4, 1))],
                         ids=repr)
def test_numpy_reversed_bounds_select_nothing(sliced_file, index):
    """A start past its stop: safetensors 0.8 computes a negative size in an unsigned type and
    raises SystemError (or asks for an absurd allocation); shardstream selects nothing, as numpy
    does."""
    got = shardstream.safe_open(sliced_file, "np").get_slice("a")[index]
    want = np.arange(50, dtype=np.float32).reshape(10, 5)[index]
    assert (got.dtype, got.shape) == (want.dtype, want.shape)


@pytest.mark.parametrize("index", [(), ..., 0, 1, slice(None), slice(0, 1), slice(1, 2),
                                   (0, slice(0, 2)), (slice(None), slice(0, 2)),
                                   (slice(None), 1), (1, slice(2, 4)), (1, slice(1, 3)),
                                   (slice(None), slice(None, None, 2))], ids=repr)
@pytest.mark.parametrize("name", ["F4", "F4_odd", "F4_0d", "F6_E2M3", "F6_E3M2"])
def test_numpy_sub_byte_verdicts(dtypes_file, name, index):
    """Sub-byte dtypes have no numpy dtype, but safetensors judges the slice first: a cut inside
    a byte is its "subbytes" SafetensorError, else numpy's AttributeError (F4) or its "Dtype not
    understood" (F6)."""
    same_outcome(lambda: shardstream.safe_open(dtypes_file, "np").get_slice(name)[index],
                 lambda: safetensors.safe_open(dtypes_file, "np").get_slice(name)[index])


TORCH_INDICES = [
    0, -1, 9, 10, -11, (0, 0, 0), (0, 0, 0, 0), slice(None, None, -1), slice(0, 2, 0),
    slice(-3, None), slice(None, -1), slice(5, 3), slice(0, 100), slice(2 ** 64, None),
    slice(1.5, None), 2 ** 63, (..., ...), None, (None, 0), [],
    [0, 2], [[0, 1]], [True] * 10, torch.tensor([1, 3]), np.int64(1), (slice(None), [0, 2]),
    (..., 1), (1, ...), (slice(None), slice(1, 7, 3)), (-2, -1), "x", 1.5,
]


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("index", TORCH_INDICES, ids=repr)
def test_torch_slicing(sliced_file, index):
    for name in ("a", "e", "z", "s", "v", "c"):
        same_outcome(lambda: shardstream.safe_open(sliced_file, "pt").get_slice(name)[index],
                     lambda: safetensors.safe_open(sliced_file, "pt").get_slice(name)[index])


def test_numpy_results_are_their_own_memory(sliced_file):
    """Writable arrays, independent of each other and of the file, like safetensors' copies."""
    f = shardstream.safe_open(sliced_file, "np")
    a, b = f.get_tensor("c"), f.get_slice("c")[...]
    a[0, 0, 0] = -1
    assert b[0, 0, 0] == 0 and f.get_tensor("c")[0, 0, 0] == 0
    assert os.path.getsize(sliced_file) > 0


def test_numpy_load_file_reads_through_shardstream(sliced_file, monkeypatch):
    """safetensors.numpy.load_file is safe_open(framework="np").get_tensors(): with shardstream's
    safe_open in its place it returns the same arrays."""
    want = safetensors.numpy.load_file(sliced_file)
    monkeypatch.setattr(safetensors.numpy, "safe_open", shardstream.safe_open)
    same_value(safetensors.numpy.load_file(sliced_file), want)
