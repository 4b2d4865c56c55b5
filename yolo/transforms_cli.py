"""`reparam`: fold RepVGG blocks (and, with --replace-focus, Focus stems) of a checkpoint into plain Convs."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from yolo.checkpoint import load_model, save_checkpoint
from yolo.modules import Detect
from yolo.transforms import reparameterize, replace_focus

# Largest |difference| of the raw output maps accepted between the model before and after the rewrite (float32
# rounding of the folded kernels is ~1e-6 on real models; a wrong fold is off by O(1)).
CHECK_TOL = 1e-3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reparam",
        help="fold RepVGG blocks into single 3x3 convs (optionally Focus into a 6x6 conv); outputs unchanged",
        description="Re-parameterise a checkpoint: every RepVGG block becomes one 3x3 Conv and, with "
        "--replace-focus, every Focus stem the equivalent strided Conv (YOLOv5 v6 style). The result is checked "
        "against the input model and saved in the yolov5-slim format; it reloads, prunes and exports as a plain "
        "Conv model.",
    )
    p.add_argument("--weights", required=True, help="input checkpoint (official YOLOv5 .pt or yolov5-slim)")
    p.add_argument("--out", required=True, help="output .pt (must differ from --weights)")
    p.add_argument(
        "--replace-focus",
        action="store_true",
        help="also turn Focus(c2, k, s, p) into Conv(c2, 2k, 2s, 2p), e.g. Focus(64, 3) -> Conv(64, 6, 2, 2)",
    )
    p.add_argument("--half", action="store_true", help="store fp16 weights (default fp32, bit-faithful folding)")
    p.set_defaults(func=run_reparam)


def run_reparam(args: argparse.Namespace) -> Path:
    src, out = Path(args.weights), Path(args.out)
    if out.suffix.lower() != ".pt":
        raise ValueError(f"--out {out}: expected a .pt file")
    if _same_file(src, out):
        raise ValueError(f"--out {out} is the input file; write the re-parameterised model elsewhere")
    model, meta = load_model(src)
    model.eval()
    before = copy.deepcopy(model)
    n_rep = reparameterize(model)
    n_focus = replace_focus(model) if args.replace_focus else 0
    diff = max_output_diff(before, model)
    if diff > CHECK_TOL:  # pragma: no cover - would be a bug in the folding
        raise RuntimeError(f"re-parameterised model differs from {src} by {diff:.3g} (> {CHECK_TOL})")
    meta = {k: v for k, v in meta.items() if k not in ("format", "date", "arch", "state_dict")}
    entry = {"op": "reparam", "repvgg_blocks": n_rep, "focus_replaced": n_focus, "max_abs_diff": diff,
             "weights": str(src)}  # fmt: skip
    meta["history"] = [*list(meta.get("history") or []), entry]
    save_checkpoint(out, model, meta, half=bool(args.half))
    what = f"{n_rep} RepVGG block(s) folded" + (f", {n_focus} Focus replaced" if args.replace_focus else "")
    if not n_rep and not n_focus:
        what = "nothing to fold (no RepVGG blocks" + (" or Focus" if args.replace_focus else "") + "): unchanged copy"
    print(f"{what}; max |output difference| {diff:.2e}; wrote {out}")
    return out


def _same_file(a: Path, b: Path) -> bool:
    if b.exists():
        try:
            return a.samefile(b)
        except OSError:
            pass
    return a.resolve() == b.resolve()


@torch.no_grad()
def max_output_diff(a: nn.Module, b: nn.Module, size: int | None = None, seed: int = 0) -> float:
    """Largest |difference| of the raw (undecoded) output maps of two eval-mode models on one random image."""
    stride = getattr(a, "stride", None)
    size = size or 2 * (int(torch.as_tensor(stride).max()) if stride is not None else 32)
    ch = int(getattr(a, "yaml", {}).get("ch", 3))
    x = torch.rand(1, ch, size, size, generator=torch.Generator().manual_seed(seed))
    outs = []
    for m in (a, b):
        m.eval()
        heads = [h for h in m.modules() if isinstance(h, Detect)]
        for h in heads:
            h.training = True  # raw maps: decoding would scale differences by the stride
        try:
            y = m(x.to(next(m.parameters())))
        finally:
            for h in heads:
                h.training = False
        outs.append(y if isinstance(y, (list, tuple)) else [y])
    return max(float((u.float() - v.float()).abs().max()) for u, v in zip(*outs))
