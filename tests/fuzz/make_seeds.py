"""Writes the fuzz seed corpora: OUT/header/ (whole safetensors files) and OUT/index/ (shard index
JSON), one file per distinct input, named by its SHA-1.

Seeds: every crafted case (tests/py/crafted.py: files, and the shards and indexes of the folder
cases), and from each fixture (tests/data/fixtures, plus FIXTURE_DIRs given) an excerpt: its first
tensors with their data and metadata, re-packed into a small valid file, so that mutations start
from a real writer's header without carrying megabytes of tensor data.

    python tests/fuzz/make_seeds.py OUT [FIXTURE_DIR...]
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "py"))
import crafted  # noqa: E402

MAX_SEED_BYTES = 1 << 20  # larger crafted inputs (the 100 MB header cases) stay out of the seeds
EXCERPT_TENSORS = 48


def put(folder: Path, data: bytes) -> bool:
    if len(data) > MAX_SEED_BYTES:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha1(data).hexdigest()
    if path.exists():
        return False
    path.write_bytes(data)
    return True


def excerpt(raw: bytes) -> bytes:
    """The first EXCERPT_TENSORS tensors (in file order) of a valid file, as a valid file."""
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))[:EXCERPT_TENSORS]
    out_header, out_data = {}, b""
    if meta is not None:
        out_header["__metadata__"] = meta
    for name, info in entries:
        begin, end = info["data_offsets"]
        out_header[name] = dict(info, data_offsets=[len(out_data), len(out_data) + end - begin])
        out_data += data[begin:end]
    text = json.dumps(out_header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + out_data


def main(argv: list) -> int:
    if len(argv) < 2:
        sys.exit(f"usage: {argv[0]} OUT [FIXTURE_DIR...]")
    out = Path(argv[1])
    counts = {"header": 0, "index": 0}
    for case in crafted.cases():
        if case.kind == "file":
            counts["header"] += put(out / "header", case.content)
            continue
        for rel, data in case.files:
            if rel.endswith(".json"):
                counts["index"] += put(out / "index", data)
            elif rel.endswith(".safetensors"):
                counts["header"] += put(out / "header", data)
    for folder in [REPO / "tests" / "data" / "fixtures", *map(Path, argv[2:])]:
        for fixture in sorted(folder.glob("*.safetensors")):
            counts["header"] += put(out / "header", excerpt(fixture.read_bytes()))
    print(f"seeds: {counts['header']} header, {counts['index']} index in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
