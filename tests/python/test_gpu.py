"""CUDA loads (pinned staging + cudaMemcpyAsync), against safetensors onto the same device.
Skip, with the reason, without a GPU or without CUDA uploads in this build."""

from __future__ import annotations

import pytest
import torch
import safetensors.torch
from conftest import FIXTURES_DIR, raw

import shardstream
from shardstream import _core


@pytest.fixture
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("no GPU: torch.cuda.is_available() is False")
    if not _core.cuda_built():
        pytest.skip("this shardstream extension has no CUDA uploads yet")
    return torch.device("cuda", 0)


@pytest.mark.parametrize("name", ["mixed", "dtypes"])
def test_load_file_on_gpu(gpu, name):
    path = FIXTURES_DIR / f"{name}.safetensors"
    ours = shardstream.load_file(path, device=gpu)
    ref = safetensors.torch.load_file(str(path), device="cuda:0")
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k].device == gpu and ours[k].dtype == ref[k].dtype
        assert raw(ours[k]) == raw(ref[k]), k


def test_load_into_meta_on_gpu(gpu, tmp_path):
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 4)
    path = tmp_path / "l.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(path))
    with torch.device("meta"):
        m = torch.nn.Linear(8, 4)
    shardstream.load_into(m, path, device=gpu)
    assert m.weight.device == gpu and torch.equal(m.weight.cpu(), ref.weight)


def test_without_gpu_rule_device(sample):
    if torch.cuda.is_available() and _core.cuda_built():
        pytest.skip("a GPU and CUDA uploads are present")
    path, _ = sample
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(path, device="cuda:0")
    assert info.value.rule == "device" and "cuda:0" in str(info.value)
    with pytest.raises(shardstream.LoadError) as info:
        list(shardstream.iter_tensors(path, device=0))
    assert info.value.rule == "device"
