"""The README promises every command and flag: a flag added to a CLI without a word in the README fails here."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from finetune.cli import build_parser as finetune_parser

REPO = Path(__file__).resolve().parents[1]


def _prune_parsers() -> dict[str, argparse.ArgumentParser]:
    spec = importlib.util.spec_from_file_location("prune_entry", REPO / "prune.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    top = entry.build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _undocumented(parser: argparse.ArgumentParser, readme: str) -> list[str]:
    """Long options of which no spelling (an option and its aliases) appears in the README as a whole word."""
    missing = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if longs and not any(re.search(re.escape(o) + r"(?![\w-])", readme) for o in longs):
            missing.append("/".join(longs))
    return missing


def test_every_command_is_in_the_readme_table() -> None:
    readme = (REPO / "README.md").read_text()
    commands = _prune_parsers()
    assert {"prune", "pipeline", "demo", "val", "export", "report"} <= set(commands)
    assert [c for c in commands if f"| `{c}` |" not in readme] == []


@pytest.mark.parametrize("command", sorted(_prune_parsers()) + ["finetune.py"])
def test_every_flag_is_in_the_readme(command: str) -> None:
    parser = finetune_parser() if command == "finetune.py" else _prune_parsers()[command]
    assert _undocumented(parser, (REPO / "README.md").read_text()) == []


def test_the_check_sees_a_missing_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--imgsz", "--img")
    parser.add_argument("--never-documented-flag")
    assert _undocumented(parser, "use --weights W --img 320; --weights-x is another") == ["--never-documented-flag"]
