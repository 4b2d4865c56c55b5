"""A zoo of small models with the channel couplings that make structured pruning tricky.

Each entry builds a tiny model and says what the dependency graph must find:
  coupled    sets of convs whose OUTPUT channels must be one group (residual adds couple them)
  consumers  {producer conv: convs that must read that group's channels (through concat/upsample/pool)}
  mult       {(producer, consumer): times each channel is read} (SPPF reads its cv1 output 4 times)
  protected  substrings of the names of groups that must be left whole (grouped convs, shuffles, ...)
Most are DetectionModels from yaml dicts (so checkpoints round-trip); the last ones are plain nn.Modules with
layers this tool must refuse to touch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from torch import nn

from prune.apply import removals
from yolo.model import build_model
from yolo.modules import Conv

CFGS = Path(__file__).resolve().parents[1] / "yolo" / "cfgs"
A2 = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]


def cfg(backbone: list, head: list, nc: int = 2, anchors=None, width: float = 1.0, depth: float = 1.0) -> dict:
    return {"nc": nc, "depth_multiple": depth, "width_multiple": width, "anchors": anchors or A2,
            "backbone": backbone, "head": head}  # fmt: skip


def tiny_official(name: str, width: float = 0.125, nc: int = 3) -> dict:
    d = yaml.safe_load((CFGS / f"{name}.yaml").read_text())
    d.update(width_multiple=width, nc=nc)
    return d


def zero_removed_gammas(model: nn.Module, plan) -> None:
    """Zero the BatchNorm scales of the channels `plan` removes, in place: the masked twin a cut must match."""
    for (name, kind), idx in removals(plan).items():
        if kind == "bn":
            model.get_submodule(name).weight.data[torch.as_tensor(idx)] = 0.0


def randomize_bn(model: nn.Module, seed: int = 0, low: float = 0.5) -> nn.Module:
    """Give every BatchNorm distinct, non-trivial statistics (fresh models have gamma=1, beta=0, mean=0, var=1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + low
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
    return model


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class ZooEntry:
    build: Callable[[], nn.Module]
    coupled: list[set[str]] = field(default_factory=list)
    consumers: dict[str, set[str]] = field(default_factory=dict)
    mult: dict[tuple[str, str], int] = field(default_factory=dict)
    protected: list[str] = field(default_factory=list)
    imgsz: int = 64


# ------------------------------------------------------------------------------------------------ yaml models


def residual() -> nn.Module:
    """C3 with two residual bottlenecks: cv1 and both bottleneck outputs are one set of channels."""
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 2, "C3", [16]], [-1, 1, "Conv", [32, 3, 2]]],
                           [[[1, 2], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def concat_branches() -> nn.Module:
    """Two branches from one stem, joined by Concat: each branch's channels land at their own offset."""
    return build_model(cfg(
        [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [8, 3, 1]], [0, 1, "Conv", [24, 1, 1]],
         [[1, 2], 1, "Concat", [1]], [-1, 1, "Conv", [32, 3, 2]]],
        [[[3, 4], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def same_tensor_twice() -> nn.Module:
    """One tensor concatenated with itself, and read by two later layers (one after upsampling)."""
    return build_model(cfg(
        [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [[-1, -1], 1, "Concat", [1]],
         [-1, 1, "Conv", [16, 1, 1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 0], 1, "Concat", [1]],
         [-1, 1, "Conv", [16, 3, 2]]],
        [[[6, 3], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def sppf() -> nn.Module:
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "SPPF", [32, 5]]],
                           [[[0, 2], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def csp() -> nn.Module:
    """BottleneckCSP: plain convs on both paths, one BatchNorm after their concat."""
    return build_model(cfg([[-1, 1, "Focus", [16, 3]], [-1, 1, "Conv", [32, 3, 2]], [-1, 2, "BottleneckCSP", [32]],
                            [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "SPP", [32, [3, 5]]]],
                           [[[2, 4], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def detect_only() -> nn.Module:
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
                           [[[0, 1], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def depthwise() -> nn.Module:
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "DWConv", [16, 3, 1]], [-1, 1, "Conv", [32, 3, 2]]],
                           [[[1, 2], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def grouped() -> nn.Module:
    """A grouped conv (groups=2): pruning its inputs or outputs would break the group structure."""
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 1, None, 2]],
                            [-1, 1, "Conv", [32, 3, 2]]],
                           [[[1, 2], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


def repvgg() -> nn.Module:
    """RepVGG blocks: with an identity BN (stride 1, c1 == c2: input and output channels coupled, like a residual)
    and without (stride 2); the three branches' outputs are always one set of channels."""
    return build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "RepVGG", [16, 3, 1]], [-1, 1, "RepVGG", [32, 3, 2]],
                            [-1, 2, "RepVGG", [32, 3, 1]], [-1, 1, "Conv", [32, 1, 1]]],
                           [[[1, 4], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip


# ------------------------------------------------------------------------------------------------ plain modules


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.g = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNetTiny(nn.Module):
    """ShuffleNet-v2 style unit: channel split, one branch convolved, concat, shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.branch = Conv(8, 8, 1)
        self.shuffle = ChannelShuffle(2)
        self.mid = Conv(16, 32, 3, 2)
        self.tail = Conv(32, 32, 1)
        self.out = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, 1)
        y = self.shuffle(torch.cat((x1, self.branch(x2)), 1))
        return self.out(self.tail(self.mid(y)))


class Scale(nn.Module):
    """Unknown module with its own parameter outside any standard layer."""

    def __init__(self, c: int):
        super().__init__()
        self.s = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        return x * self.s


class UnknownNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.scale = Scale(16)
        self.mid = Conv(16, 32, 3, 2)
        self.tail = Conv(32, 32, 1)
        self.out = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return self.out(self.tail(self.mid(self.scale(self.stem(x)))))


# ------------------------------------------------------------------------------------------------ the zoo

ZOO: dict[str, ZooEntry] = {
    "residual": ZooEntry(
        residual,
        coupled=[{"model.1.cv1.conv", "model.1.m.0.cv2.conv", "model.1.m.1.cv2.conv"}],
        consumers={"model.1.cv1.conv": {"model.1.m.0.cv1.conv", "model.1.m.1.cv1.conv", "model.1.cv3.conv"},
                   "model.1.cv3.conv": {"model.2.conv", "model.3.m.0"}},  # fmt: skip
    ),
    "concat_branches": ZooEntry(
        concat_branches,
        consumers={"model.1.conv": {"model.4.conv", "model.5.m.0"}, "model.2.conv": {"model.4.conv", "model.5.m.0"},
                   "model.0.conv": {"model.1.conv", "model.2.conv"}},  # fmt: skip
    ),
    "same_tensor_twice": ZooEntry(
        same_tensor_twice,
        consumers={"model.1.conv": {"model.3.conv"}, "model.0.conv": {"model.1.conv", "model.6.conv"},
                   "model.3.conv": {"model.6.conv", "model.7.m.1"}},  # fmt: skip
        mult={("model.1.conv", "model.3.conv"): 2},
    ),
    "sppf": ZooEntry(sppf, consumers={"model.2.cv1.conv": {"model.2.cv2.conv"}},
                     mult={("model.2.cv1.conv", "model.2.cv2.conv"): 4}),  # fmt: skip
    "csp_focus_spp": ZooEntry(
        csp,
        consumers={"model.2.cv2": {"model.2.cv4.conv"}, "model.2.cv3": {"model.2.cv4.conv"},
                   "model.4.cv1.conv": {"model.4.cv2.conv"}},  # fmt: skip
        coupled=[{"model.2.cv1.conv", "model.2.m.0.cv2.conv", "model.2.m.1.cv2.conv"}],
        mult={("model.4.cv1.conv", "model.4.cv2.conv"): 3},
    ),
    "detect_head": ZooEntry(detect_only, consumers={"model.1.conv": {"model.2.m.1"}, "model.0.conv": {"model.1.conv",
                                                                                                     "model.2.m.0"}}),
    "depthwise": ZooEntry(depthwise, coupled=[{"model.0.conv", "model.1.conv"}]),
    "grouped": ZooEntry(grouped, protected=["model.0.conv", "model.1.conv"]),
    "repvgg": ZooEntry(
        repvgg,
        coupled=[{"model.0.conv", "model.1.rbr_dense.conv", "model.1.rbr_1x1.conv"},
                 {"model.2.rbr_dense.conv", "model.2.rbr_1x1.conv", "model.3.0.rbr_dense.conv",
                  "model.3.0.rbr_1x1.conv", "model.3.1.rbr_dense.conv", "model.3.1.rbr_1x1.conv"}],
        consumers={"model.0.conv": {"model.1.rbr_dense.conv", "model.1.rbr_1x1.conv", "model.2.rbr_dense.conv",
                                    "model.2.rbr_1x1.conv", "model.5.m.0"}},
    ),  # fmt: skip
    "yolov5n": ZooEntry(
        lambda: build_model(tiny_official("yolov5n")),
        coupled=[{"model.4.cv1.conv", "model.4.m.0.cv2.conv", "model.4.m.1.cv2.conv"}, {"model.13.cv1.conv"}],
        consumers={"model.10.conv": {"model.13.cv1.conv", "model.13.cv2.conv", "model.23.cv1.conv",
                                     "model.23.cv2.conv"},
                   "model.17.cv3.conv": {"model.18.conv", "model.24.m.0"}},  # fmt: skip
        mult={("model.9.cv1.conv", "model.9.cv2.conv"): 4},
        imgsz=128,
    ),
    "yolov5n6": ZooEntry(lambda: build_model(tiny_official("yolov5n6")), imgsz=128,
                         consumers={"model.32.cv3.conv": {"model.33.m.3"}}),  # fmt: skip
    "yolov5n_v5_focus": ZooEntry(lambda: build_model(tiny_official("yolov5n-v5")), imgsz=128,
                                 mult={("model.8.cv1.conv", "model.8.cv2.conv"): 4}),  # fmt: skip
    "shufflenet": ZooEntry(ShuffleNetTiny, protected=["stem.conv", "branch.conv", "out"],
                           consumers={"mid.conv": {"tail.conv"}, "tail.conv": {"out"}}),  # fmt: skip
    "unknown_module": ZooEntry(UnknownNet, protected=["stem.conv", "out"],
                               consumers={"mid.conv": {"tail.conv"}, "tail.conv": {"out"}}),  # fmt: skip
}
