"""The README's command list is complete: every command and every option the CLI has."""

import re
from pathlib import Path

import typer.main

from exporter.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCK = README[README.index("## Commands"):README.index("## ", README.index("## Commands") + 5)]


def commands():
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub, subcmd in subs.items():
                yield f"{name} {sub}", subcmd
        else:
            yield name, cmd


def test_every_command_and_option_is_in_the_readme_list():
    missing = []
    for name, cmd in commands():
        words = name.split()
        if not re.search(r"slimvit " + r"\s+".join(words) + r"\b", BLOCK) and not (
                words[0] == "policy" and words[1] in BLOCK and "slimvit policy" in BLOCK) and not (
                words[0] == "cache" and "slimvit cache info|clear" in BLOCK):
            missing.append(f"command: slimvit {name}")
        for p in cmd.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("--") and opt != "--help" and opt not in BLOCK:
                    missing.append(f"option: slimvit {name} {opt}")
    assert missing == []


def test_the_sections_a_newcomer_needs():
    for heading in ("## Use the bundle in your app", "## Evaluate accuracy on your own data"):
        assert heading in README
    assert "keep 0.7 at blocks 3, 6 and 9" in README  # keep rates compound
