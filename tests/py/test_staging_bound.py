"""The staging bound, checked from outside the process.

`shardstream load CKPT --sink discard --staging-mb S` streams the whole checkpoint through the
staged pipeline into at most S MiB of staging slots and drops the bytes. Its peak resident memory
(VmHWM, read here as ru_maxrss of the finished child through wait4) must stay within

    peak of the same command on a one-tensor checkpoint  +  S MiB  +  OVERHEAD_MIB

whatever the checkpoint size; here the checkpoint is 16× the staging. The baseline run carries the
process's fixed cost (libtorch and the other libraries mapped and touched, ~115 MiB on our VM); the
stated overhead covers what grows with a real load: the io_uring rings, the read plan, copy-thread
stacks. Measured on the development VM: 12–14 MiB above baseline with 16 MiB staging.

A control run with `--sink tensors` must exceed the bound by the checkpoint size, showing that the
measurement sees memory a load really holds.
"""

from __future__ import annotations

import json
import os
import struct

import pytest


STAGING_MIB = 16
OVERHEAD_MIB = 16
TENSOR_BYTES = 4 << 20
TENSORS = 64  # 256 MiB: 16× the staging


def write_checkpoint(path, tensors: int, size: int, dtype: str = "U8") -> None:
    width = {"U8": 1, "BF16": 2}[dtype]
    header = {f"t{i}": {"dtype": dtype, "shape": [size // width],
                        "data_offsets": [i * size, (i + 1) * size]}
              for i in range(tensors)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = bytes(range(256)) * 4096
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _ in range(tensors):
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


def measure(argv) -> float:
    """Runs argv to completion; returns its own peak RSS (wait4's ru_maxrss, KiB) in MiB."""
    pid = os.posix_spawn(str(argv[0]), [str(a) for a in argv], os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{' '.join(map(str, argv))} failed: {status}"
    return usage.ru_maxrss / 1024.0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("staging-bound")
    big, tiny = root / "big.safetensors", root / "tiny.safetensors"
    write_checkpoint(big, TENSORS, TENSOR_BYTES)
    write_checkpoint(tiny, 1, 4096)
    return big, tiny


@pytest.fixture(scope="module")
def bf16_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cast-bound")
    big, tiny = root / "big-bf16.safetensors", root / "tiny-bf16.safetensors"
    write_checkpoint(big, TENSORS, TENSOR_BYTES, "BF16")
    write_checkpoint(tiny, 1, 4096, "BF16")
    return big, tiny


@pytest.mark.parametrize("direct", ["on", "off"])
def test_cast_load_holds_only_the_cast_tensors_and_the_scratch(shardstream_bin, bf16_checkpoints,
                                                               direct):
    """`load --dtype f32` allocates each tensor once in f32 and converts from bounded scratch: the
    peak is the f32 tensors plus the staging bound (scratch, and the staging pool with O_DIRECT),
    never the bf16 copy as well (a cast after loading would hold both: +50% here)."""
    big, tiny = bf16_checkpoints
    args = ["load", "--dtype", "f32", "--staging-mb", str(STAGING_MIB), "--direct", direct,
            "--quiet"]
    baseline = measure([shardstream_bin, *args, tiny])
    peak = measure([shardstream_bin, *args, big])
    f32_mib = 2 * TENSORS * TENSOR_BYTES / 2**20
    bound = baseline + f32_mib + 2 * STAGING_MIB + OVERHEAD_MIB
    assert peak <= bound, (f"peak RSS {peak:.1f} MiB > baseline {baseline:.1f} + f32 tensors "
                           f"{f32_mib:.0f} + scratch and staging {2 * STAGING_MIB} + overhead "
                           f"{OVERHEAD_MIB} MiB")
    assert peak >= baseline + 0.9 * f32_mib, (peak, baseline, f32_mib)


@pytest.mark.parametrize("io", ["uring", "pread"])
@pytest.mark.parametrize("direct", ["on", "off"])
def test_discard_peak_rss_stays_within_staging_plus_overhead(shardstream_bin, checkpoints, io,
                                                             direct):
    big, tiny = checkpoints
    args = ["load", "--sink", "discard", "--staging-mb", str(STAGING_MIB), "--io", io, "--direct",
            direct, "--quiet"]
    baseline = measure([shardstream_bin, *args, tiny])
    peak = measure([shardstream_bin, *args, big])
    bound = baseline + STAGING_MIB + OVERHEAD_MIB
    checkpoint_mib = big.stat().st_size / 2**20
    assert checkpoint_mib >= 8 * STAGING_MIB
    assert peak <= bound, (f"peak RSS {peak:.1f} MiB > baseline {baseline:.1f} + staging "
                           f"{STAGING_MIB} + overhead {OVERHEAD_MIB} MiB on a "
                           f"{checkpoint_mib:.0f} MiB checkpoint")


def test_control_owned_tensors_show_up_in_the_measurement(shardstream_bin, checkpoints):
    big, tiny = checkpoints
    args = ["load", "--quiet", "--direct", "off"]
    baseline = measure([shardstream_bin, *args, tiny])
    peak = measure([shardstream_bin, *args, big])
    checkpoint_mib = big.stat().st_size / 2**20
    assert peak >= baseline + 0.9 * checkpoint_mib, (peak, baseline, checkpoint_mib)
