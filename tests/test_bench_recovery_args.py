"""bench/recovery.py's recipe flags: hyperparameter overrides are checked when parsed, and flags added later enter
the recipe only when used (so results recorded before them still match and are not redone)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture()
def recovery(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    import recovery

    yield recovery
    sys.modules.pop("recovery", None)


def test_hyp_overrides_are_parsed_and_checked(recovery, capsys):
    args = recovery.parse_args(["--hyp", "box=0", "obj=0.5", "--feature-gain", "2", "--keep-detect-inputs"])
    assert args.hyp == {"box": 0.0, "obj": 0.5} and args.feature_gain == 2.0 and args.keep_detect_inputs
    for bad, says in (("box=x", "expected KEY=NUMBER"), ("nope=1", "unknown hyperparameter 'nope'"),
                      ("box=-1", "outside")):  # fmt: skip
        with pytest.raises(SystemExit):
            recovery.parse_args(["--hyp", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert ": error: --hyp" in err and says in err


def test_later_flags_enter_the_recipe_only_when_used(recovery):
    from benchlib.recovery_train import RECIPE_KEYS, recipe_of

    plain = recipe_of(recovery.parse_args([]))
    assert set(plain) == set(RECIPE_KEYS)  # a result recorded before the later flags still matches
    used = recipe_of(recovery.parse_args(["--hyp", "cls=0", "--keep-detect-inputs"]))
    assert used == {**plain, "hyp": {"cls": 0.0}, "keep_detect_inputs": True}  # freeze_bn_stats stays out
