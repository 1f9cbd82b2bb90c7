"""Issue 18: what an app downloads. Packed bytes per format and precision against the largest
artifact, the whole bundle packed against the sum of the largest artifacts, the alternatives the
pack format was chosen over (DEFLATE and zstd --long over the concatenated files), and the time
to rebuild the largest DeiT-S artifact (Python and the Kotlin port on the JVM) against the time
ONNX Runtime / LiteRT take to load it, interleaved in one run.

    python benchmarks/bench_pack.py [--demo DIR] [--deits DIR] [--runs 5]

``--demo`` is a `slimvit demo` bundle (skipped when absent); ``--deits`` is a HydraViT
DeiT-S-shaped bundle (3 widths x 2 keep rates, 224 px, ONNX + TFLite, fp32 + int8-dynamic, random
weights with seed 0), exported there first when the directory has no manifest.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import host, md_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACK_JAR = ROOT / "build" / "kotlin" / "pack-conformance.jar"


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in ("avx512_vnni", "avx512f", "sha_ni"))


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def export_deits(out: Path) -> None:
    import torch

    from exporter.bundle.export import export_bundle
    from exporter.checkpoints.load import LoadedModel
    from exporter.nn.config import VariantGrid, ViTConfig
    from exporter.nn.model import SlimmableViT
    from exporter.convert.quantize.pipeline import QuantizeOptions

    torch.manual_seed(0)
    cfg = ViTConfig(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12, num_heads=6)
    loaded = LoadedModel(SlimmableViT(cfg).eval(), "deit_small_hydravit_random", "slimvit",
                         [str(i) for i in range(1000)])
    grid = VariantGrid(widths=(1 / 3, 2 / 3, 1.0), keep_rates=(1.0, 0.7), resolutions=(224,))
    # Random weights give near-uniform logits, so any quantization flips top-1: max_drop=1.0 keeps
    # the int8 artifacts (sizes and load times are what is measured here, not accuracy).
    with torch.no_grad():
        export_bundle(loaded, grid, out, formats=("onnx", "tflite"),
                      quantize=QuantizeOptions(precisions=("fp32", "int8-dynamic"), max_drop=1.0))


def deflate_len(chunks: list[bytes]) -> int:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return sum(len(c.compress(x)) for x in chunks) + len(c.flush())


def zstd_len(chunks: list[bytes], level: int) -> int | None:
    if shutil.which("zstd") is None:
        return None
    r = subprocess.run(["zstd", f"-{level}", "--long=27", "-c", "-q", "-T1"], input=b"".join(chunks),
                       capture_output=True, check=True)
    return len(r.stdout)


def size_rows(name: str, bundle: Path, zstd_level: int) -> tuple[list[list[object]], dict[str, float], Path]:
    """Per format-precision rows, the whole-bundle figures and the written pack."""
    from exporter.bundle.pack import META, Selection, pack_bundle
    from exporter.bundle.packfile import PackReader

    pack = Path(tempfile.mkdtemp(prefix="bench-pack-")) / f"{name}.svpack"
    t = time.perf_counter()
    stats = pack_bundle(bundle, pack, Selection())
    pack_s = time.perf_counter() - t
    reader = PackReader.open(pack)
    rows = []
    largest_sum = 0
    for key, g in sorted(stats.groups.items()):
        if key == META:
            continue
        largest_sum += g.largest
        chunks = [reader.read(f.path) for f in reader.files if _group(f.path, bundle) == key]
        z = zstd_len(chunks, zstd_level)
        rows.append([name, key[0], key[1], g.files, f"{g.bytes / 2**20:.2f}", f"{g.largest / 2**20:.2f}",
                     f"{g.bytes / g.largest:.2f}x", f"{g.packed / 2**20:.2f}", f"**{g.packed / g.largest:.3f}x**",
                     f"{deflate_len(chunks) / g.largest:.3f}x", "-" if z is None else f"{z / g.largest:.3f}x"])
    whole = {"bundle_mib": stats.bundle_bytes / 2**20, "pack_mib": stats.pack_bytes / 2**20,
             "largest_sum_mib": largest_sum / 2**20, "ratio": stats.pack_bytes / largest_sum, "pack_s": pack_s}
    return rows, whole, pack


def _group(path: str, bundle: Path) -> tuple[str, str]:
    from exporter.bundle.pack import read_manifest_entries

    if bundle not in _entries_cache:  # once: setdefault would parse the manifest on every call
        _entries_cache[bundle] = read_manifest_entries(bundle)
    for a in _entries_cache[bundle]:
        if path == a["path"] or path.startswith(a["path"] + "/"):
            return a["format"], a["precision"]
    return ("meta", "")


_entries_cache: dict[Path, list] = {}


def roundtrip_ok(pack: Path, bundle: Path) -> bool:
    from exporter.bundle.unpack import unpack

    with tempfile.TemporaryDirectory() as tmp:
        unpack(pack, Path(tmp) / "b")
        got = sorted(p.relative_to(Path(tmp) / "b") for p in (Path(tmp) / "b").rglob("*") if p.is_file())
        want = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
        return got == want and all((Path(tmp) / "b" / p).read_bytes() == (bundle / p).read_bytes() for p in want)


def rebuild_rows(pack: Path, bundle: Path, entries: list[dict], runs: int) -> list[list[object]]:
    """Rebuild and open-in-place (Python, Kotlin) vs runtime load of the largest fp32 ONNX and
    TFLite artifacts, every measurement of one round side by side."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from exporter.bundle.packfile import PackReader

    entries = [a for a in entries if a["precision"] == "fp32" and (bundle / a["path"]).is_file()]
    rows = []
    kotlin = PACK_JAR.is_file() and shutil.which("java")
    for fmt in sorted({a["format"] for a in entries} & {"onnx", "tflite"}):
        art = max((a for a in entries if a["format"] == fmt), key=lambda a: a["bytes"])
        path = bundle / art["path"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        loaders = {"onnx": lambda p=path, o=so: ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"]),
                   "tflite": lambda p=path: Interpreter(model_path=str(p), num_threads=1).allocate_tensors()}
        t_ = {k: [] for k in ("rt", "py", "py_view", "py_region", "kt", "kt_map", "kt_map_nohash")}
        for _ in range(runs):  # interleaved: the same load on every column of one round
            t = time.perf_counter()
            data = PackReader.open(pack).read(art["path"])
            t_["py"].append(time.perf_counter() - t)
            t = time.perf_counter()
            view = PackReader.open(pack).view(art["path"])  # in place, sha256 checked
            t_["py_view"].append(time.perf_counter() - t)
            t = time.perf_counter()
            where = PackReader.open(pack).region(art["path"])  # in place, checked at install
            t_["py_region"].append(time.perf_counter() - t)
            assert len(data) == art["bytes"] and bytes(view) == data and where[1] == art["bytes"]
            t = time.perf_counter()
            loaders[fmt]()
            t_["rt"].append(time.perf_counter() - t)
            if kotlin:
                for flag, keys in (("--bench", ("kt",)), ("--bench-map", ("kt_map", "kt_map_nohash"))):
                    r = subprocess.run(["java", "-jar", str(PACK_JAR), flag, str(pack), art["path"], "3"],
                                       capture_output=True, text=True, check=True)
                    for key, line in zip(keys, r.stdout.strip().splitlines(), strict=True):
                        t_[key].append(float(line.split()[-1]))
        med = {k: statistics.median(v) if v else None for k, v in t_.items()}
        runtime = "ONNX Runtime" if fmt == "onnx" else "LiteRT"

        def cell(key: str, med: dict = med) -> str:
            return "-" if med[key] is None else f"{med[key] * 1e3:.2f} (**{med[key] / med['rt']:.3f}x**)"
        rows.append([art["path"], f"{art['bytes'] / 2**20:.1f}", f"{med['rt'] * 1e3:.1f} ({runtime})",
                     cell("py"), cell("py_view"), cell("py_region"), cell("kt"), cell("kt_map"),
                     cell("kt_map_nohash")])
    return rows


def widest_pack(bundle: Path) -> tuple[Path, list[dict]]:
    """A pack of the largest fp32 ONNX and TFLite artifacts a (possibly partial) bundle holds: the
    widest artifact is its group's raw base blob whatever else the group holds."""
    from exporter.bundle.pack import build_pack, read_manifest_entries

    entries = [a for a in read_manifest_entries(bundle) if (bundle / a["path"]).is_file()]
    chosen = [max((a for a in entries if a["format"] == f and a["precision"] == "fp32"), key=lambda a: a["bytes"])
              for f in sorted({a["format"] for a in entries} & {"onnx", "tflite"})]
    pack = Path(tempfile.mkdtemp(prefix="bench-pack-")) / "widest.svpack"
    pack.write_bytes(build_pack(bundle, chosen)[0])
    return pack, entries


REBUILD_HEADER = ["artifact", "MiB", "runtime load ms", "Python rebuild", "Python in place", "Python in place, "
                  "hash at install", "Kotlin rebuild", "Kotlin in place", "Kotlin in place, hash at install"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=ROOT / "demo_out" / "bundle")
    ap.add_argument("--deits", type=Path, action="append", default=None,
                    help="DeiT-S bundle directories (repeat: e.g. one exported per format)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--demo-only", action="store_true", help="only the size tables of the --demo bundle")
    ap.add_argument("--rebuild-only", type=Path, action="append", default=None,
                    help="only the rebuild/load table, on the widest fp32 ONNX/TFLite artifacts of these "
                         "(possibly partial: e.g. `slimvit unpack --variants`) DeiT-S bundles")
    args = ap.parse_args()
    load_before = load()
    if args.rebuild_only:
        rows = []
        for bundle in args.rebuild_only:
            pack, entries = widest_pack(bundle)
            rows += rebuild_rows(pack, bundle, entries, args.runs)
        print(f"load average {load_before} before, {load()} after; {host()}; {cpu_flags()}")
        print(md_table(REBUILD_HEADER, rows))
        return
    deits = [] if args.demo_only else args.deits or [Path(tempfile.gettempdir()) / "slimvit-bench-deits"]
    if len(deits) == 1 and not (deits[0] / "manifest.json").is_file():
        print(f"exporting the DeiT-S bundle into {deits[0]} (slow)", flush=True)
        export_deits(deits[0])
    size_table, whole_rows, packs = [], [], {}
    named = [("demo", args.demo, 19)] + [(f"DeiT-S {d.name}" if len(deits) > 1 else "DeiT-S", d, 10) for d in deits]
    for name, bundle, level in named:
        if not (bundle / "manifest.json").is_file():
            print(f"skip {name}: no bundle at {bundle}")
            continue
        rows, whole, pack = size_rows(name, bundle, level)
        size_table += rows
        packs[name] = (pack, bundle)
        whole_rows.append([name, f"{whole['bundle_mib']:.2f}", f"{whole['largest_sum_mib']:.2f}",
                           f"{whole['pack_mib']:.2f}", f"**{whole['ratio']:.3f}x**", f"{whole['pack_s']:.1f}",
                           "yes" if roundtrip_ok(pack, bundle) else "NO"])
    rebuild = [row for name, (pack, bundle) in packs.items() if name.startswith("DeiT-S")
               for row in rebuild_rows(pack, bundle, _entries_cache.get(bundle, []), args.runs)]
    text = f"""## Packed bundles (`bench_pack.py`, issue 18)

Host: {host()}; {cpu_flags()}. Load average {load_before} before, {load()} after (shared machine:
ratios are measured side by side in one run). {datetime.date.today()}.

Per format and precision: the files, today's sum over the largest artifact, and what the group
costs in the pack (its raw base blob + its DEFLATE'd op/literal blob), against the two
alternatives over the same files concatenated: DEFLATE level 9 (decodable on every platform) and
zstd --long=27 (level 19 demo, 10 DeiT-S; not built into Android, iOS or browsers). Target:
packed <= 1.15x the largest artifact.

{md_table(["bundle", "format", "precision", "files", "MiB", "largest MiB", "sum / largest", "packed MiB",
           "packed / largest", "deflate / largest", "zstd --long / largest"], size_table)}

Whole bundle (every file, manifest and vectors included) against the sum over format-precisions of
the largest artifact (target <= 1.2x); the round trip rebuilds every file byte-identically:

{md_table(["bundle", "files MiB", "sum of largest MiB", "pack MiB", "pack / sum of largest", "pack s",
           "round trip identical"], whole_rows)}

Getting the largest DeiT-S artifacts out of the pack (median of {args.runs}, interleaved with the
runtime load), each cell ms (**its ratio to the load**): "rebuild" copies it out (`read`, sha256
included); "in place" is `view` / Kotlin `map` (the 64-byte aligned raw base blob as a mapped
region, no copy) with the sha256 of those bytes; "hash at install" is the region alone, for an
app that checked the hash once when it installed the pack and recorded it. Python times include
opening the pack; Kotlin is the JVM port, after a warm-up. Load: ONNX Runtime `InferenceSession`,
LiteRT `Interpreter` + `allocate_tensors`, 1 thread. Target: <= 0.25x load.

{md_table(REBUILD_HEADER, rebuild)}
"""
    print(text)
    print(f"wrote {write_section('pack', text)}")


if __name__ == "__main__":
    main()
