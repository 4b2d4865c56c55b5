"""`prune.py pipeline --weights W --data D` with nothing else runs the measured recipe that docs/guide.md
recommends, the demo keeps its own fast settings, and the guide's defaults table says what the code does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from pipeline.cli import options_from_args
from pipeline.options import PipelineOptions
from pipeline.run import resolved_optimizer

REPO = Path(__file__).resolve().parents[1]

# bench/results/helmets_seeds.md, rows "--target-flops 0.7" (and the recipe's other flags): sizes as measured
RECIPE = {"sparse_epochs": 10, "sparsity": 0.02, "sparsity_mode": "targeted", "sparsity_schedule": "constant",
          "target_flops": 0.7, "reconstruct": 128, "finetune_epochs": 80, "batch_size": 16, "nbs": 16,
          "lr_schedule": "restart", "min_keep": 0.1, "round_to": 8, "importance": "slim", "finetune_hyp": None}


def _parse(*argv: str):
    spec = importlib.util.spec_from_file_location("prune_entry", REPO / "prune.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return entry.build_parser().parse_args(list(argv))


def test_pipeline_without_flags_runs_the_measured_recipe():
    args = _parse("pipeline", "--weights", "w.pt", "--data", "d.yaml")
    opt = options_from_args(args)
    assert {k: getattr(opt, k) for k in RECIPE} == RECIPE
    assert opt.ratio is None and opt.target_params is None
    assert {k: getattr(PipelineOptions(), k) for k in RECIPE} == RECIPE  # the Python API gets the same


def test_another_amount_replaces_the_default_target():
    opt = options_from_args(_parse("pipeline", "--weights", "w.pt", "--data", "d.yaml", "--ratio", "0.3"))
    assert (opt.ratio, opt.target_flops) == (0.3, None)


def test_the_demo_keeps_its_own_fast_settings():
    args = _parse("demo")
    from pipeline.cli import demo_defaults

    opt = options_from_args(args, demo_defaults())
    assert (opt.imgsz, opt.sparse_epochs, opt.finetune_epochs, opt.sparsity, opt.optimizer) == (128, 35, 10, 2e-3,
                                                                                                 "AdamW")
    assert (opt.sparsity_mode, opt.reconstruct, opt.target_flops, opt.nbs) == ("uniform", 0, 0.5, 16)


def guide_defaults() -> dict[str, str]:
    """The rows of docs/guide.md's defaults table: {flag: value as written}."""
    text = (REPO / "docs" / "guide.md").read_text()
    section = text.split("## Defaults and where they come from", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(--[\w-]+)` \| `([^`]*)` \|", section, flags=re.M))


def test_the_guide_table_names_every_recipe_default():
    rows = guide_defaults()
    assert {"--" + k.replace("_", "-") for k in RECIPE if k != "finetune_hyp"} <= set(rows)


@pytest.mark.parametrize("flag", sorted(guide_defaults()))
def test_the_guide_table_says_what_the_code_does(flag: str):
    opt = options_from_args(_parse("pipeline", "--weights", "w.pt", "--data", "d.yaml"))
    value = getattr(opt, flag[2:].replace("-", "_"))
    assert guide_defaults()[flag] == str(value)


def test_targeted_default_asks_for_slim_only_when_there_is_a_sparse_stage(tmp_path):
    """With the targeted default, `--sparse-epochs 0 --importance taylor` (prune a checkpoint as it is) must run;
    with a sparse stage the one-line error names the flag to change."""
    from pipeline.options import PipelineError

    weights, data = tmp_path / "w.pt", tmp_path / "d.yaml"
    weights.write_bytes(b"x")
    data.write_text("names: [a]\n")
    PipelineOptions(weights=str(weights), data=str(data), sparse_epochs=0, importance="taylor").validate()
    with pytest.raises(PipelineError, match="--importance slim"):
        PipelineOptions(weights=str(weights), data=str(data), importance="taylor").validate()


def test_stage_keys_name_the_optimizer_that_trains_not_none():
    """No --optimizer keys as the family's: a YOLOv5 run from before the family default (keyed SGD) resumes."""
    assert resolved_optimizer(PipelineOptions(cfg="yolov5n")) == "SGD"
    assert resolved_optimizer(PipelineOptions(cfg="yolo-fastestv2")) == "AdamW"
    assert resolved_optimizer(PipelineOptions(cfg="yolo-fastestv2", optimizer="SGD")) == "SGD"
