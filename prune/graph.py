"""Coupled channel groups of a detector, found with torch-pruning's DependencyGraph.

Every output channel that can be removed belongs to one group: the convolutions that produce it (coupled by
residual adds), the BatchNorms that normalise it, and the convolutions that read it (through concats,
upsampling and max-pooling, possibly several times as in SPPF). A group is pruned as one unit.

Anything the graph cannot be trusted with is protected, i.e. every group touching it is left whole, with a
reason: grouped convolutions, channel split/slice/reshape/shuffle, operations or modules this tool does not
know, parameters used outside standard layers, tensors that leave the model directly, user --ignore patterns.
Detect's output convolutions keep their na*(nc+5) outputs; their inputs are pruned with the layers feeding them,
unless one conv reads several levels (YOLO-FastestV2's shared head), whose inputs are protected.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.index_mapping import update_concat_index_mapping

from prune.config import PruneError
from yolo.fastestv2 import DWConvBlock, FastestDetect, ShuffleV2Block
from yolo.imgsz import check_imgsz, max_stride
from yolo.model import DetectionModel, de_parallel
from yolo.modules import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, Detect, DWConv, Focus
from yolo.repvgg import RepVGG
from yolo.shufflenet import ConvBNReLUMaxPool, ShuffleBlock

OPT = tp.ops.OPTYPE

# Module classes whose forward this tool knows to be safe for channel pruning (exact types, not subclasses).
KNOWN_MODULES = (
    DetectionModel, Conv, DWConv, Focus, Bottleneck, BottleneckCSP, C3, SPP, SPPF, Concat, Detect,
    nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.Upsample, nn.MaxPool2d, nn.Identity, nn.Dropout,
    nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.GELU,
)  # fmt: skip
# RepVGG (training form): Conv branches summed, identity BN like a residual add; the graph couples the branches'
# outputs and, through the identity BN, the block's input and output channels. A fused (deploy) block has no BN,
# so groups through it are protected ("no BatchNorm"); reparameterize() to Conv first to prune it.
KNOWN_MODULES += (RepVGG,)
# ShuffleNetV2: the stem is conv-BN-ReLU-maxpool. ShuffleBlock's channel split (chunk) and shuffle (stack + flatten)
# are traced as split / unknown element-wise / reshape operations, so every group touching the block's input or
# output channels is protected by operation type; only branch2's internal channels (1x1 -> depthwise -> 1x1) and a
# stride-2 block's input from a prunable layer form prunable groups.
KNOWN_MODULES += (ConvBNReLUMaxPool, ShuffleBlock)
# YOLO-FastestV2: ShuffleV2Block's even/odd split is two strided channel slices, traced as slice operations, so
# like ShuffleBlock every group touching a stride-1 block's input or output channels is protected (the split ties
# channel positions: channel 2i passes, 2i+1 enters the branch); branch_main's internal channels and a stride-2
# block's input stay prunable. DWConvBlock is a plain conv/BN chain. FastestDetect's three 1x1 output convs are
# shared by both levels: their outputs are fixed like Detect's, and the traced graph couples their input channels
# across the levels; those two groups (each level's last DWConvBlock output) are protected (see _shared_reader).
KNOWN_MODULES += (ShuffleV2Block, DWConvBlock, FastestDetect)

SPLIT_REASON = "(a channel split/shuffle ties channel positions; not handled)"
MISMAPPED = "channel mapping through a concat"

# Element-wise autograd operations that keep channel i in channel i (and keep a constant channel constant).
SAFE_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Neg", "Clone", "Clamp", "Silu", "Relu", "LeakyRelu", "Hardswish", "Hardsigmoid",
    "Hardtanh", "Sigmoid", "Tanh", "Gelu", "UpsampleNearest2D", "UpsampleBilinear2D", "MaxPool2DWithIndices",
}  # fmt: skip


@dataclass
class Member:
    """One module's share of a group: `idxs` are its own channel indices, `root` the group channel of each."""

    name: str
    kind: str  # 'out' conv output, 'dw' depthwise conv (in = out), 'in' conv input, 'bn' BatchNorm
    idxs: np.ndarray
    root: np.ndarray
    mult: int = 1  # how many of the module's channels each group channel maps to (4 for SPPF's cv2 input)


@dataclass
class GroupInfo:
    """A set of coupled channels removed together."""

    gid: int
    name: str  # first producing conv in model order
    layer: int  # yaml layer index (-1 when the model is not a DetectionModel)
    ltype: str  # yaml module type of that layer
    channels: int
    members: list[Member]
    gamma: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per channel: max |gamma| across its BNs

    @property
    def producers(self) -> list[str]:
        return [m.name for m in self.members if m.kind in ("out", "dw")]


@dataclass
class ConvGeom:
    cout: int
    cin: int
    groups: int
    kk: int
    hw: int  # output pixels at imgsz
    bias: bool

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout


@dataclass
class Sink:
    """Where a constant added to a conv's output can be folded: its bias, or a BN's running_mean at offset."""

    kind: str  # 'bias' or 'bn'
    name: str
    offset: int = 0


@dataclass
class PruneGraph:
    model: nn.Module  # the private copy the graph was traced on
    groups: list[GroupInfo]
    protected: list[tuple[str, str]]  # (group's first conv, reason)
    convs: dict[str, ConvGeom]
    bns: dict[str, int]
    sinks: dict[str, Sink | None]
    flops: float  # FLOPs of one forward at imgsz (2 per multiply-accumulate)
    params: int
    imgsz: int
    in_ch: int
    probe_size: int  # small input size that every stride divides
    ignore: tuple[str, ...] = ()  # the --ignore patterns the groups were built with

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)


# ------------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def one_thread():
    """Tiny probe tensors gain nothing from intra-op threads, and on a busy machine lose a lot (spinning OpenMP
    workers): run graph tracing, probes and slicing on one thread, then restore the caller's setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def raw_head(model: nn.Module):
    """Run Detect heads in training mode (raw maps, no decoding) whatever the model's mode."""
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    states = [h.training for h in heads]
    for h in heads:
        h.training = True
    try:
        yield
    finally:
        for h, s in zip(heads, states):
            h.training = s


def input_channels(model: nn.Module) -> int:
    if isinstance(model, DetectionModel):
        return int(model.yaml.get("ch", 3))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def layer_of(model: nn.Module, name: str) -> tuple[int, str]:
    """(yaml layer index, yaml type) of a module name like 'model.4.cv1.conv'."""
    m = re.match(r"model\.(\d+)(\.|$)", name)
    if not (m and isinstance(model, DetectionModel)):
        return -1, type(model.get_submodule(name)).__name__
    i = int(m.group(1))
    return i, str(getattr(model.model[i], "type", type(model.model[i]).__name__))


def resolve_ignore(model: nn.Module, patterns) -> dict[str, str]:
    """Module names matched by --ignore glob patterns -> the pattern; a pattern matching nothing is an error."""
    names = [n for n, _ in model.named_modules() if n]
    hit: dict[str, str] = {}
    for pat in patterns or ():
        matched = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not matched:
            raise PruneError(
                f"--ignore {pat!r} matches no layer (names look like 'model.0.conv', 'model.4.*', 'model.24.m.0')"
            )
        for n in matched:
            for sub, _ in model.get_submodule(n).named_modules(prefix=n):
                hit.setdefault(sub, pat)
    return hit


# ------------------------------------------------------------------------------------------------ tracing


def build_graph(model: nn.Module, imgsz: int = 640, ignore=(), verbose: bool = False) -> PruneGraph:
    """Trace a private copy of `model` (unfused, float, CPU, gradients on) and collect its channel groups."""
    base = de_parallel(model)
    if not any(isinstance(m, nn.BatchNorm2d) for m in base.modules()):
        raise PruneError("the model has no BatchNorm layers (fused?): prune the unfused model")
    work = copy.deepcopy(base).float().cpu().eval().requires_grad_(True)
    ignored = resolve_ignore(work, ignore)
    in_ch, stride = input_channels(work), max_stride(work)
    probe = 2 * stride
    imgsz = check_imgsz(imgsz, stride, round_up=True)[0]
    dg, unknown, outputs, probe_hw, mismapped = _trace(work, torch.zeros(1, in_ch, probe, probe))
    names = {m: n for n, m in work.named_modules()}
    ctx = _Context(dg, names, ignored, unknown, outputs, _keep_out(work), mismapped, _shared_convs(work, names))
    groups, protected = _collect_groups(work, dg, ctx)
    convs, flops = _geometry(work, probe_hw, (imgsz / probe) ** 2)
    bns = {n: m.num_features for n, m in work.named_modules() if isinstance(m, nn.BatchNorm2d)}
    sinks = {n: _sink(dg, m, names) for n, m in work.named_modules() if isinstance(m, nn.Conv2d)}
    params = sum(p.numel() for p in work.parameters())
    graph = PruneGraph(
        work, groups, protected, convs, bns, sinks, flops, params, imgsz, in_ch, probe, tuple(ignore or ())
    )
    if verbose:
        for name, why in protected:
            print(f"protected: {name}: {why}")
    return graph


def _trace(work: nn.Module, example: torch.Tensor) -> tuple[tp.DependencyGraph, dict, set, dict[str, int], dict]:
    """DependencyGraph of `work`, the autograd nodes produced by modules of unknown classes and by the model's
    outputs, every conv's output pixels at the probe size, and the concats whose channel mapping is not trusted."""
    unknown: dict = {}
    cats = _CatSizes()
    outputs: set = set()
    hw: dict[str, int] = {}

    def conv_hook(mod, args, out):
        hw[mod_names[mod]] = int(out.shape[-1] * out.shape[-2])

    def hook(mod, args, out):
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                unknown.setdefault(t.grad_fn, f"{mod_names[mod]} ({type(mod).__name__})")

    mod_names = {m: n for n, m in work.named_modules()}

    def forward(m, x):
        hooks = [mod.register_forward_hook(hook) for mod in m.modules() if mod is not m and _is_unknown(mod)]
        hooks += [mod.register_forward_hook(conv_hook) for mod in m.modules() if isinstance(mod, nn.Conv2d)]
        try:
            with raw_head(m), cats:
                out = m(x)
            outputs.update(t.grad_fn for t in tp.utils.flatten_as_list(out) if t.grad_fn is not None)
            return out
        finally:
            for h in hooks:
                h.remove()

    try:
        with torch.enable_grad(), one_thread():
            dg = tp.DependencyGraph().build_dependency(work, example, forward_fn=forward, verbose=False)
    except Exception as e:  # the model's own forward or the tracer failed: nothing can be pruned safely
        raise PruneError(f"cannot trace the model for its dependency graph: {type(e).__name__}: {e}") from None
    return dg, unknown, outputs, hw, _remap_concats(dg, cats.sizes)


class _CatSizes(torch.overrides.TorchFunctionMode):
    """Records the channel count of every input of every channel-wise torch.cat (by the output's grad_fn)."""

    def __init__(self):
        super().__init__()
        self.sizes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.cat, torch.concat, torch.concatenate) and isinstance(out, torch.Tensor) and out.grad_fn:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if out.dim() == 4 and dim in (1, -3):
                self.sizes[out.grad_fn] = [int(t.shape[1]) for t in tensors]
        return out


def _remap_concats(dg: tp.DependencyGraph, true_sizes: dict) -> dict:
    """torch-pruning infers a concat's input channel counts by walking the graph; around channel split / stack /
    reshape (ShuffleNet blocks) it gets them wrong, which would shift every channel index mapped through the concat
    (silently wrong pruning on the other inputs). Give it the counts measured while tracing and re-derive the
    mapping; a concat still not mapped as measured is returned (grad_fn -> reason) and groups through it protected."""
    bad = {}
    for node in list(dg.module2node.values()):
        sizes = true_sizes.get(node.grad_fn)
        if node.type != OPT.CONCAT or sizes is None or len(sizes) != len(node.inputs):
            continue
        want = [0]
        for c in sizes:
            want.append(want[-1] + c)
        if node.module.concat_sizes == sizes and node.module.offsets == want:
            continue
        node.module.concat_sizes, node.module.offsets = list(sizes), None
        update_concat_index_mapping(dg, node)
        if node.module.offsets != want:
            bad[node.grad_fn] = f"{MISMAPPED} of {sizes} channels could not be derived"
    return bad


def _is_unknown(m: nn.Module) -> bool:
    return type(m) not in KNOWN_MODULES


def _shared_convs(work: nn.Module, names: dict) -> set[str]:
    """Output convs one head applies to every level (FastestDetect's reg/obj/cls)."""
    return {names[c] for d in work.modules() if isinstance(d, FastestDetect) for c in d.m}


def _keep_out(work: nn.Module) -> set:
    """Convs whose outputs are fixed: Detect's na*(nc+5) output convs."""
    return {c for d in work.modules() if isinstance(d, Detect) for c in d.m}


@dataclass
class _Context:
    dg: tp.DependencyGraph
    names: dict
    ignored: dict[str, str]
    unknown: dict  # grad_fn -> description of the unknown module that produced it
    outputs: set  # grad_fns of the model's output tensors
    keep_out: set
    mismapped: dict = field(default_factory=dict)  # grad_fn of a concat -> why its index mapping is not trusted
    shared: set = field(default_factory=set)  # names of output convs shared by several levels


def _collect_groups(work: nn.Module, dg, ctx: _Context) -> tuple[list[GroupInfo], list[tuple[str, str]]]:
    order = {n: i for i, (n, _) in enumerate(work.named_modules())}
    groups, protected = [], []
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d,)):
        if group[0].dep.target.module in ctx.keep_out:
            continue  # Detect output convs: outputs are fixed by design
        members, reasons = _members(group, ctx)
        producers = sorted((m.name for m in members if m.kind in ("out", "dw")), key=order.get)
        if not reasons:
            reasons = _shared_reader(members, ctx) or _check_members(members, len(group[0].idxs))
        if reasons:
            reasons.sort(key=lambda r: r.startswith(MISMAPPED))  # a concat mis-mapped is a symptom: the cause first
            protected.append((", ".join(producers) or ctx.names.get(group[0].dep.target.module, "?"), reasons[0]))
            continue
        layer, ltype = layer_of(work, producers[0])
        members.sort(key=lambda m: order.get(m.name, 0))
        g = GroupInfo(len(groups), producers[0], layer, ltype, len(group[0].idxs), members)
        g.gamma = group_gamma(work, g)
        groups.append(g)
    groups.sort(key=lambda g: (order[g.name], g.name))
    for i, g in enumerate(groups):
        g.gid = i
    return groups, protected


def _shared_reader(members: list[Member], ctx: _Context) -> list[str]:
    """A group read by an output conv shared by several levels couples those levels' features, which the conv reads
    at separate calls (not summed, as the graph's coupled producers otherwise are): a removed channel's constant
    differs per level and one bias cannot absorb both, so the cut would not be exact. Protected."""
    readers = sorted(m.name for m in members if m.kind == "in" and m.name in ctx.shared)
    if not readers:
        return []
    return [f"read by {', '.join(readers)}, output convs shared by both levels (the levels' removed channels "
            "would leave different constants for one bias)"]


def _members(group, ctx: _Context) -> tuple[list[Member], list[str]]:
    """The group's conv/BN members, and the reasons (if any) it must be left alone."""
    members, reasons = [], []
    for item in group:
        node, handler = item.dep.target, item.dep.handler
        mod, t = node.module, node.type
        if node.grad_fn in ctx.unknown:
            reasons.append(f"passes through unknown module {ctx.unknown[node.grad_fn]}")
        if node.grad_fn in ctx.mismapped:
            reasons.append(ctx.mismapped[node.grad_fn])
        if node.grad_fn in ctx.outputs and (t not in (OPT.CONV, OPT.DEPTHWISE_CONV) or _is_out(ctx.dg, handler)):
            reasons.append("its channels leave the model directly (a model output)")
        if t == OPT.CONCAT:
            continue
        if t == OPT.ELEMENTWISE:
            op = re.sub(r"Backward\d*$", "", str(getattr(mod, "_grad_fn", "Unknown")))
            if op not in SAFE_ELEMENTWISE:
                reasons.append(f"unknown operation {op} on the channels (e.g. a shuffle or a custom op)")
            continue
        reason = _layer_reason(mod, t, item, ctx)
        if reason is not None:
            reasons.append(reason)
            continue
        kind = _kind(mod, t, handler, ctx.dg)
        idxs = np.asarray(item.idxs, dtype=np.int64)
        members.append(Member(ctx.names[mod], kind, idxs, np.asarray(item.root_idxs, dtype=np.int64)))
    return members, reasons


def _is_out(dg, handler) -> bool:
    return dg.is_out_channel_pruning_fn(handler)


def _layer_reason(mod, t, item, ctx: _Context) -> str | None:
    if t == OPT.OUTPUT:
        return "its channels leave the model directly (a model output)"
    if t in (OPT.RESHAPE, OPT.SPLIT, OPT.SLICE, OPT.UNBIND, OPT.EXPAND):
        return f"channel {t.name.lower()} operation {SPLIT_REASON}"
    if t not in (OPT.CONV, OPT.DEPTHWISE_CONV, OPT.BN) or type(mod) not in (nn.Conv2d, nn.BatchNorm2d):
        return f"unsupported layer {type(mod).__name__} ({t.name})"
    name = ctx.names[mod]
    if name in ctx.ignored:
        return f"ignored ({name} matches --ignore {ctx.ignored[name]!r})"
    if isinstance(mod, nn.Conv2d):
        if mod.groups > 1 and not (mod.groups == mod.in_channels == mod.out_channels):
            return f"grouped convolution {name} (groups={mod.groups})"
        if mod in ctx.keep_out and _is_out(ctx.dg, item.dep.handler):
            return f"would change the outputs of {name}"
    return None


def _kind(mod, t, handler, dg) -> str:
    if t == OPT.BN:
        return "bn"
    if t == OPT.DEPTHWISE_CONV or (mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels):
        return "dw"
    return "out" if _is_out(dg, handler) else "in"


def _check_members(members: list[Member], channels: int) -> list[str]:
    if not any(m.kind == "bn" for m in members):
        return ["no BatchNorm on these channels (nothing to judge by |gamma| or to compensate with)"]
    for m in members:
        counts = np.bincount(m.root, minlength=channels)
        if len(counts) != channels or counts.min() != counts.max() or counts[0] < 1:
            return [f"irregular channel mapping at {m.name}"]
        if len(np.unique(m.idxs)) != len(m.idxs):
            return [f"repeated channel indices at {m.name}"]
        m.mult = int(counts[0])
    return []


def group_gamma(work: nn.Module, g: GroupInfo) -> np.ndarray:
    """Per group channel, the largest |gamma| over the group's BatchNorms."""
    out = np.zeros(g.channels)
    for m in g.members:
        if m.kind == "bn":
            w = work.get_submodule(m.name).weight.detach().abs().cpu().numpy().astype(np.float64)
            np.maximum.at(out, m.root, w[m.idxs])
    return out


def _sink(dg, conv: nn.Conv2d, names: dict) -> Sink | None:
    """Where a shift of this conv's output can be absorbed: its bias, the BN right after it, or the BN after the
    concat it feeds (BottleneckCSP's plain convs)."""
    if conv.bias is not None:
        return Sink("bias", names[conv])
    node = dg.module2node.get(conv)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0]
    if nxt.type == OPT.BN:
        return Sink("bn", names[nxt.module])
    if nxt.type == OPT.CONCAT and len(nxt.outputs) == 1 and nxt.outputs[0].type == OPT.BN:
        offset = 0
        for inp in nxt.inputs:
            if inp is node:
                return Sink("bn", names[nxt.outputs[0].module], offset)
            if not isinstance(inp.module, nn.Conv2d):
                return None
            offset += inp.module.out_channels
    return None


def _geometry(work: nn.Module, probe_hw: dict[str, int], scale: float) -> tuple[dict[str, ConvGeom], float]:
    """Per-conv shape and output size at imgsz, and the total convolution FLOPs (2 per multiply-accumulate, as
    yolo.flops counts them). Sizes are scaled from the probe pass: exact when imgsz is a multiple of the stride."""
    convs = {}
    for n, m in work.named_modules():
        if isinstance(m, nn.Conv2d):
            k = int(np.prod(m.kernel_size))
            hw = int(round(probe_hw.get(n, 0) * scale))
            convs[n] = ConvGeom(m.out_channels, m.in_channels, m.groups, k, hw, m.bias is not None)
    flops = sum(2.0 * c.cout * (c.cin // c.groups) * c.kk * c.hw for c in convs.values())
    return convs, flops
