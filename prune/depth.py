"""Depth pruning: remove whole residual Bottlenecks from the CSP layers (C3, BottleneckCSP) of a detector.

A residual block computes x + f(x); removed, it is the identity, so the model around it stays valid and only loses
what f added. Which blocks go is decided by a measurement, not a rule: `block_importance` skips each block in turn
(a forward hook returns the block's input) and records the relative change of the model's raw Detect outputs on
calibration images, sum ||y_skip - y||^2 / sum ||y||^2. One number per block on one global scale, so blocks of
different layers compare; the cheapest go first (one-shot, not re-measured after each removal).

Blocks without a shortcut (the head's C3 rows are written `False`, and a block whose input and output widths
differ) are not removable: dropping them changes what the layer computes, not just how much.

The new block counts go into the model yaml's `repeats` key ({layer: blocks}), which `yolo.model.parse_model`
honours, so the checkpoint's `arch` rebuilds the model and channel pruning, fine-tuning and export see an ordinary
model. `remove_blocks` and `block_importance` are separate so a latency search can take depth moves itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prune.apply import image_batches
from prune.config import PruneError
from prune.graph import raw_head
from prune.structure_table import StructureTable
from yolo.model import DetectionModel, de_parallel
from yolo.modules import C3, Bottleneck, BottleneckCSP

NOT_RESIDUAL = "no shortcut: not removable"
Block = tuple[int, int]  # (yaml layer index, block index inside the layer's `m`)


@dataclass
class BlockRow:
    """One Bottleneck of a CSP layer and what depth pruning made of it."""

    layer: int
    block: int
    name: str  # module name, e.g. model.4.m.1
    type: str  # yaml module type of the layer (C3, BottleneckCSP)
    residual: bool
    importance: float = math.nan  # relative change of the raw outputs when the block is skipped
    removed: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        imp = None if math.isnan(self.importance) else float(f"{self.importance:.6g}")
        return {"layer": self.layer, "block": self.block, "name": self.name, "type": self.type,
                "residual": self.residual, "importance": imp, "removed": self.removed, "note": self.note}  # fmt: skip


def csp_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(layer index, module) of every layer that holds a Sequential of Bottlenecks."""
    base = _detection_model(model)
    return [(i, m) for i, m in enumerate(base.model) if isinstance(m, (C3, BottleneckCSP))]


def residual_blocks(model: nn.Module) -> list[BlockRow]:
    """Every Bottleneck inside a CSP layer, residual (removable) or not, in model order."""
    rows = []
    for i, layer in csp_layers(model):
        ltype = str(getattr(layer, "type", type(layer).__name__))
        for j, b in enumerate(layer.m):
            res = isinstance(b, Bottleneck) and bool(b.add)
            rows.append(BlockRow(i, j, f"model.{i}.m.{j}", ltype, res, note="" if res else NOT_RESIDUAL))
    return rows


def block_importance(
    model: nn.Module, images, blocks: Sequence[Block] | None = None, n_images: int = 64
) -> dict[Block, float]:
    """Relative change of the raw Detect outputs when each block is skipped, over calibration images.

    `images`: a float tensor (N, 3, H, W) in [0, 1], a list of such batches, or a YOLO dataloader (uint8 images).
    `blocks`: which (layer, block) to measure (default: every residual block). The model is not changed."""
    base = _detection_model(model)
    todo = list(blocks) if blocks is not None else [(r.layer, r.block) for r in residual_blocks(base) if r.residual]
    _check_blocks(base, todo)
    num = dict.fromkeys(todo, 0.0)
    den = 0.0
    was_training = base.training
    base.eval()
    p = next(base.parameters())
    try:
        with torch.no_grad(), raw_head(base):
            for x in _batches(images, n_images, p):
                ref = base(x)
                den += sum(float(r.double().square().sum()) for r in ref)
                for blk in todo:
                    out = _skipping(base, blk, x)
                    num[blk] += sum(float((o.double() - r.double()).square().sum()) for o, r in zip(out, ref))
    finally:
        base.train(was_training)
    if den == 0:
        raise PruneError("block importance needs at least one calibration image")
    return {b: num[b] / den for b in todo}


def output_change(model: nn.Module, other: nn.Module, images, n_images: int = 64) -> float:
    """Relative change of the raw Detect outputs from `model` to `other` (same output shapes, e.g. a cut of it),
    sum ||y_other - y||^2 / sum ||y||^2 over calibration images: block_importance's unit, for a whole cut."""
    base, cut = _detection_model(model), _detection_model(other)
    num = den = 0.0
    modes = base.training, cut.training
    base.eval()
    cut.eval()
    p = next(base.parameters())
    try:
        with torch.no_grad(), raw_head(base), raw_head(cut):
            for x in _batches(images, n_images, p):
                ref, out = base(x), cut(x)
                den += sum(float(r.double().square().sum()) for r in ref)
                num += sum(float((o.double() - r.double()).square().sum()) for o, r in zip(out, ref))
    finally:
        base.train(modes[0])
        cut.train(modes[1])
    if den == 0:
        raise PruneError("the output change needs at least one calibration image")
    return num / den


def _skipping(model: DetectionModel, blk: Block, x: torch.Tensor):
    """The model's outputs with one block replaced by the identity (a forward hook returns its input)."""
    h = model.model[blk[0]].m[blk[1]].register_forward_hook(lambda _m, args, _out: args[0])
    try:
        return model(x)
    finally:
        h.remove()


def _batches(images, n_images: int, p: torch.Tensor) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = [images]
    if isinstance(images, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in images):
        images = [(t,) for t in images]
    yield from image_batches(images, n_images, p)


def remove_blocks(model: nn.Module, blocks: Iterable[Block]) -> DetectionModel:
    """A copy of `model` without the given residual blocks (the input is untouched); its yaml's `repeats` records
    the new block counts so a checkpoint of it rebuilds. Mode and requires_grad are kept."""
    base = _detection_model(model)
    blocks = sorted(set(blocks))
    _check_blocks(base, blocks)
    work = copy.deepcopy(base)
    repeats = {str(k): int(v) for k, v in (work.yaml.get("repeats") or {}).items()}
    for i in sorted({b[0] for b in blocks}):
        layer = work.model[i]
        gone = {j for li, j in blocks if li == i}
        layer.m = nn.Sequential(*(b for j, b in enumerate(layer.m) if j not in gone))
        repeats[str(i)] = len(layer.m)
        layer.np = sum(t.numel() for t in layer.parameters())
    work.yaml["repeats"] = dict(sorted(repeats.items(), key=lambda kv: int(kv[0])))
    return work


def _check_blocks(model: DetectionModel, blocks: Iterable[Block]) -> None:
    rows = {(r.layer, r.block): r for r in residual_blocks(model)}
    for blk in blocks:
        r = rows.get(tuple(blk))
        if r is None:
            raise PruneError(f"block {tuple(blk)} does not exist: (layer, block) of a C3/BottleneckCSP Bottleneck")
        if not r.residual:
            raise PruneError(f"block {r.name} has no shortcut and cannot be removed (only residual blocks can)")


def _detection_model(model: nn.Module) -> DetectionModel:
    base = de_parallel(model)
    if not isinstance(base, DetectionModel):
        raise PruneError(f"depth pruning needs a DetectionModel, got {type(base).__name__}")
    return base


@dataclass
class DepthTable(StructureTable):
    """Every CSP block with its importance and whether it was removed."""

    rows: list[BlockRow] = field(default_factory=list)
    op: ClassVar[str] = "depth"
    title: ClassVar[str] = "Depth pruning (importance: relative change of the raw outputs when the block is skipped)"
    stem: ClassVar[str] = "depth_table"
    columns: ClassVar[tuple[str, ...]] = ("layer", "block", "name", "type", "residual", "importance", "removed",
                                          "note")

    def to_rows(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    @property
    def removed(self) -> list[BlockRow]:
        return [r for r in self.rows if r.removed]

    def details(self) -> dict:
        return {"removed": [[r.layer, r.block, r.importance] for r in self.removed],
                "blocks_before": len(self.rows), "blocks_after": len(self.rows) - len(self.removed),
                "residual_blocks": sum(r.residual for r in self.rows)}  # fmt: skip


def depth_prune(
    model: nn.Module, n_remove: int, images, imgsz: int = 640, n_images: int = 64, flag: str = "depth"
) -> tuple[DetectionModel, DepthTable]:
    """Remove the `n_remove` residual blocks whose skipping changes the outputs least; returns (copy, table)."""
    base = _detection_model(model)
    rows = residual_blocks(base)
    removable = [r for r in rows if r.residual]
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or n_remove < 1:
        raise PruneError(f"{flag} {n_remove!r}: expected a positive number of residual blocks to remove")
    if not removable:
        raise PruneError(f"{flag} {n_remove}: the model has no removable residual blocks (C3 / BottleneckCSP "
                         "Bottlenecks with a shortcut)")  # fmt: skip
    if n_remove > len(removable):
        raise PruneError(f"{flag} {n_remove}: the model has only {len(removable)} removable residual blocks")
    if images is None:
        raise PruneError(f"{flag} measures block importance on calibration images: give --data / images")
    scores = block_importance(base, images, [(r.layer, r.block) for r in removable], n_images=n_images)
    for r in removable:
        r.importance = scores[(r.layer, r.block)]
    chosen = sorted(removable, key=lambda r: (r.importance, r.layer, r.block))[:n_remove]
    for r in chosen:
        r.removed = True
    pruned = remove_blocks(base, [(r.layer, r.block) for r in chosen])
    table = DepthTable(request=f"{flag} {n_remove}", imgsz=imgsz, rows=rows,
                       **StructureTable.sizes(base, pruned, imgsz))  # fmt: skip
    return pruned, table

