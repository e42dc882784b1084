"""load_into on stock modules, built on meta and on the CPU, against load_state_dict."""

from __future__ import annotations

import pytest
import torch
import safetensors.torch
from torch import nn

import shardstream


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.proj = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("table", torch.arange(4.0), persistent=False)


def reference_module(seed=0):
    torch.manual_seed(seed)
    m = Tied()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(17)
    return m


def save(m, path):
    state = {k: v for k, v in m.state_dict().items() if k != "head.weight"}  # tied: stored once
    safetensors.torch.save_file(state, str(path))
    return path


def reinit(m):
    m.table.copy_(torch.arange(4.0))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("on", ["meta", "cpu"])
def test_stock_modules(tmp_path, on):
    ref = reference_module()
    path = save(ref, tmp_path / "m.safetensors")
    with torch.device(on):
        m = Tied()
    report = shardstream.load_into(m, path, device="cpu" if on == "meta" else None,
                                   reinit=reinit)
    assert_same_state(m, ref)
    assert m.head.weight is m.embed.weight, "the tie survived"
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    assert ["embed.weight", "head.weight"] in report.tied
    assert report.non_persistent == ["table"] and torch.equal(m.table, torch.arange(4.0))
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert m.bn.num_batches_tracked.item() == 17 and m.bn.num_batches_tracked.dtype == torch.int64
    assert report.bytes == sum(t.numel() * t.element_size()
                               for t in safetensors.torch.load_file(str(path)).values())
    assert isinstance(m.embed.weight, nn.Parameter) and m.embed.weight.requires_grad
    stage_names = [s for s, _ in report.stages]
    assert stage_names[:2] == ["plan", "materialize"] and stage_names[-1] == "reinit"


def test_cpu_module_filled_in_place(tmp_path):
    ref = reference_module()
    path = save(ref, tmp_path / "m.safetensors")
    m = Tied()
    before = {k: v.data_ptr() for k, v in m.state_dict().items()}
    shardstream.load_into(m, path)
    assert {k: v.data_ptr() for k, v in m.state_dict().items()} == before, "no second copy"
    assert_same_state(m, ref)


def test_meta_needs_device_and_reinit(tmp_path):
    path = save(reference_module(), tmp_path / "m.safetensors")
    with torch.device("meta"):
        m = Tied()
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_into(m, path)
    assert info.value.rule == "device"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_into(m, path, device="cpu")
    assert info.value.rule == "reinit" and "table" in str(info.value)


def test_strict_refuses_before_reading(tmp_path):
    ref = reference_module()
    state = {k: v for k, v in ref.state_dict().items() if k not in ("head.weight", "proj.bias")}
    state["extra.weight"] = torch.ones(2)
    state["norm.weight"] = torch.ones(7)
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(state, str(path))
    m = Tied()
    before = m.proj.weight.clone()
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_into(m, path)
    msg = str(info.value)
    assert info.value.rule == "strict"
    assert "proj.bias" in msg and "extra.weight" in msg and "norm.weight" in msg
    assert torch.equal(m.proj.weight, before), "nothing was read"
    report = shardstream.load_into(m, path, strict=False)
    assert report.missing == ["proj.bias"] and report.unexpected == ["extra.weight"]
    assert report.mismatched == ["norm.weight"]
    assert torch.equal(m.proj.weight, ref.proj.weight)


def test_key_mapping(tmp_path):
    ref = reference_module()
    state = {f"model.{k}": v for k, v in ref.state_dict().items() if k != "head.weight"}
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(state, str(path))
    m = Tied()
    shardstream.load_into(m, path, key_mapping={r"^model\.": ""})
    assert_same_state(m, ref)
    # Renamings chain, in order: model.proj → model.tmp → proj.
    state = {k.replace("proj.", "old_proj."): v for k, v in state.items()}
    safetensors.torch.save_file(state, str(path))
    m = Tied()
    shardstream.load_into(m, path, key_mapping={r"old_proj": "tmp", r"^model\.": "",
                                                r"^tmp\.": "proj."})
    assert_same_state(m, ref)


def test_dtype_differs_is_cast(tmp_path):
    ref = reference_module()
    path = save(ref, tmp_path / "m.safetensors")
    with torch.device("meta"):
        m = Tied().to(torch.bfloat16)
    shardstream.load_into(m, path, device="cpu", reinit=lambda mod: None)
    assert m.proj.weight.dtype == torch.bfloat16
    assert torch.equal(m.proj.weight, ref.proj.weight.to(torch.bfloat16))
    assert m.bn.num_batches_tracked.dtype == torch.int64
