"""ShuffleNetV2 building blocks for YOLOv5-Lite style detectors and YOLOv5 models with a ShuffleNetV2 backbone.

Attribute layout follows YOLOv5-Lite (`conv_bn_relu_maxpool`, `Shuffle_Block`) and torchvision's ShuffleNetV2
`InvertedResidual`: plain nn.Sequential `branch1` / `branch2` of Conv2d / BatchNorm2d / ReLU, so their state-dict
keys ('branch2.0.weight', 'branch2.3.weight' for the depthwise conv, ...) are recognisable and load as they are.

Pruning note: the channel split (torch.chunk) and the channel shuffle (stack + flatten) tie the block's
input and output channels together across the two halves; prune.graph protects every group touching them. The
channels *inside* branch2 (first 1x1 conv -> depthwise conv -> last 1x1 conv's input) never cross the split or
the shuffle, so they form an ordinary prunable group.
"""

from __future__ import annotations

import torch
from torch import nn

from yolo.modules import fuse_conv_and_bn


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of `groups` equal parts (ShuffleNet): [a0 a1 .. b0 b1 ..] -> [a0 b0 a1 b1 ..]."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """channel_shuffle(torch.cat((a, b), 1), 2) in one step: interleave a's and b's channels.

    Written as stack + flatten (no concat, no transpose): the same numbers and a shorter ONNX graph, and
    torch-pruning's shape inference, which fails on concat -> view -> transpose -> reshape chains that follow
    a channel split, traces it (prune.graph still protects these channels: stack is not an element-wise op
    it trusts, and the flatten is a reshape).
    """
    return torch.stack((a, b), dim=2).flatten(1, 2)


def _depthwise(c: int, k: int = 3, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)


def _pointwise(c1: int, c2: int) -> nn.Conv2d:
    return nn.Conv2d(c1, c2, 1, 1, 0, bias=False)


def fuse_sequential_bn(seq: nn.Sequential) -> None:
    """Fold every Conv2d -> BatchNorm2d pair of a Sequential into one biased Conv2d (the BN becomes Identity).

    Indices are kept (BN slots turn into nn.Identity) so the remaining layers keep their state-dict names.
    """
    for i in range(len(seq) - 1):
        conv, bn = seq[i], seq[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq[i] = fuse_conv_and_bn(conv, bn)
            seq[i + 1] = nn.Identity()


class ConvBNReLUMaxPool(nn.Module):
    """YOLOv5-Lite stem (replaces Focus): 3x3 stride-2 conv + BN + ReLU, then a 3x3 stride-2 max-pool (P2/4)."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv(x))

    def fuse(self) -> None:
        """Fold the BatchNorm into the conv for inference/export."""
        fuse_sequential_bn(self.conv)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit (YOLOv5-Lite `Shuffle_Block`, torchvision `InvertedResidual`), also the block that
    replaces YOLOv5's strided Conv + C3 stages in ShuffleNetV2-YOLOv5 backbones.

    stride 1: split the input in two halves; branch2 (1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU)
    transforms the second half; concat with the untouched first half; shuffle (groups 2). Needs c1 == c2.
    stride > 1: branch1 (3x3 depthwise stride-s conv-BN, 1x1 conv-BN-ReLU) and branch2 (with a stride-s depthwise
    conv) both read the whole input; concat; shuffle. c2 must be even (each branch makes c2 / 2 channels).
    """

    def __init__(self, c1: int, c2: int, stride: int = 1):
        super().__init__()
        if stride not in (1, 2, 3):
            raise ValueError(f"ShuffleBlock stride must be 1, 2 or 3, got {stride}")
        if c2 % 2:
            raise ValueError(f"ShuffleBlock output channels must be even (split in two halves), got {c2}")
        if stride == 1 and c1 != c2:
            raise ValueError(f"a stride-1 ShuffleBlock keeps its width: input {c1} != output {c2} channels")
        self.stride = stride
        c_ = c2 // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(c1, 3, stride), nn.BatchNorm2d(c1),
                _pointwise(c1, c_), nn.BatchNorm2d(c_), nn.ReLU(inplace=True),
            )  # fmt: skip
        self.branch2 = nn.Sequential(
            _pointwise(c1 if stride > 1 else c_, c_), nn.BatchNorm2d(c_), nn.ReLU(inplace=True),
            _depthwise(c_, 3, stride), nn.BatchNorm2d(c_),
            _pointwise(c_, c_), nn.BatchNorm2d(c_), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return concat_shuffle(x1, self.branch2(x2))
        return concat_shuffle(self.branch1(x), self.branch2(x))

    def fuse(self) -> None:
        """Fold every BatchNorm into the conv before it for inference/export."""
        for name in ("branch1", "branch2"):
            seq = getattr(self, name, None)
            if isinstance(seq, nn.Sequential):
                fuse_sequential_bn(seq)
