"""Property tests: hostile or damaged inputs to every reader get the project's own clear error
(a `SlimvitError`), never a crash (KeyError, TypeError, RecursionError ...), and `verify_bundle`
never raises at all. docs/bad-inputs.md lists what each kind of input gets."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration.data import Preprocess
from exporter.bundle.verify import verify_bundle
from exporter.checkpoints import load_model, save_checkpoint
from exporter.checkpoints.reading import read_safetensors
from exporter.errors import SlimvitError
from exporter.manifest import read_manifest
from tests.conftest import build_real_bundle, tiny_model

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW_FUZZ = settings(FUZZ, max_examples=20)  # each example writes and loads a whole checkpoint

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=12)


def paths_of(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document (to aim mutations at real fields)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_of(v, (*prefix, i))
    return out


def mutate(doc: Any, edits: list[tuple[tuple, Any]]) -> Any:
    """Replace (or, for the value ``...``, delete) the value at each path."""
    doc = json.loads(json.dumps(doc))
    for path, value in edits:
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            if value is ...:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def doc_edits(doc: Any) -> st.SearchStrategy:
    return st.lists(st.tuples(st.sampled_from(paths_of(doc)), st.one_of(json_values, st.just(...))),
                    min_size=1, max_size=3)


def byte_damage(data: bytes) -> st.SearchStrategy:
    """Overwrite a few bytes, then maybe truncate."""
    n = len(data)
    return st.tuples(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), max_size=6),
                     st.one_of(st.none(), st.integers(0, n)))


def damaged(data: bytes, damage: tuple) -> bytes:
    out = bytearray(data)
    for i, b in damage[0]:
        out[i] = b
    return bytes(out if damage[1] is None else out[:damage[1]])


def only_own_errors(fn, *args, **kwargs) -> Any:
    """Run ``fn``; a SlimvitError is the expected outcome of a bad input, anything else fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except SlimvitError as e:
        assert str(e), "errors must say what was wrong"
        return e


# --- manifest ------------------------------------------------------------------------------

BUNDLE = build_real_bundle()
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(BUNDLE, b)
    return b


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_manifest_reader_on_arbitrary_bytes(scratch, data):
    (scratch / "manifest.json").write_bytes(data)
    result = only_own_errors(read_manifest, scratch)
    assert isinstance(result, SlimvitError)  # none of these is a valid manifest
    report = verify_bundle(scratch)
    assert not report.ok


@FUZZ
@given(edits=doc_edits(MANIFEST))
def test_manifest_reader_and_verify_on_mutated_manifests(scratch, edits):
    bad = mutate(MANIFEST, edits)
    (scratch / "manifest.json").write_text(json.dumps(bad))
    only_own_errors(read_manifest, scratch)
    report = verify_bundle(scratch)  # never raises; a changed manifest rarely stays valid
    if bad != MANIFEST and report.ok:
        # Only edits of unchecked descriptive fields (accuracy, names ...) may pass.
        assert all(a["sha256"] == o["sha256"] for v, w in zip(bad["variants"], MANIFEST["variants"],
                                                              strict=True)
                   for a, o in zip(v["artifacts"], w["artifacts"], strict=True))


@FUZZ
@given(name=st.sampled_from(["../x", "/etc/passwd", "a/../../b", "./a", "a//b", "C:/x", "a\\b",
                             "manifest.json", "onnx", "onnx/", "", "\x00", "onnx/../onnx/x"]))
def test_verify_on_hostile_artifact_paths(scratch, name):
    (scratch / "manifest.json").write_text(json.dumps(mutate(
        MANIFEST, [(("variants", 0, "artifacts", 0, "path"), name)])))
    report = verify_bundle(scratch)
    assert not report.ok


# --- checkpoints ---------------------------------------------------------------------------

class Good:
    """A real checkpoint on disk; its bytes stay out of hypothesis' failure reports."""

    def __init__(self, path: Path) -> None:
        self.path = path
        save_checkpoint(tiny_model(depth=2), path)
        self.data = path.read_bytes()

    def __repr__(self) -> str:
        return f"Good({self.path.name})"

    def __getitem__(self, i: int):  # (path, bytes)
        return (self.path, self.data)[i]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Good:
    return Good(tmp_path_factory.mktemp("ckpt") / "good.safetensors")


@FUZZ
@given(data=st.binary(max_size=200))
def test_checkpoint_loader_on_arbitrary_bytes(checkpoint, data):
    for suffix in (".safetensors", ".pth"):
        p = checkpoint[0].with_name(f"fuzz{suffix}")
        p.write_bytes(data)
        assert isinstance(only_own_errors(load_model, p, "auto" if suffix == ".safetensors" else "timm"),
                          SlimvitError)


@FUZZ
@given(header=json_values, extra=st.binary(max_size=64))
def test_safetensors_reader_on_arbitrary_headers(checkpoint, header, extra):
    raw = json.dumps(header).encode()
    p = checkpoint[0].with_name("header.safetensors")
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + extra)
    only_own_errors(read_safetensors, p)
    only_own_errors(load_model, p)


@FUZZ
@given(st.data())
def test_checkpoint_loader_on_damaged_real_checkpoints(checkpoint, data):
    good = checkpoint[1]
    n = int.from_bytes(good[:8], "little")
    # Aim half of the damage at the JSON header, where a parser can be confused.
    head = data.draw(byte_damage(good[:8 + n]))
    p = checkpoint[0].with_name("damaged.safetensors")
    p.write_bytes(damaged(good[:8 + n], head) + good[8 + n:] if data.draw(st.booleans())
                  else damaged(good, data.draw(byte_damage(good))))
    only_own_errors(load_model, p)


@SLOW_FUZZ
@given(meta=st.dictionaries(st.sampled_from(["format", "config", "labels", "preprocess", "x"]),
                            st.one_of(st.text(max_size=30), json_values.map(json.dumps)), max_size=5))
def test_checkpoint_loader_on_hostile_metadata(checkpoint, meta):
    from safetensors.torch import save_file

    tensors, good_meta = read_safetensors(checkpoint[0])
    p = checkpoint[0].with_name("meta.safetensors")
    save_file(tensors, str(p), metadata={**good_meta, **meta})
    loaded = only_own_errors(load_model, p)
    if not isinstance(loaded, SlimvitError):  # what loads must also work
        c = loaded.model.cfg
        x = loaded.preprocess(np.zeros((1, c.in_chans, c.img_size, c.img_size)), c.img_size)
        assert loaded.model(x).shape == (1, c.num_classes)
        assert all(isinstance(label, str) for label in loaded.labels)


def test_checkpoint_config_with_wrong_types(checkpoint):
    from safetensors.torch import save_file

    tensors, good_meta = read_safetensors(checkpoint[0])
    cfg = json.loads(good_meta["config"])
    p = checkpoint[0].with_name("types.safetensors")
    tried = 0
    for key in cfg:
        for value in (None, "x", -1, 2.5, [1], {"a": 1}, True):
            save_file(tensors, str(p), metadata={**good_meta, "config": json.dumps({**cfg, key: value})})
            only_own_errors(load_model, p)
            tried += 1
    assert tried >= 7 * 15


@FUZZ
@given(data=st.data())
def test_checkpoint_loader_on_damaged_torch_files(checkpoint, data):
    p = checkpoint[0].with_name("damaged.pth")
    good = getattr(test_checkpoint_loader_on_damaged_torch_files, "good", None)
    if good is None:
        torch.save(tiny_model(depth=2).state_dict(), p)
        good = test_checkpoint_loader_on_damaged_torch_files.good = p.read_bytes()
    p.write_bytes(damaged(good, data.draw(byte_damage(good))))
    only_own_errors(load_model, p, "timm")


# --- calibration readers -------------------------------------------------------------------

@FUZZ
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       dtype=st.sampled_from(["float32", "float64", "int8", "uint8", "bool", "complex64", "U3"]),
       fill=st.sampled_from([0.0, 0.5, -3.0, 255.0, np.nan, np.inf]),
       y=st.one_of(st.none(), st.lists(st.integers(-3, 3), max_size=6)),
       keys=st.sampled_from(["x", "X", "images"]))
def test_calibration_npz_reader(tmp_path_factory, shape, dtype, fill, y, keys):
    from calibration.sources import load_calibration

    p = tmp_path_factory.getbasetemp() / "calib.npz"
    x = np.full(shape, fill).astype(dtype) if dtype != "U3" else np.full(shape, "abc")
    arrays = {keys: x} | ({} if y is None else {"y": np.array(y)})
    np.savez(p, **arrays)
    out = only_own_errors(load_calibration, p, Preprocess(), samples=4)
    if not isinstance(out, SlimvitError):
        assert out.inputs(Preprocess(), 8).shape[1:] == (3, 8, 8)


@FUZZ
@given(files=st.dictionaries(st.sampled_from(["a.png", "b.jpg", "c/d.png", "c/e.gif", "f.txt"]),
                             st.binary(max_size=64), min_size=1, max_size=4))
def test_calibration_folder_reader(tmp_path_factory, files):
    from calibration.sources import load_calibration

    root = Path(tmp_path_factory.mktemp("calibdir"))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = only_own_errors(load_calibration, root, Preprocess(), samples=4)
    assert isinstance(out, SlimvitError)  # random bytes are never images


# --- report ingestion ----------------------------------------------------------------------

TOOL_LINES = ["Inference timings in us: Init: 1000, First inference: 900, Warmup (avg): 800, Inference (avg): 750",
              "Graph: [/data/w32_k100_r32.fp32.tflite]", "Average inference time cost: 1.5 ms",
              "P50 Latency: 0.001 s", "Session creation time cost: 0.2 s", "num_threads: [4]",
              "Peak memory footprint (MB): init=1 overall=x", "percentile_50=abc"]


@FUZZ
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.lists(st.one_of(st.sampled_from(TOOL_LINES), st.text(max_size=40)), max_size=8)
                      .map("\n".join), json_values.map(json.dumps)),
       device=st.one_of(st.none(), st.just("pixel-7"), st.text(max_size=8)))
def test_report_ingestion(tmp_path_factory, text, device):
    from exporter.measure.ingest import load_report

    p = tmp_path_factory.getbasetemp() / "w32_k100_r32.fp32.onnx.txt"
    p.write_text(text, errors="surrogateescape")
    only_own_errors(load_report, p, MANIFEST, device)


@FUZZ
@given(st.data())
def test_report_ingestion_of_mutated_reports(tmp_path_factory, data):
    from exporter.measure.ingest import IngestResult, load_report, merge_report

    v = MANIFEST["variants"][0]
    good = {"format": "slimvit-device-report/1", "app": "fuzz", "device": {"id": "pixel-7", "name": "Pixel 7"},
            "runtime": {"name": "onnxruntime", "version": "1.20"},
            "entries": [{"variant": v["id"], "format": "onnx", "precision": "fp32", "p50_ms": 1.5}]}
    bad = mutate(good, data.draw(doc_edits(good)))
    p = tmp_path_factory.getbasetemp() / "report.json"
    p.write_text(json.dumps(bad))
    report = only_own_errors(load_report, p, MANIFEST)
    if isinstance(report, dict):
        merge_report(json.loads(json.dumps(MANIFEST)), report, str(p), IngestResult({}))


# --- policy files and device-state traces ----------------------------------------------------

TRACE_LINES = ["t_s,battery,charging,thermal,low_power", "0,50,0,none,0", "10,20,1,severe,1",
               "5,101,true,hot,no", "# comment", "x,y", ",,,,", "1e309,nan,0,none,0"]


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.lists(st.one_of(st.sampled_from(TRACE_LINES),
                                                                   st.text(max_size=30)), max_size=6)
                      .map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))))
def test_trace_reader(tmp_path_factory, data):
    from exporter.policy.simulate import read_trace

    p = tmp_path_factory.getbasetemp() / "trace.csv"
    p.write_bytes(data)
    only_own_errors(read_trace, p)


@FUZZ
@given(doc=st.one_of(json_values, st.dictionaries(st.sampled_from(["tiers", "thermal", "battery", "hysteresis",
                                                                   "charging", "low_power", "version"]),
                                                  json_values, max_size=3)),
       suffix=st.sampled_from([".json", ".yaml"]), raw=st.one_of(st.none(), st.binary(max_size=80)))
def test_policy_file_reader(tmp_path_factory, doc, suffix, raw):
    from exporter.policy.spec import bundle_policy, user_policy

    p = tmp_path_factory.getbasetemp() / f"policy{suffix}"
    p.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    user = only_own_errors(user_policy, p)
    if isinstance(user, dict):
        only_own_errors(bundle_policy, json.loads(json.dumps(MANIFEST)), user)
