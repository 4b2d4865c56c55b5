"""A warning during a command is one line, `warning: <message>`, not Python's file/line/source-line form."""

from __future__ import annotations

import warnings

from yolo.errors import run_cli


class _PlanWarning(UserWarning):
    pass


def test_a_command_warning_is_one_line():
    shown = []  # pytest records warnings itself, so the format Python would print is asked for directly

    def command(_args) -> None:
        shown.append(warnings.formatwarning("this plan removes channels\n  whose |gamma| is large", _PlanWarning,
                                            "pipeline/run.py", 341, "pruned, table = prune_model(model)"))

    assert run_cli(command, None) == 0
    assert shown == ["warning: this plan removes channels whose |gamma| is large\n"]


def test_the_default_format_comes_back_after_the_command():
    before = warnings.formatwarning
    run_cli(lambda _a: None, None)
    assert warnings.formatwarning is before
