"""The bundle manifest: its JSON Schema, validation that lists every problem, and I/O."""

from __future__ import annotations

import importlib.metadata
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from exporter.errors import SlimvitError
from exporter.fileio import atomic_write_json
from exporter.gate.files import read_json
from exporter.gate.limits import MAX_MANIFEST_BYTES

SCHEMA_VERSION = "1.0"
MANIFEST_NAME = "manifest.json"
SCHEMA_NAME = "manifest.schema.json"


def tool_version() -> str:
    """slimvit's installed version, written into manifests and vectors (``0+unknown`` from a bare tree)."""
    try:
        return importlib.metadata.version("slimvit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class ManifestError(SlimvitError):
    """A manifest is missing, unreadable or does not follow the schema."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(resources.files("exporter.schema").joinpath(SCHEMA_NAME).read_text())


def schema_problems(manifest: dict[str, Any]) -> list[str]:
    """Every schema violation as 'path: message', empty when the manifest is valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def validate_manifest(manifest: dict[str, Any]) -> None:
    problems = schema_problems(manifest)
    if problems:
        raise ManifestError(f"manifest does not follow the schema ({len(problems)} problem(s)): "
                            + "; ".join(problems[:10]))


def write_manifest(bundle: str | Path, manifest: dict[str, Any]) -> Path:
    """Validate, then write the manifest and its schema into the bundle (manifest last)."""
    validate_manifest(manifest)
    bundle = Path(bundle)
    atomic_write_json(bundle / SCHEMA_NAME, schema())
    atomic_write_json(bundle / MANIFEST_NAME, manifest)
    return bundle / MANIFEST_NAME


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Read and validate ``BUNDLE/manifest.json`` (or a manifest file given directly)."""
    path = Path(bundle)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(f"no manifest at {path}; is this a slimvit bundle directory?")

    # a regular file under the cap, strict JSON (no NaN, no 5000-digit integers, no deep nesting)
    manifest = read_json(path, "manifest", MAX_MANIFEST_BYTES, ManifestError)
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a manifest must be a JSON object")
    validate_manifest(manifest)
    return manifest
