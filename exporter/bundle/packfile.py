"""The packed bundle file (``.svpack``): a tiny copy/insert container, read and checked.

Layout (docs/bundle-format.md, "Packed bundles"; every integer is little-endian, every ``varint``
an unsigned LEB128 of at most 7 bytes):

    "SLIMPACK"  u8 version=1  u32 header_len  header  data
    header = varint n_blobs, n_blobs x (u8 codec, varint offset, varint stored, varint size)
             varint n_files, n_files x (varint path_len, path UTF-8, varint size, 32-byte sha256,
                                        varint ops_blob, varint ops_offset, varint ops_len)

A blob is ``stored`` bytes at ``offset`` in ``data``; codec 0 keeps them as they are, codec 1 is
raw DEFLATE (RFC 1951) that inflates to exactly ``size`` bytes. A file is rebuilt by running its
op stream (``ops_len`` bytes at ``ops_offset`` of the decoded blob ``ops_blob``):

    varint h; n = h >> 1
    h & 1 == 0: INSERT the next n bytes of the op stream
    h & 1 == 1: COPY n bytes: varint blob, varint z; offset = prev_end + unzigzag(z);
                the bytes [offset, offset + n) of the decoded blob; prev_end = offset + n

Everything about the structure is checked when the pack is opened or before a file's first byte
is produced: truncation, ranges, the size caps, paths; each rebuilt file is checked against its
size and sha256 before a caller gets it. The app ports (Kotlin, Swift, JS) implement the same
reader against the vectors in ``conformance/pack_vectors.json``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import SlimvitError

MAGIC = b"SLIMPACK"
VERSION = 1
PREAMBLE = len(MAGIC) + 1 + 4
CODEC_RAW, CODEC_DEFLATE = 0, 1
MAX_VARINT_BYTES = 7  # 49 bits: exact in a JS number
MAX_HEADER_BYTES = 64 << 20
MAX_ENTRIES = 1 << 20


class PackError(SlimvitError):
    """A pack is malformed, over a cap, or rebuilds a file other than the one it promises.

    ``code`` is the class of the problem, the same in every port: ``format``, ``truncated``,
    ``range``, ``cap``, ``path`` or ``hash``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PackLimits:
    """Caps checked against the declared sizes before anything is decoded."""

    file_bytes: int = 2 << 30
    total_bytes: int = 8 << 30


@dataclass(frozen=True)
class Blob:
    codec: int
    offset: int
    stored: int
    size: int


@dataclass(frozen=True)
class PackedFile:
    path: str
    size: int
    sha256: str
    ops_blob: int
    ops_offset: int
    ops_len: int


class _Cursor:
    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise PackError("truncated", f"{self.what} ends early (at byte {self.pos})")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise PackError("truncated", f"{self.what} ends early (wants {n} bytes at {self.pos})")
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos])

    def varint(self) -> int:
        value = 0
        for i in range(MAX_VARINT_BYTES):
            b = self.byte()
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value
        raise PackError("format", f"{self.what}: varint longer than {MAX_VARINT_BYTES} bytes")


def path_problem(path: str) -> str | None:
    """Why ``path`` may not be written under a target directory (None when it may)."""
    if not path or "\\" in path or "\0" in path or re.match(r"^[A-Za-z]:", path) or path.startswith("/"):
        return "must be a non-empty relative '/' path without backslash, NUL or drive letter"
    if any(p in ("", ".", "..") for p in path.split("/")):
        return "has an empty, '.' or '..' component and would escape the target directory"
    return None


class PackReader:
    """An opened, structurally checked pack; `read` rebuilds one file, checked.

    Raises:
        PackError: on open, for any malformed header; on `read`, for a bad op stream or hash.
    """

    def __init__(self, data: bytes | mmap.mmap, limits: PackLimits = PackLimits(), name: str = "pack") -> None:
        self.name = name
        self.limits = limits
        self._data = memoryview(data)
        self._decoded: dict[int, bytes | memoryview] = {}
        self.blobs, self.files, self._data_start = _parse(self._data, limits, name)
        self.by_path = {f.path: f for f in self.files}

    @classmethod
    def open(cls, path: str | Path, limits: PackLimits = PackLimits()) -> PackReader:
        p = Path(path)
        try:
            if not p.is_file():
                raise PackError("format", f"{p}: not a regular file; a pack is one .svpack file")
            with open(p, "rb") as fh:  # mapped: a rebuild copies from the page cache, nothing more
                size = os.fstat(fh.fileno()).st_size
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            return cls(data, limits, str(p))
        except OSError as e:
            raise PackError("format", f"cannot read pack {p}: {e.strerror}") from None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def blob(self, index: int) -> bytes | memoryview:
        """The decoded bytes of a blob (inflated once, then cached)."""
        if index not in self._decoded:
            b = self.blobs[index]
            raw = self._data[self._data_start + b.offset:self._data_start + b.offset + b.stored]
            if b.codec == CODEC_RAW:
                self._decoded[index] = raw
            else:
                d = zlib.decompressobj(-15)
                try:
                    out = d.decompress(bytes(raw), b.size)
                except zlib.error as e:
                    raise PackError("format", f"{self.name}: blob {index} is not valid DEFLATE ({e})") from None
                if len(out) != b.size or d.unconsumed_tail or not d.eof:
                    raise PackError("range", f"{self.name}: blob {index} does not inflate to its declared "
                                             f"{b.size} bytes")
                self._decoded[index] = out
        return self._decoded[index]

    def ops(self, f: PackedFile) -> list[tuple[int, int, int]]:
        """The checked op list of a file: (blob, offset, length), blob -1 = insert from the op stream
        at that offset of the ops blob. Nothing is copied yet."""
        stream = self.blob(f.ops_blob)[f.ops_offset:f.ops_offset + f.ops_len]
        cur = _Cursor(stream, f"{self.name}: op stream of {f.path}")
        out, written, prev_end = [], 0, 0
        while cur.pos < len(stream):
            h = cur.varint()
            n = h >> 1
            if n == 0:
                raise PackError("format", f"{self.name}: {f.path}: an op of length 0")
            if written + n > f.size:
                raise PackError("range", f"{self.name}: {f.path}: ops write past its declared {f.size} bytes")
            if h & 1 == 0:
                start = cur.pos
                cur.take(n)
                out.append((-1, f.ops_offset + start, n))
            else:
                blob = cur.varint()
                z = cur.varint()
                offset = prev_end + ((z >> 1) if z & 1 == 0 else -((z + 1) >> 1))
                if blob >= len(self.blobs) or offset < 0 or offset + n > self.blobs[blob].size:
                    raise PackError("range", f"{self.name}: {f.path}: a copy reads outside blob {blob}")
                out.append((blob, offset, n))
                prev_end = offset + n
            written += n
        if written != f.size:
            raise PackError("range", f"{self.name}: {f.path}: ops write {written} bytes, not its declared {f.size}")
        return out

    def region(self, path: str) -> tuple[int, int] | None:
        """Where a file lies in the pack file as it is: (offset, length) when its op stream is one
        copy from a raw blob (each group's widest artifact), else None (it must be rebuilt).

        The bytes there are not checked yet: hash them (`view`) or trust a check recorded at
        install time before a runtime opens them."""
        f = self.by_path.get(path)
        if f is None:
            raise PackError("format", f"{self.name}: holds no file {path!r}")
        ops = self.ops(f)
        if len(ops) != 1 or ops[0][0] < 0 or self.blobs[ops[0][0]].codec != CODEC_RAW:
            return None
        blob, offset, n = ops[0]
        return self._data_start + self.blobs[blob].offset + offset, n

    def view(self, path: str, *, check_hash: bool = True) -> memoryview | None:
        """The file as a read-only view of the mapped pack (no copy), when `region` finds it in
        place; its sha256 is checked against the header unless ``check_hash`` is False (a caller
        that verified it once at install time and recorded that). None: use `read`."""
        where = self.region(path)
        if where is None:
            return None
        out = self._data[where[0]:where[0] + where[1]]
        if check_hash and hashlib.sha256(out).hexdigest() != self.by_path[path].sha256:
            raise PackError("hash", f"{self.name}: {path} in the pack has another sha256 than the pack states")
        return out

    def read(self, path: str) -> bytes:
        """Rebuild one file and check its size and sha256 against the header."""
        f = self.by_path.get(path)
        if f is None:
            raise PackError("format", f"{self.name}: holds no file {path!r}")
        pieces = [self.blob(f.ops_blob if blob < 0 else blob)[offset:offset + n] for blob, offset, n in self.ops(f)]
        out = b"".join(pieces)  # one copy: the pieces are views of the mapped pack or of inflated blobs
        if hashlib.sha256(out).hexdigest() != f.sha256:
            raise PackError("hash", f"{self.name}: rebuilt {f.path} has another sha256 than the pack states")
        return out


def _parse(data: memoryview, limits: PackLimits, name: str) -> tuple[list[Blob], list[PackedFile], int]:
    if len(data) < PREAMBLE:
        raise PackError("truncated", f"{name}: {len(data)} bytes is too short for a pack")
    if bytes(data[:len(MAGIC)]) != MAGIC:
        raise PackError("format", f"{name}: not a slimvit pack (no SLIMPACK magic)")
    if data[len(MAGIC)] != VERSION:
        raise PackError("format", f"{name}: pack version {data[len(MAGIC)]}; this slimvit reads version {VERSION}")
    hlen = int.from_bytes(data[len(MAGIC) + 1:PREAMBLE], "little")
    if hlen > MAX_HEADER_BYTES:
        raise PackError("cap", f"{name}: header of {hlen} bytes is over the {MAX_HEADER_BYTES} cap")
    if PREAMBLE + hlen > len(data):
        raise PackError("truncated", f"{name}: header of {hlen} bytes runs past the end of the file")
    cur = _Cursor(data[PREAMBLE:PREAMBLE + hlen], f"{name}: header")
    data_len = len(data) - PREAMBLE - hlen
    blobs = []
    for i in range(_count(cur, "blobs")):
        codec, offset, stored, size = cur.byte(), cur.varint(), cur.varint(), cur.varint()
        if codec not in (CODEC_RAW, CODEC_DEFLATE):
            raise PackError("format", f"{name}: blob {i} has unknown codec {codec}")
        if offset + stored > data_len:
            raise PackError("truncated", f"{name}: blob {i} runs past the end of the file")
        if codec == CODEC_RAW and stored != size:
            raise PackError("format", f"{name}: raw blob {i} stores {stored} bytes but declares {size}")
        if size > limits.total_bytes:
            raise PackError("cap", f"{name}: blob {i} expands to {size} bytes, over the {limits.total_bytes} cap")
        blobs.append(Blob(codec, offset, stored, size))
    files, seen, total = [], set(), 0
    for _ in range(_count(cur, "files")):
        raw_path = cur.take(cur.varint())
        try:
            path = raw_path.decode("utf-8")
        except UnicodeDecodeError:
            raise PackError("path", f"{name}: a file path is not UTF-8") from None
        why = path_problem(path)
        if why:
            raise PackError("path", f"{name}: file path {path!r} {why}")
        if path in seen:
            raise PackError("path", f"{name}: file path {path!r} appears twice")
        seen.add(path)
        size, digest = cur.varint(), cur.take(32).hex()
        ops_blob, ops_offset, ops_len = cur.varint(), cur.varint(), cur.varint()
        if size > limits.file_bytes:
            raise PackError("cap", f"{name}: {path} expands to {size} bytes, over the {limits.file_bytes} file cap")
        total += size
        if total > limits.total_bytes:
            raise PackError("cap", f"{name}: files expand to over the {limits.total_bytes} bytes cap")
        if ops_blob >= len(blobs) or ops_offset + ops_len > blobs[ops_blob].size:
            raise PackError("range", f"{name}: {path}: its op stream lies outside blob {ops_blob}")
        files.append(PackedFile(path, size, digest, ops_blob, ops_offset, ops_len))
    if cur.pos != len(cur.data):
        raise PackError("format", f"{name}: {len(cur.data) - cur.pos} stray bytes after the header")
    dirs = {"/".join(p.split("/")[:i]) for p in seen for i in range(1, p.count("/") + 1)}
    clash = sorted(dirs & seen)
    if clash:
        raise PackError("path", f"{name}: {clash[0]!r} is both a file and a directory")
    return blobs, files, PREAMBLE + hlen


def _count(cur: _Cursor, what: str) -> int:
    n = cur.varint()
    if n > MAX_ENTRIES:
        raise PackError("cap", f"{cur.what}: {n} {what}, over the {MAX_ENTRIES} cap")
    return n


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    if n < 0 or n >= 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


ALIGN = 64  # raw blobs start at a multiple of this in the file: a runtime can map one in place


def write_pack(blobs: list[tuple[int, bytes, int]], files: list[PackedFile], align: int = ALIGN) -> bytes:
    """Serialize: ``blobs`` as (codec, stored bytes, decoded size), ``files`` in order.

    Every raw blob starts at a multiple of ``align`` bytes from the start of the file (zero bytes
    pad the gaps; a reader never looks at them), so a file stored as one copy of a raw blob (the
    widest variant of each group) can be handed to a runtime as a mapped region, no copy
    (`PackReader.region`). The header's length depends on the offsets it holds and they on it:
    iterate to the fixed point (two or three rounds)."""
    start = PREAMBLE
    for _ in range(32):
        offsets, end = [], 0
        for codec, stored, _size in blobs:
            if codec == CODEC_RAW and align > 1 and stored:
                end += -(start + end) % align
            offsets.append(end)
            end += len(stored)
        head = bytearray(varint(len(blobs)))
        for (codec, stored, size), offset in zip(blobs, offsets, strict=True):
            head += bytes([codec]) + varint(offset) + varint(len(stored)) + varint(size)
        head += varint(len(files))
        for f in files:
            p = f.path.encode("utf-8")
            head += varint(len(p)) + p + varint(f.size) + bytes.fromhex(f.sha256)
            head += varint(f.ops_blob) + varint(f.ops_offset) + varint(f.ops_len)
        if PREAMBLE + len(head) == start:
            break
        start = PREAMBLE + len(head)
    else:  # pragma: no cover - the offsets grow by less than ``align`` per round
        raise ValueError("pack header length did not settle")
    data = bytearray(end)
    for (_codec, stored, _size), offset in zip(blobs, offsets, strict=True):
        data[offset:offset + len(stored)] = stored
    return b"".join([MAGIC, bytes([VERSION]), len(head).to_bytes(4, "little"), bytes(head), bytes(data)])
