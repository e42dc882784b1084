"""fill(): views, source slices, casts, shape errors; nothing outside the targets is touched."""

from __future__ import annotations

import pytest
import torch
import safetensors
from conftest import raw

import shardstream


def test_whole_tensors_dict_and_tuples(sample):
    path, tensors = sample
    dst = {k: torch.empty_like(v) for k, v in tensors.items()}
    report = shardstream.fill(path, dst)
    assert report.bytes == sum(v.numel() * v.element_size() for v in tensors.values())
    for k, v in tensors.items():
        assert raw(dst[k]) == raw(v), k
    again = torch.empty_like(tensors["fused"])
    shardstream.fill(path, [("fused", again)])
    assert torch.equal(again, tensors["fused"])


def test_strided_view_of_a_fused_parameter(sample):
    """The checkpoint's 'half' lands in columns 3..10 of a bigger tensor; the rest is untouched."""
    path, tensors = sample
    big = torch.full((5, 12), -7.0, dtype=torch.float16)
    shardstream.fill(path, [("half", big[:, 3:10])])
    assert torch.equal(big[:, 3:10], tensors["half"])
    assert (big[:, :3] == -7).all() and (big[:, 10:] == -7).all()


def test_transposed_destination(sample):
    path, tensors = sample
    base = torch.zeros(7, 5, dtype=torch.float16)
    shardstream.fill(path, [("half", base.t())])
    assert torch.equal(base.t(), tensors["half"])


def test_source_slice_into_view(sample):
    path, tensors = sample
    src = tensors["fused"]
    out = torch.zeros(2, 4, 16)
    shardstream.fill(path, [("fused", (slice(2, 4), ..., slice(None)), out[:, :, 4:12]),
                            ("fused", (slice(0, 2),), out[:, :, 12:16].new_empty(2, 4, 8))])
    assert torch.equal(out[:, :, 4:12], src[2:4])
    assert (out[:, :, :4] == 0).all() and (out[:, :, 12:] == 0).all()


def test_tensor_parallel_shards(sample):
    """Each 'rank' reads its row shard and its column shard of the same tensor."""
    path, tensors = sample
    src = tensors["fused"].reshape(6, 32)
    path2 = path.parent / "tp.safetensors"
    safetensors.torch.save_file({"w": src.contiguous()}, str(path2))
    for rank in range(2):
        rows = torch.empty(3, 32)
        cols = torch.empty(6, 16)
        shardstream.fill(path2, [("w", (slice(3 * rank, 3 * rank + 3),), rows),
                                 ("w", (slice(None), slice(16 * rank, 16 * rank + 16)), cols)])
        assert torch.equal(rows, src[3 * rank:3 * rank + 3])
        assert torch.equal(cols, src[:, 16 * rank:16 * rank + 16])


def test_same_name_twice(sample):
    path, tensors = sample
    a, b = torch.empty(10, dtype=torch.int64), torch.empty(10, dtype=torch.int64)
    shardstream.fill(path, [("vec", a), ("vec", b)])
    assert torch.equal(a, tensors["vec"]) and torch.equal(b, tensors["vec"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cast_into_view(sample, dtype):
    path, tensors = sample
    for name in ("fused", "half", "bf"):
        want = tensors[name].to(dtype)
        out = torch.zeros(want.shape[:-1] + (want.shape[-1] + 2,), dtype=dtype)
        shardstream.fill(path, [(name, out[..., 1:-1])])
        assert raw(out[..., 1:-1].contiguous()) == raw(want), name
        assert (out[..., 0] == 0).all() and (out[..., -1] == 0).all()


def test_errors(sample):
    path, _ = sample
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"fused": torch.empty(6, 4, 7)})
    assert info.value.rule == "shape" and info.value.tensor == "fused"
    with pytest.raises(shardstream.LoadError) as info:  # floats never convert into integers
        shardstream.fill(path, {"half": torch.empty(5, 7, dtype=torch.int16)})
    assert info.value.rule == "cast"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"nope": torch.empty(1)})
    assert info.value.rule == "missing-tensor"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"vec": torch.empty(1, dtype=torch.int64).expand(10)})
    assert info.value.rule == "slice" and info.value.tensor == "vec"  # elements overlap
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"vec": torch.empty(10, dtype=torch.int64, device="meta")})
    assert info.value.rule == "device"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"fused": torch.empty(6, 4, 8)}, io="bogus")
    assert info.value.rule == "option"


def test_threads_from_python_threads(sample):
    """Several loads at once from Python threads (the GIL is released while reading)."""
    import threading

    path, tensors = sample
    errors = []

    def work():
        try:
            for _ in range(20):
                got = shardstream.load_file(path)
                assert all(raw(got[k]) == raw(v) for k, v in tensors.items())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
