#!/usr/bin/env bash
# Creates ./.venv (once) with PyTorch first, then this project and its test tools.
# The optional OpenVINO and ncnn runtimes: YOLO_SLIM_EXTRAS=1 installs .[dev,openvino,ncnn] instead of .[dev].
# scripts/test.sh (the README's test command, and CI's) sets it, so the exporters are tested; the demo does not
# need them. Without them their tests skip cleanly.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is already installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${YOLO_SLIM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"   # installed first: a bare 'torch' would pull a multi-GB CUDA build

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.yolo-slim-installed"
EXTRAS="dev"
if [ "${YOLO_SLIM_EXTRAS:-0}" = "1" ]; then
  EXTRAS="dev,openvino,ncnn"   # opt-in: the OpenVINO and ncnn runtimes (docs/runtimes.md)
fi
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing $TORCH_SPEC, then the project with its test tools (pip install -e .[$EXTRAS])"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "$TORCH_SPEC"
  python -m pip install --quiet -e "$ROOT[$EXTRAS]"
  echo "$want" > "$stamp"
fi
cd "$ROOT"
