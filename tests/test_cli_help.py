"""Every command of prune.py and finetune.py explains itself: a description per sub-command, a help text per flag,
and the top-level help names the order of the steps."""

from __future__ import annotations

import argparse
import importlib.util

from finetune.cli import build_parser as finetune_parser
from tests.conftest import REPO


def prune_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("prune_main", REPO / "prune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def walk(parser: argparse.ArgumentParser, name: str):
    """(parser name, parser) for the parser and every sub-parser below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from walk(sub, f"{name} {sub_name}")


def test_every_command_has_a_description_and_every_flag_a_help_text():
    missing = []
    for name, parser in [*walk(prune_parser(), "prune.py"), *walk(finetune_parser(), "finetune.py")]:
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_top_level_help_names_the_usual_order_and_finetune_py():
    text = prune_parser().format_help()
    steps = ["prune.py val", "finetune.py --weights S --data D --sparsity", "prune.py sweep", "prune.py prune",
             "finetune.py --weights runs/prune", "prune.py export", "prune.py report", "prune.py pipeline"]  # fmt: skip
    where = [text.find(s) for s in steps]
    assert -1 not in where, dict(zip(steps, where))
    assert where == sorted(where)
