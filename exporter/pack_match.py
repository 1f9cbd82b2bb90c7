"""Finding a file's bytes in a source buffer: the copy/insert encoder of the pack format.

The source is indexed by its aligned 8-byte words (positions 0, 8, 16, ...); the target is
looked up at every byte position, so a run shared by target and source is found wherever it sits
once it is at least 15 bytes long. Hits on the same diagonal (source position - target position)
form a run, extended byte by byte on both sides. That is the rsync idea with a fixed block and
no rolling checksum: numpy compares 8-byte words directly, which is exact and fast.

Why this finds weights: a narrow width's tensor is a prefix slice of the wide tensor in every
format's own layout, so each of its rows is a byte run of a wide row (TFLite and ONNX transpose
differently, but a 2-D prefix slice of a row-major matrix is a run per row either way); keep-rate
and resolution variants of one width repeat the weights unchanged.
"""

from __future__ import annotations

import numpy as np

WORD = 8
MIN_COPY = 12  # a copy op costs 3-6 bytes; shorter matches are cheaper inserted
_CHUNK = 1 << 22


class SourceIndex:
    """Sorted aligned words of a source buffer and the first position of each."""

    def __init__(self, source: bytes) -> None:
        self.source = np.frombuffer(source, dtype=np.uint8)
        n = len(source) // WORD
        words = np.frombuffer(source, dtype="<u8", count=n) if n else np.zeros(0, "<u8")
        self.keys, first = np.unique(words, return_index=True)
        self.pos = first.astype(np.int64) * WORD


def _target_words(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The 8-byte little-endian word starting at every position in [lo, hi)."""
    n = hi - lo
    out = np.empty(n, dtype="<u8")
    buf = t[lo:hi + WORD - 1].tobytes()
    for k in range(WORD):
        m = (len(buf) - k) // WORD
        out[k::WORD] = np.frombuffer(buf, dtype="<u8", count=m, offset=k)[: len(out[k::WORD])]
    return out


def _runs(index: SourceIndex, t: np.ndarray) -> list[tuple[int, int, int]]:
    """(target start, target end, source start) of every run found, extended, unsorted."""
    if len(index.keys) == 0 or len(t) < WORD:
        return []
    hit_t, hit_d = [], []
    last = len(t) - WORD + 1
    for lo in range(0, last, _CHUNK):
        hi = min(last, lo + _CHUNK)
        words = _target_words(t, lo, hi)
        i = np.searchsorted(index.keys, words)
        i[i == len(index.keys)] = 0
        ok = index.keys[i] == words
        tt = np.nonzero(ok)[0].astype(np.int64) + lo
        hit_t.append(tt)
        hit_d.append(index.pos[i[ok]] - tt)
    ts, ds = np.concatenate(hit_t), np.concatenate(hit_d)
    if len(ts) == 0:
        return []
    order = np.lexsort((ts, ds))
    ts, ds = ts[order], ds[order]
    new = np.ones(len(ts), dtype=bool)
    new[1:] = (ds[1:] != ds[:-1]) | (ts[1:] - ts[:-1] > WORD)
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], len(ts)) - 1
    s = index.source
    runs = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        t0, t1, d = int(ts[a]), int(ts[b]) + WORD, int(ds[a])
        while t0 > 0 and t0 + d > 0 and t[t0 - 1] == s[t0 + d - 1]:
            t0 -= 1
        t1 = _extend(t, s, t1, d)
        if t1 - t0 >= MIN_COPY:
            runs.append((t0, t1, t0 + d))
    return runs


def _extend(t: np.ndarray, s: np.ndarray, t1: int, d: int) -> int:
    step = 64
    while True:
        n = min(step, len(t) - t1, len(s) - (t1 + d))
        if n <= 0:
            return t1
        diff = np.nonzero(t[t1:t1 + n] != s[t1 + d:t1 + d + n])[0]
        if len(diff):
            return t1 + int(diff[0])
        t1 += n
        step = min(step * 4, 1 << 20)


def match(index: SourceIndex, target: bytes) -> list[tuple[int, int, int]]:
    """Non-overlapping copies (target start, length, source start), sorted, greedy by start and
    then length; what they do not cover is inserted."""
    t = np.frombuffer(target, dtype=np.uint8)
    runs = sorted(_runs(index, t), key=lambda r: (r[0], -(r[1] - r[0])))
    out, cursor = [], 0
    for t0, t1, s0 in runs:
        if t1 <= cursor:
            continue
        if t0 < cursor:
            s0 += cursor - t0
            t0 = cursor
        if t1 - t0 >= MIN_COPY:
            out.append((t0, t1 - t0, s0))
            cursor = t1
    return out
