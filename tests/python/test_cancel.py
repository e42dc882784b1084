"""Ctrl-C and a raising progress callback cancel a load, leaving no thread or fd behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch
import safetensors.torch
from conftest import fd_count, task_count

import shardstream


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """~192 MiB in 48 tensors: a load that takes more than one progress poll."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    block = torch.ones(1 << 20, dtype=torch.float32)
    safetensors.torch.save_file({f"t{i:02d}": block.clone() for i in range(48)}, str(path))
    return path


def test_callback_exception_cancels(big):
    shardstream.load_file(big, threads=1)  # warm-up (oneTBB workers, page cache)
    tasks, fds = task_count(), fd_count()

    class Stop(Exception):
        pass

    calls = []

    def progress(done, total):
        calls.append(done)
        raise Stop()

    t0 = time.perf_counter()
    with pytest.raises(Stop):
        shardstream.load_file(big, threads=1, progress=progress)
    assert time.perf_counter() - t0 < 5
    assert len(calls) == 1
    assert task_count() <= tasks and fd_count() == fds  # oneTBB may retire idle workers
    # The next load is complete and correct.
    out = shardstream.load_file(big)
    assert all(bool((t == 1).all()) for t in out.values())


def test_cancelled_fill_reports_rule(big):
    seen = []

    def progress(done, total):
        seen.append(done)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shardstream.fill(big, {"t00": torch.empty(1 << 20)}, progress=progress)


CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time, traceback
    import shardstream
    path = sys.argv[1]
    shardstream.load_file(path, threads=1)
    def count():
        return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))
    before = count()
    sent = []
    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(0.3, fire).start()
    try:
        while True:
            shardstream.load_file(path, threads=1)
    except KeyboardInterrupt as exc:
        latency = time.perf_counter() - sent[0]
        inside = any("shardstream" in f.filename for f in traceback.extract_tb(exc.__traceback__)[1:])
    time.sleep(0.05)  # the timer thread exits
    print("latency", latency, "inside", inside, "leak", count()[0] > before[0] or count()[1] != before[1], count(), before)
""")


def test_ctrl_c_cancels_within_a_second(big):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(big)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    latency = float(words[words.index("latency") + 1])
    assert latency < 1.0, proc.stdout
    assert words[words.index("leak") + 1] == "False", proc.stdout


def test_gil_released_while_reading(big):
    """Python code keeps running in another thread while a load reads."""
    import threading

    done = threading.Event()
    ticks = []

    def spin():
        while not done.is_set():
            ticks.append(1)
            time.sleep(0.001)

    spinner = threading.Thread(target=spin)
    spinner.start()
    t0 = time.perf_counter()
    shardstream.load_file(big, threads=1)
    seconds = time.perf_counter() - t0
    n = len(ticks)
    done.set()
    spinner.join()
    assert n >= min(5, int(seconds / 0.01)), (n, seconds)
