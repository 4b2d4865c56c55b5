"""RepVGG block (Ding et al. 2021): three training-time branches that fold into one 3x3 convolution.

Training form: act(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)), the identity BN only when c1 == c2 and stride 1.
The branches are `Conv(..., act=False)` units (conv + bn), so pruning, sparsity training and the checkpoint
format see ordinary Conv2d / BatchNorm2d layers; the three sums couple the branches' output channels and the
identity BN couples input and output channels like a residual add (the dependency graph finds both).

Two folded forms, both exact in eval mode:
  fuse()     in place, inference only (DetectionModel.fuse / ONNX export): one biased 3x3 Conv2d, no BN.
  to_conv()  a plain `Conv` (3x3 conv + BN + act) for checkpoints: the yaml row becomes Conv and the model keeps
             a BatchNorm per channel, so a re-parameterised model reloads, prunes and trains as any Conv model.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from yolo.modules import Conv, autopad, resolve_act


class RepVGG(nn.Module):
    """3x3 conv+BN, 1x1 conv+BN and identity BN summed, then activation; yaml args as Conv: [c2, 3, s]."""

    default_act: type[nn.Module] = nn.SiLU

    def __init__(self, c1: int, c2: int, k=3, s=1, p=None, g: int = 1, d: int = 1, act=True):
        super().__init__()
        if k != 3 or autopad(k, p, d) != 1 or g != 1 or d != 1:
            raise ValueError(
                f"RepVGG supports kernel 3, padding 1, groups 1, dilation 1 (got k={k}, p={p}, g={g}, d={d}): "
                "other shapes do not fold into one 3x3 conv"
            )
        self.c1, self.c2, self.s = int(c1), int(c2), int(s)
        self.deploy = False
        self.rbr_dense = Conv(c1, c2, 3, s, 1, act=False)
        self.rbr_1x1 = Conv(c1, c2, 1, s, 0, act=False)
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.act = resolve_act(act, self.default_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.act(self.conv(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)

    # ---------------------------------------------------------------------------------------- folding

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel and bias equal to the three branches in eval mode (running statistics)."""
        if self.deploy:
            return self.conv.weight.detach().clone(), self.conv.bias.detach().clone()
        k3, b3 = _conv_bn(self.rbr_dense)
        k1, b1 = _conv_bn(self.rbr_1x1)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            bn = self.rbr_identity
            n = bn.num_features
            eye = torch.zeros(n, n, 3, 3, dtype=kernel.dtype, device=kernel.device)
            eye[torch.arange(n), torch.arange(n), 1, 1] = 1.0
            ki, bi = _fold_bn(eye, None, bn)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    @torch.no_grad()
    def fuse(self) -> RepVGG:
        """In place: one biased 3x3 conv replaces the branches (inference/export; not checkpointable)."""
        if self.deploy:
            return self
        kernel, bias = self.fused_kernel_bias()
        dense = self.rbr_dense.conv
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, dense.stride, 1, bias=True).to(kernel.device)
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        self.conv = conv.requires_grad_(False)
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)
        self.rbr_identity = None
        self.deploy = True
        return self

    @torch.no_grad()
    def to_conv(self) -> Conv:
        """An equivalent `Conv` (3x3 conv + BN + act) whose BatchNorm carries the fused bias.

        Exact in eval mode. The BN is chosen so that training can go on sensibly too: gamma = sqrt of the sum
        of the branches' gamma^2 (the summed output's scale if the branches are uncorrelated), beta = the sum of
        their betas, running_var = 1 with the kernel scaled to match, running_mean whatever makes eval exact.
        """
        if self.deploy:
            raise ValueError("RepVGG block is already fused for inference (fuse()); re-parameterise the unfused model")
        kernel, bias = self.fused_kernel_bias()
        ref = self.rbr_dense.bn
        bns = [self.rbr_dense.bn, self.rbr_1x1.bn] + ([self.rbr_identity] if self.rbr_identity is not None else [])
        gamma = torch.sqrt(sum(bn.weight.detach() ** 2 for bn in bns))
        beta = sum(bn.bias.detach() for bn in bns)
        s = math.sqrt(1.0 + ref.eps)
        live = gamma > 0
        inv = torch.where(live, s / torch.where(live, gamma, torch.ones_like(gamma)), torch.zeros_like(gamma))
        out = Conv(kernel.shape[1], kernel.shape[0], 3, self.rbr_dense.conv.stride[0], 1, act=copy.deepcopy(self.act))
        out.to(device=kernel.device, dtype=kernel.dtype)
        out.conv.weight.data.copy_(kernel * inv.view(-1, 1, 1, 1))
        out.bn.eps, out.bn.momentum = ref.eps, ref.momentum
        out.bn.weight.data.copy_(gamma)
        out.bn.bias.data.copy_(torch.where(live, beta, bias))
        out.bn.running_var.fill_(1.0)
        out.bn.running_mean.copy_(inv * (beta - bias))
        out.bn.num_batches_tracked.copy_(ref.num_batches_tracked)
        out.train(self.training)
        for p_new, p_old in ((out.conv.weight, self.rbr_dense.conv.weight), (out.bn.weight, ref.weight),
                             (out.bn.bias, ref.bias)):  # fmt: skip
            p_new.requires_grad_(p_old.requires_grad)
        return out


def _fold_bn(kernel: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight.detach() / std
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return kernel * scale.view(-1, 1, 1, 1), (b - bn.running_mean) * scale + bn.bias.detach()


def _conv_bn(unit: Conv) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a Conv unit's conv (+ BN, unless already folded into the conv by Conv fusing)."""
    conv = unit.conv
    kernel = conv.weight.detach()
    if hasattr(unit, "bn"):
        return _fold_bn(kernel, conv.bias.detach() if conv.bias is not None else None, unit.bn)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(kernel.shape[0], dtype=kernel.dtype)
    return kernel.clone(), bias
