"""Carrying out a plan: fold what removed channels carried into their consumers, then slice the tensors.

Compensation. A removed channel did not output zero: its consumers saw act(bn(x)), for a |gamma| ~ 0 channel the
constant act(beta) (summed over a residual chain, repeated by concats, unchanged by upsampling and max-pooling).
The constant each consumer conv saw on each removed input channel is measured by one forward pass with hooks on
the consumers, after setting the removed channels' gammas to 0 (mode 'beta'; the value is then exact), or as the
channel's mean over calibration images (mode 'mean'). A consumer conv loses delta[o] = sum_c W[o, c].sum() *
value_c on its output, which is given back through its bias (+= delta) or the BatchNorm it feeds
(running_mean -= delta; also right in training mode, where BN removes any constant shift itself).
Inside the image this is exact; on the border rows a k>1 conv's zero padding made the real contribution smaller.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from prune.config import CALIB_NEEDED, COMPENSATIONS, PruneError
from prune.graph import one_thread, raw_head
from prune.plan import PrunePlan, kept_indices, removals
from prune.reconstruct import reconstruct_consumers
from yolo.model import de_parallel


class PruneWarning(UserWarning):
    """Something the user should know about a pruning run (large gammas removed, uncompensated channels)."""


def apply_plan(
    model: nn.Module,
    plan: PrunePlan,
    compensate: str | None = None,
    calib_loader=None,
    recalibrate: int | None = None,
    reconstruct: int | None = None,
) -> nn.Module:
    """A pruned copy of `model` (the input is left untouched); train/eval mode and requires_grad are kept."""
    compensate = plan.config.compensate if compensate is None else compensate
    recalibrate = plan.config.recalibrate if recalibrate is None else recalibrate
    reconstruct = plan.config.reconstruct if reconstruct is None else reconstruct
    if compensate not in COMPENSATIONS:
        raise PruneError(f"compensate {compensate!r} unknown; use one of {', '.join(COMPENSATIONS)}")
    if (compensate == "mean" or recalibrate or reconstruct) and calib_loader is None:
        raise PruneError(CALIB_NEEDED)
    base = de_parallel(model)
    check_fits(base, plan)
    work = copy.deepcopy(base)
    was_training = work.training
    grads = {n: p.requires_grad for n, p in work.named_parameters()}
    work.eval()
    with torch.no_grad(), contextlib.nullcontext() if compensate == "mean" else one_thread():
        if compensate != "none":
            compensate_removed(work, plan, compensate, calib_loader)
        slice_model(work, plan)
    if reconstruct:
        p = next(work.parameters())
        reconstruct_consumers(base, work, plan, list(image_batches(calib_loader, reconstruct, p)))
    if recalibrate:
        recalibrate_bn(work, calib_loader, recalibrate)
    work.train(was_training)
    for n, p in work.named_parameters():
        p.requires_grad_(grads.get(n, True))
    return work


def check_fits(model: nn.Module, plan: PrunePlan) -> None:
    """The plan was made for a model with exactly these layer shapes."""
    named = dict(model.named_modules())
    for name, shape in plan.shapes.items():
        m = named.get(name)
        now = (m.out_channels, m.in_channels, m.groups) if isinstance(m, nn.Conv2d) else (
            (m.num_features,) if isinstance(m, nn.BatchNorm2d) else None)  # fmt: skip
        if now != tuple(shape):
            raise PruneError(f"the plan does not fit this model: {name} is {now}, the plan expects {tuple(shape)}")


# ------------------------------------------------------------------------------------------------ removals


# ------------------------------------------------------------------------------------------------ compensation


def compensate_removed(work: nn.Module, plan: PrunePlan, mode: str, calib_loader=None) -> list[str]:
    """Fold the removed channels' contribution into their consumers (in place, before slicing)."""
    rm = removals(plan)
    consumers = {name: idx for (name, kind), idx in rm.items() if kind == "in"}
    if not consumers:
        return []
    if mode == "beta":
        for (name, kind), idx in rm.items():
            if kind == "bn":
                work.get_submodule(name).weight.data[torch.as_tensor(idx)] = 0.0
    means = _consumer_input_means(work, list(consumers), plan, mode, calib_loader)
    missed = []
    for name, idx in consumers.items():
        conv = work.get_submodule(name)
        w = conv.weight.detach()[:, torch.as_tensor(idx)].sum((2, 3))
        delta = w @ means[name][torch.as_tensor(idx)].to(w)
        if not _fold(work, plan.sinks.get(name), delta):
            missed.append(name)
    if missed:
        warnings.warn(f"no bias or BatchNorm to compensate removed inputs of: {', '.join(missed)}", PruneWarning,
                      stacklevel=2)  # fmt: skip
    return missed


def _fold(work: nn.Module, sink, delta: torch.Tensor) -> bool:
    if sink is None:
        return False
    m = work.get_submodule(sink.name)
    if sink.kind == "bias":
        m.bias.data += delta.to(m.bias)
    else:
        m.running_mean.data[sink.offset : sink.offset + len(delta)] -= delta.to(m.running_mean)
    return True


def _consumer_input_means(work: nn.Module, names: list[str], plan: PrunePlan, mode: str, loader) -> dict:
    """Per-input-channel spatial mean of what each consumer conv reads (averaged over images)."""
    sums: dict[str, torch.Tensor] = {}
    count = [0]

    def make_hook(name):
        def hook(mod, args):
            x = args[0].detach().double()
            s = x.mean((2, 3)).sum(0)
            sums[name] = s if name not in sums else sums[name] + s

        return hook

    hooks = [work.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    p = next(work.parameters())
    try:
        with torch.no_grad(), raw_head(work):
            for x in _probe_batches(plan, mode, loader, p):
                work(x)
                count[0] += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return {n: s / max(count[0], 1) for n, s in sums.items()}


def _probe_batches(plan: PrunePlan, mode: str, loader, p: torch.Tensor):
    if mode == "beta":  # the removed channels are constant whatever the input
        yield torch.zeros(1, plan.in_ch, plan.probe_size, plan.probe_size, dtype=p.dtype, device=p.device)
        return
    yield from image_batches(loader, plan.config.calib_images, p)


def image_batches(loader, n_images: int, p: torch.Tensor):
    """Float batches in [0, 1] from a YOLO dataloader (uint8 images first), n_images in all."""
    seen = 0
    for batch in loader:
        imgs = batch[0] if isinstance(batch, (list, tuple)) else batch
        imgs = imgs[: n_images - seen].to(p.device)
        x = imgs.to(p.dtype) / 255 if imgs.dtype == torch.uint8 else imgs.to(p.dtype)
        seen += x.shape[0]
        yield x
        if seen >= n_images:
            return


# ------------------------------------------------------------------------------------------------ slicing


def slice_model(work: nn.Module, plan: PrunePlan) -> None:
    """Cut the planned channels out of every conv weight/bias and BatchNorm (in place)."""
    per_module: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for (name, kind), idx in removals(plan).items():
        per_module[name][kind] = idx
    for name, kinds in per_module.items():
        m = work.get_submodule(name)
        if isinstance(m, nn.BatchNorm2d):
            _slice_bn(m, kept_indices(m.num_features, kinds.get("bn")))
        else:
            _slice_conv(m, kinds)
    _update_layer_params(work)


def _param(old: nn.Parameter, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _slice_conv(m: nn.Conv2d, kinds: dict[str, np.ndarray]) -> None:
    if "dw" in kinds:
        keep = kept_indices(m.out_channels, kinds["dw"])
        m.weight = _param(m.weight, m.weight.data[keep.to(m.weight.device)])
        m.in_channels = m.out_channels = m.groups = len(keep)
    else:
        ko = kept_indices(m.out_channels, kinds.get("out")).to(m.weight.device)
        ki = kept_indices(m.in_channels, kinds.get("in")).to(m.weight.device)
        m.weight = _param(m.weight, m.weight.data[ko][:, ki])
        m.out_channels, m.in_channels = len(ko), len(ki)
        keep = ko
    if m.bias is not None:
        m.bias = _param(m.bias, m.bias.data[keep.to(m.bias.device)])


def _slice_bn(m: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    keep = keep.to(m.running_mean.device)
    if m.affine:
        m.weight = _param(m.weight, m.weight.data[keep])
        m.bias = _param(m.bias, m.bias.data[keep])
    m.running_mean = m.running_mean[keep].clone()
    m.running_var = m.running_var[keep].clone()
    m.num_features = len(keep)


def _update_layer_params(work: nn.Module) -> None:
    layers = getattr(work, "model", None)
    if isinstance(layers, nn.Sequential):
        for m in layers:
            if hasattr(m, "np"):
                m.np = sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------ BN recalibration


def recalibrate_bn(model: nn.Module, loader, n_images: int) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics over n_images (cumulative average), in place."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    p = next(model.parameters())
    model.train()
    try:
        with torch.no_grad(), raw_head(model):
            for x in image_batches(loader, n_images, p):
                model(x)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        model.train(was_training)
    return model
