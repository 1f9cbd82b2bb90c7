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
_CHUNK = 1 << 23


class SourceIndex:
    """Sorted aligned words of a source buffer and the first position of each."""

    def __init__(self, source: bytes) -> None:
        self.source = np.frombuffer(source, dtype=np.uint8)
        n = len(source) // WORD
        words = np.frombuffer(source, dtype="<u8", count=n) if n else np.zeros(0, "<u8")
        self.keys, first = np.unique(words, return_index=True)
        self.pos = first.astype(np.int64) * WORD


def _words_at(t: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The 8-byte little-endian word starting at each of ``positions``."""
    out = np.empty(len(positions), dtype="<u8")
    step = 1 << 20
    for a in range(0, len(positions), step):
        p = positions[a:a + step]
        out[a:a + len(p)] = np.ascontiguousarray(t[p[:, None] + np.arange(WORD)]).view("<u8").ravel()
    return out


def _chunk_runs(ts: np.ndarray, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse hits into runs: (first t, last t, diagonal) of hits on one diagonal, 8 apart."""
    order = np.lexsort((ts, ds))
    ts, ds = ts[order], ds[order]
    new = np.ones(len(ts), dtype=bool)
    new[1:] = (ds[1:] != ds[:-1]) | (ts[1:] - ts[:-1] > WORD)
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], len(ts)) - 1
    return ts[starts], ts[ends], ds[starts]


def _runs(index: SourceIndex, t: np.ndarray, stride: int = 1,
          skip: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """(target start, target end, source start) of every run found, extended, unsorted; looks up
    every ``stride``-th target position not marked in ``skip``."""
    if len(index.keys) == 0 or len(t) < WORD:
        return []
    firsts, lasts, diags = [], [], []
    last = len(t) - WORD + 1
    for lo in range(0, last, _CHUNK):
        hi = min(last, lo + _CHUNK)
        sel = np.arange(lo - lo % -stride if stride > 1 else lo, hi, stride, dtype=np.int64)
        if skip is not None:
            sel = sel[~skip[sel]]
        if not len(sel):
            continue
        if stride == WORD and skip is None:  # aligned: the words are a plain view
            words = np.frombuffer(t, dtype="<u8", count=len(sel), offset=int(sel[0]))
        else:
            words = _words_at(t, sel)
        i = np.searchsorted(index.keys, words)
        i[i == len(index.keys)] = 0
        ok = index.keys[i] == words
        tt = sel[ok]
        if len(tt):
            f, l_, d = _chunk_runs(tt, index.pos[i[ok]] - tt)
            firsts.append(f), lasts.append(l_), diags.append(d)
    if not firsts:
        return []
    # Runs split at chunk borders are joined again: same diagonal, the next one 8 bytes on.
    f, l_, d = np.concatenate(firsts), np.concatenate(lasts), np.concatenate(diags)
    order = np.lexsort((f, d))
    f, l_, d = f[order], l_[order], d[order]
    join = np.zeros(len(f), dtype=bool)
    join[1:] = (d[1:] == d[:-1]) & (f[1:] - l_[:-1] <= WORD)
    keep = np.nonzero(~join)[0]
    group_end = np.append(keep[1:], len(f)) - 1
    s = index.source
    runs = []
    for a, b in zip(keep.tolist(), group_end.tolist(), strict=True):
        t0, t1, dd = int(f[a]), int(l_[b]) + WORD, int(d[a])
        while t0 > 0 and t0 + dd > 0 and t[t0 - 1] == s[t0 + dd - 1]:
            t0 -= 1
        t1 = _extend(t, s, t1, dd)
        if t1 - t0 >= MIN_COPY:
            runs.append((t0, t1, t0 + dd))
    return runs


def _diagonal_runs(index: SourceIndex, t: np.ndarray, sample: int = 257,
                   most: int = 32, min_run: int = 256) -> list[tuple[int, int, int]]:
    """Long runs found cheaply: look up a sparse sample of target positions (an odd stride meets
    every alignment), then compare the whole target against the source along each diagonal seen
    more than once. Finds a sibling file shifted by any number of bytes in a few vector compares."""
    if len(index.keys) == 0 or len(t) < WORD + sample:
        return []
    sel = np.arange(0, len(t) - WORD + 1, sample, dtype=np.int64)
    words = _words_at(t, sel)
    i = np.searchsorted(index.keys, words)
    i[i == len(index.keys)] = 0
    ok = index.keys[i] == words
    diags, counts = np.unique(index.pos[i[ok]] - sel[ok], return_counts=True)
    s = index.source
    runs = []
    for d in diags[np.argsort(-counts)][:most][counts[np.argsort(-counts)][:most] > 1].tolist():
        lo, hi = max(0, -d), min(len(t), len(s) - d)
        if hi - lo < min_run:
            continue
        eq = np.concatenate(([False], t[lo:hi] == s[lo + d:hi + d], [False]))
        edges = np.flatnonzero(eq[1:] != eq[:-1])
        starts, ends = edges[0::2] + lo, edges[1::2] + lo
        long = (ends - starts) >= min_run
        runs += [(a, b, a + d) for a, b in zip(starts[long].tolist(), ends[long].tolist(), strict=True)]
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
    # First long runs along the diagonals a sparse sample finds (a sibling file shifted by a few
    # bytes), then the aligned target words, then every position those runs do not cover.
    aligned = _diagonal_runs(index, t) + _runs(index, t, stride=WORD)
    covered = np.zeros(len(t), dtype=bool)
    for t0, t1, _ in aligned:
        covered[t0:max(t0, t1 - WORD + 1)] = True
    found = aligned + _runs(index, t, skip=covered) if not covered.all() else aligned
    runs = sorted(found, key=lambda r: (r[0], -(r[1] - r[0])))
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
