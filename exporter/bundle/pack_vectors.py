"""Conformance vectors of the pack format: small packs with the files they must rebuild, and
malformed packs each port must refuse with the same error class before writing anything.

``python -m exporter.bundle.pack_vectors conformance/pack_vectors.json`` writes them; the Kotlin, Swift
and JS rebuilders and `tests/test_pack.py` read them. Every case has ``pack`` (base64), the caps
``max_file_bytes`` / ``max_total_bytes``, and either ``files`` (path -> size, sha256) with ``regions``
(path -> [offset, length] in the pack of each file stored as one copy of a raw blob, the rest
null: what ``region`` answers; each offset a multiple of 64) or ``error`` (the ``PackError.code``
expected: format, truncated, range, cap, path, hash).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from exporter.bundle.pack import META, _Builder
from exporter.bundle.packfile import CODEC_DEFLATE, CODEC_RAW, PackedFile, varint, write_pack, zigzag
from exporter.bundle.packfile import PackReader

BIG = 1 << 40


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _file(path: str, data: bytes, blob: int, offset: int, ops_len: int, sha: str | None = None) -> PackedFile:
    return PackedFile(path, len(data), sha or hashlib.sha256(data).hexdigest(), blob, offset, ops_len)


def _insert(data: bytes) -> bytes:
    return varint(len(data) << 1) + data


def _copy(n: int, blob: int, delta: int) -> bytes:
    return varint(n << 1 | 1) + varint(blob) + varint(zigzag(delta))


def _one_file(ops: bytes, data: bytes, *, path: str = "a.bin", sha: str | None = None,
              base: bytes = b"", codec: int = CODEC_RAW) -> bytes:
    """A pack of one file whose op stream is ``ops`` (blob 0 = ``base`` raw, blob 1 = the ops)."""
    stored = _deflate(ops) if codec == CODEC_DEFLATE else ops
    return write_pack([(CODEC_RAW, base, len(base)), (codec, stored, len(ops))],
                      [_file(path, data, 1, 0, len(ops), sha)])


def _real(seed: int) -> bytes:
    """A pack made by the real encoder: a wide float32 matrix, narrow prefix slices of it (in two
    layouts), a keep-rate sibling, a directory artifact and byte-identical files."""
    rng = np.random.default_rng(seed)
    wide = rng.standard_normal((48, 64)).astype(np.float32)
    header = b"model-header" + bytes(20)
    files = {
        "tflite/w64.fp32.tflite": header + wide.tobytes(),
        "tflite/w32.fp32.tflite": header + wide[:24, :32].tobytes() + b"tail",
        "tflite/w32_k50.fp32.tflite": b"other" + header + wide[:24, :32].tobytes(),
        "tflite/w16.fp32.tflite": header + np.ascontiguousarray(wide.T[:16, :12]).tobytes(),
    }
    b = _Builder(compress_base=False)
    b.add_group(META, [("manifest.json", b'{"variants": []}\n'), ("empty.txt", b""),
                       ("dir/ünï code.json", b'{"x": 1}')])
    b.add_group(("tflite", "fp32"), list(files.items()))
    b.add_group(("coreml", "fp32"), [("coreml/w.mlpackage/Manifest.json", b'{"a": 1}'),
                                     ("coreml/w.mlpackage/Data/weights/weight.bin", wide[:, :16].tobytes()),
                                     ("coreml/w2.mlpackage/Manifest.json", b'{"a": 1}')])
    return write_pack(b.blobs, b.files)


def _expect_files(pack: bytes) -> dict[str, dict[str, Any]]:
    r = PackReader(pack)
    out = {}
    for f in r.files:
        data = r.read(f.path)
        out[f.path] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out


def _expect_regions(pack: bytes) -> dict[str, list[int] | None]:
    r = PackReader(pack)
    return {f.path: (list(where) if (where := r.region(f.path)) else None) for f in r.files}


def cases() -> list[dict[str, Any]]:
    hello = b"hello, pack"
    base = bytes(range(256)) * 4
    good = [
        ("empty pack", write_pack([], [])),
        ("insert only", _one_file(_insert(hello), hello)),
        ("copies with negative deltas from a raw blob, deflated ops",
         _one_file(_copy(16, 0, 100) + _insert(b"--") + _copy(16, 0, -32) + _copy(8, 0, 500), base[100:116] + b"--"
                   + base[84:100] + base[600:608], base=base, codec=CODEC_DEFLATE)),
        ("copy from the ops blob itself", _one_file(_insert(hello) + _copy(5, 1, 1), hello + hello[:5])),
        ("real encoder, slices and a directory artifact", _real(0)),
        ("one copy of a DEFLATE blob: rebuilt, not in place",
         write_pack([(CODEC_DEFLATE, _deflate(base), len(base)), (CODEC_RAW, _copy(len(base), 0, 0), 4)],
                    [_file("a.bin", base, 1, 0, 4)])),
        ("one copy from inside a raw blob: in place at its offset",
         _one_file(_copy(128, 0, 64), base[64:192], base=base)),
    ]
    bad_sha = "00" * 32
    ops = _insert(hello)
    bad: list[tuple[str, bytes, str, dict[str, int]]] = [
        ("bad magic", b"NOTAPACK" + _one_file(ops, hello)[8:], "format", {}),
        ("unknown version", b"SLIMPACK\x07" + _one_file(ops, hello)[9:], "format", {}),
        ("truncated preamble", b"SLIMPACK\x01\x00", "truncated", {}),
        ("truncated header", _one_file(ops, hello)[:20], "truncated", {}),
        ("truncated data", _one_file(ops, hello)[:-3], "truncated", {}),
        ("varint longer than 7 bytes", b"SLIMPACK\x01" + (9).to_bytes(4, "little") + b"\xff" * 8 + b"\x00",
         "format", {}),
        ("unknown codec", write_pack([(9, b"x", 1)], []), "format", {}),
        ("stray bytes after the header", _stray(_one_file(ops, hello)), "format", {}),
        ("copy reads past its blob", _one_file(_copy(16, 0, 1020), base[1020:] + bytes(12), base=base), "range", {}),
        ("copy reads before its blob", _one_file(_copy(4, 0, 0) + _copy(4, 0, -10), base[:8], base=base), "range", {}),
        ("copy from a missing blob", _one_file(_copy(4, 7, 0), base[:4], base=base), "range", {}),
        ("ops write past the declared size", _size_lie(hello, ops, len(hello) - 2), "range", {}),
        ("ops write fewer bytes than declared", _size_lie(hello, ops, len(hello) + 4), "range", {}),
        ("op stream outside its blob",
         write_pack([(CODEC_RAW, ops, len(ops))], [_file("a.bin", hello, 0, 2, len(ops))]),
         "range", {}),
        ("deflate blob inflates past its declared size",
         write_pack([(CODEC_DEFLATE, _deflate(ops + bytes(100)), len(ops))], [_file("a.bin", hello, 0, 0, len(ops))]),
         "range", {}),
        ("rebuilt file has the wrong sha256", _one_file(ops, hello, sha=bad_sha), "hash", {}),
        ("file expands beyond the file cap", _one_file(ops, hello), "cap", {"max_file_bytes": 8}),
        ("files expand beyond the total cap", _two(hello), "cap", {"max_total_bytes": len(hello) + 3}),
        ("blob expands beyond the total cap",
         write_pack([(CODEC_DEFLATE, _deflate(bytes(5000)), 5000)], []), "cap", {"max_total_bytes": 4096}),
    ]
    for name, path in (("parent directory", "../evil.bin"), ("absolute path", "/etc/evil"),
                       ("parent inside", "onnx/../../evil"), ("backslash", "onnx\\..\\evil"),
                       ("drive letter", "C:evil"), ("empty component", "onnx//a"), ("dot", "./a"), ("empty", "")):
        bad.append((f"path escapes the target: {name}", _one_file(ops, hello, path=path), "path", {}))
    bad.append(("duplicate path", write_pack([(CODEC_RAW, ops, len(ops))], [_file("a", hello, 0, 0, len(ops))] * 2),
                "path", {}))
    bad.append(("file and directory clash", write_pack([(CODEC_RAW, ops, len(ops))], [
        _file("a", hello, 0, 0, len(ops)), _file("a/b", hello, 0, 0, len(ops))]), "path", {}))
    bad.append(("path not UTF-8", _one_file(ops, hello, path="aX.bin").replace(b"aX.bin", b"a\xff.bin"), "path", {}))
    out = []
    for name, pack in good:
        out.append({"name": name, "pack": base64.b64encode(pack).decode(), "max_file_bytes": BIG,
                    "max_total_bytes": BIG, "files": _expect_files(pack), "regions": _expect_regions(pack)})
    for name, pack, code, caps in bad:
        out.append({"name": name, "pack": base64.b64encode(pack).decode(),
                    "max_file_bytes": caps.get("max_file_bytes", BIG),
                    "max_total_bytes": caps.get("max_total_bytes", BIG), "error": code})
    return out


def _stray(pack: bytes) -> bytes:
    hlen = int.from_bytes(pack[9:13], "little")
    return pack[:9] + (hlen + 1).to_bytes(4, "little") + pack[13:13 + hlen] + b"\x00" + pack[13 + hlen:]


def _size_lie(data: bytes, ops: bytes, size: int) -> bytes:
    f = PackedFile("a.bin", size, hashlib.sha256(data).hexdigest(), 0, 0, len(ops))
    return write_pack([(CODEC_RAW, ops, len(ops))], [f])


def _two(data: bytes) -> bytes:
    ops = _insert(data)
    return write_pack([(CODEC_RAW, ops, len(ops))],
                      [_file("a", data, 0, 0, len(ops)), _file("b", data, 0, 0, len(ops))])


def write_vectors(path: str | Path) -> Path:
    doc = {"format": "slimvit-pack-vectors", "version": 1,
           "about": "Generated by `python -m exporter.bundle.pack_vectors`; docs/bundle-format.md, Packed bundles.",
           "cases": cases()}
    Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


if __name__ == "__main__":
    print(write_vectors(sys.argv[1] if len(sys.argv) > 1 else "conformance/pack_vectors.json"))
