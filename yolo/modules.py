"""YOLOv5 building blocks with the official attribute names, so official state dicts load as they are."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def autopad(k: int | list[int], p: int | None = None, d: int = 1) -> int | list[int]:
    """'same' padding for odd kernels, as YOLOv5 computes it."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def resolve_act(act: bool | nn.Module, default: type[nn.Module]) -> nn.Module:
    """YOLOv5's `act` argument: True = the class default, a module = itself, anything else = none."""
    if act is True:
        return default()
    return act if isinstance(act, nn.Module) else nn.Identity()


class Conv(nn.Module):
    """Conv2d + BatchNorm2d + activation: the unit that pruning slices."""

    default_act: type[nn.Module] = nn.SiLU

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g: int = 1, d: int = 1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = resolve_act(act, self.default_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DWConv(Conv):
    """Depth-wise convolution (groups = gcd(c1, c2))."""

    def __init__(self, c1: int, c2: int, k=1, s=1, d: int = 1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Focus(nn.Module):
    """Space-to-depth (pixel unshuffle by 2) then a Conv: the v5.0-era stem."""

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g: int = 1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(
            torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        )


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv with an optional residual add (only when shapes allow)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """Cross Stage Partial bottleneck of YOLOv5 v1-v3 (plain convs on the bypass, one BN after the concat)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP bottleneck with three Convs (YOLOv5 v4.0+)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (v5.0 era)."""

    def __init__(self, c1: int, c2: int, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """SPP-Fast: three chained 5x5 max-pools, same output as SPP(5, 9, 13)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """YOLOv5 detection head: one 1x1 conv per level; decodes boxes in eval mode.

    `anchors` is kept in grid units (pixels / stride), as the official Model stores it after building.
    """

    stride: torch.Tensor | None = None
    export = False  # when True, eval forward returns only the decoded tensor (ONNX convention)

    def __init__(self, nc: int = 80, anchors=(), ch=(), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.grid: list[torch.Tensor] = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid: list[torch.Tensor] = [torch.empty(0) for _ in range(self.nl)]

    def forward(self, x: list[torch.Tensor]):
        if self.export and not self.training:
            return self._forward_export(list(x))
        z = []
        x = list(x)
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(self._decode(i, x[i].sigmoid()))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _decode(self, i: int, y: torch.Tensor) -> torch.Tensor:
        """Level i's probabilities (bs, na, ny, nx, no), i.e. after the sigmoid, to boxes in input pixels."""
        bs, _, ny, nx, _ = y.shape
        if self.export or self.grid[i].shape[2:4] != y.shape[2:4] or self.grid[i].device != y.device:
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
        xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 - 0.5 + self.grid[i]) * self.stride[i]
        wh = (wh * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no)

    def _forward_export(self, x: list[torch.Tensor]) -> torch.Tensor:
        """The same decoded (bs, anchors, no) tensor, laid out so ONNX Runtime moves the big tensor as little as
        possible: the fixed cost of this tail is paid by a pruned model in full, so it caps the speed-up.

        Each level's conv is run as two convs with their output channels reordered attribute-major ((k, anchor)
        instead of (anchor, k)): one for the 4 box values, one for objectness + classes. Viewed as
        (bs, k, anchor * ny * nx), both are already in the output's anchor order, so the box decode works on the
        small box tensor alone (no split of the big one), the levels and parts join with plain block copies and
        a single transpose makes the (bs, anchors, no) rows. The sigmoid follows each conv directly, which ONNX
        Runtime fuses into the conv kernel. (Writing box columns back in place exports as ScatterND, which ONNX
        Runtime runs far slower.)
        """
        boxes, scores = [], []
        for i in range(self.nl):
            bs, _, ny, nx = x[i].shape
            box = self._export_conv(i, x[i], slice(0, 4)).view(bs, 4, self.na, ny, nx)
            offset, scale = self._export_grid(i, nx, ny, box)
            xy = box[:, :2] * (2 * float(self.stride[i])) + offset
            wh = box[:, 2:].square() * scale
            boxes.append(torch.cat((xy, wh), 1).view(bs, 4, -1))
            scores.append(self._export_conv(i, x[i], slice(4, self.no)).view(bs, self.nc + 1, -1))
        return torch.cat((torch.cat(boxes, 2), torch.cat(scores, 2)), 1).transpose(1, 2)

    def _export_conv(self, i: int, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """sigmoid(level i's conv) for output attributes `rows` only, channels ordered (attribute, anchor)."""
        conv = self.m[i]
        w = conv.weight.view(self.na, self.no, *conv.weight.shape[1:]).transpose(0, 1)[rows]  # (k, na, c, kh, kw)
        b = conv.bias.view(self.na, self.no).t()[rows]
        y = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b.reshape(-1), conv.stride, conv.padding, conv.dilation,
                     conv.groups)
        return y.sigmoid()

    def _export_grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Level i's decode constants in the export layout: the xy offset (grid - 0.5) * stride, shape
        (1, 2, 1, ny, nx), and the wh scale 4 * anchor in pixels, shape (1, 2, na, 1, 1)."""
        d, t, stride = like.device, like.dtype, float(self.stride[i])
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        offset = (torch.stack((xv, yv)) - 0.5).mul(stride).view(1, 2, 1, ny, nx)
        scale = (self.anchors[i].to(d, t) * (4 * stride)).t().reshape(1, 2, self.na, 1, 1)
        return offset, scale

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape)
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold a BatchNorm into the preceding convolution (exact in eval mode)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data.copy_(conv.weight.detach() * scale.detach().view(-1, 1, 1, 1))
    b_conv = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data.copy_((b_conv - bn.running_mean) * scale.detach() + bn.bias.detach())
    return fused.requires_grad_(False)


def bn_gammas(model: nn.Module, bns: Iterable[nn.BatchNorm2d] | None = None) -> torch.Tensor:
    """Every BatchNorm weight of the model (or of `bns`) as one flat CPU float tensor."""
    mods = list(bns) if bns is not None else [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    ws = [m.weight.detach().float().flatten().cpu() for m in mods if m.weight is not None]
    return torch.cat(ws) if ws else torch.zeros(0)
