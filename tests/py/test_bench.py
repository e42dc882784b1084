"""`shardstream bench` end to end on a tiny checkpoint: the JSON schema, the interleaved order,
peers that crash, print garbage, report the wrong byte count, hang or are missing, the residency
check after a cold drop, usage errors, and the plot.

Fake peer drivers (written here, following bench/peers/_common.py's protocol) stand in for the
real ones so that every failure mode is exercised in seconds, whatever is installed.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

TENSOR_BYTES = 1 << 20
TENSORS = 4
DATA_BYTES = TENSOR_BYTES * TENSORS
TIMEOUT_S = 120

GOOD = f"""
import json, sys, time
if "--probe" in sys.argv:
    print(json.dumps({{"peer": "fake good", "version": "1.0"}})); sys.exit(0)
print("some log line"); print(json.dumps({{"seconds": 0.125, "bytes": {DATA_BYTES}}}))
"""
CRASH = """
import json, sys
if "--probe" in sys.argv:
    print(json.dumps({"peer": "fake crash", "version": "1.0"})); sys.exit(0)
sys.stderr.write("Traceback (most recent call last):\\nRuntimeError: boom\\n"); sys.exit(1)
"""
GARBAGE = """
import json, sys
if "--probe" in sys.argv:
    print(json.dumps({"peer": "fake garbage", "version": "1.0"})); sys.exit(0)
print("fast!")
"""
WRONG_BYTES = """
import json, sys
if "--probe" in sys.argv:
    print(json.dumps({"peer": "fake lazy", "version": "1.0"})); sys.exit(0)
print(json.dumps({"seconds": 0.001, "bytes": 0}))
"""
HANG = """
import json, sys, time
if "--probe" in sys.argv:
    print(json.dumps({"peer": "fake hang", "version": "1.0"})); sys.exit(0)
time.sleep(60)
"""
MISSING = """
import json, sys
print(json.dumps({"peer": "fake missing", "reason": "fakelib not installed"})); sys.exit(3)
"""


def write_checkpoint(path) -> None:
    header = {f"t{i}": {"dtype": "U8", "shape": [TENSOR_BYTES],
                        "data_offsets": [i * TENSOR_BYTES, (i + 1) * TENSOR_BYTES]}
              for i in range(TENSORS)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(bytes(range(256)) * (DATA_BYTES // 256))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "model.safetensors"
    write_checkpoint(path)
    return path


def peer_dir(root, drivers):
    root.mkdir()
    for name, code in drivers.items():
        (root / f"{name}.py").write_text(code)
    return root


def bench(shardstream_bin, *args):
    env = dict(os.environ, SHARDSTREAM_PYTHON=sys.executable)
    proc = subprocess.run([str(shardstream_bin), "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env)
    return proc


def test_report_schema_order_and_failed_peers(shardstream_bin, checkpoint, tmp_path):
    peers = peer_dir(tmp_path / "peers", {"a_good": GOOD, "b_crash": CRASH, "c_garbage": GARBAGE,
                                          "d_lazy": WRONG_BYTES, "e_missing": MISSING})
    out = tmp_path / "report.json"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread,uring", "--repeat", "2",
                 "--peers", "--peer-dir", peers, "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())

    assert report["schema"] == "shardstream-bench/1"
    assert report["command"][1:4] == ["bench", str(checkpoint), "--strategies"]
    for key in ("hostname", "kernel", "cpus", "memory_bytes"):
        assert report["machine"][key], key
    assert report["versions"]["shardstream"]
    assert report["checkpoint"]["bytes"] == DATA_BYTES
    assert report["settings"] == {"device": "cpu", "sink": "tensors", "repeat": 2, "cold": False,
                                  "peers": True}
    rows = {r["name"]: r for r in report["rows"]}

    # Strategies ran, with their own figures.
    for name in ("pread", "uring"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert [r["round"] for r in row["runs"]] == [0, 1]
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["gbps"] == pytest.approx(DATA_BYTES / row["median_s"] / 1e9, rel=1e-3)
        assert row["peak_rss_bytes"] > DATA_BYTES  # the child held the tensors
        assert all(run["resident_before"] > 0.9 for run in row["runs"])  # warm

    # Ceilings: measured, or said to be missing (fio is not installed everywhere).
    ceilings = [r for r in report["rows"] if r["kind"] == "ceiling"]
    assert {c["status"] for c in ceilings} <= {"ok", "not installed"}
    memcpy = next(c for c in ceilings if c["ceiling"] == "memcpy")
    assert memcpy["status"] == "ok", memcpy
    assert report["ceiling"]["row"] == memcpy["name"]
    assert rows["pread"]["percent_of_ceiling"] == pytest.approx(
        100 * memcpy["median_s"] / rows["pread"]["median_s"], rel=1e-3)
    fio = [c for c in ceilings if c["ceiling"].startswith("storage")]
    assert len(fio) == 2 and all(c["status"] == ("ok" if any(
        os.access(os.path.join(p, "fio"), os.X_OK)
        for p in os.environ.get("PATH", "").split(":")) else "not installed") for c in fio)

    # Peers: the good one has numbers; every broken one is failed with the reason, no number.
    assert rows["peer: fake good"]["status"] == "ok"
    assert rows["peer: fake good"]["median_s"] == pytest.approx(0.125)
    for name, reason in (("peer: fake crash", "boom"), ("peer: fake garbage", "no JSON report"),
                         ("peer: fake lazy", "loaded 0 bytes")):
        row = rows[name]
        assert row["status"] == "failed", row
        for key in ("median_s", "min_s", "max_s", "gbps", "percent_of_ceiling"):
            assert row[key] is None, (name, key)
        assert reason in row["runs"][0]["error"], row["runs"][0]["error"]
    assert rows["peer: fake missing"]["status"] == "not installed"
    assert rows["peer: fake missing"]["runs"] == []
    assert "fakelib not installed" in rows["peer: fake missing"]["note"]

    # Interleaved: round 0 runs every runnable row once, in table order, then round 1 again.
    runnable = [r["name"] for r in report["rows"] if r["runs"]]
    assert [o["row"] for o in report["order"]] == runnable * 2
    assert [o["round"] for o in report["order"]] == [0] * len(runnable) + [1] * len(runnable)

    # The table shows failures as failures.
    table = proc.stdout
    assert "peer: fake crash" in table and "failed: exit 1" in table
    assert "not installed: fakelib not installed" in table


def test_a_hanging_peer_times_out_as_failed(shardstream_bin, checkpoint, tmp_path):
    peers = peer_dir(tmp_path / "peers", {"hang": HANG})
    out = tmp_path / "report.json"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread", "--repeat", "1",
                 "--no-ceilings", "--peers", "--peer-dir", peers, "--timeout-s", "2", "--json",
                 out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["peer: fake hang"]["status"] == "failed"
    assert "timed out after 2 s" in rows["peer: fake hang"]["runs"][0]["error"]


def test_cold_runs_record_residency_after_the_drop(shardstream_bin, checkpoint, tmp_path):
    # --no-drop-caches: the tests beside this one (ctest -j) keep their page cache; the
    # checkpoint's own pages are dropped with posix_fadvise and must be gone all the same.
    out = tmp_path / "report.json"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread,uring-direct", "--repeat",
                 "2", "--no-ceilings", "--cold", "--no-drop-caches", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["cold"] is True
    assert any("posix_fadvise" in note and "--no-drop-caches" in note
               for note in report["notes"]), report["notes"]
    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(checkpoint)], capture_output=True,
                             text=True).stdout.strip()
    for row in report["rows"]:
        assert len(row["runs"]) == 2
        for run in row["runs"]:
            assert run["resident_before"] is not None
            assert run["cold_dropped"] == (run["resident_before"] <= 0.05), run
            if fs_type != "tmpfs":  # tmpfs pages cannot be dropped: the run is flagged instead
                assert run["cold_dropped"], run
    # --direct auto's own residency sample (taken after the child read the headers, whose
    # readahead caches the start of a file this small) is recorded beside the harness's.
    auto = bench(shardstream_bin, checkpoint, "--strategies", "auto", "--repeat", "1",
                 "--no-ceilings", "--cold", "--no-drop-caches", "--json", out, "--quiet")
    assert auto.returncode == 0, auto.stderr
    run = json.loads(out.read_text())["rows"][0]["runs"][0]
    assert 0 <= run["child_resident_fraction"] <= 1, run


@pytest.mark.parametrize("args, message", [
    (["--strategies", "pread,warp"], "unknown strategy 'warp'"),
    (["--strategies", "mmap", "--sink", "discard"], "cannot run with --sink discard"),
    (["--queue-depth", "8,0"], "--queue-depth takes numbers"),
    (["--repeat", "0"], "--repeat must be"),
])
def test_usage_errors_name_the_rule(shardstream_bin, checkpoint, args, message):
    proc = bench(shardstream_bin, checkpoint, *args)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


def test_missing_peer_dir_is_said_clearly(shardstream_bin, checkpoint, tmp_path):
    proc = bench(shardstream_bin, checkpoint, "--peers", "--peer-dir", tmp_path / "nowhere",
                 "--repeat", "1")
    assert proc.returncode == 1
    assert "no peer drivers there" in proc.stderr and "SHARDSTREAM_PEER_DIR" in proc.stderr


def test_plot_is_a_png(shardstream_bin, checkpoint, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib draws the plot (scripts/requirements.txt)")
    png = tmp_path / "bench.png"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread", "--repeat", "1",
                 "--no-ceilings", "--plot", png, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
