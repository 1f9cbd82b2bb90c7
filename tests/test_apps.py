"""The demo apps' pure policy modules read the same vectors and manifest fields as Python."""

import json
import re
from pathlib import Path

from exporter.manifest import schema

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "conformance" / "policy_vectors.json"


def test_ios_test_vectors_are_the_repo_vectors():
    ios = ROOT / "ios_demo/SlimvitPolicy/Tests/SlimvitPolicyTests/policy_vectors.json"
    assert json.loads(ios.read_text()) == json.loads(VECTORS.read_text()), "run `make ios-vectors`"


def test_app_manifest_readers_only_use_fields_the_schema_defines():
    """Every manifest key the Kotlin and Swift readers look up exists in the schema."""
    props = set()

    def walk(node):
        if isinstance(node, dict):
            props.update(node.get("properties", {}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema())
    sources = {
        "kotlin": (ROOT / "android_demo/policy/src/main/kotlin/dev/slimvit/policy/Manifest.kt").read_text(),
        "swift": (ROOT / "ios_demo/SlimvitPolicy/Sources/SlimvitPolicy/Manifest.swift").read_text(),
    }
    for lang, src in sources.items():
        keys = set(re.findall(r'\["([a-z_0-9]+)"\]', src))
        assert keys, lang
        assert keys <= props, f"{lang} reads keys the schema does not define: {sorted(keys - props)}"
