#!/usr/bin/env python
"""yolov5-slim command line: `python prune.py <command> ...`.

Commands: prune (the default when the first argument is a flag), sweep, val, export, benchmark, report,
detect, pipeline, demo, reparam. Each command lives in its package; this file only dispatches. Training
(sparse and fine-tuning) is finetune.py. `--help` names the usual order of the steps (USUAL_ORDER).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("prune.cli", "yolo.cli", "yolo.transforms_cli", "reports.cli", "pipeline.cli")
USUAL_ORDER = """the usual order (S = a starting checkpoint, e.g. yolov5s.pt; D = your data.yaml):
  1. prune.py val --weights S --data D                    score the starting model
  2. finetune.py --weights S --data D --sparsity 1e-3     sparse training: drives BatchNorm scales towards 0
  3. prune.py sweep --weights runs/finetune/exp/weights/last.pt --data D
                                                          what each ratio costs before fine-tuning
  4. prune.py prune --weights runs/finetune/exp/weights/last.pt --target-flops 0.5
                                                          cut the channels (runs/prune/exp/pruned.pt)
  5. finetune.py --weights runs/prune/exp/pruned.pt --data D      recover the accuracy
  6. prune.py export --weights runs/finetune/exp2/weights/best.pt  ONNX, checked against PyTorch (--int8)
  7. prune.py report --baseline S --finetuned runs/finetune/exp2/weights/best.pt --data D
or all of it into one run folder: prune.py pipeline --weights S --data D --target-flops 0.5
(prune.py demo runs that on synthetic data). `prune.py COMMAND --help` and `finetune.py --help` for options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune.py",
        description="Shrink YOLOv5 detectors: sparse training (finetune.py), DepGraph channel pruning, slicing, "
        "fine-tuning (finetune.py), export, reports.",
        epilog=USUAL_ORDER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a package without commands in this checkout
            if e.name != name:
                raise
            continue
        module.register(sub)
    if "val" in sub.choices:  # yolo/ runs no exported model itself: the predictors live in reports/
        sub.choices["val"].set_defaults(load_exported=exported_predictor)
    if "prune" in sub.choices:  # prune/ times no exported model itself: the latency table and timer join it here
        sub.choices["prune"].set_defaults(latency_tools=latency_tools)
    return parser


def exported_predictor(path, threads: int = 0):
    """`val` on an exported file (.onnx, OpenVINO .xml, ncnn .param): its runtime's predictor from reports/."""
    # start-up: reports.backends (and onnxruntime / openvino / ncnn) load only when an exported file is scored
    from reports.backends import load_backend

    return load_backend(path, threads=threads)


def latency_tools(model, config, threads: int = 1, path=None, log=print):
    """`prune --target-latency`: the table-backed predictor and the ONNX Runtime timer (pipeline/latency.py)."""
    # start-up: onnxruntime and the latency table load only when a latency budget is asked for
    from pipeline.latency import latency_tools as tools

    return tools(model, config, threads=threads, path=path, log=log)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["prune", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from yolo.errors import run_cli

    return run_cli(args.func, args, debug=bool(os.environ.get("YOLO_SLIM_DEBUG")))


if __name__ == "__main__":
    sys.exit(main())
