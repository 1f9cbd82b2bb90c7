"""Copy a verified bundle into a demo app: Android assets (TFLite) or iOS resources (Core ML)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from calibration.data import digits
from exporter.bundle.verify import check_bundle
from exporter.errors import ConfigError, check_choice
from exporter.fileio import atomic_dir, atomic_path
from exporter.gate.files import read_capped
from exporter.gate.limits import MAX_JSON_BYTES
from exporter.manifest import MANIFEST_NAME, SCHEMA_NAME, read_manifest
from exporter.bundle.pack import Selection, pack_bundle

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class AppTarget:
    """Where an app keeps its bundle and which artifact format it loads."""

    name: str
    format: str
    bundle_dir: Path  # relative to the repository root
    sample: Path  # the sample image the app classifies


APPS = {
    "android": AppTarget("android", "tflite", Path("android_demo/app/src/main/assets/bundle"),
                         Path("android_demo/app/src/main/assets/sample.png")),
    "ios": AppTarget("ios", "coreml", Path("ios_demo/SlimvitDemo/Resources/bundle"),
                     Path("ios_demo/SlimvitDemo/Resources/sample.png")),
}
EXTRA_FILES = ("policy_vectors.json", "manifest.sig")
PACK_NAME = "bundle.svpack"  # what install_packed writes; the apps open it (docs/bundle-format.md)


def install_bundle(bundle: str | Path, app: str, root: str | Path = ROOT, sample: str | Path | None = None) -> Path:
    """Verify ``bundle``, then copy its manifest, schema, policy vectors and the app's artifacts
    into the app project, replacing the previous copy atomically.

    Args:
        bundle: the bundle directory.
        app: ``android`` (TFLite artifacts) or ``ios`` (Core ML artifacts).
        root: the repository root holding ``android_demo/`` and ``ios_demo/``.
        sample: an image for the app to classify; default: a held-out digit when the bundle's
            labels are the built-in digits, else none.

    Returns:
        The installed bundle directory.

    Raises:
        BundleError: the bundle fails verification (nothing is copied).
        ConfigError: unknown app, or the bundle has no artifact the app can load.
    """
    check_choice("app", app, APPS)
    target = APPS[app]
    src = Path(bundle)
    check_bundle(src)
    manifest = read_manifest(src)
    paths = [a["path"] for v in manifest["variants"] for a in v["artifacts"] if a["format"] == target.format]
    if not paths:
        raise ConfigError(f"bundle {src} has no {target.format} artifacts for the {app} app; export "
                          f"with --formats {target.format}")
    dest = Path(root) / target.bundle_dir
    with atomic_dir(dest) as tmp:
        tmp.mkdir(parents=True)
        for name in (MANIFEST_NAME, SCHEMA_NAME, *EXTRA_FILES):
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        for rel in paths:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if (src / rel).is_dir():
                shutil.copytree(src / rel, tmp / rel)
            else:
                shutil.copy2(src / rel, tmp / rel)
    _write_sample(manifest, Path(root) / target.sample, sample)
    return dest


def _write_sample(manifest: dict, out: Path, sample: str | Path | None) -> None:
    if sample is not None:
        data = read_capped(sample, "sample image", MAX_JSON_BYTES, ConfigError)  # no FIFO, no device
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
        return
    if manifest["labels"] != [str(i) for i in range(10)]:
        return
    import numpy as np
    from PIL import Image

    test = digits("test")
    img = (test.images[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)  # (8, 8, 3)
    with atomic_path(out) as tmp:
        Image.fromarray(img).resize((64, 64), Image.NEAREST).save(tmp, format="PNG")


def install_packed(bundle: str | Path, app: str, *, root: str | Path = ROOT, dest: str | Path | None = None,
                   precisions: str | None = None, variants: str | None = None,
                   sample: str | Path | None = None) -> Path:
    """Verify ``bundle``, then write the packed form of the app's artifacts (its format, and the
    chosen precisions and variants) as ``bundle.svpack`` into the demo app, or into ``dest`` (the
    user's own app's asset/resource folder). The app rebuilds a tier from it when the policy first
    needs one (android_demo/pack, ios_demo/SlimvitPack).

    Returns:
        The pack file written.

    Raises:
        BundleError: the bundle fails verification (nothing is written).
        ConfigError: unknown app, bad filters, no artifact of the app's format, or ``dest`` is a file.
    """
    check_choice("app", app, APPS)
    target = APPS[app]
    manifest = read_manifest(bundle)
    if not any(a["format"] == target.format for v in manifest["variants"] for a in v["artifacts"]):
        raise ConfigError(f"bundle {bundle} has no {target.format} artifacts for the {app} app; export "
                          f"with --formats {target.format}")
    folder = Path(dest) if dest is not None else (Path(root) / target.bundle_dir).parent
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--dest {folder} is a file; give the app's asset or resource folder")
    out = folder / PACK_NAME
    pack_bundle(bundle, out, Selection.parse(target.format, precisions, variants))
    if dest is None:
        _write_sample(manifest, Path(root) / target.sample, sample)
    return out
