#!/usr/bin/env bash
# Quick start: make synthetic data, train a small baseline with the sparsity penalty, prune, fine-tune,
# export ONNX and print the report. Extra arguments go to `prune.py demo` (e.g. --epochs 60 --imgsz 192).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python prune.py demo "$@"
