"""Policies for bundles: tiers from the manifest, the documented default, user overrides
(``--policy FILE``), the export hook, and ``select`` on a bundle."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.errors import did_you_mean
from exporter.gate.files import check_plain, loads_strict, read_capped
from exporter.gate.limits import MAX_JSON_BYTES
from exporter.pareto import pareto_front
from exporter.policy import PLATFORM_THERMAL, THERMAL_SCALE, Choice, DeviceState, Policy, PolicyError, decide

POLICY_VECTORS_NAME = "policy_vectors.json"
# The default policy in numbers (docs/policy.md, "Default policy").
EFFICIENT_PP, SAVER_PP = 1.0, 5.0  # accuracy within this many p.p. of the best tier
BAND_HIGH, BAND_LOW = 50, 20
UP_MARGIN_PCT, DWELL_S = 5, 60


def variant_accuracy(variant: Mapping[str, Any]) -> float | None:
    """Top-1 of the variant's best FP32 artifact (any precision when no FP32 one has it)."""
    arts = [a for a in variant["artifacts"] if "accuracy" in a]
    fp32 = [a for a in arts if a["precision"] == "fp32"] or arts
    return max((a["accuracy"]["top1"] for a in fp32), default=None)


def variant_p50(variant: Mapping[str, Any]) -> dict[str, float]:
    """Measured p50 latency (ms) by device: the fastest FP32 artifact (any precision if none)."""
    out: dict[str, float] = {}
    for prec_first in (True, False):
        for a in variant["artifacts"]:
            if prec_first and a["precision"] != "fp32":
                continue
            for dev, lat in a.get("latency", {}).items():
                if prec_first or dev not in out:
                    out[dev] = min(out.get(dev, float("inf")), lat["p50_ms"])
        if out:
            break
    return out


def manifest_tiers(manifest: Mapping[str, Any]) -> list[str]:
    """The ordered Pareto variants, cheapest first.

    The manifest's ``pareto.macs.fp32`` front when present; otherwise the front of FP32 top-1
    against MACs; with no accuracy at all, one variant per distinct MAC count (cheapest first,
    the largest-width, highest-resolution one on ties, since more MACs usually buy accuracy).
    """
    front = manifest.get("pareto", {}).get("macs", {}).get("fp32")
    if front:
        return list(front)
    points = [(v["id"], float(v["macs"]), variant_accuracy(v)) for v in manifest["variants"]]
    if all(acc is not None for _, _, acc in points):
        return pareto_front(points)  # type: ignore[arg-type]
    by_macs: dict[int, Mapping[str, Any]] = {}
    for v in sorted(manifest["variants"], key=lambda v: (v["macs"], -v["width"], -v["resolution"])):
        by_macs.setdefault(v["macs"], v)
    return [v["id"] for v in by_macs.values()]


def default_policy(manifest: Mapping[str, Any], tiers: list[str] | None = None) -> dict[str, Any]:
    """The policy slimvit writes when the user gives none (see docs/policy.md)."""
    tiers = list(tiers) if tiers is not None else manifest_tiers(manifest)
    by_id = {v["id"]: v for v in manifest["variants"]}
    best = len(tiers) - 1
    acc = [variant_accuracy(by_id[t]) for t in tiers]

    def within(pp: float, fallback: int) -> int:
        if any(a is None for a in acc):
            return fallback
        return next(i for i, a in enumerate(acc) if 100 * (acc[best] - a) <= pp + 1e-9)

    efficient = within(EFFICIENT_PP, max(0, best - 1))
    # Serious heat, low-power mode and a low battery always step below the best tier.
    saver = min(within(SAVER_PP, best // 2), efficient, max(0, best - 1))
    p50: dict[str, dict[str, float]] = {}
    for t in tiers:
        for dev, ms in variant_p50(by_id[t]).items():
            p50.setdefault(dev, {})[t] = ms
    policy = {
        "version": 1, "tiers": tiers,
        "thermal": {"scale": list(THERMAL_SCALE), "max_tier": [best, efficient, saver, 0],
                    "platforms": {k: dict(v) for k, v in PLATFORM_THERMAL.items()}},
        "battery": {"bands": [{"min_pct": BAND_HIGH, "max_tier": efficient},
                              {"min_pct": BAND_LOW, "max_tier": saver},
                              {"min_pct": 0, "max_tier": 0}]},
        "charging": {"max_tier": best},
        "low_power": {"max_tier": saver},
        "hysteresis": {"up_margin_pct": UP_MARGIN_PCT, "dwell_s": DWELL_S},
    }
    if p50:
        policy["latency"] = {"budget_ms": {}, "p50_ms": p50}
    return policy


def policy_schema() -> dict[str, Any]:
    """``$defs/policy`` of the manifest schema, as a standalone schema."""
    from exporter.manifest import schema

    s = schema()
    return {"$schema": s["$schema"], "$ref": "#/$defs/policy", "$defs": s["$defs"]}


def unknown_keys(doc: Any, node: Mapping[str, Any], defs: Mapping[str, Any], path: str = "") -> list[str]:
    """Keys of ``doc`` the schema does not know, each with a did-you-mean."""
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(doc, dict):
        return []
    props = node.get("properties")
    found = []
    for key, value in doc.items():
        where = f"{path}.{key}" if path else key
        if props is not None and key in props:
            found += unknown_keys(value, props[key], defs, where)
        elif props is not None and node.get("additionalProperties") is False:
            found.append(f'unknown policy key "{where}"{did_you_mean(key, props)}; valid: {", ".join(props)}')
        elif isinstance(node.get("additionalProperties"), dict):
            found += unknown_keys(value, node["additionalProperties"], defs, where)
    return found


def check_policy(policy: Mapping[str, Any], manifest: Mapping[str, Any] | None = None) -> Policy:
    """Validate a policy's JSON form against the schema, its own rules and the bundle's variants."""
    import jsonschema

    schema = policy_schema()
    problems = unknown_keys(policy, schema, schema["$defs"])
    if not problems:
        errors = jsonschema.Draft202012Validator(schema).iter_errors(policy)
        problems = [f"{'.'.join(str(p) for p in e.absolute_path) or 'policy'}: {e.message}"
                    for e in sorted(errors, key=lambda e: list(e.absolute_path))]
    if problems:
        raise PolicyError("invalid policy: " + "; ".join(problems[:8]))
    p = Policy.from_dict(policy)
    if manifest is not None:
        ids = [v["id"] for v in manifest["variants"]]
        for t in p.tiers:
            if t not in ids:
                raise PolicyError(f'policy tier "{t}" is not a variant of this bundle'
                                  f"{did_you_mean(t, ids)}; variants: {', '.join(ids)}")
    return p


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """A user's policy file (JSON, or YAML by suffix .yaml/.yml)."""
    path = Path(path)

    # bad bytes become a clear parse error below
    text = read_capped(path, "policy file", MAX_JSON_BYTES, PolicyError).decode("utf-8", errors="replace")
    if path.suffix.lower() not in (".yaml", ".yml"):
        doc = loads_strict(text, f"policy file {path}", PolicyError)
    else:
        try:
            import yaml

            doc = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error is the user's file
            raise PolicyError(f"cannot parse policy file {path}: {e}".splitlines()[0]) from None
        # YAML's .nan/.inf, dates, alias bombs and huge integers stop here
        check_plain(doc, f"policy file {path}", PolicyError)
    if not isinstance(doc, dict):
        raise PolicyError(f"policy file {path} must hold a mapping of policy keys (see docs/policy.md)")
    return doc


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def bundle_policy(manifest: Mapping[str, Any], user: str | Path | Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The policy for a manifest: the default, with a user's policy (file or dict) merged over it.

    A user policy may be partial; keys it gives replace the default's (lists as a whole).
    Raises:
        PolicyError: unknown keys (with a did-you-mean), schema violations, bad tier indices.
    """
    doc = user_policy(user)
    if doc is None:
        policy = default_policy(manifest)
    else:
        ids = [v["id"] for v in manifest["variants"]]
        tiers = doc.get("tiers")
        if tiers == []:
            raise PolicyError("policy tiers is empty; list at least one variant id, cheapest first")
        for t in tiers if isinstance(tiers, list) else []:
            if t not in ids:
                raise PolicyError(f'policy tier "{t}" is not a variant of this bundle'
                                  f"{did_you_mean(str(t), ids)}; variants: {', '.join(ids)}")
        policy = merge(default_policy(manifest, tiers if isinstance(tiers, list) else None), doc)
    check_policy(policy, manifest)
    return policy


def user_policy(user: str | Path | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Read a user's (partial) policy and reject unknown keys, before any export work."""
    if user is None:
        return None
    doc = dict(read_policy_file(user) if isinstance(user, str | Path) else user)
    schema = policy_schema()
    problems = unknown_keys(doc, schema, schema["$defs"])
    if problems:
        raise PolicyError("; ".join(problems))
    return doc


def attach_policy(manifest: dict[str, Any], out: str | Path,
                  user: str | Path | Mapping[str, Any] | None = None,
                  policy: Mapping[str, Any] | None = None) -> None:
    """Export hook: put ``policy`` into the manifest and its conformance vectors into the bundle.

    ``policy`` is a complete policy taken as is; otherwise ``user`` is merged over the default.
    """
    from exporter.fileio import atomic_write_json, sha256_file
    from exporter.policy_vectors import vectors_document

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


def refresh_latency(policy: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``policy`` with ``latency.p50_ms`` re-read from the manifest's measurements; budgets kept."""
    by_id = {v["id"]: v for v in manifest["variants"]}
    p50: dict[str, dict[str, float]] = {}
    for t in policy["tiers"]:
        for dev, ms in variant_p50(by_id[t]).items() if t in by_id else ():
            p50.setdefault(dev, {})[t] = ms
    out = {k: v for k, v in policy.items() if k != "latency"}
    budgets = dict(policy.get("latency", {}).get("budget_ms", {}))
    if p50 or budgets:
        out["latency"] = {"budget_ms": budgets, "p50_ms": p50}
    return out


def policy_of(manifest: Mapping[str, Any], where: str = "bundle") -> Policy:
    if "policy" not in manifest:
        raise PolicyError(f"{where} has no policy section; re-export it with this slimvit "
                          "(slimvit export adds the default policy; --policy FILE sets your own)")
    return check_policy(manifest["policy"], manifest)


def select(bundle: str | Path, thermal: str, battery: float, charging: bool = False,
           low_power: bool = False, platform: str = "android", device: str | None = None) -> Choice:
    """The variant a device in this state runs (a first decision, with no history)."""
    from exporter.manifest import read_manifest

    policy = policy_of(read_manifest(bundle), str(bundle))
    return decide(policy, DeviceState(platform, thermal, battery, charging, low_power, device), None, 0)


def update_policy(bundle: str | Path, user: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite an existing bundle's policy and vectors, e.g. after profiling added latency.

    Without ``user`` the bundle's policy is kept and only its measured p50 table is refreshed
    (a bundle without a policy gets the default); with ``user`` it is merged over the default.
    Returns the policy written into the bundle's manifest.
    """
    from exporter.manifest import read_manifest, write_manifest

    doc = user_policy(user)  # fail before touching the bundle
    manifest = read_manifest(bundle)
    out = Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent
    if doc is None and "policy" in manifest:
        attach_policy(manifest, out, policy=refresh_latency(manifest["policy"], manifest))
    else:
        attach_policy(manifest, out, doc)
    write_manifest(out, manifest)
    return manifest["policy"]
