"""Policies for bundles: tiers from the manifest, the documented default, user overrides
(``--policy FILE``), the export hook, and ``select`` on a bundle."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.errors import did_you_mean
from exporter.gate.files import check_plain, loads_strict, read_capped
from exporter.gate.limits import MAX_JSON_BYTES
from exporter.manifest import read_manifest
from exporter.manifest import schema as manifest_schema
from exporter.policy.engine import PLATFORM_THERMAL, THERMAL_SCALE, Choice, DeviceState, Policy, PolicyError, decide
from exporter.policy.tiers import (
    TierBasis,
    basis_p50,
    default_basis,
    explain_change,
    front_tiers,
    tier_accuracy,
    variant_accuracy,  # noqa: F401  (re-exported: simulate and older callers import it from here)
)

# The default policy in numbers (docs/policy.md, "Default policy").
EFFICIENT_PP, SAVER_PP = 1.0, 5.0  # accuracy within this many p.p. of the best tier
BAND_HIGH, BAND_LOW = 50, 20
UP_MARGIN_PCT, DWELL_S = 5, 60


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


def manifest_tiers(manifest: Mapping[str, Any], basis: TierBasis | None = None) -> list[str]:
    """The ordered tiers, cheapest first: the Pareto front of the artifacts the app runs
    (``basis``; default: ``default_basis``), by measured p50 where the bundle has it, else MACs
    (``exporter/policy_tiers.py``)."""
    return front_tiers(manifest, basis or default_basis(manifest))


def default_policy(manifest: Mapping[str, Any], tiers: list[str] | None = None,
                   basis: TierBasis | None = None) -> dict[str, Any]:
    """The policy slimvit writes when the user gives none (see docs/policy.md).

    ``tiers`` given: kept as they are (``basis.tiers`` = "user"); otherwise the front of ``basis``.
    """
    basis = basis or default_basis(manifest)
    if tiers is not None:
        basis = TierBasis(basis.format, basis.precision, basis.device, "user")
    tiers = list(tiers) if tiers is not None else front_tiers(manifest, basis)
    best = len(tiers) - 1
    acc = tier_accuracy(manifest, basis, tiers)

    def within(pp: float, fallback: int) -> int:
        if any(a is None for a in acc):
            return fallback
        return next(i for i, a in enumerate(acc) if 100 * (acc[best] - a) <= pp + 1e-9)

    efficient = within(EFFICIENT_PP, max(0, best - 1))
    # Serious heat, low-power mode and a low battery always step below the best tier.
    saver = min(within(SAVER_PP, best // 2), efficient, max(0, best - 1))
    p50 = basis_p50(manifest, basis, tiers)
    policy = {
        "version": 1, "tiers": tiers, "basis": basis.to_dict(),
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
    s = manifest_schema()
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
        b = doc.get("basis") if isinstance(doc.get("basis"), dict) else {}
        basis = default_basis(manifest, b.get("format"), b.get("precision"))
        policy = merge(default_policy(manifest, tiers if isinstance(tiers, list) else None, basis), doc)
        policy["basis"] = {**policy["basis"], "device": basis.device,
                           "tiers": "user" if isinstance(tiers, list) else "front"}
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


def refresh_policy(policy: Mapping[str, Any], manifest: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], list[str]]:
    """``policy`` brought up to date with the manifest's numbers, and how its tiers changed.

    Front tiers are recomputed on the policy's basis (format, precision; the measured device is
    chosen again). When they change, the caps are the default ones for the new tiers (tier
    indices of the old caps mean other variants now); thermal names, hysteresis and budgets are
    kept. User tiers are kept; only their p50 table is re-read.
    """
    old = TierBasis.from_dict(policy.get("basis"))
    if old is not None and old.tiers == "user":
        basis = default_basis(manifest, old.format, old.precision, "user")
        return {**refresh_latency(policy, manifest, basis), "basis": basis.to_dict()}, []
    basis = default_basis(manifest, *((old.format, old.precision) if old else (None, None)))
    tiers = front_tiers(manifest, basis)
    if tiers == list(policy["tiers"]):
        return {**refresh_latency(policy, manifest, basis), "basis": basis.to_dict()}, []
    new = default_policy(manifest, None, basis)
    new["thermal"]["platforms"] = policy["thermal"]["platforms"]
    new["hysteresis"] = dict(policy["hysteresis"])
    budgets = dict(policy.get("latency", {}).get("budget_ms", {}))
    if budgets:
        new.setdefault("latency", {"budget_ms": {}, "p50_ms": {}})["budget_ms"] = budgets
    return new, explain_change(policy["tiers"], tiers, manifest, basis)


def refresh_latency(policy: Mapping[str, Any], manifest: Mapping[str, Any],
                    basis: TierBasis | None = None) -> dict[str, Any]:
    """``policy`` with ``latency.p50_ms`` re-read from the manifest's measurements (of the
    basis artifacts; default: the policy's basis); budgets kept."""
    basis = basis or TierBasis.from_dict(policy.get("basis")) or default_basis(manifest)
    p50 = basis_p50(manifest, basis, [t for t in policy["tiers"]])
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
    policy = policy_of(read_manifest(bundle), str(bundle))
    return decide(policy, DeviceState(platform, thermal, battery, charging, low_power, device), None, 0)


def check_basis_choice(manifest: Mapping[str, Any], fmt: str | None, precision: str | None) -> None:
    have = sorted({(a.get("format"), a.get("precision")) for v in manifest["variants"]
                   for a in v["artifacts"]}, key=str)
    if fmt is not None and fmt not in {f for f, _ in have}:
        raise PolicyError(f"--format {fmt}: the bundle has no {fmt} artifact; formats here: "
                          f"{', '.join(sorted({str(f) for f, _ in have})) or 'none'}")
    if precision is not None:
        precs = sorted({str(p) for f, p in have if fmt is None or f == fmt})
        if precision not in precs:
            raise PolicyError(f"--precision {precision}: no {fmt or 'artifact'} of that precision here; "
                              f"precisions: {', '.join(precs) or 'none'}")
