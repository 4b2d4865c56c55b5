"""Exact structural rewrites of a detector: Focus -> one strided Conv, RepVGG -> one 3x3 Conv.

Both work in place on a DetectionModel and rewrite its yaml rows too, so `save_checkpoint` records the new
structure and `load_model` rebuilds it (the architecture description is the yaml dict plus per-layer channel
counts). The outputs are unchanged in eval mode (up to float rounding); `model.yaml["transforms"]` lists what
was applied.

replace_focus: Focus slices x into the four pixel phases (::2, ::2), (1::2, ::2), (::2, 1::2), (1::2, 1::2),
stacks them on channels and runs a k x k conv with stride s and padding p. Reading the phases back off the
full-resolution image, that is one conv with kernel 2k, stride 2s and padding 2p (YOLOv5 v6.0 replaced
Focus(64, 3) by Conv(64, 6, 2, 2) this way): W'[o, c, 2a + dy, 2b + dx] = W[o, phase(dy, dx) * c1 + c, a, b].
Removing the slices helps export (no Slice/Concat ops) and lets the pruner treat the stem as an ordinary Conv.
"""

from __future__ import annotations

import copy
import re
from typing import Callable

import torch
from torch import nn

from yolo.modules import Conv, Focus
from yolo.repvgg import RepVGG

# Focus's channel blocks, in the order Focus concatenates them: (row offset dy, column offset dx).
FOCUS_PHASES = ((0, 0), (1, 0), (0, 1), (1, 1))


class TransformError(ValueError):
    """A module that cannot be rewritten exactly; the message names it and the reason."""


def _square(v, what: str, name: str) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(set(v)) != 1 or not isinstance(v[0], int):
        raise TransformError(f"{name}: Focus conv {what} {v} is not square; cannot express it as one Conv row")
    return int(v[0])


@torch.no_grad()
def focus_to_conv(focus: Focus, name: str = "Focus") -> Conv:
    """A Conv(c1, c2, 2k, 2s, 2p) computing exactly what `focus` computes (eval and train mode alike)."""
    unit = focus.conv
    conv = unit.conv
    if not hasattr(unit, "bn"):
        raise TransformError(f"{name}: Focus conv is already fused (no BatchNorm); replace Focus before fusing")
    if conv.groups != 1:
        raise TransformError(f"{name}: Focus conv has groups={conv.groups}; the pixel phases would mix groups")
    if _square(conv.dilation, "dilation", name) != 1:
        raise TransformError(f"{name}: Focus conv is dilated ({conv.dilation}); no single Conv equals it")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TransformError(f"{name}: Focus conv padding {conv.padding!r}/{conv.padding_mode} is not plain zeros")
    k, s, p = (_square(getattr(conv, a), a, name) for a in ("kernel_size", "stride", "padding"))
    c2, c4 = conv.out_channels, conv.in_channels
    if c4 % 4:
        raise TransformError(f"{name}: Focus conv reads {c4} channels, not 4 x the image channels")
    c1 = c4 // 4
    out = Conv(c1, c2, 2 * k, 2 * s, 2 * p, act=copy.deepcopy(unit.act))
    out.to(device=conv.weight.device, dtype=conv.weight.dtype)
    w = conv.weight.detach()
    new = torch.zeros_like(out.conv.weight)
    for j, (dy, dx) in enumerate(FOCUS_PHASES):
        new[:, :, dy::2, dx::2] = w[:, j * c1 : (j + 1) * c1]
    out.conv.weight.data.copy_(new)
    out.conv.weight.requires_grad_(conv.weight.requires_grad)
    out.bn = copy.deepcopy(unit.bn)
    out.train(focus.training)
    return out


def replace_focus(model: nn.Module) -> int:
    """Turn every Focus into the equivalent strided Conv (in place); returns how many were replaced.

    A DetectionModel's yaml row `[f, n, Focus, [c2, k, s, p]]` becomes `[f, n, Conv, [c2, 2k, 2s, 2p]]`.
    """

    def row(args: list, new: Conv) -> list:
        k, s, p = (new.conv.kernel_size[0], new.conv.stride[0], new.conv.padding[0])
        extra = [1, 1, args[5]] if len(args) > 5 else []  # Focus (c2, k, s, p, g, act) -> Conv (.., g, d, act)
        return [args[0], k, s, p, *extra]

    return _rewrite(model, Focus, "Focus", focus_to_conv, row)


def reparameterize(model: nn.Module) -> int:
    """Fold every RepVGG block into one 3x3 Conv (in place, exact in eval mode); returns how many were folded.

    A DetectionModel's yaml row `[f, n, RepVGG, args]` becomes `[f, n, Conv, args]` (same arguments: the
    deploy form of RepVGG(c1, c2, 3, s) is Conv(c1, c2, 3, s)), so the checkpoint reloads as the fused model.
    """
    return _rewrite(model, RepVGG, "RepVGG", lambda m, name: m.to_conv(), lambda args, new: list(args))


def _rewrite(
    model: nn.Module,
    cls: type[nn.Module],
    label: str,
    convert: Callable[[nn.Module, str], nn.Module],
    new_args: Callable[[list, nn.Module], list],
) -> int:
    """Replace every `cls` instance with convert(instance); rewrite the owning yaml rows of a DetectionModel."""
    targets = [(n, m) for n, m in model.named_modules() if type(m) is cls]
    if not targets:
        return 0
    yaml_d = getattr(model, "yaml", None)
    layers = getattr(model, "model", None)
    rows = (yaml_d["backbone"] + yaml_d["head"]) if isinstance(yaml_d, dict) else None
    owners: dict[int, list[str]] = {}
    if rows is not None:
        for name, _ in targets:  # check everything before changing anything
            m = re.fullmatch(r"model\.(\d+)(?:\.(\d+))?", name)
            i = int(m.group(1)) if m else -1
            if not m or str(getattr(layers[i], "type", "")) != label:
                raise TransformError(
                    f"{name}: a {label} that is not a yaml layer of its own; the checkpoint could not describe "
                    "the rewritten model"
                )
            owners.setdefault(i, []).append(name)
    converted = {}
    for name, m in targets:
        converted[name] = convert(m, name)
    for name, new in converted.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(attr)
        for key in ("i", "f", "type", "np"):
            if hasattr(old, key):
                setattr(new, key, getattr(old, key))
        if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
    if rows is not None:
        nb = len(yaml_d["backbone"])
        for i, names in owners.items():
            f, n, _, args = rows[i]
            new_row = [f, n, "Conv", new_args(list(args or []), converted[names[0]])]
            if i < nb:
                yaml_d["backbone"][i] = new_row
            else:
                yaml_d["head"][i - nb] = new_row
            layer = layers[i]
            layer.type = "Conv"
            layer.np = sum(p.numel() for p in layer.parameters())
        done = list(yaml_d.get("transforms") or [])
        tag = {"Focus": "replace_focus", "RepVGG": "reparam"}.get(label, label)
        if tag not in done:
            yaml_d["transforms"] = [*done, tag]
    return len(converted)
