"""Least-squares reconstruction: re-fit the convs that lost input channels so they reproduce the unpruned outputs.

Folding a removed channel's constant (compensation) is exact only when that channel was constant, i.e. after
sparse training. An ordinarily trained checkpoint (the official yolov5n.pt) loses real signal with every channel,
and one-shot pruning of it scores ~0 mAP before fine-tuning. Channel pruning with reconstruction (He, Zhang & Sun
2017, "Channel Pruning for Accelerating Very Deep Neural Networks"; ThiNet, Luo et al. 2017) asks each consumer
conv to recover what it used to compute from the inputs it has left: on calibration images, its new weights are
the ridge least-squares fit of the unpruned model's conv output (the kept output channels, before BatchNorm) on
the pruned model's own input patches. Convs are fitted in execution order, each on the inputs produced by the
already fitted layers before it, so the errors upstream are corrected rather than compounded; that includes convs
that lost no input but read changed ones (Detect's convs: on yolov5n at 0.7x FLOPs, re-fitting them took the P3
output error from 130% to 17% of its variance). Convs whose inputs are unchanged are left alone. A fitted intercept
goes to the conv's bias, or to the running mean of the BatchNorm right after it; that BatchNorm then gets the
fitted outputs' own mean and variance (gamma and beta compensate, eval outputs unchanged), so that training, which
normalises by batch statistics, starts from the fitted model rather than a rescaled one.

Cost: both models run one layer at a time over the calibration images, from cached layer outputs (each layer once
per conv it holds, stopped at that conv), and a (k*k*c_in + 1)^2 normal-equation solve per conv on patches gathered
at sampled positions only (at most `rows` per conv). When the two caches would pass `cache_limit`, or the model is
not a YOLOv5 layer list, each conv's input and output come from running the whole model up to it instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prune.graph import raw_head
from prune.plan import PrunePlan, kept_indices, removals


class _Reached(Exception):
    """Raised from a hook to stop a forward pass once the layer of interest has run."""


def kept_outputs(plan: PrunePlan, name: str, n_out: int) -> torch.Tensor:
    """Indices (in the unpruned conv) of the output channels the pruned conv still has."""
    return kept_indices(n_out, removals(plan).get((name, "out")))


def execution_order(model: nn.Module, x: torch.Tensor, names: Iterable[str]) -> list[str]:
    """`names` sorted by when their conv first runs (a C3's cv3 runs after its bottlenecks, unlike its name order)."""
    wanted, order = set(names), []
    hooks = []
    for n, m in model.named_modules():
        if n in wanted:
            hooks.append(
                m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
            )
    try:
        with torch.no_grad(), raw_head(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def reconstruct_consumers(
    original: nn.Module,
    pruned: nn.Module,
    plan: PrunePlan,
    batches: list[torch.Tensor],
    rows: int = 40_000,
    ridge: float = 1e-3,
    seed: int = 0,
    layered: bool = True,
    cache_limit: float = 4 * 2**30,
    keep_norms: bool = True,
) -> list[str]:
    """Re-fit (in place) every dense conv of `pruned` whose inputs differ from the unpruned model's (it lost input
    channels, or something upstream changed); returns the fitted conv names.

    `original` is the unpruned model the plan was made for (left unchanged), `batches` float images in [0, 1].
    `layered=False` runs the whole model up to each conv instead of one layer from cached layer outputs (same fit,
    slower; the path for models that are not a YOLOv5 layer list, and the one taken when the cached layer outputs
    would exceed `cache_limit` bytes: a GPU or a small board holds one batch's activations, not N images' worth).
    `keep_norms` scales each fitted filter followed by a BatchNorm back to its length before the fit (same function;
    see `_restore_filter_norms`).
    """
    if not batches:
        return []
    gen = torch.Generator().manual_seed(seed)
    modes = original.training, pruned.training
    original.eval(), pruned.eval()
    names = [n for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    fitted = []
    try:
        order = execution_order(pruned, batches[0][:1], names)
        per_image = max(1, math.ceil(rows / sum(b.shape[0] for b in batches)))
        fast = layered and _LayerRunner.fits(pruned) and 2 * _LayerRunner.cache_bytes(pruned, batches) <= cache_limit
        runner = _LayerRunner if fast else _WholeModel
        run_o, run_p = runner(original, batches), runner(pruned, batches)
        for stage, convs in run_p.stages(order):
            for name in convs:
                if _refit(original, pruned, plan, name, (run_o, run_p), stage, per_image, gen, ridge, keep_norms):
                    fitted.append(name)
            run_o.advance(stage), run_p.advance(stage)
    finally:
        original.train(modes[0]), pruned.train(modes[1])
    return fitted


class _WholeModel:
    """Runs the whole model from the images up to a conv: one stage holding every conv."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]):
        self.model, self.batches = model, batches

    def stages(self, order: list[str]):
        yield 0, order

    def conv_io(self, stage: int, b: int, conv: nn.Conv2d, what: str) -> torch.Tensor:
        return _capture(self.model, conv, self.batches[b], what)

    def advance(self, stage: int) -> None:
        pass


class _LayerRunner:
    """A YOLOv5 layer list (`model.model`, each layer with its `.f` sources) run one layer at a time, every layer's
    outputs over the calibration batches cached until the last layer that reads them: a conv's input then costs one
    layer's forward, not the whole network's up to it."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]):
        self.model, self.layers, self.batches = model, list(model.model), batches
        self.outputs: dict[int, list] = {}
        self.last_use = _LayerRunner._last_use(self.layers)

    @staticmethod
    def fits(model: nn.Module) -> bool:
        layers = getattr(model, "model", None)
        return isinstance(layers, (nn.Sequential, nn.ModuleList)) and all(hasattr(m, "f") for m in layers)

    @staticmethod
    def cache_bytes(model: nn.Module, batches: list[torch.Tensor]) -> int:
        """Peak bytes of the cached layer outputs over all the batches (one image's outputs, times the images)."""
        layers, sizes = list(model.model), []
        hooks = [m.register_forward_hook(lambda mod, a, out: sizes.append(_numel(out))) for m in layers]
        try:
            with torch.no_grad(), raw_head(model):
                model(batches[0][:1])
        finally:
            for h in hooks:
                h.remove()
        last_use = _LayerRunner._last_use(layers)
        live, peak = {}, 0
        for k, size in enumerate(sizes):
            live[k] = size
            peak = max(peak, sum(live.values()))
            live = {j: v for j, v in live.items() if last_use.get(j, -1) > k}
        return peak * sum(b.shape[0] for b in batches) * batches[0].element_size()

    @staticmethod
    def _last_use(layers: list[nn.Module]) -> dict[int, int]:
        """Layer index -> the last layer that reads its output."""
        return {j: k for k, layer in enumerate(layers) for j in _LayerRunner._sources(k, layer)}

    @staticmethod
    def _sources(k: int, layer: nn.Module) -> list[int]:
        f = layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]
        return [k - 1 if j == -1 else (j if j >= 0 else k + j) for j in f]

    def stages(self, order: list[str]):
        where = {id(m): k for k, layer in enumerate(self.layers) for m in layer.modules()}
        by_layer: dict[int, list[str]] = {}
        for name in order:
            by_layer.setdefault(where[id(self.model.get_submodule(name))], []).append(name)
        for k in range(len(self.layers)):
            yield k, by_layer.get(k, [])

    def _input(self, k: int, b: int):
        layer = self.layers[k]
        if k == 0:
            return self.batches[b]
        src = [self.outputs[j][b] for j in self._sources(k, layer)]
        return src if isinstance(layer.f, (list, tuple)) else src[0]

    def conv_io(self, stage: int, b: int, conv: nn.Conv2d, what: str) -> torch.Tensor:
        return _capture(self.layers[stage], conv, self._input(stage, b), what, head=self.model)

    def advance(self, stage: int) -> None:
        with torch.no_grad(), raw_head(self.model):
            self.outputs[stage] = [self.layers[stage](self._input(stage, b)) for b in range(len(self.batches))]
        for j in [j for j in self.outputs if self.last_use.get(j, -1) <= stage]:
            del self.outputs[j]


def _numel(out) -> int:
    return sum(_numel(o) for o in out) if isinstance(out, (list, tuple)) else out.numel()


def _refit(original, pruned, plan, name, runners, stage, per_image, gen, ridge, keep_norms=True) -> bool:
    """Fit one conv; False when its inputs turn out unchanged (nothing upstream was cut), so it is already exact."""
    conv_o, conv_p = original.get_submodule(name), pruned.get_submodule(name)
    keep = kept_outputs(plan, name, conv_o.out_channels)
    xtx, xty, yty = _normal_equations(conv_o, conv_p, keep, runners, stage, per_image, gen)
    if _sq_error(_current_solution(conv_p), xtx, xty, yty) <= 1e-6 * yty.clamp_min(1e-12):
        return False
    bn_o, bn_p = _own_bn(original, plan, name, conv_o), _own_bn(pruned, plan, name, conv_p)
    intercept = conv_p.bias is not None or (bn_o is not None and bn_p is not None)
    if not intercept:  # nowhere to put one
        xtx, xty = xtx[:-1, :-1], xty[:-1]
    sol = _solve(xtx, xty, ridge)
    norms = _filter_norms(conv_p)
    _set_weights(conv_p, sol)
    if intercept and conv_p.bias is None:
        # BN(conv(x) + b) with the unpruned running mean m == BN(conv(x)) with running mean m - b; this replaces
        # the shift compensation folded there before, which the fit already accounts for
        m = bn_o.running_mean[keep.to(bn_o.running_mean.device)]
        bn_p.running_mean.data.copy_(m - sol[-1].to(m))
        _own_statistics(bn_p, xtx, sol)
        if keep_norms:
            _restore_filter_norms(conv_p, bn_p, norms)
    return True


def _filter_norms(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().flatten(1).norm(dim=1)


@torch.no_grad()
def _restore_filter_norms(conv: nn.Conv2d, bn: nn.BatchNorm2d, norms: torch.Tensor) -> None:
    """Scale each fitted filter back to the length it had before the fit, the BatchNorm after it undoing the scale.

    A conv followed by BatchNorm computes the same function at any filter length, but SGD's step on a filter
    changes its direction by lr * grad / |w| with grad itself ~1/|w|: a filter the fit made k times longer learns
    ~k^2 times slower, and weight decay takes hundreds of thousands of steps to shorten it. The ridge fit of a conv
    that lost inputs leans on the correlated inputs left with larger weights (up to 4x the filter RMS on yolov5n
    cut to 0.5x FLOPs, in the neck the cut thins most), so without this those layers barely train in the fine-tune.
    With running_mean and running_var scaled with the filter and gamma making up for eps, eval outputs are exactly
    unchanged and train mode (batch statistics) is unchanged to within eps.
    """
    now = _filter_norms(conv)
    s = torch.where((now > 0) & (norms > 0), norms / now.clamp_min(1e-12), torch.ones_like(now))
    conv.weight.mul_(s.view(-1, 1, 1, 1).to(conv.weight))
    s = s.to(bn.running_var)
    old_std = (bn.running_var + bn.eps).sqrt()
    bn.running_mean.mul_(s)
    bn.running_var.mul_(s * s)
    bn.weight.mul_((bn.running_var + bn.eps).sqrt() / (s * old_std))


@torch.no_grad()
def _own_statistics(bn: nn.BatchNorm2d, xtx: torch.Tensor, sol: torch.Tensor) -> None:
    """Give the BatchNorm the fitted conv's own output statistics, with gamma and beta changed so that its eval-mode
    output is exactly what it was.

    A least-squares fit predicts with less variance than its target, and the fit's outputs are meant to be
    normalised by the unpruned model's statistics. Training normalises by the batch's instead, which rescales
    every fitted channel back up: on yolov5n cut to 0.7x FLOPs and re-fitted, the Detect inputs' relative error was
    0.39-0.53 in eval mode but 0.73-1.0 in train mode, so the first fine-tuning steps undid most of the fit. With
    the statistics the fitted outputs really have (from the normal equations: the ones column sums the patches),
    the batch statistics agree with the running ones and train mode sees the fitted model too (same cut: train-mode
    error 0.46-0.74, eval mode unchanged, mAP50-95 0.029 either way).
    """
    n = xtx[-1, -1]
    mean = (xtx[-1] @ sol) / n  # the fitted output's mean, intercept included
    var = ((sol * (xtx @ sol)).sum(0) / n - mean**2).clamp_min(0)
    dev = bn.running_mean.device
    mean, var = mean.to(dev, bn.running_mean.dtype), var.to(dev, bn.running_var.dtype)
    old_mean = bn.running_mean + sol[-1].to(mean)  # eval mode subtracts running_mean - b from conv(x)
    old_std = (bn.running_var + bn.eps).sqrt()
    bn.bias.add_(bn.weight * (mean - old_mean) / old_std)
    bn.weight.mul_((var + bn.eps).sqrt() / old_std)
    bn.running_mean.copy_(mean - sol[-1].to(mean))
    bn.running_var.copy_(var)


def _normal_equations(conv_o, conv_p, keep, runners, stage, per_image, gen):
    """X^T X and X^T Y over sampled output positions (per batch, shared by its images): X the pruned conv's input
    patches there (plus a ones column), Y the unpruned conv's output at the kept channels."""
    run_o, run_p = runners
    d = conv_p.in_channels * conv_p.kernel_size[0] * conv_p.kernel_size[1] + 1
    xtx = torch.zeros(d, d, dtype=torch.float64)
    xty = torch.zeros(d, len(keep), dtype=torch.float64)
    yty = torch.zeros((), dtype=torch.float64)
    for b in range(len(run_p.batches)):
        out = run_o.conv_io(stage, b, conv_o, "output")
        out_hw = tuple(out.shape[-2:])
        pick = torch.randperm(out_hw[0] * out_hw[1], generator=gen)[:per_image].to(out.device)
        ys = out[:, keep.to(out.device)].flatten(2)[:, :, pick].permute(0, 2, 1).reshape(-1, len(keep))
        xs = _patches(run_p.conv_io(stage, b, conv_p, "input"), conv_p, pick, out_hw)
        xs, ys = xs.double().cpu(), ys.double().cpu()
        xs = torch.cat((xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype)), 1)
        xtx += xs.T @ xs
        xty += xs.T @ ys
        yty += (ys * ys).sum()
    return xtx, xty, yty


def _patches(x: torch.Tensor, conv: nn.Conv2d, pick: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The conv's input patches at the picked output positions, (images * positions, c_in * kh * kw), in the
    layout of `conv.weight.reshape(c_out, -1)`; gathered directly instead of unfolding the whole map."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"reconstruct: conv padding {conv.padding!r} / {conv.padding_mode!r} is not supported")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    wp = xp.shape[-1]
    pick = pick.to(x.device)
    oy, ox = pick // out_hw[1], pick % out_hw[1]
    ky = (torch.arange(kh, device=x.device) * dh).repeat_interleave(kw)
    kx = (torch.arange(kw, device=x.device) * dw).repeat(kh)
    idx = (oy[None] * sh + ky[:, None]) * wp + (ox[None] * sw + kx[:, None])  # (kh * kw, n)
    b, c = xp.shape[:2]
    g = xp.flatten(2)[:, :, idx.flatten()].view(b, c, kh * kw, -1)
    return g.permute(0, 3, 1, 2).reshape(-1, c * kh * kw)


def _capture(model: nn.Module, conv: nn.Conv2d, x, what: str, head: nn.Module | None = None) -> torch.Tensor:
    """The input (or output) of `conv` for input x, running `model` (a whole detector, or one of its layers) only as
    far as that conv; `head` is the model whose Detect must return raw maps (default `model`)."""
    got = {}

    def pre(mod, args):
        got["t"] = args[0].detach()
        raise _Reached

    def post(mod, args, out):
        got["t"] = out.detach()
        raise _Reached

    h = conv.register_forward_pre_hook(pre) if what == "input" else conv.register_forward_hook(post)
    try:
        with torch.no_grad(), raw_head(model if head is None else head):
            model(x)
    except _Reached:
        pass
    finally:
        h.remove()
    return got["t"]


def _current_solution(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's present weights in solution layout (d, c_out): flattened filters, then the bias (or 0)."""
    w = conv.weight.detach().reshape(conv.out_channels, -1).T.double().cpu()
    bias = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(conv.out_channels).double()
    return torch.cat((w, bias[None]), 0)


def _sq_error(sol: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor, yty: torch.Tensor) -> torch.Tensor:
    """Sum of squared residuals of `sol` from the normal equations: |Y|^2 - 2 tr(W^T X^T Y) + tr(W^T X^T X W)."""
    return yty - 2 * (sol * xty).sum() + (sol * (xtx @ sol)).sum()


def _solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge solution (d, c_out), the penalty relative to the mean patch energy (the intercept column's is 1)."""
    d = xtx.shape[0]
    lam = ridge * xtx.diagonal().mean().clamp_min(1e-12)
    reg = torch.full((d,), float(lam), dtype=xtx.dtype)
    return torch.linalg.solve(xtx + torch.diag(reg), xty)


def _set_weights(conv: nn.Conv2d, sol: torch.Tensor) -> None:
    """Write the fitted filters, and the intercept (if fitted) into the bias when the conv has one."""
    n_w = conv.weight[0].numel()
    conv.weight.data.copy_(sol[:n_w].T.reshape(conv.weight.shape).to(conv.weight))
    if conv.bias is not None and len(sol) > n_w:
        conv.bias.data.copy_(sol[n_w].to(conv.bias))


def _own_bn(model: nn.Module, plan: PrunePlan, name: str, conv: nn.Conv2d) -> nn.BatchNorm2d | None:
    """The BatchNorm right after `conv` (the plan's shift sink for it), when it normalises exactly its outputs."""
    sink = plan.sinks.get(name)
    if sink is None or sink.kind != "bn" or sink.offset != 0:
        return None
    bn = model.get_submodule(sink.name)
    return bn if bn.num_features == conv.out_channels else None
