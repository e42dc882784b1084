"""Deterministic crafted safetensors files and sharded checkpoints.

Every case names the rule code that `shardstream inspect` must report for it (or None when the
checkpoint is valid) and the substrings its `error:` line must contain. The expectations were
checked against the reference implementation (the `safetensors` Python package, whose Rust core
is the source of truth); `test_differential.py` re-checks them on every run.

    python tests/py/crafted.py OUT_DIR    # writes every case (a fuzz seed corpus) + manifest.json
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

# Bits per element, as in the reference's `Dtype::bitsize`.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}

U64_MAX = (1 << 64) - 1
MAX_HEADER_BYTES = 100_000_000
INDEX_NAME = "model.safetensors.index.json"
BAD = "bad_tensor"  # the tensor that carries the defect in single-defect cases


@dataclass(frozen=True)
class Case:
    """One crafted input.

    kind "file": `content` is written to `<root>/<name>.safetensors`, which is the CLI argument.
    kind "dir":  `files` (relative path → bytes) are written under `<root>/<name>/`; the CLI
                 argument is `<root>/<name>/<target>` (target "" is the folder itself).
    rule:        expected rule code, None when the checkpoint is valid.
    fragments:   substrings the `error:` line must contain (besides the rule and the file name).
    error_file:  dir cases only: path relative to the case folder that the error must name
                 ("" = the folder, None = not asserted because the contract leaves it open).
    """

    name: str
    kind: str
    rule: Optional[str]
    fragments: tuple = ()
    content: bytes = b""
    files: tuple = ()
    target: str = ""
    error_file: Optional[str] = None
    note: str = ""

    @property
    def valid(self) -> bool:
        return self.rule is None

    def case_root(self, root: Path) -> Path:
        return root / self.name

    def materialize(self, root: Path) -> Path:
        """Writes the case under `root` and returns the path to pass to the CLI."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if self.kind == "file":
            path = root / f"{self.name}.safetensors"
            path.write_bytes(self.content)
            return path
        base = self.case_root(root)
        base.mkdir(parents=True, exist_ok=True)
        for rel, data in self.files:
            p = base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return base / self.target if self.target else base

    def expected_error_path(self, root: Path) -> Optional[Path]:
        """The file or folder the error line must name, or None when not asserted."""
        if self.valid:
            return None
        if self.kind == "file":
            return Path(root) / f"{self.name}.safetensors"
        if self.error_file is None:
            return None
        base = self.case_root(Path(root))
        return base / self.error_file if self.error_file else base

    def shard_paths(self, root: Path) -> list:
        """All .safetensors files of a materialised case (the reference reads each one)."""
        if self.kind == "file":
            return [Path(root) / f"{self.name}.safetensors"]
        base = self.case_root(Path(root))
        return sorted(base / rel for rel, _ in self.files if rel.endswith(".safetensors"))


# ----------------------------------------------------------------------------------------------
# Byte-level builders


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic filler bytes."""
    return bytes(((i * 37 + seed * 101 + 11) & 0xFF) for i in range(n))


def pack(header, data: bytes = b"", length: Optional[int] = None) -> bytes:
    """8-byte little-endian header length + header + data. `length` overrides the length field."""
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


class Raw(str):
    """JSON text inserted verbatim by `entry` (everything else goes through json.dumps)."""


def entry(dtype, shape, offsets, extra: str = "") -> str:
    """JSON text of one tensor object. `dtype` is a name unless wrapped in Raw (then JSON text);
    `shape` and `offsets` given as str are JSON text, lists are encoded."""
    def text(v):
        return str(v) if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    dtype_text = str(dtype) if isinstance(dtype, Raw) else json.dumps(dtype, ensure_ascii=False)
    return '{"dtype":%s,"shape":%s,"data_offsets":%s%s}' % (
        dtype_text, text(shape), text(offsets), extra)


def obj(pairs: Sequence) -> str:
    """JSON object text from (key, value_text) pairs; keys are str (escaped) or raw JSON text
    when they start with '"'."""
    parts = []
    for k, v in pairs:
        key = k if k.startswith('"') else json.dumps(k, ensure_ascii=False)
        parts.append(f"{key}:{v}")
    return "{" + ",".join(parts) + "}"


def nbytes(dtype: str, shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def layout(specs, metadata=None, seed: int = 0):
    """Lays out (name, dtype, shape) tensors contiguously in the given order.

    Returns (pairs, data) where pairs are (name, tensor_json_text)."""
    pairs = []
    if metadata is not None:
        pairs.append(("__metadata__", json.dumps(metadata, ensure_ascii=False)))
    off = 0
    for name, dtype, shape in specs:
        size = nbytes(dtype, shape)
        pairs.append((name, entry(dtype, list(shape), [off, off + size])))
        off += size
    return pairs, pattern(off, seed)


def st_file(specs, metadata=None, seed: int = 0, pad_to: int = 1) -> bytes:
    """A well-formed safetensors file (header padded with spaces to a multiple of pad_to)."""
    pairs, data = layout(specs, metadata, seed)
    header = obj(pairs).encode("utf-8")
    header += b" " * ((-len(header)) % pad_to)
    return pack(header, data)


U8_2 = entry("U8", [2], [0, 2])  # the one-tensor body used by many cases
AB = b"ab"


def with_extra(extra_json: str) -> str:
    """Header with one valid tensor `a` carrying an ignored extra field `x`."""
    return '{"a":%s}' % entry("U8", [2], [0, 2], ',"x":' + extra_json)


# ----------------------------------------------------------------------------------------------
# Single-file cases


def _file_cases() -> Iterator[Case]:
    def F(name, rule, content, *fragments, note=""):
        return Case(name=name, kind="file", rule=rule, fragments=tuple(fragments),
                    content=content, note=note)

    # ---- valid edge cases ------------------------------------------------------------------
    yield F("valid-minimal", None, pack('{"a":%s}' % U8_2, AB))
    yield F("valid-empty-object", None, pack("{}"))
    yield F("valid-metadata-only", None, pack('{"__metadata__":{"format":"pt"}}'))
    yield F("valid-metadata-null", None, pack('{"__metadata__":null,"a":%s}' % U8_2, AB))
    yield F("valid-metadata-empty", None, pack('{"__metadata__":{},"a":%s}' % U8_2, AB))
    yield F("valid-metadata-duplicate-inner-key", None,
            pack('{"__metadata__":{"k":"1","k":"2"},"a":%s}' % U8_2, AB),
            note="duplicate keys inside the metadata map: last wins")
    yield F("valid-metadata-key-escaped", None,
            pack('{"\\u005f_metadata__":{"k":"v"},"a":%s}' % U8_2, AB),
            note="the key decodes to __metadata__")
    yield F("valid-metadata-unicode", None,
            st_file([("a", "U8", [2])], metadata={"nom": "café ☕", "emoji": "😀", "": ""}))
    yield F("valid-all-dtypes", None, st_file(
        [(f"t_{d.lower()}", d, [4] if d.startswith("F6") else [2]) for d in DTYPE_BITS],
        metadata={"format": "pt"}, pad_to=8))
    for d in DTYPE_BITS:
        yield F(f"valid-dtype-{d.lower().replace('_', '-')}", None,
                st_file([("x", d, [4, 2] if DTYPE_BITS[d] % 8 else [3, 2])]))
    yield F("valid-scalar", None, st_file([("s", "F32", [])]))
    yield F("valid-empty-tensors-share-offsets", None,
            pack(obj([("e0", entry("U8", [0], [0, 0])), ("a", entry("U8", [2], [0, 2])),
                      ("e2", entry("F32", [3, 0], [2, 2]))]), AB),
            note="(0,0) and (2,2) next to (0,2)")
    yield F("valid-empty-tensor-at-end", None, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("e", entry("U8", [0], [4, 4])),
        ("b", entry("U8", [2], [2, 4]))]), pattern(4)), note="sorted: (0,2) (2,4) (4,4)")
    yield F("valid-only-empty-tensors", None,
            pack(obj([("e0", entry("U8", [0], [0, 0])), ("e1", entry("F4", [0, 7], [0, 0]))])))
    yield F("valid-zero-dim-then-huge-dims", None,
            pack(obj([("z", entry("U8", [0, U64_MAX, U64_MAX], [0, 0]))])),
            note="0 first: the left-to-right product never overflows")
    yield F("valid-huge-dim-times-zero-no-overflow", None,
            pack(obj([("z", entry("U64", [1 << 40, 0], [0, 0]))])))
    yield F("valid-header-trailing-whitespace", None, pack('{"a":%s} \t\n\r ' % U8_2, AB))
    yield F("valid-header-leading-whitespace", None, pack(' \t\r\n{"a":%s}' % U8_2, AB))
    yield F("valid-header-inner-whitespace", None, pack(
        '{ "a" :\n\t{ "dtype" : "U8" , "shape" : [ 2 ] , "data_offsets" : [ 0 , 2 ] } }', AB))
    yield F("valid-header-padded-to-8", None,
            st_file([("a", "F16", [3]), ("b", "I32", [1])], pad_to=8))
    yield F("valid-unsorted-offsets", None, pack(obj([
        ("c", entry("U8", [1], [3, 4])), ("a", entry("U8", [2], [0, 2])),
        ("b", entry("U8", [1], [2, 3]))]), pattern(4)),
        note="header order differs from data order")
    yield F("valid-duplicate-tensor-last-wins", None, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("a", entry("U8", [4], [0, 4]))]), pattern(4)),
        note="the first 'a' is shadowed; only the last one is laid out")
    yield F("valid-duplicate-tensor-shadowed-overflow", None, pack(obj([
        ("a", entry("U8", [U64_MAX], [0, 0])), ("a", U8_2)]), AB),
        note="a shadowed entry must parse, but its shape/offsets are not validated")
    yield F("valid-duplicate-tensor-shadowed-bad-offsets", None, pack(obj([
        ("a", entry("U8", [2], [7, 9])), ("a", U8_2)]), AB))
    yield F("valid-unknown-fields-ignored", None, pack('{"a":%s}' % entry(
        "U8", [2], [0, 2], ',"x":[1.5e300,-3,true,null,{"y":"z"}],"offsets":"nope","x":0'), AB),
        note="extra fields (even duplicated ones) inside a tensor are ignored")
    yield F("valid-field-order-scrambled", None,
            pack('{"a":{"data_offsets":[0,2],"shape":[2],"dtype":"U8"}}', AB))
    yield F("valid-array-form", None, pack('{"a":["U8",[2],[0,2]]}', AB))
    yield F("valid-array-form-dtype-map", None, pack('{"a":[{"U8":null},[2],[0,2]]}', AB))
    yield F("valid-dtype-map-form", None,
            pack('{"a":%s}' % entry(Raw('{"U8":null}'), [2], [0, 2]), AB))
    yield F("valid-escaped-names-and-fields", None, pack(
        '{"\\u0061":{"\\u0064type":"\\u0055\\u0038","shape":[2],"data_offsets":[0,2]}}', AB))
    yield F("valid-name-unicode", None, st_file([("weird.name/with-chars_é", "F32", [2]),
                                                  ("日本語", "I8", [1]), ("😀", "U8", [1])]))
    yield F("valid-name-surrogate-pair-escape", None,
            pack('{"a\\ud83d\\ude00":%s}' % U8_2, AB))
    yield F("valid-name-special-escapes", None,
            pack('{"q\\"b\\\\s\\/t\\b\\f\\n\\r\\t":%s}' % U8_2, AB))
    yield F("valid-name-empty", None,
            pack(obj([("a", U8_2), ("", entry("U8", [0], [2, 2]))]), AB))
    yield F("valid-name-raw-del", None, pack('{"a\x7f":%s}' % U8_2, AB))
    for slug, number in [("exponent-upper-plus", "1E+2"), ("underflow", "1e-999"),
                         ("underflow-long-mantissa", "0." + "0" * 400 + "1"),
                         ("negative-zero", "-0"), ("negative-zero-float", "-0.0"),
                         ("fraction-exponent", "0.5e-3"), ("u64-max", "18446744073709551615"),
                         ("above-u64", "123456789012345678901234567890"),
                         ("below-i64", "-9223372036854775809"),
                         ("max-double", "1.7976931348623157e308"),
                         ("many-digits", "3." + "1" * 500)]:
        yield F(f"valid-number-{slug}-in-ignored-field", None, pack(with_extra(number), AB))
    yield F("valid-nesting-127", None, pack(with_extra("[" * 125 + "]" * 125), AB),
            note="top object + tensor object + 125 arrays = 127 containers")
    yield F("valid-shape-u64-max-values-parse", None,
            pack(obj([("z", entry("U8", [0, U64_MAX], [0, 0]))])))
    yield F("valid-many-tensors", None,
            st_file([(f"layer.{i}.w", "F16", [i % 5]) for i in range(2000)], pad_to=8))

    # ---- header-too-small / header-too-large / header-length --------------------------------
    yield F("header-too-small-empty-file", "header-too-small", b"")
    yield F("header-too-small-7-bytes", "header-too-small", b"\x02\x00\x00\x00\x00\x00\x00")
    yield F("header-too-large-100m-plus-1", "header-too-large",
            pack("{}", length=MAX_HEADER_BYTES + 1))
    yield F("header-too-large-u64-max", "header-too-large", pack("{}", length=U64_MAX))
    yield F("header-too-large-2-pow-63", "header-too-large", pack("{}", length=1 << 63))
    yield F("header-length-exactly-100m", "header-length", pack("{}", length=MAX_HEADER_BYTES),
            note="the bound itself is allowed; the file is just too short")
    yield F("header-length-one-past-end", "header-length", pack("{}", length=3))
    yield F("header-length-8-bytes-only", "header-length", pack(b"", length=1))

    # ---- header-utf8 ------------------------------------------------------------------------
    yield F("header-utf8-invalid-byte", "header-utf8",
            pack(b'{"a\xff":' + U8_2.encode() + b"}", AB))
    yield F("header-utf8-overlong-nul", "header-utf8",
            pack(b'{"a\xc0\x80":' + U8_2.encode() + b"}", AB))
    yield F("header-utf8-encoded-surrogate", "header-utf8",
            pack(b'{"a\xed\xa0\x80":' + U8_2.encode() + b"}", AB))
    yield F("header-utf8-truncated-sequence-at-end", "header-utf8",
            pack(b'{"a":' + U8_2.encode() + b"}\xe2\x82", AB))
    yield F("header-utf8-in-metadata-value", "header-utf8",
            pack(b'{"__metadata__":{"k":"\x80"}}'))
    yield F("header-utf8-above-u10ffff", "header-utf8",
            pack(b'{"a\xf4\x90\x80\x80":' + U8_2.encode() + b"}", AB))

    # ---- header-json ------------------------------------------------------------------------
    J = "header-json"
    yield F("header-json-empty-header", J, pack(b""))
    yield F("header-json-only-whitespace", J, pack(b"    "))
    yield F("header-json-trailing-garbage", J, pack('{"a":%s} x' % U8_2, AB))
    yield F("header-json-second-object", J, pack('{"a":%s}{}' % U8_2, AB))
    yield F("header-json-trailing-nul-padding", J, pack(b'{"a":' + U8_2.encode() + b"}\0\0", AB))
    yield F("header-json-trailing-formfeed", J, pack('{"a":%s}\f' % U8_2, AB))
    yield F("header-json-trailing-vertical-tab", J, pack('{"a":%s}\v' % U8_2, AB))
    yield F("header-json-leading-nbsp", J, pack('\u00a0{"a":%s}' % U8_2, AB))
    yield F("header-json-bom", J, pack('\ufeff{"a":%s}' % U8_2, AB))
    yield F("header-json-trailing-comma-object", J,
            pack('{"a":%s}' % entry("U8", [2], [0, 2], ","), AB))
    yield F("header-json-trailing-comma-top", J, pack('{"a":%s,}' % U8_2, AB))
    yield F("header-json-trailing-comma-array", J,
            pack('{"a":%s}' % entry("U8", "[2,]", [0, 2]), AB))
    yield F("header-json-unterminated-object", J, pack('{"a":%s' % U8_2, AB))
    yield F("header-json-unterminated-string", J, pack('{"a', AB))
    yield F("header-json-missing-colon", J, pack('{"a" %s}' % U8_2, AB))
    yield F("header-json-single-quotes", J, pack("{'a':%s}" % U8_2, AB))
    yield F("header-json-unquoted-key", J, pack("{a:%s}" % U8_2, AB))
    yield F("header-json-comment", J, pack('{/*c*/"a":%s}' % U8_2, AB))
    yield F("header-json-nan", J, pack(with_extra("NaN"), AB))
    yield F("header-json-infinity", J, pack(with_extra("Infinity"), AB))
    yield F("header-json-leading-zero-shape", J, pack('{"a":%s}' % entry("U8", "[02]", [0, 2]), AB))
    yield F("header-json-leading-zero-offsets", J,
            pack('{"a":%s}' % entry("U8", [2], "[00,2]"), AB))
    yield F("header-json-leading-zero-ignored", J, pack(with_extra("01"), AB))
    yield F("header-json-plus-sign", J, pack('{"a":%s}' % entry("U8", "[+2]", [0, 2]), AB))
    yield F("header-json-bare-minus", J, pack(with_extra("-"), AB))
    yield F("header-json-trailing-dot", J, pack(with_extra("1."), AB))
    yield F("header-json-leading-dot", J, pack(with_extra(".5"), AB))
    yield F("header-json-hex-number", J, pack(with_extra("0x10"), AB))
    yield F("header-json-bad-literal", J, pack(with_extra("nul"), AB))
    yield F("header-json-bad-escape", J, pack(with_extra('"\\q"'), AB))
    yield F("header-json-short-unicode-escape", J, pack(with_extra('"\\u00"'), AB))
    yield F("header-json-lone-high-surrogate", J, pack(with_extra('"\\ud800"'), AB))
    yield F("header-json-lone-low-surrogate-in-name", J, pack('{"a\\udc00":%s}' % U8_2, AB))
    yield F("header-json-high-surrogate-then-bmp", J, pack(with_extra('"\\ud83d\\u0041"'), AB))
    yield F("header-json-lone-surrogate-in-metadata", J, pack('{"__metadata__":{"k":"\\ud800"}}'))
    yield F("header-json-control-char-in-string", J, pack(with_extra('"a\x01b"'), AB))
    yield F("header-json-raw-tab-in-name", J, pack('{"a\tb":%s}' % U8_2, AB))
    yield F("header-json-raw-newline-in-metadata", J, pack('{"__metadata__":{"k":"a\nb"}}'))
    yield F("header-json-number-out-of-range", J, pack(with_extra("1e999"), AB))
    yield F("header-json-negative-number-out-of-range", J, pack(with_extra("-1e999"), AB))
    yield F("header-json-number-out-of-range-top-level", J,
            pack('{"a":%s,"x":1e999}' % U8_2, AB))
    yield F("header-json-number-out-of-range-in-shape", J,
            pack('{"a":%s}' % entry("U8", "[1e400]", [0, 2]), AB))
    yield F("header-json-nesting-128-arrays", J, pack(with_extra("[" * 126 + "]" * 126), AB),
            note="top object + tensor object + 126 arrays = 128 containers")
    yield F("header-json-nesting-128-objects", J,
            pack('{"a":%s}' % ('{"x":' * 127 + "1" + "}" * 127), AB))
    yield F("header-json-nesting-128-in-tensor-value", J,
            pack('{"a":%s}' % ("[" * 127 + "]" * 127), AB))
    yield F("header-json-nesting-deep-unclosed", J, pack(b"[" * 5000))
    yield F("header-json-nesting-128-in-metadata", J,
            pack('{"__metadata__":%s}' % ('{"x":' * 127 + '"v"' + "}" * 127)))

    # ---- header-not-object ------------------------------------------------------------------
    N = "header-not-object"
    yield F("header-not-object-array", N, pack("[]"))
    yield F("header-not-object-array-of-tensor", N, pack("[%s]" % U8_2, AB))
    yield F("header-not-object-string", N, pack('"abc"'))
    yield F("header-not-object-number", N, pack("42"))
    yield F("header-not-object-null", N, pack("null"))
    yield F("header-not-object-true", N, pack("true"))
    yield F("header-not-object-padded-array", N, pack("  []  "))

    # ---- metadata ---------------------------------------------------------------------------
    M = "metadata"
    yield F("metadata-string", M, pack('{"__metadata__":"x"}'))
    yield F("metadata-array", M, pack('{"__metadata__":["a","b"]}'))
    yield F("metadata-number", M, pack('{"__metadata__":1}'))
    yield F("metadata-true", M, pack('{"__metadata__":true}'))
    yield F("metadata-value-number", M, pack('{"__metadata__":{"k":1}}'))
    yield F("metadata-value-null", M, pack('{"__metadata__":{"k":null}}'))
    yield F("metadata-value-object", M, pack('{"__metadata__":{"k":{"x":"y"}}}'))
    yield F("metadata-value-array", M, pack('{"__metadata__":{"k":["y"]}}'))
    yield F("metadata-as-tensor", M, pack('{"__metadata__":%s}' % U8_2, AB))
    yield F("metadata-duplicate-key", M,
            pack('{"__metadata__":{"a":"1"},"b":%s,"__metadata__":{"a":"1"}}' % U8_2, AB))
    yield F("metadata-duplicate-key-escaped", M,
            pack('{"__metadata__":{"a":"1"},"\\u005f_metadata__":{"a":"1"}}'))
    yield F("metadata-duplicate-null", M, pack('{"__metadata__":null,"__metadata__":null}'))

    # ---- tensor-entry -----------------------------------------------------------------------
    T = "tensor-entry"
    bad = f"tensor '{BAD}'"  # how the error line names the defective tensor

    def one(body, data=AB):
        return pack(obj([("ok", entry("U8", [0], [0, 0])), (BAD, body)]), data)

    yield F("tensor-entry-null", T, one("null"), bad)
    yield F("tensor-entry-string", T, one('"U8"'), bad)
    yield F("tensor-entry-number", T, one("1"), bad)
    yield F("tensor-entry-true", T, one("true"), bad)
    yield F("tensor-entry-empty-object", T, one("{}"), bad)
    yield F("tensor-entry-missing-dtype", T, one('{"shape":[2],"data_offsets":[0,2]}'), bad)
    yield F("tensor-entry-missing-shape", T, one('{"dtype":"U8","data_offsets":[0,2]}'), bad)
    yield F("tensor-entry-missing-offsets", T, one('{"dtype":"U8","shape":[2]}'), bad)
    yield F("tensor-entry-duplicate-dtype", T,
            one('{"dtype":"U8","shape":[2],"data_offsets":[0,2],"dtype":"U8"}'), bad)
    yield F("tensor-entry-duplicate-shape", T,
            one('{"dtype":"U8","shape":[2],"shape":[2],"data_offsets":[0,2]}'), bad)
    yield F("tensor-entry-duplicate-offsets", T,
            one('{"data_offsets":[0,2],"dtype":"U8","shape":[2],"data_offsets":[0,2]}'), bad)
    yield F("tensor-entry-duplicate-field-escaped", T,
            one('{"dtype":"U8","shape":[2],"data_offsets":[0,2],"\\u0064type":"U8"}'), bad)
    yield F("tensor-entry-shape-float", T, one(entry("U8", "[2.0]", [0, 2])), bad)
    yield F("tensor-entry-shape-negative-zero", T, one(entry("U8", "[-0]", [0, 0]), b""), bad,
            note="serde_json reads -0 as the float -0.0")
    yield F("tensor-entry-shape-float-zero", T, one(entry("U8", "[0.0]", [0, 0]), b""), bad)
    yield F("tensor-entry-shape-exponent", T, one(entry("U8", "[2e0]", [0, 2])), bad)
    yield F("tensor-entry-shape-negative", T, one(entry("U8", "[-2]", [0, 2])), bad)
    yield F("tensor-entry-shape-string-element", T, one(entry("U8", '["2"]', [0, 2])), bad)
    yield F("tensor-entry-shape-nested", T, one(entry("U8", "[[2]]", [0, 2])), bad)
    yield F("tensor-entry-shape-bool", T, one(entry("U8", "[true]", [0, 2])), bad)
    yield F("tensor-entry-shape-null-element", T, one(entry("U8", "[null]", [0, 2])), bad)
    yield F("tensor-entry-shape-above-u64", T,
            one(entry("U8", "[18446744073709551616]", [0, 2])), bad)
    yield F("tensor-entry-shape-number", T, one(entry("U8", "2", [0, 2])), bad)
    yield F("tensor-entry-shape-null", T, one(entry("U8", "null", [0, 2])), bad)
    yield F("tensor-entry-shape-object", T, one(entry("U8", '{"0":2}', [0, 2])), bad)
    yield F("tensor-entry-offsets-one", T, one(entry("U8", [2], "[2]")), bad)
    yield F("tensor-entry-offsets-three", T, one(entry("U8", [2], "[0,2,2]")), bad)
    yield F("tensor-entry-offsets-empty", T, one(entry("U8", [0], "[]"), b""), bad)
    yield F("tensor-entry-offsets-negative", T, one(entry("U8", [2], "[-1,1]")), bad)
    yield F("tensor-entry-offsets-negative-zero", T, one(entry("U8", [0], "[-0,0]"), b""), bad,
            note="serde_json reads -0 as the float -0.0")
    yield F("tensor-entry-offsets-float", T, one(entry("U8", [2], "[0,2.0]")), bad)
    yield F("tensor-entry-offsets-string", T, one(entry("U8", [2], '["0","2"]')), bad)
    yield F("tensor-entry-offsets-above-u64", T,
            one(entry("U8", [2], "[0,18446744073709551616]")), bad)
    yield F("tensor-entry-offsets-object", T, one(entry("U8", [2], '{"0":0,"1":2}')), bad)
    yield F("tensor-entry-offsets-null", T, one(entry("U8", [2], "null")), bad)
    yield F("tensor-entry-dtype-null", T, one(entry(Raw("null"), [2], [0, 2])), bad)
    yield F("tensor-entry-dtype-number", T, one(entry(Raw("8"), [2], [0, 2])), bad,
            note="dtype that is not a string: entry malformed (not an unknown dtype name)")
    yield F("tensor-entry-dtype-array", T, one(entry(Raw('["U8"]'), [2], [0, 2])), bad)
    yield F("tensor-entry-dtype-map-empty", T, one(entry(Raw("{}"), [2], [0, 2])), bad)
    yield F("tensor-entry-dtype-map-two-keys", T,
            one(entry(Raw('{"U8":null,"I8":null}'), [2], [0, 2])), bad)
    yield F("tensor-entry-dtype-map-non-null-value", T,
            one(entry(Raw('{"U8":1}'), [2], [0, 2])), bad)
    yield F("tensor-entry-array-form-two", T, one('["U8",[2]]'), bad)
    yield F("tensor-entry-array-form-four", T, one('["U8",[2],[0,2],1]'), bad)
    yield F("tensor-entry-array-form-empty", T, one("[]"), bad)
    yield F("tensor-entry-deep-array", T, one("[" * 126 + "]" * 126), bad,
            note="127 containers in total: parses, then is no tensor")
    yield F("tensor-entry-shadowed-duplicate-null", T,
            pack(obj([(BAD, "null"), (BAD, U8_2)]), AB), bad,
            note="a shadowed duplicate must still be a well-formed entry")

    # ---- dtype ------------------------------------------------------------------------------
    D = "dtype"
    for slug, dt in [("lowercase", "u8"), ("empty", ""), ("fp32", "FP32"), ("float32", "float32"),
                     ("trailing-space", "U8 "), ("f8-e4m3fn", "F8_E4M3FN"), ("q4", "Q4_0"),
                     ("c128", "C128"), ("f6-lower", "f6_e2m3")]:
        yield F(f"dtype-{slug}", D, one(entry(dt, [2], [0, 2])), bad)
    yield F("dtype-map-form-unknown", D, one(entry(Raw('{"X8":null}'), [2], [0, 2])), bad)
    yield F("dtype-shadowed-duplicate-unknown", D, pack(obj([
        (BAD, entry("X8", [2], [0, 2])), (BAD, U8_2)]), AB), bad)

    # ---- data-offsets -----------------------------------------------------------------------
    O = "data-offsets"
    yield F("data-offsets-hole", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("b", entry("U8", [2], [3, 5]))]), pattern(5)),
        "tensor 'b'")
    yield F("data-offsets-overlap", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("b", entry("U8", [2], [1, 3]))]), pattern(3)),
        "tensor 'b'")
    yield F("data-offsets-first-not-zero", O,
            pack(obj([("a", entry("U8", [2], [1, 3]))]), pattern(3)), "tensor 'a'")
    yield F("data-offsets-end-before-begin", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("b", entry("U8", [0], [2, 1]))]), AB), "tensor 'b'")
    yield F("data-offsets-end-before-begin-first", O,
            pack(obj([("a", entry("U8", [0], [0, 0])), ("b", entry("U8", [0], [2, 0]))])),
            "tensor 'b'", note="sorted (0,0),(2,0): b begins at 2 while the previous ends at 0")
    yield F("data-offsets-empty-inside-other", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("b", entry("U8", [0], [1, 1]))]), AB), "tensor 'b'")
    yield F("data-offsets-identical-ranges", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("b", entry("U8", [2], [0, 2]))]), AB),
        note="which of a/b is reported depends on hash order in the reference")
    yield F("data-offsets-hole-at-empty", O, pack(obj([
        ("a", entry("U8", [2], [0, 2])), ("e", entry("U8", [0], [3, 3])),
        ("b", entry("U8", [2], [3, 5]))]), pattern(5)), "tensor 'e'")
    yield F("data-offsets-only-empty-not-at-zero", O,
            pack(obj([("e", entry("U8", [0], [5, 5]))])), "tensor 'e'")
    yield F("data-offsets-huge-begin", O,
            pack(obj([("a", entry("U8", [2], [U64_MAX - 1, U64_MAX]))]), AB), "tensor 'a'")

    # ---- shape-overflow ---------------------------------------------------------------------
    S = "shape-overflow"
    yield F("shape-overflow-left-to-right-with-zero", S,
            pack(obj([(BAD, entry("U8", [1 << 32, 1 << 32, 0], [0, 0]))])), bad,
            note="the product overflows before the trailing 0 is reached")
    yield F("shape-overflow-elements", S,
            pack(obj([(BAD, entry("U8", [1 << 63, 2], [0, 0]))])), bad)
    yield F("shape-overflow-bits-u8", S,
            pack(obj([(BAD, entry("U8", [1 << 61], [0, 0]))])), bad,
            note="2^61 elements fit, 2^61 * 8 bits do not")
    yield F("shape-overflow-bits-f4", S,
            pack(obj([(BAD, entry("F4", [1 << 62], [0, 0]))])), bad)
    yield F("shape-overflow-bits-f64", S,
            pack(obj([(BAD, entry("F64", [1 << 58], [0, 0]))])), bad)
    yield F("shape-overflow-u64-max-dim", S,
            pack(obj([(BAD, entry("BOOL", [U64_MAX], [0, 0]))])), bad)
    yield F("shape-overflow-after-valid-tensor", S, pack(obj([
        ("a", U8_2), (BAD, entry("I32", [1 << 20, 1 << 20, 1 << 20, 8], [2, 2]))]), AB), bad)

    # ---- sub-byte ---------------------------------------------------------------------------
    B = "sub-byte"
    yield F("sub-byte-f4-odd", B, pack(obj([(BAD, entry("F4", [3], [0, 2]))]), AB), bad)
    yield F("sub-byte-f4-odd-2d", B, pack(obj([(BAD, entry("F4", [3, 5], [0, 8]))]), pattern(8)),
            bad)
    yield F("sub-byte-f6-e2m3-one", B, pack(obj([(BAD, entry("F6_E2M3", [1], [0, 1]))]), b"a"),
            bad)
    yield F("sub-byte-f6-e3m2-five", B,
            pack(obj([(BAD, entry("F6_E3M2", [5], [0, 4]))]), pattern(4)), bad)
    yield F("sub-byte-f4-scalar", B, pack(obj([(BAD, entry("F4", [], [0, 1]))]), b"a"), bad)

    # ---- size-mismatch ----------------------------------------------------------------------
    Z = "size-mismatch"
    yield F("size-mismatch-u8-short", Z, pack(obj([(BAD, entry("U8", [3], [0, 2]))]), AB), bad)
    yield F("size-mismatch-u8-long", Z,
            pack(obj([(BAD, entry("U8", [1], [0, 2]))]), AB), bad)
    yield F("size-mismatch-f32", Z, pack(obj([(BAD, entry("F32", [2], [0, 4]))]), pattern(4)), bad)
    yield F("size-mismatch-f4", Z, pack(obj([(BAD, entry("F4", [4], [0, 1]))]), b"a"), bad)
    yield F("size-mismatch-f6", Z, pack(obj([(BAD, entry("F6_E2M3", [4], [0, 4]))]), pattern(4)),
            bad)
    yield F("size-mismatch-bool", Z, pack(obj([(BAD, entry("BOOL", [2], [0, 1]))]), b"a"), bad)
    yield F("size-mismatch-scalar", Z, pack(obj([(BAD, entry("F64", [], [0, 4]))]), pattern(4)),
            bad)
    yield F("size-mismatch-empty-shape-nonempty-range", Z,
            pack(obj([(BAD, entry("F32", [0, 4], [0, 4]))]), pattern(4)), bad)
    yield F("size-mismatch-second-tensor", Z, pack(obj([
        ("a", U8_2), (BAD, entry("C64", [1], [2, 18]))]), pattern(18)), bad,
        note="C64 is 8 bytes per element")

    # ---- data-truncated / trailing-bytes ----------------------------------------------------
    yield F("data-truncated-one-byte", "data-truncated",
            pack('{"a":%s}' % U8_2, b"a"))
    yield F("data-truncated-no-data", "data-truncated",
            pack(obj([("a", entry("F32", [4], [0, 16]))])))
    yield F("data-truncated-huge", "data-truncated",
            pack(obj([("a", entry("U8", [1 << 60], [0, 1 << 60]))]), AB),
            note="8 + header + end must not overflow")
    yield F("data-truncated-huge-chain", "data-truncated", pack(obj(
        [(f"t{i}", entry("U8", [1 << 60], [i << 60, (i + 1) << 60])) for i in range(15)]), AB),
        note="the last end is 15 * 2^60, close to 2^64")
    yield F("trailing-bytes-one", "trailing-bytes", pack('{"a":%s}' % U8_2, AB + b"\0"))
    yield F("trailing-bytes-no-tensors", "trailing-bytes", pack("{}", b"x"))
    yield F("trailing-bytes-after-padded-header", "trailing-bytes",
            st_file([("a", "F16", [3])], pad_to=8) + b"\0" * 8)


# ----------------------------------------------------------------------------------------------
# Folder / sharded cases


def _dir_cases() -> Iterator[Case]:
    def shard(specs, seed=0):
        return st_file(specs, seed=seed, pad_to=8)

    def index(weight_map, extra=None):
        doc = dict(extra or {})
        doc["weight_map"] = weight_map
        return json.dumps(doc, indent=2).encode()

    s1 = "model-00001-of-00002.safetensors"
    s2 = "model-00002-of-00002.safetensors"
    shard1 = shard([("embed.weight", "BF16", [8, 4]), ("layers.0.w", "F32", [4, 4])], 1)
    shard2 = shard([("layers.1.w", "F32", [4, 4]), ("lm_head.weight", "BF16", [8, 4])], 2)
    wmap = {"embed.weight": s1, "layers.0.w": s1, "layers.1.w": s2, "lm_head.weight": s2}
    good_index = index(wmap, {"metadata": {"total_size": 2 * (64 + 64)}})

    def D(name, rule, files, target="", error_file=None, fragments=(), note=""):
        return Case(name=name, kind="dir", rule=rule, fragments=tuple(fragments),
                    files=tuple(files), target=target, error_file=error_file, note=note)

    # ---- valid ------------------------------------------------------------------------------
    yield D("dir-valid-single-file", None, [("model.safetensors", shard1)])
    yield D("dir-valid-single-file-other-name", None,
            [("weights.safetensors", shard1), ("README.md", b"# not a checkpoint\n")])
    yield D("dir-valid-index", None, [(INDEX_NAME, good_index), (s1, shard1), (s2, shard2)])
    yield D("dir-valid-index-path", None, [(INDEX_NAME, good_index), (s1, shard1), (s2, shard2)],
            target=INDEX_NAME)
    yield D("dir-valid-index-no-metadata", None,
            [(INDEX_NAME, index(wmap)), (s1, shard1), (s2, shard2)])
    yield D("dir-valid-index-subfolder-shard", None, [
        (INDEX_NAME, index({"embed.weight": "sub/" + s1, "layers.0.w": "sub/" + s1,
                            "layers.1.w": s2, "lm_head.weight": s2})),
        ("sub/" + s1, shard1), (s2, shard2)], note="a shard below the folder is fine")
    yield D("dir-valid-index-dot-slash", None, [
        (INDEX_NAME, index({k: "./" + v for k, v in wmap.items()})), (s1, shard1), (s2, shard2)])
    yield D("dir-valid-no-index-two-shards", None, [(s1, shard1), (s2, shard2)])
    yield D("dir-valid-no-index-empty-shard", None,
            [(s1, shard1), ("empty.safetensors", pack("{}"))])
    yield D("dir-valid-index-shard-with-empty-tensor", None, [
        (INDEX_NAME, index({**wmap, "empty": s2})), (s1, shard1),
        (s2, shard([("layers.1.w", "F32", [4, 4]), ("lm_head.weight", "BF16", [8, 4]),
                    ("empty", "F16", [0])], 2))])

    # ---- discovery --------------------------------------------------------------------------
    yield D("not-found-file", "not-found", [], target="missing.safetensors",
            error_file="missing.safetensors", fragments=("missing.safetensors",))
    yield D("not-found-folder", "not-found", [], target="no_such_dir",
            error_file="no_such_dir", fragments=("no_such_dir",))
    yield D("no-checkpoint-empty-folder", "no-checkpoint", [], error_file="")
    yield D("no-checkpoint-other-files", "no-checkpoint",
            [("README.md", b"hello\n"), ("model.bin", b"\0" * 16)], error_file="")

    # ---- index errors -----------------------------------------------------------------------
    yield D("index-json-syntax", "index-json",
            [(INDEX_NAME, b'{"weight_map": {'), (s1, shard1)], error_file=INDEX_NAME)
    yield D("index-json-empty", "index-json", [(INDEX_NAME, b""), (s1, shard1)],
            error_file=INDEX_NAME)
    yield D("index-json-not-object", "index-json",
            [(INDEX_NAME, b'[{"weight_map": {}}]'), (s1, shard1)], error_file=INDEX_NAME)
    yield D("index-json-syntax-via-index-path", "index-json",
            [(INDEX_NAME, b"{,}"), (s1, shard1)], target=INDEX_NAME, error_file=INDEX_NAME)
    yield D("index-weight-map-missing", "index-weight-map",
            [(INDEX_NAME, b'{"metadata": {}}'), (s1, shard1)], error_file=INDEX_NAME)
    yield D("index-weight-map-array", "index-weight-map",
            [(INDEX_NAME, b'{"weight_map": ["a"]}'), (s1, shard1)], error_file=INDEX_NAME)
    yield D("index-weight-map-null", "index-weight-map",
            [(INDEX_NAME, b'{"weight_map": null}'), (s1, shard1)], error_file=INDEX_NAME)
    yield D("index-weight-map-value-number", "index-weight-map",
            [(INDEX_NAME, b'{"weight_map": {"embed.weight": 1}}'), (s1, shard1)],
            error_file=INDEX_NAME)
    yield D("index-shard-path-parent", "index-shard-path", [
        (INDEX_NAME, index({**wmap, "layers.1.w": "../" + s2})), (s1, shard1), (s2, shard2)],
        error_file=INDEX_NAME, fragments=("../" + s2,))
    yield D("index-shard-path-absolute", "index-shard-path", [
        (INDEX_NAME, index({**wmap, "layers.1.w": "/tmp/" + s2})), (s1, shard1), (s2, shard2)],
        error_file=INDEX_NAME, fragments=("/tmp/" + s2,))
    yield D("index-shard-path-escapes-via-subdir", "index-shard-path", [
        (INDEX_NAME, index({**wmap, "layers.1.w": "sub/../../" + s2})),
        (s1, shard1), (s2, shard2), ("sub/keep.txt", b"")],
        error_file=INDEX_NAME, fragments=("sub/../../" + s2,))
    yield D("index-shard-missing", "index-shard-missing", [
        (INDEX_NAME, index({**wmap, "layers.1.w": "missing-shard.safetensors",
                            "lm_head.weight": "missing-shard.safetensors"})), (s1, shard1)],
        fragments=("missing-shard.safetensors",))
    yield D("index-tensor-missing", "index-tensor-missing", [
        (INDEX_NAME, index({**wmap, "ghost.weight": s2})), (s1, shard1), (s2, shard2)],
        fragments=("ghost.weight",))
    yield D("index-tensor-unmapped", "index-tensor-unmapped", [
        (INDEX_NAME, index(wmap)), (s1, shard1),
        (s2, shard([("layers.1.w", "F32", [4, 4]), ("lm_head.weight", "BF16", [8, 4]),
                    ("extra.bias", "F32", [4])], 2))],
        fragments=("extra.bias",))

    # ---- duplicate tensors across shards ----------------------------------------------------
    dup2 = shard([("layers.1.w", "F32", [4, 4]), ("embed.weight", "BF16", [8, 4])], 3)
    yield D("duplicate-tensor-no-index", "duplicate-tensor", [(s1, shard1), (s2, dup2)],
            fragments=("embed.weight",))
    yield D("duplicate-tensor-with-index", "duplicate-tensor", [
        (INDEX_NAME, index({"embed.weight": s1, "layers.0.w": s1, "layers.1.w": s2})),
        (s1, shard1), (s2, dup2)], fragments=("embed.weight",),
        note="contract: a name in two shard headers is duplicate-tensor even with an index")

    # ---- an invalid shard reports its own rule and path -------------------------------------
    yield D("shard-invalid-trailing-bytes-with-index", "trailing-bytes", [
        (INDEX_NAME, good_index), (s1, shard1), (s2, shard2 + b"\0")], error_file=s2)
    yield D("shard-invalid-header-json-no-index", "header-json", [
        (s1, shard1), (s2, pack('{"a":%s,}' % U8_2, AB))], error_file=s2)
    yield D("shard-invalid-size-mismatch-index-path", "size-mismatch", [
        (INDEX_NAME, index({"embed.weight": s1, "layers.0.w": s1, BAD: s2})),
        (s1, shard1), (s2, pack(obj([(BAD, entry("F32", [3], [0, 8]))]), pattern(8)))],
        target=INDEX_NAME, error_file=s2, fragments=(f"tensor '{BAD}'",))
    yield D("shard-invalid-single-file-in-folder", "header-too-small",
            [("model.safetensors", b"\1\0")], error_file="model.safetensors")


def cases() -> Iterator[Case]:
    """Every crafted case, in a fixed order."""
    seen = set()
    for case in list(_file_cases()) + list(_dir_cases()):
        if case is None:
            continue
        assert case.name not in seen, f"duplicate case name {case.name}"
        seen.add(case.name)
        yield case


def file_cases() -> list:
    return [c for c in cases() if c.kind == "file"]


def dir_cases() -> list:
    return [c for c in cases() if c.kind == "dir"]


def write_corpus(out: Path) -> list:
    """Materialises every case under `out` and writes `out/manifest.json`."""
    out = Path(out)
    manifest = []
    for case in cases():
        path = case.materialize(out)
        manifest.append({"name": case.name, "kind": case.kind, "rule": case.rule,
                         "fragments": list(case.fragments),
                         "path": str(path.relative_to(out)), "note": case.note})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    written = write_corpus(Path(sys.argv[1]))
    print(f"wrote {len(written)} cases to {sys.argv[1]}")
