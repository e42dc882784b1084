"""Mapped CPU tensors (shardstream._mapped): load_file(mmap=True), iter_tensors on the CPU and
shardstream.transformers on the CPU hand out views of a private mapping of the file, made
resident by parallel populate workers. Checked against the safetensors package: the bytes, that
writes never reach the file, the mapping's lifetime, population and yield order."""

from __future__ import annotations

import gc
import hashlib
import json
import os

import pytest
import torch
import safetensors
import safetensors.torch
from conftest import FIXTURES, FIXTURES_DIR, assert_same, raw

import shardstream
from shardstream import _core


def file_digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def mapped_files() -> set:
    """Paths this process has mapped (from /proc/self/maps)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6:
                out.add(parts[5].strip())
    return out


def owned_reference(path) -> dict:
    """safetensors' tensors, cloned: its own may be views of its own mapping of the file."""
    out = {k: v.clone() for k, v in safetensors.torch.load_file(str(path)).items()}
    gc.collect()
    return out


def offset_order(path) -> list:
    with safetensors.safe_open(str(path), "pt") as f:
        return f.offset_keys()


@pytest.fixture
def big(tmp_path):
    """A 32 MiB checkpoint of 16 tensors (2 MiB each), plus a small odd one that leaves the
    next tensor off every alignment."""
    g = torch.Generator().manual_seed(3)
    tensors = {f"layers.{i}.w": torch.randn(512, 1024, generator=g) for i in range(16)}
    tensors["odd"] = torch.arange(3, dtype=torch.uint8)
    path = tmp_path / "big.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("name", FIXTURES)
def test_load_file_mmap_is_byte_equal_to_safetensors(name):
    path = FIXTURES_DIR / f"{name}.safetensors"
    assert_same(shardstream.load_file(path, mmap=True), safetensors.torch.load_file(str(path)))


def test_load_file_mmap_edge_cases(sample, tmp_path):
    path, _ = sample
    assert_same(shardstream.load_file(path, mmap=True), safetensors.torch.load_file(str(path)))
    tensors = {
        "scalar": torch.tensor(-1.5, dtype=torch.float64),
        "empty": torch.zeros(0, 5, dtype=torch.float16),
        "odd_bytes": torch.arange(3, dtype=torch.uint8),  # the next tensor is unaligned
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(4, dtype=torch.complex64),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
        "bf": torch.randn(7, 3).to(torch.bfloat16),
    }
    edge = tmp_path / "edge.safetensors"
    safetensors.torch.save_file(tensors, str(edge))
    assert_same(shardstream.load_file(edge, mmap=True), safetensors.torch.load_file(str(edge)))


def test_views_share_one_mapping_and_owned_stays_default(big):
    views = shardstream.load_file(big, mmap=True)
    with safetensors.safe_open(str(big), "pt") as f:
        keys = f.offset_keys()
    a, b = views[keys[0]], views[keys[1]]
    # Adjacent tensors sit next to each other in the mapping: views, not copies.
    assert b.data_ptr() - a.data_ptr() == a.numel() * a.element_size()
    assert str(big) in mapped_files()
    owned = shardstream.load_file(big)
    c, d = owned[keys[0]], owned[keys[1]]
    assert d.data_ptr() - c.data_ptr() != c.numel() * c.element_size()
    assert torch.equal(a, c) and torch.equal(b, d)


def test_writes_to_views_never_reach_the_file(sample):
    path, _ = sample
    before = file_digest(path)
    reference = safetensors.torch.load_file(str(path))
    views = shardstream.load_file(path, mmap=True)
    for name, t in views.items():
        if t.numel():
            t.view(-1).view(torch.uint8).fill_(0xAB)
    assert all(raw(t) == b"\xab" * len(raw(t)) for t in views.values())
    assert file_digest(path) == before
    # A new load (and the reference reader) still sees the file's bytes.
    assert_same(shardstream.load_file(path, mmap=True), reference)
    it = shardstream.iter_tensors(path)
    for name, t in it:
        if t.numel():
            t.zero_()
    assert file_digest(path) == before
    assert_same(safetensors.torch.load_file(str(path)), reference)


def test_mapping_lives_while_any_view_lives(big):
    reference = owned_reference(big)
    assert str(big) not in mapped_files()
    name = offset_order(big)[5]
    views = shardstream.load_file(big, mmap=True)
    kept = views[name][3:7]  # a view of a view
    del views
    gc.collect()
    assert str(big) in mapped_files()
    assert torch.equal(kept, reference[name][3:7])
    del kept
    gc.collect()
    assert str(big) not in mapped_files(), "the mapping outlived its last view"

    it = shardstream.iter_tensors(big)
    first = next(it)[1]
    rest = [t for _, t in it]
    del it, rest
    gc.collect()
    assert torch.equal(first, reference[offset_order(big)[0]])
    del first
    gc.collect()
    assert str(big) not in mapped_files()


def test_populate_is_counted(big):
    entries_bytes = sum(t.numel() * t.element_size()
                        for t in safetensors.torch.load_file(str(big)).values())
    # Warm (the file was just written, and read above): every chunk is in the page cache, and the
    # iterator leaves it to the consumer's first touch instead of mapping it on another core.
    it = shardstream.iter_tensors(big, threads=4)
    names = [n for n, _ in it]
    assert names == offset_order(big)
    assert it.read["populated_bytes"] == entries_bytes
    assert it.read["populate_resident_bytes"] == entries_bytes
    assert it.read["populate_threads"] == 0
    assert it.bytes_read == entries_bytes
    assert it.read["populate_windows"] == 1  # 32 MiB: one window of the default 512 MiB bound
    assert it.peak_ahead_bytes == entries_bytes
    if on_tmpfs(big):
        pytest.skip("the checkpoint is on tmpfs: its pages cannot be dropped")
    # Cold: the chunks the page cache lost are read by the populate workers, and counted.
    reference = owned_reference(big)
    gc.collect()
    drop_cached_pages(big)
    it = shardstream.iter_tensors(big, threads=4)
    for name, view in it:
        assert torch.equal(view, reference[name]), name
    assert it.read["populated_bytes"] == entries_bytes
    assert it.read["populate_resident_bytes"] < entries_bytes
    assert it.read["populate_seconds"] > 0
    assert 1 <= it.read["populate_threads"] <= 4
    assert it.read["populate_method"] in ("madvise", "touch")


def test_populate_stays_within_the_read_ahead_bound(big):
    reference = owned_reference(big)
    budget_mb = 5  # windows of 2.5 MiB: one 2 MiB tensor each
    it = shardstream.iter_tensors(big, staging_mb=budget_mb, threads=2)
    names = []
    for name, view in it:
        names.append(name)
        assert torch.equal(view, reference[name]), name
        assert it.peak_ahead_bytes <= budget_mb << 20
    assert names == offset_order(big)
    total = sum(t.numel() * t.element_size() for t in reference.values())
    assert it.read["populated_bytes"] == total
    assert it.read["populate_windows"] >= 16
    assert it.peak_ahead_bytes >= 2 << 20  # the next window was populated ahead


def on_tmpfs(path) -> bool:
    """Whether `path` lies on a tmpfs (its pages cannot be dropped from the page cache)."""
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype == "tmpfs"


def drop_cached_pages(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_populate_runs_on_several_threads(big):
    # Cold, so that every chunk waits on the disk and the workers overlap: a warm populate of
    # 32 MiB ends in about a millisecond, before a second thread has started on a busy machine.
    if on_tmpfs(big):
        pytest.skip("the checkpoint is on tmpfs: its pages cannot be dropped")
    ck = shardstream._fill.open_checkpoint(big)
    ranges = [(e.file, e.begin, e.nbytes) for e in ck.offset_order if e.nbytes]
    # 128 chunks of 256 KiB. On a machine loaded by other work the disk may still outrun the
    # scheduler once; parallelism must show in one of three cold runs.
    threads = []
    for _ in range(3):
        gc.collect()
        drop_cached_pages(big)
        job = _core.start_populate(_core.map_checkpoint(ck.core), ranges, 4, 256 << 10)
        while not job.wait(0.05):
            pass
        report = job.result()
        assert report["populated_bytes"] == sum(r[2] for r in ranges)
        assert report["populate_chunks"] >= 128
        assert 1 <= report["populate_threads"] <= 4
        threads.append(report["populate_threads"])
        if report["populate_threads"] >= 2:
            break
    assert max(threads) >= 2, threads


def test_iter_yields_tensor_by_tensor_in_index_then_offset_order(tmp_path):
    # Shards named so that sorting by name differs from the index's file order is not needed:
    # the index lists the shards, and files come in their order (sorted by path), each in offset
    # order, whatever order the tensors were saved in.
    g = torch.Generator().manual_seed(5)
    shards = {
        "model-00001-of-00002.safetensors": {f"b.{i}": torch.randn(33, generator=g)
                                             for i in (3, 1, 2)},
        "model-00002-of-00002.safetensors": {f"a.{i}": torch.randn(17, generator=g)
                                             for i in (9, 0)},
    }
    weight_map, expected, reference = {}, [], {}
    for file, tensors in shards.items():
        safetensors.torch.save_file(tensors, str(tmp_path / file))
        weight_map.update({k: file for k in tensors})
        expected += offset_order(tmp_path / file)
        reference.update(safetensors.torch.load_file(str(tmp_path / file)))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    it = shardstream.iter_tensors(index)
    got = []
    for name, t in it:
        got.append(name)
        assert it.tensors_read == len(got)  # one tensor per step, not per batch
        assert torch.equal(t, reference[name]), name
    assert got == expected
    # Owned copies keep the same order (they land per read batch).
    assert [n for n, _ in shardstream.iter_tensors(index, copy=True)] == expected


def test_copy_true_gives_owned_tensors(big):
    reference = owned_reference(big)
    got = dict(shardstream.iter_tensors(big, copy=True))
    assert isinstance(shardstream.iter_tensors(big, copy=True), shardstream.TensorIterator)
    for k in reference:
        assert torch.equal(got[k], reference[k])
    gc.collect()
    assert str(big) not in mapped_files()


def test_early_close_cancels_populate(big):
    # threads=1: populate runs on the job's own thread alone (no oneTBB workers, which start and
    # retire on their own schedule), so the thread count must come back exactly.
    tasks = len(os.listdir("/proc/self/task"))
    fds = len(os.listdir("/proc/self/fd"))
    it = shardstream.iter_tensors(big, threads=1)
    name, view = next(it)
    it.close()
    assert list(it) == []
    assert torch.equal(view, safetensors.torch.load_file(str(big))[name])
    del it
    gc.collect()
    assert len(os.listdir("/proc/self/task")) == tasks
    assert len(os.listdir("/proc/self/fd")) == fds


def test_file_changed_after_validation_is_refused(big):
    ck = shardstream._fill.open_checkpoint(big)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) - 100)
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.iter_tensors(ck)
    assert info.value.rule == "file-changed"


def test_mmap_with_dtype_maps_what_it_can_and_casts_the_rest(sample):
    path, _ = sample
    got = shardstream.load_file(path, mmap=True, dtype=torch.float16)
    want = shardstream.load_file(path, dtype=torch.float16)
    assert_same(got, want)
    ref = safetensors.torch.load_file(str(path))
    assert torch.equal(got["half"], ref["half"]) and torch.equal(got["vec"], ref["vec"])


def test_mmap_needs_the_cpu(sample):
    path, _ = sample
    if torch.cuda.is_available() and _core.cuda_built():
        with pytest.raises(shardstream.LoadError) as info:
            shardstream.load_file(path, "cuda", mmap=True)
        assert info.value.rule == "option"
    else:
        with pytest.raises(shardstream.LoadError) as info:
            shardstream.load_file(path, "cuda", mmap=True)
        assert info.value.rule == "device"


def test_pooled_copies_never_overwrite_a_tensor_the_consumer_kept(tmp_path):
    g = torch.Generator().manual_seed(7)
    tensors = {f"layers.{i}.w": torch.randn(64, 64, generator=g) for i in range(40)}  # 16 KiB
    path = tmp_path / "layers.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    reference = owned_reference(path)
    budget_mb = 0.1  # ~100 KiB: 6 tensors ahead at most
    it = shardstream.iter_tensors(path, copy=True, staging_mb=budget_mb)
    kept, kept_ranges, taken = {}, [], 0
    for i, (name, t) in enumerate(it):
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        # Memory the consumer still holds is never handed out again.
        assert not any(s < end and start < e for s, e in kept_ranges), name
        assert torch.equal(t, reference[name]), name
        taken += t.numel() * t.element_size()
        assert it.bytes_read - taken <= int(budget_mb * (1 << 20)), "read too far ahead"
        if i % 3 == 0:
            kept[name] = t
            kept_ranges.append((start, end))
        elif i % 3 == 1:
            kept[name] = t[5:9]  # a view keeps the whole buffer
            kept_ranges.append((start, end))
        del t
    stats = it.pool_stats()
    assert stats["reused"] > 0, stats  # dropped tensors' memory came back
    assert stats["allocated"] + stats["reused"] == 40
    assert it.peak_ahead_bytes <= int(budget_mb * (1 << 20))
    for name, t in kept.items():
        want = reference[name] if t.shape[0] == 64 else reference[name][5:9]
        assert torch.equal(t, want), f"{name} changed after it was taken"
