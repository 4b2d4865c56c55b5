"""docs/cli.md documents every command and flag (a flag added to a CLI without a word there fails here), and the
README stays short enough to read."""

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
    """Long options of which no spelling (an option and its aliases) appears in the text as a whole word."""
    missing = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if longs and not any(re.search(re.escape(o) + r"(?![\w-])", readme) for o in longs):
            missing.append("/".join(longs))
    return missing


def _cli_doc() -> str:
    return (REPO / "docs" / "cli.md").read_text()


def test_every_command_is_in_the_cli_doc_table() -> None:
    commands = _prune_parsers()
    assert {"prune", "pipeline", "demo", "val", "export", "report"} <= set(commands)
    assert [c for c in commands if f"| [`{c}`](" not in _cli_doc()] == []


@pytest.mark.parametrize("command", sorted(_prune_parsers()) + ["finetune.py"])
def test_every_flag_is_in_the_cli_doc(command: str) -> None:
    parser = finetune_parser() if command == "finetune.py" else _prune_parsers()[command]
    assert _undocumented(parser, _cli_doc()) == []


def test_the_readme_is_at_most_1500_words() -> None:
    """What `wc -w README.md` counts: whitespace-separated words, the results block included."""
    assert len((REPO / "README.md").read_text().split()) <= 1500


def test_the_readme_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert [d for d in ("docs/cli.md", "docs/guide.md", "docs/results.md", "docs/architecture.md")
            if f"]({d}" not in readme] == []


def test_the_check_sees_a_missing_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--imgsz", "--img")
    parser.add_argument("--never-documented-flag")
    assert _undocumented(parser, "use --weights W --img 320; --weights-x is another") == ["--never-documented-flag"]
