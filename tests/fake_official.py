"""Test helpers: fake official YOLOv5 pickles, tiny model configs and hand-made channel pruning.

An official YOLOv5 `.pt` is a pickle of a whole `models.yolo.Model` whose layers are `models.common.*`
classes. `fake_yolov5_modules()` registers throwaway modules under those names, `to_official()` turns one of
our DetectionModels into the same object graph (same attribute names, classes swapped to the fakes), and
`save_official()` pickles it the way YOLOv5's train.py does. The fake modules are removed again before a test
loads the file, so the loader cannot lean on importing real classes.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from yolo import modules as ym

ANCHORS_P5 = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]

COMMON_CLASSES = ("Conv", "DWConv", "Focus", "Bottleneck", "BottleneckCSP", "C3", "SPP", "SPPF", "Concat")
YOLO_CLASSES = ("Model", "DetectionModel", "Detect", "SegmentationModel", "Segment", "ClassificationModel", "Classify")


# ---------------------------------------------------------------- tiny configs


# The YOLOv5 P5 head (PANet neck + Detect), shared by both fake layouts.
_P5_HEAD = [
    [-1, 1, "Conv", [512, 1, 1]],  # 10
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 1, "C3", [512, False]],  # 13
    [-1, 1, "Conv", [256, 1, 1]],  # 14
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 1, "C3", [256, False]],  # 17 P3
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],
    [-1, 1, "C3", [512, False]],  # 20 P4
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],
    [-1, 1, "C3", [1024, False]],  # 23 P5
    [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
]


def tiny_cfg(nc: int = 2, width: float = 0.125, depth: float = 0.33, **extra: Any) -> dict:
    """A yolov5n-like v6 layout (6x6 stem, C3, SPPF), small enough for CPU tests."""
    return {
        "nc": nc,
        "depth_multiple": depth,
        "width_multiple": width,
        "anchors": copy.deepcopy(ANCHORS_P5),
        "backbone": [
            [-1, 1, "Conv", [64, 6, 2, 2]],  # 0 P1/2
            [-1, 1, "Conv", [128, 3, 2]],  # 1 P2/4
            [-1, 3, "C3", [128]],  # 2
            [-1, 1, "Conv", [256, 3, 2]],  # 3 P3/8
            [-1, 3, "C3", [256]],  # 4
            [-1, 1, "Conv", [512, 3, 2]],  # 5 P4/16
            [-1, 1, "C3", [512]],  # 6
            [-1, 1, "Conv", [1024, 3, 2]],  # 7 P5/32
            [-1, 1, "C3", [1024]],  # 8
            [-1, 1, "SPPF", [1024, 5]],  # 9
        ],
        "head": copy.deepcopy(_P5_HEAD),
        **extra,
    }


def tiny_v5_cfg(nc: int = 2, width: float = 0.125, **extra: Any) -> dict:
    """A release-v5.0-like layout: Focus stem, BottleneckCSP, SPP."""
    return {
        "nc": nc,
        "depth_multiple": 0.33,
        "width_multiple": width,
        "anchors": copy.deepcopy(ANCHORS_P5),
        "backbone": [
            [-1, 1, "Focus", [64, 3]],  # 0 P1/2
            [-1, 1, "Conv", [128, 3, 2]],  # 1 P2/4
            [-1, 3, "BottleneckCSP", [128]],  # 2
            [-1, 1, "Conv", [256, 3, 2]],  # 3 P3/8
            [-1, 3, "C3", [256]],  # 4
            [-1, 1, "Conv", [512, 3, 2]],  # 5 P4/16
            [-1, 1, "C3", [512]],  # 6
            [-1, 1, "Conv", [1024, 3, 2]],  # 7 P5/32
            [-1, 1, "SPP", [1024, [5, 9, 13]]],  # 8
            [-1, 1, "C3", [1024, False]],  # 9
        ],
        "head": copy.deepcopy(_P5_HEAD),
        **extra,
    }


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine params, so fusing and slicing have something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------- hand pruning


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def shrink_channels(
    model: nn.Module, conv: str, bn: str, next_convs: str | list[str | tuple[str, int]], keep: list[int]
) -> None:
    """Keep only output channels `keep` of Conv2d `conv` + BatchNorm `bn` and the matching inputs of `next_convs`.

    A consumer given as (name, offset) reads `conv`'s channels at that offset of its input (after a Concat).
    The consumers must be every reader of `conv`'s output, as a pruner would ensure.
    """
    c: nn.Conv2d = _get(model, conv)
    b: nn.BatchNorm2d = _get(model, bn)
    assert c.groups == 1
    idx = torch.tensor(keep)
    new_c = nn.Conv2d(c.in_channels, len(keep), c.kernel_size, c.stride, c.padding, c.dilation, bias=c.bias is not None)
    new_b = nn.BatchNorm2d(len(keep), eps=b.eps, momentum=b.momentum)
    with torch.no_grad():
        new_c.weight.copy_(c.weight[idx])
        if c.bias is not None:
            new_c.bias.copy_(c.bias[idx])
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_b, k).copy_(getattr(b, k)[idx])
    for item in [next_convs] if isinstance(next_convs, str) else next_convs:
        name, offset = (item, 0) if isinstance(item, str) else item
        nxt: nn.Conv2d = _get(model, name)
        assert nxt.groups == 1
        cin = [*range(offset), *(offset + k for k in keep), *range(offset + c.out_channels, nxt.in_channels)]
        new_n = nn.Conv2d(
            len(cin),
            nxt.out_channels,
            nxt.kernel_size,
            nxt.stride,
            nxt.padding,
            nxt.dilation,
            bias=nxt.bias is not None,
        )
        with torch.no_grad():
            new_n.weight.copy_(nxt.weight[:, torch.tensor(cin)])
            if nxt.bias is not None:
                new_n.bias.copy_(nxt.bias)
        _set(model, name, new_n)
    _set(model, conv, new_c)
    _set(model, bn, new_b)


# ---------------------------------------------------------------- fake official classes and pickles


@contextlib.contextmanager
def fake_yolov5_modules(prefix: str = "models") -> Iterator[dict[str, type]]:
    """Register `<prefix>.yolo` and `<prefix>.common` (and parent packages) holding same-named stand-in classes.

    Yields {class name: fake class}; everything registered is removed from sys.modules on exit.
    """
    parts = prefix.split(".")
    packages = [".".join(parts[: i + 1]) for i in range(len(parts))]
    names = [*packages, f"{prefix}.yolo", f"{prefix}.common"]
    clash = [n for n in names if n in sys.modules]
    if clash:
        raise RuntimeError(f"modules {clash} already imported; the fake would shadow them")
    fakes: dict[str, type] = {}
    try:
        for n in names:
            sys.modules[n] = types.ModuleType(n)
        for mod_name, cls_names in ((f"{prefix}.common", COMMON_CLASSES), (f"{prefix}.yolo", YOLO_CLASSES)):
            mod = sys.modules[mod_name]
            for cls_name in cls_names:
                cls = type(cls_name, (nn.Module,), {"__module__": mod_name, "__qualname__": cls_name})
                setattr(mod, cls_name, cls)
                fakes[cls_name] = cls
        yield fakes
    finally:
        for n in names:
            sys.modules.pop(n, None)


def to_official(
    model: nn.Module,
    fakes: dict[str, type],
    model_class: str = "Model",
    head_class: str = "Detect",
    anchor_grid_buffer: bool = False,
    names_as_dict: bool = False,
) -> nn.Module:
    """A copy of our DetectionModel as the official object graph: same attributes, fake YOLOv5 classes.

    anchor_grid_buffer: add the release-v5.0 `anchor_grid` buffer (pixels) to Detect, as those files have.
    """
    src = model
    m = copy.deepcopy(model)
    ours = {getattr(ym, n) for n in COMMON_CLASSES if hasattr(ym, n)} | {ym.Detect}
    for mod in list(m.modules()):
        if type(mod) in ours:
            name = type(mod).__name__
            mod.__class__ = fakes[head_class if name == "Detect" else name]
    det = m.model[-1]
    det.stride = src.stride.clone()
    if anchor_grid_buffer:
        del det.anchor_grid
        det.register_buffer("anchor_grid", (det.anchors * det.stride.view(-1, 1, 1)).view(det.nl, 1, -1, 1, 1, 2))
    m.__class__ = fakes[model_class]
    m.stride = src.stride.clone()
    m.yaml = copy.deepcopy(src.yaml)
    m.yaml_file = "tiny.yaml"
    names = list(src.names)
    m.names = dict(enumerate(names)) if names_as_dict else names
    return m


def official_ckpt(model: nn.Module | None, ema: nn.Module | None = None, **extra: Any) -> dict:
    """The dict YOLOv5 v6's train.py saves (weights in fp16)."""
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": None if model is None else model.half(),
        "ema": None if ema is None else ema.half(),
        "updates": None,
        "optimizer": None,
        "wandb_id": None,
        "date": "2022-02-22T02:22:22.222222",
        "opt": {"imgsz": 640, "batch_size": 64},
    }
    ckpt.update(extra)
    return ckpt


def save_official(path: Path, obj: Any) -> Path:
    """torch.save as YOLOv5 does; call inside fake_yolov5_modules()."""
    torch.save(obj, path)
    return path


class Reduce:
    """An object whose unpickling calls `fn(*args)`: the shape of a malicious pickle."""

    def __init__(self, fn: Any, *args: Any):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args
