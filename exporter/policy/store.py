"""A bundle's policy on disk: put it into the manifest with its conformance vectors at export,
refresh its p50 table after measurements, rewrite it from a user's policy file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.fileio import atomic_write_json, sha256_file
from exporter.manifest import read_manifest, write_manifest
from exporter.policy.spec import bundle_policy, check_policy, refresh_latency, user_policy
from exporter.policy.vectors import vectors_document

POLICY_VECTORS_NAME = "policy_vectors.json"


def attach_policy(manifest: dict[str, Any], out: str | Path,
                  user: str | Path | Mapping[str, Any] | None = None,
                  policy: Mapping[str, Any] | None = None) -> None:
    """Export hook: put ``policy`` into the manifest and its conformance vectors into the bundle.

    ``policy`` is a complete policy taken as is; otherwise ``user`` is merged over the default.
    """
    if policy is None:
        policy = bundle_policy(manifest, user)
    else:
        check_policy(policy, manifest)
    manifest["policy"] = dict(policy)
    doc = vectors_document(policy)
    path = Path(out) / POLICY_VECTORS_NAME
    atomic_write_json(path, doc)
    manifest["policy_vectors"] = {"path": POLICY_VECTORS_NAME, "sha256": sha256_file(path),
                                  "cases": len(doc["cases"])}


def refresh_bundle_policy(manifest: dict[str, Any], out: str | Path) -> None:
    """After new latency measurements (profile, ingest): keep the bundle's policy, re-read its
    p50 table and regenerate its conformance vectors, so the policy never lags the manifest."""
    if "policy" in manifest:
        attach_policy(manifest, out, policy=refresh_latency(manifest["policy"], manifest))


def update_policy(bundle: str | Path, user: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite an existing bundle's policy and vectors, e.g. after profiling added latency.

    Without ``user`` the bundle's policy is kept and only its measured p50 table is refreshed
    (a bundle without a policy gets the default); with ``user`` it is merged over the default.
    Returns the policy written into the bundle's manifest.
    """
    doc = user_policy(user)  # fail before touching the bundle
    manifest = read_manifest(bundle)
    out = Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent
    if doc is None and "policy" in manifest:
        attach_policy(manifest, out, policy=refresh_latency(manifest["policy"], manifest))
    else:
        attach_policy(manifest, out, doc)
    write_manifest(out, manifest)
    return manifest["policy"]
