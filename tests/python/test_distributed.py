"""process_group=: loading on the ranks of a torch.distributed group (gloo, 127.0.0.1).

Each test spawns 2 or 4 ranks (tests/python/distributed_worker.py) over a TCP store with a 10 s
group timeout, and reads what each rank saw: every tensor byte-equal to safetensors (replicated)
or to torch.tensor_split of it (sharded), the storage bytes each rank read (/proc/self/io, with
O_DIRECT so the page cache cannot hide a second read) and shardstream's own per-rank counts.
The failure cases check that every rank ends with LoadError rule "distributed" within the
timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
GROUP_TIMEOUT_S = 10  # distributed_worker.GROUP_TIMEOUT_S
BLOCK = 4096          # O_DIRECT alignment slack per end of a read range
# What one rank's buffered read of a file's header may fetch from storage (/proc/self/io counts
# pages, not bytes): the kernel's readahead window around it, read_ahead_kb's default 128 KiB.
# The first rank to read a cold header pays it; the others find the pages cached. Small against
# what a second read of the tensors would add (the whole file).
HEADER_READAHEAD = 128 << 10

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def _checkpoint_tensors() -> dict:
    g = torch.Generator().manual_seed(27)
    print("seed 27")

    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=g).to(dtype)

    def randint(*shape, dtype, high=1 << 15):
        return torch.randint(0, high, shape, generator=g, dtype=torch.int64).to(dtype)

    return {
        "emb": randn(1000, 1000, dtype=torch.float16),
        "norm": randn(1000),
        "scalar": randn(),
        "empty": randn(0, 4),
        "f8": randn(300, 700).to(torch.float8_e4m3fn),
        "u16": randint(1234, dtype=torch.uint16),
        "u32": randint(77, 13, dtype=torch.uint32),
        "i64": randint(5, dtype=torch.int64),
        "flag": randint(33, dtype=torch.bool, high=2),
        "big": randint(3_000_001, dtype=torch.uint8, high=256),
        "layer.a.row": randn(64, 4096),
        "layer.d.row": randn(10, 1000),
        "layer.b.col": randn(8, 262144),
        "layer.c.col": randn(4, 524288, dtype=torch.bfloat16),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # On the test's disk (not tmpfs), so that O_DIRECT reads reach storage.
    path = tmp_path_factory.mktemp("distributed") / "model.safetensors"
    save_file(_checkpoint_tensors(), str(path))
    os.sync()
    return path


def _tensor_bytes(path: Path, names=None) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as f:
        for n in f.keys():
            if names is None or names(n):
                t = f.get_slice(n)
                numel = 1
                for d in t.get_shape():
                    numel *= d
                total += numel * {"F16": 2, "BF16": 2, "F32": 4, "F8_E4M3": 1, "U16": 2,
                                  "U32": 4, "I64": 8, "BOOL": 1, "U8": 1}[t.get_dtype()]
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, checkpoint, scenarios: str, out: Path, wall_s: float = 120) -> list:
    """Runs `world` ranks to the end (killing them past `wall_s`); their JSON results."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(port),
                               str(out), str(checkpoint), scenarios], env=env)
             for r in range(world)]
    deadline = time.monotonic() + wall_s
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"ranks still running after {wall_s} s: a hang")
    results = []
    for r in range(world):
        f = out / f"rank{r}.json"
        results.append(json.loads(f.read_text()) if f.exists() else None)
    return codes, results


def _check_replicated(results: list, scenario: str, world: int, tensor_bytes: int,
                      header_bytes: int) -> None:
    share = tensor_bytes / world
    total = 0
    for rank, res in enumerate(results):
        got = res[scenario]
        assert "error" not in got, got
        assert got["diff"] == [], f"rank {rank}: {got['diff']} differ from safetensors"
        read = got["storage_read_bytes"]
        assert read >= 0, "/proc/self/io has no read_bytes"
        total += read
        # Within 10% of its share (headers and O_DIRECT alignment apart).
        assert abs(read - share) <= 0.1 * share + header_bytes + 2 * BLOCK, (rank, read, share)
        if "report" in got:
            rep = got["report"]
            assert rep["needed_bytes"] == tensor_bytes
            assert abs(rep["read_bytes"] - share) <= 0.1 * share, (rank, rep)
            assert rep["received_bytes"] + rep["read_bytes"] >= tensor_bytes
            assert rep["received_bytes"] <= tensor_bytes - rep["read_bytes"] + 2 * BLOCK
    # Each byte read once: the sum over the ranks is the tensor bytes plus alignment slack.
    assert tensor_bytes <= total <= tensor_bytes + world * (2 * BLOCK + header_bytes), total


def _header_bytes(path: Path) -> int:
    """Storage bytes a rank may read for the headers: the header itself, page-rounded, or the
    readahead window around it, whichever is larger."""
    header = os.path.getsize(path) - _tensor_bytes(path)
    return max(-(-header // BLOCK) * BLOCK, HEADER_READAHEAD)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_read_each_byte_once_and_match_safetensors(checkpoint, tmp_path, world):
    scenarios = "fill,load_file,sharded" if world == 4 else \
        "fill,load_file,sharded,mixed,experts,load_into"
    codes, results = _launch(world, checkpoint, scenarios, tmp_path)
    assert codes == [0] * world, results
    tensor_bytes = _tensor_bytes(checkpoint)
    header = _header_bytes(checkpoint)
    for scenario in ("fill", "load_file"):
        _check_replicated(results, scenario, world, tensor_bytes, header)
    for res in results:  # progress counts this rank's bytes, read or received, up to all of them
        calls = res["fill"]["progress"]
        assert calls and calls[-1] == [tensor_bytes, tensor_bytes], calls[-3:]
        assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))

    sharded = _tensor_bytes(checkpoint, lambda n: n.endswith((".row", ".col")))
    needed_sum = 0
    for rank, res in enumerate(results):
        got = res["sharded"]
        assert "error" not in got, got
        assert got["diff"] == [], f"rank {rank}: {got['diff']} differ from tensor_split"
        rep = got["report"]
        assert rep["received_bytes"] == 0 and rep["sent_bytes"] == 0, rep
        assert rep["read_bytes"] <= 1.05 * rep["needed_bytes"], rep
        assert got["storage_read_bytes"] <= 1.05 * rep["needed_bytes"] + header, got
        needed_sum += rep["needed_bytes"]
    assert needed_sum == sharded

    if world == 2:
        for rank, res in enumerate(results):
            for scenario in ("mixed", "experts", "load_into"):
                got = res[scenario]
                assert "error" not in got, (scenario, got)
                assert got["diff"] == [], (scenario, rank, got["diff"])
            assert res["mixed"]["iter_diff"] == []
            assert res["mixed"]["iter_batches"] > 1
        # names= placing each tensor on one rank: read once over the group, nothing sent.
        total = sum(res["experts"]["storage_read_bytes"] for res in results)
        assert total <= tensor_bytes + 2 * 16 * BLOCK + 2 * header


def _corrupt_copy(checkpoint: Path, dest: Path, how: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "model.safetensors"
    if how == "bad":
        data = bytearray(checkpoint.read_bytes())
        data[10:20] = b"!!!!!!!!!!"  # the header's JSON
        target.write_bytes(bytes(data))
    elif how == "different":
        tensors = _checkpoint_tensors()
        tensors["norm"] = tensors["norm"][:999].clone()
        save_file(tensors, str(target))
    else:
        shutil.copyfile(checkpoint, target)


@pytest.mark.parametrize("how", ["bad", "different"])
def test_a_file_that_differs_on_one_rank_fails_every_rank(checkpoint, tmp_path, how):
    for r in range(2):
        _corrupt_copy(checkpoint, tmp_path / f"r{r}", how if r == 1 else "same")
    codes, results = _launch(2, tmp_path / "r{rank}" / "model.safetensors", "load_file",
                             tmp_path)
    assert codes == [0, 0]
    for rank, res in enumerate(results):
        got = res["load_file"]
        assert got.get("error") == "distributed", (rank, got)
        assert "rank 1" in got["text"]
        assert got["seconds"] < GROUP_TIMEOUT_S, got


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_rank_that_dies_or_stalls_fails_the_others_within_the_timeout(checkpoint, tmp_path,
                                                                        how):
    codes, results = _launch(2, checkpoint, how, tmp_path)
    got = results[0][how]
    assert got.get("error") == "distributed", got
    assert got["seconds"] < GROUP_TIMEOUT_S + 5, got
    if how == "die":
        assert codes[1] == 3
    else:  # the stalled rank wakes to a group that has gone: it fails too
        assert results[1][how].get("error") == "distributed", results[1]


# In-process checks: no group needed.


def test_shard_parts_are_tensor_splits_parts():
    from shardstream import _distributed

    for shape in [(7,), (10, 3), (3, 10, 4), (0, 5), (2, 1)]:
        t = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)
        for dim in range(len(shape)):
            for world in (1, 2, 3, 4, 8):
                parts = torch.tensor_split(t, world, dim)
                for rank in range(world):
                    index = _distributed.shard_index((dim, rank, world), shape, "t", "f")
                    assert torch.equal(t[index], parts[rank]), (shape, dim, world, rank)
                    assert _distributed.shard_shape((dim, rank, world), shape) == \
                        tuple(parts[rank].shape)


def test_shard_refuses_what_tensor_split_cannot_cut():
    from shardstream import LoadError, _distributed

    for spec, shape in [((0, 0, 2), ()), ((2, 0, 2), (4, 4)), ((0, 2, 2), (4,)),
                        ((0, 0, 0), (4,))]:
        with pytest.raises(LoadError) as info:
            _distributed.shard_index(spec, shape, "t", "f")
        assert info.value.rule == "shard" and info.value.tensor == "t"


def test_shard_and_names_need_a_process_group(checkpoint):
    import shardstream

    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(checkpoint, {}, shard={"row": 0})
    assert info.value.rule == "option"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(checkpoint, names=["norm"])
    assert info.value.rule == "option"


def test_a_group_without_torch_distributed_initialised_is_refused(checkpoint):
    import shardstream

    if dist.is_initialized():
        pytest.skip("this process already has a default group")
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(checkpoint, process_group=object())
    assert info.value.rule == "distributed"
    assert "init_process_group" in str(info.value)


@pytest.mark.parametrize("model", ["llama", "mixtral"])
def test_transformers_tp_plan_reads_each_ranks_slices_byte_equal(tmp_path, model):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import tiny_models

    folder = tmp_path / model
    tiny_models.build(model, folder)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(HERE / "distributed_tp_worker.py"), str(folder), str(tmp_path)]
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=240,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["diff"] == [], (rank, got["diff"])
        assert got["same_logits"], rank
        assert got["sharded"] > 0, got
        if model == "mixtral":  # fused experts: a converter under TP stays transformers'
            assert got["loader"] == "transformers", got
            assert "weight converters" in got["reason"], got
            continue
        assert got["loader"] == "shardstream", got
        counts = got["distributed"]
        # Each rank reads its slices (Shard(1) as strided runs) and half of the replicated
        # tensors, and receives the other half.
        assert counts["read_bytes"] + counts["received_bytes"] == counts["needed_bytes"], counts
        assert counts["received_bytes"] > 0, counts
