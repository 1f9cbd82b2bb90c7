"""A fuzz harness at the CLI boundary: hostile flags, numbers, strings, JSON and paths for every
command, through the real entry point (`exporter.cli.main`).

Every input must end as a user error: exit code 2 with one `error:` line (or 1 with the listed
problems of `verify` / `policy check`), no traceback, no hang, and nothing on disk changed outside
the output the command names. docs/bad-inputs.md counts the inputs per command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.checkpoints import save_checkpoint
from tests.cli_runner import Hang, assert_user_error, run_cli, snapshot
from tests.conftest import build_real_bundle, tiny_model

CLI_FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NON_UTF8 = os.fsdecode(b"r\xff\xfe.json")
# Paths a careless or hostile user gives; resolved inside the sandbox (the cwd of every run).
ODD_PATHS = ["", "/", ".", "..", "file.txt", "fifo", "/dev/zero", "dir", NON_UTF8, "missing/x.json",
             "[/x].json", "bundle/manifest.json", "tiny.safetensors", "deep.json", "nan.json",
             "hugeint.json", "dir/../fifo"]
BAD_FLOATS = ["nan", "NaN", "inf", "-inf", "1e999", "-1e999", "-5", "-0.0001", "1e308", "[/x]", ""]
BAD_INTS = ["-1", "-5", str(2**64), str(-2**64), "1" + "0" * 5000, "0x10", "1.5", "nan", "[/x]", ""]
MARKUP = ["[/x]", "[/]", "[red]x", "[bold]a[/bold]", "[link=file:///etc/passwd]x[/link]", ":warning:",
          "[/x]\n[/y]", "\x1b[31mred", "a" * 5000]

if os.environ.get("SLIMVIT_FUZZ_NO_ROOT") == "1":  # tallying code that may write into "/" (pre-gate)
    ODD_PATHS.remove("/")
odd_path = st.sampled_from(ODD_PATHS)
# As an output: every odd path except the one that is simply new.
odd_out = st.sampled_from([p for p in ODD_PATHS if p != "missing/x.json"])
bad_float = st.one_of(st.sampled_from(BAD_FLOATS), st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda x: x != x or abs(x) > 1e7 or x < 0).map(repr))
bad_int = st.one_of(st.sampled_from(BAD_INTS), st.integers(2**40, 2**80).map(str), st.integers(-2**80, -1).map(str))
markup = st.one_of(st.sampled_from(MARKUP), st.text(alphabet="[]/ab:=\\", min_size=1, max_size=12))

TRIED: dict[str, int] = {}
# SLIMVIT_FUZZ_TALLY=1: record every failure by kind instead of stopping at the first one (to
# count what a code base gets wrong; docs/bad-inputs.md quotes the count for the code before the gate).
TALLY = os.environ.get("SLIMVIT_FUZZ_TALLY") == "1"
FOUND: dict[str, dict[str, int]] = {}


def tried(command: str) -> None:
    TRIED[command] = TRIED.get(command, 0) + 1


def found(command: str, kind: str) -> None:
    FOUND.setdefault(command, {}).setdefault(kind, 0)
    FOUND[command][kind] += 1


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-fuzz")
    save_checkpoint(tiny_model(depth=2), root / "tiny.safetensors")
    shutil.copytree(build_real_bundle(), root / "bundle")
    (root / "file.txt").write_text("not what any command reads\n")
    (root / "dir").mkdir()
    (root / "dir" / "x").write_text("x")
    os.mkfifo(root / "fifo")
    (root / NON_UTF8).write_bytes(b"\xff\xfe{}")
    (root / "[").mkdir()  # "[/x].json": a markup-like path
    (root / "[/x].json").write_text('{"a": "[/x]"}')
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "nan.json").write_text('{"tiers": [NaN], "x": Infinity, "y": 1e999}')
    (root / "hugeint.json").write_text('{"bundle_version": ' + "9" * 5000 + "}")
    (root / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "nan.yaml").write_text("lr: .nan\nepochs: .inf\n")
    (root / "long.csv").write_text("t_s,battery,charging,thermal,low_power\n0,50,0," + "x" * 200_000 + ",0\n")
    (root / "nan.csv").write_text("t_s,battery,charging,thermal,low_power\n0,nan,0,none,0\n")
    run_cli("keygen", str(root / "key"))
    assert (root / "key").is_file() and (root / "key.pub").is_file()
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


def check(sandbox: Path, args: list[str], outputs: tuple[str, ...] = (), codes: tuple[int, ...] = (2,),
          allow_ok: bool = False) -> None:
    """Run ``args`` in the sandbox: a user error, and nothing outside ``outputs`` changed."""
    command = args[0] if args[0] != "policy" else f"policy {args[1]}"
    tried(command)
    skip = tuple(sandbox / o for o in outputs if o)
    before = snapshot(sandbox, skip)
    try:
        o = run_cli(*args, timeout=20 if TALLY else 30)
    except Hang:
        if not TALLY:
            raise
        return found(command, "hang")
    try:
        assert_user_error(o, codes, allow_ok)
        assert snapshot(sandbox, skip) == before, f"{args} changed files outside its output"
    except AssertionError:
        if not TALLY:
            raise
        kind = ("traceback" if o.code is None or "Traceback" in o.err
                else "wrote outside its output" if snapshot(sandbox, skip) != before
                else "exit 0 (silently accepted)" if o.code == 0 else "not one error line / wrong code")
        found(command, kind)
        for extra in set(snapshot(sandbox, skip)) - set(before):  # undo, so later inputs see the same sandbox
            p = sandbox / extra
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


# --- commands that read a bundle -------------------------------------------------------------

@CLI_FUZZ
@given(bundle=st.one_of(odd_path, st.just("bundle")), thermal=st.one_of(markup, st.just("none")),
       battery=st.one_of(bad_float, st.just("50")), platform=st.one_of(markup, st.just("android")))
def test_select(sandbox, bundle, thermal, battery, platform):
    check(sandbox, ["select", bundle, "--thermal", thermal, "--battery", battery, "--platform", platform],
          allow_ok=True)


@CLI_FUZZ
@given(bundle=st.one_of(odd_path, st.just("bundle")), key=st.one_of(st.none(), odd_path),
       version=st.one_of(st.none(), bad_int))
def test_verify(sandbox, bundle, key, version):
    args = ["verify", bundle]
    args += [] if key is None else ["--public-key", key]
    args += [] if version is None else ["--min-bundle-version", version]
    check(sandbox, args, codes=(1, 2), allow_ok=True)


@CLI_FUZZ
@given(key=st.one_of(odd_path, st.just("key.pub")), expires=st.one_of(
    st.none(), st.sampled_from(["3000000d", "99999999999999999999d", "nan", "[/x]", "-5d", "0d",
                                "9999-01-01T00:00:00Z"])),
    version=st.one_of(st.none(), bad_int))
def test_sign_refuses_and_leaves_the_bundle_as_it_was(sandbox, key, expires, version):
    args = ["sign", "bundle", "--key", key]
    args += [] if expires is None else ["--expires", expires]
    args += [] if version is None else ["--bundle-version", version]
    check(sandbox, args)  # every key here is unreadable or public: the bundle must stay untouched


@CLI_FUZZ
@given(bad=st.sampled_from(["nan", "1e400", "hugeint", "deep"]), key=st.sampled_from(["key", "key.pub"]))
def test_sign_refuses_a_manifest_verify_refuses(sandbox, tmp_path, bad, key):
    b = tmp_path / "b"
    if b.exists():
        shutil.rmtree(b)
    shutil.copytree(sandbox / "bundle", b)
    text = (b / "manifest.json").read_text()
    text = {"nan": text.replace('"bundle_version": 1', '"bundle_version": NaN'),
            "1e400": text.replace('"bundle_version": 1', '"bundle_version": 1e400'),
            "hugeint": text.replace('"bundle_version": 1', '"bundle_version": ' + "9" * 5000),
            "deep": text[:-2] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}\n"}[bad]
    (b / "manifest.json").write_text(text)
    before = (b / "manifest.json").read_bytes()
    tried("sign")
    o = run_cli("sign", str(b), "--key", str(sandbox / key), "--expires", "1d", "--bundle-version", "7")
    tried("verify")
    v = run_cli("verify", str(b))
    try:
        assert_user_error(o)
        assert (b / "manifest.json").read_bytes() == before and not (b / "manifest.sig").exists()
        assert_user_error(v, codes=(1,))
    except AssertionError:
        if not TALLY:
            raise
        found("sign", "signed or rewrote a manifest verify must refuse" if o.code == 0 else "traceback")


@CLI_FUZZ
@given(path=st.sampled_from([p for p in ODD_PATHS if p != "missing/x.json"] + ["key", "key.pub"]))
def test_keygen_never_overwrites(sandbox, path):
    check(sandbox, ["keygen", path])


@CLI_FUZZ
@given(trace=st.one_of(odd_path, st.sampled_from(["long.csv", "nan.csv"])), out=odd_out,
       fps=st.one_of(st.just("10"), bad_float), platform=st.one_of(st.just("android"), markup))
def test_simulate(sandbox, trace, out, fps, platform):
    # every --out here is odd (existing file, root, inside the bundle, ...) or the trace is bad
    check(sandbox, ["simulate", "bundle", trace, "--out", out, "--fps", fps, "--platform", platform])


@CLI_FUZZ
@given(report=st.one_of(odd_path, st.sampled_from(["nan.json", "hugeint.json", "deep.json"])),
       device=st.one_of(st.none(), markup))
def test_ingest(sandbox, report, device):
    args = ["ingest", "bundle", report] + ([] if device is None else ["--device-id", device])
    check(sandbox, args)


@CLI_FUZZ
@given(out=st.sampled_from([p for p in ["", "/", ".", "..", "dir", "fifo", "/dev/zero", "bundle",
                                         "bundle/manifest.json", "bundle/report.html", "bundle/onnx/r.html",
                                         "dir/../bundle/x.html"] if p != "/" or "/" in ODD_PATHS]))
def test_report_never_writes_inside_a_bundle(sandbox, out):
    check(sandbox, ["report", "bundle", "--out", out])


@CLI_FUZZ
@given(vectors=odd_path)
def test_policy_check(sandbox, vectors):
    check(sandbox, ["policy", "check", vectors], codes=(1, 2))


@CLI_FUZZ
@given(policy=st.one_of(odd_path, st.sampled_from(["deep.yaml", "nan.yaml"])))
def test_policy_update(sandbox, policy):
    check(sandbox, ["policy", "update", "bundle", "--policy", policy])


@CLI_FUZZ
@given(runs=bad_int, threads=st.one_of(st.just("1"), bad_int))
def test_profile_numbers(sandbox, runs, threads):
    check(sandbox, ["profile", "bundle", "--runs", runs, "--threads", threads])


# --- commands that read a checkpoint ---------------------------------------------------------

@CLI_FUZZ
@given(ckpt=st.one_of(odd_path, st.just("tiny.safetensors")),
       widths=st.one_of(st.just("1.0"), st.sampled_from(["nan", "inf", "-1", "1e999", "[/x]", "0.5,nan", ""])),
       res=st.one_of(st.none(), st.sampled_from(["100000", "32000", "-32", "0", "1" + "0" * 5000, "nan"])),
       heads=st.one_of(st.none(), st.sampled_from(["0", "-1", str(2**70), "3"])))
def test_variants(sandbox, ckpt, widths, res, heads):
    args = ["variants", ckpt, "--widths", widths] + ([] if res is None else ["--resolutions", res])
    args += [] if heads is None else ["--num-heads", heads]
    check(sandbox, args, allow_ok=ckpt == "tiny.safetensors")


@CLI_FUZZ
@given(ckpt=st.one_of(odd_path, st.just("tiny.safetensors")), out=odd_out,
       max_drop=st.one_of(st.just("1"), bad_float), samples=st.one_of(st.just("8"), bad_int))
def test_export_refuses_before_any_work(sandbox, ckpt, out, max_drop, samples):
    # --out is always odd: nothing may be written anywhere, not even a staging directory
    check(sandbox, ["export", ckpt, "--out", out, "--max-drop", max_drop, "--calibration-samples", samples])


@CLI_FUZZ
@given(out=st.one_of(odd_out, st.just("newrun")), epochs=st.one_of(st.just("1"), bad_int),
       lr=st.one_of(st.just("0.001"), bad_float), seed=st.one_of(st.just("0"), bad_int),
       config=st.one_of(st.none(), st.sampled_from(["deep.yaml", "nan.yaml", "fifo", "/dev/zero", "dir"])))
def test_train_refuses_before_training(sandbox, out, epochs, lr, seed, config):
    if out == "newrun" and epochs == "1" and lr == "0.001" and seed == "0" and config is None:
        epochs = "0"  # keep every example a bad one: training is not what this harness times
    args = ["train", "--out", out, "--epochs", epochs, "--lr", lr, "--seed", seed]
    args += [] if config is None else ["--config", config]
    check(sandbox, args, outputs=("newrun",))
    assert not (sandbox / "newrun" / "model.safetensors").exists()


@CLI_FUZZ
@given(out=st.one_of(odd_out, st.just("newsearch")), limit=st.one_of(st.just("8"), bad_int),
       budget=st.one_of(st.just("0.5"), bad_float, st.sampled_from(["0", "1.5"])))
def test_search_refuses_before_searching(sandbox, out, limit, budget):
    if out == "newsearch" and limit == "8" and budget == "0.5":
        limit = "-5"
    check(sandbox, ["search", "tiny.safetensors", "--budget-macs", budget, "--out", out, "--limit", limit],
          outputs=("newsearch",))


@CLI_FUZZ
@given(out=st.one_of(odd_out, st.just("newdemo")), epochs=bad_int)
def test_demo_refuses_before_training(sandbox, out, epochs):
    check(sandbox, ["demo", "--out", out, "--epochs", epochs], outputs=("newdemo",))


def test_zz_report_counts(capsys):
    """Print how many inputs each command got in this run (docs/bad-inputs.md quotes them)."""
    with capsys.disabled():
        print("\nCLI fuzz inputs per command:", json.dumps(dict(sorted(TRIED.items()))),
              "total", sum(TRIED.values()))
        if TALLY:
            print("failures by command and kind:", json.dumps(FOUND, sort_keys=True))
