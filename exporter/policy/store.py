"""A bundle's policy on disk: put it into the manifest with its conformance vectors at export,
refresh its p50 table after measurements, rewrite it from a user's policy file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.fileio import atomic_write_json, sha256_file
from exporter.manifest import read_manifest, write_manifest
from exporter.policy.spec import (
    bundle_policy,
    check_basis_choice,
    check_policy,
    merge,
    refresh_policy,
    user_policy,
)
from exporter.policy.tiers import TierBasis, default_basis, explain_change
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


def refresh_bundle_policy(manifest: dict[str, Any], out: str | Path) -> list[str]:
    """After new latency measurements (profile, ingest): recompute the tiers of a policy whose
    tiers are the front (``basis.tiers`` "front", or no basis), re-read its p50 table and
    regenerate its conformance vectors, so the policy never lags the manifest.

    Returns lines saying how the tiers changed and why ([] when they did not).
    """
    if "policy" not in manifest:
        return []
    policy, change = refresh_policy(manifest["policy"], manifest)
    attach_policy(manifest, out, policy=policy)
    return change


def update_policy(bundle: str | Path, user: str | Path | Mapping[str, Any] | None = None,
                  fmt: str | None = None, precision: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Rewrite an existing bundle's policy and vectors, e.g. after profiling added latency.

    Without ``user`` the bundle's policy is brought up to date (``refresh_policy``: front tiers
    recomputed from the newest measurements; a bundle without a policy gets the default); with
    ``user`` it is merged over the default. ``fmt``/``precision`` choose what the app runs
    (the tiers' basis). Returns the policy written and lines saying how its tiers changed.
    """
    doc = user_policy(user)  # fail before touching the bundle
    manifest = read_manifest(bundle)
    check_basis_choice(manifest, fmt, precision)
    out = Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent
    old = manifest.get("policy", {}).get("tiers", [])
    if fmt is not None or precision is not None:
        prev = TierBasis.from_dict(manifest.get("policy", {}).get("basis"))
        basis = {"format": fmt or (prev.format if prev else None),
                 "precision": precision or (prev.precision if prev else None)}
        doc = merge(doc or {}, {"basis": basis})
    if doc is None and "policy" in manifest:
        policy, change = refresh_policy(manifest["policy"], manifest)
        attach_policy(manifest, out, policy=policy)
    else:
        attach_policy(manifest, out, doc)
        b = TierBasis.from_dict(manifest["policy"].get("basis")) or default_basis(manifest)
        change = explain_change(old, manifest["policy"]["tiers"], manifest, b) if old else []
    write_manifest(out, manifest)
    return manifest["policy"], change
