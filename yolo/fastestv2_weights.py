"""The authors' YOLO-FastestV2 state_dicts (plain `OrderedDict`s of tensors) mapped onto `yolo-fastestv2.yaml`.

Two files are recognised by their keys: the COCO detector (`backbone.*`, `fpn.*`, `output_{reg,obj,cls}_layers.*`)
and the ImageNet ShuffleNetV2 x0.5 backbone (`first_conv.*`, `stage2..4.*`). The mapping is by name, one rule
per part of their model, so a file from another network fails on its first unknown key instead of loading
half-matched weights.

Their input convention (image stretched to the square input size, BGR channels, /255) is recorded in the
metadata of a model loaded from their detector, so every path that feeds it images uses the same one.
"""

from __future__ import annotations

import re

import torch

from yolo.coco_names import COCO80
from yolo.model import DetectionModel, build_model

CONFIG = "yolo-fastestv2"
IMGSZ = 352
AUTHORS_INPUT = {"resize": "stretch", "channels": "bgr"}

# stage name -> (yaml layer of its stride-2 first unit, yaml layer of its repeated units)
_STAGES = {"stage2": (1, 2), "stage3": (3, 4), "stage4": (5, 6)}
_FPN = {
    "conv1x1_3": "model.7", "cls_head_3": "model.8", "reg_head_3": "model.9",
    "conv1x1_2": "model.12", "cls_head_2": "model.13", "reg_head_2": "model.14",
}  # fmt: skip
_OUTPUTS = {f"output_{k}_layers": f"model.15.m.{i}" for i, k in enumerate(("reg", "obj", "cls"))}


class AuthorsWeightsError(ValueError):
    """A state_dict that is not (or does not fit) the authors' YOLO-FastestV2 / ShuffleNetV2 x0.5."""


def authors_kind(obj: object) -> str | None:
    """'detector' or 'backbone' for the authors' two plain state_dicts, else None."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    if "output_cls_layers.weight" in obj and "backbone.first_conv.0.weight" in obj:
        return "detector"
    if "first_conv.0.weight" in obj and any(k.startswith("stage4.") for k in obj):
        return "backbone"
    return None


def _backbone_key(key: str) -> str | None:
    m = re.fullmatch(r"first_conv\.(\d+)\.(.+)", key)
    if m:
        return f"model.0.conv.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"(stage[234])\.(\d+)\.(branch_main|branch_proj)\.(.+)", key)
    if not m:
        return None
    first, rest = _STAGES[m.group(1)]
    i = int(m.group(2))
    return f"model.{first}.{m.group(3)}.{m.group(4)}" if i == 0 else f"model.{rest}.{i - 1}.{m.group(3)}.{m.group(4)}"


def _detector_key(key: str) -> str | None:
    if key.startswith("backbone."):
        return _backbone_key(key[len("backbone.") :])
    m = re.fullmatch(r"fpn\.(\w+?)\.(block\.\d+|0|1)\.(.+)", key)
    if m and m.group(1) in _FPN:
        part = {"0": "conv", "1": "bn"}.get(m.group(2), m.group(2))
        return f"{_FPN[m.group(1)]}.{part}.{m.group(3)}"
    m = re.fullmatch(r"(output_\w+_layers)\.(weight|bias)", key)
    if m and m.group(1) in _OUTPUTS:
        return f"{_OUTPUTS[m.group(1)]}.{m.group(2)}"
    return None


def map_state(state: dict, kind: str) -> dict[str, torch.Tensor]:
    """Their keys renamed to ours; the first key without a rule is an error naming it."""
    rule = _detector_key if kind == "detector" else _backbone_key
    out = {}
    for k, v in state.items():
        ours = rule(k)
        if ours is None:
            raise AuthorsWeightsError(f"key {k!r} is not part of the authors' YOLO-FastestV2 {kind}")
        out[ours] = v.float() if v.is_floating_point() else v
    return out


def _fit(model: DetectionModel, state: dict, kind: str, prefix_only: bool) -> None:
    own = model.state_dict()
    wanted = [k for k in own if not k.endswith("anchors") and (not prefix_only or _in_backbone(k))]
    missing = [k for k in wanted if k not in state]
    wrong = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if missing or wrong:
        bad = (missing or wrong)[:3]
        raise AuthorsWeightsError(
            f"does not fit {CONFIG}'s {kind} with {model.nc} classes ({'missing' if missing else 'shape differs'}: "
            f"{', '.join(bad)})"
        )
    model.load_state_dict(state, strict=False)


def _in_backbone(key: str) -> bool:
    return int(key.split(".")[1]) <= 6


def from_authors_detector(state: dict) -> tuple[DetectionModel, dict]:
    """The authors' COCO detector as our model, plus the metadata recording its input convention."""
    nc = int(state["output_cls_layers.weight"].shape[0]) if "output_cls_layers.weight" in state else 80
    model = build_model(CONFIG, nc=nc)
    _fit(model, map_state(state, "detector"), "detector", prefix_only=False)
    if nc == len(COCO80):  # their file has no names; 80 classes is their COCO model
        model.names = list(COCO80)
    meta = {
        "format": "yolo-fastestv2 (authors' state_dict)",
        "names": model.names,
        "stride": [float(s) for s in model.stride],
        "history": [],
        "imgsz": IMGSZ,
        "input": dict(AUTHORS_INPUT),
    }
    return model, meta


def load_backbone(model: DetectionModel, state: dict) -> DetectionModel:
    """Copy the authors' ImageNet ShuffleNetV2 x0.5 backbone (layers 0-6) into a fresh yolo-fastestv2 model."""
    if authors_kind(state) != "backbone":
        raise AuthorsWeightsError(
            "is not the authors' ShuffleNetV2 x0.5 backbone state_dict (expected keys first_conv.*, stage2-4.*)"
        )
    _fit(model, map_state(state, "backbone"), "backbone", prefix_only=True)
    return model


def head_outputs(model: DetectionModel, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The eval output and the head's six raw conv outputs in the authors' order (reg, obj, cls per level), taken
    through a pre-hook: what their golden file holds, so the two can be compared map by map."""
    seen = {}
    hook = model.detect.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            decoded, _ = model(x)
            raw = model.detect.raw_maps(seen["x"])
    finally:
        hook.remove()
    return decoded, raw


def authors_rows_in_our_order(decoded: torch.Tensor, grids: tuple[int, ...], na: int = 3) -> torch.Tensor:
    """The authors' decoded rows, which run (y, x, anchor) per level, reordered as ours (anchor, y, x), the layout
    of YOLOv5's Detect."""
    parts, off = [], 0
    for n in grids:
        k = n * n * na
        parts.append(decoded[:, off : off + k].reshape(1, n, n, na, -1).permute(0, 3, 1, 2, 4).reshape(1, k, -1))
        off += k
    return torch.cat(parts, 1)
