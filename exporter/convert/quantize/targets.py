"""INT8 targets: the CPU an int8 artifact is tuned for, and whether this host has its unit.

An int8 recipe is not portable in speed or accuracy. ONNX Runtime's x86 kernels multiply u8 x s8
pairs; without VNNI they add pairs with a saturating 16-bit instruction (vpmaddubsw), so 8-bit
weights can overflow and 7-bit weights (``reduce_range``) are the safe choice there, while ARM's
dot-product unit (sdot) and VNNI (vpdpbusd) accumulate in 32 bits and want full 8-bit weights.
A target names the unit; the quantizers read its settings, the manifest records its name, and
``slimvit profile`` warns when it measures an artifact on a host without that unit.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Int8Target:
    """One int8 target CPU.

    Attributes:
        name: stable name (CLI ``--int8-target``, manifest ``int8_target``).
        description: the unit, in words.
        flags: CPU flags of which the host needs one (``/proc/cpuinfo`` ``flags`` on x86,
            ``Features`` on ARM); empty = any CPU.
        ort_activations: ONNX Runtime activation type, ``int8`` (S8S8) or ``uint8`` (U8S8).
        ort_reduce_range: 7-bit weights, for u8 x s8 kernels that add in saturating 16 bits.
    """

    name: str
    description: str
    flags: tuple[str, ...]
    ort_activations: str
    ort_reduce_range: bool


TARGETS: dict[str, Int8Target] = {t.name: t for t in (
    # Phones: ARMv8.2+ dot product (sdot/udot), i8mm on newer cores. S8S8 is ORT's guidance.
    Int8Target("arm-dotprod", "ARMv8.2+ int8 dot product (asimddp) or i8mm", ("asimddp", "i8mm"),
               "int8", False),
    # VNNI's vpdpbusd is natively u8 x s8 with 32-bit accumulation: no saturation.
    Int8Target("x86-vnni", "x86 AVX-512 VNNI or AVX-VNNI", ("avx512_vnni", "avx_vnni"), "uint8", False),
    Int8Target("x86-avx2", "x86 AVX2 without VNNI (saturating vpmaddubsw)", ("avx2",), "uint8", True),
    # Safe on every CPU: 7-bit weights cannot saturate anywhere; slower than a tuned target.
    Int8Target("portable", "any CPU (7-bit weights: no saturation on any int8 unit)", (), "uint8", True),
)}
DEFAULT_TARGET = "arm-dotprod"  # the target that serves phones


def check_target(name: str) -> str:
    """Validate an ``--int8-target`` name; returns it."""
    if name not in TARGETS:
        raise ConfigError(f'"--int8-target" must be one of {{{", ".join(TARGETS)}}}, but got '
                          f'"{name}"{did_you_mean(name, TARGETS)}')
    return name


def host_cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The host's CPU feature flags (lower case), or None where they cannot be read.

    Linux x86 lists them on ``flags`` lines, Linux ARM on ``Features`` lines (``asimddp``,
    ``i8mm``). On Apple silicon every core has dot product and i8mm (M2 and later) is not
    listed anywhere readable here, so only ``asimddp`` is assumed.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            if platform.system() == "Darwin" and platform.machine() == "arm64":
                return {"asimddp"}
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return flags or None


def host_has_unit(target: str, flags: Iterable[str] | None) -> bool | None:
    """Whether a host with ``flags`` has ``target``'s unit; None when the flags are unknown."""
    t = TARGETS[target]
    if not t.flags:
        return True
    if flags is None:
        return None
    return any(f in set(flags) for f in t.flags)


def target_warnings(manifest: dict, flags: Iterable[str] | None) -> list[str]:
    """One line per int8 target in ``manifest`` whose unit this host lacks (or cannot tell)."""
    flags = set(flags) if flags is not None else None
    names = sorted({a["quantization"]["target"] for v in manifest.get("variants", [])
                    for a in v.get("artifacts", [])
                    if isinstance(a.get("quantization"), dict) and a["quantization"].get("target") in TARGETS})
    out = []
    for name in names:
        has = host_has_unit(name, flags)
        if has:
            continue
        t = TARGETS[name]
        why = "cannot read this host's CPU flags" if has is None else \
            f"this host has none of {', '.join(t.flags)}"
        out.append(f"int8 artifacts here are tuned for {name} ({t.description}) but {why}: their "
                   f"latency here does not show what they do on their target")
    return out
