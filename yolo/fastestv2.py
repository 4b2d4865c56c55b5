"""YOLO-FastestV2 building blocks (dog-qiuqiu/Yolo-FastestV2), written for this project's yaml registry.

Three pieces differ from the YOLOv5 / YOLOv5-Lite modules, and each difference is what the authors' trained
weights were fitted to, so they are reproduced as they are:

- `ShuffleV2Block` is the Megvii ShuffleNetV2 unit the authors use: a stride-1 block *first* shuffles its input
  (even channels pass through, odd channels enter the branch) and then concatenates plainly, where
  `yolo.shufflenet.ShuffleBlock` splits into halves and interleaves after the concat. The two orders are
  different permutations of the same channels, so the authors' weights only fit this one.
- `DWConvBlock` is the LightFPN branch: 5x5 depthwise + BN + ReLU, 1x1 + BN, 5x5 depthwise + BN + ReLU, 1x1 + BN
  (no activation after either 1x1).
- `FastestDetect` has three 1x1 output convolutions SHARED by both levels (reg 4 x na, obj na, cls nc) and one
  softmax class vector per cell. It follows this project's `Detect` conventions so NMS, val, export and the
  prune graph consume it unchanged: training mode returns per-level raw maps (bs, na, ny, nx, 5 + nc) with the
  cell's class logits repeated for each anchor; eval mode returns (decoded, maps) with the decoded rows
  cx, cy, w, h (input pixels), obj, class probabilities (softmax, the same vector for the cell's anchors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolo.modules import Detect
from yolo.shufflenet import fuse_sequential_bn


def _dw(c: int, k: int, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)


def _pw(c1: int, c2: int) -> nn.Conv2d:
    return nn.Conv2d(c1, c2, 1, 1, 0, bias=False)


def split_even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Megvii ShuffleNetV2 shuffle-and-split: (even channels, odd channels).

    The authors write it as view(b, c/2, 2, h, w) + index; strided slices give the same tensors and keep the
    channel axis visible to the prune graph (torch-pruning's index mapping through that 5-D view multiplies the
    tracked channel indices at every block and never finishes on a chain of 15 blocks)."""
    return x[:, 0::2], x[:, 1::2]


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit in the authors' (Megvii) channel order; state-dict keys `branch_main.*` / `branch_proj.*`.

    stride 1 (c1 == c2): even channels pass, odd channels go through branch_main (1x1-BN-ReLU, 3x3 dw-BN,
    1x1-BN-ReLU); output = cat(passed, branch). stride 2: cat(branch_proj(x), branch_main(x)), where branch_proj
    is 3x3 dw stride 2-BN, 1x1-BN-ReLU keeping c1 channels and branch_main makes c2 - c1.
    """

    def __init__(self, c1: int, c2: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, got {stride}")
        if stride == 1 and (c1 != c2 or c1 % 2):
            raise ValueError(f"a stride-1 ShuffleV2Block keeps an even width: got {c1} -> {c2} channels")
        if stride == 2 and c2 <= c1:
            raise ValueError(f"a stride-2 ShuffleV2Block widens: output {c2} must exceed input {c1} channels")
        self.stride = stride
        inp = c1 // 2 if stride == 1 else c1
        mid, out = c2 // 2, c2 - inp
        self.branch_main = nn.Sequential(
            _pw(inp, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            _dw(mid, 3, stride), nn.BatchNorm2d(mid),
            _pw(mid, out), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
        )  # fmt: skip
        if stride == 2:
            self.branch_proj = nn.Sequential(
                _dw(c1, 3, stride), nn.BatchNorm2d(c1), _pw(c1, c1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            passed, x = split_even_odd(x)
            return torch.cat((passed, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)

    def fuse(self) -> None:
        """Fold every BatchNorm into the conv before it for inference/export."""
        for name in ("branch_proj", "branch_main"):
            seq = getattr(self, name, None)
            if isinstance(seq, nn.Sequential):
                fuse_sequential_bn(seq)


class DWConvBlock(nn.Module):
    """LightFPN branch (`block.0..9` as in the authors' file): dw k-BN-ReLU, 1x1-BN, dw k-BN-ReLU, 1x1-BN."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        if c1 != c2:
            raise ValueError(f"DWConvBlock keeps its width: input {c1} != output {c2} channels")
        self.block = nn.Sequential(
            _dw(c2, k), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            _pw(c2, c2), nn.BatchNorm2d(c2),
            _dw(c2, k), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            _pw(c2, c2), nn.BatchNorm2d(c2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def fuse(self) -> None:
        fuse_sequential_bn(self.block)


class FastestDetect(Detect):
    """YOLO-FastestV2 head: inputs (cls/obj feature, reg feature) per level; `m` = [reg, obj, cls] 1x1 convs
    shared by every level. `anchors` in grid units after the model is built, as for `Detect`."""

    def __init__(self, nc: int = 80, anchors=(), ch=(), inplace: bool = True):
        nn.Module.__init__(self)
        if len(ch) != 2 * len(anchors) or len(set(ch)) != 1:
            raise ValueError(f"FastestDetect reads a (cls, reg) pair of equal-width maps per level, got {list(ch)}")
        self.nc, self.no, self.nl = nc, nc + 5, len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        c = ch[0]
        self.m = nn.ModuleList((nn.Conv2d(c, 4 * self.na, 1), nn.Conv2d(c, self.na, 1), nn.Conv2d(c, nc, 1)))
        self.inplace = inplace
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]

    def raw_maps(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """The authors' six outputs: reg, obj, cls of the stride-16 level, then of the stride-32 level."""
        reg, obj, cls = self.m
        out = []
        for i in range(self.nl):
            f_cls, f_reg = x[2 * i], x[2 * i + 1]
            out += [reg(f_reg), obj(f_cls), cls(f_cls)]
        return out

    def forward(self, x: list[torch.Tensor]):
        return self.from_raw(self.raw_maps(list(x)))

    def from_raw(self, raw: list[torch.Tensor]):
        """The head's output (training maps, eval (decoded, maps) or the export tensor) from the six raw maps."""
        maps, z = [], []
        for i in range(self.nl):
            reg, obj, cls = raw[3 * i : 3 * i + 3]
            bs, _, ny, nx = reg.shape
            reg = reg.view(bs, self.na, 4, ny, nx)
            obj = obj.view(bs, self.na, 1, ny, nx)
            cls = cls.view(bs, 1, self.nc, ny, nx)
            if self.training or not self.export:
                y = torch.cat((reg, obj, cls.expand(bs, self.na, self.nc, ny, nx)), 2)
                maps.append(y.permute(0, 1, 3, 4, 2).contiguous())
            if not self.training:
                z.append(self._decode_parts(i, reg, obj, cls))
        if self.training:
            return maps
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), maps)

    def _decode_parts(self, i: int, reg: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Level i to (bs, na * ny * nx, 5 + nc) rows in anchor-major order, as `Detect` lays them out."""
        bs, na, _, ny, nx = reg.shape
        offset, scale = self._export_grid(i, nx, ny, reg)  # (1, 2, 1, ny, nx) and (1, 2, na, 1, 1)
        box = reg.sigmoid().transpose(1, 2)  # (bs, 4, na, ny, nx)
        xy = box[:, :2] * (2 * float(self.stride[i])) + offset
        wh = box[:, 2:].square() * scale
        prob = F.softmax(cls, dim=2).expand(bs, na, self.nc, ny, nx).transpose(1, 2)
        rows = torch.cat((xy, wh, obj.sigmoid().transpose(1, 2), prob), 1)  # (bs, 5 + nc, na, ny, nx)
        return rows.reshape(bs, self.no, -1).transpose(1, 2)

    def init_biases(self) -> None:
        """Prior objectness (about 8 objects per 640 image, at the coarsest level) and uniform class logits."""
        obj = self.m[1]
        s = float(self.stride[-1])
        with torch.no_grad():
            obj.bias.fill_(float(torch.log(torch.tensor(8 / (640 / s) ** 2))))
            self.m[2].bias.zero_()
