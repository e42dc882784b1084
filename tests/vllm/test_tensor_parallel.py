"""`load_format="shardstream"` at `tensor_parallel_size=2` (issue 27): the two workers read the
checkpoint together over vLLM's own TP group (each about half, the group broadcasts the rest),
the engine answers exactly as with vLLM's own safetensors loader at TP=2, and a bad file fails
the start on both workers with shardstream's agreed error.

The workers are vLLM's (`distributed_executor_backend="mp"`: spawned processes, gloo on the CPU;
loaded_state_extension.py keeps each one's parameters as the loader left them).
`VLLM_CPU_OMP_THREADS_BIND="0|1"` gives each one core (without it, vLLM's NUMA binding asserts on
this machine). Reads use O_DIRECT (`direct: true`), so each worker's storage bytes
(/proc/self/io, kept by the loader in `shardstream.vllm.last_load`) are real reads that the page
cache cannot hide.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import MAX_TOKENS, greedy, make_llm, parameters_per_rank, shutdown

TP = 2
BLOCK = 4096  # O_DIRECT alignment: a rank's range may start and end inside a block
HEADER_READAHEAD = 128 << 10  # see _checkpoint_bytes


def load_counts(model) -> dict:
    """Runs in a worker (LLM.apply_model): what the shardstream loader recorded there."""
    import shardstream.vllm

    return dict(shardstream.vllm.last_load)


def _checkpoint_bytes(folder: str) -> tuple[int, int, int]:
    """(tensor bytes, header bytes, files) of the shards the index names, by the official
    safetensors reader. Header bytes are what a rank's buffered header reads may fetch from
    storage (/proc/self/io counts pages): each header page-rounded, or the kernel's readahead
    window around it (read_ahead_kb's default 128 KiB), whichever is larger."""
    from safetensors import safe_open

    with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = headers = 0
    for shard in shards:
        path = os.path.join(folder, shard)
        with open(path, "rb") as f:
            header = 8 + int.from_bytes(f.read(8), "little")
            headers += max(-(-header // BLOCK) * BLOCK, HEADER_READAHEAD)
        with safe_open(path, "pt") as f:
            for key in f.keys():
                t = f.get_slice(key)
                numel = 1
                for d in t.get_shape():
                    numel *= d
                tensors += numel * {"BF16": 2, "F16": 2, "F32": 4}[t.get_dtype()]
    return tensors, headers, len(shards)


def test_tp2_same_tokens_and_parameters_and_each_byte_read_once(
        llama_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    results = {}
    for load_format in ("shardstream", "safetensors"):
        extra = {"direct": True} if load_format == "shardstream" else {}
        llm = make_llm(llama_dir, load_format, tensor_parallel_size=TP,
                       distributed_executor_backend="mp", model_loader_extra_config=extra,
                       worker_extension_cls="loaded_state_extension.LoadedState")
        try:
            counts = llm.apply_model(load_counts) if load_format == "shardstream" else None
            results[load_format] = (greedy(llm), llm.collective_rpc("loaded_state"),
                                    parameters_per_rank(llm), counts)
        finally:
            shutdown(llm)

    (ids, text), loaded, running, counts = results["shardstream"]
    (want_ids, want_text), want_loaded, want_running, _ = results["safetensors"]
    assert len(ids) == MAX_TOKENS
    assert ids == want_ids, f"shardstream {ids} vs safetensors {want_ids}"
    assert text == want_text
    # Every rank's slice of every parameter, as each loader left it and as it runs.
    for what, ranks, want_ranks in (("loaded", loaded, want_loaded),
                                    ("running", running, want_running)):
        assert len(ranks) == len(want_ranks) == TP, what
        for rank, (state, want) in enumerate(zip(ranks, want_ranks)):
            assert state and sorted(state) == sorted(want), (what, rank)
            for name, tensor in want.items():
                got = state[name]
                assert got.dtype == tensor.dtype and got.shape == tensor.shape, (what, rank, name)
                assert torch.equal(got, tensor), f"rank {rank}: {what} {name} differs"
    # Not vacuous: the ranks hold different halves of the attention (TP really split it), and
    # the weights are the checkpoint's, not the decoy's zeros.
    qkv = [{n: t for n, t in state.items() if n.endswith("qkv_proj.weight")} for state in loaded]
    assert qkv[0] and all(t.abs().sum() > 0 for t in qkv[0].values())
    assert any(not torch.equal(qkv[0][n], qkv[1][n]) for n in qkv[0])

    # Each byte from storage once, summed over the ranks; each rank about half.
    tensor_bytes, header_bytes, files = _checkpoint_bytes(llama_dir)
    assert [c["rank"] for c in counts] == list(range(TP)) and all(c["world"] == TP
                                                                  for c in counts), counts
    for c in counts:
        assert c["needed_bytes"] == tensor_bytes, c  # replicated: every rank needs it all
        assert c["read_bytes"] + c["received_bytes"] >= tensor_bytes, c
        share = tensor_bytes / TP
        assert abs(c["read_bytes"] - share) <= 0.1 * share + 2 * files * BLOCK, c
        assert c["storage_read_bytes"] <= 0.6 * tensor_bytes + header_bytes + 2 * files * BLOCK, c
    engine_total = sum(c["read_bytes"] for c in counts)
    assert tensor_bytes <= engine_total <= tensor_bytes + TP * 2 * files * BLOCK, counts
    storage_total = sum(c["storage_read_bytes"] for c in counts)
    assert tensor_bytes <= storage_total, counts  # O_DIRECT: the reads reached storage
    assert storage_total <= tensor_bytes + TP * (header_bytes + 2 * files * BLOCK), counts


def test_tp2_truncated_shard_fails_on_every_rank(llama_dir: str, tmp_path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capfd: pytest.CaptureFixture) -> None:
    """A bad file ends the load on both workers with shardstream's agreed error (rule
    "distributed", naming the file), and the engine start fails instead of hanging."""
    import shutil

    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    folder = str(tmp_path / "truncated")
    shutil.copytree(llama_dir, folder)
    with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    os.truncate(os.path.join(folder, shard), os.path.getsize(os.path.join(folder, shard)) - 100)
    try:
        with pytest.raises(Exception):  # noqa: B017 - vLLM's own words for a failed start
            make_llm(folder, "shardstream", tensor_parallel_size=TP,
                     distributed_executor_backend="mp")
    finally:
        cleanup_dist_env_and_memory()
    # The workers' own logs (their output is this process's): both ranks raised the agreed error.
    captured = capfd.readouterr()
    text = captured.out + captured.err
    for rank in range(TP):
        assert any("LoadError" in line and f"rank {rank}: the load failed on" in line
                   and shard in line for line in text.splitlines()), text[-4000:]
