"""`load_format="shardstream"` in a real vLLM engine (CPU build): the same tokens and the same
parameters as vLLM's own safetensors loader, and clear failures for bad checkpoints and options."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import MAX_TOKENS, greedy, loaded_state, make_llm, parameters, shutdown


def test_import_pulls_in_neither_vllm_nor_transformers() -> None:
    code = ("import sys, shardstream.vllm; "
            "print(sorted(m for m in ('vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_entry_point_registers_the_loader_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import entry_points

    from vllm.config.load import LoadConfig
    from vllm.model_executor import model_loader
    from vllm.plugins import load_general_plugins

    import shardstream.vllm

    (entry,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "shardstream"]
    assert entry.value == "shardstream.vllm:register"
    load_general_plugins()
    loader = model_loader.get_model_loader(LoadConfig(load_format="shardstream"))
    assert type(loader) is shardstream.vllm.ShardstreamModelLoader

    # vLLM runs the plugin in each of its processes, and may run it twice in one: the second
    # call must not register again (vLLM would warn that it overwrites a loader).
    def refuse(name):
        raise AssertionError(f"register_model_loader({name!r}) called again")

    monkeypatch.setattr(model_loader, "register_model_loader", refuse)
    shardstream.vllm.register()
    again = model_loader.get_model_loader(LoadConfig(load_format="SHARDSTREAM"))
    assert type(again) is type(loader)


@pytest.mark.parametrize("extra, message", [
    ({"staging_mib": 64},
     "unknown key(s) 'staging_mib'; accepted keys: staging_mb, threads, io, direct, copy"),
    ({"staging_mb": 0},
     "model_loader_extra_config['staging_mb'] must be a positive integer, got 0"),
    ({"threads": "4"}, "model_loader_extra_config['threads'] must be a positive integer, got '4'"),
    ({"io": 1}, "model_loader_extra_config['io'] must be a string"),
    ({"direct": 1}, "model_loader_extra_config['direct'] must be true, false or \"auto\", got 1"),
    ({"copy": 1}, "model_loader_extra_config['copy'] must be true or false, got 1"),
])
def test_bad_extra_config_is_refused(extra: dict, message: str) -> None:
    from vllm.config.load import LoadConfig
    from vllm.model_executor import model_loader
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    with pytest.raises(ValueError) as error:
        model_loader.get_model_loader(
            LoadConfig(load_format="shardstream", model_loader_extra_config=extra))
    assert message in str(error.value)


# Every key the loader documents, with a value that is not its default, so that each can be seen
# to take effect in what the core reports for the reads.
DOCUMENTED_OPTIONS = {"staging_mb": 1, "threads": 1, "io": "pread", "direct": False}


def _record_iterators(monkeypatch: pytest.MonkeyPatch) -> list:
    import shardstream

    real = shardstream.iter_tensors
    made = []

    def recording(*args, **kwargs):
        iterator = real(*args, **kwargs)
        made.append((kwargs, iterator))
        return iterator

    monkeypatch.setattr(shardstream, "iter_tensors", recording)
    return made


def _largest_tensor_bytes(llama_dir: str) -> int:
    from safetensors import safe_open

    largest = 0
    for shard in _shards(llama_dir):
        with safe_open(os.path.join(llama_dir, shard), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                largest = max(largest, t.numel() * t.element_size())
    return largest


def test_every_documented_option_reaches_the_reads(llama_dir: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Owned CPU tensors (copy): every read option reaches the engine's reads.
    made = _record_iterators(monkeypatch)
    options = dict(DOCUMENTED_OPTIONS, copy=True)
    llm = make_llm(llama_dir, "shardstream", model_loader_extra_config=options)
    shutdown(llm)
    assert made, "the loader never called shardstream.iter_tensors"
    largest = _largest_tensor_bytes(llama_dir)
    for kwargs, iterator in made:
        for key, value in options.items():
            assert kwargs[key] == value, key
        # What the reads did: the asked-for backend, buffered, one thread, the staging bound.
        assert iterator.read["io"] == "pread"
        assert iterator.read["direct"] is False
        assert iterator.read["threads"] == 1
        assert 0 < iterator.peak_ahead_bytes <= max(1 << 20, largest)


def test_mapped_default_takes_threads_and_the_staging_bound(llama_dir: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU default hands out views of the mapping: nothing is read into memory of ours, so io
    # and direct have nothing to act on; threads sets the populate workers, staging_mb how far
    # population runs ahead of load_weights. Populate leaves chunks already in the page cache to
    # load_weights, so the shards' pages are dropped first for the workers to have work (a tmpfs
    # keeps them: then no worker runs at all).
    made = _record_iterators(monkeypatch)
    for shard in _shards(llama_dir):
        fd = os.open(os.path.join(llama_dir, shard), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    llm = make_llm(llama_dir, "shardstream", model_loader_extra_config=DOCUMENTED_OPTIONS)
    shutdown(llm)
    assert made, "the loader never called shardstream.iter_tensors"
    largest = _largest_tensor_bytes(llama_dir)
    for kwargs, iterator in made:
        for key, value in DOCUMENTED_OPTIONS.items():
            assert kwargs[key] == value, key
        read = iterator.read
        assert read["populated_bytes"] > 0
        cold = read["populated_bytes"] - read["populate_resident_bytes"]
        assert read["populate_threads"] == (1 if cold else 0), read
        assert 0 < iterator.peak_ahead_bytes <= max(1 << 20, largest)


@pytest.mark.parametrize("arch, extra", [
    ("llama", {}),
    # A 1 MB read-ahead bound: smaller than the checkpoint, so reads wait for the model.
    ("qwen2", {"staging_mb": 1}),
])
def test_same_tokens_and_parameters_as_vllms_loader(arch: str, extra: dict,
                                                    request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(f"{arch}_dir")
    results = {}
    for load_format in ("shardstream", "safetensors"):
        with loaded_state() as loaded:
            llm = make_llm(folder, load_format,
                           model_loader_extra_config=extra if load_format == "shardstream" else {})
        try:
            results[load_format] = (greedy(llm), loaded, parameters(llm))
        finally:
            shutdown(llm)
    (ids, text), loaded, running = results["shardstream"]
    (want_ids, want_text), want_loaded, want_running = results["safetensors"]
    assert len(ids) == MAX_TOKENS
    assert ids == want_ids, f"shardstream {ids} vs safetensors {want_ids}"
    assert text == want_text
    # As each loader left the model, and as it runs (after vLLM's repacking).
    for what, state, want in (("loaded", loaded, want_loaded), ("running", running, want_running)):
        assert sorted(state) == sorted(want), what
        for name, tensor in want.items():
            got = state[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, f"{what} {name}"
            assert torch.equal(got, tensor), f"{arch}: {what} {name} differs"
    # Not vacuous: the weights are the checkpoint's (random, seeded), not zeros from the decoy.
    qkv = [t for n, t in loaded.items() if n.endswith("qkv_proj.weight")]
    assert qkv and all(t.numel() > 0 and t.abs().sum() > 0 for t in qkv)


def _shards(folder: str) -> list[str]:
    with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def _start_fails(folder: str) -> BaseException:
    """Starts an engine on `folder` that must fail, and returns why; cleans up after it, so
    the next test can start one."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    try:
        llm = make_llm(folder, "shardstream")
    except Exception as error:  # noqa: BLE001 - what it is, is what the caller checks
        return error
    finally:
        gc.collect()
        cleanup_dist_env_and_memory()
    shutdown(llm)
    pytest.fail(f"the engine started on {folder}")


def test_truncated_shard_fails_engine_start_with_shardstreams_error(llama_dir: str,
                                                                    tmp_path) -> None:
    import shardstream

    folder = str(tmp_path / "truncated")
    shutil.copytree(llama_dir, folder)
    shard = os.path.join(folder, _shards(folder)[1])
    os.truncate(shard, os.path.getsize(shard) - 100)
    # The error shardstream itself gives for this file: the engine must fail with exactly it.
    with pytest.raises(shardstream.LoadError) as direct:
        list(shardstream.iter_tensors(shard))
    message = str(direct.value)
    assert "\n" not in message and os.path.basename(shard) in message

    failure = _start_fails(folder)
    chain = []
    e: BaseException | None = failure
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(e, shardstream.LoadError) and str(e) == message for e in chain), \
        f"engine start failed with {failure!r}, not with shardstream's {message!r}"


def test_parameter_missing_from_checkpoint_fails(llama_dir: str, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    folder = str(tmp_path / "missing")
    os.makedirs(folder)
    for name in os.listdir(llama_dir):
        if not name.endswith(".safetensors") and not name.endswith(".index.json"):
            shutil.copy(os.path.join(llama_dir, name), folder)
    tensors = {}
    for shard in _shards(llama_dir):
        tensors.update(load_file(os.path.join(llama_dir, shard)))
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    # One file, no index: the other way a checkpoint comes.
    save_file(tensors, os.path.join(folder, "model.safetensors"))

    failure = _start_fails(folder)
    text = "".join(f"{e}" for e in (failure, failure.__cause__) if e is not None)
    assert "were not filled from the checkpoint" in text
    assert "model.layers.1.post_attention_layernorm.weight" in text
