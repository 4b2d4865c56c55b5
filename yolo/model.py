"""YOLOv5 model built from the official yaml format through an explicit registry (no eval())."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from yolo.fastestv2 import DWConvBlock, FastestDetect, ShuffleV2Block
from yolo.fileio import yaml_error_text
from yolo.modules import (
    C3,
    SPP,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    Concat,
    Conv,
    Detect,
    DWConv,
    Focus,
    fuse_conv_and_bn,
)
from yolo.repvgg import RepVGG
from yolo.shufflenet import ConvBNReLUMaxPool, ShuffleBlock

CFG_DIR = Path(__file__).resolve().parent / "cfgs"


class ModelConfigError(ValueError):
    """A model yaml that cannot be built; the message names the file and the row."""


@dataclass(frozen=True)
class ModuleSpec:
    """How a yaml row's args become constructor args.

    kind: 'conv' (args[0] is c2, scaled by width), 'csp' (like conv, repeats passed as n),
    'concat', 'detect', 'same' (output channels = input channels), 'custom' (resolve(ch, f, args, ctx)).
    """

    cls: type[nn.Module]
    kind: str
    resolve: Callable[..., tuple[list, int]] | None = None


MODULES: dict[str, ModuleSpec] = {}


def register_module(name: str, cls: type[nn.Module], kind: str, resolve: Callable | None = None) -> None:
    """Add a yaml module name to the registry; a name may be registered once."""
    if name in MODULES:
        raise KeyError(f"module {name!r} is already registered")
    MODULES[name] = ModuleSpec(cls, kind, resolve)


for _name, _cls in (("Conv", Conv), ("DWConv", DWConv), ("Focus", Focus), ("Bottleneck", Bottleneck)):
    register_module(_name, _cls, "conv")
register_module("SPP", SPP, "conv")
register_module("SPPF", SPPF, "conv")
register_module("BottleneckCSP", BottleneckCSP, "csp")
register_module("C3", C3, "csp")
register_module("Concat", Concat, "concat")
register_module("Detect", Detect, "detect")
for _alias in ("nn.Upsample", "Upsample", "torch.nn.Upsample"):
    register_module(_alias, nn.Upsample, "same")
register_module("nn.MaxPool2d", nn.MaxPool2d, "same")
register_module("nn.Identity", nn.Identity, "same")
# RepVGG: same args as Conv ([c2, 3, s]); reparameterize() turns each block and its yaml row into a Conv.
register_module("RepVGG", RepVGG, "conv")
# ShuffleNetV2 / YOLOv5-Lite: args [c2] and [c2, stride], c2 width-scaled like Conv (multiples of 8, so even);
# the snake-case names are YOLOv5-Lite's own, so its yaml files build as they are.
for _alias in ("ConvBNReLUMaxPool", "conv_bn_relu_maxpool"):
    register_module(_alias, ConvBNReLUMaxPool, "conv")
for _alias in ("ShuffleBlock", "Shuffle_Block"):
    register_module(_alias, ShuffleBlock, "conv")
# YOLO-FastestV2: the authors' ShuffleNetV2 unit ([c2, stride]), the LightFPN branch ([c2, k]) and the head whose
# three output convs are shared by both levels (from: a (cls, reg) pair of maps per level).
register_module("ShuffleV2Block", ShuffleV2Block, "conv")
register_module("DWConvBlock", DWConvBlock, "conv")
register_module("FastestDetect", FastestDetect, "detect")


def get_module_spec(name: str, where: str = "") -> ModuleSpec:
    """Look a yaml module name up; unknown names fail listing the known ones."""
    try:
        return MODULES[name]
    except KeyError:
        known = ", ".join(sorted(MODULES))
        raise ModelConfigError(f"{where}unknown module {name!r}; known modules: {known}") from None


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


_ACTIVATIONS: dict[str, Callable[[float | None], nn.Module]] = {
    "SiLU": lambda a: nn.SiLU(),
    "ReLU": lambda a: nn.ReLU(),
    "ReLU6": lambda a: nn.ReLU6(),
    "Hardswish": lambda a: nn.Hardswish(),
    "LeakyReLU": lambda a: nn.LeakyReLU(0.01 if a is None else a),
    "Identity": lambda a: nn.Identity(),
}


def parse_activation(text: str) -> Callable[[], nn.Module]:
    """Turn the yaml `activation` string (e.g. 'nn.LeakyReLU(0.1)') into a factory, without eval()."""
    m = re.fullmatch(r"\s*(?:torch\.)?(?:nn\.)?(\w+)\(\s*([0-9.eE+-]*)\s*(?:,\s*\w+\s*=\s*\w+\s*)?\)\s*", text)
    if not m or m.group(1) not in _ACTIVATIONS:
        raise ModelConfigError(
            f"activation {text!r} not understood; use one of nn.{'(), nn.'.join(_ACTIVATIONS)}()"
        )
    arg = float(m.group(2)) if m.group(2) else None
    return lambda: _ACTIVATIONS[m.group(1)](arg)


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """Read a model yaml (a path, a packaged name like 'yolov5n', or a dict) and check its keys."""
    if isinstance(cfg, dict):
        d, where = copy.deepcopy(cfg), "model config"
    else:
        path = resolve_cfg_path(cfg)
        where = str(path)
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ModelConfigError(yaml_error_text(path, e)) from None
        if not isinstance(d, dict):
            raise ModelConfigError(f"{path}: expected a mapping with backbone/head, got {type(d).__name__}")
        d.setdefault("yaml_file", path.name)
    for key in ("backbone", "head"):
        if not isinstance(d.get(key), list):
            raise ModelConfigError(f"{where}: missing list '{key}' of [from, number, module, args] rows")
    for key in ("nc", "anchors"):
        if key not in d:
            raise ModelConfigError(f"{where}: missing key '{key}'")
    return d


def resolve_cfg_path(cfg: str | Path) -> Path:
    """A yaml path, or the name of a packaged config ('yolov5n' / 'yolov5n.yaml')."""
    p = Path(cfg)
    if p.is_file():
        return p
    packaged = CFG_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(x.stem for x in CFG_DIR.glob("*.yaml")))
    raise ModelConfigError(f"model config {cfg!s} not found (a yaml path, or one of: {names})")


def _literal(a: Any, nc: int, anchors: Any) -> Any:
    """The few names official yaml args may hold; any other string stays a string."""
    if isinstance(a, str):
        table = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
        return table.get(a, a)
    return a


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layers described by a model yaml dict."""
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    ch = list(ch)
    layers, save, c2 = [], [], ch[-1]
    rows = d["backbone"] + d["head"]
    src = d.get("yaml_file", "model config")
    repeats = block_counts(d, len(rows))
    for i, row in enumerate(rows):
        where = f"{src}: layer {i} {row!r}: "
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise ModelConfigError(f"{where}expected [from, number, module, args]")
        f, n, name, args = row
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not isinstance(args, (list, tuple, type(None))):
            raise ModelConfigError(f"{where}number must be a positive integer and args a list")
        spec = get_module_spec(str(name), where)
        args = [_literal(a, nc, anchors) for a in (args or [])]
        n_ = max(round(n * gd), 1) if n > 1 else n
        if i in repeats:
            if spec.kind != "csp":
                raise ModelConfigError(f"{where}'repeats' sets a block count, but {name} has no removable blocks")
            n_ = repeats[i]
        try:
            args, c2 = _resolve_args(spec, args, f, ch, n_, gw, no, ctx={"nc": nc, "gd": gd, "gw": gw})
            if spec.kind == "csp":
                n_ = 1
            m_ = nn.Sequential(*(spec.cls(*args) for _ in range(n_))) if n_ > 1 else spec.cls(*args)
        except (TypeError, ValueError, IndexError) as e:
            raise ModelConfigError(f"{where}{e}") from None
        m_.i, m_.f, m_.type = i, f, str(name)
        m_.np = sum(x.numel() for x in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def block_counts(d: dict, n_rows: int) -> dict[int, int]:
    """The yaml's `repeats` key: {layer: blocks} that replace a CSP row's `number` x depth_multiple exactly.

    Depth pruning writes it (a layer may keep 0 blocks), so the checkpoint's yaml rebuilds the model it left; keys
    are strings once stored (checkpoint metadata is str-keyed), ints when a caller builds the dict."""
    raw = d.get("repeats") or {}
    if not isinstance(raw, dict):
        raise ModelConfigError(f"'repeats' must map layer index -> block count, got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        if not (str(k).isdigit() and int(k) < n_rows and isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ModelConfigError(f"'repeats' entry {k!r}: {v!r} is not a layer index -> a block count >= 0")
        out[int(k)] = v
    return out


def _resolve_args(spec: ModuleSpec, args: list, f, ch: list[int], n: int, gw: float, no: int, ctx: dict):
    if spec.kind in ("conv", "csp"):
        c1, c2 = ch[f], args[0]
        if c2 != no:
            c2 = make_divisible(c2 * gw, 8)
        args = [c1, c2, *args[1:]]
        if spec.kind == "csp":
            args.insert(2, n)
        return args, c2
    if spec.kind == "concat":
        return args, sum(ch[x] for x in f)
    if spec.kind == "detect":
        args = list(args)
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):
            args[1] = [list(range(args[1] * 2))] * len(f)
        return args, ch[f[-1]] if isinstance(f, list) else ch[f]
    if spec.kind == "same":
        return args, ch[f]
    if spec.kind == "custom" and spec.resolve is not None:
        return spec.resolve(args, f, ch, n, gw, no, ctx)
    raise ValueError(f"registry kind {spec.kind!r} has no argument rule")


class DetectionModel(nn.Module):
    """A YOLOv5 detector. State-dict keys match the official `models.yolo.Model` ('model.N....')."""

    def __init__(
        self,
        cfg: str | Path | dict = "yolov5s",
        ch: int = 3,
        nc: int | None = None,
        shapes: dict[str, list[int]] | None = None,
    ):
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        if nc is not None and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        self.yaml.setdefault("ch", ch)
        self.model, self.save = parse_model(self.yaml, ch=[self.yaml["ch"]])
        if self.yaml.get("activation"):
            set_activation(self, parse_activation(str(self.yaml["activation"])))
        if shapes:
            apply_module_shapes(self, shapes)
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        self._init_detect()
        initialize_weights(self, **batchnorm_settings(self.yaml))

    @property
    def nc(self) -> int:
        return self.detect.nc

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def _init_detect(self) -> None:
        m = self.detect
        if not isinstance(m, Detect):
            raise ModelConfigError("the last layer of a detection model must be Detect")
        s = 256
        was_training = self.training
        self.eval()
        m.training = True  # raw maps only: no decode before stride is known
        sides: list[int] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: sides.extend(_sides(out))) for layer in self.model]
        try:
            with torch.no_grad():
                outs = self.forward(torch.zeros(1, self.yaml["ch"], s, s))
        finally:
            for h in hooks:
                h.remove()
        self.train(was_training)
        m.stride = torch.tensor([s / x.shape[-3] for x in outs])
        # input sides must be multiples of the deepest downsampling, which a dropped P5 leaves above Detect's strides
        self.input_stride = int(s // min(sides)) if sides else int(m.stride.max())
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)
        self._initialize_biases()

    def _initialize_biases(self) -> None:
        """Prior objectness/class biases so early training is stable (YOLOv5 recipe)."""
        m = self.detect
        if isinstance(m, FastestDetect):
            m.init_biases()
            return
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            b.data[:, 5 : 5 + m.nc] += math.log(0.6 / (m.nc - 0.99999))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def forward(self, x: torch.Tensor):
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> DetectionModel:
        """Fold every BatchNorm into its Conv for inference and export."""
        for m in self.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
            elif isinstance(m, (ConvBNReLUMaxPool, ShuffleBlock, ShuffleV2Block, DWConvBlock, RepVGG)):
                # RepVGG: fused before its branches are walked
                m.fuse()
        return self

    @property
    def is_fused(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def _sides(out) -> list[int]:
    """Spatial sides of a layer's output (a tensor, or Detect's list of maps), for the model's input stride."""
    maps = out if isinstance(out, (list, tuple)) else [out]
    return [int(min(t.shape[-2:])) for t in maps if isinstance(t, torch.Tensor) and t.dim() == 4]


def check_anchor_order(m: Detect) -> None:
    """Anchors must grow with stride; official files occasionally store them reversed."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        m.anchors[:] = m.anchors.flip(0)


def batchnorm_settings(d: dict) -> dict[str, float]:
    """The yaml's optional `batchnorm: {eps, momentum}`: YOLOv5's 1e-3 / 0.03 unless a family was trained with
    others (YOLO-FastestV2 uses PyTorch's 1e-5 / 0.1, and its weights only reproduce their outputs with that eps)."""
    bn = d.get("batchnorm") or {}
    if not isinstance(bn, dict) or set(bn) - {"eps", "momentum"}:
        raise ModelConfigError(f"batchnorm: expected a mapping with eps and/or momentum, got {bn!r}")
    return {"eps": float(bn.get("eps", 1e-3)), "momentum": float(bn.get("momentum", 0.03))}


def initialize_weights(model: nn.Module, eps: float = 1e-3, momentum: float = 0.03) -> None:
    """BatchNorm eps/momentum (YOLOv5's by default) and in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = eps
            m.momentum = momentum
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def set_activation(model: nn.Module, factory: Callable[[], nn.Module]) -> None:
    for m in model.modules():
        if isinstance(m, (Conv, RepVGG)) and isinstance(m.act, nn.SiLU):
            m.act = factory()


# ---- architecture description for models whose channel counts were changed (pruning) ----


def module_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Per-layer channel counts: enough, with the yaml, to rebuild a pruned model exactly.

    Conv2d -> [out, in, groups]; BatchNorm2d -> [num_features].
    """
    shapes: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = [m.out_channels, m.in_channels, m.groups]
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = [m.num_features]
    return shapes


def apply_module_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Resize convolutions and BatchNorms in place to the recorded channel counts."""
    named = dict(model.named_modules())
    for name, shape in shapes.items():
        m = named.get(name)
        if m is None:
            raise ModelConfigError(f"architecture names layer {name!r}, which this model config does not have")
        parent_name, _, attr = name.rpartition(".")
        parent = named[parent_name] if parent_name else model
        if isinstance(m, nn.Conv2d):
            out_c, in_c, groups = shape
            if [m.out_channels, m.in_channels, m.groups] == [out_c, in_c, groups]:
                continue
            new = nn.Conv2d(
                in_c, out_c, m.kernel_size, m.stride, m.padding, m.dilation, groups, bias=m.bias is not None
            )
        elif isinstance(m, nn.BatchNorm2d):
            if m.num_features == shape[0]:
                continue
            new = nn.BatchNorm2d(shape[0], eps=m.eps, momentum=m.momentum)
        else:
            raise ModelConfigError(f"architecture entry {name!r} is a {type(m).__name__}, not Conv2d/BatchNorm2d")
        _replace_child(parent, attr, new)


def _replace_child(parent: nn.Module, attr: str, new: nn.Module) -> None:
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def build_model(cfg: str | Path | dict, nc: int | None = None, shapes: dict | None = None) -> DetectionModel:
    """A fresh model from a yaml path, a packaged config name or a dict."""
    return DetectionModel(cfg, nc=nc, shapes=shapes)


def detect_convs_pattern(model: nn.Module) -> str:
    """The prune --ignore pattern of the Detect output convs: ignoring them keeps every channel they read."""
    bare = model.module if hasattr(model, "module") else model
    name = next(n for n, m in bare.named_modules() if m is bare.model[-1])
    return f"{name}.m.*"


def reset_detect_head(model: DetectionModel, nc: int, names: list[str] | None = None) -> DetectionModel:
    """New output convolutions for a different class count (transfer learning); keeps anchors and strides."""
    old = model.detect
    if isinstance(old, FastestDetect):  # its convs are shared by the levels: one (cls, reg) input pair per level
        ch = [old.m[0].in_channels] * (2 * old.nl)
    else:
        ch = [m.in_channels for m in old.m]
    new = type(old)(nc, [[0.0] * (old.na * 2)] * old.nl, ch, old.inplace)
    new.anchors.data.copy_(old.anchors)
    new.stride = old.stride.clone()
    for k in ("i", "f", "type", "np"):
        setattr(new, k, getattr(old, k))
    new.to(old.anchors.device).train(old.training)
    model.model[-1] = new
    model.yaml["nc"] = nc
    model.names = list(names) if names else [str(i) for i in range(nc)]
    model._initialize_biases()
    return model


def is_parallel(model: nn.Module) -> bool:
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DP/DDP wrappers."""
    return model.module if is_parallel(model) else model
