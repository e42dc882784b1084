"""`shardstream bench` end to end on a tiny checkpoint: the JSON schema, the interleaved order,
peers that crash, print garbage, report the wrong byte count, hang or are missing, the residency
check after a cold drop, the fio ceilings (warm: the page cache and the disk sweep; cold: the
sweep, with its winner) and the ceiling check, the Python the build was configured with, usage
errors, the plot, and `--ranks` (bench/distributed_load.py: many ranks, one read).

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


WHICH_PYTHON = """
import json, sys
print(json.dumps({"peer": "which python", "version": sys.executable})); sys.exit(0)
"""


def have_fio() -> bool:
    return any(os.access(os.path.join(p, "fio"), os.X_OK)
               for p in os.environ.get("PATH", "").split(":") if p)


def bench(shardstream_bin, *args, env=None):
    if env is None:
        env = dict(os.environ, SHARDSTREAM_PYTHON=sys.executable)
    proc = subprocess.run([str(shardstream_bin), "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env)
    return proc


def configured_python(shardstream_bin) -> str:
    """SHARDSTREAM_PYTHON from the CMake cache beside the binary ("" when not configured)."""
    cache = shardstream_bin.parent / "CMakeCache.txt"
    if not cache.is_file():
        return ""
    for line in cache.read_text().splitlines():
        if line.startswith("SHARDSTREAM_PYTHON:"):
            return line.split("=", 1)[1]
    return ""


def test_report_schema_order_and_failed_peers(shardstream_bin, checkpoint, tmp_path):
    peers = peer_dir(tmp_path / "peers", {"a_good": GOOD, "b_crash": CRASH, "c_garbage": GARBAGE,
                                          "d_lazy": WRONG_BYTES, "e_missing": MISSING})
    out = tmp_path / "report.json"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread,uring", "--repeat", "2",
                 "--peers", "--peer-dir", peers, "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())

    assert report["schema"] == "shardstream-bench/2"
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
    fio = [c for c in ceilings if c["ceiling"] in ("page-cache", "storage")]
    assert sorted(c["ceiling"] for c in fio) == ["page-cache", "storage"]
    assert all(c["status"] == ("ok" if have_fio() else "not installed") for c in fio), fio
    # Nothing is checked against a ceiling but the rows that are not ceilings.
    assert all(c["ceiling_exceeded"] is False and c["ceiling_row"] is None
               for c in ceilings if c["status"] == "ok")
    assert report["rows_above_ceiling"] == sum(r["ceiling_exceeded"] for r in report["rows"])
    assert rows["pread"]["ceiling_row"] == memcpy["name"]

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


@pytest.mark.skipif(not have_fio(), reason="fio is not on PATH (scripts/install-deps installs it)")
def test_fio_ceilings_match_the_pipeline_and_sweep_the_disk(shardstream_bin, checkpoint, tmp_path):
    out = tmp_path / "report.json"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread,uring-direct", "--repeat", "1",
                 "--queue-depth", "16", "--chunk-mb", "2", "--json", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["kind"] == "ceiling" and r["ceiling"] or r["name"]: r for r in report["rows"]}
    jobs = os.cpu_count()
    page = rows["page-cache"]
    # Warm: fio buffered with the pipeline's block size, one job per thread, with pread (what
    # `load` reads cached files with) and with io_uring at the pipeline's depth.
    assert page["status"] == "ok", page
    job_text = f"{jobs} job{'s' if jobs > 1 else ''}"
    assert set(page["fio"]) == {f"pread buffered 2 MiB {job_text}",
                                f"buffered 2 MiB qd=16 {job_text}"}
    assert page["winner"] in page["fio"]
    disk = rows["storage"]
    assert disk["status"] == "ok", disk
    assert all(f.startswith("O_DIRECT") for f in disk["fio"])  # warm: the disk is O_DIRECT
    assert disk["winner"] in disk["fio"]
    assert disk["winner"] in proc.stdout  # the table names the winning settings
    # An O_DIRECT row is held to the disk, a buffered one (warm CPU tensors) to memcpy.
    assert rows["uring-direct qd=16 chunk=2MiB"]["ceiling_row"] == disk["name"]
    assert rows["pread chunk=2MiB"]["ceiling_row"].startswith("ceiling: memcpy")
    fio_note = next(n for n in report["notes"] if n.startswith("fio:"))
    assert "--invalidate=0" in fio_note and "--iomem_align=4096" in fio_note

    cold = bench(shardstream_bin, checkpoint, "--strategies", "pread", "--repeat", "1", "--cold",
                 "--no-drop-caches", "--json", out, "--quiet")
    assert cold.returncode == 0, cold.stderr
    report = json.loads(out.read_text())
    ceilings = [r for r in report["rows"] if r["kind"] == "ceiling"]
    assert [c["ceiling"] for c in ceilings if c["ceiling"] != "memcpy"] == ["storage"]
    disk = next(c for c in ceilings if c["ceiling"] == "storage")
    assert disk["status"] == "ok", disk
    # Cold: O_DIRECT and buffered, depth 8 and 32, 4 and 16 MiB (shrunk to this small file).
    assert {f.split()[0] for f in disk["fio"]} == {"O_DIRECT", "buffered"}
    assert len(disk["fio"]) == (16 if jobs > 1 else 8)
    for run in disk["runs"]:
        assert run["detail"].split(" (failed")[0] in disk["fio"], run
    assert report["ceiling"]["row"] == disk["name"]
    pread = next(r for r in report["rows"] if r["name"] == "pread")
    assert pread["ceiling_row"] == disk["name"]
    assert isinstance(pread["ceiling_exceeded"], bool)
    if pread["ceiling_exceeded"]:
        assert "(!)" in cold.stdout


def test_peers_and_plot_use_the_configured_python(shardstream_bin, checkpoint, tmp_path):
    configured = configured_python(shardstream_bin)
    if not configured or not os.access(configured, os.X_OK):
        pytest.skip("the build was configured without SHARDSTREAM_PYTHON")
    peers = peer_dir(tmp_path / "peers", {"which": WHICH_PYTHON})
    out = tmp_path / "report.json"
    # A plain shell: no SHARDSTREAM_PYTHON, and a PATH whose python3 (if any) is the system's.
    env = {k: v for k, v in os.environ.items() if k != "SHARDSTREAM_PYTHON"}
    env["PATH"] = "/usr/bin:/bin"
    plot = subprocess.run([configured, "-c", "import matplotlib"], capture_output=True).returncode == 0
    png = tmp_path / "bench.png"
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread", "--repeat", "1",
                 "--no-ceilings", "--peers", "--peer-dir", peers, "--json", out, "--quiet",
                 *(["--plot", png] if plot else []), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["peer: which python"]["note"] == configured
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The environment variable still overrides it.
    link = tmp_path / "other-python"
    link.symlink_to(sys.executable)
    env["SHARDSTREAM_PYTHON"] = str(link)
    proc = bench(shardstream_bin, checkpoint, "--strategies", "pread", "--repeat", "1",
                 "--no-ceilings", "--peers", "--peer-dir", peers, "--json", out, "--quiet",
                 env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["peer: which python"]["note"] == str(link)


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
    (["--ranks", "1"], "--ranks must be 2..64"),
    (["--ranks", "2", "--strategies", "pread"], "--strategies does not apply with --ranks"),
    (["--ranks", "2", "--peers"], "--peers does not apply with --ranks"),
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


def distributed_python() -> None:
    """--ranks runs bench/distributed_load.py in this Python: its shardstream must take
    process_group= (this checkout installed: scripts/install-python). Skips otherwise (fails in
    CI, where the package is always this checkout's)."""
    import inspect

    try:
        import shardstream
        ok = "process_group" in inspect.signature(shardstream.load_file).parameters
    except ImportError:
        ok = False
    if not ok:
        why = f"{sys.executable} has no shardstream with process_group= (scripts/install-python)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(why)
        pytest.skip(why)


def test_ranks_runs_the_distributed_bench(shardstream_bin, checkpoint, tmp_path):
    distributed_python()
    out = tmp_path / "ranks.json"
    proc = bench(shardstream_bin, checkpoint, "--ranks", "2", "--repeat", "1", "--json", out,
                 "--timeout-s", "120")
    assert proc.returncode == 0, proc.stderr
    table = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines()
             if line.startswith("| distributed") or line.startswith("| independent")}
    assert sorted(table) == ["distributed", "independent"], proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["mode"], r["rank"]) for r in rows) == [
        ("distributed", 0), ("distributed", 1), ("independent", 0), ("independent", 1)]
    # Each rank ends with the whole checkpoint; O_DIRECT storage reads: about half each
    # distributed, all of it each independent (a block of alignment slack per range).
    slack = 3 * 4096
    for r in rows:
        assert r["tensor_bytes"] == DATA_BYTES, r
        want = DATA_BYTES / 2 if r["mode"] == "distributed" else DATA_BYTES
        assert want <= r["read_bytes"] + slack and r["read_bytes"] <= want + slack, r
    assert sum(r["read_bytes"] for r in rows if r["mode"] == "distributed") >= DATA_BYTES


def test_ranks_failures_are_said_clearly(shardstream_bin, tmp_path):
    # A checkpoint that does not open: its own error, before any rank starts.
    missing = tmp_path / "missing.safetensors"
    proc = bench(shardstream_bin, missing, "--ranks", "2", "--repeat", "1")
    assert proc.returncode == 1, proc.stderr
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # The script failing: the rule, the script and its stderr tail.
    good = tmp_path / "model.safetensors"
    write_checkpoint(good)
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'rank 1: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    proc = bench(shardstream_bin, good, "--ranks", "2", "--repeat", "1", "--python", fake)
    assert proc.returncode == 1, proc.stderr
    for text in ("distributed-bench", "distributed_load.py", "exit 3", "rank 1: boom"):
        assert text in proc.stderr, proc.stderr
