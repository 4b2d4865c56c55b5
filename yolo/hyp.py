"""Training hyperparameters: YOLOv5's hyp files, validated on load.

`load_hyp(path, overrides)` starts from the shipped defaults (`yolo/hyps/default.yaml`, the values of
YOLOv5's hyp.scratch-low.yaml), applies the file (which may list only some keys) and then the overrides.
An unknown key, a wrong type or an out-of-range value raises `HypError` with a one-line message naming
the file and the key.

They live with the detector because its loss and augmentation read them: training (finetune/) and the taylor
importance (prune/) both load them from here.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from yolo.fileio import yaml_error_text

DEFAULT_HYP_PATH = Path(__file__).with_name("hyps") / "default.yaml"

# key -> (low, high) inclusive bounds; every value is a real number.
HYP_BOUNDS: dict[str, tuple[float, float]] = {
    "lr0": (1e-8, 1.0),
    "lrf": (0.0, 1.0),
    "momentum": (0.0, 0.9999),
    "weight_decay": (0.0, 0.1),
    "warmup_epochs": (0.0, 1000.0),
    "warmup_momentum": (0.0, 0.9999),
    "warmup_bias_lr": (0.0, 1.0),
    "box": (0.0, 1000.0),
    "cls": (0.0, 1000.0),
    "cls_pw": (1e-6, 1000.0),
    "obj": (0.0, 1000.0),
    "obj_pw": (1e-6, 1000.0),
    "iou_t": (0.0, 1.0),
    "anchor_t": (1.0, 100.0),
    "fl_gamma": (0.0, 10.0),
    "hsv_h": (0.0, 1.0),
    "hsv_s": (0.0, 1.0),
    "hsv_v": (0.0, 1.0),
    "degrees": (0.0, 180.0),
    "translate": (0.0, 0.9),
    "scale": (0.0, 0.95),
    "shear": (0.0, 90.0),
    "perspective": (0.0, 0.001),
    "flipud": (0.0, 1.0),
    "fliplr": (0.0, 1.0),
    "mosaic": (0.0, 1.0),
    "mixup": (0.0, 1.0),
    "copy_paste": (0.0, 1.0),
    "label_smoothing": (0.0, 0.999),
    # knowledge distillation (finetune.py --teacher): total gain, then the per-term gains (finetune/distill.py)
    "distill": (0.0, 1000.0),
    "distill_obj": (0.0, 1000.0),
    "distill_cls": (0.0, 1000.0),
    "distill_box": (0.0, 1000.0),
    "distill_feat": (0.0, 1000.0),
}


class HypError(ValueError):
    """A hyperparameter file or override that does not validate."""


PathLike = Union[str, Path]


def load_hyp(path: PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Defaults, then the yaml at `path` (if given), then `overrides`; every value validated."""
    hyp = _read_yaml(DEFAULT_HYP_PATH)
    _validate(hyp, str(DEFAULT_HYP_PATH))
    if path is not None:
        user = _read_yaml(Path(path))
        _validate(user, str(path))
        hyp.update(user)
    if overrides:
        _validate(overrides, "hyperparameter override")
        hyp.update(overrides)
    return {k: float(v) for k, v in hyp.items()}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise HypError(f"{path}: hyperparameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HypError(yaml_error_text(path, e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HypError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
    return data


def _validate(values: Mapping[str, Any], source: str) -> None:
    for key, value in values.items():
        if key not in HYP_BOUNDS:
            close = difflib.get_close_matches(str(key), list(HYP_BOUNDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise HypError(f"{source}: unknown hyperparameter '{key}'{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HypError(f"{source}: hyperparameter '{key}' must be a number, got {value!r}")
        low, high = HYP_BOUNDS[key]
        if not (math.isfinite(value) and low <= value <= high):
            raise HypError(f"{source}: hyperparameter '{key}' = {value} is outside [{low:g}, {high:g}]")


def dump_hyp(hyp: Mapping[str, float], path: PathLike) -> None:
    """Write hyperparameters as a yaml file that `load_hyp` reads back."""
    Path(path).write_text(yaml.safe_dump(dict(hyp), sort_keys=False))
