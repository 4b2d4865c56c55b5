"""Dropping a detection scale: one Detect level, and the layers that only fed it, leave the model.

Which layers go is read from the graph of the yaml's `from` references, not from a layer list: a layer is kept when
it is an ancestor of one of the remaining Detect inputs, every other layer only fed the dropped level. The yaml is
rewritten (rows removed, `from` indices renumbered, the level's anchors dropped, `repeats` re-keyed), the
recorded channel counts and the weights are renamed to the new layer indices, and a fresh model is built from the
rewritten yaml, so the checkpoint's `arch` rebuilds it like any other.

In YOLOv5's PAN neck the P3 output also starts the bottom-up path to P4 and P5, so dropping P3 removes only
Detect's P3 convolution and its 3 x (h/8) x (w/8) anchors: the decode and NMS load, not the backbone. Dropping P5
removes the last downsample Conv, Concat and C3 of the PAN as well; the backbone still reaches stride 32 for the
P4 path, so inputs stay multiples of 32 (`DetectionModel.input_stride`).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from prune.config import PruneError
from prune.structure_table import StructureTable
from yolo.model import DetectionModel, de_parallel, module_shapes


def level_names(model: nn.Module) -> list[str]:
    """'P3', 'P4', ... of each Detect level, from its stride (P_k has stride 2^k)."""
    return [f"P{round(math.log2(float(s)))}" for s in _detection_model(model).stride]


def level_index(model: nn.Module, spec: Any, flag: str = "drop_scale") -> int:
    """The Detect level named by `spec`: a P-name ('P3', 'p5') or a level index (0 = the finest)."""
    names = level_names(model)
    text = str(spec).strip()
    expected = f"one of {', '.join(names)} or a level index 0-{len(names) - 1}"
    if re.fullmatch(r"[pP]\d+", text):
        if text.upper() not in names:
            raise PruneError(f"{flag} {text}: this model detects at {', '.join(names)}; expected {expected}")
        return names.index(text.upper())
    if re.fullmatch(r"\d+", text) and int(text) < len(names):
        return int(text)
    raise PruneError(f"{flag} {text!r}: expected {expected}")


def check_level_spec(spec: Any, flag: str = "drop_scale") -> str:
    """The form of a level request, checked before any model is loaded: a P-name or a level index."""
    text = str(spec).strip()
    if not re.fullmatch(r"[pP]\d+|\d+", text):
        raise PruneError(f"{flag} {spec!r}: expected a level name like P3, P4, P5 or a level index (0 = finest)")
    return text


def _refs(i: int, f: Any) -> list[int]:
    """Absolute layer indices a row at index i reads (-1 = the previous row)."""
    return [i + r if r < 0 else r for r in ([f] if isinstance(f, int) else f)]


def kept_layers(d: dict, level: int) -> list[int]:
    """Indices of the yaml rows still needed once Detect level `level` is gone (ancestors of the other inputs)."""
    rows = d["backbone"] + d["head"]
    det = len(rows) - 1
    inputs = _refs(det, rows[det][0])
    todo = [x for j, x in enumerate(inputs) if j != level]
    keep = {det}
    while todo:
        i = todo.pop()
        if i in keep or i < 0:
            continue
        keep.add(i)
        todo.extend(_refs(i, rows[i][0]))
    return sorted(keep)


def drop_level_yaml(d: dict, level: int) -> tuple[dict, dict[int, int]]:
    """The model yaml without Detect level `level` and the layers only it needed; returns (yaml, old -> new)."""
    rows = d["backbone"] + d["head"]
    det = len(rows) - 1
    keep = kept_layers(d, level)
    new_of = {old: new for new, old in enumerate(keep)}
    out_rows = []
    for old in keep:
        f, n, name, args = copy.deepcopy(rows[old])
        new = new_of[old]
        if isinstance(f, int):
            f = _renumber(old, new, f, new_of)
        else:
            f = [_renumber(old, new, r, new_of) for j, r in enumerate(f) if not (old == det and j == level)]
        if old == det and len(args) > 1 and isinstance(args[1], list):
            args[1] = [a for j, a in enumerate(args[1]) if j != level]
        out_rows.append([f, n, name, args])
    out = copy.deepcopy(d)
    n_back = sum(1 for old in keep if old < len(d["backbone"]))
    out["backbone"], out["head"] = out_rows[:n_back], out_rows[n_back:]
    if isinstance(d["anchors"], list):
        out["anchors"] = [a for j, a in enumerate(d["anchors"]) if j != level]
    if d.get("repeats"):
        out["repeats"] = {str(new_of[int(k)]): v for k, v in d["repeats"].items() if int(k) in new_of}
    return out, new_of


def _renumber(old: int, new: int, ref: int, new_of: dict[int, int]) -> int:
    """A `from` reference in the new numbering, relative if it was relative."""
    if old + ref < 0 <= new + ref or (ref < 0 and old == 0):
        return ref  # the model input
    target = new_of[old + ref if ref < 0 else ref]
    return target - new if ref < 0 else target


def _rename(key: str, new_of: dict[int, int], det: int, level: int) -> str | None:
    """A state-dict / shapes key in the new numbering; None when the module is gone."""
    m = re.match(r"model\.(\d+)\.(.*)$", key)
    if not m:
        return key
    old, rest = int(m.group(1)), m.group(2)
    if old not in new_of:
        return None
    if old == det:
        lv = re.match(r"m\.(\d+)(\..*)?$", rest)
        if lv:
            j = int(lv.group(1))
            if j == level:
                return None
            rest = f"m.{j - (j > level)}{lv.group(2) or ''}"
    return f"model.{new_of[old]}.{rest}"


@dataclass
class ScaleTable(StructureTable):
    """Every yaml layer of the model before, and where it went (its new index) or that it was removed."""

    rows: list[dict] = field(default_factory=list)
    level: int = 0
    scale: str = ""
    stride: float = 0.0
    op: ClassVar[str] = "drop_scale"
    stem: ClassVar[str] = "scale_table"
    title: ClassVar[str] = "Dropped detection scale"
    columns: ClassVar[tuple[str, ...]] = ("layer", "type", "from", "new_layer", "removed", "params")

    def to_rows(self) -> list[dict]:
        return list(self.rows)

    def details(self) -> dict:
        return {"level": self.level, "scale": self.scale, "stride": self.stride,
                "removed_layers": [r["layer"] for r in self.rows if r["removed"]],
                "layer_map": {str(r["layer"]): r["new_layer"] for r in self.rows if not r["removed"]}}  # fmt: skip


def drop_scale(
    model: nn.Module, level: Any, imgsz: int = 640, flag: str = "drop_scale"
) -> tuple[DetectionModel, ScaleTable]:
    """A copy of `model` without one detection level (a P-name or level index); returns (model, table)."""
    base = _detection_model(model)
    nl = base.detect.nl
    if nl < 2:
        raise PruneError(f"{flag}: the model has a single detection level ({level_names(base)[0]}); nothing to drop")
    k = level_index(base, level, flag)
    name = level_names(base)[k]
    new_yaml, new_of = drop_level_yaml(base.yaml, k)
    det = len(base.model) - 1
    shapes = {n: s for key, s in module_shapes(base).items() if (n := _rename(key, new_of, det, k)) is not None}
    state, origin = {}, {}
    for key, v in base.state_dict().items():
        n = _rename(key, new_of, det, k)
        if n is not None:
            state[n], origin[n] = (v[[j for j in range(nl) if j != k]] if key == f"model.{det}.anchors" else v), key
    p = next(base.parameters())
    new = DetectionModel(new_yaml, shapes=shapes).to(p.device)
    new.load_state_dict(state)
    new.names = list(base.names)
    grads = {n: q.requires_grad for n, q in base.named_parameters()}
    for n, q in new.named_parameters():
        q.requires_grad_(grads.get(origin.get(n, ""), True))
    new.train(base.training)
    rows = [{"layer": i, "type": str(getattr(m, "type", type(m).__name__)), "from": m.f,
             "new_layer": new_of.get(i), "removed": i not in new_of, "params": sum(t.numel() for t in m.parameters())}
            for i, m in enumerate(base.model)]  # fmt: skip
    table = ScaleTable(request=f"{flag} {name}", imgsz=imgsz, rows=rows, level=k, scale=name,
                       stride=float(base.stride[k]), **StructureTable.sizes(base, new, imgsz))  # fmt: skip
    return new, table


def _detection_model(model: nn.Module) -> DetectionModel:
    base = de_parallel(model)
    if not isinstance(base, DetectionModel):
        raise PruneError(f"dropping a scale needs a DetectionModel, got {type(base).__name__}")
    return base
